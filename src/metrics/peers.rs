//! Per-peer metrics with a bounded label set.
//!
//! Operators want to see federation per remote domain, but a `peer` label per domain would let
//! any server on the internet grow our series without bound. So:
//!
//! 1. Sessions count into a [`PeerEntry`] per remote domain: plain atomics, resolved once per
//!    session ([`Peers::open`]), so the per-stanza cost is one relaxed increment.
//! 2. At most `max_tracked` domains have an entry; the rest share one overflow entry.
//! 3. At each scrape, [`Peers::sync`] copies what changed into the exported families. A domain
//!    gets its own `peer` label if it is named in config (always) or holds one of the `top`
//!    dynamic slots; everything else goes to `peer="other"`.
//! 4. Dynamic slots go to the busiest unlabelled peers (stanzas and failed connection attempts
//!    since the last ranking). A
//!    labelled peer gives its slot up when it goes idle, or when an unlabelled one carries more
//!    than twice its traffic (hysteresis, so labels do not flap). Ranking runs at most once a
//!    minute.
//!
//! Counters stay monotonic through all this: only deltas are exported, to whichever label the
//! peer has at that moment, and a peer that loses its label just stops moving its series.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::labels::Direction;

/// The label of every peer without one of its own.
pub const OTHER: &str = "other";

/// How often dynamic slots are re-ranked.
const RANK_EVERY: Duration = Duration::from_secs(60);

/// A peer without sessions, queue, traffic or attempts for this long leaves the table (and its
/// label). Long enough that an unreachable peer stays visible well past alerting on it.
const IDLE_AFTER: Duration = Duration::from_secs(3600);

