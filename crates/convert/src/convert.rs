//! Runs a conversion: detect the source, build the layout's plan, then stream it into an atomic writer.
//!
//! Memory holds one output tensor at a time (for fused q/k/v, the three inputs and the output), never the model.
//! Weights go through `vitconv_tensors::Writer` (temporary file beside the target, renamed by `finish`), and the
//! small JSON side files are written the same way after it: a failed run leaves no partial output and an
//! existing output untouched. (A run killed by a signal can leave the writer's temporary file, never a
//! half-written target.)

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use vitconv_tensors::{output_format, DType, Format, TensorFile, TensorSpec, Writer};

use crate::arch::Arch;
use crate::detect::detect_vit_jax;
use crate::error::{Error, Result};
use crate::layout;
use crate::layout::hf;
use crate::options::{Options, OutDType};
use crate::plan::{Fetch, OutTensor, OutputKind, Plan, Scratch};

impl Fetch for TensorFile {
    fn fetch(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.read_f32(name)?)
    }
    fn fetch_into(&self, name: &str, out: &mut Vec<f32>) -> Result<()> {
        // Decoded piece by piece through the reader's one small buffer: no tensor-sized byte vector.
        let info = self.get(name).ok_or_else(|| Error::Unrecognised {
            recognised: "the planned source".to_string(),
            missing: format!("tensor {name} vanished"),
        })?;
        let dtype = info.dtype;
        out.clear();
        // Exact capacity: growing by doubling would leave up to twice the tensor allocated. The reader has
        // checked at open that the file really holds this many elements.
        out.reserve_exact(info.numel().unwrap_or(0));
        let mut bad = None;
        self.read_chunked(name, READ_CHUNK, |chunk| {
            if let Err(e) = decode_append(name, dtype, chunk, out) {
                bad.get_or_insert(e);
            }
        })?;
        bad.map_or(Ok(()), Err)
    }
    fn fetch_raw(&self, name: &str) -> Result<(DType, Vec<u8>)> {
        let dtype = self
            .get(name)
            .map(|t| t.dtype)
            .ok_or_else(|| Error::Unrecognised {
                recognised: "the planned source".to_string(),
                missing: format!("tensor {name} vanished"),
            })?;
        Ok((dtype, self.read(name)?))
    }
}

/// Bytes per piece when streaming a source tensor: fits in L2, so decoding finds it in cache.
const READ_CHUNK: usize = 1 << 20;

/// Appends little-endian float bytes, decoded, to `out`.
fn decode_append(name: &str, dtype: DType, bytes: &[u8], out: &mut Vec<f32>) -> Result<()> {
    match dtype {
        DType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .filter_map(|c| c.try_into().ok())
                .map(f32::from_le_bytes),
        ),
        DType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .filter_map(|c| c.try_into().ok())
                .map(|b| half::bf16::from_le_bytes(b).to_f32()),
        ),
        DType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .filter_map(|c| c.try_into().ok())
                .map(|b| half::f16::from_le_bytes(b).to_f32()),
        ),
        // f64 weights are rare; narrowing them to f32 is what every target stores anyway.
        DType::F64 => out.extend(
            bytes
                .chunks_exact(8)
                .filter_map(|c| c.try_into().ok())
                .map(|b| f64::from_le_bytes(b) as f32),
        ),
        other => {
            return Err(Error::NotFloat {
                name: name.to_string(),
                dtype: other.to_string(),
            })
        }
    }
    Ok(())
}

/// A checked conversion, ready to write.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The source's architecture as detected.
    pub arch: Arch,
    /// Notes about the source itself (prefix, block naming).
    pub source_notes: Vec<String>,
    pub plan: Plan,
}

