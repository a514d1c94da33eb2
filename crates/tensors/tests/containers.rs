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

// ---------------------------------------------------------------------------------------
// Metadata files that are not regular files, or too large.

/// Copies the folder `from` into `to`, recursively (links are not expected in the fixtures).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("lists") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copies");
        }
    }
}

/// Replaces the file `path` with a named pipe.
fn make_fifo(path: &Path) {
    std::fs::remove_file(path).expect("rm");
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: `c_path` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Opens `path` and returns the error's message. Opening a FIFO for a blocking read would hang here; the
/// checks refuse it by kind first, so this returns at once when they work.
fn open_error(path: &Path) -> String {
    match TensorFile::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_fifo_or_device_as_zarr_metadata_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("workdir");
    copy_dir(&fixtures().join("bv-vit-map-scan/workdir"), &workdir);
    let zarray = workdir.join("checkpoint.bv-000000100/chrono~accum_pause_time/.zarray");
    let good = std::fs::read(&zarray).expect("zarray");

    make_fifo(&zarray);
    let msg = open_error(&workdir);
    assert!(msg.contains("named pipe (FIFO)"), "{msg}");
    assert!(msg.contains(".zarray"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");

    // A link to a device leaves the checkpoint folder, and is refused before it is opened.
    std::fs::remove_file(&zarray).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", &zarray).expect("symlink");
    let msg = open_error(&workdir);
    assert!(msg.contains(".zarray"), "{msg}");
    assert!(msg.contains("outside the checkpoint folder"), "{msg}");

    // Metadata past its size limit is refused by its size, before it is read.
    std::fs::remove_file(&zarray).expect("rm");
    let mut big = good.clone();
    big.resize(2 << 20, b' ');
    std::fs::write(&zarray, &big).expect("write");
    let err = TensorFile::open(&workdir).expect_err("too large");
    assert!(
        matches!(err, vitconv_tensors::Error::FileTooLarge { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(".zarray"), "{err}");

    // The big_vision `-LAST` file as a FIFO.
    std::fs::write(&zarray, &good).expect("restore");
    make_fifo(&workdir.join("checkpoint.bv-LAST"));
    let msg = open_error(&workdir);
    assert!(msg.contains("named pipe (FIFO)"), "{msg}");
    assert!(msg.contains("checkpoint.bv-LAST"), "{msg}");
}

#[test]
fn a_fifo_or_device_as_orbax_metadata_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("ckpt");
    copy_dir(&fixtures().join("orbax-bv-noocdbt/ckpt"), &ckpt);
    let metadata = ckpt.join("_METADATA");
    let good = std::fs::read(&metadata).expect("_METADATA");

    // `_METADATA` as a FIFO still claims the folder, and is refused by kind, by name.
    make_fifo(&metadata);
    let msg = open_error(&ckpt);
    assert!(msg.contains("named pipe (FIFO)"), "{msg}");
    assert!(msg.contains("_METADATA"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");

    // As a link to /dev/zero (which would read until memory ran out).
    std::fs::remove_file(&metadata).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", &metadata).expect("symlink");
    let msg = open_error(&ckpt);
    assert!(msg.contains("_METADATA"), "{msg}");

    // A per-array `.zarray` of the Orbax layout without OCDBT.
    std::fs::remove_file(&metadata).expect("rm");
    std::fs::write(&metadata, &good).expect("restore");
    let zarray = ckpt.join("MAPHead_0.probe/.zarray");
    make_fifo(&zarray);
    let msg = open_error(&ckpt);
    assert!(msg.contains("named pipe (FIFO)"), "{msg}");
    assert!(msg.contains("MAPHead_0.probe/.zarray"), "{msg}");
}

#[test]
fn a_fifo_as_the_ocdbt_manifest_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("ckpt");
    copy_dir(&fixtures().join("orbax-bv-std/ckpt"), &ckpt);
    make_fifo(&ckpt.join("manifest.ocdbt"));
    let msg = open_error(&ckpt);
    assert!(msg.contains("named pipe (FIFO)"), "{msg}");
    assert!(msg.contains("manifest.ocdbt"), "{msg}");
}
