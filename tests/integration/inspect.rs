//! Tests of `vitconv inspect`: every format, grouping, JSON, filtering, statistics, bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use vitconv_tensors::{DType, Format, TensorFile, TensorSpec, Writer};

use crate::common::{
    assert_bad_input, fixture, scratch, stderr, stdout, stored, vitconv, zip_bytes,
};

/// Tolerance of `--stats` mean and std against f64 statistics computed here, relative to the data's spread.
const STATS_REL_TOL: f64 = 1e-5;

/// Every golden `.npz` this test suite inspects.
const GOLDEN: [&str; 9] = [
    "vit-token/checkpoint.npz",
    "vit-prelogits/checkpoint.npz",
    "vit-gap/checkpoint.npz",
    "vit-mlp4/checkpoint.npz",
    "hybrid-r2/checkpoint.npz",
    "hybrid-root/checkpoint.npz",
    "vit-token-variants/bfloat16.npz",
    "vit-token-variants/compressed.npz",
    "vit-token-variants/opt-target-prefix.npz",
];

fn inspect_json(args: &[&str]) -> Value {
    let mut all = vec!["inspect", "--json"];
    all.extend_from_slice(args);
    let o = vitconv(&all);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("--json prints one JSON object")
}

/// Writes `src` again in `format`, with the writer of the tensor crate.
fn rewrite(src: &Path, dst: &Path, format: Format) {
    let f = TensorFile::open(src).unwrap();
    let specs = f
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let mut w = Writer::create(dst, format, specs, BTreeMap::new(), false).unwrap();
    for t in f.tensors() {
        w.write_next(&f.read(&t.name).unwrap()).unwrap();
    }
    w.finish().unwrap();
}

