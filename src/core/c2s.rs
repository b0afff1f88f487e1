//! Client-to-server streams (RFC 6120), from accept to close.
//!
//! Negotiation, each step waiting for what its name says (`negotiate`):
//! 1. `ExpectTls` (port 5223 only): TLS from the first byte (XEP-0368).
//! 2. `ExpectStreamHeader`: a `jabber:client` stream, `version='1.0'`, `to` one of our domains
//!    or aliases (else `invalid-namespace`, `unsupported-version`, `host-unknown`); we answer
//!    with our header and the features of the step we are at.
//! 3. `ExpectStartTls` (port 5222): `<starttls><required/></starttls>` is the only feature;
//!    `<auth/>` gets `<failure><encryption-required/></failure>`, anything else ends the
//!    stream with `<policy-violation/>`. After `<proceed/>` the TLS handshake runs, bytes read
//!    before it are discarded (STARTTLS command injection), and the stream restarts.
//! 4. `ExpectAuth`: SASL ([`super::sasl`]): SCRAM-SHA-256, SCRAM-SHA-1, and PLAIN only when
//!    `allow_plain`. A bad attempt gets `<failure/>` and another try, up to
//!    [`MAX_AUTH_FAILURES`], then `<policy-violation/>`. Google's JID domain discovery: an
//!    `<auth/>` with `client-uses-full-bind-result='true'` is bound under the account's
//!    canonical domain, not the alias it signed in with. Success restarts the stream.
//! 5. `ExpectBind`: `<bind/>` (RFC 6120 §7) with the client's resource or one we make up;
//!    the session is registered (a session on the same resource is replaced) and the result
//!    carries the full JID. `<session/>` (RFC 3921) is offered as optional for old clients.
//!
//! The whole negotiation is bounded by `negotiation_timeout` (`<connection-timeout/>`).
//! Established, the reader runs here and a writer task drains the session's bounded queue;
//! every stanza's `from` is set to the session's full JID before anything else looks at it.
//! When the session ends the writer hands back what it never took from the queue, and
//! `Core::session_ended` re-routes it, so an ending session loses no stanza the server
//! still holds.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use tokio::sync::{mpsc, oneshot};

use super::sasl::{ClientFirst, Mechanism, Plain, SaslError, ScramHash, ScramServer};
use super::{storage, Core, Queued, SessionHandle};
use crate::connection::{BoxTransport, Connection, ReadError, Writer};
use crate::dialback::new_stream_id;
use crate::jid::Jid;
use crate::xml::error::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::framer::{Event, Limits};
use crate::xml::stanza::{Kind, Stanza};
use crate::xml::stream::OpenStream;
use crate::xml::{ns, Element};

/// Resource binding (RFC 6120 §7).
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// Failed SASL attempts allowed on one stream (RFC 6120 §6.4.5 asks for 2 to 5).
pub const MAX_AUTH_FAILURES: u32 = 3;
/// Largest batch written to a client before a flush.
const BATCH_BYTES: usize = 64 * 1024;

/// Why a client stream ended before it was established. All are fatal for the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum C2sError {
    /// We end the stream with this stream error.
    #[error("refused with <{condition}/>: {text}")]
    Refused {
        condition: StreamErrorCondition,
        text: String,
    },
    /// Reading failed (bad XML gets its stream error).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The TLS handshake failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

fn refused(condition: StreamErrorCondition, text: impl Into<String>) -> C2sError {
    C2sError::Refused {
        condition,
        text: text.into(),
    }
}

/// Who signed in.
struct Authenticated {
    /// The prepared localpart.
    local: String,
    /// The domain the account lives in.
    canonical: String,
    /// The domain the client is bound under: the canonical one, or the alias it used when it
    /// did not ask for the full bind result.
    presented: String,
}

/// What negotiation ends with: a bound JID and the bind iq to answer.
struct Bound {
    jid: Jid,
    account: String,
    bind_request: Element,
}

