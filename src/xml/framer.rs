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
use memchr::{memchr, memchr3, memmem, memrchr};
use quick_xml::events::attributes::Attributes;

use super::error::XmlError;
use super::ns;
use super::stanza::{Facts, NsContext, NsUri, Stanza, Val};
use super::stream::StreamHeader;

/// Resource limits for one stream. They bound the memory a peer can make the
/// framer hold and the work it can cause per stanza.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest top-level element (and stream header), in bytes. The buffer
    /// never holds more than this plus one read.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside one stanza; the stanza element itself is
    /// depth 1.
    pub max_depth: usize,
    /// Most attributes (including namespace declarations) on one element.
    pub max_attributes: usize,
}

impl Default for Limits {
    /// Pre-authentication defaults: 64 KiB stanzas, depth 32, 64 attributes.
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 64 * 1024,
            max_depth: 32,
            max_attributes: 64,
        }
    }
}

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
                let stanza = self.scanner.take_stanza(raw, &self.ctx);
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

/// `<` followed by something that cannot start a name, e.g. `<'`: without this check the
/// quote would be taken for an attribute value and everything after it swallowed until the
/// stream timed out.
fn not_a_tag(c: u8) -> XmlError {
    XmlError::nwf(format!("'<' followed by {:?} starts no tag", char::from(c)))
}

fn restricted(what: &'static str) -> XmlError {
    XmlError::RestrictedXml { what }
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

// ---------------------------------------------------------------------------
// The per-stanza scanner.

/// One open element inside the stanza being scanned.
#[derive(Clone, Copy, Debug)]
struct Open {
    /// Qualified name, as a range of the buffer, to match the end tag.
    name: (usize, usize),
    /// `decls.len()` before this element's declarations were pushed.
    decls_before: usize,
}

/// A prefix declaration made inside the stanza: prefix and value ranges.
#[derive(Clone, Copy, Debug)]
struct Decl {
    prefix: (usize, usize),
    value: (usize, usize),
}

/// Scans one top-level element that starts at `buf[0]`, resuming where the
/// previous call stopped. All offsets are relative to the element's start,
/// which stays at `buf[0]` until the element is complete.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    /// End of the last complete (validated) token.
    pos: usize,
    /// Resume offset for the search for the end of an incomplete token
    /// (0 = start a new search), so a long tag is not rescanned on each read.
    scan_from: usize,
    /// Quote character the resumed tag search is inside of (0 = none).
    quote: u8,
    open: Vec<Open>,
    decls: Vec<Decl>,
    /// Scratch: attribute names of the tag being parsed (duplicate check).
    seen: Vec<(usize, usize)>,
    top: Facts,
}

impl Scanner {
    pub(crate) fn reset(&mut self) {
        self.pos = 0;
        self.scan_from = 0;
        self.quote = 0;
        self.open.clear();
        self.decls.clear();
        self.top = Facts::default();
    }

