//! Fuzzes the whole `.npz` path: zip directory, member headers, stored and deflate data.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vitconv_fuzz::open_and_read_all(data, ".npz");
});
