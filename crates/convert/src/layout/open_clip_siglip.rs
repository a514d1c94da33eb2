//! open_clip's `CustomTextCLIP`, the `open_clip` layout's home for two-tower image-text models: a folder that
//! `open_clip.create_model_and_transforms('local-dir:OUT')` loads with no other code.
//!
//! Names and semantics follow open_clip 3.3.0: `model.py` (`CustomTextCLIP`: `visual`, `text`, `logit_scale`
//! and `logit_bias` as 0-dim parameters, `logits = exp(logit_scale) * img @ txt.T + logit_bias`;
//! `CLIPTextCfg`; `_build_text_tower` with `act_kwargs` and `norm_kwargs`), `transformer.py`
//! (`TextTransformer`: `token_embedding`, `positional_embedding` `[context, width]`, `transformer.resblocks`,
//! `ln_final` before pooling, `pool_type='last'`, `no_causal_mask`, `text_projection` a `Linear` when
//! `proj_bias`) and `timm_model.py` (`TimmModel`: `trunk` built by `timm.create_model(name,
//! num_classes=embed_dim or 0, global_pool=timm_pool)`).
//!
//! The image tower is timm's `VisionTransformer` under `visual.trunk.`, planned by the timm layout. open_clip
//! cannot pass `act_layer` to timm, and the SigLIP 1 towers timm registers use the erf GELU (2.5e-5 to 1.6e-4
//! away from big_vision). A tower of exactly the sizes of a registered tanh-GELU tower (the SigLIP 2 sizes,
//! `REGISTERED_TANH`) is named by that name, and the folder can be moved. Any other tower is a timm folder
//! inside OUT (`image_tower/config.json`, the sizes and `act_layer='gelu_tanh'` in `model_args`); open_clip
//! hands its name to timm, which resolves it from the current directory, so it is the folder's absolute path,
//! and moving the folder needs the one-line fix the notes and the config's `vitconv.relocate` give.

use serde_json::{json, Value};

use crate::arch::Classifier;
use crate::error::{Part, Result};
use crate::layout::clip_style::BLOCK;
use crate::layout::prepared::{exact_ratio, Prepared, TextRole, TextTable};
use crate::layout::timm;
use crate::model::TextPool;
use crate::options::Gelu;
use crate::plan::{Fetch, OutTensor, OutputKind, Plan, SideFile, OUTPUT_DIR_TOKEN};
use crate::record::DeclaredHead;
use crate::tokenizer::Kind;

/// The weights file inside the folder (the name `local-dir:` looks for first).
pub const WEIGHTS_FILE: &str = "open_clip_model.safetensors";
/// The model and preprocessing config inside the folder.
pub const CONFIG_FILE: &str = "open_clip_config.json";
/// The image tower's timm folder inside the output folder.
pub const IMAGE_TOWER: &str = "image_tower";
/// The prefix of the image tower's timm keys.
pub const TRUNK: &str = "visual.trunk.";
/// The prefix of the text tower's blocks (named as in the CLIP-style `BLOCK`).
pub const TEXT_PREFIX: &str = "text.";

/// The text tower outside its blocks (`TextTransformer` under `text.`).
pub const TEXT: &TextTable = &[
    ("text.token_embedding.weight", TextRole::Token),
    ("text.positional_embedding", TextRole::Position),
    ("text.ln_final.weight", TextRole::NormScale),
    ("text.ln_final.bias", TextRole::NormBias),
    ("text.text_projection.weight", TextRole::HeadWeight),
    ("text.text_projection.bias", TextRole::HeadBias),
];

/// `CustomTextCLIP`'s logit scale, a 0-dim parameter.
pub const LOGIT_SCALE: &str = "logit_scale";
/// `CustomTextCLIP`'s logit bias, a 0-dim parameter.
pub const LOGIT_BIAS: &str = "logit_bias";