/// Serves one client connection.
pub async fn handle(io: BoxTransport, peer: SocketAddr, core: Arc<Core>, direct_tls: bool) {
    let timeout = core.config.negotiation_timeout;
    let limits = Limits {
        max_stanza_bytes: core.config.max_negotiation_stanza_bytes,
        ..Limits::default()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let io = if direct_tls {
        match tokio::time::timeout_at(deadline, core.tls.accept(io, None, false)).await {
            Ok(Ok((io, _))) => io,
            Ok(Err(e)) => return tracing::debug!(%peer, "c2s TLS handshake failed: {e}"),
            Err(_) => return tracing::debug!(%peer, "c2s TLS handshake timed out"),
        }
    } else {
        io
    };
    let mut conn = Connection::new(io, peer, limits, ns::CLIENT);
    let result = tokio::time::timeout_at(deadline, negotiate(&mut conn, &core, direct_tls)).await;
    let bound = match result {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "c2s stream refused: {e}");
            let (cond, text) = match &e {
                C2sError::Refused { condition, text } => (condition.clone(), Some(text.clone())),
                C2sError::Read(ReadError::Xml(x)) => (StreamErrorCondition::from(x), None),
                C2sError::Read(_) | C2sError::Tls(_) => return,
            };
            conn.fail(&cond, text.as_deref()).await;
            return;
        }
        Err(_) => {
            conn.fail(&StreamErrorCondition::ConnectionTimeout, None)
                .await;
            return;
        }
    };
    established(conn, bound, core).await;
}

