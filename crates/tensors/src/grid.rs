//! Arrays stored as a grid of separately encoded chunks (zarr v2 and v3 as TensorStore writes them for
//! big_vision `.bv` folders and Orbax checkpoints), read front to back as one little-endian C-order stream.
//!
//! A chunk is one device's shard of the array (jax writes one chunk per shard), so a sharded array is
//! split along any axis. The reader assembles the array slab by slab along the leading axis: the chunks
//! whose grid index on axis 0 is the same cover the same rows, and each of them holds its part of every
//! one of those rows, in order. One decoder per chunk of the slab is open at a time and each row is
//! gathered from them, so memory stays at one row of the array plus the decoders' windows, whatever the
//! array's size. Where a slab's only chunk covers whole rows (one chunk, or chunks split along the leading
//! axis only: the common cases), its decoded bytes are the array's bytes and pass straight through.
//!
//! zstd chunks are decoded by the `zstd` crate (libzstd). Measured against the pure-Rust `ruzstd` on the 38 chunks
//! of a full-size big_vision L/16 `.bv` (1,116 MB stored, 1,208 MB decoded; `scripts/zstd-vs-ruzstd`, see
//! BENCHMARKS.md): libzstd decodes at 755 MB/s, ruzstd at 190 MB/s (3.98x slower); building libzstd from C costs
//! 19.5 s once against ruzstd's 2.7 s. Decoding is most of a compressed checkpoint's conversion time, so speed wins.
//!
//! A chunk that is not stored reads as the array's fill value, as TensorStore reads it. Every chunk is
//! decoded to its end and must give exactly the chunk's size: zstd frames as jax writes them carry no
//! checksum, so a length that disagrees is the one sign of damage a reader can see.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use crate::range::RangeReader;
use crate::{Error, Result};

/// Most chunks one array may have: 64 times the shards of a 4096-device mesh; each costs a record in memory.
pub(crate) const MAX_CHUNKS: usize = 1 << 18;

/// Most bytes one chunk may decode to: a row part is held in memory while a row is assembled.
pub(crate) const MAX_CHUNK_BYTES: u64 = 1 << 34;

/// Most bytes one row of an array split across axes other than the first may take: the row is assembled in memory.
const MAX_ROW_BYTES: u64 = 1 << 30;

/// The most a zstd frame expands: a 4-byte RLE block gives at most 128 KiB, and every block needs a header.
pub(crate) const MAX_ZSTD_RATIO: u64 = 32 * 1024;

/// Slack added to the ratio bound so tiny chunks (a frame header and one element) are not refused.
const RATIO_SLACK: u64 = 4096;

/// Most bytes of fill (chunks not stored) one array may read as: a missing chunk costs no bytes on disk, so
/// without a bound a one-line `.zarray` could announce terabytes of zeros.
pub(crate) const MAX_FILL_BYTES: u64 = 1 << 30;

/// Size of the buffer between a chunk's stored bytes and its decoder.
const CHUNK_BUF: usize = 128 * 1024;

/// How a chunk's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Stored as they are.
    Raw,
    /// One zstd frame (zarr's `zstd` compressor, zarr3's `zstd` codec).
    Zstd,
    /// A gzip member (zarr's `gzip` compressor, as jaxlib before 0.4.9 wrote `.bv` chunks).
    Gzip,
    /// A zlib stream (numcodecs' `zlib` compressor).
    Zlib,
}

impl Codec {
    /// The codec's name in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
            Codec::Zlib => "zlib",
        }
    }

    /// The most bytes `stored` bytes of this codec can decode to.
    pub(crate) fn max_decoded(self, stored: u64) -> u64 {
        match self {
            Codec::Raw => stored,
            Codec::Zstd => stored
                .saturating_mul(MAX_ZSTD_RATIO)
                .saturating_add(RATIO_SLACK),
            Codec::Gzip | Codec::Zlib => stored
                .saturating_mul(crate::MAX_DEFLATE_RATIO)
                .saturating_add(RATIO_SLACK),
        }
    }
}

