//! Tests of `vitconv npz-to-pt SRC_DIR OUT_DIR` (batch mode): outputs at the same relative paths and
//! byte-identical to single conversions, resuming (skip, a touched source, a changed option, `--force`), a broken
//! or refused file among good ones, the JSON summary, usage errors, and an interrupt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use vitconv_tensors::TensorFile;

use crate::common::{assert_bad_input, fixture, scratch, stderr, stdout, vitconv};

/// The manifest batch mode keeps in the output directory.
const MANIFEST: &str = ".vitconv-batch.jsonl";

/// The source tree most tests convert: relative path -> fixture. Nested directories, a deflated and a bfloat16
/// file, an upper-case extension, and a file that is not an `.npz` (ignored).
const TREE: [(&str, &str); 5] = [
    ("top.npz", "vit-token/checkpoint.npz"),
    ("sweep/a/token.npz", "vit-token-variants/compressed.npz"),
    ("sweep/a/b/mlp4.npz", "vit-mlp4/checkpoint.npz"),
    ("sweep/bf16.npz", "vit-token-variants/bfloat16.npz"),
    (
        "sweep/prefix.NPZ",
        "vit-token-variants/opt-target-prefix.npz",
    ),
];

/// Copies `files` (relative path -> fixture) under `dir`, plus a text file that batch mode must ignore.
fn make_tree(dir: &Path, files: &[(&str, &str)]) {
    for (rel, fix) in files {
        let dst = dir.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(fixture(fix), &dst).unwrap();
    }
    std::fs::create_dir_all(dir.join("sweep")).unwrap();
    std::fs::write(dir.join("sweep/readme.txt"), "not a checkpoint").unwrap();
}

/// Runs `npz-to-pt SRC OUT --layout LAYOUT EXTRA...`.
fn batch(src: &Path, out: &Path, layout: &str, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec![
        "npz-to-pt".into(),
        src.display().to_string(),
        out.display().to_string(),
        "--layout".into(),
        layout.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    vitconv(&args)
}

/// Runs batch mode with `--json`, checks that the summary parses and that its counts agree with its file list,
/// and returns it.
fn batch_json(src: &Path, out: &Path, layout: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let mut extra = extra.to_vec();
    extra.push("--json");
    let o = batch(src, out, layout, &extra);
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    let v: Value = serde_json::from_str(&stdout(&o))
        .unwrap_or_else(|e| panic!("--json output does not parse: {e}: {}", stdout(&o)));
    let files = v["files"].as_array().expect("files is an array");
    assert_eq!(v["counts"]["total"], files.len());
    let mut sum = 0;
    for s in ["converted", "skipped", "refused", "failed"] {
        let n = files.iter().filter(|f| f["status"] == s).count();
        assert_eq!(v["counts"][s], n, "count of {s} in {v}");
        sum += n;
    }
    assert_eq!(sum, files.len(), "a file with an unknown status: {v}");
    (o.status.code(), v)
}

/// Source -> status, from a JSON summary.
fn statuses(v: &Value) -> BTreeMap<String, String> {
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["source"].as_str().unwrap().to_string(),
                f["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every source of `TREE` with the same status.
fn all(status: &str) -> BTreeMap<String, String> {
    TREE.iter()
        .map(|(rel, _)| (rel.to_string(), status.to_string()))
        .collect()
}

/// The reason a JSON summary gives for `source`.
fn reason<'a>(v: &'a Value, source: &str) -> &'a str {
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["source"] == source)
        .and_then(|f| f["reason"].as_str())
        .unwrap_or_else(|| panic!("no reason for {source} in {v}"))
}

/// Every file under `dir`, relative, sorted (hidden ones and temporaries included, so leftovers show).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// The output path batch mode gives `rel` (relative to the output directory).
fn out_rel(rel: &str, ext: Option<&str>) -> PathBuf {
    match ext {
        Some(ext) => Path::new(rel).with_extension(ext),
        None => Path::new(rel).with_extension(""),
    }
}

