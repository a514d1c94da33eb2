//! The run: plans the sources, makes the output directories, then converts the sources on a pool of workers,
//! recording each in the manifest and reporting progress through the caller's event callback.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use vitconv_convert::plan::OutputKind;
use vitconv_convert::Target;
use vitconv_tensors::{EntryKind, OutDir, TensorFile};

use crate::discover::{self, Entry};
use crate::manifest::{Record, State};
use crate::resume::{self, Decision};
use crate::store::Store;
use crate::{shown, Error, Event, Outcome, Report, Request, Status, Summary};

/// What every worker shares.
struct Shared<'a> {
    req: &'a Request,
    store: &'a Store,
    /// The output directory, open: every output is written relative to it.
    root: &'a OutDir,
    on_event: &'a (dyn Fn(Event) + Sync),
}

/// Runs a batch: finds the sources, converts them `jobs` at a time (the largest first), and returns the report
/// of every source. An error is returned only for what stops the whole run before any source starts (OUTPUT a
/// file, no sources, an output directory or the manifest that cannot be made or read); a source's own problem
/// is its [`Outcome`].
pub fn run(req: &Request, on_event: &(dyn Fn(Event) + Sync)) -> Result<Summary, Error> {
    if req.output_dir.exists() && !req.output_dir.is_dir() {
        return Err(Error::OutputIsFile {
            path: req.output_dir.clone(),
        });
    }
    let skip = std::fs::canonicalize(&req.output_dir).ok();
    let found = discover::find_sources(&req.source_dir, skip.as_deref(), req.latest);
    if found.sources.is_empty() && found.unreadable.is_empty() {
        return Err(Error::NoSources {
            path: req.source_dir.clone(),
        });
    }
    let may_be_folder = req.ext.is_some() && req.opts.layout.may_write_folder();
    let mut entries = discover::plan(
        found.sources,
        &req.output_dir,
        req.ext.as_deref(),
        may_be_folder,
    );
    entries.extend(found.unreadable.into_iter().map(|(rel, why)| Entry {
        output: req.output_dir.join(&rel),
        rel,
        size: 0,
        problem: Some(why),
    }));
    entries.sort_by(|a, b| a.rel.cmp(&b.rel));

    // The output directory and every directory an output goes into are made here, before any worker starts, so
    // that no worker's cleanup can remove a directory another is writing into. Those no output went into (every
    // source in them refused, failed or interrupted) are removed at the end. The output directory is the
    // user's; everything below it is made and reached through its handle without following a link, so a link
    // planted anywhere below it (or swapped in between runs) is refused, never written through.
    let made_root =
        vitconv_tensors::create_dirs(&req.output_dir).map_err(|source| Error::CreateDir {
            path: req.output_dir.clone(),
            source,
        })?;
    let root = OutDir::open(&req.output_dir).map_err(|source| Error::CreateDir {
        path: req.output_dir.clone(),
        source,
    })?;
    let mut made: Vec<PathBuf> = Vec::new();
    let parents: BTreeSet<PathBuf> = entries
        .iter()
        .filter(|e| e.problem.is_none())
        .filter_map(|e| relative_parent(&req.output_dir, &e.output))
        .collect();
    for p in parents {
        match root.descend(&p, true) {
            Ok((_, created)) => made.extend(created),
            Err(err) => {
                // Each source that writes there fails with the same reason (the error is not `Clone`).
                for e in entries.iter_mut().filter(|e| {
                    e.problem.is_none()
                        && relative_parent(&req.output_dir, &e.output).as_ref() == Some(&p)
                }) {
                    e.problem = Some(Error::OutputDir {
                        path: req.output_dir.join(&p),
                        source: std::io::Error::new(err.kind(), err.to_string()),
                    });
                }
            }
        }
    }
    let store = Store::load(&req.output_dir)?;

    let n = entries.len();
    on_event(Event::Planned {
        files: n,
        bytes: entries.iter().map(|e| e.size).sum(),
    });
    // A source stopped before it starts has its outcome now; the others get theirs from a worker.
    let mut outcomes: Vec<Option<Outcome>> = entries
        .iter_mut()
        .map(|e| {
            e.problem
                .take()
                .map(|why| Outcome::failed(Status::Failed, why, Instant::now()))
        })
        .collect();
    let mut order: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.is_none())
        .map(|(i, _)| i)
        .collect();
    // The largest first, so that a big file started last does not run alone at the end.
    order.sort_by_key(|&i| std::cmp::Reverse(entries.get(i).map_or(0, |e| e.size)));
    let workers = req.jobs.clamp(1, order.len().max(1));
    let next = AtomicUsize::new(0);
    let shared = Shared {
        req,
        store: &store,
        root: &root,
        on_event,
    };
    let mut finished = n.saturating_sub(order.len());
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, order, entries, shared) = (&next, &order, &entries, &shared);
            s.spawn(move || work(order, next, entries, shared, &tx));
        }
        drop(tx);
        for (i, outcome) in rx {
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(outcome);
            }
            finished = finished.saturating_add(1);
            on_event(Event::Finished {
                done: finished,
                files: n,
            });
        }
    });

    // Directories made above that no output went into (every source in them refused, failed or interrupted),
    // the deepest first.
    made.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    root.remove_empty(&made);
    made_root.remove_empty();
    let manifest_error = store.compact().err();
    let files = entries
        .into_iter()
        .zip(outcomes)
        .map(|(e, o)| Report {
            outcome: o.unwrap_or_else(|| {
                Outcome::failed(
                    Status::Failed,
                    Error::NotRun {
                        path: req.source_dir.join(&e.rel),
                    },
                    Instant::now(),
                )
            }),
            source: e.rel,
            planned: e.output,
        })
        .collect();
    Ok(Summary {
        files,
        workers,
        interrupted: req.cancelled(),
        manifest_error,
    })
}