/// Where a chunk's stored bytes are.
#[derive(Debug, Clone)]
pub(crate) enum Stored {
    /// A range of a file: a chunk file of its own, or part of an OCDBT data file or a zarr3 shard.
    File {
        file: Arc<File>,
        path: Arc<PathBuf>,
        offset: u64,
        len: u64,
    },
    /// A range of a file opened only when the chunk is read: a zarr folder's chunk file, of which a sharded
    /// checkpoint has thousands (held open, they would exhaust the process's file descriptors).
    Path {
        path: Arc<PathBuf>,
        offset: u64,
        len: u64,
    },
    /// A range of bytes already in memory (a value stored inline in an OCDBT tree node).
    Inline {
        data: Arc<[u8]>,
        offset: usize,
        len: usize,
    },
}

impl Stored {
    /// Number of stored bytes.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Stored::File { len, .. } | Stored::Path { len, .. } => *len,
            Stored::Inline { len, .. } => *len as u64,
        }
    }

    /// A reader over the stored bytes.
    fn reader(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Stored::File {
                file, offset, len, ..
            } => Box::new(RangeReader::new(Arc::clone(file), *offset, *len)),
            Stored::Path { path, offset, len } => {
                Box::new(RangeReader::new(open_chunk(path)?, *offset, *len))
            }
            Stored::Inline { data, offset, len } => {
                let bytes = offset
                    .checked_add(*len)
                    .and_then(|end| data.get(*offset..end))
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                Box::new(io::Cursor::new(bytes))
            }
        })
    }

    /// Reads `buf.len()` bytes at `at` within the stored range.
    pub(crate) fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let end = at
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        match self {
            Stored::File { file, offset, .. } => {
                crate::range::read_exact_at(file, buf, offset.saturating_add(at))
            }
            Stored::Path { path, offset, .. } => {
                crate::range::read_exact_at(&open_chunk(path)?, buf, offset.saturating_add(at))
            }
            Stored::Inline { data, offset, .. } => {
                let from = usize::try_from(at)
                    .ok()
                    .and_then(|a| a.checked_add(*offset))
                    .ok_or(io::ErrorKind::UnexpectedEof)?;
                let to = usize::try_from(end)
                    .ok()
                    .and_then(|e| e.checked_add(*offset))
                    .ok_or(io::ErrorKind::UnexpectedEof)?;
                let src = data.get(from..to).ok_or(io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }

    /// The sub-range `[at, at + len)` of these stored bytes.
    pub(crate) fn sub(&self, at: u64, len: u64) -> Option<Stored> {
        if at.checked_add(len)? > self.len() {
            return None;
        }
        Some(match self {
            Stored::File {
                file, path, offset, ..
            } => Stored::File {
                file: Arc::clone(file),
                path: Arc::clone(path),
                offset: offset.checked_add(at)?,
                len,
            },
            Stored::Path { path, offset, .. } => Stored::Path {
                path: Arc::clone(path),
                offset: offset.checked_add(at)?,
                len,
            },
            Stored::Inline { data, offset, .. } => Stored::Inline {
                data: Arc::clone(data),
                offset: offset.checked_add(usize::try_from(at).ok()?)?,
                len: usize::try_from(len).ok()?,
            },
        })
    }
}

/// Opens a chunk file checked when the checkpoint was opened: without blocking, and refusing what is no longer a
/// regular file (a FIFO swapped in since).
fn open_chunk(path: &std::path::Path) -> io::Result<File> {
    let file = crate::open_for_reading(path).map_err(io::Error::other)?;
    let meta = file.metadata()?;
    crate::check_regular(path, &meta).map_err(io::Error::other)?;
    Ok(file)
}

/// One stored chunk.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    /// The chunk's key in its store (`0.1.0`, `c/0/0`), for messages.
    pub key: String,
    /// The file that holds it (or the store's root, for inline values), for messages.
    pub path: PathBuf,
    pub stored: Stored,
    pub codec: Codec,
}

/// An array stored as a regular grid of chunks.
#[derive(Debug)]
pub(crate) struct Grid {
    /// The tensor's name, for messages.
    pub name: String,
    /// A number no other entry of the same file uses, standing in for a file offset in entry keys.
    pub id: u64,
    /// The array's shape; a 0-d array is given as `[1]`.
    pub shape: Vec<usize>,
    /// Every chunk's shape (edge chunks are stored whole, padded past the array's end).
    pub chunk_shape: Vec<usize>,
    /// Bytes per element.
    pub elem: usize,
    /// One element of fill, little-endian.
    pub fill: Vec<u8>,
    /// The chunks in C order over the grid; `None` where the store holds none.
    pub chunks: Vec<Option<Chunk>>,
    /// Whether the last chunk along the leading axis is stored cut at the array's end rather than padded
    /// (flax's pieces of a large msgpack array); only for grids split along the leading axis alone.
    pub clipped: bool,
}

