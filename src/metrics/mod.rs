//! Prometheus metrics: one [`Metrics`] struct, registered once, names and help texts here.
//!
//! Labels are small closed sets (direction, kind, condition, result), never JIDs; the one
//! exception, `peer`, is bounded by [`peers`]. Handles used per stanza are resolved at
//! registration or once per session, so the hot path is one atomic increment.
//!
//! - [`peers`]: per-peer figures with a bounded `peer` label.
//! - [`http`]: the `/metrics`, `/healthz` and `/readyz` endpoint.

pub mod http;
mod labels;
pub mod peers;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub use labels::{
    AuthMethod, BounceCause, DialbackResult, DialbackRole, Direction, DropReason, PolicyMode,
};
pub use peers::{PeerEntry, PeerSession, Peers};

use crate::xml::stanza::Kind;

/// Latency buckets (seconds) for network steps: DNS, TCP, TLS, authentication.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets (seconds) for time in the outbound queue: microseconds while a link is up, up to
/// the retry window while it connects.
const QUEUE_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0,
];

/// Per-kind stanza counters of one link and direction, resolved once.
#[derive(Clone)]
pub struct StanzaCounters {
    message: (IntCounter, IntCounter),
    presence: (IntCounter, IntCounter),
    iq: (IntCounter, IntCounter),
}

impl StanzaCounters {
    /// Counts one stanza of `kind` and `len` bytes.
    #[inline]
    pub fn count(&self, kind: Kind, len: usize) {
        let (stanzas, bytes) = match kind {
            Kind::Message => &self.message,
            Kind::Presence => &self.presence,
            Kind::Iq => &self.iq,
            _ => return,
        };
        stanzas.inc();
        bytes.inc_by(len as u64);
    }
}

/// XEP-0198 events of one direction, resolved once.
#[derive(Clone)]
pub struct SmCounters {
    /// `<enabled/>` sent (inbound) or received (outbound).
    pub enabled: IntCounter,
    /// A stream resumed.
    pub resumed: IntCounter,
    /// A `<resume/>` answered (or answered us) with `<failed/>`.
    pub resume_failed: IntCounter,
    /// `<a/>` sent (inbound) or received (outbound).
    pub acked: IntCounter,
    /// A dropped stream's counters kept for resumption.
    pub kept: IntCounter,
    /// Inbound stanzas acknowledged before they had left the gateway, because they kept `h`
    /// back in a full window while later ones had left (`crate::s2s::sm::Receiving`).
    pub held: IntCounter,
}

/// One s2s session in `fedgate_s2s_sessions{direction, state, auth}` for as long as it lives:
/// `negotiating` with `auth="none"` until [`SessionGauge::established`].
pub struct SessionGauge {
    family: IntGaugeVec,
    current: IntGauge,
    direction: Direction,
}

impl SessionGauge {
    /// The session authenticated with `method` (`external` or `dialback`).
    pub fn established(&mut self, method: &str) {
        self.current.dec();
        self.current =
            self.family
                .with_label_values(&[self.direction.as_str(), "established", method]);
        self.current.inc();
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.current.dec();
    }
}

/// `fedgate_s2s_bidi_links{direction}`: established s2s connections that carry stanzas both
/// ways (XEP-0288), by the direction the connection was opened in (`inbound`: the peer
/// connected and we write our stanzas back on its stream). Resolved once.
#[derive(Clone)]
pub struct BidiLinks {
    inbound: IntGauge,
    outbound: IntGauge,
}

impl BidiLinks {
    fn register(r: &Registry) -> BidiLinks {
        let family = registered(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "fedgate_s2s_bidi_links",
                    "Established s2s connections carrying stanzas both ways (XEP-0288), by the direction they were opened in",
                ),
                &["direction"],
            )
            .expect("valid metric"),
        );
        BidiLinks {
            inbound: family.with_label_values(&[Direction::Inbound.as_str()]),
            outbound: family.with_label_values(&[Direction::Outbound.as_str()]),
        }
    }

    /// Counts one bidirectional link for as long as the guard lives.
    pub fn link(&self, direction: Direction) -> BidiLink {
        let gauge = match direction {
            Direction::Inbound => self.inbound.clone(),
            Direction::Outbound => self.outbound.clone(),
        };
        gauge.inc();
        BidiLink(gauge)
    }
}

/// One link in `fedgate_s2s_bidi_links` until dropped.
pub struct BidiLink(IntGauge);

impl Drop for BidiLink {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How an attempt to carry a domain pair on an established outbound link ended
/// (`fedgate_s2s_piggyback_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiggybackResult {
    /// `type='valid'`: the link carries the pair.
    Carried,
    /// `type='invalid'`.
    Invalid,
    /// `type='error'` (a dialback error), or an answer we do not know.
    Error,
    /// No answer within `negotiation_timeout`.
    Timeout,
    /// The link ended (lost, idle, shut down) before it answered.
    Lost,
    /// The link carries `max_outbound_pairs_per_stream` pairs already.
    Full,
}

impl PiggybackResult {
    const ALL: [PiggybackResult; 6] = [
        PiggybackResult::Carried,
        PiggybackResult::Invalid,
        PiggybackResult::Error,
        PiggybackResult::Timeout,
        PiggybackResult::Lost,
        PiggybackResult::Full,
    ];

    /// The `result` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            PiggybackResult::Carried => "carried",
            PiggybackResult::Invalid => "invalid",
            PiggybackResult::Error => "error",
            PiggybackResult::Timeout => "timeout",
            PiggybackResult::Lost => "lost",
            PiggybackResult::Full => "full",
        }
    }
}

/// Outbound piggybacking (XEP-0220 §2.6.1): `fedgate_s2s_piggybacked_pairs`, the domain pairs
/// outbound links carry besides their own, and `fedgate_s2s_piggyback_total{result}`.
/// Resolved once.
#[derive(Clone)]
pub struct Piggyback {
    /// `fedgate_s2s_piggybacked_pairs`: up when a link takes a pair, down when it drops it.
    pub pairs: IntGauge,
    results: [IntCounter; 6],
}