/// What fedgate knows of one remote domain; updated by sessions, read at scrapes and by the
/// per-peer view.
#[derive(Debug)]
pub struct PeerEntry {
    /// The remote domain, normalised: the table's key and the `peer` label's value.
    pub domain: Arc<str>,
    stanzas_in: AtomicU64,
    stanzas_out: AtomicU64,
    bounces: AtomicU64,
    failures: AtomicU64,
    sessions_in: AtomicI64,
    sessions_out: AtomicI64,
    queued: AtomicI64,
    /// Unix seconds of the last moment a session was up; 0 = never.
    last_contact: AtomicI64,
    /// Unix seconds when the peer's certificate expires, from its last TLS handshake; 0 =
    /// unknown.
    cert_expiry: AtomicI64,
    /// 1 when the last outbound attempt succeeded, 0 when it failed, -1 before any.
    up: AtomicI64,
    /// Microseconds its inbound streams waited on `max_inbound_bytes_per_second`; shared with
    /// the streams' byte rate limits, which add to it while they wait.
    throttled_micros: Arc<AtomicU64>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl PeerEntry {
    fn new(domain: Arc<str>) -> PeerEntry {
        PeerEntry {
            domain,
            stanzas_in: AtomicU64::new(0),
            stanzas_out: AtomicU64::new(0),
            bounces: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            sessions_in: AtomicI64::new(0),
            sessions_out: AtomicI64::new(0),
            queued: AtomicI64::new(0),
            last_contact: AtomicI64::new(0),
            cert_expiry: AtomicI64::new(0),
            up: AtomicI64::new(-1),
            throttled_micros: Arc::default(),
        }
    }

    /// The counter an inbound stream's byte rate limit adds its waits to, in microseconds.
    pub fn throttle_counter(&self) -> Arc<AtomicU64> {
        self.throttled_micros.clone()
    }

    /// One stanza relayed with this peer.
    #[inline]
    pub fn stanza(&self, direction: Direction) {
        match direction {
            Direction::Inbound => self.stanzas_in.fetch_add(1, Relaxed),
            Direction::Outbound => self.stanzas_out.fetch_add(1, Relaxed),
        };
    }

    /// A stanza for this peer returned to its sender.
    pub fn bounced(&self) {
        self.bounces.fetch_add(1, Relaxed);
    }

    /// An outbound attempt to this peer failed.
    pub fn attempt_failed(&self) {
        self.failures.fetch_add(1, Relaxed);
        self.up.store(0, Relaxed);
    }

    /// An outbound attempt to this peer authenticated.
    pub fn attempt_succeeded(&self) {
        self.up.store(1, Relaxed);
        self.last_contact.store(unix_now(), Relaxed);
    }

    /// Stanzas waiting for this peer, as read before a scrape.
    pub fn set_queued(&self, n: i64) {
        self.queued.store(n, Relaxed);
    }

    /// The expiry (Unix seconds) of the certificate the peer presented.
    pub fn certificate_expires(&self, not_after: i64) {
        self.cert_expiry.store(not_after, Relaxed);
    }

    /// The counters at one moment.
    pub fn snapshot(&self) -> PeerSnapshot {
        PeerSnapshot {
            domain: self.domain.to_string(),
            sessions_in: self.sessions_in.load(Relaxed),
            sessions_out: self.sessions_out.load(Relaxed),
            stanzas_in: self.stanzas_in.load(Relaxed),
            stanzas_out: self.stanzas_out.load(Relaxed),
            bounces: self.bounces.load(Relaxed),
            failures: self.failures.load(Relaxed),
            queued: self.queued.load(Relaxed),
            last_contact: self.last_contact.load(Relaxed),
            cert_expiry: self.cert_expiry.load(Relaxed),
            up: self.up.load(Relaxed),
            throttled_micros: self.throttled_micros.load(Relaxed),
        }
    }

    fn sessions(&self) -> i64 {
        self.sessions_in.load(Relaxed) + self.sessions_out.load(Relaxed)
    }
}

/// [`PeerEntry`] values at one moment.
#[derive(Debug, Clone, Default)]
pub struct PeerSnapshot {
    /// The remote domain, normalised.
    pub domain: String,
    /// Inbound sessions from the peer that are live.
    pub sessions_in: i64,
    /// Outbound sessions to the peer that are live.
    pub sessions_out: i64,
    /// Stanzas received from the peer since its entry was made.
    pub stanzas_in: u64,
    /// Stanzas sent to the peer since its entry was made.
    pub stanzas_out: u64,
    /// Stanzas for the peer returned to their senders.
    pub bounces: u64,
    /// Outbound attempts to the peer that failed.
    pub failures: u64,
    /// Stanzas waiting for the peer, as of the last scrape.
    pub queued: i64,
    /// Unix seconds of the last moment a session was up; 0 = never.
    pub last_contact: i64,
    /// Unix seconds when the peer's certificate expires; 0 = unknown.
    pub cert_expiry: i64,
    /// 1 when the last outbound attempt succeeded, 0 when it failed, -1 before any.
    pub up: i64,
    /// Microseconds its inbound streams waited on `max_inbound_bytes_per_second`.
    pub throttled_micros: u64,
}

/// A live session's hold on its peer's entry: counts the session while it lives.
#[derive(Debug)]
pub struct PeerSession {
    entry: Arc<PeerEntry>,
    direction: Direction,
}

impl PeerSession {
    /// The entry the session counts in, for the session to record more than its stanzas.
    pub fn entry(&self) -> &Arc<PeerEntry> {
        &self.entry
    }

