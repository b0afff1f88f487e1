//! Outbound s2s: one session per (local, remote) domain pair, started by the router on demand;
//! one link per remote domain can carry several of them (XEP-0220 multiplexing).
//!
//! This module is the session and its retry loop ([`spawn`], `Session::run`, backoff, giving
//! up and bouncing); `authenticate.rs` holds steps 1–2, `link.rs` steps 3–4, and
//! `piggyback.rs` step 0.
//!
//! Steps (RFC 6120 §3.2 and §4, XEP-0368, XEP-0220 §2.1 and §2.6, XEP-0198):
//! 0. when an established link to the remote domain is listed (another local domain's
//!    session has one), ride on it (`piggyback.rs`): the pair is proved there with a
//!    `<db:result>` and its queue read by that link; a refusal, a full link or the link's end
//!    brings the session back here with its queue, to the steps below. The session's own
//!    link, once established, is listed for the next ones;
//! 1. [walk](super::connect::Walk) the remote domain's targets (static route, SRV records,
//!    A/AAAA fallback) until a stream opens, TLS and certificate rules included; every step
//!    goes into a [`Trace`];
//! 2. authenticate: SASL EXTERNAL when it can work, else dialback; `<bidi/>` first when the
//!    peer offers XEP-0288 over TLS, and the link then also takes the peer's stanzas from
//!    the remote domain to the local one ([`bidi`](super::bidi));
//! 3. enable (or resume) XEP-0198 stream management when the peer offers it;
//! 4. established: write queued stanzas in order, batched, one flush per batch; keep every
//!    stanza until the peer acknowledges it (with XEP-0198); bounce, with `policy-violation`
//!    and a text naming the limit, a stanza larger than the peer announced it accepts
//!    (XEP-0478 `max-bytes`) or than its `[[federation.peer]] max_stanza_bytes`, rather than
//!    have the peer end the stream over it; keep the link alive (whitespace),
//!    check an idle one (`<r/>` or an XEP-0199 ping) and drop it when the check goes
//!    unanswered; close with `</stream:stream>` after `idle_timeout` without traffic.
//!
//! Failures are retried with exponential backoff and jitter for `retry_window` (counted from
//! the first attempt's start; an attempt still under way when it closes, on a silent DNS
//! server or a peer that never finishes negotiating, is cut short) while stanzas
//! wait in the session's bounded queue (the router bounces overflow with
//! `resource-constraint`). When the window closes, or at once for a final answer (the domain
//! does not exist, the peer refused our key or certificate), every waiting stanza goes back to
//! its sender with `remote-server-not-found` (nothing to connect to) or
//! `remote-server-timeout`, and a text naming the cause; for `failure_window` afterwards, new
//! stanzas bounce at once with the same cause. A link that drops with stanzas unacknowledged
//! resumes (XEP-0198) or resends them on a new link; without XEP-0198 every stanza is kept
//! until an XEP-0199 ping written after it is answered (one in flight, after 128 stanzas or
//! 200 ms), and when the link drops the unconfirmed ones are resent on the next link (they may
//! arrive twice: `resent_unconfirmed`) or bounced, as `[[federation.peer]] unconfirmed` says.

mod authenticate;
mod link;
mod piggyback;

pub use piggyback::{Host, Links};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use link::Ended;

use super::connect::{ConnectError, Security, Step};
use super::dialback::initiating::DialbackRefusal;
use super::registry::{Negotiated, Pair, Registration};
use super::sm::Carry;
use super::trace::Trace;
use super::S2sContext;
use crate::dns::ResolveError;
use crate::metrics::{BounceCause, Direction, PeerEntry};
use crate::router::{next_session_id, OutboundHandle, OutboundShared, Queued};
use crate::tls::Tls;
use crate::xml::element::Element;
use crate::xml::error::{SaslCondition, StanzaErrorCondition, StreamErrorCondition};
use crate::xml::stanza::Stanza;

