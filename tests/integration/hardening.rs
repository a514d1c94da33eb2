//! Hostile and failing cases at the command line: a pickle that would run a shell command runs
//! nothing, and a conversion that fails (unwritable directory, a source that breaks half-way,
//! a full disk) leaves no output, no temporary file, and any existing output byte-identical;
//! `--force` is the only way to replace a file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vitconv_tensors::{DType, TensorFile};

use crate::common::{
    assert_bad_input, fixture, listing, npz_to_pt, npz_to_pt_args, scratch, stderr, stdout, stored,
    vitconv, zip_bytes, Member,
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

fn convert_args(src: &Path, out: &Path, layout: &str, extra: &[&str]) -> Vec<OsString> {
    npz_to_pt_args(src, out, layout, &[&["--quiet"], extra].concat())
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
// Hostile archives, special files and names at the command line (issue 12).

/// A `.npy` of `|u1` elements holding `data`.
fn npy_u8(data: &[u8]) -> Vec<u8> {
    let mut text = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({},), }}",
        data.len()
    );
    let pad = (64 - (10 + text.len() + 1) % 64) % 64;
    text.push_str(&" ".repeat(pad));
    text.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(text.len() as u16).to_le_bytes());
    v.extend_from_slice(text.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn inspect_refuses_duplicated_and_aliased_zip_members_by_name() {
    let dir = scratch();
    let content = npy_u8(&[1, 2, 3, 4]);
    let dup = dir.path().join("dup.npz");
    let bytes = zip_bytes(&[
        stored("w.npy", content.clone()),
        stored("w.npy", content.clone()),
    ]);
    std::fs::write(&dup, bytes).expect("write");
    let o = vitconv(["inspect".as_ref(), dup.as_os_str()]);
    assert_bad_input(&o, "member `w.npy` occurs twice");

    // `b.npy`'s directory entry pointed at `a.npy`'s local header: an alias.
    let mut bytes = zip_bytes(&[stored("a.npy", content.clone()), stored("b.npy", content)]);
    let cd = bytes
        .windows(4)
        .rposition(|w| w == b"PK\x01\x02")
        .expect("second directory entry");
    bytes[cd + 42..cd + 46].copy_from_slice(&0u32.to_le_bytes());
    let alias = dir.path().join("alias.npz");
    std::fs::write(&alias, bytes).expect("write");
    for extra in [&[][..], &["--stats"][..]] {
        let mut args = vec!["inspect".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(alias.display().to_string());
        let o = vitconv(&args);
        assert_bad_input(&o, "names member `b.npy`");
        assert!(stderr(&o).contains("names `a.npy`"), "{}", stderr(&o));
    }

    // A member that is not an array is named, not skipped.
    let notes = dir.path().join("notes.npz");
    let bytes = zip_bytes(&[
        stored("w.npy", npy_u8(&[1])),
        stored("README", b"hello".to_vec()),
    ]);
    std::fs::write(&notes, bytes).expect("write");
    assert_bad_input(
        &vitconv(["inspect".as_ref(), notes.as_os_str()]),
        "member `README` is not an .npy array",
    );
}

/// A protocol-2 state dict `{name: float32 view of storage "0" (numel 1), shape, strides}`
/// for each entry, laid out as torch.save writes `_rebuild_tensor_v2`.
fn views_pickle(numel: u64, views: &[(String, Vec<u64>, Vec<u64>)]) -> Vec<u8> {
    fn string(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: u64) {
        p.extend_from_slice(&[0x8a, 8]);
        p.extend_from_slice(&v.to_le_bytes());
    }
    let mut p = vec![0x80, 2, b'}', b'('];
    for (name, shape, strides) in views {
        string(&mut p, name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        string(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        string(&mut p, "0");
        string(&mut p, "cpu");
        int(&mut p, numel);
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        p.push(b'(');
        shape.iter().for_each(|&d| int(&mut p, d));
        p.extend_from_slice(b"t(");
        strides.iter().for_each(|&s| int(&mut p, s));
        p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend_from_slice(b"u.");
    p
}

/// `content` as a raw deflate stream of stored blocks (no compressor needed).
fn stored_deflate(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunks = content.chunks(u16::MAX as usize).peekable();
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn inspect_stats_work_is_bounded_by_the_file_size() {
    let dir = scratch();
    // 2000 views of one deflated 256 KiB storage: the storage is decoded once, and the views
    // after the first hundred or so hit the budget for repeated work instead of running on.
    let numel = (1u64 << 18) / 4;
    let views: Vec<_> = (0..2000)
        .map(|i| (format!("alias{i:04}"), vec![numel], vec![1]))
        .collect();
    let storage = vec![0u8; 1 << 18];
    let archive = |pickle: Vec<u8>, storage: &[u8]| {
        zip_bytes(&[
            stored("archive/data.pkl", pickle),
            Member {
                name: "archive/data/0".into(),
                deflate: true,
                payload: stored_deflate(storage),
                content: storage.to_vec(),
            },
            stored("archive/byteorder", b"little".to_vec()),
            stored("archive/version", b"3\n".to_vec()),
        ])
    };
    let path = dir.path().join("aliases.pt");
    std::fs::write(&path, archive(views_pickle(numel, &views), &storage)).expect("write");
    let o = vitconv(["inspect".as_ref(), path.as_os_str()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "listing reads no data: {}",
        stderr(&o)
    );
    let o = vitconv(["inspect".as_ref(), "--stats".as_ref(), path.as_os_str()]);
    assert_bad_input(&o, "refused: reading it would decode");

    // A stride-0 view repeating its storage 1024 times: exact statistics, counted by
    // multiplicity, with no 1024x buffer.
    let values: Vec<u8> = (0..4096u32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let views = vec![("rep".to_string(), vec![1024, 4096], vec![0, 1])];
    let path = dir.path().join("rep.pt");
    std::fs::write(&path, archive(views_pickle(4096, &views), &values)).expect("write");
    let o = vitconv([
        "inspect".as_ref(),
        "--stats".as_ref(),
        "--json".as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let stats = &v["files"][0]["tensors"][0]["stats"];
    assert_eq!(stats["max"].as_f64(), Some(4095.0), "{stats}");
    let mean = stats["mean"].as_f64().expect("a mean");
    assert!((mean - 2047.5).abs() < 1e-9, "{stats}");
}

#[test]
fn inspect_refuses_fifos_and_devices_at_once() {
    let dir = scratch();
    let fifo = dir.path().join("pipe.npz");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo failed");
    // `inspect` would block forever opening a FIFO nobody writes; a test harness timeout is
    // not needed, because the check comes before the open.
    let started = std::time::Instant::now();
    let o = vitconv(["inspect".as_ref(), fifo.as_os_str()]);
    assert_bad_input(&o, "not a regular file (it is a named pipe (FIFO))");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let o = vitconv(["inspect", "/dev/zero"]);
    assert_bad_input(&o, "it is a character device");
    assert!(!stderr(&o).contains("empty file"), "{}", stderr(&o));
}

/// Copies the folder `from` into `to`, recursively (the fixtures hold no links).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("lists") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copies");
        }
    }
}

#[test]
fn inspect_refuses_checkpoint_metadata_that_is_a_fifo_or_a_device() {
    let dir = scratch();
    let ckpt = dir.path().join("ckpt");
    copy_dir(&fixture("containers/orbax-bv-noocdbt/ckpt"), &ckpt);
    let metadata = ckpt.join("_METADATA");
    let good = read(&metadata);
    // A FIFO as Orbax's `_METADATA` would block the read forever; it is refused by kind, by name, at once.
    std::fs::remove_file(&metadata).expect("rm");
    let made = Command::new("mkfifo")
        .arg(&metadata)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo failed");
    let started = std::time::Instant::now();
    let o = vitconv(["inspect".as_ref(), ckpt.as_os_str()]);
    assert_bad_input(
        &o,
        "_METADATA: not a regular file (it is a named pipe (FIFO))",
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    // A link to /dev/zero as `_METADATA` would be read until memory ran out.
    std::fs::remove_file(&metadata).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", &metadata).expect("symlink");
    let o = vitconv(["inspect".as_ref(), ckpt.as_os_str()]);
    assert_bad_input(&o, "_METADATA");

    // A per-array `.zarray` as a FIFO, the rest intact.
    std::fs::remove_file(&metadata).expect("rm");
    std::fs::write(&metadata, good).expect("restore");
    let zarray = ckpt.join("MAPHead_0.probe/.zarray");
    std::fs::remove_file(&zarray).expect("rm");
    let made = Command::new("mkfifo")
        .arg(&zarray)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo failed");
    let o = vitconv(["inspect".as_ref(), ckpt.as_os_str()]);
    assert_bad_input(&o, "MAPHead_0.probe/.zarray: not a regular file");
}

#[test]
fn inspect_escapes_control_characters_in_names_and_paths() {
    let dir = scratch();
    // Names that would set the window title, clear the screen, rewrite the line, break it.
    let hostile = [
        "title\x1b]0;pwned\x07.npy",
        "clear\x1b[2J\r.npy",
        "line\nbreak.npy",
    ];
    let members: Vec<Member> = hostile.iter().map(|n| stored(n, npy_u8(&[1, 2]))).collect();
    let path = dir.path().join("names.npz");
    std::fs::write(&path, zip_bytes(&members)).expect("write");
    let o = vitconv(["inspect".as_ref(), path.as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for raw in ['\x1b', '\x07', '\r'] {
        assert!(
            !out.contains(raw),
            "raw {raw:?} reached the terminal: {out:?}"
        );
    }
    assert!(out.contains("title\\u{1b}]0;pwned\\u{7}"), "{out}");
    assert!(out.contains("clear\\u{1b}[2J\\r"), "{out}");
    assert!(out.contains("line\\nbreak"), "{out}");
    // JSON escapes them itself, and keeps the names exact.
    let o = vitconv(["inspect".as_ref(), "--json".as_ref(), path.as_os_str()]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let names: Vec<&str> = v["files"][0]["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["title\x1b]0;pwned\x07", "clear\x1b[2J\r", "line\nbreak"]
    );

    // In error lines: a hostile member name, and a path with a newline in it.
    let bytes = zip_bytes(&[stored("x\x1b[2J.txt", b"not an array".to_vec())]);
    let bad = dir.path().join("new\nline.npz");
    std::fs::write(&bad, bytes).expect("write");
    let o = vitconv(["inspect".as_ref(), bad.as_os_str()]);
    assert_bad_input(&o, "x\\u{1b}[2J.txt");
    assert!(stderr(&o).contains("new\\nline.npz"), "{}", stderr(&o));
    assert!(!stderr(&o).contains('\x1b'), "{:?}", stderr(&o));
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
    convert_with_full_disk_as(src, out, LAYOUT, extra)
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

#[test]
fn outputs_commit_together_and_side_files_are_ordinary_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    // --force onto a weights path that is a directory: the run fails at its last step, and the side
    // file already there (an earlier run's config) is left byte for byte as it was.
    let out = dir.path().join("m.safetensors");
    std::fs::create_dir(&out).unwrap();
    let side = dir.path().join("m.open_clip.json");
    std::fs::write(&side, b"an earlier config").unwrap();
    let o = vitconv(convert_args(
        &fixture(SOURCE),
        &out,
        "open_clip",
        &["--force"],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("m.safetensors"), "{}", stderr(&o));
    assert_eq!(read(&side), b"an earlier config");
    assert!(out.is_dir());
    assert_eq!(
        listing(dir.path()),
        ["m.open_clip.json", "m.safetensors"],
        "nothing else is left behind"
    );
    // A good run: the side file has the weights' permissions, not a temporary's 0600.
    let good = dir.path().join("g.safetensors");
    let o = vitconv(convert_args(&fixture(SOURCE), &good, "open_clip", &[]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let side = dir.path().join("g.open_clip.json");
    assert_eq!(
        mode(&side),
        mode(&good),
        "side file and weights share permissions"
    );
    assert_eq!(
        mode(&side) & 0o044,
        0o044,
        "readable by others like any output"
    );
}

#[test]
fn options_that_would_fill_the_disk_are_refused_up_front() {
    let dir = scratch();
    let out = dir.path().join("m.pt");
    for size in ["1000000", "4294967296", "18446744073709551615"] {
        let o = convert(&fixture(SOURCE), &out, &["--image-size", size]);
        assert_bad_input(&o, "--image-size");
        assert!(stderr(&o).contains("checkpoint.npz"), "{}", stderr(&o));
    }
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

// ---------------------------------------------------------------------------------------
// Nothing is written through a link planted in or swapped into an output, and a failed folder
// conversion removes every folder it created, subfolders of an existing folder included.

/// The SigLIP fixture whose open_clip folder has an `image_tower/` subfolder (no registered timm tower
/// has its sizes).
const SIGLIP: &str = "big_vision/siglip-tiny/checkpoint.npz";

/// Every regular file below `dir` with its contents, to show a directory unchanged.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), read(&p)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_output_folder_swapped_for_a_link_between_batch_runs_is_refused() {
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::copy(fixture(SOURCE), src.join("m.npz")).expect("copy");
    let out = dir.path().join("out");
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).expect("mkdir");
    std::fs::write(victim.join("config.json"), b"someone else's").expect("write");
    let batch = |extra: &[&str]| {
        let mut args = convert_args(&src, &out, "hf", extra);
        args.retain(|a| a != "--quiet");
        vitconv(args)
    };
    let o = batch(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.join("m/config.json").is_file());
    // The folder is replaced by a link to another program's folder, and the source changes, so the manifest
    // (which says `m/` is ours) asks for the conversion again.
    std::fs::rename(out.join("m"), dir.path().join("moved")).expect("rename");
    std::os::unix::fs::symlink(&victim, out.join("m")).expect("symlink");
    let bytes = read(&src.join("m.npz"));
    std::fs::write(src.join("m.npz"), &bytes).expect("touch");
    let before = contents(&victim);
    for extra in [&[][..], &["--force"][..]] {
        let o = batch(extra);
        assert_ne!(o.status.code(), Some(0), "{extra:?}: {}", stderr(&o));
        let said = format!("{}{}", stdout(&o), stderr(&o));
        assert!(said.contains("symbolic link"), "{extra:?}: {said}");
        assert_eq!(contents(&victim), before, "{extra:?}");
    }
}

#[test]
fn force_never_writes_through_a_linked_image_tower() {
    let dir = scratch();
    let out = dir.path().join("oc");
    let o = vitconv(convert_args(&fixture(SIGLIP), &out, "open_clip", &[]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).expect("mkdir");
    std::fs::write(victim.join("config.json"), b"someone else's").expect("write");
    std::fs::remove_dir_all(out.join("image_tower")).expect("rm");
    std::os::unix::fs::symlink(&victim, out.join("image_tower")).expect("symlink");
    let weights = read(&out.join("open_clip_model.safetensors"));
    let o = vitconv(convert_args(
        &fixture(SIGLIP),
        &out,
        "open_clip",
        &["--force"],
    ));
    assert_bad_input(&o, "symbolic link");
    assert_eq!(read(&victim.join("config.json")), b"someone else's");
    assert_eq!(listing(&victim), ["config.json"]);
    assert_eq!(read(&out.join("open_clip_model.safetensors")), weights);
    // The output folder itself as a link is refused too: with --force, and as a fresh output.
    let linked = dir.path().join("linked");
    std::os::unix::fs::symlink(&victim, &linked).expect("symlink");
    for extra in [&[][..], &["--force"][..]] {
        let o = vitconv(convert_args(&fixture(SIGLIP), &linked, "open_clip", extra));
        assert_bad_input(&o, "symbolic link");
        assert_eq!(listing(&victim), ["config.json"]);
    }
}

/// [`convert_with_full_disk`] for any layout.
fn convert_with_full_disk_as(src: &Path, out: &Path, layout: &str, extra: &[&str]) -> Output {
    let script = format!("trap '' XFSZ; ulimit -f {FILE_SIZE_LIMIT_BLOCKS}; exec \"$0\" \"$@\"");
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_vitconv"))
        .args(convert_args(src, out, layout, extra))
        .output()
        .expect("sh runs")
}

#[test]
fn a_failed_folder_conversion_removes_the_subfolders_it_created() {
    let dir = scratch();
    // An existing empty folder: kept, and left as empty as it was.
    let out = dir.path().join("oc");
    std::fs::create_dir(&out).expect("mkdir");
    let o = convert_with_full_disk_as(&fixture(SIGLIP), &out, "open_clip", &[]);
    assert_bad_input(&o, "open_clip_model.safetensors");
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
    // A folder the run created, with missing parents: all removed.
    let deep = dir.path().join("a/b/oc");
    let o = convert_with_full_disk_as(&fixture(SIGLIP), &deep, "open_clip", &[]);
    assert_bad_input(&o, "open_clip_model.safetensors");
    assert_eq!(listing(dir.path()), ["oc"]);
}

#[test]
fn force_without_a_tokenizer_removes_the_earlier_runs_tokenizer_files() {
    let dir = scratch();
    let spiece = dir.path().join("tok.model");
    let mut pieces = vec![("<pad>", 3), ("</s>", 3), ("<unk>", 2)];
    pieces.extend([("\u{2581}a", 1), ("\u{2581}photo", 1), ("\u{2581}of", 1)]);
    std::fs::write(&spiece, crate::common::spiece_model(&pieces)).expect("write");
    for layout in ["hf", "open_clip"] {
        let out = dir.path().join(layout);
        let extra = ["--tokenizer", spiece.to_str().expect("utf-8")];
        let nohead = fixture("big_vision/siglip-nohead/checkpoint.npz");
        let o = vitconv(convert_args(&nohead, &out, layout, &extra));
        assert_eq!(o.status.code(), Some(0), "{layout}: {}", stderr(&o));
        assert!(out.join("spiece.model").is_file(), "{layout}");
        let o = vitconv(convert_args(&nohead, &out, layout, &["--force"]));
        assert_eq!(o.status.code(), Some(0), "{layout}: {}", stderr(&o));
        for stale in [
            "spiece.model",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            assert!(!out.join(stale).exists(), "{layout}: {stale} kept");
        }
    }
}

#[test]
fn a_tokenizers_text_is_written_as_it_came_not_as_a_path_placeholder() {
    let dir = scratch();
    let spiece = dir.path().join("tok.model");
    let unk = "@VITCONV_OUTPUT_DIR@";
    let pieces = [("<pad>", 3), ("</s>", 3), (unk, 2), ("\u{2581}a", 1)];
    std::fs::write(&spiece, crate::common::spiece_model(&pieces)).expect("write");
    let out = dir.path().join("oc");
    let extra = ["--tokenizer", spiece.to_str().expect("utf-8")];
    let o = vitconv(convert_args(&fixture(SIGLIP), &out, "open_clip", &extra));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let config = String::from_utf8(read(&out.join("tokenizer_config.json"))).expect("utf-8");
    assert!(config.contains(unk), "{config}");
    let canonical = std::fs::canonicalize(&out).expect("absolute");
    assert!(!config.contains(&*canonical.to_string_lossy()), "{config}");
}

#[test]
fn a_missing_output_directory_is_named_without_the_temporary() {
    let dir = scratch();
    let out = dir.path().join("missing/m.safetensors");
    let o = convert(&fixture(SOURCE), &out, &[]);
    assert_bad_input(&o, "missing/m.safetensors");
    assert!(!stderr(&o).contains(".partial"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------
// A lying stack depth is refused before a record per block is made.

#[test]
fn a_lying_stack_depth_is_refused_before_anything_per_block_is_made() {
    use std::io::Write as _;
    let dir = scratch();
    let src =
        TensorFile::open(fixture("big_vision/bv-vit-map-scan/checkpoint.npz")).expect("opens");
    let lying = "params/Transformer/encoderblock/LayerNorm_0/scale";
    let depth = 100_000usize;
    let mut members = Vec::new();
    for t in src.tensors() {
        let name = format!("{}.npy", t.name);
        if t.name == lying {
            // Zeros deflate about a thousandfold: 19 MB of declared values in a few kilobytes.
            let mut content = npy_header(t.dtype, &[depth, t.shape[1]]);
            content.resize(content.len() + depth * t.shape[1] * 4, 0);
            let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            z.write_all(&content).expect("deflate");
            members.push(Member {
                name,
                deflate: true,
                payload: z.finish().expect("deflate"),
                content,
            });
        } else {
            let mut content = npy_header(t.dtype, &t.shape);
            content.extend_from_slice(&src.read(&t.name).expect("reads"));
            members.push(stored(&name, content));
        }
    }
    let path = dir.path().join("deep.npz");
    std::fs::write(&path, zip_bytes(&members)).expect("write");
    assert!(std::fs::metadata(&path).expect("stat").len() < 1 << 20);
    let o = vitconv(["inspect".as_ref(), path.as_os_str()]);
    // inspect still lists the tensors, without a model summary.
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("(npz, 40 tensors)"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("big_vision |"), "{}", stdout(&o));
    let out = dir.path().join("m.safetensors");
    let o = convert(&path, &out, &[]);
    assert_bad_input(&o, "100000 blocks, more than vitconv's limit of 1024");
    assert_eq!(listing(dir.path()), ["deep.npz"]);
}

#[test]
fn a_folder_whose_path_a_config_must_name_is_refused_unless_utf8() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = scratch();
    let out = dir.path().join(std::ffi::OsStr::from_bytes(b"oc-\xff"));
    let o = npz_to_pt(&fixture(SIGLIP), &out, "open_clip", &[]);
    assert_bad_input(&o, "not valid UTF-8");
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

// ---------------------------------------------------------------------------------------
// Position tables: bounded grids, computed in bands.

/// The big_vision sincos2d fixture (no stored position table, width 64) with its patch
/// embedding cut to patch 1 (the kernel's first values, `[1, 1, 3, 64]`): a file of 400 KB
/// whose every pixel is a cell of the position grid.
fn sincos_source_with_patch_1(dir: &Path) -> PathBuf {
    let src =
        TensorFile::open(fixture("big_vision/bv-vit-gap-sincos/checkpoint.npz")).expect("opens");
    let kernel = "params/embedding/kernel";
    assert_eq!(
        src.get(kernel).expect("a patch kernel").shape,
        [8, 8, 3, 64]
    );
    let members: Vec<Member> = src
        .tensors()
        .iter()
        .map(|t| {
            let bytes = src.read(&t.name).expect("fixture reads");
            let content = if t.name == kernel {
                let mut c = npy_header(t.dtype, &[1, 1, 3, 64]);
                c.extend_from_slice(&bytes[..3 * 64 * 4]);
                c
            } else {
                let mut c = npy_header(t.dtype, &t.shape);
                c.extend_from_slice(&bytes);
                c
            };
            stored(&format!("{}.npy", t.name), content)
        })
        .collect();
    let path = dir.join("patch1.npz");
    std::fs::write(&path, zip_bytes(&members)).expect("write");
    path
}

#[test]
fn a_position_grid_over_the_limit_is_refused_up_front_and_leaves_nothing() {
    let dir = scratch();
    let src = sincos_source_with_patch_1(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    // Patch 1 at 8192 px (within MAX_IMAGE_SIZE) is 67 million cells: its table was computed whole (2.1 GB
    // of f64) and aborted where memory was limited, leaving the writer's `.partial` file behind.
    for (size, layout, out) in [
        ("8192", "timm", "m.safetensors"),
        ("2048", "timm", "m.pt"),
        ("1040", "open_clip", "m.pt"),
        ("8192", "hf", "hf-folder"),
    ] {
        let o = vitconv(convert_args(
            &src,
            &out_dir.join(out),
            layout,
            &["--image-size", size],
        ));
        assert_bad_input(&o, "over the limit of 1048576 grid cells");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{size}x{size} grid")) && err.contains("at most 1024 px"),
            "{err}"
        );
        assert!(
            listing(&out_dir).is_empty(),
            "{size} px to {out}: {:?}",
            listing(&out_dir)
        );
    }
    // A size within the limit converts (the largest, 1024 px, would write 256 MB; the next test
    // converts a large table).
    let o = vitconv(convert_args(
        &src,
        &out_dir.join("m.safetensors"),
        "timm",
        &["--image-size", "64"],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// A large table that is within the limits is computed a band at a time: patch 1 at 512 px is a
/// 512x512 grid, 16.7 million values, whose whole computation needed 134 MB of f64 and 67 MB of
/// encoded bytes. Under an address-space limit of 160 MB (a tiny conversion needs about 30 MB,
/// this one about 50 MB on one producer; the limit leaves room for the address space a second
/// producer's allocator arena reserves), it converts, and writes the same bytes as without the
/// limit; whole, it aborted on its first large allocation and left its `.partial` file.
#[cfg(target_os = "linux")]
#[test]
fn a_large_legal_position_table_converts_in_bounded_memory() {
    let dir = scratch();
    let src = sincos_source_with_patch_1(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let limited = out_dir.join("limited.safetensors");
    let limit_kb = 160 * 1024;
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {limit_kb}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_vitconv"))
        .args(convert_args(
            &src,
            &limited,
            "timm",
            &["--image-size", "512"],
        ))
        .output()
        .expect("sh runs");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let free = out_dir.join("free.safetensors");
    let o = vitconv(convert_args(&src, &free, "timm", &["--image-size", "512"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (a, b) = (read(&limited), read(&free));
    assert!(a.len() > 512 * 512 * 64 * 4, "{} bytes", a.len());
    assert!(a == b, "the limited run wrote other bytes");
    assert_eq!(
        listing(&out_dir),
        ["free.safetensors", "limited.safetensors"]
    );
}
