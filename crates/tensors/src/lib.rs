//! Reads and writes tensor files (`.npy`/`.npz`, `.safetensors`, PyTorch `.pt`) safely and lazily; knows nothing of any model.
//!
//! The public surface is deliberately small:
//! - [`TensorFile::open`] reads a file's directory (names, dtypes, shapes) without
//!   loading tensor data; [`TensorFile::read`] returns one tensor's bytes on demand,
//!   little-endian and in C (row-major) order whatever the file stored;
//!   [`TensorFile::read_chunked`] streams it through a small buffer instead.
//! - [`TensorFile::column_bands`] reads a large matrix a band of columns at a time
//!   (positional reads, bounded memory), for writing its transpose;
//!   [`TensorFile::slice_bands`] and [`TensorFile::read_slice`] do the same for one slice of a tensor stacked
//!   along its leading axis, a deflated stack being inflated once, front to back, slice after slice.
//! - [`Writer`] writes `.safetensors`, `.pt` or `.npz` one tensor (or part) at a time into a
//!   temporary file beside the target and renames it into place only in [`Writer::finish`].
//!
//! Module map: `bands` (column bands, slices of stacks, a deflated stack's one stream), `npy` (array headers), `zip_reader` (zip end record and directory, validated), `npz` (`.npy` members),
//! `dirs` (directories an output run created), `safetensors_io`, `pickle` (allowlist unpickler and state-dict pickler), `pt` (torch
//! archives), `ocdbt` (TensorStore's OCDBT key-value store inside Orbax checkpoints: keys and where their values lie), `source` (where bytes live, positional reads), `writer` (through the `zip` crate's writer for `.pt` and `.npz`).

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

/// Largest expansion a deflate stream can achieve (RFC 1951 tops out near 1032:1).
/// An entry claiming more than this is lying, and is refused before anything is allocated.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;

