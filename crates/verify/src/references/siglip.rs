//! The big_vision two-tower (SigLIP) reference: the image tower of [`super::big_vision`] under `img/`, the text tower under `txt/` run straight from its `.npz` keys, and the logits of the pair.
//!
//! Written from big_vision's `models/proj/image_text/two_towers.py` and
//! `text_transformer.py` as the golden data's README spells them out, never from the
//! converter's mapping:
//!
//! - the text tower: `Embed_0/embedding` `[vocab, Dt]` looked up by id, plus the learned
//!   `pos_embedding` `[1, ctx, Dt]` (the ids must fill the context: flax adds the whole
//!   table); `Encoder_0` blocks with the image tower's Linen names (`LayerNorm_0`,
//!   `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0/Dense_{0,1}`), stacked
//!   (`Encoder_0/encoderblock`, the scan format) or unrolled (`encoderblock_{i}`); pre-norm,
//!   NO causal mask and no padding mask, LayerNorm eps 1e-6, tanh GELU, attention scale
//!   1/sqrt(Dh); `Encoder_0/encoder_norm`; the LAST position pooled (not the first EOS);
//!   then `head` (`[Dt, E]`) where the file has one;
//! - the image embedding: the image tower's `head` output, or the MAP head's output when the
//!   tower has no `head` (SigLIP as published);
//! - both embeddings L2-normalised; `logits_per_image = zimg @ ztxt.T * exp(t) + b`, `t` the
//!   stored log temperature `[1]`, `b` the bias `[1]` (0 where the file has none).
//!
//! Every size is read from the shapes; the text width may differ from the image width.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use vitconv_tensors::TensorFile;

use vitconv_convert::sources::flax_tree::{EncoderTree, BIG_VISION, TEXT_ENCODER};

use super::big_vision::{self, flax_encoder, BigVision, Sizes};
use crate::error::{Error, Result};
use crate::ops;
use crate::params::{dim, Params};

/// Whether a file is a big_vision two-tower model: an image tower under `img/`, a text tower
/// under `txt/` (its token embedding) and the log temperature `t`, under a `params/` root or none.
pub fn is_two_tower(file: &TensorFile) -> bool {
    let root = big_vision::root_of(file);
    let has = |name: &str| file.get(&format!("{root}{name}")).is_some();
    has("img/embedding/kernel") && has("txt/Embed_0/embedding") && has("t")
}

/// The text tower's architecture, read from its shapes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TextArch {
    /// Rows of `Embed_0`: the vocabulary size.
    pub vocab: usize,
    /// Rows of `pos_embedding`: how many token ids a text has.
    pub context: usize,
    /// The text tower's token width.
    pub width: usize,
    /// The number of text encoder blocks.
    pub depth: usize,
    /// Attention heads per text block.
    pub heads: usize,
    /// The width of one attention head.
    pub head_dim: usize,
    /// The text MLP's hidden width.
    pub mlp: usize,
    /// Blocks stored stacked along a leading depth axis.
    pub scan: bool,
    /// The `head`'s output width, where the tower has one.
    pub embed: Option<usize>,
}

/// A big_vision text tower (`txt/`), ready to run.
pub struct TextTower {
    params: Params,
    arch: TextArch,
    /// Where the text encoder's tensors live.
    tree: EncoderTree,
}

impl TextTower {
    /// Reads the text tower of an opened two-tower file (`txt/` after the root).
    pub fn from_file(file: TensorFile, device: Device) -> Result<TextTower> {
        let root = big_vision::root_of(&file);
        let params = Params::new(file, &format!("{root}txt/"), device, Kind::Float);
        let (arch, tree) = read_text_arch(&params)?;
        Ok(TextTower { params, arch, tree })
    }

    /// The text tower's architecture, read from its shapes.
    pub fn arch(&self) -> &TextArch {
        &self.arch
    }

