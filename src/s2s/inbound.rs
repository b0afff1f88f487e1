//! Inbound s2s: a remote server connects to us (RFC 6120 §4, XEP-0220 §2.2).
//!
//! This task owns the socket, the timers and the session's state (the pairs proved, limits,
//! XEP-0198); steps 2–4 are decided by the sans-I/O [`Negotiation`]
//! ([`negotiate::inbound`](super::negotiate::inbound)), whose output this task writes.
//!
//! Steps:
//! 1. on the direct TLS port (XEP-0368) the TLS handshake comes first, ALPN `xmpp-server`;
//! 2. read the peer's header: `jabber:server` (else `invalid-namespace`), version 1.x (else
//!    `unsupported-version`), a `to` we serve (missing → `improper-addressing`, unknown →
//!    `host-unknown`), a valid `from` if any (else `invalid-from`);
//! 3. answer with our header (an unpredictable stream id) and features:
//!    - without TLS: `<starttls/>`, marked `<required/>` when the peer's policy requires TLS,
//!      and then nothing else is accepted before it (`policy-violation`); after `<proceed/>`
//!      whatever the peer sent before the handshake is discarded unread (STARTTLS command
//!      injection), our certificate is chosen by SNI or the stream's `to`, and the stream
//!      restarts (RFC 6120 §5.4.3.3). Without any certificate STARTTLS is not offered, and a
//!      `<starttls/>` gets `<failure/>` and the stream's end (§5.4.2.2);
//!    - with TLS: the peer's certificate is checked for its stream `from`
//!      ([`Tls::verify_peer`](crate::tls::Tls::verify_peer)); when its policy needs a valid
//!      certificate and it is not, the stream ends with `policy-violation` and the reason.
//!      SASL EXTERNAL is offered when the certificate is valid (XEP-0178), and dialback
//!      with dialback errors;
//! 4. SASL EXTERNAL: an authzid, if any, must equal the stream `from` (`<invalid-authzid/>`);
//!    on `<success/>` the pair (to, from) is authenticated and the stream restarts;
//! 5. handle dialback, several domain pairs per stream:
//!    - `<db:result>` (we are the [receiving](super::dialback::receiving) server): check the
//!      pair, then [verify](super::dialback::connect_back) the key with the sender domain's
//!      authoritative server and answer `type='valid'|'invalid'|'error'`; `invalid` ends the
//!      stream (XEP-0220 §2.2.1);
//!    - `<db:verify>` (we are the [authoritative](super::dialback::authoritative) server):
//!      recompute the XEP-0185 key with our secret and answer `valid` or `invalid`
//!      (constant-time comparison);
//!    - a typed `db:result`/`db:verify` on an inbound stream answers nothing we asked: it is
//!      unsolicited and ends the stream (XEP-0220 §3.1);
//! 6. accept stanzas only for an authenticated (local, remote) pair: `to` and `from` present
//!    and valid (else `improper-addressing`), `to` a domain we serve (else `host-unknown`), `from`
//!    a domain proved on this stream for that `to` (else `invalid-from`); no stanza before any
//!    pair is authenticated (`not-authorized`). An answer to one of our XEP-0199 pings
//!    ([`Pings::claim`](super::keepalive::Pings::claim)) is consumed here, not routed, and an
//!    XEP-0199 ping to one of our domains itself is answered here;
//! 7. XEP-0198 as the receiving side (offered in the features after TLS, honoured once
//!    authenticated): count what is handled, acknowledge, a last `<a/>` before we close, and
//!    resumption after a drop; the wire behaviour is in [`sm`], the receiving role in
//!    [`sm::receiving`];
//! 8. XEP-0288 bidi (when the peer asked for it, [`bidi`](super::bidi)): the stream also
//!    carries our stanzas back, for the reverse of each pair proved on it; what the router
//!    queues there is written in batches, each confirmed by an XEP-0199 ping, and when the
//!    stream ends what it held goes to an ordinary outbound session;
//! 9. after `keepalive_interval` without writing anything, a single space (RFC 6120 §4.6.1).
//!    It does not count as activity: `idle_timeout` still ends a stream without stanzas.
//!
//! Until a pair is authenticated, `negotiation_timeout` bounds the stream and stanzas are
//! limited to `max_negotiation_stanza_bytes`; after, `idle_timeout` and `max_stanza_bytes`.
//!
//! Abuse limits ([`limits`]): connections per source address (refused before anything is
//! read), streams per remote domain and domain pairs per stream (the authentication is refused),
//! dialback verifications in flight per stream and in all, each sender's stanza size, and the
//! stream's byte rate (a token bucket in the read path: reading waits, TCP pushes back). The
//! stanza limit and the byte rate are the stream's authenticated peer's (`[[federation.peer]]`);
//! both are announced in the stream features (XEP-0478).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::bidi::{Reverse, ReverseEvent};
use super::dialback::receiving::Verified;
use super::keepalive::{self, Whitespace};
use super::limits::{self, Limit, Slot, StreamLimits};
use super::negotiate::inbound::{refuse, Negotiation, Next, Refusal};
use super::outbound::AuthMethod;
use super::registry::{Pair, Registration};
use super::sm;
use super::{PeerStreamError, S2sContext};
use crate::connection::{BoxTransport, Connection, ReadError};
use crate::jid;
use crate::metrics::{BounceCause, Direction, PeerSession, SessionGauge};
use crate::tls::{Tls, TlsInfo};
use crate::xml::error::StreamErrorCondition;
use crate::xml::framer::Event;
use crate::xml::ns;
use crate::xml::stanza::{Kind, NsContext, Stanza};
use crate::xml::stream::{OpenStream, StreamHeader};

