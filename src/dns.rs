//! Where a remote domain's XMPP server is (RFC 6120 §3.2): static routes first, then DNS SRV
//! records (RFC 2782, XEP-0368), then the domain's own address records.
//!
//! [`Resolver::plan`] decides which hosts to try, in order:
//! 1. A `[[s2s.route]]` for the domain wins and DNS is not asked ([`Origin::Route`]).
//! 2. Else `_xmpps-server._tcp.DOMAIN.` (direct TLS, XEP-0368) and `_xmpp-server._tcp.DOMAIN.`
//!    (STARTTLS, RFC 6120 §3.2.1) are queried at the same time and their records merged into
//!    one set. XEP-0368 §3 mixes priorities and weights across both services, so the domain's
//!    operator, not we, chooses between direct TLS and STARTTLS ([`Origin::Srv`]).
//! 3. The set is sorted by priority; within one priority the order is drawn by weight as RFC
//!    2782 describes (`order_srv`). The draw is made afresh on every call, from cached
//!    records, so that connections spread over a domain's servers as its weights say.
//! 4. A lone SRV record with target `.` says the service is "decidedly not available" (RFC
//!    2782): that service is absent. If no service has a usable record and one of them said
//!    `.`, the domain has no s2s service at all: [`ResolveError::NoService`], and no A/AAAA
//!    fallback either.
//! 5. No SRV record at all (NXDOMAIN, no SRV records, or a failed SRV lookup): the domain
//!    itself on port 5269 (RFC 6120 §3.2.2, [`Origin::Fallback`]).
//!
//! [`Resolver::addresses`] then resolves one candidate host: AAAA and A at the same time,
//! interleaved IPv6 first (RFC 8305 §4), ready for [`crate::dial::happy_eyeballs`]. Callers
//! resolve a candidate only when the ones before it failed, so the common case costs one
//! host's lookups.
//!
//! Every DNS fact goes into [`Plan::answers`] as one readable line, for connection traces;
//! [`Resolver::report`] adds each candidate's addresses and what is wrong, for
//! `fedgate check dns`.
//!
//! # Caching
//! hickory's response cache keeps every answer (SRV, A, AAAA, CNAME) for its TTL, so planning
//! for a known domain sends no query. Negative answers (NXDOMAIN, no records) are kept for the
//! zone's negative TTL (RFC 2308) but at most `[dns] negative_ttl`: a storm of stanzas to a
//! missing domain costs one query, and a domain that fixes its DNS is seen again soon.
//! Failures (timeouts, SERVFAIL) are not cached.
//!
//! `[dns] nameservers` replaces the system resolver and `/etc/hosts`, so that tests (and
//! split-horizon deployments) never leak a lookup to the machine's resolver.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::config::{Config, DnsConfig};

/// The default s2s port when DNS gives no port (RFC 6120 §3.2.2).
pub const DEFAULT_S2S_PORT: u16 = 5269;

/// The SRV service for direct TLS (XEP-0368).
const DIRECT_TLS_SERVICE: &str = "_xmpps-server._tcp";
/// The SRV service for STARTTLS (RFC 6120 §3.2.1).
const STARTTLS_SERVICE: &str = "_xmpp-server._tcp";

/// Why a domain has no address to connect to. Each is final for this attempt and bounces the
/// stanzas waiting for the domain with `remote-server-not-found`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The name does not exist or has no A/AAAA record.
    #[error("no SRV or A/AAAA record for {domain}")]
    NoRecords {
        /// The remote domain.
        domain: String,
    },
    /// The domain's SRV records say it offers no s2s service (a lone `.` target, RFC 2782).
    #[error("{domain} offers no XMPP server-to-server service (its SRV target is \".\")")]
    NoService {
        /// The remote domain.
        domain: String,
    },
    /// An SRV target (or a route's host) has no A/AAAA record.
    #[error("no A/AAAA record for {host}")]
    NoAddress {
        /// The host that has no address.
        host: String,
    },
    /// The resolver failed (timeout, SERVFAIL, unreachable nameserver).
    #[error("DNS lookup for {domain} failed: {reason}")]
    Lookup {
        /// The name being resolved (`(resolver setup)` when the resolver could not be built).
        domain: String,
        /// The resolver's error.
        reason: String,
    },
}

