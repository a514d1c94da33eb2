//! zarr array metadata (v2 `.zarray`, v3 `zarr.json` with or without the `sharding_indexed` codec) as
//! TensorStore writes it for big_vision and Orbax, turned into a chunk [`Grid`] over a key-value store.
//!
//! What is read, and where it is documented: the zarr v2 spec (`shape`, `chunks`, `dtype`, `compressor`,
//! `fill_value`, `order`, `filters`, `dimension_separator`), TensorStore's zarr driver (the `"bfloat16"`
//! dtype extension, a missing chunk read as the fill value, zeros where `fill_value` is null), and the zarr
//! v3 spec with its sharding extension (a shard is a grid of inner chunks followed, or preceded, by an index
//! of `(offset, nbytes)` pairs as little-endian u64, all ones for an absent inner chunk, then a CRC-32C
//! where the index codecs say so). The codecs read are the ones jax and Orbax write: none, zstd, gzip and
//! zlib; anything else (blosc, filters, Fortran order, a transpose codec) is refused by name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::grid::{Chunk, Codec, Grid, Stored, MAX_CHUNKS};
use crate::{DType, Error, Result, TensorInfo};

/// Most bytes of one `.zarray` or `zarr.json`: real ones are a few hundred bytes.
pub(crate) const MAX_METADATA_BYTES: u64 = 1 << 20;

/// Most dimensions an array may have.
const MAX_RANK: usize = 32;

/// A key-value store holding one array's chunks (a folder, or a prefix of an OCDBT store).
pub(crate) trait ChunkStore {
    /// The stored bytes of `key` and the file to name in messages, if the store holds the key.
    fn get(&self, key: &str) -> Result<Option<(Stored, PathBuf)>>;
}

/// One array read from its metadata: its directory entry and its chunk grid.
pub(crate) struct Array {
    pub info: TensorInfo,
    pub grid: Grid,
    /// Whether the stored elements are big-endian.
    pub byteswap: bool,
}

fn field_error(
    path: &Path,
    tensor: &str,
    field: &'static str,
    expected: &'static str,
    found: &Value,
) -> Error {
    let mut found = found.to_string();
    if found.len() > 80 {
        let cut = (0..=80)
            .rev()
            .find(|&i| found.is_char_boundary(i))
            .unwrap_or(0);
        found.truncate(cut);
        found.push_str("...");
    }
    Error::ArrayMetadata {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        field,
        expected,
        found,
    }
}

/// Reads a list of non-negative integers (a shape or a chunk shape), at most [`MAX_RANK`] long.
fn dims(path: &Path, tensor: &str, field: &'static str, v: &Value) -> Result<Vec<usize>> {
    let bad = || {
        field_error(
            path,
            tensor,
            field,
            "a list of at most 32 non-negative integers",
            v,
        )
    };
    let list = v
        .as_array()
        .filter(|l| l.len() <= MAX_RANK)
        .ok_or_else(bad)?;
    list.iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(bad)
        })
        .collect()
}

/// The fill value's bytes for one element, little-endian: zeros for `null`.
fn fill_bytes(path: &Path, tensor: &str, dtype: DType, v: &Value) -> Result<Vec<u8>> {
    let bad = || {
        field_error(
            path,
            tensor,
            "fill_value",
            "null, a number, \"NaN\" or \"Infinity\"",
            v,
        )
    };
    if v.is_null() {
        return Ok(vec![0; dtype.size()]);
    }
    let as_f64 = match v {
        Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        Value::String(s) => match s.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => return Err(bad()),
        },
        Value::Bool(b) => f64::from(u8::from(*b)),
        _ => return Err(bad()),
    };
    let int = || {
        v.as_i64()
            .or_else(|| v.as_bool().map(i64::from))
            .ok_or_else(bad)
    };
    #[allow(clippy::cast_possible_truncation)]
    Ok(match dtype {
        DType::F64 => as_f64.to_le_bytes().to_vec(),
        DType::F32 => (as_f64 as f32).to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f64(as_f64).to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::from_f64(as_f64).to_le_bytes().to_vec(),
        DType::I64 => int()?.to_le_bytes().to_vec(),
        DType::I32 => i32::try_from(int()?)
            .map_err(|_| bad())?
            .to_le_bytes()
            .to_vec(),
        DType::I16 => i16::try_from(int()?)
            .map_err(|_| bad())?
            .to_le_bytes()
            .to_vec(),
        DType::I8 => i8::try_from(int()?)
            .map_err(|_| bad())?
            .to_le_bytes()
            .to_vec(),
        DType::U8 | DType::Bool => u8::try_from(int()?)
            .map_err(|_| bad())?
            .to_le_bytes()
            .to_vec(),
    })
}

