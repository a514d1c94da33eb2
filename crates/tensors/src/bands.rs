//! Column bands: a tensor read as a `[rows, row_bytes]` byte matrix, a band of columns at a time.
//!
//! A converter that writes the transpose of a large `[R, C]` matrix in C order needs, for
//! each band of output rows, the same columns of every source row. Reading those slices
//! with positional reads keeps memory at one band whatever the tensor's size. Where the
//! data cannot be read in place (a deflated `.npz` member, a strided or byte-swapped `.pt`
//! view) the whole tensor is read once, checked, and served from memory instead.
//!
//! A band can also be read a group of rows at a time ([`ColumnBands::read_rows`]), so a caller can
//! transpose each group while it is still in cache. Where the bytes skipped between one row's slice
//! and the next are few ([`MAX_SKIP`]), a group is fetched with one positional read spanning all its
//! rows instead of one read per row: a system call costs about as much as copying a few KiB.
//!
//! Zip members are still checked against their CRC-32: each row's slices arrive in order,
//! so each row keeps its own running CRC, and after the last band the rows' CRCs are joined
//! in file order (`crc32fast::Hasher::combine`, zlib's `crc32_combine`) with the member's
//! `.npy` header ahead of them.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};

use crate::source::{self, Base, Layout, Location, MemberCrc};
use crate::{Error, Result, TensorFile};

/// Where the bands come from.
enum Source {
    /// Data stored contiguously at `offset`: one positional read per row and band.
    InPlace {
        offset: u64,
        /// The member's CRC, the hash of its bytes ahead of the data, and one running hash per row.
        crc: Option<(MemberCrc, crc32fast::Hasher, Vec<crc32fast::Hasher>)>,
    },
    /// The whole tensor, read (and checked) up front, shared by every slice of a stacked tensor that reads it;
    /// `base` is where this reader's bytes begin in it.
    Whole { all: Arc<Vec<u8>>, base: usize },
    /// A deflated member inflated front to back as the bands ask for its bytes (see
    /// [`TensorFile::sequential_bands`]): only reads in file order can be served.
    Stream {
        reader: Box<dyn Read + Send>,
        /// The member's file offset, for errors.
        offset: u64,
        /// The hash of every byte read so far, from the member's first, and the CRC-32 to check once the last
        /// is read (where the tensor fills its member).
        hasher: crc32fast::Hasher,
        crc: Option<MemberCrc>,
    },
}

/// What is known of the slices of stacked tensors read so far, per tensor: each slice's CRC-32 state while
/// the others are still to come, the stream of a deflated member, and the decoded bytes of a tensor that
/// could be read neither in place nor as a stream.
///
/// A stacked `[depth, ...]` tensor is read one slice at a time, each by the output tensor of its block, so
/// no single reader sees the whole member: each hands its slice's running CRC here, and the slice that
/// completes the set checks the member's CRC-32. A deflated member is inflated once, front to back, each
/// slice handed to its block's output as it comes out of the inflater ([`Stream`]), so memory is a slice,
/// not the member. A strided or byte-swapped `.pt` view, or a deflated storage that several tensors view, is
/// read whole by the first slice asked for and kept until its last slice has been read.
#[derive(Debug, Default)]
pub(crate) struct Slices {
    by_tensor: Mutex<HashMap<String, SliceState>>,
    streams: Mutex<HashMap<String, Arc<Mutex<StreamSlot>>>>,
}

/// A deflated stacked member read front to back once, a slice at a time, as the outputs of its blocks ask
/// for them.
///
/// A deflated member cannot be read from the middle, and a conversion asks for the slices of a stacked
/// `[depth, ...]` member one block at a time, in block order: so the member is inflated once, in order, and
/// each slice goes to the reader that asked for it and is dropped there. A slice read ahead of its turn (two
/// producers asked for blocks 1 and 0 in that order) is kept until it is asked for. A slice asked for again
/// after it was handed out (no layout does that) is read again from the member's start: that costs time,
/// never correctness, and `StreamSlot::opened` counts it.
struct Stream {
    reader: Box<dyn Read + Send>,
    /// The hash of every byte read so far, from the member's first (the `.npy` header ahead of the data on).
    hasher: crc32fast::Hasher,
    /// The slice the reader yields next.
    next: usize,
    /// Slices read ahead of their turn, waiting for their reader.
    kept: BTreeMap<usize, Arc<Vec<u8>>>,
}

/// A member's stream, if one is open, and how many times the member has been opened for streaming.
#[derive(Default)]
struct StreamSlot {
    stream: Option<Stream>,
    opened: usize,
}

impl std::fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSlot")
            .field("next", &self.stream.as_ref().map(|s| s.next))
            .field("kept", &self.stream.as_ref().map(|s| s.kept.len()))
            .field("opened", &self.opened)
            .finish()
    }
}

/// Hashes what is written to it, keeping nothing: the bytes of a member ahead of its data.
struct HashSink<'h>(&'h mut crc32fast::Hasher);

impl io::Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct SliceState {
    /// Each slice's hash once it has been read whole, in stack order.
    crcs: Vec<Option<crc32fast::Hasher>>,
    /// Which slices have been read whole.
    seen: Vec<bool>,
    /// The tensor's bytes, for tensors read whole, while slices of it remain to be read.
    whole: Option<Arc<Vec<u8>>>,
    /// Slices not read yet.
    left: usize,
}

