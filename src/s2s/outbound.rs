//! Outbound s2s: one session per (local, remote) domain pair, started by the router on demand.
//!
//! Steps (RFC 6120 §3.2 and §4, XEP-0368, XEP-0220 §2.1, XEP-0198):
//! 1. [walk](super::connect::Walk) the remote domain's targets (static route, SRV records,
//!    A/AAAA fallback) until a stream opens, TLS and certificate rules included; every step
//!    goes into a [`Trace`];
//! 2. authenticate: SASL EXTERNAL when it can work, else dialback;
//! 3. enable (or resume) XEP-0198 stream management when the peer offers it;
//! 4. established: write queued stanzas in order, batched, one flush per batch; keep every
//!    stanza until the peer acknowledges it (with XEP-0198); bounce, with `policy-violation`
//!    and a text naming the limit, a stanza larger than the peer announced it accepts
//!    (XEP-0478 `max-bytes`) or than its `[[federation.peer]] max_stanza_bytes`, rather than
//!    have the peer end the stream over it; keep the link alive (whitespace),
//!    check an idle one (`<r/>` or an XEP-0199 ping) and drop it when the check goes
//!    unanswered; close with `</stream:stream>` after `idle_timeout` without traffic.
//!
//! Failures are retried with exponential backoff and jitter for `retry_window` while stanzas
//! wait in the session's bounded queue (the router bounces overflow with
//! `resource-constraint`). When the window closes, or at once for a final answer (the domain
//! does not exist, the peer refused our key or certificate), every waiting stanza goes back to
//! its sender with `remote-server-not-found` (nothing to connect to) or
//! `remote-server-timeout`, and a text naming the cause; for `failure_window` afterwards, new
//! stanzas bounce at once with the same cause. A link that drops with stanzas unacknowledged
//! resumes (XEP-0198) or resends them on a new link; without XEP-0198 the stanzas written since
//! the peer last proved it had read them are counted and logged as unconfirmed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::connect::{
    self, offers_dialback, offers_external, ConnectError, Opened, Security, Stage, Step, Walk,
};
use super::dialback::initiating::{self, DialbackRefusal};
use super::keepalive::Whitespace;
use super::limits::{Limit, OutboundCap};
use super::registry::{Negotiated, Pair, Registration};
use super::sm::sending::Incoming;
use super::sm::{self, Carry};
use super::trace::Trace;
use super::{PeerStreamError, S2sContext};
use crate::connection::{Connection, Reader, Writer};
use crate::dns::ResolveError;
use crate::metrics::{Direction, PeerEntry};
use crate::policy::PeerSecurity;
use crate::router::{next_session_id, OutboundHandle, OutboundShared, Queued};
use crate::tls::Tls;
use crate::xml::element::Element;
use crate::xml::error::{SaslCondition, StanzaErrorCondition, StreamErrorCondition};
use crate::xml::framer::Event;
use crate::xml::ns;
use crate::xml::stanza::{Kind, NsContext, Stanza};
use crate::xml::stream::StreamHeader;

/// Largest batch written before a flush.
const BATCH_BYTES: usize = 256 * 1024;
/// A link that stayed up this long worked: its loss starts a fresh series of retries.
const STABLE_LINK: Duration = Duration::from_secs(10);

/// Why an outbound session could not be established. The queued stanzas are bounced with
/// [`OutboundError::condition`] and the error's text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{remote} refused our dialback key ({refusal})")]
    DialbackRefused {
        remote: String,
        refusal: DialbackRefusal,
    },
    #[error("{remote} refused our certificate for SASL EXTERNAL ({}) and dialback is not allowed", .condition.map_or("failure", SaslCondition::as_str))]
    ExternalRefused {
        remote: String,
        /// The `<failure/>`'s condition, `None` when it named none we know.
        condition: Option<SaslCondition>,
    },
    #[error("no authentication method in common with {target}: {reason}")]
    NoAuthentication { target: String, reason: String },
    #[error("the connection was lost: {reason}")]
    Lost { reason: String },
    #[error("fedgate is shutting down")]
    Shutdown,
    /// A reload's federation policy refuses the remote domain.
    #[error("{reason}")]
    Policy { reason: String },
}

impl OutboundError {
    /// The stanza error that bounced stanzas carry (RFC 6120 §8.3.3): not found when there is
    /// nothing to connect to, timeout when there was but it did not work out.
    pub fn condition(&self) -> StanzaErrorCondition {
        match self {
            OutboundError::Resolve(_) | OutboundError::Connect(ConnectError::Resolve(_)) => {
                StanzaErrorCondition::RemoteServerNotFound
            }
            // XEP-0220 §2.1.1: an invalid key bounces with internal-server-error, a dialback
            // error with remote-server-timeout.
            OutboundError::DialbackRefused {
                refusal: DialbackRefusal::Invalid,
                ..
            } => StanzaErrorCondition::InternalServerError,
            OutboundError::Shutdown => StanzaErrorCondition::ServiceUnavailable,
            OutboundError::Policy { .. } => StanzaErrorCondition::NotAllowed,
            _ => StanzaErrorCondition::RemoteServerTimeout,
        }
    }

