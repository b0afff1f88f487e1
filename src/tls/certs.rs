//! Our certificates by domain, and the trust anchors for peers' certificates.
//!
//! [`CertState::load`] builds one generation from a [`TlsConfig`]:
//!
//! 1. For each `[[tls.certificate]]` with `self_signed = true` whose files are missing,
//!    [`ensure_self_signed`] creates an ECDSA P-256 key (mode 0600) and a self-signed
//!    certificate for its domains.
//! 2. [`load_certified_key`] reads the PEM chain and key and checks that they belong together,
//!    so that a wrong key is a one-line startup error rather than failed handshakes.
//! 3. [`load_anchors`] gathers the trust anchors: the Mozilla roots (webpki-roots) if enabled,
//!    plus every certificate in each `ca_files` PEM.
//! 4. For each certificate, rustls server configs (with ALPN `xmpp-server` for direct TLS,
//!    XEP-0368, and without for STARTTLS) and client configs are built once, so a handshake
//!    only clones an `Arc`.
//! 5. Each certificate is checked against our own anchors, so that
//!    [`CertState::has_valid_certificate`] (may we offer SASL EXTERNAL?) costs nothing per
//!    stream.
//!
//! Selection ([`CertState::select`]) uses A-label names, as SNI and certificates do: an exact
//! domain first, then a `*.` entry covering exactly one more label (the same rule as
//! [`crate::config::certificate_covers`]); when two entries name the same domain the first
//! certificate in the file wins.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ServerConfig};

use super::error::TlsError;
use super::names::{ascii_domain, PresentedNames, ReferenceId};
use super::verifiers::{AnyClientCert, AnyServerCert};
use super::verify::{self, PeerRole};
use crate::config::{CertificateConfig, TlsConfig};

/// The ALPN protocol name for direct TLS s2s (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

/// How long a created self-signed certificate is valid. Long, because nobody renews it and
/// peers that accept self-signed certificates (dialback over TLS) do not need it short;
/// delete the files and reload to get a fresh one.
const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back a created certificate's validity starts, to allow for peers' clock skew.
const SELF_SIGNED_BACKDATE: Duration = Duration::from_secs(24 * 3600);

/// One loaded generation of certificates and trust anchors. Immutable: [`super::Tls::reload`]
/// builds a new one and swaps it in, so handshakes never see a half-loaded state.
pub(crate) struct CertState {
    /// Our certificates in configuration order; the first is the default.
    certs: Vec<OurCert>,
    /// Exact A-label domain → index into `certs`.
    exact: HashMap<String, usize>,
    /// For `*.suffix` entries: A-label `suffix` → index into `certs`.
    wildcard: HashMap<String, usize>,
    /// What peers' chains must lead to.
    pub(crate) anchors: Vec<TrustAnchor<'static>>,
    /// Client configs for a local domain we have no certificate for: no client auth.
    anonymous: ConfigPair<ClientConfig>,
}

/// One `[[tls.certificate]]`, ready for handshakes.
pub(crate) struct OurCert {
    /// The certificate file, to say in logs which certificate a handshake chose.
    pub(crate) path: PathBuf,
    /// Server configs presenting this certificate.
    pub(crate) server: ConfigPair<ServerConfig>,
    /// Client configs presenting this certificate as a client certificate.
    pub(crate) client: ConfigPair<ClientConfig>,
    /// The certificate's names, to answer [`CertState::has_valid_certificate`] per domain.
    names: PresentedNames,
    /// Whether the chain validated against our own anchors for serverAuth at load time.
    chain_valid: bool,
    /// Expiry (Unix seconds), so that a certificate that expires while loaded stops counting
    /// as valid without a reload.
    not_after: i64,
    /// The `tls-server-end-point` channel binding of this certificate (RFC 5929), if its
    /// signature algorithm defines one.
    pub(crate) end_point: Option<Vec<u8>>,
}

/// The same config with and without ALPN `xmpp-server`.
pub(crate) struct ConfigPair<C> {
    /// For STARTTLS (RFC 6120 §5): no ALPN.
    starttls: Arc<C>,
    /// For direct TLS (XEP-0368): ALPN `xmpp-server`.
    direct: Arc<C>,
}

