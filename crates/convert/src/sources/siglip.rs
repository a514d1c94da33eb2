//! big_vision two-tower image-text checkpoints (SigLIP, SigLIP 2): an image ViT under `img/`, a text
//! transformer under `txt/`, the log temperature `t` and SigLIP's bias `b`, with or without the `params/` root,
//! blocks stacked or unrolled, f32 or bf16, training state left out.
//!
//! The image tower is read by the big_vision ViT source (`big_vision::read_tower`); this module reads
//! the text tower and the scalars, and checks that the two towers meet in one embedding width. The semantics
//! are those of big_vision's `models/proj/image_text/two_towers.py` and `text_transformer.py`: token
//! embedding plus a learned position table, pre-norm blocks with no causal mask, `encoder_norm`, the LAST
//! position pooled, an optional `head`; each tower's output L2-normalised; `logits = zimg . ztxt * exp(t) + b`.

use vitconv_tensors::TensorInfo;

use super::big_vision::{dense_at, read_tower, split_training_state, training_state_note, Pooling};
use super::flax_tree::{read_encoder, BIG_VISION, TEXT_ENCODER};
use super::keys::{dims, under, Keys};
use crate::arch::PatchEmbedKind;
use crate::error::{Error, Result};
use crate::model::{Logit, Model, Param, Semantics, TextArch, TextPool, TextTower};

/// The family's name in reports and metadata.
pub const FAMILY: &str = "siglip";

/// Roots under which big_vision files keep the model: `params/` as `save_checkpoint` writes it, or none.
const ROOTS: &[&str] = &["params/", ""];

/// The root of a two-tower file: where `img/embedding/kernel` is.
pub fn root(tensors: &[TensorInfo]) -> Option<&'static str> {
    let has = |k: &str| tensors.iter().any(|t| t.name == k);
    ROOTS
        .iter()
        .copied()
        .find(|r| has(&format!("{r}img/embedding/kernel")))
}

/// Whether the file is a big_vision two-tower checkpoint (an image ViT under `img/`).
pub fn claims(tensors: &[TensorInfo]) -> bool {
    root(tensors).is_some()
}

/// A scalar stored as `[1]` (big_vision's `t` and `b`) or `[]`.
fn scalar(keys: &mut Keys<'_>, name: &str, what: &str) -> Result<Param> {
    let found = keys.need(name, what)?;
    if found != [1] && !found.is_empty() {
        return Err(Error::ShapeMismatch {
            name: name.to_string(),
            expected: vec![1],
            found: found.to_vec(),
            role: what.to_string(),
        });
    }
    keys.param(name)
}

/// Reads a two-tower checkpoint into the neutral model: the image tower as a big_vision ViT, the text tower
/// and the scalars here; every tensor accounted for.
pub fn read(tensors: &[TensorInfo]) -> Result<Model> {
    read_two_tower(tensors, FAMILY, PatchEmbedKind::Conv)
}

