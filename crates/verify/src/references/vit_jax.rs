//! The reference forward: the ViT run straight from the google-research/vision_transformer `.npz`, in the flax model's own layouts and semantics.
//!
//! Written against `vit_jax/models_vit.py` and `vit_jax/models_resnet.py`
//! (<https://github.com/google-research/vision_transformer>) and the golden data's
//! README: HWIO patch kernel, `[D, H, Dh]` q/k/v kernels with `[H, Dh]` biases,
//! `[H, Dh, D]` out kernel, tanh GELU, LayerNorm eps 1e-6, the class token prepended
//! before the position embedding is added, `encoder_norm` on all tokens then token 0
//! or the mean, `pre_logits` dense + tanh; hybrid stems with StdConv
//! `(w - mean) / (std + 1e-5)` over (H, W, in), GroupNorm(32, eps 1e-6), TensorFlow
//! SAME padding and a 3x3/2 SAME max-pool. The encoder's tensor names (pre-Linen or
//! Linen) come from the converter's flax tree reader, which knows no target; every size
//! is inferred here from the shapes and the arithmetic is this module's and
//! [`super::big_vision`]'s, nothing is borrowed from the converter's mapping, so a
//! mapping bug there cannot hide in both sides.

use tch::{Device, Kind, Tensor};
use vitconv_convert::sources::flax_tree::{EncoderTree, IMAGE_ENCODER, VIT_JAX};
use vitconv_tensors::TensorFile;

use super::big_vision::{
    conv_patch_sizes, encoder_sizes, flax_encoder, flax_head, flax_patch_embed,
    prepend_class_token, Sizes,
};
use super::{
    isqrt, zoom_rows, Classifier, Family, PosEmb, RefOutputs, ResNetArch, SourceArch,
    FLAX_GROUP_NORM_EPS, GROUPS, STD_CONV_EPS,
};
use crate::error::{Error, Result};
use crate::ops;
use crate::params::{dim, Params};

/// The flax ViT of one vision_transformer `.npz`, ready to run.
pub struct VitJax {
    params: Params,
    arch: SourceArch,
    /// Where the encoder's tensors live, and in which naming.
    tree: EncoderTree,
}

impl VitJax {
    /// Reads the architecture of an opened vision_transformer checkpoint from its shapes.
    pub fn from_file(file: TensorFile, device: Device) -> Result<VitJax> {
        // The same root the converter read the tree under.
        let prefix = vitconv_convert::sources::vit_jax::root(file.tensors()).unwrap_or("");
        let params = Params::new(file, prefix, device, Kind::Float);
        let (arch, tree) = read_arch(&params)?;
        Ok(VitJax { params, arch, tree })
    }

    /// The architecture read from the source's shapes.
    pub fn arch(&self) -> &SourceArch {
        &self.arch
    }

    /// The source file the model was read from.
    pub fn path(&self) -> &std::path::Path {
        self.params.path()
    }

    /// Runs the model on NHWC pixels in [-1, 1]. `grid` is the token grid to run at: the
    /// source's own, or another one, for which the position embedding is resized the way
    /// `vit_jax.checkpoint.interpolate_posembed` does (scipy zoom order 1 on the grid, the
    /// class-token row untouched).
    pub fn forward(&self, nhwc: &Tensor, grid: usize) -> Result<RefOutputs> {
        let a = &self.arch;
        let p = &self.params;
        let mut x = nhwc
            .f_to_kind(Kind::Float)?
            .f_to_device(p.device())?
            .f_permute([0, 3, 1, 2])?;
        if let Some(resnet) = &a.resnet {
            x = self.stem(&x, resnet)?;
        }
        let mut x = flax_patch_embed(p, &x, a, grid)?;
        let pos = self.pos_embedding(grid)?;
        // Unlike big_vision, the class token is prepended before the position embedding is added.
        if a.classifier == Classifier::Token {
            x = prepend_class_token(p, &x, a.hidden)?;
        }
        x = x.f_add(&pos)?;
        let tokens = flax_encoder(p, &self.tree, a.depth, Sizes::of(a), &x, None)?;
        let pooled = match a.classifier {
            // read_arch gives a vision_transformer file only these two.
            Classifier::Token | Classifier::First => tokens.f_select(1, 0)?,
            Classifier::Gap | Classifier::Map => tokens.f_mean_dim(1, false, Kind::Float)?,
            Classifier::None => tokens.shallow_clone(),
        };
        let (features, logits) = flax_head(p, &pooled, a)?;
        Ok(RefOutputs {
            tokens,
            pooled,
            features,
            logits,
        })
    }