impl<C> ConfigPair<C> {
    pub(crate) fn get(&self, direct: bool) -> &Arc<C> {
        if direct {
            &self.direct
        } else {
            &self.starttls
        }
    }
}

/// The crypto provider every config uses: ring, named explicitly so that no process-wide
/// default (or a second provider linked in by a dependency) can change what we negotiate.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl CertState {
    /// Loads everything `config` names; see the module docs. Creates self-signed files where
    /// asked. Any error names the file.
    pub(crate) fn load(config: &TlsConfig) -> Result<CertState, TlsError> {
        let provider = provider();
        let anchors = load_anchors(config)?;
        let now = UnixTime::now();
        let mut state = CertState {
            certs: Vec::with_capacity(config.certificate.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            anonymous: client_configs(&provider, None, Path::new("[tls]"))?,
            anchors,
        };
        for (index, c) in config.certificate.iter().enumerate() {
            if c.self_signed {
                ensure_self_signed(c)?;
            }
            let key = Arc::new(load_certified_key(&provider, c)?);
            let cert = state.prepare(&provider, c, key, now)?;
            state.certs.push(cert);
            for domain in &c.domains {
                match domain.strip_prefix("*.") {
                    Some(suffix) => state.wildcard.entry(ascii_domain(suffix)),
                    None => state.exact.entry(ascii_domain(domain)),
                }
                .or_insert(index);
            }
        }
        Ok(state)
    }

    /// Builds the configs for one certificate and judges it against our own anchors.
    fn prepare(
        &self,
        provider: &Arc<CryptoProvider>,
        c: &CertificateConfig,
        key: Arc<CertifiedKey>,
        now: UnixTime,
    ) -> Result<OurCert, TlsError> {
        let (leaf, intermediates) = key
            .cert
            .split_first()
            .ok_or_else(|| no_certificate(&c.cert))?;
        let parsed = verify::parse(leaf).map_err(|e| file_error(&c.cert, e))?;
        let names = PresentedNames::from_cert(&parsed);
        let chain_valid = verify::check_chain(
            leaf,
            intermediates,
            &parsed,
            PeerRole::Server,
            &self.anchors,
            now,
        );
        if let Err(problem) = &chain_valid {
            if !c.self_signed {
                tracing::warn!(
                    cert = %c.cert.display(),
                    "our certificate does not validate against our own trust anchors ({problem}); peers will likely accept it only for dialback"
                );
            }
        }
        for domain in c.domains.iter().filter(|d| !d.starts_with("*.")) {
            if !names.matches(&ReferenceId::new(domain)) {
                tracing::warn!(
                    cert = %c.cert.display(),
                    "the certificate is configured for {domain} but is for {}",
                    names.describe()
                );
            }
        }
        let not_after = parsed.validity().not_after.timestamp();
        let end_point = super::binding::server_end_point(leaf, &parsed);
        Ok(OurCert {
            end_point,
            server: server_configs(provider, &key, &c.cert)?,
            client: client_configs(provider, Some(&key), &c.cert)?,
            path: c.cert.clone(),
            names,
            chain_valid: chain_valid.is_ok(),
            not_after,
        })
    }

    /// Every configured domain (`*.parent` for wildcards) with its certificate's expiry, in
    /// Unix seconds.
    pub(crate) fn expiries(&self) -> Vec<(String, i64)> {
        let exact = self.exact.iter().map(|(d, i)| (d.clone(), *i));
        let wildcard = self.wildcard.iter().map(|(p, i)| (format!("*.{p}"), *i));
        exact
            .chain(wildcard)
            .filter_map(|(d, i)| Some((d, self.certs.get(i)?.not_after)))
            .collect()
    }

    /// Whether any certificate is loaded, so that a TLS handshake can be served at all.
    pub(crate) fn has_any(&self) -> bool {
        !self.certs.is_empty()
    }

    /// Our certificate for `domain` (any form; compared as A-labels): exact entry first,
    /// then a wildcard entry for its parent.
    pub(crate) fn select(&self, domain: &str) -> Option<&OurCert> {
        let name = ascii_domain(domain);
        if name.is_empty() {
            return None;
        }
        if let Some(i) = self.exact.get(&name) {
            return self.certs.get(*i);
        }
        let (first, parent) = name.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard.get(parent).and_then(|i| self.certs.get(*i))
    }

    /// The certificate to present as a server: by SNI, else by `hint` (the stream's `to`),
    /// else the first one, so that a peer sending neither still gets a handshake (and finds
    /// out about the name mismatch itself).
    pub(crate) fn select_for_accept(
        &self,
        sni: Option<&str>,
        hint: Option<&str>,
    ) -> Option<&OurCert> {
        sni.and_then(|n| self.select(n))
            .or_else(|| hint.and_then(|h| self.select(h)))
            .or_else(|| self.certs.first())
    }

    /// The client config for a connection from `local`: presenting our certificate for it if
    /// we have one (so the peer may accept SASL EXTERNAL), else none.
    pub(crate) fn client_config(&self, local: &str, direct: bool) -> Arc<ClientConfig> {
        match self.select(local) {
            Some(cert) => cert.client.get(direct).clone(),
            None => self.anonymous.get(direct).clone(),
        }
    }

    /// Whether our certificate for `domain` chains to our own anchors (serverAuth), is
    /// still valid, and names `domain`.
    pub(crate) fn has_valid_certificate(&self, domain: &str) -> bool {
        let now = i64::try_from(UnixTime::now().as_secs()).unwrap_or(i64::MAX);
        self.select(domain).is_some_and(|cert| {
            cert.chain_valid
                && now <= cert.not_after
                && cert.names.matches(&ReferenceId::new(domain))
        })
    }
}

