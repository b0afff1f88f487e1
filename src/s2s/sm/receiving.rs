//! The receiving side (an inbound stream): the wire behaviour is listed step by step in the
//! [module docs](super). [`Receiving`] counts what is handled; `Inbound::stream_management`
//! answers each element, `Inbound::hand_over` gives the counters to a stream resuming this
//! one.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ack, check_handled, enabled, failed, parse, resumed, Request, SmError, Takeover};
use crate::ack::{AckWindow, Ticket};
use crate::dialback::new_stream_id;
use crate::s2s::inbound::{Abort, Inbound};
use crate::s2s::negotiate::inbound::refuse_sm;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::stanza::Stanza;

/// How long the reader of an inbound stream with a full window waits for its oldest stanza
/// to leave before `h` passes everything in flight (the same figure as a component
/// session's [`HOLD_AFTER`](crate::component::held::HOLD_AFTER)).
pub const HOLD_AFTER: Duration = Duration::from_millis(250);

/// How long a stream that ends (or hands its counters to a resuming one) waits for the
/// stanzas it has in flight to leave the gateway before it reports `h`: what is still in
/// flight after that is left out of `h`, and the sender resends it.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Stream management on one inbound stream once `<enable/>` or `<resume/>` succeeded: what
/// was received, what of it has left the gateway (`h`), and the id under which the stream
/// can be resumed.
///
/// A stanza counts in `h` only once it has left the gateway for good, as on a component
/// session ([`crate::ack`]): written to its backend's socket (or acknowledged by a backend
/// that acknowledges), or bounced, or answered here. Until then the sender keeps it, so a
/// gateway killed while it holds stanzas loses none: the sender sends them again through
/// another instance or after the restart. Each stanza carries a [`Ticket`] of the stream's
/// [`AckWindow`] through the router; `h` is the finished prefix.
///
/// - The window is taken with the first stanza and let go when the stream is idle with
///   nothing in flight, so an idle stream holds none of it.
/// - `<r/>` is answered at once with the finished prefix. If that is short of what was
///   received, one more `<a/>` follows, unasked, once everything received before the
///   `<r/>` has left.
/// - At most [`S2S_WINDOW`](crate::ack::S2S_WINDOW) stanzas are in flight; past that the
///   stream is read at the pace its oldest stanzas leave (TCP back-pressure: a slow backend
///   slows its sender). When none has left for [`HOLD_AFTER`] with the window full (a
///   destination that takes nothing, or one stuck at the head among others), `h` passes
///   everything in flight (`fedgate_s2s_sm_total{event="held"}`): those stanzas are still
///   delivered or bounced as any other, but the sender no longer keeps them, so a crash
///   then loses them. One stuck destination holds up the remote's other stanzas at most
///   that long, and its own queue then bounces what it cannot take (`stall_timeout`).
pub struct Receiving {
    /// Stanzas received and counted, modulo 2^32 (XEP-0198 §4): the next one's number.
    received: u32,
    /// The tickets' window while stanzas may be in flight; `None` when everything received
    /// has left (then `h` is `received`).
    window: Option<Arc<AckWindow>>,
    /// The id the sender quotes to resume; `None` when it did not ask for resumption.
    id: Option<String>,
    /// After an `<r/>` answered short of what was received: the count that, once `h`
    /// reaches it, is reported unasked.
    owed: Option<u32>,
}

impl std::fmt::Debug for Receiving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiving")
            .field("received", &self.received)
            // Without advancing: only the stream's own task moves `h`.
            .field("h", &self.window.as_ref().map_or(self.received, |w| w.h()))
            .field("id", &self.id)
            .finish()
    }
}

impl Receiving {
    /// Counting from `h`: 0 after `<enable/>`, the kept count after `<resume/>`; `id` when the
    /// stream can be resumed.
    pub fn new(id: Option<String>, h: u32) -> Receiving {
        Receiving {
            received: h,
            window: None,
            id,
            owed: None,
        }
    }

    /// A ticket for the stanza just received, if the window has room for it now; `None`
    /// when it is full ([`Receiving::wait_for_room`]).
    #[inline]
    pub fn ticket(&mut self) -> Option<Ticket> {
        let received = self.received;
        let window = self
            .window
            .get_or_insert_with(|| AckWindow::for_s2s(received));
        window.advance();
        let ticket = window.try_reserve(received)?;
        self.received = received.wrapping_add(1);
        Some(ticket)
    }