impl Grid {
    /// The grid of an array flax's msgpack writer split into pieces: the C-order elements cut into runs of
    /// equal length (the last shorter), each stored raw at `pieces[i] = (offset, len)` of `file`.
    pub(crate) fn pieces(
        path: &std::path::Path,
        name: &str,
        file: &Arc<File>,
        dtype: crate::DType,
        shape: &[usize],
        pieces: &[(u64, u64)],
        id: u64,
    ) -> Result<Grid> {
        let elem = dtype.size();
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::shape_overflow(path, name, shape))?;
        let first = pieces.first().map_or(0, |p| p.1);
        let per = usize::try_from(first)
            .unwrap_or(0)
            .checked_div(elem)
            .unwrap_or(0)
            .max(1);
        let bad = |what: &'static str, expected: u64, found: u64| Error::ChunkGrid {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            what,
            expected,
            found,
        };
        if pieces.len() != numel.div_ceil(per) {
            return Err(bad(
                "pieces",
                numel.div_ceil(per) as u64,
                pieces.len() as u64,
            ));
        }
        let shared = Arc::new(path.to_path_buf());
        let mut chunks = Vec::with_capacity(pieces.len());
        for (i, &(offset, len)) in pieces.iter().enumerate() {
            let elems = per.min(numel.saturating_sub(i.saturating_mul(per)));
            let want = elems.saturating_mul(elem) as u64;
            if len != want {
                return Err(bad("piece bytes", want, len));
            }
            chunks.push(Some(Chunk {
                key: i.to_string(),
                path: path.to_path_buf(),
                stored: Stored::File {
                    file: Arc::clone(file),
                    path: Arc::clone(&shared),
                    offset,
                    len,
                },
                codec: Codec::Raw,
            }));
        }
        let grid = Grid {
            name: name.to_string(),
            id,
            shape: vec![numel],
            chunk_shape: vec![per],
            elem,
            fill: vec![0; elem],
            chunks,
            clipped: true,
        };
        grid.validate(path)?;
        Ok(grid)
    }

    /// Checks a grid's arithmetic and its claims against the stored bytes, before anything is allocated
    /// from them: every count fits, the chunks match the grid, the array is no larger than its stored
    /// chunks can decode to plus a bounded amount of fill.
    pub(crate) fn validate(&self, path: &std::path::Path) -> Result<()> {
        let bad = |what: &'static str, expected: u64, found: u64| Error::ChunkGrid {
            path: path.to_path_buf(),
            tensor: self.name.clone(),
            what,
            expected,
            found,
        };
        if self.shape.len() != self.chunk_shape.len() {
            return Err(bad(
                "chunk rank",
                self.shape.len() as u64,
                self.chunk_shape.len() as u64,
            ));
        }
        if self.fill.len() != self.elem || self.elem == 0 {
            return Err(bad(
                "fill value bytes",
                self.elem as u64,
                self.fill.len() as u64,
            ));
        }
        if let Some(&c) = self.chunk_shape.iter().find(|&&c| c == 0) {
            return Err(bad("a chunk extent of at least", 1, c as u64));
        }
        let grid = self.grid_dims();
        let count = grid
            .iter()
            .try_fold(1usize, |a, &g| a.checked_mul(g))
            .filter(|&n| n <= MAX_CHUNKS)
            .ok_or_else(|| bad("chunk count at most", MAX_CHUNKS as u64, u64::MAX))?;
        if count != self.chunks.len() {
            return Err(bad("chunks", count as u64, self.chunks.len() as u64));
        }
        let chunk_bytes = self
            .chunk_bytes()
            .filter(|&b| b <= MAX_CHUNK_BYTES)
            .ok_or_else(|| bad("chunk bytes at most", MAX_CHUNK_BYTES, u64::MAX))?;
        let row = self
            .row_bytes()
            .ok_or_else(|| bad("row bytes at most", MAX_ROW_BYTES, u64::MAX))?;
        if self.split_rows() && row > MAX_ROW_BYTES {
            return Err(bad("row bytes at most", MAX_ROW_BYTES, row));
        }
        let nbytes = self
            .nbytes()
            .ok_or_else(|| bad("array bytes at most", u64::MAX, u64::MAX))?;
        let mut most: u64 = 0;
        let mut fill: u64 = 0;
        for chunk in &self.chunks {
            match chunk {
                Some(c) => {
                    most = most.saturating_add(c.codec.max_decoded(c.stored.len()).min(chunk_bytes))
                }
                None => fill = fill.saturating_add(chunk_bytes),
            }
        }
        if fill > MAX_FILL_BYTES && nbytes > most.saturating_add(MAX_FILL_BYTES) {
            return Err(Error::ChunksMissing {
                path: path.to_path_buf(),
                tensor: self.name.clone(),
                missing: self.missing() as u64,
                fill_bytes: fill,
                limit: MAX_FILL_BYTES,
            });
        }
        Ok(())
    }

    /// How many chunks the store does not hold (they read as the fill value).
    pub(crate) fn missing(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_none()).count()
    }

    /// The grid's extent along each axis: how many chunks cover it.
    fn grid_dims(&self) -> Vec<usize> {
        self.shape
            .iter()
            .zip(&self.chunk_shape)
            .map(|(&s, &c)| s.div_ceil(c.max(1)))
            .collect()
    }

    /// The array's bytes.
    pub(crate) fn nbytes(&self) -> Option<u64> {
        let n = self
            .shape
            .iter()
            .try_fold(self.elem, |a, &d| a.checked_mul(d))?;
        u64::try_from(n).ok()
    }

    /// One chunk's decoded bytes.
    fn chunk_bytes(&self) -> Option<u64> {
        let n = self
            .chunk_shape
            .iter()
            .try_fold(self.elem, |a, &d| a.checked_mul(d))?;
        u64::try_from(n).ok()
    }

    /// Bytes of one row of the array (one index along axis 0).
    fn row_bytes(&self) -> Option<u64> {
        let n = self
            .shape
            .iter()
            .skip(1)
            .try_fold(self.elem, |a, &d| a.checked_mul(d))?;
        u64::try_from(n).ok()
    }

    /// Whether a chunk covers only part of a row, so rows are gathered from several chunks.
    fn split_rows(&self) -> bool {
        self.shape.get(1..) != self.chunk_shape.get(1..)
    }
}

