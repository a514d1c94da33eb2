//! Reads a zip archive's directory (PKWARE APPNOTE 6.3, zip64 included) once, and validates it before anything trusts it.
//!
//! The discipline is the safetensors crate's: parse, then validate, with named limits. The
//! end record is looked for in one backward pass over the last [`MAX_TAIL`] bytes, and only
//! a record whose comment ends exactly at the end of the file is taken, so a file full of
//! false end records costs one scan, not one directory parse per candidate. The central
//! directory is then read with one positional read and parsed once. Before any member is
//! handed out, the archive must pass these checks:
//! - the directory ends exactly where the (zip64) end record begins, and holds as many
//!   entries as the end record declares;
//! - no name occurs twice, and every local header names the member its directory entry names;
//! - every member's bytes, from its local header through its data, lie before the directory
//!   and overlap no other member's, so no two tensors can be made of the same bytes.
//!
//! Data is inflated elsewhere (`source`), through `flate2`.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use crate::source::{self, Base};
use crate::{Error, Result};

/// One member of a zip archive, as far as this crate cares.
#[derive(Debug, Clone)]
pub(crate) struct ZipEntry {
    pub name: String,
    pub base: Base,
    /// The CRC-32 of the member's decoded bytes, as the central directory records it.
    pub crc32: u32,
}

/// Signature of the end-of-central-directory record.
const END_SIG: u32 = 0x0605_4b50;
/// Length of the end record without its comment.
const END_LEN: u64 = 22;
/// Longest comment an end record can carry.
const MAX_COMMENT: u64 = u16::MAX as u64;
/// The most bytes from the end of the file the end record can start at: all a search reads.
const MAX_TAIL: u64 = END_LEN + MAX_COMMENT;
/// Signature and length of the zip64 end-record locator, which sits just before the end record.
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_LOCATOR_LEN: u64 = 20;
/// Signature and fixed length of the zip64 end record.
const ZIP64_END_SIG: u32 = 0x0606_4b50;
const ZIP64_END_LEN: u64 = 56;
/// Signature and fixed length of a central-directory entry.
const CENTRAL_SIG: u32 = 0x0201_4b50;
const CENTRAL_LEN: usize = 46;
/// Signature and fixed length of a local file header.
const LOCAL_SIG: u32 = 0x0403_4b50;
const LOCAL_LEN: u64 = 30;
/// Extra-field tags: zip64 sizes and offsets, WinZip AES.
const ZIP64_EXTRA: u16 = 0x0001;
const AES_EXTRA: u16 = 0x9901;
/// The compression method WinZip AES members record.
const AES_METHOD: u16 = 99;
/// General-purpose flag bits: encrypted, strong encryption.
const FLAG_ENCRYPTED: u16 = 1;
const FLAG_STRONG_ENCRYPTION: u16 = 1 << 6;
/// A 32-bit field saturated to say "the value is in the zip64 extra field".
const SATURATED_32: u32 = u32::MAX;
/// A 16-bit count saturated to say "the value is in the zip64 end record".
const SATURATED_16: u16 = u16::MAX;

/// A little-endian field reader over a byte slice; every read is bounds-checked.
struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Some(a)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn left(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
}

/// What the end record (and the zip64 end record, where there is one) say about the directory.
struct EndRecord {
    /// Where the central directory must end: the zip64 end record, or the end record.
    directory_end: u64,
    entries: u64,
    directory_size: u64,
    directory_offset: u64,
}

/// Reads `len` bytes at `offset`, which the caller has checked lie inside the file (so `len`
/// fits in memory arithmetic wherever the file does).
fn read_at(path: &Path, file: &File, offset: u64, len: u64) -> Result<Vec<u8>> {
    let n = usize::try_from(len).map_err(|_| {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                "zip structure larger than the address space",
            ),
        )
    })?;
    let mut buf = vec![0u8; n];
    source::read_exact_at(file, &mut buf, offset).map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// Finds the end record in one backward pass over the file's tail; returns its offset and bytes.
