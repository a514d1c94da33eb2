//! Guards the converter's outputs: every golden vision_transformer case, through every layout, dtype, format
//! and the main options, must write the tensors recorded in `fixtures/digests/vit_jax.txt` (names, dtypes,
//! shapes and bytes, in order), or be refused where it was refused.
//!
//! The digests were recorded from the code before the converter core was reshaped around a neutral model
//! description, so this test is what proves the reshaping changed no output. Run it with
//! `VITCONV_RECORD_DIGESTS=1` to rewrite the file after a deliberate change of output, and say why in the
//! commit.
//!
//! The other families' golden cases (big_vision ViTs, SigLIP, SigLIP 2, NaFlex, PaliGemma towers) are held the
//! same way against `fixtures/digests/families.txt`, through every layout, both tower choices, folder and
//! single-file outputs and the main options; their digests also cover the weights' metadata (the typed
//! `vitconv.config` record, notes) and every side file (configs, tokenizer files), so a refactor of the sources,
//! the model or the layouts that moved any byte a user receives fails here. They were recorded at commit
//! bacf914, before issue 19's registries and reader were reshaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use vitconv_convert::{
    prepare, write, Gelu, HeadChoice, InputNorm, Layout, Options, OutDType, ProjChoice,
    ResizeMethod, TowerChoice,
};
use vitconv_tensors::TensorFile;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The golden cases, each with the file holding its weights.
const CASES: &[(&str, &str)] = &[
    ("vit-token", "vit-token/checkpoint.npz"),
    ("vit-prelogits", "vit-prelogits/checkpoint.npz"),
    ("vit-gap", "vit-gap/checkpoint.npz"),
    ("hybrid-r2", "hybrid-r2/checkpoint.npz"),
    ("hybrid-root", "hybrid-root/checkpoint.npz"),
    ("vit-mlp4", "vit-mlp4/checkpoint.npz"),
    ("bfloat16", "vit-token-variants/bfloat16.npz"),
    ("compressed", "vit-token-variants/compressed.npz"),
    (
        "opt-target-prefix",
        "vit-token-variants/opt-target-prefix.npz",
    ),
];

const LAYOUTS: [Layout; 4] = [Layout::Timm, Layout::Hf, Layout::OpenClip, Layout::Clip];

/// A named set of options beyond the layout, dtype and format; the `usize` is the source's stride in
/// pixels (patch times stem reduction), for the resolution changes.
type Variant = (&'static str, fn(&mut Options, usize));

const VARIANTS: &[Variant] = &[
    ("drop-head", |o, _| o.head = HeadChoice::Drop),
    ("image-size-6", |o, s| o.image_size = Some(s * 6)),
    ("image-size-3-bicubic", |o, s| {
        o.image_size = Some(s * 3);
        o.resize = ResizeMethod::Bicubic;
    }),
    ("image-size-5-bilinear", |o, s| {
        o.image_size = Some(s * 5);
        o.resize = ResizeMethod::Bilinear;
    }),
    ("imagenet", |o, _| o.input_norm = Some(InputNorm::Imagenet)),
    ("unit", |o, _| o.input_norm = Some(InputNorm::Unit)),
    ("erf", |o, _| o.gelu = Some(Gelu::Erf)),
    ("proj-none", |o, _| {
        o.head = HeadChoice::Drop;
        o.proj = Some(ProjChoice::None);
    }),
    ("num-classes-0", |o, _| o.head = HeadChoice::NumClasses(0)),
];

/// Folds bytes into a 64-bit FNV-1a hash: small, dependency-free and plenty to tell two outputs apart.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// The FNV-1a-64 of a file's tensors: names, dtypes, shapes and bytes, in order.
fn hash_tensors(file: &TensorFile) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for t in file.tensors() {
        fnv(&mut hash, t.name.as_bytes());
        fnv(&mut hash, t.dtype.to_string().as_bytes());
        fnv(&mut hash, format!("{:?}", t.shape).as_bytes());
        fnv(&mut hash, &file.read(&t.name).expect("tensor bytes"));
    }
    hash
}

/// One line describing a run's output tensors, or `refused`.
fn run(file: &TensorFile, opts: &Options, out: &Path) -> String {
    let Ok(conv) = prepare(file, opts) else {
        return "refused".to_string();
    };
    let Ok(written) = write(file, &conv, opts, out, &mut |_, _| {}) else {
        return "refused".to_string();
    };
    let converted = TensorFile::open(&written.weights).expect("the written file opens");
    let hash = hash_tensors(&converted);
    format!("{} tensors {hash:016x}", converted.tensors().len())
}

