//! The big_vision reference forward: a google-research/big_vision ViT (or one image tower of a two-tower model) run straight from its `.npz` keys.
//!
//! Written from `big_vision/models/vit.py` as the golden data's README spells it out,
//! never from the converter's mapping:
//!
//! - keys under a `params/` root or none; a training checkpoint's `opt/...` and
//!   `chrono/...` entries are optimizer state and step timers, not weights, and are
//!   left out (counted in [`BigVision::notes`]); a tower prefix (`img/` for SigLIP's
//!   image tower) can be put after the root;
//! - the patch embedding `embedding` (HWIO kernel, VALID, stride = patch), tokens in
//!   row-major (y, x) order;
//! - the position embedding is added to the patch tokens BEFORE the class token `cls`
//!   (when there is one) is concatenated in front, so the class token gets none; it is
//!   either learned (`pos_embedding` at the tower's top level, `[1, h*w, D]`) or
//!   `posemb_sincos_2d` (nothing stored: [`sincos2d`], which needs the grid from the caller);
//! - Linen block names `LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`,
//!   `MlpBlock_0/Dense_{0,1}`, blocks unrolled (`Transformer/encoderblock_{i}`) or stacked
//!   along a leading depth axis (`Transformer/encoderblock`, the scan format: block i is
//!   slice i); pre-norm blocks, tanh GELU, LayerNorm eps 1e-6, attention scale 1/sqrt(Dh);
//! - `Transformer/encoder_norm` on every token, then the pool: `tok` token 0, `gap` the
//!   mean, `map` the `MAPHead_0` (a learned `probe` `[1, 1, D]` is the only query of a
//!   multihead attention over all tokens, then `x + MlpBlock_0(LayerNorm_0(x))`, the
//!   probe's row taken), `0` token 0 of a model without a class token;
//! - `pre_logits` dense + tanh where the file has one, then `head` where it has one.
//!
//! Every size is read from the shapes. The encoder's tensor names come from the converter's
//! flax tree reader (`vitconv_convert::sources::flax_tree`, which knows no target); the flax
//! modules here (block, encoder, MAP head, patch embedding, `pre_logits` and head) also run the
//! vision_transformer reference, whose pre-Linen names they take from that reader too.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};
use vitconv_convert::model::Proj;
use vitconv_convert::sources::flax_tree::{
    BlockNorm, EncoderTree, Naming, Variants, BIG_VISION, IMAGE_ENCODER,
};
use vitconv_tensors::TensorFile;

use super::{
    isqrt, zoom_rows, Classifier, Family, PosEmb, RefOutputs, SourceArch, FLAX_LAYER_NORM_EPS,
};
use crate::error::{Error, Result};
use crate::ops::{self, Gelu};
use crate::params::{dim, Params};

/// `posemb_sincos_2d`'s default temperature.
const SINCOS_TEMPERATURE: f64 = 10_000.0;

/// Top-level prefixes of a big_vision training checkpoint that hold training state, not weights.
const TRAINING_STATE: [&str; 2] = ["opt/", "chrono/"];

/// The tower prefix of the image model in a file: empty for a plain ViT, `img/` for a two-tower
/// model (SigLIP, LiT) whose root holds no `embedding/kernel` but whose `img/` does.
pub fn image_tower(file: &TensorFile) -> &'static str {
    let root = root_of(file);
    let has = |name: &str| file.get(&format!("{root}{name}")).is_some();
    if !has("embedding/kernel") && has("img/embedding/kernel") {
        "img/"
    } else {
        ""
    }
}

/// `params/` when the file's weights sit under that root, else empty.
pub(crate) fn root_of(file: &TensorFile) -> &'static str {
    if file.tensors().iter().any(|t| t.name.starts_with("params/")) {
        "params/"
    } else {
        ""
    }
}

/// What the caller decides for a big_vision model.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The resolution to read a sincos2d model at (its grid is stored nowhere).
    pub image_size: Option<usize>,
    /// The pool, where the keys cannot say it: `Classifier::First` (`pool_type='0'`) looks
    /// exactly like `gap` (no class token, no MAP head), which is what the keys give.
    pub pool: Option<Classifier>,
}

/// A big_vision image model, ready to run.
pub struct BigVision {
    params: Params,
    arch: SourceArch,
    /// Where the encoder's tensors live.
    tree: EncoderTree,
    /// The MAP head's sizes, when the model pools with one.
    map: Option<MapSizes>,
    notes: Vec<String>,
}

/// `(heads, head_dim, mlp)` of a MAP head.
pub(crate) type MapSizes = (usize, usize, usize);

/// The module holding big_vision's `MAPHead`.
const MAP_HEAD: &str = "MAPHead_0/";

/// The modules inside `MAPHead_0` are Linen's, named as in an encoder block (its one LayerNorm is `LayerNorm_0`).
const MAP_NAMING: Naming = Naming::Linen;