    /// A ticket for the stanza just received, once the full window has room. Room comes as
    /// the oldest stanzas leave; if none has for [`HOLD_AFTER`], every stanza in flight is
    /// passed unfinished (counted in `held`), so that a destination that takes nothing does
    /// not stop the stream. `None` if `stop` fires first.
    pub async fn wait_for_room(
        &mut self,
        held: &prometheus::IntCounter,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<Ticket> {
        let mut hold_at = Instant::now() + HOLD_AFTER;
        let mut h = self.h();
        loop {
            if let Some(ticket) = self.ticket() {
                return Some(ticket);
            }
            let window = self.window.as_ref()?;
            if window.h() != h {
                // Progress: the destination is slow, not stuck; the stream keeps its pace.
                h = window.h();
                hold_at = Instant::now() + HOLD_AFTER;
            } else if Instant::now() >= hold_at {
                hold_at = Instant::now() + HOLD_AFTER;
                let passed = window.hold_all(self.received).len();
                if passed > 0 {
                    held.inc_by(passed as u64);
                    tracing::debug!(
                        passed,
                        "inbound s2s: h passes stanzas that waited {HOLD_AFTER:?} for room"
                    );
                    continue;
                }
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                _ = window.finished() => {}
                _ = tokio::time::sleep_until(hold_at) => {}
            }
        }
    }

    /// The `h` of our next `<a/>`: the stanzas that have left the gateway, modulo 2^32.
    pub fn h(&self) -> u32 {
        match &self.window {
            Some(window) => {
                window.advance();
                window.h()
            }
            None => self.received,
        }
    }

    /// The answer to `<r/>`: `h` now, and if that is short of what was received, a promise
    /// of another `<a/>` when it catches up ([`Receiving::caught_up`]).
    pub fn answer(&mut self) -> u32 {
        let h = self.h();
        self.owed = (h != self.received).then_some(self.received);
        h
    }

    /// Whether an `<a/>` is owed: [`Receiving::finished`] is then worth waiting for.
    pub fn owes(&self) -> bool {
        self.owed.is_some()
    }

    /// Resolves when a stanza in flight has left the gateway (never, with none in flight).
    pub async fn finished(&self) {
        match &self.window {
            Some(window) => window.finished().await,
            None => std::future::pending().await,
        }
    }

    /// After [`Receiving::finished`]: `Some(h)` when `h` has reached the count an `<r/>` was
    /// answered short of, for the unasked `<a/>`.
    pub fn caught_up(&mut self) -> Option<u32> {
        let owed = self.owed?;
        let h = self.h();
        // Counts are modulo 2^32: `h` is at or past `owed` when `owed` is at most 0 ahead.
        if (owed.wrapping_sub(h) as i32) > 0 {
            return None;
        }
        self.owed = None;
        Some(h)
    }

    /// On an idle stream: lets the window go when nothing is in flight and no `<a/>` is owed
    /// (the window is what tells that one's moment).
    pub fn release_if_idle(&mut self) {
        if self.owed.is_none()
            && self.window.as_ref().is_some_and(|w| {
                w.advance();
                w.is_settled()
            })
        {
            self.window = None;
        }
    }

    /// Waits up to `patience` for the stanzas in flight to leave the gateway, then gives `h`:
    /// for the last `<a/>` of a stream that ends, and for the counters a resumption takes.
    pub async fn settle(&mut self, patience: Duration) -> u32 {
        let deadline = Instant::now() + patience;
        if let Some(window) = &self.window {
            loop {
                window.advance();
                if window.is_settled() {
                    break;
                }
                tokio::select! {
                    _ = window.finished() => {}
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        self.h()
    }

    /// Stanzas received but not yet left the gateway.
    pub fn in_flight(&self) -> u32 {
        self.received.wrapping_sub(self.h())
    }

    /// The resumption id given in `<enabled/>` or carried over by `<resumed/>`, if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

impl Inbound {
    /// A stream management element (XEP-0198). We are the receiving side: we answer
    /// `<enable/>` and `<resume/>`, count, and acknowledge; we send no stanzas here, so the
    /// peer's own count of ours must be 0.
    pub(in crate::s2s) async fn stream_management(&mut self, stanza: &Stanza) -> Result<(), Abort> {
        let request = parse(stanza).map_err(|e| Abort::Refused(refuse_sm(&e)))?;
        let settings = &self.ctx.settings;
        let metrics = &self.ctx.router.metrics.sm_in;
        let negotiated = self.sm.is_some();
        match request {
            Request::Enable { .. } | Request::Resume { .. } if !settings.stream_management => {
                self.conn
                    .send(&failed(StanzaErrorCondition::FeatureNotImplemented, None));
            }
            // §3: only on an authenticated stream, and only once.
            Request::Enable { .. } | Request::Resume { .. }
                if self.authenticated.is_empty() || negotiated =>
            {
                self.conn
                    .send(&failed(StanzaErrorCondition::UnexpectedRequest, None));
            }
            Request::Enable { resume } => {
                let id = resume.then(new_stream_id);
                self.conn
                    .send(&enabled(id.as_deref(), settings.resume_timeout));
                metrics.enabled.inc();
                self.start_sm(id, 0);
            }
            Request::Resume { h, .. } if h != 0 => {
                return Err(Abort::Refused(refuse_sm(&SmError::HandledCountTooHigh {
                    h,
                    sent: 0,
                })));
            }
            Request::Resume { previd, .. } => {
                let domains = self.remote_domains();
                match self.ctx.resumable.resume(&previd, &domains).await {
                    Some(h) => {
                        tracing::debug!(peer = %self.conn.peer, h, "inbound s2s resumed");
                        self.conn.send(&resumed(&previd, h));
                        metrics.resumed.inc();
                        self.start_sm(Some(previd), h);
                    }
                    None => {
                        // §5: the stream stays; the sender may enable afresh and resend.
                        self.conn
                            .send(&failed(StanzaErrorCondition::ItemNotFound, Some(0)));
                        metrics.resume_failed.inc();
                    }
                }
            }
            Request::AckRequest => match &mut self.sm {
                Some(sm) => {
                    self.conn.send(&ack(sm.answer()));
                    metrics.acked.inc();
                }
                None => {
                    tracing::debug!(peer = %self.conn.peer, "<r/> without stream management: ignored")
                }
            },
            Request::Ack { h } => {
                if negotiated {
                    check_handled(h, 0, 0).map_err(|e| Abort::Refused(refuse_sm(&e)))?;
                }
            }
        }
        Ok(())
    }
    /// Writes the `<a/>` owed since an `<r/>` if `h` has caught up ([`Receiving::caught_up`]);
    /// whether it did (the caller flushes).
    pub(in crate::s2s) fn ack_if_caught_up(&mut self) -> bool {
        let Some(h) = self.sm.as_mut().and_then(Receiving::caught_up) else {
            return false;
        };
        self.conn.send(&ack(h));
        self.ctx.router.metrics.sm_in.acked.inc();
        true
    }
    /// Stream management is on from `h`, resumable under `id` if given.
    fn start_sm(&mut self, id: Option<String>, h: u32) {
        if let Some(id) = &id {
            self.sm_live = Some(self.ctx.resumable.register(id));
        }
        self.sm = Some(Receiving::new(id, h));
        self.live.update(|n| n.stream_management = true);
    }
    /// Stream management is off: the stream restarted, or its counters moved elsewhere.
    pub(in crate::s2s) fn end_sm(&mut self) {
        let sm = self.sm.take();
        let live = self.sm_live.take();
        self.live.update(|n| n.stream_management = false);
        if let (Some(id), Some(live)) = (sm.as_ref().and_then(Receiving::id), live) {
            self.ctx.resumable.unregister(id, live.session);
        }
    }
    /// A stream resuming this one asks for its counters: they move if that stream is
    /// authenticated for each of our domains, and then this stream must handle nothing more.
    /// What it has in flight gets [`SETTLE`] to leave first, so that the sender resends only
    /// what did not.
    pub(in crate::s2s) async fn hand_over(&mut self, takeover: Takeover) -> bool {
        let ours = self.remote_domains();
        if !ours.iter().all(|d| takeover.domains.contains(d)) {
            tracing::info!(peer = %self.conn.peer, "refused a resumption of this stream from other domains");
            return false;
        }
        let Some(sm) = self.sm.as_mut() else {
            return false;
        };
        let h = sm.settle(SETTLE).await;
        if takeover.reply.send(h).is_err() {
            // The resuming stream gave up waiting; this one goes on.
            return false;
        }
        self.end_sm();
        true
    }
}
