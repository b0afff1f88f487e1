//! `[component]` and `[[component.backend]]`: the XEP-0114 listener, the backends behind it
//! and their secrets.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{invalid, ConfigError};

/// `[component]`: the XEP-0114 listener for backends.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentConfig {
    /// Address backends connect to. Default `"127.0.0.1:5347"`. The component protocol has
    /// no TLS and a SHA-1 handshake: **keep it on loopback or a private network**.
    pub listen: SocketAddr,
    /// What happens when a backend connects for a domain that already has a connected backend.
    /// Default `false`: the new connection gets `<conflict/>` and the old one stays. `true`:
    /// the old one gets `<conflict/>` and the new one takes over (useful when a backend restarts
    /// before its old TCP connection is noticed dead, but a leaked secret then lets anyone
    /// hijack the domain).
    pub replace_on_conflict: bool,
    /// Offer acknowledgements (XEP-0198 on the component stream) to backends that declare
    /// them: fedgate's component library (the core, `fedgate services`, your own components
    /// built on it). The gateway then acknowledges a backend's stanza only once it has left
    /// for good (delivered to a backend, acknowledged or ping-confirmed by the remote server,
    /// or bounced), and the backend resends what was not acknowledged through another
    /// gateway when this one dies, so a crash loses nothing. Plain XEP-0114 backends never
    /// see it. Default `true`; `false` makes every backend a plain one (a crash of this
    /// gateway then loses what it held; see docs/deployment.md).
    pub acknowledgements: bool,
    /// When a backend's link drops (the backend died, restarted, or its standby is taking
    /// over), how long what is queued for it, what it had not acknowledged, and what arrives
    /// for it meanwhile wait for a new link of the same domain before they are bounced to
    /// their senders (`service-unavailable`). Bounded by the backend's queue
    /// (`s2s.queue_max_stanzas`): past that, new stanzas bounce with `resource-constraint`.
    /// Default `"5s"` (a standby core takes over in about one); `"0s"` bounces at once. At
    /// most `"1m"`: senders wait that long for a bounce.
    #[serde(with = "super::duration")]
    pub reattach_grace: Duration,
    /// `[[component.backend]]`: one entry per backend domain. At least one is required; these
    /// domains are the gateway's local domains.
    pub backend: Vec<BackendConfig>,
}

impl Default for ComponentConfig {
    fn default() -> Self {
        ComponentConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5347)),
            replace_on_conflict: false,
            acknowledgements: true,
            reattach_grace: Duration::from_secs(5),
            backend: Vec::new(),
        }
    }
}

/// A shared secret from the configuration. Neither `Debug` nor `Serialize` shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for computing or checking a handshake.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Serialize for Secret {
    /// Never the secret itself: `"<redacted>"`, so that `fedgate check config` can print the
    /// effective configuration.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `[[component.backend]]`: one XEP-0114 backend domain and its handshake secret.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The domain the backend serves, and that remote servers address. Required; unique
    /// across backends. Canonical form after loading.
    pub domain: String,
    /// The handshake secret, inline. Exactly one of `secret` and `secret_file` is required.
    /// Anyone who knows it can attach as this domain; prefer `secret_file` outside examples.
    pub secret: Option<Secret>,
    /// A file holding the handshake secret (surrounding whitespace trimmed); relative to the
    /// configuration file's directory. Read at startup. Keep it mode 0600.
    pub secret_file: Option<PathBuf>,
}

impl BackendConfig {
    /// The handshake secret: `secret`, or the trimmed content of `secret_file`.
    pub fn secret(&self) -> Result<String, ConfigError> {
        self.secret_at(&format!("component.backend (domain \"{}\")", self.domain))
    }

    pub(super) fn secret_at(&self, key: &str) -> Result<String, ConfigError> {
        match (&self.secret, &self.secret_file) {
            (Some(s), None) => {
                if s.expose().is_empty() {
                    return Err(invalid(
                        format!("{key}.secret"),
                        "the secret is empty",
                        "set a long random secret, the same one the backend uses",
                    ));
                }
                Ok(s.expose().to_owned())
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        format!("{key}.secret_file"),
                        format!("cannot read {}: {e}", path.display()),
                        "check that the file exists and fedgate can read it, or use `secret`",
                    )
                })?;
                let secret = text.trim();
                if secret.is_empty() {
                    return Err(invalid(
                        format!("{key}.secret_file"),
                        format!("{} is empty", path.display()),
                        "write a long random secret into it, the same one the backend uses",
                    ));
                }
                Ok(secret.to_owned())
            }
            (Some(_), Some(_)) => Err(invalid(
                key,
                "both `secret` and `secret_file` are set",
                "keep one of them",
            )),
            (None, None) => Err(invalid(
                key,
                "neither `secret` nor `secret_file` is set",
                "add `secret = \"...\"` or `secret_file = \"path\"`",
            )),
        }
    }
}

/// The handshake secret of the in-process links of the services the gateway runs itself
/// (`[muc]`, `[upload]`): made once per process, never written anywhere, so that only this
/// process can attach as their domains (the gateway puts it in its backend secrets, and a
/// reload keeps it).
pub fn in_process_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| format!("{:032x}", rand::random::<u128>()))
}
