//! Outbound s2s: one session per (local, remote) domain pair, started by the router on demand.
//!
//! Steps (RFC 6120 §4, XEP-0220 §2.1):
//! 1. resolve the remote domain's [targets](crate::dns::Resolver::targets) and connect to each
//!    in turn, within `connect_timeout`;
//! 2. open a `jabber:server` stream declaring `xmlns:db`, read the peer's header (its stream id)
//!    and features, which must offer dialback;
//! 3. send `<db:result>` with our XEP-0185 key and wait for `<db:result type='valid'/>` for
//!    exactly the pair we asked about (anything unsolicited ends the stream);
//! 4. established: write queued stanzas in order, batched, one flush per batch; close with
//!    `</stream:stream>` after `idle_timeout` without traffic.
//!
//! While connecting, stanzas wait in the session's bounded queue (the router bounces overflow
//! with `resource-constraint`). If every target fails, the queue is bounced with
//! `remote-server-not-found` (no address) or `remote-server-timeout` (connect, stream or
//! authentication failure), each with a text naming the cause.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connect::{self, offers_dialback, offers_external, ConnectError, Opened, Security};
use super::{PeerStreamError, S2sContext};
use crate::connection::{Connection, Writer};
use crate::dns::ResolveError;
use crate::policy::PeerSecurity;
use crate::router::{next_session_id, OutboundHandle, OutboundShared};
use crate::xml::element::Element;
use crate::xml::error::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::escape_attr;
use crate::xml::framer::Event;
use crate::xml::ns;
use crate::xml::stanza::{Kind, NsContext, Stanza};
use crate::xml::stream::StreamHeader;

/// Largest batch written before a flush.
const BATCH_BYTES: usize = 256 * 1024;
/// How often a session whose connection dropped with stanzas still queued reconnects before it
/// gives up and bounces them.
const MAX_RECONNECTS: usize = 2;

/// Why an outbound session could not be established. Final for this attempt; the queued
/// stanzas are bounced with [`OutboundError::condition`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{remote} refused our dialback key ({verdict})")]
    DialbackRefused { remote: String, verdict: String },
    #[error("{remote} refused our certificate for SASL EXTERNAL ({condition}) and dialback is not allowed")]
    ExternalRefused { remote: String, condition: String },
    #[error("no authentication method in common with {target}: {reason}")]
    NoAuthentication { target: SocketAddr, reason: String },
    #[error("the connection was lost: {reason}")]
    Lost { reason: String },
    #[error("fedgate is shutting down")]
    Shutdown,
}

impl OutboundError {
    /// The stanza error that bounced stanzas carry (RFC 6120 §8.3.3).
    pub fn condition(&self) -> StanzaErrorCondition {
        match self {
            OutboundError::Resolve(_) => StanzaErrorCondition::RemoteServerNotFound,
            // XEP-0220 §2.1.1: an invalid key bounces with internal-server-error, a dialback
            // error with remote-server-timeout.
            OutboundError::DialbackRefused { verdict, .. } if verdict == "invalid" => {
                StanzaErrorCondition::InternalServerError
            }
            OutboundError::Shutdown => StanzaErrorCondition::ServiceUnavailable,
            _ => StanzaErrorCondition::RemoteServerTimeout,
        }
    }

    /// The `fedgate_outbound_attempts_total` result label.
    fn label(&self) -> &'static str {
        match self {
            OutboundError::Resolve(_) => "dns",
            OutboundError::Connect(e) => e.stage(),
            OutboundError::DialbackRefused { .. }
            | OutboundError::ExternalRefused { .. }
            | OutboundError::NoAuthentication { .. } => "auth",
            OutboundError::Shutdown => "shutdown",
            _ => "stream",
        }
    }
}

/// How an outbound stream was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// SASL EXTERNAL with our certificate (XEP-0178).
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
    let session = Session {
        id: handle.id,
        local: local.to_string(),
        remote: remote.to_string(),
        shared,
        ctx: ctx.clone(),
    };
    ctx.tracker.spawn(session.run(rx));
    handle
}

struct Session {
    id: u64,
    local: String,
    remote: String,
    shared: Arc<OutboundShared>,
    ctx: Arc<S2sContext>,
}

/// How an established stream ended.
enum Ended {
    /// Idle or shut down: the queue was written out; the session is over.
    Done,
    /// The connection was lost; stanzas may still be queued.
    Lost(String),
}

