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

use super::chars::unescape;
use super::element::{self, Element};
use super::error::write_stanza_error;
use super::error::{StanzaErrorCondition, XmlError};
use super::escape::escape_attr;
use super::facts::{Facts, Val};
use super::ns::{self, NsUri};
use super::scan::{Limits, Scanner};

/// The namespace context lives in [`ns`](super::ns); `xml::stanza::NsContext` is where the
/// rest of the crate has always found it.
pub use super::ns::NsContext;

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
            Some(len) if len == raw.len() => Ok(Stanza::new(raw, ctx, scanner.take_facts())),
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

    /// What the element is, classified once at parse time so routing need not compare names.
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
#[path = "stanza_tests.rs"]
mod tests;
