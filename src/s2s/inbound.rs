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
//!    - `<db:result>` (we are the receiving server): check the pair, then [verify](super::verify)
//!      the key with the sender domain's authoritative server and answer
//!      `type='valid'|'invalid'|'error'`; `invalid` ends the stream (XEP-0220 §2.2.1);
//!    - `<db:verify>` (we are the authoritative server): recompute the XEP-0185 key with our
//!      secret and answer `valid` or `invalid` (constant-time comparison);
//!    - a typed `db:result`/`db:verify` on an inbound stream answers nothing we asked: it is
//!      unsolicited and ends the stream (XEP-0220 §3.1);
//! 6. accept stanzas only for an authenticated (local, remote) pair: `to` and `from` present
//!    and valid (else `improper-addressing`), `to` a domain we serve (else `host-unknown`), `from`
//!    a domain proved on this stream for that `to` (else `invalid-from`); no stanza before any
//!    pair is authenticated (`not-authorized`).
//!
//! Until a pair is authenticated, `negotiation_timeout` bounds the stream and stanzas are
//! limited to `max_negotiation_stanza_bytes`; after, `idle_timeout` and `max_stanza_bytes`.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::connect::Security;
use super::verify::{self, Verdict, VerifyError};
use super::{PeerStreamError, S2sContext};
use crate::connection::{BoxTransport, Connection, ReadError};
use crate::dialback::new_stream_id;
use crate::jid;
use crate::policy::PeerSecurity;
use crate::tls::{CertVerdict, PeerRole, TlsInfo};
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
}

fn refuse(condition: StreamErrorCondition, text: impl Into<String>) -> Refusal {
    Refusal {
        condition,
        text: text.into(),
    }
}

/// Serves one inbound s2s connection on the STARTTLS port, from accept to close.
pub async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<S2sContext>,
    _permit: OwnedSemaphorePermit,
) {
    serve(Box::new(tcp), peer, ctx, None).await
}

/// Serves one inbound s2s connection on the direct TLS port (XEP-0368): TLS first, within
/// `negotiation_timeout`, then the stream as on the STARTTLS port.
pub async fn handle_direct_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<S2sContext>,
    _permit: OwnedSemaphorePermit,
) {
    let handshake = tokio::time::timeout(
        ctx.settings.negotiation_timeout,
        ctx.tls.accept(Box::new(tcp), None, true),
    )
    .await;
    let handshakes = &ctx.router.metrics.tls_handshakes;
    match handshake {
        Ok(Ok((io, info))) => {
            handshakes.with_label_values(&["inbound", "ok"]).inc();
            serve(io, peer, ctx, Some(info)).await
        }
        Ok(Err(e)) => {
            handshakes.with_label_values(&["inbound", "failed"]).inc();
            tracing::debug!(%peer, "direct TLS: {e}");
        }
        Err(_) => {
            handshakes.with_label_values(&["inbound", "failed"]).inc();
            tracing::debug!(%peer, "direct TLS: no handshake in time");
        }
    }
}

async fn serve(io: BoxTransport, peer: SocketAddr, ctx: Arc<S2sContext>, tls: Option<TlsInfo>) {
    let conn = Connection::new(io, peer, ctx.settings.negotiation_limits(), ns::SERVER);
    let gauge = ctx
        .router
        .metrics
        .s2s_sessions
        .with_label_values(&["inbound"]);
    gauge.inc();
    let mut session = Inbound {
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
    };
    let outcome = session.run().await;
    let Inbound { conn, .. } = session;
    match outcome {
        Ok(()) => conn.close().await,
        Err(Some(r)) => {
            tracing::info!(%peer, condition = %r.condition, "closing inbound s2s: {}", r.text);
            ctx.router
                .metrics
                .stream_errors
                .with_label_values(&["sent", r.condition.as_str()])
                .inc();
            conn.fail(&r.condition, Some(&r.text)).await;
        }
        Err(None) => {}
    }
    gauge.dec();
}

struct Inbound {
    ctx: Arc<S2sContext>,
    conn: Connection,
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
    Shutdown,
}

