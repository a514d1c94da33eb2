//! The temporary files still being written, and the directories created for them, so that a signal handler can
//! remove them before the process exits.
//!
//! A [`crate::Writer`] writes into a temporary file beside its target and removes it when dropped, but a
//! process ended by SIGINT or SIGTERM runs no destructors. A binary that installs a handler (vitconv uses the
//! `ctrlc` crate) calls [`remove_pending_temporaries`] from it and then exits.
//!
//! The registry's one lock also orders the handler against a rename: a writer holds it across its final
//! rename ([`finish_registered`]), and the handler holds it from the removal until the process exits. So
//! either the rename completed first (the output is whole and nothing is pending) or it never happens (the
//! temporary is gone and an existing target is untouched).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Paths of the temporary files in progress, and of directories created for outputs (marked `true`), in the
/// order they were registered.
static PENDING: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());

/// The registry, even if a thread panicked while holding it (a list of paths cannot be left inconsistent).
fn pending() -> MutexGuard<'static, Vec<(PathBuf, bool)>> {
    PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records a temporary file to remove if the process is interrupted; it stays recorded until the returned
/// guard is dropped (after the file was renamed into place or removed).
pub fn register_temporary(path: &Path) -> TemporaryGuard {
    pending().push((path.to_path_buf(), false));
    TemporaryGuard {
        path: path.to_path_buf(),
    }
}

/// Creates directory `path` and any missing parents, and records the ones it created, so that an interrupt
/// handler removes them again (those still empty once the temporary files inside are gone). They stay recorded
/// until the returned guard is dropped, normally once the outputs inside are in place.
pub fn create_dirs_registered(path: &Path) -> std::io::Result<DirectoriesGuard> {
    let mut list = pending();
    let missing: Vec<PathBuf> = path
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .take_while(|p| !p.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(path)?;
    // Deepest first, the order in which they can be removed.
    list.extend(missing.iter().map(|p| (p.clone(), true)));
    Ok(DirectoriesGuard { created: missing })
}

/// Forgets its directories when dropped (they stay on disk). See [`create_dirs_registered`].
#[derive(Debug)]
pub struct DirectoriesGuard {
    created: Vec<PathBuf>,
}

impl DirectoriesGuard {
    /// The directories this guard's call created, deepest first (empty if `path` existed).
    pub fn created(&self) -> &[PathBuf] {
        &self.created
    }
}

impl Drop for DirectoriesGuard {
    fn drop(&mut self) {
        pending().retain(|(p, dir)| !(*dir && self.created.contains(p)));
    }
}

/// Creates a temporary file with `make` and records it (`path_of` names it) under the registry's lock, so an
/// interrupt cannot fall between the file's creation and its registration.
pub fn create_registered<T, E>(
    make: impl FnOnce() -> Result<T, E>,
    path_of: impl FnOnce(&T) -> &Path,
) -> Result<(T, TemporaryGuard), E> {
    let mut list = pending();
    let made = make()?;
    let path = path_of(&made).to_path_buf();
    list.push((path.clone(), false));
    Ok((made, TemporaryGuard { path }))
}

/// Forgets its temporary file when dropped. See [`register_temporary`].
#[derive(Debug)]
pub struct TemporaryGuard {
    path: PathBuf,
}

impl Drop for TemporaryGuard {
    fn drop(&mut self) {
        let mut list = pending();
        if let Some(i) = list.iter().position(|(p, dir)| !dir && *p == self.path) {
            list.remove(i);
        }
    }
}

/// Runs `rename` (which moves `guard`'s temporary file into place) under the registry's lock, then forgets it.
///
/// An interrupt handler waiting on the lock meanwhile finds nothing to remove; one that took the lock first
/// has removed the file and ends the process before `rename` can run.
pub fn finish_registered<T>(guard: TemporaryGuard, rename: impl FnOnce() -> T) -> T {
    let mut list = pending();
    let result = rename();
    if let Some(i) = list.iter().position(|(p, dir)| !dir && *p == guard.path) {
        list.remove(i);
    }
    drop(list);
    // Its own removal now finds nothing, which is cheap.
    drop(guard);
    result
}

/// Removes every temporary file still being written, then every registered directory left empty, for a signal
/// handler to call just before it exits the process. The registry stays locked from here on, so no writer
/// renames its file into place afterwards.
pub fn remove_pending_temporaries() {
    let list = pending();
    // A file already gone is what we want; any other failure cannot be reported from a handler.
    for (path, _) in list.iter().filter(|(_, dir)| !dir) {
        let _ = std::fs::remove_file(path);
    }
    // `remove_dir` removes only an empty directory: one that holds anything else stays.
    for (path, _) in list.iter().filter(|(_, dir)| *dir) {
        let _ = std::fs::remove_dir(path);
    }
    // Held until the process exits: dropping the guard would let a writer finish a rename.
    std::mem::forget(list);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_register_and_forget() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.partial");
        let guard = register_temporary(&a);
        assert!(pending().contains(&(a.clone(), false)));
        drop(guard);
        assert!(!pending().contains(&(a.clone(), false)));

        let b = dir.path().join("b.partial");
        std::fs::write(&b, b"x").unwrap();
        let guard = register_temporary(&b);
        let target = dir.path().join("b");
        finish_registered(guard, || std::fs::rename(&b, &target)).unwrap();
        assert!(!pending().contains(&(b.clone(), false)));
        assert!(target.exists());
    }

    #[test]
    fn created_directories_are_registered_deepest_first_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("x/y/z");
        let guard = create_dirs_registered(&deep).unwrap();
        let want = [deep.clone(), dir.path().join("x/y"), dir.path().join("x")];
        assert_eq!(guard.created(), want);
        assert!(deep.is_dir());
        let list = pending().clone();
        let at: Vec<usize> = want
            .iter()
            .map(|p| list.iter().position(|e| *e == (p.clone(), true)).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{list:?}");
        drop(guard);
        assert!(!pending().iter().any(|(p, _)| p.starts_with(dir.path())));
        assert!(deep.is_dir(), "dropping the guard keeps the directories");
        // An existing directory is not the guard's to remove.
        assert!(create_dirs_registered(&deep).unwrap().created().is_empty());
    }
}
