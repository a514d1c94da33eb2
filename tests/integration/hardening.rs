//! Hostile and failing cases at the command line: a pickle that would run a shell command runs
//! nothing, and a conversion that fails (unwritable directory, a source that breaks half-way,
//! a full disk) leaves no output, no temporary file, and any existing output byte-identical;
//! `--force` is the only way to replace a file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vitconv_tensors::{DType, TensorFile};

use crate::common::{
    assert_bad_input, fixture, listing, scratch, stderr, stored, vitconv, zip_bytes, Member,
};

/// The source every conversion here uses, and its layout.
const SOURCE: &str = "vit-token/checkpoint.npz";
const LAYOUT: &str = "timm";

/// The tensor broken in the half-way failure: the last block's second MLP kernel, which the
/// timm layout writes after everything of block 0. It is 32 KiB, so its break (16 bytes
/// before its end) lies past the 32 KiB an inflater decodes ahead when `open` reads the
/// `.npy` header: the file opens, converts, and fails only when this tensor is read.
pub(crate) const BROKEN_TENSOR: &str = "Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel";
/// Intact bytes at the end of the broken member's content (header included) that are lost.
const BROKEN_TAIL: usize = 16;

/// `ulimit -f` in blocks for the full-disk case: far below the converted file's size (the
/// vit-token checkpoint converts to about 480 KB), far above a small header.
const FILE_SIZE_LIMIT_BLOCKS: u32 = 64;

fn convert_args(src: &Path, out: &Path, layout: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "npz-to-pt".to_string(),
        src.display().to_string(),
        out.display().to_string(),
        "--layout".into(),
        layout.into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn convert(src: &Path, out: &Path, extra: &[&str]) -> Output {
    vitconv(convert_args(src, out, LAYOUT, extra))
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A version-1 `.npy` header for a C-order array.
fn npy_header(dtype: DType, shape: &[usize]) -> Vec<u8> {
    let descr = match dtype {
        DType::F32 => "<f4",
        DType::BF16 => "<V2",
        other => panic!("fixture dtype {other} not expected"),
    };
    let dims: Vec<String> = shape.iter().map(|d| format!("{d},")).collect();
    let mut text = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(" ")
    );
    // Pad so magic, version, length, text and newline end on a 64-byte boundary, as numpy does.
    let pad = (64 - (10 + text.len() + 1) % 64) % 64;
    text.push_str(&" ".repeat(pad));
    text.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(text.len() as u16).to_le_bytes());
    v.extend_from_slice(text.as_bytes());
    v
}

/// A deflate stream that inflates `content` up to `BROKEN_TAIL` bytes before its end, then
/// hits a reserved block type: what a download cut short and padded, or a flipped bit,
/// leaves behind. Stored (uncompressed) deflate blocks keep this independent of any compressor.
fn deflate_broken_near_end(content: &[u8]) -> Vec<u8> {
    let kept = &content[..content.len() - BROKEN_TAIL];
    let mut out = Vec::new();
    for chunk in kept.chunks(u16::MAX as usize) {
        let len = chunk.len() as u16;
        out.push(0x00); // BFINAL = 0, BTYPE = 00 (stored)
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.push(0x07); // BFINAL = 1, BTYPE = 11: reserved, an error in every inflater
    out.extend_from_slice(&[0xAB; 64]);
    out
}

/// A copy of the fixture checkpoint, re-zipped with `broken`'s member failing near the end of
/// its data; every other member is stored intact, so the file opens and converts until that
/// tensor is read (checked here, so the tests below really fail half-way).
pub(crate) fn source_breaking_halfway(dir: &Path, broken: &str) -> PathBuf {
    let src = TensorFile::open(fixture(SOURCE)).expect("fixture opens");
    let mut members = Vec::new();
    for t in src.tensors() {
        let mut content = npy_header(t.dtype, &t.shape);
        content.extend_from_slice(&src.read(&t.name).expect("fixture reads"));
        let name = format!("{}.npy", t.name);
        if t.name == broken {
            members.push(Member {
                name,
                deflate: true,
                payload: deflate_broken_near_end(&content),
                content,
            });
        } else {
            members.push(stored(&name, content));
        }
    }
    assert!(
        src.get(broken).is_some(),
        "the fixture has no `{broken}` to break"
    );
    let path = dir.join("broken-source.npz");
    std::fs::write(&path, zip_bytes(&members)).expect("write");
    let reopened = TensorFile::open(&path).expect("the broken source still opens");
    for t in reopened.tensors() {
        assert_eq!(
            reopened.read(&t.name).is_ok(),
            t.name != broken,
            "only `{broken}` fails to read, not `{}`",
            t.name
        );
    }
    path
}

// ---------------------------------------------------------------------------------------
// Pickles run nothing.

/// `os.system(cmd)` as a protocol-2 pickle: `GLOBAL 'os system'`, the command, `TUPLE1`,
/// `REDUCE`, `STOP`. Any Python unpickler without an allowlist runs the command.
fn os_system_pickle(cmd: &str) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend_from_slice(b"cos\nsystem\n");
    p.push(b'X');
    p.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    p.extend_from_slice(cmd.as_bytes());
    p.extend_from_slice(b"\x85R.");
    p
}

