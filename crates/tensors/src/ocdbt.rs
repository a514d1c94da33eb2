//! Reads TensorStore's OCDBT key-value store, as Orbax checkpoints write it, into a sorted index of keys and value locations; it never decodes array chunks.
//!
//! An Orbax checkpoint written with `use_ocdbt=True` keeps its zarr arrays (`.zarray` /
//! `zarr.json` metadata and chunk files) as keys of one OCDBT database: a *manifest*
//! (`manifest.ocdbt`), a version tree naming the B+tree root of each generation, and B+tree
//! nodes whose leaves hold each key's value, either inline or as a (file, offset, length)
//! reference into a data file under `d/`. [`open`] follows the manifest to the latest
//! generation's root node and walks the tree, giving every key with where its value lies;
//! the zarr layer decodes the values. Nothing is found by scanning folders: a multi-process
//! checkpoint's root manifest points at a root node in `d/` whose data-file table points into
//! `ocdbt.process_0/d/`, and only files reached that way are read.
//!
//! # Sources
//!
//! The format is TensorStore's `tensorstore/kvstore/ocdbt/index.rst` ("Storage format":
//! manifest header/config/version tree/footer, data file table, version tree node and B+tree
//! node encodings), read together with the decoders in `tensorstore/kvstore/ocdbt/format/`
//! where the document is terse:
//!
//! - `codec_util.cc` (`DecodeWithOptionalCompression`): every manifest and node is
//!   `magic (u32 BE) | length (u64 LE, the whole encoding) | version (varint, 0) |
//!   compression (varint: 0 none, 1 one zstd stream) | body | CRC-32C (u32 LE)`, the CRC
//!   covering everything before it, and the body must be consumed exactly.
//! - `config_codec.cc`: `manifest_kind` and `version_tree_arity_log2` are single bytes,
//!   the zstd level an `int32le` after compression method 1.
//! - `data_file_id_codec.cc` (`ReadDataFileTable`): the prefix lengths compress the whole
//!   `base_path + relative_path` (without the transitive path), and a child node's
//!   transitive path is its parent's plus the base path of the file it was read from.
//! - `btree.cc` / `btree_codec.h`: key columns (prefix lengths, suffix lengths, for interior
//!   nodes the subtree common prefix lengths, then the suffix bytes); leaf value columns
//!   (lengths, one *byte* of kind each, file ids and offsets of the indirect values, the
//!   inline bytes); interior columns (file ids, offsets, lengths, then the three statistics).
//!   Keys within a node are strictly increasing, and a child's keys are relative to its
//!   parent's prefix plus the first `subtree_common_prefix_length` bytes of its entry's key.
//! - `version_tree_codec.h` / `version_tree.cc` / `manifest.cc`: the inline version array
//!   (count, generation numbers, root heights, root references, statistics, commit times),
//!   the interior version array (count, generation numbers, references, generation counts,
//!   commit times, and in the manifest only a height each); a missing root (an empty
//!   generation) has offset and length both `u64::MAX`.
//!
//! No TensorStore code is copied; this is a reader written from those descriptions.
//!
//! # What is read, and what is refused
//!
//! - Manifest kind `single`. The newest generation is always the last of the manifest's inline
//!   versions (the format keeps the newest `2^arity_log2` generations inline and moves only older
//!   ones into version tree nodes), so [`open`] reads no version tree node; their decoder is
//!   here for validation and for the fuzz entry point. A `numbered` manifest (the version tree in
//!   `manifest.XXXXXXXXXXXXXXXX` files, found only by listing the folder) is refused as
//!   [`Error::Unsupported`].
//! - B+tree leaf and interior nodes, uncompressed or zstd, with inline and indirect values.
//! - Every size, count, height and path is checked against the named limits below before it
//!   is used, with checked arithmetic; every file is checked to be a regular file inside the
//!   store's folder (no `..`, no absolute path, no symlink out) before it is opened.

// The converter wires `open` and `is_store` into its checkpoint reader in a later change; until
// then only this module's tests and the fuzz entry points reach most of it.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::{Error, Result};

/// The root manifest's file name; its presence marks a folder as an OCDBT store.
const MANIFEST_FILE: &str = "manifest.ocdbt";
/// First four bytes (big-endian) of an encoded manifest.
const MANIFEST_MAGIC: u32 = 0x0cdb_3a2a;
/// First four bytes (big-endian) of an encoded version tree node.
const VERSION_NODE_MAGIC: u32 = 0x0cdb_1234;
/// First four bytes (big-endian) of an encoded B+tree node.
const BTREE_NODE_MAGIC: u32 = 0x0cdb_20de;
/// The only encoding version the format defines for manifests and nodes.
const FORMAT_VERSION: u64 = 0;
/// Magic (4) + length (8) + CRC-32C (4): the smallest a manifest or node can be.
const FRAME_OVERHEAD: usize = 16;

/// Most bytes of a manifest, encoded or decompressed. Real ones are ~100-400 bytes; even a
/// manifest with the most inline versions (2^16) and the longest paths stays well below.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Most bytes of one node, encoded or decompressed (TensorStore's writer targets 8 MiB
/// decoded by default; inline values up to 1 MiB can push one past that).
pub(crate) const MAX_NODE_BYTES: u64 = 64 << 20;
/// Most decompressed node bytes read for one store: bounds the work a tree that reuses
/// nodes (a DAG) can cause.
pub(crate) const MAX_TOTAL_NODE_BYTES: u64 = 1 << 30;
/// Most B+tree nodes read for one store.
pub(crate) const MAX_NODES: u64 = 1 << 16;
/// Most entries in one node, and most keys in one store.
pub(crate) const MAX_ENTRIES: u64 = 1 << 20;
/// Longest key, relative or full (TensorStore's `kMaxKeyLength`).
pub(crate) const MAX_KEY_LEN: u64 = 65_535;
/// Most bytes of keys held at once (prefix compression lets a small node spell huge keys).
pub(crate) const MAX_TOTAL_KEY_BYTES: u64 = 256 << 20;
/// Longest inline value (TensorStore's `kMaxInlineValueLength`).
pub(crate) const MAX_INLINE_VALUE_BYTES: u64 = 1 << 20;
/// Most bytes of inline values held for one store.
pub(crate) const MAX_TOTAL_INLINE_BYTES: u64 = 256 << 20;
/// Highest B+tree: a tree of 2^20 keys is a few levels high at any sane arity.
pub(crate) const MAX_TREE_HEIGHT: u64 = 32;
/// Most files in one data-file table.
pub(crate) const MAX_DATA_FILES: u64 = 1 << 16;
/// Longest data-file path, transitive part included (TensorStore's `kMaxPathLength`).
pub(crate) const MAX_PATH_LEN: u64 = 65_535;
/// Largest `version_tree_arity_log2` the format allows.
const MAX_VERSION_ARITY_LOG2: u8 = 16;
/// Largest end (offset + length) of an indirect reference: TensorStore refuses any past `i64::MAX`.
const MAX_REFERENCE_END: u64 = i64::MAX as u64;

/// An OCDBT store's keys and where each value lies.
#[derive(Debug)]
pub(crate) struct Store {
    /// Every key of the latest generation, sorted by key, keys unique.
    pub entries: Vec<Entry>,
}

/// One key and its value.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The key's bytes (for Orbax, `<param>/.zarray`, `<param>/0`, `<param>/c/0/0`, ...).
    pub key: Vec<u8>,
    /// The value, inline or where to read it.
    pub value: Value,
}

/// Where a value's bytes are.
#[derive(Debug)]
pub(crate) enum Value {
    /// The bytes themselves, stored in the leaf node.
    Inline(Vec<u8>),
    /// `file` is an absolute path, checked to be a regular file inside the store's root folder
    External {
        /// The data file, canonical (no symlinks), inside the store's root folder.
        file: PathBuf,
        /// Where the value starts in the file.
        offset: u64,
        /// The value's length in bytes; `offset + length` was checked to lie within the file.
        length: u64,
    },
}

/// Opens the OCDBT store rooted at `root` (the folder holding `manifest.ocdbt`).
pub(crate) fn open(root: &Path) -> Result<Store> {
    let canonical_root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    let mut files = Files::new(canonical_root);
    let (manifest_path, manifest_len) = files.resolve(MANIFEST_FILE.as_bytes())?;
    let manifest_ctx = Ctx {
        path: &manifest_path,
        offset: 0,
        what: "manifest",
    };
    if manifest_len > MAX_MANIFEST_BYTES {
        return Err(manifest_ctx.limit("encoded bytes", MAX_MANIFEST_BYTES, manifest_len));
    }
    let bytes = read_range(&manifest_path, 0, manifest_len)?;
    let manifest = parse_manifest(&bytes, manifest_ctx)?;
    if manifest.kind == ManifestKind::Numbered {
        return Err(Error::unsupported(
            &manifest_path,
            "",
            "an OCDBT store with the `numbered` manifest kind (its version tree lives in \
             manifest.XXXXXXXXXXXXXXXX files); only the `single` kind Orbax writes is read",
        ));
    }
    // The parser refuses an empty inline version array, so there is a latest generation.
    let Some(latest) = manifest.versions.last() else {
        return Err(manifest_ctx.bad("no versions"));
    };
    let Some(root_node) = &latest.root else {
        // An empty generation: the store holds no keys.
        return Ok(Store {
            entries: Vec::new(),
        });
    };
    let mut walk = Walk {
        files,
        budget: Budget::new(),
        nodes_read: 0,
        decoded_bytes: 0,
        entries: Vec::new(),
    };
    walk.node(root_node, &[], u64::from(latest.root_height))?;
    Ok(Store {
        entries: walk.entries,
    })
}

