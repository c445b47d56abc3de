//! The crate's layering, checked on the source (ARCHITECTURE.md, "Layers"):
//! `mesh/` is the shared language and imports neither half; `control/` and
//! `sidecar/` import `mesh/` and never each other; no two modules import each
//! other, directly or around a circle, neither file by file nor between the
//! folders of one half (`sidecar/outbound/` and `sidecar/control_client/`,
//! say); and every source file stays under 800 lines with a `//!` first line.
//!
//! Imports are read from the non-test, non-comment lines of each file:
//! `crate::a::b` paths (with `{...}` groups), `super::x` and `self::x`. A
//! module's imports of its own ancestors or descendants are containment, not
//! a circle (`ratelimit/key.rs` using `ratelimit::RequestFacts`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const HALVES: [&str; 3] = ["control", "sidecar", "mesh"];

/// Module path (`sidecar::outbound::pool`) → source file, for every module
/// of the three halves except binaries and `tests` files.
fn modules(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for half in HALVES {
        let mut stack = vec![root.join(half)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("main.rs") {
                    continue;
                }
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|p| p == "tests") {
                    continue;
                }
                let name = parts.iter().filter(|p| *p != "mod").cloned().collect::<Vec<_>>().join("::");
                out.insert(name, path);
            }
        }
    }
    out
}

/// The code of a file without its tests and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path written after `prefix` (`crate::`, `super::`, `self::`), with
/// `{a, b::c}` groups expanded one level: `x::{a, b::c}` gives `x`, `x::a`, `x::b`.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        let end = rest.find(|c: char| !(is_ident(c) || c == ':')).unwrap_or(rest.len());
        let base = rest[..end].trim_end_matches(':').to_string();
        if base.is_empty() {
            continue;
        }
        out.push(base.clone());
        if rest[end..].starts_with('{') && rest[..end].ends_with("::") {
            let group = &rest[end + 1..];
            let mut depth = 1;
            let close = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(j, _)| j);
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..close].chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let head: String = item.trim().chars().take_while(|&c| is_ident(c) || c == ':').collect();
                        let head = head.split("::").next().unwrap_or("");
                        if !head.is_empty() && head != "self" {
                            out.push(format!("{base}::{head}"));
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn resolve<'a>(modules: &'a BTreeMap<String, PathBuf>, path: &str) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().find_map(|n| modules.get_key_value(&parts[..n].join("::")).map(|(k, _)| k.as_str()))
}

/// Module → the modules it imports (itself excluded).
fn imports(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(root);
    let mut edges = BTreeMap::new();
    for (module, path) in &modules {
        let code = code(path);
        let parent = module.rsplit_once("::").map(|(p, _)| p.to_string());
        let mut targets: Vec<String> = paths_after(&code, "crate::");
        targets.extend(paths_after(&code, "self::").into_iter().map(|p| format!("{module}::{p}")));
        if let Some(parent) = &parent {
            targets.extend(paths_after(&code, "super::").into_iter().map(|p| format!("{parent}::{p}")));
        }
        let set: BTreeSet<String> =
            targets.iter().filter_map(|t| resolve(&modules, t)).filter(|t| *t != module).map(str::to_string).collect();
        edges.insert(module.clone(), set);
    }
    edges
}

fn related(a: &str, b: &str) -> bool {
    a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

/// Strongly connected components of more than one node (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                s.low.entry(v).and_modify(|l| *l = (*l).min(lw));
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                s.low.entry(v).and_modify(|l| *l = (*l).min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s =
        State { edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), next: 0, found: Vec::new() };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_halves_import_only_the_shared_language() {
    let edges = imports(&root());
    let mut wrong = Vec::new();
    for (module, targets) in &edges {
        let half = module.split("::").next().unwrap();
        for target in targets {
            let other = target.split("::").next().unwrap();
            let allowed = other == half || (other == "mesh" && half != "mesh");
            if !allowed {
                wrong.push(format!("{module} imports {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports across the halves:\n{}", wrong.join("\n"));
    // The check sees real imports: the sidecar does stand on the language.
    assert!(edges["sidecar::policy"].contains("mesh::policy"), "{:?}", edges["sidecar::policy"]);
}

#[test]
fn no_module_imports_around_a_circle() {
    let edges = imports(&root());
    // File by file, leaving out containment.
    let files: BTreeMap<String, BTreeSet<String>> =
        edges.iter().map(|(m, ts)| (m.clone(), ts.iter().filter(|t| !related(m, t)).cloned().collect())).collect();
    let found = circles(&files);
    assert!(found.is_empty(), "modules importing each other around a circle: {found:?}");
    // Folder by folder inside each half (`sidecar::outbound`, `control::events`).
    let folder = |m: &str| m.split("::").take(2).collect::<Vec<_>>().join("::");
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, ts) in &edges {
        let entry = folders.entry(folder(m)).or_default();
        entry.extend(ts.iter().map(|t| folder(t)).filter(|t| *t != folder(m)));
    }
    let found = circles(&folders);
    assert!(found.is_empty(), "folders importing each other around a circle: {found:?}");
}

#[test]
fn the_circle_check_finds_a_circle() {
    let edges = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
        ("d".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(circles(&edges), vec![vec!["a".to_string(), "b".to_string(), "c".to_string()]]);
    let paths = paths_after("use crate::x::{a, b::{c, d}, self as y};\nlet z = crate::q::r(1);", "crate::");
    assert_eq!(paths, ["x", "x::a", "x::b", "q::r"]);
}

#[test]
fn every_source_file_is_short_and_says_where_it_sits() {
    let mut wrong = Vec::new();
    let mut files = vec![root().join("lib.rs")];
    for half in HALVES {
        let mut stack = vec![root().join(half)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
    }
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let lines = text.lines().count();
        if lines >= 800 {
            wrong.push(format!("{}: {lines} lines", path.display()));
        }
        if !text.starts_with("//!") {
            wrong.push(format!("{}: no //! first line", path.display()));
        }
    }
    assert!(files.len() > 100, "found only {} files", files.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
