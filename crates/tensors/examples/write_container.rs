//! Writes the tensors of any file this crate reads as a checkpoint container, for the container benchmarks
//! (`scripts/bench-containers.sh`), which need full-size `.bv` folders and Orbax checkpoints that no Python
//! package here can write.
//!
//! Usage: `write_container MODE INPUT OUT_DIR`, MODE one of
//! - `bv`: a big_vision step folder as TensorStore writes it (`OUT_DIR/checkpoint.bv-000000001/` with one zarr v2
//!   folder per array named by its path with `/` -> `~`, one zstd chunk (level 1) per array, and
//!   `OUT_DIR/checkpoint.bv-LAST`);
//! - `bv4`: the same with every array of at least 4 elements along some axis cut into 4 chunks along its last
//!   such axis, as a 4-device model-parallel sharding leaves it;
//! - `bvraw`: `bv` with `compressor: null` (the chunks stored as they are);
//! - `orbax3`: an Orbax step written with `use_ocdbt=False, use_zarr3=True` (`_METADATA`, one zarr v3 folder per
//!   array named by its keys joined with `.`, each a `sharding_indexed` shard of one zstd inner chunk with a
//!   CRC-32C index).
//!
//! Each array is read whole and written whole: this is a test tool, not a streaming writer.

use std::io::Write as _;
use std::path::Path;

use serde_json::json;
use vitconv_tensors::{DType, TensorFile};

fn zarr_v2_dtype(d: DType) -> &'static str {
    match d {
        DType::F64 => "<f8",
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::BF16 => "bfloat16",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I16 => "<i2",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
    }
}

/// The bytes of one chunk: the elements of `data` (C order over `shape`) whose index along `axis` lies in
/// `[from, from + len)`.
fn cut(data: &[u8], shape: &[usize], elem: usize, axis: usize, from: usize, len: usize) -> Vec<u8> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product::<usize>() * elem;
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let start = (o * shape[axis] + from) * inner;
        out.extend_from_slice(&data[start..start + len * inner]);
    }
    out
}

fn zstd(data: &[u8], level: i32) -> Vec<u8> {
    zstd::bulk::compress(data, level).expect("zstd")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(bytes).expect("write");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, input, out] = args.as_slice() else {
        eprintln!("usage: write_container bv|bv4|bvraw|orbax3 INPUT OUT_DIR");
        std::process::exit(2);
    };
    let file = TensorFile::open(input).expect("input opens");
    let out = Path::new(out);
    let mut tree = serde_json::Map::new();
    for t in file.tensors() {
        let data = file.read(&t.name).expect("read");
        let elem = t.dtype.size();
        match mode.as_str() {
            "bv" | "bv4" | "bvraw" => {
                let dir = out
                    .join("checkpoint.bv-000000001")
                    .join(t.name.replace('/', "~"));
                // The 4-way split: along the last axis whose extent 4 divides.
                let axis = (mode == "bv4")
                    .then(|| t.shape.iter().rposition(|&d| d >= 4 && d % 4 == 0))
                    .flatten();
                let mut chunks = t.shape.clone();
                if let Some(a) = axis {
                    chunks[a] /= 4;
                }
                let compressor = if mode == "bvraw" {
                    serde_json::Value::Null
                } else {
                    json!({"id": "zstd", "level": 1})
                };
                let zarray = json!({
                    "chunks": chunks, "compressor": compressor, "dimension_separator": ".",
                    "dtype": zarr_v2_dtype(t.dtype), "fill_value": null, "filters": null,
                    "order": "C", "shape": t.shape, "zarr_format": 2,
                });
                write(&dir.join(".zarray"), zarray.to_string().as_bytes());
                let parts = if axis.is_some() { 4 } else { 1 };
                for p in 0..parts {
                    let bytes = match axis {
                        Some(a) => cut(&data, &t.shape, elem, a, p * chunks[a], chunks[a]),
                        None => data.clone(),
                    };
                    let mut key: Vec<String> = vec!["0".into(); t.shape.len().max(1)];
                    if let Some(a) = axis {
                        key[a] = p.to_string();
                    }
                    let stored = if mode == "bvraw" {
                        bytes
                    } else {
                        zstd(&bytes, 1)
                    };
                    write(&dir.join(key.join(".")), &stored);
                }
            }
            "orbax3" => {
                let keys: Vec<&str> = t.name.split('/').collect();
                let dir = out.join("ckpt").join(keys.join("."));
                let zarr = json!({
                    "zarr_format": 3, "node_type": "array", "shape": t.shape,
                    "data_type": t.dtype.numpy_name(),
                    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": t.shape}},
                    "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
                    "codecs": [{"name": "sharding_indexed", "configuration": {
                        "chunk_shape": t.shape,
                        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                   {"name": "zstd", "configuration": {"level": 3, "checksum": false}}],
                        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                    }}],
                });
                write(&dir.join("zarr.json"), zarr.to_string().as_bytes());
                let mut shard = zstd(&data, 3);
                let index: Vec<u8> = [0u64, shard.len() as u64]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                shard.extend_from_slice(&index);
                shard.extend_from_slice(&crc32c::crc32c(&index).to_le_bytes());
                let key = if t.shape.is_empty() {
                    "c".to_string()
                } else {
                    format!("c/{}", vec!["0"; t.shape.len()].join("/"))
                };
                write(&dir.join(key), &shard);
                let key_metadata: Vec<_> = keys
                    .iter()
                    .map(|k| json!({"key": k, "key_type": 2}))
                    .collect();
                tree.insert(
                    format!("{keys:?}"),
                    json!({"key_metadata": key_metadata, "value_metadata": {"value_type": "jax.Array", "skip_deserialize": false}}),
                );
            }
            other => {
                eprintln!("unknown mode {other}");
                std::process::exit(2);
            }
        }
    }
    match mode.as_str() {
        "orbax3" => {
            let meta = json!({"tree_metadata": tree, "use_ocdbt": false, "use_zarr3": true});
            write(&out.join("ckpt/_METADATA"), meta.to_string().as_bytes());
            write(&out.join("ckpt/_CHECKPOINT_METADATA"), b"{}");
            write(
                &out.join("ckpt/commit_success.txt"),
                b"Checkpoint commit was successful",
            );
        }
        _ => write(&out.join("checkpoint.bv-LAST"), b"000000001"),
    }
}
