//! Reads and writes tensor files (`.npy`/`.npz`, `.safetensors`, PyTorch `.pt`) safely and lazily; knows nothing of any model.
//!
//! The public surface is deliberately small:
//! - [`TensorFile::open`] reads a file's directory (names, dtypes, shapes) without
//!   loading tensor data; [`TensorFile::read`] returns one tensor's bytes on demand,
//!   little-endian and in C (row-major) order whatever the file stored;
//!   [`TensorFile::read_chunked`] streams it through a small buffer instead.
//! - [`TensorFile::column_bands`] reads a large matrix a band of columns at a time
//!   (positional reads, bounded memory), for writing its transpose.
//! - [`Writer`] writes `.safetensors`, `.pt` or `.npz` one tensor (or part) at a time into a
//!   temporary file beside the target and renames it into place only in [`Writer::finish`].
//!
//! Module map: `bands` (column bands), `npy` (array headers), `npz` (zip directory, `.npy` members),
//! `pending` (temporaries to remove on an interrupt), `safetensors_io`, `pickle` (allowlist unpickler and state-dict pickler), `pt` (torch
//! archives), `source` (where bytes live, positional reads), `zip_writer`, `writer`.

mod bands;
mod dtype;
mod error;
pub mod names;
mod npy;
mod npz;
mod pending;
mod pickle;
mod pt;
mod safetensors_io;
mod source;
mod stats;
mod writer;
mod zip_writer;

#[cfg(test)]
mod tests;

/// Entry points into the internal parsers for the fuzz targets in `fuzz/` and the
/// regression tests; not part of the supported API.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    /// Parses an `.npy` header from the start of `bytes`; returns the dtype and shape it declares.
    pub fn npy_header(bytes: &[u8]) -> crate::Result<(crate::DType, Vec<usize>)> {
        let mut reader = bytes;
        let header = crate::npy::read_header(&mut reader, Path::new("fuzz.npy"), "fuzz")?;
        // The layout computation (Fortran strides) is part of what a header drives.
        let _ = header.layout();
        Ok((header.dtype, header.shape))
    }

    /// Runs the allowlist pickle reader over a `data.pkl`; returns each tensor's name and shape.
    pub fn pickle_state_dict(bytes: &[u8]) -> crate::Result<Vec<(String, Vec<usize>)>> {
        let tensors = crate::pickle::read_state_dict(Path::new("fuzz.pkl"), bytes)?;
        Ok(tensors.into_iter().map(|(n, t)| (n, t.shape)).collect())
    }
}

pub use bands::ColumnBands;
pub use dtype::DType;
pub use error::{Error, Result};
pub use pending::{
    create_dirs_registered, create_registered, finish_registered, register_temporary,
    remove_pending_temporaries, DirectoriesGuard, TemporaryGuard,
};
pub use stats::TensorStats;
pub use writer::Writer;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use source::Location;

/// The container a tensor file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A single NumPy array (`.npy`).
    Npy,
    /// A zip of `.npy` members as `np.savez` / `np.savez_compressed` write it.
    Npz,
    /// The safetensors format.
    Safetensors,
    /// PyTorch's zip serialization (`torch.save` since 1.6).
    Pt,
}

/// One tensor's directory entry: everything but its data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    /// The tensor's key, with the file's own separators (`/` in npz, `.` in state dicts).
    pub name: String,
    /// The element type, after mapping storage quirks (numpy's `<V2` for bfloat16 becomes [`DType::BF16`]).
    pub dtype: DType,
    /// The shape, outermost axis first; empty for a 0-d tensor.
    pub shape: Vec<usize>,
    /// How the file stored it when that differs from `dtype`, e.g. `"<V2 (numpy void, read as bfloat16)"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_as: Option<String>,
}

impl TensorInfo {
    /// Number of elements, or `None` if the product overflows `usize`.
    pub fn numel(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Number of bytes of data, or `None` on overflow.
    pub fn nbytes(&self) -> Option<usize> {
        self.numel()?.checked_mul(self.dtype.size())
    }
}

/// What to write for one tensor, announced to a [`Writer`] before any data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// An open tensor file: its directory in memory, its data on disk until asked for.
///
/// Reads use positional I/O on a shared handle, so one `TensorFile` can serve many
/// threads at once (it is `Send + Sync`).
#[derive(Debug)]
pub struct TensorFile {
    path: PathBuf,
    format: Format,
    file: File,
    tensors: Vec<TensorInfo>,
    locations: Vec<Location>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
    /// Slices of stacked tensors read so far (see [`TensorFile::slice_bands`]).
    slices: bands::Slices,
}

/// Bytes read from the start of a file to tell its format.
const SNIFF_LEN: usize = 16;

impl TensorFile {
    /// Opens a tensor file, telling its format from its content, and reads its directory.
    pub fn open(path: impl AsRef<Path>) -> Result<TensorFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut head = [0u8; SNIFF_LEN];
        let head_len = usize::try_from(file_len)
            .unwrap_or(SNIFF_LEN)
            .min(SNIFF_LEN);
        let head = head.get_mut(..head_len).unwrap_or_default();
        source::read_exact_at(&file, head, 0).map_err(|e| Error::io(path, e))?;
        let head: &[u8] = head;

