//! XML layer of an XMPP stream (RFC 6120 §4 and §11), sans-I/O.
//!
//! fedgate relays stanzas as the raw bytes it received, so this layer does
//! not build a tree per stanza. It frames and validates instead:
//!
//! 1. [`Framer`] takes bytes from the socket ([`Framer::read_buf`]) and yields
//!    [`Event`]s: the opening [`StreamHeader`] (RFC 6120 §4.7), each complete
//!    top-level element as a [`Stanza`], and the closing `</stream:stream>`
//!    (§4.4). It enforces well-formedness, the restrictions of §11.1 and the
//!    configured [`Limits`], and maps every failure to an [`XmlError`] whose
//!    [`StreamErrorCondition`] is the `<stream:error/>` to send (§4.9.3).
//! 2. A [`Stanza`] keeps its exact bytes plus the routing facts (`to`, `from`,
//!    `id`, `type`, [`Kind`]), and knows which namespace bindings it inherited
//!    from its stream so it can be moved between `jabber:server` and
//!    `jabber:component:accept` streams ([`Stanza::bytes_for`]).
//! 3. Negotiation elements (features, dialback, errors) are small; they get a
//!    tree via [`Stanza::element`] ([`Element`]).
//! 4. The outgoing side is plain byte writing: [`OpenStream`],
//!    [`CLOSE_STREAM`], [`stream_error`], [`Stanza::bounce`].

use std::borrow::Cow;

pub mod element;
pub mod error;
pub mod framer;
pub mod stanza;
pub mod stream;

pub use element::{Element, Node};
pub use error::{
    stream_error, StanzaErrorCondition, StanzaErrorType, StreamErrorCondition, XmlError,
};
pub use framer::{Event, Framer, Limits};
pub use stanza::{Kind, NsContext, Stanza};
pub use stream::{OpenStream, StreamHeader, CLOSE_STREAM};

/// Namespace URIs used on XMPP s2s and component streams.
pub mod ns {
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
}

/// Escapes a value for a single- or double-quoted attribute. Borrows when
/// there is nothing to escape, which is the common case for JIDs and ids.
pub fn escape_attr(s: &str) -> Cow<'_, str> {
    escape(s, |b| matches!(b, b'&' | b'<' | b'>' | b'"' | b'\''))
}

/// Escapes character data. Quotes are left alone: they are legal in text.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape(s, |b| matches!(b, b'&' | b'<' | b'>'))
}

fn escape(s: &str, special: impl Fn(u8) -> bool) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.iter().position(|&b| special(b)) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first]);
    let mut last = first;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        if !special(b) {
            continue;
        }
        out.push_str(&s[last..i]);
        out.push_str(match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&apos;",
        });
        last = i + 1;
    }
    out.push_str(&s[last..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert!(matches!(escape_attr("a@b.example/r"), Cow::Borrowed(_)));
        assert_eq!(
            escape_attr(r#"a&b<c>d"e'f"#),
            "a&amp;b&lt;c&gt;d&quot;e&apos;f"
        );
        assert_eq!(escape_text(r#"a&b<c>d"e'f"#), "a&amp;b&lt;c&gt;d\"e'f");
        assert!(matches!(escape_text("it's \"fine\""), Cow::Borrowed(_)));
        assert_eq!(escape_text("☃&"), "☃&amp;");
    }
}
