//! A conversion plan: the output tensors in write order, each with the recipe that computes it from the source.
//!
//! Layouts build plans out of these few transforms. A plan is data: a recipe names its source parameters and
//! knows how many values it makes ([`Recipe::out_len`], checked against each output's shape once, when the plan
//! is made), and one interpreter, [`crate::exec`], gives every recipe its meaning, for a conversion and for a
//! test alike. Every recipe reads only the source tensors it names.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::model::Param;
use crate::options::ResizeMethod;

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

    /// How many values the recipe produces, from its own data: what its output tensor's shape must hold.
    /// `None` where the count overflows.
    pub fn out_len(&self) -> Option<usize> {
        let product = |dims: &[usize]| dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        match self {
            Recipe::Copy(s) => s.numel(),
            Recipe::Transpose { rows, cols, .. } => rows.checked_mul(*cols),
            Recipe::Concat(parts) => parts
                .iter()
                .try_fold(0usize, |a, p| a.checked_add(p.out_len()?)),
            Recipe::ConvKernel { hwio, .. } | Recipe::StdConvKernel { hwio, .. } => product(hwio),
            Recipe::PatchBias { hwio, .. } => Some(hwio[3]),
            Recipe::PosEmbed {
                prefix_rows,
                to,
                dim,
                ..
            } => product(&[to.0, to.1])?
                .checked_add(*prefix_rows)?
                .checked_mul(*dim),
            Recipe::Sincos2d { grid, dim, .. } => product(&[grid.0, grid.1, *dim]),
            Recipe::Fill { len, .. } => Some(*len),
            Recipe::Identity(n) => n.checked_mul(*n),
        }
    }
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
        /// The one side file in which [`OUTPUT_DIR_TOKEN`] stands for the folder's path, if any; no other
        /// file's text is touched.
        folder_path_in: Option<&'static str>,
    },
    /// One weights file when OUTPUT has a weights extension; otherwise a self-contained folder holding
    /// `model.safetensors` and the side files, which `python` (the folder's own loader line) builds from.
    FileOrFolder {
        /// The Python line that loads the folder ([`OUTPUT_DIR_TOKEN`] stands for its path).
        python: String,
    },
}

/// Stands for OUTPUT's path wherever a plan's text names it: in a [`OutputKind::Directory`] side file, where the
/// writer puts in the path as JSON string content (for a loader that resolves a path from the current
/// directory, not from the config's own folder), and in the Python a plan prints, where
/// [`crate::convert::python`] puts in a Python string literal. The one placeholder scheme of a plan's text.
pub const OUTPUT_DIR_TOKEN: &str = "@VITCONV_OUTPUT_DIR@";

/// Stands for the path of the side file written beside a weights-file output (open_clip's JSON config), in the
/// Python a plan prints; [`crate::convert::python`] puts in a Python string literal.
pub const CONFIG_JSON_TOKEN: &str = "@VITCONV_CONFIG_JSON@";

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
    /// Why a `File` plan has no folder form, for a user who named a folder (timm's hybrids).
    pub no_folder: Option<&'static str>,
}

impl Plan {
    /// Checks that every output's shape holds exactly the values its recipe makes ([`Recipe::out_len`]), so
    /// that a layout's mistake is refused before anything is written rather than found by the writer.
    pub fn check_shapes(&self) -> Result<()> {
        for t in &self.tensors {
            let holds = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let makes = t.recipe.out_len();
            if holds.is_none() || holds != makes {
                return Err(Error::Length {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    expected: holds.unwrap_or(usize::MAX),
                    found: makes.unwrap_or(usize::MAX),
                });
            }
        }
        Ok(())
    }

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
    use vitconv_tensors::DType;

    #[test]
    fn recipes_know_how_many_values_they_make() {
        let k = Param::whole("k", DType::F32, &[2, 3, 4, 5]);
        let cases = [
            (Recipe::Identity(3), Some(9)),
            (Recipe::Fill { value: 1.0, len: 7 }, Some(7)),
            (Recipe::Copy(k.clone()), Some(120)),
            (
                Recipe::Transpose {
                    src: k.clone(),
                    rows: 24,
                    cols: 5,
                },
                Some(120),
            ),
            (
                Recipe::ConvKernel {
                    src: k.clone(),
                    hwio: [2, 3, 4, 5],
                    in_scale: None,
                },
                Some(120),
            ),
            (
                Recipe::Concat(vec![
                    Recipe::Identity(2),
                    Recipe::Fill { value: 0.0, len: 3 },
                ]),
                Some(7),
            ),
            (
                Recipe::Sincos2d {
                    grid: (3, 4),
                    dim: 8,
                    add_to_grid: None,
                },
                Some(96),
            ),
            (
                Recipe::PosEmbed {
                    src: k,
                    prefix_rows: 1,
                    from: (2, 2),
                    to: (3, 3),
                    dim: 4,
                    method: ResizeMethod::Bilinear,
                    add_to_grid: None,
                },
                Some(40),
            ),
            (Recipe::Identity(usize::MAX), None),
        ];
        for (recipe, want) in cases {
            assert_eq!(recipe.out_len(), want, "{recipe:?}");
        }
    }
}
