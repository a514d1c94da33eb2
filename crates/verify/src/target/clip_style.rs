//! The forward both CLIP-style towers run (OpenAI CLIP's `VisionTransformer` and open_clip's), which differ only
//! in the switches of [`Tower`].
//!
//! Both: `conv1` without bias, the class embedding prepended, `positional_embedding` added, optionally `ln_pre`,
//! the resblocks, `ln_post` and pooling (in the order the tower says), then `@ proj` where there is one.

use tch::{Kind, Tensor};

use super::{
    bad_shape, pair, shape2, Block, BlockSemantics, FeatureKind, TargetArch, TargetOutputs,
};
use crate::error::Result;
use crate::ops;
use crate::params::{dim, Params};

/// A CLIP-style tower's weights and the choices its class or config makes.
pub(crate) struct Tower {
    pub p: Params,
    /// `visual.` when the keys carry it, else empty.
    pub pre: String,
    pub semantics: BlockSemantics,
    pub blocks: Vec<Block>,
    pub arch: TargetArch,
    /// The config declares `head: none`: `proj` passes the pooled features through.
    pub proj_is_features: bool,
    /// `ln_pre` is applied (always in OpenAI CLIP; unless `no_ln_pre` in open_clip).
    pub ln_pre: bool,
    /// Pooling is the mean of the patch tokens, not the class token.
    pub avg_pool: bool,
    /// `ln_post` is applied to the pooled vector rather than to every token (the same thing for token
    /// pooling, since LayerNorm works token by token).
    pub final_ln_after_pool: bool,
}

impl Tower {
    pub(crate) fn kind(&self) -> Kind {
        self.p.kind()
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<TargetOutputs> {
        let p = &self.p;
        let a = &self.arch;
        let (pre, d) = (&self.pre, dim(a.hidden)?);
        let x = x.f_to_kind(p.kind())?;
        let w = p.load_any(&format!("{pre}conv1.weight"))?;
        let y = ops::conv2d(&x, &w, None, dim(a.patch_size)?, 0)?;
        let x = y.f_flatten(2, 3)?.f_transpose(1, 2)?;
        let batch = x.size().first().copied().unwrap_or(1);
        let cls = p
            .load(&format!("{pre}class_embedding"), &[a.hidden])?
            .f_view([1, 1, d])?
            .f_expand([batch, 1, d], false)?;
        let mut x = Tensor::f_cat(&[cls, x], 1)?
            .f_add(&p.load_any(&format!("{pre}positional_embedding"))?)?;
        if self.ln_pre {
            x = self.semantics.norm(
                &x,
                &pair(p, &format!("{pre}ln_pre"), &[a.hidden], &[a.hidden])?,
            )?;
        }
        for block in &self.blocks {
            x = block.forward(&x, &self.semantics)?;
        }
        let ln_post = pair(p, &format!("{pre}ln_post"), &[a.hidden], &[a.hidden])?;
        if !self.final_ln_after_pool {
            x = self.semantics.norm(&x, &ln_post)?;
        }
        let mut pooled = if self.avg_pool {
            let n = x.size().get(1).copied().unwrap_or(1);
            x.f_narrow(1, 1, n - 1)?
                .f_mean_dim(1, false, None::<Kind>)?
        } else {
            x.f_select(1, 0)?
        };
        if self.final_ln_after_pool {
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
        if self.proj_is_features {
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