fn all_digests() -> BTreeMap<String, String> {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let mut digests = BTreeMap::new();
    let mut n = 0usize;
    for (case, path) in CASES {
        let file = TensorFile::open(fixtures().join(path)).expect("golden file opens");
        let mut features = Options::new(Layout::Timm);
        features.head = HeadChoice::Drop;
        let stride = prepare(&file, &features)
            .map(|c| c.arch.stride())
            .expect("every golden case converts to a timm feature extractor");
        for layout in LAYOUTS {
            let exts: &[&str] = if layout == Layout::Hf {
                &["dir"]
            } else {
                &["pt", "safetensors"]
            };
            let mut runs: Vec<(String, Options, &str)> = Vec::new();
            for dtype in [OutDType::F32, OutDType::F16, OutDType::BF16] {
                for ext in exts {
                    let mut o = Options::new(layout);
                    o.dtype = dtype;
                    runs.push((format!("default {}", dtype.as_str()), o, ext));
                }
            }
            for (name, apply) in VARIANTS {
                let mut o = Options::new(layout);
                apply(&mut o, stride);
                runs.push((format!("{name} f32"), o, exts[0]));
            }
            for (what, opts, ext) in runs {
                n += 1;
                let out = if ext == "dir" {
                    tmp.path().join(format!("run{n}"))
                } else {
                    tmp.path().join(format!("run{n}.{ext}"))
                };
                let key = format!("{case} {} {ext} {what}", layout.as_str());
                digests.insert(key, run(&file, &opts, &out));
            }
        }
    }
    digests
}

#[test]
fn every_golden_conversion_writes_the_recorded_tensors() {
    check_digests("digests/vit_jax.txt", all_digests(), 300, 200);
}

