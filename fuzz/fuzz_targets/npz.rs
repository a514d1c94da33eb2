//! Fuzzes the whole `.npz` path: zip directory, member headers, stored and deflate data; and
//! checks that an accepted directory has no repeated name and no members sharing bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vitconv_fuzz::check_zip_members(data);
    vitconv_fuzz::open_and_read_all(data, ".npz");
});
