//! The XEP-0114 component listener: where backends attach.
//!
//! A backend session goes through these steps (XEP-0114 §3):
//! 1. the backend opens a `jabber:component:accept` stream whose `to` names its domain
//!    (missing → `improper-addressing`, not configured → `host-unknown`, other namespace →
//!    `invalid-namespace`);
//! 2. we answer with a header carrying an unpredictable stream id;
//! 3. the backend sends `<handshake>hex(SHA1(stream_id + secret))</handshake>`, compared in
//!    constant time (wrong → `not-authorized`);
//! 4. the domain is bound in the [router](crate::router) (already bound → `conflict` for the
//!    newcomer, or for the old session with `replace_on_conflict`);
//! 5. stanzas flow both ways; every stanza from the backend must carry a `to` that is an
//!    address and a `from` (else `improper-addressing`) within the bound domain itself, not a
//!    subdomain (else `invalid-from`), so a backend can never speak for a domain it does not
//!    own; anything but a message, presence or iq is `unsupported-stanza-type`;
//! 6. when the gateway drains before it stops, a backend that declared the [`drain`] namespace
//!    on its header gets the drain notice, and its answer says it sends nothing more here;
//!    then, as for every backend, what is queued for it is written and the stream ends with
//!    `<system-shutdown/>`;
//! 7. a backend that declared the [`sm`] namespace on its header (fedgate's component
//!    library) is offered acknowledgements (XEP-0198 on this stream) by the same declaration
//!    on ours; after `<enable/>` its stanzas carry a [ticket](crate::ack) and are
//!    acknowledged only once they have left the gateway for good, and what we write to it is
//!    kept until it acknowledges it, and routed again if its link drops first.
//!
//! A session runs over any byte transport: a TCP connection from the listener, or one end of
//! an in-process pipe from a [`LocalLink`], which is how a backend in the gateway's own process
//! (the embedded c2s core) attaches through exactly the same protocol path as a remote one.
//! The other side of the protocol, for backends, is [`client`].

pub mod client;
pub mod drain;
pub mod held;
pub mod sm;
pub mod unacked;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ack::AckWindow;
use crate::connection::{BoxTransport, Connection, ReadError, Writer};
use crate::dialback::{new_stream_id, verify_component_handshake};
use crate::jid;
use crate::metrics::BounceCause;
use crate::router::{next_session_id, ComponentHandle, Left, Router};
use crate::xml::error::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::framer::{Event, Limits};
use crate::xml::ns;
use crate::xml::stanza::{Kind, NsContext, Stanza};
use crate::xml::stream::OpenStream;

/// Lives with the backends' secrets in the configuration, which puts it among them.
pub use crate::config::in_process_secret;

/// Largest batch written to a backend before a flush.
const BATCH_BYTES: usize = 256 * 1024;

/// What every backend session needs, shared.
pub struct ComponentContext {
    /// Where a bound backend's domain is registered and where its stanzas are routed.
    pub router: Arc<Router>,
    /// Backend domain (normalised) → its shared secret.
    pub secrets: arc_swap::ArcSwap<HashMap<String, String>>,
    /// A second connection for a bound domain replaces the first instead of being refused.
    pub replace_on_conflict: bool,
    /// `[component] acknowledgements`: offer [`sm`] to backends that declare it.
    pub acknowledgements: bool,
    /// Limits before the handshake (small: the peer is not authenticated yet).
    pub negotiation_limits: Limits,
    /// Limits after the handshake.
    pub stanza_limits: Limits,
    /// How long a backend has from accept to a completed handshake; then
    /// `<connection-timeout/>`.
    pub negotiation_timeout: Duration,
    /// Stanzas that may wait for a backend before senders are made to wait.
    pub queue_len: usize,
    /// `[component] reattach_grace`: how long a dropped backend's queue waits for its next
    /// session ([`Router::park_component`]).
    pub reattach_grace: Duration,
    /// Cancelled when the gateway starts to drain: backends that declared [`drain`] get the
    /// notice.
    pub drain: CancellationToken,
    /// One token per backend session that declared [`drain`] and has not answered the notice
    /// yet: the drain waits until it is empty (or for `drain_timeout`).
    pub draining: TaskTracker,
    /// Cancelled when the gateway stops: sessions write what is queued and end with
    /// `<system-shutdown/>`, and no new in-process link is served.
    pub shutdown: CancellationToken,
}

/// Why a backend session ended; each ends the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComponentError {
    /// We refused the stream or a stanza with a stream error.
    #[error("refused with <{condition}/>: {text}")]
    Refused {
        /// The stream error condition sent to the backend.
        condition: StreamErrorCondition,
        /// The `<text/>` sent with it, saying what was wrong (for the backend's operator).
        text: String,
    },
    /// Reading failed (bad XML is answered with its stream error first).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The backend did not finish the handshake in time.
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
}

