//! Replays the `sentencepiece` fuzz target's inputs (`fuzz/seeds/sentencepiece/`: a real model and hand-made
//! hostile ones, and any crash found later in `tests/regressions/sentencepiece/`) through the same entry point
//! the target drives, [`vitconv_convert::tokenizer::fuzz_model`], which asserts what every outcome must satisfy.
//! Each must give an error or a consistent model, without a panic, within [`DEADLINE`].

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Longer than any input here takes by orders of magnitude; a hang is what it catches.
const DEADLINE: Duration = Duration::from_secs(60);

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        root.join("tests/regressions").join(target),
        root.join("../../fuzz/seeds").join(target),
    ];
    let mut v: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.map(|e| e.expect("a directory entry").path()))
        .collect();
    v.retain(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"));
    v.sort();
    // An empty replay would pass without testing anything.
    assert!(!v.is_empty(), "no inputs to replay for the {target} target");
    v
}

#[test]
fn sentencepiece_seeds_and_regressions() {
    let mut accepted = Vec::new();
    for input in inputs("sentencepiece") {
        let data = std::fs::read(&input).expect("reads");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r =
                std::panic::catch_unwind(|| vitconv_convert::tokenizer::fuzz_model(&data).is_ok());
            let _ = tx.send(r);
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(Ok(true)) => accepted.push(input.file_name().map(|n| n.to_owned())),
            Ok(Ok(false)) => {}
            Ok(Err(_)) => panic!("{}: panicked", input.display()),
            Err(_) => panic!("{}: did not finish within {DEADLINE:?}", input.display()),
        }
    }
    // The well-formed seeds parse, one of each kind and algorithm: a replay that refused everything would test
    // only the refusals. (`siglip2-tiny.model` is the SigLIP 2 golden Gemma-kind unigram vocabulary;
    // `gemma-bpe-byte-fallback.model` the BPE one with byte pieces that tests/python/test_siglip2.py trains.)
    for seed in [
        "minimal.model",
        "siglip2-tiny.model",
        "gemma-bpe-byte-fallback.model",
    ] {
        assert!(
            accepted.iter().any(|a| a.as_deref() == Some(seed.as_ref())),
            "{seed} was refused; accepted: {accepted:?}"
        );
    }
}
