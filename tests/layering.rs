//! The layering, checked: every `crate::` (and `super::` reaching the crate root) path in
//! `src/` is read, and an import the matrix below forbids fails the test with its file and
//! line. This file is the matrix's source of truth; `src/lib.rs` and docs/architecture.md
//! state it in words.
//!
//! Imports that break it are listed in [`KNOWN_VIOLATIONS`] (empty since the second pass of
//! issue #31 moved the shared pieces to the floor), each with what should replace it. The list
//! can only shrink: an edge that is
//! no longer there fails the test until it is taken off the list, so the list never claims
//! more than the code does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floor: what every layer above may import. `error`, `record` (provenance, atomic
/// writes), `job` (what a job tells its observer) and `stats` import nothing of the crate; `device`, `chart` and `cost` only `error`;
/// `runtime` `error` and `device`.
const FLOOR: [&str; 8] = [
    "error", "record", "job", "stats", "chart", "cost", "device", "runtime",
];

/// What each top-level module may import, from the bottom up. The floor is below everything;
/// `compute` knows no model; `models`, `hub` and `squad` know no job; `answer` is the shared
/// "answer questions with a model" layer under the jobs that use it; the jobs (`bench`,
/// `eval`, `train`, `serve`) do not import each other; `report` reads the jobs' result types but never
/// runs a model; `study` (`bertbench run`) composes the jobs and the reports; `cli` may use
/// everything.
fn matrix() -> Vec<(&'static str, Vec<&'static str>)> {
    let above_floor = |extra: &[&'static str]| -> Vec<&'static str> {
        FLOOR.iter().chain(extra).copied().collect()
    };
    let answering = ["compute", "hub", "models", "squad"];
    vec![
        ("error", vec![]),
        ("record", vec![]),
        ("job", vec![]),
        ("stats", vec![]),
        ("chart", vec!["error"]),
        ("cost", vec!["error"]),
        ("device", vec!["error"]),
        ("runtime", vec!["error", "device"]),
        ("compute", above_floor(&[])),
        ("hub", above_floor(&[])),
        ("squad", above_floor(&[])),
        ("models", above_floor(&["compute", "hub"])),
        ("answer", above_floor(&answering)),
        ("bench", above_floor(&answering)),
        ("eval", above_floor(&[&answering[..], &["answer"]].concat())),
        (
            "train",
            above_floor(&[&answering[..], &["answer"]].concat()),
        ),
        (
            "serve",
            above_floor(&[&answering[..], &["answer"]].concat()),
        ),
        (
            "report",
            above_floor(&["answer", "bench", "eval", "train", "serve"]),
        ),
        (
            "study",
            above_floor(&[
                "compute", "hub", "models", "squad", "answer", "eval", "bench", "train", "serve",
                "report",
            ]),
        ),
        (
            "cli",
            above_floor(&[
                "compute", "hub", "models", "squad", "answer", "eval", "bench", "train", "serve",
                "report", "study",
            ]),
        ),
    ]
}

/// Imports the matrix forbids that the code has today, and what replaces each (issue #31): none
/// since 2026-12-07. A new exception goes here with its reason, never silently.
const KNOWN_VIOLATIONS: &[(&str, &str, &str)] = &[];

/// Source text with comments, string and character literals blanked out (newlines kept, so
/// line numbers stay), so that a path in a doc comment or a message is not read as an import.
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&b, i) {
            // A raw string: r"...", r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &b[i..j.min(b.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the first is blanked.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                for _ in i..=j.min(b.len() - 1) {
                    out.push(' ');
                }
                i = j + 1;
            } else if b.get(i + 2) == Some(&'\'') {
                out.push_str("   ");
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// The module path of a source file under `src/` (`src/bench/cell.rs` -> `[bench, cell]`,
/// `src/bench/mod.rs` -> `[bench]`, `src/eval.rs` -> `[eval]`).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The first segments of the paths inside a `{...}` group, at its top level.
fn group_heads(text: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        if depth == 0 {
            current.push(c);
        }
    }
    heads.push(current);
    heads
        .iter()
        .filter_map(|h| {
            let head: String = h
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!head.is_empty()).then_some(head)
        })
        .collect()
}

/// Every top-level module a file refers to, with the line of each reference.
fn references(module: &[String], code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let word_start = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b'$');
        let (resolved, after) = if word_start && rest.starts_with("crate::") {
            (Some(0usize), i + "crate::".len())
        } else if word_start && rest.starts_with("super::") {
            let mut j = i;
            let mut ups = 0;
            while code[j..].starts_with("super::") {
                ups += 1;
                j += "super::".len();
            }
            // `super::` from a module `a::b` is `a`; from `a` it is the crate root.
            let depth = module.len().saturating_sub(ups);
            (if depth == 0 { Some(0) } else { None }, j)
        } else {
            (None, i + 1)
        };
        if resolved.is_some() {
            let tail = &code[after..];
            let heads = if let Some(group) = tail.strip_prefix('{') {
                let mut depth = 1;
                let end = group
                    .char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map_or(group.len(), |(k, _)| k);
                group_heads(&group[..end])
            } else {
                let head: String = tail
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                vec![head]
            };
            for h in heads.into_iter().filter(|h| !h.is_empty()) {
                out.push((h, line_of(i)));
            }
        }
        i = if resolved.is_some() {
            after
        } else {
            after.max(i + 1)
        };
        while i < code.len() && !code.is_char_boundary(i) {
            i += 1;
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module -> (imported module -> first file:line that imports it).
fn imports() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = module_path(rel);
        let top = module[0].clone();
        // The crate root and the binary sit above every layer.
        if top == "lib" || top == "main" {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        for (to, line) in references(&module, &code) {
            if to == top {
                continue;
            }
            edges
                .entry(top.clone())
                .or_default()
                .entry(to)
                .or_insert_with(|| format!("src/{}:{line}", rel.display()));
        }
    }
    edges
}

