//! The core's configuration: `[core]` (with `[[core.domain]]`), the same keys whether the core
//! runs inside the gateway (a `[core]` section in `fedgate.toml`) or alone
//! (`fedgate core --config config/core.toml`, which adds `[gateway]` and `[tls]`).
//!
//! Loading follows [`crate::config`]: unknown keys are refused, missing keys take the
//! documented defaults, relative paths are relative to the file, domains are canonical after
//! loading, and every problem is one [`ConfigError`] line naming the key and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{invalid, parse_message, ConfigError, Secret, TlsConfig};
use crate::jid::normalize_domain;

/// `core.database`: where the core's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file, the embedded default.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://…` or `postgresql://…`), as written.
    Postgres(String),
}

impl Database {
    /// `postgres://…` / `postgresql://…` is PostgreSQL; anything else a file, with an
    /// optional `sqlite:` in front.
    pub fn parse(s: &str) -> Database {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Database::Postgres(s.to_owned())
        } else {
            Database::Sqlite(PathBuf::from(s.strip_prefix("sqlite:").unwrap_or(s)))
        }
    }

    /// What is wrong with a PostgreSQL URL, as a [`ConfigError`] for `core.database`.
    pub fn problem(&self) -> Option<ConfigError> {
        let Database::Postgres(url) = self else {
            return None;
        };
        let fix = "write it as postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME (or \
                   postgres://USER@/DBNAME?host=/run/postgresql for a Unix socket)";
        match super::storage::PgTarget::parse(url) {
            Err(super::storage::SqlError::Tls(problem)) => Some(invalid(
                "core.database",
                format!("`{self}`: {problem}"),
                "name a readable PEM file of CA certificates in sslrootcert (an absolute path), with sslmode=verify-full",
            )),
            Err(e) => Some(invalid(
                "core.database",
                format!("`{self}` is not a PostgreSQL URL: {e}"),
                fix,
            )),
            Ok(t) if t.config().get_hosts().is_empty() => Some(invalid(
                "core.database",
                format!("`{self}` names no host"),
                fix,
            )),
            Ok(_) => None,
        }
    }
}

/// The file's path, or the URL with any password replaced by `***` (for logs and
/// `fedgate check config`).
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
                let (authority, tail) = rest.split_at(authority_end);
                let authority = match authority.rsplit_once('@') {
                    Some((userinfo, host)) if userinfo.contains(':') => {
                        let user = userinfo.split(':').next().unwrap_or_default();
                        format!("{user}:***@{host}")
                    }
                    _ => authority.to_owned(),
                };
                // A `password=` parameter is as secret.
                let tail = match tail.split_once('?') {
                    Some((path, query)) => {
                        let query: Vec<String> = query
                            .split('&')
                            .map(|kv| match kv.split_once('=') {
                                Some(("password", _)) => "password=***".to_owned(),
                                _ => kv.to_owned(),
                            })
                            .collect();
                        format!("{path}?{}", query.join("&"))
                    }
                    None => tail.to_owned(),
                };
                write!(f, "{scheme}://{authority}{tail}")
            }
        }
    }
}

impl<'de> Deserialize<'de> for Database {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Database, D::Error> {
        Ok(Database::parse(&String::deserialize(d)?))
    }
}

