//! The module graph of every crate has no circle: a module that imports another is never imported by it,
//! directly or through others. Read from the sources (`crate::a::b` paths outside comments and test modules),
//! so a circle added anywhere fails the test command.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module a file defines, as a path from the crate root (`layout::timm`; the root is `crate`).
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(root)
        .expect("under the root")
        .with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|c| c != "mod")
        .collect();
    match parts.as_slice() {
        [one] if one == "lib" || one == "main" => "crate".to_string(),
        _ => parts.join("::"),
    }
}

/// module -> the modules it imports (the longest module path each `crate::` path names), one crate.
fn graph(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(root, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .filter(|f| !f.starts_with(root.join("bin")))
        .map(|f| (module_of(root, f), f.clone()))
        .collect();
    let path = regex::Regex::new(r"crate((?:::[a-z_][a-z0-9_]*)+)").expect("regex");
    let mut g = BTreeMap::new();
    for (m, file) in &modules {
        let text = std::fs::read_to_string(file).expect("readable");
        // Test modules may reach anywhere; comments name modules without importing them.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut deps = BTreeSet::new();
        for c in path.captures_iter(&code) {
            let segs: Vec<&str> = c[1].trim_start_matches("::").split("::").collect();
            // The longest prefix that is a module of this crate.
            let target = (1..=segs.len())
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|p| modules.contains_key(p));
            if let Some(t) = target {
                // A module's own descendants and ancestors are its parts, not other modules.
                if t != *m && !m.starts_with(&format!("{t}::")) && !t.starts_with(&format!("{m}::"))
                {
                    deps.insert(t);
                }
            }
        }
        g.insert(m.clone(), deps);
    }
    g
}

/// The circles of `g` (strongly connected components of more than one module), each sorted.
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Modules that reach each other both ways belong to one circle.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for d in g.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|m| (m, reach(m))).collect();
    let mut out: BTreeSet<Vec<String>> = BTreeSet::new();
    for (m, r) in &reaches {
        let mut circle: Vec<String> = r
            .iter()
            .filter(|o| reaches.get(o).is_some_and(|back| back.contains(*m)))
            .cloned()
            .collect();
        if !circle.is_empty() {
            if !circle.contains(m) {
                circle.push((*m).clone());
            }
            circle.sort();
            out.insert(circle);
        }
    }
    out.into_iter().collect()
}

#[test]
fn no_crate_has_an_import_circle() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut roots = vec![repo.join("src")];
    for e in std::fs::read_dir(repo.join("crates")).expect("crates") {
        roots.push(e.expect("entry").path().join("src"));
    }
    let mut found = Vec::new();
    for root in &roots {
        let g = graph(root);
        assert!(g.len() > 1, "{}: no modules read", root.display());
        for c in circles(&g) {
            found.push(format!("{}: {}", root.display(), c.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn the_check_finds_a_circle() {
    // The same reading on a circle made on purpose: a -> b -> c -> a, and d -> a outside it.
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, d)| (m.to_string(), d.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        circles(&g),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
}
