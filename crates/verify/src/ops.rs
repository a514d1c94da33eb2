//! Numeric building blocks both forwards use: norms, activations, attention, convolutions with TensorFlow-style SAME padding.
//!
//! These are plain arithmetic, not layouts: nothing here knows a key name or a
//! weight's storage order, so sharing them cannot hide a mapping bug. Every call
//! goes through libtorch's fallible (`f_`) API so that an unexpected failure is an
//! [`crate::Error`], never a panic.

use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// The GELU variant a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gelu {
    /// The tanh approximation (flax `nn.gelu`, timm `gelu_tanh`, transformers `gelu_pytorch_tanh`/`gelu_new`).
    Tanh,
    /// The exact erf form (PyTorch `nn.GELU()`, transformers `gelu`).
    Erf,
    /// OpenAI CLIP's `x * sigmoid(1.702 x)`.
    Quick,
}

impl Gelu {
    /// Parses the names used in `vitconv.config` (`tanh`, `erf`, `quick`).
    pub fn from_config(name: &str) -> Option<Gelu> {
        match name {
            "tanh" => Some(Gelu::Tanh),
            "erf" | "exact" => Some(Gelu::Erf),
            "quick" | "quick_gelu" => Some(Gelu::Quick),
            _ => None,
        }
    }

    /// Applies this GELU to `x`, element by element.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Gelu::Tanh => x.f_gelu("tanh")?,
            Gelu::Erf => x.f_gelu("none")?,
            Gelu::Quick => x.f_mul(&x.f_mul_scalar(1.702)?.f_sigmoid()?)?,
        })
    }
}

/// `x @ kernel + bias` with a flax-style `[in, out]` kernel.
pub fn dense_in_out(x: &Tensor, kernel: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.f_matmul(kernel)?;
    Ok(match bias {
        Some(b) => y.f_add(b)?,
        None => y,
    })
}

/// `x @ weight.T + bias` with a PyTorch-style `[out, in]` weight.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(x.f_linear(weight, bias)?)
}

/// LayerNorm over the last axis.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let d = *x.size().last().unwrap_or(&1);
    Ok(x.f_layer_norm([d], Some(weight), Some(bias), eps, false)?)
}

/// LayerNorm computed in float32 whatever the input's precision, as OpenAI CLIP's
/// `LayerNorm` subclass does (clip/model.py), then cast back.
pub fn layer_norm_fp32(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let kind = x.kind();
    let y = layer_norm(
        &x.f_to_kind(Kind::Float)?,
        &weight.f_to_kind(Kind::Float)?,
        &bias.f_to_kind(Kind::Float)?,
        eps,
    )?;
    Ok(y.f_to_kind(kind)?)
}

/// Softmax attention written out step by step, in float32 for the scores:
/// `softmax(q k^T / sqrt(d)) v` on `[B, H, N, Dh]` tensors, as flax's
/// `dot_product_attention` computes it (query divided by sqrt(depth) first).
pub fn attention_explicit(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attention_explicit_masked(q, k, v, None)
}

/// [`attention_explicit`] with flax's mask: where the boolean `mask` (broadcast to
/// `[B, H, Nq, Nk]`, true = attend) is false, the score is replaced by the most negative
/// float32 (`jnp.finfo(dtype).min`, as flax's `dot_product_attention_weights` does), so a
/// query whose keys are all masked attends uniformly instead of producing NaN.
pub fn attention_explicit_masked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let dh = *q.size().last().unwrap_or(&1);
    #[allow(clippy::cast_precision_loss)]
    let scale = 1.0 / (dh as f64).sqrt();
    let scores = q.f_mul_scalar(scale)?.f_matmul(&k.f_transpose(-2, -1)?)?;
    let scores = match mask {
        Some(m) => scores.f_masked_fill(
            &m.f_to_kind(Kind::Bool)?.f_logical_not()?,
            f64::from(f32::MIN),
        )?,
        None => scores,
    };
    let weights = scores.f_softmax(-1, Kind::Float)?.f_to_kind(v.kind())?;
    Ok(weights.f_matmul(v)?)
}

/// libtorch's fused `scaled_dot_product_attention` on `[B, H, N, Dh]`, the kernel that timm
/// (`fused_attn`), transformers (sdpa) and `nn.MultiheadAttention` run by default.
pub fn attention_sdpa(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_scaled_dot_product_attention::<Tensor>(
        q, k, v, None, 0.0, false, None, false,
    )?)
}

