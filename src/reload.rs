//! Live reload (SIGHUP, `fedgate reload`): the configuration file is read again and, if it is
//! valid, its policy, certificates and backend secrets replace the running ones at once.
//!
//! All or nothing: everything that can fail (parsing, validation, loading certificates and
//! secrets) happens before anything changes, so a bad file leaves the running configuration
//! untouched and the error names the key or file to fix.
//!
//! The new policy applies to live sessions too. Every s2s session is judged again, pair by
//! pair, as if it were negotiating now: a domain the federation policy refuses, an
//! authentication method the peer may no longer use, a stream without the TLS its peer now
//! needs, a certificate no longer accepted (pins, `secure_auth`). Each session refused is closed
//! with `<policy-violation/>` and the reason; what it had queued goes back to its senders. The
//! other sessions continue untouched.
//!
//! What cannot change without a restart (listen addresses, local domains, `[dns]`, the `[s2s]`
//! timeouts, limits and routes, per-peer routes, `[metrics]`, `[core]`, `[upload]`) keeps its running
//! value; the reload names those sections so the operator knows a restart is due. The per-peer
//! limits of `[[federation.peer]]` (stanza size, byte rate) apply to streams authenticated
//! after the reload.

use std::sync::{Arc, Mutex};

use crate::component::ComponentContext;
use crate::config::{AuthRequirement, Config, ConfigError};
use crate::metrics::{Direction, PolicyMode};
use crate::policy::{Policy, SecurityPolicy};
use crate::s2s::registry::LiveSession;
use crate::s2s::S2sContext;
use crate::tls::{PeerRole, TlsError};

