//! Checkpoint containers through the binary: `inspect` and `npz-to-pt` take a big_vision `.bv` workdir (or its
//! `checkpoint.bv` prefix), an Orbax step or its parent, and a flax msgpack file as they take an `.npz`; the
//! conversion equals the `.npz` conversion; damaged and hostile checkpoints are refused on one line naming
//! the file and the array.

use std::path::Path;

use vitconv_tensors::TensorFile;

use crate::common::{assert_bad_input, fixture, npz_to_pt, scratch, stdout, vitconv};

/// Every tensor of a written file, in order.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let f = TensorFile::open(path).expect("output opens");
    f.tensors()
        .iter()
        .map(|t| (t.name.clone(), f.read(&t.name).expect("bytes")))
        .collect()
}

/// Copies a fixture folder into `dir` (writable), returning the copy's path.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

#[test]
fn inspect_names_the_container_step_and_family() {
    for (entry, kind, family) in [
        (
            "containers/bv-vit-map-scan/workdir",
            "big_vision .bv",
            "big_vision |",
        ),
        (
            "containers/bv-siglip-tiny-sharded/workdir/checkpoint.bv",
            "step 000000250",
            "siglip |",
        ),
        (
            "containers/orbax-vit-token/workdir",
            "the newest complete of 1 steps",
            "vit_jax |",
        ),
        (
            "containers/orbax-bv-v1-zarr3/ckpt",
            "OCDBT, zarr v3",
            "big_vision |",
        ),
        (
            "containers/orbax-bv-noocdbt/ckpt",
            "Orbax (zarr v2)",
            "big_vision |",
        ),
    ] {
        let o = vitconv(["inspect".as_ref(), fixture(entry).as_os_str()]);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{entry}: {out}");
        assert!(
            out.contains("checkpoint: ") && out.contains(kind),
            "{entry}: {out}"
        );
        assert!(out.contains(family), "{entry}: {out}");
    }
    let o = vitconv([
        "inspect".as_ref(),
        fixture("containers/msgpack-vit-token/checkpoint_100").as_os_str(),
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("(msgpack, 81 tensors)") && out.contains("step = int 100"),
        "{out}"
    );
}

#[test]
fn containers_convert_to_the_npz_conversion_bytes() {
    let dir = scratch();
    for (entry, npz) in [
        (
            "containers/orbax-vit-token/workdir",
            "vit-token/checkpoint.npz",
        ),
        (
            "containers/msgpack-vit-token/checkpoint_100",
            "vit-token/checkpoint.npz",
        ),
        (
            "containers/bv-vit-map-scan/workdir/checkpoint.bv",
            "big_vision/bv-vit-map-scan/checkpoint.npz",
        ),
        (
            "containers/orbax-bv-std/ckpt",
            "big_vision/bv-vit-map-scan/checkpoint.npz",
        ),
    ] {
        let want = dir.path().join("want.safetensors");
        let got = dir.path().join("got.safetensors");
        for (src, out) in [(fixture(npz), &want), (fixture(entry), &got)] {
            let o = npz_to_pt(&src, out, "timm", &["--drop-head", "--force"]);
            assert_eq!(
                o.status.code(),
                Some(0),
                "{entry}: {}",
                crate::common::stderr(&o)
            );
        }
        assert!(
            tensors(&want) == tensors(&got),
            "{entry}: differs from {npz}"
        );
    }
}

#[test]
fn damaged_and_hostile_checkpoints_are_refused_by_name() {
    let dir = scratch();
    let case = dir.path().join("bv");
    copy_tree(&fixture("containers/bv-vit-map-scan/workdir"), &case);
    let step = case.join("checkpoint.bv-000000100");
    let kernel = step.join("params~embedding~kernel");
    let convert = |src: &Path| {
        npz_to_pt(
            src,
            &dir.path().join("out.safetensors"),
            "timm",
            &["--drop-head"],
        )
    };

    // A chunk cut short decodes to fewer bytes than its chunk shape needs.
    let chunk = kernel.join("0.0.0.0");
    let good = std::fs::read(&chunk).expect("chunk");
    std::fs::write(&chunk, &good[..good.len() / 2]).expect("write");
    assert_bad_input(&convert(&case), "params/embedding/kernel");
    assert!(!dir.path().join("out.safetensors").exists());

    // A chunk that is not zstd data at all.
    std::fs::write(&chunk, vec![0x55u8; good.len()]).expect("write");
    assert_bad_input(&convert(&case), "not valid zstd data");

    // A chunk replaced by a link out of the checkpoint folder.
    std::fs::remove_file(&chunk).expect("rm");
    let outside = dir.path().join("outside.bin");
    std::fs::write(&outside, &good).expect("write");
    std::os::unix::fs::symlink(&outside, &chunk).expect("symlink");
    assert_bad_input(&convert(&case), "outside the checkpoint folder");

    // An array folder replaced by a link to a copy outside the checkpoint.
    std::fs::remove_file(&chunk).expect("rm");
    std::fs::write(&chunk, &good).expect("restore");
    let moved = dir.path().join("moved-kernel");
    std::fs::rename(&kernel, &moved).expect("move");
    std::os::unix::fs::symlink(&moved, &kernel).expect("symlink");
    assert_bad_input(&convert(&case), "outside the checkpoint folder");
    std::fs::remove_file(&kernel).expect("rm link");
    std::fs::rename(&moved, &kernel).expect("move back");

    // A chunk that is a FIFO is refused by kind, never opened for a blocking read.
    std::fs::remove_file(&chunk).expect("rm");
    let status = std::process::Command::new("mkfifo")
        .arg(&chunk)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    assert_bad_input(&convert(&case), "named pipe");
    std::fs::remove_file(&chunk).expect("rm");
    std::fs::write(&chunk, &good).expect("restore");

    // A `.zarray` that claims a huge array whose chunks are missing: refused before anything is allocated.
    let zarray = kernel.join(".zarray");
    let text = std::fs::read_to_string(&zarray).expect("zarray");
    let lying = text
        .replacen("\"shape\":[", "\"shape\":[200000,", 1)
        .replacen("\"chunks\":[", "\"chunks\":[1,", 1);
    assert_ne!(
        lying, text,
        "the fixture's .zarray spells shape and chunks as expected"
    );
    std::fs::write(&zarray, lying).expect("write");
    assert_bad_input(&convert(&case), "chunks are missing");
    std::fs::write(&zarray, &text).expect("restore");

    // An unknown compressor is named.
    std::fs::write(&zarray, text.replacen("\"zstd\"", "\"blosc\"", 1)).expect("write");
    assert_bad_input(&convert(&case), "compressor");
    std::fs::write(&zarray, &text).expect("restore");

    // `-LAST` naming a folder that does not exist.
    std::fs::write(case.join("checkpoint.bv-LAST"), "000000999").expect("write");
    assert_bad_input(&convert(&case), "checkpoint.bv-000000999");
}

/// Runs batch mode with `--json` and returns the exit code and source -> status.
fn batch(src: &Path, out: &Path, extra: &[&str]) -> (Option<i32>, Vec<(String, String)>) {
    let mut args: Vec<std::ffi::OsString> = vec![
        "npz-to-pt".into(),
        src.into(),
        out.into(),
        "--layout".into(),
        "timm".into(),
        "--drop-head".into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(Into::into));
    let o = vitconv(&args);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&o), crate::common::stderr(&o)));
    let files = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["source"].as_str().expect("source").to_string(),
                f["status"].as_str().expect("status").to_string(),
            )
        })
        .collect();
    (o.status.code(), files)
}