fn refused(condition: StreamErrorCondition, text: impl Into<String>) -> ComponentError {
    ComponentError::Refused {
        condition,
        text: text.into(),
    }
}

/// Bytes an in-process link buffers each way before a writer waits for its reader.
const LOCAL_LINK_BUFFER: usize = 256 * 1024;

/// Attaches backends that run in the gateway's own process. Each [`LocalLink::connect`] makes
/// an in-memory pipe and serves its far end as one backend session, exactly as if it had been
/// accepted on the component listener: same handshake, same checks, same shutdown.
#[derive(Clone)]
pub struct LocalLink {
    ctx: Arc<ComponentContext>,
    /// The component listener's tracker, so that shutdown waits for in-process sessions too.
    tracker: TaskTracker,
}

impl LocalLink {
    /// Serves in-process links from `ctx`, tracking their sessions in the component
    /// listener's `tracker`.
    pub fn new(ctx: Arc<ComponentContext>, tracker: TaskTracker) -> LocalLink {
        LocalLink { ctx, tracker }
    }

    /// A new connection to the gateway: the backend's end of a pipe whose other end is served
    /// as a backend session. Fails once the gateway is shutting down.
    pub fn connect(&self) -> std::io::Result<BoxTransport> {
        if self.ctx.shutdown.is_cancelled() || self.tracker.is_closed() {
            return Err(std::io::ErrorKind::ConnectionRefused.into());
        }
        let (ours, theirs) = tokio::io::duplex(LOCAL_LINK_BUFFER);
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        self.tracker
            .spawn(handle(Box::new(ours), peer, self.ctx.clone()));
        Ok(Box::new(theirs))
    }
}

/// Serves one backend connection from accept to close, over TCP or an in-process pipe.
pub async fn handle(io: BoxTransport, peer: SocketAddr, ctx: Arc<ComponentContext>) {
    let conn = Connection::new(io, peer, ctx.negotiation_limits, ns::COMPONENT);
    match negotiate(conn, &ctx).await {
        Ok((conn, domain, declared)) => established(conn, domain, declared, &ctx).await,
        Err((conn, e)) => {
            tracing::info!(%peer, error = %e, "backend refused");
            let (cond, text) = match &e {
                ComponentError::Refused { condition, text } => {
                    (condition.clone(), Some(text.as_str()))
                }
                ComponentError::Read(ReadError::Xml(x)) => (StreamErrorCondition::from(x), None),
                ComponentError::Timeout(_) => (StreamErrorCondition::ConnectionTimeout, None),
                ComponentError::Read(_) => return,
            };
            ctx.router.metrics.stream_errors.sent(&cond);
            conn.fail(&cond, text).await;
        }
    }
}

/// The connection, the bound domain, and the extensions agreed on the headers.
type Negotiated = (Connection, String, Declared);

/// The fedgate extensions a backend declared on its header (and, for [`sm`], that we
/// offered back on ours).
#[derive(Debug, Clone, Copy, Default)]
struct Declared {
    /// [`drain`]: the backend answers the drain notice.
    drain: bool,
    /// [`sm`]: declared by both; the backend may `<enable/>`.
    sm: bool,
    /// [`held`]: declared by both, with [`sm`]; we may acknowledge out of order.
    held: bool,
}

