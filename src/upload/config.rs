//! `[upload]`: the XEP-0363 file upload service the gateway runs in its own process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{invalid, ConfigError};
use crate::jid::normalize_domain;

/// `[upload]`: an XEP-0363 HTTP file upload service on its own domain, attached to the
/// gateway over an in-process XEP-0114 link like `[muc]`, with an HTTPS listener of its own
/// that presents the `[tls]` certificate for the host of `url`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// The service's domain, e.g. `"upload.example.test"`, which clients find in the
    /// server's disco#items and ask for slots. Required. It must not be a
    /// `[[component.backend]]` domain, a `[[core.domain]]` or the `[muc]` domain.
    pub domain: String,
    /// The HTTPS listener for PUT and GET. Default `"0.0.0.0:5443"`. It serves the files to
    /// anyone who has their URL (that is what XEP-0363 URLs are for); port 0 picks a free
    /// port (tests).
    pub listen: SocketAddr,
    /// The public base of the URLs handed out in slots, e.g.
    /// `"https://upload.example.test:5443"` (a path after the host is allowed, for a reverse
    /// proxy). Default: `https://` + `domain` + the port of `listen`. Its host needs a
    /// `[tls]` certificate; clients refuse a URL they cannot verify.
    pub url: String,
    /// The largest file, in bytes, announced in disco#info as `max-file-size`. Default
    /// `10485760` (10 MiB, Prosody's default). Each upload streams to disk, so this bounds
    /// disk use per file, not memory.
    pub max_file_size: u64,
    /// Bytes of stored files each account may have at once; a slot that would go over gets
    /// `<resource-constraint/>`. Default `104857600` (100 MiB). Multiplied by the number of
    /// accounts, this is the disk the service may fill.
    pub quota: u64,
    /// How long a file is kept after its upload; then it is deleted and its URL answers 404.
    /// Default `"7d"`. Longer keeps links working longer and fills more disk.
    #[serde(with = "crate::config::duration")]
    pub expire_after: Duration,
    /// How long a slot may be used for its PUT after it was given out. Default `"5m"`.
    #[serde(with = "crate::config::duration")]
    pub slot_lifetime: Duration,
    /// Where the files are kept, one folder per upload. Default `"fedgate-uploads"`, next to
    /// the configuration file like the core's database. Created if missing.
    pub directory: PathBuf,
    /// The domains whose users may ask for slots (a sender's bare domain must be one of
    /// them). Default `[]`: the gateway's own domains (its `[[component.backend]]` domains,
    /// the core's among them), so that users of other servers cannot store files here across
    /// s2s. Naming a remote domain lets its users fill this disk up to their quota.
    pub allow_domains: Vec<String>,
}

/// The default HTTPS port of the service (Prosody's `https_ports` uses 5281; 5443 is what
/// ejabberd's examples use for uploads).
const DEFAULT_PORT: u16 = 5443;

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            domain: String::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            url: String::new(),
            max_file_size: 10 * 1024 * 1024,
            quota: 100 * 1024 * 1024,
            expire_after: Duration::from_secs(7 * 86_400),
            slot_lifetime: Duration::from_secs(300),
            directory: PathBuf::from("fedgate-uploads"),
            allow_domains: Vec::new(),
        }
    }
}

impl UploadConfig {
    /// The base of the slot URLs, without a trailing `/`.
    pub fn base_url(&self) -> String {
        if self.url.is_empty() {
            format!("https://{}:{}", self.domain, self.listen.port())
        } else {
            self.url.trim_end_matches('/').to_owned()
        }
    }

