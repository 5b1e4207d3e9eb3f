//! The house rules, checked on the sources: no module of any crate depends
//! on a sibling that depends back on it (directly or around a longer
//! loop), and only `weir-plugin-host` names wasmtime.
//!
//! A module's dependencies are the `crate::…` and `super::…` paths its
//! files name (in `use` items and in expressions, comments excluded). Two
//! modules are compared where they meet: `proxy::reply` naming
//! `upstream::pool` is an edge `proxy → upstream` among the crate's
//! top-level modules, `proxy::reply` naming `proxy::error` an edge
//! `reply → error` among `proxy`'s children. A child naming its own parent
//! (or the reverse) is containment, not a dependency between rooms.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use weir_tests::workspace_root;

type ModPath = Vec<String>;

/// The crates whose modules must not form cycles.
const CRATES: [&str; 4] = ["config/src", "plugin-host/src", "host/src", "plugin-sdk/src"];

#[test]
fn no_module_cycles_in_any_crate() {
    let mut report = Vec::new();
    for krate in CRATES {
        let root = workspace_root().join(krate);
        let (files, groups) = sibling_edges(&root);
        assert!(files > 3, "{krate}: found only {files} source files");
        for (parent, edges) in &groups {
            if let Some(cycle) = find_cycle(edges) {
                let at = if parent.is_empty() { "crate root".to_owned() } else { parent.join("::") };
                report.push(format!("{krate}: cycle among the children of {at}: {}", cycle.join(" → ")));
            }
        }
    }
    assert!(report.is_empty(), "module cycles:\n{}", report.join("\n"));
}

#[test]
fn only_the_plugin_host_names_wasmtime() {
    let root = workspace_root();
    let mut manifests = vec![root.join("host/Cargo.toml")];
    for dir in ["config", "plugin-host", "plugin-sdk", "tests", "bench"] {
        manifests.push(root.join(dir).join("Cargo.toml"));
    }
    for dir in ["plugins", "tests/plugins"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("read plugins") {
            let manifest = entry.expect("entry").path().join("Cargo.toml");
            if manifest.exists() {
                manifests.push(manifest);
            }
        }
    }
    let naming: Vec<String> = manifests
        .iter()
        .filter(|m| {
            std::fs::read_to_string(m).expect("read manifest").lines().any(|l| l.trim_start().starts_with("wasmtime"))
        })
        .map(|m| m.strip_prefix(&root).unwrap_or(m).display().to_string())
        .collect();
    assert_eq!(naming, ["plugin-host/Cargo.toml"], "crates whose manifest names wasmtime");
}

/// Edges between sibling modules, grouped by the parent they meet in, of
/// the crate rooted at `root`; and how many source files it has.
type Groups = BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>>;

fn sibling_edges(root: &Path) -> (usize, Groups) {
    let files = module_files(root);
    let known: BTreeSet<ModPath> = files.keys().cloned().collect();
    let mut groups = Groups::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for target in references(module, &strip_comments(&text)) {
            let Some(target) = resolve(&known, &target) else { continue };
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common < module.len() && common < target.len() {
                groups
                    .entry(module[..common].to_vec())
                    .or_default()
                    .entry(module[common].clone())
                    .or_default()
                    .insert(target[common].clone());
            }
        }
    }
    (files.len(), groups)
}

/// Every module of the crate rooted at `root`, by path (`lib.rs` is the
/// root, `[]`; `main.rs`, a separate crate, is left out).
fn module_files(root: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root).expect("under root");
            let mut segments: ModPath =
                rel.iter().map(|s| s.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
            match segments.last().map(String::as_str) {
                Some("main") if segments.len() == 1 => continue,
                Some("lib" | "mod") => {
                    segments.pop();
                }
                _ => {}
            }
            out.insert(segments, path);
        }
    }
    out
}

/// The text without `//` comments (doc comments name paths for readers).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal (a URL) is rare in these
            // sources and would only hide a path, never invent one.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The absolute module paths (possibly ending in an item name) that the
/// file of `module` names through `crate::` and `super::`.
fn references(module: &ModPath, text: &str) -> Vec<ModPath> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let boundary =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
        let base = if !boundary {
            None
        } else if rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if rest.starts_with("super::") {
            // In `a/b.rs` (module a::b) `super` is `a`; in `a/mod.rs`
            // (module a) it is the root: both are `module` minus one.
            let mut base = module.clone();
            let mut len = 0;
            while text[i + len..].starts_with("super::") {
                base.pop();
                len += "super::".len();
            }
            Some((base, len))
        } else {
            None
        };
        let Some((base, len)) = base else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let (paths, used) = parse_tree(&text[i + len..]);
        for p in paths {
            let mut full = base.clone();
            full.extend(p);
            out.push(full);
        }
        i += len + used.max(1);
    }
    out
}

/// Parse a use tree after `crate::` (`a::b::C`, `a::{b, c::D}`): the
/// paths it names and the bytes it spans.
fn parse_tree(text: &str) -> (Vec<ModPath>, usize) {
    let mut prefix = Vec::new();
    let mut i = 0;
    let ident_len = |s: &str| s.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
    loop {
        let s = &text[i..];
        if s.starts_with('{') {
            // A group: split at top-level commas, recurse into each.
            let mut depth = 0;
            let mut end = s.len();
            for (k, c) in s.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = k;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let inner = &s[1..end.max(1)];
            let mut paths = Vec::new();
            let mut depth = 0;
            let mut start = 0;
            for (k, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        paths.extend(sub_paths(&prefix, inner[start..k].trim()));
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            paths.extend(sub_paths(&prefix, inner[start..].trim()));
            return (paths, i + end + 1);
        }
        let n = ident_len(s);
        if n == 0 {
            return (if prefix.is_empty() { Vec::new() } else { vec![prefix] }, i);
        }
        prefix.push(s[..n].to_owned());
        i += n;
        if text[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

fn sub_paths(prefix: &ModPath, item: &str) -> Vec<ModPath> {
    if item.is_empty() || item == "self" {
        return vec![prefix.clone()];
    }
    parse_tree(item)
        .0
        .into_iter()
        .map(|p| {
            let mut full = prefix.clone();
            full.extend(p.into_iter().filter(|s| s != "self"));
            full
        })
        .collect()
}

/// The longest known module that `path` starts with.
fn resolve(known: &BTreeSet<ModPath>, path: &ModPath) -> Option<ModPath> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| known.contains(p))
}

/// A cycle in `edges`, if there is one, as the modules around it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(node, edges, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_checker_sees_a_cycle() {
    // The checker itself, on a made-up crate: it must find the loop.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").expect("write");
    std::fs::write(src.join("a.rs"), "use crate::b::Thing;\n").expect("write");
    std::fs::write(src.join("b.rs"), "use crate::{c::{self, Other}, nothing as _};\n// crate::a\n").expect("write");
    std::fs::write(src.join("c.rs"), "fn f() { super::a::g() }\n").expect("write");
    let (_, mut groups) = sibling_edges(src);
    let edges = groups.get_mut(&Vec::new()).expect("edges among the crate root's modules");
    let cycle = find_cycle(edges).expect("a → b → c → a is a cycle");
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    edges.get_mut("c").expect("c").clear();
    assert_eq!(find_cycle(edges), None);
}
