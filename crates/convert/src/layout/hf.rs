//! The Hugging Face transformers layout: a directory that `ViTForImageClassification.from_pretrained` loads.
//!
//! Names follow transformers 5.24 `models/vit/modeling_vit.py` (`vit.layers.N.attention.{q,k,v,o}_proj`,
//! `layernorm_before/after`, `mlp.fc1/fc2`, `classifier`) and `configuration_vit.py` (`ViTConfig`: `hidden_act`,
//! `layer_norm_eps` defaulting to 1e-12, `pooler_output_size`, `pooler_act`). transformers 5 has no ViT-hybrid
//! class, and its ViT always prepends a class token and pools token 0, so gap and hybrid sources are refused.

use serde_json::{json, Map, Value};

use crate::arch::{Arch, Classifier, PatchEmbedKind, PosEmbKind};
use crate::error::{Part, Result};
use crate::layout::hf_files::{self, dtype_name, pretty, CONFIG_FILE, PREPROCESSOR_FILE};
use crate::layout::prepared::{linear, name, norm_pair, BlockRole, BlockTable, Prepared};
use crate::layout::recognise::{count_blocks, get, grid_side, Recognised, Shapes};
use crate::model::Proj;
use crate::plan::OUTPUT_DIR_TOKEN;
use crate::plan::{Fetch, OutTensor, OutputKind, Plan, Recipe, SideFile};
use crate::record::DeclaredHead;

/// transformers state-dict names (`{i}` = layer index), without the `vit.` prefix `ViTForImageClassification` adds.
pub mod names {
    /// The class token.
    pub const CLS: &str = "embeddings.cls_token";
    /// The position embedding.
    pub const POS: &str = "embeddings.position_embeddings";
    /// The weight of the patch embedding's convolution.
    pub const PATCH_W: &str = "embeddings.patch_embeddings.projection.weight";
    /// The bias of the patch embedding's convolution.
    pub const PATCH_B: &str = "embeddings.patch_embeddings.projection.bias";
    /// The weight of each layer's LayerNorm before attention.
    pub const LN1_W: &str = "layers.{i}.layernorm_before.weight";
    /// The bias of each layer's LayerNorm before attention.
    pub const LN1_B: &str = "layers.{i}.layernorm_before.bias";
    /// The weight of each layer's query projection.
    pub const Q_W: &str = "layers.{i}.attention.q_proj.weight";
    /// The bias of each layer's query projection.
    pub const Q_B: &str = "layers.{i}.attention.q_proj.bias";
    /// The weight of each layer's key projection.
    pub const K_W: &str = "layers.{i}.attention.k_proj.weight";
    /// The bias of each layer's key projection.
    pub const K_B: &str = "layers.{i}.attention.k_proj.bias";
    /// The weight of each layer's value projection.
    pub const V_W: &str = "layers.{i}.attention.v_proj.weight";
    /// The bias of each layer's value projection.
    pub const V_B: &str = "layers.{i}.attention.v_proj.bias";
    /// The weight of each layer's attention output projection.
    pub const O_W: &str = "layers.{i}.attention.o_proj.weight";
    /// The bias of each layer's attention output projection.
    pub const O_B: &str = "layers.{i}.attention.o_proj.bias";
    /// The weight of each layer's LayerNorm before the MLP.
    pub const LN2_W: &str = "layers.{i}.layernorm_after.weight";
    /// The bias of each layer's LayerNorm before the MLP.
    pub const LN2_B: &str = "layers.{i}.layernorm_after.bias";
    /// The weight of the first MLP layer of each block.
    pub const FC1_W: &str = "layers.{i}.mlp.fc1.weight";
    /// The bias of the first MLP layer of each block.
    pub const FC1_B: &str = "layers.{i}.mlp.fc1.bias";
    /// The weight of the second MLP layer of each block.
    pub const FC2_W: &str = "layers.{i}.mlp.fc2.weight";
    /// The bias of the second MLP layer of each block.
    pub const FC2_B: &str = "layers.{i}.mlp.fc2.bias";
    /// The weight of the final LayerNorm.
    pub const NORM_W: &str = "layernorm.weight";
    /// The bias of the final LayerNorm.
    pub const NORM_B: &str = "layernorm.bias";
    /// The weight of the pooler's dense layer (pre_logits).
    pub const POOLER_W: &str = "pooler.dense.weight";
    /// The bias of the pooler's dense layer (pre_logits).
    pub const POOLER_B: &str = "pooler.dense.bias";
    /// The weight of the classification head.
    pub const CLASSIFIER_W: &str = crate::layout::hf_files::CLASSIFIER_W;
    /// The bias of the classification head.
    pub const CLASSIFIER_B: &str = crate::layout::hf_files::CLASSIFIER_B;
    /// Prefix of the backbone inside `ViTForImageClassification`.
    pub const BACKBONE: &str = "vit.";
}

