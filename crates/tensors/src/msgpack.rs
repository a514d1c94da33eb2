//! Reads the tree of a flax msgpack checkpoint (`flax.serialization.to_bytes`) header by header: each array leaf's dtype, shape and file range, never its data.
//!
//! These are the files `flax.training.checkpoints.save_checkpoint` wrote up to flax 0.6.10
//! (`checkpoint_<step>`) and the `flax_model.msgpack` files of the Hugging Face hub. The
//! format is read from flax's own `flax/serialization.py` (google/flax at commit
//! `18f8f311c275d57f46d95e41b15aa97b454754c0`; the wire format is the same at tag `v0.6.10`,
//! commit `7377d654119f7d9568801492492a290448e5c0d1`). What this reader relies on:
//!
//! - `to_bytes` turns the target into a state dict (`to_state_dict`) and packs it with
//!   `msgpack.packb(..., default=_msgpack_ext_pack, strict_types=True)`. Dicts become msgpack
//!   maps with string keys; lists and tuples become maps with keys `'0'`, `'1'`, ...
//!   (`_list_state_dict`); NamedTuples become maps by field name (`_namedtuple_state_dict`),
//!   so an optax `EmptyState` is an empty map. Python ints, floats, strings and `None` stay
//!   plain msgpack values.
//! - `_MsgpackExtType`: ext type 1 is an ndarray, 2 a native Python `complex`, 3 a numpy
//!   scalar. Types 1 and 3 carry `_ndarray_to_bytes(x)`, which is
//!   `msgpack.packb((arr.shape, arr.dtype.name, arr.tobytes('C')), use_bin_type=True)`: a
//!   three-element array of the shape (an array of ints), numpy's dtype name as a string
//!   (`float32`, `bfloat16`, `int32`, `float16`, `int64`, `bool`, `uint8`, ...) and the raw
//!   C-order bytes as a bin. A numpy scalar is the same with an empty shape. Type 2 carries
//!   `msgpack.packb((x.real, x.imag))`. `_ndarray_from_bytes` unpacks the payload with
//!   `raw=True`, so a str and a bin are the same to it; this reader accepts either for the
//!   dtype name and for the data. Other ext types are handed back as `msgpack.ExtType`
//!   objects, not refused, so they are reported here as scalars.
//! - The bytes are in the writer's native byte order (`tobytes('C')`); every host jax runs
//!   on is little-endian, so they are read as little-endian.
//! - Arrays of more than `MAX_CHUNK_SIZE = 2**30` bytes are replaced before packing
//!   (`_chunk_array_leaves_in_place`, `_chunk`) by a map
//!   `{'__msgpack_chunked_array__': True, 'shape': {'0': d0, '1': d1, ...}, 'chunks': {'0': c0, ...}}`:
//!   the array is flattened in C order and cut into 1-D pieces of
//!   `max(1, MAX_CHUNK_SIZE // itemsize)` elements, each an ordinary ext-1 ndarray.
//!   `_unchunk` concatenates `chunks[str(i)]` for `i` in `0..len(chunks)` and reshapes to
//!   `shape`, so the pieces are taken by their index keys, not in file order. Any map holding
//!   the marker key is unchunked, at any depth (`_unchunk_array_leaves_in_place`).
//! - `msgpack_restore` unpacks with `strict_map_key=False`, so integer map keys load too;
//!   this reader prints them in decimal. `msgpack.unpackb` refuses bytes after the top-level
//!   value, and so does this reader.
//!
//! The file is untrusted: every length is checked against the bytes that remain before
//! anything is read or allocated from it, and the named limits below bound nesting, counts,
//! key lengths, ranks, leaves and the memory that leaf paths take. Header bytes are read
//! with positional reads through a small window; tensor payloads are only skipped.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use crate::{DType, Error, Result};

/// Deepest nesting of maps and arrays accepted: a ViT state dict is 5 or 6 levels deep and an
/// optimizer state a few more, so 64 leaves room while keeping the recursion shallow.
const MAX_DEPTH: usize = 64;

/// Most entries in one map or array; far more than any module has parameters.
const MAX_ENTRIES: u64 = 1 << 20;

/// Longest map key accepted, in bytes; flax keys are module and parameter names.
const MAX_KEY_LEN: u64 = 4096;

/// Longest dtype name accepted, in bytes; numpy's longest names are about 20.
const MAX_DTYPE_NAME: u64 = 32;

/// Highest rank accepted: numpy 2's `NPY_MAXDIMS`.
const MAX_RANK: u64 = 64;

/// Most leaves in one file (and never more than the file has bytes, since each leaf takes one).
const MAX_LEAVES: u64 = 1 << 22;

/// The bytes of leaf paths (keys and separators, summed over all leaves) may reach this much
/// plus `PATH_BYTES_PER_FILE_BYTE` per byte of the file: deep paths repeated over many tiny
/// leaves would otherwise turn a small file into gigabytes of copied keys.
const PATH_BYTES_BASE: u64 = 16 << 20;

/// See `PATH_BYTES_BASE`.
const PATH_BYTES_PER_FILE_BYTE: u64 = 16;

/// What one component of a leaf's path costs in memory beyond its text: a `String` (24 bytes) and the
/// allocator's own bookkeeping. Counted so that the budget bounds memory, not only text: a 1 MiB file of
/// deep paths over tiny leaves must not hold a gigabyte of small allocations.
const PATH_COMPONENT_OVERHEAD: u64 = 48;

/// Bytes read at once for headers: one positional read usually serves many small headers.
const WINDOW: usize = 64 << 10;

/// The key flax puts in the map that replaces an array above `MAX_CHUNK_SIZE`.
const CHUNKED_MARKER: &str = "__msgpack_chunked_array__";

/// The bounds a value must end before, in words for messages: the file's end, or (inside an
/// extension's payload) the payload's end.
const FILE_END: &str = "the end of the file";
const EXT_END: &str = "the end of its extension payload";

/// flax's `_MsgpackExtType.ndarray`.
const EXT_NDARRAY: i8 = 1;
/// flax's `_MsgpackExtType.native_complex`.
const EXT_COMPLEX: i8 = 2;
/// flax's `_MsgpackExtType.npscalar`.
const EXT_NPSCALAR: i8 = 3;

/// One leaf of the tree: its path of map keys from the top and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leaf {
    /// Map keys from the top level down, integer keys printed in decimal.
    pub path: Vec<String>,
    /// What the leaf holds.
    pub kind: LeafKind,
}

/// What a leaf holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeafKind {
    /// Raw little-endian C-order bytes of one array at [offset, offset+len) in the file.
    Array {
        /// The element type, from numpy's dtype name.
        dtype: DType,
        /// The shape, outermost axis first; empty for a numpy scalar.
        shape: Vec<usize>,
        /// File offset of the first data byte.
        offset: u64,
        /// Bytes of data: exactly the shape's element count times the dtype's size.
        len: u64,
    },
    /// An array flax split into chunks along its leading axis (or however flax splits it: say so), in order.
    ///
    /// flax flattens the array in C order and cuts the flat array into pieces of
    /// `2**30 / itemsize` elements (the last one shorter), so a piece boundary need not fall
    /// on a row. The pieces' bytes, concatenated in the order given (flax's index order,
    /// `'0'`, `'1'`, ...), are the array's little-endian C-order bytes.
    Chunked {
        /// The element type, the same for every piece.
        dtype: DType,
        /// The array's shape, from the map's `shape` entry.
        shape: Vec<usize>,
        /// Each piece's (file offset, length in bytes), in index order; the lengths sum to
        /// the shape's element count times the dtype's size.
        pieces: Vec<(u64, u64)>,
    },
    /// A non-array leaf, described in words for reports, e.g. "int 100", "str", "nil", "float 0.5".
    Scalar(String),
}

