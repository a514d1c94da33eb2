//! The big_vision source family end to end through the library: the golden variants of one model (stored
//! unrolled, without the `params/` root, as a training checkpoint, in bf16) convert to the same tensors as
//! the base case, the published shape lists are read with the sizes their `model` objects give, and each
//! broken or ambiguous file is refused with the tensor or option that explains why. A checkpoint whose
//! members are deflated (as `np.savez_compressed` writes them) converts to the same tensors as the stored one,
//! its stacks streamed a slice at a time, with one producer or two.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vitconv_convert::{prepare, summarize, write, Error, HeadChoice, Layout, Options, OutDType};
use vitconv_tensors::{DType, TensorFile, TensorInfo};

fn bv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/big_vision")
}

/// Every tensor of a conversion: name, dtype, shape and bytes, in order.
fn converted(
    src: &Path,
    opts: &Options,
    dir: &Path,
    name: &str,
) -> Vec<(String, DType, Vec<usize>, Vec<u8>)> {
    let file = TensorFile::open(src).expect("source opens");
    let conv = prepare(&file, opts).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let out = dir.join(name);
    let written = write(&file, &conv, opts, &out, &mut |_, _| {}).expect("written");
    let f = TensorFile::open(&written.weights).expect("output opens");
    f.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dtype,
                t.shape.clone(),
                f.read(&t.name).expect("bytes"),
            )
        })
        .collect()
}

#[test]
fn every_variant_converts_to_the_base_case_tensors() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = bv().join("bv-vit-tok-scan/checkpoint.npz");
    let mut n = 0;
    for layout in [Layout::Timm, Layout::Hf, Layout::OpenClip] {
        let ext = if layout == Layout::Hf {
            ""
        } else {
            ".safetensors"
        };
        for dtype in [OutDType::F32, OutDType::BF16] {
            let mut opts = Options::new(layout);
            opts.dtype = dtype;
            let want = converted(&base, &opts, dir.path(), &format!("base-{n}{ext}"));
            assert!(want.len() > 40, "{layout:?}: {} tensors", want.len());
            let variants: &[&str] = match (dtype, layout) {
                // The bf16 file holds the base weights rounded to bf16: written as bf16, they are the base
                // case written as bf16. open_clip folds the patch bias into the position embedding, a sum
                // of rounded values, so only the tensors it moves unchanged could match there.
                (OutDType::BF16, Layout::Timm | Layout::Hf) => {
                    &["unrolled", "no-prefix", "train-state", "bfloat16"]
                }
                _ => &["unrolled", "no-prefix", "train-state"],
            };
            for v in variants {
                n += 1;
                let src = bv().join(format!("bv-vit-tok-scan/variants/{v}.npz"));
                let got = converted(&src, &opts, dir.path(), &format!("{v}-{n}{ext}"));
                assert!(
                    got == want,
                    "{v} -> {layout:?} {dtype:?} differs from the base case"
                );
            }
        }
    }
}

/// A copy of the `.npz` at `src` with every member deflated, as `np.savez_compressed` writes it.
fn deflated_copy(src: &Path, dst: &Path) {
    use std::io::{Read, Write};
    let mut archive = zip::ZipArchive::new(std::fs::File::open(src).expect("source")).expect("zip");
    let mut out = zip::ZipWriter::new(std::fs::File::create(dst).expect("copy"));
    let deflate = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).expect("member");
        let mut bytes = Vec::new();
        member.read_to_end(&mut bytes).expect("member bytes");
        let name = member.name().expect("member name").to_string();
        out.start_file(name, deflate).expect("start");
        out.write_all(&bytes).expect("write");
    }
    out.finish().expect("finish");
}

