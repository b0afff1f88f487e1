//! Limits that hold under abuse: what one source address, one remote domain and one inbound
//! stream may take of the gateway, and how each refusal is answered.
//!
//! | limit (`fedgate_limit_refusals_total{limit}`) | key | refused, and the answer |
//! | --- | --- | --- |
//! | `connections_per_ip` | `s2s.max_connections_per_ip` | a new connection: our stream header, `<policy-violation/>`, close |
//! | `streams_per_domain` | `s2s.max_streams_per_domain` | an authentication: dialback error `<policy-violation/>`, SASL `<temporary-auth-failure/>` |
//! | `domain_pairs_per_stream` | `s2s.max_domain_pairs_per_stream` | a `<db:result/>`: dialback error `<policy-violation/>` |
//! | `pending_verifications` | `s2s.max_pending_verifications` | a `<db:result/>` that needs a connect-back: dialback error `<resource-constraint/>` |
//! | `pending_verifications_total` | `s2s.max_pending_verifications_total` | the same, over all streams |
//! | `stanza_bytes` | `s2s.max_stanza_bytes`, `[[federation.peer]] max_stanza_bytes` | an inbound stanza: the stream ends with `<policy-violation/>` |
//! | `peer_max_bytes` | the peer's XEP-0478 `max-bytes`, `[[federation.peer]] max_stanza_bytes` | an outbound stanza: bounced to its sender with `policy-violation` |
//!
//! Each refusal is counted and logged with the peer and the key (at `debug` for connections,
//! which come in floods, else at `info`).
//!
//! Why these answers:
//! - A dialback error is not fatal to the stream (XEP-0220 §2.4), so the pairs already on it
//!   go on. §2.4's table names conditions for failed verifications, not for limits, so the
//!   RFC 6120 §8.3.3 meanings decide: `policy-violation` for a rule of ours that the peer can
//!   only meet by doing less (fewer streams, fewer pairs on one), `resource-constraint` (type
//!   `wait`) for a busy server that may say yes shortly.
//! - SASL EXTERNAL is refused with `<temporary-auth-failure/>` (RFC 6120 §6.5.10: "try again
//!   later"): the certificate is good, and a stream of that domain closing makes room. A
//!   stream error would end a stream that may still authenticate other domains by dialback.
//! - A connection past the per-IP limit gets only our header and the error: nothing is read
//!   or parsed and no TLS is set up (on the direct TLS port it is closed without a word, since
//!   answering would take a handshake).
//! - XEP-0478 §4: a stanza over the peer's announced `max-bytes` is not sent (the peer would
//!   end the stream and every stanza on it would wait for a new one); its sender gets
//!   `policy-violation`, no `by`, and a text naming the limit.
//!
//! Connections and streams are counted per key in a [`DashMap`] (sharded: no global lock on
//! the accept path), each held as a [`Slot`] that gives its count back when dropped, so an
//! ending task can never leak one. Verifications take permits from one semaphore.
//!
//! The inbound byte rate is not a refusal: a stream over it is read more slowly
//! ([`TokenBucket`](crate::connection::TokenBucket)).

use std::fmt::Display;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::S2sConfig;
use crate::metrics::Metrics;
use crate::xml::element::Element;
use crate::xml::ns;

/// Which limit refused something: the `limit` label and the configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `s2s.max_connections_per_ip`: inbound TCP connections from one source address.
    ConnectionsPerIp,
    /// `s2s.max_streams_per_domain`: inbound streams on which one remote domain is authenticated.
    StreamsPerDomain,
    /// `s2s.max_domain_pairs_per_stream`: domain pairs one inbound stream may authenticate.
    DomainPairsPerStream,
    /// `s2s.max_pending_verifications`: connect-backs one inbound stream may have in flight.
    PendingVerifications,
    /// `s2s.max_pending_verifications_total`: connect-backs in flight over all inbound streams.
    PendingVerificationsTotal,
    /// A stanza over the size limit we configure: `s2s.max_stanza_bytes`, or the peer's
    /// `[[federation.peer]] max_stanza_bytes`.
    StanzaBytes,
    /// A stanza to send over what the peer accepts: its XEP-0478 `max-bytes`, or the cap
    /// configured for it.
    PeerMaxBytes,
}

impl Limit {
    const ALL: [Limit; 7] = [
        Limit::ConnectionsPerIp,
        Limit::StreamsPerDomain,
        Limit::DomainPairsPerStream,
        Limit::PendingVerifications,
        Limit::PendingVerificationsTotal,
        Limit::StanzaBytes,
        Limit::PeerMaxBytes,
    ];