    /// The host of [`UploadConfig::base_url`]: the certificate the listener presents.
    pub fn url_host(&self) -> Option<String> {
        let base = self.base_url();
        let rest = base.strip_prefix("https://")?;
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if port.parse::<u16>().is_ok() => h,
            _ => authority,
        };
        (!host.is_empty()).then(|| host.to_ascii_lowercase())
    }

    /// The path of [`UploadConfig::base_url`] (`""` or `"/prefix"`): what the listener
    /// strips from request paths before the file's own path.
    pub fn url_path(&self) -> String {
        let base = self.base_url();
        let rest = base.strip_prefix("https://").unwrap_or(&base);
        match rest.find('/') {
            Some(i) => rest[i..].trim_end_matches('/').to_owned(),
            None => String::new(),
        }
    }

    /// The URLs' host needs a certificate in `tls`: clients refuse a URL they cannot verify.
    pub fn uncovered_url_host(&self, tls: &crate::config::TlsConfig) -> Option<ConfigError> {
        let host = self.url_host()?;
        let covered = tls.certificate.iter().any(|c| {
            c.domains
                .iter()
                .any(|p| crate::config::certificate_covers(p, &host))
        });
        (!covered).then(|| {
            invalid(
                "upload.url",
                format!("no [[tls.certificate]] covers `{host}`, the host of the upload URLs"),
                "add the host to a certificate's domains, or set url to a host that has one",
            )
        })
    }

    /// Every problem with the section, each naming its `upload.` key and the fix (the
    /// certificate for the URLs is checked by [`UploadConfig::uncovered_url_host`]).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = normalize_domain(&self.domain) {
            problems.push(invalid(
                "upload.domain",
                format!("`{}` is not a valid domain: {e}", self.domain),
                "set the service's domain, e.g. domain = \"upload.example.test\"",
            ));
        }
        if !self.url.is_empty() && self.url_host().is_none() {
            problems.push(invalid(
                "upload.url",
                format!("`{}` is not an https:// URL with a host", self.url),
                "write it as https://HOST[:PORT][/PATH], or remove the key for the default",
            ));
        }
        if self.url.contains(['?', '#']) {
            problems.push(invalid(
                "upload.url",
                format!("`{}` has a query or fragment", self.url),
                "give the base only, https://HOST[:PORT][/PATH]",
            ));
        }
        if self.max_file_size == 0 {
            problems.push(invalid(
                "upload.max_file_size",
                "zero lets no file in",
                "set a size in bytes such as 10485760, or remove the key for the default",
            ));
        }
        if self.quota < self.max_file_size {
            problems.push(invalid(
                "upload.quota",
                format!(
                    "{} bytes is less than upload.max_file_size ({})",
                    self.quota, self.max_file_size
                ),
                "raise quota or lower max_file_size",
            ));
        }
        for (key, d) in [
            ("upload.expire_after", self.expire_after),
            ("upload.slot_lifetime", self.slot_lifetime),
        ] {
            if d < Duration::from_secs(1) {
                problems.push(invalid(
                    key,
                    "shorter than a second",
                    "set a duration such as \"7d\" or \"5m\", or remove the key for the default",
                ));
            }
        }
        for d in &self.allow_domains {
            if normalize_domain(d).is_err() {
                problems.push(invalid(
                    "upload.allow_domains",
                    format!("`{d}` is not a domain"),
                    "list domains such as \"example.test\", or remove the key for the gateway's own",
                ));
            }
        }
        problems
    }

    /// Rewrites the domains to their canonical form (after validation).
    pub fn normalize(&mut self) {
        for d in std::iter::once(&mut self.domain).chain(self.allow_domains.iter_mut()) {
            if let Ok(n) = normalize_domain(d) {
                if n != d.as_str() {
                    *d = n.into_owned();
                }
            }
        }
    }

    /// Makes a relative `directory` relative to `base_dir` (the configuration file's).
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        if self.directory.is_relative() {
            self.directory = base_dir.join(&self.directory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> UploadConfig {
        UploadConfig {
            domain: "upload.a.test".into(),
            url: url.into(),
            ..UploadConfig::default()
        }
    }

    #[test]
    fn the_url_defaults_to_the_domain_and_the_listener_port() {
        let c = config("");
        assert_eq!(c.base_url(), "https://upload.a.test:5443");
        assert_eq!(c.url_host().as_deref(), Some("upload.a.test"));
        assert_eq!(c.url_path(), "");
        let c = config("https://Files.A.Test/up/");
        assert_eq!(c.base_url(), "https://Files.A.Test/up");
        assert_eq!(c.url_host().as_deref(), Some("files.a.test"));
        assert_eq!(c.url_path(), "/up");
    }

    #[test]
    fn each_bad_value_is_named_by_its_key() {
        let key = |c: UploadConfig| match c.problems().into_iter().next() {
            Some(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert!(config("").problems().is_empty());
        assert_eq!(key(config("http://upload.a.test")), "upload.url");
        assert_eq!(key(config("https://a.test/?x")), "upload.url");
        assert_eq!(
            key(UploadConfig {
                domain: "".into(),
                ..config("")
            }),
            "upload.domain"
        );
        assert_eq!(
            key(UploadConfig {
                quota: 1,
                ..config("")
            }),
            "upload.quota"
        );
        assert_eq!(
            key(UploadConfig {
                max_file_size: 0,
                quota: 0,
                ..config("")
            }),
            "upload.max_file_size"
        );
        assert_eq!(
            key(UploadConfig {
                expire_after: Duration::ZERO,
                ..config("")
            }),
            "upload.expire_after"
        );
        assert_eq!(
            key(UploadConfig {
                allow_domains: vec!["not a domain".into()],
                ..config("")
            }),
            "upload.allow_domains"
        );
    }
}
