//! Summary statistics of tensor data (min, max, mean, std, NaN and Inf counts), streamed from a [`TensorFile`].
//!
//! Statistics are taken over the finite values only and counted NaNs and infinities apart,
//! so one corrupt element does not hide the rest. They merge exactly (Chan et al.'s parallel
//! variance update), so callers can combine tensors, groups or chunks in any order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::source::{self, Base, Layout, Location};
use crate::{DType, Error, Result, TensorFile};

/// Summary statistics of one tensor (or of several merged), over its finite values.
///
/// `min`, `max`, `mean` and [`TensorStats::std`] are meaningful only when `count > 0`;
/// an empty (or all-NaN) tensor has `min = +inf`, `max = -inf` and `mean = 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorStats {
    /// Number of finite values.
    pub count: u64,
    /// Smallest finite value.
    pub min: f64,
    /// Largest finite value.
    pub max: f64,
    /// Mean of the finite values.
    pub mean: f64,
    /// Number of NaN values.
    pub nan: u64,
    /// Number of infinite values, of either sign.
    pub inf: u64,
    /// Sum of squared deviations from the mean (Chan et al.'s M2), kept rather than the
    /// standard deviation so that merging loses nothing to a square root and back.
    m2: f64,
}

impl Default for TensorStats {
    fn default() -> Self {
        TensorStats::EMPTY
    }
}

impl TensorStats {
    /// The statistics of no values: the identity of [`TensorStats::merge`].
    pub const EMPTY: TensorStats = TensorStats {
        count: 0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        mean: 0.0,
        nan: 0,
        inf: 0,
        m2: 0.0,
    };

    /// Population standard deviation of the finite values (0 when there are none).
    pub fn std(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).sqrt()
        }
    }

    /// Combines the statistics of two disjoint sets of values.
    #[must_use]
    pub fn merge(self, o: TensorStats) -> TensorStats {
        let count = self.count.saturating_add(o.count);
        let (mean, m2) = if count == 0 {
            (0.0, 0.0)
        } else {
            let (na, nb) = (self.count as f64, o.count as f64);
            let delta = o.mean - self.mean;
            let n = count as f64;
            (
                self.mean + delta * nb / n,
                self.m2 + o.m2 + delta * delta * na * nb / n,
            )
        };
        TensorStats {
            count,
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            mean,
            nan: self.nan.saturating_add(o.nan),
            inf: self.inf.saturating_add(o.inf),
            m2,
        }
    }

    /// Statistics of little-endian elements of `dtype` (a trailing partial element is ignored),
    /// computed without an intermediate `f32` copy; values are taken as `f32`, as
    /// [`TensorFile::read_f32`] would return them.
    pub fn of_bytes(dtype: DType, bytes: &[u8]) -> TensorStats {
        fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> TensorStats {
            TensorStats::of(bytes.chunks_exact(N).map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            }))
        }
        match dtype {
            DType::F64 => each(bytes, |a| f64::from_le_bytes(a) as f32),
            DType::F32 => stats_f32(bytes),
            DType::F16 => each(bytes, |a| half::f16::from_le_bytes(a).to_f32()),
            DType::BF16 => each(bytes, |a| half::bf16::from_le_bytes(a).to_f32()),
            DType::I64 => each(bytes, |a| i64::from_le_bytes(a) as f32),
            DType::I32 => each(bytes, |a| i32::from_le_bytes(a) as f32),
            DType::I16 => each(bytes, |a| f32::from(i16::from_le_bytes(a))),
            DType::I8 => each(bytes, |a| f32::from(i8::from_le_bytes(a))),
            DType::U8 => each(bytes, |a: [u8; 1]| f32::from(a[0])),
            DType::Bool => each(bytes, |a: [u8; 1]| f32::from(u8::from(a[0] != 0))),
        }
    }

    /// Statistics of a sequence of values, in one pass (the scalar path).
    ///
    /// Sums are taken around the first finite value (the "shifted data" method), which keeps
    /// the variance accurate when the mean is large against the spread, without Welford's
    /// division per element.
    fn of(values: impl Iterator<Item = f32>) -> TensorStats {
        let mut s = TensorStats::EMPTY;
        let mut shift: Option<f64> = None;
        let (mut sum, mut sumsq) = (0.0f64, 0.0f64);
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        // The counters count values of one in-memory slice, so they cannot reach 2^64: the
        // wrapping forms are the plain additions of a release build, with nothing added to the loop.
        for v in values {
            if v.is_nan() {
                s.nan = s.nan.wrapping_add(1);
                continue;
            }
            if v.is_infinite() {
                s.inf = s.inf.wrapping_add(1);
                continue;
            }
            min = min.min(v);
            max = max.max(v);
            let k = *shift.get_or_insert(f64::from(v));
            let d = f64::from(v) - k;
            sum += d;
            sumsq += d * d;
            s.count = s.count.wrapping_add(1);
        }
        if s.count > 0 {
            let n = s.count as f64;
            let k = shift.unwrap_or(0.0);
            s.mean = k + sum / n;
            s.m2 = (sumsq - sum * sum / n).max(0.0);
            s.min = f64::from(min);
            s.max = f64::from(max);
        }
        s
    }
}

