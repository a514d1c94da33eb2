//! Corrupted-file corpus: every fixture checkpoint and every format we write, truncated and
//! bit-flipped, must give a clean one-line error (or, where only tensor values of a
//! safetensors file were damaged, a clean read; zip members fail their CRC-32), and never a panic, an unbounded allocation or an endless loop. Also the
//! crafted hostile files: headers claiming 2^60 elements in each format, a deflate bomb, and
//! pickles naming globals outside the allowlist.
//!
//! Every case runs on a fresh thread under `catch_unwind` with a deadline, and a counting
//! global allocator records the largest single allocation that thread asked for.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use vitconv_tensors::{Error, Format, TensorFile, TensorInfo, TensorSpec, Writer};

/// How long one open-and-read-everything may take before it counts as an endless loop. The
/// largest fixture reads in well under a second even in a debug build.
const DEADLINE: Duration = Duration::from_secs(60);

/// Largest single allocation allowed while reading a file, as a multiple of its length...
const ALLOC_PER_FILE_BYTE: usize = 4;
/// ...plus fixed room for I/O buffers (the 256 KiB inflate buffer, the zip directory buffer).
const ALLOC_SLACK: usize = 4 << 20;

/// Evenly spaced truncation points per file (the empty file included).
const TRUNCATIONS: usize = 16;
/// Byte flips per region (header, central directory, data).
const FLIPS_PER_REGION: usize = 4;

/// 2^60: the element count the hostile headers claim.
const HUGE: u64 = 1 << 60;

// ---------------------------------------------------------------------------------------
// The allocation probe.

/// The system allocator, noting the largest request made on the current thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Bytes this thread has allocated and not freed, and the most that ever were.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the thread-local may already be gone while a thread is being torn down.
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size);
        }
    });
    grow(size);
}

fn grow(size: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(size);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrink(size: usize) {
    // Memory freed by another thread than allocated it is not tracked: saturate at zero.
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(size)));
}

// SAFETY: every method forwards unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the bookkeeping touches only a const-initialised thread-local `Cell`, which
// never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same layout the caller gave us.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same layout the caller gave us.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        shrink(layout.size());
        note(new_size);
        // SAFETY: the caller's pointer, layout and size, unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        // SAFETY: the caller's pointer and layout, unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

// ---------------------------------------------------------------------------------------
// Running one case.

/// What opening and reading every tensor gave.
#[derive(Debug)]
enum Outcome {
    /// Every tensor read: its directory entry and bytes, in file order.
    Read(Vec<(TensorInfo, Vec<u8>)>),
    /// The first error, as displayed.
    Failed(String),
}

/// Opens `path` and reads every tensor, checking each read's length and each error's message.
fn read_all(path: &Path) -> Outcome {
    let file = match TensorFile::open(path) {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(checked_message(path, &e)),
    };
    let mut out = Vec::new();
    for info in file.tensors() {
        match file.read(&info.name) {
            Ok(bytes) => {
                assert_eq!(
                    Some(bytes.len()),
                    info.nbytes(),
                    "{}: `{}` read a different length than its shape says",
                    path.display(),
                    info.name
                );
                out.push((info.clone(), bytes));
            }
            Err(e) => return Outcome::Failed(checked_message(path, &e)),
        }
    }
    Outcome::Read(out)
}

/// An error's message, after checking it is one line naming the file.
fn checked_message(path: &Path, err: &Error) -> String {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
    msg
}

/// Runs [`read_all`] on a fresh thread: fails the test on a panic, on a run past
/// [`DEADLINE`], or on an allocation beyond what the file's size justifies.
fn probe(path: &Path) -> Outcome {
    let owned = path.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        LARGEST.with(|c| c.set(0));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_all(&owned)));
        let largest = LARGEST.with(Cell::get);
        let _ = tx.send((result.map_err(|p| panic_text(&p)), largest));
    });
    let (result, largest) = match rx.recv_timeout(DEADLINE) {
        Ok(r) => r,
        Err(_) => panic!(
            "{}: open and read did not finish within {DEADLINE:?} (endless loop?)",
            path.display()
        ),
    };
    let outcome = result.unwrap_or_else(|p| panic!("{}: reading panicked: {p}", path.display()));
    let file_len = std::fs::metadata(path).map_or(0, |m| m.len() as usize);
    let bound = file_len
        .saturating_mul(ALLOC_PER_FILE_BYTE)
        .saturating_add(ALLOC_SLACK);
    assert!(
        largest <= bound,
        "{}: a single allocation of {largest} bytes for a {file_len}-byte file (bound {bound})",
        path.display()
    );
    outcome
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

/// Writes `bytes` as `name` in `dir` and probes it.
fn probe_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Outcome {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    probe(&path)
}

fn expect_failed(outcome: Outcome, what: &str) -> String {
    match outcome {
        Outcome::Failed(msg) => msg,
        Outcome::Read(t) => panic!("{what}: expected an error, read {} tensors", t.len()),
    }
}

// ---------------------------------------------------------------------------------------
// The corpus: fixtures and files we write, and where their header, directory and data lie.

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Every fixture checkpoint (the published-layout npz files and their variants).
fn fixture_checkpoints() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(fixtures_dir()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "npz") {
                out.push(f);
            }
        }
    }
    out.sort();
    assert!(out.len() >= 6, "fixtures missing: {out:?}");
    out
}

/// Rewrites `src` through [`Writer`] in `format`.
fn write_as(src: &Path, dst: &Path, format: Format) {
    let file = TensorFile::open(src).unwrap();
    let specs = file
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let mut meta = BTreeMap::new();
    if format != Format::Npz {
        meta.insert("format".to_string(), "pt".to_string());
    }
    let mut w = Writer::create(dst, format, specs, meta, false).unwrap();
    for t in file.tensors() {
        w.write_next(&file.read(&t.name).unwrap()).unwrap();
    }
    w.finish().unwrap();
}

/// Byte ranges of a file by role.
#[derive(Debug, Default)]
struct Regions {
    /// Format headers: zip local headers plus `.npy` headers, or the safetensors JSON.
    header: Vec<(usize, usize)>,
    /// The zip central directory and end records.
    directory: Vec<(usize, usize)>,
    /// Bytes that are tensor values and nothing else.
    data: Vec<(usize, usize)>,
    /// Whether flips in `data` must read back cleanly (false when the data is compressed,
    /// where a flip may break the stream).
    data_is_plain: bool,
    /// Offsets where any flip must be refused (signatures, magics, the JSON's opening brace).
    must_fail: Vec<usize>,
}

/// Length of the `.npy` header at the start of `bytes`.
fn npy_header_len(bytes: &[u8]) -> usize {
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    match bytes[6] {
        1 => 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
        _ => 12 + u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
    }
}

fn zip_regions(bytes: &[u8], format: Format) -> Regions {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut r = Regions {
        data_is_plain: true,
        ..Regions::default()
    };
    let mut cd_start = bytes.len();
    for i in 0..archive.len() {
        let e = archive.by_index_raw(i).unwrap();
        let header = e.header_start() as usize;
        let data = e.data_start().unwrap() as usize;
        let end = data + e.compressed_size() as usize;
        cd_start = cd_start.min(e.central_header_start() as usize);
        let stored = e.compression() == zip::CompressionMethod::Stored;
        r.data_is_plain &= stored;
        let name = e.name().unwrap().to_string();
        if format == Format::Npz && stored {
            let hlen = npy_header_len(&bytes[data..]);
            r.header.push((header, data + hlen));
            r.data.push((data + hlen, end));
            if i == 0 {
                r.must_fail.push(data);
            }
        } else if format == Format::Npz || name.contains("/data/") {
            // A compressed npz member, or a `.pt` storage record: all of it is tensor values.
            r.header.push((header, data));
            r.data.push((data, end));
        } else {
            // The pickle and the small records describe the tensors: header-like.
            r.header.push((header, end));
            if name.ends_with("data.pkl") {
                r.must_fail.push(data);
            }
        }
    }
    r.directory.push((cd_start, bytes.len()));
    r.must_fail.push(cd_start);
    r.data.retain(|(a, b)| b > a);
    r
}

fn safetensors_regions(bytes: &[u8]) -> Regions {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    Regions {
        header: vec![(0, 8 + n)],
        directory: Vec::new(),
        data: vec![(8 + n, bytes.len())],
        data_is_plain: true,
        must_fail: vec![8],
    }
}