    /// Runs the tower on int64 ids `[n, ctx]`; returns the pooled vector (the last position
    /// after `encoder_norm`, `[n, Dt]`) and the embedding (the `head`'s output, or the pooled
    /// vector where there is no head), both unnormalised.
    pub fn forward(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let a = &self.arch;
        let p = &self.params;
        check_ids(p.path(), ids, a.vocab, a.context)?;
        let ids = ids.f_to_kind(Kind::Int64)?.f_to_device(p.device())?;
        let table = p.load("Embed_0/embedding", &[a.vocab, a.width])?;
        let x = Tensor::f_embedding(&table, &ids, -1, false, false)?;
        let pos = p.load("pos_embedding", &[1, a.context, a.width])?;
        let x = x.f_add(&pos)?;
        let sizes = Sizes {
            d: a.width,
            heads: a.heads,
            head_dim: a.head_dim,
            mlp: a.mlp,
        };
        let x = flax_encoder(p, &self.tree, a.depth, sizes, &x, None)?;
        let last = x.size().get(1).copied().unwrap_or(1) - 1;
        let pooled = x.f_select(1, last)?;
        let embed = match a.embed {
            Some(e) => ops::dense_in_out(
                &pooled,
                &p.load("head/kernel", &[a.width, e])?,
                Some(&p.load("head/bias", &[e])?),
            )?,
            None => pooled.shallow_clone(),
        };
        Ok((pooled, embed))
    }
}

/// Checks that `ids` is `[n, context]` with every id in `0..vocab`.
fn check_ids(path: &Path, ids: &Tensor, vocab: usize, context: usize) -> Result<()> {
    let size = ids.size();
    let ctx = match size.as_slice() {
        [n, c] if *n > 0 => *c,
        _ => {
            return Err(Error::TextIds {
                path: path.to_path_buf(),
                expected: format!("[n >= 1, {context}] token ids"),
                found: format!("shape {size:?}"),
            })
        }
    };
    if ctx != dim(context)? {
        return Err(Error::TextIds {
            path: path.to_path_buf(),
            expected: format!(
                "{context} ids per text (the text tower's pos_embedding rows; pad with the EOS id)"
            ),
            found: format!("{ctx}"),
        });
    }
    let flat = ids.f_to_kind(Kind::Int64)?.f_contiguous()?.f_view([-1])?;
    let values = Vec::<i64>::try_from(&flat)?;
    if let Some(bad) = values
        .iter()
        .find(|&&v| usize::try_from(v).map_or(true, |u| u >= vocab))
    {
        return Err(Error::TextIds {
            path: path.to_path_buf(),
            expected: format!("ids in 0..{vocab} (the vocabulary of Embed_0)"),
            found: format!("id {bad}"),
        });
    }
    Ok(())
}

/// Reads the text tower's sizes from `Embed_0`, `pos_embedding`, the blocks and `head`.
fn read_text_arch(p: &Params) -> Result<(TextArch, EncoderTree)> {
    let path = p.path().to_path_buf();
    let bad = |tensor: &str, expected: String, found: &[usize]| Error::BadShape {
        path: path.clone(),
        tensor: format!("txt/{tensor}"),
        expected,
        found: found.to_vec(),
    };
    let (vocab, width) = match p.require_shape("Embed_0/embedding", "the text tower")? {
        [v, d] if *v > 0 && *d > 0 => (*v, *d),
        other => return Err(bad("Embed_0/embedding", "[vocab, width]".into(), other)),
    };
    let context = match p.require_shape("pos_embedding", "the text tower's positions")? {
        [1, c, d] if *d == width && *c > 0 => *c,
        other => {
            return Err(bad(
                "pos_embedding",
                format!("[1, context, {width}]"),
                other,
            ))
        }
    };
    let big_vision::EncoderSizes {
        tree,
        depth,
        heads,
        head_dim,
        mlp,
    } = big_vision::encoder_sizes(p, TEXT_ENCODER, BIG_VISION, width, "text ", &bad)?;
    if depth == 0 || heads == 0 || head_dim == 0 {
        return Err(Error::NotAModel {
            path: path.clone(),
            reason: "the text tower txt/ has no encoder blocks with attention".into(),
        });
    }
    let embed = match p.shape("head/kernel") {
        Some([d, e]) if *d == width => Some(*e),
        Some(other) => return Err(bad("head/kernel", format!("[{width}, E]"), other)),
        None => None,
    };
    let arch = TextArch {
        vocab,
        context,
        width,
        depth,
        heads,
        head_dim,
        mlp,
        scan: tree.stacked(),
        embed,
    };
    Ok((arch, tree))
}

/// L2-normalises the rows of `[n, E]`, as big_vision's two towers do before the dot product.
pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = x.f_norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)?;
    Ok(x.f_div(&norm)?)
}

