//! Fuzzes the batch manifest parser (`vitconv_batch::manifest::parse`): it must be total (no panic, whatever the
//! bytes), keep within its limits, and give back exactly what its own serialiser wrote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitconv_batch::manifest::{self, MAX_ENTRIES};

fuzz_target!(|data: &[u8]| {
    let (entries, problems) = manifest::parse(data);
    assert!(entries.len() <= MAX_ENTRIES);
    // At most one problem per line, and one for the limits.
    let lines = data.split(|&b| b == b'\n').count();
    assert!(problems.len() <= lines + 1, "{} problems, {lines} lines", problems.len());
    for (key, record) in &entries {
        assert_eq!(key, &record.source);
    }
    // What the serialiser writes of the entries reads back as the same entries, without a problem.
    let text = manifest::serialise(&entries).expect("records always serialise");
    let (again, problems) = manifest::parse(text.as_bytes());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(again, entries);
});
