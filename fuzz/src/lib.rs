//! Shared helpers for the fuzz targets: run one file's bytes through the whole public reader,
//! and lay out hostile zips (aliased, duplicated, misnamed members) from a fuzzer's bytes.

use std::io::Write;

use vitconv_tensors::{TensorFile, TensorStats};

/// Chunk size for the streamed reads: small and odd, so chunk boundaries fall everywhere.
const CHUNK: usize = 61;

/// Writes `data` to a temporary file with `suffix`, opens it as a tensor file and reads every
/// tensor, checking each read returns exactly the bytes its shape and dtype announce.
///
/// Errors are the expected outcome for most inputs; a panic, an abort from the sanitizer, an
/// allocation over libFuzzer's `-rss_limit_mb`/`-malloc_limit_mb` or a timeout is a finding.
pub fn open_and_read_all(data: &[u8], suffix: &str) {
    let Ok(mut file) = tempfile::Builder::new().suffix(suffix).tempfile() else {
        return;
    };
    if file.write_all(data).and_then(|()| file.flush()).is_err() {
        return;
    }
    let Ok(tf) = TensorFile::open(file.path()) else {
        return;
    };
    for info in tf.tensors() {
        let _ = tf.get(&info.name);
        let Ok(bytes) = tf.read(&info.name) else {
            continue;
        };
        assert_eq!(
            Some(bytes.len()),
            info.nbytes(),
            "read of `{}` returned a different length than its shape and dtype announce",
            info.name
        );
        // The streamed path must agree with the whole-tensor path, in whole elements.
        let mut streamed = Vec::with_capacity(bytes.len());
        let elem = info.dtype.size();
        let chunked = tf.read_chunked(&info.name, CHUNK, |piece| {
            assert!(piece.len() <= CHUNK.max(elem) && piece.len() % elem == 0);
            streamed.extend_from_slice(piece);
        });
        if chunked.is_ok() {
            assert!(
                streamed == bytes,
                "read_chunked of `{}` differs from read",
                info.name
            );
        }
        // Slices along the leading axis, as a stacked tensor is read block by block (a deflated one from its
        // one stream): in order, then the last first and the rest after it (read ahead, kept, and read again),
        // each equal to its part of the whole tensor.
        if let Some(&count) = info
            .shape
            .first()
            .filter(|&&n| (1..=16).contains(&n) && !bytes.is_empty())
        {
            let slice = bytes.len() / count;
            let order = (0..count)
                .chain(std::iter::once(count - 1))
                .chain(0..count - 1);
            for i in order {
                let got = tf.read_slice(&info.name, i, count);
                let got = got.unwrap_or_else(|e| panic!("slice {i} of `{}`: {e}", info.name));
                assert!(
                    got[..] == bytes[i * slice..(i + 1) * slice],
                    "slice {i} of `{}` differs from the whole tensor's",
                    info.name
                );
            }
        }
        // Read in file order (whole rows in groups of two, then one row in bands of uneven widths), as a copy
        // or a one-pass transpose reads it, a deflated member being inflated as it is read: the same bytes.
        if let Some(&rows) = info.shape.first().filter(|&&n| n > 0 && !bytes.is_empty()) {
            if let Ok(mut bands) = tf.sequential_bands(&info.name, rows) {
                let row_bytes = bytes.len() / rows;
                let mut got = Vec::with_capacity(bytes.len());
                let mut left = rows;
                while left > 0 {
                    let g = left.min(2);
                    let mut group = vec![0u8; g * row_bytes];
                    let read = bands.read_rows(row_bytes, &mut group);
                    read.unwrap_or_else(|e| panic!("rows of `{}` in file order: {e}", info.name));
                    got.extend_from_slice(&group);
                    left -= g;
                }
                assert!(got == bytes, "rows of `{}` in file order differ", info.name);
            }
            if let Ok(mut bands) = tf.sequential_bands(&info.name, 1) {
                let (mut got, mut out, mut width) =
                    (Vec::with_capacity(bytes.len()), Vec::new(), 1);
                while bands.remaining() > 0 {
                    let w = width.min(bands.remaining());
                    let read = bands.read_band(w, &mut out);
                    read.unwrap_or_else(|e| panic!("bands of `{}` in file order: {e}", info.name));
                    got.extend_from_slice(&out);
                    width = width * 3 + 1;
                }
                assert!(
                    got == bytes,
                    "bands of `{}` in file order differ",
                    info.name
                );
            }
        }
        // Statistics walk views in place and count repeats by multiplicity: they must agree
        // with the statistics of the materialised bytes (or stop at the work budget).
        if let Ok(s) = tf.stats(&info.name) {
            let direct = TensorStats::of_bytes(info.dtype, &bytes);
            assert_eq!(
                (s.count, s.nan, s.inf),
                (direct.count, direct.nan, direct.inf),
                "stats of `{}` count differently from its bytes",
                info.name
            );
            if s.count > 0 {
                assert!(
                    s.min == direct.min && s.max == direct.max,
                    "stats of `{}`: range differs from its bytes",
                    info.name
                );
            }
        }
    }
    // Nothing is invented twice: every name the directory lists is distinct.
    let mut names: Vec<&str> = tf.tensors().iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "a tensor name repeats"
    );
    let _ = tf.metadata();
}

