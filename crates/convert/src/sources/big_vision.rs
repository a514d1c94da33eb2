//! The google-research/big_vision source family: ViT `.npz` files written by big_vision's `vit.py`
//! (a `params/` root or none, Linen block names, blocks unrolled or stacked along a leading depth axis, a
//! learned `pos_embedding` without a class row or a computed sincos2d one, `tok`/`gap`/`map` pooling,
//! `pre_logits`, an optional head), and training checkpoints whose `opt/` and `chrono/` state is left out.
//!
//! [`read`] checks the file completely and describes it as a [`Model`]; the encoder's names are
//! [`flax_tree`](super::flax_tree)'s, the others are known to this module alone. The semantics (which this module only names; the layouts and `verify` compute them)
//! are those of big_vision's `models/vit.py`: the class token is concatenated after the position embedding
//! is added, `MAPHead` attends from a learned probe, `pool_type='gap'` averages after `encoder_norm`.

use vitconv_tensors::TensorInfo;

use super::flax_tree::{
    check_attention, check_mlp, read_encoder, Encoder, Naming, BIG_VISION, IMAGE_ENCODER,
};
use super::keys::{dims, under, Keys};
use crate::arch::{Arch, Classifier, PatchEmbedKind, PosEmbKind};
use crate::error::{Error, Result};
use crate::model::{
    Attention, Dense, MapHead, Model, Norm, Pool, PosEmbed, Proj, Semantics, Tower,
};

/// The family's name in reports and metadata.
pub const FAMILY: &str = "big_vision";

/// Roots under which big_vision files keep the model: `params/` as `save_checkpoint` writes it, or none.
const ROOTS: &[&str] = &["params/", ""];

/// Top-level entries of a training checkpoint that are not model weights: big_vision's optimizer state and step
/// timers (`opt/`, `chrono/`), a flax TrainState's or Orbax tree's optimizer state and step counter
/// (`opt_state/`, `step`). An entry ending in `/` is a subtree; the others are exact names.
const TRAINING_STATE: &[&str] = &["opt/", "chrono/", "opt_state/", "step"];

/// Whether `name` lies in the training-state entry `state`.
fn in_state(name: &str, state: &str) -> bool {
    if state.ends_with('/') {
        name.starts_with(state)
    } else {
        name == state
    }
}

/// The root of a big_vision ViT, if the file is one: `embedding/kernel` under `params/` or at the top, and
/// no `Transformer/posembed_input/pos_embedding` (vision_transformer files keep their table there; big_vision
/// keeps it at the top level or computes it).
pub fn root(tensors: &[TensorInfo]) -> Option<&'static str> {
    let has = |k: &str| tensors.iter().any(|t| t.name == k);
    ROOTS.iter().copied().find(|r| {
        has(&format!("{r}embedding/kernel"))
            && !has(&format!("{r}Transformer/posembed_input/pos_embedding"))
    })
}

/// Whether the file is of this family: the registry then leaves it to [`read`], whatever it finds wrong.
pub fn claims(tensors: &[TensorInfo]) -> bool {
    root(tensors).is_some()
}

/// The modules inside `MAPHead_0` are Linen's, named as in an encoder block (its one LayerNorm is `LayerNorm_0`).
const MAP_HEAD: Naming = Naming::Linen;

/// The tensors of a big_vision file that are model weights, and the training state beside them (`opt/`,
/// `chrono/` next to a `params/` root), which is left out; the weights must be floats.
pub(crate) fn split_training_state<'t>(
    tensors: &'t [TensorInfo],
    root: &str,
) -> Result<(Vec<&'t TensorInfo>, Vec<TensorInfo>)> {
    let (state, weights): (Vec<&TensorInfo>, Vec<&TensorInfo>) = tensors.iter().partition(|t| {
        !root.is_empty()
            && !t.name.starts_with(root)
            && TRAINING_STATE.iter().any(|p| in_state(&t.name, p))
    });
    let weights: Vec<TensorInfo> = weights.into_iter().cloned().collect();
    if let Some(t) = weights.iter().find(|t| !t.dtype.is_float()) {
        return Err(Error::NotFloat {
            name: t.name.clone(),
            dtype: t.dtype.to_string(),
        });
    }
    Ok((state, weights))
}

