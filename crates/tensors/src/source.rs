//! Where a tensor's bytes live inside a file, and how they become little-endian C-order bytes.
//!
//! Every reader in this crate resolves a tensor to a [`Location`] at open time; reading
//! is then one positional read (or one bounded inflate) plus, where the file stored the
//! data another way, a byte swap or a gather into C order. Reads take `&File` and never
//! move a shared cursor, so one open file serves many threads.

use std::borrow::Borrow;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::{DType, Error, Result, TensorInfo};

pub(crate) use crate::MAX_DEFLATE_RATIO;

/// Slack added to [`MAX_DEFLATE_RATIO`] so tiny entries (a few header bytes) are not refused.
const DEFLATE_SLACK: u64 = 4096;

/// The bytes of one container entry (a zip member, or the data section of a flat file).
#[derive(Debug, Clone)]
pub(crate) enum Base {
    /// Bytes stored as they are: `len` of them from file offset `offset`.
    Stored { offset: u64, len: u64 },
    /// A raw deflate stream of `compressed_len` bytes at `offset` that inflates to `len` bytes.
    Deflate {
        offset: u64,
        compressed_len: u64,
        len: u64,
    },
    /// An array stored as a grid of chunks in files of their own (zarr), read as one stream.
    Chunks(std::sync::Arc<crate::grid::Grid>),
}

impl Base {
    /// The entry's file offset: where its stored or compressed bytes begin.
    /// For a chunk grid, which has no one offset, a number no other entry of its file uses.
    pub(crate) fn offset(&self) -> u64 {
        match self {
            Base::Stored { offset, .. } | Base::Deflate { offset, .. } => *offset,
            Base::Chunks(grid) => grid.id,
        }
    }

    /// Length of the entry's decoded content.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Base::Stored { len, .. } | Base::Deflate { len, .. } => *len,
            Base::Chunks(grid) => grid.nbytes().unwrap_or(0),
        }
    }
}

/// How the tensor's elements are arranged in the entry.
#[derive(Debug, Clone)]
pub(crate) enum Layout {
    /// Row-major and contiguous: the common case, read as is.
    C,
    /// Arbitrary element strides from the first element (torch views, numpy Fortran order).
    Strided(Vec<usize>),
}

/// Everything needed to read one tensor's data.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub base: Base,
    /// Byte offset of the tensor's first element within the decoded entry.
    pub start: u64,
    pub layout: Layout,
    /// Whether the file stores elements big-endian.
    pub byteswap: bool,
    /// The zip member's recorded CRC-32, where `base` is a whole zip member; `None` for
    /// flat files (safetensors, `.npy`) and for `.pt` storages that fill only part of their record.
    pub crc: Option<MemberCrc>,
}

/// The CRC-32 a zip directory records for one member, checked by every read that covers
/// the whole member (APPNOTE 4.4.7: the CRC of the uncompressed data).
#[derive(Debug, Clone)]
pub(crate) struct MemberCrc {
    /// The member's name in the archive, for the error message.
    pub member: String,
    pub crc32: u32,
}

/// Most bytes ahead of a tensor's data within its member (an `.npy` header) that a read
/// also fetches so it can check the member's CRC-32; numpy headers are a few hundred bytes.
const MAX_CRC_PREFIX: u64 = 1 << 20;

/// Bytes hashed per read call while checking a CRC: the data is hashed while still in cache.
const CRC_PIECE: usize = 256 * 1024;

/// The CRC to check for a read of `span` bytes at `loc.start`: only a read that reaches the
/// member's end from at most [`MAX_CRC_PREFIX`] bytes after its start covers the whole member.
pub(crate) fn crc_to_check(loc: &Location, span: u64) -> Option<&MemberCrc> {
    let crc = loc.crc.as_ref()?;
    let covers = loc.start <= MAX_CRC_PREFIX && loc.start.checked_add(span) == Some(loc.base.len());
    covers.then_some(crc)
}

/// A reader that hashes everything read through it, in cache-sized pieces.
struct CrcRead<'h, R> {
    inner: R,
    hasher: &'h mut crc32fast::Hasher,
}