/// Why a session ends other than cleanly: we refuse something, or the peer is gone.
pub(in crate::s2s) enum Abort {
    /// We end the stream with this error.
    Refused(Refusal),
    /// The connection is gone (closed, reset, a stream error from the peer, a failed write or
    /// handshake): nothing more can be written. With XEP-0198 the stream stays resumable.
    Gone,
}

/// Serves one inbound s2s connection on the STARTTLS port, from accept to close. Past
/// `max_connections_per_ip`, our header and `<policy-violation/>` and nothing else.
pub async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<S2sContext>,
    _permit: OwnedSemaphorePermit,
) {
    let _connection = match admit_connection(&ctx, peer) {
        Ok(slot) => slot,
        Err(text) => {
            let condition = StreamErrorCondition::PolicyViolation;
            crate::connection::refuse(tcp, ns::SERVER, &condition, &text).await;
            return;
        }
    };
    serve(Box::new(tcp), peer, ctx, None).await
}

/// The connection's slot under `max_connections_per_ip`, or (counted and logged) the text that
/// refuses it.
fn admit_connection(ctx: &S2sContext, peer: SocketAddr) -> Result<Slot<IpAddr>, String> {
    ctx.limits.connection(peer.ip()).ok_or_else(|| {
        ctx.limits
            .refused(Limit::ConnectionsPerIp, &peer, "a connection");
        format!(
            "too many connections from {}: s2s.max_connections_per_ip is {}",
            peer.ip(),
            ctx.settings.max_connections_per_ip
        )
    })
}

/// Serves one inbound s2s connection on the direct TLS port (XEP-0368): TLS first, within
/// `negotiation_timeout`, then the stream as on the STARTTLS port.
pub async fn handle_direct_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<S2sContext>,
    _permit: OwnedSemaphorePermit,
) {
    // Past the per-address limit, closed without a word: an answer would need the handshake.
    let Ok(_connection) = admit_connection(&ctx, peer) else {
        return;
    };
    let started = Instant::now();
    let handshake = tokio::time::timeout(
        ctx.settings.negotiation_timeout,
        ctx.tls.accept(Box::new(tcp), None, true),
    )
    .await;
    let metrics = &ctx.router.metrics;
    let version = match &handshake {
        Ok(Ok((_, info))) => Some(info.version),
        _ => None,
    };
    metrics.tls_handshake(Direction::Inbound, version, started.elapsed());
    match handshake {
        Ok(Ok((io, info))) => serve(io, peer, ctx, Some(info)).await,
        Ok(Err(e)) => tracing::debug!(%peer, "direct TLS: {e}"),
        Err(_) => tracing::debug!(%peer, "direct TLS: no handshake in time"),
    }
}

async fn serve(io: BoxTransport, peer: SocketAddr, ctx: Arc<S2sContext>, tls: Option<TlsInfo>) {
    let live = ctx
        .registry
        .open(Direction::Inbound, Some(peer.to_string()));
    if let Some(info) = &tls {
        live.update(|n| n.tls = Some(info.clone()));
    }
    let mut session = Inbound {
        live,
        gauge: ctx.router.metrics.session(Direction::Inbound),
        peers: Vec::new(),
        started: Instant::now(),
        ctx: ctx.clone(),
        // Built in place: a local moved in would keep its own slot in this task's future.
        conn: Connection::new(io, peer, ctx.settings.negotiation_limits(), ns::SERVER),
        authenticated: Vec::new(),
        pending: 0,
        negotiation_deadline: Instant::now() + ctx.settings.negotiation_timeout,
        negotiation: Negotiation::new(peer, tls),
        sm: None,
        sm_live: None,
        limits: StreamLimits::default(),
        reverse: None,
    };
    // The default rate until a peer with its own authenticates.
    let rate = ctx.settings.max_inbound_bytes_per_second;
    session
        .conn
        .limit_rate(rate, limits::burst(rate, ctx.settings.max_stanza_bytes));
    let outcome = session.run().await;
    // Boxed: the stream's end is taken once, and inline its futures (the close, what a bidi
    // stream hands back to the router) would enlarge the connection's task, which every idle
    // session holds, by as much as `run` itself.
    Box::pin(end(session, outcome, peer, ctx)).await
}

/// After [`Inbound::run`]: keeps the stream for resumption or acknowledges it, says why it
/// ended (the stream error, `/peers`), closes it, and sends on what a bidi stream held.
async fn end(session: Inbound, outcome: Result<(), Abort>, peer: SocketAddr, ctx: Arc<S2sContext>) {
    if let Some(reverse) = &session.reverse {
        // Nothing new for this stream while it closes.
        reverse.detach(&ctx);
    }
    let remotes = session.remote_domains();
    let Inbound {
        mut conn,
        mut sm,
        sm_live,
        negotiation,
        reverse,
        ..
    } = session;
    let remote = negotiation.remote().map(str::to_string);
    let metrics = &ctx.router.metrics;
    match (&outcome, &mut sm) {
        (Err(Abort::Gone), Some(sm)) => {
            // The link dropped: the sender may resume (XEP-0198 §5). Kept before the live
            // registration goes, so that a resumption always finds one or the other; what
            // is in flight gets its chance to leave first, so that only the rest is resent.
            if let Some(id) = sm.id().map(str::to_string) {
                let h = sm.settle(sm::receiving::SETTLE).await;
                tracing::debug!(%peer, h, "inbound s2s dropped: kept for resumption");
                ctx.resumable
                    .keep(&id, h, remotes.clone(), ctx.settings.resume_timeout);
                metrics.sm_in.kept.inc();
            }
        }
        (_, Some(sm)) => {
            // We end the stream: a last, unrequested <a/> tells the sender what left the
            // gateway (XEP-0198 §4), after what is in flight had its chance to, so that it
            // resends only the rest.
            let h = sm.settle(sm::receiving::SETTLE).await;
            let in_flight = sm.in_flight();
            if in_flight > 0 {
                tracing::info!(%peer, in_flight, "inbound s2s ends with stanzas that have not left: the sender keeps them");
            }
            conn.send(&sm::ack(h));
            metrics.sm_in.acked.inc();
        }
        (_, None) => {}
    }
    if let (Some(id), Some(live)) = (sm.as_ref().and_then(|sm| sm.id()), &sm_live) {
        ctx.resumable.unregister(id, live.session);
    }
    match outcome {
        Ok(()) => conn.close().await,
        Err(Abort::Refused(r)) => {
            tracing::info!(%peer, condition = %r.condition, "closing inbound s2s: {}", r.text);
            // Remembered for `/peers` under every domain the stream spoke for.
            let cause = format!(
                "we closed the stream from {peer} with <{}/>: {}",
                r.condition, r.text
            );
            let named = remote.iter().filter(|d| !remotes.contains(d));
            for domain in remotes.iter().chain(named) {
                if r.condition != StreamErrorCondition::SystemShutdown {
                    ctx.registry
                        .failed(domain, Direction::Inbound, cause.clone());
                }
            }
            metrics.stream_errors.sent(&r.condition);
            match &r.raw {
                Some(raw) => {
                    conn.send(raw);
                    conn.close().await;
                }
                None => conn.fail(&r.condition, Some(&r.text)).await,
            }
        }
        Err(Abort::Gone) => {}
    }
    if let Some(reverse) = reverse {
        // After the stream is closed: what it still held goes out on a new session. Boxed,
        // as a step taken once, so that its future does not enlarge the connection's task.
        Box::pin(reverse.end(&ctx, &format!("the stream from {peer} ended"))).await;
    }
}

