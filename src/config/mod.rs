//! The TOML configuration file.
//!
//! 1. [`Config::load`] reads the file, or [`Config::from_toml`] takes its text.
//! 2. Serde parses it into [`Config`]. Unknown keys are refused (`deny_unknown_fields`) so a
//!    typo cannot silently leave a default in force. Missing keys take the documented defaults,
//!    so a file with one `[[component.backend]]` is a complete configuration.
//! 3. Relative paths (`s2s.dialback_secret_file`, `component.backend.secret_file`) are
//!    resolved against the configuration file's directory, so the gateway behaves the same
//!    whatever directory it is started from.
//! 4. [`Config::validate`] checks what serde cannot: cross-field rules, domain syntax, limits.
//! 5. Domains are rewritten to their canonical form ([`crate::jid::normalize_domain`]), so the
//!    router and policy compare them as plain strings.
//!
//! Every [`ConfigError`] displays as one line naming the file and key, and says how to fix it.
//!
//! # Layout
//! The sections import only [`error`]'s helpers and [`duration`]; this file, the root that
//! names every section (and the core's, the MUC's and the upload service's, which live with
//! their services), imports them. So a service's own section can use the shared pieces
//! without importing the root that imports it.
//! - `error`: [`ConfigError`], `invalid`, `parse_message`.
//! - `s2s`: `[s2s]`, `[[s2s.route]]`. `dns`: `[dns]`. `federation`: `[federation]`,
//!   `[[federation.peer]]`. `tls`: `[tls]`, `[[tls.certificate]]`. `component`: `[component]`,
//!   `[[component.backend]]`, [`Secret`]. `metrics`: `[metrics]`.
//! - `validate`: [`Config::validate`], the rules serde cannot express.
//! - `tests.rs`: the unit tests.

mod component;
mod dns;
pub mod duration;
mod error;
mod federation;
mod metrics;
mod s2s;
mod tls;
mod validate;

