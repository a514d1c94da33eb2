//! transformers' `SiglipModel`, the `hf` layout's home for two-tower image-text models: a folder that
//! `SiglipModel.from_pretrained(OUT)` loads (and, with `--tokenizer`, `SiglipProcessor.from_pretrained(OUT)`).
//!
//! Names and semantics follow transformers 5.24 `models/siglip/modeling_siglip.py`: `vision_model.` holds
//! `SiglipVisionModel`'s parts (see `hf_siglip`), `text_model.` holds `SiglipTextModel`'s
//! (`embeddings.token_embedding`, `embeddings.position_embedding` with one row per position, the same
//! `SiglipEncoderLayer`s, `final_layer_norm`, then `head` on the LAST position: big_vision's last-token
//! pooling), and `logit_scale`/`logit_bias` are `[1]` parameters used as `exp(logit_scale)` and `+ logit_bias`.
//! transformers' vision tower ends at the MAP head: it has no projection after it, so an image tower with a
//! `head` is refused here (open_clip holds it).
//!
//! A SigLIP 2 NaFlex model is transformers' `Siglip2Model` (`models/siglip2/`), whose text tower and state-dict
//! names are `SiglipModel`'s; only the classes, model types and the vision tower's embeddings differ
//! (`hf_siglip::classes`, `hf_siglip::vision_tensors`).

use serde_json::json;

use crate::error::{Part, Result};
use crate::layout::hf_files::{self, dtype_name, pretty, CONFIG_FILE, PREPROCESSOR_FILE};
use crate::layout::hf_siglip::{self, names as vision_names, BLOCK};
use crate::layout::prepared::{Prepared, TextRole, TextTable};
use crate::model::TextPool;
use crate::plan::OUTPUT_DIR_TOKEN;
use crate::plan::{OutputKind, Plan, SideFile};
use crate::record::DeclaredHead;

/// The text tower outside its blocks (`SiglipTextModel` under `text_model.`).
pub const TEXT: &TextTable = &[
    (
        "text_model.embeddings.token_embedding.weight",
        TextRole::Token,
    ),
    (
        "text_model.embeddings.position_embedding.weight",
        TextRole::Position,
    ),
    ("text_model.final_layer_norm.weight", TextRole::NormScale),
    ("text_model.final_layer_norm.bias", TextRole::NormBias),
    ("text_model.head.weight", TextRole::HeadWeight),
    ("text_model.head.bias", TextRole::HeadBias),
];

/// Prefix of the text tower's encoder layers (named as in [`BLOCK`]).
pub const TEXT_MODEL: &str = "text_model.";

/// `SiglipModel`'s logit scale, `[1]`.
pub const LOGIT_SCALE: &str = "logit_scale";
/// `SiglipModel`'s logit bias, `[1]`.
pub const LOGIT_BIAS: &str = "logit_bias";

