//! Whom fedgate federates with: the one place that decides (`[federation]`).
//!
//! `deny` always wins; in `allowlist` mode only `allow` is admitted. Patterns are exact domains
//! or `*.example.org`, which matches every subdomain of example.org but not example.org itself.
//! Refusals carry the reason, naming the config key, so an operator reading a bounce or a log
//! line knows which rule applied.
//!
//! [`SecurityPolicy`] decides how each peer must secure and authenticate its streams: TLS
//! required or optional, a valid certificate required (`secure_auth`), which authentication
//! methods count, certificate pins, and the peer's stanza size and inbound byte rate limits;
//! `[s2s]` gives the defaults and `[[federation.peer]]` overrides them per domain.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{
    AuthRequirement, Config, FederationConfig, FederationMode, TlsRequirement, Unconfirmed,
};

/// Why a remote domain is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("federation with {domain} is refused by policy ({rule})")]
pub struct Refused {
    /// The remote domain refused, normalised.
    pub domain: String,
    /// The rule that refused it, e.g. `federation.deny "*.spam.example"`.
    pub rule: String,
}

/// The federation policy, built once from the config.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    mode: FederationMode,
    /// `dry_run`: refusals are logged and counted by the callers, not enforced.
    dry_run: bool,
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    /// `*.suffix`: stored as `.suffix`.
    Subdomains(String),
}

impl Pattern {
    fn parse(p: &str) -> Pattern {
        match p.strip_prefix('*') {
            Some(suffix) => Pattern::Subdomains(suffix.to_string()),
            None => Pattern::Exact(p.to_string()),
        }
    }

    fn matches(&self, domain: &str) -> bool {
        match self {
            Pattern::Exact(d) => d == domain,
            Pattern::Subdomains(suffix) => {
                domain.len() > suffix.len() && domain.ends_with(suffix.as_str())
            }
        }
    }

    fn as_config(&self) -> String {
        match self {
            Pattern::Exact(d) => d.clone(),
            Pattern::Subdomains(s) => format!("*{s}"),
        }
    }
}

impl Policy {
    /// The `[federation]` mode, `dry_run`, and its `allow` and `deny` patterns.
    pub fn from_config(config: &FederationConfig) -> Policy {
        Policy {
            mode: config.mode,
            dry_run: config.dry_run,
            allow: config.allow.iter().map(|p| Pattern::parse(p)).collect(),
            deny: config.deny.iter().map(|p| Pattern::parse(p)).collect(),
        }
    }

    /// Whether refusals are only logged and counted (`[federation] dry_run`).
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether we federate with `domain` (normalised), in either direction, by the rules alone
    /// (`dry_run` is the caller's business: see [`Router::admit`](crate::router::Router::admit)).
    pub fn check(&self, domain: &str) -> Result<(), Refused> {
        if let Some(p) = self.deny.iter().find(|p| p.matches(domain)) {
            return Err(Refused {
                domain: domain.to_string(),
                rule: format!("federation.deny \"{}\"", p.as_config()),
            });
        }
        if self.mode == FederationMode::Allowlist && !self.allow.iter().any(|p| p.matches(domain)) {
            return Err(Refused {
                domain: domain.to_string(),
                rule: "not in federation.allow".into(),
            });
        }
        Ok(())
    }
}

/// What one peer must do to federate with us, in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSecurity {
    /// TLS is required; without it nothing but a stream header is exchanged.
    pub tls_required: bool,
    /// The peer's certificate must be valid for its domain (or match a pin).
    pub secure_auth: bool,
    /// Which authentication methods are accepted and used.
    pub auth: AuthRequirement,
    /// SHA-256 digests of accepted public keys (SPKI); empty = no pinning.
    pub pins: Vec<[u8; 32]>,
    /// `max_stanza_bytes` of `[[federation.peer]]`, both ways; `None`: `[s2s]`'s inbound, and
    /// only the peer's own XEP-0478 limit outbound.
    pub max_stanza_bytes: Option<usize>,
    /// `max_inbound_bytes_per_second` of `[[federation.peer]]`; `None`: `[s2s]`'s.
    pub max_inbound_bytes_per_second: Option<u64>,
    /// `unconfirmed` of `[[federation.peer]]`: resend or bounce what a link without XEP-0198
    /// wrote and the peer had not confirmed when it dropped.
    pub unconfirmed: Unconfirmed,
    /// XEP-0288 bidirectional streams: `s2s.bidi`, or the peer's own `bidi`.
    pub bidi: bool,
    /// Outbound piggybacking: `s2s.piggyback`, or the peer's own `piggyback`.
    pub piggyback: bool,
    /// Pairs one outbound link carries: `s2s.max_outbound_pairs_per_stream`, or the peer's own.
    pub max_outbound_pairs_per_stream: usize,
}

impl PeerSecurity {
    /// Whether a valid certificate is required: `secure_auth`, `auth = "external"` or a pin.
    pub fn needs_valid_certificate(&self) -> bool {
        self.secure_auth || self.auth == AuthRequirement::External || !self.pins.is_empty()
    }