/// Bytes read at a time by [`TensorFile::stats`]: small enough to stay in L2 cache between
/// the read and the statistics, large enough that system calls do not matter.
const STATS_CHUNK: usize = 256 * 1024;

/// Bytes [`TensorFile::stats`] may decode or visit, over all its calls on one open file, per
/// byte of the file: above deflate's 1032:1 ceiling, so one pass over every tensor of an
/// honest file always fits, while aliased views of one compressed storage or views that
/// repeat their storage cannot turn a small file into unbounded work.
const STATS_WORK_PER_FILE_BYTE: u64 = 2048;
/// Bytes it may decode or visit again (an entry seen before: aliases of one storage, tied
/// weights, views that overlap themselves) per byte of the file. Honest files view a storage
/// again rarely (tied embeddings), so this is far tighter: aliasing a compressed storage
/// thousands of times buys no more than this.
const STATS_REPEAT_PER_FILE_BYTE: u64 = 16;
/// Work every file gets on top of each budget, so small honest files are never refused.
const STATS_WORK_SLACK: u64 = 64 << 20;
/// The same for repeated work: room for a few views of a small file's storages.
const STATS_REPEAT_SLACK: u64 = 16 << 20;

impl TensorFile {
    /// Reads one tensor once, streamed through a small reused buffer, and returns its statistics.
    ///
    /// Like [`TensorFile::read`], callable from many threads at once (one tensor per thread).
    /// The total work of all calls on one file is bounded by a multiple of the file's size
    /// ([`Error::WorkBudget`] past it): a deflated entry that several tensors view is decoded
    /// once, and a strided view is walked in place, never materialised, with axes that repeat
    /// the storage (stride 0) counted by multiplicity rather than visited.
    pub fn stats(&self, name: &str) -> Result<TensorStats> {
        let (info, loc) = self.entry(name)?;
        let span = source::span_of(&self.path, info, loc)?;
        let shared = self.is_shared_deflate(loc);
        let dtype = info.dtype;
        let entry_len = loc.base.len();
        let first = self
            .stats_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry_key(loc));
        // Work on an entry's first sight counts as fresh, up to the entry's size; the rest repeats.
        let charge = |n: u64| {
            let fresh = if first { n.min(entry_len) } else { 0 };
            self.charge(name, fresh, n.saturating_sub(fresh))
        };
        if matches!(loc.layout, Layout::C) && !loc.byteswap && !shared {
            charge(decoded_cost(loc, span))?;
            let mut total = TensorStats::EMPTY;
            self.read_chunked(name, STATS_CHUNK, |piece| {
                total = total.merge(TensorStats::of_bytes(dtype, piece));
            })?;
            return Ok(total);
        }
        // Views, byte-swapped data and shared deflated entries: the bytes the tensor spans,
        // decoded once, then walked in place.
        let (bytes, at) = if shared {
            (self.decoded_entry(name, loc)?, loc.start)
        } else {
            charge(decoded_cost(loc, span))?;
            let raw = source::fetch(
                &self.file,
                &self.path,
                name,
                loc,
                span,
                source::crc_to_check(loc, span),
            )?;
            (Arc::new(raw), 0)
        };
        let strides = match &loc.layout {
            Layout::C => crate::pickle::contiguous_strides(&info.shape),
            Layout::Strided(s) => s.clone(),
        };
        // Axes of stride 0 repeat what the others reach; axes of one element add nothing.
        let mut repeat = 1u64;
        let mut shape = Vec::with_capacity(strides.len());
        let mut kept = Vec::with_capacity(strides.len());
        for (&d, &s) in info.shape.iter().zip(&strides) {
            if d == 0 {
                return Ok(TensorStats::EMPTY);
            }
            if s == 0 || d == 1 {
                repeat = repeat.saturating_mul(d as u64);
            } else {
                shape.push(d);
                kept.push(s);
            }
        }
        let visits = shape
            .iter()
            .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| Error::shape_overflow(&self.path, name, &info.shape))?;
        charge(visits)?;
        let view = View {
            dtype,
            shape: &shape,
            strides: &kept,
            byteswap: loc.byteswap,
        };
        let start = usize::try_from(at).unwrap_or(usize::MAX);
        let stats = view.stats(&bytes, start).ok_or_else(|| {
            Error::unsupported(&self.path, name, "strided view reaches outside its storage")
        })?;
        Ok(stats.repeated(repeat))
    }

    /// Counts bytes of decoding or visiting against the statistics' two work budgets.
    pub(crate) fn charge(&self, name: &str, fresh: u64, repeat: u64) -> Result<()> {
        for (n, counter, per_byte, slack) in [
            (
                fresh,
                &self.stats_work,
                STATS_WORK_PER_FILE_BYTE,
                STATS_WORK_SLACK,
            ),
            (
                repeat,
                &self.stats_repeat_work,
                STATS_REPEAT_PER_FILE_BYTE,
                STATS_REPEAT_SLACK,
            ),
        ] {
            if n == 0 {
                continue;
            }
            let budget = self.file_len.saturating_mul(per_byte).saturating_add(slack);
            let needed = counter.fetch_add(n, Ordering::Relaxed).saturating_add(n);
            if needed > budget {
                return Err(Error::WorkBudget {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    needed,
                    budget,
                    file_len: self.file_len,
                });
            }
        }
        Ok(())
    }
}