    /// The position embedding for a `grid` x `grid` run, `[1, N, D]`.
    fn pos_embedding(&self, grid: usize) -> Result<Tensor> {
        let a = &self.arch;
        let n_prefix = usize::from(a.classifier == Classifier::Token);
        let n = a.grid * a.grid + n_prefix;
        let pos = self.params.load(
            "Transformer/posembed_input/pos_embedding",
            &[1, n, a.hidden],
        )?;
        if grid == a.grid {
            return Ok(pos);
        }
        let (g, new, d) = (dim(a.grid)?, dim(grid)?, dim(a.hidden)?);
        let cells = dim(a.grid.saturating_mul(a.grid))?;
        let prefix = pos.f_narrow(1, 0, dim(n_prefix)?)?;
        let rows = pos.f_narrow(1, dim(n_prefix)?, cells)?;
        let rows = zoom_rows(&rows, g, new, d)?;
        Ok(Tensor::f_cat(&[prefix, rows], 1)?)
    }

    /// The ResNet stem of `models_vit.py`: root conv 7x7/2, GroupNorm, ReLU, max-pool 3x3/2,
    /// then the bottleneck stages.
    fn stem(&self, x: &Tensor, r: &ResNetArch) -> Result<Tensor> {
        let x = self.std_conv(x, "conv_root/kernel", 2)?;
        let x = self.gn(&x, "gn_root", r.width)?.f_relu()?;
        let mut x = ops::max_pool_same(&x, 3, 2)?;
        for (si, &units) in r.stages.iter().enumerate() {
            for u in 0..units {
                let stride = if si > 0 && u == 0 { 2 } else { 1 };
                x = self.unit(&x, &format!("block{}/unit{}", si + 1, u + 1), stride)?;
            }
        }
        Ok(x)
    }

    /// `models_resnet.ResidualUnit`: 1x1, 3x3 (strided), 1x1 convs with GroupNorm, a projected
    /// shortcut where the shape changes, ReLU after the sum.
    fn unit(&self, x: &Tensor, base: &str, stride: i64) -> Result<Tensor> {
        let p = &self.params;
        let out = |name: &str| -> Result<usize> {
            let shape = p.require_shape(&format!("{base}/{name}/kernel"), "ResNet unit")?;
            shape.get(3).copied().ok_or_else(|| Error::BadShape {
                path: p.path().to_path_buf(),
                tensor: format!("{base}/{name}/kernel"),
                expected: "[kh, kw, in, out]".into(),
                found: shape.to_vec(),
            })
        };
        let residual = if p.has(&format!("{base}/conv_proj/kernel")) {
            let r = self.std_conv(x, &format!("{base}/conv_proj/kernel"), stride)?;
            self.gn(&r, &format!("{base}/gn_proj"), out("conv_proj")?)?
        } else {
            x.shallow_clone()
        };
        let y = self.std_conv(x, &format!("{base}/conv1/kernel"), 1)?;
        let y = self
            .gn(&y, &format!("{base}/gn1"), out("conv1")?)?
            .f_relu()?;
        let y = self.std_conv(&y, &format!("{base}/conv2/kernel"), stride)?;
        let y = self
            .gn(&y, &format!("{base}/gn2"), out("conv2")?)?
            .f_relu()?;
        let y = self.std_conv(&y, &format!("{base}/conv3/kernel"), 1)?;
        let y = self.gn(&y, &format!("{base}/gn3"), out("conv3")?)?;
        Ok(residual.f_add(&y)?.f_relu()?)
    }