/// `count` offsets spread evenly over the concatenation of `ranges`.
fn spread(ranges: &[(usize, usize)], count: usize) -> Vec<usize> {
    let total: usize = ranges.iter().map(|(a, b)| b - a).sum();
    if total == 0 {
        return Vec::new();
    }
    (0..count)
        .map(|k| {
            let mut at = (k * total) / count + total / (2 * count);
            for &(a, b) in ranges {
                if at < b - a {
                    return a + at;
                }
                at -= b - a;
            }
            unreachable!("offset inside the ranges")
        })
        .collect()
}

/// Flips one byte: alternately all bits (makes text invalid) and the lowest bit (keeps
/// digits digits, so shapes and lengths change subtly).
fn flipped(bytes: &[u8], at: usize, k: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at] ^= if k.is_multiple_of(2) { 0xFF } else { 0x01 };
    v
}

/// Runs the whole corpus treatment on one file: truncations and flips by region.
fn torture(path: &Path, format: Format, scratch: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let label = path.file_name().unwrap().to_string_lossy().into_owned();
    let Outcome::Read(original) = probe(path) else {
        panic!("{label}: the undamaged file does not read");
    };
    assert!(!original.is_empty());
    let ext = path.extension().unwrap().to_string_lossy().into_owned();
    let case = |name: &str, data: &[u8]| probe_bytes(scratch, &format!("{name}.{ext}"), data);

    // Truncation anywhere before the end leaves an archive without its directory, a header
    // without its data, or data short of its header's promise: always an error.
    for k in 0..TRUNCATIONS {
        let at = k * bytes.len() / TRUNCATIONS;
        let msg = expect_failed(
            case(&format!("{label}-cut{at}"), &bytes[..at]),
            &format!("{label} truncated to {at} bytes"),
        );
        assert!(!msg.is_empty());
    }

    let regions = match format {
        Format::Safetensors => safetensors_regions(&bytes),
        _ => zip_regions(&bytes, format),
    };
    assert!(
        !regions.header.is_empty() && !regions.data.is_empty(),
        "{label}: {regions:?}"
    );
    if format != Format::Safetensors {
        assert!(!regions.directory.is_empty());
    }

    // Header and directory damage: any clean outcome, but no panic, hang or huge allocation.
    for (what, ranges) in [
        ("header", &regions.header),
        ("directory", &regions.directory),
    ] {
        for (k, at) in spread(ranges, FLIPS_PER_REGION).into_iter().enumerate() {
            let _ = case(&format!("{label}-{what}{at}"), &flipped(&bytes, at, k));
        }
    }
    // Damage to structure the reader depends on must be refused.
    for (k, &at) in regions.must_fail.iter().enumerate() {
        expect_failed(
            case(&format!("{label}-sig{at}"), &flipped(&bytes, at, k * 2)),
            &format!("{label} with byte {at} (a signature or magic) flipped"),
        );
    }

    // Data damage: where data is stored plainly, the file still reads, with the same
    // directory, and exactly the flipped byte differs.
    for (k, at) in spread(&regions.data, FLIPS_PER_REGION)
        .into_iter()
        .enumerate()
    {
        let outcome = case(&format!("{label}-data{at}"), &flipped(&bytes, at, k));
        if !regions.data_is_plain {
            // A flip in a compressed stream may break it or change the `.npy` header inside:
            // any clean outcome will do.
            continue;
        }
        if format != Format::Safetensors {
            // Zip members carry a CRC-32 that every full read checks: damaged values are refused.
            let msg = expect_failed(outcome, &format!("{label} with data byte {at} flipped"));
            assert!(msg.contains("CRC-32"), "{label}: data flip at {at}: {msg}");
            continue;
        }
        let Outcome::Read(damaged) = outcome else {
            panic!("{label}: a flip at {at} in plain tensor data was refused: {outcome:?}");
        };
        assert_eq!(damaged.len(), original.len(), "{label}: data flip at {at}");
        let mut differing = 0usize;
        for ((ia, da), (ib, db)) in original.iter().zip(&damaged) {
            assert_eq!(ia, ib, "{label}: a data flip at {at} changed the directory");
            differing += da.iter().zip(db).filter(|(x, y)| x != y).count();
        }
        assert_eq!(differing, 1, "{label}: data flip at {at}");
    }
}

#[test]
fn every_fixture_checkpoint_survives_truncation_and_flips() {
    let scratch = tempfile::tempdir().unwrap();
    for f in fixture_checkpoints() {
        torture(&f, Format::Npz, scratch.path());
    }
}