mod bands;
mod checkpoint;
mod dirs;
mod dtype;
mod error;
mod grid;
mod guard;
mod msgpack;
pub mod names;
mod npy;
mod npz;
mod ocdbt;
mod pickle;
mod pt;
mod range;
mod safetensors_io;
mod source;
mod stats;
mod writer;
mod zarr;
mod zip_reader;

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

    /// Reads and validates a zip's directory at `path`; returns each member's name and the file
    /// range of its (possibly compressed) data, for the fuzz target that checks no two
    /// members the reader accepts share bytes and no name is repeated.
    pub fn zip_members(path: &Path) -> crate::Result<Vec<(String, u64, u64)>> {
        // The same rule as every other read: a regular file, opened without blocking.
        let file = crate::open_for_reading(path)?;
        let meta = file.metadata().map_err(|e| crate::Error::io(path, e))?;
        crate::check_regular(path, &meta)?;
        let len = meta.len();
        let entries = crate::zip_reader::read_directory(path, &file, len)?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let (start, stored) = match e.base {
                    crate::source::Base::Stored { offset, len } => (offset, len),
                    crate::source::Base::Deflate {
                        offset,
                        compressed_len,
                        ..
                    } => (offset, compressed_len),
                    crate::source::Base::Chunks(_) => (0, 0),
                };
                (e.name, start, start.saturating_add(stored))
            })
            .collect())
    }

    /// The most bytes of tensor names a pickle of `len` bytes may produce: its byte budget.
    pub fn pickle_budget(len: usize) -> u64 {
        crate::pickle::budget(len)
    }

    /// Reads zarr array metadata from untrusted bytes: the input up to its first NUL is a `.zarray` (or, when
    /// it parses as one, a `zarr.json`), and what follows the NUL is every chunk's stored bytes (one store that
    /// holds the same value under every key). The array is then read whole through the chunk grid when it is
    /// at most 1 MiB; returns its byte count. The property checked: a grid that validates reads to exactly its
    /// size or fails with an error, never a panic or an allocation beyond the limits.
    pub fn zarr_metadata(bytes: &[u8]) -> crate::Result<usize> {
        use std::io::Read as _;
        struct Same(std::sync::Arc<[u8]>);
        impl crate::zarr::ChunkStore for Same {
            fn get(
                &self,
                key: &str,
            ) -> crate::Result<Option<(crate::grid::Stored, std::path::PathBuf)>> {
                // Keys with an odd digit sum are missing, so that fill and stored chunks mix.
                let odd = key
                    .bytes()
                    .filter(u8::is_ascii_digit)
                    .map(|b| u32::from(b.wrapping_sub(b'0')))
                    .fold(0u32, u32::wrapping_add)
                    & 1
                    == 1;
                Ok((!odd).then(|| {
                    (
                        crate::grid::Stored::Inline {
                            data: std::sync::Arc::clone(&self.0),
                            offset: 0,
                            len: self.0.len(),
                        },
                        Path::new("fuzz-chunk").to_path_buf(),
                    )
                }))
            }
        }
        let split = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let (meta, rest) = bytes.split_at(split);
        let store = Same(std::sync::Arc::from(rest.get(1..).unwrap_or_default()));
        let path = Path::new("fuzz.zarray");
        let array = match crate::zarr::read_v2(path, "fuzz", meta, &store, 0) {
            Ok(a) => a,
            Err(_) => crate::zarr::read_v3(path, "fuzz", meta, &store, 0)?,
        };
        let nbytes = array.grid.nbytes().unwrap_or(0);
        assert_eq!(
            Some(nbytes as usize),
            array.info.nbytes(),
            "the grid and the tensor agree on the size"
        );
        if nbytes <= 1 << 20 {
            let mut out = Vec::new();
            let mut reader = crate::grid::GridReader::new(std::sync::Arc::new(array.grid));
            match reader.read_to_end(&mut out) {
                Ok(_) => assert_eq!(out.len() as u64, nbytes, "a grid that reads gives its size"),
                Err(e) => return Err(crate::source::read_error(path, "fuzz", 0, nbytes, e)),
            }
        }
        Ok(usize::try_from(nbytes).unwrap_or(usize::MAX))
    }

    /// Parses an OCDBT manifest (`manifest.ocdbt`) from untrusted bytes; returns how many
    /// versions and version nodes it references.
    pub fn ocdbt_manifest(bytes: &[u8]) -> crate::Result<usize> {
        crate::ocdbt::fuzz_manifest(bytes)
    }

    /// Parses an OCDBT B+tree node or version tree node (told apart by its magic number) from
    /// untrusted bytes; returns how many entries it holds.
    pub fn ocdbt_node(bytes: &[u8]) -> crate::Result<usize> {
        crate::ocdbt::fuzz_node(bytes)
    }

    /// Walks a flax msgpack checkpoint held in `bytes` with the reader `TensorFile` uses for
    /// files; returns how many leaves it found. Checks what every accepted tree must satisfy:
    /// the start of the bytes passes the format sniff, and every array's bytes lie inside the
    /// input with exactly the length its shape and dtype need.
    pub fn msgpack_tree(bytes: &[u8]) -> crate::Result<usize> {
        use crate::msgpack::LeafKind;
        let leaves = crate::msgpack::read_tree_from_slice(Path::new("fuzz.msgpack"), bytes)?;
        assert!(crate::msgpack::sniff(bytes.get(..16).unwrap_or(bytes)));
        let total = bytes.len() as u64;
        let need = |dtype: crate::DType, shape: &[usize]| {
            shape
                .iter()
                .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
        };
        for leaf in &leaves {
            match &leaf.kind {
                LeafKind::Array {
                    dtype,
                    shape,
                    offset,
                    len,
                } => {
                    assert_eq!(need(*dtype, shape), Some(*len));
                    assert!(offset.checked_add(*len).is_some_and(|end| end <= total));
                }
                LeafKind::Chunked {
                    dtype,
                    shape,
                    pieces,
                } => {
                    let sum = pieces.iter().try_fold(0u64, |acc, &(offset, len)| {
                        assert!(offset.checked_add(len).is_some_and(|end| end <= total));
                        acc.checked_add(len)
                    });
                    assert_eq!(need(*dtype, shape), sum);
                }
                LeafKind::Scalar(text) => assert!(!text.is_empty()),
            }
            assert!(leaf.path.len() <= 64);
        }
        Ok(leaves.len())
    }

    /// Runs the allowlist pickle reader over a `data.pkl`; returns each tensor's name and shape.
    pub fn pickle_state_dict(bytes: &[u8]) -> crate::Result<Vec<(String, Vec<usize>)>> {
        let tensors = crate::pickle::read_state_dict(Path::new("fuzz.pkl"), bytes)?;
        Ok(tensors.into_iter().map(|(n, t)| (n, t.shape)).collect())
    }
}

