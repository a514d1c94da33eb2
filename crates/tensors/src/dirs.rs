//! Output directories: the ones a run creates (listed, so that a failed run removes them and nothing that was
//! there before), and directories held open as handles ([`OutDir`]) so that every file an output writes lands
//! inside the directory that was checked, never through a symbolic link planted on the way.
//!
//! A directory is opened once; its subdirectories are opened or created relative to that handle with
//! `O_NOFOLLOW`, and temporaries are created (`O_CREAT | O_EXCL`, which never follows a link) and renamed
//! (`renameat`, which replaces a link rather than writing through it) relative to it too. Swapping a folder
//! for a link after it was opened therefore changes nothing: the handle still names the folder that was
//! checked. Temporary files are removed when dropped, so a failed or cancelled conversion leaves none.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

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

/// The mode new output directories get (less the umask), as `mkdir` gives them.
const DIR_MODE: u32 = 0o777;

/// What a name inside an [`OutDir`] is, looked at without following a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (not followed).
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// An open output directory. Cheap to clone (the handle is shared).
#[derive(Debug, Clone)]
pub struct OutDir {
    fd: Arc<OwnedFd>,
    /// For messages only: every operation goes through `fd`.
    path: PathBuf,
}

/// The error for a link found where an output directory was to be.
fn link_refused(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{} is a symbolic link; vitconv writes only into real directories (name the directory the link points to)",
        path.display()
    ))
}