#[test]
fn deflated_stacks_convert_to_the_stored_tensors() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        ("bv-vit-tok-scan", Layout::Timm, ".safetensors"),
        ("bv-vit-map-scan", Layout::Timm, ".pt"),
        ("bv-vit-tok-scan", Layout::Hf, ""),
        ("siglip-tiny", Layout::OpenClip, ""),
        ("siglip-nohead", Layout::Hf, ""),
    ];
    for (n, (case, layout, ext)) in cases.into_iter().enumerate() {
        let stored = bv().join(format!("{case}/checkpoint.npz"));
        let deflated = dir.path().join(format!("{case}-deflated.npz"));
        deflated_copy(&stored, &deflated);
        let file = TensorFile::open(&deflated).expect("deflated copy opens");
        assert!(
            file.tensors()
                .iter()
                .any(|t| t.name.contains("encoderblock/")),
            "{case} has stacked blocks"
        );
        let mut opts = Options::new(layout);
        if case == "bv-vit-map-scan" {
            // Its pre_logits layer has no place in timm; the MAP head and the blocks do.
            opts.head = HeadChoice::Drop;
        }
        let want = converted(&stored, &opts, dir.path(), &format!("stored-{n}{ext}"));
        for producers in [1, 2] {
            opts.producers = Some(producers);
            // Bands far smaller than the tensors, so that two producers interleave their slices.
            opts.band_bytes = Some(512);
            let got = converted(
                &deflated,
                &opts,
                dir.path(),
                &format!("deflated-{n}-{producers}{ext}"),
            );
            assert!(
                got == want,
                "{case} -> {layout:?}, {producers} producers: the deflated copy differs"
            );
        }
    }
}

fn infos(path: &Path) -> (Vec<TensorInfo>, Value) {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("shapes")).expect("json");
    let tensors = json["tensors"]
        .as_object()
        .expect("tensors")
        .iter()
        .map(|(k, v)| TensorInfo {
            name: k.clone(),
            dtype: DType::F32,
            shape: v
                .as_array()
                .expect("shape")
                .iter()
                .filter_map(Value::as_u64)
                .map(|d| d as usize)
                .collect(),
            stored_as: None,
        })
        .collect();
    (tensors, json["model"].clone())
}

#[test]
fn published_shapes_are_read_with_their_sizes() {
    let mut seen = 0;
    for entry in std::fs::read_dir(bv().join("shapes")).expect("shapes dir") {
        let path = entry.expect("entry").path();
        let (tensors, model) = infos(&path);
        let summary = summarize(&tensors);
        let get = |k: &str| model[k].as_u64().map(|v| v as usize);
        if model["kind"] == "siglip" {
            // Two towers: the image tower is a big_vision ViT with a MAP head and no head of its own, the text
            // tower's sizes come from its shapes, and the towers meet in the embedding width.
            let s = summary.unwrap_or_else(|| panic!("{}: not recognised", path.display()));
            assert_eq!(s.family, "siglip");
            assert!(
                s.architecture.starts_with("SigLIP: image "),
                "{}",
                s.architecture
            );
            let m = vitconv_convert::sources::read(&tensors).expect("read");
            let (a, t) = (&m.image.arch, &m.text.as_ref().expect("text tower").arch);
            assert_eq!(a.classifier.as_str(), "map");
            assert_eq!(
                (Some(a.hidden), Some(a.depth), a.heads),
                (get("hidden"), get("layers"), get("heads"))
            );
            assert_eq!((Some(a.mlp), Some(a.patch)), (get("mlp"), get("patch")));
            // VALID patching: a 384 px So400m/14 has a 27x27 grid, which the shapes read as 378 px.
            let image = get("image").expect("image size");
            assert_eq!(a.grid, Some((image / a.patch, image / a.patch)));
            assert_eq!(
                (Some(t.vocab), Some(t.context)),
                (get("vocab"), get("context"))
            );
            assert_eq!(t.embed, get("embed"));
            assert_eq!(s.logit_tensors, ["params/t", "params/b"]);
            seen += 1;
            continue;
        }
        let s = summary.unwrap_or_else(|| panic!("{}: not recognised", path.display()));
        assert_eq!(s.family, "big_vision");
        let m = vitconv_convert::sources::read(&tensors).expect("read");
        let a = &m.image.arch;
        assert_eq!(Some(a.hidden), get("hidden"));
        assert_eq!(Some(a.depth), get("layers"));
        assert_eq!(a.heads, get("heads"));
        assert_eq!(Some(a.mlp), get("mlp"));
        assert_eq!(Some(a.patch), get("patch"));
        assert_eq!(a.num_classes, get("classes"));
        assert_eq!(a.representation, get("representation"));
        assert_eq!(
            a.classifier.as_str(),
            match model["pool"].as_str() {
                Some("tok") => "token",
                Some(p) => p,
                None => "?",
            }
        );
        assert!(a.stacked, "{}: scan", path.display());
        match model["posemb"].as_str() {
            Some("sincos2d") => {
                assert_eq!(a.grid, None);
                assert!(s.architecture.contains("sincos2d"), "{}", s.architecture);
            }
            _ => assert_eq!(a.image_size(), get("image")),
        }
        seen += 1;
    }
    assert_eq!(seen, 4, "every big_vision shapes file was checked");
}

