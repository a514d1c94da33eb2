//! The SigLIP 2 NaFlex reference: big_vision's `naflex_vit.py` image tower under `img/` run straight from its `.npz` keys on patch inputs, the SigLIP text tower of [`super::siglip`] under `txt/`, and the pair's logits.
//!
//! Written from big_vision's `models/proj/image_text/naflex_vit.py` as the golden data's README
//! (`fixtures/siglip2/GOLDEN-README.md`, siglip2-naflex-tiny) spells it out, never from the
//! converter's mapping:
//!
//! - the patch embedding is a Dense, `img/embedding/kernel` `[P*P*3, D]` + `bias`, applied to
//!   patches flattened in (py, px, c) order; the patch side is `sqrt(rows / 3)`;
//! - the learned `img/pos_embedding` `[G, G, D]` is resized per image to its patch grid
//!   `(h, w)` with `jax.image.scale_and_translate(..., method="bilinear", antialias=True)`:
//!   separable triangle weights at half-pixel centres, the kernel widened by `G / h` where a side
//!   shrinks ([`resize_weights`]); each patch takes the row at its `(yidx, xidx)`;
//! - self-attention masked by `mask[q] & mask[k]`, the MAP head's attention by the key mask
//!   only; masked scores become the most negative float32, as flax does;
//! - blocks, `encoder_norm`, the MAP head and `head` (where present) as in `vit.py`, blocks
//!   stacked (scan) or unrolled;
//! - the text tower, `t` and `b` as in SigLIP ([`super::siglip`]).
//!
//! Every size is read from the shapes.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use vitconv_tensors::TensorFile;

use vitconv_convert::sources::flax_tree::{EncoderTree, BIG_VISION, IMAGE_ENCODER};

use super::big_vision::{
    encoder_sizes, flax_encoder, flax_map_head, map_sizes, root_of, EncoderSizes, Sizes,
};
use super::siglip::{self, l2_normalise, TextTower, TwoTowerOutputs};
use crate::error::{Error, Result};
use crate::input::NaflexInputs;
use crate::ops;
use crate::params::{dim, Params};

/// Whether a file is a SigLIP 2 NaFlex model: an image tower under `img/` whose patch embedding is
/// a Dense (a 2-D `embedding/kernel`) and whose position embedding is a `[G, G, D]` grid.
pub fn is_naflex(file: &TensorFile) -> bool {
    let root = root_of(file);
    let rank = |name: &str| file.get(&format!("{root}{name}")).map(|t| t.shape.len());
    rank("img/embedding/kernel") == Some(2) && rank("img/pos_embedding") == Some(3)
}

/// The NaFlex image tower's architecture, read from its shapes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NaflexArch {
    /// The patch side, in pixels (`sqrt(kernel rows / 3)`).
    pub patch_size: usize,
    /// The side `G` of the stored position grid.
    pub pos_grid: usize,
    /// The token width.
    pub hidden: usize,
    /// The number of encoder blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// The width of one attention head.
    pub head_dim: usize,
    /// The MLP's hidden width.
    pub mlp: usize,
    /// Blocks stored stacked along a leading depth axis.
    pub scan: bool,
    /// The MAP head's `(heads, head_dim, mlp)`.
    pub map: (usize, usize, usize),
    /// The image `head`'s output width, where the tower has one.
    pub num_classes: Option<usize>,
}

/// How the reference resizes the position grid and masks the MAP head: big_vision's way, or, for
/// tests that show what verify catches, a planted mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Semantics {
    /// Widen the triangle kernel where a side shrinks (big_vision: yes).
    pub antialias: bool,
    /// Mask the padding keys of the MAP head's attention (big_vision: yes).
    pub map_mask: bool,
}

impl Semantics {
    /// big_vision's own.
    pub const BIG_VISION: Semantics = Semantics {
        antialias: true,
        map_mask: true,
    };
}

/// What the image tower computes, float32 on its device.
pub struct NaflexOutputs {
    /// `encoder_norm` output `[B, N, D]` (rows of padding are not comparable).
    pub tokens: Tensor,
    /// The MAP head's output `[B, D]`.
    pub pooled: Tensor,
    /// The image embedding before normalisation: `head`'s output, or the MAP output.
    pub embedding: Tensor,
    /// The resized position embedding added to each patch `[B, N, D]`.
    pub posemb: Tensor,
}