/// True when `head` (the first bytes of a file) can start a flax msgpack checkpoint: a msgpack map header.
///
/// `head` is the start of the file, all of it when the file is shorter than `head`. A
/// non-empty map must be followed by the start of a string or integer key; an empty map
/// must be the whole file (`msgpack.unpackb` refuses trailing bytes). That rules out a
/// pickle (`\x80\x02`), which starts with what would be an empty map. The test is weak
/// (two bytes), so it is meant to run after the other formats' sniffs.
pub(crate) fn sniff(head: &[u8]) -> bool {
    let Some((&first, rest)) = head.split_first() else {
        return false;
    };
    let (count, rest) = match first {
        0x80..=0x8f => (u64::from(first & 0x0f), rest),
        0xde => match (rest.get(..2), rest.get(2..)) {
            (Some(&[a, b]), Some(rest)) => (u64::from(u16::from_be_bytes([a, b])), rest),
            _ => return false,
        },
        0xdf => match (rest.get(..4), rest.get(4..)) {
            (Some(&[a, b, c, d]), Some(rest)) => {
                (u64::from(u32::from_be_bytes([a, b, c, d])), rest)
            }
            _ => return false,
        },
        _ => return false,
    };
    if count == 0 {
        return rest.is_empty();
    }
    rest.first().is_some_and(|&b| starts_key(b))
}

/// Whether `b` starts a msgpack string or integer, the key types this reader accepts.
fn starts_key(b: u8) -> bool {
    matches!(b, 0x00..=0x7f | 0xa0..=0xbf | 0xcc..=0xd3 | 0xd9..=0xdb | 0xe0..=0xff)
}

/// Walks the whole msgpack tree of `file` (`file_len` bytes) and returns its leaves in file order.
/// Empty maps (an optax EmptyState) yield no leaf. The fuzz target runs the same walker over a slice
/// (`read_tree_from_slice`).
pub(crate) fn read_tree(path: &Path, file: &File, file_len: u64) -> Result<Vec<Leaf>> {
    Walker::new(path, file, file_len).walk()
}

/// The same walk over bytes in memory, for the fuzz target; `path` only names them in errors.
pub(crate) fn read_tree_from_slice(path: &Path, bytes: &[u8]) -> Result<Vec<Leaf>> {
    Walker::new(path, bytes, bytes.len() as u64).walk()
}

/// Somewhere bytes can be read from at any offset without a cursor: a file, or bytes in memory.
trait ReadAt {
    /// Fills `buf` with the bytes at `offset`, or fails (an end of data is `UnexpectedEof`).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        crate::source::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let piece = usize::try_from(offset)
            .ok()
            .and_then(|from| self.get(from..from.checked_add(buf.len())?))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(piece);
        Ok(())
    }
}

/// One msgpack value's header, with the lengths and counts it declares (not yet checked).
#[derive(Debug, Clone, Copy)]
enum Head {
    Nil,
    Bool(bool),
    Int(i128),
    F32(f32),
    F64(f64),
    Str(u64),
    Bin(u64),
    Array(u64),
    Map(u64),
    Ext(i8, u64),
}

/// The walk's state: where it is, what bounds the current value, and what it found.
struct Walker<'a, R: ReadAt + ?Sized> {
    file: &'a Path,
    src: &'a R,
    file_len: u64,
    /// Where the value being read must end: the file's end, or the end of the ext payload
    /// being read, so that nothing inside an extension reaches past it.
    end: u64,
    /// `end` in words, for messages.
    bound: &'static str,
    /// Offset of the next byte to read.
    pos: u64,
    /// Bytes of the file starting at `window_at`, reused for consecutive small reads.
    window: Vec<u8>,
    window_at: u64,
    /// The keys from the top level down to the value being read.
    keys: Vec<String>,
    /// The leaves found so far, in file order.
    items: Vec<Leaf>,
    /// The most leaves this file may yield.
    leaf_limit: u64,
    /// Bytes of leaf paths so far, and the most they may reach.
    path_bytes: u64,
    path_budget: u64,
}

impl<'a, R: ReadAt + ?Sized> Walker<'a, R> {
    fn new(file: &'a Path, src: &'a R, file_len: u64) -> Self {
        Walker {
            file,
            src,
            file_len,
            end: file_len,
            bound: FILE_END,
            pos: 0,
            window: Vec::new(),
            window_at: 0,
            keys: Vec::new(),
            items: Vec::new(),
            leaf_limit: MAX_LEAVES.min(file_len),
            path_bytes: 0,
            path_budget: PATH_BYTES_BASE
                .saturating_add(file_len.saturating_mul(PATH_BYTES_PER_FILE_BYTE)),
        }
    }

    /// Reads the top-level map and everything under it, then checks nothing follows it.
    fn walk(mut self) -> Result<Vec<Leaf>> {
        let head = self.head()?;
        let Head::Map(n) = head else {
            return Err(self.err(0, "the top level is not a map (flax writes a state dict)"));
        };
        self.map(0, n, 0)?;
        if self.pos != self.file_len {
            return Err(self.err(self.pos, "bytes follow the top-level map"));
        }
        Ok(self.items)
    }

    /// The current tree path joined with `/`, for messages.
    fn tree(&self) -> String {
        self.keys.join("/")
    }

    fn err(&self, offset: u64, what: &'static str) -> Error {
        Error::Msgpack {
            path: self.file.to_path_buf(),
            tensor: self.tree(),
            offset,
            what,
        }
    }

    fn limit(&self, offset: u64, what: &'static str, limit: u64, found: u64) -> Error {
        Error::MsgpackLimit {
            path: self.file.to_path_buf(),
            tensor: self.tree(),
            offset,
            what,
            limit,
            found,
        }
    }

