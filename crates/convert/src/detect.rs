//! Recognises a checkpoint family from its keys and shapes alone (never the file name) and reads the architecture off the shapes.
//!
//! The vit_jax family (google-research/vision_transformer `.npz`) is the conversion source and is checked
//! completely: every tensor must be accounted for and every shape must agree with the others. The other
//! families (timm, transformers, open_clip, OpenAI CLIP) are recognised for `inspect` only.
//! New sources (big_vision's `params/` prefix with depth-stacked blocks and a MAP head, two-tower SigLIP/LiT)
//! belong here as further [`Family`] variants with their own naming struct beside [`JaxNames`].

use std::collections::{BTreeMap, BTreeSet};

use vitconv_tensors::TensorInfo;

use crate::arch::{Arch, Classifier, ResNet};
use crate::error::{Error, Result};

/// A checkpoint family, i.e. a naming and storage convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// google-research/vision_transformer `.npz` (flax, `/`-joined keys).
    VitJax,
    /// timm `VisionTransformer` state dict.
    Timm,
    /// Hugging Face transformers `ViTModel` / `ViTForImageClassification`.
    Transformers,
    /// open_clip `VisionTransformer` (`visual.*`), recognised by its missing `ln_pre`.
    OpenClip,
    /// OpenAI CLIP `model.visual` (`visual.*` with `ln_pre`; open_clip files with `ln_pre` look the same).
    OpenAiClip,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::VitJax => "vit_jax",
            Family::Timm => "timm",
            Family::Transformers => "transformers",
            Family::OpenClip => "open_clip",
            Family::OpenAiClip => "openai_clip",
        }
    }
}

/// Which flax module names the encoder blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStyle {
    /// The published 2020-2021 files: `LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`.
    PreLinen,
    /// Files written by the linen port: `LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`.
    Linen,
}

/// The two LayerNorms of a pre-norm encoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockNorm {
    /// Before attention (timm `norm1`).
    Attention,
    /// Before the MLP (timm `norm2`).
    Mlp,
}

/// The attention projections of a vit_jax block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    Query,
    Key,
    Value,
    Out,
}

impl Proj {
    fn as_str(self) -> &'static str {
        match self {
            Proj::Query => "query",
            Proj::Key => "key",
            Proj::Value => "value",
            Proj::Out => "out",
        }
    }
}

/// Where each parameter lives in a vit_jax-family file: the prefix and the block naming style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JaxNames {
    /// `""` or `"opt/target/"`.
    pub prefix: String,
    pub style: BlockStyle,
}

impl JaxNames {
    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }
    pub fn embed_kernel(&self) -> String {
        self.key("embedding/kernel")
    }
    pub fn embed_bias(&self) -> String {
        self.key("embedding/bias")
    }
    pub fn cls(&self) -> String {
        self.key("cls")
    }
    pub fn pos_embed(&self) -> String {
        self.key("Transformer/posembed_input/pos_embedding")
    }
    /// `p` is `scale` or `bias`.
    pub fn encoder_norm(&self, p: &str) -> String {
        self.key(&format!("Transformer/encoder_norm/{p}"))
    }
    /// `p` is `scale` or `bias`.
    pub fn block_norm(&self, i: usize, which: BlockNorm, p: &str) -> String {
        let n = match (which, self.style) {
            (BlockNorm::Attention, _) => 0,
            (BlockNorm::Mlp, BlockStyle::PreLinen) => 2,
            (BlockNorm::Mlp, BlockStyle::Linen) => 1,
        };
        self.key(&format!("Transformer/encoderblock_{i}/LayerNorm_{n}/{p}"))
    }
    /// `p` is `kernel` or `bias`.
    pub fn attn(&self, i: usize, proj: Proj, p: &str) -> String {
        let n = match self.style {
            BlockStyle::PreLinen => 1,
            BlockStyle::Linen => 0,
        };
        self.key(&format!(
            "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_{n}/{}/{p}",
            proj.as_str()
        ))
    }
    /// `layer` is 0 (hidden -> mlp) or 1 (mlp -> hidden); `p` is `kernel` or `bias`.
    pub fn mlp(&self, i: usize, layer: usize, p: &str) -> String {
        let n = match self.style {
            BlockStyle::PreLinen => 3,
            BlockStyle::Linen => 0,
        };
        self.key(&format!(
            "Transformer/encoderblock_{i}/MlpBlock_{n}/Dense_{layer}/{p}"
        ))
    }
    pub fn pre_logits(&self, p: &str) -> String {
        self.key(&format!("pre_logits/{p}"))
    }
    pub fn head(&self, p: &str) -> String {
        self.key(&format!("head/{p}"))
    }
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