impl ResolveError {
    /// The `fedgate_dns_lookups_total` result label: `not_found` for answers (the domain or
    /// host has nothing for us), `error` when the resolver failed.
    pub fn label(&self) -> &'static str {
        match self {
            ResolveError::Lookup { .. } => "error",
            _ => "not_found",
        }
    }

    /// This error as the cause for `domain` when it came from resolving `candidate`: a
    /// [`Fallback`](Origin::Fallback) host without addresses means the domain has neither SRV
    /// nor A/AAAA records, and the bounce text should say so rather than name a host the
    /// sender never asked for.
    pub fn for_candidate(self, domain: &str, candidate: &Candidate) -> ResolveError {
        match (self, &candidate.origin) {
            (ResolveError::NoAddress { .. }, Origin::Fallback) => ResolveError::NoRecords {
                domain: domain.to_string(),
            },
            (e, _) => e,
        }
    }
}

/// One place to connect to, in the order it should be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name the address came from (an SRV target, the domain itself, or a static
    /// route's host).
    pub host: String,
    /// The address to dial, with the port from the SRV record, the route, or 5269.
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
    Srv {
        /// Lower is tried first (RFC 2782).
        priority: u16,
        /// Within one priority, the relative chance of being tried first (RFC 2782).
        weight: u16,
    },
    /// No SRV record: the domain itself on port 5269 (RFC 6120 §3.2.2).
    Fallback,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Route => f.write_str("static route"),
            Origin::Srv { priority, weight } => {
                write!(f, "SRV priority {priority} weight {weight}")
            }
            Origin::Fallback => f.write_str("no SRV record: the domain itself"),
        }
    }
}

/// A host to connect to, before its addresses are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The host name to resolve: an SRV target, a route's host, or the domain itself.
    pub host: String,
    /// The TCP port: from the SRV record or route, else 5269.
    pub port: u16,
    /// TLS from the first byte (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
    /// Why this host is a candidate; decides how failures are worded.
    pub origin: Origin,
}

/// `host:port, direct TLS|STARTTLS, origin`, e.g. `xmpp.b.test:5269, STARTTLS, SRV priority 0
/// weight 5`.
impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        let tls = if self.direct_tls {
            "direct TLS"
        } else {
            "STARTTLS"
        };
        write!(f, ", {tls}, {}", self.origin)
    }
}

/// The hosts to try for a domain, in the order to try them, and what DNS answered, for
/// traces and `fedgate check dns`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The remote domain planned for.
    pub domain: String,
    /// The hosts to try, in the order to try them.
    pub candidates: Vec<Candidate>,
    /// One line per DNS answer or notable fact, e.g. "_xmpp-server._tcp.b.test: SRV priority 0
    /// weight 5 port 5269 target xmpp.b.test (TTL 3600 s)" or "_xmpps-server._tcp.b.test: SRV
    /// NXDOMAIN (no such name)".
    pub answers: Vec<String>,
}

/// What `fedgate check dns` shows for a domain: every DNS answer, the candidates in the order
/// they would be tried with their addresses, and what is wrong.
#[derive(Debug, Clone)]
pub struct Report {
    /// The domain checked.
    pub domain: String,
    /// The plan's DNS lines, then each candidate's address lines.
    pub answers: Vec<String>,
    /// The candidates in order, or why there are none.
    pub hosts: Result<Vec<HostReport>, ResolveError>,
    /// What stands between fedgate and the domain, each with a fix where one is known.
    pub problems: Vec<String>,
}

