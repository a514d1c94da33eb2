//! The timm layout: `timm.models.vision_transformer.VisionTransformer` and its hybrid (ResNetV2 stem) form.
//!
//! Names and semantics follow timm 1.0.31: `vision_transformer.py` (`VisionTransformer`, `_load_weights` for the
//! npz mapping), `vision_transformer_hybrid.py` (`_resnetv2`: `StdConv2dSame`, `stem_type='same'`, `HybridEmbed`)
//! and `resnetv2.py` (non-pre-activation `Bottleneck`: `conv1..3`, `norm1..3`, `downsample.{conv,norm}`).
//! timm's `LayerNorm` defaults to eps 1e-6 like flax, so only the GELU (`act_layer`), the pooling and, for hybrids,
//! the GroupNorm eps (1e-6 in flax, 1e-5 in timm) need stating.

use serde_json::{json, Map, Value};

/// The LayerNorm epsilon timm's `VisionTransformer` and `NaFlexVit` build their norms with
/// (`partial(nn.LayerNorm, eps=1e-6)`).
pub const TIMM_LN_EPS: f64 = 1e-6;

use crate::arch::{Arch, Classifier, PatchEmbedKind, PosEmbKind, ResNet};
use crate::error::{Part, Result};
use crate::layout::prepared::{
    linear, mlp_ratio, norm_pair, py_float, BlockRole, BlockTable, MapRole, MapTable, Prepared,
};
use crate::layout::recognise::{count_blocks, get, grid_side, Recognised, Shapes};
use crate::model::{Norm, Param, Proj};
use crate::options::Gelu;
use crate::plan::OUTPUT_DIR_TOKEN;
use crate::plan::{Fetch, OutTensor, OutputKind, Plan, Recipe, SideFile};
use crate::record::DeclaredHead;

/// timm state-dict names (`{i}` = block index).
pub mod names {
    /// The class token.
    pub const CLS: &str = "cls_token";
    /// The position embedding.
    pub const POS: &str = "pos_embed";
    /// The weight of the patch embedding's convolution.
    pub const PATCH_W: &str = "patch_embed.proj.weight";
    /// The bias of the patch embedding's convolution.
    pub const PATCH_B: &str = "patch_embed.proj.bias";
    /// The weight of each block's LayerNorm before attention.
    pub const NORM1_W: &str = "blocks.{i}.norm1.weight";
    /// The bias of each block's LayerNorm before attention.
    pub const NORM1_B: &str = "blocks.{i}.norm1.bias";
    /// The weight of each block's fused query/key/value projection.
    pub const QKV_W: &str = "blocks.{i}.attn.qkv.weight";
    /// The bias of each block's fused query/key/value projection.
    pub const QKV_B: &str = "blocks.{i}.attn.qkv.bias";
    /// The weight of each block's attention output projection.
    pub const PROJ_W: &str = "blocks.{i}.attn.proj.weight";
    /// The bias of each block's attention output projection.
    pub const PROJ_B: &str = "blocks.{i}.attn.proj.bias";
    /// The weight of each block's LayerNorm before the MLP.
    pub const NORM2_W: &str = "blocks.{i}.norm2.weight";
    /// The bias of each block's LayerNorm before the MLP.
    pub const NORM2_B: &str = "blocks.{i}.norm2.bias";
    /// The weight of the first MLP layer of each block.
    pub const FC1_W: &str = "blocks.{i}.mlp.fc1.weight";
    /// The bias of the first MLP layer of each block.
    pub const FC1_B: &str = "blocks.{i}.mlp.fc1.bias";
    /// The weight of the second MLP layer of each block.
    pub const FC2_W: &str = "blocks.{i}.mlp.fc2.weight";
    /// The bias of the second MLP layer of each block.
    pub const FC2_B: &str = "blocks.{i}.mlp.fc2.bias";
    /// The weight of the final LayerNorm.
    pub const NORM_W: &str = "norm.weight";
    /// The bias of the final LayerNorm.
    pub const NORM_B: &str = "norm.bias";
    /// The weight of the classification head.
    pub const HEAD_W: &str = "head.weight";
    /// The bias of the classification head.
    pub const HEAD_B: &str = "head.bias";
    /// ResNetV2 with stages: the root lives in `stem`; root-only stems are the `Sequential` itself.
    pub const STEM: &str = "patch_embed.backbone.stem.";
    /// The prefix of a root-only stem's root, which is the `Sequential` itself.
    pub const ROOT_ONLY: &str = "patch_embed.backbone.";
    /// `{s}`/`{u}` are 0-based stage and block.
    pub const UNIT: &str = "patch_embed.backbone.stages.{s}.blocks.{u}.";
}

