//! Steps 3–4 of an outbound session: the established link. XEP-0198 is negotiated
//! ([`sm::sending::negotiate`]) and what the last link left unacknowledged resent; then
//! [`Session::pump`] writes the queue in batches, asks for acknowledgements, keeps the link
//! alive and checks an idle one, until it is idle, shut down, kicked by a reload, or lost.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::authenticate::Link;
use super::piggyback::{Guests, Input, LinkFacts, Slot};
use super::Session;
use crate::config::Unconfirmed;
use crate::connection::{ReadError, Reader, Writer};
use crate::jid;
use crate::metrics::{BounceCause, Direction};
use crate::router::Queued;
use crate::s2s::bidi;
use crate::s2s::dialback::{self, authoritative, DbElement};
use crate::s2s::keepalive::{self, Whitespace};
use crate::s2s::limits::{self, Limit, OutboundCap};
use crate::s2s::negotiate::inbound::{refuse, Refusal};
use crate::s2s::sm::sending::Incoming;
use crate::s2s::sm::{self, Carry};
use crate::s2s::PeerStreamError;
use crate::xml::error::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::framer::Event;
use crate::xml::stanza::{Kind, NsContext, Stanza};

/// Largest batch written before a flush.
const BATCH_BYTES: usize = 256 * 1024;
/// How an established link ended.
#[derive(Debug, Clone)]
pub(super) enum Ended {
    /// Idle or shut down: the queue was written out; the session is over.
    Done,
    /// The link was lost; stanzas may still be queued or unacknowledged.
    Lost(String),
    /// A reload's policy refuses the remote domain: the stream was closed with
    /// `<policy-violation/>`, and what is queued goes back to its senders.
    Kicked(String),
}

/// What the link writes last when [`Session::on_read`] ends it.
enum Goodbye {
    /// A stream error with this condition and text, then `</stream:stream>`.
    Fail(StreamErrorCondition, String),
    /// `</stream:stream>` (the peer closed its stream).
    Close,
    /// Nothing: the stream is gone.
    None,
}

/// When the link last wrote, carried a stanza, and checked the peer: the timers of step 4.
struct Timers {
    last_write: Instant,
    last_stanza: Instant,
    /// When the last liveness check was sent; whitespace does not count as traffic here.
    last_check: Instant,
    /// When the peer last sent us a stanza on a bidi link (XEP-0288): traffic too, so the
    /// link is not idle while it carries only the other way.
    last_received: Instant,
}

impl Timers {
    fn new(now: Instant) -> Timers {
        Timers {
            last_write: now,
            last_stanza: now,
            last_check: now,
            last_received: now,
        }
    }

    /// A batch of stanzas was written at `now`.
    fn stanzas_written(&mut self, now: Instant) {
        self.last_write = now;
        self.last_stanza = now;
    }

    /// The next deadlines: whitespace after `keepalive_interval` without writing, a liveness
    /// check after `ping_interval` without stanzas (dead after `ping_timeout` without its
    /// answer), an acknowledgement request shortly after the traffic pauses, closed after
    /// `idle_timeout` without stanzas.
    fn deadlines(&self, session: &Session, pump: &Pump, carry: &Carry) -> Deadlines {
        let settings = &session.ctx.settings;
        let idle_at = self.last_stanza.max(self.last_received) + settings.idle_timeout;
        let check_at = match &pump.check {
            Some(c) => c.deadline(),
            None => self.last_stanza.max(self.last_check) + settings.ping_interval,
        };
        // Acknowledgements are asked for when enough stanzas wait for one, or shortly after
        // the traffic pauses, never per stanza: a request and its answer cost a write on
        // each side.
        // Without XEP-0198 the question is an XEP-0199 ping, at most one in flight, at the
        // latest `CONFIRM_DELAY` after the first stanza it is to confirm.
        // After an answer that left some unacknowledged (the peer counts what it has passed
        // on, not what it read), the next request waits as long again: not one per round trip.
        let ack_at = if pump.sm && !pump.requested && !carry.unacked.is_empty() {
            self.last_stanza.max(pump.asked_at) + ACK_DELAY
        } else if !pump.sm && pump.check.is_none() {
            pump.first_unpinged.map_or(idle_at, |t| t + CONFIRM_DELAY)
        } else {
            idle_at
        };
        Deadlines {
            keepalive_at: Whitespace::new(settings.keepalive_interval).due(self.last_write),
            idle_at,
            check_at,
            ack_at,
        }
    }
}