impl<R: Read> Read for CrcRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(CRC_PIECE);
        let piece = buf.get_mut(..want).unwrap_or_default();
        let n = self.inner.read(piece)?;
        self.hasher.update(piece.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// Compares a finished hash with the member's recorded CRC-32.
pub(crate) fn check_crc(path: &Path, tensor: &str, crc: &MemberCrc, found: u32) -> Result<()> {
    if found == crc.crc32 {
        Ok(())
    } else {
        Err(Error::Crc {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            member: crc.member.clone(),
            expected: crc.crc32,
            found,
        })
    }
}

/// Column-major (Fortran) element strides for `shape`, or `None` on overflow.
pub(crate) fn fortran_strides(shape: &[usize]) -> Option<Vec<usize>> {
    let mut strides = Vec::with_capacity(shape.len());
    let mut acc = 1usize;
    for &d in shape {
        strides.push(acc);
        acc = acc.checked_mul(d)?;
    }
    Some(strides)
}

/// Number of bytes a strided tensor spans from its first element, or `None` on overflow.
pub(crate) fn strided_span(shape: &[usize], strides: &[usize], elem: usize) -> Option<u64> {
    if shape.contains(&0) {
        return Some(0);
    }
    let mut last = 0usize;
    for (&d, &s) in shape.iter().zip(strides) {
        last = last.checked_add(d.checked_sub(1)?.checked_mul(s)?)?;
    }
    let span = last.checked_add(1)?.checked_mul(elem)?;
    u64::try_from(span).ok()
}

/// Bytes of the entry this location needs, checked against the entry.
pub(crate) fn span_of(path: &Path, info: &TensorInfo, loc: &Location) -> Result<u64> {
    let nbytes = info
        .nbytes()
        .ok_or_else(|| Error::shape_overflow(path, &info.name, &info.shape))?;
    match &loc.layout {
        Layout::C => {
            u64::try_from(nbytes).map_err(|_| Error::shape_overflow(path, &info.name, &info.shape))
        }
        Layout::Strided(strides) => {
            if strides.len() != info.shape.len() {
                return Err(Error::unsupported(
                    path,
                    &info.name,
                    "strides and shape differ in length",
                ));
            }
            strided_span(&info.shape, strides, info.dtype.size())
                .ok_or_else(|| Error::shape_overflow(path, &info.name, &info.shape))
        }
    }
}

/// Checks at open time that a location fits inside its entry and the entry inside the file.
pub(crate) fn validate(
    path: &Path,
    info: &TensorInfo,
    loc: &Location,
    file_len: u64,
) -> Result<()> {
    let span = span_of(path, info, loc)?;
    let end = loc
        .start
        .checked_add(span)
        .ok_or_else(|| Error::shape_overflow(path, &info.name, &info.shape))?;
    let entry_len = loc.base.len();
    if end > entry_len {
        return Err(Error::SizeMismatch {
            path: path.to_path_buf(),
            tensor: info.name.clone(),
            expected: span,
            found: entry_len.saturating_sub(loc.start),
        });
    }
    match loc.base {
        Base::Stored { offset, len } => {
            let file_end = offset.saturating_add(len);
            if file_end > file_len {
                return Err(Error::truncated(
                    path,
                    &info.name,
                    offset,
                    len,
                    file_len.saturating_sub(offset),
                ));
            }
        }
        Base::Deflate {
            offset,
            compressed_len,
            len,
        } => {
            if offset.saturating_add(compressed_len) > file_len {
                return Err(Error::truncated(
                    path,
                    &info.name,
                    offset,
                    compressed_len,
                    file_len.saturating_sub(offset),
                ));
            }
            check_deflate_claim(path, &info.name, compressed_len, len)?;
        }
        // Its chunks were checked against their files, and the grid against them, when it was read.
        Base::Chunks(ref grid) => grid.validate(path)?,
    }
    Ok(())
}

/// Refuses a deflate entry whose claimed size no deflate stream of that length could produce.
pub(crate) fn check_deflate_claim(
    path: &Path,
    tensor: &str,
    compressed_len: u64,
    len: u64,
) -> Result<()> {
    let max = compressed_len
        .saturating_mul(MAX_DEFLATE_RATIO)
        .saturating_add(DEFLATE_SLACK);
    if len > max {
        return Err(Error::zip(
            path,
            tensor,
            format!("entry claims {len} bytes from {compressed_len} compressed bytes, more than deflate can produce"),
        ));
    }
    Ok(())
}

pub(crate) use crate::range::read_exact_at;

/// Size of the buffer between the file and the inflater when reading tensor data.
pub(crate) const INFLATE_BUF: usize = 256 * 1024;

/// Size of that buffer when only a header is wanted: opening a compressed `.npz` must not
/// read a quarter megabyte of every member to learn its first hundred bytes.
pub(crate) const HEADER_INFLATE_BUF: usize = 4096;

/// Opens the decoded content of an entry as a reader, positioned at its start.
///
/// The reader yields at most the entry's claimed length, so a deflate stream that
/// expands without end is cut off at the size its header claims.
pub(crate) fn entry_reader<'a, F: Borrow<File> + Send + 'a>(
    file: F,
    base: &Base,
    inflate_buf: usize,
) -> Box<dyn Read + Send + 'a> {
    match *base {
        Base::Stored { offset, len } => Box::new(crate::range::RangeReader::new(file, offset, len)),
        Base::Chunks(ref grid) => {
            Box::new(crate::grid::GridReader::new(std::sync::Arc::clone(grid)))
        }
        Base::Deflate {
            offset,
            compressed_len,
            len,
        } => {
            let raw = io::BufReader::with_capacity(
                inflate_buf,
                crate::range::RangeReader::new(file, offset, compressed_len),
            );
            Box::new(flate2::bufread::DeflateDecoder::new(raw).take(len))
        }
    }
}

