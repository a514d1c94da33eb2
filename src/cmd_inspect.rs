//! `vitconv inspect`: lists the tensors of tensor files as tables or JSON, with grouping, statistics and a model summary.
//!
//! Without `--stats` only directories and headers are read (the tensor crate never touches
//! data to list a file), so inspecting a multi-gigabyte checkpoint is instant. `--stats`
//! reads every selected tensor once, in parallel.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use comfy_table::{presets, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use regex::Regex;
use serde_json::{json, Value};
use vitconv_tensors::{names, DType, TensorFile, TensorInfo, TensorStats};

use crate::report::terminal_safe as safe;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Tensor files: .npz, .npy, .safetensors, .pt/.pth/.bin (torch.save zip format).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Fold repeated numbered blocks (`encoderblock_{0..23}`, `blocks.{0..23}`) into one row with a count.
    #[arg(long)]
    group: bool,
    /// Read the data and add min, max, mean, std and NaN/Inf counts per tensor (in parallel).
    #[arg(long)]
    stats: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Only list tensors whose name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    filter: Option<String>,
}

/// Characters of each metadata value shown in the table view (JSON has them whole).
const METADATA_WIDTH: usize = 100;

/// Files at least this large show a progress bar while `--stats` reads them (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 256 * 1024 * 1024;

/// A tensor's (or group's) statistics as JSON: the value statistics are null when no value is finite.
fn stats_json(s: TensorStats) -> Value {
    let finite = |v: f64| {
        if s.count > 0 {
            json!(v)
        } else {
            Value::Null
        }
    };
    json!({
        "min": finite(s.min),
        "max": finite(s.max),
        "mean": finite(s.mean),
        "std": finite(s.std()),
        "nan": s.nan,
        "inf": s.inf,
    })
}

/// One row of a listing: a tensor, or a group of same-shaped numbered tensors.
#[derive(Debug, Clone)]
struct Row {
    /// The name, with folded indices written `{0..23}`.
    name: String,
    count: usize,
    dtype: DType,
    stored_as: Option<String>,
    shape: Vec<usize>,
    /// Parameters and bytes of all members together.
    params: u128,
    bytes: u128,
    stats: Option<TensorStats>,
}

/// Names of the containers whose numbered children are repeated blocks, in every layout:
/// flax `encoderblock_N`, timm/open_clip/CLIP `blocks.N` / `resblocks.N`, transformers `layer.N`,
/// BiT-style ResNet `unitN`.
const BLOCK_CONTAINERS: &[&str] = &[
    "encoderblock_",
    "blocks.",
    "blocks/",
    "resblocks.",
    "layers.",
    "layer.",
    "layers/",
    "layer/",
    "unit",
];

/// Writes each tensor that stacks `depth` blocks along its leading axis as the group of its slices:
/// `name[{0..depth-1}]`, `depth` members of the per-block shape, like a group of numbered blocks.
fn fold_stacked(rows: Vec<Row>, stacked: &std::collections::BTreeMap<String, usize>) -> Vec<Row> {
    rows.into_iter()
        .map(|mut r| {
            if let Some(&depth) = stacked.get(&r.name) {
                if r.shape.first() == Some(&depth) && depth > 0 {
                    r.name = format!("{}[{{0..{}}}]", r.name, depth - 1);
                    r.shape.remove(0);
                    r.count = r.count.saturating_mul(depth);
                }
            }
            r
        })
        .collect()
}

/// Folds tensors that differ only in block indices (with equal dtype and shape) into one row each.
fn group_rows(rows: Vec<Row>) -> Vec<Row> {
    let groups = names::group_names(
        rows.iter()
            .map(|r| (r.name.as_str(), (r.dtype, r.shape.clone()))),
        BLOCK_CONTAINERS,
    );
    groups
        .into_iter()
        .filter_map(|g| {
            let mut members = g.members.iter().filter_map(|&i| rows.get(i));
            let mut row = members.next()?.clone();
            for m in members {
                row.count += m.count;
                row.params += m.params;
                row.bytes += m.bytes;
                row.stats = match (row.stats, m.stats) {
                    (Some(a), Some(b)) => Some(a.merge(b)),
                    (a, b) => a.or(b),
                };
            }
            row.name = g.name;
            Some(row)
        })
        .collect()
}

/// Formats an integer with thousands separators.
fn thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats a byte count for people: `1.23 GB`-style with binary units.
fn human_bytes(n: u128) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS.get(unit).copied().unwrap_or("B"))
    }
}

/// Formats a statistic: fixed point in the usual range, scientific outside it.
fn fmt_float(v: f64) -> String {
    if v == 0.0 || (1e-3..1e5).contains(&v.abs()) {
        format!("{v:.5}")
    } else {
        format!("{v:.4e}")
    }
}

