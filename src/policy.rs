//! Whom fedgate federates with: the one place that decides (`[federation]`).
//!
//! `deny` always wins; in `allowlist` mode only `allow` is admitted. Patterns are exact domains
//! or `*.example.org`, which matches every subdomain of example.org but not example.org itself.
//! Refusals carry the reason, naming the config key, so an operator reading a bounce or a log
//! line knows which rule applied.

use crate::config::{FederationConfig, FederationMode};

/// Why a remote domain is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("federation with {domain} is refused by policy ({rule})")]
pub struct Refused {
    pub domain: String,
    /// The rule that refused it, e.g. `federation.deny "*.spam.example"`.
    pub rule: String,
}

/// The federation policy, built once from the config.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    mode: FederationMode,
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
    pub fn from_config(config: &FederationConfig) -> Policy {
        Policy {
            mode: config.mode,
            allow: config.allow.iter().map(|p| Pattern::parse(p)).collect(),
            deny: config.deny.iter().map(|p| Pattern::parse(p)).collect(),
        }
    }

    /// Whether we federate with `domain` (normalised), in either direction.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: FederationMode, allow: &[&str], deny: &[&str]) -> Policy {
        Policy::from_config(&FederationConfig {
            mode,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            peer: Vec::new(),
        })
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
