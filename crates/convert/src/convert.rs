//! Runs a conversion: detect the source, build the layout's plan, then stream it into an atomic writer.
//!
//! Memory is bounded by a few bands, never a tensor or the model: the big matrices (Dense kernels, fused q/k/v)
//! are produced a band of output rows at a time, each band read a group of source rows at a time with
//! positional reads, and written through `Writer::write_part` (see `stream_recipe`). A deflated source member
//! cannot be read from the middle: one that is stacked `[depth, ...]` is inflated once, front to back, and each
//! block's slice handed to the outputs of that block as it comes out (`vitconv_tensors::TensorFile::slice_bands`,
//! `read_slice`), so memory is a slice, not the member; an unstacked deflated member is read whole (memory: that
//! tensor). Each source byte is read once: a slice of a stack is read alone, never the whole stack per block.
//! Producer threads (one on a 2-core machine) compute tensors while the calling thread writes them in order
//! (see `write_weights`).
//! Weights go through `vitconv_tensors::Writer` (temporary file beside the target, renamed by `finish`), and the
//! small JSON side files are written the same way after it: a failed run leaves no partial output and an
//! existing output untouched. An interrupt sets `Options::cancel`; the executor checks it between bands and
//! once more before anything is renamed into place, and returns `Error::Cancelled`, so the temporaries are
//! dropped (removed) and a folder this run created is removed, by normal unwinding: no process-global
//! registry, no exit from a handler thread (SIGKILL can still leave a temporary file).

use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use vitconv_tensors::{output_format, ColumnBands, DType, Format, TensorFile, TensorSpec, Writer};

use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::kernel::{self, encode_append, transpose_encode_bytes};
use crate::layout;
use crate::layout::hf_files;
use crate::model::{Param, Stacked};
use crate::options::{Options, OutDType};
use crate::plan::{Fetch, OutTensor, OutputKind, Plan, Recipe, OUTPUT_DIR_TOKEN};

impl Fetch for TensorFile {
    fn fetch(&self, param: &Param) -> Result<Vec<f32>> {
        match param.stack {
            None => Ok(self.read_f32(&param.tensor)?),
            // A slice of a stacked tensor is read alone (and a deflated member streamed once, slice after
            // slice), never the whole stack once per block.
            Some(Stacked { index, count }) => {
                Ok(self.read_slice_f32(&param.tensor, index, count)?)
            }
        }
    }
}

/// Reads a parameter as `[rows, ...]` bytes in bands of columns (see `TensorFile::column_bands`).
fn bands<'f>(file: &'f TensorFile, param: &Param, rows: usize) -> Result<ColumnBands<'f>> {
    match param.stack {
        None => Ok(file.column_bands(&param.tensor, rows)?),
        Some(Stacked { index, count }) => {
            Ok(file.slice_bands(&param.tensor, index, count, rows)?)
        }
    }
}

/// Appends little-endian float bytes, decoded, to `out`, or refuses a type that is not a float.
fn decode_append(name: &str, dtype: DType, bytes: &[u8], out: &mut Vec<f32>) -> Result<()> {
    if kernel::decode_append(dtype, bytes, out) {
        Ok(())
    } else {
        Err(Error::NotFloat {
            name: name.to_string(),
            dtype: dtype.to_string(),
        })
    }
}

/// A checked conversion, ready to write.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The source family (`vit_jax`, `big_vision`).
    pub family: &'static str,
    /// The source's architecture as detected.
    pub arch: Arch,
    /// Notes about the source itself (prefix, block naming).
    pub source_notes: Vec<String>,
    /// The layout's plan: output tensors, metadata, notes and side files.
    pub plan: Plan,
}

/// Detects the source and builds the plan for `opts`, refusing anything the layout cannot hold.
pub fn prepare(file: &TensorFile, opts: &Options) -> Result<Conversion> {
    let model = crate::sources::read(file.tensors()).map_err(|e| match e {
        // A file of no source family may be one already converted: say which layout it is in.
        Error::NotASource {
            tensors,
            layout: None,
        } => Error::NotASource {
            tensors,
            layout: layout::recognise(file.tensors()).map(|r| r.family),
        },
        e => e,
    })?;
    let source_name = file
        .path()
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let plan = layout::plan(&model, opts, file, &source_name)?;
    plan.check_complete(&model.shapes, &model.recognised)?;
    let mut source_notes = model.notes.clone();
    if let Some(t) = file.tensors().iter().find(|t| t.dtype == DType::BF16) {
        source_notes.push(format!("stored as bfloat16 ({} and others)", t.name));
    }
    Ok(Conversion {
        family: model.family,
        arch: model.image.arch,
        source_notes,
        plan,
    })
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// Whether OUTPUT was written as a folder (weights and configs inside it).
    pub folder: bool,
    /// The weights file.
    pub weights: PathBuf,
    /// Side files (configs), in the order written.
    pub side_files: Vec<PathBuf>,
    /// How many tensors the weights file holds.
    pub tensors: usize,
    /// How many bytes of tensor data were written.
    pub bytes: u64,
}

/// Where a `File` plan's side file goes: OUTPUT with its extension replaced by the suffix.
fn side_path(output: &Path, suffix: &str) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!("{stem}{suffix}"))
}

