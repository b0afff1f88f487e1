//! `[dns]`: how remote domains are resolved.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

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
