//! Where a remote domain's XMPP server is: static routes first, then DNS.
//!
//! For now the lookup follows RFC 6120 §3.2.2's fallback: the domain's A/AAAA records on port
//! 5269. SRV routing (RFC 6120 §3.2.1, `_xmpp-server._tcp` / `_xmpps-server._tcp`) lands with the
//! "Outbound federation" work and plugs in here, behind [`Resolver::targets`].
//!
//! `[dns] nameservers` replaces the system resolver, so that tests (and split-horizon
//! deployments) never leak a lookup to the machine's resolver.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::config::{Config, DnsConfig};

/// The default s2s port when DNS gives no port (RFC 6120 §3.2.2).
pub const DEFAULT_S2S_PORT: u16 = 5269;

/// Why a domain has no address to connect to. Each is final for this attempt and bounces the
/// stanzas waiting for the domain with `remote-server-not-found`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The name does not exist or has no A/AAAA record.
    #[error("no SRV or A/AAAA record for {domain}")]
    NoRecords { domain: String },
    /// The domain's SRV records say it offers no s2s service (a lone `.` target, RFC 2782).
    #[error("{domain} offers no XMPP server-to-server service (its SRV target is \".\")")]
    NoService { domain: String },
    /// An SRV target (or a route's host) has no A/AAAA record.
    #[error("no A/AAAA record for {host}")]
    NoAddress { host: String },
    /// The resolver failed (timeout, SERVFAIL, unreachable nameserver).
    #[error("DNS lookup for {domain} failed: {reason}")]
    Lookup { domain: String, reason: String },
}

/// One place to connect to, in the order it should be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name the address came from (the domain itself, or a static route's host).
    pub host: String,
    pub addr: SocketAddr,
    /// TLS from the first byte (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

/// Where a candidate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A `[[s2s.route]]`.
    Route,
    /// An SRV record: `_xmpps-server._tcp` when `direct_tls`, else `_xmpp-server._tcp`.
    Srv { priority: u16, weight: u16 },
    /// No SRV record: the domain itself on port 5269 (RFC 6120 §3.2.2).
    Fallback,
}

/// A host to connect to, before its addresses are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
    pub origin: Origin,
}

/// The hosts to try for a domain, in the order to try them, and what DNS answered, for
/// traces and `fedgate check dns`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub domain: String,
    pub candidates: Vec<Candidate>,
    /// One line per DNS answer or notable fact (e.g. "_xmpp-server._tcp.b.test: NXDOMAIN").
    pub answers: Vec<String>,
}

/// Finds targets for remote domains. Cheap to clone (the resolver and route table are shared).
#[derive(Clone)]
pub struct Resolver {
    dns: TokioResolver,
    /// `[[s2s.route]]`: domain → (host, port, direct TLS). Consulted before DNS.
    routes: Arc<HashMap<String, (String, u16, bool)>>,
}

impl Resolver {
    /// Builds the resolver from `[dns]` and `[[s2s.route]]`.
    pub fn from_config(config: &Config) -> Result<Resolver, ResolveError> {
        let dns = build_dns(&config.dns)?;
        let routes = config
            .s2s
            .route
            .iter()
            .map(|r| {
                (
                    r.domain.clone(),
                    (r.target.host.clone(), r.target.port, r.direct_tls),
                )
            })
            .collect();
        Ok(Resolver {
            dns,
            routes: Arc::new(routes),
        })
    }

    /// The candidates for `domain`, in the order to try them: a static route, else the
    /// merged SRV records, else the domain on port 5269.
    pub async fn plan(&self, domain: &str) -> Result<Plan, ResolveError> {
        let candidate = match self.routes.get(domain) {
            Some((host, port, direct)) => Candidate {
                host: host.clone(),
                port: *port,
                direct_tls: *direct,
                origin: Origin::Route,
            },
            None => Candidate {
                host: domain.to_string(),
                port: DEFAULT_S2S_PORT,
                direct_tls: false,
                origin: Origin::Fallback,
            },
        };
        Ok(Plan {
            domain: domain.to_string(),
            candidates: vec![candidate],
            answers: Vec::new(),
        })
    }

    /// The addresses of `host` (an IP literal is its own address), in the order to try them.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{host}.");
        match self.dns.lookup_ip(fqdn.as_str()).await {
            Ok(found) => {
                let mut addrs: Vec<IpAddr> = found.iter().collect();
                addrs.sort_by_key(|ip| ip.is_ipv4());
                if addrs.is_empty() {
                    Err(ResolveError::NoAddress {
                        host: host.to_string(),
                    })
                } else {
                    Ok(addrs)
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Err(ResolveError::NoAddress {
                host: host.to_string(),
            }),
            Err(e) => Err(ResolveError::Lookup {
                domain: host.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// The addresses to try for `domain`, in order.
    pub async fn targets(&self, domain: &str) -> Result<Vec<Target>, ResolveError> {
        let (host, port, direct_tls) = match self.routes.get(domain) {
            Some((host, port, direct)) => (host.as_str(), *port, *direct),
            None => (domain, DEFAULT_S2S_PORT, false),
        };
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(vec![Target {
                host: host.to_string(),
                addr: SocketAddr::new(ip, port),
                direct_tls,
            }]);
        }
        // A trailing dot makes the name fully qualified: no search-domain suffixes are tried.
        let fqdn = format!("{host}.");
        match self.dns.lookup_ip(fqdn.as_str()).await {
            Ok(found) => {
                let mut addrs: Vec<Target> = found
                    .iter()
                    .map(|ip| Target {
                        host: host.to_string(),
                        addr: SocketAddr::new(ip, port),
                        direct_tls,
                    })
                    .collect();
                // IPv6 first, then IPv4: a simple stand-in for happy eyeballs (RFC 8305).
                addrs.sort_by_key(|t| t.addr.is_ipv4());
                if addrs.is_empty() {
                    Err(ResolveError::NoRecords {
                        domain: domain.to_string(),
                    })
                } else {
                    Ok(addrs)
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Err(ResolveError::NoRecords {
                domain: domain.to_string(),
            }),
            Err(e) => Err(ResolveError::Lookup {
                domain: domain.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

fn build_dns(config: &DnsConfig) -> Result<TokioResolver, ResolveError> {
    let lookup_err = |e: &dyn std::fmt::Display| ResolveError::Lookup {
        domain: "(resolver setup)".into(),
        reason: e.to_string(),
    };
    let nameservers = config.nameservers.as_deref().unwrap_or_default();
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| lookup_err(&e))?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    // Answers are cached within their TTLs by hickory's cache; keep failures brief so a fixed
    // DNS record is picked up quickly.
    opts.negative_max_ttl = Some(std::time::Duration::from_secs(30));
    opts.attempts = 2;
    builder.build().map_err(|e| lookup_err(&e))
}