/// Writes the conversion to `output`, calling `progress(bytes_done, bytes_total)` after each tensor.
pub fn write(
    file: &TensorFile,
    conv: &Conversion,
    opts: &Options,
    output: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Written> {
    let plan = &conv.plan;
    // A layout that offers both writes a folder when OUTPUT names no weights file.
    let folder = match &plan.kind {
        OutputKind::File => false,
        OutputKind::HfDirectory | OutputKind::Directory { .. } => true,
        // An unknown extension is a mistake, not a folder name.
        OutputKind::FileOrFolder { .. } => output.is_dir() || output.extension().is_none(),
    };
    let (weights, format, sides, created_dirs) = match folder {
        false => {
            let format = match output_format(output) {
                Some(f @ (Format::Pt | Format::Safetensors)) => f,
                _ => {
                    return Err(Error::OutputExtension {
                        path: output.to_path_buf(),
                    })
                }
            };
            // A layout's folder files (`config.json`) belong to its folder form only.
            let sides: Vec<(PathBuf, std::borrow::Cow<'_, [u8]>)> = match plan.kind {
                OutputKind::FileOrFolder { .. } => Vec::new(),
                _ => plan
                    .side_files
                    .iter()
                    .map(|s| {
                        (
                            side_path(output, &s.name),
                            std::borrow::Cow::Borrowed(s.contents.as_bytes()),
                        )
                    })
                    .collect(),
            };
            for p in std::iter::once(output).chain(sides.iter().map(|s| s.0.as_path())) {
                if p.exists() && !opts.overwrite {
                    return Err(Error::Exists {
                        path: p.to_path_buf(),
                    });
                }
            }
            (output.to_path_buf(), format, sides, None)
        }
        true => {
            let weights_name = match plan.kind {
                OutputKind::Directory { weights } => weights,
                _ => hf_files::WEIGHTS_FILE,
            };
            if output.is_file() || output_format(output).is_some() {
                let files: Vec<&str> = std::iter::once(weights_name)
                    .chain(plan.side_files.iter().map(|s| s.name.as_str()))
                    .collect();
                return Err(Error::FolderOutputNotDirectory {
                    path: output.to_path_buf(),
                    layout: opts.layout.as_str(),
                    files: files.join(", "),
                });
            }
            let existed = output.exists();
            if existed && !opts.overwrite {
                let nonempty = std::fs::read_dir(output)
                    .map_err(|e| Error::Io {
                        path: output.to_path_buf(),
                        op: "cannot read the directory",
                        source: e,
                    })?
                    .next()
                    .is_some();
                if nonempty {
                    return Err(Error::Exists {
                        path: output.to_path_buf(),
                    });
                }
            }
            // The directories this run creates are removed again if it fails or is cancelled.
            let dirs = vitconv_tensors::create_dirs(output).map_err(|e| Error::Io {
                path: output.to_path_buf(),
                op: "cannot create the directory",
                source: e,
            })?;
            // A loader that resolves a path from the current directory gets the folder's absolute path.
            let absolute = std::fs::canonicalize(output).map_err(|e| Error::Io {
                path: output.to_path_buf(),
                op: "cannot resolve the directory",
                source: e,
            })?;
            let as_json = serde_json::to_string(&absolute.to_string_lossy())
                .unwrap_or_default()
                .trim_matches('"')
                .to_string();
            for s in &plan.side_files {
                // Side files in a subfolder (`image_tower/config.json`) get it created inside OUTPUT.
                if let Some(parent) = Path::new(&s.name)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                {
                    let dir = output.join(parent);
                    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
                        path: dir.clone(),
                        op: "cannot create the directory",
                        source: e,
                    })?;
                }
            }
            let sides = plan
                .side_files
                .iter()
                .map(|s| {
                    (
                        output.join(&s.name),
                        std::borrow::Cow::Owned(
                            s.contents.replace(OUTPUT_DIR_TOKEN, &as_json).into_bytes(),
                        ),
                    )
                })
                .chain(plan.copied_files.iter().map(|(name, bytes)| {
                    (
                        output.join(name),
                        std::borrow::Cow::Borrowed(bytes.as_slice()),
                    )
                }))
                .collect();
            (
                output.join(weights_name),
                Format::Safetensors,
                sides,
                Some(dirs),
            )
        }
    };
    // Inside an hf directory (checked or created above) the files may be replaced; a single-file output is
    // replaced only with --force, which the writer's no-clobber rename enforces even against a file that
    // appeared after the check above.
    let overwrite = opts.overwrite || folder;
    let result = (|| {
        // Side files are staged first and the weights written in full before anything is renamed into place,
        // so a failure anywhere (a side path that is a directory, a source tensor that breaks, a full disk)
        // leaves every existing output as it was.
        let staged = sides
            .iter()
            .map(|(path, contents)| stage_atomic(path, contents))
            .collect::<Result<Vec<_>>>()?;
        let target = WeightsTarget {
            path: &weights,
            format,
            overwrite,
        };
        let producers = opts.producers.unwrap_or_else(producers).max(1);
        let band_bytes = opts.band_bytes.unwrap_or(BAND_BYTES).max(1);
        let cancelled = || {
            opts.cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
        };
        let (writer, tensors, bytes) = write_weights(
            file,
            plan,
            opts.dtype,
            target,
            [producers, band_bytes],
            &cancelled,
            progress,
        )?;
        // The weights are completed and flushed first; only then are the side files and the weights renamed
        // into place, so a failure before that (a full disk at the last records, a target that is a
        // directory) leaves every earlier file as it was.
        let sealed = writer.seal()?;
        // The last moment to stop: after this, every file is renamed into place.
        if cancelled() {
            return Err(Error::Cancelled);
        }
        for side in staged {
            side.commit(overwrite)?;
        }
        sealed.commit()?;
        Ok(Written {
            folder,
            weights: weights.clone(),
            side_files: sides.iter().map(|s| s.0.clone()).collect(),
            tensors,
            bytes,
        })
    })();
    if let (Err(_), Some(dirs)) = (&result, &created_dirs) {
        // Only directories this run created are removed; an existing one keeps whatever it held.
        if !dirs.created().is_empty() {
            let _ = std::fs::remove_dir_all(output);
            for parent in dirs.created().iter().skip(1) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
    result
}

/// Where [`write_weights`] writes.
struct WeightsTarget<'a> {
    path: &'a Path,
    format: Format,
    overwrite: bool,
}

