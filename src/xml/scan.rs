//! Scanning one top-level element: where its tokens begin and end, incrementally, and what the
//! [`Facts`] of its top element are (RFC 6120 §8.1, §11).
//!
//! The [`Scanner`] resumes where the last read stopped and only rescans an incomplete tail (see
//! the [framer's docs](super::framer) for why the boundary scan is hand-written). It checks each
//! complete token as it goes: well-formedness, the [`Limits`], namespace prefixes (Namespaces in
//! XML §5, §6.3) and the characters ([`chars`](super::chars)). The framer drives it over the
//! read buffer; [`Stanza::parse`](super::Stanza::parse) over one element.

use memchr::{memchr, memchr3, memmem};
use quick_xml::events::attributes::Attributes;

use super::chars::{
    check_chars, check_partial_text, check_qname, check_refs, check_tag_chars, check_text,
    is_name_start, is_ws, is_ws_char, restricted, trim_ws_end, unescape,
};
use super::error::XmlError;
use super::facts::{Facts, Val};
use super::ns::{self, NsContext, NsUri};

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
    pub(super) fn find_tag_end(&mut self, buf: &[u8], from: usize) -> Option<usize> {
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

    /// The facts collected for the element just scanned, for
    /// [`Stanza::new`](super::Stanza); resets for the next one.
    pub(crate) fn take_facts(&mut self) -> Facts {
        let facts = std::mem::take(&mut self.top);
        self.reset();
        facts
    }
}

// ---------------------------------------------------------------------------
// Token-level helpers.

/// `<` followed by something that cannot start a name, e.g. `<'`: without this check the
/// quote would be taken for an attribute value and everything after it swallowed until the
/// stream timed out.
pub(super) fn not_a_tag(c: u8) -> XmlError {
    XmlError::nwf(format!("'<' followed by {:?} starts no tag", char::from(c)))
}

pub(super) enum Bang {
    CData,
}

/// Classifies `<!...` markup. Comments and DTD markup are restricted XML
/// (RFC 6120 §11.1); `None` means more bytes are needed to tell.
pub(super) fn classify_bang(rest: &[u8]) -> Result<Option<Bang>, XmlError> {
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

pub(super) fn split_self_closing(inner: &[u8]) -> (&[u8], bool) {
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
pub(super) fn check_attr_separator(s: &str, value: &str) -> Result<(), XmlError> {
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
pub(super) fn check_prefix_decl(prefix: &str, value: &str) -> Result<(), XmlError> {
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
