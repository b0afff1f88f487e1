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
//!    `<system-shutdown/>`.
//!
//! A session runs over any byte transport: a TCP connection from the listener, or one end of
//! an in-process pipe from a [`LocalLink`], which is how a backend in the gateway's own process
//! (the embedded c2s core) attaches through exactly the same protocol path as a remote one.
//! The other side of the protocol, for backends, is [`client`].

pub mod client;
pub mod drain;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{BoxTransport, Connection, ReadError, Writer};
use crate::dialback::{new_stream_id, verify_component_handshake};
use crate::jid;
use crate::router::{next_session_id, ComponentHandle, Router};
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
    pub router: Arc<Router>,
    /// Backend domain (normalised) → its shared secret.
    pub secrets: arc_swap::ArcSwap<HashMap<String, String>>,
    /// A second connection for a bound domain replaces the first instead of being refused.
    pub replace_on_conflict: bool,
    /// Limits before the handshake (small: the peer is not authenticated yet).
    pub negotiation_limits: Limits,
    /// Limits after the handshake.
    pub stanza_limits: Limits,
    pub negotiation_timeout: Duration,
    /// Stanzas that may wait for a backend before senders are made to wait.
    pub queue_len: usize,
    /// Cancelled when the gateway starts to drain: backends that declared [`drain`] get the
    /// notice.
    pub drain: CancellationToken,
    /// One token per backend session that declared [`drain`] and has not answered the notice
    /// yet: the drain waits until it is empty (or for `drain_timeout`).
    pub draining: TaskTracker,
    pub shutdown: CancellationToken,
}

/// Why a backend session ended; each ends the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComponentError {
    /// We refused the stream or a stanza with a stream error.
    #[error("refused with <{condition}/>: {text}")]
    Refused {
        condition: StreamErrorCondition,
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
        Ok((conn, domain, drain)) => established(conn, domain, drain, &ctx).await,
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
            ctx.router
                .metrics
                .stream_errors
                .with_label_values(&["sent", cond.as_str()])
                .inc();
            conn.fail(&cond, text).await;
        }
    }
}

/// The connection, the bound domain, and whether the backend declared [`drain`].
type Negotiated = (Connection, String, bool);

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
        let declares_drain = drain::declared(&header);
        let stream_id = new_stream_id();
        conn.open(&OpenStream {
            content_ns: ns::COMPONENT,
            from: Some(&domain),
            to: None,
            id: Some(&stream_id),
            version: false,
            dialback: false,
            drain: false,
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
        Ok((domain, declares_drain))
    })
    .await;
    match result {
        Ok(Ok((domain, declares_drain))) => Ok((conn, domain, declares_drain)),
        Ok(Err(e)) => Err((conn, e)),
        Err(_) => Err((conn, ComponentError::Timeout(ctx.negotiation_timeout))),
    }
}

/// How the reader tells the writer to end.
enum End {
    /// The backend closed its stream or the connection: bounce what is queued.
    Closed,
    /// We refuse the backend: send this error, bounce what is queued.
    Fail(StreamErrorCondition, String),
    /// Another connection took the domain: `<conflict/>`; the queue goes on to the new one
    /// only for stanzas routed after the switch, so bounce what is left.
    Kicked,
    /// fedgate is stopping: deliver what is queued, then `<system-shutdown/>`.
    Shutdown,
}

