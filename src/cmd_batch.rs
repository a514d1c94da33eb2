//! Batch mode of `vitconv npz-to-pt`: converts every checkpoint under a directory (`.npz` files, flax msgpack
//! files, big_vision `.bv` workdirs, Orbax steps) into the same relative paths under another, several at once,
//! skips the outputs that are up to date, and reports the whole set in one table (or JSON).
//!
//! Resuming rests on a manifest in the output directory, [`MANIFEST`]: one JSON line per event, appended as it
//! happens, so that an interrupted run leaves a usable record. A file is `started` just before its output is
//! written, `done` once the output is in place (with the source's size and modification time and the options),
//! and `failed` when the write failed. The last line of a source decides what the next run does: `done` with the
//! same size, time and options, and every recorded output present, is skipped; anything else is converted again,
//! replacing the outputs the manifest says this tool wrote (an output that exists but was never recorded is
//! replaced only with `--force`). Each run rewrites the manifest with one line per source when it starts and
//! when it ends.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Instant, UNIX_EPOCH};

use anyhow::Context as _;
use comfy_table::{presets, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use vitconv_convert::{Layout, Options};
use vitconv_tensors::TensorFile;

/// The manifest's file name inside the output directory.
pub const MANIFEST: &str = ".vitconv-batch.jsonl";

/// Everything batch mode was asked, already checked by `cmd_convert`.
pub struct Batch {
    pub source_dir: PathBuf,
    pub output_dir: PathBuf,
    /// The extension of each output without the dot, or `None` for a directory per checkpoint (`--layout hf`).
    pub ext: Option<&'static str>,
    /// The options that change what is written, in one line (recorded with each output).
    pub fingerprint: String,
    pub jobs: usize,
    pub force: bool,
    pub quiet: bool,
    pub json: bool,
    /// Of each folder of Orbax steps, only the newest complete step.
    pub latest: bool,
    /// The conversion options every file gets (`overwrite` is set per file).
    pub opts: Options,
}

/// How one source ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Converted,
    Skipped,
    Refused,
    Failed,
}

impl Status {
    const ALL: [Status; 4] = [
        Status::Converted,
        Status::Skipped,
        Status::Refused,
        Status::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Status::Converted => "converted",
            Status::Skipped => "skipped",
            Status::Refused => "refused",
            Status::Failed => "failed",
        }
    }
}

/// The report line of one source.
struct Outcome {
    status: Status,
    /// Why it was refused or failed (one line), or why it was skipped.
    reason: Option<String>,
    /// Bytes of the weights written (converted files only).
    bytes: Option<u64>,
    seconds: f64,
    /// Where the output went when that is not the entry's planned path (a folder for a two-tower model).
    output: Option<PathBuf>,
}

impl Outcome {
    /// An outcome with a reason, put on one line (a table row, a line of stderr).
    fn new(status: Status, reason: impl Into<String>, started: Instant) -> Self {
        Outcome {
            status,
            reason: Some(reason.into().replace('\n', " ")),
            bytes: None,
            seconds: started.elapsed().as_secs_f64(),
            output: None,
        }
    }
}

/// One `.npz` found under the source directory.
struct Entry {
    /// The path relative to the source directory.
    rel: PathBuf,
    /// The output: the same relative path under the output directory, with the output's extension (none for hf).
    output: PathBuf,
    /// The source's size when it was found, for the progress bar.
    size: u64,
    /// Set when the file cannot be converted at all (a collision of outputs, an unreadable directory).
    problem: Option<String>,
}

/// What the manifest says about a source at one moment.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Started,
    Done,
    Failed,
}

/// One line of the manifest.
#[derive(Clone, Serialize, Deserialize)]
struct Record {
    /// The source, relative to the source directory.
    source: String,
    state: State,
    /// The source's size in bytes and modification time in nanoseconds since the Unix epoch, read before the
    /// conversion began.
    size: u64,
    mtime_ns: i64,
    /// [`Batch::fingerprint`] of the run.
    options: String,
    /// Whether the outputs now at these paths were written by this tool (so a later run may replace them).
    owned: bool,
    /// The files written, relative to the output directory (empty until `done`).
    outputs: Vec<String>,
}

