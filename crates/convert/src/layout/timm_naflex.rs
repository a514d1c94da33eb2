//! timm's `NaFlexVit`, the timm layout's home for NaFlex towers (a linear patch embedding with a learned
//! position grid resized per image: SigLIP 2 NaFlex's image tower, written with `--tower image`).
//!
//! Names and semantics follow timm 1.0.31 `models/naflexvit.py`: `NaFlexEmbeds` holds `proj` (a `Linear`
//! `[D, p * p * 3]` over patches flattened (py, px, c) when `embed_proj_type='linear'` and
//! `patchify_channels_last`) and `pos_embed` `[1, G, G, D]`, which `_apply_learned_naflex_pos_embed` resizes to
//! each sample's grid (`patch_coord.amax + 1`) with `F.interpolate(mode=pos_embed_interp_mode,
//! align_corners=False, antialias=True)` and adds to the sequence in row-major order; the blocks and
//! `attn_pool` are `VisionTransformer`'s (the [`timm::BLOCK`] and [`timm::ATTN_POOL`] names), masked from
//! `patch_valid` (query and key in the blocks, key only in the pool). timm's default resize is bicubic; the
//! source's is bilinear, which `model_args` declare.

use serde_json::{json, Map, Value};

use crate::arch::{
    linear_patch_side, Arch, Classifier, PatchEmbedKind, PosEmbKind, LINEAR_PATCH_CHANNELS,
};
use crate::error::{Part, Result};
use crate::layout::prepared::{mlp_ratio, Prepared};
use crate::layout::recognise::{get, Recognised, Shapes};
use crate::layout::timm::{self, folder_file, names as vit_names, py_kwargs, BLOCK};
use crate::model::Param;
use crate::plan::OUTPUT_DIR_TOKEN;
use crate::plan::{OutTensor, OutputKind, Plan, Recipe, SideFile};

/// `NaFlexVit` state-dict names outside the blocks, the final norm, the pool and the head (which are
/// `VisionTransformer`'s, [`vit_names`]).
pub mod names {
    /// The linear patch embedding's weight `[D, p * p * 3]`.
    pub const PATCH_W: &str = "embeds.proj.weight";
    /// The linear patch embedding's bias.
    pub const PATCH_B: &str = "embeds.proj.bias";
    /// The learned position grid `[1, G, G, D]`.
    pub const POS: &str = "embeds.pos_embed";
    /// A class token, which `NaFlexVit` keeps in its embeddings.
    pub const CLS: &str = "embeds.cls_token";
}

/// timm's registered SigLIP 2 NaFlex towers (timm 1.0.31 `naflexvit.py`, all `act_layer='gelu_tanh'`,
/// `global_pool='map'`, `pos_embed_interp_mode='bilinear'`), as (name, patch, width, depth, heads, MLP width).
/// The folder names the one of the tower's sizes, or the closest: its `model_args` set every size anyway.
const REGISTERED: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("naflexvit_base_patch16_siglip", 16, 768, 12, 12, 3072),
    ("naflexvit_so400m_patch16_siglip", 16, 1152, 27, 16, 4304),
];

fn t(name: &str, shape: Vec<usize>, recipe: Recipe) -> OutTensor {
    OutTensor {
        name: name.to_string(),
        shape,
        recipe,
    }
}