/// timm's registered SigLIP image towers that declare the tanh GELU (the SigLIP 2 sizes), as (name, patch,
/// width, depth, heads, MLP width, resolution), read from timm 1.0.31 `vision_transformer.py` and checked
/// against the models it builds (LayerNorm eps 1e-6, `global_pool='map'`, no class token). A tower of exactly
/// these sizes is named by its registered name, which open_clip resolves wherever the folder is.
const REGISTERED_TANH: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
    ("vit_base_patch32_siglip_256", 32, 768, 12, 12, 3072, 256),
    ("vit_large_patch16_siglip_512", 16, 1024, 24, 16, 4096, 512),
    ("vit_so400m_patch16_siglip_256", 16, 1152, 27, 16, 4304, 256),
    ("vit_so400m_patch16_siglip_384", 16, 1152, 27, 16, 4304, 384),
    ("vit_so400m_patch16_siglip_512", 16, 1152, 27, 16, 4304, 512),
    (
        "vit_giantopt_patch16_siglip_256",
        16,
        1536,
        40,
        16,
        6144,
        256,
    ),
    (
        "vit_giantopt_patch16_siglip_384",
        16,
        1536,
        40,
        16,
        6144,
        384,
    ),
];

/// The registered tanh-GELU timm tower with the image tower's sizes, if there is one.
fn registered_tower(prep: &Prepared<'_>) -> Option<&'static str> {
    let a = prep.arch();
    let exact = a.classifier == Classifier::Map
        && a.in_chans == 3
        && prep.gelu() == Gelu::Tanh
        && a.heads.is_some();
    REGISTERED_TANH
        .iter()
        .find(|r| {
            exact
                && (r.1, r.2, r.3, Some(r.4), r.5, r.6)
                    == (a.patch, a.hidden, a.depth, a.heads, a.mlp, prep.image_size)
        })
        .map(|r| r.0)
}

/// The `clean` mode of `HFTokenizer` for each tokenizer kind. SigLIP: what open_clip's own SigLIP configs give
/// (lower case, no punctuation). Gemma: `whitespace`, open_clip's default (ftfy's repairs, runs of whitespace
/// as one space), the one mode that neither strips punctuation nor lowercases beyond ASCII (`lower` is
/// Python's `str.lower`); the ASCII-only lowercase is in the tokenizer's own normaliser.
fn clean_mode(kind: Kind) -> &'static str {
    match kind {
        Kind::Siglip => "canonicalize",
        Kind::Gemma => "whitespace",
    }
}