/// The manifest: the last record of each source, and the file new records are appended to.
struct Manifest {
    path: PathBuf,
    last: HashMap<String, Record>,
    /// Open for appending; one lock so that lines from different workers never interleave.
    file: Mutex<Option<File>>,
}

/// Most bytes a manifest may have: a line per event of at most a few hundred bytes, for every source.
const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// Opens `path` with `options`, refusing a symbolic link at that name and never blocking on a FIFO.
fn open_no_follow(options: &mut OpenOptions, path: &Path) -> std::io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    options.open(path)
}

/// The manifest's text, empty when there is none. A link planted at its name is refused; the file itself is
/// read as every small file is ([`vitconv_tensors::read_regular_file`]: a regular file, never a FIFO or a
/// device, of at most [`MAX_MANIFEST_BYTES`]).
fn read_manifest(path: &Path) -> anyhow::Result<String> {
    let what = || path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => anyhow::bail!(
            "{}: the batch manifest is not a regular file (a link); remove it to start afresh",
            path.display()
        ),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e).with_context(what),
    }
    let bytes = vitconv_tensors::read_regular_file(path, MAX_MANIFEST_BYTES)?;
    String::from_utf8(bytes).with_context(what)
}

impl Manifest {
    /// Reads the manifest of `output_dir` (an absent one is empty; lines that do not parse, such as one cut
    /// short by an interrupt, are ignored) and rewrites it with one line per source.
    fn load(output_dir: &Path) -> anyhow::Result<Manifest> {
        let path = output_dir.join(MANIFEST);
        let text = read_manifest(&path)?;
        let manifest = Manifest {
            path,
            last: last_records(&text),
            file: Mutex::new(None),
        };
        manifest.save()?;
        Ok(manifest)
    }

    /// The append handle, even if a worker panicked while holding it (a file handle cannot be left inconsistent).
    fn handle(&self) -> MutexGuard<'_, Option<File>> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rewrites the file with the last record of each source (atomically: a temporary renamed into place), then
    /// reopens it for appending.
    fn save(&self) -> anyhow::Result<()> {
        let mut handle = self.handle();
        *handle = None;
        let mut records: Vec<&Record> = self.last.values().collect();
        records.sort_by(|a, b| a.source.cmp(&b.source));
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        let what = || self.path.display().to_string();
        // A temporary of a fresh random name, created exclusively: a link planted under any fixed name
        // cannot redirect the write, and the rename replaces a link at the manifest's own name, not its target.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{MANIFEST}."))
            .suffix(".partial")
            .tempfile_in(dir)
            .with_context(what)?;
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .with_context(what)?;
        tmp.persist(&self.path)
            .map_err(|e| e.error)
            .with_context(what)?;
        let file =
            open_no_follow(OpenOptions::new().append(true), &self.path).with_context(what)?;
        *handle = Some(file);
        Ok(())
    }

    /// Appends one record (a single write of one line).
    fn append(&self, r: &Record) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        let mut handle = self.handle();
        let file = handle
            .as_mut()
            .with_context(|| format!("{}: not open", self.path.display()))?;
        file.write_all(line.as_bytes())
            .with_context(|| self.path.display().to_string())
    }
}

/// A source's size and modification time (nanoseconds since the Unix epoch, negative before it).
fn stamp(path: &Path) -> std::io::Result<(u64, i64)> {
    let meta = std::fs::metadata(path)?;
    let ns = |m: &std::fs::Metadata| -> std::io::Result<i64> {
        Ok(match m.modified()?.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        })
    };
    if !meta.is_dir() {
        return Ok((meta.len(), ns(&meta)?));
    }
    // A checkpoint folder: its entries' sizes and the newest time among them and the folder itself, so that a
    // new step (a new folder, a rewritten `checkpoint.bv-LAST`) or a rewritten metadata file counts as a change.
    let (mut size, mut newest) = (0u64, ns(&meta)?);
    for e in std::fs::read_dir(path)? {
        let m = e?.metadata()?;
        size = size.saturating_add(if m.is_dir() { 0 } else { m.len() });
        newest = newest.max(ns(&m)?);
    }
    Ok((size, newest))
}

