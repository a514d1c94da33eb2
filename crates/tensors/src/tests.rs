//! Whole-file tests of the crate: round trips of every fixture through every format, and one test per error.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use crate::pickle::{put_global, put_int, put_str, write_state_dict};
use crate::{npy, DType, Error, Format, TensorFile, TensorSpec, Writer};

/// Relative tolerance between a float and its bfloat16 rounding (8 significant bits).
const BF16_REL_TOL: f32 = 1.0 / 256.0;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Every golden `.npz`: each case's checkpoint and the token variants.
fn golden_npz() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(fixtures()).unwrap() {
        let dir = dir.unwrap().path();
        let ckpt = dir.join("checkpoint.npz");
        if ckpt.exists() {
            out.push(ckpt);
        }
    }
    for f in std::fs::read_dir(fixtures().join("vit-token-variants")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "npz") {
            out.push(f);
        }
    }
    out.sort();
    assert!(out.len() >= 9, "fixtures missing: {out:?}");
    out
}

fn specs_of(f: &TensorFile) -> Vec<TensorSpec> {
    f.tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect()
}

/// Rewrites `src` into `dst` in `format`.
fn recode(src: &TensorFile, dst: &Path, format: Format, metadata: BTreeMap<String, String>) {
    let mut w = Writer::create(dst, format, specs_of(src), metadata, false).unwrap();
    for t in src.tensors() {
        w.write_next(&src.read(&t.name).unwrap()).unwrap();
    }
    w.finish().unwrap();
}

/// Asserts two files hold the same tensors, in the same order, with identical bytes.
fn assert_same_tensors(a: &TensorFile, b: &TensorFile) {
    assert_eq!(a.tensors().len(), b.tensors().len());
    for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(
            (&ta.name, ta.dtype, &ta.shape),
            (&tb.name, tb.dtype, &tb.shape)
        );
        let (da, db) = (a.read(&ta.name).unwrap(), b.read(&tb.name).unwrap());
        assert_eq!(da.len(), ta.nbytes().unwrap());
        assert!(
            da == db,
            "{} differs between {:?} and {:?}",
            ta.name,
            a.path(),
            b.path()
        );
    }
}

#[test]
fn every_fixture_round_trips_through_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let meta: BTreeMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        ("k".into(), "v é".into()),
    ]
    .into();
    for (i, src_path) in golden_npz().iter().enumerate() {
        let src = TensorFile::open(src_path).unwrap();
        assert_eq!(src.format(), Format::Npz);
        let st = dir.path().join(format!("{i}.safetensors"));
        recode(&src, &st, Format::Safetensors, meta.clone());
        let st = TensorFile::open(&st).unwrap();
        assert_eq!(st.format(), Format::Safetensors);
        assert_eq!(st.metadata(), &meta);
        assert_same_tensors(&src, &st);

        let pt = dir.path().join(format!("{i}.pt"));
        recode(&st, &pt, Format::Pt, st.metadata().clone());
        let pt = TensorFile::open(&pt).unwrap();
        assert_eq!(pt.format(), Format::Pt);
        assert_eq!(pt.metadata(), &meta);
        assert_same_tensors(&src, &pt);

        let npz = dir.path().join(format!("{i}.npz"));
        recode(&pt, &npz, Format::Npz, BTreeMap::new());
        let npz = TensorFile::open(&npz).unwrap();
        assert_same_tensors(&src, &npz);
        // bfloat16 survives as numpy's void type, and is noted as such.
        for (a, b) in src.tensors().iter().zip(npz.tensors()) {
            assert_eq!(a.stored_as, b.stored_as);
        }
    }
}

#[test]
fn npz_reading_agrees_with_ndarray_npy() {
    use ndarray_npy::NpzReader;
    for path in golden_npz() {
        let f = TensorFile::open(&path).unwrap();
        if f.tensors().iter().any(|t| t.dtype != DType::F32) {
            continue;
        }
        let mut npz = NpzReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        for t in f.tensors() {
            let arr: ndarray::ArrayD<f32> = npz.by_name(&format!("{}.npy", t.name)).unwrap();
            assert_eq!(arr.shape(), t.shape.as_slice());
            let ours = f.read_f32(&t.name).unwrap();
            assert!(
                arr.iter().copied().eq(ours.iter().copied()),
                "{} in {path:?}",
                t.name
            );
        }
    }
}

