//! Property tests: random tensors round-trip npz -> safetensors -> pt -> read back with identical bytes.
//!
//! Every dtype, shapes with zero-sized axes and 0-d tensors, names holding `/` and `.`, and
//! random metadata, all through the public [`Writer`] and [`TensorFile`] only. Each step
//! reads the previous file back and writes the next from what it read, so a loss anywhere
//! (a dtype mapped wrong, a shape flattened, a name split, bytes reordered) shows at the end.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use vitconv_tensors::{DType, Format, TensorFile, TensorSpec, Writer};

/// Cases per property: enough to cover every dtype many times, few enough to keep the test
/// command fast (each case writes and reads three files).
const CASES: u32 = 64;
/// Most tensors in one generated file.
const MAX_TENSORS: usize = 6;
/// Most axes, and the largest extent of one axis.
const MAX_RANK: usize = 4;
const MAX_DIM: usize = 5;

/// One generated tensor: its spec and its little-endian C-order bytes.
#[derive(Debug, Clone)]
struct Tensor {
    spec: TensorSpec,
    data: Vec<u8>,
}

fn dtype() -> impl Strategy<Value = DType> {
    proptest::sample::select(DType::ALL.to_vec())
}

/// A name of one to three segments joined by `/` or `.`, e.g. `Transformer/encoder_norm.scale`.
fn name() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9_]{0,5}",
        proptest::collection::vec(("[/.]", "[a-zA-Z0-9_]{1,5}"), 0..3),
    )
        .prop_map(|(first, rest)| {
            rest.into_iter()
                .fold(first, |acc, (sep, seg)| format!("{acc}{sep}{seg}"))
        })
}

fn tensor() -> impl Strategy<Value = Tensor> {
    (
        name(),
        dtype(),
        proptest::collection::vec(0..=MAX_DIM, 0..=MAX_RANK),
    )
        .prop_flat_map(|(name, dtype, shape)| {
            let nbytes = shape.iter().product::<usize>() * dtype.size();
            // Bools are written as 0 or 1, as every producer of a bool tensor does.
            let byte = if dtype == DType::Bool {
                (0u8..=1).boxed()
            } else {
                any::<u8>().boxed()
            };
            proptest::collection::vec(byte, nbytes).prop_map(move |data| Tensor {
                spec: TensorSpec {
                    name: name.clone(),
                    dtype,
                    shape: shape.clone(),
                },
                data,
            })
        })
}

/// Up to [`MAX_TENSORS`] tensors with distinct names.
fn tensors() -> impl Strategy<Value = Vec<Tensor>> {
    proptest::collection::vec(tensor(), 0..=MAX_TENSORS).prop_map(|mut v| {
        let mut seen = std::collections::HashSet::new();
        v.retain(|t| seen.insert(t.spec.name.clone()));
        v
    })
}

fn metadata() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map("[a-z.]{1,8}", "[ -~]{0,12}", 0..3)
}

/// Writes `tensors` to `path` in `format`.
fn write(path: &Path, format: Format, tensors: &[Tensor], meta: &BTreeMap<String, String>) {
    let specs = tensors.iter().map(|t| t.spec.clone()).collect();
    let mut w = Writer::create(path, format, specs, meta.clone(), false).unwrap();
    for t in tensors {
        w.write_next(&t.data).unwrap();
    }
    w.finish().unwrap();
}

/// Reads every tensor of `path` back, in file order.
fn read(path: &Path, format: Format) -> (Vec<Tensor>, BTreeMap<String, String>) {
    let file = TensorFile::open(path).unwrap();
    assert_eq!(file.format(), format);
    let tensors = file
        .tensors()
        .iter()
        .map(|info| {
            assert_eq!(info.nbytes(), Some(file.read(&info.name).unwrap().len()));
            Tensor {
                spec: TensorSpec {
                    name: info.name.clone(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                },
                data: file.read(&info.name).unwrap(),
            }
        })
        .collect();
    (tensors, file.metadata().clone())
}

/// Asserts the same tensors, by name. Order is compared separately where the format keeps it:
/// safetensors orders by data offset, and zero-sized tensors share an offset.
fn assert_same(what: &str, expected: &[Tensor], found: &[Tensor]) {
    assert_eq!(expected.len(), found.len(), "{what}: tensor count");
    let by_name: BTreeMap<&str, &Tensor> =
        found.iter().map(|t| (t.spec.name.as_str(), t)).collect();
    assert_eq!(by_name.len(), found.len(), "{what}: a name occurs twice");
    for e in expected {
        let f = by_name
            .get(e.spec.name.as_str())
            .unwrap_or_else(|| panic!("{what}: `{}` is missing", e.spec.name));
        assert_eq!(e.spec, f.spec, "{what}: directory entry");
        assert!(
            e.data == f.data,
            "{what}: bytes of `{}` differ",
            e.spec.name
        );
    }
}

/// The names in order.
fn names(tensors: &[Tensor]) -> Vec<&str> {
    tensors.iter().map(|t| t.spec.name.as_str()).collect()
}

proptest! {
    // No persistence file: a failure prints its shrunk case, which belongs in a named test.
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn npz_to_safetensors_to_pt_keeps_every_byte(tensors in tensors(), meta in metadata()) {
        let dir = tempfile::tempdir().unwrap();
        let npz = dir.path().join("a.npz");
        let st = dir.path().join("b.safetensors");
        let pt = dir.path().join("c.pt");

        write(&npz, Format::Npz, &tensors, &BTreeMap::new());
        let (from_npz, _) = read(&npz, Format::Npz);
        assert_same("npz", &tensors, &from_npz);
        prop_assert_eq!(names(&from_npz), names(&tensors), "npz keeps the written order");

        write(&st, Format::Safetensors, &from_npz, &meta);
        let (from_st, st_meta) = read(&st, Format::Safetensors);
        assert_same("safetensors", &tensors, &from_st);
        prop_assert_eq!(&st_meta, &meta);

        write(&pt, Format::Pt, &from_st, &st_meta);
        let (from_pt, pt_meta) = read(&pt, Format::Pt);
        assert_same("pt", &tensors, &from_pt);
        prop_assert_eq!(names(&from_pt), names(&from_st), "pt keeps the written order");
        prop_assert_eq!(&pt_meta, &meta);
    }
}
