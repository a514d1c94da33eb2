//! Tests of `vitconv npz-to-pt`: every golden case to every layout that can hold it, in .pt and .safetensors;
//! refusals, existing outputs, unwritable paths, and the metadata the verify crate relies on.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vitconv_tensors::{DType, Format, TensorFile};

use crate::common::{
    assert_bad_input, fixture, listing, npz_to_pt, scratch, stderr, stdout, vitconv,
};

/// Every golden source and whether each layout holds it with default options.
const CASES: [&str; 9] = [
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

/// Metadata keys every converted file carries (the verify crate reads them).
const META_KEYS: [&str; 5] = [
    "format",
    "vitconv.layout",
    "vitconv.source",
    "vitconv.config",
    "vitconv.notes",
];

/// Keys `vitconv.config` declares.
const CONFIG_KEYS: [&str; 17] = [
    "image_size",
    "patch_size",
    "hidden",
    "depth",
    "heads",
    "mlp",
    "classifier",
    "num_classes",
    "representation",
    "gelu",
    "layer_norm_eps",
    "ln_pre",
    "input_norm",
    "resnet",
    "head",
    "head_bias",
    "dtype",
];

fn holds(layout: &str, case: &str) -> bool {
    let hybrid = case.starts_with("hybrid");
    let gap = case.starts_with("vit-gap");
    let prelogits = case.starts_with("vit-prelogits");
    match layout {
        "timm" => !prelogits,
        // transformers holds a gap model as SigLIP's vision tower (SiglipForImageClassification).
        "hf" => !hybrid && !prelogits,
        "open_clip" => !hybrid && !gap && !prelogits,
        _ => case.starts_with("vit-mlp4"),
    }
}

fn convert(src: &Path, out: &Path, layout: &str, extra: &[&str]) -> std::process::Output {
    npz_to_pt(src, out, layout, &[&["--quiet"], extra].concat())
}

fn out_path(dir: &Path, case: &str, layout: &str, ext: &str) -> PathBuf {
    let stem = case.replace(['/', '.'], "_");
    if layout == "hf" {
        dir.join(format!("{stem}-hf"))
    } else {
        // The extension is in the stem too, so the two formats' open_clip side files differ.
        dir.join(format!(
            "{stem}-{layout}-{}{ext}",
            ext.trim_start_matches('.')
        ))
    }
}

fn check_metadata(weights: &Path, layout: &str, case: &str) {
    let f = TensorFile::open(weights).unwrap_or_else(|e| panic!("{e}"));
    let want_format = if weights.extension().is_some_and(|e| e == "pt") {
        Format::Pt
    } else {
        Format::Safetensors
    };
    assert_eq!(f.format(), want_format);
    let meta = f.metadata();
    for k in META_KEYS {
        assert!(
            meta.contains_key(k),
            "{case} -> {layout}: metadata lacks {k}: {meta:?}"
        );
    }
    assert_eq!(meta["vitconv.layout"], layout);
    assert_eq!(meta["format"], "pt");
    assert_eq!(
        meta["vitconv.source"],
        Path::new(case)
            .file_name()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default()
    );
    let config: Value =
        serde_json::from_str(&meta["vitconv.config"]).expect("vitconv.config is JSON");
    for k in CONFIG_KEYS {
        assert!(
            config.get(k).is_some(),
            "{case} -> {layout}: config lacks {k}: {config}"
        );
    }
    assert!(
        f.tensors().iter().all(|t| t.dtype == DType::F32),
        "{case} -> {layout}: default dtype is f32"
    );
    let summary =
        vitconv_convert::summarize(f.tensors()).expect("the output is a recognised layout");
    let family = match layout {
        "timm" => "timm",
        "hf" => "transformers",
        "open_clip" => "open_clip",
        _ => "openai_clip",
    };
    assert_eq!(summary.family, family, "{case} -> {layout}");
}

#[test]
fn every_golden_case_to_every_layout_in_both_formats() {
    let dir = scratch();
    for case in CASES {
        let src = fixture(case);
        // Every layout, by its command-line name: the converter's one list.
        for layout in vitconv_convert::Layout::ALL.map(vitconv_convert::Layout::as_str) {
            for ext in [".pt", ".safetensors"] {
                if layout == "hf" && ext == ".safetensors" {
                    continue; // hf writes a directory; one run per case covers it
                }
                let out = out_path(dir.path(), case, layout, ext);
                let o = convert(&src, &out, layout, &[]);
                if holds(layout, case) {
                    assert_eq!(
                        o.status.code(),
                        Some(0),
                        "{case} -> {layout}{ext}: {}",
                        stderr(&o)
                    );
                    let weights = if layout == "hf" {
                        out.join("model.safetensors")
                    } else {
                        out.clone()
                    };
                    check_metadata(&weights, layout, case);
                    if layout == "hf" {
                        assert_eq!(
                            listing(&out),
                            [
                                "config.json",
                                "model.safetensors",
                                "preprocessor_config.json"
                            ]
                        );
                    }
                    if layout == "open_clip" {
                        let side = out.with_file_name(format!(
                            "{}.open_clip.json",
                            out.file_stem()
                                .map(|s| s.to_string_lossy())
                                .unwrap_or_default()
                        ));
                        let cfg: Value = serde_json::from_str(
                            &std::fs::read_to_string(&side).expect("open_clip config"),
                        )
                        .expect("JSON");
                        assert_eq!(cfg["vision_cfg"]["no_ln_pre"], true);
                        assert_eq!(cfg["vision_cfg"]["norm_kwargs"]["eps"], 1e-6);
                    }
                } else {
                    assert_bad_input(&o, &format!("--layout {layout} cannot hold"));
                    assert!(
                        !out.exists(),
                        "{case} -> {layout}: a refused conversion left {}",
                        out.display()
                    );
                }
            }
        }
    }
    // Nothing but finished outputs remains: no temporary files from any run.
    assert!(
        listing(dir.path())
            .iter()
            .all(|n| !n.starts_with('.') && !n.contains("tmp")),
        "{:?}",
        listing(dir.path())
    );
}

#[test]
fn report_prints_the_python_and_the_input_norm() {
    let dir = scratch();
    let out = dir.path().join("m.pt");
    let o = vitconv([
        "npz-to-pt",
        fixture("vit-token/checkpoint.npz").to_str().expect("utf8"),
        out.to_str().expect("utf8"),
        "--layout",
        "timm",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("ViT/16: hidden 64, 2 layers, 4 heads, mlp 128, 64 px (4x4 grid + class token), 10 classes"), "{s}");
    assert!(s.contains("input normalisation: unit"), "{s}");
    assert!(
        s.contains("VisionTransformer(img_size=64, patch_size=16, embed_dim=64"),
        "{s}"
    );
    assert!(s.contains("act_layer='gelu_tanh'"), "{s}");
    let meta = TensorFile::open(&out).expect("written").metadata().clone();
    let kwargs: Value =
        serde_json::from_str(&meta["vitconv.timm_kwargs"]).expect("timm kwargs JSON");
    assert_eq!(kwargs["embed_dim"], 64);
    assert_eq!(kwargs["num_classes"], 10);
}

#[test]
fn hybrid_timm_records_the_backbone() {
    let dir = scratch();
    let out = dir.path().join("h.safetensors");
    let o = convert(&fixture("hybrid-r2/checkpoint.npz"), &out, "timm", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let meta = TensorFile::open(&out).expect("written").metadata().clone();
    let b: Value = serde_json::from_str(&meta["vitconv.timm_backbone"]).expect("backbone JSON");
    assert_eq!(b["layers"], serde_json::json!([1, 1]));
    assert_eq!(b["norm_eps"], 1e-6);
}

#[test]
fn existing_output_is_untouched_without_force() {
    let dir = scratch();
    let out = dir.path().join("m.pt");
    std::fs::write(&out, b"precious").expect("write");
    let src = fixture("vit-token/checkpoint.npz");
    let o = convert(&src, &out, "timm", &[]);
    assert_bad_input(&o, "--force");
    assert_eq!(std::fs::read(&out).expect("still there"), b"precious");
    let o = convert(&src, &out, "timm", &["--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(TensorFile::open(&out).is_ok());
    assert_eq!(listing(dir.path()), ["m.pt"]);

    let hf = dir.path().join("hfdir");
    std::fs::create_dir(&hf).expect("mkdir");
    std::fs::write(hf.join("notes.txt"), b"mine").expect("write");
    assert_bad_input(&convert(&src, &hf, "hf", &[]), "--force");
    assert_eq!(listing(&hf), ["notes.txt"]);
}

#[test]
fn unwritable_output_path_is_a_clean_error() {
    let dir = scratch();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").expect("write");
    // A path below a regular file cannot be created, even by root.
    let out = blocker.join("m.pt");
    let o = convert(&fixture("vit-token/checkpoint.npz"), &out, "timm", &[]);
    assert_bad_input(&o, "m.pt");
    assert_eq!(listing(dir.path()), ["a-file"]);
}

#[test]
fn output_extension_decides_the_format() {
    let dir = scratch();
    let o = convert(
        &fixture("vit-token/checkpoint.npz"),
        &dir.path().join("m.txt"),
        "timm",
        &[],
    );
    assert_bad_input(&o, ".safetensors");
    let o = convert(
        &fixture("vit-token/checkpoint.npz"),
        &dir.path().join("m.pt"),
        "hf",
        &[],
    );
    assert_bad_input(&o, "directory");
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn refusals_and_option_errors_exit_2() {
    let dir = scratch();
    let out = dir.path().join("x.pt");
    let token = fixture("vit-token/checkpoint.npz");
    assert_bad_input(
        &convert(&fixture("vit-prelogits/checkpoint.npz"), &out, "timm", &[]),
        "--drop-head",
    );
    assert_bad_input(&convert(&token, &out, "clip", &[]), "4x");
    assert_bad_input(
        &convert(&fixture("vit-gap/checkpoint.npz"), &out, "open_clip", &[]),
        "class token",
    );
    assert_bad_input(
        &convert(&token, &out, "timm", &["--image-size", "100"]),
        "--image-size",
    );
    assert_bad_input(
        &convert(&token, &out, "timm", &["--num-classes", "3"]),
        "--num-classes",
    );
    assert_bad_input(
        &convert(
            &fixture("hybrid-r2/checkpoint.npz"),
            &out,
            "timm",
            &["--input-norm", "clip"],
        ),
        "--input-norm",
    );
    assert!(!out.exists());
}

#[test]
fn a_pytorch_file_is_not_a_source() {
    let dir = scratch();
    let first = dir.path().join("m.safetensors");
    assert_eq!(
        convert(&fixture("vit-token/checkpoint.npz"), &first, "timm", &[])
            .status
            .code(),
        Some(0)
    );
    let o = convert(&first, &dir.path().join("again.pt"), "timm", &[]);
    assert_bad_input(&o, "timm checkpoint");
}

#[test]
fn low_precision_outputs_hold_rounded_weights() {
    let dir = scratch();
    let src = fixture("vit-token/checkpoint.npz");
    let f32_out = dir.path().join("f32.safetensors");
    let bf16_out = dir.path().join("bf16.pt");
    assert_eq!(convert(&src, &f32_out, "timm", &[]).status.code(), Some(0));
    assert_eq!(
        convert(&src, &bf16_out, "timm", &["--dtype", "bf16"])
            .status
            .code(),
        Some(0)
    );
    let a = TensorFile::open(&f32_out).expect("f32");
    let b = TensorFile::open(&bf16_out).expect("bf16");
    assert!(b.tensors().iter().all(|t| t.dtype == DType::BF16));
    for t in a.tensors() {
        let x = a.read_f32(&t.name).expect("f32 values");
        let y = b.read_f32(&t.name).expect("bf16 values");
        for (p, q) in x.iter().zip(&y) {
            assert_eq!(half::bf16::from_f32(*p).to_f32(), *q, "{}", t.name);
        }
    }
    let cfg: Value = serde_json::from_str(&b.metadata()["vitconv.config"]).expect("config");
    assert_eq!(cfg["dtype"], "bf16");
}

#[test]
fn resize_changes_the_grid_and_says_so() {
    let dir = scratch();
    let out = dir.path().join("r.pt");
    let o = vitconv([
        "npz-to-pt",
        fixture("vit-token/checkpoint.npz").to_str().expect("utf8"),
        out.to_str().expect("utf8"),
        "--layout",
        "timm",
        "--image-size",
        "96",
        "--resize",
        "bilinear",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("from 4x4 to 6x6"), "{}", stdout(&o));
    let f = TensorFile::open(&out).expect("written");
    assert_eq!(
        f.get("pos_embed").map(|t| t.shape.clone()),
        Some(vec![1, 37, 64])
    );
}

/// Hidden width, MLP width and depth of the large model the interrupt tests convert: ~290 MB of f32, so the
/// conversion is still running when the signal arrives.
const BIG_DIMS: (usize, usize, usize) = (1024, 4096, 6);

/// Writes a vit_jax `.npz` shaped like `vit-token/checkpoint.npz` but with [`BIG_DIMS`] (4 heads kept).
#[cfg(unix)]
pub(crate) fn write_big_vit(path: &Path) {
    use std::collections::BTreeMap;
    use vitconv_tensors::{TensorSpec, Writer};
    let (d, m, depth) = BIG_DIMS;
    let small = TensorFile::open(fixture("vit-token/checkpoint.npz")).unwrap();
    let mut specs = Vec::new();
    for t in small.tensors() {
        let Some(rest) = t.name.strip_prefix("Transformer/encoderblock_") else {
            // The fixture's 64-wide model: 64 is the width everywhere outside the patch kernel's 16x16.
            let shape = t
                .shape
                .iter()
                .map(|&x| if x == 64 { d } else { x })
                .collect();
            specs.push((t.name.clone(), shape));
            continue;
        };
        let Some(local) = rest.strip_prefix("0/") else {
            continue;
        };
        let attention = local.starts_with("MultiHeadDotProductAttention");
        let shape: Vec<usize> = t
            .shape
            .iter()
            .map(|&x| match x {
                64 => d,
                128 => m,
                // The head width, in attention tensors only.
                16 if attention => d / 4,
                x => x,
            })
            .collect();
        for i in 0..depth {
            specs.push((
                format!("Transformer/encoderblock_{i}/{local}"),
                shape.clone(),
            ));
        }
    }
    let specs: Vec<TensorSpec> = specs
        .into_iter()
        .map(|(name, shape)| TensorSpec {
            name,
            dtype: DType::F32,
            shape,
        })
        .collect();
    let mut w = Writer::create(path, Format::Npz, specs.clone(), BTreeMap::new(), false).unwrap();
    // Small finite values; their pattern does not matter to an interrupted run.
    let piece: Vec<u8> = (0..1 << 18)
        .flat_map(|i| ((i % 97) as f32 * 0.01).to_le_bytes())
        .collect();
    for s in &specs {
        let mut left = s.shape.iter().product::<usize>() * 4;
        while left > 0 {
            let n = left.min(piece.len());
            w.write_part(&piece[..n]).unwrap();
            left -= n;
        }
        if s.shape.contains(&0) {
            w.write_part(&[]).unwrap();
        }
    }
    w.finish().unwrap();
}

/// Starts a conversion of `source` to `layout`, sends `signal` once its temporary output exists, and returns the
/// exit code.
#[cfg(unix)]
fn convert_and_interrupt(source: &Path, output: &Path, layout: &str, signal: &str) -> Option<i32> {
    use std::time::{Duration, Instant};
    /// How long the conversion may take to open its temporary output.
    const START_DEADLINE: Duration = Duration::from_secs(60);
    // An hf output is a directory, and its temporary files are inside it.
    let dir = if layout == "hf" {
        output
    } else {
        output.parent().unwrap()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vitconv"))
        .args(["npz-to-pt", "--layout", layout, "--quiet", "--force"])
        .arg(source)
        .arg(output)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !partial_files(dir).iter().any(|_| true) {
        assert!(
            started.elapsed() < START_DEADLINE,
            "no temporary output appeared"
        );
        assert!(child.try_wait().unwrap().is_none(), "vitconv ended early");
        std::thread::sleep(Duration::from_millis(1));
    }
    let killed = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    out.status.code()
}

/// The writer's temporary files in `dir` (`.NAME.*.partial`, and the side files' `.tmp*`); none if `dir` does
/// not exist (yet).
#[cfg(unix)]
pub(crate) fn partial_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(".partial") || name.starts_with(".tmp")
        })
        .collect()
}

#[cfg(unix)]
#[test]
fn an_interrupted_conversion_leaves_no_temporary_and_the_old_output() {
    /// Exit status of an interrupted run (128 + SIGINT).
    const INTERRUPTED: i32 = 130;
    let dir = scratch();
    let source = dir.path().join("big.npz");
    write_big_vit(&source);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let output = out_dir.join("model.pt");

    // SIGTERM with an existing output: the output keeps its bytes.
    std::fs::write(&output, b"the previous output").unwrap();
    assert_eq!(
        convert_and_interrupt(&source, &output, "timm", "-TERM"),
        Some(INTERRUPTED)
    );
    assert_eq!(std::fs::read(&output).unwrap(), b"the previous output");
    assert_eq!(partial_files(&out_dir), Vec::<PathBuf>::new());

    // SIGINT with no output: none appears.
    std::fs::remove_file(&output).unwrap();
    assert_eq!(
        convert_and_interrupt(&source, &output, "timm", "-INT"),
        Some(INTERRUPTED)
    );
    assert!(!output.exists());
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        0,
        "the output directory is not empty"
    );

    // An hf directory the run created, with a missing parent, goes too.
    let hf_dir = out_dir.join("new/hf");
    assert_eq!(
        convert_and_interrupt(&source, &hf_dir, "hf", "-INT"),
        Some(INTERRUPTED)
    );
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        0,
        "the hf directory and its parent were left behind"
    );
    // An existing one stays, empty as it was.
    std::fs::create_dir(out_dir.join("kept")).unwrap();
    assert_eq!(
        convert_and_interrupt(&source, &out_dir.join("kept"), "hf", "-INT"),
        Some(INTERRUPTED)
    );
    assert_eq!(listing(&out_dir), ["kept"]);
    assert_eq!(listing(&out_dir.join("kept")), Vec::<String>::new());

    // Uninterrupted, the same source converts: the test model is one the converter accepts.
    let o = npz_to_pt(&source, &output, "timm", &["--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(TensorFile::open(&output).is_ok());
}

#[test]
fn a_hybrid_as_a_timm_folder_is_refused_naming_the_weights_file_route() {
    let dir = scratch();
    let out = dir.path().join("folder");
    let o = npz_to_pt(&fixture("hybrid-r2/checkpoint.npz"), &out, "timm", &[]);
    assert_bad_input(&o, "timm's registered hybrids build their ResNet stem");
    assert!(
        stderr(&o).contains("name a .safetensors or .pt file"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn verify_without_its_executable_names_the_build_command() {
    // `vitconv verify` runs `vitconv-verify` from beside `vitconv`: a copy of `vitconv` alone has none.
    let dir = scratch();
    let alone = dir.path().join("vitconv");
    std::fs::copy(env!("CARGO_BIN_EXE_vitconv"), &alone).unwrap();
    // Another test thread forking while the copy's write handle was open may hold it in its child for a
    // moment, and exec then fails with "text file busy" (ETXTBSY): wait for that child to exec, not fail.
    let mut tries = 0;
    let o = loop {
        match std::process::Command::new(&alone)
            .args(["verify", "a.npz", "b.safetensors"])
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            result => break result.unwrap(),
        }
    };
    assert_bad_input(&o, "--features verify");
    assert!(
        stderr(&o).contains("vitconv-verify is missing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_names_every_family_and_container_of_the_registries() {
    for args in [&["npz-to-pt", "--help"][..], &["--help"][..]] {
        let o = vitconv(args.iter().copied());
        assert_eq!(o.status.code(), Some(0));
        let help = String::from_utf8_lossy(&o.stdout).replace('\n', " ");
        for family in vitconv_convert::sources::described() {
            assert!(
                help.contains(family),
                "{args:?} does not name {family:?}: {help}"
            );
        }
        for container in vitconv_tensors::containers() {
            assert!(
                help.contains(container),
                "{args:?} does not name {container:?}"
            );
        }
    }
    let o = vitconv(["inspect", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout).replace('\n', " ");
    for container in vitconv_tensors::containers() {
        assert!(
            help.contains(container),
            "inspect --help does not name {container:?}"
        );
    }
}