#[test]
fn every_written_format_survives_truncation_and_flips() {
    let scratch = tempfile::tempdir().unwrap();
    let written = tempfile::tempdir().unwrap();
    // A plain and a bfloat16 checkpoint: every format's dtype paths.
    for src in [
        "vit-prelogits/checkpoint.npz",
        "vit-token-variants/bfloat16.npz",
    ] {
        let src = fixtures_dir().join(src);
        let stem = src.parent().unwrap().file_name().unwrap().to_string_lossy();
        for (format, ext) in [
            (Format::Safetensors, "safetensors"),
            (Format::Pt, "pt"),
            (Format::Npz, "npz"),
        ] {
            let dst = written.path().join(format!("{stem}.{ext}"));
            write_as(&src, &dst, format);
            torture(&dst, format, scratch.path());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Crafted files: builders.

/// A zip member for [`zip_bytes`]: `payload` is stored as given (already compressed for
/// method 8), and `claimed` is the uncompressed size the headers announce.
struct Member<'a> {
    name: &'a str,
    deflate: bool,
    payload: &'a [u8],
    claimed: u32,
}

/// A minimal zip (no zip64, no data descriptors) whose headers say exactly what we ask.
fn zip_bytes(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for m in members {
        let offset = out.len() as u32;
        let method: u16 = if m.deflate { 8 } else { 0 };
        // The CRC-32 covers the uncompressed bytes the headers claim (APPNOTE 4.4.7), so a
        // deflated member's is computed over the first `claimed` bytes it inflates to.
        let mut crc = flate2::Crc::new();
        if m.deflate {
            let mut inflated = std::io::Read::take(
                flate2::read::DeflateDecoder::new(m.payload),
                u64::from(m.claimed),
            );
            let mut piece = [0u8; 1 << 16];
            loop {
                let n = std::io::Read::read(&mut inflated, &mut piece).unwrap_or(0);
                if n == 0 {
                    break;
                }
                crc.update(&piece[..n]);
            }
        } else {
            crc.update(m.payload);
        }
        let fixed = |sig: u32, buf: &mut Vec<u8>| {
            buf.extend_from_slice(&sig.to_le_bytes());
            if sig == 0x0201_4b50 {
                buf.extend_from_slice(&20u16.to_le_bytes()); // version made by
            }
            buf.extend_from_slice(&20u16.to_le_bytes()); // version needed
            buf.extend_from_slice(&0u16.to_le_bytes()); // flags
            buf.extend_from_slice(&method.to_le_bytes());
            buf.extend_from_slice(&[0, 0, 0x21, 0]); // time, date
            buf.extend_from_slice(&crc.sum().to_le_bytes());
            buf.extend_from_slice(&(m.payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&m.claimed.to_le_bytes());
            buf.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes()); // extra length
        };
        fixed(0x0403_4b50, &mut out);
        out.extend_from_slice(m.name.as_bytes());
        out.extend_from_slice(m.payload);
        fixed(0x0201_4b50, &mut central);
        central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(m.name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn stored<'a>(name: &'a str, payload: &'a [u8]) -> Member<'a> {
    Member {
        name,
        deflate: false,
        payload,
        claimed: payload.len() as u32,
    }
}

/// A version-1 `.npy` header with the given dict text.
fn npy_header(dict: &str) -> Vec<u8> {
    let mut text = dict.to_string();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(text.len() as u16).to_le_bytes());
    v.extend_from_slice(text.as_bytes());
    v
}

/// Pickle opcodes, spelled out so each crafted stream reads like the disassembly.
mod pk {
    pub fn global(out: &mut Vec<u8>, module: &str, name: &str) {
        out.push(b'c');
        out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    pub fn stack_global(out: &mut Vec<u8>, module: &str, name: &str) {
        string(out, module);
        string(out, name);
        out.push(0x93);
    }
    pub fn string(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    /// LONG1 with eight bytes: any u64 below 2^63.
    pub fn int(out: &mut Vec<u8>, v: u64) {
        out.push(0x8a);
        out.push(8);
        out.extend_from_slice(&v.to_le_bytes());
    }
    /// `{name: _rebuild_tensor_v2(storage(key, numel), 0, shape, contiguous strides)}` as an
    /// OrderedDict, the way torch.save lays out a state dict.
    pub fn state_dict(tensors: &[(&str, &str, u64, &[u64])]) -> Vec<u8> {
        let strided: Vec<_> = tensors
            .iter()
            .map(|&(name, key, numel, shape)| (name, key, numel, shape, None))
            .collect();
        state_dict_strided(&strided)
    }
    /// One tensor: name, storage key, storage numel, shape, and strides (contiguous if `None`).
    pub type Entry<'a> = (&'a str, &'a str, u64, &'a [u64], Option<&'a [u64]>);
    /// As [`state_dict`], with explicit strides where given (a view: transposed, expanded).
    pub fn state_dict_strided(tensors: &[Entry]) -> Vec<u8> {
        let mut out = vec![0x80, 2];
        global(&mut out, "collections", "OrderedDict");
        out.extend_from_slice(b")R(");
        for &(name, key, numel, shape, given) in tensors {
            string(&mut out, name);
            tensor(&mut out, key, numel, shape, given);
        }
        out.extend_from_slice(b"u.");
        out
    }
    /// `_rebuild_tensor_v2(storage(key, numel), 0, shape, strides)`: one tensor value, as
    /// torch.save writes it, for placing anywhere in a hand-made pickle.
    pub fn tensor(out: &mut Vec<u8>, key: &str, numel: u64, shape: &[u64], given: Option<&[u64]>) {
        global(out, "torch._utils", "_rebuild_tensor_v2");
        out.extend_from_slice(b"((");
        string(out, "storage");
        global(out, "torch", "FloatStorage");
        string(out, key);
        string(out, "cpu");
        int(out, numel);
        out.extend_from_slice(b"tQ");
        int(out, 0);
        out.push(b'(');
        for &d in shape {
            int(out, d);
        }
        out.extend_from_slice(b"t(");
        let mut stride = 1u64;
        let mut strides = Vec::new();
        for &d in shape.iter().rev() {
            strides.push(stride);
            stride = stride.saturating_mul(d.max(1));
        }
        strides.reverse();
        for s in given.map_or(strides, <[u64]>::to_vec) {
            int(out, s);
        }
        out.extend_from_slice(b"t\x89");
        global(out, "collections", "OrderedDict");
        out.extend_from_slice(b")RtR");
    }
}

/// A torch.save-style archive around `pickle`, with the given storage records.
fn pt_bytes(pickle: &[u8], records: &[(&str, &[u8])]) -> Vec<u8> {
    let names: Vec<String> = records
        .iter()
        .map(|(k, _)| format!("archive/data/{k}"))
        .collect();
    let mut members = vec![stored("archive/data.pkl", pickle)];
    for ((_, data), name) in records.iter().zip(&names) {
        members.push(stored(name, data));
    }
    members.push(stored("archive/byteorder", b"little"));
    members.push(stored("archive/version", b"3\n"));
    zip_bytes(&members)
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

// ---------------------------------------------------------------------------------------
// Crafted files: the cases.

#[test]
fn crafted_archives_read_back_as_built() {
    // The builders are only as good as their output: a well-formed crafted file must read.
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..16).collect();
    let mut npy = npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }");
    npy.extend_from_slice(&data);
    let Outcome::Read(t) = probe_bytes(dir.path(), "ok.npz", &zip_bytes(&[stored("x.npy", &npy)]))
    else {
        panic!("crafted npz does not read");
    };
    assert_eq!(
        (t[0].0.shape.as_slice(), t[0].1.as_slice()),
        (&[4][..], &data[..])
    );
    let pkl = pk::state_dict(&[("a.weight", "0", 4, &[2, 2])]);
    let Outcome::Read(t) = probe_bytes(dir.path(), "ok.pt", &pt_bytes(&pkl, &[("0", &data)]))
    else {
        panic!("crafted pt does not read");
    };
    assert_eq!(t[0].0.name, "a.weight");
    assert_eq!(t[0].1, data);
}

#[test]
fn npy_claiming_2_pow_60_elements_fails_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    for shape in [
        format!("({HUGE},)"),
        format!("({}, {})", 1u64 << 40, 1u64 << 40),
    ] {
        let mut v = npy_header(&format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
        ));
        v.extend_from_slice(&[0; 16]);
        // `probe` bounds the largest allocation to a few MiB for this tiny file.
        let msg = expect_failed(probe_bytes(dir.path(), "huge.npy", &v), "npy 2^60");
        assert!(
            msg.contains("size mismatch") || msg.contains("overflows"),
            "{msg}"
        );
    }
}

#[test]
fn npz_member_claiming_2_pow_60_elements_fails_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mut npy = npy_header(&format!(
        "{{'descr': '<f8', 'fortran_order': True, 'shape': ({HUGE}, 3), }}"
    ));
    npy.extend_from_slice(&[0; 48]);
    let msg = expect_failed(
        probe_bytes(
            dir.path(),
            "huge.npz",
            &zip_bytes(&[stored("big.npy", &npy)]),
        ),
        "npz 2^60",
    );
    assert!(msg.contains("`big`"), "names the tensor: {msg}");
}

#[test]
fn safetensors_claiming_2_pow_60_elements_fails_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let total = HUGE * 4;
    for (shape, end) in [(HUGE, 16u64), (HUGE, total)] {
        let json =
            format!(r#"{{"big":{{"dtype":"F32","shape":[{shape}],"data_offsets":[0,{end}]}}}}"#);
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend_from_slice(&[0; 16]);
        expect_failed(
            probe_bytes(dir.path(), "huge.safetensors", &v),
            "safetensors 2^60",
        );
    }
}

#[test]
fn pt_claiming_2_pow_60_elements_fails_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let data = [0u8; 16];
    // A storage claiming 2^60 floats over a 16-byte record, and a view of 2^60 elements
    // over a storage that honestly holds 4.
    for (numel, shape) in [(HUGE, HUGE), (4, HUGE)] {
        let pkl = pk::state_dict(&[("big", "0", numel, &[shape])]);
        let msg = expect_failed(
            probe_bytes(dir.path(), "huge.pt", &pt_bytes(&pkl, &[("0", &data)])),
            "pt 2^60",
        );
        assert!(msg.contains("`big`"), "names the tensor: {msg}");
    }
}

#[test]
fn pt_expanded_view_of_2_pow_40_elements_fails_before_allocating() {
    // Stride 0 repeats one stored element: the view spans 4 bytes of its storage but would
    // read out 2^42. It must be refused at open, not allocated at read.
    let dir = tempfile::tempdir().unwrap();
    let data = [0u8; 16];
    let huge = 1u64 << 40;
    let pkl = pk::state_dict_strided(&[("expanded", "0", 4, &[huge], Some(&[0]))]);
    let msg = expect_failed(
        probe_bytes(dir.path(), "expanded.pt", &pt_bytes(&pkl, &[("0", &data)])),
        "pt stride-0 view of 2^40 elements",
    );
    assert!(msg.contains("`expanded`"), "names the tensor: {msg}");

    // A transposed view reads back in C order, so the check does not refuse honest views.
    let data: Vec<u8> = (0..6u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
    let pkl = pk::state_dict_strided(&[("t", "0", 6, &[3, 2], Some(&[1, 3]))]);
    let Outcome::Read(t) = probe_bytes(dir.path(), "t.pt", &pt_bytes(&pkl, &[("0", &data)])) else {
        panic!("a transposed view should read");
    };
    let values: Vec<f32> = t[0]
        .1
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
}

#[test]
fn deflate_bomb_is_cut_off_at_the_claimed_size() {
    // A member whose deflate stream expands to 64 MiB of zeros while its headers claim a
    // 16-byte array: the read stops at the claim, allocates nothing near 64 MiB, and ends.
    let dir = tempfile::tempdir().unwrap();
    let mut npy = npy_header("{'descr': '|u1', 'fortran_order': False, 'shape': (16,), }");
    let claimed = (npy.len() + 16) as u32;
    npy.resize(64 << 20, 0);
    let compressed = raw_deflate(&npy);
    let member = Member {
        name: "bomb.npy",
        deflate: true,
        payload: &compressed,
        claimed,
    };
    let Outcome::Read(t) = probe_bytes(dir.path(), "bomb.npz", &zip_bytes(&[member])) else {
        panic!("a bomb claiming 16 bytes should read its 16 bytes");
    };
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].1, vec![0u8; 16]);

    // The same stream claiming more than deflate could ever produce from it is refused
    // before anything is inflated.
    let liar = Member {
        name: "bomb.npy",
        deflate: true,
        payload: &compressed,
        claimed: u32::MAX,
    };
    let msg = expect_failed(
        probe_bytes(dir.path(), "liar.npz", &zip_bytes(&[liar])),
        "deflate claim beyond the maximum ratio",
    );
    assert!(msg.contains("bomb"), "{msg}");
}

