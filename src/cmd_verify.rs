//! `vitconv verify`: runs the source `.npz` and its conversion side by side on libtorch and prints how far their outputs are apart.
//!
//! Built only with the cargo feature `verify` (it links libtorch through the
//! vitconv-verify crate); without it the command keeps its arguments, so `--help`
//! still documents them, and says in one line how to get it. Exit codes: 0 within
//! tolerance, 1 a real mismatch (or, for two towers, a declared setting that contradicts
//! the source), 2 bad input.
//!
//! Tolerances (max abs diff relative to max(1, max |reference|), and cosine >= 1 - tolerance):
//! f32 1e-4 for one tower, 1e-5 for a two-tower (SigLIP) comparison; bf16 5e-2; f16 1e-2.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("inputs").args(["input", "images"])))]
pub struct VerifyArgs {
    /// The source checkpoint (.npz of google-research/vision_transformer or big_vision, a .bv workdir, an
    /// Orbax step or a flax msgpack file).
    source: PathBuf,
    /// The converted file (.pt, .safetensors) or, for hf, its directory.
    converted: PathBuf,
    /// The converted layout: timm, hf, open_clip or clip (default: from the file's metadata or config).
    #[arg(long)]
    layout: Option<String>,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Precision of the converted model's forward: f32, bf16 or f16 (the reference always runs in f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Number of random images (uniform in [-1, 1]).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Seed of the random images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// NHWC float .npy in [-1, 1] (like the golden input.npy) instead of random images.
    #[arg(long)]
    input: Option<PathBuf>,
    /// A directory of PNG/JPEG images, resized and centre-cropped to the model's size.
    #[arg(long)]
    images: Option<PathBuf>,
    /// The model's resolution, N (or WxH with W = H). A big_vision sincos2d source stores
    /// nothing that gives its grid: this says it (default: the converted file's declared
    /// image_size). With --images, also the size the images are resized to.
    #[arg(long)]
    image_size: Option<String>,
    /// Logits produced elsewhere (e.g. by the original JAX code) to hold the reference against.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Largest allowed max-abs difference, relative to max(1, max |reference|)
    /// (default 1e-4 for f32, 1e-5 for f32 two-tower comparisons, 5e-2 bf16, 1e-2 f16; the clip
    /// layout is judged only when given).
    #[arg(long)]
    tolerance: Option<f64>,
    /// Two-tower sources: token ids, an int32/int64 .npy [texts, context] (like the golden
    /// text.npy). Without it, --text-batch random texts from --seed: random content ids, then
    /// --eos-id padding to the context (the last id is always EOS, and text 0 is half padding, so
    /// the first EOS is not the last position).
    #[arg(long)]
    text_ids: Option<PathBuf>,
    /// Two-tower sources: number of random texts.
    #[arg(long, default_value_t = 3)]
    text_batch: usize,
    /// Two-tower sources: the EOS id random texts are padded with (default 1, big_vision's).
    #[arg(long, default_value_t = 1)]
    eos_id: i64,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

#[cfg(not(feature = "verify"))]
pub fn run(_args: VerifyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this vitconv was built without libtorch; build it with `scripts/with-libtorch cargo build --release --features verify` to use verify"
    )
}

#[cfg(feature = "verify")]
pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    use vitconv_verify::{InputSource, Layout, Options, Precision, TextSource};

    // Before libtorch touches CUDA, so that cuBLAS and cuDNN start without TF32.
    vitconv_verify::disable_tf32();
    let layout =
        match args.layout.as_deref() {
            Some(name) => Some(Layout::parse(name).with_context(|| {
                format!("--layout {name}: expected timm, hf, open_clip or clip")
            })?),
            None => None,
        };
    let precision = Precision::parse(&args.dtype)
        .with_context(|| format!("--dtype {}: expected f32, bf16 or f16", args.dtype))?;
    if let Some(t) = args.tolerance {
        anyhow::ensure!(
            t.is_finite() && t >= 0.0,
            "--tolerance {t}: expected a non-negative number"
        );
    }
    let size = args.image_size.as_deref().map(parse_size).transpose()?;
    let image_size = match size {
        Some((w, h)) if w != h => {
            anyhow::bail!(
                "--image-size {w}x{h} is not square: ViT models here take square inputs; give N"
            )
        }
        Some((w, _)) => Some(w),
        None => None,
    };
    let input = match (args.input, args.images) {
        (Some(path), _) => InputSource::Npy(path),
        (None, Some(dir)) => InputSource::Images { dir, size },
        (None, None) => InputSource::Random {
            batch: args.batch,
            seed: args.seed,
        },
    };
    let text = match args.text_ids {
        Some(path) => TextSource::Npy(path),
        None => TextSource::Random {
            texts: args.text_batch,
            seed: args.seed,
            eos_id: args.eos_id,
        },
    };
    let opts = Options {
        // big_vision's checkpoint prefix (`workdir/checkpoint.bv`) names its `-LAST` file.
        source: vitconv_tensors::resolve_input(&args.source),
        converted: args.converted,
        layout,
        device: args.device,
        precision,
        input,
        expect: args.expect,
        tolerance: args.tolerance,
        image_size,
        text,
    };
    let report = vitconv_verify::verify(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Parses `N` or `WxH`.
#[cfg(feature = "verify")]
fn parse_size(text: &str) -> anyhow::Result<(usize, usize)> {
    let parse = |s: &str| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| anyhow::anyhow!("--image-size {text}: expected N or WxH"))
    };
    match text.split_once(['x', 'X']) {
        Some((w, h)) => Ok((parse(w)?, parse(h)?)),
        None => {
            let n = parse(text)?;
            Ok((n, n))
        }
    }
}

