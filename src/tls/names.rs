//! The names a certificate presents, and whether one of them is the peer's domain.
//!
//! Implements the identity checks of RFC 6120 §13.7.1.2 as updated by RFC 9525 §6 and
//! XEP-0178 §2.2, for a reference identity that is an XMPP domain:
//!
//! 1. Only the subjectAltName extension counts; the subject's CN is never consulted
//!    (RFC 9525 §6.3 drops the CN-ID fallback of RFC 6125).
//! 2. A [DNS-ID](dns_id_matches) equal to the domain's A-label form, ignoring ASCII case and a
//!    trailing dot; `*` may stand for the whole left-most label and then matches exactly one
//!    label.
//! 3. An SRV-ID (`id-on-dnsSRV`, RFC 4985) `_xmpp-server.` + the A-label form. `_xmpp-client.`
//!    names a client service and does not count for s2s.
//! 4. An XmppAddr (`id-on-xmppAddr`, RFC 6120 §13.7.1.4) equal to the domain in its Unicode
//!    form, since XmppAddr is a UTF8String.
//!
//! Certificates come from peers, so everything here tolerates malformed input: a name that
//! cannot be decoded is skipped, never a panic.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// DER of the OID 1.3.6.1.5.5.7.8.7, `id-on-dnsSRV` (RFC 4985 §2).
const OID_SRV_NAME: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07];
/// DER of the OID 1.3.6.1.5.5.7.8.5, `id-on-xmppAddr` (RFC 6120 §13.7.1.4).
const OID_XMPP_ADDR: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05];
/// DER tag of an IA5String, the type of an SRV-ID.
const TAG_IA5_STRING: u8 = 0x16;
/// DER tag of a UTF8String, the type of an XmppAddr.
const TAG_UTF8_STRING: u8 = 0x0c;
/// DER tag of `[0] EXPLICIT`, which wraps an otherName's value.
const TAG_EXPLICIT_0: u8 = 0xa0;
/// The service label an SRV-ID must carry for s2s (RFC 6120 §3.2.1).
const SRV_PREFIX: &str = "_xmpp-server.";
/// How many presented names an error message lists before it says "…": enough to see what
/// the certificate is for, short enough for one log line.
const MAX_LISTED: usize = 5;
/// Longest presented name shown in an error message, in characters; peers choose these
/// strings, so a hostile one must not flood the log.
const MAX_NAME_CHARS: usize = 80;

/// The domain we expect, in the two forms the name types use.
#[derive(Debug, Clone)]
pub(crate) struct ReferenceId {
    /// Canonical Unicode form (U-labels, lowercase, no trailing dot), for XmppAddr.
    unicode: String,
    /// A-label form, for DNS-IDs and SRV-IDs.
    ascii: String,
}

impl ReferenceId {
    /// Both forms of `domain` (canonical or not).
    pub(crate) fn new(domain: &str) -> ReferenceId {
        ReferenceId {
            unicode: domain.trim_end_matches('.').to_lowercase(),
            ascii: ascii_domain(domain),
        }
    }
}

/// `domain` in A-label form, lowercase, without a trailing dot: what certificates and SNI
/// carry. A name IDNA cannot convert (an IP literal, say) is only lowercased, so that it still
/// compares equal to itself.
pub(crate) fn ascii_domain(domain: &str) -> String {
    let domain = domain.trim_end_matches('.');
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_ascii_lowercase())
}

/// The identities in a certificate's subjectAltName that matter for XMPP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PresentedNames {
    /// Whether the certificate has a (parseable) subjectAltName at all; only for the error
    /// text, which then says so instead of listing nothing.
    has_san: bool,
    /// `dNSName` entries, as presented.
    dns: Vec<String>,
    /// SRV-ID otherNames, as presented (any service, so that the error text shows a
    /// `_xmpp-client.` name for what it is).
    srv: Vec<String>,
    /// XmppAddr otherNames, as presented.
    xmpp_addr: Vec<String>,
}

