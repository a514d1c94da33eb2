//! PyTorch `.pt` archives (the zip format `torch.save` writes since 1.6): reading and writing.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use crate::npz::ZipEntry;
use crate::source::Location;
use crate::{Error, Result, TensorInfo};

/// What opening a `.pt` archive yields.
pub(crate) struct Opened {
    pub infos: Vec<TensorInfo>,
    pub locs: Vec<Location>,
    pub metadata: BTreeMap<String, String>,
}

pub(crate) fn open(path: &Path, _file: &File, _entries: &[ZipEntry]) -> Result<Opened> {
    Err(Error::unsupported(path, "", "pt reading is not implemented yet"))
}