impl OutDir {
    /// Opens the existing directory `path`. Links on the way are followed, as for any path a user names.
    pub fn open(path: &Path) -> io::Result<OutDir> {
        let dir = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        let fd = rustix::fs::openat(
            rustix::fs::CWD,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(OutDir {
            fd: Arc::new(fd),
            path: path.to_path_buf(),
        })
    }

    /// The directory's path as it was named (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the subdirectory `name` without following a link, creating it first when `create` is set and
    /// it is missing; says whether this call created it. A link, a file or anything else there is refused.
    pub fn child(&self, name: &OsStr, create: bool) -> io::Result<(OutDir, bool)> {
        let path = self.path.join(name);
        let mut created = false;
        if create {
            match rustix::fs::mkdirat(&*self.fd, name, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) => created = true,
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let fd = rustix::fs::openat(
            &*self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match self.kind(name) {
            Ok(Some(EntryKind::Symlink)) => link_refused(&path),
            _ => e.into(),
        })?;
        Ok((
            OutDir {
                fd: Arc::new(fd),
                path,
            },
            created,
        ))
    }

    /// Opens the directory `rel` below this one one component at a time, none of them a link, creating the
    /// missing ones when `create` is set. Returns it and the names of the directories this call created,
    /// deepest first (relative to `self`), for [`OutDir::remove_created`].
    pub fn descend(&self, rel: &Path, create: bool) -> io::Result<(OutDir, Vec<PathBuf>)> {
        let mut at = self.clone();
        let mut walked = PathBuf::new();
        let mut created = Vec::new();
        for part in rel.components() {
            let std::path::Component::Normal(name) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: only plain names below the output directory",
                        rel.display()
                    ),
                ));
            };
            let (next, made) = at.child(name, create)?;
            walked.push(name);
            if made {
                created.push(walked.clone());
            }
            at = next;
        }
        created.reverse();
        Ok((at, created))
    }

    /// Removes the directories `descend` or `child` created (deepest first, relative to `self`) with
    /// whatever is in them, without following a link anywhere.
    pub fn remove_created(&self, created: &[PathBuf]) {
        for rel in created {
            let _ = self.remove_tree(rel);
        }
    }

    /// Removes those of the directories `rel` (relative to `self`) that are empty, in the order given (deepest
    /// first, as [`OutDir::descend`] lists them); one that holds anything stays.
    pub fn remove_empty(&self, rel: &[PathBuf]) {
        for r in rel {
            if let Ok(Some((parent, name))) = self.parent_of(r) {
                // `unlinkat` with REMOVEDIR removes only an empty directory, which is the point.
                let _ = rustix::fs::unlinkat(&*parent.fd, name, AtFlags::REMOVEDIR);
            }
        }
    }

    /// Removes `rel` and everything below it; links are removed, never followed.
    pub fn remove_tree(&self, rel: &Path) -> io::Result<()> {
        match self.parent_of(rel)? {
            Some((parent, name)) => parent.remove_entry_tree(name),
            None => Ok(()),
        }
    }

    /// The directory holding `rel` (reached without following a link) and `rel`'s last name; `None` for a
    /// path without a name.
    fn parent_of<'r>(&self, rel: &'r Path) -> io::Result<Option<(OutDir, &'r OsStr)>> {
        Ok(match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) if !p.as_os_str().is_empty() => Some((self.descend(p, false)?.0, n)),
            (_, Some(n)) => Some((self.clone(), n)),
            _ => None,
        })
    }

    fn remove_entry_tree(&self, name: &OsStr) -> io::Result<()> {
        match self.kind(name)? {
            None => Ok(()),
            Some(EntryKind::Directory) => {
                let (dir, _) = self.child(name, false)?;
                for entry in dir.names()? {
                    dir.remove_entry_tree(&entry)?;
                }
                Ok(rustix::fs::unlinkat(&*self.fd, name, AtFlags::REMOVEDIR)?)
            }
            Some(_) => Ok(rustix::fs::unlinkat(&*self.fd, name, AtFlags::empty())?),
        }
    }

    /// What `name` is, without following a link; `None` when there is nothing by that name.
    pub fn kind(&self, name: &OsStr) -> io::Result<Option<EntryKind>> {
        match rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(
                match FileType::from_raw_mode(st.st_mode as rustix::fs::RawMode) {
                    FileType::RegularFile => EntryKind::File,
                    FileType::Directory => EntryKind::Directory,
                    FileType::Symlink => EntryKind::Symlink,
                    _ => EntryKind::Other,
                },
            )),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The names in the directory (without `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        use std::os::unix::ffi::OsStrExt as _;
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&*self.fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(out)
    }

    /// Removes the file or link `name` (never what a link points to); nothing there is not an error.
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        match rustix::fs::unlinkat(&*self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a temporary file `.{target}.XXXXXXXX.partial` in the directory with `mode` (less the umask),
    /// to become `target` through [`TempFile::persist`]. It is removed if dropped before that.
    pub fn temp(&self, target: &OsStr, mode: u32) -> io::Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut prefix = OsString::from(".");
        prefix.push(target);
        for _ in 0..64 {
            // Unique within the process by the counter, across processes by the pid and the clock; a name
            // that exists anyway is simply skipped, since O_EXCL never opens an existing one.
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let tag = (u64::from(std::process::id()) << 32 ^ u64::from(nanos))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(n);
            let mut name = prefix.clone();
            name.push(format!(".{:08x}.partial", tag >> 32));
            match rustix::fs::openat(
                &*self.fd,
                &*name,
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            ) {
                Ok(fd) => {
                    return Ok(TempFile {
                        dir: self.clone(),
                        name,
                        file: File::from(fd),
                        live: true,
                    })
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not find a free temporary name",
        ))
    }

    /// Whether `name` is one of the temporaries [`OutDir::temp`] makes for some target (for cleaning up
    /// after a run that was killed).
    pub fn is_temp_name(name: &OsStr) -> bool {
        use std::os::unix::ffi::OsStrExt as _;
        let b = name.as_bytes();
        let Some(body) = b
            .strip_prefix(b".")
            .and_then(|b| b.strip_suffix(b".partial"))
        else {
            return false;
        };
        // `{target}.{8 hex digits}`
        match body.len().checked_sub(9) {
            Some(dot) => {
                body.get(dot) == Some(&b'.')
                    && body
                        .get(dot.saturating_add(1)..)
                        .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
                    && dot > 0
            }
            None => false,
        }
    }
}

/// A temporary file inside an [`OutDir`], removed when dropped unless persisted.
#[derive(Debug)]
pub struct TempFile {
    dir: OutDir,
    name: OsString,
    file: File,
    live: bool,
}

impl TempFile {
    /// The open file.
    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// The directory it is in.
    pub fn dir(&self) -> &OutDir {
        &self.dir
    }

    /// Where the temporary is (for messages).
    pub fn path(&self) -> PathBuf {
        self.dir.path.join(&self.name)
    }

    /// Renames the file to `target` in its directory. Without `overwrite`, a target that exists (even one
    /// that appeared a moment ago) is refused with `AlreadyExists` and the temporary removed. A link at
    /// `target` is replaced, never written through.
    pub fn persist(mut self, target: &OsStr, overwrite: bool) -> io::Result<()> {
        let fd = &*self.dir.fd;
        let renamed = if overwrite {
            rustix::fs::renameat(fd, &*self.name, fd, target)
        } else {
            no_clobber_rename(fd, &self.name, target)
        };
        match renamed {
            Ok(()) => {
                self.live = false;
                Ok(())
            }
            Err(rustix::io::Errno::EXIST) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", self.dir.path.join(target).display()),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// `rename` that fails with `EEXIST` instead of replacing an existing target, in one step where the kernel
/// offers it; otherwise through a hard link (which refuses an existing name) and an unlink.
fn no_clobber_rename(dir: &OwnedFd, from: &OsStr, to: &OsStr) -> rustix::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    match rustix::fs::renameat_with(dir, from, dir, to, rustix::fs::RenameFlags::NOREPLACE) {
        // Filesystems without RENAME_NOREPLACE answer EINVAL; those get the link route.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {}
        other => return other,
    }
    rustix::fs::linkat(dir, from, dir, to, AtFlags::empty())?;
    rustix::fs::unlinkat(dir, from, AtFlags::empty())
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.live {
            let _ = rustix::fs::unlinkat(&*self.dir.fd, &*self.name, AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

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

    #[test]
    fn a_link_below_the_output_directory_is_refused_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(victim.path(), root.path().join("out")).unwrap();
        let dir = OutDir::open(root.path()).unwrap();
        let err = dir.child(OsStr::new("out"), true).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = dir.descend(Path::new("a/out/b"), true);
        assert!(err.is_ok(), "a/out is a new real directory");
        std::os::unix::fs::symlink(victim.path(), root.path().join("a/l")).unwrap();
        assert!(dir.descend(Path::new("a/l/b"), true).is_err());
        assert!(
            !victim.path().join("b").exists(),
            "nothing created through the link"
        );
    }

    #[test]
    fn a_swapped_folder_does_not_redirect_an_open_handle() {
        let root = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        let top = OutDir::open(root.path()).unwrap();
        let (out, created) = top.child(OsStr::new("out"), true).unwrap();
        assert!(created);
        // The folder is moved away and a link put in its place after it was opened.
        std::fs::rename(root.path().join("out"), root.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(victim.path(), root.path().join("out")).unwrap();
        let mut t = out.temp(OsStr::new("config.json"), 0o644).unwrap();
        writeln!(&t.file, "{{}}").unwrap();
        t.file.flush().unwrap();
        t.persist(OsStr::new("config.json"), true).unwrap();
        assert!(root.path().join("moved/config.json").is_file());
        assert!(!victim.path().join("config.json").exists());
    }

    #[test]
    fn persist_replaces_a_planted_link_and_refuses_without_overwrite() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, root.path().join("w.bin")).unwrap();
        let dir = OutDir::open(root.path()).unwrap();
        let t = dir.temp(OsStr::new("w.bin"), 0o644).unwrap();
        let err = t.persist(OsStr::new("w.bin"), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let t = dir.temp(OsStr::new("w.bin"), 0o644).unwrap();
        (&t.file).write_all(b"new").unwrap();
        t.persist(OsStr::new("w.bin"), true).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(root.path().join("w.bin")).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(root.path().join("w.bin"))
            .unwrap()
            .file_type()
            .is_symlink());
        // Only the two files are left: no temporaries.
        assert_eq!(dir.names().unwrap().len(), 2);
    }

    #[test]
    fn a_temporary_is_never_created_through_a_link_and_is_removed_when_dropped() {
        let root = tempfile::tempdir().unwrap();
        let dir = OutDir::open(root.path()).unwrap();
        let t = dir.temp(OsStr::new("x.safetensors"), 0o644).unwrap();
        let name = t.name.clone();
        assert!(OutDir::is_temp_name(&name), "{name:?}");
        assert!(root.path().join(&name).is_file());
        drop(t);
        assert!(!root.path().join(&name).exists());
        for (n, ours) in [
            (".x.safetensors.0a1b2c3d.partial", true),
            (".x.safetensors.partial", false),
            (".x.safetensors.0a1b2c3g.partial", false),
            ("x.safetensors.0a1b2c3d.partial", false),
            ("..0a1b2c3d.partial", false),
        ] {
            assert_eq!(OutDir::is_temp_name(OsStr::new(n)), ours, "{n}");
        }
    }

    #[test]
    fn remove_tree_removes_links_and_not_their_targets() {
        let root = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("keep"), b"x").unwrap();
        let dir = OutDir::open(root.path()).unwrap();
        let (_, created) = dir.descend(Path::new("a/b"), true).unwrap();
        assert_eq!(created, [PathBuf::from("a/b"), PathBuf::from("a")]);
        std::os::unix::fs::symlink(victim.path(), root.path().join("a/b/link")).unwrap();
        std::fs::write(root.path().join("a/b/f"), b"x").unwrap();
        dir.remove_created(&created);
        assert!(!root.path().join("a").exists());
        assert!(victim.path().join("keep").exists());
    }
}
