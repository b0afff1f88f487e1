//! A top-level stream element: its exact bytes plus the facts needed to route
//! it (RFC 6120 §8.1), without building a tree.
//!
//! # Why raw bytes
//! fedgate is a relay: almost every stanza leaves exactly as it arrived, so
//! the [`Framer`](super::Framer) slices it out of the read buffer and the
//! router only looks at the few attributes it needs (`to`, `from`, `id`,
//! `type`). Re-serializing would cost an allocation and a copy per stanza and
//! risk changing payloads the gateway does not understand.
//!
//! # Namespaces across stream types
//! A stanza inherits its default namespace and any prefixes from the stream
//! header it arrived on (RFC 6120 §4.8). fedgate moves stanzas between
//! `jabber:server` streams (s2s) and `jabber:component:accept` streams
//! (XEP-0114). An unprefixed `<message>` without `xmlns` simply takes on the
//! content namespace of whatever stream it is written to, which is exactly the
//! intended mapping, so such stanzas are forwarded byte for byte. The framer
//! records the two things that break this:
//!
//! 1. prefixes the stanza uses but only the stream header declares
//!    (`db:`, `stream:`, or any other header prefix), and
//! 2. an explicit declaration of the source content namespace on the stanza's
//!    top element (`xmlns='jabber:server'`).
//!
//! [`Stanza::bytes_for`] rewrites only the top start tag when either of these
//! does not hold on the target stream ([`Stanza::is_portable_to`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use quick_xml::events::attributes::Attributes;

use super::element::{self, Element};
use super::error::write_stanza_error;
use super::error::{StanzaErrorCondition, XmlError};
use super::framer::{unescape, Limits, Scanner};
use super::stream::StreamHeader;
use super::{escape_attr, ns};

/// A namespace URI. The well-known ones are stored as `&'static str` so the
/// per-stanza path does not allocate to remember a stanza's namespace.
#[derive(Clone)]
pub(crate) enum NsUri {
    Known(&'static str),
    Other(Arc<str>),
}

impl NsUri {
    pub(crate) fn new(uri: &str) -> Self {
        const KNOWN: [&str; 12] = [
            ns::SERVER,
            ns::CLIENT,
            ns::COMPONENT,
            ns::STREAM,
            ns::DIALBACK,
            ns::DIALBACK_FEATURE,
            ns::STREAMS,
            ns::STANZAS,
            ns::TLS,
            ns::SASL,
            ns::PING,
            ns::XML,
        ];
        match KNOWN.iter().find(|k| **k == uri) {
            Some(k) => NsUri::Known(k),
            None => NsUri::Other(Arc::from(uri)),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            NsUri::Known(s) => s,
            NsUri::Other(s) => s,
        }
    }
}

impl PartialEq for NsUri {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for NsUri {}

impl fmt::Debug for NsUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// An attribute value: a range into the raw bytes when it has no entity to
/// unescape (the common case, no allocation), else the unescaped string.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    Span(usize, usize),
    Owned(Box<str>),
}

/// What the framer learned about a top element while validating it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Facts {
    /// Qualified name of the top element, as a range of `raw`.
    pub(crate) name: (usize, usize),
    /// Resolved namespace of the top element.
    pub(crate) ns: Option<NsUri>,
    pub(crate) to: Option<Val>,
    pub(crate) from: Option<Val>,
    pub(crate) id: Option<Val>,
    pub(crate) type_: Option<Val>,
    /// The top element declares the source content namespace itself.
    pub(crate) declares_content_ns: bool,
    /// Length of the top start tag, `<` to `>` inclusive.
    pub(crate) start_len: usize,
    /// Bit i set: the stanza relies on prefix i of the source context
    /// without declaring it (bit 63 stands for every prefix from 63 on).
    pub(crate) inherited: u64,
}

/// What kind of top-level element a stanza is, for dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `message` in the stream's content namespace.
    Message,
    /// `presence` in the stream's content namespace.
    Presence,
    /// `iq` in the stream's content namespace.
    Iq,
    /// `db:result` (XEP-0220).
    DbResult,
    /// `db:verify` (XEP-0220).
    DbVerify,
    /// `stream:features` (RFC 6120 §4.3.2).
    StreamFeatures,
    /// `stream:error` (RFC 6120 §4.9).
    StreamError,
    /// `handshake` (XEP-0114).
    Handshake,
    /// Anything else, including `message` in a foreign namespace and
    /// STARTTLS/SASL elements.
    Other,
}