#[test]
fn deflate_stream_shorter_than_its_claim_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut npy = npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (256,), }");
    npy.extend_from_slice(&[7u8; 1024]);
    let compressed = raw_deflate(&npy[..npy.len() - 512]);
    let member = Member {
        name: "short.npy",
        deflate: true,
        payload: &compressed,
        claimed: npy.len() as u32,
    };
    expect_failed(
        probe_bytes(dir.path(), "short.npz", &zip_bytes(&[member])),
        "deflate stream ending before its claim",
    );
}

/// Globals a pickle could use to run code; each must be refused by name.
const HOSTILE_GLOBALS: [(&str, &str); 10] = [
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("__builtin__", "getattr"),
    ("subprocess", "Popen"),
    ("torch", "load"),
    ("torch._utils", "_rebuild_tensor"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("collections", "defaultdict"),
];

#[test]
fn pickle_globals_outside_the_allowlist_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = [0u8; 16];
    for (module, name) in HOSTILE_GLOBALS {
        // GLOBAL (protocol 2), STACK_GLOBAL (protocol 4), and a hostile global hidden after a
        // valid tensor entry.
        let mut by_global = vec![0x80, 2];
        pk::global(&mut by_global, module, name);
        pk::string(&mut by_global, "touch pwned");
        by_global.extend_from_slice(b"\x85R.");
        let mut by_stack = vec![0x80, 4];
        pk::stack_global(&mut by_stack, module, name);
        pk::string(&mut by_stack, "touch pwned");
        by_stack.extend_from_slice(b"\x85R.");
        let mut hidden = pk::state_dict(&[("ok", "0", 4, &[4])]);
        hidden.truncate(hidden.len() - 2); // before SETITEMS and STOP
        pk::string(&mut hidden, "evil");
        pk::global(&mut hidden, module, name);
        hidden.extend_from_slice(b"u.");
        for pkl in [by_global, by_stack, hidden] {
            let path = dir.path().join("hostile.pt");
            std::fs::write(&path, pt_bytes(&pkl, &[("0", &data)])).unwrap();
            let err = TensorFile::open(&path).expect_err("a hostile global must be refused");
            match &err {
                Error::DisallowedGlobal {
                    module: m, name: n, ..
                } => assert_eq!((m.as_str(), n.as_str()), (module, name)),
                other => panic!("{module}.{name}: expected DisallowedGlobal, got {other}"),
            }
            let msg = checked_message(&path, &err);
            assert!(msg.contains(&format!("{module}.{name}")), "{msg}");
        }
    }
}

#[test]
fn crafted_dtype_and_shape_lies_are_errors() {
    // Smaller lies of the kinds the 2^60 cases push to the extreme.
    let dir = tempfile::tempdir().unwrap();
    let mut npy = npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }");
    npy.extend_from_slice(&[0; 16]);
    expect_failed(
        probe_bytes(dir.path(), "short.npy", &npy),
        "npy one element short",
    );
    let mut npy = npy_header("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }");
    npy.extend_from_slice(&[0; 16]);
    let msg = expect_failed(
        probe_bytes(dir.path(), "complex.npy", &npy),
        "complex dtype",
    );
    assert!(msg.contains("<c8"), "{msg}");
    let pkl = pk::state_dict(&[("w", "7", 4, &[4])]);
    let msg = expect_failed(
        probe_bytes(
            dir.path(),
            "norecord.pt",
            &pt_bytes(&pkl, &[("0", &[0; 16])]),
        ),
        "missing storage record",
    );
    assert!(msg.contains("data/7"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// Crafted zips laid out byte by byte: aliased, duplicated and misdescribed members.

/// A zip laid out by hand: local records where the test puts them, and directory entries
/// that say whatever the test chooses, so each archive breaks exactly one rule.
mod raw {
    /// What a central-directory entry (and its local header) records.
    #[derive(Clone)]
    pub struct Entry {
        pub name: Vec<u8>,
        pub flags: u16,
        pub method: u16,
        pub crc: u32,
        pub compressed: u32,
        pub size: u32,
        pub offset: u32,
        pub extra: Vec<u8>,
    }

    impl Entry {
        /// A stored member of `content`, whose local header will sit at `offset`.
        pub fn stored(name: &str, content: &[u8], offset: usize) -> Entry {
            Entry {
                name: name.as_bytes().to_vec(),
                flags: 0,
                method: 0,
                crc: crc32fast::hash(content),
                compressed: content.len() as u32,
                size: content.len() as u32,
                offset: offset as u32,
                extra: Vec::new(),
            }
        }
    }

    fn common(e: &Entry, out: &mut Vec<u8>) {
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed
        out.extend_from_slice(&e.flags.to_le_bytes());
        out.extend_from_slice(&e.method.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0x21, 0]); // time, date
        out.extend_from_slice(&e.crc.to_le_bytes());
        out.extend_from_slice(&e.compressed.to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(e.extra.len() as u16).to_le_bytes());
    }

    /// A local header for `e` followed by `payload`.
    pub fn local(e: &Entry, payload: &[u8]) -> Vec<u8> {
        let mut out = 0x0403_4b50u32.to_le_bytes().to_vec();
        common(e, &mut out);
        out.extend_from_slice(&e.name);
        out.extend_from_slice(&e.extra);
        out.extend_from_slice(payload);
        out
    }

    /// The central-directory entry for `e`.
    pub fn central(e: &Entry) -> Vec<u8> {
        let mut out = 0x0201_4b50u32.to_le_bytes().to_vec();
        out.extend_from_slice(&20u16.to_le_bytes()); // version made by
        common(e, &mut out);
        out.extend_from_slice(&[0; 8]); // comment length, disk, internal and external attributes
        out.extend_from_slice(&[0; 2]);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.name);
        out.extend_from_slice(&e.extra);
        out
    }

    /// An end record declaring `count` entries in `size` directory bytes at `offset`.
    pub fn end(count: u16, size: usize, offset: usize, comment: &[u8]) -> Vec<u8> {
        let mut out = 0x0605_4b50u32.to_le_bytes().to_vec();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&(size as u32).to_le_bytes());
        out.extend_from_slice(&(offset as u32).to_le_bytes());
        out.extend_from_slice(&(comment.len() as u16).to_le_bytes());
        out.extend_from_slice(comment);
        out
    }

    /// Members laid out one after another, then the directory of `entries` (which may
    /// differ from the members: aliases, lies), then the end record.
    pub fn archive(locals: &[Vec<u8>], entries: &[Entry]) -> Vec<u8> {
        let mut out: Vec<u8> = locals.concat();
        let cd_offset = out.len();
        let cd: Vec<u8> = entries.iter().flat_map(central).collect();
        out.extend_from_slice(&cd);
        out.extend_from_slice(&end(entries.len() as u16, cd.len(), cd_offset, b""));
        out
    }

    /// An archive of stored members, entries matching their local headers.
    pub fn honest(members: &[(&str, &[u8])]) -> (Vec<u8>, Vec<Entry>) {
        let mut locals = Vec::new();
        let mut entries = Vec::new();
        let mut at = 0;
        for (name, content) in members {
            let e = Entry::stored(name, content, at);
            let l = local(&e, content);
            at += l.len();
            locals.push(l);
            entries.push(e);
        }
        (archive(&locals, &entries), entries)
    }
}

/// An `.npy` of `|u1` elements holding `data`.
fn npy_u8(data: &[u8]) -> Vec<u8> {
    let mut v = npy_header(&format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({},), }}",
        data.len()
    ));
    v.extend_from_slice(data);
    v
}

