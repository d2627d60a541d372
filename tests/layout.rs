//! The import-circle check: no two files of `src/` name each other, directly or through
//! others. A file names another with a `crate::…`, `super::…` or `self::…` path (in a `use`
//! or in code); `crate::a::Item` names the file of module `a` (its `a.rs` or `a/mod.rs`), and
//! `crate::a::b::Item` the file of `a::b` when `b` is a module; when that file only re-exports
//! `Item` (`pub use x::Item`), the path names the file that defines it as well. A parent's
//! relative path into a child module of its own (`child::Item`, `use child::…`) names the
//! child's file; its `pub use child::…` re-exports and `mod` declarations are not namings. Each binary under
//! `src/bin/` and `src/main.rs` is a crate of its own, whose `crate::` is its own root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Circles allowed for now, each as the files it joins: none. A circle found is a failure;
/// an entry here whose circle is gone fails too, so the list cannot go stale.
const KNOWN_CYCLES: &[&[&str]] = &[];

#[test]
fn no_file_of_src_is_in_an_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = BTreeMap::new();
    read_tree(root, &root.join("src"), &mut files);
    assert!(files.contains_key("src/lib.rs"), "src/ was read");
    let cycles = import_cycles(&files);
    let known: Vec<BTreeSet<&str>> = KNOWN_CYCLES
        .iter()
        .map(|c| c.iter().copied().collect())
        .collect();
    let new: Vec<&BTreeSet<String>> = cycles
        .iter()
        .filter(|c| {
            !known
                .iter()
                .any(|k| c.iter().all(|f| k.contains(f.as_str())))
        })
        .collect();
    let gone: Vec<&BTreeSet<&str>> = known
        .iter()
        .filter(|k| {
            !cycles
                .iter()
                .any(|c| c.iter().any(|f| k.contains(f.as_str())))
        })
        .collect();
    assert!(
        new.is_empty(),
        "import circles between files of src/ (each a set of files that name each other):\n{}",
        new.iter()
            .map(|c| format!("  {}", c.iter().cloned().collect::<Vec<_>>().join(" <-> ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        gone.is_empty(),
        "KNOWN_CYCLES lists circles that are gone; delete them: {gone:?}"
    );
}

/// Every `.rs` file under `dir`, by its path from `root` with `/` between the parts.
fn read_tree(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.strip_prefix(root).unwrap().to_string_lossy();
            let name = name.replace('\\', "/");
            files.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The crate a file belongs to and its module path in it (`src/a/mod.rs` and `src/a.rs` are
/// both `a`); None for a file that is no module of a crate this check knows.
fn module_of(file: &str) -> Option<(String, Vec<String>)> {
    let rest = file.strip_prefix("src/")?.strip_suffix(".rs")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (krate, parts) = match parts.as_slice() {
        ["lib"] => return Some(("lib".into(), vec![])),
        ["main"] => return Some(("main".into(), vec![])),
        ["bin", name] => return Some((format!("bin/{name}"), vec![])),
        ["bin", name, rest @ ..] => (format!("bin/{name}"), rest.to_vec()),
        parts => ("lib".into(), parts.to_vec()),
    };
    let mut path: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
    if matches!(path.last().map(String::as_str), Some("mod" | "main")) {
        path.pop();
    }
    Some((krate, path))
}

/// The sets of files (two or more) that name each other, directly or through others.
fn import_cycles(files: &BTreeMap<String, String>) -> Vec<BTreeSet<String>> {
    // (crate, module path) -> the file that holds the module (inline modules included).
    let mut modules: BTreeMap<(String, Vec<String>), String> = BTreeMap::new();
    let mut scanned = Vec::new();
    for (file, text) in files {
        let Some((krate, module)) = module_of(file) else {
            continue;
        };
        let scan = scan(text);
        for inline in &scan.inline_modules {
            let mut path = module.clone();
            path.extend(inline.iter().cloned());
            modules.insert((krate.clone(), path), file.clone());
        }
        modules.insert((krate.clone(), module.clone()), file.clone());
        scanned.push((file.clone(), krate, module, scan));
    }
    let mut reexports: BTreeMap<(String, Vec<String>), Vec<Reexport>> = BTreeMap::new();
    for (_, krate, module, scan) in &scanned {
        for reexport in &scan.reexports {
            let mut at = module.clone();
            at.extend(reexport.inside.iter().cloned());
            reexports
                .entry((krate.clone(), at))
                .or_default()
                .push(reexport.clone());
        }
    }
    let graph = Graph { modules, reexports };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, krate, module, scan) in &scanned {
        for reference in &scan.paths {
            let mut base = module.clone();
            base.extend(reference.inside.iter().cloned());
            let mut targets = BTreeSet::new();
            graph.resolve(krate, base, &reference.segments, 0, &mut targets);
            targets.remove(file);
            edges.entry(file.clone()).or_default().extend(targets);
        }
    }
    strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect()
}

/// The modules of every crate and what each re-exports.
struct Graph {
    /// (crate, module path) -> the file that holds the module (inline modules included).
    modules: BTreeMap<(String, Vec<String>), String>,
    /// (crate, module path) -> its `pub use`s.
    reexports: BTreeMap<(String, Vec<String>), Vec<Reexport>>,
}

impl Graph {
    /// Adds to `targets` the files that `segments` (a path written in module `base`) names:
    /// the file of the deepest module it goes through, and, when the item after it is a
    /// re-export there, what that re-export names (`depth` bounds a chain of them).
    fn resolve(
        &self,
        krate: &str,
        mut base: Vec<String>,
        segments: &[String],
        depth: usize,
        targets: &mut BTreeSet<String>,
    ) {
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &rest[1..];
            }
            Some("super") => {
                base.pop();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            // A re-export's relative path (`pub use child::Item`) starts in its module.
            Some(_) if depth > 0 => {}
            _ => return,
        }
        while rest.first().is_some_and(|s| s == "super") {
            rest = &rest[1..];
            base.pop();
        }
        while let Some(segment) = rest.first() {
            let mut deeper = base.clone();
            deeper.push(segment.clone());
            if !self
                .modules
                .contains_key(&(krate.to_string(), deeper.clone()))
            {
                break;
            }
            base = deeper;
            rest = &rest[1..];
        }
        let key = (krate.to_string(), base);
        let Some(file) = self.modules.get(&key) else {
            return;
        };
        targets.insert(file.clone());
        let (Some(item), true) = (rest.first(), depth < 8) else {
            return;
        };
        for reexport in self.reexports.get(&key).into_iter().flatten() {
            if reexport.name == *item {
                self.resolve(krate, key.1.clone(), &reexport.segments, depth + 1, targets);
            }
        }
    }
}

/// What one file says that matters here.
#[derive(Default)]
struct Scan {
    /// The inline modules (`mod name { … }`) in the file, each as its path in the file.
    inline_modules: Vec<Vec<String>>,
    /// Every `crate::`/`super::`/`self::` path, each a leaf of its `use` tree.
    paths: Vec<Reference>,
    /// The names a `pub use` makes items of this file's modules.
    reexports: Vec<Reexport>,
}

/// One name a `pub use` gives an item: `pub use a::b::Item as Name`.
#[derive(Clone)]
struct Reexport {
    /// The inline modules around the `pub use` (empty at the file's top).
    inside: Vec<String>,
    /// The name it is known by here (`Name`, or `Item` without `as`).
    name: String,
    /// The path as written (`a`, `b`, `Item`).
    segments: Vec<String>,
}

/// One path and the inline module it was written in.
struct Reference {
    /// The inline modules around it (empty at the file's top).
    inside: Vec<String>,
    /// `crate`, `super` or `self` first, then the names after it.
    segments: Vec<String>,
}

/// The tokens of Rust text that paths are made of: names, `::` and single punctuation;
/// comments, strings and character literals are dropped.
fn tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if (c == 'r' || c == 'b') && raw_string_start(&chars, i).is_some() {
            let (hashes, body) = raw_string_start(&chars, i).unwrap();
            i = body;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '"' && (1..=hashes).all(|h| chars.get(i + h) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c == ':' && next == Some(':') {
            out.push("::".to_string());
            i += 2;
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// At a raw or byte string's start (`r"`, `r#"`, `br"`, `b"`): how many `#` close it, and
/// where its body begins.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    let raw = chars.get(j) == Some(&'r');
    if raw {
        j += 1;
    }
    if !raw && j == i + 1 && chars.get(j) == Some(&'"') {
        return None; // b"…" is an ordinary string here: the `"` branch reads it next.
    }
    let hashes = chars[j.min(chars.len())..]
        .iter()
        .take_while(|c| **c == '#')
        .count();
    // A raw string's letter must not end a longer name (`bar"` is no raw string).
    let after_name = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    (raw && !after_name && chars.get(j + hashes) == Some(&'"')).then_some((hashes, j + hashes + 1))
}

fn scan(text: &str) -> Scan {
    let tokens = tokens(text);
    let mut scan = Scan::default();
    // The modules this file declares in files of their own (`mod name;`): a path that starts
    // with one of their names outside a `pub use` names that file, as `self::name::…` would.
    let children: BTreeSet<&str> = tokens
        .windows(3)
        .filter(|w| w[0] == "mod" && w[2] == ";")
        .map(|w| w[1].as_str())
        .collect();
    // Inside a `pub use` (a re-export, followed through by whoever names it) until its `;`.
    let mut in_reexport = false;
    // The inline modules open here, each with the brace depth inside it.
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i].as_str();
        match token {
            "{" => depth += 1,
            "}" => {
                if open.last().is_some_and(|(_, d)| *d == depth) {
                    open.pop();
                }
                depth -= 1;
            }
            "mod" if tokens.get(i + 2).is_some_and(|t| t == "{") => {
                open.push((tokens[i + 1].clone(), depth + 1));
                scan.inline_modules
                    .push(open.iter().map(|(m, _)| m.clone()).collect());
            }
            ";" => in_reexport = false,
            "use" if i > 0 && (tokens[i - 1] == "pub" || tokens[i - 1] == ")") => {
                in_reexport = true;
                let inside: Vec<String> = open.iter().map(|(m, _)| m.clone()).collect();
                let mut leaves = Vec::new();
                path_tree(&tokens, i + 1, Vec::new(), &mut leaves);
                for mut leaf in leaves.into_iter().filter(|l| !l.glob) {
                    if leaf.segments.last().is_some_and(|s| s == "self") {
                        leaf.segments.pop();
                    }
                    let Some(name) = leaf.alias.or_else(|| leaf.segments.last().cloned()) else {
                        continue;
                    };
                    scan.reexports.push(Reexport {
                        inside: inside.clone(),
                        name,
                        segments: leaf.segments,
                    });
                }
            }
            "crate" | "super" | "self"
                if tokens.get(i + 1).is_some_and(|t| t == "::")
                    && !(i > 0 && (tokens[i - 1] == "::" || tokens[i - 1] == "$")) =>
            {
                let inside: Vec<String> = open.iter().map(|(m, _)| m.clone()).collect();
                let mut leaves = Vec::new();
                i = path_tree(&tokens, i, Vec::new(), &mut leaves);
                for leaf in leaves {
                    scan.paths.push(Reference {
                        inside: inside.clone(),
                        segments: leaf.segments,
                    });
                }
                continue;
            }
            name if !in_reexport
                && children.contains(name)
                && tokens.get(i + 1).is_some_and(|t| t == "::")
                && !(i > 0 && (tokens[i - 1] == "::" || tokens[i - 1] == "$")) =>
            {
                let inside: Vec<String> = open.iter().map(|(m, _)| m.clone()).collect();
                let mut leaves = Vec::new();
                i = path_tree(&tokens, i, vec!["self".to_string()], &mut leaves);
                for leaf in leaves {
                    scan.paths.push(Reference {
                        inside: inside.clone(),
                        segments: leaf.segments,
                    });
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

/// One leaf of a `use` tree (or a path in code).
struct Leaf {
    segments: Vec<String>,
    /// The name after `as`.
    alias: Option<String>,
    /// `…::*`.
    glob: bool,
}

/// Reads the path (or `use` tree) starting at `tokens[i]` under `prefix`, pushing each leaf
/// to `leaves`; returns the index after it.
fn path_tree(
    tokens: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    leaves: &mut Vec<Leaf>,
) -> usize {
    let is_name = |t: &str| {
        t.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
    };
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        Some(_) => {
                            let before = i;
                            i = path_tree(tokens, i, prefix.clone(), leaves);
                            if i == before {
                                i += 1; // not a path: step over it
                            }
                        }
                        None => return i,
                    }
                }
            }
            Some("*") => {
                leaves.push(Leaf {
                    segments: prefix,
                    alias: None,
                    glob: true,
                });
                return i + 1;
            }
            Some(t) if is_name(t) => {
                prefix.push(t.to_string());
                i += 1;
                if tokens.get(i).is_some_and(|t| t == "::") {
                    i += 1;
                    continue;
                }
                let mut alias = None;
                if tokens.get(i).is_some_and(|t| t == "as") {
                    alias = tokens.get(i + 1).cloned();
                    i += 2;
                }
                leaves.push(Leaf {
                    segments: prefix,
                    alias,
                    glob: false,
                });
                return i;
            }
            _ => {
                if !prefix.is_empty() {
                    leaves.push(Leaf {
                        segments: prefix,
                        alias: None,
                        glob: false,
                    });
                }
                return i;
            }
        }
    }
}

/// The strongly connected components of a directed graph (Tarjan's algorithm).
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
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
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            s.found.push(component);
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[cfg(test)]
mod checker {
    use super::*;

    fn cycles(files: &[(&str, &str)]) -> Vec<Vec<String>> {
        let files = files
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        import_cycles(&files)
            .into_iter()
            .map(|c| c.into_iter().collect())
            .collect()
    }

    #[test]
    fn a_circle_through_a_mod_rs_and_a_sibling_is_found() {
        let found = cycles(&[
            ("src/lib.rs", "pub mod a; pub mod b;"),
            (
                "src/a/mod.rs",
                "mod inner;\npub struct Thing;\nuse crate::b::{x::Other, y};",
            ),
            ("src/a/inner.rs", ""),
            ("src/b/mod.rs", "pub mod x;"),
            // Names a's item, so a/mod.rs (and not a/inner.rs).
            ("src/b/x.rs", "pub fn f() -> crate::a::Thing { todo!() }"),
        ]);
        assert_eq!(found, vec![vec!["src/a/mod.rs", "src/b/x.rs"]]);
    }

    #[test]
    fn super_paths_and_three_file_circles_are_found() {
        let found = cycles(&[
            ("src/lib.rs", "pub mod s;"),
            ("src/s/mod.rs", "mod p; mod q; mod r;"),
            ("src/s/p.rs", "use super::q::Q;"),
            ("src/s/q.rs", "use super::{r::R as Renamed};"),
            ("src/s/r.rs", "fn g() { super::super::s::p::P::new(); }"),
        ]);
        assert_eq!(found, vec![vec!["src/s/p.rs", "src/s/q.rs", "src/s/r.rs"]]);
    }

    #[test]
    fn a_parent_using_its_child_that_names_it_back_is_a_circle_but_a_re_export_is_not() {
        let found = cycles(&[
            ("src/lib.rs", "pub mod t; pub mod s;"),
            // t/mod.rs uses its child in code; the child names t/mod.rs's `Terminals`.
            (
                "src/t/mod.rs",
                "mod live;\npub struct Terminals;\nfn f() { live::Parts::new(); }",
            ),
            ("src/t/live.rs", "use super::Terminals;\npub struct Parts;"),
            // s/mod.rs only maps its children; the child names a sibling through it.
            (
                "src/s/mod.rs",
                "mod a; mod b;\npub use a::A;\npub use b::B;",
            ),
            ("src/s/a.rs", "pub struct A;"),
            ("src/s/b.rs", "use super::A;\npub struct B;"),
        ]);
        assert_eq!(found, [vec!["src/t/live.rs", "src/t/mod.rs"]]);
    }

    #[test]
    fn one_way_namings_tests_comments_strings_and_other_crates_are_no_circle() {
        let found = cycles(&[
            ("src/lib.rs", "pub mod a; pub mod b;"),
            // One way only: a names b.
            (
                "src/a.rs",
                "use crate::b::B;\n#[cfg(test)]\nmod tests { use super::*; }",
            ),
            (
                "src/b.rs",
                "pub struct B;\n// use crate::a::A;\nconst S: &str = \"crate::a::A\";\n\
                 const R: &str = r#\"crate::a::\"#; fn l<'a>(_: &'a str) -> char { 'x' }\n\
                 macro_rules! m { () => { $crate::a::A } }",
            ),
            // The binaries' `crate::` is their own root.
            ("src/bin/tool/main.rs", "mod a; use crate::a::A;"),
            ("src/bin/tool/a.rs", "pub struct A;"),
            ("src/main.rs", "use tether::a::A;"),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_circle_behind_a_re_export_is_found() {
        let found = cycles(&[
            (
                "src/lib.rs",
                "pub mod app; pub mod http;\npub use app::{AppState, Other as Renamed};",
            ),
            (
                "src/app.rs",
                "pub struct AppState;\nuse crate::http::ApiError;",
            ),
            ("src/http/mod.rs", "mod error;\npub use error::ApiError;"),
            (
                "src/http/error.rs",
                "use crate::AppState;\npub struct ApiError;",
            ),
        ]);
        // lib.rs's own `pub use app::…` is relative: no naming.
        assert_eq!(found, vec![vec!["src/app.rs", "src/http/error.rs"]]);
    }

    #[test]
    fn a_binarys_modules_can_form_a_circle_of_their_own() {
        let found = cycles(&[
            ("src/bin/tool/main.rs", "mod a; mod b;"),
            ("src/bin/tool/a.rs", "use crate::b::B; pub struct A;"),
            ("src/bin/tool/b.rs", "use crate::a::A; pub struct B;"),
        ]);
        assert_eq!(found, vec![vec!["src/bin/tool/a.rs", "src/bin/tool/b.rs"]]);
    }
}