/// One `layers.{i}` of transformers' `ViTLayer` (separate q, k, v and o projections).
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

/// Block names of transformers before 5 (`encoder.layer.N.intermediate.dense` for `fc1`), still recognised.
const OLD_FC1_W: &str = "encoder.layer.{i}.intermediate.dense.weight";

/// Recognises a transformers ViT or SigLIP vision state dict for `inspect`, from [`names`] and
/// [`super::hf_siglip::names`].
pub fn recognise(s: &Shapes<'_>) -> Option<Recognised> {
    if let Some(mut r) = super::hf_siglip::recognise(s) {
        // A SiglipModel: the vision tower plus `text_model.`.
        r.text = super::recognise::text_arch(
            s,
            super::hf_siglip_model::TEXT,
            super::hf_siglip::BLOCK,
            super::hf_siglip_model::TEXT_MODEL,
        );
        return Some(r);
    }
    let p = if s.contains_key(format!("{}{}", names::BACKBONE, names::CLS).as_str()) {
        names::BACKBONE
    } else {
        ""
    };
    let &[hidden, in_chans, patch, _] = get(s, &format!("{p}{}", names::PATCH_W))? else {
        return None;
    };
    let &[_, rows, _] = get(s, &format!("{p}{}", names::POS))? else {
        return None;
    };
    let side = grid_side(rows, 1)?;
    let new = count_blocks(s, p, names::FC1_W);
    let old = count_blocks(s, p, OLD_FC1_W);
    let (depth, fc1) = if new > 0 {
        (new, names::FC1_W)
    } else {
        (old, OLD_FC1_W)
    };
    if depth == 0 {
        return None;
    }
    let &[mlp, _] = get(s, &format!("{p}{}", name(fc1, 0)))? else {
        return None;
    };
    let arch = Arch {
        patch,
        patch_embed: PatchEmbedKind::Conv,
        in_chans,
        hidden,
        heads: None,
        mlp,
        depth,
        grid: Some((side, side)),
        posemb: PosEmbKind::Learned,
        class_pos: true,
        classifier: Classifier::Token,
        num_classes: get(s, names::CLASSIFIER_W).and_then(|h| h.first().copied()),
        representation: get(s, &format!("{p}{}", names::POOLER_W)).and_then(|h| h.first().copied()),
        resnet: None,
        stacked: false,
    };
    let mut notes = vec![];
    if arch.representation.is_some() {
        notes.push("the pooler (dense + tanh) plays the role of pre_logits".to_string());
    }
    Some(Recognised {
        family: "transformers",
        arch,
        class_shape: None,
        patch_bias: true,
        notes,
        text: None,
    })
}

