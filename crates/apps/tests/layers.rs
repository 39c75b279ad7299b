//! The apps crate's layering, checked on its source: the top-level modules form an acyclic
//! graph, no command imports another, clap appears only in the `cli` layer (and `main.rs`), and
//! no source file is longer than 400 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("src")
}

/// Every .rs file under `dir`, with its path relative to `src`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Code without `//` comments (doc links do not make a dependency).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The path segments that follow each `crate::` in `text`.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.push(
            path.split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        );
    }
    out
}

/// The top-level module a file belongs to (`cli`, `commands`, `setup`, ...).
fn top(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn top_level_modules_form_an_acyclic_graph() {
    let src = src();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files(&src) {
        let from = top(&src, &f);
        if from == "lib" || from == "main" {
            continue;
        }
        for p in crate_paths(&code(&f)) {
            if let Some(to) = p.first()
                && *to != from
            {
                graph.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(n: &str, g: &BTreeMap<String, BTreeSet<String>>, state: &mut BTreeMap<String, u8>) {
        state.insert(n.to_string(), 1);
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()) {
                Some(1) => panic!("import cycle through {n} -> {d}: {g:?}"),
                Some(2) => {}
                _ => visit(d, g, state),
            }
        }
        state.insert(n.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n) {
            visit(n, &graph, &mut state);
        }
    }
    // The layers: cli above commands above the shared modules.
    assert!(
        !graph.get("commands").is_some_and(|d| d.contains("cli")),
        "{graph:?}"
    );
    for shared in [
        "setup",
        "training",
        "jsonl",
        "potentials",
        "presets",
        "progress",
    ] {
        let deps = graph.get(shared).cloned().unwrap_or_default();
        assert!(
            !deps.contains("cli") && !deps.contains("commands"),
            "{shared} imports upwards: {deps:?}"
        );
    }
}

#[test]
fn no_command_imports_another() {
    let src = src();
    let commands = src.join("commands");
    for f in files(&commands) {
        let rel = f.strip_prefix(&commands).unwrap();
        let own = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let own = own.trim_end_matches(".rs").to_string();
        for p in crate_paths(&code(&f)) {
            if p.first().is_some_and(|m| m == "commands")
                && let Some(other) = p.get(1)
            {
                assert_eq!(other, &own, "{} imports command {other}", f.display());
            }
        }
    }
}

#[test]
fn clap_lives_only_in_the_cli_layer() {
    let src = src();
    for f in files(&src) {
        let t = top(&src, &f);
        if t == "cli" || t == "main" {
            continue;
        }
        assert!(!code(&f).contains("clap"), "{} uses clap", f.display());
    }
}

#[test]
fn no_source_file_is_longer_than_400_lines() {
    for f in files(&src()) {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        assert!(n <= 400, "{} has {n} lines", f.display());
    }
}