/// What is wrong with `edges` (module -> imported module -> where): an import the matrix
/// forbids, a module it does not place, a known violation no longer there.
fn problems(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<String> {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = matrix()
        .into_iter()
        .map(|(m, to)| (m, to.into_iter().collect()))
        .collect();
    let known: BTreeSet<(&str, &str)> = KNOWN_VIOLATIONS.iter().map(|(a, b, _)| (*a, *b)).collect();
    let mut problems = Vec::new();
    for (from, tos) in edges {
        let Some(ok) = allowed.get(from.as_str()) else {
            problems.push(format!(
                "module `{from}` is not in the layering matrix (tests/layering.rs): place it"
            ));
            continue;
        };
        for (to, at) in tos {
            if !allowed.contains_key(to.as_str()) {
                // `crate::` followed by an item of lib.rs itself, or a macro: not a module.
                continue;
            }
            if !ok.contains(to.as_str()) && !known.contains(&(from.as_str(), to.as_str())) {
                problems.push(format!(
                    "{at}: `{from}` imports `{to}`, which the layering forbids (it may import: {})",
                    ok.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    for (from, to, _) in KNOWN_VIOLATIONS {
        if !edges.get(*from).is_some_and(|tos| tos.contains_key(*to)) {
            problems.push(format!(
                "`{from}` no longer imports `{to}`: take it off KNOWN_VIOLATIONS in tests/layering.rs"
            ));
        }
    }
    problems
}

#[test]
fn every_import_is_one_the_layering_allows() {
    let problems = problems(&imports());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The check fails on a forbidden import planted in the real import graph: a kernel that
/// imports a model, a job that imports another job, the answer layer importing a job, and a
/// module the matrix does not place; and nothing else is reported.
#[test]
fn a_planted_forbidden_import_fails_the_check() {
    let mut edges = imports();
    let plant = |edges: &mut BTreeMap<String, BTreeMap<String, String>>, module: &[&str], code| {
        let path: Vec<String> = module.iter().map(|s| s.to_string()).collect();
        for (to, line) in references(&path, code) {
            edges
                .entry(module[0].to_string())
                .or_default()
                .insert(to, format!("src/{}/planted.rs:{line}", module[0]));
        }
    };
    plant(
        &mut edges,
        &["compute", "packed"],
        "use crate::models::QaModel;",
    );
    plant(
        &mut edges,
        &["bench", "cell"],
        "\nlet t = super::super::train::run::fine_tune;",
    );
    plant(&mut edges, &["answer"], "use crate::serve::Server;");
    plant(&mut edges, &["planted"], "use crate::error::input;");
    let found = problems(&edges);
    let expect = [
        "src/compute/planted.rs:1: `compute` imports `models`",
        "src/bench/planted.rs:2: `bench` imports `train`",
        "src/answer/planted.rs:1: `answer` imports `serve`",
        "module `planted` is not in the layering matrix",
    ];
    for e in expect {
        assert!(
            found.iter().any(|p| p.starts_with(e)),
            "{e:?} not reported: {found:?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:?}");
}

/// The reader itself: comments, strings and lifetimes do not count, groups and `super::`
/// paths that reach the crate root do.
#[test]
fn the_import_reader_sees_paths_and_only_paths() {
    let code = code_only(
        "use crate::{bench::stats, models::{self, QaModel}, error};\n\
         // crate::serve in a comment\n\
         /// [`crate::train`] in a doc link\n\
         let s = \"crate::report in a string\"; let r = r#\"crate::cli\"#;\n\
         fn f<'a>(x: &'a str) -> char { 'c' }\n\
         let y = crate::squad::data::read(super::hub::x);\n",
    );
    let mut found: Vec<(String, usize)> = references(&["eval".to_string()], &code);
    found.sort();
    assert_eq!(
        found,
        vec![
            ("bench".to_string(), 1),
            ("error".to_string(), 1),
            ("hub".to_string(), 6),
            ("models".to_string(), 1),
            ("squad".to_string(), 6),
        ]
    );
    // From a nested module, one `super::` stays inside its top module.
    assert!(references(&["bench".into(), "cell".into()], "super::grid::x").is_empty());
    assert_eq!(
        references(&["bench".into(), "cell".into()], "super::super::train::x"),
        vec![("train".to_string(), 1)]
    );
}
