//! The layout-independent decisions every target layout shares: the source with its options resolved
//! ([`Prepared`]: grid, head, input normalisation, notes), the roles a layout's name table gives each block and
//! MAP-head tensor, and small helpers for names and Python literals. Layout modules import this module, and
//! the registry in `layout/mod.rs` imports them: this module imports no layout.

use std::collections::BTreeMap;

use serde_json::json;

use crate::arch::{Arch, PatchEmbedKind, PosEmbKind};
use crate::error::{Error, Part, Result};
use crate::model::{
    Attention, Block, Dense, Logit, MapHead, Model, Param, Pool, PosEmbed, Proj, TextTower, Tower,
};
use crate::options::{HeadChoice, InputNorm, Options, TowerChoice};
use crate::plan::{OutTensor, Plan, Recipe};
use crate::record::{
    ConfigRecord, DeclaredGelu, DeclaredHead, NormRecord, ResnetRecord, TextPool, TextRecord,
    TokenizerRecord, CONFIG_VERSION,
};
use crate::tokenizer::SentencePiece;

/// The largest `--image-size` accepted: 8192 px is over 20 times the published resolutions, and keeps the
/// position table of a patch-14 ViT-G under 1.4 GB; beyond it a typo would ask for terabytes.
pub const MAX_IMAGE_SIZE: usize = 8192;

/// The most cells (rows x columns) of the output's patch grid: 1024 x 1024, the grid of patch 8 (the smallest
/// patch of published ViTs, ViT-B/8 and S/8) at [`MAX_IMAGE_SIZE`]; patch 14 there is 585 x 585 = 342,225,
/// patch 16 512 x 512. `MAX_IMAGE_SIZE` bounds pixels, not cells: patch 1 at 8192 px would be 67 million
/// cells, a table of gigabytes from a file of kilobytes, at a grid no model can attend over, so it is refused
/// rather than written.
pub const MAX_GRID_CELLS: usize = 1 << 20;

/// The most values of the output position table's grid (cells x width): 2^31. That holds the widest
/// published ViTs at their smallest patch and `MAX_IMAGE_SIZE` (ViT-G/14 at 8192 px: 342,225 cells of width
/// 1664, 0.57 billion values; ViT-B/8: 1024 x 1024 cells of 768, 0.81 billion) and even a 22B-parameter
/// width (6144 at patch 14: 2.1 billion, 8.4 GB as f32). The table is computed a band at a time, so this
/// bounds the file's size (whose free space the writer checks before writing), not memory; it also keeps
/// every size computed from it far from overflowing.
pub const MAX_TABLE_VALUES: usize = 1 << 31;

/// Refuses an output patch grid over [`MAX_GRID_CELLS`], or a position table over [`MAX_TABLE_VALUES`],
/// before anything is read or created, saying the largest `--image-size` that fits.
fn check_table(grid: (usize, usize), image_size: usize, stride: usize, width: usize) -> Result<()> {
    let cells = grid.0.checked_mul(grid.1);
    let values = cells.and_then(|c| c.checked_mul(width));
    let refuse = |what, found, limit| {
        // The largest square grid within both limits, at most MAX_IMAGE_SIZE in pixels.
        let side = MAX_GRID_CELLS
            .min(
                MAX_TABLE_VALUES
                    .checked_div(width)
                    .unwrap_or(MAX_TABLE_VALUES),
            )
            .isqrt();
        let max_size = side.saturating_mul(stride).min(
            MAX_IMAGE_SIZE
                .checked_div(stride)
                .unwrap_or(0)
                .saturating_mul(stride),
        );
        Err(Error::PositionTableTooLarge {
            image_size,
            stride,
            grid,
            width,
            what,
            found,
            limit,
            max_size,
        })
    };
    match (cells, values) {
        (Some(c), _) if c > MAX_GRID_CELLS => refuse("grid cells", Some(c), MAX_GRID_CELLS),
        (None, _) => refuse("grid cells", None, MAX_GRID_CELLS),
        (_, Some(v)) if v > MAX_TABLE_VALUES => {
            refuse("position-table values", Some(v), MAX_TABLE_VALUES)
        }
        (_, None) => refuse("position-table values", None, MAX_TABLE_VALUES),
        _ => Ok(()),
    }
}

/// How a NaFlex model resizes its position grid to each image's patch grid, as `vitconv.config` declares it
/// (`pos_resize`): bilinear with antialias and half-pixel centres, big_vision's `jax.image.scale_and_translate`
/// and PyTorch's `F.interpolate(mode='bilinear', align_corners=False, antialias=True)`.
pub const NAFLEX_POS_RESIZE: &str = "bilinear_antialias";

/// LayerNorm epsilon of the flax model (`nn.LayerNorm` default).
pub const FLAX_LN_EPS: f64 = 1e-6;

/// The source with the layout-independent options resolved.
pub struct Prepared<'a> {
    /// The source model.
    pub model: &'a Model,
    /// The options asked for.
    pub opts: &'a Options,
    /// Patch grid of the output (differs from the source's with `--image-size`).
    pub grid: (usize, usize),
    /// Input resolution of the output, in pixels. A NaFlex tower has none (its outputs declare `image_size`
    /// null): here it is the side at which the stored position grid is used unresized (grid x patch), which only
    /// the preprocessing defaults of loaders that ask for a size take.
    pub image_size: usize,
    /// Whether `head` is written (false with `--drop-head`, `--num-classes 0`, or no head in the source).
    pub keep_head: bool,
    /// The input normalisation the output expects (folded into the patch embedding where it differs from the source's).
    pub norm: InputNorm,
    /// What was resolved so far, one sentence each (they join the plan's notes).
    pub notes: Vec<String>,
    /// Source tensors left out so far (training state, a dropped head).
    pub dropped: Vec<String>,
    /// The `--tokenizer` model, checked against the text tower.
    pub tokenizer: Option<SentencePiece>,
}