pub use bands::ColumnBands;
pub use checkpoint::CheckpointInfo;

pub use dirs::{create_dirs, CreatedDirs, EntryKind, OutDir, TempFile};
pub use dtype::DType;
pub use error::{Error, Result};
pub use stats::TensorStats;
pub use writer::{Sealed, Writer};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

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
    /// A flax msgpack checkpoint (`flax.serialization.to_bytes`).
    Msgpack,
    /// A big_vision `checkpoint.bv-<step>` folder: TensorStore zarr v2 arrays, one folder each.
    Bv,
    /// An Orbax checkpoint: zarr v2 or v3 arrays, in folders or an OCDBT store.
    Orbax,
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
    /// The key to write the tensor under (in `.npz`, its member name without the `.npy` suffix).
    pub name: String,
    /// The element type the data is written as.
    pub dtype: DType,
    /// The shape, outermost axis first; empty for a 0-d tensor.
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
    /// Shared, so that a member streamed across calls can keep a reader on it (see `bands`).
    file: Arc<File>,
    tensors: Vec<TensorInfo>,
    locations: Vec<Location>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
    /// Slices of stacked tensors read so far (see [`TensorFile::slice_bands`]).
    slices: bands::Slices,
    /// Top-level entries of a `.pt` that hold no tensor (`epoch = 90`, `args (dict)`).
    others: Vec<String>,
    /// The file's length when opened, which the statistics' work budget is a multiple of.
    file_len: u64,
    /// Bytes decoded or visited so far by [`TensorFile::stats`] on first sight of an entry,
    /// and on later sights (aliases, overlapping views), each against its own budget.
    stats_work: AtomicU64,
    stats_repeat_work: AtomicU64,
    /// Entries (file offset, decoded length) that statistics have already visited once.
    stats_seen: Mutex<HashSet<(u64, u64)>>,
    /// The checkpoint folder's description, when the input is one.
    checkpoint: Option<CheckpointInfo>,
    /// File offsets of deflated entries that more than one tensor views: decoded once, kept in
    /// `decoded` by offset and decoded length.
    shared_deflate: HashSet<u64>,
    decoded: DecodedCache,
}

/// Most bytes of decoded shared entries kept at once; past it, each is decoded again (and counted).
const MAX_DECODED_CACHE: u64 = 512 << 20;

/// Decoded shared entries by (file offset, decoded length). Its `Debug` shows only how
/// many entries and bytes it holds, not megabytes of data.
#[derive(Default)]
struct DecodedCache(Mutex<HashMap<EntryKey, Arc<Vec<u8>>>>);

/// An entry of the file: its offset and decoded length.
type EntryKey = (u64, u64);

impl std::fmt::Debug for DecodedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: usize = map.values().map(|b| b.len()).sum();
        write!(f, "DecodedCache({} entries, {bytes} bytes)", map.len())
    }
}

/// Bytes read from the start of a file to tell its format.
const SNIFF_LEN: usize = 16;

