//! Shared helpers for the integration tests: where things are, and how to run the binary.

#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A bundled fixture, e.g. `fixture("vit-token/checkpoint.npz")`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// Runs the built `vitconv` with the given arguments.
pub fn vitconv<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_vitconv"))
        .args(args)
        .output()
        .expect("the vitconv binary runs")
}

/// The arguments of `vitconv npz-to-pt SRC OUT --layout LAYOUT EXTRA...`.
pub fn npz_to_pt_args(src: &Path, out: &Path, layout: &str, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "npz-to-pt".into(),
        src.into(),
        out.into(),
        "--layout".into(),
        layout.into(),
    ];
    args.extend(extra.iter().map(Into::into));
    args
}

/// Runs `vitconv npz-to-pt SRC OUT --layout LAYOUT EXTRA...`.
pub fn npz_to_pt(src: &Path, out: &Path, layout: &str, extra: &[&str]) -> Output {
    vitconv(npz_to_pt_args(src, out, layout, extra))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code 2 and a single-line error on stderr that mentions `needle`.
pub fn assert_bad_input(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2, stderr: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error is not one line: {err}"
    );
}

/// A scratch directory removed at the end of the test.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Files in a directory, sorted, hidden ones included, so leftovers (temporary files) show.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("readable dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// A minimal zip writer (stored and deflate members, no zip64), so the tests can build hostile
// archives whose every byte they choose without depending on the writer under test.

/// A zip member: `payload` as stored in the archive (a raw deflate stream when `deflate`),
/// and the uncompressed bytes whose size and CRC the headers announce.
pub struct Member {
    pub name: String,
    pub deflate: bool,
    pub payload: Vec<u8>,
    pub content: Vec<u8>,
}

/// The bytes of a zip archive of `members`, in order.
pub fn zip_bytes(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for m in members {
        let offset = u32::try_from(out.len()).expect("small archive");
        let common = |buf: &mut Vec<u8>| {
            buf.extend_from_slice(&20u16.to_le_bytes()); // version needed
            buf.extend_from_slice(&0u16.to_le_bytes()); // flags
            buf.extend_from_slice(&(if m.deflate { 8u16 } else { 0 }).to_le_bytes());
            buf.extend_from_slice(&[0, 0, 0x21, 0]); // time, date: 1980-01-01
            buf.extend_from_slice(&crc32fast::hash(&m.content).to_le_bytes());
            buf.extend_from_slice(&(m.payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(m.content.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes()); // extra field length
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(m.name.as_bytes());
        out.extend_from_slice(&m.payload);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(&mut central);
        central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(m.name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    out
}

/// A stored member holding `content`.
pub fn stored(name: &str, content: Vec<u8>) -> Member {
    Member {
        name: name.to_string(),
        deflate: false,
        payload: content.clone(),
        content,
    }
}

/// A SentencePiece `ModelProto` holding `pieces` (text, type: 1 normal, 2 unknown, 3 control), each with a
/// score, for tests that need a tokenizer file without the sentencepiece library.
pub fn spiece_model(pieces: &[(&str, u64)]) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(number: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }
    let mut out = Vec::new();
    for (text, kind) in pieces {
        let mut p = Vec::new();
        field(1, text.as_bytes(), &mut p);
        p.push(2 << 3 | 5);
        p.extend_from_slice(&(-1.5f32).to_le_bytes());
        varint(3 << 3, &mut p);
        varint(*kind, &mut p);
        field(1, &p, &mut out);
    }
    out
}
