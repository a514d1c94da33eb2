//! PaliGemma and PaliGemma 2 checkpoints (big_vision `models/proj/paligemma/paligemma.py`): the SigLIP image
//! tower under `img/`, built with `pool_type='none'` so that its `head` projects every token to the LLM width,
//! beside a Gemma or Gemma 2 language model under `llm/`; with the `params/` root (the released `.npz`,
//! `.f16.npz` and `.b16.npz` files) or without it (the fine-tuning colab's saves), in any float dtype or mix.
//!
//! The image tower is read by the big_vision ViT source (`big_vision::read_vit_as`, no pooling). The language
//! model is read here only as far as its sizes (names and axis order of big_vision's `models/ppp/gemma.py`,
//! scan-stacked under `layers/`): vitconv converts the image tower and its projection, never the LLM, whose
//! tensors are left out of every conversion and counted in the notes.

use vitconv_tensors::TensorInfo;

use super::big_vision::{read_vit_as, split_training_state, training_state_note, Pooling};
use super::keys::{dims, under, Keys};
use crate::error::{Error, Result};
use crate::model::{size_words, LanguageArch, LanguageModel, Model};

/// The family's name in reports and metadata.
pub const FAMILY: &str = "paligemma";

/// Roots under which PaliGemma files keep the model: `params/` as the released files have it, or none.
const ROOTS: &[&str] = &["params/", ""];

/// The root of a PaliGemma file: where an image tower (`img/embedding/kernel`) and a language model (`llm/`)
/// lie side by side.
pub fn root(tensors: &[TensorInfo]) -> Option<&'static str> {
    ROOTS.iter().copied().find(|r| {
        let kernel = format!("{r}img/embedding/kernel");
        let llm = format!("{r}llm/");
        tensors.iter().any(|t| t.name == kernel) && tensors.iter().any(|t| t.name.starts_with(&llm))
    })
}

/// Whether the file is a PaliGemma checkpoint: an image tower and a language model under one root.
pub fn claims(tensors: &[TensorInfo]) -> bool {
    root(tensors).is_some()
}

