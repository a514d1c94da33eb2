//! The arguments of `vitconv verify`, shared by the `vitconv` executable (which parses them for `--help` and
//! hands them on) and `vitconv-verify` (which runs them on libtorch).

use std::path::PathBuf;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("inputs").args(["input", "images"])))]
pub struct VerifyArgs {
    /// The source checkpoint (.npz of google-research/vision_transformer or big_vision, a .bv workdir, an
    /// Orbax step or a flax msgpack file).
    pub source: PathBuf,
    /// The converted file (.pt, .safetensors) or, for hf, its directory.
    pub converted: PathBuf,
    /// The converted layout: timm, hf, open_clip or clip (default: from the file's metadata or config).
    #[arg(long)]
    pub layout: Option<String>,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision of the converted model's forward: f32, bf16 or f16 (the reference always runs in f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Number of random images (uniform in [-1, 1]).
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Seed of the random images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// NHWC float .npy in [-1, 1] (like the golden input.npy) instead of random images.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// A directory of PNG/JPEG images, each squashed to the model's size as big_vision and vit_jax resize
    /// (bilinear, no antialiasing); the report says how far the loaders' antialiased resize would move them.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// The model's resolution, N (or WxH with W = H). A big_vision sincos2d source stores
    /// nothing that gives its grid: this says it (default: the converted file's declared
    /// image_size). With --images, also the size the images are resized to.
    #[arg(long)]
    pub image_size: Option<String>,
    /// Logits produced elsewhere (e.g. by the original JAX code) to hold the reference against.
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Largest allowed max-abs difference, relative to max(1, max |reference|)
    /// (default 1e-4 for f32, 1e-5 for f32 two-tower comparisons, 5e-2 bf16, 1e-2 f16; the clip
    /// layout is judged only when given).
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// Two-tower sources: token ids, an int32/int64 .npy [texts, context] (like the golden
    /// text.npy). Without it, --text-batch random texts from --seed: random content ids, then
    /// --eos-id padding to the context (the last id is always EOS, and text 0 is half padding, so
    /// the first EOS is not the last position).
    #[arg(long)]
    pub text_ids: Option<PathBuf>,
    /// Two-tower sources: number of random texts.
    #[arg(long, default_value_t = 3)]
    pub text_batch: usize,
    /// Two-tower sources: the EOS id random texts are padded with (default 1, big_vision's).
    #[arg(long, default_value_t = 1)]
    pub eos_id: i64,
    /// SigLIP 2 NaFlex sources: the most patches per image; each image is resized to its own patch
    /// grid as big_vision's resize_to_sequence(P, N) does, then padded to N (default: the source's
    /// position grid G*G, 256 for the released models).
    #[arg(long)]
    pub max_patches: Option<usize>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}
