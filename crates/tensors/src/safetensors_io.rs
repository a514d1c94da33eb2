//! `.safetensors` files: header parsing through the `safetensors` crate, data by positional reads.
//!
//! Spec: <https://github.com/huggingface/safetensors#format>. A file is a little-endian
//! u64 header length N, N bytes of JSON (`{name: {dtype, shape, data_offsets}, "__metadata__": {..}}`),
//! then the data section. The header is read with one bounded read and validated by the
//! `safetensors` crate's own `Metadata` (offsets contiguous, sizes matching shapes); the
//! data is then read with positional reads instead of a memory map, because a memory map
//! of a file truncated behind our back turns a read into SIGBUS.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use safetensors::tensor::Metadata;
use safetensors::Dtype;

use crate::source::{read_exact_at, Base, Layout, Location};
use crate::{DType, Error, Result, TensorInfo};

/// Largest header accepted; the same limit as the `safetensors` crate's `MAX_HEADER_SIZE`.
pub(crate) const MAX_HEADER_LEN: u64 = 100_000_000;

/// Length of the header-size prefix.
const PREFIX: u64 = 8;

/// Maps a safetensors dtype to ours.
fn dtype_of(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

/// Maps our dtype to safetensors'.
pub(crate) fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
    }
}

/// Whether the first bytes look like a safetensors header (a plausible length, then `{`).
pub(crate) fn sniff(head: &[u8]) -> bool {
    let (Some(len), Some(&brace)) = (head.get(..8), head.get(8)) else {
        return false;
    };
    let mut b = [0u8; 8];
    b.copy_from_slice(len);
    let n = u64::from_le_bytes(b);
    brace == b'{' && (2..=MAX_HEADER_LEN).contains(&n)
}

/// The first key found twice in one JSON object, anywhere in a document (tensor names at the
/// top, `__metadata__` keys below); `None` when every object's keys are distinct.
struct Duplicates(Option<String>);

impl<'de> serde::Deserialize<'de> for Duplicates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(DuplicatesVisitor)
    }
}

/// Walks any JSON value for [`Duplicates`], keeping nothing but the keys of the object being read.
struct DuplicatesVisitor;