impl Serialize for Database {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

/// `[core]`: the c2s server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreConfig {
    /// Addresses for c2s with STARTTLS (RFC 6120 §5), which is required before anything else.
    /// Default `["0.0.0.0:5222"]`. Port 0 picks a free port (tests).
    pub listen: Vec<SocketAddr>,
    /// Addresses for c2s with TLS from the first byte (XEP-0368 `_xmpps-client`). Default: in
    /// a file, the hosts of `listen` on port 5223 (so `["0.0.0.0:5223"]` with the default
    /// `listen`); `[]` turns it off.
    pub direct_tls_listen: Vec<SocketAddr>,
    /// Offer SASL PLAIN (after TLS only, never before), after SCRAM-SHA-256 and SCRAM-SHA-1.
    /// Default `true`, so that every client can sign in: go-sendxmpp, bots and older libraries
    /// know only PLAIN. **PLAIN sends the password itself** (inside TLS) to the server; `false`
    /// leaves the SCRAM mechanisms only, which never show it.
    pub allow_plain: bool,
    /// PBKDF2 iterations for new or changed passwords. Default `4096`, the least RFC 7677
    /// allows; more makes each sign-in and each stolen-database guess slower alike.
    pub scram_iterations: u32,
    /// Where the core keeps accounts, rosters, offline messages and everything else: an
    /// SQLite file (created on first start; relative to the configuration file; `sqlite:` in
    /// front is allowed), or a PostgreSQL database as a URL, `postgres://USER[:PASSWORD]@HOST
    /// [:PORT]/DBNAME` (`postgresql://` too; `?host=/run/postgresql` for a Unix socket), whose
    /// schema is created on first start. Default `"fedgate-core.sqlite"`. Over a network,
    /// add `?sslmode=verify-full` (or `require`: the same here) for TLS with the server's
    /// certificate verified against the Mozilla roots, or against `sslrootcert=/path/ca.pem`;
    /// without it PostgreSQL is reached in plaintext (a Unix socket or a trusted network). A
    /// password in the URL is as secret as the file; prefer `~/.pgpass` or peer authentication.
    pub database: Database,
    /// From TCP accept until a resource is bound; then `<connection-timeout/>`. Default
    /// `"30s"`. Bounds how long unauthenticated clients hold a connection.
    #[serde(with = "crate::config::duration")]
    pub negotiation_timeout: Duration,
    /// Largest stanza from a signed-in client, in bytes. Default `262144` (256 KiB); larger
    /// ends the stream with `<policy-violation/>`.
    pub max_stanza_bytes: usize,
    /// Largest element before sign-in, in bytes. Default `16384`.
    pub max_negotiation_stanza_bytes: usize,
    /// Most c2s connections at once. Default `10000`.
    pub max_connections: usize,
    /// Stanzas that may wait for one client session; a client that lets more pile up is too
    /// slow and is disconnected with `<resource-constraint/>`. Default `1024`.
    pub session_queue: usize,
    /// How long a client session whose connection was lost stays signed in, waiting for the
    /// client to resume it (XEP-0198). Default `"5m"`. Meanwhile its contacts see it online
    /// and stanzas for it wait in its queue; after that it ends and what it had not
    /// acknowledged goes to another resource or to offline storage. `"0s"` turns resumption
    /// off (acknowledgements stay on).
    #[serde(with = "crate::config::duration")]
    pub resume_timeout: Duration,
    /// How long an acknowledgement request (XEP-0198 `<r/>`) may go unanswered before the
    /// connection is taken for dead and the session detached (or ended, without
    /// resumption). Default `"60s"`; at least 1s. Shorter finds dead mobile connections
    /// sooner but may drop clients on slow networks.
    #[serde(with = "crate::config::duration")]
    pub ack_timeout: Duration,
    /// Most offline messages kept per account; more are bounced with
    /// `<service-unavailable/>`. Default `1000`.
    pub offline_max: usize,
    /// Most PEP nodes (XEP-0163) per account; a publish that would create one more gets
    /// `<resource-constraint/>`. Default `64`. Also bounds the XEP-0049 private elements kept
    /// per account. Each node holds up to `pep_max_items` items of `pep_max_item_bytes`: the
    /// three together bound what one account can store.
    pub pep_max_nodes: usize,
    /// Most items one PEP node keeps (older ones are dropped); a node configured with
    /// `max_items = max` or more gets this. Default `256`.
    pub pep_max_items: u32,
    /// Largest PEP item payload (or private XML element), in bytes; larger is refused with
    /// `<not-acceptable/>`. Default `65536` (64 KiB), enough for an avatar of XEP-0084's
    /// recommended size.
    pub pep_max_item_bytes: usize,
    /// Most JIDs on one account's XEP-0191 blocklist; a block beyond it is refused with
    /// `<resource-constraint/>`. Default `1000`. Each list is held in memory while used and
    /// checked on every stanza to or from its account.
    pub max_blocklist: usize,
    /// Largest vCard (XEP-0054) an account may store, in bytes of XML. Default `65536`
    /// (64 KiB); larger sets get `<not-acceptable/>`. An avatar photo travels inside the vCard,
    /// base64-encoded, so this bounds avatars too; each vCard is read whole for every get.
    pub max_vcard_bytes: usize,
    /// Who may create an account over XEP-0077 in-band registration before signing in:
    /// `"closed"` (default: only `fedgate core user add`), `"open"` (anyone who reaches the
    /// c2s port: **spam accounts** unless the port is private), or `"invite"` (a single-use
    /// token from `fedgate core user invite`, XEP-0401 style). Password changes and account
    /// removal by signed-in users are always on.
    pub registration: Registration,
    /// Most registration attempts in one hour from one client IP address with `registration
    /// = "open"` or `"invite"`: each well-formed set counts (a taken username too, as each
    /// costs a PBKDF2 derivation); more get `<resource-constraint/>`. Default `5`.
    pub registration_per_ip_per_hour: u32,
    /// `[[core.stun]]`: STUN servers announced to clients over XEP-0215 external service
    /// discovery (for calls). Default none.
    pub stun: Vec<ExternalService>,
    /// `[[core.turn]]`: TURN servers announced the same way; one with a `secret` (coturn's
    /// `use-auth-secret` / `static-auth-secret`) gets time-limited credentials per signed-in
    /// account. Default none.
    pub turn: Vec<ExternalService>,
    /// How long XEP-0215 TURN credentials stay valid. Default `"24h"`. Longer lets a leaked
    /// credential relay traffic for longer; shorter makes long calls ask again.
    #[serde(with = "crate::config::duration")]
    pub turn_credentials_ttl: Duration,
    /// How long the message archive (XEP-0313) keeps a message. Default `"365d"`; older
    /// messages are never returned, and are deleted at the account's next archived message
    /// or by the sweep every `archive_sweep_interval`, whichever comes first. The archive
    /// holds the text of every conversation: keep it no longer than your users expect.
    #[serde(with = "crate::config::duration")]
    pub archive_retention: Duration,
    /// How often the core deletes expired archive messages (older than `archive_retention`)
    /// of every account, also of accounts that receive nothing any more; the first sweep
    /// runs at start. Default `"1h"`. Each sweep deletes in transactions of at most 500
    /// messages, so other requests wait at most one such transaction; a shorter interval
    /// keeps the database closer to the retention, a longer one wakes it less.
    #[serde(with = "crate::config::duration")]
    pub archive_sweep_interval: Duration,
    /// Most archived messages per account; the oldest are deleted beyond it. Default
    /// `100000`. Bounds the database's growth per account (a message is ~0.5 KiB on disk).
    pub archive_max_messages: usize,
    /// Extra items for service discovery on the core's domains (XEP-0030 disco#items), e.g.
    /// components behind the gateway. Embedded, the gateway's other backend domains are
    /// listed anyway.
    pub disco_items: Vec<String>,
    /// `[[core.domain]]`: the domains the core serves. Embedded, each domain and alias must
    /// be a `[[component.backend]]` of the gateway. At least one is required.
    pub domain: Vec<DomainConfig>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 5222))],
            direct_tls_listen: vec![SocketAddr::from(([0, 0, 0, 0], 5223))],
            allow_plain: true,
            scram_iterations: 4096,
            database: Database::Sqlite(PathBuf::from("fedgate-core.sqlite")),
            negotiation_timeout: Duration::from_secs(30),
            max_stanza_bytes: 256 * 1024,
            max_negotiation_stanza_bytes: 16 * 1024,
            max_connections: 10_000,
            session_queue: 1024,
            resume_timeout: Duration::from_secs(300),
            ack_timeout: Duration::from_secs(60),
            offline_max: 1000,
            pep_max_nodes: 64,
            pep_max_items: 256,
            pep_max_item_bytes: 64 * 1024,
            max_blocklist: 1000,
            max_vcard_bytes: 64 * 1024,
            registration: Registration::Closed,
            registration_per_ip_per_hour: 5,
            stun: Vec::new(),
            turn: Vec::new(),
            turn_credentials_ttl: Duration::from_secs(24 * 3600),
            archive_retention: Duration::from_secs(365 * 24 * 3600),
            archive_sweep_interval: Duration::from_secs(3600),
            archive_max_messages: 100_000,
            disco_items: Vec::new(),
            domain: Vec::new(),
        }
    }
}