/// Why a reload was refused. The running configuration stays.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The file does not parse or validate, or a backend's `secret_file` cannot be read.
    #[error("the configuration was not reloaded, the running one stays: {0}")]
    Config(#[from] ConfigError),
    /// A certificate or key of the new `[tls]` does not load.
    #[error("the configuration was not reloaded, the running one stays: TLS: {0}")]
    Tls(#[from] TlsError),
    /// The running configuration came from no file (it was built in memory), so there is
    /// nothing to read again.
    #[error("the configuration was not reloaded: fedgate was started without a configuration file to read again")]
    NoFile,
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The live sessions closed, each with its reason.
    pub closed: Vec<String>,
    /// Sections that changed but only take effect at the next start.
    pub restart_needed: Vec<&'static str>,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "configuration reloaded: federation policy, certificates and backend secrets in force"
        )?;
        if self.closed.is_empty() {
            write!(f, "; no live session refused")?;
        } else {
            write!(
                f,
                "; {} live session(s) closed: {}",
                self.closed.len(),
                self.closed.join("; ")
            )?;
        }
        if !self.restart_needed.is_empty() {
            write!(
                f,
                "; changes to {} take effect at the next restart",
                self.restart_needed.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Holds what a reload replaces, and the configuration in force.
pub struct Reloader {
    s2s: Arc<S2sContext>,
    components: Arc<ComponentContext>,
    /// The configuration in force; also serialises reloads.
    running: Mutex<Config>,
}

impl Reloader {
    /// A reloader for the contexts whose policy, certificates and secrets it replaces, with
    /// `config`, the configuration they were started with.
    pub fn new(s2s: Arc<S2sContext>, components: Arc<ComponentContext>, config: Config) -> Self {
        Reloader {
            s2s,
            components,
            running: Mutex::new(config),
        }
    }

    /// Reads the running configuration's file again and applies it ([`Reloader::apply`]).
    pub fn reload_file(&self) -> Result<Reloaded, ReloadError> {
        let source = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .source
            .clone();
        let result = match source.as_deref().map(Config::load) {
            Some(Ok(config)) => self.apply(config),
            None => {
                // Refused like a file that does not load, and counted the same way.
                self.count(false);
                Err(ReloadError::NoFile)
            }
            Some(Err(e)) => {
                // `apply` counts its own refusals.
                self.count(false);
                Err(ReloadError::from(e))
            }
        };
        if let Err(e) = &result {
            tracing::error!("{e}");
        }
        result
    }

    /// Puts `config` in force: validates it, loads its certificates and secrets, then swaps
    /// them in and closes the live sessions the new policy refuses.
    pub fn apply(&self, config: Config) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let prepared = config.validate().map_err(ReloadError::from).and_then(|()| {
            let secrets = config.backend_secrets()?;
            // Loaded last: it is the only step with an effect (new handshakes use it).
            self.s2s.tls.reload_from(&config.tls)?;
            Ok(secrets)
        });
        let secrets = match prepared {
            Ok(secrets) => secrets,
            Err(e) => {
                drop(running);
                self.count(false);
                return Err(e);
            }
        };
        let restart_needed = restart_needed(&running, &config);
        self.components.secrets.store(Arc::new(secrets));
        self.s2s
            .router
            .set_policy(Policy::from_config(&config.federation));
        self.s2s
            .security
            .store(Arc::new(SecurityPolicy::from_config(&config)));
        let source = running.source.clone();
        *running = config;
        if running.source.is_none() {
            running.source = source;
        }
        drop(running);
        let closed = self.apply_to_live_sessions();
        self.count(true);
        let reloaded = Reloaded {
            closed,
            restart_needed,
        };
        tracing::info!("{reloaded}");
        Ok(reloaded)
    }

    fn count(&self, applied: bool) {
        let reloads = &self.s2s.router.metrics.config_reloads;
        if applied {
            reloads.applied.inc();
        } else {
            reloads.refused.inc();
        }
    }

    /// Judges every live session by the policy now in force; closes those it refuses.
    fn apply_to_live_sessions(&self) -> Vec<String> {
        let mut closed = Vec::new();
        for session in self.s2s.registry.sessions() {
            if let Some(reason) = self.refusal(&session) {
                tracing::info!(
                    direction = session.direction.as_str(),
                    "reload: closing a live session: {reason}"
                );
                self.s2s
                    .router
                    .metrics
                    .policy_refusals
                    .count(session.direction, PolicyMode::Enforced);
                for remote in session.remotes() {
                    self.s2s
                        .registry
                        .failed(&remote, session.direction, reason.clone());
                }
                closed.push(format!("{} {reason}", session.direction.as_str()));
                session.kick(reason);
            }
        }
        closed
    }

    /// Why the policy now in force refuses `session`, if it does.
    fn refusal(&self, session: &LiveSession) -> Option<String> {
        let negotiated = session.negotiated();
        let policy = self.s2s.router.policy();
        let security = self.s2s.security.load();
        for pair in &negotiated.pairs {
            if let Err(refused) = policy.check(&pair.remote) {
                if !policy.dry_run() {
                    return Some(refused.to_string());
                }
            }
            let peer = security.peer(&pair.remote);
            let tls = negotiated.tls.is_some();
            let remote = &pair.remote;
            if peer.tls_required && !tls {
                return Some(format!("TLS is now required for {remote}"));
            }
            match (pair.auth, peer.auth) {
                ("dialback", AuthRequirement::External) => {
                    return Some(format!("{remote} must now authenticate by SASL EXTERNAL"))
                }
                ("external", AuthRequirement::Dialback) => {
                    return Some(format!("{remote} must now authenticate by dialback"))
                }
                _ => {}
            }
            if peer.needs_valid_certificate() {
                let role = match session.direction {
                    Direction::Inbound => PeerRole::Client,
                    Direction::Outbound => PeerRole::Server,
                };
                let verdict = match &negotiated.tls {
                    Some(info) => self.s2s.tls.verify_peer(info, remote, role, &peer.pins),
                    None => {
                        return Some(format!("a valid certificate is now required for {remote}"))
                    }
                };
                if !verdict.is_valid() {
                    return Some(format!(
                        "the certificate of {remote} is no longer accepted: {verdict}"
                    ));
                }
            }
        }
        None
    }
}

/// The sections that differ between `old` and `new` but are not reloaded.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut sections = Vec::new();
    // Compared through their debug form: every field, without a hand-kept list that could
    // miss one. The two reloaded `[s2s]` keys (the TLS policy defaults) are left out.
    let s2s = |c: &Config| {
        let mut s = c.s2s.clone();
        s.require_encryption = true;
        s.secure_auth = false;
        format!("{s:?}")
    };
    if s2s(old) != s2s(new) {
        sections.push("[s2s] (except require_encryption and secure_auth)");
    }
    if format!("{:?}", old.dns) != format!("{:?}", new.dns) {
        sections.push("[dns]");
    }
    let backends = |c: &Config| {
        let domains: Vec<_> = c.component.backend.iter().map(|b| &b.domain).collect();
        (c.component.listen, format!("{domains:?}"))
    };
    if backends(old) != backends(new) {
        sections.push("[component] listen and backend domains");
    }
    if format!("{:?}", old.metrics) != format!("{:?}", new.metrics) {
        sections.push("[metrics]");
    }
    if format!("{:?}", old.core) != format!("{:?}", new.core) {
        sections.push("[core]");
    }
    if format!("{:?}", old.upload) != format!("{:?}", new.upload) {
        sections.push("[upload]");
    }
    let named = |c: &Config| {
        let domains: Vec<_> = c.federation.peer.iter().map(|p| &p.domain).collect();
        format!("{domains:?}")
    };
    if named(old) != named(new) {
        sections.push("the per-peer metric labels of [[federation.peer]]");
    }
    let routes = |c: &Config| {
        let routes: Vec<_> = c
            .federation
            .peer
            .iter()
            .filter(|p| p.route.is_some())
            .map(|p| (&p.domain, format!("{:?}", p.route)))
            .collect();
        format!("{routes:?}")
    };
    if routes(old) != routes(new) {
        sections.push("[[federation.peer]] route");
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_upload_section_needs_a_restart() {
        let config = |upload: &str| {
            Config::from_toml(
                &format!(
                    "[s2s]\nrequire_encryption = false\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"s\"\n\
                     [[tls.certificate]]\ndomains = [\"upload.a.test\"]\ncert = \"u.crt\"\nkey = \"u.key\"\nself_signed = true\n{upload}"
                ),
                std::path::Path::new("/tmp"),
            )
            .unwrap()
        };
        let with = config("[upload]\ndomain = \"upload.a.test\"\n");
        let bigger = config("[upload]\ndomain = \"upload.a.test\"\nmax_file_size = 1\nquota = 1\n");
        assert!(restart_needed(&with, &with).is_empty());
        assert!(restart_needed(&with, &bigger).contains(&"[upload]"));
        assert!(restart_needed(&config(""), &with).contains(&"[upload]"));
    }
}
