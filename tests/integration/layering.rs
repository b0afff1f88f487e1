//! The house has no circles (issue 22): no two files of the library import each other, directly
//! or around a longer loop. DESIGN.md's layers only point down; a file that both uses and is used
//! by another cannot be read, changed or tested without it, and the pair grows together.
//!
//! # What counts
//! - **A node is a file** of the library (`src/lib.rs` and every file it reaches with `mod`),
//!   also inside one folder-module: `xml/framer.rs` ↔ `xml/stanza.rs` is a cycle even though both
//!   are `xml`. A folder's `mod.rs` is a file like the others: when it re-exports a child
//!   (`pub use framer::Framer`) it depends on the child, so a child that uses something *defined*
//!   in `mod.rs` closes a circle. The way out is the same as between folders: move what both
//!   need into a file of its own that imports neither.
//! - **An edge is a path** in one file that names an item defined in another: `use` items
//!   (including `pub use` re-exports), paths in code, types and patterns, and `crate::`/`super::`
//!   paths inside macro arguments. A path is followed through `use` and `pub use` re-exports to
//!   the file that defines the item, so `crate::xml::Stanza` is an edge to `xml/stanza.rs`, not
//!   to `xml/mod.rs`. A `use` that only names a module (`use crate::xml::ns;`) is no edge by
//!   itself; the paths written through it are.
//! - **Test code is left out**: items under `#[cfg(test)]` (the `tests` modules, test-only
//!   helpers) and `#[test]` functions. A test of the stanza needs a framer to make stanzas, and
//!   that is no layering fault: tests sit above everything they test.
//!
//! # What is allowed
//! [`TANGLED`] lists the folders whose files may import each other, each with why and what
//! would undo it: a cycle all of whose files are inside one such folder passes, one that
//! leaves it and comes back fails. [`ALLOWED`] lists the edges left in on purpose, each with
//! its reason. The test fails on any other cycle, naming its files and the path behind each
//! edge, and on an allowed edge that no longer exists, so the list cannot go stale.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Folders whose files may import each other, each with why and what would undo it: a cycle
/// passes when all its files are inside one of these folders. A cycle that leaves the folder
/// and comes back still fails.
const TANGLED: &[(&str, &str)] = &[
    (
        "src/core/",
        "core/mod.rs holds `Core`, the state every feature's handler takes, and dispatches to \
         those handlers (mod.rs, stanzas.rs, disco.rs name every feature); storage.rs holds the \
         one schema with every feature's tables. To undo: the handlers take a context from a \
         file of its own, and register their namespaces and tables instead of being listed",
    ),
    (
        "src/s2s/",
        "the s2s layer's negotiation, dialback, sm and link files call each other both ways \
         (e.g. bidi.rs <-> negotiate/inbound.rs, outbound/ <-> negotiate/outbound.rs); the s2s \
         layer has its own issue for its target shape (DESIGN.md, s2s: the target shape)",
    ),
    (
        "src/muc/",
        "mod.rs's error_reply is used by room.rs and service.rs, which mod.rs re-exports, and \
         room.rs <-> store.rs share Affiliation and StoredRoom; a small service, one unit \
         until it grows",
    ),
];

/// Edges kept although they close a cycle: `(from, to, why)`, paths relative to the crate root.
const ALLOWED: &[(&str, &str, &str)] = &[(
    "src/core/storage.rs",
    "src/muc/store.rs",
    "the core's storage runs one migration path for every table in the shared database \
     (DESIGN.md: shared state lives in one database), including the MUC service's \
     (muc::store::SCHEMA), while the MUC service stores through the core's Storage; to undo, \
     services hand their migrations to Storage::open",
)];

