//! Micro-benchmark of the 4-byte transpose kernel as the converter drives it (BENCHMARKS.md).
//!
//! A ViT-L MLP kernel (`[1024, 4096]` f32, 16 MB) is transposed the way `npz-to-pt` does it: 32 source
//! rows at a time are copied into a staging buffer (standing in for the positional read), and each group
//! is transposed into a 4 MiB output band of 1024 output rows. Variants: the portable kernel and the
//! dispatching one (AVX where the processor has it); staged rows packed or padded by a cache line; the band
//! starting on a cache line (the AVX kernel then uses streaming stores) or 4 bytes past one (it cannot).
//! Each variant runs 5 times, interleaved, and prints its best and median throughput in GB/s of matrix
//! data and its ratio to the first variant's best. Every variant's output is checked against the first's.
//!
//! Run with `cargo run --release -p vitconv-convert --example transpose_bench`.

use std::time::Instant;

use vitconv_convert::kernel::{transpose4, transpose4_portable};

type Kernel = fn(&[[u8; 4]], [usize; 4], &mut [[u8; 4]]);

const ROWS: usize = 1024;
const COLS: usize = 4096;
/// Output rows per band (4 MiB of f32 output).
const BAND: usize = 1024;
const GROUP: usize = 32;
const REPS: usize = 5;

fn main() {
    let src: Vec<[u8; 4]> = (0..ROWS * COLS)
        .map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let variants: [(&str, Kernel, usize, usize); 5] = [
        (
            "portable, packed stage, aligned band",
            transpose4_portable,
            0,
            0,
        ),
        (
            "portable, padded stage, aligned band",
            transpose4_portable,
            16,
            0,
        ),
        ("dispatch, packed stage, aligned band", transpose4, 0, 0),
        ("dispatch, padded stage, misaligned band", transpose4, 16, 1),
        ("dispatch, padded stage, aligned band", transpose4, 16, 0),
    ];
    let mut band = vec![[0u8; 4]; BAND * ROWS + 32];
    let mut reference: Option<Vec<[u8; 4]>> = None;
    let mut times = vec![Vec::new(); variants.len()];
    for _ in 0..REPS {
        for (v, &(name, kernel, pad, shift)) in variants.iter().enumerate() {
            // Elements from the start of the buffer to the first cache line, plus the shift.
            let at = band.as_ptr().align_offset(64).min(16) + shift;
            let stride = BAND + pad;
            let mut stage = vec![[0u8; 4]; GROUP * stride];
            let mut first_band = Vec::new();
            let t = Instant::now();
            for b in 0..COLS / BAND {
                let out = &mut band[at..at + BAND * ROWS];
                for r0 in (0..ROWS).step_by(GROUP) {
                    for i in 0..GROUP {
                        let s = (r0 + i) * COLS + b * BAND;
                        stage[i * stride..i * stride + BAND].copy_from_slice(&src[s..s + BAND]);
                    }
                    kernel(&stage, [GROUP, BAND, stride, ROWS], &mut out[r0..]);
                }
                if b == 0 {
                    first_band = out.to_vec();
                }
            }
            times[v].push(t.elapsed().as_secs_f64());
            match &reference {
                None => reference = Some(first_band),
                Some(r) => assert!(
                    *r == first_band,
                    "{name}: output differs from the first variant's"
                ),
            }
        }
    }
    let gb = (ROWS * COLS * 4) as f64 / 1e9;
    let best0 = times[0].iter().cloned().fold(f64::INFINITY, f64::min);
    println!("transpose of [{ROWS}, {COLS}] f32 in {BAND}-row bands, {GROUP}-row groups, {REPS} runs each");
    for ((name, ..), t) in variants.iter().zip(&mut times) {
        t.sort_by(|a, b| a.total_cmp(b));
        let (best, median) = (t[0], t[t.len() / 2]);
        println!(
            "{name:42} best {:5.2} GB/s  median {:5.2} GB/s  {:4.2}x the first",
            gb / best,
            gb / median,
            best0 / best
        );
    }
}