fn file_error(path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

fn no_certificate(path: &Path) -> TlsError {
    file_error(
        path,
        "no CERTIFICATE block found; the file must hold the certificate in PEM, then its intermediates",
    )
}

/// Reads a file, with an error that says what to check.
fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|e| {
        file_error(
            path,
            format!("cannot read the {what}: {e}; check the path and that fedgate may read it"),
        )
    })
}

/// Reads every certificate in a PEM file.
fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path, what)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a valid PEM file: {e}")))
}

/// Loads one certificate chain and its key, and checks that the key is the certificate's.
pub(crate) fn load_certified_key(
    provider: &CryptoProvider,
    c: &CertificateConfig,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(&c.cert, "certificate")?;
    let leaf = chain.first().ok_or_else(|| no_certificate(&c.cert))?;
    verify::parse(leaf).map_err(|e| file_error(&c.cert, e))?;

    let key_pem = read_file(&c.key, "private key")?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let problem = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key found; expected a PEM block PRIVATE KEY (PKCS#8), EC PRIVATE KEY (SEC1) or RSA PRIVATE KEY (PKCS#1)".to_owned()
            }
            e => format!("not a valid PEM key file: {e}"),
        };
        file_error(&c.key, problem)
    })?;
    let signing_key = provider.key_provider.load_private_key(key_der).map_err(|e| {
        file_error(
            &c.key,
            format!("unusable private key: {e}; use an ECDSA (P-256/P-384), Ed25519 or RSA (2048+ bits) key"),
        )
    })?;
    let key = CertifiedKey::new(chain, signing_key);
    match key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(key),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(file_error(
                &c.key,
                format!(
                    "this key does not belong to the certificate in {}; point `key` at that certificate's private key",
                    c.cert.display()
                ),
            ))
        }
        Err(e) => Err(file_error(&c.cert, format!("unusable certificate: {e}"))),
    }
}

/// The trust anchors: webpki-roots if enabled, then every certificate of each CA file.
fn load_anchors(config: &TlsConfig) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
    let mut anchors = Vec::new();
    if config.webpki_roots {
        anchors.extend_from_slice(webpki_roots::TLS_SERVER_ROOTS);
    }
    for path in &config.ca_files {
        let certs = read_certificates(path, "CA file")?;
        if certs.is_empty() {
            return Err(file_error(
                path,
                "no CERTIFICATE block found; list PEM CA certificates in it, or remove it from tls.ca_files",
            ));
        }
        for (i, der) in certs.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(der).map_err(|e| {
                file_error(
                    path,
                    format!(
                        "certificate #{} is not a usable CA certificate ({e}); remove it",
                        i + 1
                    ),
                )
            })?;
            anchors.push(anchor.to_owned());
        }
    }
    Ok(anchors)
}