/// True when `root` holds a `manifest.ocdbt` regular file.
pub(crate) fn is_store(root: &Path) -> bool {
    std::fs::metadata(root.join(MANIFEST_FILE)).is_ok_and(|m| m.is_file())
}

/// Parses an encoded manifest from untrusted bytes; returns how many inline versions and
/// version nodes it lists (0 for a `numbered` manifest, which holds only the configuration).
pub(crate) fn fuzz_manifest(bytes: &[u8]) -> Result<usize> {
    let path = Path::new("fuzz/manifest.ocdbt");
    let manifest = parse_manifest(
        bytes,
        Ctx {
            path,
            offset: 0,
            what: "manifest",
        },
    )?;
    Ok(manifest
        .versions
        .len()
        .saturating_add(manifest.version_nodes.len()))
}

/// Parses an encoded B+tree node or version tree node (told apart by its magic number) from
/// untrusted bytes; returns how many entries it holds.
pub(crate) fn fuzz_node(bytes: &[u8]) -> Result<usize> {
    let path = Path::new("fuzz/d/node");
    let transitive: Rc<[u8]> = Rc::from(&b"fuzz/"[..]);
    let magic = bytes
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes);
    if magic == Some(VERSION_NODE_MAGIC) {
        let ctx = Ctx {
            path,
            offset: 0,
            what: "version tree node",
        };
        let node = parse_version_node(bytes, ctx, &transitive)?;
        return Ok(match node.entries {
            VersionEntries::Leaf(v) => v.len(),
            VersionEntries::Interior(v) => v.len(),
        });
    }
    let ctx = Ctx {
        path,
        offset: 0,
        what: "B+tree node",
    };
    let node = parse_btree_node(bytes, ctx, &transitive, &mut Budget::new())?;
    Ok(match node.entries {
        BtreeEntries::Leaf(v) => v.len(),
        BtreeEntries::Interior(v) => v.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// Errors in context.

/// Which structure is being parsed, and where it sits: every error names them.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    /// The file holding the structure.
    path: &'a Path,
    /// The structure's offset in that file.
    offset: u64,
    /// The structure's kind, in words.
    what: &'static str,
}

impl Ctx<'_> {
    /// A field that contradicts the format.
    fn bad(&self, detail: impl Into<String>) -> Error {
        Error::Ocdbt {
            path: self.path.to_path_buf(),
            offset: self.offset,
            what: self.what,
            detail: detail.into(),
        }
    }

    /// A value past one of the named limits.
    fn limit(&self, limit_name: &'static str, limit: u64, found: u64) -> Error {
        Error::OcdbtLimit {
            path: self.path.to_path_buf(),
            offset: self.offset,
            what: self.what,
            limit_name,
            limit,
            found,
        }
    }

    /// A field that runs past the end of the (decompressed) structure.
    fn truncated(&self, field: &'static str, expected: u64, found: u64) -> Error {
        Error::OcdbtTruncated {
            path: self.path.to_path_buf(),
            offset: self.offset,
            what: self.what,
            field,
            expected,
            found,
        }
    }
}

/// Converts a count to `u64`; `usize` is at most 64 bits on every supported target.
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Reading fields.

/// A position in a byte string, reading the format's fields with bounds checks.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    ctx: Ctx<'a>,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], ctx: Ctx<'a>) -> Self {
        Cursor { bytes, pos: 0, ctx }
    }

    /// Bytes not yet read.
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    fn take(&mut self, n: u64, field: &'static str) -> Result<&'a [u8]> {
        let remaining = self.remaining();
        let end = usize::try_from(n)
            .ok()
            .filter(|&n| n <= remaining)
            .and_then(|n| self.pos.checked_add(n));
        let slice = end.and_then(|end| self.bytes.get(self.pos..end).map(|s| (s, end)));
        let Some((slice, end)) = slice else {
            return Err(self.ctx.truncated(field, n, to_u64(remaining)));
        };
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let bytes = self.take(to_u64(N), field)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.ctx.truncated(field, to_u64(N), 0))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array::<1>(field)?))
    }

    fn u64_le(&mut self, field: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array::<8>(field)?))
    }

    /// An unsigned LEB128 varint of at most 64 bits (at most 10 bytes, the 10th 0 or 1).
    fn varint(&mut self, field: &'static str) -> Result<u64> {
        let mut value: u64 = 0;
        let mut shift: u32 = 0;
        for index in 0..10 {
            let byte = self.u8(field)?;
            if index == 9 && byte > 1 {
                return Err(self.ctx.bad(format!("{field}: varint overflows 64 bits")));
            }
            let low = u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            value |= low;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift = shift.saturating_add(7);
        }
        Err(self
            .ctx
            .bad(format!("{field}: varint longer than 10 bytes")))
    }

    /// A varint that must not exceed `limit` (a named limit of this reader, or the format's own
    /// bound on the field's type).
    fn varint_at_most(
        &mut self,
        field: &'static str,
        limit_name: &'static str,
        limit: u64,
    ) -> Result<u64> {
        let value = self.varint(field)?;
        if value > limit {
            return Err(self.ctx.limit(limit_name, limit, value));
        }
        Ok(value)
    }

    /// A count of `n` items that each take at least one byte: refused before anything is
    /// allocated for them when fewer bytes remain.
    fn check_count(&self, n: u64, field: &'static str) -> Result<usize> {
        let remaining = self.remaining();
        match usize::try_from(n) {
            Ok(n) if n <= remaining => Ok(n),
            _ => Err(self.ctx.truncated(field, n, to_u64(remaining))),
        }
    }

    /// Requires every byte to have been read.
    fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.ctx.bad(format!("{n} bytes follow the last field"))),
        }
    }
}

/// Checks an encoded manifest or node's magic number, length, CRC-32C and version, and
/// returns its body, decompressed if it is compressed (at most `max_body` bytes).
fn decode_frame(bytes: &[u8], magic: u32, ctx: Ctx<'_>, max_body: u64) -> Result<Vec<u8>> {
    if bytes.len() < FRAME_OVERHEAD {
        return Err(ctx.truncated(
            "header and footer",
            to_u64(FRAME_OVERHEAD),
            to_u64(bytes.len()),
        ));
    }
    let mut header = Cursor::new(bytes, ctx);
    let found_magic = u32::from_be_bytes(header.array::<4>("magic")?);
    if found_magic != magic {
        return Err(Error::OcdbtMagic {
            path: ctx.path.to_path_buf(),
            offset: ctx.offset,
            what: ctx.what,
            expected: magic,
            found: found_magic,
        });
    }
    let length = header.u64_le("length")?;
    if length != to_u64(bytes.len()) {
        return Err(ctx.bad(format!(
            "its header gives a length of {length} bytes, the reference to it {}",
            bytes.len()
        )));
    }
    // The CRC is checked before anything past the header is interpreted, so corrupt bytes
    // are reported as corruption rather than as whatever field they happen to break.
    let crc_start = bytes.len().saturating_sub(4);
    let (covered, footer) = bytes.split_at(crc_start);
    let expected = u32::from_le_bytes(
        <[u8; 4]>::try_from(footer).map_err(|_| ctx.truncated("CRC-32C", 4, 0))?,
    );
    let found = crc32c::crc32c(covered);
    if found != expected {
        return Err(Error::OcdbtCrc {
            path: ctx.path.to_path_buf(),
            offset: ctx.offset,
            what: ctx.what,
            expected,
            found,
        });
    }
    let mut cursor = Cursor {
        bytes: covered,
        pos: header.pos,
        ctx,
    };
    let version = cursor.varint("version")?;
    if version != FORMAT_VERSION {
        return Err(Error::unsupported(
            ctx.path,
            "",
            format!(
                "OCDBT {} at offset {} has format version {version} (only version 0 is read)",
                ctx.what, ctx.offset
            ),
        ));
    }
    let compression = cursor.varint("compression format")?;
    let rest = cursor.take(to_u64(cursor.remaining()), "body")?;
    match compression {
        0 => {
            if to_u64(rest.len()) > max_body {
                return Err(ctx.limit("body bytes", max_body, to_u64(rest.len())));
            }
            Ok(rest.to_vec())
        }
        1 => zstd_bounded(rest, max_body, ctx),
        other => Err(ctx.bad(format!("compression format {other} (0 = none, 1 = zstd)"))),
    }
}