/// A recognised vit_jax checkpoint: how to find its tensors and what they build.
#[derive(Debug, Clone)]
pub struct JaxSource {
    pub names: JaxNames,
    pub arch: Arch,
    /// Every tensor of the file with its shape, for the mappings' completeness check.
    pub shapes: BTreeMap<String, Vec<usize>>,
}

impl JaxSource {
    /// The shape of a tensor the detector has already checked to exist.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }
}

/// Prefixes under which published files keep the vit_jax tree.
const JAX_PREFIXES: &[&str] = &["", "opt/target/"];

/// Prefixes of sources recognised but not converted yet, with what they are.
const KNOWN_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "params/img/embedding/kernel",
        "a big_vision two-tower (SigLIP/LiT) checkpoint",
    ),
    (
        "params/embedding/kernel",
        "a big_vision ViT checkpoint (params/ prefix)",
    ),
];

/// A key -> shape view with bookkeeping of what detection has accounted for.
struct Keys<'a> {
    shapes: BTreeMap<&'a str, &'a [usize]>,
    used: BTreeSet<String>,
    recognised: String,
}

impl<'a> Keys<'a> {
    fn new(tensors: &'a [TensorInfo]) -> Self {
        let shapes = tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        Keys {
            shapes,
            used: BTreeSet::new(),
            recognised: "vit_jax checkpoint".to_string(),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// The shape of a tensor that must be there; marks it used.
    fn need(&mut self, name: &str, what: &str) -> Result<&'a [usize]> {
        match self.shapes.get(name) {
            Some(s) => {
                self.used.insert(name.to_string());
                Ok(*s)
            }
            None => Err(Error::Inconsistent {
                recognised: self.recognised.clone(),
                problem: format!("tensor {name} ({what}) is missing"),
            }),
        }
    }

    /// A tensor that must have exactly `expected` as its shape.
    fn need_shape(&mut self, name: &str, expected: &[usize], why: &str) -> Result<()> {
        let found = self.need(name, why)?;
        if found != expected {
            return Err(Error::Shape {
                name: name.to_string(),
                expected: format!("{expected:?}"),
                found: found.to_vec(),
                why: why.to_string(),
            });
        }
        Ok(())
    }

    /// A GroupNorm parameter: `(C,)` or `(1, 1, 1, C)` as the 2020 hybrid releases stored them.
    fn need_gn(&mut self, name: &str, channels: usize) -> Result<()> {
        let found = self.need(name, "GroupNorm parameter")?;
        if found != [channels] && found != [1, 1, 1, channels] {
            return Err(Error::Shape {
                name: name.to_string(),
                expected: format!("[{channels}] or [1, 1, 1, {channels}]"),
                found: found.to_vec(),
                why: "GroupNorm parameter of the preceding convolution".to_string(),
            });
        }
        Ok(())
    }
}

fn dims<const N: usize>(
    name: &str,
    shape: &[usize],
    expected: &str,
    why: &str,
) -> Result<[usize; N]> {
    shape.try_into().map_err(|_| Error::Shape {
        name: name.to_string(),
        expected: expected.to_string(),
        found: shape.to_vec(),
        why: why.to_string(),
    })
}

/// Recognises a google-research/vision_transformer checkpoint and checks every shape against the others.
pub fn detect_vit_jax(tensors: &[TensorInfo]) -> Result<JaxSource> {
    let mut keys = Keys::new(tensors);
    let Some(prefix) = JAX_PREFIXES
        .iter()
        .find(|p| keys.has(&format!("{p}embedding/kernel")))
    else {
        if let Some((_, what)) = KNOWN_UNSUPPORTED.iter().find(|(k, _)| keys.has(k)) {
            return Err(Error::Unrecognised {
                recognised: (*what).to_string(),
                missing: "vitconv converts google-research/vision_transformer files only so far"
                    .to_string(),
            });
        }
        let family = detect_torch_family(tensors).map(|(f, _, _)| f.as_str());
        return Err(Error::Unrecognised {
            recognised: match family {
                Some(f) => format!("a {f} checkpoint, which is already a PyTorch layout"),
                None => format!("{} tensors of no known layout", tensors.len()),
            },
            missing: "no embedding/kernel (looked under no prefix and under opt/target/)"
                .to_string(),
        });
    };
    if let Some(t) = tensors.iter().find(|t| !t.dtype.is_float()) {
        return Err(Error::NotFloat {
            name: t.name.clone(),
            dtype: t.dtype.to_string(),
        });
    }
    let mut names = JaxNames {
        prefix: (*prefix).to_string(),
        style: BlockStyle::PreLinen,
    };
    if !prefix.is_empty() {
        keys.recognised = format!("vit_jax checkpoint under {prefix}");
    }

    // Patch embedding: HWIO kernel [p, p, in, D].
    let ek = names.embed_kernel();
    let [ph, pw, in_chans, hidden] = dims(
        &ek,
        keys.need(&ek, "patch embedding")?,
        "[p, p, in, hidden]",
        "HWIO patch kernel",
    )?;
    if ph != pw || ph == 0 || hidden == 0 {
        return Err(Error::Shape {
            name: ek,
            expected: "[p, p, in, hidden] with a square, non-empty patch".to_string(),
            found: vec![ph, pw, in_chans, hidden],
            why: "vitconv converts square patches".to_string(),
        });
    }
    keys.need_shape(&names.embed_bias(), &[hidden], "patch embedding bias")?;

    let resnet = detect_resnet(&mut keys, &names, in_chans)?;

    // Encoder blocks: count them, then pick the naming style from block 0.
    let depth = (0..)
        .take_while(|i| keys.has(&names.block_norm(*i, BlockNorm::Attention, "scale")))
        .count();
    if depth == 0 {
        return Err(Error::Inconsistent {
            recognised: keys.recognised.clone(),
            problem: format!(
                "no encoder blocks ({} is missing)",
                names.block_norm(0, BlockNorm::Attention, "scale")
            ),
        });
    }
    let linen = JaxNames {
        style: BlockStyle::Linen,
        ..names.clone()
    };
    if !keys.has(&names.attn(0, Proj::Query, "kernel"))
        && keys.has(&linen.attn(0, Proj::Query, "kernel"))
    {
        names = linen;
    }
    let qk = names.attn(0, Proj::Query, "kernel");
    let [_, heads, head_dim] = dims(
        &qk,
        keys.need(&qk, "attention query")?,
        "[hidden, heads, head_dim]",
        "query kernel",
    )?;
    if heads.checked_mul(head_dim) != Some(hidden) {
        return Err(Error::Shape {
            name: qk,
            expected: format!("[{hidden}, heads, head_dim] with heads x head_dim = {hidden}"),
            found: vec![hidden, heads, head_dim],
            why: "the attention must cover the hidden width".to_string(),
        });
    }
    let d0 = names.mlp(0, 0, "kernel");
    let [_, mlp] = dims(
        &d0,
        keys.need(&d0, "MLP input dense")?,
        "[hidden, mlp]",
        "MLP kernel",
    )?;
    for i in 0..depth {
        for which in [BlockNorm::Attention, BlockNorm::Mlp] {
            for p in ["scale", "bias"] {
                keys.need_shape(&names.block_norm(i, which, p), &[hidden], "block LayerNorm")?;
            }
        }
        for proj in [Proj::Query, Proj::Key, Proj::Value] {
            keys.need_shape(
                &names.attn(i, proj, "kernel"),
                &[hidden, heads, head_dim],
                "q/k/v kernel [D, H, Dh]",
            )?;
            keys.need_shape(
                &names.attn(i, proj, "bias"),
                &[heads, head_dim],
                "q/k/v bias [H, Dh]",
            )?;
        }
        keys.need_shape(
            &names.attn(i, Proj::Out, "kernel"),
            &[heads, head_dim, hidden],
            "out kernel [H, Dh, D]",
        )?;
        keys.need_shape(&names.attn(i, Proj::Out, "bias"), &[hidden], "out bias")?;
        keys.need_shape(
            &names.mlp(i, 0, "kernel"),
            &[hidden, mlp],
            "MLP kernel [D, M]",
        )?;
        keys.need_shape(&names.mlp(i, 0, "bias"), &[mlp], "MLP bias")?;
        keys.need_shape(
            &names.mlp(i, 1, "kernel"),
            &[mlp, hidden],
            "MLP kernel [M, D]",
        )?;
        keys.need_shape(&names.mlp(i, 1, "bias"), &[hidden], "MLP bias")?;
    }
    for p in ["scale", "bias"] {
        keys.need_shape(&names.encoder_norm(p), &[hidden], "encoder_norm")?;
    }

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
    let side = isqrt(cells);
    if one != 1 || pe_d != hidden || side == 0 || side * side != cells {
        return Err(Error::Shape {
            name: pe,
            expected: format!(
                "[1, {}s^2, {hidden}] for a square s x s grid",
                if prefix_rows == 1 { "1 + " } else { "" }
            ),
            found: vec![one, rows, pe_d],
            why: format!(
                "{} so the grid is {cells} cells, which is not a square",
                if prefix_rows == 1 {
                    "the file has a class token"
                } else {
                    "the file has no class token (gap)"
                }
            ),
        });
    }

    // Optional pre_logits (dense + tanh) and head.
    let representation = if keys.has(&names.pre_logits("kernel")) {
        let pk = names.pre_logits("kernel");
        let [_, r] = dims(
            &pk,
            keys.need(&pk, "pre_logits")?,
            "[hidden, representation]",
            "pre_logits kernel",
        )?;
        keys.need_shape(&pk, &[hidden, r], "pre_logits kernel [D, R]")?;
        keys.need_shape(&names.pre_logits("bias"), &[r], "pre_logits bias")?;
        Some(r)
    } else {
        None
    };
    let num_classes = if keys.has(&names.head("kernel")) || keys.has(&names.head("bias")) {
        let hk = names.head("kernel");
        let [_, c] = dims(
            &hk,
            keys.need(&hk, "head")?,
            "[features, classes]",
            "head kernel",
        )?;
        keys.need_shape(
            &hk,
            &[representation.unwrap_or(hidden), c],
            "head kernel [features, classes]",
        )?;
        keys.need_shape(&names.head("bias"), &[c], "head bias")?;
        Some(c)
    } else {
        None
    };

    if let Some(t) = tensors.iter().find(|t| !keys.used.contains(&t.name)) {
        return Err(Error::Unmapped {
            name: t.name.clone(),
            shape: t.shape.clone(),
            recognised: keys.recognised,
        });
    }
    let arch = Arch {
        patch: ph,
        in_chans,
        hidden,
        heads: Some(heads),
        mlp,
        depth,
        grid: (side, side),
        classifier,
        num_classes,
        representation,
        resnet,
    };
    let shapes = tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    Ok(JaxSource {
        names,
        arch,
        shapes,
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
        return Err(Error::Shape {
            name: root,
            expected: "[7, 7, in, width]".to_string(),
            found: vec![kh, kw, cin, width],
            why: "the BiT root is a 7x7 convolution".to_string(),
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
        let f = width
            .checked_shl(u32::try_from(s - 1).unwrap_or(u32::MAX))
            .filter(|f| f >> (s - 1) == width);
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
        return Err(Error::Inconsistent {
            recognised: keys.recognised.clone(),
            problem: format!(
                "the stem ends with {} channels (stages {:?}, width {width}) but {} reads {embed_in}",
                resnet.out_channels(),
                resnet.stages,
                names.embed_kernel()
            ),
        });
    }
    Ok(Some(resnet))
}

/// Integer square root (floor) without floating point.
fn isqrt(n: usize) -> usize {
    let mut x = (n as f64).sqrt() as usize;
    while x.checked_mul(x).is_some_and(|v| v > n) {
        x -= 1;
    }
    while (x + 1).checked_mul(x + 1).is_some_and(|v| v <= n) {
        x += 1;
    }
    x
}

/// Recognises any known family and its architecture, for `inspect`.
pub fn summarize_family(tensors: &[TensorInfo]) -> Option<(Family, Arch, Vec<String>)> {
    if let Ok(src) = detect_vit_jax(tensors) {
        let mut notes = Vec::new();
        if !src.names.prefix.is_empty() {
            notes.push(format!(
                "keys under the {} prefix (a training checkpoint)",
                src.names.prefix
            ));
        }
        if src.names.style == BlockStyle::Linen {
            notes.push(
                "linen block names (MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0)"
                    .to_string(),
            );
        }
        return Some((Family::VitJax, src.arch, notes));
    }
    detect_torch_family(tensors)
}

/// Recognises the PyTorch layouts (everything but the vit_jax source).
fn detect_torch_family(tensors: &[TensorInfo]) -> Option<(Family, Arch, Vec<String>)> {
    let shapes: BTreeMap<&str, &[usize]> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    detect_timm(&shapes)
        .or_else(|| detect_hf(&shapes))
        .or_else(|| detect_clip(&shapes, "visual."))
        .or_else(|| detect_clip(&shapes, ""))
}

type Shapes<'a> = BTreeMap<&'a str, &'a [usize]>;

fn get<'a>(s: &Shapes<'a>, k: &str) -> Option<&'a [usize]> {
    s.get(k).copied()
}

fn count_blocks(s: &Shapes<'_>, f: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|i| s.contains_key(f(*i).as_str())).count()
}

/// Grid side from position-embedding rows, given the number of prefix (class) rows.
fn grid_side(rows: usize, prefix: usize) -> Option<usize> {
    let cells = rows.checked_sub(prefix)?;
    let side = isqrt(cells);
    (side > 0 && side * side == cells).then_some(side)
}

fn detect_timm(s: &Shapes<'_>) -> Option<(Family, Arch, Vec<String>)> {
    let &[hidden, in_chans, patch, _] = get(s, "patch_embed.proj.weight")? else {
        return None;
    };
    let depth = count_blocks(s, |i| format!("blocks.{i}.attn.qkv.weight"));
    if depth == 0 {
        return None;
    }
    let &[mlp, _] = get(s, "blocks.0.mlp.fc1.weight")? else {
        return None;
    };
    let cls = s.contains_key("cls_token");
    let &[_, rows, _] = get(s, "pos_embed")? else {
        return None;
    };
    let side = grid_side(rows, usize::from(cls))?;
    let num_classes = get(s, "head.weight").and_then(|h| h.first().copied());
    let resnet = if s.contains_key("patch_embed.backbone.stem.conv.weight") {
        let width = get(s, "patch_embed.backbone.stem.conv.weight")?
            .first()
            .copied()?;
        let stages = (0..)
            .map(|st| {
                count_blocks(s, |b| {
                    format!("patch_embed.backbone.stages.{st}.blocks.{b}.conv1.weight")
                })
            })
            .take_while(|n| *n > 0)
            .collect();
        Some(ResNet { stages, width })
    } else {
        get(s, "patch_embed.backbone.conv.weight")
            .and_then(|w| w.first().copied())
            .map(|width| ResNet {
                stages: vec![],
                width,
            })
    };
    let arch = Arch {
        patch,
        in_chans,
        hidden,
        heads: None,
        mlp,
        depth,
        grid: (side, side),
        classifier: if cls {
            Classifier::Token
        } else {
            Classifier::Gap
        },
        num_classes,
        representation: None,
        resnet,
    };
    Some((Family::Timm, arch, vec![]))
}

fn detect_hf(s: &Shapes<'_>) -> Option<(Family, Arch, Vec<String>)> {
    let p = if s.contains_key("vit.embeddings.cls_token") {
        "vit."
    } else {
        ""
    };
    let &[hidden, in_chans, patch, _] = get(
        s,
        &format!("{p}embeddings.patch_embeddings.projection.weight"),
    )?
    else {
        return None;
    };
    let &[_, rows, _] = get(s, &format!("{p}embeddings.position_embeddings"))? else {
        return None;
    };
    let side = grid_side(rows, 1)?;
    // transformers 5 names blocks `layers.N.mlp.fc1`; earlier releases `encoder.layer.N.intermediate.dense`.
    let new = count_blocks(s, |i| format!("{p}layers.{i}.mlp.fc1.weight"));
    let old = count_blocks(s, |i| {
        format!("{p}encoder.layer.{i}.intermediate.dense.weight")
    });
    let (depth, fc1) = if new > 0 {
        (new, format!("{p}layers.0.mlp.fc1.weight"))
    } else {
        (old, format!("{p}encoder.layer.0.intermediate.dense.weight"))
    };
    if depth == 0 {
        return None;
    }
    let &[mlp, _] = get(s, &fc1)? else {
        return None;
    };
    let arch = Arch {
        patch,
        in_chans,
        hidden,
        heads: None,
        mlp,
        depth,
        grid: (side, side),
        classifier: Classifier::Token,
        num_classes: get(s, "classifier.weight").and_then(|h| h.first().copied()),
        representation: get(s, &format!("{p}pooler.dense.weight")).and_then(|h| h.first().copied()),
        resnet: None,
    };
    let mut notes = vec![];
    if arch.representation.is_some() {
        notes.push("the pooler (dense + tanh) plays the role of pre_logits".to_string());
    }
    Some((Family::Transformers, arch, notes))
}

fn detect_clip(s: &Shapes<'_>, p: &str) -> Option<(Family, Arch, Vec<String>)> {
    let &[hidden, in_chans, patch, _] = get(s, &format!("{p}conv1.weight"))? else {
        return None;
    };
    let &[rows, _] = get(s, &format!("{p}positional_embedding"))? else {
        return None;
    };
    get(s, &format!("{p}class_embedding"))?;
    let side = grid_side(rows, 1)?;
    let depth = count_blocks(s, |i| {
        format!("{p}transformer.resblocks.{i}.attn.in_proj_weight")
    });
    if depth == 0 {
        return None;
    }
    let &[mlp, _] = get(s, &format!("{p}transformer.resblocks.0.mlp.c_fc.weight"))? else {
        return None;
    };
    let family = if s.contains_key(format!("{p}ln_pre.weight").as_str()) {
        Family::OpenAiClip
    } else {
        Family::OpenClip
    };
    let mut notes = vec![];
    if let Some(&[_, out]) = get(s, &format!("{p}proj")) {
        notes.push(format!("projection: {hidden} -> {out} (proj, no bias)"));
    }
    if family == Family::OpenAiClip {
        notes.push(
            "ln_pre present: OpenAI CLIP's layout (open_clip models with ln_pre share it)"
                .to_string(),
        );
    }
    let arch = Arch {
        patch,
        in_chans,
        hidden,
        heads: None,
        mlp,
        depth,
        grid: (side, side),
        classifier: Classifier::Token,
        num_classes: None,
        representation: None,
        resnet: None,
    };
    Some((family, arch, notes))
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
        assert_eq!(Some(arch.image_size()), get("image"), "{what}: image size");
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
            let src =
                detect_vit_jax(&tensors).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_matches(&src.arch, &json["model"], &path.display().to_string());
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
            let src = detect_vit_jax(golden_file(case).tensors())
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_matches(&src.arch, &model, case);
            let want_prefix = if *case == "opt-target-prefix" {
                "opt/target/"
            } else {
                ""
            };
            assert_eq!(src.names.prefix, want_prefix, "{case}");
            assert_eq!(src.names.style, BlockStyle::PreLinen, "{case}");
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
        let src = detect_vit_jax(&linen).expect("linen names are recognised");
        assert_eq!(src.names.style, BlockStyle::Linen);
        let pre = detect_vit_jax(golden_file("vit-token").tensors()).expect("pre-linen");
        assert_eq!(src.arch, pre.arch);
        assert_eq!(
            src.names.mlp(1, 0, "kernel"),
            "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"
        );
    }

    fn err_text(tensors: &[TensorInfo]) -> String {
        match detect_vit_jax(tensors) {
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
        assert!(detect_vit_jax(golden_file("hybrid-r2").tensors()).is_ok());
        assert!(detect_vit_jax(golden_file("hybrid-root").tensors()).is_ok());
        let mut tensors = golden_file("hybrid-root").tensors().to_vec();
        tensors
            .iter_mut()
            .filter(|t| t.name == "gn_root/scale")
            .for_each(|t| t.shape = vec![1, 64]);
        assert!(err_text(&tensors).contains("gn_root/scale"));
    }

    #[test]
    fn other_families_are_named_not_converted() {
        let timm = vec![
            info("patch_embed.proj.weight", &[64, 3, 16, 16]),
            info("blocks.0.attn.qkv.weight", &[192, 64]),
        ];
        let e = err_text(&timm);
        assert!(e.contains("no embedding/kernel"), "{e}");
        let bv = vec![info("params/embedding/kernel", &[16, 16, 3, 64])];
        assert!(err_text(&bv).contains("big_vision"));
        assert!(crate::summarize(&[info("foo", &[1])]).is_none());
    }
}
