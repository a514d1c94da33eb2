//! Tests of `vitconv verify`: every golden conversion passes, planted conversion bugs exit 1, bad input exits 2.
//!
//! Conversions come from the real `vitconv npz-to-pt`; the planted bugs are written by
//! reading a good conversion with `TensorFile`, changing bytes or metadata, and writing
//! it back with `Writer`, so each test breaks exactly one thing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use vitconv_tensors::{DType, Format, TensorFile, TensorSpec, Writer};

use crate::common::{
    assert_bad_input, fixture, npz_to_pt_args, scratch, stderr, stdout, stored, vitconv, zip_bytes,
};

/// The verifier's default tolerance for float32 (`vitconv_verify::F32_TOLERANCE`): the JSON's
/// bound must be this times max(1, max |reference|).
const F32_TOLERANCE: f64 = 1e-4;

/// Converts `case/checkpoint.npz` (or another file under fixtures/) into `out`.
fn convert(source: &str, out: &Path, layout: &str, extra: &[&str]) {
    let args = npz_to_pt_args(
        &fixture(source),
        out,
        layout,
        &[&["--quiet"], extra].concat(),
    );
    let o = vitconv(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "npz-to-pt {args:?} failed: {}",
        stderr(&o)
    );
}

/// Runs `verify --json --device cpu` and returns the exit code and the parsed report.
fn verify_json(source: &str, converted: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec![
        "verify".to_string(),
        fixture(source).display().to_string(),
        converted.display().to_string(),
        "--json".into(),
        "--device".into(),
        "cpu".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = vitconv(&args);
    let out = stdout(&o);
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        panic!(
            "verify {args:?} printed no JSON ({e}): stdout {out:?} stderr {}",
            stderr(&o)
        )
    });
    (o.status.code(), report)
}

fn num(report: &Value, path: &[&str]) -> f64 {
    let mut v = report;
    for p in path {
        v = &v[*p];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {report}"))
}

/// Asserts a judged pass whose logits and features are within the f32 bound.
fn assert_passes(source: &str, converted: &Path, extra: &[&str]) -> Value {
    let (code, r) = verify_json(source, converted, extra);
    assert_eq!(code, Some(0), "{source} vs {}: {r}", converted.display());
    assert_eq!(r["pass"], Value::Bool(true), "{r}");
    assert_eq!(r["judged"], Value::Bool(true), "{r}");
    assert_eq!(r["device"], "cpu");
    for part in ["logits", "features"] {
        if r[part].is_null() {
            continue;
        }
        let diff = num(&r, &[part, "max_abs_diff"]);
        assert!(
            diff <= num(&r, &[part, "bound"]),
            "{part} differ by {diff}: {r}"
        );
        if num(&r, &["tolerance"]) == F32_TOLERANCE {
            // Exact conversions in f32: float noise only.
            assert!(num(&r, &[part, "cosine"]) > 0.999_999, "{r}");
            assert_eq!(num(&r, &[part, "top1_agreement"]), 1.0, "{r}");
        }
    }
    assert!(
        !r["features"].is_null(),
        "features are always compared: {r}"
    );
    r
}

/// Asserts exit 1 (a real mismatch) with `pass: false`.
fn assert_caught(source: &str, converted: &Path, extra: &[&str]) -> Value {
    let (code, r) = verify_json(source, converted, extra);
    assert_eq!(
        code,
        Some(1),
        "planted bug in {} not caught: {r}",
        converted.display()
    );
    assert_eq!(r["pass"], Value::Bool(false), "{r}");
    r
}

// ---- every golden case, to every layout that holds it ----

#[test]
fn vit_token_passes_in_every_layout() {
    let dir = scratch();
    let d = dir.path();
    let golden = [
        "--input",
        &fixture("vit-token/input.npy").display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let expect = fixture("vit-token/logits.npy").display().to_string();
    for (layout, out) in [
        ("timm", d.join("t.safetensors")),
        ("timm", d.join("t.pt")),
        ("hf", d.join("hf")),
        ("open_clip", d.join("oc.safetensors")),
        ("open_clip", d.join("oc2.pt")),
    ] {
        convert("vit-token/checkpoint.npz", &out, layout, &[]);
        let r = assert_passes("vit-token/checkpoint.npz", &out, &[]);
        assert_eq!(r["layout"], layout);
        assert!(num(&r, &["logits", "max_abs_diff"]) <= F32_TOLERANCE, "{r}");
        // The golden input and the flax logits: the reference itself is held to the JAX output.
        let mut extra: Vec<&str> = golden.iter().map(String::as_str).collect();
        extra.extend(["--expect", expect.as_str()]);
        let r = assert_passes("vit-token/checkpoint.npz", &out, &extra);
        assert!(num(&r, &["expect", "max_abs_diff"]) <= F32_TOLERANCE, "{r}");
    }
}

#[test]
fn vit_mlp4_passes_and_clip_drift_is_reported_not_judged() {
    let dir = scratch();
    let d = dir.path();
    for (layout, out) in [
        ("timm", d.join("t.pt")),
        ("hf", d.join("hf")),
        ("open_clip", d.join("oc.pt")),
    ] {
        convert("vit-mlp4/checkpoint.npz", &out, layout, &[]);
        assert_passes("vit-mlp4/checkpoint.npz", &out, &[]);
    }
    let out = d.join("clip.pt");
    convert("vit-mlp4/checkpoint.npz", &out, "clip", &[]);
    let (code, r) = verify_json("vit-mlp4/checkpoint.npz", &out, &[]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["judged"], Value::Bool(false), "{r}");
    let drift = num(&r, &["logits", "max_abs_diff"]);
    // OpenAI's class adds ln_pre and QuickGELU: the drift is real and must show.
    assert!(
        drift > F32_TOLERANCE,
        "clip drift {drift} suspiciously small: {r}"
    );
    // Judged on request, against a tolerance it cannot meet, the same file fails.
    let (code, r) = verify_json("vit-mlp4/checkpoint.npz", &out, &["--tolerance", "1e-4"]);
    assert_eq!(code, Some(1), "{r}");
}

#[test]
fn vit_gap_passes_in_timm() {
    let dir = scratch();
    for name in ["g.pt", "g.safetensors"] {
        let out = dir.path().join(name);
        convert("vit-gap/checkpoint.npz", &out, "timm", &[]);
        assert_passes("vit-gap/checkpoint.npz", &out, &[]);
    }
}

#[test]
fn vit_prelogits_features_pass_when_the_head_is_dropped() {
    let dir = scratch();
    let d = dir.path();
    for (layout, out) in [
        ("timm", d.join("t.pt")),
        ("hf", d.join("hf")),
        ("open_clip", d.join("oc.pt")),
    ] {
        convert(
            "vit-prelogits/checkpoint.npz",
            &out,
            layout,
            &["--drop-head"],
        );
        let r = assert_passes("vit-prelogits/checkpoint.npz", &out, &[]);
        assert!(r["logits"].is_null(), "no head, no logits: {r}");
    }
}

#[test]
fn hybrids_pass_in_timm() {
    let dir = scratch();
    for case in ["hybrid-r2", "hybrid-root"] {
        let out = dir.path().join(format!("{case}.safetensors"));
        let src = format!("{case}/checkpoint.npz");
        convert(&src, &out, "timm", &[]);
        // timm's StdConv2dSame (eps 1e-8 under the root) and GroupNorm eps 1e-5 differ from
        // flax's, but every convolution is followed by a GroupNorm: the drift stays in the bound.
        assert_passes(&src, &out, &[]);
    }
}

#[test]
fn stored_variants_pass() {
    let dir = scratch();
    let d = dir.path();
    let opt = d.join("opt-hf");
    convert("vit-token-variants/opt-target-prefix.npz", &opt, "hf", &[]);
    assert_passes("vit-token-variants/opt-target-prefix.npz", &opt, &[]);
    let comp = d.join("comp.safetensors");
    convert("vit-token-variants/compressed.npz", &comp, "open_clip", &[]);
    assert_passes("vit-token-variants/compressed.npz", &comp, &[]);
    // bfloat16 weights: the reference reads them as they are, and must equal the flax logits of
    // the rounded weights.
    let bf = d.join("bf.pt");
    convert("vit-token-variants/bfloat16.npz", &bf, "timm", &[]);
    let input = fixture("vit-token/input.npy").display().to_string();
    let expect = fixture("vit-token-variants/bfloat16_logits.npy")
        .display()
        .to_string();
    let r = assert_passes(
        "vit-token-variants/bfloat16.npz",
        &bf,
        &["--input", &input, "--expect", &expect],
    );
    assert!(num(&r, &["expect", "max_abs_diff"]) <= F32_TOLERANCE, "{r}");
}

#[test]
fn options_that_keep_the_source_semantics_pass() {
    let dir = scratch();
    let d = dir.path();
    let cases: [(&str, &str, &[&str]); 5] = [
        ("imnet.safetensors", "timm", &["--input-norm", "imagenet"]),
        ("clipnorm.pt", "timm", &["--input-norm", "clip"]),
        ("unit.pt", "open_clip", &["--input-norm", "unit"]),
        ("projnone.pt", "open_clip", &["--proj", "none"]),
        ("r96.safetensors", "timm", &["--image-size", "96"]),
    ];
    for (name, layout, extra) in cases {
        let out = d.join(name);
        convert("vit-token/checkpoint.npz", &out, layout, extra);
        let r = assert_passes("vit-token/checkpoint.npz", &out, &[]);
        if name == "r96.safetensors" {
            assert_eq!(num(&r, &["image_size"]), 96.0, "{r}");
        }
    }
}

#[test]
fn narrower_dtypes_pass_their_own_tolerance_and_show_their_cost() {
    let dir = scratch();
    let out = dir.path().join("t.safetensors");
    convert("vit-token/checkpoint.npz", &out, "timm", &[]);
    let (code, f32_run) = verify_json("vit-token/checkpoint.npz", &out, &[]);
    assert_eq!(code, Some(0));
    let (code, bf16_run) = verify_json("vit-token/checkpoint.npz", &out, &["--dtype", "bf16"]);
    assert_eq!(code, Some(0), "{bf16_run}");
    assert_eq!(bf16_run["dtype"], "bf16");
    let (f32_diff, bf16_diff) = (
        num(&f32_run, &["logits", "max_abs_diff"]),
        num(&bf16_run, &["logits", "max_abs_diff"]),
    );
    assert!(
        bf16_diff > 10.0 * f32_diff,
        "bf16 forward should cost precision: f32 {f32_diff}, bf16 {bf16_diff}"
    );
    // Weights written in bf16 and run in f32 are judged at the bf16 tolerance by default...
    let bf = dir.path().join("bf.safetensors");
    convert(
        "vit-token/checkpoint.npz",
        &bf,
        "timm",
        &["--dtype", "bf16"],
    );
    let r = assert_passes("vit-token/checkpoint.npz", &bf, &[]);
    // ...and fail an explicit f32 tolerance, because the rounding is real.
    assert_caught("vit-token/checkpoint.npz", &bf, &["--tolerance", "1e-4"]);
    assert!(num(&r, &["logits", "max_abs_diff"]) > F32_TOLERANCE, "{r}");
}

// ---- planted bugs: each must exit 1 ----

/// Rewrites a converted safetensors file, passing each tensor (name, shape, f32 values) through
/// `edit`, and the metadata through `meta`.
fn plant(
    from: &Path,
    to: &Path,
    edit: impl Fn(&str, &[usize], &mut Vec<f32>),
    meta: impl Fn(&mut BTreeMap<String, String>),
) {
    let file = TensorFile::open(from).expect("converted file opens");
    let mut metadata = file.metadata().clone();
    meta(&mut metadata);
    let specs: Vec<TensorSpec> = file
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: DType::F32,
            shape: t.shape.clone(),
        })
        .collect();
    let mut w = Writer::create(to, Format::Safetensors, specs, metadata, false).expect("writer");
    for t in file.tensors() {
        let mut values = file.read_f32(&t.name).expect("reads");
        edit(&t.name, &t.shape, &mut values);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_next(&bytes).expect("writes");
    }
    w.finish().expect("finishes");
}