/// A link that stayed up this long worked: its loss starts a fresh series of retries.
const STABLE_LINK: Duration = Duration::from_secs(10);

/// Why an outbound session could not be established. The queued stanzas are bounced with
/// [`OutboundError::condition`] and the error's text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    /// The peer's SRV or address records could not be found or looked up.
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    /// No candidate address took the connection, its TLS or its stream.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// XEP-0220: the peer answered our `<db:result>` with `invalid` or an error.
    #[error("{remote} refused our dialback key ({refusal})")]
    DialbackRefused {
        /// The domain we connected to.
        remote: String,
        /// How it answered.
        refusal: DialbackRefusal,
    },
    #[error("{remote} refused our certificate for SASL EXTERNAL ({}) and dialback is not allowed", .condition.map_or("failure", SaslCondition::as_str))]
    /// XEP-0178: the peer refused our certificate and policy forbids dialback after it.
    ExternalRefused {
        /// The domain we connected to.
        remote: String,
        /// The `<failure/>`'s condition, `None` when it named none we know.
        condition: Option<SaslCondition>,
    },
    /// Neither SASL EXTERNAL nor dialback could authenticate us to the peer (not offered,
    /// or not allowed by policy).
    #[error("no authentication method in common with {target}: {reason}")]
    NoAuthentication {
        /// The address we connected to, as logs name it.
        target: String,
        /// What each method lacked.
        reason: String,
    },
    /// An established link dropped, and the session gave up reconnecting.
    #[error("the connection was lost: {reason}")]
    Lost {
        /// Why the last link ended.
        reason: String,
    },
    /// The attempt was still going when `retry_window` closed: the window bounds the whole
    /// wait, DNS lookups and negotiation included, not only the pauses between attempts.
    #[error("no connection within s2s.retry_window ({}): {during}", crate::config::duration::text(*.window))]
    WindowClosed {
        /// `s2s.retry_window`.
        window: Duration,
        /// The step the attempt was on, and why the one before failed.
        during: String,
    },
    /// The gateway stops: what is queued is bounced, not kept.
    #[error("fedgate is shutting down")]
    Shutdown,
    /// A reload's federation policy refuses the remote domain.
    #[error("{reason}")]
    Policy {
        /// The policy's refusal, as the reload logged it.
        reason: String,
    },
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

    /// The `fedgate_bounces_total` cause of the stanzas bounced for this error: the step that
    /// failed.
    pub fn bounce_cause(&self) -> BounceCause {
        match self {
            OutboundError::Resolve(_) => BounceCause::Dns,
            OutboundError::Connect(e) => e.step().bounce_cause(),
            OutboundError::DialbackRefused { .. }
            | OutboundError::ExternalRefused { .. }
            | OutboundError::NoAuthentication { .. } => BounceCause::Auth,
            OutboundError::Shutdown => BounceCause::Shutdown,
            OutboundError::Policy { .. } => BounceCause::Policy,
            OutboundError::WindowClosed { .. } => BounceCause::Window,
            _ => BounceCause::Stream,
        }
    }

    /// The `fedgate_outbound_attempts_total` result label: the same step as the bounce cause.
    fn label(&self) -> &'static str {
        self.bounce_cause().as_str()
    }
}

/// How an s2s stream was authenticated: defined with the metric labels it is counted under.
pub use crate::metrics::AuthMethod;

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
    /// How we authenticated: SASL EXTERNAL or dialback.
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

/// A session that ends leaves the remote domain's link list (XEP-0220 piggybacking), so that
/// no pair waits for a link it would never connect.
impl Drop for Session {
    fn drop(&mut self) {
        self.unlist();
    }
}

