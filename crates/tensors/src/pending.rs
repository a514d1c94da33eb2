//! The temporary files still being written, so that a signal handler can remove them before the process exits.
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

/// Paths of the temporary files in progress.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The registry, even if a thread panicked while holding it (a list of paths cannot be left inconsistent).
fn pending() -> MutexGuard<'static, Vec<PathBuf>> {
    PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records a temporary file to remove if the process is interrupted; it stays recorded until the returned
/// guard is dropped (after the file was renamed into place or removed).
pub fn register_temporary(path: &Path) -> TemporaryGuard {
    pending().push(path.to_path_buf());
    TemporaryGuard {
        path: path.to_path_buf(),
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
    list.push(path.clone());
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
        if let Some(i) = list.iter().position(|p| *p == self.path) {
            list.swap_remove(i);
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
    if let Some(i) = list.iter().position(|p| *p == guard.path) {
        list.swap_remove(i);
    }
    drop(list);
    // Its own removal now finds nothing, which is cheap.
    drop(guard);
    result
}

/// Removes every temporary file still being written, for a signal handler to call just before it exits the
/// process. The registry stays locked from here on, so no writer renames its file into place afterwards.
pub fn remove_pending_temporaries() {
    let list = pending();
    for path in list.iter() {
        // A file already gone is what we want; any other failure cannot be reported from a handler.
        let _ = std::fs::remove_file(path);
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
        assert!(pending().contains(&a));
        drop(guard);
        assert!(!pending().contains(&a));

        let b = dir.path().join("b.partial");
        std::fs::write(&b, b"x").unwrap();
        let guard = register_temporary(&b);
        let target = dir.path().join("b");
        finish_registered(guard, || std::fs::rename(&b, &target)).unwrap();
        assert!(!pending().contains(&b));
        assert!(target.exists());
    }
}