fn server_configs(
    provider: &Arc<CryptoProvider>,
    key: &Arc<CertifiedKey>,
    path: &Path,
) -> Result<ConfigPair<ServerConfig>, TlsError> {
    let build = |direct: bool| -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| file_error(path, format!("cannot build a TLS server config: {e}")))?
            .with_client_cert_verifier(AnyClientCert::new(provider))
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(key.clone())));
        if direct {
            config.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
        }
        Ok(Arc::new(config))
    };
    Ok(ConfigPair {
        starttls: build(false)?,
        direct: build(true)?,
    })
}

fn client_configs(
    provider: &Arc<CryptoProvider>,
    key: Option<&Arc<CertifiedKey>>,
    path: &Path,
) -> Result<ConfigPair<ClientConfig>, TlsError> {
    let build = |direct: bool| -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| file_error(path, format!("cannot build a TLS client config: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(AnyServerCert::new(provider));
        let mut config = match key {
            Some(key) => {
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key.clone())))
            }
            None => builder.with_no_client_auth(),
        };
        if direct {
            config.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
        }
        Ok(Arc::new(config))
    };
    Ok(ConfigPair {
        starttls: build(false)?,
        direct: build(true)?,
    })
}

/// Creates the files of a `self_signed = true` certificate that are missing:
/// - neither exists: a new ECDSA P-256 key and a certificate for it;
/// - only the key exists: a certificate for that key (a crash between the two writes, or a
///   deleted certificate to renew it);
/// - only the certificate exists: an error, since a new key would silently replace whatever
///   certificate the operator put there.
fn ensure_self_signed(c: &CertificateConfig) -> Result<(), TlsError> {
    let (cert_exists, key_exists) = (c.cert.exists(), c.key.exists());
    let key = match (cert_exists, key_exists) {
        (true, true) => return Ok(()),
        (true, false) => {
            return Err(file_error(
                &c.key,
                format!(
                    "the key is missing but the certificate {} exists; restore the key, or delete the certificate to have a new self-signed pair created",
                    c.cert.display()
                ),
            ))
        }
        (false, true) => {
            let pem = String::from_utf8(read_file(&c.key, "private key")?)
                .map_err(|_| file_error(&c.key, "not a PEM file"))?;
            rcgen::KeyPair::from_pem(&pem).map_err(|e| {
                file_error(
                    &c.key,
                    format!("cannot create a self-signed certificate for this key ({e}); delete it to have a new pair created"),
                )
            })?
        }
        (false, false) => {
            let key = rcgen::KeyPair::generate()
                .map_err(|e| file_error(&c.key, format!("cannot generate a key: {e}")))?;
            write_atomically(&c.key, key.serialize_pem().as_bytes(), 0o600).map_err(|e| {
                file_error(&c.key, format!("cannot write the new key: {e}; check the directory's permissions"))
            })?;
            key
        }
    };
    let pem = self_signed_pem(&c.domains, &key).map_err(|e| file_error(&c.cert, e))?;
    write_atomically(&c.cert, pem.as_bytes(), 0o644).map_err(|e| {
        file_error(
            &c.cert,
            format!("cannot write the new certificate: {e}; check the directory's permissions"),
        )
    })?;
    tracing::info!(
        cert = %c.cert.display(),
        key = %c.key.display(),
        domains = ?c.domains,
        "created a self-signed certificate; peers accept it for dialback only"
    );
    Ok(())
}

/// A self-signed certificate for `domains` (DNS names in A-label form, wildcards kept), valid
/// for both serverAuth and clientAuth since we present it in both roles.
fn self_signed_pem(domains: &[String], key: &rcgen::KeyPair) -> Result<String, String> {
    let names: Vec<String> = domains
        .iter()
        .map(|d| match d.strip_prefix("*.") {
            Some(suffix) => format!("*.{}", ascii_domain(suffix)),
            None => ascii_domain(d),
        })
        .collect();
    let mut params = rcgen::CertificateParams::new(names.clone())
        .map_err(|e| format!("cannot make a certificate for {names:?}: {e}"))?;
    let mut dn = rcgen::DistinguishedName::new();
    if let Some(first) = names.first() {
        dn.push(rcgen::DnType::CommonName, first.as_str());
    }
    params.distinguished_name = dn;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(SELF_SIGNED_BACKDATE);
    params.not_after = epoch + now + SELF_SIGNED_VALIDITY;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .self_signed(key)
        .map_err(|e| format!("cannot sign the self-signed certificate: {e}"))?;
    Ok(cert.pem())
}

