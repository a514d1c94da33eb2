//! transformers' SigLIP vision classes, the `hf` layout's home for ViTs without a class token:
//! `SiglipForImageClassification` (mean of the `post_layernorm` tokens, then `classifier`) for mean-pooled
//! classifiers, and `SiglipVisionModel` for feature extractors, whose `pooler_output` is the MAP head
//! (`vision_use_head=True`) where the source has one.
//!
//! Names and semantics follow transformers 5.24 `models/siglip/modeling_siglip.py` (`SiglipVisionEmbeddings`:
//! a `patch_embedding` convolution with bias and an `nn.Embedding` of one position per patch, no class token;
//! `SiglipEncoderLayer`: `layer_norm1`, `self_attn.{q,k,v,out}_proj`, `layer_norm2`, `mlp.fc1/fc2`;
//! `SiglipMultiheadAttentionPoolingHead`: `probe`, an `nn.MultiheadAttention` with fused `in_proj`,
//! `layernorm`, `mlp`) and `configuration_siglip.py` (`hidden_act`, `layer_norm_eps`, `vision_use_head`).
//! `SiglipVisionModel` stores its parts at the top level; `SiglipForImageClassification` under `vision_model.`.
//!
//! A NaFlex tower (a linear patch embedding with a position grid resized per image) goes to the SigLIP 2
//! classes of transformers 5.24 `models/siglip2/` instead ([`SIGLIP2`]): the same state-dict names, but
//! `Siglip2VisionEmbeddings` holds a `Linear` `patch_embedding` (`[D, p * p * 3]`, inputs in (py, px, c) order)
//! and an `nn.Embedding` of `num_patches` = G * G rows that it reshapes to the square grid and resizes to each
//! image's `spatial_shapes` (bilinear, antialias, half-pixel centres); the encoder and the MAP head mask the
//! padding by `pixel_attention_mask`. `Siglip2ImageProcessor` cuts the patches.

use serde_json::{json, Map, Value};

use crate::arch::{
    linear_patch_side, Arch, Classifier, PatchEmbedKind, PosEmbKind, LINEAR_PATCH_CHANNELS,
};
use crate::error::{Part, Result};
use crate::layout::hf_files::{self, dtype_name, pretty, CONFIG_FILE, PREPROCESSOR_FILE};
use crate::layout::prepared::{BlockRole, BlockTable, MapRole, MapTable, Prepared};
use crate::layout::recognise::{count_blocks, get, grid_side, Recognised, Shapes};
use crate::model::Proj;
use crate::plan::OUTPUT_DIR_TOKEN;
use crate::plan::{OutTensor, OutputKind, Plan, Recipe, SideFile};
use crate::record::DeclaredHead;

