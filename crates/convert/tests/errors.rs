//! One test per error variant: each builds the situation through the public API where it can (a golden file
//! with one tensor changed, an option the source cannot honour, an output path that cannot be written) and
//! matches the variant and its values, not the message text. The few variants no input can reach (bugs,
//! overflows) are constructed directly, so that their messages still render.

use std::path::{Path, PathBuf};

use vitconv_convert::{
    prepare, sources, write, Error, HeadChoice, InputNorm, Layout, Options, Part, ProjChoice,
    TowerChoice,
};
use vitconv_tensors::{DType, TensorFile, TensorInfo};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(case)
        .join("checkpoint.npz")
}

fn open(case: &str) -> TensorFile {
    TensorFile::open(fixture(case)).expect("golden file opens")
}

fn infos(case: &str) -> Vec<TensorInfo> {
    open(case).tensors().to_vec()
}

/// The error reading `tensors` as a source, after `change` altered them.
fn read_err(case: &str, change: impl FnOnce(&mut Vec<TensorInfo>)) -> Error {
    let mut t = infos(case);
    change(&mut t);
    match sources::read(&t) {
        Ok(_) => panic!("{case}: the changed listing was accepted"),
        Err(e) => e,
    }
}

/// The listing of the golden SigLIP model, after `change` altered it.
fn siglip_with(change: impl FnOnce(&mut Vec<TensorInfo>)) -> Vec<TensorInfo> {
    let mut t = infos("big_vision/siglip-tiny");
    change(&mut t);
    t
}

/// Sets the shape of tensor `name`.
fn reshape(t: &mut [TensorInfo], name: &str, shape: &[usize]) {
    let x = t
        .iter_mut()
        .find(|x| x.name == name)
        .expect("tensor exists");
    x.shape = shape.to_vec();
}

fn info(name: &str, shape: &[usize]) -> TensorInfo {
    TensorInfo {
        name: name.to_string(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        stored_as: None,
    }
}

fn prepare_err(case: &str, opts: &Options) -> Error {
    match prepare(&open(case), opts) {
        Ok(_) => panic!("{case}: the options were accepted"),
        Err(e) => e,
    }
}

/// The error writing `case` converted with `opts` to `output`.
fn write_err(case: &str, opts: &Options, output: &Path) -> Error {
    let file = open(case);
    let conv = prepare(&file, opts).expect("prepared");
    match write(&file, &conv, opts, output, &mut |_, _| {}) {
        Ok(_) => panic!("{}: written", output.display()),
        Err(e) => e,
    }
}

const BLOCK1: &str = "Transformer/encoderblock_1/";

#[test]
fn tensors() {
    let e = Error::from(TensorFile::open("/nonexistent/checkpoint.npz").expect_err("no file"));
    assert!(matches!(e, Error::Tensors(_)));
}

#[test]
fn not_a_source_names_the_layout_a_converted_file_is_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options::new(Layout::Timm);
    let file = open("vit-token");
    let conv = prepare(&file, &opts).expect("prepared");
    let out = dir.path().join("m.safetensors");
    write(&file, &conv, &opts, &out, &mut |_, _| {}).expect("written");
    let converted = TensorFile::open(&out).expect("output opens");
    let e = prepare(&converted, &opts).expect_err("not a source");
    assert!(
        matches!(e, Error::NotASource { tensors, layout: Some("timm") } if tensors == converted.tensors().len()),
        "{e}"
    );
    let e = sources::read(&[info("foo", &[1])]).expect_err("not a source");
    assert!(
        matches!(
            e,
            Error::NotASource {
                tensors: 1,
                layout: None
            }
        ),
        "{e}"
    );
}

#[test]
fn no_root() {
    let e = sources::vit_jax::read(&[info("foo", &[1])]).expect_err("no root");
    assert!(matches!(e, Error::NoRoot { tensors: 1, .. }), "{e}");
}

#[test]
fn embed_mismatch() {
    let e = sources::read(&siglip_with(|t| {
        for x in t
            .iter_mut()
            .filter(|x| x.name.starts_with("params/txt/head/"))
        {
            let last = x.shape.len() - 1;
            x.shape[last] = 32;
        }
    }))
    .expect_err("text head of another width");
    assert!(
        matches!(
            e,
            Error::EmbedMismatch {
                image: 64,
                text: 32
            }
        ),
        "{e}"
    );
}

#[test]
fn missing_tensor() {
    let gone = format!("{BLOCK1}MlpBlock_3/Dense_1/bias");
    let e = read_err("vit-token", |t| t.retain(|x| x.name != gone));
    assert!(
        matches!(&e, Error::MissingTensor { tensor, role: Some(_), .. } if *tensor == gone),
        "{e}"
    );
}