/// A failure inside a chunk, carried through `io::Error` to the caller, which unwraps it (see
/// `source::read_error`).
fn chunk_error(grid: &Grid, chunk: &Chunk, expected: u64, found: u64) -> io::Error {
    io::Error::other(Error::ChunkSize {
        path: chunk.path.clone(),
        tensor: grid.name.clone(),
        chunk: chunk.key.clone(),
        codec: chunk.codec.name(),
        expected,
        found,
    })
}

fn corrupt_error(grid: &Grid, chunk: &Chunk, err: &io::Error) -> io::Error {
    io::Error::other(Error::ChunkCorrupt {
        path: chunk.path.clone(),
        tensor: grid.name.clone(),
        chunk: chunk.key.clone(),
        codec: chunk.codec.name(),
        reason: err.to_string(),
    })
}

/// One open chunk: its decoder, and how many of its decoded bytes were read.
struct Open {
    chunk: Chunk,
    decoder: Box<dyn Read + Send>,
    read: u64,
}

impl Open {
    fn new(chunk: &Chunk) -> io::Result<Open> {
        let raw = chunk.stored.reader()?;
        let decoder: Box<dyn Read + Send> = match chunk.codec {
            Codec::Raw => raw,
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(
                io::BufReader::with_capacity(CHUNK_BUF, raw),
            )?),
            Codec::Gzip => Box::new(flate2::read::GzDecoder::new(io::BufReader::with_capacity(
                CHUNK_BUF, raw,
            ))),
            Codec::Zlib => Box::new(flate2::read::ZlibDecoder::new(
                io::BufReader::with_capacity(CHUNK_BUF, raw),
            )),
        };
        Ok(Open {
            chunk: chunk.clone(),
            decoder,
            read: 0,
        })
    }

    /// Reads exactly `buf.len()` decoded bytes.
    fn read_exact(&mut self, grid: &Grid, buf: &mut [u8], total: u64) -> io::Result<()> {
        let mut done = 0usize;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            match self.decoder.read(rest) {
                Ok(0) => {
                    return Err(chunk_error(grid, &self.chunk, total, self.read));
                }
                Ok(n) => {
                    done = done.saturating_add(n);
                    self.read = self.read.saturating_add(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(corrupt_error(grid, &self.chunk, &e)),
            }
        }
        Ok(())
    }

    /// Reads the rest of the chunk (rows past the array's end) and checks that it ends at `total` bytes.
    fn finish(&mut self, grid: &Grid, total: u64) -> io::Result<()> {
        let left = total.saturating_sub(self.read);
        let mut sink = io::sink();
        let skipped = io::copy(&mut (&mut self.decoder).take(left), &mut sink)
            .map_err(|e| corrupt_error(grid, &self.chunk, &e))?;
        self.read = self.read.saturating_add(skipped);
        if self.read != total {
            return Err(chunk_error(grid, &self.chunk, total, self.read));
        }
        let mut one = [0u8; 1];
        match self.decoder.read(&mut one) {
            Ok(0) => Ok(()),
            Ok(_) => Err(chunk_error(
                grid,
                &self.chunk,
                total,
                total.saturating_add(1),
            )),
            Err(e) => Err(corrupt_error(grid, &self.chunk, &e)),
        }
    }
}