/// Whether `path` holds something a conversion would replace: a file, or a directory with anything in it.
fn occupied(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path).map_or(true, |mut d| d.next().is_some()),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// A path as the report shows it.
fn shown(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// What [`find_sources`] found.
struct Found {
    /// Every `.npz`, relative to the source directory, with its size.
    sources: Vec<(PathBuf, u64)>,
    /// The directories (relative) that could not be read, with the reason.
    unreadable: Vec<(PathBuf, String)>,
}

/// Every checkpoint under `dir` (recursively, in name order) and the directories that could not be read:
/// `.npz` files, flax msgpack files (`*.msgpack`, `checkpoint_<step>`, told by their content), big_vision
/// workdirs and step folders, and Orbax steps (each complete one, or with `latest` the newest complete one of
/// each folder of steps). Symbolic links to files are followed, links to directories are not (so a link cannot
/// make the walk loop), and `skip` (the output directory, when it lies inside) is not entered.
fn find_sources(dir: &Path, skip: Option<&Path>, latest: bool) -> Found {
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let full = dir.join(&rel);
        let entries = match std::fs::read_dir(&full) {
            Ok(rd) => rd.collect::<std::io::Result<Vec<_>>>(),
            Err(e) => Err(e),
        };
        let entries = match entries {
            Ok(v) => v,
            Err(e) => {
                unreadable.push((rel, format!("{}: {e}", full.display())));
                continue;
            }
        };
        let mut subdirs = Vec::new();
        // Complete Orbax steps in this folder, with their step numbers, for `latest`.
        let mut steps: Vec<(u64, PathBuf)> = Vec::new();
        for e in entries {
            let child = rel.join(e.file_name());
            let Ok(kind) = e.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let inside_output = skip.is_some_and(|s| {
                    std::fs::canonicalize(e.path()).is_ok_and(|c| c.as_path() == s)
                });
                if inside_output {
                    continue;
                }
                match vitconv_tensors::folder_kind(&e.path()) {
                    vitconv_tensors::FolderKind::Checkpoint => found.push((child, 0)),
                    // A step still being written (or abandoned) is not a checkpoint yet.
                    vitconv_tensors::FolderKind::OrbaxStep {
                        complete: false, ..
                    } => {}
                    vitconv_tensors::FolderKind::OrbaxStep { step, .. } => {
                        steps.push((step.unwrap_or(0), child));
                    }
                    vitconv_tensors::FolderKind::Other => subdirs.push(child),
                }
                continue;
            }
            let is_npz = child
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("npz"));
            let msgpack_name = child
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("msgpack"))
                || child
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("checkpoint_"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let is_msgpack = msgpack_name && vitconv_tensors::is_msgpack_file(&e.path());
            if !(is_npz || is_msgpack) {
                continue;
            }
            // A link is followed to what it names; a link to a directory or a dangling one is not a source.
            match std::fs::metadata(e.path()) {
                Ok(m) if m.is_file() => found.push((child, m.len())),
                _ => {}
            }
        }
        if latest {
            steps.sort();
            steps = steps.pop().into_iter().collect();
        }
        found.extend(steps.into_iter().map(|(_, child)| (child, 0)));
        pending.extend(subdirs);
    }
    // The walk's own order is depth-first; the report is in path order.
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Found {
        sources: found,
        unreadable,
    }
}