impl<'de> serde::de::Visitor<'de> for DuplicatesVisitor {
    type Value = Duplicates;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Duplicates, A::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut first = None;
        while let Some(key) = map.next_key::<String>()? {
            let Duplicates(inner) = map.next_value()?;
            if first.is_none() {
                first = inner.or_else(|| (!seen.insert(key.clone())).then_some(key));
            }
        }
        Ok(Duplicates(first))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Duplicates, A::Error> {
        let mut first = None;
        while let Some(Duplicates(inner)) = seq.next_element()? {
            first = first.or(inner);
        }
        Ok(Duplicates(first))
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<Duplicates, E> {
        Ok(Duplicates(None))
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Duplicates, E> {
        Ok(Duplicates(None))
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Duplicates, E> {
        Ok(Duplicates(None))
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Duplicates, E> {
        Ok(Duplicates(None))
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Duplicates, E> {
        Ok(Duplicates(None))
    }
    fn visit_unit<E>(self) -> std::result::Result<Duplicates, E> {
        Ok(Duplicates(None))
    }
}

/// What opening a safetensors file yields.
pub(crate) struct Opened {
    pub infos: Vec<TensorInfo>,
    pub locs: Vec<Location>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads and validates the header; tensors come out in data-offset order.
pub(crate) fn open(path: &Path, file: &File, file_len: u64) -> Result<Opened> {
    let bad = |detail: String| Error::Safetensors {
        path: path.to_path_buf(),
        detail,
    };
    if file_len < PREFIX {
        return Err(Error::truncated(path, "", 0, PREFIX, file_len));
    }
    let mut b = [0u8; 8];
    read_exact_at(file, &mut b, 0).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(b);
    if n > MAX_HEADER_LEN {
        return Err(bad(format!(
            "header of {n} bytes exceeds the {MAX_HEADER_LEN}-byte limit"
        )));
    }
    // `n` was just bounded by `MAX_HEADER_LEN`, so this cannot saturate.
    let header_end = PREFIX.saturating_add(n);
    if header_end > file_len {
        return Err(Error::truncated(
            path,
            "",
            PREFIX,
            n,
            file_len.saturating_sub(PREFIX),
        ));
    }
    // `n` is now bounded by both the limit and the bytes present.
    let mut header = vec![0u8; usize::try_from(n).map_err(|_| bad("header too large".into()))?];
    read_exact_at(file, &mut header, PREFIX).map_err(|e| Error::io(path, e))?;
    // serde keeps the last of a repeated key; a header that names a tensor twice is refused.
    if let Ok(Duplicates(Some(key))) = serde_json::from_slice::<Duplicates>(&header) {
        return Err(Error::DuplicateKey {
            path: path.to_path_buf(),
            tensor: String::new(),
            format: "safetensors",
            key,
        });
    }
    let meta: Metadata = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    // The text is parsed: free it before the directory is built (a 100 000-tensor header is 7 MB).
    drop(header);
    let data_len = meta.data_len() as u64;
    let needed = header_end.saturating_add(data_len);
    if needed > file_len {
        return Err(Error::truncated(
            path,
            "",
            header_end,
            data_len,
            file_len.saturating_sub(header_end),
        ));
    }
    if needed < file_len {
        return Err(bad(format!(
            "{} bytes after the last tensor's data (the header describes {needed} bytes, the file has {file_len})",
            file_len.saturating_sub(needed)
        )));
    }
    let keys = meta.offset_keys();
    let mut infos = Vec::with_capacity(keys.len());
    let mut locs = Vec::with_capacity(keys.len());
    for name in keys {
        let Some(ti) = meta.info(&name) else { continue };
        let dtype = dtype_of(ti.dtype).ok_or_else(|| Error::UnknownDType {
            path: path.to_path_buf(),
            tensor: name.clone(),
            descr: ti.dtype.to_string(),
        })?;
        let (start, end) = ti.data_offsets;
        let offset = header_end.saturating_add(start as u64);
        let len = (end as u64).saturating_sub(start as u64);
        locs.push(Location {
            base: Base::Stored { offset, len },
            start: 0,
            layout: Layout::C,
            byteswap: false,
            // safetensors has no checksum to verify.
            crc: None,
        });
        infos.push(TensorInfo {
            name,
            dtype,
            shape: ti.shape.clone(),
            stored_as: None,
        });
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(Opened {
        infos,
        locs,
        metadata,
    })
}

/// Builds the header bytes (length prefix included) for tensors written in `specs` order.
pub(crate) fn header_bytes(
    path: &Path,
    specs: &[crate::TensorSpec],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut offset = 0usize;
    let mut tensors = Vec::with_capacity(specs.len());
    for spec in specs {
        let n = spec
            .shape
            .iter()
            .try_fold(spec.dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::shape_overflow(path, &spec.name, &spec.shape))?;
        let end = offset
            .checked_add(n)
            .ok_or_else(|| Error::shape_overflow(path, &spec.name, &spec.shape))?;
        tensors.push((
            spec.name.clone(),
            safetensors::tensor::TensorInfo {
                dtype: st_dtype(spec.dtype),
                shape: spec.shape.clone(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    let meta_map = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    let invalid = |found: String| Error::Writer {
        path: path.to_path_buf(),
        tensor: String::new(),
        expected: "a valid safetensors header".into(),
        found,
    };
    // Built only to validate the header the way every reader will.
    Metadata::new(meta_map, tensors.clone()).map_err(|e| invalid(e.to_string()))?;
    // Serialised here rather than by `Metadata`, which keeps the metadata in a `HashMap` and so would write
    // its keys in a different order on every run: the same conversion must give the same bytes. Metadata
    // first, keys sorted, then the tensors in file order.
    let json_err = |e: serde_json::Error| invalid(e.to_string());
    let mut json = b"{".to_vec();
    if !metadata.is_empty() {
        json.extend_from_slice(b"\"__metadata__\":");
        serde_json::to_writer(&mut json, metadata).map_err(json_err)?;
    }
    for (name, info) in &tensors {
        if json.len() > 1 {
            json.push(b',');
        }
        serde_json::to_writer(&mut json, name).map_err(json_err)?;
        json.push(b':');
        serde_json::to_writer(&mut json, info).map_err(json_err)?;
    }
    json.push(b'}');
    // The spec recommends padding the header with spaces so the data starts 8-aligned.
    // The header's length is that of JSON held in memory, far below `usize::MAX`.
    json.resize(json.len().div_ceil(8).saturating_mul(8), b' ');
    let mut out = Vec::with_capacity(json.len().saturating_add(8));
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}