impl BigVision {
    /// Reads the architecture of an opened big_vision checkpoint from its shapes; `tower` is put
    /// after the root (`img/` for a two-tower model's image tower, or empty).
    pub fn from_file(
        file: TensorFile,
        device: Device,
        tower: &str,
        opts: &Options,
    ) -> Result<BigVision> {
        let root = root_of(&file);
        let mut left_out: BTreeMap<&str, usize> = BTreeMap::new();
        for t in file.tensors() {
            if let Some(pre) = TRAINING_STATE.iter().find(|p| t.name.starts_with(**p)) {
                *left_out.entry(pre).or_default() += 1;
            }
        }
        let mut notes = Vec::new();
        if opts.pool == Some(Classifier::None) {
            notes.push(format!(
                "the source is a PaliGemma model: its image tower {tower} is the model run, with no pooling and the head on every token (pool_type 'none'); the language model is not part of it"
            ));
        } else if !tower.is_empty() {
            notes.push(format!(
                "the source is a multi-tower model: its image tower {tower} is the model run; the other towers are not part of it"
            ));
        }
        if !left_out.is_empty() {
            let parts: Vec<String> = left_out
                .iter()
                .map(|(pre, n)| format!("{n} under {pre}"))
                .collect();
            notes.push(format!(
                "the source is a training checkpoint: its training state ({}) is not weights and was left out",
                parts.join(", ")
            ));
        }
        let params = Params::new(file, &format!("{root}{tower}"), device, Kind::Float);
        let (arch, tree, map) = read_arch(&params, opts)?;
        if arch.posemb == PosEmb::Sincos2d {
            notes.push(format!(
                "the source's sincos2d position embedding is computed for {0}x{0} px ({1}x{1} tokens), the resolution given",
                arch.image_size, arch.grid
            ));
        }
        Ok(BigVision {
            params,
            arch,
            tree,
            map,
            notes,
        })
    }

    /// The architecture read from the tower's shapes.
    pub fn arch(&self) -> &SourceArch {
        &self.arch
    }

    /// The source file the tower was read from.
    pub fn path(&self) -> &Path {
        self.params.path()
    }

    /// What was read or left out, one sentence each.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Runs the model on NHWC pixels in [-1, 1] at a `grid` x `grid` token grid (the source's own,
    /// or another: a sincos2d embedding is computed for it, a learned table is resized the
    /// vit_jax way, scipy zoom order 1).
    pub fn forward(&self, nhwc: &Tensor, grid: usize) -> Result<RefOutputs> {
        let a = &self.arch;
        let p = &self.params;
        let x = nhwc
            .f_to_kind(Kind::Float)?
            .f_to_device(p.device())?
            .f_permute([0, 3, 1, 2])?;
        let mut x = flax_patch_embed(p, &x, a, grid)?;
        x = x.f_add(&self.pos_embedding(grid)?)?;
        if a.classifier == Classifier::Token {
            x = prepend_class_token(p, &x, a.hidden)?;
        }
        let tokens = flax_encoder(p, &self.tree, a.depth, Sizes::of(a), &x, None)?;
        let pooled = match a.classifier {
            Classifier::Token | Classifier::First => tokens.f_select(1, 0)?,
            Classifier::Gap => tokens.f_mean_dim(1, false, Kind::Float)?,
            Classifier::Map => self.map_head(&tokens)?,
            // No pooling: the head (below) applies to every token.
            Classifier::None => tokens.shallow_clone(),
        };
        let (features, logits) = flax_head(p, &pooled, a)?;
        Ok(RefOutputs {
            tokens,
            pooled,
            features,
            logits,
        })
    }

    /// The position embedding of the patch tokens for a `grid` x `grid` run, `[1, grid*grid, D]`.
    fn pos_embedding(&self, grid: usize) -> Result<Tensor> {
        let a = &self.arch;
        match a.posemb {
            PosEmb::Sincos2d => {
                let values = sincos2d(grid, grid, a.hidden);
                let cells = dim(grid.saturating_mul(grid))?;
                Ok(Tensor::f_from_slice(&values)?
                    .f_reshape([1, cells, dim(a.hidden)?])?
                    .f_to_device(self.params.device())?)
            }
            PosEmb::Learned => {
                let cells = a.grid.saturating_mul(a.grid);
                let pos = self.params.load("pos_embedding", &[1, cells, a.hidden])?;
                if grid == a.grid {
                    Ok(pos)
                } else {
                    zoom_rows(&pos, dim(a.grid)?, dim(grid)?, dim(a.hidden)?)
                }
            }
        }
    }

    /// `MAPHead`: the probe attends over all tokens, then `x + MlpBlock_0(LayerNorm_0(x))`; the
    /// probe's row is the pooled vector.
    fn map_head(&self, tokens: &Tensor) -> Result<Tensor> {
        let a = &self.arch;
        let map = self.map.unwrap_or((a.heads, a.head_dim, a.mlp));
        flax_map_head(&self.params, a.hidden, map, tokens, None)
    }
}

/// The patch embedding of NCHW pixels `x` in a ViT of architecture `a`: a VALID convolution with stride =
/// kernel, HWIO kernel `embedding/kernel`, giving a `grid` x `grid` token grid as `[B, grid*grid, D]`, tokens
/// in flax's NHWC reshape order (rows, then columns).
pub(crate) fn flax_patch_embed(
    p: &Params,
    x: &Tensor,
    a: &SourceArch,
    grid: usize,
) -> Result<Tensor> {
    let kernel = p.load(
        "embedding/kernel",
        &[a.patch_size, a.patch_size, a.embed_in, a.hidden],
    )?;
    let weight = kernel.f_permute([3, 2, 0, 1])?.f_contiguous()?;
    let bias = p.load("embedding/bias", &[a.hidden])?;
    let y = ops::conv2d(x, &weight, Some(&bias), dim(a.patch_size)?, 0)?;
    let size = y.size();
    let (gh, gw) = match size.as_slice() {
        [_, _, gh, gw] => (*gh, *gw),
        other => {
            return Err(Error::UnexpectedShape {
                what: "the patch embedding's output",
                expected: "[B, D, h, w]",
                found: other.to_vec(),
            })
        }
    };
    if gh != dim(grid)? || gw != dim(grid)? {
        return Err(Error::InputGrid {
            path: p.path().to_path_buf(),
            expected: grid,
            found_h: gh,
            found_w: gw,
        });
    }
    Ok(y.f_flatten(2, 3)?.f_transpose(1, 2)?)
}

