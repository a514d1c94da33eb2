//! The transformers target: a `ViTForImageClassification` directory (config.json + model.safetensors) run from its own keys and config.
//!
//! Semantics from transformers 5.24 (`models/vit/modeling_vit.py`,
//! `configuration_vit.py`, `activations.py`, `conversion_mapping.py`): the class token is
//! concatenated before `position_embeddings` are added; separate q/k/v linears;
//! `layernorm_before`/`layernorm_after` with `config.layer_norm_eps` (library default
//! 1e-12); the layer names of transformers 5 (`layers.N.attention.q_proj`,
//! `mlp.fc1`) or of 4.x checkpoints (`encoder.layer.N.attention.attention.query`,
//! `intermediate.dense`), which 5.x renames on load; `hidden_act` from the config (`gelu` = erf; `gelu_pytorch_tanh`,
//! `gelu_new`, `gelu_fast` = the tanh form); `vit.layernorm` on all tokens; the
//! classifier on token 0 (ViTForImageClassification builds no pooler). A
//! `vit.pooler` in the file (ViTModel's dense + tanh) gives the pooled features.
//! The input normalisation comes from `preprocessor_config.json`, which is what
//! `ViTImageProcessor` applies.

use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use vitconv_tensors::TensorFile;

use super::{
    bad_shape, gelu_inexact, grid_of, pair, shape2, tokens, Block, BlockSemantics, DeclaredConfig,
    FeatureKind, InputNorm, Parts, TargetArch, TargetOutputs,
};
use crate::error::{Error, Result};
use crate::ops::{self, Gelu};
use crate::params::{dim, Params};

/// `ViTConfig`'s defaults where config.json leaves a field out.
const HF_DEFAULT_LAYER_NORM_EPS: f64 = 1e-12;

#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    layer_norm_eps: Option<f64>,
    #[serde(default)]
    qkv_bias: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Preprocessor {
    image_mean: Option<[f64; 3]>,
    image_std: Option<[f64; 3]>,
    #[serde(default)]
    do_normalize: Option<bool>,
}

/// A transformers ViT folder (`ViTForImageClassification` or `ViTModel`), ready to run.
pub struct Hf {
    p: Params,
    pre: String,
    semantics: BlockSemantics,
    blocks: Vec<Block>,
    arch: TargetArch,
}

/// Most bytes of a JSON configuration read beside converted weights (`config.json`,
/// `preprocessor_config.json`, `open_clip_config.json`, a `.open_clip.json` sidecar): real ones are a few
/// kilobytes; 16 MiB refuses a wrong file (or a link to a device) before it is read whole.
pub(crate) const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads a JSON configuration file as every small file is read
/// ([`vitconv_tensors::read_regular_file`]: a regular file, never a FIFO or a device, of at most
/// [`MAX_CONFIG_BYTES`]) and parses it; `what` names the format in the error (`a transformers config`).
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let bytes = vitconv_tensors::read_regular_file(path, MAX_CONFIG_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Unreadable {
        path: path.to_path_buf(),
        reason: format!("not {what}: {e}"),
    })
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    read_config(path, "a transformers config")
}

/// transformers' `ACT2FN` names as the GELU they compute: `gelu` is the erf form; `gelu_pytorch_tanh`,
/// `gelu_new` and `gelu_fast` the tanh approximation; `quick_gelu` `x * sigmoid(1.702 x)`.
pub(crate) fn hidden_act(config_path: &Path, act: &str) -> Result<Gelu> {
    match act {
        "gelu" => Ok(Gelu::Erf),
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Gelu::Tanh),
        "quick_gelu" => Ok(Gelu::Quick),
        other => Err(Error::Declared {
            path: config_path.to_path_buf(),
            key: "hidden_act".into(),
            expected: "gelu, gelu_pytorch_tanh, gelu_new, gelu_fast or quick_gelu".into(),
            found: format!("{other:?}"),
        }),
    }
}

/// The normalisation the directory's image processor applies (`preprocessor_config.json`), or,
/// without one, what `vitconv.config` declares.
pub(crate) fn input_norm(
    dir: &Path,
    declared: &DeclaredConfig,
    notes: &mut Vec<String>,
) -> Result<InputNorm> {
    let pre_path = dir.join("preprocessor_config.json");
    if !pre_path.exists() {
        notes.push("no preprocessor_config.json: input normalisation from vitconv.config".into());
        return Ok(declared.input_norm.clone().unwrap_or_else(InputNorm::unit));
    }
    let pp: Preprocessor = read_json(&pre_path)?;
    Ok(
        match (pp.do_normalize.unwrap_or(true), pp.image_mean, pp.image_std) {
            (false, _, _) => InputNorm {
                name: "none".into(),
                mean: [0.0; 3],
                std: [1.0; 3],
            },
            (true, Some(mean), Some(std)) => InputNorm {
                name: "preprocessor_config".into(),
                mean,
                std,
            },
            // ViTImageProcessor's and SiglipImageProcessor's defaults are mean = std = 0.5.
            (true, _, _) => InputNorm::unit(),
        },
    )
}