/// The namespace context of a stream: its content (default) namespace and
/// the prefixes its header declares. Stanzas are interpreted in the context
/// of the stream they arrived on and re-targeted to the one they leave on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsContext {
    pub(crate) content: NsUri,
    pub(crate) prefixes: Vec<(Box<str>, NsUri)>,
}

impl NsContext {
    pub fn new(content_ns: &str, prefixes: &[(&str, &str)]) -> Self {
        NsContext {
            content: NsUri::new(content_ns),
            prefixes: prefixes
                .iter()
                .map(|(p, uri)| (Box::from(*p), NsUri::new(uri)))
                .collect(),
        }
    }

    /// The context a received stream header establishes.
    pub fn from_header(h: &StreamHeader) -> Self {
        NsContext {
            content: NsUri::new(h.default_ns.as_deref().unwrap_or("")),
            prefixes: h
                .prefixes
                .iter()
                .map(|(p, uri)| (Box::from(p.as_str()), NsUri::new(uri)))
                .collect(),
        }
    }

    /// What fedgate's own s2s stream headers declare: `jabber:server` with
    /// the `stream` and `db` prefixes.
    pub fn server() -> Self {
        NsContext::new(ns::SERVER, &[("stream", ns::STREAM), ("db", ns::DIALBACK)])
    }

    /// What fedgate's own component stream headers declare:
    /// `jabber:component:accept` with the `stream` prefix.
    pub fn component() -> Self {
        NsContext::new(ns::COMPONENT, &[("stream", ns::STREAM)])
    }

    pub fn content_ns(&self) -> &str {
        self.content.as_str()
    }

    /// The URI this context binds prefix `p` to.
    pub fn prefix_uri(&self, p: &str) -> Option<&str> {
        self.prefixes
            .iter()
            .find(|(prefix, _)| &**prefix == p)
            .map(|(_, uri)| uri.as_str())
    }
}

/// A complete top-level element as received, with its routing facts.
pub struct Stanza {
    raw: Bytes,
    /// The context it was parsed in; needed to re-target it and to build a
    /// tree with the inherited prefixes.
    src: Arc<NsContext>,
    kind: Kind,
    facts: Facts,
    /// For a stanza from a backend that acknowledges (XEP-0198 on the component stream):
    /// its place in the session's [`AckWindow`](crate::ack::AckWindow), finished when the
    /// stanza is dropped. A clone carries none: the original is the one that is delivered.
    ticket: Option<crate::ack::Ticket>,
}

impl Clone for Stanza {
    fn clone(&self) -> Self {
        Stanza {
            raw: self.raw.clone(),
            src: self.src.clone(),
            kind: self.kind,
            facts: self.facts.clone(),
            ticket: None,
        }
    }
}

impl Stanza {
    pub(crate) fn new(raw: Bytes, src: Arc<NsContext>, mut facts: Facts) -> Self {
        let ns = facts.ns.get_or_insert_with(|| src.content.clone());
        let qname = std::str::from_utf8(&raw[facts.name.0..facts.name.1]).unwrap_or("");
        let local = qname.rsplit(':').next().unwrap_or(qname);
        let content = src.content.as_str();
        let content_ok = matches!(content, ns::SERVER | ns::CLIENT | ns::COMPONENT);
        let kind = match (local, ns.as_str()) {
            ("message", n) if content_ok && n == content => Kind::Message,
            ("presence", n) if content_ok && n == content => Kind::Presence,
            ("iq", n) if content_ok && n == content => Kind::Iq,
            ("result", ns::DIALBACK) => Kind::DbResult,
            ("verify", ns::DIALBACK) => Kind::DbVerify,
            ("features", ns::STREAM) => Kind::StreamFeatures,
            ("error", ns::STREAM) => Kind::StreamError,
            ("handshake", ns::COMPONENT) => Kind::Handshake,
            _ => Kind::Other,
        };
        Stanza {
            raw,
            src,
            kind,
            facts,
            ticket: None,
        }
    }

    /// The stanza with its delivery ticket (see [`crate::ack`]).
    pub fn with_ticket(mut self, ticket: crate::ack::Ticket) -> Stanza {
        self.ticket = Some(ticket);
        self
    }