impl Session {
    async fn run(self, mut rx: mpsc::Receiver<Stanza>) {
        let metrics = &self.ctx.router.metrics;
        let gauge = metrics.s2s_sessions.with_label_values(&["outbound"]);
        let mut reconnects = 0;
        let failure = loop {
            let attempt = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => Err(OutboundError::Shutdown),
                r = self.connect() => r,
            };
            let conn = match attempt {
                Ok(conn) => conn,
                Err(e) => break e,
            };
            metrics
                .outbound_attempts
                .with_label_values(&["established"])
                .inc();
            let (conn, method, security) = conn;
            tracing::info!(local = %self.local, remote = %self.remote, peer = %conn.peer, auth = method.as_str(), "outbound s2s established: {security}");
            gauge.inc();
            self.shared.established.store(true, Ordering::Release);
            let ended = self.established(conn, &mut rx).await;
            self.shared.established.store(false, Ordering::Release);
            gauge.dec();
            match ended {
                Ended::Done => return,
                Ended::Lost(why) => {
                    tracing::info!(local = %self.local, remote = %self.remote, "outbound s2s lost: {why}");
                    if rx.is_empty() || reconnects >= MAX_RECONNECTS {
                        if rx.is_empty() {
                            self.ctx.router.remove_outbound(&self.remote, self.id);
                            // A stanza may have slipped in between the check and the removal.
                            rx.close();
                            if rx.is_empty() {
                                return;
                            }
                        }
                        break OutboundError::Lost { reason: why };
                    }
                    reconnects += 1;
                }
            }
        };
        tracing::info!(local = %self.local, remote = %self.remote, "outbound s2s failed: {failure}");
        metrics
            .outbound_attempts
            .with_label_values(&[failure.label()])
            .inc();
        // Stop new stanzas first, then return every queued one to its sender.
        self.ctx.router.remove_outbound(&self.remote, self.id);
        rx.close();
        let condition = failure.condition();
        let text = failure.to_string();
        while let Some(stanza) = rx.recv().await {
            self.dequeued(&stanza);
            self.ctx.router.bounce(&stanza, condition, &text).await;
        }
    }

    fn dequeued(&self, stanza: &Stanza) {
        self.shared
            .queued_bytes
            .fetch_sub(stanza.raw().len(), Ordering::AcqRel);
    }

    /// Steps 1–3 over each target in turn.
    async fn connect(&self) -> Result<(Connection, AuthMethod, Security), OutboundError> {
        let targets = self.ctx.resolver.targets(&self.remote).await?;
        let policy = self.ctx.security.peer(&self.remote);
        let settings = &self.ctx.settings;
        let mut last = None;
        for target in targets {
            let opened =
                match connect::open(&self.ctx, &self.local, &self.remote, &target, &policy).await {
                    Ok(opened) => opened,
                    Err(e) => {
                        tracing::debug!(remote = %self.remote, "{e}");
                        last = Some(e.into());
                        continue;
                    }
                };
            let Opened {
                mut conn,
                header,
                features,
                security,
            } = opened;
            let authenticated = tokio::time::timeout(
                settings.negotiation_timeout,
                self.authenticate(&mut conn, header, features, &security, &policy),
            )
            .await;
            match authenticated {
                Ok(Ok(method)) => {
                    conn.set_limits(settings.stanza_limits());
                    return Ok((conn, method, security));
                }
                Ok(Err(e)) => {
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
                    last = Some(e);
                }
                Err(_) => {
                    conn.fail(&StreamErrorCondition::ConnectionTimeout, None)
                        .await;
                    last = Some(
                        ConnectError::Timeout {
                            stage: "authentication",
                            target: target.addr,
                            after: settings.negotiation_timeout,
                        }
                        .into(),
                    );
                }
            }
        }
        Err(last.unwrap_or_else(|| {
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
        header: StreamHeader,
        features: Element,
        security: &Security,
        policy: &PeerSecurity,
    ) -> Result<AuthMethod, OutboundError> {
        let target = conn.peer;
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
                    connect::exchange_headers(conn, &self.local, &self.remote).await?;
                    return Ok(AuthMethod::External);
                }
                ("failure", ns::SASL) => {
                    metrics
                        .s2s_auth
                        .with_label_values(&["outbound", "external", "failure"])
                        .inc();
                    let condition = answer
                        .element()
                        .ok()
                        .and_then(|e| e.children().next().map(|c| c.name.clone()))
                        .unwrap_or_else(|| "failure".into());
                    tracing::info!(local = %self.local, remote = %self.remote, "SASL EXTERNAL refused ({condition}); using dialback from now on");
                    self.ctx.external_refused.insert(self.remote.clone());
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
                        target,
                        reason: format!("expected a SASL answer, got <{name}/>"),
                    }
                    .into())
                }
            }
        }
        if !policy.allows_dialback(tls) {
            return Err(OutboundError::NoAuthentication {
                target,
                reason: if tls {
                    "SASL EXTERNAL is required but not available".into()
                } else {
                    "dialback without TLS is not allowed".into()
                },
            });
        }
        if !offers_dialback(&header, &features) {
            return Err(OutboundError::NoAuthentication {
                target,
                reason: "the peer offers no Server Dialback and no usable SASL EXTERNAL".into(),
            });
        }
        let Some(stream_id) = header.id.take() else {
            return Err(ConnectError::Stream {
                target,
                reason: "the peer's stream header has no id, so dialback is impossible".into(),
            }
            .into());
        };
        self.dialback(conn, &stream_id).await?;
        Ok(AuthMethod::Dialback)
    }

    /// XEP-0220 §2.1: send our key, wait for the verdict on exactly our pair.
    async fn dialback(&self, conn: &mut Connection, stream_id: &str) -> Result<(), OutboundError> {
        let target = conn.peer;
        let key = self.ctx.secret.key(&self.remote, &self.local, stream_id);
        conn.send(
            format!(
                "<db:result from='{}' to='{}'>{}</db:result>",
                escape_attr(&self.local),
                escape_attr(&self.remote),
                key
            )
            .as_bytes(),
        );
        connect::flush(conn, target).await?;
        let metrics = &self.ctx.router.metrics;
        let s = connect::next_element(conn, target).await?;
        if s.kind() != Kind::DbResult {
            return Err(ConnectError::Stream {
                target,
                reason: format!("unexpected <{}/> during dialback", s.name()),
            }
            .into());
        }
        // XEP-0220 §2.1.2: the answer must be for the pair we asked about.
        if s.from() != Some(self.remote.as_str()) || s.to() != Some(self.local.as_str()) {
            return Err(ConnectError::Stream {
                target,
                reason: "unsolicited dialback result".into(),
            }
            .into());
        }
        let verdict = s.type_().unwrap_or("").to_string();
        metrics
            .dialback
            .with_label_values(&["outbound", verdict_label(&verdict)])
            .inc();
        let result = if verdict == "valid" {
            "success"
        } else {
            "failure"
        };
        metrics
            .s2s_auth
            .with_label_values(&["outbound", "dialback", result])
            .inc();
        if verdict == "valid" {
            return Ok(());
        }
        let verdict = match s.element().ok().and_then(|e| {
            e.child("error", ns::SERVER)
                .or_else(|| e.child("error", ns::DIALBACK))
                .and_then(|err| err.children().next().map(|c| c.name.clone()))
        }) {
            Some(cond) => format!("{verdict}: {cond}"),
            None => verdict,
        };
        Err(OutboundError::DialbackRefused {
            remote: self.remote.clone(),
            verdict,
        })
    }

    /// Step 4: write the queue until idle, shutdown or loss.
    async fn established(&self, conn: Connection, rx: &mut mpsc::Receiver<Stanza>) -> Ended {
        let peer = conn.peer;
        let (mut reader, mut writer) = conn.split();
        let target = NsContext::server();
        let idle = self.ctx.settings.idle_timeout;
        let deadline = tokio::time::sleep(idle);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => {
                    self.finish(rx, &mut writer, &target).await;
                    writer.fail(&StreamErrorCondition::SystemShutdown, None).await;
                    return Ended::Done;
                }
                _ = &mut deadline => {
                    tracing::debug!(remote = %self.remote, "closing idle outbound s2s");
                    self.finish(rx, &mut writer, &target).await;
                    writer.close().await;
                    return Ended::Done;
                }
                event = reader.next_event() => match event {
                    Ok(Event::Stanza(s)) if s.kind() == Kind::StreamError => {
                        let error = PeerStreamError::parse(&s);
                        self.ctx.router.metrics.stream_errors.with_label_values(&["received", error.label()]).inc();
                        return Ended::Lost(format!("{peer} closed the stream with {error}"));
                    }
                    Ok(Event::StreamClose) => {
                        writer.close().await;
                        return Ended::Lost("the peer closed the stream".into());
                    }
                    Ok(_) => {
                        // A remote server sends nothing on our outbound stream but errors
                        // (bidirectional s2s, XEP-0288, is not negotiated).
                        writer.fail(&StreamErrorCondition::UnsupportedStanzaType, Some("this stream is outbound only")).await;
                        return Ended::Lost("the peer sent a stanza on our outbound stream".into());
                    }
                    Err(e) => return Ended::Lost(e.to_string()),
                },
                next = rx.recv() => {
                    let Some(first) = next else { return Ended::Done };
                    self.write(&mut writer, &first, &target);
                    while writer.pending() < BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(s) => self.write(&mut writer, &s, &target),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = writer.flush().await {
                        return Ended::Lost(format!("write failed: {e}"));
                    }
                    deadline.as_mut().reset(Instant::now() + idle);
                }
            }
        }
    }

    fn write(&self, writer: &mut Writer, stanza: &Stanza, target: &NsContext) {
        self.dequeued(stanza);
        let bytes = stanza.bytes_for(target);
        self.ctx
            .router
            .metrics
            .s2s_out
            .count(stanza.kind(), bytes.len());
        writer.send(&bytes);
    }

    /// Leaves the router, then writes out what is still queued: once removed, nothing new
    /// arrives, so nothing is left behind.
    async fn finish(
        &self,
        rx: &mut mpsc::Receiver<Stanza>,
        writer: &mut Writer,
        target: &NsContext,
    ) {
        self.ctx.router.remove_outbound(&self.remote, self.id);
        rx.close();
        while let Ok(s) = rx.try_recv() {
            self.write(writer, &s, target);
        }
        let _ = writer.flush().await;
    }
}

fn verdict_label(verdict: &str) -> &'static str {
    match verdict {
        "valid" => "valid",
        "invalid" => "invalid",
        _ => "error",
    }
}