/// Steps 1–4. On failure the connection comes back so the caller can send the stream error.
async fn negotiate(
    mut conn: Connection,
    ctx: &ComponentContext,
) -> Result<Negotiated, (Connection, ComponentError)> {
    let result = tokio::time::timeout(ctx.negotiation_timeout, async {
        let header = match conn.next_event().await? {
            Event::StreamOpen(h) => h,
            _ => {
                return Err(refused(
                    StreamErrorCondition::BadFormat,
                    "expected a stream header",
                ))
            }
        };
        if header.default_ns.as_deref() != Some(ns::COMPONENT) {
            return Err(refused(
                StreamErrorCondition::InvalidNamespace,
                "the component stream namespace is jabber:component:accept",
            ));
        }
        let Some(to) = header.to.as_deref() else {
            return Err(refused(
                StreamErrorCondition::ImproperAddressing,
                "the stream header needs a 'to' naming the component's domain",
            ));
        };
        let domain = match jid::normalize_domain(to) {
            Ok(d) if ctx.secrets.load().contains_key(d.as_ref()) => d.into_owned(),
            _ => {
                return Err(refused(
                    StreamErrorCondition::HostUnknown,
                    format!("{to} is not a configured backend domain"),
                ))
            }
        };
        let declared = Declared {
            drain: drain::declared(&header),
            sm: ctx.acknowledgements && sm::declared(&header),
            held: ctx.acknowledgements && sm::declared(&header) && held::declared(&header),
        };
        let stream_id = new_stream_id();
        conn.open(&OpenStream {
            content_ns: ns::COMPONENT,
            from: Some(&domain),
            to: None,
            id: Some(&stream_id),
            version: false,
            dialback: false,
            drain: false,
            // Our offer: only to a backend that declared it (step 7).
            sm: declared.sm,
            held: declared.held,
        });
        conn.flush().await.map_err(ReadError::Io)?;
        let handshake = match conn.next_event().await? {
            Event::Stanza(s) if s.kind() == Kind::Handshake => s,
            _ => {
                return Err(refused(
                    StreamErrorCondition::NotAuthorized,
                    "expected <handshake/>",
                ))
            }
        };
        let handshake = handshake.element().map_err(ReadError::Xml)?;
        // XEP-0114 §3: the handshake holds the digest as text and nothing else.
        if handshake.children().next().is_some() {
            return Err(refused(
                StreamErrorCondition::NotAuthorized,
                "<handshake/> holds the digest as text, not elements",
            ));
        }
        let digest = handshake.text();
        // Read afresh: a reload may have changed the secret since the header arrived.
        let matches =
            ctx.secrets.load().get(&domain).is_some_and(|secret| {
                verify_component_handshake(&stream_id, secret, digest.trim())
            });
        if !matches {
            return Err(refused(
                StreamErrorCondition::NotAuthorized,
                "handshake does not match the configured secret",
            ));
        }
        Ok((domain, declared))
    })
    .await;
    match result {
        Ok(Ok((domain, declared))) => Ok((conn, domain, declared)),
        Ok(Err(e)) => Err((conn, e)),
        Err(_) => Err((conn, ComponentError::Timeout(ctx.negotiation_timeout))),
    }
}

/// How the reader tells the writer to end.
enum End {
    /// The backend closed its stream or the connection: what is queued waits for its next
    /// session for `reattach_grace`, then bounces.
    Closed,
    /// We refuse the backend: send this error; what is queued waits as for `Closed`.
    Fail(StreamErrorCondition, String),
    /// Another connection took the domain: `<conflict/>`; the queue goes on to the new one
    /// only for stanzas routed after the switch, so bounce what is left.
    Kicked,
    /// fedgate is stopping: deliver what is queued, then `<system-shutdown/>`.
    Shutdown,
}

impl End {
    /// Whether the backend may come back for what is queued for it (it did not lose its
    /// domain to another connection, and we are not stopping).
    fn may_reattach(&self) -> bool {
        matches!(self, End::Closed | End::Fail(..))
    }
}

/// What the reader tells the writer about acknowledgements (step 7), without a channel: the
/// reader never waits for the writer.
#[derive(Default)]
struct AckControl {
    /// The backend asked with `<r/>`: write `<a/>` now.
    request: Notify,
    /// The last `h` the backend reported for our stanzas.
    acked: AtomicU32,
    /// `acked` moved.
    ack: Notify,
    /// How many stanzas the writer has counted for the backend (modulo 2^32): an `h` above
    /// it is a handled-count-too-high error.
    written: AtomicU32,
}

/// Stanzas written to an acknowledging backend and not yet acknowledged, at most: then the
/// writer takes no more from the queue until the backend acknowledges (a backend that stops
/// reading is then bounced as `stalled`, as any other).
const MAX_UNACKED_OUT: usize = 4096;

/// How soon the writer asks again (`<r/>`) when an acknowledgement left stanzas
/// unacknowledged and no new batch asked.
const ASK_AGAIN: Duration = Duration::from_millis(50);