/// Reads a [`Grid`] as the array's little-endian C-order bytes, front to back.
pub(crate) struct GridReader {
    grid: Arc<Grid>,
    dims: Vec<usize>,
    /// Chunks per slab: the product of the grid's extents past axis 0.
    per_slab: usize,
    /// The next slab to open.
    next_slab: usize,
    /// The open slab's chunks (`None` where not stored), and the array rows it still has to give.
    open: Vec<Option<Open>>,
    rows_left: usize,
    /// The assembled row being handed out, and how much of it was.
    row: Vec<u8>,
    row_pos: usize,
    /// Scratch for one chunk's part of a row.
    part: Vec<u8>,
    /// In a pass-through slab: the array bytes its chunk still has to give.
    direct_left: u64,
    chunk_bytes: u64,
    row_bytes: usize,
    /// Bytes handed out so far, which places a fill element's bytes.
    emitted: u64,
    /// Bytes each chunk of the open slab decodes to.
    slab_chunk_bytes: u64,
}

impl GridReader {
    /// A reader of `grid`, which [`Grid::validate`] accepted.
    pub(crate) fn new(grid: Arc<Grid>) -> GridReader {
        let dims = grid.grid_dims();
        let per_slab = dims.iter().skip(1).product::<usize>();
        let chunk_bytes = grid.chunk_bytes().unwrap_or(0);
        let row_bytes = grid
            .row_bytes()
            .and_then(|r| usize::try_from(r).ok())
            .unwrap_or(0);
        GridReader {
            grid,
            dims,
            per_slab,
            next_slab: 0,
            open: Vec::new(),
            rows_left: 0,
            row: Vec::new(),
            row_pos: 0,
            part: Vec::new(),
            direct_left: 0,
            chunk_bytes,
            row_bytes,
            emitted: 0,
            slab_chunk_bytes: chunk_bytes,
        }
    }

    /// Finishes the open slab's chunks and opens the next slab; false when every slab was read.
    fn next_slab(&mut self) -> io::Result<bool> {
        let grid = Arc::clone(&self.grid);
        let total = self.slab_chunk_bytes;
        for open in self.open.iter_mut().flatten() {
            open.finish(&grid, total)?;
        }
        self.open.clear();
        let slabs = self.dims.first().copied().unwrap_or(0);
        if self.next_slab >= slabs || self.row_bytes == 0 {
            return Ok(false);
        }
        let slab = self.next_slab;
        self.next_slab = slab.saturating_add(1);
        let rows = grid.chunk_shape.first().copied().unwrap_or(1);
        let first_row = slab.saturating_mul(rows);
        let total_rows = grid.shape.first().copied().unwrap_or(0);
        self.rows_left = rows.min(total_rows.saturating_sub(first_row));
        self.slab_chunk_bytes = if grid.clipped {
            (self.rows_left as u64).saturating_mul(self.row_bytes as u64)
        } else {
            self.chunk_bytes
        };
        let from = slab.saturating_mul(self.per_slab);
        for i in from..from.saturating_add(self.per_slab) {
            let open = match grid.chunks.get(i).and_then(Option::as_ref) {
                // A chunk file that can no longer be opened as one says so itself; a decoder that cannot start
                // is the chunk's fault.
                Some(chunk) => Some(Open::new(chunk).map_err(|e| {
                    if e.get_ref().is_some_and(|i| i.is::<Error>()) {
                        e
                    } else {
                        corrupt_error(&grid, chunk, &e)
                    }
                })?),
                None => None,
            };
            self.open.push(open);
        }
        if !grid.split_rows() {
            self.direct_left = (self.rows_left as u64).saturating_mul(self.row_bytes as u64);
            self.rows_left = 0;
        }
        Ok(true)
    }

