//! Loads named tensors from a tensor file onto a libtorch device, checking their shapes first.
//!
//! Both forwards read their weights through this one door, so a missing tensor or a
//! shape that does not fit the architecture becomes an [`Error`] naming the file and
//! the tensor before any arithmetic runs, and the forwards themselves never meet a
//! shape they did not check.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};
use vitconv_tensors::TensorFile;

use crate::error::{Error, Result};

/// A tensor file opened for a forward: where its tensors go and in which precision.
pub(crate) struct Params {
    file: TensorFile,
    prefix: String,
    device: Device,
    kind: Kind,
    /// Tensors already on the device, so that a second forward (the timed one) reads no file.
    cache: RefCell<HashMap<String, Tensor>>,
}

impl Params {
    /// Wraps an opened file; `prefix` is put before every name asked for (`opt/target/`, or empty).
    pub(crate) fn new(file: TensorFile, prefix: &str, device: Device, kind: Kind) -> Params {
        Params {
            file,
            prefix: prefix.to_owned(),
            device,
            kind,
            cache: RefCell::new(HashMap::new()),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    pub(crate) fn file(&self) -> &TensorFile {
        &self.file
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    pub(crate) fn device(&self) -> Device {
        self.device
    }

    /// Whether the file holds `name` (under the prefix).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.file.get(&self.full(name)).is_some()
    }

    /// The shape of `name`, if the file holds it.
    pub(crate) fn shape(&self, name: &str) -> Option<&[usize]> {
        self.file
            .get(&self.full(name))
            .map(|info| info.shape.as_slice())
    }

    /// The shape of `name`, or an error saying which part of the model needed it.
    pub(crate) fn require_shape(&self, name: &str, why: &str) -> Result<&[usize]> {
        self.shape(name).ok_or_else(|| Error::MissingTensor {
            path: self.file.path().to_path_buf(),
            tensor: self.full(name),
            why: why.to_owned(),
        })
    }

    /// Loads `name`, whose shape must be exactly `expected`.
    pub(crate) fn load(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let full = self.full(name);
        let found = self.require_shape(name, "needed by the forward")?;
        if found != expected {
            return Err(Error::BadShape {
                path: self.file.path().to_path_buf(),
                tensor: full,
                expected: format!("{expected:?}"),
                found: found.to_vec(),
            });
        }
        self.load_any(name)
    }

    /// Loads `name` whatever its shape (the caller checks the shape it needs).
    pub(crate) fn load_any(&self, name: &str) -> Result<Tensor> {
        let full = self.full(name);
        if let Some(t) = self.cache.borrow().get(&full) {
            return Ok(t.shallow_clone());
        }
        let shape = self.require_shape(name, "needed by the forward")?;
        let dims = to_i64_dims(shape).ok_or_else(|| Error::BadShape {
            path: self.file.path().to_path_buf(),
            tensor: full.clone(),
            expected: "dimensions that fit in i64".to_owned(),
            found: shape.to_vec(),
        })?;
        // read_f32 returns exactly numel values, checked by the tensors crate against the
        // bytes really present, so the reshape below cannot disagree with the data.
        let values = self.file.read_f32(&full)?;
        let tensor = Tensor::f_from_slice(&values)?.f_reshape(dims.as_slice())?;
        let tensor = tensor.f_to_device(self.device)?.f_to_kind(self.kind)?;
        self.cache.borrow_mut().insert(full, tensor.shallow_clone());
        Ok(tensor)
    }

    fn full(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }
}

/// Converts a shape to libtorch's signed dimensions, or `None` when one does not fit.
pub(crate) fn to_i64_dims(shape: &[usize]) -> Option<Vec<i64>> {
    shape.iter().map(|&d| i64::try_from(d).ok()).collect()
}

/// A size from a shape as i64 (every shape was read from a file whose data is present, so
/// sizes are far below i64::MAX; the checked conversion keeps that an invariant, not a hope).
pub(crate) fn dim(value: usize) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Overflow {
        what: "a tensor dimension (libtorch's are i64)",
        dims: vec![value],
    })
}