/// Step 5: the reader runs here, the writer in its own task, so that a backend sending to
/// itself can never deadlock its own session.
async fn established(
    mut conn: Connection,
    domain: String,
    declared: Declared,
    ctx: &ComponentContext,
) {
    let peer = conn.peer;
    let (tx, rx) = mpsc::channel(ctx.queue_len);
    let kick = CancellationToken::new();
    let id = next_session_id();
    let handle = ComponentHandle::new(id, tx, kick.clone());
    let (rx, first) = match ctx
        .router
        .attach_component(&domain, handle, ctx.replace_on_conflict)
    {
        Ok(None) => (rx, VecDeque::new()),
        Ok(Some(left)) => {
            let waiting = left.first.len() + left.rx.len();
            tracing::info!(%peer, %domain, "backend attached again: {waiting} stanzas waited for it");
            ctx.router.metrics.component_reattach.adopted.inc();
            (left.rx, left.first)
        }
        Err(e) => {
            tracing::info!(%peer, %domain, "backend refused: {e}");
            ctx.router
                .metrics
                .stream_errors
                .sent(&StreamErrorCondition::Conflict);
            conn.fail(&StreamErrorCondition::Conflict, Some(&e.to_string()))
                .await;
            return;
        }
    };
    conn.send(b"<handshake/>");
    if conn.flush().await.is_err() {
        ctx.router.detach_component(&domain, id);
        return;
    }
    conn.set_limits(ctx.stanza_limits);
    tracing::info!(%peer, %domain, "backend attached");
    ctx.router.metrics.component_sessions.inc();
    let backend = ctx.router.metrics.backend_attached(&domain);
    let acks = &ctx.router.metrics.component_acks;

    let (mut reader, writer) = conn.split();
    let (end_tx, end_rx) = oneshot::channel();
    // Held until the backend answers the drain notice: it may still send until then.
    let mut sending = declared.drain.then(|| ctx.draining.token());
    let notice = declared.drain.then(|| ctx.drain.clone());
    // Step 7: the window once the backend enabled acknowledgements, handed to the writer
    // (which writes `<enabled/>` and then counts what it writes).
    let control = Arc::new(AckControl::default());
    let (enable_tx, enable_rx) = oneshot::channel();
    let mut enable_tx = declared.sm.then_some(enable_tx);
    let mut window: Option<Arc<AckWindow>> = None;
    // The number of the next stanza from the backend (XEP-0198 §4, modulo 2^32).
    let mut next: u32 = 0;
    // The last `h` the backend reported for ours.
    let mut acked_out: u32 = 0;
    let grace = ctx.reattach_grace;
    let writer_task = tokio::spawn(write_loop(
        writer,
        rx,
        first,
        (!grace.is_zero()).then_some(id),
        notice,
        end_rx,
        declared
            .sm
            .then(|| (enable_rx, control.clone(), declared.held)),
        ctx.router.clone(),
        domain.clone(),
        backend.stanzas_out.clone(),
    ));

    let end = loop {
        let event = tokio::select! {
            _ = kick.cancelled() => break End::Kicked,
            _ = ctx.shutdown.cancelled() => break End::Shutdown,
            e = reader.next_event() => e,
        };
        match event {
            Ok(Event::Stanza(stanza)) if sending.is_some() && drain::is_answer(&stanza) => {
                tracing::info!(%peer, %domain, "backend answered the drain notice");
                sending = None;
            }
            Ok(Event::Stanza(stanza)) if declared.sm && sm::is_sm(&stanza) => match stanza.name() {
                "enable" if window.is_none() => {
                    let w = AckWindow::new();
                    window = Some(w.clone());
                    if let Some(tx) = enable_tx.take() {
                        let _ = tx.send(w);
                    }
                    acks.enabled.inc();
                    tracing::debug!(%peer, %domain, "backend enabled acknowledgements");
                }
                "r" if window.is_some() => control.request.notify_one(),
                "a" if window.is_some() => {
                    let Some(h) = crate::s2s::sm::h_of(&stanza) else {
                        break End::Fail(
                            StreamErrorCondition::BadFormat,
                            "<a/> needs a valid 'h'".into(),
                        );
                    };
                    let written = control.written.load(Ordering::Acquire);
                    if let Err(e) = crate::s2s::sm::check_handled(h, acked_out, written) {
                        break End::Fail(StreamErrorCondition::UndefinedCondition, e.to_string());
                    }
                    acked_out = h;
                    control.acked.store(h, Ordering::Release);
                    control.ack.notify_one();
                }
                other => {
                    break End::Fail(
                        StreamErrorCondition::UnsupportedStanzaType,
                        format!("<{other}/> of {} is not expected here", sm::NS),
                    )
                }
            },
            Ok(Event::Stanza(stanza)) => {
                if let Err((cond, text)) = check_from_backend(&stanza, &domain) {
                    break End::Fail(cond, text);
                }
                ctx.router
                    .metrics
                    .component_in
                    .count(stanza.kind(), stanza.raw().len());
                backend.stanzas_in.inc();
                let stanza = match &window {
                    Some(w) => {
                        // At most ack::WINDOW in flight: past that we read more slowly.
                        let ticket = tokio::select! {
                            t = w.reserve(next) => t,
                            _ = kick.cancelled() => break End::Kicked,
                            _ = ctx.shutdown.cancelled() => break End::Shutdown,
                        };
                        next = next.wrapping_add(1);
                        acks.unacked_in.inc();
                        stanza.with_ticket(ticket)
                    }
                    None => stanza,
                };
                ctx.router.route(stanza).await;
            }
            Ok(Event::StreamClose) => break End::Closed,
            Ok(Event::StreamOpen(_)) => {
                break End::Fail(
                    StreamErrorCondition::BadFormat,
                    "unexpected stream header".into(),
                )
            }
            Err(ReadError::Xml(e)) => {
                break End::Fail(StreamErrorCondition::from(&e), e.to_string())
            }
            Err(e) => {
                tracing::debug!(%peer, %domain, "backend connection ended: {e}");
                break End::Closed;
            }
        }
    };
    // A backend that may come back stays bound to its queue: the writer parks it.
    let parks = end.may_reattach() && !grace.is_zero();
    if !matches!(end, End::Kicked) && !parks {
        ctx.router.detach_component(&domain, id);
    }
    if let End::Fail(cond, text) = &end {
        tracing::info!(%peer, %domain, %cond, "closing backend stream: {text}");
        ctx.router.metrics.stream_errors.sent(cond);
    }
    let _ = end_tx.send(end);
    let parked = writer_task.await.ok().flatten();
    if let Some(w) = &window {
        // What is still in flight is no longer counted on a live session; the backend sends
        // it again (it never got an acknowledgement for it).
        let open = next.wrapping_sub(w.h());
        acks.unacked_in.sub(i64::from(open));
        if open > 0 {
            tracing::info!(%peer, %domain, "{open} stanzas from the backend were not acknowledged when its stream ended{}", if w.any_abandoned() { " (some could not be confirmed)" } else { "" });
        }
    }
    ctx.router.metrics.component_sessions.dec();
    drop(backend);
    let Some(adopted) = parked else {
        tracing::info!(%peer, %domain, "backend detached");
        return;
    };
    tracing::info!(%peer, %domain, "backend detached: what is queued for it waits {grace:?} for it to attach again");
    ctx.router.metrics.component_reattach.waited.inc();
    tokio::select! {
        _ = adopted.cancelled() => {}
        _ = tokio::time::sleep(grace) => {}
        _ = ctx.shutdown.cancelled() => {}
    }
    let Some(mut left) = ctx.router.expire_parked(&domain, id) else {
        return;
    };
    ctx.router.metrics.component_reattach.expired.inc();
    let text = if ctx.shutdown.is_cancelled() {
        format!("the backend for {domain} detached and the gateway is stopping")
    } else {
        format!("the backend for {domain} detached and did not attach again within {grace:?}")
    };
    let mut n = 0;
    while let Some(s) = left.take_oldest() {
        ctx.router
            .bounce(
                &s,
                StanzaErrorCondition::ServiceUnavailable,
                BounceCause::BackendDetached,
                &text,
            )
            .await;
        n += 1;
    }
    tracing::info!(%domain, "{n} stanzas bounced: {text}");
}

