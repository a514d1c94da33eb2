//! Fuzzes the `.npy` header parser (magic, version, length, the Python dict literal).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((dtype, shape)) = vitconv_tensors::fuzzing::npy_header(data) {
        // A parsed header always names a known dtype; the shape may be anything representable.
        assert!(dtype.size() >= 1);
        let _ = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    }
});