/// One worker: converts the entries of `order` it takes (the next not taken by another) until none is left, and
/// sends back each outcome with its entry's index. A panic fails that source only.
fn work(
    order: &[usize],
    next: &AtomicUsize,
    entries: &[Entry],
    shared: &Shared,
    tx: &mpsc::Sender<(usize, Outcome)>,
) {
    while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
        // After an interrupt no new source is started; those in flight stop at their next band.
        if shared.req.cancelled() {
            break;
        }
        let Some(entry) = entries.get(i) else {
            break;
        };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| convert_one(entry, shared)))
                .unwrap_or_else(|_| {
                    let path = shared.req.source_dir.join(&entry.rel);
                    Outcome::failed(Status::Failed, Error::Panicked { path }, Instant::now())
                });
        if tx.send((i, outcome)).is_err() {
            break;
        }
    }
}

/// Converts one source (or skips it), reporting its progress in bytes of its size; never panics on bad input
/// and never touches another source's output.
fn convert_one(e: &Entry, sh: &Shared) -> Outcome {
    let started = Instant::now();
    let mut reported = 0u64;
    let outcome = convert_or_skip(e, sh, started, &mut reported);
    (sh.on_event)(Event::Advanced {
        bytes: e.size.saturating_sub(reported),
    });
    outcome
}

/// The steps of [`convert_one`]: stamp, decide, open, plan, check the output, record, write, record.
fn convert_or_skip(e: &Entry, sh: &Shared, started: Instant, reported: &mut u64) -> Outcome {
    let req = sh.req;
    let key = shown(&e.rel);
    let source = req.source_dir.join(&e.rel);
    let failed = |status, error| Outcome::failed(status, error, started);
    let now = match resume::stamp(&source) {
        Ok(s) => s,
        Err(err) => {
            return failed(
                Status::Failed,
                Error::Stamp {
                    path: source,
                    source: err,
                },
            )
        }
    };
    let decision = resume::decide(sh.store.last(&key), now, &req.fingerprint, req.force, |o| {
        resume::output_stamp(&req.output_dir.join(o))
    });
    let overwrite = match decision {
        Decision::Skip => {
            return Outcome {
                status: Status::Skipped,
                error: None,
                bytes: None,
                seconds: started.elapsed().as_secs_f64(),
                output: None,
            }
        }
        Decision::Convert { overwrite } => overwrite,
    };
    let file = match TensorFile::open(&source) {
        Ok(f) => f,
        Err(err) => return failed(Status::Failed, Error::Open(err)),
    };
    let mut opts = req.opts.clone();
    opts.overwrite = overwrite;
    let conv = match vitconv_convert::prepare(&file, &opts) {
        Ok(c) => c,
        // A source that cannot be read is broken; anything else prepare declines is a refusal (a layout that
        // cannot hold the model, an option that does not apply, not a ViT checkpoint).
        Err(err @ vitconv_convert::Error::Tensors(_)) => {
            return failed(Status::Failed, Error::Unreadable(Box::new(err)))
        }
        Err(err) => {
            return failed(
                Status::Refused,
                Error::Refused {
                    path: source,
                    error: Box::new(err),
                },
            )
        }
    };
    // A layout that writes a whole folder for this model (open_clip's two-tower CustomTextCLIP) gets the
    // output's name without the extension.
    let output = match conv.plan.kind {
        OutputKind::Directory { .. } => e.output.with_extension(""),
        _ => e.output.clone(),
    };
    if let Err(err) = resume::check_output(&output, opts.overwrite) {
        return failed(Status::Failed, err);
    }
    // The directory the output goes in, reached from the output directory without following a link.
    let target = match target_of(sh.root, &req.output_dir, &output) {
        Ok(t) => t,
        Err(err) => return failed(Status::Failed, err),
    };
    if opts.overwrite {
        // Temporaries a killed run left beside (or inside) this source's output are ours to remove.
        clean_temporaries(&target);
    }
    let mut record = Record {
        source: key,
        state: State::Started,
        size: now.size,
        mtime_ns: now.mtime_ns,
        options: req.fingerprint.clone(),
        owned: true,
        outputs: Vec::new(),
        output_stamps: Vec::new(),
    };
    if let Err(err) = sh.store.append(&record) {
        return failed(Status::Failed, err);
    }
    let written = {
        let mut progress = |done: u64, total: u64| {
            let scaled = if total == 0 {
                0
            } else {
                // At most `e.size` while `done <= total`; a writer that overshoots is held to it.
                let part = u128::from(done.min(total)).saturating_mul(u128::from(e.size));
                u64::try_from(part.checked_div(u128::from(total)).unwrap_or(0)).unwrap_or(e.size)
            };
            if scaled > *reported {
                (sh.on_event)(Event::Advanced {
                    bytes: scaled.saturating_sub(*reported),
                });
                *reported = scaled;
            }
        };
        vitconv_convert::write_in(&file, &conv, &opts, &target, &mut progress)
    };
    let written = match written {
        Ok(w) => w,
        Err(err) => {
            // The writer replaces nothing when it fails, so the outputs at these paths are what they were.
            record.state = State::Failed;
            record.owned = resume::owned(sh.store.last(&record.source));
            let _ = sh.store.append(&record);
            return failed(Status::Failed, Error::Write(Box::new(err)));
        }
    };
    record.state = State::Done;
    let files: Vec<&PathBuf> = std::iter::once(&written.weights)
        .chain(&written.side_files)
        .collect();
    record.outputs = files
        .iter()
        .map(|p| shown(p.strip_prefix(&req.output_dir).unwrap_or(p)))
        .collect();
    // What was written, as it is now: a later change to any of them converts the source again. One that
    // cannot be read leaves the record without stamps, which converts it again too.
    record.output_stamps = files
        .iter()
        .map(|p| resume::output_stamp(p))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    if let Err(err) = sh.store.append(&record) {
        return failed(
            Status::Failed,
            Error::NotRecorded {
                output: e.output.clone(),
                source: Box::new(err),
            },
        );
    }
    Outcome {
        status: Status::Converted,
        error: None,
        bytes: Some(written.bytes),
        seconds: started.elapsed().as_secs_f64(),
        output: (output != e.output).then_some(output),
    }
}

