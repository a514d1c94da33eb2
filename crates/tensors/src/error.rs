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

/// Everything that can go wrong reading or writing a tensor file.
///
/// Every variant carries the file's path; `tensor` is the tensor's name, or empty
/// when the problem is with the file as a whole. Messages are one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
