//! `[s2s]` and `[[s2s.route]]`: the server-to-server listeners, timeouts, limits and static
//! routes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::xml::framer::Limits;

use super::duration;

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
    /// Outbound piggybacking (XEP-0220 §2.6.1, sender multiplexing): when a second local
    /// domain (a component's next to the core's) sends to a remote domain that an
    /// established outbound link already reaches, that link carries it too, after a
    /// `<db:result/>` for the new pair is answered `valid`, instead of a TCP+TLS connection
    /// of its own. A peer that refuses it (`invalid`, a dialback error, a stream error, no
    /// answer within `negotiation_timeout`) gets a link per pair from then on. Default
    /// `true`; `[[federation.peer]] piggyback = false` turns it off for one peer.
    pub piggyback: bool,
    /// Most domain pairs one outbound link carries, its own pair included (see
    /// `piggyback`). Default `32`; `1` keeps one link per pair. A pair beyond it gets a link
    /// of its own. Too high puts many pairs behind one TCP connection's head-of-line
    /// blocking and makes one lost link cost them all a reconnection; too low opens more
    /// connections than needed. fedgate as a peer accepts `max_domain_pairs_per_stream`.
    pub max_outbound_pairs_per_stream: usize,
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

/// The framer limits that follow from the section.
impl S2sConfig {
    /// Limits before authentication: small, since anyone can connect.
    pub fn negotiation_limits(&self) -> Limits {
        Limits {
            max_stanza_bytes: self.max_negotiation_stanza_bytes,
            max_depth: self.max_depth,
            max_attributes: self.max_attributes,
        }
    }

    /// Limits once the peer is authenticated.
    pub fn stanza_limits(&self) -> Limits {
        Limits {
            max_stanza_bytes: self.max_stanza_bytes,
            max_depth: self.max_depth,
            max_attributes: self.max_attributes,
        }
    }
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
            piggyback: true,
            max_outbound_pairs_per_stream: 32,
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