/// One candidate of a [`Report`] and what its address lookup gave.
#[derive(Debug, Clone)]
pub struct HostReport {
    /// The candidate as the plan has it.
    pub candidate: Candidate,
    /// In the order they would be dialled.
    pub addresses: Result<Vec<IpAddr>, ResolveError>,
    /// The canonical name when the host is an alias (CNAME).
    pub alias_of: Option<String>,
}

impl Report {
    /// Whether at least one address would be dialled.
    pub fn has_address(&self) -> bool {
        self.address_count() > 0
    }

    fn address_count(&self) -> usize {
        self.hosts.as_ref().map_or(0, |hosts| {
            hosts
                .iter()
                .map(|h| h.addresses.as_ref().map_or(0, Vec::len))
                .sum()
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "DNS answers for {}:", self.domain)?;
        for line in &self.answers {
            writeln!(f, "  {line}")?;
        }
        match &self.hosts {
            Ok(hosts) => {
                writeln!(f, "Order of connection attempts:")?;
                for (i, host) in hosts.iter().enumerate() {
                    writeln!(f, "  {}. {}", i + 1, host.candidate)?;
                    match &host.addresses {
                        Ok(addrs) => {
                            for ip in addrs {
                                writeln!(
                                    f,
                                    "       {}",
                                    SocketAddr::new(*ip, host.candidate.port)
                                )?;
                            }
                        }
                        Err(e) => writeln!(f, "       (no address: {e})")?,
                    }
                }
                let shared_priority = hosts.windows(2).any(|w| {
                    matches!(
                        (&w[0].candidate.origin, &w[1].candidate.origin),
                        (Origin::Srv { priority: a, .. }, Origin::Srv { priority: b, .. }) if a == b
                    )
                });
                if shared_priority {
                    writeln!(
                        f,
                        "  (records of equal priority are ordered by weight, drawn afresh for every connection)"
                    )?;
                }
            }
            Err(e) => writeln!(f, "No connection attempts: {e}")?,
        }
        if !self.problems.is_empty() {
            writeln!(f, "Problems:")?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
        }
        match self.address_count() {
            0 => writeln!(
                f,
                "Result: no address to connect to; stanzas for {} would bounce with remote-server-not-found",
                self.domain
            ),
            1 => writeln!(f, "Result: 1 address to try"),
            n => writeln!(f, "Result: {n} addresses to try"),
        }
    }
}

/// Finds targets for remote domains. Cheap to clone (the resolver, its cache and the route
/// table are shared).
#[derive(Clone)]
pub struct Resolver {
    dns: TokioResolver,
    /// `[[s2s.route]]`: domain → (host, port, direct TLS). Consulted before DNS.
    routes: Arc<HashMap<String, (String, u16, bool)>>,
}

/// Lines collected while planning: the facts, and the subset that is a problem.
#[derive(Default)]
struct Notes {
    answers: Vec<String>,
    problems: Vec<String>,
}

/// One SRV record that names a host, from either service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SrvRecord {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
    direct_tls: bool,
}

impl Resolver {
    /// Builds the resolver from `[dns]`, `[[s2s.route]]` and the `route` of
    /// `[[federation.peer]]` (STARTTLS; validation keeps one route per domain).
    pub fn from_config(config: &Config) -> Result<Resolver, ResolveError> {
        let dns = build_dns(&config.dns)?;
        let peer_routes = config.federation.peer.iter().filter_map(|p| {
            let target = p.route.as_ref()?;
            Some((p.domain.clone(), (target.host.clone(), target.port, false)))
        });
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
            .chain(peer_routes)
            .collect();
        Ok(Resolver {
            dns,
            routes: Arc::new(routes),
        })
    }

    /// The candidates for `domain`, in the order to try them: a static route, else the
    /// merged SRV records, else the domain on port 5269 (see the [module docs](self)).
    pub async fn plan(&self, domain: &str) -> Result<Plan, ResolveError> {
        let mut notes = Notes::default();
        let candidates = self.candidates(domain, &mut notes).await?;
        Ok(Plan {
            domain: domain.to_string(),
            candidates,
            answers: notes.answers,
        })
    }