    /// Whether trying again later may help. A domain that does not exist, a peer that refuses
    /// our key or certificate, or one whose certificate or TLS offer our policy refuses gives
    /// the same answer a minute later: its stanzas bounce at once.
    fn retryable(&self) -> bool {
        match self {
            OutboundError::Resolve(e) | OutboundError::Connect(ConnectError::Resolve(e)) => {
                matches!(e, ResolveError::Lookup { .. })
            }
            OutboundError::Connect(
                ConnectError::Certificate { .. } | ConnectError::TlsUnavailable { .. },
            ) => false,
            // The peer's own verdict: final unless it says it is busy or going away.
            OutboundError::Connect(ConnectError::PeerStreamError { error, .. }) => matches!(
                error.condition,
                Some(
                    StreamErrorCondition::SystemShutdown
                        | StreamErrorCondition::ConnectionTimeout
                        | StreamErrorCondition::InternalServerError
                        | StreamErrorCondition::ResourceConstraint
                        | StreamErrorCondition::RemoteConnectionFailed
                        | StreamErrorCondition::Reset
                        | StreamErrorCondition::UndefinedCondition
                )
            ),
            OutboundError::Connect(_) | OutboundError::Lost { .. } => true,
            _ => false,
        }
    }

    /// How far the attempt got; with several targets, the cause reported is the one that got
    /// furthest (a certificate problem says more than a refused backup port).
    fn progress(&self) -> u8 {
        match self {
            OutboundError::Resolve(_) | OutboundError::Connect(ConnectError::Resolve(_)) => 0,
            OutboundError::Connect(e) => match e.step() {
                Step::Dns | Step::Connect => 1,
                Step::Stream => 2,
                Step::Tls => 3,
            },
            _ => 4,
        }
    }

    /// The `fedgate_outbound_attempts_total` result label.
    fn label(&self) -> &'static str {
        match self {
            OutboundError::Resolve(_) => "dns",
            OutboundError::Connect(e) => e.step().label(),
            OutboundError::DialbackRefused { .. }
            | OutboundError::ExternalRefused { .. }
            | OutboundError::NoAuthentication { .. } => "auth",
            OutboundError::Shutdown => "shutdown",
            OutboundError::Policy { .. } => "policy",
            _ => "stream",
        }
    }
}

/// How an s2s stream was authenticated (outbound, and each pair of an inbound stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// SASL EXTERNAL with the initiating server's certificate (XEP-0178).
    External,
    /// Server Dialback (XEP-0220).
    Dialback,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::External => "external",
            AuthMethod::Dialback => "dialback",
        }
    }
}

/// Starts the session task for (local, remote) and returns the router's handle to it.
pub fn spawn(ctx: Arc<S2sContext>, local: &str, remote: &str) -> OutboundHandle {
    let (tx, rx) = mpsc::channel(ctx.settings.queue_max_stanzas);
    let shared = Arc::new(OutboundShared::default());
    let handle = OutboundHandle {
        id: next_session_id(),
        local: Arc::from(local),
        tx,
        shared: shared.clone(),
    };
    let session = Session::new(&ctx, handle.id, local, remote, shared);
    ctx.tracker.spawn(session.run(rx));
    handle
}

/// What [`probe`] learnt from a link that authenticated.
#[derive(Debug)]
pub struct Probe {
    /// Where the link went, as logs name it: `xmpp.b.example:5269 (192.0.2.1)`.
    pub label: String,
    pub method: AuthMethod,
    /// TLS (with the peer's certificate chain) and the certificate's verdict.
    pub security: Security,
    /// The features the peer offered before authentication (after TLS).
    pub offered: Element,
    /// The features after authentication.
    pub features: Element,
}

/// Steps 1–2 exactly as a session for (local, remote) runs them, then `</stream:stream>`
/// without a stanza: `fedgate check remote`. The trace has every step, failed or not.
pub async fn probe(
    ctx: Arc<S2sContext>,
    local: &str,
    remote: &str,
) -> (Trace, Result<Probe, OutboundError>) {
    // Listed while it runs: a probe is a session too, and a reload may close it.
    let session = Session::new(&ctx, next_session_id(), local, remote, Arc::default());
    let mut trace = Trace::new();
    let probed = match session.connect(&mut trace).await {
        Ok(link) => {
            link.conn.close().await;
            trace.ok(format!("stream to {} closed", link.label));
            Ok(Probe {
                label: link.label,
                method: link.method,
                security: link.security,
                offered: link.offered,
                features: link.features,
            })
        }
        Err(e) => Err(e),
    };
    (trace, probed)
}

struct Session {
    /// This session in the registry: what `/peers` shows, and how a reload closes it.
    live: Registration,
    id: u64,
    local: String,
    remote: String,
    /// The remote domain's per-peer figures.
    peer: Arc<PeerEntry>,
    shared: Arc<OutboundShared>,
    ctx: Arc<S2sContext>,
}

/// An authenticated stream.
struct Link {
    conn: Connection,
    /// Where it goes, as logs and errors name it.
    label: String,
    method: AuthMethod,
    security: Security,
    /// The peer's features after authentication (XEP-0198 is offered there).
    features: Element,
    /// The features it offered before authentication, for diagnostics.
    offered: Element,
}

