//! The stream element: what a peer's opening tag said, and how fedgate opens
//! and closes its own (RFC 6120 §4.2, §4.4, §4.7).

use super::escape::escape_attr;
use super::ns::{self, NsContext, NsUri};

/// The attributes of a received `<stream:stream>` opening tag (RFC 6120 §4.7),
/// attribute values unescaped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// §4.7.2: the domain the initiator wants to talk to.
    pub to: Option<String>,
    /// §4.7.1: the sending domain; optional for dialback-only peers.
    pub from: Option<String>,
    /// §4.7.3: set by the receiving entity; dialback keys depend on it.
    pub id: Option<String>,
    /// §4.7.5: `None` means a pre-RFC 3920 peer (no stream features).
    pub version: Option<String>,
    /// §4.7.4: `xml:lang`.
    pub lang: Option<String>,
    /// The content namespace (`xmlns`), e.g. `jabber:server`; checked by the
    /// session, which sends `invalid-namespace` if it is not the expected one.
    pub default_ns: Option<String>,
    /// Every `xmlns:p='uri'` on the tag, in order, including `stream`.
    /// Stanzas may use these prefixes without declaring them.
    pub prefixes: Vec<(String, String)>,
}

impl StreamHeader {
    /// The URI the header binds prefix `p` to.
    pub fn prefix_uri(&self, p: &str) -> Option<&str> {
        self.prefixes
            .iter()
            .find(|(prefix, _)| prefix == p)
            .map(|(_, uri)| uri.as_str())
    }

    /// Whether the peer declared `xmlns:db='jabber:server:dialback'`, which is
    /// how pre-feature peers announce dialback support (XEP-0220 §2.4).
    pub fn declares_dialback(&self) -> bool {
        self.prefix_uri("db") == Some(ns::DIALBACK)
    }

    /// Why the header's version is not one we speak (RFC 6120 §4.7.5: answered with
    /// `<unsupported-version/>`), or `None`. Only major version 1 is; a header without a
    /// version comes from a pre-1.0 peer, which `pre_1_0` says whether we accept (s2s does,
    /// for old dialback-only servers; c2s needs stream features, so it does not).
    pub fn unsupported_version(&self, pre_1_0: bool) -> Option<String> {
        match &self.version {
            None if pre_1_0 => None,
            None => Some("streams without version='1.0' are not supported".into()),
            Some(v) if v.split('.').next().and_then(|m| m.parse::<u32>().ok()) == Some(1) => None,
            Some(v) => Some(format!("version {v} is not supported; fedgate speaks 1.0")),
        }
    }
}

/// Here rather than in [`ns`](super::ns), which the header's writer imports: the namespace
/// module stays the floor of the XML layer.
impl NsContext {
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
}

/// fedgate's own opening stream tag.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenStream<'a> {
    /// The default namespace of the stream content (`jabber:server`, ...).
    pub content_ns: &'a str,
    /// The `from` attribute (RFC 6120 §4.7.1): our own domain on s2s streams.
    pub from: Option<&'a str>,
    /// The `to` attribute (RFC 6120 §4.7.2): the domain of the peer the stream is meant for.
    pub to: Option<&'a str>,
    /// The stream id (RFC 6120 §4.7.3): set only by the receiving side in its response header.
    pub id: Option<&'a str>,
    /// Write `version='1.0'` (announces stream features, RFC 6120 §4.7.5).
    pub version: bool,
    /// Write `xmlns:db='jabber:server:dialback'` (XEP-0220 §2.4).
    pub dialback: bool,
    /// Write `xmlns:drain='urn:fedgate:drain:0'`: a backend that understands the gateway's
    /// drain notice ([`crate::component::drain`]).
    pub drain: bool,
    /// Write `xmlns:sm='urn:xmpp:sm:3'`: on a component stream, a peer that acknowledges
    /// stanzas (XEP-0198 on XEP-0114, [`crate::component::sm`]).
    pub sm: bool,
    /// Write `xmlns:held='urn:fedgate:held:0'`: on a component stream, a peer that reports
    /// (gateway) or understands (backend) stanzas acknowledged out of order
    /// ([`crate::component::held`]).
    pub held: bool,
}

impl OpenStream<'_> {
    /// Appends the XML declaration and the stream start tag to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
        out.extend_from_slice(escape_attr(self.content_ns).as_bytes());
        out.extend_from_slice(b"' xmlns:stream='");
        out.extend_from_slice(ns::STREAM.as_bytes());
        out.push(b'\'');
        if self.dialback {
            out.extend_from_slice(b" xmlns:db='");
            out.extend_from_slice(ns::DIALBACK.as_bytes());
            out.push(b'\'');
        }
        if self.drain {
            out.extend_from_slice(b" xmlns:drain='");
            out.extend_from_slice(ns::DRAIN.as_bytes());
            out.push(b'\'');
        }
        if self.sm {
            out.extend_from_slice(b" xmlns:sm='");
            out.extend_from_slice(super::ns::SM.as_bytes());
            out.push(b'\'');
        }
        if self.held {
            out.extend_from_slice(b" xmlns:held='");
            out.extend_from_slice(super::ns::HELD.as_bytes());
            out.push(b'\'');
        }
        for (name, value) in [("from", self.from), ("to", self.to), ("id", self.id)] {
            if let Some(value) = value {
                out.push(b' ');
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"='");
                out.extend_from_slice(escape_attr(value).as_bytes());
                out.push(b'\'');
            }
        }
        if self.version {
            out.extend_from_slice(b" version='1.0'");
        }
        out.push(b'>');
    }
}

/// The closing tag of a stream (RFC 6120 §4.4). fedgate always uses the
/// `stream` prefix on its own streams, so this is a constant.
pub const CLOSE_STREAM: &[u8] = b"</stream:stream>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_major_version_1_is_supported_and_pre_1_0_where_allowed() {
        let header = |version: Option<&str>| StreamHeader {
            to: None,
            from: None,
            id: None,
            version: version.map(str::to_string),
            lang: None,
            default_ns: None,
            prefixes: Vec::new(),
        };
        for ok in ["1.0", "1.1", "1"] {
            assert_eq!(header(Some(ok)).unsupported_version(false), None, "{ok}");
        }
        for bad in ["2.0", "0.9", "x"] {
            assert!(
                header(Some(bad)).unsupported_version(true).is_some(),
                "{bad}"
            );
        }
        assert_eq!(header(None).unsupported_version(true), None);
        assert!(header(None).unsupported_version(false).is_some());
    }

    #[test]
    fn open_stream_bytes() {
        let mut out = Vec::new();
        OpenStream {
            content_ns: ns::SERVER,
            from: Some("a.example"),
            to: Some("b'.example"),
            id: Some("x&y"),
            version: true,
            dialback: true,
            drain: false,
            sm: false,
            held: false,
        }
        .write(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns:db='jabber:server:dialback' from='a.example' to='b&apos;.example' \
             id='x&amp;y' version='1.0'>"
        );
        let mut out = Vec::new();
        OpenStream {
            content_ns: ns::COMPONENT,
            ..Default::default()
        }
        .write(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams'>"
        );
    }

    #[test]
    fn header_prefixes() {
        let h = StreamHeader {
            prefixes: vec![
                ("stream".into(), ns::STREAM.into()),
                ("db".into(), ns::DIALBACK.into()),
            ],
            ..Default::default()
        };
        assert_eq!(h.prefix_uri("stream"), Some(ns::STREAM));
        assert!(h.declares_dialback());
        assert!(!StreamHeader::default().declares_dialback());
    }
}