#[cfg(feature = "verify")]
fn print_report(r: &vitconv_verify::Report) {
    use comfy_table::{presets::UTF8_FULL, Table};

    let mut run = Table::new();
    run.load_preset(UTF8_FULL);
    run.set_header(vec![
        "layout",
        "device",
        "dtype",
        "batch",
        "image",
        "reference forward",
        "converted forward",
    ]);
    run.add_row(vec![
        r.layout.as_str().to_string(),
        r.device.clone(),
        r.dtype.clone(),
        r.batch.to_string(),
        format!("{0}x{0}", r.image_size),
        format!("{:.2} ms", r.reference_ms),
        format!("{:.2} ms", r.target_ms),
    ]);
    println!("{run}");

    let mut table = Table::new();
    table.load_preset(UTF8_FULL);
    table.set_header(vec![
        "output",
        "max abs diff",
        "max rel diff",
        "mean abs diff",
        "cosine",
        "top-1 agree",
        "top-5 overlap",
        "bound",
        "within",
    ]);
    let rows: Vec<(&str, &Option<vitconv_verify::Metrics>)> = match &r.two_tower {
        Some(t) => vec![
            ("image embeddings", &t.image_embeds),
            ("text embeddings", &t.text_embeds),
            ("logits_per_image", &t.logits_per_image),
            ("reference vs --expect", &r.expect),
        ],
        None => vec![
            ("logits", &r.logits),
            ("pooled features", &r.features),
            ("reference vs --expect", &r.expect),
        ],
    };
    for (name, m) in rows {
        match m {
            Some(m) => table.add_row(vec![
                name.to_string(),
                format!("{:.3e}", m.max_abs_diff),
                format!("{:.3e}", m.max_rel_diff),
                format!("{:.3e}", m.mean_abs_diff),
                format!("{:.8}", m.cosine),
                format!("{:.1}%", m.top1_agreement * 100.0),
                format!("{:.1}%", m.top5_overlap * 100.0),
                format!("{:.1e}", m.bound),
                if m.within { "yes".into() } else { "NO".into() },
            ]),
            None if name == "reference vs --expect" => continue,
            None => table.add_row(vec![name.to_string(), "not compared".into()]),
        };
    }
    println!("{table}");
    if let Some(t) = &r.two_tower {
        println!(
            "texts: {} x {} ids ({}); reference t {:.6} b {:.6}, converted logit_scale {:.6} logit_bias {:.6}",
            t.texts,
            t.context,
            t.text_ids,
            t.reference_t,
            t.reference_b,
            t.target_logit_scale,
            t.target_logit_bias
        );
        for d in &t.declared {
            println!(
                "DECLARED: {} in {} is {}, expected {}",
                d.field,
                d.file.display(),
                d.found,
                d.expected
            );
        }
    }
    for note in &r.notes {
        println!("note: {note}");
    }
    let verdict = match (r.judged, r.pass) {
        (false, true) => "NOT JUDGED: this conversion cannot be exact (see the notes); drift reported only, give --tolerance to judge it".to_string(),
        (_, true) => format!("PASS: within tolerance {:e}", r.tolerance),
        (_, false) if r.two_tower.as_ref().is_some_and(|t| !t.declared.is_empty()) => format!(
            "FAIL: declared settings contradict the source (see DECLARED) or outputs differ beyond tolerance {:e}",
            r.tolerance
        ),
        (_, false) => format!("FAIL: outputs differ beyond tolerance {:e}", r.tolerance),
    };
    println!("{verdict}");
}
