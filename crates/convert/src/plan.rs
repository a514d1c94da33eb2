//! A conversion plan: the output tensors in write order, each with the recipe that computes it from the source.
//!
//! Layouts build plans out of these few transforms; the executor in `convert.rs` streams transposes and copies a
//! band at a time (with [`crate::kernel::transpose_encode_bytes`]) and evaluates the small recipes whole ([`Recipe::eval`]).
//! Every recipe reads only the source tensors it names.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::kernel::{
    encode_append, encode_append_f64, fold_bias, hwio_to_oihw, restandardise, transpose,
};
use crate::model::Param;
use crate::options::{OutDType, ResizeMethod};
use crate::resize::resize_grid;

/// Reads source parameters; implemented for `TensorFile` and, in tests, for in-memory maps.
pub trait Fetch {
    /// The parameter's values as f32, in C order (one slice of a stacked tensor where it has an index).
    fn fetch(&self, param: &Param) -> Result<Vec<f32>>;
}

/// How one output tensor is computed.
#[derive(Debug, Clone, PartialEq)]
pub enum Recipe {
    /// The source values unchanged (only the shape label may change, e.g. `(1,1,1,C)` -> `(C,)`).
    Copy(Param),
    /// A source matrix `[rows, cols]` written as `[cols, rows]` (Dense kernels; q/k/v kernels seen as `[D, H*Dh]`).
    Transpose {
        /// The source matrix.
        src: Param,
        /// Rows of the source matrix.
        rows: usize,
        /// Columns of the source matrix.
        cols: usize,
    },
    /// Several recipes written one after the other along the first axis (fused q, k, v).
    Concat(Vec<Recipe>),
    /// An HWIO convolution kernel written OIHW, each input channel multiplied by `in_scale[c]` when given.
    ConvKernel {
        /// The source kernel.
        src: Param,
        /// Its height, width, input and output channels.
        hwio: [usize; 4],
        /// Per-input-channel factors (a folded normalisation's 1/std).
        in_scale: Option<Vec<f32>>,
    },
    /// A weight-standardised HWIO kernel (flax `StdConv`: `(w - mean) / (std + source_eps)` per output
    /// channel) written OIHW as the kernel that the target's own standardisation
    /// (`(w - mean) / sqrt(var + target_eps)`, timm's `StdConv2dSame`) turns into exactly the same
    /// standardised kernel: `a * T`, with `T` flax's standardised kernel and `a = sqrt(target_eps / (1 - var(T)))`.
    StdConvKernel {
        /// The source kernel, HWIO.
        src: Param,
        /// Its shape.
        hwio: [usize; 4],
        /// The eps the source adds to the standard deviation.
        source_eps: f64,
        /// The eps the target adds to the variance.
        target_eps: f64,
    },
    /// A patch bias plus the kernel applied to a constant per-channel input offset (the folded normalisation).
    PatchBias {
        /// The source bias.
        bias: Param,
        /// The source kernel.
        kernel: Param,
        /// The kernel's height, width, input and output channels.
        hwio: [usize; 4],
        /// The constant per-channel input offset (a folded normalisation's -mean/std).
        in_offset: Vec<f32>,
    },
    /// A position embedding `[.., prefix + grid, dim]`: prefix rows copied, grid resampled, `add_to_grid`
    /// (a `[dim]` vector, e.g. a folded patch bias) added to every grid row.
    PosEmbed {
        /// The source table.
        src: Param,
        /// Rows before the grid (1 for a class-token row).
        prefix_rows: usize,
        /// The source grid (rows, columns).
        from: (usize, usize),
        /// The output grid (rows, columns).
        to: (usize, usize),
        /// Width of each row.
        dim: usize,
        /// How the grid is resampled.
        method: ResizeMethod,
        /// A `[dim]` vector added to every grid row.
        add_to_grid: Option<Box<Recipe>>,
    },
    /// big_vision's `posemb_sincos_2d` for a `grid` of rows x columns and width `dim`, computed in f64 and
    /// rounded once to the output type; `add_to_grid` as for [`Recipe::PosEmbed`].
    Sincos2d {
        /// The grid (rows, columns).
        grid: (usize, usize),
        /// Width of each row.
        dim: usize,
        /// A `[dim]` vector added to every row.
        add_to_grid: Option<Box<Recipe>>,
    },
    /// `len` copies of one value (OpenAI CLIP's `ln_pre`, which the source does not have: weight 1, bias 0).
    Fill {
        /// The value.
        value: f32,
        /// How many copies.
        len: usize,
    },
    /// An `n x n` identity (CLIP-style `proj` with `--proj none`).
    Identity(usize),
}

