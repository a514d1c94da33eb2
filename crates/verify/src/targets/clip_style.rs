//! The CLIP-style towers (OpenAI CLIP's `VisionTransformer` and open_clip's): their sizes, their weights, and
//! the forward both run, which differ only in the [`Switches`] their class or config sets.
//!
//! Both: `conv1` without bias, the class embedding prepended, `positional_embedding` added, optionally `ln_pre`,
//! the resblocks (`nn.MultiheadAttention` with `in_proj` rows q, k, v), `ln_post` and pooling (in the order the
//! tower says), then `@ proj` where there is one.

use tch::{Kind, Tensor};

use super::{
    bad_shape, grid_of, pair, shape2, split_qkv, tokens, Block, BlockSemantics, FeatureKind,
    TargetArch, TargetOutputs,
};
use crate::error::Result;
use crate::ops;
use crate::params::{dim, Params};

/// The sizes of a CLIP-style tower (OpenAI CLIP and open_clip share key names), read off its shapes.
#[derive(Clone, Copy)]
pub(crate) struct TowerSizes {
    /// `visual.` when the keys carry it, else empty.
    pub pre: &'static str,
    pub d: usize,
    pub patch_size: usize,
    pub grid: usize,
    pub depth: usize,
    pub mlp: usize,
}

impl TowerSizes {
    pub(crate) fn read(p: &Params) -> Result<TowerSizes> {
        let path = p.path().to_path_buf();
        let pre = if p.has("visual.conv1.weight") {
            "visual."
        } else {
            ""
        };
        let conv = format!("{pre}conv1.weight");
        let (d, patch_size) = match p.require_shape(&conv, "patch embedding (conv1)")? {
            [d, _, ph, pw] if ph == pw => (*d, *ph),
            other => return Err(bad_shape(&path, &conv, "[width, 3, p, p]", other)),
        };
        let pos = format!("{pre}positional_embedding");
        let [rows, pd] = shape2(p, &pos)?;
        if pd != d {
            return Err(bad_shape(&path, &pos, &format!("[N, {d}]"), &[rows, pd]));
        }
        let grid = grid_of(&path, &pos, rows, true)?;
        let mut depth = 0usize;
        while p.has(&format!(
            "{pre}transformer.resblocks.{depth}.attn.in_proj_weight"
        )) {
            depth = depth.saturating_add(1);
        }
        let [mlp, _] = shape2(p, &format!("{pre}transformer.resblocks.0.mlp.c_fc.weight"))?;
        Ok(TowerSizes {
            pre,
            d,
            patch_size,
            grid,
            depth,
            mlp,
        })
    }
}

/// What a CLIP-style class or config decides beyond the block semantics.
pub(crate) struct Switches {
    /// `ln_pre` is applied (always in OpenAI CLIP; unless `no_ln_pre` in open_clip).
    pub ln_pre: bool,
    /// Pooling is the mean of the patch tokens, not the class token.
    pub avg_pool: bool,
    /// `ln_post` is applied to the pooled vector rather than to every token (the same thing for token
    /// pooling, since LayerNorm works token by token).
    pub final_ln_after_pool: bool,
    /// The config declares `head: none`: `proj` passes the pooled features through.
    pub proj_is_features: bool,
}

/// A CLIP-style tower's weights and the choices its class or config makes.
pub(crate) struct Tower {
    p: Params,
    /// `visual.` when the keys carry it, else empty.
    pre: &'static str,
    semantics: BlockSemantics,
    blocks: Vec<Block>,
    pub arch: TargetArch,
    switches: Switches,
}

