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

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::jid::normalize_domain;

/// A configuration problem. All are fatal: the gateway does not start (exit code 64).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{}: cannot read the configuration file: {source}; check the path and its permissions", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type, or a key is unknown.
    /// `message` keeps toml's own message (which names the key) with the line and column.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file (`<inline>` when parsed from a string).
        path: PathBuf,
        /// One line: position, enclosing table, toml's message.
        message: String,
    },
    /// The file parsed but a value is not acceptable.
    #[error("{}{key}: {problem}; {fix}", file_prefix(.path.as_deref()))]
    Invalid {
        /// The key, as a TOML path with zero-based indices, e.g. `component.backend[1].domain`.
        key: String,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
        /// The configuration file, when known ([`Config::load`] fills it in).
        path: Option<PathBuf>,
    },
}

impl ConfigError {
    /// Names the file in an [`ConfigError::Invalid`] found while checking it.
    pub fn in_file(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Invalid {
                key, problem, fix, ..
            } => ConfigError::Invalid {
                key,
                problem,
                fix,
                path: Some(file.to_owned()),
            },
            other => other,
        }
    }
}

/// The first of a non-empty list of problems.
fn first(problems: Vec<ConfigError>) -> ConfigError {
    problems
        .into_iter()
        .next()
        .expect("a failed load has at least one problem")
}

fn file_prefix(path: Option<&Path>) -> String {
    path.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

pub(crate) fn invalid(
    key: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
        path: None,
    }
}

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

