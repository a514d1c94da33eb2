//! The verify crate's one error type: everything that stops a comparison before it can judge.
//!
//! A finished comparison that finds the outputs apart is not an error: it is a
//! [`crate::Report`] whose `pass` is false. Every variant here means bad input
//! (exit 2 in the CLI): a file that cannot be read, a model that cannot be run,
//! or two files that do not describe the same architecture.

use std::path::PathBuf;

/// Why a verification could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tensor-file layer refused the file (missing, truncated, disallowed pickle global...).
    #[error("{0}")]
    Tensors(#[from] vitconv_tensors::Error),

    /// A file the model needs is absent.
    #[error("{path}: not found")]
    NotFound { path: PathBuf },

    /// A side file (config.json, metadata JSON, an image) could not be read or parsed.
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },

    /// A tensor the forward needs is missing from the file.
    #[error("{path}: tensor {tensor:?} is missing ({why})")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        why: String,
    },

    /// A tensor is there but its shape does not fit the architecture read so far.
    #[error("{path}: tensor {tensor:?} has shape {found:?}, expected {expected}")]
    BadShape {
        path: PathBuf,
        tensor: String,
        expected: String,
        found: Vec<usize>,
    },

    /// The file is not a ViT checkpoint in the layout the forward reads.
    #[error("{path}: {reason}")]
    NotAModel { path: PathBuf, reason: String },

    /// A big_vision file with a sincos2d position embedding stores nothing that gives its grid,
    /// and neither the caller nor the converted file's declared config said the resolution.
    #[error("{path}: the sincos2d position embedding is computed, not stored, so the file does not say its grid; give --image-size N")]
    ImageSizeNeeded { path: PathBuf },

    /// The resolution given for a model does not split into whole patches.
    #[error("{path}: image size {image_size} is not a multiple of the patch size {patch_size}")]
    ImageSizeNotMultiple {
        path: PathBuf,
        image_size: usize,
        patch_size: usize,
    },

    /// The pixels handed to a forward do not give the token grid it runs at.
    #[error("{path}: the input gives a {found_h}x{found_w} token grid, the model runs at {expected}x{expected}")]
    InputGrid {
        path: PathBuf,
        expected: usize,
        found_h: i64,
        found_w: i64,
    },

    /// A declared setting (timm kwargs, config.json) has a value the forward cannot honour or
    /// that contradicts the file's keys.
    #[error("{path}: {key} is {found}, expected {expected}")]
    Declared {
        path: PathBuf,
        key: String,
        expected: String,
        found: String,
    },

    /// The token ids for a text tower do not fit it (shape, context length, vocabulary).
    #[error("{path}: text ids: expected {expected}, found {found}")]
    TextIds {
        path: PathBuf,
        expected: String,
        found: String,
    },

    /// The converted file and the source describe different models; there is nothing to compare.
    #[error("{converted} does not hold the architecture of {source_file}: {reason}")]
    ArchitectureMismatch {
        source_file: PathBuf,
        converted: PathBuf,
        reason: String,
    },

    /// A user request that cannot be honoured (a device, dtype, size or input file).
    #[error("{0}")]
    BadRequest(String),

    /// libtorch refused an operation (out of memory, a device that is not there...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