    /// The `fedgate_limit_refusals_total` label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::StreamsPerDomain => "streams_per_domain",
            Limit::DomainPairsPerStream => "domain_pairs_per_stream",
            Limit::PendingVerifications => "pending_verifications",
            Limit::PendingVerificationsTotal => "pending_verifications_total",
            Limit::StanzaBytes => "stanza_bytes",
            Limit::PeerMaxBytes => "peer_max_bytes",
        }
    }

    /// Where the limit is set.
    pub fn key(self) -> &'static str {
        match self {
            Limit::ConnectionsPerIp => "s2s.max_connections_per_ip",
            Limit::StreamsPerDomain => "s2s.max_streams_per_domain",
            Limit::DomainPairsPerStream => "s2s.max_domain_pairs_per_stream",
            Limit::PendingVerifications => "s2s.max_pending_verifications",
            Limit::PendingVerificationsTotal => "s2s.max_pending_verifications_total",
            Limit::StanzaBytes => "s2s.max_stanza_bytes or federation.peer max_stanza_bytes",
            Limit::PeerMaxBytes => {
                "the peer's XEP-0478 max-bytes or federation.peer max_stanza_bytes"
            }
        }
    }
}

/// The limits shared by every inbound stream, and the refusal counters.
pub struct Limits {
    /// Inbound connections per source address.
    connections: Counts<IpAddr>,
    /// Inbound streams per authenticated remote domain.
    streams: Counts<String>,
    /// Connect-backs in flight over all streams.
    verifications: Arc<Semaphore>,
    /// `fedgate_limit_refusals_total`, one handle per [`Limit`], in `Limit::ALL` order.
    refusals: Vec<IntCounter>,
}

impl Limits {
    /// The limits as `settings` sets them, with every refusal counter registered at 0.
    pub fn new(settings: &S2sConfig, metrics: &Metrics) -> Limits {
        Limits {
            connections: Counts::new(settings.max_connections_per_ip),
            streams: Counts::new(settings.max_streams_per_domain),
            verifications: Arc::new(Semaphore::new(settings.max_pending_verifications_total)),
            // Every label exists from the start, at 0.
            refusals: Limit::ALL
                .iter()
                .map(|l| metrics.limit_refusals.with_label_values(&[l.label()]))
                .collect(),
        }
    }

    /// A connection from `ip`, unless it already has `max_connections_per_ip`.
    pub fn connection(&self, ip: IpAddr) -> Option<Slot<IpAddr>> {
        self.connections.acquire(ip.to_canonical())
    }

    /// Connections open from `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.connections.count(&ip.to_canonical())
    }

    /// A stream authenticated for `domain`, unless it already has `max_streams_per_domain`.
    pub fn stream(&self, domain: &str) -> Option<Slot<String>> {
        self.streams.acquire(domain.to_string())
    }

    /// Whether `domain` has all the streams it may have.
    pub fn streams_full(&self, domain: &str) -> bool {
        self.streams.count(domain) >= self.streams.max
    }

    /// A connect-back, unless `max_pending_verifications_total` are in flight. The permit goes
    /// back when dropped.
    pub fn verification(&self) -> Option<OwnedSemaphorePermit> {
        self.verifications.clone().try_acquire_owned().ok()
    }

    /// Counts and logs a refusal by `limit` of something from or for `peer`.
    pub fn refused(&self, limit: Limit, peer: &dyn Display, what: &str) {
        if let Some(counter) = Limit::ALL
            .iter()
            .position(|l| *l == limit)
            .and_then(|i| self.refusals.get(i))
        {
            counter.inc();
        }
        if limit == Limit::ConnectionsPerIp {
            tracing::debug!(%peer, limit = limit.label(), "refused {what} ({})", limit.key());
        } else {
            tracing::info!(%peer, limit = limit.label(), "refused {what} ({})", limit.key());
        }
    }
}

/// Counts per key, each bounded by `max`.
struct Counts<K: Eq + Hash> {
    map: Arc<DashMap<K, usize>>,
    max: usize,
}

impl<K: Eq + Hash + Clone> Counts<K> {
    fn new(max: usize) -> Counts<K> {
        Counts {
            map: Arc::new(DashMap::new()),
            max,
        }
    }

    fn acquire(&self, key: K) -> Option<Slot<K>> {
        let mut n = self.map.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        drop(n);
        Some(Slot {
            map: self.map.clone(),
            key,
        })
    }