#[test]
fn no_file_of_the_library_imports_one_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = Graph::of_crate(root, Path::new("src/lib.rs"));
    assert!(
        graph.files.len() > 50,
        "the walk found only {} files",
        graph.files.len()
    );
    let mut unused = Vec::new();
    let mut edges = graph.edges.clone();
    for (from, to, why) in ALLOWED {
        assert!(
            !why.is_empty(),
            "{from} -> {to}: an allowed edge needs a reason"
        );
        if edges.remove(&(from.to_string(), to.to_string())).is_none() {
            unused.push(format!("{from} -> {to}"));
        }
    }
    let inside_one_folder = |files: &Vec<String>| {
        TANGLED
            .iter()
            .any(|(folder, _)| files.iter().all(|f| f.starts_with(folder)))
    };
    let mut cycles = cycles(&edges);
    cycles.retain(|files| !inside_one_folder(files));
    let report = describe(&cycles, &edges);
    assert!(
        cycles.is_empty(),
        "{} import cycle(s) between files of src/:\n{report}",
        cycles.len()
    );
    assert!(
        unused.is_empty(),
        "allowed edges that no longer exist, remove them from ALLOWED: {unused:?}"
    );
}

/// The checker itself: it must see a cycle through a re-export, a `super::` path, a path in
/// code and one inside a macro, and must not see one through test code.
#[test]
fn the_check_finds_a_cycle_through_reexports_super_and_macros_but_not_tests() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "src/lib.rs",
        "pub mod xml;\npub mod config;\npub mod core;\npub mod t;\n",
    );
    // framer -> stanza (through mod.rs's re-export), stanza -> framer (super::).
    write(
        "src/xml/mod.rs",
        "pub mod framer;\npub mod stanza;\npub use stanza::Stanza;\n",
    );
    write(
        "src/xml/framer.rs",
        "use crate::xml::Stanza;\npub struct Limits;\n",
    );
    write(
        "src/xml/stanza.rs",
        "pub struct Stanza;\nfn f() { let _ = super::framer::Limits; }\n",
    );
    // config -> core/config in code, core/config -> config inside a macro's arguments.
    write(
        "src/config.rs",
        "pub struct ConfigError;\nfn f() { crate::core::config::g(); }\n",
    );
    write("src/core/mod.rs", "pub mod config;\n");
    write(
        "src/core/config.rs",
        "pub fn g() { println!(\"{:?}\", crate::config::ConfigError); }\n",
    );
    // t <-> xml/stanza only through test code: no cycle.
    write(
        "src/t.rs",
        "pub struct T;\n#[cfg(test)]\nmod tests { use crate::xml::stanza::Stanza; }\n\
         #[test]\nfn t() { let _ = crate::xml::stanza::Stanza; }\n",
    );
    let graph = Graph::of_crate(dir.path(), Path::new("src/lib.rs"));
    let found = cycles(&graph.edges);
    let found: BTreeSet<Vec<String>> = found.into_iter().collect();
    let expected: BTreeSet<Vec<String>> = [
        vec!["src/config.rs", "src/core/config.rs"],
        vec!["src/xml/framer.rs", "src/xml/stanza.rs"],
    ]
    .into_iter()
    .map(|c| c.into_iter().map(String::from).collect())
    .collect();
    assert_eq!(
        found,
        expected,
        "{}",
        describe(&cycles(&graph.edges), &graph.edges)
    );
}

/// Who imports whom: `(from, to)` file pairs, each with the first path that makes the edge.
type Edges = BTreeMap<(String, String), String>;

struct Module {
    file: usize,
    parent: Option<usize>,
    children: BTreeMap<String, usize>,
    /// Names of the items defined here (outside test code).
    defined: BTreeSet<String>,
    /// `use` items: the name they bring in (`None` for a glob) and the path.
    imports: Vec<(Option<String>, Vec<String>)>,
    /// Paths written here, to resolve into edges, with whether each is a `use`.
    refs: Vec<(Vec<String>, bool)>,
}

struct Graph {
    files: Vec<String>,
    edges: Edges,
}