/// Parses metadata text, which must be a JSON object.
fn parse_object(path: &Path, tensor: &str, text: &[u8]) -> Result<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(field_error(
            path,
            tensor,
            "(document)",
            "a JSON object",
            &other,
        )),
        Err(e) => Err(Error::ArrayMetadata {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            field: "(document)",
            expected: "JSON",
            found: e.to_string(),
        }),
    }
}

/// The grid's chunk count, checked against the limit before anything is allocated for it.
fn chunk_count(path: &Path, tensor: &str, shape: &[usize], chunks: &[usize]) -> Result<usize> {
    let bad = |found: u64| Error::ChunkGrid {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        what: "chunk count at most",
        expected: MAX_CHUNKS as u64,
        found,
    };
    if let Some(&c) = chunks.iter().find(|&&c| c == 0) {
        return Err(Error::ChunkGrid {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            what: "a chunk extent of at least",
            expected: 1,
            found: c as u64,
        });
    }
    let count = shape
        .iter()
        .zip(chunks)
        .fold(1u64, |a, (&s, &c)| a.saturating_mul(s.div_ceil(c) as u64));
    match usize::try_from(count) {
        Ok(n) if n <= MAX_CHUNKS => Ok(n),
        _ => Err(bad(count)),
    }
}

/// Every grid index in C order, as lists of per-axis indices.
fn grid_indices(shape: &[usize], chunks: &[usize]) -> impl Iterator<Item = Vec<usize>> {
    let dims: Vec<usize> = shape
        .iter()
        .zip(chunks)
        .map(|(&s, &c)| s.div_ceil(c.max(1)))
        .collect();
    let count: usize = dims.iter().product();
    (0..count).map(move |mut lin| {
        let mut idx = vec![0usize; dims.len()];
        for (i, &d) in idx.iter_mut().zip(&dims).rev() {
            *i = lin.checked_rem(d).unwrap_or(0);
            lin = lin.checked_div(d).unwrap_or(0);
        }
        idx
    })
}