/// The round resolution (a multiple of 32, as every published one is) that patches to the same grid as `px`
/// when `px` itself is not round: 384 for the 378 px a 27x27 grid of 14-px patches covers.
fn published_size(px: usize, stride: usize) -> Option<usize> {
    if px.is_multiple_of(32) {
        return None;
    }
    (px.saturating_add(1)..px.saturating_add(stride)).find(|n| n.is_multiple_of(32))
}

impl<'a> Prepared<'a> {
    /// Resolves image size, head and input normalisation against the source.
    pub fn new(model: &'a Model, opts: &'a Options) -> Result<Self> {
        let tower = &model.image;
        let arch = &tower.arch;
        let stride = arch.stride();
        let (grid, image_size) = match (opts.image_size, arch.grid, arch.image_size()) {
            // A NaFlex tower has no resolution to choose: each image brings its own patch grid.
            (Some(size), Some(grid), _) if arch.naflex() => {
                return Err(Error::NaflexImageSize { size, grid })
            }
            (None, Some(grid), None) if arch.naflex() => (grid, grid.0.saturating_mul(stride)),
            (None, Some(grid), Some(px)) => (grid, px),
            (None, _, _) => return Err(Error::ImageSizeRequired { stride }),
            (Some(n), _, _) if n > MAX_IMAGE_SIZE => {
                return Err(Error::ImageSizeTooLarge {
                    size: n,
                    max: MAX_IMAGE_SIZE,
                })
            }
            // A flax ViT patches with VALID padding: a 384 px input to a patch-14 model is a 27x27 grid, the last
            // 6 px unused. A size that is no multiple of the stride is taken when it gives the source's own
            // grid (the published resolution of such a model), and said so.
            (Some(n), Some(grid), _)
                if n.checked_rem(stride).is_some_and(|r| r != 0)
                    && n.checked_div(stride).map(|s| (s, s)) == Some(grid) =>
            {
                (grid, n)
            }
            (Some(n), _, _) => {
                if n == 0 || n.checked_rem(stride) != Some(0) {
                    return Err(Error::ImageSizeNotMultiple { size: n, stride });
                }
                // `stride` divides `n` (checked just above), so it is not zero.
                let side = n.checked_div(stride).unwrap_or(0);
                ((side, side), n)
            }
        };
        check_table(grid, image_size, stride, arch.hidden)?;
        let mut notes = Vec::new();
        if let (Some(n), Some(px)) = (opts.image_size, arch.image_size()) {
            if n != px && Some(grid) == arch.grid {
                notes.push(format!(
                    "resolution: {n} px as --image-size gives it; the shapes read {px} px ({}x{} patches of {stride}), and VALID patching drops the last {} px, so the grid and every weight are the source's",
                    grid.0,
                    grid.1,
                    n.saturating_sub(px)
                ));
            }
        }
        if let (None, Some(px)) = (opts.image_size, arch.image_size()) {
            // A grid of 14-px patches reads as 378 px (27 x 14) where the model was published at 384 px: VALID
            // patching drops the rest. The size a user knows it by is the round one in the same grid.
            if let Some(n) = published_size(px, stride) {
                notes.push(format!(
                    "resolution: {px} px is what the {}x{} grid of {stride}-px patches covers; a model published at {n} px (VALID patching drops the last {} px) is declared so with --image-size {n}, with the same weights",
                    grid.0,
                    grid.1,
                    n.saturating_sub(px)
                ));
            }
        }
        match (arch.grid, &tower.pos) {
            (_, PosEmbed::Sincos2d) => notes.push(format!(
                "position embedding: sincos2d computed for the {}x{} grid ({image_size} px)",
                grid.0, grid.1
            )),
            (_, PosEmbed::Grid { grid: (h, w), .. }) => notes.push(format!(
                "position embedding: the learned {h}x{w} grid written as stored; the model resizes it to each image's patch grid (bilinear, antialias, half-pixel centres), so no resolution is fixed"
            )),
            (Some(from), PosEmbed::Table { class_row, .. }) if from != grid => notes.push(format!(
                "position embedding grid resized from {}x{} to {}x{} ({image_size} px) with --resize {}{}",
                from.0,
                from.1,
                grid.0,
                grid.1,
                opts.resize.as_str(),
                if *class_row { "; class-token row unchanged" } else { "" }
            )),
            _ => {}
        }
        let mut dropped = model.left_out.clone();
        // A vision-language model's LLM is never converted: the user asks for the image tower alone.
        match (opts.tower, &model.llm) {
            (TowerChoice::All, Some(llm)) => {
                return Err(Error::LanguageModelNotConverted {
                    generation: llm.arch.generation,
                    params: llm.params,
                    bytes: llm.bytes,
                })
            }
            (TowerChoice::Image, Some(llm)) => {
                dropped.extend(llm.tensors.iter().cloned());
                notes.push(format!(
                    "{} language model left out (--tower image; {}): the output is the image tower with its projection to the LLM width {}",
                    llm.arch.name(),
                    crate::model::size_words(llm.params, llm.bytes),
                    llm.arch.width
                ));
            }
            (_, None) => {}
        }
        match (opts.tower, &model.text, &model.logit) {
            (TowerChoice::Image, None, _) if model.llm.is_some() => {}
            (TowerChoice::Image, None, _) => return Err(Error::NotTwoTower),
            (TowerChoice::Image, Some(text), logit) => {
                dropped.extend(text_tensors(text, logit.as_ref()));
                notes.push(format!(
                    "text tower ({} blocks, width {}) and the logit scale and bias left out (--tower image): the output is the image tower alone, whose features are the image embedding before L2 normalisation",
                    text.arch.depth, text.arch.width
                ));
            }
            (TowerChoice::All, _, _) => {}
        }
        let keep_head = match (opts.head, arch.num_classes) {
            (HeadChoice::Keep, c) => c.is_some(),
            (HeadChoice::NumClasses(0) | HeadChoice::Drop, _) => false,
            (HeadChoice::NumClasses(n), Some(c)) if n == c => true,
            (HeadChoice::NumClasses(n), c) => {
                return Err(Error::NumClassesMismatch { asked: n, found: c })
            }
        };
        if let Some(labels) = &opts.labels {
            match (keep_head, arch.num_classes) {
                (true, Some(c)) if c == labels.len() => {}
                (true, Some(c)) => {
                    return Err(Error::LabelCount {
                        given: labels.len(),
                        classes: c,
                    })
                }
                _ => {
                    return Err(Error::LabelsWithoutHead {
                        given: labels.len(),
                    })
                }
            }
        }
        if let (false, Some(head)) = (keep_head, &tower.head) {
            dropped.extend([head.kernel.tensor.clone(), head.bias.tensor.clone()]);
            notes.push(
                "head dropped (--drop-head / --num-classes 0): the model outputs pooled features"
                    .to_string(),
            );
        }
        if let (false, Some(pre)) = (keep_head, &tower.pre_logits) {
            dropped.extend([pre.kernel.tensor.clone(), pre.bias.tensor.clone()]);
            notes.push(
                "pre_logits (dense + tanh) dropped with the head: features are the pooled encoder_norm output".to_string(),
            );
        }
        // A two-tower model keeps its own [-1, 1] input unless asked otherwise: SigLIP's preprocessing is mean
        // and std 0.5 in every library that loads it.
        let norm = match (
            opts.input_norm,
            model.text.is_some() && opts.tower == TowerChoice::All,
        ) {
            (None, true) => InputNorm::Unit,
            _ => opts.input_norm(),
        };
        notes.push(format!(
            "input normalisation: {} (mean {:?}, std {:?} on [0, 1] pixels){}",
            norm.as_str(),
            norm.mean(),
            norm.std(),
            if norm == InputNorm::Unit {
                ", the source's own"
            } else {
                ", folded into the patch embedding"
            }
        ));
        let two_tower = model.text.is_some() && opts.tower == TowerChoice::All;
        let tokenizer = match (&opts.tokenizer, &model.text) {
            (None, _) => None,
            (Some(_), _) if !two_tower => {
                return Err(Error::TokenizerWithoutText {
                    what: if model.text.is_some() {
                        "the image tower alone (--tower image)"
                    } else {
                        "a single-tower ViT"
                    },
                })
            }
            (Some(path), text) => {
                let sp = crate::tokenizer::read(path)?;
                sp.check_vocab(text.as_ref().map(|t| t.arch.vocab).unwrap_or(0))?;
                notes.push(match sp.kind {
                    crate::tokenizer::Kind::Siglip => format!(
                        "tokenizer: {} (SigLIP kind: {} pieces, </s> = id {}) written as spiece.model with SiglipTokenizer configs; SigLIP reads sequences padded with </s> to the full context (padding='max_length')",
                        path.display(),
                        sp.pieces,
                        sp.eos_id
                    ),
                    crate::tokenizer::Kind::Gemma => format!(
                        "tokenizer: {} (Gemma kind: {} pieces, <pad> 0, <eos> 1, <bos> 2) written as tokenizer.json (a fast tokenizer built from the pieces) and tokenizer.model; as big_vision's SigLIP 2: ASCII-only lowercase, no BOS, <eos> appended and kept last when truncating, <pad> to the full context (padding='max_length')",
                        path.display(),
                        sp.pieces
                    ),
                });
                Some(sp)
            }
        };
        if two_tower && tokenizer.is_none() {
            notes.push(
                "no tokenizer: the .npz holds no vocabulary; text input needs the model's SentencePiece tokenizer (convert with --tokenizer spiece.model to include it)"
                    .to_string(),
            );
        }
        Ok(Prepared {
            model,
            opts,
            grid,
            image_size,
            keep_head,
            norm,
            notes,
            dropped,
            tokenizer,
        })
    }

