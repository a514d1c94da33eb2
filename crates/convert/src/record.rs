//! The typed, versioned record of what a conversion declares (`vitconv.config`): written by every layout,
//! read back by `verify` and `inspect` through this one type.
//!
//! The record is the contract between the converter and the tools that read its files, so it is strict in
//! both directions: every field is written, a reader refuses a field it does not know or one that is missing
//! (naming it), and a record of another version is refused with both versions named. A renamed field can
//! therefore never fall back silently to a library's default, which is what an all-optional reader did.

use serde::{Deserialize, Deserializer, Serialize};

use crate::arch::{Classifier, PatchEmbedKind, PosEmbKind};
use crate::error::{Error, Result};

/// The version of the record this build writes and reads. Raise it when a field changes meaning or is
/// removed; a reader then names both versions instead of misreading an older file.
pub const CONFIG_VERSION: u32 = 1;

/// The GELU a converted model is declared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeclaredGelu {
    /// The tanh approximation (flax's `nn.gelu`).
    Tanh,
    /// The exact erf GELU.
    Erf,
    /// OpenAI CLIP's QuickGELU, `x * sigmoid(1.702 x)` (not the source's: such a file is not exact).
    Quick,
}

impl From<crate::options::Gelu> for DeclaredGelu {
    fn from(g: crate::options::Gelu) -> DeclaredGelu {
        match g {
            crate::options::Gelu::Tanh => DeclaredGelu::Tanh,
            crate::options::Gelu::Erf => DeclaredGelu::Erf,
        }
    }
}

/// What the output's image head is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeclaredHead {
    /// A classification head (or the image projection of a two-tower model) kept as the library's head.
    Head,
    /// The head written as a CLIP-style bias-free projection (`proj`).
    Proj,
    /// The MAP head's output is the embedding; no dense follows it.
    Map,
    /// No pooling: a dense projects every token (PaliGemma's image tower to the LLM width).
    Projector,
    /// No head: the pooled features are the output.
    None,
}

/// The pixel normalisation the output expects of [0, 1] pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormRecord {
    /// The `--input-norm` name (`unit`, `imagenet`, `clip`).
    pub name: String,
    /// Per-channel (RGB) mean: the `f32` values the weights were folded with, widened to `f64` as every
    /// config vitconv writes beside the weights (preprocessor, `pretrained_cfg`) states them.
    pub mean: [f64; 3],
    /// Per-channel (RGB) standard deviation, widened the same way.
    pub std: [f64; 3],
}

/// A hybrid's ResNet stem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResnetRecord {
    /// Units per stage.
    pub stages: Vec<usize>,
    /// Channels of the root convolution.
    pub width: usize,
}

/// How a text tower pools its tokens: the model's own type, recorded as it is.
pub use crate::model::TextPool;

/// The tokenizer written beside a two-tower model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerRecord {
    /// Which convention its special pieces follow.
    pub kind: crate::tokenizer::Kind,
    /// Pieces of the SentencePiece model.
    pub pieces: usize,
    /// The id of the end-of-sequence piece.
    pub eos_id: usize,
    /// The id sequences are padded with to the full context.
    pub pad_id: usize,
}

/// The text tower of a two-tower model: its sizes and the semantics it is declared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextRecord {
    /// Rows of the token embedding.
    pub vocab: usize,
    /// The longest token sequence.
    pub context: usize,
    /// The tower's width.
    pub width: usize,
    /// Encoder blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// The MLP's inner width.
    pub mlp: usize,
    /// The projection's output width, where the tower has one.
    #[serde(deserialize_with = "present")]
    pub embed: Option<usize>,
    /// How the tokens are pooled.
    pub pool: TextPool,
    /// Whether attention is causal.
    pub causal: bool,
    /// The LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// The GELU in the MLPs.
    pub gelu: DeclaredGelu,
    /// Whether the logits add SigLIP's bias `b`.
    pub logit_bias: bool,
    /// The tokenizer written beside the model, where `--tokenizer` gave one.
    #[serde(deserialize_with = "present")]
    pub tokenizer: Option<TokenizerRecord>,
}

/// `vitconv.config`: the sizes and semantics a converted file declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRecord {
    /// [`CONFIG_VERSION`] when written.
    pub version: u32,
    /// The resolution the output runs at, in pixels.
    #[serde(deserialize_with = "present")]
    pub image_size: Option<usize>,
    /// The patch side, in pixels.
    pub patch_size: usize,
    /// The token width.
    pub hidden: usize,
    /// Encoder blocks.
    pub depth: usize,
    /// Attention heads per block (null where the source does not say).
    #[serde(deserialize_with = "present")]
    pub heads: Option<usize>,
    /// The MLP's inner width.
    pub mlp: usize,
    /// How the image tokens are pooled.
    pub classifier: Classifier,
    /// The head's output width, where the output keeps a head.
    #[serde(deserialize_with = "present")]
    pub num_classes: Option<usize>,
    /// The `pre_logits` width, where the output keeps that layer.
    #[serde(deserialize_with = "present")]
    pub representation: Option<usize>,
    /// The GELU in the image tower's MLPs.
    pub gelu: DeclaredGelu,
    /// The LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Whether the output has an `ln_pre` LayerNorm before the blocks.
    pub ln_pre: bool,
    /// The pixel normalisation the output expects.
    pub input_norm: NormRecord,
    /// How the position embedding was resampled (`vit-jax`, `bilinear`, `bicubic`), where the output's grid
    /// differs from the source's.
    #[serde(deserialize_with = "present")]
    pub resize: Option<String>,
    /// Where the position embedding comes from.
    pub posemb: PosEmbKind,
    /// Whether the class token gets a position row.
    pub class_pos: bool,
    /// The source family (`vit_jax`, `big_vision`, `siglip`).
    pub source_family: String,
    /// A hybrid's ResNet stem.
    #[serde(deserialize_with = "present")]
    pub resnet: Option<ResnetRecord>,
    /// What the output's head is.
    pub head: DeclaredHead,
    /// The source head's bias, which a CLIP-style `proj` has no place for.
    #[serde(deserialize_with = "present")]
    pub head_bias: Option<Vec<f32>>,
    /// The element type the weights were written in (`f32`, `f16`, `bf16`).
    pub dtype: String,
    /// How patches become tokens: a convolution over the image, or a dense layer over patches flattened in
    /// (py, px, c) order (SigLIP 2 NaFlex).
    pub patch_embed: PatchEmbedKind,
    /// The stored position grid `[rows, columns]` a NaFlex output resizes to each image's patch grid.
    #[serde(deserialize_with = "present")]
    pub pos_grid: Option<[usize; 2]>,
    /// How a NaFlex output resizes its position grid (`bilinear_antialias`).
    #[serde(deserialize_with = "present")]
    pub pos_resize: Option<String>,
    /// The text tower of a two-tower output (null for an image model).
    #[serde(deserialize_with = "present")]
    pub text: Option<TextRecord>,
}

