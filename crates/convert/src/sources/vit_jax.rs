//! The google-research/vision_transformer source family: `.npz` files of `vit_jax` (pre-linen and linen block
//! names, an optional `opt/target/` root, class-token or `gap` pooling, `pre_logits`, BiT ResNet hybrid stems).
//!
//! [`read`] checks the file completely (every tensor accounted for, every shape agreeing with the others) and
//! describes it as a [`Model`]; the encoder's names are [`flax_tree`](super::flax_tree)'s, the others are known to
//! this module alone.

use vitconv_tensors::TensorInfo;

use super::flax_tree::{read_encoder, Encoder, Naming, IMAGE_ENCODER, VIT_JAX};
use super::keys::{dims, under, Keys};
use crate::arch::{Arch, Classifier, PatchEmbedKind, PosEmbKind, ResNet};
use crate::error::{Error, Result};
use crate::model::{Dense, Model, Norm, Pool, PosEmbed, Semantics, Stem, Tower, Unit};

/// The family's name in reports and metadata.
pub const FAMILY: &str = "vit_jax";

/// Where each parameter outside the encoder lives in a vit_jax-family file (the encoder's are
/// [`flax_tree`](super::flax_tree)'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JaxNames {
    /// `""`, `"opt/target/"` or `"params/"`.
    pub prefix: String,
}

impl JaxNames {
    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }
    /// The patch embedding kernel.
    pub fn embed_kernel(&self) -> String {
        self.key("embedding/kernel")
    }
    /// The patch embedding bias.
    pub fn embed_bias(&self) -> String {
        self.key("embedding/bias")
    }
    /// The class token.
    pub fn cls(&self) -> String {
        self.key("cls")
    }
    /// The position embedding.
    pub fn pos_embed(&self) -> String {
        self.key("Transformer/posembed_input/pos_embedding")
    }
    /// Parameter `p` of the pre_logits dense layer.
    pub fn pre_logits(&self, p: &str) -> String {
        self.key(&format!("pre_logits/{p}"))
    }
    /// Parameter `p` of the head.
    pub fn head(&self, p: &str) -> String {
        self.key(&format!("head/{p}"))
    }
    /// The hybrid's root convolution kernel.
    pub fn conv_root(&self) -> String {
        self.key("conv_root/kernel")
    }
    /// `p` is `scale` or `bias`.
    pub fn gn_root(&self, p: &str) -> String {
        self.key(&format!("gn_root/{p}"))
    }
    /// Stage `s` and unit `u` are 1-based like the file; `conv` is `conv1`..`conv3` or `conv_proj`.
    pub fn unit_conv(&self, s: usize, u: usize, conv: &str) -> String {
        self.key(&format!("block{s}/unit{u}/{conv}/kernel"))
    }
    /// `gn` is `gn1`..`gn3` or `gn_proj`; `p` is `scale` or `bias`.
    pub fn unit_gn(&self, s: usize, u: usize, gn: &str, p: &str) -> String {
        self.key(&format!("block{s}/unit{u}/{gn}/{p}"))
    }
}

/// Prefixes under which files keep the vit_jax tree: none (published files), `opt/target/` (the old flax
/// optimizer's checkpoints), `params/` (a flax TrainState saved by Orbax or msgpack, beside its `opt_state/`
/// and `step`, which are left out).
const JAX_PREFIXES: &[&str] = &["", "opt/target/", "params/"];

/// The root under which this file keeps the vit_jax tree, if it is one: `embedding/kernel` directly or under
/// `opt/target/`.
pub fn root(tensors: &[TensorInfo]) -> Option<&'static str> {
    JAX_PREFIXES.iter().copied().find(|p| {
        let key = format!("{p}embedding/kernel");
        tensors.iter().any(|t| t.name == key)
    })
}

/// Whether the file is of this family: the registry then leaves it to [`read`], whatever it finds wrong.
pub fn claims(tensors: &[TensorInfo]) -> bool {
    root(tensors).is_some()
}

