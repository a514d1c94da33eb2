//! Shared helpers for the fuzz targets: run one file's bytes through the whole public reader.

use std::io::Write;

use vitconv_tensors::TensorFile;

/// Chunk size for the streamed reads: small and odd, so chunk boundaries fall everywhere.
const CHUNK: usize = 61;

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
        let Ok(bytes) = tf.read(&info.name) else {
            continue;
        };
        assert_eq!(
            Some(bytes.len()),
            info.nbytes(),
            "read of `{}` returned a different length than its shape and dtype announce",
            info.name
        );
        // The streamed path must agree with the whole-tensor path, in whole elements.
        let mut streamed = Vec::with_capacity(bytes.len());
        let elem = info.dtype.size();
        let chunked = tf.read_chunked(&info.name, CHUNK, |piece| {
            assert!(piece.len() <= CHUNK.max(elem) && piece.len() % elem == 0);
            streamed.extend_from_slice(piece);
        });
        if chunked.is_ok() {
            assert!(
                streamed == bytes,
                "read_chunked of `{}` differs from read",
                info.name
            );
        }
    }
    let _ = tf.metadata();
}