pub(in crate::s2s) struct Inbound {
    pub(in crate::s2s) ctx: Arc<S2sContext>,
    pub(in crate::s2s) conn: Connection,
    /// This stream in the registry: what `/peers` shows, and how a reload closes it.
    pub(in crate::s2s) live: Registration,
    /// `fedgate_s2s_sessions`: negotiating until the first pair is authenticated.
    pub(in crate::s2s) gauge: SessionGauge,
    /// Per-peer figures of each remote domain authenticated on this stream.
    pub(in crate::s2s) peers: Vec<PeerSession>,
    /// When the connection was accepted, for `fedgate_s2s_auth_seconds`.
    pub(in crate::s2s) started: Instant,
    /// (local, remote) pairs proved on this stream.
    pub(in crate::s2s) authenticated: Vec<(String, String)>,
    /// Verifications in flight, bounded by `max_pending_verifications`.
    pub(in crate::s2s) pending: usize,
    /// When an unauthenticated stream (TLS handshake included) runs out of time.
    pub(in crate::s2s) negotiation_deadline: Instant,
    /// The negotiation up to authentication (header, features, STARTTLS, SASL EXTERNAL),
    /// sans-I/O: what it has learnt (TLS, the stream's addresses and id) and what it waits for.
    pub(in crate::s2s) negotiation: Negotiation,
    /// XEP-0198 once `<enable/>` or `<resume/>` succeeded on this stream: we count what we
    /// handle, so that the sender learns what arrived and resends only the rest.
    pub(in crate::s2s) sm: Option<sm::Receiving>,
    /// While the stream is resumable: where a resuming stream asks for our counters when the
    /// sender has given up on this connection before we noticed it is dead.
    pub(in crate::s2s) sm_live: Option<sm::Registration>,
    /// The remote domains authenticated here, each holding its `max_streams_per_domain` slot,
    /// with their stanza limits and byte rates.
    pub(in crate::s2s) limits: StreamLimits,
    /// XEP-0288: the way back for our stanzas, once the peer asked for bidi and a pair is
    /// proved.
    /// Boxed: most streams have none, and every idle stream's task would hold its 240 bytes.
    pub(in crate::s2s) reverse: Option<Box<Reverse>>,
}

/// Whether the stream goes on, restarts (after TLS or SASL success: a new header follows), or
/// ends cleanly with `</stream:stream>`.
pub(in crate::s2s) enum Flow {
    Continue,
    Restart,
    End,
}

/// What woke the session up.
enum Step {
    Event(Result<Event, ReadError>),
    Verified(Verified),
    Deadline,
    /// Time to check whether a whitespace keepalive is due.
    Keepalive,
    /// A stream resuming this one asks for its counters.
    Takeover(sm::Takeover),
    /// A stanza in flight left the gateway while an `<a/>` is owed (XEP-0198).
    Finished,
    Shutdown,
    /// A reload's policy refuses a domain of this stream.
    Kicked,
    /// The way back of a bidi stream (XEP-0288) has stanzas to write, or a confirmation.
    Reverse(ReverseEvent),
}

/// The next event of a bidi stream's way back; never, for a stream without one.
async fn next_reverse(reverse: &mut Option<Box<Reverse>>, ctx: &S2sContext) -> ReverseEvent {
    match reverse {
        Some(reverse) => reverse.next(ctx).await,
        None => std::future::pending().await,
    }
}

/// A stanza in flight has left the gateway; never, for a stream without stream management.
async fn next_finished(sm: &Option<sm::Receiving>) {
    match sm {
        Some(sm) => sm.finished().await,
        None => std::future::pending().await,
    }
}

/// The next takeover request for a resumable stream; never, for any other.
async fn next_takeover(live: &mut Option<sm::Registration>) -> sm::Takeover {
    if let Some(live) = live {
        if let Some(takeover) = live.takeovers.recv().await {
            return takeover;
        }
    }
    std::future::pending().await
}

