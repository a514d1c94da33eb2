//! Fuzzes the detectors that read a family and an architecture off a key/shape list.
//!
//! Input is text, one tensor a line: `NAME DIM,DIM,...` (an empty shape is a 0-d tensor), so
//! the seeds are real checkpoints' key lists and libFuzzer's mutations stay close to them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitconv_tensors::{DType, TensorInfo};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut tensors = Vec::new();
    for line in text.lines() {
        let (name, dims) = line.rsplit_once(' ').unwrap_or((line, ""));
        let shape: Vec<usize> = dims
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.trim().parse().unwrap_or(0))
            .collect();
        tensors.push(TensorInfo {
            name: name.to_string(),
            dtype: DType::F32,
            shape,
            stored_as: None,
        });
    }
    // The conversion source's detector (vit_jax keys only), which `npz-to-pt` trusts.
    let _ = vitconv_convert::detect::detect_vit_jax(&tensors);
    if let Some(summary) = vitconv_convert::summarize(&tensors) {
        assert!(!summary.family.is_empty());
        assert!(!summary.architecture.is_empty());
    }
});