#[test]
fn variants_hold_the_same_weights() {
    let base = TensorFile::open(fixtures().join("vit-token/checkpoint.npz")).unwrap();
    let compressed =
        TensorFile::open(fixtures().join("vit-token-variants/compressed.npz")).unwrap();
    assert_same_tensors(&base, &compressed);
    let prefixed =
        TensorFile::open(fixtures().join("vit-token-variants/opt-target-prefix.npz")).unwrap();
    let bf16 = TensorFile::open(fixtures().join("vit-token-variants/bfloat16.npz")).unwrap();
    for t in base.tensors() {
        let p = prefixed.get(&format!("opt/target/{}", t.name)).unwrap();
        assert_eq!(prefixed.read(&p.name).unwrap(), base.read(&t.name).unwrap());
        let b = bf16.get(&t.name).unwrap();
        assert_eq!(b.dtype, DType::BF16);
        assert!(b.stored_as.as_deref().unwrap().contains("V2"));
        // Read as bfloat16 in the right byte order, each value is the f32 rounded to 8 bits.
        for (x, y) in base
            .read_f32(&t.name)
            .unwrap()
            .iter()
            .zip(bf16.read_f32(&b.name).unwrap())
        {
            assert!(
                (x - y).abs() <= x.abs() * BF16_REL_TOL,
                "{}: {x} vs {y}",
                t.name
            );
        }
    }
}

#[test]
fn reads_are_thread_safe() {
    let f = TensorFile::open(fixtures().join("vit-token-variants/compressed.npz")).unwrap();
    let want: Vec<Vec<u8>> = f
        .tensors()
        .iter()
        .map(|t| f.read(&t.name).unwrap())
        .collect();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for (t, w) in f.tensors().iter().zip(&want).rev() {
                    assert_eq!(&f.read(&t.name).unwrap(), w);
                }
            });
        }
    });
}

/// A zip archive (as bytes) of stored members.
fn zip_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in members {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// A `.npy` member with a hand-written header dict and `data`.
fn npy_with(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut v = npy::MAGIC.to_vec();
    v.extend_from_slice(&[1, 0]);
    v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    v.extend_from_slice(dict.as_bytes());
    v.extend_from_slice(data);
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn open_err(p: &Path) -> Error {
    let err = TensorFile::open(p).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&p.display().to_string()),
        "message does not name the file: {msg}"
    );
    assert!(!msg.contains('\n'), "message is not one line: {msg}");
    err
}

#[test]
fn fortran_order_and_big_endian_npy_read_in_c_order() {
    let dir = tempfile::tempdir().unwrap();
    // [[1,2,3],[4,5,6]] stored column-major, big-endian i16.
    let data: Vec<u8> = [1i16, 4, 2, 5, 3, 6]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let p = write(
        dir.path(),
        "f.npy",
        &npy_with(
            "{'descr': '>i2', 'fortran_order': True, 'shape': (2, 3), }\n",
            &data,
        ),
    );
    let f = TensorFile::open(&p).unwrap();
    assert_eq!(f.format(), Format::Npy);
    assert_eq!(f.read_f32("f").unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn error_io_on_missing_file() {
    let err = TensorFile::open("/nonexistent/x.npz").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn error_not_a_tensor_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("a.txt", &b"hello, this is text"[..]),
        ("empty.npz", b""),
        ("p.pt", b"\x80\x02}q\x00."),
    ] {
        let err = open_err(&write(dir.path(), name, bytes));
        assert!(matches!(err, Error::NotATensorFile { .. }), "{err}");
    }
}

#[test]
fn error_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = TensorFile::open(fixtures().join("vit-token/checkpoint.npz")).unwrap();
    let st = dir.path().join("x.safetensors");
    recode(&src, &st, Format::Safetensors, BTreeMap::new());
    let bytes = std::fs::read(&st).unwrap();
    let cut = write(dir.path(), "cut.safetensors", &bytes[..bytes.len() - 100]);
    assert!(matches!(open_err(&cut), Error::Truncated { .. }));
    let cut = write(dir.path(), "cut2.safetensors", &bytes[..20]);
    assert!(matches!(open_err(&cut), Error::Truncated { .. }));
    // A zip cut anywhere loses its directory or its data: always a clean error.
    let npz = std::fs::read(fixtures().join("vit-token/checkpoint.npz")).unwrap();
    for k in 1..16 {
        let cut = write(dir.path(), "cut.npz", &npz[..npz.len() * k / 16]);
        let err = open_err(&cut);
        assert!(
            matches!(err, Error::ZipNoEndRecord { .. } | Error::Truncated { .. }),
            "{err}"
        );
    }
}

