//! Replays every input the fuzzers (`fuzz/`, `scripts/fuzz.sh`) ever found to crash, hang or
//! over-allocate, through the same public entry points the fuzz targets drive.
//!
//! Inputs live in `tests/regressions/<target>/`, one file each, named for what they broke, and the
//! fuzz targets' seed corpora (`fuzz/seeds/<target>/`, well-formed and hostile files alike) are replayed
//! with them, so that no target's replay passes over an empty directory.
//! Each must now give an error or a consistent read, without a panic, within [`DEADLINE`].
//! (`detect` inputs are replayed by the `vitconv` integration tests, which see the converter.)

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use vitconv_tensors::{fuzzing, TensorFile};

/// Longer than any input here takes by orders of magnitude; a hang is what it catches.
const DEADLINE: Duration = Duration::from_secs(60);

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        root.join("tests/regressions").join(target),
        root.join("../../fuzz/seeds").join(target),
    ];
    let mut v: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.map(|e| e.unwrap().path()))
        .collect();
    v.retain(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"));
    v.sort();
    // An empty replay would pass without testing anything.
    assert!(!v.is_empty(), "no inputs to replay for the {target} target");
    v
}

/// Runs `f` on a fresh thread: fails on a panic or on a run past [`DEADLINE`].
fn replay(input: &Path, f: fn(&[u8])) {
    let data = std::fs::read(input).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| f(&data));
        let _ = tx.send(r.is_ok());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(true) => {}
        Ok(false) => panic!("{}: panicked", input.display()),
        Err(_) => panic!("{}: did not finish within {DEADLINE:?}", input.display()),
    }
}

/// Writes `data` to a temporary file, opens it and reads every tensor, as the file targets do.
fn open_and_read_all(data: &[u8], suffix: &str) {
    let mut file = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
    file.write_all(data).unwrap();
    file.flush().unwrap();
    let Ok(tf) = TensorFile::open(file.path()) else {
        return;
    };
    for info in tf.tensors() {
        if let Ok(bytes) = tf.read(&info.name) {
            assert_eq!(Some(bytes.len()), info.nbytes(), "`{}`", info.name);
        }
    }
}

/// The `pt` target's mode 1: the input is a `data.pkl`, wrapped in a well-formed archive with
/// storage records `data/0` to `data/3` sized by the second byte (as `fuzz_targets/pt.rs`).
fn wrapped_pt(pickle: &[u8], sizes: u8) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/byteorder", opts).unwrap();
    zip.write_all(if sizes & 0x80 != 0 { b"big" } else { b"little" })
        .unwrap();
    for key in 0..4u8 {
        let len = usize::from((sizes >> (key * 2)) & 3) * 24;
        zip.start_file(format!("archive/data/{key}"), opts).unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
        zip.write_all(&bytes).unwrap();
    }
    zip.start_file("archive/version", opts).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap().into_inner()
}

#[test]
fn npy_header_regressions() {
    for input in inputs("npy_header") {
        replay(&input, |d| {
            let _ = fuzzing::npy_header(d);
        });
    }
}

#[test]
fn pickle_regressions() {
    for input in inputs("pickle") {
        replay(&input, |d| {
            let _ = fuzzing::pickle_state_dict(d);
        });
    }
}

#[test]
fn npz_regressions() {
    for input in inputs("npz") {
        replay(&input, |d| open_and_read_all(d, ".npz"));
    }
}

#[test]
fn safetensors_regressions() {
    for input in inputs("safetensors") {
        replay(&input, |d| open_and_read_all(d, ".safetensors"));
    }
}

#[test]
fn pt_regressions() {
    for input in inputs("pt") {
        replay(&input, |d| match d {
            [mode, rest @ ..] if mode & 1 == 0 => open_and_read_all(rest, ".pt"),
            [_, sizes, pickle @ ..] => open_and_read_all(&wrapped_pt(pickle, *sizes), ".pt"),
            _ => {}
        });
    }
}

#[test]
fn the_replayer_catches_a_panic() {
    // The harness itself must be able to fail, or an empty pass means nothing.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("x");
    std::fs::write(&input, b"x").unwrap();
    let caught = std::panic::catch_unwind(|| replay(&input, |_| panic!("boom")));
    assert!(caught.is_err());
}

#[test]
fn ocdbt_regressions() {
    for input in inputs("ocdbt") {
        replay(&input, |d| {
            let _ = fuzzing::ocdbt_manifest(d);
            let _ = fuzzing::ocdbt_node(d);
        });
    }
}

#[test]
fn msgpack_regressions() {
    for input in inputs("msgpack") {
        replay(&input, |d| {
            let _ = fuzzing::msgpack_tree(d);
        });
    }
}

#[test]
fn zarr_regressions() {
    for input in inputs("zarr") {
        replay(&input, |d| {
            let _ = fuzzing::zarr_metadata(d);
        });
    }
}