/// The `[patch, in, hidden]` of a ViT's HWIO patch kernel `embedding/kernel` `[p, p, in, D]`; `missing` is the
/// reason a file without one is no model of the family, `bad` builds the shape error.
pub(crate) fn conv_patch_sizes(
    p: &Params,
    missing: &str,
    bad: &dyn Fn(&str, String, &[usize]) -> Error,
) -> Result<[usize; 3]> {
    let kernel = "embedding/kernel";
    match p.shape(kernel) {
        Some([ph, pw, cin, d]) if ph == pw => Ok([*ph, *cin, *d]),
        Some(other) => Err(bad(kernel, "[p, p, in, D] (square patches)".into(), other)),
        None => Err(Error::NotAModel {
            path: p.path().to_path_buf(),
            reason: missing.to_string(),
        }),
    }
}

/// `[B, N, D]` tokens `x` with the class token `cls` of width `d` put in front of every row.
pub(crate) fn prepend_class_token(p: &Params, x: &Tensor, d: usize) -> Result<Tensor> {
    let b = x.size().first().copied().unwrap_or(0);
    let cls = p
        .load("cls", &[1, 1, d])?
        .f_expand([b, 1, dim(d)?], false)?;
    Ok(Tensor::f_cat(&[cls, x.shallow_clone()], 1)?)
}

/// An encoder's sizes as its block tensors give them, and where its tensors live.
pub(crate) struct EncoderSizes {
    /// The encoder's names: its naming, and whether its blocks are stacked along a leading depth axis.
    pub tree: EncoderTree,
    pub depth: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mlp: usize,
}

/// Reads the sizes of the encoder `encoder` (`Transformer/` in a ViT, `Encoder_0/` in a text tower) of width
/// `width` off its first block's attention and MLP, in whichever of `variants` the file uses (the names and
/// variants are the shared flax tree reader's; the sizes are read here); `which` names the tower in messages
/// (`""` or `"text "`), `bad` builds the shape error.
pub(crate) fn encoder_sizes(
    p: &Params,
    encoder: &'static str,
    variants: Variants,
    width: usize,
    which: &str,
    bad: &dyn Fn(&str, String, &[usize]) -> Error,
) -> Result<EncoderSizes> {
    let tree = EncoderTree::detect("", encoder, variants, |k| p.has(k));
    let q = tree.attn(0, Proj::Query, "kernel");
    let m = tree.mlp(0, 0, "kernel");
    let (depth, heads, head_dim, mlp) = if tree.stacked() {
        let (depth, heads, head_dim) = match p.require_shape(&q, "stacked attention")? {
            [l, d, h, dh] if *d == width => (*l, *h, *dh),
            other => return Err(bad(&q, format!("[depth, {width}, heads, head_dim]"), other)),
        };
        let mlp = match p.require_shape(&m, "stacked MLP")? {
            [l, d, m] if *l == depth && *d == width => *m,
            other => return Err(bad(&m, format!("[{depth}, {width}, mlp]"), other)),
        };
        (depth, heads, head_dim, mlp)
    } else {
        let (heads, head_dim) =
            match p.require_shape(&q, &format!("attention of {which}block 0"))? {
                [d, h, dh] if *d == width => (*h, *dh),
                other => return Err(bad(&q, format!("[{width}, heads, head_dim]"), other)),
            };
        let mlp = match p.require_shape(&m, &format!("MLP of {which}block 0"))? {
            [d, m] if *d == width => *m,
            other => return Err(bad(&m, format!("[{width}, mlp]"), other)),
        };
        let depth = tree.count_unrolled(usize::MAX, |k| p.has(k));
        (depth, heads, head_dim, mlp)
    };
    Ok(EncoderSizes {
        tree,
        depth,
        heads,
        head_dim,
        mlp,
    })
}

/// Loads `rel` of block `i` of the encoder `tree` of `depth` blocks: slice i of the stacked tensor in the scan
/// format, else block i's own.
pub(crate) fn load_block(
    p: &Params,
    tree: &EncoderTree,
    depth: usize,
    i: usize,
    rel: &str,
    shape: &[usize],
) -> Result<Tensor> {
    let name = tree.block(i, rel);
    if tree.stacked() {
        let mut full = Vec::with_capacity(shape.len().saturating_add(1));
        full.push(depth);
        full.extend_from_slice(shape);
        Ok(p.load(&name, &full)?.f_select(0, dim(i)?)?)
    } else {
        p.load(&name, shape)
    }
}

/// One site's parameters: a name relative to the site (a block, the MAP head, a text block) and the
/// shape it must have. The flax modules below read their weights through it, so the image tower, the MAP head
/// and the text tower share one implementation of each.
pub(crate) type Load<'a> = dyn Fn(&str, &[usize]) -> Result<Tensor> + 'a;

/// The sizes of one flax attention + MLP site.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub d: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mlp: usize,
}

impl Sizes {
    /// The sizes of an image tower's encoder blocks.
    pub fn of(a: &SourceArch) -> Sizes {
        Sizes {
            d: a.hidden,
            heads: a.heads,
            head_dim: a.head_dim,
            mlp: a.mlp,
        }
    }
}

