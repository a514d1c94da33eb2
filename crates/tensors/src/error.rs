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
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    /// The operating system refused a read or write.
    #[error("{}{}: {source}", .path.display(), tensor_part(.tensor))]
    Io {
        path: PathBuf,
        tensor: String,
        #[source]
        source: std::io::Error,
    },

    /// The file is none of the formats this crate reads.
    #[error("{}: not a tensor file (expected .npy, .npz, .safetensors or a torch.save zip): {found}", .path.display())]
    NotATensorFile { path: PathBuf, found: String },

    /// The file ends before the data its own headers announce.
    #[error("{}{}: truncated: needs {expected} bytes at offset {offset}, found {found} (re-download or re-export the file)", .path.display(), tensor_part(.tensor))]
    Truncated {
        path: PathBuf,
        tensor: String,
        offset: u64,
        expected: u64,
        found: u64,
    },

    /// The zip container is broken (central directory, local header, compression).
    #[error("{}{}: broken zip archive: {detail}", .path.display(), tensor_part(.tensor))]
    Zip {
        path: PathBuf,
        tensor: String,
        detail: String,
    },

    /// A zip member whose bytes do not hash to the CRC-32 its directory entry records.
    #[error("{}{}: CRC-32 mismatch in zip member `{member}`: the directory records {expected:#010x}, the data hashes to {found:#010x} (the file is corrupt: re-download or re-export it)", .path.display(), tensor_part(.tensor))]
    Crc {
        path: PathBuf,
        tensor: String,
        member: String,
        expected: u32,
        found: u32,
    },

    /// An `.npy` header that cannot be parsed.
    #[error("{}{}: bad .npy header: {detail}", .path.display(), tensor_part(.tensor))]
    NpyHeader {
        path: PathBuf,
        tensor: String,
        detail: String,
    },

    /// A dtype this crate does not read.
    #[error("{}{}: unknown or unsupported dtype {descr:?} (supported: f64, f32, f16, bf16, i64, i32, i16, i8, u8, bool)", .path.display(), tensor_part(.tensor))]
    UnknownDType {
        path: PathBuf,
        tensor: String,
        descr: String,
    },

    /// The header's shape and dtype announce a different number of bytes than the file holds.
    #[error("{}{}: size mismatch: shape and dtype need {expected} bytes, the file holds {found}", .path.display(), tensor_part(.tensor))]
    SizeMismatch {
        path: PathBuf,
        tensor: String,
        expected: u64,
        found: u64,
    },

    /// A shape whose element or byte count does not fit in memory arithmetic.
    #[error("{}{}: shape {shape:?} overflows: its byte count does not fit in 64 bits", .path.display(), tensor_part(.tensor))]
    ShapeOverflow {
        path: PathBuf,
        tensor: String,
        shape: Vec<u64>,
    },

    /// A pickle names a global outside the allowlist; nothing was executed.
    #[error("{}: refused pickle global `{module}.{name}` at offset {offset}: only state-dict globals are allowed (as torch.load(weights_only=True)); nothing was executed", .path.display())]
    DisallowedGlobal {
        path: PathBuf,
        module: String,
        name: String,
        offset: u64,
    },

    /// A pickle stream this reader cannot follow (bad opcode, short stack, limits).
    #[error("{}: bad pickle at offset {offset}: {detail}", .path.display())]
    Pickle {
        path: PathBuf,
        offset: u64,
        detail: String,
    },

    /// A `.pt` archive lacks a record its pickle refers to.
    #[error("{}{}: missing record `{record}` in the torch archive", .path.display(), tensor_part(.tensor))]
    MissingRecord {
        path: PathBuf,
        tensor: String,
        record: String,
    },

    /// A safetensors header that cannot be parsed or validated.
    #[error("{}: bad safetensors header: {detail}", .path.display())]
    Safetensors { path: PathBuf, detail: String },

    /// A feature of a valid file that this crate does not support.
    #[error("{}{}: unsupported: {detail}", .path.display(), tensor_part(.tensor))]
    Unsupported {
        path: PathBuf,
        tensor: String,
        detail: String,
    },

    /// No end-of-central-directory record where one must be: the archive is truncated, or not a zip.
    #[error("{}: broken zip archive: no end-of-central-directory record in the last {searched} bytes (the file is truncated or not a zip)", .path.display())]
    ZipNoEndRecord { path: PathBuf, searched: u64 },

    /// An end record whose comment does not reach the end of the file: bytes follow the archive.
    #[error("{}: broken zip archive: the end record at offset {offset} is followed by {trailing} bytes its comment does not account for (data appended after the archive?)", .path.display())]
    ZipTrailingData {
        path: PathBuf,
        offset: u64,
        trailing: u64,
    },

    /// A zip structure (`what`) placed at an offset past the end of the file.
    #[error("{}{}: broken zip archive: the {what} at offset {offset} lies past the end of the file ({file_len} bytes)", .path.display(), member_part(.member))]
    ZipOffsetPastEnd {
        path: PathBuf,
        member: String,
        what: &'static str,
        offset: u64,
        file_len: u64,
    },

    /// A central directory that does not end where the end record (or zip64 end record) begins.
    #[error("{}: broken zip archive: the end record puts a {size}-byte central directory at offset {offset}, which does not end at the end record (offset {expected_end}): the directory offset points into the data", .path.display())]
    ZipDirectoryMisplaced {
        path: PathBuf,
        offset: u64,
        size: u64,
        expected_end: u64,
    },

    /// A zip header without its signature: a central-directory entry or a member's local header.
    #[error("{}{}: broken zip archive: expected a {record} signature at offset {offset}", .path.display(), member_part(.member))]
    ZipBadSignature {
        path: PathBuf,
        member: String,
        record: &'static str,
        offset: u64,
    },

    /// A zip header whose fields run past the structure that holds it.
    #[error("{}{}: broken zip archive: the {record} at offset {offset} needs {expected} bytes, {found} remain", .path.display(), member_part(.member))]
    ZipShortRecord {
        path: PathBuf,
        member: String,
        record: &'static str,
        offset: u64,
        expected: u64,
        found: u64,
    },

    /// The end record's entry count disagrees with the central directory it points to.
    #[error("{}: broken zip archive: the end record declares {declared} entries, the central directory holds {found}", .path.display())]
    ZipEntryCount {
        path: PathBuf,
        declared: u64,
        found: u64,
    },

    /// An archive spanning several disks (split zip).
    #[error("{}: unsupported: a multi-disk (split) zip archive (disk {disk}, directory on disk {directory_disk})", .path.display())]
    ZipMultiDisk {
        path: PathBuf,
        disk: u32,
        directory_disk: u32,
    },

    /// An encrypted zip member (traditional PKWARE encryption, or WinZip AES).
    #[error("{}: unsupported: zip member `{member}` is encrypted ({})", .path.display(), if *.aes { "WinZip AES" } else { "traditional PKWARE encryption" })]
    ZipEncrypted {
        path: PathBuf,
        member: String,
        aes: bool,
    },

    /// A zip member compressed with a method other than stored (0) or deflate (8).
    #[error("{}: unsupported: zip member `{member}` uses compression method {method} (only stored and deflate are read)", .path.display())]
    ZipCompression {
        path: PathBuf,
        member: String,
        method: u16,
    },

    /// A stored member whose compressed and uncompressed sizes differ.
    #[error("{}: broken zip archive: stored member `{member}` has compressed size {compressed} but size {size}", .path.display())]
    ZipStoredSizes {
        path: PathBuf,
        member: String,
        compressed: u64,
        size: u64,
    },

    /// Two central-directory entries with the same name.
    #[error("{}: broken zip archive: member `{member}` occurs twice in the central directory", .path.display())]
    ZipDuplicateMember { path: PathBuf, member: String },

    /// Two members whose byte ranges (local header through data) overlap, or a member that
    /// runs into the central directory: aliased data that would invent tensors.
    #[error("{}: broken zip archive: member `{member}` (bytes {start}..{end}) overlaps {other}", .path.display())]
    ZipOverlap {
        path: PathBuf,
        member: String,
        start: u64,
        end: u64,
        other: String,
    },

    /// A local header whose name differs from the central directory's entry that points at it.
    #[error("{}: broken zip archive: the central directory names member `{member}`, its local header at offset {offset} names `{local}`", .path.display())]
    ZipLocalName {
        path: PathBuf,
        member: String,
        local: String,
        offset: u64,
    },

    /// A member of an `.npz` that is not an `.npy` array: numpy would not load it as one, and
    /// nothing in an archive is skipped without a word.
    #[error("{}: zip member `{member}` is not an .npy array (it does not start with the \\x93NUMPY magic)", .path.display())]
    NpzNotAnArray { path: PathBuf, member: String },

    /// A torch archive with more than one `data.pkl` record.
    #[error("{}: broken torch archive: two pickle records, `{first}` and `{second}`", .path.display())]
    TwoPickles {
        path: PathBuf,
        first: String,
        second: String,
    },

    /// A pickle whose strings, bytes and tensor names add up to more than its budget, a
    /// multiple of the file's size: a memo or name bomb.
    #[error("{}: bad pickle at offset {offset}: it produces more than {budget} bytes of strings and tensor names (the budget for a {pickle_len}-byte pickle: a memo or name bomb)", .path.display())]
    PickleBudget {
        path: PathBuf,
        offset: u64,
        budget: u64,
        pickle_len: u64,
    },

    /// A tensor in a pickle under a key that cannot name it (neither a string nor an int).
    #[error("{}: bad pickle: a tensor under `{parent}` sits under a {key_kind} key, which cannot name it", .path.display())]
    PickleTensorKey {
        path: PathBuf,
        parent: String,
        key_kind: &'static str,
    },

    /// A key that occurs twice in a header (an `.npy` dict, a safetensors JSON object).
    #[error("{}{}: bad {format} header: key `{key}` occurs twice", .path.display(), tensor_part(.tensor))]
    DuplicateKey {
        path: PathBuf,
        tensor: String,
        format: &'static str,
        key: String,
    },

    /// Text after the closing brace of an `.npy` header dict (other than padding and the newline).
    #[error("{}{}: bad .npy header: text after the dict at byte {offset}", .path.display(), tensor_part(.tensor))]
    NpyTrailingText {
        path: PathBuf,
        tensor: String,
        offset: u64,
    },

    /// Reading the file's tensors would take more work or output than the file's size justifies.
    #[error("{}{}: refused: reading it would decode {needed} bytes, past the budget of {budget} for a {file_len}-byte file (aliased or expanded views of compressed data)", .path.display(), tensor_part(.tensor))]
    WorkBudget {
        path: PathBuf,
        tensor: String,
        needed: u64,
        budget: u64,
        file_len: u64,
    },

    /// A path that is not a regular file (a FIFO, a device, a directory, a socket).
    #[error("{}: not a regular file (it is {kind}): only regular files are read", .path.display())]
    NotARegularFile { path: PathBuf, kind: &'static str },

    /// A name asked for that the file does not hold.
    #[error("{}: no tensor named `{tensor}` in this file", .path.display())]
    UnknownTensor { path: PathBuf, tensor: String },

    /// The writer's target already exists and overwriting was not asked for.
    #[error("{}: already exists (pass --force to replace it)", .path.display())]
    Exists { path: PathBuf },

    /// The writer was given data that does not match what was announced.
    #[error("{}{}: writer misuse: expected {expected}, got {found}", .path.display(), tensor_part(.tensor))]
    Writer {
        path: PathBuf,
        tensor: String,
        expected: String,
        found: String,
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
