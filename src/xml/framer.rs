//! Incremental, sans-I/O framing of an XMPP stream (RFC 6120 §4, §11).
//!
//! An XMPP stream is one XML document whose root is `<stream:stream>`; each
//! child of the root is a stanza or a stream-level element. The [`Framer`]
//! cuts that document into [`Event`]s:
//!
//! 1. Before the root: whitespace, an optional XML declaration, then the
//!    stream start tag, which becomes [`Event::StreamOpen`] (§4.7). The root
//!    must be `stream` in `http://etherx.jabber.org/streams`.
//! 2. After the root: each complete depth-1 element becomes [`Event::Stanza`],
//!    cut out of the read buffer without copying. Whitespace between stanzas
//!    is a keepalive (§4.6.1) and is dropped; other character data there is
//!    `bad-format`.
//! 3. The root's end tag becomes [`Event::StreamClose`] (§4.4); later bytes
//!    are ignored.
//!
//! Everything is checked as it arrives: well-formedness, UTF-8 (§11.6), the
//! restrictions of §11.1 (no comments, processing instructions, DTDs or
//! non-predefined entities), namespace prefixes, and the [`Limits`].
//!
//! # Why a hand-written boundary scan
//! Input arrives in arbitrary pieces. quick-xml's reader wants a complete
//! document or a blocking `BufRead`, so resuming it mid-token is awkward.
//! The framer instead finds token boundaries itself (with `memchr`), keeps a
//! cursor to the end of the last complete token, and only ever rescans the
//! incomplete tail, so a large stanza arriving in small reads costs linear
//! time. The syntax of each complete token (attributes, duplicate checks,
//! unescaping) is delegated to quick-xml.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use memchr::{memchr, memmem};
use quick_xml::events::attributes::Attributes;

use super::chars::{
    check_chars, check_qname, check_refs, check_tag_chars, is_name_start, is_ws, is_ws_char,
    restricted, skip_ws, trim_ws_end, unescape,
};
use super::error::XmlError;
use super::ns::{self, NsContext};
use super::scan::{
    check_attr_separator, check_prefix_decl, classify_bang, not_a_tag, split_self_closing, Bang,
    Scanner,
};
use super::stanza::Stanza;
use super::stream::StreamHeader;

/// The limits live with the scanner that enforces them; `xml::framer::Limits` is where the
/// streams look for them.
pub use super::scan::Limits;

/// What the framer found in the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer's stream header (RFC 6120 §4.7).
    StreamOpen(StreamHeader),
    /// A complete top-level element.
    Stanza(Stanza),
    /// `</stream:stream>`: the peer closed its stream (RFC 6120 §4.4).
    StreamClose,
}

/// Spare capacity [`Framer::read_buf`] guarantees before a read.
pub const READ_RESERVE: usize = 16 * 1024;

/// Incremental stream framer. See the [module docs](self).
#[derive(Debug)]
pub struct Framer {
    /// Bytes read but not yet returned as events. Stanzas are split off the
    /// front, so in-stanza offsets are relative to `buf[0]`. Allocated at the
    /// first read, and given up while the stream is idle
    /// ([`Framer::release_buffer`]).
    buf: BytesMut,
    limits: Limits,
    /// The current stream's header; `None` until it has been parsed.
    header: Option<StreamHeader>,
    /// Namespace context of the current stream, shared by all its stanzas so
    /// each can later be re-targeted without the framer.
    ctx: Arc<NsContext>,
    /// The root's qualified name as written (`stream:stream`), to match the
    /// closing tag.
    root_qname: String,
    /// An XML declaration was seen for this stream (only one is allowed).
    seen_decl: bool,
    /// Where to resume searching for the end of an incomplete XML
    /// declaration or closing root tag (0 = from the start).
    resume: usize,
    /// `buf[0]` is the start of a top-level element being scanned.
    in_stanza: bool,
    /// The stream header was self-closing: report StreamClose next.
    close_pending: bool,
    /// The root element has ended; further bytes are ignored.
    closed: bool,
    scanner: Scanner,
}

impl Framer {
    /// A framer for a new stream, waiting for the stream header. The read buffer is
    /// only allocated at the first read.
    pub fn new(limits: Limits) -> Self {
        Framer {
            buf: BytesMut::new(),
            limits,
            header: None,
            ctx: Arc::new(NsContext::new("", &[])),
            root_qname: String::new(),
            seen_decl: false,
            resume: 0,
            in_stanza: false,
            close_pending: false,
            closed: false,
            scanner: Scanner::default(),
        }
    }