/// Identifies a location's entry: its file offset and decoded length.
pub(crate) fn entry_key(loc: &Location) -> (u64, u64) {
    (loc.base.offset(), loc.base.len())
}

/// Bytes a read of `span` bytes at `loc` decodes: a deflated entry is inflated from its start.
fn decoded_cost(loc: &Location, span: u64) -> u64 {
    match loc.base {
        Base::Stored { .. } => span,
        Base::Deflate { .. } | Base::Chunks(_) => loc.start.saturating_add(span),
    }
}

/// A strided view over decoded bytes, walked element by element in C order.
struct View<'a> {
    dtype: DType,
    shape: &'a [usize],
    /// Strides in elements, none of them zero.
    strides: &'a [usize],
    byteswap: bool,
}

impl View<'_> {
    /// Statistics of the view's elements, the first at byte `start` of `bytes`, gathered a
    /// chunk at a time; `None` if an element lies outside `bytes`.
    fn stats(&self, bytes: &[u8], start: usize) -> Option<TensorStats> {
        let elem = self.dtype.size();
        let numel = self
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))?;
        let mut chunk = Vec::with_capacity(STATS_CHUNK.min(numel.saturating_mul(elem)));
        let mut total = TensorStats::EMPTY;
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..numel {
            let mut at = 0usize;
            for (&i, &s) in index.iter().zip(self.strides) {
                at = at.checked_add(i.checked_mul(s)?)?;
            }
            let from = start.checked_add(at.checked_mul(elem)?)?;
            let value = bytes.get(from..from.checked_add(elem)?)?;
            let first = chunk.len();
            chunk.extend_from_slice(value);
            if self.byteswap {
                if let Some(e) = chunk.get_mut(first..) {
                    e.reverse();
                }
            }
            if chunk.len().saturating_add(elem) > STATS_CHUNK {
                total = total.merge(TensorStats::of_bytes(self.dtype, &chunk));
                chunk.clear();
            }
            // Advance the multi-index, last axis fastest.
            for axis in (0..index.len()).rev() {
                let (Some(i), Some(&d)) = (index.get_mut(axis), self.shape.get(axis)) else {
                    break;
                };
                // `*i` is below `d` here, so the increment cannot overflow.
                *i = i.saturating_add(1);
                if *i < d {
                    break;
                }
                *i = 0;
            }
        }
        Some(total.merge(TensorStats::of_bytes(self.dtype, &chunk)))
    }
}

impl TensorStats {
    /// The statistics of these values each repeated `k` times (a view's stride-0 axes).
    fn repeated(self, k: u64) -> TensorStats {
        if k == 1 {
            return self;
        }
        TensorStats {
            count: self.count.saturating_mul(k),
            nan: self.nan.saturating_mul(k),
            inf: self.inf.saturating_mul(k),
            m2: self.m2 * k as f64,
            ..self
        }
    }
}

/// Lanes of the vectorisable f32 kernel (two SSE or one AVX register).
const LANES: usize = 8;

