//! A DNS server the tests run on loopback UDP, so that fedgate's lookups (`[dns] nameservers`)
//! never reach the machine's resolver.
//!
//! It answers like a recursive resolver in front of one zone:
//! - A, AAAA and SRV records ([`TestDns::add`], [`TestDns::add_srv`]), a `.` SRV target too;
//! - CNAMEs ([`TestDns::add_cname`]), followed within the zone so that the answer carries the
//!   alias and the records of the name it points to;
//! - NXDOMAIN for a name it does not know, NOERROR without answers for a known name without
//!   the asked type, each with an SOA when a negative TTL is set (RFC 2308: without one a
//!   resolver cannot cache the negative answer);
//! - per-name TTLs ([`TestDns::set_ttl`], default 60 s);
//! - silence on demand ([`TestDns::set_silent`]), a dead resolver.
//!
//! It counts the queries it receives per name and type ([`TestDns::queries`]), so tests can
//! tell a cached answer from a fresh one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// The TTL of records whose name has no [`TestDns::set_ttl`].
const DEFAULT_TTL: u32 = 60;

/// A DNS server on loopback UDP serving test domains; every other name is NXDOMAIN. fedgate
/// instances query only this server (`[dns] nameservers`).
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Zone {
    names: HashMap<String, Node>,
    /// Queries received per (lowercase name without the final dot, type).
    queries: HashMap<(String, RecordType), usize>,
    /// Drop every query unanswered.
    silent: bool,
    /// The SOA negative TTL sent with negative answers; 0 sends no SOA.
    negative_ttl: u32,
}

/// What one name holds.
#[derive(Default)]
struct Node {
    addrs: Vec<IpAddr>,
    srv: Vec<rdata::SRV>,
    cname: Option<Name>,
    ttl: Option<u32>,
}

impl TestDns {
    pub async fn start() -> TestDns {
        TestDns::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind DNS")
    }

    /// Serves on `addr`: e.g. port 53 of a loopback address, for resolvers that cannot be told
    /// another port (libc's, Erlang's from `resolv.conf`). Fails when the address is taken.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<TestDns> {
        let socket = UdpSocket::bind(addr).await?;
        let addr = socket.local_addr()?;
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let served = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let response = served.lock().unwrap().answer(&query);
                if let Some(bytes) = response.and_then(|r| r.to_vec().ok()) {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Ok(TestDns { addr, zone, task })
    }

    /// Serves `domain` A (or AAAA, for an IPv6 address) → `ip`, besides any it has.
    pub fn add(&self, domain: &str, ip: IpAddr) {
        self.node(domain, |n| n.addrs.push(ip));
    }

    /// Serves an SRV record at `name` (e.g. `"_xmpp-server._tcp.b.test"`); `target` may be
    /// `"."`, "service decidedly not available".
    pub fn add_srv(&self, name: &str, priority: u16, weight: u16, port: u16, target: &str) {
        let target = fqdn(target);
        self.node(name, |n| {
            n.srv
                .push(rdata::SRV::new(priority, weight, port, target.clone()))
        });
    }

    /// Makes `name` an alias (CNAME) for `target`.
    pub fn add_cname(&self, name: &str, target: &str) {
        let target = fqdn(target);
        self.node(name, |n| n.cname = Some(target.clone()));
    }

    /// The TTL of `name`'s records (default 60 s).
    #[allow(dead_code)]
    pub fn set_ttl(&self, name: &str, ttl: u32) {
        self.node(name, |n| n.ttl = Some(ttl));
    }

    /// Sends an SOA with this negative TTL along with NXDOMAIN and no-record answers, so that
    /// resolvers may cache them (default 0: no SOA, nothing cached).
    pub fn set_negative_ttl(&self, ttl: u32) {
        self.zone.lock().unwrap().negative_ttl = ttl;
    }

    /// Drops every query unanswered while `silent`, like a dead resolver.
    pub fn set_silent(&self, silent: bool) {
        self.zone.lock().unwrap().silent = silent;
    }

    /// How many queries of any type arrived for `name` (answered or not).
    pub fn queries(&self, name: &str) -> usize {
        let key = key(name);
        let zone = self.zone.lock().unwrap();
        zone.queries
            .iter()
            .filter(|((n, _), _)| *n == key)
            .map(|(_, count)| count)
            .sum()
    }

    /// How many queries of type `rtype` arrived for `name`.
    #[allow(dead_code)]
    pub fn queries_of(&self, name: &str, rtype: RecordType) -> usize {
        let zone = self.zone.lock().unwrap();
        zone.queries.get(&(key(name), rtype)).copied().unwrap_or(0)
    }

    fn node(&self, name: &str, change: impl FnOnce(&mut Node)) {
        change(
            self.zone
                .lock()
                .unwrap()
                .names
                .entry(key(name))
                .or_default(),
        );
    }
}

impl Zone {
    /// The response to `query`, or `None` to stay silent.
    fn answer(&mut self, query: &Message) -> Option<Message> {
        let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        for q in &query.queries {
            let qtype = q.query_type();
            *self
                .queries
                .entry((key(&q.name().to_ascii()), qtype))
                .or_default() += 1;
            if self.silent {
                return None;
            }
            response.add_query(q.clone());
            let mut owner = q.name().clone();
            let mut found_name = false;
            // Follow aliases within the zone, as a recursive resolver would; bounded so a
            // CNAME loop ends.
            for _ in 0..8 {
                let Some(node) = self.names.get(&key(&owner.to_ascii())) else {
                    break;
                };
                found_name = true;
                let ttl = node.ttl.unwrap_or(DEFAULT_TTL);
                if let Some(target) = &node.cname {
                    if qtype != RecordType::CNAME {
                        response.add_answer(Record::from_rdata(
                            owner.clone(),
                            ttl,
                            RData::CNAME(rdata::CNAME(target.clone())),
                        ));
                        owner = target.clone();
                        continue;
                    }
                }
                for rdata in node.records(qtype) {
                    response.add_answer(Record::from_rdata(owner.clone(), ttl, rdata));
                }
                break;
            }
            if !found_name {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            if response.answers.is_empty() && self.negative_ttl > 0 {
                let soa = rdata::SOA::new(
                    fqdn("ns.test"),
                    fqdn("hostmaster.test"),
                    1,
                    3600,
                    600,
                    86400,
                    self.negative_ttl,
                );
                response.add_authority(Record::from_rdata(
                    Name::root(),
                    self.negative_ttl,
                    RData::SOA(soa),
                ));
            }
        }
        Some(response)
    }
}

impl Node {
    fn records(&self, qtype: RecordType) -> Vec<RData> {
        match qtype {
            RecordType::A => self
                .addrs
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(RData::A(rdata::A(*v4))),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            RecordType::AAAA => self
                .addrs
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(RData::AAAA(rdata::AAAA(*v6))),
                    IpAddr::V4(_) => None,
                })
                .collect(),
            RecordType::SRV => self.srv.iter().cloned().map(RData::SRV).collect(),
            _ => Vec::new(),
        }
    }
}

/// How the zone keys a name: lowercase, no final dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_lowercase()
}

/// `name` as a fully qualified DNS name; `"."` is the root.
fn fqdn(name: &str) -> Name {
    if name == "." {
        return Name::root();
    }
    let mut n = Name::from_ascii(name).expect("a valid test name");
    n.set_fqdn(true);
    n
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}
