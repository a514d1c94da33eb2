//! Discovery: the checkpoints under a source directory, and the plan of which output each one gets (with the
//! clashes that stop a source before it starts).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use vitconv_tensors::FolderKind;

use crate::Error;

/// What [`find_sources`] found.
#[derive(Debug)]
pub struct Found {
    /// Every checkpoint, relative to the source directory, with its size (0 for a folder), in path order.
    pub sources: Vec<(PathBuf, u64)>,
    /// The directories (relative) that could not be read, with the reason.
    pub unreadable: Vec<(PathBuf, Error)>,
}

/// Every checkpoint under `dir` (recursively, in name order) and the directories that could not be read:
/// `.npz` files, flax msgpack files (`*.msgpack`, `checkpoint_<step>`, told by their content), big_vision
/// workdirs and step folders, and Orbax steps (each complete one, or with `latest` the newest complete one of
/// each folder of steps). Symbolic links to files are followed, links to directories are not (so a link cannot
/// make the walk loop), and `skip` (the output directory, canonical, when it lies inside) is not entered.
pub fn find_sources(dir: &Path, skip: Option<&Path>, latest: bool) -> Found {
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let full = dir.join(&rel);
        let entries =
            std::fs::read_dir(&full).and_then(Iterator::collect::<std::io::Result<Vec<_>>>);
        let entries = match entries {
            Ok(v) => v,
            Err(source) => {
                unreadable.push((rel, Error::UnreadableDir { path: full, source }));
                continue;
            }
        };
        let mut subdirs = Vec::new();
        // Complete Orbax steps in this folder, with their step numbers, for `latest`.
        let mut steps: Vec<(u64, PathBuf)> = Vec::new();
        for e in entries {
            let child = rel.join(e.file_name());
            let Ok(kind) = e.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let inside_output = skip.is_some_and(|s| {
                    std::fs::canonicalize(e.path()).is_ok_and(|c| c.as_path() == s)
                });
                if inside_output {
                    continue;
                }
                match vitconv_tensors::folder_kind(&e.path()) {
                    FolderKind::Checkpoint => found.push((child, 0)),
                    // A step still being written (or abandoned) is not a checkpoint yet.
                    FolderKind::OrbaxStep {
                        complete: false, ..
                    } => {}
                    FolderKind::OrbaxStep { step, .. } => steps.push((step.unwrap_or(0), child)),
                    FolderKind::Other => subdirs.push(child),
                }
                continue;
            }
            if !(is_npz(&child) || is_msgpack_name(&child)) {
                continue;
            }
            // A link named like a checkpoint that points nowhere is reported, not passed over in silence.
            if kind.is_symlink() && std::fs::metadata(e.path()).is_err() {
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                unreadable.push((
                    child,
                    Error::DanglingLink {
                        path: e.path(),
                        target,
                    },
                ));
                continue;
            }
            if !is_npz(&child) && !vitconv_tensors::is_msgpack_file(&e.path()) {
                continue;
            }
            // A link is followed to what it names; a link to a directory or a dangling one is not a source.
            match std::fs::metadata(e.path()) {
                Ok(m) if m.is_file() => found.push((child, m.len())),
                _ => {}
            }
        }
        if latest {
            steps.sort();
            steps = steps.pop().into_iter().collect();
        }
        found.extend(steps.into_iter().map(|(_, child)| (child, 0)));
        pending.extend(subdirs);
    }
    // The walk's own order is depth-first; the report is in path order.
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Found {
        sources: found,
        unreadable,
    }
}

/// Whether the name ends in `.npz` (any case).
fn is_npz(name: &Path) -> bool {
    name.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("npz"))
}

/// Whether the name is one a flax msgpack checkpoint goes by: `*.msgpack` or `checkpoint_<step>` (the content
/// decides whether it is one).
fn is_msgpack_name(name: &Path) -> bool {
    name.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("msgpack"))
        || name
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("checkpoint_"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// One source to convert, with its planned output.
#[derive(Debug)]
pub struct Entry {
    /// The path relative to the source directory.
    pub rel: PathBuf,
    /// The output: the same relative path under the output directory, with the output's extension (none for a
    /// directory per checkpoint).
    pub output: PathBuf,
    /// The source's size when it was found, for progress (0 for a folder).
    pub size: u64,
    /// Set when the source cannot be converted at all (a collision of outputs, an unreadable directory).
    pub problem: Option<Error>,
}

/// The output's path relative to the output directory: an `.npz` or `.msgpack` file's extension is replaced;
/// a folder's or a bare file's name is kept whole (`checkpoint_100` -> `checkpoint_100.safetensors`), so that
/// `ckpt.v2` keeps its `.v2`. `ext` is `None` for a directory per checkpoint.
pub fn output_rel(rel: &Path, ext: Option<&str>) -> PathBuf {
    let replaced = rel
        .extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("npz") || x.eq_ignore_ascii_case("msgpack"));
    match (ext, replaced) {
        (Some(ext), true) => rel.with_extension(ext),
        (None, true) => rel.with_extension(""),
        (Some(ext), false) => {
            let mut name = rel.as_os_str().to_os_string();
            name.push(".");
            name.push(ext);
            PathBuf::from(name)
        }
        (None, false) => rel.to_path_buf(),
    }
}