/// The entries to convert: each found source with its output, and the problems that stop one before it starts.
fn plan_entries(batch: &Batch, found: Vec<(PathBuf, u64)>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = found
        .into_iter()
        .map(|(rel, size)| {
            // An `.npz` or `.msgpack` file's extension is replaced; a folder's or a bare file's name is kept
            // whole (`checkpoint_100` -> `checkpoint_100.safetensors`), so that `ckpt.v2` keeps its `.v2`.
            let replaced = rel.extension().is_some_and(|x| {
                x.eq_ignore_ascii_case("npz") || x.eq_ignore_ascii_case("msgpack")
            });
            let out_rel = match (batch.ext, replaced) {
                (Some(ext), true) => rel.with_extension(ext),
                (None, true) => rel.with_extension(""),
                (Some(ext), false) => {
                    let mut name = rel.clone().into_os_string();
                    name.push(".");
                    name.push(ext);
                    PathBuf::from(name)
                }
                (None, false) => rel.clone(),
            };
            Entry {
                output: batch.output_dir.join(out_rel),
                rel,
                size,
                problem: None,
            }
        })
        .collect();
    // Two sources whose names differ only in the case of `.npz` would write the same output.
    let mut first: HashMap<PathBuf, PathBuf> = HashMap::new();
    for e in &mut entries {
        if let Some(other) = first.get(&e.output) {
            e.problem = Some(format!(
                "{}: the output of {} too; rename one of them",
                e.output.display(),
                other.display()
            ));
        } else {
            first.insert(e.output.clone(), e.rel.clone());
        }
    }
    // An hf output is a directory; one that would also hold other outputs (`a/b.npz` beside a directory `a/b/`)
    // cannot be written whole.
    if batch.ext.is_none() {
        let outputs: HashSet<PathBuf> = entries.iter().map(|e| e.output.clone()).collect();
        let mut holders: HashMap<PathBuf, PathBuf> = HashMap::new();
        for e in &entries {
            for a in e.output.ancestors().skip(1) {
                if outputs.contains(a) {
                    holders.entry(a.to_path_buf()).or_insert(e.rel.clone());
                }
            }
        }
        for e in &mut entries {
            if let (None, Some(inner)) = (&e.problem, holders.get(&e.output)) {
                e.problem = Some(format!(
                    "{}: this output directory would also hold the output of {}; rename one of them",
                    e.output.display(),
                    inner.display()
                ));
            }
        }
    }
    entries
}

/// What every worker shares.
struct Shared<'a> {
    batch: &'a Batch,
    manifest: &'a Manifest,
    bar: &'a ProgressBar,
}

impl Shared<'_> {
    /// Whether an interrupt asked the run to stop.
    fn cancelled(&self) -> bool {
        interrupted(self.batch)
    }
}