    /// Gives up on the stanza without knowing whether it was delivered: its backend is not
    /// told it was ([`crate::ack::Ticket::abandon`]). No-op for a stanza without a ticket.
    pub fn abandon(&mut self) {
        if let Some(t) = self.ticket.take() {
            t.abandon();
        }
    }

    /// Parses one complete element (nothing before or after it) in the
    /// context `ctx`. For stanzas fedgate builds itself and for tests; the
    /// network path goes through the [`Framer`](super::Framer).
    pub fn parse(raw: Bytes, ctx: &NsContext) -> Result<Stanza, XmlError> {
        let limits = Limits {
            max_stanza_bytes: usize::MAX,
            max_depth: 256,
            max_attributes: 1024,
        };
        let ctx = Arc::new(ctx.clone());
        let mut scanner = Scanner::default();
        match scanner.scan(&raw, &ctx, &limits)? {
            Some(len) if len == raw.len() => Ok(scanner.take_stanza(raw, &ctx)),
            Some(_) => Err(XmlError::BadFormat {
                reason: "data after the element".into(),
            }),
            None => Err(XmlError::nwf("incomplete element")),
        }
    }

    /// Exactly the bytes received, from `<` to the end of the element.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    fn qname(&self) -> &str {
        std::str::from_utf8(&self.raw[self.facts.name.0..self.facts.name.1]).unwrap_or("")
    }

    /// Local name of the element, e.g. `message`, `result`, `features`.
    pub fn name(&self) -> &str {
        let q = self.qname();
        q.rsplit(':').next().unwrap_or(q)
    }

    /// Resolved namespace URI of the element.
    pub fn ns(&self) -> &str {
        self.facts.ns.as_ref().map_or("", NsUri::as_str)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The namespace context the stanza was parsed in.
    pub fn source_context(&self) -> &NsContext {
        &self.src
    }

    fn val<'s>(&'s self, v: &'s Option<Val>) -> Option<&'s str> {
        match v.as_ref()? {
            Val::Span(start, end) => std::str::from_utf8(&self.raw[*start..*end]).ok(),
            Val::Owned(s) => Some(s),
        }
    }

    /// `to` attribute, unescaped.
    pub fn to(&self) -> Option<&str> {
        self.val(&self.facts.to)
    }

    /// `from` attribute, unescaped.
    pub fn from(&self) -> Option<&str> {
        self.val(&self.facts.from)
    }

    /// `id` attribute, unescaped.
    pub fn id(&self) -> Option<&str> {
        self.val(&self.facts.id)
    }

    /// `type` attribute, unescaped.
    pub fn type_(&self) -> Option<&str> {
        self.val(&self.facts.type_)
    }

    /// The top start tag between `<` and `>` (without a trailing `/`), and
    /// the length of the element name in it.
    fn start_tag(&self) -> (&str, usize) {
        let inner = &self.raw[1..self.facts.start_len - 1];
        let inner = inner.strip_suffix(b"/").unwrap_or(inner);
        let s = std::str::from_utf8(inner).unwrap_or("");
        (s, self.facts.name.1 - self.facts.name.0)
    }

    fn is_self_closing(&self) -> bool {
        self.raw[..self.facts.start_len].ends_with(b"/>")
    }

    /// Any attribute of the top element by qualified name, unescaped.
    pub fn attr(&self, name: &str) -> Option<Cow<'_, str>> {
        let (s, name_len) = self.start_tag();
        let attr = Attributes::new(s, name_len)
            .flatten()
            .find(|a| a.key.into_inner() == name)?;
        let value = match attr.value {
            Cow::Borrowed(v) => v,
            Cow::Owned(v) => return Some(Cow::Owned(unescape(&v).unwrap_or(v))),
        };
        Some(quick_xml::escape::unescape(value).unwrap_or(Cow::Borrowed(value)))
    }

    /// Inherited prefix bindings of the source context, as indexes.
    fn inherited(&self) -> impl Iterator<Item = usize> + '_ {
        let mask = self.facts.inherited;
        (0..self.src.prefixes.len()).filter(move |&i| mask & (1u64 << i.min(63)) != 0)
    }

    /// Whether the bytes as received mean the same on a stream with context
    /// `target`: every inherited prefix is bound to the same URI there, and
    /// the top element does not pin the source content namespace (unless it
    /// is also the target's).
    pub fn is_portable_to(&self, target: &NsContext) -> bool {
        if std::ptr::eq(&*self.src, target) {
            return true;
        }
        if self.facts.declares_content_ns && self.src.content != target.content {
            return false;
        }
        self.inherited().all(|i| {
            let (p, uri) = &self.src.prefixes[i];
            target.prefix_uri(p) == Some(uri.as_str())
        })
    }

    /// The bytes to write on a stream with context `target`: the received
    /// bytes when [portable](Self::is_portable_to) (no copy), else a copy
    /// whose top start tag maps the source content namespace to the target's
    /// and declares the inherited prefixes the target lacks.
    pub fn bytes_for(&self, target: &NsContext) -> Bytes {
        if self.is_portable_to(target) {
            return self.raw.clone();
        }
        let src_content = self.src.content.as_str();
        let map = |uri: &str| -> String {
            if uri == src_content {
                target.content_ns().to_owned()
            } else {
                uri.to_owned()
            }
        };
        let (s, name_len) = self.start_tag();
        let mut out = Vec::with_capacity(self.raw.len() + 64);
        out.push(b'<');
        out.extend_from_slice(&s.as_bytes()[..name_len]);
        for attr in Attributes::new(s, name_len).flatten() {
            let key = attr.key.into_inner();
            let is_decl = key == "xmlns" || key.starts_with("xmlns:");
            let unescaped = if is_decl {
                unescape(&attr.value).ok()
            } else {
                None
            };
            out.push(b' ');
            out.extend_from_slice(key.as_bytes());
            match unescaped {
                Some(uri) if uri == src_content => {
                    out.extend_from_slice(b"='");
                    out.extend_from_slice(escape_attr(target.content_ns()).as_bytes());
                    out.push(b'\'');
                }
                _ => {
                    // The raw value is already escaped; keep it, choosing a
                    // quote it cannot contain.
                    let q = if attr.value.contains('\'') {
                        b'"'
                    } else {
                        b'\''
                    };
                    out.push(b'=');
                    out.push(q);
                    out.extend_from_slice(attr.value.as_bytes());
                    out.push(q);
                }
            }
        }
        for i in self.inherited() {
            let (p, uri) = &self.src.prefixes[i];
            if target.prefix_uri(p) == Some(uri.as_str()) {
                continue;
            }
            out.extend_from_slice(b" xmlns:");
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b"='");
            out.extend_from_slice(escape_attr(&map(uri.as_str())).as_bytes());
            out.push(b'\'');
        }
        out.extend_from_slice(if self.is_self_closing() { b"/>" } else { b">" });
        out.extend_from_slice(&self.raw[self.facts.start_len..]);
        Bytes::from(out)
    }

    /// The error reply RFC 6120 §8.3 asks for when this stanza cannot be
    /// delivered, addressed back to the sender. `None` when no reply may be
    /// sent: for errors (no error loops, §8.3.1), for iq results, for
    /// unavailable presence, and for anything that is not a message, presence
    /// or iq.
    ///
    /// Presence: an error to presence tells the sender's server to stop
    /// sending presence to that contact for the session (RFC 6121 §4.4.2,
    /// §4.5.2), which is what an unreachable contact calls for; but
    /// unavailable presence ends the sender's session or its directed
    /// presence, so an error to it has no one left to inform.
    pub fn bounce(&self, cond: StanzaErrorCondition, text: Option<&str>) -> Option<Stanza> {
        self.bounce_from(self.to(), cond, text)
    }

    /// [`Stanza::bounce`] from another address than the stanza's `to`: the domain that
    /// answers for a `to` that is no valid address (an error must come from a valid one, or
    /// the sender's server drops it).
    pub fn bounce_from(
        &self,
        from: Option<&str>,
        cond: StanzaErrorCondition,
        text: Option<&str>,
    ) -> Option<Stanza> {
        match self.kind {
            Kind::Presence if self.type_() == Some("unavailable") => return None,
            Kind::Message | Kind::Presence => {}
            Kind::Iq if self.type_() != Some("result") => {}
            _ => return None,
        }
        if self.type_() == Some("error") {
            return None;
        }
        let name = self.name();
        let mut out = Vec::with_capacity(256);
        out.push(b'<');
        out.extend_from_slice(name.as_bytes());
        for (attr, value) in [("from", from), ("to", self.from()), ("id", self.id())] {
            if let Some(value) = value {
                out.push(b' ');
                out.extend_from_slice(attr.as_bytes());
                out.extend_from_slice(b"='");
                out.extend_from_slice(escape_attr(value).as_bytes());
                out.push(b'\'');
            }
        }
        out.extend_from_slice(b" type='error'>");
        write_stanza_error(&mut out, cond, text);
        out.extend_from_slice(b"</");
        out.extend_from_slice(name.as_bytes());
        out.push(b'>');
        Stanza::parse(Bytes::from(out), &self.src).ok()
    }

    /// A tree of the element, with the stream's prefixes in scope. For
    /// negotiation elements; not meant for the per-stanza path.
    pub fn element(&self) -> Result<Element, XmlError> {
        element::build(&self.raw, &self.src)
    }
}