/// One `blocks.{i}` of timm's `VisionTransformer` (`Block`: `norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1/fc2`).
pub const BLOCK: &BlockTable = &[
    (names::NORM1_W, BlockRole::Norm1Scale),
    (names::NORM1_B, BlockRole::Norm1Bias),
    (names::QKV_W, BlockRole::QkvWeight),
    (names::QKV_B, BlockRole::QkvBias),
    (names::PROJ_W, BlockRole::Weight(Proj::Out)),
    (names::PROJ_B, BlockRole::Bias(Proj::Out)),
    (names::NORM2_W, BlockRole::Norm2Scale),
    (names::NORM2_B, BlockRole::Norm2Bias),
    (names::FC1_W, BlockRole::Fc1Weight),
    (names::FC1_B, BlockRole::Fc1Bias),
    (names::FC2_W, BlockRole::Fc2Weight),
    (names::FC2_B, BlockRole::Fc2Bias),
];

/// timm's `attn_pool` (`AttentionPoolLatent`, `global_pool='map'`): the learned query `latent`, `q` and a fused
/// `kv` (k then v), `proj`, then `x + mlp(norm(x))`; no q/k norm, the encoder's heads and MLP ratio.
pub const ATTN_POOL: &MapTable = &[
    ("attn_pool.latent", MapRole::Probe),
    ("attn_pool.q.weight", MapRole::Weight(Proj::Query)),
    ("attn_pool.q.bias", MapRole::Bias(Proj::Query)),
    ("attn_pool.kv.weight", MapRole::KvWeight),
    ("attn_pool.kv.bias", MapRole::KvBias),
    ("attn_pool.proj.weight", MapRole::Weight(Proj::Out)),
    ("attn_pool.proj.bias", MapRole::Bias(Proj::Out)),
    ("attn_pool.norm.weight", MapRole::NormScale),
    ("attn_pool.norm.bias", MapRole::NormBias),
    ("attn_pool.mlp.fc1.weight", MapRole::Fc1Weight),
    ("attn_pool.mlp.fc1.bias", MapRole::Fc1Bias),
    ("attn_pool.mlp.fc2.weight", MapRole::Fc2Weight),
    ("attn_pool.mlp.fc2.bias", MapRole::Fc2Bias),
];

/// Registered plain ViTs (timm 1.0.31): name, patch, hidden, depth, heads, mlp, image size.
const REGISTERED: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
    ("vit_tiny_patch16_224", 16, 192, 12, 3, 768, 224),
    ("vit_tiny_patch16_384", 16, 192, 12, 3, 768, 384),
    ("vit_small_patch32_224", 32, 384, 12, 6, 1536, 224),
    ("vit_small_patch32_384", 32, 384, 12, 6, 1536, 384),
    ("vit_small_patch16_224", 16, 384, 12, 6, 1536, 224),
    ("vit_small_patch16_384", 16, 384, 12, 6, 1536, 384),
    ("vit_small_patch8_224", 8, 384, 12, 6, 1536, 224),
    ("vit_base_patch32_224", 32, 768, 12, 12, 3072, 224),
    ("vit_base_patch32_384", 32, 768, 12, 12, 3072, 384),
    ("vit_base_patch16_224", 16, 768, 12, 12, 3072, 224),
    ("vit_base_patch16_384", 16, 768, 12, 12, 3072, 384),
    ("vit_base_patch8_224", 8, 768, 12, 12, 3072, 224),
    ("vit_large_patch32_224", 32, 1024, 24, 16, 4096, 224),
    ("vit_large_patch32_384", 32, 1024, 24, 16, 4096, 384),
    ("vit_large_patch16_224", 16, 1024, 24, 16, 4096, 224),
    ("vit_large_patch16_384", 16, 1024, 24, 16, 4096, 384),
    ("vit_huge_patch14_224", 14, 1280, 32, 16, 5120, 224),
];