    /// One stanza relayed on this session.
    #[inline]
    pub fn stanza(&self) {
        self.entry.stanza(self.direction);
    }
}

impl Drop for PeerSession {
    fn drop(&mut self) {
        let sessions = match self.direction {
            Direction::Inbound => &self.entry.sessions_in,
            Direction::Outbound => &self.entry.sessions_out,
        };
        sessions.fetch_sub(1, Relaxed);
        self.entry.last_contact.store(unix_now(), Relaxed);
    }
}

/// The exported per-peer families.
#[derive(Clone)]
struct Families {
    sessions: IntGaugeVec,
    stanzas: IntCounterVec,
    bounces: IntCounterVec,
    failures: IntCounterVec,
    queued: IntGaugeVec,
    last_contact: GaugeVec,
    cert_expiry: GaugeVec,
    up: IntGaugeVec,
    throttled: prometheus::CounterVec,
    /// `fedgate_peers_tracked`: domains with an entry (labelled or not).
    tracked: prometheus::IntGauge,
}

/// What was exported last for one domain, to export deltas.
#[derive(Default)]
struct Seen {
    stanzas_in: u64,
    stanzas_out: u64,
    bounces: u64,
    failures: u64,
    throttled_micros: u64,
    /// Traffic since the last ranking.
    window: u64,
    /// The last time the peer had sessions, a queue or traffic.
    active: Option<Instant>,
}

impl Seen {
    /// How far each counter of `snap` moved since the last call: stanzas in, stanzas out,
    /// bounces, failures, throttled microseconds.
    fn take_deltas(&mut self, snap: &PeerSnapshot) -> [u64; 5] {
        let deltas = [
            snap.stanzas_in - self.stanzas_in,
            snap.stanzas_out - self.stanzas_out,
            snap.bounces - self.bounces,
            snap.failures - self.failures,
            snap.throttled_micros - self.throttled_micros,
        ];
        self.stanzas_in = snap.stanzas_in;
        self.stanzas_out = snap.stanzas_out;
        self.bounces = snap.bounces;
        self.failures = snap.failures;
        self.throttled_micros = snap.throttled_micros;
        deltas
    }
}

/// State only [`Peers::sync`] touches (one scrape at a time).
struct SyncState {
    seen: HashMap<Arc<str>, Seen>,
    /// Domains holding a dynamic slot.
    dynamic: HashSet<Arc<str>>,
    last_rank: Option<Instant>,
}

/// Every remote domain's entry, and the bounded export.
pub struct Peers {
    entries: DashMap<Arc<str>, Arc<PeerEntry>>,
    /// Shared by every domain beyond `max_tracked`.
    overflow: Arc<PeerEntry>,
    max_tracked: usize,
    /// Domains that always have their own label (`[metrics] peers`, `[[federation.peer]]`).
    named: HashSet<String>,
    /// Dynamic slots.
    top: usize,
    families: Families,
    sync: Mutex<SyncState>,
}

/// How many domains get an entry at most; beyond this they count as "other" directly.
pub const MAX_TRACKED: usize = 10_000;

impl Peers {
    /// Registers the per-peer families in `registry`.
    pub fn register(registry: &Registry) -> Peers {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let float = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), &["peer"]).expect("valid metric")
        };
        let families = Families {
            sessions: gauge(
                "fedgate_peer_sessions",
                "Live s2s sessions per remote peer and direction",
                &["peer", "direction"],
            ),
            stanzas: counter(
                "fedgate_peer_stanzas_total",
                "Stanzas relayed per remote peer and direction",
                &["peer", "direction"],
            ),
            bounces: counter(
                "fedgate_peer_bounces_total",
                "Stanzas for a remote peer returned to their senders",
                &["peer"],
            ),
            failures: counter(
                "fedgate_peer_connect_failures_total",
                "Failed outbound connection attempts per remote peer",
                &["peer"],
            ),
            queued: gauge(
                "fedgate_peer_queued_stanzas",
                "Stanzas waiting to be written to a remote peer",
                &["peer"],
            ),
            last_contact: float(
                "fedgate_peer_last_contact_timestamp_seconds",
                "Unix time a session with the peer was last up",
            ),
            cert_expiry: float(
                "fedgate_peer_certificate_expiry_timestamp_seconds",
                "Unix time the certificate the peer last presented expires",
            ),
            up: gauge(
                "fedgate_peer_up",
                "1 if the last outbound connection attempt to the peer succeeded, 0 if it failed",
                &["peer"],
            ),
            throttled: prometheus::CounterVec::new(
                Opts::new(
                    "fedgate_peer_inbound_throttled_seconds_total",
                    "Time a remote peer's inbound streams waited on max_inbound_bytes_per_second",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            tracked: prometheus::IntGauge::new(
                "fedgate_peers_tracked",
                "Remote domains fedgate keeps per-peer figures for (labelled or not)",
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(families.sessions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(families.stanzas.clone()),
            Box::new(families.bounces.clone()),
            Box::new(families.failures.clone()),
            Box::new(families.queued.clone()),
            Box::new(families.last_contact.clone()),
            Box::new(families.cert_expiry.clone()),
            Box::new(families.up.clone()),
            Box::new(families.throttled.clone()),
            Box::new(families.tracked.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Peers {
            entries: DashMap::new(),
            overflow: Arc::new(PeerEntry::new(Arc::from(OTHER))),
            max_tracked: MAX_TRACKED,
            named: HashSet::new(),
            top: 20,
            families,
            sync: Mutex::new(SyncState {
                seen: HashMap::new(),
                dynamic: HashSet::new(),
                last_rank: None,
            }),
        }
    }

    /// Which peers get labels: `named` always, plus the `top` busiest others.
    pub fn configure(&mut self, named: impl IntoIterator<Item = String>, top: usize) {
        self.named = named.into_iter().map(|d| d.to_ascii_lowercase()).collect();
        self.top = top;
    }

    /// The entry of `domain`, created if there is room.
    pub fn entry(&self, domain: &str) -> Arc<PeerEntry> {
        if let Some(e) = self.entries.get(domain) {
            return e.clone();
        }
        if self.entries.len() >= self.max_tracked && !self.named.contains(domain) {
            return self.overflow.clone();
        }
        let key: Arc<str> = Arc::from(domain);
        self.entries
            .entry(key.clone())
            .or_insert_with(|| Arc::new(PeerEntry::new(key)))
            .clone()
    }

    /// The entry of `domain` if it has one; for events that should not create entries
    /// (a bounce for a domain we never talked to).
    pub fn existing(&self, domain: &str) -> Option<Arc<PeerEntry>> {
        self.entries.get(domain).map(|e| e.clone())
    }

    /// Counts a session with `domain` for as long as the returned guard lives.
    pub fn open(&self, domain: &str, direction: Direction) -> PeerSession {
        // Counted under the map's shard lock, so that `sync` never removes an entry that a
        // session is just taking.
        let entry = match self.entries.get(domain) {
            Some(e) => {
                e.count_session(direction);
                e.clone()
            }
            None => {
                let entry = self.entry(domain);
                entry.count_session(direction);
                entry
            }
        };
        entry.last_contact.store(unix_now(), Relaxed);
        PeerSession { entry, direction }
    }

    /// Sets every tracked domain's queue depth from `waiting` (read before a scrape).
    pub fn set_queues(&self, waiting: impl Fn(&str) -> usize) {
        for e in self.entries.iter() {
            e.set_queued(waiting(&e.domain) as i64);
        }
    }

    /// Copies what changed since the last call into the exported families (see the module
    /// docs). Called before every scrape.
    pub fn sync(&self) {
        let mut state = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let unix = unix_now();
        let f = &self.families;

        // Drop idle entries (and their labels), then re-rank if it is time or slots are free.
        let mut gone: Vec<Arc<str>> = Vec::new();
        self.entries.retain(|domain, e| {
            let idle = e.sessions() == 0
                && e.queued.load(Relaxed) <= 0
                && state
                    .seen
                    .get(domain)
                    .and_then(|s| s.active)
                    .is_some_and(|t| now.duration_since(t) >= IDLE_AFTER);
            let keep = !idle || self.named.contains(&**domain);
            if !keep {
                gone.push(domain.clone());
            }
            keep
        });
        for domain in gone {
            state.seen.remove(&domain);
            if state.dynamic.remove(&domain) {
                self.remove_labels(&domain);
            }
        }

        // Deltas since the last sync.
        let mut other = PeerSnapshot::default();
        let overflow = self.overflow.snapshot();
        let overflow_seen = state.seen.entry(self.overflow.domain.clone()).or_default();
        let [d_in, d_out, d_bounces, d_failures, d_throttled] =
            overflow_seen.take_deltas(&overflow);
        other.stanzas_in += d_in;
        other.stanzas_out += d_out;
        other.bounces += d_bounces;
        other.failures += d_failures;
        other.throttled_micros += d_throttled;
        other.sessions_in += overflow.sessions_in;
        other.sessions_out += overflow.sessions_out;
        other.queued += overflow.queued;
        other.last_contact = overflow.last_contact;

        // Deltas first, so that ranking sees this interval's traffic and a newly labelled
        // peer shows on this very scrape.
        let mut changed = Vec::with_capacity(self.entries.len());
        for e in self.entries.iter() {
            let snap = e.snapshot();
            let seen = state.seen.entry(e.domain.clone()).or_default();
            let deltas = seen.take_deltas(&snap);
            let [d_in, d_out, d_bounces, d_failures, _] = deltas;
            // Traffic and failed attempts both make a peer worth its own label.
            seen.window += d_in + d_out + d_failures;
            if d_in + d_out + d_bounces + d_failures > 0
                || snap.sessions_in + snap.sessions_out > 0
                || snap.queued > 0
                || seen.active.is_none()
            {
                seen.active = Some(now);
            }
            if snap.sessions_in + snap.sessions_out > 0 {
                e.last_contact.store(unix, Relaxed);
            }
            changed.push((e.clone(), snap, deltas));
        }
        if state
            .last_rank
            .is_none_or(|t| now.duration_since(t) >= RANK_EVERY)
            || state.dynamic.len() < self.top
        {
            self.rank(&mut state, now);
        }
        for (e, snap, [d_in, d_out, d_bounces, d_failures, d_throttled]) in changed {
            let labelled = self.named.contains(&*e.domain) || state.dynamic.contains(&e.domain);
            if labelled {
                let peer = &*e.domain;
                f.stanzas.with_label_values(&[peer, "inbound"]).inc_by(d_in);
                f.stanzas
                    .with_label_values(&[peer, "outbound"])
                    .inc_by(d_out);
                f.bounces.with_label_values(&[peer]).inc_by(d_bounces);
                f.failures.with_label_values(&[peer]).inc_by(d_failures);
                f.throttled
                    .with_label_values(&[peer])
                    .inc_by(d_throttled as f64 / 1e6);
                f.sessions
                    .with_label_values(&[peer, "inbound"])
                    .set(snap.sessions_in);
                f.sessions
                    .with_label_values(&[peer, "outbound"])
                    .set(snap.sessions_out);
                f.queued.with_label_values(&[peer]).set(snap.queued.max(0));
                let last = e.last_contact.load(Relaxed);
                if last > 0 {
                    f.last_contact.with_label_values(&[peer]).set(last as f64);
                }
                if snap.cert_expiry > 0 {
                    f.cert_expiry
                        .with_label_values(&[peer])
                        .set(snap.cert_expiry as f64);
                }
                if snap.up >= 0 {
                    f.up.with_label_values(&[peer]).set(snap.up);
                }
            } else {
                other.stanzas_in += d_in;
                other.stanzas_out += d_out;
                other.bounces += d_bounces;
                other.failures += d_failures;
                other.throttled_micros += d_throttled;
                other.sessions_in += snap.sessions_in;
                other.sessions_out += snap.sessions_out;
                other.queued += snap.queued.max(0);
                other.last_contact = other.last_contact.max(e.last_contact.load(Relaxed));
            }
        }
        let peer = OTHER;
        f.stanzas
            .with_label_values(&[peer, "inbound"])
            .inc_by(other.stanzas_in);
        f.stanzas
            .with_label_values(&[peer, "outbound"])
            .inc_by(other.stanzas_out);
        f.bounces.with_label_values(&[peer]).inc_by(other.bounces);
        f.failures.with_label_values(&[peer]).inc_by(other.failures);
        f.throttled
            .with_label_values(&[peer])
            .inc_by(other.throttled_micros as f64 / 1e6);
        f.sessions
            .with_label_values(&[peer, "inbound"])
            .set(other.sessions_in);
        f.sessions
            .with_label_values(&[peer, "outbound"])
            .set(other.sessions_out);
        f.queued.with_label_values(&[peer]).set(other.queued);
        if other.last_contact > 0 {
            f.last_contact
                .with_label_values(&[peer])
                .set(other.last_contact as f64);
        }
        f.tracked.set(self.entries.len() as i64);
    }

    /// Gives free or contested dynamic slots to the busiest unlabelled peers.
    fn rank(&self, state: &mut SyncState, now: Instant) {
        state.last_rank = Some(now);
        let mut candidates: Vec<(u64, Arc<str>)> = state
            .seen
            .iter()
            .filter(|(d, s)| {
                !state.dynamic.contains(*d)
                    && !self.named.contains(&***d)
                    && **d != self.overflow.domain
                    && (s.window > 0
                        || self
                            .entries
                            .get(&***d)
                            .is_some_and(|e| e.sessions() > 0 || e.queued.load(Relaxed) > 0))
            })
            .map(|(d, s)| (s.window, d.clone()))
            .collect();
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (window, domain) in candidates {
            if state.dynamic.len() < self.top {
                state.dynamic.insert(domain);
                continue;
            }
            // Full: take the quietest labelled peer's slot if this one is much busier.
            let quietest = state
                .dynamic
                .iter()
                .map(|d| (state.seen.get(d).map_or(0, |s| s.window), d.clone()))
                .min();
            match quietest {
                Some((least, victim)) if window > 2 * least.max(1) => {
                    state.dynamic.remove(&victim);
                    self.remove_labels(&victim);
                    state.dynamic.insert(domain);
                }
                _ => break,
            }
        }
        for seen in state.seen.values_mut() {
            seen.window = 0;
        }
    }

    /// Removes every series of `domain` (it lost its label; its figures go to "other" now).
    fn remove_labels(&self, domain: &str) {
        let f = &self.families;
        for direction in ["inbound", "outbound"] {
            let _ = f.stanzas.remove_label_values(&[domain, direction]);
            let _ = f.sessions.remove_label_values(&[domain, direction]);
        }
        let _ = f.bounces.remove_label_values(&[domain]);
        let _ = f.failures.remove_label_values(&[domain]);
        let _ = f.queued.remove_label_values(&[domain]);
        let _ = f.last_contact.remove_label_values(&[domain]);
        let _ = f.cert_expiry.remove_label_values(&[domain]);
        let _ = f.up.remove_label_values(&[domain]);
        let _ = f.throttled.remove_label_values(&[domain]);
    }
}

impl PeerEntry {
    fn count_session(&self, direction: Direction) {
        match direction {
            Direction::Inbound => self.sessions_in.fetch_add(1, Relaxed),
            Direction::Outbound => self.sessions_out.fetch_add(1, Relaxed),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(named: &[&str], top: usize) -> (Registry, Peers) {
        let registry = Registry::new();
        let mut peers = Peers::register(&registry);
        peers.configure(named.iter().map(|s| s.to_string()), top);
        (registry, peers)
    }

    fn labels(registry: &Registry, family: &str) -> HashSet<String> {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric().to_vec())
            .flat_map(|m| {
                m.get_label()
                    .iter()
                    .filter(|l| l.name() == "peer")
                    .map(|l| l.value().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn value(registry: &Registry, family: &str, peer: &str, direction: &str) -> f64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "peer" && l.value() == peer)
                    && m.get_label()
                        .iter()
                        .any(|l| l.name() == "direction" && l.value() == direction)
            })
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    #[test]
    fn labels_stay_bounded_and_the_rest_is_other() {
        let (registry, peers) = peers(&["named.example"], 3);
        let mut sessions = Vec::new();
        for i in 0..100 {
            let s = peers.open(&format!("d{i}.example"), Direction::Inbound);
            for _ in 0..i {
                s.stanza();
            }
            sessions.push(s);
        }
        peers.open("named.example", Direction::Outbound).stanza();
        peers.sync();
        peers.sync();
        let seen = labels(&registry, "fedgate_peer_stanzas_total");
        // The named peer, the three busiest, and "other".
        assert_eq!(seen.len(), 5, "{seen:?}");
        for expected in [
            "named.example",
            "d99.example",
            "d98.example",
            "d97.example",
            OTHER,
        ] {
            assert!(seen.contains(expected), "{expected} missing from {seen:?}");
        }
        // Nothing is lost: labelled and other add up to everything relayed.
        let total: f64 = [
            "named.example",
            "d99.example",
            "d98.example",
            "d97.example",
            OTHER,
        ]
        .iter()
        .map(|p| {
            value(&registry, "fedgate_peer_stanzas_total", p, "inbound")
                + value(&registry, "fedgate_peer_stanzas_total", p, "outbound")
        })
        .sum();
        assert_eq!(total, (0..100).sum::<u64>() as f64 + 1.0);
    }

    #[test]
    fn counters_stay_monotonic_when_a_peer_takes_a_slot() {
        let (registry, peers) = peers(&[], 1);
        let a = peers.open("a.example", Direction::Inbound);
        let b = peers.open("b.example", Direction::Inbound);
        for _ in 0..10 {
            a.stanza();
        }
        b.stanza();
        peers.sync();
        assert!(labels(&registry, "fedgate_peer_stanzas_total").contains("a.example"));
        let other_before = value(&registry, "fedgate_peer_stanzas_total", OTHER, "inbound");
        // b becomes much busier; at the next ranking it takes a's slot.
        for _ in 0..100 {
            b.stanza();
        }
        peers.sync.lock().unwrap().last_rank = Some(Instant::now() - RANK_EVERY);
        peers.sync();
        peers.sync();
        let seen = labels(&registry, "fedgate_peer_stanzas_total");
        assert!(
            seen.contains("b.example") && !seen.contains("a.example"),
            "{seen:?}"
        );
        let other_after = value(&registry, "fedgate_peer_stanzas_total", OTHER, "inbound");
        assert!(
            other_after >= other_before,
            "other went down: {other_before} → {other_after}"
        );
    }

    #[test]
    fn sessions_are_counted_while_their_guard_lives() {
        let (registry, peers) = peers(&["p.example"], 0);
        let s = peers.open("p.example", Direction::Inbound);
        peers.sync();
        let gauge = |registry: &Registry| {
            registry
                .gather()
                .iter()
                .filter(|f| f.name() == "fedgate_peer_sessions")
                .flat_map(|f| f.get_metric().to_vec())
                .filter(|m| {
                    m.get_label().iter().any(|l| l.value() == "p.example")
                        && m.get_label().iter().any(|l| l.value() == "inbound")
                })
                .map(|m| m.get_gauge().get_value())
                .sum::<f64>()
        };
        assert_eq!(gauge(&registry), 1.0);
        drop(s);
        peers.sync();
        assert_eq!(gauge(&registry), 0.0);
        assert!(peers.existing("p.example").unwrap().snapshot().last_contact > 0);
    }

    #[test]
    fn an_unreachable_peer_gets_a_label_for_its_failed_attempts() {
        let (registry, peers) = peers(&[], 2);
        peers.entry("down.example").attempt_failed();
        peers.entry("quiet.example");
        peers.sync();
        let seen = labels(&registry, "fedgate_peer_up");
        assert!(seen.contains("down.example"), "{seen:?}");
        assert!(!labels(&registry, "fedgate_peer_stanzas_total").contains("quiet.example"));
    }

    #[test]
    fn beyond_the_tracking_bound_domains_share_the_overflow_entry() {
        let (_registry, mut peers) = peers(&[], 0);
        peers.max_tracked = 2;
        peers.entry("a.example");
        peers.entry("b.example");
        assert_eq!(&*peers.entry("c.example").domain, OTHER);
        assert_eq!(peers.entries.len(), 2);
    }
}