fn shape_str(shape: &[usize]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Everything gathered about one file.
struct Listing {
    /// The folder vitconv wrote that holds `file`, when a folder was named.
    folder: Option<vitconv_convert::folders::Folder>,
    file: TensorFile,
    summary: Option<vitconv_convert::Summary>,
    /// Top-level `.pt` entries that hold no tensor.
    non_tensors: Vec<String>,
    rows: Vec<Row>,
    selected: Vec<TensorInfo>,
    stats: Option<Vec<TensorStats>>,
}

fn list_file(path: &Path, args: &InspectArgs, filter: Option<&Regex>) -> anyhow::Result<Listing> {
    // A folder vitconv wrote (hf, timm, open_clip): its weights file, and what its configs declare. A JAX
    // checkpoint folder (`.bv`, Orbax) is a tensor file of its own.
    let folder = if path.is_dir() && !vitconv_tensors::is_checkpoint_folder(path) {
        match vitconv_convert::folders::read_folder(path)? {
            Some(f) => Some(f),
            None => anyhow::bail!(
                "{}: a directory that is neither a JAX checkpoint (.bv, Orbax) nor a folder vitconv writes (model.safetensors with config.json, or open_clip_model.safetensors with open_clip_config.json)",
                path.display()
            ),
        }
    } else {
        None
    };
    let file = TensorFile::open(folder.as_ref().map_or(path, |f| f.weights.as_path()))?;
    let mut summary = vitconv_convert::summarize_file(file.tensors(), file.metadata());
    if let Some(s) = summary.as_mut() {
        // A two-tower model's logit scale and bias are values, not shapes: two scalars, read here.
        for (i, name) in s.logit_tensors.iter().enumerate() {
            let v = file.read_f32(name)?;
            let x = f64::from(v.first().copied().unwrap_or(f32::NAN));
            s.architecture.push_str(&match i {
                0 => format!(", logit scale exp(t) = {:.4} (t = {x:.6})", x.exp()),
                _ => format!(", bias b = {x:.6}"),
            });
        }
    }
    let selected: Vec<TensorInfo> = file
        .tensors()
        .iter()
        .filter(|t| filter.is_none_or(|re| re.is_match(&t.name)))
        .cloned()
        .collect();
    let stats = if args.stats {
        let total: u64 = selected
            .iter()
            .map(|t| t.nbytes().unwrap_or(0) as u64)
            .sum();
        let bar = if total >= PROGRESS_MIN_BYTES && !args.json {
            let bar = ProgressBar::new(total);
            if let Ok(style) =
                ProgressStyle::with_template("{msg} {bar:40} {bytes}/{total_bytes} ({eta})")
            {
                bar.set_style(style);
            }
            bar.set_message(format!("reading {}", safe(&path.display().to_string())));
            bar
        } else {
            ProgressBar::hidden()
        };
        let stats = selected
            .par_iter()
            .map(|t| {
                let s = file.stats(&t.name);
                bar.inc(t.nbytes().unwrap_or(0) as u64);
                s
            })
            .collect::<Result<Vec<TensorStats>, _>>()?;
        bar.finish_and_clear();
        Some(stats)
    } else {
        None
    };
    let mut rows: Vec<Row> = selected
        .iter()
        .enumerate()
        .map(|(i, t)| Row {
            name: t.name.clone(),
            count: 1,
            dtype: t.dtype,
            stored_as: t.stored_as.clone(),
            shape: t.shape.clone(),
            params: t.numel().unwrap_or(0) as u128,
            bytes: t.nbytes().unwrap_or(0) as u128,
            stats: stats.as_ref().and_then(|s| s.get(i).copied()),
        })
        .collect();
    if args.group {
        rows = group_rows(fold_stacked(
            rows,
            &vitconv_convert::stacked_tensors(file.tensors()),
        ));
    }
    Ok(Listing {
        folder,
        non_tensors: file.non_tensor_entries().to_vec(),
        file,
        summary,
        rows,
        selected,
        stats,
    })
}

/// Counts tensors per dtype, in the crate's dtype order: `f32 x 388, bf16 x 2`.
fn dtype_counts(tensors: &[TensorInfo]) -> Vec<(DType, usize)> {
    DType::ALL
        .iter()
        .map(|&d| (d, tensors.iter().filter(|t| t.dtype == d).count()))
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// One line on a checkpoint folder: its kind, step, folder, chunks and the arrays with chunks missing.
fn checkpoint_line(c: &vitconv_tensors::CheckpointInfo) -> String {
    let mut line = c.kind.clone();
    if let Some(step) = &c.step {
        line.push_str(&format!(", step {step}"));
    }
    if let Some(how) = &c.chosen {
        line.push_str(&format!(" ({how})"));
    }
    line.push_str(&format!(
        ", folder {}, {} chunks stored",
        c.folder.display(),
        c.chunks
    ));
    if c.missing_chunks.is_empty() {
        line.push_str(", none missing");
    } else {
        let shown: Vec<String> = c
            .missing_chunks
            .iter()
            .map(|(name, n)| format!("{name} ({n})"))
            .collect();
        line.push_str(&format!(
            "; chunks missing (read as the fill value) in {}",
            shown.join(", ")
        ));
    }
    line
}

fn render_table(l: &Listing, args: &InspectArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}, {} tensors)",
        safe(&l.file.path().display().to_string()),
        format!("{:?}", l.file.format()).to_lowercase(),
        l.file.tensors().len()
    );
    if let Some(f) = &l.folder {
        let _ = writeln!(out, "folder: written by vitconv for --layout {}", f.layout);
        for line in &f.declares {
            let _ = writeln!(out, "  {}", safe(line));
        }
    }
    // A checkpoint folder: which kind, which step and how it was chosen, how its arrays are stored.
    if let Some(c) = l.file.checkpoint() {
        let _ = writeln!(out, "checkpoint: {}", safe(&checkpoint_line(c)));
    }
    // Metadata (safetensors `__metadata__`, vitconv's record in .pt) says how a file was made.
    for (k, v) in l.file.metadata() {
        let one_line = v.split_whitespace().collect::<Vec<_>>().join(" ");
        let shown: String = one_line.chars().take(METADATA_WIDTH).collect();
        let more = if shown.len() < one_line.len() {
            " ..."
        } else {
            ""
        };
        let _ = writeln!(out, "metadata {}: {}{more}", safe(k), safe(&shown));
    }
    if let Some(s) = &l.summary {
        let _ = writeln!(out, "{} | {}", safe(&s.family), safe(&s.architecture));
        for p in &s.parts {
            let _ = writeln!(out, "  - {}", safe(p));
        }
    }
    if !l.non_tensors.is_empty() {
        let shown: Vec<String> = l.non_tensors.iter().map(|e| safe(e).into_owned()).collect();
        let _ = writeln!(out, "non-tensor entries: {}", shown.join(", "));
    }
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    let mut header = vec!["name"];
    if args.group {
        header.push("count");
    }
    header.extend(["dtype", "shape", "parameters", "bytes"]);
    if args.stats {
        header.extend(["min", "max", "mean", "std", "nan", "inf"]);
    }
    table.set_header(header.clone());
    for row in &l.rows {
        let dtype = match &row.stored_as {
            Some(_) => format!("{}*", row.dtype),
            None => row.dtype.to_string(),
        };
        let mut cells = vec![safe(&row.name).into_owned()];
        if args.group {
            cells.push(format!("x{}", row.count));
        }
        cells.extend([
            dtype,
            shape_str(&row.shape),
            thousands(row.params),
            thousands(row.bytes),
        ]);
        if let Some(s) = row.stats {
            if s.count > 0 {
                cells.extend([
                    fmt_float(s.min),
                    fmt_float(s.max),
                    fmt_float(s.mean),
                    fmt_float(s.std()),
                ]);
            } else {
                cells.extend(["-".into(), "-".into(), "-".into(), "-".into()]);
            }
            cells.extend([s.nan.to_string(), s.inf.to_string()]);
        }
        table.add_row(cells);
    }
    let params: u128 = l
        .selected
        .iter()
        .map(|t| t.numel().unwrap_or(0) as u128)
        .sum();
    let bytes: u128 = l
        .selected
        .iter()
        .map(|t| t.nbytes().unwrap_or(0) as u128)
        .sum();
    let dtypes = dtype_counts(&l.selected)
        .iter()
        .map(|(d, n)| format!("{d} x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut foot = vec![format!("total: {} tensors", l.selected.len())];
    if args.group {
        foot.push(format!("{} rows", l.rows.len()));
    }
    foot.extend([
        dtypes,
        String::new(),
        thousands(params),
        format!("{} ({})", thousands(bytes), human_bytes(bytes)),
    ]);
    if let Some(all) = &l.stats {
        let total = all.iter().fold(TensorStats::EMPTY, |a, &b| a.merge(b));
        foot.extend([String::new(), String::new(), String::new(), String::new()]);
        foot.extend([total.nan.to_string(), total.inf.to_string()]);
    }
    table.add_row(foot);
    for (i, name) in header.iter().enumerate() {
        let numeric = !matches!(*name, "name" | "dtype" | "shape");
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(if numeric {
                CellAlignment::Right
            } else {
                CellAlignment::Left
            });
        }
    }
    let _ = writeln!(out, "{table}");
    if let Some(note) = l.selected.iter().find_map(|t| t.stored_as.as_ref()) {
        let n = l.selected.iter().filter(|t| t.stored_as.is_some()).count();
        let _ = writeln!(out, "* {n} tensors stored as {}", safe(note));
    }
    // Every field from the file was escaped above; this pass is the safety net for any
    // that was not, keeping the table's own line breaks.
    out.split('\n').map(safe).collect::<Vec<_>>().join("\n")
}