impl Slices {
    /// The stream slot of `name`, created on first use.
    fn stream(&self, name: &str) -> Arc<Mutex<StreamSlot>> {
        let mut map = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(name.to_string()).or_default())
    }

    /// How many times `name` has been opened to be streamed (see [`Stream`]).
    #[cfg(test)]
    pub(crate) fn opened(&self, name: &str) -> usize {
        let slot = self.stream(name);
        let slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.opened
    }

    /// The state of `name`'s `count` slices, created on first use.
    fn with<T>(&self, name: &str, count: usize, f: impl FnOnce(&mut SliceState) -> T) -> T {
        let mut map = self
            .by_tensor
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let state = map.entry(name.to_string()).or_insert_with(|| SliceState {
            crcs: vec![None; count],
            seen: vec![false; count],
            whole: None,
            left: count,
        });
        let out = f(state);
        if state.left == 0 && state.whole.is_some() {
            state.whole = None;
        }
        out
    }
}

/// Largest gap, in bytes, between the slices of consecutive rows that one spanning read covers.
///
/// Reading through the gap copies it for nothing, but saves a system call per row; on the
/// machines measured, a positional read of page-cache data cost about as much as copying 8 KiB.
pub const MAX_SKIP: usize = 8 << 10;

/// Reads one tensor as `[rows, row_bytes]` bytes, a band of columns at a time, left to right.
///
/// Made by [`TensorFile::column_bands`].
pub struct ColumnBands<'f> {
    file: &'f TensorFile,
    name: String,
    rows: usize,
    row_bytes: usize,
    /// First column (byte) of the band being read.
    next: usize,
    /// Rows of the band being read that have been read; 0 between bands.
    row: usize,
    /// Width of the band being read (set by its first group of rows).
    width: usize,
    /// Spanning reads land here before their rows' slices are picked out.
    span: Vec<u8>,
    source: Source,
    /// For a slice of a stacked tensor: which one, of how many.
    slice: Option<(usize, usize)>,
}

impl std::fmt::Debug for ColumnBands<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnBands")
            .field("tensor", &self.name)
            .field("rows", &self.rows)
            .field("row_bytes", &self.row_bytes)
            .field("next", &self.next)
            .field("in_place", &self.in_place())
            .finish()
    }
}

impl TensorFile {
    /// Prepares to read tensor `name` (little-endian, C order) as a `[rows, nbytes / rows]`
    /// byte matrix in bands of columns; `rows` must divide its byte count.
    ///
    /// Uncompressed contiguous data is read in place, band by band, so memory stays at one
    /// band; deflated members and strided views are read whole here (memory: the tensor).
    pub fn column_bands(&self, name: &str, rows: usize) -> Result<ColumnBands<'_>> {
        self.bands_of(name, rows, None, false)
    }

    /// Like [`TensorFile::column_bands`], for a reader that reads in file order: whole rows top to bottom, or,
    /// with `rows` 1, bands left to right. A deflated member is then inflated as it is read, a group of rows
    /// at a time, instead of whole up front, so memory stays at one group whatever the tensor's size. Any
    /// other read of such bands is refused.
    pub fn sequential_bands(&self, name: &str, rows: usize) -> Result<ColumnBands<'_>> {
        self.bands_of(name, rows, None, true)
    }

    /// Like [`TensorFile::column_bands`], for slice `index` of a tensor stacked as `[count, ...]` along its
    /// leading axis: the slice is read as a `[rows, slice bytes / rows]` byte matrix.
    ///
    /// The member's CRC-32 is checked once every slice has been read whole (by this reader and the others
    /// made for its siblings, in any order); a deflated member is inflated once for all its slices.
    pub fn slice_bands(
        &self,
        name: &str,
        index: usize,
        count: usize,
        rows: usize,
    ) -> Result<ColumnBands<'_>> {
        self.bands_of(name, rows, Some((index, count)), false)
    }

    fn bands_of(
        &self,
        name: &str,
        rows: usize,
        slice: Option<(usize, usize)>,
        sequential: bool,
    ) -> Result<ColumnBands<'_>> {
        let unknown = || Error::UnknownTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        };
        let i = *self.index.get(name).ok_or_else(unknown)?;
        let (Some(info), Some(loc)) = (self.tensors.get(i), self.locations.get(i)) else {
            return Err(unknown());
        };
        let nbytes = info
            .nbytes()
            .ok_or_else(|| Error::shape_overflow(&self.path, name, &info.shape))?;
        let (index, count) = slice.unwrap_or((0, 1));
        let slice_bytes = nbytes.checked_div(count).unwrap_or(0);
        if count == 0 || index >= count || slice_bytes.checked_mul(count) != Some(nbytes) {
            return Err(Error::Writer {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: format!("a slice of a stack dividing {nbytes} bytes"),
                found: format!("slice {index} of {count}"),
            });
        }
        let row_bytes = slice_bytes.checked_div(rows).unwrap_or(0);
        if rows == 0 || row_bytes.checked_mul(rows) != Some(slice_bytes) {
            return Err(Error::Writer {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: format!("a row count dividing {slice_bytes} bytes"),
                found: format!("{rows} rows"),
            });
        }
        // In bounds: index < count and count * slice_bytes == nbytes, so this cannot saturate.
        let first = index.saturating_mul(slice_bytes);
        let source = match loc.base {
            Base::Stored { offset, .. } if matches!(loc.layout, Layout::C) && !loc.byteswap => {
                let span = nbytes as u64;
                let crc = match source::crc_to_check(loc, span) {
                    Some(crc) => {
                        // The bytes ahead of the data (an `.npy` header, at most `MAX_CRC_PREFIX`).
                        let mut head = vec![0u8; usize::try_from(loc.start).unwrap_or(0)];
                        source::read_exact_at(&self.file, &mut head, offset).map_err(|e| {
                            source::read_error(&self.path, name, offset, loc.start, e)
                        })?;
                        let mut prefix = crc32fast::Hasher::new();
                        prefix.update(&head);
                        Some((crc.clone(), prefix, vec![crc32fast::Hasher::new(); rows]))
                    }
                    None => None,
                };
                Source::InPlace {
                    offset: offset
                        .saturating_add(loc.start)
                        .saturating_add(first as u64),
                    crc,
                }
            }
            _ if sequential && slice.is_none() && self.streams(loc) => {
                let (reader, hasher) = self.open_member(name, loc)?;
                Source::Stream {
                    reader,
                    offset: loc.base.offset(),
                    hasher,
                    crc: source::crc_to_check(loc, nbytes as u64).cloned(),
                }
            }
            _ if slice.is_none() => Source::Whole {
                all: Arc::new(self.read(name)?),
                base: 0,
            },
            _ if self.streams(loc) => Source::Whole {
                all: self.streamed_slice(name, loc, index, count, slice_bytes)?,
                base: 0,
            },
            _ => {
                let cached = self.slices.with(name, count, |s| s.whole.clone());
                let all = match cached {
                    Some(all) => all,
                    None => {
                        let all = Arc::new(self.read(name)?);
                        self.slices
                            .with(name, count, |s| s.whole = Some(Arc::clone(&all)));
                        all
                    }
                };
                Source::Whole { all, base: first }
            }
        };
        Ok(ColumnBands {
            file: self,
            name: name.to_string(),
            rows,
            row_bytes,
            next: 0,
            row: 0,
            width: 0,
            span: Vec::new(),
            source,
            slice,
        })
    }
}

