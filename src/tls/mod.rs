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
//! - `binding`: channel bindings for SCRAM-*-PLUS on client streams.

mod binding;
mod certs;
mod error;
mod names;
#[cfg(test)]
pub(crate) mod testca;
mod verifiers;
mod verify;

pub use binding::{ChannelBindingType, ChannelBindings};
pub(crate) use certs::provider;
pub use certs::ALPN_XMPP_SERVER;
pub use error::TlsError;
/// For `fedgate check remote`, which shows a peer's certificate the way the checks see it.
pub(crate) use names::{PresentedNames, ReferenceId};
pub(crate) use verify::spki_sha256;
pub use verify::{CertProblem, CertVerdict, PeerRole};

use std::io;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::ProtocolVersion;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::config::Config;
use crate::connection::BoxTransport;

/// What a TLS session negotiated, for policy, logs, metrics and diagnostics.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// `"TLSv1.3"` or `"TLSv1.2"`.
    pub version: &'static str,
    /// The cipher suite's IANA name, e.g. `"TLS13_AES_256_GCM_SHA384"`.
    pub cipher: &'static str,
    /// The ALPN protocol agreed on, if any.
    pub alpn: Option<String>,
    /// The certificate chain the peer presented, leaf first; empty if none. Shared, so that
    /// the session and its `/peers` entry hold one copy next to rustls's own.
    pub peer_chain: Arc<[CertificateDer<'static>]>,
    /// Full or resumed (from a session ticket): a resumed session carries the chain over from
    /// the full handshake it resumes, and this says which one the chain came from.
    pub handshake: Option<rustls::HandshakeKind>,
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
            peer_chain: conn.peer_certificates().unwrap_or_default().into(),
            handshake: conn.handshake_kind(),
        }
    }
}

/// TLS for all s2s streams of one gateway. Cheap to share (`Arc`).
pub struct Tls {
    /// The current generation. Handshakes clone the `Arc` and release the lock at once, so a
    /// reload never waits for a handshake, and a handshake keeps the generation it started
    /// with.
    state: RwLock<Arc<certs::CertState>>,
    /// The config the state was built from, for [`Tls::reload`]; replaced by
    /// [`Tls::reload_from`].
    config: RwLock<crate::config::TlsConfig>,
}

impl Tls {
    /// Loads certificates, keys and trust anchors; creates self-signed certificates where
    /// `self_signed = true` and the files are missing.
    pub fn from_config(config: &Config) -> Result<Tls, TlsError> {
        Tls::from_tls_config(&config.tls)
    }

    /// Like [`Tls::from_config`] from the `[tls]` section alone (the standalone c2s core's).
    pub fn from_tls_config(tls: &crate::config::TlsConfig) -> Result<Tls, TlsError> {
        let state = certs::CertState::load(tls)?;
        Ok(Tls {
            state: RwLock::new(Arc::new(state)),
            config: RwLock::new(tls.clone()),
        })
    }