/// Writes to stdout; a closed pipe (`vitconv inspect ... | head`) ends output quietly.
/// Returns whether the reader is still there.
fn emit(text: &str) -> anyhow::Result<bool> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

fn file_json(l: &Listing, args: &InspectArgs) -> Value {
    let tensors: Vec<Value> = l
        .selected
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut v = json!({
                "name": t.name,
                "dtype": t.dtype.as_str(),
                "shape": t.shape,
                "parameters": t.numel(),
                "bytes": t.nbytes(),
            });
            if let (Some(obj), Some(s)) = (v.as_object_mut(), &t.stored_as) {
                obj.insert("stored_as".into(), json!(s));
            }
            if let (Some(obj), Some(s)) =
                (v.as_object_mut(), l.stats.as_ref().and_then(|s| s.get(i)))
            {
                obj.insert("stats".into(), stats_json(*s));
            }
            v
        })
        .collect();
    let mut v = json!({
        "path": l.file.path().display().to_string(),
        "format": l.file.format(),
        "checkpoint": l.file.checkpoint(),
        "folder": l.folder.as_ref().map(|f| json!({"layout": f.layout, "weights": f.weights.display().to_string(), "declares": f.declares})),
        "summary": l.summary,
        "non_tensor_entries": l.non_tensors,
        "metadata": l.file.metadata(),
        "tensors": tensors,
        "totals": {
            "tensors": l.selected.len(),
            "parameters": l.selected.iter().map(|t| t.numel().unwrap_or(0) as u128).sum::<u128>(),
            "bytes": l.selected.iter().map(|t| t.nbytes().unwrap_or(0) as u128).sum::<u128>(),
            "dtypes": dtype_counts(&l.selected).iter().map(|(d, n)| (d.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        },
    });
    if args.group {
        let groups: Vec<Value> = l
            .rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "count": r.count,
                    "dtype": r.dtype.as_str(),
                    "shape": r.shape,
                    "parameters": r.params,
                    "bytes": r.bytes,
                    "stats": r.stats.map(stats_json),
                })
            })
            .collect();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("groups".into(), Value::Array(groups));
        }
    }
    v
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let filter = match args.filter.as_deref() {
        // The regex crate explains a syntax error over several lines; the CLI's errors are one line.
        Some(re) => Some(Regex::new(re).map_err(|e| {
            let why = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            anyhow::anyhow!("--filter {re:?} is not a valid regular expression: {why}")
        })?),
        None => None,
    };
    let mut files = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let listing = list_file(path, &args, filter.as_ref())?;
        if args.json {
            files.push(file_json(&listing, &args));
        } else {
            let sep = if path != args.files.first().unwrap_or(path) {
                "\n"
            } else {
                ""
            };
            if !emit(&format!("{sep}{}", render_table(&listing, &args)))? {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    if args.json {
        emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({ "files": files }))?
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(123456), "123,456");
        assert_eq!(human_bytes(1536), "1.50 KiB");
    }

    fn row(name: &str, shape: Vec<usize>, stats: Option<TensorStats>) -> Row {
        let params = shape.iter().product::<usize>() as u128;
        Row {
            name: name.into(),
            count: 1,
            dtype: DType::F32,
            stored_as: None,
            shape,
            params,
            bytes: params * 4,
            stats,
        }
    }

    #[test]
    fn grouped_rows_add_up_their_members() {
        let one = |v: f32| TensorStats::of_bytes(DType::F32, &v.to_le_bytes());
        let g = group_rows(vec![
            row("blocks.0.w", vec![2, 3], Some(one(-1.0))),
            row("blocks.1.w", vec![3], Some(one(5.0))),
            row("blocks.2.w", vec![2, 3], Some(one(3.0))),
            row("encoder.layer.4.attn.ln.w", vec![2, 3], None),
        ]);
        let names: Vec<&str> = g.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["blocks.{0,2}.w", "blocks.1.w", "encoder.layer.4.attn.ln.w"]
        );
        assert_eq!((g[0].count, g[0].params, g[0].bytes), (2, 12, 48));
        let s = g[0].stats.unwrap_or(TensorStats::EMPTY);
        assert_eq!((s.count, s.min, s.max, s.mean), (2, -1.0, 3.0, 1.0));
        assert_eq!(s.std(), 2.0);
        assert_eq!(g[2].stats, None);
    }
}