    /// `models_resnet.StdConv`: the HWIO kernel standardised over (H, W, in) with
    /// `(w - mean) / (std + 1e-5)`, then a SAME convolution.
    fn std_conv(&self, x: &Tensor, name: &str, stride: i64) -> Result<Tensor> {
        let p = &self.params;
        let shape = p.require_shape(name, "ResNet stem")?.to_vec();
        let cin = x.size().get(1).copied().unwrap_or(0);
        let ok = matches!(shape.as_slice(), [kh, kw, i, _] if kh == kw && i64::try_from(*i).ok() == Some(cin));
        if !ok {
            return Err(Error::BadShape {
                path: p.path().to_path_buf(),
                tensor: name.to_owned(),
                expected: format!("[k, k, {cin}, out]"),
                found: shape,
            });
        }
        let w = p.load_any(name)?;
        let centred = w.f_sub(&w.f_mean_dim([0i64, 1, 2].as_slice(), true, Kind::Float)?)?;
        let std = centred.f_std_dim([0i64, 1, 2].as_slice(), false, true)?;
        let w = centred.f_div(&std.f_add_scalar(STD_CONV_EPS)?)?;
        let w = w.f_permute([3, 2, 0, 1])?.f_contiguous()?;
        ops::conv2d_same(x, &w, stride)
    }

    /// flax `nn.GroupNorm(32, eps 1e-6)`; the params may be stored `(C,)` or `(1, 1, 1, C)`.
    fn gn(&self, x: &Tensor, base: &str, channels: usize) -> Result<Tensor> {
        let load = |which: &str| -> Result<Tensor> {
            let name = format!("{base}/{which}");
            let shape = self.params.require_shape(&name, "GroupNorm")?;
            let expected: &[usize] = if shape.len() == 4 {
                &[1, 1, 1, channels]
            } else {
                &[channels]
            };
            Ok(self
                .params
                .load(&name, expected)?
                .f_reshape([dim(channels)?])?)
        };
        ops::group_norm(
            x,
            GROUPS,
            &load("scale")?,
            &load("bias")?,
            FLAX_GROUP_NORM_EPS,
        )
    }
}