/// Opens `bytes` as `name` and returns the error, checked to name the file on one line.
fn open_error(dir: &Path, name: &str, bytes: &[u8]) -> Error {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = TensorFile::open(&path).expect_err("the archive must be refused");
    checked_message(&path, &err);
    err
}

#[test]
fn zip_members_whose_bytes_overlap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Member `b.npy` lies inside member `a.npy`'s data: a valid array made of another's bytes.
    let b_content = npy_u8(&[7; 8]);
    let b_entry = raw::Entry::stored("b.npy", &b_content, 0);
    let b_record = raw::local(&b_entry, &b_content);
    let a_content = npy_u8(&b_record);
    let a_entry = raw::Entry::stored("a.npy", &a_content, 0);
    let a_record = raw::local(&a_entry, &a_content);
    let b_at = a_record.len() - b_record.len();
    let b_entry = raw::Entry {
        offset: b_at as u32,
        ..b_entry
    };
    let bytes = raw::archive(&[a_record], &[a_entry.clone(), b_entry]);
    let err = open_error(dir.path(), "overlap.npz", &bytes);
    match &err {
        Error::ZipOverlap { member, other, .. } => {
            assert_eq!(member, "b.npy");
            assert!(other.contains("`a.npy`"), "{other}");
        }
        other => panic!("expected ZipOverlap, got {other}"),
    }
    // Without the alias the same archive reads: the check refuses only what overlaps.
    let a_record = raw::local(&a_entry, &a_content);
    let bytes = raw::archive(&[a_record], std::slice::from_ref(&a_entry));
    let Outcome::Read(t) = probe_bytes(dir.path(), "one.npz", &bytes) else {
        panic!("the honest archive must read");
    };
    assert_eq!(t.len(), 1);

    // A member whose claimed size runs into the central directory.
    let a_record = raw::local(&a_entry, &a_content);
    let long = raw::Entry {
        compressed: a_entry.compressed + 10,
        size: a_entry.size + 10,
        ..a_entry.clone()
    };
    let err = open_error(
        dir.path(),
        "intocd.npz",
        &raw::archive(&[a_record], &[long]),
    );
    assert!(
        matches!(&err, Error::ZipOverlap { other, .. } if other.contains("central directory")),
        "{err}"
    );
}

#[test]
fn zip_aliases_of_one_member_fail_fast() {
    // 2000 directory entries pointing at one deflated member: under other names the local
    // header gives them away, under its own name they are duplicates. Either is refused
    // at open, long before anything is inflated.
    let dir = tempfile::tempdir().unwrap();
    let content = npy_u8(&vec![0; 1 << 20]);
    let payload = raw_deflate(&content);
    let base = raw::Entry {
        method: 8,
        compressed: payload.len() as u32,
        ..raw::Entry::stored("w.npy", &content, 0)
    };
    let record = raw::local(&base, &payload);
    for rename in [true, false] {
        let entries: Vec<raw::Entry> = (0..2000)
            .map(|i| raw::Entry {
                name: if rename && i > 0 {
                    format!("w{i}.npy").into_bytes()
                } else {
                    base.name.clone()
                },
                ..base.clone()
            })
            .collect();
        let bytes = raw::archive(std::slice::from_ref(&record), &entries);
        let started = std::time::Instant::now();
        let err = open_error(dir.path(), "aliases.npz", &bytes);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        if rename {
            match &err {
                Error::ZipLocalName { member, local, .. } => {
                    assert_eq!((member.as_str(), local.as_str()), ("w1.npy", "w.npy"));
                }
                other => panic!("expected ZipLocalName, got {other}"),
            }
        } else {
            assert!(
                matches!(&err, Error::ZipDuplicateMember { member, .. } if member == "w.npy"),
                "{err}"
            );
            assert!(err.to_string().contains("`w.npy` occurs twice"), "{err}");
        }
    }
}

#[test]
fn zip_duplicate_member_names_are_refused_by_name() {
    // Two real members of one name, each with its own bytes: the directory has both.
    let dir = tempfile::tempdir().unwrap();
    let one = npy_u8(&[1; 4]);
    let two = npy_u8(&[2; 4]);
    let (bytes, _) = raw::honest(&[("x.npy", &one), ("x.npy", &two)]);
    let err = open_error(dir.path(), "dup.npz", &bytes);
    assert!(
        matches!(&err, Error::ZipDuplicateMember { member, .. } if member == "x.npy"),
        "{err}"
    );
    // The same in a torch archive: two `data/0` records.
    let pkl = pk::state_dict(&[("w", "0", 4, &[4])]);
    let data = [0u8; 16];
    let (bytes, _) = raw::honest(&[
        ("archive/data.pkl", &pkl),
        ("archive/data/0", &data),
        ("archive/data/0", &data),
    ]);
    let err = open_error(dir.path(), "dup.pt", &bytes);
    assert!(
        matches!(&err, Error::ZipDuplicateMember { member, .. } if member == "archive/data/0"),
        "{err}"
    );
}

#[test]
fn zip_end_record_disagreeing_with_its_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let content = npy_u8(&[1; 4]);
    let (mut bytes, _) = raw::honest(&[("a.npy", &content), ("b.npy", &content)]);
    // The end record's two entry counts sit 8 and 10 bytes into it, 22 bytes from the end.
    let at = bytes.len() - 22;
    bytes[at + 8..at + 12].copy_from_slice(&[1, 0, 1, 0]);
    let err = open_error(dir.path(), "count.npz", &bytes);
    assert!(
        matches!(
            err,
            Error::ZipEntryCount {
                declared: 1,
                found: 2,
                ..
            }
        ),
        "{err}"
    );

    // A directory offset that points into the data, with the size unchanged.
    let (mut bytes, _) = raw::honest(&[("a.npy", &content), ("b.npy", &content)]);
    let at = bytes.len() - 22;
    bytes[at + 16..at + 20].copy_from_slice(&10u32.to_le_bytes());
    let err = open_error(dir.path(), "offset.npz", &bytes);
    assert!(
        matches!(err, Error::ZipDirectoryMisplaced { offset: 10, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("points into the data"), "{err}");

    // A directory offset past the end of the file.
    bytes[at + 16..at + 20].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    let err = open_error(dir.path(), "past.npz", &bytes);
    assert!(
        matches!(
            err,
            Error::ZipOffsetPastEnd {
                what: "central directory",
                ..
            }
        ),
        "{err}"
    );

    // Bytes after the end record that its comment does not account for.
    let (mut bytes, _) = raw::honest(&[("a.npy", &content)]);
    bytes.extend_from_slice(b"trailing");
    let err = open_error(dir.path(), "trailing.npz", &bytes);
    assert!(
        matches!(err, Error::ZipTrailingData { trailing: 8, .. }),
        "{err}"
    );
}

#[test]
fn zip64_end_record_past_the_end_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let content = npy_u8(&[1; 4]);
    let (bytes, _) = raw::honest(&[("a.npy", &content)]);
    let (body, end) = bytes.split_at(bytes.len() - 22);
    let mut out = body.to_vec();
    // A zip64 locator naming a zip64 end record far past the end of the file.
    out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(1u64 << 40).to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(end);
    let err = open_error(dir.path(), "z64.npz", &out);
    assert!(
        matches!(err, Error::ZipOffsetPastEnd { what: "zip64 end record", offset, .. } if offset == 1 << 40),
        "{err}"
    );
    assert!(!err.to_string().contains("EOCD"), "{err}");
}

#[test]
fn zip_local_header_naming_another_member_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let content = npy_u8(&[1; 4]);
    let local_entry = raw::Entry::stored("real.npy", &content, 0);
    let record = raw::local(&local_entry, &content);
    // Same length of name, so everything else lines up.
    let claimed = raw::Entry {
        name: b"fake.npy".to_vec(),
        ..local_entry
    };
    let err = open_error(dir.path(), "name.npz", &raw::archive(&[record], &[claimed]));
    assert!(
        matches!(&err, Error::ZipLocalName { member, local, .. } if member == "fake.npy" && local == "real.npy"),
        "{err}"
    );
}