/// `registration`: who may create accounts in-band (XEP-0077).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Nobody: accounts come from `fedgate core user add`.
    #[default]
    Closed,
    /// Anyone who can reach the c2s port.
    Open,
    /// Whoever holds an invitation token (`fedgate core user invite`).
    Invite,
}

/// `[[core.stun]]` / `[[core.turn]]`: one external service (XEP-0215).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalService {
    /// Its host name or IP address, as clients are to reach it. Required.
    pub host: String,
    /// Default `3478` (`5349` for `stuns`/`turns`).
    pub port: Option<u16>,
    /// `"udp"` (default) or `"tcp"`.
    #[serde(default = "default_transport")]
    pub transport: String,
    /// `"stun"`/`"stuns"` in `[[core.stun]]`, `"turn"`/`"turns"` in `[[core.turn]]`
    /// (the `s` forms over TLS). Default the table's name.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// TURN only: coturn's `static-auth-secret`, from which credentials are derived (RFC
    /// draft "REST API for access to TURN services"). Without it none are given.
    pub secret: Option<Secret>,
}

fn default_transport() -> String {
    "udp".into()
}

impl ExternalService {
    /// The service `type`: the configured one or the table's (`stun`, `turn`).
    pub fn kind<'a>(&'a self, table: &'a str) -> &'a str {
        self.type_.as_deref().unwrap_or(table)
    }