/// Reads a google-research/vision_transformer checkpoint into the neutral model, checking every shape
/// against the others and accounting for every tensor.
pub fn read(tensors: &[TensorInfo]) -> Result<Model> {
    let Some(prefix) = root(tensors) else {
        return Err(Error::NoRoot {
            tensors: tensors.len(),
            looked_for: "embedding/kernel (looked under no prefix, opt/target/ and params/)",
        });
    };
    // A TrainState's optimizer state and step counter are set aside first, as big_vision's are.
    let (state, weights) = if prefix == "params/" {
        crate::sources::big_vision::split_training_state(tensors, prefix)?
    } else {
        (Vec::new(), tensors.to_vec())
    };
    let tensors = weights.as_slice();
    let mut keys = Keys::new(tensors, &under("vit_jax checkpoint", prefix));
    if let Some(t) = tensors.iter().find(|t| !t.dtype.is_float()) {
        return Err(Error::NotFloat {
            name: t.name.clone(),
            dtype: t.dtype.to_string(),
        });
    }
    let names = JaxNames {
        prefix: prefix.to_string(),
    };

    // Patch embedding: HWIO kernel [p, p, in, D].
    let [ph, in_chans, hidden] =
        keys.patch_embedding(&names.embed_kernel(), &names.embed_bias())?;

    let resnet = detect_resnet(&mut keys, &names, in_chans)?;

    // Encoder blocks in whichever naming block 0 uses, then encoder_norm.
    let enc = read_encoder(&mut keys, prefix, IMAGE_ENCODER, VIT_JAX, hidden)?;
    let (heads, mlp, depth) = (enc.heads, enc.mlp, enc.depth);

    // Class token and position embedding fix the pooling and the grid.
    let classifier = if keys.has(&names.cls()) {
        keys.need_shape(&names.cls(), &[1, 1, hidden], "class token")?;
        Classifier::Token
    } else {
        Classifier::Gap
    };
    let pe = names.pos_embed();
    let [one, rows, pe_d] = dims(
        &pe,
        keys.need(&pe, "position embedding")?,
        "[1, rows, hidden]",
        "position embedding",
    )?;
    let prefix_rows = usize::from(classifier == Classifier::Token);
    let cells = rows.saturating_sub(prefix_rows);
    let side = cells.isqrt();
    if one != 1 || pe_d != hidden || side == 0 || side.checked_mul(side) != Some(cells) {
        return Err(Error::PosEmbNotSquare {
            name: pe,
            hidden,
            found: vec![one, rows, pe_d],
            class_row: prefix_rows == 1,
            cells,
        });
    }

    // Optional pre_logits (dense + tanh) and head.
    let representation = keys.optional_dense(
        &names.pre_logits("kernel"),
        &names.pre_logits("bias"),
        hidden,
        "pre_logits dense [D, R]",
    )?;
    let num_classes = keys.optional_dense(
        &names.head("kernel"),
        &names.head("bias"),
        representation.unwrap_or(hidden),
        "head [features, classes]",
    )?;

    keys.check_all_used()?;
    let arch = Arch {
        patch: ph,
        patch_embed: PatchEmbedKind::Conv,
        in_chans,
        hidden,
        heads: Some(heads),
        mlp,
        depth,
        grid: Some((side, side)),
        posemb: PosEmbKind::Learned,
        class_pos: classifier == Classifier::Token,
        classifier,
        num_classes,
        representation,
        resnet,
        stacked: false,
    };
    let linen = enc.tree.naming() == Naming::Linen;
    let image = tower(&keys, &names, enc, arch)?;
    let mut notes = Vec::new();
    if !names.prefix.is_empty() {
        notes.push(format!(
            "keys under the {} prefix (a training checkpoint)",
            names.prefix
        ));
    }
    notes.extend(crate::sources::big_vision::training_state_note(&state));
    let (shapes, left_out) = keys.shapes_and_left_out(&state);
    if linen {
        notes.push(
            "linen block names (MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0)"
                .to_string(),
        );
    }
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

/// The checked file's parameters, each in its role.
fn tower(keys: &Keys<'_>, n: &JaxNames, enc: Encoder, arch: Arch) -> Result<Tower> {
    let p = |name: String| keys.param(&name);
    let norm = |scale: String, bias: String| -> Result<Norm> {
        Ok(Norm {
            scale: p(scale)?,
            bias: p(bias)?,
        })
    };
    let dense = |kernel: String, bias: String| -> Result<Dense> {
        Ok(Dense {
            kernel: p(kernel)?,
            bias: p(bias)?,
        })
    };
    let stem = match &arch.resnet {
        None => None,
        Some(r) => {
            let gn = |s: usize, u: usize, g: &str| {
                norm(n.unit_gn(s, u, g, "scale"), n.unit_gn(s, u, g, "bias"))
            };
            let mut stages = Vec::with_capacity(r.stages.len());
            // Stages are numbered from 1 in the source's names.
            for (s, &units) in (1usize..).zip(&r.stages) {
                let mut us = Vec::with_capacity(units);
                for u in 1..=units {
                    let proj = if u == 1 {
                        Some((p(n.unit_conv(s, u, "conv_proj"))?, gn(s, u, "gn_proj")?))
                    } else {
                        None
                    };
                    us.push(Unit {
                        convs: [
                            p(n.unit_conv(s, u, "conv1"))?,
                            p(n.unit_conv(s, u, "conv2"))?,
                            p(n.unit_conv(s, u, "conv3"))?,
                        ],
                        norms: [gn(s, u, "gn1")?, gn(s, u, "gn2")?, gn(s, u, "gn3")?],
                        proj,
                    });
                }
                stages.push(us);
            }
            Some(Stem {
                root: p(n.conv_root())?,
                root_norm: norm(n.gn_root("scale"), n.gn_root("bias"))?,
                stages,
            })
        }
    };
    let token = arch.classifier == Classifier::Token;
    Ok(Tower {
        stem,
        patch: dense(n.embed_kernel(), n.embed_bias())?,
        class_token: if token { Some(p(n.cls())?) } else { None },
        pos: PosEmbed::Table {
            param: p(n.pos_embed())?,
            class_row: token,
        },
        blocks: enc.blocks,
        final_norm: enc.final_norm,
        pool: if token { Pool::Token } else { Pool::Mean },
        pre_logits: match arch.representation {
            Some(_) => Some(dense(n.pre_logits("kernel"), n.pre_logits("bias"))?),
            None => None,
        },
        head: match arch.num_classes {
            Some(_) => Some(dense(n.head("kernel"), n.head("bias"))?),
            None => None,
        },
        // vit_jax's `models_vit.py` builds its encoder with flax's defaults.
        semantics: Semantics::FLAX_ENCODER,
        arch,
    })
}

/// Reads the hybrid ResNet stem, if there is one, and checks it feeds `embed_in` channels to the patch embedding.
fn detect_resnet(keys: &mut Keys<'_>, names: &JaxNames, embed_in: usize) -> Result<Option<ResNet>> {
    let root = names.conv_root();
    if !keys.has(&root) {
        return Ok(None);
    }
    keys.recognised = format!("{} with a ResNet stem", keys.recognised);
    let [kh, kw, cin, width] = dims(
        &root,
        keys.need(&root, "root conv")?,
        "[7, 7, 3, width]",
        "HWIO root kernel",
    )?;
    if kh != 7 || kw != 7 || width == 0 {
        return Err(Error::BitRoot {
            name: root,
            found: vec![kh, kw, cin, width],
        });
    }
    for p in ["scale", "bias"] {
        keys.need_gn(&names.gn_root(p), width)?;
    }
    let mut stages = Vec::new();
    let mut in_ch = width;
    for s in 1.. {
        let units = (1..)
            .take_while(|u| keys.has(&names.unit_conv(s, *u, "conv1")))
            .count();
        if units == 0 {
            break;
        }
        let shift = u32::try_from(s.saturating_sub(1)).unwrap_or(u32::MAX);
        let f = width
            .checked_shl(shift)
            .filter(|f| f.checked_shr(shift) == Some(width));
        let f = f.ok_or(Error::Overflow {
            name: names.unit_conv(s, 1, "conv1"),
            what: "stage width",
        })?;
        let out = f.checked_mul(4).ok_or(Error::Overflow {
            name: names.unit_conv(s, 1, "conv3"),
            what: "stage width",
        })?;
        for u in 1..=units {
            let unit_in = if u == 1 { in_ch } else { out };
            keys.need_shape(
                &names.unit_conv(s, u, "conv1"),
                &[1, 1, unit_in, f],
                "bottleneck 1x1 in",
            )?;
            keys.need_shape(
                &names.unit_conv(s, u, "conv2"),
                &[3, 3, f, f],
                "bottleneck 3x3",
            )?;
            keys.need_shape(
                &names.unit_conv(s, u, "conv3"),
                &[1, 1, f, out],
                "bottleneck 1x1 out",
            )?;
            for gn in [("gn1", f), ("gn2", f), ("gn3", out)] {
                for p in ["scale", "bias"] {
                    keys.need_gn(&names.unit_gn(s, u, gn.0, p), gn.1)?;
                }
            }
            if u == 1 {
                keys.need_shape(
                    &names.unit_conv(s, u, "conv_proj"),
                    &[1, 1, unit_in, out],
                    "projection shortcut",
                )?;
                for p in ["scale", "bias"] {
                    keys.need_gn(&names.unit_gn(s, u, "gn_proj", p), out)?;
                }
            }
        }
        stages.push(units);
        in_ch = out;
    }
    let resnet = ResNet { stages, width };
    if resnet.out_channels() != embed_in {
        return Err(Error::StemMismatch {
            recognised: keys.recognised.clone(),
            stem_out: resnet.out_channels(),
            stages: resnet.stages.clone(),
            width,
            embed: names.embed_kernel(),
            embed_in,
        });
    }
    Ok(Some(resnet))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use serde_json::Value;
    use vitconv_tensors::{DType, TensorFile};

    use super::*;

    pub fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    /// The golden cases and the file holding each one's weights.
    pub const GOLDEN: &[&str] = &[
        "vit-token",
        "vit-prelogits",
        "vit-gap",
        "hybrid-r2",
        "hybrid-root",
        "vit-mlp4",
    ];
    pub const VARIANTS: &[&str] = &["bfloat16", "compressed", "opt-target-prefix"];

    pub fn info(name: &str, shape: &[usize]) -> TensorInfo {
        TensorInfo {
            name: name.to_string(),
            dtype: DType::F32,
            shape: shape.to_vec(),
            stored_as: None,
        }
    }

    fn read_json(path: &std::path::Path) -> Value {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Compares a detected architecture with a golden `model.json` / shapes `model` object.
    fn assert_matches(arch: &Arch, model: &Value, what: &str) {
        let get = |k: &str| model.get(k).and_then(Value::as_u64).map(|v| v as usize);
        assert_eq!(Some(arch.patch), get("patch"), "{what}: patch");
        assert_eq!(Some(arch.hidden), get("hidden"), "{what}: hidden");
        assert_eq!(arch.heads, get("heads"), "{what}: heads");
        assert_eq!(Some(arch.mlp), get("mlp"), "{what}: mlp");
        assert_eq!(Some(arch.depth), get("layers"), "{what}: layers");
        assert_eq!(arch.image_size(), get("image"), "{what}: image size");
        assert_eq!(arch.num_classes, get("classes"), "{what}: classes");
        assert_eq!(
            arch.representation,
            get("representation"),
            "{what}: representation"
        );
        assert_eq!(
            Some(arch.classifier.as_str()),
            model.get("classifier").and_then(Value::as_str),
            "{what}: classifier"
        );
        let resnet: Option<Vec<usize>> = model.get("resnet").and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|v| v as usize)
                .collect()
        });
        assert_eq!(
            arch.resnet.as_ref().map(|r| r.stages.clone()),
            resnet,
            "{what}: resnet stages"
        );
    }

    #[test]
    fn detects_every_published_shape_list() {
        let dir = fixtures().join("shapes");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("fixtures/shapes") {
            let path = entry.expect("entry").path();
            let json = read_json(&path);
            let tensors: Vec<TensorInfo> = json["tensors"]
                .as_object()
                .expect("tensors object")
                .iter()
                .map(|(k, v)| {
                    let shape: Vec<usize> = v
                        .as_array()
                        .expect("shape")
                        .iter()
                        .filter_map(Value::as_u64)
                        .map(|d| d as usize)
                        .collect();
                    info(k, &shape)
                })
                .collect();
            let src = read(&tensors).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_matches(&src.image.arch, &json["model"], &path.display().to_string());
            let summary = crate::summarize(&tensors).expect("summary");
            assert_eq!(summary.family, "vit_jax");
            seen += 1;
        }
        assert_eq!(seen, 7, "every shapes/*.json was checked");
    }

    #[test]
    fn published_sizes_get_their_names() {
        let path = fixtures().join("shapes/ViT-L_32-imagenet2012-384.json");
        let json = read_json(&path);
        let tensors: Vec<TensorInfo> = json["tensors"]
            .as_object()
            .expect("tensors")
            .iter()
            .map(|(k, v)| {
                info(
                    k,
                    &v.as_array()
                        .expect("shape")
                        .iter()
                        .filter_map(Value::as_u64)
                        .map(|d| d as usize)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let s = crate::summarize(&tensors).expect("summary");
        assert_eq!(
            s.architecture,
            "ViT-L/32: hidden 1024, 24 layers, 16 heads, mlp 4096, 384 px (12x12 grid + class token), 1000 classes, no pre_logits"
        );
        let r50 = read_json(&fixtures().join("shapes/R50+ViT-B_16-imagenet2012-384.json"));
        let tensors: Vec<TensorInfo> = r50["tensors"]
            .as_object()
            .expect("tensors")
            .iter()
            .map(|(k, v)| {
                info(
                    k,
                    &v.as_array()
                        .expect("shape")
                        .iter()
                        .filter_map(Value::as_u64)
                        .map(|d| d as usize)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let s = crate::summarize(&tensors).expect("summary");
        assert!(
            s.architecture.starts_with("R50+ViT-B/16: hidden 768"),
            "{}",
            s.architecture
        );
        assert!(
            s.parts.iter().any(|p| p.contains("stages [3, 4, 9]")),
            "{:?}",
            s.parts
        );
    }

    pub fn golden_file(case: &str) -> TensorFile {
        let path = if VARIANTS.contains(&case) {
            fixtures().join(format!("vit-token-variants/{case}.npz"))
        } else {
            fixtures().join(format!("{case}/checkpoint.npz"))
        };
        TensorFile::open(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn detects_every_golden_case() {
        for case in GOLDEN.iter().chain(VARIANTS) {
            let dir = if VARIANTS.contains(case) {
                "vit-token"
            } else {
                case
            };
            let model = read_json(&fixtures().join(dir).join("model.json"));
            let src = read(golden_file(case).tensors()).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_matches(&src.image.arch, &model, case);
            let want_prefix = if *case == "opt-target-prefix" {
                "opt/target/"
            } else {
                ""
            };
            let noted = src.notes.iter().any(|n| n.contains("opt/target/"));
            assert_eq!(noted, !want_prefix.is_empty(), "{case}: {:?}", src.notes);
            assert!(!src.notes.iter().any(|n| n.contains("linen")), "{case}");
        }
    }

    /// vit-token's key list, renamed by `f`.
    fn renamed(f: impl Fn(&str) -> String) -> Vec<TensorInfo> {
        golden_file("vit-token")
            .tensors()
            .iter()
            .map(|t| TensorInfo {
                name: f(&t.name),
                ..t.clone()
            })
            .collect()
    }

    #[test]
    fn detects_linen_block_names() {
        let linen = renamed(|n| {
            n.replace(
                "MultiHeadDotProductAttention_1",
                "MultiHeadDotProductAttention_0",
            )
            .replace("LayerNorm_2", "LayerNorm_1")
            .replace("MlpBlock_3", "MlpBlock_0")
        });
        let src = read(&linen).expect("linen names are recognised");
        assert!(src.notes.iter().any(|n| n.contains("linen")));
        let pre = read(golden_file("vit-token").tensors()).expect("pre-linen");
        assert_eq!(src.image.arch, pre.image.arch);
        assert_eq!(
            src.image.blocks[1].mlp[0].kernel.tensor,
            "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"
        );
    }

    fn err_text(tensors: &[TensorInfo]) -> String {
        match read(tensors) {
            Ok(_) => panic!("detection accepted a broken file"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn missing_tensor_is_named() {
        let missing = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/bias";
        let tensors: Vec<TensorInfo> = golden_file("vit-token")
            .tensors()
            .iter()
            .filter(|t| t.name != missing)
            .cloned()
            .collect();
        let e = err_text(&tensors);
        assert!(e.contains(missing) && e.contains("missing"), "{e}");
    }

    #[test]
    fn contradictory_shape_is_named_with_both_shapes() {
        let mut tensors = golden_file("vit-token").tensors().to_vec();
        let bad = "Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel";
        tensors
            .iter_mut()
            .filter(|t| t.name == bad)
            .for_each(|t| t.shape = vec![100, 64]);
        let e = err_text(&tensors);
        assert!(
            e.contains(bad) && e.contains("[128, 64]") && e.contains("[100, 64]"),
            "{e}"
        );
    }

    #[test]
    fn unknown_extra_tensor_is_refused() {
        let mut tensors = golden_file("vit-token").tensors().to_vec();
        tensors.push(info("Transformer/encoderblock_0/extra/scale", &[64]));
        let e = err_text(&tensors);
        assert!(e.contains("Transformer/encoderblock_0/extra/scale"), "{e}");
    }

    #[test]
    fn non_square_grid_is_explained() {
        let mut tensors = golden_file("vit-token").tensors().to_vec();
        tensors
            .iter_mut()
            .filter(|t| t.name.ends_with("pos_embedding"))
            .for_each(|t| t.shape = vec![1, 16, 64]);
        let e = err_text(&tensors);
        assert!(e.contains("pos_embedding") && e.contains("15 cells"), "{e}");
    }

    #[test]
    fn non_float_tensor_is_refused() {
        let mut tensors = golden_file("vit-token").tensors().to_vec();
        if let Some(t) = tensors.first_mut() {
            t.dtype = DType::I32;
        }
        assert!(err_text(&tensors).contains("not a floating-point type"));
    }

    #[test]
    fn hybrid_stem_must_feed_the_patch_embedding() {
        let mut tensors = golden_file("hybrid-r2").tensors().to_vec();
        // Drop stage 2 entirely: the stem then ends with 256 channels but embedding/kernel reads 512.
        tensors.retain(|t| !t.name.starts_with("block2/"));
        let e = err_text(&tensors);
        assert!(e.contains("256 channels") && e.contains("reads 512"), "{e}");
    }

    #[test]
    fn gn_params_in_either_shape() {
        // hybrid-r2 stores (1, 1, 1, C), hybrid-root (C,): both detect, and a third shape is refused.
        assert!(read(golden_file("hybrid-r2").tensors()).is_ok());
        assert!(read(golden_file("hybrid-root").tensors()).is_ok());
        let mut tensors = golden_file("hybrid-root").tensors().to_vec();
        tensors
            .iter_mut()
            .filter(|t| t.name == "gn_root/scale")
            .for_each(|t| t.shape = vec![1, 64]);
        assert!(err_text(&tensors).contains("gn_root/scale"));
    }

    #[test]
    fn other_families_are_named_not_converted() {
        let err = |t: &[TensorInfo]| match crate::sources::read(t) {
            Ok(_) => panic!("a file of another family was read"),
            Err(e) => e.to_string(),
        };
        let timm = vec![
            info("patch_embed.proj.weight", &[64, 3, 16, 16]),
            info("blocks.0.attn.qkv.weight", &[192, 64]),
        ];
        let e = err(&timm);
        assert!(e.contains("no embedding/kernel"), "{e}");
        let bv = vec![info("params/embedding/kernel", &[16, 16, 3, 64])];
        assert!(err(&bv).contains("big_vision"));
        assert!(crate::summarize(&[info("foo", &[1])]).is_none());
    }
}