/// A NaFlex image tower (`img/`), ready to run.
pub struct NaflexTower {
    params: Params,
    arch: NaflexArch,
    /// Where the encoder's tensors live.
    tree: EncoderTree,
}

impl NaflexTower {
    /// Reads the image tower of an opened NaFlex file (`img/` after the root).
    pub fn from_file(file: TensorFile, device: Device) -> Result<NaflexTower> {
        let root = root_of(&file);
        let params = Params::new(file, &format!("{root}img/"), device, Kind::Float);
        let (arch, tree) = read_arch(&params)?;
        Ok(NaflexTower { params, arch, tree })
    }

    /// The architecture read from the tower's shapes.
    pub fn arch(&self) -> &NaflexArch {
        &self.arch
    }

    /// The source file the tower was read from.
    pub fn path(&self) -> &Path {
        self.params.path()
    }

    /// Runs the tower on NaFlex inputs with big_vision's semantics.
    pub fn forward(&self, inputs: &NaflexInputs) -> Result<NaflexOutputs> {
        self.forward_with(inputs, Semantics::BIG_VISION)
    }

    /// Runs the tower on NaFlex inputs with the given semantics.
    pub fn forward_with(&self, inputs: &NaflexInputs, s: Semantics) -> Result<NaflexOutputs> {
        let a = &self.arch;
        let p = &self.params;
        let device = p.device();
        let width = a.patch_size.saturating_mul(a.patch_size).saturating_mul(3);
        let patches = inputs.patches.f_to_kind(Kind::Float)?.f_to_device(device)?;
        let size = patches.size();
        let (b, n) = match size.as_slice() {
            [b, n, c] if *c == dim(width)? => (*b, *n),
            other => {
                return Err(Error::UnexpectedShape {
                    what: "NaFlex patches",
                    expected: "[B, N, P*P*3] with the source's patch size",
                    found: other.to_vec(),
                })
            }
        };
        let x = ops::dense_in_out(
            &patches,
            &p.load("embedding/kernel", &[width, a.hidden])?,
            Some(&p.load("embedding/bias", &[a.hidden])?),
        )?;
        let posemb = self.posemb(inputs, s.antialias)?;
        let x = x.f_add(&posemb)?;
        let mask = inputs.mask.f_to_kind(Kind::Bool)?.f_to_device(device)?;
        let self_mask = mask
            .f_view([b, 1, n, 1])?
            .f_logical_and(&mask.f_view([b, 1, 1, n])?)?;
        let sizes = Sizes {
            d: a.hidden,
            heads: a.heads,
            head_dim: a.head_dim,
            mlp: a.mlp,
        };
        let tokens = flax_encoder(p, &self.tree, a.depth, sizes, &x, Some(&self_mask))?;
        let key_mask = mask.f_view([b, 1, 1, n])?;
        let pooled = self.map_head(&tokens, s.map_mask.then_some(&key_mask))?;
        let embedding = match a.num_classes {
            Some(c) => ops::dense_in_out(
                &pooled,
                &p.load("head/kernel", &[a.hidden, c])?,
                Some(&p.load("head/bias", &[c])?),
            )?,
            None => pooled.shallow_clone(),
        };
        Ok(NaflexOutputs {
            tokens,
            pooled,
            embedding,
            posemb,
        })
    }

    /// The position embedding of every patch `[B, N, D]`: the stored grid resized to each image's
    /// grid, the row at its `(yidx, xidx)` taken.
    fn posemb(&self, inputs: &NaflexInputs, antialias: bool) -> Result<Tensor> {
        let a = &self.arch;
        let device = self.params.device();
        let pos = self
            .params
            .load("pos_embedding", &[a.pos_grid, a.pos_grid, a.hidden])?;
        let d = dim(a.hidden)?;
        let yidx = inputs.yidx.f_to_kind(Kind::Int64)?.f_to_device(device)?;
        let xidx = inputs.xidx.f_to_kind(Kind::Int64)?.f_to_device(device)?;
        let mut rows = Vec::with_capacity(inputs.grids.len());
        for (i, &[h, w]) in inputs.grids.iter().enumerate() {
            let grid = resize_grid(&pos, [h, w], antialias)?.f_reshape([-1, d])?;
            let i = dim(i)?;
            let at = yidx
                .f_select(0, i)?
                .f_mul_scalar(dim(w)?)?
                .f_add(&xidx.f_select(0, i)?)?;
            rows.push(grid.f_index_select(0, &at)?);
        }
        Ok(Tensor::f_stack(&rows, 0)?)
    }