impl Recipe {
    /// The source tensors this recipe reads.
    pub fn sources(&self, out: &mut BTreeSet<String>) {
        match self {
            Recipe::Copy(s)
            | Recipe::Transpose { src: s, .. }
            | Recipe::ConvKernel { src: s, .. }
            | Recipe::StdConvKernel { src: s, .. } => {
                out.insert(s.tensor.clone());
            }
            Recipe::Concat(parts) => parts.iter().for_each(|p| p.sources(out)),
            Recipe::PatchBias { bias, kernel, .. } => {
                out.insert(bias.tensor.clone());
                out.insert(kernel.tensor.clone());
            }
            Recipe::PosEmbed {
                src, add_to_grid, ..
            } => {
                out.insert(src.tensor.clone());
                if let Some(r) = add_to_grid {
                    r.sources(out);
                }
            }
            Recipe::Sincos2d { add_to_grid, .. } => {
                if let Some(r) = add_to_grid {
                    r.sources(out);
                }
            }
            Recipe::Fill { .. } | Recipe::Identity(_) => {}
        }
    }

    /// The single source tensor whose bytes are the output unchanged, if this is a plain copy.
    pub fn passthrough(&self) -> Option<&Param> {
        match self {
            Recipe::Copy(s) => Some(s),
            _ => None,
        }
    }

