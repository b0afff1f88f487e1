//! TLS for s2s streams (RFC 6120 §5, XEP-0368, XEP-0178, RFC 9525 / RFC 6125), with rustls.
//!
//! A service with no knowledge of sessions:
//! - [`Tls::accept`] runs the server side of a handshake (after `<proceed/>` or on the direct
//!   TLS port), choosing our certificate by SNI, else by the stream's `to`; it requests a
//!   client certificate but never requires one.
//! - [`Tls::connect`] runs the client side with SNI = the remote domain, presenting our
//!   certificate for the local domain when we have one.
//! - Neither handshake fails because of the peer's certificate: many federated servers have
//!   self-signed certificates and authenticate by dialback over TLS (XEP-0344). The session
//!   asks [`Tls::verify_peer`] afterwards for a [`CertVerdict`] and applies the policy.
//! - [`Tls::reload`] re-reads certificate and key files (SIGHUP); sessions already running keep
//!   the configuration they started with.

mod certs;
mod verify;

pub use verify::{CertProblem, CertVerdict, PeerRole};

use std::sync::{Arc, RwLock};

use rustls::pki_types::CertificateDer;

use crate::config::Config;
use crate::connection::BoxTransport;

/// The ALPN protocol name for direct TLS s2s (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// Why TLS could not be set up or a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key or CA file could not be used. Fatal at start; on reload the old
    /// configuration stays.
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    /// No certificate is configured for the name the peer asked for. Fatal for the stream.
    #[error("no certificate for {0}")]
    NoCertificate(String),
    /// The handshake failed (protocol error, I/O error, timeout of the peer). Fatal for the
    /// stream.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[from] std::io::Error),
}

/// What a TLS session negotiated, for policy, logs, metrics and diagnostics.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// `"TLSv1.3"` or `"TLSv1.2"`.
    pub version: &'static str,
    /// The cipher suite's IANA name, e.g. `"TLS13_AES_256_GCM_SHA384"`.
    pub cipher: &'static str,
    /// The ALPN protocol agreed on, if any.
    pub alpn: Option<String>,
    /// The certificate chain the peer presented, leaf first; empty if none.
    pub peer_chain: Vec<CertificateDer<'static>>,
}

/// TLS for all s2s streams of one gateway. Cheap to share (`Arc`).
pub struct Tls {
    state: RwLock<Arc<certs::CertState>>,
    /// The config the state was built from, for [`Tls::reload`].
    config: crate::config::TlsConfig,
}

impl Tls {
    /// Loads certificates, keys and trust anchors; creates self-signed certificates where
    /// `self_signed = true` and the files are missing.
    pub fn from_config(config: &Config) -> Result<Tls, TlsError> {
        let _ = config;
        todo!()
    }

    /// Re-reads every certificate, key and CA file. On error nothing changes and the error
    /// says which file is wrong. New handshakes use the new files; live sessions are untouched.
    pub fn reload(&self) -> Result<(), TlsError> {
        todo!()
    }

    /// Server side of a handshake over `io`. Our certificate is chosen by SNI, else by `hint`
    /// (the `to` of the stream header when STARTTLS was negotiated). `direct` offers ALPN
    /// `xmpp-server`.
    pub async fn accept(
        &self,
        io: BoxTransport,
        hint: Option<&str>,
        direct: bool,
    ) -> Result<(BoxTransport, TlsInfo), TlsError> {
        let _ = (io, hint, direct, &self.state, &self.config);
        todo!()
    }

    /// Client side of a handshake over `io` with SNI = `remote`, presenting our certificate
    /// for `local` if we have one. `direct` asks for ALPN `xmpp-server`.
    pub async fn connect(
        &self,
        io: BoxTransport,
        local: &str,
        remote: &str,
        direct: bool,
    ) -> Result<(BoxTransport, TlsInfo), TlsError> {
        let _ = (io, local, remote, direct);
        todo!()
    }

    /// Whether we have a certificate for `domain` that our own trust anchors accept for it, so
    /// that offering SASL EXTERNAL as `domain` can succeed.
    pub fn has_valid_certificate(&self, domain: &str) -> bool {
        let _ = domain;
        todo!()
    }

    /// Checks the peer's certificate chain from `info` for `domain` (canonical form): chain to
    /// a trust anchor, validity period, purpose for `role`, and the name rules of RFC 9525 /
    /// XEP-0178 (DNS-ID with a wildcard only as the whole left-most label, SRV-ID
    /// `_xmpp-server.domain`, XmppAddr; never the CN). `pins`, if not empty, replace the chain
    /// check: the leaf's SPKI SHA-256 must be one of them (the name must still match).
    pub fn verify_peer(
        &self,
        info: &TlsInfo,
        domain: &str,
        role: PeerRole,
        pins: &[[u8; 32]],
    ) -> CertVerdict {
        let _ = (info, domain, role, pins);
        todo!()
    }
}
