//! The recipes for each role of a layout's tables: attention (fused q/k/v, k/v, or one projection) and MLP
//! weights as PyTorch's `[out, in]`, a block, the MAP head, the text tower and the logit scalars.

use super::tables::{name, BlockRole, BlockTable, MapRole, MapTable, TextRole, TextTable};
use super::Prepared;
use crate::error::{Part, Result};
use crate::model::{Attention, Block, Dense, MapHead, Norm, Param, Pool, Proj};
use crate::plan::{OutTensor, Recipe};

/// A dense `[features, out]` as an `nn.Linear` named `weight` and `bias`: the kernel transposed to `[out,
/// features]`, the bias as it is: the timm and transformers heads, poolers and projections.
pub fn linear(
    dense: &Dense,
    features: usize,
    out: usize,
    weight: &str,
    bias: &str,
) -> [OutTensor; 2] {
    [
        OutTensor {
            name: weight.to_string(),
            shape: vec![out, features],
            recipe: Recipe::Transpose {
                src: dense.kernel.clone(),
                rows: features,
                cols: out,
            },
        },
        OutTensor {
            name: bias.to_string(),
            shape: vec![out],
            recipe: Recipe::Copy(dense.bias.clone()),
        },
    ]
}

/// A LayerNorm of `width` as its `weight` and `bias` tensors, copied as they are: every layout's final norm.
pub fn norm_pair(norm: &Norm, width: usize, weight: &str, bias: &str) -> [OutTensor; 2] {
    [
        OutTensor {
            name: weight.to_string(),
            shape: vec![width],
            recipe: Recipe::Copy(norm.scale.clone()),
        },
        OutTensor {
            name: bias.to_string(),
            shape: vec![width],
            recipe: Recipe::Copy(norm.bias.clone()),
        },
    ]
}