/// transformers state-dict names of `SiglipVisionModel` (`{i}` = layer index).
pub mod names {
    /// The weight of the patch embedding's convolution.
    pub const PATCH_W: &str = "embeddings.patch_embedding.weight";
    /// The bias of the patch embedding's convolution.
    pub const PATCH_B: &str = "embeddings.patch_embedding.bias";
    /// The position embedding.
    pub const POS: &str = "embeddings.position_embedding.weight";
    /// The weight of each layer's LayerNorm before attention.
    pub const LN1_W: &str = "encoder.layers.{i}.layer_norm1.weight";
    /// The bias of each layer's LayerNorm before attention.
    pub const LN1_B: &str = "encoder.layers.{i}.layer_norm1.bias";
    /// The weight of each layer's query projection.
    pub const Q_W: &str = "encoder.layers.{i}.self_attn.q_proj.weight";
    /// The bias of each layer's query projection.
    pub const Q_B: &str = "encoder.layers.{i}.self_attn.q_proj.bias";
    /// The weight of each layer's key projection.
    pub const K_W: &str = "encoder.layers.{i}.self_attn.k_proj.weight";
    /// The bias of each layer's key projection.
    pub const K_B: &str = "encoder.layers.{i}.self_attn.k_proj.bias";
    /// The weight of each layer's value projection.
    pub const V_W: &str = "encoder.layers.{i}.self_attn.v_proj.weight";
    /// The bias of each layer's value projection.
    pub const V_B: &str = "encoder.layers.{i}.self_attn.v_proj.bias";
    /// The weight of each layer's attention output projection.
    pub const O_W: &str = "encoder.layers.{i}.self_attn.out_proj.weight";
    /// The bias of each layer's attention output projection.
    pub const O_B: &str = "encoder.layers.{i}.self_attn.out_proj.bias";
    /// The weight of each layer's LayerNorm before the MLP.
    pub const LN2_W: &str = "encoder.layers.{i}.layer_norm2.weight";
    /// The bias of each layer's LayerNorm before the MLP.
    pub const LN2_B: &str = "encoder.layers.{i}.layer_norm2.bias";
    /// The weight of the first MLP layer of each block.
    pub const FC1_W: &str = "encoder.layers.{i}.mlp.fc1.weight";
    /// The bias of the first MLP layer of each block.
    pub const FC1_B: &str = "encoder.layers.{i}.mlp.fc1.bias";
    /// The weight of the second MLP layer of each block.
    pub const FC2_W: &str = "encoder.layers.{i}.mlp.fc2.weight";
    /// The bias of the second MLP layer of each block.
    pub const FC2_B: &str = "encoder.layers.{i}.mlp.fc2.bias";
    /// The weight of the final LayerNorm.
    pub const NORM_W: &str = "post_layernorm.weight";
    /// The bias of the final LayerNorm.
    pub const NORM_B: &str = "post_layernorm.bias";
    /// The weight of the classification head.
    pub const CLASSIFIER_W: &str = crate::layout::hf_files::CLASSIFIER_W;
    /// The bias of the classification head.
    pub const CLASSIFIER_B: &str = crate::layout::hf_files::CLASSIFIER_B;
    /// Prefix of the vision tower inside `SiglipForImageClassification` (and `SiglipModel`).
    pub const VISION_MODEL: &str = "vision_model.";
    /// The weight of PaliGemma's projection of every image token to the LLM width, named as
    /// `PaliGemmaForConditionalGeneration` checkpoints name it (`PaliGemmaMultiModalProjector.linear`).
    pub const PROJECTOR_W: &str = "multi_modal_projector.linear.weight";
    /// The bias of PaliGemma's projection.
    pub const PROJECTOR_B: &str = "multi_modal_projector.linear.bias";
}

/// One `encoder.layers.{i}` (`SiglipEncoderLayer`).
pub const BLOCK: &BlockTable = &[
    (names::LN1_W, BlockRole::Norm1Scale),
    (names::LN1_B, BlockRole::Norm1Bias),
    (names::Q_W, BlockRole::Weight(Proj::Query)),
    (names::Q_B, BlockRole::Bias(Proj::Query)),
    (names::K_W, BlockRole::Weight(Proj::Key)),
    (names::K_B, BlockRole::Bias(Proj::Key)),
    (names::V_W, BlockRole::Weight(Proj::Value)),
    (names::V_B, BlockRole::Bias(Proj::Value)),
    (names::O_W, BlockRole::Weight(Proj::Out)),
    (names::O_B, BlockRole::Bias(Proj::Out)),
    (names::LN2_W, BlockRole::Norm2Scale),
    (names::LN2_B, BlockRole::Norm2Bias),
    (names::FC1_W, BlockRole::Fc1Weight),
    (names::FC1_B, BlockRole::Fc1Bias),
    (names::FC2_W, BlockRole::Fc2Weight),
    (names::FC2_B, BlockRole::Fc2Bias),
];