    /// Re-reads every certificate, key and CA file. On error nothing changes and the error
    /// says which file is wrong. New handshakes use the new files; live sessions are untouched.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.reload_from(&config)
    }

    /// Like [`Tls::reload`] from a new `[tls]` section (a configuration reload): certificates
    /// added, removed or moved take effect for new handshakes. On error nothing changes.
    pub fn reload_from(&self, config: &crate::config::TlsConfig) -> Result<(), TlsError> {
        let state = Arc::new(certs::CertState::load(config)?);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config.clone();
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
        let (stream, _) = self.handshake(io, hint, direct, false).await?;
        let info = TlsInfo::from_connection(stream.get_ref().1);
        Ok((Box::new(stream), info))
    }

    /// [`Tls::accept`] for a client stream: also the connection's channel bindings, for
    /// SCRAM-*-PLUS (see `binding`).
    pub async fn accept_client(
        &self,
        io: BoxTransport,
        hint: Option<&str>,
        direct: bool,
    ) -> Result<(BoxTransport, TlsInfo, ChannelBindings), TlsError> {
        let (stream, tls_server_end_point) = self.handshake(io, hint, direct, true).await?;
        let conn = stream.get_ref().1;
        let info = TlsInfo::from_connection(conn);
        let tls_exporter = (conn.protocol_version() == Some(ProtocolVersion::TLSv1_3))
            .then(|| {
                conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .ok()
            })
            .flatten();
        let bindings = ChannelBindings {
            tls_exporter,
            tls_server_end_point,
        };
        Ok((Box::new(stream), info, bindings))
    }

    /// The server side of a handshake; with `end_point`, also the `tls-server-end-point`
    /// binding of the certificate it presented.
    async fn handshake(
        &self,
        io: BoxTransport,
        hint: Option<&str>,
        direct: bool,
        end_point: bool,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<BoxTransport>,
            Option<Vec<u8>>,
        ),
        TlsError,
    > {
        let state = self.current();
        // Reading the ClientHello first lets the certificate depend on its SNI.
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let sni = start.client_hello().server_name().map(str::to_owned);
        let Some(cert) = state.select_for_accept(sni.as_deref(), hint) else {
            let asked = sni.as_deref().or(hint).unwrap_or("a peer without SNI");
            return Err(TlsError::NoCertificate(asked.to_owned()));
        };
        tracing::trace!(sni = ?sni, hint = ?hint, direct, cert = %cert.path.display(), "TLS accept");
        let end_point = if end_point {
            cert.end_point.clone()
        } else {
            None
        };
        let stream = start.into_stream(cert.server.get(direct).clone()).await?;
        Ok((stream, end_point))
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

    /// Each configured domain with the expiry (Unix seconds) of our certificate for it.
    pub fn certificate_expiries(&self) -> Vec<(String, i64)> {
        self.current().expiries()
    }

    /// The expiry (Unix seconds) of the leaf certificate a peer presented, if it parses.
    pub fn peer_certificate_expiry(info: &TlsInfo) -> Option<i64> {
        let leaf = info.peer_chain.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// Whether we can serve a TLS handshake at all (at least one certificate is loaded);
    /// without one, STARTTLS is not offered.
    pub fn can_accept(&self) -> bool {
        self.current().has_any()
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::sign::{CertifiedKey, SingleCertAndKey};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::tls::testca::{Leaf, TestCa};

    type Side = Result<(BoxTransport, TlsInfo), TlsError>;

    /// A `[[tls.certificate]]` for `domain` from `name.crt`/`name.key`.
    fn cert_entry(domain: &str, name: &str) -> String {
        format!("[[tls.certificate]]\ndomains = [\"{domain}\"]\ncert = \"{name}.crt\"\nkey = \"{name}.key\"\n")
    }

    /// A gateway's TLS from configuration text in `dir`, trusting only `dir/ca.pem`.
    fn tls(dir: &Path, certificates: &str, backend: &str) -> Tls {
        let text = format!(
            "[tls]\nwebpki_roots = false\nca_files = [\"ca.pem\"]\n{certificates}\n\
             [[component.backend]]\ndomain = \"{backend}\"\nsecret = \"x\"\n"
        );
        Tls::from_config(&Config::from_toml(&text, dir).unwrap()).unwrap()
    }

    /// Two gateways: `a.test` (which also serves `other.test`, listed first so it is the
    /// default) and `b.test`, with certificates from one CA.
    struct Pair {
        dir: tempfile::TempDir,
        a: Leaf,
        other: Leaf,
        b: Leaf,
        server: Tls,
        client: Tls,
    }

    fn pair() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::root("Test CA");
        ca.write_pem(dir.path(), "ca.pem");
        let a = ca.leaf().dns("a.test").build();
        let other = ca.leaf().dns("other.test").build();
        let b = ca
            .leaf()
            .xmpp_addr("b.test")
            .eku(&[rcgen::ExtendedKeyUsagePurpose::ServerAuth])
            .build();
        a.write(dir.path(), "a");
        other.write(dir.path(), "other");
        b.write(dir.path(), "b");
        let server = tls(
            dir.path(),
            &format!(
                "{}{}",
                cert_entry("other.test", "other"),
                cert_entry("a.test", "a")
            ),
            "a.test",
        );
        let client = tls(dir.path(), &cert_entry("b.test", "b"), "b.test");
        Pair {
            dir,
            a,
            other,
            b,
            server,
            client,
        }
    }

    async fn handshake(
        server: &Tls,
        client: &Tls,
        hint: Option<&str>,
        local: &str,
        remote: &str,
        direct: bool,
    ) -> (Side, Side) {
        let (s, c) = tokio::io::duplex(64 * 1024);
        tokio::join!(
            server.accept(Box::new(s), hint, direct),
            client.connect(Box::new(c), local, remote, direct)
        )
    }

    /// Sends a few bytes each way, so the streams are known to work after the handshake.
    async fn exchange(mut server: BoxTransport, mut client: BoxTransport) {
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn direct_tls_sni_alpn_and_client_certificate() {
        let p = pair();
        let (s, c) = handshake(&p.server, &p.client, None, "b.test", "a.test", true).await;
        let ((s_io, s_info), (c_io, c_info)) = (s.unwrap(), c.unwrap());
        // SNI a.test chose a.test's certificate over the default.
        assert_eq!(*c_info.peer_chain, *p.a.chain);
        assert_eq!(*s_info.peer_chain, *p.b.chain);
        // What a session hands to its `/peers` entry shares the chain instead of copying it.
        let copy = s_info.clone();
        assert!(Arc::ptr_eq(&copy.peer_chain, &s_info.peer_chain));
        for info in [&s_info, &c_info] {
            assert_eq!(info.alpn.as_deref(), Some("xmpp-server"));
            assert_eq!(info.version, "TLSv1.3");
            assert!(info.cipher.starts_with("TLS13_"), "{}", info.cipher);
        }
        assert_eq!(
            p.client
                .verify_peer(&c_info, "a.test", PeerRole::Server, &[]),
            CertVerdict::Valid
        );
        // serverAuth-only client certificate, XmppAddr name.
        assert_eq!(
            p.server
                .verify_peer(&s_info, "b.test", PeerRole::Client, &[]),
            CertVerdict::Valid
        );
        assert!(!p
            .server
            .verify_peer(&s_info, "c.test", PeerRole::Client, &[])
            .is_valid());
        exchange(s_io, c_io).await;
    }

    /// The second and later handshakes resume the session (TLS 1.3 tickets); both sides must
    /// still report the peer's chain, or a resumed peer would look certificate-less.
    #[tokio::test]
    async fn resumed_sessions_keep_peer_chains() {
        let p = pair();
        for round in 0..3 {
            let (s, c) = handshake(&p.server, &p.client, None, "b.test", "a.test", true).await;
            let ((s_io, s_info), (c_io, c_info)) = (s.unwrap(), c.unwrap());
            let kind = if round == 0 {
                rustls::HandshakeKind::Full
            } else {
                rustls::HandshakeKind::Resumed
            };
            assert_eq!(s_info.handshake, Some(kind), "server, round {round}");
            assert_eq!(c_info.handshake, Some(kind), "client, round {round}");
            assert_eq!(*s_info.peer_chain, *p.b.chain);
            assert_eq!(*c_info.peer_chain, *p.a.chain);
            // Lets the client read the session tickets the server sends after the handshake.
            exchange(s_io, c_io).await;
        }
    }

    #[tokio::test]
    async fn starttls_hint_and_default_without_sni() {
        let p = pair();
        let (s, c) = handshake(&p.server, &p.client, None, "b.test", "a.test", false).await;
        let (s_info, c_info) = (s.unwrap().1, c.unwrap().1);
        assert_eq!(s_info.alpn, None);
        assert_eq!(c_info.alpn, None);
        assert_eq!(*c_info.peer_chain, *p.a.chain);

        // An IP literal sends no SNI: the hint (the stream's `to`) decides, in any case.
        let (s, c) = handshake(
            &p.server,
            &p.client,
            Some("A.Test"),
            "b.test",
            "127.0.0.1",
            false,
        )
        .await;
        s.unwrap();
        assert_eq!(*c.unwrap().1.peer_chain, *p.a.chain);
        // Neither SNI nor a known hint: the first certificate.
        for hint in [None, Some("unknown.test")] {
            let (s, c) = handshake(&p.server, &p.client, hint, "b.test", "::1", false).await;
            s.unwrap();
            assert_eq!(*c.unwrap().1.peer_chain, *p.other.chain, "{hint:?}");
        }
    }

    #[tokio::test]
    async fn client_without_certificate() {
        let p = pair();
        // The client has no certificate for c.test, so it presents none.
        let (s, c) = handshake(&p.server, &p.client, None, "c.test", "a.test", false).await;
        let (s_info, c_info) = (s.unwrap().1, c.unwrap().1);
        assert!(s_info.peer_chain.is_empty());
        assert_eq!(
            p.server
                .verify_peer(&s_info, "c.test", PeerRole::Client, &[]),
            CertVerdict::Invalid(CertProblem::NoCertificate)
        );
        assert_eq!(*c_info.peer_chain, *p.a.chain);
    }

    #[tokio::test]
    async fn self_signed_peer_does_not_fail_the_handshake() {
        let p = pair();
        let server = tls(
            p.dir.path(),
            "[[tls.certificate]]\ndomains = [\"s.test\"]\ncert = \"s.crt\"\nkey = \"s.key\"\nself_signed = true\n",
            "s.test",
        );
        let (s, c) = handshake(&server, &p.client, None, "b.test", "s.test", true).await;
        let ((s_io, _), (c_io, c_info)) = (s.unwrap(), c.unwrap());
        assert_eq!(
            p.client
                .verify_peer(&c_info, "s.test", PeerRole::Server, &[]),
            CertVerdict::Invalid(CertProblem::SelfSigned)
        );
        assert!(!server.has_valid_certificate("s.test"));
        assert!(p.server.has_valid_certificate("a.test"));
        exchange(s_io, c_io).await;
    }

    #[tokio::test]
    async fn no_certificate_configured() {
        let p = pair();
        let text = "[s2s]\nrequire_encryption = false\n[[component.backend]]\ndomain = \"n.test\"\nsecret = \"x\"\n";
        let server = Tls::from_config(&Config::from_toml(text, p.dir.path()).unwrap()).unwrap();
        let (s, c) = handshake(
            &server,
            &p.client,
            Some("n.test"),
            "b.test",
            "a.test",
            false,
        )
        .await;
        match s {
            Err(TlsError::NoCertificate(name)) => assert_eq!(name, "a.test"),
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("handshake without a certificate"),
        }
        assert!(matches!(c, Err(TlsError::Handshake(_))));
    }

    #[tokio::test]
    async fn bad_remote_name() {
        let p = pair();
        let (_, c) = tokio::io::duplex(1024);
        let result = p.client.connect(Box::new(c), "b.test", "a b", false).await;
        match result {
            Err(TlsError::Handshake(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput),
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("connected"),
        }
    }

    #[tokio::test]
    async fn reload_swaps_certificates_and_keeps_them_on_error() {
        let p = pair();
        let ca = TestCa::root("Second CA");
        let renewed = ca.leaf().dns("a.test").build();
        renewed.write(p.dir.path(), "a");
        // Not reloaded yet: the old certificate.
        let (_, c) = handshake(&p.server, &p.client, None, "b.test", "a.test", false).await;
        assert_eq!(*c.unwrap().1.peer_chain, *p.a.chain);

        p.server.reload().unwrap();
        let (_, c) = handshake(&p.server, &p.client, None, "b.test", "a.test", false).await;
        assert_eq!(*c.unwrap().1.peer_chain, *renewed.chain);

        // A broken key: the reload fails, names the file, and the renewed certificate stays.
        let key = p.dir.path().join("a.key");
        std::fs::write(&key, "not a key").unwrap();
        match p.server.reload() {
            Err(TlsError::File { path, .. }) => assert_eq!(path, key.display().to_string()),
            other => panic!("unexpected {other:?}"),
        }
        let (_, c) = handshake(&p.server, &p.client, None, "b.test", "a.test", false).await;
        assert_eq!(*c.unwrap().1.peer_chain, *renewed.chain);
    }

    /// Our certificate with somebody else's key, loaded without the match check.
    fn mismatched_key(cert: &Leaf, key: &Leaf) -> Arc<CertifiedKey> {
        let provider = certs::provider();
        let key = PrivateKeyDer::from_pem_slice(key.key_pem.as_bytes()).unwrap();
        let key = provider.key_provider.load_private_key(key).unwrap();
        Arc::new(CertifiedKey::new(cert.chain.clone(), key))
    }

    /// A client config built by hand: TLS 1.2 and/or 1.3, presenting `key`.
    fn custom_client(
        versions: &[&'static rustls::SupportedProtocolVersion],
        key: Arc<CertifiedKey>,
    ) -> Arc<rustls::ClientConfig> {
        let provider = certs::provider();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(verifiers::AnyServerCert::new(&provider))
                .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key))),
        )
    }

    #[tokio::test]
    async fn tls12_handshake_checks_signatures() {
        let p = pair();
        let key = mismatched_key(&p.b, &p.b);
        let config = custom_client(&[&rustls::version::TLS12], key);
        let (s, c) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("a.test").unwrap();
        let (s, c) = tokio::join!(
            p.server.accept(Box::new(s), None, false),
            TlsConnector::from(config).connect(name, c)
        );
        let s_info = s.unwrap().1;
        c.unwrap();
        assert_eq!(s_info.version, "TLSv1.2");
        assert!(
            s_info.cipher.starts_with("TLS_ECDHE_ECDSA_"),
            "{}",
            s_info.cipher
        );
        assert_eq!(*s_info.peer_chain, *p.b.chain);
        assert!(p
            .server
            .verify_peer(&s_info, "b.test", PeerRole::Client, &[])
            .is_valid());
    }

    #[tokio::test]
    async fn client_certificate_without_its_key_is_refused() {
        let p = pair();
        // Claims b.test's certificate, signs with a.test's key.
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let config = custom_client(&[version], mismatched_key(&p.b, &p.a));
            let (s, c) = tokio::io::duplex(64 * 1024);
            let name = ServerName::try_from("a.test").unwrap();
            let (s, _) = tokio::join!(
                p.server.accept(Box::new(s), None, false),
                TlsConnector::from(config).connect(name, c)
            );
            assert!(matches!(s, Err(TlsError::Handshake(_))), "{version:?}");
        }
    }

    #[tokio::test]
    async fn server_certificate_without_its_key_is_refused() {
        let p = pair();
        let provider = certs::provider();
        let config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(mismatched_key(
                &p.a, &p.other,
            ))));
        let (s, c) = tokio::io::duplex(64 * 1024);
        let (_, c) = tokio::join!(
            tokio_rustls::TlsAcceptor::from(Arc::new(config)).accept(s),
            p.client.connect(Box::new(c), "b.test", "a.test", false)
        );
        assert!(matches!(c, Err(TlsError::Handshake(_))));
    }
}
