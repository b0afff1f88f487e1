//! Inbound s2s: a remote server connects to us (RFC 6120 §4, XEP-0220 §2.2).
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
//!    - `<db:result>` (we are the receiving server): check the pair, then [`verify`]
//!      the key with the sender domain's authoritative server and answer
//!      `type='valid'|'invalid'|'error'`; `invalid` ends the stream (XEP-0220 §2.2.1);
//!    - `<db:verify>` (we are the authoritative server): recompute the XEP-0185 key with our
//!      secret and answer `valid` or `invalid` (constant-time comparison);
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
//!    resumption after a drop; the wire behaviour is in [`sm`];
//! 8. after `keepalive_interval` without writing anything, a single space (RFC 6120 §4.6.1).
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

use base64::Engine as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::connect::Security;
use super::keepalive;
use super::limits::{self, Limit, Slot, StreamLimits};
use super::outbound::AuthMethod;
use super::registry::{Pair, Registration};
use super::sm::{self, Request, SmError};
use super::verify::{self, Verdict, VerifyError};
use super::{PeerStreamError, S2sContext};
use crate::connection::{BoxTransport, Connection, ReadError};
use crate::dialback::new_stream_id;
use crate::jid;
use crate::metrics::{Direction, PeerSession, SessionGauge};
use crate::policy::PeerSecurity;
use crate::tls::{CertVerdict, PeerRole, Tls, TlsInfo};
use crate::xml::error::{write_stanza_error, StanzaErrorCondition, StreamErrorCondition};
use crate::xml::escape_attr;
use crate::xml::framer::Event;
use crate::xml::ns;
use crate::xml::stanza::{Kind, Stanza};
use crate::xml::stream::{OpenStream, StreamHeader};

/// A finished verification: (receiving, originating, outcome).
type Verified = (String, String, Result<Verdict, VerifyError>);

/// The stream error that ends an inbound stream, and why.
struct Refusal {
    condition: StreamErrorCondition,
    text: String,
    /// The whole `<stream:error/>`, when it carries more than the condition and the text (an
    /// application-specific condition such as XEP-0198's `<handled-count-too-high/>`).
    raw: Option<Vec<u8>>,
}

fn refuse(condition: StreamErrorCondition, text: impl Into<String>) -> Refusal {
    Refusal {
        condition,
        text: text.into(),
        raw: None,
    }
}

fn refuse_sm(e: &SmError) -> Refusal {
    Refusal {
        condition: e.into(),
        text: e.to_string(),
        raw: Some(sm::stream_error(e)),
    }
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
    let mut conn = Connection::new(io, peer, ctx.settings.negotiation_limits(), ns::SERVER);
    // The default rate until a peer with its own authenticates.
    let rate = ctx.settings.max_inbound_bytes_per_second;
    conn.limit_rate(rate, limits::burst(rate, ctx.settings.max_stanza_bytes));
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
        conn,
        stream_id: new_stream_id(),
        authenticated: Vec::new(),
        pending: 0,
        negotiation_deadline: Instant::now() + ctx.settings.negotiation_timeout,
        security: Security { tls, verdict: None },
        local: None,
        remote: None,
        external_offered: false,
        external_done: false,
        external_failures: 0,
        sm: None,
        sm_live: None,
        limits: StreamLimits::default(),
    };
    let outcome = session.run().await;
    let remotes = session.remote_domains();
    let Inbound {
        mut conn,
        sm,
        sm_live,
        remote,
        ..
    } = session;
    let metrics = &ctx.router.metrics;
    match (&outcome, &sm) {
        (Err(None), Some(sm)) => {
            // The link dropped: the sender may resume (XEP-0198 §5). Kept before the live
            // registration goes, so that a resumption always finds one or the other.
            if let Some(id) = sm.id() {
                tracing::debug!(%peer, h = sm.h(), "inbound s2s dropped: kept for resumption");
                ctx.resumable
                    .keep(id, sm.h(), remotes.clone(), ctx.settings.resume_timeout);
                metrics.sm_in.kept.inc();
            }
        }
        (_, Some(sm)) => {
            // We end the stream: a last, unrequested <a/> tells the sender that everything
            // it sent arrived (XEP-0198 §4), so that it has nothing to resend.
            conn.send(&sm::ack(sm.h()));
            metrics.sm_in.acked.inc();
        }
        (_, None) => {}
    }
    if let (Some(id), Some(live)) = (sm.as_ref().and_then(|sm| sm.id()), &sm_live) {
        ctx.resumable.unregister(id, live.session);
    }
    match outcome {
        Ok(()) => conn.close().await,
        Err(Some(r)) => {
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
            metrics
                .stream_errors
                .with_label_values(&["sent", r.condition.as_str()])
                .inc();
            match &r.raw {
                Some(raw) => {
                    conn.send(raw);
                    conn.close().await;
                }
                None => conn.fail(&r.condition, Some(&r.text)).await,
            }
        }
        Err(None) => {}
    }
}

