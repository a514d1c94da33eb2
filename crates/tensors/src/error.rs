//! The crate's one error type: every failure names the file, and the tensor where there is one.

use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Formats the optional tensor part of a message: empty when no tensor is involved.
fn tensor_part(tensor: &str) -> String {
    if tensor.is_empty() {
        String::new()
    } else {
        format!(": tensor `{tensor}`")
    }
}

/// Formats the optional zip-member part of a message: empty when no member is involved.
fn member_part(member: &str) -> String {
    if member.is_empty() {
        String::new()
    } else {
        format!(": member `{member}`")
    }
}

/// Formats a msgpack tree path for a message: the path in backquotes, or "the top level".
fn tree_part(tree: &str) -> String {
    if tree.is_empty() {
        "the top level".to_string()
    } else {
        format!("`{tree}`")
    }
}

/// Everything that can go wrong reading or writing a tensor file.
///
/// Every variant carries the file's path; `tensor` is the tensor's name, or empty
/// when the problem is with the file as a whole. Messages are one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The output would not fit on its file system: refused before anything is written or reserved.
    #[error("{}: the output needs {needed} bytes but its file system has {available} free; free some space or write elsewhere", .path.display())]
    NoSpace {
        /// The output file that was to be written.
        path: PathBuf,
        /// Bytes of tensor data the output will hold, headers not counted.
        needed: u64,
        /// Bytes an unprivileged writer may still use on the output's file system.
        available: u64,
    },
    /// The operating system refused a read or write.
    #[error("{}{}: {source}", .path.display(), tensor_part(.tensor))]
    Io {
        /// The file that was being read or written.
        path: PathBuf,
        /// The tensor being read or written, or empty when the operation concerned the whole file.
        tensor: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The file is none of the formats this crate reads.
    #[error("{}: not a tensor file (expected .npy, .npz, .safetensors or a torch.save zip): {found}", .path.display())]
    NotATensorFile {
        /// The file that was being read.
        path: PathBuf,
        /// What the file holds instead, in words (an empty file, a bare pickle, or its first bytes).
        found: String,
    },

    /// The file ends before the data its own headers announce.
    #[error("{}{}: truncated: needs {expected} bytes at offset {offset}, found {found} (re-download or re-export the file)", .path.display(), tensor_part(.tensor))]
    Truncated {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor being read, or empty when the problem is with the file as a whole.
        tensor: String,
        /// Byte offset in the file where the needed bytes start (a compressed member's data start; 0 for an `.npy` header).
        offset: u64,
        /// How many bytes were needed from that offset.
        expected: u64,
        /// How many of them were there (0 where a read ran into the end of the file).
        found: u64,
    },

    /// The zip container is broken (central directory, local header, compression).
    #[error("{}{}: broken zip archive: {detail}", .path.display(), tensor_part(.tensor))]
    Zip {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor whose member was being read, or empty when the problem is with the archive or a record.
        tensor: String,
        /// What is wrong with the archive, in words.
        detail: String,
    },

    /// A zip member whose bytes do not hash to the CRC-32 its directory entry records.
    #[error("{}{}: CRC-32 mismatch in zip member `{member}`: the directory records {expected:#010x}, the data hashes to {found:#010x} (the file is corrupt: re-download or re-export it)", .path.display(), tensor_part(.tensor))]
    Crc {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor read from the member, or empty when a whole record (such as `data.pkl`) was read.
        tensor: String,
        /// The member's name in the zip directory.
        member: String,
        /// The CRC-32 the zip directory records for the member.
        expected: u32,
        /// The CRC-32 of the bytes actually read.
        found: u32,
    },

    /// An `.npy` header that cannot be parsed.
    #[error("{}{}: bad .npy header: {detail}", .path.display(), tensor_part(.tensor))]
    NpyHeader {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor whose header it is (for a bare `.npy`, the file's stem).
        tensor: String,
        /// What is wrong with the header, in words.
        detail: String,
    },

    /// A dtype this crate does not read.
    #[error("{}{}: unknown or unsupported dtype {descr:?} (supported: f64, f32, f16, bf16, i64, i32, i16, i8, u8, bool)", .path.display(), tensor_part(.tensor))]
    UnknownDType {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor's name in the file.
        tensor: String,
        /// The dtype as the file spells it: a numpy `descr` or a safetensors dtype name.
        descr: String,
    },

    /// The header's shape and dtype announce a different number of bytes than the file holds.
    #[error("{}{}: size mismatch: shape and dtype need {expected} bytes, the file holds {found}", .path.display(), tensor_part(.tensor))]
    SizeMismatch {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor's name in the file.
        tensor: String,
        /// What the shape and dtype need, in bytes.
        expected: u64,
        /// What the file holds for the tensor from its start, in bytes.
        found: u64,
    },

    /// A shape whose element or byte count does not fit in memory arithmetic.
    #[error("{}{}: shape {shape:?} overflows: its byte count does not fit in 64 bits", .path.display(), tensor_part(.tensor))]
    ShapeOverflow {
        /// The file that was being read or written.
        path: PathBuf,
        /// The tensor's name in the file, or as announced to the writer.
        tensor: String,
        /// The shape as declared, outermost axis first.
        shape: Vec<u64>,
    },

    /// A pickle names a global outside the allowlist; nothing was executed.
    #[error("{}: refused pickle global `{module}.{name}` at offset {offset}: only state-dict globals are allowed (as torch.load(weights_only=True)); nothing was executed", .path.display())]
    DisallowedGlobal {
        /// The file that holds the pickle.
        path: PathBuf,
        /// The module the global was looked up in (`os`, `builtins`, ...).
        module: String,
        /// The global's name within its module.
        name: String,
        /// Byte offset, within the pickle stream, of the opcode that named the global.
        offset: u64,
    },

    /// A pickle stream this reader cannot follow (bad opcode, short stack, limits).
    #[error("{}: bad pickle at offset {offset}: {detail}", .path.display())]
    Pickle {
        /// The file that holds the pickle.
        path: PathBuf,
        /// Byte offset, within the pickle stream, of the opcode being run.
        offset: u64,
        /// What the reader could not follow, in words.
        detail: String,
    },

    /// A `.pt` archive lacks a record its pickle refers to.
    #[error("{}{}: missing record `{record}` in the torch archive", .path.display(), tensor_part(.tensor))]
    MissingRecord {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor whose storage the record should hold, or empty when `data.pkl` itself is missing.
        tensor: String,
        /// The missing record's member name in the archive (`<archive>/data/<key>`, or `data.pkl`).
        record: String,
    },

    /// A safetensors header that cannot be parsed or validated.
    #[error("{}: bad safetensors header: {detail}", .path.display())]
    Safetensors {
        /// The file that was being read.
        path: PathBuf,
        /// What is wrong with the header, in words.
        detail: String,
    },

    /// A feature of a valid file that this crate does not support.
    #[error("{}{}: unsupported: {detail}", .path.display(), tensor_part(.tensor))]
    Unsupported {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor that uses the feature, or empty when the file as a whole does.
        tensor: String,
        /// The unsupported feature, in words.
        detail: String,
    },

    /// No end-of-central-directory record where one must be: the archive is truncated, or not a zip.
    #[error("{}: broken zip archive: no end-of-central-directory record in the last {searched} bytes (the file is truncated or not a zip)", .path.display())]
    ZipNoEndRecord {
        /// The file that was being read.
        path: PathBuf,
        /// How many bytes at the end of the file were searched, in bytes.
        searched: u64,
    },

    /// An end record whose comment does not reach the end of the file: bytes follow the archive.
    #[error("{}: broken zip archive: the end record at offset {offset} is followed by {trailing} bytes its comment does not account for (data appended after the archive?)", .path.display())]
    ZipTrailingData {
        /// The file that was being read.
        path: PathBuf,
        /// Byte offset of the end record in the file.
        offset: u64,
        /// How many bytes follow the end record and its comment.
        trailing: u64,
    },

    /// A zip structure (`what`) placed at an offset past the end of the file.
    #[error("{}{}: broken zip archive: the {what} at offset {offset} lies past the end of the file ({file_len} bytes)", .path.display(), member_part(.member))]
    ZipOffsetPastEnd {
        /// The file that was being read.
        path: PathBuf,
        /// The member whose local header it is, or empty for a structure of the archive as a whole.
        member: String,
        /// Which structure it is (`central directory`, `zip64 end record`, `local header`).
        what: &'static str,
        /// The byte offset the archive gives for the structure.
        offset: u64,
        /// The file's length in bytes.
        file_len: u64,
    },

    /// A central directory that does not end where the end record (or zip64 end record) begins.
    #[error("{}: broken zip archive: the end record puts a {size}-byte central directory at offset {offset}, which does not end at the end record (offset {expected_end}): the directory offset points into the data", .path.display())]
    ZipDirectoryMisplaced {
        /// The file that was being read.
        path: PathBuf,
        /// Byte offset of the central directory, as the end record gives it.
        offset: u64,
        /// Size of the central directory, as the end record gives it, in bytes.
        size: u64,
        /// Byte offset of the end record (or zip64 end record), where the directory must end.
        expected_end: u64,
    },

    /// A zip header without its signature: a central-directory entry or a member's local header.
    #[error("{}{}: broken zip archive: expected a {record} signature at offset {offset}", .path.display(), member_part(.member))]
    ZipBadSignature {
        /// The file that was being read.
        path: PathBuf,
        /// The member whose local header it is, or empty for a central-directory entry or an end record.
        member: String,
        /// Which record was expected there (`central directory entry`, `local header`, `zip64 end record`).
        record: &'static str,
        /// Byte offset in the file where the signature was expected.
        offset: u64,
    },

    /// A zip header whose fields run past the structure that holds it.
    #[error("{}{}: broken zip archive: the {record} at offset {offset} needs {expected} bytes, {found} remain", .path.display(), member_part(.member))]
    ZipShortRecord {
        /// The file that was being read.
        path: PathBuf,
        /// The member whose extra field it is, or empty for a record not tied to a named member.
        member: String,
        /// Which record it is (`end record`, `central directory entry`, `extra field`, ...).
        record: &'static str,
        /// Byte offset of the record in the file (for an extra field, of the directory entry holding it).
        offset: u64,
        /// What the record needs, in bytes.
        expected: u64,
        /// What remains for it, in bytes.
        found: u64,
    },

    /// The end record's entry count disagrees with the central directory it points to.
    #[error("{}: broken zip archive: the end record declares {declared} entries, the central directory holds {found}", .path.display())]
    ZipEntryCount {
        /// The file that was being read.
        path: PathBuf,
        /// The entry count the end record declares.
        declared: u64,
        /// The entries found in the central directory (or the count the zip64 end record declares).
        found: u64,
    },

    /// An archive spanning several disks (split zip).
    #[error("{}: unsupported: a multi-disk (split) zip archive (disk {disk}, directory on disk {directory_disk})", .path.display())]
    ZipMultiDisk {
        /// The file that was being read.
        path: PathBuf,
        /// The disk number or disk count an end record gives, or the disk a member starts on.
        disk: u32,
        /// The disk an end record puts the central directory (or zip64 end record) on; 0 for a member.
        directory_disk: u32,
    },

    /// An encrypted zip member (traditional PKWARE encryption, or WinZip AES).
    #[error("{}: unsupported: zip member `{member}` is encrypted ({})", .path.display(), if *.aes { "WinZip AES" } else { "traditional PKWARE encryption" })]
    ZipEncrypted {
        /// The file that was being read.
        path: PathBuf,
        /// The member's name in the zip directory.
        member: String,
        /// Whether the member uses WinZip AES rather than traditional PKWARE encryption.
        aes: bool,
    },

    /// A zip member compressed with a method other than stored (0) or deflate (8).
    #[error("{}: unsupported: zip member `{member}` uses compression method {method} (only stored and deflate are read)", .path.display())]
    ZipCompression {
        /// The file that was being read.
        path: PathBuf,
        /// The member's name in the zip directory.
        member: String,
        /// The compression method number the directory entry records.
        method: u16,
    },

    /// A stored member whose compressed and uncompressed sizes differ.
    #[error("{}: broken zip archive: stored member `{member}` has compressed size {compressed} but size {size}", .path.display())]
    ZipStoredSizes {
        /// The file that was being read.
        path: PathBuf,
        /// The member's name in the zip directory.
        member: String,
        /// The compressed size the directory entry records, in bytes.
        compressed: u64,
        /// The uncompressed size the directory entry records, in bytes.
        size: u64,
    },

    /// Two central-directory entries with the same name.
    #[error("{}: broken zip archive: member `{member}` occurs twice in the central directory", .path.display())]
    ZipDuplicateMember {
        /// The file that was being read.
        path: PathBuf,
        /// The member name that occurs twice.
        member: String,
    },

    /// Two members whose byte ranges (local header through data) overlap, or a member that
    /// runs into the central directory: aliased data that would invent tensors.
    #[error("{}: broken zip archive: member `{member}` (bytes {start}..{end}) overlaps {other}", .path.display())]
    ZipOverlap {
        /// The file that was being read.
        path: PathBuf,
        /// The member whose byte range overlaps.
        member: String,
        /// Byte offset of the member's local header in the file.
        start: u64,
        /// Byte offset just past the member's data in the file.
        end: u64,
        /// What it overlaps, in words: another member and where that ends, or the central directory.
        other: String,
    },

    /// A local header whose name differs from the central directory's entry that points at it.
    #[error("{}: broken zip archive: the central directory names member `{member}`, its local header at offset {offset} names `{local}`", .path.display())]
    ZipLocalName {
        /// The file that was being read.
        path: PathBuf,
        /// The member's name as the central directory records it.
        member: String,
        /// The name its local header holds (invalid UTF-8 replaced).
        local: String,
        /// Byte offset of the local header in the file.
        offset: u64,
    },

    /// A member of an `.npz` that is not an `.npy` array: numpy would not load it as one, and
    /// nothing in an archive is skipped without a word.
    #[error("{}: zip member `{member}` is not an .npy array (it does not start with the \\x93NUMPY magic)", .path.display())]
    NpzNotAnArray {
        /// The file that was being read.
        path: PathBuf,
        /// The member's name in the zip directory.
        member: String,
    },

    /// A torch archive with more than one `data.pkl` record.
    #[error("{}: broken torch archive: two pickle records, `{first}` and `{second}`", .path.display())]
    TwoPickles {
        /// The file that was being read.
        path: PathBuf,
        /// The member name of the first `data.pkl` record.
        first: String,
        /// The member name of the second `data.pkl` record.
        second: String,
    },

    /// A pickle whose strings, bytes and tensor names add up to more than its budget, a
    /// multiple of the file's size: a memo or name bomb.
    #[error("{}: bad pickle at offset {offset}: it produces more than {budget} bytes of strings and tensor names (the budget for a {pickle_len}-byte pickle: a memo or name bomb)", .path.display())]
    PickleBudget {
        /// The file that holds the pickle.
        path: PathBuf,
        /// Byte offset, within the pickle stream, of the opcode that went over the budget.
        offset: u64,
        /// The most bytes of strings and tensor names the pickle may produce.
        budget: u64,
        /// The pickle stream's length in bytes.
        pickle_len: u64,
    },

    /// A tensor in a pickle under a key that cannot name it (neither a string nor an int).
    #[error("{}: bad pickle: a tensor under `{parent}` sits under a {key_kind} key, which cannot name it", .path.display())]
    PickleTensorKey {
        /// The file that holds the pickle.
        path: PathBuf,
        /// The dotted name of the container that holds the key (empty at the top level).
        parent: String,
        /// The Python type of the key (`None`, `float`, `tuple`, ...).
        key_kind: &'static str,
    },

    /// A key that occurs twice in a header (an `.npy` dict, a safetensors JSON object).
    #[error("{}{}: bad {format} header: key `{key}` occurs twice", .path.display(), tensor_part(.tensor))]
    DuplicateKey {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor whose `.npy` header it is, or empty for a safetensors header.
        tensor: String,
        /// Which kind of header it is: `.npy` or `safetensors`.
        format: &'static str,
        /// The key that occurs twice.
        key: String,
    },

    /// Text after the closing brace of an `.npy` header dict (other than padding and the newline).
    #[error("{}{}: bad .npy header: text after the dict at byte {offset}", .path.display(), tensor_part(.tensor))]
    NpyTrailingText {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor whose header it is (for a bare `.npy`, the file's stem).
        tensor: String,
        /// Byte offset of the text, counted from the start of the header's dict text.
        offset: u64,
    },

    /// Reading the file's tensors would take more work or output than the file's size justifies.
    #[error("{}{}: refused: reading it would decode {needed} bytes, past the budget of {budget} for a {file_len}-byte file (aliased or expanded views of compressed data)", .path.display(), tensor_part(.tensor))]
    WorkBudget {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor whose statistics were being computed.
        tensor: String,
        /// Bytes decoded or visited on the file so far, this tensor's included.
        needed: u64,
        /// The most bytes that may be decoded or visited for this file.
        budget: u64,
        /// The file's length in bytes, of which the budget is a multiple.
        file_len: u64,
    },

    /// A path that is not a regular file (a FIFO, a device, a directory, a socket).
    #[error("{}: not a regular file (it is {kind}): only regular files are read", .path.display())]
    NotARegularFile {
        /// The path that was to be read.
        path: PathBuf,
        /// What the path is instead (`a directory`, `a named pipe (FIFO)`, `a socket`, ...).
        kind: &'static str,
    },

    /// A name asked for that the file does not hold.
    #[error("{}: no tensor named `{tensor}` in this file", .path.display())]
    UnknownTensor {
        /// The file that was being read.
        path: PathBuf,
        /// The name that was asked for.
        tensor: String,
    },

    // Chunked arrays (zarr) and checkpoint folders.
    /// A chunk grid whose arithmetic or extents are impossible (`what` names the quantity).
    #[error("{}{}: bad chunk grid: expected {what} {expected}, found {found}", .path.display(), tensor_part(.tensor))]
    ChunkGrid {
        /// The array's metadata file (`.zarray`, `zarr.json`), or the store holding it.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The quantity that is wrong (`chunk rank`, `chunks`, `chunk bytes at most`, ...).
        what: &'static str,
        /// What the grid needs, or the limit.
        expected: u64,
        /// What the metadata or the store gives.
        found: u64,
    },
    /// An array whose missing chunks would read as more fill than any real checkpoint holds.
    #[error("{}{}: {missing} chunks are missing, which would read as {fill_bytes} bytes of fill value (more than the {limit}-byte limit): the checkpoint is incomplete or its metadata lies", .path.display(), tensor_part(.tensor))]
    ChunksMissing {
        /// The array's metadata file, or the store holding it.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// How many chunks the store does not hold.
        missing: u64,
        /// How many bytes of fill they would read as.
        fill_bytes: u64,
        /// The most fill bytes one array may read as.
        limit: u64,
    },
    /// A chunk that decodes to another size than its chunk shape needs.
    #[error("{}{}: chunk `{chunk}` ({codec}) decodes to {found} bytes, the chunk shape needs {expected} (the chunk is damaged or truncated)", .path.display(), tensor_part(.tensor))]
    ChunkSize {
        /// The file holding the chunk.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The chunk's key in its store.
        chunk: String,
        /// The chunk's codec.
        codec: &'static str,
        /// The bytes the chunk shape needs.
        expected: u64,
        /// The bytes it decoded to (one more than expected: it goes on).
        found: u64,
    },
    /// A chunk its codec cannot decode.
    #[error("{}{}: chunk `{chunk}` is not valid {codec} data: {reason}", .path.display(), tensor_part(.tensor))]
    ChunkCorrupt {
        /// The file holding the chunk.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The chunk's key in its store.
        chunk: String,
        /// The chunk's codec.
        codec: &'static str,
        /// The decoder's own message.
        reason: String,
    },
    /// A zarr v3 shard whose index does not hash to the CRC-32C stored after it.
    #[error("{}{}: shard `{chunk}`: CRC-32C mismatch in its index: stored {expected:#010x}, computed {found:#010x} (the shard is damaged)", .path.display(), tensor_part(.tensor))]
    ShardIndexCrc {
        /// The file holding the shard.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shard's key in its store.
        chunk: String,
        /// The CRC-32C stored after the index.
        expected: u32,
        /// The CRC-32C of the index's bytes.
        found: u32,
    },
    /// Array metadata (`.zarray`, `zarr.json`) that is not what the format allows.
    #[error("{}{}: bad array metadata: field `{field}`: expected {expected}, found {found}", .path.display(), tensor_part(.tensor))]
    ArrayMetadata {
        /// The metadata file, or the store holding it.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The field at fault.
        field: &'static str,
        /// What the format allows, or what this reader supports.
        expected: &'static str,
        /// What the metadata holds, as JSON.
        found: String,
    },
    /// A checkpoint's metadata file (Orbax `_METADATA`, big_vision `-LAST`) that cannot be read as its format says.
    #[error("{}: bad checkpoint metadata: {what}", .path.display())]
    CheckpointMetadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong, in words.
        what: String,
    },
    /// A path inside a checkpoint folder that leaves it (a symlink or a `..` name pointing elsewhere).
    #[error("{}: refused: it resolves to {target}, outside the checkpoint folder {root} (a link out of the checkpoint)", .path.display())]
    OutsideCheckpoint {
        /// The path inside the checkpoint.
        path: PathBuf,
        /// Where it resolves to.
        target: PathBuf,
        /// The checkpoint folder.
        root: PathBuf,
    },
    /// A folder that is no checkpoint this crate reads.
    #[error("{}: not a checkpoint folder: {found} (expected a big_vision checkpoint.bv-<step> folder or workdir, an Orbax step directory or its parent, or a zarr array folder)", .path.display())]
    NotACheckpoint {
        /// The folder.
        path: PathBuf,
        /// What the folder holds instead, in words.
        found: String,
    },

    // msgpack: flax checkpoints written by `flax.serialization.to_bytes` (see `msgpack.rs`).
    // `tensor` is the tree path (keys joined with `/`, empty for the top level) and `offset`
    // the file offset of the msgpack value being read.
    /// A flax msgpack file whose structure cannot be followed (bad marker, bad ext payload, ...).
    #[error("{}: bad flax msgpack at {} (offset {offset}): {what}", .path.display(), tree_part(.tensor))]
    Msgpack {
        /// The file that was being read.
        path: PathBuf,
        /// The tree path of the value being read.
        tensor: String,
        /// File offset of the value's header.
        offset: u64,
        /// What is wrong, in words.
        what: &'static str,
    },

    /// A msgpack length or count that claims more bytes than remain: a lying or corrupt length.
    #[error("{}: bad flax msgpack at {} (offset {offset}): {what} declares {declared}, but only {remaining} bytes remain before {bound}", .path.display(), tree_part(.tensor))]
    MsgpackLength {
        /// The file that was being read.
        path: PathBuf,
        /// The tree path of the value being read.
        tensor: String,
        /// File offset of the header that declares the length.
        offset: u64,
        /// What declares the length (`"a bin's length"`, `"a map's entry count"`, ...).
        what: &'static str,
        /// The declared length in bytes, or the declared count of entries.
        declared: u64,
        /// Bytes left between the header's end and `bound`.
        remaining: u64,
        /// Where the value must end: `"the end of the file"` or `"the end of its extension payload"`.
        bound: &'static str,
    },

    /// A value past one of the msgpack reader's limits (nesting depth, entries, key length, rank, ...).
    #[error("{}: refused flax msgpack at {} (offset {offset}): {what} is {found}, past the limit of {limit}", .path.display(), tree_part(.tensor))]
    MsgpackLimit {
        /// The file that was being read.
        path: PathBuf,
        /// The tree path of the value being read.
        tensor: String,
        /// File offset of the value's header.
        offset: u64,
        /// What is limited (`"the nesting depth"`, `"a map key's length"`, ...).
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The value found.
        found: u64,
    },

    /// One map of a flax msgpack tree holds the same key twice.
    #[error("{}: bad flax msgpack at {} (offset {offset}): key `{key}` occurs twice in one map", .path.display(), tree_part(.tensor))]
    MsgpackDuplicateKey {
        /// The file that was being read.
        path: PathBuf,
        /// The tree path of the map.
        tensor: String,
        /// File offset of the second occurrence of the key.
        offset: u64,
        /// The key, as read (an integer key printed in decimal).
        key: String,
    },

    /// A small file (tokenizer, manifest, config) larger than any real one.
    #[error("{}: {size} bytes, more than the {limit} bytes such a file may have", .path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The most bytes it may have.
        limit: u64,
    },

    /// The writer's target already exists and overwriting was not asked for.
    #[error("{}: already exists (pass --force to replace it)", .path.display())]
    Exists {
        /// The output file that already exists.
        path: PathBuf,
    },

    /// The writer was given data that does not match what was announced.
    #[error("{}{}: writer misuse: expected {expected}, got {found}", .path.display(), tensor_part(.tensor))]
    Writer {
        /// The file being written, or the file whose column bands were being read.
        path: PathBuf,
        /// The tensor concerned, or empty when the misuse concerns the whole file.
        tensor: String,
        /// What was announced or required, in words.
        expected: String,
        /// What was given instead, in words.
        found: String,
    },

    // OCDBT (TensorStore's key-value store inside Orbax checkpoints): the variants of `ocdbt.rs`.
    // `what` names the structure (`manifest`, `B+tree node`, `version tree node`, ...) and
    // `offset` is where it starts in its file.
    /// An OCDBT manifest or node that does not start with its magic number.
    #[error("{}: broken OCDBT store: the {what} at offset {offset} starts with {found:#010x}, not its magic number {expected:#010x}", .path.display())]
    OcdbtMagic {
        /// The file that holds the structure.
        path: PathBuf,
        /// Byte offset of the structure in the file.
        offset: u64,
        /// Which structure it is (`manifest`, `B+tree node`, `version tree node`).
        what: &'static str,
        /// The magic number the format requires.
        expected: u32,
        /// The first four bytes, read big-endian.
        found: u32,
    },

    /// An OCDBT manifest or node whose bytes do not hash to the CRC-32C its footer records.
    #[error("{}: broken OCDBT store: CRC-32C mismatch in the {what} at offset {offset}: the footer records {expected:#010x}, the bytes hash to {found:#010x} (the file is corrupt)", .path.display())]
    OcdbtCrc {
        /// The file that holds the structure.
        path: PathBuf,
        /// Byte offset of the structure in the file.
        offset: u64,
        /// Which structure it is.
        what: &'static str,
        /// The CRC-32C the footer records.
        expected: u32,
        /// The CRC-32C of the bytes before the footer.
        found: u32,
    },

    /// An OCDBT structure that ends before one of its fields (`field`) does.
    #[error("{}: broken OCDBT store: the {what} at offset {offset} is truncated: {field} needs {expected} bytes, {found} remain", .path.display())]
    OcdbtTruncated {
        /// The file that holds the structure.
        path: PathBuf,
        /// Byte offset of the structure in the file.
        offset: u64,
        /// Which structure it is.
        what: &'static str,
        /// The field that runs past the end (in the decompressed body where the structure is compressed).
        field: &'static str,
        /// How many bytes the field needs.
        expected: u64,
        /// How many bytes remain.
        found: u64,
    },

    /// An OCDBT value (a size, a count, a height) past one of the reader's named limits.
    #[error("{}: refused OCDBT store: the {what} at offset {offset} has {limit_name} {found}, past the limit of {limit}", .path.display())]
    OcdbtLimit {
        /// The file that holds the structure.
        path: PathBuf,
        /// Byte offset of the structure in the file.
        offset: u64,
        /// Which structure it is.
        what: &'static str,
        /// Which limit (`encoded bytes`, `entries`, `key length`, `tree height`, ...).
        limit_name: &'static str,
        /// The limit.
        limit: u64,
        /// The value found.
        found: u64,
    },

    /// An OCDBT structure whose fields contradict the format.
    #[error("{}: broken OCDBT store: the {what} at offset {offset}: {detail}", .path.display())]
    Ocdbt {
        /// The file that holds the structure.
        path: PathBuf,
        /// Byte offset of the structure in the file.
        offset: u64,
        /// Which structure it is.
        what: &'static str,
        /// What is wrong, in words.
        detail: String,
    },

    /// An OCDBT data-file path that leaves the store's folder (`..`, absolute, a symlink out).
    #[error("{}: refused OCDBT data file `{data_file}`: {reason}", .path.display())]
    OcdbtPathEscape {
        /// The store's root folder.
        path: PathBuf,
        /// The data file's path as the store gives it (invalid UTF-8 replaced).
        data_file: String,
        /// Why it is refused, in words.
        reason: &'static str,
    },
}

impl Error {
    /// An I/O error about the file as a whole.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            tensor: String::new(),
            source,
        }
    }

    /// An I/O error while reading or writing one tensor.
    pub(crate) fn io_tensor(path: &Path, tensor: &str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            source,
        }
    }

    /// A truncation at `offset`: `expected` bytes wanted, `found` present.
    pub(crate) fn truncated(
        path: &Path,
        tensor: &str,
        offset: u64,
        expected: u64,
        found: u64,
    ) -> Error {
        Error::Truncated {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            offset,
            expected,
            found,
        }
    }

    /// A broken zip structure.
    pub(crate) fn zip(path: &Path, tensor: &str, detail: impl Into<String>) -> Error {
        Error::Zip {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            detail: detail.into(),
        }
    }

    /// An unsupported feature.
    pub(crate) fn unsupported(path: &Path, tensor: &str, detail: impl Into<String>) -> Error {
        Error::Unsupported {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            detail: detail.into(),
        }
    }

    /// A shape whose byte count overflows.
    pub(crate) fn shape_overflow(path: &Path, tensor: &str, shape: &[usize]) -> Error {
        Error::ShapeOverflow {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            shape: shape.iter().map(|&d| d as u64).collect(),
        }
    }
}
