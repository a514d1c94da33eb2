//! `vitconv inspect`: lists the tensors of tensor files as tables or JSON, with grouping, statistics and a model summary.
//!
//! Without `--stats` only directories and headers are read (the tensor crate never touches
//! data to list a file), so inspecting a multi-gigabyte checkpoint is instant. `--stats`
//! reads every selected tensor once, in parallel.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::Context as _;
use comfy_table::{presets, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use regex::Regex;
use serde_json::{json, Value};
use vitconv_tensors::{DType, TensorFile, TensorInfo};

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

/// Summary statistics of one tensor (or a group), over its finite values.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    /// Number of finite values.
    count: u64,
    mean: f64,
    /// Sum of squared deviations from the mean (Chan et al.'s M2), for merging groups.
    m2: f64,
    min: f64,
    max: f64,
    nan: u64,
    inf: u64,
}

impl Stats {
    const EMPTY: Stats = Stats {
        count: 0,
        mean: 0.0,
        m2: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        nan: 0,
        inf: 0,
    };

    /// Statistics of a sequence of values, in one pass.
    ///
    /// Sums are taken around the first finite value (the "shifted data" method), which keeps
    /// the variance accurate when the mean is large against the spread, without Welford's
    /// division per element.
    fn of(values: impl Iterator<Item = f32>) -> Stats {
        let mut s = Stats::EMPTY;
        let mut shift: Option<f64> = None;
        let (mut sum, mut sumsq) = (0.0f64, 0.0f64);
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for v in values {
            if v.is_nan() {
                s.nan += 1;
                continue;
            }
            if v.is_infinite() {
                s.inf += 1;
                continue;
            }
            min = min.min(v);
            max = max.max(v);
            let k = *shift.get_or_insert(f64::from(v));
            let d = f64::from(v) - k;
            sum += d;
            sumsq += d * d;
            s.count += 1;
        }
        if s.count > 0 {
            let n = s.count as f64;
            let k = shift.unwrap_or(0.0);
            s.mean = k + sum / n;
            s.m2 = (sumsq - sum * sum / n).max(0.0);
            s.min = f64::from(min);
            s.max = f64::from(max);
        }
        s
    }

    /// Combines the statistics of two disjoint sets of values.
    fn merge(self, o: Stats) -> Stats {
        let count = self.count + o.count;
        let (mean, m2) = if count == 0 {
            (0.0, 0.0)
        } else {
            let (na, nb) = (self.count as f64, o.count as f64);
            let delta = o.mean - self.mean;
            let n = count as f64;
            (
                self.mean + delta * nb / n,
                self.m2 + o.m2 + delta * delta * na * nb / n,
            )
        };
        Stats {
            count,
            mean,
            m2,
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            nan: self.nan + o.nan,
            inf: self.inf + o.inf,
        }
    }

    /// Population standard deviation.
    fn std(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).sqrt()
        }
    }

    fn to_json(self) -> Value {
        let finite = |v: f64| {
            if self.count > 0 {
                json!(v)
            } else {
                Value::Null
            }
        };
        json!({
            "min": finite(self.min),
            "max": finite(self.max),
            "mean": finite(self.mean),
            "std": finite(self.std()),
            "nan": self.nan,
            "inf": self.inf,
        })
    }
}

/// Computes a tensor's statistics from its little-endian bytes without an intermediate f32 copy.
fn stats_of_bytes(dtype: DType, bytes: &[u8]) -> Stats {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Stats {
        Stats::of(bytes.chunks_exact(N).map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        }))
    }
    match dtype {
        DType::F64 => each(bytes, |a| f64::from_le_bytes(a) as f32),
        DType::F32 => stats_f32(bytes),
        DType::F16 => each(bytes, |a| half::f16::from_le_bytes(a).to_f32()),
        DType::BF16 => each(bytes, |a| half::bf16::from_le_bytes(a).to_f32()),
        DType::I64 => each(bytes, |a| i64::from_le_bytes(a) as f32),
        DType::I32 => each(bytes, |a| i32::from_le_bytes(a) as f32),
        DType::I16 => each(bytes, |a| f32::from(i16::from_le_bytes(a))),
        DType::I8 => each(bytes, |a| f32::from(i8::from_le_bytes(a))),
        DType::U8 => each(bytes, |a: [u8; 1]| f32::from(a[0])),
        DType::Bool => each(bytes, |a: [u8; 1]| f32::from(u8::from(a[0] != 0))),
    }
}

