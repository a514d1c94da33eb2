//! The recipes for each role of a layout's tables: attention (fused q/k/v, k/v, or one projection) and MLP
//! weights as PyTorch's `[out, in]`, a block, the MAP head, the text tower and the logit scalars.

use super::tables::{name, BlockRole, BlockTable, MapRole, MapTable, TextRole, TextTable};
use super::Prepared;
use crate::error::{Part, Result};
use crate::model::{Attention, Block, Dense, MapHead, Param, Pool, Proj};
use crate::plan::{OutTensor, Recipe};

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
