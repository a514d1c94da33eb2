//! `.npz` archives: a zip of `.npy` members, as `np.savez` / `np.savez_compressed` write them.
//!
//! Spec: <https://numpy.org/doc/stable/reference/generated/numpy.savez.html> and the zip
//! format (PKWARE APPNOTE 6.3, including zip64, which `np.savez` always writes). The
//! directory is parsed and validated by `zip_reader`; tensor data is then read here with
//! positional reads at each member's data offset, so reads need only `&self`. Opening reads
//! just the directory and each member's `.npy` header.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::npy;
use crate::source::{self, Location, MemberCrc};
use crate::{Error, Result, TensorInfo};

pub(crate) use crate::zip_reader::{read_directory, ZipEntry};

/// Opens an `.npz`: one tensor per `.npy` member, in directory order.
pub(crate) fn open(
    path: &Path,
    file: &File,
    entries: &[ZipEntry],
) -> Result<(Vec<TensorInfo>, Vec<Location>)> {
    let mut infos = Vec::with_capacity(entries.len());
    let mut locs = Vec::with_capacity(entries.len());
    for entry in entries {
        // np.load names a `.npy` member by its stem and any other member by its full name,
        // and loads either as an array if it is one; anything else is refused by name, so
        // nothing in the archive is left out without a word.
        let name = match entry.name.strip_suffix(".npy") {
            Some(stem) => stem,
            None => {
                let mut magic = [0u8; npy::MAGIC.len()];
                let mut probe = source::entry_reader(file, &entry.base, source::HEADER_INFLATE_BUF);
                if probe.read_exact(&mut magic).is_err() || &magic != npy::MAGIC {
                    return Err(Error::NpzNotAnArray {
                        path: path.to_path_buf(),
                        member: entry.name.clone(),
                    });
                }
                entry.name.as_str()
            }
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
