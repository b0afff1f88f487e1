//! Test certificates made at run time with rcgen: roots, intermediates and leaves with chosen
//! names, purposes and dates, plus helpers to write them as PEM files for a configuration.
//!
//! rcgen encodes an otherName only as a UTF8String, but an SRV-ID is an IA5String
//! (RFC 4985), so a leaf with an SRV-ID gets its whole subjectAltName encoded here by hand.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, OtherNameValue, SanType, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, TrustAnchor};

/// OID arcs of `id-on-xmppAddr`.
const XMPP_ADDR_ARCS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 8, 5];
/// DER content of the OID `id-on-xmppAddr`.
const XMPP_ADDR_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05];
/// DER content of the OID `id-on-dnsSRV`.
const SRV_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07];
/// OID arcs of the subjectAltName extension.
const SAN_ARCS: &[u64] = &[2, 5, 29, 17];
/// A fixed 2048-bit RSA key (PKCS#8), for RSA leaves: ring cannot generate RSA keys. Made
/// with `openssl genpkey -algorithm RSA` for these tests only; it protects nothing.
const RSA_2048_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCcGMRxQ4zRuUSJ\n\
c7yC8+l3uvziK30QZC5M2r00PEu2YXOLzO9TSc/zIWowNqe1xFNvqXCl8MFgymqf\n\
r1hCQ8hKRQTreQPlSNjQZa7tJ1dqv9CUm0oed+5KNbLUIbfh1o8DTkxLvZbG8zmb\n\
gdGK4FOfKLz0WUV1PDtjGxPG7w9BUKHlUZBVH9vSLGhD/P4Z84iQ0zqwpb1EVERP\n\
GpX7erHizWjlzAkhoB3nwP5ipjYmVmGtH4/dwdw705es/YUm8uTrQ5qYDNb+5SDL\n\
X+PAmI+MnUCwp48Am6HzDM84LE/+ZocZuIv1xScFcg+X42We7M2PBkOcJNLRqcTI\n\
UWLuZt6HAgMBAAECggEAR3GQi5SSwbSNmWmm6LrRaxLixnOIGLX5eQSOn3dPYeil\n\
dWF1UkYQzuNG0k1Zojh6xbskC1cvcukCNxcOirmyVMfVMh8fuNQIJA2+K94bRQkI\n\
4tNWb66NmlqMgEn0ewF0UFuIUQwzk9hjz/hxWyJEM672GNI5F6jbN4d/nEfzT/1s\n\
FIjDgTcERSZEm+sAb48CjzPZCPNW10hEskyb2y0Fa95syVCkf6B9JvbMXEOf+cvS\n\
zGYifpiPc7Sa5Jurzd2v1epN/zXfd3xU+AhIbJWYB1ke028ao9UDvDSe+4JbX5Xz\n\
ewVG462yWTFXdK1wt+NGMbUsInegxo3YT6N4GlI+CQKBgQDPtW5C5WvI45FXYlil\n\
XjlAfqCeARW1B327etRO75GwpTCxoikqc2DGQcgQkyVTP/T6Poq9fE+7QfflmNzx\n\
QseF+EnSPEs273ZACtENkQVsRHYVArFKZbjl7ZNj2Er0PZ/F3cD1KX49Xb95q58I\n\
pDlq3/r2vRBaCqTOAhbUZo+VDwKBgQDAY3SS9riHdlXrqiYjU9PmxCHkBioXnsja\n\
ixQ99YDrjh7YmBY5q44L08UAaC3l4RHESWJAOBqKvBNcnqXTOfE+gzAqfCnTu/u/\n\
E2SMS1ZzlIuJQ+/kWimAvgpyTsueE3T619dUOEX05E8Nv6yw8tT1v4Rfp6do/+fk\n\
VvcA0/VPCQKBgCMyChH50A7FSN52wrCay7a6/jpn0qbPMyXuhUUu4Q/+ncarxK/1\n\
xwMxKFZuqJd3seopaNb81oHThs733RBgkXCJBvFB2Djh0La/XncfCL00yJF82E/T\n\
9sW3QQ9dGi5Stt0PW1/vfP2nAgf65cLQGQ6cD2l51eh7/zsNLZMmIdRPAoGAJNUl\n\
pVlM3MpgCr1Jjevnnr+gCWrQtjL1GzoTRwVwiChuaWM8pg/dIxCJH9nSJ7eeUikG\n\
gWr8UeFOB6Zr8vOd5yzwlMGutFXCDcPltSJbS8d9q2rxS5OjbH11vIqvWvU4qSmX\n\
lQ0s/4SSSfyPUFU9RktDSZjsaSLNP58SrPrndRkCgYAI7iF4KKBbmQz4hhmJ9Imd\n\
WC59O9faGJcDLePTB54fg+gLvtfts6wsEt3VHwVGVtSh/tjVFsTg+aS/LHQ/J9/l\n\
MqisZARaYC/5JHTnJ0umcySedtxkoK3aLB2Fo7s84ZJKizPJ1JLtKaudghat4ycq\n\
aa9LsOo972iyfWihBFtPHQ==\n\
-----END PRIVATE KEY-----\n\
";

