//! Checkpoint folders as JAX training leaves them: big_vision `checkpoint.bv-<step>` folders (TensorStore
//! zarr v2, one folder per array) and Orbax step directories (per-array zarr folders, or an OCDBT store of
//! zarr v2 or v3 arrays), found from what a user points at, read into named tensors whose bytes stay on disk.
//!
//! Layouts relied on (big_vision `utils.py` `save_checkpoint_ts`/`load_checkpoint_ts`, Orbax's
//! `PyTreeCheckpointHandler` and its `_METADATA`, as the golden containers in `shared/golden-containers`
//! show them):
//! - big_vision names each array's folder by its tree path with `/` replaced by `~`, and writes
//!   `checkpoint.bv-LAST` holding the newest step's suffix (`000000100`, or `000000250-tmp` where the step
//!   was saved with `keep=False`); the folder is `checkpoint.bv-<suffix>`.
//! - Orbax's `_METADATA` lists every leaf's key tuple and value type; an array's name in its store is the
//!   keys joined with `.`, and the tensor is named by the keys joined with `/`, which is the `.npz` key the
//!   source families read. Leaves of type `None` (an optax `EmptyState`) hold nothing.
//! - A folder of Orbax steps (`checkpoint_100/`, `100/`) is read at its newest complete step: one with
//!   `commit_success.txt` or `_CHECKPOINT_METADATA`, not a `*.orbax-checkpoint-tmp-*` folder.
//!
//! Every file read inside a checkpoint goes through [`Guard`]: it must be a regular file (never a FIFO or
//! a device) and must resolve inside the checkpoint folder, so a planted link cannot make vitconv read
//! elsewhere.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::grid::Stored;
use crate::guard::{list_dir, Guard};
use crate::source::{Base, Layout, Location};
use crate::zarr::{ChunkStore, FolderStore};
use crate::{Error, Result, TensorInfo};

/// Most bytes of a small metadata file (`checkpoint.bv-LAST`, `_CHECKPOINT_METADATA`).
const MAX_SMALL_FILE: u64 = 64 << 10;

/// Most bytes of Orbax's `_METADATA`: a tree of tens of thousands of leaves takes a few megabytes.
const MAX_TREE_METADATA: u64 = 256 << 20;

/// Most arrays one checkpoint may hold.
const MAX_ARRAYS: usize = 1 << 20;

/// What a checkpoint folder is and how it was found, for reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointInfo {
    /// The kind of folder, in words (`big_vision .bv (zarr v2)`, `Orbax (OCDBT, zarr v3)`, ...).
    pub kind: String,
    /// The step folder read.
    pub folder: PathBuf,
    /// The step, where the folder's name or metadata gives one.
    pub step: Option<String>,
    /// How the step folder was chosen from what the user named, if it was not named itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    /// Chunks stored, over every array.
    pub chunks: u64,
    /// Arrays with chunks that are not stored (read as the fill value), and how many chunks each misses.
    pub missing_chunks: Vec<(String, u64)>,
}

/// A checkpoint folder's tensors, ready for a `TensorFile`.
pub(crate) struct Opened {
    pub tensors: Vec<TensorInfo>,
    pub locations: Vec<Location>,
    pub others: Vec<String>,
    pub info: CheckpointInfo,
    pub budget: u64,
    /// A handle on the step folder, held while the file is open.
    pub handle: File,
}

/// Whether `path` names a big_vision checkpoint: a `*-LAST` file, a workdir holding one, or a step folder
/// of `~`-named array folders.
///
/// A `-LAST` file that names no usable folder still claims the input, so that opening it says what is wrong.
pub(crate) fn is_big_vision(path: &Path) -> bool {
    !matches!(resolve_big_vision(path), Ok(None))
}

/// Whether `path` names an Orbax checkpoint: a step folder, or a folder of steps.
pub(crate) fn is_orbax(path: &Path) -> bool {
    resolve_orbax(path).is_ok_and(|r| r.is_some())
}

/// The `-LAST` file in `dir`, if there is exactly one.
fn last_file(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = list_dir(dir)?;
    let lasts: Vec<&String> = entries
        .iter()
        .filter(|(n, k)| n.ends_with(".bv-LAST") && !k.is_dir())
        .map(|(n, _)| n)
        .collect();
    Ok(match lasts.as_slice() {
        [one] => Some(dir.join(one)),
        _ => None,
    })
}

