//! Runs a conversion: detect the source, build the layout's plan, then stream it into an atomic writer.
//!
//! Memory is bounded by a few bands, never a tensor or the model: the interpreter ([`crate::exec`]) produces
//! the big matrices (Dense kernels, fused q/k/v) a band of output rows at a time, each band read a group of
//! source rows at a time with positional reads, into this module's sink, which hands them to
//! `Writer::write_part`. A deflated source member cannot be read from the middle: one that is stacked
//! `[depth, ...]` is inflated once, front to back, and each block's slice handed to the outputs of that block
//! as it comes out (`vitconv_tensors::TensorFile::slice_bands`, `read_slice`), so memory is a slice, not the
//! member; an unstacked deflated member is read whole (memory: that tensor). Each source byte is read once: a
//! slice of a stack is read alone, never the whole stack per block. Producer threads (one on a 2-core machine)
//! compute tensors while the calling thread writes them in order (see `write_weights`).
//! Weights go through `vitconv_tensors::Writer` (temporary file beside the target, renamed by `finish`), and the
//! small JSON side files are written the same way after it: a failed run leaves no partial output and an
//! existing output untouched. An interrupt sets `Options::cancel`; the executor checks it between bands and
//! once more before anything is renamed into place, and returns `Error::Cancelled`, so the temporaries are
//! dropped (removed) and a folder this run created is removed, by normal unwinding: no process-global
//! registry, no exit from a handler thread (SIGKILL can still leave a temporary file).

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use vitconv_tensors::{
    output_format, DType, EntryKind, Format, OutDir, TempFile, TensorFile, TensorSpec, Writer,
};

use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::exec::{self, BandScratch, Sink, BAND_BYTES};
use crate::layout;
use crate::layout::hf_files;
use crate::options::{Layout, Options, OutDType};
use crate::plan::{OutTensor, OutputKind, Plan, OUTPUT_DIR_TOKEN};

/// A checked conversion, ready to write.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The source family (`vit_jax`, `big_vision`).
    pub family: &'static str,
    /// The source's architecture as detected.
    pub arch: Arch,
    /// The one-line description of the source's model (both towers of a two-tower model), as `inspect`
    /// prints it.
    pub architecture: String,
    /// Notes about the source itself (prefix, block naming).
    pub source_notes: Vec<String>,
    /// The layout's plan: output tensors, metadata, notes and side files.
    pub plan: Plan,
}

/// Detects the source and builds the plan for `opts`, refusing anything the layout cannot hold.
pub fn prepare(file: &TensorFile, opts: &Options) -> Result<Conversion> {
    let model = crate::sources::read(file.tensors()).map_err(|e| match e {
        // A file of no source family may be one already converted: say which layout it is in.
        Error::NotASource {
            tensors,
            layout: None,
        } => Error::NotASource {
            tensors,
            layout: layout::recognise(file.tensors()).map(|r| r.family),
        },
        e => e,
    })?;
    let source_name = file
        .path()
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let plan = layout::plan(&model, opts, file, &source_name)?;
    plan.check_complete(&model.shapes, &model.recognised)?;
    let mut source_notes = model.notes.clone();
    if let Some(t) = file.tensors().iter().find(|t| t.dtype == DType::BF16) {
        source_notes.push(format!("stored as bfloat16 ({} and others)", t.name));
    }
    Ok(Conversion {
        family: model.family,
        architecture: crate::model_line(&model),
        arch: model.image.arch,
        source_notes,
        plan,
    })
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// Whether OUTPUT was written as a folder (weights and configs inside it).
    pub folder: bool,
    /// The weights file.
    pub weights: PathBuf,
    /// Side files (configs), in the order written.
    pub side_files: Vec<PathBuf>,
    /// How many tensors the weights file holds.
    pub tensors: usize,
    /// How many bytes of tensor data were written.
    pub bytes: u64,
}

/// The Python that loads what a conversion wrote into OUTPUT, as the lines to print: the plan's lines (or a
/// folder's own line, which replaces them), with the paths put in for the plan's placeholders as Python string
/// literals, then the layout's line that loads a weights file where one was written.
pub fn python(conv: &Conversion, written: &Written, layout: Layout, output: &Path) -> Vec<String> {
    use crate::plan::{CONFIG_JSON_TOKEN, OUTPUT_DIR_TOKEN};
    let path = |p: &Path| crate::layout::py_str(&p.to_string_lossy());
    let (text, load) = match &conv.plan.kind {
        OutputKind::FileOrFolder { python } if written.folder => (python.as_str(), false),
        OutputKind::Directory { .. } => (conv.plan.python.as_str(), false),
        _ => (conv.plan.python.as_str(), true),
    };
    // The one side file beside a weights file (open_clip's config) is the one the plan's lines read.
    let config = written
        .side_files
        .first()
        .map(|p| path(p))
        .unwrap_or_default();
    let text = fill(
        text,
        &[
            (OUTPUT_DIR_TOKEN, &path(output)),
            (CONFIG_JSON_TOKEN, &config),
        ],
    );
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let template = crate::layout::def(layout).and_then(|d| d.load_weights);
    if let (true, Some(template)) = (load, template) {
        let w = path(&written.weights);
        let (import, read) = if written
            .weights
            .extension()
            .is_some_and(|e| e == "safetensors")
        {
            (
                "import safetensors.torch",
                format!("safetensors.torch.load_file({w})"),
            )
        } else {
            (
                "import torch",
                format!("torch.load({w}, weights_only=True)"),
            )
        };
        lines.push(import.to_string());
        lines.push(template.replace("{read}", &read));
    }
    lines
}