/// What the two-tower reference computes, float32 on its device.
pub struct TwoTowerOutputs {
    /// The image tower's embedding before normalisation (`head` output, or the MAP output).
    pub image_features: Tensor,
    /// The text tower's embedding before normalisation.
    pub text_features: Tensor,
    /// L2-normalised image embeddings `[images, E]`.
    pub image_embeds: Tensor,
    /// L2-normalised text embeddings `[texts, E]`.
    pub text_embeds: Tensor,
    /// `image_embeds @ text_embeds.T * exp(t) + b`, `[images, texts]`.
    pub logits_per_image: Tensor,
}

/// A big_vision two-tower model: image tower, text tower, log temperature and bias.
pub struct TwoTower {
    image: BigVision,
    text: TextTower,
    /// The log temperature `t`.
    pub t: f64,
    /// The bias `b` (0 where the file has none).
    pub b: f64,
    notes: Vec<String>,
}

impl TwoTower {
    /// Opens a two-tower checkpoint: `img/` through [`BigVision`], `txt/` through [`TextTower`].
    pub fn open(path: &Path, device: Device, image_size: Option<usize>) -> Result<TwoTower> {
        if !path.exists() {
            return Err(Error::NotFound {
                path: path.to_path_buf(),
            });
        }
        let file = TensorFile::open(path)?;
        if !is_two_tower(&file) {
            return Err(Error::NotAModel {
                path: path.to_path_buf(),
                reason: "not a big_vision two-tower model (img/embedding/kernel, txt/Embed_0/embedding and t)".into(),
            });
        }
        let (t, b) = temperature_and_bias(&file)?;
        let mut notes = Vec::new();
        if b.is_none() {
            notes.push("the source has no bias b: logits are zimg @ ztxt.T * exp(t)".into());
        }
        let text = TextTower::from_file(TensorFile::open(path)?, device)?;
        let image = BigVision::from_file(
            file,
            device,
            "img/",
            &big_vision::Options {
                image_size,
                pool: None,
            },
        )?;
        notes.extend(
            image
                .notes()
                .iter()
                .filter(|n| !n.starts_with("the source is a multi-tower model"))
                .cloned(),
        );
        Ok(TwoTower {
            image,
            text,
            t,
            b: b.unwrap_or(0.0),
            notes,
        })
    }

    /// The image tower (`img/`).
    pub fn image(&self) -> &BigVision {
        &self.image
    }

    /// The text tower (`txt/`).
    pub fn text(&self) -> &TextTower {
        &self.text
    }

    /// The source file the model was read from.
    pub fn path(&self) -> &Path {
        self.image.path()
    }

    /// What was read or left out, one sentence each.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The image embedding's width: the image `head`'s output, or the MAP head's (the tower width).
    pub fn image_embed_width(&self) -> usize {
        self.image
            .arch()
            .num_classes
            .unwrap_or(self.image.arch().hidden)
    }

    /// Runs both towers: NHWC pixels in [-1, 1] at a `grid` x `grid` token grid, and int64 ids
    /// `[texts, context]`.
    pub fn forward(&self, nhwc: &Tensor, grid: usize, ids: &Tensor) -> Result<TwoTowerOutputs> {
        let out = self.image.forward(nhwc, grid)?;
        let image_features = out.logits.unwrap_or(out.features);
        let (_, text_features) = self.text.forward(ids)?;
        let (ie, te) = (
            image_features.size().last().copied(),
            text_features.size().last().copied(),
        );
        if ie != te {
            return Err(Error::NotAModel {
                path: self.path().to_path_buf(),
                reason: format!(
                    "the image embedding has {ie:?} values, the text embedding {te:?}: the towers do not share an embedding space"
                ),
            });
        }
        let image_embeds = l2_normalise(&image_features)?;
        let text_embeds = l2_normalise(&text_features)?;
        let logits_per_image = two_tower_logits(&image_embeds, &text_embeds, self.t, self.b)?;
        Ok(TwoTowerOutputs {
            image_features,
            text_features,
            image_embeds,
            text_embeds,
            logits_per_image,
        })
    }
}