    /// `MAPHead`: the probe attends over the tokens (padding keys masked out by `key_mask`), then
    /// `x + MlpBlock_0(LayerNorm_0(x))`; the probe's row is the pooled vector.
    fn map_head(&self, tokens: &Tensor, key_mask: Option<&Tensor>) -> Result<Tensor> {
        flax_map_head(
            &self.params,
            self.arch.hidden,
            self.arch.map,
            tokens,
            key_mask,
        )
    }
}

/// The `[out, in]` weights of `jax.image.scale_and_translate` along one axis, `bilinear`, no
/// translation: output `j` samples the input at `(j + 0.5) * in / out - 0.5`, each input `i` weighted
/// by the triangle `max(0, 1 - |sample - i| / k)`, `k = max(in / out, 1)` with antialias (the
/// kernel widened where the axis shrinks) and 1 without, each row normalised to sum 1. Computed in
/// f64 and rounded to f32 once.
pub fn resize_weights(input: usize, output: usize, antialias: bool) -> Vec<f32> {
    #[allow(clippy::cast_precision_loss)]
    let (fin, fout) = (input as f64, output as f64);
    let scale = fin / fout.max(1.0);
    let support = if antialias { scale.max(1.0) } else { 1.0 };
    let mut out = Vec::with_capacity(input.saturating_mul(output));
    for j in 0..output {
        #[allow(clippy::cast_precision_loss)]
        let centre = (j as f64 + 0.5) * scale - 0.5;
        #[allow(clippy::cast_precision_loss)]
        let row: Vec<f64> = (0..input)
            .map(|i| (1.0 - (centre - i as f64).abs() / support).max(0.0))
            .collect();
        let total: f64 = row.iter().sum();
        #[allow(clippy::cast_possible_truncation)]
        let normalised: Vec<f32> = row
            .iter()
            .map(|w| {
                if total > f64::EPSILON {
                    (w / total) as f32
                } else {
                    0.0
                }
            })
            .collect();
        out.extend(normalised);
    }
    out
}

/// Resizes a `[G, G, D]` grid to `[h, w, D]` with the separable weights of [`resize_weights`]:
/// `Wy @ grid @ Wx^T` over the two spatial axes.
pub fn resize_grid(grid: &Tensor, [h, w]: [usize; 2], antialias: bool) -> Result<Tensor> {
    let size = grid.size();
    let (gh, gw, d) = match size.as_slice() {
        [gh, gw, d] => (*gh, *gw, *d),
        other => {
            return Err(Error::UnexpectedShape {
                what: "a position grid",
                expected: "[G, G, D]",
                found: other.to_vec(),
            })
        }
    };
    let (gh_u, gw_u) = (
        usize::try_from(gh).unwrap_or(0),
        usize::try_from(gw).unwrap_or(0),
    );
    let opts = (Kind::Float, grid.device());
    let wy = Tensor::f_from_slice(&resize_weights(gh_u, h, antialias))?
        .f_reshape([dim(h)?, gh])?
        .f_to_device(opts.1)?;
    let wx = Tensor::f_from_slice(&resize_weights(gw_u, w, antialias))?
        .f_reshape([dim(w)?, gw])?
        .f_to_device(opts.1)?;
    // Rows first: [h, G] @ [G, G*D] -> [h, G, D]; then columns: [h, D, G] @ [G, w] -> [h, D, w].
    let y = wy
        .f_matmul(
            &grid
                .f_to_kind(Kind::Float)?
                .f_reshape([gh, gw.saturating_mul(d)])?,
        )?
        .f_reshape([dim(h)?, gw, d])?;
    let x = y
        .f_permute([0, 2, 1])?
        .f_matmul(&wx.f_transpose(0, 1)?)?
        .f_permute([0, 2, 1])?;
    Ok(x.f_contiguous()?)
}