#[test]
fn error_broken_central_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut npz = std::fs::read(fixtures().join("vit-token/checkpoint.npz")).unwrap();
    let cd = npz.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    npz[cd + 1] = b'X';
    let err = open_err(&write(dir.path(), "cd.npz", &npz));
    assert!(
        matches!(err, Error::ZipBadSignature { record, .. } if record == "central directory entry"),
        "{err}"
    );
    // A directory entry pointing past the end of the file.
    let mut npz = std::fs::read(fixtures().join("vit-token/checkpoint.npz")).unwrap();
    let cd = npz.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    npz[cd + 42..cd + 46].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    let err = open_err(&write(dir.path(), "off.npz", &npz));
    assert!(matches!(err, Error::ZipOffsetPastEnd { .. }), "{err}");
}

#[test]
fn error_lying_npy_header() {
    let dir = tempfile::tempdir().unwrap();
    let member = npy_with(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (100,), }\n",
        &[0u8; 40],
    );
    let p = write(dir.path(), "lie.npz", &zip_of(&[("w.npy", member)]));
    let err = open_err(&p);
    assert!(
        matches!(&err, Error::SizeMismatch { tensor, expected: 400, found: 40, .. } if tensor == "w"),
        "{err}"
    );
    assert!(err.to_string().contains("`w`"));
}

#[test]
fn error_overflowing_shape() {
    let dir = tempfile::tempdir().unwrap();
    let member = npy_with(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776, 16), }\n",
        &[0u8; 8],
    );
    let p = write(dir.path(), "big.npz", &zip_of(&[("w.npy", member)]));
    assert!(matches!(open_err(&p), Error::ShapeOverflow { .. }));
    // A shape that fits in 64 bits but not in the file is a size mismatch, refused before any allocation.
    let member = npy_with(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1152921504606846976,), }\n",
        &[0u8; 8],
    );
    let p = write(dir.path(), "huge.npz", &zip_of(&[("w.npy", member)]));
    let err = open_err(&p);
    assert!(
        matches!(
            err,
            Error::SizeMismatch { .. } | Error::ShapeOverflow { .. }
        ),
        "{err}"
    );
}

#[test]
fn error_unknown_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let member = npy_with(
        "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }\n",
        &[0u8; 8],
    );
    let p = write(dir.path(), "c.npz", &zip_of(&[("w.npy", member)]));
    let err = open_err(&p);
    assert!(
        matches!(&err, Error::UnknownDType { descr, .. } if descr == "<c8"),
        "{err}"
    );
}

#[test]
fn error_npy_header() {
    let dir = tempfile::tempdir().unwrap();
    let member = npy_with("{'descr': '<f4', 'fortran_order': False}\n", &[]);
    let p = write(dir.path(), "h.npz", &zip_of(&[("w.npy", member)]));
    assert!(matches!(open_err(&p), Error::NpyHeader { .. }));
}

#[test]
fn error_deflate_entry_claiming_too_much() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let member = npy_with(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }\n",
        &[0u8; 16],
    );
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zw.start_file("w.npy", opts).unwrap();
    zw.write_all(&member).unwrap();
    let mut bytes = zw.finish().unwrap().into_inner();
    let good = write(dir.path(), "good.npz", &bytes);
    assert_eq!(
        TensorFile::open(&good).unwrap().read_f32("w").unwrap(),
        vec![0.0; 4]
    );
    // Claim 2^31 bytes in the central directory: more than deflate can make of the stream.
    let cd = bytes.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    bytes[cd + 24..cd + 28].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    let err = open_err(&write(dir.path(), "bomb.npz", &bytes));
    assert!(matches!(err, Error::Zip { .. }), "{err}");
    // Claim 4 bytes more than the stream holds: the header's size no longer matches.
    bytes[cd + 24..cd + 28].copy_from_slice(&(member.len() as u32 + 4).to_le_bytes());
    let err = open_err(&write(dir.path(), "more.npz", &bytes));
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
}