/// Maps an I/O error from reading a tensor to the crate's error, turning an early end into `Truncated`.
pub(crate) fn read_error(
    path: &Path,
    tensor: &str,
    offset: u64,
    expected: u64,
    err: io::Error,
) -> Error {
    // A chunk grid's reader reports its failures as the crate's own errors, naming the chunk.
    if err.get_ref().is_some_and(|e| e.is::<Error>()) {
        if let Some(Ok(inner)) = err.into_inner().map(|e| e.downcast::<Error>()) {
            return *inner;
        }
        return Error::truncated(path, tensor, offset, expected, 0);
    }
    if err.kind() == io::ErrorKind::UnexpectedEof {
        Error::truncated(path, tensor, offset, expected, 0)
    } else if err.kind() == io::ErrorKind::InvalidInput || err.kind() == io::ErrorKind::InvalidData
    {
        Error::zip(path, tensor, format!("corrupt compressed data: {err}"))
    } else {
        Error::io_tensor(path, tensor, err)
    }
}

/// Opens the `span` bytes that start `start` bytes into the entry as a reader; returns it
/// with the file offset to name in errors.
///
/// With `hasher`, the reader starts at the entry's first byte and hashes the `start` bytes
/// it skips as well as the span, so a read reaching the entry's end has hashed all of it.
fn open_span<'a>(
    file: &'a File,
    path: &Path,
    tensor: &str,
    base: &Base,
    start: u64,
    span: u64,
    hasher: Option<&'a mut crc32fast::Hasher>,
) -> Result<(Box<dyn Read + 'a>, u64)> {
    let (offset, plain_stored) = match *base {
        Base::Stored { offset, .. } => (offset, hasher.is_none()),
        Base::Deflate { offset, .. } => (offset, false),
        Base::Chunks(ref grid) => (grid.id, false),
    };
    if plain_stored {
        let at = offset.saturating_add(start);
        return Ok((Box::new(crate::range::RangeReader::new(file, at, span)), at));
    }
    let entry = entry_reader(file, base, INFLATE_BUF);
    let mut reader: Box<dyn Read + 'a> = match hasher {
        Some(hasher) => Box::new(CrcRead {
            inner: entry,
            hasher,
        }),
        None => entry,
    };
    let skipped = io::copy(&mut (&mut reader).take(start), &mut io::sink())
        .map_err(|e| read_error(path, tensor, offset, span, e))?;
    if skipped != start {
        return Err(Error::truncated(
            path,
            tensor,
            offset,
            start.saturating_add(span),
            skipped,
        ));
    }
    Ok((Box::new(reader.take(span)), offset))
}

/// Reads `span` bytes starting `start` bytes into the entry, checking `crc` over the whole entry when given.
pub(crate) fn fetch(
    file: &File,
    path: &Path,
    tensor: &str,
    loc: &Location,
    span: u64,
    crc: Option<&MemberCrc>,
) -> Result<Vec<u8>> {
    // The span was validated against the entry at open time, and the entry against
    // the file's length (or, for deflate, against the most its compressed bytes can
    // produce), so this allocation is bounded by what the file really holds.
    let len = usize::try_from(span)
        .map_err(|_| Error::unsupported(path, tensor, "tensor larger than memory"))?;
    // Reading into spare capacity (`read_to_end`) skips zero-filling a buffer that is
    // about to be overwritten, which is measurable when `--stats` reads a whole checkpoint.
    let mut buf = Vec::with_capacity(len);
    let mut hasher = crc32fast::Hasher::new();
    {
        let (mut reader, at) = open_span(
            file,
            path,
            tensor,
            &loc.base,
            loc.start,
            span,
            crc.is_some().then_some(&mut hasher),
        )?;
        reader
            .read_to_end(&mut buf)
            .map_err(|e| read_error(path, tensor, at, span, e))?;
        if buf.len() as u64 != span {
            return Err(Error::truncated(path, tensor, at, span, buf.len() as u64));
        }
    }
    if let Some(crc) = crc {
        check_crc(path, tensor, crc, hasher.finalize())?;
    }
    Ok(buf)
}