/// Reads a two-tower file's log temperature `t` (required) and bias `b` (absent in some files),
/// each one scalar, under a `params/` root or none.
pub(crate) fn temperature_and_bias(file: &TensorFile) -> Result<(f64, Option<f64>)> {
    let path = file.path();
    let root = big_vision::root_of(file);
    let scalar = |name: &str| -> Result<Option<f64>> {
        let full = format!("{root}{name}");
        match file.get(&full).map(|t| t.shape.clone()) {
            None => Ok(None),
            Some(shape) if shape.iter().product::<usize>() == 1 => {
                Ok(file.read_f32(&full)?.first().copied().map(f64::from))
            }
            Some(shape) => Err(Error::BadShape {
                path: path.to_path_buf(),
                tensor: full,
                expected: "[1] (one scalar)".into(),
                found: shape,
            }),
        }
    };
    let t = scalar("t")?.ok_or_else(|| Error::MissingTensor {
        path: path.to_path_buf(),
        tensor: format!("{root}t"),
        why: "the log temperature of the two-tower logits".into(),
    })?;
    Ok((t, scalar("b")?))
}

/// `zimg @ ztxt.T * exp(t) + b` on normalised embeddings.
pub fn two_tower_logits(zimg: &Tensor, ztxt: &Tensor, t: f64, b: f64) -> Result<Tensor> {
    Ok(zimg
        .f_matmul(&ztxt.f_transpose(0, 1)?)?
        .f_mul_scalar(t.exp())?
        .f_add_scalar(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::references::big_vision::tests::{max_abs, read_npy};
    use std::path::PathBuf;

    /// The golden outputs were written by big_vision's own model in float32.
    const GOLDEN_TOLERANCE: f64 = 1e-5;

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/big_vision")
            .join(rel)
    }

    fn npy(rel: &str) -> Tensor {
        read_npy(&fixture(rel))
    }

    fn ids(case: &str) -> Tensor {
        npy(&format!("{case}/text.npy")).to_kind(Kind::Int64)
    }

    /// Runs `checkpoint` of `case` and returns the largest difference from the golden outputs.
    fn worst(case: &str, model: &TwoTower) -> f64 {
        let out = model
            .forward(
                &npy(&format!("{case}/input.npy")),
                model.image().arch().grid,
                &ids(case),
            )
            .expect("both towers run");
        let mut worst = 0.0f64;
        for (name, got) in [
            ("image_embeds", &out.image_embeds),
            ("text_embeds", &out.text_embeds),
            ("logits_per_image", &out.logits_per_image),
        ] {
            let diff = max_abs(got, &npy(&format!("{case}/{name}.npy")));
            eprintln!("{case}: {name} max abs diff {diff:e}");
            worst = worst.max(diff);
        }
        worst
    }

    #[test]
    fn matches_both_golden_two_tower_cases() {
        for case in ["siglip-tiny", "siglip-nohead"] {
            let model = TwoTower::open(
                &fixture(&format!("{case}/checkpoint.npz")),
                Device::Cpu,
                None,
            )
            .expect("opens");
            let diff = worst(case, &model);
            assert!(diff <= GOLDEN_TOLERANCE, "{case}: differs by {diff}");
            let a = model.text().arch();
            assert_eq!(
                (a.vocab, a.context, a.width, a.depth, a.heads, a.mlp, a.scan),
                (100, 8, 64, 2, 4, 256, true),
                "{case}"
            );
            assert_eq!(a.embed, Some(64), "{case}: the text tower has a head");
        }
        let nohead = TwoTower::open(&fixture("siglip-nohead/checkpoint.npz"), Device::Cpu, None)
            .expect("opens");
        assert_eq!(nohead.image().arch().num_classes, None);
        assert_eq!(nohead.image_embed_width(), 64);
    }

    #[test]
    fn the_bf16_variant_is_the_f32_model_on_bf16_rounded_weights() {
        let base = fixture("siglip-tiny/checkpoint.npz");
        let bf16 = fixture("siglip-tiny/variants/bfloat16.npz");
        let (fb, fh) = (
            TensorFile::open(&base).expect("opens"),
            TensorFile::open(&bf16).expect("opens"),
        );
        assert_eq!(fb.tensors().len(), fh.tensors().len());
        // Write the f32 weights rounded to bf16 into an f32 npz; the bf16 file must run to exactly
        // its outputs (the reference reads every dtype as f32, so both run the same arithmetic).
        let dir = tempfile::tempdir().expect("temp dir");
        let rounded_path = dir.path().join("rounded.npz");
        let specs: Vec<vitconv_tensors::TensorSpec> = fb
            .tensors()
            .iter()
            .map(|t| vitconv_tensors::TensorSpec {
                name: t.name.clone(),
                dtype: vitconv_tensors::DType::F32,
                shape: t.shape.clone(),
            })
            .collect();
        let mut w = vitconv_tensors::Writer::create(
            &rounded_path,
            vitconv_tensors::Format::Npz,
            specs,
            Default::default(),
            false,
        )
        .expect("writer");
        for t in fb.tensors() {
            let rounded = Tensor::from_slice(&fb.read_f32(&t.name).expect("reads"))
                .to_kind(Kind::BFloat16)
                .to_kind(Kind::Float);
            let values = Vec::<f32>::try_from(&rounded).expect("f32 values");
            let stored = fh.read_f32(&t.name).expect("bf16 decodes");
            assert_eq!(values, stored, "{}: not the rounded f32 values", t.name);
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_next(&bytes).expect("writes");
        }
        w.finish().expect("finishes");
        let input = npy("siglip-tiny/input.npy");
        let text = ids("siglip-tiny");
        let run = |path: &Path| {
            let m = TwoTower::open(path, Device::Cpu, None).expect("opens");
            m.forward(&input, m.image().arch().grid, &text)
                .expect("runs")
        };
        let (a, b) = (run(&bf16), run(&rounded_path));
        for (x, y) in [
            (&a.image_embeds, &b.image_embeds),
            (&a.text_embeds, &b.text_embeds),
            (&a.logits_per_image, &b.logits_per_image),
        ] {
            assert_eq!(max_abs(x, y), 0.0, "the bf16 file is the rounded f32 model");
        }
        // And the rounding is visible against the f32 golden outputs.
        let gold = max_abs(
            &a.logits_per_image,
            &npy("siglip-tiny/logits_per_image.npy"),
        );
        eprintln!("siglip-tiny bf16: logits differ from the f32 goldens by {gold:e}");
        assert!(gold > 0.0 && gold < 5e-2, "{gold}");
    }

    #[test]
    fn the_last_position_is_pooled_without_a_mask() {
        let model = TwoTower::open(&fixture("siglip-tiny/checkpoint.npz"), Device::Cpu, None)
            .expect("opens");
        let text = ids("siglip-tiny");
        let (pooled, _) = model.text().forward(&text).expect("runs");
        // Changing the first id moves the last position's output: nothing masks it out.
        let changed = text.copy();
        let _ = changed.get(0).get(0).fill_(5);
        let (moved, _) = model.text().forward(&changed).expect("runs");
        assert!(max_abs(&pooled.get(0), &moved.get(0)) > 1e-4);
        assert_eq!(max_abs(&pooled.get(1), &moved.get(1)), 0.0);
    }

    #[test]
    fn bad_text_ids_are_refused_with_what_was_expected() {
        let model = TwoTower::open(&fixture("siglip-tiny/checkpoint.npz"), Device::Cpu, None)
            .expect("opens");
        let short = Tensor::from_slice(&[3i64, 4, 1]).reshape([1, 3]);
        let Err(err) = model.text().forward(&short) else {
            panic!("3 ids ran in a context of 8");
        };
        assert!(matches!(err, Error::TextIds { .. }), "{err}");
        assert!(err.to_string().contains("8 ids"), "{err}");
        let big = Tensor::from_slice(&[3i64, 4, 1, 1, 1, 1, 1, 100]).reshape([1, 8]);
        let Err(err) = model.text().forward(&big) else {
            panic!("id 100 ran in a vocabulary of 100");
        };
        assert!(err.to_string().contains("id 100"), "{err}");
    }

    #[test]
    fn single_tower_files_are_not_two_tower() {
        let file = TensorFile::open(fixture("bv-vit-map-scan/checkpoint.npz")).expect("opens");
        assert!(!is_two_tower(&file));
        let file = TensorFile::open(fixture("siglip-nohead/checkpoint.npz")).expect("opens");
        assert!(is_two_tower(&file));
        let Err(err) = TwoTower::open(
            &fixture("bv-vit-map-scan/checkpoint.npz"),
            Device::Cpu,
            None,
        ) else {
            panic!("a single tower opened as two");
        };
        assert!(matches!(err, Error::NotAModel { .. }), "{err}");
    }
}
