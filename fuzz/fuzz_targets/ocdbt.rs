//! Fuzzes the OCDBT parsers (TensorStore's key-value store inside Orbax checkpoints): the
//! manifest, and B+tree and version tree nodes, each with its magic number, length, CRC-32C,
//! optional zstd body, data-file table and prefix-compressed keys.
//!
//! Input: one mode byte, then an encoded manifest or node. With the mode byte's low bit clear
//! the bytes are parsed as they are (the magic, length and CRC checks); with it set the target
//! first rewrites the header's length and the CRC-32C footer to match, so that mutations reach
//! the fields behind the CRC instead of all failing it. The seeds (`seeds/ocdbt/`) are the
//! golden manifests and nodes behind a mode byte of 1.
//!
//! Properties: no panic, no unbounded allocation (the parsers' named limits), and a node that
//! parses holds between one and 2^20 entries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 && bytes.len() >= 16 {
        let len = bytes.len() as u64;
        bytes[4..12].copy_from_slice(&len.to_le_bytes());
        let crc_at = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..crc_at]);
        bytes[crc_at..].copy_from_slice(&crc.to_le_bytes());
    }
    // Both parsers see every input: each refuses the other's magic number at once.
    let _ = vitconv_tensors::fuzzing::ocdbt_manifest(&bytes);
    if let Ok(entries) = vitconv_tensors::fuzzing::ocdbt_node(&bytes) {
        assert!((1..=1 << 20).contains(&entries), "{entries} entries");
    }
});
