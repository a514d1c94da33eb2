//! Fuzzes zarr array metadata (`.zarray` v2, `zarr.json` v3 with `sharding_indexed`) and the chunk grid behind
//! it: the input is the metadata, a NUL, then the bytes every stored chunk holds (see
//! `vitconv_tensors::fuzzing::zarr_metadata`, which also reads the array whole when it is small).
//!
//! Properties: no panic, no allocation beyond the grid's named limits, and a grid that reads gives exactly
//! its size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vitconv_tensors::fuzzing::zarr_metadata(data);
});
