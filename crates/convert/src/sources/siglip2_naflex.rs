//! big_vision SigLIP 2 NaFlex two-tower checkpoints: a `naflex_vit.py` image tower under `img/` (a Dense
//! `embedding` over patches flattened in (py, px, c) order, a learned square `pos_embedding` grid `[G, G, D]`
//! the model resizes to each image's patch grid, the ViT encoder, `encoder_norm`, a MAP head), the SigLIP 2
//! text tower under `txt/`, `t` and `b`.
//!
//! Only the patch embedding and the position grid differ from a fixed-resolution SigLIP 2 file, so the file is
//! read by the two-tower reader of `siglip` with the linear embedding (`big_vision::read_tower`); this module
//! says which files are NaFlex. Blocks may be stacked (scan) or unrolled in either tower, as `vit.load`
//! accepts both. Semantics: big_vision `models/proj/image_text/naflex_vit.py` (masked self-attention, a MAP
//! head attending over the valid patches only, the grid resized with `jax.image.scale_and_translate`,
//! bilinear with antialias).

use vitconv_tensors::TensorInfo;

use super::siglip;
use crate::arch::PatchEmbedKind;
use crate::error::Result;
use crate::model::Model;

/// The family's name in reports and metadata.
pub const FAMILY: &str = "siglip2_naflex";

/// Whether the file is a two-tower checkpoint whose image patch embedding is a Dense (`[rows, width]`, rank
/// 2) rather than a convolution: the registry then leaves it to [`read`], whatever else it finds wrong.
pub fn claims(tensors: &[TensorInfo]) -> bool {
    let Some(root) = siglip::root(tensors) else {
        return false;
    };
    let kernel = format!("{root}img/embedding/kernel");
    tensors
        .iter()
        .any(|t| t.name == kernel && t.shape.len() == 2)
}

/// Reads a NaFlex two-tower checkpoint into the neutral model, every shape checked and every tensor accounted
/// for.
pub fn read(tensors: &[TensorInfo]) -> Result<Model> {
    siglip::read_two_tower(tensors, FAMILY, PatchEmbedKind::Linear)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{Classifier, PosEmbKind};
    use crate::model::PosEmbed;
    use vitconv_tensors::TensorFile;

    fn golden() -> Vec<TensorInfo> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/siglip2/siglip2-naflex-tiny/checkpoint.npz");
        TensorFile::open(&path)
            .expect("the NaFlex fixture opens")
            .tensors()
            .to_vec()
    }

    fn with_shape(name: &str, shape: &[usize]) -> Vec<TensorInfo> {
        let mut t = golden();
        t.iter_mut()
            .find(|t| t.name == name)
            .expect("a tensor of the fixture")
            .shape = shape.to_vec();
        t
    }

    fn refusal(tensors: &[TensorInfo]) -> String {
        match crate::sources::read(tensors) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_golden_file_is_read_as_naflex() {
        let tensors = golden();
        assert!(claims(&tensors));
        assert!(!crate::sources::big_vision::claims(&tensors));
        let m = crate::sources::read(&tensors).expect("NaFlex reads");
        assert_eq!(m.family, FAMILY);
        let a = &m.image.arch;
        assert_eq!(
            (a.patch, a.in_chans, a.hidden, a.depth, a.heads, a.mlp),
            (8, 3, 64, 2, Some(4), 256)
        );
        assert_eq!(a.patch_embed, PatchEmbedKind::Linear);
        assert_eq!((a.posemb, a.grid), (PosEmbKind::LearnedGrid, Some((4, 4))));
        assert_eq!(a.classifier, Classifier::Map);
        assert_eq!(a.image_size(), None);
        // The golden stores the image tower stacked and the text tower unrolled.
        assert!(a.stacked);
        let text = m.text.as_ref().expect("a text tower");
        assert!(!text.arch.stacked);
        assert_eq!(
            (text.arch.depth, text.arch.context, text.arch.vocab),
            (2, 16, 300)
        );
        match &m.image.pos {
            PosEmbed::Grid { param, grid } => {
                assert_eq!(*grid, (4, 4));
                assert_eq!(param.shape, [4, 4, 64]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.image.patch.kernel.shape, [192, 64]);
        assert!(m.logit.as_ref().is_some_and(|l| l.bias.is_some()));
        assert!(
            m.image.arch.describe().contains("no fixed resolution"),
            "{}",
            m.image.arch.describe()
        );
    }

    #[test]
    fn kernel_rows_must_be_three_times_a_square() {
        for rows in [190, 189, 0] {
            let err = refusal(&with_shape("params/img/embedding/kernel", &[rows, 64]));
            assert!(
                err.contains("params/img/embedding/kernel") && err.contains("p*p*3"),
                "{rows}: {err}"
            );
        }
        // 4 * 4 * 3 = 48 rows are patches of 4: the patch size comes from the rows alone.
        let m = crate::sources::read(&with_shape("params/img/embedding/kernel", &[48, 64]))
            .expect("a patch of 4");
        assert_eq!(m.image.arch.patch, 4);
    }

    #[test]
    fn the_position_grid_must_be_square_and_of_the_width() {
        for shape in [[4, 5, 64], [4, 4, 32], [0, 0, 64]] {
            let err = refusal(&with_shape("params/img/pos_embedding", &shape));
            assert!(
                err.contains("params/img/pos_embedding") && err.contains("[G, G, 64]"),
                "{shape:?}: {err}"
            );
        }
        let err = refusal(&with_shape("params/img/pos_embedding", &[1, 16, 64]));
        assert!(err.contains("[G, G, 64]"), "{err}");
        let err = refusal(&with_shape("params/img/pos_embedding", &[16, 64]));
        assert!(err.contains("[G, G, hidden]"), "{err}");
    }

    #[test]
    fn a_missing_grid_is_named() {
        let tensors: Vec<TensorInfo> = golden()
            .into_iter()
            .filter(|t| t.name != "params/img/pos_embedding")
            .collect();
        let err = refusal(&tensors);
        assert!(
            err.contains("params/img/pos_embedding") && err.contains("NaFlex position grid"),
            "{err}"
        );
    }
}
