//! Tests of `vitconv npz-to-pt` and `inspect` on the SigLIP 2 NaFlex two-tower checkpoint
//! (fixtures/siglip2/siglip2-naflex-tiny): the transformers `Siglip2Model` folder and timm's `NaFlexVit` folder
//! (`--tower image`) with their weights, configs and the `vitconv.config` contract, the refusals (CLIP-style
//! layouts, open_clip, `--image-size`, a kernel whose rows are no RGB patch, a non-square grid), and the
//! inspect lines. The loaders themselves run on these folders in tests/python/test_naflex.py.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use vitconv_tensors::{Format, TensorFile, TensorSpec, Writer};

use crate::common::{
    assert_bad_input, fixture, listing, npz_to_pt, scratch, stderr, stdout, vitconv,
};

const NAFLEX: &str = "siglip2/siglip2-naflex-tiny/checkpoint.npz";

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("readable")).expect("JSON")
}

fn convert(out: &Path, layout: &str, extra: &[&str]) -> std::process::Output {
    npz_to_pt(&fixture(NAFLEX), out, layout, extra)
}

/// The fixture written again with `name` replaced by zeros of `shape`.
fn with_tensor(dst: &Path, name: &str, shape: &[usize]) {
    let f = TensorFile::open(fixture(NAFLEX)).expect("fixture");
    let specs = f
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: if t.name == name {
                shape.to_vec()
            } else {
                t.shape.clone()
            },
        })
        .collect();
    let mut w = Writer::create(dst, Format::Npz, specs, BTreeMap::new(), false).expect("writer");
    for t in f.tensors() {
        if t.name == name {
            w.write_next(&vec![0u8; shape.iter().product::<usize>() * 4])
                .expect("written");
        } else {
            w.write_next(&f.read(&t.name).expect("read"))
                .expect("written");
        }
    }
    w.finish().expect("finished");
}

fn weights(path: &Path) -> TensorFile {
    TensorFile::open(path).expect("weights")
}