    async fn candidates(
        &self,
        domain: &str,
        notes: &mut Notes,
    ) -> Result<Vec<Candidate>, ResolveError> {
        if let Some((host, port, direct_tls)) = self.routes.get(domain) {
            let candidate = Candidate {
                host: host.clone(),
                port: *port,
                direct_tls: *direct_tls,
                origin: Origin::Route,
            };
            notes.answers.push(format!(
                "[[s2s.route]] for {domain}: {candidate}; DNS not asked"
            ));
            return Ok(vec![candidate]);
        }
        let fallback = || Candidate {
            host: domain.to_string(),
            port: DEFAULT_S2S_PORT,
            direct_tls: false,
            origin: Origin::Fallback,
        };
        // An IP literal domain has no SRV records to look for (RFC 6120 §3.2.1 is for names).
        if parse_ip(domain).is_some() {
            notes.answers.push(format!(
                "{domain} is an IP address: no SRV lookup, port {DEFAULT_S2S_PORT}"
            ));
            return Ok(vec![fallback()]);
        }
        let direct_name = format!("{DIRECT_TLS_SERVICE}.{domain}.");
        let starttls_name = format!("{STARTTLS_SERVICE}.{domain}.");
        let (direct, starttls) = tokio::join!(
            self.dns.lookup(direct_name.as_str(), RecordType::SRV),
            self.dns.lookup(starttls_name.as_str(), RecordType::SRV),
        );
        let mut records = Vec::new();
        let mut not_available = false;
        for (name, direct_tls, result) in [
            (&direct_name, true, direct),
            (&starttls_name, false, starttls),
        ] {
            let owner = name.trim_end_matches('.');
            not_available |= read_srv(owner, direct_tls, &result, &mut records, notes);
        }
        if records.is_empty() {
            if not_available {
                return Err(ResolveError::NoService {
                    domain: domain.to_string(),
                });
            }
            notes.answers.push(format!(
                "no SRV record: falling back to {domain}:{DEFAULT_S2S_PORT} (RFC 6120 §3.2.2)"
            ));
            return Ok(vec![fallback()]);
        }
        Ok(order_srv(records, |max| rand::random_range(0..=max)))
    }

