//! Peer certificate verification: chain, purpose, names (RFC 9525 / RFC 6125, XEP-0178).
//!
//! The handshake accepts any certificate (see [`super::verifiers`]); this module decides
//! afterwards, so that the session can apply its policy to a [`CertVerdict`] instead of
//! losing the connection (a self-signed peer may still authenticate by dialback over TLS,
//! XEP-0344). [`check_peer`] runs, in order:
//!
//! 1. No certificate → [`CertProblem::NoCertificate`].
//! 2. With pins: the leaf's SubjectPublicKeyInfo SHA-256 must be a pin
//!    ([`CertProblem::PinMismatch`]), and the leaf must be within its validity period; the
//!    chain is not checked, since the pin is the trust decision.
//!    Without pins: [`check_chain`], RFC 5280 path validation with rustls-webpki against our
//!    trust anchors, for serverAuth (RFC 6120 §13.7.2.1), or for a peer that connected to
//!    us serverAuth or else clientAuth.
//! 3. The names of [`super::names`]: DNS-ID, SRV-ID, XmppAddr, never the CN.

use std::sync::LazyLock;

use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;

use super::names::{PresentedNames, ReferenceId};

/// Which side of the connection the peer is, i.e. which purpose its certificate must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// We connected to it: the certificate must allow serverAuth.
    Server,
    /// It connected to us: serverAuth or clientAuth is accepted (public CAs stopped issuing
    /// clientAuth; Prosody and ejabberd accept serverAuth-only client certificates).
    Client,
}

/// The outcome of checking a peer's certificate for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertVerdict {
    /// Valid for the domain.
    Valid,
    /// Not valid, and why.
    Invalid(CertProblem),
}

/// Why a certificate is not valid for a domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertProblem {
    /// The peer sent no certificate at all.
    #[error("no certificate presented")]
    NoCertificate,
    /// The leaf names itself as issuer and chains to none of our trust anchors.
    #[error("self-signed certificate")]
    SelfSigned,
    /// The chain does not lead to any of our trust anchors.
    #[error("certificate issued by an unknown CA")]
    UnknownIssuer,
    /// The leaf, or a certificate of its chain, is past its notAfter date.
    #[error("certificate expired")]
    Expired,
    /// The leaf, or a certificate of its chain, is before its notBefore date.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// The extended key usage allows neither serverAuth nor, for a peer that connected to us,
    /// clientAuth (RFC 6120 §13.7.2.1).
    #[error("certificate not valid for server use (extended key usage)")]
    WrongPurpose,
    /// None of the names the certificate presents (DNS-ID, SRV-ID, XmppAddr) matches the domain.
    #[error("certificate name mismatch: it is for {presented}, not {domain}")]
    NameMismatch {
        /// The domain the certificate was checked for (canonical).
        domain: String,
        /// The names the certificate does present, as text.
        presented: String,
    },
    /// The leaf's public key is not one of the pins configured for the domain.
    #[error("certificate does not match the pinned public key")]
    PinMismatch,
    /// Anything else: an unparsable certificate or another path validation error.
    #[error("unusable certificate: {0}")]
    Other(String),
}

impl CertProblem {
    /// A metric label from a closed set.
    pub fn label(&self) -> &'static str {
        match self {
            CertProblem::NoCertificate => "none",
            CertProblem::SelfSigned => "self_signed",
            CertProblem::UnknownIssuer => "unknown_issuer",
            CertProblem::Expired => "expired",
            CertProblem::NotYetValid => "not_yet_valid",
            CertProblem::WrongPurpose => "wrong_purpose",
            CertProblem::NameMismatch { .. } => "name_mismatch",
            CertProblem::PinMismatch => "pin_mismatch",
            CertProblem::Other(_) => "other",
        }
    }
}

impl CertVerdict {
    /// Whether the certificate is valid for the domain.
    pub fn is_valid(&self) -> bool {
        matches!(self, CertVerdict::Valid)
    }

    /// A metric label: `valid` or the problem's label.
    pub fn label(&self) -> &'static str {
        match self {
            CertVerdict::Valid => "valid",
            CertVerdict::Invalid(p) => p.label(),
        }
    }
}

