//! The batch crate's one error type: what stops a whole run, what a manifest line can be wrong in, and why one
//! source was refused or failed.
//!
//! Messages never repeat the text of their `#[source]`, and [`one_line`] skips a cause whose text the line
//! already holds, so that a caller showing the whole chain prints each cause once.

use std::path::PathBuf;

/// Everything that can go wrong in batch mode. The converter's errors are boxed: they are large, and a run's
/// every `Result` carries this type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// OUTPUT exists and is not a directory.
    #[error("{}: is a file; with a directory as SOURCE, OUTPUT is the directory the outputs go to", path.display())]
    OutputIsFile {
        /// The output directory named on the command line.
        path: PathBuf,
    },

    /// The source directory holds nothing batch mode converts.
    #[error("{}: no checkpoint under it (.npz, flax msgpack, big_vision .bv, Orbax)", path.display())]
    NoSources {
        /// The source directory.
        path: PathBuf,
    },

    /// A directory an output goes into could not be made.
    #[error("{}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why it could not be made.
        #[source]
        source: std::io::Error,
    },

    /// A directory under the source directory could not be listed.
    #[error("{}: {source}", path.display())]
    UnreadableDir {
        /// The directory (under the source directory).
        path: PathBuf,
        /// Why it could not be listed.
        #[source]
        source: std::io::Error,
    },

    /// Something other than a regular file (a link) sits at the manifest's name.
    #[error("{}: the batch manifest is not a regular file (a link); remove it to start afresh", path.display())]
    ManifestLink {
        /// The manifest's path.
        path: PathBuf,
    },

    /// The manifest could not be read (not a regular file, too large, unreadable).
    #[error(transparent)]
    ManifestRead(vitconv_tensors::Error),

    /// Reading, writing or renaming the manifest failed.
    #[error("{}: {source}", path.display())]
    ManifestIo {
        /// The manifest's path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },

    /// A record could not be put into JSON (never expected: every field is a string, a number or a bool).
    #[error("{}: {source}", path.display())]
    ManifestEncode {
        /// The manifest's path.
        path: PathBuf,
        /// The encoder's complaint.
        #[source]
        source: serde_json::Error,
    },

    /// A record was to be appended while the manifest was not open (a failed rewrite closed it).
    #[error("{}: not open", path.display())]
    ManifestNotOpen {
        /// The manifest's path.
        path: PathBuf,
    },

    /// A manifest line longer than [`crate::manifest::MAX_LINE_BYTES`]; it is ignored.
    #[error("manifest line {line}: {len} bytes, more than the {max} a record takes")]
    LineTooLong {
        /// The line's number, from 1.
        line: usize,
        /// Its length in bytes (without the newline).
        len: usize,
        /// The most a line may have.
        max: usize,
    },

    /// A manifest line that is not UTF-8; it is ignored.
    #[error("manifest line {line}: not UTF-8 (byte {offset})")]
    LineNotUtf8 {
        /// The line's number, from 1.
        line: usize,
        /// Where the first byte that is not UTF-8 sits in the line.
        offset: usize,
    },

    /// A manifest line that is not a record's JSON; it is ignored.
    #[error("manifest line {line}: not a record: {source}")]
    LineNotRecord {
        /// The line's number, from 1.
        line: usize,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },

    /// A record whose state is none of `started`, `done`, `failed`; it is ignored.
    #[error("manifest line {line}: state {found:?}, expected one of started, done, failed")]
    UnknownState {
        /// The line's number, from 1.
        line: usize,
        /// The state the line gives.
        found: String,
    },

    /// The last line has no newline and does not parse: a write cut short (by an interrupt or a crash).
    #[error("manifest line {line}: cut short ({len} bytes and no newline)")]
    Truncated {
        /// The line's number, from 1.
        line: usize,
        /// Its length in bytes.
        len: usize,
    },

    /// The manifest has more lines than [`crate::manifest::MAX_LINES`]; the rest are not read.
    #[error("the manifest has more than {max} lines; the rest are ignored")]
    TooManyLines {
        /// The most lines read.
        max: usize,
    },

    /// The manifest names more sources than [`crate::manifest::MAX_ENTRIES`]; records of further sources are
    /// ignored.
    #[error("manifest line {line}: more than {max} sources; further sources are ignored")]
    TooManyEntries {
        /// The first line of a source over the limit.
        line: usize,
        /// The most sources kept.
        max: usize,
    },

    /// A source's size or modification time could not be read.
    #[error("{}: {source}", path.display())]
    Stamp {
        /// The source.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// Two sources would write the same output (names that differ only in the case of `.npz`).
    #[error("{}: the output of {} too; rename one of them", output.display(), other.display())]
    OutputCollision {
        /// The output both would write.
        output: PathBuf,
        /// The other source (relative to the source directory).
        other: PathBuf,
    },

    /// An output directory (hf, or open_clip's folder for a two-tower model) that would also hold another
    /// source's output.
    #[error("{}: this output directory (the layout writes a folder here for this source, or may: open_clip does for a two-tower model) would also hold the output of {}; rename one of them", output.display(), inner.display())]
    OutputHoldsOther {
        /// The output directory.
        output: PathBuf,
        /// The source whose output lies inside it (relative to the source directory).
        inner: PathBuf,
    },

    /// A source whose path is not valid UTF-8: the manifest keys sources by their text, so two names that
    /// differ only in invalid bytes would share a key; such a source is refused, not converted under a lossy
    /// name.
    #[error("{}: the name is not valid UTF-8; batch mode keys each source by its name, so rename it (or convert it alone with npz-to-pt SOURCE OUTPUT)", path.display())]
    NonUtf8Name {
        /// The source, relative to the source directory.
        path: PathBuf,
    },

    /// A link with a checkpoint's name that points nowhere.
    #[error("{}: a symbolic link to a file that does not exist ({}); the source was not converted", path.display(), target.display())]
    DanglingLink {
        /// The link.
        path: PathBuf,
        /// What it names.
        target: PathBuf,
    },

    /// An output below the output directory that cannot be reached without following a link (or made).
    #[error("{}: {source}", path.display())]
    OutputDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The source could not be opened as a checkpoint (its message names the file).
    #[error(transparent)]
    Open(vitconv_tensors::Error),

    /// The source opened, but its tensors could not be read while planning (its message names the file).
    #[error(transparent)]
    Unreadable(Box<vitconv_convert::Error>),

    /// The converter declined the source: a layout that cannot hold the model, an option that does not apply,
    /// not a ViT checkpoint.
    #[error("{}", refusal(path, error))]
    Refused {
        /// The source.
        path: PathBuf,
        /// The converter's reason.
        #[source]
        error: Box<vitconv_convert::Error>,
    },

    /// An output exists that no earlier batch run recorded writing, and `force` was not given.
    #[error("{}: output exists and no earlier batch run recorded writing it ({}); pass --force to replace it", path.display(), crate::MANIFEST)]
    OutputExists {
        /// The output.
        path: PathBuf,
    },

    /// Writing the output failed (the writer replaced nothing).
    #[error(transparent)]
    Write(Box<vitconv_convert::Error>),

    /// The output was written, but its `done` record could not be appended.
    #[error("{}: converted, but not recorded, so the next run converts it again: {source}", output.display())]
    NotRecorded {
        /// The output.
        output: PathBuf,
        /// Why the record could not be appended.
        #[source]
        source: Box<Error>,
    },

    /// The conversion panicked; only this source fails.
    #[error("{}: the conversion stopped unexpectedly (a bug in vitconv; please report it)", path.display())]
    Panicked {
        /// The source.
        path: PathBuf,
    },

    /// No worker took the source (the run stopped early).
    #[error("not run")]
    NotRun {
        /// The source.
        path: PathBuf,
    },
}

/// A refusal's text: the converter's reason, led by the source's path unless the reason already names it.
fn refusal(path: &std::path::Path, error: &vitconv_convert::Error) -> String {
    let why = error.to_string();
    if why.contains(&*path.to_string_lossy()) {
        why
    } else {
        format!("{}: {why}", path.display())
    }
}

/// The error and its causes on one line (a table row, a line of stderr): a cause whose text the line already
/// holds is not repeated, and a newline becomes a space. Control characters are left for the printer to escape.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line.replace('\n', " ")
}
