//! The neutral model description that stands between source families and target layouts.
//!
//! A source module (`sources::vit_jax`, ...) reads a file's keys and shapes into a [`Model`]; a layout module
//! reads only the [`Model`], never a source's key names. Every parameter is a [`Param`]: a source tensor, an
//! optional index along a stacked leading axis (blocks stored as one `[depth, ...]` array), its stored dtype
//! and its logical shape. Sizes are read off the shapes once, by the source module, and summarised in
//! [`Arch`]; a layout that needs a size asks the [`Arch`], not a shape.

use std::collections::BTreeMap;

use vitconv_tensors::DType;

use crate::arch::Arch;

/// The most encoder blocks a source may declare. The model holds a record per block and tensor, so a header
/// that lies about the depth (a deflated stack of a million tiny blocks fits in kilobytes) is refused before
/// they are made; the deepest published ViT (ViT-e) has 56 blocks, far below it.
pub const MAX_DEPTH: usize = 1024;

/// Where one parameter's values are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The source tensor's name in the file.
    pub tensor: String,
    /// The slice along the tensor's leading (stacked) axis, for blocks stored as one `[depth, ...]` array.
    pub stack: Option<Stacked>,
    /// The stored element type.
    pub dtype: DType,
    /// The parameter's own shape: the slice's shape for a stacked tensor, else the tensor's.
    pub shape: Vec<usize>,
}

/// One slice of a tensor stacked along its leading axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stacked {
    /// Which slice.
    pub index: usize,
    /// How many slices the tensor holds (its leading dimension).
    pub count: usize,
}

impl Param {
    /// Slice `index` of a tensor stacked as `[count, ...shape]`.
    pub fn slice(
        tensor: impl Into<String>,
        dtype: DType,
        index: usize,
        count: usize,
        shape: &[usize],
    ) -> Param {
        Param {
            tensor: tensor.into(),
            stack: Some(Stacked { index, count }),
            dtype,
            shape: shape.to_vec(),
        }
    }

    /// A whole source tensor.
    pub fn whole(tensor: impl Into<String>, dtype: DType, shape: &[usize]) -> Param {
        Param {
            tensor: tensor.into(),
            stack: None,
            dtype,
            shape: shape.to_vec(),
        }
    }

    /// Elements of the parameter.
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }

    /// How a report names it: the tensor, with `[i]` for a slice of a stacked tensor.
    pub fn describe(&self) -> String {
        match self.stack {
            Some(s) => format!("{}[{}]", self.tensor, s.index),
            None => self.tensor.clone(),
        }
    }
}

/// A LayerNorm's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Norm {
    /// The scale (gamma).
    pub scale: Param,
    /// The bias (beta).
    pub bias: Param,
}

/// A dense layer: the kernel as flax stores it (`[in, out]`, or `[D, H, Dh]` / `[H, Dh, D]` for attention
/// projections) and its bias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dense {
    /// The kernel as stored: `[in, out]`, with the head axes kept apart for attention projections.
    pub kernel: Param,
    /// The bias.
    pub bias: Param,
}

/// One attention module: q, k, v kernels `[D, H, Dh]` with biases `[H, Dh]`, out kernel `[H, Dh, D]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attention {
    /// The query projection.
    pub query: Dense,
    /// The key projection.
    pub key: Dense,
    /// The value projection.
    pub value: Dense,
    /// The output projection.
    pub out: Dense,
}

/// The attention projections, in the order fused layouts concatenate the first three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    /// The query projection.
    Query,
    /// The key projection.
    Key,
    /// The value projection.
    Value,
    /// The output projection.
    Out,
}

impl Attention {
    /// The dense layer of projection `p`.
    pub fn proj(&self, p: Proj) -> &Dense {
        match p {
            Proj::Query => &self.query,
            Proj::Key => &self.key,
            Proj::Value => &self.value,
            Proj::Out => &self.out,
        }
    }
}