#[test]
fn zip_encrypted_members_are_named_and_aes_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let content = npy_u8(&[1; 4]);
    // Traditional encryption: flag bit 0.
    let e = raw::Entry {
        flags: 1,
        ..raw::Entry::stored("secret.npy", &content, 0)
    };
    let bytes = raw::archive(&[raw::local(&e, &content)], &[e]);
    let err = open_error(dir.path(), "zipcrypto.npz", &bytes);
    assert!(
        matches!(&err, Error::ZipEncrypted { member, aes: false, .. } if member == "secret.npy"),
        "{err}"
    );
    // WinZip AES: method 99 with its 0x9901 extra field (vendor version 2, "AE", AES-256, deflate).
    let mut extra = 0x9901u16.to_le_bytes().to_vec();
    extra.extend_from_slice(&7u16.to_le_bytes());
    extra.extend_from_slice(&[2, 0, b'A', b'E', 3, 8, 0]);
    let e = raw::Entry {
        flags: 1,
        method: 99,
        extra,
        ..raw::Entry::stored("secret.npy", &content, 0)
    };
    let bytes = raw::archive(&[raw::local(&e, &content)], &[e]);
    let err = open_error(dir.path(), "aes.npz", &bytes);
    assert!(
        matches!(&err, Error::ZipEncrypted { aes: true, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("AES"), "{err}");
}

#[test]
fn many_false_end_records_fail_in_milliseconds() {
    // 300 KB of false end records (each claiming a directory) before a missing real one,
    // and then the same with a real archive at the end: one scan of the tail either way.
    let dir = tempfile::tempdir().unwrap();
    let false_record = raw::end(1, 46, 0, b"");
    let junk: Vec<u8> = false_record
        .iter()
        .copied()
        .cycle()
        .take(300_000 - false_record.len())
        .collect();
    let mut bytes = b"PK\x03\x04".to_vec();
    bytes.extend_from_slice(&junk);
    let started = std::time::Instant::now();
    let err = open_error(dir.path(), "false.npz", &bytes);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            Error::ZipTrailingData { .. } | Error::ZipDirectoryMisplaced { .. }
        ),
        "{err}"
    );

    // The false records inside a real member's data: the real end record still wins, and fast.
    let content = npy_u8(&junk);
    let (bytes, _) = raw::honest(&[("a.npy", &content)]);
    let started = std::time::Instant::now();
    let Outcome::Read(t) = probe_bytes(dir.path(), "real.npz", &bytes) else {
        panic!("the real archive must read");
    };
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(t[0].1, junk);
}

#[test]
fn npz_members_without_the_npy_suffix_are_read_or_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let a = npy_u8(&[1, 2, 3]);
    let b = npy_u8(&[4, 5]);
    let c = npy_u8(&[6]);
    let (bytes, _) = raw::honest(&[("w.npy", &a), ("head/extra", &b), ("x.NPY", &c)]);
    let Outcome::Read(t) = probe_bytes(dir.path(), "suffixes.npz", &bytes) else {
        panic!("arrays without the .npy suffix must read");
    };
    let names: Vec<&str> = t.iter().map(|(i, _)| i.name.as_str()).collect();
    assert_eq!(names, ["w", "head/extra", "x.NPY"]);
    assert_eq!(t[1].1, [4, 5]);

    let (bytes, _) = raw::honest(&[("w.npy", &a), ("notes.txt", b"hello")]);
    let err = open_error(dir.path(), "notes.npz", &bytes);
    assert!(
        matches!(&err, Error::NpzNotAnArray { member, .. } if member == "notes.txt"),
        "{err}"
    );
    assert!(err.to_string().contains("`notes.txt`"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Pickles: byte budgets, linear dicts, no tensor dropped, one pickle per archive.

#[test]
fn pickle_memo_string_read_back_thousands_of_times_hits_the_byte_budget() {
    // A 60 KB string put in the memo once and fetched 5000 times: 300 MB if each fetch
    // copied it. The fetches share it, count its length against the budget, and stop.
    let dir = tempfile::tempdir().unwrap();
    let mut pkl = vec![0x80, 2, b']', b'('];
    pk::string(&mut pkl, &"s".repeat(60_000));
    pkl.extend_from_slice(b"q\x00");
    for _ in 0..5000 {
        pkl.extend_from_slice(b"h\x00");
    }
    pkl.extend_from_slice(b"e.");
    let path = dir.path().join("memo.pt");
    std::fs::write(&path, pt_bytes(&pkl, &[])).unwrap();
    let msg = expect_failed(probe(&path), "memo string bomb");
    assert!(msg.contains("bytes of strings and tensor names"), "{msg}");
    let err = TensorFile::open(&path).unwrap_err();
    assert!(
        matches!(err, Error::PickleBudget { pickle_len, .. } if pickle_len == pkl.len() as u64),
        "{err}"
    );
}

#[test]
fn pickle_long_key_repeated_in_tensor_names_hits_the_byte_budget() {
    // {K: {t0..t999}} with a 512 KB key K: every tensor's name starts with K, half a
    // gigabyte of names from a 660 KB pickle. Names count against the budget.
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
    let inner: Vec<(&str, &str, u64, &[u64])> = names
        .iter()
        .map(|n| (n.as_str(), "0", 1, &[1u64][..]))
        .collect();
    let inner = pk::state_dict(&inner);
    let mut pkl = vec![0x80, 2, b'}', b'('];
    pk::string(&mut pkl, &"k".repeat(512 << 10));
    pkl.extend_from_slice(&inner[2..inner.len() - 1]);
    pkl.extend_from_slice(b"u.");
    let data = [0u8; 4];
    let path = dir.path().join("names.pt");
    std::fs::write(&path, pt_bytes(&pkl, &[("0", &data)])).unwrap();
    let msg = expect_failed(probe(&path), "name bomb");
    assert!(msg.contains("budget"), "{msg}");
    // The same nesting with a short key reads, every tensor named under it.
    let mut pkl = vec![0x80, 2, b'}', b'('];
    pk::string(&mut pkl, "model");
    pkl.extend_from_slice(&inner[2..inner.len() - 1]);
    pkl.extend_from_slice(b"u.");
    let path = dir.path().join("short.pt");
    std::fs::write(&path, pt_bytes(&pkl, &[("0", &data)])).unwrap();
    let Outcome::Read(t) = probe(&path) else {
        panic!("a nested state dict must read");
    };
    assert_eq!(t.len(), 1000);
    assert_eq!(t[999].0.name, "model.t999");
}

#[test]
fn pickle_setitems_with_300_000_keys_is_linear() {
    let mut pkl = vec![0x80, 2, b'}', b'('];
    for i in 0..300_000u32 {
        pk::string(&mut pkl, &format!("k{i}"));
        pkl.extend_from_slice(b"K\x00");
    }
    // The first key again: a later assignment replaces the earlier one, as in Python.
    pk::string(&mut pkl, "k0");
    pkl.extend_from_slice(b"K\x01u.");
    let started = std::time::Instant::now();
    let got = vitconv_tensors::fuzzing::pickle_state_dict(&pkl).unwrap();
    assert!(got.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SETITEMS took {:?}",
        started.elapsed()
    );
}

#[test]
fn pickle_tensors_in_lists_and_tuples_are_named_never_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // {"layers": [t, t], "pair": (t,), "w": t} over one storage of 2 floats.
    let mut pkl = vec![0x80, 2, b'}', b'('];
    pk::string(&mut pkl, "layers");
    pkl.extend_from_slice(b"](");
    pk::tensor(&mut pkl, "0", 2, &[2], None);
    pk::tensor(&mut pkl, "0", 2, &[1], None);
    pkl.push(b'e');
    pk::string(&mut pkl, "pair");
    pkl.push(b'(');
    pk::tensor(&mut pkl, "0", 2, &[2], None);
    pkl.push(b't');
    pk::string(&mut pkl, "w");
    pk::tensor(&mut pkl, "0", 2, &[2], None);
    pkl.extend_from_slice(b"u.");
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let Outcome::Read(t) = probe_bytes(dir.path(), "lists.pt", &pt_bytes(&pkl, &[("0", &data)]))
    else {
        panic!("tensors in lists must read");
    };
    let names: Vec<&str> = t.iter().map(|(i, _)| i.name.as_str()).collect();
    assert_eq!(names, ["layers.0", "layers.1", "pair.0", "w"]);
    assert_eq!(t[1].0.shape, [1]);

    // A tensor under a key that cannot name it (None) is refused, not dropped.
    let mut pkl = vec![0x80, 2, b'}', b'(', b'N'];
    pk::tensor(&mut pkl, "0", 2, &[2], None);
    pkl.extend_from_slice(b"u.");
    let path = dir.path().join("nonekey.pt");
    std::fs::write(&path, pt_bytes(&pkl, &[("0", &data)])).unwrap();
    let err = TensorFile::open(&path).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::PickleTensorKey {
                key_kind: "None",
                ..
            }
        ),
        "{err}"
    );
    // A BUILD state holding a tensor would drop it: refused too.
    let mut pkl = vec![0x80, 2, b'}', b'}', b'('];
    pk::string(&mut pkl, "hidden");
    pk::tensor(&mut pkl, "0", 2, &[2], None);
    pkl.extend_from_slice(b"ub.");
    let msg = expect_failed(
        probe_bytes(dir.path(), "build.pt", &pt_bytes(&pkl, &[("0", &data)])),
        "BUILD state with a tensor",
    );
    assert!(msg.contains("BUILD"), "{msg}");
}