        let mut metadata = BTreeMap::new();
        let (format, tensors, locations) = if [b"PK\x03\x04", b"PK\x05\x06", b"PK\x06\x06"]
            .iter()
            .any(|m| head.starts_with(*m))
        {
            let entries = npz::read_directory(path, &file, file_len)?;
            if entries.iter().any(|e| e.name.ends_with("data.pkl")) {
                let opened = pt::open(path, &file, &entries)?;
                metadata = opened.metadata;
                (Format::Pt, opened.infos, opened.locs)
            } else {
                let (infos, locs) = npz::open(path, &file, &entries)?;
                (Format::Npz, infos, locs)
            }
        } else if head.starts_with(npy::MAGIC) {
            let mut reader = source::RangeReader::new(&file, 0, file_len);
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let header = npy::read_header(&mut reader, path, &name)?;
            let layout = header
                .layout()
                .ok_or_else(|| Error::shape_overflow(path, &name, &header.shape))?;
            let loc = Location {
                base: source::Base::Stored {
                    offset: 0,
                    len: file_len,
                },
                start: header.data_offset,
                layout,
                byteswap: header.byteswap,
                // A bare `.npy` has no checksum to verify.
                crc: None,
            };
            let info = TensorInfo {
                name,
                dtype: header.dtype,
                shape: header.shape,
                stored_as: header.stored_as,
            };
            npz::check_exact_size(path, &info, &loc)?;
            (Format::Npy, vec![info], vec![loc])
        } else if safetensors_io::sniff(head) {
            let opened = safetensors_io::open(path, &file, file_len)?;
            metadata = opened.metadata;
            (Format::Safetensors, opened.infos, opened.locs)
        } else {
            return Err(Error::NotATensorFile {
                path: path.to_path_buf(),
                found: describe_head(head),
            });
        };

        for (info, loc) in tensors.iter().zip(&locations) {
            source::validate(path, info, loc, file_len)?;
        }
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(Error::unsupported(path, &t.name, "the name occurs twice"));
            }
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            format,
            file,
            tensors,
            locations,
            index,
            metadata,
            slices: bands::Slices::default(),
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container format, told from the content.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Every tensor's directory entry, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The directory entry of one tensor.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// Free-form string metadata: safetensors' `__metadata__`, or the record vitconv writes into `.pt` files.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// One tensor's data: exactly `nbytes` bytes, little-endian, C order.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let i = *self.index.get(name).ok_or_else(|| Error::UnknownTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let (Some(info), Some(loc)) = (self.tensors.get(i), self.locations.get(i)) else {
            return Err(Error::UnknownTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            });
        };
        source::read_tensor(&self.file, &self.path, info, loc)
    }

    /// Streams one tensor's data (little-endian, C order) through `f` in pieces of at most
    /// `chunk_bytes` bytes, each a whole number of elements, with one reused buffer.
    ///
    /// For whole-file passes such as statistics: memory stays at one chunk and the data is
    /// still in cache when `f` sees it. Like [`TensorFile::read`], callable from many threads.
    pub fn read_chunked(
        &self,
        name: &str,
        chunk_bytes: usize,
        mut f: impl FnMut(&[u8]),
    ) -> Result<()> {
        let i = *self.index.get(name).ok_or_else(|| Error::UnknownTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let (Some(info), Some(loc)) = (self.tensors.get(i), self.locations.get(i)) else {
            return Err(Error::UnknownTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            });
        };
        source::read_tensor_chunked(&self.file, &self.path, info, loc, chunk_bytes, &mut f)
    }

    /// One tensor's data converted to `f32` (exact for every type but f64 and wide integers).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let bytes = self.read(name)?;
        let dtype = self.get(name).map(|t| t.dtype).unwrap_or(DType::U8);
        Ok(source::to_f32(dtype, &bytes))
    }
}

/// Describes the first bytes of an unrecognised file for the error message.
fn describe_head(head: &[u8]) -> String {
    if head.is_empty() {
        return "an empty file".into();
    }
    if head.starts_with(b"\x80") {
        return "a bare pickle (legacy torch.save before 1.6?): re-save it with a current torch"
            .into();
    }
    let shown: String = head
        .iter()
        .take(8)
        .map(|&b| {
            if b.is_ascii_graphic() {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect();
    format!("first bytes \"{shown}\"")
}

/// The output format a path's extension asks for: `.pt`/`.pth`/`.bin`, `.safetensors`, `.npz`.
pub fn output_format(path: &Path) -> Option<Format> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "pt" | "pth" | "bin" => Some(Format::Pt),
        "safetensors" => Some(Format::Safetensors),
        "npz" => Some(Format::Npz),
        _ => None,
    }
}