///
/// Only a record whose comment ends exactly at the end of the file counts: that is where
/// every writer puts it, and it makes the choice unique without parsing any directory.
fn find_end_record(path: &Path, file: &File, file_len: u64) -> Result<(u64, Vec<u8>)> {
    if file_len < END_LEN {
        return Err(Error::ZipNoEndRecord {
            path: path.to_path_buf(),
            searched: file_len,
        });
    }
    let tail_len = file_len.min(MAX_TAIL);
    // The offsets below are positions within the tail, at most `MAX_TAIL` (and the tail ends at
    // `file_len`), so none of the saturating forms ever saturates.
    let tail_start = file_len.saturating_sub(tail_len);
    let tail = read_at(path, file, tail_start, tail_len)?;
    let sig = END_SIG.to_le_bytes();
    // The candidate nearest the end, for the error when none fits.
    let mut nearest: Option<(u64, u64)> = None;
    let last = tail.len().saturating_sub(END_LEN as usize);
    for i in (0..=last).rev() {
        let Some(candidate) = tail.get(i..).filter(|c| c.starts_with(&sig)) else {
            continue;
        };
        let comment = candidate
            .get(20..22)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map_or(0, |b| u64::from(u16::from_le_bytes(b)));
        let i = i as u64;
        let end = i.saturating_add(END_LEN).saturating_add(comment);
        if end == tail_len {
            let record = candidate
                .get(..END_LEN as usize)
                .unwrap_or_default()
                .to_vec();
            return Ok((tail_start.saturating_add(i), record));
        }
        nearest.get_or_insert((i, end));
    }
    match nearest {
        Some((i, end)) if end < tail_len => Err(Error::ZipTrailingData {
            path: path.to_path_buf(),
            offset: tail_start.saturating_add(i),
            trailing: tail_len.saturating_sub(end),
        }),
        Some((i, end)) => Err(Error::ZipShortRecord {
            path: path.to_path_buf(),
            member: String::new(),
            record: "end record and its comment",
            offset: tail_start.saturating_add(i),
            expected: end.saturating_sub(i),
            found: tail_len.saturating_sub(i),
        }),
        None => Err(Error::ZipNoEndRecord {
            path: path.to_path_buf(),
            searched: tail_len,
        }),
    }
}

/// Parses the end record, following the zip64 locator where there is one.
fn read_end_record(path: &Path, file: &File, file_len: u64) -> Result<EndRecord> {
    let (end_at, record) = find_end_record(path, file, file_len)?;
    let mut f = Fields::new(&record);
    let short = || Error::ZipShortRecord {
        path: path.to_path_buf(),
        member: String::new(),
        record: "end record",
        offset: end_at,
        expected: END_LEN,
        found: record.len() as u64,
    };
    let _sig = f.u32().ok_or_else(short)?;
    let disk = f.u16().ok_or_else(short)?;
    let directory_disk = f.u16().ok_or_else(short)?;
    let entries_here = f.u16().ok_or_else(short)?;
    let entries = f.u16().ok_or_else(short)?;
    let directory_size = f.u32().ok_or_else(short)?;
    let directory_offset = f.u32().ok_or_else(short)?;
    if disk != 0 || directory_disk != 0 || entries_here != entries {
        return Err(Error::ZipMultiDisk {
            path: path.to_path_buf(),
            disk: u32::from(disk),
            directory_disk: u32::from(directory_disk),
        });
    }
    let mut end = EndRecord {
        directory_end: end_at,
        entries: u64::from(entries),
        directory_size: u64::from(directory_size),
        directory_offset: u64::from(directory_offset),
    };

    // A zip64 locator, if any, sits immediately before the end record.
    let Some(locator_at) = end_at.checked_sub(ZIP64_LOCATOR_LEN) else {
        return Ok(end);
    };
    let locator = read_at(path, file, locator_at, ZIP64_LOCATOR_LEN)?;
    let mut f = Fields::new(&locator);
    if f.u32() != Some(ZIP64_LOCATOR_SIG) {
        return Ok(end);
    }
    let (Some(z64_disk), Some(z64_at), Some(disks)) = (f.u32(), f.u64(), f.u32()) else {
        return Err(Error::ZipShortRecord {
            path: path.to_path_buf(),
            member: String::new(),
            record: "zip64 end locator",
            offset: locator_at,
            expected: ZIP64_LOCATOR_LEN,
            found: locator.len() as u64,
        });
    };
    if z64_disk != 0 || disks > 1 {
        return Err(Error::ZipMultiDisk {
            path: path.to_path_buf(),
            disk: disks,
            directory_disk: z64_disk,
        });
    }
    if z64_at >= file_len {
        return Err(Error::ZipOffsetPastEnd {
            path: path.to_path_buf(),
            member: String::new(),
            what: "zip64 end record",
            offset: z64_at,
            file_len,
        });
    }
    if z64_at.saturating_add(ZIP64_END_LEN) > locator_at {
        return Err(Error::ZipShortRecord {
            path: path.to_path_buf(),
            member: String::new(),
            record: "zip64 end record",
            offset: z64_at,
            expected: ZIP64_END_LEN,
            found: locator_at.saturating_sub(z64_at),
        });
    }
    let z64 = read_at(path, file, z64_at, ZIP64_END_LEN)?;
    let mut f = Fields::new(&z64);
    if f.u32() != Some(ZIP64_END_SIG) {
        return Err(Error::ZipBadSignature {
            path: path.to_path_buf(),
            member: String::new(),
            record: "zip64 end record",
            offset: z64_at,
        });
    }
    let short = || Error::ZipShortRecord {
        path: path.to_path_buf(),
        member: String::new(),
        record: "zip64 end record",
        offset: z64_at,
        expected: ZIP64_END_LEN,
        found: z64.len() as u64,
    };
    let _record_size = f.u64().ok_or_else(short)?;
    let _made_by = f.u16().ok_or_else(short)?;
    let _needed = f.u16().ok_or_else(short)?;
    let disk = f.u32().ok_or_else(short)?;
    let directory_disk = f.u32().ok_or_else(short)?;
    let entries_here = f.u64().ok_or_else(short)?;
    let entries64 = f.u64().ok_or_else(short)?;
    let size64 = f.u64().ok_or_else(short)?;
    let offset64 = f.u64().ok_or_else(short)?;
    if disk != 0 || directory_disk != 0 || entries_here != entries64 {
        return Err(Error::ZipMultiDisk {
            path: path.to_path_buf(),
            disk,
            directory_disk,
        });
    }
    // The 16-bit count, unless saturated, must agree with the zip64 one.
    if entries != SATURATED_16 && u64::from(entries) != entries64 {
        return Err(Error::ZipEntryCount {
            path: path.to_path_buf(),
            declared: u64::from(entries),
            found: entries64,
        });
    }
    end.directory_end = z64_at;
    end.entries = entries64;
    end.directory_size = size64;
    end.directory_offset = offset64;
    Ok(end)
}