/// The longest `s2s.drain_timeout`: a stop that takes longer is a hang to whoever waits for it.
const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// `[s2s]`: inbound and outbound server-to-server streams.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    /// Addresses to accept inbound s2s connections on. Default `["0.0.0.0:5269"]` (all IPv4
    /// interfaces, the standard port). Must not be empty: remote servers connect back here for
    /// dialback even when we only send. Port 0 picks a free port (tests).
    pub listen: Vec<SocketAddr>,
    /// Addresses for direct TLS (XEP-0368): TLS from the first byte, ALPN `xmpp-server`, no
    /// STARTTLS round trip. Default: in a file, the hosts of `listen` on port 5270 (so
    /// `["0.0.0.0:5270"]` with the default `listen`); `[]` turns it off. Announce it with an
    /// `_xmpps-server._tcp` SRV record so that peers find it.
    pub direct_tls_listen: Vec<SocketAddr>,
    /// Whether s2s streams must be encrypted. Default `true`: inbound, anything but
    /// `<starttls/>` before TLS ends the stream with `<policy-violation/>`; outbound, a peer
    /// that offers no TLS gets nothing but our stream header and its stanzas bounce. **Turning
    /// it off sends dialback keys and stanzas in clear text**; prefer a
    /// `[[federation.peer]]` with `tls = "optional"` for one named test peer.
    pub require_encryption: bool,
    /// Whether peers must present a certificate that is valid for their domain (chain to a
    /// trust anchor, name per RFC 6125 / XEP-0178). Default `false`: a peer with a self-signed
    /// or mismatched certificate may still authenticate by dialback over TLS (XEP-0344), which
    /// is what most of the federated network needs. `true` refuses such peers both ways.
    pub secure_auth: bool,
    /// Limit for one outbound TCP connect attempt (one address of one SRV target). Default
    /// `"10s"`. Too long delays failover to the next address; too short fails on slow links.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// From TCP accept/connect until the stream is authenticated; the stream then ends with
    /// `<connection-timeout/>`. Default `"30s"`. Bounds how long an unauthenticated peer can
    /// hold a connection slot; too long makes slot exhaustion cheap.
    #[serde(with = "duration")]
    pub negotiation_timeout: Duration,
    /// How long to wait for a `<db:result/>` or `<db:verify/>` answer. Default `"15s"`.
    /// Queued stanzas for the domain wait that long before they bounce with
    /// `remote-server-timeout`.
    #[serde(with = "duration")]
    pub dialback_timeout: Duration,
    /// An authenticated s2s stream with no stanzas either way for this long is closed with
    /// `</stream:stream>`. Default `"10m"`. Whitespace keepalives do not count as traffic.
    /// Too short causes reconnect churn; too long holds idle sockets and memory.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Largest stanza accepted after authentication, in bytes of raw XML. Default `524288`
    /// (512 KiB). Larger stanzas end the stream with `<policy-violation/>`. Each connection may
    /// buffer this much, so it multiplies with `max_connections` in the worst case.
    pub max_stanza_bytes: usize,
    /// Largest top-level element accepted before authentication, in bytes. Default `8192`.
    /// Must not exceed `max_stanza_bytes`. Keeps unauthenticated peers cheap.
    pub max_negotiation_stanza_bytes: usize,
    /// Deepest XML element nesting within one stanza. Default `32`. Deeper nesting is refused
    /// with `<policy-violation/>`; raising it makes pathological documents costlier to parse.
    pub max_depth: usize,
    /// Most attributes on one element. Default `64`. Protects the parser's per-element work.
    pub max_attributes: usize,
    /// Most inbound s2s connections open at once; further ones are refused until one closes.
    /// Default `10000`. Bounded by the process's file descriptor limit (check `ulimit -n`).
    pub max_connections: usize,
    /// Most inbound s2s connections open at once from one IP address, both listeners together,
    /// within `max_connections`. Default `32`. Past it a new connection gets our stream header
    /// and `<policy-violation/>` naming this key, and is closed: no TLS, nothing parsed (on the
    /// direct TLS port it is closed without a word, since answering would take the TLS
    /// handshake the limit saves). Too high lets one host take many of the `max_connections`
    /// slots; too low refuses a provider whose many domains connect from one address (one
    /// stream per domain pair when it does not multiplex) or servers behind one NAT.
    pub max_connections_per_ip: usize,
    /// Most inbound streams authenticated for the same remote domain at once. Default `32`.
    /// The authentication that would exceed it is refused and the stream stays, for other
    /// domains: dialback with `<db:result type='error'>` and `<policy-violation/>` (XEP-0220
    /// §2.4, a dialback error is not fatal to the stream), SASL EXTERNAL with `<failure/>`
    /// and `<temporary-auth-failure/>` (RFC 6120 §6.5.10: the credentials are fine, a stream
    /// of that domain closing makes room). A peer needs one stream per local domain it writes
    /// to, or one in all if it multiplexes. Too high lets one domain hold many connections;
    /// too low refuses a peer that writes to many of our domains without multiplexing.
    pub max_streams_per_domain: usize,
    /// Most domain pairs (local, remote) authenticated or being verified on one inbound
    /// stream (XEP-0220 §4, multiplexing). Default `100`. Beyond it, `<db:result
    /// type='error'>` with `<policy-violation/>`; the pairs already there go on. Too high makes
    /// one stream's per-stanza `from` check and the state it holds grow; too low makes a peer
    /// with many domains open more streams.
    pub max_domain_pairs_per_stream: usize,
    /// Dialback verifications (connect-backs to a sender's authoritative server) one inbound
    /// stream may have in flight. Default `16`. Beyond it, `<db:result type='error'>` with
    /// `<resource-constraint/>` (busy: try again later). Too high lets one stream make us
    /// open many connections; too low slows a peer that authenticates many domains at once.
    pub max_pending_verifications: usize,
    /// The same over all inbound streams together. Default `1024`; at least
    /// `max_pending_verifications`. Each verification is an outbound connection and a task
    /// for up to `dialback_timeout`, so this bounds what many streams together can make us
    /// open; too low makes unrelated peers wait for each other during a flood.
    pub max_pending_verifications_total: usize,
    /// Bytes per second one inbound stream may send, as a token bucket in the read path.
    /// Default `1048576` (1 MiB/s). The bucket holds one second's worth, or the stream's
    /// stanza limit if that is more, so a burst that size passes at once. When it is empty
    /// fedgate stops reading the connection until it refills: the kernel's buffers fill and
    /// TCP slows the sender down, nothing is dropped and nothing piles up in fedgate. Counted
    /// in XML bytes (after TLS). Too low makes a busy peer's stanzas late and its own queue
    /// grow; too high lets one peer take more CPU for parsing. `[[federation.peer]]
    /// max_inbound_bytes_per_second` overrides it per peer.
    pub max_inbound_bytes_per_second: u64,
    /// Most stanzas queued for one remote domain while its outbound session connects and
    /// authenticates; stanzas beyond it bounce with `resource-constraint`. Default `1000`.
    pub queue_max_stanzas: usize,
    /// Most bytes queued for one remote domain while its session connects. Default `4194304`
    /// (4 MiB). Must be at least `max_stanza_bytes`. Multiplies with the number of remote
    /// domains being connected to at once.
    pub queue_max_bytes: usize,
    /// How long an outbound session keeps retrying a remote domain whose targets all failed,
    /// holding its queued stanzas, before they bounce with the cause. Retries back off
    /// exponentially from `retry_initial_delay` to `retry_max_delay`, with jitter. The window
    /// counts from the start of the first attempt and bounds everything in it: an attempt
    /// still waiting for DNS, a connection or a negotiation when it closes is cut short.
    /// Default `"60s"`. Longer rides out a peer's restart; shorter tells senders sooner.
    #[serde(with = "duration")]
    pub retry_window: Duration,
    /// First delay between attempts to reach a failing domain. Default `"1s"`.
    #[serde(with = "duration")]
    pub retry_initial_delay: Duration,
    /// Longest delay between attempts. Default `"15s"`.
    #[serde(with = "duration")]
    pub retry_max_delay: Duration,
    /// After the retry window closes, new stanzas for the domain bounce at once with the same
    /// cause for this long, without a new connection attempt. Default `"60s"`. Shields a dead
    /// peer (and us) from a reconnect per stanza.
    #[serde(with = "duration")]
    pub failure_window: Duration,
    /// How long a stanza waits for room in the full queue of a destination that reads slower
    /// than we write (a remote server's established session, or a backend) before it bounces
    /// with `resource-constraint`. After that the destination counts as stalled: its stanzas
    /// bounce at once until its queue has room again, so that it never holds up the other
    /// destinations on the same link. Default `"5s"`. Shorter bounces sooner on a peer that
    /// pauses; longer lets one stalled destination hold up its senders' other traffic longer.
    #[serde(with = "duration")]
    pub stall_timeout: Duration,
    /// On SIGTERM, how long the gateway drains before it stops (a rolling restart): backends
    /// that understand the drain notice send new traffic through other gateways, inbound
    /// streams end so that their peers reconnect to another instance, and the drain waits,
    /// at most this long, for those backends to answer, the outbound queues to be written and
    /// those streams to close; then the outbound streams get a last acknowledgement and close,
    /// and the gateway stops. Default
    /// `"10s"`; `"0s"` waits for nothing. At most `"5m"`. **Risk:** a drain longer than the
    /// service manager's stop timeout (`TimeoutStopSec`, 30 s in the shipped unit) gets
    /// fedgate killed, and what it still held is lost.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// An established outbound link with nothing written for this long is checked: an
    /// XEP-0198 `<r/>` where stream management is on, else an XEP-0199 ping. Default `"60s"`.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// A link whose check is not answered within this is dead: it is closed, and stanzas
    /// waiting for it go out on a new connection. Default `"30s"`.
    #[serde(with = "duration")]
    pub ping_timeout: Duration,
    /// A stream we have written nothing on for this long gets a single space (RFC 6120 §4.6.1
    /// whitespace keepalive), so that NATs and firewalls keep it open. Default `"45s"`.
    #[serde(with = "duration")]
    pub keepalive_interval: Duration,
    /// XEP-0198 stream management on s2s: offered on inbound streams, used on outbound ones
    /// when the peer offers it, so that a dropped link loses nothing. Default `true`.
    pub stream_management: bool,
    /// XEP-0288 bidirectional s2s: offered on encrypted inbound streams and requested on
    /// outbound ones when the peer offers it, so that one TCP connection carries a domain
    /// pair's stanzas both ways (without it a reply costs the peer a connection of its own).
    /// Each direction keeps the from/to rules of its authentication. Default `true`;
    /// `[[federation.peer]] bidi = false` turns it off for one peer.
    pub bidi: bool,
    /// How long the counters of a dropped inbound stream are kept so that its peer can resume
    /// it (XEP-0198 §5). Default `"5m"`.
    #[serde(with = "duration")]
    pub resume_timeout: Duration,
    /// File holding the dialback secret shared by all fedgate instances of this deployment.
    /// Default `"fedgate-dialback.secret"`; a relative path is relative to the configuration
    /// file's directory. Created with a random secret (mode 0600) on first start. **Anyone who
    /// reads it can impersonate our domains to servers that accept dialback.**
    pub dialback_secret_file: PathBuf,
    /// `[[s2s.route]]`: static routes that override DNS for a remote domain. Default none.
    pub route: Vec<RouteConfig>,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 5269))],
            direct_tls_listen: vec![SocketAddr::from(([0, 0, 0, 0], 5270))],
            require_encryption: true,
            secure_auth: false,
            connect_timeout: Duration::from_secs(10),
            negotiation_timeout: Duration::from_secs(30),
            dialback_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(600),
            max_stanza_bytes: 512 * 1024,
            max_negotiation_stanza_bytes: 8192,
            max_depth: 32,
            max_attributes: 64,
            max_connections: 10_000,
            max_connections_per_ip: 32,
            max_streams_per_domain: 32,
            max_domain_pairs_per_stream: 100,
            max_pending_verifications: 16,
            max_pending_verifications_total: 1024,
            max_inbound_bytes_per_second: 1024 * 1024,
            queue_max_stanzas: 1000,
            queue_max_bytes: 4 * 1024 * 1024,
            retry_window: Duration::from_secs(60),
            retry_initial_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(15),
            failure_window: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(60),
            ping_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(45),
            stream_management: true,
            bidi: true,
            resume_timeout: Duration::from_secs(300),
            dialback_secret_file: PathBuf::from("fedgate-dialback.secret"),
            route: Vec::new(),
        }
    }
}