/// `output`'s directory relative to the output directory (`None` for one outside it, which planning never makes).
fn relative_parent(output_dir: &Path, output: &Path) -> Option<PathBuf> {
    output
        .strip_prefix(output_dir)
        .ok()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
}

/// Where `output` is written: its directory opened from `root` without following a link, and its name.
fn target_of(root: &OutDir, output_dir: &Path, output: &Path) -> Result<Target, Error> {
    let outside = || Error::OutputDir {
        path: output.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not below the output directory",
        ),
    };
    let parent = relative_parent(output_dir, output).ok_or_else(outside)?;
    let name = output.file_name().ok_or_else(outside)?;
    let (dir, _) = root
        .descend(&parent, false)
        .map_err(|source| Error::OutputDir {
            path: output_dir.join(&parent),
            source,
        })?;
    Ok(Target {
        dir,
        name: name.to_os_string(),
    })
}

/// Removes the temporaries a killed conversion of this output left: `.{name}.XXXXXXXX.partial` (and its side
/// files', `.{stem}.*.XXXXXXXX.partial`) beside a file output, and every temporary inside a folder output and
/// its subfolders. Only names of the writer's own pattern are touched, and nothing through a link.
fn clean_temporaries(target: &Target) {
    use std::os::unix::ffi::OsStrExt as _;
    let stem = Path::new(&target.name)
        .file_stem()
        .map(|s| s.as_bytes().to_vec())
        .unwrap_or_default();
    let mut ours = b".".to_vec();
    ours.extend_from_slice(&stem);
    if let Ok(names) = target.dir.names() {
        for n in names {
            if OutDir::is_temp_name(&n) && n.as_bytes().starts_with(&ours) {
                let _ = target.dir.remove_file(&n);
            }
        }
    }
    if let Ok((folder, _)) = target.dir.child(&target.name, false) {
        // The writer makes temporaries in the folder and in its subfolders (`image_tower/`), no deeper.
        remove_temporaries(&folder, 1);
    }
}

/// Removes the writer's temporaries in `dir` and, `depth` levels down, in its subfolders.
fn remove_temporaries(dir: &OutDir, depth: usize) {
    for n in dir.names().unwrap_or_default() {
        match dir.kind(&n) {
            Ok(Some(EntryKind::File)) if OutDir::is_temp_name(&n) => {
                let _ = dir.remove_file(&n);
            }
            Ok(Some(EntryKind::Directory)) if depth > 0 => {
                if let Ok((sub, _)) = dir.child(&n, false) {
                    remove_temporaries(&sub, depth.saturating_sub(1));
                }
            }
            _ => {}
        }
    }
}