/// Converts one file the single-file way, into a path with the same name as the batch output, so the outputs
/// can be compared byte for byte.
fn single(src: &Path, out: &Path, layout: &str, extra: &[&str]) {
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut args: Vec<String> = vec![
        "npz-to-pt".into(),
        src.display().to_string(),
        out.display().to_string(),
        "--layout".into(),
        layout.into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = vitconv(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One batch run of the byte-identity test: layout, `--ext` given, the extension written (none for a directory),
/// and the options every file gets.
struct Run {
    layout: &'static str,
    ext_flag: Option<&'static str>,
    ext: Option<&'static str>,
    opts: &'static [&'static str],
}

#[test]
fn a_tree_converts_to_the_same_relative_paths_byte_identical_to_single_conversions() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_tree(&src, &TREE);
    let runs = [
        Run {
            layout: "timm",
            ext_flag: None,
            ext: Some("safetensors"),
            opts: &[],
        },
        Run {
            layout: "timm",
            ext_flag: Some("pt"),
            ext: Some("pt"),
            opts: &["--dtype", "bf16", "--drop-head"],
        },
        Run {
            layout: "hf",
            ext_flag: None,
            ext: None,
            opts: &[],
        },
        Run {
            layout: "open_clip",
            ext_flag: Some("safetensors"),
            ext: Some("safetensors"),
            opts: &["--proj", "none"],
        },
    ];
    for (k, run) in runs.iter().enumerate() {
        let Run {
            layout,
            ext_flag,
            ext,
            opts,
        } = run;
        let out = dir.path().join(format!("out{k}"));
        let mut extra = opts.to_vec();
        if let Some(e) = ext_flag {
            extra.extend(["--ext", e]);
        }
        let (code, v) = batch_json(&src, &out, layout, &extra);
        assert_eq!(code, Some(0), "{layout}: {v}");
        assert_eq!(statuses(&v), all("converted"), "{layout}");

        // Exactly the expected files: no temporary, nothing for the text file, the manifest.
        let mut want = vec![MANIFEST.to_string()];
        for (rel, _) in TREE {
            let o = out_rel(rel, *ext);
            match *layout {
                "hf" => want.extend(
                    [
                        "config.json",
                        "model.safetensors",
                        "preprocessor_config.json",
                    ]
                    .map(|f| o.join(f).to_string_lossy().into_owned()),
                ),
                "open_clip" => {
                    want.push(o.to_string_lossy().into_owned());
                    let stem = o.file_stem().unwrap().to_string_lossy().into_owned();
                    want.push(
                        o.with_file_name(format!("{stem}.open_clip.json"))
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
                _ => want.push(o.to_string_lossy().into_owned()),
            }
        }
        want.sort();
        assert_eq!(tree(&out), want, "{layout}");

        // Each output is what a single conversion with the same options writes, byte for byte.
        let one = dir.path().join(format!("single{k}"));
        for (rel, _) in TREE {
            single(&src.join(rel), &one.join(out_rel(rel, *ext)), layout, opts);
        }
        for f in want.iter().filter(|f| f.as_str() != MANIFEST) {
            assert!(
                read(&out.join(f)) == read(&one.join(f)),
                "{layout}: {f} differs from the single conversion"
            );
        }
        if k == 0 {
            // The outputs are the same whatever the number of jobs.
            let out1 = dir.path().join("jobs1");
            let (code, _) = batch_json(&src, &out1, layout, &["--jobs", "1"]);
            assert_eq!(code, Some(0));
            assert_eq!(tree(&out1), want);
            for f in want.iter().filter(|f| f.as_str() != MANIFEST) {
                assert!(read(&out1.join(f)) == read(&out.join(f)), "--jobs 1: {f}");
            }
        }
    }
}

/// The modification time of `p`.
fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn a_second_run_skips_a_touched_source_is_redone_and_force_redoes_all() {
    let dir = scratch();
    let src = dir.path().join("src");
    let out = dir.path().join("out");
    make_tree(&src, &TREE);
    let (code, v) = batch_json(&src, &out, "timm", &[]);
    assert_eq!((code, statuses(&v)), (Some(0), all("converted")));
    let outputs: Vec<PathBuf> = TREE
        .iter()
        .map(|(rel, _)| out.join(out_rel(rel, Some("safetensors"))))
        .collect();
    let times: Vec<SystemTime> = outputs.iter().map(|p| mtime(p)).collect();

    // Nothing changed: everything is skipped and no output is rewritten.
    let (code, v) = batch_json(&src, &out, "timm", &[]);
    assert_eq!((code, statuses(&v)), (Some(0), all("skipped")));
    assert!(reason(&v, "top.npz").contains("up to date"), "{v}");
    assert_eq!(outputs.iter().map(|p| mtime(p)).collect::<Vec<_>>(), times);
    // The table says the same.
    let o = batch(&src, &out, "timm", &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("0 converted, 5 skipped, 0 refused, 0 failed"),
        "{}",
        stdout(&o)
    );

    // A source whose modification time changed (same bytes) is converted again; the others are not.
    let touched = src.join("sweep/a/token.npz");
    std::fs::File::options()
        .write(true)
        .open(&touched)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(86_400))
        .unwrap();
    let (code, v) = batch_json(&src, &out, "timm", &[]);
    let mut want = all("skipped");
    want.insert("sweep/a/token.npz".into(), "converted".into());
    assert_eq!((code, statuses(&v)), (Some(0), want));

    // An output removed since is written again.
    std::fs::remove_file(&outputs[0]).unwrap();
    let (code, v) = batch_json(&src, &out, "timm", &[]);
    let mut want = all("skipped");
    want.insert("top.npz".into(), "converted".into());
    assert_eq!((code, statuses(&v)), (Some(0), want));
    assert!(TensorFile::open(&outputs[0]).is_ok());

    // Different options redo everything, replacing the outputs this tool wrote (no --force needed).
    let (code, v) = batch_json(&src, &out, "timm", &["--dtype", "f16"]);
    assert_eq!((code, statuses(&v)), (Some(0), all("converted")));
    let (code, v) = batch_json(&src, &out, "timm", &["--dtype", "f16"]);
    assert_eq!((code, statuses(&v)), (Some(0), all("skipped")));

    // --force redoes everything.
    let (code, v) = batch_json(&src, &out, "timm", &["--dtype", "f16", "--force"]);
    assert_eq!((code, statuses(&v)), (Some(0), all("converted")));

    // The manifest holds one line per source, each of them parsing.
    let manifest = std::fs::read_to_string(out.join(MANIFEST)).unwrap();
    assert_eq!(manifest.lines().count(), TREE.len(), "{manifest}");
    for line in manifest.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["state"], "done", "{line}");
    }
}