impl Inbound {
    /// Runs the session. `Ok` = clean close; `Err(Some)` = close with that stream error;
    /// `Err(Abort::Gone)` = the connection is gone.
    async fn run(&mut self) -> Result<(), Abort> {
        let ctx = self.ctx.clone();
        let settings = &ctx.settings;
        let deadline = tokio::time::sleep_until(self.negotiation_deadline);
        tokio::pin!(deadline);
        // Reset only when it fires, not per write: it then checks when we last wrote.
        let whitespace = Whitespace::new(settings.keepalive_interval);
        let keepalive = tokio::time::sleep_until(whitespace.due(self.conn.last_write()));
        tokio::pin!(keepalive);
        // Boxed: the channel allocates its first block of 32 slots at once, and 32 unboxed
        // answers (104 bytes each) would cost every idle stream 3.3 KB.
        let (results_tx, mut results_rx) =
            mpsc::channel::<Box<Verified>>(settings.max_pending_verifications);

        // One pass per stream: the first, and each restart after TLS or SASL.
        'stream: loop {
            let header = tokio::select! {
                e = self.conn.next_event() => e,
                _ = &mut deadline => return Err(Abort::Refused(refuse(StreamErrorCondition::ConnectionTimeout, "no stream header in time"))),
                _ = self.ctx.inbound_shutdown.cancelled() => return Err(Abort::Refused(refuse(StreamErrorCondition::SystemShutdown, "shutting down"))),
            };
            match header {
                // Not kept past this: a local in scope would hold its slot in the task's
                // future (which every idle session holds) for the whole stream.
                Ok(Event::StreamOpen(header)) => self.open(&header)?,
                Ok(_) => {
                    return Err(Abort::Refused(refuse(
                        StreamErrorCondition::BadFormat,
                        "expected a stream header",
                    )))
                }
                Err(e) => return Err(read_refusal(e)),
            }
            self.conn.flush().await.map_err(|_| Abort::Gone)?;

            // Set once a shutdown waits for the peer to confirm what we wrote back on a bidi
            // stream ([`Reverse::stop_taking`]).
            let mut closing = false;
            let shutting_down = || {
                Abort::Refused(refuse(
                    StreamErrorCondition::SystemShutdown,
                    "fedgate is shutting down",
                ))
            };
            loop {
                let step = tokio::select! {
                    biased;
                    _ = self.ctx.inbound_shutdown.cancelled(), if !closing => Step::Shutdown,
                    _ = self.live.kicked() => Step::Kicked,
                    _ = &mut deadline => Step::Deadline,
                    t = next_takeover(&mut self.sm_live) => Step::Takeover(t),
                    _ = next_finished(&self.sm), if self.sm.as_ref().is_some_and(sm::Receiving::owes) => Step::Finished,
                    _ = &mut keepalive => Step::Keepalive,
                    Some(v) = results_rx.recv() => Step::Verified(*v),
                    e = self.conn.next_event() => Step::Event(e),
                    r = next_reverse(&mut self.reverse, &ctx) => Step::Reverse(r),
                };
                match step {
                    Step::Shutdown => {
                        let Some(ping) = self.reverse.as_mut().and_then(|r| r.stop_taking(&ctx))
                        else {
                            return Err(shutting_down());
                        };
                        if !ping.is_empty() {
                            self.conn.send(&ping);
                            self.conn.flush().await.map_err(|_| Abort::Gone)?;
                        }
                        closing = true;
                    }
                    Step::Kicked => {
                        return Err(Abort::Refused(refuse(
                            StreamErrorCondition::PolicyViolation,
                            self.live.kick_reason(),
                        )))
                    }
                    Step::Finished => {
                        if self.ack_if_caught_up() {
                            self.conn.flush().await.map_err(|_| Abort::Gone)?;
                        }
                    }
                    Step::Keepalive => {
                        if self.ack_if_caught_up() {
                            self.conn.flush().await.map_err(|_| Abort::Gone)?;
                        }
                        if let Some(sm) = &mut self.sm {
                            sm.release_if_idle();
                        }
                        // Not a stanza: the idle deadline stays.
                        if Instant::now() >= whitespace.due(self.conn.last_write()) {
                            self.conn.send(Whitespace::BYTES);
                            self.conn.flush().await.map_err(|_| Abort::Gone)?;
                        }
                        keepalive
                            .as_mut()
                            .reset(whitespace.due(self.conn.last_write()));
                    }
                    Step::Takeover(t) => {
                        // Boxed: once per resumption, and it waits for what is in flight.
                        if Box::pin(self.hand_over(t)).await {
                            return Err(Abort::Refused(refuse(
                                StreamErrorCondition::Conflict,
                                "the stream was resumed on a new connection",
                            )));
                        }
                    }
                    Step::Deadline if self.authenticated.is_empty() => {
                        return Err(Abort::Refused(refuse(
                            StreamErrorCondition::ConnectionTimeout,
                            format!(
                                "not authenticated within {:?}",
                                settings.negotiation_timeout
                            ),
                        )))
                    }
                    Step::Deadline => {
                        tracing::debug!(peer = %self.conn.peer, "closing idle inbound s2s");
                        return Ok(());
                    }
                    Step::Reverse(ReverseEvent::Unanswered) => {
                        return Err(Abort::Refused(refuse(
                            StreamErrorCondition::ConnectionTimeout,
                            format!(
                                "our ping on this bidirectional stream went unanswered for {}s",
                                settings.ping_timeout.as_secs_f32()
                            ),
                        )))
                    }
                    Step::Reverse(ReverseEvent::Confirmed) => {
                        if let Some(reverse) = &mut self.reverse {
                            let ping = reverse.confirmed(&ctx);
                            if !ping.is_empty() {
                                self.conn.send(&ping);
                                self.conn.flush().await.map_err(|_| Abort::Gone)?;
                            }
                            if closing && reverse.all_confirmed() {
                                return Err(shutting_down());
                            }
                        }
                    }
                    Step::Reverse(ReverseEvent::Queued(first)) => {
                        if let Some(reverse) = &mut self.reverse {
                            let out = reverse.batch(&ctx, first);
                            let too_large = reverse.take_too_large();
                            self.conn.send(&out);
                            self.conn.flush().await.map_err(|_| Abort::Gone)?;
                            if !too_large.is_empty() {
                                // Boxed: rare, and inline it would enlarge every session's task.
                                Box::pin(async {
                                    for (stanza, text) in too_large {
                                        ctx.router
                                            .bounce(
                                                &stanza,
                                                crate::xml::error::StanzaErrorCondition::PolicyViolation,
                                                BounceCause::TooLarge,
                                                &text,
                                            )
                                            .await;
                                    }
                                })
                                .await;
                            }
                            // Our stanzas are traffic too: the stream is not idle.
                            deadline
                                .as_mut()
                                .reset(Instant::now() + settings.idle_timeout);
                        }
                    }
                    Step::Verified(v) => {
                        self.pending -= 1;
                        // Boxed: once per domain pair, not per stanza.
                        Box::pin(self.verified(v)).await?;
                        if !self.authenticated.is_empty() {
                            deadline
                                .as_mut()
                                .reset(Instant::now() + settings.idle_timeout);
                        }
                    }
                    Step::Event(Ok(Event::Stanza(stanza))) => {
                        let authenticated = !self.authenticated.is_empty();
                        let flow = self.handle_stanza(stanza, &results_tx).await?;
                        if authenticated || !self.authenticated.is_empty() {
                            deadline
                                .as_mut()
                                .reset(Instant::now() + settings.idle_timeout);
                        }
                        match flow {
                            Flow::Continue => {}
                            Flow::Restart => continue 'stream,
                            Flow::End => return Ok(()),
                        }
                    }
                    Step::Event(Ok(Event::StreamClose)) => return Ok(()),
                    Step::Event(Ok(Event::StreamOpen(_))) => {
                        return Err(Abort::Refused(refuse(
                            StreamErrorCondition::BadFormat,
                            "unexpected stream header",
                        )))
                    }
                    Step::Event(Err(e)) => return Err(self.read_failed(e)),
                }
            }
        }
    }

    /// [`read_refusal`], with a stanza over the limit counted and its text naming the key.
    fn read_failed(&self, e: ReadError) -> Abort {
        if let ReadError::Xml(crate::xml::error::XmlError::StanzaTooLarge { max }) = &e {
            if !self.authenticated.is_empty() {
                let peer = self.remote_domains().join(", ");
                self.ctx
                    .limits
                    .refused(Limit::StanzaBytes, &peer, "a stanza");
                return Abort::Refused(refuse(
                    StreamErrorCondition::PolicyViolation,
                    format!("stanza over {max} bytes ({})", Limit::StanzaBytes.key()),
                ));
            }
        }
        read_refusal(e)
    }

    /// Steps 3 to 6 for one element.
    async fn handle_stanza(
        &mut self,
        stanza: Stanza,
        results: &mpsc::Sender<Box<Verified>>,
    ) -> Result<Flow, Abort> {
        let next = self.negotiation.handle_element(&stanza, &self.ctx);
        match self.negotiated(next)? {
            Next::Session => {}
            // Boxed: a few steps per stream (the TLS handshake's future alone is 3 KB), and
            // inline they would make every idle session's task that much larger.
            next => return Box::pin(self.negotiation_step(next)).await,
        }
        if stanza.ns() == sm::NS {
            // Boxed: a request or an answer every so many stanzas, not per stanza, and inline
            // it would enlarge every session's task by 600 bytes.
            Box::pin(self.stream_management(&stanza)).await?;
            self.conn.flush().await.map_err(|_| Abort::Gone)?;
            return Ok(Flow::Continue);
        }
        match stanza.kind() {
            Kind::DbResult if stanza.type_().is_none() => {
                if let Some(immediate) = self.db_result(&stanza, results)? {
                    // Boxed, as the authentication steps are: taken once per domain pair.
                    return Box::pin(self.verified(immediate))
                        .await
                        .map(|()| Flow::Continue);
                }
            }
            Kind::DbVerify if stanza.type_().is_none() => self.db_verify(&stanza)?,
            Kind::DbResult | Kind::DbVerify => {
                return Err(Abort::Refused(refuse(
                    StreamErrorCondition::NotAuthorized,
                    "unsolicited dialback response",
                )))
            }
            Kind::Message | Kind::Presence | Kind::Iq => {
                let peer = self.check_stanza(&stanza)?;
                // XEP-0198: counted in `h` once it has left the gateway (`Receiving`).
                let ticket = match &mut self.sm {
                    None => None,
                    Some(sm) => match sm.ticket() {
                        Some(ticket) => Some(ticket),
                        // Boxed: only when the window is full.
                        None => Some(
                            Box::pin(sm.wait_for_room(
                                &self.ctx.router.metrics.sm_in.held,
                                &self.ctx.inbound_shutdown,
                            ))
                            .await
                            .ok_or_else(|| {
                                Abort::Refused(refuse(
                                    StreamErrorCondition::SystemShutdown,
                                    "fedgate is shutting down",
                                ))
                            })?,
                        ),
                    },
                };
                // The answer to one of our pings ends here, and a ping to our domain itself is
                // answered here; each is handled all the same.
                let router = &self.ctx.router;
                if let Some(pong) = keepalive::answer_server_ping(&stanza, |d| router.is_local(d)) {
                    match &self.reverse {
                        // On a bidi stream the answer goes straight back, untracked: a pong
                        // that waited for a ping of its own to confirm it would start an
                        // endless exchange of pings.
                        Some(reverse) if reverse.carries(&pong) => {
                            self.conn.send(&pong.bytes_for(&NsContext::server()));
                        }
                        _ => router.route(pong).await,
                    }
                } else if !self.ctx.pings.claim(&stanza) {
                    self.ctx
                        .router
                        .metrics
                        .s2s_in
                        .count(stanza.kind(), stanza.raw().len());
                    if let Some(peer) = self.peers.get(peer) {
                        peer.stanza();
                    }
                    let stanza = match ticket {
                        Some(ticket) => stanza.with_ticket(ticket),
                        None => stanza,
                    };
                    self.ctx.router.route(stanza).await;
                }
                // A ping answered here or a pong claimed here has left with this. An `<a/>`
                // owed since an `<r/>` goes out as soon as `h` has caught up, whoever moved it.
                self.ack_if_caught_up();
            }
            Kind::StreamError => {
                let error = PeerStreamError::parse(&stanza);
                tracing::info!(peer = %self.conn.peer, "inbound s2s peer sent a stream error: {error}");
                self.ctx
                    .router
                    .metrics
                    .stream_errors
                    .received(error.condition.as_ref());
                return Err(Abort::Gone);
            }
            _ => {
                return Err(Abort::Refused(refuse(
                    StreamErrorCondition::UnsupportedStanzaType,
                    format!("<{}/> is not supported here", stanza.name()),
                )))
            }
        }
        self.conn.flush().await.map_err(|_| Abort::Gone)?;
        Ok(Flow::Continue)
    }

    /// Steps 2 and 3: the peer's header, our header, the features.
    fn open(&mut self, header: &StreamHeader) -> Result<(), Abort> {
        let ours = self
            .negotiation
            .handle_header(header, &self.ctx)
            .map_err(Abort::Refused)?;
        self.conn.open(&OpenStream {
            content_ns: ns::SERVER,
            from: Some(&ours.from),
            to: ours.to.as_deref(),
            id: Some(&ours.id),
            version: ours.version,
            dialback: true,
            drain: false,
            sm: false,
            held: false,
        });
        let sent = self.negotiation.send_features(&ours, &self.ctx);
        self.negotiated(sent.map(|()| Next::Continue)).map(|_| ())
    }

    /// Queues what the negotiation wrote, also before a refusal (a last SASL `<failure/>`
    /// goes out before the stream error).
    fn negotiated(&mut self, next: Result<Next, Refusal>) -> Result<Next, Abort> {
        let out = self.negotiation.take_output();
        if !out.is_empty() {
            self.conn.send(&out);
        }
        next.map_err(Abort::Refused)
    }

    /// Does what the negotiation asks after an element.
    async fn negotiation_step(&mut self, mut next: Next) -> Result<Flow, Abort> {
        loop {
            return match next {
                Next::Continue | Next::Session => {
                    self.conn.flush().await.map_err(|_| Abort::Gone)?;
                    Ok(Flow::Continue)
                }
                Next::End => Ok(Flow::End),
                Next::Bidi => {
                    // Pairs proved before the request go back too.
                    for (local, remote) in self.authenticated.clone() {
                        self.attach_reverse(&local, &remote);
                    }
                    Ok(Flow::Continue)
                }
                Next::StartTls { hint } => self.tls_handshake(hint).await,
                Next::ExternalRequested { local: _, remote } => {
                    let admitted = self.admit(&remote);
                    let answer = self
                        .negotiation
                        .handle_external_admission(admitted, &self.ctx);
                    next = self.negotiated(answer)?;
                    continue;
                }
                Next::Authenticated { local, remote } => {
                    self.conn.flush().await.map_err(|_| Abort::Gone)?;
                    self.authenticate(local, remote, AuthMethod::External);
                    // A new stream: stream management starts afresh on it (XEP-0198 §3).
                    self.end_sm();
                    self.conn.restart();
                    Ok(Flow::Restart)
                }
            };
        }
    }

    /// After `<proceed/>`: the handshake, within the negotiation deadline, then a fresh stream
    /// (RFC 6120 §5.4.3.3).
    async fn tls_handshake(&mut self, hint: Option<String>) -> Result<Flow, Abort> {
        self.conn.flush().await.map_err(|_| Abort::Gone)?;
        // Whatever the peer sent after <starttls/> is dropped here, unread.
        let io = self.conn.take_transport();
        let handshake_started = Instant::now();
        let handshake = tokio::time::timeout_at(
            self.negotiation_deadline,
            self.ctx.tls.accept(io, hint.as_deref(), false),
        )
        .await;
        let version = match &handshake {
            Ok(Ok((_, info))) => Some(info.version),
            _ => None,
        };
        self.ctx.router.metrics.tls_handshake(
            Direction::Inbound,
            version,
            handshake_started.elapsed(),
        );
        match handshake {
            Ok(Ok((io, info))) => {
                self.conn.restart_on(io);
                self.live.update(|n| n.tls = Some(info.clone()));
                self.negotiation.handle_tls(info);
                Ok(Flow::Restart)
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.conn.peer, "STARTTLS: {e}");
                Err(Abort::Gone)
            }
            Err(_) => {
                tracing::debug!(peer = %self.conn.peer, "STARTTLS: no handshake in time");
                Err(Abort::Gone)
            }
        }
    }

    /// The originating domains authenticated on this stream, each once.
    pub(in crate::s2s) fn remote_domains(&self) -> Vec<String> {
        let mut domains: Vec<String> = Vec::with_capacity(self.authenticated.len());
        for (_, remote) in &self.authenticated {
            if !domains.contains(remote) {
                domains.push(remote.clone());
            }
        }
        domains
    }

    /// Records an authenticated pair and raises the limits on the first one.
    pub(in crate::s2s) fn authenticate(
        &mut self,
        local: String,
        remote: String,
        method: AuthMethod,
    ) {
        self.negotiation.authenticated();
        self.apply_limits();
        let metrics = &self.ctx.router.metrics;
        let method = method.as_str();
        if self.authenticated.is_empty() {
            self.gauge.established(method);
            // The stream's own authentication; later pairs piggyback on a stream of any age.
            metrics.authenticated(Direction::Inbound, method, self.started.elapsed());
        }
        if !self.peers.iter().any(|p| *p.entry().domain == *remote) {
            let peer = metrics.peers.open(&remote, Direction::Inbound);
            if let Some(expiry) = self
                .negotiation
                .security()
                .tls
                .as_ref()
                .and_then(Tls::peer_certificate_expiry)
            {
                peer.entry().certificate_expires(expiry);
            }
            // The stream's waits on its byte rate limit count for the peer that authenticated
            // last, whose limits now apply.
            self.conn
                .count_throttling_in(peer.entry().throttle_counter());
            super::push_exact(&mut self.peers, peer);
        }
        tracing::info!(peer = %self.conn.peer, %local, %remote, "inbound s2s authenticated by {method}: {}", self.negotiation.security());
        if !self
            .authenticated
            .iter()
            .any(|(l, r)| *l == local && *r == remote)
        {
            let certificate = self
                .negotiation
                .security()
                .verdict
                .as_ref()
                .map(|v| v.to_string());
            self.live.update(|n| {
                super::push_exact(
                    &mut n.pairs,
                    Pair {
                        local: local.clone(),
                        remote: remote.clone(),
                        auth: method,
                    },
                );
                if n.certificate.is_none() {
                    n.certificate = certificate;
                }
            });
            self.attach_reverse(&local, &remote);
            super::push_exact(&mut self.authenticated, (local, remote));
        }
    }

    /// On a bidi stream (XEP-0288), our stanzas from `local` to `remote` may go back on it:
    /// the reverse of a pair the peer proved, by SASL EXTERNAL (the stream's `to` and
    /// `from`) or by dialback (§2.2).
    fn attach_reverse(&mut self, local: &str, remote: &str) {
        if !self.negotiation.bidi() {
            return;
        }
        let ctx = self.ctx.clone();
        if self.reverse.is_none() {
            self.live.update(|n| n.bidi = true);
        }
        let advertised = self.negotiation.bidi_max_bytes();
        self.reverse
            .get_or_insert_with(|| Box::new(Reverse::new(&ctx, advertised)))
            .attach(&ctx, local, remote);
    }

    /// Takes `remote`'s `max_streams_per_domain` slot for this stream, unless it holds one
    /// already; `Err` (counted and logged) is the text of the refusal.
    pub(in crate::s2s) fn admit(&mut self, remote: &str) -> Result<(), String> {
        if self.limits.holds(remote) {
            return Ok(());
        }
        let Some(slot) = self.ctx.limits.stream(remote) else {
            self.ctx
                .limits
                .refused(Limit::StreamsPerDomain, &self.conn.peer, remote);
            return Err(self.streams_full_text(remote));
        };
        let settings = &self.ctx.settings;
        let policy = self.ctx.security.load().peer(remote);
        self.limits.add(
            remote,
            slot,
            policy.max_stanza_bytes.unwrap_or(settings.max_stanza_bytes),
            policy
                .max_inbound_bytes_per_second
                .unwrap_or(settings.max_inbound_bytes_per_second),
        );
        Ok(())
    }

    pub(in crate::s2s) fn streams_full_text(&self, remote: &str) -> String {
        format!(
            "{remote} has all the streams it may have: s2s.max_streams_per_domain is {}",
            self.ctx.settings.max_streams_per_domain
        )
    }

    /// The stanza limit and byte rate of the domains authenticated here.
    fn apply_limits(&mut self) {
        let settings = &self.ctx.settings;
        let max_stanza_bytes = self
            .limits
            .max_stanza_bytes()
            .unwrap_or(settings.max_stanza_bytes);
        self.conn.set_limits(crate::xml::framer::Limits {
            max_stanza_bytes,
            ..settings.stanza_limits()
        });
        let rate = self
            .limits
            .rate()
            .unwrap_or(settings.max_inbound_bytes_per_second);
        self.conn
            .limit_rate(rate, limits::burst(rate, max_stanza_bytes));
    }

    /// Step 6's addressing rules. Returns the index of the sender's domain in `peers`.
    fn check_stanza(&self, stanza: &Stanza) -> Result<usize, Abort> {
        if self.authenticated.is_empty() {
            return Err(Abort::Refused(refuse(
                StreamErrorCondition::NotAuthorized,
                "stanza before authentication",
            )));
        }
        let (Some(to), Some(from)) = (stanza.to(), stanza.from()) else {
            return Err(Abort::Refused(refuse(
                StreamErrorCondition::ImproperAddressing,
                "s2s stanzas need 'to' and 'from'",
            )));
        };
        let (Ok(to_domain), Ok(from_domain)) = (jid::domain_of(to), jid::domain_of(from)) else {
            return Err(Abort::Refused(refuse(
                StreamErrorCondition::ImproperAddressing,
                "'to' or 'from' is not a valid JID",
            )));
        };
        if !self.ctx.router.is_local(&to_domain) {
            return Err(Abort::Refused(refuse(
                StreamErrorCondition::HostUnknown,
                format!("{to_domain} is not served here"),
            )));
        }
        let proved = self
            .authenticated
            .iter()
            .any(|(l, r)| *l == *to_domain && *r == *from_domain);
        if !proved {
            return Err(Abort::Refused(refuse(
                StreamErrorCondition::InvalidFrom,
                format!("{from_domain} is not authenticated for {to_domain} on this stream"),
            )));
        }
        let len = stanza.raw().len();
        if let Some(max) = self.limits.too_large(&from_domain, len) {
            self.ctx
                .limits
                .refused(Limit::StanzaBytes, &from_domain, "a stanza");
            return Err(Abort::Refused(refuse(
                StreamErrorCondition::PolicyViolation,
                format!(
                    "a stanza of {len} bytes from {from_domain}: federation.peer max_stanza_bytes is {max}"
                ),
            )));
        }
        Ok(self
            .peers
            .iter()
            .position(|p| *p.entry().domain == *from_domain)
            .unwrap_or(usize::MAX))
    }
}