/// Reads the architecture from the shapes, checking that the parts agree.
fn read_arch(p: &Params) -> Result<(SourceArch, EncoderTree)> {
    let not_vit = |reason: String| Error::NotAModel {
        path: p.path().to_path_buf(),
        reason,
    };
    let bad = |tensor: &str, expected: String, found: &[usize]| Error::BadShape {
        path: p.path().to_path_buf(),
        tensor: tensor.to_owned(),
        expected,
        found: found.to_vec(),
    };
    let [patch_size, embed_in, hidden] = conv_patch_sizes(
        p,
        "no `embedding/kernel`: not a google-research/vision_transformer checkpoint",
        &bad,
    )?;
    let enc = encoder_sizes(p, IMAGE_ENCODER, VIT_JAX, hidden, "", &bad)?;
    let classifier = if p.has("cls") {
        Classifier::Token
    } else {
        Classifier::Gap
    };
    let pos_name = "Transformer/posembed_input/pos_embedding";
    let n = match p.require_shape(pos_name, "position embedding")? {
        [1, n, d] if *d == hidden => *n,
        other => return Err(bad(pos_name, format!("[1, N, {hidden}]"), other)),
    };
    let patches = n.saturating_sub(usize::from(classifier == Classifier::Token));
    let grid = isqrt(patches);
    if grid == 0 || grid.checked_mul(grid) != Some(patches) {
        return Err(bad(
            pos_name,
            "a square token grid (plus the class token)".into(),
            &[1, n, hidden],
        ));
    }
    let representation = match p.shape("pre_logits/kernel") {
        Some([d, r]) if *d == hidden => Some(*r),
        Some(other) => return Err(bad("pre_logits/kernel", format!("[{hidden}, R]"), other)),
        None => None,
    };
    let fin = representation.unwrap_or(hidden);
    let num_classes = match p.shape("head/kernel") {
        Some([f, c]) if *f == fin => Some(*c),
        Some(other) => return Err(bad("head/kernel", format!("[{fin}, classes]"), other)),
        None => None,
    };
    let resnet = match p.shape("conv_root/kernel") {
        Some([_, _, _, w]) => {
            let mut stages = Vec::new();
            loop {
                let stage = stages.len().saturating_add(1);
                let mut units = 0usize;
                while p.has(&format!(
                    "block{stage}/unit{}/conv1/kernel",
                    units.saturating_add(1)
                )) {
                    units = units.saturating_add(1);
                }
                if units == 0 {
                    break;
                }
                stages.push(units);
            }
            Some(ResNetArch { width: *w, stages })
        }
        Some(other) => return Err(bad("conv_root/kernel", "[7, 7, 3, width]".into(), other)),
        None => None,
    };
    // The stem divides the image by 4 (root conv and pool), then by 2 per stage after the first.
    let stem_stride = match &resnet {
        Some(r) => {
            4usize.checked_shl(u32::try_from(r.stages.len().saturating_sub(1)).unwrap_or(u32::MAX))
        }
        None => Some(1),
    };
    let image_size = stem_stride
        .and_then(|s| grid.checked_mul(patch_size)?.checked_mul(s))
        .ok_or_else(|| not_vit("image size overflows".into()))?;
    if enc.depth == 0 || enc.heads == 0 || enc.head_dim == 0 {
        return Err(not_vit("no encoder blocks with attention".into()));
    }
    let arch = SourceArch {
        family: Family::VitJax,
        image_size,
        patch_size,
        grid,
        hidden,
        depth: enc.depth,
        heads: enc.heads,
        head_dim: enc.head_dim,
        mlp: enc.mlp,
        classifier,
        posemb: PosEmb::Learned,
        class_pos: true,
        scan: false,
        representation,
        num_classes,
        resnet,
        embed_in,
    };
    Ok((arch, enc.tree))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::references::big_vision::tests::{max_abs, read_npy};
    use std::path::{Path, PathBuf};

    /// Opens a vision_transformer fixture the way `verify` does, through the family detection.
    fn open(path: &Path) -> Result<VitJax> {
        if !path.exists() {
            return Err(Error::NotFound {
                path: path.to_path_buf(),
            });
        }
        let file = TensorFile::open(path)?;
        assert_eq!(super::super::detect_family(&file), Family::VitJax);
        VitJax::from_file(file, Device::Cpu)
    }

    /// The golden files were written by the flax model in float32; the issue asks the
    /// reference to equal them within 1e-4.
    const GOLDEN_TOLERANCE: f64 = 1e-4;

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(rel)
    }

    fn npy(rel: &str) -> Tensor {
        read_npy(&fixture(rel))
    }

    fn check(case: &str, checkpoint: &str, logits_file: &str) {
        let model = open(&fixture(&format!("{case}/{checkpoint}"))).expect("opens");
        let input = npy(&format!(
            "{}/input.npy",
            if case == "vit-token-variants" {
                "vit-token"
            } else {
                case
            }
        ));
        let out = model
            .forward(&input, model.arch().grid)
            .expect("forward runs");
        let logits = out.logits.expect("golden cases have a head");
        let diff = max_abs(&logits, &npy(&format!("{case}/{logits_file}")));
        assert!(
            diff <= GOLDEN_TOLERANCE,
            "{case}/{checkpoint}: logits differ by {diff}"
        );
        if case != "vit-token-variants" {
            // The golden features.npy holds the `pre_logits` Dense module's own output,
            // captured before the tanh that models_vit.py applies after it (checked by hand:
            // tanh(features.npy) @ head + bias reproduces logits.npy, features.npy itself
            // does not), so the tanh is applied to the golden side here.
            let mut golden = npy(&format!("{case}/features.npy"));
            if model.arch().representation.is_some() {
                golden = golden.tanh();
            }
            let diff = max_abs(&out.features, &golden);
            assert!(
                diff <= GOLDEN_TOLERANCE,
                "{case}: features differ by {diff}"
            );
            let diff = max_abs(&out.tokens, &npy(&format!("{case}/tokens.npy")));
            assert!(diff <= GOLDEN_TOLERANCE, "{case}: tokens differ by {diff}");
        }
    }

    #[test]
    fn matches_golden_vit_token() {
        check("vit-token", "checkpoint.npz", "logits.npy");
    }

    #[test]
    fn matches_golden_vit_prelogits() {
        check("vit-prelogits", "checkpoint.npz", "logits.npy");
    }

    #[test]
    fn matches_golden_vit_gap() {
        check("vit-gap", "checkpoint.npz", "logits.npy");
    }

    #[test]
    fn matches_golden_vit_mlp4() {
        check("vit-mlp4", "checkpoint.npz", "logits.npy");
    }

    #[test]
    fn matches_golden_hybrid_r2() {
        check("hybrid-r2", "checkpoint.npz", "logits.npy");
    }

    #[test]
    fn matches_golden_hybrid_root() {
        check("hybrid-root", "checkpoint.npz", "logits.npy");
    }

    #[test]
    fn matches_golden_variants() {
        check(
            "vit-token-variants",
            "opt-target-prefix.npz",
            "../vit-token/logits.npy",
        );
        check(
            "vit-token-variants",
            "compressed.npz",
            "../vit-token/logits.npy",
        );
        check("vit-token-variants", "bfloat16.npz", "bfloat16_logits.npy");
    }

    #[test]
    fn resized_posembed_matches_vit_jax() {
        let model = open(&fixture("vit-token/checkpoint.npz")).expect("opens");
        let pos = model.pos_embedding(6).expect("resizes");
        let diff = max_abs(
            &pos,
            &npy("vit-token/resized_96_pos_embedding.npy").reshape([1, 37, 64]),
        );
        assert!(
            diff <= GOLDEN_TOLERANCE,
            "resized position embedding differs by {diff}"
        );
        let out = model
            .forward(&npy("vit-token/resized_96_input.npy"), 6)
            .expect("forward runs");
        let diff = max_abs(
            &out.logits.expect("head"),
            &npy("vit-token/resized_96_logits.npy"),
        );
        assert!(diff <= GOLDEN_TOLERANCE, "resized logits differ by {diff}");
    }

    #[test]
    fn reads_the_architecture_from_shapes() {
        let model = open(&fixture("hybrid-r2/checkpoint.npz")).expect("opens");
        let a = model.arch();
        assert_eq!(
            (
                a.image_size,
                a.patch_size,
                a.grid,
                a.hidden,
                a.depth,
                a.heads
            ),
            (64, 1, 8, 64, 2, 4)
        );
        assert_eq!(
            a.resnet,
            Some(ResNetArch {
                width: 64,
                stages: vec![1, 1]
            })
        );
        let model = open(&fixture("vit-prelogits/checkpoint.npz")).expect("opens");
        assert_eq!(model.arch().representation, Some(40));
        assert_eq!(model.arch().num_classes, Some(21));
    }

    #[test]
    fn a_missing_source_is_an_error() {
        let Err(err) = super::super::Reference::open(
            &fixture("nope/checkpoint.npz"),
            Device::Cpu,
            &super::super::SourceOptions::default(),
        ) else {
            panic!("a missing file opened");
        };
        assert!(err.to_string().contains("not found"), "{err}");
    }
}