fn join(idx: &[usize], sep: &str) -> String {
    idx.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// Parses array metadata of zarr format `version`: the object and its shape.
fn header(
    meta_path: &Path,
    name: &str,
    text: &[u8],
    version: u64,
) -> Result<(serde_json::Map<String, Value>, Vec<usize>)> {
    let m = parse_object(meta_path, name, text)?;
    let format = m.get("zarr_format").unwrap_or(&Value::Null);
    if format.as_u64() != Some(version) {
        let expected = if version == 2 { "2" } else { "3" };
        return Err(field_error(
            meta_path,
            name,
            "zarr_format",
            expected,
            format,
        ));
    }
    let shape = dims(
        meta_path,
        name,
        "shape",
        m.get("shape").unwrap_or(&Value::Null),
    )?;
    Ok((m, shape))
}

/// Reads a zarr v2 `.zarray` (`text`, from `meta_path`) over `store`, as the tensor `name`; `id` tells its
/// grid from the file's other entries.
pub(crate) fn read_v2(
    meta_path: &Path,
    name: &str,
    text: &[u8],
    store: &dyn ChunkStore,
    id: u64,
) -> Result<Array> {
    let (m, shape) = header(meta_path, name, text, 2)?;
    let get = |k: &'static str| m.get(k).unwrap_or(&Value::Null);
    let chunks = dims(meta_path, name, "chunks", get("chunks"))?;
    if chunks.len() != shape.len() {
        return Err(field_error(
            meta_path,
            name,
            "chunks",
            "one extent per axis of the shape",
            get("chunks"),
        ));
    }
    let dtype_v = get("dtype");
    let (dtype, byteswap) = match dtype_v.as_str() {
        Some("bfloat16") => (DType::BF16, false),
        Some(d) if !d.starts_with(['<', '>', '|', '=']) => {
            return Err(field_error(
                meta_path,
                name,
                "dtype",
                "a numpy type string such as \"<f4\", or \"bfloat16\"",
                dtype_v,
            ))
        }
        Some(d) if d.ends_with("V2") => {
            return Err(field_error(
                meta_path,
                name,
                "dtype",
                "a numpy type string such as \"<f4\", or \"bfloat16\"",
                dtype_v,
            ))
        }
        Some(d) => match crate::npy::parse_descr(d) {
            Some((dt, swap, _)) => (dt, swap),
            None => {
                return Err(field_error(
                    meta_path,
                    name,
                    "dtype",
                    "one of <f8 <f4 <f2 bfloat16 <i8 <i4 <i2 |i1 |u1 |b1",
                    dtype_v,
                ))
            }
        },
        None => return Err(field_error(meta_path, name, "dtype", "a string", dtype_v)),
    };
    if get("order").as_str().unwrap_or("C") != "C" {
        return Err(field_error(
            meta_path,
            name,
            "order",
            "\"C\" (Fortran-order chunks are not read)",
            get("order"),
        ));
    }
    if !(get("filters").is_null() || get("filters").as_array().is_some_and(Vec::is_empty)) {
        return Err(field_error(
            meta_path,
            name,
            "filters",
            "null (no filters)",
            get("filters"),
        ));
    }
    let compressor = get("compressor");
    let codec = match compressor {
        Value::Null => Codec::Raw,
        Value::Object(c) => match c.get("id").and_then(Value::as_str) {
            Some("zstd") => Codec::Zstd,
            Some("gzip") => Codec::Gzip,
            Some("zlib") => Codec::Zlib,
            _ => {
                return Err(field_error(
                    meta_path,
                    name,
                    "compressor",
                    "null, zstd, gzip or zlib",
                    compressor,
                ))
            }
        },
        _ => {
            return Err(field_error(
                meta_path,
                name,
                "compressor",
                "null or an object",
                compressor,
            ))
        }
    };
    let sep = match get("dimension_separator") {
        Value::Null => ".",
        Value::String(s) if s == "." || s == "/" => s.as_str(),
        other => {
            return Err(field_error(
                meta_path,
                name,
                "dimension_separator",
                "\".\" or \"/\"",
                other,
            ))
        }
    };
    let fill = fill_bytes(meta_path, name, dtype, get("fill_value"))?;
    // A 0-d array is one chunk of one element, under the key `0`.
    let (gshape, gchunks) = if shape.is_empty() {
        (vec![1], vec![1])
    } else {
        (shape.clone(), chunks)
    };
    chunk_count(meta_path, name, &gshape, &gchunks)?;
    let mut stored = Vec::new();
    for idx in grid_indices(&gshape, &gchunks) {
        let key = join(&idx, sep);
        stored.push(store.get(&key)?.map(|(stored, path)| Chunk {
            key,
            path,
            stored,
            codec,
        }));
    }
    let grid = Grid {
        name: name.to_string(),
        id,
        shape: gshape,
        chunk_shape: gchunks,
        elem: dtype.size(),
        fill,
        chunks: stored,
        clipped: false,
    };
    array(meta_path, grid, dtype, shape, byteswap)
}

/// A zarr v3 codec chain's bytes-to-bytes part after `bytes`: none or zstd/gzip, refusing the rest.
fn v3_codec(meta_path: &Path, name: &str, chain: &Value) -> Result<(Codec, bool)> {
    let bad = |v: &Value| {
        field_error(
            meta_path,
            name,
            "codecs",
            "bytes, optionally followed by zstd or gzip",
            v,
        )
    };
    let list = chain.as_array().ok_or_else(|| bad(chain))?;
    let mut iter = list.iter();
    let first = iter.next().ok_or_else(|| bad(chain))?;
    if first.get("name").and_then(Value::as_str) != Some("bytes") {
        return Err(bad(first));
    }
    let endian = first
        .get("configuration")
        .and_then(|c| c.get("endian"))
        .and_then(Value::as_str)
        .unwrap_or("little");
    let big = match endian {
        "little" => false,
        "big" => true,
        _ => return Err(bad(first)),
    };
    let codec = match iter.next() {
        None => Codec::Raw,
        Some(c) => match c.get("name").and_then(Value::as_str) {
            Some("zstd") => Codec::Zstd,
            Some("gzip") => Codec::Gzip,
            _ => return Err(bad(c)),
        },
    };
    if let Some(extra) = iter.next() {
        return Err(bad(extra));
    }
    Ok((codec, big))
}

/// Entries of a shard index: `(offset, nbytes)` per inner chunk, `None` for an absent one.
type ShardIndex = Vec<Option<(u64, u64)>>;

/// Reads a shard's index (`count` entries at its end or start, then a CRC-32C if `crc`).
fn shard_index(
    shard: &Stored,
    shard_path: &Path,
    name: &str,
    key: &str,
    count: usize,
    at_end: bool,
    crc: bool,
) -> Result<ShardIndex> {
    let entries_len = count.checked_mul(16).ok_or_else(|| Error::ChunkGrid {
        path: shard_path.to_path_buf(),
        tensor: name.to_string(),
        what: "inner chunks per shard at most",
        expected: MAX_CHUNKS as u64,
        found: count as u64,
    })?;
    let index_len = entries_len.saturating_add(if crc { 4 } else { 0 }) as u64;
    if index_len > shard.len() {
        return Err(Error::ChunkSize {
            path: shard_path.to_path_buf(),
            tensor: name.to_string(),
            chunk: key.to_string(),
            codec: "sharding_indexed",
            expected: index_len,
            found: shard.len(),
        });
    }
    let at = if at_end {
        shard.len().saturating_sub(index_len)
    } else {
        0
    };
    let mut index = vec![0u8; usize::try_from(index_len).unwrap_or(0)];
    shard
        .read_at(&mut index, at)
        .map_err(|e| crate::source::read_error(shard_path, name, at, index_len, e))?;
    let (entries, tail) = index.split_at(entries_len);
    if crc {
        let expected = tail
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0);
        let found = crc32c::crc32c(entries);
        if expected != found {
            return Err(Error::ShardIndexCrc {
                path: shard_path.to_path_buf(),
                tensor: name.to_string(),
                chunk: key.to_string(),
                expected,
                found,
            });
        }
    }
    // The inner chunks may only lie in the shard's bytes outside its index.
    let (lo, hi) = if at_end {
        (0, at)
    } else {
        (index_len, shard.len())
    };
    entries
        .chunks_exact(16)
        .map(|e| {
            let word = |r: std::ops::Range<usize>| {
                e.get(r)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(u64::MAX)
            };
            let (offset, nbytes) = (word(0..8), word(8..16));
            if offset == u64::MAX && nbytes == u64::MAX {
                return Ok(None);
            }
            match offset.checked_add(nbytes) {
                Some(end) if offset >= lo && end <= hi => Ok(Some((offset, nbytes))),
                _ => Err(Error::Truncated {
                    path: shard_path.to_path_buf(),
                    tensor: name.to_string(),
                    offset,
                    expected: nbytes,
                    found: hi.saturating_sub(offset),
                }),
            }
        })
        .collect()
}