fn read_refusal(e: ReadError) -> Abort {
    match e {
        ReadError::Xml(x) => Abort::Refused(refuse(StreamErrorCondition::from(&x), x.to_string())),
        _ => Abort::Gone,
    }
}

#[cfg(test)]
mod tests {
    //! The call sites that the integration tests cannot reach from outside a running gateway:
    //! here the test holds the session's [`S2sContext`].

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::dialback::DialbackSecret;
    use crate::router::{next_session_id, ComponentHandle};
    use crate::s2s::test_support::{config, context};
    use crate::xml::framer::{Framer, Limits};

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, F: std::future::Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every inbound connection's task holds its whole future for the connection's life, so
    /// its size is memory per idle session (`cargo bench --bench idle_sessions`). It is as
    /// large as the largest state it can be in, so cold paths (negotiation steps, bounces,
    /// acknowledgements, the router's slow path) are boxed. With tokio's task header and
    /// trailer (about 130 bytes) it must stay within jemalloc's 4 KiB size class: one byte
    /// more and every task takes 5 KiB. It was 10 KiB before the first boxing, 6.5 KiB before
    /// the router's synchronous fast path (2026-12-03).
    #[test]
    fn an_inbound_connections_task_fits_in_4_kib_with_tokios_header() {
        for (port, size) in [
            ("STARTTLS", future_size(super::handle)),
            ("direct TLS", future_size(super::handle_direct_tls)),
        ] {
            assert!(size <= 3900, "{port}: {size} bytes");
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    /// The remote end of an inbound stream: writes XML, frames what comes back.
    struct Peer {
        io: DuplexStream,
        framer: Framer,
    }

    impl Peer {
        async fn send(&mut self, xml: &str) {
            self.io.write_all(xml.as_bytes()).await.unwrap();
        }

        async fn event(&mut self) -> Event {
            tokio::time::timeout(WAIT, async {
                loop {
                    if let Some(e) = self.framer.next_event().unwrap() {
                        return e;
                    }
                    let n = self.io.read_buf(self.framer.read_buf()).await.unwrap();
                    assert!(n > 0, "closed");
                }
            })
            .await
            .expect("an answer in time")
        }

        async fn next(&mut self) -> Stanza {
            match self.event().await {
                Event::Stanza(s) => s,
                _ => panic!("expected an element"),
            }
        }
    }

    #[tokio::test]
    async fn a_ping_answer_is_claimed_not_routed_and_still_counted() {
        let dir = tempfile::tempdir().unwrap();
        // a.test: a real gateway, the authoritative server that b.test asks about a's key.
        let a = crate::gateway::start(&config(dir.path(), "a.test", ""))
            .await
            .unwrap();
        let route = format!(
            "[[s2s.route]]\ndomain = \"a.test\"\ntarget = \"{}\"\n",
            a.s2s_addrs[0]
        );
        let ctx = context(&config(dir.path(), "b.test", &route));
        let (backend_tx, mut backend) = mpsc::channel(16);
        ctx.router
            .attach_component(
                "b.test",
                ComponentHandle::new(next_session_id(), backend_tx, CancellationToken::new()),
                false,
            )
            .unwrap();
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let session = tokio::spawn(serve(
            Box::new(ours),
            "127.0.0.1:1".parse().unwrap(),
            ctx.clone(),
            None,
        ));
        let mut peer = Peer {
            io: theirs,
            framer: Framer::new(Limits {
                max_stanza_bytes: 65536,
                max_depth: 16,
                max_attributes: 16,
            }),
        };
        peer.send("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>").await;
        let Event::StreamOpen(header) = peer.event().await else {
            panic!("expected our header");
        };
        let features = peer.next().await;
        assert!(std::str::from_utf8(features.raw())
            .unwrap()
            .contains("<sm xmlns='urn:xmpp:sm:3'/>"));
        let a_secret = DialbackSecret::load_or_create(&dir.path().join("a.test.secret")).unwrap();
        let key = a_secret.key("b.test", "a.test", header.id.as_deref().unwrap());
        peer.send(&format!(
            "<db:result from='a.test' to='b.test'>{key}</db:result>"
        ))
        .await;
        assert_eq!(peer.next().await.type_(), Some("valid"));
        peer.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
        assert_eq!(peer.next().await.name(), "enabled");

        let mut ping = ctx.pings.start("b.test", "a.test");
        peer.send(&format!(
            "<iq type='result' id='{}' from='a.test' to='b.test'/>",
            ping.id
        ))
        .await;
        peer.send("<message from='alice@a.test' to='bob@b.test' id='after'/>")
            .await;
        peer.send("<r xmlns='urn:xmpp:sm:3'/>").await;
        assert_eq!(
            peer.next().await.raw().as_ref(),
            b"<a xmlns='urn:xmpp:sm:3' h='1'/>",
            "the answer was handled, so it counts; the message waits for its backend"
        );
        let message = backend.recv().await.unwrap();
        assert_eq!(
            message.id(),
            Some("after"),
            "the answer never reached the backend"
        );
        assert!(backend.try_recv().is_err());
        // The backend is done with it: an unasked <a/> reports it.
        drop(message);
        assert_eq!(
            peer.next().await.raw().as_ref(),
            b"<a xmlns='urn:xmpp:sm:3' h='2'/>",
            "the message counts once it has left"
        );
        assert_eq!(
            ping.answered.try_recv(),
            Ok(()),
            "the ping learnt its answer"
        );

        ctx.shutdown.cancel();
        session.await.unwrap();
        a.shutdown(Duration::from_secs(1)).await;
    }
}
