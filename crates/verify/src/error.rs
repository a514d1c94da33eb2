//! The verify crate's one error type: everything that stops a comparison before it can judge.
//!
//! A finished comparison that finds the outputs apart is not an error: it is a
//! [`crate::Report`] whose `pass` is false. Every variant here but one means bad input
//! (exit 2 in the CLI): a file that cannot be read, a model that cannot be run, an option
//! that cannot be honoured, or two files that do not describe the same architecture;
//! [`Error::UnexpectedShape`] is a broken invariant of the forwards (a bug). Each variant
//! carries the path, option or value at fault and its message says what to give instead.
//!
//! Messages never repeat the text of their `#[source]`: a caller that shows the whole chain
//! (as `vitconv`'s `main` does) prints each cause once.

use std::path::PathBuf;

/// Why a verification could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The tensor-file layer refused the file (missing, truncated, disallowed pickle global...);
    /// its message names the file.
    #[error(transparent)]
    Tensors(#[from] vitconv_tensors::Error),

    /// A file the model needs is absent.
    #[error("{path}: not found")]
    NotFound {
        /// The file or directory that does not exist.
        path: PathBuf,
    },

    /// A side file (config.json, metadata JSON, an image) could not be read or parsed.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The file or directory that could not be read or parsed (a side file, an input, a weights file's metadata).
        path: PathBuf,
        /// What went wrong, in words (the I/O or parse error).
        reason: String,
    },

    /// The file's `vitconv.config` is not the typed record this build reads (a field unknown, missing or of
    /// another kind, or another record version).
    #[error("{}: {source}", path.display())]
    Record {
        /// The weights file whose metadata holds the record.
        path: PathBuf,
        /// The converter's account of the record, naming the field (boxed: the converter's errors are large).
        #[source]
        source: Box<vitconv_convert::Error>,
    },

    /// No source family of the converter's registry claims the source file.
    #[error("{}: not a checkpoint of any source family vitconv reads ({tensors} tensors); give the .npz, .bv, Orbax or msgpack file the model was trained or released as", path.display())]
    NotASource {
        /// The source file.
        path: PathBuf,
        /// How many tensors it lists.
        tensors: usize,
    },

    /// The conversion is one verify has no comparison for ([`crate::registry`]).
    #[error("{}: verify cannot compare a {family} source with its {layout} conversion (--tower {tower}): {why}", path.display())]
    NoVerifyPath {
        /// The source file.
        path: PathBuf,
        /// The source's family.
        family: &'static str,
        /// The conversion's layout.
        layout: &'static str,
        /// Which towers the conversion holds.
        tower: &'static str,
        /// What is missing, or the declared reason.
        why: Uncovered,
    },

    /// A tensor the forward needs is missing from the file.
    #[error("{path}: tensor {tensor:?} is missing ({why})")]
    MissingTensor {
        /// The weights file the tensor is missing from.
        path: PathBuf,
        /// The missing tensor's name in the file.
        tensor: String,
        /// What the forward needs the tensor for.
        why: String,
    },

    /// A tensor is there but its shape does not fit the architecture read so far.
    #[error("{path}: tensor {tensor:?} has shape {found:?}, expected {expected}")]
    BadShape {
        /// The weights file that holds the tensor.
        path: PathBuf,
        /// The tensor's name in the file.
        tensor: String,
        /// The shape the architecture calls for, in words (`[kh, kw, in, out]`, `[1] (one scalar)`).
        expected: String,
        /// The tensor's shape in the file.
        found: Vec<usize>,
    },

    /// The file is not a ViT checkpoint in the layout the forward reads.
    #[error("{path}: {reason}")]
    NotAModel {
        /// The file or folder that was to be run as a model.
        path: PathBuf,
        /// Why it is not a model the forward reads, in words.
        reason: String,
    },

    /// A big_vision file with a sincos2d position embedding stores nothing that gives its grid,
    /// and neither the caller nor the converted file's declared config said the resolution.
    #[error("{path}: the sincos2d position embedding is computed, not stored, so the file does not say its grid; give --image-size N")]
    ImageSizeNeeded {
        /// The big_vision source file that stores no grid.
        path: PathBuf,
    },

    /// The resolution given for a model does not split into whole patches.
    #[error("{path}: image size {image_size} is not a multiple of the patch size {patch_size}")]
    ImageSizeNotMultiple {
        /// The big_vision source file the resolution was given for.
        path: PathBuf,
        /// The resolution given, in pixels.
        image_size: usize,
        /// The model's patch side, in pixels.
        patch_size: usize,
    },

    /// The pixels handed to a forward do not give the token grid it runs at.
    #[error("{path}: the input gives a {found_h}x{found_w} token grid, the model runs at {expected}x{expected}")]
    InputGrid {
        /// The source file whose forward was handed the pixels.
        path: PathBuf,
        /// The side of the token grid the model runs at, in patches.
        expected: usize,
        /// Rows of patches the input gives.
        found_h: i64,
        /// Columns of patches the input gives.
        found_w: i64,
    },

    /// A declared setting (timm kwargs, config.json) has a value the forward cannot honour or
    /// that contradicts the file's keys.
    #[error("{path}: {key} is {found}, expected {expected}")]
    Declared {
        /// The file the setting is declared in or checked against (a `config.json`, or a weights file and its metadata).
        path: PathBuf,
        /// The setting, as the file names it (`num_attention_heads`, `timm kwarg global_pool`), or a tensor it rules out.
        key: String,
        /// What the forward can honour or the file's keys call for, in words.
        expected: String,
        /// The value declared (`present` for a tensor the setting rules out).
        found: String,
    },

    /// The token ids for a text tower do not fit it (shape, context length, vocabulary).
    #[error("{path}: text ids: expected {expected}, found {found}")]
    TextIds {
        /// The `.npy` the ids were read from, or the model file whose text tower refused them.
        path: PathBuf,
        /// What the text tower takes, in words.
        expected: String,
        /// What the ids are instead, in words.
        found: String,
    },

    /// The converted file and the source describe different models; there is nothing to compare.
    #[error("{converted} does not hold the architecture of {source_file}: {reason}")]
    ArchitectureMismatch {
        /// The source checkpoint.
        source_file: PathBuf,
        /// The converted file or folder.
        converted: PathBuf,
        /// Where the two models differ, in words.
        reason: String,
    },

    /// A `--device` that names no device kind verify runs on.
    #[error("--device {device}: expected auto, cpu, cuda or cuda:N")]
    UnknownDevice {
        /// The name given.
        device: String,
    },

    /// A CUDA `--device` that libtorch does not see.
    #[error("--device {device}: {}", cuda_unavailable(*index, *count))]
    CudaUnavailable {
        /// The name given (`cuda`, `cuda:N`).
        device: String,
        /// The CUDA device asked for (0 for `cuda`).
        index: usize,
        /// How many CUDA devices libtorch sees (0 without a GPU, a driver or a CUDA libtorch).
        count: usize,
    },

    /// The converted path cannot be the layout asked for (by `--layout` or the file's own metadata).
    #[error("{}: the {layout} layout does not fit: {holds}; give the layout it holds with --layout, or leave --layout out", path.display())]
    LayoutMismatch {
        /// The converted file or folder.
        path: PathBuf,
        /// The layout asked for.
        layout: &'static str,
        /// What the path is, and which layouts such a path holds.
        holds: &'static str,
    },

    /// An array given as input (`--input` pixels, `--expect` logits) with another shape than the run needs.
    #[error("{option} {}: the array has shape {found:?}, expected {expected}", path.display())]
    InputShape {
        /// The option that named the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// The shape the run needs, by meaning (`NHWC [batch, 224, 224, 3] ...`).
        expected: String,
        /// The array's shape in the file.
        found: Vec<usize>,
    },

    /// An `--images` directory without a single image in it.
    #[error("--images {}: no .png, .jpg or .jpeg files; give a directory of PNG or JPEG images", dir.display())]
    NoImages {
        /// The directory.
        dir: PathBuf,
    },

    /// The `--image-size` that `--images` are resized to is not the square the model runs at.
    #[error("{}", images_size(*width, *height, *model))]
    ImagesSize {
        /// The width asked for.
        width: usize,
        /// The height asked for.
        height: usize,
        /// The side of the square the converted model runs at.
        model: usize,
    },

    /// A count option (`--batch`, `--text-batch`) outside the range verify runs.
    #[error("{option} must be 1..={max}, got {value}")]
    CountOutOfRange {
        /// The option.
        option: &'static str,
        /// The count given.
        value: usize,
        /// The largest count allowed.
        max: usize,
    },

    /// An `--eos-id` that is not a token id of the text tower.
    #[error("--eos-id {eos_id}: the text tower's vocabulary is 0..{vocab}; give an id in it (big_vision's EOS is 1)")]
    EosIdOutOfVocab {
        /// The id given.
        eos_id: i64,
        /// The text tower's vocabulary size.
        vocab: usize,
    },

    /// An option that has nothing to act on in this comparison.
    #[error("{option} does not apply: {why}; leave {option} out")]
    NotApplicable {
        /// The option.
        option: &'static str,
        /// Why this comparison has nothing for it.
        why: &'static str,
    },

    /// A size computation overflowed: the sizes are too large for libtorch (i64 dimensions) or memory.
    #[error("{what}: {dims:?} overflows the sizes libtorch takes; give smaller inputs")]
    Overflow {
        /// What the sizes size.
        what: &'static str,
        /// The sizes that overflowed.
        dims: Vec<usize>,
    },

    /// libtorch handed back a tensor of a shape the forward's own operations cannot produce.
    #[error("{what}: libtorch returned shape {found:?}, expected {expected} (a bug in vitconv; please report it)")]
    UnexpectedShape {
        /// The tensor, by its place in the forward.
        what: &'static str,
        /// The shape the forward expects, by meaning (`[B, N, D]`).
        expected: &'static str,
        /// The shape libtorch returned.
        found: Vec<i64>,
    },

    /// libtorch refused an operation (out of memory, a device that is not there...).
    #[error("libtorch refused an operation")]
    Torch(#[from] tch::TchError),
}