fn keep_meta(_: &mut BTreeMap<String, String>) {}

/// [`plant`] that edits one tensor, given its shape and values, and keeps the metadata.
fn plant_one(from: &Path, to: &Path, tensor: &str, edit: impl Fn(&[usize], &mut Vec<f32>)) {
    plant(
        from,
        to,
        |name, shape, v| {
            if name == tensor {
                edit(shape, v);
            }
        },
        keep_meta,
    );
}

/// A good timm conversion of vit-token (width 64, 4 heads of 16).
fn timm_token(dir: &Path) -> PathBuf {
    let out = dir.join("good.safetensors");
    convert("vit-token/checkpoint.npz", &out, "timm", &[]);
    assert_passes("vit-token/checkpoint.npz", &out, &[]);
    out
}

const D: usize = 64;
const HEADS: usize = 4;
const DH: usize = 16;

#[test]
fn planted_q_k_swap_is_caught() {
    let dir = scratch();
    let good = timm_token(dir.path());
    let bad = dir.path().join("qk.safetensors");
    plant(
        &good,
        &bad,
        |name, _, v| {
            if name == "blocks.0.attn.qkv.weight" || name == "blocks.0.attn.qkv.bias" {
                // Rows 0..D are q, D..2D are k; a row is D values for the weight, 1 for the bias.
                let row = if name.ends_with("weight") { D } else { 1 };
                let (q, rest) = v.split_at_mut(D * row);
                q.swap_with_slice(&mut rest[..D * row]);
            }
        },
        keep_meta,
    );
    assert_caught("vit-token/checkpoint.npz", &bad, &[]);
}

#[test]
fn planted_interleaved_heads_are_caught() {
    let dir = scratch();
    let good = dir.path().join("oc.safetensors");
    convert("vit-token/checkpoint.npz", &good, "open_clip", &[]);
    assert_passes("vit-token/checkpoint.npz", &good, &[]);
    let bad = dir.path().join("heads.safetensors");
    // The classic reshape bug: q/k/v rows laid out (head_dim, heads) instead of (heads, head_dim).
    plant(
        &good,
        &bad,
        |name, _, v| {
            let row = match name {
                "visual.transformer.resblocks.0.attn.in_proj_weight" => D,
                "visual.transformer.resblocks.0.attn.in_proj_bias" => 1,
                _ => return,
            };
            let old = v.clone();
            for part in 0..3 {
                for h in 0..HEADS {
                    for e in 0..DH {
                        let from = (part * D + h * DH + e) * row;
                        let to = (part * D + e * HEADS + h) * row;
                        v[to..to + row].copy_from_slice(&old[from..from + row]);
                    }
                }
            }
        },
        keep_meta,
    );
    assert_caught("vit-token/checkpoint.npz", &bad, &[]);
}

#[test]
fn planted_patch_kernel_transpose_is_caught() {
    let dir = scratch();
    let good = timm_token(dir.path());
    let bad = dir.path().join("hw.safetensors");
    plant_one(&good, &bad, "patch_embed.proj.weight", |shape, v| {
        let (p, planes) = (shape[3], shape[0] * shape[1]);
        let old = v.clone();
        for plane in 0..planes {
            for y in 0..p {
                for x in 0..p {
                    v[plane * p * p + y * p + x] = old[plane * p * p + x * p + y];
                }
            }
        }
    });
    let r = assert_caught("vit-token/checkpoint.npz", &bad, &[]);
    assert!(
        num(&r, &["logits", "max_abs_diff"]) > 100.0 * F32_TOLERANCE,
        "{r}"
    );
}

#[test]
fn planted_unfolded_conv_bias_is_caught() {
    let dir = scratch();
    let good = dir.path().join("oc.safetensors");
    // --input-norm unit keeps the patch bias as it is, so the fold is exactly embedding/bias.
    convert(
        "vit-token/checkpoint.npz",
        &good,
        "open_clip",
        &["--input-norm", "unit"],
    );
    assert_passes("vit-token/checkpoint.npz", &good, &[]);
    let src = TensorFile::open(fixture("vit-token/checkpoint.npz")).expect("source opens");
    let bias = src.read_f32("embedding/bias").expect("bias");
    let bad = dir.path().join("nofold.safetensors");
    plant_one(&good, &bad, "visual.positional_embedding", |_, v| {
        // Rows 1.. carry the folded bias (conv1 has none); take it out again.
        for (i, x) in v.iter_mut().enumerate().skip(D) {
            *x -= bias[i % D];
        }
    });
    assert_caught("vit-token/checkpoint.npz", &bad, &[]);
}

