//! A small owned tree for the elements fedgate has to look inside: stream
//! features, dialback keys, stream errors, STARTTLS/SASL negotiation.
//!
//! Stanzas that are only routed never become trees (see the
//! [`stanza`](super::stanza) module docs); this is the slow, convenient path.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::error::XmlError;
use super::ns::{self, NsContext};

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
    /// Child elements and text in document order.
    pub children: Vec<Node>,
}

/// A child of an [`Element`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A child element.
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

/// Building and writing elements: for the stanzas a component or the c2s core makes itself
/// (answers, roster pushes, presence), where a tree is the clear way to say what is sent.
impl Element {
    /// An element with no attributes or children.
    pub fn new(name: &str, ns: &str) -> Element {
        Element {
            name: name.to_owned(),
            ns: ns.to_owned(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Sets an attribute (qualified name as it is to be written), replacing any previous
    /// value.
    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => self.attrs.push((name.to_owned(), value)),
        }
    }

    /// Removes an attribute.
    pub fn remove_attr(&mut self, name: &str) {
        self.attrs.retain(|(k, _)| k != name);
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Element {
        self.set_attr(name, value);
        self
    }

    /// Builder form: appends a child element.
    pub fn with_child(mut self, child: Element) -> Element {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder form: appends character data.
    pub fn with_text(mut self, text: impl AsRef<str>) -> Element {
        self.push_text(text.as_ref());
        self
    }

    /// The child elements, mutably.
    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Serialises the element as a top-level stanza of any XMPP stream: a top element in one
    /// of the stream content namespaces (`jabber:client`, `jabber:server`,
    /// `jabber:component:accept`) is written without `xmlns`, so it takes on the namespace of
    /// whatever stream it is written to, and so do its descendants in that same namespace.
    /// Other namespaces are declared where they change. Prefixed attributes other than `xml:`
    /// are left out: their namespace declarations are not kept in the tree, and writing an
    /// unbound prefix would make the stanza not well-formed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let parent = if matches!(self.ns.as_str(), ns::CLIENT | ns::SERVER | ns::COMPONENT) {
            self.ns.as_str()
        } else {
            ""
        };
        self.write(&mut out, parent);
        out
    }

    fn write(&self, out: &mut Vec<u8>, parent_ns: &str) {
        use super::escape::{escape_attr, escape_text};
        out.push(b'<');
        out.extend_from_slice(self.name.as_bytes());
        if self.ns != parent_ns {
            out.extend_from_slice(b" xmlns='");
            out.extend_from_slice(escape_attr(&self.ns).as_bytes());
            out.push(b'\'');
        }
        for (k, v) in &self.attrs {
            if k.contains(':') && !k.starts_with("xml:") {
                continue;
            }
            out.push(b' ');
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"='");
            out.extend_from_slice(escape_attr(v).as_bytes());
            out.push(b'\'');
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write(out, &self.ns),
                Node::Text(t) => out.extend_from_slice(escape_text(t).as_bytes()),
            }
        }
        out.extend_from_slice(b"</");
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stanza::{NsContext, Stanza};

    #[test]
    fn writes_and_reads_back() {
        let e = Element::new("iq", ns::CLIENT)
            .with_attr("to", "a@b'c")
            .with_attr("type", "result")
            .with_child(
                Element::new("query", "jabber:iq:version")
                    .with_child(Element::new("name", "jabber:iq:version").with_text("f<g>&")),
            );
        let bytes = e.to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "<iq to='a@b&apos;c' type='result'><query xmlns='jabber:iq:version'>\
             <name>f&lt;g&gt;&amp;</name></query></iq>"
        );
        // Read back on a component stream: the same tree with that content namespace.
        let s = Stanza::parse(bytes.into(), &NsContext::component()).unwrap();
        let back = s.element().unwrap();
        assert_eq!(back.ns, ns::COMPONENT);
        assert_eq!(back.children, e.children);
    }

    #[test]
    fn content_namespace_children_follow_the_stream() {
        let s = Stanza::parse(
            bytes::Bytes::from_static(
                b"<m:message xmlns:m='jabber:client' xmlns:x='urn:x' x:a='1' xml:lang='en'>\
                  <m:body>hi</m:body><x:y/></m:message>",
            ),
            &NsContext::new(ns::CLIENT, &[]),
        )
        .unwrap();
        let out = s.element().unwrap().to_bytes();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<message xml:lang='en'><body>hi</body><y xmlns='urn:x'/></message>"
        );
    }
}