impl TensorFile {
    /// Slice `index` of the deflated `[count, ...]` member `name`, `slice_bytes` bytes, from its stream (see
    /// [`Stream`]): read now, with any slices before it that nobody has asked for yet, or kept from earlier.
    ///
    /// The slice that completes the member checks its CRC-32 over everything the stream read.
    fn streamed_slice(
        &self,
        name: &str,
        loc: &Location,
        index: usize,
        count: usize,
        slice_bytes: usize,
    ) -> Result<Arc<Vec<u8>>> {
        let slot = self.slices.stream(name);
        // One reader of the member at a time: the others wait for the slice being inflated rather than
        // inflating the member a second time.
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        // Taken out while it is read, so that a read that fails leaves no stream in an unknown position
        // behind: the next request opens the member again.
        let resumed = match slot.stream.take() {
            Some(mut s) => {
                if let Some(kept) = s.kept.remove(&index) {
                    slot.stream = Some(s);
                    return Ok(kept);
                }
                (index >= s.next).then_some(s)
            }
            None => None,
        };
        let mut stream = match resumed {
            Some(s) => s,
            None => {
                slot.opened = slot.opened.saturating_add(1);
                let (reader, hasher) = self.open_member(name, loc)?;
                Stream {
                    reader,
                    hasher,
                    next: 0,
                    kept: BTreeMap::new(),
                }
            }
        };
        let (offset, expected) = (loc.base.offset(), loc.base.len());
        loop {
            // Bounded by the file: `count * slice_bytes` is the tensor's size, which was checked at open
            // against the most the member's compressed bytes can inflate to.
            let mut buf = vec![0u8; slice_bytes];
            stream
                .reader
                .read_exact(&mut buf)
                .map_err(|e| source::read_error(&self.path, name, offset, expected, e))?;
            stream.hasher.update(&buf);
            let read = stream.next;
            stream.next = stream.next.saturating_add(1);
            if stream.next == count {
                let nbytes = (slice_bytes as u64).saturating_mul(count as u64);
                if let Some(crc) = source::crc_to_check(loc, nbytes) {
                    source::check_crc(&self.path, name, crc, stream.hasher.clone().finalize())?;
                }
            }
            let buf = Arc::new(buf);
            if read == index {
                // A finished stream with nothing kept is dropped, and its inflater's buffers with it.
                if stream.next < count || !stream.kept.is_empty() {
                    slot.stream = Some(stream);
                }
                return Ok(buf);
            }
            stream.kept.insert(read, buf);
        }
    }

    /// Whether the member at `loc` is read as a stream: deflated, its elements in C order and little-endian, and
    /// viewed by no other tensor (a shared deflated storage is decoded once, whole, for all its views).
    fn streams(&self, loc: &Location) -> bool {
        matches!(loc.base, Base::Deflate { .. } | Base::Chunks(_))
            && matches!(loc.layout, Layout::C)
            && !loc.byteswap
            && !self.is_shared_deflate(loc)
    }

    /// Opens the member at `loc` to be read front to back: a reader positioned at the tensor's first byte, and
    /// the hash of the bytes ahead of it (the `.npy` header), which were skipped.
    fn open_member(
        &self,
        name: &str,
        loc: &Location,
    ) -> Result<(Box<dyn Read + Send>, crc32fast::Hasher)> {
        let mut reader =
            source::entry_reader(Arc::clone(&self.file), &loc.base, source::INFLATE_BUF);
        let mut hasher = crc32fast::Hasher::new();
        let offset = loc.base.offset();
        let skipped = io::copy(
            &mut (&mut reader).take(loc.start),
            &mut HashSink(&mut hasher),
        )
        .map_err(|e| source::read_error(&self.path, name, offset, loc.start, e))?;
        if skipped != loc.start {
            return Err(Error::truncated(
                &self.path, name, offset, loc.start, skipped,
            ));
        }
        Ok((reader, hasher))
    }