/// flax `MultiHeadDotProductAttention` at one site, its modules named as `naming` says, `[d, heads, head_dim]`:
/// `[D, H, Dh]` query/key/value kernels with `[H, Dh]` biases, the query from `q_in` and keys and values from
/// `kv_in`, the query divided by sqrt(Dh), softmax over the keys `mask` lets through (all without one; see
/// [`ops::attention_explicit_masked`]), `[H, Dh, D]` out kernel.
pub(crate) fn flax_attention(
    load: &Load<'_>,
    naming: Naming,
    [d, h, dh]: [usize; 3],
    q_in: &Tensor,
    kv_in: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let inner = dim(h.saturating_mul(dh))?;
    let batch_tokens = |x: &Tensor| match x.size().as_slice() {
        [b, t, _] => (*b, *t),
        _ => (0, 0),
    };
    let project = |x: &Tensor, which: Proj| -> Result<Tensor> {
        let (b, t) = batch_tokens(x);
        let kernel =
            load(&naming.attn(which, "kernel"), &[d, h, dh])?.f_reshape([dim(d)?, inner])?;
        let bias = load(&naming.attn(which, "bias"), &[h, dh])?.f_reshape([inner])?;
        Ok(ops::dense_in_out(x, &kernel, Some(&bias))?
            .f_reshape([b, t, dim(h)?, dim(dh)?])?
            .f_transpose(1, 2)?)
    };
    let q = project(q_in, Proj::Query)?;
    let k = project(kv_in, Proj::Key)?;
    let v = project(kv_in, Proj::Value)?;
    let (b, t) = batch_tokens(q_in);
    let o = ops::attention_explicit_masked(&q, &k, &v, mask)?
        .f_transpose(1, 2)?
        .f_reshape([b, t, inner])?;
    let out = load(&naming.attn(Proj::Out, "kernel"), &[h, dh, d])?.f_reshape([inner, dim(d)?])?;
    let bias = load(&naming.attn(Proj::Out, "bias"), &[d])?;
    ops::dense_in_out(&o, &out, Some(&bias))
}

/// flax `MlpBlock` at one site, named as `naming` says: Dense `[d, mlp]`, tanh GELU, Dense `[mlp, d]`.
pub(crate) fn flax_mlp(
    load: &Load<'_>,
    naming: Naming,
    d: usize,
    mlp: usize,
    x: &Tensor,
) -> Result<Tensor> {
    let y = ops::dense_in_out(
        x,
        &load(&naming.mlp(0, "kernel"), &[d, mlp])?,
        Some(&load(&naming.mlp(0, "bias"), &[mlp])?),
    )?;
    let y = Gelu::Tanh.apply(&y)?;
    ops::dense_in_out(
        &y,
        &load(&naming.mlp(1, "kernel"), &[mlp, d])?,
        Some(&load(&naming.mlp(1, "bias"), &[d])?),
    )
}

/// flax `LayerNorm` `name` at one site, width `d`, eps 1e-6.
pub(crate) fn flax_norm(load: &Load<'_>, d: usize, name: &str, x: &Tensor) -> Result<Tensor> {
    ops::layer_norm(
        x,
        &load(&format!("{name}/scale"), &[d])?,
        &load(&format!("{name}/bias"), &[d])?,
        FLAX_LAYER_NORM_EPS,
    )
}

/// `Encoder1DBlock`: `x + attn(LayerNorm_0(x))`, then `x + mlp(LayerNorm_1(x))` (the modules named as `naming`
/// says); `mask` (boolean, `[B, 1, N, N]`) is the attention mask where there is one (NaFlex padding).
pub(crate) fn flax_block(
    load: &Load<'_>,
    naming: Naming,
    s: Sizes,
    x: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let y = flax_norm(load, s.d, naming.norm(BlockNorm::Attention), x)?;
    let x = x.f_add(&flax_attention(
        load,
        naming,
        [s.d, s.heads, s.head_dim],
        &y,
        &y,
        mask,
    )?)?;
    let y = flax_norm(load, s.d, naming.norm(BlockNorm::Mlp), &x)?;
    Ok(x.f_add(&flax_mlp(load, naming, s.d, s.mlp, &y)?)?)
}

/// The encoder `tree` of `depth` blocks of sizes `s` run on `x`: every block, then `encoder_norm` on every token;
/// `mask` as [`flax_block`] takes it.
pub(crate) fn flax_encoder(
    p: &Params,
    tree: &EncoderTree,
    depth: usize,
    s: Sizes,
    x: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let mut x = x.shallow_clone();
    for i in 0..depth {
        let load = |rel: &str, shape: &[usize]| load_block(p, tree, depth, i, rel, shape);
        x = flax_block(&load, tree.naming(), s, &x, mask)?;
    }
    ops::layer_norm(
        &x,
        &p.load(&tree.encoder_norm("scale"), &[s.d])?,
        &p.load(&tree.encoder_norm("bias"), &[s.d])?,
        FLAX_LAYER_NORM_EPS,
    )
}