/// Decompresses a zstd stream, refusing more than `limit` bytes of output whatever the frame
/// header declares.
fn zstd_bounded(compressed: &[u8], limit: u64, ctx: Ctx<'_>) -> Result<Vec<u8>> {
    let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| ctx.bad(format!("zstd: {e}")))?;
    let mut out = Vec::new();
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| ctx.bad(format!("zstd: {e}")))?;
    if to_u64(out.len()) > limit {
        return Err(ctx.limit("decompressed bytes", limit, to_u64(out.len())));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Data file tables.

/// One data file a node or manifest refers to.
#[derive(Debug)]
struct DataFile {
    /// Transitive path plus this entry's base path: the transitive path of nodes read from it.
    base: Rc<[u8]>,
    /// The file's full path relative to the store's root: `base` plus the relative path.
    path: Vec<u8>,
}

/// Reads a data file table; `transitive` is the path prefix inherited from the parent.
fn read_data_file_table(cur: &mut Cursor<'_>, transitive: &Rc<[u8]>) -> Result<Vec<Rc<DataFile>>> {
    let n = cur.varint_at_most("data file count", "data files", MAX_DATA_FILES)?;
    // Each file has at least a suffix length and a base path length.
    let n = cur.check_count(n, "data file table")?;
    let max_path = MAX_PATH_LEN.saturating_sub(to_u64(transitive.len()));
    let mut prefix_lens = Vec::with_capacity(n);
    prefix_lens.push(0u64);
    for _ in 1..n {
        prefix_lens.push(cur.varint_at_most("path prefix length", "path length", MAX_PATH_LEN)?);
    }
    let mut suffix_lens = Vec::with_capacity(n);
    for _ in 0..n {
        suffix_lens.push(cur.varint_at_most("path suffix length", "path length", MAX_PATH_LEN)?);
    }
    let mut base_lens = Vec::with_capacity(n);
    for _ in 0..n {
        base_lens.push(cur.varint_at_most("base path length", "path length", MAX_PATH_LEN)?);
    }
    let mut files: Vec<Rc<DataFile>> = Vec::with_capacity(n);
    // The previous path without the transitive part: the prefix lengths count from there.
    let mut prev_path: Vec<u8> = Vec::new();
    let mut prev_base_len: u64 = 0;
    for ((&prefix, &suffix), &base_len) in prefix_lens.iter().zip(&suffix_lens).zip(&base_lens) {
        let path_len = prefix
            .checked_add(suffix)
            .filter(|&l| l <= max_path)
            .ok_or_else(|| {
                cur.ctx
                    .limit("path length", max_path, prefix.saturating_add(suffix))
            })?;
        if base_len > path_len {
            return Err(cur.ctx.bad(format!(
                "data file base path length {base_len} exceeds its path length {path_len}"
            )));
        }
        // The format requires a prefix shared past the end of either base path to mean the
        // two base paths are equal, which keeps each base path recoverable from the prefix.
        if prefix > prev_base_len.min(base_len) && base_len != prev_base_len {
            return Err(cur.ctx.bad(format!(
                "data file path prefix length {prefix} runs past a base path that changes \
                 ({prev_base_len} to {base_len} bytes)"
            )));
        }
        let shared = usize::try_from(prefix)
            .ok()
            .and_then(|p| prev_path.get(..p))
            .ok_or_else(|| {
                cur.ctx.bad(format!(
                    "data file path prefix length {prefix} exceeds the previous path's length {}",
                    prev_path.len()
                ))
            })?;
        let suffix_bytes = cur.take(suffix, "data file path suffix")?;
        let relative = concat(shared, suffix_bytes);
        let (base_part, _) = usize::try_from(base_len)
            .ok()
            .and_then(|b| relative.split_at_checked(b))
            .ok_or_else(|| cur.ctx.bad("data file base path longer than its path"))?;
        files.push(Rc::new(DataFile {
            base: Rc::from(concat(transitive, base_part)),
            path: concat(transitive, &relative),
        }));
        prev_base_len = base_len;
        prev_path = relative;
    }
    Ok(files)
}

/// A byte range of a data file: a node, or an out-of-line value.
#[derive(Debug, Clone)]
struct Loc {
    file: Rc<DataFile>,
    offset: u64,
    length: u64,
}

/// Looks up a data file id in the node's table.
fn data_file(cur: &Cursor<'_>, table: &[Rc<DataFile>], id: u64) -> Result<Rc<DataFile>> {
    usize::try_from(id)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .ok_or_else(|| {
            cur.ctx.bad(format!(
                "data file id {id} outside the table of {} files",
                table.len()
            ))
        })
}

/// Checks an indirect reference's end fits the format's bound (`i64::MAX`).
fn check_reference(cur: &Cursor<'_>, offset: u64, length: u64) -> Result<()> {
    match offset.checked_add(length) {
        Some(end) if end <= MAX_REFERENCE_END => Ok(()),
        _ => Err(cur.ctx.bad(format!(
            "reference offset {offset} + length {length} overflows"
        ))),
    }
}

/// Reads `n` (file id, offset, length) columns; `allow_missing` admits the `u64::MAX`
/// offset and length of an empty generation's root, given as `None`.
fn read_references(
    cur: &mut Cursor<'_>,
    table: &[Rc<DataFile>],
    n: usize,
    allow_missing: bool,
) -> Result<Vec<Option<Loc>>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(cur.varint("data file id")?);
    }
    let mut offsets = Vec::with_capacity(n);
    for _ in 0..n {
        offsets.push(cur.varint("data file offset")?);
    }
    let mut lengths = Vec::with_capacity(n);
    for _ in 0..n {
        lengths.push(cur.varint("data file length")?);
    }
    let mut locs = Vec::with_capacity(n);
    for ((&id, &offset), &length) in ids.iter().zip(&offsets).zip(&lengths) {
        let file = data_file(cur, table, id)?;
        if allow_missing && offset == u64::MAX && length == u64::MAX {
            locs.push(None);
            continue;
        }
        check_reference(cur, offset, length)?;
        locs.push(Some(Loc {
            file,
            offset,
            length,
        }));
    }
    Ok(locs)
}

// ---------------------------------------------------------------------------------------------
// Manifest and version tree.

#[derive(Debug, PartialEq, Eq)]
enum ManifestKind {
    Single,
    Numbered,
}

/// One generation's B+tree root, as the manifest or a version tree leaf lists it.
#[derive(Debug)]
#[allow(dead_code)] // `generation` is kept for debugging output; the walk needs only the root.
struct VersionRef {
    generation: u64,
    root_height: u8,
    /// `None` for an empty generation.
    root: Option<Loc>,
}

/// A reference to a version tree node holding older generations.
#[derive(Debug)]
#[allow(dead_code)] // Parsed to validate the manifest; the latest version never needs it.
struct VersionNodeRef {
    generation: u64,
    node: Loc,
    height: u8,
}

#[derive(Debug)]
struct Manifest {
    kind: ManifestKind,
    versions: Vec<VersionRef>,
    version_nodes: Vec<VersionNodeRef>,
}

/// The highest version tree node for a given arity (TensorStore's `GetMaxVersionTreeHeight`).
fn max_version_height(arity_log2: u8) -> u8 {
    63u8.checked_div(arity_log2).unwrap_or(0).saturating_sub(1)
}

/// Parses an encoded manifest.
fn parse_manifest(bytes: &[u8], ctx: Ctx<'_>) -> Result<Manifest> {
    let body = decode_frame(bytes, MANIFEST_MAGIC, ctx, MAX_MANIFEST_BYTES)?;
    let mut cur = Cursor::new(&body, ctx);
    cur.take(16, "uuid")?;
    let kind = match cur.u8("manifest kind")? {
        0 => ManifestKind::Single,
        1 => ManifestKind::Numbered,
        other => return Err(ctx.bad(format!("manifest kind {other} (0 = single, 1 = numbered)"))),
    };
    let u32_max = u64::from(u32::MAX);
    cur.varint_at_most("max_inline_value_bytes", "max_inline_value_bytes", u32_max)?;
    cur.varint_at_most("max_decoded_node_bytes", "max_decoded_node_bytes", u32_max)?;
    let arity_log2 = read_arity(&mut cur)?;
    match cur.varint("compression method")? {
        0 => {}
        1 => {
            // The zstd level only matters to a writer.
            cur.take(4, "zstd level")?;
        }
        other => return Err(ctx.bad(format!("compression method {other} (0 = none, 1 = zstd)"))),
    }
    if kind == ManifestKind::Numbered {
        // A numbered manifest holds only the configuration.
        cur.finish()?;
        return Ok(Manifest {
            kind,
            versions: Vec::new(),
            version_nodes: Vec::new(),
        });
    }
    let empty: Rc<[u8]> = Rc::from(&[][..]);
    let table = read_data_file_table(&mut cur, &empty)?;
    let versions = read_version_leaf_entries(&mut cur, &table, arity_log2)?;
    let max_height = max_version_height(arity_log2);
    let version_nodes =
        read_version_interior_entries(&mut cur, &table, u64::from(max_height), None)?;
    for (i, node) in version_nodes.iter().enumerate() {
        if node.height == 0 || node.height > max_height {
            return Err(ctx.bad(format!(
                "version node {i} has height {} outside [1, {max_height}]",
                node.height
            )));
        }
    }
    for pair in version_nodes.windows(2) {
        if let [a, b] = pair {
            if b.height >= a.height {
                return Err(ctx.bad("version node heights are not decreasing"));
            }
        }
    }
    cur.finish()?;
    Ok(Manifest {
        kind,
        versions,
        version_nodes,
    })
}

/// Reads a `version_tree_arity_log2` byte, which must lie in [1, 16].
fn read_arity(cur: &mut Cursor<'_>) -> Result<u8> {
    let arity_log2 = cur.u8("version_tree_arity_log2")?;
    if arity_log2 == 0 || arity_log2 > MAX_VERSION_ARITY_LOG2 {
        return Err(cur.ctx.bad(format!(
            "version_tree_arity_log2 {arity_log2} outside [1, {MAX_VERSION_ARITY_LOG2}]"
        )));
    }
    Ok(arity_log2)
}

/// Reads a count of version entries, at least 1 and at most `max`.
fn read_version_count(cur: &mut Cursor<'_>, max: u64) -> Result<usize> {
    let n = cur.varint("version count")?;
    if n == 0 {
        return Err(cur.ctx.bad("no versions where at least one is required"));
    }
    if n > max {
        return Err(cur.ctx.limit("version entries", max, n));
    }
    cur.check_count(n, "version entries")
}

/// Reads `n` generation numbers, non-zero and strictly increasing.
fn read_generations(cur: &mut Cursor<'_>, n: usize) -> Result<Vec<u64>> {
    let mut generations: Vec<u64> = Vec::with_capacity(n);
    for _ in 0..n {
        let generation = cur.varint("generation number")?;
        if generation == 0 {
            return Err(cur.ctx.bad("generation number 0"));
        }
        if generations.last().is_some_and(|&prev| generation <= prev) {
            return Err(cur
                .ctx
                .bad("generation numbers are not strictly increasing"));
        }
        generations.push(generation);
    }
    Ok(generations)
}