/// The error of an attempt cut short by the retry window, naming the step it was on (the
/// last one the trace shows as done, or the DNS lookup when none is) and, when an attempt
/// failed before it, why that one did: the cause a sender learns most from.
fn window_closed(window: Duration, trace: &mut Trace, before: Option<&str>) -> OutboundError {
    let mut during = match trace.steps.last() {
        None => "the DNS lookup did not answer".to_string(),
        Some(step) => format!("still going after: {}", step.what),
    };
    if let Some(before) = before {
        during.push_str("; the attempt before: ");
        during.push_str(before);
    }
    trace.failed(format!("retry window closed ({during})"));
    OutboundError::WindowClosed { window, during }
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
        // Whether the link now up replaced one that was lost soon after it came up: only a
        // second quick loss in a row makes the peer a flapping one.
        let mut after_quick_loss = false;
        // When the attempts since the last link (or since the session began) started: the
        // retry window counts from there, so that a slow DNS or a peer that never finishes
        // its negotiation cannot hold stanzas longer than the window says.
        let mut attempts_began: Option<Instant> = None;
        // Why the last attempt of this series failed, for a bounce when the window closes
        // during the next one.
        let mut failed_before: Option<String> = None;
        let failure = loop {
            // The window also bounds the wait for another pair's link being connected.
            let began = *attempts_began.get_or_insert_with(Instant::now);
            let deadline = began + settings.retry_window;
            let mut trace = Trace::new();
            // An established link to the peer may carry this pair too (XEP-0220 §2.6.1).
            let carried = self.ride(&mut rx, &mut carry, deadline, &mut trace).await;
            let (ended, up) = if let Some(carried) = carried {
                attempts_began = None;
                failed_before = None;
                carried
            } else {
                let mut gauge = metrics.session(Direction::Outbound);
                let attempt = tokio::select! {
                    _ = self.ctx.shutdown.cancelled() => Err(OutboundError::Shutdown),
                    _ = self.live.kicked() => Err(OutboundError::Policy { reason: self.live.kick_reason() }),
                    r = tokio::time::timeout_at(deadline, self.connect(&mut trace)) => {
                        r.unwrap_or_else(|_| Err(window_closed(settings.retry_window, &mut trace, failed_before.as_deref())))
                    }
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
                        metrics.outbound_attempts.failed(e.label());
                        self.peer.attempt_failed();
                        failed_before = Some(e.to_string());
                        let since = *failing_since.get_or_insert(began);
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
                metrics.outbound_attempts.established.inc();
                tracing::info!(local = %self.local, remote = %self.remote, peer = %link.label, auth = link.method.as_str(), "outbound s2s established: {}", link.security);
                let up = Instant::now();
                attempts_began = None;
                failed_before = None;
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
                (ended, up)
            };
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
                        after_quick_loss = false;
                        continue;
                    }
                    if !after_quick_loss {
                        // A lost link is a reason to reconnect, never to give up at once: the
                        // retry window and then failure_window are for a peer that cannot be
                        // reached, which only a failed attempt shows.
                        after_quick_loss = true;
                        continue;
                    }
                    // A link that drops as soon as it is up, again, counts as a failed
                    // attempt, so a flapping peer is retried with backoff and, in the end,
                    // bounced.
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
        // Pairs waiting for this session's link connect their own now.
        self.unlist();
        self.give_up(failure, rx, carry).await;
    }

    /// Waits `wait` before the next attempt (a `retry` event) and doubles `delay`, up to
    /// `retry_max_delay`. Shutdown or a reload's kick ends the wait with the session's end.
    async fn back_off(&self, wait: Duration, delay: &mut Duration) -> Result<(), OutboundError> {
        let metrics = &self.ctx.router.metrics;
        metrics.outbound_events.retry.inc();
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
        let cause = failure.bounce_cause();
        let text = failure.to_string();
        let router = &self.ctx.router;
        // The unacknowledged stanzas are the oldest: they go back first. Each was written at
        // least once, so the peer may have it.
        let written = format!("{text}; it was sent before and may have been delivered");
        for stanza in carry.take_unacked() {
            router.bounce(&stanza, condition, cause, &written).await;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s2s::PeerStreamError;

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
