//! `vitconv-verify`: the `vitconv verify` command in an executable of its own, the only one that links libtorch
//! (through the vitconv-verify crate), so that `vitconv inspect` and `npz-to-pt` start without loading it.
//! `vitconv verify ARGS` runs this with ARGS; it is built with the cargo feature `verify`.

#[path = "../report.rs"]
mod report;
#[path = "../verify_args.rs"]
mod verify_args;

use std::process::ExitCode;

use clap::Parser;
use verify_args::VerifyArgs;

#[derive(Parser)]
#[command(
    name = "vitconv verify",
    version,
    about = "Run the source checkpoint and its conversion side by side on libtorch and compare their outputs"
)]
struct Cli {
    #[command(flatten)]
    args: VerifyArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help and version to stdout with exit 0; usage errors exit 2.
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli.args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("vitconv: error: {}", report::one_line(&err));
            ExitCode::from(2)
        }
    }
}

fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
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
        max_patches: args.max_patches,
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
        match &r.naflex {
            Some(n) => format!("NaFlex, {} patches", n.max_patches),
            None => format!("{0}x{0}", r.image_size),
        },
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
