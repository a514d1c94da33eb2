//! The folders vitconv writes, read back for `inspect`: which layout wrote a folder (by the files each layout
//! puts there), its weights file, and what its configs declare (model class, preprocessing, class names,
//! tokenizer).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::layout::{hf_files, open_clip_siglip, timm};
use crate::options::Layout;
use crate::tokenizer::{Kind, SPIECE_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_JSON_FILE};

/// The largest config read back: vitconv's are a few KB, an ImageNet-21k `id2label` about 1.5 MB.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A folder vitconv wrote, as its files say.
#[derive(Debug, Clone)]
pub struct Folder {
    /// The layout that writes folders of these files (`hf`, `timm`, `open_clip`).
    pub layout: &'static str,
    /// The weights file inside it.
    pub weights: PathBuf,
    /// What its configs declare, one line each (`model: ViTForImageClassification`).
    pub declares: Vec<String>,
}

/// What a folder's configs declare, by the layout that wrote it: the layout and one line per fact.
type Reader = fn(&Path, &Value) -> Result<(Layout, Vec<String>)>;

/// The folders layouts write, told apart by their weights file and config (read by `Reader`).
const FOLDERS: [(&str, &str, Reader); 2] = [
    (
        open_clip_siglip::WEIGHTS_FILE,
        open_clip_siglip::CONFIG_FILE,
        |dir, cfg| Ok((Layout::OpenClip, open_clip_lines(dir, cfg))),
    ),
    // hf and timm folders hold the same two names; the config's content tells them apart.
    (hf_files::WEIGHTS_FILE, timm::FOLDER_CONFIG, hf_or_timm),
];

/// Reads `dir` as a folder vitconv writes; `None` when it holds none of the layouts' file pairs.
pub fn read_folder(dir: &Path) -> Result<Option<Folder>> {
    let Some((weights, config, reader)) = FOLDERS
        .iter()
        .find(|(w, c, _)| dir.join(w).is_file() && dir.join(c).is_file())
    else {
        return Ok(None);
    };
    let (layout, declares) = reader(dir, &read_json(&dir.join(config))?)?;
    Ok(Some(Folder {
        layout: layout.as_str(),
        weights: dir.join(weights),
        declares,
    }))
}

/// A `config.json` beside `model.safetensors`: timm's names an `architecture`, transformers' does not.
fn hf_or_timm(dir: &Path, cfg: &Value) -> Result<(Layout, Vec<String>)> {
    if cfg.get("architecture").is_some() {
        return Ok((Layout::Timm, timm_lines(cfg)));
    }
    let pre = dir.join(hf_files::PREPROCESSOR_FILE);
    let pre = if pre.is_file() {
        Some(read_json(&pre)?)
    } else {
        None
    };
    Ok((Layout::Hf, hf_lines(dir, cfg, pre.as_ref())))
}

/// A config file's JSON, read as every small file is (a regular file, at most [`MAX_CONFIG_BYTES`]).
fn read_json(path: &Path) -> Result<Value> {
    let bytes = vitconv_tensors::read_regular_file(path, MAX_CONFIG_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|source| Error::FolderConfig {
        path: path.to_path_buf(),
        source,
    })
}

/// A JSON value on one line, strings without their quotes.
fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "(not set)".to_string(),
    }
}

/// `N names (first: "…")`, or what stands in for names.
fn names_line(names: &[String]) -> String {
    let unnamed = names
        .iter()
        .enumerate()
        .all(|(i, n)| *n == format!("LABEL_{i}"));
    match (names.first(), unnamed) {
        (None, _) => "none".to_string(),
        (Some(_), true) => format!("{} unnamed (LABEL_0 ...)", names.len()),
        (Some(first), false) => format!("{} names (first: {first:?})", names.len()),
    }
}

