//! Namespaces of XMPP streams (RFC 6120 §4.8): the URIs fedgate knows, and the context a
//! stream gives its stanzas, its content (default) namespace and the prefixes its header
//! declares ([`NsContext`]).
//!
//! The floor of the XML layer: it imports nothing else of it, so the scanner, the stanza, the
//! element tree and the stream header all build on it. The context a received header
//! establishes is made next to the header ([`NsContext::from_header`], in
//! [`stream`](super::stream)).

use std::fmt;
use std::sync::Arc;

/// Stream element and stream-level children (RFC 6120 §4.8.1).
pub const STREAM: &str = "http://etherx.jabber.org/streams";
/// Content namespace of server-to-server streams (RFC 6120 §4.8.3).
pub const SERVER: &str = "jabber:server";
/// Content namespace of client-to-server streams (RFC 6120 §4.8.3).
pub const CLIENT: &str = "jabber:client";
/// Content namespace of external component streams (XEP-0114).
pub const COMPONENT: &str = "jabber:component:accept";
/// Server Dialback elements (XEP-0220).
pub const DIALBACK: &str = "jabber:server:dialback";
/// Dialback stream feature (XEP-0220 §2.4).
pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
/// Stream error conditions (RFC 6120 §4.9.3).
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// Stanza error conditions (RFC 6120 §8.3.3).
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// STARTTLS (RFC 6120 §5).
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL (RFC 6120 §6).
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// XMPP Ping (XEP-0199).
pub const PING: &str = "urn:xmpp:ping";
/// Stream limits advertisement (XEP-0478).
pub const STREAM_LIMITS: &str = "urn:xmpp:stream-limits:0";
/// Service discovery, what an entity is and does (XEP-0030 §3).
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// Service discovery, the entities an entity lists (XEP-0030 §4).
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// Data forms (XEP-0004).
pub const DATA: &str = "jabber:x:data";
/// The namespace bound to the `xml` prefix (Namespaces in XML §3).
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";

/// fedgate's drain notice on component streams ([`crate::component::drain`]); here so that
/// the stream header can declare it without the XML layer importing the component layer.
pub const DRAIN: &str = "urn:fedgate:drain:0";
/// fedgate's held-stanza reports on acknowledging component streams
/// ([`crate::component::held`]); here for the same reason as [`DRAIN`].
pub const HELD: &str = "urn:fedgate:held:0";
/// XEP-0198 stream management, on s2s streams and on the component stream.
pub const SM: &str = "urn:xmpp:sm:3";

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
            SERVER,
            CLIENT,
            COMPONENT,
            STREAM,
            DIALBACK,
            DIALBACK_FEATURE,
            STREAMS,
            STANZAS,
            TLS,
            SASL,
            PING,
            XML,
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

/// The namespace context of a stream: its content (default) namespace and
/// the prefixes its header declares. Stanzas are interpreted in the context
/// of the stream they arrived on and re-targeted to the one they leave on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsContext {
    pub(crate) content: NsUri,
    pub(crate) prefixes: Vec<(Box<str>, NsUri)>,
}

impl NsContext {
    /// A context with content (default) namespace `content_ns` and the given
    /// `(prefix, URI)` declarations.
    pub fn new(content_ns: &str, prefixes: &[(&str, &str)]) -> Self {
        NsContext {
            content: NsUri::new(content_ns),
            prefixes: prefixes
                .iter()
                .map(|(p, uri)| (Box::from(*p), NsUri::new(uri)))
                .collect(),
        }
    }

    /// What fedgate's own s2s stream headers declare: `jabber:server` with
    /// the `stream` and `db` prefixes.
    pub fn server() -> Self {
        NsContext::new(SERVER, &[("stream", STREAM), ("db", DIALBACK)])
    }

    /// What fedgate's own component stream headers declare:
    /// `jabber:component:accept` with the `stream` prefix.
    pub fn component() -> Self {
        NsContext::new(COMPONENT, &[("stream", STREAM)])
    }

    /// The content (default) namespace: the one unprefixed stanzas such as `message` are in.
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