/// The step folder a big_vision path names, and how it was chosen.
fn resolve_big_vision(path: &Path) -> Result<Option<(PathBuf, Option<String>)>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let last = if meta.is_file() {
        path.file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with("-LAST"))
            .map(|_| path.to_path_buf())
    } else if meta.is_dir() {
        if path.join("_METADATA").exists() || path.join("_CHECKPOINT_METADATA").exists() {
            return Ok(None);
        }
        match last_file(path)? {
            Some(l) => Some(l),
            None => {
                // A step folder itself: array folders named with `~` that hold a `.zarray`.
                let entries = list_dir(path)?;
                let arrays = entries
                    .iter()
                    .any(|(n, k)| k.is_dir() && path.join(n).join(".zarray").is_file());
                let named = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains(".bv-"));
                return Ok(
                    (arrays && (named || entries.iter().any(|(n, _)| n.contains('~'))))
                        .then(|| (path.to_path_buf(), None)),
                );
            }
        }
    } else {
        None
    };
    let Some(last) = last else { return Ok(None) };
    let dir = last.parent().unwrap_or(Path::new("."));
    let guard = Guard::new(dir)?;
    let text = guard.read_small(&last, MAX_SMALL_FILE)?;
    let text = String::from_utf8(text).map_err(|_| Error::CheckpointMetadata {
        path: last.clone(),
        what: "not UTF-8 text".into(),
    })?;
    let step = text.trim();
    if step.is_empty() || step.contains(['/', '\\']) || step.contains("..") {
        return Err(Error::CheckpointMetadata {
            path: last.clone(),
            what: format!("names no step folder ({step:?})"),
        });
    }
    let name = last
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix("LAST"))
        .unwrap_or("checkpoint.bv-");
    let folder = dir.join(format!("{name}{step}"));
    if folder.exists() {
        guard.check_inside(&folder)?;
    }
    if !folder.is_dir() {
        return Err(Error::CheckpointMetadata {
            path: last.clone(),
            what: format!(
                "names step {step:?}, but {} is not a folder",
                folder.display()
            ),
        });
    }
    Ok(Some((
        folder,
        Some(format!("the step {} names", last.display())),
    )))
}

/// The step a folder's name gives (`checkpoint.bv-000000100` → `000000100`, `checkpoint_100` → `100`).
fn step_of(folder: &Path) -> Option<String> {
    // big_vision's `keep=False` steps end in `-tmp` (`checkpoint.bv-000000250-tmp`): the step comes before it.
    let name = folder.file_name()?.to_str()?;
    let name = name.strip_suffix("-tmp").unwrap_or(name);
    let tail = name.rsplit(['-', '_']).next()?;
    (!tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit())).then(|| tail.to_string())
}

/// Opens a big_vision checkpoint.
pub(crate) fn open_big_vision(path: &Path) -> Result<Opened> {
    let (folder, chosen) = resolve_big_vision(path)?.ok_or_else(|| Error::NotACheckpoint {
        path: path.to_path_buf(),
        found: "no checkpoint.bv-LAST and no ~-named array folders".into(),
    })?;
    let guard = Guard::new(&folder)?;
    let mut arrays = Vec::new();
    for (name, kind) in guard.list(&folder)? {
        if !kind.is_dir() && !kind.is_symlink() {
            continue;
        }
        let dir = folder.join(&name);
        if !dir.join(".zarray").exists() {
            continue;
        }
        arrays.push((name.replace('~', "/"), dir));
    }
    if arrays.is_empty() {
        return Err(Error::NotACheckpoint {
            path: folder,
            found: "no array folder with a .zarray".into(),
        });
    }
    let mut b = Builder::default();
    for (name, dir) in arrays {
        let meta = dir.join(".zarray");
        let text = guard.read_small(&meta, crate::zarr::MAX_METADATA_BYTES)?;
        let store = FolderStore {
            dir: dir.clone(),
            guard: &guard,
        };
        b.push(crate::zarr::read_v2(
            &meta,
            &name,
            &text,
            &store,
            b.next_id(),
        )?)?;
    }
    let step = step_of(&folder);
    b.finish(
        "big_vision .bv (TensorStore zarr v2)",
        &folder,
        step,
        chosen,
        &guard,
    )
}

/// Collects arrays into a checkpoint's tensors and locations.
#[derive(Default)]
struct Builder {
    tensors: Vec<TensorInfo>,
    locations: Vec<Location>,
    others: Vec<String>,
    chunks: u64,
    missing: Vec<(String, u64)>,
}

impl Builder {
    /// An id for the next grid, distinct from every file offset (see `Base::offset`).
    fn next_id(&self) -> u64 {
        u64::MAX.saturating_sub(self.tensors.len() as u64)
    }