#[test]
fn batch_mode_finds_every_kind_of_checkpoint_and_resumes() {
    let dir = scratch();
    let src = dir.path().join("src");
    copy_tree(
        &fixture("containers/bv-vit-map-scan/workdir"),
        &src.join("bv/workdir"),
    );
    let step = fixture("containers/orbax-vit-token/workdir/checkpoint_100");
    copy_tree(&step, &src.join("orbax/run/checkpoint_100"));
    copy_tree(&step, &src.join("orbax/run/checkpoint_200"));
    // A step still being written: no commit marker, and a temporary name.
    copy_tree(
        &step,
        &src.join("orbax/run/checkpoint_300.orbax-checkpoint-tmp-1"),
    );
    std::fs::remove_file(
        src.join("orbax/run/checkpoint_300.orbax-checkpoint-tmp-1/commit_success.txt"),
    )
    .expect("rm");
    std::fs::remove_file(
        src.join("orbax/run/checkpoint_300.orbax-checkpoint-tmp-1/_CHECKPOINT_METADATA"),
    )
    .expect("rm");
    std::fs::create_dir_all(src.join("mp")).expect("mkdir");
    std::fs::copy(
        fixture("containers/msgpack-vit-token/checkpoint_100"),
        src.join("mp/checkpoint_100"),
    )
    .expect("copy");
    std::fs::copy(
        fixture("containers/msgpack-bv-hfstyle/flax_model.msgpack"),
        src.join("mp/flax_model.msgpack"),
    )
    .expect("copy");
    std::fs::copy(fixture("vit-token/checkpoint.npz"), src.join("mp/a.npz")).expect("copy");
    // Named like a checkpoint, but text: not a source.
    std::fs::create_dir_all(src.join("notes")).expect("mkdir");
    std::fs::write(src.join("notes/checkpoint_5"), "not a checkpoint").expect("write");

    let out = dir.path().join("out");
    let (code, files) = batch(&src, &out, &[]);
    let want: Vec<(String, String)> = [
        "bv/workdir",
        "mp/a.npz",
        "mp/checkpoint_100",
        "mp/flax_model.msgpack",
        "orbax/run/checkpoint_100",
        "orbax/run/checkpoint_200",
    ]
    .iter()
    .map(|s| (s.to_string(), "converted".to_string()))
    .collect();
    assert_eq!(files, want);
    assert_eq!(code, Some(0));
    // Each output equals the single conversion of its source.
    for (source, output) in [
        ("bv/workdir", "bv/workdir.safetensors"),
        ("mp/checkpoint_100", "mp/checkpoint_100.safetensors"),
        ("mp/flax_model.msgpack", "mp/flax_model.safetensors"),
        (
            "orbax/run/checkpoint_200",
            "orbax/run/checkpoint_200.safetensors",
        ),
    ] {
        let single = dir.path().join("single.safetensors");
        let o = npz_to_pt(
            &src.join(source),
            &single,
            "timm",
            &["--drop-head", "--force"],
        );
        assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
        assert!(tensors(&single) == tensors(&out.join(output)), "{source}");
    }

    // A second run finds everything up to date.
    let (code, files) = batch(&src, &out, &[]);
    assert_eq!(code, Some(0));
    assert!(files.iter().all(|(_, s)| s == "skipped"), "{files:?}");

    // A new step in a workdir (big_vision rewrites -LAST) counts as a change.
    let bv = src.join("bv/workdir");
    copy_tree(
        &bv.join("checkpoint.bv-000000100"),
        &bv.join("checkpoint.bv-000000200"),
    );
    std::fs::write(bv.join("checkpoint.bv-LAST"), "000000200").expect("write");
    let (_, files) = batch(&src, &out, &[]);
    let bv_status = files
        .iter()
        .find(|(s, _)| s == "bv/workdir")
        .map(|(_, st)| st.as_str());
    assert_eq!(bv_status, Some("converted"), "{files:?}");

    // `--latest`: one step of each folder of steps, the newest complete one.
    let (code, files) = batch(&src, &dir.path().join("latest"), &["--latest"]);
    assert_eq!(code, Some(0));
    let orbax: Vec<&str> = files
        .iter()
        .map(|(s, _)| s.as_str())
        .filter(|s| s.starts_with("orbax/"))
        .collect();
    assert_eq!(orbax, ["orbax/run/checkpoint_200"]);
}

#[test]
fn more_chunk_files_than_open_file_descriptors_convert() {
    // The sharded `.bv` has 82 chunk files; with 40 descriptors the converter must not hold them open.
    let dir = scratch();
    let src = fixture("containers/bv-siglip-tiny-sharded/workdir");
    let out = dir.path().join("oc");
    let bin = env!("CARGO_BIN_EXE_vitconv");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 40 && exec \"$0\" npz-to-pt \"$1\" \"$2\" --layout open_clip --quiet")
        .arg(bin)
        .arg(&src)
        .arg(&out)
        .output()
        .expect("sh runs");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.join("open_clip_model.safetensors").exists());
}
