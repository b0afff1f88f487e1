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

//!
//! # Layout
//! - `certs`: loading certificates, keys and trust anchors; self-signed creation; choosing
//!   our certificate by name; the prebuilt rustls configs of one generation.
//! - `verifiers`: the handshake verifiers that accept any chain but check signatures.
//! - `verify`: the after-handshake verdict (chain, validity, purpose, pins).
//! - `names`: the subjectAltName identities and the RFC 9525 matching rules.

mod certs;
mod names;
#[cfg(test)]
pub(crate) mod testca;
mod verifiers;
mod verify;

pub use verify::{CertProblem, CertVerdict, PeerRole};

use std::io;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::ProtocolVersion;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

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

impl TlsInfo {
    /// What a finished handshake negotiated.
    fn from_connection(conn: &rustls::CommonState) -> TlsInfo {
        TlsInfo {
            version: match conn.protocol_version() {
                Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "unknown",
            },
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|suite| suite.suite().as_str())
                .unwrap_or("unknown"),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            peer_chain: conn
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
        }
    }
}

/// TLS for all s2s streams of one gateway. Cheap to share (`Arc`).
pub struct Tls {
    /// The current generation. Handshakes clone the `Arc` and release the lock at once, so a
    /// reload never waits for a handshake, and a handshake keeps the generation it started
    /// with.
    state: RwLock<Arc<certs::CertState>>,
    /// The config the state was built from, for [`Tls::reload`].
    config: crate::config::TlsConfig,
}

impl Tls {
    /// Loads certificates, keys and trust anchors; creates self-signed certificates where
    /// `self_signed = true` and the files are missing.
    pub fn from_config(config: &Config) -> Result<Tls, TlsError> {
        let state = certs::CertState::load(&config.tls)?;
        Ok(Tls {
            state: RwLock::new(Arc::new(state)),
            config: config.tls.clone(),
        })
    }

    /// Re-reads every certificate, key and CA file. On error nothing changes and the error
    /// says which file is wrong. New handshakes use the new files; live sessions are untouched.
    pub fn reload(&self) -> Result<(), TlsError> {
        let state = Arc::new(certs::CertState::load(&self.config)?);
        // A poisoned lock only means a panic elsewhere while swapping an `Arc`; the value
        // is still whole.
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        Ok(())
    }

    /// The current generation.
    fn current(&self) -> Arc<certs::CertState> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Server side of a handshake over `io`. Our certificate is chosen by SNI, else by `hint`
    /// (the `to` of the stream header when STARTTLS was negotiated). `direct` offers ALPN
    /// `xmpp-server`.
    ///
    /// Not bounded in time: the caller's negotiation timeout covers it.
    pub async fn accept(
        &self,
        io: BoxTransport,
        hint: Option<&str>,
        direct: bool,
    ) -> Result<(BoxTransport, TlsInfo), TlsError> {
        let state = self.current();
        // Reading the ClientHello first lets the certificate depend on its SNI.
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let sni = start.client_hello().server_name().map(str::to_owned);
        let Some(cert) = state.select_for_accept(sni.as_deref(), hint) else {
            let asked = sni.as_deref().or(hint).unwrap_or("a peer without SNI");
            return Err(TlsError::NoCertificate(asked.to_owned()));
        };
        tracing::trace!(sni = ?sni, hint = ?hint, direct, cert = %cert.path.display(), "TLS accept");
        let stream = start.into_stream(cert.server.get(direct).clone()).await?;
        let info = TlsInfo::from_connection(stream.get_ref().1);
        Ok((Box::new(stream), info))
    }

    /// Client side of a handshake over `io` with SNI = `remote`, presenting our certificate
    /// for `local` if we have one. `direct` asks for ALPN `xmpp-server`.
    ///
    /// An IP literal as `remote` sends no SNI (RFC 6066 §3 allows only host names there).
    /// Not bounded in time: the caller's negotiation timeout covers it.
    pub async fn connect(
        &self,
        io: BoxTransport,
        local: &str,
        remote: &str,
        direct: bool,
    ) -> Result<(BoxTransport, TlsInfo), TlsError> {
        let name = names::ascii_domain(remote);
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(&name);
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{remote}` is not a usable TLS server name: {e}"),
            )
        })?;
        let config = self.current().client_config(local, direct);
        let stream = TlsConnector::from(config).connect(server_name, io).await?;
        let info = TlsInfo::from_connection(stream.get_ref().1);
        Ok((Box::new(stream), info))
    }

    /// Whether we have a certificate for `domain` that our own trust anchors accept for it, so
    /// that offering SASL EXTERNAL as `domain` can succeed.
    pub fn has_valid_certificate(&self, domain: &str) -> bool {
        self.current().has_valid_certificate(domain)
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
        let state = self.current();
        verify::check_peer(
            &info.peer_chain,
            domain,
            role,
            pins,
            &state.anchors,
            UnixTime::now(),
        )
    }
}
