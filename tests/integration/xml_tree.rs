//! What a conforming namespace-aware parser makes of a stanza: the tree of expanded names,
//! attributes by expanded name and character data that a backend's parser sees. Built with
//! quick-xml's `NsReader`, independently of fedgate's framer, so that comparing the tree of
//! what fedgate received with the tree of what it forwards tests the round trip (issue 19).
//!
//! Shared by the property test (tests/integration/roundtrip.rs) and the fuzz targets
//! (fuzz/src/lib.rs includes this file by path).

use std::collections::BTreeMap;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// An element by expanded name; namespace declarations are not attributes (their prefixes are
/// spelling, not meaning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    pub ns: String,
    pub local: String,
    /// (namespace name, local name) → normalized value; "" is no namespace.
    pub attrs: BTreeMap<(String, String), String>,
    pub children: Vec<Node>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Tree),
    /// Character data with adjacent text, references and CDATA merged.
    Text(String),
}

fn ns_of(r: ResolveResult<'_>, what: &str) -> Result<String, String> {
    match r {
        ResolveResult::Bound(ns) => Ok(ns.0.to_owned()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(p) => Err(format!("{what}: undeclared prefix {p:?}")),
    }
}

fn push_text(children: &mut Vec<Node>, text: &str) {
    if text.is_empty() {
        return;
    }
    match children.last_mut() {
        Some(Node::Text(t)) => t.push_str(text),
        _ => children.push(Node::Text(text.to_owned())),
    }
}

/// Parses `doc` (a stream header followed by at least one complete top-level element; the
/// stream need not be closed) and returns the tree of the first top-level element.
///
/// `remap: Some((from, to))` gives the tree that a router means when it re-targets the stanza
/// to a stream whose content namespace is `to`: a name bound to `from` through a declaration
/// on the stream header or on the stanza's own start tag is in `to` instead (declarations
/// further down keep their meaning).
pub fn first_stanza(doc: &str, remap: Option<(&str, &str)>) -> Result<Tree, String> {
    let mut reader = NsReader::from_str(doc);
    // The root, then the open elements of the stanza.
    let mut depth = 0usize;
    let mut stack: Vec<Tree> = Vec::new();
    // Every namespace declaration in scope: (prefix, depth of the element declaring it).
    let mut decls: Vec<(Option<String>, usize)> = Vec::new();
    loop {
        let (res, event) = reader.read_resolved_event().map_err(|e| e.to_string())?;
        let (start, empty) = match event {
            Event::Start(s) => (Some(s), false),
            Event::Empty(s) => (Some(s), true),
            Event::End(_) => {
                depth -= 1;
                decls.retain(|(_, d)| *d < depth);
                if depth == 0 {
                    return Err("the stream closed before a stanza".into());
                }
                let done = stack.pop().expect("an open element");
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(done)),
                    None => return Ok(done),
                }
                continue;
            }
            Event::Text(t) if depth > 1 => {
                let t = t.xml10_content();
                push_text(&mut stack.last_mut().unwrap().children, &t);
                continue;
            }
            Event::CData(c) if depth > 1 => {
                let t = c.xml10_content();
                push_text(&mut stack.last_mut().unwrap().children, &t);
                continue;
            }
            Event::GeneralRef(r) if depth > 1 => {
                let mut tmp = [0u8; 4];
                let t: &str = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.encode_utf8(&mut tmp),
                    None => quick_xml::escape::resolve_predefined_entity(&r)
                        .ok_or("undefined entity")?,
                };
                push_text(&mut stack.last_mut().unwrap().children, t);
                continue;
            }
            Event::Eof => return Err("no complete stanza".into()),
            Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {
                return Err("restricted XML".into())
            }
            _ => continue,
        };
        let start = start.expect("a start tag");
        // This element's depth: the root is 0, the stanza 1.
        let here = depth;
        for attr in start.attributes() {
            let attr = attr.map_err(|e| e.to_string())?;
            let key = attr.key.into_inner();
            if key == "xmlns" {
                decls.push((None, here));
            } else if let Some(p) = key.strip_prefix("xmlns:") {
                decls.push((Some(p.to_owned()), here));
            }
        }
        // Whether the binding of `prefix` (None: the default) maps `from` to `to`.
        let mapped = |prefix: Option<&str>, ns: String| -> String {
            match remap {
                Some((from, to)) if ns == from => {
                    let at = decls.iter().rev().find(|(p, _)| p.as_deref() == prefix);
                    match at {
                        Some((_, d)) if *d <= 1 => to.to_owned(),
                        _ => ns,
                    }
                }
                _ => ns,
            }
        };
        let qname = start.name().into_inner();
        let ns = mapped(
            qname.split_once(':').map(|(p, _)| p),
            ns_of(res, "element")?,
        );
        if depth == 0 {
            depth = 1;
            continue; // the stream root
        }
        let mut attrs = BTreeMap::new();
        for attr in start.attributes() {
            let attr = attr.map_err(|e| e.to_string())?;
            let key = attr.key.into_inner();
            if key == "xmlns" || key.starts_with("xmlns:") {
                continue;
            }
            let (r, local) = reader.resolver().resolve_attribute(attr.key);
            let ans = match key.split_once(':') {
                Some((p, _)) => mapped(Some(p), ns_of(r, "attribute")?),
                None => ns_of(r, "attribute")?,
            };
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| e.to_string())?
                .into_owned();
            if attrs
                .insert((ans, local.into_inner().to_owned()), value)
                .is_some()
            {
                return Err(format!("duplicate attribute {key}"));
            }
        }
        let tree = Tree {
            ns,
            local: start.local_name().into_inner().to_owned(),
            attrs,
            children: Vec::new(),
        };
        if empty {
            decls.retain(|(_, d)| *d < here);
            match stack.last_mut() {
                Some(parent) => parent.children.push(Node::Element(tree)),
                None => return Ok(tree),
            }
        } else {
            depth += 1;
            stack.push(tree);
        }
    }
}