/// `text` with each placeholder of `fills` replaced by its value, in one pass from left to right, so that a value
/// holding a placeholder's text (a path may) is written as it is, never replaced in turn.
fn fill(text: &str, fills: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = fills
            .iter()
            .filter_map(|&(token, value)| rest.find(token).map(|at| (at, token, value)))
            .min_by_key(|&(at, _, _)| at);
        let Some((at, token, value)) = next else {
            out.push_str(rest);
            return out;
        };
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        out.push_str(value);
        rest = after.get(token.len()..).unwrap_or_default();
    }
}

/// Where a conversion's output goes: the name `name` inside the open directory `dir`.
///
/// Everything the conversion writes is created relative to `dir`'s handle and, for a folder output, to the
/// handle of the folder opened from it without following a link: nothing lands outside OUTPUT, whatever links
/// are planted on the way or swapped in while the conversion runs.
#[derive(Debug, Clone)]
pub struct Target {
    /// The directory OUTPUT is in, already open.
    pub dir: OutDir,
    /// OUTPUT's own name inside it.
    pub name: OsString,
}

impl Target {
    /// OUTPUT's path, for messages and reports.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }
}

/// Where a `File` plan's side file goes: OUTPUT's name with its extension replaced by the suffix.
fn side_name(output: &OsStr, suffix: &str) -> OsString {
    let mut name = Path::new(output)
        .file_stem()
        .map(OsStr::to_os_string)
        .unwrap_or_default();
    name.push(suffix);
    name
}

/// Writes the conversion to `output`, calling `progress(bytes_done, bytes_total)` after each tensor.
///
/// OUTPUT's directory is a path the user named (links in it are followed); a folder output's missing parents
/// are created, and removed again if the conversion fails. OUTPUT itself, and everything below it, is never
/// reached through a link (see [`write_in`]).
pub fn write(
    file: &TensorFile,
    conv: &Conversion,
    opts: &Options,
    output: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Written> {
    let (parent, name) = match (output.parent(), output.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => {
            return Err(Error::Io {
                path: output.to_path_buf(),
                op: "cannot write to it",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the output path names no file or folder",
                ),
            })
        }
    };
    let folder = is_folder_output(&conv.plan.kind, output, output.is_dir());
    // Only a folder output gets its missing parents; a weights file in a missing directory is refused.
    let parents = match folder && !parent.as_os_str().is_empty() {
        true => Some(vitconv_tensors::create_dirs(parent).map_err(|e| Error::Io {
            path: output.to_path_buf(),
            op: "cannot create the directory it goes in",
            source: e,
        })?),
        false => None,
    };
    let result = OutDir::open(parent)
        .map_err(|e| Error::Io {
            path: output.to_path_buf(),
            op: "cannot open the directory it goes in",
            source: e,
        })
        .and_then(|dir| {
            let target = Target {
                dir,
                name: name.to_os_string(),
            };
            write_in(file, conv, opts, &target, progress)
        });
    if let (Err(_), Some(parents)) = (&result, &parents) {
        parents.remove_empty();
    }
    result
}

/// Whether a plan of `kind` writes a folder at `output` (`is_dir`: whether a directory is there now): a layout
/// that offers both writes one when OUTPUT names no weights file (an existing directory, or a name without an
/// extension).
fn is_folder_output(kind: &OutputKind, output: &Path, is_dir: bool) -> bool {
    match kind {
        OutputKind::File => false,
        OutputKind::HfDirectory | OutputKind::Directory { .. } => true,
        // An unknown extension is a mistake, not a folder name.
        OutputKind::FileOrFolder { .. } => is_dir || output.extension().is_none(),
    }
}

/// One small file to write: the directory it goes in, its name there, its contents.
struct SideOut<'a> {
    dir: OutDir,
    name: OsString,
    contents: std::borrow::Cow<'a, [u8]>,
}

