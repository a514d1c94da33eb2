//! The names of the metadata keys vitconv records in every weights file it writes (`vitconv.*`), which
//! `inspect` and `verify` read back: one place for each name, so that a writer and its readers cannot drift.

/// The layout written (`timm`, `hf`, `open_clip`, `clip`).
pub const LAYOUT: &str = "vitconv.layout";
/// The source file's name.
pub const SOURCE: &str = "vitconv.source";
/// The declared configuration (JSON): sizes, semantics, input normalisation, dtype.
pub const CONFIG: &str = "vitconv.config";
/// What the source family said of the file, one sentence a line.
pub const SOURCE_NOTES: &str = "vitconv.source_notes";
/// What was mapped, folded or dropped, one sentence a line.
pub const NOTES: &str = "vitconv.notes";
/// Training state left out (JSON: how many tensors, under which roots).
pub const LEFT_OUT: &str = "vitconv.left_out";
/// vitconv's version.
pub const VERSION: &str = "vitconv.version";
/// The class names `--labels` gave (a JSON list).
pub const LABELS: &str = "vitconv.labels";
/// timm's `VisionTransformer` keyword arguments (JSON).
pub const TIMM_KWARGS: &str = "vitconv.timm_kwargs";
/// timm's `pretrained_cfg`: the preprocessing and class names (JSON).
pub const TIMM_PRETRAINED_CFG: &str = "vitconv.timm_pretrained_cfg";
/// A hybrid's ResNet stem as timm builds it (JSON).
pub const TIMM_BACKBONE: &str = "vitconv.timm_backbone";
/// The transformers class the folder's `config.json` names.
pub const HF_ARCHITECTURE: &str = "vitconv.hf_architecture";
/// open_clip's `model_cfg` (JSON).
pub const OPEN_CLIP_CONFIG: &str = "vitconv.open_clip_config";
/// OpenAI CLIP's `VisionTransformer` keyword arguments (JSON).
pub const CLIP_KWARGS: &str = "vitconv.clip_kwargs";
/// `false` where the conversion cannot be exact (OpenAI CLIP's QuickGELU).
pub const EXACT: &str = "vitconv.exact";