/// GroupNorm eps of the flax ResNet stem (`nn.GroupNorm` default).
const FLAX_GN_EPS: f64 = 1e-6;
/// flax's `StdConv` (vit_jax `models_resnet.weight_standardize`) adds this to the standard deviation.
const FLAX_STDCONV_EPS: f64 = 1e-5;
/// timm's `_resnetv2` standardises kernels with this eps (`partial(StdConv2dSame, eps=1e-8)`).
const TIMM_STDCONV_EPS: f64 = 1e-8;

/// The metadata of a timm output, `VisionTransformer` or `NaFlexVit`: the record it declares (flax's GELU and
/// eps, no `ln_pre`, the head kept or none), the keyword arguments it is built with and its `pretrained_cfg`.
pub(crate) fn metadata(
    prep: &Prepared<'_>,
    source_name: &str,
    classes: usize,
    kwargs: &Value,
    pretrained_cfg: &Value,
) -> std::collections::BTreeMap<String, String> {
    let head = if classes > 0 {
        DeclaredHead::Head
    } else {
        DeclaredHead::None
    };
    let config = prep.config(head, None);
    let mut meta = prep.metadata(source_name, &config);
    meta.insert(crate::meta::TIMM_KWARGS.to_string(), kwargs.to_string());
    meta.insert(
        crate::meta::TIMM_PRETRAINED_CFG.to_string(),
        pretrained_cfg.to_string(),
    );
    meta
}

/// timm's `act_layer` name for the GELU the output is built with.
pub(crate) fn act_layer(gelu: Gelu) -> &'static str {
    match gelu {
        Gelu::Tanh => "gelu_tanh",
        Gelu::Erf => "gelu",
    }
}

/// What follows the blocks in timm's `VisionTransformer` and `NaFlexVit` alike (the same names in both): the
/// final norm, the MAP head where there is one and the classification head where one is kept. Gives the head's
/// classes, 0 without one.
pub(crate) fn tail_tensors(prep: &Prepared<'_>, out: &mut Vec<OutTensor>) -> Result<usize> {
    // Every timm model written here builds its LayerNorms with timm's fixed eps; a tower computing another
    // cannot be declared through the kwargs (a `norm_layer` name would bring torch's 1e-5), so it is refused
    // before anything is named.
    prep.require_eps(
        "image",
        prep.semantics(),
        TIMM_LN_EPS,
        "timm's VisionTransformer and NaFlexVit build every LayerNorm with eps 1e-6 and take no other through their kwargs; use --layout hf, which declares layer_norm_eps",
    )?;
    let a = prep.arch();
    let tower = prep.tower();
    let d = a.hidden;
    // With fc_norm=False timm applies `norm` to every token before pooling, like flax's encoder_norm.
    out.extend(norm_pair(
        &tower.final_norm,
        d,
        names::NORM_W,
        names::NORM_B,
    ));
    if let Some(map) = prep.map_head()? {
        out.extend(prep.map_tensors(ATTN_POOL, "", map));
    }
    let classes = if prep.keep_head {
        a.num_classes.unwrap_or(0)
    } else {
        0
    };
    if let (true, Some(head)) = (classes > 0, &tower.head) {
        out.extend(linear(head, d, classes, names::HEAD_W, names::HEAD_B));
    }

    Ok(classes)
}

fn t(name: impl Into<String>, shape: Vec<usize>, recipe: Recipe) -> OutTensor {
    OutTensor {
        name: name.into(),
        shape,
        recipe,
    }
}