fn hf_lines(dir: &Path, cfg: &Value, pre: Option<&Value>) -> Vec<String> {
    let mut out = vec![format!("model: {}", text(cfg.pointer("/architectures/0")))];
    if let Some(id2label) = cfg.get("id2label").and_then(Value::as_object) {
        let mut names: Vec<(usize, String)> = id2label
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, text(Some(v)))))
            .collect();
        names.sort();
        let names: Vec<String> = names.into_iter().map(|(_, n)| n).collect();
        out.push(format!("labels: {}", names_line(&names)));
    }
    match pre {
        // A NaFlex processor has no size: each image is resized to a patch budget, its aspect ratio kept.
        Some(p) if p.get("max_num_patches").is_some() => out.push(format!(
            "preprocessing: {} resize to at most {} patches of {} px, aspect ratio kept (resample {}), mean {}, std {}",
            text(p.get("image_processor_type")),
            text(p.get("max_num_patches")),
            text(p.get("patch_size")),
            text(p.get("resample")),
            text(p.get("image_mean")),
            text(p.get("image_std")),
        )),
        Some(p) => out.push(format!(
            "preprocessing: {} resize to {}x{} (resample {}), mean {}, std {}",
            text(p.get("image_processor_type")),
            text(p.pointer("/size/height")),
            text(p.pointer("/size/width")),
            text(p.get("resample")),
            text(p.get("image_mean")),
            text(p.get("image_std")),
        )),
        None => out.push("preprocessing: no preprocessor_config.json".to_string()),
    }
    if cfg.get("text_config").is_some() {
        out.push(tokenizer_line(dir));
    }
    out
}

fn timm_lines(cfg: &Value) -> Vec<String> {
    let p = cfg.get("pretrained_cfg");
    let get = |k: &str| text(p.and_then(|p| p.get(k)));
    let mut out = vec![
        format!(
            "model: timm {} with model_args {}",
            text(cfg.get("architecture")),
            text(cfg.get("model_args"))
        ),
        format!(
            "preprocessing: input {}, {} resize, crop_mode {}, crop_pct {}, mean {}, std {}",
            get("input_size"),
            get("interpolation"),
            get("crop_mode"),
            get("crop_pct"),
            get("mean"),
            get("std"),
        ),
    ];
    if let Some(names) = p
        .and_then(|p| p.get("label_names"))
        .and_then(Value::as_array)
    {
        let names: Vec<String> = names.iter().map(|n| text(Some(n))).collect();
        out.push(format!("labels: {}", names_line(&names)));
    }
    out
}

fn open_clip_lines(dir: &Path, cfg: &Value) -> Vec<String> {
    let m = cfg.get("model_cfg");
    let vision = m.and_then(|m| m.get("vision_cfg"));
    let pre = cfg.get("preprocess_cfg");
    let get = |k: &str| text(pre.and_then(|p| p.get(k)));
    let tower = text(vision.and_then(|v| v.get("timm_model_name")));
    let mut out = vec![
        format!(
            "model: open_clip CustomTextCLIP, embedding {}, image tower {tower}",
            text(m.and_then(|m| m.get("embed_dim")))
        ),
        format!(
            "preprocessing: {} resize ({}) to {}, mean {}, std {}",
            get("interpolation"),
            get("resize_mode"),
            text(vision.and_then(|v| v.get("image_size"))),
            get("mean"),
            get("std"),
        ),
    ];
    // A tower named by a path must still be there (the folder may have been moved).
    if let Some(path) = tower.strip_prefix("local-dir:") {
        let here = Path::new(path).join(timm::FOLDER_CONFIG).is_file();
        out.push(format!(
            "image tower folder: {path} ({})",
            if here {
                "present"
            } else {
                "missing: the folder was moved; convert again"
            }
        ));
    }
    out.push(tokenizer_line(dir));
    out
}

/// The tokenizer a folder holds, by its files: the Gemma kind's `tokenizer.json` or the SigLIP kind's
/// `spiece.model`, each with its `tokenizer_config.json`.
fn tokenizer_line(dir: &Path) -> String {
    let config = dir.join(TOKENIZER_CONFIG_FILE).is_file();
    let with = if config { "with" } else { "without" };
    if dir.join(TOKENIZER_JSON_FILE).is_file() {
        return format!(
            "tokenizer: {} ({TOKENIZER_JSON_FILE} {with} {TOKENIZER_CONFIG_FILE}; ASCII-only lowercase, no BOS, <eos> appended, <pad> to the context)",
            Kind::Gemma.as_str()
        );
    }
    if dir.join(SPIECE_FILE).is_file() {
        return format!(
            "tokenizer: {} ({SPIECE_FILE} {with} {TOKENIZER_CONFIG_FILE}; </s> ends and pads)",
            Kind::Siglip.as_str()
        );
    }
    "tokenizer: none (image input only; convert with --tokenizer to add one)".to_string()
}