/// A certificate authority that can sign intermediates and leaves.
pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate.
    pub(crate) der: CertificateDer<'static>,
    /// `der` as PEM, for a `ca_files` entry.
    pub(crate) pem: String,
    /// What a leaf of this CA must send after itself: this CA and its parents, excluding the
    /// root (empty for a root).
    chain: Vec<CertificateDer<'static>>,
}

impl TestCa {
    /// A new root CA with common name `name`.
    pub(crate) fn root(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let params = ca_params(name);
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            chain: Vec::new(),
        }
    }

    /// An intermediate CA signed by this one.
    pub(crate) fn intermediate(&self, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("intermediate key");
        let params = ca_params(name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate");
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            chain,
        }
    }

    /// This CA as a trust anchor.
    pub(crate) fn anchor(&self) -> TrustAnchor<'static> {
        webpki::anchor_from_trusted_cert(&self.der)
            .expect("anchor")
            .to_owned()
    }

    /// Writes the CA certificate as PEM to `dir/file`.
    pub(crate) fn write_pem(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }

    /// A leaf signed by this CA; by default ECDSA P-256, valid 1975–4096, serverAuth and
    /// clientAuth, no names.
    pub(crate) fn leaf(&self) -> LeafBuilder<'_> {
        LeafBuilder::new(Some(self))
    }
}

/// A self-signed leaf, with the same defaults as [`TestCa::leaf`].
pub(crate) fn self_signed() -> LeafBuilder<'static> {
    LeafBuilder::new(None)
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// One subjectAltName entry.
enum San {
    Dns(String),
    Srv(String),
    XmppAddr(String),
}

/// Builds a leaf certificate.
pub(crate) struct LeafBuilder<'a> {
    issuer: Option<&'a TestCa>,
    params: CertificateParams,
    names: Vec<San>,
    alg: &'static SignatureAlgorithm,
}

impl<'a> LeafBuilder<'a> {
    fn new(issuer: Option<&'a TestCa>) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "test leaf");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        LeafBuilder {
            issuer,
            params,
            names: Vec::new(),
            alg: &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }

    /// Adds a `dNSName`.
    pub(crate) fn dns(mut self, name: &str) -> Self {
        self.names.push(San::Dns(name.to_owned()));
        self
    }

    /// Adds an SRV-ID, given whole (`_xmpp-server.a.test`).
    pub(crate) fn srv(mut self, name: &str) -> Self {
        self.names.push(San::Srv(name.to_owned()));
        self
    }

    /// Adds an XmppAddr.
    pub(crate) fn xmpp_addr(mut self, addr: &str) -> Self {
        self.names.push(San::XmppAddr(addr.to_owned()));
        self
    }

    /// Sets the subject's common name (which must never count as a name).
    pub(crate) fn cn(mut self, cn: &str) -> Self {
        self.params.distinguished_name = rcgen::DistinguishedName::new();
        self.params.distinguished_name.push(DnType::CommonName, cn);
        self
    }

    /// Sets the extended key usages; empty leaves the extension out.
    pub(crate) fn eku(mut self, ekus: &[ExtendedKeyUsagePurpose]) -> Self {
        self.params.extended_key_usages = ekus.to_vec();
        self
    }

    /// Sets the validity period, as `(year, month, day)`.
    pub(crate) fn validity(mut self, from: (i32, u8, u8), to: (i32, u8, u8)) -> Self {
        self.params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        self.params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        self
    }

    /// Uses an Ed25519 key instead of ECDSA P-256.
    pub(crate) fn ed25519(mut self) -> Self {
        self.alg = &rcgen::PKCS_ED25519;
        self
    }

