//! Runs a google-research/vision_transformer `.npz` and its conversion side by side on libtorch and reports how far their outputs are apart.

mod error;
pub mod ops;
mod params;
pub mod reference;

pub use error::{Error, Result};