/// Lanes of the vectorisable f32 kernel (two SSE or one AVX register).
const LANES: usize = 8;

/// Elements per block of the f32 kernel: partial sums stay in f32 within a block (at most
/// `FAST_BLOCK / LANES` terms per lane, around a shift) and are merged across blocks in f64.
const FAST_BLOCK: usize = 4096;

/// Statistics of a block of little-endian f32 values, written so the compiler vectorises it.
///
/// Checkpoints are dominated by f32, and `--stats` must keep pace with the disk; the scalar
/// path ([`Stats::of`]) runs only for the tail of a block or a block holding NaN or Inf.
fn stats_f32(bytes: &[u8]) -> Stats {
    // Decode each block into a reused buffer first: whole-word loads that the loops below
    // can vectorise, where assembling floats from bytes in place would not be.
    let mut buf = vec![0f32; FAST_BLOCK];
    let mut total = Stats::EMPTY;
    for block in bytes.chunks(FAST_BLOCK * 4) {
        let mut n = 0;
        for (dst, src) in buf.iter_mut().zip(block.chunks_exact(4)) {
            *dst = f32::from_le_bytes(src.try_into().unwrap_or([0; 4]));
            n += 1;
        }
        total = total.merge(stats_f32_block(buf.get(..n).unwrap_or_default()));
    }
    total
}

/// Orders f32 bit patterns as integers: floats are sign-magnitude, so flipping the magnitude
/// bits of negatives makes integer order match float order (NaNs land beyond the infinities).
const fn order_key(bits: u32) -> i32 {
    let i = bits as i32;
    i ^ ((i >> 31) & 0x7fff_ffff)
}

/// Statistics of one block of f32 values: one simple loop per quantity, so each vectorises.
///
/// Kept out of line so its loops are compiled, checked (`objdump`) and profiled on their own.
#[inline(never)]
fn stats_f32_block(values: &[f32]) -> Stats {
    // Float min/max folds do not vectorise (NaN rules); integer ones do. The same keys tell
    // whether the block holds a NaN or an infinity: then the scalar path sorts them out.
    let kmin = values.iter().map(|x| order_key(x.to_bits())).min();
    let kmax = values.iter().map(|x| order_key(x.to_bits())).max();
    let (Some(kmin), Some(kmax)) = (kmin, kmax) else {
        return Stats::EMPTY;
    };
    if kmax >= order_key(f32::INFINITY.to_bits()) || kmin <= order_key(f32::NEG_INFINITY.to_bits())
    {
        return Stats::of(values.iter().copied());
    }
    let from_key = |k: i32| f64::from(f32::from_bits(order_key(k as u32) as u32));
    let shift = values.first().copied().unwrap_or(0.0);
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut sum = [0f32; LANES];
    let mut sumsq = [0f32; LANES];
    // One accumulator per loop: with two, the compiler pairs sum and sumsq of one lane into
    // a vector instead of eight lanes of one quantity. The block is in L1, so passes are cheap.
    for c in chunks.clone() {
        let Ok(v) = <&[f32; LANES]>::try_from(c) else {
            continue;
        };
        for lane in 0..LANES {
            sum[lane] += v[lane] - shift;
        }
    }
    for c in chunks {
        let Ok(v) = <&[f32; LANES]>::try_from(c) else {
            continue;
        };
        for lane in 0..LANES {
            let d = v[lane] - shift;
            sumsq[lane] += d * d;
        }
    }
    let whole = values.len() - tail.len();
    let mut s = Stats::EMPTY;
    if whole > 0 {
        let sum: f64 = sum.iter().map(|&v| f64::from(v)).sum();
        let sumsq: f64 = sumsq.iter().map(|&v| f64::from(v)).sum();
        let nf = whole as f64;
        s = Stats {
            count: whole as u64,
            mean: f64::from(shift) + sum / nf,
            m2: (sumsq - sum * sum / nf).max(0.0),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            nan: 0,
            inf: 0,
        };
    }
    let mut s = s.merge(Stats::of(tail.iter().copied()));
    // The keys covered the whole block, tail included.
    s.min = from_key(kmin);
    s.max = from_key(kmax);
    s
}