/// The note that says which training state was left out, if any.
pub(crate) fn training_state_note(state: &[&TensorInfo]) -> Option<String> {
    if state.is_empty() {
        return None;
    }
    let mut prefixes: Vec<&str> = TRAINING_STATE
        .iter()
        .copied()
        .filter(|p| state.iter().any(|t| in_state(&t.name, p)))
        .collect();
    prefixes.dedup();
    Some(format!(
        "training state left out: {} tensors under {} (optimizer state and step timers, not weights)",
        state.len(),
        prefixes.join(", ")
    ))
}

/// Reads a big_vision ViT checkpoint into the neutral model, checking every shape against the others and
/// accounting for every tensor (training state is left out, and said so).
pub fn read(tensors: &[TensorInfo]) -> Result<Model> {
    let Some(root) = root(tensors) else {
        return Err(Error::NoRoot {
            tensors: tensors.len(),
            looked_for: "embedding/kernel under params/ or at the top",
        });
    };
    let recognised = under("big_vision checkpoint", root);
    // Training state is set aside first: it is not part of the model, and holds integer counters.
    let (state, weights) = split_training_state(tensors, root)?;
    let mut keys = Keys::new(&weights, &recognised);
    let (image, mut notes) = read_vit(&mut keys, root)?;
    keys.check_all_used()?;
    notes.extend(training_state_note(&state));
    let (shapes, left_out) = keys.shapes_and_left_out(&state);
    Ok(Model {
        family: FAMILY,
        recognised: keys.recognised.clone(),
        image,
        text: None,
        logit: None,
        llm: None,
        notes,
        shapes,
        left_out,
    })
}

/// How a ViT's pooling is found: from its keys (a class token, a MAP head, or else `gap`), or given by the
/// model that builds the tower, where the keys cannot tell (PaliGemma's `pool_type='none'` stores exactly what
/// `gap` stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooling {
    /// `tok`, `map` or `gap`, as the keys say.
    FromKeys,
    /// `pool_type='none'`: no pooling, the head applied to every token. A class token or MAP head in the file
    /// is then no tensor of the model and is refused as unmapped.
    None,
}

/// Reads the big_vision ViT under `root` (`params/`, `params/img/`, ...): patch embedding, encoder, pooling,
/// position embedding, `pre_logits` and head, each shape checked; gives the tower and what the report should
/// say about its storage.
pub(crate) fn read_vit(keys: &mut Keys<'_>, root: &str) -> Result<(Tower, Vec<String>)> {
    read_tower(keys, root, PatchEmbedKind::Conv, Pooling::FromKeys)
}

/// [`read_vit`] with the pooling found as `pooling` says (PaliGemma's tower has none).
pub(crate) fn read_vit_as(
    keys: &mut Keys<'_>,
    root: &str,
    pooling: Pooling,
) -> Result<(Tower, Vec<String>)> {
    read_tower(keys, root, PatchEmbedKind::Conv, pooling)
}

