//! Channel bindings (RFC 5056) for SASL `SCRAM-*-PLUS` on client streams, so that a
//! password exchange cannot be relayed through a man in the middle who terminates TLS:
//! - `tls-exporter` (RFC 9266): 32 bytes exported with the label `EXPORTER-Channel-Binding`
//!   and no context. Only on TLS 1.3: RFC 9266 §3 allows it on TLS 1.2 only with the extended
//!   master secret, which we cannot see being negotiated.
//! - `tls-server-end-point` (RFC 5929 §4): the hash of the certificate we presented, with the
//!   hash of its signature algorithm (SHA-256 where that is MD5 or SHA-1); none for a
//!   signature without a hash of its own (Ed25519) or with parameters (RSASSA-PSS).
//!
//! Both are computed only for client streams ([`super::Tls::accept_client`]); the end point
//! hash once per certificate, at load time.

use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_parser::certificate::X509Certificate;

/// A channel binding type this server can provide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelBindingType {
    /// `tls-exporter` (RFC 9266): keying material exported from this connection; TLS 1.3 only.
    TlsExporter,
    /// `tls-server-end-point` (RFC 5929 §4): a hash of the certificate we presented.
    TlsServerEndPoint,
}

impl ChannelBindingType {
    /// The name in the GS2 header and in XEP-0440.
    pub fn name(self) -> &'static str {
        match self {
            ChannelBindingType::TlsExporter => "tls-exporter",
            ChannelBindingType::TlsServerEndPoint => "tls-server-end-point",
        }
    }

    /// Parses a name from the GS2 header (`p=NAME`); `None` for a type we cannot provide.
    pub fn from_name(name: &str) -> Option<ChannelBindingType> {
        match name {
            "tls-exporter" => Some(ChannelBindingType::TlsExporter),
            "tls-server-end-point" => Some(ChannelBindingType::TlsServerEndPoint),
            _ => None,
        }
    }
}

/// The channel binding data of one TLS connection, per type; `None` where the connection
/// cannot provide it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelBindings {
    /// The 32 exported bytes; `None` below TLS 1.3.
    pub tls_exporter: Option<Vec<u8>>,
    /// The hash of our certificate; `None` when its signature algorithm has no usable hash.
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBindings {
    /// The binding data of type `t`, if this connection has it.
    pub fn get(&self, t: ChannelBindingType) -> Option<&[u8]> {
        match t {
            ChannelBindingType::TlsExporter => self.tls_exporter.as_deref(),
            ChannelBindingType::TlsServerEndPoint => self.tls_server_end_point.as_deref(),
        }
    }

    /// The types available, preferred first (tls-exporter binds to this connection's keys).
    pub fn types(&self) -> Vec<ChannelBindingType> {
        [
            ChannelBindingType::TlsExporter,
            ChannelBindingType::TlsServerEndPoint,
        ]
        .into_iter()
        .filter(|t| self.get(*t).is_some())
        .collect()
    }

    /// Whether the connection can provide no channel binding, so no `-PLUS` mechanism is offered.
    pub fn is_empty(&self) -> bool {
        self.types().is_empty()
    }
}

/// The RFC 5929 §4.1 `tls-server-end-point` data of a certificate (its DER and parse).
pub(crate) fn server_end_point(der: &[u8], cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let digest = match oid.as_str() {
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1, dsa-with-sha1: SHA-256 instead.
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.10045.4.1"
        | "1.2.840.10040.4.3"
        // sha256WithRSA, ecdsa-with-SHA256
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.3.2" => Sha256::digest(der).to_vec(),
        // sha384WithRSA, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(der).to_vec(),
        // sha512WithRSA, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(der).to_vec(),
        _ => return None,
    };
    Some(digest)
}