    /// Scans on; `Ok(Some(len))` when the element ends at `buf[len - 1]`.
    pub(crate) fn scan(
        &mut self,
        buf: &[u8],
        ctx: &NsContext,
        limits: &Limits,
    ) -> Result<Option<usize>, XmlError> {
        loop {
            let pos = self.pos;
            if pos >= buf.len() {
                return Ok(None);
            }
            if buf[pos] != b'<' {
                if self.open.is_empty() {
                    return Err(XmlError::BadFormat {
                        reason: "character data between stanzas".into(),
                    });
                }
                match memchr(b'<', &buf[pos..]) {
                    Some(n) => {
                        check_text(&buf[pos..pos + n])?;
                        self.pos = pos + n;
                    }
                    None => {
                        self.pos = pos + check_partial_text(&buf[pos..])?;
                        return Ok(None);
                    }
                }
                continue;
            }
            let Some(&second) = buf.get(pos + 1) else {
                return Ok(None);
            };
            match second {
                b'/' if self.open.is_empty() => {
                    return Err(XmlError::nwf("end tag without start tag"));
                }
                b'/' => {
                    let from = self.scan_from.max(pos + 2);
                    let Some(n) = memchr(b'>', &buf[from..]) else {
                        self.scan_from = buf.len();
                        return Ok(None);
                    };
                    self.scan_from = 0;
                    let gt = from + n;
                    self.end_tag(buf, pos, gt)?;
                    self.pos = gt + 1;
                    if self.open.is_empty() {
                        return Ok(Some(gt + 1));
                    }
                }
                b'?' => return Err(restricted("processing instruction")),
                b'!' => match classify_bang(&buf[pos..])? {
                    None => return Ok(None),
                    Some(Bang::CData) => {
                        if self.open.is_empty() {
                            return Err(XmlError::BadFormat {
                                reason: "CDATA between stanzas".into(),
                            });
                        }
                        let start = pos + 9;
                        let from = self.scan_from.max(start);
                        let Some(n) = memmem::find(&buf[from..], b"]]>") else {
                            self.scan_from = buf.len().saturating_sub(2).max(start);
                            return Ok(None);
                        };
                        self.scan_from = 0;
                        let end = from + n;
                        let content = &buf[start..end];
                        std::str::from_utf8(content).map_err(|_| XmlError::InvalidUtf8)?;
                        check_chars(content)?;
                        self.pos = end + 3;
                    }
                },
                c if !is_name_start(c) => return Err(not_a_tag(c)),
                _ => {
                    let Some(gt) = self.find_tag_end(buf, pos + 1) else {
                        return Ok(None);
                    };
                    let self_closing = self.start_tag(buf, pos, gt, ctx, limits)?;
                    self.pos = gt + 1;
                    if self_closing && self.open.is_empty() {
                        return Ok(Some(gt + 1));
                    }
                }
            }
        }
    }

    /// Finds the `>` closing a start tag, skipping quoted attribute values.
    /// Resumable: remembers how far it got and whether it is inside quotes.
    fn find_tag_end(&mut self, buf: &[u8], from: usize) -> Option<usize> {
        let mut i = if self.scan_from > 0 {
            self.scan_from
        } else {
            from
        };
        let mut quote = self.quote;
        loop {
            if quote != 0 {
                match memchr(quote, &buf[i..]) {
                    Some(n) => {
                        i += n + 1;
                        quote = 0;
                    }
                    None => break,
                }
            } else {
                match memchr3(b'>', b'\'', b'"', &buf[i..]) {
                    Some(n) if buf[i + n] == b'>' => {
                        self.scan_from = 0;
                        self.quote = 0;
                        return Some(i + n);
                    }
                    Some(n) => {
                        quote = buf[i + n];
                        i += n + 1;
                    }
                    None => break,
                }
            }
        }
        self.scan_from = buf.len();
        self.quote = quote;
        None
    }

    fn end_tag(&mut self, buf: &[u8], lt: usize, gt: usize) -> Result<(), XmlError> {
        let name = trim_ws_end(&buf[lt + 2..gt]);
        let open = self.open.pop().expect("end tag inside a stanza");
        if name != &buf[open.name.0..open.name.1] {
            std::str::from_utf8(name).map_err(|_| XmlError::InvalidUtf8)?;
            return Err(XmlError::nwf(format!(
                "end tag </{}> does not match <{}>",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(&buf[open.name.0..open.name.1])
            )));
        }
        self.decls.truncate(open.decls_before);
        Ok(())
    }

