//! Batch conversion of a tree of ViT checkpoints: finds the sources under a directory, converts them into the
//! same relative paths under another, several at once, skips those up to date, and reports each source's
//! outcome; prints nothing (the caller shows progress through [`Event`]s and prints the [`Summary`]).
//!
//! Module map:
//! - [`discover`]: the checkpoints under the source directory and the output each one gets.
//! - [`manifest`]: the resume manifest's records and text ([`manifest::parse`] is pure and total: fuzzed).
//! - `store`: the manifest on disk (read without following links, rewritten atomically, appended to).
//! - [`resume`]: skip or convert, and whether an existing output may be replaced.
//! - `pool`: the workers that run the conversions, with the cancel flag and the events.
//! - `error`: the crate's one error type.

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod discover;
mod error;
pub mod manifest;
mod pool;
pub mod resume;
mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

pub use error::{one_line, Error};
pub use pool::run;
pub use store::MAX_MANIFEST_BYTES;

/// The manifest's file name inside the output directory.
pub const MANIFEST: &str = ".vitconv-batch.jsonl";

/// Everything a batch run is asked, already checked by the caller.
#[derive(Debug, Clone)]
pub struct Request {
    /// The directory searched for sources.
    pub source_dir: PathBuf,
    /// The directory the outputs go to (made if absent).
    pub output_dir: PathBuf,
    /// The extension of each output without the dot, or `None` for a directory per checkpoint (`--layout hf`).
    pub ext: Option<String>,
    /// The options that change what is written, in one line (recorded with each output; a change converts
    /// again).
    pub fingerprint: String,
    /// Conversions at once (at least one, at most one per source).
    pub jobs: usize,
    /// Convert every source again, even those up to date, replacing outputs no run recorded.
    pub force: bool,
    /// Of each folder of Orbax steps, only the newest complete step.
    pub latest: bool,
    /// The conversion options every source gets (`overwrite` is set per source). Its `cancel` flag is the
    /// run's: once set, no new source starts, those in flight stop at their next band, and
    /// [`Summary::interrupted`] is set.
    pub opts: vitconv_convert::Options,
}

impl Request {
    /// Whether the cancel flag is set.
    pub fn cancelled(&self) -> bool {
        self.opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// How one source ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Its output was written.
    Converted,
    /// It was up to date.
    Skipped,
    /// The converter declined it (a layout that cannot hold the model, not a ViT checkpoint).
    Refused,
    /// It could not be read or written.
    Failed,
}

impl Status {
    /// Every status, in the order reports list them.
    pub const ALL: [Status; 4] = [
        Status::Converted,
        Status::Skipped,
        Status::Refused,
        Status::Failed,
    ];

    /// The status's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Converted => "converted",
            Status::Skipped => "skipped",
            Status::Refused => "refused",
            Status::Failed => "failed",
        }
    }
}

/// How one source ended, with what the report shows of it.
#[derive(Debug)]
pub struct Outcome {
    /// The status.
    pub status: Status,
    /// Why it was refused or failed.
    pub error: Option<Error>,
    /// Bytes of the weights written (converted sources only).
    pub bytes: Option<u64>,
    /// Seconds it took.
    pub seconds: f64,
    /// Where the output went when that is not the planned path (a folder for a two-tower model).
    pub output: Option<PathBuf>,
}

impl Outcome {
    /// A refused or failed source's outcome.
    fn failed(status: Status, error: Error, started: std::time::Instant) -> Outcome {
        Outcome {
            status,
            error: Some(error),
            bytes: None,
            seconds: started.elapsed().as_secs_f64(),
            output: None,
        }
    }

    /// Why it was skipped, refused or failed, on one line (`None` for a converted source). Control characters
    /// are left for the printer to escape.
    pub fn reason(&self) -> Option<String> {
        match (&self.error, self.status) {
            (Some(e), _) => Some(one_line(e)),
            (None, Status::Skipped) => Some(resume::UP_TO_DATE.to_string()),
            (None, _) => None,
        }
    }
}

/// One source's line of the report.
#[derive(Debug)]
pub struct Report {
    /// The source, relative to the source directory.
    pub source: PathBuf,
    /// The output it was planned to get (see [`Outcome::output`] for where it went).
    pub planned: PathBuf,
    /// How it ended.
    pub outcome: Outcome,
}

impl Report {
    /// Where the output went.
    pub fn output(&self) -> &Path {
        self.outcome.output.as_deref().unwrap_or(&self.planned)
    }
}

/// What a finished (or interrupted) run reports.
#[derive(Debug)]
pub struct Summary {
    /// Every source, in path order.
    pub files: Vec<Report>,
    /// How many workers ran.
    pub workers: usize,
    /// Whether the cancel flag stopped the run (the report is then incomplete).
    pub interrupted: bool,
    /// Whether the manifest's final rewrite (one line per source) failed; the run's records are appended
    /// already, so the next run resumes either way.
    pub manifest_error: Option<Error>,
}

impl Summary {
    /// How many sources ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.files
            .iter()
            .filter(|r| r.outcome.status == status)
            .count()
    }
}

/// What the run tells its caller as it goes, for a progress display. Called from the workers as well as the
/// calling thread.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// The sources are planned: how many, and their bytes in all (the unit of [`Event::Advanced`]).
    Planned {
        /// Sources (every one the report will list).
        files: usize,
        /// Their sizes summed (folders count 0).
        bytes: u64,
    },
    /// Some more of a source's bytes are done (each source's advances add up to its size).
    Advanced {
        /// Bytes, in the units of [`Event::Planned::bytes`].
        bytes: u64,
    },
    /// One more source ended.
    Finished {
        /// Sources ended so far (those stopped before starting included).
        done: usize,
        /// Sources in all.
        files: usize,
    },
}

/// A path as reports and manifest keys show it: the one place a path becomes text.
pub(crate) fn shown(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