    /// Slice `index` of tensor `name` stacked as `[count, ...]` along its leading axis: its bytes,
    /// little-endian, C order.
    ///
    /// Only the slice is read (positionally where the data is stored as it is, from the member's stream where
    /// it is deflated); the member's CRC-32 is checked once every slice has been read, as for
    /// [`TensorFile::slice_bands`].
    pub fn read_slice(&self, name: &str, index: usize, count: usize) -> Result<Vec<u8>> {
        let mut bands = self.slice_bands(name, index, count, 1)?;
        let mut out = Vec::new();
        bands.read_band(bands.remaining(), &mut out)?;
        Ok(out)
    }

    /// [`TensorFile::read_slice`], decoded to `f32`.
    pub fn read_slice_f32(&self, name: &str, index: usize, count: usize) -> Result<Vec<f32>> {
        Ok(self.decode_f32(name, &self.read_slice(name, index, count)?))
    }
}

impl ColumnBands<'_> {
    /// Whether bands are read from the file as asked (false: the tensor was read whole).
    pub fn in_place(&self) -> bool {
        matches!(self.source, Source::InPlace { .. })
    }

    /// Bytes of each row not read yet.
    pub fn remaining(&self) -> usize {
        // `next` never passes `row_bytes`: `read_rows_pitched` checks each band against it.
        self.row_bytes.saturating_sub(self.next)
    }

    /// Replaces `out` with the next `width` bytes of every row: `rows x width` bytes, row by row.
    ///
    /// The band that completes the rows also checks the member's CRC-32 (where the tensor
    /// fills its zip member) and fails if it does not match.
    pub fn read_band(&mut self, width: usize, out: &mut Vec<u8>) -> Result<()> {
        out.resize(width.saturating_mul(self.rows), 0);
        self.read_rows(width, out)
    }

    /// Fills `out` with the band's next `out.len() / width` rows, `width` bytes each, packed.
    ///
    /// A band is `width` bytes of every row from the current column; it is read in groups of
    /// rows, top to bottom, all of the same `width`, and once its last row is read the next call
    /// starts the next band. The group that completes the tensor checks the member's CRC-32.
    pub fn read_rows(&mut self, width: usize, out: &mut [u8]) -> Result<()> {
        self.read_rows_pitched(width, width, out)
    }

    /// Like [`ColumnBands::read_rows`], but row `i` of the group lands at byte `i * pitch` of `out`
    /// (`pitch >= width`; the bytes between rows are left as they were), and the group is
    /// `out.len() / pitch` rows.
    ///
    /// A caller that transposes the group reads it a column at a time, one element from each row:
    /// rows a power of two apart in memory (the usual case in models) all fall in the same few
    /// cache sets and evict one another, so padding the pitch by a cache line or so keeps them
    /// in cache together.
    pub fn read_rows_pitched(&mut self, width: usize, pitch: usize, out: &mut [u8]) -> Result<()> {
        let path = &self.file.path;
        let bad = |expected: String, found: String| Error::Writer {
            path: path.clone(),
            tensor: self.name.clone(),
            expected,
            found,
        };
        if self.row > 0 && width != self.width {
            return Err(bad(
                format!("the band's width, {}", self.width),
                format!("a group {width} bytes wide"),
            ));
        }
        if self
            .next
            .checked_add(width)
            .is_none_or(|e| e > self.row_bytes)
        {
            return Err(bad(
                format!("at most {} more bytes per row", self.remaining()),
                format!("a band of {width}"),
            ));
        }
        let count = out.len().checked_div(pitch).unwrap_or(0);
        // `row` is below `rows` between calls: it is reset to 0 when a band's last row is read.
        let rows_left = self.rows.saturating_sub(self.row);
        if pitch < width || count.checked_mul(pitch) != Some(out.len()) || count > rows_left {
            return Err(bad(
                format!(
                    "whole rows of {width} bytes, {pitch} apart (at least {width}), at most {rows_left} of them"
                ),
                format!("a buffer of {} bytes", out.len()),
            ));
        }

        // The offsets below are bounded by the tensor's byte count, which was checked against the
        // file (or the bytes read whole) at open, so the saturating forms never saturate; were one to,
        // the slice it names would fall outside the data and be refused rather than wrap around.
        let (from, first, row_bytes) = (self.next, self.row, self.row_bytes);
        match &mut self.source {
            Source::Whole { all, base } => {
                for (i, dst) in rows_mut(out, width, pitch).enumerate() {
                    let at = first
                        .saturating_add(i)
                        .saturating_mul(row_bytes)
                        .saturating_add(*base)
                        .saturating_add(from);
                    if let Some(src) = all.get(at..at.saturating_add(width)) {
                        dst.copy_from_slice(src);
                    }
                }
            }
            Source::Stream {
                reader,
                offset,
                hasher,
                ..
            } => {
                // Only the next bytes of the member can be read: whole rows, or bands of a single row.
                if self.rows != 1 && width != row_bytes {
                    return Err(bad(
                        format!("whole rows of {row_bytes} bytes, read in file order"),
                        format!("a band {width} bytes wide of a deflated member"),
                    ));
                }
                for dst in rows_mut(out, width, pitch) {
                    reader.read_exact(dst).map_err(|e| {
                        source::read_error(path, &self.name, *offset, dst.len() as u64, e)
                    })?;
                    hasher.update(dst);
                }
            }
            Source::InPlace { offset, crc } => {
                // In bounds: the tensor's byte count was checked against the file at open.
                let start = offset
                    .saturating_add(first.saturating_mul(row_bytes).saturating_add(from) as u64);
                let read = |dst: &mut [u8], at: u64| {
                    source::read_exact_at(&self.file.file, dst, at)
                        .map_err(|e| source::read_error(path, &self.name, at, dst.len() as u64, e))
                };
                if width == row_bytes && pitch == width {
                    // Whole rows, packed, are contiguous: one read, straight into place.
                    read(out, start)?;
                } else if count > 1 && row_bytes.saturating_sub(width) <= MAX_SKIP {
                    let span = count
                        .saturating_sub(1)
                        .saturating_mul(row_bytes)
                        .saturating_add(width);
                    if self.span.len() < span {
                        self.span.resize(span, 0);
                    }
                    if let Some(buf) = self.span.get_mut(..span) {
                        read(buf, start)?;
                    }
                    for (i, dst) in rows_mut(out, width, pitch).enumerate() {
                        let at = i.saturating_mul(row_bytes);
                        if let Some(src) = self.span.get(at..at.saturating_add(width)) {
                            dst.copy_from_slice(src);
                        }
                    }
                } else {
                    for (i, dst) in rows_mut(out, width, pitch).enumerate() {
                        read(
                            dst,
                            start.saturating_add(i.saturating_mul(row_bytes) as u64),
                        )?;
                    }
                }
                if let Some((_, _, hashers)) = crc.as_mut() {
                    let rows = out.chunks(pitch.max(1)).filter_map(|r| r.get(..width));
                    for (h, data) in hashers.iter_mut().skip(first).zip(rows) {
                        h.update(data);
                    }
                }
            }
        }
        self.width = width;
        // Both were checked above: `count` rows remain, and `width` more bytes of each.
        self.row = self.row.saturating_add(count);
        if self.row == self.rows {
            self.row = 0;
            self.next = self.next.saturating_add(width);
            if self.next == row_bytes {
                self.finish_crc()?;
            }
        }
        Ok(())
    }
}

