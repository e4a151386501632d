//! The modules of each crate form layers: no module depends, directly or through others, on a
//! module that depends on it. Checked on the source text: every `crate::` and `super::` path in
//! non-test code is an edge from the module it is written in to the module it names (the longest
//! module prefix of the path); the graph must have no cycle (Tarjan's strongly connected
//! components). A module's `mod child;` declaration is not an edge; its `pub use child::Item` is.
//! Also: the transport (`connection/`) names no job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source text with comments, string and character literals blanked out, and `#[cfg(test)]`
/// items removed.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
            continue;
        }
        if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            out.push('"');
            i += 1;
            continue;
        }
        // A character literal ('x', '\n', '"'), not a lifetime ('a).
        if c == '\'' {
            let close = if next == Some('\\') { chars.get(i + 3) } else { chars.get(i + 2) };
            if close == Some(&'\'') {
                out.push_str("' '");
                i += if next == Some('\\') { 4 } else { 3 };
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    strip_test_items(&out)
}

/// Removes every item that follows `#[cfg(test)]` (a block up to its closing brace, or a line).
fn strip_test_items(code: &str) -> String {
    let mut out = String::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut depth = 0i64;
        let mut opened = false;
        for item in lines.by_ref() {
            depth += item.matches('{').count() as i64 - item.matches('}').count() as i64;
            opened |= item.contains('{');
            if (opened && depth <= 0) || (!opened && item.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    out
}

/// Every module of the crate under `src` (`crate` for its root), by path, with its code.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(src).into_iter().filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "rs") || path.starts_with(src.join("bin")) {
            continue;
        }
        let rel = path.strip_prefix(src).expect("under src");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let file = parts.pop().expect("a file name");
        if file != "mod.rs" && file != "lib.rs" && file != "main.rs" {
            parts.push(file.trim_end_matches(".rs").to_string());
        }
        let name = if parts.is_empty() { "crate".to_string() } else { parts.join("::") };
        if file == "main.rs" {
            continue;
        }
        out.insert(name, code_only(&std::fs::read_to_string(path).expect("read")));
    }
    out
}

fn ident_path(code: &str, start: usize) -> Vec<String> {
    let mut segs = Vec::new();
    let mut rest = &code[start..];
    loop {
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segs.push(rest[..end].to_string());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    segs
}

/// The module `segs` (a path from the crate root) lands in: its longest prefix that is a module.
fn target(modules: &BTreeMap<String, String>, segs: &[String]) -> String {
    for n in (1..=segs.len()).rev() {
        let name = segs[..n].join("::");
        if modules.contains_key(&name) {
            return name;
        }
    }
    "crate".into()
}

/// Edges module -> module for one crate.
fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, code) in modules {
        let here: Vec<String> = if name == "crate" { vec![] } else { name.split("::").map(String::from).collect() };
        let mut found = BTreeSet::new();
        for (pos, _) in code.match_indices("crate::") {
            // `$crate::` in macros and other crates' `..._crate::` names are not paths from here.
            let before = code[..pos].chars().last();
            if before.is_some_and(|c| c == '$' || c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            found.insert(target(modules, &ident_path(code, pos + "crate::".len())));
        }
        for (pos, _) in code.match_indices("super::") {
            let before = code[..pos].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut base = here.clone();
            base.pop();
            let mut rest = pos + "super::".len();
            while code[rest..].starts_with("super::") {
                base.pop();
                rest += "super::".len();
            }
            base.extend(ident_path(code, rest));
            found.insert(target(modules, &base));
        }
        found.remove(name);
        out.insert(name.clone(), found);
    }
    out
}

/// Tarjan's strongly connected components with more than one member.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(targets) = s.graph.get(v) {
            for w in targets {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
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
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check_crate(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    assert!(modules.len() > 5, "found only {:?} under {}", modules.keys(), src.display());
    let graph = edges(&modules);
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles among the modules of {}: {found:?}\nedges: {graph:#?}", src.display());
    graph
}

#[test]
fn the_actors_crate_has_no_import_cycle_and_its_transport_names_no_job() {
    let graph = check_crate(&root().join("actors/src"));
    // The transport is `connection` and its submodules (`connection/*.rs`).
    let parts: Vec<&String> = graph.keys().filter(|m| *m == "connection" || m.starts_with("connection::")).collect();
    assert!(parts.len() > 1, "connection's submodules: {parts:?}");
    for part in parts {
        let uses = &graph[part];
        assert!(uses.iter().all(|m| !m.starts_with("jobs") && !m.starts_with("agents")), "{part}: {uses:?}");
    }
    for entry in std::fs::read_dir(root().join("actors/src/connection")).expect("connection/") {
        let path = entry.expect("entry").path();
        let code = code_only(&std::fs::read_to_string(&path).expect("read"));
        for job in
            ["KeepAlive", "AgentInfo", "AgentGroupsSend", "Integrity", "Registration", "MasterJobs", "WorkerJobs"]
        {
            assert!(!code.contains(job), "{} names {job}", path.display());
        }
    }
    // The layers the crate's documentation gives, bottom up: nothing below depends on above.
    for (low, high) in [
        ("connection", "master"),
        ("connection", "worker"),
        ("registry::store", "jobs::runtime"),
        ("supervise", "jobs::runtime"),
        ("agents::session", "agents::hub"),
        ("agents::hub", "agents::session"),
    ] {
        assert!(!graph[low].contains(high), "{low} depends on {high}");
    }
}

#[test]
fn the_node_crate_has_no_import_cycle() {
    let graph = check_crate(&root().join("src"));
    assert!(!graph["api"].contains("node::startup") && !graph["api"].contains("node"), "{:?}", graph["api"]);
    assert!(!graph["metrics"].iter().any(|m| m.starts_with("node")), "{:?}", graph["metrics"]);
}

#[test]
fn the_checker_finds_a_cycle_when_there_is_one() {
    let mut modules = BTreeMap::new();
    modules.insert("crate".to_string(), "pub mod a; pub mod b;".to_string());
    modules.insert("a".to_string(), code_only("use crate::b::Thing; // crate::c in a comment\n"));
    modules.insert("b".to_string(), code_only("fn f() { super::a::g(); let s = \"crate::c\"; }"));
    modules.insert("c".to_string(), code_only("#[cfg(test)]\nmod tests {\n    use crate::a::X;\n}\n"));
    let graph = edges(&modules);
    assert_eq!(graph["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(graph["b"], BTreeSet::from(["a".to_string()]));
    assert!(graph["c"].is_empty(), "test code and strings are not edges");
    assert_eq!(cycles(&graph), vec![vec!["a".to_string(), "b".to_string()]]);
}
