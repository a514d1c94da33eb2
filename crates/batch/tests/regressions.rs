//! Replays the `batch_manifest` fuzz target's seeds (`fuzz/seeds/batch_manifest/`) and every input it found to
//! break a property (`tests/regressions/batch_manifest/`) through the properties the target asserts: the parser
//! never panics, keeps within its limits, and reads back what its serialiser writes of the entries.

use std::path::{Path, PathBuf};

use vitconv_batch::manifest::{self, MAX_ENTRIES};

/// Every input to replay, in name order; an empty replay would pass without testing anything.
fn inputs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        root.join("tests/regressions/batch_manifest"),
        root.join("../../fuzz/seeds/batch_manifest"),
    ];
    let mut v: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.map(|e| e.unwrap().path()))
        // Not the README, nor the `.gitkeep` that keeps an empty folder of regressions in git.
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_none_or(|n| n != "README.md" && !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no inputs to replay for batch_manifest");
    v
}

/// The fuzz target's checks, on one input.
fn check(data: &[u8]) {
    let (entries, problems) = manifest::parse(data);
    assert!(entries.len() <= MAX_ENTRIES);
    let lines = data.split(|&b| b == b'\n').count();
    assert!(problems.len() <= lines + 1);
    for (key, record) in &entries {
        assert_eq!(key, &record.source);
    }
    let text = manifest::serialise(&entries).unwrap();
    let (again, problems) = manifest::parse(text.as_bytes());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(again, entries);
}

#[test]
fn batch_manifest_regressions() {
    for input in inputs() {
        let data = std::fs::read(&input).unwrap();
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{}: a property failed", input.display());
    }
}

#[test]
fn the_seeds_written_by_real_runs_parse_cleanly() {
    // The seeds a batch run wrote (not the hand-made hostile ones) have no problem line.
    for input in inputs() {
        let name = input.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("interrupted") || name.starts_with("mixed") {
            continue;
        }
        let (entries, problems) = manifest::parse(&std::fs::read(&input).unwrap());
        assert!(problems.is_empty(), "{name}: {problems:?}");
        assert!(!entries.is_empty(), "{name}");
    }
}