/// Writes the conversion to `target`, calling `progress(bytes_done, bytes_total)` after each tensor.
///
/// A folder output is opened (or created) inside `target.dir` without following a link, and every file and
/// subfolder in it is made relative to that handle; a weights file and its side files are created and
/// renamed relative to `target.dir`. A failure leaves every existing file as it was and removes what this
/// run created.
pub fn write_in(
    file: &TensorFile,
    conv: &Conversion,
    opts: &Options,
    target: &Target,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Written> {
    let plan = &conv.plan;
    let output = target.path();
    let dir = &target.dir;
    let io = |path: &Path, op: &'static str| {
        let path = path.to_path_buf();
        move |e| Error::Io {
            path: path.clone(),
            op,
            source: e,
        }
    };
    let existing = dir
        .kind(&target.name)
        .map_err(io(&output, "cannot look at it"))?;
    let folder = is_folder_output(&plan.kind, &output, existing == Some(EntryKind::Directory));
    // A folder this run created (removed whole on failure), or the subfolders it created in an existing one.
    let mut created_folder = false;
    let mut created_inside: Vec<PathBuf> = Vec::new();
    let mut folder_dir: Option<OutDir> = None;
    let result = (|| {
        let (weights_dir, weights_name, format, sides) = match folder {
            false => {
                let format = match (output_format(&output), plan.no_folder) {
                    (Some(f @ (Format::Pt | Format::Safetensors)), _) => f,
                    // A folder was meant (no extension, or an existing directory) where the layout has none.
                    (None, Some(why))
                        if output.extension().is_none()
                            || existing == Some(EntryKind::Directory) =>
                    {
                        return Err(Error::NoFolderForm {
                            path: output.clone(),
                            layout: opts.layout.as_str(),
                            why,
                        })
                    }
                    _ => {
                        return Err(Error::OutputExtension {
                            path: output.clone(),
                        })
                    }
                };
                // A layout's folder files (`config.json`) belong to its folder form only.
                let sides: Vec<SideOut<'_>> = match plan.kind {
                    OutputKind::FileOrFolder { .. } => Vec::new(),
                    _ => plan
                        .side_files
                        .iter()
                        .map(|s| SideOut {
                            dir: dir.clone(),
                            name: side_name(&target.name, &s.name),
                            contents: std::borrow::Cow::Borrowed(s.contents.as_bytes()),
                        })
                        .collect(),
                };
                if !opts.overwrite {
                    for name in std::iter::once(&target.name).chain(sides.iter().map(|s| &s.name)) {
                        let path = dir.path().join(name);
                        if dir
                            .kind(name)
                            .map_err(io(&path, "cannot look at it"))?
                            .is_some()
                        {
                            return Err(Error::Exists { path });
                        }
                    }
                }
                (dir.clone(), target.name.clone(), format, sides)
            }
            true => {
                let weights_name = match plan.kind {
                    OutputKind::Directory { weights, .. } => weights,
                    _ => hf_files::WEIGHTS_FILE,
                };
                if matches!(existing, Some(EntryKind::File | EntryKind::Other))
                    || output_format(&output).is_some()
                {
                    let files: Vec<&str> = std::iter::once(weights_name)
                        .chain(plan.side_files.iter().map(|s| s.name.as_str()))
                        .collect();
                    return Err(Error::FolderOutputNotDirectory {
                        path: output.clone(),
                        layout: opts.layout.as_str(),
                        files: files.join(", "),
                    });
                }
                // Opened without following a link: a link planted (or swapped in) at OUTPUT is refused.
                let (out, created) = dir
                    .child(&target.name, true)
                    .map_err(io(&output, "cannot open the output folder"))?;
                created_folder = created;
                folder_dir = Some(out.clone());
                if !created && !opts.overwrite {
                    let names = out
                        .names()
                        .map_err(io(&output, "cannot read the directory"))?;
                    if !names.is_empty() {
                        return Err(Error::Exists {
                            path: output.clone(),
                        });
                    }
                }
                // The folder's absolute path, for a side file that must name it.
                let folder_path = match &plan.kind {
                    OutputKind::Directory {
                        folder_path_in: Some(_),
                        ..
                    } => Some(folder_path_json(&output)?),
                    _ => None,
                };
                let mut sides = Vec::new();
                let copied = plan.copied_files.iter().map(|(name, bytes)| {
                    (name.as_str(), std::borrow::Cow::Borrowed(bytes.as_slice()))
                });
                let configs = plan.side_files.iter().map(|s| {
                    let contents = match (&plan.kind, &folder_path) {
                        // Substituted only in the file the layout says holds the placeholder: any other text
                        // (a tokenizer's pieces) is written as it came.
                        (
                            OutputKind::Directory {
                                folder_path_in: Some(holder),
                                ..
                            },
                            Some(p),
                        ) if s.name == *holder => std::borrow::Cow::Owned(
                            s.contents.replace(OUTPUT_DIR_TOKEN, p).into_bytes(),
                        ),
                        _ => std::borrow::Cow::Borrowed(s.contents.as_bytes()),
                    };
                    (s.name.as_str(), contents)
                });
                for (name, contents) in configs.chain(copied) {
                    let rel = Path::new(name);
                    // Side files in a subfolder (`image_tower/config.json`) get it created inside OUTPUT,
                    // relative to its handle and again without following a link.
                    let (sub, file_name) = match (rel.parent(), rel.file_name()) {
                        (Some(p), Some(f)) if !p.as_os_str().is_empty() => {
                            let path = output.join(p);
                            let (sub, made) = out
                                .descend(p, true)
                                .map_err(io(&path, "cannot create the directory"))?;
                            created_inside.extend(made);
                            (sub, f)
                        }
                        (_, Some(f)) => (out.clone(), f),
                        _ => continue,
                    };
                    sides.push(SideOut {
                        dir: sub,
                        name: file_name.to_os_string(),
                        contents,
                    });
                }
                (
                    out,
                    OsString::from(weights_name),
                    Format::Safetensors,
                    sides,
                )
            }
        };
        // Inside a folder (checked or created above) the files may be replaced; a single-file output is
        // replaced only with --force, which the no-clobber rename enforces even against a file that appeared
        // after the check above.
        let overwrite = opts.overwrite || folder;
        // Side files are staged first and the weights written in full before anything is renamed into place,
        // so a failure anywhere (a side path that is a directory, a source tensor that breaks, a full disk)
        // leaves every existing output as it was.
        let staged = sides
            .iter()
            .map(|s| stage_atomic(&s.dir, &s.name, &s.contents))
            .collect::<Result<Vec<_>>>()?;
        let producers = opts.producers.unwrap_or_else(producers).max(1);
        let band_bytes = opts.band_bytes.unwrap_or(BAND_BYTES).max(1);
        let cancelled = || {
            opts.cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
        };
        let weights_path = weights_dir.path().join(&weights_name);
        let (writer, tensors, bytes) = write_weights(
            file,
            plan,
            opts.dtype,
            WeightsTarget {
                dir: &weights_dir,
                name: &weights_name,
                format,
                overwrite,
            },
            [producers, band_bytes],
            &cancelled,
            progress,
        )?;
        // The weights are completed and flushed first; only then are the side files and the weights renamed
        // into place, so a failure before that (a full disk at the last records, a target that is a
        // directory) leaves every earlier file as it was.
        let sealed = writer.seal()?;
        // The last moment to stop: after this, every file is renamed into place.
        if cancelled() {
            return Err(Error::Cancelled);
        }
        for side in staged {
            side.commit(overwrite)?;
        }
        sealed.commit()?;
        if let (true, Some(out)) = (opts.overwrite, &folder_dir) {
            // What an earlier run wrote and this one does not (its tokenizer files) must not stay beside the
            // new weights.
            for stale in crate::tokenizer::FOLDER_FILES {
                let ours = sides
                    .iter()
                    .any(|s| s.name == stale && s.dir.path() == out.path());
                if !ours {
                    out.remove_file(OsStr::new(stale)).map_err(io(
                        &output.join(stale),
                        "cannot remove the earlier run's file",
                    ))?;
                }
            }
        }
        Ok(Written {
            folder,
            weights: weights_path,
            side_files: sides.iter().map(|s| s.dir.path().join(&s.name)).collect(),
            tensors,
            bytes,
        })
    })();
    if result.is_err() {
        // Only what this run created is removed; an existing folder keeps whatever it held.
        if created_folder {
            let _ = dir.remove_tree(Path::new(&target.name));
        } else if let Some(out) = &folder_dir {
            out.remove_created(&created_inside);
        }
    }
    result
}