struct Inbound {
    ctx: Arc<S2sContext>,
    conn: Connection,
    /// This stream in the registry: what `/peers` shows, and how a reload closes it.
    live: Registration,
    /// `fedgate_s2s_sessions`: negotiating until the first pair is authenticated.
    gauge: SessionGauge,
    /// Per-peer figures of each remote domain authenticated on this stream.
    peers: Vec<PeerSession>,
    /// When the connection was accepted, for `fedgate_s2s_auth_seconds`.
    started: Instant,
    /// Our stream id: part of every dialback key for this stream.
    stream_id: String,
    /// (local, remote) pairs proved on this stream.
    authenticated: Vec<(String, String)>,
    /// Verifications in flight, bounded by `max_pending_verifications`.
    pending: usize,
    /// When an unauthenticated stream (TLS handshake included) runs out of time.
    negotiation_deadline: Instant,
    /// TLS and the certificate verdict for the stream's `from`.
    security: Security,
    /// The stream header's `to` (canonical), once read.
    local: Option<String>,
    /// The stream header's `from` (canonical), if the peer said who it is.
    remote: Option<String>,
    /// Whether the current stream's features offer SASL EXTERNAL.
    external_offered: bool,
    /// SASL EXTERNAL succeeded on this connection (it is not offered again).
    external_done: bool,
    /// Failed SASL attempts; the stream ends after [`MAX_SASL_FAILURES`].
    external_failures: usize,
    /// XEP-0198 once `<enable/>` or `<resume/>` succeeded on this stream: we count what we
    /// handle, so that the sender learns what arrived and resends only the rest.
    sm: Option<sm::Receiving>,
    /// While the stream is resumable: where a resuming stream asks for our counters when the
    /// sender has given up on this connection before we noticed it is dead.
    sm_live: Option<sm::Registration>,
    /// The remote domains authenticated here, each holding its `max_streams_per_domain` slot,
    /// with their stanza limits and byte rates.
    limits: StreamLimits,
}

/// SASL attempts allowed per stream (RFC 6120 §6.4.5 asks for at least two).
const MAX_SASL_FAILURES: usize = 3;