/// Reads one tensor: exactly `info.nbytes()` bytes, little-endian, C order.
///
/// A tensor that fills its zip member is checked against the member's CRC-32 on the way.
pub(crate) fn read_tensor(
    file: &File,
    path: &Path,
    info: &TensorInfo,
    loc: &Location,
) -> Result<Vec<u8>> {
    let span = span_of(path, info, loc)?;
    let raw = fetch(file, path, &info.name, loc, span, crc_to_check(loc, span))?;
    arrange(path, info, loc, raw)
}

/// Turns the `span` bytes a tensor covers (from its first element) into its C-order,
/// little-endian bytes: a gather for a strided view, a byte swap for big-endian data.
pub(crate) fn arrange(
    path: &Path,
    info: &TensorInfo,
    loc: &Location,
    raw: Vec<u8>,
) -> Result<Vec<u8>> {
    let mut out = match &loc.layout {
        Layout::C => raw,
        Layout::Strided(strides) => gather(path, info, &raw, strides)?,
    };
    if loc.byteswap {
        let size = info.dtype.size();
        if size > 1 {
            for chunk in out.chunks_exact_mut(size) {
                chunk.reverse();
            }
        }
    }
    Ok(out)
}

/// The largest whole number of `elem`-byte elements in `chunk` bytes, at least one element:
/// the size of the pieces a tensor is streamed in.
pub(crate) fn whole_elements(chunk: usize, elem: usize) -> usize {
    // `elem` is a dtype's size, never zero; were it zero the pieces would be one byte.
    let count = chunk.checked_div(elem).unwrap_or(0).max(1);
    count.saturating_mul(elem).max(1)
}

/// Streams one tensor through `f` in pieces of at most `chunk` bytes (whole elements),
/// reusing one buffer: memory stays at one chunk, and the data stays in cache between the
/// read and whatever `f` computes.
///
/// The member's CRC-32 (where the tensor fills it) is hashed piece by piece and checked
/// after the last piece: `f` may have seen corrupt data by then, but the call fails.
pub(crate) fn read_tensor_chunked(
    file: &File,
    path: &Path,
    info: &TensorInfo,
    loc: &Location,
    chunk: usize,
    f: &mut dyn FnMut(&[u8]),
) -> Result<()> {
    let chunk = whole_elements(chunk, info.dtype.size());
    if !matches!(loc.layout, Layout::C) || loc.byteswap {
        // Views and byte-swapped data are rare; they go through the whole-tensor path.
        let all = read_tensor(file, path, info, loc)?;
        all.chunks(chunk).for_each(f);
        return Ok(());
    }
    let span = span_of(path, info, loc)?;
    let crc = crc_to_check(loc, span);
    let mut hasher = crc32fast::Hasher::new();
    {
        // The pieces are hashed by `CrcRead` as they are read, in cache.
        let (mut reader, _) = open_span(
            file,
            path,
            &info.name,
            &loc.base,
            loc.start,
            span,
            crc.is_some().then_some(&mut hasher),
        )?;
        let mut buf = vec![0u8; usize::try_from(span).map_or(chunk, |s| s.min(chunk))];
        let mut left = span;
        while left > 0 {
            let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            let piece = buf.get_mut(..n).unwrap_or_default();
            reader
                .read_exact(piece)
                .map_err(|e| read_error(path, &info.name, span.saturating_sub(left), span, e))?;
            f(piece);
            left = left.saturating_sub(n as u64);
        }
    }
    if let Some(crc) = crc {
        check_crc(path, &info.name, crc, hasher.finalize())?;
    }
    Ok(())
}