/// `head` (`SiglipMultiheadAttentionPoolingHead`): q, k, v fused in `nn.MultiheadAttention`'s `in_proj`.
pub const HEAD: &MapTable = &[
    ("head.probe", MapRole::Probe),
    ("head.attention.in_proj_weight", MapRole::QkvWeight),
    ("head.attention.in_proj_bias", MapRole::QkvBias),
    ("head.attention.out_proj.weight", MapRole::Weight(Proj::Out)),
    ("head.attention.out_proj.bias", MapRole::Bias(Proj::Out)),
    ("head.layernorm.weight", MapRole::NormScale),
    ("head.layernorm.bias", MapRole::NormBias),
    ("head.mlp.fc1.weight", MapRole::Fc1Weight),
    ("head.mlp.fc1.bias", MapRole::Fc1Bias),
    ("head.mlp.fc2.weight", MapRole::Fc2Weight),
    ("head.mlp.fc2.bias", MapRole::Fc2Bias),
];

/// One generation of transformers' SigLIP classes: the names a folder's configs give for its model, vision
/// and text towers and image processor. Their state-dict names are the same ([`names`]).
#[derive(Debug)]
pub struct Classes {
    /// The two-tower model class (`SiglipModel`).
    pub model: &'static str,
    /// Its `model_type`.
    pub model_type: &'static str,
    /// The vision tower class alone (`SiglipVisionModel`).
    pub vision: &'static str,
    /// The vision config's `model_type`.
    pub vision_type: &'static str,
    /// The text config's `model_type`.
    pub text_type: &'static str,
    /// The mean-pooling classifier (`SiglipForImageClassification`).
    pub classifier: &'static str,
    /// The image processor class.
    pub image_processor: &'static str,
    /// The processor class (image processor and tokenizer).
    pub processor: &'static str,
    /// Whether `AutoTokenizer` (and so the processor) loads transformers' own tokenizer class for this
    /// `model_type` whatever `tokenizer_config.json` names: transformers 5.24 lists `siglip2` among the model
    /// types whose hub tokenizer class it overrides, and its `Siglip2Tokenizer` lowercases all of Unicode and
    /// rebuilds the vocabulary as BPE, which gives other ids than big_vision's. The folder's `tokenizer.json`
    /// is then loaded as it is by `PreTrainedTokenizerFast`.
    pub overrides_tokenizer: bool,
}

/// SigLIP's classes (transformers 5.24 `models/siglip/`), for fixed-resolution towers.
pub const SIGLIP: Classes = Classes {
    model: "SiglipModel",
    model_type: "siglip",
    vision: "SiglipVisionModel",
    vision_type: "siglip_vision_model",
    text_type: "siglip_text_model",
    classifier: "SiglipForImageClassification",
    image_processor: "SiglipImageProcessor",
    processor: "SiglipProcessor",
    overrides_tokenizer: false,
};

/// SigLIP 2's NaFlex classes (transformers 5.24 `models/siglip2/`), for NaFlex towers.
pub const SIGLIP2: Classes = Classes {
    model: "Siglip2Model",
    model_type: "siglip2",
    vision: "Siglip2VisionModel",
    vision_type: "siglip2_vision_model",
    text_type: "siglip2_text_model",
    classifier: "Siglip2ForImageClassification",
    image_processor: "Siglip2ImageProcessor",
    processor: "Siglip2Processor",
    overrides_tokenizer: true,
};