    fn push(&mut self, array: crate::zarr::Array) -> Result<()> {
        if self.tensors.len() >= MAX_ARRAYS {
            return Err(Error::CheckpointMetadata {
                path: PathBuf::new(),
                what: format!("more than {MAX_ARRAYS} arrays"),
            });
        }
        let missing = array.grid.missing() as u64;
        self.chunks = self
            .chunks
            .saturating_add((array.grid.chunks.len() as u64).saturating_sub(missing));
        if missing > 0 {
            self.missing.push((array.info.name.clone(), missing));
        }
        self.tensors.push(array.info);
        self.locations.push(Location {
            base: Base::Chunks(Arc::new(array.grid)),
            start: 0,
            layout: Layout::C,
            byteswap: array.byteswap,
            crc: None,
        });
        Ok(())
    }

    fn finish(
        self,
        kind: &str,
        folder: &Path,
        step: Option<String>,
        chosen: Option<String>,
        guard: &Guard,
    ) -> Result<Opened> {
        let handle = File::open(folder).map_err(|e| Error::io(folder, e))?;
        Ok(Opened {
            tensors: self.tensors,
            locations: self.locations,
            others: self.others,
            info: CheckpointInfo {
                kind: kind.to_string(),
                folder: folder.to_path_buf(),
                step,
                chosen,
                chunks: self.chunks,
                missing_chunks: self.missing,
            },
            budget: guard.opened_bytes(),
            handle,
        })
    }
}

/// Whether a metadata file named `path` is there, as anything but a folder: a FIFO, a device or a link to one
/// still claims the checkpoint, so that opening it refuses that file by name (through [`Guard::read_small`])
/// rather than saying the folder is no checkpoint.
fn has_metadata_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok() && !path.is_dir()
}

/// Whether `dir` is one Orbax step: `_METADATA` in it, or (the v1 layout) `_CHECKPOINT_METADATA` beside item
/// folders that hold `_METADATA`.
fn is_orbax_step(dir: &Path) -> bool {
    has_metadata_file(&dir.join("_METADATA"))
        || (dir.join("_CHECKPOINT_METADATA").is_file() && !item_dirs(dir).is_empty())
}

/// The item folders of a v1 Orbax step (`state/`): folders holding `_METADATA`.
fn item_dirs(dir: &Path) -> Vec<String> {
    list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|(n, k)| k.is_dir() && has_metadata_file(&dir.join(n).join("_METADATA")))
        .map(|(n, _)| n)
        .collect()
}

