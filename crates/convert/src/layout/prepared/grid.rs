//! The output's patch grid: the resolution `--image-size` asks for resolved against the source's patching, and
//! the limits that refuse a grid or position table too large before anything is read or created.

use crate::arch::Arch;
use crate::error::{Error, Result};

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
pub(super) fn check_table(
    grid: (usize, usize),
    image_size: usize,
    stride: usize,
    width: usize,
) -> Result<()> {
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

/// The output's patch grid and input resolution in pixels for the `--image-size` asked for (`None`: the
/// source's), refused where the tower cannot take that size or the grid is over the limits above.
pub(super) fn resolve(asked: Option<usize>, arch: &Arch) -> Result<((usize, usize), usize)> {
    let stride = arch.stride();
    let (grid, image_size) = match (asked, arch.grid, arch.image_size()) {
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
    Ok((grid, image_size))
}

/// The round resolution (a multiple of 32, as every published one is) that patches to the same grid as `px`
/// when `px` itself is not round: 384 for the 378 px a 27x27 grid of 14-px patches covers.
pub(super) fn published_size(px: usize, stride: usize) -> Option<usize> {
    if px.is_multiple_of(32) {
        return None;
    }
    (px.saturating_add(1)..px.saturating_add(stride)).find(|n| n.is_multiple_of(32))
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

    /// `Prepared::new` refuses a grid over the limits from the sizes alone, before any recipe or output
    /// exists: patch 1 at the largest size, or a width whose table would hold too many values.
    #[test]
    fn a_grid_over_the_limits_is_refused_before_anything_is_built() {
        use crate::layout::prepared::tests::{model, opts};
        use crate::layout::Prepared;
        use crate::options::Layout;
        let mut m = model("vit-token");
        let o = opts(Layout::Timm, |o| o.image_size = Some(MAX_IMAGE_SIZE));
        assert_eq!(
            resolve(Some(MAX_IMAGE_SIZE), &m.image.arch).ok(),
            Some(((512, 512), MAX_IMAGE_SIZE)),
            "patch 16 at the largest size fits"
        );
        m.image.arch.patch = 1;
        match Prepared::new(&m, &o).err() {
            Some(Error::PositionTableTooLarge {
                what: "grid cells",
                grid: (8192, 8192),
                max_size: 1024,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let mut m = model("vit-token");
        m.image.arch.hidden = 1 << 14;
        match resolve(Some(MAX_IMAGE_SIZE), &m.image.arch) {
            Err(Error::PositionTableTooLarge {
                what: "position-table values",
                found: Some(found),
                max_size,
                ..
            }) => {
                assert_eq!(found, 512 * 512 * (1 << 14));
                // The size offered fits.
                assert!(resolve(Some(max_size), &m.image.arch).is_ok(), "{max_size}");
                assert!(
                    resolve(Some(max_size + 16), &m.image.arch).is_err(),
                    "{max_size}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
