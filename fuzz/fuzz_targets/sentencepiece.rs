//! Fuzzes the SentencePiece `.model` reader `--tokenizer` uses: protobuf keys, varints, declared lengths, pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Errors are the usual outcome. What every accepted model must satisfy (its bytes kept, its pieces bounded by
    // its length, `</s>` among them, the vocabulary check exact) and every format refusal (an offset inside the
    // input) is asserted inside `fuzz_model`, so a violation is a panic and a finding. The parse allocates only a
    // copy of the input: `-malloc_limit_mb` catches anything more.
    let _ = vitconv_convert::tokenizer::fuzz_model(data);
});