    /// Validates a complete start tag `buf[lt..=gt]`, records namespace
    /// declarations and, for the top element, the routing facts. Returns
    /// whether it is self-closing.
    fn start_tag(
        &mut self,
        buf: &[u8],
        lt: usize,
        gt: usize,
        ctx: &NsContext,
        limits: &Limits,
    ) -> Result<bool, XmlError> {
        let (body, self_closing) = split_self_closing(&buf[lt + 1..gt]);
        let s = std::str::from_utf8(body).map_err(|_| XmlError::InvalidUtf8)?;
        check_tag_chars(body)?;
        if self.open.len() + 1 > limits.max_depth {
            return Err(XmlError::TooDeep {
                max: limits.max_depth,
            });
        }
        let base = lt + 1;
        let name_end = s.find(is_ws_char).unwrap_or(s.len());
        let qname = &s[..name_end];
        check_qname(qname)?;
        let is_top = self.open.is_empty();
        if is_top {
            self.top.name = (base, base + name_end);
            self.top.start_len = gt + 1 - lt;
        }
        let decls_before = self.decls.len();
        let mut default_decl: Option<&str> = None;
        let mut prefixed_attrs = false;
        let mut count = 0;
        // quick-xml's duplicate check allocates per tag; this one reuses
        // `seen` (quadratic, but bounded by `max_attributes`).
        self.seen.clear();
        let mut attrs = Attributes::new(s, name_end);
        attrs.with_checks(false);
        for attr in attrs {
            let attr = attr.map_err(|e| XmlError::nwf(e.to_string()))?;
            count += 1;
            if count > limits.max_attributes {
                return Err(XmlError::TooManyAttributes {
                    max: limits.max_attributes,
                });
            }
            let key = attr.key.into_inner();
            check_qname(key)?;
            let key_range = sub_range(s, key, 0);
            if self.seen.iter().any(|r| &s[r.0..r.1] == key) {
                return Err(XmlError::nwf(format!("duplicate attribute {key:?}")));
            }
            self.seen.push(key_range);
            check_attr_separator(s, &attr.value)?;
            check_refs(attr.value.as_bytes()).map_err(|(_, e)| e)?;
            let value_range = sub_range(s, &attr.value, base);
            if key == "xmlns" {
                check_ns_name(&attr.value)?;
                default_decl = Some(str_at(s, &attr.value));
            } else if let Some(prefix) = key.strip_prefix("xmlns:") {
                check_prefix_decl(prefix, &attr.value)?;
                self.decls.push(Decl {
                    prefix: sub_range(s, prefix, base),
                    value: value_range,
                });
            } else if key.contains(':') {
                prefixed_attrs = true;
            } else if is_top {
                let slot = match key {
                    "to" => &mut self.top.to,
                    "from" => &mut self.top.from,
                    "id" => &mut self.top.id,
                    "type" => &mut self.top.type_,
                    _ => continue,
                };
                *slot = Some(if attr.value.contains('&') {
                    Val::Owned(unescape(&attr.value)?.into_boxed_str())
                } else {
                    Val::Span(value_range.0, value_range.1)
                });
            }
        }
        if is_top {
            let content = ctx.content_ns();
            let decl_is_content = |v: &str| uri_eq(v, content);
            self.top.declares_content_ns = default_decl.is_some_and(decl_is_content)
                || self.decls[decls_before..]
                    .iter()
                    .any(|d| decl_is_content(str_of(buf, d.value)));
        }
        // Element prefix, then attribute prefixes: declarations on this very
        // element are already in scope for both.
        let element_uri = self.resolve(buf, qname.split_once(':').map(|(p, _)| p), ctx)?;
        if is_top {
            let uri = match element_uri {
                Some(uri) => uri,
                None => match default_decl {
                    Some(v) => ns_uri(v)?,
                    None => ctx.content.clone(),
                },
            };
            // A stream header inside the stream is refused at its start tag, not when (if
            // ever) it closes.
            if uri.as_str() == ns::STREAM && qname.rsplit(':').next() == Some("stream") {
                return Err(XmlError::BadFormat {
                    reason: "a stream header inside the stream".into(),
                });
            }
            self.top.ns = Some(uri);
        }
        if prefixed_attrs {
            for attr in Attributes::new(s, name_end).flatten() {
                let key = attr.key.into_inner();
                if let Some((prefix, _)) = key.split_once(':') {
                    if prefix != "xmlns" {
                        self.resolve(buf, Some(prefix), ctx)?;
                    }
                }
            }
            self.check_expanded_names(buf, s, ctx)?;
        }
        if self_closing {
            self.decls.truncate(decls_before);
        } else {
            self.open.push(Open {
                name: (base, base + name_end),
                decls_before,
            });
        }
        Ok(self_closing)
    }