/// Reads a zarr v3 `zarr.json` (`text`, from `meta_path`) over `store`, as the tensor `name`.
pub(crate) fn read_v3(
    meta_path: &Path,
    name: &str,
    text: &[u8],
    store: &dyn ChunkStore,
    id: u64,
) -> Result<Array> {
    let (m, shape) = header(meta_path, name, text, 3)?;
    let get = |k: &'static str| m.get(k).unwrap_or(&Value::Null);
    if get("node_type").as_str() != Some("array") {
        return Err(field_error(
            meta_path,
            name,
            "node_type",
            "\"array\"",
            get("node_type"),
        ));
    }
    let dtype_v = get("data_type");
    let dtype = dtype_v
        .as_str()
        .and_then(DType::from_numpy_name)
        .ok_or_else(|| {
            field_error(
                meta_path,
                name,
                "data_type",
                "float64/32/16, bfloat16, int64/32/16/8, uint8 or bool",
                dtype_v,
            )
        })?;
    let grid_v = get("chunk_grid");
    if grid_v.get("name").and_then(Value::as_str) != Some("regular") {
        return Err(field_error(
            meta_path,
            name,
            "chunk_grid",
            "a regular grid",
            grid_v,
        ));
    }
    let outer = dims(
        meta_path,
        name,
        "chunk_grid",
        grid_v
            .get("configuration")
            .and_then(|c| c.get("chunk_shape"))
            .unwrap_or(&Value::Null),
    )?;
    if outer.len() != shape.len() {
        return Err(field_error(
            meta_path,
            name,
            "chunk_grid",
            "one extent per axis of the shape",
            grid_v,
        ));
    }
    let enc = get("chunk_key_encoding");
    let (prefix, sep) = match enc.get("name").and_then(Value::as_str) {
        Some("default") => (
            "c",
            enc.get("configuration")
                .and_then(|c| c.get("separator"))
                .and_then(Value::as_str)
                .unwrap_or("/"),
        ),
        Some("v2") => (
            "",
            enc.get("configuration")
                .and_then(|c| c.get("separator"))
                .and_then(Value::as_str)
                .unwrap_or("."),
        ),
        _ => {
            return Err(field_error(
                meta_path,
                name,
                "chunk_key_encoding",
                "default or v2",
                enc,
            ))
        }
    };
    if sep != "/" && sep != "." {
        return Err(field_error(
            meta_path,
            name,
            "chunk_key_encoding",
            "separator \"/\" or \".\"",
            enc,
        ));
    }
    let key_of = |idx: &[usize]| -> String {
        match (prefix, idx.is_empty()) {
            ("", true) => "0".to_string(),
            ("", false) => join(idx, sep),
            (p, true) => p.to_string(),
            (p, false) => format!("{p}{sep}{}", join(idx, sep)),
        }
    };
    let fill = fill_bytes(meta_path, name, dtype, get("fill_value"))?;
    let codecs = get("codecs");
    let list = codecs
        .as_array()
        .ok_or_else(|| field_error(meta_path, name, "codecs", "a list", codecs))?;
    let sharding = list
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("sharding_indexed"));
    // A 0-d array: one chunk of one element.
    let rank0 = shape.is_empty();
    let gshape = if rank0 { vec![1] } else { shape.clone() };
    let (chunks, byteswap, inner_shape) = match sharding {
        None => {
            let (codec, big) = v3_codec(meta_path, name, codecs)?;
            let gouter = if rank0 { vec![1] } else { outer.clone() };
            chunk_count(meta_path, name, &gshape, &gouter)?;
            let mut out = Vec::new();
            for idx in grid_indices(&gshape, &gouter) {
                let key = key_of(if rank0 { &[] } else { &idx });
                out.push(store.get(&key)?.map(|(stored, path)| Chunk {
                    key,
                    path,
                    stored,
                    codec,
                }));
            }
            (out, big, gouter)
        }
        Some(shard) => {
            if list.len() != 1 {
                return Err(field_error(
                    meta_path,
                    name,
                    "codecs",
                    "sharding_indexed alone",
                    codecs,
                ));
            }
            let conf = shard.get("configuration").unwrap_or(&Value::Null);
            let inner = dims(
                meta_path,
                name,
                "codecs",
                conf.get("chunk_shape").unwrap_or(&Value::Null),
            )?;
            if inner.len() != shape.len()
                || inner
                    .iter()
                    .zip(&outer)
                    .any(|(&i, &o)| o.checked_rem(i) != Some(0))
            {
                return Err(field_error(
                    meta_path,
                    name,
                    "codecs",
                    "an inner chunk shape dividing the shard shape",
                    conf,
                ));
            }
            let (codec, big) =
                v3_codec(meta_path, name, conf.get("codecs").unwrap_or(&Value::Null))?;
            let index_codecs = conf.get("index_codecs").unwrap_or(&Value::Null);
            let crc = match index_codecs.as_array().map(Vec::as_slice) {
                Some([b]) if b.get("name").and_then(Value::as_str) == Some("bytes") => false,
                Some([b, c])
                    if b.get("name").and_then(Value::as_str) == Some("bytes")
                        && c.get("name").and_then(Value::as_str) == Some("crc32c") =>
                {
                    true
                }
                _ => {
                    return Err(field_error(
                        meta_path,
                        name,
                        "index_codecs",
                        "bytes, optionally followed by crc32c",
                        index_codecs,
                    ))
                }
            };
            let at_end = match conf
                .get("index_location")
                .and_then(Value::as_str)
                .unwrap_or("end")
            {
                "end" => true,
                "start" => false,
                _ => {
                    return Err(field_error(
                        meta_path,
                        name,
                        "index_location",
                        "\"end\" or \"start\"",
                        conf,
                    ))
                }
            };
            let (gouter, ginner) = if rank0 {
                (vec![1], vec![1])
            } else {
                (outer.clone(), inner.clone())
            };
            let per_shard: Vec<usize> = gouter
                .iter()
                .zip(&ginner)
                .map(|(&o, &i)| o.checked_div(i).unwrap_or(0))
                .collect();
            let per_count = per_shard
                .iter()
                .try_fold(1usize, |a, &n| a.checked_mul(n))
                .filter(|&n| n <= MAX_CHUNKS)
                .ok_or_else(|| Error::ChunkGrid {
                    path: meta_path.to_path_buf(),
                    tensor: name.to_string(),
                    what: "inner chunks per shard at most",
                    expected: MAX_CHUNKS as u64,
                    found: u64::MAX,
                })?;
            chunk_count(meta_path, name, &gshape, &ginner)?;
            chunk_count(meta_path, name, &gshape, &gouter)?;
            let inner_dims: Vec<usize> = gshape
                .iter()
                .zip(&ginner)
                .map(|(&s, &c)| s.div_ceil(c))
                .collect();
            let inner_total: usize = inner_dims.iter().product();
            let mut out: Vec<Option<Chunk>> = vec![None; inner_total];
            for sidx in grid_indices(&gshape, &gouter) {
                let key = key_of(if rank0 { &[] } else { &sidx });
                let Some((shard_bytes, shard_path)) = store.get(&key)? else {
                    continue;
                };
                let index = shard_index(
                    &shard_bytes,
                    &shard_path,
                    name,
                    &key,
                    per_count,
                    at_end,
                    crc,
                )?;
                for (j, entry) in index.into_iter().enumerate() {
                    let Some((offset, nbytes)) = entry else {
                        continue;
                    };
                    // The inner chunk's index within the shard, then within the array.
                    let mut rest = j;
                    let mut within = vec![0usize; per_shard.len()];
                    for (w, &n) in within.iter_mut().zip(&per_shard).rev() {
                        *w = rest.checked_rem(n).unwrap_or(0);
                        rest = rest.checked_div(n).unwrap_or(0);
                    }
                    let mut lin: Option<usize> = Some(0);
                    for ((&s, &w), (&p, &d)) in sidx
                        .iter()
                        .zip(&within)
                        .zip(per_shard.iter().zip(&inner_dims))
                    {
                        let g = s.checked_mul(p).and_then(|v| v.checked_add(w));
                        lin = match (lin, g) {
                            (Some(l), Some(g)) if g < d => {
                                l.checked_mul(d).and_then(|v| v.checked_add(g))
                            }
                            // An inner chunk wholly past the array's end holds nothing the array shows.
                            _ => None,
                        };
                    }
                    let Some(slot) = lin.and_then(|l| out.get_mut(l)) else {
                        continue;
                    };
                    let stored =
                        shard_bytes
                            .sub(offset, nbytes)
                            .ok_or_else(|| Error::Truncated {
                                path: shard_path.clone(),
                                tensor: name.to_string(),
                                offset,
                                expected: nbytes,
                                found: shard_bytes.len().saturating_sub(offset),
                            })?;
                    *slot = Some(Chunk {
                        key: format!("{key}[{j}]"),
                        path: shard_path.clone(),
                        stored,
                        codec,
                    });
                }
            }
            (out, big, ginner)
        }
    };
    let grid = Grid {
        name: name.to_string(),
        id,
        shape: gshape,
        chunk_shape: inner_shape,
        elem: dtype.size(),
        fill,
        chunks,
        clipped: false,
    };
    array(meta_path, grid, dtype, shape, byteswap)
}