    /// Assembles the next row of the open slab into `self.row`.
    fn assemble_row(&mut self) -> io::Result<()> {
        let grid = Arc::clone(&self.grid);
        let elem = grid.elem;
        let row_shape = grid.shape.get(1..).unwrap_or_default();
        let part_shape = grid.chunk_shape.get(1..).unwrap_or_default();
        let part_len = part_shape.iter().product::<usize>().saturating_mul(elem);
        self.row.clear();
        self.row.resize(self.row_bytes, 0);
        self.part.resize(part_len, 0);
        let grid_rest = self.dims.get(1..).unwrap_or_default().to_vec();
        for (m, open) in self.open.iter_mut().enumerate() {
            match open {
                Some(open) => open.read_exact(&grid, &mut self.part, self.slab_chunk_bytes)?,
                None => {
                    for e in self.part.chunks_exact_mut(elem) {
                        e.copy_from_slice(&grid.fill);
                    }
                }
            }
            // The chunk's grid index past axis 0, from its position in the slab (C order).
            let mut origin = vec![0usize; grid_rest.len()];
            let mut rest = m;
            for (o, (&g, &c)) in origin
                .iter_mut()
                .zip(grid_rest.iter().zip(part_shape))
                .rev()
            {
                *o = rest.checked_rem(g).unwrap_or(0).saturating_mul(c);
                rest = rest.checked_div(g).unwrap_or(0);
            }
            scatter(
                &self.part,
                part_shape,
                &mut self.row,
                row_shape,
                &origin,
                elem,
            );
        }
        self.row_pos = 0;
        self.rows_left = self.rows_left.saturating_sub(1);
        Ok(())
    }
}

/// Copies a chunk's part of a row (shape `part_shape`) into the row (shape `row_shape`) at `origin`,
/// clipping what lies past the array's end.
fn scatter(
    part: &[u8],
    part_shape: &[usize],
    row: &mut [u8],
    row_shape: &[usize],
    origin: &[usize],
    elem: usize,
) {
    let Some((&last_c, outer_c)) = part_shape.split_last() else {
        // A 1-d array: the row is one element.
        if let (Some(dst), Some(src)) = (row.get_mut(..elem), part.get(..elem)) {
            dst.copy_from_slice(src);
        }
        return;
    };
    let (Some(&last_s), Some(&last_o)) = (row_shape.last(), origin.last()) else {
        return;
    };
    let run = last_c.min(last_s.saturating_sub(last_o));
    if run == 0 {
        return;
    }
    let outer_count: usize = outer_c.iter().product();
    let mut idx = vec![0usize; outer_c.len()];
    for line in 0..outer_count {
        // The line's index within the part, and whether it lies inside the array.
        let mut rest = line;
        for (i, &c) in idx.iter_mut().zip(outer_c).rev() {
            *i = rest.checked_rem(c).unwrap_or(0);
            rest = rest.checked_div(c).unwrap_or(0);
        }
        let inside = idx
            .iter()
            .zip(origin)
            .zip(row_shape)
            .all(|((&i, &o), &s)| i.saturating_add(o) < s);
        if !inside {
            continue;
        }
        let mut dst_line = 0usize;
        for ((&i, &o), &s) in idx.iter().zip(origin).zip(row_shape) {
            dst_line = dst_line
                .saturating_mul(s)
                .saturating_add(i.saturating_add(o));
        }
        let dst = dst_line
            .saturating_mul(last_s)
            .saturating_add(last_o)
            .saturating_mul(elem);
        let src = line.saturating_mul(last_c).saturating_mul(elem);
        let n = run.saturating_mul(elem);
        if let (Some(d), Some(s)) = (
            row.get_mut(dst..dst.saturating_add(n)),
            part.get(src..src.saturating_add(n)),
        ) {
            d.copy_from_slice(s);
        }
    }
}