    /// Whether Server Dialback may authenticate the peer on a stream with (`tls = true`) or
    /// without TLS.
    pub fn allows_dialback(&self, tls: bool) -> bool {
        self.auth != AuthRequirement::External && (tls || !self.tls_required)
    }

    /// Whether SASL EXTERNAL may authenticate the peer.
    pub fn allows_external(&self) -> bool {
        self.auth != AuthRequirement::Dialback
    }
}

/// The TLS and authentication policy for every peer, built once from the config.
#[derive(Debug, Clone)]
pub struct SecurityPolicy {
    default: Arc<PeerSecurity>,
    peers: HashMap<String, Arc<PeerSecurity>>,
}

impl SecurityPolicy {
    /// `[s2s]` as every peer's default, and each `[[federation.peer]]` as its domain's rules
    /// (what the peer leaves out keeps the default).
    pub fn from_config(config: &Config) -> SecurityPolicy {
        let default = PeerSecurity {
            tls_required: config.s2s.require_encryption,
            secure_auth: config.s2s.secure_auth,
            auth: AuthRequirement::Any,
            pins: Vec::new(),
            max_stanza_bytes: None,
            max_inbound_bytes_per_second: None,
            unconfirmed: Unconfirmed::default(),
            bidi: config.s2s.bidi,
            piggyback: config.s2s.piggyback,
            max_outbound_pairs_per_stream: config.s2s.max_outbound_pairs_per_stream,
        };
        let peers = config
            .federation
            .peer
            .iter()
            .map(|p| {
                let security = PeerSecurity {
                    tls_required: match p.tls {
                        Some(t) => t == TlsRequirement::Required,
                        None => default.tls_required,
                    },
                    secure_auth: p.secure_auth.unwrap_or(default.secure_auth),
                    auth: p.auth,
                    // Validated at load; an invalid pin cannot get here.
                    pins: p.pins().unwrap_or_default(),
                    max_stanza_bytes: p.max_stanza_bytes,
                    max_inbound_bytes_per_second: p.max_inbound_bytes_per_second,
                    unconfirmed: p.unconfirmed,
                    bidi: p.bidi.unwrap_or(default.bidi),
                    piggyback: p.piggyback.unwrap_or(default.piggyback),
                    max_outbound_pairs_per_stream: p
                        .max_outbound_pairs_per_stream
                        .unwrap_or(default.max_outbound_pairs_per_stream),
                };
                (p.domain.clone(), Arc::new(security))
            })
            .collect();
        SecurityPolicy {
            default: Arc::new(default),
            peers,
        }
    }

    /// The rules for `domain` (canonical).
    pub fn peer(&self, domain: &str) -> Arc<PeerSecurity> {
        self.peers.get(domain).unwrap_or(&self.default).clone()
    }

    /// The rules for a peer whose domain is not known yet (no `from` on its stream header).
    pub fn default_peer(&self) -> Arc<PeerSecurity> {
        self.default.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: FederationMode, allow: &[&str], deny: &[&str]) -> Policy {
        Policy::from_config(&FederationConfig {
            mode,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            dry_run: false,
            peer: Vec::new(),
        })
    }

    #[test]
    fn peer_overrides_take_precedence_over_s2s_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml(
            "[s2s]\nsecure_auth = true\n\
             [[federation.peer]]\ndomain = \"plain.test\"\ntls = \"optional\"\nsecure_auth = false\nauth = \"dialback\"\n\
             [[federation.peer]]\ndomain = \"ext.test\"\nauth = \"external\"\n\
             [[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n\
             [[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n",
            dir.path(),
        )
        .unwrap();
        let policy = SecurityPolicy::from_config(&config);
        let other = policy.peer("other.test");
        assert!(other.tls_required && other.secure_auth && other.needs_valid_certificate());
        assert!(other.allows_dialback(true) && !other.allows_dialback(false));
        let plain = policy.peer("plain.test");
        assert!(!plain.tls_required && !plain.secure_auth && !plain.needs_valid_certificate());
        assert!(plain.allows_dialback(false) && !plain.allows_external());
        let ext = policy.peer("ext.test");
        assert!(ext.needs_valid_certificate() && !ext.allows_dialback(true));
    }

    #[test]
    fn open_admits_all_but_denied() {
        let p = policy(
            FederationMode::Open,
            &[],
            &["spam.example", "*.bad.example"],
        );
        assert!(p.check("good.example").is_ok());
        assert!(p.check("spam.example").is_err());
        assert!(p.check("x.bad.example").is_err());
        // The suffix pattern covers subdomains only.
        assert!(p.check("bad.example").is_ok());
        assert!(p.check("notbad.example").is_ok());
    }

    #[test]
    fn allowlist_admits_only_allowed_and_deny_wins() {
        let p = policy(
            FederationMode::Allowlist,
            &["friend.example", "*.partner.example"],
            &["x.partner.example"],
        );
        assert!(p.check("friend.example").is_ok());
        assert!(p.check("chat.partner.example").is_ok());
        let refused = p.check("stranger.example").unwrap_err();
        assert_eq!(refused.rule, "not in federation.allow");
        let refused = p.check("x.partner.example").unwrap_err();
        assert!(refused
            .to_string()
            .contains("federation.deny \"x.partner.example\""));
    }
}
