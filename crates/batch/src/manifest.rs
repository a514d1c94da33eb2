//! The resume manifest's records and its text: [`parse`], a pure, total function over the file's bytes, and
//! [`serialise`], its inverse for the last record of each source.
//!
//! The manifest ([`crate::MANIFEST`]) holds one JSON line per event, appended as it happens, so that an
//! interrupted run leaves a usable record. A source is `started` just before its output is written, `done` once
//! the output is in place (with the source's size and modification time and the options), and `failed` when
//! the write failed. The last line of a source is the one that counts. Reading it and writing it to disk is
//! [`crate::store`]'s; nothing here touches the file system, so that the parser can be fuzzed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Most bytes one line may have. A record holds three paths' worth of text at most a few times over (the
/// source, the options with a tokenizer's path, the outputs: weights and a few configs); a line longer than this
/// was not written by this tool.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// Most sources one manifest keeps. Far beyond any tree of checkpoints; a bound so that a hostile manifest
/// cannot make the table grow without end.
pub const MAX_ENTRIES: usize = 1 << 20;

/// Most lines read. Each run appends at most two lines per source after rewriting one per source, so a manifest
/// that tool wrote has a few lines per entry.
pub const MAX_LINES: usize = 4 * MAX_ENTRIES;

/// What the manifest says about a source at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The output is about to be written.
    Started,
    /// The output is in place.
    Done,
    /// Writing the output failed (nothing was replaced).
    Failed,
}

impl State {
    /// The state a line spells, if it is one.
    fn parse(name: &str) -> Option<State> {
        match name {
            "started" => Some(State::Started),
            "done" => Some(State::Done),
            "failed" => Some(State::Failed),
            _ => None,
        }
    }
}

/// One line of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The source, relative to the source directory (the key: the last line of a source is the one that counts).
    pub source: String,
    /// What happened.
    pub state: State,
    /// The source's size in bytes, read before the conversion began.
    pub size: u64,
    /// The source's modification time in nanoseconds since the Unix epoch (negative before it), read before the
    /// conversion began.
    pub mtime_ns: i64,
    /// [`crate::Request::fingerprint`] of the run.
    pub options: String,
    /// Whether the outputs now at these paths were written by this tool (so a later run may replace them).
    pub owned: bool,
    /// The files written, relative to the output directory (empty until `done`).
    pub outputs: Vec<String>,
    /// Each output's size and modification time as written, in the order of `outputs`, so that an output
    /// changed since (truncated, replaced) is converted again rather than reported up to date. Manifests
    /// from before this field have none, and their sources are converted again once.
    pub output_stamps: Vec<OutputStamp>,
}

/// A written file's size and modification time, as [`Record::output_stamps`] keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputStamp {
    /// Bytes.
    pub size: u64,
    /// Nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i64,
}

/// A line as JSON gives it, before its state is checked (so that an unknown state is told apart from bad JSON).
#[derive(Deserialize)]
struct Line {
    source: String,
    state: String,
    size: u64,
    mtime_ns: i64,
    options: String,
    owned: bool,
    outputs: Vec<String>,
    #[serde(default)]
    output_stamps: Vec<OutputStamp>,
}

/// The last record of each source, by source (in name order, the order [`serialise`] writes).
pub type Entries = BTreeMap<String, Record>;

/// Reads a manifest's bytes: the last record of each source, and what was wrong with the lines that were
/// ignored (each an [`Error`] naming its line). Never fails and never panics: a line cut short, a line of
/// garbage, an overlong line, an unknown state are each ignored, and the limits ([`MAX_LINES`],
/// [`MAX_LINE_BYTES`], [`MAX_ENTRIES`]) bound the work and the memory whatever the input.
pub fn parse(bytes: &[u8]) -> (Entries, Vec<Error>) {
    let mut entries = Entries::new();
    let mut problems = Vec::new();
    let mut rest = bytes;
    let mut number = 0usize;
    let mut full = false;
    while !rest.is_empty() {
        if number == MAX_LINES {
            problems.push(Error::TooManyLines { max: MAX_LINES });
            break;
        }
        number = number.saturating_add(1);
        let (line, ended) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => {
                let (line, after) = rest.split_at(at);
                rest = after.get(1..).unwrap_or_default();
                (line, true)
            }
            None => (std::mem::take(&mut rest), false),
        };
        // A line ended by `\r\n` reads as one ended by `\n`, as `str::lines` reads it.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match parse_line(line, number, ended) {
            Ok(None) => {}
            Ok(Some(record)) => {
                if !entries.contains_key(&record.source) && entries.len() >= MAX_ENTRIES {
                    // Said once: every further source would say the same.
                    if !full {
                        problems.push(Error::TooManyEntries {
                            line: number,
                            max: MAX_ENTRIES,
                        });
                        full = true;
                    }
                    continue;
                }
                entries.insert(record.source.clone(), record);
            }
            Err(problem) => problems.push(problem),
        }
    }
    (entries, problems)
}

