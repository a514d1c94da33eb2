//! Resume decisions: whether a source is skipped as up to date or converted again, and whether its output may
//! be replaced.
//!
//! The last manifest record of a source decides: `done` with the same size, modification time and options, and
//! every recorded output present, is skipped; anything else is converted again, replacing the outputs the
//! manifest says this tool wrote. An output that exists but was never recorded is replaced only with `force`.

use std::path::Path;
use std::time::UNIX_EPOCH;

use crate::manifest::{OutputStamp, Record, State};
use crate::Error;

/// A source's size and modification time, as the manifest records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Bytes (of a folder: the sum of its entries' sizes).
    pub size: u64,
    /// Nanoseconds since the Unix epoch, negative before it (of a folder: the newest among it and its entries).
    pub mtime_ns: i64,
}

/// A file's modification time in nanoseconds since the Unix epoch, saturating at the ends of `i64`.
fn mtime_ns(meta: &std::fs::Metadata) -> std::io::Result<i64> {
    Ok(match meta.modified()?.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => {
            i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| 0i64.saturating_sub(n))
        }
    })
}

/// The stamp of the source at `path`.
pub fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(Stamp {
            size: meta.len(),
            mtime_ns: mtime_ns(&meta)?,
        });
    }
    // A checkpoint folder: its entries' sizes and the newest time among them and the folder itself, so that a
    // new step (a new folder, a rewritten `checkpoint.bv-LAST`) or a rewritten metadata file counts as a change.
    let (mut size, mut newest) = (0u64, mtime_ns(&meta)?);
    for e in std::fs::read_dir(path)? {
        let m = e?.metadata()?;
        size = size.saturating_add(if m.is_dir() { 0 } else { m.len() });
        newest = newest.max(mtime_ns(&m)?);
    }
    Ok(Stamp {
        size,
        mtime_ns: newest,
    })
}

/// A written output's stamp, read without following a link (a link put in its place is not the output).
pub fn output_stamp(path: &Path) -> Option<OutputStamp> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.is_file().then_some(())?;
    Some(OutputStamp {
        size: meta.len(),
        mtime_ns: mtime_ns(&meta).ok()?,
    })
}

/// What to do with one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Up to date: leave it.
    Skip,
    /// Convert it; `overwrite` says whether an output already at its path may be replaced (`force`, or the
    /// manifest says this tool wrote what is there).
    Convert {
        /// Whether to replace what is at the output's path.
        overwrite: bool,
    },
}

/// Whether the outputs at a source's paths were written by this tool, by its last record: a `failed` record
/// replaced nothing, so what is there belongs to this tool only if it did before.
pub fn owned(last: Option<&Record>) -> bool {
    last.is_some_and(|r| r.state != State::Failed || r.owned)
}

/// Decides for a source whose last record is `last` and whose stamp is now `now`, in a run whose options'
/// fingerprint is `fingerprint`. `output_now` gives a recorded output's size and modification time now
/// (relative to the output directory; `None` when it is gone or not a file): each must be what was written.
pub fn decide(
    last: Option<&Record>,
    now: Stamp,
    fingerprint: &str,
    force: bool,
    output_now: impl Fn(&str) -> Option<OutputStamp>,
) -> Decision {
    let owned = owned(last);
    let up_to_date = last.is_some_and(|r| {
        r.state == State::Done
            && r.size == now.size
            && r.mtime_ns == now.mtime_ns
            && r.options == fingerprint
            && !r.outputs.is_empty()
            && r.outputs.len() == r.output_stamps.len()
            && r.outputs
                .iter()
                .zip(&r.output_stamps)
                .all(|(o, written)| output_now(o) == Some(*written))
    });
    if up_to_date && !force {
        Decision::Skip
    } else {
        Decision::Convert {
            overwrite: force || owned,
        }
    }
}

/// Why a skipped source was skipped, as the report says it.
pub const UP_TO_DATE: &str =
    "up to date (same source size, modification time and options as recorded, outputs as written)";