    /// Replaces the limits, e.g. to raise them after authentication. Applies
    /// from the next call to [`next_event`](Self::next_event) on.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The limits in force now.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The buffer to read socket data into (`socket.read_buf(framer.read_buf())`).
    /// Always has spare capacity, so such a read never returns 0 for lack of
    /// space.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < READ_RESERVE / 4 {
            self.buf.reserve(READ_RESERVE);
        }
        &mut self.buf
    }

    /// Gives up the read buffer's memory when nothing is buffered, so that a
    /// stream waiting for its peer holds none; the next [`Framer::read_buf`]
    /// allocates anew. Returns whether it did. Stanzas already returned keep
    /// their bytes: they share the allocation, which goes with the last of
    /// them.
    pub fn release_buffer(&mut self) -> bool {
        if !self.buf.is_empty() || self.buf.capacity() == 0 {
            return false;
        }
        self.buf = BytesMut::new();
        true
    }

    /// Whether the framer holds a read buffer (see [`Framer::release_buffer`]).
    pub fn has_buffer(&self) -> bool {
        self.buf.capacity() > 0
    }

    /// Appends bytes to the read buffer.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as events.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether what is buffered is only whitespace (a newline a client sends after each
    /// element, as go-sendxmpp does after `<starttls/>`).
    pub fn buffered_is_whitespace(&self) -> bool {
        skip_ws(&self.buf) == self.buf.len()
    }

    /// The current stream's header, once [`Event::StreamOpen`] was returned.
    pub fn header(&self) -> Option<&StreamHeader> {
        self.header.as_ref()
    }

    /// The namespace context stanzas of the current stream are parsed in.
    pub fn ns_context(&self) -> &Arc<NsContext> {
        &self.ctx
    }

    /// Whether the peer's `</stream:stream>` has been seen.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Restarts the stream (RFC 6120 §5.4.3.3 after STARTTLS, §6.4.6 after
    /// SASL): forgets the header and expects a new one. All buffered bytes are
    /// discarded, because bytes that arrived before the restart belong to the
    /// old (e.g. plaintext) layer and must never be parsed as part of the new
    /// stream. Returns how many bytes were discarded; a non-zero value means
    /// the peer pipelined data it should not have.
    pub fn reset(&mut self) -> usize {
        let discarded = self.buf.len();
        self.buf.clear();
        self.header = None;
        self.ctx = Arc::new(NsContext::new("", &[]));
        self.root_qname.clear();
        self.seen_decl = false;
        self.resume = 0;
        self.in_stanza = false;
        self.close_pending = false;
        self.closed = false;
        self.scanner.reset();
        discarded
    }
    /// Frames a whole `input` fed in the pieces `cuts` (ascending offsets) makes: the events,
    /// and the error that stopped it, if any. For the property test and the fuzz targets,
    /// which hold that the events do not depend on where the reads fall.
    pub fn frame_in_pieces(
        input: &[u8],
        cuts: &[usize],
        limits: Limits,
    ) -> (Vec<Event>, Option<XmlError>) {
        let mut framer = Framer::new(limits);
        let mut events = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            framer.feed(&input[at..cut]);
            at = cut;
            loop {
                match framer.next_event() {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => break,
                    Err(e) => return (events, Some(e)),
                }
            }
        }
        (events, None)
    }

    /// Returns the next event, `Ok(None)` when more bytes are needed. An error
    /// is fatal for the stream; calling again after one is unspecified.
    pub fn next_event(&mut self) -> Result<Option<Event>, XmlError> {
        if self.close_pending {
            self.close_pending = false;
            self.closed = true;
            return Ok(Some(Event::StreamClose));
        }
        if self.closed {
            self.buf.clear();
            return Ok(None);
        }
        if self.header.is_none() {
            return self.next_header();
        }
        if !self.in_stanza {
            let ws = skip_ws(&self.buf);
            self.buf.advance(ws);
            if self.buf.is_empty() {
                return Ok(None);
            }
            if self.buf[0] != b'<' {
                return Err(XmlError::BadFormat {
                    reason: "character data between stanzas".into(),
                });
            }
            if self.buf.len() < 2 {
                return Ok(None);
            }
            if self.buf[1] == b'/' {
                return self.close_root();
            }
            self.in_stanza = true;
        }
        // The scanner never sees past the limit, so a fault beyond it is reported as the size,
        // the same verdict as when the bytes arrive in pieces and the limit is passed first.
        let max = self.limits.max_stanza_bytes;
        let within = &self.buf[..self.buf.len().min(max)];
        match self.scanner.scan(within, &self.ctx, &self.limits)? {
            None if self.buf.len() > max => Err(XmlError::StanzaTooLarge { max }),
            None => Ok(None),
            Some(len) => {
                let raw = self.buf.split_to(len).freeze();
                self.in_stanza = false;
                let stanza = Stanza::new(raw, self.ctx.clone(), self.scanner.take_facts());
                Ok(Some(Event::Stanza(stanza)))
            }
        }
    }

    /// Handles `</...>` at depth 1, which can only be the root's end tag.
    fn close_root(&mut self) -> Result<Option<Event>, XmlError> {
        // Resume where the last search stopped: a peer trickling a huge tag
        // byte by byte must not cost quadratic time.
        let from = self.resume.max(2);
        let within = &self.buf[..self.buf.len().min(self.limits.max_stanza_bytes)];
        let Some(gt) = within
            .get(from..)
            .and_then(|rest| memchr(b'>', rest))
            .map(|n| from + n)
        else {
            self.resume = self.buf.len();
            if self.buf.len() > self.limits.max_stanza_bytes {
                return Err(XmlError::StanzaTooLarge {
                    max: self.limits.max_stanza_bytes,
                });
            }
            return Ok(None);
        };
        let name = trim_ws_end(&self.buf[2..gt]);
        if name != self.root_qname.as_bytes() {
            std::str::from_utf8(name).map_err(|_| XmlError::InvalidUtf8)?;
            return Err(XmlError::nwf(format!(
                "end tag does not match <{}>",
                self.root_qname
            )));
        }
        self.buf.clear();
        self.closed = true;
        Ok(Some(Event::StreamClose))
    }

    /// Before the stream element: whitespace, optional XML declaration, root.
    fn next_header(&mut self) -> Result<Option<Event>, XmlError> {
        let max = self.limits.max_stanza_bytes;
        loop {
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            if !self.seen_decl && !self.buf.is_empty() {
                // A UTF-8 byte order mark is allowed before the document.
                if self.buf.starts_with(BOM) {
                    self.buf.advance(3);
                } else if BOM.starts_with(&self.buf) {
                    return Ok(None);
                }
            }
            let ws = skip_ws(&self.buf);
            self.buf.advance(ws);
            if self.buf.is_empty() {
                return Ok(None);
            }
            if self.buf[0] != b'<' {
                return Err(XmlError::nwf("character data before the stream header"));
            }
            let Some(&second) = self.buf.get(1) else {
                return Ok(None);
            };
            match second {
                b'?' => {
                    // `<?xml` followed by whitespace is the declaration;
                    // anything else (`<?xml-stylesheet`, `<?foo`) is a PI.
                    let n = self.buf.len().min(5);
                    if self.seen_decl || self.buf[..n] != b"<?xml"[..n] {
                        return Err(restricted("processing instruction"));
                    }
                    if self.buf.len() < 6 {
                        return Ok(None);
                    }
                    if !is_ws(self.buf[5]) {
                        return Err(restricted("processing instruction"));
                    }
                    let from = self.resume.max(6);
                    let within = &self.buf[..self.buf.len().min(max)];
                    let found = within
                        .get(from..)
                        .and_then(|rest| memmem::find(rest, b"?>"));
                    let Some(end) = found.map(|n| from + n) else {
                        self.resume = self.buf.len() - 1;
                        return if self.buf.len() > max {
                            Err(XmlError::StanzaTooLarge { max })
                        } else {
                            Ok(None)
                        };
                    };
                    check_xml_decl(&self.buf[5..end])?;
                    self.seen_decl = true;
                    self.resume = 0;
                    self.buf.advance(end + 2);
                }
                b'!' => {
                    return match classify_bang(&self.buf)? {
                        None => Ok(None),
                        Some(Bang::CData) => Err(XmlError::nwf("CDATA before the stream header")),
                    };
                }
                b'/' => return Err(XmlError::nwf("end tag before the stream header")),
                c if !is_name_start(c) => return Err(not_a_tag(c)),
                _ => {
                    let Some(gt) = self.scanner.find_tag_end(&self.buf, 1) else {
                        return if self.buf.len() > max {
                            Err(XmlError::StanzaTooLarge { max })
                        } else {
                            Ok(None)
                        };
                    };
                    if gt + 1 > max {
                        return Err(XmlError::StanzaTooLarge { max });
                    }
                    let (header, qname, self_closing) =
                        parse_header(&self.buf[1..gt], &self.limits)?;
                    self.buf.advance(gt + 1);
                    self.ctx = Arc::new(NsContext::from_header(&header));
                    self.root_qname = qname;
                    self.close_pending = self_closing;
                    self.header = Some(header.clone());
                    return Ok(Some(Event::StreamOpen(header)));
                }
            }
        }
    }
}