/// `MAPHead` of width `d` and sizes `map` on `tokens`: the probe attends over the tokens (keys masked by
/// `key_mask` where there is one), then `x + MlpBlock_0(LayerNorm_0(x))`; the probe's row is the pooled vector.
pub(crate) fn flax_map_head(
    p: &Params,
    d: usize,
    (heads, head_dim, mlp): MapSizes,
    tokens: &Tensor,
    key_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let s = Sizes {
        d,
        heads,
        head_dim,
        mlp,
    };
    let load = |rel: &str, shape: &[usize]| p.load(&format!("{MAP_HEAD}{rel}"), shape);
    let b = tokens.size().first().copied().unwrap_or(0);
    let probe = load("probe", &[1, 1, s.d])?.f_expand([b, 1, dim(s.d)?], false)?;
    let x = flax_attention(
        &load,
        MAP_NAMING,
        [s.d, s.heads, s.head_dim],
        &probe,
        tokens,
        key_mask,
    )?;
    let y = flax_norm(&load, s.d, MAP_NAMING.norm(BlockNorm::Attention), &x)?;
    let x = x.f_add(&flax_mlp(&load, MAP_NAMING, s.d, s.mlp, &y)?)?;
    Ok(x.f_select(1, 0)?)
}

/// The `pre_logits` dense + tanh where the file has one (else `pooled` itself), then the `head` where it has
/// one: the features and the logits of a ViT of architecture `a`.
pub(crate) fn flax_head(
    p: &Params,
    pooled: &Tensor,
    a: &SourceArch,
) -> Result<(Tensor, Option<Tensor>)> {
    let features = match a.representation {
        Some(r) => ops::dense_in_out(
            pooled,
            &p.load("pre_logits/kernel", &[a.hidden, r])?,
            Some(&p.load("pre_logits/bias", &[r])?),
        )?
        .f_tanh()?,
        None => pooled.shallow_clone(),
    };
    let logits = match a.num_classes {
        Some(c) => {
            let fin = a.representation.unwrap_or(a.hidden);
            Some(ops::dense_in_out(
                &features,
                &p.load("head/kernel", &[fin, c])?,
                Some(&p.load("head/bias", &[c])?),
            )?)
        }
        None => None,
    };
    Ok((features, logits))
}

/// big_vision's `posemb_sincos_2d` for an `h` x `w` grid and width `d`, `[h*w, d]` row-major:
/// `omega = 1 / 10000 ** (arange(d/4) / (d/4 - 1))`, rows in (y, x) order, features
/// `[sin(x*omega), cos(x*omega), sin(y*omega), cos(y*omega)]`, computed in f64 and rounded to
/// f32 once. The caller has checked `d % 4 == 0` and `d / 4 >= 2`.
pub fn sincos2d(h: usize, w: usize, d: usize) -> Vec<f32> {
    let quarter = d / 4;
    #[allow(clippy::cast_precision_loss)]
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / SINCOS_TEMPERATURE.powf(i as f64 / (quarter as f64 - 1.0)))
        .collect();
    let mut out = Vec::with_capacity(h.saturating_mul(w).saturating_mul(d));
    for y in 0..h {
        for x in 0..w {
            #[allow(clippy::cast_precision_loss)]
            let (xf, yf) = (x as f64, y as f64);
            #[allow(clippy::cast_possible_truncation)]
            {
                out.extend(omega.iter().map(|o| (xf * o).sin() as f32));
                out.extend(omega.iter().map(|o| (xf * o).cos() as f32));
                out.extend(omega.iter().map(|o| (yf * o).sin() as f32));
                out.extend(omega.iter().map(|o| (yf * o).cos() as f32));
            }
        }
    }
    out
}

