//! Reads of a byte range of a file through positional reads, shared by whole files (`source`) and the chunk
//! files of a grid (`grid`).

use std::borrow::Borrow;
use std::fs::File;
use std::io::{self, Read};

/// A `Read` over a byte range of a file, built on positional reads.
///
/// `F` is the file borrowed (`&File`) for a read that ends with the call, or shared (`Arc<File>`) for one kept
/// open across calls (a stacked member streamed a slice at a time, see `bands`).
pub(crate) struct RangeReader<F> {
    file: F,
    pos: u64,
    end: u64,
}

impl<F: Borrow<File>> RangeReader<F> {
    pub(crate) fn new(file: F, offset: u64, len: u64) -> Self {
        RangeReader {
            file,
            pos: offset,
            end: offset.saturating_add(len),
        }
    }
}

impl<F: Borrow<File>> Read for RangeReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let Some(chunk) = buf.get_mut(..want) else {
            return Ok(0);
        };
        if chunk.is_empty() {
            return Ok(0);
        }
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(self.file.borrow(), chunk, self.pos)?;
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(self.file.borrow(), chunk, self.pos)?;
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}

/// Reads exactly `buf.len()` bytes at `offset` without moving any shared cursor.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = buf.get_mut(done..).unwrap_or_default();
            let pos = offset
                .checked_add(done as u64)
                .ok_or(io::ErrorKind::InvalidInput)?;
            match std::os::windows::fs::FileExt::seek_read(file, rest, pos) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