fn python3() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("python3"))
        .find(|p| p.is_file())
}

#[test]
fn a_pickle_that_would_run_a_command_runs_nothing() {
    let dir = scratch();
    let marker = dir.path().join("MARKER");
    let cmd = format!("touch '{}'", marker.display());
    let pickle = os_system_pickle(&cmd);
    let pt = dir.path().join("evil.pt");
    let archive = zip_bytes(&[
        stored("archive/data.pkl", pickle.clone()),
        stored("archive/data/0", vec![0; 16]),
        stored("archive/byteorder", b"little".to_vec()),
        stored("archive/version", b"3\n".to_vec()),
    ]);
    std::fs::write(&pt, archive).expect("write");

    let o = vitconv(["inspect".as_ref(), pt.as_os_str()]);
    assert_bad_input(&o, "os.system");
    assert!(stderr(&o).contains("evil.pt"), "{}", stderr(&o));
    let o = vitconv(["inspect".as_ref(), "--json".as_ref(), pt.as_os_str()]);
    assert_bad_input(&o, "os.system");
    let out = dir.path().join("out.pt");
    let o = convert(&pt, &out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!marker.exists(), "the pickle's command ran");
    assert!(!out.exists());

    // The pickle is no dud: Python's own unpickler, which has no allowlist, runs it.
    if let Some(py) = python3() {
        let pkl = dir.path().join("data.pkl");
        std::fs::write(&pkl, &pickle).expect("write");
        let status = Command::new(py)
            .args([
                "-c",
                "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())",
            ])
            .arg(&pkl)
            .status()
            .expect("python3 runs");
        assert!(status.success());
        assert!(marker.exists(), "the control run did not create the marker");
    } else {
        eprintln!("python3 not on PATH: skipped showing that the pickle is live");
    }
}

// ---------------------------------------------------------------------------------------
// Broken and lying files at the command line: exit 2, one line naming the file.

#[test]
fn inspect_refuses_broken_and_lying_files_cleanly() {
    let dir = scratch();
    let good = read(&fixture(SOURCE));

    let cut = dir.path().join("cut.npz");
    std::fs::write(&cut, &good[..good.len() / 2]).expect("write");
    assert_bad_input(&vitconv(["inspect".as_ref(), cut.as_os_str()]), "cut.npz");

    // A header claiming 2^60 elements over 16 bytes of data.
    let mut text = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        1u64 << 60
    );
    let pad = (64 - (10 + text.len() + 1) % 64) % 64;
    text.push_str(&" ".repeat(pad));
    text.push('\n');
    let mut huge = b"\x93NUMPY\x01\x00".to_vec();
    huge.extend_from_slice(&(text.len() as u16).to_le_bytes());
    huge.extend_from_slice(text.as_bytes());
    huge.extend_from_slice(&[0; 16]);
    let huge_path = dir.path().join("huge.npy");
    std::fs::write(&huge_path, &huge).expect("write");
    for extra in [&[][..], &["--stats"][..], &["--json"][..]] {
        let mut args = vec!["inspect".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(huge_path.display().to_string());
        assert_bad_input(&vitconv(&args), "huge.npy");
    }

    // The half-way source: `inspect` lists it (only the directory is read), `--stats` reads
    // every tensor and must fail cleanly on the broken one.
    let broken = source_breaking_halfway(dir.path(), BROKEN_TENSOR);
    let o = vitconv(["inspect".as_ref(), broken.as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = vitconv(["inspect".as_ref(), "--stats".as_ref(), broken.as_os_str()]);
    assert_bad_input(&o, BROKEN_TENSOR);
}

// ---------------------------------------------------------------------------------------
// Nothing lost.

/// The uid this process runs as, from /proc (no libc needed).
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(unix)]
fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[cfg(unix)]
#[test]
fn conversion_into_an_unwritable_directory_leaves_nothing() {
    if euid() == Some(0) {
        // Root writes through any mode bits, and a binary linked against libtorch under root's home cannot
        // be run as another user, so root gets a directory nobody can create files in: procfs.
        let locked = Path::new("/proc/self");
        let out = locked.join("m.pt");
        let o = convert(&fixture(SOURCE), &out, &[]);
        assert_bad_input(&o, "m.pt");
        let names: Vec<String> = std::fs::read_dir(locked)
            .expect("list /proc/self")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("m.pt"))
            .collect();
        assert_eq!(names, Vec::<String>::new());
        return;
    }
    let dir = scratch();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    chmod(&locked, 0o555);
    let out = locked.join("m.pt");
    let o = convert(&fixture(SOURCE), &out, &[]);
    assert_bad_input(&o, "m.pt");
    assert_eq!(listing(&locked), Vec::<String>::new());
    chmod(&locked, 0o755);
}

