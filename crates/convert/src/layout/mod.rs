//! Target layouts, one module each, and the layout-independent decisions they share (grid, head, input norm).
//!
//! A layout module holds a reviewable `const` table of its tensor names and a `plan` function that turns a
//! [`Prepared`] source into a [`Plan`]. Adding a layout means adding a module and a match arm in [`plan`];
//! no other layout changes.

pub mod clip;
mod clip_style;
pub mod hf;
pub mod hf_files;
pub mod hf_siglip;
pub mod open_clip;
pub mod recognise;
pub mod timm;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::arch::{Arch, PosEmbKind};
use crate::error::{Error, Result};
use crate::model::{Attention, Block, Dense, MapHead, Model, Param, Pool, PosEmbed, Proj, Tower};
use crate::options::{HeadChoice, InputNorm, Layout, Options};
use crate::plan::{Fetch, OutTensor, Plan, Recipe};
use recognise::{Recognised, Shapes};
use vitconv_tensors::TensorInfo;

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
    /// Input resolution of the output, in pixels.
    pub image_size: usize,
    /// Whether `head` is written (false with `--drop-head`, `--num-classes 0`, or no head in the source).
    pub keep_head: bool,
    /// The input normalisation the output expects (folded into the patch embedding where it differs from the source's).
    pub norm: InputNorm,
    /// What was resolved so far, one sentence each (they join the plan's notes).
    pub notes: Vec<String>,
    /// Source tensors left out so far (training state, a dropped head).
    pub dropped: Vec<String>,
}