/// Reads the architecture from the shapes, checking that the parts agree; also returns the MAP
/// head's `(heads, head_dim, mlp)` when there is one.
fn read_arch(p: &Params, opts: &Options) -> Result<(SourceArch, EncoderTree, Option<MapSizes>)> {
    let path = p.path().to_path_buf();
    let not_vit = |reason: String| Error::NotAModel {
        path: path.clone(),
        reason,
    };
    let bad = |tensor: &str, expected: String, found: &[usize]| Error::BadShape {
        path: path.clone(),
        tensor: tensor.to_owned(),
        expected,
        found: found.to_vec(),
    };
    let [patch_size, embed_in, hidden] = conv_patch_sizes(
        p,
        "no `embedding/kernel` under the root: not a big_vision ViT checkpoint",
        &bad,
    )?;
    let EncoderSizes {
        tree,
        depth,
        heads,
        head_dim,
        mlp,
    } = encoder_sizes(p, IMAGE_ENCODER, BIG_VISION, hidden, "", &bad)?;
    if depth == 0 || heads == 0 || head_dim == 0 {
        return Err(not_vit("no encoder blocks with attention".into()));
    }
    let has_cls = match p.shape("cls") {
        Some([1, 1, d]) if *d == hidden => true,
        Some(other) => return Err(bad("cls", format!("[1, 1, {hidden}]"), other)),
        None => false,
    };
    let probe = format!("{MAP_HEAD}probe");
    let map = match p.shape(&probe) {
        Some([1, 1, d]) if *d == hidden => Some(map_sizes(p, hidden, &bad)?),
        Some(other) => return Err(bad(&probe, format!("[1, 1, {hidden}]"), other)),
        None => None,
    };
    let from_keys = match (has_cls, map.is_some()) {
        (true, true) => {
            return Err(not_vit(
                "both a class token `cls` and a `MAPHead_0`: big_vision adds the class token only for pool_type 'tok'".into(),
            ))
        }
        (true, false) => Classifier::Token,
        (false, true) => Classifier::Map,
        (false, false) => Classifier::Gap,
    };
    let classifier = match opts.pool {
        None => from_keys,
        Some(asked) if asked == from_keys => asked,
        // `0` and `gap` share their keys; anything else must match what the keys say.
        Some(Classifier::First) if from_keys == Classifier::Gap => Classifier::First,
        // So do `none` (PaliGemma's image tower) and `gap`.
        Some(Classifier::None) if from_keys == Classifier::Gap => Classifier::None,
        Some(asked) => {
            return Err(Error::Declared {
                path: path.clone(),
                key: "pool".into(),
                expected: format!("{from_keys:?} (what the keys give)"),
                found: format!("{asked:?}"),
            })
        }
    };
    let (posemb, grid) = match p.shape("pos_embedding") {
        Some([1, n, d]) if *d == hidden => {
            let g = isqrt(*n);
            if g == 0 || g.checked_mul(g) != Some(*n) {
                return Err(bad(
                    "pos_embedding",
                    "[1, h*w, D] rows of a square grid (no class row)".into(),
                    &[1, *n, *d],
                ));
            }
            (PosEmb::Learned, g)
        }
        Some(other) => return Err(bad("pos_embedding", format!("[1, h*w, {hidden}]"), other)),
        None => {
            if !hidden.is_multiple_of(4) || hidden / 4 < 2 {
                return Err(bad(
                    "embedding/kernel",
                    "a width D with D % 4 == 0 and D >= 8, as posemb_sincos_2d needs".into(),
                    &[patch_size, patch_size, embed_in, hidden],
                ));
            }
            let size = opts
                .image_size
                .ok_or_else(|| Error::ImageSizeNeeded { path: path.clone() })?;
            if size == 0 || !size.is_multiple_of(patch_size) {
                return Err(Error::ImageSizeNotMultiple {
                    path: path.clone(),
                    image_size: size,
                    patch_size,
                });
            }
            (PosEmb::Sincos2d, size / patch_size)
        }
    };
    let representation = match p.shape("pre_logits/kernel") {
        Some([d, r]) if *d == hidden => Some(*r),
        Some(other) => return Err(bad("pre_logits/kernel", format!("[{hidden}, R]"), other)),
        None => None,
    };
    let fin = representation.unwrap_or(hidden);
    let num_classes = match p.shape("head/kernel") {
        Some([f, c]) if *f == fin => Some(*c),
        Some(other) => return Err(bad("head/kernel", format!("[{fin}, classes]"), other)),
        None => None,
    };
    let image_size = grid
        .checked_mul(patch_size)
        .ok_or_else(|| not_vit("image size overflows".into()))?;
    Ok((
        SourceArch {
            family: Family::BigVision,
            image_size,
            patch_size,
            grid,
            hidden,
            depth,
            heads,
            head_dim,
            mlp,
            classifier,
            posemb,
            class_pos: false,
            scan: tree.stacked(),
            representation,
            num_classes,
            resnet: None,
            embed_in,
        },
        tree,
        map,
    ))
}