/// Bytes read at a time for `--stats`: small enough to stay in L2 cache between the read
/// and the statistics, large enough that system calls do not matter.
const STATS_CHUNK: usize = 256 * 1024;

/// Statistics of one tensor, streamed through a small reused buffer.
fn tensor_stats(file: &TensorFile, t: &TensorInfo) -> anyhow::Result<Stats> {
    let mut total = Stats::EMPTY;
    file.read_chunked(&t.name, STATS_CHUNK, |piece| {
        total = total.merge(stats_of_bytes(t.dtype, piece));
    })?;
    Ok(total)
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
    stats: Option<Stats>,
}

/// Names of the containers whose numbered children are repeated blocks, in every layout:
/// flax `encoderblock_N`, timm/open_clip/CLIP `blocks.N` / `resblocks.N`, transformers `layer.N`,
/// BiT-style ResNet `unitN`.
fn block_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(encoderblock_|blocks\.|blocks/|resblocks\.|layers?\.|layers?/|unit)(\d+)")
            .unwrap_or_else(|_| unreachable!("the block pattern is a valid regex"))
    })
}

/// The grouping key of a name (each block index replaced by a marker) and its indices.
fn fold_key(name: &str) -> (String, Vec<u64>) {
    let mut key = String::with_capacity(name.len());
    let mut indices = Vec::new();
    let mut last = 0;
    for caps in block_pattern().captures_iter(name) {
        let (Some(whole), Some(prefix), Some(num)) = (caps.get(0), caps.get(1), caps.get(2)) else {
            continue;
        };
        let Ok(n) = num.as_str().parse::<u64>() else {
            continue;
        };
        key.push_str(name.get(last..whole.start()).unwrap_or_default());
        key.push_str(prefix.as_str());
        key.push('\u{0}');
        indices.push(n);
        last = whole.end();
    }
    key.push_str(name.get(last..).unwrap_or_default());
    (key, indices)
}

/// Writes a set of indices compactly: `{0..23}` when contiguous, else `{0,2,5}`.
fn index_set(values: &[u64]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.dedup();
    match (v.first(), v.last()) {
        (Some(a), Some(b)) if v.len() == 1 => {
            debug_assert_eq!(a, b);
            a.to_string()
        }
        (Some(&a), Some(&b)) if b - a + 1 == v.len() as u64 => format!("{{{a}..{b}}}"),
        _ => format!(
            "{{{}}}",
            v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        ),
    }
}

