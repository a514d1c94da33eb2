//! Fuzzes the allowlist pickle interpreter that reads a `.pt` archive's `data.pkl`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = vitconv_tensors::fuzzing::pickle_state_dict(data) {
        for (name, shape) in tensors {
            let _ = (name.len(), shape.len());
        }
    }
});