/// What [`Error::CudaUnavailable`] says about the devices there are.
fn cuda_unavailable(index: usize, count: usize) -> String {
    match count {
        0 => "libtorch sees no CUDA device (no GPU, no driver, or a CPU-only libtorch); use --device cpu".into(),
        n => format!(
            "libtorch sees {n} CUDA device(s), cuda:0 to cuda:{}, not cuda:{index}; give one of them",
            n - 1
        ),
    }
}

/// What [`Error::ImagesSize`] says.
fn images_size(width: usize, height: usize, model: usize) -> String {
    if width == height {
        format!("--image-size {width}: the model's position embedding is for {model}x{model} inputs; give --image-size {model}, or convert with --image-size {width} to run at {width}")
    } else {
        format!("--image-size {width}x{height} is not square: the models take square {model}x{model} inputs; give --image-size {model}")
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a conversion has no verify path ([`Error::NoVerifyPath`]), as the registry (`crate::registry`) finds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Uncovered {
    /// The family has no reference entry.
    #[error("the family has no verify reference: add its entry to REFERENCES in crates/verify/src/registry.rs")]
    NoReference,
    /// The family's entry has no route for the towers the conversion holds.
    #[error("the family's verify entry has no route for these towers: give REFERENCES in crates/verify/src/registry.rs one, or declare the pair in GAPS with the reason")]
    NoRoute,
    /// The layout has no target entry, or its entry does not run the route.
    #[error("the layout has no target for {route}: add one and list the route in TARGETS in crates/verify/src/registry.rs, or declare the pair in GAPS with the reason")]
    NoTarget {
        /// The route, in words.
        route: &'static str,
    },
    /// The pair is declared unverifiable, for this reason.
    #[error("{0}")]
    Declared(&'static str),
}
