//! Handshake-time certificate verifiers that accept any chain but check every signature.
//!
//! XMPP federation cannot fail the TLS handshake on the peer's certificate: many servers have
//! self-signed or mismatched certificates and authenticate by dialback over TLS (XEP-0344),
//! and the decision depends on per-peer policy the TLS layer does not know. So the chain and
//! names are judged after the handshake by [`super::verify::check_peer`].
//!
//! What the handshake must still prove is that the peer holds the private key of the
//! certificate it presented: otherwise anyone could replay a public certificate, and a later
//! "valid" verdict would be meaningless. Both verifiers therefore check the
//! CertificateVerify / ServerKeyExchange signatures (RFC 8446 §4.4.3, RFC 5246 §7.4.3) with
//! the provider's algorithms, exactly as rustls's own verifiers do.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The part both verifiers share: the algorithms handshake signatures may use.
#[derive(Debug, Clone, Copy)]
struct SignatureCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl SignatureCheck {
    fn new(provider: &rustls::crypto::CryptoProvider) -> SignatureCheck {
        SignatureCheck {
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// The end-entity certificate must at least parse, so that a verdict can be given on it
    /// later; a peer sending garbage gets a `bad_certificate` alert.
    fn parses(end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        webpki::EndEntityCert::try_from(end_entity)
            .map(|_| ())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
    }
}

/// Server side: asks every client for a certificate, accepts whatever it sends (or nothing),
/// and verifies its handshake signature.
#[derive(Debug)]
pub(crate) struct AnyClientCert(SignatureCheck);

impl AnyClientCert {
    pub(crate) fn new(provider: &rustls::crypto::CryptoProvider) -> Arc<AnyClientCert> {
        Arc::new(AnyClientCert(SignatureCheck::new(provider)))
    }
}

impl ClientCertVerifier for AnyClientCert {
    /// Always ask: a peer with a CA-issued certificate can then use SASL EXTERNAL.
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Never require: a peer without a certificate may still use dialback.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: we accept certificates from any CA (and none), so naming our anchors would
    /// only make the CertificateRequest large.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        SignatureCheck::parses(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

/// Client side: accepts whatever certificate the server sends, whatever its name, and
/// verifies its handshake signature.
#[derive(Debug)]
pub(crate) struct AnyServerCert(SignatureCheck);

impl AnyServerCert {
    pub(crate) fn new(provider: &rustls::crypto::CryptoProvider) -> Arc<AnyServerCert> {
        Arc::new(AnyServerCert(SignatureCheck::new(provider)))
    }
}

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        SignatureCheck::parses(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}