fn shape(f: &TensorFile, name: &str) -> Vec<usize> {
    f.tensors()
        .iter()
        .find(|t| t.name == name)
        .map(|t| t.shape.clone())
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn config(f: &TensorFile) -> Value {
    serde_json::from_str(&f.metadata()[vitconv_convert::meta::CONFIG]).expect("config JSON")
}

/// The `vitconv.config` keys every NaFlex output declares, as verify reads them.
fn assert_naflex_contract(cfg: &Value) {
    assert_eq!(cfg["source_family"], "siglip2_naflex");
    assert_eq!(cfg["patch_embed"], "linear");
    assert_eq!(cfg["posemb"], "learned_grid");
    assert_eq!(cfg["pos_grid"], serde_json::json!([4, 4]));
    assert_eq!(cfg["pos_resize"], "bilinear_antialias");
    assert_eq!(cfg["patch_size"], 8);
    assert!(cfg["image_size"].is_null(), "{cfg}");
    assert_eq!(cfg["classifier"], "map");
}

#[test]
fn hf_writes_a_siglip2_model_folder() {
    let dir = scratch();
    let out = dir.path().join("hf");
    let o = convert(&out, "hf", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        listing(&out),
        [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json"
        ]
    );
    let cfg = json(&out.join("config.json"));
    assert_eq!(cfg["architectures"][0], "Siglip2Model");
    assert_eq!(cfg["model_type"], "siglip2");
    let v = &cfg["vision_config"];
    assert_eq!(v["model_type"], "siglip2_vision_model");
    assert_eq!(
        (v["num_patches"].as_u64(), v["patch_size"].as_u64()),
        (Some(16), Some(8))
    );
    assert_eq!(v["hidden_act"], "gelu_pytorch_tanh");
    assert_eq!(v["vision_use_head"], true);
    assert_eq!(v["layer_norm_eps"], 1e-6);
    assert!(v.get("image_size").is_none(), "{v}");
    assert_eq!(cfg["text_config"]["model_type"], "siglip2_text_model");
    assert_eq!(cfg["text_config"]["max_position_embeddings"], 16);
    let pre = json(&out.join("preprocessor_config.json"));
    assert_eq!(pre["image_processor_type"], "Siglip2ImageProcessor");
    assert_eq!(
        (pre["patch_size"].as_u64(), pre["max_num_patches"].as_u64()),
        (Some(8), Some(256))
    );
    assert_eq!(pre["image_mean"], serde_json::json!([0.5, 0.5, 0.5]));

    let f = weights(&out.join("model.safetensors"));
    let src = TensorFile::open(fixture(NAFLEX)).expect("source");
    let patch = "vision_model.embeddings.patch_embedding.weight";
    assert_eq!(shape(&f, patch), [64, 192]);
    // The Linear weight is the Dense kernel transposed: row o, column r = kernel[r, o].
    let (w, k) = (
        f.read_f32(patch).expect("w"),
        src.read_f32("params/img/embedding/kernel").expect("k"),
    );
    for (o, r) in [(0, 0), (5, 191), (63, 100)] {
        assert_eq!(w[o * 192 + r], k[r * 64 + o], "({o}, {r})");
    }
    let pos = "vision_model.embeddings.position_embedding.weight";
    assert_eq!(shape(&f, pos), [16, 64]);
    assert_eq!(
        f.read_f32(pos).expect("pos"),
        src.read_f32("params/img/pos_embedding").expect("grid")
    );
    assert_eq!(shape(&f, "text_model.head.weight"), [64, 64]);
    assert_eq!(
        f.read_f32("logit_bias").expect("b"),
        src.read_f32("params/b").expect("b")
    );
    assert_naflex_contract(&config(&f));
    assert_eq!(
        f.metadata()[vitconv_convert::meta::HF_ARCHITECTURE],
        "Siglip2Model"
    );
    assert!(stdout(&o).contains("Siglip2Model"), "{}", stdout(&o));
}

#[test]
fn hf_tower_image_writes_a_siglip2_vision_model() {
    let dir = scratch();
    let out = dir.path().join("hf-tower");
    let o = convert(&out, "hf", &["--tower", "image"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let cfg = json(&out.join("config.json"));
    assert_eq!(cfg["architectures"][0], "Siglip2VisionModel");
    assert_eq!(cfg["model_type"], "siglip2_vision_model");
    assert_eq!(cfg["num_patches"], 16);
    let f = weights(&out.join("model.safetensors"));
    assert_eq!(shape(&f, "embeddings.patch_embedding.weight"), [64, 192]);
    assert!(f
        .tensors()
        .iter()
        .all(|t| !t.name.starts_with("text_model")));
    assert_naflex_contract(&config(&f));
}

#[test]
fn timm_tower_image_writes_a_naflexvit_folder() {
    let dir = scratch();
    let out = dir.path().join("timm");
    let o = convert(&out, "timm", &["--tower", "image"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(listing(&out), ["config.json", "model.safetensors"]);
    let cfg = json(&out.join("config.json"));
    assert!(
        cfg["architecture"]
            .as_str()
            .is_some_and(|a| a.starts_with("naflexvit_")),
        "{cfg}"
    );
    let args = &cfg["model_args"];
    assert_eq!(args["pos_embed_grid_size"], serde_json::json!([4, 4]));
    assert_eq!(args["pos_embed_interp_mode"], "bilinear");
    assert_eq!(args["global_pool"], "map");
    assert_eq!(args["act_layer"], "gelu_tanh");
    assert_eq!(args["class_token"], false);
    assert_eq!(args["num_classes"], 0);
    assert_eq!(args["embed_proj_type"], "linear");
    assert_eq!(
        (
            args["patch_size"].as_u64(),
            args["embed_dim"].as_u64(),
            args["depth"].as_u64(),
            args["num_heads"].as_u64()
        ),
        (Some(8), Some(64), Some(2), Some(4))
    );
    assert_eq!(cfg["pretrained_cfg"]["first_conv"], "embeds.proj");
    assert_eq!(cfg["pretrained_cfg"]["fixed_input_size"], false);
    let f = weights(&out.join("model.safetensors"));
    assert_eq!(shape(&f, "embeds.proj.weight"), [64, 192]);
    assert_eq!(shape(&f, "embeds.pos_embed"), [1, 4, 4, 64]);
    assert_eq!(shape(&f, "attn_pool.latent"), [1, 1, 64]);
    assert!(f.tensors().iter().all(|t| !t.name.starts_with("head.")));
    assert_naflex_contract(&config(&f));
    let kwargs: Value =
        serde_json::from_str(&f.metadata()[vitconv_convert::meta::TIMM_KWARGS]).expect("kwargs");
    assert_eq!(
        &kwargs, args,
        "the folder and the metadata declare one model"
    );
    assert!(
        stdout(&o).contains("left out (--tower image)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn layouts_without_a_naflex_model_refuse_and_name_the_ones_with() {
    let dir = scratch();
    // The whole model: one-tower layouts offer --tower image and hf only (open_clip has no NaFlex model).
    for layout in ["timm", "clip"] {
        let out = dir.path().join(format!("{layout}.safetensors"));
        let o = convert(&out, layout, &[]);
        assert_bad_input(&o, "--tower image");
        assert!(
            stderr(&o).contains("--layout hf (Siglip2Model)"),
            "{}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("open_clip"), "{}", stderr(&o));
        assert!(!out.exists());
    }
    // The image tower alone still has no place in a CLIP-style tower.
    let out = dir.path().join("clip-tower.safetensors");
    let o = convert(&out, "clip", &["--tower", "image"]);
    assert_bad_input(&o, "a NaFlex tower");
    assert!(
        stderr(&o).contains("--layout timm --tower image (NaFlexVit)"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    for extra in [&[][..], &["--tower", "image"][..]] {
        let out = dir.path().join("oc");
        let o = convert(&out, "open_clip", extra);
        assert_bad_input(&o, "open_clip 3.3.0 has no NaFlex model");
        assert!(!out.exists());
    }
}

#[test]
fn options_a_naflex_model_has_no_place_for_are_refused() {
    let dir = scratch();
    let out = dir.path().join("hf");
    let o = convert(&out, "hf", &["--image-size", "64"]);
    assert_bad_input(&o, "no fixed resolution");
    assert!(stderr(&o).contains("4x4 position grid"), "{}", stderr(&o));
    let o = convert(
        &out,
        "timm",
        &["--tower", "image", "--input-norm", "imagenet"],
    );
    assert_bad_input(&o, "--input-norm");
    assert!(stderr(&o).contains("NaFlex"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn bad_kernel_rows_and_grids_are_named() {
    let dir = scratch();
    for (name, bad, needle) in [
        ("params/img/embedding/kernel", vec![190, 64], "p*p*3"),
        ("params/img/pos_embedding", vec![4, 5, 64], "[G, G, 64]"),
        ("params/img/pos_embedding", vec![4, 4, 32], "[G, G, 64]"),
    ] {
        let src = dir
            .path()
            .join(format!("bad-{}.npz", bad.iter().product::<usize>()));
        with_tensor(&src, name, &bad);
        let out = dir.path().join("out");
        for layout in ["hf", "timm"] {
            let o = npz_to_pt(&src, &out, layout, &["--tower", "image"]);
            assert_bad_input(&o, needle);
            assert!(stderr(&o).contains(name), "{}", stderr(&o));
            assert!(!out.exists());
        }
        // inspect still lists the tensors, without describing a model it cannot read.
        let o = vitconv(["inspect".as_ref(), src.as_os_str()]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(!stdout(&o).contains("SigLIP 2 NaFlex"), "{}", stdout(&o));
        assert!(stdout(&o).contains(name), "{}", stdout(&o));
    }
}

#[test]
fn inspect_describes_the_source_and_its_outputs() {
    let o = vitconv(["inspect".as_ref(), fixture(NAFLEX).as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "siglip2_naflex",
        "SigLIP 2 NaFlex",
        "no fixed resolution (4x4 position grid",
        "8x8x3 = 192 values -> 64 (a linear map",
        "the patch size is read off the kernel",
        "a learned 4x4 grid of 64, resized to each image's patch grid",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let dir = scratch();
    let hf = dir.path().join("hf");
    assert_eq!(convert(&hf, "hf", &[]).status.code(), Some(0));
    let timm = dir.path().join("timm");
    assert_eq!(
        convert(&timm, "timm", &["--tower", "image"]).status.code(),
        Some(0)
    );
    for (out, needles) in [
        (
            &hf,
            &[
                "transformers",
                "SigLIP 2 NaFlex",
                "Siglip2Model",
                "Siglip2ImageProcessor resize to at most 256 patches of 8 px",
            ][..],
        ),
        (
            &timm,
            &[
                "timm",
                "no fixed resolution (NaFlex: a learned 4x4 position grid",
                "naflexvit_",
                "NaFlexVit",
            ][..],
        ),
    ] {
        let o = vitconv(["inspect".as_ref(), out.as_os_str()]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let text = stdout(&o);
        for needle in needles {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
    }
}