/// Copies a strided tensor's elements out of `raw` into C order.
fn gather(path: &Path, info: &TensorInfo, raw: &[u8], strides: &[usize]) -> Result<Vec<u8>> {
    let elem = info.dtype.size();
    let numel = info
        .numel()
        .ok_or_else(|| Error::shape_overflow(path, &info.name, &info.shape))?;
    let nbytes = numel
        .checked_mul(elem)
        .ok_or_else(|| Error::shape_overflow(path, &info.name, &info.shape))?;
    let mut out = Vec::with_capacity(nbytes);
    if numel == 0 {
        return Ok(out);
    }
    let ndim = info.shape.len();
    let mut index = vec![0usize; ndim];
    let bad = || Error::unsupported(path, &info.name, "strided view reaches outside its storage");
    for _ in 0..numel {
        let mut at = 0usize;
        for (&i, &s) in index.iter().zip(strides) {
            at = at
                .checked_add(i.checked_mul(s).ok_or_else(bad)?)
                .ok_or_else(bad)?;
        }
        let from = at.checked_mul(elem).ok_or_else(bad)?;
        let to = from.checked_add(elem).ok_or_else(bad)?;
        out.extend_from_slice(raw.get(from..to).ok_or_else(bad)?);
        // Advance the multi-index, last axis fastest.
        for axis in (0..ndim).rev() {
            let (Some(i), Some(&d)) = (index.get_mut(axis), info.shape.get(axis)) else {
                break;
            };
            // `*i` is below `d` here, so the increment cannot overflow.
            *i = i.saturating_add(1);
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
    Ok(out)
}

/// Converts little-endian bytes of `dtype` to `f32`.
pub(crate) fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    fn conv<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    match dtype {
        DType::F64 => conv(bytes, |a| f64::from_le_bytes(a) as f32),
        DType::F32 => conv(bytes, f32::from_le_bytes),
        DType::F16 => conv(bytes, |a| half::f16::from_le_bytes(a).to_f32()),
        DType::BF16 => conv(bytes, |a| half::bf16::from_le_bytes(a).to_f32()),
        DType::I64 => conv(bytes, |a| i64::from_le_bytes(a) as f32),
        DType::I32 => conv(bytes, |a| i32::from_le_bytes(a) as f32),
        DType::I16 => conv(bytes, |a| f32::from(i16::from_le_bytes(a))),
        DType::I8 => conv(bytes, |a| f32::from(i8::from_le_bytes(a))),
        DType::U8 => conv(bytes, |a: [u8; 1]| f32::from(a[0])),
        DType::Bool => conv(bytes, |a: [u8; 1]| if a[0] != 0 { 1.0 } else { 0.0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_strides_and_span() {
        let strides = fortran_strides(&[2, 3, 4]).unwrap();
        assert_eq!(strides, vec![1, 2, 6]);
        assert_eq!(strided_span(&[2, 3, 4], &strides, 4), Some(24 * 4));
        assert_eq!(strided_span(&[2, 0, 4], &strides, 4), Some(0));
        assert_eq!(strided_span(&[usize::MAX, 2], &[usize::MAX, 1], 4), None);
    }

    #[test]
    fn gather_transposes_fortran_order() {
        let info = TensorInfo {
            name: "t".into(),
            dtype: DType::U8,
            shape: vec![2, 3],
            stored_as: None,
        };
        // Column-major storage of [[0,1,2],[3,4,5]].
        let raw = [0u8, 3, 1, 4, 2, 5];
        let out = gather(
            Path::new("x"),
            &info,
            &raw,
            &fortran_strides(&info.shape).unwrap(),
        )
        .unwrap();
        assert_eq!(out, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn deflate_claims_beyond_ratio_are_refused() {
        assert!(check_deflate_claim(Path::new("x"), "t", 10, 10 * MAX_DEFLATE_RATIO).is_ok());
        assert!(matches!(
            check_deflate_claim(Path::new("x"), "t", 10, 1 << 60),
            Err(Error::Zip { .. })
        ));
    }

    #[test]
    fn to_f32_converts_every_dtype() {
        assert_eq!(to_f32(DType::F64, &1.5f64.to_le_bytes()), vec![1.5]);
        assert_eq!(
            to_f32(DType::BF16, &half::bf16::from_f32(2.0).to_le_bytes()),
            vec![2.0]
        );
        assert_eq!(
            to_f32(DType::F16, &half::f16::from_f32(-3.0).to_le_bytes()),
            vec![-3.0]
        );
        assert_eq!(to_f32(DType::I8, &[0xff]), vec![-1.0]);
        assert_eq!(to_f32(DType::U8, &[0xff]), vec![255.0]);
        assert_eq!(to_f32(DType::Bool, &[0, 7]), vec![0.0, 1.0]);
        assert_eq!(to_f32(DType::I64, &(-5i64).to_le_bytes()), vec![-5.0]);
    }
}