/// (name, dtype, shape, bytes) of each tensor in a `--json` file entry.
fn listing(file: &Value) -> Vec<(String, String, Vec<u64>, u64)> {
    file["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["dtype"].as_str().unwrap().to_string(),
                t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect(),
                t["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn json_lists_every_golden_file_completely() {
    for rel in GOLDEN {
        let path = fixture(rel);
        let v = inspect_json(&[path.to_str().unwrap()]);
        let file = &v["files"][0];
        assert_eq!(file["format"], "npz", "{rel}");
        assert_eq!(file["path"], path.to_str().unwrap());
        let reference = TensorFile::open(&path).unwrap();
        let got = listing(file);
        assert_eq!(got.len(), reference.tensors().len(), "{rel}");
        for ((name, dtype, shape, bytes), t) in got.iter().zip(reference.tensors()) {
            assert_eq!(name, &t.name);
            assert_eq!(dtype, t.dtype.as_str());
            assert_eq!(
                shape,
                &t.shape.iter().map(|&d| d as u64).collect::<Vec<_>>()
            );
            assert_eq!(*bytes as usize, t.nbytes().unwrap());
        }
        // Every golden file is a vit_jax checkpoint: the summary must recognise it,
        // unless the detector is not there yet (then it is null, never absent).
        assert!(file.get("summary").is_some(), "{rel}: no summary field");
    }
}

#[test]
fn every_format_lists_the_same_tensors() {
    let dir = scratch();
    let src = fixture("vit-token/checkpoint.npz");
    let st = dir.path().join("w.safetensors");
    let pt = dir.path().join("w.pt");
    let npz = dir.path().join("w.npz");
    rewrite(&src, &st, Format::Safetensors);
    rewrite(&src, &pt, Format::Pt);
    rewrite(&src, &npz, Format::Npz);
    let npy = fixture("vit-token/input.npy");
    let v = inspect_json(&[
        src.to_str().unwrap(),
        st.to_str().unwrap(),
        pt.to_str().unwrap(),
        npz.to_str().unwrap(),
        npy.to_str().unwrap(),
    ]);
    let files = v["files"].as_array().unwrap();
    let formats: Vec<&str> = files
        .iter()
        .map(|f| f["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["npz", "safetensors", "pt", "npz", "npy"]);
    let reference = listing(&files[0]);
    for f in &files[1..4] {
        assert_eq!(listing(f), reference, "{}", f["path"]);
        // The summary depends on keys and shapes only, so it is the same for every format.
        assert_eq!(f["summary"], files[0]["summary"]);
    }
    assert_eq!(
        listing(&files[4]),
        vec![(
            "input".to_string(),
            "f32".to_string(),
            vec![2, 64, 64, 3],
            98304
        )]
    );
}

#[test]
fn table_has_totals_and_notes_bf16() {
    let o = vitconv([
        "inspect",
        fixture("vit-token-variants/bfloat16.npz").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"),
        "{out}"
    );
    assert!(out.contains("total: 40 tensors"), "{out}");
    assert!(out.contains("bf16 x40"), "{out}");
    assert!(
        out.contains("<V2"),
        "bf16 stored as void is not noted: {out}"
    );
}

#[test]
fn group_folds_numbered_blocks() {
    let path = fixture("vit-token/checkpoint.npz");
    let o = vitconv(["inspect", "--group", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Transformer/encoderblock_{0..1}/MlpBlock_3/Dense_0/kernel"),
        "{out}"
    );
    assert!(
        !out.contains("encoderblock_0/"),
        "a block was left unfolded: {out}"
    );

    let v = inspect_json(&["--group", path.to_str().unwrap()]);
    let groups = v["files"][0]["groups"].as_array().unwrap();
    let tensors = v["files"][0]["tensors"].as_array().unwrap();
    let folded: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(folded as usize, tensors.len());
    // vit-token has 2 blocks of 16 tensors each, plus 8 others.
    assert_eq!(groups.len(), 16 + 8);
    let bytes: u64 = groups.iter().map(|g| g["bytes"].as_u64().unwrap()).sum();
    assert_eq!(bytes, v["files"][0]["totals"]["bytes"].as_u64().unwrap());
}

#[test]
fn filter_selects_by_regex() {
    let path = fixture("vit-gap/checkpoint.npz");
    let v = inspect_json(&["--filter", "^head/", path.to_str().unwrap()]);
    let names: Vec<String> = listing(&v["files"][0]).into_iter().map(|t| t.0).collect();
    assert_eq!(names, ["head/bias", "head/kernel"]);
    assert_eq!(v["files"][0]["totals"]["tensors"], 2);
    let o = vitconv(["inspect", "--filter", "([", path.to_str().unwrap()]);
    assert_bad_input(&o, "--filter");
}

#[test]
fn stats_match_an_independent_computation() {
    let path = fixture("vit-token/checkpoint.npz");
    let v = inspect_json(&["--stats", path.to_str().unwrap()]);
    let f = TensorFile::open(&path).unwrap();
    for t in v["files"][0]["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let values: Vec<f64> = f
            .read_f32(name)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s = &t["stats"];
        // Sums run in f32 within blocks, so errors scale with the values' magnitude: judge
        // the mean and std against the spread of the data, not against the (near-zero) mean.
        let scale = std.max(mean.abs());
        let close = |key: &str, want: f64| {
            let got = s[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= STATS_REL_TOL * scale,
                "{name} {key}: {got} vs {want}"
            );
        };
        close("mean", mean);
        close("std", std);
        // Extremes are f32 values of the tensor, exactly (compared as f32: serde_json's
        // default float parsing may land one f64 ulp off).
        let as_f32 = |key: &str| s[key].as_f64().map(|v| v as f32);
        assert_eq!(as_f32("min"), Some(min as f32), "{name}");
        assert_eq!(as_f32("max"), Some(max as f32), "{name}");
        assert_eq!(s["nan"], 0);
        assert_eq!(s["inf"], 0);
    }
}

#[test]
fn stats_count_nan_and_inf() {
    let dir = scratch();
    let p = dir.path().join("odd.safetensors");
    let spec = TensorSpec {
        name: "x".into(),
        dtype: DType::F32,
        shape: vec![5],
    };
    let mut w =
        Writer::create(&p, Format::Safetensors, vec![spec], BTreeMap::new(), false).unwrap();
    let data: Vec<u8> = [1.0f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    w.write_next(&data).unwrap();
    w.finish().unwrap();
    let v = inspect_json(&["--stats", p.to_str().unwrap()]);
    let s = &v["files"][0]["tensors"][0]["stats"];
    assert_eq!((s["nan"].as_u64(), s["inf"].as_u64()), (Some(1), Some(2)));
    assert_eq!(
        (s["min"].as_f64(), s["max"].as_f64(), s["mean"].as_f64()),
        (Some(1.0), Some(3.0), Some(2.0))
    );
    let o = vitconv(["inspect", "--stats", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("nan"), "{}", stdout(&o));
}

/// Writes `bytes` as a file in `dir`.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_input_is_a_one_line_error_naming_the_file() {
    let dir = scratch();
    let good = std::fs::read(fixture("vit-token/checkpoint.npz")).unwrap();

    let text = write(
        dir.path(),
        "notes.npz",
        b"just some text, not a tensor file",
    );
    let truncated = write(dir.path(), "truncated.npz", &good[..good.len() / 2]);
    let mut broken = good.clone();
    let cd = broken.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    broken[cd + 2] = 0xee;
    let broken = write(dir.path(), "broken-cd.npz", &broken);
    // The first member's header claims 65 floats where 64 are stored (same header length).
    let mut lying = good.clone();
    let at = lying.windows(5).position(|w| w == b"(64,)").unwrap();
    lying[at + 1..at + 3].copy_from_slice(b"65");
    let lying = write(dir.path(), "lying.npz", &lying);
    let st = dir.path().join("w.safetensors");
    rewrite(&fixture("vit-gap/checkpoint.npz"), &st, Format::Safetensors);
    let st_bytes = std::fs::read(&st).unwrap();
    let st_cut = write(
        dir.path(),
        "cut.safetensors",
        &st_bytes[..st_bytes.len() - 1],
    );

    for (path, needle) in [
        (text.as_path(), "not a tensor file"),
        (truncated.as_path(), "truncated.npz"),
        (broken.as_path(), "broken-cd.npz"),
        (lying.as_path(), "Transformer/encoder_norm/bias"),
        (st_cut.as_path(), "truncated"),
        (Path::new("/nonexistent/file.npz"), "/nonexistent/file.npz"),
    ] {
        let o = vitconv(["inspect", path.to_str().unwrap()]);
        assert_bad_input(&o, needle);
        assert_bad_input(&o, path.file_name().unwrap().to_str().unwrap());
    }
}

#[test]
fn pickle_with_a_disallowed_global_is_refused_by_name() {
    let dir = scratch();
    let marker = dir.path().join("marker");
    // What `pickle.dumps(os.system("touch marker"))`-style payloads look like, in a torch archive.
    let cmd = format!("touch {}", marker.display());
    let mut pkl = b"\x80\x02cos\nsystem\nX".to_vec();
    pkl.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    pkl.extend_from_slice(cmd.as_bytes());
    pkl.extend_from_slice(b"\x85R.");
    let p = dir.path().join("evil.pt");
    let archive = zip_bytes(&[
        stored("archive/data.pkl", pkl),
        stored("archive/byteorder", b"little".to_vec()),
    ]);
    std::fs::write(&p, archive).unwrap();
    let o = vitconv(["inspect", p.to_str().unwrap()]);
    assert_bad_input(&o, "os.system");
    assert!(!marker.exists(), "the pickle ran");
}

#[test]
fn metadata_is_shown_in_tables_and_json() {
    let dir = scratch();
    let p = dir.path().join("meta.pt");
    let spec = TensorSpec {
        name: "w".into(),
        dtype: DType::F16,
        shape: vec![2],
    };
    let meta: BTreeMap<String, String> =
        [("vitconv.layout".to_string(), "timm".to_string())].into();
    let mut w = Writer::create(&p, Format::Pt, vec![spec], meta, false).unwrap();
    w.write_next(&[0, 60, 0, 64]).unwrap();
    w.finish().unwrap();
    let v = inspect_json(&[p.to_str().unwrap()]);
    assert_eq!(v["files"][0]["metadata"]["vitconv.layout"], "timm");
    let o = vitconv(["inspect", p.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("metadata vitconv.layout: timm"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn big_vision_files_are_summarised_and_stacked_blocks_fold() {
    let scan = fixture("big_vision/bv-vit-tok-scan/checkpoint.npz");
    let unrolled = fixture("big_vision/bv-vit-tok-scan/variants/unrolled.npz");
    let v = inspect_json(&[
        "--group",
        &scan.display().to_string(),
        &unrolled.display().to_string(),
    ]);
    let files = v["files"].as_array().expect("files");
    for f in files {
        assert_eq!(f["summary"]["family"], "big_vision", "{f}");
    }
    let line = files[0]["summary"]["architecture"].as_str().expect("line");
    assert!(line.contains("3 layers (stacked, scan format)"), "{line}");
    assert!(
        line.contains("class token without a position embedding"),
        "{line}"
    );
    // The stacked [3, 64, 128] kernel is the group of its three slices, as the numbered blocks are.
    let groups = |f: &Value| -> BTreeMap<String, (u64, Vec<u64>)> {
        f["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .map(|g| {
                let shape = g["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_u64)
                    .collect();
                (
                    g["name"].as_str().unwrap().to_string(),
                    (g["count"].as_u64().unwrap(), shape),
                )
            })
            .collect()
    };
    let scan_groups = groups(&files[0]);
    let kernel = "params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel[{0..2}]";
    assert_eq!(
        scan_groups.get(kernel),
        Some(&(3, vec![64, 128])),
        "{scan_groups:?}"
    );
    let unrolled_groups = groups(&files[1]);
    let numbered = "params/Transformer/encoderblock_{0..2}/MlpBlock_0/Dense_0/kernel";
    assert_eq!(
        unrolled_groups.get(numbered),
        Some(&(3, vec![64, 128])),
        "{unrolled_groups:?}"
    );
    assert_eq!(scan_groups.len(), unrolled_groups.len());
}

#[test]
fn inspect_reads_every_folder_vitconv_writes() {
    let dir = scratch();
    let labels = dir.path().join("labels.txt");
    let names: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    std::fs::write(&labels, names.join("\n") + "\n").expect("write");
    let cases: [(&str, &str, &[&str], &[&str]); 3] = [
        (
            "vit-token/checkpoint.npz",
            "hf",
            &["--labels"],
            &[
                "--layout hf",
                "ViTForImageClassification",
                "10 names (first: \"class 0\")",
                "ViTImageProcessor resize to 64x64",
            ],
        ),
        (
            "vit-token/checkpoint.npz",
            "timm",
            &["--labels"],
            &[
                "--layout timm",
                "crop_mode squash",
                "bilinear resize",
                "10 names",
            ],
        ),
        (
            "big_vision/siglip-tiny/checkpoint.npz",
            "open_clip",
            &[],
            &[
                "--layout open_clip",
                "CustomTextCLIP",
                "tokenizer: none",
                "(present)",
            ],
        ),
    ];
    for (src, layout, extra, want) in cases {
        let out = dir.path().join(layout);
        let mut args: Vec<std::ffi::OsString> = vec![
            "npz-to-pt".into(),
            fixture(src).into(),
            out.clone().into(),
            "--layout".into(),
            layout.into(),
            "--quiet".into(),
        ];
        if !extra.is_empty() {
            args.push("--labels".into());
            args.push(labels.clone().into());
        }
        let o = vitconv(&args);
        assert_eq!(o.status.code(), Some(0), "{layout}: {}", stderr(&o));
        let o = vitconv([std::ffi::OsStr::new("inspect"), out.as_os_str()]);
        assert_eq!(o.status.code(), Some(0), "{layout}: {}", stderr(&o));
        let text = stdout(&o);
        for w in want {
            assert!(text.contains(w), "{layout}: {w} in {text}");
        }
    }
    // Any other directory is refused naming what inspect reads.
    let o = vitconv([std::ffi::OsStr::new("inspect"), dir.path().as_os_str()]);
    assert_bad_input(&o, "neither a JAX checkpoint");
}

#[test]
fn labels_must_match_the_head_and_name_both_counts() {
    let dir = scratch();
    let labels = dir.path().join("five.txt");
    std::fs::write(&labels, "a\nb\nc\nd\ne\n").expect("write");
    let out = dir.path().join("m.safetensors");
    let o = vitconv([
        std::ffi::OsStr::new("npz-to-pt"),
        fixture("vit-token/checkpoint.npz").as_os_str(),
        out.as_os_str(),
        "--layout".as_ref(),
        "timm".as_ref(),
        "--labels".as_ref(),
        labels.as_os_str(),
    ]);
    assert_bad_input(&o, "5 names for a head of 10 classes");
    assert!(!out.exists());
    let o = vitconv([
        std::ffi::OsStr::new("npz-to-pt"),
        fixture("vit-token/checkpoint.npz").as_os_str(),
        out.as_os_str(),
        "--layout".as_ref(),
        "timm".as_ref(),
        "--drop-head".as_ref(),
        "--labels".as_ref(),
        labels.as_os_str(),
    ]);
    assert_bad_input(&o, "no classification head");
}