/// A `.pt` archive with the given pickle and storage records.
fn pt_archive(pickle: &[u8], records: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut members = vec![("archive/data.pkl", pickle.to_vec())];
    members.extend(records.iter().map(|(n, d)| (*n, d.clone())));
    members.push(("archive/byteorder", b"little".to_vec()));
    zip_of(&members)
}

#[test]
fn error_disallowed_pickle_global() {
    let dir = tempfile::tempdir().unwrap();
    let mut pkl = vec![0x80, 2];
    put_global(&mut pkl, "os", "system");
    put_str(&mut pkl, "touch pwned");
    pkl.extend_from_slice(b"\x85R.");
    let p = write(dir.path(), "evil.pt", &pt_archive(&pkl, &[]));
    let err = open_err(&p);
    assert!(
        matches!(&err, Error::DisallowedGlobal { module, name, .. } if module == "os" && name == "system"),
        "{err}"
    );
    assert!(err.to_string().contains("os.system"));
}

#[test]
fn error_pickle_that_is_not_a_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "list.pt", &pt_archive(b"\x80\x02]q\x00.", &[]));
    assert!(matches!(open_err(&p), Error::Pickle { .. }));
}

fn one_tensor(dtype: DType, shape: Vec<usize>) -> Vec<TensorSpec> {
    vec![TensorSpec {
        name: "w".into(),
        dtype,
        shape,
    }]
}

