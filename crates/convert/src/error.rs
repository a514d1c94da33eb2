//! The convert crate's one error type: every variant names the tensor (or option) at fault and, where it can, the fix.

use std::path::PathBuf;

/// Everything that can go wrong while recognising a checkpoint or converting it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the source or writing the output failed in the tensor-file layer (its message names the file).
    #[error(transparent)]
    Tensors(#[from] vitconv_tensors::Error),

    /// The keys do not form a checkpoint family vitconv knows.
    #[error("not a recognised ViT checkpoint: {recognised}; {missing}")]
    Unrecognised { recognised: String, missing: String },

    /// A tensor is present but its shape contradicts the rest of the checkpoint.
    #[error("tensor {name}: expected shape {expected}, found {found:?} ({why})")]
    Shape {
        name: String,
        expected: String,
        found: Vec<usize>,
        why: String,
    },

    /// The checkpoint was recognised, but its parts disagree with each other.
    #[error("{recognised}: {problem}")]
    Inconsistent { recognised: String, problem: String },

    /// A tensor the mapping would not use; vitconv maps every tensor or refuses.
    #[error("tensor {name} {shape:?} is not part of a {recognised} checkpoint; vitconv converts every tensor or refuses, so remove it or report the layout")]
    Unmapped {
        name: String,
        shape: Vec<usize>,
        recognised: String,
    },

    /// A tensor holds a non-float type where weights are expected.
    #[error("tensor {name}: dtype {dtype} is not a floating-point type")]
    NotFloat { name: String, dtype: String },

    /// The chosen layout has no exact place for part of the source.
    #[error("--layout {layout} cannot hold {what}: {why}")]
    Refused {
        layout: &'static str,
        what: String,
        why: String,
    },

    /// An option value that cannot be honoured for this source.
    #[error("{option}: {why}")]
    BadOption { option: &'static str, why: String },

    /// The output exists and `--force` was not given.
    #[error("{path}: output exists; pass --force to overwrite it")]
    Exists { path: PathBuf },

    /// A filesystem error outside the tensor files (hf directory, JSON side files).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A size computation overflowed: the shapes are too large to be real.
    #[error("tensor {name}: size overflows ({what})")]
    Overflow { name: String, what: &'static str },

    /// The worker computing tensors stopped without an error of its own (it panicked): a bug in vitconv.
    #[error("tensor {name}: the conversion worker stopped unexpectedly (a bug in vitconv; please report it)")]
    Worker { name: String },

    /// The source returned a different number of values than its shape announced.
    #[error("tensor {name}: read {found} values, its shape {shape:?} holds {expected}")]
    Length {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
