//! The bookkeeping every source module shares while it reads a file: which tensors exist, with which shape
//! and dtype, which ones the model has accounted for, and the shape checks with their error messages.

use std::collections::{BTreeMap, BTreeSet};

use vitconv_tensors::TensorInfo;

use crate::arch::{linear_patch_side, LINEAR_PATCH_CHANNELS};
use crate::error::{Error, Result};
use crate::model::Param;

/// What a checkpoint was recognised as, with the root its tree sits under, for error messages
/// (`big_vision checkpoint under params/`).
pub(crate) fn under(what: &str, root: &str) -> String {
    if root.is_empty() {
        what.to_string()
    } else {
        format!("{what} under {root}")
    }
}

/// A key -> tensor view with a record of what detection has accounted for.
pub(crate) struct Keys<'a> {
    infos: BTreeMap<&'a str, &'a TensorInfo>,
    used: BTreeSet<String>,
    /// What has been recognised so far, for error messages (`vit_jax checkpoint under opt/target/`).
    pub recognised: String,
}

impl<'a> Keys<'a> {
    pub fn new(tensors: &'a [TensorInfo], recognised: &str) -> Self {
        Keys {
            infos: tensors.iter().map(|t| (t.name.as_str(), t)).collect(),
            used: BTreeSet::new(),
            recognised: recognised.to_string(),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.infos.contains_key(name)
    }

    /// The shape of a tensor that must be there; marks it used.
    pub fn need(&mut self, name: &str, what: &str) -> Result<&'a [usize]> {
        match self.infos.get(name) {
            Some(t) => {
                self.used.insert(name.to_string());
                Ok(t.shape.as_slice())
            }
            None => Err(Error::MissingTensor {
                recognised: self.recognised.clone(),
                tensor: name.to_string(),
                role: Some(what.to_string()),
            }),
        }
    }