/// Whether `dir` is one Orbax step: its step number (from its name) and whether it was committed.
pub(crate) fn orbax_step(dir: &Path) -> Option<(Option<u64>, bool)> {
    if !dir.is_dir() || !is_orbax_step(dir) {
        return None;
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let step = step_of(dir).and_then(|s| s.parse::<u64>().ok());
    let complete = !name.contains("tmp")
        && (dir.join("commit_success.txt").is_file() || dir.join("_CHECKPOINT_METADATA").is_file());
    Some((step, complete))
}

/// The Orbax step folder a path names, and how it was chosen.
fn resolve_orbax(path: &Path) -> Result<Option<(PathBuf, Option<String>)>> {
    if !std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .is_dir()
    {
        return Ok(None);
    }
    if is_orbax_step(path) {
        return Ok(Some((path.to_path_buf(), None)));
    }
    // A folder of steps: the newest complete one.
    let mut steps: Vec<(u64, String)> = Vec::new();
    let mut incomplete = 0usize;
    for (name, kind) in list_dir(path)? {
        if !kind.is_dir() {
            continue;
        }
        let Some(step) = step_of(Path::new(&name)).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let dir = path.join(&name);
        if !is_orbax_step(&dir) {
            continue;
        }
        let complete = !name.contains("tmp")
            && (dir.join("commit_success.txt").is_file()
                || dir.join("_CHECKPOINT_METADATA").is_file());
        if complete {
            steps.push((step, name));
        } else {
            incomplete = incomplete.saturating_add(1);
        }
    }
    let count = steps.len();
    let Some((_, newest)) = steps.into_iter().max() else {
        return Ok(None);
    };
    let skipped = if incomplete > 0 {
        format!(", {incomplete} incomplete left aside")
    } else {
        String::new()
    };
    let folder = path.join(&newest);
    Guard::new(path)?.check_inside(&folder)?;
    Ok(Some((
        folder,
        Some(format!("the newest complete of {count} steps{skipped}")),
    )))
}

/// One leaf of Orbax's tree metadata: its keys, and whether it holds an array to read.
struct OrbaxLeaf {
    keys: Vec<String>,
    value_type: String,
}

/// Reads `_METADATA`'s `tree_metadata` and its flags.
fn orbax_tree(guard: &Guard, meta: &Path) -> Result<(Vec<OrbaxLeaf>, bool, bool)> {
    let text = guard.read_small(meta, MAX_TREE_METADATA)?;
    let bad = |what: &str| Error::CheckpointMetadata {
        path: meta.to_path_buf(),
        what: what.to_string(),
    };
    let doc: Value = serde_json::from_slice(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let tree = doc
        .get("tree_metadata")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no tree_metadata object"))?;
    if tree.len() > MAX_ARRAYS {
        return Err(bad(&format!("more than {MAX_ARRAYS} leaves")));
    }
    let mut leaves = Vec::with_capacity(tree.len());
    for (tuple, leaf) in tree {
        let keys = leaf
            .get("key_metadata")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(&format!("leaf {tuple} has no key_metadata list")))?
            .iter()
            .map(|k| match k.get("key") {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                _ => Err(bad(&format!("leaf {tuple} has a key that is not a string"))),
            })
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() || keys.iter().any(|k| k.is_empty() || k.contains('/')) {
            return Err(bad(&format!(
                "leaf {tuple} has an empty key or one holding '/'"
            )));
        }
        let value_type = leaf
            .get("value_metadata")
            .and_then(|v| v.get("value_type"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        leaves.push(OrbaxLeaf { keys, value_type });
    }
    let flag = |k: &str| doc.get(k).and_then(Value::as_bool).unwrap_or(false);
    Ok((leaves, flag("use_ocdbt"), flag("use_zarr3")))
}

/// Opens an Orbax checkpoint.
pub(crate) fn open_orbax(path: &Path) -> Result<Opened> {
    let (step_dir, chosen) = resolve_orbax(path)?.ok_or_else(|| Error::NotACheckpoint {
        path: path.to_path_buf(),
        found: "no _METADATA and no complete Orbax step folder".into(),
    })?;
    // The v0 layout keeps the tree in the step folder; v1 in one folder per item (`state/`).
    let items: Vec<(Option<String>, PathBuf)> = if has_metadata_file(&step_dir.join("_METADATA")) {
        vec![(None, step_dir.clone())]
    } else {
        let names = item_dirs(&step_dir);
        let single = names.len() == 1;
        names
            .into_iter()
            .map(|n| {
                let dir = step_dir.join(&n);
                ((!single).then_some(n), dir)
            })
            .collect()
    };
    let guard = Guard::new(&step_dir)?;
    let mut b = Builder::default();
    let mut kinds = Vec::new();
    for (item, dir) in items {
        let (leaves, use_ocdbt, zarr3) = orbax_tree(&guard, &dir.join("_METADATA"))?;
        let store = if use_ocdbt || crate::ocdbt::is_store(&dir) {
            Some(OcdbtChunks::open(&dir, &guard)?)
        } else {
            None
        };
        kinds.push(format!(
            "{}{}",
            if store.is_some() { "OCDBT, " } else { "" },
            if zarr3 { "zarr v3" } else { "zarr v2" }
        ));
        for leaf in leaves {
            let mut name = leaf.keys.join("/");
            if let Some(item) = &item {
                name = format!("{item}/{name}");
            }
            let stored_name = leaf.keys.join(".");
            match leaf.value_type.as_str() {
                "None" => continue,
                "jax.Array" | "np.ndarray" | "scalar" | "" => {}
                other => {
                    b.others.push(format!("{name} ({other})"));
                    continue;
                }
            }
            let meta_key = if zarr3 { "zarr.json" } else { ".zarray" };
            let array = match &store {
                Some(s) => {
                    let prefixed = s.prefixed(&stored_name);
                    let key = format!("{stored_name}/{meta_key}");
                    let text = s.value(&key)?.ok_or_else(|| Error::CheckpointMetadata {
                        path: dir.join("manifest.ocdbt"),
                        what: format!("_METADATA lists {name}, but the store holds no {key}"),
                    })?;
                    let meta_path = dir.join("manifest.ocdbt");
                    if zarr3 {
                        crate::zarr::read_v3(&meta_path, &name, &text, &prefixed, b.next_id())?
                    } else {
                        crate::zarr::read_v2(&meta_path, &name, &text, &prefixed, b.next_id())?
                    }
                }
                None => {
                    let adir = dir.join(&stored_name);
                    let meta = adir.join(meta_key);
                    let text = guard.read_small(&meta, crate::zarr::MAX_METADATA_BYTES)?;
                    let fs = FolderStore {
                        dir: adir,
                        guard: &guard,
                    };
                    if zarr3 {
                        crate::zarr::read_v3(&meta, &name, &text, &fs, b.next_id())?
                    } else {
                        crate::zarr::read_v2(&meta, &name, &text, &fs, b.next_id())?
                    }
                }
            };
            b.push(array)?;
        }
    }
    kinds.dedup();
    let step = step_of(&step_dir);
    b.finish(
        &format!("Orbax ({})", kinds.join("; ")),
        &step_dir,
        step,
        chosen,
        &guard,
    )
}

/// An OCDBT store's values, with the data files it refers to opened once each.
struct OcdbtChunks<'g> {
    root: PathBuf,
    entries: Vec<crate::ocdbt::Entry>,
    files: Mutex<HashMap<PathBuf, Arc<File>>>,
    guard: &'g Guard,
}

impl<'g> OcdbtChunks<'g> {
    fn open(dir: &Path, guard: &'g Guard) -> Result<OcdbtChunks<'g>> {
        let store = crate::ocdbt::open(dir)?;
        Ok(OcdbtChunks {
            root: dir.to_path_buf(),
            entries: store.entries,
            files: Mutex::new(HashMap::new()),
            guard,
        })
    }

    fn find(&self, key: &str) -> Option<&crate::ocdbt::Entry> {
        self.entries
            .binary_search_by(|e| e.key.as_slice().cmp(key.as_bytes()))
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    /// The whole value of `key`, read into memory (metadata only: bounded).
    fn value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let Some(entry) = self.find(key) else {
            return Ok(None);
        };
        match &entry.value {
            crate::ocdbt::Value::Inline(v) => Ok(Some(v.clone())),
            crate::ocdbt::Value::External {
                file,
                offset,
                length,
            } => {
                if *length > crate::zarr::MAX_METADATA_BYTES {
                    return Err(Error::CheckpointMetadata {
                        path: file.clone(),
                        what: format!("value {key} is {length} bytes, more than metadata may be"),
                    });
                }
                let f = self.file(file)?;
                let mut buf = vec![0u8; usize::try_from(*length).unwrap_or(0)];
                crate::source::read_exact_at(&f, &mut buf, *offset)
                    .map_err(|e| crate::source::read_error(file, key, *offset, *length, e))?;
                Ok(Some(buf))
            }
        }
    }

    fn file(&self, path: &Path) -> Result<Arc<File>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(path) {
            return Ok(Arc::clone(f));
        }
        let (file, _) = self
            .guard
            .open_if_exists(path)?
            .ok_or_else(|| Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)))?;
        let file = Arc::new(file);
        files.insert(path.to_path_buf(), Arc::clone(&file));
        Ok(file)
    }

    /// A chunk store over the keys under `name/`.
    fn prefixed<'s>(&'s self, name: &str) -> Prefixed<'s, 'g> {
        Prefixed {
            store: self,
            prefix: format!("{name}/"),
        }
    }
}