/// The `(heads, head_dim, mlp)` of the `MAPHead_0` of width `hidden`, off its attention's query kernel and its
/// MLP's first kernel; `bad` builds the shape error.
pub(crate) fn map_sizes(
    p: &Params,
    hidden: usize,
    bad: &dyn Fn(&str, String, &[usize]) -> Error,
) -> Result<MapSizes> {
    let q = format!("{MAP_HEAD}{}", MAP_NAMING.attn(Proj::Query, "kernel"));
    let (h, dh) = match p.require_shape(&q, "the MAP head's attention")? {
        [d, h, dh] if *d == hidden => (*h, *dh),
        other => return Err(bad(&q, format!("[{hidden}, heads, head_dim]"), other)),
    };
    let m = format!("{MAP_HEAD}{}", MAP_NAMING.mlp(0, "kernel"));
    let mlp = match p.require_shape(&m, "the MAP head's MLP")? {
        [d, m] if *d == hidden => *m,
        other => return Err(bad(&m, format!("[{hidden}, mlp]"), other)),
    };
    Ok((h, dh, mlp))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The golden outputs were written by big_vision's own model in float32; the reference must
    /// equal them within this absolute difference.
    const GOLDEN_TOLERANCE: f64 = 1e-5;
    /// A bfloat16 copy of the weights (8 significant bits) moves these small models' outputs by
    /// a few 1e-3; this bounds the bf16 variant's distance from the float32 golden outputs.
    const BF16_GOLDEN_TOLERANCE: f64 = 5e-2;

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/big_vision")
            .join(rel)
    }

    fn npy(rel: &str) -> Tensor {
        read_npy(&fixture(rel))
    }

    /// The one array of the golden `.npy` file at `path`, as float32.
    pub(crate) fn read_npy(path: &Path) -> Tensor {
        let file = TensorFile::open(path).expect("golden npy opens");
        let info = file.tensors().first().expect("npy holds one array").clone();
        let values = file.read_f32(&info.name).expect("golden npy reads");
        let dims: Vec<i64> = info
            .shape
            .iter()
            .map(|&d| i64::try_from(d).expect("small"))
            .collect();
        Tensor::from_slice(&values).reshape(dims.as_slice())
    }

    /// The largest absolute difference between two tensors of one shape.
    pub(crate) fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.size(), b.size(), "shapes differ");
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
    }

    fn open_with(rel: &str, tower: &str, opts: &Options) -> Result<BigVision> {
        let file = TensorFile::open(fixture(rel))?;
        assert_eq!(
            super::super::detect_family(&file),
            Family::BigVision,
            "{rel}"
        );
        BigVision::from_file(file, Device::Cpu, tower, opts)
    }

    fn open(rel: &str, image_size: Option<usize>) -> BigVision {
        open_with(
            rel,
            "",
            &Options {
                image_size,
                pool: None,
            },
        )
        .expect("opens")
    }

    /// Runs `checkpoint` on the case's input and checks logits, features and tokens against the
    /// golden files within `tolerance`; returns the largest difference seen.
    fn check(case: &str, checkpoint: &str, image_size: Option<usize>, tolerance: f64) -> f64 {
        let model = open(&format!("{case}/{checkpoint}"), image_size);
        let out = model
            .forward(&npy(&format!("{case}/input.npy")), model.arch().grid)
            .expect("forward runs");
        let mut worst = 0.0f64;
        let pairs = [
            ("logits", out.logits.expect("golden cases have a head")),
            ("features", out.features),
            ("tokens", out.tokens),
        ];
        for (name, got) in pairs {
            let diff = max_abs(&got, &npy(&format!("{case}/{name}.npy")));
            assert!(
                diff <= tolerance,
                "{case}/{checkpoint}: {name} differ by {diff}"
            );
            worst = worst.max(diff);
        }
        worst
    }

    #[test]
    fn matches_golden_gap_sincos() {
        let worst = check(
            "bv-vit-gap-sincos",
            "checkpoint.npz",
            Some(32),
            GOLDEN_TOLERANCE,
        );
        eprintln!("bv-vit-gap-sincos: max abs diff {worst:e}");
        let model = open("bv-vit-gap-sincos/checkpoint.npz", Some(32));
        let a = model.arch();
        assert_eq!(
            (
                a.classifier,
                a.posemb,
                a.scan,
                a.grid,
                a.depth,
                a.heads,
                a.mlp
            ),
            (Classifier::Gap, PosEmb::Sincos2d, false, 4, 2, 4, 256)
        );
    }

    #[test]
    fn matches_golden_tok_scan_and_its_variants() {
        for file in [
            "checkpoint.npz",
            "variants/unrolled.npz",
            "variants/no-prefix.npz",
            "variants/train-state.npz",
        ] {
            let worst = check("bv-vit-tok-scan", file, None, GOLDEN_TOLERANCE);
            eprintln!("bv-vit-tok-scan/{file}: max abs diff {worst:e}");
        }
        let scan = open("bv-vit-tok-scan/checkpoint.npz", None);
        let a = scan.arch();
        assert_eq!(
            (a.classifier, a.posemb, a.scan, a.grid, a.depth, a.heads),
            (Classifier::Token, PosEmb::Learned, true, 3, 3, 2)
        );
        assert!(
            !open("bv-vit-tok-scan/variants/unrolled.npz", None)
                .arch()
                .scan
        );
        assert!(scan.notes().is_empty(), "{:?}", scan.notes());
        let state = open("bv-vit-tok-scan/variants/train-state.npz", None);
        let note = state.notes().join(" ");
        assert!(
            note.contains("under opt/") && note.contains("under chrono/"),
            "the left-out training state is reported: {note}"
        );
    }

    #[test]
    fn the_bf16_variant_is_the_f32_model_on_bf16_rounded_weights() {
        let base = TensorFile::open(fixture("bv-vit-tok-scan/checkpoint.npz")).expect("opens");
        let bf16 =
            TensorFile::open(fixture("bv-vit-tok-scan/variants/bfloat16.npz")).expect("opens");
        assert_eq!(base.tensors().len(), bf16.tensors().len());
        // Every bf16 weight is the f32 weight rounded to bf16, so the reference run on the bf16
        // file is the f32 reference run on bf16-rounded weights.
        for t in base.tensors() {
            let rounded = Tensor::from_slice(&base.read_f32(&t.name).expect("reads"))
                .to_kind(Kind::BFloat16)
                .to_kind(Kind::Float);
            let stored = Tensor::from_slice(&bf16.read_f32(&t.name).expect("bf16 decodes"));
            assert!(
                rounded.equal(&stored),
                "{}: not the rounded f32 values",
                t.name
            );
        }
        let worst = check(
            "bv-vit-tok-scan",
            "variants/bfloat16.npz",
            None,
            BF16_GOLDEN_TOLERANCE,
        );
        eprintln!("bv-vit-tok-scan/variants/bfloat16.npz: max abs diff {worst:e}");
        assert!(
            worst > 0.0,
            "bf16 weights cannot give the f32 outputs exactly"
        );
    }

    #[test]
    fn runs_a_paligemma_image_tower_token_by_token() {
        // PaliGemma's pool_type 'none' stores what 'gap' stores; the language model beside the tower is what
        // tells the reference to pool nothing and apply the head to every token.
        for case in ["paligemma-tower-tiny", "paligemma-tower-tiny-bf16"] {
            let rel = format!("../siglip2/{case}");
            let reference = super::super::Reference::open(
                &fixture(&format!("{rel}/checkpoint.npz")),
                Device::Cpu,
                &super::super::SourceOptions::default(),
            )
            .expect("opens");
            assert_eq!(reference.arch().classifier, Classifier::None, "{case}");
            assert!(reference.notes().join(" ").contains("PaliGemma"), "{case}");
            let out = reference
                .forward(&npy(&format!("{rel}/input.npy")), reference.arch().grid)
                .expect("runs");
            let tokens = max_abs(&out.pooled, &npy(&format!("{rel}/tokens.npy")));
            let zimg = max_abs(
                &out.logits.expect("the projection"),
                &npy(&format!("{rel}/zimg.npy")),
            );
            assert!(
                tokens <= GOLDEN_TOLERANCE && zimg <= GOLDEN_TOLERANCE,
                "{case}: tokens differ by {tokens}, zimg by {zimg}"
            );
        }
        // Asked for explicitly, 'none' is refused where the keys give a class token.
        let err = open_with(
            "bv-vit-tok-scan/checkpoint.npz",
            "",
            &Options {
                image_size: None,
                pool: Some(Classifier::None),
            },
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("pool"), "{err}");
    }

    #[test]
    fn matches_golden_map_scan() {
        let worst = check("bv-vit-map-scan", "checkpoint.npz", None, GOLDEN_TOLERANCE);
        eprintln!("bv-vit-map-scan: max abs diff {worst:e}");
        let model = open("bv-vit-map-scan/checkpoint.npz", None);
        assert_eq!(model.arch().classifier, Classifier::Map);
        assert_eq!(model.arch().representation, Some(32));
        assert_eq!(model.map, Some((3, 16, 192)));
    }

    /// L2-normalises the rows of `[B, E]`.
    fn l2(x: &Tensor) -> Tensor {
        x / x.norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
    }

    #[test]
    fn runs_the_siglip_image_tower_under_its_prefix() {
        let file = TensorFile::open(fixture("siglip-tiny/checkpoint.npz")).expect("opens");
        assert_eq!(image_tower(&file), "img/");
        let file = TensorFile::open(fixture("bv-vit-map-scan/checkpoint.npz")).expect("opens");
        assert_eq!(image_tower(&file), "");
        let input = npy("siglip-tiny/input.npy");
        let tower = open_with("siglip-tiny/checkpoint.npz", "img/", &Options::default())
            .expect("the image tower opens");
        assert_eq!(tower.arch().classifier, Classifier::Map);
        let out = tower.forward(&input, tower.arch().grid).expect("runs");
        let embeds = l2(&out.logits.expect("siglip-tiny's image tower has a head"));
        let diff = max_abs(&embeds, &npy("siglip-tiny/image_embeds.npy"));
        assert!(
            diff <= GOLDEN_TOLERANCE,
            "siglip-tiny image embeds differ by {diff}"
        );
        // Without a head, the MAP head's output is the image embedding.
        let tower =
            open_with("siglip-nohead/checkpoint.npz", "img/", &Options::default()).expect("opens");
        assert_eq!(tower.arch().num_classes, None);
        let out = tower
            .forward(&npy("siglip-nohead/input.npy"), tower.arch().grid)
            .expect("runs");
        let diff = max_abs(&l2(&out.pooled), &npy("siglip-nohead/image_embeds.npy"));
        assert!(
            diff <= GOLDEN_TOLERANCE,
            "siglip-nohead image embeds differ by {diff}"
        );
    }

    #[test]
    fn a_sincos_file_needs_the_image_size() {
        let Err(err) = open_with("bv-vit-gap-sincos/checkpoint.npz", "", &Options::default())
        else {
            panic!("a sincos2d file opened without an image size");
        };
        assert!(matches!(err, Error::ImageSizeNeeded { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("--image-size") && !msg.contains('\n'), "{msg}");
        let Err(err) = open_with(
            "bv-vit-gap-sincos/checkpoint.npz",
            "",
            &Options {
                image_size: Some(36),
                pool: None,
            },
        ) else {
            panic!("36 px opened with 8 px patches");
        };
        assert!(matches!(err, Error::ImageSizeNotMultiple { .. }), "{err}");
    }

    #[test]
    fn sincos2d_follows_big_vision_not_timm() {
        let (h, w, d) = (2, 3, 8);
        let pe = sincos2d(h, w, d);
        assert_eq!(pe.len(), h * w * d);
        // Row of (y=1, x=2) is row 1*3+2 = 5; omega = [1, 1/10000] for d/4 = 2 (divided by d/4 - 1 = 1).
        let row = &pe[5 * d..6 * d];
        let omega = [1.0f64, 1e-4];
        let want: Vec<f32> = [
            omega.map(|o| (2.0 * o).sin()),
            omega.map(|o| (2.0 * o).cos()),
            omega.map(|o| (1.0 * o).sin()),
            omega.map(|o| (1.0 * o).cos()),
        ]
        .concat()
        .iter()
        .map(|&v| v as f32)
        .collect();
        assert_eq!(row, want.as_slice());
    }

    #[test]
    fn pool_zero_takes_the_first_token_of_a_gap_model() {
        let model = open_with(
            "bv-vit-gap-sincos/checkpoint.npz",
            "",
            &Options {
                image_size: Some(32),
                pool: Some(Classifier::First),
            },
        )
        .expect("opens");
        let out = model
            .forward(&npy("bv-vit-gap-sincos/input.npy"), 4)
            .expect("runs");
        assert!(out.pooled.equal(&out.tokens.select(1, 0)));
        let Err(err) = open_with(
            "bv-vit-tok-scan/checkpoint.npz",
            "",
            &Options {
                image_size: None,
                pool: Some(Classifier::Map),
            },
        ) else {
            panic!("a map pool was accepted for a file without a MAP head");
        };
        assert!(matches!(err, Error::Declared { .. }), "{err}");
    }

    #[test]
    fn vit_jax_files_are_not_read_as_big_vision() {
        let file = TensorFile::open(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/vit-token/checkpoint.npz"),
        )
        .expect("opens");
        assert_eq!(super::super::detect_family(&file), Family::VitJax);
    }
}