/// [`attention_sdpa`] with a padding mask as timm and transformers pass it: the boolean `mask`
/// (broadcast to `[B, H, Nq, Nk]`, true = attend) becomes an additive mask of 0 and the most
/// negative value of the query's dtype (`torch.finfo(dtype).min`), so fully masked rows stay finite.
pub fn attention_sdpa_masked(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let min = match q.kind() {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        _ => f64::from(f32::MIN),
    };
    let additive = Tensor::f_zeros(mask.size().as_slice(), (q.kind(), q.device()))?
        .f_masked_fill(&mask.f_to_kind(Kind::Bool)?.f_logical_not()?, min)?;
    Ok(Tensor::f_scaled_dot_product_attention::<Tensor>(
        q,
        k,
        v,
        Some(additive),
        0.0,
        false,
        None,
        false,
    )?)
}

/// [`attention_sdpa`] with libtorch's causal mask (`is_causal`): query i attends to keys 0..=i,
/// as an additive upper-triangular `-inf` mask does in `nn.MultiheadAttention`.
pub fn attention_sdpa_causal(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_scaled_dot_product_attention::<Tensor>(
        q, k, v, None, 0.0, true, None, false,
    )?)
}

/// A 2-D convolution (NCHW input, OIHW weight) with explicit symmetric padding.
///
/// On CUDA, cuDNN convolutions run in TF32 by default (`torch.backends.cudnn.allow_tf32`
/// is True), which rounds inputs to 10 mantissa bits and makes a float32 comparison
/// meaningless; there we call cuDNN with TF32 switched off explicitly.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: i64,
    padding: i64,
) -> Result<Tensor> {
    let use_cudnn = matches!(x.device(), Device::Cuda(_))
        && x.kind() == Kind::Float
        && tch::Cuda::cudnn_is_available();
    if use_cudnn {
        let y = x.f_cudnn_convolution(
            weight,
            [padding, padding],
            [stride, stride],
            [1, 1],
            1,
            false,
            true,
            false,
        )?;
        return Ok(match bias {
            Some(b) => y.f_add(&b.f_view([1, -1, 1, 1])?)?,
            None => y,
        });
    }
    Ok(x.f_conv2d(
        weight,
        bias,
        [stride, stride],
        [padding, padding],
        [1, 1],
        1,
    )?)
}

/// Pads an NCHW tensor the way TensorFlow's (and flax's) `SAME` does for a window `k`
/// and stride `s`: output size `ceil(n / s)`, total padding split with the extra row
/// and column at the bottom and right.
pub fn pad_same(x: &Tensor, k: i64, s: i64, value: f64) -> Result<Tensor> {
    let size = x.size();
    let (h, w) = match size.as_slice() {
        [_, _, h, w] => (*h, *w),
        _ => return Ok(x.shallow_clone()),
    };
    let total = |n: i64| -> i64 {
        let out = (n + s - 1) / s;
        ((out - 1) * s + k - n).max(0)
    };
    let (th, tw) = (total(h), total(w));
    if th == 0 && tw == 0 {
        return Ok(x.shallow_clone());
    }
    // torch pads the last axis first: [left, right, top, bottom].
    Ok(x.f_pad(
        [tw / 2, tw - tw / 2, th / 2, th - th / 2],
        "constant",
        Some(value),
    )?)
}

/// A convolution with TensorFlow-style SAME padding.
pub fn conv2d_same(x: &Tensor, weight: &Tensor, stride: i64) -> Result<Tensor> {
    let k = weight.size().last().copied().unwrap_or(1);
    let padded = pad_same(x, k, stride, 0.0)?;
    conv2d(&padded, weight, None, stride, 0)
}

/// Max-pooling 3x3 / 2 with SAME padding; padded cells hold -inf so they never win,
/// as in flax's `nn.max_pool(padding='SAME')` and timm's `MaxPool2dSame`.
pub fn max_pool_same(x: &Tensor, k: i64, s: i64) -> Result<Tensor> {
    let padded = pad_same(x, k, s, f64::NEG_INFINITY)?;
    Ok(padded.f_max_pool2d([k, k], [s, s], [0, 0], [1, 1], false)?)
}

/// GroupNorm on NCHW.
pub fn group_norm(
    x: &Tensor,
    groups: i64,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    Ok(x.f_group_norm(groups, Some(weight), Some(bias), eps, false)?)
}

/// Copies a tensor to the host as float64 values in C order (for the comparison metrics).
pub fn flat(x: &Tensor) -> Result<Vec<f64>> {
    let v = x
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(Vec::<f64>::try_from(&v)?)
}
