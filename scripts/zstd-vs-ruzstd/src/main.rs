//! Decodes every zstd chunk file under a folder (a `.bv` checkpoint's `0`, `0.0`, ... chunks) with the `zstd`
//! crate and with `ruzstd`, alternating, and prints the best wall time of each and their ratio.
use std::io::Read as _;
use std::time::Instant;

fn chunks(dir: &std::path::Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let p = e.path();
        if p.is_dir() {
            chunks(&p, out);
        } else if !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.') || n == "checkpoint.bv-LAST") {
            out.push(std::fs::read(&p).expect("read"));
        }
    }
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: zstd-vs-ruzstd DIR");
    let mut all = Vec::new();
    chunks(std::path::Path::new(&dir), &mut all);
    let stored: usize = all.iter().map(Vec::len).sum();
    let mut best = [f64::MAX; 2];
    let mut decoded = 0usize;
    for _ in 0..3 {
        for (i, best) in best.iter_mut().enumerate() {
            let t = Instant::now();
            decoded = 0;
            let mut buf = Vec::new();
            for c in &all {
                buf.clear();
                if i == 0 {
                    zstd::stream::read::Decoder::new(c.as_slice()).expect("zstd").read_to_end(&mut buf).expect("zstd");
                } else {
                    ruzstd::decoding::StreamingDecoder::new(c.as_slice()).expect("ruzstd").read_to_end(&mut buf).expect("ruzstd");
                }
                decoded += buf.len();
            }
            *best = best.min(t.elapsed().as_secs_f64());
        }
    }
    println!("{} chunks, {} MB stored, {} MB decoded", all.len(), stored >> 20, decoded >> 20);
    println!("zstd (libzstd) {:.3} s ({:.0} MB/s), ruzstd {:.3} s ({:.0} MB/s), ruzstd / zstd {:.2}x",
        best[0], decoded as f64 / 1e6 / best[0], best[1], decoded as f64 / 1e6 / best[1], best[1] / best[0]);
}