/// Converts one source (or skips it), reporting its progress on the shared bar; never panics on bad input and
/// never touches another file's output.
fn convert_one(e: &Entry, sh: &Shared) -> Outcome {
    let started = Instant::now();
    let batch = sh.batch;
    let key = shown(&e.rel);
    let source = batch.source_dir.join(&e.rel);
    let mut reported = 0u64;
    let outcome = (|| {
        let (size, mtime_ns) = match stamp(&source) {
            Ok(s) => s,
            Err(err) => {
                return Outcome::new(
                    Status::Failed,
                    format!("{}: {err}", source.display()),
                    started,
                )
            }
        };
        let last = sh.manifest.last.get(&key);
        let owned = last.is_some_and(|r| r.state != State::Failed || r.owned);
        let up_to_date = last.is_some_and(|r| {
            r.state == State::Done
                && r.size == size
                && r.mtime_ns == mtime_ns
                && r.options == batch.fingerprint
                && !r.outputs.is_empty()
                && r.outputs.iter().all(|o| batch.output_dir.join(o).exists())
        });
        if up_to_date && !batch.force {
            return Outcome::new(
                Status::Skipped,
                "up to date (same source size, modification time and options as recorded)",
                started,
            );
        }
        let file = match TensorFile::open(&source) {
            Ok(f) => f,
            Err(err) => return Outcome::new(Status::Failed, err.to_string(), started),
        };
        let mut opts = batch.opts.clone();
        opts.overwrite = batch.force || owned;
        let conv = match vitconv_convert::prepare(&file, &opts) {
            Ok(c) => c,
            // A source that cannot be read is broken; anything else prepare declines is a refusal (a layout
            // that cannot hold the model, an option that does not apply, not a ViT checkpoint).
            Err(err @ vitconv_convert::Error::Tensors(_)) => {
                return Outcome::new(Status::Failed, err.to_string(), started)
            }
            Err(err) => {
                let why = crate::one_line(&anyhow::Error::new(err));
                let why = if why.contains(&*source.to_string_lossy()) {
                    why
                } else {
                    format!("{}: {why}", source.display())
                };
                return Outcome::new(Status::Refused, why, started);
            }
        };
        // A layout that writes a whole folder for this model (open_clip's two-tower CustomTextCLIP) gets the
        // output's name without `--ext`.
        let output = match conv.plan.kind {
            vitconv_convert::plan::OutputKind::Directory { .. } => e.output.with_extension(""),
            _ => e.output.clone(),
        };
        if !opts.overwrite && occupied(&output) {
            return Outcome::new(
                Status::Failed,
                format!(
                    "{}: output exists and no earlier batch run recorded writing it ({}); pass --force to replace it",
                    output.display(),
                    MANIFEST
                ),
                started,
            );
        }
        let mut record = Record {
            source: key.clone(),
            state: State::Started,
            size,
            mtime_ns,
            options: batch.fingerprint.clone(),
            owned: true,
            outputs: Vec::new(),
        };
        if let Err(err) = sh.manifest.append(&record) {
            return Outcome::new(Status::Failed, crate::one_line(&err), started);
        }
        let written = {
            let mut progress = |done: u64, total: u64| {
                let scaled = if total == 0 {
                    0
                } else {
                    (u128::from(done) * u128::from(e.size) / u128::from(total)) as u64
                };
                if scaled > reported {
                    sh.bar.inc(scaled - reported);
                    reported = scaled;
                }
            };
            vitconv_convert::write(&file, &conv, &opts, &output, &mut progress)
        };
        let written = match written {
            Ok(w) => w,
            Err(err) => {
                // The writer replaces nothing when it fails, so the outputs at these paths are what they were.
                record.state = State::Failed;
                record.owned = owned;
                let _ = sh.manifest.append(&record);
                // The whole chain: an I/O error's cause is its source, not part of its message.
                let why = crate::one_line(&anyhow::Error::new(err));
                return Outcome::new(Status::Failed, why, started);
            }
        };
        record.state = State::Done;
        record.outputs = std::iter::once(&written.weights)
            .chain(&written.side_files)
            .map(|p| shown(p.strip_prefix(&batch.output_dir).unwrap_or(p)))
            .collect();
        if let Err(err) = sh.manifest.append(&record) {
            return Outcome::new(
                Status::Failed,
                format!(
                    "{}: converted, but not recorded, so the next run converts it again: {}",
                    e.output.display(),
                    crate::one_line(&err)
                ),
                started,
            );
        }
        Outcome {
            status: Status::Converted,
            reason: None,
            bytes: Some(written.bytes),
            seconds: started.elapsed().as_secs_f64(),
            output: (output != e.output).then_some(output),
        }
    })();
    sh.bar.inc(e.size.saturating_sub(reported));
    outcome
}

/// One worker: converts the entries of `order` it takes (the next not taken by another) until none is left, and
/// sends back each outcome with its entry's index. A panic fails that file only.
fn work(
    order: &[usize],
    next: &AtomicUsize,
    entries: &[Entry],
    shared: &Shared,
    tx: mpsc::Sender<(usize, Outcome)>,
) {
    while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
        // After an interrupt no new file is started; those in flight stop at their next band.
        if shared.cancelled() {
            break;
        }
        let entry = &entries[i];
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| convert_one(entry, shared)))
                .unwrap_or_else(|_| {
                    let source = shared.batch.source_dir.join(&entry.rel);
                    Outcome::new(
                        Status::Failed,
                        format!(
                    "{}: the conversion stopped unexpectedly (a bug in vitconv; please report it)",
                    source.display()
                ),
                        Instant::now(),
                    )
                });
        if tx.send((i, outcome)).is_err() {
            break;
        }
    }
}

/// Whether an interrupt asked the run to stop.
fn interrupted(batch: &Batch) -> bool {
    batch
        .opts
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
}