    /// Appends the output, encoded as `dtype`, to `out`. For the small recipes (patch kernel, biases, position
    /// embedding, stem convolutions): the executor streams transposes and copies band by band instead.
    pub fn eval_bytes(&self, src: &dyn Fetch, dtype: OutDType, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Recipe::Concat(parts) => {
                for p in parts {
                    p.eval_bytes(src, dtype, out)?;
                }
            }
            // Rounded once, from f64 to the output type, as the exactness asks.
            Recipe::Sincos2d {
                grid,
                dim,
                add_to_grid: None,
            } => encode_append_f64(&sincos2d(*grid, *dim), dtype, out),
            _ => encode_append(&self.eval(src)?, dtype, out),
        }
        Ok(())
    }

    /// Computes the output values.
    pub fn eval(&self, src: &dyn Fetch) -> Result<Vec<f32>> {
        match self {
            Recipe::Copy(s) => src.fetch(s),
            Recipe::Transpose { src: s, rows, cols } => {
                let v = fetch_len(src, s, &[*rows, *cols])?;
                Ok(transpose(&v, *rows, *cols))
            }
            Recipe::Concat(parts) => {
                let mut out = Vec::new();
                for p in parts {
                    out.extend(p.eval(src)?);
                }
                Ok(out)
            }
            Recipe::ConvKernel {
                src: s,
                hwio,
                in_scale,
            } => {
                let v = fetch_len(src, s, hwio)?;
                Ok(hwio_to_oihw(&v, *hwio, in_scale.as_deref()))
            }
            Recipe::StdConvKernel {
                src: s,
                hwio,
                source_eps,
                target_eps,
            } => {
                let v = fetch_len(src, s, hwio)?;
                let standardised = restandardise(&v, hwio[3], *source_eps, *target_eps);
                Ok(hwio_to_oihw(&standardised, *hwio, None))
            }
            Recipe::PatchBias {
                bias,
                kernel,
                hwio,
                in_offset,
            } => {
                let b = fetch_len(src, bias, &[hwio[3]])?;
                let k = fetch_len(src, kernel, hwio)?;
                Ok(fold_bias(&b, &k, *hwio, in_offset))
            }
            Recipe::PosEmbed {
                src: s,
                prefix_rows,
                from,
                to,
                dim,
                method,
                add_to_grid,
            } => {
                let rows = from.0 * from.1 + prefix_rows;
                let v = fetch_len(src, s, &[rows, *dim])?;
                let split = prefix_rows * dim;
                let (prefix, grid) = v.split_at(split.min(v.len()));
                let mut out = prefix.to_vec();
                let mut grid = if from == to {
                    grid.to_vec()
                } else {
                    resize_grid(grid, *from, *to, *dim, *method)
                };
                if let Some(add) = add_to_grid {
                    let a = add.eval(src)?;
                    if a.len() != *dim {
                        return Err(Error::Length {
                            name: s.describe(),
                            shape: vec![*dim],
                            expected: *dim,
                            found: a.len(),
                        });
                    }
                    for row in grid.chunks_exact_mut(*dim) {
                        row.iter_mut().zip(&a).for_each(|(g, a)| *g += a);
                    }
                }
                out.append(&mut grid);
                Ok(out)
            }
            Recipe::Sincos2d {
                grid,
                dim,
                add_to_grid,
            } => {
                let mut v: Vec<f32> = sincos2d(*grid, *dim).iter().map(|x| *x as f32).collect();
                if let Some(add) = add_to_grid {
                    let a = add.eval(src)?;
                    if a.len() != *dim {
                        return Err(Error::Length {
                            name: "sincos2d position embedding".to_string(),
                            shape: vec![*dim],
                            expected: *dim,
                            found: a.len(),
                        });
                    }
                    for row in v.chunks_exact_mut((*dim).max(1)) {
                        row.iter_mut().zip(&a).for_each(|(g, a)| *g += a);
                    }
                }
                Ok(v)
            }
            Recipe::Fill { value, len } => Ok(vec![*value; *len]),
            Recipe::Identity(n) => {
                let mut v = vec![0f32; n * n];
                v.iter_mut().step_by(n + 1).for_each(|x| *x = 1.0);
                Ok(v)
            }
        }
    }
}

/// big_vision's `posemb_sincos_2d` (`models/vit.py`) for an `h x w` grid and width `dim`, in f64: rows in
/// row-major `(y, x)` order, `omega = 1 / 10000^(k / (dim/4 - 1))` for `k < dim/4`, and each row
/// `[sin(x omega), cos(x omega), sin(y omega), cos(y omega)]`. (timm's own helper divides by `dim/4`,
/// not `dim/4 - 1`: a different table.) The source module guarantees `dim % 4 == 0`.
pub fn sincos2d((h, w): (usize, usize), dim: usize) -> Vec<f64> {
    let quarter = dim / 4;
    let denom = quarter.saturating_sub(1).max(1) as f64;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10_000f64.powf(k as f64 / denom))
        .collect();
    let mut out = Vec::with_capacity(h.saturating_mul(w).saturating_mul(dim));
    for y in 0..h {
        for x in 0..w {
            out.extend(omega.iter().map(|o| (x as f64 * o).sin()));
            out.extend(omega.iter().map(|o| (x as f64 * o).cos()));
            out.extend(omega.iter().map(|o| (y as f64 * o).sin()));
            out.extend(omega.iter().map(|o| (y as f64 * o).cos()));
        }
    }
    out
}

/// Fetches a tensor and checks it holds exactly the product of `shape` values.
fn fetch_len(src: &dyn Fetch, param: &Param, shape: &[usize]) -> Result<Vec<f32>> {
    let v = src.fetch(param)?;
    check_len(&param.describe(), shape, v.len())?;
    Ok(v)
}