    /// The addresses of `host` (an IP literal is its own address), in the order to try them:
    /// AAAA and A looked up at the same time, then interleaved IPv6 first (RFC 8305 §4).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Some(ip) = parse_ip(host) {
            return Ok(vec![ip]);
        }
        let (v6, v4) = self.lookup_both(host).await;
        collect_addresses(host, &v6, &v4)
    }

    async fn lookup_both(
        &self,
        host: &str,
    ) -> (Result<Lookup, NetError>, Result<Lookup, NetError>) {
        // A trailing dot makes the name fully qualified: no search-domain suffixes are tried.
        let fqdn = format!("{host}.");
        tokio::join!(
            self.dns.lookup(fqdn.as_str(), RecordType::AAAA),
            self.dns.lookup(fqdn.as_str(), RecordType::A),
        )
    }

    /// Everything fedgate would do to reach `domain`, without connecting: for
    /// `fedgate check dns`. Resolves every candidate, also those a connection would not reach.
    pub async fn report(&self, domain: &str) -> Report {
        let mut notes = Notes::default();
        let hosts = match self.candidates(domain, &mut notes).await {
            Ok(candidates) => {
                let mut hosts = Vec::with_capacity(candidates.len());
                for candidate in candidates {
                    hosts.push(self.host_report(domain, candidate, &mut notes).await);
                }
                Ok(hosts)
            }
            Err(e) => {
                notes.problems.push(match &e {
                    ResolveError::NoService { .. } => format!(
                        "{e}; that is deliberate if {domain} does not federate, else remove the \".\" record or point it at the server"
                    ),
                    other => other.to_string(),
                });
                Err(e)
            }
        };
        Report {
            domain: domain.to_string(),
            answers: notes.answers,
            hosts,
            problems: notes.problems,
        }
    }

    async fn host_report(
        &self,
        domain: &str,
        candidate: Candidate,
        notes: &mut Notes,
    ) -> HostReport {
        let host = candidate.host.as_str();
        if let Some(ip) = parse_ip(host) {
            return HostReport {
                candidate,
                addresses: Ok(vec![ip]),
                alias_of: None,
            };
        }
        let (v6, v4) = self.lookup_both(host).await;
        let mut alias_of = None;
        for (kind, result) in [("AAAA", &v6), ("A", &v4)] {
            match result {
                Ok(lookup) => {
                    let mut ips = Vec::new();
                    for record in lookup.answers() {
                        match &record.data {
                            RData::A(a) => ips.push(a.0.to_string()),
                            RData::AAAA(a) => ips.push(a.0.to_string()),
                            RData::CNAME(c) => alias_of = Some(name_text(&c.0)),
                            _ => {}
                        }
                    }
                    if ips.is_empty() {
                        notes.answers.push(format!("{host}: no {kind} record"));
                    } else {
                        notes
                            .answers
                            .push(format!("{host}: {kind} {}", ips.join(", ")));
                    }
                }
                Err(e) => notes
                    .answers
                    .push(format!("{host}: {kind} {}", negative(e))),
            }
        }
        if let Some(canonical) = &alias_of {
            notes
                .answers
                .push(format!("{host} is an alias (CNAME) for {canonical}"));
            if matches!(candidate.origin, Origin::Srv { .. }) {
                notes.problems.push(format!(
                    "SRV target {host} is an alias (CNAME) for {canonical}: RFC 2782 forbids aliases as targets and some servers do not follow them; point the SRV record at {canonical}"
                ));
            }
        }
        let addresses = collect_addresses(host, &v6, &v4);
        if let Err(e) = &addresses {
            notes.problems.push(match (e, &candidate.origin) {
                (ResolveError::NoAddress { .. }, Origin::Fallback) => format!(
                    "{}; publish {STARTTLS_SERVICE}.{domain} SRV records or an A/AAAA record for {domain}",
                    e.clone().for_candidate(domain, &candidate)
                ),
                (ResolveError::NoAddress { .. }, Origin::Srv { .. }) => format!(
                    "SRV target {host} has no A/AAAA record; add one, or remove the SRV record"
                ),
                (ResolveError::NoAddress { .. }, Origin::Route) => format!(
                    "the [[s2s.route]] host {host} has no A/AAAA record; fix the route's target"
                ),
                (e, _) => e.to_string(),
            });
        }
        HostReport {
            candidate,
            addresses,
            alias_of,
        }
    }
}

/// Reads one SRV answer into `records` and `notes`. Returns whether the service said it is
/// decidedly not available (a lone `.` target).
fn read_srv(
    owner: &str,
    direct_tls: bool,
    result: &Result<Lookup, NetError>,
    records: &mut Vec<SrvRecord>,
    notes: &mut Notes,
) -> bool {
    let lookup = match result {
        Ok(lookup) => lookup,
        Err(e) => {
            notes.answers.push(format!("{owner}: SRV {}", negative(e)));
            return false;
        }
    };
    let srvs: Vec<(&hickory_resolver::proto::rr::rdata::SRV, u32)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv, r.ttl)),
            RData::CNAME(c) => {
                notes.answers.push(format!(
                    "{owner} is an alias (CNAME) for {}",
                    name_text(&c.0)
                ));
                None
            }
            _ => None,
        })
        .collect();
    if srvs.is_empty() {
        notes.answers.push(format!("{owner}: no SRV record"));
        return false;
    }
    if let [(srv, _)] = srvs.as_slice() {
        if srv.target.is_root() {
            notes.answers.push(format!(
                "{owner}: SRV target \".\": the service is decidedly not available (RFC 2782)"
            ));
            return true;
        }
    }
    for (srv, ttl) in srvs {
        if srv.target.is_root() {
            let line = format!(
                "{owner}: SRV target \".\" among other records, ignored (a \".\" must be the only record)"
            );
            notes.answers.push(line.clone());
            notes.problems.push(line);
            continue;
        }
        let target = name_text(&srv.target);
        notes.answers.push(format!(
            "{owner}: SRV priority {} weight {} port {} target {target} (TTL {ttl} s)",
            srv.priority, srv.weight, srv.port
        ));
        records.push(SrvRecord {
            priority: srv.priority,
            weight: srv.weight,
            port: srv.port,
            target,
            direct_tls,
        });
    }
    false
}

