//! What both transformers layouts (`hf.rs` for ViT, `hf_siglip.rs` for SigLIP's vision tower) write into the
//! output directory: the file names, the dtype names of `config.json`, and the JSON formatting. Both layouts
//! import it, so neither imports the other for it.

use serde_json::Value;

use crate::options::OutDType;

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
