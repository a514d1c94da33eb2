//! A streaming writer of stored (uncompressed) zip archives, with zip64 and data alignment.