    /// A tensor that must have exactly `expected` as its shape.
    pub fn need_shape(&mut self, name: &str, expected: &[usize], why: &str) -> Result<()> {
        let found = self.need(name, why)?;
        if found != expected {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: found.to_vec(),
                role: why.to_string(),
            });
        }
        Ok(())
    }

    /// A GroupNorm parameter: `(C,)` or `(1, 1, 1, C)` as the 2020 hybrid releases stored them.
    pub fn need_gn(&mut self, name: &str, channels: usize) -> Result<()> {
        let found = self.need(name, "GroupNorm parameter")?;
        if found != [channels] && found != [1, 1, 1, channels] {
            return Err(Error::GroupNormShape {
                name: name.to_string(),
                channels,
                found: found.to_vec(),
            });
        }
        Ok(())
    }

    /// The whole tensor `name` as a parameter. Source modules call it only for tensors they have checked
    /// with [`Keys::need`]; for any other name it is an error, not a panic.
    pub fn param(&self, name: &str) -> Result<Param> {
        match self.infos.get(name) {
            Some(t) => Ok(Param::whole(name, t.dtype, &t.shape)),
            None => Err(Error::MissingTensor {
                recognised: self.recognised.clone(),
                tensor: name.to_string(),
                role: None,
            }),
        }
    }

    /// Slice `index` of the tensor `name` stacked as `[count, ...]`, as a parameter of the slice's shape.
    pub fn slice(&self, name: &str, index: usize, count: usize) -> Result<Param> {
        match self.infos.get(name) {
            Some(t) if t.shape.first() == Some(&count) && index < count => Ok(Param::slice(
                name,
                t.dtype,
                index,
                count,
                t.shape.get(1..).unwrap_or_default(),
            )),
            Some(t) => Err(Error::NotStacked {
                name: name.to_string(),
                count,
                found: t.shape.clone(),
            }),
            None => Err(Error::MissingTensor {
                recognised: self.recognised.clone(),
                tensor: name.to_string(),
                role: None,
            }),
        }
    }

    /// The patch embedding: an HWIO kernel `[p, p, in, hidden]` with a square, non-empty patch, and its
    /// `[hidden]` bias; gives `[p, in, hidden]`.
    pub fn patch_embedding(&mut self, kernel: &str, bias: &str) -> Result<[usize; 3]> {
        let [ph, pw, in_chans, hidden] = dims(
            kernel,
            self.need(kernel, "patch embedding")?,
            "[p, p, in, hidden]",
            "HWIO patch kernel",
        )?;
        if ph != pw || ph == 0 || hidden == 0 {
            return Err(Error::NonSquarePatch {
                name: kernel.to_string(),
                found: vec![ph, pw, in_chans, hidden],
            });
        }
        self.need_shape(bias, &[hidden], "patch embedding bias")?;
        Ok([ph, in_chans, hidden])
    }

    /// A linear patch embedding (SigLIP 2 NaFlex): a `[p * p * 3, hidden]` kernel over RGB patches flattened
    /// in (py, px, c) order, and its `[hidden]` bias; gives `[p, 3, hidden]`. The patch size is stored nowhere
    /// else, so it is read off the rows (`arch::linear_patch_side`).
    pub fn linear_patch_embedding(&mut self, kernel: &str, bias: &str) -> Result<[usize; 3]> {
        let [rows, hidden] = dims(
            kernel,
            self.need(kernel, "linear patch embedding")?,
            "[p*p*3, hidden]",
            "linear patch kernel",
        )?;
        let Some(p) = linear_patch_side(rows).filter(|_| hidden > 0) else {
            return Err(Error::LinearPatchRows {
                name: kernel.to_string(),
                found: vec![rows, hidden],
            });
        };
        self.need_shape(bias, &[hidden], "patch embedding bias")?;
        Ok([p, LINEAR_PATCH_CHANNELS, hidden])
    }

    /// An optional dense layer `kernel` `[input, out]` with `bias` `[out]` (a `pre_logits` or a head): its
    /// output width when either tensor is there, and then both must be, of those shapes.
    pub fn optional_dense(
        &mut self,
        kernel: &str,
        bias: &str,
        input: usize,
        what: &'static str,
    ) -> Result<Option<usize>> {
        if !self.has(kernel) && !self.has(bias) {
            return Ok(None);
        }
        let [_, out] = dims(kernel, self.need(kernel, what)?, "[input, output]", what)?;
        self.need_shape(kernel, &[input, out], what)?;
        self.need_shape(bias, &[out], what)?;
        Ok(Some(out))
    }

    /// The first tensor detection has not accounted for, if any: a file is converted whole or not at all.
    pub fn unused(&self) -> Option<&'a TensorInfo> {
        self.infos
            .values()
            .find(|t| !self.used.contains(&t.name))
            .copied()
    }

    /// Refuses the listing when a tensor is left that no part of the model accounts for, naming it.
    pub fn check_all_used(&self) -> Result<()> {
        match self.unused() {
            Some(t) => Err(Error::Unmapped {
                name: t.name.clone(),
                shape: t.shape.clone(),
                recognised: self.recognised.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Every tensor's shape with the set-aside training state's, for the plan's completeness check, and the
    /// names of that state, which the model leaves out (and says so).
    pub fn shapes_and_left_out(
        &self,
        state: &[&TensorInfo],
    ) -> (BTreeMap<String, Vec<usize>>, Vec<String>) {
        let mut shapes = self.shapes();
        shapes.extend(state.iter().map(|t| (t.name.clone(), t.shape.clone())));
        (shapes, state.iter().map(|t| t.name.clone()).collect())
    }

    /// Every tensor's shape, for the plan's completeness check.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.infos
            .iter()
            .map(|(k, t)| (k.to_string(), t.shape.clone()))
            .collect()
    }
}

/// A shape as an array of `N` dimensions, or an error saying what was expected.
pub(crate) fn dims<const N: usize>(
    name: &str,
    shape: &[usize],
    expected: &'static str,
    role: &'static str,
) -> Result<[usize; N]> {
    shape.try_into().map_err(|_| Error::Rank {
        name: name.to_string(),
        expected,
        found: shape.to_vec(),
        role,
    })
}
