//! The source families vitconv converts from, one module each, and the one registry that lists them.
//!
//! A source family is a module with two functions: `claims` says from the keys alone whether a file is of that
//! family, and `read` describes a claimed file as a neutral [`Model`] or refuses it with a one-line reason.
//! Adding a family means adding its module and one line in [`SOURCES`]; no layout and no other family
//! changes. `inspect` recognises sources through the same registry.

pub mod big_vision;
pub(crate) mod keys;
pub mod siglip;
pub mod vit_jax;

use vitconv_tensors::TensorInfo;

use crate::error::{Error, Result};
use crate::model::Model;

/// One source family.
pub struct Source {
    /// The family's name in reports and metadata.
    pub name: &'static str,
    /// Whether a key/shape listing belongs to this family (the first family that claims a file reads it).
    pub claims: fn(&[TensorInfo]) -> bool,
    /// The listing as a model, or the reason it cannot be one.
    pub read: fn(&[TensorInfo]) -> Result<Model>,
}

/// Every source family, most specific first.
pub const SOURCES: &[Source] = &[
    Source {
        name: siglip::FAMILY,
        claims: siglip::claims,
        read: siglip::read,
    },
    Source {
        name: big_vision::FAMILY,
        claims: big_vision::claims,
        read: big_vision::read,
    },
    Source {
        name: vit_jax::FAMILY,
        claims: vit_jax::claims,
        read: vit_jax::read,
    },
];

/// Reads a file of any source family into the neutral model.
pub fn read(tensors: &[TensorInfo]) -> Result<Model> {
    if let Some(source) = SOURCES.iter().find(|s| (s.claims)(tensors)) {
        return (source.read)(tensors);
    }
    Err(Error::NotASource {
        tensors: tensors.len(),
        layout: None,
    })
}