    /// The port: the configured one or the default for the type.
    pub fn port_for(&self, table: &str) -> u16 {
        self.port.unwrap_or(if self.kind(table).ends_with('s') {
            5349
        } else {
            3478
        })
    }
}

/// `[[core.domain]]`: one served domain.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// The domain accounts live in (the canonical one). Required.
    pub name: String,
    /// Other domains that reach the same accounts, e.g. `["gmail.com"]` for
    /// `name = "googlemail.com"`. A client may sign in as `user@alias`; with Google's JID
    /// domain discovery (`client-uses-full-bind-result='true'` on `<auth/>`) it is bound as
    /// `user@name`, without it as `user@alias`. Messages to either address arrive. Default none.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `[gateway]` of a standalone core: where to attach.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayLinkConfig {
    /// The gateway's component listener, or a list of them when several gateway instances
    /// serve the deployment (`["10.0.0.1:5347", "10.0.0.2:5347"]`): the core keeps a link to
    /// each, sends each stanza through the one its destination domain hashes to and moves to
    /// another when that link is down. IP addresses, since the core resolves no names for
    /// this. Default `"127.0.0.1:5347"`.
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<SocketAddr>,
    /// The handshake secret of the gateway's `[[component.backend]]` tables for the core's
    /// domains and aliases (one secret for all). Exactly one of `secret` and `secret_file`.
    pub secret: Option<Secret>,
    /// A file holding the secret (trimmed), relative to the configuration file.
    pub secret_file: Option<PathBuf>,
    /// Ask the gateways for acknowledgements on the component links (XEP-0198 on XEP-0114,
    /// only with gateways that offer them: fedgate's). Each stanza is then kept until the
    /// gateway says it has left for good, and sent again through another gateway (or on the
    /// next link) if that gateway dies first: a gateway crash loses nothing, and may deliver
    /// what it had passed on unconfirmed twice. Default `true`.
    pub acknowledgements: bool,
    /// Stanzas sent on one gateway link and not yet acknowledged, at most; past that, the
    /// link waits for acknowledgements. Their bytes are kept in memory. Default 4096.
    pub max_unacked: usize,
}

impl Default for GatewayLinkConfig {
    fn default() -> Self {
        GatewayLinkConfig {
            address: vec![SocketAddr::from(([127, 0, 0, 1], 5347))],
            secret: None,
            secret_file: None,
            acknowledgements: true,
            max_unacked: 4096,
        }
    }
}

/// `address = "host:port"` or `address = ["host:port", ...]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SocketAddr),
        Many(Vec<SocketAddr>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(a)) => Ok(vec![a]),
        Ok(OneOrMany::Many(list)) => Ok(list),
        Err(_) => Err(serde::de::Error::custom(
            "expected an address \"IP:port\" or a list of them, e.g. [\"10.0.0.1:5347\", \"10.0.0.2:5347\"]",
        )),
    }
}

impl GatewayLinkConfig {
    /// The gateway addresses: at least one, none twice.
    pub fn check_addresses(&self) -> Result<(), ConfigError> {
        if self.address.is_empty() {
            return Err(invalid(
                "gateway.address",
                "the list of gateways is empty",
                "name at least one gateway's component listener, e.g. \"127.0.0.1:5347\"",
            ));
        }
        for (i, a) in self.address.iter().enumerate() {
            if self.address[..i].contains(a) {
                return Err(invalid(
                    "gateway.address",
                    format!("{a} is listed twice"),
                    "list each gateway instance once",
                ));
            }
        }
        Ok(())
    }