    /// Refuses an input normalisation that cannot be folded exactly; layouts call it after their own
    /// structural refusals, so a source the layout cannot hold at all is told that first.
    pub fn check_input_norm(&self) -> Result<()> {
        if self.norm != InputNorm::Unit && self.arch().resnet.is_some() {
            return Err(Error::InputNormHybrid {
                norm: self.norm.as_str(),
            });
        }
        if self.norm != InputNorm::Unit && self.arch().patch_embed == PatchEmbedKind::Linear {
            return Err(Error::InputNormNaflex {
                norm: self.norm.as_str(),
            });
        }
        Ok(())
    }

    /// A NaFlex tower's stored position grid and its rows and columns; `None` for a fixed-resolution tower.
    /// Layouts that hold NaFlex models take this branch; the others refuse it in [`Prepared::pos_table`].
    pub fn naflex_grid(&self) -> Option<(&'a Param, (usize, usize))> {
        match &self.model.image.pos {
            PosEmbed::Grid { param, grid } => Some((param, *grid)),
            _ => None,
        }
    }

    /// A linear (NaFlex) patch embedding as a PyTorch `Linear` weight `[D, p * p * in]`: the `[p * p * in, D]`
    /// kernel transposed, its inputs in the (py, px, c) order the patches are flattened in (transformers'
    /// `Siglip2` and timm's `NaFlexVit` flatten them so).
    pub fn linear_patch_weight(&self) -> (Vec<usize>, Recipe) {
        let a = self.arch();
        let rows = a.patch.saturating_mul(a.patch).saturating_mul(a.in_chans);
        (
            vec![a.hidden, rows],
            Recipe::Transpose {
                src: self.tower().patch.kernel.clone(),
                rows,
                cols: a.hidden,
            },
        )
    }

    /// Whether both towers of a two-tower model are to be written (not `--tower image`).
    pub fn two_tower(&self) -> bool {
        self.model.text.is_some() && self.opts.tower == TowerChoice::All
    }

    /// The architecture of the image tower.
    pub fn arch(&self) -> &Arch {
        &self.model.image.arch
    }