/// [`read_vit`] for a tower whose patches are embedded as `embed` says: `vit.py`'s convolution (HWIO kernel
/// `[p, p, in, D]`) with a learned table or sincos2d, or `naflex_vit.py`'s Dense over (py, px, c)-flattened
/// patches (kernel `[p * p * 3, D]`) with its learned `[G, G, D]` position grid, which the model resizes to
/// each image's patch grid; pooled as `pooling` says. Everything after the embeddings is the same module in
/// both.
pub(crate) fn read_tower(
    keys: &mut Keys<'_>,
    root: &str,
    embed: PatchEmbedKind,
    pooling: Pooling,
) -> Result<(Tower, Vec<String>)> {
    let ek = format!("{root}embedding/kernel");
    let eb = format!("{root}embedding/bias");
    let [ph, in_chans, hidden] = match embed {
        PatchEmbedKind::Conv => keys.patch_embedding(&ek, &eb)?,
        PatchEmbedKind::Linear => keys.linear_patch_embedding(&ek, &eb)?,
    };
    let enc = read_encoder(keys, root, IMAGE_ENCODER, BIG_VISION, hidden)?;
    let (depth, heads, mlp) = (enc.depth, enc.heads, enc.mlp);

    // Pooling: a class token means `tok`, a MAP head `map`, neither `gap`.
    let cls = format!("{root}cls");
    let probe = format!("{root}MAPHead_0/probe");
    let classifier = if pooling == Pooling::None {
        Classifier::None
    } else if keys.has(&cls) {
        keys.need_shape(&cls, &[1, 1, hidden], "class token")?;
        Classifier::Token
    } else if keys.has(&probe) {
        keys.need_shape(&probe, &[1, 1, hidden], "MAP head probe")?;
        let map = format!("{root}MAPHead_0/");
        let mq = format!("{map}{}", MAP_HEAD.attn(Proj::Query, "kernel"));
        let [_, mh, mdh] = dims(
            &mq,
            keys.need(&mq, "MAP head query")?,
            "[hidden, heads, head_dim]",
            "MAP head query kernel",
        )?;
        if mh.checked_mul(mdh) != Some(hidden) {
            return Err(Error::HeadsMismatch {
                name: mq,
                hidden,
                found: vec![hidden, mh, mdh],
            });
        }
        check_attention(keys, &map, MAP_HEAD, &|s| s.to_vec(), [hidden, mh, mdh])?;
        let md0 = format!("{map}{}", MAP_HEAD.mlp(0, "kernel"));
        let [_, map_mlp] = dims(
            &md0,
            keys.need(&md0, "MAP head MLP")?,
            "[hidden, mlp]",
            "MAP head MLP kernel",
        )?;
        check_mlp(keys, &map, MAP_HEAD, &|s| s.to_vec(), hidden, map_mlp)?;
        for p in ["scale", "bias"] {
            keys.need_shape(
                &format!("{map}LayerNorm_0/{p}"),
                &[hidden],
                "MAP head LayerNorm",
            )?;
        }
        Classifier::Map
    } else {
        Classifier::Gap
    };

    // Position embedding: NaFlex's learned square grid; otherwise a learned table of the grid (no class row),
    // or nothing (sincos2d).
    let pe = format!("{root}pos_embedding");
    let (grid, posemb) = if embed == PatchEmbedKind::Linear {
        let found = keys.need(&pe, "NaFlex position grid")?;
        let [rows, cols, pe_d] = dims(&pe, found, "[G, G, hidden]", "NaFlex position grid")?;
        if rows == 0 || rows != cols || pe_d != hidden {
            return Err(Error::PosGridNotSquare {
                name: pe,
                hidden,
                found: found.to_vec(),
            });
        }
        (Some((rows, cols)), PosEmbKind::LearnedGrid)
    } else if keys.has(&pe) {
        let [one, rows, pe_d] = dims(
            &pe,
            keys.need(&pe, "position embedding")?,
            "[1, h*w, hidden]",
            "position embedding",
        )?;
        let side = rows.isqrt();
        if one != 1 || pe_d != hidden || side == 0 || side.checked_mul(side) != Some(rows) {
            return Err(Error::PosEmbNotSquare {
                name: pe,
                hidden,
                found: vec![one, rows, pe_d],
                class_row: false,
                cells: rows,
            });
        }
        (Some((side, side)), PosEmbKind::Learned)
    } else {
        if hidden % 4 != 0 {
            return Err(Error::SincosWidth {
                name: ek,
                hidden,
                found: vec![ph, ph, in_chans, hidden],
            });
        }
        (None, PosEmbKind::Sincos2d)
    };

    // Optional pre_logits (dense + tanh) and head.
    let representation = keys.optional_dense(
        &format!("{root}pre_logits/kernel"),
        &format!("{root}pre_logits/bias"),
        hidden,
        "pre_logits dense [D, R]",
    )?;
    let num_classes = keys.optional_dense(
        &format!("{root}head/kernel"),
        &format!("{root}head/bias"),
        representation.unwrap_or(hidden),
        "head [features, classes]",
    )?;

    let arch = Arch {
        patch: ph,
        patch_embed: embed,
        in_chans,
        hidden,
        heads: Some(heads),
        mlp,
        depth,
        grid,
        posemb,
        classifier,
        class_pos: false,
        num_classes,
        representation,
        resnet: None,
        stacked: enc.tree.stacked(),
    };
    let stacked = enc.tree.stacked();
    let image = tower(keys, root, enc, arch)?;
    let mut notes = vec![match stacked {
        true => format!("blocks stacked along a leading depth axis of {depth} (Transformer/encoderblock/, the scan format)"),
        false => format!(
            "blocks unrolled (Transformer/encoderblock_0 to _{})",
            depth.saturating_sub(1)
        ),
    }];
    match (image.arch.posemb, image.arch.grid) {
        (PosEmbKind::Sincos2d, _) => {
            notes.push("position embedding: sincos2d (computed, not stored)".to_string())
        }
        (PosEmbKind::LearnedGrid, Some((g, _))) => notes.push(format!(
            "NaFlex: embedding/kernel is a Dense over {ph}x{ph}x{in_chans} patches flattened in (py, px, c) order, pos_embedding a {g}x{g} grid resized to each image's patch grid; no fixed resolution"
        )),
        _ => {}
    }
    if image.arch.classifier == Classifier::Gap {
        notes.push(
            "pooling: gap (mean over the tokens); big_vision's pool_type '0' (the first token) stores the same tensors, so a model trained with it is not told apart"
                .to_string(),
        );
    }
    Ok((image, notes))
}

