//! Certificates made at run time: one test CA that every instance trusts (`[tls] ca_files`),
//! and leaves with the names, validity and purposes a test asks for.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CustomExtension, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// What a leaf certificate should look like. Default: issued by the test CA for no names,
/// serverAuth only (as public CAs issue them now), valid now.
#[derive(Clone, Debug, Default)]
pub struct CertSpec {
    /// DNS-IDs (dNSName SANs), wildcards allowed.
    pub dns: Vec<String>,
    /// SRV-IDs for `_xmpp-server.` + each domain.
    pub srv: Vec<String>,
    /// XmppAddr otherNames.
    pub xmpp_addr: Vec<String>,
    /// The subject CN (never a valid identity on its own).
    pub cn: Option<String>,
    /// Self-signed instead of issued by the test CA.
    pub self_signed: bool,
    /// Issued by a CA nobody trusts.
    pub unknown_ca: bool,
    /// Expired last year.
    pub expired: bool,
    /// Expires this many days from now (instead of the default years ahead).
    pub expires_in_days: Option<i64>,
    /// Valid from 2024 to 2034, as real certificates are, instead of rcgen's 1975–4096
    /// (ejabberd's expiry watcher cannot arm a timer centuries away, and crashes).
    pub ten_years: bool,
    /// Extended key usages; empty = serverAuth only.
    pub eku: Vec<ExtendedKeyUsagePurpose>,
}

impl CertSpec {
    /// A CA-issued certificate with these DNS names.
    pub fn for_names(names: &[&str]) -> CertSpec {
        CertSpec {
            dns: names.iter().map(|s| s.to_string()).collect(),
            ..CertSpec::default()
        }
    }
}

/// The test CA.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// A CA that nobody trusts, for "unknown issuer" leaves.
    untrusted: Issuer<'static, KeyPair>,
    /// PEM file of the CA certificate, for `[tls] ca_files`.
    pub ca_file: PathBuf,
}

/// The process-wide test CA (created once; its directory lives as long as the process).
pub fn ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (pem, issuer) = make_ca("fedgate test CA");
        let (_, untrusted) = make_ca("untrusted CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &pem).unwrap();
        TestCa {
            issuer,
            untrusted,
            ca_file,
        }
    })
}

fn make_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

impl TestCa {
    /// Writes `{stem}.crt` and `{stem}.key` into `dir` and returns their paths.
    pub fn issue(&self, spec: &CertSpec, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(spec.dns.clone()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = &spec.cn {
            params
                .distinguished_name
                .push(DnType::CommonName, cn.as_str());
        }
        for addr in &spec.xmpp_addr {
            params.subject_alt_names.push(rcgen::SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
                rcgen::OtherNameValue::Utf8String(addr.clone()),
            )));
        }
        if !spec.srv.is_empty() {
            // rcgen writes otherName values as UTF8String only; an SRVName is an IA5String,
            // so this certificate's SAN extension is encoded here (all its names together).
            params.custom_extensions.push(san_extension(spec));
            params.subject_alt_names.clear();
        }
        params.extended_key_usages = if spec.eku.is_empty() {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            spec.eku.clone()
        };
        if spec.ten_years {
            params.not_before = date_time_ymd(2024, 1, 1);
            params.not_after = date_time_ymd(2034, 1, 1);
        }
        if spec.expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        if let Some(days) = spec.expires_in_days {
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        }
        let cert = if spec.self_signed {
            params.self_signed(&key).unwrap()
        } else if spec.unknown_ca {
            params.signed_by(&key, &self.untrusted).unwrap()
        } else {
            params.signed_by(&key, &self.issuer).unwrap()
        };
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// A subjectAltName extension (OID 2.5.29.17) with the spec's dNSNames, SRVNames (IA5String)
/// and XmppAddrs (UTF8String).
fn san_extension(spec: &CertSpec) -> CustomExtension {
    let mut names = Vec::new();
    for dns in &spec.dns {
        names.extend(tlv(0x82, dns.as_bytes()));
    }
    for (oid, tag, values) in [
        (
            &[0x2b, 6, 1, 5, 5, 7, 8, 7][..],
            0x16u8,
            spec.srv
                .iter()
                .map(|d| format!("_xmpp-server.{d}"))
                .collect::<Vec<_>>(),
        ),
        (
            &[0x2b, 6, 1, 5, 5, 7, 8, 5][..],
            0x0c,
            spec.xmpp_addr.clone(),
        ),
    ] {
        for value in values {
            let mut other = tlv(0x06, oid);
            other.extend(tlv(0xa0, &tlv(tag, value.as_bytes())));
            names.extend(tlv(0xa0, &other));
        }
    }
    CustomExtension::from_oid_content(&[2, 5, 29, 17], tlv(0x30, &names))
}

/// One DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}