/// The keys of an OCDBT store under one array's prefix.
struct Prefixed<'s, 'g> {
    store: &'s OcdbtChunks<'g>,
    prefix: String,
}

impl ChunkStore for Prefixed<'_, '_> {
    fn get(&self, key: &str) -> Result<Option<(Stored, PathBuf)>> {
        let full = format!("{}{key}", self.prefix);
        let Some(entry) = self.store.find(&full) else {
            return Ok(None);
        };
        Ok(Some(match &entry.value {
            crate::ocdbt::Value::Inline(v) => (
                Stored::Inline {
                    data: Arc::from(v.as_slice()),
                    offset: 0,
                    len: v.len(),
                },
                self.store.root.join("manifest.ocdbt"),
            ),
            crate::ocdbt::Value::External {
                file,
                offset,
                length,
            } => {
                let f = self.store.file(file)?;
                let flen = f.metadata().map_err(|e| Error::io(file, e))?.len();
                if offset.checked_add(*length).is_none_or(|end| end > flen) {
                    return Err(Error::truncated(
                        file,
                        &full,
                        *offset,
                        *length,
                        flen.saturating_sub(*offset),
                    ));
                }
                (
                    Stored::File {
                        file: f,
                        path: Arc::new(file.clone()),
                        offset: *offset,
                        len: *length,
                    },
                    file.clone(),
                )
            }
        }))
    }
}