impl TensorFile {
    /// Opens a tensor file or checkpoint folder, telling its container from its content (the first entry of
    /// [`CONTAINERS`] that claims it), and reads its directory.
    pub fn open(path: impl AsRef<Path>) -> Result<TensorFile> {
        let path = path.as_ref();
        // A named pipe would block the open itself, and a device reads forever (or as
        // "empty"): only regular files and folders are read. The type is checked before opening, and
        // again on the handle, in case the path was swapped in between.
        let resolved = resolve_input(path);
        let path = resolved.as_path();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let opened = if meta.is_dir() {
            let probe = Probe::Folder(path);
            let container = CONTAINERS
                .iter()
                .find(|c| (c.claims)(&probe))
                .ok_or_else(|| Error::NotACheckpoint {
                    path: path.to_path_buf(),
                    found: describe_folder(path),
                })?;
            (container.open)(&probe)?
        } else {
            check_regular(path, &meta)?;
            let file = open_for_reading(path)?;
            let meta = file.metadata().map_err(|e| Error::io(path, e))?;
            check_regular(path, &meta)?;
            let len = meta.len();
            let mut head = [0u8; SNIFF_LEN];
            let head_len = usize::try_from(len).unwrap_or(SNIFF_LEN).min(SNIFF_LEN);
            let head = head.get_mut(..head_len).unwrap_or_default();
            source::read_exact_at(&file, head, 0).map_err(|e| Error::io(path, e))?;
            let probe = Probe::File {
                path,
                file: &file,
                len,
                head,
            };
            match CONTAINERS.iter().find(|c| (c.claims)(&probe)) {
                Some(container) => (container.open)(&probe)?,
                None => {
                    return Err(Error::NotATensorFile {
                        path: path.to_path_buf(),
                        found: describe_head(head),
                    })
                }
            }
        };
        let Opened {
            format,
            tensors,
            locations,
            metadata,
            others,
            checkpoint,
            file,
            file_len,
        } = opened;

        for (info, loc) in tensors.iter().zip(&locations) {
            source::validate(path, info, loc, file_len)?;
        }
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(Error::unsupported(path, &t.name, "the name occurs twice"));
            }
        }
        let mut deflate_users: HashMap<u64, usize> = HashMap::new();
        for loc in &locations {
            if let source::Base::Deflate { offset, .. } = loc.base {
                let users = deflate_users.entry(offset).or_default();
                *users = users.saturating_add(1);
            }
        }
        let shared_deflate = deflate_users
            .into_iter()
            .filter(|&(_, n)| n > 1)
            .map(|(offset, _)| offset)
            .collect();
        Ok(TensorFile {
            path: path.to_path_buf(),
            format,
            file: Arc::new(file),
            tensors,
            locations,
            index,
            metadata,
            slices: bands::Slices::default(),
            others,
            file_len,
            stats_work: AtomicU64::new(0),
            stats_repeat_work: AtomicU64::new(0),
            stats_seen: Mutex::new(HashSet::new()),
            shared_deflate,
            decoded: DecodedCache::default(),
            checkpoint,
        })
    }

    /// What the checkpoint folder is and how it was found, when the input is one (`.bv`, Orbax).
    pub fn checkpoint(&self) -> Option<&CheckpointInfo> {
        self.checkpoint.as_ref()
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

    /// Top-level entries of a `.pt` that hold no tensor (a training checkpoint's `epoch`, `args`), each
    /// described in a few words; empty for the other formats.
    pub fn non_tensor_entries(&self) -> &[String] {
        &self.others
    }

    /// Free-form string metadata: safetensors' `__metadata__`, or the record vitconv writes into `.pt` files.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// One tensor's directory entry and location.
    fn entry(&self, name: &str) -> Result<(&TensorInfo, &Location)> {
        let unknown = || Error::UnknownTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        };
        let i = *self.index.get(name).ok_or_else(unknown)?;
        match (self.tensors.get(i), self.locations.get(i)) {
            (Some(info), Some(loc)) => Ok((info, loc)),
            _ => Err(unknown()),
        }
    }

    /// One tensor's data: exactly `nbytes` bytes, little-endian, C order.
    ///
    /// A deflated entry that several tensors view is decoded once, on the first read of any
    /// of them, and kept for the others.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let (info, loc) = self.entry(name)?;
        if !self.is_shared_deflate(loc) {
            return source::read_tensor(&self.file, &self.path, info, loc);
        }
        let whole = self.decoded_entry(name, loc)?;
        let span = source::span_of(&self.path, info, loc)?;
        let covered = usize::try_from(loc.start)
            .ok()
            .zip(usize::try_from(span).ok())
            .and_then(|(from, n)| whole.get(from..from.checked_add(n)?));
        let raw = covered.ok_or_else(|| Error::SizeMismatch {
            path: self.path.clone(),
            tensor: name.to_string(),
            expected: span,
            found: (whole.len() as u64).saturating_sub(loc.start),
        })?;
        source::arrange(&self.path, info, loc, raw.to_vec())
    }

    /// Whether `loc` is a deflated entry that more than one tensor views.
    fn is_shared_deflate(&self, loc: &Location) -> bool {
        match loc.base {
            source::Base::Deflate { offset, .. } => self.shared_deflate.contains(&offset),
            source::Base::Stored { .. } | source::Base::Chunks(_) => false,
        }
    }

    /// The whole decoded content of a deflated entry several tensors view, decoded on first use.
    fn decoded_entry(&self, name: &str, loc: &Location) -> Result<Arc<Vec<u8>>> {
        let key = stats::entry_key(loc);
        // One decode at a time: a second thread wanting the same entry waits for it rather
        // than decoding it again. A poisoned lock only means another read failed.
        let mut cache = self.decoded.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bytes) = cache.get(&key) {
            return Ok(Arc::clone(bytes));
        }
        let len = loc.base.len();
        self.charge(name, len, 0)?;
        let whole = Location {
            base: loc.base.clone(),
            start: 0,
            layout: source::Layout::C,
            byteswap: false,
            crc: loc.crc.clone(),
        };
        let bytes = Arc::new(source::fetch(
            &self.file,
            &self.path,
            name,
            &whole,
            len,
            source::crc_to_check(&whole, len),
        )?);
        let cached: u64 = cache.values().map(|b| b.len() as u64).sum();
        if cached.saturating_add(len) <= MAX_DECODED_CACHE {
            cache.insert(key, Arc::clone(&bytes));
        }
        Ok(bytes)
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
        if self.is_shared_deflate(loc) {
            // Decoded once for all the tensors that view it; served from memory.
            let all = self.read(name)?;
            all.chunks(source::whole_elements(chunk_bytes, info.dtype.size()))
                .for_each(f);
            return Ok(());
        }
        source::read_tensor_chunked(&self.file, &self.path, info, loc, chunk_bytes, &mut f)
    }

    /// One tensor's data converted to `f32` (exact for every type but f64 and wide integers).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.decode_f32(name, &self.read(name)?))
    }

    /// Tensor `name`'s bytes (all of them, or a slice) decoded from its stored type to `f32`.
    fn decode_f32(&self, name: &str, bytes: &[u8]) -> Vec<f32> {
        let dtype = self.get(name).map(|t| t.dtype).unwrap_or(DType::U8);
        source::to_f32(dtype, bytes)
    }
}