/// A pre-norm encoder block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The LayerNorm before attention.
    pub norm1: Norm,
    /// The self-attention.
    pub attn: Attention,
    /// The LayerNorm before the MLP.
    pub norm2: Norm,
    /// `[D, M]` then `[M, D]`, with the GELU between them.
    pub mlp: [Dense; 2],
}

impl Block {
    /// The block's sizes `(width, heads * head_dim, mlp)`, read off its own parameters so that one
    /// mapping serves towers of different widths.
    pub fn dims(&self) -> (usize, usize, usize) {
        let q = &self.attn.query.kernel.shape;
        let d = q.first().copied().unwrap_or(0);
        let hd = q
            .get(1..)
            .unwrap_or_default()
            .iter()
            .fold(1usize, |a, &x| a.saturating_mul(x));
        let m = self.mlp[0].kernel.shape.get(1).copied().unwrap_or(0);
        (d, hd, m)
    }

    /// Every parameter of the block.
    pub fn params(&self) -> [&Param; 16] {
        let a = &self.attn;
        [
            &self.norm1.scale,
            &self.norm1.bias,
            &a.query.kernel,
            &a.query.bias,
            &a.key.kernel,
            &a.key.bias,
            &a.value.kernel,
            &a.value.bias,
            &a.out.kernel,
            &a.out.bias,
            &self.norm2.scale,
            &self.norm2.bias,
            &self.mlp[0].kernel,
            &self.mlp[0].bias,
            &self.mlp[1].kernel,
            &self.mlp[1].bias,
        ]
    }
}

/// One bottleneck unit of a BiT ResNet stem: three weight-standardised convolutions (HWIO kernels) each
/// followed by a GroupNorm, and on a stage's first unit a projection shortcut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The 1x1, 3x3 and 1x1 weight-standardised convolutions.
    pub convs: [Param; 3],
    /// The GroupNorm after each convolution.
    pub norms: [Norm; 3],
    /// The projection shortcut and its GroupNorm, on the first unit of a stage.
    pub proj: Option<(Param, Norm)>,
}

/// A BiT ResNet stem in front of the patch embedding (vit_jax hybrids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stem {
    /// The 7x7 root convolution, HWIO.
    pub root: Param,
    /// The GroupNorm after the root convolution.
    pub root_norm: Norm,
    /// Units per stage.
    pub stages: Vec<Vec<Unit>>,
}

/// Where the position embedding comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PosEmbed {
    /// A stored `[1, rows, D]` table; `class_row` says whether its first row belongs to the class token.
    Table {
        /// The stored table.
        param: Param,
        /// Whether its first row belongs to the class token.
        class_row: bool,
    },
    /// big_vision's `posemb_sincos_2d`, computed for the output's grid (nothing is stored).
    Sincos2d,
    /// A stored `[rows, columns, D]` grid (SigLIP 2 NaFlex, big_vision `naflex_vit.py`) that the model itself
    /// resizes to each image's patch grid (bilinear, antialias, half-pixel centres) before picking each patch's
    /// row: it is written as stored, never resized by the conversion.
    Grid {
        /// The stored grid `[rows, columns, D]`.
        param: Param,
        /// Its rows and columns.
        grid: (usize, usize),
    },
}

/// How the encoder output becomes one vector per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pool {
    /// Token 0 (the class token).
    Token,
    /// The mean over all tokens after the final norm.
    Mean,
    /// Multihead attention pooling: a learned probe attends over the tokens after the final norm.
    Map(Box<MapHead>),
    /// No pooling: the output is every token after the final norm, with the head (where there is one)
    /// applied to each token on its own (big_vision `pool_type='none'`, PaliGemma's image tower).
    None,
}

/// big_vision's `MAPHead`: `probe` `[1, 1, D]` as the only query of a multihead attention over the tokens,
/// then `x + mlp(norm(x))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapHead {
    /// The learned query `[1, 1, D]`.
    pub probe: Param,
    /// The attention from the probe to the tokens.
    pub attn: Attention,
    /// The LayerNorm before the head's MLP.
    pub norm: Norm,
    /// `[D, M]` then `[M, D]`.
    pub mlp: [Dense; 2],
}

