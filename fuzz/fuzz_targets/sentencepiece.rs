//! Fuzzes the SentencePiece `.model` reader `--tokenizer` uses: protobuf keys, varints, declared lengths, pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Errors are the usual outcome. What every accepted model of either kind (SigLIP's `</s>`, Gemma's `<pad>
    // <eos> <bos> <unk>`) must satisfy (its bytes kept, its pieces bounded by its length, its special ids among
    // them, the vocabulary check exact, its kind's files written, the Gemma kind's tokenizer.json valid JSON) and
    // every format refusal (an offset inside the input) is asserted inside `fuzz_model`, so a violation is a
    // panic and a finding. The parse allocates a copy of the input and a small record per piece (each at least
    // two bytes of input); the Gemma kind's tokenizer.json is proportional to the pieces and their splits:
    // `-malloc_limit_mb` catches anything more.
    let _ = vitconv_convert::tokenizer::fuzz_model(data);
});