fn write_weights(
    file: &TensorFile,
    plan: &Plan,
    dtype: OutDType,
    WeightsTarget {
        path,
        format,
        overwrite,
    }: WeightsTarget<'_>,
    [producers, band_bytes]: [usize; 2],
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Writer, usize, u64)> {
    let out_dtype = dtype.dtype();
    let specs: Vec<TensorSpec> = plan
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: out_dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let mut total: u64 = 0;
    for t in &plan.tensors {
        let n = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let bytes = n.and_then(|n| n.checked_mul(out_dtype.size() as u64));
        total = bytes
            .and_then(|b| total.checked_add(b))
            .ok_or(Error::Overflow {
                name: t.name.clone(),
                what: "output size",
            })?;
    }
    let mut writer = Writer::create(path, format, specs, plan.metadata.clone(), overwrite)?;
    // Producers compute bands of output bytes while this thread writes them (the write is mostly kernel time):
    // each tensor goes to the producer with the fewest bytes so far (`owners`), so while one transposes a
    // kernel the other is already reading the next. (Taking turns tensor by tensor would give one producer
    // every kernel of a ViT block and the other only its biases.) Each producer has its own few band-sized
    // buffers, which the writer hands back once written, so memory stays at a few bands per producer whatever
    // the model's size, and a producer that runs ahead waits for its buffers instead of taking the other's.
    // A failure on any side stops them all: a producer's error reaches the writer in tensor order, and when the
    // writer stops, its ends of the channels close and every producer's next send or receive fails. Producers
    // are joined by hand, so that one that panicked (a bug) ends the conversion with an error, not a panic.
    let owners = owners(&plan.tensors, producers);
    std::thread::scope(|scope| -> Result<()> {
        let mut lanes = Vec::with_capacity(producers);
        let mut handles = Vec::with_capacity(producers);
        for k in 0..producers {
            let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Band>>(IN_FLIGHT);
            let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
            for _ in 0..BAND_BUFFERS {
                // Cannot fail: the receiver is alive in this scope.
                let _ = free_tx.send(Vec::new());
            }
            let owners = &owners;
            handles.push(scope.spawn(move || {
                let mut scratch = BandScratch::default();
                let mut emitter = Emitter {
                    free: &free_rx,
                    ready: &ready_tx,
                    sent: 0,
                    small: false,
                    band_bytes,
                };
                let mine = plan.tensors.iter().zip(owners).filter(|(_, &o)| o == k);
                for (t, _) in mine {
                    let produced = produce_tensor(file, t, dtype, &mut scratch, &mut emitter)
                        .and_then(|()| emitter.end(&t.name));
                    if let Err(e) = produced {
                        // The writer may already be gone (it failed first); then nobody needs the reason.
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
            }));
            lanes.push((ready_rx, free_tx));
        }
        let mut done: u64 = 0;
        let written = plan.tensors.iter().enumerate().try_for_each(|(i, t)| {
            let stopped = || Error::Worker {
                name: t.name.clone(),
            };
            let lane = owners.get(i).and_then(|&k| lanes.get(k));
            let (ready, free) = lane.ok_or_else(stopped)?;
            loop {
                // Checked between bands: a cancelled conversion stops here, and unwinding drops the writer
                // (removing its temporary) and closes the lanes (stopping the producers).
                if cancel() {
                    return Err(Error::Cancelled);
                }
                match ready.recv().map_err(|_| stopped())?? {
                    Band::Bytes(buf, at) => {
                        let data = buf.get(at).unwrap_or_default();
                        writer.write_part(data)?;
                        done = done.saturating_add(data.len() as u64);
                        // Back to the producer's pool.
                        let _ = free.send(buf);
                    }
                    Band::Small(buf, at) => {
                        let data = buf.get(at).unwrap_or_default();
                        writer.write_part(data)?;
                        done = done.saturating_add(data.len() as u64);
                    }
                    Band::End => break,
                }
                progress(done, total);
            }
            Ok(())
        });
        // Closing the writer's ends releases any producer still waiting on them.
        drop(lanes);
        // Every handle is joined (no short-circuit): one left to the scope would make it panic.
        let panicked = handles
            .into_iter()
            .map(|h| h.join().is_err())
            .fold(false, |a, b| a | b);
        match written {
            Err(e) => Err(e),
            Ok(()) if panicked => Err(Error::Worker {
                name: "(a producer thread)".to_string(),
            }),
            Ok(()) => Ok(()),
        }
    })?;
    // The caller renames the finished file into place once everything else is ready too.
    Ok((writer, plan.tensors.len(), total))
}

/// Largest band of output bytes (and of decoded source values) computed at once: the big matrices are written
/// in bands of this size, so peak memory does not grow with the model.
const BAND_BYTES: usize = 4 << 20;

/// Source rows read and transposed together (see `stream_recipe`): a multiple of the transpose's block, and
/// few enough that a group of a band's rows stays in cache.
const GROUP_ROWS: usize = 32;

/// Bytes of padding after each staged source row: one cache line, a whole number of elements of every type.
///
/// Source rows are usually a power of two bytes wide, so unpadded they would all map to the same few cache
/// sets, and the transpose, which reads down the rows, would evict each row's line before using all of it.
/// Padding them made the transpose 8-18% faster (`examples/transpose_bench.rs`, BENCHMARKS.md).
const STAGE_PAD: usize = 64;

/// A cache line, in bytes: transposed bands start on one, so that the transpose kernel can write whole
/// lines of output straight to memory (`kernel`).
const LINE: usize = 64;

/// Grows `buf` to hold `len` bytes starting on a cache line (see `LINE`), and returns where they are.
fn line_aligned(buf: &mut Vec<u8>, len: usize) -> Range<usize> {
    if buf.capacity() < len + LINE {
        buf.reserve(len + LINE - buf.len());
    }
    let at = buf.as_ptr().align_offset(LINE).min(LINE);
    sized(buf, at + len);
    at..at + len
}

/// The first `len` bytes of `buf`, growing it if needed but never shrinking it: a buffer reused for bands of
/// different sizes is zeroed once, at its largest, instead of on every regrowth.
fn sized(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf.get_mut(..len).unwrap_or_default()
}

/// Band buffers circulating between each producer and the writer: some being filled (up to
/// `BANDS_PER_PASS`) while the others wait or are written. With fewer than twice `BANDS_PER_PASS`, the
/// producer waited for the writer to free a whole pass's worth before starting the next (BENCHMARKS.md).
const BAND_BUFFERS: usize = 8;

/// Most bands of one tensor filled in one pass over its source rows.
///
/// A band is a run of the source's columns, so reading one skips the rest of every row; where the gap is
/// small, one read spans it anyway (`vitconv_tensors::MAX_SKIP`), and the skipped bytes are copied for
/// nothing. Filling four bands per pass reads a ViT-L MLP kernel (16 MB, four bands) in whole rows, which
/// cut the bytes read for ViT-L/32 by 40%; memory stays at `BAND_BUFFERS` bands. Bands of 4 MiB, four per
/// pass, were as fast as bands of 8 MiB, two per pass, and the memory grew less with the model.
const BANDS_PER_PASS: usize = 4;

// A pass takes its bands' buffers before it sends any: with fewer buffers than that it would wait forever.
const _: () = assert!(BANDS_PER_PASS < BAND_BUFFERS);

/// Tensors of at most this many output bytes (biases, LayerNorm parameters, the class token) are sent in a
/// buffer of their own instead of a band buffer. A ViT block has eight of them between its four big kernels;
/// when each held one of the band buffers while it waited to be written, the producer spent 15-25% of the
/// conversion waiting for a free buffer (BENCHMARKS.md).
const SMALL_BYTES: u64 = 256 << 10;

/// Messages a producer may have on their way to the writer: enough that the writer's queue never stalls a
/// producer that has a free band buffer (a queue of one message did, on every tensor's last band), and few
/// enough to bound the memory of queued small tensors (at most this many times `SMALL_BYTES`).
const IN_FLIGHT: usize = 64;

/// How many threads compute output tensors by default: two where the writer and both can each have a core,
/// else one. On the 2-core machine measured, a second producer competing with the writer for the two cores
/// made the conversion slightly slower, not faster (BENCHMARKS.md).
fn producers() -> usize {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() >= 3 => 2,
        _ => 1,
    }
}

/// Which of `producers` computes each tensor: the one with the fewest bytes assigned so far.
fn owners(tensors: &[OutTensor], producers: usize) -> Vec<usize> {
    let mut load = vec![0usize; producers.max(1)];
    tensors
        .iter()
        .map(|t| {
            let Some((k, least)) = load.iter_mut().enumerate().min_by_key(|(_, l)| **l) else {
                return 0;
            };
            *least = least.saturating_add(t.shape.iter().product::<usize>());
            k
        })
        .collect()
}

/// What a producer sends the writer.
enum Band {
    /// A buffer of the producer's pool whose bytes in the range continue the current tensor.
    Bytes(Vec<u8>, Range<usize>),
    /// A small tensor's bytes, whole, in a buffer of their own that the writer drops.
    Small(Vec<u8>, Range<usize>),
    /// The current tensor is complete; the next comes from the next producer.
    End,
}

/// A producer's reused buffers.
#[derive(Default)]
struct BandScratch {
    /// One group of source rows of a band (or a band of a copied tensor), as read.
    raw: Vec<u8>,
    /// The same band decoded.
    values: Vec<f32>,
}

/// Hands filled band buffers from a producer to the writer.
struct Emitter<'a> {
    free: &'a mpsc::Receiver<Vec<u8>>,
    ready: &'a mpsc::SyncSender<Result<Band>>,
    /// Bytes sent so far.
    sent: u64,
    /// Whether the current tensor is small (see `SMALL_BYTES`): its bytes then go in a buffer of their own.
    small: bool,
    /// The largest band, in bytes: `BAND_BYTES` but for tests.
    band_bytes: usize,
}