/// Elements per block of the f32 kernel: partial sums stay in f32 within a block (at most
/// `FAST_BLOCK / LANES` terms per lane, around a shift) and are merged across blocks in f64.
const FAST_BLOCK: usize = 4096;

/// Statistics of little-endian f32 values, written so the compiler vectorises it.
///
/// Checkpoints are dominated by f32, and statistics must keep pace with the disk; the scalar
/// path ([`TensorStats::of`]) runs only for the tail of a block or a block holding NaN or Inf.
fn stats_f32(bytes: &[u8]) -> TensorStats {
    // Decode each block into a reused buffer first: whole-word loads that the loops below
    // can vectorise, where assembling floats from bytes in place would not be.
    let mut buf = vec![0f32; FAST_BLOCK];
    let mut total = TensorStats::EMPTY;
    for block in bytes.chunks(FAST_BLOCK * 4) {
        let mut n = 0usize;
        for (dst, src) in buf.iter_mut().zip(block.chunks_exact(4)) {
            *dst = f32::from_le_bytes(src.try_into().unwrap_or([0; 4]));
            // At most `FAST_BLOCK`, the length of `buf`.
            n = n.wrapping_add(1);
        }
        total = total.merge(stats_f32_block(buf.get(..n).unwrap_or_default()));
    }
    total
}

/// Orders f32 bit patterns as integers: floats are sign-magnitude, so flipping the magnitude
/// bits of negatives makes integer order match float order (NaNs land beyond the infinities).
const fn order_key(bits: u32) -> i32 {
    let i = bits as i32;
    i ^ ((i >> 31) & 0x7fff_ffff)
}

