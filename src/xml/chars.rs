//! Characters and references as XML 1.0 and RFC 6120 §11 allow them in a stream: which bytes
//! may appear (§2.2 `Char`, §11.6 UTF-8), names (Namespaces in XML §4), entity and character
//! references (only the predefined entities: no DTD, §11.1), and unescaping.
//!
//! The checks take bytes and return [`XmlError`]s; they know nothing of tags or stanzas, so the
//! [scanner](super::scan) and the [framer](super::framer) share them. Escaping for output is
//! [`escape`](super::escape): the error module writes escaped text, and these checks return
//! its errors.

use memchr::{memchr, memrchr};

use super::error::XmlError;

pub(super) fn restricted(what: &'static str) -> XmlError {
    XmlError::RestrictedXml { what }
}

pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub(super) fn is_ws_char(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

pub(super) fn skip_ws(b: &[u8]) -> usize {
    b.iter().position(|&c| !is_ws(c)).unwrap_or(b.len())
}

pub(super) fn trim_ws_end(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| !is_ws(c)).map_or(0, |i| i + 1);
    &b[..end]
}

/// Unescapes a validated value (predefined entities and character references).
pub(crate) fn unescape(v: &str) -> Result<String, XmlError> {
    quick_xml::escape::unescape(v)
        .map(|c| c.into_owned())
        .map_err(|e| XmlError::nwf(e.to_string()))
}

pub(super) fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_name_char(c: u8) -> bool {
    is_name_start(c) || c.is_ascii_digit() || c == b'-' || c == b'.'
}

/// A QName of Namespaces in XML §4: `NCName (':' NCName)?`. Bytes of
/// non-ASCII characters are accepted without consulting the full XML name
/// tables; this is a framing check, not a validator.
pub(super) fn check_qname(q: &str) -> Result<(), XmlError> {
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
pub(super) fn check_chars(b: &[u8]) -> Result<(), XmlError> {
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
pub(super) fn check_tag_chars(b: &[u8]) -> Result<(), XmlError> {
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
pub(super) fn check_refs(b: &[u8]) -> Result<(), (usize, XmlError)> {
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
pub(super) fn check_text(b: &[u8]) -> Result<(), XmlError> {
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
pub(super) fn check_partial_text(b: &[u8]) -> Result<usize, XmlError> {
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
