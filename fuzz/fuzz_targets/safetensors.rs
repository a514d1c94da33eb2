//! Fuzzes the `.safetensors` reader: length prefix, JSON header, offsets, data reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vitconv_fuzz::open_and_read_all(data, ".safetensors");
});
