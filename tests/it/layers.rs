//! The layer map in `src/lib.rs` holds: no module imports from a layer
//! above its own, and no files import each other in a circle. And no
//! function in `src/` is longer than [`MAX_FN_LINES`].
//!
//! Imports are read as text from every `crate::`, `super::` and `self::`
//! path in the code, and every path that starts at one of the file's own
//! child modules (`mod batch;` … `batch::create`), with comments and inline
//! `#[cfg(test)] mod … { }` blocks left out and `use` groups expanded, and
//! resolved to the file that defines the module. A `mod.rs` is a file like
//! any other (it may hold types and handlers); only a file's use of its own
//! ancestors (`super::ServerState`) is no edge for circles, since the
//! ancestor declares it and a child reading its parent is the module tree
//! itself, not a loop between peers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Layer number of each top-level module, from lib.rs's numbered list.
fn layers() -> BTreeMap<String, usize> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read lib.rs");
    let mut map = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((n, body)) = rest.split_once(". ") else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        let head = body.split(':').next().unwrap_or_default();
        for name in head.split('`').skip(1).step_by(2) {
            map.insert(name.to_string(), n);
        }
    }
    assert!(map.len() >= 6, "lib.rs's layer list not found: {map:?}");
    map
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/pipeline/client.rs` → [pipeline, client].
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// The file defining the longest prefix of `path` that is a module.
fn file_of(path: &[String]) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| {
        let base = src().join(path[..n].join("/"));
        [base.with_extension("rs"), base.join("mod.rs")]
            .into_iter()
            .find(|f| f.is_file())
    })
}

/// The code of a file without comments and without its inline test
/// module (`#[cfg(test)]` then `mod name {`, by convention at the end). A
/// `#[cfg(test)]` on anything else (a function, `mod tests;`) cuts nothing.
fn code(text: &str) -> String {
    let inline_tests = text.match_indices("#[cfg(test)]").find(|(i, a)| {
        let next = text[i + a.len()..].trim_start();
        next.starts_with("mod ") && next.lines().next().is_some_and(|l| l.ends_with('{'))
    });
    let text = &text[..inline_tests.map_or(text.len(), |(i, _)| i)];
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `use a::{b, c::{d, e}}` → [a::b, a::c::d, a::c::e].
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&inner[start..]);
    out.into_iter()
        .filter(|s| !s.is_empty())
        .flat_map(|s| expand(&format!("{prefix}{s}")))
        .collect()
}

/// Absolute module paths a file refers to.
fn references(file: &Path) -> BTreeSet<Vec<String>> {
    let text = code(&std::fs::read_to_string(file).expect("read"));
    let here = module_of(file);
    // The file's own child modules (`mod batch;`), which its code names
    // without a prefix (`batch::create`, `use batch::Batches`).
    let children: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = ["pub(crate) ", "pub(super) ", "pub "]
                .iter()
                .find_map(|p| l.strip_prefix(p))
                .unwrap_or(l);
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect();
    let mut paths = Vec::new();
    // `use` statements, which may span lines: from a line starting one to
    // its `;`.
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let t = ["pub(crate) ", "pub(super) ", "pub "]
            .iter()
            .find_map(|p| t.strip_prefix(p))
            .unwrap_or(t);
        if t.starts_with("use ") {
            let at = offset + line.len() - line.trim_start().len();
            let stmt = &text[at..];
            let stmt =
                &stmt[stmt.find("use ").unwrap_or(0) + 4..stmt.find(';').unwrap_or(stmt.len())];
            paths.extend(expand(stmt));
        }
        offset += line.len();
    }
    // Paths written in place: `crate::a::b::f(..)`, `super::x::Y`,
    // `batch::create`.
    let bytes = text.as_bytes();
    let starts = ["crate", "super", "self"]
        .into_iter()
        .chain(children.iter().map(String::as_str))
        .map(|s| format!("{s}::"));
    for start in starts {
        for (i, _) in text.match_indices(&start) {
            if i > 0
                && (bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':')
            {
                continue;
            }
            let end = text[i..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(text.len(), |e| i + e);
            paths.push(text[i..end].to_string());
        }
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let mut segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            let mut abs: Vec<String> = match segs.first() {
                Some(&"crate") => {
                    segs.remove(0);
                    Vec::new()
                }
                Some(&"super") => {
                    // Each `super` is one module up (a mod.rs is its folder).
                    let mut base = here.clone();
                    while segs.first() == Some(&"super") {
                        segs.remove(0);
                        base.pop();
                    }
                    base
                }
                Some(&"self") => {
                    segs.remove(0);
                    here.clone()
                }
                Some(child) if children.contains(*child) => here.clone(),
                _ => return None,
            };
            abs.extend(segs.iter().map(|s| s.to_string()));
            (!abs.is_empty()).then_some(abs)
        })
        .collect()
}

