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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::layout::prepared::tests::{model, opts};
    use crate::options::{Layout, Options, ResizeMethod};

    /// The refused part of a `pos_table` that must refuse.
    fn refused(r: Result<(usize, Recipe)>) -> Part {
        match r {
            Err(Error::Refused { what, .. }) => what,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// A stored table with a class row (vit_jax): its rows resized to the output grid, the class row kept;
    /// a layout without a class row cannot take it.
    #[test]
    fn a_stored_table_with_a_class_row_is_resized_around_it() {
        let m = model("vit-token");
        let param = match &m.image.pos {
            PosEmbed::Table { param, class_row } => {
                assert!(class_row);
                param
            }
            other => panic!("{other:?}"),
        };
        let table = |from, to| Recipe::PosEmbed {
            src: param.clone(),
            prefix_rows: 1,
            from,
            to,
            dim: 64,
            method: ResizeMethod::VitJax,
            add_to_grid: None,
        };
        let o = Options::new(Layout::Timm);
        let p = Prepared::new(&m, &o).expect("prepared");
        assert_eq!(
            p.pos_table(true, false).ok(),
            Some((17, table((4, 4), (4, 4))))
        );
        assert_eq!(refused(p.pos_table(false, false)), Part::ClassTokenPosition);
        let o = opts(Layout::Timm, |o| o.image_size = Some(96));
        let p = Prepared::new(&m, &o).expect("prepared");
        assert_eq!(
            p.pos_table(true, false).ok(),
            Some((37, table((4, 4), (6, 6))))
        );
    }

    /// A source whose class token has no position embedding (big_vision `tok`), or a computed sincos2d
    /// table, gets a zero class row where the layout has one.
    #[test]
    fn a_class_row_the_source_lacks_is_zero() {
        let tok = model("big_vision/bv-vit-tok-scan");
        let o = Options::new(Layout::Timm);
        let p = Prepared::new(&tok, &o).expect("prepared");
        let (rows, grid) = p.pos_table(false, false).expect("no class row");
        assert_eq!(rows, 9);
        assert!(
            matches!(
                &grid,
                Recipe::PosEmbed {
                    prefix_rows: 0,
                    from: (3, 3),
                    to: (3, 3),
                    ..
                }
            ),
            "{grid:?}"
        );
        let zero = Recipe::Fill {
            value: 0.0,
            len: 64,
        };
        assert_eq!(
            p.pos_table(true, false).ok(),
            Some((10, Recipe::Concat(vec![zero.clone(), grid])))
        );
        let sincos = model("big_vision/bv-vit-gap-sincos");
        let o = opts(Layout::Timm, |o| o.image_size = Some(48));
        let p = Prepared::new(&sincos, &o).expect("prepared");
        let computed = Recipe::Sincos2d {
            grid: (6, 6),
            dim: 64,
            add_to_grid: None,
        };
        assert_eq!(p.pos_table(false, false).ok(), Some((36, computed.clone())));
        assert_eq!(
            p.pos_table(true, false).ok(),
            Some((37, Recipe::Concat(vec![zero, computed])))
        );
    }

    #[test]
    fn a_naflex_grid_has_no_fixed_table() {
        let m = model("siglip2/siglip2-naflex-tiny");
        let o = opts(Layout::Timm, |o| {
            o.tower = crate::options::TowerChoice::Image
        });
        let p = Prepared::new(&m, &o).expect("prepared");
        assert!(p.naflex_grid().is_some());
        assert_eq!(
            refused(p.pos_table(false, false)),
            Part::NaflexTower {
                patch: 8,
                grid: (4, 4)
            }
        );
        // Its patch embedding is a dense over (py, px, c)-flattened patches, written as a Linear weight.
        let (shape, recipe) = p.linear_patch_weight();
        assert_eq!(shape, [64, 8 * 8 * 3]);
        assert_eq!(
            recipe,
            Recipe::Transpose {
                src: m.image.patch.kernel.clone(),
                rows: 192,
                cols: 64
            }
        );
    }

    /// The source's own [-1, 1] input leaves the patch embedding as stored; another normalisation is folded
    /// into it (the kernel scaled per input channel, the bias offset), and into a grid the bias is added to.
    #[test]
    fn the_input_norm_is_folded_into_the_patch_embedding() {
        let m = model("vit-token");
        let patch = &m.image.patch;
        let unit = Options::new(Layout::Timm);
        let p = Prepared::new(&m, &unit).expect("prepared");
        assert_eq!(
            p.patch_kernel(),
            Recipe::ConvKernel {
                src: patch.kernel.clone(),
                hwio: [16, 16, 3, 64],
                in_scale: None
            }
        );
        assert_eq!(p.patch_bias(), Recipe::Copy(patch.bias.clone()));
        let clip = Options::new(Layout::OpenClip);
        let p = Prepared::new(&m, &clip).expect("prepared");
        let (scale, offset) = InputNorm::Clip.affine();
        assert_eq!(
            p.patch_kernel(),
            Recipe::ConvKernel {
                src: patch.kernel.clone(),
                hwio: [16, 16, 3, 64],
                in_scale: Some(scale.to_vec())
            }
        );
        let bias = Recipe::PatchBias {
            bias: patch.bias.clone(),
            kernel: patch.kernel.clone(),
            hwio: [16, 16, 3, 64],
            in_offset: offset.to_vec(),
        };
        assert_eq!(p.patch_bias(), bias);
        match p.pos_table(true, true) {
            Ok((17, Recipe::PosEmbed { add_to_grid, .. })) => {
                assert_eq!(add_to_grid, Some(Box::new(bias)));
            }
            other => panic!("{other:?}"),
        }
    }
}