#[test]
fn planted_class_token_row_resized_with_the_grid_is_caught() {
    let dir = scratch();
    let good = dir.path().join("r96.safetensors");
    convert(
        "vit-token/checkpoint.npz",
        &good,
        "timm",
        &["--image-size", "96"],
    );
    assert_passes("vit-token/checkpoint.npz", &good, &[]);
    // The bug: the whole sequence, class row included, resampled as one line of 17 -> 37 rows
    // (linear, corners aligned) instead of the 4x4 grid alone to 6x6.
    let src = TensorFile::open(fixture("vit-token/checkpoint.npz")).expect("source opens");
    let pos = src
        .read_f32("Transformer/posembed_input/pos_embedding")
        .expect("pos");
    let (n_old, n_new) = (17usize, 37usize);
    let bad = dir.path().join("clsrow.safetensors");
    plant_one(&good, &bad, "pos_embed", |_, v| {
        for i in 0..n_new {
            let t = i as f64 * (n_old - 1) as f64 / (n_new - 1) as f64;
            let (lo, frac) = (t.floor() as usize, t - t.floor());
            let hi = (lo + 1).min(n_old - 1);
            for c in 0..D {
                let a = f64::from(pos[lo * D + c]);
                let b = f64::from(pos[hi * D + c]);
                v[i * D + c] = (a + (b - a) * frac) as f32;
            }
        }
    });
    assert_caught("vit-token/checkpoint.npz", &bad, &[]);
}

/// LayerNorm eps 1e-12 declared instead of 1e-6. The inputs of every LayerNorm here have
/// variance of order one, so the eps moves each normalised value by about 5e-7 relative:
/// measured on vit-token (timm, random inputs) the logits move by about 1e-7, far inside the
/// 1e-4 tolerance. The verifier must still run with the declared eps (the diff changes) and
/// judge the result by its bound; it does not, and cannot honestly, fail this file.
#[test]
fn declared_layer_norm_eps_is_used_and_measured() {
    let dir = scratch();
    let good = timm_token(dir.path());
    let bad = dir.path().join("eps.safetensors");
    plant(
        &good,
        &bad,
        |_, _, _| {},
        |meta| {
            let config = meta.get_mut("vitconv.config").expect("config metadata");
            let mut v: Value = serde_json::from_str(config).expect("json");
            v["layer_norm_eps"] = serde_json::json!(1e-12);
            *config = v.to_string();
        },
    );
    let (_, good_r) = verify_json("vit-token/checkpoint.npz", &good, &[]);
    let (code, bad_r) = verify_json("vit-token/checkpoint.npz", &bad, &[]);
    let (g, b) = (
        num(&good_r, &["features", "max_abs_diff"]),
        num(&bad_r, &["features", "max_abs_diff"]),
    );
    assert_ne!(g, b, "the declared eps was not used: {bad_r}");
    let within = num(&bad_r, &["logits", "max_abs_diff"]) <= num(&bad_r, &["logits", "bound"]);
    assert_eq!(code, Some(if within { 0 } else { 1 }), "{bad_r}");
    eprintln!(
        "eps 1e-12 instead of 1e-6: logits max abs diff {} (correct file: {})",
        num(&bad_r, &["logits", "max_abs_diff"]),
        num(&good_r, &["logits", "max_abs_diff"])
    );
}

#[test]
fn a_failing_run_prints_the_table_and_says_fail() {
    let dir = scratch();
    let good = timm_token(dir.path());
    let bad = dir.path().join("zero.safetensors");
    plant_one(&good, &bad, "norm.bias", |_, v| {
        v.iter_mut().for_each(|x| *x += 0.5)
    });
    let o = vitconv(
        ["verify", "--device", "cpu"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                fixture("vit-token/checkpoint.npz").display().to_string(),
                bad.display().to_string(),
            ]),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "max abs diff",
        "cosine",
        "top-1",
        "top-5",
        "FAIL",
        "cpu",
        "f32",
    ] {
        assert!(out.contains(needle), "table lacks {needle:?}: {out}");
    }
}

#[test]
fn decoded_images_reach_both_sides_normalised_their_way() {
    let dir = scratch();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).expect("mkdir");
    // Non-square pictures: the verifier resizes the shorter side and centre-crops.
    for (i, (w, h)) in [(80u32, 64u32), (64, 96)].into_iter().enumerate() {
        let pixels: Vec<u8> = (0..w * h * 3)
            .map(|k| ((k * 37 + i as u32 * 101) % 251) as u8)
            .collect();
        std::fs::write(images.join(format!("{i}.png")), png_rgb(w, h, &pixels))
            .expect("writes png");
    }
    let dir_arg = images.display().to_string();
    // open_clip declares CLIP's mean/std (the default --input-norm clip), timm the source's own.
    for (layout, name) in [("timm", "t.pt"), ("open_clip", "oc.pt")] {
        let out = dir.path().join(name);
        convert("vit-token/checkpoint.npz", &out, layout, &[]);
        let r = assert_passes("vit-token/checkpoint.npz", &out, &["--images", &dir_arg]);
        assert_eq!(num(&r, &["batch"]), 2.0, "{r}");
        let mean = r["input_norm"]["mean"][0].as_f64().expect("mean");
        assert_eq!(mean == 0.5, layout == "timm", "{r}");
    }
}

