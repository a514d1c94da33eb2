//! `.npz` archives: a zip of `.npy` members, as `np.savez` / `np.savez_compressed` write them.
//!
//! Spec: <https://numpy.org/doc/stable/reference/generated/numpy.savez.html> and the zip
//! format (PKWARE APPNOTE 6.3, including zip64, which `np.savez` always writes). The `zip`
//! crate parses the central directory; tensor data is then read here with positional
//! reads at each member's data offset, so reads need only `&self`. Opening reads just
//! the directory and each member's `.npy` header.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use zip::result::ZipError;
use zip::CompressionMethod;

use crate::npy;
use crate::source::{self, Base, Location, MemberCrc};
use crate::{Error, Result, TensorInfo};

/// One entry of a zip's central directory, as far as this crate cares.
#[derive(Debug, Clone)]
pub(crate) struct ZipEntry {
    pub name: String,
    pub base: Base,
    /// The CRC-32 of the member's decoded bytes, as the central directory records it.
    pub crc32: u32,
}

/// Buffer for reading the central directory and local headers.
const DIRECTORY_BUF: usize = 64 * 1024;

/// Maps the zip crate's errors to ours, with a hint where the likely cause is known.
fn zip_error(path: &Path, err: ZipError) -> Error {
    match err {
        ZipError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Error::zip(
            path,
            "",
            format!("the directory points past the end of the file (truncated?): {e}"),
        ),
        ZipError::Io(e) => Error::io(path, e),
        ZipError::InvalidArchive(msg) => Error::zip(
            path,
            "",
            format!(
                "{msg} (no valid central directory: the file is probably truncated or not a zip)"
            ),
        ),
        other => Error::zip(path, "", other.to_string()),
    }
}

/// Reads a zip's central directory and each entry's data offset.
pub(crate) fn read_directory(path: &Path, file: &File, file_len: u64) -> Result<Vec<ZipEntry>> {
    let reader = BufReader::with_capacity(DIRECTORY_BUF, file);
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| zip_error(path, e))?;
    let mut entries = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(|e| zip_error(path, e))?;
        let name = entry.name().to_string();
        if entry.is_dir() {
            continue;
        }
        if entry.encrypted() {
            return Err(Error::unsupported(path, &name, "encrypted zip entry"));
        }
        let offset = entry.data_start();
        let compressed_len = entry.compressed_size();
        let len = entry.size();
        if offset.saturating_add(compressed_len) > file_len {
            return Err(Error::truncated(
                path,
                &name,
                offset,
                compressed_len,
                file_len.saturating_sub(offset),
            ));
        }
        let base = match entry.compression() {
            CompressionMethod::Stored => {
                if compressed_len != len {
                    return Err(Error::zip(
                        path,
                        &name,
                        format!("stored entry with compressed size {compressed_len} != size {len}"),
                    ));
                }
                Base::Stored { offset, len }
            }
            CompressionMethod::Deflated => {
                source::check_deflate_claim(path, &name, compressed_len, len)?;
                Base::Deflate {
                    offset,
                    compressed_len,
                    len,
                }
            }
            other => {
                return Err(Error::unsupported(
                    path,
                    &name,
                    format!("zip compression {other} (only stored and deflate)"),
                ))
            }
        };
        entries.push(ZipEntry {
            name,
            base,
            crc32: entry.crc32(),
        });
    }
    Ok(entries)
}

/// Opens an `.npz`: one tensor per `.npy` member, in directory order.
pub(crate) fn open(
    path: &Path,
    file: &File,
    entries: &[ZipEntry],
) -> Result<(Vec<TensorInfo>, Vec<Location>)> {
    let mut infos = Vec::with_capacity(entries.len());
    let mut locs = Vec::with_capacity(entries.len());
    for entry in entries {
        // np.load exposes only `.npy` members as arrays; anything else in the zip is not a tensor.
        let Some(name) = entry.name.strip_suffix(".npy") else {
            continue;
        };
        let mut reader = source::entry_reader(file, &entry.base, source::HEADER_INFLATE_BUF);
        let header = npy::read_header(&mut reader, path, name)?;
        let layout = header
            .layout()
            .ok_or_else(|| Error::shape_overflow(path, name, &header.shape))?;
        let info = TensorInfo {
            name: name.to_string(),
            dtype: header.dtype,
            shape: header.shape.clone(),
            stored_as: header.stored_as.clone(),
        };
        let loc = Location {
            base: entry.base.clone(),
            start: header.data_offset,
            layout,
            byteswap: header.byteswap,
            // The member is the `.npy` header plus the data, so a full read covers all of it.
            crc: Some(MemberCrc {
                member: entry.name.clone(),
                crc32: entry.crc32,
            }),
        };
        check_exact_size(path, &info, &loc)?;
        infos.push(info);
        locs.push(loc);
    }
    Ok((infos, locs))
}

/// An `.npy` member must hold exactly its header plus shape x dtype bytes, as numpy writes it.
pub(crate) fn check_exact_size(path: &Path, info: &TensorInfo, loc: &Location) -> Result<()> {
    let nbytes = info
        .nbytes()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| Error::shape_overflow(path, &info.name, &info.shape))?;
    let present = loc.base.len().saturating_sub(loc.start);
    if nbytes != present {
        return Err(Error::SizeMismatch {
            path: path.to_path_buf(),
            tensor: info.name.clone(),
            expected: nbytes,
            found: present,
        });
    }
    Ok(())
}