/// `[[s2s.route]]`: connect to a fixed address for one remote domain instead of resolving it.
/// Used by tests and split-horizon deployments.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The remote domain this route is for. Required. Must not be a local (backend) domain.
    /// Stored in canonical form after loading.
    pub domain: String,
    /// Where to connect, `host:port`; IPv6 addresses in brackets (`"[::1]:5269"`). Required.
    /// The TLS and dialback identity is still `domain`, not this host.
    pub target: RouteTarget,
    /// Whether `target` speaks direct TLS (XEP-0368) rather than STARTTLS. Default `false`.
    #[serde(default)]
    pub direct_tls: bool,
}

/// A `host:port` connection target. The host is a domain name (canonical form after loading)
/// or an IP address (IPv6 kept without brackets).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RouteTarget {
    /// Domain name or IP address.
    pub host: String,
    /// TCP port, never 0.
    pub port: u16,
}

impl RouteTarget {
    /// The host as an IP address, when it is one (no DNS lookup needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for RouteTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FIX: &str =
            "write host:port, e.g. \"xmpp.example.org:5269\" or \"[2001:db8::1]:5269\"";
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("route target `{s}` has no port after `]`; {FIX}"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "`{host}` in route target `{s}` is not an IPv6 address; {FIX}"
                ));
            }
            (host, port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| format!("route target `{s}` has no port; {FIX}"))?;
            if host.contains(':') {
                return Err(format!(
                    "route target `{s}` looks like a bare IPv6 address; put it in brackets: {FIX}"
                ));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(format!("route target `{s}` has no host; {FIX}"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("route target `{s}` has no valid port (1-65535); {FIX}"))?;
        Ok(RouteTarget {
            host: host.to_owned(),
            port,
        })
    }
}

impl Serialize for RouteTarget {
    /// As written in the file: `host:port`, an IPv6 address in brackets.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl TryFrom<String> for RouteTarget {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// `[dns]`: name resolution for outbound s2s.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// DNS servers to query instead of the system resolver (`/etc/resolv.conf` and
    /// `/etc/hosts`), as `ip:port`. Default: absent, use the system's. Mainly for tests that
    /// run their own DNS server. If set, must not be empty. These servers decide where our
    /// traffic goes, so only list resolvers you trust.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Longest time a negative answer (NXDOMAIN, no SRV or A/AAAA record) is cached; the
    /// zone's own negative TTL (RFC 2308) applies when it is shorter. Default `"30s"`, at most
    /// `"3h"`; `"0s"` caches no negative answer. Longer spares the resolver when stanzas keep
    /// arriving for a domain that does not exist, but a domain that fixes its DNS stays
    /// unreachable from here for up to this long.
    #[serde(with = "duration")]
    pub negative_ttl: Duration,
    /// How long to wait for a DNS server's answer before asking again (twice at most).
    /// Default `"5s"`. A silent resolver delays every new outbound session by about four
    /// times this (the SRV lookups, then the address lookups) before its stanzas bounce, but
    /// never longer than `s2s.retry_window`.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: None,
            negative_ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Who may federate with us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FederationMode {
    /// Any remote domain except those in `deny`.
    #[default]
    Open,
    /// Only domains in `allow` (and not in `deny`).
    Allowlist,
}

/// `[federation]`: the federation policy.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// `"open"` or `"allowlist"`. Default `"open"`. In `"allowlist"` mode an empty `allow`
    /// means no federation at all.
    pub mode: FederationMode,
    /// Domains allowed in `"allowlist"` mode: exact domains, or `"*.example.org"` to match
    /// every subdomain of example.org (list `"example.org"` itself separately). Default empty.
    /// Ignored in `"open"` mode. Canonical form after loading.
    pub allow: Vec<String>,
    /// Domains refused in any mode, same syntax as `allow`; deny wins over allow. Default
    /// empty.
    pub deny: Vec<String>,
    /// Refuse nothing, but log and count (`fedgate_policy_refusals_total{mode="dry_run"}`)
    /// every stream and stanza that `mode`, `allow` and `deny` would refuse. Default `false`.
    /// For moving an open deployment to an allowlist: run with the new lists and
    /// `dry_run = true`, watch what would break, then turn it off. The TLS and authentication
    /// rules of `[[federation.peer]]` are always enforced.
    pub dry_run: bool,
    /// `[[federation.peer]]`: how one remote domain must secure and authenticate its streams,
    /// overriding `[s2s]`. Default none.
    pub peer: Vec<PeerConfig>,
}

/// Whether a peer's streams must be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsRequirement {
    /// TLS is required; a peer without it gets nothing.
    Required,
    /// TLS is used when the peer offers it; without it, dialback runs in clear text.
    Optional,
}

/// Which authentication a peer must use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthRequirement {
    /// SASL EXTERNAL or dialback, whichever the peer can do.
    #[default]
    Any,
    /// Only SASL EXTERNAL with a valid certificate (XEP-0178).
    External,
    /// Only Server Dialback (XEP-0220).
    Dialback,
}

/// `[[federation.peer]]`: per-remote-domain overrides of the TLS and authentication policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The remote domain. Required; exact (no patterns). Canonical form after loading.
    pub domain: String,
    /// `"required"` or `"optional"`. Default: `s2s.require_encryption`. `"optional"` lets this
    /// one peer federate (and run dialback) in clear text; meant for a named test peer.
    #[serde(default)]
    pub tls: Option<TlsRequirement>,
    /// Require a certificate valid for this domain. Default: `s2s.secure_auth`.
    #[serde(default)]
    pub secure_auth: Option<bool>,
    /// `"any"`, `"external"` or `"dialback"`. Default `"any"`.
    #[serde(default)]
    pub auth: AuthRequirement,
    /// Accept only certificates whose public key (SubjectPublicKeyInfo) has one of these
    /// SHA-256 digests, in base64 or hex, e.g. the output of `openssl x509 -pubkey -noout |
    /// openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`. Default
    /// empty (no pinning). A pinned certificate need not chain to a trust anchor.
    #[serde(default)]
    pub pin_sha256: Vec<String>,
    /// Largest stanza to and from this peer, in bytes of raw XML. Default: inbound
    /// `s2s.max_stanza_bytes`; outbound none of ours (the peer's own XEP-0478 `max-bytes`
    /// still applies). Inbound, a larger stanza from this peer ends the stream with
    /// `<policy-violation/>`; outbound, a larger stanza for it is bounced to its sender with
    /// `policy-violation` and a text naming the limit. May exceed `s2s.max_stanza_bytes` for
    /// a trusted peer (each of its streams may then buffer that much), at most
    /// `s2s.queue_max_bytes`.
    #[serde(default)]
    pub max_stanza_bytes: Option<usize>,
    /// `s2s.max_inbound_bytes_per_second` for streams from this peer, applied once it has
    /// authenticated (its stream header's `from` proves nothing). Default: that key. A stream
    /// that carries several remote domains is held to the lowest of their rates.
    #[serde(default)]
    pub max_inbound_bytes_per_second: Option<u64>,
    /// A static route to this peer, `host:port`, as a `[[s2s.route]]` (STARTTLS; use
    /// `[[s2s.route]]` for direct TLS): DNS is not asked, and the TLS and dialback identity
    /// is still `domain`. Default none. A domain has at most one route.
    #[serde(default)]
    pub route: Option<RouteTarget>,
    /// What happens to stanzas written on a link to this peer without XEP-0198 stream
    /// management whose reading the peer had not yet confirmed (with an XEP-0199 ping) when
    /// the link dropped: `"resend"` (default) writes them again on the next link, so each
    /// arrives at least once but may arrive twice (counted in
    /// `fedgate_outbound_stanzas_total{event="resent_unconfirmed"}`); `"bounce"` returns them
    /// to their senders with `remote-server-timeout` and a text saying they may have been
    /// delivered, so none arrives twice but some bounced ones did arrive. Links with XEP-0198
    /// resend only what was not acknowledged, whatever this says.
    #[serde(default)]
    pub unconfirmed: Unconfirmed,
    /// XEP-0288 bidirectional streams with this peer. Default: `s2s.bidi`. `false` keeps one
    /// connection per direction, for a peer whose bidi is broken or to keep the directions
    /// apart.
    #[serde(default)]
    pub bidi: Option<bool>,
}