    /// The image tower being converted.
    pub fn tower(&self) -> &'a Tower {
        &self.model.image
    }

    /// Whether `pre_logits` is still to be written (source has it and the head is kept).
    pub fn has_pre_logits(&self) -> bool {
        self.arch().representation.is_some() && self.keep_head
    }

    /// A refusal for this layout: `what` describes the part of the source with its sizes, `why` is the
    /// layout's fixed reason and fix.
    pub fn refuse(&self, what: Part, why: &'static str) -> Error {
        Error::Refused {
            layout: self.opts.layout.as_str(),
            what,
            why,
        }
    }

    /// An attention's `(width, heads * head_dim)`, read off its `[D, H, Dh]` query kernel, so that one mapping
    /// serves every tower whatever its width.
    fn hd(attn: &Attention) -> (usize, usize) {
        let q = &attn.query.kernel.shape;
        let hd = q
            .get(1..)
            .unwrap_or_default()
            .iter()
            .fold(1usize, |a, &x| a.saturating_mul(x));
        (q.first().copied().unwrap_or(0), hd)
    }

    /// Fused `[3D, D]` q/k/v weight in q, k, v order with heads contiguous (timm `qkv`, CLIP `in_proj_weight`).
    pub fn qkv_weight(&self, attn: &Attention) -> Recipe {
        Recipe::Concat(
            [Proj::Query, Proj::Key, Proj::Value]
                .iter()
                .map(|p| self.proj_weight(attn, *p))
                .collect(),
        )
    }

    /// Fused `[3D]` q/k/v bias.
    pub fn qkv_bias(&self, attn: &Attention) -> Recipe {
        Recipe::Concat(
            [Proj::Query, Proj::Key, Proj::Value]
                .iter()
                .map(|p| self.proj_bias(attn, *p))
                .collect(),
        )
    }

    /// One projection's `[out, in]` weight: q/k/v `[D, H, Dh]` seen as `[D, H*Dh]`, out `[H, Dh, D]` as `[H*Dh, D]`,
    /// both transposed.
    pub fn proj_weight(&self, attn: &Attention, p: Proj) -> Recipe {
        let (d, hd) = Self::hd(attn);
        let (rows, cols) = if p == Proj::Out { (hd, d) } else { (d, hd) };
        Recipe::Transpose {
            src: attn.proj(p).kernel.clone(),
            rows,
            cols,
        }
    }

    /// The bias of one attention projection, as a recipe.
    pub fn proj_bias(&self, attn: &Attention, p: Proj) -> Recipe {
        Recipe::Copy(attn.proj(p).bias.clone())
    }

    /// MLP dense `layer` (0 or 1) weight `[out, in]`.
    pub fn mlp_weight(&self, mlp: &[Dense; 2], layer: usize) -> Recipe {
        // The kernel is stored `[in, out]`; its own shape gives the sizes, whichever tower it belongs to.
        let dense = if layer == 0 { &mlp[0] } else { &mlp[1] };
        let k = &dense.kernel.shape;
        let (rows, cols) = (
            k.first().copied().unwrap_or(0),
            k.get(1).copied().unwrap_or(0),
        );
        Recipe::Transpose {
            src: dense.kernel.clone(),
            rows,
            cols,
        }
    }

    /// The bias of MLP layer `layer` (0 or 1), as a recipe.
    pub fn mlp_bias(&self, mlp: &[Dense; 2], layer: usize) -> Recipe {
        let dense = if layer == 0 { &mlp[0] } else { &mlp[1] };
        Recipe::Copy(dense.bias.clone())
    }

    /// The output tensors of one block of a layout's [`BlockTable`], names expanded with the block index.
    pub fn block_tensors(
        &self,
        table: &BlockTable,
        prefix: &str,
        i: usize,
        b: &Block,
    ) -> Vec<OutTensor> {
        table
            .iter()
            .map(|(template, role)| {
                let (shape, recipe) = self.block_role(*role, b);
                OutTensor {
                    name: format!("{prefix}{}", name(template, i)),
                    shape,
                    recipe,
                }
            })
            .collect()
    }

    /// The shape and recipe of a block role in PyTorch's conventions (`[out, in]` weights).
    pub fn block_role(&self, role: BlockRole, b: &Block) -> (Vec<usize>, Recipe) {
        let (d, _, m) = b.dims();
        let copy = |p: &Param| Recipe::Copy(p.clone());
        match role {
            BlockRole::Norm1Scale => (vec![d], copy(&b.norm1.scale)),
            BlockRole::Norm1Bias => (vec![d], copy(&b.norm1.bias)),
            BlockRole::QkvWeight => (vec![d.saturating_mul(3), d], self.qkv_weight(&b.attn)),
            BlockRole::QkvBias => (vec![d.saturating_mul(3)], self.qkv_bias(&b.attn)),
            BlockRole::Weight(p) => (vec![d, d], self.proj_weight(&b.attn, p)),
            BlockRole::Bias(p) => (vec![d], self.proj_bias(&b.attn, p)),
            BlockRole::Norm2Scale => (vec![d], copy(&b.norm2.scale)),
            BlockRole::Norm2Bias => (vec![d], copy(&b.norm2.bias)),
            BlockRole::Fc1Weight => (vec![m, d], self.mlp_weight(&b.mlp, 0)),
            BlockRole::Fc1Bias => (vec![m], self.mlp_bias(&b.mlp, 0)),
            BlockRole::Fc2Weight => (vec![d, m], self.mlp_weight(&b.mlp, 1)),
            BlockRole::Fc2Bias => (vec![d], self.mlp_bias(&b.mlp, 1)),
        }
    }

    /// The MAP head, refused where the layout's pooling module derives its sizes from the encoder's (timm's
    /// `AttentionPoolLatent` and transformers' `SiglipMultiheadAttentionPoolingHead` both take the encoder's
    /// head count and MLP width).
    pub fn map_head(&self) -> Result<Option<&'a MapHead>> {
        let Pool::Map(map) = &self.tower().pool else {
            return Ok(None);
        };
        let a = self.arch();
        let heads = map.attn.query.kernel.shape.get(1).copied();
        let mlp = map.mlp[0].kernel.shape.get(1).copied();
        if heads != a.heads || mlp != Some(a.mlp) {
            return Err(self.refuse(
                Part::MapHeadSizes {
                    heads: heads.unwrap_or(0),
                    mlp: mlp.unwrap_or(0),
                    encoder_heads: a.heads.unwrap_or(0),
                    encoder_mlp: a.mlp,
                },
                "the layout's attention pooling takes the encoder's head count and MLP width",
            ));
        }
        Ok(Some(map))
    }

    /// The output tensors of the MAP head for a layout's [`MapTable`], each name after `prefix`.
    pub fn map_tensors(&self, table: &MapTable, prefix: &str, map: &MapHead) -> Vec<OutTensor> {
        let a = self.arch();
        let (d, m) = (a.hidden, a.mlp);
        let copy = |p: &Param| Recipe::Copy(p.clone());
        table
            .iter()
            .map(|(name, role)| {
                let (shape, recipe) = match role {
                    MapRole::Probe => (vec![1, 1, d], copy(&map.probe)),
                    MapRole::Weight(p) => (vec![d, d], self.proj_weight(&map.attn, *p)),
                    MapRole::Bias(p) => (vec![d], self.proj_bias(&map.attn, *p)),
                    MapRole::KvWeight => (
                        vec![d.saturating_mul(2), d],
                        Recipe::Concat(vec![
                            self.proj_weight(&map.attn, Proj::Key),
                            self.proj_weight(&map.attn, Proj::Value),
                        ]),
                    ),
                    MapRole::KvBias => (
                        vec![d.saturating_mul(2)],
                        Recipe::Concat(vec![
                            self.proj_bias(&map.attn, Proj::Key),
                            self.proj_bias(&map.attn, Proj::Value),
                        ]),
                    ),
                    MapRole::QkvWeight => {
                        (vec![d.saturating_mul(3), d], self.qkv_weight(&map.attn))
                    }
                    MapRole::QkvBias => (vec![d.saturating_mul(3)], self.qkv_bias(&map.attn)),
                    MapRole::NormScale => (vec![d], copy(&map.norm.scale)),
                    MapRole::NormBias => (vec![d], copy(&map.norm.bias)),
                    MapRole::Fc1Weight => (vec![m, d], self.mlp_weight(&map.mlp, 0)),
                    MapRole::Fc1Bias => (vec![m], self.mlp_bias(&map.mlp, 0)),
                    MapRole::Fc2Weight => (vec![d, m], self.mlp_weight(&map.mlp, 1)),
                    MapRole::Fc2Bias => (vec![d], self.mlp_bias(&map.mlp, 1)),
                };
                OutTensor {
                    name: format!("{prefix}{name}"),
                    shape,
                    recipe,
                }
            })
            .collect()
    }

    /// The text tower's tensors for a layout's [`TextTable`] (embeddings, final norm, head) and
    /// [`BlockTable`] (each block's names after `block_prefix`); a refusal where the table has no place for
    /// the source's head, or the source has none to fill the table's and the layout cannot go without
    /// (`head_optional` unset: its text tower always projects).
    pub fn text_tensors(
        &self,
        table: &TextTable,
        blocks: &BlockTable,
        block_prefix: &str,
        head_optional: bool,
    ) -> Result<Vec<OutTensor>> {
        let Some(text) = self.model.text.as_ref().filter(|_| self.two_tower()) else {
            return Ok(Vec::new());
        };
        let a = &text.arch;
        let wants_head = table
            .iter()
            .any(|(_, r)| matches!(r, TextRole::HeadWeight | TextRole::HeadBias));
        let head = match (&text.head, wants_head) {
            (Some(h), true) => Some(h),
            (None, false) => None,
            // The layout writes no projection (open_clip's `proj_type='none'`), and the table's head is skipped.
            (None, true) if head_optional => None,
            (Some(_), false) => {
                return Err(self.refuse(
                    Part::TextHead {
                        width: a.width,
                        embed: a.embed.unwrap_or(0),
                    },
                    "the layout's text tower has no projection after pooling",
                ))
            }
            (None, true) => {
                return Err(self.refuse(
                    Part::TextWithoutHead { width: a.width },
                    "the layout's text tower always projects after pooling, and a projection the source lacks would be invented",
                ))
            }
        };
        let embed = a.embed.unwrap_or(a.width);
        let mut out = Vec::new();
        let mut after = Vec::new();
        for (name, role) in table {
            let (shape, recipe) = match role {
                TextRole::Token => (vec![a.vocab, a.width], Recipe::Copy(text.embedding.clone())),
                TextRole::Position => (vec![a.context, a.width], Recipe::Copy(text.pos.clone())),
                TextRole::NormScale => (vec![a.width], Recipe::Copy(text.final_norm.scale.clone())),
                TextRole::NormBias => (vec![a.width], Recipe::Copy(text.final_norm.bias.clone())),
                TextRole::HeadWeight | TextRole::HeadBias => {
                    let Some(h) = head else { continue };
                    match role {
                        TextRole::HeadWeight => (
                            vec![embed, a.width],
                            Recipe::Transpose {
                                src: h.kernel.clone(),
                                rows: a.width,
                                cols: embed,
                            },
                        ),
                        _ => (vec![embed], Recipe::Copy(h.bias.clone())),
                    }
                }
            };
            let t = OutTensor {
                name: name.to_string(),
                shape,
                recipe,
            };
            match role {
                TextRole::Token | TextRole::Position => out.push(t),
                _ => after.push(t),
            }
        }
        for (i, b) in text.blocks.iter().enumerate() {
            out.extend(self.block_tensors(blocks, block_prefix, i, b));
        }
        out.extend(after);
        Ok(out)
    }

    /// The logit scale `t` and bias `b` under a layout's names, each of `shape` (`[1]` or a 0-dim scalar); a
    /// source without `b` gets a zero bias, which adds nothing (and the notes say so).
    pub fn logit_tensors(&mut self, scale: &str, bias: &str, shape: &[usize]) -> Vec<OutTensor> {
        let Some(logit) = self.model.logit.as_ref().filter(|_| self.two_tower()) else {
            return Vec::new();
        };
        let bias_recipe = match &logit.bias {
            Some(b) => Recipe::Copy(b.clone()),
            None => {
                self.notes.push(
                    "the source has no logit bias b: logit_bias is written as 0, which adds nothing"
                        .to_string(),
                );
                Recipe::Fill { value: 0.0, len: 1 }
            }
        };
        vec![
            OutTensor {
                name: scale.to_string(),
                shape: shape.to_vec(),
                recipe: Recipe::Copy(logit.scale.clone()),
            },
            OutTensor {
                name: bias.to_string(),
                shape: shape.to_vec(),
                recipe: bias_recipe,
            },
        ]
    }

    fn embed_hwio(&self) -> [usize; 4] {
        let a = self.arch();
        [a.patch, a.patch, a.in_chans, a.hidden]
    }

    /// OIHW patch kernel with the input normalisation's scale folded in.
    pub fn patch_kernel(&self) -> Recipe {
        let (scale, _) = self.norm.affine();
        let in_scale = (self.norm != InputNorm::Unit).then(|| scale.to_vec());
        Recipe::ConvKernel {
            src: self.tower().patch.kernel.clone(),
            hwio: self.embed_hwio(),
            in_scale,
        }
    }

    /// Patch bias with the input normalisation's offset folded in.
    pub fn patch_bias(&self) -> Recipe {
        let patch = &self.tower().patch;
        if self.norm == InputNorm::Unit {
            return Recipe::Copy(patch.bias.clone());
        }
        let (_, offset) = self.norm.affine();
        Recipe::PatchBias {
            bias: patch.bias.clone(),
            kernel: patch.kernel.clone(),
            hwio: self.embed_hwio(),
            in_offset: offset.to_vec(),
        }
    }

    /// The output's position-embedding table: its row count and recipe. `class_row` says whether the
    /// target's table has a row for the class token (timm without `no_embed_class`, transformers' ViT and the
    /// CLIP-style layouts); a source whose class token has no position embedding (big_vision `tok`) gets a
    /// zero row there, which adds nothing, so the sum is exact. The grid rows are the source's, resized to
    /// the output grid, or sincos2d computed for it; `fold_patch_bias` adds the patch bias to every grid row
    /// (CLIP-style `conv1` has no bias; adding it after the convolution is the same sum).
    pub fn pos_table(&self, class_row: bool, fold_patch_bias: bool) -> Result<(usize, Recipe)> {
        let a = self.arch();
        let add_to_grid = fold_patch_bias.then(|| Box::new(self.patch_bias()));
        let cells = self.grid.0.saturating_mul(self.grid.1);
        let (grid_rows, source_class_row) = match &self.tower().pos {
            PosEmbed::Table { param, class_row } => (
                Recipe::PosEmbed {
                    src: param.clone(),
                    prefix_rows: usize::from(*class_row),
                    from: a.grid.unwrap_or(self.grid),
                    to: self.grid,
                    dim: a.hidden,
                    method: self.opts.resize,
                    add_to_grid,
                },
                *class_row,
            ),
            PosEmbed::Sincos2d => (
                Recipe::Sincos2d {
                    grid: self.grid,
                    dim: a.hidden,
                    add_to_grid,
                },
                false,
            ),
            // Every fixed-resolution layout asks for its table here; none has a place for a grid the model
            // resizes per image.
            PosEmbed::Grid { grid, .. } => {
                return Err(self.refuse(
                    Part::NaflexTower {
                        patch: a.patch,
                        grid: *grid,
                    },
                    "the layout's tower has a fixed-resolution patch convolution and position table; a NaFlex model converts with --layout hf (Siglip2Model, or Siglip2VisionModel with --tower image) or --layout timm --tower image (NaFlexVit)",
                ))
            }
        };
        let rows = cells.saturating_add(usize::from(class_row));
        match (class_row, source_class_row) {
            (want, have) if want == have => Ok((rows, grid_rows)),
            (true, _) => Ok((
                rows,
                Recipe::Concat(vec![
                    Recipe::Fill {
                        value: 0.0,
                        len: a.hidden,
                    },
                    grid_rows,
                ]),
            )),
            (false, _) => Err(self.refuse(
                Part::ClassTokenPosition,
                "the layout adds none to the class token",
            )),
        }
    }

    /// `vitconv.config`: the sizes and semantics the output declares, as the typed record that `verify` and
    /// `inspect` read back ([`ConfigRecord`]).
    pub fn config(
        &self,
        gelu: DeclaredGelu,
        ln_eps: f64,
        ln_pre: bool,
        head: DeclaredHead,
        head_bias: Option<Vec<f32>>,
    ) -> ConfigRecord {
        let a = self.arch();
        ConfigRecord {
            version: CONFIG_VERSION,
            // A NaFlex output runs at each image's own patch grid: it declares no resolution.
            image_size: self.naflex_grid().is_none().then_some(self.image_size),
            patch_size: a.patch,
            hidden: a.hidden,
            depth: a.depth,
            heads: a.heads,
            mlp: a.mlp,
            classifier: a.classifier,
            num_classes: if self.keep_head { a.num_classes } else { None },
            representation: if self.has_pre_logits() {
                a.representation
            } else {
                None
            },
            gelu,
            layer_norm_eps: ln_eps,
            ln_pre,
            input_norm: NormRecord {
                name: self.norm.as_str().to_string(),
                mean: self.norm.mean().map(f64::from),
                std: self.norm.std().map(f64::from),
            },
            // How the position embedding was resampled, when the output's grid differs from the source's.
            resize: (a.posemb == PosEmbKind::Learned && Some(self.grid) != a.grid)
                .then(|| self.opts.resize.as_str().to_string()),
            posemb: a.posemb,
            class_pos: a.class_token() && a.class_pos,
            source_family: self.model.family.to_string(),
            resnet: a.resnet.as_ref().map(|r| ResnetRecord {
                stages: r.stages.clone(),
                width: r.width,
            }),
            head,
            head_bias,
            dtype: self.opts.dtype.as_str().to_string(),
            patch_embed: a.patch_embed,
            pos_grid: self.naflex_grid().map(|(_, g)| [g.0, g.1]),
            pos_resize: self.naflex_grid().map(|_| NAFLEX_POS_RESIZE.to_string()),
            text: self.text_declaration(),
        }
    }

    /// The text tower's part of `vitconv.config` (none without one): its sizes and the semantics the model
    /// says it computes.
    fn text_declaration(&self) -> Option<TextRecord> {
        let text = self.model.text.as_ref().filter(|_| self.two_tower())?;
        let t = &text.arch;
        Some(TextRecord {
            vocab: t.vocab,
            context: t.context,
            width: t.width,
            depth: t.depth,
            heads: t.heads,
            mlp: t.mlp,
            embed: t.embed,
            pool: TextPool::Last,
            causal: false,
            layer_norm_eps: FLAX_LN_EPS,
            gelu: self.opts.gelu.into(),
            logit_bias: self.model.logit.as_ref().is_some_and(|l| l.bias.is_some()),
            tokenizer: self.tokenizer.as_ref().map(|s| TokenizerRecord {
                kind: s.kind,
                pieces: s.pieces,
                eos_id: s.eos_id,
                pad_id: s.pad_id,
            }),
        })
    }

    /// The class names `--labels` gave (checked against the head kept), if any.
    pub fn labels(&self) -> Option<&[String]> {
        self.opts.labels.as_deref().filter(|_| self.keep_head)
    }

    /// The metadata keys every output carries; layouts add their own.
    pub fn metadata(&self, source_name: &str, config: &ConfigRecord) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("format".to_string(), "pt".to_string());
        m.insert(
            crate::meta::LAYOUT.to_string(),
            self.opts.layout.as_str().to_string(),
        );
        m.insert(crate::meta::SOURCE.to_string(), source_name.to_string());
        if let Some(labels) = self.labels() {
            m.insert(crate::meta::LABELS.to_string(), json!(labels).to_string());
        }
        m.insert(crate::meta::CONFIG.to_string(), config.to_json());
        m.insert(
            crate::meta::SOURCE_NOTES.to_string(),
            self.model.notes.join("\n"),
        );
        if !self.model.left_out.is_empty() {
            // Training state that is not part of the model: how much, and under which roots.
            let mut roots: Vec<&str> = Vec::new();
            for n in &self.model.left_out {
                let root = n.split_inclusive('/').next().unwrap_or(n);
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
            m.insert(
                crate::meta::LEFT_OUT.to_string(),
                json!({"tensors": self.model.left_out.len(), "roots": roots}).to_string(),
            );
        }
        m.insert(
            crate::meta::VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        m
    }

    /// Builds the plan's common part; the layout fills in tensors, python and side files.
    pub fn finish(
        self,
        kind: crate::plan::OutputKind,
        tensors: Vec<OutTensor>,
        mut metadata: BTreeMap<String, String>,
        python: String,
        side_files: Vec<crate::plan::SideFile>,
    ) -> Plan {
        metadata.insert(crate::meta::NOTES.to_string(), self.notes.join("\n"));
        Plan {
            kind,
            tensors,
            dropped: self.dropped,
            metadata,
            notes: self.notes,
            python,
            side_files,
            copied_files: Vec::new(),
            no_folder: None,
        }
    }
}