#[test]
fn an_output_not_written_by_a_batch_run_is_replaced_only_with_force() {
    let dir = scratch();
    let src = dir.path().join("src");
    let out = dir.path().join("out");
    make_tree(&src, &TREE);
    std::fs::create_dir_all(&out).unwrap();
    let foreign = out.join("top.safetensors");
    std::fs::write(&foreign, b"someone else's file").unwrap();
    let (code, v) = batch_json(&src, &out, "timm", &[]);
    assert_eq!(code, Some(2));
    let mut want = all("converted");
    want.insert("top.npz".into(), "failed".into());
    assert_eq!(statuses(&v), want);
    assert!(reason(&v, "top.npz").contains("--force"), "{v}");
    assert_eq!(read(&foreign), b"someone else's file");

    let (code, v) = batch_json(&src, &out, "timm", &["--force"]);
    assert_eq!((code, statuses(&v)), (Some(0), all("converted")));
    assert!(TensorFile::open(&foreign).is_ok());
}

#[test]
fn broken_and_refused_files_are_reported_while_the_others_convert() {
    let dir = scratch();
    let src = dir.path().join("src");
    let good: [(&str, &str); 2] = [
        ("a/token.npz", "vit-token/checkpoint.npz"),
        ("a/b/mlp4.npz", "vit-mlp4/checkpoint.npz"),
    ];
    make_tree(&src, &good);
    // A download cut short: the zip directory is missing.
    std::fs::create_dir_all(src.join("broken")).unwrap();
    let whole = read(&fixture("vit-token/checkpoint.npz"));
    std::fs::write(src.join("broken/truncated.npz"), &whole[..whole.len() / 2]).unwrap();
    // A file that opens and is recognised, then fails while its tensors are read.
    let halfway =
        crate::hardening::source_breaking_halfway(dir.path(), crate::hardening::BROKEN_TENSOR);
    std::fs::rename(&halfway, src.join("broken/halfway.npz")).unwrap();
    // transformers has no class for a hybrid model.
    std::fs::copy(fixture("hybrid-root/checkpoint.npz"), src.join("a/gap.npz")).unwrap();

    let out = dir.path().join("out");
    let (code, v) = batch_json(&src, &out, "hf", &[]);
    assert_eq!(code, Some(2), "{v}");
    let want: BTreeMap<String, String> = [
        ("a/token.npz", "converted"),
        ("a/b/mlp4.npz", "converted"),
        ("a/gap.npz", "refused"),
        ("broken/truncated.npz", "failed"),
        ("broken/halfway.npz", "failed"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(statuses(&v), want);
    assert!(
        reason(&v, "a/gap.npz").contains("--layout hf cannot hold a hybrid"),
        "{v}"
    );
    assert!(reason(&v, "a/gap.npz").contains("gap.npz"), "{v}");
    assert!(
        reason(&v, "broken/truncated.npz").contains("truncated.npz"),
        "{v}"
    );
    assert!(
        reason(&v, "broken/halfway.npz").contains(crate::hardening::BROKEN_TENSOR),
        "{v}"
    );
    for f in v["files"].as_array().unwrap() {
        let r = f["reason"].as_str().unwrap_or_default();
        assert!(!r.contains('\n'), "a reason on more than one line: {r}");
    }
    // The good files are whole; the others left nothing, not even a directory or a temporary file.
    let mut want_tree = vec![MANIFEST.to_string()];
    for d in ["a/b/mlp4", "a/token"] {
        for f in [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
        ] {
            want_tree.push(format!("{d}/{f}"));
        }
        assert!(TensorFile::open(out.join(d).join("model.safetensors")).is_ok());
    }
    want_tree.sort();
    assert_eq!(tree(&out), want_tree);
    assert!(!out.join("broken").exists(), "an empty directory was left");

    // The table names each problem with its reason; stdout holds it, and the exit status is 2.
    let o = batch(&src, &out, "hf", &[]);
    assert_eq!(o.status.code(), Some(2));
    let text = stdout(&o);
    for needle in [
        "a/gap.npz",
        "refused",
        "cannot hold a hybrid",
        "broken/truncated.npz",
        "failed",
        "2 skipped, 1 refused, 2 failed",
    ] {
        assert!(text.contains(needle), "the table lacks {needle:?}: {text}");
    }
    // --quiet: nothing on stdout, one line per problem on stderr.
    let o = batch(&src, &out, "hf", &["--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 3, "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("vitconv: failed "))
            .count(),
        2,
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("vitconv: refused a/gap.npz: ")),
        "{err}"
    );

    // The same sources to timm, which holds a gap model: only the two broken files fail.
    let (code, v) = batch_json(&src, &dir.path().join("timm"), "timm", &[]);
    assert_eq!(code, Some(2));
    assert_eq!(v["counts"]["converted"], 3, "{v}");
    assert_eq!(v["counts"]["failed"], 2, "{v}");
}

#[test]
fn an_output_directory_inside_the_source_directory_is_not_searched() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_tree(&src, &TREE);
    let out = src.join("converted");
    std::fs::create_dir_all(&out).unwrap();
    // Found only if batch mode searched its own output directory.
    std::fs::copy(fixture("vit-token/checkpoint.npz"), out.join("stray.npz")).unwrap();
    let (code, v) = batch_json(&src, &out, "timm", &["--jobs", "64"]);
    assert_eq!((code, statuses(&v)), (Some(0), all("converted")));
    assert_eq!(v["jobs"], TREE.len(), "more jobs than files: one per file");
    assert!(!out.join("stray.safetensors").exists());
    let (code, v) = batch_json(&src, &out, "timm", &[]);
    assert_eq!((code, statuses(&v)), (Some(0), all("skipped")));
}