impl PresentedNames {
    /// Collects the names from `cert`. A malformed subjectAltName counts as none.
    pub(crate) fn from_cert(cert: &X509Certificate<'_>) -> PresentedNames {
        let mut names = PresentedNames::default();
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return names;
        };
        names.has_san = true;
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.dns.push((*dns).to_owned()),
                GeneralName::OtherName(oid, value) if oid.as_bytes() == OID_SRV_NAME => {
                    if let Some(srv) = other_name_string(value, TAG_IA5_STRING) {
                        if srv.is_ascii() {
                            names.srv.push(srv.to_owned());
                        }
                    }
                }
                GeneralName::OtherName(oid, value) if oid.as_bytes() == OID_XMPP_ADDR => {
                    if let Some(addr) = other_name_string(value, TAG_UTF8_STRING) {
                        names.xmpp_addr.push(addr.to_owned());
                    }
                }
                _ => {}
            }
        }
        names
    }

    /// Whether any presented identity is `reference`.
    pub(crate) fn matches(&self, reference: &ReferenceId) -> bool {
        self.dns.iter().any(|d| dns_id_matches(d, &reference.ascii))
            || self.srv.iter().any(|s| srv_id_matches(s, &reference.ascii))
            || self
                .xmpp_addr
                .iter()
                .any(|a| xmpp_addr_matches(a, reference))
    }

    /// The names for an error message, e.g. `DNS:a.test, SRV:_xmpp-server.a.test`, at most
    /// [`MAX_LISTED`] of them and then `…`.
    pub(crate) fn describe(&self) -> String {
        if !self.has_san {
            return "no subjectAltName".to_owned();
        }
        let all: Vec<String> = self
            .dns
            .iter()
            .map(|n| format!("DNS:{}", printable(n)))
            .chain(self.srv.iter().map(|n| format!("SRV:{}", printable(n))))
            .chain(
                self.xmpp_addr
                    .iter()
                    .map(|n| format!("XmppAddr:{}", printable(n))),
            )
            .collect();
        if all.is_empty() {
            return "no DNS, SRV or XmppAddr name".to_owned();
        }
        let mut text = all[..all.len().min(MAX_LISTED)].join(", ");
        if all.len() > MAX_LISTED {
            text.push_str(", …");
        }
        text
    }
}