    fn count<Q>(&self, key: &Q) -> usize
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map_or(0, |n| *n)
    }
}

/// One unit of a per-key count, given back when dropped; a key whose count falls to 0 is
/// removed, so the map holds only keys in use.
pub struct Slot<K: Eq + Hash> {
    map: Arc<DashMap<K, usize>>,
    key: K,
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let empty = match self.map.get_mut(&self.key) {
            Some(mut n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if empty {
            // Under the shard's lock: a slot taken meanwhile keeps the entry.
            self.map.remove_if(&self.key, |_, n| *n == 0);
        }
    }
}

/// The remote domains authenticated on one inbound stream, each holding its
/// `max_streams_per_domain` slot, and the per-peer limits that follow from them.
#[derive(Default)]
pub struct StreamLimits {
    remotes: Vec<Remote>,
    /// The smallest stanza limit among `remotes`: a stanza no larger needs no further check.
    smallest: usize,
}

struct Remote {
    domain: String,
    max_stanza_bytes: usize,
    rate: u64,
    _slot: Slot<String>,
}

impl StreamLimits {
    /// Whether `domain` is authenticated on this stream (its slot is held).
    pub fn holds(&self, domain: &str) -> bool {
        self.remotes.iter().any(|r| r.domain == domain)
    }

    /// Records `domain`, authenticated with its slot, and its stanza limit and byte rate.
    pub fn add(&mut self, domain: &str, slot: Slot<String>, max_stanza_bytes: usize, rate: u64) {
        if self.remotes.is_empty() || max_stanza_bytes < self.smallest {
            self.smallest = max_stanza_bytes;
        }
        super::push_exact(
            &mut self.remotes,
            Remote {
                domain: domain.to_string(),
                max_stanza_bytes,
                rate,
                _slot: slot,
            },
        );
    }

    /// The framer's limit: the largest of the domains' limits (each stanza is then held to
    /// its sender's by [`StreamLimits::too_large`]).
    pub fn max_stanza_bytes(&self) -> Option<usize> {
        self.remotes.iter().map(|r| r.max_stanza_bytes).max()
    }

    /// `Some(limit)` when a stanza of `len` bytes from `domain` is over that domain's limit.
    /// One comparison unless the stream carries domains with different limits.
    #[inline]
    pub fn too_large(&self, domain: &str, len: usize) -> Option<usize> {
        if len <= self.smallest {
            return None;
        }
        self.remotes
            .iter()
            .find(|r| r.domain == domain)
            .map(|r| r.max_stanza_bytes)
            .filter(|max| len > *max)
    }

    /// The stream's byte rate: the lowest of its domains'.
    pub fn rate(&self) -> Option<u64> {
        self.remotes.iter().map(|r| r.rate).min()
    }
}

/// The bucket size for a stream held to `rate` bytes per second whose stanzas may be
/// `max_stanza_bytes`: one second's worth, or one whole stanza if that is more.
pub fn burst(rate: u64, max_stanza_bytes: usize) -> u64 {
    rate.max(max_stanza_bytes as u64)
}

/// Our XEP-0478 stream feature: what we accept on an inbound stream.
pub fn limits_feature(max_bytes: usize, idle: Duration) -> String {
    format!(
        "<limits xmlns='{}'><max-bytes>{max_bytes}</max-bytes><idle-seconds>{}</idle-seconds></limits>",
        ns::STREAM_LIMITS,
        idle.as_secs()
    )
}

/// The `max-bytes` a peer announced in its stream features (XEP-0478), if any.
pub fn advertised_max_bytes(features: &Element) -> Option<usize> {
    let text = features
        .child("limits", ns::STREAM_LIMITS)?
        .child("max-bytes", ns::STREAM_LIMITS)?
        .text();
    text.trim().parse().ok().filter(|n| *n > 0)
}

/// The largest stanza an outbound link may carry, and whose limit it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundCap {
    /// The largest stanza size in bytes the link may send.
    pub max: usize,
    /// The peer announced it (XEP-0478), rather than `[[federation.peer]] max_stanza_bytes`.
    pub advertised: bool,
}

impl OutboundCap {
    /// The smaller of the limit configured for the peer and the one it announced in
    /// `features`; `None` when there is neither.
    pub fn new(configured: Option<usize>, features: &Element) -> Option<OutboundCap> {
        OutboundCap::from_limits(configured, advertised_max_bytes(features))
    }

