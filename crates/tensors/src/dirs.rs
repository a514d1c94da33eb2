//! Directories created for outputs, each call listing the ones it made, so that a run that fails or is
//! cancelled removes what it created and nothing that was there before.
//!
//! Temporary files need no such list: a [`crate::Writer`]'s temporary is removed when it is dropped, and an
//! interrupted conversion stops at its next band (the binary sets a cancel flag; see the convert crate's
//! `Options::cancel`) and unwinds normally, dropping it.

use std::path::{Path, PathBuf};

/// Creates directory `path` and any missing parents, and says which ones it created.
pub fn create_dirs(path: &Path) -> std::io::Result<CreatedDirs> {
    let missing: Vec<PathBuf> = path
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .take_while(|p| !p.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(path)?;
    Ok(CreatedDirs { created: missing })
}

/// The directories one [`create_dirs`] call created.
#[derive(Debug)]
pub struct CreatedDirs {
    created: Vec<PathBuf>,
}

impl CreatedDirs {
    /// The directories this call created, deepest first (the order they can be removed in; empty if `path`
    /// existed).
    pub fn created(&self) -> &[PathBuf] {
        &self.created
    }

    /// Removes those of them that are empty, deepest first; a directory that holds anything stays.
    pub fn remove_empty(&self) {
        for d in &self.created {
            // `remove_dir` removes only an empty directory, which is the point.
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_directories_are_listed_deepest_first_and_only_empty_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("x/y/z");
        let made = create_dirs(&deep).unwrap();
        let want = [deep.clone(), dir.path().join("x/y"), dir.path().join("x")];
        assert_eq!(made.created(), want);
        assert!(deep.is_dir());
        // An existing directory is not the call's to remove.
        assert!(create_dirs(&deep).unwrap().created().is_empty());
        std::fs::write(dir.path().join("x/y/keep"), b"x").unwrap();
        made.remove_empty();
        assert!(!deep.exists(), "empty: removed");
        assert!(dir.path().join("x/y/keep").exists(), "not empty: kept");
    }
}
