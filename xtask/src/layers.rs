//! `check-deps`, inside a crate: calls flow one way between host-core's
//! modules. A module's files may share its private types, but no two
//! top-level modules may reach each other (`crate::a` in `b` and
//! `crate::b` in `a`), directly or around a longer cycle, and the lower
//! layers never name the ones above them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// (crate source directory, modules that must not name any of these).
const LOWER_LAYERS: &[(&str, &[&str], &[&str])] = &[(
    "crates/host-core/src",
    &[
        "worker",
        "providers",
        "supervise",
        "child",
        "events",
        "paths",
        "claims",
        "par",
        "keys",
    ],
    &["host", "control", "manifest", "lattice", "cli"],
)];

pub(crate) fn check(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for (dir, lower, upper) in LOWER_LAYERS {
        let src = root.join(dir);
        let graph = module_graph(&src)?;
        for module in lower.iter() {
            let uses = graph.get(*module).cloned().unwrap_or_default();
            for name in upper.iter().filter(|u| uses.contains(**u)) {
                problems.push(format!(
                    "{dir}: `{module}` names `crate::{name}`, a layer above it; report up through an interface or channel `{module}` defines"
                ));
            }
        }
        if let Some(cycle) = find_cycle(&graph) {
            problems.push(format!(
                "{dir}: modules import each other: {}",
                cycle.join(" -> ")
            ));
        }
        println!(
            "xtask: check-deps: {dir}: {} modules, calls flow one way",
            graph.len()
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("module layering broken:\n  {}", problems.join("\n  "))
    }
}

/// Top-level module -> the other top-level modules its files name as
/// `crate::x` (the binary's `cli` names the library as `host_core::x`).
fn module_graph(src: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut modules = BTreeMap::new();
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let name = match (path.is_dir(), path.extension().and_then(|e| e.to_str())) {
            (true, _) => path.file_name().and_then(|n| n.to_str()).map(str::to_owned),
            (false, Some("rs")) => path.file_stem().and_then(|n| n.to_str()).map(str::to_owned),
            _ => None,
        };
        let Some(name) = name.filter(|n| n != "lib" && n != "main") else {
            continue;
        };
        let mut text = String::new();
        read_all(&path, &mut text)?;
        modules.insert(name, text);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    Ok(modules
        .into_iter()
        .map(|(name, text)| {
            let uses = names
                .iter()
                .filter(|other| **other != name)
                .filter(|other| {
                    names_module(&text, &format!("crate::{other}"))
                        || names_module(&text, &format!("host_core::{other}"))
                })
                .cloned()
                .collect();
            (name, uses)
        })
        .collect())
}

/// Whether `text` holds `path` followed by `::`, `;`, `,`, `}` or a space
/// (so `crate::host` does not match `crate::hosts`). Comments count too:
/// a doc link to a higher layer is a dependency of the reader's mind.
fn names_module(text: &str, path: &str) -> bool {
    text.match_indices(path).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + path.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && matches!(after, Some(':' | ';' | ',' | '}' | ' ' | ')' | '\n'))
    })
}

fn read_all(path: &Path, out: &mut String) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            read_all(&entry.path(), out)?;
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push_str(
            &fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
        out.push('\n');
    }
    Ok(())
}

/// A cycle in the graph, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_and_names_are_found() {
        let graph: BTreeMap<String, BTreeSet<String>> = [
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec![]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
        .collect();
        assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
        let acyclic: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec![])]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
            .collect();
        assert!(find_cycle(&acyclic).is_none());
        assert!(names_module("use crate::host::{Host};", "crate::host"));
        assert!(!names_module("use crate::hosts;", "crate::host"));
        assert!(!names_module("my_crate::host::x", "crate::host"));
    }

    #[test]
    fn host_core_calls_flow_one_way() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check(root).unwrap();
    }
}