/// How an established link ended.
enum Ended {
    /// Idle or shut down: the queue was written out; the session is over.
    Done,
    /// The link was lost; stanzas may still be queued or unacknowledged.
    Lost(String),
    /// A reload's policy refuses the remote domain: the stream was closed with
    /// `<policy-violation/>`, and what is queued goes back to its senders.
    Kicked(String),
}

/// A liveness check in flight on an idle link.
enum Check {
    /// An XEP-0198 `<r/>`: any `<a/>` answers it.
    Ack { deadline: Instant },
    /// An XEP-0199 ping, answered on the peer's stream to us. Once answered, the stanzas
    /// written before it are known to have been read.
    Ping {
        id: String,
        answered: oneshot::Receiver<()>,
        deadline: Instant,
        written_before: u64,
    },
}

impl Check {
    fn deadline(&self) -> Instant {
        match self {
            Check::Ack { deadline } | Check::Ping { deadline, .. } => *deadline,
        }
    }
}

/// Resolves when the ping in `check` is answered; never for anything else.
async fn ping_answered(check: &mut Option<Check>) {
    if let Some(Check::Ping { answered, .. }) = check {
        if answered.await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// `delay` ±20 %, so that sessions failing together do not retry in lockstep.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.8..1.2))
}

impl Session {
    /// A session for (local, remote), listed in the registry from now on.
    fn new(
        ctx: &Arc<S2sContext>,
        id: u64,
        local: &str,
        remote: &str,
        shared: Arc<OutboundShared>,
    ) -> Session {
        Session {
            live: ctx.registry.open(Direction::Outbound, None),
            id,
            local: local.to_string(),
            remote: remote.to_string(),
            peer: ctx.router.metrics.peers.entry(remote),
            shared,
            ctx: ctx.clone(),
        }
    }

    async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        let settings = &self.ctx.settings;
        let metrics = &self.ctx.router.metrics;
        let mut carry = Carry::new(metrics.outbound_unacked.clone());
        let mut failing_since: Option<Instant> = None;
        let mut delay = settings.retry_initial_delay;
        let failure = loop {
            let mut trace = Trace::new();
            let mut gauge = metrics.session(Direction::Outbound);
            let attempt = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => Err(OutboundError::Shutdown),
                _ = self.live.kicked() => Err(OutboundError::Policy { reason: self.live.kick_reason() }),
                r = self.connect(&mut trace) => r,
            };
            self.ctx.remember_attempt(&self.remote, trace);
            let link = match attempt {
                Ok(link) => link,
                Err(OutboundError::Shutdown) => break OutboundError::Shutdown,
                Err(e @ OutboundError::Policy { .. }) => break e,
                Err(e) => {
                    drop(gauge);
                    self.ctx
                        .registry
                        .failed(&self.remote, Direction::Outbound, e.to_string());
                    metrics
                        .outbound_attempts
                        .with_label_values(&[e.label()])
                        .inc();
                    self.peer.attempt_failed();
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let wait = jittered(delay);
                    if !e.retryable() || since.elapsed() + wait >= settings.retry_window {
                        break e;
                    }
                    tracing::info!(local = %self.local, remote = %self.remote, "outbound s2s attempt failed: {e}; retrying in {}ms", wait.as_millis());
                    if let Err(e) = self.back_off(wait, &mut delay).await {
                        break e;
                    }
                    continue;
                }
            };
            metrics
                .outbound_attempts
                .with_label_values(&["established"])
                .inc();
            tracing::info!(local = %self.local, remote = %self.remote, peer = %link.label, auth = link.method.as_str(), "outbound s2s established: {}", link.security);
            let up = Instant::now();
            gauge.established(link.method.as_str());
            self.peer.attempt_succeeded();
            if let Some(expiry) = link
                .security
                .tls
                .as_ref()
                .and_then(Tls::peer_certificate_expiry)
            {
                self.peer.certificate_expires(expiry);
            }
            let certificate = link.security.verdict.as_ref().map(|v| v.to_string());
            self.live.update(|n| {
                n.address = Some(link.label.clone());
                n.tls = link.security.tls.clone();
                n.certificate = certificate;
                n.pairs = vec![Pair {
                    local: self.local.clone(),
                    remote: self.remote.clone(),
                    auth: link.method.as_str(),
                }];
            });
            let peer_session = metrics.peers.open(&self.remote, Direction::Outbound);
            self.shared.established.store(true, Ordering::Release);
            let ended = self.established(link, &mut rx, &mut carry).await;
            self.shared.established.store(false, Ordering::Release);
            drop(peer_session);
            drop(gauge);
            self.live.update(|n| *n = Negotiated::default());
            match ended {
                Ended::Done => return,
                Ended::Kicked(reason) => break OutboundError::Policy { reason },
                Ended::Lost(why) => {
                    self.ctx.registry.failed(
                        &self.remote,
                        Direction::Outbound,
                        format!("link lost: {why}"),
                    );
                    tracing::info!(local = %self.local, remote = %self.remote, unacknowledged = carry.unacked.len(), "outbound s2s lost: {why}");
                    if rx.is_empty() && carry.unacked.is_empty() {
                        self.ctx.router.remove_outbound(&self.remote, self.id);
                        // A stanza may have slipped in between the check and the removal.
                        rx.close();
                        if rx.is_empty() {
                            return;
                        }
                    }
                    if up.elapsed() >= STABLE_LINK {
                        // A link that worked for a while: reconnect at once, failures anew.
                        failing_since = None;
                        delay = settings.retry_initial_delay;
                        continue;
                    }
                    // A link that drops as soon as it is up counts as a failed attempt, so
                    // a flapping peer is retried with backoff and, in the end, bounced.
                    let since = *failing_since.get_or_insert(up);
                    let wait = jittered(delay);
                    if since.elapsed() + wait >= settings.retry_window {
                        break OutboundError::Lost { reason: why };
                    }
                    if let Err(e) = self.back_off(wait, &mut delay).await {
                        break e;
                    }
                }
            }
        };
        self.give_up(failure, rx, carry).await;
    }

    /// Waits `wait` before the next attempt (a `retry` event) and doubles `delay`, up to
    /// `retry_max_delay`. Shutdown or a reload's kick ends the wait with the session's end.
    async fn back_off(&self, wait: Duration, delay: &mut Duration) -> Result<(), OutboundError> {
        let metrics = &self.ctx.router.metrics;
        metrics.outbound_events.with_label_values(&["retry"]).inc();
        tokio::select! {
            _ = self.ctx.shutdown.cancelled() => return Err(OutboundError::Shutdown),
            _ = self.live.kicked() => return Err(OutboundError::Policy { reason: self.live.kick_reason() }),
            _ = tokio::time::sleep(wait) => {}
        }
        *delay = (*delay * 2).min(self.ctx.settings.retry_max_delay);
        Ok(())
    }

    /// Returns every waiting stanza to its sender with the cause, then keeps bouncing new
    /// ones at once for `failure_window`, then leaves the router.
    async fn give_up(
        &self,
        failure: OutboundError,
        mut rx: mpsc::Receiver<Queued>,
        mut carry: Carry,
    ) {
        if !matches!(failure, OutboundError::Shutdown) {
            tracing::warn!(local = %self.local, remote = %self.remote, "outbound s2s failed, bouncing queued stanzas: {failure}");
        }
        let condition = failure.condition();
        let cause = failure.label();
        let text = failure.to_string();
        let router = &self.ctx.router;
        // The unacknowledged stanzas are the oldest: they go back first.
        for stanza in carry.take_unacked() {
            router.bounce(&stanza, condition, cause, &text).await;
        }
        if !matches!(failure, OutboundError::Shutdown) {
            let until = Instant::now() + self.ctx.settings.failure_window;
            loop {
                tokio::select! {
                    _ = self.ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(until) => break,
                    next = rx.recv() => match next {
                        Some(Queued { stanza, .. }) => {
                            self.dequeued(&stanza);
                            router.bounce(&stanza, condition, cause, &text).await;
                        }
                        None => break,
                    },
                }
            }
        }
        // Stop new stanzas first, then return every queued one.
        router.remove_outbound(&self.remote, self.id);
        rx.close();
        while let Some(Queued { stanza, .. }) = rx.recv().await {
            self.dequeued(&stanza);
            router.bounce(&stanza, condition, cause, &text).await;
        }
    }

    fn dequeued(&self, stanza: &Stanza) {
        self.shared
            .queued_bytes
            .fetch_sub(stanza.raw().len(), Ordering::AcqRel);
    }

    /// Steps 1–2 over each target in turn, until one authenticates.
    async fn connect(&self, trace: &mut Trace) -> Result<Link, OutboundError> {
        let mut walk = Walk::start(&self.ctx, &self.remote, trace).await?;
        let policy = self.ctx.security.load().peer(&self.remote);
        let settings = &self.ctx.settings;
        let mut best: Option<OutboundError> = None;
        let keep = |e: OutboundError, best: &mut Option<OutboundError>| {
            if best.as_ref().is_none_or(|b| e.progress() > b.progress()) {
                *best = Some(e);
            }
        };
        while let Some(opened) = walk
            .next(&self.ctx, &self.local, &self.remote, &policy, trace)
            .await
        {
            let Opened {
                mut conn,
                label,
                header,
                features,
                security,
                ..
            } = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::debug!(remote = %self.remote, "{e}");
                    keep(e.into(), &mut best);
                    continue;
                }
            };
            let started = Instant::now();
            let offered = features.clone();
            let authenticated = tokio::time::timeout(
                settings.negotiation_timeout,
                self.authenticate(&mut conn, &label, header, features, &security, &policy),
            )
            .await;
            match authenticated {
                Ok(Ok((method, features))) => {
                    trace.ok(format!("authenticated by {}", method.as_str()));
                    self.ctx.router.metrics.authenticated(
                        Direction::Outbound,
                        method.as_str(),
                        started.elapsed(),
                    );
                    conn.set_limits(settings.stanza_limits());
                    return Ok(Link {
                        conn,
                        label,
                        method,
                        security,
                        features,
                        offered,
                    });
                }
                Ok(Err(e)) => {
                    trace.failed(format!("authentication: {e}"));
                    let refused = matches!(
                        e,
                        OutboundError::DialbackRefused { .. }
                            | OutboundError::ExternalRefused { .. }
                    );
                    conn.close().await;
                    // A refused key would be refused by every server of the domain.
                    if refused {
                        return Err(e);
                    }
                    keep(e, &mut best);
                }
                Err(_) => {
                    conn.fail(&StreamErrorCondition::ConnectionTimeout, None)
                        .await;
                    let e = ConnectError::Timeout {
                        stage: Stage::Authentication,
                        target: label,
                        after: settings.negotiation_timeout,
                    };
                    trace.failed(e.to_string());
                    keep(e.into(), &mut best);
                }
            }
        }
        Err(best.unwrap_or_else(|| {
            ResolveError::NoRecords {
                domain: self.remote.clone(),
            }
            .into()
        }))
    }

    /// Authenticates an opened stream: SASL EXTERNAL when the peer offers it, we hold a
    /// certificate for our domain that our own trust anchors accept, the policy allows it and
    /// the peer has not refused it before; otherwise (or after a refusal) dialback.
    async fn authenticate(
        &self,
        conn: &mut Connection,
        target: &str,
        header: StreamHeader,
        features: Element,
        security: &Security,
        policy: &PeerSecurity,
    ) -> Result<(AuthMethod, Element), OutboundError> {
        let metrics = &self.ctx.router.metrics;
        let tls = security.tls.is_some();
        let mut header = header;
        let use_external = tls
            && policy.allows_external()
            && offers_external(&features)
            && self.ctx.tls.has_valid_certificate(&self.local)
            && !self.ctx.external_refused.contains(&self.remote);
        if use_external {
            // RFC 6120 §6.4.2: "=" is an empty initial response, no authzid; the receiving
            // server takes our identity from the certificate and the stream's 'from'.
            conn.send(
                b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
            );
            connect::flush(conn, target).await?;
            let answer = connect::next_element(conn, target).await?;
            match (answer.name(), answer.ns()) {
                ("success", ns::SASL) => {
                    metrics
                        .s2s_auth
                        .with_label_values(&["outbound", "external", "success"])
                        .inc();
                    // RFC 6120 §6.4.6: a fresh stream after SASL success.
                    conn.restart();
                    let (_, features) =
                        connect::exchange_headers(conn, &self.local, &self.remote, target).await?;
                    return Ok((AuthMethod::External, features));
                }
                ("failure", ns::SASL) => {
                    metrics
                        .s2s_auth
                        .with_label_values(&["outbound", "external", "failure"])
                        .inc();
                    let named = answer
                        .element()
                        .ok()
                        .and_then(|e| e.children().next().map(|c| c.name.clone()))
                        .unwrap_or_else(|| "failure".into());
                    let condition = SaslCondition::from_name(&named);
                    if condition == Some(SaslCondition::TemporaryAuthFailure) {
                        // Busy (e.g. at its streams-per-domain limit), not a verdict on our
                        // certificate: EXTERNAL is tried again next time.
                        tracing::info!(local = %self.local, remote = %self.remote, "SASL EXTERNAL refused for now ({named}); trying dialback");
                    } else {
                        tracing::info!(local = %self.local, remote = %self.remote, "SASL EXTERNAL refused ({named}); using dialback from now on");
                        self.ctx.external_refused.insert(self.remote.clone());
                    }
                    if !(policy.allows_dialback(tls) && offers_dialback(&header, &features)) {
                        return Err(OutboundError::ExternalRefused {
                            remote: self.remote.clone(),
                            condition,
                        });
                    }
                    // RFC 6120 §6.4.5: the stream stays; try dialback on it.
                }
                (name, _) => {
                    return Err(ConnectError::Stream {
                        target: target.to_string(),
                        reason: format!("expected a SASL answer, got <{name}/>"),
                    }
                    .into())
                }
            }
        }
        if !policy.allows_dialback(tls) {
            return Err(OutboundError::NoAuthentication {
                target: target.to_string(),
                reason: if tls {
                    "SASL EXTERNAL is required but not available".into()
                } else {
                    "dialback without TLS is not allowed".into()
                },
            });
        }
        if !offers_dialback(&header, &features) {
            return Err(OutboundError::NoAuthentication {
                target: target.to_string(),
                reason: "the peer offers no Server Dialback and no usable SASL EXTERNAL".into(),
            });
        }
        let Some(stream_id) = header.id.take() else {
            return Err(ConnectError::Stream {
                target: target.to_string(),
                reason: "the peer's stream header has no id, so dialback is impossible".into(),
            }
            .into());
        };
        let metrics = &self.ctx.router.metrics;
        let key = self.ctx.secret.key(&self.remote, &self.local, &stream_id);
        initiating::authenticate(conn, target, &self.local, &self.remote, &key, metrics)
            .await?
            .map_err(|refusal| OutboundError::DialbackRefused {
                remote: self.remote.clone(),
                refusal,
            })?;
        Ok((AuthMethod::Dialback, features))
    }

    /// Steps 3–4: stream management, then write the queue until idle, shutdown or loss.
    async fn established(
        &self,
        link: Link,
        rx: &mut mpsc::Receiver<Queued>,
        carry: &mut Carry,
    ) -> Ended {
        let Link {
            conn,
            label,
            features,
            ..
        } = link;
        let (mut reader, mut writer) = conn.split();
        let metrics = &self.ctx.router.metrics;
        let configured = self.ctx.security.load().peer(&self.remote).max_stanza_bytes;
        let mut pump = Pump {
            sm: false,
            requested: false,
            unconfirmed: 0,
            written: 0,
            check: None,
            waited: metrics.outbound_queue_seconds.local(),
            cap: OutboundCap::new(configured, &features),
            too_large: Vec::new(),
        };
        if self.ctx.settings.stream_management && sm::offered(&features) {
            match sm::sending::negotiate(
                &mut reader,
                &mut writer,
                carry,
                &self.ctx.router.metrics.sm_out,
                self.ctx.settings.negotiation_timeout,
                &self.remote,
            )
            .await
            {
                Ok(on) => {
                    pump.sm = on;
                    self.live.update(|n| n.stream_management = on);
                }
                Err(why) => return Ended::Lost(why),
            }
        }
        // What the last link left unacknowledged goes out first, in order.
        if !carry.unacked.is_empty() {
            let target = NsContext::server();
            let n = carry.unacked.len();
            for stanza in &carry.unacked {
                writer.send(&stanza.bytes_for(&target));
            }
            metrics
                .outbound_stanzas
                .with_label_values(&["resent"])
                .inc_by(n as u64);
            tracing::info!(remote = %self.remote, "resent {n} unacknowledged stanzas on the new link");
            if !pump.sm {
                // Nothing will acknowledge them on this link.
                carry.take_unacked();
                carry.acked = 0;
                pump.unconfirmed += n as u64;
            } else {
                writer.send(sm::REQUEST);
                pump.requested = true;
            }
            if let Err(e) = writer.flush().await {
                return self.lost(&pump, carry, format!("write to {label} failed: {e}"));
            }
        }
        let ended = self
            .pump(&mut pump, &mut reader, writer, rx, carry, &label)
            .await;
        if let Some(Check::Ping { id, .. }) = &pump.check {
            self.ctx.pings.cancel(id);
        }
        match ended {
            Ended::Lost(why) => self.lost(&pump, carry, why),
            other => other,
        }
    }

    /// Accounts for what a lost link may have taken with it.
    fn lost(&self, pump: &Pump, carry: &Carry, why: String) -> Ended {
        if !pump.sm && pump.unconfirmed > 0 {
            self.ctx
                .router
                .metrics
                .outbound_stanzas
                .with_label_values(&["unconfirmed"])
                .inc_by(pump.unconfirmed);
            tracing::warn!(local = %self.local, remote = %self.remote, "{} stanzas written since the peer last confirmed reading may have been lost (it does not offer XEP-0198 stream management): {why}", pump.unconfirmed);
        } else if pump.sm && !carry.unacked.is_empty() {
            tracing::info!(remote = %self.remote, "{} unacknowledged stanzas will be resent", carry.unacked.len());
        }
        Ended::Lost(why)
    }

    /// Step 4 proper. Timers: whitespace after `keepalive_interval` without writing, a
    /// liveness check after `ping_interval` without stanzas, dead after `ping_timeout`
    /// without its answer, closed after `idle_timeout` without stanzas.
    async fn pump(
        &self,
        pump: &mut Pump,
        reader: &mut Reader,
        mut writer: Writer,
        rx: &mut mpsc::Receiver<Queued>,
        carry: &mut Carry,
        label: &str,
    ) -> Ended {
        let settings = &self.ctx.settings;
        let metrics = &self.ctx.router.metrics;
        let target = NsContext::server();
        let cap = settings.queue_max_stanzas.max(1);
        // Ask for an acknowledgement once this many wait, well before `cap` stops us.
        let ack_batch = (cap / 4).clamp(1, ACK_BATCH);
        let whitespace = Whitespace::new(settings.keepalive_interval);
        let mut last_write = Instant::now();
        let mut last_stanza = last_write;
        // When the last liveness check was sent; whitespace does not count as traffic here.
        let mut last_check = last_write;
        loop {
            let keepalive_at = whitespace.due(last_write);
            let idle_at = last_stanza + settings.idle_timeout;
            let check_at = match &pump.check {
                Some(c) => c.deadline(),
                None => last_stanza.max(last_check) + settings.ping_interval,
            };
            // Acknowledgements are asked for when enough stanzas wait for one, or shortly after
            // the traffic pauses, never per stanza: a request and its answer cost a write on
            // each side.
            let ack_at = if pump.sm && !pump.requested && !carry.unacked.is_empty() {
                last_stanza + ACK_DELAY
            } else {
                idle_at
            };
            let next = keepalive_at.min(idle_at).min(check_at).min(ack_at);
            // With XEP-0198, stop taking stanzas while too many await acknowledgement.
            let room = !pump.sm || carry.unacked.len() < cap;
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => {
                    self.finish(pump, reader, writer, rx, carry, &target, Some(StreamErrorCondition::SystemShutdown)).await;
                    return Ended::Done;
                }
                _ = self.live.kicked() => {
                    // Nothing more is written: what is queued and unacknowledged bounces.
                    let reason = self.live.kick_reason();
                    tracing::info!(local = %self.local, remote = %self.remote, "closing outbound s2s: {reason}");
                    if pump.sm && !carry.unacked.is_empty() {
                        // What the peer has received already must not bounce as well.
                        writer.send(sm::REQUEST);
                        if writer.flush().await.is_ok() {
                            sm::sending::final_acks(reader, carry).await;
                        }
                    }
                    metrics.stream_errors.with_label_values(&["sent", StreamErrorCondition::PolicyViolation.as_str()]).inc();
                    writer.fail(&StreamErrorCondition::PolicyViolation, Some(&reason)).await;
                    return Ended::Kicked(reason);
                }
                _ = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    if now >= idle_at {
                        tracing::debug!(remote = %self.remote, "closing idle outbound s2s");
                        self.finish(pump, reader, writer, rx, carry, &target, None).await;
                        return Ended::Done;
                    }
                    if now >= ack_at && now < check_at {
                        writer.send(sm::REQUEST);
                        pump.requested = true;
                    } else if now >= check_at {
                        if pump.check.is_some() {
                            metrics.outbound_events.with_label_values(&["ping_timeout"]).inc();
                            return Ended::Lost(format!("{label} did not answer a liveness check within {}s", settings.ping_timeout.as_secs_f32()));
                        }
                        let deadline = now + settings.ping_timeout;
                        last_check = now;
                        if pump.sm {
                            writer.send(sm::REQUEST);
                            pump.requested = true;
                            pump.check = Some(Check::Ack { deadline });
                        } else {
                            let ping = self.ctx.pings.start(&self.local, &self.remote);
                            writer.send(&ping.bytes);
                            pump.check = Some(Check::Ping {
                                id: ping.id,
                                answered: ping.answered,
                                deadline,
                                written_before: pump.written,
                            });
                        }
                    } else {
                        writer.send(Whitespace::BYTES);
                    }
                    if let Err(e) = writer.flush().await {
                        return Ended::Lost(format!("write to {label} failed: {e}"));
                    }
                    last_write = now;
                }
                _ = ping_answered(&mut pump.check) => {
                    if let Some(Check::Ping { written_before, .. }) = pump.check.take() {
                        // Everything written before the ping has been read.
                        pump.unconfirmed = pump.written - written_before;
                    }
                    metrics.outbound_events.with_label_values(&["ping_answered"]).inc();
                }
                event = reader.next_event() => {
                    let incoming = match &event {
                        Ok(Event::Stanza(s)) => Incoming::parse(s),
                        _ => None,
                    };
                    match (incoming, event) {
                        (Some(Incoming::Ack { h }), _) => {
                            let acked = h.ok_or_else(|| "an <a/> without a valid 'h'".to_string()).and_then(|h| carry.ack(h));
                            if let Err(why) = acked {
                                writer.fail(&StreamErrorCondition::UndefinedCondition, Some(&why)).await;
                                return Ended::Lost(why);
                            }
                            pump.requested = false;
                            metrics.sm_out.acked.inc();
                            if matches!(pump.check, Some(Check::Ack { .. })) {
                                pump.check = None;
                                metrics.outbound_events.with_label_values(&["ping_answered"]).inc();
                            }
                        }
                        (Some(Incoming::AckRequest), _) => {
                            // We receive no stanzas on an outbound stream.
                            writer.send(&sm::ack(0));
                            if let Err(e) = writer.flush().await {
                                return Ended::Lost(format!("write to {label} failed: {e}"));
                            }
                        }
                        (_, Ok(Event::Stanza(s))) if s.kind() == Kind::StreamError => {
                            let error = PeerStreamError::parse(&s);
                            metrics.stream_errors.with_label_values(&["received", error.label()]).inc();
                            return Ended::Lost(format!("{label} closed the stream with {error}"));
                        }
                        (_, Ok(Event::StreamClose)) => {
                            writer.close().await;
                            return Ended::Lost(format!("{label} closed the stream"));
                        }
                        (_, Ok(_)) => {
                            // A remote server sends nothing on our outbound stream but errors
                            // and stream management (bidirectional s2s, XEP-0288, is not
                            // negotiated).
                            writer.fail(&StreamErrorCondition::UnsupportedStanzaType, Some("this stream is outbound only")).await;
                            return Ended::Lost(format!("{label} sent a stanza on our outbound stream"));
                        }
                        (_, Err(e)) => return Ended::Lost(format!("reading from {label}: {e}")),
                    }
                }
                next = rx.recv(), if room => {
                    let Some(first) = next else { return Ended::Done };
                    self.write(pump, &mut writer, first, carry, &target);
                    while writer.pending() < BATCH_BYTES && (!pump.sm || carry.unacked.len() < cap) {
                        match rx.try_recv() {
                            Ok(s) => self.write(pump, &mut writer, s, carry, &target),
                            Err(_) => break,
                        }
                    }
                    if pump.sm && !pump.requested && carry.unacked.len() >= ack_batch {
                        writer.send(sm::REQUEST);
                        pump.requested = true;
                    }
                    pump.waited.flush();
                    if let Err(e) = writer.flush().await {
                        return Ended::Lost(format!("write to {label} failed: {e}"));
                    }
                    last_write = Instant::now();
                    last_stanza = last_write;
                    self.bounce_too_large(pump).await;
                }
            }
        }
    }

    fn write(
        &self,
        pump: &mut Pump,
        writer: &mut Writer,
        queued: Queued,
        carry: &mut Carry,
        target: &NsContext,
    ) {
        let Queued { stanza, since } = queued;
        pump.waited.observe(since.elapsed().as_secs_f64());
        self.dequeued(&stanza);
        let bytes = stanza.bytes_for(target);
        if pump.cap.as_ref().is_some_and(|cap| bytes.len() > cap.max) {
            // XEP-0478 §4: not sent; bounced after the batch.
            pump.too_large.push((stanza, bytes.len()));
            return;
        }
        self.peer.stanza(Direction::Outbound);
        self.ctx
            .router
            .metrics
            .s2s_out
            .count(stanza.kind(), bytes.len());
        writer.send(&bytes);
        pump.written += 1;
        if pump.sm {
            carry.push(stanza);
        } else {
            pump.unconfirmed += 1;
        }
    }

    /// Returns the stanzas [`Session::write`] held back as too large for the peer to their
    /// senders, `policy-violation` with a text naming the limit (and no `by`: the policy is
    /// the peer's, XEP-0478 §4).
    async fn bounce_too_large(&self, pump: &mut Pump) {
        let Some(cap) = pump.cap.clone() else {
            return;
        };
        for (stanza, len) in std::mem::take(&mut pump.too_large) {
            self.ctx
                .limits
                .refused(Limit::PeerMaxBytes, &self.remote, "an outbound stanza");
            let text = cap.text(&self.remote, len);
            self.ctx
                .router
                .bounce(
                    &stanza,
                    StanzaErrorCondition::PolicyViolation,
                    "too_large",
                    &text,
                )
                .await;
        }
    }

    /// Leaves the router, writes out what is still queued (once removed, nothing new
    /// arrives, so nothing is left behind), asks for a last acknowledgement and closes.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        pump: &mut Pump,
        reader: &mut Reader,
        mut writer: Writer,
        rx: &mut mpsc::Receiver<Queued>,
        carry: &mut Carry,
        target: &NsContext,
        error: Option<StreamErrorCondition>,
    ) {
        self.ctx.router.remove_outbound(&self.remote, self.id);
        rx.close();
        while let Ok(s) = rx.try_recv() {
            self.write(pump, &mut writer, s, carry, target);
        }
        if pump.sm && !carry.unacked.is_empty() {
            writer.send(sm::REQUEST);
        }
        let _ = writer.flush().await;
        match error {
            Some(condition) => writer.fail(&condition, None).await,
            None => writer.close().await,
        }
        self.bounce_too_large(pump).await;
        if !pump.sm || carry.unacked.is_empty() {
            return;
        }
        sm::sending::final_acks(reader, carry).await;
        if !carry.unacked.is_empty() {
            self.ctx
                .router
                .metrics
                .outbound_stanzas
                .with_label_values(&["unconfirmed"])
                .inc_by(carry.unacked.len() as u64);
            tracing::warn!(remote = %self.remote, "closing with {} stanzas not acknowledged by the peer", carry.unacked.len());
        }
    }
}

