//! The golden checkpoint containers (`fixtures/containers/`, written by jax, flax, orbax-checkpoint and
//! tensorstore): every parameter and every piece of training state reads back as exactly the bytes, dtype and
//! shape their `expected.json` records, through the same `TensorFile` every other format uses.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vitconv_tensors::{Format, TensorFile};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/containers")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const CASES: &[(&str, Format)] = &[
    ("bv-vit-map-scan", Format::Bv),
    ("bv-siglip-tiny-sharded", Format::Bv),
    ("orbax-vit-token", Format::Orbax),
    ("orbax-bv-std", Format::Orbax),
    ("orbax-bv-noocdbt", Format::Orbax),
    ("orbax-bv-v1-zarr3", Format::Orbax),
    ("msgpack-vit-token", Format::Msgpack),
    ("msgpack-bv-hfstyle", Format::Msgpack),
];

fn dtype_name(d: vitconv_tensors::DType) -> &'static str {
    use vitconv_tensors::DType::*;
    match d {
        F64 => "float64",
        F32 => "float32",
        F16 => "float16",
        BF16 => "bfloat16",
        I64 => "int64",
        I32 => "int32",
        I16 => "int16",
        I8 => "int8",
        U8 => "uint8",
        Bool => "bool",
    }
}

#[test]
fn every_golden_container_reads_back_its_recorded_bytes() {
    for &(case, format) in CASES {
        let dir = fixtures().join(case);
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let entry = dir.join(expected["entry"].as_str().unwrap());
        let file = TensorFile::open(&entry).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(file.format(), format, "{case}");
        let mut rows: Vec<&serde_json::Value> =
            expected["params"].as_array().unwrap().iter().collect();
        rows.extend(expected["non_params"].as_array().into_iter().flatten());
        let mut arrays = 0;
        for row in rows {
            let name = row["name"].as_str().unwrap();
            if row["dtype"].is_null() {
                // A plain msgpack integer (`step`): listed beside the tensors, not read as one.
                assert!(
                    file.non_tensor_entries()
                        .iter()
                        .any(|o| o.starts_with(name)),
                    "{case}: {name} not listed in {:?}",
                    file.non_tensor_entries()
                );
                continue;
            }
            arrays += 1;
            let info = file
                .get(name)
                .unwrap_or_else(|| panic!("{case}: no tensor {name}"));
            assert_eq!(
                dtype_name(info.dtype),
                row["dtype"].as_str().unwrap(),
                "{case}: {name}"
            );
            let shape: Vec<usize> = row["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(info.shape, shape, "{case}: {name}");
            let bytes = file.read(name).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(
                hex(&Sha256::digest(&bytes)),
                row["sha256"].as_str().unwrap(),
                "{case}: {name}"
            );
            // Streamed through the chunked reader too, in small pieces.
            let mut hasher = Sha256::new();
            file.read_chunked(name, 40, |piece| hasher.update(piece))
                .unwrap();
            assert_eq!(
                hex(&hasher.finalize()),
                row["sha256"].as_str().unwrap(),
                "{case}: {name} chunked"
            );
        }
        assert_eq!(
            file.tensors().len(),
            arrays,
            "{case}: tensors beyond the recorded ones"
        );
    }
}