impl Emitter<'_> {
    /// Fills a free buffer with `fill`, which returns where in it the band's bytes are (a transposed band
    /// starts on a cache line, see `LINE`), and passes them on to be written.
    ///
    /// The buffer arrives holding earlier bands' bytes, and `fill` overwrites what it uses (see [`sized`]):
    /// clearing or shrinking it would make the next fill zero megabytes again before overwriting them.
    fn emit(
        &mut self,
        name: &str,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<Range<usize>>,
    ) -> Result<()> {
        let mut buf = self.take(name)?;
        let at = fill(&mut buf)?;
        self.send(name, buf, at)
    }

    /// A buffer to fill: a free one of the pool (waiting for the writer to hand one back if need be), or a
    /// new one for a small tensor. It goes back to the writer with [`Emitter::send`].
    fn take(&mut self, name: &str) -> Result<Vec<u8>> {
        if self.small {
            return Ok(Vec::new());
        }
        self.free.recv().map_err(|_| Error::Worker {
            name: name.to_string(),
        })
    }

    /// Passes the bytes of `buf` in `at` on to be written.
    fn send(&mut self, name: &str, buf: Vec<u8>, at: Range<usize>) -> Result<()> {
        let len = buf.get(at.clone()).map_or(0, <[u8]>::len);
        self.sent = self.sent.saturating_add(len as u64);
        let band = if self.small {
            Band::Small(buf, at)
        } else {
            Band::Bytes(buf, at)
        };
        self.ready.send(Ok(band)).map_err(|_| Error::Worker {
            name: name.to_string(),
        })
    }

    /// Tells the writer the current tensor is complete.
    fn end(&mut self, name: &str) -> Result<()> {
        self.ready.send(Ok(Band::End)).map_err(|_| Error::Worker {
            name: name.to_string(),
        })
    }
}

