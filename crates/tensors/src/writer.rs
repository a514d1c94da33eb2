//! The atomic tensor-file writer: `.safetensors`, `.pt` and `.npz`, one tensor at a time.
//!
//! Output goes to a temporary file beside the target (same directory, so the final rename
//! is atomic on one filesystem) and is renamed into place only by [`Writer::finish`]. A
//! writer dropped before that removes its temporary file and leaves the target untouched.
//! Every format is streamed, and a tensor may itself arrive in parts ([`Writer::write_part`]):
//! the safetensors header is computed up front from the specs, `.pt` and `.npz` members are
//! stored entries of the `zip` crate's [`ZipWriter`] (which patches each local header's CRC-32 and
//! sizes in after the data), and the `.pt` pickle (which only describes the tensors) is written
//! last, after the data.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::dirs::{EntryKind, OutDir, TempFile};
use crate::npy;
use crate::pickle;
use crate::pt::{ARCHIVE_PREFIX, METADATA_RECORD, VERSION_RECORD};
use crate::safetensors_io;
use crate::{Error, Format, Result, TensorSpec};

/// Buffer between the writer and the disk.
const WRITE_BUF: usize = 1 << 20;

/// Largest piece of a caller's data handed to one `write` call.
///
/// Handed 8 MiB at a time, whole conversions on the machine measured (Linux 6.18, ext4) ran 2-3x slower in
/// some runs, nearly all the extra time in the kernel's copy into the page cache; in 1 MiB pieces that never
/// happened (see BENCHMARKS.md).
const WRITE_PIECE: usize = 1 << 20;

/// How many bytes are written between two requests to start writing the file back to disk.
///
/// [`Writer::finish`] flushes the file before renaming it into place (a crash must never leave a renamed
/// but empty file); starting the writeback as the data arrives lets the disk work while tensors are still
/// being produced, so that final flush has little left to wait for. Every 64 MiB, the final flush of a
/// ViT-L/32 still waited 17-34 ms; every 8 MiB, 2-5 ms (BENCHMARKS.md).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Alignment of `.pt` storage records, as PyTorch's writer uses (`kFieldAlignment`), so
/// `torch.load(mmap=True)` can map every storage aligned.
const PT_ALIGN: u16 = 64;

/// Extra-field id PyTorch's writer gives its alignment padding: the bytes `FB`
/// (caffe2/serialize/inline_container.cc, `getPadding`).
const PT_PADDING_ID: u16 = u16::from_le_bytes(*b"FB");

/// Entries of this many bytes or more need zip64 sizes (APPNOTE 4.4.8: `0xFFFFFFFF` marks them).
const ZIP64_SIZE: u64 = 0xFFFF_FFFF;

/// Permissions of a finished output on unix (before the umask), like a file `open` creates.
#[cfg(unix)]
const OUTPUT_MODE: u32 = 0o644;

/// The format-specific part of a writer.
enum Sink {
    Safetensors(BufWriter<File>),
    Pt(Archive),
    Npz(Archive),
}

/// The buffered output file under a [`ZipWriter`], which keeps its own position (so the many
/// `stream_position` calls of the zip writer neither flush the buffer nor make a system call) and
/// can be abandoned: see [`Archive`].
struct Output {
    out: BufWriter<File>,
    /// Where the next byte goes, and the end of the file: the buffer's logical position, since
    /// every write and seek passes through here.
    pos: u64,
    end: u64,
    /// Set when the archive is dropped unfinished: from then on nothing reaches the file.
    abandoned: Cell<bool>,
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = if self.abandoned.get() {
            buf.len()
        } else {
            self.out.write(buf)?
        };
        self.pos = self.pos.saturating_add(n as u64);
        self.end = self.end.max(self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.abandoned.get() {
            Ok(())
        } else {
            self.out.flush()
        }
    }
}