/// Reads the leaf version entries (the manifest's inline versions, or a version tree leaf).
fn read_version_leaf_entries(
    cur: &mut Cursor<'_>,
    table: &[Rc<DataFile>],
    arity_log2: u8,
) -> Result<Vec<VersionRef>> {
    let arity = 1u64.checked_shl(u32::from(arity_log2)).unwrap_or(u64::MAX);
    let n = read_version_count(cur, arity)?;
    let generations = read_generations(cur, n)?;
    // One leaf holds the generations of one aligned block of `arity`: the first may not lie
    // before the block of the last.
    if let (Some(&first), Some(&last)) = (generations.first(), generations.last()) {
        let block_start =
            last.saturating_sub(last.saturating_sub(1).checked_rem(arity).unwrap_or(0));
        if first < block_start {
            return Err(cur.ctx.bad(format!(
                "generations {first}..={last} span more than one block of {arity}"
            )));
        }
    }
    let mut heights = Vec::with_capacity(n);
    for _ in 0..n {
        let height = cur.u8("root height")?;
        if u64::from(height) > MAX_TREE_HEIGHT {
            return Err(cur
                .ctx
                .limit("tree height", MAX_TREE_HEIGHT, u64::from(height)));
        }
        heights.push(height);
    }
    let roots = read_references(cur, table, n, true)?;
    // The statistics (keys, tree bytes, indirect value bytes) are for writers and planners.
    for _ in 0..n.saturating_mul(3) {
        cur.varint("statistic")?;
    }
    for _ in 0..n {
        cur.u64_le("commit time")?;
    }
    let mut versions = Vec::with_capacity(n);
    for ((generation, root_height), root) in generations.into_iter().zip(heights).zip(roots) {
        if root.is_none() && root_height != 0 {
            return Err(cur.ctx.bad(format!(
                "empty generation {generation} with root height {root_height}"
            )));
        }
        versions.push(VersionRef {
            generation,
            root_height,
            root,
        });
    }
    Ok(versions)
}

/// Reads interior version entries: the manifest's version nodes (each with its height, when
/// `node_height` is `None`) or a version tree interior node's children (one level below it).
fn read_version_interior_entries(
    cur: &mut Cursor<'_>,
    table: &[Rc<DataFile>],
    max: u64,
    node_height: Option<u8>,
) -> Result<Vec<VersionNodeRef>> {
    let n = cur.varint("version node count")?;
    if n > max {
        return Err(cur.ctx.limit("version node entries", max, n));
    }
    let n = cur.check_count(n, "version node entries")?;
    let generations = read_generations(cur, n)?;
    let nodes = read_references(cur, table, n, false)?;
    for _ in 0..n {
        cur.varint("generation count")?;
    }
    for _ in 0..n {
        cur.u64_le("commit time")?;
    }
    let heights = match node_height {
        Some(h) => vec![h.saturating_sub(1); n],
        None => {
            let mut heights = Vec::with_capacity(n);
            for _ in 0..n {
                heights.push(cur.u8("version node height")?);
            }
            heights
        }
    };
    let mut out = Vec::with_capacity(n);
    for ((generation, node), height) in generations.into_iter().zip(nodes).zip(heights) {
        let Some(node) = node else {
            return Err(cur.ctx.bad("missing version node reference"));
        };
        out.push(VersionNodeRef {
            generation,
            node,
            height,
        });
    }
    Ok(out)
}

/// A version tree node's entries.
#[derive(Debug)]
enum VersionEntries {
    Leaf(Vec<VersionRef>),
    Interior(Vec<VersionNodeRef>),
}

/// A decoded version tree node.
#[derive(Debug)]
struct VersionNode {
    entries: VersionEntries,
}

/// Parses an encoded version tree node; `transitive` is the path its references are relative to.
fn parse_version_node(bytes: &[u8], ctx: Ctx<'_>, transitive: &Rc<[u8]>) -> Result<VersionNode> {
    let body = decode_frame(bytes, VERSION_NODE_MAGIC, ctx, MAX_NODE_BYTES)?;
    let mut cur = Cursor::new(&body, ctx);
    let arity_log2 = read_arity(&mut cur)?;
    let height = cur.u8("height")?;
    let max_height = max_version_height(arity_log2);
    if height > max_height {
        return Err(ctx.limit(
            "version tree height",
            u64::from(max_height),
            u64::from(height),
        ));
    }
    let table = read_data_file_table(&mut cur, transitive)?;
    let entries = if height == 0 {
        VersionEntries::Leaf(read_version_leaf_entries(&mut cur, &table, arity_log2)?)
    } else {
        let arity = 1u64.checked_shl(u32::from(arity_log2)).unwrap_or(u64::MAX);
        let children = read_version_interior_entries(&mut cur, &table, arity, Some(height))?;
        if children.is_empty() {
            return Err(ctx.bad("interior version node with no children"));
        }
        VersionEntries::Interior(children)
    };
    cur.finish()?;
    Ok(VersionNode { entries })
}

// ---------------------------------------------------------------------------------------------
// B+tree nodes.

/// Budgets shared by every node of one store (or by one node given to the fuzz entry point).
struct Budget {
    key_bytes: u64,
    inline_bytes: u64,
}

impl Budget {
    fn new() -> Self {
        Budget {
            key_bytes: MAX_TOTAL_KEY_BYTES,
            inline_bytes: MAX_TOTAL_INLINE_BYTES,
        }
    }
}

/// Takes `n` bytes from a budget, or says which limit is spent.
fn spend(budget: &mut u64, n: u64, total: u64, name: &'static str, ctx: &Ctx<'_>) -> Result<()> {
    match budget.checked_sub(n) {
        Some(left) => {
            *budget = left;
            Ok(())
        }
        None => Err(ctx.limit(name, total, total.saturating_sub(*budget).saturating_add(n))),
    }
}

#[derive(Debug)]
enum RawValue {
    Inline(Vec<u8>),
    Indirect(Loc),
}

#[derive(Debug)]
struct LeafEntry {
    /// The key relative to the node's inherited prefix.
    key: Vec<u8>,
    value: RawValue,
}

#[derive(Debug)]
struct InteriorEntry {
    /// The child's smallest key, relative to the node's inherited prefix.
    key: Vec<u8>,
    /// How many bytes of `key` every key under the child shares: they extend its prefix.
    subtree_prefix_len: usize,
    child: Loc,
}

#[derive(Debug)]
enum BtreeEntries {
    Leaf(Vec<LeafEntry>),
    Interior(Vec<InteriorEntry>),
}

#[derive(Debug)]
struct BtreeNode {
    height: u8,
    entries: BtreeEntries,
    /// The node's body after decompression, in bytes: what it cost to decode.
    decoded_len: usize,
}

/// Parses an encoded B+tree node; `transitive` is the path its data file table is relative to.
fn parse_btree_node(
    bytes: &[u8],
    ctx: Ctx<'_>,
    transitive: &Rc<[u8]>,
    budget: &mut Budget,
) -> Result<BtreeNode> {
    let body = decode_frame(bytes, BTREE_NODE_MAGIC, ctx, MAX_NODE_BYTES)?;
    let mut cur = Cursor::new(&body, ctx);
    let height = cur.u8("height")?;
    if u64::from(height) > MAX_TREE_HEIGHT {
        return Err(ctx.limit("tree height", MAX_TREE_HEIGHT, u64::from(height)));
    }
    let table = read_data_file_table(&mut cur, transitive)?;
    let n = cur.varint_at_most("entry count", "entries", MAX_ENTRIES)?;
    if n == 0 {
        return Err(ctx.bad("a node with no entries"));
    }
    // Every entry has at least a key suffix length and a value length or file id.
    let n = cur.check_count(n, "entries")?;
    let interior = height > 0;
    let (keys, subtree_prefix_lens) = read_keys(&mut cur, n, interior, budget)?;
    let entries = if interior {
        let children = read_references(&mut cur, &table, n, false)?;
        // The statistics (keys, tree bytes, indirect value bytes) are for writers and planners.
        for _ in 0..n.saturating_mul(3) {
            cur.varint("statistic")?;
        }
        let mut entries = Vec::with_capacity(n);
        for ((key, subtree_prefix_len), child) in
            keys.into_iter().zip(subtree_prefix_lens).zip(children)
        {
            let Some(child) = child else {
                return Err(ctx.bad("missing child reference"));
            };
            entries.push(InteriorEntry {
                key,
                subtree_prefix_len,
                child,
            });
        }
        BtreeEntries::Interior(entries)
    } else {
        BtreeEntries::Leaf(read_leaf_values(&mut cur, &table, keys, budget)?)
    };
    cur.finish()?;
    Ok(BtreeNode {
        height,
        entries,
        decoded_len: body.len(),
    })
}