impl ColumnBands<'_> {
    /// Called once every byte has been read: checks the member's CRC-32, or for a slice of a stacked
    /// tensor hands its hash to the file and checks the member when it completes the set.
    fn finish_crc(&mut self) -> Result<()> {
        let path = &self.file.path;
        let crc = match &mut self.source {
            Source::InPlace { crc, .. } => crc.take(),
            Source::Whole { .. } => None,
            Source::Stream { hasher, crc, .. } => {
                if let Some(crc) = crc.take() {
                    source::check_crc(path, &self.name, &crc, hasher.clone().finalize())?;
                }
                None
            }
        };
        let Some((index, count)) = self.slice else {
            if let Some((member, mut whole, per_row)) = crc {
                for h in &per_row {
                    whole.combine(h);
                }
                source::check_crc(path, &self.name, &member, whole.finalize())?;
            }
            return Ok(());
        };
        let done = self.file.slices.with(&self.name, count, |state| {
            let (Some(slot), Some(seen)) = (state.crcs.get_mut(index), state.seen.get_mut(index))
            else {
                return None;
            };
            if !*seen {
                *seen = true;
                state.left = state.left.saturating_sub(1);
            }
            if let Some((_, _, per_row)) = &crc {
                let mut slice = crc32fast::Hasher::new();
                for h in per_row {
                    slice.combine(h);
                }
                *slot = Some(slice);
            }
            // Every slice is in: join them, in stack order, behind the bytes ahead of the data.
            (state.left == 0).then(|| state.crcs.iter().flatten().cloned().collect::<Vec<_>>())
        });
        if let (Some(slices), Some((member, mut whole, _))) = (done, crc) {
            if slices.len() == count {
                for h in &slices {
                    whole.combine(h);
                }
                source::check_crc(path, &self.name, &member, whole.finalize())?;
            }
        }
        Ok(())
    }
}

