//! Fuzzes the flax msgpack tree walker: headers, declared lengths, ndarray extensions, chunked maps.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Errors are the usual outcome. What every accepted tree must satisfy (the sniff accepts
    // its start, every array's range lies inside the input with the length its shape and
    // dtype need) is asserted inside `msgpack_tree`, so a violation is a panic and a finding.
    let _ = vitconv_tensors::fuzzing::msgpack_tree(data);
});