#[test]
fn error_missing_storage_record() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = write_state_dict(&one_tensor(DType::F32, vec![2, 3]));
    let p = write(dir.path(), "missing.pt", &pt_archive(&pkl, &[]));
    let err = open_err(&p);
    assert!(
        matches!(&err, Error::MissingRecord { record, .. } if record == "archive/data/0"),
        "{err}"
    );
    // A storage record shorter than the storage it stands for.
    let p = write(
        dir.path(),
        "short.pt",
        &pt_archive(&pkl, &[("archive/data/0", vec![0u8; 20])]),
    );
    let err = open_err(&p);
    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 24,
                found: 20,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn strided_pt_tensors_are_gathered() {
    let dir = tempfile::tempdir().unwrap();
    // A [3, 2] transposed view over a 6-element storage holding [[0,1,2],[3,4,5]], offset 0.
    let mut pkl = vec![0x80, 2];
    put_global(&mut pkl, "collections", "OrderedDict");
    pkl.extend_from_slice(b")R(");
    put_str(&mut pkl, "t");
    put_global(&mut pkl, "torch._utils", "_rebuild_tensor_v2");
    pkl.extend_from_slice(b"((");
    put_str(&mut pkl, "storage");
    put_global(&mut pkl, "torch", "FloatStorage");
    put_str(&mut pkl, "0");
    put_str(&mut pkl, "cpu");
    put_int(&mut pkl, 6);
    pkl.extend_from_slice(b"tQ");
    put_int(&mut pkl, 0);
    pkl.push(b'(');
    put_int(&mut pkl, 3);
    put_int(&mut pkl, 2);
    pkl.extend_from_slice(b"t(");
    put_int(&mut pkl, 1);
    put_int(&mut pkl, 3);
    pkl.extend_from_slice(b"t\x89");
    // The backward hooks: an empty OrderedDict, as torch writes them.
    put_global(&mut pkl, "collections", "OrderedDict");
    pkl.extend_from_slice(b")RtRu.");
    let storage: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect();
    let p = write(
        dir.path(),
        "strided.pt",
        &pt_archive(&pkl, &[("archive/data/0", storage)]),
    );
    let f = TensorFile::open(&p).unwrap();
    assert_eq!(f.get("t").unwrap().shape, vec![3, 2]);
    assert_eq!(f.read_f32("t").unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
}

#[test]
fn error_unknown_tensor() {
    let f = TensorFile::open(fixtures().join("vit-token/checkpoint.npz")).unwrap();
    assert!(matches!(f.read("nope"), Err(Error::UnknownTensor { .. })));
}

#[test]
fn error_bad_safetensors_header() {
    let dir = tempfile::tempdir().unwrap();
    let header = br#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 9]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 9]);
    let err = open_err(&write(dir.path(), "bad.safetensors", &bytes));
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");
    let header = br#"{"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 8]);
    let err = open_err(&write(dir.path(), "c64.safetensors", &bytes));
    assert!(matches!(err, Error::UnknownDType { .. }), "{err}");
}

#[test]
fn writer_refuses_existing_targets_and_misuse() {
    let dir = tempfile::tempdir().unwrap();
    let target = write(dir.path(), "out.safetensors", b"precious");
    let specs = one_tensor(DType::F32, vec![2]);
    let err = Writer::create(
        &target,
        Format::Safetensors,
        specs.clone(),
        BTreeMap::new(),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err}");

    for format in [Format::Safetensors, Format::Pt, Format::Npz] {
        // Wrong length, then dropped: the target is untouched and no temporary file remains.
        let mut w = Writer::create(&target, format, specs.clone(), BTreeMap::new(), true).unwrap();
        assert!(matches!(w.write_next(&[0u8; 7]), Err(Error::Writer { .. })));
        drop(w);
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // Finishing early is refused too.
        let w = Writer::create(&target, format, specs.clone(), BTreeMap::new(), true).unwrap();
        assert!(matches!(w.finish(), Err(Error::Writer { .. })));
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    let dup = vec![specs[0].clone(), specs[0].clone()];
    assert!(matches!(
        Writer::create(
            &dir.path().join("d.pt"),
            Format::Pt,
            dup,
            BTreeMap::new(),
            false
        ),
        Err(Error::Writer { .. })
    ));
}

#[test]
fn zero_sized_and_scalar_tensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let specs = vec![
        TensorSpec {
            name: "a/b.c".into(),
            dtype: DType::I64,
            shape: vec![],
        },
        TensorSpec {
            name: "empty".into(),
            dtype: DType::F16,
            shape: vec![3, 0],
        },
        TensorSpec {
            name: "flags".into(),
            dtype: DType::Bool,
            shape: vec![3],
        },
    ];
    let data: Vec<Vec<u8>> = vec![(-7i64).to_le_bytes().to_vec(), vec![], vec![1, 0, 1]];
    for (ext, format) in [
        ("safetensors", Format::Safetensors),
        ("pt", Format::Pt),
        ("npz", Format::Npz),
    ] {
        let p = dir.path().join(format!("z.{ext}"));
        let mut w = Writer::create(&p, format, specs.clone(), BTreeMap::new(), false).unwrap();
        for d in &data {
            w.write_next(d).unwrap();
        }
        w.finish().unwrap();
        let f = TensorFile::open(&p).unwrap();
        for (s, d) in specs.iter().zip(&data) {
            let t = f.get(&s.name).unwrap();
            assert_eq!((t.dtype, &t.shape), (s.dtype, &s.shape), "{ext}");
            assert_eq!(&f.read(&s.name).unwrap(), d, "{ext}");
        }
    }
}

#[test]
fn chunked_reads_equal_whole_reads() {
    let dir = tempfile::tempdir().unwrap();
    let src = TensorFile::open(fixtures().join("vit-token/checkpoint.npz")).unwrap();
    let pt = dir.path().join("w.pt");
    recode(&src, &pt, Format::Pt, BTreeMap::new());
    for path in [
        fixtures().join("vit-token/checkpoint.npz"),
        fixtures().join("vit-token-variants/compressed.npz"),
        fixtures().join("vit-token-variants/bfloat16.npz"),
        pt,
    ] {
        let f = TensorFile::open(&path).unwrap();
        for t in f.tensors() {
            let whole = f.read(&t.name).unwrap();
            let mut pieces = Vec::new();
            let mut joined = Vec::new();
            // 1000 bytes is not a multiple of any element size but 1, 2, 4 and 8 divide into it unevenly.
            f.read_chunked(&t.name, 1000, |p| {
                pieces.push(p.len());
                joined.extend_from_slice(p);
            })
            .unwrap();
            assert_eq!(joined, whole, "{} in {path:?}", t.name);
            assert!(pieces.iter().all(|&n| n <= 1000 && n % t.dtype.size() == 0));
        }
    }
    assert!(matches!(
        src.read_chunked("nope", 8, |_| {}),
        Err(Error::UnknownTensor { .. })
    ));
}

#[test]
fn tensor_file_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TensorFile>();
}