    /// Namespaces in XML §6.3: no two attributes of one element may have the same expanded
    /// name, e.g. `a:z` and `b:z` with `a` and `b` bound to one namespace. Expat refuses that
    /// ("duplicate attribute"), so forwarding it would break a backend's or a peer's stream.
    /// Runs only for tags with prefixed attributes (`seen` holds this tag's names).
    fn check_expanded_names(&self, buf: &[u8], s: &str, ctx: &NsContext) -> Result<(), XmlError> {
        let prefixed: Vec<(&str, &str)> = self
            .seen
            .iter()
            .map(|r| &s[r.0..r.1])
            .filter_map(|k| k.split_once(':'))
            .filter(|(p, _)| *p != "xmlns")
            .collect();
        for (i, (p1, l1)) in prefixed.iter().enumerate() {
            for (p2, l2) in &prefixed[..i] {
                if l1 == l2 && self.prefix_uri(buf, p1, ctx) == self.prefix_uri(buf, p2, ctx) {
                    return Err(XmlError::nwf(format!(
                        "duplicate attribute: {p1}:{l1} and {p2}:{l2} are the same name in one namespace"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The namespace name `prefix` is bound to here (it was resolved before), unescaped.
    fn prefix_uri(&self, buf: &[u8], prefix: &str, ctx: &NsContext) -> Option<String> {
        if let Some(d) = self
            .decls
            .iter()
            .rev()
            .find(|d| &buf[d.prefix.0..d.prefix.1] == prefix.as_bytes())
        {
            return unescape(str_of(buf, d.value)).ok();
        }
        if prefix == "xml" {
            return Some(ns::XML.to_owned());
        }
        ctx.prefixes
            .iter()
            .find(|(p, _)| &**p == prefix)
            .map(|(_, uri)| uri.as_str().to_owned())
    }

    /// Checks that `prefix` is bound. Bindings from the stream header are
    /// recorded as inherited. Returns the URI for prefixed names of the top
    /// element only (the framer does not need it elsewhere).
    fn resolve(
        &mut self,
        buf: &[u8],
        prefix: Option<&str>,
        ctx: &NsContext,
    ) -> Result<Option<NsUri>, XmlError> {
        let Some(prefix) = prefix else {
            return Ok(None);
        };
        let want_uri = self.open.is_empty();
        if let Some(d) = self
            .decls
            .iter()
            .rev()
            .find(|d| &buf[d.prefix.0..d.prefix.1] == prefix.as_bytes())
        {
            return Ok(if want_uri {
                Some(ns_uri(str_of(buf, d.value))?)
            } else {
                None
            });
        }
        if prefix == "xml" {
            return Ok(want_uri.then_some(NsUri::Known(ns::XML)));
        }
        match ctx.prefixes.iter().position(|(p, _)| &**p == prefix) {
            Some(i) => {
                self.top.inherited |= 1u64 << i.min(63);
                Ok(want_uri.then(|| ctx.prefixes[i].1.clone()))
            }
            None => Err(XmlError::BadNamespacePrefix {
                prefix: prefix.to_owned(),
            }),
        }
    }

    /// Builds the stanza from the facts collected for `raw` and resets.
    pub(crate) fn take_stanza(&mut self, raw: bytes::Bytes, ctx: &Arc<NsContext>) -> Stanza {
        let facts = std::mem::take(&mut self.top);
        self.reset();
        Stanza::new(raw, ctx.clone(), facts)
    }
}

// ---------------------------------------------------------------------------
// Token-level helpers.

enum Bang {
    CData,
}

/// Classifies `<!...` markup. Comments and DTD markup are restricted XML
/// (RFC 6120 §11.1); `None` means more bytes are needed to tell.
fn classify_bang(rest: &[u8]) -> Result<Option<Bang>, XmlError> {
    const KINDS: [(&[u8], Option<&str>); 7] = [
        (b"<!--", Some("comment")),
        (b"<![CDATA[", None),
        (b"<!DOCTYPE", Some("DTD")),
        (b"<!ENTITY", Some("entity declaration")),
        (b"<!ELEMENT", Some("DTD")),
        (b"<!ATTLIST", Some("DTD")),
        (b"<!NOTATION", Some("DTD")),
    ];
    let mut partial = false;
    for (kw, what) in KINDS {
        if rest.starts_with(kw) {
            return match what {
                Some(what) => Err(restricted(what)),
                None => Ok(Some(Bang::CData)),
            };
        }
        partial |= rest.len() < kw.len() && kw.starts_with(rest);
    }
    if partial {
        Ok(None)
    } else {
        Err(XmlError::nwf("invalid markup after '<!'"))
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_ws_char(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn skip_ws(b: &[u8]) -> usize {
    b.iter().position(|&c| !is_ws(c)).unwrap_or(b.len())
}

fn trim_ws_end(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| !is_ws(c)).map_or(0, |i| i + 1);
    &b[..end]
}

fn split_self_closing(inner: &[u8]) -> (&[u8], bool) {
    match inner.split_last() {
        Some((b'/', body)) => (body, true),
        _ => (inner, false),
    }
}

/// Byte range of `part` (a sub-slice of `whole`), shifted by `base`.
fn sub_range(whole: &str, part: &str, base: usize) -> (usize, usize) {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    assert!(
        start + part.len() <= whole.len(),
        "attribute parts are borrowed from the tag"
    );
    (base + start, base + start + part.len())
}

/// `value` re-borrowed from `s` (attribute values from `Attributes` are
/// always borrowed from the tag, but typed as `Cow`).
fn str_at<'s>(s: &'s str, value: &str) -> &'s str {
    let (start, end) = sub_range(s, value, 0);
    &s[start..end]
}

fn str_of(buf: &[u8], r: (usize, usize)) -> &str {
    // The range was validated as UTF-8 when its tag was scanned.
    std::str::from_utf8(&buf[r.0..r.1]).unwrap_or("")
}

/// XML requires whitespace between attributes; quick-xml tolerates `a='1'b='2'`.
fn check_attr_separator(s: &str, value: &str) -> Result<(), XmlError> {
    let (_, end) = sub_range(s, value, 0);
    match s.as_bytes().get(end + 1) {
        None => Ok(()),
        Some(&b) if is_ws(b) => Ok(()),
        Some(_) => Err(XmlError::nwf("missing whitespace between attributes")),
    }
}

/// A prefix declaration that breaks Namespaces in XML §3 (`xmlns:xmlns`, `xml` bound to
/// another name, an empty name) is not namespace-well-formed: `<not-well-formed/>` (RFC 6120
/// §4.9.3.13), not `<invalid-namespace/>`, which §4.9.3.10 keeps for the stream and content
/// namespaces.
fn check_prefix_decl(prefix: &str, value: &str) -> Result<(), XmlError> {
    let bad = |reason: &str| Err(XmlError::nwf(format!("xmlns:{prefix}: {reason}")));
    if prefix == "xmlns" {
        return bad("reserved prefix");
    }
    if prefix == "xml" && value != ns::XML {
        return bad("the xml prefix cannot be rebound");
    }
    if value.is_empty() {
        return bad("empty namespace name");
    }
    check_ns_name(value)
}

/// A namespace name with `{` or `}` is refused: the backends' parsers write expanded names
/// as `{uri}local` (ElementTree, so slixmpp; the class of CVE-2022-25236 in expat), and such a
/// name would break their stream. Neither character may appear unescaped in a URI (RFC 3986
/// §2), so no real namespace has one.
fn check_ns_name(value: &str) -> Result<(), XmlError> {
    if value.contains(['{', '}']) {
        return Err(XmlError::nwf(format!(
            "namespace name {value:?} contains '{{' or '}}', which is not allowed in a URI (RFC 3986)"
        )));
    }
    Ok(())
}

/// Whether the raw (escaped) attribute value `v` denotes `uri`.
fn uri_eq(v: &str, uri: &str) -> bool {
    if v.contains('&') {
        unescape(v).is_ok_and(|u| u == uri)
    } else {
        v == uri
    }
}

/// The namespace a raw declaration value denotes; no allocation for the
/// well-known namespaces written without entities.
fn ns_uri(v: &str) -> Result<NsUri, XmlError> {
    if v.contains('&') {
        Ok(NsUri::new(&unescape(v)?))
    } else {
        Ok(NsUri::new(v))
    }
}

/// Unescapes a validated value (predefined entities and character references).
pub(crate) fn unescape(v: &str) -> Result<String, XmlError> {
    quick_xml::escape::unescape(v)
        .map(|c| c.into_owned())
        .map_err(|e| XmlError::nwf(e.to_string()))
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_name_char(c: u8) -> bool {
    is_name_start(c) || c.is_ascii_digit() || c == b'-' || c == b'.'
}

/// A QName of Namespaces in XML §4: `NCName (':' NCName)?`. Bytes of
/// non-ASCII characters are accepted without consulting the full XML name
/// tables; this is a framing check, not a validator.
fn check_qname(q: &str) -> Result<(), XmlError> {
    let ncname = |n: &[u8]| match n.split_first() {
        Some((&first, rest)) => is_name_start(first) && rest.iter().all(|&c| is_name_char(c)),
        None => false,
    };
    let b = q.as_bytes();
    let ok = match memchr(b':', b) {
        Some(i) => ncname(&b[..i]) && ncname(&b[i + 1..]),
        None => ncname(b),
    };
    if ok {
        Ok(())
    } else {
        Err(XmlError::nwf(format!("invalid name {q:?}")))
    }
}

/// XML 1.0 §2.2 `Char` on valid UTF-8: rejects C0 controls other than tab,
/// LF and CR, and U+FFFE/U+FFFF. (Surrogates cannot occur in valid UTF-8.)
fn check_chars(b: &[u8]) -> Result<(), XmlError> {
    match first_bad_char(b) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// The offset of the first character [`check_chars`] rejects, and why.
fn first_bad_char(b: &[u8]) -> Option<(usize, XmlError)> {
    let is_bad = |c: u8| c < 0x20 && c != b'\t' && c != b'\n' && c != b'\r';
    let mut control = None;
    for (i, chunk) in b.chunks(64).enumerate() {
        // Branch-free fold so the compiler can vectorize the common case.
        if chunk.iter().fold(false, |acc, &c| acc | is_bad(c)) {
            control = chunk.iter().position(|&c| is_bad(c)).map(|at| i * 64 + at);
            break;
        }
    }
    let nonchar = memchr::memchr_iter(0xEF, &b[..control.unwrap_or(b.len())])
        .find(|&i| b.get(i + 1) == Some(&0xBF) && matches!(b.get(i + 2), Some(0xBE | 0xBF)));
    match (nonchar, control) {
        (Some(i), _) => Some((i, XmlError::nwf("illegal character U+FFFE/U+FFFF"))),
        (None, Some(i)) => Some((i, XmlError::nwf("illegal control character"))),
        (None, None) => None,
    }
}

/// Characters of a tag: legal chars and no `<` (which no name or attribute
/// value may contain).
fn check_tag_chars(b: &[u8]) -> Result<(), XmlError> {
    check_chars(b)?;
    if memchr(b'<', b).is_some() {
        return Err(XmlError::nwf("'<' inside a tag"));
    }
    Ok(())
}

fn is_legal_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Checks every `&...;` in `b`: the five predefined entities and character
/// references to legal characters pass; other named entities would need a
/// DTD, which RFC 6120 §11.1 forbids. On error, the offset of the `&` too.
fn check_refs(b: &[u8]) -> Result<(), (usize, XmlError)> {
    let mut from = 0;
    while let Some(n) = memchr(b'&', &b[from..]) {
        let amp = from + n;
        let malformed = || (amp, XmlError::nwf("malformed entity reference"));
        let Some(len) = memchr(b';', &b[amp + 1..]) else {
            return Err(malformed());
        };
        // As check_partial_text sees it, whether the `;` arrives in the same read or not:
        // it waits for the `;` of the last `&` only, and for at most MAX_REF_LEN bytes.
        if len >= MAX_REF_LEN || memchr(b'&', &b[amp + 1..amp + 1 + len]).is_some() {
            return Err(malformed());
        }
        check_ref(&b[amp + 1..amp + 1 + len]).map_err(|e| (amp, e))?;
        from = amp + 2 + len;
    }
    Ok(())
}

fn check_ref(name: &[u8]) -> Result<(), XmlError> {
    if let Some(num) = name.strip_prefix(b"#") {
        let (digits, radix) = match num.strip_prefix(b"x") {
            Some(hex) => (hex, 16),
            None => (num, 10),
        };
        let code = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.len() <= 8 && d.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|d| u32::from_str_radix(d, radix).ok());
        return match code {
            Some(c) if is_legal_char(c) => Ok(()),
            _ => Err(XmlError::nwf("invalid character reference")),
        };
    }
    match name {
        b"amp" | b"lt" | b"gt" | b"quot" | b"apos" => Ok(()),
        _ => match std::str::from_utf8(name) {
            Ok(n) if check_qname(n).is_ok() => Err(restricted("undefined entity reference")),
            _ => Err(XmlError::nwf("malformed entity reference")),
        },
    }
}

/// Validates character data that is complete (followed by `<`). Of several
/// faults, the first in the input is reported, so that the error does not
/// depend on how much of the text a read brought ([`check_partial_text`]
/// checks prefixes of it).
fn check_text(b: &[u8]) -> Result<(), XmlError> {
    let utf8 = std::str::from_utf8(b)
        .err()
        .map(|e| (e.valid_up_to(), XmlError::InvalidUtf8));
    let cdata_end = memchr::memchr_iter(b'>', b)
        .find(|&i| i >= 2 && &b[i - 2..i] == b"]]")
        .map(|i| (i - 2, XmlError::nwf("']]>' in character data")));
    let faults = [utf8, first_bad_char(b), check_refs(b).err(), cdata_end];
    match faults.into_iter().flatten().min_by_key(|(at, _)| *at) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Longest entity/char reference we wait for before calling it malformed.
const MAX_REF_LEN: usize = 64;

/// Validates character data whose end has not arrived yet, up to the last
/// point where a later byte cannot change the verdict: before a partial
/// reference, a partial UTF-8 sequence, or trailing `]` that might start
/// `]]>`. Returns how many bytes were validated.
fn check_partial_text(b: &[u8]) -> Result<usize, XmlError> {
    let mut safe = b.len();
    if let Some(amp) = memrchr(b'&', b) {
        if memchr(b';', &b[amp..]).is_none() {
            if b.len() - amp > MAX_REF_LEN {
                // A fault before the `&` comes first.
                check_text(&b[..amp])?;
                return Err(XmlError::nwf("malformed entity reference"));
            }
            safe = amp;
        }
    }
    let mut brackets = 0;
    while brackets < 2 && safe > 0 && b[safe - 1] == b']' {
        safe -= 1;
        brackets += 1;
    }
    if let Err(e) = std::str::from_utf8(&b[..safe]) {
        match e.error_len() {
            // Invalid for certain; an earlier fault comes first, so check all of it (cutting
            // after the bad bytes could cut a reference that spans them).
            Some(_) => {}
            None => safe = e.valid_up_to(),
        }
    }
    check_text(&b[..safe])?;
    Ok(safe)
}

#[cfg(test)]
#[path = "framer_tests.rs"]
mod tests;
