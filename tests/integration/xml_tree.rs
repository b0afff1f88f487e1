//! What a conforming namespace-aware parser makes of a stanza: the tree of expanded names,
//! attributes by expanded name and character data that a backend's parser sees. Built on
//! quick-xml's reader with the namespace rules of Namespaces in XML 1.0 applied here (quick-xml's
//! own resolver takes a namespace name as written, without expanding references), independently
//! of fedgate's framer, so that comparing the tree of
//! what fedgate received with the tree of what it forwards tests the round trip (issue 19).
//!
//! Shared by the property test (tests/integration/roundtrip.rs) and the fuzz targets
//! (fuzz/src/lib.rs includes this file by path).

use std::collections::BTreeMap;

use quick_xml::events::Event;
use quick_xml::Reader;

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

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

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
    let mut reader = Reader::from_str(doc);
    // The root, then the open elements of the stanza.
    let mut depth = 0usize;
    let mut stack: Vec<Tree> = Vec::new();
    // Every namespace declaration in scope: (prefix, namespace name, depth of the element
    // declaring it).
    let mut decls: Vec<(Option<String>, String, usize)> = Vec::new();
    loop {
        let event = reader.read_event().map_err(|e| e.to_string())?;
        let (start, empty) = match event {
            Event::Start(s) => (Some(s), false),
            Event::Empty(s) => (Some(s), true),
            Event::End(_) => {
                depth -= 1;
                decls.retain(|(_, _, d)| *d < depth);
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
            let prefix = if key == "xmlns" {
                None
            } else if let Some(p) = key.strip_prefix("xmlns:") {
                Some(p.to_owned())
            } else {
                continue;
            };
            // The namespace name is the normalized attribute value (quick-xml's resolver
            // would take it as written, references unexpanded).
            let uri = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| e.to_string())?
                .into_owned();
            decls.push((prefix, uri, here));
        }
        // The namespace name of `prefix` (None: the default), re-targeted per `remap`.
        let resolve = |prefix: Option<&str>| -> Result<String, String> {
            if prefix == Some("xml") {
                return Ok(XML_NS.to_owned());
            }
            let Some((_, uri, at)) = decls.iter().rev().find(|(p, _, _)| p.as_deref() == prefix)
            else {
                return match prefix {
                    None => Ok(String::new()),
                    Some(p) => Err(format!("undeclared prefix {p:?}")),
                };
            };
            Ok(match remap {
                Some((from, to)) if uri == from && *at <= 1 => to.to_owned(),
                _ => uri.clone(),
            })
        };
        let qname = start.name().into_inner();
        let ns = resolve(qname.split_once(':').map(|(p, _)| p))?;
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
            let (ans, local) = match key.split_once(':') {
                Some((p, l)) => (resolve(Some(p))?, l),
                None => (String::new(), key),
            };
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| e.to_string())?
                .into_owned();
            if attrs.insert((ans, local.to_owned()), value).is_some() {
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
            decls.retain(|(_, _, d)| *d < here);
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