/// The array a checked grid reads as: its directory entry (`shape` as the metadata gives it, empty for a 0-d
/// array) beside the grid, after [`Grid::validate`] accepted the grid.
fn array(
    meta_path: &Path,
    grid: Grid,
    dtype: DType,
    shape: Vec<usize>,
    byteswap: bool,
) -> Result<Array> {
    grid.validate(meta_path)?;
    Ok(Array {
        info: TensorInfo {
            name: grid.name.clone(),
            dtype,
            shape,
            stored_as: None,
        },
        grid,
        // A one-byte type has no byte order.
        byteswap: byteswap && dtype.size() > 1,
    })
}

/// A store over one folder: chunk keys are file names (or, with `/` separators, paths) below it.
pub(crate) struct FolderStore<'a> {
    pub dir: PathBuf,
    pub guard: &'a crate::guard::Guard,
}

impl ChunkStore for FolderStore<'_> {
    fn get(&self, key: &str) -> Result<Option<(Stored, PathBuf)>> {
        let path = self.dir.join(key);
        let Some(len) = self.guard.check_if_exists(&path)? else {
            return Ok(None);
        };
        Ok(Some((
            Stored::Path {
                path: Arc::new(path.clone()),
                offset: 0,
                len,
            },
            path,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding `chunk` under every key.
    struct Every(Vec<u8>);
    impl ChunkStore for Every {
        fn get(&self, _key: &str) -> Result<Option<(Stored, PathBuf)>> {
            let len = self.0.len();
            Ok(Some((
                Stored::Inline {
                    data: Arc::from(self.0.as_slice()),
                    offset: 0,
                    len,
                },
                PathBuf::from("chunk"),
            )))
        }
    }

    fn v2(extra: &str) -> String {
        format!(
            r#"{{"zarr_format":2,"shape":[2,3],"chunks":[2,3],"dtype":"<f4","compressor":null,"fill_value":null,"order":"C","filters":null{extra}}}"#
        )
    }

    fn field_of(e: &Error) -> &'static str {
        match e {
            Error::ArrayMetadata { field, .. } => field,
            other => panic!("not a metadata error: {other}"),
        }
    }

    #[test]
    fn v2_metadata_outside_what_jax_writes_is_refused_by_field() {
        let store = Every(vec![0; 24]);
        let p = Path::new(".zarray");
        assert!(read_v2(p, "t", v2("").as_bytes(), &store, 0).is_ok());
        for (text, field) in [
            (
                v2("").replace("\"order\":\"C\"", "\"order\":\"F\""),
                "order",
            ),
            (
                v2("").replace("\"filters\":null", "\"filters\":[{\"id\":\"delta\"}]"),
                "filters",
            ),
            (
                v2("").replace("\"compressor\":null", "\"compressor\":{\"id\":\"blosc\"}"),
                "compressor",
            ),
            (v2("").replace("<f4", "<c8"), "dtype"),
            (v2("").replace("<f4", "float32"), "dtype"),
            (
                v2("").replace("\"zarr_format\":2", "\"zarr_format\":3"),
                "zarr_format",
            ),
            (
                v2("").replace("\"chunks\":[2,3]", "\"chunks\":[2]"),
                "chunks",
            ),
            (
                v2("").replace("\"shape\":[2,3]", "\"shape\":[2,-3]"),
                "shape",
            ),
            (
                v2("").replace("\"fill_value\":null", "\"fill_value\":\"lots\""),
                "fill_value",
            ),
            (v2(",\"dimension_separator\":\"-\""), "dimension_separator"),
            ("[1,2]".to_string(), "(document)"),
            ("{not json".to_string(), "(document)"),
        ] {
            let err = read_v2(p, "t", text.as_bytes(), &store, 0)
                .err()
                .unwrap_or_else(|| panic!("{text} accepted"));
            assert_eq!(field_of(&err), field, "{err}");
            assert!(
                err.to_string().contains(".zarray") && err.to_string().contains("`t`"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_fill_value_and_big_endian_data_are_read_as_declared() {
        let p = Path::new(".zarray");
        let text = v2("")
            .replace("\"fill_value\":null", "\"fill_value\":\"NaN\"")
            .replace("<f4", ">f4");
        let a = read_v2(p, "t", text.as_bytes(), &Every(vec![0; 24]), 0).expect("reads");
        assert!(a.byteswap);
        assert_eq!(a.grid.fill, f32::NAN.to_le_bytes().to_vec());
        let text = v2("")
            .replace("\"fill_value\":null", "\"fill_value\":1.5")
            .replace("<f4", "bfloat16");
        let a = read_v2(p, "t", text.as_bytes(), &Every(vec![0; 12]), 0).expect("reads");
        assert_eq!(a.info.dtype, DType::BF16);
        assert_eq!(
            a.grid.fill,
            half::bf16::from_f32(1.5).to_le_bytes().to_vec()
        );
    }

    fn v3_sharded(crc: bool) -> String {
        let index_codecs = if crc {
            r#"[{"name":"bytes","configuration":{"endian":"little"}},{"name":"crc32c"}]"#
        } else {
            r#"[{"name":"bytes","configuration":{"endian":"little"}}]"#
        };
        format!(
            r#"{{"zarr_format":3,"node_type":"array","shape":[4],"data_type":"int16","chunk_grid":{{"name":"regular","configuration":{{"chunk_shape":[4]}}}},"chunk_key_encoding":{{"name":"default"}},"fill_value":0,"codecs":[{{"name":"sharding_indexed","configuration":{{"chunk_shape":[2],"codecs":[{{"name":"bytes","configuration":{{"endian":"little"}}}}],"index_codecs":{index_codecs}}}}}]}}"#
        )
    }

    /// A shard of two raw inner chunks of 2 int16 each, the second absent when `absent`.
    fn shard(absent: bool, crc: bool) -> Vec<u8> {
        let mut data = vec![1, 0, 2, 0, 3, 0, 4, 0];
        let mut index = Vec::new();
        for (off, len) in [(0u64, 4u64), (4, 4)] {
            let (off, len) = if absent && off == 4 {
                (u64::MAX, u64::MAX)
            } else {
                (off, len)
            };
            index.extend(off.to_le_bytes());
            index.extend(len.to_le_bytes());
        }
        let c = crc32c::crc32c(&index);
        data.extend(index);
        if crc {
            data.extend(c.to_le_bytes());
        }
        data
    }

    fn read_all(a: Array) -> Vec<u8> {
        use std::io::Read as _;
        let mut out = Vec::new();
        crate::grid::GridReader::new(Arc::new(a.grid))
            .read_to_end(&mut out)
            .expect("reads");
        out
    }

    #[test]
    fn v3_shards_are_read_through_their_index() {
        let p = Path::new("zarr.json");
        let a = read_v3(
            p,
            "t",
            v3_sharded(true).as_bytes(),
            &Every(shard(false, true)),
            0,
        )
        .expect("reads");
        assert_eq!(read_all(a), vec![1, 0, 2, 0, 3, 0, 4, 0]);
        let a = read_v3(
            p,
            "t",
            v3_sharded(false).as_bytes(),
            &Every(shard(true, false)),
            0,
        )
        .expect("reads");
        assert_eq!(a.grid.missing(), 1);
        assert_eq!(read_all(a), vec![1, 0, 2, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_damaged_shard_index_is_refused() {
        let p = Path::new("zarr.json");
        let mut bad = shard(false, true);
        let at = bad.len() - 10;
        bad[at] ^= 1;
        let err = read_v3(p, "t", v3_sharded(true).as_bytes(), &Every(bad), 0)
            .err()
            .expect("refused");
        assert!(matches!(err, Error::ShardIndexCrc { .. }), "{err}");
        // An entry pointing into the index itself.
        let mut bad = shard(false, false);
        bad[8 + 16] = 6;
        let err = read_v3(p, "t", v3_sharded(false).as_bytes(), &Every(bad), 0)
            .err()
            .expect("refused");
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
        // A shard too short to hold its index.
        let err = read_v3(p, "t", v3_sharded(true).as_bytes(), &Every(vec![0; 10]), 0)
            .err()
            .expect("refused");
        assert!(matches!(err, Error::ChunkSize { .. }), "{err}");
    }
}