    /// Uses the fixed RSA key instead of a new ECDSA P-256 key.
    pub(crate) fn rsa(mut self) -> Self {
        self.alg = &rcgen::PKCS_RSA_SHA256;
        self
    }

    /// Signs the leaf.
    pub(crate) fn build(mut self) -> Leaf {
        let key = if self.alg == &rcgen::PKCS_RSA_SHA256 {
            KeyPair::from_pem(RSA_2048_PKCS8).expect("RSA key")
        } else {
            KeyPair::generate_for(self.alg).expect("leaf key")
        };
        if self.names.iter().any(|n| matches!(n, San::Srv(_))) {
            self.params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    SAN_ARCS,
                    encode_san(&self.names),
                ));
        } else {
            self.params.subject_alt_names = self
                .names
                .iter()
                .map(|n| match n {
                    San::Dns(d) => SanType::DnsName(d.as_str().try_into().expect("IA5 name")),
                    San::XmppAddr(a) => SanType::OtherName((
                        XMPP_ADDR_ARCS.to_vec(),
                        OtherNameValue::Utf8String(a.clone()),
                    )),
                    San::Srv(_) => unreachable!("SRV-IDs are encoded by hand"),
                })
                .collect();
        }
        let (cert, chain_rest) = match self.issuer {
            Some(ca) => (
                self.params.signed_by(&key, &ca.issuer).expect("sign leaf"),
                ca.chain.clone(),
            ),
            None => (
                self.params.self_signed(&key).expect("self-sign leaf"),
                Vec::new(),
            ),
        };
        let mut chain = vec![cert.der().clone()];
        chain.extend(chain_rest);
        Leaf {
            chain,
            key_pem: key.serialize_pem(),
        }
    }
}

/// A subjectAltName extension value (GeneralNames) in DER.
fn encode_san(names: &[San]) -> Vec<u8> {
    let mut general_names = Vec::new();
    for name in names {
        general_names.extend(match name {
            San::Dns(d) => der(0x82, d.as_bytes()),
            San::Srv(s) => other_name(SRV_OID, &der(0x16, s.as_bytes())),
            San::XmppAddr(a) => other_name(XMPP_ADDR_OID, &der(0x0c, a.as_bytes())),
        });
    }
    der(0x30, &general_names)
}

/// `[0] IMPLICIT OtherName ::= SEQUENCE { type-id OID, value [0] EXPLICIT ANY }`.
fn other_name(oid: &[u8], value: &[u8]) -> Vec<u8> {
    let mut content = der(0x06, oid);
    content.extend(der(0xa0, value));
    der(0xa0, &content)
}

/// One DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// `der` as a PEM block labelled `label`.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A leaf certificate, its chain and its key.
pub(crate) struct Leaf {
    /// The leaf first, then its intermediates (no root).
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The private key, PKCS#8 PEM.
    pub(crate) key_pem: String,
}

impl Leaf {
    /// The chain as PEM, for a `cert` file.
    pub(crate) fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| pem("CERTIFICATE", der.as_ref()))
            .collect()
    }

    /// The key in its algorithm's own format instead of PKCS#8: SEC1 (`EC PRIVATE KEY`) for
    /// ECDSA, PKCS#1 (`RSA PRIVATE KEY`) for RSA. PKCS#8 wraps exactly that structure:
    /// `SEQUENCE { version, algorithm, OCTET STRING { key } }`.
    pub(crate) fn key_pem_unwrapped(&self, label: &str) -> String {
        use rustls::pki_types::pem::PemObject as _;
        let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(self.key_pem.as_bytes())
            .expect("PKCS#8 key");
        let tlv = super::names::read_tlv;
        let (_, seq, _) = tlv(pkcs8.secret_pkcs8_der()).expect("PKCS#8 sequence");
        let (_, _version, rest) = tlv(seq).expect("version");
        let (_, _algorithm, rest) = tlv(rest).expect("algorithm");
        let (tag, key, _) = tlv(rest).expect("key");
        assert_eq!(tag, 0x04, "OCTET STRING");
        pem(label, key)
    }

    /// Writes `dir/name.crt` (the chain) and `dir/name.key`; returns their paths.
    pub(crate) fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, self.chain_pem()).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// The SHA-256 of the leaf's SubjectPublicKeyInfo: its pin.
    pub(crate) fn pin(&self) -> [u8; 32] {
        let parsed = super::verify::parse(&self.chain[0]).expect("parse leaf");
        super::verify::spki_sha256(&parsed)
    }
}