/// Runs batch mode: finds the sources, converts them `jobs` at a time, prints the summary. Exit status 0 when
/// every file was converted or skipped, 2 when any was refused or failed.
pub fn run(batch: &Batch) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    if batch.output_dir.exists() && !batch.output_dir.is_dir() {
        anyhow::bail!(
            "{}: is a file; with a directory as SOURCE, OUTPUT is the directory the outputs go to",
            batch.output_dir.display()
        );
    }
    let skip = std::fs::canonicalize(&batch.output_dir).ok();
    let found = find_sources(&batch.source_dir, skip.as_deref(), batch.latest);
    if found.sources.is_empty() && found.unreadable.is_empty() {
        anyhow::bail!(
            "{}: no checkpoint under it (.npz, flax msgpack, big_vision .bv, Orbax)",
            batch.source_dir.display()
        );
    }
    let mut entries = plan_entries(batch, found.sources);
    entries.extend(found.unreadable.into_iter().map(|(rel, why)| Entry {
        output: batch.output_dir.join(&rel),
        rel,
        size: 0,
        problem: Some(why),
    }));
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));

    // The output directory and every directory an output goes into are made here, before any worker starts, so
    // that no worker's cleanup can remove a directory another is writing into. Those no output went into (every
    // file in them refused, failed or interrupted) are removed at the end.
    let mut dirs = vec![vitconv_tensors::create_dirs(&batch.output_dir)
        .with_context(|| batch.output_dir.display().to_string())?];
    let parents: std::collections::BTreeSet<PathBuf> = entries
        .iter()
        .filter(|e| e.problem.is_none())
        .filter_map(|e| e.output.parent().map(Path::to_path_buf))
        .collect();
    for p in parents {
        match vitconv_tensors::create_dirs(&p) {
            Ok(g) => dirs.push(g),
            Err(err) => {
                let why = format!("{}: {err}", p.display());
                for e in entries
                    .iter_mut()
                    .filter(|e| e.output.parent() == Some(p.as_path()))
                {
                    e.problem.get_or_insert_with(|| why.clone());
                }
            }
        }
    }
    let mut manifest = Manifest::load(&batch.output_dir)?;

    let total_bytes: u64 = entries.iter().map(|e| e.size).sum();
    let bar = if batch.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(total_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {binary_bytes}/{binary_total_bytes} {msg} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let n = entries.len();
    bar.set_message(format!("0/{n} files"));

    let mut outcomes: Vec<Option<Outcome>> = entries
        .iter()
        .map(|e| {
            e.problem
                .as_ref()
                .map(|why| Outcome::new(Status::Failed, why.clone(), Instant::now()))
        })
        .collect();
    // The largest first, so that a big file started last does not run alone at the end.
    let mut order: Vec<usize> = (0..n).filter(|&i| outcomes[i].is_none()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(entries[i].size));
    let workers = batch.jobs.clamp(1, order.len().max(1));
    let next = AtomicUsize::new(0);
    let shared = Shared {
        batch,
        manifest: &manifest,
        bar: &bar,
    };
    let mut finished = n - order.len();
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, order, entries, shared) = (&next, &order, &entries, &shared);
            s.spawn(move || work(order, next, entries, shared, tx));
        }
        drop(tx);
        for (i, outcome) in rx {
            outcomes[i] = Some(outcome);
            finished += 1;
            bar.set_message(format!("{finished}/{n} files"));
        }
    });
    bar.finish_and_clear();

    // Directories made above that no output went into (every file in them refused, failed or interrupted).
    for made in &dirs {
        made.remove_empty();
    }
    drop(dirs);
    // The manifest is rewritten with one line per source, from what this run appended.
    // Read back through the same checks as at the start: the file could have been swapped meanwhile.
    manifest.last = last_records(&read_manifest(&manifest.path).unwrap_or_default());
    let saved = manifest.save();
    if interrupted(batch) {
        // The files in flight stopped and removed their temporaries; the manifest records what was done, so
        // the next run resumes.
        bar.finish_and_clear();
        eprintln!(
            "vitconv: interrupted; removed the partial outputs of the files in flight (run again to resume)"
        );
        saved?;
        return Ok(ExitCode::from(crate::cmd_convert::INTERRUPTED));
    }

    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::new(Status::Failed, "not run", Instant::now())))
        .collect();
    let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    let seconds = t0.elapsed().as_secs_f64();
    if batch.json {
        let files: Vec<_> = entries
            .iter()
            .zip(&outcomes)
            .map(|(e, o)| {
                let out = o.output.as_ref().unwrap_or(&e.output);
                json!({
                    "source": shown(&e.rel),
                    "output": shown(out.strip_prefix(&batch.output_dir).unwrap_or(out)),
                    "status": o.status.as_str(),
                    "reason": o.reason.as_deref().filter(|_| o.status != Status::Converted),
                    "bytes": o.bytes,
                    "seconds": o.seconds,
                })
            })
            .collect();
        let mut counts = serde_json::Map::new();
        counts.insert("total".into(), json!(n));
        for s in Status::ALL {
            counts.insert(s.as_str().into(), json!(count(s)));
        }
        let summary = json!({
            "source_dir": shown(&batch.source_dir),
            "output_dir": shown(&batch.output_dir),
            "layout": batch.opts.layout.as_str(),
            "options": batch.fingerprint,
            "jobs": workers,
            "seconds": seconds,
            "counts": counts,
            "files": files,
        });
        print_out(&format!("{}\n", serde_json::to_string_pretty(&summary)?));
    } else if batch.quiet {
        for (e, o) in entries.iter().zip(&outcomes) {
            if matches!(o.status, Status::Refused | Status::Failed) {
                // The reason names the file (the source, or the output it could not write).
                eprintln!(
                    "vitconv: {} {}: {}",
                    o.status.as_str(),
                    shown(&e.rel),
                    o.reason.as_deref().unwrap_or_default()
                );
            }
        }
    } else {
        let counts: Vec<String> = Status::ALL
            .iter()
            .map(|&s| format!("{} {}", count(s), s.as_str()))
            .collect();
        print_out(&format!(
            "{}{n} files in {seconds:.2} s ({workers} at a time): {}; outputs under {}\n",
            tables(&entries, &outcomes),
            counts.join(", "),
            batch.output_dir.display()
        ));
        if batch.opts.layout == Layout::Clip && count(Status::Converted) > 0 {
            eprintln!(
                "vitconv: warning: {}",
                vitconv_convert::layout::clip::NOT_EXACT
            );
        }
    }
    saved?;
    let clean = count(Status::Refused) == 0 && count(Status::Failed) == 0;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// The last record of each source in a manifest's text; lines that do not parse are ignored.
