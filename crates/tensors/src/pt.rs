//! PyTorch `.pt` archives (the zip format `torch.save` writes since 1.6): reading, and the record layout for writing.
//!
//! Spec: PyTorch's `torch/serialization.py` (`_save`, `_load`) and
//! `caffe2/serialize/inline_container.h` (the archive layout). An archive holds, under one
//! prefix directory: `data.pkl` (the pickled object; storages appear as persistent ids
//! `('storage', StorageClass, key, location, numel)`), `data/<key>` (each storage's raw
//! bytes), `byteorder` (`little` or `big`; absent in files from before torch 1.10, which
//! were little-endian) and `version`. vitconv adds one record of its own,
//! [`METADATA_RECORD`], a JSON object of strings that `torch.load` ignores.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::npz::ZipEntry;
use crate::pickle::{self, contiguous_strides};
use crate::source::{self, Base, Layout, Location, MemberCrc};
use crate::{Error, Result, TensorInfo};

/// The record, beside `data.pkl`, that holds vitconv's metadata map as a JSON object.
pub(crate) const METADATA_RECORD: &str = "vitconv_metadata.json";

/// The prefix directory vitconv writes its archives under (torch accepts any one prefix).
pub(crate) const ARCHIVE_PREFIX: &str = "archive/";

/// The `version` record torch 2.x writes (`kProducedFileFormatVersion`).
pub(crate) const VERSION_RECORD: &[u8] = b"3\n";

/// Largest `data.pkl` read; a state dict of thousands of tensors takes well under a megabyte.
const MAX_PICKLE_LEN: u64 = 256 * 1024 * 1024;

/// Most times a strided view may repeat its storage's bytes (through zero strides).
const MAX_VIEW_EXPANSION: u64 = 1024;

/// Largest metadata record read.
const MAX_METADATA_LEN: u64 = 16 * 1024 * 1024;

/// What opening a `.pt` archive yields.
pub(crate) struct Opened {
    pub infos: Vec<TensorInfo>,
    pub locs: Vec<Location>,
    pub metadata: BTreeMap<String, String>,
    /// Top-level entries of the pickle that hold no tensor, described briefly.
    pub others: Vec<String>,
}

/// Reads a whole small record, refusing one longer than `limit`.
fn read_record(path: &Path, file: &File, entry: &ZipEntry, limit: u64) -> Result<Vec<u8>> {
    let len = entry.base.len();
    if len > limit {
        return Err(Error::unsupported(
            path,
            "",
            format!(
                "record `{}` of {len} bytes exceeds the {limit}-byte limit",
                entry.name
            ),
        ));
    }
    let mut out = Vec::new();
    source::entry_reader(file, &entry.base, source::INFLATE_BUF)
        .read_to_end(&mut out)
        .map_err(|e| Error::zip(path, "", format!("reading record `{}`: {e}", entry.name)))?;
    if out.len() as u64 != len {
        return Err(Error::truncated(path, "", 0, len, out.len() as u64));
    }
    let found = crc32fast::hash(&out);
    if found != entry.crc32 {
        return Err(Error::Crc {
            path: path.to_path_buf(),
            tensor: String::new(),
            member: entry.name.clone(),
            expected: entry.crc32,
            found,
        });
    }
    Ok(out)
}