    /// The smaller of the configured and the announced limit, when there is either.
    pub fn from_limits(
        configured: Option<usize>,
        advertised: Option<usize>,
    ) -> Option<OutboundCap> {
        match (configured, advertised) {
            (Some(c), Some(a)) if a < c => Some(OutboundCap {
                max: a,
                advertised: true,
            }),
            (Some(c), _) => Some(OutboundCap {
                max: c,
                advertised: false,
            }),
            (None, Some(a)) => Some(OutboundCap {
                max: a,
                advertised: true,
            }),
            (None, None) => None,
        }
    }

    /// The bounce text for a stanza of `len` bytes for `remote`.
    pub fn text(&self, remote: &str, len: usize) -> String {
        if self.advertised {
            format!(
                "the stanza is {len} bytes; {remote} accepts at most {} (its XEP-0478 max-bytes)",
                self.max
            )
        } else {
            format!(
                "the stanza is {len} bytes; federation.peer max_stanza_bytes for {remote} is {}",
                self.max
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(xml: &str) -> Element {
        let stanza = crate::xml::stanza::Stanza::parse(
            bytes::Bytes::copy_from_slice(xml.as_bytes()),
            &crate::xml::stanza::NsContext::server(),
        )
        .unwrap();
        stanza.element().unwrap()
    }

    #[test]
    fn slots_count_per_key_and_give_back_on_drop() {
        let counts: Counts<IpAddr> = Counts::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = counts.acquire(a).unwrap();
        let second = counts.acquire(a).unwrap();
        assert!(counts.acquire(a).is_none(), "the third from one address");
        assert!(
            counts.acquire(b).is_some(),
            "another address is counted apart"
        );
        assert_eq!(counts.count(&a), 2);
        drop(first);
        let third = counts.acquire(a).unwrap();
        drop(second);
        drop(third);
        assert_eq!(counts.count(&a), 0);
        assert!(counts.map.is_empty(), "no key left behind");
    }

    #[test]
    fn a_stream_is_held_to_each_senders_limit_and_the_lowest_rate() {
        let counts: Counts<String> = Counts::new(8);
        let mut limits = StreamLimits::default();
        assert_eq!(limits.too_large("a.test", 10_000_000), None, "nothing yet");
        limits.add(
            "a.test",
            counts.acquire("a.test".into()).unwrap(),
            4096,
            5000,
        );
        limits.add(
            "b.test",
            counts.acquire("b.test".into()).unwrap(),
            1024,
            9000,
        );
        assert!(limits.holds("a.test") && !limits.holds("c.test"));
        assert_eq!(limits.max_stanza_bytes(), Some(4096));
        assert_eq!(limits.too_large("a.test", 2000), None);
        assert_eq!(limits.too_large("b.test", 2000), Some(1024));
        assert_eq!(limits.too_large("a.test", 5000), Some(4096));
        assert_eq!(limits.rate(), Some(5000));
        drop(limits);
        assert!(counts.map.is_empty(), "the slots went with the stream");
    }

    #[test]
    fn the_outbound_cap_is_the_smaller_of_configured_and_advertised() {
        let with = element(
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>\
             <limits xmlns='urn:xmpp:stream-limits:0'><max-bytes> 10000 </max-bytes>\
             <idle-seconds>600</idle-seconds></limits></stream:features>",
        );
        let without = element("<stream:features xmlns:stream='http://etherx.jabber.org/streams'/>");
        assert_eq!(advertised_max_bytes(&with), Some(10_000));
        assert_eq!(advertised_max_bytes(&without), None);
        let cap = OutboundCap::new(None, &with).unwrap();
        assert!(cap.advertised && cap.max == 10_000);
        assert!(cap.text("b.test", 12_000).contains("at most 10000"));
        let cap = OutboundCap::new(Some(2000), &with).unwrap();
        assert!(!cap.advertised && cap.max == 2000);
        assert!(cap
            .text("b.test", 3000)
            .contains("max_stanza_bytes for b.test is 2000"));
        assert_eq!(
            OutboundCap::new(Some(20_000), &with).map(|c| c.max),
            Some(10_000)
        );
        assert_eq!(OutboundCap::new(None, &without), None);
    }

    #[test]
    fn the_feature_announces_bytes_and_idle_seconds() {
        assert_eq!(
            limits_feature(524_288, Duration::from_secs(600)),
            "<limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>524288</max-bytes><idle-seconds>600</idle-seconds></limits>"
        );
        assert_eq!(burst(1000, 4096), 4096);
        assert_eq!(burst(1 << 20, 4096), 1 << 20);
    }
}
