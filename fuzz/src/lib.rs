//! Shared helpers for the fuzz targets: run one file's bytes through the whole public reader.

use std::io::Write;

use vitconv_tensors::TensorFile;

/// Writes `data` to a temporary file with `suffix`, opens it as a tensor file and reads every
/// tensor, checking each read returns exactly the bytes its shape and dtype announce.
///
/// Errors are the expected outcome for most inputs; a panic, an abort from the sanitizer, an
/// allocation over libFuzzer's `-rss_limit_mb`/`-malloc_limit_mb` or a timeout is a finding.
pub fn open_and_read_all(data: &[u8], suffix: &str) {
    let Ok(mut file) = tempfile::Builder::new().suffix(suffix).tempfile() else {
        return;
    };
    if file.write_all(data).and_then(|()| file.flush()).is_err() {
        return;
    }
    let Ok(tf) = TensorFile::open(file.path()) else {
        return;
    };
    for info in tf.tensors() {
        let _ = tf.get(&info.name);
        if let Ok(bytes) = tf.read(&info.name) {
            assert_eq!(
                Some(bytes.len()),
                info.nbytes(),
                "read of `{}` returned a different length than its shape and dtype announce",
                info.name
            );
        }
    }
    let _ = tf.metadata();
}