/// Reads a node's key columns: returns the keys (relative to the node's inherited prefix) and,
/// for an interior node, each entry's subtree common prefix length.
fn read_keys(
    cur: &mut Cursor<'_>,
    n: usize,
    interior: bool,
    budget: &mut Budget,
) -> Result<(Vec<Vec<u8>>, Vec<usize>)> {
    let mut prefix_lens = Vec::with_capacity(n);
    prefix_lens.push(0u64);
    for _ in 1..n {
        prefix_lens.push(cur.varint_at_most("key prefix length", "key length", MAX_KEY_LEN)?);
    }
    let mut suffix_lens = Vec::with_capacity(n);
    for _ in 0..n {
        suffix_lens.push(cur.varint_at_most("key suffix length", "key length", MAX_KEY_LEN)?);
    }
    let mut subtree_lens = Vec::new();
    if interior {
        subtree_lens.reserve(n);
        for _ in 0..n {
            subtree_lens.push(cur.varint_at_most(
                "subtree common prefix length",
                "key length",
                MAX_KEY_LEN,
            )?);
        }
    }
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(n);
    for (&prefix, &suffix) in prefix_lens.iter().zip(&suffix_lens) {
        let key_len = prefix.saturating_add(suffix);
        if key_len > MAX_KEY_LEN {
            return Err(cur.ctx.limit("key length", MAX_KEY_LEN, key_len));
        }
        spend(
            &mut budget.key_bytes,
            key_len,
            MAX_TOTAL_KEY_BYTES,
            "total key bytes",
            &cur.ctx,
        )?;
        let prev: &[u8] = keys.last().map_or(&[], |k| k.as_slice());
        let shared = usize::try_from(prefix)
            .ok()
            .and_then(|p| prev.get(..p))
            .ok_or_else(|| {
                cur.ctx.bad(format!(
                    "key prefix length {prefix} exceeds the previous key's length {}",
                    prev.len()
                ))
            })?;
        let suffix_bytes = cur.take(suffix, "key suffix")?;
        let mut key = Vec::with_capacity(shared.len().saturating_add(suffix_bytes.len()));
        key.extend_from_slice(shared);
        key.extend_from_slice(suffix_bytes);
        if !keys.is_empty() && key.as_slice() <= prev {
            return Err(cur.ctx.bad("keys are not in strictly increasing order"));
        }
        keys.push(key);
    }
    let mut subtree_prefix_lens = Vec::with_capacity(subtree_lens.len());
    for (&len, key) in subtree_lens.iter().zip(&keys) {
        match usize::try_from(len) {
            Ok(len) if len <= key.len() => subtree_prefix_lens.push(len),
            _ => {
                return Err(cur.ctx.bad(format!(
                    "subtree common prefix length {len} exceeds its key's length {}",
                    key.len()
                )))
            }
        }
    }
    Ok((keys, subtree_prefix_lens))
}

/// Reads a leaf node's value columns and pairs them with the keys.
fn read_leaf_values(
    cur: &mut Cursor<'_>,
    table: &[Rc<DataFile>],
    keys: Vec<Vec<u8>>,
    budget: &mut Budget,
) -> Result<Vec<LeafEntry>> {
    let n = keys.len();
    let mut lengths = Vec::with_capacity(n);
    for _ in 0..n {
        lengths.push(cur.varint("value length")?);
    }
    let mut inline = Vec::with_capacity(n);
    for &length in &lengths {
        match cur.u8("value kind")? {
            0 => {
                if length > MAX_INLINE_VALUE_BYTES {
                    return Err(cur.ctx.limit(
                        "inline value length",
                        MAX_INLINE_VALUE_BYTES,
                        length,
                    ));
                }
                inline.push(true);
            }
            1 => inline.push(false),
            other => {
                return Err(cur
                    .ctx
                    .bad(format!("value kind {other} (0 = inline, 1 = indirect)")))
            }
        }
    }
    let indirect = inline.iter().filter(|&&i| !i).count();
    let mut files = Vec::with_capacity(indirect);
    for _ in 0..indirect {
        let id = cur.varint("data file id")?;
        files.push(data_file(cur, table, id)?);
    }
    let mut offsets = Vec::with_capacity(indirect);
    for _ in 0..indirect {
        offsets.push(cur.varint("data file offset")?);
    }
    let mut files = files.into_iter().zip(offsets);
    let mut entries = Vec::with_capacity(n);
    for ((key, &length), &is_inline) in keys.into_iter().zip(&lengths).zip(&inline) {
        let value = if is_inline {
            spend(
                &mut budget.inline_bytes,
                length,
                MAX_TOTAL_INLINE_BYTES,
                "total inline value bytes",
                &cur.ctx,
            )?;
            RawValue::Inline(cur.take(length, "inline value")?.to_vec())
        } else {
            let Some((file, offset)) = files.next() else {
                return Err(cur
                    .ctx
                    .bad("fewer indirect references than indirect values"));
            };
            check_reference(cur, offset, length)?;
            RawValue::Indirect(Loc {
                file,
                offset,
                length,
            })
        };
        entries.push(LeafEntry { key, value });
    }
    Ok(entries)
}

// ---------------------------------------------------------------------------------------------
// Files and the walk over the tree.

/// Resolves data-file paths inside the store's root, once each.
struct Files {
    /// The store's root folder, canonical.
    root: PathBuf,
    /// Resolved paths: the canonical file and its length.
    cache: HashMap<Vec<u8>, (PathBuf, u64)>,
}

impl Files {
    fn new(root: PathBuf) -> Self {
        Files {
            root,
            cache: HashMap::new(),
        }
    }

    fn escape(&self, relative: &[u8], reason: &'static str) -> Error {
        Error::OcdbtPathEscape {
            path: self.root.clone(),
            data_file: String::from_utf8_lossy(relative).into_owned(),
            reason,
        }
    }

    /// The canonical path and length of the regular file at `relative` (a path from the
    /// store), refusing one that leaves the root.
    fn resolve(&mut self, relative: &[u8]) -> Result<(PathBuf, u64)> {
        if let Some(found) = self.cache.get(relative) {
            return Ok(found.clone());
        }
        if relative.is_empty() {
            return Err(self.escape(relative, "an empty path"));
        }
        if relative.starts_with(b"/") {
            return Err(self.escape(relative, "an absolute path"));
        }
        if relative.contains(&0) || relative.contains(&b'\\') {
            return Err(self.escape(relative, "a NUL byte or backslash in the path"));
        }
        for component in relative.split(|&b| b == b'/') {
            match component {
                b".." => {
                    return Err(self.escape(relative, "a `..` component leaves the store's folder"))
                }
                b"" | b"." => return Err(self.escape(relative, "an empty or `.` path component")),
                _ => {}
            }
        }
        let joined =
            self.root.join(bytes_to_path(relative).ok_or_else(|| {
                self.escape(relative, "a path that is not valid on this platform")
            })?);
        let canonical = std::fs::canonicalize(&joined).map_err(|e| Error::io(&joined, e))?;
        // A symlink anywhere along the path may point out of the store; the canonical path
        // says where the file really is.
        if !canonical.starts_with(&self.root) {
            return Err(self.escape(
                relative,
                "it resolves (through a symlink) to outside the store's folder",
            ));
        }
        let meta = std::fs::metadata(&canonical).map_err(|e| Error::io(&canonical, e))?;
        crate::check_regular(&canonical, &meta)?;
        let found = (canonical, meta.len());
        self.cache.insert(relative.to_vec(), found.clone());
        Ok(found)
    }
}

#[cfg(unix)]
fn bytes_to_path(bytes: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
}

#[cfg(not(unix))]
fn bytes_to_path(bytes: &[u8]) -> Option<PathBuf> {
    std::str::from_utf8(bytes).ok().map(PathBuf::from)
}