/// An 8-bit RGB PNG with stored (uncompressed) deflate blocks.
fn png_rgb(w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    for row in rgb.chunks((w * 3) as usize) {
        raw.push(0); // filter: none
        raw.extend(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend((block.len() as u16).to_le_bytes());
        z.extend((!(block.len() as u16)).to_le_bytes());
        z.extend(*block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend(((b << 16) | a).to_be_bytes());
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", ihdr), (b"IDAT", z), (b"IEND", Vec::new())] {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(&data);
        png.extend(&body);
        png.extend(crc32fast::hash(&body).to_be_bytes());
    }
    png
}

// ---- bad input: exit 2, one line ----

#[test]
fn another_architecture_is_bad_input() {
    let dir = scratch();
    let out = dir.path().join("mlp4.pt");
    convert("vit-mlp4/checkpoint.npz", &out, "timm", &[]);
    let o = vitconv([
        "verify".to_string(),
        fixture("vit-token/checkpoint.npz").display().to_string(),
        out.display().to_string(),
        "--device".into(),
        "cpu".into(),
    ]);
    assert_bad_input(&o, "does not hold the architecture");
}

#[test]
fn missing_files_are_bad_input() {
    let dir = scratch();
    let good = timm_token(dir.path());
    let missing = dir.path().join("nope.safetensors");
    let o = vitconv([
        "verify".to_string(),
        fixture("vit-token/checkpoint.npz").display().to_string(),
        missing.display().to_string(),
    ]);
    assert_bad_input(&o, "not found");
    let o = vitconv([
        "verify".to_string(),
        fixture("nope/checkpoint.npz").display().to_string(),
        good.display().to_string(),
    ]);
    assert_bad_input(&o, "not found");
}

#[test]
fn a_pickle_with_a_disallowed_global_is_bad_input() {
    let dir = scratch();
    let evil = dir.path().join("evil.pt");
    // protocol 2: GLOBAL os.system, the string "true", TUPLE1, REDUCE, STOP.
    let pickle = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.".to_vec();
    std::fs::write(
        &evil,
        zip_bytes(&[
            stored("archive/data.pkl", pickle),
            stored("archive/byteorder", b"little".to_vec()),
        ]),
    )
    .expect("writes");
    let o = vitconv([
        "verify".to_string(),
        fixture("vit-token/checkpoint.npz").display().to_string(),
        evil.display().to_string(),
    ]);
    assert_bad_input(&o, "os.system");
}

#[test]
fn a_non_square_image_request_is_bad_input() {
    let dir = scratch();
    let good = timm_token(dir.path());
    let o = vitconv([
        "verify".to_string(),
        fixture("vit-token/checkpoint.npz").display().to_string(),
        good.display().to_string(),
        "--images".into(),
        dir.path().display().to_string(),
        "--image-size".into(),
        "64x48".into(),
    ]);
    assert_bad_input(&o, "not square");
}

#[test]
fn bad_options_are_bad_input() {
    let dir = scratch();
    let good = timm_token(dir.path());
    let src = fixture("vit-token/checkpoint.npz").display().to_string();
    let good = good.display().to_string();
    let o = vitconv(["verify", &src, &good, "--layout", "keras"]);
    assert_bad_input(&o, "--layout keras");
    let o = vitconv(["verify", &src, &good, "--dtype", "f8"]);
    assert_bad_input(&o, "--dtype f8");
    let o = vitconv(["verify", &src, &good, "--device", "tpu"]);
    assert_bad_input(&o, "--device tpu");
    let input = fixture("vit-gap/input.npy").display().to_string();
    let o = vitconv(["verify", &src, &good, "--input", &input]);
    assert_bad_input(&o, "NHWC");
}

// ---- big_vision sources ----

/// The largest difference an exact big_vision conversion may show on CPU in float32 (the bound).
const BV_EXACT: f64 = 1e-5;

/// A big_vision golden case's file, under fixtures/big_vision/.
fn bv(rel: &str) -> String {
    format!("big_vision/{rel}")
}

/// `--input` with the case's golden pixels.
fn bv_input(case: &str) -> Vec<String> {
    vec![
        "--input".into(),
        fixture(&bv(&format!("{case}/input.npy")))
            .display()
            .to_string(),
    ]
}

/// Asserts a judged pass whose every compared output is within [`BV_EXACT`]; returns the report.
fn assert_exact(source: &str, converted: &Path, extra: &[&str]) -> Value {
    let r = assert_passes(source, converted, extra);
    for part in ["logits", "features"] {
        if !r[part].is_null() {
            let diff = num(&r, &[part, "max_abs_diff"]);
            assert!(diff < BV_EXACT, "{part} differ by {diff}: {r}");
        }
    }
    r
}

/// Where a conversion to `layout` goes: a file, or a directory for hf.
fn out_path(dir: &Path, name: &str, layout: &str) -> PathBuf {
    if layout == "hf" {
        dir.join(name)
    } else {
        dir.join(format!("{name}.safetensors"))
    }
}

#[test]
fn big_vision_cases_pass_in_every_layout_that_holds_them() {
    let dir = scratch();
    let d = dir.path();
    // (source, input case, layouts, conversion options); CLIP is refused for all three (no class
    // token, an MLP that is not 4x, a MAP head), open_clip for gap and map.
    let runs: [(&str, &str, &[&str], &[&str]); 7] = [
        (
            "bv-vit-gap-sincos/checkpoint.npz",
            "bv-vit-gap-sincos",
            &["timm", "hf"],
            &["--image-size", "32"],
        ),
        (
            "bv-vit-tok-scan/checkpoint.npz",
            "bv-vit-tok-scan",
            &["timm", "hf", "open_clip"],
            &[],
        ),
        (
            "bv-vit-tok-scan/variants/unrolled.npz",
            "bv-vit-tok-scan",
            &["timm", "hf", "open_clip"],
            &[],
        ),
        (
            "bv-vit-tok-scan/variants/no-prefix.npz",
            "bv-vit-tok-scan",
            &["timm", "hf", "open_clip"],
            &[],
        ),
        (
            "bv-vit-tok-scan/variants/train-state.npz",
            "bv-vit-tok-scan",
            &["timm", "hf", "open_clip"],
            &[],
        ),
        (
            "bv-vit-tok-scan/variants/bfloat16.npz",
            "bv-vit-tok-scan",
            &["timm", "hf"],
            &[],
        ),
        (
            "bv-vit-map-scan/checkpoint.npz",
            "bv-vit-map-scan",
            &["timm", "hf"],
            &["--drop-head"],
        ),
    ];
    for (i, (source, case, layouts, opts)) in runs.iter().enumerate() {
        let input = bv_input(case);
        let input: Vec<&str> = input.iter().map(String::as_str).collect();
        for layout in layouts.iter() {
            let out = out_path(d, &format!("{i}-{layout}"), layout);
            convert(&bv(source), &out, layout, opts);
            // A bf16 source holds bf16 values: written as f32 they are exact, so the f32 bound holds.
            let r = assert_exact(&bv(source), &out, &input);
            assert_eq!(r["source"]["family"], "big_vision", "{r}");
            if source.contains("train-state") {
                let notes = r["notes"].to_string();
                assert!(notes.contains("opt/") && notes.contains("chrono/"), "{r}");
            }
        }
    }
}

#[test]
fn a_sincos_source_needs_an_image_size_from_the_file_or_the_option() {
    let dir = scratch();
    let good = dir.path().join("sincos.safetensors");
    let source = bv("bv-vit-gap-sincos/checkpoint.npz");
    convert(&source, &good, "timm", &["--image-size", "32"]);
    // The declared vitconv.config gives the size.
    assert_exact(&source, &good, &[]);
    // A record that states no size (null), verify refuses in one line naming --image-size, and the option
    // fills it in.
    let edited = |name: &str, edit: fn(&mut serde_json::Map<String, Value>)| {
        let path = dir.path().join(name);
        plant(
            &good,
            &path,
            |_, _, _| {},
            |m| {
                let mut config: Value =
                    serde_json::from_str(&m["vitconv.config"]).expect("config is JSON");
                edit(config.as_object_mut().expect("an object"));
                m.insert("vitconv.config".into(), config.to_string());
            },
        );
        path
    };
    let verify_cpu = |path: &std::path::Path| {
        vitconv([
            "verify".to_string(),
            fixture(&source).display().to_string(),
            path.display().to_string(),
            "--device".into(),
            "cpu".into(),
        ])
    };
    let bare = edited("bare.safetensors", |c| {
        c.insert("image_size".into(), Value::Null);
    });
    assert_bad_input(&verify_cpu(&bare), "--image-size");
    assert_exact(&source, &bare, &["--image-size", "32"]);
    // A record missing the field altogether is not read as "no size": the typed record names what it lacks.
    let missing = edited("missing.safetensors", |c| {
        c.remove("image_size");
    });
    assert_bad_input(&verify_cpu(&missing), "missing field `image_size`");
}

/// big_vision's sincos2d with `D/4` where big_vision divides by `D/4 - 1` (timm's own helper's choice).
fn sincos_wrong_denominator(h: usize, w: usize, d: usize) -> Vec<f32> {
    let q = d / 4;
    let omega: Vec<f64> = (0..q)
        .map(|i| 1.0 / 10_000f64.powf(i as f64 / q as f64))
        .collect();
    let mut out = Vec::with_capacity(h * w * d);
    for y in 0..h {
        for x in 0..w {
            let (x, y) = (x as f64, y as f64);
            out.extend(omega.iter().map(|o| (x * o).sin() as f32));
            out.extend(omega.iter().map(|o| (x * o).cos() as f32));
            out.extend(omega.iter().map(|o| (y * o).sin() as f32));
            out.extend(omega.iter().map(|o| (y * o).cos() as f32));
        }
    }
    out
}

#[test]
fn planted_sincos_with_the_wrong_denominator_is_caught() {
    let dir = scratch();
    let good = dir.path().join("sincos.safetensors");
    let source = bv("bv-vit-gap-sincos/checkpoint.npz");
    convert(&source, &good, "timm", &["--image-size", "32"]);
    assert_exact(&source, &good, &[]);
    let bad = dir.path().join("sincos-d4.safetensors");
    // A 4x4 grid of width 64.
    plant_one(&good, &bad, "pos_embed", |shape, v| {
        assert_eq!(shape, &[1, 16, 64]);
        *v = sincos_wrong_denominator(4, 4, 64);
    });
    assert_caught(&source, &bad, &[]);
}

/// Copies an hf directory with its `model.safetensors` edited by `edit` (name, shape, values).
fn plant_dir(from: &Path, to: &Path, edit: impl Fn(&str, &[usize], &mut Vec<f32>)) {
    std::fs::create_dir_all(to).expect("creates the directory");
    for entry in std::fs::read_dir(from).expect("lists") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name != "model.safetensors" {
            std::fs::copy(entry.path(), to.join(&name)).expect("copies");
        }
    }
    plant(
        &from.join("model.safetensors"),
        &to.join("model.safetensors"),
        edit,
        keep_meta,
    );
}

#[test]
fn planted_class_token_position_embedding_is_caught() {
    // big_vision adds no position embedding to its class token; layouts whose table has a class
    // row hold that as a zero row. Giving the class token the first patch's row must be caught.
    let dir = scratch();
    let source = bv("bv-vit-tok-scan/checkpoint.npz");
    let input = bv_input("bv-vit-tok-scan");
    let input: Vec<&str> = input.iter().map(String::as_str).collect();
    let give_class_row = |shape: &[usize], v: &mut Vec<f32>| {
        let d = *shape.last().expect("2-D or 3-D");
        let (class_row, rest) = v.split_at_mut(d);
        assert!(
            class_row.iter().all(|x| *x == 0.0),
            "the class row is not zero"
        );
        class_row.copy_from_slice(&rest[..d]);
    };
    let hf = dir.path().join("hf");
    convert(&source, &hf, "hf", &[]);
    assert_exact(&source, &hf, &input);
    let bad = dir.path().join("hf-class-pos");
    plant_dir(&hf, &bad, |name, shape, v| {
        if name == "vit.embeddings.position_embeddings" {
            give_class_row(shape, v);
        }
    });
    assert_caught(&source, &bad, &input);
    let oc = dir.path().join("oc.safetensors");
    convert(&source, &oc, "open_clip", &[]);
    assert_exact(&source, &oc, &input);
    let bad = dir.path().join("oc-class-pos.safetensors");
    plant_one(&oc, &bad, "visual.positional_embedding", give_class_row);
    std::fs::copy(
        dir.path().join("oc.open_clip.json"),
        dir.path().join("oc-class-pos.open_clip.json"),
    )
    .expect("copies the open_clip config");
    assert_caught(&source, &bad, &input);
    // timm holds the class token without a row (no_embed_class=True); declaring
    // no_embed_class=False and giving pos_embed a class row copied from the first patch's is the
    // same bug in a file timm loads.
    let timm = dir.path().join("timm.safetensors");
    convert(&source, &timm, "timm", &[]);
    assert_exact(&source, &timm, &input);
    let file = TensorFile::open(&timm).expect("opens");
    let pos = file.read_f32("pos_embed").expect("reads");
    let d = *file
        .get("pos_embed")
        .expect("has pos_embed")
        .shape
        .last()
        .expect("3-D");
    let rows = pos.len() / d;
    let mut with_class = pos[..d].to_vec();
    with_class.extend_from_slice(&pos);
    let bad = dir.path().join("timm-class-pos.safetensors");
    let mut metadata = file.metadata().clone();
    let mut kw: Value = serde_json::from_str(&metadata["vitconv.timm_kwargs"]).expect("JSON");
    kw["no_embed_class"] = Value::Bool(false);
    metadata.insert("vitconv.timm_kwargs".into(), kw.to_string());
    let specs: Vec<TensorSpec> = file
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: DType::F32,
            shape: if t.name == "pos_embed" {
                vec![1, rows + 1, d]
            } else {
                t.shape.clone()
            },
        })
        .collect();
    let mut w = Writer::create(&bad, Format::Safetensors, specs, metadata, false).expect("writer");
    for t in file.tensors() {
        let values = if t.name == "pos_embed" {
            with_class.clone()
        } else {
            file.read_f32(&t.name).expect("reads")
        };
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_next(&bytes).expect("writes");
    }
    w.finish().expect("finishes");
    assert_caught(&source, &bad, &input);
}

