//! Fuzzes the allowlist pickle interpreter that reads a `.pt` archive's `data.pkl`, and checks
//! its byte budget: the tensor names it produces never add up to more than the budget for
//! the pickle's length, however the memo and nesting repeat them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = vitconv_tensors::fuzzing::pickle_state_dict(data) {
        let names: u64 = tensors.iter().map(|(name, _)| name.len() as u64).sum();
        let budget = vitconv_tensors::fuzzing::pickle_budget(data.len());
        assert!(
            names <= budget,
            "{names} bytes of names over a budget of {budget}"
        );
        for (name, shape) in tensors {
            let _ = (name.len(), shape.len());
        }
    }
});