/// The folder's absolute path as JSON string content, for the one side file that names it; a path that is
/// not UTF-8 cannot be written into a JSON config faithfully and is refused.
fn folder_path_json(output: &Path) -> Result<String> {
    // A loader that resolves a path from the current directory gets the folder's absolute path.
    let absolute = std::fs::canonicalize(output).map_err(|e| Error::Io {
        path: output.to_path_buf(),
        op: "cannot resolve the directory",
        source: e,
    })?;
    let text = absolute.to_str().ok_or_else(|| Error::OutputPathNotUtf8 {
        path: absolute.clone(),
    })?;
    Ok(serde_json::to_string(text)
        .unwrap_or_default()
        .trim_matches('"')
        .to_string())
}

/// Where [`write_weights`] writes.
struct WeightsTarget<'a> {
    dir: &'a OutDir,
    name: &'a OsStr,
    format: Format,
    overwrite: bool,
}

fn write_weights(
    file: &TensorFile,
    plan: &Plan,
    dtype: OutDType,
    WeightsTarget {
        dir,
        name,
        format,
        overwrite,
    }: WeightsTarget<'_>,
    [producers, band_bytes]: [usize; 2],
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Writer, usize, u64)> {
    let out_dtype = dtype.dtype();
    let specs: Vec<TensorSpec> = plan
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: out_dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let mut total: u64 = 0;
    for t in &plan.tensors {
        let n = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let bytes = n.and_then(|n| n.checked_mul(out_dtype.size() as u64));
        total = bytes
            .and_then(|b| total.checked_add(b))
            .ok_or(Error::Overflow {
                name: t.name.clone(),
                what: "output size",
            })?;
    }
    let mut writer = Writer::create_in(dir, name, format, specs, plan.metadata.clone(), overwrite)?;
    // Producers compute bands of output bytes while this thread writes them (the write is mostly kernel time):
    // each tensor goes to the producer with the fewest bytes so far (`owners`), so while one transposes a
    // kernel the other is already reading the next. (Taking turns tensor by tensor would give one producer
    // every kernel of a ViT block and the other only its biases.) Each producer has its own few band-sized
    // buffers, which the writer hands back once written, so memory stays at a few bands per producer whatever
    // the model's size, and a producer that runs ahead waits for its buffers instead of taking the other's.
    // A failure on any side stops them all: a producer's error reaches the writer in tensor order, and when the
    // writer stops, its ends of the channels close and every producer's next send or receive fails. Producers
    // are joined by hand, so that one that panicked (a bug) ends the conversion with an error, not a panic.
    let owners = owners(&plan.tensors, producers);
    std::thread::scope(|scope| -> Result<()> {
        let mut lanes = Vec::with_capacity(producers);
        let mut handles = Vec::with_capacity(producers);
        for k in 0..producers {
            let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Band>>(IN_FLIGHT);
            let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
            for _ in 0..BAND_BUFFERS {
                // Cannot fail: the receiver is alive in this scope.
                let _ = free_tx.send(Vec::new());
            }
            let owners = &owners;
            handles.push(scope.spawn(move || {
                let mut scratch = BandScratch::default();
                let mut emitter = Emitter {
                    free: &free_rx,
                    ready: &ready_tx,
                    sent: 0,
                    small: false,
                    band_bytes,
                };
                let mine = plan.tensors.iter().zip(owners).filter(|(_, &o)| o == k);
                for (t, _) in mine {
                    let produced = produce_tensor(file, t, dtype, &mut scratch, &mut emitter)
                        .and_then(|()| emitter.end(&t.name));
                    if let Err(e) = produced {
                        // The writer may already be gone (it failed first); then nobody needs the reason.
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
            }));
            lanes.push((ready_rx, free_tx));
        }
        let mut done: u64 = 0;
        let written = plan.tensors.iter().enumerate().try_for_each(|(i, t)| {
            let stopped = || Error::Worker {
                name: t.name.clone(),
            };
            let lane = owners.get(i).and_then(|&k| lanes.get(k));
            let (ready, free) = lane.ok_or_else(stopped)?;
            loop {
                // Checked between bands: a cancelled conversion stops here, and unwinding drops the writer
                // (removing its temporary) and closes the lanes (stopping the producers).
                if cancel() {
                    return Err(Error::Cancelled);
                }
                match ready.recv().map_err(|_| stopped())?? {
                    Band::Bytes(buf, at) => {
                        let data = buf.get(at).unwrap_or_default();
                        writer.write_part(data)?;
                        done = done.saturating_add(data.len() as u64);
                        // Back to the producer's pool.
                        let _ = free.send(buf);
                    }
                    Band::Small(buf, at) => {
                        let data = buf.get(at).unwrap_or_default();
                        writer.write_part(data)?;
                        done = done.saturating_add(data.len() as u64);
                    }
                    Band::End => break,
                }
                progress(done, total);
            }
            Ok(())
        });
        // Closing the writer's ends releases any producer still waiting on them.
        drop(lanes);
        // Every handle is joined (no short-circuit): one left to the scope would make it panic.
        let panicked = handles
            .into_iter()
            .map(|h| h.join().is_err())
            .fold(false, |a, b| a | b);
        match written {
            Err(e) => Err(e),
            Ok(()) if panicked => Err(Error::Worker {
                name: "(a producer thread)".to_string(),
            }),
            Ok(()) => Ok(()),
        }
    })?;
    // The caller renames the finished file into place once everything else is ready too.
    Ok((writer, plan.tensors.len(), total))
}

/// Band buffers circulating between each producer and the writer: some being filled (up to
/// `BANDS_PER_PASS`) while the others wait or are written. With fewer than twice `BANDS_PER_PASS`, the
/// producer waited for the writer to free a whole pass's worth before starting the next (BENCHMARKS.md).
const BAND_BUFFERS: usize = 8;

// A pass takes its bands' buffers before it sends any: with fewer buffers than that it would wait forever.
const _: () = assert!(exec::BANDS_PER_PASS < BAND_BUFFERS);

/// Tensors of at most this many output bytes (biases, LayerNorm parameters, the class token) are sent in a
/// buffer of their own instead of a band buffer. A ViT block has eight of them between its four big kernels;
/// when each held one of the band buffers while it waited to be written, the producer spent 15-25% of the
/// conversion waiting for a free buffer (BENCHMARKS.md).
const SMALL_BYTES: u64 = 256 << 10;

/// Messages a producer may have on their way to the writer: enough that the writer's queue never stalls a
/// producer that has a free band buffer (a queue of one message did, on every tensor's last band), and few
/// enough to bound the memory of queued small tensors (at most this many times `SMALL_BYTES`).
const IN_FLIGHT: usize = 64;

/// How many threads compute output tensors by default: two where the writer and both can each have a core,
/// else one. On the 2-core machine measured, a second producer competing with the writer for the two cores
/// made the conversion slightly slower, not faster (BENCHMARKS.md).
fn producers() -> usize {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() >= 3 => 2,
        _ => 1,
    }
}

/// Which of `producers` computes each tensor: the one with the fewest bytes assigned so far.
fn owners(tensors: &[OutTensor], producers: usize) -> Vec<usize> {
    let mut load = vec![0usize; producers.max(1)];
    tensors
        .iter()
        .map(|t| {
            let Some((k, least)) = load.iter_mut().enumerate().min_by_key(|(_, l)| **l) else {
                return 0;
            };
            *least = least.saturating_add(t.shape.iter().product::<usize>());
            k
        })
        .collect()
}

/// What a producer sends the writer.
enum Band {
    /// A buffer of the producer's pool whose bytes in the range continue the current tensor.
    Bytes(Vec<u8>, Range<usize>),
    /// A small tensor's bytes, whole, in a buffer of their own that the writer drops.
    Small(Vec<u8>, Range<usize>),
    /// The current tensor is complete; the next comes from the next producer.
    End,
}

/// Hands filled band buffers from a producer to the writer.
struct Emitter<'a> {
    free: &'a mpsc::Receiver<Vec<u8>>,
    ready: &'a mpsc::SyncSender<Result<Band>>,
    /// Bytes sent so far.
    sent: u64,
    /// Whether the current tensor is small (see `SMALL_BYTES`): its bytes then go in a buffer of their own.
    small: bool,
    /// The largest band, in bytes: `BAND_BYTES` but for tests.
    band_bytes: usize,
}