impl Piggyback {
    fn register(r: &Registry) -> Piggyback {
        let pairs = gauge(
            r,
            "fedgate_s2s_piggybacked_pairs",
            "Domain pairs carried on outbound s2s links besides the link's own (XEP-0220 multiplexing)",
        );
        let family = counter_vec(
            r,
            "fedgate_s2s_piggyback_total",
            "Attempts to carry a domain pair on an established outbound link, by result",
            &["result"],
        );
        Piggyback {
            pairs,
            results: PiggybackResult::ALL.map(|x| family.with_label_values(&[x.as_str()])),
        }
    }

    /// One more attempt to carry a pair, ended with `result`.
    pub fn result(&self, result: PiggybackResult) {
        self.results[result as usize].inc();
    }
}

/// A backend's figures, resolved once per attachment.
pub struct BackendGauge {
    attached: IntGauge,
    /// Stanzas from the backend.
    pub stanzas_in: IntCounter,
    /// Stanzas to the backend.
    pub stanzas_out: IntCounter,
}

impl Drop for BackendGauge {
    fn drop(&mut self) {
        self.attached.dec();
    }
}

/// Every metric fedgate exports.
#[derive(Clone)]
pub struct Metrics {
    /// Holds every family below; the embedded core registers its own metrics in it too.
    pub registry: Registry,
    /// `fedgate_s2s_sessions{direction, state, auth}`; see [`Metrics::session`].
    pub s2s_sessions: IntGaugeVec,
    /// `fedgate_s2s_bidi_links{direction}`; see [`BidiLinks::link`].
    pub bidi_links: BidiLinks,
    /// `fedgate_s2s_piggybacked_pairs` and `fedgate_s2s_piggyback_total{result}`.
    pub piggyback: Piggyback,
    /// Attached XEP-0114 backend sessions.
    pub component_sessions: IntGauge,
    /// `fedgate_component_attached{backend}`: 1 while the backend is attached; every
    /// configured backend has a series from the start, so a detached one shows 0.
    pub component_attached: IntGaugeVec,
    /// `fedgate_component_attaches_total{backend}`: attachments; more than one means the
    /// backend reconnected.
    pub component_attaches: IntCounterVec,
    /// `fedgate_component_stanzas_total{backend, direction}`.
    pub component_stanzas: IntCounterVec,
    /// Acknowledgements on the component stream (XEP-0198 between the component library
    /// and the gateway); see [`ComponentAcks`].
    pub component_acks: ComponentAcks,
    /// `fedgate_component_reattach_total{outcome}`: backends whose link dropped, and whether
    /// they attached again within `reattach_grace`.
    pub component_reattach: ComponentReattach,
    /// Stanzas relayed over s2s, inbound (from remote servers).
    pub s2s_in: StanzaCounters,
    /// Stanzas relayed over s2s, outbound (to remote servers).
    pub s2s_out: StanzaCounters,
    /// Stanzas received from backends.
    pub component_in: StanzaCounters,
    /// Stanzas delivered to backends.
    pub component_out: StanzaCounters,
    /// `fedgate_bounces_total{condition, cause}`: error stanzas generated for undeliverable
    /// stanzas; see [`Bounces`].
    pub bounces: Bounces,
    /// `fedgate_stanzas_dropped_total{reason}`: stanzas that could not be delivered nor
    /// bounced (errors are never bounced).
    pub dropped: Dropped,
    /// Stream errors by direction (sent, received) and condition.
    pub stream_errors: StreamErrors,
    /// Dialback outcomes by role (`result` as receiving server, `verify` as authoritative
    /// server, `outbound` as originating server) and result.
    pub dialback: DialbackOutcomes,
    /// Outbound connection attempts by result: `established`, or why one failed (the
    /// step, `window`, `policy`, `shutdown`; see [`OutboundAttempts`]).
    pub outbound_attempts: OutboundAttempts,
    /// `fedgate_outbound_stanzas_total{event}`: stanzas `resent` after a link dropped (XEP-0198)
    /// and stanzas `unconfirmed` when a link without XEP-0198 dropped after they were written
    /// (they may or may not have arrived).
    pub outbound_stanzas: OutboundStanzas,
    /// `fedgate_outbound_events_total{event}`: `retry`, `ping_answered`, `ping_timeout`.
    pub outbound_events: OutboundEvents,
    /// `fedgate_outbound_unacked`: stanzas written to remote servers and not yet acknowledged
    /// (XEP-0198), over all sessions.
    pub outbound_unacked: IntGauge,
    /// `fedgate_outbound_queue_stanzas`: stanzas waiting in outbound queues, over all sessions.
    pub outbound_queued: IntGauge,
    /// `fedgate_outbound_queue_seconds`: how long stanzas waited in an outbound queue before
    /// they were written.
    pub outbound_queue_seconds: Histogram,
    /// `fedgate_tls_handshakes_total{direction, result, version}`: result `ok` or `failed`,
    /// version `TLSv1.3`, `TLSv1.2` (or `none` for a failure).
    pub tls_handshakes: IntCounterVec,
    /// `fedgate_tls_handshake_seconds{direction}`.
    pub tls_handshake_seconds: HistogramVec,
    /// `fedgate_s2s_auth_total{direction, method, result}`: method `external` or `dialback`,
    /// result `success` or `failure`.
    pub s2s_auth: S2sAuth,
    /// `fedgate_s2s_auth_seconds{direction, method}`: from the stream's start (after TLS) to
    /// authentication, dialback round trips included.
    pub s2s_auth_seconds: HistogramVec,
    /// `fedgate_s2s_connect_seconds`: TCP connection set-up to a remote server, all of a
    /// host's addresses raced (happy eyeballs).
    pub connect_seconds: Histogram,
    /// `fedgate_dns_lookups_total{result}`: `ok`, `not_found` (no record, NXDOMAIN, `.`),
    /// `error` (the resolver failed or timed out).
    pub dns_lookups: IntCounterVec,
    /// `fedgate_dns_lookup_seconds`.
    pub dns_seconds: Histogram,
    /// `fedgate_certificate_verdicts_total{direction, verdict}`: peers' certificates checked
    /// after the handshake, `valid` or why not (`self_signed`, `name_mismatch`, ...).
    pub certificate_verdicts: CertificateVerdicts,
    /// `fedgate_certificate_expiry_timestamp_seconds{domain}`: when our own certificate for
    /// each configured domain expires.
    pub certificate_expiry: GaugeVec,
    /// `fedgate_s2s_sm_total{direction, event}`: XEP-0198 stream management on s2s, event
    /// `enabled`, `resumed`, `resume_failed`, `acked` or `kept`.
    pub s2s_sm: IntCounterVec,
    /// The inbound half of `s2s_sm`, resolved.
    pub sm_in: SmCounters,
    /// The outbound half of `s2s_sm`, resolved (`kept` stays 0: only receivers keep state).
    pub sm_out: SmCounters,
    /// `fedgate_ready`: 1 when `/readyz` would answer 200.
    pub ready: IntGauge,
    /// `fedgate_policy_refusals_total{direction, mode}`: remote domains refused by
    /// `[federation]` (a refused stream, a bounced stanza, a live session closed by a reload),
    /// `mode="enforced"`, or what would have been refused under `dry_run`, `mode="dry_run"`.
    pub policy_refusals: PolicyRefusals,
    /// `fedgate_config_reloads_total{result}`: SIGHUP and `fedgate reload`, `applied` or
    /// `refused` (the running config stays).
    pub config_reloads: ConfigReloads,
    /// `fedgate_limit_refusals_total{limit}`: connections, authentications and stanzas refused
    /// by an abuse limit; the labels are `crate::s2s::limits::Limit`'s.
    pub limit_refusals: IntCounterVec,
    /// Per-peer figures with a bounded label set.
    pub peers: Arc<Peers>,
    /// The chat service's figures (`[muc]`).
    pub muc: MucMetrics,
    /// The file upload service's figures (`[upload]`).
    pub upload: UploadMetrics,
}