impl Seek for Output {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.end.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        if target != self.pos && !self.abandoned.get() {
            self.out.seek(SeekFrom::Start(target))?;
        }
        self.pos = target;
        Ok(target)
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}

/// A `.pt` or `.npz` archive being written.
///
/// A [`ZipWriter`] dropped unfinished writes its central directory anyway (and prints to stderr if
/// that fails, as it will on a full disk). A writer dropped before [`Writer::finish`] has removed
/// its temporary file, so this marks the output abandoned first: the zip writer's last writes go
/// nowhere.
struct Archive {
    zip: Option<ZipWriter<Output>>,
}

impl Archive {
    fn new(out: BufWriter<File>, force_zip64: bool) -> Archive {
        let mut zip = ZipWriter::new(Output {
            out,
            pos: 0,
            end: 0,
            abandoned: Cell::new(false),
        });
        if force_zip64 {
            // An empty extensible data sector makes the zip writer end every archive with the
            // zip64 end records, as it does past 4 GiB.
            zip.set_raw_zip64_extensible_data_sector(Box::new([]));
        }
        Archive { zip: Some(zip) }
    }

    fn zip(&mut self) -> io::Result<&mut ZipWriter<Output>> {
        self.zip
            .as_mut()
            .ok_or_else(|| io::Error::other("zip archive already finished"))
    }

    /// Starts a stored entry of `size` bytes whose data begins at a multiple of `align` (given zip64
    /// sizes where it needs them, or everywhere with `force_zip64`).
    fn start_entry(
        &mut self,
        name: &str,
        size: u64,
        align: u16,
        force_zip64: bool,
    ) -> io::Result<()> {
        let mut options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            // Fixed (1980-01-01), so the output is reproducible.
            .last_modified_time(DateTime::default())
            .large_file(force_zip64 || size >= ZIP64_SIZE);
        if align > 1 {
            options = options.with_alignment_and_header_id(align, PT_PADDING_ID);
        }
        self.zip()?
            .start_file(name, options)
            .map_err(io::Error::from)
    }

    fn write_data(&mut self, data: &[u8]) -> io::Result<()> {
        self.zip()?.write_all(data)
    }

    /// Writes a whole small entry at once.
    fn entry(&mut self, name: &str, data: &[u8], align: u16) -> io::Result<()> {
        self.start_entry(name, data.len() as u64, align, false)?;
        self.write_data(data)
    }

    /// Writes the central directory and end records; returns the output.
    fn finish(mut self) -> io::Result<BufWriter<File>> {
        let zip = self
            .zip
            .take()
            .ok_or_else(|| io::Error::other("zip archive already finished"))?;
        let mut out = zip.finish().map_err(io::Error::from)?;
        out.flush()?;
        Ok(out.out)
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        if let Some(out) = self.zip.as_ref().and_then(|z| z.get_ref()) {
            out.abandoned.set(true);
        }
    }
}

/// Writes a tensor file atomically, one tensor at a time, in the order of its specs.
pub struct Writer {
    path: PathBuf,
    /// The final name inside `temp`'s directory.
    name: OsString,
    temp: TempFile,
    sink: Sink,
    specs: Vec<TensorSpec>,
    sizes: Vec<u64>,
    metadata: BTreeMap<String, String>,
    /// Index of the tensor being written.
    next: usize,
    /// Bytes of that tensor written so far by [`Writer::write_part`].
    part: u64,
    /// Whether that tensor's zip entry has been started (a zero-byte first part starts it too).
    entry_open: bool,
    overwrite: bool,
    /// Bytes handed to the sink so far, and that count when writeback was last started.
    written: u64,
    writeback_at: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("temp", &self.temp.path())
            .field("next", &self.next)
            .field("tensors", &self.specs.len())
            .finish()
    }
}

