//! `--labels`: the class names a conversion writes into its configs, from a file (one name per line, or a JSON
//! list) or from a maintained list by name (`imagenet-1k`, `imagenet-21k`), which timm's `ImageNetInfo` holds
//! and a Python with timm gives us (the names are not copied into vitconv).

use std::path::Path;

use anyhow::{bail, Context as _};

/// The largest labels file read: ImageNet-21k's 21,843 names are under 1 MB.
const MAX_LABELS_BYTES: u64 = 16 << 20;

/// The named lists: the `--labels` name, timm's `ImageNetInfo` subset, and its class count.
const NAMED: [(&str, &str, usize); 2] = [
    ("imagenet-1k", "imagenet-1k", 1000),
    // Google's ImageNet-21k (21,843 classes, the vit_jax and big_vision i21k heads), as timm names it.
    ("imagenet-21k", "imagenet-21k-goog", 21843),
];

/// Reads the names `arg` stands for: an existing file, else one of [`NAMED`].
pub fn resolve(arg: &str) -> anyhow::Result<Vec<String>> {
    let path = Path::new(arg);
    // A file of that name wins over a list's name.
    let Some((name, subset, count)) = NAMED
        .into_iter()
        .find(|(n, ..)| *n == arg && !path.exists())
    else {
        return from_file(path);
    };
    let names = from_timm(name, subset)?;
    if names.len() != count {
        bail!(
            "--labels {name}: timm's ImageNetInfo('{subset}') gave {} names, expected {count}",
            names.len()
        );
    }
    Ok(names)
}

/// A labels file: a JSON list of strings, or one name per line (a last empty line is no name).
fn from_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = vitconv_tensors::read_regular_file(path, MAX_LABELS_BYTES)
        .with_context(|| "--labels takes a file of class names, imagenet-1k or imagenet-21k")?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("--labels {}: not UTF-8 text ({e})", path.display()))?;
    let names =
        parse(&text).map_err(|why| anyhow::anyhow!("--labels {}: {why}", path.display()))?;
    Ok(names)
}

/// The names in a labels file's text.
fn parse(text: &str) -> Result<Vec<String>, String> {
    if text.trim_start().starts_with('[') {
        let names: Vec<String> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON list of strings ({e})"))?;
        if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
            return Err(format!("name {i} is empty"));
        }
        return Ok(names);
    }
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut names = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let name = line.strip_suffix('\r').unwrap_or(line);
        if name.trim().is_empty() {
            return Err(format!("line {} is empty (one class name per line)", i + 1));
        }
        names.push(name.to_string());
    }
    if names.is_empty() {
        return Err("no names".to_string());
    }
    Ok(names)
}

/// The names of timm's `ImageNetInfo(subset).label_descriptions()`, through `VITCONV_PYTHON` or `python3`.
fn from_timm(name: &str, subset: &str) -> anyhow::Result<Vec<String>> {
    let python = std::env::var_os("VITCONV_PYTHON").unwrap_or_else(|| "python3".into());
    let script = "import json, sys\nfrom timm.data import ImageNetInfo\nprint(json.dumps(ImageNetInfo(sys.argv[1]).label_descriptions()))";
    let how = format!(
        "--labels {name} takes ImageNet's class names from timm (timm.data.ImageNetInfo) through {}; install timm there, set VITCONV_PYTHON to a Python that has it, or pass --labels FILE",
        Path::new(&python).display()
    );
    let out = std::process::Command::new(&python)
        .args(["-c", script, subset])
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| how.clone())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("{how} ({last})");
    }
    serde_json::from_slice(&out.stdout).with_context(|| how)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn lines_and_json_lists_read_the_same_names() {
        let want = vec!["tench, Tinca tinca".to_string(), "goldfish".to_string()];
        assert_eq!(parse("tench, Tinca tinca\ngoldfish\n").unwrap(), want);
        assert_eq!(parse("tench, Tinca tinca\r\ngoldfish").unwrap(), want);
        assert_eq!(
            parse(" [\"tench, Tinca tinca\", \"goldfish\"]").unwrap(),
            want
        );
    }

    #[test]
    fn empty_names_and_other_json_are_refused_by_position() {
        assert!(parse("a\n\nb\n").unwrap_err().contains("line 2"));
        assert!(parse("").unwrap_err().contains("no names"));
        assert!(parse("[\"a\", \"\"]").unwrap_err().contains("name 1"));
        assert!(parse("[1, 2]")
            .unwrap_err()
            .contains("JSON list of strings"));
    }
}