impl Sink for Emitter<'_> {
    fn band_bytes(&self) -> usize {
        self.band_bytes
    }

    /// A buffer to fill: a free one of the pool (waiting for the writer to hand one back if need be), or a
    /// new one for a small tensor.
    ///
    /// A pool buffer arrives holding earlier bands' bytes, and the interpreter overwrites what it uses:
    /// clearing or shrinking it would make the next fill zero megabytes again before overwriting them.
    fn take(&mut self, name: &str) -> Result<Vec<u8>> {
        if self.small {
            return Ok(Vec::new());
        }
        self.free.recv().map_err(|_| Error::Worker {
            name: name.to_string(),
        })
    }

    /// Passes the bytes of `buf` in `at` on to be written.
    fn send(&mut self, name: &str, buf: Vec<u8>, at: Range<usize>) -> Result<()> {
        let len = buf.get(at.clone()).map_or(0, <[u8]>::len);
        self.sent = self.sent.saturating_add(len as u64);
        let band = if self.small {
            Band::Small(buf, at)
        } else {
            Band::Bytes(buf, at)
        };
        self.ready.send(Ok(band)).map_err(|_| Error::Worker {
            name: name.to_string(),
        })
    }
}

impl Emitter<'_> {
    /// Tells the writer the current tensor is complete.
    fn end(&mut self, name: &str) -> Result<()> {
        self.ready.send(Ok(Band::End)).map_err(|_| Error::Worker {
            name: name.to_string(),
        })
    }
}