/// Reads the tower's sizes from its shapes, checking that the parts agree.
fn read_arch(p: &Params) -> Result<(NaflexArch, EncoderTree)> {
    let path = p.path().to_path_buf();
    let bad = |tensor: &str, expected: String, found: &[usize]| Error::BadShape {
        path: path.clone(),
        tensor: format!("img/{tensor}"),
        expected,
        found: found.to_vec(),
    };
    let (rows, hidden) = match p.require_shape("embedding/kernel", "the NaFlex patch embedding")? {
        [r, d] => (*r, *d),
        other => return Err(bad("embedding/kernel", "[P*P*3, D]".into(), other)),
    };
    let patch_size = (rows / 3).isqrt();
    if patch_size == 0 || patch_size.saturating_mul(patch_size).saturating_mul(3) != rows {
        return Err(bad(
            "embedding/kernel",
            "[P*P*3, D]: rows of square RGB patches".into(),
            &[rows, hidden],
        ));
    }
    let pos_grid = match p.require_shape("pos_embedding", "the NaFlex position grid")? {
        [g, g2, d] if g == g2 && *d == hidden && *g > 0 => *g,
        other => {
            return Err(bad(
                "pos_embedding",
                format!("[G, G, {hidden}] (big_vision builds square grids)"),
                other,
            ))
        }
    };
    let EncoderSizes {
        tree,
        depth,
        heads,
        head_dim,
        mlp,
    } = encoder_sizes(p, IMAGE_ENCODER, BIG_VISION, hidden, "", &bad)?;
    if depth == 0 || heads == 0 || head_dim == 0 {
        return Err(Error::NotAModel {
            path: path.clone(),
            reason: "the NaFlex image tower img/ has no encoder blocks with attention".into(),
        });
    }
    match p.require_shape("MAPHead_0/probe", "the MAP head (pool_type 'map')")? {
        [1, 1, d] if *d == hidden => {}
        other => return Err(bad("MAPHead_0/probe", format!("[1, 1, {hidden}]"), other)),
    }
    let (mh, mdh, map_mlp) = map_sizes(p, hidden, &bad)?;
    let num_classes = match p.shape("head/kernel") {
        Some([d, c]) if *d == hidden => Some(*c),
        Some(other) => return Err(bad("head/kernel", format!("[{hidden}, E]"), other)),
        None => None,
    };
    let arch = NaflexArch {
        patch_size,
        pos_grid,
        hidden,
        depth,
        heads,
        head_dim,
        mlp,
        scan: tree.stacked(),
        map: (mh, mdh, map_mlp),
        num_classes,
    };
    Ok((arch, tree))
}

/// A SigLIP 2 NaFlex two-tower model: the NaFlex image tower, the text tower, `t` and `b`.
pub struct NaflexTwoTower {
    image: NaflexTower,
    text: TextTower,
    /// The log temperature `t`.
    pub t: f64,
    /// The bias `b` (0 where the file has none).
    pub b: f64,
    notes: Vec<String>,
}

impl NaflexTwoTower {
    /// Opens a NaFlex two-tower checkpoint.
    pub fn open(path: &Path, device: Device) -> Result<NaflexTwoTower> {
        if !path.exists() {
            return Err(Error::NotFound {
                path: path.to_path_buf(),
            });
        }
        let file = TensorFile::open(path)?;
        if !is_naflex(&file) || !siglip::is_two_tower(&file) {
            return Err(Error::NotAModel {
                path: path.to_path_buf(),
                reason: "not a SigLIP 2 NaFlex two-tower model (a 2-D img/embedding/kernel, a [G, G, D] img/pos_embedding, txt/Embed_0/embedding and t)".into(),
            });
        }
        let (t, b) = siglip::temperature_and_bias(&file)?;
        let mut notes = vec!["the source is a SigLIP 2 NaFlex model (big_vision naflex_vit): patches flattened (py, px, c), the position grid resized per image (bilinear, antialiased), padding masked in attention and in the MAP head".to_string()];
        if b.is_none() {
            notes.push("the source has no bias b: logits are zimg @ ztxt.T * exp(t)".into());
        }
        let text = TextTower::from_file(TensorFile::open(path)?, device)?;
        let image = NaflexTower::from_file(file, device)?;
        Ok(NaflexTwoTower {
            image,
            text,
            t,
            b: b.unwrap_or(0.0),
            notes,
        })
    }