/// Reads `length` bytes at `offset` of a regular file, refusing a range past its end.
fn read_range(path: &Path, offset: u64, length: u64) -> Result<Vec<u8>> {
    let file = crate::open_for_reading(path)?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    // Checked again on the open file: the path could have been replaced since it was resolved.
    crate::check_regular(path, &meta)?;
    let file_len = meta.len();
    if offset.checked_add(length).is_none_or(|end| end > file_len) {
        return Err(Error::truncated(
            path,
            "",
            offset,
            length,
            file_len.saturating_sub(offset),
        ));
    }
    let len = usize::try_from(length).map_err(|_| Error::truncated(path, "", offset, length, 0))?;
    let mut buf = vec![0u8; len];
    crate::source::read_exact_at(&file, &mut buf, offset).map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// The state of one walk over a store's B+tree.
struct Walk {
    files: Files,
    budget: Budget,
    nodes_read: u64,
    decoded_bytes: u64,
    entries: Vec<Entry>,
}

impl Walk {
    /// Reads the node at `loc`, whose keys are relative to `prefix` and whose height must be
    /// `height`, and appends its keys (or its children's) to `entries`.
    fn node(&mut self, loc: &Loc, prefix: &[u8], height: u64) -> Result<()> {
        let (path, _) = self.files.resolve(&loc.file.path)?;
        let ctx = Ctx {
            path: &path,
            offset: loc.offset,
            what: "B+tree node",
        };
        self.nodes_read = self.nodes_read.saturating_add(1);
        if self.nodes_read > MAX_NODES {
            return Err(ctx.limit("nodes read for the store", MAX_NODES, self.nodes_read));
        }
        if loc.length > MAX_NODE_BYTES {
            return Err(ctx.limit("encoded bytes", MAX_NODE_BYTES, loc.length));
        }
        let bytes = read_range(&path, loc.offset, loc.length)?;
        let node = parse_btree_node(&bytes, ctx, &loc.file.base, &mut self.budget)?;
        if u64::from(node.height) != height {
            return Err(ctx.bad(format!(
                "height {}, where its parent expects {height}",
                node.height
            )));
        }
        // Checked after the node is decoded: the total may overshoot by at most one node's
        // MAX_NODE_BYTES before the walk stops.
        self.decoded_bytes = self.decoded_bytes.saturating_add(to_u64(node.decoded_len));
        if self.decoded_bytes > MAX_TOTAL_NODE_BYTES {
            return Err(ctx.limit(
                "node bytes read for the store",
                MAX_TOTAL_NODE_BYTES,
                self.decoded_bytes,
            ));
        }
        match node.entries {
            BtreeEntries::Leaf(leaf) => {
                for entry in leaf {
                    let key = concat(prefix, &entry.key);
                    self.push(key, entry.value, &ctx)?;
                }
            }
            BtreeEntries::Interior(children) => {
                let child_height = height.saturating_sub(1);
                for child in children {
                    let first_key = concat(prefix, &child.key);
                    let child_prefix = concat(
                        prefix,
                        child
                            .key
                            .get(..child.subtree_prefix_len)
                            .unwrap_or(&child.key),
                    );
                    let before = self.entries.len();
                    self.node(&child.child, &child_prefix, child_height)?;
                    // Every key under a child is at least the key its parent lists for it.
                    if self.entries.get(before).is_some_and(|e| e.key < first_key) {
                        return Err(
                            ctx.bad("a child holds a key below the key its parent gives it")
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends one full key and its value, checking order, limits and the value's range.
    fn push(&mut self, key: Vec<u8>, value: RawValue, ctx: &Ctx<'_>) -> Result<()> {
        if to_u64(key.len()) > MAX_KEY_LEN {
            return Err(ctx.limit("key length", MAX_KEY_LEN, to_u64(key.len())));
        }
        if to_u64(self.entries.len()) >= MAX_ENTRIES {
            return Err(ctx.limit(
                "keys in the store",
                MAX_ENTRIES,
                to_u64(self.entries.len()).saturating_add(1),
            ));
        }
        // Keys come out of a valid tree in increasing order; anything else is a broken tree,
        // and silently sorting it would hide which of two values is meant.
        if self.entries.last().is_some_and(|last| last.key >= key) {
            return Err(ctx.bad(format!(
                "key `{}` is not above the key before it",
                String::from_utf8_lossy(&key)
            )));
        }
        let value = match value {
            RawValue::Inline(bytes) => Value::Inline(bytes),
            RawValue::Indirect(loc) => {
                let (file, file_len) = self.files.resolve(&loc.file.path)?;
                if loc
                    .offset
                    .checked_add(loc.length)
                    .is_none_or(|end| end > file_len)
                {
                    return Err(Error::truncated(
                        &file,
                        "",
                        loc.offset,
                        loc.length,
                        file_len.saturating_sub(loc.offset),
                    ));
                }
                Value::External {
                    file,
                    offset: loc.offset,
                    length: loc.length,
                }
            }
        };
        self.entries.push(Entry { key, value });
        Ok(())
    }
}

/// `a` followed by `b`.
fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len().saturating_add(b.len()));
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    /// The repository's copies of the golden containers (CI may lack `shared/`).
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/containers");
    /// The shared golden containers, read when present for the case not copied into fixtures.
    const GOLDEN: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/golden-containers"
    );

    // -----------------------------------------------------------------------------------------
    // An encoder for synthetic stores, so that each error can be provoked in a store that is
    // valid everywhere else.

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    /// Wraps a body in the header (magic, length, version 0, compression) and CRC-32C footer.
    fn frame(magic: u32, body: &[u8], zstd: bool) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        out.extend_from_slice(&[0; 8]);
        varint(&mut out, 0);
        if zstd {
            varint(&mut out, 1);
            out.extend_from_slice(&zstd::stream::encode_all(body, 3).unwrap());
        } else {
            varint(&mut out, 0);
            out.extend_from_slice(body);
        }
        let len = (out.len() + 4) as u64;
        out[4..12].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// A data file table of `(base_path, relative_path)` pairs, without prefix compression.
    fn table(out: &mut Vec<u8>, files: &[(&str, &str)]) {
        varint(out, files.len() as u64);
        for _ in 1..files.len() {
            varint(out, 0);
        }
        for (b, r) in files {
            varint(out, (b.len() + r.len()) as u64);
        }
        for (b, _) in files {
            varint(out, b.len() as u64);
        }
        for (b, r) in files {
            out.extend_from_slice(b.as_bytes());
            out.extend_from_slice(r.as_bytes());
        }
    }

    /// Prefix and suffix length columns and suffix bytes of sorted keys.
    fn keys(out: &mut Vec<u8>, keys: &[&[u8]], subtree: Option<&[u64]>) {
        let common = |a: &[u8], b: &[u8]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
        for w in keys.windows(2) {
            varint(out, common(w[0], w[1]) as u64);
        }
        let mut suffixes = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let p = if i == 0 { 0 } else { common(keys[i - 1], k) };
            varint(out, (k.len() - p) as u64);
            suffixes.extend_from_slice(&k[p..]);
        }
        if let Some(subtree) = subtree {
            for &s in subtree {
                varint(out, s);
            }
        }
        out.extend_from_slice(&suffixes);
    }

    enum V<'a> {
        In(&'a [u8]),
        Ref(u64, u64, u64),
    }

    fn leaf_node(files: &[(&str, &str)], entries: &[(&[u8], V<'_>)], zstd: bool) -> Vec<u8> {
        let mut b = vec![0u8];
        table(&mut b, files);
        varint(&mut b, entries.len() as u64);
        let ks: Vec<&[u8]> = entries.iter().map(|e| e.0).collect();
        keys(&mut b, &ks, None);
        for (_, v) in entries {
            varint(
                &mut b,
                match v {
                    V::In(x) => x.len() as u64,
                    V::Ref(_, _, l) => *l,
                },
            );
        }
        for (_, v) in entries {
            b.push(matches!(v, V::Ref(..)) as u8);
        }
        for (_, v) in entries {
            if let V::Ref(id, _, _) = v {
                varint(&mut b, *id);
            }
        }
        for (_, v) in entries {
            if let V::Ref(_, off, _) = v {
                varint(&mut b, *off);
            }
        }
        for (_, v) in entries {
            if let V::In(x) = v {
                b.extend_from_slice(x);
            }
        }
        frame(BTREE_NODE_MAGIC, &b, zstd)
    }

    /// An interior node: `(key, subtree_prefix_len, file id, offset, length)` per child.
    fn interior_node(
        height: u8,
        files: &[(&str, &str)],
        children: &[(&[u8], u64, u64, u64, u64)],
    ) -> Vec<u8> {
        let mut b = vec![height];
        table(&mut b, files);
        varint(&mut b, children.len() as u64);
        let ks: Vec<&[u8]> = children.iter().map(|c| c.0).collect();
        let st: Vec<u64> = children.iter().map(|c| c.1).collect();
        keys(&mut b, &ks, Some(&st));
        for c in children {
            varint(&mut b, c.2);
        }
        for c in children {
            varint(&mut b, c.3);
        }
        for c in children {
            varint(&mut b, c.4);
        }
        for _ in 0..children.len() * 3 {
            varint(&mut b, 1);
        }
        frame(BTREE_NODE_MAGIC, &b, false)
    }

    /// A manifest body up to (not including) its data file table.
    fn config(kind: u8) -> Vec<u8> {
        let mut b = vec![7u8; 16];
        b.push(kind);
        varint(&mut b, 100);
        varint(&mut b, 8 << 20);
        b.push(4);
        varint(&mut b, 1);
        b.extend_from_slice(&0i32.to_le_bytes());
        b
    }

    /// A `single` manifest whose one version's root is `(file id, offset, length)` of `files`.
    fn manifest(files: &[(&str, &str)], root: (u64, u64, u64), root_height: u8) -> Vec<u8> {
        let mut b = config(0);
        table(&mut b, files);
        varint(&mut b, 1); // one inline version
        varint(&mut b, 1); // generation 1
        b.push(root_height);
        varint(&mut b, root.0);
        varint(&mut b, root.1);
        varint(&mut b, root.2);
        for _ in 0..3 {
            varint(&mut b, 0);
        }
        b.extend_from_slice(&123u64.to_le_bytes());
        varint(&mut b, 0); // no version nodes
        frame(MANIFEST_MAGIC, &b, true)
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// A store whose root leaf (in `d/leaf`) holds `a/.zarray` inline and `a/0` as 5 bytes at
    /// offset 3 of `data_file`, a path given as the store writes it.
    fn simple_store(data_file: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let leaf = leaf_node(
            &[("", data_file)],
            &[(b"a/.zarray", V::In(b"{}")), (b"a/0", V::Ref(0, 3, 5))],
            true,
        );
        write(&dir.path().join("d/leaf"), &leaf);
        write(
            &dir.path().join(MANIFEST_FILE),
            &manifest(&[("", "d/leaf")], (0, 0, leaf.len() as u64), 0),
        );
        if !data_file.starts_with('/') && !data_file.contains("..") && !data_file.contains("link") {
            write(&dir.path().join(data_file), b"xxxHELLOyy");
        }
        dir
    }

    fn value_bytes(value: &Value) -> Vec<u8> {
        match value {
            Value::Inline(b) => b.clone(),
            Value::External {
                file,
                offset,
                length,
            } => {
                let bytes = std::fs::read(file).unwrap();
                bytes[*offset as usize..(*offset + *length) as usize].to_vec()
            }
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).unwrap();
                // The copy keeps the source's mode; the tests corrupt their copies in place.
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
    }

    /// The root B+tree node file of a fixture store: the only file the manifest names.
    fn root_node_file(store: &Path) -> PathBuf {
        let d = std::fs::read_dir(store.join("d")).unwrap();
        let files: Vec<_> = d.map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files.into_iter().next().unwrap()
    }

    // -----------------------------------------------------------------------------------------
    // Golden stores.

    /// Checks a golden store: exactly the expected keys, JSON metadata, and every array's
    /// chunk decompressing to its expected length and sha256.
    fn check_golden(case: &Path, store: &str, zarr3: bool) {
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(case.join("expected.json")).unwrap()).unwrap();
        let root = case.join(store);
        assert!(is_store(&root));
        let opened = open(&root).unwrap();
        let listed: Vec<String> = opened
            .entries
            .iter()
            .map(|e| String::from_utf8(e.key.clone()).unwrap())
            .collect();
        let mut want: Vec<String> = expected["ocdbt_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        want.sort();
        assert_eq!(listed, want, "{}", case.display());
        assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted and unique");

        let by_key: HashMap<&str, &Value> = opened
            .entries
            .iter()
            .map(|e| (std::str::from_utf8(&e.key).unwrap(), &e.value))
            .collect();
        let canonical_root = std::fs::canonicalize(&root).unwrap();
        let mut external = 0;
        for (key, value) in &by_key {
            if let Value::External { file, .. } = value {
                assert!(file.is_absolute() && file.starts_with(&canonical_root));
                external += 1;
            }
            if key.ends_with("/.zarray") || key.ends_with("/zarr.json") {
                let json: serde_json::Value = serde_json::from_slice(&value_bytes(value))
                    .unwrap_or_else(|e| panic!("{key}: {e}"));
                assert!(json.is_object(), "{key}");
            }
        }
        assert!(
            external > 0,
            "the golden stores keep their large chunks out of line"
        );

        let rows = expected["params"]
            .as_array()
            .unwrap()
            .iter()
            .chain(expected["non_params"].as_array().unwrap());
        let mut checked = 0;
        for row in rows {
            let name = row["stored_as"].as_str().unwrap();
            let nbytes = row["nbytes"].as_u64().unwrap() as usize;
            let chunks: Vec<&&str> = by_key
                .keys()
                .filter(|k| {
                    k.starts_with(&format!("{name}/"))
                        && !k.ends_with("/.zarray")
                        && !k.ends_with("/zarr.json")
                })
                .collect();
            assert_eq!(
                chunks.len(),
                1,
                "{name}: one chunk per array in these cases"
            );
            let stored = value_bytes(by_key[*chunks[0]]);
            let compressed = if zarr3 {
                // A shard of one inner chunk: the chunk, then a 20-byte index (offset u64le,
                // nbytes u64le, CRC-32C u32le of the 16 bytes before it).
                let index = &stored[stored.len() - 20..];
                let offset = u64::from_le_bytes(index[..8].try_into().unwrap()) as usize;
                let len = u64::from_le_bytes(index[8..16].try_into().unwrap()) as usize;
                let crc = u32::from_le_bytes(index[16..].try_into().unwrap());
                assert_eq!(crc32c::crc32c(&index[..16]), crc, "{name}: shard index CRC");
                stored[offset..offset + len].to_vec()
            } else {
                stored
            };
            let raw = zstd::stream::decode_all(&compressed[..]).unwrap();
            assert_eq!(raw.len(), nbytes, "{name}");
            let digest: String = sha2::Sha256::digest(&raw)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(digest, row["sha256"].as_str().unwrap(), "{name}");
            checked += 1;
        }
        assert!(checked >= 40);
    }

    #[test]
    fn golden_orbax_bv_std() {
        check_golden(&Path::new(FIXTURES).join("orbax-bv-std"), "ckpt", false);
    }

    #[test]
    fn golden_orbax_bv_v1_zarr3() {
        check_golden(
            &Path::new(FIXTURES).join("orbax-bv-v1-zarr3"),
            "ckpt/state",
            true,
        );
    }

    #[test]
    fn golden_orbax_vit_token_when_shared_is_present() {
        let case = Path::new(GOLDEN).join("orbax-vit-token");
        if !case.is_dir() {
            eprintln!("skipped: {} is absent", case.display());
            return;
        }
        check_golden(&case, "workdir/checkpoint_100", false);
    }

    #[test]
    fn golden_manifests_and_nodes_through_the_fuzz_entry_points() {
        let store = Path::new(FIXTURES).join("orbax-bv-std/ckpt");
        let manifest = std::fs::read(store.join(MANIFEST_FILE)).unwrap();
        assert_eq!(crate::fuzzing::ocdbt_manifest(&manifest).unwrap(), 1);
        let node = std::fs::read(root_node_file(&store)).unwrap();
        assert_eq!(crate::fuzzing::ocdbt_node(&node).unwrap(), 80);
        // The per-process sub-store's own manifest parses too (it is not followed).
        let sub = std::fs::read(store.join("ocdbt.process_0").join(MANIFEST_FILE)).unwrap();
        assert!(crate::fuzzing::ocdbt_manifest(&sub).unwrap() >= 1);
        assert!(crate::fuzzing::ocdbt_node(&manifest).is_err());
    }

    #[test]
    fn fuzz_seeds_parse() {
        // Each seed is a mode byte, then a golden manifest or node (see fuzz/fuzz_targets/ocdbt.rs).
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/ocdbt");
        let mut n = 0;
        for e in std::fs::read_dir(seeds).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            let encoded = &bytes[1..];
            let parsed = fuzz_manifest(encoded)
                .or_else(|_| fuzz_node(encoded))
                .unwrap();
            assert!(parsed >= 1);
            n += 1;
        }
        assert!(n >= 4);
    }

    #[test]
    fn is_store_needs_a_regular_manifest() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_store(dir.path()));
        std::fs::create_dir(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(!is_store(dir.path()));
    }

    // -----------------------------------------------------------------------------------------
    // Synthetic stores: the parts of the format the golden stores do not use.

    #[test]
    fn interior_nodes_prefixes_and_transitive_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Leaves live in `sub/d/leaves`, reached through the base path `sub/`; their values in
        // `sub/d/values`, named relative to that transitive path.
        let values = b"0123456789abcdef";
        write(&root.join("sub/d/values"), values);
        let leaf_a = leaf_node(
            &[("", "d/values")],
            &[
                (b"a/.zarray", V::In(b"{\"a\":1}")),
                (b"a/0", V::Ref(0, 2, 4)),
            ],
            false,
        );
        let leaf_b = leaf_node(
            &[("", "d/values")],
            &[(b".zarray", V::In(b"{}")), (b"0", V::Ref(0, 10, 6))],
            true,
        );
        let mut leaves = leaf_a.clone();
        leaves.extend_from_slice(&leaf_b);
        write(&root.join("sub/d/leaves"), &leaves);
        let la = leaf_a.len() as u64;
        let lb = leaf_b.len() as u64;
        // Child 0's keys are relative to `params.`, child 1's to `params.b/`.
        let top = interior_node(
            1,
            &[("sub/", "d/leaves")],
            &[
                (b"params.a/.zarray", 7, 0, 0, la),
                (b"params.b/.zarray", 9, 0, la, lb),
            ],
        );
        write(&root.join("d/top"), &top);
        write(
            &root.join(MANIFEST_FILE),
            &manifest(&[("", "d/top")], (0, 0, top.len() as u64), 1),
        );
        let store = open(root).unwrap();
        let keys: Vec<&[u8]> = store.entries.iter().map(|e| e.key.as_slice()).collect();
        assert_eq!(
            keys,
            [
                &b"params.a/.zarray"[..],
                b"params.a/0",
                b"params.b/.zarray",
                b"params.b/0"
            ]
        );
        assert_eq!(value_bytes(&store.entries[0].value), b"{\"a\":1}");
        assert_eq!(value_bytes(&store.entries[1].value), b"2345");
        assert_eq!(value_bytes(&store.entries[3].value), b"abcdef");
        match &store.entries[3].value {
            Value::External { file, .. } => {
                assert_eq!(
                    file,
                    &std::fs::canonicalize(root.join("sub/d/values")).unwrap()
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prefix_compressed_data_file_table() {
        // Two files sharing the base path `d/` and `ab` of their relative paths:
        // path 0 = "d/" + "abc", path 1 = "d/" + "abd".
        let mut t = Vec::new();
        varint(&mut t, 2);
        varint(&mut t, 4); // common prefix "d/ab"
        varint(&mut t, 5); // suffix 0: "d/abc"
        varint(&mut t, 1); // suffix 1: "d"
        varint(&mut t, 2); // base path 0: "d/"
        varint(&mut t, 2); // base path 1: "d/"
        t.extend_from_slice(b"d/abcd");
        let transitive: Rc<[u8]> = Rc::from(&b"x/"[..]);
        let ctx = Ctx {
            path: Path::new("t"),
            offset: 0,
            what: "test",
        };
        let mut cur = Cursor::new(&t, ctx);
        let files = read_data_file_table(&mut cur, &transitive).unwrap();
        cur.finish().unwrap();
        assert_eq!(files[0].path, b"x/d/abc");
        assert_eq!(files[1].path, b"x/d/abd");
        assert_eq!(&*files[1].base, b"x/d/");
    }

    #[test]
    fn empty_generation_is_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join(MANIFEST_FILE),
            &manifest(&[("", "")], (0, u64::MAX, u64::MAX), 0),
        );
        assert!(open(dir.path()).unwrap().entries.is_empty());
    }

    #[test]
    fn version_tree_nodes_parse() {
        // A leaf holding generations 1 and 2, and an interior node over it.
        let mut leaf = vec![4u8, 0];
        table(&mut leaf, &[("", "d/a")]);
        varint(&mut leaf, 2);
        varint(&mut leaf, 1);
        varint(&mut leaf, 2);
        leaf.extend_from_slice(&[0, 0]);
        for v in [0, 0, 0, 10, 20, 30, 0, 0, 0, 0, 0, 0] {
            varint(&mut leaf, v);
        }
        leaf.extend_from_slice(&[0; 16]);
        let encoded = frame(VERSION_NODE_MAGIC, &leaf, true);
        assert_eq!(fuzz_node(&encoded).unwrap(), 2);

        let mut interior = vec![4u8, 1];
        table(&mut interior, &[("", "d/a")]);
        varint(&mut interior, 1);
        varint(&mut interior, 16);
        for v in [0, 0, 100, 16] {
            varint(&mut interior, v);
        }
        interior.extend_from_slice(&[0; 8]);
        assert_eq!(
            fuzz_node(&frame(VERSION_NODE_MAGIC, &interior, false)).unwrap(),
            1
        );

        // Generations that are not increasing are refused.
        let mut bad = leaf.clone();
        // Arity and height (2), the table (6), the count (1), then the generation numbers.
        bad[2 + 6 + 1 + 1] = 1; // the second generation number: 1 again
        let err = fuzz_node(&frame(VERSION_NODE_MAGIC, &bad, false)).unwrap_err();
        assert!(matches!(err, Error::Ocdbt { .. }), "{err}");
    }

    #[test]
    fn simple_store_reads() {
        let dir = simple_store("d/data");
        let store = open(dir.path()).unwrap();
        assert_eq!(store.entries.len(), 2);
        assert_eq!(value_bytes(&store.entries[1].value), b"HELLO");
    }

    // -----------------------------------------------------------------------------------------
    // One test per error kind.

    #[test]
    fn bad_magic() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&Path::new(FIXTURES).join("orbax-bv-std/ckpt"), dir.path());
        let path = dir.path().join(MANIFEST_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OcdbtMagic {
                    expected: MANIFEST_MAGIC,
                    what: "manifest",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("manifest.ocdbt"), "{err}");
        // A node where a manifest is expected, and the other way round.
        let node = std::fs::read(root_node_file(dir.path())).unwrap();
        assert!(matches!(
            fuzz_manifest(&node),
            Err(Error::OcdbtMagic { .. })
        ));
        assert!(matches!(fuzz_node(&bytes), Err(Error::OcdbtMagic { .. })));
    }

    #[test]
    fn bad_crc() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&Path::new(FIXTURES).join("orbax-bv-std/ckpt"), dir.path());
        let node = root_node_file(dir.path());
        let mut bytes = std::fs::read(&node).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&node, &bytes).unwrap();
        let err = open(dir.path()).unwrap_err();
        match &err {
            Error::OcdbtCrc {
                path,
                what,
                expected,
                found,
                ..
            } => {
                assert_eq!(*what, "B+tree node");
                assert_ne!(expected, found);
                assert_eq!(path, &std::fs::canonicalize(&node).unwrap());
            }
            other => panic!("{other}"),
        }
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn truncated() {
        // A data file shorter than the value it should hold.
        let dir = simple_store("d/data");
        std::fs::write(dir.path().join("d/data"), b"xxxHE").unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Truncated {
                    offset: 3,
                    expected: 5,
                    found: 2,
                    ..
                }
            ),
            "{err}"
        );
        // A node file cut short of its reference.
        let dir = simple_store("d/data");
        let leaf = std::fs::read(dir.path().join("d/leaf")).unwrap();
        std::fs::write(dir.path().join("d/leaf"), &leaf[..leaf.len() - 1]).unwrap();
        assert!(matches!(open(dir.path()), Err(Error::Truncated { .. })));
        // A body that ends inside a field (valid frame, CRC and all).
        let mut body = config(0);
        body.truncate(10);
        let err = fuzz_manifest(&frame(MANIFEST_MAGIC, &body, false)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OcdbtTruncated {
                    field: "uuid",
                    expected: 16,
                    found: 10,
                    ..
                }
            ),
            "{err}"
        );
        // Fewer bytes than a header and footer.
        assert!(matches!(
            fuzz_node(b"\x0c\xdb"),
            Err(Error::OcdbtTruncated { .. })
        ));
        // A zstd stream cut short (the CRC recomputed so that only the stream is wrong).
        let full = frame(BTREE_NODE_MAGIC, &[0u8; 64], true);
        let mut cut = full[..full.len() - 6].to_vec();
        let len = (cut.len() + 4) as u64;
        cut[4..12].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c(&cut);
        cut.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(fuzz_node(&cut), Err(Error::Ocdbt { .. })));
    }

    #[test]
    fn limits() {
        // A node taller than MAX_TREE_HEIGHT.
        let mut b = vec![200u8];
        table(&mut b, &[]);
        varint(&mut b, 1);
        let err = fuzz_node(&frame(BTREE_NODE_MAGIC, &b, false)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OcdbtLimit {
                    limit: MAX_TREE_HEIGHT,
                    found: 200,
                    ..
                }
            ),
            "{err}"
        );
        // More entries than MAX_ENTRIES.
        let mut b = vec![0u8];
        table(&mut b, &[]);
        varint(&mut b, MAX_ENTRIES + 1);
        let err = fuzz_node(&frame(BTREE_NODE_MAGIC, &b, false)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OcdbtLimit {
                    limit: MAX_ENTRIES,
                    ..
                }
            ),
            "{err}"
        );
        // A key longer than MAX_KEY_LEN.
        let mut b = vec![0u8];
        table(&mut b, &[]);
        varint(&mut b, 1);
        varint(&mut b, MAX_KEY_LEN + 1);
        let err = fuzz_node(&frame(BTREE_NODE_MAGIC, &b, false)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OcdbtLimit {
                    limit: MAX_KEY_LEN,
                    ..
                }
            ),
            "{err}"
        );
        // More data files than MAX_DATA_FILES.
        let mut b = vec![0u8];
        varint(&mut b, MAX_DATA_FILES + 1);
        let err = fuzz_node(&frame(BTREE_NODE_MAGIC, &b, false)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OcdbtLimit {
                    limit: MAX_DATA_FILES,
                    ..
                }
            ),
            "{err}"
        );
        // A zstd body that inflates past MAX_NODE_BYTES, whatever its frame declares.
        let zeros = vec![0u8; (MAX_NODE_BYTES + 1) as usize];
        let err = fuzz_node(&frame(BTREE_NODE_MAGIC, &zeros, true)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OcdbtLimit {
                    limit: MAX_NODE_BYTES,
                    ..
                }
            ),
            "{err}"
        );
        // A manifest file larger than MAX_MANIFEST_BYTES is not read at all.
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join(MANIFEST_FILE)).unwrap();
        f.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OcdbtLimit {
                    limit: MAX_MANIFEST_BYTES,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn escaping_paths() {
        for path in [
            "../outside",
            "d/../../outside",
            "/etc/hostname",
            "d//x",
            "./d/x",
        ] {
            let dir = simple_store(path);
            let err = open(dir.path()).unwrap_err();
            assert!(
                matches!(err, Error::OcdbtPathEscape { .. }),
                "{path}: {err}"
            );
        }
        // A symlink out of the store's folder.
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("data"), b"xxxHELLOyy");
        let dir = simple_store("d/link");
        std::os::unix::fs::symlink(outside.path().join("data"), dir.path().join("d/link")).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::OcdbtPathEscape { .. }), "{err}");
        // A symlink that stays inside is followed.
        let dir = simple_store("d/data");
        std::os::unix::fs::symlink("data", dir.path().join("d/link")).unwrap();
        let leaf = leaf_node(&[("", "d/link")], &[(b"k", V::Ref(0, 3, 5))], false);
        write(&dir.path().join("d/leaf"), &leaf);
        write(
            &dir.path().join(MANIFEST_FILE),
            &manifest(&[("", "d/leaf")], (0, 0, leaf.len() as u64), 0),
        );
        let store = open(dir.path()).unwrap();
        assert_eq!(value_bytes(&store.entries[0].value), b"HELLO");
    }

    #[test]
    fn special_files_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(MANIFEST_FILE);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(!is_store(dir.path()));
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::NotARegularFile { .. }), "{err}");
    }

    #[test]
    fn malformed_structures() {
        // A numbered manifest is refused by `open`, though it parses.
        let numbered = frame(MANIFEST_MAGIC, &config(1), false);
        assert_eq!(fuzz_manifest(&numbered).unwrap(), 0);
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join(MANIFEST_FILE), &numbered);
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("numbered"), "{err}");
        // Keys out of order within a node.
        let mut b = vec![0u8];
        table(&mut b, &[]);
        varint(&mut b, 2);
        varint(&mut b, 0); // no shared prefix
        varint(&mut b, 1);
        varint(&mut b, 1);
        b.extend_from_slice(b"ba");
        let err = fuzz_node(&frame(BTREE_NODE_MAGIC, &b, false)).unwrap_err();
        assert!(err.to_string().contains("increasing"), "{err}");
        // A varint running past 64 bits.
        let mut b = vec![0u8];
        b.extend_from_slice(&[0xff; 9]);
        b.push(0x02);
        let err = fuzz_node(&frame(BTREE_NODE_MAGIC, &b, false)).unwrap_err();
        assert!(err.to_string().contains("64 bits"), "{err}");
        // A data file id outside the table.
        let leaf = leaf_node(&[("", "d/x")], &[(b"k", V::Ref(1, 0, 1))], false);
        assert!(fuzz_node(&leaf)
            .unwrap_err()
            .to_string()
            .contains("data file id 1"));
        // The root node's height disagrees with the manifest.
        let dir = simple_store("d/data");
        let leaf = std::fs::read(dir.path().join("d/leaf")).unwrap();
        write(
            &dir.path().join(MANIFEST_FILE),
            &manifest(&[("", "d/leaf")], (0, 0, leaf.len() as u64), 1),
        );
        let err = open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("parent expects 1"), "{err}");
        // Bytes after the last field.
        let mut b = config(1);
        b.push(0);
        let err = fuzz_manifest(&frame(MANIFEST_MAGIC, &b, false)).unwrap_err();
        assert!(err.to_string().contains("follow the last field"), "{err}");
    }
}
