//! Server-to-server sessions (RFC 6120, XEP-0220 Server Dialback). One module per protocol:
//!
//! - [`inbound`]: a remote server connects to us: the task that drives [`negotiate::inbound`]
//!   and then takes the stanzas of the domain pairs proved on the stream.
//! - [`negotiate`]: stream negotiation, sans-I/O, states named for what they wait for (the
//!   inbound direction: header, features, STARTTLS, SASL EXTERNAL, the XEP-0288 request).
//! - [`outbound`]: we connect to a remote server for one (local, remote) domain pair: walk its
//!   targets, authenticate, retry, queue, bounce, and write the stanzas the router queues.
//! - [`bidi`]: XEP-0288 bidirectional streams: an inbound stream's way back for our stanzas,
//!   and the rules for what the peer may send on our outbound stream.
//! - [`connect`]: the initiating side up to authentication (TCP, direct TLS or STARTTLS,
//!   certificate check), shared by outbound sessions and dialback's connect-back.
//! - [`dialback`]: XEP-0220 in every role: initiating (outbound), receiving and authoritative
//!   (inbound), connect-back; the wire elements and verdicts.
//! - [`sm`]: XEP-0198 stream management in both roles: the receiving side's counters and
//!   resumption store, the sending side's unacknowledged stanzas and negotiation.
//! - [`keepalive`]: whitespace keepalives (both directions) and XEP-0199 pings, whose answers
//!   come back on the peer's stream to us.
//! - [`limits`]: what one address, domain and stream may take of the gateway, and the answers
//!   when a limit is reached.
//! - [`registry`]: live sessions, recent failures and attempt [`trace`]s per remote domain.

pub mod bidi;
pub mod connect;
pub mod dialback;
pub mod inbound;
pub mod keepalive;
pub mod limits;
pub mod negotiate;
pub mod outbound;
pub mod registry;
pub mod sm;
#[cfg(test)]
pub(crate) mod test_support;
pub mod trace;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, S2sConfig};
use crate::dialback::DialbackSecret;
use crate::dns::Resolver;
use crate::policy::SecurityPolicy;
use crate::router::Router;
use crate::tls::Tls;
use crate::xml::error::StreamErrorCondition;

/// What every s2s session needs, shared.
pub struct S2sContext {
    /// Hands each authenticated stanza to its backend or to the outbound session for its
    /// pair, or bounces it.
    pub router: Arc<Router>,
    /// Finds the targets of remote domains (static routes, SRV, A/AAAA).
    pub resolver: Resolver,
    /// The key dialback keys are made and checked with (XEP-0220 §2.1.1, XEP-0185).
    pub secret: Arc<DialbackSecret>,
    /// The `[s2s]` section as configured (each field, with its default and unit, is
    /// documented on [`S2sConfig`]).
    pub settings: S2sConfig,
    /// Certificates and handshakes.
    pub tls: Arc<Tls>,
    /// How each peer must secure and authenticate its streams.
    pub security: arc_swap::ArcSwap<SecurityPolicy>,
    /// Peers that answered our SASL EXTERNAL with `<failure/>`: later sessions go straight to
    /// dialback instead of failing the same way again (XEP-0178 §3 fallback).
    pub external_refused: dashmap::DashSet<String>,
    /// Remote domain → the established outbound link that takes more of our domains' pairs
    /// to it (XEP-0220 multiplexing, `s2s/outbound/piggyback.rs`).
    pub links: outbound::Links,
    /// Peers that refused a pair on an established link (or did not answer): later pairs
    /// get links of their own, until restart.
    pub piggyback_refused: dashmap::DashSet<String>,
    /// Cancelled when fedgate stops: sessions close with `<system-shutdown/>`.
    pub shutdown: CancellationToken,
    /// Cancelled when inbound streams are to end, before the outbound ones: when a drain
    /// starts, so that peers reconnect to another instance while our outbound queues are
    /// still written out (or with `shutdown`, of which it is a child).
    pub inbound_shutdown: CancellationToken,
    /// Outbound sessions and verifications, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// XEP-0198 state of dropped inbound streams, kept for resumption.
    pub resumable: sm::ResumeStore,
    /// Our XEP-0199 pings waiting for their answers (which arrive on the peer's stream to us).
    pub pings: keepalive::Pings,
    /// Live sessions, recent failures and attempt traces per remote domain: for `/peers`, and
    /// for reloads that apply a new policy to live sessions.
    pub registry: registry::Registry,
    /// Connections per address, streams per domain, verifications in flight, refusals.
    pub limits: limits::Limits,
    /// Which gateway instance this is, for `/peers` when several serve one domain: the
    /// host's name and the first s2s listen address, e.g. `gw1 (10.0.0.1:5269)`.
    pub instance: String,
}