/// Reads a PaliGemma checkpoint: the image tower with its per-token head as the model, the language model's
/// sizes and tensors as a [`LanguageModel`] that no conversion writes; every tensor accounted for.
pub fn read(tensors: &[TensorInfo]) -> Result<Model> {
    let Some(root) = root(tensors) else {
        return Err(Error::NoRoot {
            tensors: tensors.len(),
            looked_for: "img/embedding/kernel and llm/ under params/ or at the top",
        });
    };
    let recognised = under("PaliGemma checkpoint", root);
    let (state, weights) = split_training_state(tensors, root)?;
    let mut keys = Keys::new(&weights, &recognised);
    let img = format!("{root}img/");
    let (image, image_notes) = read_vit_as(&mut keys, &img, Pooling::None)?;
    let llm = format!("{root}llm/");
    let arch = read_gemma(&mut keys, &llm)?;
    keys.check_all_used()?;
    // The head is the projection into the LLM's width: PaliGemma feeds its outputs to the LLM as tokens.
    let head = format!("{img}head/kernel");
    if image.arch.num_classes != Some(arch.width) {
        return match image.arch.num_classes {
            None => Err(Error::MissingTensor {
                recognised: keys.recognised,
                tensor: head,
                role: Some(format!(
                    "the projection of every image token to the LLM width {}",
                    arch.width
                )),
            }),
            Some(found) => Err(Error::ShapeMismatch {
                name: head,
                expected: vec![image.arch.hidden, arch.width],
                found: vec![image.arch.hidden, found],
                role: "image head [width, LLM width]".to_string(),
            }),
        };
    }
    let llm_tensors: Vec<&TensorInfo> = weights
        .iter()
        .filter(|t| t.name.starts_with(&llm))
        .collect();
    let count = |f: fn(&TensorInfo) -> Option<usize>| -> u64 {
        llm_tensors
            .iter()
            .map(|t| f(t).and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
            .fold(0u64, u64::saturating_add)
    };
    let language = LanguageModel {
        tensors: llm_tensors.iter().map(|t| t.name.clone()).collect(),
        params: count(TensorInfo::numel),
        bytes: count(TensorInfo::nbytes),
        arch,
    };
    let a = &language.arch;
    let mut notes: Vec<String> = image_notes
        .into_iter()
        .map(|n| format!("image tower: {n}"))
        .collect();
    notes.push(format!(
        "image tower: pool_type 'none', as PaliGemma builds it: no pooling, the head {} -> {} applied to every token (the image tokens the LLM reads)",
        image.arch.hidden, a.width
    ));
    notes.push(format!(
        "language model: {} ({}), width {}, {} layers (stacked, scan format), {} heads, {} KV heads, head dim {}, MLP {}, vocab {}",
        a.name(),
        if a.generation > 1 {
            "norms after attention and after the MLP"
        } else {
            "pre-norms only"
        },
        a.width,
        a.depth,
        a.heads,
        a.kv_heads,
        a.head_dim,
        a.mlp,
        a.vocab
    ));
    notes.push(format!(
        "language model not converted by vitconv: {} under {llm} ({}); --tower image converts the image tower and its projection",
        language.tensors.len(),
        size_words(language.params, language.bytes)
    ));
    notes.push(format!("stored dtypes: {}", dtype_mix(&weights)));
    notes.extend(training_state_note(&state));
    let (shapes, left_out) = keys.shapes_and_left_out(&state);
    Ok(Model {
        family: FAMILY,
        recognised: keys.recognised.clone(),
        image,
        text: None,
        logit: None,
        llm: Some(language),
        notes,
        shapes,
        left_out,
    })
}

/// `f32 x 320, f16 x 12`: how many tensors are stored in each dtype (colab saves mix f32 and f16).
fn dtype_mix(tensors: &[TensorInfo]) -> String {
    vitconv_tensors::DType::ALL
        .iter()
        .map(|&d| (d, tensors.iter().filter(|t| t.dtype == d).count()))
        .filter(|&(_, n)| n > 0)
        .map(|(d, n)| format!("{d} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The language model's sizes from the shapes of its scan-stacked tensors under `llm` (big_vision
/// `gemma.py`: `[L, ...]` leading axis), every tensor checked against the others; Gemma 2 is told by its
/// post-attention and post-MLP norms.
fn read_gemma(keys: &mut Keys<'_>, llm: &str) -> Result<LanguageArch> {
    let emb = format!("{llm}embedder/input_embedding");
    let [vocab, width] = dims(
        &emb,
        keys.need(&emb, "LLM token embedding")?,
        "[vocab, width]",
        "LLM token embedding",
    )?;
    if vocab == 0 || width == 0 {
        return Err(Error::EmptyVocabulary {
            name: emb,
            found: vec![vocab, width],
        });
    }
    keys.need_shape(
        &format!("{llm}final_norm/scale"),
        &[width],
        "LLM final norm",
    )?;
    let layers = format!("{llm}layers/");
    let pre = format!("{layers}pre_attention_norm/scale");
    let [depth, _] = dims(
        &pre,
        keys.need(&pre, "LLM layer norm, scan-stacked")?,
        "[depth, width]",
        "scan-stacked LLM norm",
    )?;
    keys.need_shape(&pre, &[depth.max(1), width], "scan-stacked LLM norm")?;
    // Gemma stores one fused q/k/v einsum where every query head has its own key/value head, and a query
    // einsum beside a key/value one otherwise (multi-query and grouped-query attention).
    let qkv = format!("{layers}attn/qkv_einsum/w");
    let (heads, kv_heads, head_dim) = if keys.has(&qkv) {
        let [_, _, n, _, h] = dims(
            &qkv,
            keys.need(&qkv, "LLM fused q/k/v einsum")?,
            "[depth, 3, heads, width, head_dim]",
            "LLM fused q/k/v einsum",
        )?;
        keys.need_shape(
            &qkv,
            &[depth, 3, n, width, h],
            "LLM fused q/k/v einsum [depth, 3, heads, width, head_dim]",
        )?;
        (n, n, h)
    } else {
        let q = format!("{layers}attn/q_einsum/w");
        let [_, n, _, h] = dims(
            &q,
            keys.need(&q, "LLM query einsum")?,
            "[depth, heads, width, head_dim]",
            "LLM query einsum",
        )?;
        keys.need_shape(
            &q,
            &[depth, n, width, h],
            "LLM query einsum [depth, heads, width, head_dim]",
        )?;
        let kv = format!("{layers}attn/kv_einsum/w");
        let [_, _, k, _, _] = dims(
            &kv,
            keys.need(&kv, "LLM key/value einsum")?,
            "[depth, 2, kv_heads, width, head_dim]",
            "LLM key/value einsum",
        )?;
        // Each key/value head serves a whole group of query heads.
        let k = if k > 0 && n.is_multiple_of(k) { k } else { n };
        keys.need_shape(
            &kv,
            &[depth, 2, k, width, h],
            "LLM key/value einsum [depth, 2, kv_heads dividing the heads, width, head_dim]",
        )?;
        (n, k, h)
    };
    keys.need_shape(
        &format!("{layers}attn/attn_vec_einsum/w"),
        &[depth, heads, head_dim, width],
        "LLM attention output einsum [depth, heads, head_dim, width]",
    )?;
    keys.need_shape(
        &format!("{layers}pre_ffw_norm/scale"),
        &[depth, width],
        "scan-stacked LLM norm",
    )?;
    let gate = format!("{layers}mlp/gating_einsum");
    let [_, _, _, mlp] = dims(
        &gate,
        keys.need(&gate, "LLM gated MLP")?,
        "[depth, 2, width, mlp]",
        "LLM gating einsum",
    )?;
    keys.need_shape(
        &gate,
        &[depth, 2, width, mlp],
        "LLM gating einsum [depth, gate|up, width, mlp]",
    )?;
    keys.need_shape(
        &format!("{layers}mlp/linear"),
        &[depth, mlp, width],
        "LLM MLP output [depth, mlp, width]",
    )?;
    // Gemma 2 adds a norm after attention and one after the MLP; one without the other is no Gemma.
    let post = [
        format!("{layers}post_attention_norm/scale"),
        format!("{layers}post_ffw_norm/scale"),
    ];
    let generation = if post.iter().any(|p| keys.has(p)) {
        for p in &post {
            keys.need_shape(p, &[depth, width], "Gemma 2 post-norm, scan-stacked")?;
        }
        2
    } else {
        1
    };
    Ok(LanguageArch {
        generation,
        width,
        depth,
        heads,
        kv_heads,
        head_dim,
        mlp,
        vocab,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitconv_tensors::DType;

    fn fixture(case: &str) -> Vec<TensorInfo> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/siglip2")
            .join(case)
            .join("checkpoint.npz");
        vitconv_tensors::TensorFile::open(&path)
            .expect("the fixture opens")
            .tensors()
            .to_vec()
    }

    #[test]
    fn the_fixtures_read_as_an_unpooled_tower_and_a_gemma() {
        for case in ["paligemma-tower-tiny", "paligemma-tower-tiny-bf16"] {
            let tensors = fixture(case);
            assert!(claims(&tensors), "{case}");
            let m = crate::sources::read(&tensors).expect("read");
            assert_eq!(m.family, FAMILY);
            let a = &m.image.arch;
            assert_eq!(a.classifier, crate::arch::Classifier::None);
            assert_eq!(m.image.pool, crate::model::Pool::None);
            assert_eq!(
                (a.patch, a.hidden, a.depth, a.heads, a.mlp, a.grid),
                (14, 72, 2, Some(4), 308, Some((2, 2)))
            );
            assert_eq!(a.num_classes, Some(48));
            let llm = m.llm.as_ref().expect("a language model");
            assert_eq!(
                llm.arch,
                LanguageArch {
                    generation: 1,
                    width: 48,
                    depth: 2,
                    heads: 4,
                    kv_heads: 1,
                    head_dim: 16,
                    mlp: 96,
                    vocab: 300
                }
            );
            // 300*48 + 48 + 2*48 + 2*4*48*16 + 2*2*1*48*16 + 2*4*16*48 + 2*48 + 2*2*48*96 + 2*96*48
            assert_eq!(
                llm.params,
                14_400 + 48 + 96 + 6_144 + 3_072 + 6_144 + 96 + 18_432 + 9_216
            );
            assert_eq!(llm.tensors.len(), 9);
            let dtype = if case.ends_with("bf16") { 2 } else { 4 };
            assert_eq!(llm.bytes, llm.params * dtype);
        }
    }

    #[test]
    fn without_the_root_and_in_mixed_dtypes_it_reads_the_same() {
        let tensors: Vec<TensorInfo> = fixture("paligemma-tower-tiny")
            .into_iter()
            .enumerate()
            .map(|(i, t)| TensorInfo {
                name: t.name.trim_start_matches("params/").to_string(),
                dtype: if i % 2 == 0 { DType::F16 } else { t.dtype },
                ..t
            })
            .collect();
        let m = read(&tensors).expect("read");
        assert_eq!(m.recognised, "PaliGemma checkpoint");
        assert!(
            m.notes
                .iter()
                .any(|n| n.contains("f32 x") && n.contains("f16 x")),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn gemma_2_and_fused_qkv_are_told_by_their_shapes() {
        let mut tensors = fixture("paligemma-tower-tiny");
        let f32 = |name: &str, shape: Vec<usize>| TensorInfo {
            name: name.to_string(),
            dtype: DType::F32,
            shape,
            stored_as: None,
        };
        tensors.push(f32(
            "params/llm/layers/post_attention_norm/scale",
            vec![2, 48],
        ));
        let e = read(&tensors)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("post_ffw_norm"), "{e}");
        tensors.push(f32("params/llm/layers/post_ffw_norm/scale", vec![2, 48]));
        let m = read(&tensors).expect("Gemma 2");
        assert_eq!(m.llm.as_ref().map(|l| l.arch.generation), Some(2));
        // Four query heads with four key/value heads: one fused einsum.
        tensors.retain(|t| !t.name.contains("q_einsum") && !t.name.contains("kv_einsum"));
        tensors.push(f32(
            "params/llm/layers/attn/qkv_einsum/w",
            vec![2, 3, 4, 48, 16],
        ));
        let m = read(&tensors).expect("fused");
        let a = &m.llm.as_ref().expect("llm").arch;
        assert_eq!((a.heads, a.kv_heads, a.head_dim), (4, 4, 16));
    }

    #[test]
    fn a_wrong_projection_or_a_stray_tensor_is_refused_by_name() {
        let mut tensors = fixture("paligemma-tower-tiny");
        for t in tensors.iter_mut() {
            if t.name == "params/img/head/kernel" {
                t.shape = vec![72, 40];
            }
            if t.name == "params/img/head/bias" {
                t.shape = vec![40];
            }
        }
        let e = read(&tensors)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("params/img/head/kernel"), "{e}");
        let mut tensors = fixture("paligemma-tower-tiny");
        tensors.push(TensorInfo {
            name: "params/llm/layers/attn/extra".into(),
            dtype: DType::F32,
            shape: vec![1],
            stored_as: None,
        });
        let e = read(&tensors)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("params/llm/layers/attn/extra"), "{e}");
    }
}