#[test]
fn batch_usage_errors_are_one_line() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_tree(&src, &TREE[..1]);
    let file = fixture("vit-token/checkpoint.npz");
    for flag in [&["--jobs", "2"][..], &["--ext", "pt"], &["--json"]] {
        let o = batch(&file, &dir.path().join("x.safetensors"), "timm", flag);
        assert_bad_input(
            &o,
            &format!("{} applies only when SOURCE is a directory", flag[0]),
        );
    }
    let o = batch(&src, &dir.path().join("out"), "hf", &["--ext", "pt"]);
    assert_bad_input(&o, "--ext does not apply to --layout hf");
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let o = batch(&src, &a_file, "timm", &[]);
    assert_bad_input(&o, "is a file");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    let o = batch(&empty, &dir.path().join("out"), "timm", &[]);
    assert_bad_input(&o, "no checkpoint under it");
    assert!(
        !dir.path().join("out").exists(),
        "a run with nothing to do made OUTPUT"
    );
    let o = batch(&src, &dir.path().join("out"), "timm", &["--jobs", "0"]);
    assert_eq!(o.status.code(), Some(2));
}

/// An interrupted batch leaves no temporary file anywhere under the output directory, and the next run picks up
/// where it stopped (outputs already in place are skipped, the rest converted).
#[cfg(unix)]
#[test]
fn an_interrupted_batch_leaves_no_temporary_and_resumes() {
    use std::time::Instant;
    /// Exit status of an interrupted run (128 + SIGINT).
    const INTERRUPTED: i32 = 130;
    let dir = scratch();
    let src = dir.path().join("src");
    make_tree(&src, &TREE);
    std::fs::create_dir_all(src.join("big")).unwrap();
    crate::convert::write_big_vit(&src.join("big/model.npz"));
    let out = dir.path().join("out");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vitconv"))
        .args(["npz-to-pt", "--layout", "timm", "--quiet", "--jobs", "2"])
        .arg(&src)
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The big file is started first; its temporary output appears in out/big.
    let started = Instant::now();
    while crate::convert::partial_files(&out.join("big")).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no temporary output appeared"
        );
        assert!(child.try_wait().unwrap().is_none(), "vitconv ended early");
        std::thread::sleep(Duration::from_millis(1));
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(INTERRUPTED), "{}", stderr(&o));
    let left: Vec<String> = tree(&out)
        .into_iter()
        .filter(|f| f.ends_with(".partial") || f.contains("/.tmp") || f.starts_with(".tmp"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "temporaries left behind");
    assert!(!out.join("big/model.safetensors").exists());

    let (code, v) = batch_json(&src, &out, "timm", &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(statuses(&v)["big/model.npz"], "converted");
    assert_eq!(
        v["counts"]["skipped"].as_u64().unwrap() + v["counts"]["converted"].as_u64().unwrap(),
        TREE.len() as u64 + 1
    );
    assert!(TensorFile::open(out.join("big/model.safetensors")).is_ok());
}

#[test]
fn the_manifest_is_never_written_or_read_through_a_planted_link_or_special_file() {
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(fixture("vit-token/checkpoint.npz"), src.join("a.npz")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();

    // A link planted at the temporary name the manifest was once written through: its target stays as it was.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, out.join(".vitconv-batch.jsonl.partial")).unwrap();
    let o = batch(&src, &out, "timm", &["--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(out.join("a.safetensors").exists());

    // A manifest that is a link to another file, a device or a FIFO is refused by name, without reading it.
    let manifest = out.join(".vitconv-batch.jsonl");
    std::fs::remove_file(&manifest).unwrap();
    std::os::unix::fs::symlink(&victim, &manifest).unwrap();
    assert_bad_input(
        &batch(&src, &out, "timm", &["--quiet"]),
        "not a regular file",
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    std::fs::remove_file(&manifest).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &manifest).unwrap();
    assert_bad_input(
        &batch(&src, &out, "timm", &["--quiet"]),
        "not a regular file",
    );
    std::fs::remove_file(&manifest).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&manifest)
        .status()
        .unwrap();
    assert!(status.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let (s, o) = (src.clone(), out.clone());
    std::thread::spawn(move || {
        let _ = tx.send(batch(&s, &o, "timm", &["--quiet"]));
    });
    let o = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a FIFO manifest must not block the run");
    assert_bad_input(&o, "not a regular file");
}

// ---------------------------------------------------------------------------------------
// Hostile trees: links below the output directory, names that are not UTF-8, outputs changed
// since they were recorded, dangling links, folders that would hold other outputs, temporaries
// of a killed run, control characters in names.

#[test]
fn a_link_planted_below_the_output_directory_is_never_written_through() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_tree(&src, &TREE);
    let out = dir.path().join("out");
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), b"someone else's").unwrap();
    std::os::unix::fs::symlink(&victim, out.join("sweep")).unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let (code, v) = batch_json(&src, &out, "timm", extra);
        assert_eq!(code, Some(2), "{v}");
        let st = statuses(&v);
        assert_eq!(st["top.npz"], "converted", "{v}");
        for (rel, _) in TREE.iter().filter(|(r, _)| r.starts_with("sweep/")) {
            assert_eq!(st[*rel], "failed", "{rel}: {v}");
            assert!(reason(&v, rel).contains("symbolic link"), "{rel}: {v}");
        }
        assert_eq!(tree(&victim), ["keep"], "{extra:?}");
    }
}

