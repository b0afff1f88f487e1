//! Accounts from the command line: `fedgate core user add|remove|passwd|list|invite`.
//!
//! Each works on the database the configuration names, directly (no running core needed; the
//! database takes concurrent writers). Addresses are prepared like any JID, and an alias
//! domain is stored as its canonical domain. Passwords become salted SCRAM keys at once
//! ([`super::sasl::Credentials`]); they are never stored or logged.

use super::config::CoreConfig;
use super::sasl::Credentials;
use super::storage::{self, Storage, StorageError, StorageMetrics};
use super::Domains;
use crate::jid::Jid;

/// Why an account command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// An address (or an invitation's domain) as given, and why it is not usable: not a JID,
    /// no localpart, or a resource.
    #[error("`{0}` is not a valid address: {1}; write it as user@domain")]
    BadAddress(String, String),
    /// The address's domain is neither a configured domain nor an alias.
    #[error("{domain} is not served by this core; use one of: {served}")]
    UnknownDomain {
        /// The domain asked for, normalised.
        domain: String,
        /// The served domains and aliases, sorted and comma-separated, for the message.
        served: String,
    },
    /// `add` for an account that exists (its bare JID).
    #[error("{0} exists already; use `passwd` to change its password")]
    Exists(String),
    /// `passwd` or `remove` for an account that does not exist (its bare JID).
    #[error("{0} does not exist; `fedgate core user list` shows the accounts")]
    NoSuchAccount(String),
    /// `add` or `passwd` with an empty password, which is refused.
    #[error("the password is empty")]
    EmptyPassword,
    /// The database could not be opened, read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Account administration on one core's database.
pub struct Accounts {
    storage: Storage,
    domains: Domains,
    /// Where invitations without a domain are for: the first `[[core.domain]]`.
    first_domain: String,
    iterations: u32,
}

impl Accounts {
    /// Opens the core's database, as `[core]` configures it, without a running core.
    pub fn open(config: &CoreConfig) -> Result<Accounts, AccountError> {
        Ok(Accounts {
            storage: Storage::open(&config.database, StorageMetrics::unregistered())?,
            domains: Domains::from_config(config),
            first_domain: config
                .domain
                .first()
                .map(|d| d.name.clone())
                .unwrap_or_default(),
            iterations: config.scram_iterations,
        })
    }

    /// `user@domain` → (prepared localpart, canonical domain).
    pub fn parse_address(&self, address: &str) -> Result<(String, String), AccountError> {
        let jid = Jid::parse(address)
            .map_err(|e| AccountError::BadAddress(address.to_owned(), e.to_string()))?;
        let (Some(node), true) = (jid.node(), jid.is_bare()) else {
            return Err(AccountError::BadAddress(
                address.to_owned(),
                "an account is user@domain, without a resource".into(),
            ));
        };
        let Some(canonical) = self.domains.canonical(jid.domain()) else {
            let mut served: Vec<&str> = self.domains.all().collect();
            served.sort();
            return Err(AccountError::UnknownDomain {
                domain: jid.domain().to_owned(),
                served: served.join(", "),
            });
        };
        Ok((node.to_owned(), canonical.to_owned()))
    }

    /// Creates an account with SCRAM credentials derived from `password`; returns its bare
    /// JID (with the canonical domain).
    pub fn add(&self, address: &str, password: &str) -> Result<String, AccountError> {
        let (local, domain) = self.parse_address(address)?;
        if password.is_empty() {
            return Err(AccountError::EmptyPassword);
        }
        let creds = Credentials::derive(password, self.iterations);
        let (l, d) = (local.clone(), domain.clone());
        let created = self
            .storage
            .call_blocking(move |c| storage::create_account(c, &l, &d, &creds))?;
        let bare = format!("{local}@{domain}");
        if created {
            Ok(bare)
        } else {
            Err(AccountError::Exists(bare))
        }
    }

    /// Replaces an account's credentials with ones derived from `password`; returns its
    /// bare JID.
    pub fn passwd(&self, address: &str, password: &str) -> Result<String, AccountError> {
        let (local, domain) = self.parse_address(address)?;
        if password.is_empty() {
            return Err(AccountError::EmptyPassword);
        }
        let creds = Credentials::derive(password, self.iterations);
        let (l, d) = (local.clone(), domain.clone());
        let changed = self
            .storage
            .call_blocking(move |c| storage::set_credentials(c, &l, &d, &creds))?;
        let bare = format!("{local}@{domain}");
        if changed {
            Ok(bare)
        } else {
            Err(AccountError::NoSuchAccount(bare))
        }
    }