fn last_records(text: &str) -> HashMap<String, Record> {
    let mut last = HashMap::new();
    for line in text.lines() {
        if let Ok(r) = serde_json::from_str::<Record>(line) {
            last.insert(r.source.clone(), r);
        }
    }
    last
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an error worth a panic.
fn print_out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// The files refused or failed, with the reasons, then the count of each status; each table ends in a newline.
fn tables(entries: &[Entry], outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let problems: Vec<(&Entry, &Outcome)> = entries
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| matches!(o.status, Status::Refused | Status::Failed))
        .collect();
    if !problems.is_empty() {
        let mut table = Table::new();
        table.load_preset(presets::UTF8_FULL_CONDENSED);
        // Wrapped to the terminal's width when there is one.
        table.set_content_arrangement(ContentArrangement::Dynamic);
        table.set_header(["source", "status", "reason"]);
        for (e, o) in problems {
            table.add_row([
                shown(&e.rel),
                o.status.as_str().to_string(),
                o.reason.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&format!("{table}\n"));
    }
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    table.set_header(["status", "files"]);
    for s in Status::ALL {
        let c = outcomes.iter().filter(|o| o.status == s).count();
        table.add_row([s.as_str().to_string(), c.to_string()]);
    }
    out.push_str(&format!("{table}\n"));
    out
}