impl<'a> Prepared<'a> {
    /// Resolves image size, head and input normalisation against the source.
    pub fn new(model: &'a Model, opts: &'a Options) -> Result<Self> {
        let tower = &model.image;
        let arch = &tower.arch;
        let stride = arch.stride();
        let (grid, image_size) = match (opts.image_size, arch.grid, arch.image_size()) {
            (None, Some(grid), Some(px)) => (grid, px),
            (None, _, _) => return Err(Error::ImageSizeRequired { stride }),
            (Some(n), _, _) => {
                if n == 0 || stride == 0 || n % stride != 0 {
                    return Err(Error::ImageSizeNotMultiple { size: n, stride });
                }
                ((n / stride, n / stride), n)
            }
        };
        let mut notes = Vec::new();
        match (arch.grid, &tower.pos) {
            (_, PosEmbed::Sincos2d) => notes.push(format!(
                "position embedding: sincos2d computed for the {}x{} grid ({image_size} px)",
                grid.0, grid.1
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
        let keep_head = match (opts.head, arch.num_classes) {
            (HeadChoice::Keep, c) => c.is_some(),
            (HeadChoice::NumClasses(0) | HeadChoice::Drop, _) => false,
            (HeadChoice::NumClasses(n), Some(c)) if n == c => true,
            (HeadChoice::NumClasses(n), c) => {
                return Err(Error::NumClassesMismatch { asked: n, found: c })
            }
        };
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
        let norm = opts.input_norm();
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
        Ok(Prepared {
            model,
            opts,
            grid,
            image_size,
            keep_head,
            norm,
            notes,
            dropped,
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
        Ok(())
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

    /// A refusal for this layout.
    pub fn refuse(&self, what: impl Into<String>, why: impl Into<String>) -> Error {
        Error::Refused {
            layout: self.opts.layout.as_str(),
            what: what.into(),
            why: why.into(),
        }
    }

    fn hd(&self) -> (usize, usize) {
        let a = self.arch();
        (
            a.hidden,
            a.heads.unwrap_or(1) * a.head_dim().unwrap_or(a.hidden),
        )
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
        let (d, hd) = self.hd();
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
        let a = self.arch();
        let (rows, cols, dense) = if layer == 0 {
            (a.hidden, a.mlp, &mlp[0])
        } else {
            (a.mlp, a.hidden, &mlp[1])
        };
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
        let a = self.arch();
        let (d, m) = (a.hidden, a.mlp);
        let copy = |p: &Param| Recipe::Copy(p.clone());
        match role {
            BlockRole::Norm1Scale => (vec![d], copy(&b.norm1.scale)),
            BlockRole::Norm1Bias => (vec![d], copy(&b.norm1.bias)),
            BlockRole::QkvWeight => (vec![3 * d, d], self.qkv_weight(&b.attn)),
            BlockRole::QkvBias => (vec![3 * d], self.qkv_bias(&b.attn)),
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
                format!(
                    "a MAP head with {} heads and MLP {} (the encoder has {} and {})",
                    heads.unwrap_or(0),
                    mlp.unwrap_or(0),
                    a.heads.unwrap_or(0),
                    a.mlp
                ),
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
                        vec![2 * d, d],
                        Recipe::Concat(vec![
                            self.proj_weight(&map.attn, Proj::Key),
                            self.proj_weight(&map.attn, Proj::Value),
                        ]),
                    ),
                    MapRole::KvBias => (
                        vec![2 * d],
                        Recipe::Concat(vec![
                            self.proj_bias(&map.attn, Proj::Key),
                            self.proj_bias(&map.attn, Proj::Value),
                        ]),
                    ),
                    MapRole::QkvWeight => (vec![3 * d, d], self.qkv_weight(&map.attn)),
                    MapRole::QkvBias => (vec![3 * d], self.qkv_bias(&map.attn)),
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
                "a class token with a position embedding",
                "the layout adds none to the class token",
            )),
        }
    }

    /// `vitconv.config`: the semantics the output declares, shared keys per the project brief.
    pub fn config(
        &self,
        gelu: &str,
        ln_eps: f64,
        ln_pre: bool,
        head: &str,
        head_bias: Option<Vec<f32>>,
    ) -> Value {
        let a = self.arch();
        json!({
            "image_size": self.image_size,
            "patch_size": a.patch,
            "hidden": a.hidden,
            "depth": a.depth,
            "heads": a.heads,
            "mlp": a.mlp,
            "classifier": a.classifier.as_str(),
            "num_classes": if self.keep_head { a.num_classes } else { None },
            "representation": if self.has_pre_logits() { a.representation } else { None },
            "gelu": gelu,
            "layer_norm_eps": ln_eps,
            "ln_pre": ln_pre,
            "input_norm": {"name": self.norm.as_str(), "mean": self.norm.mean(), "std": self.norm.std()},
            // How the position embedding was resampled, when the output's grid differs from the source's.
            "resize": (a.posemb == PosEmbKind::Learned && Some(self.grid) != a.grid)
                .then(|| self.opts.resize.as_str()),
            "posemb": a.posemb,
            "class_pos": a.class_token() && a.class_pos,
            "source_family": self.model.family,
            "resnet": a.resnet.as_ref().map(|r| json!({"stages": r.stages, "width": r.width})),
            "head": head,
            "head_bias": head_bias,
            "dtype": self.opts.dtype.as_str(),
        })
    }

    /// The metadata keys every output carries; layouts add their own.
    pub fn metadata(&self, source_name: &str, config: &Value) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("format".to_string(), "pt".to_string());
        m.insert(
            "vitconv.layout".to_string(),
            self.opts.layout.as_str().to_string(),
        );
        m.insert("vitconv.source".to_string(), source_name.to_string());
        m.insert("vitconv.config".to_string(), config.to_string());
        m.insert(
            "vitconv.source_notes".to_string(),
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
                "vitconv.left_out".to_string(),
                json!({"tensors": self.model.left_out.len(), "roots": roots}).to_string(),
            );
        }
        m.insert(
            "vitconv.version".to_string(),
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
        metadata.insert("vitconv.notes".to_string(), self.notes.join("\n"));
        Plan {
            kind,
            tensors,
            dropped: self.dropped,
            metadata,
            notes: self.notes,
            python,
            side_files,
        }
    }
}

/// One target layout: the module that plans its output and the one that recognises its files.
pub struct LayoutDef {
    /// The layout's name on the command line.
    pub layout: Layout,
    /// The output plan for a prepared source (`fetch` reads the few values a layout records, such as a
    /// head bias that has no tensor of its own).
    pub plan: fn(Prepared<'_>, &dyn Fetch, &str) -> Result<Plan>,
    /// Recognises a converted file of this layout for `inspect`.
    pub recognise: fn(&Shapes<'_>) -> Option<Recognised>,
}

/// Every target layout, in the order `inspect` tries to recognise them. Adding a layout means a module, a
/// [`Layout`] name and a line here.
pub const LAYOUTS: &[LayoutDef] = &[
    LayoutDef {
        layout: Layout::Timm,
        plan: timm::plan,
        recognise: timm::recognise,
    },
    LayoutDef {
        layout: Layout::Hf,
        plan: hf::plan,
        recognise: hf::recognise,
    },
    LayoutDef {
        layout: Layout::OpenClip,
        plan: open_clip::plan,
        recognise: open_clip::recognise,
    },
    LayoutDef {
        layout: Layout::Clip,
        plan: clip::plan,
        recognise: clip::recognise,
    },
];

/// Builds the plan for the chosen layout.
pub fn plan(model: &Model, opts: &Options, fetch: &dyn Fetch, source_name: &str) -> Result<Plan> {
    let prep = Prepared::new(model, opts)?;
    let def = LAYOUTS
        .iter()
        .find(|d| d.layout == opts.layout)
        .ok_or(Error::NoLayoutModule {
            layout: opts.layout.as_str(),
        })?;
    (def.plan)(prep, fetch, source_name)
}

/// Recognises a PyTorch state dict as one of the layouts, for `inspect`.
pub fn recognise(tensors: &[TensorInfo]) -> Option<Recognised> {
    let s = recognise::shapes(tensors);
    LAYOUTS.iter().find_map(|d| (d.recognise)(&s))
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

/// A layout's MAP head: each target key with the role it holds.
pub type MapTable = [(&'static str, MapRole)];

/// A layout's block: each target key (`{i}` = block index) with the role it holds, in state-dict order.
pub type BlockTable = [(&'static str, BlockRole)];

/// Expands `{i}` in a name template.
pub fn name(template: &str, i: usize) -> String {
    template.replace("{i}", &i.to_string())
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
            format!("an MLP of {} for hidden {}", a.mlp, a.hidden),
            "the layout derives the MLP width from a float ratio that cannot express it",
        ));
    }
    Ok(ratio)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vitconv_tensors::{DType, TensorFile, TensorInfo};

    use super::*;
    use crate::options::{Gelu, ProjChoice};
    use crate::sources::vit_jax::read as detect_vit_jax;
    use crate::sources::vit_jax::tests::{fixtures, golden_file, GOLDEN, VARIANTS};

    const LAYOUTS: [Layout; 4] = [Layout::Timm, Layout::Hf, Layout::OpenClip, Layout::Clip];

    fn plan_for(case: &str, opts: &Options) -> Result<Plan> {
        let file = golden_file(case);
        let src = detect_vit_jax(file.tensors())?;
        let p = plan(&src, opts, &file, "checkpoint.npz")?;
        p.check_complete(&src.shapes, &src.recognised)?;
        Ok(p)
    }

    fn refusal(case: &str, opts: &Options) -> String {
        match plan_for(case, opts) {
            Ok(_) => panic!("{case} to {} was accepted", opts.layout.as_str()),
            Err(e) => e.to_string(),
        }
    }

    /// Which golden cases each layout can hold with default options.
    fn holds(layout: Layout, case: &str) -> bool {
        let hybrid = case.starts_with("hybrid");
        match layout {
            Layout::Timm => case != "vit-prelogits",
            Layout::Hf => !hybrid && case != "vit-prelogits",
            Layout::OpenClip => !hybrid && case != "vit-gap" && case != "vit-prelogits",
            Layout::Clip => case == "vit-mlp4",
        }
    }

    #[test]
    fn every_golden_case_plans_completely_where_the_layout_holds_it() {
        for case in GOLDEN.iter().chain(VARIANTS) {
            for layout in LAYOUTS {
                let opts = Options::new(layout);
                match plan_for(case, &opts) {
                    Ok(p) => {
                        assert!(
                            holds(layout, case),
                            "{case} -> {layout:?} should be refused"
                        );
                        let config: serde_json::Value =
                            serde_json::from_str(&p.metadata["vitconv.config"])
                                .expect("config is JSON");
                        assert_eq!(p.metadata["vitconv.layout"], layout.as_str());
                        assert_eq!(p.metadata["format"], "pt");
                        assert_eq!(config["input_norm"]["name"], opts.input_norm().as_str());
                        // Each output's recipe produces exactly its shape's element count.
                        let file = golden_file(case);
                        for t in &p.tensors {
                            let n: usize = t.shape.iter().product();
                            let v = t
                                .recipe
                                .eval(&file)
                                .unwrap_or_else(|e| panic!("{case} {}: {e}", t.name));
                            assert_eq!(v.len(), n, "{case} -> {layout:?}: {}", t.name);
                        }
                    }
                    Err(e) => assert!(!holds(layout, case), "{case} -> {layout:?} refused: {e}"),
                }
            }
        }
    }

    #[test]
    fn outputs_are_recognised_as_their_family() {
        let want = [
            (Layout::Timm, "timm"),
            (Layout::Hf, "transformers"),
            (Layout::OpenClip, "open_clip"),
            (Layout::Clip, "openai_clip"),
        ];
        for (layout, family) in want {
            let p =
                plan_for("vit-mlp4", &Options::new(layout)).expect("vit-mlp4 converts everywhere");
            let infos: Vec<TensorInfo> = p
                .tensors
                .iter()
                .map(|t| TensorInfo {
                    name: t.name.clone(),
                    dtype: DType::F32,
                    shape: t.shape.clone(),
                    stored_as: None,
                })
                .collect();
            let s = crate::summarize(&infos)
                .unwrap_or_else(|| panic!("{layout:?} output not recognised"));
            assert_eq!(s.family, family);
            assert!(
                s.architecture.contains("hidden 64, 2 layers")
                    && s.architecture.contains("mlp 256"),
                "{}",
                s.architecture
            );
            assert!(
                s.architecture.contains("32 px (4x4 grid"),
                "{}",
                s.architecture
            );
        }
    }

    #[test]
    fn refusals_name_the_layout_and_the_way_out() {
        let hf = Options::new(Layout::Hf);
        assert!(refusal("vit-gap", &Options::new(Layout::Clip)).contains("cannot hold a gap"));
        assert!(refusal("hybrid-r2", &hf).contains("no ViT-hybrid"));
        assert!(refusal("vit-prelogits", &hf).contains("--drop-head"));
        for layout in [Layout::OpenClip, Layout::Clip] {
            let o = Options::new(layout);
            assert!(refusal("vit-gap", &o).contains("gap"), "{layout:?}");
            assert!(refusal("hybrid-root", &o).contains("hybrid"), "{layout:?}");
        }
        assert!(refusal("vit-prelogits", &Options::new(Layout::OpenClip)).contains("--drop-head"));
        assert!(refusal("vit-token", &Options::new(Layout::Clip)).contains("4x"));
        assert!(refusal("vit-prelogits", &Options::new(Layout::Timm)).contains("--drop-head"));
    }

    #[test]
    fn option_errors() {
        let mut o = Options::new(Layout::Timm);
        o.image_size = Some(100);
        assert!(refusal("vit-token", &o).contains("--image-size"));
        let mut o = Options::new(Layout::Timm);
        o.head = HeadChoice::NumClasses(7);
        assert!(refusal("vit-token", &o).contains("--num-classes"));
        let mut o = Options::new(Layout::Timm);
        o.input_norm = Some(InputNorm::Imagenet);
        assert!(refusal("hybrid-r2", &o).contains("--input-norm"));
        let mut o = Options::new(Layout::OpenClip);
        o.head = HeadChoice::Drop;
        o.proj = Some(ProjChoice::Head);
        assert!(refusal("vit-token", &o).contains("--proj head"));
    }

    #[test]
    fn dropping_is_recorded_never_silent() {
        let mut o = Options::new(Layout::Timm);
        o.head = HeadChoice::Drop;
        let p = plan_for("vit-prelogits", &o).expect("--drop-head makes a feature extractor");
        assert!(p.tensors.iter().all(|t| !t.name.starts_with("head")));
        assert_eq!(p.dropped.len(), 4, "{:?}", p.dropped);
        assert!(p.metadata["vitconv.notes"].contains("pre_logits"));
        let kwargs: serde_json::Value =
            serde_json::from_str(&p.metadata["vitconv.timm_kwargs"]).expect("json");
        assert_eq!(kwargs["num_classes"], 0);
        // hf keeps pre_logits as ViTModel's pooler instead.
        let mut o = Options::new(Layout::Hf);
        o.head = HeadChoice::Drop;
        let p = plan_for("vit-prelogits", &o).expect("hf feature extractor");
        assert!(p
            .tensors
            .iter()
            .any(|t| t.name == "pooler.dense.weight" && t.shape == [40, 48]));
        assert_eq!(p.dropped.len(), 2, "{:?}", p.dropped);
    }

    /// An in-memory source with recognisable values.
    struct Mem(BTreeMap<String, Vec<f32>>);

    impl Fetch for Mem {
        fn fetch(&self, param: &Param) -> Result<Vec<f32>> {
            self.0
                .get(&param.tensor)
                .cloned()
                .ok_or_else(|| Error::MissingTensor {
                    recognised: "test map".to_string(),
                    tensor: param.describe(),
                    role: None,
                })
        }
    }

    #[test]
    fn fused_qkv_is_q_k_v_with_heads_contiguous() {
        let file = golden_file("vit-token");
        let src = detect_vit_jax(file.tensors()).expect("vit-token");
        let (d, h, dh) = (64usize, 4usize, 16usize);
        // value = (which projection) * 1e6 + input * 1e3 + (head * dh + dim), so every entry says where it came from.
        let mut mem = BTreeMap::new();
        for (pi, p) in [Proj::Query, Proj::Key, Proj::Value]
            .into_iter()
            .enumerate()
        {
            let k: Vec<f32> = (0..d * h * dh)
                .map(|x| (pi * 1_000_000 + (x / (h * dh)) * 1000 + x % (h * dh)) as f32)
                .collect();
            mem.insert(src.image.blocks[0].attn.proj(p).kernel.tensor.clone(), k);
        }
        let opts = Options::new(Layout::Timm);
        let prep = Prepared::new(&src, &opts).expect("prepared");
        let w = prep
            .qkv_weight(&src.image.blocks[0].attn)
            .eval(&Mem(mem))
            .expect("qkv");
        assert_eq!(w.len(), 3 * d * d);
        for row in 0..3 * d {
            for col in 0..d {
                let (pi, out) = (row / d, row % d);
                assert_eq!(
                    w[row * d + col],
                    (pi * 1_000_000 + col * 1000 + out) as f32,
                    "row {row} col {col}"
                );
            }
        }
    }

    #[test]
    fn out_projection_maps_heads_to_columns() {
        let file = golden_file("vit-token");
        let src = detect_vit_jax(file.tensors()).expect("vit-token");
        let (d, hd) = (64usize, 64usize);
        let k: Vec<f32> = (0..hd * d)
            .map(|x| ((x / d) * 1000 + x % d) as f32)
            .collect();
        let mem = Mem([(src.image.blocks[0].attn.out.kernel.tensor.clone(), k)]
            .into_iter()
            .collect());
        let opts = Options::new(Layout::Timm);
        let prep = Prepared::new(&src, &opts).expect("prepared");
        let w = prep
            .proj_weight(&src.image.blocks[0].attn, Proj::Out)
            .eval(&mem)
            .expect("out");
        // torch weight [out, in]: out = model dim, in = head * dh + dim.
        for o in 0..d {
            for i in 0..hd {
                assert_eq!(w[o * hd + i], (i * 1000 + o) as f32);
            }
        }
    }

    #[test]
    fn vit_jax_resize_equals_vit_jax_interpolate_posembed() {
        let file = golden_file("vit-token");
        let src = detect_vit_jax(file.tensors()).expect("vit-token");
        let mut opts = Options::new(Layout::Timm);
        opts.image_size = Some(96);
        let prep = Prepared::new(&src, &opts).expect("prepared");
        assert_eq!(prep.grid, (6, 6));
        let (_, recipe) = prep.pos_table(true, false).expect("table");
        let got = recipe.eval(&file).expect("resized");
        let golden = TensorFile::open(fixtures().join("vit-token/resized_96_pos_embedding.npy"))
            .expect("golden npy");
        let name = golden
            .tensors()
            .first()
            .map(|t| t.name.clone())
            .expect("one array");
        let want = golden.read_f32(&name).expect("golden values");
        assert_eq!(got.len(), want.len());
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-6, "max |ours - vit_jax| = {max}");
        // The class-token row is untouched.
        let orig = file
            .read_f32("Transformer/posembed_input/pos_embedding")
            .expect("source");
        assert_eq!(&got[..64], &orig[..64]);
    }

    #[test]
    fn gelu_and_norm_reach_the_configs() {
        let mut o = Options::new(Layout::Hf);
        o.gelu = Gelu::Erf;
        o.input_norm = Some(InputNorm::Imagenet);
        let p = plan_for("vit-token", &o).expect("hf");
        let cfg = p
            .side_files
            .iter()
            .find(|f| f.name == "config.json")
            .expect("config.json");
        assert!(
            cfg.contents.contains("\"hidden_act\": \"gelu\""),
            "{}",
            cfg.contents
        );
        let pre = p
            .side_files
            .iter()
            .find(|f| f.name == "preprocessor_config.json")
            .expect("preprocessor");
        assert!(pre.contents.contains("0.229"), "{}", pre.contents);
        assert!(p.notes.iter().any(|n| n.contains("imagenet")));
    }
}