    /// The secret, from `secret` or `secret_file`.
    pub fn secret(&self) -> Result<String, ConfigError> {
        match (&self.secret, &self.secret_file) {
            (Some(s), None) if !s.expose().is_empty() => Ok(s.expose().to_owned()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "gateway.secret_file",
                        format!("cannot read {}: {e}", path.display()),
                        "check that the file exists and is readable, or use `secret`",
                    )
                })?;
                match text.trim() {
                    "" => Err(invalid(
                        "gateway.secret_file",
                        format!("{} is empty", path.display()),
                        "write the gateway's backend secret into it",
                    )),
                    s => Ok(s.to_owned()),
                }
            }
            (Some(_), Some(_)) => Err(invalid(
                "gateway",
                "both `secret` and `secret_file` are set",
                "keep one of them",
            )),
            _ => Err(invalid(
                "gateway.secret",
                "no secret is set",
                "add `secret = \"...\"` (the gateway's [[component.backend]] secret) or `secret_file`",
            )),
        }
    }
}

/// The whole of a standalone core's file (`config/core.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreFile {
    /// `[core]`: as in the gateway's file.
    pub core: CoreConfig,
    /// `[gateway]`: where the gateway's component listener is.
    #[serde(default)]
    pub gateway: GatewayLinkConfig,
    /// `[tls]` and `[[tls.certificate]]`: the certificates presented to clients, as in the
    /// gateway's file. Required: c2s needs TLS.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[log]`: as in the gateway's file.
    #[serde(default)]
    pub log: crate::logging::LogConfig,
    /// `[metrics]`: the standalone core's `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub metrics: CoreMetricsConfig,
}

/// `[metrics]` of a standalone core.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreMetricsConfig {
    /// Where to serve `/metrics` (the storage and gateway-link metrics), `/healthz` and
    /// `/readyz` (200 while every domain has a link up to a gateway; names every link either
    /// way). Default: not served. Keep it on loopback or a management network: it is not
    /// authenticated. The example config uses `"127.0.0.1:9270"`, next to the gateway's 9269.
    pub listen: Option<SocketAddr>,
}

impl CoreFile {
    /// Reads, parses, resolves relative paths and validates `config/core.toml`.
    pub fn load(path: &Path) -> Result<CoreFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let dir = base_dir(path);
        CoreFile::parse(&text, dir, path).map_err(|e| e.in_file(path))
    }

    /// Like [`CoreFile::load`] for text in memory.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<CoreFile, ConfigError> {
        CoreFile::parse(text, base_dir, Path::new("<inline>"))
    }

    fn parse(text: &str, base_dir: &Path, path: &Path) -> Result<CoreFile, ConfigError> {
        let mut file: CoreFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_message(text, &e),
        })?;
        file.core.resolve_paths(base_dir);
        // As in the gateway's file: an unnamed direct TLS listener follows `listen`'s hosts.
        let given = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("core").and_then(|c| c.as_table()).cloned())
            .is_some_and(|c| c.contains_key("direct_tls_listen"));
        if !given {
            file.core.direct_tls_listen = crate::config::on_port(&file.core.listen, 5223);
        }
        if let Some(p) = &mut file.gateway.secret_file {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        }
        file.tls.resolve_paths(base_dir);
        file.core.validate()?;
        if let Err(e) = file.log.check_level() {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a log filter: {e}", file.log.level),
                "use error, warn, info, debug or trace",
            ));
        }
        file.gateway.secret()?;
        file.gateway.check_addresses()?;
        if file.tls.certificate.is_empty() {
            return Err(invalid(
                "tls.certificate",
                "no certificate is configured; c2s requires TLS",
                "add a [[tls.certificate]] for the core's domains (self_signed = true for a test)",
            ));
        }
        file.core.normalize();
        Ok(file)
    }
}

fn base_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