/// Streams one output tensor's bytes as bands, checking that they add up to exactly its size (the writer
/// moves on to the next tensor by byte count, so a short tensor must never reach it).
fn produce_tensor(
    file: &TensorFile,
    t: &OutTensor,
    dtype: OutDType,
    scratch: &mut BandScratch,
    em: &mut Emitter<'_>,
) -> Result<()> {
    let expected = t.shape.iter().product::<usize>();
    let want = expected.saturating_mul(dtype.dtype().size()) as u64;
    let before = em.sent;
    em.small = want <= SMALL_BYTES.min(em.band_bytes as u64 / 4);
    if want == 0 {
        // An empty part is what completes a zero-sized tensor in the writer.
        em.emit(&t.name, |_| Ok(0..0))?;
    } else {
        stream_recipe(file, &t.name, &t.recipe, dtype, scratch, em)?;
    }
    let found = em.sent.saturating_sub(before);
    if found != want {
        return Err(Error::Length {
            name: t.name.clone(),
            shape: t.shape.clone(),
            expected,
            found: usize::try_from(found).unwrap_or(usize::MAX) / dtype.dtype().size(),
        });
    }
    Ok(())
}

/// Streams the bytes of one recipe: transposes and copies band by band, the small recipes whole.
///
/// Band reads are positional on uncompressed sources; a deflated `.npz` member cannot be read from the
/// middle, so for those `column_bands` inflates the whole source tensor once and the memory is the tensor's
/// (a slice of a deflated stack: the slice's, from the member's one stream).
fn stream_recipe(
    file: &TensorFile,
    name: &str,
    recipe: &Recipe,
    dtype: OutDType,
    scratch: &mut BandScratch,
    em: &mut Emitter<'_>,
) -> Result<()> {
    match recipe {
        Recipe::Transpose { src, rows, cols } => {
            let (rows, cols) = (*rows, *cols);
            let in_dtype = float_source_dtype(src)?;
            check_len(src, rows, cols)?;
            if rows == 0 || cols == 0 {
                return Ok(());
            }
            let mut bands = bands(file, src, rows)?;
            // Output rows per band: the band's encoded output stays within `BAND_BYTES`. Up to BANDS_PER_PASS
            // bands are filled in one pass over the source, read GROUP_ROWS source rows at a time into a small
            // staging buffer and transposed from there while it is still in cache; reading the whole band
            // first and transposing it afterwards ran at half speed.
            let (in_size, out_size) = (in_dtype.size(), dtype.dtype().size());
            // The bands share the columns evenly, so that a tensor a little over one band is not written
            // as a full band and a sliver: memory then follows the model's size less.
            let per_band = (em.band_bytes / rows.saturating_mul(out_size)).max(1);
            let band_count = cols.div_ceil(per_band);
            let per_band = cols.div_ceil(band_count.max(1));
            let stage = &mut scratch.raw;
            let mut done = 0;
            while done < cols {
                let mut widths = Vec::with_capacity(BANDS_PER_PASS);
                let mut pass = 0;
                while widths.len() < BANDS_PER_PASS && done + pass < cols {
                    let n = per_band.min(cols - done - pass);
                    widths.push(n);
                    pass += n;
                }
                let mut outs = Vec::with_capacity(widths.len());
                for &n in &widths {
                    let mut buf = em.take(name)?;
                    let at = line_aligned(&mut buf, rows * n * out_size);
                    outs.push((buf, at));
                }
                // Staged rows sit a cache line further apart than their width (see `STAGE_PAD`).
                let pitch = pass * in_size + STAGE_PAD;
                let mut r0 = 0;
                while r0 < rows {
                    let g = GROUP_ROWS.min(rows - r0);
                    let group = sized(stage, g * pitch);
                    bands.read_rows_pitched(pass * in_size, pitch, group)?;
                    let mut c0 = 0;
                    for ((buf, at), &n) in outs.iter_mut().zip(&widths) {
                        let out = buf.get_mut(at.clone()).unwrap_or_default();
                        let strip = out.get_mut(r0 * out_size..).unwrap_or_default();
                        let src = group.get(c0 * in_size..).unwrap_or_default();
                        let shape = [g, n, pitch / in_size];
                        transpose_encode_bytes(src, in_dtype, shape, dtype, strip, rows);
                        c0 += n;
                    }
                    r0 += g;
                }
                for (buf, at) in outs {
                    em.send(name, buf, at)?;
                }
                done += pass;
            }
            Ok(())
        }
        Recipe::Concat(parts) => parts
            .iter()
            .try_for_each(|p| stream_recipe(file, name, p, dtype, scratch, em)),
        Recipe::Copy(src) => {
            let in_dtype = src.dtype;
            let numel = src.numel().unwrap_or(0);
            if numel == 0 {
                return Ok(());
            }
            // One row: the bands are consecutive pieces of the tensor, each a whole number of elements.
            let mut bands = bands(file, src, 1)?;
            let piece = (em.band_bytes / 4).max(1) * in_dtype.size();
            while bands.remaining() > 0 {
                let n = piece.min(bands.remaining());
                if in_dtype == dtype.dtype() {
                    // A copy in the output's own dtype goes through as the file's bytes.
                    em.emit(name, |buf| {
                        bands.read_rows(n, sized(buf, n))?;
                        Ok(0..n)
                    })?;
                } else {
                    let raw = sized(&mut scratch.raw, n);
                    bands.read_rows(n, raw)?;
                    scratch.values.clear();
                    decode_append(&src.describe(), in_dtype, raw, &mut scratch.values)?;
                    let values = &scratch.values;
                    em.emit(name, |buf| {
                        buf.clear();
                        encode_append(values, dtype, buf);
                        Ok(0..buf.len())
                    })?;
                }
            }
            Ok(())
        }
        Recipe::ConvKernel {
            src,
            hwio,
            in_scale: None,
        } => {
            // HWIO to OIHW is one transpose per input channel c: the kernel seen as a [(h w), o] matrix of
            // the rows of channel c, i rows apart, goes to the output's [o, (h w)] rows starting at c * (h w),
            // i * (h w) apart. Done from the file's bytes by the transpose kernel, this took a ViT-L/32 patch
            // kernel (12.6 MB) from 25-30 ms, through decoded copies, to about half, and the writer waits
            // for it before anything else.
            let in_dtype = float_source_dtype(src)?;
            let [h, w, i, o] = *hwio;
            let hw = h.saturating_mul(w);
            check_len(src, hw.saturating_mul(i), o)?;
            if hw == 0 || i == 0 || o == 0 {
                return Ok(());
            }
            let (in_size, out_size) = (in_dtype.size(), dtype.dtype().size());
            // Source rows are (position, channel) pairs of `o` values, read GROUP_ROWS positions (all their
            // channels) at a time into the padded stage.
            let mut bands = bands(file, src, hw * i)?;
            let pitch = o * in_size + STAGE_PAD;
            let stage = &mut scratch.raw;
            em.emit(name, |buf| {
                let at = line_aligned(buf, o * i * hw * out_size);
                let out = buf.get_mut(at.clone()).unwrap_or_default();
                let mut p0 = 0;
                while p0 < hw {
                    let g = GROUP_ROWS.min(hw - p0);
                    let group = sized(stage, g * i * pitch);
                    bands.read_rows_pitched(o * in_size, pitch, group)?;
                    for c in 0..i {
                        let from = group.get(c * pitch..).unwrap_or_default();
                        let to = out.get_mut((c * hw + p0) * out_size..).unwrap_or_default();
                        let shape = [g, o, i * pitch / in_size];
                        transpose_encode_bytes(from, in_dtype, shape, dtype, to, i * hw);
                    }
                    p0 += g;
                }
                Ok(at)
            })
        }
        // The rest are small (biases, position embedding) or scale the values they move (a patch kernel
        // folding in an input normalisation).
        other => em.emit(name, |buf| {
            buf.clear();
            other.eval_bytes(file, dtype, buf)?;
            Ok(0..buf.len())
        }),
    }
}