/// Checks that `found` values fill `shape`.
fn check_len(name: &str, shape: &[usize], found: usize) -> Result<()> {
    let expected = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or(Error::Overflow {
            name: name.to_string(),
            what: "element count",
        })?;
    if found != expected {
        return Err(Error::Length {
            name: name.to_string(),
            shape: shape.to_vec(),
            expected,
            found,
        });
    }
    Ok(())
}

/// One tensor of the output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    /// The output tensor's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// How it is computed.
    pub recipe: Recipe,
}

/// Where the plan's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// One weights file (`.pt` / `.safetensors`), plus any side files.
    File,
    /// A Hugging Face model directory: `model.safetensors` and JSON configs inside OUTPUT.
    HfDirectory,
    /// A folder holding the weights under `weights` and the side files (some in subfolders: `a/b.json`); a
    /// side file may name the folder's absolute path through [`OUTPUT_DIR_TOKEN`].
    Directory {
        /// The weights file's name inside the folder.
        weights: &'static str,
    },
    /// One weights file when OUTPUT has a weights extension; otherwise a self-contained folder holding
    /// `model.safetensors` and the side files, which `python` (the folder's own loader line) builds from.
    FileOrFolder {
        /// The Python line that loads the folder (`OUTPUT_DIR` stands for its path).
        python: String,
    },
}

/// Stands for the output folder's absolute path inside a [`OutputKind::Directory`] side file; the writer
/// replaces it with the path written as JSON string content (for a loader that resolves a path from the current
/// directory, not from the config's own folder).
pub const OUTPUT_DIR_TOKEN: &str = "@VITCONV_OUTPUT_DIR@";

/// A side file written next to (or, for hf, inside) the output: e.g. `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct SideFile {
    /// For `File` outputs: the suffix replacing OUTPUT's extension (`.open_clip.json`); for hf: the file name.
    pub name: String,
    /// The file's contents.
    pub contents: String,
}

/// Everything a layout decided: tensors, metadata, messages, side files.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Whether the output is one file or an hf directory.
    pub kind: OutputKind,
    /// The output tensors in write order.
    pub tensors: Vec<OutTensor>,
    /// Source tensors deliberately left out, each with the option that asked for it (also in the notes).
    pub dropped: Vec<String>,
    /// Metadata stored in the weights file (`vitconv.*`).
    pub metadata: BTreeMap<String, String>,
    /// What was mapped, folded or dropped, one sentence each (also in `vitconv.notes`).
    pub notes: Vec<String>,
    /// Python that builds the matching model and loads the output.
    pub python: String,
    /// Files written beside (or, for hf, inside) the output.
    pub side_files: Vec<SideFile>,
    /// Files copied byte for byte into a folder output (a tokenizer's SentencePiece model), each name with
    /// its contents; a weights-file output has none.
    pub copied_files: Vec<(String, Vec<u8>)>,
}

impl Plan {
    /// Checks that every source tensor is read by some output or listed as dropped.
    pub fn check_complete(
        &self,
        source: &BTreeMap<String, Vec<usize>>,
        recognised: &str,
    ) -> Result<()> {
        let mut used = BTreeSet::new();
        for t in &self.tensors {
            t.recipe.sources(&mut used);
        }
        used.extend(self.dropped.iter().cloned());
        match source.iter().find(|(k, _)| !used.contains(*k)) {
            Some((name, shape)) => Err(Error::Unmapped {
                name: name.clone(),
                shape: shape.clone(),
                recognised: recognised.to_string(),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_fill() {
        struct None_;
        impl Fetch for None_ {
            fn fetch(&self, param: &Param) -> Result<Vec<f32>> {
                Err(Error::MissingTensor {
                    recognised: "test map".to_string(),
                    tensor: param.describe(),
                    role: None,
                })
            }
        }
        assert_eq!(
            Recipe::Identity(2).eval(&None_).ok(),
            Some(vec![1.0, 0.0, 0.0, 1.0])
        );
        assert_eq!(
            Recipe::Fill { value: 1.0, len: 3 }.eval(&None_).ok(),
            Some(vec![1.0; 3])
        );
    }
}