/// Streams one output tensor's bytes as bands, checking that they add up to exactly its size (the writer
/// moves on to the next tensor by byte count, so a short tensor must never reach it).
fn produce_tensor(
    file: &TensorFile,
    t: &OutTensor,
    dtype: OutDType,
    scratch: &mut BandScratch,
    em: &mut Emitter<'_>,
) -> Result<()> {
    let expected = t.shape.iter().product::<usize>();
    let want = expected.saturating_mul(dtype.dtype().size()) as u64;
    let before = em.sent;
    em.small = want <= SMALL_BYTES.min(em.band_bytes as u64 / 4);
    if want == 0 {
        // An empty part is what completes a zero-sized tensor in the writer.
        let buf = em.take(&t.name)?;
        em.send(&t.name, buf, 0..0)?;
    } else {
        exec::write_recipe(file, &t.name, &t.recipe, dtype, scratch, em)?;
    }
    let found = em.sent.saturating_sub(before);
    if found != want {
        return Err(Error::Length {
            name: t.name.clone(),
            shape: t.shape.clone(),
            expected,
            found: usize::try_from(found).unwrap_or(usize::MAX) / dtype.dtype().size(),
        });
    }
    Ok(())
}

/// A small file written to a temporary beside its target, waiting to be renamed into place.
struct Staged {
    path: PathBuf,
    name: OsString,
    tmp: TempFile,
}

/// Writes `contents` to a temporary file in `dir`, removed when dropped like the writer's; [`Staged::commit`]
/// renames it to `name`.
fn stage_atomic(dir: &OutDir, name: &OsStr, contents: &[u8]) -> Result<Staged> {
    let path = dir.path().join(name);
    let io = |e| Error::Io {
        path: path.clone(),
        op: "cannot write a temporary file beside it",
        source: e,
    };
    // Side files are ordinary outputs, readable like the weights beside them (0644), not private temporaries.
    let tmp = dir.temp(name, 0o644).map_err(io)?;
    tmp.as_file().write_all(contents).map_err(io)?;
    Ok(Staged {
        path: path.clone(),
        name: name.to_os_string(),
        tmp,
    })
}

