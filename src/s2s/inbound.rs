//! Inbound s2s: a remote server connects to us (RFC 6120 §4, XEP-0220 §2.2).
//!
//! Steps:
//! 1. read the peer's header: `jabber:server` (else `invalid-namespace`), version 1.x (else
//!    `unsupported-version`), a `to` we serve (missing → `improper-addressing`, unknown →
//!    `host-unknown`), a valid `from` if any (else `invalid-from`);
//! 2. answer with our header (an unpredictable stream id) and features offering dialback with
//!    dialback errors;
//! 3. handle dialback, several domain pairs per stream:
//!    - `<db:result>` (we are the receiving server): check the pair, then [verify](super::verify)
//!      the key with the sender domain's authoritative server and answer
//!      `type='valid'|'invalid'|'error'`; `invalid` ends the stream (XEP-0220 §2.2.1);
//!    - `<db:verify>` (we are the authoritative server): recompute the XEP-0185 key with our
//!      secret and answer `valid` or `invalid` (constant-time comparison);
//!    - a typed `db:result`/`db:verify` on an inbound stream answers nothing we asked: it is
//!      unsolicited and ends the stream (XEP-0220 §3.1);
//! 4. accept stanzas only for an authenticated (local, remote) pair: `to` and `from` present
//!    and valid (else `improper-addressing`), `to` a domain we serve (else `host-unknown`), `from`
//!    a domain proved on this stream for that `to` (else `invalid-from`); no stanza before any
//!    pair is authenticated (`not-authorized`).
//!
//! Until a pair is authenticated, `negotiation_timeout` bounds the stream and stanzas are
//! limited to `max_negotiation_stanza_bytes`; after, `idle_timeout` and `max_stanza_bytes`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::verify::{self, Verdict, VerifyError};
use super::{PeerStreamError, S2sContext};
use crate::connection::{Connection, ReadError};
use crate::dialback::new_stream_id;
use crate::jid;
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

/// Serves one inbound s2s connection from accept to close.
pub async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<S2sContext>,
    _permit: OwnedSemaphorePermit,
) {
    let conn = Connection::new(
        Box::new(tcp),
        peer,
        ctx.settings.negotiation_limits(),
        ns::SERVER,
    );
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
        let deadline = tokio::time::sleep(settings.negotiation_timeout);
        tokio::pin!(deadline);

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

        let (results_tx, mut results_rx) =
            mpsc::channel::<Verified>(settings.max_pending_verifications);
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
                    self.handle_stanza(stanza, &results_tx).await?;
                    if authenticated {
                        deadline
                            .as_mut()
                            .reset(Instant::now() + settings.idle_timeout);
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

    /// Steps 1 and 2.
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
        if version {
            self.conn.send(
                b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
            );
        }
        Ok(())
    }

    /// Step 3 and 4 for one element.
    async fn handle_stanza(
        &mut self,
        stanza: Stanza,
        results: &mpsc::Sender<Verified>,
    ) -> Result<(), Option<Refusal>> {
        match stanza.kind() {
            Kind::DbResult if stanza.type_().is_none() => self.db_result(&stanza, results)?,
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
        self.conn.flush().await.map_err(|_| None)
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

    /// `<db:result>` from an initiating server: start verifying its key.
    fn db_result(
        &mut self,
        stanza: &Stanza,
        results: &mpsc::Sender<Verified>,
    ) -> Result<(), Option<Refusal>> {
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
                return Ok(());
            }
        };
        if let Err(refused) = self.ctx.router.policy.check(&originating) {
            tracing::info!(peer = %self.conn.peer, "{refused}");
            self.send_db_error("result", to, from, &StanzaErrorCondition::PolicyViolation);
            return Ok(());
        }
        if self.ctx.router.is_local(&originating) {
            self.send_db_error("result", to, from, &StanzaErrorCondition::NotAcceptable);
            return Ok(());
        }
        if self.pending >= self.ctx.settings.max_pending_verifications {
            self.send_db_error(
                "result",
                to,
                from,
                &StanzaErrorCondition::ResourceConstraint,
            );
            return Ok(());
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
        Ok(())
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
                if self.authenticated.is_empty() {
                    self.conn.set_limits(self.ctx.settings.stanza_limits());
                }
                tracing::info!(peer = %self.conn.peer, local = %receiving, remote = %originating, "inbound s2s authenticated by dialback");
                if !self
                    .authenticated
                    .iter()
                    .any(|(l, r)| *l == receiving && *r == originating)
                {
                    self.authenticated
                        .push((receiving.clone(), originating.clone()));
                }
                "valid"
            }
            Ok(Verdict::Invalid) => {
                metrics
                    .dialback
                    .with_label_values(&["result", "invalid"])
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

fn read_refusal(e: ReadError) -> Option<Refusal> {
    match e {
        ReadError::Xml(x) => Some(refuse(StreamErrorCondition::from(&x), x.to_string())),
        _ => None,
    }
}
