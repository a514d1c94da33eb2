//! Fuzzes the zip directory's validation with archives laid out to alias, duplicate and
//! misname members (see `vitconv_fuzz::hostile_zip`): whatever the reader accepts must have
//! distinct member names and members that share no bytes, and must read back consistently
//! as an `.npz` or `.pt`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(zip) = vitconv_fuzz::hostile_zip(data) else {
        return;
    };
    vitconv_fuzz::check_zip_members(&zip);
    vitconv_fuzz::open_and_read_all(&zip, ".npz");
});
