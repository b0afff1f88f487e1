//! A small owned tree for the elements fedgate has to look inside: stream
//! features, dialback keys, stream errors, STARTTLS/SASL negotiation.
//!
//! Stanzas that are only routed never become trees (see the
//! [`stanza`](super::stanza) module docs); this is the slow, convenient path.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::error::XmlError;
use super::ns;
use super::stanza::NsContext;

/// An element with resolved namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name.
    pub name: String,
    /// Resolved namespace URI.
    pub ns: String,
    /// Attributes other than namespace declarations: qualified name as
    /// written, unescaped value.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// A child of an [`Element`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    /// Character data, unescaped (CDATA included).
    Text(String),
}

impl Element {
    /// An attribute by qualified name as written, e.g. `type` or `xml:lang`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child element with local name `name` in namespace `ns`.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|e| e.name == name && e.ns == ns)
    }

    /// The child elements, skipping text.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The concatenated direct text children (e.g. a dialback key).
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }

    fn push_text(&mut self, text: &str) {
        if let Some(Node::Text(last)) = self.children.last_mut() {
            last.push_str(text);
        } else {
            self.children.push(Node::Text(text.to_owned()));
        }
    }
}

/// Namespace bindings in scope: `None` is the default namespace.
type Scope = Vec<(Option<String>, String)>;

/// Builds the tree of one complete element, interpreting it in `ctx` (the
/// stream's content namespace and header prefixes are in scope).
pub(crate) fn build(raw: &[u8], ctx: &NsContext) -> Result<Element, XmlError> {
    let s = std::str::from_utf8(raw).map_err(|_| XmlError::InvalidUtf8)?;
    let mut reader = Reader::from_str(s);
    let config = reader.config_mut();
    config.trim_text(false);
    config.expand_empty_elements = false;
    config.check_end_names = true;
    let mut scope: Scope = vec![
        (None, ctx.content_ns().to_owned()),
        (Some("xml".to_owned()), ns::XML.to_owned()),
    ];
    scope.extend(
        ctx.prefixes
            .iter()
            .map(|(p, uri)| (Some(p.to_string()), uri.as_str().to_owned())),
    );
    // Open elements with the scope length to restore when they close.
    let mut stack: Vec<(Element, usize)> = Vec::new();
    let nwf = |e: &dyn std::fmt::Display| XmlError::nwf(e.to_string());
    loop {
        let event = reader.read_event().map_err(|e| nwf(&e))?;
        let done = match event {
            Event::Start(start) => {
                let mark = scope.len();
                stack.push((open(&start, &mut scope)?, mark));
                None
            }
            Event::Empty(start) => {
                let mark = scope.len();
                let element = open(&start, &mut scope)?;
                scope.truncate(mark);
                Some(element)
            }
            Event::End(_) => {
                let (element, mark) = stack.pop().ok_or_else(|| XmlError::nwf("stray end tag"))?;
                scope.truncate(mark);
                Some(element)
            }
            Event::Text(text) => {
                let parent = stack.last_mut().ok_or_else(|| XmlError::BadFormat {
                    reason: "text outside the element".into(),
                })?;
                parent.0.push_text(&text.xml10_content());
                None
            }
            Event::CData(cdata) => {
                let parent = stack.last_mut().ok_or_else(|| XmlError::BadFormat {
                    reason: "CDATA outside the element".into(),
                })?;
                parent.0.push_text(&cdata.xml10_content());
                None
            }
            Event::GeneralRef(reference) => {
                let parent = stack.last_mut().ok_or_else(|| XmlError::BadFormat {
                    reason: "reference outside the element".into(),
                })?;
                let mut tmp = [0u8; 4];
                let text: &str = match reference.resolve_char_ref().map_err(|e| nwf(&e))? {
                    Some(c) => c.encode_utf8(&mut tmp),
                    None => quick_xml::escape::resolve_predefined_entity(&reference).ok_or(
                        XmlError::RestrictedXml {
                            what: "undefined entity reference",
                        },
                    )?,
                };
                parent.0.push_text(text);
                None
            }
            Event::Eof => return Err(XmlError::nwf("incomplete element")),
            Event::Comment(_) => return Err(XmlError::RestrictedXml { what: "comment" }),
            Event::PI(_) | Event::Decl(_) => {
                return Err(XmlError::RestrictedXml {
                    what: "processing instruction",
                })
            }
            Event::DocType(_) => return Err(XmlError::RestrictedXml { what: "DTD" }),
        };
        if let Some(element) = done {
            match stack.last_mut() {
                Some((parent, _)) => parent.children.push(Node::Element(element)),
                None => return Ok(element),
            }
        }
    }
}

/// Creates the element for a start tag, pushing its declarations on `scope`.
fn open(start: &BytesStart<'_>, scope: &mut Scope) -> Result<Element, XmlError> {
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| XmlError::nwf(e.to_string()))?;
        let key = attr.key.into_inner();
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| XmlError::nwf(e.to_string()))?
            .into_owned();
        if key == "xmlns" {
            scope.push((None, value));
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            scope.push((Some(prefix.to_owned()), value));
        } else {
            attrs.push((key.to_owned(), value));
        }
    }
    let qname = start.name().into_inner();
    let (prefix, local) = match qname.split_once(':') {
        Some((p, l)) => (Some(p), l),
        None => (None, qname),
    };
    let uri = scope
        .iter()
        .rev()
        .find(|(p, _)| p.as_deref() == prefix)
        .map(|(_, uri)| uri.clone())
        .ok_or_else(|| XmlError::BadNamespacePrefix {
            prefix: prefix.unwrap_or_default().to_owned(),
        })?;
    Ok(Element {
        name: local.to_owned(),
        ns: uri,
        attrs,
        children: Vec::new(),
    })
}