/// A checked dense layer `{prefix}kernel`, `{prefix}bias`.
pub(crate) fn dense_at(keys: &Keys<'_>, prefix: &str) -> Result<Dense> {
    Ok(Dense {
        kernel: keys.param(&format!("{prefix}kernel"))?,
        bias: keys.param(&format!("{prefix}bias"))?,
    })
}

/// The checked ViT's parameters, each in its role.
fn tower(keys: &Keys<'_>, root: &str, enc: Encoder, arch: Arch) -> Result<Tower> {
    let whole = |name: String| keys.param(&name);
    let norm_at = |prefix: &str| -> Result<Norm> {
        Ok(Norm {
            scale: whole(format!("{prefix}scale"))?,
            bias: whole(format!("{prefix}bias"))?,
        })
    };
    let attention_at = |prefix: &str| -> Result<Attention> {
        let proj = |p: Proj| -> Result<Dense> {
            Ok(Dense {
                kernel: whole(format!("{prefix}{}", MAP_HEAD.attn(p, "kernel")))?,
                bias: whole(format!("{prefix}{}", MAP_HEAD.attn(p, "bias")))?,
            })
        };
        Ok(Attention {
            query: proj(Proj::Query)?,
            key: proj(Proj::Key)?,
            value: proj(Proj::Value)?,
            out: proj(Proj::Out)?,
        })
    };
    let pool = match arch.classifier {
        Classifier::Token => Pool::Token,
        Classifier::Gap => Pool::Mean,
        Classifier::None => Pool::None,
        Classifier::Map => {
            let map = format!("{root}MAPHead_0/");
            Pool::Map(Box::new(MapHead {
                probe: whole(format!("{map}probe"))?,
                attn: attention_at(&map)?,
                norm: norm_at(&format!("{map}LayerNorm_0/"))?,
                mlp: [
                    dense_at(keys, &format!("{map}{}/Dense_0/", MAP_HEAD.mlp_block()))?,
                    dense_at(keys, &format!("{map}{}/Dense_1/", MAP_HEAD.mlp_block()))?,
                ],
            }))
        }
    };
    let pos = match arch.posemb {
        PosEmbKind::Learned => PosEmbed::Table {
            param: whole(format!("{root}pos_embedding"))?,
            class_row: false,
        },
        PosEmbKind::Sincos2d => PosEmbed::Sincos2d,
        PosEmbKind::LearnedGrid => {
            let param = whole(format!("{root}pos_embedding"))?;
            let [rows, cols, _] = dims(
                &param.tensor,
                &param.shape,
                "[G, G, hidden]",
                "NaFlex position grid",
            )?;
            PosEmbed::Grid {
                param,
                grid: (rows, cols),
            }
        }
    };
    Ok(Tower {
        stem: None,
        patch: dense_at(keys, &format!("{root}embedding/"))?,
        class_token: match arch.classifier {
            Classifier::Token => Some(whole(format!("{root}cls"))?),
            _ => None,
        },
        pos,
        blocks: enc.blocks,
        final_norm: enc.final_norm,
        pool,
        pre_logits: match arch.representation {
            Some(_) => Some(dense_at(keys, &format!("{root}pre_logits/"))?),
            None => None,
        },
        head: match arch.num_classes {
            Some(_) => Some(dense_at(keys, &format!("{root}head/"))?),
            None => None,
        },
        // big_vision's `vit.py` builds its encoder with flax's defaults.
        semantics: Semantics::FLAX_ENCODER,
        arch,
    })
}