    /// Bytes between the read position and the current bound.
    fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }

    /// Refuses a declared length (or count of values of at least `unit` bytes each) that the
    /// remaining bytes cannot hold. Called before anything is read or allocated from it.
    fn check_len(
        &self,
        header_at: u64,
        what: &'static str,
        declared: u64,
        unit: u64,
    ) -> Result<()> {
        let remaining = self.remaining();
        if declared <= remaining.checked_div(unit).unwrap_or(remaining) {
            return Ok(());
        }
        Err(Error::MsgpackLength {
            path: self.file.to_path_buf(),
            tensor: self.tree(),
            offset: header_at,
            what,
            declared,
            remaining,
            bound: self.bound,
        })
    }

    /// The next `n` bytes (a header or a key, never tensor data), served from the window.
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let at = self.pos;
        let need = n as u64;
        let Some(stop) = at.checked_add(need).filter(|&s| s <= self.end) else {
            return Err(if self.bound == FILE_END {
                Error::truncated(self.file, &self.tree(), at, need, self.remaining())
            } else {
                self.err(at, "a header runs past the end of its extension payload")
            });
        };
        let window_end = self.window_at.saturating_add(self.window.len() as u64);
        if at < self.window_at || stop > window_end {
            // `stop <= end <= file_len`, so the refill reads only bytes the file has.
            let len = (WINDOW as u64)
                .min(self.file_len.saturating_sub(at))
                .max(need);
            let len = usize::try_from(len).map_err(|_| self.err(at, "a header is too long"))?;
            self.window.resize(len, 0);
            self.window_at = at;
            if let Err(e) = self.src.read_at(&mut self.window, at) {
                self.window.clear();
                return Err(Error::io_tensor(self.file, &self.tree(), e));
            }
        }
        self.pos = stop;
        let from = usize::try_from(at.saturating_sub(self.window_at)).unwrap_or(usize::MAX);
        let window = &self.window;
        let piece = from.checked_add(n).and_then(|to| window.get(from..to));
        // The refill above guarantees the range; an empty answer would only hide a bug.
        piece.ok_or_else(|| Error::Msgpack {
            path: self.file.to_path_buf(),
            tensor: self.keys.join("/"),
            offset: at,
            what: "internal error: a header read fell outside the read window",
        })
    }

    /// The next `N` bytes as an array, for fixed-size header fields.
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Moves past `n` bytes of payload without reading them; `n` was checked by `check_len`.
    fn skip(&mut self, n: u64) -> Result<()> {
        let at = self.pos;
        self.pos = at
            .checked_add(n)
            .filter(|&s| s <= self.end)
            .ok_or_else(|| self.err(at, "internal error: a payload was skipped unchecked"))?;
        Ok(())
    }

    /// Reads one value's header: its type and the length or count it declares.
    fn head(&mut self) -> Result<Head> {
        let at = self.pos;
        let [b] = self.fixed::<1>()?;
        let u8_len = |w: &mut Self| w.fixed::<1>().map(|[x]| u64::from(x));
        let u16_len = |w: &mut Self| w.fixed::<2>().map(|x| u64::from(u16::from_be_bytes(x)));
        let u32_len = |w: &mut Self| w.fixed::<4>().map(|x| u64::from(u32::from_be_bytes(x)));
        let ext = |w: &mut Self, len: u64| -> Result<Head> {
            let [t] = w.fixed::<1>()?;
            Ok(Head::Ext(i8::from_be_bytes([t]), len))
        };
        Ok(match b {
            0x00..=0x7f => Head::Int(i128::from(b)),
            0x80..=0x8f => Head::Map(u64::from(b & 0x0f)),
            0x90..=0x9f => Head::Array(u64::from(b & 0x0f)),
            0xa0..=0xbf => Head::Str(u64::from(b & 0x1f)),
            0xc0 => Head::Nil,
            0xc1 => return Err(self.err(at, "byte 0xc1, which msgpack never uses")),
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4 => Head::Bin(u8_len(self)?),
            0xc5 => Head::Bin(u16_len(self)?),
            0xc6 => Head::Bin(u32_len(self)?),
            0xc7 => {
                let n = u8_len(self)?;
                ext(self, n)?
            }
            0xc8 => {
                let n = u16_len(self)?;
                ext(self, n)?
            }
            0xc9 => {
                let n = u32_len(self)?;
                ext(self, n)?
            }
            0xca => Head::F32(f32::from_be_bytes(self.fixed()?)),
            0xcb => Head::F64(f64::from_be_bytes(self.fixed()?)),
            0xcc => Head::Int(i128::from(u8::from_be_bytes(self.fixed()?))),
            0xcd => Head::Int(i128::from(u16::from_be_bytes(self.fixed()?))),
            0xce => Head::Int(i128::from(u32::from_be_bytes(self.fixed()?))),
            0xcf => Head::Int(i128::from(u64::from_be_bytes(self.fixed()?))),
            0xd0 => Head::Int(i128::from(i8::from_be_bytes(self.fixed()?))),
            0xd1 => Head::Int(i128::from(i16::from_be_bytes(self.fixed()?))),
            0xd2 => Head::Int(i128::from(i32::from_be_bytes(self.fixed()?))),
            0xd3 => Head::Int(i128::from(i64::from_be_bytes(self.fixed()?))),
            0xd4 => ext(self, 1)?,
            0xd5 => ext(self, 2)?,
            0xd6 => ext(self, 4)?,
            0xd7 => ext(self, 8)?,
            0xd8 => ext(self, 16)?,
            0xd9 => Head::Str(u8_len(self)?),
            0xda => Head::Str(u16_len(self)?),
            0xdb => Head::Str(u32_len(self)?),
            0xdc => Head::Array(u16_len(self)?),
            0xdd => Head::Array(u32_len(self)?),
            0xde => Head::Map(u16_len(self)?),
            0xdf => Head::Map(u32_len(self)?),
            0xe0..=0xff => Head::Int(i128::from(i8::from_be_bytes([b]))),
        })
    }

    /// Reads one value at `depth` (the number of maps and arrays around it) and records its leaves.
    fn value(&mut self, depth: usize) -> Result<()> {
        let at = self.pos;
        match self.head()? {
            Head::Map(n) => self.map(at, n, depth),
            Head::Array(n) => self.array(at, n, depth),
            Head::Ext(t, n) => {
                self.check_len(at, "an extension's length", n, 1)?;
                self.ext(at, t, n)
            }
            Head::Str(n) => {
                self.check_len(at, "a string's length", n, 1)?;
                self.skip(n)?;
                self.leaf(at, LeafKind::Scalar(format!("str ({n} bytes)")))
            }
            Head::Bin(n) => {
                self.check_len(at, "a bin's length", n, 1)?;
                self.skip(n)?;
                self.leaf(at, LeafKind::Scalar(format!("bin ({n} bytes)")))
            }
            Head::Nil => self.leaf(at, LeafKind::Scalar("nil".into())),
            Head::Bool(b) => self.leaf(at, LeafKind::Scalar(format!("bool {b}"))),
            Head::Int(v) => self.leaf(at, LeafKind::Scalar(format!("int {v}"))),
            Head::F32(v) => self.leaf(at, LeafKind::Scalar(format!("float {v}"))),
            Head::F64(v) => self.leaf(at, LeafKind::Scalar(format!("float {v}"))),
        }
    }

    /// The nesting depth inside a container at `depth`, refused past `MAX_DEPTH`.
    fn enter(&self, at: u64, depth: usize) -> Result<usize> {
        match depth.checked_add(1) {
            Some(d) if d <= MAX_DEPTH => Ok(d),
            _ => Err(self.limit(
                at,
                "the nesting depth",
                MAX_DEPTH as u64,
                depth.saturating_add(1) as u64,
            )),
        }
    }

    /// Reads a map of `n` entries whose header starts at `at`. A map holding flax's chunk
    /// marker is read again as one chunked array once its keys are known.
    fn map(&mut self, at: u64, n: u64, depth: usize) -> Result<()> {
        let depth = self.enter(at, depth)?;
        if n > MAX_ENTRIES {
            return Err(self.limit(at, "a map's entry count", MAX_ENTRIES, n));
        }
        // Each entry takes at least a one-byte key and a one-byte value.
        self.check_len(at, "a map's entry count (2 bytes or more each)", n, 2)?;
        let first_item = self.items.len();
        let mut seen = HashSet::new();
        for _ in 0..n {
            let key_at = self.pos;
            let key = self.key()?;
            if !seen.insert(key.clone()) {
                return Err(Error::MsgpackDuplicateKey {
                    path: self.file.to_path_buf(),
                    tensor: self.tree(),
                    offset: key_at,
                    key,
                });
            }
            self.keys.push(key);
            self.value(depth)?;
            self.keys.pop();
        }
        if seen.contains(CHUNKED_MARKER) {
            self.rechunk(at, first_item, &seen)?;
        }
        Ok(())
    }

    /// Reads an array of `n` values; flax writes none (lists become maps), but a plain
    /// `msgpack_serialize` of a tree with tuples would, so its elements are named by index.
    fn array(&mut self, at: u64, n: u64, depth: usize) -> Result<()> {
        let depth = self.enter(at, depth)?;
        if n > MAX_ENTRIES {
            return Err(self.limit(at, "an array's element count", MAX_ENTRIES, n));
        }
        self.check_len(at, "an array's element count (1 byte or more each)", n, 1)?;
        for i in 0..n {
            self.keys.push(i.to_string());
            self.value(depth)?;
            self.keys.pop();
        }
        Ok(())
    }

    /// Reads a map key: a string, or an integer printed in decimal.
    fn key(&mut self) -> Result<String> {
        let at = self.pos;
        match self.head()? {
            Head::Str(n) => self.short_text(at, n, "a map key's length", MAX_KEY_LEN),
            Head::Int(v) => Ok(v.to_string()),
            _ => Err(self.err(
                at,
                "a map key is neither a string nor an integer (flax writes string keys)",
            )),
        }
    }

    /// Reads `n` bytes of UTF-8 text (a key or a dtype name) after checking `n` against `max`
    /// and against the bytes that remain.
    fn short_text(&mut self, at: u64, n: u64, what: &'static str, max: u64) -> Result<String> {
        if n > max {
            return Err(self.limit(at, what, max, n));
        }
        self.check_len(at, what, n, 1)?;
        let len = usize::try_from(n).map_err(|_| self.limit(at, what, max, n))?;
        let bytes = self.take(len)?.to_vec();
        String::from_utf8(bytes).map_err(|_| self.err(at, "a key or dtype name is not valid UTF-8"))
    }

    /// Records a leaf at the current path, within the leaf and path-bytes limits.
    fn leaf(&mut self, at: u64, kind: LeafKind) -> Result<()> {
        let count = self.items.len() as u64;
        if count >= self.leaf_limit {
            return Err(self.limit(
                at,
                "the number of leaves",
                self.leaf_limit,
                count.saturating_add(1),
            ));
        }
        let bytes = self.keys.iter().fold(0u64, |acc, k| {
            acc.saturating_add(k.len() as u64)
                .saturating_add(PATH_COMPONENT_OVERHEAD)
        });
        let total = self.path_bytes.saturating_add(bytes);
        if total > self.path_budget {
            return Err(self.limit(at, "the bytes of leaf paths", self.path_budget, total));
        }
        self.path_bytes = total;
        self.items.push(Leaf {
            path: self.keys.clone(),
            kind,
        });
        Ok(())
    }

    /// Reads the payload of an extension of type `t` and `n` bytes (checked to fit).
    fn ext(&mut self, at: u64, t: i8, n: u64) -> Result<()> {
        let stop = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.err(at, "an extension's length overflows"))?;
        match t {
            EXT_NDARRAY | EXT_NPSCALAR => {
                let kind = self.inside(at, stop, |w| w.ndarray(at))?;
                self.leaf(at, kind)
            }
            EXT_COMPLEX => {
                let text = self.inside(at, stop, |w| w.complex(at))?;
                self.leaf(at, LeafKind::Scalar(text))
            }
            _ => {
                self.skip(n)?;
                self.leaf(
                    at,
                    LeafKind::Scalar(format!("msgpack ext type {t} ({n} bytes)")),
                )
            }
        }
    }

    /// Runs `f` with the bound moved to `stop` (an extension's end), then checks that `f`
    /// read the payload exactly: flax's payload is one msgpack value and nothing else.
    fn inside<T>(
        &mut self,
        at: u64,
        stop: u64,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let (end, bound) = (self.end, self.bound);
        self.end = stop;
        self.bound = EXT_END;
        let out = f(self);
        self.end = end;
        self.bound = bound;
        let out = out?;
        if self.pos != stop {
            return Err(self.err(at, "bytes follow the value inside an extension payload"));
        }
        Ok(out)
    }

    /// Reads an ndarray payload, `[shape, dtype name, data]`, and checks that the data's
    /// length is exactly the shape's element count times the dtype's size.
    fn ndarray(&mut self, at: u64) -> Result<LeafKind> {
        let Head::Array(3) = self.head()? else {
            return Err(self.err(
                at,
                "an ndarray extension is not a [shape, dtype name, data] triple",
            ));
        };
        let shape_at = self.pos;
        let Head::Array(rank) = self.head()? else {
            return Err(self.err(shape_at, "an ndarray's shape is not an array"));
        };
        if rank > MAX_RANK {
            return Err(self.limit(shape_at, "an ndarray's rank", MAX_RANK, rank));
        }
        self.check_len(
            shape_at,
            "an ndarray's rank (1 byte or more per axis)",
            rank,
            1,
        )?;
        let mut shape = Vec::new();
        for _ in 0..rank {
            let dim_at = self.pos;
            let dim = match self.head()? {
                Head::Int(v) => usize::try_from(v).ok(),
                _ => None,
            };
            shape.push(dim.ok_or_else(|| {
                self.err(
                    dim_at,
                    "an ndarray's shape holds something other than a size",
                )
            })?);
        }
        let name_at = self.pos;
        let name = match self.head()? {
            Head::Str(n) | Head::Bin(n) => {
                self.short_text(name_at, n, "an ndarray's dtype name length", MAX_DTYPE_NAME)?
            }
            _ => return Err(self.err(name_at, "an ndarray's dtype name is not a string")),
        };
        let dtype = dtype_from_flax(&name).ok_or_else(|| Error::UnknownDType {
            path: self.file.to_path_buf(),
            tensor: self.tree(),
            descr: name.clone(),
        })?;
        let data_at = self.pos;
        let len = match self.head()? {
            Head::Bin(n) | Head::Str(n) => n,
            _ => return Err(self.err(data_at, "an ndarray's data is not a bin")),
        };
        self.check_len(data_at, "an ndarray's data length", len, 1)?;
        let offset = self.pos;
        self.skip(len)?;
        let expected = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .and_then(|n| n.checked_mul(dtype.size() as u64))
            .ok_or_else(|| Error::shape_overflow(self.file, &self.tree(), &shape))?;
        if expected != len {
            return Err(Error::SizeMismatch {
                path: self.file.to_path_buf(),
                tensor: self.tree(),
                expected,
                found: len,
            });
        }
        Ok(LeafKind::Array {
            dtype,
            shape,
            offset,
            len,
        })
    }

    /// Reads a native complex payload, `[real, imag]`, into words.
    fn complex(&mut self, at: u64) -> Result<String> {
        let bad = "a complex extension is not a [real, imag] pair of numbers";
        let Head::Array(2) = self.head()? else {
            return Err(self.err(at, bad));
        };
        let mut parts = Vec::with_capacity(2);
        for _ in 0..2 {
            parts.push(match self.head()? {
                Head::F64(v) => v.to_string(),
                Head::F32(v) => v.to_string(),
                Head::Int(v) => v.to_string(),
                _ => return Err(self.err(at, bad)),
            });
        }
        Ok(format!("complex ({})", parts.join(", ")))
    }

    /// Replaces the leaves of the chunked-array map at `at` (the items from `first_item` on)
    /// with one `Chunked` leaf, reading the map's headers a second time now that its keys are
    /// known to be flax's. The first pass already checked every length and limit in it.
    fn rechunk(&mut self, at: u64, first_item: usize, keys: &HashSet<String>) -> Result<()> {
        let expected = [CHUNKED_MARKER, "shape", "chunks"];
        if keys.len() != expected.len() || !expected.iter().all(|k| keys.contains(*k)) {
            return Err(self.err(
                at,
                "a map with the __msgpack_chunked_array__ marker does not hold exactly the keys __msgpack_chunked_array__, shape and chunks",
            ));
        }
        let map_end = self.pos;
        self.pos = at;
        let kind = self.chunked(at)?;
        if self.pos != map_end {
            return Err(self.err(at, "internal error: a chunked map read differently twice"));
        }
        self.items.truncate(first_item);
        // The pieces' leaves were counted against the path budget already; the one leaf that
        // replaces them is not counted again.
        self.items.push(Leaf {
            path: self.keys.clone(),
            kind,
        });
        Ok(())
    }

    /// Reads a chunked-array map strictly: `true` under the marker, a map of sizes under
    /// `shape`, a map of 1-D ndarrays of one dtype under `chunks`, both indexed `'0'`, `'1'`, ...
    fn chunked(&mut self, at: u64) -> Result<LeafKind> {
        let Head::Map(n) = self.head()? else {
            return Err(self.err(at, "internal error: a chunked map is no longer a map"));
        };
        let mut shape = None;
        let mut chunks = None;
        for _ in 0..n {
            let key = self.key()?;
            self.keys.push(key.clone());
            let value_at = self.pos;
            match key.as_str() {
                CHUNKED_MARKER => {
                    let Head::Bool(true) = self.head()? else {
                        return Err(self.err(
                            value_at,
                            "the __msgpack_chunked_array__ marker is not `true`",
                        ));
                    };
                }
                "shape" => {
                    let dims = self.indexed(value_at, MAX_RANK, |w, dim_at| match w.head()? {
                        Head::Int(v) => usize::try_from(v).map_err(|_| {
                            w.err(
                                dim_at,
                                "a chunked array's shape holds something other than a size",
                            )
                        }),
                        _ => Err(w.err(
                            dim_at,
                            "a chunked array's shape holds something other than a size",
                        )),
                    })?;
                    shape = Some(dims);
                }
                "chunks" => {
                    let pieces = self.indexed(value_at, MAX_ENTRIES, |w, piece_at| {
                        let bad = "a piece of a chunked array is not a 1-D ndarray";
                        let Head::Ext(EXT_NDARRAY, len) = w.head()? else {
                            return Err(w.err(piece_at, bad));
                        };
                        let stop = w.pos.checked_add(len).ok_or_else(|| w.err(piece_at, bad))?;
                        match w.inside(piece_at, stop, |w| w.ndarray(piece_at))? {
                            LeafKind::Array {
                                dtype,
                                shape,
                                offset,
                                len,
                            } if shape.len() == 1 => Ok((dtype, offset, len)),
                            _ => Err(w.err(piece_at, bad)),
                        }
                    })?;
                    chunks = Some(pieces);
                }
                _ => return Err(self.err(at, "internal error: a chunked map's keys changed")),
            }
            self.keys.pop();
        }
        let (Some(shape), Some(chunks)) = (shape, chunks) else {
            return Err(self.err(at, "internal error: a chunked map's keys changed"));
        };
        let Some(&(dtype, _, _)) = chunks.first() else {
            return Err(self.err(at, "a chunked array has no chunks"));
        };
        if chunks.iter().any(|&(d, _, _)| d != dtype) {
            return Err(self.err(at, "the chunks of a chunked array have different dtypes"));
        }
        let found = chunks
            .iter()
            .try_fold(0u64, |acc, &(_, _, len)| acc.checked_add(len))
            .ok_or_else(|| self.err(at, "the chunks' lengths overflow"))?;
        let expected = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .and_then(|n| n.checked_mul(dtype.size() as u64))
            .ok_or_else(|| Error::shape_overflow(self.file, &self.tree(), &shape))?;
        if expected != found {
            return Err(Error::SizeMismatch {
                path: self.file.to_path_buf(),
                tensor: self.tree(),
                expected,
                found,
            });
        }
        Ok(LeafKind::Chunked {
            dtype,
            shape,
            pieces: chunks.into_iter().map(|(_, o, l)| (o, l)).collect(),
        })
    }

    /// Reads a map `{'0': v0, '1': v1, ...}` (flax's `_tuple_to_dict`) with at most `max`
    /// entries, each value read by `f`, and returns the values in index order. Every index
    /// from 0 to the entry count must appear once, as `_dict_to_tuple` looks them up so.
    fn indexed<T>(
        &mut self,
        at: u64,
        max: u64,
        mut f: impl FnMut(&mut Self, u64) -> Result<T>,
    ) -> Result<Vec<T>> {
        let Head::Map(n) = self.head()? else {
            return Err(self.err(at, "a chunked array's shape or chunks is not a map"));
        };
        if n > max {
            return Err(self.limit(at, "a chunked array's shape or chunk count", max, n));
        }
        let mut found = Vec::new();
        for _ in 0..n {
            let key_at = self.pos;
            let key = self.key()?;
            let index = key
                .parse::<u64>()
                .ok()
                .filter(|i| i.to_string() == key && *i < n)
                .ok_or_else(|| {
                    self.err(
                        key_at,
                        "a chunked array's shape or chunks is not indexed 0, 1, 2, ...",
                    )
                })?;
            self.keys.push(key);
            let value_at = self.pos;
            let value = f(self, value_at)?;
            self.keys.pop();
            found.push((index, value));
        }
        // Distinct keys (the first pass refused duplicates) all below `n`: sorted, they are 0..n.
        found.sort_by_key(|&(i, _)| i);
        Ok(found.into_iter().map(|(_, v)| v).collect())
    }
}