/// The draw of [`order_srv`] is a fixed-point number with this many steps per unit of weight.
/// RFC 2782 draws "a uniform random number between 0 and the sum" and takes the first record
/// whose running sum is at least that. Drawn as a plain integer in `0..=sum`, the extra value 0
/// would go to the first record: weights 1 and 3 would split 40/60 instead of 25/75. With a
/// fine-grained draw each record gets its share, and exactly 0, the only draw that picks a
/// weight-0 record while others weigh more, has the "very small chance" the RFC wants.
const DRAW_STEPS: u64 = 1 << 16;

/// Orders SRV records as RFC 2782 says: by priority ascending; within one priority, weight-0
/// records first, then repeatedly draw a number in `0..=total` (the sum of the weights left,
/// in [`DRAW_STEPS`]), take the first record whose running weight sum is at least the draw,
/// and remove it from the draw. `pick(max)` draws uniformly in `0..=max`; it is a parameter so
/// that tests can fix the draws.
fn order_srv(mut records: Vec<SrvRecord>, mut pick: impl FnMut(u64) -> u64) -> Vec<Candidate> {
    // Stable: records of equal priority keep the order DNS gave, weight-0 ones moved first.
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut start = 0;
    while start < records.len() {
        let priority = records[start].priority;
        let end = start
            + records[start..]
                .iter()
                .take_while(|r| r.priority == priority)
                .count();
        for next in start..end {
            let total: u64 = records[next..end].iter().map(|r| u64::from(r.weight)).sum();
            let draw = pick(total * DRAW_STEPS).min(total * DRAW_STEPS);
            let mut running = 0u64;
            let chosen = records[next..end]
                .iter()
                .position(|r| {
                    running += u64::from(r.weight) * DRAW_STEPS;
                    running >= draw
                })
                .map_or(next, |i| next + i);
            // Move the chosen record to the front of the unordered rest, keeping the others'
            // order (weight-0 records stay first).
            records[next..=chosen].rotate_right(1);
        }
        start = end;
    }
    records
        .into_iter()
        .map(|r| Candidate {
            host: r.target,
            port: r.port,
            direct_tls: r.direct_tls,
            origin: Origin::Srv {
                priority: r.priority,
                weight: r.weight,
            },
        })
        .collect()
}