#[test]
fn torch_archive_with_two_pickles_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = pk::state_dict(&[("w", "0", 4, &[4])]);
    let data = [0u8; 16];
    let (bytes, _) = raw::honest(&[
        ("archive/data.pkl", &pkl),
        ("other/data.pkl", &pkl),
        ("archive/data/0", &data),
    ]);
    let err = open_error(dir.path(), "two.pt", &bytes);
    assert!(
        matches!(&err, Error::TwoPickles { first, second, .. } if first == "archive/data.pkl" && second == "other/data.pkl"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Statistics: work bounded by the file's size, views never materialised.

/// A torch archive around `pickle` whose storage `data/0` is deflated from `storage`.
fn pt_with_deflated_storage(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    let compressed = raw_deflate(storage);
    zip_bytes(&[
        stored("archive/data.pkl", pickle),
        Member {
            name: "archive/data/0",
            deflate: true,
            payload: &compressed,
            claimed: storage.len() as u32,
        },
        stored("archive/byteorder", b"little"),
        stored("archive/version", b"3\n"),
    ])
}

#[test]
fn stats_over_thousands_of_aliases_of_one_deflated_storage_are_bounded() {
    // 2000 views of one 1 MiB deflated storage (1 KB compressed): 2 GB of work from a
    // 400 KB file if each view were decoded and visited. The storage is decoded once, and
    // visits after the first count against the far smaller budget for repeated work.
    let dir = tempfile::tempdir().unwrap();
    let numel = (1u64 << 20) / 4;
    let names: Vec<String> = (0..2000).map(|i| format!("alias{i}")).collect();
    let entries: Vec<(&str, &str, u64, &[u64])> = names
        .iter()
        .map(|n| (n.as_str(), "0", numel, std::slice::from_ref(&numel)))
        .collect();
    let storage = vec![0u8; 1 << 20];
    let path = dir.path().join("aliases.pt");
    std::fs::write(
        &path,
        pt_with_deflated_storage(&pk::state_dict(&entries), &storage),
    )
    .unwrap();
    let file = TensorFile::open(&path).unwrap();
    let started = std::time::Instant::now();
    let mut done = 0;
    let err = loop {
        match file.stats(&names[done]) {
            Ok(s) => {
                assert_eq!((s.count, s.min, s.max), (numel, 0.0, 0.0));
                done += 1;
            }
            Err(e) => break e,
        }
        assert!(
            done < names.len(),
            "every alias was visited: nothing bounded the work"
        );
    };
    assert!(
        matches!(&err, Error::WorkBudget { tensor, .. } if *tensor == names[done]),
        "{err}"
    );
    checked_message(&path, &err);
    // The budget allows some views (honest files view a storage more than once), not thousands.
    assert!((1..200).contains(&done), "{done} views before the budget");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn stats_of_a_stride_0_view_are_exact_without_materialising_it() {
    // A [1024, 4096] view repeating a 4096-float storage 1024 times (the most expansion a
    // view may have): statistics come from the storage, scaled by the repetition.
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<f32> = (0..4096).map(|i| (i % 7) as f32 - 3.0).collect();
    let storage: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let pkl = pk::state_dict_strided(&[("rep", "0", 4096, &[1024, 4096], Some(&[0, 1]))]);
    for deflated in [false, true] {
        let bytes = if deflated {
            pt_with_deflated_storage(&pkl, &storage)
        } else {
            pt_bytes(&pkl, &[("0", &storage)])
        };
        let path = dir.path().join("rep.pt");
        std::fs::write(&path, bytes).unwrap();
        let file = TensorFile::open(&path).unwrap();
        let s = file.stats("rep").unwrap();
        let direct = vitconv_tensors::TensorStats::of_bytes(
            vitconv_tensors::DType::F32,
            &file.read("rep").unwrap(),
        );
        assert_eq!(s.count, 4096 * 1024);
        assert_eq!(
            (s.count, s.min, s.max, s.nan),
            (direct.count, direct.min, direct.max, 0)
        );
        assert!(
            (s.mean - direct.mean).abs() < 1e-9,
            "{} vs {}",
            s.mean,
            direct.mean
        );
        assert!(
            (s.std() - direct.std()).abs() < 1e-6,
            "{} vs {}",
            s.std(),
            direct.std()
        );
    }
    // A transposed view's statistics are those of its storage.
    let pkl = pk::state_dict_strided(&[("t", "0", 4096, &[64, 64], Some(&[1, 64]))]);
    let path = dir.path().join("t.pt");
    std::fs::write(&path, pt_bytes(&pkl, &[("0", &storage)])).unwrap();
    let s = TensorFile::open(&path).unwrap().stats("t").unwrap();
    let direct = vitconv_tensors::TensorStats::of_bytes(vitconv_tensors::DType::F32, &storage);
    assert_eq!(
        (s.count, s.min, s.max),
        (direct.count, direct.min, direct.max)
    );
    assert!((s.mean - direct.mean).abs() < 1e-9);
}

// ---------------------------------------------------------------------------------------
// Strict headers: what says two things is refused, not resolved by "the last one wins".

#[test]
fn safetensors_header_with_a_repeated_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let st = |json: &str, data: usize| {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend_from_slice(&vec![0; data]);
        v
    };
    let json = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let path = dir.path().join("dup.safetensors");
    std::fs::write(&path, st(json, 8)).unwrap();
    let err = TensorFile::open(&path).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateKey { key, format: "safetensors", .. } if key == "w"),
        "{err}"
    );
    checked_message(&path, &err);
    // In the metadata too.
    let json = r#"{"__metadata__":{"a":"1","a":"2"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    std::fs::write(&path, st(json, 4)).unwrap();
    let err = TensorFile::open(&path).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateKey { key, .. } if key == "a"),
        "{err}"
    );
    // Distinct keys read.
    let json = r#"{"__metadata__":{"a":"1"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    std::fs::write(&path, st(json, 4)).unwrap();
    assert_eq!(TensorFile::open(&path).unwrap().tensors().len(), 1);
}