/// A central-directory entry, parsed but not yet validated against the file.
struct Central {
    name: String,
    raw_name: Vec<u8>,
    flags: u16,
    method: u16,
    crc32: u32,
    compressed: u64,
    size: u64,
    local_offset: u64,
    aes: bool,
}

/// Parses one central-directory entry at `f`'s position (`at` is its file offset, for errors).
fn parse_central(path: &Path, f: &mut Fields, at: u64) -> Result<Central> {
    let short = |found: usize| Error::ZipShortRecord {
        path: path.to_path_buf(),
        member: String::new(),
        record: "central directory entry",
        offset: at,
        expected: CENTRAL_LEN as u64,
        found: found as u64,
    };
    let left = f.left();
    let fixed = f.take(CENTRAL_LEN).ok_or_else(|| short(left))?;
    let mut h = Fields::new(fixed);
    if h.u32() != Some(CENTRAL_SIG) {
        return Err(Error::ZipBadSignature {
            path: path.to_path_buf(),
            member: String::new(),
            record: "central directory entry",
            offset: at,
        });
    }
    let _made_by = h.u16();
    let _needed = h.u16();
    let flags = h.u16().unwrap_or(0);
    let method = h.u16().unwrap_or(0);
    let _time_date = h.u32();
    let crc32 = h.u32().unwrap_or(0);
    let compressed32 = h.u32().unwrap_or(0);
    let size32 = h.u32().unwrap_or(0);
    let name_len = usize::from(h.u16().unwrap_or(0));
    let extra_len = usize::from(h.u16().unwrap_or(0));
    let comment_len = usize::from(h.u16().unwrap_or(0));
    let disk_start = h.u16().unwrap_or(0);
    let _internal = h.u16();
    let _external = h.u32();
    let offset32 = h.u32().unwrap_or(0);

    // Three 16-bit lengths, and what is left of a directory held in memory: no sum here can
    // come near `usize::MAX`.
    let variable = name_len
        .saturating_add(extra_len)
        .saturating_add(comment_len);
    let left = f.left();
    let short_variable = Error::ZipShortRecord {
        path: path.to_path_buf(),
        member: String::new(),
        record: "central directory entry",
        offset: at,
        expected: CENTRAL_LEN.saturating_add(variable) as u64,
        found: CENTRAL_LEN.saturating_add(left) as u64,
    };
    let (Some(raw_name), Some(extra), Some(_comment)) =
        (f.take(name_len), f.take(extra_len), f.take(comment_len))
    else {
        return Err(short_variable);
    };
    let name = String::from_utf8_lossy(raw_name).into_owned();

    let mut compressed = u64::from(compressed32);
    let mut size = u64::from(size32);
    let mut local_offset = u64::from(offset32);
    let mut disk = u32::from(disk_start);
    let mut aes = false;
    let mut x = Fields::new(extra);
    while x.left() >= 4 {
        let (Some(tag), Some(len)) = (x.u16(), x.u16()) else {
            break;
        };
        let Some(data) = x.take(usize::from(len)) else {
            return Err(Error::ZipShortRecord {
                path: path.to_path_buf(),
                member: name,
                record: "extra field",
                offset: at,
                expected: u64::from(len),
                found: x.left() as u64,
            });
        };
        match tag {
            ZIP64_EXTRA => {
                // Only the saturated fields appear, in this order (APPNOTE 4.5.3).
                let mut z = Fields::new(data);
                if size32 == SATURATED_32 {
                    size = z.u64().unwrap_or(size);
                }
                if compressed32 == SATURATED_32 {
                    compressed = z.u64().unwrap_or(compressed);
                }
                if offset32 == SATURATED_32 {
                    local_offset = z.u64().unwrap_or(local_offset);
                }
                if disk_start == SATURATED_16 {
                    disk = z.u32().unwrap_or(disk);
                }
            }
            AES_EXTRA => aes = true,
            _ => {}
        }
    }
    if disk != 0 {
        return Err(Error::ZipMultiDisk {
            path: path.to_path_buf(),
            disk,
            directory_disk: 0,
        });
    }
    Ok(Central {
        name,
        raw_name: raw_name.to_vec(),
        flags,
        method,
        crc32,
        compressed,
        size,
        local_offset,
        aes,
    })
}