/// The transformers plan (a `ViTForImageClassification` or `ViTModel` directory) for a prepared source; towers without a class token go to SigLIP's classes.
pub fn plan(mut prep: Prepared<'_>, _fetch: &dyn Fetch, source_name: &str) -> Result<Plan> {
    if prep.two_tower() {
        // Image-text models are transformers' SiglipModel.
        return super::hf_siglip_model::plan(prep, source_name);
    }
    let a = prep.arch().clone();
    if a.resnet.is_some() {
        return Err(prep.refuse(
            Part::HybridStem {
                width: a.resnet.as_ref().map_or(0, |r| r.width),
            },
            "transformers 5 has no ViT-hybrid model class; use --layout timm",
        ));
    }
    if !a.class_token() {
        // Mean and MAP pooling without a class token are SigLIP's vision tower in transformers.
        return super::hf_siglip::plan(prep, source_name);
    }
    prep.check_input_norm()?;
    let tower = prep.tower();
    // ViTForImageClassification has no pooler, so pre_logits only fits as ViTModel's pooler (dense + tanh):
    // with the head dropped, keep it there instead of dropping it.
    let pooler = a.representation.filter(|_| !prep.keep_head);
    if prep.has_pre_logits() {
        return Err(prep.refuse(
            Part::PreLogits {
                hidden: a.hidden,
                representation: a.representation.unwrap_or(0),
            },
            "ViTForImageClassification classifies token 0 without a pooler; pass --drop-head to get a ViTModel whose pooler is pre_logits",
        ));
    }
    if let (Some(_), Some(pre)) = (pooler, &tower.pre_logits) {
        let keep = [pre.kernel.tensor.clone(), pre.bias.tensor.clone()];
        prep.dropped.retain(|k| !keep.contains(k));
        prep.notes.retain(|s| !s.starts_with("pre_logits"));
        prep.notes.push(
            "pre_logits (dense + tanh) mapped to ViTModel's pooler (pooler_act tanh)".to_string(),
        );
    }
    let classify = prep.keep_head && a.num_classes.is_some();
    let prefix = if classify { names::BACKBONE } else { "" };
    let (d, m) = (a.hidden, a.mlp);
    let t = |nm: &str, i: usize, shape: Vec<usize>, recipe: Recipe| OutTensor {
        name: format!("{prefix}{}", name(nm, i)),
        shape,
        recipe,
    };
    let Some(cls) = &tower.class_token else {
        return Err(prep.refuse(
            Part::NoClassToken,
            "transformers' ViT always prepends a class token and pools token 0; use --layout timm",
        ));
    };
    let (pos_rows, pos) = prep.pos_table(true, false)?;
    let mut out = vec![
        t(names::CLS, 0, vec![1, 1, d], Recipe::Copy(cls.clone())),
        t(names::POS, 0, vec![1, pos_rows, d], pos),
        t(
            names::PATCH_W,
            0,
            vec![d, a.in_chans, a.patch, a.patch],
            prep.patch_kernel(),
        ),
        t(names::PATCH_B, 0, vec![d], prep.patch_bias()),
    ];
    for (i, b) in tower.blocks.iter().enumerate() {
        out.extend(prep.block_tensors(BLOCK, prefix, i, b));
    }
    out.extend(norm_pair(
        &tower.final_norm,
        d,
        &format!("{prefix}{}", names::NORM_W),
        &format!("{prefix}{}", names::NORM_B),
    ));
    if let (Some(r), Some(pre)) = (pooler, &tower.pre_logits) {
        out.extend(linear(
            pre,
            d,
            r,
            &format!("{prefix}{}", names::POOLER_W),
            &format!("{prefix}{}", names::POOLER_B),
        ));
    }
    let classes = if classify {
        a.num_classes.unwrap_or(0)
    } else {
        0
    };
    if let (true, Some(head)) = (classify, &tower.head) {
        out.extend(hf_files::classifier(head, d, classes));
    }

    let act = hf_files::hidden_act(prep.gelu());
    let arch_class = if classify {
        "ViTForImageClassification"
    } else {
        "ViTModel"
    };
    let mut cfg = Map::new();
    cfg.insert("architectures".into(), json!([arch_class]));
    cfg.insert("model_type".into(), json!("vit"));
    cfg.insert("hidden_size".into(), json!(d));
    cfg.insert("num_hidden_layers".into(), json!(a.depth));
    cfg.insert("num_attention_heads".into(), json!(a.heads));
    cfg.insert("intermediate_size".into(), json!(m));
    cfg.insert("hidden_act".into(), json!(act));
    cfg.insert("hidden_dropout_prob".into(), json!(0.0));
    cfg.insert("attention_probs_dropout_prob".into(), json!(0.0));
    cfg.insert("layer_norm_eps".into(), json!(prep.semantics().norm_eps));
    cfg.insert("image_size".into(), json!(prep.image_size));
    cfg.insert("patch_size".into(), json!(a.patch));
    cfg.insert("num_channels".into(), json!(a.in_chans));
    cfg.insert("qkv_bias".into(), json!(true));
    if let Some(r) = pooler {
        cfg.insert("pooler_output_size".into(), json!(r));
        cfg.insert("pooler_act".into(), json!("tanh"));
    }
    if classify {
        hf_files::insert_labels(&mut cfg, classes, prep.labels());
    }
    cfg.insert("torch_dtype".into(), json!(dtype_name(prep.opts.dtype)));
    let preprocessor = hf_files::preprocessor("ViTImageProcessor", prep.image_size, prep.norm);
    let python = if classify || pooler.is_some() {
        format!("from transformers import {arch_class}\nmodel = {arch_class}.from_pretrained({OUTPUT_DIR_TOKEN})")
    } else {
        format!("from transformers import ViTModel\nmodel = ViTModel.from_pretrained({OUTPUT_DIR_TOKEN}, add_pooling_layer=False)")
    };
    let head = if classify {
        DeclaredHead::Head
    } else {
        DeclaredHead::None
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