/// One line's record; `None` for a blank line. `ended` says whether a newline followed it.
fn parse_line(line: &[u8], number: usize, ended: bool) -> Result<Option<Record>, Error> {
    if line.len() > MAX_LINE_BYTES {
        return Err(Error::LineTooLong {
            line: number,
            len: line.len(),
            max: MAX_LINE_BYTES,
        });
    }
    let text = std::str::from_utf8(line).map_err(|e| Error::LineNotUtf8 {
        line: number,
        offset: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let raw: Line = serde_json::from_str(text).map_err(|source| {
        // A last line without its newline was cut short by an interrupt or a crash (an append is one write
        // of one whole line), not written wrong.
        if ended {
            Error::LineNotRecord {
                line: number,
                source,
            }
        } else {
            Error::Truncated {
                line: number,
                len: line.len(),
            }
        }
    })?;
    let state = State::parse(&raw.state).ok_or(Error::UnknownState {
        line: number,
        found: raw.state.clone(),
    })?;
    Ok(Some(Record {
        source: raw.source,
        state,
        size: raw.size,
        mtime_ns: raw.mtime_ns,
        options: raw.options,
        owned: raw.owned,
        outputs: raw.outputs,
        output_stamps: raw.output_stamps,
    }))
}

/// One record's line, newline included.
pub fn line(record: &Record) -> Result<String, serde_json::Error> {
    let mut line = serde_json::to_string(record)?;
    line.push('\n');
    Ok(line)
}

/// The manifest's text for `entries`: one line per source, in source order. [`parse`] gives them back.
pub fn serialise(entries: &Entries) -> Result<String, serde_json::Error> {
    let mut text = String::new();
    for record in entries.values() {
        text.push_str(&line(record)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(source: &str, state: State, size: u64) -> Record {
        Record {
            source: source.into(),
            state,
            size,
            mtime_ns: 1_700_000_000_000_000_000,
            options: "layout=timm dtype=f32".into(),
            owned: true,
            outputs: vec![format!("{source}.safetensors")],
            output_stamps: vec![OutputStamp {
                size: 64,
                mtime_ns: 1_700_000_000_000_000_001,
            }],
        }
    }

    fn text(records: &[Record]) -> String {
        records.iter().map(|r| line(r).unwrap()).collect()
    }

    #[test]
    fn a_valid_manifest_reads_back_whole() {
        let records = [
            record("a.npz", State::Done, 10),
            record("b/c.npz", State::Failed, 20),
            record("d", State::Started, 0),
        ];
        let (entries, problems) = parse(text(&records).as_bytes());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(entries.values().cloned().collect::<Vec<_>>(), records);
        // What serialise writes parses to the same entries.
        let again = serialise(&entries).unwrap();
        assert_eq!(again, text(&records));
        assert_eq!(parse(again.as_bytes()).0, entries);
        assert_eq!(parse(b"").0, Entries::new());
    }

    #[test]
    fn a_last_line_cut_short_is_ignored_and_named() {
        let whole = text(&[record("a.npz", State::Done, 10)]);
        let cut = line(&record("b.npz", State::Done, 20)).unwrap();
        let bytes = format!("{whole}{}", &cut[..cut.len() / 2]);
        let (entries, problems) = parse(bytes.as_bytes());
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["a.npz"]);
        assert!(
            matches!(problems[..], [Error::Truncated { line: 2, .. }]),
            "{problems:?}"
        );
        // A whole record that only lacks its newline is kept.
        let (entries, problems) = parse(cut.trim_end().as_bytes());
        assert!(problems.is_empty() && entries.contains_key("b.npz"));
    }

    #[test]
    fn garbage_and_unknown_states_are_ignored_line_by_line() {
        let good = line(&record("a.npz", State::Done, 10)).unwrap();
        let unknown = good.replace("\"done\"", "\"finished\"");
        let mut bytes = b"not json\n\xff\xfe\n{\"source\":1}\n\n".to_vec();
        bytes.extend_from_slice(unknown.as_bytes());
        bytes.extend_from_slice(good.as_bytes());
        let (entries, problems) = parse(&bytes);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries["a.npz"].state, State::Done);
        assert!(
            matches!(
                &problems[..],
                [
                    Error::LineNotRecord { line: 1, .. },
                    Error::LineNotUtf8 { line: 2, offset: 0 },
                    Error::LineNotRecord { line: 3, .. },
                    Error::UnknownState { line: 5, found },
                ] if found == "finished"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn an_overlong_line_is_ignored() {
        let mut long = record("long.npz", State::Done, 10);
        long.options = "x".repeat(MAX_LINE_BYTES);
        let bytes = text(&[long, record("a.npz", State::Done, 1)]);
        let (entries, problems) = parse(bytes.as_bytes());
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["a.npz"]);
        assert!(
            matches!(
                problems[..],
                [Error::LineTooLong {
                    line: 1,
                    max: MAX_LINE_BYTES,
                    ..
                }]
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn of_duplicate_sources_the_last_line_wins() {
        let bytes = text(&[
            record("a.npz", State::Done, 1),
            record("b.npz", State::Done, 2),
            record("a.npz", State::Started, 3),
            record("a.npz", State::Failed, 4),
        ]);
        let (entries, problems) = parse(bytes.as_bytes());
        assert!(problems.is_empty());
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries["a.npz"].state, entries["a.npz"].size),
            (State::Failed, 4)
        );
        // Windows line ends read the same.
        let crlf = bytes.replace('\n', "\r\n");
        assert_eq!(parse(crlf.as_bytes()).0, entries);
    }
}