/// The `NaFlexVit` plan for a NaFlex tower whose stored position grid is `grid` (`size` rows and columns).
pub fn plan(
    prep: Prepared<'_>,
    grid: &Param,
    size: (usize, usize),
    source_name: &str,
) -> Result<Plan> {
    let a = prep.arch().clone();
    if prep.has_pre_logits() {
        return Err(prep.refuse(
            Part::PreLogits {
                hidden: a.hidden,
                representation: a.representation.unwrap_or(0),
            },
            "timm's NaFlexVit has no representation layer; pass --drop-head for a feature extractor",
        ));
    }
    if a.classifier == Classifier::Token {
        return Err(prep.refuse(
            Part::Pooling(Classifier::Token),
            "vitconv writes NaFlexVit for MAP- or mean-pooled NaFlex towers (the published kind); how a class token meets the padding mask is not checked against big_vision",
        ));
    }
    prep.check_input_norm()?;
    let ratio = mlp_ratio(&prep)?;
    let tower = prep.tower();
    let d = a.hidden;
    let (patch_shape, patch_weight) = prep.linear_patch_weight();
    let mut out = vec![
        t(names::PATCH_W, patch_shape, patch_weight),
        t(
            names::PATCH_B,
            vec![d],
            Recipe::Copy(tower.patch.bias.clone()),
        ),
        t(
            names::POS,
            vec![1, size.0, size.1, d],
            Recipe::Copy(grid.clone()),
        ),
    ];
    for (i, b) in tower.blocks.iter().enumerate() {
        out.extend(prep.block_tensors(BLOCK, "", i, b));
    }
    // The final norm, MAP head and head are named and made as in timm's VisionTransformer.
    let classes = timm::tail_tensors(&prep, &mut out)?;

    let act = timm::act_layer(prep.gelu());
    let pool = match a.classifier {
        Classifier::Map => "map",
        _ => "avg",
    };
    // Every switch exactness rests on is written out, defaults included: the flatten order of the patches, the
    // grid's resize (timm's default is bicubic) and that the final norm comes before the pooling (as
    // big_vision's encoder_norm does; timm's default for 'avg' is a norm after it).
    let mut kw = Map::new();
    kw.insert("patch_size".into(), json!(a.patch));
    kw.insert("embed_dim".into(), json!(d));
    kw.insert("depth".into(), json!(a.depth));
    kw.insert("num_heads".into(), json!(a.heads));
    kw.insert("mlp_ratio".into(), json!(ratio));
    kw.insert("num_classes".into(), json!(classes));
    kw.insert("global_pool".into(), json!(pool));
    kw.insert("class_token".into(), json!(false));
    kw.insert("fc_norm".into(), json!(false));
    kw.insert("act_layer".into(), json!(act));
    kw.insert("embed_proj_type".into(), json!("linear"));
    kw.insert("patchify_channels_last".into(), json!(true));
    kw.insert("pos_embed".into(), json!("learned"));
    kw.insert("pos_embed_grid_size".into(), json!([size.0, size.1]));
    kw.insert("pos_embed_interp_mode".into(), json!("bilinear"));
    kw.insert("pos_embed_antialias".into(), json!(true));
    kw.insert("pos_embed_align_corners".into(), json!(false));
    kw.insert("pos_embed_ar_preserving".into(), json!(false));
    let kwargs = Value::Object(kw.clone());
    // timm's fixed-size transforms still ask for an input size: the one at which the grid is used unresized.
    let (pretrained_cfg, cfg_py) = timm::pretrained_cfg(&prep, classes);
    let python = format!(
        "from timm.models.naflexvit import NaFlexVit\nmodel = NaFlexVit({})\nmodel.pretrained_cfg = {cfg_py}",
        py_kwargs(&kw)
    );
    let architecture = REGISTERED
        .iter()
        .min_by_key(|r| {
            (
                (r.1, r.2, r.3, Some(r.4), r.5) != (a.patch, d, a.depth, a.heads, a.mlp),
                r.2.abs_diff(d),
                r.3.abs_diff(a.depth),
            )
        })
        .map_or("naflexvit_base_patch16_siglip", |r| r.0);
    let folder = folder_file(
        architecture,
        d,
        classes,
        &kwargs,
        &pretrained_cfg,
        names::PATCH_W,
        false,
    );
    let mut prep = prep;
    prep.notes.push(format!(
        "NaFlexVit: input is a dict of 'patches' [B, N, {rows}] ({p}x{p} RGB patches flattened (py, px, c), as big_vision's patchify cuts them), 'patch_coord' [B, N, 2] (row, column) and 'patch_valid' [B, N]; the patches of each image must come in row-major order with the padding after them, because NaFlexVit adds the resized grid's rows in sequence order; pos_embed_interp_mode 'bilinear' as the source resizes (timm's default, bicubic, is not the source's)",
        rows = a.patch.saturating_mul(a.patch).saturating_mul(a.in_chans),
        p = a.patch
    ));
    let meta = timm::metadata(&prep, source_name, classes, &kwargs, &pretrained_cfg);
    let kind = OutputKind::FileOrFolder {
        python:
            format!("import timm\nmodel = timm.create_model('local-dir:' + {OUTPUT_DIR_TOKEN}, pretrained=True)"),
    };
    let side = vec![SideFile {
        name: timm::FOLDER_CONFIG.to_string(),
        contents: folder,
    }];
    Ok(prep.finish(kind, out, meta, python, side))
}

/// Recognises a timm `NaFlexVit` state dict with a linear patch embedding and a learned grid, from [`names`]
/// and the `VisionTransformer` names it shares.
pub fn recognise(s: &Shapes<'_>) -> Option<Recognised> {
    let &[hidden, rows] = get(s, names::PATCH_W)? else {
        return None;
    };
    let &[_, gh, gw, _] = get(s, names::POS)? else {
        return None;
    };
    let (depth, mlp, cls, map) = timm::encoder_shape(s, names::CLS)?;
    let arch = Arch {
        patch: linear_patch_side(rows)?,
        patch_embed: PatchEmbedKind::Linear,
        in_chans: LINEAR_PATCH_CHANNELS,
        hidden,
        heads: None,
        mlp,
        depth,
        grid: Some((gh, gw)),
        posemb: PosEmbKind::LearnedGrid,
        class_pos: false,
        classifier: match (cls, map) {
            (true, _) => Classifier::Token,
            (false, true) => Classifier::Map,
            (false, false) => Classifier::Gap,
        },
        num_classes: get(s, vit_names::HEAD_W).and_then(|h| h.first().copied()),
        representation: None,
        resnet: None,
        stacked: false,
    };
    Some(Recognised {
        family: "timm",
        arch,
        class_shape: None,
        patch_bias: true,
        notes: vec!["timm NaFlexVit (input: patches, patch_coord, patch_valid)".to_string()],
        text: None,
    })
}
