//! Peer certificate verification: chain, purpose, names (RFC 9525 / RFC 6125, XEP-0178).

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
    #[error("no certificate presented")]
    NoCertificate,
    #[error("self-signed certificate")]
    SelfSigned,
    #[error("certificate issued by an unknown CA")]
    UnknownIssuer,
    #[error("certificate expired")]
    Expired,
    #[error("certificate not yet valid")]
    NotYetValid,
    #[error("certificate not valid for server use (extended key usage)")]
    WrongPurpose,
    #[error("certificate name mismatch: it is for {presented}, not {domain}")]
    NameMismatch { domain: String, presented: String },
    #[error("certificate does not match the pinned public key")]
    PinMismatch,
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