#[test]
fn planted_map_probe_q_k_swap_is_caught() {
    let dir = scratch();
    let source = bv("bv-vit-map-scan/checkpoint.npz");
    let input = bv_input("bv-vit-map-scan");
    let input: Vec<&str> = input.iter().map(String::as_str).collect();
    const MAP_D: usize = 48;
    // timm: the latent's q projection trades places with the keys' half of the fused kv.
    let timm = dir.path().join("map.safetensors");
    convert(&source, &timm, "timm", &["--drop-head"]);
    assert_exact(&source, &timm, &input);
    let good = TensorFile::open(&timm).expect("opens");
    let bad = dir.path().join("map-qk.safetensors");
    plant(
        &timm,
        &bad,
        |name, _, v| {
            let (q, kv, row) = match name {
                "attn_pool.q.weight" | "attn_pool.kv.weight" => {
                    ("attn_pool.q.weight", "attn_pool.kv.weight", MAP_D)
                }
                "attn_pool.q.bias" | "attn_pool.kv.bias" => {
                    ("attn_pool.q.bias", "attn_pool.kv.bias", 1)
                }
                _ => return,
            };
            if name == q {
                *v = good.read_f32(kv).expect("reads")[..MAP_D * row].to_vec();
            } else {
                let q = good.read_f32(q).expect("reads");
                v[..MAP_D * row].copy_from_slice(&q);
            }
        },
        keep_meta,
    );
    assert_caught(&source, &bad, &input);
    // hf: rows q and k of the pooling head's in_proj trade places.
    let hf = dir.path().join("map-hf");
    convert(&source, &hf, "hf", &["--drop-head"]);
    assert_exact(&source, &hf, &input);
    let bad = dir.path().join("map-hf-qk");
    plant_dir(&hf, &bad, |name, _, v| {
        let row = match name {
            "head.attention.in_proj_weight" | "vision_model.head.attention.in_proj_weight" => MAP_D,
            "head.attention.in_proj_bias" | "vision_model.head.attention.in_proj_bias" => 1,
            _ => return,
        };
        let (q, rest) = v.split_at_mut(MAP_D * row);
        q.swap_with_slice(&mut rest[..MAP_D * row]);
    });
    assert_caught(&source, &bad, &input);
}

#[test]
fn planted_scan_slice_off_by_one_is_caught() {
    // Block i given block i+1's weights, as a stack sliced one step too far would.
    let dir = scratch();
    let source = bv("bv-vit-tok-scan/checkpoint.npz");
    let input = bv_input("bv-vit-tok-scan");
    let input: Vec<&str> = input.iter().map(String::as_str).collect();
    let timm = dir.path().join("tok.safetensors");
    convert(&source, &timm, "timm", &[]);
    assert_exact(&source, &timm, &input);
    let good = TensorFile::open(&timm).expect("opens");
    let bad = dir.path().join("tok-shift.safetensors");
    plant(
        &timm,
        &bad,
        |name, _, v| {
            if let Some(rest) = name.strip_prefix("blocks.1.") {
                *v = good.read_f32(&format!("blocks.2.{rest}")).expect("reads");
            }
        },
        keep_meta,
    );
    assert_caught(&source, &bad, &input);
    // The same in a SigLIP classifier's layers.
    let sincos = bv("bv-vit-gap-sincos/checkpoint.npz");
    let hf = dir.path().join("gap-hf");
    convert(&sincos, &hf, "hf", &["--image-size", "32"]);
    assert_exact(&sincos, &hf, &[]);
    let good = TensorFile::open(hf.join("model.safetensors")).expect("opens");
    let bad = dir.path().join("gap-hf-shift");
    plant_dir(&hf, &bad, |name, _, v| {
        if let Some(rest) = name.strip_prefix("vision_model.encoder.layers.0.") {
            *v = good
                .read_f32(&format!("vision_model.encoder.layers.1.{rest}"))
                .expect("reads");
        }
    });
    assert_caught(&sincos, &bad, &[]);
}

#[test]
fn declared_settings_the_targets_cannot_run_are_bad_input() {
    let dir = scratch();
    let source = bv("bv-vit-map-scan/checkpoint.npz");
    let timm = dir.path().join("map.safetensors");
    convert(&source, &timm, "timm", &["--drop-head"]);
    // timm kwargs that change the forward in ways no Google checkpoint uses are refused, not ignored.
    let bad = dir.path().join("qk-norm.safetensors");
    plant(
        &timm,
        &bad,
        |_, _, _| {},
        |m| {
            let mut kw: Value = serde_json::from_str(&m["vitconv.timm_kwargs"]).expect("JSON");
            kw["qk_norm"] = Value::Bool(true);
            m.insert("vitconv.timm_kwargs".into(), kw.to_string());
        },
    );
    let src = fixture(&source).display().to_string();
    let o = vitconv([
        "verify",
        &src,
        &bad.display().to_string(),
        "--device",
        "cpu",
    ]);
    assert_bad_input(&o, "qk_norm");
    // A key timm's strict load would reject for the declared global_pool (fc_norm=False keeps
    // `norm` where it is, so the MAP head's weights are what is left over).
    let bad = dir.path().join("token-pool.safetensors");
    plant(
        &timm,
        &bad,
        |_, _, _| {},
        |m| {
            let mut kw: Value = serde_json::from_str(&m["vitconv.timm_kwargs"]).expect("JSON");
            kw["global_pool"] = Value::String("avg".into());
            kw["fc_norm"] = Value::Bool(false);
            m.insert("vitconv.timm_kwargs".into(), kw.to_string());
        },
    );
    let o = vitconv([
        "verify",
        &src,
        &bad.display().to_string(),
        "--device",
        "cpu",
    ]);
    assert_bad_input(&o, "attn_pool.latent");
    // A SiglipVisionModel without its head has no pooler_output to compare.
    let hf = dir.path().join("map-hf");
    convert(&source, &hf, "hf", &["--drop-head"]);
    let config_path = hf.join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("reads")).expect("JSON");
    config["vision_use_head"] = Value::Bool(false);
    std::fs::write(&config_path, config.to_string()).expect("writes");
    let o = vitconv(["verify", &src, &hf.display().to_string(), "--device", "cpu"]);
    assert_bad_input(&o, "vision_use_head");
}