/// The addresses from an AAAA and an A answer, interleaved IPv6 first (RFC 8305 §4: one
/// address of the preferred family, then one of the other, and so on). A family whose lookup
/// failed is left out if the other has addresses; with none at all, a failure that was not a
/// plain "no such record" is reported as such, since the addresses may well exist.
fn collect_addresses(
    host: &str,
    v6: &Result<Lookup, NetError>,
    v4: &Result<Lookup, NetError>,
) -> Result<Vec<IpAddr>, ResolveError> {
    let ips = |result: &Result<Lookup, NetError>| -> Vec<IpAddr> {
        result
            .as_ref()
            .map(|lookup| {
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let addrs = interleave(ips(v6), ips(v4));
    if !addrs.is_empty() {
        return Ok(addrs);
    }
    for result in [v6, v4] {
        if let Err(e) = result {
            if !e.is_no_records_found() {
                return Err(ResolveError::Lookup {
                    domain: host.to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Err(ResolveError::NoAddress {
        host: host.to_string(),
    })
}

/// `v6[0], v4[0], v6[1], v4[1], …`, then the rest of the longer list.
fn interleave(v6: Vec<IpAddr>, v4: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let mut v6 = v6.into_iter();
    let mut v4 = v4.into_iter();
    loop {
        match (v6.next(), v4.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// A failed lookup in words: "NXDOMAIN (no such name)", "no record", or the failure.
fn negative(e: &NetError) -> String {
    if e.is_nx_domain() {
        "NXDOMAIN (no such name)".to_string()
    } else if e.is_no_records_found() {
        "no record".to_string()
    } else {
        format!("lookup failed: {e}")
    }
}

/// A DNS name as people write it, without the trailing dot; ASCII (punycode), so that looking
/// it up again gives the same name.
fn name_text(name: &hickory_resolver::proto::rr::Name) -> String {
    let mut text = name.to_ascii();
    if text.len() > 1 && text.ends_with('.') {
        text.pop();
    }
    text
}

/// `host` as an IP address, with or without IPv6 brackets.
fn parse_ip(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

fn build_dns(config: &DnsConfig) -> Result<TokioResolver, ResolveError> {
    let lookup_err = |e: &dyn fmt::Display| ResolveError::Lookup {
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
    if !nameservers.is_empty() {
        // The configured servers decide alone: /etc/hosts is part of the system resolver.
        opts.use_hosts_file = ResolveHosts::Never;
    }
    // Positive answers are cached within their TTLs (hickory's cache, on by default); negative
    // ones at most `negative_ttl`, so that a fixed DNS record is picked up soon.
    opts.negative_max_ttl = Some(config.negative_ttl);
    opts.timeout = config.timeout;
    opts.attempts = 2;
    builder.build().map_err(|e| lookup_err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 5269,
            target: target.to_string(),
            direct_tls: false,
        }
    }

    fn hosts(candidates: &[Candidate]) -> Vec<&str> {
        candidates.iter().map(|c| c.host.as_str()).collect()
    }

    #[test]
    fn lower_priority_first_whatever_the_weights() {
        let records = vec![srv(20, 100, "c"), srv(10, 0, "a"), srv(15, 1, "b")];
        let order = order_srv(records, |max| max);
        assert_eq!(hosts(&order), ["a", "b", "c"]);
        assert_eq!(
            order[0].origin,
            Origin::Srv {
                priority: 10,
                weight: 0
            }
        );
    }

    #[test]
    fn weight_zero_records_come_first_in_the_draw() {
        // A draw of 0 takes the first record whose running sum is >= 0: the weight-0 one,
        // which the sort moved to the front even though DNS listed it last.
        let records = vec![srv(0, 5, "heavy"), srv(0, 0, "zero")];
        let order = order_srv(records, |_| 0);
        assert_eq!(hosts(&order), ["zero", "heavy"]);
        // The smallest positive draw skips it.
        let records = vec![srv(0, 5, "heavy"), srv(0, 0, "zero")];
        let order = order_srv(records, |max| max.min(1));
        assert_eq!(hosts(&order), ["heavy", "zero"]);
    }

    #[test]
    fn the_draw_picks_the_first_running_sum_at_least_the_number() {
        // Weights 1, 3: running sums 1, 4.
        let draws = |first: u64| {
            let mut calls = 0;
            let records = vec![srv(0, 1, "light"), srv(0, 3, "heavy")];
            order_srv(records, move |max| {
                calls += 1;
                if calls == 1 {
                    assert_eq!(max, 4 * DRAW_STEPS);
                    first
                } else {
                    max
                }
            })
        };
        assert_eq!(hosts(&draws(0)), ["light", "heavy"]);
        assert_eq!(hosts(&draws(DRAW_STEPS)), ["light", "heavy"]);
        // Just above the first running sum: a quarter of the draws go to "light", not 2/5.
        assert_eq!(hosts(&draws(DRAW_STEPS + 1)), ["heavy", "light"]);
        assert_eq!(hosts(&draws(4 * DRAW_STEPS)), ["heavy", "light"]);
    }

    #[test]
    fn a_chosen_record_leaves_the_draw_and_the_rest_keep_their_order() {
        // Weights 1, 2, 3 (sums 1, 3, 6). Draw 3 takes "b"; then the total is 4 over "a", "c"
        // (sums 1, 4) and a draw of 2 takes "c".
        let mut seen = Vec::new();
        let mut draws = [3, 2, 0].into_iter();
        let records = vec![srv(0, 1, "a"), srv(0, 2, "b"), srv(0, 3, "c")];
        let order = order_srv(records, |max| {
            seen.push(max / DRAW_STEPS);
            draws.next().unwrap_or(0) * DRAW_STEPS
        });
        assert_eq!(hosts(&order), ["b", "c", "a"]);
        assert_eq!(seen, [6, 4, 1]);
    }

    #[test]
    fn each_priority_is_drawn_separately() {
        let mut seen = Vec::new();
        let records = vec![
            srv(1, 7, "p1-a"),
            srv(0, 2, "p0-a"),
            srv(1, 9, "p1-b"),
            srv(0, 4, "p0-b"),
        ];
        let order = order_srv(records, |max| {
            seen.push(max / DRAW_STEPS);
            max
        });
        assert_eq!(hosts(&order), ["p0-b", "p0-a", "p1-b", "p1-a"]);
        assert_eq!(seen, [6, 2, 16, 7]);
    }

    #[test]
    fn the_tls_flag_follows_its_record() {
        let mut direct = srv(0, 0, "tls");
        direct.direct_tls = true;
        direct.port = 5270;
        let order = order_srv(vec![srv(0, 0, "plain"), direct], |_| 0);
        assert_eq!(
            order
                .iter()
                .map(|c| (c.host.as_str(), c.port, c.direct_tls))
                .collect::<Vec<_>>(),
            [("plain", 5269, false), ("tls", 5270, true)]
        );
    }

    #[test]
    fn families_interleave_ipv6_first() {
        let v6: Vec<IpAddr> = ["::1", "::2", "::3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let v4: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let text = |v: Vec<IpAddr>| v.iter().map(|ip| ip.to_string()).collect::<Vec<_>>();
        assert_eq!(
            text(interleave(v6.clone(), v4.clone())),
            ["::1", "127.0.0.1", "::2", "127.0.0.2", "::3"]
        );
        assert_eq!(
            text(interleave(v6[..1].to_vec(), v4.clone())),
            ["::1", "127.0.0.1", "127.0.0.2"]
        );
        assert_eq!(text(interleave(Vec::new(), v4)), ["127.0.0.1", "127.0.0.2"]);
    }

    #[test]
    fn a_missing_fallback_address_is_reported_as_missing_records_for_the_domain() {
        let fallback = Candidate {
            host: "b.test".into(),
            port: DEFAULT_S2S_PORT,
            direct_tls: false,
            origin: Origin::Fallback,
        };
        let no_address = ResolveError::NoAddress {
            host: "b.test".into(),
        };
        assert_eq!(
            no_address
                .clone()
                .for_candidate("b.test", &fallback)
                .to_string(),
            "no SRV or A/AAAA record for b.test"
        );
        let srv_target = Candidate {
            host: "xmpp.b.test".into(),
            origin: Origin::Srv {
                priority: 0,
                weight: 0,
            },
            ..fallback
        };
        assert!(matches!(
            no_address.for_candidate("b.test", &srv_target),
            ResolveError::NoAddress { .. }
        ));
    }

    #[test]
    fn candidates_display_host_port_security_and_origin() {
        let c = Candidate {
            host: "::1".into(),
            port: 5270,
            direct_tls: true,
            origin: Origin::Srv {
                priority: 5,
                weight: 10,
            },
        };
        assert_eq!(
            c.to_string(),
            "[::1]:5270, direct TLS, SRV priority 5 weight 10"
        );
    }

    #[test]
    fn ip_literals_with_or_without_brackets() {
        assert_eq!(parse_ip("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip("192.0.2.1"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(parse_ip("b.test"), None);
    }
}