impl<'a> Prepared<'a> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::layout::prepared::tests::{model, opts};
    use crate::model::Model;
    use crate::options::{Layout, Options, TowerChoice};

    /// A transposed source kernel, as the recipes write one.
    fn transpose(src: &Param, rows: usize, cols: usize) -> Recipe {
        Recipe::Transpose {
            src: src.clone(),
            rows,
            cols,
        }
    }

    fn copy(p: &Param) -> Recipe {
        Recipe::Copy(p.clone())
    }

    /// The `Refused` part of an error, where it is one.
    fn refused_part(e: Option<Error>) -> Part {
        match e {
            Some(Error::Refused { what, .. }) => what,
            other => panic!("not a layout refusal: {other:?}"),
        }
    }

    #[test]
    fn block_roles_have_pytorch_shapes_and_recipes() {
        let m = model("vit-token");
        let o = Options::new(Layout::Timm);
        let p = Prepared::new(&m, &o).expect("prepared");
        let b = &m.image.blocks[0];
        let (a, d, mlp) = (&b.attn, 64, 128);
        let want = [
            (BlockRole::Norm1Scale, vec![d], copy(&b.norm1.scale)),
            (BlockRole::Norm1Bias, vec![d], copy(&b.norm1.bias)),
            (
                BlockRole::QkvWeight,
                vec![3 * d, d],
                Recipe::Concat(vec![
                    transpose(&a.query.kernel, d, d),
                    transpose(&a.key.kernel, d, d),
                    transpose(&a.value.kernel, d, d),
                ]),
            ),
            (
                BlockRole::QkvBias,
                vec![3 * d],
                Recipe::Concat(vec![
                    copy(&a.query.bias),
                    copy(&a.key.bias),
                    copy(&a.value.bias),
                ]),
            ),
            (
                BlockRole::Weight(Proj::Key),
                vec![d, d],
                transpose(&a.key.kernel, d, d),
            ),
            (BlockRole::Bias(Proj::Out), vec![d], copy(&a.out.bias)),
            (BlockRole::Norm2Scale, vec![d], copy(&b.norm2.scale)),
            (BlockRole::Norm2Bias, vec![d], copy(&b.norm2.bias)),
            (
                BlockRole::Fc1Weight,
                vec![mlp, d],
                transpose(&b.mlp[0].kernel, d, mlp),
            ),
            (BlockRole::Fc1Bias, vec![mlp], copy(&b.mlp[0].bias)),
            (
                BlockRole::Fc2Weight,
                vec![d, mlp],
                transpose(&b.mlp[1].kernel, mlp, d),
            ),
            (BlockRole::Fc2Bias, vec![d], copy(&b.mlp[1].bias)),
        ];
        for (role, shape, recipe) in want {
            assert_eq!(p.block_role(role, b), (shape, recipe), "{role:?}");
        }
    }

    /// The q/k/v kernels are `[D, H * Dh]` and the out kernel `[H * Dh, D]` before transposing: with
    /// `H * Dh` other than `D` the two are told apart.
    #[test]
    fn projection_weights_transpose_by_the_heads_width() {
        let mut m = model("vit-token");
        m.image.blocks[0].attn.query.kernel.shape = vec![64, 2, 16];
        let o = Options::new(Layout::Timm);
        let p = Prepared::new(&m, &o).expect("prepared");
        let a = &m.image.blocks[0].attn;
        assert_eq!(
            p.proj_weight(a, Proj::Value),
            transpose(&a.value.kernel, 64, 32)
        );
        assert_eq!(
            p.proj_weight(a, Proj::Out),
            transpose(&a.out.kernel, 32, 64)
        );
    }

    #[test]
    fn block_tensors_expand_the_names_in_table_order() {
        const TABLE: &BlockTable = &[
            ("blocks.{i}.attn.qkv.weight", BlockRole::QkvWeight),
            ("blocks.{i}.norm1.weight", BlockRole::Norm1Scale),
            ("blocks.{i}.mlp.fc2.bias", BlockRole::Fc2Bias),
        ];
        let m = model("vit-token");
        let o = Options::new(Layout::Timm);
        let p = Prepared::new(&m, &o).expect("prepared");
        let b = &m.image.blocks[1];
        let out = p.block_tensors(TABLE, "visual.", 1, b);
        let names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "visual.blocks.1.attn.qkv.weight",
                "visual.blocks.1.norm1.weight",
                "visual.blocks.1.mlp.fc2.bias"
            ]
        );
        for (t, (_, role)) in out.iter().zip(TABLE) {
            assert_eq!((t.shape.clone(), t.recipe.clone()), p.block_role(*role, b));
        }
    }

    #[test]
    fn a_map_head_is_taken_where_the_encoder_sizes_are_its_own() {
        let vit = model("vit-token");
        let o = Options::new(Layout::Timm);
        let p = Prepared::new(&vit, &o).expect("prepared");
        assert!(matches!(p.map_head(), Ok(None)), "token pooling has none");
        let map = model("big_vision/bv-vit-map-scan");
        let p = Prepared::new(&map, &o).expect("prepared");
        assert!(matches!(p.map_head(), Ok(Some(_))));
        let mut other = model("big_vision/bv-vit-map-scan");
        other.image.arch.heads = Some(4);
        let p = Prepared::new(&other, &o).expect("prepared");
        assert_eq!(
            refused_part(p.map_head().err()),
            Part::MapHeadSizes {
                heads: 3,
                mlp: 192,
                encoder_heads: 4,
                encoder_mlp: 192
            }
        );
    }

    #[test]
    fn map_tables_fuse_kv_and_qkv_in_order() {
        const TABLE: &MapTable = &[
            ("probe", MapRole::Probe),
            ("q.weight", MapRole::Weight(Proj::Query)),
            ("kv.weight", MapRole::KvWeight),
            ("kv.bias", MapRole::KvBias),
            ("in_proj_weight", MapRole::QkvWeight),
            ("in_proj_bias", MapRole::QkvBias),
            ("norm.weight", MapRole::NormScale),
            ("mlp.fc1.weight", MapRole::Fc1Weight),
            ("mlp.fc2.weight", MapRole::Fc2Weight),
        ];
        let m = model("big_vision/bv-vit-map-scan");
        let o = Options::new(Layout::Timm);
        let p = Prepared::new(&m, &o).expect("prepared");
        let map = p.map_head().expect("sizes match").expect("a MAP head");
        let out = p.map_tensors(TABLE, "head.", map);
        let (d, mlp, a) = (48, 192, &map.attn);
        let got: Vec<(&str, &[usize])> = out
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("head.probe", &[1, 1, d][..]),
                ("head.q.weight", &[d, d]),
                ("head.kv.weight", &[2 * d, d]),
                ("head.kv.bias", &[2 * d]),
                ("head.in_proj_weight", &[3 * d, d]),
                ("head.in_proj_bias", &[3 * d]),
                ("head.norm.weight", &[d]),
                ("head.mlp.fc1.weight", &[mlp, d]),
                ("head.mlp.fc2.weight", &[d, mlp]),
            ]
        );
        assert_eq!(out[0].recipe, copy(&map.probe));
        assert_eq!(
            out[2].recipe,
            Recipe::Concat(vec![
                transpose(&a.key.kernel, d, d),
                transpose(&a.value.kernel, d, d)
            ])
        );
        assert_eq!(
            out[3].recipe,
            Recipe::Concat(vec![copy(&a.key.bias), copy(&a.value.bias)])
        );
        assert_eq!(out[4].recipe, p.qkv_weight(a));
        assert_eq!(out[7].recipe, transpose(&map.mlp[0].kernel, d, mlp));
    }

    const TEXT: &TextTable = &[
        ("tok", TextRole::Token),
        ("pos", TextRole::Position),
        ("norm.weight", TextRole::NormScale),
        ("norm.bias", TextRole::NormBias),
        ("proj.weight", TextRole::HeadWeight),
        ("proj.bias", TextRole::HeadBias),
    ];
    const TEXT_BLOCK: &BlockTable = &[("layers.{i}.fc1.weight", BlockRole::Fc1Weight)];

    /// The names `text_tensors` gives `m` under `o`, or its refusal.
    fn text_names(
        m: &Model,
        o: &Options,
        table: &TextTable,
        optional: bool,
    ) -> Result<Vec<String>> {
        let p = Prepared::new(m, o).expect("prepared");
        let out = p.text_tensors(table, TEXT_BLOCK, "text.", optional)?;
        Ok(out.into_iter().map(|t| t.name).collect())
    }

    #[test]
    fn text_tensors_put_the_embeddings_first_and_the_norm_and_head_last() {
        let m = model("big_vision/siglip-tiny");
        let o = Options::new(Layout::Hf);
        let p = Prepared::new(&m, &o).expect("prepared");
        let out = p
            .text_tensors(TEXT, TEXT_BLOCK, "text.", false)
            .expect("the table holds the head");
        let got: Vec<(&str, &[usize])> = out
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("tok", &[100, 64][..]),
                ("pos", &[8, 64]),
                ("text.layers.0.fc1.weight", &[256, 64]),
                ("text.layers.1.fc1.weight", &[256, 64]),
                ("norm.weight", &[64]),
                ("norm.bias", &[64]),
                ("proj.weight", &[64, 64]),
                ("proj.bias", &[64]),
            ]
        );
        let text = m.text.as_ref().expect("a text tower");
        let head = text.head.as_ref().expect("a text head");
        assert_eq!(out[6].recipe, transpose(&head.kernel, 64, 64));
        // The image tower alone has no text tensors.
        let image = opts(Layout::Hf, |o| o.tower = TowerChoice::Image);
        assert_eq!(text_names(&m, &image, TEXT, false).ok(), Some(Vec::new()));
    }

    #[test]
    fn a_text_head_without_a_place_or_a_place_without_a_head_is_refused() {
        let o = Options::new(Layout::Hf);
        let m = model("big_vision/siglip-tiny");
        let no_head_table = TEXT.get(..4).expect("the table without its head");
        assert_eq!(
            refused_part(text_names(&m, &o, no_head_table, false).err()),
            Part::TextHead {
                width: 64,
                embed: 64
            }
        );
        let mut headless = model("big_vision/siglip-tiny");
        if let Some(t) = headless.text.as_mut() {
            t.head = None;
        }
        assert_eq!(
            refused_part(text_names(&headless, &o, TEXT, false).err()),
            Part::TextWithoutHead { width: 64 }
        );
        // Where the layout may go without a projection, the table's head is skipped.
        let names = text_names(&headless, &o, TEXT, true).expect("head optional");
        assert!(!names.iter().any(|n| n.starts_with("proj")), "{names:?}");
        assert_eq!(names.len(), 6);
    }

    #[test]
    fn logit_scalars_take_the_layouts_names_and_a_missing_bias_is_zero() {
        let m = model("big_vision/siglip-tiny");
        let o = Options::new(Layout::Hf);
        let mut p = Prepared::new(&m, &o).expect("prepared");
        let logit = m.logit.as_ref().expect("logit scalars");
        let bias = logit.bias.as_ref().expect("SigLIP's b");
        let out = p.logit_tensors("logit_scale", "logit_bias", &[1]);
        let got: Vec<_> = out
            .iter()
            .map(|t| (t.name.as_str(), t.shape.clone(), t.recipe.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("logit_scale", vec![1], copy(&logit.scale)),
                ("logit_bias", vec![1], copy(bias)),
            ]
        );
        let mut lit = model("big_vision/siglip-tiny");
        if let Some(l) = lit.logit.as_mut() {
            l.bias = None;
        }
        let mut p = Prepared::new(&lit, &o).expect("prepared");
        let out = p.logit_tensors("s", "b", &[]);
        assert_eq!(out[1].recipe, Recipe::Fill { value: 0.0, len: 1 });
        assert!(p
            .notes
            .iter()
            .any(|n| n.contains("logit_bias is written as 0")));
        let image = opts(Layout::Hf, |o| o.tower = TowerChoice::Image);
        let mut p = Prepared::new(&m, &image).expect("prepared");
        assert!(p.logit_tensors("s", "b", &[1]).is_empty());
    }
}