/// Whether the stream goes on, restarts (after TLS or SASL success: a new header follows), or
/// ends cleanly with `</stream:stream>`.
enum Flow {
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
    Shutdown,
    /// A reload's policy refuses a domain of this stream.
    Kicked,
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
    /// `Err(None)` = the connection is gone.
    async fn run(&mut self) -> Result<(), Option<Refusal>> {
        let ctx = self.ctx.clone();
        let settings = &ctx.settings;
        let deadline = tokio::time::sleep_until(self.negotiation_deadline);
        tokio::pin!(deadline);
        // Reset only when it fires, not per write: it then checks when we last wrote.
        let keepalive =
            tokio::time::sleep_until(self.conn.last_write() + settings.keepalive_interval);
        tokio::pin!(keepalive);
        // Boxed: the channel allocates its first block of 32 slots at once, and 32 unboxed
        // answers (104 bytes each) would cost every idle stream 3.3 KB.
        let (results_tx, mut results_rx) =
            mpsc::channel::<Box<Verified>>(settings.max_pending_verifications);

        // One pass per stream: the first, and each restart after TLS or SASL.
        'stream: loop {
            let header = tokio::select! {
                e = self.conn.next_event() => e,
                _ = &mut deadline => return Err(Some(refuse(StreamErrorCondition::ConnectionTimeout, "no stream header in time"))),
                _ = self.ctx.shutdown.cancelled() => return Err(Some(refuse(StreamErrorCondition::SystemShutdown, "shutting down"))),
            };
            let header = match header {
                Ok(Event::StreamOpen(h)) => h,
                Ok(_) => {
                    return Err(Some(refuse(
                        StreamErrorCondition::BadFormat,
                        "expected a stream header",
                    )))
                }
                Err(e) => return Err(read_refusal(e)),
            };
            self.open(&header)?;
            self.conn.flush().await.map_err(|_| None)?;

            loop {
                let step = tokio::select! {
                    biased;
                    _ = self.ctx.shutdown.cancelled() => Step::Shutdown,
                    _ = self.live.kicked() => Step::Kicked,
                    _ = &mut deadline => Step::Deadline,
                    t = next_takeover(&mut self.sm_live) => Step::Takeover(t),
                    _ = &mut keepalive => Step::Keepalive,
                    Some(v) = results_rx.recv() => Step::Verified(*v),
                    e = self.conn.next_event() => Step::Event(e),
                };
                match step {
                    Step::Shutdown => {
                        return Err(Some(refuse(
                            StreamErrorCondition::SystemShutdown,
                            "fedgate is shutting down",
                        )))
                    }
                    Step::Kicked => {
                        return Err(Some(refuse(
                            StreamErrorCondition::PolicyViolation,
                            self.live.kick_reason(),
                        )))
                    }
                    Step::Keepalive => {
                        // RFC 6120 §4.6.1: one space after a silence keeps NATs and
                        // firewalls from forgetting the link, and finds a dead one when the
                        // write fails. It is not a stanza: the idle deadline stays.
                        if Instant::now() >= self.conn.last_write() + settings.keepalive_interval {
                            self.conn.send(b" ");
                            self.conn.flush().await.map_err(|_| None)?;
                        }
                        keepalive
                            .as_mut()
                            .reset(self.conn.last_write() + settings.keepalive_interval);
                    }
                    Step::Takeover(t) => {
                        if self.hand_over(t) {
                            return Err(Some(refuse(
                                StreamErrorCondition::Conflict,
                                "the stream was resumed on a new connection",
                            )));
                        }
                    }
                    Step::Deadline if self.authenticated.is_empty() => {
                        return Err(Some(refuse(
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
                    Step::Verified(v) => {
                        self.pending -= 1;
                        self.verified(v).await?;
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
                        return Err(Some(refuse(
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
    fn read_failed(&self, e: ReadError) -> Option<Refusal> {
        if let ReadError::Xml(crate::xml::error::XmlError::StanzaTooLarge { max }) = &e {
            if !self.authenticated.is_empty() {
                let peer = self.remote_domains().join(", ");
                self.ctx
                    .limits
                    .refused(Limit::StanzaBytes, &peer, "a stanza");
                return Some(refuse(
                    StreamErrorCondition::PolicyViolation,
                    format!("stanza over {max} bytes ({})", Limit::StanzaBytes.key()),
                ));
            }
        }
        read_refusal(e)
    }

    /// The policy for the peer: its stream `from`'s, or the default when it did not say.
    fn peer_policy(&self) -> Arc<PeerSecurity> {
        match &self.remote {
            Some(remote) => self.ctx.security.load().peer(remote),
            None => self.ctx.security.load().default_peer(),
        }
    }

    /// The peer certificate's verdict for `domain` (with TLS only), counted in metrics.
    fn verdict_for(&self, domain: &str) -> Option<CertVerdict> {
        let info = self.security.tls.as_ref()?;
        let policy = self.ctx.security.load().peer(domain);
        let verdict = self
            .ctx
            .tls
            .verify_peer(info, domain, PeerRole::Client, &policy.pins);
        self.ctx
            .router
            .metrics
            .certificate_verdicts
            .with_label_values(&["inbound", verdict.label()])
            .inc();
        Some(verdict)
    }

    /// Steps 2 and 3.
    fn open(&mut self, header: &StreamHeader) -> Result<(), Option<Refusal>> {
        if header.default_ns.as_deref() != Some(ns::SERVER) {
            return Err(Some(refuse(
                StreamErrorCondition::InvalidNamespace,
                "the s2s content namespace is jabber:server",
            )));
        }
        if let Some(why) = header.unsupported_version(true) {
            return Err(Some(refuse(StreamErrorCondition::UnsupportedVersion, why)));
        }
        let Some(to) = header.to.as_deref() else {
            return Err(Some(refuse(
                StreamErrorCondition::ImproperAddressing,
                "the stream header needs a 'to'",
            )));
        };
        let local = match jid::normalize_domain(to) {
            Ok(d) if self.ctx.router.is_local(&d) => d.into_owned(),
            _ => {
                return Err(Some(refuse(
                    StreamErrorCondition::HostUnknown,
                    format!("{to} is not served here"),
                )))
            }
        };
        let from = match header.from.as_deref() {
            None => None,
            Some(f) => match jid::normalize_domain(f) {
                Ok(d) => Some(d.into_owned()),
                Err(_) => {
                    return Err(Some(refuse(
                        StreamErrorCondition::InvalidFrom,
                        format!("'{f}' is not a domain"),
                    )))
                }
            },
        };
        let version = header.version.is_some();
        self.conn.open(&OpenStream {
            content_ns: ns::SERVER,
            from: Some(&local),
            to: from.as_deref(),
            id: Some(&self.stream_id),
            version,
            dialback: true,
        });
        self.local = Some(local);
        self.remote = from;
        if let Some(remote) = &self.remote {
            // A peer that names a domain we do not federate with gets nothing but the reason.
            if let Err(refused) = self.ctx.router.admit(remote, Direction::Inbound) {
                self.ctx
                    .registry
                    .failed(remote, Direction::Inbound, refused.to_string());
                return Err(Some(refuse(
                    StreamErrorCondition::PolicyViolation,
                    refused.to_string(),
                )));
            }
        }
        let policy = self.peer_policy();
        let tls = self.security.tls.is_some();
        if tls && self.security.verdict.is_none() {
            // Once per connection: the certificate does not change across stream restarts.
            if let Some(remote) = self.remote.clone() {
                let verdict = self.verdict_for(&remote);
                if let Some(CertVerdict::Invalid(problem)) = &verdict {
                    if policy.needs_valid_certificate() {
                        return Err(Some(refuse(
                            StreamErrorCondition::PolicyViolation,
                            format!("a valid certificate for {remote} is required: {problem}"),
                        )));
                    }
                }
                self.security.verdict = verdict;
            }
        }
        // A refused `from` has ended the stream above.
        let admitted = self.remote.is_some();
        self.external_offered = tls
            && !self.external_done
            && admitted
            && self.security.certificate_valid()
            && policy.allows_external();
        if version {
            let mut features = String::from("<stream:features>");
            if !tls && self.ctx.tls.can_accept() {
                features.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                if policy.tls_required {
                    features.push_str("<required/>");
                }
                features.push_str("</starttls>");
            }
            if self.external_offered {
                features.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>");
            }
            if policy.allows_dialback(tls) {
                features
                    .push_str("<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>");
            }
            // Offered wherever authentication may follow, so that a peer authenticating by
            // dialback (which brings no new features) has seen it; honoured only once the
            // stream is authenticated.
            if self.ctx.settings.stream_management && (tls || !policy.tls_required) {
                features.push_str("<sm xmlns='urn:xmpp:sm:3'/>");
            }
            // XEP-0478: what the peer may send once authenticated, wherever it may
            // authenticate (before a required TLS, nothing but <starttls/> is accepted, and
            // the limits come with the features after it).
            if tls || !policy.tls_required {
                let settings = &self.ctx.settings;
                let max_bytes = policy.max_stanza_bytes.unwrap_or(settings.max_stanza_bytes);
                features.push_str(&limits::limits_feature(max_bytes, settings.idle_timeout));
            }
            features.push_str("</stream:features>");
            self.conn.send(features.as_bytes());
        }
        Ok(())
    }

    /// Steps 3 to 6 for one element.
    async fn handle_stanza(
        &mut self,
        stanza: Stanza,
        results: &mpsc::Sender<Box<Verified>>,
    ) -> Result<Flow, Option<Refusal>> {
        let tls = self.security.tls.is_some();
        let is_starttls = stanza.name() == "starttls" && stanza.ns() == ns::TLS;
        if !tls && !is_starttls && self.peer_policy().tls_required {
            return Err(Some(refuse(
                StreamErrorCondition::PolicyViolation,
                "TLS is required: send <starttls/> first",
            )));
        }
        if is_starttls {
            return self.starttls().await;
        }
        if stanza.name() == "auth" && stanza.ns() == ns::SASL {
            return self.sasl_external(&stanza).await;
        }
        if stanza.ns() == sm::NS {
            self.stream_management(&stanza).await?;
            self.conn.flush().await.map_err(|_| None)?;
            return Ok(Flow::Continue);
        }
        match stanza.kind() {
            Kind::DbResult if stanza.type_().is_none() => {
                if let Some(immediate) = self.db_result(&stanza, results)? {
                    return self.verified(immediate).await.map(|()| Flow::Continue);
                }
            }
            Kind::DbVerify if stanza.type_().is_none() => self.db_verify(&stanza)?,
            Kind::DbResult | Kind::DbVerify => {
                return Err(Some(refuse(
                    StreamErrorCondition::NotAuthorized,
                    "unsolicited dialback response",
                )))
            }
            Kind::Message | Kind::Presence | Kind::Iq => {
                let peer = self.check_stanza(&stanza)?;
                // The answer to one of our pings ends here, and a ping to our domain itself is
                // answered here; each is handled all the same.
                let router = &self.ctx.router;
                if let Some(pong) = keepalive::answer_server_ping(&stanza, |d| router.is_local(d)) {
                    router.route(pong).await;
                } else if !self.ctx.pings.claim(&stanza) {
                    self.ctx
                        .router
                        .metrics
                        .s2s_in
                        .count(stanza.kind(), stanza.raw().len());
                    if let Some(peer) = self.peers.get(peer) {
                        peer.stanza();
                    }
                    self.ctx.router.route(stanza).await;
                }
                if let Some(sm) = &mut self.sm {
                    sm.handled();
                }
            }
            Kind::StreamError => {
                let error = PeerStreamError::parse(&stanza);
                tracing::info!(peer = %self.conn.peer, "inbound s2s peer sent a stream error: {error}");
                self.ctx
                    .router
                    .metrics
                    .stream_errors
                    .with_label_values(&["received", error.label()])
                    .inc();
                return Err(None);
            }
            _ => {
                return Err(Some(refuse(
                    StreamErrorCondition::UnsupportedStanzaType,
                    format!("<{}/> is not supported here", stanza.name()),
                )))
            }
        }
        self.conn.flush().await.map_err(|_| None)?;
        Ok(Flow::Continue)
    }

    /// `<starttls/>`: `<proceed/>`, the handshake, a fresh stream (RFC 6120 §5.4.2.3).
    async fn starttls(&mut self) -> Result<Flow, Option<Refusal>> {
        if self.security.tls.is_some() {
            return Err(Some(refuse(
                StreamErrorCondition::PolicyViolation,
                "TLS is already negotiated",
            )));
        }
        if !self.ctx.tls.can_accept() {
            // RFC 6120 §5.4.2.2: <failure/>, then the stream is closed (no stream error).
            tracing::info!(peer = %self.conn.peer, "STARTTLS requested but no certificate is configured");
            self.conn
                .send(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
            return Ok(Flow::End);
        }
        self.conn
            .send(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        self.conn.flush().await.map_err(|_| None)?;
        // Whatever the peer sent after <starttls/> is dropped here, unread.
        let io = self.conn.take_transport();
        let hint = self.local.clone();
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
                self.security.tls = Some(info);
                // RFC 6120 §4.7.3: a new stream id for the new stream.
                self.stream_id = new_stream_id();
                Ok(Flow::Restart)
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.conn.peer, "STARTTLS: {e}");
                Err(None)
            }
            Err(_) => {
                tracing::debug!(peer = %self.conn.peer, "STARTTLS: no handshake in time");
                Err(None)
            }
        }
    }

    /// Answers a SASL attempt with `failure` (a whole `<failure/>`), counted; the stream goes on
    /// until [`MAX_SASL_FAILURES`] (RFC 6120 §6.4.5).
    async fn sasl_failure(&mut self, failure: &str) -> Result<Flow, Option<Refusal>> {
        self.ctx
            .router
            .metrics
            .s2s_auth
            .with_label_values(&["inbound", "external", "failure"])
            .inc();
        self.external_failures += 1;
        self.conn.send(failure.as_bytes());
        self.conn.flush().await.map_err(|_| None)?;
        if self.external_failures >= MAX_SASL_FAILURES {
            return Err(Some(refuse(
                StreamErrorCondition::PolicyViolation,
                "too many failed authentication attempts",
            )));
        }
        Ok(Flow::Continue)
    }

    /// `<auth mechanism='EXTERNAL'/>` (RFC 6120 §6.4, XEP-0178 §3).
    async fn sasl_external(&mut self, stanza: &Stanza) -> Result<Flow, Option<Refusal>> {
        let element = stanza
            .element()
            .map_err(|e| Some(refuse(StreamErrorCondition::from(&e), e.to_string())))?;
        let failure = if !self.external_offered || element.attr("mechanism") != Some("EXTERNAL") {
            Some("invalid-mechanism")
        } else {
            match decode_authzid(&element.text()) {
                Err(()) => Some("incorrect-encoding"),
                Ok(None) => None,
                Ok(Some(authzid)) => {
                    let matches = jid::normalize_domain(&authzid)
                        .is_ok_and(|a| Some(a.as_ref()) == self.remote.as_deref());
                    (!matches).then_some("invalid-authzid")
                }
            }
        };
        let ctx = self.ctx.clone();
        let metrics = &ctx.router.metrics;
        if let Some(condition) = failure {
            tracing::info!(peer = %self.conn.peer, remote = ?self.remote, "SASL EXTERNAL refused: {condition}");
            return self
                .sasl_failure(&format!(
                    "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{condition}/></failure>"
                ))
                .await;
        }
        // Offered only with a valid certificate for the stream's from, so both are known.
        let (Some(local), Some(remote)) = (self.local.clone(), self.remote.clone()) else {
            return Err(None);
        };
        if let Err(why) = self.admit(&remote) {
            // RFC 6120 §6.5.10: the certificate is good; try again when a stream closes.
            return self
                .sasl_failure(&format!(
                    "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><temporary-auth-failure/><text>{}</text></failure>",
                    crate::xml::escape_text(&why)
                ))
                .await;
        }
        metrics
            .s2s_auth
            .with_label_values(&["inbound", "external", "success"])
            .inc();
        self.conn
            .send(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        self.conn.flush().await.map_err(|_| None)?;
        self.authenticate(local, remote, AuthMethod::External);
        self.external_done = true;
        // A new stream: stream management starts afresh on it (XEP-0198 §3).
        self.end_sm();
        self.conn.restart();
        self.stream_id = new_stream_id();
        Ok(Flow::Restart)
    }

    /// The originating domains authenticated on this stream, each once.
    fn remote_domains(&self) -> Vec<String> {
        let mut domains: Vec<String> = Vec::with_capacity(self.authenticated.len());
        for (_, remote) in &self.authenticated {
            if !domains.contains(remote) {
                domains.push(remote.clone());
            }
        }
        domains
    }

    /// A stream management element (XEP-0198). We are the receiving side: we answer
    /// `<enable/>` and `<resume/>`, count, and acknowledge; we send no stanzas here, so the
    /// peer's own count of ours must be 0.
    async fn stream_management(&mut self, stanza: &Stanza) -> Result<(), Option<Refusal>> {
        let request = sm::parse(stanza).map_err(|e| Some(refuse_sm(&e)))?;
        let settings = &self.ctx.settings;
        let metrics = &self.ctx.router.metrics.sm_in;
        let negotiated = self.sm.is_some();
        match request {
            Request::Enable { .. } | Request::Resume { .. } if !settings.stream_management => {
                self.conn.send(&sm::failed(
                    StanzaErrorCondition::FeatureNotImplemented,
                    None,
                ));
            }
            // §3: only on an authenticated stream, and only once.
            Request::Enable { .. } | Request::Resume { .. }
                if self.authenticated.is_empty() || negotiated =>
            {
                self.conn
                    .send(&sm::failed(StanzaErrorCondition::UnexpectedRequest, None));
            }
            Request::Enable { resume } => {
                let id = resume.then(new_stream_id);
                self.conn
                    .send(&sm::enabled(id.as_deref(), settings.resume_timeout));
                metrics.enabled.inc();
                self.start_sm(id, 0);
            }
            Request::Resume { h, .. } if h != 0 => {
                return Err(Some(refuse_sm(&SmError::HandledCountTooHigh {
                    h,
                    sent: 0,
                })));
            }
            Request::Resume { previd, .. } => {
                let domains = self.remote_domains();
                match self.ctx.resumable.resume(&previd, &domains).await {
                    Some(h) => {
                        tracing::debug!(peer = %self.conn.peer, h, "inbound s2s resumed");
                        self.conn.send(&sm::resumed(&previd, h));
                        metrics.resumed.inc();
                        self.start_sm(Some(previd), h);
                    }
                    None => {
                        // §5: the stream stays; the sender may enable afresh and resend.
                        self.conn
                            .send(&sm::failed(StanzaErrorCondition::ItemNotFound, Some(0)));
                        metrics.resume_failed.inc();
                    }
                }
            }
            Request::AckRequest => match &self.sm {
                Some(sm) => {
                    self.conn.send(&sm::ack(sm.h()));
                    metrics.acked.inc();
                }
                None => {
                    tracing::debug!(peer = %self.conn.peer, "<r/> without stream management: ignored")
                }
            },
            Request::Ack { h } => {
                if negotiated {
                    sm::check_handled(h, 0, 0).map_err(|e| Some(refuse_sm(&e)))?;
                }
            }
        }
        Ok(())
    }

    /// Stream management is on from `h`, resumable under `id` if given.
    fn start_sm(&mut self, id: Option<String>, h: u32) {
        if let Some(id) = &id {
            self.sm_live = Some(self.ctx.resumable.register(id));
        }
        self.sm = Some(sm::Receiving::new(id, h));
        self.live.update(|n| n.stream_management = true);
    }

    /// Stream management is off: the stream restarted, or its counters moved elsewhere.
    fn end_sm(&mut self) {
        let sm = self.sm.take();
        let live = self.sm_live.take();
        self.live.update(|n| n.stream_management = false);
        if let (Some(id), Some(live)) = (sm.as_ref().and_then(sm::Receiving::id), live) {
            self.ctx.resumable.unregister(id, live.session);
        }
    }

    /// A stream resuming this one asks for its counters: they move if that stream is
    /// authenticated for each of our domains, and then this stream must handle nothing more.
    fn hand_over(&mut self, takeover: sm::Takeover) -> bool {
        let ours = self.remote_domains();
        if !ours.iter().all(|d| takeover.domains.contains(d)) {
            tracing::info!(peer = %self.conn.peer, "refused a resumption of this stream from other domains");
            return false;
        }
        let Some(h) = self.sm.as_ref().map(sm::Receiving::h) else {
            return false;
        };
        if takeover.reply.send(h).is_err() {
            // The resuming stream gave up waiting; this one goes on.
            return false;
        }
        self.end_sm();
        true
    }

    /// Records an authenticated pair and raises the limits on the first one.
    fn authenticate(&mut self, local: String, remote: String, method: AuthMethod) {
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
                .security
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
            self.peers.push(peer);
        }
        tracing::info!(peer = %self.conn.peer, %local, %remote, "inbound s2s authenticated by {method}: {}", self.security);
        if !self
            .authenticated
            .iter()
            .any(|(l, r)| *l == local && *r == remote)
        {
            let certificate = self.security.verdict.as_ref().map(|v| v.to_string());
            self.live.update(|n| {
                n.pairs.push(Pair {
                    local: local.clone(),
                    remote: remote.clone(),
                    auth: method,
                });
                if n.certificate.is_none() {
                    n.certificate = certificate;
                }
            });
            self.authenticated.push((local, remote));
        }
    }

    /// Takes `remote`'s `max_streams_per_domain` slot for this stream, unless it holds one
    /// already; `Err` (counted and logged) is the text of the refusal.
    fn admit(&mut self, remote: &str) -> Result<(), String> {
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

    fn streams_full_text(&self, remote: &str) -> String {
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
    fn check_stanza(&self, stanza: &Stanza) -> Result<usize, Option<Refusal>> {
        if self.authenticated.is_empty() {
            return Err(Some(refuse(
                StreamErrorCondition::NotAuthorized,
                "stanza before authentication",
            )));
        }
        let (Some(to), Some(from)) = (stanza.to(), stanza.from()) else {
            return Err(Some(refuse(
                StreamErrorCondition::ImproperAddressing,
                "s2s stanzas need 'to' and 'from'",
            )));
        };
        let (Ok(to_domain), Ok(from_domain)) = (jid::domain_of(to), jid::domain_of(from)) else {
            return Err(Some(refuse(
                StreamErrorCondition::ImproperAddressing,
                "'to' or 'from' is not a valid JID",
            )));
        };
        if !self.ctx.router.is_local(&to_domain) {
            return Err(Some(refuse(
                StreamErrorCondition::HostUnknown,
                format!("{to_domain} is not served here"),
            )));
        }
        let proved = self
            .authenticated
            .iter()
            .any(|(l, r)| *l == *to_domain && *r == *from_domain);
        if !proved {
            return Err(Some(refuse(
                StreamErrorCondition::InvalidFrom,
                format!("{from_domain} is not authenticated for {to_domain} on this stream"),
            )));
        }
        let len = stanza.raw().len();
        if let Some(max) = self.limits.too_large(&from_domain, len) {
            self.ctx
                .limits
                .refused(Limit::StanzaBytes, &from_domain, "a stanza");
            return Err(Some(refuse(
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

    /// `<db:result>` from an initiating server: start verifying its key, or accept it at once
    /// when the TLS certificate already proves the sender domain (XEP-0344 §2.4).
    fn db_result(
        &mut self,
        stanza: &Stanza,
        results: &mpsc::Sender<Box<Verified>>,
    ) -> Result<Option<Verified>, Option<Refusal>> {
        let (Some(to), Some(from)) = (stanza.to(), stanza.from()) else {
            return Err(Some(refuse(
                StreamErrorCondition::ImproperAddressing,
                "<db:result/> needs 'to' and 'from'",
            )));
        };
        let originating = match jid::normalize_domain(from) {
            Ok(d) => d.into_owned(),
            Err(_) => {
                return Err(Some(refuse(
                    StreamErrorCondition::InvalidFrom,
                    format!("'{from}' is not a domain"),
                )))
            }
        };
        let receiving = match jid::normalize_domain(to) {
            Ok(d) if self.ctx.router.is_local(&d) => d.into_owned(),
            _ => {
                // XEP-0220 §2.4: a dialback error, not a stream error.
                self.send_db_error("result", to, from, &StanzaErrorCondition::ItemNotFound);
                return Ok(None);
            }
        };
        if let Err(refused) = self.ctx.router.admit(&originating, Direction::Inbound) {
            tracing::info!(peer = %self.conn.peer, "{refused}");
            self.ctx
                .registry
                .failed(&originating, Direction::Inbound, refused.to_string());
            self.send_db_error("result", to, from, &StanzaErrorCondition::PolicyViolation);
            return Ok(None);
        }
        if self.ctx.router.is_local(&originating) {
            self.send_db_error("result", to, from, &StanzaErrorCondition::NotAcceptable);
            return Ok(None);
        }
        let tls = self.security.tls.is_some();
        let policy = self.ctx.security.load().peer(&originating);
        if !policy.allows_dialback(tls) {
            tracing::info!(peer = %self.conn.peer, remote = %originating, tls, "dialback refused by policy for this peer");
            self.send_db_error("result", to, from, &StanzaErrorCondition::PolicyViolation);
            return Ok(None);
        }
        if let Some(why) = self.pair_refused(&receiving, &originating) {
            self.send_db_error_text(
                "result",
                to,
                from,
                &StanzaErrorCondition::PolicyViolation,
                &why,
            );
            return Ok(None);
        }
        let verdict = if self.remote.as_deref() == Some(originating.as_str()) {
            self.security.verdict.clone()
        } else {
            self.verdict_for(&originating)
        };
        let certified = verdict.as_ref().is_some_and(CertVerdict::is_valid);
        if policy.needs_valid_certificate() && !certified {
            let why = verdict.map_or_else(|| "no TLS".to_string(), |v| v.to_string());
            tracing::info!(peer = %self.conn.peer, remote = %originating, "dialback refused: a valid certificate is required ({why})");
            self.send_db_error("result", to, from, &StanzaErrorCondition::PolicyViolation);
            return Ok(None);
        }
        if certified {
            // XEP-0344 §2.4: the certificate proves the domain; no connect-back needed.
            return Ok(Some((receiving, originating, Ok(Verdict::Valid))));
        }
        let settings = &self.ctx.settings;
        let permit = if self.pending >= settings.max_pending_verifications {
            Err((
                Limit::PendingVerifications,
                settings.max_pending_verifications,
            ))
        } else {
            self.ctx.limits.verification().ok_or((
                Limit::PendingVerificationsTotal,
                settings.max_pending_verifications_total,
            ))
        };
        let permit = match permit {
            Ok(permit) => permit,
            Err((limit, max)) => {
                self.ctx
                    .limits
                    .refused(limit, &self.conn.peer, &originating);
                let why = format!(
                    "too many dialback verifications in flight: {} is {max}; try again later",
                    limit.key()
                );
                self.send_db_error_text(
                    "result",
                    to,
                    from,
                    &StanzaErrorCondition::ResourceConstraint,
                    &why,
                );
                return Ok(None);
            }
        };
        let key = stanza
            .element()
            .map(|e| e.text().trim().to_string())
            .map_err(|e| Some(refuse(StreamErrorCondition::from(&e), e.to_string())))?;
        self.pending += 1;
        let ctx = self.ctx.clone();
        let results = results.clone();
        let stream_id = self.stream_id.clone();
        self.ctx.tracker.spawn(async move {
            let outcome =
                verify::verify(ctx, receiving.clone(), originating.clone(), stream_id, key).await;
            // Back to the pool before the answer waits for the stream.
            drop(permit);
            let _ = results
                .send(Box::new((receiving, originating, outcome)))
                .await;
        });
        Ok(None)
    }

    /// Why a `<db:result/>` for (receiving, originating) may not add its pair to this stream:
    /// `max_domain_pairs_per_stream` (pairs authenticated or being verified), or a domain that
    /// has all the streams `max_streams_per_domain` allows. Counted and logged. Checked before
    /// any connect-back; the domain's slot itself is taken when it is verified.
    fn pair_refused(&self, receiving: &str, originating: &str) -> Option<String> {
        let known = self
            .authenticated
            .iter()
            .any(|(l, r)| l == receiving && r == originating);
        if known {
            return None;
        }
        let max = self.ctx.settings.max_domain_pairs_per_stream;
        if self.authenticated.len() + self.pending >= max {
            self.ctx
                .limits
                .refused(Limit::DomainPairsPerStream, &self.conn.peer, originating);
            return Some(format!(
                "this stream carries all the domain pairs it may: s2s.max_domain_pairs_per_stream is {max}; open another stream"
            ));
        }
        if !self.limits.holds(originating) && self.ctx.limits.streams_full(originating) {
            self.ctx
                .limits
                .refused(Limit::StreamsPerDomain, &self.conn.peer, originating);
            return Some(self.streams_full_text(originating));
        }
        None
    }

    /// A verification finished: tell the initiating server.
    async fn verified(
        &mut self,
        (receiving, originating, outcome): Verified,
    ) -> Result<(), Option<Refusal>> {
        let metrics = &self.ctx.router.metrics;
        let verdict = match outcome {
            Ok(verdict) => verdict,
            Err(e) => {
                metrics
                    .dialback
                    .with_label_values(&["result", "error"])
                    .inc();
                tracing::info!(peer = %self.conn.peer, remote = %originating, "dialback verification failed: {e}");
                self.ctx.registry.failed(
                    &originating,
                    Direction::Inbound,
                    format!(
                        "could not verify the dialback key from {}: {e}",
                        self.conn.peer
                    ),
                );
                self.send_db_error("result", &receiving, &originating, &e.condition());
                return self.conn.flush().await.map_err(|_| None);
            }
        };
        if verdict == Verdict::Valid {
            if let Err(why) = self.admit(&originating) {
                // Streams of the domain were authenticated while this one was verified.
                self.send_db_error_text(
                    "result",
                    &receiving,
                    &originating,
                    &StanzaErrorCondition::PolicyViolation,
                    &why,
                );
                return self.conn.flush().await.map_err(|_| None);
            }
        }
        let (result, auth) = match verdict {
            Verdict::Valid => {
                self.authenticate(receiving.clone(), originating.clone(), AuthMethod::Dialback);
                ("valid", "success")
            }
            Verdict::Invalid => {
                tracing::warn!(peer = %self.conn.peer, local = %receiving, remote = %originating, "dialback key refused by the authoritative server: spoofing attempt?");
                self.ctx.registry.failed(
                    &originating,
                    Direction::Inbound,
                    format!("the dialback key from {} was refused by {originating}'s authoritative server", self.conn.peer),
                );
                ("invalid", "failure")
            }
        };
        let metrics = &self.ctx.router.metrics;
        metrics
            .dialback
            .with_label_values(&["result", result])
            .inc();
        metrics
            .s2s_auth
            .with_label_values(&["inbound", "dialback", auth])
            .inc();
        self.conn.send(
            format!(
                "<db:result from='{}' to='{}' type='{result}'/>",
                escape_attr(&receiving),
                escape_attr(&originating)
            )
            .as_bytes(),
        );
        self.conn.flush().await.map_err(|_| None)?;
        if verdict == Verdict::Invalid {
            // XEP-0220 §2.2.1: after an invalid result the stream MUST be closed.
            return Err(Some(refuse(
                StreamErrorCondition::NotAuthorized,
                format!("the dialback key for {originating} is invalid"),
            )));
        }
        Ok(())
    }

    /// `<db:verify>` from a receiving server: we are the authoritative server.
    fn db_verify(&mut self, stanza: &Stanza) -> Result<(), Option<Refusal>> {
        let (Some(to), Some(from), Some(id)) = (stanza.to(), stanza.from(), stanza.id()) else {
            return Err(Some(refuse(
                StreamErrorCondition::ImproperAddressing,
                "<db:verify/> needs 'to', 'from' and 'id'",
            )));
        };
        let originating = match jid::normalize_domain(to) {
            Ok(d) if self.ctx.router.is_local(&d) => d.into_owned(),
            _ => {
                self.send_db_error_id(
                    "verify",
                    to,
                    from,
                    Some(id),
                    &StanzaErrorCondition::ItemNotFound,
                    None,
                );
                return Ok(());
            }
        };
        let key = stanza
            .element()
            .map(|e| e.text().trim().to_string())
            .map_err(|e| Some(refuse(StreamErrorCondition::from(&e), e.to_string())))?;
        let receiving = jid::normalize_domain(from)
            .map(|d| d.into_owned())
            .unwrap_or_else(|_| from.to_string());
        let valid = self.ctx.secret.verify(&receiving, &originating, id, &key);
        let verdict = if valid { "valid" } else { "invalid" };
        self.ctx
            .router
            .metrics
            .dialback
            .with_label_values(&["verify", verdict])
            .inc();
        self.conn.send(
            format!(
                "<db:verify from='{}' to='{}' id='{}' type='{verdict}'/>",
                escape_attr(to),
                escape_attr(from),
                escape_attr(id)
            )
            .as_bytes(),
        );
        Ok(())
    }

    fn send_db_error(
        &mut self,
        element: &str,
        from: &str,
        to: &str,
        condition: &StanzaErrorCondition,
    ) {
        self.send_db_error_id(element, from, to, None, condition, None)
    }

    /// A dialback error with a text saying why (a limit and its key).
    fn send_db_error_text(
        &mut self,
        element: &str,
        from: &str,
        to: &str,
        condition: &StanzaErrorCondition,
        text: &str,
    ) {
        self.send_db_error_id(element, from, to, None, condition, Some(text))
    }

    /// A dialback error (XEP-0220 §2.4): `from` is the domain the request was addressed to.
    fn send_db_error_id(
        &mut self,
        element: &str,
        from: &str,
        to: &str,
        id: Option<&str>,
        condition: &StanzaErrorCondition,
        text: Option<&str>,
    ) {
        let id = id
            .map(|id| format!(" id='{}'", escape_attr(id)))
            .unwrap_or_default();
        let mut out = format!(
            "<db:{element} from='{}' to='{}'{id} type='error'>",
            escape_attr(from),
            escape_attr(to)
        )
        .into_bytes();
        write_stanza_error(&mut out, *condition, text);
        out.extend_from_slice(format!("</db:{element}>").as_bytes());
        self.conn.send(&out);
    }
}

/// The authzid of a SASL initial response: `=` or nothing means none (RFC 6120 §6.4.2);
/// otherwise base64 of UTF-8.
fn decode_authzid(text: &str) -> Result<Option<String>, ()> {
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Ok(None);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| ())?;
    let authzid = String::from_utf8(bytes).map_err(|_| ())?;
    Ok((!authzid.is_empty()).then_some(authzid))
}

fn read_refusal(e: ReadError) -> Option<Refusal> {
    match e {
        ReadError::Xml(x) => Some(refuse(StreamErrorCondition::from(&x), x.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! The call sites that the integration tests cannot reach from outside a running gateway:
    //! here the test holds the session's [`S2sContext`].

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::config::Config;
    use crate::dialback::DialbackSecret;
    use crate::dns::Resolver;
    use crate::metrics::Metrics;
    use crate::policy::Policy;
    use crate::router::{next_session_id, ComponentHandle, Router};
    use crate::tls::Tls;
    use crate::xml::framer::{Framer, Limits};

    const WAIT: Duration = Duration::from_secs(10);

    /// A plaintext-only configuration serving `domain`, with `extra` lines in `[s2s]`.
    fn config(dir: &std::path::Path, domain: &str, extra: &str) -> Config {
        Config::from_toml(
            &format!(
                r#"
[s2s]
listen = ["127.0.0.1:0"]
direct_tls_listen = []
require_encryption = false
dialback_secret_file = "{domain}.secret"
{extra}

[component]
listen = "127.0.0.1:0"

[[component.backend]]
domain = "{domain}"
secret = "secret"

[metrics]
enabled = false
"#
            ),
            dir,
        )
        .unwrap()
    }

    /// What `gateway::start` builds, without listeners: the test drives [`serve`] itself.
    fn context(config: &Config) -> Arc<S2sContext> {
        let router = Arc::new(Router::new(
            config.local_domains().map(str::to_string),
            config.s2s.queue_max_bytes,
            Policy::from_config(&config.federation),
            Metrics::register(),
        ));
        Arc::new(S2sContext::new(
            config,
            router,
            Arc::new(Tls::from_config(config).unwrap()),
            Resolver::from_config(config).unwrap(),
            Arc::new(DialbackSecret::load_or_create(&config.s2s.dialback_secret_file).unwrap()),
            CancellationToken::new(),
            TaskTracker::new(),
        ))
    }

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
                ComponentHandle {
                    id: next_session_id(),
                    tx: backend_tx,
                    kick: CancellationToken::new(),
                },
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
            b"<a xmlns='urn:xmpp:sm:3' h='2'/>",
            "the answer was handled, so it counts"
        );
        assert_eq!(
            backend.recv().await.unwrap().id(),
            Some("after"),
            "the answer never reached the backend"
        );
        assert!(backend.try_recv().is_err());
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