impl Graph {
    /// The import graph of the crate whose root file is `lib`.
    fn of_crate(root: &Path, lib: &Path) -> Graph {
        let mut walk = Walk {
            root: root.to_owned(),
            files: Vec::new(),
            modules: Vec::new(),
        };
        walk.file(lib.to_owned(), None, None);
        let mut edges = Edges::new();
        for (m, module) in walk.modules.iter().enumerate() {
            for (segments, is_use) in &module.refs {
                let Some(res) = walk.resolve(m, segments, 0) else {
                    continue;
                };
                let (target, is_item) = match res {
                    Res::Item(t) => (t, true),
                    Res::Module(t) => (t, false),
                };
                // A `use` of a module is no edge; a glob's is (it may bring in anything).
                let glob = segments.last().is_some_and(|s| s == "*");
                if !is_item && !(glob && *is_use) {
                    continue;
                }
                let (from, to) = (module.file, walk.modules[target].file);
                if from != to {
                    edges
                        .entry((walk.files[from].clone(), walk.files[to].clone()))
                        .or_insert_with(|| segments.join("::"));
                }
            }
        }
        Graph {
            files: walk.files,
            edges,
        }
    }
}

enum Res {
    Module(usize),
    /// An item defined in (or not found in, but named through) this module.
    Item(usize),
}

struct Walk {
    root: PathBuf,
    files: Vec<String>,
    modules: Vec<Module>,
}

impl Walk {
    /// Reads one file as the module `mod_name` of `parent` and everything it declares.
    fn file(&mut self, path: PathBuf, parent: Option<usize>, mod_name: Option<&str>) -> usize {
        let text = std::fs::read_to_string(self.root.join(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = self.files.len();
        self.files.push(path.to_string_lossy().into_owned());
        let dir = path.parent().unwrap().to_owned();
        let name = path.file_name().unwrap().to_string_lossy();
        // `mod x;` in lib.rs or a mod.rs is x.rs next to it; in foo.rs it is foo/x.rs.
        let children_dir = if name == "lib.rs" || name == "mod.rs" || mod_name.is_none() {
            dir.clone()
        } else {
            dir.join(path.file_stem().unwrap())
        };
        self.module(&parsed.items, file, parent, &dir, &children_dir)
    }

    fn module(
        &mut self,
        items: &[syn::Item],
        file: usize,
        parent: Option<usize>,
        file_dir: &Path,
        children_dir: &Path,
    ) -> usize {
        let m = self.modules.len();
        self.modules.push(Module {
            file,
            parent,
            children: BTreeMap::new(),
            defined: BTreeSet::new(),
            imports: Vec::new(),
            refs: Vec::new(),
        });
        let mut refs = Refs::default();
        for item in items {
            if is_test(item_attrs(item)) {
                continue;
            }
            match item {
                syn::Item::Mod(module) => {
                    let name = module.ident.to_string();
                    let child = match &module.content {
                        Some((_, items)) => {
                            let dir = children_dir.join(&name);
                            self.module(items, file, Some(m), &dir, &dir)
                        }
                        None => {
                            let path = match path_attr(&module.attrs) {
                                Some(p) => file_dir.join(p),
                                None => {
                                    let flat = children_dir.join(format!("{name}.rs"));
                                    if self.root.join(&flat).exists() {
                                        flat
                                    } else {
                                        children_dir.join(&name).join("mod.rs")
                                    }
                                }
                            };
                            self.file(path, Some(m), Some(&name))
                        }
                    };
                    self.modules[m].children.insert(name, child);
                }
                syn::Item::Use(u) => {
                    let mut flat = Vec::new();
                    flatten(&u.tree, &mut Vec::new(), &mut flat);
                    for (alias, path) in flat {
                        self.modules[m].refs.push((path.clone(), true));
                        if alias.as_deref() != Some("_") {
                            self.modules[m].imports.push((alias, path));
                        }
                    }
                }
                other => {
                    if let Some(name) = item_name(other) {
                        self.modules[m].defined.insert(name);
                    }
                    refs.visit_item(other);
                }
            }
        }
        for (alias, path) in refs.uses {
            self.modules[m].refs.push((path.clone(), true));
            self.modules[m].imports.push((alias, path));
        }
        let paths = refs.paths.into_iter().map(|p| (p, false));
        self.modules[m].refs.extend(paths);
        m
    }

    fn resolve(&self, from: usize, segments: &[String], depth: usize) -> Option<Res> {
        if depth > 16 || segments.is_empty() {
            return None;
        }
        let (mut at, rest) = match segments[0].as_str() {
            "crate" => (Res::Module(0), &segments[1..]),
            "self" => (Res::Module(from), &segments[1..]),
            "super" => {
                let mut m = from;
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    m = self.modules[m].parent?;
                    rest = &rest[1..];
                }
                (Res::Module(m), rest)
            }
            name => (self.lookup(from, name, depth)?, &segments[1..]),
        };
        for segment in rest {
            let Res::Module(m) = at else { break };
            if segment == "*" || segment == "self" {
                break;
            }
            at = self.lookup(m, segment, depth).unwrap_or(Res::Item(m));
        }
        Some(at)
    }

    fn lookup(&self, m: usize, name: &str, depth: usize) -> Option<Res> {
        let module = &self.modules[m];
        if let Some(&child) = module.children.get(name) {
            return Some(Res::Module(child));
        }
        if module.defined.contains(name) {
            return Some(Res::Item(m));
        }
        for (alias, path) in &module.imports {
            let brings = match alias {
                Some(a) => a == name,
                None => false,
            };
            if brings {
                // `use x::{self}` and `use x::y as z` both name what the path leads to.
                let path = match path.last().map(String::as_str) {
                    Some("self") => &path[..path.len() - 1],
                    _ => &path[..],
                };
                return self.resolve(m, path, depth + 1);
            }
        }
        for (alias, path) in &module.imports {
            if alias.is_none() {
                if let Some(Res::Module(g)) = self.resolve(m, &path[..path.len() - 1], depth + 1) {
                    if g != m {
                        if let Some(res) = self.lookup(g, name, depth + 1) {
                            return Some(res);
                        }
                    }
                }
            }
        }
        None
    }
}

/// The `(name brought in, path)` pairs of a use tree; `None` for a glob, whose path ends in `*`.
fn flatten(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Option<String>, Vec<String>)>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut path = prefix.clone();
            path.push(name.clone());
            let alias = if name == "self" {
                prefix.last().cloned()
            } else {
                Some(name)
            };
            out.push((alias, path));
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            path.push(r.ident.to_string());
            out.push((Some(r.rename.to_string()), path));
        }
        syn::UseTree::Glob(_) => {
            let mut path = prefix.clone();
            path.push("*".into());
            out.push((None, path));
        }
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                flatten(tree, prefix, out);
            }
        }
    }
}