/// What a container is shown of an input before it claims it.
pub(crate) enum Probe<'a> {
    /// A regular file, opened, with its first bytes.
    File {
        path: &'a Path,
        file: &'a File,
        len: u64,
        head: &'a [u8],
    },
    /// A folder.
    Folder(&'a Path),
}

impl Probe<'_> {
    /// The head of a file; empty for a folder.
    fn head(&self) -> &[u8] {
        match self {
            Probe::File { head, .. } => head,
            Probe::Folder(_) => &[],
        }
    }
}

/// A container's directory, ready for a [`TensorFile`].
pub(crate) struct Opened {
    format: Format,
    tensors: Vec<TensorInfo>,
    locations: Vec<Location>,
    metadata: BTreeMap<String, String>,
    others: Vec<String>,
    checkpoint: Option<CheckpointInfo>,
    /// The file the locations' stored and deflated bases read from (a folder's handle for a checkpoint folder).
    file: File,
    /// The bytes the input holds, which bound the statistics' work.
    file_len: u64,
}

/// One container format: whether it claims an input (by content, never by name alone), and how it opens it.
pub(crate) struct Container {
    /// The container's name, for `--help` (through [`containers`]) and tests.
    pub name: &'static str,
    claims: fn(&Probe<'_>) -> bool,
    open: fn(&Probe<'_>) -> Result<Opened>,
}

/// Every container this crate reads, in the order they are asked: the first that claims an input opens it.
/// Adding a container is one module and one line here.
pub(crate) const CONTAINERS: &[Container] = &[
    Container {
        name: "zip (.npz, torch .pt)",
        claims: zip_claims,
        open: zip_open,
    },
    Container {
        name: ".npy",
        claims: |p| p.head().starts_with(npy::MAGIC),
        open: npy_open,
    },
    Container {
        name: ".safetensors",
        claims: |p| safetensors_io::sniff(p.head()),
        open: safetensors_open,
    },
    Container {
        name: "flax msgpack",
        claims: |p| msgpack::sniff(p.head()),
        open: msgpack_open,
    },
    Container {
        name: "big_vision .bv",
        claims: bv_claims,
        open: bv_open,
    },
    Container {
        name: "Orbax",
        claims: orbax_claims,
        open: orbax_open,
    },
];

/// The name of every container this crate reads, in the order they are asked.
pub fn containers() -> impl Iterator<Item = &'static str> {
    CONTAINERS.iter().map(|c| c.name)
}

/// The opened file of a file probe.
fn probe_file<'a>(p: &Probe<'a>) -> Result<(&'a Path, &'a File, u64)> {
    match *p {
        Probe::File {
            path, file, len, ..
        } => Ok((path, file, len)),
        Probe::Folder(path) => Err(Error::NotARegularFile {
            path: path.to_path_buf(),
            kind: "a directory",
        }),
    }
}

