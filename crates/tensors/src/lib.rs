//! Reads and writes tensor files (`.npy`/`.npz`, `.safetensors`, PyTorch `.pt`) safely and lazily; knows nothing of any model.
//!
//! The public surface is deliberately small:
//! - [`TensorFile::open`] reads a file's directory (names, dtypes, shapes) without
//!   loading tensor data; [`TensorFile::read`] returns one tensor's bytes on demand,
//!   little-endian and in C (row-major) order whatever the file stored.
//! - [`Writer`] writes `.safetensors` or `.pt` one tensor at a time into a temporary
//!   file beside the target and renames it into place only in [`Writer::finish`].

mod dtype;
mod error;

pub use dtype::DType;
pub use error::{Error, Result};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
        self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
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
