//! Fuzzes the source readers, the layouts' plans and the detectors that read a family and an architecture
//! off a key/shape list.
//!
//! Input is text, one tensor a line: `NAME DIM,DIM,...` (an empty shape is a 0-d tensor), so
//! the seeds are real checkpoints' key lists and libFuzzer's mutations stay close to them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitconv_tensors::{DType, TensorInfo};

/// Layouts may fetch a few values (a head bias); the fuzzer has none to give.
struct NoValues;

impl vitconv_convert::plan::Fetch for NoValues {
    fn fetch(&self, param: &vitconv_convert::model::Param) -> vitconv_convert::Result<Vec<f32>> {
        Ok(vec![0.0; param.numel().unwrap_or(0).min(1 << 20)])
    }
}

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
    // The source families' readers (vit_jax, big_vision, SigLIP two-tower), which `npz-to-pt` trusts, and
    // the plan of every layout for what they accept: each answers with a model or an error, never a panic.
    if let Ok(model) = vitconv_convert::sources::read(&tensors) {
        for layout in vitconv_convert::Layout::ALL {
            let opts = vitconv_convert::Options::new(layout);
            let _ = vitconv_convert::layout::plan(&model, &opts, &NoValues, "fuzz.npz");
        }
    }
    if let Some(summary) = vitconv_convert::summarize(&tensors) {
        assert!(!summary.family.is_empty());
        assert!(!summary.architecture.is_empty());
    }
});