/// Deserialises an `Option` field that must be present (as a value or `null`): serde's derive treats a
/// missing `Option` as `None`, which is the silent default this record exists to refuse.
fn present<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// Only the version, read first so that a record of another version is named as such rather than by the
/// first field it lacks.
#[derive(Deserialize)]
struct VersionOnly {
    version: Option<u32>,
}

impl ConfigRecord {
    /// The record as the JSON text stored under `vitconv.config`.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail; an empty object would be refused on reading.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a record from `vitconv.config` text, refusing another version, an unknown field or a missing
    /// one, each by name.
    pub fn from_json(text: &str) -> Result<ConfigRecord> {
        let version = serde_json::from_str::<VersionOnly>(text)
            .map_err(|source| Error::ConfigRecord { source })?
            .version;
        if version != Some(CONFIG_VERSION) {
            return Err(Error::ConfigVersion {
                found: version,
                supported: CONFIG_VERSION,
            });
        }
        serde_json::from_str(text).map_err(|source| Error::ConfigRecord { source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ConfigRecord {
        ConfigRecord {
            version: CONFIG_VERSION,
            image_size: Some(224),
            patch_size: 16,
            hidden: 64,
            depth: 2,
            heads: Some(4),
            mlp: 128,
            classifier: Classifier::Map,
            num_classes: None,
            representation: None,
            gelu: DeclaredGelu::Tanh,
            layer_norm_eps: 1e-6,
            ln_pre: false,
            input_norm: NormRecord {
                name: "unit".into(),
                mean: [0.5; 3],
                std: [0.5; 3],
            },
            resize: None,
            posemb: PosEmbKind::Learned,
            class_pos: false,
            source_family: "siglip".into(),
            resnet: None,
            head: DeclaredHead::Map,
            head_bias: None,
            dtype: "f32".into(),
            patch_embed: PatchEmbedKind::Conv,
            pos_grid: None,
            pos_resize: None,
            text: Some(TextRecord {
                vocab: 300,
                context: 16,
                width: 64,
                depth: 2,
                heads: 4,
                mlp: 240,
                embed: Some(96),
                pool: TextPool::Last,
                causal: false,
                layer_norm_eps: 1e-6,
                gelu: DeclaredGelu::Tanh,
                logit_bias: true,
                tokenizer: None,
            }),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record();
        assert_eq!(ConfigRecord::from_json(&r.to_json()).ok(), Some(r));
    }

    /// Edits the written JSON object and returns the error the edited text gets.
    fn refusal(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let mut v: serde_json::Value =
            serde_json::from_str(&record().to_json()).expect("the record is JSON");
        if let Some(o) = v.as_object_mut() {
            edit(o);
        }
        ConfigRecord::from_json(&v.to_string())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_missing_field_is_named_even_where_null_is_allowed() {
        let e = refusal(|o| {
            o.remove("heads");
        });
        assert!(e.contains("missing field `heads`"), "{e}");
        let e = refusal(|o| {
            o.remove("num_classes");
        });
        assert!(e.contains("missing field `num_classes`"), "{e}");
        let e = refusal(|o| {
            if let Some(t) = o.get_mut("text").and_then(|t| t.as_object_mut()) {
                t.remove("tokenizer");
            }
        });
        assert!(e.contains("missing field `tokenizer`"), "{e}");
    }

    #[test]
    fn an_unknown_field_is_named() {
        let e = refusal(|o| {
            o.insert("hiden".into(), serde_json::json!(64));
        });
        assert!(e.contains("unknown field `hiden`"), "{e}");
    }

    #[test]
    fn a_wrong_value_is_named() {
        let e = refusal(|o| {
            o.insert("gelu".into(), serde_json::json!("relu"));
        });
        assert!(e.contains("unknown variant `relu`"), "{e}");
    }

    #[test]
    fn another_version_or_none_is_refused_naming_both() {
        let e = refusal(|o| {
            o.insert("version".into(), serde_json::json!(CONFIG_VERSION + 1));
        });
        assert!(
            e.contains(&format!("version {}", CONFIG_VERSION + 1)),
            "{e}"
        );
        assert!(e.contains(&format!("version {CONFIG_VERSION}")), "{e}");
        let e = refusal(|o| {
            o.remove("version");
        });
        assert!(e.contains("no version"), "{e}");
        assert!(matches!(
            ConfigRecord::from_json("[1, 2]"),
            Err(Error::ConfigRecord { .. })
        ));
    }
}
