//! What both transformers layouts (`hf.rs` for ViT, `hf_siglip.rs` for SigLIP's vision tower) write into the
//! output directory: the file names, the dtype names of `config.json`, and the JSON formatting. Both layouts
//! import it, so neither imports the other for it.

use serde_json::{json, Map, Value};

use crate::model::Dense;
use crate::options::{Gelu, InputNorm, OutDType};
use crate::plan::OutTensor;

/// The classification head's weight, `classifier.weight` in both ViT and SigLIP classifiers.
pub const CLASSIFIER_W: &str = "classifier.weight";
/// The classification head's bias.
pub const CLASSIFIER_B: &str = "classifier.bias";

/// The head as transformers' `classifier`: the `[features, classes]` kernel transposed, and its bias.
pub(crate) fn classifier(head: &Dense, features: usize, classes: usize) -> [OutTensor; 2] {
    super::prepared::linear(head, features, classes, CLASSIFIER_W, CLASSIFIER_B)
}

/// transformers' `hidden_act` name for a GELU.
pub(crate) fn hidden_act(gelu: Gelu) -> &'static str {
    match gelu {
        Gelu::Tanh => "gelu_pytorch_tanh",
        Gelu::Erf => "gelu",
    }
}

/// Adds `id2label` and `label2id` for `classes` labels: the names `--labels` gave, or unnamed ones (`LABEL_0`,
/// ...) as transformers writes them. (A name given twice keeps its last index in `label2id`, as a dict does.)
pub(crate) fn insert_labels(
    cfg: &mut Map<String, Value>,
    classes: usize,
    names: Option<&[String]>,
) {
    let name = |c: usize| match names.and_then(|n| n.get(c)) {
        Some(n) => n.clone(),
        None => format!("LABEL_{c}"),
    };
    let id2label: Map<String, Value> = (0..classes)
        .map(|c| (c.to_string(), json!(name(c))))
        .collect();
    let label2id: Map<String, Value> = (0..classes).map(|c| (name(c), json!(c))).collect();
    cfg.insert("id2label".into(), Value::Object(id2label));
    cfg.insert("label2id".into(), Value::Object(label2id));
}

/// `preprocessor_config.json` for an image processor class: resize to the model's square resolution
/// (bilinear), rescale to [0, 1], normalise the way the converted model expects.
pub(crate) fn preprocessor(class: &str, image_size: usize, norm: InputNorm) -> Value {
    json!({
        "image_processor_type": class,
        "do_resize": true,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": norm.mean(),
        "image_std": norm.std(),
    })
}

/// The patch budget a NaFlex folder's `Siglip2ImageProcessor` resizes each image to by default: 256, the
/// default of transformers' `Siglip2ImageProcessor` and of the published `google/siglip2-*-naflex` processors.
/// It is a runtime choice, not part of the model (SigLIP 2 NaFlex was trained at several sequence lengths):
/// `processor(images=..., max_num_patches=N)` picks another per call.
pub const NAFLEX_MAX_PATCHES: usize = 256;

/// `preprocessor_config.json` for a NaFlex image processor class: resize each image, keeping its aspect ratio,
/// to at most `max_num_patches` patches of `patch` pixels (bilinear), rescale to [0, 1], normalise, cut into
/// (py, px, c)-flattened patches and pad to the budget.
pub(crate) fn naflex_preprocessor(
    class: &str,
    patch: usize,
    max_num_patches: usize,
    norm: InputNorm,
) -> Value {
    json!({
        "image_processor_type": class,
        "do_resize": true,
        "patch_size": patch,
        "max_num_patches": max_num_patches,
        "resample": 2,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": norm.mean(),
        "image_std": norm.std(),
    })
}

/// Makes `AutoProcessor` give the image processor alone, for a folder without tokenizer files: transformers'
/// SigLIP processor needs a tokenizer and fails without one ("not a string"), while a `processor_class` naming
/// the image processor is loaded as the processor itself.
pub(crate) fn image_only_processor(preprocessor: &mut Value) {
    let class = preprocessor
        .get("image_processor_type")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let (Value::Object(m), Some(class)) = (preprocessor, class) {
        m.insert("processor_class".into(), json!(class));
    }
}

/// The weights file inside the output directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The model configuration inside the output directory.
pub const CONFIG_FILE: &str = "config.json";
/// The image processor's configuration inside the output directory.
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// The `torch_dtype` name transformers writes in `config.json` for an output type.
pub(crate) fn dtype_name(d: OutDType) -> &'static str {
    match d {
        OutDType::F32 => "float32",
        OutDType::F16 => "float16",
        OutDType::BF16 => "bfloat16",
    }
}

/// A JSON side file's contents: pretty-printed, ending in a newline.
pub(crate) fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}