/// Folds tensors that differ only in block indices (with equal dtype and shape) into one row each.
fn group_rows(rows: Vec<Row>) -> Vec<Row> {
    struct Acc {
        row: Row,
        indices: Vec<Vec<u64>>,
    }
    let mut order: Vec<(String, DType, Vec<usize>)> = Vec::new();
    let mut groups: HashMap<(String, DType, Vec<usize>), Acc> = HashMap::new();
    for row in rows {
        let (key, idx) = fold_key(&row.name);
        let k = (key, row.dtype, row.shape.clone());
        match groups.get_mut(&k) {
            Some(acc) => {
                acc.row.count += row.count;
                acc.row.params += row.params;
                acc.row.bytes += row.bytes;
                acc.row.stats = match (acc.row.stats, row.stats) {
                    (Some(a), Some(b)) => Some(a.merge(b)),
                    (a, b) => a.or(b),
                };
                for (slot, i) in acc.indices.iter_mut().zip(idx) {
                    slot.push(i);
                }
            }
            None => {
                order.push(k.clone());
                let indices = idx.into_iter().map(|i| vec![i]).collect();
                groups.insert(k, Acc { row, indices });
            }
        }
    }
    order
        .into_iter()
        .filter_map(|k| {
            let acc = groups.remove(&k)?;
            let mut row = acc.row;
            if row.count > 1 {
                let mut sets = acc.indices.iter().map(|v| index_set(v));
                // Rebuild the name, putting each index set back where its marker was.
                let mut name = String::new();
                let mut pieces = k.0.split('\u{0}').peekable();
                while let Some(piece) = pieces.next() {
                    name.push_str(piece);
                    if pieces.peek().is_some() {
                        name.push_str(&sets.next().unwrap_or_default());
                    }
                }
                row.name = name;
            }
            Some(row)
        })
        .collect()
}

/// Formats an integer with thousands separators.
fn thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
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
    file: TensorFile,
    summary: Option<vitconv_convert::Summary>,
    rows: Vec<Row>,
    selected: Vec<TensorInfo>,
    stats: Option<Vec<Stats>>,
}