/// flax's `nn.LayerNorm` epsilon, which every family read here builds its norms with.
pub const FLAX_LN_EPS: f64 = 1e-6;

/// The activation of a tower's MLPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU with the tanh approximation (flax's `nn.gelu`, whose `approximate` defaults to true).
    GeluTanh,
    /// The exact (erf) GELU.
    GeluErf,
}

/// How a text tower pools its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextPool {
    /// The last position of the padded sequence (big_vision's `text_transformer.py`).
    Last,
}

/// What a tower computes that its weights do not say: choices the source's code makes, not its checkpoint.
/// Sources state them; layouts declare them to their libraries (or refuse where a library cannot hold them),
/// and the `vitconv.config` record carries them to `verify`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Semantics {
    /// The epsilon of every LayerNorm in the tower.
    pub norm_eps: f64,
    /// The MLPs' activation.
    pub activation: Activation,
    /// Whether each token attends only to the tokens before it.
    pub causal: bool,
}

// The epsilons are finite constants of the source families, never NaN, so equality is total.
impl Eq for Semantics {}

impl Semantics {
    /// The encoder of every flax family read here (vit_jax's `models_vit.py`, big_vision's `vit.py` and
    /// `text_transformer.py`): `nn.LayerNorm`'s epsilon, `nn.gelu`, no attention mask.
    pub const FLAX_ENCODER: Semantics = Semantics {
        norm_eps: FLAX_LN_EPS,
        activation: Activation::GeluTanh,
        causal: false,
    };
}

/// One tower of a model: the image tower of a ViT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tower {
    /// The sizes, read off the shapes once.
    pub arch: Arch,
    /// The ResNet stem of a hybrid, where there is one.
    pub stem: Option<Stem>,
    /// The patch embedding and its `[D]` bias: an HWIO `[p, p, in, D]` kernel for a convolution, a
    /// `[p * p * in, D]` kernel over patches flattened in (py, px, c) order for a linear embedding
    /// (`arch.patch_embed`).
    pub patch: Dense,
    /// `[1, 1, D]`, prepended to the patch tokens.
    pub class_token: Option<Param>,
    /// The position embedding.
    pub pos: PosEmbed,
    /// The encoder blocks, in order.
    pub blocks: Vec<Block>,
    /// The norm after the last block (flax `encoder_norm`).
    pub final_norm: Norm,
    /// How the tokens are pooled.
    pub pool: Pool,
    /// The `pre_logits` dense (followed by tanh).
    pub pre_logits: Option<Dense>,
    /// The classification head `[features, classes]`.
    pub head: Option<Dense>,
    /// What the tower computes beyond its weights.
    pub semantics: Semantics,
}

/// The sizes of a text tower, read off its shapes once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TextArch {
    /// Rows of the token embedding.
    pub vocab: usize,
    /// Rows of the position embedding: the longest token sequence the tower reads.
    pub context: usize,
    /// The tower's width.
    pub width: usize,
    /// Attention heads, from the `[D, H, Dh]` query kernel.
    pub heads: usize,
    /// The MLP's inner width.
    pub mlp: usize,
    /// Encoder blocks.
    pub depth: usize,
    /// Output width of the `head` dense, where there is one (the shared embedding size).
    pub embed: Option<usize>,
    /// Whether the blocks are stored stacked along a leading depth axis.
    pub stacked: bool,
}

/// A text tower (big_vision `text_transformer.py`): token embedding plus a learned position table, pre-norm
/// blocks, a final norm, pooling, an optional `head` dense; the mask and the pooling are the tower's
/// `semantics` and `pool`, as its source states them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextTower {
    /// The sizes.
    pub arch: TextArch,
    /// `[vocab, D]`.
    pub embedding: Param,
    /// `[1, context, D]`.
    pub pos: Param,
    /// The encoder blocks, in order.
    pub blocks: Vec<Block>,
    /// The norm after the last block (flax `encoder_norm`).
    pub final_norm: Norm,
    /// The projection `[D, embed]` after pooling.
    pub head: Option<Dense>,
    /// Which token's output is pooled.
    pub pool: TextPool,
    /// What the tower computes beyond its weights (its attention mask among them).
    pub semantics: Semantics,
}