#[test]
fn timm_folders_are_run_from_their_model_args() {
    let dir = scratch();
    let d = dir.path();
    for (i, (source, case, opts)) in [
        (
            "bv-vit-gap-sincos/checkpoint.npz",
            "bv-vit-gap-sincos",
            &["--image-size", "32"][..],
        ),
        ("bv-vit-tok-scan/checkpoint.npz", "bv-vit-tok-scan", &[][..]),
        (
            "bv-vit-map-scan/checkpoint.npz",
            "bv-vit-map-scan",
            &["--drop-head"][..],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let input = bv_input(case);
        let input: Vec<&str> = input.iter().map(String::as_str).collect();
        let folder = d.join(format!("folder-{i}"));
        convert(&bv(source), &folder, "timm", opts);
        assert!(folder.join("config.json").exists(), "not a timm folder");
        let r = assert_exact(&bv(source), &folder, &input);
        assert_eq!(r["layout"], "timm", "{r}");
    }
    // config.json's model_args decide the forward, as timm.create_model('local-dir:...') builds it:
    // average pooling declared there is run, and caught against the class-token source.
    let folder = d.join("folder-1");
    let config_path = folder.join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("reads")).expect("JSON");
    config["model_args"]["global_pool"] = Value::String("avg".into());
    config["model_args"]["fc_norm"] = Value::Bool(false);
    std::fs::write(&config_path, config.to_string()).expect("writes");
    let input = bv_input("bv-vit-tok-scan");
    let input: Vec<&str> = input.iter().map(String::as_str).collect();
    assert_caught(&bv("bv-vit-tok-scan/checkpoint.npz"), &folder, &input);
}

#[test]
fn resized_big_vision_conversions_pass() {
    let dir = scratch();
    // A learned table without a class row, resized 3x3 -> 6x6 the way the reference resizes it.
    let tok = dir.path().join("tok96.safetensors");
    let source = bv("bv-vit-tok-scan/checkpoint.npz");
    convert(&source, &tok, "timm", &["--image-size", "96"]);
    let r = assert_exact(&source, &tok, &[]);
    assert_eq!(num(&r, &["image_size"]), 96.0, "{r}");
    // sincos2d recomputed for the new grid: exact whether the reference reads the size from the
    // converted file or from --image-size at the source's own resolution.
    let sincos = dir.path().join("sincos64.safetensors");
    let source = bv("bv-vit-gap-sincos/checkpoint.npz");
    convert(&source, &sincos, "timm", &["--image-size", "64"]);
    assert_exact(&source, &sincos, &[]);
    let r = assert_exact(&source, &sincos, &["--image-size", "32"]);
    assert!(r["notes"].to_string().contains("sincos2d"), "{r}");
}

// ---- big_vision two-tower (SigLIP) sources ----

/// The two-tower f32 tolerance (`vitconv_verify::TWO_TOWER_F32_TOLERANCE`).
const TWO_TOWER_TOLERANCE: f64 = 1e-5;

/// `--input` and `--text-ids` with a SigLIP case's golden pixels and ids, plus `--expect` with its
/// golden logits (so the reference itself is held to big_vision's output).
fn siglip_golden(case: &str) -> Vec<String> {
    let mut args = bv_input(case);
    for (flag, file) in [
        ("--text-ids", "text.npy"),
        ("--expect", "logits_per_image.npy"),
    ] {
        args.push(flag.into());
        args.push(
            fixture(&bv(&format!("{case}/{file}")))
                .display()
                .to_string(),
        );
    }
    args
}

/// Random texts padded with EOS from the middle on (the first EOS is not the last position).
const PADDED_TEXT: [&str; 4] = ["--text-batch", "3", "--seed", "5"];

/// Asserts a judged two-tower pass with every output within the two-tower tolerance; returns the
/// report.
fn assert_two_tower_passes(source: &str, converted: &Path, extra: &[&str]) -> Value {
    let (code, r) = verify_json(source, converted, extra);
    assert_eq!(code, Some(0), "{source} vs {}: {r}", converted.display());
    assert_eq!(r["pass"], Value::Bool(true), "{r}");
    assert_eq!(num(&r, &["tolerance"]), TWO_TOWER_TOLERANCE, "{r}");
    let tt = &r["two_tower"];
    assert_eq!(tt["declared"], Value::Array(vec![]), "{r}");
    for part in ["image_embeds", "text_embeds", "logits_per_image"] {
        let diff = num(tt, &[part, "max_abs_diff"]);
        assert!(diff <= TWO_TOWER_TOLERANCE, "{part} differ by {diff}: {r}");
        assert_eq!(num(tt, &[part, "top1_agreement"]), 1.0, "{r}");
        eprintln!(
            "{source} vs {}: {part} max abs diff {diff:e}",
            converted.display()
        );
    }
    r
}