impl Inbound {
    /// Runs the session. `Ok` = clean close; `Err(Some)` = close with that stream error;
    /// `Err(None)` = the connection is gone.
    async fn run(&mut self) -> Result<(), Option<Refusal>> {
        let settings = self.ctx.settings.clone();
        let deadline = tokio::time::sleep_until(self.negotiation_deadline);
        tokio::pin!(deadline);
        let (results_tx, mut results_rx) =
            mpsc::channel::<Verified>(settings.max_pending_verifications);

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
                    _ = &mut deadline => Step::Deadline,
                    Some(v) = results_rx.recv() => Step::Verified(v),
                    e = self.conn.next_event() => Step::Event(e),
                };
                match step {
                    Step::Shutdown => {
                        return Err(Some(refuse(
                            StreamErrorCondition::SystemShutdown,
                            "fedgate is shutting down",
                        )))
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
                    Step::Event(Err(e)) => return Err(read_refusal(e)),
                }
            }
        }
    }

    /// The policy for the peer: its stream `from`'s, or the default when it did not say.
    fn peer_policy(&self) -> Arc<PeerSecurity> {
        match &self.remote {
            Some(remote) => self.ctx.security.peer(remote),
            None => self.ctx.security.default_peer(),
        }
    }

    /// The peer certificate's verdict for `domain` (with TLS only), counted in metrics.
    fn verdict_for(&self, domain: &str) -> Option<CertVerdict> {
        let info = self.security.tls.as_ref()?;
        let policy = self.ctx.security.peer(domain);
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
        if let Some(version) = &header.version {
            let major = version
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok());
            if major != Some(1) {
                return Err(Some(refuse(
                    StreamErrorCondition::UnsupportedVersion,
                    format!("version {version} is not supported; fedgate speaks 1.0"),
                )));
            }
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
        let admitted = self
            .remote
            .as_deref()
            .is_some_and(|r| self.ctx.router.policy.check(r).is_ok());
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
            features.push_str("</stream:features>");
            self.conn.send(features.as_bytes());
        }
        Ok(())
    }

    /// Steps 3 to 6 for one element.
    async fn handle_stanza(
        &mut self,
        stanza: Stanza,
        results: &mpsc::Sender<Verified>,
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
                self.check_stanza(&stanza)?;
                self.ctx
                    .router
                    .metrics
                    .s2s_in
                    .count(stanza.kind(), stanza.raw().len());
                self.ctx.router.route(stanza).await;
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
        let handshake = tokio::time::timeout_at(
            self.negotiation_deadline,
            self.ctx.tls.accept(io, hint.as_deref(), false),
        )
        .await;
        let handshakes = &self.ctx.router.metrics.tls_handshakes;
        match handshake {
            Ok(Ok((io, info))) => {
                handshakes.with_label_values(&["inbound", "ok"]).inc();
                self.conn.restart_on(io);
                self.security.tls = Some(info);
                // RFC 6120 §4.7.3: a new stream id for the new stream.
                self.stream_id = new_stream_id();
                Ok(Flow::Restart)
            }
            Ok(Err(e)) => {
                handshakes.with_label_values(&["inbound", "failed"]).inc();
                tracing::debug!(peer = %self.conn.peer, "STARTTLS: {e}");
                Err(None)
            }
            Err(_) => {
                handshakes.with_label_values(&["inbound", "failed"]).inc();
                tracing::debug!(peer = %self.conn.peer, "STARTTLS: no handshake in time");
                Err(None)
            }
        }
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
        let metrics = &self.ctx.router.metrics;
        if let Some(condition) = failure {
            metrics
                .s2s_auth
                .with_label_values(&["inbound", "external", "failure"])
                .inc();
            tracing::info!(peer = %self.conn.peer, remote = ?self.remote, "SASL EXTERNAL refused: {condition}");
            self.external_failures += 1;
            self.conn.send(
                format!(
                    "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{condition}/></failure>"
                )
                .as_bytes(),
            );
            self.conn.flush().await.map_err(|_| None)?;
            if self.external_failures >= MAX_SASL_FAILURES {
                return Err(Some(refuse(
                    StreamErrorCondition::PolicyViolation,
                    "too many failed authentication attempts",
                )));
            }
            return Ok(Flow::Continue);
        }
        // Offered only with a valid certificate for the stream's from, so both are known.
        let (Some(local), Some(remote)) = (self.local.clone(), self.remote.clone()) else {
            return Err(None);
        };
        metrics
            .s2s_auth
            .with_label_values(&["inbound", "external", "success"])
            .inc();
        self.conn
            .send(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        self.conn.flush().await.map_err(|_| None)?;
        self.authenticate(local, remote, "SASL EXTERNAL");
        self.external_done = true;
        self.conn.restart();
        self.stream_id = new_stream_id();
        Ok(Flow::Restart)
    }

    /// Records an authenticated pair and raises the limits on the first one.
    fn authenticate(&mut self, local: String, remote: String, method: &str) {
        if self.authenticated.is_empty() {
            self.conn.set_limits(self.ctx.settings.stanza_limits());
        }
        tracing::info!(peer = %self.conn.peer, %local, %remote, "inbound s2s authenticated by {method}: {}", self.security);
        if !self
            .authenticated
            .iter()
            .any(|(l, r)| *l == local && *r == remote)
        {
            self.authenticated.push((local, remote));
        }
    }

    /// Step 4's addressing rules.
    fn check_stanza(&self, stanza: &Stanza) -> Result<(), Option<Refusal>> {
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
        Ok(())
    }

    /// `<db:result>` from an initiating server: start verifying its key, or accept it at once
    /// when the TLS certificate already proves the sender domain (XEP-0344 §2.4).
    fn db_result(
        &mut self,
        stanza: &Stanza,
        results: &mpsc::Sender<Verified>,
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
        if let Err(refused) = self.ctx.router.policy.check(&originating) {
            tracing::info!(peer = %self.conn.peer, "{refused}");
            self.send_db_error("result", to, from, &StanzaErrorCondition::PolicyViolation);
            return Ok(None);
        }
        if self.ctx.router.is_local(&originating) {
            self.send_db_error("result", to, from, &StanzaErrorCondition::NotAcceptable);
            return Ok(None);
        }
        let tls = self.security.tls.is_some();
        let policy = self.ctx.security.peer(&originating);
        if !policy.allows_dialback(tls) {
            tracing::info!(peer = %self.conn.peer, remote = %originating, tls, "dialback refused by policy for this peer");
            self.send_db_error("result", to, from, &StanzaErrorCondition::PolicyViolation);
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
        if self.pending >= self.ctx.settings.max_pending_verifications {
            self.send_db_error(
                "result",
                to,
                from,
                &StanzaErrorCondition::ResourceConstraint,
            );
            return Ok(None);
        }
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
            let _ = results.send((receiving, originating, outcome)).await;
        });
        Ok(None)
    }

    /// A verification finished: tell the initiating server.
    async fn verified(
        &mut self,
        (receiving, originating, outcome): Verified,
    ) -> Result<(), Option<Refusal>> {
        let metrics = &self.ctx.router.metrics;
        let result = match outcome {
            Ok(Verdict::Valid) => {
                metrics
                    .dialback
                    .with_label_values(&["result", "valid"])
                    .inc();
                metrics
                    .s2s_auth
                    .with_label_values(&["inbound", "dialback", "success"])
                    .inc();
                self.authenticate(receiving.clone(), originating.clone(), "dialback");
                "valid"
            }
            Ok(Verdict::Invalid) => {
                metrics
                    .dialback
                    .with_label_values(&["result", "invalid"])
                    .inc();
                metrics
                    .s2s_auth
                    .with_label_values(&["inbound", "dialback", "failure"])
                    .inc();
                tracing::warn!(peer = %self.conn.peer, local = %receiving, remote = %originating, "dialback key refused by the authoritative server: spoofing attempt?");
                "invalid"
            }
            Err(e) => {
                metrics
                    .dialback
                    .with_label_values(&["result", "error"])
                    .inc();
                tracing::info!(peer = %self.conn.peer, remote = %originating, "dialback verification failed: {e}");
                self.send_db_error("result", &receiving, &originating, &e.condition());
                return self.conn.flush().await.map_err(|_| None);
            }
        };
        self.conn.send(
            format!(
                "<db:result from='{}' to='{}' type='{result}'/>",
                escape_attr(&receiving),
                escape_attr(&originating)
            )
            .as_bytes(),
        );
        self.conn.flush().await.map_err(|_| None)?;
        if result == "invalid" {
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
        self.send_db_error_id(element, from, to, None, condition)
    }

    /// A dialback error (XEP-0220 §2.4): `from` is the domain the request was addressed to.
    fn send_db_error_id(
        &mut self,
        element: &str,
        from: &str,
        to: &str,
        id: Option<&str>,
        condition: &StanzaErrorCondition,
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
        write_stanza_error(&mut out, *condition, None);
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