/// The stored element type of a planned source that is transposed, which must be a float type.
fn float_source_dtype(src: &Param) -> Result<DType> {
    if !src.dtype.is_float() {
        return Err(Error::NotFloat {
            name: src.describe(),
            dtype: src.dtype.to_string(),
        });
    }
    Ok(src.dtype)
}

/// Refuses a source whose element count is not `rows x cols`.
fn check_len(src: &Param, rows: usize, cols: usize) -> Result<()> {
    let found = src.numel().unwrap_or(0);
    if Some(found) != rows.checked_mul(cols) {
        return Err(Error::Length {
            name: src.describe(),
            shape: vec![rows, cols],
            expected: rows.saturating_mul(cols),
            found,
        });
    }
    Ok(())
}

/// Writes a small file through a temporary sibling and a rename, so readers never see half of it.
/// A small file written to a registered temporary beside its target, waiting to be renamed into place.
struct Staged {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
}

/// Writes `contents` to a temporary file beside `path`, removed when dropped like the writer's;
/// [`Staged::commit`] renames it into place.
fn stage_atomic(path: &Path, contents: &[u8]) -> Result<Staged> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        op: "cannot write a temporary file beside it",
        source: e,
    };
    let mut builder = tempfile::Builder::new();
    // Side files are ordinary outputs, readable like the weights beside them (0644), not private temporaries.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    // Removed when dropped, so a failed or cancelled run leaves none behind.
    let mut tmp = builder.tempfile_in(dir).map_err(io)?;
    tmp.write_all(contents).map_err(io)?;
    Ok(Staged {
        path: path.to_path_buf(),
        tmp,
    })
}