/// Member names a hostile zip draws from: duplicates, names without `.npy`, a directory, a pickle.
const NAMES: [&str; 8] = [
    "a.npy",
    "b.npy",
    "a.npy",
    "head/extra",
    "x.NPY",
    "dir/",
    "archive/data.pkl",
    "archive/data/0",
];

/// Lays out a small zip from fuzzer bytes so that aliasing and duplication are one mutation
/// away: byte 0 is the member count (1 to 4); then two bytes per member, a name (from
/// [`NAMES`]) and flags; the rest is split between the members as their content.
///
/// Flags: bit 0 makes the directory entry point at the previous member's local header, bit 1
/// into the previous member's data; bit 2 gives the local header another name than the
/// directory; bit 3 deflates the member; bit 4 adds one to the end record's entry count.
pub fn hostile_zip(data: &[u8]) -> Option<Vec<u8>> {
    let (&count, rest) = data.split_first()?;
    let count = usize::from(count % 4) + 1;
    let (spec, payload) = rest.split_at_checked(count * 2)?;
    let piece = payload.len() / count;
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut previous: Option<(u32, u32)> = None;
    let mut extra_count = 0u16;
    for (i, m) in spec.chunks_exact(2).enumerate() {
        let (name, flags) = (NAMES[usize::from(m[0]) % NAMES.len()], m[1]);
        let content = payload.get(i * piece..(i + 1) * piece).unwrap_or_default();
        let (method, stored) = if flags & 8 != 0 {
            (8u16, stored_deflate(content))
        } else {
            (0u16, content.to_vec())
        };
        let header_at = out.len() as u32;
        let local_name = if flags & 4 != 0 {
            NAMES[(usize::from(m[0]) + 1) % NAMES.len()]
        } else {
            name
        };
        let fields = |buf: &mut Vec<u8>, name: &str| {
            buf.extend_from_slice(&20u16.to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes());
            buf.extend_from_slice(&method.to_le_bytes());
            buf.extend_from_slice(&[0, 0, 0x21, 0]);
            buf.extend_from_slice(&crc32(content).to_le_bytes());
            buf.extend_from_slice(&(stored.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(content.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
            buf.extend_from_slice(&0u16.to_le_bytes());
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        fields(&mut out, local_name);
        out.extend_from_slice(local_name.as_bytes());
        let data_at = out.len() as u32;
        out.extend_from_slice(&stored);
        let points_at = match (previous, flags & 3) {
            (Some((header, _)), 1) => header,
            (Some((_, data)), 2 | 3) => data,
            _ => header_at,
        };
        previous = Some((header_at, data_at));
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        fields(&mut central, name);
        central.extend_from_slice(&[0; 10]);
        central.extend_from_slice(&points_at.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        if flags & 16 != 0 {
            extra_count = 1;
        }
    }
    let cd_at = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let entries = count as u16 + extra_count;
    out.extend_from_slice(&entries.to_le_bytes());
    out.extend_from_slice(&entries.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_at.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    Some(out)
}

/// A raw deflate stream of stored blocks holding `data` (no compressor needed: the reader
/// inflates it all the same).
fn stored_deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5 * (data.len() / 65535 + 1));
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let n = c.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(c);
    }
    out
}

/// CRC-32 (IEEE), bit by bit: fuzz inputs are small.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Checks the zip reader's promises on an archive it accepted: no member name twice, and no
/// two members' data sharing a byte.
pub fn check_zip_members(data: &[u8]) {
    let Ok(mut file) = tempfile::Builder::new().suffix(".zip").tempfile() else {
        return;
    };
    if file.write_all(data).and_then(|()| file.flush()).is_err() {
        return;
    }
    let Ok(mut members) = vitconv_tensors::fuzzing::zip_members(file.path()) else {
        return;
    };
    let mut names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    names.sort_unstable();
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "a member name repeats"
    );
    members.sort_by_key(|m| (m.1, m.2));
    for w in members.windows(2) {
        assert!(
            w[0].2 <= w[1].1,
            "members `{}` and `{}` share bytes {}..{}",
            w[0].0,
            w[1].0,
            w[1].1,
            w[0].2
        );
    }
}