#[test]
fn names_that_are_not_utf8_are_refused_and_never_share_a_key() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for b in [b"m\xff.npz", b"m\xfe.npz"] {
        std::fs::copy(
            fixture("vit-token/checkpoint.npz"),
            src.join(std::ffi::OsStr::from_bytes(b)),
        )
        .unwrap();
    }
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Another program's file whose name differs from the outputs' only in the invalid byte.
    let theirs = out.join(std::ffi::OsStr::from_bytes(b"m\xfd.safetensors"));
    std::fs::write(&theirs, b"someone else's").unwrap();
    for _ in 0..2 {
        let (code, v) = batch_json(&src, &out, "timm", &[]);
        assert_eq!(code, Some(2), "{v}");
        assert_eq!(v["counts"]["failed"], 2, "{v}");
        let files = v["files"].as_array().unwrap();
        assert!(
            files
                .iter()
                .all(|f| f["reason"].as_str().unwrap().contains("not valid UTF-8")),
            "{v}"
        );
        assert_eq!(std::fs::read(&theirs).unwrap(), b"someone else's");
    }
}

#[test]
fn a_recorded_output_changed_since_is_converted_again() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_tree(&src, &TREE[..1]);
    let out = dir.path().join("out");
    let (code, v) = batch_json(&src, &out, "timm", &[]);
    assert_eq!(code, Some(0), "{v}");
    let written = out.join("top.safetensors");
    let whole = read(&written);
    std::fs::write(&written, &whole[..whole.len() / 2]).unwrap();
    let (code, v) = batch_json(&src, &out, "timm", &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(statuses(&v)["top.npz"], "converted", "{v}");
    assert_eq!(read(&written), whole);
    // Unchanged since: skipped.
    let (_, v) = batch_json(&src, &out, "timm", &[]);
    assert_eq!(statuses(&v)["top.npz"], "skipped", "{v}");
}