/// `[[federation.peer]] unconfirmed`: what a dropped link without XEP-0198 does with the
/// stanzas the peer had not confirmed reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unconfirmed {
    /// Write them again on the next link: at least once, perhaps twice.
    #[default]
    Resend,
    /// Return them to their senders with `remote-server-timeout`: at most once.
    Bounce,
}

impl PeerConfig {
    /// The pins decoded to 32-byte digests; `Err` names the first bad one.
    pub fn pins(&self) -> Result<Vec<[u8; 32]>, String> {
        self.pin_sha256.iter().map(|p| decode_pin(p)).collect()
    }
}

/// A SHA-256 digest in hex (colons allowed) or base64.
fn decode_pin(pin: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let hex_form: String = pin.chars().filter(|c| *c != ':').collect();
    let bytes = if hex_form.len() == 64 {
        hex::decode(&hex_form).map_err(|e| format!("`{pin}` is not hex: {e}"))?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(pin.trim())
            .map_err(|e| format!("`{pin}` is neither 64 hex digits nor base64: {e}"))?
    };
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("`{pin}` is {} bytes, a SHA-256 digest is 32", b.len()))
}

/// `[tls]`: certificates we present and trust anchors for the certificates peers present.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Trust the Mozilla root store (webpki-roots) for peers' certificates. Default `true`.
    pub webpki_roots: bool,
    /// Extra trust anchors, PEM files of CA certificates (a private CA, a test CA). Default
    /// none. Relative paths are relative to the configuration file.
    pub ca_files: Vec<PathBuf>,
    /// `[[tls.certificate]]`: one per certificate we present. Default none.
    pub certificate: Vec<CertificateConfig>,
}

impl TlsConfig {
    /// Resolves certificate, key and CA paths against the configuration file's directory.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        };
        self.ca_files.iter_mut().for_each(resolve);
        for c in &mut self.certificate {
            resolve(&mut c.cert);
            resolve(&mut c.key);
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            webpki_roots: true,
            ca_files: Vec::new(),
            certificate: Vec::new(),
        }
    }
}

/// `[[tls.certificate]]`: a certificate and its key, presented for `domains`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The domains this certificate is presented for, chosen by the peer's SNI or its stream
    /// `to`; `"*.example.org"` covers every direct subdomain. Required, not empty.
    pub domains: Vec<String>,
    /// PEM file: the certificate, then its intermediates. Required. Re-read on SIGHUP.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, SEC1 or PKCS#1; ECDSA, Ed25519 or RSA). Required.
    /// Keep it mode 0600. Re-read on SIGHUP.
    pub key: PathBuf,
    /// Create a self-signed certificate for `domains` at `cert`/`key` when the files do not
    /// exist. Default `false`. Peers accept it only for dialback over TLS (not SASL EXTERNAL,
    /// not under their `secure_auth`); use a CA-issued certificate for real federation.
    #[serde(default)]
    pub self_signed: bool,
}

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

    fn secret_at(&self, key: &str) -> Result<String, ConfigError> {
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

/// `[metrics]`: the Prometheus `/metrics`, `/healthz` and `/readyz` endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether to serve metrics at all. Default `true`.
    pub enabled: bool,
    /// Address to serve on. Default `"127.0.0.1:9269"`. Metrics name connected peer domains,
    /// so exposing them publicly leaks who we federate with.
    pub listen: SocketAddr,
    /// Remote domains that always get their own `peer` label in per-peer metrics, beside
    /// those named in `[[federation.peer]]`. Default none.
    pub peers: Vec<String>,
    /// How many more remote domains get their own `peer` label, chosen by traffic; the rest
    /// are counted as `peer="other"`. Default 20. Each label costs about a dozen series, so
    /// this bounds what any number of peers can add to Prometheus.
    pub top_peers: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9269)),
            peers: Vec::new(),
            top_peers: 20,
        }
    }
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
            if p.max_stanza_bytes == Some(0) || p.max_inbound_bytes_per_second == Some(0) {
                let name = if p.max_stanza_bytes == Some(0) {
                    "max_stanza_bytes"
                } else {
                    "max_inbound_bytes_per_second"
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
    /// ([`crate::component::in_process_secret`]).
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
            secrets.insert(
                domain.clone(),
                crate::component::in_process_secret().to_owned(),
            );
        }
        Ok(secrets)
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

/// Whether a `[[tls.certificate]]` domain entry covers `domain` (both canonical): exactly, or
/// `*.example.org` for a name with exactly one more label, as a wildcard certificate does
/// (RFC 9525 §6.3).
pub fn certificate_covers(pattern: &str, domain: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => domain
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == domain,
    }
}

/// Validates and canonicalises a federation pattern: a domain, or `*.` + a domain.
fn normalize_pattern(p: &str) -> Result<String, String> {
    let (prefix, domain) = match p.strip_prefix("*.") {
        Some(rest) => ("*.", rest),
        None => ("", p),
    };
    if domain.contains('*') {
        return Err(format!("`{p}`: `*` is only allowed as a leading `*.`"));
    }
    let d = normalize_domain(domain).map_err(|e| format!("`{p}` is not a valid domain: {e}"))?;
    if !prefix.is_empty() && (d.starts_with('[') || d.parse::<IpAddr>().is_ok()) {
        return Err(format!(
            "`{p}`: a `*.` pattern needs a domain name, not an IP address"
        ));
    }
    Ok(format!("{prefix}{d}"))
}

