//! Guards the converter's outputs: every golden vision_transformer case, through every layout, dtype, format
//! and the main options, must write the tensors recorded in `fixtures/digests/vit_jax.txt` (names, dtypes,
//! shapes and bytes, in order), or be refused where it was refused.
//!
//! The digests were recorded from the code before the converter core was reshaped around a neutral model
//! description, so this test is what proves the reshaping changed no output. Run it with
//! `VITCONV_RECORD_DIGESTS=1` to rewrite the file after a deliberate change of output, and say why in the
//! commit.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use vitconv_convert::{
    prepare, write, Gelu, HeadChoice, InputNorm, Layout, Options, OutDType, ProjChoice,
    ResizeMethod,
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
    ("erf", |o, _| o.gelu = Gelu::Erf),
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

/// One line describing a run's output tensors, or `refused`.
fn run(file: &TensorFile, opts: &Options, out: &Path) -> String {
    let Ok(conv) = prepare(file, opts) else {
        return "refused".to_string();
    };
    let Ok(written) = write(file, &conv, opts, out, &mut |_, _| {}) else {
        return "refused".to_string();
    };
    let converted = TensorFile::open(&written.weights).expect("the written file opens");
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for t in converted.tensors() {
        fnv(&mut hash, t.name.as_bytes());
        fnv(&mut hash, t.dtype.to_string().as_bytes());
        fnv(&mut hash, format!("{:?}", t.shape).as_bytes());
        fnv(&mut hash, &converted.read(&t.name).expect("tensor bytes"));
    }
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
    let path = fixtures().join("digests/vit_jax.txt");
    let got = all_digests();
    if std::env::var_os("VITCONV_RECORD_DIGESTS").is_some() {
        let mut text = String::from(
            "# case layout format options dtype: tensor count and FNV-1a-64 of names, dtypes, shapes, bytes\n",
        );
        for (k, v) in &got {
            let _ = writeln!(text, "{k}: {v}");
        }
        std::fs::write(&path, text).expect("digests written");
        return;
    }
    let text = std::fs::read_to_string(&path).expect("fixtures/digests/vit_jax.txt");
    let want: BTreeMap<String, String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(
        want.len() > 300,
        "the recorded file holds {} runs",
        want.len()
    );
    let converted = want.values().filter(|v| *v != "refused").count();
    assert!(converted > 200, "only {converted} recorded runs convert");
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
        "{} runs differ:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