impl Staged {
    /// Renames the staged file into place; without `overwrite` an existing file is refused, not replaced.
    fn commit(self, overwrite: bool) -> Result<()> {
        let Staged { path, tmp } = self;
        let persisted = if overwrite {
            tmp.persist(&path)
        } else {
            tmp.persist_noclobber(&path)
        };
        persisted.map_err(|e| Error::Io {
            path: path.clone(),
            op: "cannot rename the temporary file into place",
            source: e.error,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::options::Layout;

    /// The same bytes whatever the band size, with one producer and with two.
    #[test]
    fn any_band_size_writes_the_same_file() {
        // Bands far smaller than the tensors: many per tensor, filled four per pass, the last pass often
        // with fewer, band sizes that divide nothing, and the type changes as well as plain copies.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let sources = [
            "vit-token/checkpoint.npz",
            "vit-token-variants/bfloat16.npz",
            "hybrid-r2/checkpoint.npz",
        ];
        for source in sources {
            let file = TensorFile::open(fixtures.join(source)).unwrap();
            for (layout, dtype, ext) in [
                (Layout::Timm, OutDType::F32, "safetensors"),
                (Layout::Timm, OutDType::BF16, "pt"),
                (Layout::OpenClip, OutDType::F16, "pt"),
            ] {
                if layout == Layout::OpenClip && source.starts_with("hybrid") {
                    continue;
                }
                let runs = [(1, None), (1, Some(4096)), (2, Some(3000)), (2, Some(1))];
                let mut opts = Options::new(layout);
                opts.dtype = dtype;
                let outputs = convert_runs(&file, &opts, ext, &runs);
                assert!(
                    outputs.windows(2).all(|w| w[0] == w[1]),
                    "{source} {layout:?} {dtype:?}"
                );
            }
        }
    }

    /// The output `out` streamed from source `name` of `shape`: an HWIO kernel written OIHW, a matrix
    /// transposed.
    fn streamed(name: &str, dtype: DType, out: &str, shape: &[usize]) -> OutTensor {
        let src = Param::whole(name, dtype, shape);
        let (shape, recipe) = match *shape {
            [h, w, i, o] => (
                vec![o, i, h, w],
                Recipe::ConvKernel {
                    src: src.clone(),
                    hwio: [h, w, i, o],
                    in_scale: None,
                },
            ),
            [rows, cols] => (vec![cols, rows], Recipe::Transpose { src, rows, cols }),
            _ => unreachable!("the test sources are 2-D or 4-D"),
        };
        OutTensor {
            name: out.to_string(),
            shape,
            recipe,
        }
    }

    /// A plan writing `tensors` to one file, and nothing else.
    fn plan_of(tensors: Vec<OutTensor>) -> Plan {
        Plan {
            kind: OutputKind::File,
            tensors,
            dropped: Vec::new(),
            metadata: BTreeMap::new(),
            notes: Vec::new(),
            python: String::new(),
            side_files: Vec::new(),
            copied_files: Vec::new(),
        }
    }

    /// Converts `file` once per run (producers, band size), with `opts` otherwise, to an `ext` file, and
    /// returns each output's bytes.
    fn convert_runs(
        file: &TensorFile,
        opts: &Options,
        ext: &str,
        runs: &[(usize, Option<usize>)],
    ) -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        runs.iter()
            .enumerate()
            .map(|(k, &(producers, band_bytes))| {
                let mut opts = opts.clone();
                opts.producers = Some(producers);
                opts.band_bytes = band_bytes;
                let conv = prepare(file, &opts).unwrap();
                let out = dir.path().join(format!("run-{k}.{ext}"));
                write(file, &conv, &opts, &out, &mut |_, _| {}).unwrap();
                std::fs::read(&out).unwrap()
            })
            .collect()
    }

    /// Writes `sources` (name, dtype, shape) as a stored `.npz` with made-up values, and returns each
    /// tensor's bytes.
    fn write_npz(path: &Path, sources: &[(&str, DType, Vec<usize>)]) -> Vec<Vec<u8>> {
        let specs = sources
            .iter()
            .map(|(name, dtype, shape)| TensorSpec {
                name: name.to_string(),
                dtype: *dtype,
                shape: shape.clone(),
            })
            .collect();
        let mut w = Writer::create(path, Format::Npz, specs, BTreeMap::new(), false).unwrap();
        let mut all = Vec::new();
        for (_, dtype, shape) in sources {
            let values = (0..shape.iter().product::<usize>())
                .map(|i| (i.wrapping_mul(2_654_435_761) % 1000) as f32 / 250.0 - 2.0);
            let bytes: Vec<u8> = match dtype {
                DType::BF16 => values
                    .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
                DType::F16 => values
                    .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => values.flat_map(f32::to_le_bytes).collect(),
            };
            w.write_next(&bytes).unwrap();
            all.push(bytes);
        }
        w.finish().unwrap();
        all
    }

    /// A damaged source kernel, streamed in bands or as a convolution, through one producer or two: the
    /// member's CRC-32 catches it, the conversion fails, and no file is left behind.
    #[test]
    fn a_damaged_kernel_stops_every_pipeline_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let sources = [
            ("k", DType::F32, vec![4, 4, 3, 24]),
            ("t", DType::F32, vec![96, 80]),
        ];
        let src = dir.path().join("src.npz");
        let data = write_npz(&src, &sources);
        let clean = std::fs::read(&src).unwrap();
        for (which, (name, dtype, shape)) in sources.iter().enumerate() {
            let mut bytes = clean.clone();
            let at = bytes
                .windows(data[which].len())
                .position(|w| w == data[which].as_slice())
                .unwrap();
            bytes[at + data[which].len() / 2] ^= 0x40;
            let damaged = dir.path().join(format!("damaged-{name}.npz"));
            std::fs::write(&damaged, &bytes).unwrap();
            let file = TensorFile::open(&damaged).unwrap();
            let plan = plan_of(vec![streamed(name, *dtype, "out", shape)]);
            for (producers, band_bytes) in [(1, BAND_BYTES), (2, 300), (2, 1)] {
                let out_dir = dir
                    .path()
                    .join(format!("out-{name}-{producers}-{band_bytes}"));
                std::fs::create_dir(&out_dir).unwrap();
                let out = out_dir.join("o.pt");
                let target = WeightsTarget {
                    path: &out,
                    format: Format::Pt,
                    overwrite: false,
                };
                let sizes = [producers, band_bytes];
                let result = write_weights(
                    &file,
                    &plan,
                    OutDType::F32,
                    target,
                    sizes,
                    &|| false,
                    &mut |_, _| {},
                );
                let err = result.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(err.contains("CRC"), "{name}, {producers} producers: {err}");
                let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
                assert!(left.is_empty(), "{name}, {producers} producers: {left:?}");
            }
        }
    }