pub use component::*;
pub use dns::*;
pub use error::*;
pub use federation::*;
pub use metrics::*;
pub use s2s::*;
pub use tls::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::jid::normalize_domain;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[s2s]`: server-to-server listeners, timeouts and limits. Optional; all defaults.
    #[serde(default)]
    pub s2s: S2sConfig,
    /// `[dns]`: how remote domains are resolved. Optional; defaults to the system resolver.
    #[serde(default)]
    pub dns: DnsConfig,
    /// `[federation]`: which remote domains may federate with us. Optional; defaults to open.
    #[serde(default)]
    pub federation: FederationConfig,
    /// `[component]`: the XEP-0114 listener and the backends behind it. Must name at least one
    /// backend: its domains are the gateway's local domains.
    #[serde(default)]
    pub component: ComponentConfig,
    /// `[metrics]`: the Prometheus endpoint. Optional; defaults to enabled on loopback.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[tls]` and `[[tls.certificate]]`: our certificates and the trust anchors for peers'.
    /// Needed whenever `s2s.require_encryption` is on (the default).
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[core]`: runs fedgate's c2s core inside the gateway, attached over an in-process
    /// XEP-0114 link, so that one process is a whole federating XMPP server. Optional; without
    /// it the gateway waits for backends on `[component] listen`. Its domains and aliases must
    /// be `[[component.backend]]` domains; it presents the `[tls]` certificates to clients.
    #[serde(default)]
    pub core: Option<crate::core::config::CoreConfig>,
    /// `[muc]`: an XEP-0045 multi-user chat service on its own domain, run inside the gateway
    /// over an in-process XEP-0114 link. Optional; without it there are no group chats. Its
    /// domain is served like a backend's without a `[[component.backend]]` for it.
    #[serde(default)]
    pub muc: Option<crate::muc::MucConfig>,
    /// `[upload]`: an XEP-0363 HTTP file upload service on its own domain, run inside the
    /// gateway over an in-process XEP-0114 link, with its own HTTPS listener. Optional;
    /// without it clients cannot share files. Its domain is served like `[muc]`'s.
    #[serde(default)]
    pub upload: Option<crate::upload::UploadConfig>,
    /// `[log]`: log format and level. Optional; text at `info`.
    #[serde(default)]
    pub log: crate::logging::LogConfig,
    /// The file this was loaded from ([`Config::load`]), which a reload reads again.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Config {
    /// Reads, parses, resolves relative paths against the file's directory, validates and
    /// normalises the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_all_problems(path).map_err(first)
    }

    /// Like [`Config::load`], but a file that parses and breaks several rules gives every
    /// problem ([`Config::problems`]), each naming the file, for `fedgate check config`.
    /// A file that cannot be read or parsed (TOML syntax, a value of the wrong type, an
    /// unknown key) gives one error: serde stops at the first.
    pub fn load_all_problems(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![ConfigError::Io {
                path: path.to_owned(),
                source,
            }]
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut config = Self::parse(&text, base_dir, path).map_err(|problems| {
            problems
                .into_iter()
                .map(|e| e.in_file(path))
                .collect::<Vec<_>>()
        })?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Like [`Config::load`] for text already in memory; relative paths resolve against
    /// `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Self::parse(text, base_dir, Path::new("<inline>")).map_err(first)
    }

    fn parse(text: &str, base_dir: &Path, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            vec![ConfigError::Parse {
                path: path.to_owned(),
                message: parse_message(text, &e),
            }]
        })?;
        config.resolve_paths(base_dir);
        // The text parsed once already; this second look only asks which keys were given.
        if let Ok(table) = text.parse::<toml::Table>() {
            config.follow_listen_hosts(&table);
        }
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        config.normalize();
        Ok(config)
    }

    /// A direct TLS listener that the file does not name listens on the hosts of the
    /// STARTTLS one, on the standard port (5270 for s2s, 5223 for c2s): a gateway told to
    /// listen on 127.0.0.1 does not also take 0.0.0.0:5270, so two instances on one host do
    /// not collide. `direct_tls_listen = []` still turns it off.
    fn follow_listen_hosts(&mut self, table: &toml::Table) {
        let given = |section: &str| {
            table
                .get(section)
                .and_then(|s| s.as_table())
                .is_some_and(|s| s.contains_key("direct_tls_listen"))
        };
        if !given("s2s") {
            self.s2s.direct_tls_listen = on_port(&self.s2s.listen, 5270);
        }
        if let Some(core) = &mut self.core {
            if !given("core") {
                core.direct_tls_listen = on_port(&core.listen, 5223);
            }
        }
    }

    fn resolve_paths(&mut self, base_dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        };
        resolve(&mut self.s2s.dialback_secret_file);
        self.tls.resolve_paths(base_dir);
        if let Some(core) = &mut self.core {
            core.resolve_paths(base_dir);
        }
        if let Some(upload) = &mut self.upload {
            upload.resolve_paths(base_dir);
        }
        for backend in &mut self.component.backend {
            if let Some(p) = &mut backend.secret_file {
                resolve(p);
            }
        }
    }

    /// Rewrites domains to canonical form. Only called after `validate` succeeded, so the
    /// fallbacks never trigger.
    fn normalize(&mut self) {
        fn canon(d: &mut String) {
            if let Ok(n) = normalize_domain(d) {
                if n != d.as_str() {
                    *d = n.into_owned();
                }
            }
        }
        for b in &mut self.component.backend {
            canon(&mut b.domain);
        }
        for r in &mut self.s2s.route {
            canon(&mut r.domain);
            if r.target.ip().is_none() {
                canon(&mut r.target.host);
            }
        }
        for p in &mut self.federation.peer {
            canon(&mut p.domain);
            if let Some(target) = p.route.as_mut().filter(|t| t.ip().is_none()) {
                canon(&mut target.host);
            }
        }
        if let Some(core) = &mut self.core {
            core.normalize();
        }
        if let Some(muc) = &mut self.muc {
            muc.normalize();
        }
        if let Some(upload) = &mut self.upload {
            upload.normalize();
        }
        for c in &mut self.tls.certificate {
            for d in &mut c.domains {
                if let Ok(n) = normalize_pattern(d) {
                    *d = n;
                }
            }
        }
        for p in self
            .federation
            .allow
            .iter_mut()
            .chain(self.federation.deny.iter_mut())
        {
            if let Ok(n) = normalize_pattern(p) {
                *p = n;
            }
        }
    }

    /// The gateway's local domains: the backends' domains, canonical after loading.
    pub fn local_domains(&self) -> impl Iterator<Item = &str> {
        self.component
            .backend
            .iter()
            .map(|b| b.domain.as_str())
            .chain(self.muc.iter().map(|m| m.domain.as_str()))
            .chain(self.upload.iter().map(|u| u.domain.as_str()))
    }

    /// Each backend domain's XEP-0114 secret, read from the config or its `secret_file`.
    /// With `[muc]` or `[upload]`, its domain has the in-process link's secret
    /// ([`in_process_secret`]).
    pub fn backend_secrets(&self) -> Result<HashMap<String, String>, ConfigError> {
        let mut secrets: HashMap<String, String> = self
            .component
            .backend
            .iter()
            .map(|b| Ok((b.domain.clone(), b.secret()?)))
            .collect::<Result<_, ConfigError>>()?;
        for domain in self
            .muc
            .iter()
            .map(|m| &m.domain)
            .chain(self.upload.iter().map(|u| &u.domain))
        {
            secrets.insert(domain.clone(), in_process_secret().to_owned());
        }
        Ok(secrets)
    }
}

#[cfg(test)]
mod tests;