impl Hf {
    pub(crate) fn open(dir: &Path, device: Device, kind: Kind) -> Result<(Hf, Parts)> {
        let config_path = dir.join("config.json");
        let weights_path = dir.join("model.safetensors");
        for needed in [&config_path, &weights_path] {
            if !needed.exists() {
                return Err(Error::NotFound {
                    path: needed.clone(),
                });
            }
        }
        let config: HfConfig = read_json(&config_path)?;
        if let Some(t) = config.model_type.as_deref().filter(|t| *t != "vit") {
            return Err(Error::NotAModel {
                path: config_path,
                reason: format!("model_type is {t:?}, not \"vit\""),
            });
        }
        let file = TensorFile::open(&weights_path)?;
        let declared = DeclaredConfig::from_metadata(&weights_path, file.metadata())?;
        let pre = if file.get("vit.embeddings.cls_token").is_some() {
            "vit."
        } else {
            ""
        };
        let p = Params::new(file, "", device, kind);
        let path = weights_path.clone();
        let d = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::NotAModel {
                path: config_path,
                reason: format!("{heads} heads do not divide hidden_size {d}"),
            });
        }
        let act = config.hidden_act.clone().unwrap_or_else(|| "gelu".into());
        let gelu = hidden_act(&config_path, &act)?;
        let eps = config.layer_norm_eps.unwrap_or(HF_DEFAULT_LAYER_NORM_EPS);
        let semantics = BlockSemantics {
            heads,
            gelu,
            eps,
            ln_fp32: false,
        };
        let emb = format!("{pre}embeddings");
        let patch_size = match p.require_shape(
            &format!("{emb}.patch_embeddings.projection.weight"),
            "patch embedding",
        )? {
            [od, _, ph, pw] if ph == pw && *od == d => *ph,
            other => {
                return Err(bad_shape(
                    &path,
                    &format!("{emb}.patch_embeddings.projection.weight"),
                    &format!("[{d}, in, p, p]"),
                    other,
                ))
            }
        };
        let pos_rows =
            match p.require_shape(&format!("{emb}.position_embeddings"), "position embedding")? {
                [1, n, pd] if *pd == d => *n,
                other => {
                    return Err(bad_shape(
                        &path,
                        &format!("{emb}.position_embeddings"),
                        &format!("[1, N, {d}]"),
                        other,
                    ))
                }
            };
        let grid = grid_of(&path, &format!("{emb}.position_embeddings"), pos_rows, true)?;
        let m = config.intermediate_size;
        let qkv_bias = config.qkv_bias.unwrap_or(true);
        if !qkv_bias {
            return Err(Error::NotAModel {
                path: config_path,
                reason: "qkv_bias false: no Google ViT has bias-free attention".into(),
            });
        }
        // transformers 5 names the layers `layers.N.attention.{q,k,v,o}_proj` and `mlp.fc1/fc2`;
        // checkpoints saved by 4.x use `encoder.layer.N.attention.attention.query` and friends,
        // which 5.x renames on load (conversion_mapping.py, "ViTModel"). Both are read.
        let native = p.has(&format!("{pre}layers.0.attention.q_proj.weight"));
        let names: [&str; 8] = if native {
            [
                "layernorm_before",
                "attention.q_proj",
                "attention.k_proj",
                "attention.v_proj",
                "attention.o_proj",
                "layernorm_after",
                "mlp.fc1",
                "mlp.fc2",
            ]
        } else {
            [
                "layernorm_before",
                "attention.attention.query",
                "attention.attention.key",
                "attention.attention.value",
                "attention.output.dense",
                "layernorm_after",
                "intermediate.dense",
                "output.dense",
            ]
        };
        let layer = if native { "layers" } else { "encoder.layer" };
        let [ln1, q, k, v, o, ln2, fc1, fc2] = names;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let b = format!("{pre}{layer}.{i}");
            blocks.push(Block {
                ln1: pair(&p, &format!("{b}.{ln1}"), &[d], &[d])?,
                q: pair(&p, &format!("{b}.{q}"), &[d, d], &[d])?,
                k: pair(&p, &format!("{b}.{k}"), &[d, d], &[d])?,
                v: pair(&p, &format!("{b}.{v}"), &[d, d], &[d])?,
                proj: pair(&p, &format!("{b}.{o}"), &[d, d], &[d])?,
                ln2: pair(&p, &format!("{b}.{ln2}"), &[d], &[d])?,
                fc1: pair(&p, &format!("{b}.{fc1}"), &[m, d], &[m])?,
                fc2: pair(&p, &format!("{b}.{fc2}"), &[d, m], &[d])?,
            });
        }
        let image_size = grid.saturating_mul(patch_size);
        let arch = TargetArch {
            hidden: d,
            depth: config.num_hidden_layers,
            heads,
            mlp: m,
            patch_size,
            grid,
            image_size,
            class_token: true,
        };
        let mut notes = vec![format!(
            "transformers semantics from config.json: hidden_act {act:?}, layer_norm_eps {eps:e}"
        )];
        let norm = input_norm(dir, &declared, &mut notes)?;
        let hf = Hf {
            p,
            pre: pre.to_owned(),
            semantics,
            blocks,
            arch: arch.clone(),
        };
        Ok((
            hf,
            Parts {
                arch,
                norm,
                logits_offset: None,
                notes,
                inexact: gelu_inexact(gelu),
                declared,
            },
        ))
    }

    pub(crate) fn kind(&self) -> Kind {
        self.p.kind()
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<TargetOutputs> {
        let p = &self.p;
        let a = &self.arch;
        let pre = &self.pre;
        let x = x.f_to_kind(p.kind())?;
        let emb = format!("{pre}embeddings");
        let w = p.load_any(&format!("{emb}.patch_embeddings.projection.weight"))?;
        let b = p.load(
            &format!("{emb}.patch_embeddings.projection.bias"),
            &[a.hidden],
        )?;
        let y = ops::conv2d(&x, &w, Some(&b), dim(a.patch_size)?, 0)?;
        let cls = p.load(&format!("{emb}.cls_token"), &[1, 1, a.hidden])?;
        let pos = p.load_any(&format!("{emb}.position_embeddings"))?;
        let mut x = tokens(&y, Some(&cls), &pos)?;
        for block in &self.blocks {
            x = block.forward(&x, &self.semantics)?;
        }
        let ln = pair(p, &format!("{pre}layernorm"), &[a.hidden], &[a.hidden])?;
        let x = self.semantics.norm(&x, &ln)?;
        let token = x.f_select(1, 0)?;
        let logits = if p.has("classifier.weight") {
            let [c, f] = shape2(p, "classifier.weight")?;
            if f != a.hidden {
                return Err(bad_shape(
                    p.path(),
                    "classifier.weight",
                    &format!("[labels, {}]", a.hidden),
                    &[c, f],
                ));
            }
            Some(ops::linear(
                &token,
                &p.load_any("classifier.weight")?,
                Some(&p.load("classifier.bias", &[c])?),
            )?)
        } else {
            None
        };
        let pooler = format!("{pre}pooler.dense");
        let (features, features_kind) = if p.has(&format!("{pooler}.weight")) {
            let [r, f] = shape2(p, &format!("{pooler}.weight"))?;
            if f != a.hidden {
                return Err(bad_shape(
                    p.path(),
                    &format!("{pooler}.weight"),
                    &format!("[out, {}]", a.hidden),
                    &[r, f],
                ));
            }
            let y = ops::linear(
                &token,
                &p.load_any(&format!("{pooler}.weight"))?,
                Some(&p.load(&format!("{pooler}.bias"), &[r])?),
            )?;
            (y.f_tanh()?, FeatureKind::Representation)
        } else {
            (token, FeatureKind::Pooled)
        };
        Ok(TargetOutputs {
            features,
            features_kind,
            logits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_or_device_as_a_config_is_refused_by_name_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("config.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let err = read_json::<serde_json::Value>(&fifo).expect_err("a FIFO is refused");
        let msg = err.to_string();
        assert!(msg.contains("named pipe (FIFO)"), "{msg}");
        assert!(msg.contains("config.json"), "{msg}");

        // A link to /dev/zero would be read until memory ran out: refused by kind.
        let zero = dir.path().join("preprocessor_config.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
        let err = read_json::<serde_json::Value>(&zero).expect_err("a device is refused");
        assert!(err.to_string().contains("character device"), "{err}");

        // Past the size limit: refused before it is read.
        let big = dir.path().join("open_clip_config.json");
        let file = std::fs::File::create(&big).expect("create");
        file.set_len(MAX_CONFIG_BYTES + 1).expect("set_len");
        let err =
            read_config::<serde_json::Value>(&big, "an open_clip config").expect_err("too large");
        assert!(
            matches!(
                err,
                Error::Tensors(vitconv_tensors::Error::FileTooLarge { .. })
            ),
            "{err}"
        );
    }
}
