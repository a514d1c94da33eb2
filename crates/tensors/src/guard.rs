//! The guard every read inside a checkpoint folder goes through: a regular file (never a FIFO or a device)
//! that resolves inside the folder, so a planted link cannot make vitconv read elsewhere; and the folder
//! listings the checkpoint finder walks, bounded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{Error, Result};

/// Most entries read from one folder while looking for a checkpoint.
const MAX_DIR_ENTRIES: usize = 1 << 22;

/// Opens files inside one checkpoint folder: regular files only, resolving inside the folder.
#[derive(Debug)]
pub(crate) struct Guard {
    root: PathBuf,
    /// Bytes of every file opened so far, which bound the statistics' work as a file's length does.
    opened_bytes: Mutex<u64>,
}

impl Guard {
    /// A guard for the checkpoint folder `root`.
    pub(crate) fn new(root: &Path) -> Result<Guard> {
        let root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
        Ok(Guard {
            root,
            opened_bytes: Mutex::new(0),
        })
    }

    /// Total bytes of the files opened.
    pub(crate) fn opened_bytes(&self) -> u64 {
        *self.opened_bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that `path` resolves inside the checkpoint folder.
    pub(crate) fn check_inside(&self, path: &Path) -> Result<()> {
        let target = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        if target.starts_with(&self.root) {
            Ok(())
        } else {
            Err(Error::OutsideCheckpoint {
                path: path.to_path_buf(),
                target,
                root: self.root.clone(),
            })
        }
    }

    /// Opens `path` if it exists: a regular file inside the checkpoint, and its length.
    pub(crate) fn open_if_exists(&self, path: &Path) -> Result<Option<(File, u64)>> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        }
        // Every file is resolved, not only links: a folder on the way may be a link too.
        self.check_inside(path)?;
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        crate::check_regular(path, &meta)?;
        let file = crate::open_for_reading(path)?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        crate::check_regular(path, &meta)?;
        let len = meta.len();
        let mut opened = self.opened_bytes.lock().unwrap_or_else(|e| e.into_inner());
        *opened = opened.saturating_add(len);
        Ok(Some((file, len)))
    }

    /// Checks `path` if it exists (a regular file inside the checkpoint) and returns its length, without keeping
    /// it open: chunk files are opened when they are read.
    pub(crate) fn check_if_exists(&self, path: &Path) -> Result<Option<u64>> {
        Ok(self.open_if_exists(path)?.map(|(_, len)| len))
    }

    /// Reads a whole small file of at most `limit` bytes.
    pub(crate) fn read_small(&self, path: &Path, limit: u64) -> Result<Vec<u8>> {
        let (file, len) = self
            .open_if_exists(path)?
            .ok_or_else(|| Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)))?;
        if len > limit {
            return Err(Error::FileTooLarge {
                path: path.to_path_buf(),
                size: len,
                limit,
            });
        }
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        crate::source::read_exact_at(&file, &mut buf, 0).map_err(|e| Error::io(path, e))?;
        Ok(buf)
    }

    /// The folder's entries (names), refusing a folder that leaves the checkpoint.
    pub(crate) fn list(&self, dir: &Path) -> Result<Vec<(String, std::fs::FileType)>> {
        let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io(dir, e))?;
        if meta.file_type().is_symlink() {
            self.check_inside(dir)?;
        }
        list_dir(dir)
    }
}

/// A folder's entries whose names are UTF-8, with their types (links not followed).
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<(String, std::fs::FileType)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if out.len() >= MAX_DIR_ENTRIES {
            return Err(Error::CheckpointMetadata {
                path: dir.to_path_buf(),
                what: format!("more than {MAX_DIR_ENTRIES} entries"),
            });
        }
        let kind = entry.file_type().map_err(|e| Error::io(dir, e))?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, kind));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