/// Reads and validates a zip's directory; returns its members in directory order (directories left out).
pub(crate) fn read_directory(path: &Path, file: &File, file_len: u64) -> Result<Vec<ZipEntry>> {
    let end = read_end_record(path, file, file_len)?;
    if end.directory_offset > file_len {
        return Err(Error::ZipOffsetPastEnd {
            path: path.to_path_buf(),
            member: String::new(),
            what: "central directory",
            offset: end.directory_offset,
            file_len,
        });
    }
    if end.directory_offset.checked_add(end.directory_size) != Some(end.directory_end) {
        return Err(Error::ZipDirectoryMisplaced {
            path: path.to_path_buf(),
            offset: end.directory_offset,
            size: end.directory_size,
            expected_end: end.directory_end,
        });
    }
    // The directory lies inside the file (it ends at the end record), so this read is bounded by it.
    let directory = read_at(path, file, end.directory_offset, end.directory_size)?;
    let most = directory.len() / CENTRAL_LEN;
    let mut centrals = Vec::with_capacity(usize::try_from(end.entries).unwrap_or(most).min(most));
    let mut f = Fields::new(&directory);
    while f.left() > 0 {
        let at = end.directory_offset.saturating_add(f.pos as u64);
        centrals.push(parse_central(path, &mut f, at)?);
    }
    if centrals.len() as u64 != end.entries {
        return Err(Error::ZipEntryCount {
            path: path.to_path_buf(),
            declared: end.entries,
            found: centrals.len() as u64,
        });
    }

    let mut seen = HashSet::with_capacity(centrals.len());
    for c in &centrals {
        if !seen.insert(c.name.as_str()) {
            return Err(Error::ZipDuplicateMember {
                path: path.to_path_buf(),
                member: c.name.clone(),
            });
        }
    }

    // Each member's byte range, local header through data, for the overlap check.
    let mut ranges: Vec<(u64, u64, usize)> = Vec::with_capacity(centrals.len());
    let mut entries = Vec::with_capacity(centrals.len());
    for (i, c) in centrals.iter().enumerate() {
        if c.flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) != 0 || c.method == AES_METHOD {
            return Err(Error::ZipEncrypted {
                path: path.to_path_buf(),
                member: c.name.clone(),
                aes: c.aes || c.method == AES_METHOD,
            });
        }
        let data_start = local_data_start(path, file, file_len, end.directory_offset, c)?;
        let data_end = data_start
            .checked_add(c.compressed)
            .ok_or_else(|| Error::truncated(path, &c.name, data_start, c.compressed, file_len))?;
        if data_end > file_len {
            return Err(Error::truncated(
                path,
                &c.name,
                data_start,
                c.compressed,
                file_len.saturating_sub(data_start),
            ));
        }
        if data_end > end.directory_offset {
            return Err(Error::ZipOverlap {
                path: path.to_path_buf(),
                member: c.name.clone(),
                start: c.local_offset,
                end: data_end,
                other: format!(
                    "the central directory (which starts at offset {})",
                    end.directory_offset
                ),
            });
        }
        ranges.push((c.local_offset, data_end, i));
        let base = match c.method {
            0 => {
                if c.compressed != c.size {
                    return Err(Error::ZipStoredSizes {
                        path: path.to_path_buf(),
                        member: c.name.clone(),
                        compressed: c.compressed,
                        size: c.size,
                    });
                }
                Base::Stored {
                    offset: data_start,
                    len: c.size,
                }
            }
            8 => {
                source::check_deflate_claim(path, &c.name, c.compressed, c.size)?;
                Base::Deflate {
                    offset: data_start,
                    compressed_len: c.compressed,
                    len: c.size,
                }
            }
            method => {
                return Err(Error::ZipCompression {
                    path: path.to_path_buf(),
                    member: c.name.clone(),
                    method,
                })
            }
        };
        // A directory entry holds nothing; anything else is handed on, so nothing is skipped unseen.
        if c.name.ends_with('/') && c.size == 0 {
            continue;
        }
        entries.push(ZipEntry {
            name: c.name.clone(),
            base,
            crc32: c.crc32,
        });
    }

    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let [(_, prev_end, prev), (start, end, this)] = pair else {
            continue;
        };
        if prev_end > start {
            let name = |i: &usize| centrals.get(*i).map(|c| c.name.clone()).unwrap_or_default();
            return Err(Error::ZipOverlap {
                path: path.to_path_buf(),
                member: name(this),
                start: *start,
                end: *end,
                other: format!("member `{}`, which ends at offset {prev_end}", name(prev)),
            });
        }
    }
    Ok(entries)
}

