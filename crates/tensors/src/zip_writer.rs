//! A streaming writer of stored (uncompressed) zip archives, with zip64 and data alignment.
//!
//! Spec: PKWARE APPNOTE 6.3.x (<https://pkware.cachefly.net/webdocs/casestudies/APPNOTE.TXT>),
//! sections 4.3 (structure), 4.4 (fields) and 4.5.3 (the zip64 extra field). Entry sizes are
//! known before their data (they come from tensor specs), so the local header is written
//! with the final sizes; only the CRC-32 is patched in after the data, which keeps every
//! header self-describing (no data descriptors) as PyTorch's and numpy's readers expect.

use std::io::{self, Seek, SeekFrom, Write};

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
/// Extra-field id of the zip64 sizes/offset record.
const ZIP64_EXTRA_ID: u16 = 0x0001;
/// Extra-field id PyTorch's writer uses for alignment padding: the bytes `FB`
/// (caffe2/serialize/inline_container.cc, `getPadding`), filled with `Z`.
const PADDING_EXTRA_ID: u16 = u16::from_le_bytes(*b"FB");
/// "Version needed to extract": 2.0 for plain stored entries, 4.5 for zip64.
const VERSION_PLAIN: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// Fixed part of a local file header.
const LOCAL_HEADER_LEN: u64 = 30;
/// Offset of the CRC-32 field within a local file header.
const LOCAL_CRC_OFFSET: u64 = 14;
/// DOS date 1980-01-01, time 00:00: fixed so output is reproducible.
const DOS_DATE: u16 = 0x0021;
/// General-purpose flag bit 11: the name is UTF-8.
const FLAG_UTF8: u16 = 0x0800;
/// Values at or above these limits take the zip64 extra field.
const U32_LIMIT: u64 = 0xFFFF_FFFF;
const U16_LIMIT: u64 = 0xFFFF;

/// An entry already written, kept for the central directory.
struct Finished {
    name: Vec<u8>,
    crc: u32,
    size: u64,
    header_offset: u64,
}

/// The entry being written.
struct Current {
    name: Vec<u8>,
    header_offset: u64,
    size: u64,
    written: u64,
    crc: flate2::Crc,
}

