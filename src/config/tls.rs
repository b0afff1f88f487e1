//! `[tls]` and `[[tls.certificate]]`: our certificates and the trust anchors for peers'.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `[tls]`: certificates we present and trust anchors for the certificates peers present.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Trust the Mozilla root store (webpki-roots) for peers' certificates. Default `true`.
    pub webpki_roots: bool,
    /// Extra trust anchors, PEM files of CA certificates (a private CA, a test CA). Default
    /// none. Relative paths are relative to the configuration file.
    pub ca_files: Vec<PathBuf>,
    /// `[[tls.certificate]]`: one per certificate we present. Default none.
    pub certificate: Vec<CertificateConfig>,
}

impl TlsConfig {
    /// Resolves certificate, key and CA paths against the configuration file's directory.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        };
        self.ca_files.iter_mut().for_each(resolve);
        for c in &mut self.certificate {
            resolve(&mut c.cert);
            resolve(&mut c.key);
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            webpki_roots: true,
            ca_files: Vec::new(),
            certificate: Vec::new(),
        }
    }
}

/// `[[tls.certificate]]`: a certificate and its key, presented for `domains`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The domains this certificate is presented for, chosen by the peer's SNI or its stream
    /// `to`; `"*.example.org"` covers every direct subdomain. Required, not empty.
    pub domains: Vec<String>,
    /// PEM file: the certificate, then its intermediates. Required. Re-read on SIGHUP.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, SEC1 or PKCS#1; ECDSA, Ed25519 or RSA). Required.
    /// Keep it mode 0600. Re-read on SIGHUP.
    pub key: PathBuf,
    /// Create a self-signed certificate for `domains` at `cert`/`key` when the files do not
    /// exist. Default `false`. Peers accept it only for dialback over TLS (not SASL EXTERNAL,
    /// not under their `secure_auth`); use a CA-issued certificate for real federation.
    #[serde(default)]
    pub self_signed: bool,
}

/// Whether a `[[tls.certificate]]` domain entry covers `domain` (both canonical): exactly, or
/// `*.example.org` for a name with exactly one more label, as a wildcard certificate does
/// (RFC 9525 §6.3).
pub fn certificate_covers(pattern: &str, domain: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => domain
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == domain,
    }
}