/// Steps 2–5 of the module docs.
async fn negotiate(
    conn: &mut Connection,
    core: &Core,
    mut secure: bool,
) -> Result<Bound, C2sError> {
    let mut auth: Option<Authenticated> = None;
    loop {
        let domain = expect_stream_header(conn, core).await?;
        let id = new_stream_id();
        conn.open(&OpenStream {
            content_ns: ns::CLIENT,
            from: Some(&domain),
            id: Some(&id),
            version: true,
            ..Default::default()
        });
        if !secure {
            conn.send(b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>");
            conn.flush().await.map_err(ReadError::Io)?;
            expect_starttls(conn).await?;
            let io = conn.take_transport();
            let (io, _) = core.tls.accept(io, Some(&domain), false).await?;
            conn.restart_on(io);
            secure = true;
            continue;
        }
        match &auth {
            None => {
                let mut features = String::from(
                    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
                );
                for m in offered(core) {
                    features.push_str(&format!("<mechanism>{}</mechanism>", m.name()));
                }
                features.push_str("</mechanisms></stream:features>");
                conn.send(features.as_bytes());
                conn.flush().await.map_err(ReadError::Io)?;
                auth = Some(expect_auth(conn, core, &domain).await?);
                // RFC 6120 §6.4.6: a fresh stream; nothing the client sent before it counts.
                conn.restart();
            }
            Some(a) => {
                conn.send(b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>");
                conn.flush().await.map_err(ReadError::Io)?;
                return expect_bind(conn, a).await;
            }
        }
    }
}

fn offered(core: &Core) -> Vec<Mechanism> {
    let mut m = vec![Mechanism::ScramSha256, Mechanism::ScramSha1];
    if core.config.allow_plain {
        m.push(Mechanism::Plain);
    }
    m
}

/// Step 2: returns the served domain the client asked for.
async fn expect_stream_header(conn: &mut Connection, core: &Core) -> Result<String, C2sError> {
    let header = match conn.next_event().await? {
        Event::StreamOpen(h) => h,
        _ => {
            return Err(refused(
                StreamErrorCondition::BadFormat,
                "expected a stream header",
            ))
        }
    };
    if header.default_ns.as_deref() != Some(ns::CLIENT) {
        return Err(refused(
            StreamErrorCondition::InvalidNamespace,
            "clients use the jabber:client namespace",
        ));
    }
    if let Some(why) = header.unsupported_version(false) {
        return Err(refused(StreamErrorCondition::UnsupportedVersion, why));
    }
    let Some(to) = header.to.as_deref() else {
        return Err(refused(
            StreamErrorCondition::HostUnknown,
            "the stream header needs a 'to' naming our domain",
        ));
    };
    match crate::jid::normalize_domain(to) {
        Ok(d) if core.domains.is_local(&d) => Ok(d.into_owned()),
        _ => Err(refused(
            StreamErrorCondition::HostUnknown,
            format!("{to} is not served here"),
        )),
    }
}

/// Step 3.
async fn expect_starttls(conn: &mut Connection) -> Result<(), C2sError> {
    loop {
        let s = next_stanza(conn).await?;
        match (s.name(), s.ns()) {
            ("starttls", ns::TLS) => {
                conn.send(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
                conn.flush().await.map_err(ReadError::Io)?;
                return Ok(());
            }
            ("auth", ns::SASL) => {
                // RFC 6120 §6.4.5 `encryption-required`: no credentials in the clear, PLAIN
                // least of all.
                send_failure(conn, &SaslError::EncryptionRequired).await?;
            }
            _ => {
                return Err(refused(
                    StreamErrorCondition::PolicyViolation,
                    "STARTTLS is required first",
                ))
            }
        }
    }
}

async fn next_stanza(conn: &mut Connection) -> Result<Stanza, C2sError> {
    match conn.next_event().await? {
        Event::Stanza(s) => Ok(s),
        Event::StreamClose => Err(ReadError::Eof.into()),
        Event::StreamOpen(_) => Err(refused(
            StreamErrorCondition::BadFormat,
            "a second stream header",
        )),
    }
}

async fn send_failure(conn: &mut Connection, e: &SaslError) -> Result<(), C2sError> {
    conn.send(
        format!(
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{}/></failure>",
            e.condition()
        )
        .as_bytes(),
    );
    conn.flush().await.map_err(ReadError::Io)?;
    Ok(())
}

/// Decodes a SASL element's base64 text (`=` is an empty response, RFC 6120 §6.4.2).
fn sasl_payload(el: &Element) -> Result<Vec<u8>, SaslError> {
    let text = el.text();
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Ok(Vec::new());
    }
    B64.decode(text)
        .map_err(|_| SaslError::Malformed("not base64"))
}

/// Step 4.
async fn expect_auth(
    conn: &mut Connection,
    core: &Core,
    stream_domain: &str,
) -> Result<Authenticated, C2sError> {
    let mut failures = 0;
    loop {
        let s = next_stanza(conn).await?;
        if (s.name(), s.ns()) != ("auth", ns::SASL) {
            return Err(refused(
                StreamErrorCondition::NotAuthorized,
                "authenticate first",
            ));
        }
        let el = s.element().map_err(ReadError::Xml)?;
        // Google's JID domain discovery: the attribute may carry a prefix bound to
        // http://www.google.com/talk/protocol/auth.
        let full_bind = el.attrs.iter().any(|(k, v)| {
            (k == "client-uses-full-bind-result" || k.ends_with(":client-uses-full-bind-result"))
                && v == "true"
        });
        let result = match el.attr("mechanism").and_then(Mechanism::from_name) {
            Some(Mechanism::Plain) if core.config.allow_plain => {
                plain(core, &el, stream_domain, full_bind).await
            }
            Some(Mechanism::ScramSha256) => {
                scram(conn, core, &el, ScramHash::Sha256, stream_domain, full_bind).await?
            }
            Some(Mechanism::ScramSha1) => {
                scram(conn, core, &el, ScramHash::Sha1, stream_domain, full_bind).await?
            }
            _ => Err(SaslError::InvalidMechanism),
        };
        match result {
            Ok((auth, additional)) => {
                if additional.is_empty() {
                    conn.send(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
                } else {
                    conn.send(
                        format!(
                            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</success>",
                            B64.encode(additional)
                        )
                        .as_bytes(),
                    );
                }
                conn.flush().await.map_err(ReadError::Io)?;
                tracing::info!(peer = %conn.peer, user = %format!("{}@{}", auth.local, auth.presented), "c2s signed in");
                return Ok(auth);
            }
            Err(e) => {
                send_failure(conn, &e).await?;
                if e != SaslError::Aborted && e != SaslError::InvalidMechanism {
                    failures += 1;
                }
                if failures >= MAX_AUTH_FAILURES {
                    return Err(refused(
                        StreamErrorCondition::PolicyViolation,
                        "too many failed authentication attempts",
                    ));
                }
            }
        }
    }
}

/// The account a SASL username names: `user` (in the stream's domain) or `user@domain` (one
/// of ours); `None` when it cannot be an account here.
fn resolve_user(
    core: &Core,
    username: &str,
    stream_domain: &str,
    full_bind: bool,
) -> Option<Authenticated> {
    let (node, domain) = match username.rsplit_once('@') {
        Some((n, d)) => (n, crate::jid::normalize_domain(d).ok()?.into_owned()),
        None => (username, stream_domain.to_owned()),
    };
    let canonical = core.domains.canonical(&domain)?.to_owned();
    let jid = Jid::parse(&format!("{node}@{canonical}")).ok()?;
    let presented = if full_bind { canonical.clone() } else { domain };
    Some(Authenticated {
        local: jid.node()?.to_owned(),
        canonical,
        presented,
    })
}

/// An authzid is allowed only when it names the account itself.
fn check_authzid(authzid: Option<&str>, a: &Authenticated) -> Result<(), SaslError> {
    let Some(z) = authzid else { return Ok(()) };
    let ok = Jid::parse(z).is_ok_and(|j| {
        j.is_bare()
            && j.node() == Some(a.local.as_str())
            && (j.domain() == a.canonical || j.domain() == a.presented)
    });
    if ok {
        Ok(())
    } else {
        Err(SaslError::InvalidAuthzid)
    }
}

async fn lookup(
    core: &Core,
    a: &Authenticated,
) -> Result<Option<super::sasl::Credentials>, SaslError> {
    let (l, d) = (a.local.clone(), a.canonical.clone());
    core.storage
        .call(move |c| storage::credentials(c, &l, &d))
        .await
        .map_err(|e| {
            tracing::warn!("credential lookup failed: {e}");
            SaslError::TemporaryFailure
        })
}

type AuthResult = Result<(Authenticated, Vec<u8>), SaslError>;

async fn plain(core: &Core, el: &Element, stream_domain: &str, full_bind: bool) -> AuthResult {
    let p = Plain::parse(&sasl_payload(el)?)?;
    let a = resolve_user(core, &p.username, stream_domain, full_bind)
        .ok_or(SaslError::NotAuthorized)?;
    let creds = lookup(core, &a).await?.ok_or(SaslError::NotAuthorized)?;
    // PBKDF2 is deliberately slow: off the runtime's workers.
    let ok = tokio::task::spawn_blocking(move || creds.verify_password(&p.password))
        .await
        .unwrap_or(false);
    if !ok {
        return Err(SaslError::NotAuthorized);
    }
    check_authzid(p.authzid.as_deref(), &a)?;
    Ok((a, Vec::new()))
}

/// A SCRAM exchange; the outer `Err` is a stream failure, the inner one a SASL failure.
async fn scram(
    conn: &mut Connection,
    core: &Core,
    el: &Element,
    hash: ScramHash,
    stream_domain: &str,
    full_bind: bool,
) -> Result<AuthResult, C2sError> {
    let first = match sasl_payload(el).and_then(|p| ClientFirst::parse(&p)) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let account = resolve_user(core, &first.username, stream_domain, full_bind);
    let creds = match &account {
        Some(a) => match lookup(core, a).await {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        },
        None => None,
    };
    let (server, server_first) = ScramServer::new(
        hash,
        &first,
        creds.as_ref(),
        core.config.scram_iterations,
        &ScramServer::random_nonce(),
    );
    conn.send(
        format!(
            "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</challenge>",
            B64.encode(server_first)
        )
        .as_bytes(),
    );
    conn.flush().await.map_err(ReadError::Io)?;
    let s = next_stanza(conn).await?;
    let response = match (s.name(), s.ns()) {
        ("response", ns::SASL) => s.element().map_err(ReadError::Xml)?,
        ("abort", ns::SASL) => return Ok(Err(SaslError::Aborted)),
        _ => {
            return Err(refused(
                StreamErrorCondition::NotAuthorized,
                "expected a SASL response",
            ))
        }
    };
    let result = sasl_payload(&response).and_then(|p| server.finish(&p));
    Ok(match (result, account) {
        (Ok(v), Some(a)) => check_authzid(first.authzid.as_deref(), &a).map(|_| (a, v)),
        (Ok(_), None) => Err(SaslError::NotAuthorized),
        (Err(e), _) => Err(e),
    })
}

/// Step 5: waits for `<bind/>`.
async fn expect_bind(conn: &mut Connection, a: &Authenticated) -> Result<Bound, C2sError> {
    loop {
        let s = next_stanza(conn).await?;
        let el = s.element().map_err(ReadError::Xml)?;
        let bind = (s.kind() == Kind::Iq && el.attr("type") == Some("set"))
            .then(|| el.child("bind", NS_BIND))
            .flatten();
        let Some(bind) = bind else {
            return Err(refused(
                StreamErrorCondition::NotAuthorized,
                "bind a resource first",
            ));
        };
        let resource = bind
            .child("resource", NS_BIND)
            .map(|r| r.text().trim().to_owned())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| format!("fedgate-{:08x}", rand::random::<u32>()));
        match Jid::parse(&format!("{}@{}/{}", a.local, a.presented, resource)) {
            Ok(jid) => {
                return Ok(Bound {
                    jid,
                    account: format!("{}@{}", a.local, a.canonical),
                    bind_request: el,
                })
            }
            Err(_) => {
                // RFC 6120 §7.7.2.1: a resource we cannot accept is `bad-request`.
                if let Some(b) =
                    s.bounce(StanzaErrorCondition::BadRequest, Some("invalid resource"))
                {
                    conn.send(b.raw());
                    conn.flush().await.map_err(ReadError::Io)?;
                }
            }
        }
    }
}

/// How the reader tells the writer to end.
enum End {
    /// The client closed its stream: close ours.
    Closed,
    /// End with this stream error.
    Fail(StreamErrorCondition, Option<String>),
    /// The connection is gone: nothing to write.
    Gone,
}

/// The established session: registered, the bind answered, stanzas both ways.
async fn established(mut conn: Connection, bound: Bound, core: Arc<Core>) {
    let peer = conn.peer;
    conn.set_limits(Limits {
        max_stanza_bytes: core.config.max_stanza_bytes,
        ..Limits::default()
    });
    let (tx, rx) = mpsc::channel(core.config.session_queue);
    let (handle, kick) = core.register(bound.jid.clone(), bound.account, tx);
    // Like RFC 6120 §7.6.1's example: no 'from' or 'to' before the client knows its address.
    let mut result = Element::new("iq", ns::CLIENT).with_attr("type", "result");
    if let Some(id) = bound.bind_request.attr("id") {
        result.set_attr("id", id);
    }
    let result = result.with_child(
        Element::new("bind", NS_BIND)
            .with_child(Element::new("jid", NS_BIND).with_text(bound.jid.to_string())),
    );
    conn.send(&result.to_bytes());
    if conn.flush().await.is_err() {
        // Anything queued for it meanwhile is re-routed.
        core.session_ended(&handle, Some(rx)).await;
        return;
    }
    tracing::debug!(%peer, jid = %bound.jid, "c2s session bound");
    let (mut reader, writer) = conn.split();
    let (end_tx, end_rx) = oneshot::channel();
    let (queue_tx, queue_rx) = oneshot::channel();
    let writer_task = tokio::spawn(write_loop(writer, rx, end_rx, queue_tx));
    let end = loop {
        let event = tokio::select! {
            _ = kick.cancelled() => {
                let (cond, text) = handle
                    .kicked_with
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or((StreamErrorCondition::Reset, String::new()));
                break End::Fail(cond, Some(text));
            }
            _ = core.shutdown.cancelled() => break End::Fail(StreamErrorCondition::SystemShutdown, None),
            e = reader.next_event() => e,
        };
        match event {
            Ok(Event::Stanza(s)) => match s.kind() {
                Kind::Message | Kind::Presence | Kind::Iq => core.client_stanza(&handle, s).await,
                _ => {
                    break End::Fail(
                        StreamErrorCondition::UnsupportedStanzaType,
                        Some(format!("<{}/> is not supported here", s.name())),
                    )
                }
            },
            Ok(Event::StreamClose) => break End::Closed,
            Ok(Event::StreamOpen(_)) => {
                break End::Fail(
                    StreamErrorCondition::BadFormat,
                    Some("a second stream header".into()),
                )
            }
            Err(ReadError::Xml(x)) => break End::Fail(StreamErrorCondition::from(&x), None),
            Err(_) => break End::Gone,
        }
    };
    // Out of the table first, so that nothing new is meant for this session, then the writer
    // stops taking from the queue and hands back what it never took, to be re-routed.
    core.unregister(&handle);
    let _ = end_tx.send(end);
    let queue = queue_rx.await.ok();
    core.session_ended(&handle, queue).await;
    let _ = writer_task.await;
    tracing::debug!(%peer, jid = %bound.jid, "c2s session ended");
}

/// Drains the session's queue to the client in batches until the session ends, then hands the
/// queue back through `queue_tx`: stanzas it never took are not written to a stream that is
/// ending (a client gone, too slow, replaced, or closing) but re-routed by
/// [`Core::session_ended`]. A batch already being written is finished, bounded in time by the
/// stream's close; without XEP-0198 on c2s, bytes handed to the socket are the client's.
async fn write_loop(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Queued>,
    mut end_rx: oneshot::Receiver<End>,
    queue_tx: oneshot::Sender<mpsc::Receiver<Queued>>,
) {
    let end = loop {
        let next = tokio::select! {
            end = &mut end_rx => break end.unwrap_or(End::Gone),
            next = rx.recv() => next,
        };
        let Some(first) = next else {
            break (&mut end_rx).await.unwrap_or(End::Gone);
        };
        writer.send(&first.bytes);
        while writer.pending() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(q) => writer.send(&q.bytes),
                Err(_) => break,
            }
        }
        // A client that does not read keeps this flush waiting; the session's end must not
        // wait for it. `Writer::flush` is cancel-safe: what it did not write stays queued.
        tokio::select! {
            written = writer.flush() => {
                if written.is_err() {
                    // The reader sees the connection go too (or the queue fills).
                    let _ = (&mut end_rx).await;
                    let _ = queue_tx.send(rx);
                    return;
                }
            }
            end = &mut end_rx => break end.unwrap_or(End::Gone),
        }
    };
    let _ = queue_tx.send(rx);
    match end {
        End::Closed => writer.close().await,
        End::Fail(cond, text) => writer.fail(&cond, text.as_deref()).await,
        End::Gone => {}
    }
}

impl Core {
    /// A stanza from a signed-in client: stamped with the session's address, then handled.
    pub(crate) async fn client_stanza(&self, session: &Arc<SessionHandle>, stanza: Stanza) {
        let Ok(mut el) = stanza.element() else { return };
        el.set_attr("from", session.jid.to_string());
        if let Some(to) = el.attr("to") {
            if Jid::parse(to).is_err() {
                if let Some(e) =
                    super::error_reply(&el, StanzaErrorCondition::JidMalformed, "bad 'to' address")
                {
                    session.send_element(&e);
                }
                return;
            }
        }
        match el.name.as_str() {
            "presence" => self.presence_outbound(session, el).await,
            "message" => {
                if el.attr("to").is_none() {
                    el.set_attr("to", session.jid.bare().to_string());
                }
                let archived = self.archive_outgoing(session, &el).await;
                self.carbons_sent(session, &el, archived);
                self.route(el).await
            }
            _ => self.client_iq(session, el).await,
        }
    }
}