/// The `SiglipModel` folder for a two-tower source.
pub fn plan(mut prep: Prepared<'_>, source_name: &str) -> Result<Plan> {
    let a = prep.arch().clone();
    let tower = prep.tower();
    if let (Some(_), Some(embed)) = (&tower.head, a.num_classes) {
        return Err(prep.refuse(
            Part::ImageHead {
                hidden: a.hidden,
                embed,
            },
            "transformers' SiglipVisionModel ends at the MAP head and has no place for an image projection; use --layout open_clip, which holds it",
        ));
    }
    if prep.has_pre_logits() {
        return Err(prep.refuse(
            Part::PreLogits {
                hidden: a.hidden,
                representation: a.representation.unwrap_or(0),
            },
            "transformers' SiglipVisionModel has no representation layer; use --layout open_clip",
        ));
    }
    prep.check_input_norm()?;
    let map = prep.map_head()?;
    if map.is_none() {
        return Err(prep.refuse(
            Part::Pooling(a.classifier),
            "SiglipModel's image embedding is the MAP head's output (vision_use_head); use --layout open_clip",
        ));
    }
    let model = prep.model;
    let Some(text) = model.text.as_ref().filter(|_| prep.two_tower()) else {
        return hf_siglip::plan(prep, source_name);
    };
    let t = text.arch.clone();
    // SiglipTextTransformer attends without a mask and pools the last position: a tower computing otherwise
    // has no place here.
    if text.semantics.causal {
        return Err(prep.refuse(
            Part::CausalText,
            "transformers' SiglipTextModel attends without a causal mask; use --layout open_clip, which declares the mask (no_causal_mask false)",
        ));
    }
    match text.pool {
        TextPool::Last => {}
    }
    let generation = hf_siglip::classes(&prep);
    let mut out = hf_siglip::vision_tensors(&prep, vision_names::VISION_MODEL, map)?;
    // transformers' SiglipTextTransformer always has its `head`.
    out.extend(prep.text_tensors(TEXT, BLOCK, TEXT_MODEL, false)?);
    out.extend(prep.logit_tensors(LOGIT_SCALE, LOGIT_BIAS, &[1]));

    let embed = t.embed.unwrap_or(t.width);
    // Without a tokenizer the ids are big_vision's: `</s>` is id 1 in every published SigLIP vocabulary, and
    // pads. A Gemma-kind tokenizer pads with `<pad>` 0 and has a BOS (2) it never adds.
    let (eos, pad, bos) = prep
        .tokenizer
        .as_ref()
        .map(|s| (s.eos_id, s.pad_id, s.bos_id))
        .unwrap_or((1, 1, None));
    let text_config = json!({
        "model_type": generation.text_type,
        "vocab_size": t.vocab,
        "hidden_size": t.width,
        "intermediate_size": t.mlp,
        "num_hidden_layers": t.depth,
        "num_attention_heads": t.heads,
        "max_position_embeddings": t.context,
        "hidden_act": hf_files::hidden_act(prep.gelu_for(&text.semantics)),
        "layer_norm_eps": text.semantics.norm_eps,
        "attention_dropout": 0.0,
        "projection_size": embed,
        "pad_token_id": pad,
        "eos_token_id": eos,
        // SigLIP adds no BOS; transformers' default is CLIP's 49406, out of the vocabulary.
        "bos_token_id": bos,
    });
    let cfg = json!({
        "architectures": [generation.model],
        "model_type": generation.model_type,
        "text_config": text_config,
        "vision_config": hf_siglip::vision_config(&prep, true),
        "torch_dtype": dtype_name(prep.opts.dtype),
    });
    let mut preprocessor = hf_siglip::preprocessor(&prep);
    if prep.tokenizer.is_none() {
        hf_files::image_only_processor(&mut preprocessor);
    }
    let mut side = vec![
        SideFile {
            name: CONFIG_FILE.to_string(),
            contents: pretty(&cfg),
        },
        SideFile {
            name: PREPROCESSOR_FILE.to_string(),
            contents: pretty(&preprocessor),
        },
    ];
    let mut copied = Vec::new();
    if generation.overrides_tokenizer && prep.tokenizer.is_some() {
        prep.notes.push(format!(
            "tokenizer: load it with PreTrainedTokenizerFast.from_pretrained(OUT), not AutoTokenizer or {processor}: transformers maps model_type '{model_type}' to its own tokenizer class whatever tokenizer_config.json names, which lowercases all of Unicode and rebuilds the vocabulary as BPE, giving other ids than big_vision's",
            processor = generation.processor,
            model_type = generation.model_type,
        ));
    }
    let python = match &prep.tokenizer {
        Some(sp) => {
            let (files, model) = sp.files(t.context);
            side.extend(files);
            copied.push(model);
            if generation.overrides_tokenizer {
                format!("from transformers import {model}, {image_processor}, PreTrainedTokenizerFast\nmodel = {model}.from_pretrained({OUTPUT_DIR_TOKEN})\nimage_processor = {image_processor}.from_pretrained({OUTPUT_DIR_TOKEN})\ntokenizer = PreTrainedTokenizerFast.from_pretrained({OUTPUT_DIR_TOKEN})  # not AutoTokenizer: see the notes; text: tokenizer(texts, padding='max_length', truncation=True)", model = generation.model, image_processor = generation.image_processor)
            } else {
                format!("from transformers import {model}, {processor}\nmodel = {model}.from_pretrained({OUTPUT_DIR_TOKEN})\nprocessor = {processor}.from_pretrained({OUTPUT_DIR_TOKEN})  # text: processor(text=..., padding='max_length', truncation=True)", model = generation.model, processor = generation.processor)
            }
        }
        None => format!("from transformers import {model}\nmodel = {model}.from_pretrained({OUTPUT_DIR_TOKEN})  # text input: token ids from the model's SentencePiece tokenizer (--tokenizer)", model = generation.model),
    };
    let config = prep.config(DeclaredHead::Map, None);
    let mut meta = prep.metadata(source_name, &config);
    meta.insert(
        crate::meta::HF_ARCHITECTURE.to_string(),
        generation.model.to_string(),
    );
    let mut plan = prep.finish(OutputKind::HfDirectory, out, meta, python, side);
    plan.copied_files = copied;
    Ok(plan)
}