/// The scalars of a two-tower image-text model: `logits = zimg . ztxt * exp(t) + b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logit {
    /// `t`, the log of the temperature, `[1]`.
    pub scale: Param,
    /// `b`, SigLIP's bias, `[1]`; LiT-style models have none.
    pub bias: Option<Param>,
}

/// The sizes of a Gemma language model, read off its shapes once (big_vision `models/ppp/gemma.py` names).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LanguageArch {
    /// `1` for Gemma, `2` for Gemma 2 (which adds a norm after attention and after the MLP of each layer).
    pub generation: u8,
    /// The model width (`embedder/input_embedding` columns).
    pub width: usize,
    /// Layers (the leading axis of the scan-stacked `layers/` tensors).
    pub depth: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (1: multi-query attention; `heads`: one fused `qkv_einsum`).
    pub kv_heads: usize,
    /// Width of each attention head.
    pub head_dim: usize,
    /// Inner width of the gated MLP.
    pub mlp: usize,
    /// Rows of the token embedding.
    pub vocab: usize,
}

impl LanguageArch {
    /// `Gemma` or `Gemma 2`.
    pub fn name(&self) -> String {
        gemma_name(self.generation)
    }
}

/// `Gemma` for generation 1, `Gemma 2` for 2 (PaliGemma and PaliGemma 2 are named after them).
pub fn gemma_name(generation: u8) -> String {
    match generation {
        1 => "Gemma".to_string(),
        g => format!("Gemma {g}"),
    }
}

/// `2,614,341,888 parameters, 5.23 GB`: a model's size as reports and refusals say it.
pub fn size_words(params: u64, bytes: u64) -> String {
    let digits = params.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && digits.len().saturating_sub(i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    // The largest decimal unit the size reaches, with two decimals, in integer arithmetic.
    let (unit, name) = [(1_000_000_000u64, "GB"), (1_000_000, "MB"), (1_000, "kB")]
        .into_iter()
        .find(|(u, _)| bytes >= *u)
        .unwrap_or((1, "bytes"));
    let hundredths = bytes
        .checked_div(unit.checked_div(100).unwrap_or(1).max(1))
        .unwrap_or(0);
    let size = if unit == 1 {
        format!("{bytes} bytes")
    } else {
        format!(
            "{}.{:02} {name}",
            hundredths.checked_div(100).unwrap_or(0),
            hundredths.checked_rem(100).unwrap_or(0)
        )
    };
    format!("{grouped} parameters, {size}")
}

/// A language model stored beside the image tower (PaliGemma's Gemma): described, never converted. Its
/// tensors are left out of every conversion, which the user must ask for (`--tower image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguageModel {
    /// The sizes.
    pub arch: LanguageArch,
    /// Every tensor of the language model.
    pub tensors: Vec<String>,
    /// Its parameters, all tensors together.
    pub params: u64,
    /// Its bytes as stored.
    pub bytes: u64,
}

/// A checkpoint as the converter understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// The source family's name (`vit_jax`).
    pub family: &'static str,
    /// What the source module recognised, for error messages (`vit_jax checkpoint under opt/target/`).
    pub recognised: String,
    /// The image tower.
    pub image: Tower,
    /// The text tower of a two-tower image-text model.
    pub text: Option<TextTower>,
    /// The logit scale and bias of a two-tower model.
    pub logit: Option<Logit>,
    /// The language model of a vision-language model (PaliGemma), which vitconv describes but does not convert.
    pub llm: Option<LanguageModel>,
    /// What the source module wants the report to say about the file itself (prefix, naming style, dtype).
    pub notes: Vec<String>,
    /// Every tensor of the file and its shape, for the check that a plan accounts for all of them.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Tensors of the file that are not part of the model (a training checkpoint's optimizer state), left
    /// out of every conversion and named in its notes.
    pub left_out: Vec<String>,
}