/// The entries to convert: each found source with its output under `output_dir`, and the problems that stop
/// one before it starts.
///
/// `may_be_folder` says that the layout writes some sources as a folder named like the output without its
/// extension (open_clip's two-tower models): those folders are checked for holding other outputs too, before
/// anything starts, whatever the sources turn out to be.
pub fn plan(
    found: Vec<(PathBuf, u64)>,
    output_dir: &Path,
    ext: Option<&str>,
    may_be_folder: bool,
) -> Vec<Entry> {
    let mut entries: Vec<Entry> = found
        .into_iter()
        .map(|(rel, size)| Entry {
            output: output_dir.join(output_rel(&rel, ext)),
            // The manifest keys sources by their text: a name that is not UTF-8 has no faithful key.
            problem: rel
                .to_str()
                .is_none()
                .then(|| Error::NonUtf8Name { path: rel.clone() }),
            rel,
            size,
        })
        .collect();
    // Two sources whose names differ only in the case of `.npz` would write the same output.
    let mut first: HashMap<PathBuf, PathBuf> = HashMap::new();
    for e in &mut entries {
        if let Some(other) = first.get(&e.output) {
            e.problem = Some(Error::OutputCollision {
                output: e.output.clone(),
                other: other.clone(),
            });
        } else {
            first.insert(e.output.clone(), e.rel.clone());
        }
    }
    // An output directory that would also hold other outputs (`a/b.npz` beside a directory `a/b/`) cannot be
    // written whole.
    // The folder each source writes (or may write), keyed by that folder.
    let folder_of = |e: &Entry| -> Option<PathBuf> {
        match (ext, may_be_folder) {
            (None, _) => Some(e.output.clone()),
            (Some(_), true) => Some(e.output.with_extension("")),
            (Some(_), false) => None,
        }
    };
    let folders: HashSet<PathBuf> = entries.iter().filter_map(folder_of).collect();
    if !folders.is_empty() {
        let mut holders: HashMap<PathBuf, PathBuf> = HashMap::new();
        for e in &entries {
            for a in e.output.ancestors().skip(1) {
                if folders.contains(a) {
                    holders
                        .entry(a.to_path_buf())
                        .or_insert_with(|| e.rel.clone());
                }
            }
        }
        for e in &mut entries {
            let inner = folder_of(e).and_then(|f| holders.get(&f));
            if let (None, Some(inner)) = (&e.problem, inner) {
                e.problem = Some(Error::OutputHoldsOther {
                    output: folder_of(e).unwrap_or_else(|| e.output.clone()),
                    inner: inner.clone(),
                });
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `.npz` fixture's bytes do not matter to discovery, which goes by name (and, for msgpack, by the
    /// first bytes); a msgpack map keyed by a string is the least a msgpack checkpoint starts with.
    const MSGPACK_HEAD: &[u8] = b"\x81\xa6params\x80";

    fn touch(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    #[test]
    fn finds_npz_and_msgpack_in_path_order_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(root, "z.npz", b"12345");
        touch(root, "b/a.NPZ", b"1");
        touch(root, "a/deep/er/x.npz", b"");
        touch(root, "m/flax.msgpack", MSGPACK_HEAD);
        touch(root, "m/checkpoint_100", MSGPACK_HEAD);
        // Names alone do not make a msgpack checkpoint; nor do other extensions.
        touch(root, "m/checkpoint_200", b"plain text");
        touch(root, "m/checkpoint_x", MSGPACK_HEAD);
        touch(root, "notes.txt", b"x");
        touch(root, "model.safetensors", b"x");
        touch(root, "a/npz", b"x");
        let found = find_sources(root, None, false);
        assert!(found.unreadable.is_empty(), "{:?}", found.unreadable);
        let names: Vec<(String, u64)> = found
            .sources
            .iter()
            .map(|(p, s)| (p.to_string_lossy().into_owned(), *s))
            .collect();
        let want = [
            ("a/deep/er/x.npz", 0),
            ("b/a.NPZ", 1),
            ("m/checkpoint_100", MSGPACK_HEAD.len() as u64),
            ("m/flax.msgpack", MSGPACK_HEAD.len() as u64),
            ("z.npz", 5),
        ];
        let want: Vec<(String, u64)> = want.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        assert_eq!(names, want);
        // The same tree gives the same list, whatever order the directory lists its entries in.
        assert_eq!(find_sources(root, None, false).sources, found.sources);
    }

    #[test]
    fn the_output_directory_inside_the_source_is_not_entered() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "a.npz", b"");
        touch(dir.path(), "out/b.npz", b"");
        let skip = std::fs::canonicalize(dir.path().join("out")).unwrap();
        let found = find_sources(dir.path(), Some(&skip), false);
        assert_eq!(found.sources, [(PathBuf::from("a.npz"), 0)]);
    }

    #[test]
    fn outputs_keep_the_relative_path_and_clashes_are_problems() {
        let out = Path::new("/out");
        assert_eq!(
            output_rel(Path::new("a/b.npz"), Some("pt")),
            Path::new("a/b.pt")
        );
        assert_eq!(
            output_rel(Path::new("ckpt.v2"), Some("safetensors")),
            Path::new("ckpt.v2.safetensors")
        );
        assert_eq!(output_rel(Path::new("a/b.msgpack"), None), Path::new("a/b"));
        let found = vec![
            (PathBuf::from("x.NPZ"), 1),
            (PathBuf::from("x.npz"), 1),
            (PathBuf::from("y.npz"), 1),
        ];
        let entries = plan(found, out, Some("safetensors"), false);
        assert!(entries[0].problem.is_none());
        assert!(matches!(
            &entries[1].problem,
            Some(Error::OutputCollision { other, .. }) if other == Path::new("x.NPZ")
        ));
        assert!(entries[2].problem.is_none());
        // A directory per checkpoint: `a.npz`'s output `a/` would hold `a/b.npz`'s.
        let found = vec![(PathBuf::from("a.npz"), 1), (PathBuf::from("a/b.npz"), 1)];
        let entries = plan(found, out, None, false);
        assert!(matches!(
            &entries[0].problem,
            Some(Error::OutputHoldsOther { inner, .. }) if inner == Path::new("a/b.npz")
        ));
        assert!(entries[1].problem.is_none());
        // Files, but a layout that writes a two-tower model as a folder: `a.npz` may become `a/`, which would
        // hold `a/b.npz`'s file; without that layout the two files live side by side.
        let found = || vec![(PathBuf::from("a.npz"), 1), (PathBuf::from("a/b.npz"), 1)];
        let entries = plan(found(), out, Some("safetensors"), true);
        assert!(matches!(
            &entries[0].problem,
            Some(Error::OutputHoldsOther { output, inner }) if inner == Path::new("a/b.npz") && output == Path::new("/out/a")
        ));
        assert!(entries[1].problem.is_none());
        let entries = plan(found(), out, Some("safetensors"), false);
        assert!(entries.iter().all(|e| e.problem.is_none()));
    }

    #[test]
    fn a_name_that_is_not_utf8_is_refused_not_keyed_lossily() {
        use std::os::unix::ffi::OsStrExt as _;
        let a = PathBuf::from(std::ffi::OsStr::from_bytes(b"m\xff.npz"));
        let b = PathBuf::from(std::ffi::OsStr::from_bytes(b"m\xfe.npz"));
        let entries = plan(vec![(a, 1), (b, 1)], Path::new("/out"), Some("pt"), false);
        assert!(entries
            .iter()
            .all(|e| matches!(e.problem, Some(Error::NonUtf8Name { .. }))));
    }

    #[test]
    fn a_dangling_link_named_like_a_checkpoint_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone.npz"), dir.path().join("m.npz")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("notes.txt")).unwrap();
        let found = find_sources(dir.path(), None, false);
        assert!(found.sources.is_empty());
        assert_eq!(found.unreadable.len(), 1);
        assert!(matches!(
            &found.unreadable[0],
            (rel, Error::DanglingLink { .. }) if rel == Path::new("m.npz")
        ));
    }
}