/// Checks a member's local header against its directory entry; returns where its data starts.
fn local_data_start(
    path: &Path,
    file: &File,
    file_len: u64,
    directory_offset: u64,
    c: &Central,
) -> Result<u64> {
    let at = c.local_offset;
    // The name's length came from a 16-bit field.
    let header_len = LOCAL_LEN.saturating_add(c.raw_name.len() as u64);
    if at >= directory_offset || at.saturating_add(header_len) > file_len {
        return Err(Error::ZipOffsetPastEnd {
            path: path.to_path_buf(),
            member: c.name.clone(),
            what: if at >= directory_offset {
                "local header (at or past the central directory)"
            } else {
                "local header"
            },
            offset: at,
            file_len,
        });
    }
    let header = read_at(path, file, at, header_len)?;
    let mut f = Fields::new(&header);
    if f.u32() != Some(LOCAL_SIG) {
        return Err(Error::ZipBadSignature {
            path: path.to_path_buf(),
            member: c.name.clone(),
            record: "local header",
            offset: at,
        });
    }
    let fixed = header.get(26..30).unwrap_or_default();
    let mut g = Fields::new(fixed);
    let name_len = u64::from(g.u16().unwrap_or(0));
    let extra_len = u64::from(g.u16().unwrap_or(0));
    let local_name = header.get(LOCAL_LEN as usize..).unwrap_or_default();
    // The header, `LOCAL_LEN` bytes and the name, was checked above to lie inside the file.
    let name_at = at.saturating_add(LOCAL_LEN);
    if name_len != c.raw_name.len() as u64 || local_name != c.raw_name.as_slice() {
        // Read the local name itself for the message, within the file.
        let shown_len = name_len.min(file_len.saturating_sub(name_at));
        let shown = read_at(path, file, name_at, shown_len)?;
        return Err(Error::ZipLocalName {
            path: path.to_path_buf(),
            member: c.name.clone(),
            local: String::from_utf8_lossy(&shown).into_owned(),
            offset: at,
        });
    }
    // The name ends inside the file (checked above) and the extra field is shorter than 2^16
    // bytes, so the sum stays within a file's length plus 64 KiB.
    Ok(name_at.saturating_add(name_len).saturating_add(extra_len))
}