impl Staged {
    /// Renames the staged file into place; without `overwrite` an existing file is refused, not replaced.
    fn commit(self, overwrite: bool) -> Result<()> {
        let Staged { path, name, tmp } = self;
        tmp.persist(&name, overwrite).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Exists { path: path.clone() },
            _ => Error::Io {
                path: path.clone(),
                op: "cannot rename the temporary file into place",
                source: e,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn placeholders_are_filled_in_one_pass_and_a_path_holding_one_stays_as_it_is() {
        let fills = [("@A@", "'/x/@B@'"), ("@B@", "'/y'")];
        assert_eq!(
            fill("open(@A@) + open(@B@) + @A@", &fills),
            "open('/x/@B@') + open('/y') + '/x/@B@'"
        );
        assert_eq!(fill("nothing to fill", &fills), "nothing to fill");
        assert_eq!(fill("@A", &fills), "@A");
    }
    use crate::kernel::{encode_append, restandardise, transpose};
    use crate::model::Param;
    use crate::options::Layout;
    use crate::plan::Recipe;

    /// The same bytes whatever the band size, with one producer and with two.
    #[test]
    fn any_band_size_writes_the_same_file() {
        // Bands far smaller than the tensors: many per tensor, filled four per pass, the last pass often
        // with fewer, band sizes that divide nothing, and the type changes as well as plain copies.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        // The deflated file is inflated as it is read where a band size lets a transpose be done in one pass,
        // and read whole where it takes several: both must write the same bytes.
        let sources = [
            "vit-token/checkpoint.npz",
            "vit-token-variants/bfloat16.npz",
            "vit-token-variants/compressed.npz",
            "hybrid-r2/checkpoint.npz",
        ];
        for source in sources {
            let file = TensorFile::open(fixtures.join(source)).unwrap();
            for (layout, dtype, ext) in [
                (Layout::Timm, OutDType::F32, "safetensors"),
                (Layout::Timm, OutDType::BF16, "pt"),
                (Layout::OpenClip, OutDType::F16, "pt"),
            ] {
                if layout == Layout::OpenClip && source.starts_with("hybrid") {
                    continue;
                }
                let runs = [(1, None), (1, Some(4096)), (2, Some(3000)), (2, Some(1))];
                let mut opts = Options::new(layout);
                opts.dtype = dtype;
                let outputs = convert_runs(&file, &opts, ext, &runs);
                assert!(
                    outputs.windows(2).all(|w| w[0] == w[1]),
                    "{source} {layout:?} {dtype:?}"
                );
            }
        }
    }

    /// The output `out` streamed from source `name` of `shape`: an HWIO kernel written OIHW (scaled per
    /// input channel for a name starting `s`, standardised for one starting `w`), a matrix transposed.
    fn streamed(name: &str, dtype: DType, out: &str, shape: &[usize]) -> OutTensor {
        let src = Param::whole(name, dtype, shape);
        let (shape, recipe) = match *shape {
            [h, w, i, o] if name.starts_with('w') => (
                vec![o, i, h, w],
                Recipe::StdConvKernel {
                    src,
                    hwio: [h, w, i, o],
                    source_eps: 1e-8,
                    target_eps: 1e-6,
                },
            ),
            [h, w, i, o] => (
                vec![o, i, h, w],
                Recipe::ConvKernel {
                    src,
                    hwio: [h, w, i, o],
                    in_scale: name
                        .starts_with('s')
                        .then(|| (0..i).map(|c| 1.0 / (0.2 + c as f32 * 0.07)).collect()),
                },
            ),
            [rows, cols] => (vec![cols, rows], Recipe::Transpose { src, rows, cols }),
            _ => unreachable!("the test sources are 2-D or 4-D"),
        };
        OutTensor {
            name: out.to_string(),
            shape,
            recipe,
        }
    }

    /// The portable definition of an output the interpreter streams: the whole source decoded, rearranged
    /// element by element, and encoded.
    fn portable(file: &TensorFile, t: &OutTensor, dtype: OutDType) -> Vec<u8> {
        // HWIO `[h, w, i, o]` to OIHW, element by element, each input channel scaled.
        let oihw = |v: &[f32], [h, w, i, o]: [usize; 4], scale: &dyn Fn(usize) -> f32| {
            let mut out = vec![0f32; v.len()];
            for (y, x, c, oc) in (0..h).flat_map(|y| {
                (0..w).flat_map(move |x| {
                    (0..i).flat_map(move |c| (0..o).map(move |oc| (y, x, c, oc)))
                })
            }) {
                out[((oc * i + c) * h + y) * w + x] = v[((y * w + x) * i + c) * o + oc] * scale(c);
            }
            out
        };
        let values = match &t.recipe {
            Recipe::Transpose { src, rows, cols } => {
                transpose(&file.read_f32(&src.tensor).unwrap(), *rows, *cols)
            }
            Recipe::ConvKernel {
                src,
                hwio,
                in_scale,
            } => {
                let v = file.read_f32(&src.tensor).unwrap();
                oihw(&v, *hwio, &|c| in_scale.as_ref().map_or(1.0, |s| s[c]))
            }
            Recipe::StdConvKernel {
                src,
                hwio,
                source_eps,
                target_eps,
            } => {
                let v = file.read_f32(&src.tensor).unwrap();
                let standardised = restandardise(&v, hwio[3], *source_eps, *target_eps);
                oihw(&standardised, *hwio, &|_| 1.0)
            }
            other => unreachable!("no portable definition here for {other:?}"),
        };
        let mut bytes = Vec::new();
        encode_append(&values, dtype, &mut bytes);
        bytes
    }

    /// A plan writing `tensors` to one file, and nothing else.
    fn plan_of(tensors: Vec<OutTensor>) -> Plan {
        Plan {
            kind: OutputKind::File,
            tensors,
            dropped: Vec::new(),
            metadata: BTreeMap::new(),
            notes: Vec::new(),
            python: String::new(),
            side_files: Vec::new(),
            copied_files: Vec::new(),
            no_folder: None,
        }
    }

    /// Converts `file` once per run (producers, band size), with `opts` otherwise, to an `ext` file, and
    /// returns each output's bytes.
    fn convert_runs(
        file: &TensorFile,
        opts: &Options,
        ext: &str,
        runs: &[(usize, Option<usize>)],
    ) -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        runs.iter()
            .enumerate()
            .map(|(k, &(producers, band_bytes))| {
                let mut opts = opts.clone();
                opts.producers = Some(producers);
                opts.band_bytes = band_bytes;
                let conv = prepare(file, &opts).unwrap();
                let out = dir.path().join(format!("run-{k}.{ext}"));
                write(file, &conv, &opts, &out, &mut |_, _| {}).unwrap();
                std::fs::read(&out).unwrap()
            })
            .collect()
    }

    /// Writes `sources` (name, dtype, shape) as a stored `.npz` with made-up values, and returns each
    /// tensor's bytes.
    fn write_npz(path: &Path, sources: &[(&str, DType, Vec<usize>)]) -> Vec<Vec<u8>> {
        let specs = sources
            .iter()
            .map(|(name, dtype, shape)| TensorSpec {
                name: name.to_string(),
                dtype: *dtype,
                shape: shape.clone(),
            })
            .collect();
        let mut w = Writer::create(path, Format::Npz, specs, BTreeMap::new(), false).unwrap();
        let mut all = Vec::new();
        for (_, dtype, shape) in sources {
            let values = (0..shape.iter().product::<usize>())
                .map(|i| (i.wrapping_mul(2_654_435_761) % 1000) as f32 / 250.0 - 2.0);
            let bytes: Vec<u8> = match dtype {
                DType::BF16 => values
                    .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
                DType::F16 => values
                    .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => values.flat_map(f32::to_le_bytes).collect(),
            };
            w.write_next(&bytes).unwrap();
            all.push(bytes);
        }
        w.finish().unwrap();
        all
    }

    /// A damaged source kernel, streamed in bands or as a convolution, through one producer or two: the
    /// member's CRC-32 catches it, the conversion fails, and no file is left behind.
    #[test]
    fn a_damaged_kernel_stops_every_pipeline_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let sources = [
            ("k", DType::F32, vec![4, 4, 3, 24]),
            ("t", DType::F32, vec![96, 80]),
        ];
        let src = dir.path().join("src.npz");
        let data = write_npz(&src, &sources);
        let clean = std::fs::read(&src).unwrap();
        for (which, (name, dtype, shape)) in sources.iter().enumerate() {
            let mut bytes = clean.clone();
            let at = bytes
                .windows(data[which].len())
                .position(|w| w == data[which].as_slice())
                .unwrap();
            bytes[at + data[which].len() / 2] ^= 0x40;
            let damaged = dir.path().join(format!("damaged-{name}.npz"));
            std::fs::write(&damaged, &bytes).unwrap();
            let file = TensorFile::open(&damaged).unwrap();
            let plan = plan_of(vec![streamed(name, *dtype, "out", shape)]);
            for (producers, band_bytes) in [(1, BAND_BYTES), (2, 300), (2, 1)] {
                let out_dir = dir
                    .path()
                    .join(format!("out-{name}-{producers}-{band_bytes}"));
                std::fs::create_dir(&out_dir).unwrap();
                let out_handle = OutDir::open(&out_dir).unwrap();
                let target = WeightsTarget {
                    dir: &out_handle,
                    name: OsStr::new("o.pt"),
                    format: Format::Pt,
                    overwrite: false,
                };
                let sizes = [producers, band_bytes];
                let result = write_weights(
                    &file,
                    &plan,
                    OutDType::F32,
                    target,
                    sizes,
                    &|| false,
                    &mut |_, _| {},
                );
                let err = result.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(err.contains("CRC"), "{name}, {producers} producers: {err}");
                let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
                assert!(left.is_empty(), "{name}, {producers} producers: {left:?}");
            }
        }
    }

