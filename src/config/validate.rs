//! [`Config::validate`]: the rules serde cannot express, section by section: cross-field rules,
//! domain syntax, limits, files that must be readable.

use std::net::SocketAddr;
use std::time::Duration;

use crate::jid::normalize_domain;

use super::*;

/// The longest `s2s.drain_timeout`: a stop that takes longer is a hang to whoever waits for it.
const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest `component.reattach_grace`: senders wait that long for a bounce.
const MAX_REATTACH_GRACE: Duration = Duration::from_secs(60);

impl Config {
    /// Checks the rules serde cannot express. Reads backend `secret_file`s to make sure they
    /// are usable. Returns the first problem found; [`Config::problems`] has them all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// Every problem [`Config::validate`] checks for, in the order of the file's sections,
    /// each with its key and its fix. A value that cannot be checked further (a domain that
    /// is not one, say) is one problem, not a cascade of them.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        self.validate_s2s(&mut problems);
        self.validate_component(&mut problems);
        self.validate_routes(&mut problems);
        self.validate_federation(&mut problems);
        self.validate_tls(&mut problems);
        self.validate_listeners(&mut problems);
        self.validate_dns(&mut problems);
        self.validate_core(&mut problems);
        self.validate_muc(&mut problems);
        self.validate_upload(&mut problems);
        if let Err(e) = self.log.check_level() {
            problems.push(invalid(
                "log.level",
                format!("`{}` is not a log filter: {e}", self.log.level),
                "use error, warn, info, debug or trace",
            ));
        }
        self.validate_limits(&mut problems);
        problems
    }

    /// The `[s2s]` abuse limits, and the limits and routes of `[[federation.peer]]`.
    fn validate_limits(&self, problems: &mut Vec<ConfigError>) {
        let s = &self.s2s;
        let defaults = S2sConfig::default();
        for (name, value, default) in [
            (
                "max_connections_per_ip",
                s.max_connections_per_ip as u64,
                defaults.max_connections_per_ip as u64,
            ),
            (
                "max_streams_per_domain",
                s.max_streams_per_domain as u64,
                defaults.max_streams_per_domain as u64,
            ),
            (
                "max_domain_pairs_per_stream",
                s.max_domain_pairs_per_stream as u64,
                defaults.max_domain_pairs_per_stream as u64,
            ),
            (
                "max_outbound_pairs_per_stream",
                s.max_outbound_pairs_per_stream as u64,
                defaults.max_outbound_pairs_per_stream as u64,
            ),
            (
                "max_pending_verifications",
                s.max_pending_verifications as u64,
                defaults.max_pending_verifications as u64,
            ),
            (
                "max_pending_verifications_total",
                s.max_pending_verifications_total as u64,
                defaults.max_pending_verifications_total as u64,
            ),
            (
                "max_inbound_bytes_per_second",
                s.max_inbound_bytes_per_second,
                defaults.max_inbound_bytes_per_second,
            ),
        ] {
            if value == 0 {
                problems.push(invalid(
                    format!("s2s.{name}"),
                    "the limit is zero, which would refuse everything",
                    format!("set a positive number (the default is {default}), or remove the key"),
                ));
            }
        }
        if s.max_pending_verifications > s.max_pending_verifications_total {
            problems.push(invalid(
                "s2s.max_pending_verifications",
                format!(
                    "{} per stream is more than s2s.max_pending_verifications_total ({})",
                    s.max_pending_verifications, s.max_pending_verifications_total
                ),
                "lower it or raise max_pending_verifications_total",
            ));
        }
        let locals: Vec<String> = self
            .local_domains()
            .filter_map(|d| normalize_domain(d).ok().map(|d| d.into_owned()))
            .collect();
        let mut routed: Vec<(String, String)> = self
            .s2s
            .route
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let d = normalize_domain(&r.domain).ok()?.into_owned();
                Some((d, format!("s2s.route[{i}]")))
            })
            .collect();
        for (i, p) in self.federation.peer.iter().enumerate() {
            let key = format!("federation.peer[{i}]");
            if p.max_stanza_bytes == Some(0)
                || p.max_inbound_bytes_per_second == Some(0)
                || p.max_outbound_pairs_per_stream == Some(0)
            {
                let name = if p.max_stanza_bytes == Some(0) {
                    "max_stanza_bytes"
                } else if p.max_inbound_bytes_per_second == Some(0) {
                    "max_inbound_bytes_per_second"
                } else {
                    "max_outbound_pairs_per_stream"
                };
                problems.push(invalid(
                    format!("{key}.{name}"),
                    "the limit is zero, which would refuse everything",
                    format!("set a positive number, or remove the key to use s2s.{name}"),
                ));
                continue;
            }
            if let Some(max) = p.max_stanza_bytes.filter(|m| *m > s.queue_max_bytes) {
                problems.push(invalid(
                    format!("{key}.max_stanza_bytes"),
                    format!(
                        "{max} is larger than s2s.queue_max_bytes ({}), so such a stanza could never be queued",
                        s.queue_max_bytes
                    ),
                    "lower it or raise s2s.queue_max_bytes",
                ));
                continue;
            }
            let Some(target) = &p.route else {
                continue;
            };
            // The domain itself is checked with the peer's other rules.
            let Ok(domain) = normalize_domain(&p.domain) else {
                continue;
            };
            if locals.iter().any(|l| *l == domain) {
                problems.push(invalid(
                    format!("{key}.route"),
                    format!(
                        "`{domain}` is a local (backend) domain; its stanzas go to its backend"
                    ),
                    "remove this route",
                ));
                continue;
            }
            if let Some((_, other)) = routed.iter().find(|(d, _)| *d == domain) {
                problems.push(invalid(
                    format!("{key}.route"),
                    format!("`{domain}` already has a route, {other}"),
                    "keep one route per domain",
                ));
                continue;
            }
            if target.ip().is_none() {
                if let Err(e) = normalize_domain(&target.host) {
                    problems.push(invalid(
                        format!("{key}.route"),
                        format!(
                            "host `{}` is not a valid domain or IP address: {e}",
                            target.host
                        ),
                        "write host:port, e.g. \"xmpp.example.org:5269\" or \"127.0.0.1:5269\"",
                    ));
                    continue;
                }
            }
            routed.push((domain.into_owned(), format!("{key}.route")));
        }
    }

    /// `[core]`: its own rules, and every domain and alias a configured backend.
    fn validate_core(&self, problems: &mut Vec<ConfigError>) {
        let Some(core) = &self.core else {
            return;
        };
        let own = core.problems();
        let valid_domains = !own.iter().any(
            |e| matches!(e, ConfigError::Invalid { key, .. } if key.starts_with("core.domain")),
        );
        problems.extend(own);
        if !valid_domains {
            return;
        }
        let backends: Vec<String> = self
            .component
            .backend
            .iter()
            .filter_map(|b| normalize_domain(&b.domain).ok().map(|d| d.into_owned()))
            .collect();
        for (i, d) in core.domain.iter().enumerate() {
            for name in std::iter::once(&d.name).chain(&d.aliases) {
                let n = normalize_domain(name)
                    .map(|n| n.into_owned())
                    .unwrap_or_default();
                if !backends.contains(&n) {
                    problems.push(invalid(
                        format!("core.domain[{i}]"),
                        format!("`{n}` is not a [[component.backend]] domain"),
                        format!("add a [[component.backend]] with domain = \"{n}\" and a secret"),
                    ));
                }
            }
        }
    }

    /// Whether a `[[component.backend]]` serves `domain` (canonical).
    fn is_backend_domain(&self, domain: &str) -> bool {
        self.component
            .backend
            .iter()
            .any(|b| normalize_domain(&b.domain).is_ok_and(|d| d == domain))
    }

    /// `[muc]`: its own rules, and a domain nobody else serves.
    fn validate_muc(&self, problems: &mut Vec<ConfigError>) {
        let Some(muc) = &self.muc else {
            return;
        };
        let own = muc.problems();
        let valid_domain = !own
            .iter()
            .any(|e| matches!(e, ConfigError::Invalid { key, .. } if key == "muc.domain"));
        problems.extend(own);
        if !valid_domain {
            return;
        }
        let domain = normalize_domain(&muc.domain)
            .map(|d| d.into_owned())
            .unwrap_or_default();
        if self.is_backend_domain(&domain) {
            problems.push(invalid(
                "muc.domain",
                format!("`{domain}` is also a [[component.backend]] domain"),
                "give the chat service a domain of its own, e.g. \"conference.example.test\"",
            ));
        }
    }

    /// `[upload]`: its own rules, a domain nobody else serves, and a certificate for the
    /// host of its URLs.
    fn validate_upload(&self, problems: &mut Vec<ConfigError>) {
        let Some(upload) = &self.upload else {
            return;
        };
        let own = upload.problems();
        let valid_domain = !own
            .iter()
            .any(|e| matches!(e, ConfigError::Invalid { key, .. } if key == "upload.domain"));
        problems.extend(own);
        if !valid_domain {
            return;
        }
        let domain = normalize_domain(&upload.domain)
            .map(|d| d.into_owned())
            .unwrap_or_default();
        let taken = self.is_backend_domain(&domain)
            || self.muc.as_ref().is_some_and(|m| m.domain == domain);
        if taken {
            problems.push(invalid(
                "upload.domain",
                format!("`{domain}` is also a [[component.backend]] or [muc] domain"),
                "give the upload service a domain of its own, e.g. \"upload.example.test\"",
            ));
        }
        problems.extend(upload.uncovered_url_host(&self.tls));
    }

    fn validate_dns(&self, problems: &mut Vec<ConfigError>) {
        let d = &self.dns;
        if d.nameservers.as_ref().is_some_and(|ns| ns.is_empty()) {
            problems.push(invalid(
                "dns.nameservers",
                "the list is empty",
                "list at least one \"ip:port\", or remove the key to use the system resolver",
            ));
        }
        if d.negative_ttl > Duration::from_secs(3 * 3600) {
            problems.push(invalid(
                "dns.negative_ttl",
                "longer than 3 hours (RFC 2308's upper end)",
                "set a few seconds or minutes such as \"30s\", or remove the key for the default",
            ));
        }
        if d.timeout.is_zero() {
            problems.push(invalid(
                "dns.timeout",
                "the timeout is zero",
                "set a positive duration such as \"5s\", or remove the key for the default",
            ));
        }
    }

    fn validate_s2s(&self, problems: &mut Vec<ConfigError>) {
        let s = &self.s2s;
        if s.listen.is_empty() {
            problems.push(invalid(
                "s2s.listen",
                "no listen address",
                "add one such as \"0.0.0.0:5269\"; remote servers connect here, also for dialback",
            ));
        }
        for (name, d) in [
            ("connect_timeout", s.connect_timeout),
            ("negotiation_timeout", s.negotiation_timeout),
            ("dialback_timeout", s.dialback_timeout),
            ("idle_timeout", s.idle_timeout),
            ("retry_initial_delay", s.retry_initial_delay),
            ("retry_max_delay", s.retry_max_delay),
            ("ping_interval", s.ping_interval),
            ("ping_timeout", s.ping_timeout),
            ("keepalive_interval", s.keepalive_interval),
            ("resume_timeout", s.resume_timeout),
            ("stall_timeout", s.stall_timeout),
        ] {
            if d.is_zero() {
                problems.push(invalid(
                    format!("s2s.{name}"),
                    "the timeout is zero",
                    "set a positive duration such as \"30s\", or remove the key for the default",
                ));
            }
        }
        if s.drain_timeout > MAX_DRAIN_TIMEOUT {
            problems.push(invalid(
                "s2s.drain_timeout",
                format!(
                    "{:?} is longer than the longest drain, {MAX_DRAIN_TIMEOUT:?}",
                    s.drain_timeout
                ),
                "set at most \"5m\", and below the service manager's stop timeout (TimeoutStopSec)",
            ));
        }
        for (name, v) in [
            ("max_stanza_bytes", s.max_stanza_bytes),
            (
                "max_negotiation_stanza_bytes",
                s.max_negotiation_stanza_bytes,
            ),
            ("max_depth", s.max_depth),
            ("max_attributes", s.max_attributes),
            ("max_connections", s.max_connections),
            ("queue_max_stanzas", s.queue_max_stanzas),
            ("queue_max_bytes", s.queue_max_bytes),
        ] {
            if v == 0 {
                problems.push(invalid(
                    format!("s2s.{name}"),
                    "the limit is zero",
                    "set a positive number, or remove the key for the default",
                ));
            }
        }
        if s.max_negotiation_stanza_bytes > s.max_stanza_bytes {
            problems.push(invalid(
                "s2s.max_negotiation_stanza_bytes",
                format!(
                    "{} is larger than s2s.max_stanza_bytes ({})",
                    s.max_negotiation_stanza_bytes, s.max_stanza_bytes
                ),
                "lower it or raise max_stanza_bytes",
            ));
        }
        if s.queue_max_bytes < s.max_stanza_bytes {
            problems.push(invalid(
                "s2s.queue_max_bytes",
                format!(
                    "{} is smaller than s2s.max_stanza_bytes ({}), so a large stanza could never be queued",
                    s.queue_max_bytes, s.max_stanza_bytes
                ),
                "raise it to at least max_stanza_bytes",
            ));
        }
        if let Some(dir) = s.dialback_secret_file.parent() {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                problems.push(invalid(
                    "s2s.dialback_secret_file",
                    format!("the directory {} does not exist", dir.display()),
                    "create it, or point dialback_secret_file at an existing directory",
                ));
            }
        }
    }

    fn validate_component(&self, problems: &mut Vec<ConfigError>) {
        let backends = &self.component.backend;
        if backends.is_empty() {
            problems.push(invalid(
                "component.backend",
                "no backend is configured",
                "add a [[component.backend]] table with `domain` and `secret`",
            ));
        }
        if self.component.reattach_grace > MAX_REATTACH_GRACE {
            problems.push(invalid(
                "component.reattach_grace",
                format!(
                    "{:?} is longer than the longest grace, {MAX_REATTACH_GRACE:?}",
                    self.component.reattach_grace
                ),
                "set at most \"1m\" (senders of stanzas for a gone backend wait that long for their bounce)",
            ));
        }
        let mut seen: Vec<(String, usize)> = Vec::with_capacity(backends.len());
        for (i, b) in backends.iter().enumerate() {
            let key = format!("component.backend[{i}]");
            match normalize_domain(&b.domain) {
                Err(e) => problems.push(invalid(
                    format!("{key}.domain"),
                    format!("`{}` is not a valid domain: {e}", b.domain),
                    "use a domain name such as \"xmpp.example.org\"",
                )),
                Ok(domain) => {
                    if let Some((_, j)) = seen.iter().find(|(d, _)| *d == domain) {
                        problems.push(invalid(
                            format!("{key}.domain"),
                            format!("`{domain}` is also component.backend[{j}].domain"),
                            "give each backend its own domain",
                        ));
                    }
                    seen.push((domain.into_owned(), i));
                }
            }
            if let Err(e) = b.secret_at(&key) {
                problems.push(e);
            }
        }
    }

    fn validate_routes(&self, problems: &mut Vec<ConfigError>) {
        let locals: Vec<String> = self
            .component
            .backend
            .iter()
            .filter_map(|b| normalize_domain(&b.domain).ok().map(|d| d.into_owned()))
            .collect();
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (i, r) in self.s2s.route.iter().enumerate() {
            let key = format!("s2s.route[{i}]");
            match normalize_domain(&r.domain) {
                Err(e) => problems.push(invalid(
                    format!("{key}.domain"),
                    format!("`{}` is not a valid domain: {e}", r.domain),
                    "use the remote domain name, such as \"b.example.org\"",
                )),
                Ok(domain) => {
                    if locals.iter().any(|l| *l == domain) {
                        problems.push(invalid(
                            format!("{key}.domain"),
                            format!(
                                "`{domain}` is a local (backend) domain; its stanzas go to its backend"
                            ),
                            "remove this route",
                        ));
                    } else if let Some((_, j)) = seen.iter().find(|(d, _)| *d == domain) {
                        problems.push(invalid(
                            format!("{key}.domain"),
                            format!("`{domain}` already has a route, s2s.route[{j}]"),
                            "keep one route per domain",
                        ));
                    }
                    seen.push((domain.into_owned(), i));
                }
            }
            if r.target.ip().is_none() {
                if let Err(e) = normalize_domain(&r.target.host) {
                    problems.push(invalid(
                        format!("{key}.target"),
                        format!(
                            "host `{}` is not a valid domain or IP address: {e}",
                            r.target.host
                        ),
                        "write host:port, e.g. \"xmpp.example.org:5269\" or \"127.0.0.1:5270\"",
                    ));
                }
            }
            if r.target.port == 0 {
                problems.push(invalid(
                    format!("{key}.target"),
                    "port 0",
                    "use the port the remote server listens on, usually 5269",
                ));
            }
        }
    }

    fn validate_federation(&self, problems: &mut Vec<ConfigError>) {
        for (list, entries) in [
            ("allow", &self.federation.allow),
            ("deny", &self.federation.deny),
        ] {
            for (i, p) in entries.iter().enumerate() {
                if let Err(problem) = normalize_pattern(p) {
                    problems.push(invalid(
                        format!("federation.{list}[{i}]"),
                        problem,
                        "write a domain (\"example.org\") or a subdomain pattern (\"*.example.org\")",
                    ));
                }
            }
        }
    }

    fn validate_tls(&self, problems: &mut Vec<ConfigError>) {
        let tls = &self.tls;
        for (i, path) in tls.ca_files.iter().enumerate() {
            if !path.is_file() {
                problems.push(invalid(
                    format!("tls.ca_files[{i}]"),
                    format!("{} does not exist", path.display()),
                    "point it at a PEM file of CA certificates, or remove it",
                ));
            }
        }
        if !tls.webpki_roots && tls.ca_files.is_empty() && self.s2s.secure_auth {
            problems.push(invalid(
                "tls.webpki_roots",
                "no trust anchors at all, so under s2s.secure_auth no peer can be accepted",
                "set webpki_roots = true or list your CA in tls.ca_files",
            ));
        }
        let mut covered: Vec<String> = Vec::new();
        for (i, c) in tls.certificate.iter().enumerate() {
            let key = format!("tls.certificate[{i}]");
            if c.domains.is_empty() {
                problems.push(invalid(
                    format!("{key}.domains"),
                    "the list is empty",
                    "list the domains this certificate is for, e.g. [\"example.org\"]",
                ));
            }
            for (j, d) in c.domains.iter().enumerate() {
                match normalize_pattern(d) {
                    Ok(pattern) => covered.push(pattern),
                    Err(problem) => problems.push(invalid(
                        format!("{key}.domains[{j}]"),
                        problem,
                        "write a domain (\"example.org\") or a wildcard (\"*.example.org\")",
                    )),
                }
            }
            for (name, path) in [("cert", &c.cert), ("key", &c.key)] {
                if !c.self_signed && !path.is_file() {
                    problems.push(invalid(
                        format!("{key}.{name}"),
                        format!("{} does not exist", path.display()),
                        "point it at the PEM file, or set self_signed = true to create one",
                    ));
                }
                if c.self_signed && !path.is_file() {
                    if let Some(dir) = path.parent() {
                        if !dir.as_os_str().is_empty() && !dir.is_dir() {
                            problems.push(invalid(
                                format!("{key}.{name}"),
                                format!("the directory {} does not exist", dir.display()),
                                "create it, or point the path at an existing directory",
                            ));
                        }
                    }
                }
            }
        }
        if self.s2s.require_encryption {
            for (i, b) in self.component.backend.iter().enumerate() {
                let Ok(domain) = normalize_domain(&b.domain) else {
                    continue;
                };
                if !covered.iter().any(|p| certificate_covers(p, &domain)) {
                    problems.push(invalid(
                        "tls.certificate",
                        format!(
                            "no certificate for {domain} (component.backend[{i}]), and s2s.require_encryption is on"
                        ),
                        format!(
                            "add a [[tls.certificate]] with domains = [\"{domain}\"] (self_signed = true creates one), or set s2s.require_encryption = false on a closed network"
                        ),
                    ));
                }
            }
        }
        for (i, p) in self.federation.peer.iter().enumerate() {
            let key = format!("federation.peer[{i}]");
            if let Err(e) = normalize_domain(&p.domain) {
                problems.push(invalid(
                    format!("{key}.domain"),
                    format!("`{}` is not a valid domain: {e}", p.domain),
                    "use the remote domain name, such as \"b.example.org\"",
                ));
            }
            if let Err(problem) = p.pins() {
                problems.push(invalid(
                    format!("{key}.pin_sha256"),
                    problem,
                    "give the SHA-256 digest of the peer's public key in base64 or hex",
                ));
            }
            if p.auth == AuthRequirement::External && p.tls == Some(TlsRequirement::Optional) {
                problems.push(invalid(
                    format!("{key}.auth"),
                    "SASL EXTERNAL needs TLS, but tls = \"optional\"",
                    "set tls = \"required\" or auth = \"any\"",
                ));
            }
        }
    }

    fn validate_listeners(&self, problems: &mut Vec<ConfigError>) {
        let mut all: Vec<(String, SocketAddr)> = self
            .s2s
            .listen
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("s2s.listen[{i}]"), *a))
            .collect();
        all.extend(
            self.s2s
                .direct_tls_listen
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("s2s.direct_tls_listen[{i}]"), *a)),
        );
        all.push(("component.listen".into(), self.component.listen));
        if let Some(core) = &self.core {
            all.extend(core.listeners());
        }
        if self.metrics.enabled {
            all.push(("metrics.listen".into(), self.metrics.listen));
        }
        if let Some(upload) = &self.upload {
            all.push(("upload.listen".into(), upload.listen));
        }
        for (i, (key, addr)) in all.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = all[..i].iter().find(|(_, a)| a == addr) {
                problems.push(invalid(
                    key.clone(),
                    format!("{addr} is also used by {other}"),
                    "give each listener its own address or port",
                ));
            }
        }
    }
}