fn file_opened(
    path: &Path,
    file: &File,
    len: u64,
    format: Format,
    (tensors, locations): (Vec<TensorInfo>, Vec<Location>),
    metadata: BTreeMap<String, String>,
    others: Vec<String>,
) -> Result<Opened> {
    Ok(Opened {
        format,
        tensors,
        locations,
        metadata,
        others,
        checkpoint: None,
        file: file.try_clone().map_err(|e| Error::io(path, e))?,
        file_len: len,
    })
}

fn zip_claims(p: &Probe<'_>) -> bool {
    [b"PK\x03\x04", b"PK\x05\x06", b"PK\x06\x06"]
        .iter()
        .any(|m| p.head().starts_with(*m))
}

fn zip_open(p: &Probe<'_>) -> Result<Opened> {
    let (path, file, len) = probe_file(p)?;
    let entries = npz::read_directory(path, file, len)?;
    if entries.iter().any(|e| e.name.ends_with("data.pkl")) {
        let opened = pt::open(path, file, &entries)?;
        file_opened(
            path,
            file,
            len,
            Format::Pt,
            (opened.infos, opened.locs),
            opened.metadata,
            opened.others,
        )
    } else {
        let listing = npz::open(path, file, &entries)?;
        file_opened(
            path,
            file,
            len,
            Format::Npz,
            listing,
            BTreeMap::new(),
            Vec::new(),
        )
    }
}