/// Asserts exit 1 with the declared `field` named in the report (and on the table's DECLARED line).
fn assert_declared_caught(source: &str, converted: &Path, extra: &[&str], field: &str) -> Value {
    let r = assert_caught(source, converted, extra);
    let fields: Vec<&str> = r["two_tower"]["declared"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["field"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(fields, vec![field], "{r}");
    r
}

/// Whether a two-tower report has an output beyond its bound.
fn apart(r: &Value) -> bool {
    ["image_embeds", "text_embeds", "logits_per_image"]
        .iter()
        .any(|p| r["two_tower"][p]["within"] == Value::Bool(false))
}

/// Copies a two-tower folder (an hf SiglipModel or an open_clip one) with its weights rewritten by
/// `edit` and its config JSON by `json`. An open_clip copy keeps naming the original image_tower
/// (its absolute `local-dir:` path), whose config it does not change.
fn plant_two_tower(
    from: &Path,
    to: &Path,
    edit: impl Fn(&str, &[usize], &mut Vec<f32>),
    json: impl Fn(&mut Value),
) {
    let (weights, config) = if from.join("open_clip_config.json").exists() {
        ("open_clip_model.safetensors", "open_clip_config.json")
    } else {
        ("model.safetensors", "config.json")
    };
    std::fs::create_dir_all(to).expect("creates the directory");
    for entry in std::fs::read_dir(from).expect("lists") {
        let entry = entry.expect("entry");
        if entry.path().is_file() && entry.file_name() != weights {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copies");
        }
    }
    plant(&from.join(weights), &to.join(weights), edit, keep_meta);
    let path = to.join(config);
    let mut value: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("reads")).expect("JSON");
    json(&mut value);
    std::fs::write(&path, value.to_string()).expect("writes");
}

fn same_config(_: &mut Value) {}

#[test]
fn siglip_conversions_pass_in_every_layout_that_holds_them() {
    let dir = scratch();
    let d = dir.path();
    // hf's SiglipModel has no image projection: only siglip-nohead fits it.
    for (case, layouts) in [
        ("siglip-tiny", &["open_clip"][..]),
        ("siglip-nohead", &["hf", "open_clip"][..]),
    ] {
        let source = bv(&format!("{case}/checkpoint.npz"));
        for layout in layouts {
            let out = d.join(format!("{case}-{layout}"));
            convert(&source, &out, layout, &[]);
            let golden = siglip_golden(case);
            let golden: Vec<&str> = golden.iter().map(String::as_str).collect();
            let r = assert_two_tower_passes(&source, &out, &golden);
            assert_eq!(r["layout"], *layout, "{r}");
            assert!(
                num(&r, &["expect", "max_abs_diff"]) <= TWO_TOWER_TOLERANCE,
                "{r}"
            );
            // Random pixels and EOS-padded random texts pass too.
            assert_two_tower_passes(&source, &out, &PADDED_TEXT);
        }
        // The image tower alone (timm), compared before normalisation.
        let out = d.join(format!("{case}-timm"));
        convert(&source, &out, "timm", &["--tower", "image"]);
        let input = bv_input(case);
        let input: Vec<&str> = input.iter().map(String::as_str).collect();
        let r = assert_exact(&source, &out, &input);
        assert!(r["two_tower"].is_null(), "{r}");
        assert_eq!(num(&r, &["tolerance"]), TWO_TOWER_TOLERANCE, "{r}");
        assert!(r["notes"].to_string().contains("image tower only"), "{r}");
        assert_eq!(
            r["logits"].is_null(),
            case == "siglip-nohead",
            "the image head's output is compared where there is one: {r}"
        );
    }
}

#[test]
fn planted_siglip_bugs_are_caught() {
    let dir = scratch();
    let d = dir.path();
    let case = "siglip-nohead";
    let source = bv(&format!("{case}/checkpoint.npz"));
    let golden = siglip_golden(case);
    let golden: Vec<&str> = golden.iter().map(String::as_str).collect();
    let hf = d.join("hf");
    convert(&source, &hf, "hf", &[]);
    let oc = d.join("oc");
    convert(&source, &oc, "open_clip", &[]);
    for good in [&hf, &oc] {
        assert_two_tower_passes(&source, good, &golden);
    }
    let hf_w = TensorFile::open(hf.join("model.safetensors")).expect("opens");
    let (t, b) = (
        hf_w.read_f32("logit_scale").expect("reads")[0],
        hf_w.read_f32("logit_bias").expect("reads")[0],
    );
    let swap = move |name: &str, _: &[usize], v: &mut Vec<f32>| match name {
        "logit_scale" => v[0] = b,
        "logit_bias" => v[0] = t,
        _ => {}
    };
    let shift = |tensor: &'static str| {
        move |name: &str, shape: &[usize], v: &mut Vec<f32>| {
            if name == tensor {
                v.rotate_left(*shape.last().expect("2-D"));
            }
        }
    };
    let keep = |_: &str, _: &[usize], _: &mut Vec<f32>| {};

    // t and b swapped, in both layouts.
    for (good, name) in [(&hf, "hf-tb"), (&oc, "oc-tb")] {
        let bad = d.join(name);
        plant_two_tower(good, &bad, swap, same_config);
        let r = assert_caught(&source, &bad, &golden);
        assert!(apart(&r), "{name}: {r}");
    }
    // The text position embedding shifted by one row.
    for (good, name, tensor) in [
        (
            &hf,
            "hf-pos",
            "text_model.embeddings.position_embedding.weight",
        ),
        (&oc, "oc-pos", "text.positional_embedding"),
    ] {
        let bad = d.join(name);
        plant_two_tower(good, &bad, shift(tensor), same_config);
        let r = assert_caught(&source, &bad, &golden);
        assert!(apart(&r), "{name}: {r}");
    }
    // LayerNorm eps 1e-5 declared: moves these models by less than the tolerance, caught by name.
    let bad = d.join("hf-eps");
    plant_two_tower(&hf, &bad, keep, |c| {
        c["text_config"]["layer_norm_eps"] = serde_json::json!(1e-5)
    });
    assert_declared_caught(&source, &bad, &golden, "text_config.layer_norm_eps");
    let bad = d.join("oc-eps");
    plant_two_tower(&oc, &bad, keep, |c| {
        c["model_cfg"]["text_cfg"]["norm_kwargs"]["eps"] = serde_json::json!(1e-5)
    });
    assert_declared_caught(&source, &bad, &golden, "model_cfg.text_cfg.norm_kwargs.eps");
    // open_clip's declared pooling and mask: token 0, the first EOS (on EOS-padded ids, where it
    // is not the last position), the causal mask switched on. Each is named and shows in the numbers.
    let text_cfg = |key: &'static str, value: Value| {
        move |c: &mut Value| {
            c["model_cfg"]["text_cfg"][key] = value.clone();
            c["model_cfg"]["text_cfg"]["eos_id"] = serde_json::json!(1);
        }
    };
    for (name, key, value, field) in [
        (
            "first",
            "pool_type",
            serde_json::json!("first"),
            "model_cfg.text_cfg.pool_type",
        ),
        (
            "eos",
            "pool_type",
            serde_json::json!("eos"),
            "model_cfg.text_cfg.pool_type",
        ),
        (
            "causal",
            "no_causal_mask",
            Value::Bool(false),
            "model_cfg.text_cfg.no_causal_mask",
        ),
    ] {
        let bad = d.join(format!("oc-{name}"));
        plant_two_tower(&oc, &bad, keep, text_cfg(key, value));
        let r = assert_declared_caught(&source, &bad, &PADDED_TEXT, field);
        assert!(apart(&r), "{name}: the numbers do not show it: {r}");
    }
    // The table names the field too.
    let bad = d.join("oc-causal");
    let o = vitconv([
        "verify".to_string(),
        fixture(&source).display().to_string(),
        bad.display().to_string(),
        "--device".into(),
        "cpu".into(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("DECLARED: model_cfg.text_cfg.no_causal_mask") && out.contains("FAIL"),
        "{out}"
    );
}

#[test]
fn siglip_bad_text_ids_and_mismatched_towers_are_bad_input() {
    let dir = scratch();
    let source = bv("siglip-nohead/checkpoint.npz");
    let oc = dir.path().join("oc");
    convert(&source, &oc, "open_clip", &[]);
    let src = fixture(&source).display().to_string();
    let oc_s = oc.display().to_string();
    // Pixels are not ids.
    let pixels = fixture(&bv("siglip-nohead/input.npy"))
        .display()
        .to_string();
    let o = vitconv([
        "verify",
        &src,
        &oc_s,
        "--device",
        "cpu",
        "--text-ids",
        &pixels,
    ]);
    assert_bad_input(&o, "text ids");
    let o = vitconv(["verify", &src, &oc_s, "--device", "cpu", "--eos-id", "100"]);
    assert_bad_input(&o, "--eos-id 100");
    // A single-tower source against a two-tower conversion.
    let single = fixture(&bv("bv-vit-map-scan/checkpoint.npz"))
        .display()
        .to_string();
    let o = vitconv(["verify", &single, &oc_s, "--device", "cpu"]);
    assert_bad_input(&o, "two towers");
    // siglip-tiny's image head against a SiglipModel that has none.
    let hf = dir.path().join("hf");
    convert(&source, &hf, "hf", &[]);
    let tiny = fixture(&bv("siglip-tiny/checkpoint.npz"))
        .display()
        .to_string();
    let o = vitconv([
        "verify",
        &tiny,
        &hf.display().to_string(),
        "--device",
        "cpu",
    ]);
    assert_bad_input(&o, "image projection");
}

// ---- checkpoint containers as the source ----

#[test]
fn containers_verify_as_their_source() {
    let dir = scratch();
    let d = dir.path();
    // (container, layout, conversion options)
    for (source, layout, opts) in [
        ("containers/orbax-vit-token/workdir", "timm", &[][..]),
        ("containers/msgpack-vit-token/checkpoint_100", "hf", &[][..]),
        (
            "containers/bv-vit-map-scan/workdir/checkpoint.bv",
            "timm",
            &["--drop-head"][..],
        ),
        (
            "containers/orbax-bv-v1-zarr3/ckpt",
            "timm",
            &["--drop-head"][..],
        ),
    ] {
        let out = d.join(format!("{}-{layout}", source.replace('/', "_")));
        let out = if layout == "hf" {
            out
        } else {
            out.with_extension("safetensors")
        };
        convert(source, &out, layout, opts);
        assert_passes(source, &out, &[]);
    }
    // A sharded two-tower `.bv`, against its open_clip folder, with the golden token ids and texts.
    let source = "containers/bv-siglip-tiny-sharded/workdir";
    let out = d.join("siglip-sharded-oc");
    convert(source, &out, "open_clip", &[]);
    let golden = siglip_golden("siglip-tiny");
    let golden: Vec<&str> = golden.iter().map(String::as_str).collect();
    assert_two_tower_passes(source, &out, &golden);
}

// ---- SigLIP 2 NaFlex ----

/// The golden SigLIP 2 NaFlex case.
const NAFLEX: &str = "siglip2/siglip2-naflex-tiny/checkpoint.npz";

/// The golden patches and ids, and the golden logits to hold the reference against.
fn naflex_golden() -> Vec<String> {
    let f = |n: &str| {
        fixture(&format!("siglip2/siglip2-naflex-tiny/{n}"))
            .display()
            .to_string()
    };
    vec![
        "--input".into(),
        f("patches.npy"),
        "--text-ids".into(),
        f("text.npy"),
        "--expect".into(),
        f("logits_per_image.npy"),
    ]
}

#[test]
fn siglip2_naflex_conversions_pass_and_planted_bugs_exit_1() {
    let dir = scratch();
    let d = dir.path();
    let hf = d.join("hf");
    convert(NAFLEX, &hf, "hf", &[]);
    let timm = d.join("timm.safetensors");
    convert(NAFLEX, &timm, "timm", &["--tower", "image"]);
    let golden = naflex_golden();
    let golden: Vec<&str> = golden.iter().map(String::as_str).collect();

    // hf Siglip2Model: both towers on the golden patches and ids, then on verify's own images.
    let (code, r) = verify_json(NAFLEX, &hf, &golden);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["layout"], "hf");
    for part in ["image_embeds", "text_embeds", "logits_per_image"] {
        assert!(
            num(&r, &["two_tower", part, "max_abs_diff"]) <= 1e-5,
            "{part}: {r}"
        );
    }
    assert_eq!(
        r["naflex"]["grids"],
        serde_json::json!([[4, 6], [3, 8], [6, 3]]),
        "{r}"
    );
    assert_eq!(r["expect"]["within"], Value::Bool(true), "{r}");
    for extra in [&[][..], &["--max-patches", "24", "--batch", "4"][..]] {
        let (code, r) = verify_json(NAFLEX, &hf, extra);
        assert_eq!(code, Some(0), "{extra:?}: {r}");
        assert_eq!(r["batch"], if extra.is_empty() { 2 } else { 4 }, "{r}");
    }

    // timm NaFlexVit: the image tower.
    let (code, r) = verify_json(NAFLEX, &timm, &golden);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["layout"], "timm");
    assert!(num(&r, &["features", "max_abs_diff"]) <= 1e-5, "{r}");

    // Planted bugs: a declared bicubic resize, a declared resize without antialias, and patches
    // flattened channel-first (the patch embedding's input axis reordered).
    let set_kwarg = |key: &'static str, value: Value| {
        move |m: &mut BTreeMap<String, String>| {
            let mut kw: Value = serde_json::from_str(&m["vitconv.timm_kwargs"]).expect("JSON");
            kw[key] = value.clone();
            m.insert("vitconv.timm_kwargs".into(), kw.to_string());
        }
    };
    let bicubic = d.join("bicubic.safetensors");
    plant(
        &timm,
        &bicubic,
        |_, _, _| {},
        set_kwarg("pos_embed_interp_mode", "bicubic".into()),
    );
    let r = assert_caught(NAFLEX, &bicubic, &golden);
    assert!(
        r["features"]["within"] == Value::Bool(false),
        "bicubic moves the features: {r}"
    );
    let no_aa = d.join("no-aa.safetensors");
    plant(
        &timm,
        &no_aa,
        |_, _, _| {},
        set_kwarg("pos_embed_antialias", Value::Bool(false)),
    );
    let r = assert_caught(NAFLEX, &no_aa, &golden);
    assert!(
        r["features"]["within"] == Value::Bool(false),
        "no antialias moves the features: {r}"
    );
    let channel_first = |shape: &[usize], v: &mut Vec<f32>| {
        let (rows, width) = (shape[0], shape[1]);
        let pp = width / 3;
        let old = v.clone();
        for o in 0..rows {
            for pix in 0..pp {
                for c in 0..3 {
                    v[o * width + c * pp + pix] = old[o * width + pix * 3 + c];
                }
            }
        }
    };
    let cyx = d.join("cyx.safetensors");
    plant_one(&timm, &cyx, "embeds.proj.weight", channel_first);
    assert_caught(NAFLEX, &cyx, &golden);
    let hf_cyx = d.join("hf-cyx");
    std::fs::create_dir_all(&hf_cyx).expect("creates");
    for name in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(hf.join(name), hf_cyx.join(name)).expect("copies");
    }
    plant_one(
        &hf.join("model.safetensors"),
        &hf_cyx.join("model.safetensors"),
        "vision_model.embeddings.patch_embedding.weight",
        channel_first,
    );
    let r = assert_caught(NAFLEX, &hf_cyx, &golden);
    assert_eq!(
        r["two_tower"]["image_embeds"]["within"],
        Value::Bool(false),
        "{r}"
    );

    // hf Siglip2VisionModel: the image tower alone, its MAP head's output (pooler_output) before normalisation.
    let hf_vision = d.join("hf-vision");
    convert(NAFLEX, &hf_vision, "hf", &["--tower", "image"]);
    let (code, r) = verify_json(NAFLEX, &hf_vision, &golden);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["layout"], "hf");
    assert!(num(&r, &["features", "max_abs_diff"]) <= 1e-5, "{r}");
    let (code, r) = verify_json(NAFLEX, &hf_vision, &[]);
    assert_eq!(code, Some(0), "{r}");
    // The same planted flatten order, and a declared erf GELU, are caught there too.
    let vision_bug = |name: &str| {
        let out = d.join(name);
        std::fs::create_dir_all(&out).expect("creates");
        for file in ["config.json", "preprocessor_config.json"] {
            std::fs::copy(hf_vision.join(file), out.join(file)).expect("copies");
        }
        out
    };
    let vision_cyx = vision_bug("hf-vision-cyx");
    plant_one(
        &hf_vision.join("model.safetensors"),
        &vision_cyx.join("model.safetensors"),
        "embeddings.patch_embedding.weight",
        channel_first,
    );
    let r = assert_caught(NAFLEX, &vision_cyx, &golden);
    assert_eq!(r["features"]["within"], Value::Bool(false), "{r}");
    let vision_erf = vision_bug("hf-vision-erf");
    std::fs::copy(
        hf_vision.join("model.safetensors"),
        vision_erf.join("model.safetensors"),
    )
    .expect("copies");
    let config = vision_erf.join("config.json");
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("reads")).expect("JSON");
    c["hidden_act"] = "gelu".into();
    std::fs::write(&config, c.to_string()).expect("writes");
    let r = assert_caught(NAFLEX, &vision_erf, &golden);
    assert!(r.to_string().contains("hidden_act"), "{r}");

    // --image-size means nothing to a NaFlex model.
    let o = vitconv([
        "verify",
        &fixture(NAFLEX).display().to_string(),
        &hf.display().to_string(),
        "--images",
        &fixture("siglip2/siglip2-naflex-tiny").display().to_string(),
        "--image-size",
        "32",
        "--device",
        "cpu",
    ]);
    assert_bad_input(&o, "--image-size does not apply");
}

