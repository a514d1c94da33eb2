//! The atomic tensor-file writer: `.safetensors`, `.pt` and `.npz`, one tensor at a time.
//!
//! Output goes to a temporary file beside the target (same directory, so the final rename
//! is atomic on one filesystem) and is renamed into place only by [`Writer::finish`]. A
//! writer dropped before that removes its temporary file and leaves the target untouched.
//! Every format is streamed: the safetensors header is computed up front from the specs,
//! zip entries have their sizes known before their data, and the `.pt` pickle (which only
//! describes the tensors) is written last, after the data.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::npy;
use crate::pickle;
use crate::pt::{ARCHIVE_PREFIX, METADATA_RECORD, VERSION_RECORD};
use crate::safetensors_io;
use crate::zip_writer::ZipStream;
use crate::{Error, Format, Result, TensorSpec};

/// Buffer between the writer and the disk.
const WRITE_BUF: usize = 1 << 20;

/// Alignment of `.pt` storage records, as PyTorch's writer uses (`kFieldAlignment`), so
/// `torch.load(mmap=True)` can map every storage aligned.
const PT_ALIGN: u64 = 64;

/// Alignment of `.npz` members: numpy's own writer does not align, so neither do we.
const NPZ_ALIGN: u64 = 1;

/// Permissions of a finished output on unix (before the umask), like a file `open` creates.
#[cfg(unix)]
const OUTPUT_MODE: u32 = 0o644;

/// The format-specific part of a writer.
enum Sink {
    Safetensors(BufWriter<File>),
    Pt(ZipStream<BufWriter<File>>),
    Npz(ZipStream<BufWriter<File>>),
}

/// Writes a tensor file atomically, one tensor at a time, in the order of its specs.
pub struct Writer {
    path: PathBuf,
    temp: tempfile::NamedTempFile,
    sink: Sink,
    specs: Vec<TensorSpec>,
    sizes: Vec<u64>,
    metadata: BTreeMap<String, String>,
    next: usize,
    overwrite: bool,
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
        let misuse = |expected: &str, found: String| Error::Writer {
            path: path.to_path_buf(),
            tensor: String::new(),
            expected: expected.to_string(),
            found,
        };
        if !overwrite && path.exists() {
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
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{stem}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".partial");
        // Temporary files are private (0600) by default; the finished file should be an
        // ordinary readable output like any other the user writes.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(OUTPUT_MODE));
        let temp = builder.tempfile_in(&dir).map_err(|e| Error::io(path, e))?;
        let file = temp.as_file().try_clone().map_err(|e| Error::io(path, e))?;
        let out = BufWriter::with_capacity(WRITE_BUF, file);
        let sink = match format {
            Format::Safetensors => {
                let mut out = out;
                let header = safetensors_io::header_bytes(path, &specs, &metadata)?;
                out.write_all(&header).map_err(|e| Error::io(path, e))?;
                Sink::Safetensors(out)
            }
            Format::Pt => Sink::Pt(ZipStream::new(out)),
            Format::Npz => Sink::Npz(ZipStream::new_zip64(out)),
            Format::Npy => return Err(misuse("safetensors, pt or npz", "npy".into())),
        };
        Ok(Writer {
            path: path.to_path_buf(),
            temp,
            sink,
            specs,
            sizes,
            metadata,
            next: 0,
            overwrite,
        })
    }

    /// Writes the data of the next tensor in spec order; its length must be exactly the spec's byte count.
    pub fn write_next(&mut self, data: &[u8]) -> Result<()> {
        let path = self.path.clone();
        let (Some(spec), Some(&size)) = (self.specs.get(self.next), self.sizes.get(self.next))
        else {
            return Err(Error::Writer {
                path,
                tensor: String::new(),
                expected: format!("{} tensors", self.specs.len()),
                found: "one more".into(),
            });
        };
        if data.len() as u64 != size {
            return Err(Error::Writer {
                path,
                tensor: spec.name.clone(),
                expected: format!("{size} bytes ({} {:?})", spec.dtype, spec.shape),
                found: format!("{} bytes", data.len()),
            });
        }
        let io = |e| Error::io_tensor(&path, &spec.name, e);
        match &mut self.sink {
            Sink::Safetensors(out) => out.write_all(data).map_err(io)?,
            Sink::Pt(zip) => {
                let name = format!("{ARCHIVE_PREFIX}data/{}", self.next);
                zip.start_entry(&name, size, PT_ALIGN).map_err(io)?;
                zip.write_data(data).map_err(io)?;
                zip.finish_entry().map_err(io)?;
            }
            Sink::Npz(zip) => {
                let header = npy::write_header(spec.dtype, &spec.shape);
                let total = size.saturating_add(header.len() as u64);
                zip.start_entry(&format!("{}.npy", spec.name), total, NPZ_ALIGN)
                    .map_err(io)?;
                zip.write_data(&header).map_err(io)?;
                zip.write_data(data).map_err(io)?;
                zip.finish_entry().map_err(io)?;
            }
        }
        self.next += 1;
        Ok(())
    }

    /// Completes the file and renames it into place; errors if tensors are missing.
    pub fn finish(self) -> Result<()> {
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
                found: format!("{} written", self.next),
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
        if self.overwrite {
            self.temp.persist(&path).map_err(|e| io(e.error))?;
        } else {
            // Refuses, atomically, a target that appeared while we were writing.
            self.temp.persist_noclobber(&path).map_err(|e| {
                if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::Exists { path: path.clone() }
                } else {
                    io(e.error)
                }
            })?;
        }
        Ok(())
    }
}