fn read_err(tensors: &[TensorInfo]) -> Error {
    match vitconv_convert::sources::read(tensors) {
        Ok(_) => panic!("a broken file was read"),
        Err(e) => e,
    }
}

fn golden_infos(case: &str) -> Vec<TensorInfo> {
    TensorFile::open(bv().join(case).join("checkpoint.npz"))
        .expect("golden")
        .tensors()
        .to_vec()
}

#[test]
fn broken_files_are_refused_naming_the_tensor() {
    // A stacked tensor with the wrong depth.
    let mut t = golden_infos("bv-vit-tok-scan");
    let bad = "params/Transformer/encoderblock/MlpBlock_0/Dense_1/kernel";
    t.iter_mut()
        .filter(|x| x.name == bad)
        .for_each(|x| x.shape[0] = 2);
    let e = read_err(&t);
    assert!(
        matches!(&e, Error::ShapeMismatch { name, .. } if name == bad),
        "{e}"
    );
    // A missing MAP head tensor.
    let mut t = golden_infos("bv-vit-map-scan");
    let gone = "params/MAPHead_0/MultiHeadDotProductAttention_0/key/bias";
    t.retain(|x| x.name != gone);
    let e = read_err(&t);
    assert!(e.to_string().contains(gone), "{e}");
    // A tensor nothing accounts for, outside the training-state roots.
    let mut t = golden_infos("bv-vit-tok-scan");
    t.push(TensorInfo {
        name: "params/extra/scale".to_string(),
        dtype: DType::F32,
        shape: vec![4],
        stored_as: None,
    });
    assert!(matches!(read_err(&t), Error::Unmapped { name, .. } if name == "params/extra/scale"));
    // Stray roots other than opt/ and chrono/ are not training state.
    let mut t = golden_infos("bv-vit-tok-scan");
    t.push(TensorInfo {
        name: "ema/cls".to_string(),
        dtype: DType::F32,
        shape: vec![1, 1, 64],
        stored_as: None,
    });
    assert!(matches!(read_err(&t), Error::Unmapped { name, .. } if name == "ema/cls"));
}

#[test]
fn sincos2d_files_need_the_image_size() {
    let file = TensorFile::open(bv().join("bv-vit-gap-sincos/checkpoint.npz")).expect("golden");
    let e = prepare(&file, &Options::new(Layout::Timm)).expect_err("no resolution");
    assert!(matches!(e, Error::ImageSizeRequired { .. }), "{e}");
    let mut opts = Options::new(Layout::Timm);
    opts.image_size = Some(32);
    let conv = prepare(&file, &opts).expect("with --image-size");
    assert!(conv
        .plan
        .notes
        .iter()
        .any(|n| n.contains("sincos2d computed for the 4x4 grid")));
}

#[test]
fn map_heads_are_refused_where_a_layout_cannot_pool_that_way() {
    let file = TensorFile::open(bv().join("bv-vit-map-scan/checkpoint.npz")).expect("golden");
    for layout in [Layout::OpenClip, Layout::Clip] {
        let mut opts = Options::new(layout);
        opts.head = HeadChoice::Drop;
        let e = prepare(&file, &opts).expect_err("CLIP-style layouts pool the class token");
        assert!(
            matches!(e, Error::Refused { .. }) && e.to_string().contains("MAP head"),
            "{e}"
        );
    }
    let e = prepare(&file, &Options::new(Layout::Hf)).expect_err("MAP head and classifier");
    assert!(e.to_string().contains("--drop-head"), "{e}");
}