/// XEP-0114 addressing rules for a stanza from a backend bound to `domain`.
fn check_from_backend(stanza: &Stanza, domain: &str) -> Result<(), (StreamErrorCondition, String)> {
    if !matches!(stanza.kind(), Kind::Message | Kind::Presence | Kind::Iq) {
        return Err((
            StreamErrorCondition::UnsupportedStanzaType,
            format!("<{}/> is not a stanza", stanza.name()),
        ));
    }
    let Some(to) = stanza.to() else {
        return Err((
            StreamErrorCondition::ImproperAddressing,
            "stanza without 'to'".into(),
        ));
    };
    if jid::domain_of(to).is_err() {
        return Err((
            StreamErrorCondition::ImproperAddressing,
            format!("'to' is not a valid JID: {to}"),
        ));
    }
    let Some(from) = stanza.from() else {
        return Err((
            StreamErrorCondition::ImproperAddressing,
            "stanza without 'from'".into(),
        ));
    };
    match jid::domain_of(from) {
        Ok(d) if d == domain => Ok(()),
        _ => Err((
            StreamErrorCondition::InvalidFrom,
            format!("'from' {from} is not within {domain}"),
        )),
    }
}

/// The writer's side of acknowledgements (step 7), once the backend enabled them.
struct Acks {
    /// The backend's stanzas in flight in the gateway; we report its finished prefix.
    window: Arc<AckWindow>,
    /// The `h` we last wrote (or the start).
    reported: u32,
    /// The `h` counted into `fedgate_component_acked_total` so far.
    counted: u32,
    /// When the next `<a/>` may be written, if `h` moved since the last one.
    ack_at: Option<tokio::time::Instant>,
    last_ack: tokio::time::Instant,
    /// What we wrote to the backend and it has not acknowledged, oldest first.
    unacked: VecDeque<Stanza>,
    /// The last `h` of ours the backend reported.
    acked: u32,
    /// Stanzas we counted for the backend (modulo 2^32).
    written: u32,
    /// An `<r/>` is in flight.
    requested: bool,
    /// When to ask again, after an answer that left some unacknowledged (the backend had
    /// not passed them on yet) and no new batch asked since.
    ask_at: Option<tokio::time::Instant>,
    /// The backend understands [`held`]: what keeps `h` back may be held.
    may_hold: bool,
    /// When to look for stanzas to hold ([`held::HOLD_AFTER`] after `hold_mark` was taken),
    /// while some are in flight.
    hold_at: Option<tokio::time::Instant>,
    /// The reader's count when the hold timer was set: only what was taken before it is old
    /// enough to hold.
    hold_mark: u32,
    /// Held and not yet reported done, for the gauge.
    held_open: u64,
}