/// Every tensor of a text tower and the logit scalars, for the list of what `--tower image` leaves out.
fn text_tensors(text: &TextTower, logit: Option<&Logit>) -> Vec<String> {
    let mut names: Vec<String> = vec![text.embedding.tensor.clone(), text.pos.tensor.clone()];
    for b in &text.blocks {
        names.extend(b.params().iter().map(|p| p.tensor.clone()));
    }
    names.extend([
        text.final_norm.scale.tensor.clone(),
        text.final_norm.bias.tensor.clone(),
    ]);
    if let Some(h) = &text.head {
        names.extend([h.kernel.tensor.clone(), h.bias.tensor.clone()]);
    }
    if let Some(l) = logit {
        names.push(l.scale.tensor.clone());
        names.extend(l.bias.iter().map(|b| b.tensor.clone()));
    }
    // Stacked blocks name the same tensor once per block.
    names.sort();
    names.dedup();
    names
}

/// What one tensor of a block holds, in PyTorch's conventions; the shape and transform follow from the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRole {
    /// The LayerNorm before attention.
    Norm1Scale,
    /// The bias of the LayerNorm before attention.
    Norm1Bias,
    /// q, k and v weights `[3D, D]`, fused in that order with heads contiguous.
    QkvWeight,
    /// q, k and v biases `[3D]`, fused in that order.
    QkvBias,
    /// One projection's `[D, D]` weight (q, k, v or out).
    Weight(Proj),
    /// One projection's `[D]` bias (q, k, v or out).
    Bias(Proj),
    /// The LayerNorm before the MLP.
    Norm2Scale,
    /// The bias of the LayerNorm before the MLP.
    Norm2Bias,
    /// The MLP's first dense `[M, D]`.
    Fc1Weight,
    /// The bias `[M]` of the MLP's first dense.
    Fc1Bias,
    /// The MLP's second dense `[D, M]`.
    Fc2Weight,
    /// The bias `[D]` of the MLP's second dense.
    Fc2Bias,
}

