//! The patch and position embeddings every layout writes: the patch kernel and bias with the input
//! normalisation folded in, a NaFlex tower's linear patch weight, and the position table for the output grid.

use super::Prepared;
use crate::error::{Part, Result};
use crate::model::PosEmbed;
use crate::options::InputNorm;
use crate::plan::Recipe;

impl Prepared<'_> {
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
}