impl std::fmt::Display for CertVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertVerdict::Valid => f.write_str("certificate valid"),
            CertVerdict::Invalid(p) => write!(f, "{p}"),
        }
    }
}

/// The signature algorithms a chain may use: those of the ring provider, so that what the
/// handshake can verify and what the chain check accepts are the same set. Looked up once,
/// since building a provider allocates.
fn chain_algorithms() -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    static ALGORITHMS: LazyLock<&'static [&'static dyn SignatureVerificationAlgorithm]> =
        LazyLock::new(|| {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .all
        });
    *ALGORITHMS
}

/// Checks `chain` (leaf first) for `domain` (canonical form): see the module docs for the
/// order. `now` is a parameter so that tests need not depend on the clock.
pub(crate) fn check_peer(
    chain: &[CertificateDer<'_>],
    domain: &str,
    role: PeerRole,
    pins: &[[u8; 32]],
    anchors: &[TrustAnchor<'_>],
    now: UnixTime,
) -> CertVerdict {
    match check_peer_inner(chain, domain, role, pins, anchors, now) {
        Ok(()) => CertVerdict::Valid,
        Err(problem) => CertVerdict::Invalid(problem),
    }
}

fn check_peer_inner(
    chain: &[CertificateDer<'_>],
    domain: &str,
    role: PeerRole,
    pins: &[[u8; 32]],
    anchors: &[TrustAnchor<'_>],
    now: UnixTime,
) -> Result<(), CertProblem> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(CertProblem::NoCertificate);
    };
    let parsed = parse(leaf)?;
    if pins.is_empty() {
        check_chain(leaf, intermediates, &parsed, role, anchors, now)?;
    } else {
        check_pin(&parsed, pins)?;
        check_validity(&parsed, now)?;
    }
    check_names(&PresentedNames::from_cert(&parsed), domain)
}

/// Parses a certificate for its names, keys and dates.
pub(crate) fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, CertProblem> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CertProblem::Other(format!("cannot parse the certificate: {e}")))
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo DER: what a pin is (the same digest
/// as HPKP and DANE `3 1 1`, so it survives renewals that keep the key).
pub(crate) fn spki_sha256(cert: &X509Certificate<'_>) -> [u8; 32] {
    Sha256::digest(cert.tbs_certificate.subject_pki.raw).into()
}

fn check_pin(cert: &X509Certificate<'_>, pins: &[[u8; 32]]) -> Result<(), CertProblem> {
    let digest = spki_sha256(cert);
    if pins.contains(&digest) {
        Ok(())
    } else {
        Err(CertProblem::PinMismatch)
    }
}

/// The validity period alone, for pinned certificates (the chain check does it otherwise).
fn check_validity(cert: &X509Certificate<'_>, now: UnixTime) -> Result<(), CertProblem> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        Err(CertProblem::NotYetValid)
    } else if now > validity.not_after.timestamp() {
        Err(CertProblem::Expired)
    } else {
        Ok(())
    }
}

fn check_names(names: &PresentedNames, domain: &str) -> Result<(), CertProblem> {
    if names.matches(&ReferenceId::new(domain)) {
        Ok(())
    } else {
        Err(CertProblem::NameMismatch {
            domain: domain.to_owned(),
            presented: names.describe(),
        })
    }
}

/// RFC 5280 path validation of `leaf` via `intermediates` to one of `anchors` at `now`, for
/// the purpose `role` needs. `parsed` is `leaf` parsed, to tell a self-signed certificate from
/// one by an unknown CA.
pub(crate) fn check_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    parsed: &X509Certificate<'_>,
    role: PeerRole,
    anchors: &[TrustAnchor<'_>],
    now: UnixTime,
) -> Result<(), CertProblem> {
    let ee = EndEntityCert::try_from(leaf).map_err(|e| CertProblem::Other(e.to_string()))?;
    let verify = |usage: KeyUsage| {
        ee.verify_for_usage(
            chain_algorithms(),
            anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map(|_| ())
    };
    let result = match (verify(KeyUsage::server_auth()), role) {
        // A peer that connected to us is a TLS client: clientAuth is its proper purpose, but
        // public CAs are dropping clientAuth, so serverAuth (tried first) is accepted too.
        (Err(e), PeerRole::Client) if is_eku_error(&e) => verify(KeyUsage::client_auth()),
        (result, _) => result,
    };
    result.map_err(|e| problem_from_webpki(&e, parsed))
}

#[allow(deprecated)] // `RequiredEkuNotFound` is what older code paths may still return.
fn is_eku_error(e: &webpki::Error) -> bool {
    matches!(
        e,
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_)
    )
}

/// Maps a path validation error to the closed set of problems the policy and the metrics
/// know. A leaf that names itself as its issuer and chains nowhere is self-signed; openssl's
/// `req -x509` marks such certificates as CAs, which webpki reports as a CA used as an end
/// entity, so that counts as self-signed too.
fn problem_from_webpki(e: &webpki::Error, leaf: &X509Certificate<'_>) -> CertProblem {
    let self_issued = leaf.issuer().as_raw() == leaf.subject().as_raw();
    match e {
        webpki::Error::UnknownIssuer | webpki::Error::CaUsedAsEndEntity if self_issued => {
            CertProblem::SelfSigned
        }
        webpki::Error::UnknownIssuer => CertProblem::UnknownIssuer,
        webpki::Error::CertExpired { .. } => CertProblem::Expired,
        webpki::Error::CertNotValidYet { .. } => CertProblem::NotYetValid,
        e if is_eku_error(e) => CertProblem::WrongPurpose,
        other => CertProblem::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::ExtendedKeyUsagePurpose as Eku;

    use super::*;
    use crate::tls::testca::{self, Leaf, TestCa};

    /// Checks `leaf` for `domain` against `ca` as the only anchor, without pins.
    fn check(leaf: &Leaf, domain: &str, role: PeerRole, ca: &TestCa) -> CertVerdict {
        check_peer(
            &leaf.chain,
            domain,
            role,
            &[],
            &[ca.anchor()],
            UnixTime::now(),
        )
    }

    fn invalid(problem: CertProblem) -> CertVerdict {
        CertVerdict::Invalid(problem)
    }

    fn mismatch(domain: &str, presented: &str) -> CertVerdict {
        invalid(CertProblem::NameMismatch {
            domain: domain.into(),
            presented: presented.into(),
        })
    }

    #[test]
    fn dns_id_exact_and_case() {
        let ca = TestCa::root("CA");
        let leaf = ca.leaf().dns("A.Test").build();
        assert_eq!(
            check(&leaf, "a.test", PeerRole::Server, &ca),
            CertVerdict::Valid
        );
        assert_eq!(
            check(&leaf, "a.test.", PeerRole::Server, &ca),
            CertVerdict::Valid
        );
        assert_eq!(
            check(&leaf, "b.test", PeerRole::Server, &ca),
            mismatch("b.test", "DNS:A.Test")
        );
    }

    #[test]
    fn dns_id_wildcard_rules() {
        let ca = TestCa::root("CA");
        let leaf = ca.leaf().dns("*.example.org").build();
        let ok = |d: &str| check(&leaf, d, PeerRole::Server, &ca).is_valid();
        assert!(ok("a.example.org"));
        assert!(!ok("example.org"));
        assert!(!ok("a.b.example.org"));

        for (presented, domain) in [
            ("f*.example.org", "foo.example.org"),
            ("*.*.example.org", "a.b.example.org"),
            ("*.org", "example.org"),
        ] {
            let leaf = ca.leaf().dns(presented).build();
            assert_eq!(
                check(&leaf, domain, PeerRole::Server, &ca),
                mismatch(domain, &format!("DNS:{presented}")),
                "{presented}"
            );
        }
    }

    #[test]
    fn srv_id_xmpp_server_only() {
        let ca = TestCa::root("CA");
        let leaf = ca.leaf().srv("_xmpp-server.x.test").build();
        assert_eq!(
            check(&leaf, "x.test", PeerRole::Server, &ca),
            CertVerdict::Valid
        );
        let leaf = ca.leaf().srv("_xmpp-client.x.test").build();
        assert_eq!(
            check(&leaf, "x.test", PeerRole::Server, &ca),
            mismatch("x.test", "SRV:_xmpp-client.x.test")
        );
    }

    #[test]
    fn xmpp_addr_and_idn() {
        let ca = TestCa::root("CA");
        let leaf = ca.leaf().xmpp_addr("X.test").build();
        assert_eq!(
            check(&leaf, "x.test", PeerRole::Server, &ca),
            CertVerdict::Valid
        );
        let leaf = ca.leaf().xmpp_addr("münchen.test").build();
        assert_eq!(
            check(&leaf, "münchen.test", PeerRole::Server, &ca),
            CertVerdict::Valid
        );
        // A DNS-ID carries the A-label; the domain is compared in that form.
        let leaf = ca.leaf().dns("xn--mnchen-3ya.test").build();
        assert_eq!(
            check(&leaf, "münchen.test", PeerRole::Server, &ca),
            CertVerdict::Valid
        );
        // A JID is not a domain.
        let leaf = ca.leaf().xmpp_addr("user@x.test").build();
        assert!(!check(&leaf, "x.test", PeerRole::Server, &ca).is_valid());
    }

    #[test]
    fn all_name_types_listed_on_mismatch() {
        let ca = TestCa::root("CA");
        let leaf = ca
            .leaf()
            .dns("a.test")
            .srv("_xmpp-server.x.test")
            .xmpp_addr("x.test")
            .build();
        assert_eq!(
            check(&leaf, "b.test", PeerRole::Server, &ca),
            mismatch(
                "b.test",
                "DNS:a.test, SRV:_xmpp-server.x.test, XmppAddr:x.test"
            )
        );
        assert!(check(&leaf, "x.test", PeerRole::Server, &ca).is_valid());
    }

    #[test]
    fn common_name_never_counts() {
        let ca = TestCa::root("CA");
        let leaf = ca.leaf().cn("a.test").build();
        let verdict = check(&leaf, "a.test", PeerRole::Server, &ca);
        assert_eq!(verdict, mismatch("a.test", "no subjectAltName"));
        assert_eq!(verdict.label(), "name_mismatch");
        assert_eq!(
            verdict.to_string(),
            "certificate name mismatch: it is for no subjectAltName, not a.test"
        );
    }

    #[test]
    fn validity_period() {
        let ca = TestCa::root("CA");
        let expired = ca
            .leaf()
            .dns("a.test")
            .validity((2000, 1, 1), (2001, 1, 1))
            .build();
        assert_eq!(
            check(&expired, "a.test", PeerRole::Server, &ca),
            invalid(CertProblem::Expired)
        );
        let future = ca
            .leaf()
            .dns("a.test")
            .validity((2090, 1, 1), (2091, 1, 1))
            .build();
        assert_eq!(
            check(&future, "a.test", PeerRole::Server, &ca),
            invalid(CertProblem::NotYetValid)
        );
    }

    #[test]
    fn issuers() {
        let ca = TestCa::root("CA");
        let other = TestCa::root("Other CA");
        let leaf = other.leaf().dns("a.test").build();
        assert_eq!(
            check(&leaf, "a.test", PeerRole::Server, &ca),
            invalid(CertProblem::UnknownIssuer)
        );
        let leaf = testca::self_signed().dns("a.test").cn("a.test").build();
        let verdict = check(&leaf, "a.test", PeerRole::Server, &ca);
        assert_eq!(verdict, invalid(CertProblem::SelfSigned));
        assert_eq!(verdict.label(), "self_signed");

        // Self-signed with CA:TRUE, as `openssl req -x509` makes them.
        assert_eq!(
            check_peer(
                std::slice::from_ref(&other.der),
                "a.test",
                PeerRole::Server,
                &[],
                &[ca.anchor()],
                UnixTime::now()
            ),
            invalid(CertProblem::SelfSigned)
        );

        // Through an intermediate: valid with it, unknown issuer without it.
        let inter = ca.intermediate("Intermediate");
        let leaf = inter.leaf().dns("a.test").build();
        assert_eq!(leaf.chain.len(), 2);
        assert_eq!(
            check(&leaf, "a.test", PeerRole::Server, &ca),
            CertVerdict::Valid
        );
        assert_eq!(
            check_peer(
                &leaf.chain[..1],
                "a.test",
                PeerRole::Server,
                &[],
                &[ca.anchor()],
                UnixTime::now()
            ),
            invalid(CertProblem::UnknownIssuer)
        );
        // No anchors at all.
        assert_eq!(
            check_peer(
                &leaf.chain,
                "a.test",
                PeerRole::Server,
                &[],
                &[],
                UnixTime::now()
            ),
            invalid(CertProblem::UnknownIssuer)
        );
    }

    #[test]
    fn purposes() {
        let ca = TestCa::root("CA");
        let server_only = ca.leaf().dns("a.test").eku(&[Eku::ServerAuth]).build();
        assert!(check(&server_only, "a.test", PeerRole::Server, &ca).is_valid());
        assert!(check(&server_only, "a.test", PeerRole::Client, &ca).is_valid());

        let client_only = ca.leaf().dns("a.test").eku(&[Eku::ClientAuth]).build();
        let verdict = check(&client_only, "a.test", PeerRole::Server, &ca);
        assert_eq!(verdict, invalid(CertProblem::WrongPurpose));
        assert_eq!(verdict.label(), "wrong_purpose");
        assert!(check(&client_only, "a.test", PeerRole::Client, &ca).is_valid());

        let neither = ca.leaf().dns("a.test").eku(&[Eku::CodeSigning]).build();
        assert_eq!(
            check(&neither, "a.test", PeerRole::Client, &ca),
            invalid(CertProblem::WrongPurpose)
        );
        // No EKU extension: any purpose (RFC 5280 §4.2.1.12).
        let any = ca.leaf().dns("a.test").eku(&[]).build();
        assert!(check(&any, "a.test", PeerRole::Server, &ca).is_valid());
    }

    #[test]
    fn pins_replace_the_chain_not_the_names_or_dates() {
        let leaf = testca::self_signed().dns("a.test").build();
        let pin = leaf.pin();
        let with_pins = |leaf: &Leaf, domain: &str, pins: &[[u8; 32]]| {
            check_peer(
                &leaf.chain,
                domain,
                PeerRole::Server,
                pins,
                &[],
                UnixTime::now(),
            )
        };
        assert_eq!(
            with_pins(&leaf, "a.test", &[[0; 32], pin]),
            CertVerdict::Valid
        );
        let verdict = with_pins(&leaf, "a.test", &[[0; 32]]);
        assert_eq!(verdict, invalid(CertProblem::PinMismatch));
        assert_eq!(verdict.label(), "pin_mismatch");
        assert_eq!(
            with_pins(&leaf, "b.test", &[pin]),
            mismatch("b.test", "DNS:a.test")
        );

        let expired = testca::self_signed()
            .dns("a.test")
            .validity((2000, 1, 1), (2001, 1, 1))
            .build();
        assert_eq!(
            with_pins(&expired, "a.test", &[expired.pin()]),
            invalid(CertProblem::Expired)
        );
        let future = testca::self_signed()
            .dns("a.test")
            .validity((2090, 1, 1), (2091, 1, 1))
            .build();
        assert_eq!(
            with_pins(&future, "a.test", &[future.pin()]),
            invalid(CertProblem::NotYetValid)
        );
    }

    #[test]
    fn nothing_or_garbage() {
        let verdict = check_peer(&[], "a.test", PeerRole::Client, &[], &[], UnixTime::now());
        assert_eq!(verdict, invalid(CertProblem::NoCertificate));
        assert_eq!(verdict.label(), "none");
        let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])];
        let verdict = check_peer(
            &garbage,
            "a.test",
            PeerRole::Client,
            &[],
            &[],
            UnixTime::now(),
        );
        assert!(
            matches!(verdict, CertVerdict::Invalid(CertProblem::Other(_))),
            "{verdict:?}"
        );
        assert_eq!(verdict.label(), "other");
        let verdict = check_peer(
            &garbage,
            "a.test",
            PeerRole::Client,
            &[[0; 32]],
            &[],
            UnixTime::now(),
        );
        assert_eq!(verdict.label(), "other");
    }

    #[test]
    fn ed25519_leaf() {
        let ca = TestCa::root("CA");
        let leaf = ca.leaf().dns("a.test").ed25519().build();
        assert!(check(&leaf, "a.test", PeerRole::Server, &ca).is_valid());
    }
}