/// One line from a toml error: position, the table it is in, and toml's message (which names
/// the offending key or value).
/// Each distinct host of `addrs` on `port`.
pub(crate) fn on_port(addrs: &[SocketAddr], port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        let addr = SocketAddr::new(a.ip(), port);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

pub(crate) fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(|l| l.split('#').next())
        .map(|l| format!(" in {}", l.trim()))
        .unwrap_or_default();
    format!("line {line}, column {column}{table}: {message}")
}

/// Durations in the configuration: read as humantime writes them (`"30s"`, `"10m"`, `"1day"`,
/// `"365d"`), written in the largest whole unit (`"365d"`, `"10m"`, `"250ms"`), so that
/// `fedgate check config` prints what an operator would type: humantime's own format splits a
/// year of 365 days into months of 30.44 days.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&text(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime_serde::deserialize(d)
    }

    /// `d` in the largest unit that divides it: d, h, m, s, ms, else humantime's form.
    pub fn text(d: Duration) -> String {
        let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
        if nanos == 0 {
            for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
                if secs > 0 && secs % size == 0 {
                    return format!("{}{unit}", secs / size);
                }
            }
            return format!("{secs}s");
        }
        if nanos % 1_000_000 == 0 {
            return format!("{}ms", d.as_millis());
        }
        humantime::format_duration(d).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"s3cret\"\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/tmp"))
    }

    fn invalid_key(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn an_unnamed_direct_tls_listener_follows_the_hosts_of_listen() {
        let base = "[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n[tls]\n[[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n";
        let c = parse(&format!(
            "[s2s]\nlisten = [\"127.0.0.2:5269\", \"[::1]:5269\"]\n{base}[core]\nlisten = [\"127.0.0.2:5222\"]\n[[core.domain]]\nname = \"a.test\"\n"
        ))
        .unwrap();
        let addrs =
            |v: &[&str]| -> Vec<SocketAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
        assert_eq!(
            c.s2s.direct_tls_listen,
            addrs(&["127.0.0.2:5270", "[::1]:5270"])
        );
        assert_eq!(
            c.core.as_ref().unwrap().direct_tls_listen,
            addrs(&["127.0.0.2:5223"])
        );
        // Named, it is what it says, off included.
        let c = parse(&format!(
            "[s2s]\nlisten = [\"127.0.0.2:5269\"]\ndirect_tls_listen = []\n{base}"
        ))
        .unwrap();
        assert!(c.s2s.direct_tls_listen.is_empty());
        // Without listen either: the defaults (all interfaces), as before.
        let c = parse(base).unwrap();
        assert_eq!(c.s2s.direct_tls_listen, addrs(&["0.0.0.0:5270"]));
    }

    #[test]
    fn example_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let text = include_str!("../config/fedgate.toml");
        let c = Config::from_toml(text, &dir).unwrap();
        // One backend, the embedded core: ready after the one command.
        assert_eq!(
            c.local_domains().collect::<Vec<_>>(),
            [
                "example.test",
                "conference.example.test",
                "upload.example.test"
            ]
        );
        let core = c.core.as_ref().expect("the example runs an embedded core");
        assert_eq!(core.domain[0].name, "example.test");
        assert_eq!(
            core.database,
            crate::core::config::Database::Sqlite(dir.join("fedgate-core.sqlite"))
        );
        assert!(core.listen.iter().all(|a| a.ip().is_loopback()));
        assert!(c.s2s.listen.iter().all(|a| a.ip().is_loopback()));
        assert!(c.component.listen.ip().is_loopback());
        assert!(c.metrics.listen.ip().is_loopback());
        assert_eq!(
            c.s2s.dialback_secret_file,
            dir.join("fedgate-dialback.secret")
        );
        // Loading by path gives the same result.
        let loaded = Config::load(&dir.join("fedgate.toml")).unwrap();
        assert_eq!(loaded.s2s.listen, c.s2s.listen);
    }

    #[test]
    fn a_muc_section_serves_its_domain_with_the_in_process_secret() {
        let c = parse(&format!("{MINIMAL}[muc]\ndomain = \"Conf.A.Test\"\n")).unwrap();
        let muc = c.muc.as_ref().unwrap();
        assert_eq!(muc.domain, "conf.a.test");
        assert_eq!(muc.history_length, 20);
        assert_eq!(
            c.local_domains().collect::<Vec<_>>(),
            ["a.test", "conf.a.test"]
        );
        let secrets = c.backend_secrets().unwrap();
        assert_eq!(secrets["conf.a.test"], crate::muc::in_process_secret());
        // The same secret each time, so a reload keeps the link attached.
        assert_eq!(
            c.backend_secrets().unwrap()["conf.a.test"],
            secrets["conf.a.test"]
        );
        let with_muc = |muc: &str| parse(&format!("{MINIMAL}[muc]\n{muc}\n")).unwrap_err();
        assert_eq!(invalid_key(with_muc("domain = \"a.test\"")), "muc.domain");
        assert_eq!(invalid_key(with_muc("history_length = 5")), "muc.domain");
        assert_eq!(
            invalid_key(with_muc("domain = \"c.a.test\"\nhistory_length = 500")),
            "muc.history_length"
        );
        assert_eq!(
            invalid_key(with_muc("domain = \"c.a.test\"\nmax_rooms = 0")),
            "muc.max_rooms"
        );
        assert!(parse(MINIMAL).unwrap().muc.is_none());
    }

    #[test]
    fn an_upload_section_serves_its_domain_and_needs_a_certificate_for_its_urls() {
        let cert = "[[tls.certificate]]\ndomains = [\"upload.a.test\"]\ncert = \"u.crt\"\nkey = \"u.key\"\nself_signed = true\n";
        let c = parse(&format!(
            "{MINIMAL}{cert}[upload]\ndomain = \"Upload.A.Test\"\nlisten = \"127.0.0.1:0\"\n"
        ))
        .unwrap();
        let u = c.upload.as_ref().unwrap();
        assert_eq!(u.domain, "upload.a.test");
        assert_eq!(u.directory, Path::new("/tmp/fedgate-uploads"));
        assert!(c.local_domains().any(|d| d == "upload.a.test"));
        assert_eq!(
            c.backend_secrets().unwrap()["upload.a.test"],
            crate::component::in_process_secret()
        );
        let with = |extra: &str, upload: &str| {
            invalid_key(parse(&format!("{MINIMAL}{extra}[upload]\n{upload}\n")).unwrap_err())
        };
        assert_eq!(with(cert, "domain = \"a.test\""), "upload.domain");
        assert_eq!(
            with(
                &format!("{cert}[muc]\ndomain = \"upload.a.test\"\n"),
                "domain = \"upload.a.test\""
            ),
            "upload.domain"
        );
        // No certificate covers the host of the URLs.
        assert_eq!(with("", "domain = \"upload.a.test\""), "upload.url");
        assert_eq!(
            with(
                cert,
                "domain = \"upload.a.test\"\nurl = \"https://files.a.test/\""
            ),
            "upload.url"
        );
        assert_eq!(
            with(
                cert,
                "domain = \"upload.a.test\"\nlisten = \"127.0.0.1:5347\""
            ),
            "upload.listen"
        );
    }

    #[test]
    fn core_section_is_checked_against_the_backends() {
        let with_core = |core: &str| parse(&format!("{MINIMAL}[core]\n{core}\n"));
        let c =
            with_core("listen = [\"127.0.0.1:5222\"]\n[[core.domain]]\nname = \"A.Test\"").unwrap();
        let core = c.core.unwrap();
        assert_eq!(core.domain[0].name, "a.test");
        assert_eq!(
            core.database,
            crate::core::config::Database::Sqlite("/tmp/fedgate-core.sqlite".into())
        );
        // Every domain and alias must be a backend of this gateway.
        let e =
            with_core("[[core.domain]]\nname = \"a.test\"\naliases = [\"b.test\"]").unwrap_err();
        assert_eq!(invalid_key(e), "core.domain[0]");
        // The core's listeners may not clash with the gateway's.
        let e = with_core("listen = [\"127.0.0.1:9269\"]\n[[core.domain]]\nname = \"a.test\"")
            .unwrap_err();
        assert!(e.to_string().contains("core.listen[0]"), "{e}");
        // Its own rules apply, with `core.` keys.
        let e = with_core("session_queue = 0\n[[core.domain]]\nname = \"a.test\"").unwrap_err();
        assert_eq!(invalid_key(e), "core.session_queue");
        // Without [core], nothing changes.
        assert!(parse(MINIMAL).unwrap().core.is_none());
    }

    #[test]
    fn defaults_applied_to_minimal_file() {
        let c = parse(MINIMAL).unwrap();
        let s = &c.s2s;
        assert_eq!(s.listen, ["0.0.0.0:5269".parse().unwrap()]);
        assert_eq!(s.connect_timeout, Duration::from_secs(10));
        assert_eq!(s.negotiation_timeout, Duration::from_secs(30));
        assert_eq!(s.dialback_timeout, Duration::from_secs(15));
        assert_eq!(s.idle_timeout, Duration::from_secs(600));
        assert_eq!(s.max_stanza_bytes, 524_288);
        assert_eq!(s.max_negotiation_stanza_bytes, 8192);
        assert_eq!(s.max_depth, 32);
        assert_eq!(s.max_attributes, 64);
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.queue_max_stanzas, 1000);
        assert_eq!(s.queue_max_bytes, 4_194_304);
        assert!(s.route.is_empty());
        assert!(c.dns.nameservers.is_none());
        assert_eq!(c.dns.negative_ttl, Duration::from_secs(30));
        assert_eq!(c.dns.timeout, Duration::from_secs(5));
        assert_eq!(c.federation.mode, FederationMode::Open);
        assert_eq!(c.component.listen, "127.0.0.1:5347".parse().unwrap());
        assert!(!c.component.replace_on_conflict);
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.listen, "127.0.0.1:9269".parse().unwrap());
        assert_eq!(c.component.backend[0].secret().unwrap(), "s3cret");
    }

    #[test]
    fn the_drain_lasts_10_s_by_default_zero_is_allowed_and_over_5_min_refused() {
        assert_eq!(
            parse(MINIMAL).unwrap().s2s.drain_timeout,
            Duration::from_secs(10)
        );
        let zero = parse(&format!("[s2s]\ndrain_timeout = \"0s\"\n{MINIMAL}")).unwrap();
        assert_eq!(zero.s2s.drain_timeout, Duration::ZERO);
        let e = parse(&format!("[s2s]\ndrain_timeout = \"6m\"\n{MINIMAL}")).unwrap_err();
        let message = e.to_string();
        assert!(message.contains("TimeoutStopSec"), "{message}");
        assert_eq!(invalid_key(e), "s2s.drain_timeout");
    }

    #[test]
    fn abuse_limits_have_safe_defaults_and_zero_is_refused_naming_the_key() {
        let s = parse(MINIMAL).unwrap().s2s;
        assert_eq!(s.max_connections_per_ip, 32);
        assert_eq!(s.max_streams_per_domain, 32);
        assert_eq!(s.max_domain_pairs_per_stream, 100);
        assert_eq!(s.max_pending_verifications, 16);
        assert_eq!(s.max_pending_verifications_total, 1024);
        assert_eq!(s.max_inbound_bytes_per_second, 1_048_576);
        for key in [
            "max_connections_per_ip",
            "max_streams_per_domain",
            "max_domain_pairs_per_stream",
            "max_pending_verifications",
            "max_pending_verifications_total",
            "max_inbound_bytes_per_second",
        ] {
            let e = parse(&format!("[s2s]\n{key} = 0\n{MINIMAL}")).unwrap_err();
            let message = e.to_string();
            assert!(message.contains("the default is"), "{message}");
            assert_eq!(invalid_key(e), format!("s2s.{key}"));
        }
        let e = parse(&format!(
            "[s2s]\nmax_pending_verifications = 20\nmax_pending_verifications_total = 10\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(invalid_key(e), "s2s.max_pending_verifications");
    }

    #[test]
    fn peer_limits_and_routes_are_checked() {
        let with = |tables: &str| parse(&format!("{MINIMAL}{tables}"));
        let c = with(
            "[[federation.peer]]\ndomain = \"B.Test\"\nmax_stanza_bytes = 1000\nmax_inbound_bytes_per_second = 5000\nroute = \"XMPP.B.Test:5269\"\n",
        )
        .unwrap();
        let p = &c.federation.peer[0];
        assert_eq!(p.max_stanza_bytes, Some(1000));
        assert_eq!(p.max_inbound_bytes_per_second, Some(5000));
        assert_eq!(p.route.as_ref().unwrap().to_string(), "xmpp.b.test:5269");
        for (tables, key) in [
            (
                "[[federation.peer]]\ndomain = \"b.test\"\nmax_stanza_bytes = 0\n",
                "federation.peer[0].max_stanza_bytes",
            ),
            (
                "[[federation.peer]]\ndomain = \"b.test\"\nmax_inbound_bytes_per_second = 0\n",
                "federation.peer[0].max_inbound_bytes_per_second",
            ),
            // Larger than the outbound queue could ever hold.
            (
                "[[federation.peer]]\ndomain = \"b.test\"\nmax_stanza_bytes = 5000000\n",
                "federation.peer[0].max_stanza_bytes",
            ),
            // One route per domain, whichever table it is in.
            (
                "[[s2s.route]]\ndomain = \"b.test\"\ntarget = \"127.0.0.1:5269\"\n[[federation.peer]]\ndomain = \"b.test\"\nroute = \"127.0.0.2:5269\"\n",
                "federation.peer[0].route",
            ),
            (
                "[[federation.peer]]\ndomain = \"b.test\"\nroute = \"127.0.0.1:5269\"\n[[federation.peer]]\ndomain = \"B.test\"\nroute = \"127.0.0.2:5269\"\n",
                "federation.peer[1].route",
            ),
            (
                "[[federation.peer]]\ndomain = \"a.test\"\nroute = \"127.0.0.1:5269\"\n",
                "federation.peer[0].route",
            ),
        ] {
            assert_eq!(invalid_key(with(tables).unwrap_err()), key, "{tables}");
        }
        let e = with("[[federation.peer]]\ndomain = \"b.test\"\nroute = \"b.test\"\n").unwrap_err();
        assert!(e.to_string().contains("no port"), "{e}");
    }

    #[test]
    fn durations_are_written_in_their_largest_whole_unit_and_read_back() {
        use std::time::Duration as D;
        for (d, text) in [
            (D::from_secs(365 * 86_400), "365d"),
            (D::from_secs(86_400), "1d"),
            (D::from_secs(7_200), "2h"),
            (D::from_secs(600), "10m"),
            (D::from_secs(90), "90s"),
            (D::from_millis(250), "250ms"),
            (D::ZERO, "0s"),
        ] {
            assert_eq!(duration::text(d), text);
            assert_eq!(humantime::parse_duration(text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn durations_parse() {
        let c = parse(&format!(
            "[s2s]\nconnect_timeout = \"500ms\"\nidle_timeout = \"1h\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.s2s.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.s2s.idle_timeout, Duration::from_secs(3600));
        let e = parse(&format!("[s2s]\nidle_timeout = \"0s\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(invalid_key(e), "s2s.idle_timeout");
    }

    #[test]
    fn unknown_key_rejected_with_its_name() {
        let e = parse(&format!("[s2s]\nlisten_on = []\n{MINIMAL}")).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::Parse { .. }));
        assert!(msg.contains("listen_on"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("[s2s]"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");

        let e = parse(&format!("{MINIMAL}secrte = \"x\"\n")).unwrap_err();
        assert!(e.to_string().contains("secrte"), "{e}");
    }

    #[test]
    fn missing_backend_or_secret() {
        let e = parse("").unwrap_err();
        assert_eq!(invalid_key(e), "component.backend");
        let e = parse("[[component.backend]]\ndomain = \"a.test\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("component.backend[0]: neither"), "{msg}");
        let e = parse("[[component.backend]]\ndomain = \"a.test\"\nsecret = \"\"\n").unwrap_err();
        assert_eq!(invalid_key(e), "component.backend[0].secret");
    }

    #[test]
    fn both_secrets_refused_with_file_in_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fedgate.toml");
        std::fs::write(
            &path,
            "[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\nsecret_file = \"s\"\n",
        )
        .unwrap();
        let msg = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "{}: component.backend[0]: both `secret` and `secret_file` are set; keep one of them",
                path.display()
            )
        );
    }

    #[test]
    fn secret_file_relative_to_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.secret"), "  file-secret\n").unwrap();
        let path = dir.path().join("fedgate.toml");
        std::fs::write(
            &path,
            "[s2s]\ndialback_secret_file = \"db.secret\"\nrequire_encryption = false\n\
             [[component.backend]]\ndomain = \"a.test\"\nsecret_file = \"a.secret\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.component.backend[0].secret_file,
            Some(dir.path().join("a.secret"))
        );
        assert_eq!(c.component.backend[0].secret().unwrap(), "file-secret");
        assert_eq!(c.s2s.dialback_secret_file, dir.path().join("db.secret"));

        // Absolute paths are kept; a missing file is reported against its key.
        let e =
            parse("[[component.backend]]\ndomain = \"a.test\"\nsecret_file = \"/nonexistent/x\"\n")
                .unwrap_err();
        assert_eq!(invalid_key(e), "component.backend[0].secret_file");
    }

    #[test]
    fn tls_defaults_and_checks() {
        let c = parse(MINIMAL).unwrap();
        assert!(c.s2s.require_encryption);
        assert!(!c.s2s.secure_auth);
        assert_eq!(c.s2s.direct_tls_listen, ["0.0.0.0:5270".parse().unwrap()]);
        assert!(c.tls.webpki_roots);
        assert_eq!(c.tls.certificate[0].cert, Path::new("/tmp/a.crt"));

        // Encryption required and no certificate for a local domain: named, with the fix.
        let e = parse("[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no certificate for a.test"), "{msg}");
        assert!(msg.contains("self_signed = true"), "{msg}");
        // A wildcard covers one label, not the apex and not two labels.
        assert!(certificate_covers("*.a.test", "x.a.test"));
        assert!(!certificate_covers("*.a.test", "a.test"));
        assert!(!certificate_covers("*.a.test", "y.x.a.test"));
        let e = parse(&MINIMAL.replace("[\"a.test\"]", "[\"*.a.test\"]")).unwrap_err();
        assert_eq!(invalid_key(e), "tls.certificate");
        // Files must exist unless they are to be created.
        let e = parse(&MINIMAL.replace("self_signed = true", "")).unwrap_err();
        assert_eq!(invalid_key(e), "tls.certificate[0].cert");
        let e = parse(&format!(
            "[tls]\nca_files = [\"/nonexistent/ca.pem\"]\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(invalid_key(e), "tls.ca_files[0]");
        // Listeners may not collide across kinds.
        let e = parse(&format!(
            "[s2s]\nlisten = [\"127.0.0.1:5269\"]\ndirect_tls_listen = [\"127.0.0.1:5269\"]\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(invalid_key(e), "s2s.direct_tls_listen[0]");
    }

    #[test]
    fn federation_peers() {
        let hex_pin = "ab".repeat(32);
        let c = parse(&format!(
            "[[federation.peer]]\ndomain = \"B.test\"\ntls = \"optional\"\nauth = \"dialback\"\n\
             pin_sha256 = [\"{hex_pin}\", \"{}\"]\n{MINIMAL}",
            "q83vq83vq83vq83vq83vq83vq83vq83vq83vq83vq80="
        ))
        .unwrap();
        let p = &c.federation.peer[0];
        assert_eq!(p.domain, "b.test");
        assert_eq!(p.tls, Some(TlsRequirement::Optional));
        assert_eq!(p.auth, AuthRequirement::Dialback);
        assert_eq!(p.secure_auth, None);
        let pins = p.pins().unwrap();
        assert_eq!(pins[0], [0xab; 32]);
        assert_eq!(&pins[1][..3], &[0xab, 0xcd, 0xef]);

        let e = parse(&format!(
            "[[federation.peer]]\ndomain = \"b.test\"\npin_sha256 = [\"abcd\"]\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(invalid_key(e), "federation.peer[0].pin_sha256");
        let e = parse(&format!(
            "[[federation.peer]]\ndomain = \"b.test\"\ntls = \"optional\"\nauth = \"external\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(invalid_key(e), "federation.peer[0].auth");
    }

    #[test]
    fn duplicate_and_invalid_domains() {
        let dup = "[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n\
                   [[component.backend]]\ndomain = \"A.test.\"\nsecret = \"y\"\n";
        let e = parse(dup).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("component.backend[1].domain"), "{msg}");
        assert!(msg.contains("component.backend[0]"), "{msg}");

        let e = parse("[[component.backend]]\ndomain = \"a..test\"\nsecret = \"x\"\n").unwrap_err();
        assert_eq!(invalid_key(e), "component.backend[0].domain");
    }

    #[test]
    fn domains_normalised() {
        let c = parse(
            "[federation]\nmode = \"allowlist\"\nallow = [\"*.Example.ORG\", \"B.test.\"]\n\
             [[s2s.route]]\ndomain = \"Remote.TEST\"\ntarget = \"XMPP.remote.test:5270\"\n\
             [[tls.certificate]]\ndomains = [\"MÜNCHEN.test\", \"*.Xn--Mnchen-3ya.TEST\"]\n\
             cert = \"m.crt\"\nkey = \"m.key\"\nself_signed = true\n\
             [[component.backend]]\ndomain = \"MÜNCHEN.test\"\nsecret = \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            c.tls.certificate[0].domains,
            ["münchen.test", "*.münchen.test"]
        );
        assert_eq!(c.local_domains().collect::<Vec<_>>(), ["münchen.test"]);
        assert_eq!(c.federation.allow, ["*.example.org", "b.test"]);
        assert_eq!(c.s2s.route[0].domain, "remote.test");
        assert_eq!(c.s2s.route[0].target.to_string(), "xmpp.remote.test:5270");
    }

    #[test]
    fn route_targets() {
        let with_route = |target: &str| {
            parse(&format!(
                "[[s2s.route]]\ndomain = \"b.test\"\ntarget = \"{target}\"\n{MINIMAL}"
            ))
        };
        let c = with_route("127.0.0.1:5270").unwrap();
        assert_eq!(
            c.s2s.route[0].target.ip(),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(c.s2s.route[0].target.port, 5270);
        let c = with_route("[::1]:5270").unwrap();
        assert_eq!(c.s2s.route[0].target.host, "::1");
        assert_eq!(c.s2s.route[0].target.to_string(), "[::1]:5270");

        for bad in [
            "b.test",
            "b.test:0",
            "b.test:70000",
            ":5269",
            "::1:5269",
            "[::1]5269",
        ] {
            let e = with_route(bad).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, ConfigError::Parse { .. }), "{bad}: {msg}");
            assert!(msg.contains("host:port"), "{bad}: {msg}");
        }
        let e = with_route("bad_host:5269").unwrap_err();
        assert_eq!(invalid_key(e), "s2s.route[0].target");

        // A route for a local domain makes no sense.
        let e = parse(&format!(
            "[[s2s.route]]\ndomain = \"a.test\"\ntarget = \"127.0.0.1:5270\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(invalid_key(e), "s2s.route[0].domain");
    }

    #[test]
    fn federation_patterns() {
        let with = |p: &str| parse(&format!("[federation]\ndeny = [\"{p}\"]\n{MINIMAL}"));
        assert!(with("*.example.org").is_ok());
        assert!(with("example.org").is_ok());
        for bad in ["*", "a.*.org", "example.*", "**.org", "*.1.2.3.4"] {
            let e = with(bad).unwrap_err();
            assert_eq!(invalid_key(e), "federation.deny[0]", "{bad}");
        }
        let e = parse(&format!("[federation]\nmode = \"closed\"\n{MINIMAL}")).unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
    }

    #[test]
    fn limits_checked() {
        let e = parse(&format!("[s2s]\nmax_depth = 0\n{MINIMAL}")).unwrap_err();
        assert_eq!(invalid_key(e), "s2s.max_depth");
        let e = parse(&format!(
            "[s2s]\nmax_stanza_bytes = 4096\nmax_negotiation_stanza_bytes = 8192\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(invalid_key(e), "s2s.max_negotiation_stanza_bytes");
        let e = parse(&format!("[s2s]\nlisten = []\n{MINIMAL}")).unwrap_err();
        assert_eq!(invalid_key(e), "s2s.listen");
        let e = parse(&format!("[dns]\nnameservers = []\n{MINIMAL}")).unwrap_err();
        assert_eq!(invalid_key(e), "dns.nameservers");
        let e = parse(&format!(
            "[metrics]\nlisten = \"127.0.0.1:5347\"\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(invalid_key(e), "metrics.listen");
    }

    #[test]
    fn dns_caching_and_timeout_checked() {
        let c = parse(&format!(
            "[dns]\nnameservers = [\"127.0.0.1:53\"]\nnegative_ttl = \"0s\"\ntimeout = \"300ms\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.dns.negative_ttl, Duration::ZERO);
        assert_eq!(c.dns.timeout, Duration::from_millis(300));
        assert!(parse(&format!("[dns]\nnegative_ttl = \"3h\"\n{MINIMAL}")).is_ok());
        let e = parse(&format!("[dns]\nnegative_ttl = \"4h\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(invalid_key(e), "dns.negative_ttl");
        let e = parse(&format!("[dns]\ntimeout = \"0s\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(invalid_key(e), "dns.timeout");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = format!(
            "[s2s]\nmax_depth = 0\nidle_timeout = \"0s\"\n[dns]\ntimeout = \"0s\"\n\
             [[federation.peer]]\ndomain = \"b.test\"\npin_sha256 = [\"abcd\"]\n{MINIMAL}\
             [[component.backend]]\ndomain = \"a..test\"\n"
        );
        let config: Config = toml::from_str(&text).unwrap();
        let keys: Vec<String> = config.problems().into_iter().map(invalid_key).collect();
        assert_eq!(
            keys,
            [
                "s2s.idle_timeout",
                "s2s.max_depth",
                "component.backend[1].domain",
                "component.backend[1]",
                "federation.peer[0].pin_sha256",
                "dns.timeout",
            ]
        );
        // `validate` and `from_toml` give the first.
        assert_eq!(invalid_key(parse(&text).unwrap_err()), "s2s.idle_timeout");
        assert!(parse(MINIMAL).unwrap().problems().is_empty());
    }

    #[test]
    fn the_effective_config_has_every_default_and_no_secret() {
        let c = parse(&format!(
            "[[s2s.route]]\ndomain = \"b.test\"\ntarget = \"[::1]:5270\"\n{MINIMAL}"
        ))
        .unwrap();
        let text = toml::to_string(&c).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("secret = \"<redacted>\""), "{text}");
        for line in [
            "negotiation_timeout = \"30s\"",
            "idle_timeout = \"10m\"",
            "max_stanza_bytes = 524288",
            "target = \"[::1]:5270\"",
            "mode = \"open\"",
            "webpki_roots = true",
            "cert = \"/tmp/a.crt\"",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        // It reads back as the same configuration (the secret aside).
        let back = parse(&text).unwrap();
        assert_eq!(toml::to_string(&back).unwrap(), text);
    }

    #[test]
    fn secrets_not_in_debug() {
        let c = parse(MINIMAL).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn io_error_names_file() {
        let e = Config::load(Path::new("/nonexistent/fedgate.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(
            e.to_string().starts_with("/nonexistent/fedgate.toml: "),
            "{e}"
        );
    }
}