/// Reads a two-tower checkpoint of `family` whose image tower embeds its patches as `embed` says (a
/// convolution in SigLIP and SigLIP 2, a linear map with a position grid in SigLIP 2 NaFlex): the image tower by
/// the big_vision ViT reader, the text tower and the scalars here; every tensor accounted for.
pub(crate) fn read_two_tower(
    tensors: &[TensorInfo],
    family: &'static str,
    embed: PatchEmbedKind,
) -> Result<Model> {
    let Some(root) = root(tensors) else {
        return Err(Error::NoRoot {
            tensors: tensors.len(),
            looked_for: "img/embedding/kernel under params/ or at the top",
        });
    };
    let what = match embed {
        PatchEmbedKind::Conv => "big_vision two-tower checkpoint",
        PatchEmbedKind::Linear => "big_vision SigLIP 2 NaFlex two-tower checkpoint",
    };
    let recognised = under(what, root);
    let (state, weights) = split_training_state(tensors, root)?;
    let mut keys = Keys::new(&weights, &recognised);
    let img = format!("{root}img/");
    let (image, image_notes) = read_tower(&mut keys, &img, embed, Pooling::FromKeys)?;

    // Text tower: token and position embeddings of one width, the encoder, an optional head.
    let txt = format!("{root}txt/");
    let emb = format!("{txt}Embed_0/embedding");
    let [vocab, width] = dims(
        &emb,
        keys.need(&emb, "text token embedding")?,
        "[vocab, width]",
        "text token embedding",
    )?;
    let pos = format!("{txt}pos_embedding");
    let [one, context, pos_width] = dims(
        &pos,
        keys.need(&pos, "text position embedding")?,
        "[1, context, width]",
        "text position embedding",
    )?;
    // An empty vocabulary is the token embedding's fault, not the position embedding's: naming the position
    // embedding would report its (consistent) shape as both what was expected and what was found.
    if vocab == 0 {
        return Err(Error::EmptyVocabulary {
            name: emb,
            found: vec![vocab, width],
        });
    }
    if one != 1 || pos_width != width || context == 0 {
        return Err(Error::ShapeMismatch {
            name: pos,
            expected: vec![1, context.max(1), width],
            found: vec![one, context, pos_width],
            role: "text position embedding [1, context, width of Embed_0]".to_string(),
        });
    }
    let enc = read_encoder(&mut keys, &txt, TEXT_ENCODER, BIG_VISION, width)?;
    let text_embed = keys.optional_dense(
        &format!("{txt}head/kernel"),
        &format!("{txt}head/bias"),
        width,
        "text head [width, embedding]",
    )?;

    // The two towers meet in one embedding space.
    let image_embed = image
        .arch
        .num_classes
        .or(image.arch.representation)
        .unwrap_or(image.arch.hidden);
    let text_out = text_embed.unwrap_or(width);
    if image_embed != text_out {
        return Err(Error::EmbedMismatch {
            image: image_embed,
            text: text_out,
        });
    }
    let scale = scalar(&mut keys, &format!("{root}t"), "log temperature t")?;
    let bias_name = format!("{root}b");
    let bias = match keys.has(&bias_name) {
        true => Some(scalar(&mut keys, &bias_name, "logit bias b")?),
        false => None,
    };
    keys.check_all_used()?;
    let stacked = enc.tree.stacked();
    let text = TextTower {
        arch: TextArch {
            vocab,
            context,
            width,
            heads: enc.heads,
            mlp: enc.mlp,
            depth: enc.depth,
            embed: text_embed,
            stacked,
        },
        embedding: keys.param(&emb)?,
        pos: keys.param(&pos)?,
        blocks: enc.blocks,
        final_norm: enc.final_norm,
        head: match text_embed {
            Some(_) => Some(dense_at(&keys, &format!("{txt}head/"))?),
            None => None,
        },
        // big_vision's `text_transformer.py`: flax's encoder defaults (no causal mask) and the last token pooled.
        pool: TextPool::Last,
        semantics: Semantics::FLAX_ENCODER,
    };
    let mut notes: Vec<String> = image_notes
        .into_iter()
        .map(|n| format!("image tower: {n}"))
        .collect();
    notes.push(format!(
        "text tower: {} blocks {} (Encoder_0/), last-token pooling, {}",
        text.arch.depth,
        if stacked {
            "stacked (scan format)"
        } else {
            "unrolled"
        },
        match text_embed {
            Some(e) => format!("head {width} -> {e}"),
            None => "no head".to_string(),
        }
    ));
    if bias.is_none() {
        notes.push(
            "no logit bias b (a LiT-style model): logits are zimg . ztxt * exp(t)".to_string(),
        );
    }
    notes.extend(training_state_note(&state));
    let (shapes, left_out) = keys.shapes_and_left_out(&state);
    Ok(Model {
        family,
        recognised: keys.recognised.clone(),
        image,
        text: Some(text),
        logit: Some(Logit { scale, bias }),
        llm: None,
        notes,
        shapes,
        left_out,
    })
}