/// What one tensor of a MAP head holds, in PyTorch's conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapRole {
    /// The learned query `[1, 1, D]`.
    Probe,
    /// One projection's `[D, D]` weight and bias.
    Weight(Proj),
    /// One projection's `[D]` bias.
    Bias(Proj),
    /// k and v fused `[2D, D]` (timm's `kv`).
    KvWeight,
    /// k and v biases fused `[2D]`.
    KvBias,
    /// q, k and v fused `[3D, D]` (`nn.MultiheadAttention`'s `in_proj`).
    QkvWeight,
    /// q, k and v biases fused `[3D]`.
    QkvBias,
    /// The LayerNorm before the MLP.
    NormScale,
    /// The bias of the LayerNorm before the MLP.
    NormBias,
    /// The MLP's first dense `[M, D]`.
    Fc1Weight,
    /// The bias `[M]` of the MLP's first dense.
    Fc1Bias,
    /// The MLP's second dense `[D, M]`.
    Fc2Weight,
    /// The bias `[D]` of the MLP's second dense.
    Fc2Bias,
}

/// What one tensor of a text tower (outside its blocks) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRole {
    /// The token embedding `[vocab, width]`.
    Token,
    /// The position embedding `[context, width]` (the source's `[1, context, width]` without its batch axis).
    Position,
    /// The final LayerNorm's scale.
    NormScale,
    /// The final LayerNorm's bias.
    NormBias,
    /// The head as a linear layer's `[embed, width]` weight.
    HeadWeight,
    /// The head's `[embed]` bias.
    HeadBias,
}