impl Read for GridReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(rest) = self.row.get(self.row_pos..).filter(|r| !r.is_empty()) {
                let n = rest.len().min(buf.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(..n), rest.get(..n)) {
                    dst.copy_from_slice(src);
                }
                self.row_pos = self.row_pos.saturating_add(n);
                self.emitted = self.emitted.saturating_add(n as u64);
                return Ok(n);
            }
            if self.direct_left > 0 {
                let want = usize::try_from(self.direct_left)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let dst = buf.get_mut(..want).unwrap_or_default();
                let grid = Arc::clone(&self.grid);
                match self.open.first_mut() {
                    Some(Some(open)) => open.read_exact(&grid, dst, self.slab_chunk_bytes)?,
                    _ => {
                        // A missing chunk in pass-through: fill, placed by the bytes handed out so far.
                        let elem = grid.elem.max(1) as u64;
                        for (i, b) in dst.iter_mut().enumerate() {
                            let at = self
                                .emitted
                                .saturating_add(i as u64)
                                .checked_rem(elem)
                                .unwrap_or(0);
                            *b = grid.fill.get(at as usize).copied().unwrap_or(0);
                        }
                    }
                }
                self.direct_left = self.direct_left.saturating_sub(want as u64);
                self.emitted = self.emitted.saturating_add(want as u64);
                return Ok(want);
            }
            if self.rows_left > 0 {
                self.assemble_row()?;
                continue;
            }
            if !self.next_slab()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a grid over `shape` cut into `chunk`-shaped chunks stored raw in memory (edge chunks padded with
    /// 0xEE), leaving out the chunks `missing` names; element `i` of the array (C order) is `i` as u16.
    fn grid(shape: &[usize], chunk: &[usize], missing: &[usize], clipped: bool) -> Grid {
        let dims: Vec<usize> = shape
            .iter()
            .zip(chunk)
            .map(|(s, c)| s.div_ceil(*c))
            .collect();
        let count: usize = dims.iter().product();
        let mut chunks = Vec::new();
        for lin in 0..count {
            let mut g = vec![0; dims.len()];
            let mut rest = lin;
            for (gi, d) in g.iter_mut().zip(&dims).rev() {
                *gi = rest % d;
                rest /= d;
            }
            let n: usize = chunk.iter().product();
            let mut data = Vec::new();
            for j in 0..n {
                let mut idx = vec![0; chunk.len()];
                let mut rest = j;
                for (ix, c) in idx.iter_mut().zip(chunk).rev() {
                    *ix = rest % c;
                    rest /= c;
                }
                let pos: Vec<usize> = idx
                    .iter()
                    .zip(&g)
                    .zip(chunk)
                    .map(|((i, g), c)| g * c + i)
                    .collect();
                if pos.iter().zip(shape).any(|(p, s)| p >= s) {
                    if !clipped {
                        data.extend([0xEE, 0xEE]);
                    }
                    continue;
                }
                let flat = pos.iter().zip(shape).fold(0, |a, (p, s)| a * s + p);
                data.extend((flat as u16).to_le_bytes());
            }
            let len = data.len();
            chunks.push((!missing.contains(&lin)).then(|| Chunk {
                key: lin.to_string(),
                path: PathBuf::from("mem"),
                stored: Stored::Inline {
                    data: Arc::from(data),
                    offset: 0,
                    len,
                },
                codec: Codec::Raw,
            }));
        }
        Grid {
            name: "t".into(),
            id: 0,
            shape: shape.to_vec(),
            chunk_shape: chunk.to_vec(),
            elem: 2,
            fill: vec![0xAB, 0xCD],
            chunks,
            clipped,
        }
    }

    /// The array the grid must read as: each element's index, or the fill where its chunk is missing.
    fn expected(shape: &[usize], chunk: &[usize], missing: &[usize]) -> Vec<u8> {
        let dims: Vec<usize> = shape
            .iter()
            .zip(chunk)
            .map(|(s, c)| s.div_ceil(*c))
            .collect();
        let n: usize = shape.iter().product();
        let mut out = Vec::new();
        for flat in 0..n {
            let mut pos = vec![0; shape.len()];
            let mut rest = flat;
            for (p, s) in pos.iter_mut().zip(shape).rev() {
                *p = rest % s;
                rest /= s;
            }
            let lin = pos
                .iter()
                .zip(chunk)
                .zip(&dims)
                .fold(0, |a, ((p, c), d)| a * d + p / c);
            if missing.contains(&lin) {
                out.extend([0xAB, 0xCD]);
            } else {
                out.extend((flat as u16).to_le_bytes());
            }
        }
        out
    }

    fn read_all(g: Grid, piece: usize) -> io::Result<Vec<u8>> {
        let mut r = GridReader::new(Arc::new(g));
        let mut out = Vec::new();
        let mut buf = vec![0u8; piece];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn grids_split_along_any_axis_read_as_the_array() {
        let cases: &[(&[usize], &[usize], &[usize])] = &[
            (&[5, 7, 3], &[2, 3, 2], &[]),
            (&[5, 7, 3], &[2, 3, 2], &[1, 7, 10]),
            (&[4, 6], &[4, 6], &[]),
            (&[4, 6], &[1, 6], &[2]),
            (&[4, 6], &[4, 2], &[]),
            (&[9], &[4], &[1]),
            (&[8, 8, 3, 16], &[8, 8, 3, 4], &[]),
            (&[3, 1, 5], &[2, 1, 5], &[]),
        ];
        for &(shape, chunk, missing) in cases {
            for piece in [1, 3, 64, 4096] {
                let got = read_all(grid(shape, chunk, missing, false), piece).unwrap();
                assert_eq!(
                    got,
                    expected(shape, chunk, missing),
                    "{shape:?} / {chunk:?} missing {missing:?}, pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn clipped_pieces_read_as_the_array() {
        let got = read_all(grid(&[10], &[4], &[], true), 5).unwrap();
        assert_eq!(got, expected(&[10], &[4], &[]));
    }

    #[test]
    fn a_short_or_long_chunk_is_an_error_naming_it() {
        let mut g = grid(&[4, 6], &[2, 6], &[], false);
        if let Some(Some(c)) = g.chunks.get_mut(1) {
            c.stored = Stored::Inline {
                data: Arc::from(vec![0u8; 10]),
                offset: 0,
                len: 10,
            };
        }
        let err = read_all(g, 64).unwrap_err();
        let err = crate::source::read_error(std::path::Path::new("x"), "t", 0, 48, err);
        assert!(
            matches!(
                err,
                Error::ChunkSize {
                    expected: 24,
                    found: 10,
                    ..
                }
            ),
            "{err}"
        );
        let mut g = grid(&[4, 6], &[2, 6], &[], false);
        if let Some(Some(c)) = g.chunks.get_mut(0) {
            c.stored = Stored::Inline {
                data: Arc::from(vec![0u8; 30]),
                offset: 0,
                len: 30,
            };
        }
        let err = crate::source::read_error(
            std::path::Path::new("x"),
            "t",
            0,
            48,
            read_all(g, 64).unwrap_err(),
        );
        assert!(
            matches!(
                err,
                Error::ChunkSize {
                    expected: 24,
                    found: 25,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn validation_refuses_impossible_grids_before_reading() {
        let mut g = grid(&[4, 6], &[2, 6], &[], false);
        g.chunks.pop();
        assert!(matches!(
            g.validate(std::path::Path::new("m")),
            Err(Error::ChunkGrid { what: "chunks", .. })
        ));
        let mut g = grid(&[4, 6], &[2, 6], &[], false);
        g.chunk_shape = vec![2];
        assert!(matches!(
            g.validate(std::path::Path::new("m")),
            Err(Error::ChunkGrid {
                what: "chunk rank",
                ..
            })
        ));
        // One missing chunk of 4 GiB: more fill than any checkpoint holds, refused by its numbers alone.
        let g = Grid {
            name: "t".into(),
            id: 0,
            shape: vec![1 << 16, 1 << 15],
            chunk_shape: vec![1 << 16, 1 << 15],
            elem: 2,
            fill: vec![0, 0],
            chunks: vec![None],
            clipped: false,
        };
        assert!(
            matches!(
                g.validate(std::path::Path::new("m")),
                Err(Error::ChunksMissing { missing: 1, .. })
            ),
            "{:?}",
            g.validate(std::path::Path::new("m"))
        );
    }
}