fn list_file(
    path: &PathBuf,
    args: &InspectArgs,
    filter: Option<&Regex>,
) -> anyhow::Result<Listing> {
    let file = TensorFile::open(path)?;
    let summary = vitconv_convert::summarize(file.tensors());
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
            bar.set_message(format!("reading {}", path.display()));
            bar
        } else {
            ProgressBar::hidden()
        };
        let stats = selected
            .par_iter()
            .map(|t| {
                let s = tensor_stats(&file, t);
                bar.inc(t.nbytes().unwrap_or(0) as u64);
                s
            })
            .collect::<anyhow::Result<Vec<Stats>>>()?;
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
        rows = group_rows(rows);
    }
    Ok(Listing {
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

fn render_table(l: &Listing, args: &InspectArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}, {} tensors)",
        l.file.path().display(),
        format!("{:?}", l.file.format()).to_lowercase(),
        l.file.tensors().len()
    );
    // Metadata (safetensors `__metadata__`, vitconv's record in .pt) says how a file was made.
    for (k, v) in l.file.metadata() {
        let one_line = v.split_whitespace().collect::<Vec<_>>().join(" ");
        let shown: String = one_line.chars().take(METADATA_WIDTH).collect();
        let more = if shown.len() < one_line.len() {
            " ..."
        } else {
            ""
        };
        let _ = writeln!(out, "metadata {k}: {shown}{more}");
    }
    if let Some(s) = &l.summary {
        let _ = writeln!(out, "{} | {}", s.family, s.architecture);
        for p in &s.parts {
            let _ = writeln!(out, "  - {p}");
        }
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
        let mut cells = vec![row.name.clone()];
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
        let total = all.iter().fold(Stats::EMPTY, |a, &b| a.merge(b));
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
        let _ = writeln!(out, "* {n} tensors stored as {note}");
    }
    out
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
                obj.insert("stats".into(), s.to_json());
            }
            v
        })
        .collect();
    let mut v = json!({
        "path": l.file.path().display().to_string(),
        "format": l.file.format(),
        "summary": l.summary,
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
                    "stats": r.stats.map(Stats::to_json),
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

    /// Tolerance of the statistics against a direct two-pass computation.
    const STATS_TOL: f64 = 1e-9;

    fn row(name: &str, shape: Vec<usize>) -> Row {
        let params = shape.iter().product::<usize>() as u128;
        Row {
            name: name.into(),
            count: 1,
            dtype: DType::F32,
            stored_as: None,
            shape,
            params,
            bytes: params * 4,
            stats: None,
        }
    }

    #[test]
    fn folds_flax_and_torch_blocks_but_not_sublayers() {
        let mut rows = Vec::new();
        for i in 0..24 {
            rows.push(row(
                &format!("Transformer/encoderblock_{i}/LayerNorm_0/scale"),
                vec![8],
            ));
            rows.push(row(
                &format!("Transformer/encoderblock_{i}/LayerNorm_2/scale"),
                vec![8],
            ));
            rows.push(row(&format!("blocks.{i}.attn.qkv.weight"), vec![24, 8]));
        }
        rows.push(row("head.weight", vec![10, 8]));
        let g = group_rows(rows);
        let names: Vec<&str> = g.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Transformer/encoderblock_{0..23}/LayerNorm_0/scale",
                "Transformer/encoderblock_{0..23}/LayerNorm_2/scale",
                "blocks.{0..23}.attn.qkv.weight",
                "head.weight"
            ]
        );
        assert_eq!(g[0].count, 24);
        assert_eq!(g[2].params, 24 * 24 * 8);
        assert_eq!(g[3].count, 1);
    }

    #[test]
    fn different_shapes_are_not_folded() {
        let g = group_rows(vec![
            row("blocks.0.w", vec![2]),
            row("blocks.1.w", vec![3]),
            row("blocks.2.w", vec![2]),
        ]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "blocks.{0,2}.w");
        assert_eq!(g[1].name, "blocks.1.w");
    }

    #[test]
    fn stats_match_a_two_pass_computation_and_merge() {
        let values: Vec<f32> = (0..1000)
            .map(|i| 1000.0 + (i as f32 * 0.37).sin())
            .collect();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let s = Stats::of(values.iter().copied());
        assert!((s.mean - mean).abs() < STATS_TOL * mean);
        assert!(
            (s.std() - var.sqrt()).abs() < 1e-6,
            "{} vs {}",
            s.std(),
            var.sqrt()
        );
        let (a, b) = values.split_at(337);
        let m = Stats::of(a.iter().copied()).merge(Stats::of(b.iter().copied()));
        assert!((m.mean - mean).abs() < STATS_TOL * mean);
        assert!((m.std() - var.sqrt()).abs() < 1e-6);
        assert_eq!((m.min, m.max), (s.min, s.max));
    }

    #[test]
    fn stats_count_nan_and_inf_apart() {
        let s = Stats::of([1.0f32, f32::NAN, f32::INFINITY, 3.0, f32::NEG_INFINITY].into_iter());
        assert_eq!((s.count, s.nan, s.inf), (2, 1, 2));
        assert_eq!((s.min, s.max, s.mean), (1.0, 3.0, 2.0));
        let bytes: Vec<u8> = [half::bf16::from_f32(2.0), half::bf16::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = stats_of_bytes(DType::BF16, &bytes);
        assert_eq!((s.count, s.nan, s.max), (1, 1, 2.0));
    }

    #[test]
    fn vectorised_f32_kernel_agrees_with_the_scalar_path() {
        // Negative and positive values, a block boundary, a ragged tail, and (second run) a NaN
        // and an infinity in the middle block.
        let mut values: Vec<f32> = (0..FAST_BLOCK * 2 + 13)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        for round in 0..2 {
            if round == 1 {
                values[FAST_BLOCK + 5] = f32::NAN;
                values[FAST_BLOCK + 9] = f32::NEG_INFINITY;
            }
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let fast = stats_of_bytes(DType::F32, &bytes);
            let slow = Stats::of(values.iter().copied());
            assert_eq!(
                (fast.count, fast.nan, fast.inf),
                (slow.count, slow.nan, slow.inf)
            );
            assert_eq!((fast.min, fast.max), (slow.min, slow.max));
            assert!(
                (fast.mean - slow.mean).abs() < 1e-5 * slow.std(),
                "{fast:?} {slow:?}"
            );
            assert!(
                (fast.std() - slow.std()).abs() < 1e-5 * slow.std(),
                "{fast:?} {slow:?}"
            );
        }
    }

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(123456), "123,456");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(index_set(&[3, 1, 2]), "{1..3}");
        assert_eq!(index_set(&[0, 5]), "{0,5}");
    }
}