fn npy_open(p: &Probe<'_>) -> Result<Opened> {
    let (path, file, len) = probe_file(p)?;
    let mut reader = range::RangeReader::new(file, 0, len);
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let header = npy::read_header(&mut reader, path, &name)?;
    let layout = header
        .layout()
        .ok_or_else(|| Error::shape_overflow(path, &name, &header.shape))?;
    let loc = Location {
        base: source::Base::Stored { offset: 0, len },
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
    file_opened(
        path,
        file,
        len,
        Format::Npy,
        (vec![info], vec![loc]),
        BTreeMap::new(),
        Vec::new(),
    )
}

fn safetensors_open(p: &Probe<'_>) -> Result<Opened> {
    let (path, file, len) = probe_file(p)?;
    let opened = safetensors_io::open(path, file, len)?;
    file_opened(
        path,
        file,
        len,
        Format::Safetensors,
        (opened.infos, opened.locs),
        opened.metadata,
        Vec::new(),
    )
}

/// A flax msgpack file: its array leaves as tensors named by their tree path joined with `/`; arrays flax
/// split into pieces are read as one grid; other leaves (a plain `step` integer) are listed, not read.
fn msgpack_open(p: &Probe<'_>) -> Result<Opened> {
    let (path, file, len) = probe_file(p)?;
    let shared = Arc::new(file.try_clone().map_err(|e| Error::io(path, e))?);
    let mut tensors = Vec::new();
    let mut locations = Vec::new();
    let mut others = Vec::new();
    for leaf in msgpack::read_tree(path, file, len)? {
        let name = leaf.path.join("/");
        match leaf.kind {
            msgpack::LeafKind::Array {
                dtype,
                shape,
                offset,
                len,
            } => {
                tensors.push(TensorInfo {
                    name,
                    dtype,
                    shape,
                    stored_as: None,
                });
                locations.push(Location {
                    base: source::Base::Stored { offset, len },
                    start: 0,
                    layout: source::Layout::C,
                    byteswap: false,
                    crc: None,
                });
            }
            msgpack::LeafKind::Chunked {
                dtype,
                shape,
                pieces,
            } => {
                let grid = grid::Grid::pieces(
                    path,
                    &name,
                    &shared,
                    dtype,
                    &shape,
                    &pieces,
                    u64::MAX.saturating_sub(tensors.len() as u64),
                )?;
                tensors.push(TensorInfo {
                    name,
                    dtype,
                    shape,
                    stored_as: Some("a flax chunked array".into()),
                });
                locations.push(Location {
                    base: source::Base::Chunks(Arc::new(grid)),
                    start: 0,
                    layout: source::Layout::C,
                    byteswap: false,
                    crc: None,
                });
            }
            msgpack::LeafKind::Scalar(what) => others.push(format!("{name} = {what}")),
        }
    }
    file_opened(
        path,
        file,
        len,
        Format::Msgpack,
        (tensors, locations),
        BTreeMap::new(),
        others,
    )
}

/// A folder, or big_vision's `-LAST` file (a few bytes of text naming the step folder beside it).
fn checkpoint_path<'a>(p: &Probe<'a>) -> Option<&'a Path> {
    match *p {
        Probe::Folder(path) => Some(path),
        Probe::File { path, len, .. }
            if len <= 64
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with("-LAST")) =>
        {
            Some(path)
        }
        Probe::File { .. } => None,
    }
}

fn bv_claims(p: &Probe<'_>) -> bool {
    checkpoint_path(p).is_some_and(checkpoint::is_big_vision)
}

fn orbax_claims(p: &Probe<'_>) -> bool {
    matches!(p, Probe::Folder(_)) && checkpoint_path(p).is_some_and(checkpoint::is_orbax)
}

fn folder_opened(format: Format, opened: checkpoint::Opened) -> Opened {
    Opened {
        format,
        tensors: opened.tensors,
        locations: opened.locations,
        metadata: BTreeMap::new(),
        others: opened.others,
        checkpoint: Some(opened.info),
        file: opened.handle,
        file_len: opened.budget,
    }
}

fn bv_open(p: &Probe<'_>) -> Result<Opened> {
    let path = checkpoint_path(p).unwrap_or(Path::new("."));
    Ok(folder_opened(
        Format::Bv,
        checkpoint::open_big_vision(path)?,
    ))
}