/// Opens a torch zip archive: unpickles `data.pkl` with the allowlist reader and maps each
/// tensor onto its storage record.
pub(crate) fn open(path: &Path, file: &File, entries: &[ZipEntry]) -> Result<Opened> {
    // The pickle sits at `<prefix>/data.pkl`. An archive with two of them has no one
    // meaning (torch reads the first it finds), so it is refused rather than guessed at.
    let mut pickles = entries.iter().filter(|e| e.name.ends_with("data.pkl"));
    let pkl = pickles.next().ok_or_else(|| Error::MissingRecord {
        path: path.to_path_buf(),
        tensor: String::new(),
        record: "data.pkl".into(),
    })?;
    if let Some(second) = pickles.next() {
        return Err(Error::TwoPickles {
            path: path.to_path_buf(),
            first: pkl.name.clone(),
            second: second.name.clone(),
        });
    }
    let prefix = pkl
        .name
        .strip_suffix("data.pkl")
        .unwrap_or_default()
        .to_string();
    let by_name: HashMap<&str, &ZipEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();

    let big_endian = match by_name.get(format!("{prefix}byteorder").as_str()) {
        Some(e) => match read_record(path, file, e, 16)?.as_slice() {
            b"little" => false,
            b"big" => true,
            other => {
                return Err(Error::unsupported(
                    path,
                    "",
                    format!("byteorder record {:?}", String::from_utf8_lossy(other)),
                ))
            }
        },
        None => false,
    };

    let metadata = match by_name.get(format!("{prefix}{METADATA_RECORD}").as_str()) {
        Some(e) => {
            let bytes = read_record(path, file, e, MAX_METADATA_LEN)?;
            serde_json::from_slice::<BTreeMap<String, String>>(&bytes).map_err(|err| {
                Error::unsupported(
                    path,
                    "",
                    format!("metadata record is not a JSON object of strings: {err}"),
                )
            })?
        }
        None => BTreeMap::new(),
    };

    let pickle_bytes = read_record(path, file, pkl, MAX_PICKLE_LEN)?;
    let pickle::StateDict { tensors, others } = pickle::read_pickle(path, &pickle_bytes)?;

    let mut infos = Vec::with_capacity(tensors.len());
    let mut locs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let record = format!("{prefix}data/{}", t.storage.key);
        let entry = by_name
            .get(record.as_str())
            .ok_or_else(|| Error::MissingRecord {
                path: path.to_path_buf(),
                tensor: name.clone(),
                record: record.clone(),
            })?;
        let elem = t.storage.dtype.size() as u64;
        let storage_bytes = t
            .storage
            .numel
            .checked_mul(elem)
            .ok_or_else(|| Error::shape_overflow(path, &name, &t.shape))?;
        let record_len = entry.base.len();
        if record_len < storage_bytes {
            return Err(Error::SizeMismatch {
                path: path.to_path_buf(),
                tensor: name,
                expected: storage_bytes,
                found: record_len,
            });
        }
        // The tensor may only see its storage, even if the record holds more.
        let base = match entry.base {
            Base::Stored { offset, .. } => Base::Stored {
                offset,
                len: storage_bytes,
            },
            Base::Deflate {
                offset,
                compressed_len,
                ..
            } => Base::Deflate {
                offset,
                compressed_len,
                len: storage_bytes,
            },
            // A zip directory gives stored and deflated members only.
            ref chunks @ Base::Chunks(_) => chunks.clone(),
        };
        let start = (t.offset as u64)
            .checked_mul(elem)
            .ok_or_else(|| Error::shape_overflow(path, &name, &t.shape))?;
        let layout = if t.strides == contiguous_strides(&t.shape)
            || t.shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_some_and(|n| n <= 1)
        {
            Layout::C
        } else {
            // A view with zero strides (`expand`) reads fewer bytes than it yields; bound
            // the expansion so a hostile pickle cannot turn a 4-byte storage into terabytes.
            let yields = t
                .shape
                .iter()
                .try_fold(elem, |a, &d| a.checked_mul(d as u64))
                .ok_or_else(|| Error::shape_overflow(path, &name, &t.shape))?;
            if yields > storage_bytes.max(elem).saturating_mul(MAX_VIEW_EXPANSION) {
                return Err(Error::unsupported(
                    path,
                    &name,
                    format!("a view expanding its {storage_bytes}-byte storage to {yields} bytes"),
                ));
            }
            Layout::Strided(t.strides.clone())
        };
        infos.push(TensorInfo {
            name,
            dtype: t.storage.dtype,
            shape: t.shape,
            stored_as: None,
        });
        locs.push(Location {
            base,
            start,
            layout,
            byteswap: big_endian,
            // Only a storage that fills its whole record can be checked against the record's CRC-32.
            crc: (record_len == storage_bytes).then(|| MemberCrc {
                member: entry.name.clone(),
                crc32: entry.crc32,
            }),
        });
    }
    Ok(Opened {
        infos,
        locs,
        metadata,
        others,
    })
}