/// Writes `contents` to `path` so that a reader sees the old file or the whole new one, never
/// a partial one: a temporary file in the same directory (created with `mode`, so a key is
/// never readable by others, not even briefly), synced, then renamed over `path`.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover from a crashed run of a process with the same id; `create_new` below would
    // refuse it (and refuses symlinks, so nothing else can be redirected through it).
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    let result = result.and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::tls::testca::TestCa;
    use crate::tls::CertProblem;

    fn entry(domains: &[&str], (cert, key): (PathBuf, PathBuf)) -> CertificateConfig {
        CertificateConfig {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            cert,
            key,
            self_signed: false,
        }
    }

    fn tls_config(ca_files: Vec<PathBuf>, certificate: Vec<CertificateConfig>) -> TlsConfig {
        TlsConfig {
            webpki_roots: false,
            ca_files,
            certificate,
        }
    }

    fn load_err(config: &TlsConfig) -> (String, String) {
        match CertState::load(config) {
            Err(TlsError::File { path, problem }) => (path, problem),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("loaded"),
        }
    }

    /// Which certificate file `select` chose.
    fn chosen(state: &CertState, domain: &str) -> Option<String> {
        state
            .select(domain)
            .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
    }

    #[test]
    fn selection_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::root("CA");
        let one = ca.leaf().dns("a.test").dns("*.w.test").build();
        let two = ca.leaf().dns("b.test").dns("x.w.test").ed25519().build();
        let three = ca.leaf().dns("xn--mnchen-3ya.test").build();
        let config = tls_config(
            vec![],
            vec![
                entry(&["a.test", "*.w.test"], one.write(dir.path(), "one")),
                entry(&["b.test", "x.w.test"], two.write(dir.path(), "two")),
                entry(&["münchen.test"], three.write(dir.path(), "three")),
            ],
        );
        let state = CertState::load(&config).unwrap();
        assert_eq!(chosen(&state, "a.test").as_deref(), Some("one.crt"));
        assert_eq!(chosen(&state, "A.TEST.").as_deref(), Some("one.crt"));
        assert_eq!(chosen(&state, "b.test").as_deref(), Some("two.crt"));
        // An exact entry beats a wildcard, wherever it is.
        assert_eq!(chosen(&state, "x.w.test").as_deref(), Some("two.crt"));
        assert_eq!(chosen(&state, "y.w.test").as_deref(), Some("one.crt"));
        // The wildcard covers one label: not the apex, not two labels.
        assert_eq!(chosen(&state, "w.test"), None);
        assert_eq!(chosen(&state, "z.y.w.test"), None);
        assert_eq!(chosen(&state, ".w.test"), None);
        assert_eq!(chosen(&state, ""), None);
        // Unicode and A-label forms select the same certificate.
        assert_eq!(chosen(&state, "münchen.test").as_deref(), Some("three.crt"));
        assert_eq!(chosen(&state, "MÜNCHEN.test").as_deref(), Some("three.crt"));
        assert_eq!(
            chosen(&state, "xn--mnchen-3ya.test").as_deref(),
            Some("three.crt")
        );

        let accept = |sni, hint| {
            state
                .select_for_accept(sni, hint)
                .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
        };
        assert_eq!(
            accept(Some("b.test"), Some("a.test")).as_deref(),
            Some("two.crt")
        );
        assert_eq!(
            accept(Some("nope.test"), Some("b.test")).as_deref(),
            Some("two.crt")
        );
        assert_eq!(accept(None, Some("B.Test.")).as_deref(), Some("two.crt"));
        assert_eq!(
            accept(None, Some("münchen.test")).as_deref(),
            Some("three.crt")
        );
        assert_eq!(accept(None, None).as_deref(), Some("one.crt"));
        assert_eq!(
            accept(Some("nope.test"), Some("nope.test")).as_deref(),
            Some("one.crt")
        );

        let empty = CertState::load(&tls_config(vec![], vec![])).unwrap();
        assert!(empty.select_for_accept(Some("a.test"), None).is_none());
    }

    #[test]
    fn key_must_match_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::root("CA");
        let (cert, _) = ca.leaf().dns("a.test").build().write(dir.path(), "a");
        let (_, other_key) = ca.leaf().dns("b.test").build().write(dir.path(), "b");
        let (path, problem) = load_err(&tls_config(
            vec![],
            vec![entry(&["a.test"], (cert.clone(), other_key.clone()))],
        ));
        assert_eq!(path, other_key.display().to_string());
        assert!(
            problem.contains("does not belong to the certificate in"),
            "{problem}"
        );
        assert!(problem.contains(&cert.display().to_string()), "{problem}");
        assert!(!problem.contains('\n'));
    }

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::root("CA");
        let (cert, key) = ca.leaf().dns("a.test").build().write(dir.path(), "a");
        let missing = dir.path().join("missing.pem");

        let (path, problem) = load_err(&tls_config(
            vec![],
            vec![entry(&["a.test"], (missing.clone(), key.clone()))],
        ));
        assert_eq!(path, missing.display().to_string());
        assert!(
            problem.starts_with("cannot read the certificate: "),
            "{problem}"
        );
        let (path, problem) = load_err(&tls_config(
            vec![],
            vec![entry(&["a.test"], (cert.clone(), missing.clone()))],
        ));
        assert_eq!(path, missing.display().to_string());
        assert!(
            problem.starts_with("cannot read the private key: "),
            "{problem}"
        );
        let (path, _) = load_err(&tls_config(vec![missing.clone()], vec![]));
        assert_eq!(path, missing.display().to_string());

        // The certificate where the key should be, and the other way round.
        let (path, problem) = load_err(&tls_config(
            vec![],
            vec![entry(&["a.test"], (cert.clone(), cert.clone()))],
        ));
        assert_eq!(path, cert.display().to_string());
        assert!(problem.starts_with("no private key found"), "{problem}");
        let (path, problem) = load_err(&tls_config(
            vec![],
            vec![entry(&["a.test"], (key.clone(), key.clone()))],
        ));
        assert_eq!(path, key.display().to_string());
        assert!(
            problem.starts_with("no CERTIFICATE block found"),
            "{problem}"
        );

        // A CA file without certificates, and one with a certificate that is not one.
        let (path, problem) = load_err(&tls_config(vec![key.clone()], vec![]));
        assert_eq!(path, key.display().to_string());
        assert!(
            problem.starts_with("no CERTIFICATE block found"),
            "{problem}"
        );
        let bad = dir.path().join("bad-ca.pem");
        std::fs::write(
            &bad,
            format!(
                "{}-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n",
                ca.pem
            ),
        )
        .unwrap();
        let (path, problem) = load_err(&tls_config(vec![bad.clone()], vec![]));
        assert_eq!(path, bad.display().to_string());
        assert!(
            problem.starts_with("certificate #2 is not a usable CA certificate"),
            "{problem}"
        );
    }

    #[test]
    fn has_valid_certificate_uses_our_anchors() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::root("CA");
        let ca_file = ca.write_pem(dir.path(), "ca.pem");
        let good = ca.leaf().dns("a.test").build().write(dir.path(), "a");
        let expired = ca
            .leaf()
            .dns("old.test")
            .validity((2000, 1, 1), (2001, 1, 1))
            .build()
            .write(dir.path(), "old");
        let entries = vec![
            entry(&["a.test", "*.w.test"], good),
            entry(&["old.test"], expired),
        ];
        let state = CertState::load(&tls_config(vec![ca_file], entries.clone())).unwrap();
        assert!(state.has_valid_certificate("a.test"));
        // Configured for *.w.test, but the certificate does not name it.
        assert!(!state.has_valid_certificate("x.w.test"));
        assert!(!state.has_valid_certificate("old.test"));
        assert!(!state.has_valid_certificate("b.test"));
        // Without the CA among our anchors, nothing is valid.
        let state = CertState::load(&tls_config(vec![], entries)).unwrap();
        assert!(!state.has_valid_certificate("a.test"));
    }

    #[test]
    fn self_signed_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("ss.crt");
        let key = dir.path().join("ss.key");
        let mut c = entry(&["münchen.test", "*.w.test"], (cert.clone(), key.clone()));
        c.self_signed = true;
        let config = tls_config(vec![], vec![c]);

        let state = CertState::load(&config).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let cert_pem = std::fs::read(&cert).unwrap();
        let key_pem = std::fs::read(&key).unwrap();
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // Names in A-label form; self-signed, so not valid for SASL EXTERNAL.
        let der = CertificateDer::pem_slice_iter(&cert_pem)
            .next()
            .unwrap()
            .unwrap();
        let parsed = verify::parse(&der).unwrap();
        let names = PresentedNames::from_cert(&parsed);
        assert_eq!(names.describe(), "DNS:xn--mnchen-3ya.test, DNS:*.w.test");
        assert!(names.matches(&ReferenceId::new("münchen.test")));
        assert_eq!(chosen(&state, "x.w.test").as_deref(), Some("ss.crt"));
        assert!(!state.has_valid_certificate("münchen.test"));
        assert_eq!(
            verify::check_peer(
                &[der],
                "münchen.test",
                PeerRole::Server,
                &[],
                &state.anchors,
                UnixTime::now()
            ),
            verify::CertVerdict::Invalid(CertProblem::SelfSigned)
        );

        // The second load reuses the files.
        CertState::load(&config).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), cert_pem);
        assert_eq!(std::fs::read(&key).unwrap(), key_pem);

        // A deleted certificate is recreated for the same key.
        std::fs::remove_file(&cert).unwrap();
        CertState::load(&config).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), key_pem);
        let new_cert = std::fs::read(&cert).unwrap();
        assert_ne!(new_cert, cert_pem);
        let old_der = CertificateDer::pem_slice_iter(&cert_pem)
            .next()
            .unwrap()
            .unwrap();
        let new_der = CertificateDer::pem_slice_iter(&new_cert)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(
            verify::spki_sha256(&verify::parse(&old_der).unwrap()),
            verify::spki_sha256(&verify::parse(&new_der).unwrap())
        );

        // A deleted key is not silently replaced while its certificate exists.
        std::fs::remove_file(&key).unwrap();
        let (path, problem) = load_err(&config);
        assert_eq!(path, key.display().to_string());
        assert!(problem.contains("the key is missing"), "{problem}");
    }

    #[test]
    fn key_types_and_formats_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::root("CA");
        let ca_file = ca.write_pem(dir.path(), "ca.pem");
        let ed = ca.leaf().dns("ed.test").ed25519().build();
        let ec = ca.leaf().dns("ec.test").build();
        let rsa = ca.leaf().dns("rsa.test").rsa().build();
        let mut entries = vec![
            entry(&["ed.test"], ed.write(dir.path(), "ed")),
            entry(&["ec.test"], ec.write(dir.path(), "ec")),
            entry(&["rsa.test"], rsa.write(dir.path(), "rsa")),
        ];
        // The same keys as SEC1 and PKCS#1.
        let (cert, _) = ec.write(dir.path(), "ec-sec1");
        let sec1 = dir.path().join("ec-sec1.key");
        std::fs::write(&sec1, ec.key_pem_unwrapped("EC PRIVATE KEY")).unwrap();
        entries.push(entry(&["sec1.test"], (cert, sec1)));
        let (cert, _) = rsa.write(dir.path(), "rsa-pkcs1");
        let pkcs1 = dir.path().join("rsa-pkcs1.key");
        std::fs::write(&pkcs1, rsa.key_pem_unwrapped("RSA PRIVATE KEY")).unwrap();
        entries.push(entry(&["pkcs1.test"], (cert, pkcs1)));

        let state = CertState::load(&tls_config(vec![ca_file], entries)).unwrap();
        for (domain, file) in [
            ("ed.test", "ed.crt"),
            ("ec.test", "ec.crt"),
            ("rsa.test", "rsa.crt"),
            ("sec1.test", "ec-sec1.crt"),
            ("pkcs1.test", "rsa-pkcs1.crt"),
        ] {
            assert_eq!(chosen(&state, domain).as_deref(), Some(file));
        }
        assert!(state.has_valid_certificate("ed.test"));
        assert!(state.has_valid_certificate("rsa.test"));
    }

    #[test]
    fn webpki_roots_included_when_enabled() {
        let mut config = tls_config(vec![], vec![]);
        assert!(CertState::load(&config).unwrap().anchors.is_empty());
        config.webpki_roots = true;
        let state = CertState::load(&config).unwrap();
        assert_eq!(state.anchors.len(), webpki_roots::TLS_SERVER_ROOTS.len());
    }
}