// ---- PaliGemma sources ----

/// The PaliGemma golden cases (f32, and bf16 stored as `|V2`), under fixtures/siglip2/.
const PALIGEMMA: [&str; 2] = ["paligemma-tower-tiny", "paligemma-tower-tiny-bf16"];

#[test]
fn paligemma_image_towers_pass_in_hf_and_timm_token_by_token() {
    let dir = scratch();
    for case in PALIGEMMA {
        let source = format!("siglip2/{case}/checkpoint.npz");
        let input = [
            "--input".to_string(),
            fixture(&format!("siglip2/{case}/input.npy"))
                .display()
                .to_string(),
        ];
        let input: Vec<&str> = input.iter().map(String::as_str).collect();
        for layout in ["hf", "timm"] {
            let out = out_path(dir.path(), &format!("{case}-{layout}"), layout);
            convert(&source, &out, layout, &["--tower", "image"]);
            // The bf16 source's values are kept exactly (written as f32), so the f32 bound holds.
            let r = assert_exact(&source, &out, &input);
            assert!(!r["logits"].is_null(), "the projection is compared: {r}");
            assert!(
                r["notes"].to_string().contains("PaliGemma"),
                "the report says what was run: {r}"
            );
        }
    }
}

#[test]
fn a_planted_projector_transpose_is_caught() {
    let dir = scratch();
    let source = "siglip2/paligemma-tower-tiny/checkpoint.npz";
    let good = dir.path().join("good.safetensors");
    convert(source, &good, "timm", &["--tower", "image"]);
    assert_passes(source, &good, &[]);
    // head.weight [48, 72] read as if it were stored [72, 48]: the head's rows scrambled.
    let bad = dir.path().join("bad.safetensors");
    plant_one(&good, &bad, "head.weight", |shape, v| {
        let (rows, cols) = (shape[0], shape[1]);
        let orig = v.clone();
        for r in 0..rows {
            for c in 0..cols {
                v[r * cols + c] = orig[c * rows + r];
            }
        }
    });
    let r = assert_caught(source, &bad, &[]);
    assert!(!r["logits"]["within"].as_bool().unwrap_or(true), "{r}");
}

// ---- SigLIP 2, fixed resolution ----

#[test]
fn siglip2_gopt_passes_in_hf_open_clip_and_the_timm_tower() {
    // g-opt: image width 96 without img/head, text width 64 with txt/head 64 -> 96, Gemma's ids.
    let dir = scratch();
    let case = "siglip2/siglip2-gopt-tiny";
    let source = format!("{case}/checkpoint.npz");
    let arg = |flag: &str, file: &str| {
        [
            flag.to_string(),
            fixture(&format!("{case}/{file}")).display().to_string(),
        ]
    };
    let golden: Vec<String> = [
        arg("--input", "input.npy"),
        arg("--text-ids", "text.npy"),
        arg("--expect", "logits_per_image.npy"),
    ]
    .concat();
    let golden: Vec<&str> = golden.iter().map(String::as_str).collect();
    let tokenizer = fixture(&format!("{case}/tokenizer.model"))
        .display()
        .to_string();
    for layout in ["hf", "open_clip"] {
        let out = dir.path().join(layout);
        convert(&source, &out, layout, &["--tokenizer", &tokenizer]);
        let r = assert_two_tower_passes(&source, &out, &golden);
        assert_eq!(r["layout"], layout, "{r}");
        assert!(
            num(&r, &["expect", "max_abs_diff"]) <= TWO_TOWER_TOLERANCE,
            "{r}"
        );
        assert_two_tower_passes(&source, &out, &PADDED_TEXT);
    }
    let out = dir.path().join("timm.safetensors");
    convert(&source, &out, "timm", &["--tower", "image"]);
    let input = arg("--input", "input.npy");
    let input: Vec<&str> = input.iter().map(String::as_str).collect();
    assert_exact(&source, &out, &input);
}