/// Maps numpy's `dtype.name` (what `_ndarray_to_bytes` writes) to a [`DType`].
fn dtype_from_flax(name: &str) -> Option<DType> {
    DType::from_numpy_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Write;
    use std::path::PathBuf;

    // ---- A small msgpack encoder for hand-made files. ----

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn map(n: usize) -> Vec<u8> {
        match n {
            0..=15 => vec![0x80 | n as u8],
            16..=0xffff => cat(&[&[0xde], &(n as u16).to_be_bytes()]),
            _ => cat(&[&[0xdf], &(n as u32).to_be_bytes()]),
        }
    }

    fn arr(n: usize) -> Vec<u8> {
        match n {
            0..=15 => vec![0x90 | n as u8],
            _ => cat(&[&[0xdc], &(n as u16).to_be_bytes()]),
        }
    }

    fn s(text: &str) -> Vec<u8> {
        let b = text.as_bytes();
        match b.len() {
            0..=31 => cat(&[&[0xa0 | b.len() as u8], b]),
            32..=255 => cat(&[&[0xd9, b.len() as u8], b]),
            _ => cat(&[&[0xda], &(b.len() as u16).to_be_bytes(), b]),
        }
    }

    fn uint(v: u64) -> Vec<u8> {
        match v {
            0..=127 => vec![v as u8],
            128..=255 => vec![0xcc, v as u8],
            _ => cat(&[&[0xcf], &v.to_be_bytes()]),
        }
    }

    fn bin(data: &[u8]) -> Vec<u8> {
        match data.len() {
            0..=255 => cat(&[&[0xc4, data.len() as u8], data]),
            _ => cat(&[&[0xc6], &(data.len() as u32).to_be_bytes(), data]),
        }
    }

    fn ext(t: i8, payload: &[u8]) -> Vec<u8> {
        let t = t as u8;
        match payload.len() {
            0..=255 => cat(&[&[0xc7, payload.len() as u8, t], payload]),
            256..=0xffff => cat(&[
                &[0xc8],
                &(payload.len() as u16).to_be_bytes(),
                &[t],
                payload,
            ]),
            _ => cat(&[
                &[0xc9],
                &(payload.len() as u32).to_be_bytes(),
                &[t],
                payload,
            ]),
        }
    }

    /// `_ndarray_to_bytes`'s payload: `[shape, dtype name, data]`.
    fn nd_payload(shape: &[u64], dtype: &str, data: &[u8]) -> Vec<u8> {
        let mut out = arr(3);
        out.extend(arr(shape.len()));
        for &d in shape {
            out.extend(uint(d));
        }
        out.extend(s(dtype));
        out.extend(bin(data));
        out
    }

    fn nd(shape: &[u64], dtype: &str, data: &[u8]) -> Vec<u8> {
        ext(EXT_NDARRAY, &nd_payload(shape, dtype, data))
    }

    /// `{key: value}` at the top level.
    fn one(key: &str, value: &[u8]) -> Vec<u8> {
        cat(&[&map(1), &s(key), value])
    }

    fn f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    // ---- Running the reader. ----

    /// Reads `bytes` through a file (`read_tree`) and from memory (`read_tree_from_slice`),
    /// checks both walks agree, and returns the file walk's answer.
    fn read(bytes: &[u8]) -> Result<Vec<Leaf>> {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(bytes).unwrap();
        tmp.flush().unwrap();
        let file = File::open(tmp.path()).unwrap();
        let from_file = read_tree(tmp.path(), &file, bytes.len() as u64);
        let from_slice = read_tree_from_slice(tmp.path(), bytes);
        match (&from_file, &from_slice) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("file and slice walks disagree: {from_file:?} vs {from_slice:?}"),
        }
        from_file
    }

    fn err(bytes: &[u8]) -> Error {
        match read(bytes) {
            Ok(leaves) => panic!("expected an error, got {leaves:?}"),
            Err(e) => e,
        }
    }

    fn scalar(leaf: &Leaf) -> &str {
        match &leaf.kind {
            LeafKind::Scalar(text) => text,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    // ---- Golden files written by flax 0.12.8. ----

    fn fixture(case: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/containers")
            .join(case)
    }

    fn golden_dtype(name: &str) -> DType {
        match name {
            "float32" => DType::F32,
            "bfloat16" => DType::BF16,
            "int32" => DType::I32,
            "int64" => DType::I64,
            other => panic!("expected.json names dtype {other}"),
        }
    }

    /// Every row of `expected.json` (params and non_params) is exactly one leaf, with its
    /// dtype and shape, and the bytes at the leaf's range hash to the row's sha256.
    fn check_golden(case: &str, entry: &str) {
        let dir = fixture(case);
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let path = dir.join(entry);
        let bytes = std::fs::read(&path).unwrap();
        let file = File::open(&path).unwrap();
        let leaves = read_tree(&path, &file, bytes.len() as u64).unwrap();
        assert_eq!(leaves, read_tree_from_slice(&path, &bytes).unwrap());

        let rows: Vec<&serde_json::Value> = ["params", "non_params"]
            .iter()
            .flat_map(|k| expected[*k].as_array().unwrap())
            .collect();
        assert_eq!(leaves.len(), rows.len(), "{case}: one leaf per row");
        let mut by_name = std::collections::HashMap::new();
        for leaf in &leaves {
            assert!(by_name.insert(leaf.path.join("/"), leaf).is_none());
        }
        for row in rows {
            let name = row["name"].as_str().unwrap();
            let leaf = by_name
                .get(name)
                .unwrap_or_else(|| panic!("{case}: no leaf {name}"));
            let path: Vec<&str> = row["path"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap())
                .collect();
            assert_eq!(leaf.path, path);
            if row["dtype"].is_null() {
                // A python int: a plain msgpack integer.
                assert_eq!(row["kind"], "python int");
                assert_eq!(scalar(leaf), format!("int {}", row["value"]));
                continue;
            }
            let LeafKind::Array {
                dtype,
                shape,
                offset,
                len,
            } = &leaf.kind
            else {
                panic!("{case}: {name} is not an array: {:?}", leaf.kind);
            };
            assert_eq!(
                *dtype,
                golden_dtype(row["dtype"].as_str().unwrap()),
                "{name}"
            );
            let want: Vec<usize> = row["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(*shape, want, "{name}");
            assert_eq!(*len, row["nbytes"].as_u64().unwrap(), "{name}");
            let data = &bytes[*offset as usize..(*offset + *len) as usize];
            let digest = format!("{:x}", Sha256::digest(data));
            assert_eq!(digest, row["sha256"].as_str().unwrap(), "{name}");
        }
    }

    #[test]
    fn golden_vit_token_checkpoint() {
        check_golden("msgpack-vit-token", "checkpoint_100");
    }

    #[test]
    fn golden_hf_style_params() {
        check_golden("msgpack-bv-hfstyle", "flax_model.msgpack");
    }

    #[test]
    fn golden_heads_sniff_as_msgpack() {
        for (case, entry) in [
            ("msgpack-vit-token", "checkpoint_100"),
            ("msgpack-bv-hfstyle", "flax_model.msgpack"),
        ] {
            let bytes = std::fs::read(fixture(case).join(entry)).unwrap();
            assert!(sniff(&bytes[..16]), "{case}");
        }
    }

    #[test]
    fn sniff_refuses_other_formats() {
        assert!(!sniff(b""));
        assert!(!sniff(b"\x80\x02}q\x00(X\x01\x00\x00\x00a")); // a bare pickle
        assert!(!sniff(b"\x93NUMPY\x01\x00v\x00{'descr'"));
        assert!(!sniff(b"PK\x03\x04\x14\x00\x00\x00"));
        assert!(!sniff(&[0x81])); // a one-entry map with no key
        assert!(!sniff(&[0x81, 0xc0])); // a nil key
        assert!(sniff(&[0x80])); // an empty state dict, the whole file
        assert!(sniff(&[0x81, 0xa1, b'a', 0x01]));
        assert!(sniff(&[0xde, 0x00, 0x01, 0x05]));
        assert!(sniff(&[0xdf, 0x00, 0x00, 0x00, 0x00]));
        assert!(!sniff(&[0xdf, 0x00, 0x00, 0x00, 0x00, 0x00]));
    }

    // ---- Chunked arrays (flax's _chunk). ----

    /// A [2, 3] float32 array cut into pieces of 4 and 2 elements, written with the map's
    /// keys and the pieces in an order flax would not use: the pieces come back in index order.
    #[test]
    fn chunked_array_reassembles_in_index_order() {
        let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let piece0 = nd(&[4], "float32", &f32s(&values[..4]));
        let piece1 = nd(&[2], "float32", &f32s(&values[4..]));
        let chunked = cat(&[
            &map(3),
            &s("shape"),
            &cat(&[&map(2), &s("1"), &uint(3), &s("0"), &uint(2)]),
            &s("chunks"),
            &cat(&[&map(2), &s("1"), &piece1, &s("0"), &piece0]),
            &s(CHUNKED_MARKER),
            &[0xc3],
        ]);
        let bytes = cat(&[&map(2), &s("emb"), &chunked, &s("step"), &uint(7)]);
        let leaves = read(&bytes).unwrap();
        assert_eq!(leaves.len(), 2);
        assert_eq!(leaves[0].path, ["emb"]);
        let LeafKind::Chunked {
            dtype,
            shape,
            pieces,
        } = &leaves[0].kind
        else {
            panic!("{:?}", leaves[0].kind);
        };
        assert_eq!((*dtype, shape.as_slice()), (DType::F32, &[2usize, 3][..]));
        assert_eq!(pieces.iter().map(|p| p.1).collect::<Vec<_>>(), [16, 8]);
        let joined: Vec<u8> = pieces
            .iter()
            .flat_map(|&(o, l)| bytes[o as usize..(o + l) as usize].to_vec())
            .collect();
        assert_eq!(joined, f32s(&values));
        assert_eq!(scalar(&leaves[1]), "int 7");
    }

    fn chunked_map(marker: &[u8], shape: &[u8], chunks: &[u8]) -> Vec<u8> {
        one(
            "w",
            &cat(&[
                &map(3),
                &s(CHUNKED_MARKER),
                marker,
                &s("shape"),
                shape,
                &s("chunks"),
                chunks,
            ]),
        )
    }

    #[test]
    fn chunked_array_errors() {
        let shape = cat(&[&map(1), &s("0"), &uint(2)]);
        let good = cat(&[&map(1), &s("0"), &nd(&[2], "float32", &[0; 8])]);
        assert!(read(&chunked_map(&[0xc3], &shape, &good)).is_ok());

        // The marker must be true, as flax writes it.
        let e = err(&chunked_map(&[0xc0], &shape, &good));
        assert!(e.to_string().contains("marker is not `true`"), "{e}");
        // A piece that is not 1-D.
        let two_d = cat(&[&map(1), &s("0"), &nd(&[1, 2], "float32", &[0; 8])]);
        assert!(matches!(
            err(&chunked_map(&[0xc3], &shape, &two_d)),
            Error::Msgpack { .. }
        ));
        // Pieces of different dtypes.
        let mixed_shape = cat(&[&map(1), &s("0"), &uint(4)]);
        let mixed = cat(&[
            &map(2),
            &s("0"),
            &nd(&[2], "float32", &[0; 8]),
            &s("1"),
            &nd(&[4], "int16", &[0; 8]),
        ]);
        let e = err(&chunked_map(&[0xc3], &mixed_shape, &mixed));
        assert!(e.to_string().contains("different dtypes"), "{e}");
        // Pieces that do not add up to the shape.
        let short = cat(&[&map(1), &s("0"), &uint(3)]);
        let e = err(&chunked_map(&[0xc3], &short, &good));
        assert!(
            matches!(&e, Error::SizeMismatch { tensor, expected: 12, found: 8, .. } if tensor == "w"),
            "{e}"
        );
        // Index keys must be the canonical 0, 1, ...
        let skewed = cat(&[&map(1), &s("01"), &nd(&[2], "float32", &[0; 8])]);
        let e = err(&chunked_map(&[0xc3], &shape, &skewed));
        assert!(e.to_string().contains("not indexed 0, 1, 2"), "{e}");
        // No pieces at all.
        let e = err(&chunked_map(&[0xc3], &shape, &map(0)));
        assert!(e.to_string().contains("no chunks"), "{e}");
        // A fourth key beside flax's three.
        let extra = one(
            "w",
            &cat(&[&map(2), &s(CHUNKED_MARKER), &[0xc3], &s("other"), &uint(1)]),
        );
        let e = err(&extra);
        assert!(
            e.to_string().contains("does not hold exactly the keys"),
            "{e}"
        );
    }

    // ---- One test per error kind. ----

    #[test]
    fn truncated_file() {
        let bytes = std::fs::read(fixture("msgpack-vit-token").join("checkpoint_100")).unwrap();
        // Cut inside the ext16 header of the first array (`c8 01 0e` at offset 41): reading
        // its length runs into the end of the file.
        let e = err(&bytes[..43]);
        assert!(
            matches!(&e, Error::Truncated { offset: 42, expected: 2, found: 1, tensor, .. }
                if tensor == "params/Transformer/encoder_norm/bias"),
            "{e}"
        );
        // Cut inside a key: its declared length outruns the file.
        let e = err(&bytes[..30]);
        assert!(matches!(e, Error::MsgpackLength { offset: 22, .. }), "{e}");
        // Every cut of a small file fails cleanly, one way or another.
        let small = cat(&[
            &map(2),
            &s("a"),
            &nd(&[2], "float32", &[1; 8]),
            &s("b"),
            &one("c", &uint(300)),
        ]);
        assert!(read(&small).is_ok());
        for cut in 0..small.len() {
            let e = err(&small[..cut]);
            assert!(
                matches!(e, Error::Truncated { .. } | Error::MsgpackLength { .. }),
                "cut {cut}: {e}"
            );
        }
        assert!(matches!(err(&[]), Error::Truncated { offset: 0, .. }));
    }

    #[test]
    fn lying_length_points_past_the_end() {
        // An ext32 claiming 2 GiB in a tiny file.
        let bytes = one("params", &one("w", &[0xc9, 0x80, 0x00, 0x00, 0x00, 0x01]));
        let e = err(&bytes);
        assert!(
            matches!(
                &e,
                Error::MsgpackLength { tensor, offset: 11, declared: 0x8000_0000, remaining: 0, .. }
                    if tensor == "params/w"
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("`params/w`") && msg.contains("offset 11") && msg.contains(".tmp"),
            "{msg}"
        );
        // A data bin inside an ndarray that claims more than its extension holds.
        let mut payload = nd_payload(&[2], "float32", &[0; 8]);
        let at = payload.len() - 9;
        payload[at] = 0xff; // the bin8 length: 255 instead of 8
        let e = err(&one("w", &ext(EXT_NDARRAY, &payload)));
        assert!(
            matches!(&e, Error::MsgpackLength { bound, .. } if bound.contains("extension")),
            "{e}"
        );
        // A map declaring more entries than bytes remain.
        let e = err(&cat(&[&[0xdf], &1000u32.to_be_bytes(), &s("a"), &uint(1)]));
        assert!(
            matches!(e, Error::MsgpackLength { declared: 1000, .. }),
            "{e}"
        );
    }

    #[test]
    fn depth_limit() {
        let nest = |levels: usize| {
            let mut bytes = Vec::new();
            for _ in 0..levels {
                bytes.extend(map(1));
                bytes.extend(s("a"));
            }
            bytes.extend(uint(1));
            bytes
        };
        let leaves = read(&nest(MAX_DEPTH)).unwrap();
        assert_eq!(leaves[0].path.len(), MAX_DEPTH);
        let e = err(&nest(MAX_DEPTH + 1));
        assert!(
            matches!(
                e,
                Error::MsgpackLimit {
                    what: "the nesting depth",
                    limit: 64,
                    found: 65,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_ext_payload() {
        // Only [shape, dtype], no data.
        let mut two = arr(2);
        two.extend(arr(0));
        two.extend(s("float32"));
        let e = err(&one("w", &ext(EXT_NDARRAY, &two)));
        assert!(
            matches!(&e, Error::Msgpack { tensor, .. } if tensor == "w"),
            "{e}"
        );
        // A byte after the triple, inside the extension.
        let mut padded = nd_payload(&[1], "int32", &[0; 4]);
        padded.push(0);
        let e = err(&one("w", &ext(EXT_NDARRAY, &padded)));
        assert!(
            e.to_string().contains("bytes follow the value inside"),
            "{e}"
        );
        // A negative size in the shape.
        let mut negative = arr(3);
        negative.extend(arr(1));
        negative.push(0xff); // -1
        negative.extend(s("int32"));
        negative.extend(bin(&[]));
        let e = err(&one("w", &ext(EXT_NDARRAY, &negative)));
        assert!(e.to_string().contains("other than a size"), "{e}");
        // A complex that is not a pair.
        let e = err(&one("z", &ext(EXT_COMPLEX, &[0x91, 0x01])));
        assert!(e.to_string().contains("[real, imag]"), "{e}");
        // An ndarray header reaching past its extension's end.
        let e = err(&one("w", &ext(EXT_NDARRAY, &[0x93, 0x91, 0xcd])));
        assert!(
            e.to_string()
                .contains("past the end of its extension payload"),
            "{e}"
        );
    }

    #[test]
    fn unknown_dtype_names_the_tensor() {
        let e = err(&one("params", &one("w", &nd(&[1], "complex64", &[0; 8]))));
        assert!(
            matches!(&e, Error::UnknownDType { tensor, descr, .. } if tensor == "params/w" && descr == "complex64"),
            "{e}"
        );
    }

    #[test]
    fn shape_and_size_must_agree() {
        let e = err(&one("w", &nd(&[2, 2], "float32", &[0; 12])));
        assert!(
            matches!(&e, Error::SizeMismatch { tensor, expected: 16, found: 12, .. } if tensor == "w"),
            "{e}"
        );
        let huge = nd(&[u64::MAX, 2], "float32", &[]);
        assert!(matches!(err(&one("w", &huge)), Error::ShapeOverflow { .. }));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let bytes = cat(&[&map(2), &s("a"), &uint(1), &s("a"), &uint(2)]);
        let e = err(&bytes);
        assert!(
            matches!(&e, Error::MsgpackDuplicateKey { key, offset: 4, .. } if key == "a"),
            "{e}"
        );
        // An integer key prints as the same text as a string key.
        let bytes = one("m", &cat(&[&map(2), &uint(1), &[0xc0], &s("1"), &[0xc0]]));
        let e = err(&bytes);
        assert!(
            matches!(&e, Error::MsgpackDuplicateKey { tensor, .. } if tensor == "m"),
            "{e}"
        );
    }

    #[test]
    fn other_limits() {
        let long = "k".repeat(MAX_KEY_LEN as usize + 1);
        let e = err(&one(&long, &uint(1)));
        assert!(
            matches!(
                e,
                Error::MsgpackLimit {
                    what: "a map key's length",
                    ..
                }
            ),
            "{e}"
        );
        let rank: Vec<u64> = vec![1; MAX_RANK as usize + 1];
        let e = err(&one("w", &nd(&rank, "uint8", &[0])));
        assert!(
            matches!(
                e,
                Error::MsgpackLimit {
                    what: "an ndarray's rank",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(&cat(&[&[0xdf], &(MAX_ENTRIES as u32 + 1).to_be_bytes()]));
        assert!(
            matches!(
                e,
                Error::MsgpackLimit {
                    what: "a map's entry count",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn structure_errors() {
        assert!(err(&uint(1)).to_string().contains("top level is not a map"));
        let e = err(&cat(&[&one("a", &uint(1)), &[0x00]]));
        assert!(
            e.to_string().contains("bytes follow the top-level map"),
            "{e}"
        );
        let e = err(&one("a", &[0xc1]));
        assert!(e.to_string().contains("0xc1"), "{e}");
        let e = err(&cat(&[&map(1), &[0xc0], &uint(1)]));
        assert!(
            e.to_string().contains("neither a string nor an integer"),
            "{e}"
        );
    }

    // ---- What valid trees yield. ----

    #[test]
    fn scalars_extensions_and_empty_maps() {
        let bytes = cat(&[
            &map(12),
            &s("empty"),
            &map(0),
            &uint(5),
            &s("int key"),
            &s("nil"),
            &[0xc0],
            &s("t"),
            &[0xc3],
            &s("half"),
            &cat(&[&[0xcb], &0.5f64.to_be_bytes()]),
            &s("name"),
            &s("vit"),
            &s("blob"),
            &bin(&[1, 2, 3]),
            &s("scalar"),
            &ext(EXT_NPSCALAR, &nd_payload(&[], "int64", &7i64.to_le_bytes())),
            &s("z"),
            &ext(
                EXT_COMPLEX,
                &cat(&[
                    &arr(2),
                    &[0xcb],
                    &1.5f64.to_be_bytes(),
                    &[0xcb],
                    &(-2f64).to_be_bytes(),
                ]),
            ),
            &s("other"),
            &ext(9, &[1, 2]),
            &s("tuple"),
            &cat(&[&arr(2), &[0xff], &nd(&[0], "bool", &[])]),
            &s("neg"),
            &[0xd3],
            &i64::MIN.to_be_bytes(),
        ]);
        let leaves = read(&bytes).unwrap();
        let got: Vec<(String, String)> = leaves
            .iter()
            .map(|l| {
                let what = match &l.kind {
                    LeafKind::Scalar(t) => t.clone(),
                    LeafKind::Array {
                        dtype, shape, len, ..
                    } => format!("{dtype} {shape:?} {len}"),
                    LeafKind::Chunked { .. } => "chunked".into(),
                };
                (l.path.join("/"), what)
            })
            .collect();
        let want = [
            ("5", "str (7 bytes)"),
            ("nil", "nil"),
            ("t", "bool true"),
            ("half", "float 0.5"),
            ("name", "str (3 bytes)"),
            ("blob", "bin (3 bytes)"),
            ("scalar", "i64 [] 8"),
            ("z", "complex (1.5, -2)"),
            ("other", "msgpack ext type 9 (2 bytes)"),
            ("tuple/0", "int -1"),
            ("tuple/1", "bool [0] 0"),
            ("neg", "int -9223372036854775808"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        assert!(read(&map(0)).unwrap().is_empty());
    }

    #[test]
    fn every_ext_header_form_is_read() {
        // ext8, ext16 and ext32 headers (flax's writer picks by payload length), and fixext.
        for n in [1usize, 100, 20_000] {
            let data = vec![7u8; n * 4];
            let payload = nd_payload(&[n as u64], "float32", &data);
            let leaves = read(&one("w", &ext(EXT_NDARRAY, &payload))).unwrap();
            assert!(
                matches!(&leaves[0].kind, LeafKind::Array { len, .. } if *len == data.len() as u64)
            );
        }
        let e32 = cat(&[
            &[0xc9],
            &10u32.to_be_bytes(),
            &[EXT_NDARRAY as u8],
            &nd_payload(&[2], "int32", &[0; 8]),
        ]);
        assert!(read(&one("w", &e32)).is_err()); // declared 10, the payload is longer
        let leaves = read(&one("x", &[0xd4, 5, 0])).unwrap();
        assert_eq!(scalar(&leaves[0]), "msgpack ext type 5 (1 bytes)");
    }

    /// The hand-made fuzz seeds are valid trees, so the fuzzer starts from accepted inputs.
    #[test]
    fn hand_made_fuzz_seeds_are_valid() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/msgpack");
        let tiny = std::fs::read(seeds.join("tiny.msgpack")).unwrap();
        let names: Vec<String> = read(&tiny)
            .unwrap()
            .iter()
            .map(|l| l.path.join("/"))
            .collect();
        assert_eq!(
            names,
            ["params/kernel", "params/bias", "opt_state/1/count", "step"]
        );
        let chunked = std::fs::read(seeds.join("chunked.msgpack")).unwrap();
        let leaves = read(&chunked).unwrap();
        assert!(
            matches!(&leaves[0].kind, LeafKind::Chunked { shape, pieces, .. }
            if shape == &[2, 3] && pieces.len() == 2)
        );
        assert_eq!(scalar(&leaves[1]), "int 256");
    }

    /// Single-byte changes anywhere in a real checkpoint never panic, and whatever is still
    /// accepted keeps every range inside the file (the fuzz entry checks that).
    #[test]
    fn mutations_never_panic() {
        let bytes =
            std::fs::read(fixture("msgpack-bv-hfstyle").join("flax_model.msgpack")).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Mostly in the first kilobytes, where the headers are dense.
        for _ in 0..1500 {
            let mut m = bytes.clone();
            let limit = if next() % 2 == 0 { 2048 } else { m.len() };
            let at = (next() % limit as u64) as usize;
            m[at] = next() as u8;
            let _ = crate::fuzzing::msgpack_tree(&m);
        }
        assert_eq!(crate::fuzzing::msgpack_tree(&bytes).unwrap(), 40);
    }
}