    /// Streamed kernels of odd sizes in every float type, through one and two producers and bands of many
    /// sizes, against the whole-tensor definition of the same recipes (`Recipe::eval_bytes`).
    #[test]
    fn streamed_kernels_equal_their_whole_tensor_recipes() {
        let dir = tempfile::tempdir().unwrap();
        let sources: [(&str, DType, Vec<usize>); 7] = [
            ("k0", DType::F32, vec![3, 3, 2, 5]),
            ("k1", DType::BF16, vec![2, 20, 3, 9]),
            ("k2", DType::F16, vec![14, 14, 3, 40]),
            ("k3", DType::F32, vec![1, 1, 5, 8]),
            ("t0", DType::F32, vec![300, 257]),
            ("t1", DType::BF16, vec![64, 200]),
            ("t2", DType::F16, vec![33, 700]),
        ];
        let src = dir.path().join("src.npz");
        write_npz(&src, &sources);
        let file = TensorFile::open(&src).unwrap();
        let plan = plan_of(
            sources
                .iter()
                .map(|(name, dtype, shape)| streamed(name, *dtype, &format!("{name}.out"), shape))
                .collect(),
        );
        for dtype in [OutDType::F32, OutDType::BF16, OutDType::F16] {
            let want: Vec<Vec<u8>> = plan
                .tensors
                .iter()
                .map(|t| {
                    let mut bytes = Vec::new();
                    t.recipe.eval_bytes(&file, dtype, &mut bytes).unwrap();
                    bytes
                })
                .collect();
            for producers in [1, 2] {
                for band_bytes in [1, 300, 4096, BAND_BYTES] {
                    let out = dir
                        .path()
                        .join(format!("{dtype:?}-{producers}-{band_bytes}.safetensors"));
                    let target = WeightsTarget {
                        path: &out,
                        format: Format::Safetensors,
                        overwrite: false,
                    };
                    let sizes = [producers, band_bytes];
                    let (writer, ..) = write_weights(
                        &file,
                        &plan,
                        dtype,
                        target,
                        sizes,
                        &|| false,
                        &mut |_, _| {},
                    )
                    .unwrap();
                    writer.finish().unwrap();
                    let got = TensorFile::open(&out).unwrap();
                    for (t, want) in plan.tensors.iter().zip(&want) {
                        assert_eq!(
                            &got.read(&t.name).unwrap(),
                            want,
                            "{} as {dtype:?}, {producers} producers, bands of {band_bytes}",
                            t.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn any_number_of_producers_writes_the_same_file() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let sources = [
            "vit-token/checkpoint.npz",
            "vit-token-variants/bfloat16.npz",
        ];
        for source in sources {
            let file = TensorFile::open(fixtures.join(source)).unwrap();
            for ext in ["pt", "safetensors"] {
                let runs = [(1, None), (2, None), (3, None)];
                let outputs = convert_runs(&file, &Options::new(Layout::Timm), ext, &runs);
                assert!(outputs.windows(2).all(|w| w[0] == w[1]), "{source} {ext}");
            }
        }
    }
}