    /// The image tower (`img/`).
    pub fn image(&self) -> &NaflexTower {
        &self.image
    }

    /// The text tower (`txt/`).
    pub fn text(&self) -> &TextTower {
        &self.text
    }

    /// What was read or left out, one sentence each.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The image embedding's width: the image `head`'s output, or the MAP head's (the tower width).
    pub fn image_embed_width(&self) -> usize {
        let a = self.image.arch();
        a.num_classes.unwrap_or(a.hidden)
    }

    /// Runs both towers: NaFlex inputs and int64 ids `[texts, context]`.
    pub fn forward(&self, inputs: &NaflexInputs, ids: &Tensor) -> Result<TwoTowerOutputs> {
        self.forward_with(inputs, ids, Semantics::BIG_VISION)
    }

    /// [`NaflexTwoTower::forward`] with the image tower's semantics given.
    pub fn forward_with(
        &self,
        inputs: &NaflexInputs,
        ids: &Tensor,
        s: Semantics,
    ) -> Result<TwoTowerOutputs> {
        let image_features = self.image.forward_with(inputs, s)?.embedding;
        let (_, text_features) = self.text.forward(ids)?;
        let (ie, te) = (
            image_features.size().last().copied(),
            text_features.size().last().copied(),
        );
        if ie != te {
            return Err(Error::NotAModel {
                path: self.image.path().to_path_buf(),
                reason: format!(
                    "the image embedding has {ie:?} values, the text embedding {te:?}: the towers do not share an embedding space"
                ),
            });
        }
        let image_embeds = l2_normalise(&image_features)?;
        let text_embeds = l2_normalise(&text_features)?;
        let logits_per_image =
            siglip::two_tower_logits(&image_embeds, &text_embeds, self.t, self.b)?;
        Ok(TwoTowerOutputs {
            image_features,
            text_features,
            image_embeds,
            text_embeds,
            logits_per_image,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{self, InputSource};
    use crate::references::big_vision::tests::{max_abs, read_npy};
    use std::path::PathBuf;

    /// The golden outputs were written by big_vision's own model in float32.
    const GOLDEN_TOLERANCE: f64 = 1e-5;
    /// The generator checked the PyTorch resize rule against big_vision to 4.2e-7 on this case.
    const POSEMB_TOLERANCE: f64 = 1e-6;

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/siglip2/siglip2-naflex-tiny")
            .join(rel)
    }

    fn npy(rel: &str) -> Tensor {
        read_npy(&fixture(rel))
    }

    fn golden_inputs() -> NaflexInputs {
        input::naflex(&InputSource::Npy(fixture("patches.npy")), 8, None, 16)
            .expect("the golden patches load")
            .0
    }

    /// The largest difference over the rows `mask` marks as patches.
    fn max_abs_valid(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
        let m = mask.to_kind(Kind::Bool).unsqueeze(-1);
        let zero = Tensor::zeros([1], (Kind::Double, Device::Cpu));
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .where_self(&m, &zero)
            .max()
            .double_value(&[])
    }

    fn open() -> NaflexTwoTower {
        NaflexTwoTower::open(&fixture("checkpoint.npz"), Device::Cpu).expect("opens")
    }

    #[test]
    fn matches_the_golden_naflex_case() {
        let model = open();
        let a = model.image().arch();
        assert_eq!(
            (
                a.patch_size,
                a.pos_grid,
                a.hidden,
                a.depth,
                a.heads,
                a.mlp,
                a.scan
            ),
            (8, 4, 64, 2, 4, 256, true)
        );
        assert_eq!(a.num_classes, None);
        assert!(!model.text().arch().scan, "the text tower is unrolled");
        let inputs = golden_inputs();
        assert_eq!(inputs.grids, vec![[4, 6], [3, 8], [6, 3]]);
        let ids = npy("text.npy").to_kind(Kind::Int64);
        let out = model.forward(&inputs, &ids).expect("runs");
        for (name, got) in [
            ("image_embeds", &out.image_embeds),
            ("text_embeds", &out.text_embeds),
            ("logits_per_image", &out.logits_per_image),
        ] {
            let diff = max_abs(got, &npy(&format!("{name}.npy")));
            eprintln!("siglip2-naflex-tiny: {name} max abs diff {diff:e}");
            assert!(diff <= GOLDEN_TOLERANCE, "{name} differs by {diff}");
        }
        let image = model.image().forward(&inputs).expect("runs");
        let tokens = max_abs_valid(&image.tokens, &npy("image_tokens.npy"), &inputs.mask);
        eprintln!("siglip2-naflex-tiny: valid image tokens max abs diff {tokens:e}");
        assert!(tokens <= GOLDEN_TOLERANCE, "tokens differ by {tokens}");
        let pos = max_abs_valid(&image.posemb, &npy("posemb_per_patch.npy"), &inputs.mask);
        eprintln!("siglip2-naflex-tiny: position embedding per patch max abs diff {pos:e}");
        assert!(pos <= POSEMB_TOLERANCE, "posemb differs by {pos}");
    }

    #[test]
    fn the_resize_is_pytorchs_antialiased_bilinear() {
        // libtorch's own antialiased bilinear (what F.interpolate(antialias=True) runs) on a
        // random grid, for shrinking, stretching and mixed sizes.
        let grid = Tensor::randn([4, 5, 3], (Kind::Float, Device::Cpu));
        for [h, w] in [[2, 9], [3, 8], [6, 3], [4, 5], [1, 1], [7, 2]] {
            let ours = resize_grid(&grid, [h, w], true).expect("resizes");
            let torch = grid
                .permute([2, 0, 1])
                .unsqueeze(0)
                .internal_upsample_bilinear2d_aa([h as i64, w as i64], false, None, None)
                .squeeze_dim(0)
                .permute([1, 2, 0]);
            let diff = max_abs(&ours, &torch);
            assert!(diff <= POSEMB_TOLERANCE, "{h}x{w}: {diff}");
            // Without antialias, shrinking differs from it and stretching does not.
            let plain = resize_grid(&grid, [h, w], false).expect("resizes");
            let torch_plain = grid
                .permute([2, 0, 1])
                .unsqueeze(0)
                .upsample_bilinear2d([h as i64, w as i64], false, None, None)
                .squeeze_dim(0)
                .permute([1, 2, 0]);
            assert!(max_abs(&plain, &torch_plain) <= POSEMB_TOLERANCE, "{h}x{w}");
        }
    }

    #[test]
    fn planted_reference_mistakes_move_the_outputs_beyond_the_tolerance() {
        let model = open();
        let inputs = golden_inputs();
        let ids = npy("text.npy").to_kind(Kind::Int64);
        let gold = npy("image_embeds.npy");
        for (what, s, at_least) in [
            (
                "no antialias",
                Semantics {
                    antialias: false,
                    map_mask: true,
                },
                0.02,
            ),
            (
                "padding unmasked in the MAP head",
                Semantics {
                    antialias: true,
                    map_mask: false,
                },
                1e-3,
            ),
        ] {
            let out = model.forward_with(&inputs, &ids, s).expect("runs");
            let diff = max_abs(&out.image_embeds, &gold);
            eprintln!("{what}: image embeds max abs diff {diff:e}");
            assert!(diff > at_least, "{what}: only {diff}");
        }
    }

    #[test]
    fn other_files_are_not_naflex() {
        let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        for rel in [
            "big_vision/siglip-tiny/checkpoint.npz",
            "siglip2/siglip2-gopt-tiny/checkpoint.npz",
        ] {
            let file = TensorFile::open(base.join(rel)).expect("opens");
            assert!(!is_naflex(&file), "{rel}");
        }
        let Err(err) = NaflexTwoTower::open(
            &base.join("big_vision/siglip-tiny/checkpoint.npz"),
            Device::Cpu,
        ) else {
            panic!("a fixed-resolution SigLIP opened as NaFlex");
        };
        assert!(matches!(err, Error::NotAModel { .. }), "{err}");
    }
}
