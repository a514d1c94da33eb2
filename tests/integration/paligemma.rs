//! Tests of `vitconv inspect` and `vitconv npz-to-pt` on PaliGemma checkpoints: the tiny golden files (f32,
//! and bf16 stored as numpy's `|V2`), and files with the exact keys and shapes of the released PaliGemma
//! 3B-224 and PaliGemma 2 3B-224 (read from `fixtures/siglip2/shapes/`, written as sparse safetensors files:
//! `inspect` reads headers only), also without the `params/` root and in mixed f32/f16 as the fine-tuning
//! colab saves them. Converting without `--tower image` is refused; with it, the LLM is left out and said so.
//! The loaders themselves are run on the outputs by tests/python/test_paligemma.py.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use vitconv_tensors::TensorFile;

use crate::common::{
    assert_bad_input, fixture, listing, npz_to_pt, scratch, stderr, stdout, vitconv,
};

const TINY: &str = "siglip2/paligemma-tower-tiny/checkpoint.npz";
const TINY_BF16: &str = "siglip2/paligemma-tower-tiny-bf16/checkpoint.npz";

/// A published file's keys and shapes (`shapes/*.json`), and the sizes its `model` object states.
fn published(name: &str) -> (Vec<(String, Vec<u64>)>, Value) {
    let path = fixture(&format!("siglip2/shapes/{name}.json"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("shapes file")).expect("JSON");
    let tensors = json["tensors"]
        .as_object()
        .expect("tensors")
        .iter()
        .map(|(k, v)| {
            let shape = v
                .as_array()
                .expect("shape")
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            (k.clone(), shape)
        })
        .collect();
    (tensors, json["model"].clone())
}

/// A safetensors file holding `tensors` (name, dtype, shape) whose data is a hole: the header is real, the
/// bytes after it are never written, so a file of billions of parameters costs nothing on disk.
fn sparse_safetensors(path: &Path, tensors: &[(String, &str, Vec<u64>)]) {
    let mut header = Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        let size = if *dtype == "F32" { 4 } else { 2 };
        let bytes = shape.iter().product::<u64>() * size;
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut head = (text.len() as u64).to_le_bytes().to_vec();
    head.extend(text);
    std::fs::write(path, &head).expect("header written");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("reopened");
    f.set_len(head.len() as u64 + offset).expect("sparse data");
}

/// The published file as a sparse safetensors file: as released (`params/` root, one dtype), or as the colab
/// saves it (no root, the image tower f32 and the LLM f16).
fn published_file(dir: &Path, name: &str, colab: bool) -> (PathBuf, Value) {
    let (tensors, model) = published(name);
    let bf16 = model["file"].as_str().unwrap_or_default().contains(".b16.");
    let tensors: Vec<(String, &str, Vec<u64>)> = tensors
        .into_iter()
        .map(|(k, shape)| {
            if colab {
                let k = k.trim_start_matches("params/").to_string();
                let dtype = if k.starts_with("llm/") { "F16" } else { "F32" };
                (k, dtype, shape)
            } else {
                (k, if bf16 { "BF16" } else { "F32" }, shape)
            }
        })
        .collect();
    let path = dir.join(format!(
        "{name}{}.safetensors",
        if colab { "-colab" } else { "" }
    ));
    sparse_safetensors(&path, &tensors);
    (path, model)
}

/// The summary line `inspect` prints for a file (`paligemma | ...`).
fn summary(path: &Path) -> String {
    let o = vitconv(["inspect".as_ref(), path.as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    out.lines()
        .find(|l| l.starts_with("paligemma | "))
        .unwrap_or_else(|| panic!("no paligemma summary in:\n{out}"))
        .to_string()
}

#[test]
fn inspect_reads_the_published_sizes_off_the_shapes() {
    let dir = scratch();
    for name in ["paligemma-3b-pt-224", "paligemma2-3b-pt-224"] {
        for colab in [false, true] {
            let (path, m) = published_file(dir.path(), name, colab);
            let line = summary(&path);
            let get = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{name}: {k}"));
            let grid = get("image") / get("patch");
            let generation = if m["post_norms"] == true {
                "PaliGemma 2"
            } else {
                "PaliGemma:"
            };
            assert!(line.contains(generation), "{line}");
            for want in [
                format!(
                    "image ViT-So400m/{} {} px ({grid}x{grid} = {} tokens)",
                    get("patch"),
                    get("image"),
                    grid * grid
                ),
                format!(
                    "width {}, {} layers, {} heads, mlp {}, head {} -> {} per token",
                    get("hidden"),
                    get("layers"),
                    get("heads"),
                    get("mlp"),
                    get("hidden"),
                    get("llm_width")
                ),
                format!(
                    "width {}, {} layers, {} heads, {} KV heads, head dim {}, mlp {}, vocab {}",
                    get("llm_width"),
                    get("llm_layers"),
                    get("llm_heads"),
                    get("llm_kv_heads"),
                    get("llm_head_dim"),
                    get("llm_mlp"),
                    get("vocab")
                ),
            ] {
                assert!(
                    line.contains(&want),
                    "{name} (colab {colab}): {want}\n{line}"
                );
            }
            let o = vitconv(["inspect".as_ref(), path.as_os_str()]);
            let out = stdout(&o);
            let (all, llm) = {
                let (t, _) = published(name);
                let llm = t
                    .iter()
                    .filter(|(k, _)| k.starts_with("params/llm/"))
                    .count();
                (t.len(), llm)
            };
            let mix = if colab {
                format!("stored dtypes: f32 x{}, f16 x{llm}", all - llm)
            } else if m["file"].as_str().unwrap_or_default().contains(".b16.") {
                format!("stored dtypes: bf16 x{all}")
            } else {
                format!("stored dtypes: f32 x{all}")
            };
            assert!(out.contains(&mix), "{name}: {mix}\n{out}");
            assert!(
                out.contains("language model not converted by vitconv"),
                "{out}"
            );
        }
    }
}

#[test]
fn the_tiny_files_are_recognised_with_their_dtypes() {
    let line = summary(&fixture(TINY));
    assert!(
        line.contains("PaliGemma: image ViT/14 28 px (2x2 = 4 tokens), width 72, 2 layers, 4 heads, mlp 308, head 72 -> 48 per token"),
        "{line}"
    );
    assert!(
        line.contains("LLM Gemma (not converted): width 48, 2 layers, 4 heads, 1 KV heads, head dim 16, mlp 96, vocab 300"),
        "{line}"
    );
    let o = vitconv(["inspect".as_ref(), fixture(TINY_BF16).as_os_str()]);
    let out = stdout(&o);
    assert!(out.contains("stored dtypes: bf16 x"), "{out}");
    assert!(
        out.contains("stored as |V2 (numpy void, read as bfloat16)"),
        "{out}"
    );
}

#[test]
fn converting_without_tower_image_is_refused_naming_the_llm() {
    let dir = scratch();
    for layout in ["hf", "timm"] {
        let out = dir.path().join(layout);
        let o = npz_to_pt(&fixture(TINY), &out, layout, &[]);
        assert_bad_input(&o, "--tower image");
        let err = stderr(&o);
        assert!(
            err.contains(
                "Gemma language model (57,648 parameters, 230.59 kB) is not converted by vitconv"
            ),
            "{err}"
        );
        assert!(!out.exists(), "{layout}: nothing written");
    }
}

#[test]
fn clip_style_layouts_refuse_the_unpooled_tower() {
    let dir = scratch();
    for layout in ["open_clip", "clip"] {
        let out = dir.path().join(format!("{layout}.safetensors"));
        let o = npz_to_pt(&fixture(TINY), &out, layout, &["--tower", "image"]);
        assert_bad_input(&o, "unpooled tower whose head projects every token");
        assert!(!out.exists(), "{layout}: nothing written");
    }
}

#[test]
fn tower_image_writes_the_vision_model_and_projector_and_reports_the_llm() {
    let dir = scratch();
    for (case, dtype) in [(TINY, "float32"), (TINY_BF16, "bfloat16")] {
        let out = dir.path().join(format!("hf-{dtype}"));
        let mut args: Vec<std::ffi::OsString> = vec![
            "npz-to-pt".into(),
            fixture(case).into(),
            out.clone().into(),
            "--layout".into(),
            "hf".into(),
            "--tower".into(),
            "image".into(),
        ];
        if dtype == "bfloat16" {
            args.extend(["--dtype".into(), "bf16".into()]);
        }
        let o = vitconv(args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let report = stdout(&o);
        assert!(
            report.contains("Gemma language model left out (--tower image; 57,648 parameters"),
            "{report}"
        );
        assert_eq!(
            listing(&out),
            [
                "config.json",
                "model.safetensors",
                "preprocessor_config.json"
            ]
        );
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("cfg"))
                .expect("JSON");
        assert_eq!(cfg["architectures"][0], "SiglipVisionModel");
        assert_eq!(cfg["model_type"], "siglip_vision_model");
        assert_eq!(cfg["vision_use_head"], false);
        assert_eq!(cfg["intermediate_size"], 308);
        assert_eq!(cfg["projection_dim"], 48);
        assert_eq!(cfg["hidden_act"], "gelu_pytorch_tanh");
        let f = TensorFile::open(out.join("model.safetensors")).expect("weights");
        let shape = |n: &str| {
            f.tensors()
                .iter()
                .find(|t| t.name == n)
                .map(|t| t.shape.clone())
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(shape("multi_modal_projector.linear.weight"), [48, 72]);
        assert_eq!(shape("multi_modal_projector.linear.bias"), [48]);
        assert_eq!(shape("embeddings.position_embedding.weight"), [4, 72]);
        assert!(f.tensors().iter().all(|t| !t.name.contains("llm")));
        // The bf16 source's values come through unchanged: the bias is the stored one.
        let src = TensorFile::open(fixture(case)).expect("source");
        assert_eq!(
            f.read_f32("multi_modal_projector.linear.bias")
                .expect("bias"),
            src.read_f32("params/img/head/bias").expect("bias")
        );
    }
}

#[test]
fn tower_image_to_timm_keeps_the_head_per_token() {
    let dir = scratch();
    let out = dir.path().join("timm.safetensors");
    let o = npz_to_pt(&fixture(TINY_BF16), &out, "timm", &["--tower", "image"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report = stdout(&o);
    assert!(report.contains("global_pool=''"), "{report}");
    assert!(report.contains("class_token=False"), "{report}");
    assert!(report.contains("num_classes=48"), "{report}");
    let f = TensorFile::open(&out).expect("weights");
    let kwargs: Value =
        serde_json::from_str(&f.metadata()["vitconv.timm_kwargs"]).expect("kwargs JSON");
    assert_eq!(kwargs["global_pool"], "");
    assert_eq!(kwargs["num_classes"], 48);
    assert_eq!(kwargs["act_layer"], "gelu_tanh");
}