/// Whether `path` holds something a conversion would replace: a file, or a directory with anything in it.
pub fn occupied(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path).map_or(true, |mut d| d.next().is_some()),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Refuses to write `output` when something is there that this tool may not replace (`overwrite` unset).
pub fn check_output(output: &Path, overwrite: bool) -> Result<(), Error> {
    if !overwrite && occupied(output) {
        return Err(Error::OutputExists {
            path: output.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &str = "layout=timm dtype=f32";
    const NOW: Stamp = Stamp {
        size: 100,
        mtime_ns: 5_000,
    };

    fn done() -> Record {
        Record {
            source: "a.npz".into(),
            state: State::Done,
            size: NOW.size,
            mtime_ns: NOW.mtime_ns,
            options: OPTIONS.into(),
            owned: true,
            outputs: vec!["a.safetensors".into()],
            output_stamps: vec![OUT],
        }
    }

    /// The stamp every recorded output was written with.
    const OUT: OutputStamp = OutputStamp {
        size: 4096,
        mtime_ns: 6_000,
    };

    fn all_present(_: &str) -> Option<OutputStamp> {
        Some(OUT)
    }

    #[test]
    fn done_with_the_same_stamp_and_options_is_skipped_unless_forced() {
        assert_eq!(
            decide(Some(&done()), NOW, OPTIONS, false, all_present),
            Decision::Skip
        );
        assert_eq!(
            decide(Some(&done()), NOW, OPTIONS, true, all_present),
            Decision::Convert { overwrite: true }
        );
    }

    #[test]
    fn a_changed_size_time_or_options_is_converted_again_over_its_own_output() {
        let convert = Decision::Convert { overwrite: true };
        let bigger = Stamp {
            size: NOW.size + 1,
            ..NOW
        };
        let touched = Stamp {
            mtime_ns: NOW.mtime_ns - 1,
            ..NOW
        };
        assert_eq!(
            decide(Some(&done()), bigger, OPTIONS, false, all_present),
            convert
        );
        assert_eq!(
            decide(Some(&done()), touched, OPTIONS, false, all_present),
            convert
        );
        assert_eq!(
            decide(
                Some(&done()),
                NOW,
                "layout=timm dtype=f16",
                false,
                all_present
            ),
            convert
        );
        // Started and never finished: converted again, over what it may have left.
        let started = Record {
            state: State::Started,
            ..done()
        };
        assert_eq!(
            decide(Some(&started), NOW, OPTIONS, false, all_present),
            convert
        );
    }

    #[test]
    fn a_missing_output_is_written_again() {
        assert_eq!(
            decide(Some(&done()), NOW, OPTIONS, false, |_| None),
            Decision::Convert { overwrite: true }
        );
        // Present but not as written (truncated to half, or rewritten since): written again too.
        for changed in [
            OutputStamp {
                size: OUT.size / 2,
                ..OUT
            },
            OutputStamp {
                mtime_ns: OUT.mtime_ns + 1,
                ..OUT
            },
        ] {
            assert_eq!(
                decide(Some(&done()), NOW, OPTIONS, false, |_| Some(changed)),
                Decision::Convert { overwrite: true }
            );
        }
        // A record from before outputs were stamped proves nothing either.
        let unstamped = Record {
            output_stamps: vec![],
            ..done()
        };
        assert_eq!(
            decide(Some(&unstamped), NOW, OPTIONS, false, all_present),
            Decision::Convert { overwrite: true }
        );
        // A `done` record without outputs proves nothing.
        let empty = Record {
            outputs: vec![],
            output_stamps: vec![],
            ..done()
        };
        assert_eq!(
            decide(Some(&empty), NOW, OPTIONS, false, all_present),
            Decision::Convert { overwrite: true }
        );
    }

    #[test]
    fn an_unrecorded_existing_output_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("a.safetensors");
        std::fs::write(&output, b"someone else's").unwrap();
        let Decision::Convert { overwrite } = decide(None, NOW, OPTIONS, false, all_present) else {
            panic!("an unrecorded source is converted");
        };
        assert!(!overwrite);
        assert!(matches!(
            check_output(&output, overwrite),
            Err(Error::OutputExists { path }) if path == output
        ));
        // With force, or with nothing there (an empty directory counts as nothing), it is written.
        let Decision::Convert { overwrite } = decide(None, NOW, OPTIONS, true, all_present) else {
            panic!("forced");
        };
        assert!(check_output(&output, overwrite).is_ok());
        let empty = dir.path().join("hf");
        std::fs::create_dir(&empty).unwrap();
        assert!(check_output(&empty, false).is_ok());
        assert!(check_output(&dir.path().join("absent"), false).is_ok());
        // A failed record of a source never written does not make its path this tool's.
        let failed = Record {
            state: State::Failed,
            owned: false,
            ..done()
        };
        assert_eq!(
            decide(Some(&failed), NOW, OPTIONS, false, all_present),
            Decision::Convert { overwrite: false }
        );
    }

    #[test]
    fn a_file_and_a_folder_have_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.npz");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(stamp(&file).unwrap().size, 5);
        let folder = dir.path().join("ckpt");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("x"), b"12").unwrap();
        std::fs::write(folder.join("y"), b"345").unwrap();
        assert_eq!(stamp(&folder).unwrap().size, 5);
        assert!(stamp(&dir.path().join("absent")).is_err());
    }
}