impl Tower {
    /// Loads the resblocks of a tower of `sizes` and runs it with `semantics` and `switches`.
    pub(crate) fn load(
        p: Params,
        sizes: &TowerSizes,
        semantics: BlockSemantics,
        switches: Switches,
    ) -> Result<Tower> {
        let TowerSizes {
            pre,
            d,
            patch_size,
            grid,
            depth,
            mlp,
        } = *sizes;
        let mut blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            let b = format!("{pre}transformer.resblocks.{i}");
            let w = p.load(
                &format!("{b}.attn.in_proj_weight"),
                &[d.saturating_mul(3), d],
            )?;
            let bias = p.load(&format!("{b}.attn.in_proj_bias"), &[d.saturating_mul(3)])?;
            let [q, k, v] = split_qkv(&w, &bias)?;
            blocks.push(Block {
                ln1: pair(&p, &format!("{b}.ln_1"), &[d], &[d])?,
                q,
                k,
                v,
                proj: pair(&p, &format!("{b}.attn.out_proj"), &[d, d], &[d])?,
                ln2: pair(&p, &format!("{b}.ln_2"), &[d], &[d])?,
                fc1: pair(&p, &format!("{b}.mlp.c_fc"), &[mlp, d], &[mlp])?,
                fc2: pair(&p, &format!("{b}.mlp.c_proj"), &[d, mlp], &[d])?,
            });
        }
        let arch = TargetArch {
            hidden: d,
            depth,
            heads: semantics.heads,
            mlp,
            patch_size,
            grid,
            image_size: grid.saturating_mul(patch_size),
            class_token: true,
        };
        Ok(Tower {
            p,
            pre,
            semantics,
            blocks,
            arch,
            switches,
        })
    }

    pub(crate) fn kind(&self) -> Kind {
        self.p.kind()
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<TargetOutputs> {
        let (p, a, pre, sw) = (&self.p, &self.arch, self.pre, &self.switches);
        let x = x.f_to_kind(p.kind())?;
        let w = p.load_any(&format!("{pre}conv1.weight"))?;
        let y = ops::conv2d(&x, &w, None, dim(a.patch_size)?, 0)?;
        let cls = p.load(&format!("{pre}class_embedding"), &[a.hidden])?;
        let pos = p.load_any(&format!("{pre}positional_embedding"))?;
        let mut x = tokens(&y, Some(&cls), &pos)?;
        if sw.ln_pre {
            x = self.semantics.norm(
                &x,
                &pair(p, &format!("{pre}ln_pre"), &[a.hidden], &[a.hidden])?,
            )?;
        }
        for block in &self.blocks {
            x = block.forward(&x, &self.semantics)?;
        }
        let ln_post = pair(p, &format!("{pre}ln_post"), &[a.hidden], &[a.hidden])?;
        if !sw.final_ln_after_pool {
            x = self.semantics.norm(&x, &ln_post)?;
        }
        let mut pooled = if sw.avg_pool {
            let n = x.size().get(1).copied().unwrap_or(1);
            x.f_narrow(1, 1, n - 1)?
                .f_mean_dim(1, false, None::<Kind>)?
        } else {
            x.f_select(1, 0)?
        };
        if sw.final_ln_after_pool {
            pooled = self.semantics.norm(&pooled, &ln_post)?;
        }
        let proj = format!("{pre}proj");
        let logits = if p.has(&proj) {
            let [f, out] = shape2(p, &proj)?;
            if f != a.hidden {
                return Err(bad_shape(
                    p.path(),
                    &proj,
                    &format!("[{}, out]", a.hidden),
                    &[f, out],
                ));
            }
            Some(pooled.f_matmul(&p.load_any(&proj)?)?)
        } else {
            None
        };
        if sw.proj_is_features {
            // `--proj none`: proj is declared to carry the pooled features through (an
            // identity), so its output is compared with the reference's pooled features.
            if let Some(projected) = logits {
                return Ok(TargetOutputs {
                    features: projected,
                    features_kind: FeatureKind::Pooled,
                    logits: None,
                });
            }
        }
        Ok(TargetOutputs {
            features: pooled,
            features_kind: FeatureKind::Pooled,
            logits,
        })
    }
}