/// Paths in the code of one module (not in its child modules, not in test code).
#[derive(Default)]
struct Refs {
    paths: Vec<Vec<String>>,
    /// `use` items inside function bodies, taken as the module's own.
    uses: Vec<(Option<String>, Vec<String>)>,
}

impl<'a> Visit<'a> for Refs {
    fn visit_item_mod(&mut self, _: &'a syn::ItemMod) {}

    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        flatten(&u.tree, &mut Vec::new(), &mut self.uses);
    }

    fn visit_item_fn(&mut self, f: &'a syn::ItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'a syn::ImplItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_path(&mut self, path: &'a syn::Path) {
        if path.segments.len() > 1 {
            self.paths
                .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'a syn::Macro) {
        self.visit_path(&mac.path);
        macro_paths(mac.tokens.clone(), &mut self.paths);
    }
}

/// `a::b::c` sequences in a macro's tokens (its arguments are not parsed as Rust).
fn macro_paths(tokens: proc_macro2::TokenStream, out: &mut Vec<Vec<String>>) {
    use proc_macro2::TokenTree;
    let mut current: Vec<String> = Vec::new();
    let mut colons = 0;
    let flush = |current: &mut Vec<String>, out: &mut Vec<Vec<String>>| {
        if current.len() > 1 {
            out.push(std::mem::take(current));
        }
        current.clear();
    };
    for tree in tokens {
        match tree {
            TokenTree::Ident(ident) => {
                if colons != 2 {
                    flush(&mut current, out);
                }
                current.push(ident.to_string());
                colons = 0;
            }
            TokenTree::Punct(p) if p.as_char() == ':' && !current.is_empty() => {
                colons += 1;
            }
            TokenTree::Group(g) => {
                flush(&mut current, out);
                colons = 0;
                macro_paths(g.stream(), out);
            }
            _ => {
                flush(&mut current, out);
                colons = 0;
            }
        }
    }
    flush(&mut current, out);
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::ExternCrate(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::ForeignMod(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::TraitAlias(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

fn item_name(item: &syn::Item) -> Option<String> {
    let ident = match item {
        syn::Item::Const(i) => &i.ident,
        syn::Item::Enum(i) => &i.ident,
        syn::Item::Fn(i) => &i.sig.ident,
        syn::Item::Macro(i) => i.ident.as_ref()?,
        syn::Item::Static(i) => &i.ident,
        syn::Item::Struct(i) => &i.ident,
        syn::Item::Trait(i) => &i.ident,
        syn::Item::TraitAlias(i) => &i.ident,
        syn::Item::Type(i) => &i.ident,
        syn::Item::Union(i) => &i.ident,
        _ => return None,
    };
    Some(ident.to_string())
}

/// `#[test]`, or a `#[cfg(…)]` that mentions `test` (`cfg(test)`, `cfg(any(test, …))`).
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("test")
            || (a.path().is_ident("cfg")
                && a.meta.require_list().is_ok_and(|l| {
                    l.tokens
                        .clone()
                        .into_iter()
                        .any(|t| matches!(t, proc_macro2::TokenTree::Ident(i) if i == "test"))
                }))
    })
}

fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// The strongly connected components of more than one file (Tarjan), each sorted.
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let nodes: Vec<&String> = nodes.into_iter().collect();
    let index_of = |n: &String| nodes.binary_search(&n).unwrap();
    let mut out_edges = vec![Vec::new(); nodes.len()];
    for (a, b) in edges.keys() {
        out_edges[index_of(a)].push(index_of(b));
    }
    struct Tarjan<'g> {
        out: &'g [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        found: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.out[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(i) if self.on_stack[w] => self.low[v] = self.low[v].min(i),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        out: &out_edges,
        index: vec![None; nodes.len()],
        low: vec![0; nodes.len()],
        on_stack: vec![false; nodes.len()],
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in 0..nodes.len() {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    let mut found: Vec<Vec<String>> = t
        .found
        .into_iter()
        .map(|c| {
            let mut c: Vec<String> = c.into_iter().map(|i| nodes[i].clone()).collect();
            c.sort();
            c
        })
        .collect();
    found.sort();
    found
}

/// Each cycle as a shortest loop through its first file, then every edge inside it with the
/// path that makes it.
fn describe(cycles: &[Vec<String>], edges: &Edges) -> String {
    let mut out = String::new();
    for files in cycles {
        let inside = |f: &String| files.contains(f);
        let start = &files[0];
        // Breadth-first back to `start` inside the component.
        let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut end = None;
        'search: while let Some(at) = queue.pop_front() {
            for (a, b) in edges.keys() {
                if a == at && inside(b) {
                    if b == start {
                        end = Some(at);
                        break 'search;
                    }
                    if !came_from.contains_key(b) {
                        came_from.insert(b, at);
                        queue.push_back(b);
                    }
                }
            }
        }
        let mut back = Vec::new();
        let mut at = end.expect("a component has a loop");
        while at != start {
            back.push(at.clone());
            at = came_from[at];
        }
        let mut loop_ = vec![start.clone()];
        loop_.extend(back.into_iter().rev());
        loop_.push(start.clone());
        let _ = std::fmt::Write::write_fmt(&mut out, format_args!("- {}\n", loop_.join(" -> ")));
        for ((a, b), path) in edges {
            if inside(a) && inside(b) {
                let _ =
                    std::fmt::Write::write_fmt(&mut out, format_args!("    {a} -> {b}: {path}\n"));
            }
        }
    }
    out
}