/// The classes that hold the prepared tower: SigLIP 2's for a NaFlex tower, SigLIP's otherwise.
pub fn classes(prep: &Prepared<'_>) -> &'static Classes {
    match prep.naflex_grid() {
        Some(_) => &SIGLIP2,
        None => &SIGLIP,
    }
}

/// `preprocessor_config.json` for the prepared tower: `SiglipImageProcessor` at the model's resolution, or
/// `Siglip2ImageProcessor` cutting `patch`-pixel patches up to [`hf_files::NAFLEX_MAX_PATCHES`] for NaFlex.
pub fn preprocessor(prep: &Prepared<'_>) -> Value {
    let class = classes(prep).image_processor;
    match prep.naflex_grid() {
        Some(_) => hf_files::naflex_preprocessor(
            class,
            prep.arch().patch,
            hf_files::NAFLEX_MAX_PATCHES,
            prep.norm,
        ),
        None => hf_files::preprocessor(class, prep.image_size, prep.norm),
    }
}

/// Recognises a transformers SigLIP vision state dict (`SiglipVisionModel`, or the tower inside
/// `SiglipForImageClassification`) for `inspect`, from [`names`].
pub fn recognise(s: &Shapes<'_>) -> Option<Recognised> {
    let p = if s.contains_key(format!("{}{}", names::VISION_MODEL, names::PATCH_W).as_str()) {
        names::VISION_MODEL
    } else {
        ""
    };
    // A convolution `[D, in, p, p]`, or SigLIP 2 NaFlex's linear map `[D, p * p * 3]`.
    let (hidden, in_chans, patch, patch_embed) = match *get(s, &format!("{p}{}", names::PATCH_W))? {
        [hidden, in_chans, patch, _] => (hidden, in_chans, patch, PatchEmbedKind::Conv),
        [hidden, rows] => (
            hidden,
            LINEAR_PATCH_CHANNELS,
            linear_patch_side(rows)?,
            PatchEmbedKind::Linear,
        ),
        _ => return None,
    };
    let &[rows, _] = get(s, &format!("{p}{}", names::POS))? else {
        return None;
    };
    let side = grid_side(rows, 0)?;
    let depth = count_blocks(s, p, names::FC1_W);
    if depth == 0 {
        return None;
    }
    let &[mlp, _] = get(
        s,
        &format!("{p}{}", crate::layout::prepared::name(names::FC1_W, 0)),
    )?
    else {
        return None;
    };
    let map = HEAD
        .first()
        .is_some_and(|(probe, _)| s.contains_key(format!("{p}{probe}").as_str()));
    let naflex = patch_embed == PatchEmbedKind::Linear;
    let arch = Arch {
        patch,
        patch_embed,
        in_chans,
        hidden,
        heads: None,
        mlp,
        depth,
        grid: Some((side, side)),
        posemb: if naflex {
            PosEmbKind::LearnedGrid
        } else {
            PosEmbKind::Learned
        },
        class_pos: false,
        classifier: if map {
            Classifier::Map
        } else {
            Classifier::Gap
        },
        num_classes: get(s, names::CLASSIFIER_W).and_then(|h| h.first().copied()),
        representation: None,
        resnet: None,
        stacked: false,
    };
    Some(Recognised {
        family: "transformers",
        arch,
        class_shape: None,
        patch_bias: true,
        notes: vec![if naflex {
            "SigLIP 2 NaFlex vision tower (Siglip2VisionModel: patches in, no class token)"
                .to_string()
        } else {
            "SigLIP vision tower (no class token)".to_string()
        }],
        text: None,
    })
}

/// The vision tower's tensors (`SiglipVisionModel`'s names after `prefix`): patch and position embeddings,
/// the encoder layers, `post_layernorm` and, where the source has one, the MAP head.
pub fn vision_tensors(
    prep: &Prepared<'_>,
    prefix: &str,
    map: Option<&crate::model::MapHead>,
) -> Result<Vec<OutTensor>> {
    let a = prep.arch();
    let tower = prep.tower();
    let d = a.hidden;
    let t = |nm: &str, shape: Vec<usize>, recipe: Recipe| OutTensor {
        name: format!("{prefix}{nm}"),
        shape,
        recipe,
    };
    let mut out = match prep.naflex_grid() {
        // SigLIP 2 NaFlex: a `Linear` over the patches, and the grid as `nn.Embedding` rows in row-major
        // (y, x) order, which `Siglip2VisionEmbeddings` reshapes back to the square grid.
        Some((grid, (h, w))) => {
            let (shape, weight) = prep.linear_patch_weight();
            vec![
                t(names::PATCH_W, shape, weight),
                t(
                    names::PATCH_B,
                    vec![d],
                    Recipe::Copy(tower.patch.bias.clone()),
                ),
                t(
                    names::POS,
                    vec![h.saturating_mul(w), d],
                    Recipe::Copy(grid.clone()),
                ),
            ]
        }
        None => {
            // `nn.Embedding` holds one row per patch: `[N, D]`, without the batch axis of the source's table.
            let (pos_rows, pos) = prep.pos_table(false, false)?;
            vec![
                t(
                    names::PATCH_W,
                    vec![d, a.in_chans, a.patch, a.patch],
                    prep.patch_kernel(),
                ),
                t(names::PATCH_B, vec![d], prep.patch_bias()),
                t(names::POS, vec![pos_rows, d], pos),
            ]
        }
    };
    for (i, b) in tower.blocks.iter().enumerate() {
        out.extend(prep.block_tensors(BLOCK, prefix, i, b));
    }
    out.extend(crate::layout::prepared::norm_pair(
        &tower.final_norm,
        d,
        &format!("{prefix}{}", names::NORM_W),
        &format!("{prefix}{}", names::NORM_B),
    ));
    if let Some(map) = map {
        out.extend(prep.map_tensors(HEAD, prefix, map));
    }
    Ok(out)
}

/// `SiglipVisionConfig` (or `Siglip2VisionConfig`) for the vision tower; `use_head` says whether the MAP head
/// is there. A NaFlex tower has no `image_size`: `num_patches` is its position grid's G * G rows, which
/// transformers reshapes to a square.
pub fn vision_config(prep: &Prepared<'_>, use_head: bool) -> Value {
    let a = prep.arch();
    let mut cfg = json!({
        "model_type": classes(prep).vision_type,
        "hidden_size": a.hidden,
        "intermediate_size": a.mlp,
        "num_hidden_layers": a.depth,
        "num_attention_heads": a.heads,
        "num_channels": a.in_chans,
        "image_size": prep.image_size,
        "patch_size": a.patch,
        "hidden_act": hf_files::hidden_act(prep.gelu()),
        "layer_norm_eps": prep.semantics().norm_eps,
        "attention_dropout": 0.0,
        "vision_use_head": use_head,
    });
    if let (Value::Object(c), Some((_, (h, w)))) = (&mut cfg, prep.naflex_grid()) {
        c.remove("image_size");
        c.insert("num_patches".into(), json!(h.saturating_mul(w)));
    }
    cfg
}

/// The SigLIP vision classes for a model without a class token (mean or MAP pooling).
pub fn plan(prep: Prepared<'_>, source_name: &str) -> Result<Plan> {
    let a = prep.arch().clone();
    let tower = prep.tower();
    // An unpooled tower's head (PaliGemma's) projects every token: it is PaliGemma's projector, written beside
    // the SiglipVisionModel it follows, not a classifier.
    let projector = match (&tower.head, prep.keep_head, a.classifier) {
        (Some(head), true, Classifier::None) => Some(head),
        _ => None,
    };
    let classify = prep.keep_head && tower.head.is_some() && projector.is_none();
    if prep.has_pre_logits() {
        return Err(prep.refuse(
            Part::PreLogits {
                hidden: a.hidden,
                representation: a.representation.unwrap_or(0),
            },
            "transformers' SigLIP vision classes have no representation layer; pass --drop-head for a SiglipVisionModel feature extractor",
        ));
    }
    if classify && a.classifier == Classifier::Map {
        return Err(prep.refuse(
            Part::MapHeadWithClassifier,
            "SiglipForImageClassification averages the tokens and has no place for the MAP head before its classifier; pass --drop-head for a SiglipVisionModel, whose pooler_output is the MAP head's output",
        ));
    }
    prep.check_input_norm()?;
    let map = prep.map_head()?;
    let prefix = if classify { names::VISION_MODEL } else { "" };
    let d = a.hidden;
    let mut out = vision_tensors(&prep, prefix, map)?;
    let generation = classes(&prep);
    let classes = if classify {
        a.num_classes.unwrap_or(0)
    } else {
        0
    };
    if let (true, Some(head)) = (classify, &tower.head) {
        out.extend(hf_files::classifier(head, d, classes));
    }
    let projection_dim = a.num_classes.filter(|_| projector.is_some());
    if let (Some(head), Some(width)) = (projector, projection_dim) {
        out.extend(crate::layout::prepared::linear(
            head,
            d,
            width,
            names::PROJECTOR_W,
            names::PROJECTOR_B,
        ));
    }

    let mut vision = vision_config(&prep, map.is_some());
    if let (Value::Object(v), Some(width)) = (&mut vision, projection_dim) {
        // `PaliGemmaConfig.vision_config.projection_dim` sizes the projector; SiglipVisionConfig keeps it.
        v.insert("projection_dim".into(), json!(width));
    }
    let mut prep = prep;
    if let Some(width) = projection_dim {
        prep.notes.push(format!(
            "projector: the per-token head {d} -> {width} written beside the SiglipVisionModel as {} / {} (PaliGemma's names); SiglipVisionModel.from_pretrained loads every other weight and reports these two as UNEXPECTED",
            names::PROJECTOR_W,
            names::PROJECTOR_B
        ));
    }
    let arch_class = if classify {
        generation.classifier
    } else {
        generation.vision
    };
    let mut cfg = match (classify, vision) {
        (true, vision) => {
            let mut cfg = Map::new();
            cfg.insert("model_type".into(), json!(generation.model_type));
            cfg.insert("vision_config".into(), vision);
            // transformers fills a missing text config with CLIP's token ids (BOS 49406), out of any SigLIP
            // vocabulary, and warns at every load; this classifier has no text tower, so no ids at all.
            cfg.insert(
                "text_config".into(),
                json!({"bos_token_id": null, "eos_token_id": null, "pad_token_id": null}),
            );
            hf_files::insert_labels(&mut cfg, classes, prep.labels());
            cfg
        }
        (false, Value::Object(vision)) => vision,
        (false, _) => Map::new(),
    };
    cfg.insert("architectures".into(), json!([arch_class]));
    cfg.insert("torch_dtype".into(), json!(dtype_name(prep.opts.dtype)));
    let mut preprocessor = preprocessor(&prep);
    hf_files::image_only_processor(&mut preprocessor);
    let python = match projection_dim {
        Some(width) => format!(
            "import torch\nfrom safetensors.torch import load_file\nfrom transformers import {arch_class}\nmodel = {arch_class}.from_pretrained({OUTPUT_DIR_TOKEN})  # the image tokens: last_hidden_state\nw = load_file({OUTPUT_DIR_TOKEN} + '/{}')\nprojector = torch.nn.Linear({d}, {width})  # PaliGemma's multi_modal_projector.linear: tokens to the LLM width\nprojector.load_state_dict({{'weight': w['{}'], 'bias': w['{}']}})",
            hf_files::WEIGHTS_FILE,
            names::PROJECTOR_W,
            names::PROJECTOR_B
        ),
        None => format!(
            "from transformers import {arch_class}\nmodel = {arch_class}.from_pretrained({OUTPUT_DIR_TOKEN})"
        ),
    };
    let head = match (classify, map.is_some(), projection_dim) {
        (_, _, Some(_)) => DeclaredHead::Projector,
        (true, _, _) => DeclaredHead::Head,
        (false, true, _) => DeclaredHead::Map,
        (false, false, _) => DeclaredHead::None,
    };
    let config = prep.config(head, None);
    let mut meta = prep.metadata(source_name, &config);
    meta.insert(
        crate::meta::HF_ARCHITECTURE.to_string(),
        arch_class.to_string(),
    );
    let side = vec![
        SideFile {
            name: CONFIG_FILE.to_string(),
            contents: pretty(&Value::Object(cfg)),
        },
        SideFile {
            name: PREPROCESSOR_FILE.to_string(),
            contents: pretty(&preprocessor),
        },
    ];
    Ok(prep.finish(OutputKind::HfDirectory, out, meta, python, side))
}
