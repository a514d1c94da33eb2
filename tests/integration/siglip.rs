//! Tests of `vitconv npz-to-pt` and `inspect` on big_vision two-tower (SigLIP) checkpoints: the folders each
//! layout writes, `--tower image`, refusals that name the way out and leave nothing behind, and the summary
//! line. The loaders themselves are run on these folders by tests/python/test_siglip.py.

use serde_json::Value;
use vitconv_tensors::TensorFile;

use crate::common::{assert_bad_input, fixture, listing, npz_to_pt, scratch, stdout, vitconv};

const TINY: &str = "big_vision/siglip-tiny/checkpoint.npz";
const NOHEAD: &str = "big_vision/siglip-nohead/checkpoint.npz";

fn json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("readable")).expect("JSON")
}

#[test]
fn hf_writes_a_siglip_model_folder() {
    let dir = scratch();
    let out = dir.path().join("hf");
    let o = npz_to_pt(&fixture(NOHEAD), &out, "hf", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    assert_eq!(
        listing(&out),
        [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json"
        ]
    );
    let cfg = json(&out.join("config.json"));
    assert_eq!(cfg["architectures"][0], "SiglipModel");
    assert_eq!(cfg["text_config"]["max_position_embeddings"], 8);
    assert_eq!(cfg["vision_config"]["vision_use_head"], true);
    let f = TensorFile::open(out.join("model.safetensors")).expect("weights");
    let shape = |n: &str| {
        f.tensors()
            .iter()
            .find(|t| t.name == n)
            .map(|t| t.shape.clone())
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(shape("logit_scale"), [1]);
    assert_eq!(
        shape("text_model.embeddings.position_embedding.weight"),
        [8, 64]
    );
    assert_eq!(shape("text_model.head.weight"), [64, 64]);
    assert_eq!(
        shape("vision_model.head.attention.in_proj_weight"),
        [192, 64]
    );
    let t = TensorFile::open(fixture(NOHEAD)).expect("source");
    assert_eq!(
        f.read_f32("logit_scale").expect("t"),
        t.read_f32("params/t").expect("t")
    );
    assert_eq!(
        f.read_f32("logit_bias").expect("b"),
        t.read_f32("params/b").expect("b")
    );
}

#[test]
fn open_clip_writes_a_folder_with_a_timm_image_tower_named_by_its_absolute_path() {
    let dir = scratch();
    let out = dir.path().join("oc");
    let o = npz_to_pt(&fixture(TINY), &out, "open_clip", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    assert_eq!(
        listing(&out),
        [
            "image_tower",
            "open_clip_config.json",
            "open_clip_model.safetensors"
        ]
    );
    let cfg = json(&out.join("open_clip_config.json"));
    let name = cfg["model_cfg"]["vision_cfg"]["timm_model_name"]
        .as_str()
        .expect("name")
        .to_string();
    let canonical = std::fs::canonicalize(&out).expect("absolute");
    assert_eq!(
        name,
        format!("local-dir:{}/image_tower", canonical.display())
    );
    let tower = json(&out.join("image_tower/config.json"));
    assert_eq!(tower["model_args"]["act_layer"], "gelu_tanh");
    assert_eq!(tower["model_args"]["global_pool"], "map");
    // The report says how to move the folder.
    assert!(
        stdout(&o).contains("after moving OUT run"),
        "{}",
        stdout(&o)
    );
    let f = TensorFile::open(out.join("open_clip_model.safetensors")).expect("weights");
    let scale = f
        .tensors()
        .iter()
        .find(|t| t.name == "logit_scale")
        .expect("logit_scale");
    assert!(scale.shape.is_empty(), "0-dim: {:?}", scale.shape);
    assert!(f
        .tensors()
        .iter()
        .any(|t| t.name == "visual.trunk.head.weight"));
    assert!(f
        .tensors()
        .iter()
        .any(|t| t.name == "text.text_projection.bias"));
}

#[test]
fn one_tower_layouts_refuse_and_offer_tower_image() {
    let dir = scratch();
    for layout in ["timm", "clip"] {
        let out = dir.path().join(format!("{layout}.safetensors"));
        let o = npz_to_pt(&fixture(TINY), &out, layout, &[]);
        assert_bad_input(&o, "--tower image");
        assert!(!out.exists());
    }
    // transformers has no image projection: the image head is refused, naming open_clip.
    let out = dir.path().join("hf");
    let o = npz_to_pt(&fixture(TINY), &out, "hf", &[]);
    assert_bad_input(&o, "--layout open_clip");
    assert!(!out.exists());
    // --tower image on a one-tower model.
    let o = npz_to_pt(
        &fixture("vit-token/checkpoint.npz"),
        &dir.path().join("x.pt"),
        "timm",
        &["--tower", "image"],
    );
    assert_bad_input(&o, "only one tower");
}

#[test]
fn tower_image_writes_the_image_tower_and_says_what_it_left_out() {
    let dir = scratch();
    let out = dir.path().join("img.safetensors");
    let o = npz_to_pt(&fixture(TINY), &out, "timm", &["--tower", "image"]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    assert!(
        stdout(&o).contains("left out (--tower image)"),
        "{}",
        stdout(&o)
    );
    let f = TensorFile::open(&out).expect("weights");
    assert!(f.tensors().iter().all(|t| !t.name.starts_with("text")));
    assert!(f.tensors().iter().any(|t| t.name == "attn_pool.latent"));
    assert!(f.tensors().iter().any(|t| t.name == "head.weight"));
}

#[test]
fn inspect_names_both_towers_and_the_logit_scalars() {
    let o = vitconv(["inspect".as_ref(), fixture(TINY).as_os_str()]);
    let s = stdout(&o);
    assert!(
        s.contains("SigLIP: image ViT/8 32 px (4x4, MAP head), text 2 layers width 64, vocab 100, context 8, embedding 64, logit scale exp(t) = "),
        "{s}"
    );
    assert!(s.contains("bias b = 0.135075"), "{s}");
}

#[test]
fn batch_mode_writes_a_two_tower_open_clip_folder_per_file() {
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    std::fs::copy(fixture(TINY), src.join("a/s.npz")).expect("copy");
    std::fs::copy(fixture("vit-token/checkpoint.npz"), src.join("v.npz")).expect("copy");
    let out = dir.path().join("out");
    let o = npz_to_pt(&src, &out, "open_clip", &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    let summary: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let outputs: Vec<&str> = summary["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["output"].as_str())
        .collect();
    assert!(
        outputs.contains(&"a/s") && outputs.contains(&"v.safetensors"),
        "{outputs:?}"
    );
    assert_eq!(
        listing(&out.join("a/s")),
        [
            "image_tower",
            "open_clip_config.json",
            "open_clip_model.safetensors"
        ]
    );
}

#[test]
fn inspect_recognises_the_converted_two_tower_files() {
    let dir = scratch();
    let src = fixture(NOHEAD);
    let want = {
        let o = vitconv(["inspect".as_ref(), src.as_os_str()]);
        let s = stdout(&o);
        let line = s
            .lines()
            .find(|l| l.contains("SigLIP: "))
            .expect("source summary")
            .to_string();
        line.split_once("SigLIP: ").expect("summary").1.to_string()
    };
    for (layout, file, family) in [
        ("hf", "model.safetensors", "transformers"),
        ("open_clip", "open_clip_model.safetensors", "open_clip"),
    ] {
        let out = dir.path().join(layout);
        let o = npz_to_pt(&src, &out, layout, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
        let o = vitconv(["inspect".as_ref(), out.join(file).as_os_str()]);
        let s = stdout(&o);
        // The same sizes, embedding width and scalars as the source's own summary.
        assert!(
            s.contains(&format!("{family} | SigLIP: {want}")),
            "{layout}: {s}\nwant: {want}"
        );
    }
}

#[test]
fn a_fifo_or_device_as_the_tokenizer_is_refused_without_blocking() {
    let dir = scratch();
    let fifo = dir.path().join("spiece.model");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let src = fixture("big_vision/siglip-tiny/checkpoint.npz");
    for (tokenizer, kind) in [
        (fifo.clone(), "named pipe"),
        (std::path::PathBuf::from("/dev/zero"), "character device"),
    ] {
        let out = dir.path().join("out");
        let args: Vec<std::ffi::OsString> = vec![
            "npz-to-pt".into(),
            src.clone().into(),
            out.clone().into(),
            "--layout".into(),
            "hf".into(),
            "--drop-head".into(),
            "--tokenizer".into(),
            tokenizer.into(),
        ];
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(vitconv(&args));
        });
        let o = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a FIFO tokenizer must not block the run");
        assert_bad_input(&o, kind);
        assert!(!out.exists());
    }
}

#[test]
fn the_source_line_names_both_towers_not_classes() {
    let dir = scratch();
    let out = dir.path().join("oc");
    let o = npz_to_pt(&fixture(TINY), &out, "open_clip", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    let first = stdout(&o).lines().next().unwrap_or_default().to_string();
    assert!(first.contains("SigLIP: image ViT/8 32 px"), "{first}");
    assert!(!first.contains("classes"), "{first}");
}

// ---------------------------------------------------------------------------------------
// SigLIP 2 (fixtures/siglip2/siglip2-gopt-tiny): the Gemma-kind tokenizer.

const GOPT: &str = "siglip2/siglip2-gopt-tiny/checkpoint.npz";
const GEMMA_TOKENIZER: &str = "siglip2/siglip2-gopt-tiny/tokenizer.model";

#[test]
fn a_gemma_tokenizer_is_written_as_a_fast_tokenizer_and_inspect_names_its_kind() {
    let dir = scratch();
    for layout in ["hf", "open_clip"] {
        let out = dir.path().join(layout);
        let o = vitconv([
            "npz-to-pt".as_ref(),
            fixture(GOPT).as_os_str(),
            out.as_os_str(),
            "--layout".as_ref(),
            layout.as_ref(),
            "--tokenizer".as_ref(),
            fixture(GEMMA_TOKENIZER).as_os_str(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
        assert!(stdout(&o).contains("Gemma kind"), "{}", stdout(&o));
        let files = listing(&out);
        for f in [
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            assert!(files.iter().any(|x| x == f), "{layout}: {f} in {files:?}");
        }
        assert!(!files.iter().any(|x| x == "spiece.model"), "{files:?}");
        assert_eq!(
            std::fs::read(out.join("tokenizer.model")).expect("copied"),
            std::fs::read(fixture(GEMMA_TOKENIZER)).expect("source")
        );
        let tok = json(&out.join("tokenizer.json"));
        assert_eq!(tok["model"]["type"], "Unigram");
        assert_eq!(tok["model"]["vocab"].as_array().map(Vec::len), Some(300));
        let cfg = json(&out.join("tokenizer_config.json"));
        assert_eq!(
            (
                &cfg["add_bos_token"],
                &cfg["add_eos_token"],
                &cfg["model_max_length"]
            ),
            (&Value::Bool(false), &Value::Bool(true), &Value::from(16))
        );
        if layout == "hf" {
            let c = json(&out.join("config.json"));
            let t = &c["text_config"];
            assert_eq!(
                (&t["pad_token_id"], &t["eos_token_id"], &t["bos_token_id"]),
                (&Value::from(0), &Value::from(1), &Value::from(2))
            );
            assert_eq!(t["projection_size"], 96);
        } else {
            let c = json(&out.join("open_clip_config.json"));
            assert_eq!(
                c["model_cfg"]["text_cfg"]["tokenizer_kwargs"]["clean"],
                "whitespace"
            );
        }
        let o = vitconv(["inspect".as_ref(), out.as_os_str()]);
        let s = stdout(&o);
        assert!(
            s.contains("tokenizer: Gemma (tokenizer.json"),
            "{layout}: {s}"
        );
    }
    // The SigLIP kind is named too.
    let out = dir.path().join("siglip1");
    let spiece = dir.path().join("spiece.model");
    std::fs::write(
        &spiece,
        crate::common::spiece_model(&[("<pad>", 3), ("</s>", 3), ("<unk>", 2), ("a", 1)]),
    )
    .expect("write");
    let o = vitconv([
        "npz-to-pt".as_ref(),
        fixture(NOHEAD).as_os_str(),
        out.as_os_str(),
        "--layout".as_ref(),
        "hf".as_ref(),
        "--tokenizer".as_ref(),
        spiece.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    let o = vitconv(["inspect".as_ref(), out.as_os_str()]);
    assert!(
        stdout(&o).contains("tokenizer: SigLIP (spiece.model"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_tokenizer_of_neither_kind_or_too_many_pieces_is_refused() {
    let dir = scratch();
    let neither = dir.path().join("neither.model");
    // `<s>` where Gemma has `<pad>`, and no `</s>`.
    std::fs::write(
        &neither,
        crate::common::spiece_model(&[("<s>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2)]),
    )
    .expect("write");
    // The Gemma golden tokenizer's 300 pieces for SigLIP 1's 100-row text tower.
    for (src, tokenizer, needles) in [
        (
            GOPT,
            neither,
            &[
                "SigLIP's needs </s>",
                "<pad> <eos> <bos> <unk> as ids 0 to 3",
            ][..],
        ),
        (
            NOHEAD,
            fixture(GEMMA_TOKENIZER),
            &["300 pieces", "100 token ids"][..],
        ),
    ] {
        let out = dir.path().join("out");
        let o = vitconv([
            "npz-to-pt".as_ref(),
            fixture(src).as_os_str(),
            out.as_os_str(),
            "--layout".as_ref(),
            "hf".as_ref(),
            "--tokenizer".as_ref(),
            tokenizer.as_os_str(),
        ]);
        for needle in needles {
            assert_bad_input(&o, needle);
        }
        assert!(!out.exists());
    }
}

#[test]
fn force_replaces_one_tokenizer_kind_with_the_other() {
    let dir = scratch();
    let out = dir.path().join("oc");
    let spiece = dir.path().join("spiece.model");
    let pieces = [("<pad>", 3), ("</s>", 3), ("<unk>", 2), ("a", 1)];
    std::fs::write(&spiece, crate::common::spiece_model(&pieces)).expect("write");
    for tokenizer in [spiece.clone(), fixture(GEMMA_TOKENIZER)] {
        let o = vitconv([
            "npz-to-pt".as_ref(),
            fixture(GOPT).as_os_str(),
            out.as_os_str(),
            "--layout".as_ref(),
            "open_clip".as_ref(),
            "--force".as_ref(),
            "--tokenizer".as_ref(),
            tokenizer.as_os_str(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    }
    let files = listing(&out);
    assert!(files.iter().any(|f| f == "tokenizer.json"), "{files:?}");
    assert!(!files.iter().any(|f| f == "spiece.model"), "{files:?}");
}