#[test]
fn a_source_failing_half_way_leaves_no_output() {
    let dir = scratch();
    let src = source_breaking_halfway(dir.path(), BROKEN_TENSOR);
    let out = dir.path().join("m.pt");
    let o = convert(&src, &out, &[]);
    assert_bad_input(&o, BROKEN_TENSOR);
    assert_eq!(listing(dir.path()), ["broken-source.npz"]);
}

#[test]
fn a_failed_conversion_leaves_an_existing_output_byte_identical() {
    let dir = scratch();
    let out = dir.path().join("m.pt");
    let o = convert(&fixture(SOURCE), &out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let before = read(&out);
    let src = source_breaking_halfway(dir.path(), BROKEN_TENSOR);

    // Without --force: refused.
    assert_bad_input(&convert(&src, &out, &[]), "--force");
    assert_eq!(read(&out), before);
    // With --force, from a source that breaks half-way: the old file stays whole.
    assert_bad_input(&convert(&src, &out, &["--force"]), BROKEN_TENSOR);
    assert_eq!(read(&out), before);
    assert_eq!(listing(dir.path()), ["broken-source.npz", "m.pt"]);
}

/// Runs a conversion with writes limited to [`FILE_SIZE_LIMIT_BLOCKS`]: SIGXFSZ ignored, so a
/// write past the limit fails with EFBIG as on a full disk.
fn convert_with_full_disk(src: &Path, out: &Path, extra: &[&str]) -> Output {
    let script = format!("trap '' XFSZ; ulimit -f {FILE_SIZE_LIMIT_BLOCKS}; exec \"$0\" \"$@\"");
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_vitconv"))
        .args(convert_args(src, out, LAYOUT, extra))
        .output()
        .expect("sh runs")
}

#[test]
fn a_full_disk_leaves_no_output_and_no_temporary_file() {
    let dir = scratch();
    let src = dir.path().join("src.npz");
    std::fs::copy(fixture(SOURCE), &src).expect("copy");
    for ext in ["pt", "safetensors"] {
        let out = dir.path().join(format!("m.{ext}"));
        let o = convert_with_full_disk(&src, &out, &[]);
        assert_bad_input(&o, &format!("m.{ext}"));
        assert_eq!(listing(dir.path()), ["src.npz"], "after writing .{ext}");
    }
    // An existing output survives a --force conversion that runs out of space.
    let out = dir.path().join("m.pt");
    std::fs::write(&out, b"the previous conversion").expect("write");
    let o = convert_with_full_disk(&src, &out, &["--force"]);
    assert_bad_input(&o, "m.pt");
    assert_eq!(read(&out), b"the previous conversion");
    assert_eq!(listing(dir.path()), ["m.pt", "src.npz"]);
    // The same conversion without the limit succeeds: the limit, not the source, failed it.
    let o = convert(&src, &out, &["--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(read(&out).len() > 512 * FILE_SIZE_LIMIT_BLOCKS as usize);
}

#[test]
fn only_force_replaces_an_existing_file() {
    let dir = scratch();
    let src = fixture(SOURCE);
    for name in ["m.pt", "m.safetensors"] {
        let out = dir.path().join(name);
        std::fs::write(&out, b"keep me").expect("write");
        assert_bad_input(&convert(&src, &out, &[]), "--force");
        assert_eq!(read(&out), b"keep me");
        let o = convert(&src, &out, &["--force"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let replaced = TensorFile::open(&out).expect("a tensor file now");
        assert!(!replaced.tensors().is_empty());
        // And a second run without --force refuses to replace the conversion either.
        let converted = read(&out);
        assert_bad_input(&convert(&src, &out, &[]), "--force");
        assert_eq!(read(&out), converted);
    }
    // A side file counts as output too: open_clip's config beside the weights.
    let weights = dir.path().join("oc.pt");
    let side = dir.path().join("oc.open_clip.json");
    std::fs::write(&side, b"{}").expect("write");
    let o = vitconv(convert_args(&src, &weights, "open_clip", &[]));
    assert_bad_input(&o, "--force");
    assert_eq!(read(&side), b"{}");
    assert!(!weights.exists());
}

#[test]
fn a_side_file_that_cannot_be_written_leaves_the_old_weights() {
    let dir = scratch();
    let src = fixture(SOURCE);
    let weights = dir.path().join("oc.pt");
    std::fs::write(&weights, b"old weights").expect("write");
    // The open_clip config's path is taken by a directory, so its rename must fail.
    std::fs::create_dir(dir.path().join("oc.open_clip.json")).expect("mkdir");
    let o = vitconv(convert_args(&src, &weights, "open_clip", &["--force"]));
    assert_bad_input(&o, "oc.open_clip.json");
    assert_eq!(read(&weights), b"old weights");
    assert_eq!(listing(dir.path()), ["oc.open_clip.json", "oc.pt"]);
}