/// `[muc]`: the XEP-0045 service's figures, no labels.
#[derive(Clone)]
pub struct MucMetrics {
    /// `fedgate_muc_rooms`: rooms that exist (persistent empty ones included).
    pub rooms: IntGauge,
    /// `fedgate_muc_occupants`: occupants of all rooms.
    pub occupants: IntGauge,
    /// `fedgate_muc_messages_total`: groupchat messages relayed, each once however many
    /// occupants got it.
    pub messages: IntCounter,
}

impl MucMetrics {
    fn register(r: &Registry) -> MucMetrics {
        MucMetrics {
            rooms: gauge(r, "fedgate_muc_rooms", "Chat rooms of the [muc] service"),
            occupants: gauge(r, "fedgate_muc_occupants", "Occupants of all chat rooms"),
            messages: registered(
                r,
                IntCounter::new(
                    "fedgate_muc_messages_total",
                    "Groupchat messages relayed by the [muc] service, each counted once",
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// `[upload]`: the XEP-0363 service's figures.
#[derive(Clone)]
pub struct UploadMetrics {
    /// `fedgate_upload_slots_total`: slots given out.
    pub slots: IntCounter,
    /// `fedgate_upload_files_total`: files stored by a PUT.
    pub files: IntCounter,
    /// `fedgate_upload_bytes_total`: bytes of the files stored.
    pub bytes: IntCounter,
    /// `fedgate_upload_expired_total`: files deleted at their expiry.
    pub expired: IntCounter,
    /// `fedgate_upload_stored_bytes`: bytes on disk now, all accounts.
    pub stored_bytes: IntGauge,
    /// `fedgate_upload_refusals_total{reason}`, one handle per reason.
    pub refusals: UploadRefusals,
}

/// `fedgate_upload_refusals_total{reason}`: slot requests and PUTs refused, by why.
#[derive(Clone)]
pub struct UploadRefusals {
    /// A slot request that could not be used (filename, size, type).
    pub bad_request: IntCounter,
    /// A slot for a file over `max_file_size`.
    pub too_large: IntCounter,
    /// A slot or a PUT over the account's quota.
    pub quota: IntCounter,
    /// A slot request from a domain not allowed to upload.
    pub forbidden: IntCounter,
    /// A PUT without a valid token for its URL.
    pub token: IntCounter,
    /// A PUT of another length than its slot's (or none).
    pub size: IntCounter,
    /// A PUT of another content type than its slot's.
    pub content_type: IntCounter,
    /// A PUT to a URL that already has a file (or an upload under way).
    pub conflict: IntCounter,
}

impl UploadMetrics {
    fn register(r: &Registry) -> UploadMetrics {
        let counter = |name: &str, help: &str| {
            registered(r, IntCounter::new(name, help).expect("valid metric"))
        };
        let refusals = counter_vec(
            r,
            "fedgate_upload_refusals_total",
            "Upload slot requests and PUTs refused by the [upload] service, by reason",
            &["reason"],
        );
        let reason = |l: &str| refusals.with_label_values(&[l]);
        UploadMetrics {
            slots: counter("fedgate_upload_slots_total", "Upload slots given out"),
            files: counter(
                "fedgate_upload_files_total",
                "Files stored by an upload PUT",
            ),
            bytes: counter("fedgate_upload_bytes_total", "Bytes of the files uploaded"),
            expired: counter(
                "fedgate_upload_expired_total",
                "Uploaded files deleted at their expiry",
            ),
            stored_bytes: gauge(
                r,
                "fedgate_upload_stored_bytes",
                "Bytes of uploaded files on disk",
            ),
            refusals: UploadRefusals {
                bad_request: reason("bad_request"),
                too_large: reason("too_large"),
                quota: reason("quota"),
                forbidden: reason("forbidden"),
                token: reason("token"),
                size: reason("size"),
                content_type: reason("content_type"),
                conflict: reason("conflict"),
            },
        }
    }
}

/// Builds a family and registers it; names are unique by construction.
fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// XEP-0198 on the component stream, resolved once: what the gateway acknowledges to its
/// backends (`direction="inbound"`: stanzas from them, acknowledged once they left the
/// gateway for good) and what its backends acknowledge to it (`"outbound"`).
#[derive(Clone)]
pub struct ComponentAcks {
    /// Backend sessions that enabled acknowledgements.
    pub enabled: IntCounter,
    /// `fedgate_component_acked_total{direction="inbound"}`.
    pub acked_in: IntCounter,
    /// `fedgate_component_unacked{direction="inbound"}`: read from backends on live sessions,
    /// not yet done (in queues, or written to a peer that has not confirmed them).
    pub unacked_in: IntGauge,
    /// `fedgate_component_acked_total{direction="outbound"}`.
    pub acked_out: IntCounter,
    /// `fedgate_component_unacked{direction="outbound"}`: written to backends, not yet
    /// acknowledged by them.
    pub unacked_out: IntGauge,
    /// `fedgate_component_unacked_returned_total`: written to a backend whose link then
    /// dropped before it acknowledged them, and routed again (to a newer session of the
    /// backend, or bounced).
    pub returned: IntCounter,
    /// `fedgate_component_held_total`: backends' stanzas acknowledged out of order because
    /// they kept the count back while later ones finished ([`crate::component::held`]).
    pub held: IntCounter,
}

/// `fedgate_component_reattach_total{outcome}`, a handle per outcome.
#[derive(Clone)]
pub struct ComponentReattach {
    /// `waited`: a backend's link dropped and what was queued for it waits for its next
    /// session.
    pub waited: IntCounter,
    /// `adopted`: a new session of the backend took over what was waiting.
    pub adopted: IntCounter,
    /// `expired`: none came within `reattach_grace` (or the gateway stopped): what waited was
    /// bounced.
    pub expired: IntCounter,
}

impl ComponentReattach {
    fn register(r: &Registry) -> ComponentReattach {
        let v = counter_vec(
            r,
            "fedgate_component_reattach_total",
            "Backends whose component link dropped while stanzas could still come for them: waited = what was queued for them waits for their next session, adopted = a new session took it over, expired = none came within reattach_grace and it was bounced",
            &["outcome"],
        );
        ComponentReattach {
            waited: v.with_label_values(&["waited"]),
            adopted: v.with_label_values(&["adopted"]),
            expired: v.with_label_values(&["expired"]),
        }
    }
}

/// `fedgate_stanzas_dropped_total{reason}`, a handle per [`DropReason`].
#[derive(Clone)]
pub struct Dropped {
    relay_refused: IntCounter,
    bounce_undeliverable: IntCounter,
    presence_not_bounced: IntCounter,
    error_not_bounced: IntCounter,
}

impl Dropped {
    fn register(r: &Registry) -> Dropped {
        let v = counter_vec(
            r,
            "fedgate_stanzas_dropped_total",
            "Stanzas neither delivered nor bounced (error stanzas are never bounced)",
            &["reason"],
        );
        let of = |reason: DropReason| v.with_label_values(&[reason.as_str()]);
        Dropped {
            relay_refused: of(DropReason::RelayRefused),
            bounce_undeliverable: of(DropReason::BounceUndeliverable),
            presence_not_bounced: of(DropReason::PresenceNotBounced),
            error_not_bounced: of(DropReason::ErrorNotBounced),
        }
    }

    /// One more stanza dropped for `reason`.
    pub fn count(&self, reason: DropReason) {
        match reason {
            DropReason::RelayRefused => &self.relay_refused,
            DropReason::BounceUndeliverable => &self.bounce_undeliverable,
            DropReason::PresenceNotBounced => &self.presence_not_bounced,
            DropReason::ErrorNotBounced => &self.error_not_bounced,
        }
        .inc();
    }
}

/// `fedgate_bounces_total{condition, cause}`: the stanza error condition a bounce carries and
/// its [`BounceCause`]. A series appears with its first bounce (a bounce is the rare path, so
/// the lookup is not on a hot path).
#[derive(Clone)]
pub struct Bounces(IntCounterVec);

impl Bounces {
    /// One more stanza returned to its sender with `condition`, for `cause`.
    pub fn count(&self, condition: crate::xml::error::StanzaErrorCondition, cause: BounceCause) {
        self.0
            .with_label_values(&[condition.as_str(), cause.as_str()])
            .inc();
    }

    /// How many stanzas were returned with `condition` for `cause` so far.
    #[cfg(test)]
    pub(crate) fn get(
        &self,
        condition: crate::xml::error::StanzaErrorCondition,
        cause: BounceCause,
    ) -> u64 {
        self.0
            .with_label_values(&[condition.as_str(), cause.as_str()])
            .get()
    }
}

/// `fedgate_dialback_total{role, result}`, every (role, result) resolved once.
#[derive(Clone)]
pub struct DialbackOutcomes([[IntCounter; 3]; 3]);

impl DialbackOutcomes {
    const ROLES: [DialbackRole; 3] = [
        DialbackRole::Receiving,
        DialbackRole::Authoritative,
        DialbackRole::Originating,
    ];
    const RESULTS: [DialbackResult; 3] = [
        DialbackResult::Valid,
        DialbackResult::Invalid,
        DialbackResult::Error,
    ];

    fn register(r: &Registry) -> DialbackOutcomes {
        let v = counter_vec(
            r,
            "fedgate_dialback_total",
            "Server Dialback outcomes",
            &["role", "result"],
        );
        DialbackOutcomes(Self::ROLES.map(|role| {
            Self::RESULTS.map(|result| v.with_label_values(&[role.as_str(), result.as_str()]))
        }))
    }

    /// One more dialback exchange in `role` that ended with `result`.
    pub fn count(&self, role: DialbackRole, result: DialbackResult) {
        self.0[role as usize][result as usize].inc();
    }
}

/// `fedgate_s2s_auth_total{direction, method, result}`, every combination resolved once.
#[derive(Clone)]
pub struct S2sAuth([[[IntCounter; 2]; 2]; 2]);

impl S2sAuth {
    fn register(r: &Registry) -> S2sAuth {
        let v = counter_vec(
            r,
            "fedgate_s2s_auth_total",
            "s2s authentications (SASL EXTERNAL or dialback), by direction, method and result",
            &["direction", "method", "result"],
        );
        S2sAuth([Direction::Inbound, Direction::Outbound].map(|direction| {
            [AuthMethod::External, AuthMethod::Dialback].map(|method| {
                ["failure", "success"].map(|result| {
                    v.with_label_values(&[direction.as_str(), method.as_str(), result])
                })
            })
        }))
    }

    /// One more authentication of a stream (or pair) in `direction` by `method`.
    pub fn count(&self, direction: Direction, method: AuthMethod, success: bool) {
        self.0[direction as usize][method as usize][usize::from(success)].inc();
    }
}

/// `fedgate_policy_refusals_total{direction, mode}`, every combination resolved once.
#[derive(Clone)]
pub struct PolicyRefusals([[IntCounter; 2]; 2]);

impl PolicyRefusals {
    fn register(r: &Registry) -> PolicyRefusals {
        let v = counter_vec(
            r,
            "fedgate_policy_refusals_total",
            "Remote domains refused by the federation policy (mode=enforced) or that would have been under dry_run (mode=dry_run), by direction",
            &["direction", "mode"],
        );
        PolicyRefusals([Direction::Inbound, Direction::Outbound].map(|direction| {
            [PolicyMode::Enforced, PolicyMode::DryRun]
                .map(|mode| v.with_label_values(&[direction.as_str(), mode.as_str()]))
        }))
    }

    /// One more remote domain refused (or, `DryRun`, that would have been).
    pub fn count(&self, direction: Direction, mode: PolicyMode) {
        self.0[direction as usize][mode as usize].inc();
    }
}

/// `fedgate_outbound_attempts_total{result}`: `established`, resolved once, or the step that
/// failed.
#[derive(Clone)]
pub struct OutboundAttempts {
    /// `result="established"`: attempts that ended in an authenticated session.
    pub established: IntCounter,
    by_result: IntCounterVec,
}

impl OutboundAttempts {
    fn register(r: &Registry) -> OutboundAttempts {
        let by_result = counter_vec(
            r,
            "fedgate_outbound_attempts_total",
            "Outbound s2s connection attempts by result",
            &["result"],
        );
        OutboundAttempts {
            established: by_result.with_label_values(&["established"]),
            by_result,
        }
    }

    /// One more attempt that failed at `step` (`OutboundError`'s label: a closed set, and an
    /// attempt costs a connection, so the lookup is not on a hot path).
    pub fn failed(&self, step: &'static str) {
        self.by_result.with_label_values(&[step]).inc();
    }
}

/// `fedgate_certificate_verdicts_total{direction, verdict}`.
#[derive(Clone)]
pub struct CertificateVerdicts(IntCounterVec);

impl CertificateVerdicts {
    /// One more peer certificate checked in `direction`; `verdict` is `CertVerdict::label`'s
    /// (a closed set; one lookup per TLS handshake, not per stanza).
    pub fn count(&self, direction: Direction, verdict: &'static str) {
        self.0
            .with_label_values(&[direction.as_str(), verdict])
            .inc();
    }
}

/// `fedgate_config_reloads_total{result}`: `applied` or `refused`.
#[derive(Clone)]
pub struct ConfigReloads {
    /// Reloads whose configuration was loaded and put in effect.
    pub applied: IntCounter,
    /// Reloads refused: the file, its certificates or its secrets did not load or validate;
    /// the running configuration stays.
    pub refused: IntCounter,
}

impl ConfigReloads {
    fn register(r: &Registry) -> ConfigReloads {
        let v = counter_vec(
            r,
            "fedgate_config_reloads_total",
            "Configuration reloads (SIGHUP, fedgate reload), by result: applied or refused",
            &["result"],
        );
        ConfigReloads {
            applied: v.with_label_values(&["applied"]),
            refused: v.with_label_values(&["refused"]),
        }
    }
}

/// `fedgate_outbound_stanzas_total{event}`, a handle per event, so that call sites name the
/// event rather than spell its label.
#[derive(Clone)]
pub struct OutboundStanzas {
    /// `resent`: unacknowledged stanzas (XEP-0198) written again on a new link.
    pub resent: IntCounter,
    /// `unconfirmed`: written on a link without XEP-0198 that ended before the peer confirmed
    /// them (they may or may not have arrived).
    pub unconfirmed: IntCounter,
    /// `resent_unconfirmed`: those written again on the next link (`unconfirmed = "resend"`).
    pub resent_unconfirmed: IntCounter,
}

/// `fedgate_outbound_events_total{event}`, a handle per event.
#[derive(Clone)]
pub struct OutboundEvents {
    /// A connection attempt after a failed one.
    pub retry: IntCounter,
    /// A liveness check (XEP-0199 ping or XEP-0198 request) answered.
    pub ping_answered: IntCounter,
    /// A liveness check unanswered within `ping_timeout`: the link is dropped.
    pub ping_timeout: IntCounter,
}

/// `fedgate_stream_errors_total{direction, condition}`: the condition is one of RFC 6120's,
/// so the label set stays closed.
#[derive(Clone)]
pub struct StreamErrors(IntCounterVec);

impl StreamErrors {
    /// We sent `<condition/>`.
    pub fn sent(&self, condition: &crate::xml::error::StreamErrorCondition) {
        self.0
            .with_label_values(&["sent", condition.as_str()])
            .inc();
    }

    /// The peer sent a stream error; `condition` from the closed set (unknown ones are
    /// `undefined-condition`).
    pub fn received(&self, condition: Option<&crate::xml::error::StreamErrorCondition>) {
        let label = condition.map_or("undefined-condition", |c| c.as_str());
        self.0.with_label_values(&["received", label]).inc();
    }
}

impl ComponentAcks {
    fn register(r: &Registry) -> ComponentAcks {
        let acked = counter_vec(
            r,
            "fedgate_component_acked_total",
            "Stanzas acknowledged on XEP-0114 component streams with acknowledgements (XEP-0198): inbound = from backends, acknowledged by the gateway once they left it for good; outbound = to backends, acknowledged by them",
            &["direction"],
        );
        let unacked = registered(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "fedgate_component_unacked",
                    "Stanzas on component streams with acknowledgements not yet acknowledged: inbound = read from backends and not yet done; outbound = written to backends and not yet acknowledged by them",
                ),
                &["direction"],
            )
            .expect("valid metric"),
        );
        ComponentAcks {
            enabled: registered(
                r,
                IntCounter::new(
                    "fedgate_component_acks_enabled_total",
                    "Backend sessions that enabled acknowledgements (XEP-0198) on the component stream",
                )
                .expect("valid metric"),
            ),
            acked_in: acked.with_label_values(&["inbound"]),
            unacked_in: unacked.with_label_values(&["inbound"]),
            acked_out: acked.with_label_values(&["outbound"]),
            unacked_out: unacked.with_label_values(&["outbound"]),
            returned: registered(
                r,
                IntCounter::new(
                    "fedgate_component_unacked_returned_total",
                    "Stanzas written to a backend whose link dropped before it acknowledged them, routed again (to a newer session, or bounced)",
                )
                .expect("valid metric"),
            ),
            held: registered(
                r,
                IntCounter::new(
                    "fedgate_component_held_total",
                    "Backends' stanzas acknowledged out of order (held: still in the gateway, reported done later) because they kept the XEP-0198 count back while later ones finished",
                )
                .expect("valid metric"),
            ),
        }
    }
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    registered(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric"),
    )
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    registered(
        registry,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid metric"),
    )
}

impl Metrics {
    /// Creates every metric in a new registry, with no named peers and 20 dynamic peer labels.
    pub fn register() -> Metrics {
        Metrics::register_with(Vec::new(), 20)
    }

    /// Creates every metric in a new registry; `named_peers` always get their own `peer`
    /// label, and up to `top_peers` others by traffic (see [`peers`]).
    pub fn register_with(named_peers: Vec<String>, top_peers: usize) -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let s2s_sessions = registered(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "fedgate_s2s_sessions",
                    "Live s2s sessions by direction, state (negotiating, established) and authentication method",
                ),
                &["direction", "state", "auth"],
            )
            .expect("valid metric"),
        );
        let bidi_links = BidiLinks::register(r);
        let piggyback = Piggyback::register(r);
        let component_acks = ComponentAcks::register(r);
        let component_reattach = ComponentReattach::register(r);
        let component_sessions = gauge(
            r,
            "fedgate_component_sessions",
            "Attached XEP-0114 backend sessions",
        );
        let component_attached = registered(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "fedgate_component_attached",
                    "1 while the configured backend is attached over XEP-0114",
                ),
                &["backend"],
            )
            .expect("valid metric"),
        );
        let component_attaches = counter_vec(
            r,
            "fedgate_component_attaches_total",
            "Backend attachments (more than one: the backend reconnected)",
            &["backend"],
        );
        let component_stanzas = counter_vec(
            r,
            "fedgate_component_stanzas_total",
            "Stanzas exchanged with each backend, by direction (inbound = from the backend)",
            &["backend", "direction"],
        );
        let stanzas = counter_vec(
            r,
            "fedgate_stanzas_total",
            "Stanzas relayed, by link and kind",
            &["link", "direction", "kind"],
        );
        let bytes = counter_vec(
            r,
            "fedgate_stanza_bytes_total",
            "Stanza bytes relayed, by link and kind",
            &["link", "direction", "kind"],
        );
        let bounces = Bounces(counter_vec(
            r,
            "fedgate_bounces_total",
            "Error stanzas returned to senders, by condition and cause",
            &["condition", "cause"],
        ));
        let dropped = Dropped::register(r);
        let stream_errors = StreamErrors(counter_vec(
            r,
            "fedgate_stream_errors_total",
            "Stream errors sent and received",
            &["direction", "condition"],
        ));
        let dialback = DialbackOutcomes::register(r);
        let outbound_attempts = OutboundAttempts::register(r);
        let outbound_stanzas = counter_vec(
            r,
            "fedgate_outbound_stanzas_total",
            "Outbound stanzas resent after a dropped link (XEP-0198), or unconfirmed when a link without it dropped",
            &["event"],
        );
        let outbound_stanzas = OutboundStanzas {
            resent: outbound_stanzas.with_label_values(&["resent"]),
            unconfirmed: outbound_stanzas.with_label_values(&["unconfirmed"]),
            resent_unconfirmed: outbound_stanzas.with_label_values(&["resent_unconfirmed"]),
        };
        let outbound_events = counter_vec(
            r,
            "fedgate_outbound_events_total",
            "Outbound link events: retries, pings",
            &["event"],
        );
        let outbound_events = OutboundEvents {
            retry: outbound_events.with_label_values(&["retry"]),
            ping_answered: outbound_events.with_label_values(&["ping_answered"]),
            ping_timeout: outbound_events.with_label_values(&["ping_timeout"]),
        };
        let outbound_unacked = gauge(
            r,
            "fedgate_outbound_unacked",
            "Stanzas written to remote servers and not yet acknowledged (XEP-0198)",
        );
        let outbound_queued = gauge(
            r,
            "fedgate_outbound_queue_stanzas",
            "Stanzas waiting in outbound queues",
        );
        let outbound_queue_seconds = histogram(
            r,
            "fedgate_outbound_queue_seconds",
            "Time stanzas waited in an outbound queue before they were written",
            QUEUE_BUCKETS,
        );
        let tls_handshakes = counter_vec(
            r,
            "fedgate_tls_handshakes_total",
            "TLS handshakes on s2s streams, by direction, result and TLS version",
            &["direction", "result", "version"],
        );
        let tls_handshake_seconds = histogram_vec(
            r,
            "fedgate_tls_handshake_seconds",
            "TLS handshake duration on s2s streams",
            &["direction"],
            LATENCY_BUCKETS,
        );
        let s2s_auth = S2sAuth::register(r);
        let s2s_auth_seconds = histogram_vec(
            r,
            "fedgate_s2s_auth_seconds",
            "Time from the stream's start to its authentication (dialback round trips included)",
            &["direction", "method"],
            LATENCY_BUCKETS,
        );
        let connect_seconds = histogram(
            r,
            "fedgate_s2s_connect_seconds",
            "TCP connection set-up to remote servers",
            LATENCY_BUCKETS,
        );
        let dns_lookups = counter_vec(
            r,
            "fedgate_dns_lookups_total",
            "DNS lookups for remote servers (SRV and A/AAAA), by result",
            &["result"],
        );
        let dns_seconds = histogram(
            r,
            "fedgate_dns_lookup_seconds",
            "DNS lookup duration for remote servers (cache hits included)",
            LATENCY_BUCKETS,
        );
        let certificate_verdicts = CertificateVerdicts(counter_vec(
            r,
            "fedgate_certificate_verdicts_total",
            "Peer certificates checked after TLS handshakes, by verdict",
            &["direction", "verdict"],
        ));
        let certificate_expiry = registered(
            r,
            GaugeVec::new(
                Opts::new(
                    "fedgate_certificate_expiry_timestamp_seconds",
                    "Unix time our certificate for each local domain expires",
                ),
                &["domain"],
            )
            .expect("valid metric"),
        );
        let s2s_sm = counter_vec(
            r,
            "fedgate_s2s_sm_total",
            "XEP-0198 stream management on s2s, by direction and event",
            &["direction", "event"],
        );
        let ready = gauge(
            r,
            "fedgate_ready",
            "1 when fedgate is ready: listeners bound and every configured backend attached",
        );
        let policy_refusals = PolicyRefusals::register(r);
        let config_reloads = ConfigReloads::register(r);
        let limit_refusals = counter_vec(
            r,
            "fedgate_limit_refusals_total",
            "Connections, authentications and stanzas refused by an abuse limit, by limit",
            &["limit"],
        );
        let build = registered(
            r,
            IntGaugeVec::new(
                Opts::new("fedgate_build_info", "fedgate's version; always 1"),
                &["version"],
            )
            .expect("valid metric"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique");
        let muc = MucMetrics::register(r);
        let upload = UploadMetrics::register(r);
        let mut peers = Peers::register(r);
        peers.configure(named_peers, top_peers);

        let counters = |link: &str, direction: &str| {
            let pair = |kind: &str| {
                (
                    stanzas.with_label_values(&[link, direction, kind]),
                    bytes.with_label_values(&[link, direction, kind]),
                )
            };
            StanzaCounters {
                message: pair("message"),
                presence: pair("presence"),
                iq: pair("iq"),
            }
        };
        let sm = |direction: &str| SmCounters {
            enabled: s2s_sm.with_label_values(&[direction, "enabled"]),
            resumed: s2s_sm.with_label_values(&[direction, "resumed"]),
            resume_failed: s2s_sm.with_label_values(&[direction, "resume_failed"]),
            acked: s2s_sm.with_label_values(&[direction, "acked"]),
            kept: s2s_sm.with_label_values(&[direction, "kept"]),
            held: s2s_sm.with_label_values(&[direction, "held"]),
        };
        Metrics {
            sm_in: sm("inbound"),
            sm_out: sm("outbound"),
            s2s_sm,
            s2s_in: counters("s2s", "inbound"),
            s2s_out: counters("s2s", "outbound"),
            component_in: counters("component", "inbound"),
            component_out: counters("component", "outbound"),
            registry,
            s2s_sessions,
            bidi_links,
            piggyback,
            component_sessions,
            component_attached,
            component_attaches,
            component_stanzas,
            component_acks,
            component_reattach,
            bounces,
            dropped,
            stream_errors,
            dialback,
            outbound_attempts,
            outbound_stanzas,
            outbound_events,
            outbound_unacked,
            outbound_queued,
            outbound_queue_seconds,
            tls_handshakes,
            tls_handshake_seconds,
            s2s_auth,
            s2s_auth_seconds,
            connect_seconds,
            dns_lookups,
            dns_seconds,
            certificate_verdicts,
            certificate_expiry,
            ready,
            policy_refusals,
            config_reloads,
            limit_refusals,
            peers: Arc::new(peers),
            muc,
            upload,
        }
    }

    /// Counts a new s2s session as `negotiating` until it is established.
    pub fn session(&self, direction: Direction) -> SessionGauge {
        let current =
            self.s2s_sessions
                .with_label_values(&[direction.as_str(), "negotiating", "none"]);
        current.inc();
        SessionGauge {
            family: self.s2s_sessions.clone(),
            current,
            direction,
        }
    }

    /// A finished (or failed) TLS handshake: `version` is `None` when it failed.
    pub fn tls_handshake(&self, direction: Direction, version: Option<&str>, took: Duration) {
        let (result, version) = match version {
            Some(v) => ("ok", v),
            None => ("failed", "none"),
        };
        self.tls_handshakes
            .with_label_values(&[direction.as_str(), result, version])
            .inc();
        self.tls_handshake_seconds
            .with_label_values(&[direction.as_str()])
            .observe(took.as_secs_f64());
    }

    /// An s2s authentication that succeeded with `method` after `took`.
    pub fn authenticated(&self, direction: Direction, method: &str, took: Duration) {
        self.s2s_auth_seconds
            .with_label_values(&[direction.as_str(), method])
            .observe(took.as_secs_f64());
    }

    /// A DNS lookup with its result label (`ok`, `not_found`, `error`).
    pub fn dns_lookup(&self, result: &str, took: Duration) {
        self.dns_lookups.with_label_values(&[result]).inc();
        self.dns_seconds.observe(took.as_secs_f64());
    }

    /// Gives every configured backend a series at 0, so that one that never attached shows.
    pub fn expect_backends<'a>(&self, backends: impl IntoIterator<Item = &'a str>) {
        for backend in backends {
            self.component_attached.with_label_values(&[backend]).set(0);
            self.component_attaches.with_label_values(&[backend]);
            for direction in ["inbound", "outbound"] {
                self.component_stanzas
                    .with_label_values(&[backend, direction]);
            }
        }
    }

    /// Counts `backend` as attached while the returned guard lives.
    pub fn backend_attached(&self, backend: &str) -> BackendGauge {
        let attached = self.component_attached.with_label_values(&[backend]);
        attached.inc();
        self.component_attaches.with_label_values(&[backend]).inc();
        BackendGauge {
            attached,
            stanzas_in: self
                .component_stanzas
                .with_label_values(&[backend, "inbound"]),
            stanzas_out: self
                .component_stanzas
                .with_label_values(&[backend, "outbound"]),
        }
    }

    /// The text exposition of every metric, per-peer figures brought up to date first.
    pub fn encode(&self) -> String {
        self.peers.sync();
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        let _ = encoder.encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `sample` (`name{label="…",…}`) in `exposition`.
    fn value(exposition: &str, sample: &str) -> Option<f64> {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
    }

    /// The typed handles index arrays by enum order: each combination must count under its
    /// own labels, and only there.
    #[test]
    fn each_typed_handle_counts_under_its_own_labels() {
        let roles = [
            DialbackRole::Receiving,
            DialbackRole::Authoritative,
            DialbackRole::Originating,
        ];
        let results = [
            DialbackResult::Valid,
            DialbackResult::Invalid,
            DialbackResult::Error,
        ];
        let directions = [Direction::Inbound, Direction::Outbound];
        let methods = [AuthMethod::External, AuthMethod::Dialback];
        let modes = [PolicyMode::Enforced, PolicyMode::DryRun];
        let reasons = [
            DropReason::RelayRefused,
            DropReason::BounceUndeliverable,
            DropReason::PresenceNotBounced,
            DropReason::ErrorNotBounced,
        ];
        let m = Metrics::register();
        // Each combination counted a different number of times, so a swapped index shows.
        let mut n = 0;
        let mut expect = Vec::new();
        for role in roles {
            for result in results {
                n += 1;
                (0..n).for_each(|_| m.dialback.count(role, result));
                expect.push((
                    format!(
                        "fedgate_dialback_total{{result=\"{}\",role=\"{}\"}}",
                        result.as_str(),
                        role.as_str()
                    ),
                    n,
                ));
            }
        }
        for direction in directions {
            for method in methods {
                for success in [false, true] {
                    n += 1;
                    (0..n).for_each(|_| m.s2s_auth.count(direction, method, success));
                    expect.push((
                        format!(
                            "fedgate_s2s_auth_total{{direction=\"{}\",method=\"{}\",result=\"{}\"}}",
                            direction.as_str(),
                            method.as_str(),
                            if success { "success" } else { "failure" }
                        ),
                        n,
                    ));
                }
            }
            for mode in modes {
                n += 1;
                (0..n).for_each(|_| m.policy_refusals.count(direction, mode));
                expect.push((
                    format!(
                        "fedgate_policy_refusals_total{{direction=\"{}\",mode=\"{}\"}}",
                        direction.as_str(),
                        mode.as_str()
                    ),
                    n,
                ));
            }
        }
        for reason in reasons {
            n += 1;
            (0..n).for_each(|_| m.dropped.count(reason));
            expect.push((
                format!(
                    "fedgate_stanzas_dropped_total{{reason=\"{}\"}}",
                    reason.as_str()
                ),
                n,
            ));
        }
        let text = m.encode();
        for (sample, n) in expect {
            assert_eq!(value(&text, &sample), Some(n as f64), "{sample}");
        }
    }

    /// Dashboards, alerts and tests select bounces by these `cause` values: renaming one is
    /// not a refactor.
    #[test]
    fn bounce_causes_keep_their_label_values() {
        use crate::xml::error::StanzaErrorCondition;
        let causes = [
            (BounceCause::Malformed, "malformed"),
            (BounceCause::NoBackend, "no_backend"),
            (BounceCause::BackendDetached, "backend_detached"),
            (BounceCause::Policy, "policy"),
            (BounceCause::QueueFull, "queue_full"),
            (BounceCause::Stalled, "stalled"),
            (BounceCause::LinkUnstable, "link_unstable"),
            (BounceCause::TooLarge, "too_large"),
            (BounceCause::Unconfirmed, "unconfirmed"),
            (BounceCause::Dns, "dns"),
            (BounceCause::Connect, "connect"),
            (BounceCause::Tls, "tls"),
            (BounceCause::Stream, "stream"),
            (BounceCause::Auth, "auth"),
            (BounceCause::Window, "window"),
            (BounceCause::Shutdown, "shutdown"),
        ];
        let m = Metrics::register();
        for (cause, label) in causes {
            assert_eq!(cause.as_str(), label);
            m.bounces
                .count(StanzaErrorCondition::RemoteServerTimeout, cause);
        }
        let text = m.encode();
        for (_, label) in causes {
            let sample = format!(
                "fedgate_bounces_total{{cause=\"{label}\",condition=\"remote-server-timeout\"}}"
            );
            assert_eq!(value(&text, &sample), Some(1.0), "{sample}");
        }
    }
}