#[test]
fn no_blocks() {
    let e = read_err("vit-token", |t| {
        t.retain(|x| !x.name.starts_with("Transformer/encoderblock_"))
    });
    assert!(
        matches!(&e, Error::NoBlocks { looked_for, .. } if looked_for.len() == 1),
        "{e}"
    );
    let e = read_err("big_vision/bv-vit-tok-scan", |t| {
        t.retain(|x| !x.name.starts_with("params/Transformer/encoderblock"))
    });
    assert!(
        matches!(&e, Error::NoBlocks { looked_for, .. } if looked_for.len() == 2),
        "{e}"
    );
}

#[test]
fn stem_mismatch() {
    let e = read_err("hybrid-root", |t| {
        reshape(t, "embedding/kernel", &[8, 8, 32, 64])
    });
    assert!(
        matches!(
            e,
            Error::StemMismatch {
                stem_out: 64,
                embed_in: 32,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unmapped() {
    let e = read_err("vit-token", |t| t.push(info("extra/scale", &[4])));
    assert!(
        matches!(&e, Error::Unmapped { name, .. } if name == "extra/scale"),
        "{e}"
    );
}

#[test]
fn not_float() {
    let e = read_err("vit-token", |t| {
        if let Some(x) = t.iter_mut().find(|x| x.name == "head/bias") {
            x.dtype = DType::I32;
        }
    });
    assert!(
        matches!(&e, Error::NotFloat { name, .. } if name == "head/bias"),
        "{e}"
    );
}

#[test]
fn rank() {
    let pe = "Transformer/posembed_input/pos_embedding";
    let e = read_err("vit-token", |t| reshape(t, pe, &[17, 64]));
    assert!(
        matches!(&e, Error::Rank { name, found, .. } if name == pe && *found == [17, 64]),
        "{e}"
    );
}

#[test]
fn shape_mismatch() {
    let bias = format!("{BLOCK1}MlpBlock_3/Dense_1/bias");
    let e = read_err("vit-token", |t| reshape(t, &bias, &[65]));
    assert!(
        matches!(&e, Error::ShapeMismatch { name, expected, found, .. }
            if *name == bias && *expected == [64] && *found == [65]),
        "{e}"
    );
}

#[test]
fn group_norm_shape() {
    let e = read_err("hybrid-root", |t| reshape(t, "gn_root/scale", &[63]));
    assert!(
        matches!(&e, Error::GroupNormShape { name, channels: 64, .. } if name == "gn_root/scale"),
        "{e}"
    );
}

#[test]
fn not_stacked() {
    // The source modules check every stacked tensor's shape before slicing it, so no listing reaches
    // this; it stays as the answer of the slicing helper itself.
    let e = Error::NotStacked {
        name: "params/Transformer/encoderblock/LayerNorm_0/scale".to_string(),
        count: 3,
        found: vec![2, 64],
    };
    assert!(e.to_string().contains("[3, ...]"));
    assert!(matches!(e, Error::NotStacked { count: 3, .. }));
}

#[test]
fn stack_depth() {
    let ln = "params/Transformer/encoderblock/LayerNorm_0/scale";
    let e = read_err("big_vision/bv-vit-tok-scan", |t| reshape(t, ln, &[3, 65]));
    assert!(
        matches!(&e, Error::StackDepth { name, hidden: 64, .. } if name == ln),
        "{e}"
    );
}

#[test]
fn non_square_patch() {
    let e = read_err("vit-token", |t| {
        reshape(t, "embedding/kernel", &[16, 8, 3, 64])
    });
    assert!(
        matches!(&e, Error::NonSquarePatch { name, .. } if name == "embedding/kernel"),
        "{e}"
    );
}

#[test]
fn heads_mismatch() {
    let q = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel";
    let e = read_err("vit-token", |t| reshape(t, q, &[64, 4, 15]));
    assert!(
        matches!(&e, Error::HeadsMismatch { name, hidden: 64, .. } if name == q),
        "{e}"
    );
}

#[test]
fn pos_emb_not_square() {
    let pe = "Transformer/posembed_input/pos_embedding";
    let e = read_err("vit-token", |t| reshape(t, pe, &[1, 16, 64]));
    assert!(
        matches!(
            e,
            Error::PosEmbNotSquare {
                class_row: true,
                cells: 15,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn sincos_width() {
    // Every other tensor of a real file would disagree with a width that is not a multiple of 4 first,
    // so this is constructed directly.
    let e = Error::SincosWidth {
        name: "params/embedding/kernel".to_string(),
        hidden: 66,
        found: vec![16, 16, 3, 66],
    };
    assert!(e.to_string().contains("sincos2d"));
    assert!(matches!(e, Error::SincosWidth { hidden: 66, .. }));
}

#[test]
fn bit_root() {
    let e = read_err("hybrid-root", |t| {
        reshape(t, "conv_root/kernel", &[5, 5, 3, 64])
    });
    assert!(
        matches!(&e, Error::BitRoot { name, .. } if name == "conv_root/kernel"),
        "{e}"
    );
}

#[test]
fn refused() {
    // Each refusal names the part of the source, typed, with its sizes.
    let e = prepare_err("hybrid-root", &Options::new(Layout::Hf));
    assert!(
        matches!(
            e,
            Error::Refused {
                layout: "hf",
                what: Part::HybridStem { width: 64 },
                ..
            }
        ),
        "{e}"
    );
    let e = prepare_err("vit-prelogits", &Options::new(Layout::Timm));
    assert!(
        matches!(
            e,
            Error::Refused {
                what: Part::PreLogits { .. },
                ..
            }
        ),
        "{e}"
    );
    let e = prepare_err("vit-gap", &Options::new(Layout::Clip));
    assert!(
        matches!(
            e,
            Error::Refused {
                what: Part::Pooling(vitconv_convert::arch::Classifier::Gap),
                ..
            }
        ),
        "{e}"
    );
    let e = prepare_err("big_vision/siglip-tiny", &Options::new(Layout::Timm));
    assert!(
        matches!(
            e,
            Error::Refused {
                what: Part::TwoTower { text_width: 64 },
                ..
            }
        ),
        "{e}"
    );
    let e = prepare_err("big_vision/siglip-tiny", &Options::new(Layout::Hf));
    assert!(
        matches!(
            e,
            Error::Refused {
                what: Part::ImageHead {
                    hidden: 64,
                    embed: 64
                },
                ..
            }
        ),
        "{e}"
    );
    let mut o = Options::new(Layout::OpenClip);
    o.head = HeadChoice::Drop;
    let e = prepare_err("big_vision/siglip-tiny", &o);
    assert!(
        matches!(
            e,
            Error::Refused {
                what: Part::ImageHeadDropped { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn image_size_required() {
    let e = prepare_err("big_vision/bv-vit-gap-sincos", &Options::new(Layout::Timm));
    assert!(matches!(e, Error::ImageSizeRequired { .. }), "{e}");
}

#[test]
fn image_size_not_multiple() {
    // 90 px with patch 16 is a 5x5 grid with 10 px over: neither a multiple nor the source's 4x4 grid.
    let mut opts = Options::new(Layout::Timm);
    opts.image_size = Some(90);
    let e = prepare_err("vit-token", &opts);
    assert!(
        matches!(
            e,
            Error::ImageSizeNotMultiple {
                size: 90,
                stride: 16
            }
        ),
        "{e}"
    );
}

#[test]
fn num_classes_mismatch() {
    let mut opts = Options::new(Layout::Timm);
    opts.head = HeadChoice::NumClasses(5);
    let e = prepare_err("vit-token", &opts);
    assert!(
        matches!(
            e,
            Error::NumClassesMismatch {
                asked: 5,
                found: Some(10)
            }
        ),
        "{e}"
    );
}

#[test]
fn input_norm_hybrid() {
    let mut opts = Options::new(Layout::Timm);
    opts.input_norm = Some(InputNorm::Imagenet);
    let e = prepare_err("hybrid-root", &opts);
    assert!(matches!(e, Error::InputNormHybrid { .. }), "{e}");
}

#[test]
fn proj_without_head() {
    let mut opts = Options::new(Layout::OpenClip);
    opts.head = HeadChoice::Drop;
    opts.proj = Some(ProjChoice::Head);
    let e = prepare_err("vit-token", &opts);
    assert!(matches!(e, Error::ProjWithoutHead), "{e}");
}

#[test]
fn no_layout_module() {
    // Every layout has its module (the registry test checks it); this is the answer if one had none.
    let e = Error::NoLayoutModule { layout: "timm" };
    assert!(matches!(e, Error::NoLayoutModule { layout: "timm" }));
}

#[test]
fn output_extension() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.xyz");
    let e = write_err("vit-token", &Options::new(Layout::Timm), &out);
    assert!(
        matches!(&e, Error::OutputExtension { path } if *path == out),
        "{e}"
    );
}

#[test]
fn hf_output_not_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.safetensors");
    let e = write_err("vit-token", &Options::new(Layout::Hf), &out);
    assert!(
        matches!(&e, Error::FolderOutputNotDirectory { path, layout: "hf", .. } if *path == out),
        "{e}"
    );
}

#[test]
fn exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.pt");
    std::fs::write(&out, b"keep").expect("placeholder");
    let e = write_err("vit-token", &Options::new(Layout::Timm), &out);
    assert!(matches!(&e, Error::Exists { path } if *path == out), "{e}");
}

#[test]
fn io_names_the_path_and_keeps_its_cause_out_of_the_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").expect("file");
    let out = blocker.join("hf-model");
    let e = write_err("vit-token", &Options::new(Layout::Hf), &out);
    let Error::Io { path, source, .. } = &e else {
        panic!("{e}");
    };
    assert_eq!(*path, out);
    // The cause is the error's source, shown by whoever prints the chain, and not repeated in the message.
    let cause = source.to_string();
    assert!(!e.to_string().contains(&cause), "{e}");
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn overflow_worker_and_length() {
    // Sizes too large to be real, a panicked worker and a short read cannot be built from a valid file;
    // their values still reach the messages.
    let e = Error::Overflow {
        name: "x".to_string(),
        what: "element count",
    };
    assert!(matches!(
        e,
        Error::Overflow {
            what: "element count",
            ..
        }
    ));
    let e = Error::Worker {
        name: "x".to_string(),
    };
    assert!(matches!(e, Error::Worker { .. }));
    let e = Error::Length {
        name: "x".to_string(),
        shape: vec![2, 3],
        expected: 6,
        found: 5,
    };
    assert!(e.to_string().contains("read 5 values"));
    assert!(matches!(
        e,
        Error::Length {
            expected: 6,
            found: 5,
            ..
        }
    ));
}

/// A SentencePiece `ModelProto` holding these pieces (text, type), as the protobuf wire format writes it.
fn spiece_model(pieces: &[(&str, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (text, kind) in pieces {
        let mut p = vec![0x0a, text.len() as u8];
        p.extend_from_slice(text.as_bytes());
        p.extend_from_slice(&[0x18, *kind]);
        out.extend_from_slice(&[0x0a, p.len() as u8]);
        out.extend_from_slice(&p);
    }
    out
}

/// Options for `layout` with a tokenizer file holding `bytes`.
fn with_tokenizer(dir: &Path, layout: Layout, bytes: &[u8]) -> Options {
    let path = dir.join("spiece.model");
    std::fs::write(&path, bytes).expect("write tokenizer");
    let mut o = Options::new(layout);
    o.tokenizer = Some(path);
    o
}

#[test]
fn not_two_tower() {
    let mut o = Options::new(Layout::Timm);
    o.tower = TowerChoice::Image;
    assert!(matches!(prepare_err("vit-token", &o), Error::NotTwoTower));
}

#[test]
fn tokenizer_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let siglip = "big_vision/siglip-nohead";
    let ok = spiece_model(&[("<pad>", 3), ("</s>", 3), ("<unk>", 2), ("a", 1)]);
    // Accepted where there is a text tower, refused where there is none.
    assert!(prepare(&open(siglip), &with_tokenizer(dir.path(), Layout::Hf, &ok)).is_ok());
    assert!(matches!(
        prepare_err("vit-token", &with_tokenizer(dir.path(), Layout::Timm, &ok)),
        Error::TokenizerWithoutText { .. }
    ));
    let mut image_only = with_tokenizer(dir.path(), Layout::Timm, &ok);
    image_only.tower = TowerChoice::Image;
    assert!(matches!(
        prepare_err(siglip, &image_only),
        Error::TokenizerWithoutText { .. }
    ));
    assert!(matches!(
        prepare_err(
            siglip,
            &with_tokenizer(dir.path(), Layout::Hf, b"{\"json\": 1}")
        ),
        Error::TokenizerFormat { offset: 0, .. }
    ));
    let no_eos = spiece_model(&[("<unk>", 2), ("a", 1)]);
    assert!(matches!(
        prepare_err(siglip, &with_tokenizer(dir.path(), Layout::Hf, &no_eos)),
        Error::TokenizerPieces { pieces: 2, .. }
    ));
    // Gemma's kind (the SigLIP 2 golden tokenizer), with a later spec field overriding the file's own: an
    // algorithm its fast tokenizer cannot express, a normalisation it would not reproduce.
    let gemma = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/siglip2/siglip2-gopt-tiny/tokenizer.model"),
    )
    .expect("golden tokenizer");
    let word = [gemma.as_slice(), &[0x12u8, 0x02, 0x18, 0x03][..]].concat();
    assert!(matches!(
        prepare_err(siglip, &with_tokenizer(dir.path(), Layout::Hf, &word)),
        Error::TokenizerModelType { model_type: 3, .. }
    ));
    let prefix = [gemma.as_slice(), &[0x1au8, 0x02, 0x18, 0x01][..]].concat();
    assert!(matches!(
        prepare_err(siglip, &with_tokenizer(dir.path(), Layout::Hf, &prefix)),
        Error::TokenizerNormalizer {
            setting: "normalizer_spec.add_dummy_prefix true",
            ..
        }
    ));
    // 300 pieces for a text tower of 100 token embeddings, either kind.
    assert!(matches!(
        prepare_err(siglip, &with_tokenizer(dir.path(), Layout::Hf, &gemma)),
        Error::TokenizerVocab {
            pieces: 300,
            vocab: 100,
            ..
        }
    ));
    // 101 pieces for a text tower of 100 token embeddings.
    let names: Vec<String> = (0..98).map(|i| format!("p{i}")).collect();
    let mut pieces = vec![("<pad>", 3), ("</s>", 3), ("<unk>", 2)];
    pieces.extend(names.iter().map(|n| (n.as_str(), 1)));
    assert!(matches!(
        prepare_err(
            siglip,
            &with_tokenizer(dir.path(), Layout::Hf, &spiece_model(&pieces))
        ),
        Error::TokenizerVocab {
            pieces: 101,
            vocab: 100,
            ..
        }
    ));
    // A file past the size limit is refused before it is read (a sparse file: nothing is allocated).
    let big = with_tokenizer(dir.path(), Layout::Hf, &ok);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(big.tokenizer.as_ref().expect("path"))
        .expect("open");
    f.set_len(vitconv_convert::tokenizer::MAX_TOKENIZER_BYTES + 1)
        .expect("extend");
    assert!(matches!(
        prepare_err(siglip, &big),
        Error::TokenizerTooLarge { .. }
    ));
}

#[test]
fn cancelled() {
    // A conversion whose cancel flag is set (as the interrupt handler sets it) stops and leaves nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = Options::new(Layout::Hf);
    o.cancel = Some(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
        true,
    )));
    let file = open("vit-token");
    let conv = prepare(&file, &o).expect("prepared");
    let out = dir.path().join("nested/hf");
    let e = write(&file, &conv, &o, &out, &mut |_, _| {}).expect_err("cancelled");
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert!(
        std::fs::read_dir(dir.path()).expect("dir").next().is_none(),
        "the directories this run created and every temporary are gone"
    );
}

const NAFLEX: &str = "siglip2/siglip2-naflex-tiny";

#[test]
fn linear_patch_rows() {
    let k = "params/img/embedding/kernel";
    let e = read_err(NAFLEX, |t| reshape(t, k, &[190, 64]));
    assert!(
        matches!(&e, Error::LinearPatchRows { name, found } if name == k && found == &[190, 64]),
        "{e}"
    );
}

#[test]
fn pos_grid_not_square() {
    let pe = "params/img/pos_embedding";
    let e = read_err(NAFLEX, |t| reshape(t, pe, &[4, 5, 64]));
    assert!(
        matches!(&e, Error::PosGridNotSquare { name, hidden: 64, found } if name == pe && found == &[4, 5, 64]),
        "{e}"
    );
}

#[test]
fn naflex_image_size() {
    let mut opts = Options::new(Layout::Hf);
    opts.image_size = Some(64);
    let e = prepare_err(NAFLEX, &opts);
    assert!(
        matches!(
            e,
            Error::NaflexImageSize {
                size: 64,
                grid: (4, 4)
            }
        ),
        "{e}"
    );
}

#[test]
fn input_norm_naflex() {
    let mut opts = Options::new(Layout::Timm);
    opts.tower = TowerChoice::Image;
    opts.input_norm = Some(InputNorm::Imagenet);
    let e = prepare_err(NAFLEX, &opts);
    assert!(
        matches!(e, Error::InputNormNaflex { norm: "imagenet" }),
        "{e}"
    );
}

#[test]
fn refused_naflex_tower() {
    for (layout, tower) in [
        (Layout::Clip, TowerChoice::Image),
        (Layout::OpenClip, TowerChoice::All),
        (Layout::OpenClip, TowerChoice::Image),
    ] {
        let mut opts = Options::new(layout);
        opts.tower = tower;
        opts.input_norm = Some(InputNorm::Unit);
        let e = prepare_err(NAFLEX, &opts);
        assert!(
            matches!(
                e,
                Error::Refused {
                    what: Part::NaflexTower {
                        patch: 8,
                        grid: (4, 4)
                    },
                    ..
                }
            ),
            "{layout:?} {tower:?}: {e}"
        );
    }
}