/// A peer-chosen name made safe for a log line: control characters replaced, length capped.
fn printable(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(MAX_NAME_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if name.chars().count() > MAX_NAME_CHARS {
        out.push('…');
    }
    out
}

/// Whether a presented `dNSName` matches `reference` (A-label form, lowercase, no trailing
/// dot), per RFC 9525 §6.3:
/// - equal ignoring ASCII case and a trailing dot;
/// - or `*.rest` where `*` is the whole left-most label: it stands for exactly one non-empty
///   label, so `*.example.org` matches `a.example.org` but neither `example.org` nor
///   `a.b.example.org`;
/// - never a partial-label wildcard (`f*.example.org`), a wildcard anywhere but the first
///   label (`*.*.example.org`), or a wildcard directly over a single label (`*.org`), which
///   would cover a whole top-level domain.
pub(crate) fn dns_id_matches(presented: &str, reference: &str) -> bool {
    let presented = presented.strip_suffix('.').unwrap_or(presented);
    let reference = reference.strip_suffix('.').unwrap_or(reference);
    if presented.is_empty() || reference.is_empty() {
        return false;
    }
    match presented.strip_prefix("*.") {
        Some(rest) => {
            if rest.contains('*') || !rest.contains('.') || rest.split('.').any(str::is_empty) {
                return false;
            }
            match reference.split_once('.') {
                Some((first, tail)) => !first.is_empty() && tail.eq_ignore_ascii_case(rest),
                None => false,
            }
        }
        None => !presented.contains('*') && presented.eq_ignore_ascii_case(reference),
    }
}

/// Whether a presented SRV-ID names the s2s service of `reference` (A-label form).
fn srv_id_matches(presented: &str, reference: &str) -> bool {
    let presented = presented.strip_suffix('.').unwrap_or(presented);
    match presented.get(..SRV_PREFIX.len()) {
        Some(service) if service.eq_ignore_ascii_case(SRV_PREFIX) => presented
            .get(SRV_PREFIX.len()..)
            .is_some_and(|name| !name.is_empty() && name.eq_ignore_ascii_case(reference)),
        _ => false,
    }
}

/// Whether a presented XmppAddr is the domain itself. It is Unicode, so it is compared with
/// the U-label form after lowercasing; one written in A-labels is accepted too, since it names
/// the same domain.
fn xmpp_addr_matches(presented: &str, reference: &ReferenceId) -> bool {
    let presented = presented.strip_suffix('.').unwrap_or(presented);
    if presented.is_empty() || presented.contains('@') || presented.contains('/') {
        return false;
    }
    presented.to_lowercase() == reference.unicode || ascii_domain(presented) == reference.ascii
}

/// The string inside an otherName value: x509-parser hands over the DER after the type OID,
/// which is `[0] EXPLICIT` wrapping one string of type `tag`. `None` for anything else.
fn other_name_string(value: &[u8], tag: u8) -> Option<&str> {
    let (outer_tag, explicit, _) = read_tlv(value)?;
    if outer_tag != TAG_EXPLICIT_0 {
        return None;
    }
    let (inner_tag, content, rest) = read_tlv(explicit)?;
    if inner_tag != tag || !rest.is_empty() {
        return None;
    }
    std::str::from_utf8(content).ok()
}

/// Splits one DER TLV off the front of `input`: `(tag, content, rest)`. Handles single-byte
/// tags and definite lengths of up to four bytes, which is all a name needs; `None` for
/// anything else or when the input is shorter than the length says.
pub(super) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_id_exact_case_and_trailing_dot() {
        assert!(dns_id_matches("a.test", "a.test"));
        assert!(dns_id_matches("A.Test", "a.test"));
        assert!(dns_id_matches("a.test.", "a.test"));
        assert!(dns_id_matches("a.test", "a.test."));
        assert!(!dns_id_matches("a.test", "b.test"));
        assert!(!dns_id_matches("a.test", "x.a.test"));
        assert!(!dns_id_matches("", "a.test"));
    }

    #[test]
    fn dns_id_wildcards() {
        assert!(dns_id_matches("*.example.org", "a.example.org"));
        assert!(dns_id_matches("*.Example.ORG.", "a.example.org"));
        assert!(!dns_id_matches("*.example.org", "example.org"));
        assert!(!dns_id_matches("*.example.org", "a.b.example.org"));
        assert!(!dns_id_matches("*.example.org", ".example.org"));
        assert!(!dns_id_matches("f*.example.org", "foo.example.org"));
        assert!(!dns_id_matches("*o.example.org", "foo.example.org"));
        assert!(!dns_id_matches("*.*.example.org", "a.b.example.org"));
        assert!(!dns_id_matches("a.*.example.org", "a.b.example.org"));
        assert!(!dns_id_matches("*.org", "example.org"));
        assert!(!dns_id_matches("*", "org"));
        assert!(!dns_id_matches("*..org", "a..org"));
        // A wildcard never matches a literal `*` reference either way round.
        assert!(!dns_id_matches("a.example.org", "*.example.org"));
    }

    #[test]
    fn srv_id_only_xmpp_server() {
        assert!(srv_id_matches("_xmpp-server.x.test", "x.test"));
        assert!(srv_id_matches("_XMPP-Server.X.test.", "x.test"));
        assert!(!srv_id_matches("_xmpp-client.x.test", "x.test"));
        assert!(!srv_id_matches("_xmpp-server.", "x.test"));
        assert!(!srv_id_matches("x.test", "x.test"));
        assert!(!srv_id_matches("_xmpp-server.y.test", "x.test"));
        // Non-ASCII never panics on a char boundary.
        assert!(!srv_id_matches("_xmpp-servé.x.test", "x.test"));
    }

    #[test]
    fn xmpp_addr_unicode_and_ascii() {
        let r = ReferenceId::new("münchen.test");
        assert!(xmpp_addr_matches("münchen.test", &r));
        assert!(xmpp_addr_matches("MÜNCHEN.test", &r));
        assert!(xmpp_addr_matches("xn--mnchen-3ya.test", &r));
        assert!(!xmpp_addr_matches("user@münchen.test", &r));
        assert!(!xmpp_addr_matches("munchen.test", &r));
        assert_eq!(r.ascii, "xn--mnchen-3ya.test");
    }

    #[test]
    fn other_name_der() {
        // [0] { IA5String "a" }
        assert_eq!(
            other_name_string(&[0xa0, 0x03, 0x16, 0x01, b'a'], TAG_IA5_STRING),
            Some("a")
        );
        // Wrong inner type for the OID.
        assert_eq!(
            other_name_string(&[0xa0, 0x03, 0x16, 0x01, b'a'], TAG_UTF8_STRING),
            None
        );
        // Truncated, overlong, empty, high tag number, trailing data: all refused, no panic.
        for bad in [
            &[][..],
            &[0xa0],
            &[0xa0, 0x05, 0x16, 0x01, b'a'],
            &[0xa0, 0x03, 0x16, 0x05, b'a'],
            &[0xa0, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0xa0, 0x85, 0, 0, 0, 0, 1],
            &[0xa0, 0x80],
            &[0xbf, 0x01, 0x00],
            &[0xa0, 0x05, 0x16, 0x01, b'a', 0x05, 0x00],
            &[0xa0, 0x03, 0x0c, 0x01, 0xff],
        ] {
            assert_eq!(other_name_string(bad, TAG_IA5_STRING), None, "{bad:?}");
            assert_eq!(other_name_string(bad, TAG_UTF8_STRING), None, "{bad:?}");
        }
        // Long-form length.
        let mut long = vec![0xa0, 0x81, 0x83, 0x16, 0x81, 0x80];
        long.extend(std::iter::repeat_n(b'x', 128));
        assert_eq!(
            other_name_string(&long, TAG_IA5_STRING).map(str::len),
            Some(128)
        );
    }

    #[test]
    fn describe_lists_and_truncates() {
        let names = PresentedNames {
            has_san: true,
            dns: vec!["a.test".into(), "b\u{1b}[31m.test".into()],
            srv: vec!["_xmpp-server.x.test".into()],
            xmpp_addr: vec!["x.test".into()],
        };
        assert_eq!(
            names.describe(),
            "DNS:a.test, DNS:b?[31m.test, SRV:_xmpp-server.x.test, XmppAddr:x.test"
        );
        let many = PresentedNames {
            has_san: true,
            dns: (0..7).map(|i| format!("n{i}.test")).collect(),
            ..Default::default()
        };
        assert_eq!(
            many.describe(),
            "DNS:n0.test, DNS:n1.test, DNS:n2.test, DNS:n3.test, DNS:n4.test, …"
        );
        assert_eq!(PresentedNames::default().describe(), "no subjectAltName");
        let long = "x".repeat(200);
        assert_eq!(printable(&long).chars().count(), MAX_NAME_CHARS + 1);
    }
}