/// Step 5: the reader runs here, the writer in its own task, so that a backend sending to
/// itself can never deadlock its own session.
async fn established(
    mut conn: Connection,
    domain: String,
    declares_drain: bool,
    ctx: &ComponentContext,
) {
    let peer = conn.peer;
    let (tx, rx) = mpsc::channel(ctx.queue_len);
    let kick = CancellationToken::new();
    let id = next_session_id();
    let handle = ComponentHandle::new(id, tx, kick.clone());
    if let Err(e) = ctx
        .router
        .attach_component(&domain, handle, ctx.replace_on_conflict)
    {
        tracing::info!(%peer, %domain, "backend refused: {e}");
        ctx.router
            .metrics
            .stream_errors
            .with_label_values(&["sent", "conflict"])
            .inc();
        conn.fail(&StreamErrorCondition::Conflict, Some(&e.to_string()))
            .await;
        return;
    }
    conn.send(b"<handshake/>");
    if conn.flush().await.is_err() {
        ctx.router.detach_component(&domain, id);
        return;
    }
    conn.set_limits(ctx.stanza_limits);
    tracing::info!(%peer, %domain, "backend attached");
    ctx.router.metrics.component_sessions.inc();
    let backend = ctx.router.metrics.backend_attached(&domain);

    let (mut reader, writer) = conn.split();
    let (end_tx, end_rx) = oneshot::channel();
    // Held until the backend answers the drain notice: it may still send until then.
    let mut sending = declares_drain.then(|| ctx.draining.token());
    let notice = declares_drain.then(|| ctx.drain.clone());
    let writer_task = tokio::spawn(write_loop(
        writer,
        rx,
        notice,
        end_rx,
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
            Ok(Event::Stanza(stanza)) => {
                if let Err((cond, text)) = check_from_backend(&stanza, &domain) {
                    break End::Fail(cond, text);
                }
                ctx.router
                    .metrics
                    .component_in
                    .count(stanza.kind(), stanza.raw().len());
                backend.stanzas_in.inc();
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
    if !matches!(end, End::Kicked) {
        ctx.router.detach_component(&domain, id);
    }
    if let End::Fail(cond, text) = &end {
        tracing::info!(%peer, %domain, %cond, "closing backend stream: {text}");
        ctx.router
            .metrics
            .stream_errors
            .with_label_values(&["sent", cond.as_str()])
            .inc();
    }
    let _ = end_tx.send(end);
    let _ = writer_task.await;
    ctx.router.metrics.component_sessions.dec();
    drop(backend);
    tracing::info!(%peer, %domain, "backend detached");
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

/// Writes routed stanzas to the backend in batches until the reader says how to end; with
/// `notice` (a backend that declared [`drain`]), the drain notice once it is cancelled.
async fn write_loop(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Stanza>,
    mut notice: Option<CancellationToken>,
    mut end_rx: oneshot::Receiver<End>,
    router: Arc<Router>,
    domain: String,
    delivered: prometheus::IntCounter,
) {
    let target = NsContext::component();
    let write_stanza = |writer: &mut Writer, stanza: &Stanza| {
        write_stanza(writer, stanza, &target, &router);
        delivered.inc();
    };
    let end = loop {
        tokio::select! {
            end = &mut end_rx => break end.unwrap_or(End::Closed),
            _ = drain_started(&notice) => {
                notice = None;
                writer.send(drain::NOTICE);
                if let Err(e) = writer.flush().await {
                    tracing::debug!(%domain, "write to backend failed: {e}");
                    let end = end_rx.await.unwrap_or(End::Closed);
                    break if matches!(end, End::Shutdown) { End::Closed } else { end };
                }
            }
            next = rx.recv() => {
                // All senders gone means the reader detached us: it says next how to end.
                let Some(first) = next else { break (&mut end_rx).await.unwrap_or(End::Closed) };
                write_stanza(&mut writer, &first);
                while writer.pending() < BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(s) => write_stanza(&mut writer, &s),
                        Err(_) => break,
                    }
                }
                if let Err(e) = writer.flush().await {
                    tracing::debug!(%domain, "write to backend failed: {e}");
                    let end = end_rx.await.unwrap_or(End::Closed);
                    break if matches!(end, End::Shutdown) { End::Closed } else { end };
                }
            }
        }
    };
    // Nothing routed after this point reaches us; what is left is written (shutdown) or
    // bounced (the backend is gone), never dropped.
    rx.close();
    match end {
        End::Shutdown => {
            while let Ok(s) = rx.try_recv() {
                write_stanza(&mut writer, &s);
            }
            writer
                .fail(&StreamErrorCondition::SystemShutdown, None)
                .await;
        }
        other => {
            while let Ok(s) = rx.try_recv() {
                router
                    .bounce(
                        &s,
                        StanzaErrorCondition::ServiceUnavailable,
                        "backend_detached",
                        &format!("the backend for {domain} detached"),
                    )
                    .await;
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