impl Acks {
    fn new(window: Arc<AckWindow>, may_hold: bool) -> Acks {
        let now = tokio::time::Instant::now();
        Acks {
            window,
            reported: 0,
            counted: 0,
            ack_at: None,
            last_ack: now - sm::ACK_INTERVAL,
            unacked: VecDeque::new(),
            acked: 0,
            written: 0,
            requested: false,
            ask_at: None,
            may_hold,
            hold_at: None,
            hold_mark: 0,
            held_open: 0,
        }
    }

    /// Sets the hold timer, if the backend understands [`held`] and stanzas are in flight.
    fn arm_hold(&mut self) {
        if self.may_hold && self.hold_at.is_none() && self.window.h() != self.window.taken() {
            self.hold_mark = self.window.taken();
            self.hold_at = Some(tokio::time::Instant::now() + held::HOLD_AFTER);
        }
    }

    /// Holds what was taken before the mark and keeps `h` back (ack module docs, step 5):
    /// writes `<held>` listing it, which must precede any `<a/>` past it. Whether it wrote.
    fn hold(&mut self, writer: &mut Writer, metrics: &crate::metrics::ComponentAcks) -> bool {
        if !self.may_hold {
            return false;
        }
        let seqs = self.window.hold(self.hold_mark);
        if seqs.is_empty() {
            return false;
        }
        writer.send(&held::held(&seqs));
        let n = seqs.len() as u64;
        metrics.held.inc_by(n);
        // Still not done: `advance` takes them off the gauge as it passes them.
        metrics.unacked_in.add(n as i64);
        self.held_open += n;
        true
    }

    /// Writes `<done>` for the held stanzas that finished since the last call (step 3 of
    /// [`held`]); whether it wrote.
    fn report_done(
        &mut self,
        writer: &mut Writer,
        metrics: &crate::metrics::ComponentAcks,
    ) -> bool {
        if !self.may_hold {
            return false;
        }
        let seqs = self.window.take_finished_held();
        if seqs.is_empty() {
            return false;
        }
        writer.send(&held::done(&seqs));
        let n = seqs.len() as u64;
        metrics.unacked_in.sub(n as i64);
        self.held_open = self.held_open.saturating_sub(n);
        true
    }

    /// Moves `h` over what has finished, counting it; whether it moved past the last `<a/>`.
    fn advance(&mut self, metrics: &crate::metrics::ComponentAcks) -> bool {
        if let Some(h) = self.window.advance() {
            let n = h.wrapping_sub(self.counted);
            metrics.acked_in.inc_by(u64::from(n));
            metrics.unacked_in.sub(i64::from(n));
            self.counted = h;
        }
        self.window.h() != self.reported
    }

    /// Writes `<a h='…'/>` (not flushed).
    fn write_ack(&mut self, writer: &mut Writer) {
        self.reported = self.window.h();
        self.ack_at = None;
        self.last_ack = tokio::time::Instant::now();
        writer.send(&crate::s2s::sm::ack(self.reported));
    }
}