#[test]
fn output_format_follows_the_extension() {
    use crate::output_format;
    for (name, want) in [
        ("a.pt", Some(Format::Pt)),
        ("a.PTH", Some(Format::Pt)),
        ("pytorch_model.bin", Some(Format::Pt)),
        ("model.safetensors", Some(Format::Safetensors)),
        ("w.npz", Some(Format::Npz)),
        ("w.npy", None),
        ("noext", None),
    ] {
        assert_eq!(output_format(Path::new(name)), want, "{name}");
    }
}

/// Where a zip member lives in the archive bytes: (name, data start, data length, central header start).
fn zip_members(bytes: &[u8]) -> Vec<(String, usize, usize, usize)> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    (0..archive.len())
        .map(|i| {
            let e = archive.by_index_raw(i).unwrap();
            (
                e.name().unwrap().to_string(),
                e.data_start().unwrap() as usize,
                e.compressed_size() as usize,
                e.central_header_start() as usize,
            )
        })
        .collect()
}

/// Offset of the CRC-32 field within a central directory header (APPNOTE 4.3.12).
const CENTRAL_CRC_OFFSET: usize = 16;

/// Asserts both read paths of `tensor` fail with a CRC mismatch naming the file, tensor and member.
fn assert_crc_error(path: &Path, tensor: &str, member: &str) -> (u32, u32) {
    let f = TensorFile::open(path).unwrap();
    let whole = f.read(tensor).unwrap_err();
    let chunked = f.read_chunked(tensor, 1000, |_| {}).unwrap_err();
    for err in [&whole, &chunked] {
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("`{tensor}`")), "{msg}");
        assert!(msg.contains("CRC-32"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
    let (
        Error::Crc {
            member: m,
            expected,
            found,
            ..
        },
        Error::Crc { found: found2, .. },
    ) = (whole, chunked)
    else {
        panic!("not CRC errors");
    };
    assert_eq!(m, member);
    assert_ne!(expected, found);
    assert_eq!(found, found2, "both read paths hash the same bytes");
    (expected, found)
}

#[test]
fn error_crc_mismatch_in_stored_npz_and_pt_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = TensorFile::open(fixtures().join("vit-token/checkpoint.npz")).unwrap();
    for (format, ext, member_of) in [
        (Format::Npz, "npz", None),
        (Format::Pt, "pt", Some("archive/data/")),
    ] {
        let path = dir.path().join(format!("w.{ext}"));
        recode(&src, &path, format, BTreeMap::new());
        let mut bytes = std::fs::read(&path).unwrap();
        // The largest member, and the tensor stored in it.
        let (name, start, len, _) = zip_members(&bytes).into_iter().max_by_key(|m| m.2).unwrap();
        let tensor = match member_of {
            None => name.strip_suffix(".npy").unwrap().to_string(),
            Some(prefix) => {
                let index: usize = name.strip_prefix(prefix).unwrap().parse().unwrap();
                src.tensors()[index].name.clone()
            }
        };
        // One flipped bit in the last byte of the data: every other check still passes.
        bytes[start + len - 1] ^= 0x01;
        let damaged = write(dir.path(), &format!("damaged.{ext}"), &bytes);
        assert_crc_error(&damaged, &tensor, &name);
        // Every other tensor still reads.
        let f = TensorFile::open(&damaged).unwrap();
        for t in f.tensors().iter().filter(|t| t.name != tensor) {
            assert_eq!(f.read(&t.name).unwrap(), src.read(&t.name).unwrap());
        }
    }
}