/// Unacknowledged stanzas that prompt a request at once.
const ACK_BATCH: usize = 128;
/// How soon after the traffic pauses the rest are asked about.
const ACK_DELAY: Duration = Duration::from_millis(200);

/// The state of one established link.
struct Pump {
    /// XEP-0198 is on.
    sm: bool,
    /// An `<r/>` is out and its `<a/>` has not come back.
    requested: bool,
    /// Without XEP-0198: stanzas written since the peer last proved it had read them.
    unconfirmed: u64,
    /// Stanzas written on this link.
    written: u64,
    check: Option<Check>,
    /// `fedgate_outbound_queue_seconds`, flushed once per batch.
    waited: prometheus::local::LocalHistogram,
    /// The largest stanza the peer takes, if it said (XEP-0478) or we were told.
    cap: Option<OutboundCap>,
    /// Stanzas over `cap` taken from the queue, with their size, to bounce after the batch.
    too_large: Vec<(Stanza, usize)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_key_bounces_with_internal_server_error_a_dialback_error_with_timeout() {
        let refused = |refusal| OutboundError::DialbackRefused {
            remote: "b.test".into(),
            refusal,
        };
        let invalid = refused(DialbackRefusal::Invalid);
        assert_eq!(
            invalid.condition(),
            StanzaErrorCondition::InternalServerError
        );
        assert_eq!(
            invalid.to_string(),
            "b.test refused our dialback key (invalid)"
        );
        let error = refused(DialbackRefusal::Error(Some(
            StanzaErrorCondition::RemoteServerTimeout,
        )));
        assert_eq!(error.condition(), StanzaErrorCondition::RemoteServerTimeout);
        assert_eq!(
            error.to_string(),
            "b.test refused our dialback key (error: remote-server-timeout)"
        );
        assert!(!error.retryable());
    }

    #[test]
    fn a_peer_stream_error_is_retried_only_for_a_passing_condition() {
        let peer = |condition| {
            OutboundError::Connect(ConnectError::PeerStreamError {
                target: "b.test:5269".into(),
                error: PeerStreamError {
                    condition,
                    name: String::new(),
                    text: None,
                },
            })
        };
        assert!(peer(Some(StreamErrorCondition::SystemShutdown)).retryable());
        assert!(peer(Some(StreamErrorCondition::UndefinedCondition)).retryable());
        assert!(!peer(Some(StreamErrorCondition::HostUnknown)).retryable());
        assert!(
            !peer(None).retryable(),
            "a condition we do not know is final"
        );
    }
}