/// Writes routed stanzas to the backend in batches until the reader says how to end, `first`
/// (what a previous session of the backend left) before anything from `rx`; with
/// `notice` (a backend that declared [`drain`]), the drain notice once it is cancelled; with
/// `sm` (a backend offered acknowledgements), `<enabled/>` once it enables them, then
/// acknowledgements of its stanzas and requests for ours (step 7).
///
/// With `park` (the session's id, when `reattach_grace` is on) and a link that dropped, what
/// is left is parked for the backend's next session ([`Router::park_component`]) and the
/// token that says it was taken over is returned; otherwise it is routed again or bounced.
#[allow(clippy::too_many_arguments)]
async fn write_loop(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Stanza>,
    mut first: VecDeque<Stanza>,
    park: Option<u64>,
    mut notice: Option<CancellationToken>,
    mut end_rx: oneshot::Receiver<End>,
    sm: Option<(oneshot::Receiver<Arc<AckWindow>>, Arc<AckControl>, bool)>,
    router: Arc<Router>,
    domain: String,
    delivered: prometheus::IntCounter,
) -> Option<CancellationToken> {
    let target = NsContext::component();
    let metrics = router.metrics.component_acks.clone();
    let (mut enable, control, may_hold) = match sm {
        Some((enable, control, may_hold)) => (Some(enable), control, may_hold),
        None => (None, Arc::new(AckControl::default()), false),
    };
    let mut acks: Option<Acks> = None;
    // The stanzas of the batch being written: let go (their tickets finish) once flushed.
    let mut batch: Vec<Stanza> = Vec::new();
    let write_stanza =
        |writer: &mut Writer, stanza: Stanza, acks: &mut Option<Acks>, batch: &mut Vec<Stanza>| {
            write_stanza(writer, &stanza, &target, &router);
            delivered.inc();
            match acks {
                Some(a) if sm::counts(&stanza) => {
                    a.written = a.written.wrapping_add(1);
                    metrics.unacked_out.inc();
                    a.unacked.push_back(stanza);
                }
                _ => batch.push(stanza),
            }
        };
    // Fills the batch with what waits, `first` before the queue, up to its size and the
    // acknowledgement window, then asks the backend to acknowledge it.
    let write_batch = |writer: &mut Writer,
                       first: &mut VecDeque<Stanza>,
                       rx: &mut mpsc::Receiver<Stanza>,
                       acks: &mut Option<Acks>,
                       batch: &mut Vec<Stanza>| {
        while writer.pending() < BATCH_BYTES
            && acks
                .as_ref()
                .is_none_or(|a| a.unacked.len() < MAX_UNACKED_OUT)
        {
            let Some(s) = first.pop_front().or_else(|| rx.try_recv().ok()) else {
                break;
            };
            write_stanza(writer, s, acks, batch);
        }
        if let Some(a) = acks.as_mut() {
            control.written.store(a.written, Ordering::Release);
            if !a.requested && !a.unacked.is_empty() {
                writer.send(crate::s2s::sm::REQUEST);
                a.requested = true;
                a.ask_at = None;
            }
        }
    };
    let end = loop {
        let ack_at = acks.as_ref().and_then(|a| a.ack_at);
        let ask_at = acks.as_ref().and_then(|a| a.ask_at);
        let hold_at = acks.as_ref().and_then(|a| a.hold_at);
        let room = acks
            .as_ref()
            .is_none_or(|a| a.unacked.len() < MAX_UNACKED_OUT);
        let mut flush = false;
        tokio::select! {
            end = &mut end_rx => break end.unwrap_or(End::Closed),
            _ = drain_started(&notice) => {
                notice = None;
                writer.send(drain::NOTICE);
                flush = true;
            }
            window = enabled(&mut enable) => {
                enable = None;
                if let Ok(window) = window {
                    writer.send(sm::ENABLED);
                    acks = Some(Acks::new(window, may_hold));
                    flush = true;
                }
            }
            _ = finished(&acks) => {
                if let Some(a) = acks.as_mut() {
                    flush |= a.report_done(&mut writer, &metrics);
                    let moved = a.advance(&metrics);
                    a.arm_hold();
                    if moved && a.ack_at.is_none() {
                        let at = a.last_ack + sm::ACK_INTERVAL;
                        if at <= tokio::time::Instant::now() {
                            a.write_ack(&mut writer);
                            flush = true;
                        } else {
                            a.ack_at = Some(at);
                        }
                    }
                }
            }
            _ = sleep_until(ack_at) => {
                if let Some(a) = acks.as_mut() {
                    a.advance(&metrics);
                    a.write_ack(&mut writer);
                    flush = true;
                }
            }
            _ = sleep_until(hold_at) => {
                if let Some(a) = acks.as_mut() {
                    a.hold_at = None;
                    if a.hold(&mut writer, &metrics) && a.advance(&metrics) {
                        a.write_ack(&mut writer);
                        flush = true;
                    }
                    a.arm_hold();
                }
            }
            _ = control.request.notified(), if acks.is_some() => {
                if let Some(a) = acks.as_mut() {
                    // The backend asks when its window is full: what is old enough and
                    // keeps `h` back is held now rather than at the timer.
                    if a.hold_at.is_some() {
                        a.hold(&mut writer, &metrics);
                    }
                    a.advance(&metrics);
                    a.write_ack(&mut writer);
                    flush = true;
                }
            }
            _ = control.ack.notified(), if acks.is_some() => {
                if let Some(a) = acks.as_mut() {
                    let h = control.acked.load(Ordering::Acquire);
                    let n = (h.wrapping_sub(a.acked) as usize).min(a.unacked.len());
                    // Their tickets (from another backend) finish here.
                    a.unacked.drain(..n);
                    a.acked = h;
                    a.requested = false;
                    metrics.acked_out.inc_by(n as u64);
                    metrics.unacked_out.sub(n as i64);
                    // Some were still on their way to the component: ask again soon, so
                    // that what it has is not routed again if the link drops meanwhile.
                    a.ask_at = (!a.unacked.is_empty())
                        .then(|| tokio::time::Instant::now() + ASK_AGAIN);
                }
            }
            _ = sleep_until(ask_at) => {
                if let Some(a) = acks.as_mut() {
                    a.ask_at = None;
                    if !a.requested && !a.unacked.is_empty() {
                        writer.send(crate::s2s::sm::REQUEST);
                        a.requested = true;
                        flush = true;
                    }
                }
            }
            // What a previous session left goes before the queue, without waiting for it.
            _ = std::future::ready(()), if room && !first.is_empty() => {
                write_batch(&mut writer, &mut first, &mut rx, &mut acks, &mut batch);
                flush = true;
            }
            next = rx.recv(), if room && first.is_empty() => {
                // All senders gone means the reader detached us: it says next how to end.
                let Some(s) = next else { break (&mut end_rx).await.unwrap_or(End::Closed) };
                write_stanza(&mut writer, s, &mut acks, &mut batch);
                write_batch(&mut writer, &mut first, &mut rx, &mut acks, &mut batch);
                flush = true;
            }
        }
        if flush {
            if let Err(e) = writer.flush().await {
                tracing::debug!(%domain, "write to backend failed: {e}");
                let end = end_rx.await.unwrap_or(End::Closed);
                break if matches!(end, End::Shutdown) {
                    End::Closed
                } else {
                    end
                };
            }
            // Written to the backend's socket: done with them (their tickets finish).
            batch.clear();
        }
    };
    // What is left is written (shutdown), parked for the backend's next session, or routed
    // again and bounced (the backend is gone), never dropped.
    let mut parked = None;
    match end {
        End::Shutdown => {
            let mut left = Left { rx, first };
            // Nothing routed after this point reaches us.
            left.rx.close();
            while let Some(s) = left.take_oldest() {
                write_stanza(&mut writer, s, &mut acks, &mut batch);
            }
            if let Some(a) = acks.as_mut() {
                // The last count, so that the backend resends only what did not finish.
                a.report_done(&mut writer, &metrics);
                a.advance(&metrics);
                a.write_ack(&mut writer);
            }
            writer
                .fail(&StreamErrorCondition::SystemShutdown, None)
                .await;
        }
        other => {
            // Written but not acknowledged: the backend may never have read them. Older
            // than what was never written, which is older than what is still queued.
            let mut unwritten = std::mem::take(&mut first);
            if let Some(a) = acks.as_mut() {
                let n = a.unacked.len();
                metrics.unacked_out.sub(n as i64);
                if n > 0 {
                    metrics.returned.inc_by(n as u64);
                    tracing::info!(%domain, "{n} stanzas written to the backend were not acknowledged when its link ended: routed again");
                }
                let mut unacked = std::mem::take(&mut a.unacked);
                unacked.append(&mut unwritten);
                unwritten = unacked;
            }
            let left = Left {
                rx,
                first: unwritten,
            };
            let left = match park.filter(|_| other.may_reattach()) {
                Some(id) => match router.park_component(&domain, id, left) {
                    Ok(adopted) => {
                        parked = Some(adopted);
                        None
                    }
                    Err(left) => Some(left),
                },
                None => Some(left),
            };
            if let Some(Left { mut rx, first }) = left {
                // Nothing routed after this point reaches us. What was written or taken
                // goes to the backend's newer session if it has one (a replacement), else
                // back to its senders, as does what is still queued.
                rx.close();
                for s in first {
                    router.reroute(s).await;
                }
                while let Ok(s) = rx.try_recv() {
                    router
                        .bounce(
                            &s,
                            StanzaErrorCondition::ServiceUnavailable,
                            BounceCause::BackendDetached,
                            &format!("the backend for {domain} detached"),
                        )
                        .await;
                }
            }
            match other {
                End::Fail(cond, text) => writer.fail(&cond, Some(&text)).await,
                End::Kicked => {
                    writer
                        .fail(
                            &StreamErrorCondition::Conflict,
                            Some("replaced by a newer connection"),
                        )
                        .await
                }
                _ => writer.close().await,
            }
        }
    }
    if let Some(a) = acks {
        // Shutdown: what the backend did not acknowledge is no longer counted, nor what is
        // held for it (it sends that again).
        metrics.unacked_out.sub(a.unacked.len() as i64);
        metrics.unacked_in.sub(a.held_open as i64);
    }
    parked
}

/// The window, once the backend enabled acknowledgements; never, when it was not offered
/// them or has enabled them already.
async fn enabled(
    enable: &mut Option<oneshot::Receiver<Arc<AckWindow>>>,
) -> Result<Arc<AckWindow>, oneshot::error::RecvError> {
    match enable {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// When a stanza of the backend's finished, with acknowledgements on; never, without.
async fn finished(acks: &Option<Acks>) {
    match acks {
        Some(a) => a.window.finished().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
/// When the drain starts, for a backend that gets the notice; never, for any other (or once
/// the notice is written).
async fn drain_started(notice: &Option<CancellationToken>) {
    match notice {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

fn write_stanza(writer: &mut Writer, stanza: &Stanza, target: &NsContext, router: &Router) {
    let bytes = stanza.bytes_for(target);
    router
        .metrics
        .component_out
        .count(stanza.kind(), bytes.len());
    writer.send(&bytes);
}
