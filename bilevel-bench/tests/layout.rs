//! The layout stays acyclic: no source file of the three crates reaches, through the
//! `crate::`/`super::` paths it uses, back to itself. A cycle between files means two modules
//! that cannot be understood (or moved) one without the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module path of every `.rs` file under `src` (`run/mod.rs` is `run`, `lib.rs` the root).
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    parts.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    parts.pop();
                }
                out.insert(parts, path);
            }
        }
    }
    out
}

/// Expands a use tree (`a::{b, c::d}`) into its paths.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&inner[start..]);
        return parts
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .flat_map(expand)
            .collect();
    }
    match tree.split_once("::") {
        Some((head, rest)) => expand(rest)
            .into_iter()
            .map(|mut p| {
                p.insert(0, head.trim().to_string());
                p
            })
            .collect(),
        None => vec![vec![tree.split(" as ").next().unwrap().trim().to_string()]],
    }
}

/// The modules `file` (module `me`) refers to through `crate::` and `super::` paths, outside
/// comments and its test module.
fn references(
    me: &[String],
    file: &Path,
    known: &BTreeMap<Vec<String>, PathBuf>,
) -> BTreeSet<Vec<String>> {
    let text = std::fs::read_to_string(file).unwrap();
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for anchor in ["crate::", "super::"] {
        for (at, _) in code.match_indices(anchor) {
            if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
            {
                continue;
            }
            let rest = &code[at + anchor.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || "_:{}, \n".contains(c)))
                .unwrap_or(rest.len());
            let mut tree = rest[..end]
                .trim_end_matches([':', ',', ' ', '\n'])
                .to_string();
            // An unbalanced tail (the path ended inside a group) is cut at the last full group.
            while tree.matches('{').count() != tree.matches('}').count() {
                tree.pop();
            }
            // `super::` is the parent of the module (of `run` for `run/iterate.rs`, of the
            // root for `run/mod.rs`).
            let base: Vec<String> = if anchor == "crate::" {
                Vec::new()
            } else {
                me[..me.len().saturating_sub(1)].to_vec()
            };
            for path in expand(&tree) {
                let full: Vec<String> = base.iter().cloned().chain(path).collect();
                if let Some(k) = (1..=full.len())
                    .rev()
                    .find(|&k| known.contains_key(&full[..k]))
                {
                    if full[..k] != *me {
                        found.insert(full[..k].to_vec());
                    }
                }
            }
        }
    }
    found
}

/// A cycle in `edges`, if there is one.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            return Some(path[i..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_source_file_imports_itself_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["bilevel-optim", "bilevel-models", "bilevel-bench"] {
        let known = modules(&root.join(krate).join("src"));
        let edges: BTreeMap<_, _> = known
            .iter()
            .map(|(m, f)| (m.clone(), references(m, f, &known)))
            .collect();
        assert!(
            edges.values().map(BTreeSet::len).sum::<usize>() > known.len() / 2,
            "{krate}: too few references found; the scan is broken"
        );
        if let Some(cycle) = find_cycle(&edges) {
            let names: Vec<String> = cycle
                .iter()
                .map(|m| format!("{krate}/src/{}", m.join("/")))
                .collect();
            panic!("import cycle: {} → back to the first", names.join(" → "));
        }
    }
}

/// The scan itself finds a planted cycle and expands grouped imports.
#[test]
fn the_scan_sees_grouped_imports_and_cycles() {
    let paths = expand("{a::{b, c::d}, e as f}");
    assert_eq!(
        paths,
        vec![
            vec!["a".to_string(), "b".into()],
            vec!["a".into(), "c".into(), "d".into()],
            vec!["e".into()],
        ]
    );
    let m = |s: &str| vec![s.to_string()];
    let edges = BTreeMap::from([
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::from([m("c")])),
        (m("c"), BTreeSet::from([m("a")])),
    ]);
    assert_eq!(find_cycle(&edges).unwrap().len(), 3);
}