#[test]
fn imports_follow_the_layer_map_without_circles() {
    let layers = layers();
    let mut all = Vec::new();
    files(&src(), &mut all);
    all.retain(|f| {
        f.file_name()
            .is_some_and(|n| n != "tests.rs" && n != "main.rs")
    });
    let layer_of = |m: &[String]| m.first().and_then(|top| layers.get(top)).copied();

    let mut upward = Vec::new();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for file in &all {
        let here = module_of(file);
        let Some(mine) = layer_of(&here) else {
            continue;
        };
        for target in references(file) {
            if let Some(theirs) = layer_of(&target) {
                if theirs > mine {
                    upward.push(format!(
                        "{} (layer {mine}) uses crate::{} (layer {theirs})",
                        file.strip_prefix(src()).unwrap().display(),
                        target.join("::")
                    ));
                }
            }
            let Some(to) = file_of(&target) else { continue };
            // `to` is an ancestor when its module is a prefix of ours.
            let ancestor = here.starts_with(&module_of(&to));
            if to != *file && !ancestor {
                edges.entry(file.clone()).or_default().insert(to);
            }
        }
    }
    // Circles: a depth-first search that reports each back edge's loop.
    let mut circles = BTreeSet::new();
    fn visit(
        f: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
        circles: &mut BTreeSet<String>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == f) {
            // The loop written out, back to where it starts.
            let names: Vec<String> = stack[i..]
                .iter()
                .chain([f])
                .map(|p| p.strip_prefix(src()).unwrap().display().to_string())
                .collect();
            circles.insert(names.join(" -> "));
            return;
        }
        if !done.insert(f.clone()) {
            return;
        }
        stack.push(f.clone());
        for to in edges.get(f).into_iter().flatten() {
            visit(to, edges, stack, done, circles);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for f in edges.keys() {
        visit(f, &edges, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        upward.is_empty() && circles.is_empty(),
        "imports that run up a layer (see src/lib.rs):\n{}\n\nfiles that import each other in a circle:\n{}",
        upward.join("\n"),
        circles.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The longest a function in `src/` may be, in lines from `fn` to its
/// closing brace: one screen, as issue 24 asks ("no function longer than
/// ~150 lines"), so that a long one is split by concern when it is written.
const MAX_FN_LINES: usize = 150;

/// `text` with comments, string and char literals blanked (newlines kept),
/// so that braces are only the code's.
fn blanked(text: &str) -> String {
    let s = text.as_bytes();
    let mut out = s.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to.min(s.len())] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let word = |i: usize| i > 0 && (s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
    let mut i = 0;
    while i < s.len() {
        let rest = &text[i..];
        let end = if rest.starts_with("//") {
            rest.find('\n').map_or(s.len(), |n| i + n)
        } else if rest.starts_with("/*") {
            rest[2..].find("*/").map_or(s.len(), |n| i + n + 4)
        } else if (s[i] == b'r' && (!word(i) || (s[i - 1] == b'b' && !word(i - 1))))
            && rest[1..].trim_start_matches('#').starts_with('"')
        {
            let hashes = rest[1..].len() - rest[1..].trim_start_matches('#').len();
            let close = format!("\"{}", "#".repeat(hashes));
            let open = 2 + hashes;
            rest[open..]
                .find(&close)
                .map_or(s.len(), |n| i + open + n + close.len())
        } else if s[i] == b'"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != b'"' {
                j += if s[j] == b'\\' { 2 } else { 1 };
            }
            j + 1
        } else if s[i] == b'\'' {
            // A char literal ('x', '\n', '\u{7f}'), not a lifetime ('a).
            let len = match s.get(i + 1) {
                Some(b'\\') => rest[2..].find('\'').map(|n| n + 3),
                Some(_) => rest[1..].chars().next().and_then(|c| {
                    (rest[1 + c.len_utf8()..].starts_with('\'')).then(|| c.len_utf8() + 2)
                }),
                None => None,
            };
            i + len.unwrap_or(1)
        } else {
            i += 1;
            continue;
        };
        blank(&mut out, i, end);
        i = end.max(i + 1);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Each function of `text` with a body: its name, first line and length.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let code = blanked(text);
    let line_at = |i: usize| code[..i].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (at, _) in code.match_indices("fn ") {
        if at > 0 && code.as_bytes()[at - 1].is_ascii_alphanumeric() {
            continue;
        }
        let name: String = code[at + 3..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let Some(open) = code[at..].find(['{', ';']).map(|n| at + n) else {
            continue;
        };
        if name.is_empty() || code.as_bytes()[open] == b';' {
            continue; // a declaration (trait method, `fn(..)` type)
        }
        let mut depth = 0usize;
        let close = code[open..].char_indices().find_map(|(n, c)| {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(open + n)
        });
        let close = close.unwrap_or(code.len());
        found.push((name, line_at(at), line_at(close) - line_at(at) + 1));
    }
    found
}

#[test]
fn functions_fit_on_a_screen() {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut long = Vec::new();
    for file in &all {
        let text = std::fs::read_to_string(file).expect("read source");
        for (name, line, lines) in functions(&text) {
            if lines > MAX_FN_LINES {
                let rel = file.strip_prefix(src()).unwrap().display().to_string();
                long.push(format!("src/{rel}:{line} fn {name}: {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions longer than {MAX_FN_LINES} lines (split them by concern):\n{}",
        long.join("\n")
    );
}

#[test]
fn function_lengths_are_measured_outside_strings_and_comments() {
    let text = "fn a() {\n    let s = \"}\";\n    let c = '{';\n    // }\n    let r = r#\"}\"#;\n    let b = br\"{\";\n}\nfn b<'x>(v: &'x str) -> &'x str {\n    v\n}\n";
    let found = functions(text);
    assert_eq!(
        found,
        vec![("a".to_string(), 1, 7), ("b".to_string(), 8, 3)],
        "{found:?}"
    );
}