#[test]
fn npy_header_with_a_repeated_key_or_trailing_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut npy =
        npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'shape': (2,), }");
    npy.extend_from_slice(&[0; 8]);
    let err = open_error(dir.path(), "dup.npy", &npy);
    assert!(
        matches!(&err, Error::DuplicateKey { key, .. } if key == "shape"),
        "{err}"
    );
    let mut npy = npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } # (1,)");
    npy.extend_from_slice(&[0; 8]);
    let err = open_error(dir.path(), "text.npy", &npy);
    assert!(matches!(err, Error::NpyTrailingText { .. }), "{err}");
    // Inside an npz the member is named.
    let (bytes, _) = raw::honest(&[("m.npy", &npy)]);
    let err = open_error(dir.path(), "text.npz", &bytes);
    assert!(err.to_string().contains("`m`"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Paths that are not regular files.

#[test]
fn fifos_devices_and_directories_are_refused_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.npz");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c_path` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    // On a thread with a deadline: opening a FIFO for reading would block until a writer came.
    let owned = fifo.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(
            TensorFile::open(&owned)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    });
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("opening a FIFO must not block");
    let msg = result.expect_err("a FIFO must be refused");
    assert!(msg.contains("named pipe (FIFO)"), "{msg}");
    assert!(msg.contains("pipe.npz"), "{msg}");

    for (path, kind) in [
        (PathBuf::from("/dev/zero"), "character device"),
        (PathBuf::from("/dev/null"), "character device"),
    ] {
        let err = TensorFile::open(&path).unwrap_err();
        assert!(matches!(err, Error::NotARegularFile { .. }), "{err}");
        assert!(err.to_string().contains(kind), "{err}");
        assert!(!err.to_string().contains("empty file"), "{err}");
    }
    // A folder is read when a checkpoint container claims it; this one (a FIFO in it) is none, and is
    // refused saying what it holds.
    let err = TensorFile::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::NotACheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("pipe.npz"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Memory for large directories.

/// The most memory opening a 100 000-tensor safetensors file may take, header included.
const HEADER_100K_PEAK: usize = 100 << 20;

#[test]
fn a_100_000_tensor_safetensors_header_opens_in_under_100_mb() {
    let dir = tempfile::tempdir().unwrap();
    let count = 100_000usize;
    let mut json = String::from("{");
    for i in 0..count {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            r#""encoder.layers.{i:06}.attention.output.dense.weight":{{"dtype":"F32","shape":[1],"data_offsets":[{},{}]}}"#,
            4 * i,
            4 * i + 4
        ));
    }
    json.push('}');
    assert!(json.len() > 7_000_000, "{} bytes of header", json.len());
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 4 * count));
    let path = dir.path().join("wide.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    drop((json, bytes));

    let owned = path.clone();
    let (peak, held, tensors) = std::thread::spawn(move || {
        LIVE.with(|c| c.set(0));
        PEAK.with(|c| c.set(0));
        let file = TensorFile::open(&owned).unwrap();
        let tensors = file.tensors().len();
        let held = LIVE.with(Cell::get);
        let peak = PEAK.with(Cell::get);
        drop(file);
        (peak, held, tensors)
    })
    .join()
    .unwrap();
    assert_eq!(tensors, count);
    assert!(
        peak < HEADER_100K_PEAK,
        "opening took {} MB at its peak",
        peak >> 20
    );
    eprintln!(
        "100 000-tensor header: peak {:.1} MB while opening, {:.1} MB held open",
        peak as f64 / 1e6,
        held as f64 / 1e6
    );
}

// ---------------------------------------------------------------------------------------
// The hostile fuzz seeds (fuzz/make_hostile_seeds.py) do what their names say.

#[test]
fn hostile_fuzz_seeds_fail_or_read_as_their_names_say() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let dir = tempfile::tempdir().unwrap();
    // (target, seed, bytes to skip (the pt target's mode byte), tensors read or error text).
    let cases: [(&str, &str, usize, Result<usize, &str>); 18] = [
        // Written by torch.save (make_seeds.py): miniz archives with padding extra fields.
        ("pt", "state_dict_p2.pt", 1, Ok(10)),
        ("pt", "checkpoint_p4.pt", 1, Ok(10)),
        ("pt", "linear.pt", 1, Ok(2)),
        ("npz", "small.npz", 0, Ok(2)),
        ("npz", "not_npy_suffix.npz", 0, Ok(3)),
        ("npz", "false_end_records.npz", 0, Ok(1)),
        ("npz", "duplicate_names.npz", 0, Err("`a.npy` occurs twice")),
        ("npz", "alias_same_header.npz", 0, Err("names `a.npy`")),
        ("npz", "local_name_differs.npz", 0, Err("names `z.npy`")),
        ("npz", "entry_count_lies.npz", 0, Err("declares 1 entries")),
        (
            "npz",
            "not_an_array.npz",
            0,
            Err("`README` is not an .npy array"),
        ),
        ("npz", "encrypted.npz", 0, Err("is encrypted")),
        ("npz", "trailing_data.npz", 0, Err("followed by 4 bytes")),
        (
            "npz",
            "overlapping_members.npz",
            0,
            Err("overlaps member `a.npy`"),
        ),
        ("pt", "two_pickles.pt", 1, Err("two pickle records")),
        ("pt", "aliased_storage.pt", 1, Err("names `archive/data/0`")),
        ("pt", "lists.wrapped", usize::MAX, Ok(3)),
        ("pt", "none_key.wrapped", usize::MAX, Err("None key")),
    ];
    for (target, seed, skip, expected) in cases {
        let bytes = std::fs::read(seeds.join(target).join(seed)).unwrap();
        // The wrapped pickles need an archive around them, as the pt target builds one.
        let bytes = if skip == usize::MAX {
            let pkl = &bytes[2..];
            pt_bytes(pkl, &[("0", &[0u8; 8])])
        } else {
            bytes[skip..].to_vec()
        };
        let name = format!("{seed}.{target}");
        match (probe_bytes(dir.path(), &name, &bytes), expected) {
            (Outcome::Read(t), Ok(n)) => assert_eq!(t.len(), n, "{seed}"),
            (Outcome::Failed(msg), Err(needle)) => {
                assert!(msg.contains(needle), "{seed}: {msg}")
            }
            (Outcome::Read(t), Err(needle)) => {
                panic!("{seed}: read {} tensors, expected {needle:?}", t.len())
            }
            (Outcome::Failed(msg), Ok(_)) => panic!("{seed}: {msg}"),
        }
    }
}

#[test]
fn views_of_one_deflated_storage_read_back_from_one_decode() {
    // Three views of one deflated storage: the entry is decoded once for all of them, and
    // each view still reads (whole and chunked) exactly as if it had its own.
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<f32> = (0..4096).map(|i| i as f32).collect();
    let storage: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let pkl = pk::state_dict_strided(&[
        ("whole", "0", 4096, &[4096], None),
        ("t", "0", 4096, &[64, 64], Some(&[1, 64])),
        ("rep", "0", 4096, &[2, 4096], Some(&[0, 1])),
    ]);
    let path = dir.path().join("views.pt");
    std::fs::write(&path, pt_with_deflated_storage(&pkl, &storage)).unwrap();
    let file = TensorFile::open(&path).unwrap();
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    assert_eq!(f32s(&file.read("whole").unwrap()), values);
    let t = f32s(&file.read("t").unwrap());
    assert_eq!((t[0], t[1], t[64]), (0.0, 64.0, 1.0));
    let rep = f32s(&file.read("rep").unwrap());
    assert_eq!((&rep[..4096], &rep[4096..]), (&values[..], &values[..]));
    let mut chunked = Vec::new();
    file.read_chunked("whole", 1000, |piece| {
        assert!(piece.len() <= 1000 && piece.len() % 4 == 0);
        chunked.extend_from_slice(piece);
    })
    .unwrap();
    assert_eq!(chunked, storage);
}

#[test]
fn zip_split_archives_short_entries_and_unknown_methods_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let content = npy_u8(&[1; 4]);
    // A split archive: the end record says the directory is on disk 1.
    let (mut bytes, _) = raw::honest(&[("a.npy", &content)]);
    let at = bytes.len() - 22;
    bytes[at + 6..at + 8].copy_from_slice(&1u16.to_le_bytes());
    let err = open_error(dir.path(), "split.npz", &bytes);
    assert!(
        matches!(
            err,
            Error::ZipMultiDisk {
                directory_disk: 1,
                ..
            }
        ),
        "{err}"
    );
    // A directory entry whose name runs past the end of the directory.
    let (mut bytes, entries) = raw::honest(&[("a.npy", &content)]);
    let cd = bytes.len() - 22 - raw::central(&entries[0]).len();
    bytes[cd + 28..cd + 30].copy_from_slice(&200u16.to_le_bytes());
    let err = open_error(dir.path(), "short.npz", &bytes);
    assert!(
        matches!(
            err,
            Error::ZipShortRecord {
                record: "central directory entry",
                ..
            }
        ),
        "{err}"
    );
    // Compression method 12 (bzip2), named with the member.
    let e = raw::Entry {
        method: 12,
        ..raw::Entry::stored("b.npy", &content, 0)
    };
    let bytes = raw::archive(&[raw::local(&e, &content)], &[e]);
    let err = open_error(dir.path(), "bzip2.npz", &bytes);
    assert!(
        matches!(&err, Error::ZipCompression { member, method: 12, .. } if member == "b.npy"),
        "{err}"
    );
    // A stored member whose two sizes disagree.
    let e = raw::Entry {
        size: content.len() as u32 + 1,
        ..raw::Entry::stored("c.npy", &content, 0)
    };
    let bytes = raw::archive(&[raw::local(&e, &content)], &[e]);
    let err = open_error(dir.path(), "sizes.npz", &bytes);
    assert!(
        matches!(&err, Error::ZipStoredSizes { member, .. } if member == "c.npy"),
        "{err}"
    );
}