/// Checks the pseudo-attributes of `<?xml ...?>` (XML 1.0 §2.8): version 1.x
/// and, if given, encoding UTF-8 (RFC 6120 §11.6).
fn check_xml_decl(body: &[u8]) -> Result<(), XmlError> {
    let s = std::str::from_utf8(body).map_err(|_| XmlError::InvalidUtf8)?;
    check_chars(s.as_bytes())?;
    let mut version = false;
    for attr in Attributes::new(s, 0) {
        let attr = attr.map_err(|e| XmlError::nwf(format!("XML declaration: {e}")))?;
        match attr.key.into_inner() {
            "version" if attr.value.starts_with("1.") => version = true,
            "version" => return Err(XmlError::nwf("XML version is not 1.x")),
            "encoding" if attr.value.eq_ignore_ascii_case("UTF-8") => {}
            "encoding" => {
                return Err(XmlError::UnsupportedEncoding {
                    encoding: attr.value.into_owned(),
                })
            }
            "standalone" => {}
            other => return Err(XmlError::nwf(format!("XML declaration: unknown {other:?}"))),
        }
    }
    if !version {
        return Err(XmlError::nwf("XML declaration without version"));
    }
    Ok(())
}

/// Parses the content of the stream start tag (between `<` and `>`).
fn parse_header(inner: &[u8], limits: &Limits) -> Result<(StreamHeader, String, bool), XmlError> {
    let (body, self_closing) = split_self_closing(inner);
    let s = std::str::from_utf8(body).map_err(|_| XmlError::InvalidUtf8)?;
    check_tag_chars(s.as_bytes())?;
    let name_end = s.find(is_ws_char).unwrap_or(s.len());
    let qname = &s[..name_end];
    check_qname(qname)?;
    let mut header = StreamHeader::default();
    let mut count = 0;
    let mut attrs = Attributes::new(s, name_end);
    attrs.with_checks(true);
    let mut prefixed_attrs = false;
    for attr in attrs {
        let attr = attr.map_err(|e| XmlError::nwf(format!("stream header: {e}")))?;
        count += 1;
        if count > limits.max_attributes {
            return Err(XmlError::TooManyAttributes {
                max: limits.max_attributes,
            });
        }
        let key = attr.key.into_inner();
        check_qname(key)?;
        check_attr_separator(s, &attr.value)?;
        check_refs(attr.value.as_bytes()).map_err(|(_, e)| e)?;
        let value = unescape(&attr.value)?;
        match key {
            "to" => header.to = Some(value),
            "from" => header.from = Some(value),
            "id" => header.id = Some(value),
            "version" => header.version = Some(value),
            "xml:lang" => header.lang = Some(value),
            "xmlns" => header.default_ns = Some(value),
            _ => {
                if let Some(prefix) = key.strip_prefix("xmlns:") {
                    check_prefix_decl(prefix, &value)?;
                    header.prefixes.push((prefix.to_owned(), value));
                } else if key.contains(':') {
                    prefixed_attrs = true;
                }
            }
        }
    }
    if prefixed_attrs {
        for attr in Attributes::new(s, name_end).flatten() {
            let key = attr.key.into_inner();
            if let Some((prefix, _)) = key.split_once(':') {
                if prefix != "xmlns" && prefix != "xml" && header.prefix_uri(prefix).is_none() {
                    return Err(XmlError::BadNamespacePrefix {
                        prefix: prefix.to_owned(),
                    });
                }
            }
        }
    }
    let (prefix, local) = match qname.split_once(':') {
        Some((p, l)) => (Some(p), l),
        None => (None, qname),
    };
    let uri = match prefix {
        Some(p) => header
            .prefix_uri(p)
            .ok_or_else(|| XmlError::BadNamespacePrefix {
                prefix: p.to_owned(),
            })?,
        None => header.default_ns.as_deref().unwrap_or(""),
    };
    if local != "stream" || uri != ns::STREAM {
        return Err(XmlError::InvalidNamespace {
            reason: format!(
                "root element is {{{uri}}}{local}, expected {{{}}}stream",
                ns::STREAM
            ),
        });
    }
    Ok((header, qname.to_owned(), self_closing))
}

#[cfg(test)]
#[path = "framer_tests.rs"]
mod tests;