impl PartialEq for Stanza {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
            && self.src == other.src
            && self.kind == other.kind
            && self.ns() == other.ns()
            && self.to() == other.to()
            && self.from() == other.from()
            && self.id() == other.id()
            && self.type_() == other.type_()
    }
}

impl Eq for Stanza {}

impl fmt::Debug for Stanza {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stanza")
            .field("kind", &self.kind)
            .field("raw", &String::from_utf8_lossy(&self.raw))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Event, Framer};

    fn parse(xml: &str, ctx: &NsContext) -> Stanza {
        Stanza::parse(Bytes::copy_from_slice(xml.as_bytes()), ctx).expect(xml)
    }

    fn s2s(xml: &str) -> Stanza {
        parse(xml, &NsContext::server())
    }

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn facts_borrow_or_own() {
        let s = s2s("<message to='a@b' from='c&amp;d@e' id='1' type='chat'><body/></message>");
        assert!(matches!(s.facts.to, Some(Val::Span(..))));
        assert!(matches!(s.facts.from, Some(Val::Owned(_))));
        assert_eq!(s.from(), Some("c&d@e"));
        assert_eq!(s.attr("to").as_deref(), Some("a@b"));
        assert_eq!(s.attr("from").as_deref(), Some("c&d@e"));
        assert_eq!(s.attr("nope"), None);
        let r = s2s("<db:result from='a' to='b' type='valid'/>");
        assert_eq!(r.kind(), Kind::DbResult);
        assert_eq!(r.attr("type").as_deref(), Some("valid"));
        assert_eq!(r.type_(), Some("valid"));
    }

    #[test]
    fn kinds() {
        let server = NsContext::server();
        let component = NsContext::component();
        let k = |xml: &str, ctx: &NsContext| parse(xml, ctx).kind();
        assert_eq!(k("<message/>", &server), Kind::Message);
        assert_eq!(k("<presence/>", &component), Kind::Presence);
        assert_eq!(k("<iq xmlns='jabber:server'/>", &server), Kind::Iq);
        assert_eq!(k("<message xmlns='jabber:client'/>", &server), Kind::Other);
        assert_eq!(k("<db:verify id='x'/>", &server), Kind::DbVerify);
        assert_eq!(k("<stream:error/>", &component), Kind::StreamError);
        assert_eq!(k("<handshake>abc</handshake>", &component), Kind::Handshake);
        assert_eq!(k("<handshake>abc</handshake>", &server), Kind::Other);
        assert_eq!(
            k(
                "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
                &server
            ),
            Kind::Other
        );
    }

    #[test]
    fn parse_rejects_incomplete_and_trailing() {
        let ctx = NsContext::server();
        let p = |xml: &'static str| Stanza::parse(Bytes::from_static(xml.as_bytes()), &ctx);
        assert_eq!(p("<message>"), Err(XmlError::nwf("incomplete element")));
        assert!(matches!(p("<a/><b/>"), Err(XmlError::BadFormat { .. })));
        assert!(matches!(p("</a>"), Err(XmlError::NotWellFormed { .. })));
        assert!(matches!(p(" <a/>"), Err(XmlError::BadFormat { .. })));
    }

    #[test]
    fn common_stanza_passes_through_unchanged() {
        let server = NsContext::server();
        let component = NsContext::component();
        let s = s2s("<message to='a@c.b' from='x@y'><body>hi</body>\
             <x:data xmlns:x='urn:a'><x:f/></x:data><foo xmlns='urn:b'/></message>");
        assert!(s.is_portable_to(&component));
        assert!(s.is_portable_to(&server));
        let out = s.bytes_for(&component);
        assert_eq!(out, s.raw());
        // Same allocation: no copy.
        assert_eq!(out.as_ptr(), s.raw().as_ptr());
    }

    #[test]
    fn explicit_content_namespace_is_rewritten() {
        let s = s2s("<message xmlns='jabber:server' to='a@c.b'><body>x</body></message>");
        assert!(s.is_portable_to(&NsContext::server()));
        assert!(!s.is_portable_to(&NsContext::component()));
        let out = s.bytes_for(&NsContext::component());
        assert_eq!(
            text(&out),
            "<message xmlns='jabber:component:accept' to='a@c.b'><body>x</body></message>"
        );
        let moved = Stanza::parse(out, &NsContext::component()).unwrap();
        assert_eq!(moved.kind(), Kind::Message);
        // And back.
        let back = moved.bytes_for(&NsContext::server());
        assert_eq!(text(&back), text(s.raw()));
        // A prefix bound to the content namespace on the element itself.
        let s = s2s("<s:iq xmlns:s='jabber:server' type=\"it's\"/>");
        assert_eq!(s.kind(), Kind::Iq);
        assert_eq!(
            text(&s.bytes_for(&NsContext::component())),
            "<s:iq xmlns:s='jabber:component:accept' type=\"it's\"/>"
        );
    }

    #[test]
    fn inherited_prefixes_are_declared() {
        let s = s2s("<message to='a@c.b'><db:foo/><stream:bar/></message>");
        let component = NsContext::component();
        // `stream` is bound identically on component streams; `db` is not.
        assert!(!s.is_portable_to(&component));
        assert!(s.is_portable_to(&NsContext::server()));
        let out = s.bytes_for(&component);
        assert_eq!(
            text(&out),
            "<message to='a@c.b' xmlns:db='jabber:server:dialback'><db:foo/><stream:bar/></message>"
        );
        Stanza::parse(out, &component).unwrap();
        // A header prefix bound to the source content namespace maps to the
        // target's.
        let ctx = NsContext::new(ns::SERVER, &[("j", ns::SERVER)]);
        let s = parse("<j:message><j:body/></j:message>", &ctx);
        assert_eq!(s.kind(), Kind::Message);
        assert_eq!(
            text(&s.bytes_for(&NsContext::component())),
            "<j:message xmlns:j='jabber:component:accept'><j:body/></j:message>"
        );
        // Prefixes used only in attributes count too.
        let s = s2s("<message db:x='1'/>");
        assert!(!s.is_portable_to(&component));
    }

    #[test]
    fn inherited_prefixes_recorded_by_framer() {
        let mut framer = Framer::new(Default::default());
        framer.feed(
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
              xmlns:db='jabber:server:dialback'><message><db:foo/></message><message/>",
        );
        let mut out = Vec::new();
        while let Some(e) = framer.next_event().unwrap() {
            out.push(e);
        }
        let [Event::StreamOpen(_), Event::Stanza(a), Event::Stanza(b)] = &out[..] else {
            panic!("{out:?}")
        };
        assert!(!a.is_portable_to(&NsContext::component()));
        assert!(b.is_portable_to(&NsContext::component()));
        // Interpreted in the framer's context, and in an equal one.
        assert!(a.is_portable_to(framer.ns_context()));
        assert!(a.is_portable_to(&NsContext::server()));
    }

    #[test]
    fn declared_payloads_pass_through() {
        let component = NsContext::component();
        for xml in [
            "<message><x:data xmlns:x='urn:a'/></message>",
            "<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>",
            "<message><db:x xmlns:db='urn:other'/></message>",
        ] {
            let s = s2s(xml);
            assert!(s.is_portable_to(&component), "{xml}");
            assert_eq!(text(&s.bytes_for(&component)), xml);
        }
    }

    #[test]
    fn bounces() {
        let msg = s2s(
            "<message from='a@x' to='b@y' id='m&amp;1' type='chat'><body>secret</body></message>",
        );
        let b = msg
            .bounce(
                StanzaErrorCondition::RemoteServerNotFound,
                Some("no <route>"),
            )
            .unwrap();
        assert_eq!(
            text(b.raw()),
            "<message from='b@y' to='a@x' id='m&amp;1' type='error'><error type='cancel'>\
             <remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no &lt;route&gt;</text>\
             </error></message>"
        );
        assert_eq!(b.kind(), Kind::Message);
        assert_eq!(b.to(), Some("a@x"));
        assert_eq!(b.from(), Some("b@y"));
        assert_eq!(b.id(), Some("m&1"));
        assert_eq!(b.type_(), Some("error"));
        // Bouncing a bounce is not allowed.
        assert!(b
            .bounce(StanzaErrorCondition::ServiceUnavailable, None)
            .is_none());

        let p = s2s("<presence from='a@x' to='b@y'/>")
            .bounce(StanzaErrorCondition::RemoteServerTimeout, None)
            .unwrap();
        assert_eq!(
            text(p.raw()),
            "<presence from='b@y' to='a@x' type='error'><error type='wait'>\
             <remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
        );
        let iq = s2s("<iq from='a@x' to='b@y' id='q' type='get'><query xmlns='urn:q'/></iq>")
            .bounce(StanzaErrorCondition::ServiceUnavailable, None)
            .unwrap();
        assert_eq!(iq.kind(), Kind::Iq);
        assert!(!text(iq.raw()).contains("query"));
        // Component streams: the bounce inherits that content namespace.
        let c = parse(
            "<iq from='a@x' to='b@y' id='q' type='set'/>",
            &NsContext::component(),
        );
        let cb = c.bounce(StanzaErrorCondition::ItemNotFound, None).unwrap();
        assert_eq!(cb.source_context().content_ns(), ns::COMPONENT);
        assert_eq!(cb.kind(), Kind::Iq);

        for xml in [
            "<iq from='a@x' to='b@y' id='q' type='result'/>",
            "<iq from='a@x' to='b@y' id='q' type='error'/>",
            "<message from='a@x' to='b@y' type='error'/>",
            "<presence type='error'/>",
            "<db:result from='a' to='b'>k</db:result>",
            "<message xmlns='jabber:client' to='b@y'/>",
        ] {
            assert!(
                s2s(xml)
                    .bounce(StanzaErrorCondition::ServiceUnavailable, None)
                    .is_none(),
                "{xml}"
            );
        }
    }

    #[test]
    fn element_of_features() {
        let mut framer = Framer::new(Default::default());
        framer.feed(
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>\
              <stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\
              <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
        );
        framer.next_event().unwrap();
        let Some(Event::Stanza(s)) = framer.next_event().unwrap() else {
            panic!()
        };
        let e = s.element().unwrap();
        assert_eq!(e.name, "features");
        assert_eq!(e.ns, ns::STREAM);
        let db = e.child("dialback", ns::DIALBACK_FEATURE).unwrap();
        assert_eq!(
            db.child("errors", ns::DIALBACK_FEATURE).unwrap().name,
            "errors"
        );
        let tls = e.child("starttls", ns::TLS).unwrap();
        assert!(tls.child("required", ns::TLS).is_some());
        assert_eq!(e.children().count(), 2);
        assert!(e.child("dialback", ns::SERVER).is_none());
    }

    #[test]
    fn element_of_db_result() {
        let s = s2s("<db:result from='a.example' to='b.example' xml:lang='en'>\
             b4835385f37f&amp;<![CDATA[<x>]]>&#x41;</db:result>");
        let e = s.element().unwrap();
        assert_eq!(e.name, "result");
        assert_eq!(e.ns, ns::DIALBACK);
        assert_eq!(e.attr("from"), Some("a.example"));
        assert_eq!(e.attr("xml:lang"), Some("en"));
        assert_eq!(e.text(), "b4835385f37f&<x>A");
        let m = s2s("<message><body>a</body>x<y xmlns='urn:y'>z</y>b</message>")
            .element()
            .unwrap();
        assert_eq!(m.ns, ns::SERVER);
        assert_eq!(m.text(), "xb");
        assert_eq!(m.child("body", ns::SERVER).unwrap().text(), "a");
        assert_eq!(m.child("y", "urn:y").unwrap().text(), "z");
    }
}