/// Statistics of one block of f32 values: one simple loop per quantity, so each vectorises.
///
/// Kept out of line so its loops are compiled, checked (`objdump`) and profiled on their own.
#[inline(never)]
fn stats_f32_block(values: &[f32]) -> TensorStats {
    // Float min/max folds do not vectorise (NaN rules); integer ones do. The same keys tell
    // whether the block holds a NaN or an infinity: then the scalar path sorts them out.
    let kmin = values.iter().map(|x| order_key(x.to_bits())).min();
    let kmax = values.iter().map(|x| order_key(x.to_bits())).max();
    let (Some(kmin), Some(kmax)) = (kmin, kmax) else {
        return TensorStats::EMPTY;
    };
    if kmax >= order_key(f32::INFINITY.to_bits()) || kmin <= order_key(f32::NEG_INFINITY.to_bits())
    {
        return TensorStats::of(values.iter().copied());
    }
    let from_key = |k: i32| f64::from(f32::from_bits(order_key(k as u32) as u32));
    let shift = values.first().copied().unwrap_or(0.0);
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut sum = [0f32; LANES];
    let mut sumsq = [0f32; LANES];
    // One accumulator per loop: with two, the compiler pairs sum and sumsq of one lane into
    // a vector instead of eight lanes of one quantity. The block is in L1, so passes are cheap.
    for c in chunks.clone() {
        let Ok(v) = <&[f32; LANES]>::try_from(c) else {
            continue;
        };
        for (acc, &x) in sum.iter_mut().zip(v) {
            *acc += x - shift;
        }
    }
    for c in chunks {
        let Ok(v) = <&[f32; LANES]>::try_from(c) else {
            continue;
        };
        for (acc, &x) in sumsq.iter_mut().zip(v) {
            let d = x - shift;
            *acc += d * d;
        }
    }
    // The tail is the remainder of `values`, never longer.
    let whole = values.len().saturating_sub(tail.len());
    let mut s = TensorStats::EMPTY;
    if whole > 0 {
        let sum: f64 = sum.iter().map(|&v| f64::from(v)).sum();
        let sumsq: f64 = sumsq.iter().map(|&v| f64::from(v)).sum();
        let nf = whole as f64;
        s = TensorStats {
            count: whole as u64,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: f64::from(shift) + sum / nf,
            nan: 0,
            inf: 0,
            m2: (sumsq - sum * sum / nf).max(0.0),
        };
    }
    let mut s = s.merge(TensorStats::of(tail.iter().copied()));
    // The keys covered the whole block, tail included.
    s.min = from_key(kmin);
    s.max = from_key(kmax);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, TensorSpec, Writer};
    use std::collections::BTreeMap;

    /// Relative tolerance of the mean against a direct two-pass computation in f64.
    const MEAN_TOL: f64 = 1e-9;
    /// Absolute tolerance of the standard deviation against the two-pass computation.
    const STD_TOL: f64 = 1e-6;
    /// Tolerance of the vectorised f32 kernel against the scalar path, relative to the spread.
    const KERNEL_TOL: f64 = 1e-5;

    #[test]
    fn stats_match_a_two_pass_computation_and_merge() {
        let values: Vec<f32> = (0..1000)
            .map(|i| 1000.0 + (i as f32 * 0.37).sin())
            .collect();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let s = TensorStats::of(values.iter().copied());
        assert!((s.mean - mean).abs() < MEAN_TOL * mean);
        assert!(
            (s.std() - var.sqrt()).abs() < STD_TOL,
            "{} vs {}",
            s.std(),
            var.sqrt()
        );
        let (a, b) = values.split_at(337);
        let m = TensorStats::of(a.iter().copied()).merge(TensorStats::of(b.iter().copied()));
        assert!((m.mean - mean).abs() < MEAN_TOL * mean);
        assert!((m.std() - var.sqrt()).abs() < STD_TOL);
        assert_eq!((m.min, m.max), (s.min, s.max));
        assert_eq!(TensorStats::EMPTY.merge(s), s);
    }

    #[test]
    fn stats_count_nan_and_inf_apart() {
        let s =
            TensorStats::of([1.0f32, f32::NAN, f32::INFINITY, 3.0, f32::NEG_INFINITY].into_iter());
        assert_eq!((s.count, s.nan, s.inf), (2, 1, 2));
        assert_eq!((s.min, s.max, s.mean), (1.0, 3.0, 2.0));
        let bytes: Vec<u8> = [half::bf16::from_f32(2.0), half::bf16::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = TensorStats::of_bytes(DType::BF16, &bytes);
        assert_eq!((s.count, s.nan, s.max), (1, 1, 2.0));
    }

    #[test]
    fn vectorised_f32_kernel_agrees_with_the_scalar_path() {
        // Negative and positive values, a block boundary, a ragged tail, and (second run) a NaN
        // and an infinity in the middle block.
        let mut values: Vec<f32> = (0..FAST_BLOCK * 2 + 13)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        for round in 0..2 {
            if round == 1 {
                values[FAST_BLOCK + 5] = f32::NAN;
                values[FAST_BLOCK + 9] = f32::NEG_INFINITY;
            }
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let fast = TensorStats::of_bytes(DType::F32, &bytes);
            let slow = TensorStats::of(values.iter().copied());
            assert_eq!(
                (fast.count, fast.nan, fast.inf),
                (slow.count, slow.nan, slow.inf)
            );
            assert_eq!((fast.min, fast.max), (slow.min, slow.max));
            assert!(
                (fast.mean - slow.mean).abs() < KERNEL_TOL * slow.std(),
                "{fast:?} {slow:?}"
            );
            assert!(
                (fast.std() - slow.std()).abs() < KERNEL_TOL * slow.std(),
                "{fast:?} {slow:?}"
            );
        }
    }

    #[test]
    fn file_stats_stream_the_whole_tensor_and_name_unknown_tensors() {
        // More than one read chunk, so the streamed pieces are merged.
        let n = STATS_CHUNK / 4 * 2 + 7;
        let values: Vec<f32> = (0..n).map(|i| (i % 997) as f32 - 400.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ints: Vec<u8> = [-3i16, 5, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let specs = vec![
            TensorSpec {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![n],
            },
            TensorSpec {
                name: "i".into(),
                dtype: DType::I16,
                shape: vec![3],
            },
        ];
        let mut w =
            Writer::create(&path, Format::Safetensors, specs, BTreeMap::new(), false).unwrap();
        w.write_next(&bytes).unwrap();
        w.write_next(&ints).unwrap();
        w.finish().unwrap();

        let file = TensorFile::open(&path).unwrap();
        let s = file.stats("w").unwrap();
        let direct = TensorStats::of(values.iter().copied());
        assert_eq!((s.count, s.min, s.max), (n as u64, -400.0, 596.0));
        assert!((s.mean - direct.mean).abs() < KERNEL_TOL * direct.std());
        assert!((s.std() - direct.std()).abs() < KERNEL_TOL * direct.std());
        let s = file.stats("i").unwrap();
        assert_eq!((s.count, s.min, s.max), (3, -3.0, 9.0));
        assert!((s.mean - 11.0 / 3.0).abs() < MEAN_TOL, "{s:?}");
        let err = file.stats("missing").unwrap_err();
        assert!(matches!(err, Error::UnknownTensor { .. }), "{err}");
        assert!(err.to_string().contains("`missing`"), "{err}");
    }
}