#[test]
fn an_image_size_that_patches_to_the_source_grid_is_declared_not_resampled() {
    // siglip-nohead: patch 8, a 4x4 table (32 px). 35 px patches to the same 4x4 grid with VALID padding,
    // as a published So400m/14 at 384 px does to its 27x27 table (378 px).
    let src = bv().join("siglip-nohead/checkpoint.npz");
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = converted(&src, &Options::new(Layout::Hf), dir.path(), "plain");
    let mut o = Options::new(Layout::Hf);
    o.image_size = Some(35);
    let file = TensorFile::open(&src).expect("source");
    let conv = prepare(&file, &o).expect("35 px gives the source's grid");
    assert!(
        conv.plan
            .notes
            .iter()
            .any(|n| n.contains("35 px") && n.contains("32 px")),
        "{:?}",
        conv.plan.notes
    );
    let declared = converted(&src, &o, dir.path(), "declared");
    assert_eq!(plain, declared, "the same tensors, byte for byte");
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("declared/config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(cfg["vision_config"]["image_size"], 35);
    // A size whose grid differs and is no multiple of the patch is still refused.
    o.image_size = Some(45);
    assert!(matches!(
        prepare(&file, &o),
        Err(Error::ImageSizeNotMultiple {
            size: 45,
            stride: 8
        })
    ));
}

#[test]
fn two_tower_listings_read_the_same_in_every_storage_form() {
    let base = golden_infos("siglip-tiny");
    let want = vitconv_convert::sources::read(&base).expect("siglip-tiny");
    let text = want.text.as_ref().expect("text tower").arch.clone();
    let forms: Vec<(&str, Vec<TensorInfo>)> = vec![
        (
            "no params/ root",
            base.iter()
                .map(|t| TensorInfo {
                    name: t.name.trim_start_matches("params/").to_string(),
                    ..t.clone()
                })
                .collect(),
        ),
        ("unrolled blocks", {
            // Every `encoderblock/` tensor split along its depth axis into `encoderblock_{i}/`.
            let mut v = Vec::new();
            for t in &base {
                match t.name.split_once("encoderblock/") {
                    Some((head, tail)) => {
                        for i in 0..t.shape[0] {
                            v.push(TensorInfo {
                                name: format!("{head}encoderblock_{i}/{tail}"),
                                shape: t.shape[1..].to_vec(),
                                ..t.clone()
                            });
                        }
                    }
                    None => v.push(t.clone()),
                }
            }
            v
        }),
        ("training state", {
            let mut v = base.clone();
            v.push(TensorInfo {
                name: "opt/mu/txt/Embed_0/embedding".to_string(),
                ..base[0].clone()
            });
            v.push(TensorInfo {
                name: "chrono/accum_train_time".to_string(),
                dtype: DType::I64,
                shape: vec![],
                stored_as: None,
            });
            v
        }),
    ];
    for (form, tensors) in forms {
        let m = vitconv_convert::sources::read(&tensors).unwrap_or_else(|e| panic!("{form}: {e}"));
        let t = &m.text.as_ref().expect("text tower").arch;
        assert_eq!(
            (t.vocab, t.context, t.width, t.heads, t.mlp, t.depth, t.embed),
            (
                text.vocab,
                text.context,
                text.width,
                text.heads,
                text.mlp,
                text.depth,
                text.embed
            ),
            "{form}"
        );
        assert_eq!(m.image.arch.hidden, want.image.arch.hidden, "{form}");
        assert_eq!(t.stacked, form != "unrolled blocks", "{form}");
        assert_eq!(
            m.left_out.len(),
            if form == "training state" { 2 } else { 0 }
        );
    }
    // A text tower without a head: its width is its embedding, which meets the image head's.
    let narrow: Vec<TensorInfo> = base
        .iter()
        .filter(|t| !t.name.starts_with("params/txt/head/"))
        .cloned()
        .collect();
    assert!(matches!(
        vitconv_convert::sources::read(&narrow),
        Ok(m) if m.text.as_ref().is_some_and(|t| t.arch.embed.is_none())
    ));
}

/// A converted two-tower file's logit scale and bias are read by `inspect` only when they hold one element: a
/// `logit_scale` of a gigabyte (a deflated run of zeros) was read whole to print one number.
#[test]
fn only_one_element_logit_tensors_are_read_as_scalars() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = bv().join("siglip-nohead/checkpoint.npz");
    let opts = Options::new(Layout::OpenClip);
    let file = TensorFile::open(&src).expect("opens");
    let conv = prepare(&file, &opts).expect("prepares");
    let written =
        write(&file, &conv, &opts, &dir.path().join("oc"), &mut |_, _| {}).expect("written");
    let out = TensorFile::open(&written.weights).expect("output opens");
    let mut tensors = out.tensors().to_vec();
    let s = vitconv_convert::summarize_file(&tensors, out.metadata()).expect("summary");
    assert_eq!(s.logit_tensors, ["logit_scale", "logit_bias"]);
    for t in &mut tensors {
        if t.name == "logit_scale" {
            t.shape = vec![1 << 28];
        }
    }
    let s = vitconv_convert::summarize_file(&tensors, out.metadata()).expect("summary");
    assert_eq!(s.logit_tensors, ["logit_bias"]);
}