/// The open_clip folder for a two-tower source.
pub fn plan(mut prep: Prepared<'_>, fetch: &dyn Fetch, source_name: &str) -> Result<Plan> {
    let model = prep.model;
    let a = prep.arch().clone();
    let Some(text) = model.text.as_ref().filter(|_| prep.two_tower()) else {
        return Err(prep.refuse(
            Part::SingleTower,
            "this module writes two-tower models; the open_clip layout writes a single tower as visual.*",
        ));
    };
    let t = text.arch.clone();
    let image_head = a.num_classes.filter(|_| prep.tower().head.is_some());
    if let (Some(embed), false) = (image_head, prep.keep_head) {
        return Err(prep.refuse(
            Part::ImageHeadDropped {
                hidden: a.hidden,
                embed,
            },
            "without it the towers no longer meet; for image features alone use --tower image --drop-head",
        ));
    }
    // The image tower is timm's, planned by the timm layout on the same source and options (without the
    // tokenizer, which belongs to the text side).
    let mut image_opts = prep.opts.clone();
    image_opts.tokenizer = None;
    let image = timm::plan(Prepared::new(model, &image_opts)?, fetch, source_name)?;
    let timm_kwargs = image.metadata.get(crate::meta::TIMM_KWARGS).cloned();
    let mut out: Vec<OutTensor> = image
        .tensors
        .into_iter()
        .map(|mut x| {
            x.name = format!("{TRUNK}{}", x.name);
            x
        })
        .collect();
    let image_config = image
        .side_files
        .into_iter()
        .find(|s| s.name == timm::FOLDER_CONFIG)
        .map(|s| s.contents)
        .unwrap_or_default();
    // A text tower without a head is `proj_type='none'` (set in the config below): no projection is written.
    out.extend(prep.text_tensors(TEXT, BLOCK, TEXT_PREFIX, true)?);
    out.extend(prep.logit_tensors(LOGIT_SCALE, LOGIT_BIAS, &[]));

    let ratio = exact_ratio(t.mlp, t.width).ok_or_else(|| {
        prep.refuse(
            Part::TextMlpWidth {
                mlp: t.mlp,
                width: t.width,
            },
            "open_clip derives the MLP width from a float ratio that cannot express it",
        )
    })?;
    let embed = t.embed.unwrap_or(t.width);
    let timm_pool = match a.classifier {
        Classifier::Map => "map",
        Classifier::Gap => "avg",
        Classifier::Token => "token",
        Classifier::None => {
            return Err(prep.refuse(
                Part::Pooling(Classifier::None),
                "open_clip's image tower pools its tokens into one embedding",
            ))
        }
    };
    let act_kwargs = match prep.gelu_for(&text.semantics) {
        Gelu::Tanh => json!({"approximate": "tanh"}),
        Gelu::Erf => json!({}),
    };
    // Without a tokenizer, `hf_tokenizer_name` still makes `get_tokenizer` look for tokenizer files in the
    // folder, so that text use fails loudly there instead of falling back to CLIP's BPE tokenizer.
    let tokenizer_name = match prep.tokenizer.as_ref().map(|s| s.kind) {
        Some(Kind::Siglip) => "local-dir (spiece.model in this folder)",
        Some(Kind::Gemma) => "local-dir (tokenizer.json in this folder)",
        None => {
            "none: convert with --tokenizer spiece.model to add the tokenizer files to this folder"
        }
    };
    // Without tokenizer files, `get_tokenizer` must fail naming the way out, not deep in transformers ("install
    // sentencepiece"): open_clip checks the `clean` mode first and its error quotes the value, so the value says
    // what to do.
    let clean = match &prep.tokenizer {
        Some(sp) => clean_mode(sp.kind),
        None => "no tokenizer in this folder: convert again with vitconv npz-to-pt --tokenizer spiece.model",
    };
    let mut text_cfg = json!({
        "context_length": t.context,
        "vocab_size": t.vocab,
        "hf_tokenizer_name": tokenizer_name,
        "tokenizer_kwargs": {"clean": clean},
        "width": t.width,
        "heads": t.heads,
        "layers": t.depth,
        "mlp_ratio": ratio,
        "no_causal_mask": !text.semantics.causal,
        "pool_type": match text.pool {
            TextPool::Last => "last",
        },
        "norm_kwargs": {"eps": text.semantics.norm_eps},
        "act_kwargs": act_kwargs,
    });
    if let Value::Object(c) = &mut text_cfg {
        match t.embed {
            Some(_) => c.insert("proj_bias".into(), json!(true)),
            None => c.insert("proj_type".into(), json!("none")),
        };
    }
    let bias = model.logit.as_ref().and_then(|l| l.bias.as_ref());
    // A registered tanh tower of these sizes keeps the folder relocatable; otherwise timm builds the tower
    // from the folder's own `image_tower/config.json`, which open_clip can only name by an absolute path.
    let registered = registered_tower(&prep);
    let image_tower = match registered {
        Some(name) => name.to_string(),
        None => format!("local-dir:{OUTPUT_DIR_TOKEN}/{IMAGE_TOWER}"),
    };
    let relocate = format!(
        "python -c \"import json,pathlib,sys; d=pathlib.Path(sys.argv[1]).resolve(); f=d/'{CONFIG_FILE}'; c=json.loads(f.read_text()); c['model_cfg']['vision_cfg']['timm_model_name']='local-dir:'+str(d/'{IMAGE_TOWER}'); f.write_text(json.dumps(c, indent=2))\" NEW_FOLDER"
    );
    let cfg = json!({
        "model_cfg": {
            "embed_dim": embed,
            "custom_text": true,
            "quick_gelu": false,
            // Any value makes open_clip build `logit_bias`; the weights file holds the real one.
            "init_logit_bias": 0.0,
            "vision_cfg": {
                "image_size": prep.image_size,
                "timm_model_name": image_tower,
                "timm_model_pretrained": false,
                "timm_pool": timm_pool,
                "timm_proj": if image_head.is_some() { "" } else { "none" },
            },
            "text_cfg": text_cfg,
        },
        "preprocess_cfg": {
            "size": prep.image_size,
            "mode": "RGB",
            "mean": prep.norm.mean(),
            "std": prep.norm.std(),
            "interpolation": "bilinear",
            "resize_mode": "squash",
        },
    });
    let mut cfg = cfg;
    let mut side = vec![];
    match registered {
        Some(name) => prep.notes.push(format!(
            "the image tower is timm's registered {name} (act_layer gelu_tanh, these exact sizes) under visual.trunk.; the folder can be moved"
        )),
        None => {
            if let Value::Object(c) = &mut cfg {
                c.insert(
                    "vitconv".into(),
                    json!({
                        "note": "timm_model_name is this folder's absolute path at conversion time (open_clip resolves it from the current directory); after moving the folder, run `relocate`",
                        "relocate": relocate,
                    }),
                );
            }
            prep.notes.push(format!(
                "the image tower is timm's VisionTransformer under visual.trunk., built from {IMAGE_TOWER}/config.json (act_layer gelu_tanh: no registered timm tower of these sizes declares the tanh GELU); {CONFIG_FILE} names that folder by its absolute path, so after moving OUT run: {relocate}"
            ));
            side.push(SideFile {
                name: format!("{IMAGE_TOWER}/{}", timm::FOLDER_CONFIG),
                contents: image_config,
            });
        }
    }
    if bias.is_none() {
        prep.notes.push(
            "init_logit_bias is set so that open_clip builds logit_bias, written as 0".to_string(),
        );
    }
    side.insert(
        0,
        SideFile {
            name: CONFIG_FILE.to_string(),
            contents: pretty(&cfg),
        },
    );
    if prep
        .tokenizer
        .as_ref()
        .is_some_and(|s| s.kind == Kind::Gemma)
    {
        prep.notes.push(
            "open_clip's HFTokenizer cleans every text first (ftfy's repairs; whitespace runs as one space, ends stripped); big_vision does neither, so a text with repeated, leading or trailing whitespace tokenises differently there than in big_vision or transformers (the ASCII-only lowercase is the tokenizer's own)".to_string(),
        );
    }
    let mut copied = Vec::new();
    let python = match &prep.tokenizer {
        Some(sp) => {
            let (files, spiece) = sp.files(t.context);
            side.extend(files);
            copied.push(spiece);
            format!("import open_clip\nmodel, _, preprocess = open_clip.create_model_and_transforms('local-dir:' + {OUTPUT_DIR_TOKEN})\ntokenizer = open_clip.get_tokenizer('local-dir:' + {OUTPUT_DIR_TOKEN})")
        }
        None => format!("import open_clip\nmodel, _, preprocess = open_clip.create_model_and_transforms('local-dir:' + {OUTPUT_DIR_TOKEN})  # text input: token ids from the model's SentencePiece tokenizer (--tokenizer)"),
    };
    let head = if image_head.is_some() {
        DeclaredHead::Head
    } else {
        DeclaredHead::Map
    };
    let config = prep.config(head, None);
    let mut meta = prep.metadata(source_name, &config);
    if let Some(kw) = timm_kwargs {
        meta.insert(crate::meta::TIMM_KWARGS.to_string(), kw);
    }
    meta.insert(
        crate::meta::OPEN_CLIP_CONFIG.to_string(),
        cfg.get("model_cfg")
            .map(Value::to_string)
            .unwrap_or_default(),
    );
    let mut plan = prep.finish(
        OutputKind::Directory {
            weights: WEIGHTS_FILE,
            // Only an unregistered tower's config names the folder (see `image_tower` above).
            folder_path_in: registered.is_none().then_some(CONFIG_FILE),
        },
        out,
        meta,
        python,
        side,
    );
    plan.copied_files = copied;
    Ok(plan)
}

/// Recognises a `CustomTextCLIP` state dict (timm's tower under `visual.trunk.`, the text tower under
/// `text.`) for `inspect`, from this module's names and the timm layout's recogniser.
pub fn recognise(
    s: &crate::layout::recognise::Shapes<'_>,
) -> Option<crate::layout::recognise::Recognised> {
    let trunk: crate::layout::recognise::Shapes<'_> = s
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(TRUNK).map(|k| (k, *v)))
        .collect();
    let mut r = timm::recognise(&trunk)?;
    r.family = "open_clip";
    r.text = Some(crate::layout::recognise::text_arch(
        s,
        TEXT,
        BLOCK,
        TEXT_PREFIX,
    )?);
    r.notes
        .push("image tower: timm's VisionTransformer under visual.trunk.".to_string());
    Some(r)
}

/// A JSON side file's contents: pretty-printed, ending in a newline.
fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}