impl Writer {
    /// Prepares to write `specs` to `path` in `format` (`Safetensors`, `Pt` or `Npz`).
    ///
    /// Refuses an existing `path` unless `overwrite`. For `Pt`, `metadata` goes into a
    /// JSON record beside `data.pkl`; for safetensors into `__metadata__`; `.npz` has no
    /// place for it and refuses a non-empty map.
    pub fn create(
        path: &Path,
        format: Format,
        specs: Vec<TensorSpec>,
        metadata: BTreeMap<String, String>,
        overwrite: bool,
    ) -> Result<Writer> {
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => {
                return Err(Error::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "the output path names no file",
                    ),
                ))
            }
        };
        let dir = OutDir::open(dir).map_err(|e| Error::io(path, e))?;
        Writer::create_in(&dir, name, format, specs, metadata, overwrite)
    }

    /// As [`Writer::create`], for the file `name` inside the open directory `dir`: the temporary and the
    /// final file are made relative to that handle, so a link planted on the way is never followed.
    pub fn create_in(
        dir: &OutDir,
        name: &OsStr,
        format: Format,
        specs: Vec<TensorSpec>,
        metadata: BTreeMap<String, String>,
        overwrite: bool,
    ) -> Result<Writer> {
        let path = &dir.path().join(name);
        let misuse = |expected: &str, found: String| Error::Writer {
            path: path.to_path_buf(),
            tensor: String::new(),
            expected: expected.to_string(),
            found,
        };
        if !overwrite && dir.kind(name).map_err(|e| Error::io(path, e))?.is_some() {
            return Err(Error::Exists {
                path: path.to_path_buf(),
            });
        }
        let mut seen = HashSet::new();
        let mut sizes = Vec::with_capacity(specs.len());
        for spec in &specs {
            if !seen.insert(spec.name.as_str()) {
                return Err(misuse(
                    "unique tensor names",
                    format!("`{}` twice", spec.name),
                ));
            }
            let n = spec
                .shape
                .iter()
                .try_fold(spec.dtype.size(), |a, &d| a.checked_mul(d))
                .and_then(|n| u64::try_from(n).ok())
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| Error::shape_overflow(path, &spec.name, &spec.shape))?;
            sizes.push(n);
        }
        if format == Format::Npz && !metadata.is_empty() {
            return Err(misuse(
                "no metadata (.npz cannot hold it)",
                format!("{} keys", metadata.len()),
            ));
        }
        // Temporary files are private (0600) by default elsewhere; the finished file should be an ordinary
        // readable output like any other the user writes. Removed when dropped: a failed or cancelled
        // conversion leaves nothing behind.
        let temp = dir
            .temp(name, OUTPUT_MODE)
            .map_err(|e| Error::io(path, e))?;
        let file = temp.as_file().try_clone().map_err(|e| Error::io(path, e))?;
        let total = sizes.iter().fold(0u64, |a, &n| a.saturating_add(n));
        // An output that cannot fit is refused before any of it is written, and nothing is reserved
        // beyond what the output will take.
        if let Some(available) = free_bytes(&file) {
            if total > available {
                return Err(Error::NoSpace {
                    path: path.to_path_buf(),
                    needed: total,
                    available,
                });
            }
        }
        reserve(&file, total);
        let out = BufWriter::with_capacity(WRITE_BUF, file);
        let sink = match format {
            Format::Safetensors => {
                let mut out = out;
                let header = safetensors_io::header_bytes(path, &specs, &metadata)?;
                out.write_all(&header).map_err(|e| Error::io(path, e))?;
                Sink::Safetensors(out)
            }
            Format::Pt => Sink::Pt(Archive::new(out, false)),
            // Zip64 records on every member, like numpy's `np.savez` (`force_zip64=True`), so
            // readers meet the same records small or large.
            Format::Npz => Sink::Npz(Archive::new(out, true)),
            other @ (Format::Npy | Format::Msgpack | Format::Bv | Format::Orbax) => {
                return Err(misuse("safetensors, pt or npz", format!("{other:?}")))
            }
        };
        Ok(Writer {
            path: path.to_path_buf(),
            name: name.to_os_string(),
            temp,
            sink,
            specs,
            sizes,
            metadata,
            next: 0,
            part: 0,
            entry_open: false,
            overwrite,
            written: 0,
            writeback_at: 0,
        })
    }

    /// Writes the data of the next tensor in spec order; its length must be exactly the spec's byte count.
    ///
    /// The whole-tensor form of [`Writer::write_part`]; it refuses to run while a tensor is
    /// half written.
    pub fn write_next(&mut self, data: &[u8]) -> Result<()> {
        let (Some(spec), Some(&size)) = (self.specs.get(self.next), self.sizes.get(self.next))
        else {
            return Err(self.one_more());
        };
        if self.part != 0 || data.len() as u64 != size {
            return Err(Error::Writer {
                path: self.path.clone(),
                tensor: spec.name.clone(),
                expected: format!("{size} bytes ({} {:?})", spec.dtype, spec.shape),
                found: if self.part != 0 {
                    format!(
                        "a whole tensor after {} bytes were written in parts",
                        self.part
                    )
                } else {
                    format!("{} bytes", data.len())
                },
            });
        }
        self.write_part(data)
    }

    /// Appends `data` to the current tensor (the next in spec order), which may be written in
    /// any number of parts; once its spec's byte count is reached the writer moves on to the
    /// next tensor by itself. A part may not run past the end of its tensor.
    ///
    /// Lets a caller produce a large tensor from a small buffer: `.pt` and `.npz` members are
    /// stored zip entries, so the local header is written before the first part (with zip64
    /// sizes where the spec's byte count needs them) and its CRC-32 and sizes are patched in
    /// after the last.
    pub fn write_part(&mut self, data: &[u8]) -> Result<()> {
        let path = self.path.clone();
        let (Some(spec), Some(&size)) = (self.specs.get(self.next), self.sizes.get(self.next))
        else {
            return Err(self.one_more());
        };
        let after = self.part.saturating_add(data.len() as u64);
        if after > size {
            return Err(Error::Writer {
                path,
                tensor: spec.name.clone(),
                expected: format!(
                    "at most {} more bytes ({} {:?})",
                    // `part` never passes `size`: a write past it is refused here.
                    size.saturating_sub(self.part),
                    spec.dtype,
                    spec.shape
                ),
                found: format!("{} bytes", data.len()),
            });
        }
        let io = |e| Error::io_tensor(&path, &spec.name, e);
        let first = self.part == 0 && !self.entry_open;
        if first {
            match &mut self.sink {
                Sink::Safetensors(_) => {}
                Sink::Pt(zip) => {
                    let name = format!("{ARCHIVE_PREFIX}data/{}", self.next);
                    zip.start_entry(&name, size, PT_ALIGN, false).map_err(io)?;
                }
                Sink::Npz(zip) => {
                    let header = npy::write_header(spec.dtype, &spec.shape);
                    let total = size.saturating_add(header.len() as u64);
                    zip.start_entry(&format!("{}.npy", spec.name), total, 1, true)
                        .map_err(io)?;
                    zip.write_data(&header).map_err(io)?;
                }
            }
        }
        for piece in data.chunks(WRITE_PIECE) {
            match &mut self.sink {
                Sink::Safetensors(out) => out.write_all(piece).map_err(io)?,
                Sink::Pt(zip) | Sink::Npz(zip) => zip.write_data(piece).map_err(io)?,
            }
        }
        self.written = self.written.saturating_add(data.len() as u64);
        // `writeback_at` is a value `written` held before, and `written` only grows.
        if self.written.saturating_sub(self.writeback_at) >= WRITEBACK_EVERY {
            self.writeback_at = self.written;
            start_writeback(self.temp.as_file());
        }
        if after == size {
            // A tensor index, below the number of announced specs.
            self.next = self.next.saturating_add(1);
            self.part = 0;
            self.entry_open = false;
        } else {
            self.part = after;
            self.entry_open = true;
        }
        Ok(())
    }

    /// The error for data offered after the last tensor.
    fn one_more(&self) -> Error {
        Error::Writer {
            path: self.path.clone(),
            tensor: String::new(),
            expected: format!("{} tensors", self.specs.len()),
            found: "one more".into(),
        }
    }

    /// Completes the file and renames it into place; errors if tensors are missing.
    pub fn finish(self) -> Result<()> {
        self.seal()?.commit()
    }

    /// Completes the file and flushes it to disk without renaming it into place, so that a caller with
    /// other files to place can put them all in place only once the weights are durable (and leave every
    /// existing output as it was if this fails). Refuses a target that is a directory.
    pub fn seal(self) -> Result<Sealed> {
        let path = self.path;
        if self.next != self.specs.len() {
            return Err(Error::Writer {
                path,
                tensor: self
                    .specs
                    .get(self.next)
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                expected: format!("{} tensors", self.specs.len()),
                found: format!("{} written and {} bytes of the next", self.next, self.part),
            });
        }
        let io = |e| Error::io(&path, e);
        let out = match self.sink {
            Sink::Safetensors(out) => out,
            Sink::Npz(zip) => zip.finish().map_err(io)?,
            Sink::Pt(mut zip) => {
                // Small records after the data, then the pickle, as the brief of this format asks.
                zip.entry(&format!("{ARCHIVE_PREFIX}byteorder"), b"little", PT_ALIGN)
                    .map_err(io)?;
                zip.entry(
                    &format!("{ARCHIVE_PREFIX}version"),
                    VERSION_RECORD,
                    PT_ALIGN,
                )
                .map_err(io)?;
                zip.entry(&format!("{ARCHIVE_PREFIX}.format_version"), b"1", PT_ALIGN)
                    .map_err(io)?;
                zip.entry(
                    &format!("{ARCHIVE_PREFIX}.storage_alignment"),
                    b"64",
                    PT_ALIGN,
                )
                .map_err(io)?;
                let meta = serde_json::to_vec(&self.metadata)
                    .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
                zip.entry(
                    &format!("{ARCHIVE_PREFIX}{METADATA_RECORD}"),
                    &meta,
                    PT_ALIGN,
                )
                .map_err(io)?;
                let pkl = pickle::write_state_dict(&self.specs);
                zip.entry(&format!("{ARCHIVE_PREFIX}data.pkl"), &pkl, PT_ALIGN)
                    .map_err(io)?;
                zip.finish().map_err(io)?
            }
        };
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        if self.temp.dir().kind(&self.name).map_err(io)? == Some(EntryKind::Directory) {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "the output path is a directory",
            )));
        }
        Ok(Sealed {
            path,
            name: self.name,
            temp: self.temp,
            overwrite: self.overwrite,
        })
    }
}