/// The `width`-byte rows of a group laid out `pitch` bytes apart in `out` (see
/// [`ColumnBands::read_rows_pitched`]).
fn rows_mut(out: &mut [u8], width: usize, pitch: usize) -> impl Iterator<Item = &mut [u8]> {
    out.chunks_mut(pitch.max(1))
        .filter_map(move |row| row.get_mut(..width))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::{DType, Error, Format, TensorFile, TensorSpec, Writer};

    /// A `[rows, cols]` u8 tensor with distinct bytes, written in `format`.
    fn matrix(
        dir: &std::path::Path,
        format: Format,
        rows: usize,
        cols: usize,
    ) -> (TensorFile, Vec<u8>) {
        let path = dir.join(match format {
            Format::Pt => "m.pt",
            _ => "m.npz",
        });
        let data: Vec<u8> = (0..rows * cols).map(|i| (i * 7 % 251) as u8).collect();
        let specs = vec![TensorSpec {
            name: "m".into(),
            dtype: DType::U8,
            shape: vec![rows, cols],
        }];
        let mut w = Writer::create(&path, format, specs, BTreeMap::new(), false).unwrap();
        // Uneven parts exercise `write_part`.
        for part in data.chunks(37) {
            w.write_part(part).unwrap();
        }
        w.finish().unwrap();
        (TensorFile::open(&path).unwrap(), data)
    }

    /// `f`'s file copied beside it as `name`, with the byte `at` bytes into `data` (found in the file) flipped
    /// by `mask`, and opened.
    fn damaged(f: TensorFile, data: &[u8], at: usize, mask: u8, name: &str) -> TensorFile {
        let path = f.path().to_path_buf();
        drop(f);
        let mut bytes = std::fs::read(&path).unwrap();
        let start = bytes.windows(data.len()).position(|w| w == data).unwrap();
        bytes[start + at] ^= mask;
        let copy = path.with_file_name(name);
        std::fs::write(&copy, &bytes).unwrap();
        TensorFile::open(&copy).unwrap()
    }

    /// Bytes `from..from + width` of every `cols`-byte row of `data`, row after row.
    fn columns(data: &[u8], cols: usize, from: usize, width: usize) -> Vec<u8> {
        data.chunks(cols)
            .flat_map(|row| row[from..from + width].to_vec())
            .collect()
    }

    #[test]
    fn bands_are_the_columns_of_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (13, 50);
        for format in [Format::Npz, Format::Pt] {
            let (f, data) = matrix(dir.path(), format, rows, cols);
            let mut bands = f.column_bands("m", rows).unwrap();
            assert!(bands.in_place());
            let mut out = Vec::new();
            let mut from = 0;
            for width in [7, 0, 20, 23] {
                bands.read_band(width, &mut out).unwrap();
                let want = columns(&data, cols, from, width);
                assert_eq!(out, want, "{format:?} band at {from}");
                from += width;
            }
            assert_eq!(bands.remaining(), 0);
            assert!(matches!(
                bands.read_band(1, &mut out),
                Err(Error::Writer { .. })
            ));
            assert!(f.column_bands("m", 3).is_err(), "3 does not divide 650");
        }
    }

    #[test]
    fn row_groups_read_every_way_give_the_band() {
        // Bands narrow enough to be read row by row, wide enough to be read in one span,
        // and whole rows, each in groups of rows of uneven sizes.
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (40, 20_000);
        let (f, data) = matrix(dir.path(), Format::Npz, rows, cols);
        // Packed, and padded: rows `pad` bytes apart beyond their width, the padding left as it was.
        for pad in [0, 13] {
            for widths in [vec![100, 19_000, 900], vec![cols]] {
                let mut bands = f.column_bands("m", rows).unwrap();
                let mut from = 0;
                for width in widths {
                    let pitch = width + pad;
                    let mut got = Vec::new();
                    for group in [1, 7, 32] {
                        let mut out = vec![0xAAu8; group * pitch];
                        bands.read_rows_pitched(width, pitch, &mut out).unwrap();
                        for row in out.chunks(pitch) {
                            got.extend_from_slice(&row[..width]);
                            assert!(row[width..].iter().all(|&b| b == 0xAA), "padding kept");
                        }
                    }
                    let want = columns(&data, cols, from, width);
                    assert_eq!(got, want, "band of {width} at {from}, pad {pad}");
                    from += width;
                }
                assert_eq!(bands.remaining(), 0);
            }
        }
    }

    #[test]
    fn row_groups_keep_to_their_band() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (8, 64);
        let (f, _) = matrix(dir.path(), Format::Pt, rows, cols);
        let mut bands = f.column_bands("m", rows).unwrap();
        let mut out = vec![0u8; 3 * 16];
        bands.read_rows(16, &mut out).unwrap();
        // Another width before the band is done, more rows than it has left, a ragged buffer.
        let mut other = vec![0u8; 3 * 8];
        assert!(matches!(
            bands.read_rows(8, &mut other),
            Err(Error::Writer { .. })
        ));
        let mut too_many = vec![0u8; 6 * 16];
        assert!(matches!(
            bands.read_rows(16, &mut too_many),
            Err(Error::Writer { .. })
        ));
        let mut ragged = vec![0u8; 20];
        assert!(matches!(
            bands.read_rows(16, &mut ragged),
            Err(Error::Writer { .. })
        ));
        let mut narrow = vec![0u8; 2 * 8];
        assert!(
            matches!(
                bands.read_rows_pitched(16, 8, &mut narrow),
                Err(Error::Writer { .. })
            ),
            "a pitch narrower than the rows"
        );
        let mut rest = vec![0u8; 5 * 16];
        bands.read_rows(16, &mut rest).unwrap();
        assert_eq!(bands.remaining(), cols - 16);
    }

    #[test]
    fn slices_of_a_stack_are_their_rows_and_check_the_crc_together() {
        let dir = tempfile::tempdir().unwrap();
        // A [3, 4, 10] stack of u8 seen as 12 rows of 10 bytes: slice k is rows 4k..4k+4.
        let (rows, cols, count) = (12, 10, 3);
        for format in [Format::Npz, Format::Pt] {
            let (f, data) = matrix(dir.path(), format, rows, cols);
            // Slices read in any order, each in two bands.
            for index in [2, 0, 1] {
                let mut bands = f.slice_bands("m", index, count, 4).unwrap();
                let mut left = Vec::new();
                let mut right = Vec::new();
                bands.read_band(3, &mut left).unwrap();
                bands.read_band(7, &mut right).unwrap();
                let slice = &data[index * 40..(index + 1) * 40];
                assert_eq!(left, columns(slice, cols, 0, 3), "{format:?} slice {index}");
                assert_eq!(
                    right,
                    columns(slice, cols, 3, 7),
                    "{format:?} slice {index}"
                );
            }
            assert!(f.slice_bands("m", 3, count, 4).is_err());
            assert!(f.slice_bands("m", 0, 7, 4).is_err());
        }
        // A damaged byte in slice 1 is found once the last of the three slices has been read.
        let dir = tempfile::tempdir().unwrap();
        let (f, data) = matrix(dir.path(), Format::Npz, rows, cols);
        let f = damaged(f, &data, 45, 0x10, "damaged-stack.npz");
        let mut out = Vec::new();
        for index in [1, 2] {
            let mut bands = f.slice_bands("m", index, count, 4).unwrap();
            bands.read_band(cols, &mut out).unwrap();
        }
        let mut bands = f.slice_bands("m", 0, count, 4).unwrap();
        let err = bands.read_band(cols, &mut out).unwrap_err();
        assert!(matches!(err, Error::Crc { .. }), "{err}");
    }

    #[test]
    fn the_last_band_checks_the_crc() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (8, 64);
        let (f, data) = matrix(dir.path(), Format::Npz, rows, cols);
        // The data ends the member; the central directory follows it.
        let f = damaged(f, &data, data.len() / 2, 0x10, "damaged.npz");
        let mut bands = f.column_bands("m", rows).unwrap();
        let mut out = Vec::new();
        bands.read_band(cols / 2, &mut out).unwrap();
        let err = bands.read_band(cols / 2, &mut out).unwrap_err();
        assert!(matches!(err, Error::Crc { .. }), "{err}");
        // The same through groups of rows read with spanning reads: only the last group checks.
        let mut bands = f.column_bands("m", rows).unwrap();
        let mut group = vec![0u8; rows / 2 * (cols / 2)];
        for _ in 0..3 {
            bands.read_rows(cols / 2, &mut group).unwrap();
        }
        let err = bands.read_rows(cols / 2, &mut group).unwrap_err();
        assert!(matches!(err, Error::Crc { .. }), "{err}");
        // And through padded groups of whole rows, which cannot be read straight into place.
        let mut bands = f.column_bands("m", rows).unwrap();
        let mut padded = vec![0u8; rows / 2 * (cols + 8)];
        bands
            .read_rows_pitched(cols, cols + 8, &mut padded)
            .unwrap();
        let err = bands
            .read_rows_pitched(cols, cols + 8, &mut padded)
            .unwrap_err();
        assert!(matches!(err, Error::Crc { .. }), "{err}");
    }

    /// A `[count, rows, cols]` f32-sized (4-byte) stacked tensor with distinct bytes, written to an `.npz` whose
    /// members are deflated (as `np.savez_compressed` writes them), and its bytes.
    fn deflated_stack(
        dir: &std::path::Path,
        count: usize,
        rows: usize,
        cols: usize,
    ) -> (TensorFile, Vec<u8>) {
        use std::io::{Read, Write};
        let stored = dir.join("stored.npz");
        let data: Vec<u8> = (0..count * rows * cols * 4)
            .map(|i| (i * 13 % 253) as u8)
            .collect();
        let specs = vec![TensorSpec {
            name: "s".into(),
            dtype: DType::F32,
            shape: vec![count, rows, cols],
        }];
        let mut w = Writer::create(&stored, Format::Npz, specs, BTreeMap::new(), false).unwrap();
        w.write_next(&data).unwrap();
        w.finish().unwrap();
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&stored).unwrap()).unwrap();
        let path = dir.join("deflated.npz");
        let mut out = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let deflate = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for i in 0..archive.len() {
            let mut member = archive.by_index(i).unwrap();
            let mut bytes = Vec::new();
            member.read_to_end(&mut bytes).unwrap();
            out.start_file(member.name().unwrap().to_string(), deflate)
                .unwrap();
            out.write_all(&bytes).unwrap();
        }
        out.finish().unwrap();
        (TensorFile::open(&path).unwrap(), data)
    }

    #[test]
    fn sequential_bands_inflate_a_deflated_member_as_they_read_it() {
        let dir = tempfile::tempdir().unwrap();
        // An unstacked [6, 40] f32 matrix, deflated: `deflated_stack` with a stack of one.
        let (rows, cols) = (6, 40);
        let (f, data) = deflated_stack(dir.path(), 1, rows, cols);
        let row_bytes = cols * 4;
        // Whole rows, top to bottom, in groups of uneven sizes (padded): the stream serves them.
        let mut bands = f.sequential_bands("s", rows).unwrap();
        assert!(!bands.in_place());
        let pitch = row_bytes + 8;
        let mut got = Vec::new();
        for g in [4, 2] {
            let mut group = vec![0u8; g * pitch];
            bands
                .read_rows_pitched(row_bytes, pitch, &mut group)
                .unwrap();
            got.extend(group.chunks(pitch).flat_map(|r| r[..row_bytes].to_vec()));
        }
        assert_eq!(got, data);
        // One row, bands left to right.
        let mut bands = f.sequential_bands("s", 1).unwrap();
        let mut got = Vec::new();
        let mut out = Vec::new();
        for width in [7 * 4, 0, 100 * 4, 133 * 4] {
            bands.read_band(width, &mut out).unwrap();
            got.extend_from_slice(&out);
        }
        assert_eq!(got, data);
        assert_eq!(bands.remaining(), 0);
        // A band of columns of several rows is not in file order: refused, not served wrongly.
        let mut bands = f.sequential_bands("s", rows).unwrap();
        let err = bands.read_band(8, &mut out).unwrap_err();
        assert!(matches!(err, Error::Writer { .. }), "{err}");
        // Stored data is read in place as by `column_bands`.
        let (m, mdata) = matrix(dir.path(), Format::Npz, 5, 30);
        let mut bands = m.sequential_bands("m", 5).unwrap();
        assert!(bands.in_place());
        bands.read_band(30, &mut out).unwrap();
        assert_eq!(out, mdata);
    }

    #[test]
    fn sequential_bands_of_a_deflated_member_check_its_crc_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (4, 8);
        let (f, _) = deflated_stack(dir.path(), 1, rows, cols);
        let f = wrong_crc(f);
        let mut bands = f.sequential_bands("s", rows).unwrap();
        let mut group = vec![0u8; 2 * cols * 4];
        bands.read_rows(cols * 4, &mut group).unwrap();
        let err = bands.read_rows(cols * 4, &mut group).unwrap_err();
        assert!(matches!(err, Error::Crc { .. }), "{err}");
    }

    /// `f`'s file copied beside it with its one member's recorded CRC-32, in the local header and the central
    /// directory, replaced by another, and opened: the deflate stream is intact, so only the CRC can tell.
    fn wrong_crc(f: TensorFile) -> TensorFile {
        let path = f.path().to_path_buf();
        drop(f);
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let crc = archive.by_index(0).unwrap().crc32().to_le_bytes();
        drop(archive);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut patched = 0;
        for i in 0..bytes.len() - 3 {
            if bytes[i..i + 4] == crc {
                bytes[i] ^= 0x01;
                patched += 1;
            }
        }
        assert_eq!(
            patched, 2,
            "the CRC is in the local header and the central directory"
        );
        let damaged = path.with_file_name("wrong-crc.npz");
        std::fs::write(&damaged, &bytes).unwrap();
        TensorFile::open(&damaged).unwrap()
    }

    #[test]
    fn a_deflated_stack_is_inflated_once_in_slice_order() {
        let dir = tempfile::tempdir().unwrap();
        let (count, rows, cols) = (5, 6, 10);
        let (f, data) = deflated_stack(dir.path(), count, rows, cols);
        let slice = rows * cols * 4;
        // In block order, as a conversion asks: one pass over the member, whatever reads each slice.
        for i in 0..count {
            let mut bands = f.slice_bands("s", i, count, rows).unwrap();
            assert!(!bands.in_place());
            let mut out = Vec::new();
            bands.read_band(cols * 4, &mut out).unwrap();
            assert_eq!(out, data[i * slice..(i + 1) * slice], "slice {i}");
        }
        assert_eq!(f.slices.opened("s"), 1);
        // Out of order (two producers asking for blocks 2 and 0 first): the slices read ahead of their turn
        // are kept for their readers, and the member is still inflated once.
        let dir = tempfile::tempdir().unwrap();
        let (f, data) = deflated_stack(dir.path(), count, rows, cols);
        for i in [2, 0, 1, 4, 3] {
            let got = f.read_slice("s", i, count).unwrap();
            assert_eq!(got, data[i * slice..(i + 1) * slice], "slice {i}");
        }
        assert_eq!(f.slices.opened("s"), 1);
        // A slice asked for again after it was handed out is read from the member's start again.
        let again = f.read_slice("s", 1, count).unwrap();
        assert_eq!(again, data[slice..2 * slice]);
        assert_eq!(f.slices.opened("s"), 2);
        // Decoded, the same values as the whole tensor's.
        let whole = f.read_f32("s").unwrap();
        let per = rows * cols;
        assert_eq!(
            f.read_slice_f32("s", 3, count).unwrap(),
            whole[3 * per..4 * per]
        );
    }

    #[test]
    fn the_slice_that_completes_a_deflated_stack_checks_its_crc() {
        let dir = tempfile::tempdir().unwrap();
        let (count, rows, cols) = (3, 4, 8);
        let (f, _) = deflated_stack(dir.path(), count, rows, cols);
        let f = wrong_crc(f);
        for i in 0..count - 1 {
            f.read_slice("s", i, count).unwrap();
        }
        let err = f.read_slice("s", count - 1, count).unwrap_err();
        assert!(matches!(err, Error::Crc { .. }), "{err}");
        // The failed stream is not kept: the next request opens the member again, and fails again.
        let err = f.read_slice("s", count - 1, count).unwrap_err();
        assert!(matches!(err, Error::Crc { .. }), "{err}");
        assert_eq!(f.slices.opened("s"), 2);
    }

    #[test]
    fn a_stored_slice_is_read_alone_and_the_set_checks_the_crc() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (6, 40);
        let (f, data) = matrix(dir.path(), Format::Npz, rows, cols);
        // Six slices of one row each, read alone, in any order.
        for i in [3, 0, 5, 1, 2, 4] {
            assert_eq!(
                f.read_slice("m", i, rows).unwrap(),
                data[i * cols..(i + 1) * cols]
            );
        }
        assert_eq!(f.slices.opened("m"), 0, "a stored member is never streamed");
        let f = damaged(f, &data, 2 * cols + 1, 0x08, "damaged-slices.npz");
        let results: Vec<_> = (0..rows).map(|i| f.read_slice("m", i, rows)).collect();
        assert!(results[..rows - 1].iter().all(Result::is_ok));
        assert!(
            matches!(results[rows - 1], Err(Error::Crc { .. })),
            "{:?}",
            results[rows - 1]
        );
    }

    #[test]
    fn deflated_members_are_served_whole() {
        let f = TensorFile::open(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/vit-token-variants/compressed.npz"),
        )
        .unwrap();
        let t = f
            .tensors()
            .iter()
            .max_by_key(|t| t.nbytes())
            .unwrap()
            .clone();
        let rows = t.shape[0];
        let whole = f.read(&t.name).unwrap();
        let mut bands = f.column_bands(&t.name, rows).unwrap();
        assert!(!bands.in_place());
        let row_bytes = whole.len() / rows;
        let mut out = Vec::new();
        bands.read_band(row_bytes, &mut out).unwrap();
        assert_eq!(out, whole);
        // Padded rows from memory too.
        let mut bands = f.column_bands(&t.name, rows).unwrap();
        let pitch = row_bytes + 5;
        let mut padded = vec![0u8; rows * pitch];
        bands
            .read_rows_pitched(row_bytes, pitch, &mut padded)
            .unwrap();
        let unpadded: Vec<u8> = padded
            .chunks(pitch)
            .flat_map(|r| r[..row_bytes].to_vec())
            .collect();
        assert_eq!(unpadded, whole);
    }
}