/// The timm `VisionTransformer` plan for a prepared source (a NaFlex tower goes to timm's `NaFlexVit`,
/// [`super::timm_naflex`]).
pub fn plan(prep: Prepared<'_>, _fetch: &dyn Fetch, source_name: &str) -> Result<Plan> {
    if let Some((grid, size)) = prep.naflex_grid() {
        return super::timm_naflex::plan(prep, grid, size, source_name);
    }
    let a = prep.arch().clone();
    if prep.has_pre_logits() {
        return Err(prep.refuse(
            Part::PreLogits {
                hidden: a.hidden,
                representation: a.representation.unwrap_or(0),
            },
            "timm's VisionTransformer has no representation layer; pass --drop-head for a feature extractor",
        ));
    }
    prep.check_input_norm()?;
    let ratio = mlp_ratio(&prep)?;
    let tower = prep.tower();
    let d = a.hidden;
    let mut out = Vec::new();
    if let Some(cls) = &tower.class_token {
        out.push(t(names::CLS, vec![1, 1, d], Recipe::Copy(cls.clone())));
    }
    // timm gives the class token a row of pos_embed unless `no_embed_class`, which is how big_vision's
    // class token (concatenated after the position embedding is added) is held.
    let embed_class = a.class_token() && a.class_pos;
    let (pos_rows, pos) = prep.pos_table(embed_class, false)?;
    out.push(t(names::POS, vec![1, pos_rows, d], pos));
    if let Some(stem) = &tower.stem {
        push_stem(stem, &mut out);
    }
    out.push(t(
        names::PATCH_W,
        vec![d, a.in_chans, a.patch, a.patch],
        prep.patch_kernel(),
    ));
    out.push(t(names::PATCH_B, vec![d], prep.patch_bias()));
    for (i, b) in tower.blocks.iter().enumerate() {
        out.extend(prep.block_tensors(BLOCK, "", i, b));
    }
    let classes = tail_tensors(&prep, &mut out)?;

    let act = act_layer(prep.gelu());
    let mut kw = Map::new();
    kw.insert("img_size".into(), json!(prep.image_size));
    kw.insert("patch_size".into(), json!(a.patch));
    kw.insert("embed_dim".into(), json!(d));
    kw.insert("depth".into(), json!(a.depth));
    kw.insert("num_heads".into(), json!(a.heads));
    kw.insert("mlp_ratio".into(), json!(ratio));
    kw.insert("num_classes".into(), json!(classes));
    let pool = match a.classifier {
        Classifier::Token => "token",
        Classifier::Gap => "avg",
        Classifier::Map => "map",
        // No pooling: timm's `forward_head` then applies `head` to every token (PaliGemma's projection).
        Classifier::None => "",
    };
    kw.insert("global_pool".into(), json!(pool));
    kw.insert("class_token".into(), json!(a.class_token()));
    if a.classifier == Classifier::Gap {
        // Average after `norm`, like flax's encoder_norm then mean, not timm's default fc_norm after it.
        kw.insert("fc_norm".into(), json!(false));
    }
    if a.class_token() && !embed_class {
        kw.insert("no_embed_class".into(), json!(true));
    }
    kw.insert("act_layer".into(), json!(act));
    let kwargs = Value::Object(kw.clone());
    let (pretrained_cfg_full, cfg_py) = pretrained_cfg(&prep, classes);
    let mut backbone_desc = None;
    let python = match &a.resnet {
        None => {
            let same_arch = |r: &&(&str, usize, usize, usize, usize, usize, usize)| {
                embed_class
                    && (r.1, r.2, r.3, Some(r.4), r.5) == (a.patch, d, a.depth, a.heads, a.mlp)
            };
            // Prefer the name registered at this resolution; otherwise the same architecture with img_size set.
            let registered = REGISTERED
                .iter()
                .filter(same_arch)
                .find(|r| r.6 == prep.image_size)
                .or_else(|| REGISTERED.iter().find(same_arch));
            match registered {
                Some(r) => {
                    let mut extra = format!("num_classes={classes}, act_layer='{act}'");
                    if r.6 != prep.image_size {
                        extra.push_str(&format!(", img_size={}", prep.image_size));
                    }
                    format!(
                        "import timm\nmodel = timm.create_model('{}', pretrained=False, {extra}, pretrained_cfg_overlay={cfg_py})",
                        r.0
                    )
                }
                None => format!(
                    "from timm.models.vision_transformer import VisionTransformer\nmodel = VisionTransformer({})\nmodel.pretrained_cfg = {cfg_py}",
                    py_kwargs(&kw)
                ),
            }
        }
        Some(r) => {
            let norm = format!(
                "functools.partial(GroupNormAct, num_groups=32, eps={})",
                py_float(FLAX_GN_EPS)
            );
            let conv = format!(
                "functools.partial(StdConv2dSame, eps={})",
                py_float(TIMM_STDCONV_EPS)
            );
            if r.width % 64 != 0 {
                return Err(prep.refuse(
                    Part::HybridStem { width: r.width },
                    "timm's ResNetV2 widths are multiples of 64 (width_factor)",
                ));
            }
            let wf = r.width / 64;
            let backbone = if r.stages.is_empty() {
                format!(
                    "backbone = create_resnetv2_stem(3, out_chs={}, stem_type='same', preact=False, conv_layer={conv}, norm_layer={norm})",
                    r.width
                )
            } else {
                let layers: Vec<String> = r.stages.iter().map(usize::to_string).collect();
                // A one-element Python tuple needs its trailing comma.
                let comma = if layers.len() == 1 { "," } else { "" };
                format!(
                    "backbone = ResNetV2(layers=({}{comma}), width_factor={wf}, num_classes=0, global_pool='', preact=False, stem_type='same', conv_layer={conv}, norm_layer={norm})",
                    layers.join(", ")
                )
            };
            backbone_desc = Some(json!({
                "class": if r.stages.is_empty() { "create_resnetv2_stem" } else { "ResNetV2" },
                "layers": r.stages,
                "width_factor": wf,
                "stem_chs": r.width,
                "stem_type": "same",
                "preact": false,
                "conv_layer": "StdConv2dSame",
                "conv_eps": TIMM_STDCONV_EPS,
                "norm_layer": "GroupNormAct",
                "num_groups": 32,
                "norm_eps": FLAX_GN_EPS,
            }));
            format!(
                "import functools\nfrom timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame\nfrom timm.models.resnetv2 import ResNetV2, create_resnetv2_stem\nfrom timm.models.vision_transformer import VisionTransformer\n{backbone}\nmodel = VisionTransformer(embed_layer=functools.partial(HybridEmbed, backbone=backbone), {})\nmodel.pretrained_cfg = {cfg_py}",
                py_kwargs(&kw)
            )
        }
    };
    let mut prep = prep;
    if a.resnet.is_some() {
        prep.notes.push(
            "StdConv: flax standardises with (w - mean) / (std + 1e-5), timm's StdConv2dSame with (w - mean) / sqrt(var + 1e-8); the stem's kernels are written as a * T (T flax's standardised kernel, a = sqrt(1e-8 / (1 - var(T)))), which timm standardises back to T exactly; the stem's GroupNorm is declared with flax's eps 1e-6"
                .to_string(),
        );
    }
    let mut meta = metadata(&prep, source_name, classes, &kwargs, &pretrained_cfg_full);
    let (kind, side) = match backbone_desc {
        Some(b) => {
            meta.insert(crate::meta::TIMM_BACKBONE.to_string(), b.to_string());
            // timm's registered hybrids build their ResNetV2 inside the entry point, with GroupNorm at its
            // default eps 1e-5 and fixed stages, which no config.json can change: a folder would load a
            // different function, so hybrids stay a weights file with the constructor printed above.
            (OutputKind::File, vec![])
        }
        None => {
            let folder = folder_config(&a, &kwargs, &pretrained_cfg_full, classes, prep.image_size);
            (
                OutputKind::FileOrFolder {
                    python: format!("import timm\nmodel = timm.create_model('local-dir:' + {OUTPUT_DIR_TOKEN}, pretrained=True)"),
                },
                vec![SideFile {
                    name: FOLDER_CONFIG.to_string(),
                    contents: folder,
                }],
            )
        }
    };
    let hybrid = a.resnet.is_some();
    let mut plan = prep.finish(kind, out, meta, python, side);
    if hybrid {
        plan.no_folder = Some("timm's registered hybrids build their ResNet stem inside the entry point (GroupNorm eps 1e-5, fixed stages), which no config.json can change, so a timm folder would load a different model; the exact route is the weights file with the constructor vitconv prints");
    }
    Ok(plan)
}