/// A finished, flushed weights file waiting beside its target (see [`Writer::seal`]); dropping it removes
/// the temporary file.
pub struct Sealed {
    path: PathBuf,
    name: OsString,
    temp: TempFile,
    overwrite: bool,
}

impl Sealed {
    /// Renames the file into place (without `overwrite`, refusing a target that appeared meanwhile).
    pub fn commit(self) -> Result<()> {
        let Sealed {
            path,
            name,
            temp,
            overwrite,
        } = self;
        // Without `overwrite`, a target that appeared while we were writing is refused, atomically.
        temp.persist(&name, overwrite).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists { path: path.clone() }
            } else {
                Error::io(&path, e)
            }
        })
    }
}

/// Asks the kernel to start writing the file's dirty pages to disk without waiting for them; a hint only,
/// so a failure is ignored (the flush in [`Writer::finish`] reports real errors).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range reads no memory of ours; the descriptor is open for the writer's lifetime,
    // and offset 0 with length 0 means "the whole file".
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Reserves `len` bytes of disk for the file without changing its size; a hint only, like [`start_writeback`].
#[cfg(target_os = "linux")]
fn reserve(file: &File, len: u64) {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(len) else {
        return;
    };
    // SAFETY: fallocate reads no memory of ours, and the descriptor is open.
    let _ = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
}