impl CoreConfig {
    /// Resolves `database` against the configuration file's directory.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        if let Database::Sqlite(path) = &mut self.database {
            if path.is_relative() {
                *path = base_dir.join(&*path);
            }
        }
    }

    /// Every domain the core answers for: the canonical ones and their aliases.
    pub fn all_domains(&self) -> impl Iterator<Item = &str> {
        self.domain.iter().flat_map(|d| {
            std::iter::once(d.name.as_str()).chain(d.aliases.iter().map(String::as_str))
        })
    }

    /// The rules serde cannot express: the first problem; [`CoreConfig::problems`] has them
    /// all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// Every problem with the rules serde cannot express, each with its key and fix.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if let Some(e) = self.database.problem() {
            problems.push(e);
        }
        if self.domain.is_empty() {
            problems.push(invalid(
                "core.domain",
                "no domain is configured",
                "add a [[core.domain]] table with `name = \"example.org\"`",
            ));
        }
        let mut seen: Vec<String> = Vec::new();
        for (i, d) in self.domain.iter().enumerate() {
            let names = std::iter::once((format!("core.domain[{i}].name"), &d.name)).chain(
                d.aliases
                    .iter()
                    .enumerate()
                    .map(move |(j, a)| (format!("core.domain[{i}].aliases[{j}]"), a)),
            );
            for (key, name) in names {
                let n = match normalize_domain(name) {
                    Ok(n) => n,
                    Err(e) => {
                        problems.push(invalid(
                            key,
                            format!("`{name}` is not a valid domain: {e}"),
                            "use a domain name such as \"example.org\"",
                        ));
                        continue;
                    }
                };
                if seen.iter().any(|s| *s == n) {
                    problems.push(invalid(
                        key,
                        format!("`{n}` is listed twice"),
                        "list each domain once, as a name or as an alias",
                    ));
                    continue;
                }
                seen.push(n.into_owned());
            }
        }
        if self.listen.is_empty() && self.direct_tls_listen.is_empty() {
            problems.push(invalid(
                "core.listen",
                "neither `listen` nor `direct_tls_listen` has an address",
                "add \"0.0.0.0:5222\" to `listen`",
            ));
        }
        if self.scram_iterations < 4096 {
            problems.push(invalid(
                "core.scram_iterations",
                format!("{} is below 4096 (RFC 7677)", self.scram_iterations),
                "use 4096 or more",
            ));
        }
        for (key, v) in [
            ("core.max_stanza_bytes", self.max_stanza_bytes),
            (
                "core.max_negotiation_stanza_bytes",
                self.max_negotiation_stanza_bytes,
            ),
            ("core.max_connections", self.max_connections),
            ("core.session_queue", self.session_queue),
            ("core.pep_max_nodes", self.pep_max_nodes),
            ("core.pep_max_items", self.pep_max_items as usize),
            ("core.pep_max_item_bytes", self.pep_max_item_bytes),
            ("core.max_blocklist", self.max_blocklist),
            ("core.max_vcard_bytes", self.max_vcard_bytes),
            ("core.archive_max_messages", self.archive_max_messages),
        ] {
            if v == 0 {
                problems.push(invalid(
                    key,
                    "zero",
                    "use a positive number, or remove the key for the default",
                ));
            }
        }
        if self.registration != Registration::Closed && self.registration_per_ip_per_hour == 0 {
            problems.push(invalid(
                "core.registration_per_ip_per_hour",
                "zero, so that no registration could succeed",
                "use a positive number, or set registration = \"closed\"",
            ));
        }
        for (table, list, types) in [
            ("stun", &self.stun, ["stun", "stuns"]),
            ("turn", &self.turn, ["turn", "turns"]),
        ] {
            for (i, svc) in list.iter().enumerate() {
                let key = format!("core.{table}[{i}]");
                if svc.host.is_empty() {
                    problems.push(invalid(
                        format!("{key}.host"),
                        "empty",
                        "name the server's host",
                    ));
                }
                if !types.contains(&svc.kind(table)) {
                    problems.push(invalid(
                        format!("{key}.type"),
                        format!("`{}` is not a {table} type", svc.kind(table)),
                        format!("use \"{}\" or \"{}\"", types[0], types[1]),
                    ));
                }
                if !matches!(svc.transport.as_str(), "udp" | "tcp") {
                    problems.push(invalid(
                        format!("{key}.transport"),
                        format!("`{}` is not a transport", svc.transport),
                        "use \"udp\" or \"tcp\"",
                    ));
                }
                if table == "stun" && svc.secret.is_some() {
                    problems.push(invalid(
                        format!("{key}.secret"),
                        "STUN takes no credentials",
                        "remove it, or move the server to [[core.turn]]",
                    ));
                }
            }
        }
        if self.turn_credentials_ttl.is_zero() {
            problems.push(invalid(
                "core.turn_credentials_ttl",
                "zero",
                "set a duration such as \"24h\"",
            ));
        }
        if self.max_negotiation_stanza_bytes > self.max_stanza_bytes {
            problems.push(invalid(
                "core.max_negotiation_stanza_bytes",
                "larger than core.max_stanza_bytes",
                "keep it at most max_stanza_bytes",
            ));
        }
        if self.archive_retention.is_zero() {
            problems.push(invalid(
                "core.archive_retention",
                "zero",
                "set a duration such as \"365d\"",
            ));
        }
        if self.archive_sweep_interval < Duration::from_secs(1) {
            problems.push(invalid(
                "core.archive_sweep_interval",
                "shorter than one second",
                "set a duration such as \"1h\"",
            ));
        }
        if self.negotiation_timeout.is_zero() {
            problems.push(invalid(
                "core.negotiation_timeout",
                "zero",
                "set a duration such as \"30s\"",
            ));
        }
        if self.ack_timeout < Duration::from_secs(1) {
            problems.push(invalid(
                "core.ack_timeout",
                "shorter than one second",
                "set a duration such as \"60s\"",
            ));
        }
        let mut addrs: Vec<(String, SocketAddr)> = Vec::new();
        for (key, list) in [
            ("listen", &self.listen),
            ("direct_tls_listen", &self.direct_tls_listen),
        ] {
            for (i, a) in list.iter().enumerate() {
                let key = format!("core.{key}[{i}]");
                if a.port() != 0 {
                    if let Some((other, _)) = addrs.iter().find(|(_, b)| b == a) {
                        problems.push(invalid(
                            key.clone(),
                            format!("{a} is also used by {other}"),
                            "give each listener its own address or port",
                        ));
                    }
                }
                addrs.push((key, *a));
            }
        }
        problems
    }

    /// Rewrites domains to canonical form (after [`CoreConfig::validate`]).
    pub fn normalize(&mut self) {
        let canon = |d: &mut String| {
            if let Ok(n) = normalize_domain(d) {
                *d = n.into_owned();
            }
        };
        for d in &mut self.domain {
            canon(&mut d.name);
            d.aliases.iter_mut().for_each(canon);
        }
    }

    /// Listener addresses with their keys, for the gateway's clash check.
    pub fn listeners(&self) -> impl Iterator<Item = (String, SocketAddr)> + '_ {
        let a = self
            .listen
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("core.listen[{i}]"), *a));
        let b = self
            .direct_tls_listen
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("core.direct_tls_listen[{i}]"), *a));
        a.chain(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn example_core_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let f = CoreFile::load(&dir.join("core.toml")).unwrap();
        assert_eq!(
            f.core.database,
            Database::Sqlite(dir.join("fedgate-core.sqlite"))
        );
        assert!(f.core.listen.iter().all(|a| a.ip().is_loopback()));
        assert!(f.core.allow_plain);
        assert!(f.gateway.secret().is_ok());
    }

    /// `database` takes a file or a PostgreSQL URL; a bad URL is one error naming the key,
    /// and the password never shows in `fedgate check config`.
    #[test]
    fn the_database_is_a_file_or_a_postgresql_url() {
        let base = "[[core.domain]]\nname=\"a.test\"\n[tls]\n[[tls.certificate]]\ndomains=[\"a.test\"]\ncert=\"a.crt\"\nkey=\"a.key\"\n[gateway]\nsecret=\"s\"\n";
        let load = |db: &str| {
            CoreFile::from_toml(
                &format!("[core]\ndatabase = \"{db}\"\n{base}"),
                Path::new("/srv"),
            )
        };
        let db = |s: &str| load(s).unwrap().core.database;
        assert_eq!(
            db("core.sqlite"),
            Database::Sqlite("/srv/core.sqlite".into())
        );
        assert_eq!(
            db("sqlite:/var/core.db"),
            Database::Sqlite("/var/core.db".into())
        );
        for url in [
            "postgres://fedgate@db.example/core",
            "postgresql://fedgate:pw@10.0.0.5:5433/core",
            "postgres://fedgate@localhost/core?host=/run/postgresql",
            // TLS, verified against the webpki roots.
            "postgres://fedgate@db.example/core?sslmode=require",
            "postgres://fedgate@db.example/core?sslmode=verify-full",
        ] {
            assert_eq!(db(url), Database::Postgres(url.into()));
        }
        for bad in [
            "postgres://fedgate@db.example/core?sslmode=verify-full&sslrootcert=/nonexistent.pem",
            "postgres://fedgate@db.example/core?sslrootcert=/etc/hostname",
            "postgres://fedgate@db.example/core?no_such_option=1",
            "postgres://fedgate@db.example:notaport/core",
        ] {
            let e = load(bad).unwrap_err();
            assert!(e.to_string().lines().count() == 1, "{e}");
            assert_eq!(key_of(e), "core.database", "{bad}");
        }
        let shown = Database::parse("postgres://fedgate:s3cret@db.example/core").to_string();
        assert_eq!(shown, "postgres://fedgate:***@db.example/core");
        let shown =
            Database::parse("postgres://fedgate@h/core?password=s3cret&host=/run").to_string();
        assert_eq!(shown, "postgres://fedgate@h/core?password=***&host=/run");
        let text = toml::to_string(&load("postgres://u:s3cret@h/core").unwrap().core).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn the_gateway_address_is_one_or_a_list() {
        let file = |gateway: &str| {
            CoreFile::from_toml(
                &format!("[core]\n[[core.domain]]\nname=\"a.test\"\n[tls]\n[[tls.certificate]]\ndomains=[\"a.test\"]\ncert=\"a.crt\"\nkey=\"a.key\"\n[gateway]\nsecret=\"s\"\n{gateway}"),
                Path::new("/tmp"),
            )
        };
        let one: SocketAddr = "127.0.0.1:5347".parse().unwrap();
        let two: SocketAddr = "127.0.0.2:5347".parse().unwrap();
        assert_eq!(file("").unwrap().gateway.address, [one]);
        assert_eq!(
            file("address = \"127.0.0.1:5347\"")
                .unwrap()
                .gateway
                .address,
            [one]
        );
        assert_eq!(
            file("address = [\"127.0.0.1:5347\", \"127.0.0.2:5347\"]")
                .unwrap()
                .gateway
                .address,
            [one, two]
        );
        assert_eq!(key_of(file("address = []").unwrap_err()), "gateway.address");
        assert_eq!(
            key_of(file("address = [\"127.0.0.1:5347\", \"127.0.0.1:5347\"]").unwrap_err()),
            "gateway.address"
        );
        let e = file("address = \"gw1\"").unwrap_err().to_string();
        assert!(e.contains("a list of them"), "{e}");
    }

    #[test]
    fn defaults_and_checks() {
        let base = "[tls]\n[[tls.certificate]]\ndomains=[\"a.test\"]\ncert=\"a.crt\"\nkey=\"a.key\"\n[gateway]\nsecret=\"s\"\n";
        let f = CoreFile::from_toml(
            &format!("[core]\n[[core.domain]]\nname = \"A.Test.\"\naliases = [\"b.test\"]\n{base}"),
            Path::new("/tmp"),
        )
        .unwrap();
        assert_eq!(f.core.domain[0].name, "a.test");
        assert_eq!(f.core.scram_iterations, 4096);
        assert!(f.core.allow_plain, "PLAIN over TLS is on by default");
        assert_eq!(f.core.listen, ["0.0.0.0:5222".parse().unwrap()]);
        assert_eq!(
            f.core.all_domains().collect::<Vec<_>>(),
            ["a.test", "b.test"]
        );
        let bad = |core: &str| {
            key_of(
                CoreFile::from_toml(&format!("[core]\n{core}\n{base}"), Path::new("/tmp"))
                    .unwrap_err(),
            )
        };
        assert_eq!(bad(""), "core.domain");
        assert_eq!(
            bad("pep_max_items = 0\n[[core.domain]]\nname=\"a.test\""),
            "core.pep_max_items"
        );
        assert_eq!(
            bad("scram_iterations = 100\n[[core.domain]]\nname=\"a.test\""),
            "core.scram_iterations"
        );
        assert_eq!(
            bad("[[core.domain]]\nname=\"a.test\"\naliases=[\"a.test\"]"),
            "core.domain[0].aliases[0]"
        );
        assert_eq!(
            bad("listen=[\"127.0.0.1:5222\"]\ndirect_tls_listen=[\"127.0.0.1:5222\"]\n[[core.domain]]\nname=\"a.test\""),
            "core.direct_tls_listen[0]"
        );
        assert_eq!(
            bad("archive_max_messages = 0\n[[core.domain]]\nname=\"a.test\""),
            "core.archive_max_messages"
        );
        assert_eq!(
            bad("archive_retention = \"0s\"\n[[core.domain]]\nname=\"a.test\""),
            "core.archive_retention"
        );
        assert_eq!(
            bad("archive_sweep_interval = \"0s\"\n[[core.domain]]\nname=\"a.test\""),
            "core.archive_sweep_interval"
        );
        assert_eq!(
            f.core.archive_retention,
            std::time::Duration::from_secs(365 * 24 * 3600)
        );
        // Unknown keys are refused with their name.
        let e = CoreFile::from_toml("[core]\nlisten_on = []\n", Path::new("/tmp")).unwrap_err();
        assert!(e.to_string().contains("listen_on"), "{e}");
        // No secret.
        let e = CoreFile::from_toml(
            "[core]\n[[core.domain]]\nname=\"a.test\"\n[tls]\n[[tls.certificate]]\ndomains=[\"a.test\"]\ncert=\"a\"\nkey=\"b\"\n",
            Path::new("/tmp"),
        )
        .unwrap_err();
        assert_eq!(key_of(e), "gateway.secret");
    }
}
