//! Checkpoint containers end to end through the library: every golden `.bv` folder, Orbax checkpoint and flax
//! msgpack file (`fixtures/containers/`) converts, in every layout, dtype and file format, to exactly the
//! tensors the same parameters give from their `.npz`; where the `.npz` is refused, the container is refused
//! the same way.

use std::path::{Path, PathBuf};

use vitconv_convert::{prepare, write, HeadChoice, Layout, Options, OutDType, TowerChoice};
use vitconv_tensors::{DType, TensorFile};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The fixture copy of a `golden_npz` path, which `expected.json` gives relative to `shared/`.
fn npz_of(golden: &str) -> PathBuf {
    let rel = golden
        .strip_prefix("golden-big-vision/")
        .map(|r| format!("big_vision/{r}"))
        .or_else(|| golden.strip_prefix("golden/").map(str::to_string))
        .unwrap_or_else(|| panic!("unknown golden path {golden}"));
    fixtures().join(rel)
}

type Tensors = Vec<(String, DType, Vec<usize>, Vec<u8>)>;

/// Every tensor of a conversion, or the refusal's message.
fn converted(src: &Path, opts: &Options, out: &Path) -> Result<Tensors, String> {
    let file = TensorFile::open(src).map_err(|e| e.to_string())?;
    let conv = prepare(&file, opts).map_err(|e| e.to_string())?;
    let written = write(&file, &conv, opts, out, &mut |_, _| {}).map_err(|e| e.to_string())?;
    let f = TensorFile::open(&written.weights).expect("output opens");
    Ok(f.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype,
                t.shape.clone(),
                f.read(&t.name).expect("bytes"),
            )
        })
        .collect())
}

#[test]
fn every_container_converts_to_its_npz_conversion_in_every_layout() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut compared = 0;
    let mut refused = 0;
    let mut per_case = Vec::new();
    for case in [
        "bv-vit-map-scan",
        "bv-siglip-tiny-sharded",
        "orbax-vit-token",
        "orbax-bv-std",
        "orbax-bv-noocdbt",
        "orbax-bv-v1-zarr3",
        "msgpack-vit-token",
        "msgpack-bv-hfstyle",
    ] {
        let cdir = fixtures().join("containers").join(case);
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(cdir.join("expected.json")).expect("json"))
                .expect("json");
        let entry = cdir.join(expected["entry"].as_str().expect("entry"));
        let npz = npz_of(expected["golden_npz"].as_str().expect("golden_npz"));
        let before = compared;
        for layout in Layout::ALL {
            for (tower, head) in [
                (TowerChoice::All, HeadChoice::Keep),
                (TowerChoice::All, HeadChoice::Drop),
                (TowerChoice::Image, HeadChoice::Keep),
            ] {
                for dtype in [OutDType::F32, OutDType::BF16] {
                    for ext in [".safetensors", ".pt"] {
                        let mut opts = Options::new(layout);
                        opts.dtype = dtype;
                        opts.tower = tower;
                        opts.head = head;
                        let n = compared + refused;
                        let ext = if layout == Layout::Hf
                            || (layout == Layout::OpenClip && case.contains("siglip"))
                        {
                            ""
                        } else {
                            ext
                        };
                        let want =
                            converted(&npz, &opts, &dir.path().join(format!("npz-{n}{ext}")));
                        let got = converted(&entry, &opts, &dir.path().join(format!("c-{n}{ext}")));
                        match (want, got) {
                            (Ok(w), Ok(g)) => {
                                assert!(w == g, "{case} -> {layout:?} {tower:?} {dtype:?} {ext}: tensors differ from the npz conversion");
                                compared += 1;
                            }
                            (Err(w), Err(g)) => {
                                // The same refusal: the model, not its container, decides it.
                                assert_eq!(w, g, "{case} -> {layout:?} {tower:?} {dtype:?}");
                                refused += 1;
                            }
                            (w, g) => panic!("{case} -> {layout:?} {tower:?} {dtype:?}: npz gave {:?}, the container {:?}", w.err(), g.err()),
                        }
                    }
                }
            }
        }
        per_case.push((case, compared - before));
    }
    // Every model converts in several layouts; the refusals are the layouts that cannot hold it.
    assert!(
        per_case.iter().all(|&(_, n)| n >= 8),
        "conversions compared per case: {per_case:?}; {refused} refused by both"
    );
}