    /// Deletes an account and everything stored for it (roster, offline messages, archive,
    /// PEP, blocklist, vCard, push registrations); returns its bare JID.
    pub fn remove(&self, address: &str) -> Result<String, AccountError> {
        let (local, domain) = self.parse_address(address)?;
        let (l, d) = (local.clone(), domain.clone());
        let removed = self
            .storage
            .call_blocking(move |c| storage::remove_account(c, &l, &d))?;
        let bare = format!("{local}@{domain}");
        if removed {
            Ok(bare)
        } else {
            Err(AccountError::NoSuchAccount(bare))
        }
    }

    /// A single-use XEP-0077 registration invitation for `domain` (default: the first
    /// configured one), as the `xmpp:DOMAIN?register;preauth=TOKEN` URI to hand out. It is
    /// accepted when `registration = "invite"`.
    pub fn invite(&self, domain: Option<&str>) -> Result<String, AccountError> {
        let domain = match domain {
            Some(d) => {
                let n = crate::jid::normalize_domain(d)
                    .map_err(|e| AccountError::BadAddress(d.to_owned(), e.to_string()))?;
                match self.domains.canonical(&n) {
                    Some(c) => c.to_owned(),
                    None => {
                        let mut served: Vec<&str> = self.domains.all().collect();
                        served.sort();
                        return Err(AccountError::UnknownDomain {
                            domain: n.into_owned(),
                            served: served.join(", "),
                        });
                    }
                }
            }
            None => self.first_domain.clone(),
        };
        let token = hex::encode(rand::random::<[u8; 16]>());
        let (t, d) = (token.clone(), domain.clone());
        self.storage
            .call_blocking(move |c| super::register::create_invite(c, &t, &d))?;
        Ok(format!("xmpp:{domain}?register;preauth={token}"))
    }

    /// Every account as `localpart@domain`, sorted by domain, then localpart.
    pub fn list(&self) -> Result<Vec<String>, AccountError> {
        Ok(self
            .storage
            .call_blocking(|db| storage::list_accounts(db))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::DomainConfig;

    #[test]
    fn add_passwd_remove_list() {
        let dir = tempfile::tempdir().unwrap();
        let config = CoreConfig {
            database: crate::core::config::Database::Sqlite(dir.path().join("db.sqlite")),
            domain: vec![DomainConfig {
                name: "googlemail.com".into(),
                aliases: vec!["gmail.com".into()],
            }],
            ..CoreConfig::default()
        };
        let a = Accounts::open(&config).unwrap();
        // Prepared and stored under the canonical domain.
        assert_eq!(
            a.add("Alice@GMail.com", "pw").unwrap(),
            "alice@googlemail.com"
        );
        assert!(matches!(
            a.add("alice@googlemail.com", "pw"),
            Err(AccountError::Exists(_))
        ));
        assert!(matches!(
            a.add("bob@other.test", "pw"),
            Err(AccountError::UnknownDomain { .. })
        ));
        assert!(matches!(
            a.add("bob@gmail.com/r", "pw"),
            Err(AccountError::BadAddress(..))
        ));
        assert!(matches!(
            a.add("bob@gmail.com", ""),
            Err(AccountError::EmptyPassword)
        ));
        // Invitations are for a served domain, the first one by default.
        let uri = a.invite(None).unwrap();
        assert!(
            uri.starts_with("xmpp:googlemail.com?register;preauth="),
            "{uri}"
        );
        assert_ne!(
            uri,
            a.invite(Some("gmail.com")).unwrap(),
            "each token is new"
        );
        assert!(matches!(
            a.invite(Some("other.test")),
            Err(AccountError::UnknownDomain { .. })
        ));
        a.passwd("alice@gmail.com", "pw2").unwrap();
        assert_eq!(a.list().unwrap(), ["alice@googlemail.com"]);
        // No password is stored anywhere in the file.
        drop(a);
        let bytes = std::fs::read(dir.path().join("db.sqlite")).unwrap();
        let wal = std::fs::read(dir.path().join("db.sqlite-wal")).unwrap_or_default();
        for hay in [&bytes, &wal] {
            assert!(!hay.windows(3).any(|w| w == b"pw2"));
        }
        let a = Accounts::open(&config).unwrap();
        a.remove("alice@googlemail.com").unwrap();
        assert!(matches!(
            a.remove("alice@googlemail.com"),
            Err(AccountError::NoSuchAccount(_))
        ));
        assert!(a.list().unwrap().is_empty());
    }
}
