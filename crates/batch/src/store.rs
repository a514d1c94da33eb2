//! The manifest on disk: read without following a link planted at its name, rewritten through an exclusive
//! temporary renamed into place, appended to one whole line at a time by the workers.
//!
//! Every file-system touch of the manifest is here, so that a change in how the output directory is opened
//! (a directory handle, say) changes this module and no other.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::manifest::{self, Entries, Record};
use crate::{Error, MANIFEST};

/// Most bytes a manifest may have: a line per event of at most a few hundred bytes, for every source.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// The manifest of one output directory: the last record of each source as the run began, and the file new
/// records are appended to.
pub struct Store {
    path: PathBuf,
    last: Entries,
    /// Open for appending; one lock so that lines from different workers never interleave.
    file: Mutex<Option<File>>,
}

/// Opens `path` with `options`, refusing a symbolic link at that name and never blocking on a FIFO.
fn open_no_follow(options: &mut OpenOptions, path: &Path) -> std::io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    options.open(path)
}

/// The manifest's bytes, empty when there is none. A link planted at its name is refused; the file itself is
/// read as every small file is ([`vitconv_tensors::read_regular_file`]: a regular file, never a FIFO or a
/// device, of at most [`MAX_MANIFEST_BYTES`]).
fn read(path: &Path) -> Result<Vec<u8>, Error> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::ManifestLink {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::ManifestIo {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    vitconv_tensors::read_regular_file(path, MAX_MANIFEST_BYTES).map_err(Error::ManifestRead)
}

impl Store {
    /// Reads the manifest of `output_dir` (an absent one is empty; lines that do not parse, such as one cut
    /// short by an interrupt, are ignored) and rewrites it with one line per source.
    pub fn load(output_dir: &Path) -> Result<Store, Error> {
        let path = output_dir.join(MANIFEST);
        let (last, _ignored) = manifest::parse(&read(&path)?);
        let store = Store {
            path,
            last,
            file: Mutex::new(None),
        };
        store.save(&store.last)?;
        Ok(store)
    }

    /// The last record of `source` as the run began.
    pub fn last(&self, source: &str) -> Option<&Record> {
        self.last.get(source)
    }

    /// The append handle, even if a worker panicked while holding it (a file handle cannot be left inconsistent).
    fn handle(&self) -> MutexGuard<'_, Option<File>> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rewrites the file with `entries` (atomically: a temporary renamed into place), then reopens it for
    /// appending.
    fn save(&self, entries: &Entries) -> Result<(), Error> {
        let mut handle = self.handle();
        *handle = None;
        let text = manifest::serialise(entries).map_err(|source| Error::ManifestEncode {
            path: self.path.clone(),
            source,
        })?;
        let io = |source| Error::ManifestIo {
            path: self.path.clone(),
            source,
        };
        // A temporary of a fresh random name, created exclusively: a link planted under any fixed name
        // cannot redirect the write, and the rename replaces a link at the manifest's own name, not its target.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{MANIFEST}."))
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        *handle = Some(open_no_follow(OpenOptions::new().append(true), &self.path).map_err(io)?);
        Ok(())
    }

    /// Rewrites the manifest with one line per source, from what this run appended to it.
    pub fn compact(&self) -> Result<(), Error> {
        // What this run wrote is re-read from the file it appended to (the lock held, so that no line is half
        // written); a file that cannot be read back reads as empty, and the next run converts everything.
        let bytes = {
            let _held = self.handle();
            // Through the same checks as at the start: the file could have been swapped meanwhile.
            read(&self.path).unwrap_or_default()
        };
        let (last, _ignored) = manifest::parse(&bytes);
        self.save(&last)
    }

    /// Appends one record (a single write of one line).
    pub fn append(&self, record: &Record) -> Result<(), Error> {
        let line = manifest::line(record).map_err(|source| Error::ManifestEncode {
            path: self.path.clone(),
            source,
        })?;
        let mut handle = self.handle();
        let file = handle.as_mut().ok_or_else(|| Error::ManifestNotOpen {
            path: self.path.clone(),
        })?;
        file.write_all(line.as_bytes())
            .map_err(|source| Error::ManifestIo {
                path: self.path.clone(),
                source,
            })
    }
}