    /// Streamed kernels of odd sizes in every float type, through one and two producers and bands of many
    /// sizes, against their portable element-by-element definitions.
    #[test]
    fn streamed_kernels_equal_their_portable_definitions() {
        let dir = tempfile::tempdir().unwrap();
        let sources: [(&str, DType, Vec<usize>); 11] = [
            ("k0", DType::F32, vec![3, 3, 2, 5]),
            ("k1", DType::BF16, vec![2, 20, 3, 9]),
            ("k2", DType::F16, vec![14, 14, 3, 40]),
            ("k3", DType::F32, vec![1, 1, 5, 8]),
            ("s0", DType::F32, vec![4, 4, 3, 24]),
            ("s1", DType::BF16, vec![14, 14, 3, 33]),
            ("w0", DType::F32, vec![7, 7, 3, 16]),
            ("w1", DType::BF16, vec![3, 3, 8, 12]),
            ("t0", DType::F32, vec![300, 257]),
            ("t1", DType::BF16, vec![64, 200]),
            ("t2", DType::F16, vec![33, 700]),
        ];
        let src = dir.path().join("src.npz");
        write_npz(&src, &sources);
        let file = TensorFile::open(&src).unwrap();
        let plan = plan_of(
            sources
                .iter()
                .map(|(name, dtype, shape)| streamed(name, *dtype, &format!("{name}.out"), shape))
                .collect(),
        );
        for dtype in [OutDType::F32, OutDType::BF16, OutDType::F16] {
            let want: Vec<Vec<u8>> = plan
                .tensors
                .iter()
                .map(|t| portable(&file, t, dtype))
                .collect();
            // What a test evaluates is what a conversion writes.
            for (t, want) in plan.tensors.iter().zip(&want) {
                assert_eq!(
                    &exec::eval_bytes(&file, &t.recipe, dtype).unwrap(),
                    want,
                    "{}",
                    t.name
                );
            }
            for producers in [1, 2] {
                for band_bytes in [1, 300, 4096, BAND_BYTES] {
                    let out_name = format!("{dtype:?}-{producers}-{band_bytes}.safetensors");
                    let out = dir.path().join(&out_name);
                    let out_handle = OutDir::open(dir.path()).unwrap();
                    let target = WeightsTarget {
                        dir: &out_handle,
                        name: OsStr::new(&out_name),
                        format: Format::Safetensors,
                        overwrite: false,
                    };
                    let sizes = [producers, band_bytes];
                    let (writer, ..) = write_weights(
                        &file,
                        &plan,
                        dtype,
                        target,
                        sizes,
                        &|| false,
                        &mut |_, _| {},
                    )
                    .unwrap();
                    writer.finish().unwrap();
                    let got = TensorFile::open(&out).unwrap();
                    for (t, want) in plan.tensors.iter().zip(&want) {
                        assert_eq!(
                            &got.read(&t.name).unwrap(),
                            want,
                            "{} as {dtype:?}, {producers} producers, bands of {band_bytes}",
                            t.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn any_number_of_producers_writes_the_same_file() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let sources = [
            "vit-token/checkpoint.npz",
            "vit-token-variants/bfloat16.npz",
        ];
        for source in sources {
            let file = TensorFile::open(fixtures.join(source)).unwrap();
            for ext in ["pt", "safetensors"] {
                let runs = [(1, None), (2, None), (3, None)];
                let outputs = convert_runs(&file, &Options::new(Layout::Timm), ext, &runs);
                assert!(outputs.windows(2).all(|w| w[0] == w[1]), "{source} {ext}");
            }
        }
    }
}