fn orbax_open(p: &Probe<'_>) -> Result<Opened> {
    let path = checkpoint_path(p).unwrap_or(Path::new("."));
    Ok(folder_opened(Format::Orbax, checkpoint::open_orbax(path)?))
}

/// The path to open for what a user named: itself, or for big_vision's checkpoint prefix
/// (`workdir/checkpoint.bv`, which is no file) the `-LAST` file beside it that names the step.
pub fn resolve_input(path: &Path) -> PathBuf {
    if let Err(e) = std::fs::symlink_metadata(path) {
        if e.kind() == std::io::ErrorKind::NotFound {
            let mut name = path.as_os_str().to_owned();
            name.push("-LAST");
            let last = PathBuf::from(name);
            if last.is_file() {
                return last;
            }
        }
    }
    path.to_path_buf()
}

/// Whether `path` is a folder that one of the checkpoint containers claims (a big_vision workdir or step
/// folder, an Orbax step or its parent): such a folder is one source, not a tree of files.
pub fn is_checkpoint_folder(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
        && CONTAINERS.iter().any(|c| (c.claims)(&Probe::Folder(path)))
}

/// What a folder met while looking for checkpoints under a directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderKind {
    /// One checkpoint to convert: a big_vision workdir or step folder, or one Orbax step.
    Checkpoint,
    /// A folder of Orbax steps: each step is a checkpoint of its own; the number is the step, for choosing
    /// the newest, and `complete` says whether the step finished writing.
    OrbaxStep {
        /// The step its name gives, if any.
        step: Option<u64>,
        /// Whether the step was committed (`commit_success.txt` or `_CHECKPOINT_METADATA`, no `tmp` name).
        complete: bool,
    },
    /// Anything else: a folder to look inside.
    Other,
}

/// Tells what the folder `path` is, for a walk that looks for checkpoints (batch mode).
pub fn folder_kind(path: &Path) -> FolderKind {
    if checkpoint::is_big_vision(path) {
        return FolderKind::Checkpoint;
    }
    match checkpoint::orbax_step(path) {
        Some((step, complete)) => FolderKind::OrbaxStep { step, complete },
        None => FolderKind::Other,
    }
}

/// Whether the regular file `path` starts like a flax msgpack checkpoint (a map keyed by strings).
pub fn is_msgpack_file(path: &Path) -> bool {
    let Ok(file) = open_for_reading(path) else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; SNIFF_LEN];
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let n = usize::try_from(len).unwrap_or(SNIFF_LEN).min(SNIFF_LEN);
    let head = head.get_mut(..n).unwrap_or_default();
    source::read_exact_at(&file, head, 0).is_ok() && msgpack::sniff(head)
}

/// Reads a whole small file that is not a tensor file (a tokenizer model, a manifest, a config): only a regular
/// file (a FIFO or a device is refused by kind, without blocking), of at most `limit` bytes (checked on the open
/// handle before anything is read).
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    check_regular(path, &meta)?;
    let file = open_for_reading(path)?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    check_regular(path, &meta)?;
    if meta.len() > limit {
        return Err(Error::FileTooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            limit,
        });
    }
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// Describes a folder no container claims, for the error message.
fn describe_folder(path: &Path) -> String {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .take(4)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if names.is_empty() {
                "an empty folder".into()
            } else {
                format!("it holds {}", names.join(", "))
            }
        }
        Err(e) => format!("it cannot be listed ({e})"),
    }
}

/// Refuses anything but a regular file, saying what it is.
pub(crate) fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() {
        "a directory"
    } else {
        special_kind(&kind)
    };
    Err(Error::NotARegularFile {
        path: path.to_path_buf(),
        kind: what,
    })
}

#[cfg(unix)]
fn special_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_fifo() {
        "a named pipe (FIFO)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file of another kind"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

/// Opens a file for reading without blocking, should it have become a FIFO after the check.
pub(crate) fn open_for_reading(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // O_NONBLOCK changes nothing for regular files, and makes opening a FIFO return at once.
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path).map_err(|e| Error::io(path, e))
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