#[cfg(not(target_os = "linux"))]
fn reserve(_file: &File, _len: u64) {}

/// Bytes an unprivileged writer may still use on the file system holding `file`, where the system says.
#[cfg(unix)]
fn free_bytes(file: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: fstatvfs writes one `statvfs` into the buffer it is given, which is that size and ours;
    // the descriptor is open. The value is read only when the call reports success.
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the call succeeded, so the struct is initialised (it was zeroed before, too).
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some), so the conversion is not always a no-op.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    blocks.checked_mul(size)
}

#[cfg(not(unix))]
fn free_bytes(_file: &File) -> Option<u64> {
    None
}

/// [`free_bytes`], for the test against `df`.
#[cfg(test)]
pub(crate) fn free_bytes_of(file: &File) -> Option<u64> {
    free_bytes(file)
}

/// Elsewhere the final flush does all the work.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::Writer;
    use crate::{DType, Error, Format, TensorFile, TensorSpec};

    fn specs() -> Vec<TensorSpec> {
        [("a", vec![2, 3]), ("empty", vec![0]), ("b", vec![5])]
            .into_iter()
            .map(|(name, shape)| TensorSpec {
                name: name.into(),
                dtype: DType::U8,
                shape,
            })
            .collect()
    }

    #[test]
    fn parts_equal_whole_tensors_in_every_format() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ([1u8, 2, 3, 4, 5, 6], [7u8, 8, 9, 10, 11]);
        for (format, ext) in [
            (Format::Npz, "npz"),
            (Format::Pt, "pt"),
            (Format::Safetensors, "safetensors"),
        ] {
            let whole = dir.path().join(format!("whole.{ext}"));
            let mut w = Writer::create(&whole, format, specs(), BTreeMap::new(), false).unwrap();
            for data in [&a[..], &[], &b[..]] {
                w.write_next(data).unwrap();
            }
            w.finish().unwrap();

            let parts = dir.path().join(format!("parts.{ext}"));
            let mut w = Writer::create(&parts, format, specs(), BTreeMap::new(), false).unwrap();
            w.write_part(&a[..1]).unwrap();
            w.write_part(&[]).unwrap();
            // Mixing forms inside a tensor, or a part running into the next tensor, is refused.
            assert!(matches!(w.write_next(&a), Err(Error::Writer { .. })));
            assert!(matches!(w.write_part(&[0; 6]), Err(Error::Writer { .. })));
            w.write_part(&a[1..]).unwrap();
            // `a` is complete, so the writer is at the zero-sized tensor: an empty part completes it.
            w.write_part(&[]).unwrap();
            w.write_part(&b[..2]).unwrap();
            w.write_part(&b[2..]).unwrap();
            assert!(matches!(w.write_part(&[1]), Err(Error::Writer { .. })));
            w.finish().unwrap();
            assert_eq!(
                std::fs::read(&whole).unwrap(),
                std::fs::read(&parts).unwrap(),
                "{ext}"
            );
            let f = TensorFile::open(&parts).unwrap();
            assert_eq!(f.read("a").unwrap(), a);
            assert_eq!(f.read("b").unwrap(), b);
        }
    }

    /// The members of an archive in order: name, data offset, size; reading each to the end makes
    /// the zip crate check its CRC-32.
    fn members(bytes: Vec<u8>) -> Vec<(String, u64, u64)> {
        use std::io::Read;
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        (0..archive.len())
            .map(|i| {
                let mut f = archive.by_index(i).unwrap();
                let mut data = Vec::new();
                f.read_to_end(&mut data).unwrap();
                assert_eq!(data.len() as u64, f.size());
                (
                    f.name().unwrap().into_owned(),
                    f.data_start().unwrap(),
                    f.size(),
                )
            })
            .collect()
    }

    #[test]
    fn pt_members_are_aligned_in_order_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pt");
        let mut w = Writer::create(&path, Format::Pt, specs(), BTreeMap::new(), false).unwrap();
        w.write_part(&[1, 2, 3]).unwrap();
        w.write_part(&[4, 5, 6]).unwrap();
        w.write_next(&[]).unwrap();
        w.write_next(&[7, 8, 9, 10, 11]).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let got = members(bytes.clone());
        let names: Vec<String> = got.iter().map(|(n, ..)| n.clone()).collect();
        let want: Vec<String> = [
            "data/0",
            "data/1",
            "data/2",
            "byteorder",
            "version",
            ".format_version",
            ".storage_alignment",
            crate::pt::METADATA_RECORD,
            "data.pkl",
        ]
        .iter()
        .map(|n| format!("archive/{n}"))
        .collect();
        assert_eq!(names, want);
        for (name, start, _) in &got {
            assert_eq!(start % 64, 0, "{name} is not aligned");
        }
        // Small archive: no zip64 records.
        assert!(!bytes.windows(4).any(|w| w == b"PK\x06\x06"));
        // Reproducible: the same tensors give the same bytes.
        let again = dir.path().join("again.pt");
        let mut w = Writer::create(&again, Format::Pt, specs(), BTreeMap::new(), false).unwrap();
        for data in [&[1u8, 2, 3, 4, 5, 6][..], &[], &[7, 8, 9, 10, 11]] {
            w.write_next(data).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), bytes);
    }

    #[test]
    fn npz_members_carry_zip64_records_like_savez() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.npz");
        let mut w = Writer::create(&path, Format::Npz, specs(), BTreeMap::new(), false).unwrap();
        for data in [&[1u8, 2, 3, 4, 5, 6][..], &[], &[7, 8, 9, 10, 11]] {
            w.write_next(data).unwrap();
        }
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // The zip64 end record and locator, and a zip64 extra field (id 1, 16 bytes) in a local header.
        assert!(bytes.windows(4).any(|w| w == b"PK\x06\x06"));
        assert!(bytes.windows(4).any(|w| w == b"PK\x06\x07"));
        assert!(bytes.windows(4).any(|w| w == [1, 0, 16, 0]));
        let names: Vec<String> = members(bytes).into_iter().map(|(n, ..)| n).collect();
        assert_eq!(names, ["a.npy", "empty.npy", "b.npy"]);
    }

    #[test]
    fn an_unfinished_archive_writes_nothing_more_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("half");
        let file = std::fs::File::create(&path).unwrap();
        let mut a = super::Archive::new(std::io::BufWriter::new(file), false);
        a.entry("x", b"hello", 64).unwrap();
        a.start_entry("y", 3, 64, false).unwrap();
        a.write_data(b"ab").unwrap();
        let before = {
            let out = a.zip.as_mut().unwrap().get_ref().unwrap();
            out.end
        };
        drop(a);
        // What was buffered reaches the file, but no central directory or end record follows it.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, before);
        assert!(!bytes.windows(4).any(|w| w == b"PK\x01\x02"));
        assert!(!bytes.windows(4).any(|w| w == b"PK\x05\x06"));
    }

    #[test]
    fn finish_refuses_a_half_written_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pt");
        let mut w = Writer::create(&path, Format::Pt, specs(), BTreeMap::new(), false).unwrap();
        w.write_part(&[1, 2]).unwrap();
        let err = w.finish().unwrap_err();
        assert!(err.to_string().contains("2 bytes of the next"), "{err}");
        assert!(!path.exists());
    }
}