/// When each of the link's timers is due.
struct Deadlines {
    keepalive_at: Instant,
    idle_at: Instant,
    check_at: Instant,
    ack_at: Instant,
}

/// Which timer is due, the first that applies in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Idle,
    AckRequest,
    Check,
    Keepalive,
}

impl Deadlines {
    fn next(&self) -> Instant {
        self.keepalive_at
            .min(self.idle_at)
            .min(self.check_at)
            .min(self.ack_at)
    }

    fn due(&self, now: Instant) -> Due {
        if now >= self.idle_at {
            Due::Idle
        } else if now >= self.ack_at && now < self.check_at {
            Due::AckRequest
        } else if now >= self.check_at {
            Due::Check
        } else {
            Due::Keepalive
        }
    }
}

/// A liveness check in flight on an idle link.
enum Check {
    /// An XEP-0198 `<r/>`: any `<a/>` answers it.
    Ack { deadline: Instant },
    /// An XEP-0199 ping, answered on the peer's stream to us. Once answered, the `covers`
    /// oldest stanzas in the [`Carry`] (those written before it) are known to have been read.
    Ping {
        id: String,
        answered: oneshot::Receiver<()>,
        deadline: Instant,
        covers: usize,
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

/// Unacknowledged stanzas that prompt a request at once.
const ACK_BATCH: usize = 128;
/// How soon after the traffic pauses the rest are asked about.
const ACK_DELAY: Duration = Duration::from_millis(200);
/// Without XEP-0198, how long a written stanza waits at most before a ping asks the peer to
/// confirm it (the stanza count that sends one at once is the same as for `<r/>`). A ping
/// and its answer are about 150 bytes each way, so one per 128 stanzas, or per 200 ms of a
/// slower flow, costs a fraction of a percent of the traffic; with one in flight, a busy
/// link sends at most one per round trip.
const CONFIRM_DELAY: Duration = Duration::from_millis(200);

impl Pump {
    /// An XEP-0198 `<r/>` about what was written so far.
    fn ask(&mut self, writer: &mut Writer) {
        writer.send(sm::REQUEST);
        self.requested = true;
        self.since_ping = 0;
        self.asked_at = Instant::now();
    }
}

/// The state of one established link.
struct Pump {
    /// XEP-0198 is on.
    sm: bool,
    /// An `<r/>` is out and its `<a/>` has not come back.
    requested: bool,
    /// When the last `<r/>` was written.
    asked_at: Instant,
    /// Stanzas written since the last `<r/>` (XEP-0198) or ping (without it) asked about
    /// them, and, without XEP-0198, when the first of them was. A peer that counts a
    /// stanza only once it has passed it on (fedgate does) may answer with less than was
    /// written; the next request waits for another batch, not for the next stanza.
    since_ping: usize,
    first_unpinged: Option<Instant>,
    check: Option<Check>,
    /// `fedgate_outbound_queue_seconds`, flushed once per batch.
    waited: prometheus::local::LocalHistogram,
    /// The largest stanza the peer takes, if it said (XEP-0478) or we were told.
    cap: Option<OutboundCap>,
    /// Stanzas over `cap` taken from the queue, with their size, to bounce after the batch.
    too_large: Vec<(Stanza, usize)>,
    /// XEP-0288 bidi: the peer may send its stanzas from the remote domain to the local one
    /// on this stream ([`Session::receive`]).
    bidi: bool,
    /// Other local domains' pairs on this link ([`piggyback`](super::piggyback)).
    guests: Guests,
    /// What more pairs need of the link (its stream id for their dialback keys).
    facts: LinkFacts,
}

impl Session {
    /// Steps 3–4: stream management, then write the queue until idle, shutdown or loss.
    pub(super) async fn established(
        &self,
        link: Link,
        rx: &mut mpsc::Receiver<Queued>,
        carry: &mut Carry,
    ) -> Ended {
        let Link {
            conn,
            label,
            features,
            bidi,
            dialback,
            security,
            ..
        } = link;
        self.live.update(|n| n.bidi = bidi);
        // `fedgate_s2s_bidi_links{direction="outbound"}` while the link is up.
        let _bidi_link = bidi.then(|| {
            tracing::debug!(local = %self.local, remote = %self.remote, "the outbound stream carries the peer's stanzas too (XEP-0288)");
            self.ctx.router.metrics.bidi_links.link(Direction::Outbound)
        });
        let mut conn = conn;
        if bidi {
            // What the peer sends us here is held to its inbound byte rate, as on its own
            // streams to us (the reads wait; TCP pushes back).
            let settings = &self.ctx.settings;
            let policy = self.ctx.security.load().peer(&self.remote);
            let rate = policy
                .max_inbound_bytes_per_second
                .unwrap_or(settings.max_inbound_bytes_per_second);
            let max = policy.max_stanza_bytes.unwrap_or(settings.max_stanza_bytes);
            conn.limit_rate(rate, limits::burst(rate, max));
            conn.count_throttling_in(self.peer.throttle_counter());
        }
        let (mut reader, mut writer) = conn.split();
        let metrics = &self.ctx.router.metrics;
        let configured = self.ctx.security.load().peer(&self.remote).max_stanza_bytes;
        let mut pump = Pump {
            sm: false,
            requested: false,
            asked_at: Instant::now(),
            since_ping: 0,
            first_unpinged: None,
            check: None,
            waited: metrics.outbound_queue_seconds.local(),
            cap: OutboundCap::new(configured, &features),
            too_large: Vec::new(),
            bidi,
            guests: Guests::none(),
            facts: LinkFacts {
                stream_id: dialback.stream_id,
                dialback_offered: dialback.offered,
                tls: security.tls.is_some(),
            },
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
        if !pump.sm {
            // A resumption id is for a link with XEP-0198; what this one writes is confirmed
            // by pings instead.
            carry.resume = None;
            carry.acked = 0;
        }
        // What the last link left unacknowledged goes out first, in order, and stays in the
        // carry until this link confirms it.
        if !carry.unacked.is_empty() {
            let target = NsContext::server();
            let n = carry.unacked.len();
            for stanza in &carry.unacked {
                writer.send(&stanza.bytes_for(&target));
            }
            metrics.outbound_stanzas.resent.inc_by(n as u64);
            if carry.unconfirmed > 0 {
                // The peer may have read these before the last link dropped.
                metrics
                    .outbound_stanzas
                    .resent_unconfirmed
                    .inc_by(carry.unconfirmed as u64);
                carry.unconfirmed = 0;
            }
            tracing::info!(remote = %self.remote, "resent {n} unacknowledged stanzas on the new link");
            if pump.sm {
                pump.ask(&mut writer);
            } else {
                pump.since_ping = n;
                self.confirm(&mut pump, &mut writer, carry, Instant::now());
            }
            if let Err(e) = writer.flush().await {
                let why = format!("write to {label} failed: {e}");
                return self.lost(&mut pump, carry, why).await;
            }
        }
        // From now on the link may carry other local domains' pairs to the peer too.
        pump.guests = self.host();
        let ended = self
            .pump(&mut pump, &mut reader, writer, rx, carry, &label)
            .await;
        if let Some(Check::Ping { id, .. }) = &pump.check {
            self.ctx.pings.cancel(id);
        }
        let ended = match ended {
            Ended::Lost(why) => self.lost(&mut pump, carry, why).await,
            other => other,
        };
        let mut guests = std::mem::replace(&mut pump.guests, Guests::none());
        self.part_all(&mut guests, carry, &ended);
        ended
    }
    /// Accounts for what a lost link may have taken with it. Without XEP-0198, the stanzas
    /// the peer had not confirmed are counted `unconfirmed` and then, as the peer's
    /// `unconfirmed` setting says, kept to be resent on the next link or bounced.
    async fn lost(&self, pump: &mut Pump, carry: &mut Carry, why: String) -> Ended {
        if let Some(Check::Ping { id, .. }) = pump.check.take() {
            self.ctx.pings.cancel(&id);
        }
        let n = carry.unacked.len();
        if pump.sm {
            if n > 0 {
                tracing::info!(remote = %self.remote, "{n} unacknowledged stanzas will be resent");
            }
            return Ended::Lost(why);
        }
        if n == 0 {
            return Ended::Lost(why);
        }
        let metrics = &self.ctx.router.metrics;
        metrics.outbound_stanzas.unconfirmed.inc_by(n as u64);
        match self.ctx.security.load().peer(&self.remote).unconfirmed {
            Unconfirmed::Resend => {
                carry.unconfirmed = n;
                tracing::warn!(local = %self.local, remote = %self.remote, "{n} stanzas written since the peer last confirmed reading will be resent and may arrive twice (it does not offer XEP-0198 stream management): {why}");
            }
            Unconfirmed::Bounce => {
                tracing::warn!(local = %self.local, remote = %self.remote, "bouncing {n} stanzas written since the peer last confirmed reading (it does not offer XEP-0198 stream management): {why}");
                let text = format!(
                    "the link to {} was lost before it confirmed receiving this stanza ({why}); it may have been delivered",
                    self.remote
                );
                for stanza in carry.take_unacked() {
                    self.ctx
                        .router
                        .bounce(
                            &stanza,
                            StanzaErrorCondition::RemoteServerTimeout,
                            BounceCause::Unconfirmed,
                            &text,
                        )
                        .await;
                }
            }
        }
        Ended::Lost(why)
    }

    /// Without XEP-0198: writes an XEP-0199 ping (not flushed) whose answer confirms every
    /// stanza in `carry` so far, and makes it the check in flight.
    fn confirm(&self, pump: &mut Pump, writer: &mut Writer, carry: &Carry, now: Instant) {
        let ping = self.ctx.pings.start(&self.local, &self.remote);
        writer.send(&ping.bytes);
        pump.check = Some(Check::Ping {
            id: ping.id,
            answered: ping.answered,
            deadline: now + self.ctx.settings.ping_timeout,
            covers: carry.unacked.len(),
        });
        pump.since_ping = 0;
        pump.first_unpinged = None;
    }
    /// Step 4 proper: one `select!` over shutdown, a reload's kick, the timers ([`Timers`],
    /// handled by [`Session::on_timer`]), a ping's answer, what the peer sends
    /// ([`Session::on_read`]) and the queue (written here, in batches: the hot path).
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
        let mut timers = Timers::new(Instant::now());
        loop {
            let deadlines = timers.deadlines(self, pump, carry);
            // Stop taking stanzas while too many await acknowledgement (XEP-0198) or a ping's
            // confirmation: a peer that never answers stops the link, not grows its memory.
            let room = carry.unacked.len() < cap;
            let guest_deadline = pump.guests.next_deadline();
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => {
                    self.finish(pump, reader, writer, rx, carry, &target, Some(StreamErrorCondition::SystemShutdown)).await;
                    return Ended::Done;
                }
                _ = self.live.kicked() => return self.kicked(pump.sm, reader, writer, carry).await,
                _ = tokio::time::sleep_until(deadlines.next()) => {
                    let now = Instant::now();
                    match deadlines.due(now) {
                        Due::Idle => {
                            tracing::debug!(remote = %self.remote, "closing idle outbound s2s");
                            self.finish(pump, reader, writer, rx, carry, &target, None).await;
                            if !carry.unacked.is_empty() {
                                // Not done: the peer never confirmed them. As for a lost
                                // link, the caller resends or bounces them as the peer's
                                // `unconfirmed` says, rather than count them delivered.
                                return Ended::Lost(format!(
                                    "{label} had not confirmed {} stanzas when the idle link closed",
                                    carry.unacked.len()
                                ));
                            }
                            return Ended::Done;
                        }
                        due => {
                            if let Err(ended) = self.on_timer(due, now, pump, &mut writer, carry, &mut timers, label).await {
                                return ended;
                            }
                        }
                    }
                }
                _ = ping_answered(&mut pump.check) => {
                    if let Some(Check::Ping { covers, .. }) = pump.check.take() {
                        // Everything written before the ping has been read.
                        carry.release(covers);
                    }
                    metrics.outbound_events.ping_answered.inc();
                }
                _ = tokio::time::sleep_until(guest_deadline.unwrap_or(deadlines.next())), if guest_deadline.is_some() => {
                    self.expire(&mut pump.guests, Instant::now());
                }
                event = reader.next_event() => {
                    if matches!(&event, Ok(Event::Stanza(s)) if pump.bidi && bidi::is_stanza(s)) {
                        timers.last_received = Instant::now();
                    }
                    if let Err((ended, goodbye)) = self.on_read(event, pump, &mut writer, carry, label).await {
                        match goodbye {
                            Goodbye::Fail(condition, text) => writer.fail(&condition, Some(&text)).await,
                            Goodbye::Close => writer.close().await,
                            Goodbye::None => {}
                        }
                        return ended;
                    }
                }
                input = std::future::poll_fn(|cx| pump.guests.poll_input(cx, rx, room)) => {
                    let (slot, first) = match input {
                        Input::Request(guest) => {
                            self.admit(&mut pump.guests, guest, &pump.facts, &mut writer);
                            if let Err(e) = writer.flush().await {
                                return Ended::Lost(format!("write to {label} failed: {e}"));
                            }
                            continue;
                        }
                        Input::Stanza(Slot::Host, None) if carry.unacked.is_empty() => return Ended::Done,
                        Input::Stanza(Slot::Host, None) => {
                            // Removed from the router (a link that closed idle before the
                            // peer confirmed, reconnected to send those again): done once
                            // the peer confirmed them, as when closing idle.
                            self.finish(pump, reader, writer, rx, carry, &target, None).await;
                            if carry.unacked.is_empty() {
                                return Ended::Done;
                            }
                            return Ended::Lost(format!(
                                "{label} had not confirmed {} stanzas when the link closed",
                                carry.unacked.len()
                            ));
                        }
                        Input::Stanza(Slot::Guest(i), None) => {
                            self.closed_guest(&mut pump.guests, i, carry);
                            continue;
                        }
                        Input::Stanza(slot, Some(first)) => (slot, first),
                    };
                    self.write(pump, &mut writer, slot, first, carry, &target);
                    // Then the batch: each pair's queue in turn, none always first.
                    pump.guests.next_turn();
                    let slots = pump.guests.slots();
                    for k in 0..slots {
                        let slot = pump.guests.slot(k, slots);
                        while writer.pending() < BATCH_BYTES && carry.unacked.len() < cap {
                            match pump.guests.queue(slot, rx).try_recv() {
                                Ok(s) => self.write(pump, &mut writer, slot, s, carry, &target),
                                Err(_) => break,
                            }
                        }
                    }
                    if pump.sm && !pump.requested && pump.since_ping >= ack_batch {
                        pump.ask(&mut writer);
                    }
                    if !pump.sm && pump.since_ping > 0 {
                        let now = Instant::now();
                        if pump.check.is_none() && pump.since_ping >= ack_batch {
                            self.confirm(pump, &mut writer, carry, now);
                        } else {
                            pump.first_unpinged.get_or_insert(now);
                        }
                    }
                    pump.waited.flush();
                    if let Err(e) = writer.flush().await {
                        return Ended::Lost(format!("write to {label} failed: {e}"));
                    }
                    timers.stanzas_written(Instant::now());
                    self.bounce_too_large(pump).await;
                }
            }
        }
    }

    /// A reload's policy refuses the remote domain: nothing more is written, what is queued
    /// and unacknowledged bounces, the stream ends with `<policy-violation/>`.
    async fn kicked(
        &self,
        sm_on: bool,
        reader: &mut Reader,
        mut writer: Writer,
        carry: &mut Carry,
    ) -> Ended {
        let reason = self.live.kick_reason();
        tracing::info!(local = %self.local, remote = %self.remote, "closing outbound s2s: {reason}");
        if sm_on && !carry.unacked.is_empty() {
            // What the peer has received already must not bounce as well.
            writer.send(sm::REQUEST);
            if writer.flush().await.is_ok() {
                sm::sending::final_acks(reader, carry).await;
            }
        }
        self.ctx
            .router
            .metrics
            .stream_errors
            .sent(&StreamErrorCondition::PolicyViolation);
        writer
            .fail(&StreamErrorCondition::PolicyViolation, Some(&reason))
            .await;
        Ended::Kicked(reason)
    }

    /// A timer fired for `due` (not [`Due::Idle`], which closes the link): ask for an
    /// acknowledgement, start a liveness check (or find the last one unanswered: the link is
    /// dead), or write a whitespace keepalive.
    #[allow(clippy::too_many_arguments)]
    async fn on_timer(
        &self,
        due: Due,
        now: Instant,
        pump: &mut Pump,
        writer: &mut Writer,
        carry: &Carry,
        timers: &mut Timers,
        label: &str,
    ) -> Result<(), Ended> {
        let settings = &self.ctx.settings;
        match due {
            // The pump closes the link on this one before asking.
            Due::Idle => return Ok(()),
            Due::Keepalive => writer.send(Whitespace::BYTES),
            Due::AckRequest if pump.sm => {
                pump.ask(writer);
            }
            Due::AckRequest => {
                timers.last_check = now;
                self.confirm(pump, writer, carry, now);
            }
            Due::Check if pump.check.is_some() => {
                self.ctx.router.metrics.outbound_events.ping_timeout.inc();
                return Err(Ended::Lost(format!(
                    "{label} did not answer a liveness check within {}s",
                    settings.ping_timeout.as_secs_f32()
                )));
            }
            Due::Check => {
                let deadline = now + settings.ping_timeout;
                timers.last_check = now;
                if pump.sm {
                    pump.ask(writer);
                    pump.check = Some(Check::Ack { deadline });
                } else {
                    self.confirm(pump, writer, carry, now);
                }
            }
        }
        if let Err(e) = writer.flush().await {
            return Err(Ended::Lost(format!("write to {label} failed: {e}")));
        }
        timers.last_write = now;
        Ok(())
    }

    /// What the peer sent on our outbound stream: XEP-0198 acknowledgements and requests;
    /// anything else ends the link (`Err`: how it ended, and what we write last).
    async fn on_read(
        &self,
        event: Result<Event, ReadError>,
        pump: &mut Pump,
        writer: &mut Writer,
        carry: &mut Carry,
        label: &str,
    ) -> Result<(), (Ended, Goodbye)> {
        let metrics = &self.ctx.router.metrics;
        let incoming = match &event {
            Ok(Event::Stanza(s)) => Incoming::parse(s),
            _ => None,
        };
        match (incoming, event) {
            (Some(Incoming::Ack { h }), _) => {
                let acked = h
                    .ok_or_else(|| "an <a/> without a valid 'h'".to_string())
                    .and_then(|h| carry.ack(h));
                if let Err(why) = acked {
                    let goodbye =
                        Goodbye::Fail(StreamErrorCondition::UndefinedCondition, why.clone());
                    return Err((Ended::Lost(why), goodbye));
                }
                pump.requested = false;
                metrics.sm_out.acked.inc();
                if matches!(pump.check, Some(Check::Ack { .. })) {
                    pump.check = None;
                    metrics.outbound_events.ping_answered.inc();
                }
                Ok(())
            }
            (Some(Incoming::AckRequest), _) => {
                // The peer enabled no stream management for what it sends us (XEP-0198 is
                // per direction), so it has nothing to count.
                writer.send(&sm::ack(0));
                writer.flush().await.map_err(|e| {
                    (
                        Ended::Lost(format!("write to {label} failed: {e}")),
                        Goodbye::None,
                    )
                })
            }
            (_, Ok(Event::Stanza(s))) if s.kind() == Kind::StreamError => {
                let error = PeerStreamError::parse(&s);
                metrics.stream_errors.received(error.condition.as_ref());
                Err((
                    Ended::Lost(format!("{label} closed the stream with {error}")),
                    Goodbye::None,
                ))
            }
            (_, Ok(Event::StreamClose)) => Err((
                Ended::Lost(format!("{label} closed the stream")),
                Goodbye::Close,
            )),
            (_, Ok(Event::Stanza(s))) if self.is_guest_answer(&s) => {
                let resent = self.answered(&mut pump.guests, &s, writer, carry);
                if resent > 0 {
                    if pump.sm {
                        pump.ask(writer);
                    } else {
                        pump.since_ping += resent;
                        pump.first_unpinged.get_or_insert(Instant::now());
                    }
                }
                writer.flush().await.map_err(|e| {
                    (
                        Ended::Lost(format!("write to {label} failed: {e}")),
                        Goodbye::None,
                    )
                })
            }
            (_, Ok(Event::Stanza(s))) if pump.bidi => {
                // XEP-0288: the reverse of each pair the link carries, a guest's too.
                let guest = s
                    .to()
                    .and_then(|t| jid::domain_of(t).ok())
                    .filter(|d| pump.guests.carries(d))
                    .map(|d| d.into_owned());
                let local = guest.as_deref().unwrap_or(&self.local);
                self.receive(s, local, pump.sm, writer, carry, label).await
            }
            // Without XEP-0288 bidi a remote server sends nothing on our outbound stream but
            // errors and stream management.
            (_, Ok(_)) => Err((
                Ended::Lost(format!("{label} sent a stanza on our outbound stream")),
                Goodbye::Fail(
                    StreamErrorCondition::UnsupportedStanzaType,
                    "this stream is outbound only".into(),
                ),
            )),
            (_, Err(e)) => Err((
                Ended::Lost(format!("reading from {label}: {e}")),
                Goodbye::None,
            )),
        }
    }
    /// XEP-0288: what the peer sends us on our bidirectional outbound stream. Stanzas from
    /// the remote domain to the local one ([`bidi::reverse_allowed`]) are routed as an inbound
    /// stream's would be (answers to our pings claimed, pings to our domain answered); a
    /// `<db:verify>` is answered as the authoritative server; a `<db:result>` for another
    /// pair gets a dialback error (we never verify a key on the connection it came on,
    /// XEP-0288 §2.2: the peer proves it on a connection of its own); anything else ends the
    /// stream.
    async fn receive(
        &self,
        stanza: Stanza,
        local: &str,
        sm_on: bool,
        writer: &mut Writer,
        carry: &mut Carry,
        label: &str,
    ) -> Result<(), (Ended, Goodbye)> {
        let router = &self.ctx.router;
        let refused = |r: Refusal| {
            router.metrics.stream_errors.sent(&r.condition);
            let why = format!("we closed the bidirectional stream to {label}: {}", r.text);
            (Ended::Lost(why), Goodbye::Fail(r.condition, r.text))
        };
        let write_failed = |e: std::io::Error| {
            (
                Ended::Lost(format!("write to {label} failed: {e}")),
                Goodbye::None,
            )
        };
        match stanza.kind() {
            Kind::Message | Kind::Presence | Kind::Iq => {
                bidi::reverse_allowed(&stanza, local, &self.remote, |d| router.is_local(d))
                    .map_err(refused)?;
                // The peer's own limit, as on its streams to us (the framer holds the stream
                // to `s2s.max_stanza_bytes` already).
                let len = stanza.raw().len();
                let policy = self.ctx.security.load().peer(&self.remote);
                if let Some(max) = policy.max_stanza_bytes.filter(|max| len > *max) {
                    self.ctx
                        .limits
                        .refused(Limit::StanzaBytes, &self.remote, "a stanza");
                    return Err(refused(refuse(
                        StreamErrorCondition::PolicyViolation,
                        format!(
                            "a stanza of {len} bytes from {}: federation.peer max_stanza_bytes is {max}",
                            self.remote
                        ),
                    )));
                }
                if let Some(pong) = keepalive::answer_server_ping(&stanza, |d| router.is_local(d)) {
                    // Straight back. Without XEP-0198 untracked: a pong that waited for a ping
                    // of its own to confirm it would start an endless exchange of pings. With
                    // it, the peer counts it like any stanza we write, so the carry does too.
                    writer.send(&pong.bytes_for(&NsContext::server()));
                    if sm_on {
                        carry.push(pong);
                    }
                    writer.flush().await.map_err(write_failed)?;
                } else if !self.ctx.pings.claim(&stanza) {
                    router
                        .metrics
                        .s2s_in
                        .count(stanza.kind(), stanza.raw().len());
                    self.peer.stanza(Direction::Inbound);
                    router.route(stanza).await;
                }
                Ok(())
            }
            Kind::DbVerify if stanza.type_().is_none() => {
                let answer = authoritative::answer(&self.ctx, &stanza).map_err(refused)?;
                writer.send(&answer);
                writer.flush().await.map_err(write_failed)
            }
            Kind::DbResult if stanza.type_().is_none() => {
                let (to, from) = (stanza.to().unwrap_or(""), stanza.from().unwrap_or(""));
                writer.send(&dialback::error(
                    DbElement::Result,
                    to,
                    from,
                    None,
                    StanzaErrorCondition::FeatureNotImplemented,
                    Some("authenticate this pair on a connection of your own (XEP-0288 §2.2)"),
                ));
                writer.flush().await.map_err(write_failed)
            }
            _ => Err(refused(refuse(
                StreamErrorCondition::UnsupportedStanzaType,
                format!("<{}/> is not supported here", stanza.name()),
            ))),
        }
    }

    /// Writes a stanza from the queue of `slot` (not flushed), or holds it back as too large.
    fn write(
        &self,
        pump: &mut Pump,
        writer: &mut Writer,
        slot: Slot,
        queued: Queued,
        carry: &mut Carry,
        target: &NsContext,
    ) {
        let Queued { stanza, since } = queued;
        pump.waited.observe(since.elapsed().as_secs_f64());
        pump.guests
            .shared(slot, &self.shared)
            .queued_bytes
            .fetch_sub(stanza.raw().len(), std::sync::atomic::Ordering::AcqRel);
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
        carry.push(stanza);
        pump.since_ping += 1;
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
                    BounceCause::TooLarge,
                    &text,
                )
                .await;
        }
    }
    /// Without XEP-0198, before the link closes: pings (one at a time) until the peer has
    /// confirmed everything written, for at most [`sm::sending::FINAL_ACK_WAIT`]. The answer
    /// comes on the peer's own stream to us, or on this one when it is bidi (read here).
    async fn last_confirmation(
        &self,
        pump: &mut Pump,
        reader: &mut Reader,
        writer: &mut Writer,
        carry: &mut Carry,
    ) {
        let _ = tokio::time::timeout(sm::sending::FINAL_ACK_WAIT, async {
            while !carry.unacked.is_empty() {
                if pump.check.is_none() {
                    self.confirm(pump, writer, carry, Instant::now());
                    if writer.flush().await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = ping_answered(&mut pump.check) => {
                        if let Some(Check::Ping { covers, .. }) = pump.check.take() {
                            carry.release(covers);
                        }
                    }
                    event = reader.next_event() => match event {
                        Ok(Event::Stanza(stanza)) => {
                            self.ctx.pings.claim(&stanza);
                        }
                        _ => return,
                    },
                }
            }
        })
        .await;
        if let Some(Check::Ping { id, .. }) = pump.check.take() {
            self.ctx.pings.cancel(&id);
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
            self.write(pump, &mut writer, Slot::Host, s, carry, target);
        }
        for (slot, s) in self.close_guest_queues(&mut pump.guests) {
            self.write(pump, &mut writer, slot, s, carry, target);
        }
        if pump.sm && !carry.unacked.is_empty() {
            // Asked, and the answer awaited, while the stream is still open: a peer that
            // reads our close first may end the stream without answering (Prosody did, for
            // a few dozen stanzas per restart), and what it had would then count as lost.
            writer.send(sm::REQUEST);
            if writer.flush().await.is_ok() {
                sm::sending::final_acks(reader, carry).await;
            }
        } else if !pump.sm && !carry.unacked.is_empty() {
            // Without XEP-0198 the last question is a ping, for the same reason.
            self.last_confirmation(pump, reader, &mut writer, carry)
                .await;
        }
        let _ = writer.flush().await;
        match &error {
            Some(condition) => writer.fail(condition, None).await,
            None => writer.close().await,
        }
        self.bounce_too_large(pump).await;
        // Closing idle, what is left is the caller's to resend or bounce (it counts them).
        if error.is_some() && !carry.unacked.is_empty() {
            self.ctx
                .router
                .metrics
                .outbound_stanzas
                .unconfirmed
                .inc_by(carry.unacked.len() as u64);
            tracing::warn!(remote = %self.remote, "closing with {} stanzas not acknowledged or confirmed by the peer", carry.unacked.len());
            // Stopping: their fate is unknown, so their backends are not told they were
            // delivered and send them again elsewhere (crate::ack, step 3).
            for stanza in carry.unacked.iter_mut() {
                stanza.abandon();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_due_timer_is_idle_first_then_an_ack_request_before_a_check_then_whitespace() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let deadlines = Deadlines {
            keepalive_at: t + s,
            ack_at: t + 2 * s,
            check_at: t + 3 * s,
            idle_at: t + 4 * s,
        };
        assert_eq!(deadlines.next(), t + s);
        assert_eq!(deadlines.due(t + s), Due::Keepalive);
        assert_eq!(deadlines.due(t + 2 * s), Due::AckRequest);
        assert_eq!(
            deadlines.due(t + 3 * s),
            Due::Check,
            "a check due asks with the check, not with a plain request"
        );
        assert_eq!(deadlines.due(t + 4 * s), Due::Idle, "idle wins over all");
    }
}
