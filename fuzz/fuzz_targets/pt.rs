//! Fuzzes the `.pt` archive reader: the zip, `data.pkl` through the allowlist unpickler, and
//! the mapping of tensors onto `data/<key>` storage records.
//!
//! The first byte picks the mode. Even: the rest is the whole file, so the zip structure is
//! fuzzed. Odd: the rest is `data.pkl`, wrapped in a well-formed archive with storage records
//! `data/0` to `data/3` (sizes taken from the second byte), so mutations reach the storage
//! mapping instead of dying in the zip parser.
#![no_main]

use std::io::{Cursor, Write};

use libfuzzer_sys::fuzz_target;
use zip::write::SimpleFileOptions;

fn wrap(pickle: &[u8], sizes: u8) -> Option<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).ok()?;
    zip.write_all(pickle).ok()?;
    zip.start_file("archive/byteorder", opts).ok()?;
    zip.write_all(if sizes & 0x80 != 0 { b"big" } else { b"little" })
        .ok()?;
    for key in 0..4u8 {
        let len = usize::from((sizes >> (key * 2)) & 3) * 24;
        zip.start_file(format!("archive/data/{key}"), opts).ok()?;
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        zip.write_all(&bytes).ok()?;
    }
    zip.start_file("archive/version", opts).ok()?;
    zip.write_all(b"3\n").ok()?;
    Some(zip.finish().ok()?.into_inner())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        vitconv_fuzz::open_and_read_all(rest, ".pt");
    } else {
        let Some((&sizes, pickle)) = rest.split_first() else {
            return;
        };
        if let Some(file) = wrap(pickle, sizes) {
            vitconv_fuzz::open_and_read_all(&file, ".pt");
        }
    }
});