/// The host's name (Linux), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl S2sContext {
    /// What every s2s session shares, from `config` (`[s2s]` settings and the peers' security
    /// policy) and the services the caller built: the only place an `S2sContext` is made, so
    /// the gateway and `fedgate check remote` connect with exactly the same rules.
    pub fn new(
        config: &Config,
        router: Arc<Router>,
        tls: Arc<Tls>,
        resolver: Resolver,
        secret: Arc<DialbackSecret>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> S2sContext {
        let settings = config.s2s.clone();
        let limits = limits::Limits::new(&settings, &router.metrics);
        S2sContext {
            router,
            resolver,
            secret,
            settings,
            tls,
            security: arc_swap::ArcSwap::from_pointee(SecurityPolicy::from_config(config)),
            external_refused: Default::default(),
            links: Default::default(),
            piggyback_refused: Default::default(),
            inbound_shutdown: shutdown.child_token(),
            shutdown,
            tracker,
            resumable: Default::default(),
            pings: Default::default(),
            registry: Default::default(),
            limits,
            instance: match config.s2s.listen.first() {
                Some(addr) => format!("{} ({addr})", host_name()),
                None => host_name(),
            },
        }
    }

    /// Keeps `trace` as the latest attempt to reach `remote`, and logs it step by step.
    pub fn remember_attempt(&self, remote: &str, trace: trace::Trace) {
        tracing::debug!(remote, "connection attempt:\n{trace}");
        self.registry.attempted(remote, trace);
    }
}

/// A `<stream:error/>` a remote server sent us, reduced to what logs, metrics and bounce texts
/// need (RFC 6120 §4.9.2).
#[derive(Debug, Clone)]
pub struct PeerStreamError {
    /// The defined condition, `None` for a name we do not know (RFC 6120 §4.9.3 defines them
    /// all; a missing one reads as `undefined-condition`). Decisions look here.
    pub condition: Option<StreamErrorCondition>,
    /// The condition element's name as sent (may be one we do not know): for logs and texts.
    pub name: String,
    /// The `<text/>` the peer added, if any: for logs and bounce texts.
    pub text: Option<String>,
}

impl PeerStreamError {
    /// Reads a received `<stream:error/>`. Never fails: one with no condition element, or
    /// that does not parse as a tree, reads as `undefined-condition`; an unknown condition
    /// keeps its name, with `condition: None`.
    pub fn parse(stanza: &crate::xml::stanza::Stanza) -> PeerStreamError {
        use crate::xml::ns;
        let undefined = || PeerStreamError {
            condition: Some(StreamErrorCondition::UndefinedCondition),
            name: StreamErrorCondition::UndefinedCondition.as_str().into(),
            text: None,
        };
        match stanza.element() {
            Ok(e) => {
                let text = e.child("text", ns::STREAMS).map(|t| t.text());
                match e
                    .children()
                    .find(|c| c.ns == ns::STREAMS && c.name != "text")
                {
                    Some(c) => PeerStreamError {
                        condition: StreamErrorCondition::from_name(&c.name),
                        name: c.name.clone(),
                        text,
                    },
                    None => PeerStreamError {
                        text,
                        ..undefined()
                    },
                }
            }
            Err(_) => undefined(),
        }
    }

    /// A metric label from the closed set of RFC 6120 conditions.
    pub fn label(&self) -> &'static str {
        self.condition
            .as_ref()
            .map_or("undefined-condition", StreamErrorCondition::as_str)
    }
}

impl std::fmt::Display for PeerStreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}/>", self.name)?;
        if let Some(text) = &self.text {
            write!(f, ": {text}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::xml::stanza::{NsContext, Stanza};

    fn stream_error(xml: &'static str) -> PeerStreamError {
        let stanza =
            Stanza::parse(Bytes::from_static(xml.as_bytes()), &NsContext::server()).unwrap();
        PeerStreamError::parse(&stanza)
    }

    /// Idle sessions by the thousand: a stream's one pair must not keep a list of four.
    #[test]
    fn a_list_pushed_exactly_has_room_for_what_it_holds_only() {
        let mut pairs = Vec::new();
        push_exact(&mut pairs, ("a.test".to_string(), "b.test".to_string()));
        assert_eq!(pairs.capacity(), 1);
        push_exact(&mut pairs, ("c.a.test".to_string(), "b.test".to_string()));
        assert_eq!(pairs.capacity(), 2);
    }

    #[test]
    fn a_peer_stream_error_is_typed_and_an_unknown_name_kept_for_the_text() {
        let e = stream_error("<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no</text></stream:error>");
        assert_eq!(e.condition, Some(StreamErrorCondition::HostUnknown));
        assert_eq!(e.to_string(), "<host-unknown/>: no");
        let e = stream_error(
            "<stream:error><made-up xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        );
        assert_eq!(e.condition, None, "no defined condition to decide on");
        assert_eq!(e.label(), "undefined-condition");
        assert_eq!(e.to_string(), "<made-up/>");
        let e = stream_error("<stream:error/>");
        assert_eq!(e.condition, Some(StreamErrorCondition::UndefinedCondition));
    }
}

/// Pushes onto a list that nearly always holds one item (a stream's domain pairs, the peers
/// and limits behind them): it grows one slot at a time, where `Vec` starts at four, which
/// would keep three empty slots in each of thousands of idle sessions.
pub(crate) fn push_exact<T>(list: &mut Vec<T>, item: T) {
    list.reserve_exact(1);
    list.push(item);
}