/// A layout's text tower outside its blocks: each target key with the role it holds.
pub type TextTable = [(&'static str, TextRole)];

/// A layout's MAP head: each target key with the role it holds.
pub type MapTable = [(&'static str, MapRole)];

/// A layout's block: each target key (`{i}` = block index) with the role it holds, in state-dict order.
pub type BlockTable = [(&'static str, BlockRole)];

/// Expands `{i}` in a name template.
pub fn name(template: &str, i: usize) -> String {
    template.replace("{i}", &i.to_string())
}

/// Writes a string as a Python literal the way Python's `repr` does: single quotes unless the text holds a
/// single quote and no double quote, backslashes and the chosen quote escaped, `\n`, `\r`, `\t` and other
/// control characters as escapes, printable non-ASCII letters as they are. A path pasted into printed Python
/// through this stays one literal whatever it holds.
pub fn py_str(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len().saturating_add(2));
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            // C1 controls and the line and paragraph separators: Python's repr escapes the non-printable.
            c if (0x80..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Formats a float for Python source (`1e-06`, `2.0`).
pub fn py_float(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// `mlp / hidden` as the float ratio timm and open_clip take, checked to give back `mlp` exactly
/// (both compute `int(hidden * ratio)`).
pub fn mlp_ratio(prep: &Prepared<'_>) -> Result<f64> {
    let a = prep.arch();
    let ratio = a.mlp as f64 / a.hidden as f64;
    if (a.hidden as f64 * ratio) as usize != a.mlp {
        return Err(prep.refuse(
            Part::MlpWidth {
                mlp: a.mlp,
                hidden: a.hidden,
            },
            "the layout derives the MLP width from a float ratio that cannot express it",
        ));
    }
    Ok(ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_resolution_is_the_round_one_in_the_same_grid() {
        assert_eq!(published_size(378, 14), Some(384), "So400m/14 at 384 px");
        assert_eq!(published_size(224, 14), None, "already round");
        assert_eq!(published_size(224, 16), None);
        assert_eq!(published_size(32, 8), None);
        // 27 x 8 = 216: no multiple of 32 in 217..224 patches to 27 cells.
        assert_eq!(published_size(216, 8), None);
        for (px, stride) in [(378, 14), (252, 14), (476, 14)] {
            let n = published_size(px, stride).expect("a round size");
            assert_eq!(n / stride, px / stride, "{px}/{stride}: same grid");
        }
    }

    /// Every published model fits at `MAX_IMAGE_SIZE`; a small patch there, or a width too large for the
    /// grid, is refused with the largest size that fits, which itself fits.
    #[test]
    fn position_tables_are_bounded_in_cells_and_values() {
        let side = |stride: usize| MAX_IMAGE_SIZE / stride;
        for (stride, width) in [(14, 1664), (14, 6144), (16, 1280), (8, 768), (32, 1024)] {
            let g = (side(stride), side(stride));
            assert!(
                check_table(g, MAX_IMAGE_SIZE, stride, width).is_ok(),
                "{stride} {width}"
            );
        }
        let refusal =
            |grid, image_size, stride, width| match check_table(grid, image_size, stride, width) {
                Err(Error::PositionTableTooLarge {
                    what,
                    found,
                    limit,
                    max_size,
                    ..
                }) => (what, found, limit, max_size),
                other => panic!("not refused: {other:?}"),
            };
        // Patch 1 at 8192 px: 67 million cells; 1024 px is the most for this patch.
        assert_eq!(
            refusal((8192, 8192), 8192, 1, 64),
            ("grid cells", Some(8192 * 8192), MAX_GRID_CELLS, 1024)
        );
        // Patch 8 at 8192 px is within the cells, but not with a width of 4096: 724 x 724 cells fit.
        assert_eq!(
            refusal((1024, 1024), 8192, 8, 4096),
            (
                "position-table values",
                Some(1024 * 1024 * 4096),
                MAX_TABLE_VALUES,
                724 * 8
            )
        );
        assert!(check_table((724, 724), 724 * 8, 8, 4096).is_ok());
        // Counts that overflow are refused, not wrapped.
        assert_eq!(refusal((usize::MAX, 2), 8192, 1, 64).1, None);
        assert_eq!(refusal((1024, 1024), 8192, 8, usize::MAX).1, None);
        // The message says what to do, on one line.
        let e = check_table((8192, 8192), 8192, 1, 64)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("67108864 grid cells")
                && e.contains("over the limit of 1048576 grid cells")
                && e.contains("at most 1024 px"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
    }
}