#[test]
fn a_dangling_checkpoint_link_is_reported() {
    let dir = scratch();
    let src = dir.path().join("src");
    make_tree(&src, &TREE[..1]);
    std::os::unix::fs::symlink(dir.path().join("gone.npz"), src.join("lost.npz")).unwrap();
    let (code, v) = batch_json(&src, &dir.path().join("out"), "timm", &[]);
    assert_eq!(code, Some(2), "{v}");
    assert_eq!(statuses(&v)["lost.npz"], "failed", "{v}");
    assert!(reason(&v, "lost.npz").contains("does not exist"), "{v}");
}

#[test]
fn a_two_tower_folder_that_would_hold_another_output_is_refused_before_anything_starts() {
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("m")).unwrap();
    std::fs::copy(
        fixture("big_vision/siglip-tiny/checkpoint.npz"),
        src.join("m.npz"),
    )
    .unwrap();
    std::fs::copy(fixture("vit-token/checkpoint.npz"), src.join("m/n.npz")).unwrap();
    let out = dir.path().join("out");
    let (code, v) = batch_json(&src, &out, "open_clip", &[]);
    assert_eq!(code, Some(2), "{v}");
    let st = statuses(&v);
    assert_eq!(st["m.npz"], "failed", "{v}");
    assert!(reason(&v, "m.npz").contains("m/n.npz"), "{v}");
    assert_eq!(st["m/n.npz"], "converted", "{v}");
    assert_eq!(tree(&out.join("m")), ["n.open_clip.json", "n.safetensors"]);
}

#[test]
fn temporaries_a_killed_run_left_are_removed_by_the_next() {
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("big")).unwrap();
    crate::convert::write_big_vit(&src.join("big/model.npz"));
    let out = dir.path().join("out");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vitconv"))
        .args(["npz-to-pt", "--layout", "timm", "--quiet"])
        .arg(&src)
        .arg(&out)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while crate::convert::partial_files(&out.join("big")).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "no temporary");
        assert!(child.try_wait().unwrap().is_none(), "vitconv ended early");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!crate::convert::partial_files(&out.join("big")).is_empty());
    let (code, v) = batch_json(&src, &out, "timm", &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(tree(&out.join("big")), ["model.safetensors"]);
}

#[test]
fn control_characters_in_names_are_escaped_in_every_summary() {
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("\u{1b}[31mred.npz"), b"not a zip").unwrap();
    let out = dir.path().join("out");
    for extra in [&["--quiet"][..], &[][..]] {
        let o = batch(&src, &out, "timm", extra);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let said = format!("{}{}", stdout(&o), stderr(&o));
        assert!(!said.contains('\u{1b}'), "{extra:?}: {said:?}");
        assert!(said.contains("\\u{1b}[31mred.npz"), "{extra:?}: {said}");
    }
}
