//! The source families vitconv converts from, one module each, and the one registry that lists them.
//!
//! A source family is a module with two functions: `claims` says from the keys alone whether a file is of that
//! family, and `read` describes a claimed file as a neutral [`Model`] or refuses it with a one-line reason.
//! Adding a family means adding its module and one line in [`SOURCES`]; no layout and no other family
//! changes. `inspect` recognises sources through the same registry.

pub mod big_vision;
pub mod flax_tree;
pub(crate) mod keys;
pub mod paligemma;
pub mod siglip;
pub mod siglip2_naflex;
pub mod vit_jax;

use vitconv_tensors::TensorInfo;

use crate::error::{Error, Result};
use crate::model::Model;

/// One source family.
pub struct Source {
    /// The family's name in reports and metadata.
    pub name: &'static str,
    /// What the family's files are, for a user: `--help` lists these, from this registry.
    pub describes: &'static str,
    /// Whether a key/shape listing belongs to this family (the first family that claims a file reads it).
    pub claims: fn(&[TensorInfo]) -> bool,
    /// The listing as a model, or the reason it cannot be one.
    pub read: fn(&[TensorInfo]) -> Result<Model>,
}

/// Every source family, most specific first.
pub const SOURCES: &[Source] = &[
    // Before siglip: a PaliGemma file has an image tower under `img/` too, beside its language model.
    Source {
        name: paligemma::FAMILY,
        describes: "PaliGemma and PaliGemma 2 image towers (--tower image)",
        claims: paligemma::claims,
        read: paligemma::read,
    },
    Source {
        name: siglip2_naflex::FAMILY,
        describes: "SigLIP 2 NaFlex two-tower models",
        claims: siglip2_naflex::claims,
        read: siglip2_naflex::read,
    },
    Source {
        name: siglip::FAMILY,
        describes: "SigLIP and SigLIP 2 two-tower models",
        claims: siglip::claims,
        read: siglip::read,
    },
    Source {
        name: big_vision::FAMILY,
        describes: "google-research/big_vision ViTs",
        claims: big_vision::claims,
        read: big_vision::read,
    },
    Source {
        name: vit_jax::FAMILY,
        describes: "google-research/vision_transformer ViTs and hybrids",
        claims: vit_jax::claims,
        read: vit_jax::read,
    },
];

/// What every family's files are, most specific first, as `--help` lists them.
pub fn described() -> impl Iterator<Item = &'static str> {
    SOURCES.iter().map(|s| s.describes)
}

/// Module trees of Hugging Face Flax vision models (as `flax_model.msgpack` holds them, with or without a
/// `params/` root) and the transformers class each belongs to: recognised so that the refusal can say what the
/// file is. The patch embedding's kernel under each root is what tells them apart.
const HF_FLAX: &[(&str, &str, &str)] = &[
    (
        "vit/",
        "embeddings/patch_embeddings/projection/kernel",
        "FlaxViTModel",
    ),
    (
        "vision_model/",
        "embeddings/patch_embedding/kernel",
        "FlaxCLIPModel (vision)",
    ),
    (
        "",
        "embeddings/patch_embeddings/projection/kernel",
        "FlaxViTModel",
    ),
    (
        "",
        "vision_model/embeddings/patch_embedding/kernel",
        "FlaxCLIPVisionModel",
    ),
];

/// The Hugging Face Flax class and module root of a listing, if its names are those of one.
fn hf_flax(tensors: &[TensorInfo]) -> Option<(&'static str, &'static str)> {
    HF_FLAX.iter().find_map(|&(root, kernel, class)| {
        let hit = ["", "params/"].iter().any(|p| {
            tensors
                .iter()
                .any(|t| t.name == format!("{p}{root}{kernel}"))
        });
        hit.then_some((
            class,
            if root.is_empty() {
                "the top level"
            } else {
                root
            },
        ))
    })
}

/// Reads a file of any source family into the neutral model.
pub fn read(tensors: &[TensorInfo]) -> Result<Model> {
    if let Some(source) = SOURCES.iter().find(|s| (s.claims)(tensors)) {
        return (source.read)(tensors);
    }
    if let Some((class, root)) = hf_flax(tensors) {
        return Err(Error::HfFlax {
            class,
            root,
            tensors: tensors.len(),
        });
    }
    Err(Error::NotASource {
        tensors: tensors.len(),
        layout: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitconv_tensors::DType;

    fn info(name: &str) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype: DType::F32,
            shape: vec![16, 16, 3, 8],
            stored_as: None,
        }
    }

    #[test]
    fn an_empty_text_vocabulary_is_named_as_the_token_embeddings_fault() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/big_vision/siglip-tiny/checkpoint.npz");
        let file = vitconv_tensors::TensorFile::open(&path).expect("the fixture opens");
        let mut tensors = file.tensors().to_vec();
        let emb = tensors
            .iter_mut()
            .find(|t| t.name.ends_with("txt/Embed_0/embedding"))
            .expect("a text token embedding");
        emb.shape = vec![0, 64];
        let err = read(&tensors)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("txt/Embed_0/embedding"), "{err}");
        assert!(err.contains("0 rows (shape [0, 64])"), "{err}");
        assert!(!err.contains("pos_embedding"), "{err}");
    }

    #[test]
    fn hugging_face_flax_models_are_named_in_the_refusal() {
        for (name, class) in [
            (
                "vit/embeddings/patch_embeddings/projection/kernel",
                "FlaxViTModel",
            ),
            (
                "params/vit/embeddings/patch_embeddings/projection/kernel",
                "FlaxViTModel",
            ),
            (
                "vision_model/embeddings/patch_embedding/kernel",
                "FlaxCLIPModel",
            ),
        ] {
            let err = read(&[info(name), info("vit/pooler/dense/kernel")])
                .err()
                .map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(
                err.contains(class) && err.contains("Hugging Face Flax"),
                "{name}: {err}"
            );
        }
        let err = read(&[info("something/else")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.contains("Hugging Face"), "{err}");
    }
}