#[test]
fn error_crc_mismatch_in_deflated_npz() {
    let dir = tempfile::tempdir().unwrap();
    let original = fixtures().join("vit-token-variants/compressed.npz");
    let bytes = std::fs::read(&original).unwrap();
    let (name, start, len, central) = zip_members(&bytes).into_iter().max_by_key(|m| m.2).unwrap();
    let tensor = name.strip_suffix(".npy").unwrap();

    // A directory recording another CRC than the data's: the deflate stream itself is intact,
    // so only the CRC check can notice.
    let mut patched = bytes.clone();
    patched[central + CENTRAL_CRC_OFFSET] ^= 0x01;
    let path = write(dir.path(), "crc.npz", &patched);
    let (expected, found) = assert_crc_error(&path, tensor, &name);
    assert_eq!(expected ^ found, 0x01);

    // The reported corruption: 64 bytes flipped inside the compressed stream. Whatever the
    // inflater makes of it, the read must fail (numpy says "Bad CRC-32").
    let mut flipped = bytes.clone();
    for b in &mut flipped[start + len / 2..start + len / 2 + 64] {
        *b ^= 0xFF;
    }
    let path = write(dir.path(), "flipped.npz", &flipped);
    let f = TensorFile::open(&path).unwrap();
    let err = f.read(tensor).unwrap_err();
    assert!(
        matches!(err, Error::Crc { .. } | Error::Zip { .. }),
        "{err}"
    );
    assert!(f.read_chunked(tensor, 1 << 16, |_| {}).is_err());
}

#[test]
fn the_same_tensors_and_metadata_give_the_same_bytes() {
    // Run to run, and format by format: a header serialised from a hash map would list the metadata in a
    // different order each time.
    let src = TensorFile::open(fixtures().join("vit-token/checkpoint.npz")).unwrap();
    let metadata: BTreeMap<String, String> =
        ["zeta", "alpha", "format", "vitconv.notes", "mu", "b", "y"]
            .iter()
            .map(|k| (k.to_string(), format!("value of {k}")))
            .collect();
    let dir = tempfile::tempdir().unwrap();
    for (format, ext) in [(Format::Safetensors, "safetensors"), (Format::Pt, "pt")] {
        let runs: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("run{i}.{ext}"));
                recode(&src, &p, format, metadata.clone());
                std::fs::read(&p).unwrap()
            })
            .collect();
        assert!(runs.windows(2).all(|w| w[0] == w[1]), "{ext}");
    }
    let bytes = std::fs::read(dir.path().join("run0.safetensors")).unwrap();
    let header = String::from_utf8_lossy(&bytes[8..]);
    let at: Vec<usize> = metadata
        .keys()
        .map(|k| header.find(&format!("\"{k}\"")).unwrap())
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "metadata keys in sorted order: {header}"
    );
}

#[test]
fn an_output_larger_than_the_free_space_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("huge.safetensors");
    // A petabyte of u8: far more than any test machine's free space, and the size arithmetic holds.
    let specs = vec![TensorSpec {
        name: "huge".to_string(),
        dtype: DType::U8,
        shape: vec![1 << 25, 1 << 25],
    }];
    for format in [Format::Safetensors, Format::Pt] {
        let err = Writer::create(&out, format, specs.clone(), BTreeMap::new(), false).unwrap_err();
        match err {
            Error::NoSpace {
                needed, available, ..
            } => assert!(
                needed > available && needed >= 1 << 50,
                "{needed} {available}"
            ),
            other => panic!("{format:?}: {other}"),
        }
        // No temporary file holds a reservation afterwards.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
    // The portable definition: the free space df reports for the same file system, within what other
    // writers may change between the two readings.
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"x").unwrap();
    let df = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(&probe)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&df.stdout);
    let avail: u64 = text.lines().nth(1).unwrap().trim().parse().unwrap();
    let ours = crate::writer::free_bytes_of(&std::fs::File::open(&probe).unwrap()).unwrap();
    let gap = avail.abs_diff(ours);
    assert!(gap < 1 << 30, "df says {avail}, fstatvfs {ours}");
}

#[test]
fn every_container_has_a_distinct_name() {
    let mut names: Vec<&str> = crate::CONTAINERS.iter().map(|c| c.name).collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "{names:?}");
}
