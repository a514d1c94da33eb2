//! Batch mode of `vitconv npz-to-pt`, as the terminal sees it: runs a [`vitconv_batch::Request`] with a
//! progress bar, prints the summary as tables (or JSON, or only the problems with `--quiet`), and maps the
//! outcomes to the exit status. What is converted, skipped or refused, and the resume manifest, are the
//! `vitconv-batch` crate's.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use comfy_table::{presets, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use vitconv_batch::{Event, Request, Status, Summary};

use crate::report::terminal_safe;

/// Exit status after SIGINT or SIGTERM: 128 + SIGINT, as shells report an interrupted command.
pub const INTERRUPTED: u8 = 130;

/// How the summary is printed.
pub struct Printing {
    /// Nothing but the problems, on stderr (no progress bar, no table).
    pub quiet: bool,
    /// The summary as JSON on stdout instead of tables.
    pub json: bool,
}

/// Runs batch mode: converts the sources, prints the summary. Exit status 0 when every source was converted or
/// skipped, 2 when any was refused or failed, [`INTERRUPTED`] after an interrupt.
pub fn run(req: &Request, printing: &Printing) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let bar = if printing.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {binary_bytes}/{binary_total_bytes} {msg} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let on_event = |event: Event| match event {
        Event::Planned { files, bytes } => {
            bar.set_length(bytes);
            bar.set_message(format!("0/{files} files"));
        }
        Event::Advanced { bytes } => bar.inc(bytes),
        Event::Finished { done, files } => bar.set_message(format!("{done}/{files} files")),
    };
    let summary = vitconv_batch::run(req, &on_event);
    bar.finish_and_clear();
    let summary = summary?;
    if summary.interrupted {
        // The sources in flight stopped and removed their temporaries; the manifest records what was done, so
        // the next run resumes.
        eprintln!(
            "vitconv: interrupted; removed the partial outputs of the files in flight (run again to resume)"
        );
        return match summary.manifest_error {
            Some(err) => Err(err.into()),
            None => Ok(ExitCode::from(INTERRUPTED)),
        };
    }
    let seconds = t0.elapsed().as_secs_f64();
    if printing.json {
        print_out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json_summary(req, &summary, seconds))?
        ));
    } else if printing.quiet {
        for r in &summary.files {
            if matches!(r.outcome.status, Status::Refused | Status::Failed) {
                // The reason names the file (the source, or the output it could not write).
                eprintln!(
                    "vitconv: {} {}: {}",
                    r.outcome.status.as_str(),
                    terminal_safe(&r.source.to_string_lossy()),
                    reason(&r.outcome).unwrap_or_default()
                );
            }
        }
    } else {
        let counts: Vec<String> = Status::ALL
            .iter()
            .map(|&s| format!("{} {}", summary.count(s), s.as_str()))
            .collect();
        print_out(&format!(
            "{}{} files in {seconds:.2} s ({} at a time): {}; outputs under {}\n",
            tables(&summary),
            summary.files.len(),
            summary.workers,
            counts.join(", "),
            terminal_safe(&req.output_dir.to_string_lossy())
        ));
        let warning = vitconv_convert::layout::def(req.opts.layout).and_then(|d| d.warning);
        if let (Some(warning), true) = (warning, summary.count(Status::Converted) > 0) {
            eprintln!("vitconv: warning: {warning}");
        }
    }
    if let Some(err) = summary.manifest_error {
        return Err(err.into());
    }
    let clean = summary.count(Status::Refused) == 0 && summary.count(Status::Failed) == 0;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// An outcome's reason, safe to print.
fn reason(outcome: &vitconv_batch::Outcome) -> Option<String> {
    outcome.reason().map(|r| terminal_safe(&r).into_owned())
}

/// The `--json` summary.
fn json_summary(req: &Request, summary: &Summary, seconds: f64) -> serde_json::Value {
    let files: Vec<_> = summary
        .files
        .iter()
        .map(|r| {
            let out = r.output();
            let o = &r.outcome;
            json!({
                "source": r.source.to_string_lossy(),
                "output": out.strip_prefix(&req.output_dir).unwrap_or(out).to_string_lossy(),
                "status": o.status.as_str(),
                "reason": reason(o).filter(|_| o.status != Status::Converted),
                "bytes": o.bytes,
                "seconds": o.seconds,
            })
        })
        .collect();
    let mut counts = serde_json::Map::new();
    counts.insert("total".into(), json!(summary.files.len()));
    for s in Status::ALL {
        counts.insert(s.as_str().into(), json!(summary.count(s)));
    }
    json!({
        "source_dir": req.source_dir.to_string_lossy(),
        "output_dir": req.output_dir.to_string_lossy(),
        "layout": req.opts.layout.as_str(),
        "options": req.fingerprint,
        "jobs": summary.workers,
        "seconds": seconds,
        "counts": counts,
        "files": files,
    })
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an error worth a panic.
fn print_out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// The sources refused or failed, with the reasons, then the count of each status; each table ends in a
/// newline.
fn tables(summary: &Summary) -> String {
    let mut out = String::new();
    let problems: Vec<&vitconv_batch::Report> = summary
        .files
        .iter()
        .filter(|r| matches!(r.outcome.status, Status::Refused | Status::Failed))
        .collect();
    if !problems.is_empty() {
        let mut table = Table::new();
        table.load_preset(presets::UTF8_FULL_CONDENSED);
        // Wrapped to the terminal's width when there is one.
        table.set_content_arrangement(ContentArrangement::Dynamic);
        table.set_header(["source", "status", "reason"]);
        for r in problems {
            table.add_row([
                terminal_safe(&r.source.to_string_lossy()).into_owned(),
                r.outcome.status.as_str().to_string(),
                reason(&r.outcome).unwrap_or_default(),
            ]);
        }
        out.push_str(&format!("{table}\n"));
    }
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    table.set_header(["status", "files"]);
    for s in Status::ALL {
        table.add_row([s.as_str().to_string(), summary.count(s).to_string()]);
    }
    out.push_str(&format!("{table}\n"));
    out
}