/// Detects the source and builds the plan for `opts`, refusing anything the layout cannot hold.
pub fn prepare(file: &TensorFile, opts: &Options) -> Result<Conversion> {
    let src = detect_vit_jax(file.tensors())?;
    let source_name = file
        .path()
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let plan = layout::plan(&src, opts, file, &source_name)?;
    plan.check_complete(&src.shapes, "vit_jax")?;
    let mut source_notes = Vec::new();
    if !src.names.prefix.is_empty() {
        source_notes.push(format!("keys under {}", src.names.prefix));
    }
    if src.names.style == crate::detect::BlockStyle::Linen {
        source_notes.push("linen block names".to_string());
    }
    if let Some(t) = file.tensors().iter().find(|t| t.dtype == DType::BF16) {
        source_notes.push(format!("stored as bfloat16 ({} and others)", t.name));
    }
    Ok(Conversion {
        arch: src.arch,
        source_notes,
        plan,
    })
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The weights file.
    pub weights: PathBuf,
    /// Side files (configs), in the order written.
    pub side_files: Vec<PathBuf>,
    pub tensors: usize,
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
    let (weights, format, sides, created_dir) = match plan.kind {
        OutputKind::File => {
            let format = match output_format(output) {
                Some(f @ (Format::Pt | Format::Safetensors)) => f,
                _ => {
                    return Err(Error::BadOption {
                        option: "OUTPUT",
                        why: format!(
                            "{}: the format follows the extension: .pt, .pth, .bin or .safetensors (a directory only for --layout hf)",
                            output.display()
                        ),
                    })
                }
            };
            let sides: Vec<(PathBuf, &str)> = plan
                .side_files
                .iter()
                .map(|s| (side_path(output, &s.name), s.contents.as_str()))
                .collect();
            for p in std::iter::once(output).chain(sides.iter().map(|s| s.0.as_path())) {
                if p.exists() && !opts.overwrite {
                    return Err(Error::Exists {
                        path: p.to_path_buf(),
                    });
                }
            }
            (output.to_path_buf(), format, sides, false)
        }
        OutputKind::HfDirectory => {
            if output.is_file() || output_format(output).is_some() {
                return Err(Error::BadOption {
                    option: "OUTPUT",
                    why: format!("{}: --layout hf writes a directory (config.json, model.safetensors, preprocessor_config.json); name one without a weights extension", output.display()),
                });
            }
            let existed = output.exists();
            if existed && !opts.overwrite {
                let nonempty = std::fs::read_dir(output)
                    .map_err(|e| Error::Io {
                        path: output.to_path_buf(),
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
            std::fs::create_dir_all(output).map_err(|e| Error::Io {
                path: output.to_path_buf(),
                source: e,
            })?;
            let sides = plan
                .side_files
                .iter()
                .map(|s| (output.join(&s.name), s.contents.as_str()))
                .collect();
            (
                output.join(hf::WEIGHTS_FILE),
                Format::Safetensors,
                sides,
                !existed,
            )
        }
    };
    let result = write_weights(file, plan, opts.dtype, &weights, format, progress).and_then(
        |(tensors, bytes)| {
            for (path, contents) in &sides {
                write_atomic(path, contents.as_bytes())?;
            }
            Ok(Written {
                weights: weights.clone(),
                side_files: sides.iter().map(|s| s.0.clone()).collect(),
                tensors,
                bytes,
            })
        },
    );
    if result.is_err() && created_dir {
        // Only a directory this run created is removed; an existing one keeps whatever it held.
        let _ = std::fs::remove_dir_all(output);
    }
    result
}

fn write_weights(
    file: &TensorFile,
    plan: &Plan,
    dtype: OutDType,
    path: &Path,
    format: Format,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(usize, u64)> {
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
    // The hf directory was checked (or created) by the caller, so the weights file inside may be replaced.
    let overwrite = true;
    let mut writer = Writer::create(path, format, specs, plan.metadata.clone(), overwrite)?;
    // Two stages overlap: a worker computes the next tensor's bytes while this thread writes the current one
    // (the write is mostly kernel time). Two buffers circulate between them, so memory stays at two output
    // tensors plus the worker's scratch, and a failure on either side stops both.
    std::thread::scope(|scope| -> Result<()> {
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Vec<u8>>>(1);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..2 {
            // Cannot fail: the receiver is alive in this scope.
            let _ = free_tx.send(Vec::new());
        }
        scope.spawn(move || {
            let mut scratch = Scratch::default();
            for t in &plan.tensors {
                let Ok(mut buf) = free_rx.recv() else { return };
                let result = produce(file, t, dtype, &mut scratch, &mut buf).map(|()| buf);
                let failed = result.is_err();
                if ready_tx.send(result).is_err() || failed {
                    return;
                }
            }
        });
        let mut done: u64 = 0;
        for t in &plan.tensors {
            let buf = ready_rx.recv().map_err(|_| Error::Worker {
                name: t.name.clone(),
            })??;
            writer.write_next(&buf)?;
            let _ = free_tx.send(buf);
            done = done.saturating_add(buf_len(t, out_dtype));
            progress(done, total);
        }
        Ok(())
    })?;
    writer.finish()?;
    Ok((plan.tensors.len(), total))
}

/// Bytes of one output tensor (checked against overflow when the total was computed).
fn buf_len(t: &OutTensor, dtype: DType) -> u64 {
    t.shape
        .iter()
        .product::<usize>()
        .saturating_mul(dtype.size()) as u64
}

/// Computes one output tensor's bytes into `buf` (replaced for plain copies, refilled otherwise).
fn produce(
    file: &TensorFile,
    t: &OutTensor,
    dtype: OutDType,
    scratch: &mut Scratch,
    buf: &mut Vec<u8>,
) -> Result<()> {
    let out_dtype = dtype.dtype();
    let expected = t.shape.iter().product::<usize>();
    let want = expected * out_dtype.size();
    // A plain copy in the output's own dtype goes through as the file's bytes, skipping two conversions.
    if let Some(src) = t.recipe.passthrough() {
        if file.get(src).map(|i| i.dtype) == Some(out_dtype) {
            let (_, bytes) = file.fetch_raw(src)?;
            if bytes.len() == want {
                *buf = bytes;
                return Ok(());
            }
        }
    }
    buf.clear();
    buf.reserve_exact(want);
    t.recipe.eval_bytes(file, scratch, dtype, buf)?;
    if buf.len() != want {
        return Err(Error::Length {
            name: t.name.clone(),
            shape: t.shape.clone(),
            expected,
            found: buf.len() / out_dtype.size(),
        });
    }
    Ok(())
}

/// Writes a small file through a temporary sibling and a rename, so readers never see half of it.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(contents).map_err(io)?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}
