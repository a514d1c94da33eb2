//! The atomic tensor-file writer.

/// Writes a tensor file (not implemented yet).
#[derive(Debug)]
pub struct Writer;