/// Writes a zip archive of stored entries to a seekable sink.
pub(crate) struct ZipStream<W: Write + Seek> {
    out: W,
    pos: u64,
    done: Vec<Finished>,
    current: Option<Current>,
    /// Write zip64 records for every entry, as `np.savez` does, not only where sizes need them.
    force_zip64: bool,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl<W: Write + Seek> ZipStream<W> {
    pub(crate) fn new(out: W) -> Self {
        ZipStream {
            out,
            pos: 0,
            done: Vec::new(),
            current: None,
            force_zip64: false,
        }
    }

    /// A writer that gives every entry zip64 sizes and offsets, like numpy's `np.savez`
    /// (`zipfile.open(..., force_zip64=True)`), so readers meet the same records small or large.
    pub(crate) fn new_zip64(out: W) -> Self {
        ZipStream {
            force_zip64: true,
            ..ZipStream::new(out)
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos = self.pos.saturating_add(bytes.len() as u64);
        Ok(())
    }

    /// Starts an entry of exactly `size` bytes whose data begins at a multiple of `align`.
    pub(crate) fn start_entry(&mut self, name: &str, size: u64, align: u64) -> io::Result<()> {
        if self.current.is_some() {
            return Err(invalid(
                "zip entry started before the previous one finished".into(),
            ));
        }
        let name_len = u16::try_from(name.len())
            .map_err(|_| invalid(format!("entry name too long: {name}")))?;
        let zip64 = self.force_zip64 || size >= U32_LIMIT;
        let mut extra = Vec::new();
        if zip64 {
            extra.extend_from_slice(&ZIP64_EXTRA_ID.to_le_bytes());
            extra.extend_from_slice(&16u16.to_le_bytes());
            extra.extend_from_slice(&size.to_le_bytes());
            extra.extend_from_slice(&size.to_le_bytes());
        }
        if align > 1 {
            // The padding record itself takes 4 bytes of id and length before its filler. `pos`
            // counts bytes written, so these sums stay far below `u64::MAX`.
            let unpadded = self
                .pos
                .saturating_add(LOCAL_HEADER_LEN)
                .saturating_add(u64::from(name_len))
                .saturating_add(extra.len() as u64)
                .saturating_add(4);
            // `align` is above 1 here, so neither remainder is ever `None`.
            let rem = unpadded.checked_rem(align).unwrap_or(0);
            let pad = align.saturating_sub(rem).checked_rem(align).unwrap_or(0);
            let pad16 = u16::try_from(pad).map_err(|_| invalid("alignment too large".into()))?;
            extra.extend_from_slice(&PADDING_EXTRA_ID.to_le_bytes());
            extra.extend_from_slice(&pad16.to_le_bytes());
            extra.resize(extra.len().saturating_add(usize::from(pad16)), b'Z');
        }
        let extra_len =
            u16::try_from(extra.len()).map_err(|_| invalid("extra field too long".into()))?;
        let header_offset = self.pos;
        let flags = if name.is_ascii() { 0 } else { FLAG_UTF8 };
        let size32 = if zip64 { U32_LIMIT as u32 } else { size as u32 };
        let mut h = Vec::with_capacity(
            (LOCAL_HEADER_LEN as usize)
                .saturating_add(name.len())
                .saturating_add(extra.len()),
        );
        h.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        h.extend_from_slice(&(if zip64 { VERSION_ZIP64 } else { VERSION_PLAIN }).to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // method: stored
        h.extend_from_slice(&0u16.to_le_bytes()); // time
        h.extend_from_slice(&DOS_DATE.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes()); // CRC-32, patched in finish_entry
        h.extend_from_slice(&size32.to_le_bytes()); // compressed size
        h.extend_from_slice(&size32.to_le_bytes()); // uncompressed size
        h.extend_from_slice(&name_len.to_le_bytes());
        h.extend_from_slice(&extra_len.to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&extra);
        self.put(&h)?;
        self.current = Some(Current {
            name: name.as_bytes().to_vec(),
            header_offset,
            size,
            written: 0,
            crc: flate2::Crc::new(),
        });
        Ok(())
    }

    /// Appends data to the current entry; more than its announced size is refused.
    pub(crate) fn write_data(&mut self, data: &[u8]) -> io::Result<()> {
        let cur = self
            .current
            .as_mut()
            .ok_or_else(|| invalid("zip data written outside an entry".into()))?;
        let written = cur.written.saturating_add(data.len() as u64);
        if written > cur.size {
            return Err(invalid(format!(
                "entry overflows its announced {} bytes",
                cur.size
            )));
        }
        cur.written = written;
        cur.crc.update(data);
        self.put(data)
    }

    /// Ends the current entry, patching its CRC-32 into the local header.
    pub(crate) fn finish_entry(&mut self) -> io::Result<()> {
        let cur = self
            .current
            .take()
            .ok_or_else(|| invalid("no zip entry to finish".into()))?;
        if cur.written != cur.size {
            return Err(invalid(format!(
                "entry has {} bytes, {} were announced",
                cur.written, cur.size
            )));
        }
        let crc = cur.crc.sum();
        self.out.seek(SeekFrom::Start(
            cur.header_offset.saturating_add(LOCAL_CRC_OFFSET),
        ))?;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.seek(SeekFrom::Start(self.pos))?;
        self.done.push(Finished {
            name: cur.name,
            crc,
            size: cur.size,
            header_offset: cur.header_offset,
        });
        Ok(())
    }

    /// Writes a whole small entry at once.
    pub(crate) fn entry(&mut self, name: &str, data: &[u8], align: u64) -> io::Result<()> {
        self.start_entry(name, data.len() as u64, align)?;
        self.write_data(data)?;
        self.finish_entry()
    }

    /// Writes the central directory and end records; returns the sink.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if self.current.is_some() {
            return Err(invalid("archive finished inside an entry".into()));
        }
        let cd_offset = self.pos;
        let done = std::mem::take(&mut self.done);
        for e in &done {
            let size_big = self.force_zip64 || e.size >= U32_LIMIT;
            let offset_big = self.force_zip64 || e.header_offset >= U32_LIMIT;
            let mut extra = Vec::new();
            if size_big || offset_big {
                let mut body = Vec::new();
                if size_big {
                    body.extend_from_slice(&e.size.to_le_bytes());
                    body.extend_from_slice(&e.size.to_le_bytes());
                }
                if offset_big {
                    body.extend_from_slice(&e.header_offset.to_le_bytes());
                }
                extra.extend_from_slice(&ZIP64_EXTRA_ID.to_le_bytes());
                extra.extend_from_slice(&(body.len() as u16).to_le_bytes());
                extra.extend_from_slice(&body);
            }
            let zip64 = size_big || offset_big;
            let version = if zip64 { VERSION_ZIP64 } else { VERSION_PLAIN };
            let flags = if e.name.is_ascii() { 0 } else { FLAG_UTF8 };
            let size32 = if size_big {
                U32_LIMIT as u32
            } else {
                e.size as u32
            };
            let offset32 = if offset_big {
                U32_LIMIT as u32
            } else {
                e.header_offset as u32
            };
            let mut h = Vec::with_capacity(
                46usize
                    .saturating_add(e.name.len())
                    .saturating_add(extra.len()),
            );
            h.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            h.extend_from_slice(&VERSION_ZIP64.to_le_bytes()); // made by
            h.extend_from_slice(&version.to_le_bytes()); // needed
            h.extend_from_slice(&flags.to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // stored
            h.extend_from_slice(&0u16.to_le_bytes());
            h.extend_from_slice(&DOS_DATE.to_le_bytes());
            h.extend_from_slice(&e.crc.to_le_bytes());
            h.extend_from_slice(&size32.to_le_bytes());
            h.extend_from_slice(&size32.to_le_bytes());
            h.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // comment length
            h.extend_from_slice(&0u16.to_le_bytes()); // disk number
            h.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            h.extend_from_slice(&0u32.to_le_bytes()); // external attributes
            h.extend_from_slice(&offset32.to_le_bytes());
            h.extend_from_slice(&e.name);
            h.extend_from_slice(&extra);
            self.put(&h)?;
        }
        // `cd_offset` is where `pos` stood before the directory was written.
        let cd_size = self.pos.saturating_sub(cd_offset);
        let count = done.len() as u64;
        let need64 = self.force_zip64
            || count >= U16_LIMIT
            || cd_size >= U32_LIMIT
            || cd_offset >= U32_LIMIT;
        if need64 {
            let eocd64_offset = self.pos;
            let mut r = Vec::with_capacity(56 + 20);
            r.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
            r.extend_from_slice(&44u64.to_le_bytes()); // size of the rest of this record
            r.extend_from_slice(&VERSION_ZIP64.to_le_bytes());
            r.extend_from_slice(&VERSION_ZIP64.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            r.extend_from_slice(&count.to_le_bytes());
            r.extend_from_slice(&count.to_le_bytes());
            r.extend_from_slice(&cd_size.to_le_bytes());
            r.extend_from_slice(&cd_offset.to_le_bytes());
            r.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            r.extend_from_slice(&eocd64_offset.to_le_bytes());
            r.extend_from_slice(&1u32.to_le_bytes());
            self.put(&r)?;
        }
        let count16 = if need64 {
            U16_LIMIT as u16
        } else {
            count as u16
        };
        let cd_size32 = if need64 {
            U32_LIMIT as u32
        } else {
            cd_size as u32
        };
        let cd_offset32 = if need64 {
            U32_LIMIT as u32
        } else {
            cd_offset as u32
        };
        let mut r = Vec::with_capacity(22);
        r.extend_from_slice(&EOCD_SIG.to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        r.extend_from_slice(&count16.to_le_bytes());
        r.extend_from_slice(&count16.to_le_bytes());
        r.extend_from_slice(&cd_size32.to_le_bytes());
        r.extend_from_slice(&cd_offset32.to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        self.put(&r)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};

    #[test]
    fn entries_are_aligned_and_readable_by_the_zip_crate() {
        let mut z = ZipStream::new(Cursor::new(Vec::new()));
        z.entry("a/first", b"hello", 64).unwrap();
        z.start_entry("a/second", 6, 64).unwrap();
        z.write_data(b"wor").unwrap();
        z.write_data(b"ld!").unwrap();
        z.finish_entry().unwrap();
        let bytes = z.finish().unwrap().into_inner();
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        for (i, want) in [(0usize, &b"hello"[..]), (1, b"world!")] {
            let mut f = archive.by_index(i).unwrap();
            assert_eq!(f.data_start().unwrap() % 64, 0, "entry {i} is not aligned");
            let mut got = Vec::new();
            // Reading to the end makes the zip crate check the CRC-32 we patched in.
            f.read_to_end(&mut got).unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn forced_zip64_archives_read_back() {
        let mut z = ZipStream::new_zip64(Cursor::new(Vec::new()));
        z.entry("a.npy", b"first", 1).unwrap();
        z.entry("b.npy", b"second!", 64).unwrap();
        let bytes = z.finish().unwrap().into_inner();
        assert!(bytes.windows(4).any(|w| w == ZIP64_EOCD_SIG.to_le_bytes()));
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let mut got = String::new();
        archive
            .by_name("b.npy")
            .unwrap()
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "second!");
        assert_eq!(archive.by_index(0).unwrap().size(), 5);
    }

    #[test]
    fn misuse_is_refused() {
        let mut z = ZipStream::new(Cursor::new(Vec::new()));
        z.start_entry("x", 2, 1).unwrap();
        assert!(z.write_data(b"abc").is_err());
        assert!(z.finish_entry().is_err());
        assert!(z.start_entry("y", 1, 1).is_ok());
    }
}