/// Holds `got` against the digests recorded in `file` (under `fixtures/`), which must list at least `runs`
/// runs of which at least `converted` convert; `VITCONV_RECORD_DIGESTS=1` rewrites the file instead.
fn check_digests(file: &str, got: BTreeMap<String, String>, runs: usize, converted: usize) {
    let path = fixtures().join(file);
    if std::env::var_os("VITCONV_RECORD_DIGESTS").is_some() {
        let mut text = String::from(
            "# case layout (tower form) format options dtype: tensor count and FNV-1a-64 of names, dtypes, shapes, bytes (and metadata and side files)\n",
        );
        for (k, v) in &got {
            let _ = writeln!(text, "{k}: {v}");
        }
        std::fs::write(&path, text).expect("digests written");
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let want: BTreeMap<String, String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(want.len() >= runs, "{file} holds {} runs", want.len());
    let converting = want.values().filter(|v| *v != "refused").count();
    assert!(
        converting >= converted,
        "only {converting} recorded runs of {file} convert"
    );
    let mut diffs = Vec::new();
    for (k, w) in &want {
        match got.get(k) {
            Some(g) if g == w => {}
            Some(g) => diffs.push(format!("{k}: recorded {w}, now {g}")),
            None => diffs.push(format!("{k}: recorded {w}, not run now")),
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!("{k}: run now, not recorded"));
    }
    assert!(
        diffs.is_empty(),
        "{} runs of {file} differ:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// The golden cases of the other source families (big_vision ViTs, SigLIP, SigLIP 2, NaFlex, PaliGemma towers),
/// each with its weights file and the SentencePiece model its text side ships with, if any.
const FAMILY_CASES: &[(&str, &str, Option<&str>)] = &[
    (
        "bv-vit-gap-sincos",
        "big_vision/bv-vit-gap-sincos/checkpoint.npz",
        None,
    ),
    (
        "bv-vit-map-scan",
        "big_vision/bv-vit-map-scan/checkpoint.npz",
        None,
    ),
    (
        "bv-vit-tok-scan",
        "big_vision/bv-vit-tok-scan/checkpoint.npz",
        None,
    ),
    (
        "bv-vit-tok-unrolled",
        "big_vision/bv-vit-tok-scan/variants/unrolled.npz",
        None,
    ),
    ("siglip-tiny", "big_vision/siglip-tiny/checkpoint.npz", None),
    (
        "siglip-nohead",
        "big_vision/siglip-nohead/checkpoint.npz",
        None,
    ),
    (
        "siglip2-gopt-tiny",
        "siglip2/siglip2-gopt-tiny/checkpoint.npz",
        Some("siglip2/siglip2-gopt-tiny/tokenizer.model"),
    ),
    (
        "siglip2-naflex-tiny",
        "siglip2/siglip2-naflex-tiny/checkpoint.npz",
        Some("siglip2/siglip2-naflex-tiny/tokenizer.model"),
    ),
    (
        "paligemma-tower-tiny",
        "siglip2/paligemma-tower-tiny/checkpoint.npz",
        None,
    ),
    (
        "paligemma-tower-tiny-bf16",
        "siglip2/paligemma-tower-tiny-bf16/checkpoint.npz",
        None,
    ),
];

/// The options each family case runs with beyond the layout, the tower and the output's form.
/// A named set of options beyond the layout, the tower and the output's form.
type FamilyVariant = (&'static str, fn(&mut Options));

const FAMILY_VARIANTS: &[FamilyVariant] = &[
    ("default", |_| {}),
    ("bf16", |o| o.dtype = OutDType::BF16),
    // A sincos2d source states no resolution; the others are resized.
    ("image-size-64", |o| o.image_size = Some(64)),
    ("drop-head", |o| o.head = HeadChoice::Drop),
    ("erf", |o| o.gelu = Some(Gelu::Erf)),
];

/// One line describing a run's whole output: the weights' tensors and metadata and every side file, with the
/// temporary output and fixture folders written as placeholders so that the line does not depend on where
/// the test runs.
fn run_whole(file: &TensorFile, opts: &Options, out: &Path) -> String {
    let Ok(conv) = prepare(file, opts) else {
        return "refused".to_string();
    };
    let Ok(written) = write(file, &conv, opts, out, &mut |_, _| {}) else {
        return "refused".to_string();
    };
    let tmp = out.parent().unwrap_or(out).display().to_string();
    let places = |text: &str| {
        text.replace(&tmp, "<TMP>")
            .replace(&fixtures().display().to_string(), "<FIXTURES>")
    };
    let converted = TensorFile::open(&written.weights).expect("the written file opens");
    let mut hash = hash_tensors(&converted);
    for (k, v) in converted.metadata() {
        fnv(&mut hash, k.as_bytes());
        fnv(&mut hash, places(v).as_bytes());
    }
    for side in &written.side_files {
        fnv(&mut hash, places(&side.display().to_string()).as_bytes());
        let bytes = std::fs::read(side).expect("side file");
        match String::from_utf8(bytes) {
            Ok(text) => fnv(&mut hash, places(&text).as_bytes()),
            Err(e) => fnv(&mut hash, e.as_bytes()),
        }
    }
    format!(
        "{} tensors {} side files {hash:016x}",
        converted.tensors().len(),
        written.side_files.len()
    )
}

fn family_digests() -> BTreeMap<String, String> {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let mut digests = BTreeMap::new();
    for (case, path, tokenizer) in FAMILY_CASES {
        let file = TensorFile::open(fixtures().join(path)).expect("golden file opens");
        for layout in LAYOUTS {
            for (tower, tower_name) in [(TowerChoice::All, "all"), (TowerChoice::Image, "image")] {
                for form in ["dir", "safetensors"] {
                    for (name, apply) in FAMILY_VARIANTS {
                        let mut o = Options::new(layout);
                        o.tower = tower;
                        // The tokenizer belongs with the text tower: `--tower image` refuses it.
                        if tower == TowerChoice::All {
                            o.tokenizer = tokenizer.map(|t| fixtures().join(t));
                        }
                        apply(&mut o);
                        // The output is named after the run, so that the digest (which covers the names of the
                        // side files) does not move when a run is added before it.
                        let stem = format!("{case}-{}-{tower_name}-{name}", layout.as_str());
                        let out = match form {
                            "dir" => tmp.path().join(stem),
                            ext => tmp.path().join(format!("{stem}.{ext}")),
                        };
                        let key = format!("{case} {} {tower_name} {form} {name}", layout.as_str());
                        digests.insert(key, run_whole(&file, &o, &out));
                    }
                }
            }
        }
    }
    digests
}

#[test]
fn every_family_conversion_writes_the_recorded_outputs() {
    check_digests("digests/families.txt", family_digests(), 500, 150);
}