/// The source's preprocessing as timm's `pretrained_cfg`: the full one (with `--labels`' class names) for the
/// folder and the metadata, and a Python `dict(...)` without the names for the printed loader line (a thousand
/// names are no line to paste; the weights file's `vitconv.labels` holds them). For
/// `timm.data.resolve_model_data_config` + `create_transform`: the whole image squashed to `prep.image_size`
/// (no crop), bilinear as vit_jax's and big_vision's eval pipelines resize, pixels normalised with the source's
/// mean and std (or those --input-norm folded in).
pub(crate) fn pretrained_cfg(prep: &Prepared<'_>, classes: usize) -> (Value, String) {
    let cfg = json!({
        "input_size": [3, prep.image_size, prep.image_size],
        "interpolation": "bilinear",
        "mean": prep.norm.mean(),
        "std": prep.norm.std(),
        "num_classes": classes,
        "crop_pct": 1.0,
        "crop_mode": "squash",
    });
    let py = format!(
        "dict({})",
        cfg.as_object().map(py_kwargs).unwrap_or_default()
    );
    let mut full = cfg;
    if let (Some(labels), Value::Object(m)) = (prep.labels(), &mut full) {
        m.insert("label_names".into(), json!(labels));
    }
    (full, py)
}

/// Keyword arguments as Python writes them in a call: `k=v, ...`.
pub(crate) fn py_kwargs(map: &Map<String, Value>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", py_value(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The config file of a self-contained timm folder (`timm.create_model('local-dir:DIR', pretrained=True)`
/// reads it and `model.safetensors` beside it).
pub const FOLDER_CONFIG: &str = "config.json";

/// A timm folder's `config.json`: the registered architecture whose sizes match (or the closest one), with
/// `model_args` giving every size and switch exactness needs, so that the one loader line builds the exact
/// model; `pretrained_cfg` holds the preprocessing.
fn folder_config(
    a: &Arch,
    kwargs: &Value,
    pretrained_cfg: &Value,
    classes: usize,
    image_size: usize,
) -> String {
    let exact = |r: &&(&str, usize, usize, usize, usize, usize, usize)| {
        (r.1, r.2, r.3, Some(r.4), r.5) == (a.patch, a.hidden, a.depth, a.heads, a.mlp)
    };
    let closest = REGISTERED
        .iter()
        .filter(exact)
        .find(|r| r.6 == image_size)
        .or_else(|| REGISTERED.iter().find(exact))
        .or_else(|| {
            REGISTERED.iter().min_by_key(|r| {
                (
                    r.1 != a.patch,
                    r.2.abs_diff(a.hidden),
                    r.3.abs_diff(a.depth),
                )
            })
        })
        .map_or("vit_base_patch16_224", |r| r.0);
    folder_file(
        closest,
        a.hidden,
        classes,
        kwargs,
        pretrained_cfg,
        names::PATCH_W,
        true,
    )
}

/// The text of a timm folder's `config.json`: the registered `architecture` whose entry point builds the model,
/// `model_args` that give every size and switch, and `pretrained_cfg` with the preprocessing, the patch
/// embedding's module (`first_conv`, from its weight's name) and whether the input size is fixed.
pub(crate) fn folder_file(
    architecture: &str,
    num_features: usize,
    classes: usize,
    kwargs: &Value,
    pretrained_cfg: &Value,
    first_conv_weight: &str,
    fixed_input_size: bool,
) -> String {
    let mut cfg = pretrained_cfg.clone();
    if let Value::Object(m) = &mut cfg {
        m.insert("tag".into(), json!("vitconv"));
        m.insert("custom_load".into(), json!(false));
        m.insert("fixed_input_size".into(), json!(fixed_input_size));
        m.insert("pool_size".into(), Value::Null);
        m.insert(
            "first_conv".into(),
            json!(first_conv_weight.trim_end_matches(".weight")),
        );
        m.insert(
            "classifier".into(),
            json!(names::HEAD_W.trim_end_matches(".weight")),
        );
    }
    let config = json!({
        "architecture": architecture,
        "num_classes": classes,
        "num_features": num_features,
        "global_pool": kwargs.get("global_pool"),
        "model_args": kwargs,
        "pretrained_cfg": cfg,
    });
    let mut text = serde_json::to_string_pretty(&config).unwrap_or_else(|_| config.to_string());
    text.push('\n');
    text
}

/// What a timm encoder's state dict says of its blocks and pooling, shared by `VisionTransformer` and
/// `NaFlexVit` (same block and head names): the depth, the MLP width, whether a class token is stored (under
/// `cls`, the model's own name for it) and whether an attention-pool (MAP) head is; `None` where there are no
/// blocks.
pub(crate) fn encoder_shape(s: &Shapes<'_>, cls: &str) -> Option<(usize, usize, bool, bool)> {
    let depth = count_blocks(s, "", names::QKV_W);
    if depth == 0 {
        return None;
    }
    let &[mlp, _] = get(s, &crate::layout::prepared::name(names::FC1_W, 0))? else {
        return None;
    };
    let cls = s.contains_key(cls);
    let map = ATTN_POOL
        .first()
        .is_some_and(|(latent, _)| s.contains_key(latent));
    Some((depth, mlp, cls, map))
}

/// Recognises a timm `VisionTransformer` state dict (and its hybrid stem), or a `NaFlexVit` one
/// ([`super::timm_naflex::recognise`]), for `inspect`, from [`names`].
pub fn recognise(s: &Shapes<'_>) -> Option<Recognised> {
    if let Some(r) = super::timm_naflex::recognise(s) {
        return Some(r);
    }
    let &[hidden, in_chans, patch, _] = get(s, names::PATCH_W)? else {
        return None;
    };
    let (depth, mlp, cls, map) = encoder_shape(s, names::CLS)?;
    let &[_, rows, _] = get(s, names::POS)? else {
        return None;
    };
    // Without `no_embed_class` the class token has a row; with it (big_vision sources) it has none.
    let (side, class_pos) = match (grid_side(rows, usize::from(cls)), cls) {
        (Some(side), _) => (side, cls),
        (None, true) => (grid_side(rows, 0)?, false),
        (None, false) => return None,
    };
    let num_classes = get(s, names::HEAD_W).and_then(|h| h.first().copied());
    let stem_conv = format!("{}conv.weight", names::STEM);
    let resnet = if s.contains_key(stem_conv.as_str()) {
        let width = get(s, &stem_conv)?.first().copied()?;
        let stages = (0..)
            .map(|st| {
                let unit = names::UNIT.replace("{s}", &st.to_string());
                count_blocks(
                    s,
                    "",
                    &format!("{}conv1.weight", unit.replace("{u}", "{i}")),
                )
            })
            .take_while(|n| *n > 0)
            .collect();
        Some(ResNet { stages, width })
    } else {
        get(s, &format!("{}conv.weight", names::ROOT_ONLY))
            .and_then(|w| w.first().copied())
            .map(|width| ResNet {
                stages: vec![],
                width,
            })
    };
    let arch = Arch {
        patch,
        patch_embed: PatchEmbedKind::Conv,
        in_chans,
        hidden,
        heads: None,
        mlp,
        depth,
        grid: Some((side, side)),
        posemb: PosEmbKind::Learned,
        class_pos,
        classifier: match (cls, map) {
            (true, _) => Classifier::Token,
            (false, true) => Classifier::Map,
            (false, false) => Classifier::Gap,
        },
        num_classes,
        representation: None,
        resnet,
        stacked: false,
    };
    Some(Recognised {
        family: "timm",
        arch,
        class_shape: None,
        patch_bias: true,
        notes: vec![],
        text: None,
    })
}

/// The hybrid stem as timm's `ResNetV2` names it: the root in `stem` (or the `Sequential` itself for a
/// root-only stem), then `stages.{s}.blocks.{u}` with `downsample` on each stage's first unit.
fn push_stem(stem: &crate::model::Stem, out: &mut Vec<OutTensor>) {
    let conv = |p: &Param| {
        let hwio = match p.shape.as_slice() {
            &[h, w, i, o] => [h, w, i, o],
            _ => [0; 4],
        };
        let [h, w, i, o] = hwio;
        (
            vec![o, i, h, w],
            Recipe::StdConvKernel {
                src: p.clone(),
                hwio,
                source_eps: FLAX_STDCONV_EPS,
                target_eps: TIMM_STDCONV_EPS,
            },
        )
    };
    let mut push_conv_norm = |conv_name: String, norm_name: &str, p: &Param, norm: &Norm| {
        let (shape, recipe) = conv(p);
        let channels = shape.first().copied().unwrap_or(0);
        out.push(t(conv_name, shape, recipe));
        out.push(t(
            format!("{norm_name}.weight"),
            vec![channels],
            Recipe::Copy(norm.scale.clone()),
        ));
        out.push(t(
            format!("{norm_name}.bias"),
            vec![channels],
            Recipe::Copy(norm.bias.clone()),
        ));
    };
    let root = if stem.stages.is_empty() {
        names::ROOT_ONLY
    } else {
        names::STEM
    };
    push_conv_norm(
        format!("{root}conv.weight"),
        &format!("{root}norm"),
        &stem.root,
        &stem.root_norm,
    );
    for (s, units) in stem.stages.iter().enumerate() {
        for (u, unit) in units.iter().enumerate() {
            let p = names::UNIT
                .replace("{s}", &s.to_string())
                .replace("{u}", &u.to_string());
            if let Some((conv, norm)) = &unit.proj {
                push_conv_norm(
                    format!("{p}downsample.conv.weight"),
                    &format!("{p}downsample.norm"),
                    conv,
                    norm,
                );
            }
            for (k, (conv, norm)) in unit.convs.iter().zip(&unit.norms).enumerate() {
                push_conv_norm(
                    format!("{p}conv{}.weight", k.saturating_add(1)),
                    &format!("{p}norm{}", k.saturating_add(1)),
                    conv,
                    norm,
                );
            }
        }
    }
}

/// A JSON value written as a Python literal.
pub(crate) fn py_value(v: &Value) -> String {
    match v {
        Value::Bool(true) => "True".to_string(),
        Value::Bool(false) => "False".to_string(),
        Value::Null => "None".to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() => py_float(f),
            _ => n.to_string(),
        },
        Value::String(s) => crate::layout::py_str(s),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use vitconv_tensors::{DType, TensorInfo};

    use crate::error::{Error, Result};
    use crate::model::Param;
    use crate::options::{HeadChoice, Layout, Options};
    use crate::plan::Fetch;
    use crate::sources::vit_jax::read as detect_vit_jax;
    use crate::sources::vit_jax::tests::fixtures;

    /// The shapes fixtures have no values; the timm layout never needs any at planning time.
    struct NoValues;
    impl Fetch for NoValues {
        fn fetch(&self, param: &Param) -> Result<Vec<f32>> {
            Err(Error::MissingTensor {
                recognised: "test map".to_string(),
                tensor: param.describe(),
                role: None,
            })
        }
    }

    fn shapes(name: &str) -> Vec<TensorInfo> {
        let text =
            std::fs::read_to_string(fixtures().join("shapes").join(name)).expect("shapes fixture");
        let json: Value = serde_json::from_str(&text).expect("JSON");
        json["tensors"]
            .as_object()
            .expect("tensors")
            .iter()
            .map(|(k, v)| TensorInfo {
                name: k.clone(),
                dtype: DType::F32,
                shape: v
                    .as_array()
                    .expect("shape")
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|d| d as usize)
                    .collect(),
                stored_as: None,
            })
            .collect()
    }

    fn python(name: &str, opts: &Options) -> String {
        let src = detect_vit_jax(&shapes(name)).expect("published shapes");
        let plan = crate::layout::plan(&src, opts, &NoValues, name).expect("plan");
        plan.check_complete(&src.shapes, "vit_jax")
            .expect("complete");
        plan.python
    }

    #[test]
    fn registered_names_for_published_models() {
        let opts = Options::new(Layout::Timm);
        let py = python("ViT-L_32-imagenet2012-384.json", &opts);
        assert!(py.contains("timm.create_model('vit_large_patch32_384', pretrained=False, num_classes=1000, act_layer='gelu_tanh'"), "{py}");
        let py = python("ViT-B_16-imagenet2012-384.json", &opts);
        assert!(py.contains("'vit_base_patch16_384'"), "{py}");
        // 21k files carry pre_logits: only a feature extractor fits timm, and its head is 0 classes.
        let mut drop = Options::new(Layout::Timm);
        drop.head = HeadChoice::Drop;
        let py = python("ViT-H_14-imagenet21k.json", &drop);
        assert!(
            py.contains("'vit_huge_patch14_224', pretrained=False, num_classes=0"),
            "{py}"
        );
        let py = python("Ti_16-augreg-i21k.json", &opts);
        assert!(
            py.contains("'vit_tiny_patch16_224', pretrained=False, num_classes=21843"),
            "{py}"
        );
    }

    #[test]
    fn hybrids_build_their_backbone_explicitly() {
        let py = python(
            "R50+ViT-B_16-imagenet2012-384.json",
            &Options::new(Layout::Timm),
        );
        assert!(
            py.contains("ResNetV2(layers=(3, 4, 9), width_factor=1"),
            "{py}"
        );
        assert!(py.contains("GroupNormAct, num_groups=32, eps=1e-6"), "{py}");
        assert!(py.contains("HybridEmbed, backbone=backbone"), "{py}");
    }
}
