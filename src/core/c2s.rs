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
//! 4. `ExpectAuth`: SASL ([`super::sasl`]): SCRAM-SHA-256-PLUS and SCRAM-SHA-1-PLUS when the
//!    TLS connection has a channel binding (`tls-exporter` on TLS 1.3, `tls-server-end-point`
//!    for most certificates; listed with XEP-0440), SCRAM-SHA-256, SCRAM-SHA-1, and PLAIN
//!    unless `allow_plain = false`. A bad attempt gets `<failure/>` (logged at INFO with the
//!    username and the condition, never the password) and another try, up to
//!    [`MAX_AUTH_FAILURES`], then `<policy-violation/>`. A client that leaves here is logged
//!    at INFO with what it was offered. With `registration` open or invite, XEP-0077
//!    registration iqs are answered here too ([`super::register`]). Google's JID domain discovery: an
//!    `<auth/>` with `client-uses-full-bind-result='true'` is bound under the account's
//!    canonical domain, not the alias it signed in with. Success restarts the stream.
//! 5. `ExpectBind`: `<bind/>` (RFC 6120 §7) with the client's resource or one we make up;
//!    the session is registered (a session on the same resource is replaced) and the result
//!    carries the full JID. `<session/>` (RFC 3921) is offered as optional for old clients,
//!    and XEP-0237 roster versioning (`<ver/>`) is announced with them.
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
use tokio_util::sync::CancellationToken;

use super::config::Registration;
use super::sasl::{binding_for, ClientFirst, Mechanism, Plain, SaslError, ScramServer};
use super::sm::{self, Request};
use super::{csi, storage, Core, Queued, SessionHandle};
use crate::connection::{BoxTransport, Connection, ReadError, Writer};
use crate::dialback::new_stream_id;
use crate::jid::Jid;
use crate::tls::ChannelBindings;
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
        /// The stream error condition sent to the client.
        condition: StreamErrorCondition,
        /// The `<text/>` sent with it, saying what was wrong.
        text: String,
    },
    /// Reading failed (bad XML gets its stream error).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The TLS handshake failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A stream management element broke XEP-0198 (its stream error has an
    /// application-specific condition).
    #[error(transparent)]
    Sm(#[from] sm::SmError),
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

/// How negotiation ended: a new session, or a detached one taken over (XEP-0198 §5).
enum Negotiated {
    Bound(Bound),
    Resumed {
        session: sm::Detached,
        previd: String,
    },
}

/// Serves one client connection.
pub async fn handle(io: BoxTransport, peer: SocketAddr, core: Arc<Core>, direct_tls: bool) {
    let timeout = core.config.negotiation_timeout;
    let limits = Limits {
        max_stanza_bytes: core.config.max_negotiation_stanza_bytes,
        ..Limits::default()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let (io, bindings) = if direct_tls {
        match tokio::time::timeout_at(deadline, core.tls.accept_client(io, None, false)).await {
            Ok(Ok((io, _, bindings))) => (io, bindings),
            Ok(Err(e)) => return tracing::debug!(%peer, "c2s TLS handshake failed: {e}"),
            Err(_) => return tracing::debug!(%peer, "c2s TLS handshake timed out"),
        }
    } else {
        (io, ChannelBindings::default())
    };
    let mut conn = Connection::new(io, peer, limits, ns::CLIENT);
    let result =
        tokio::time::timeout_at(deadline, negotiate(&mut conn, &core, direct_tls, bindings)).await;
    let negotiated = match result {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "c2s stream refused: {e}");
            let (cond, text) = match &e {
                C2sError::Refused { condition, text } => (condition.clone(), Some(text.clone())),
                C2sError::Read(ReadError::Xml(x)) => (StreamErrorCondition::from(x), None),
                C2sError::Sm(e) => {
                    conn.send(&sm::stream_error(e));
                    conn.close().await;
                    return;
                }
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
    established(conn, negotiated, core).await;
}

/// Steps 2–5 of the module docs.
async fn negotiate(
    conn: &mut Connection,
    core: &Core,
    mut secure: bool,
    mut bindings: ChannelBindings,
) -> Result<Negotiated, C2sError> {
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
            let (io, _, b) = core.tls.accept_client(io, Some(&domain), false).await?;
            bindings = b;
            conn.restart_on(io);
            secure = true;
            continue;
        }
        match &auth {
            None => {
                let mut features = String::from(
                    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
                );
                for m in offered(core, &bindings) {
                    features.push_str(&format!("<mechanism>{}</mechanism>", m.name()));
                }
                features.push_str("</mechanisms>");
                // XEP-0440: which channel bindings the -PLUS mechanisms can use here.
                if !bindings.is_empty() {
                    features.push_str("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>");
                    for t in bindings.types() {
                        features.push_str(&format!("<channel-binding type='{}'/>", t.name()));
                    }
                    features.push_str("</sasl-channel-binding>");
                }
                if core.config.registration != Registration::Closed {
                    features.push_str(super::register::REGISTER_FEATURE);
                }
                features.push_str("</stream:features>");
                conn.send(features.as_bytes());
                conn.flush().await.map_err(ReadError::Io)?;
                auth = Some(expect_auth(conn, core, &domain, &bindings).await?);
                // RFC 6120 §6.4.6: a fresh stream; nothing the client sent before it counts.
                conn.restart();
            }
            Some(a) => {
                conn.send(b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session><sm xmlns='urn:xmpp:sm:3'/><csi xmlns='urn:xmpp:csi:0'/><ver xmlns='urn:xmpp:features:rosterver'/></stream:features>");
                conn.flush().await.map_err(ReadError::Io)?;
                return expect_bind(conn, core, a).await;
            }
        }
    }
}

/// The mechanisms offered on a TLS stream with these channel bindings, strongest first.
fn offered(core: &Core, bindings: &ChannelBindings) -> Vec<Mechanism> {
    let mut m = Vec::new();
    if !bindings.is_empty() {
        m.extend([Mechanism::ScramSha256Plus, Mechanism::ScramSha1Plus]);
    }
    m.extend([Mechanism::ScramSha256, Mechanism::ScramSha1]);
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

/// Step 4; a client that leaves here (it found no mechanism it can use, most often) is
/// logged with what it was offered.
async fn expect_auth(
    conn: &mut Connection,
    core: &Core,
    stream_domain: &str,
    bindings: &ChannelBindings,
) -> Result<Authenticated, C2sError> {
    let result = sasl_exchange(conn, core, stream_domain, bindings).await;
    if let Err(C2sError::Read(ReadError::Eof | ReadError::Io(_))) = &result {
        let offered: Vec<&str> = offered(core, bindings)
            .into_iter()
            .map(Mechanism::name)
            .collect();
        tracing::info!(peer = %conn.peer, "c2s client left before authenticating (offered {})", offered.join(", "));
    }
    result
}

/// The username a SASL `<auth/>` claims, for the log (PLAIN and SCRAM carry one).
fn claimed_user(el: &Element, mechanism: Option<Mechanism>) -> Option<String> {
    let data = sasl_payload(el).ok()?;
    match mechanism? {
        Mechanism::Plain => Plain::parse(&data).ok().map(|p| p.username),
        Mechanism::ScramSha256Plus
        | Mechanism::ScramSha1Plus
        | Mechanism::ScramSha256
        | Mechanism::ScramSha1 => ClientFirst::parse(&data).ok().map(|f| f.username),
    }
}

async fn sasl_exchange(
    conn: &mut Connection,
    core: &Core,
    stream_domain: &str,
    bindings: &ChannelBindings,
) -> Result<Authenticated, C2sError> {
    let mut failures = 0;
    let mut registering = super::register::Pending::default();
    loop {
        let s = next_stanza(conn).await?;
        if super::register::negotiation_iq(conn, core, stream_domain, &mut registering, &s).await? {
            continue;
        }
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
        let mechanism = el.attr("mechanism").and_then(Mechanism::from_name);
        let result = match mechanism {
            Some(Mechanism::Plain) if core.config.allow_plain => {
                plain(core, &el, stream_domain, full_bind).await
            }
            Some(m) if offered(core, bindings).contains(&m) && m.scram().is_some() => {
                let sasl = Scram {
                    mechanism: m,
                    bindings,
                    stream_domain,
                    full_bind,
                };
                scram(conn, core, &el, sasl).await?
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
                let user = claimed_user(&el, mechanism).unwrap_or_else(|| "-".into());
                tracing::info!(
                    peer = %conn.peer,
                    user = %user.escape_debug(),
                    mechanism = el.attr("mechanism").unwrap_or("-"),
                    "c2s sign-in failed: {}",
                    e.condition()
                );
                send_failure(conn, &e).await?;
                // Only a tried credential counts: an abort, a mechanism we do not offer, or a
                // request we could not read (an old client offering `tls-unique` channel
                // binding to our -PLUS, as poezio's slixmpp does before falling back to plain
                // SCRAM) guesses no password.
                if !matches!(
                    e,
                    SaslError::Aborted | SaslError::InvalidMechanism | SaslError::Malformed(_)
                ) {
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

/// What a SCRAM exchange depends on besides its messages.
struct Scram<'a> {
    mechanism: Mechanism,
    bindings: &'a ChannelBindings,
    stream_domain: &'a str,
    full_bind: bool,
}

/// A SCRAM exchange; the outer `Err` is a stream failure, the inner one a SASL failure.
async fn scram(
    conn: &mut Connection,
    core: &Core,
    el: &Element,
    sasl: Scram<'_>,
) -> Result<AuthResult, C2sError> {
    let Some((hash, plus)) = sasl.mechanism.scram() else {
        return Ok(Err(SaslError::InvalidMechanism));
    };
    let (stream_domain, full_bind) = (sasl.stream_domain, sasl.full_bind);
    let first = match sasl_payload(el).and_then(|p| ClientFirst::parse(&p)) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let offered_plus = !sasl.bindings.is_empty();
    let cbind = match binding_for(plus, first.flag, sasl.bindings, offered_plus) {
        Ok(c) => c,
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
        cbind,
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

/// Step 5: waits for `<bind/>`, or for `<resume/>` (XEP-0198 §5) instead.
async fn expect_bind(
    conn: &mut Connection,
    core: &Core,
    a: &Authenticated,
) -> Result<Negotiated, C2sError> {
    let account = format!("{}@{}", a.local, a.canonical);
    loop {
        let s = next_stanza(conn).await?;
        if s.ns() == sm::NS {
            match sm::parse(&s) {
                Ok(Request::Resume { previd, h }) => {
                    if let Some(session) = resume(conn, core, &account, &previd, h).await? {
                        return Ok(Negotiated::Resumed { session, previd });
                    }
                }
                // §3: stream management is enabled on a bound session.
                Ok(_) => {
                    conn.send(&sm::failed(StanzaErrorCondition::UnexpectedRequest, None));
                    conn.flush().await.map_err(ReadError::Io)?;
                }
                Err(e) => return Err(refused((&e).into(), e.to_string())),
            }
            continue;
        }
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
                return Ok(Negotiated::Bound(Bound {
                    jid,
                    account,
                    bind_request: el,
                }))
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

/// `<resume previd='…' h='…'/>`: the detached session, or `None` after `<failed/>` (the
/// client may bind a new session then).
async fn resume(
    conn: &mut Connection,
    core: &Core,
    account: &str,
    previd: &str,
    h: u32,
) -> Result<Option<sm::Detached>, C2sError> {
    let session = match core.take_for_resume(previd, account).await {
        Ok(session) => session,
        Err(why) => {
            tracing::debug!(peer = %conn.peer, %account, ?why, "c2s resumption refused");
            conn.send(&sm::failed(StanzaErrorCondition::ItemNotFound, None));
            conn.flush().await.map_err(ReadError::Io)?;
            return Ok(None);
        }
    };
    let acknowledged = session.shared.out().acknowledge(h);
    if let Err(e) = acknowledged {
        // The client's count cannot be trusted: the session ends for good, and what it did
        // not acknowledge is re-routed.
        let mut unwritten: Vec<Queued> = session.shared.out().unacked.drain(..).collect();
        unwritten.extend(session.pending);
        core.session_ended(&session.handle, Some(session.queue), unwritten)
            .await;
        return Err(C2sError::Sm(e));
    }
    Ok(Some(session))
}

/// How the reader tells the writer to end.
enum End {
    /// The client closed its stream: close ours.
    Closed,
    /// End with this stream error.
    Fail(StreamErrorCondition, Option<String>),
    /// End with this stream error, already written out (one with an application-specific
    /// condition).
    FailWith(Vec<u8>),
    /// The connection is gone: nothing to write.
    Gone,
}

/// What the writer hands back when it stops: the session's queue, and what it had taken
/// from the queue but not written (presences held for an inactive client).
type Leftovers = (mpsc::Receiver<Queued>, Vec<Queued>);

/// The established session: registered (or resumed), stanzas both ways.
async fn established(mut conn: Connection, negotiated: Negotiated, core: Arc<Core>) {
    let peer = conn.peer;
    conn.set_limits(Limits {
        max_stanza_bytes: core.config.max_stanza_bytes,
        ..Limits::default()
    });
    let (handle, rx, shared, pending, mut sm_id) = match negotiated {
        Negotiated::Bound(bound) => {
            let (tx, rx) = mpsc::channel(core.config.session_queue);
            let (handle, _) = core.register(bound.jid.clone(), bound.account, tx);
            // Like RFC 6120 §7.6.1's example: no 'from' or 'to' before the client knows its
            // address.
            let mut result = Element::new("iq", ns::CLIENT).with_attr("type", "result");
            if let Some(id) = bound.bind_request.attr("id") {
                result.set_attr("id", id);
            }
            let result = result.with_child(
                Element::new("bind", NS_BIND)
                    .with_child(Element::new("jid", NS_BIND).with_text(bound.jid.to_string())),
            );
            conn.send(&result.to_bytes());
            let shared = sm::Shared::new(false, 0, sm::Outbound::default());
            (handle, rx, shared, Vec::new(), None)
        }
        Negotiated::Resumed { session, previd } => {
            let h = session.shared.h.load(std::sync::atomic::Ordering::Relaxed);
            conn.send(&sm::resumed(&previd, h));
            tracing::info!(%peer, jid = %session.handle.jid, "c2s session resumed");
            (
                session.handle,
                session.queue,
                session.shared,
                session.pending,
                Some(previd),
            )
        }
    };
    if conn.flush().await.is_err() {
        // Anything queued for it meanwhile is re-routed.
        end_for_good(
            &core,
            &handle,
            &shared,
            sm_id.as_deref(),
            Some((rx, pending)),
        )
        .await;
        return;
    }
    tracing::debug!(%peer, jid = %handle.jid, "c2s session bound");
    let takeover = CancellationToken::new();
    if let Some(id) = &sm_id {
        core.resume_table
            .live(id, &handle.account, takeover.clone());
    }
    let (mut reader, writer) = conn.split();
    let (end_tx, end_rx) = oneshot::channel();
    let (back_tx, back_rx) = oneshot::channel();
    let writer_task = tokio::spawn(write_loop(
        writer,
        rx,
        pending,
        end_rx,
        back_tx,
        shared.clone(),
        core.config.session_queue,
    ));
    let ack_timeout = core.config.ack_timeout;
    let kick = handle.kick.clone();
    let end = loop {
        // An <r/> of ours unanswered for ack_timeout: the connection is dead.
        let ack_due = shared.out().requested_at.map(|at| at + ack_timeout);
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
            _ = takeover.cancelled() => break End::Fail(
                StreamErrorCondition::Conflict,
                Some("the session was resumed on another stream".into()),
            ),
            _ = tokio::time::sleep_until(ack_due.unwrap_or_else(|| tokio::time::Instant::now() + ack_timeout)) => {
                if ack_due.is_some() {
                    tracing::debug!(%peer, jid = %handle.jid, "no acknowledgement in {ack_timeout:?}: the connection is taken for dead");
                    break End::Gone;
                }
                continue;
            }
            e = reader.next_event() => e,
        };
        match event {
            Ok(Event::Stanza(s)) => match s.kind() {
                Kind::Message | Kind::Presence | Kind::Iq => {
                    core.client_stanza(&handle, s).await;
                    shared.handled();
                }
                _ if s.ns() == sm::NS => {
                    match stream_management(&core, &handle, &shared, &s, &mut sm_id, &takeover) {
                        Ok(()) => {}
                        Err(e) => break End::FailWith(sm::stream_error(&e)),
                    }
                }
                _ if s.ns() == csi::NS && matches!(s.name(), "active" | "inactive") => {
                    let inactive = s.name() == "inactive";
                    shared
                        .inactive
                        .store(inactive, std::sync::atomic::Ordering::Relaxed);
                    if !inactive {
                        shared.wake.notify_one();
                    }
                }
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
    // A lost connection (or one a resumption took over) leaves a resumable session
    // detached; anything else ends it for good.
    let detach = match (&end, &sm_id) {
        (End::Gone, Some(_)) => true,
        (End::Fail(StreamErrorCondition::Conflict, _), Some(_)) => takeover.is_cancelled(),
        _ => false,
    };
    if !detach {
        // Out of the table first, so that nothing new is meant for this session, then the
        // writer stops taking from the queue and hands back what it never took.
        core.unregister(&handle);
    }
    let _ = end_tx.send(end);
    let leftovers = back_rx.await.ok();
    match (detach, sm_id, leftovers) {
        (true, Some(id), Some((queue, pending))) => {
            core.detach(
                id,
                sm::Detached {
                    handle: handle.clone(),
                    queue,
                    shared: shared.clone(),
                    pending,
                },
            );
        }
        (_, id, leftovers) => {
            end_for_good(&core, &handle, &shared, id.as_deref(), leftovers).await;
        }
    }
    let _ = writer_task.await;
    tracing::debug!(%peer, jid = %handle.jid, detached = detach, "c2s connection ended");
}

/// The session ends for good: not resumable any more, and everything the client did not
/// acknowledge or never got is re-routed (`Core::session_ended`).
async fn end_for_good(
    core: &Core,
    handle: &Arc<SessionHandle>,
    shared: &sm::Shared,
    sm_id: Option<&str>,
    leftovers: Option<Leftovers>,
) {
    if let Some(id) = sm_id {
        core.resume_table.forget(id);
    }
    let mut unwritten: Vec<Queued> = shared.out().unacked.drain(..).collect();
    let queue = leftovers.map(|(queue, mut pending)| {
        unwritten.append(&mut pending);
        queue
    });
    core.session_ended(handle, queue, unwritten).await;
}

/// An XEP-0198 element from a bound client (module docs of [`sm`], steps 2–4). `Err` ends
/// the stream.
fn stream_management(
    core: &Core,
    handle: &SessionHandle,
    shared: &sm::Shared,
    s: &Stanza,
    sm_id: &mut Option<String>,
    takeover: &CancellationToken,
) -> Result<(), sm::SmError> {
    use std::sync::atomic::Ordering::Relaxed;
    match sm::parse(s)? {
        Request::Enable { resume } => {
            if shared.is_enabled() {
                shared.control(sm::failed(StanzaErrorCondition::UnexpectedRequest, None));
                return Ok(());
            }
            let resume_timeout = core.config.resume_timeout;
            let id = (resume && !resume_timeout.is_zero()).then(new_stream_id);
            let max = s
                .attr("max")
                .and_then(|m| m.trim().parse::<u64>().ok())
                .map_or(resume_timeout, |m| {
                    resume_timeout.min(std::time::Duration::from_secs(m.max(1)))
                });
            if let Some(id) = &id {
                core.resume_table
                    .live(id, &handle.account, takeover.clone());
            }
            // Counting starts here both ways: ours once the writer has written <enabled/>.
            shared.enabled.store(true, Relaxed);
            shared.control_enable(sm::enabled(id.as_deref(), max));
            *sm_id = id;
        }
        Request::Resume { .. } => {
            shared.control(sm::failed(StanzaErrorCondition::UnexpectedRequest, None));
        }
        Request::AckRequest => {
            if shared.is_enabled() {
                shared.answer.store(true, Relaxed);
                shared.wake.notify_one();
            }
        }
        Request::Ack { h } => {
            if shared.is_enabled() {
                shared.out().acknowledge(h)?;
                shared.wake.notify_one();
            }
        }
    }
    Ok(())
}

/// Drains the session's queue to the client in batches until the session ends, then hands
/// the queue back through `back_tx` with what it took and did not write: stanzas it never
/// wrote are not written to a stream that is ending (a client gone, too slow, replaced, or
/// closing) but re-routed by [`Core::session_ended`] or kept for a resumption. A batch
/// already being written is finished, bounded in time by the stream's close.
///
/// With XEP-0198, every stanza written is kept until acknowledged (at most `max_unacked`;
/// then the queue waits), and each batch ends with `<r/>` when none is in flight; `pending`
/// (from a resumed session) and the unacknowledged stanzas are written first. With
/// XEP-0352, presence updates for an inactive client are held ([`csi::Held`]).
async fn write_loop(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Queued>,
    pending: Vec<Queued>,
    mut end_rx: oneshot::Receiver<End>,
    back_tx: oneshot::Sender<Leftovers>,
    shared: Arc<sm::Shared>,
    max_unacked: usize,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = Batch {
        writer: &mut writer,
        shared: &shared,
        held: csi::Held::default(),
        counting: shared.is_enabled(),
        wrote: false,
    };
    // A resumed session: what the client did not acknowledge goes again, as it was.
    for q in shared.out().unacked.iter() {
        out.writer.send(&q.bytes);
        out.wrote = true;
    }
    for q in pending {
        out.write(q);
    }
    let end = loop {
        out.finish_batch();
        if out.writer.pending() > 0 {
            // A client that does not read keeps this flush waiting; the session's end must
            // not wait for it. `Writer::flush` is cancel-safe: what it did not write stays.
            tokio::select! {
                written = out.writer.flush() => {
                    if written.is_err() {
                        // The reader sees the connection go too.
                        break (&mut end_rx).await.unwrap_or(End::Gone);
                    }
                }
                end = &mut end_rx => break end.unwrap_or(End::Gone),
            }
        }
        let room = !out.counting || shared.out().unacked.len() < max_unacked;
        let next = tokio::select! {
            end = &mut end_rx => break end.unwrap_or(End::Gone),
            _ = shared.wake.notified() => None,
            next = rx.recv(), if room => match next {
                Some(q) => Some(q),
                None => break (&mut end_rx).await.unwrap_or(End::Gone),
            },
        };
        out.controls();
        if let Some(first) = next {
            out.take(first);
        }
        while out.writer.pending() < BATCH_BYTES
            && (!out.counting || shared.out().unacked.len() < max_unacked)
        {
            match rx.try_recv() {
                Ok(q) => out.take(q),
                Err(_) => break,
            }
        }
        if !shared.inactive.load(Relaxed) {
            for q in out.held.take() {
                out.write(q);
            }
        }
    };
    let held = out.held.take();
    if out.held.collapsed > 0 {
        tracing::debug!(
            collapsed = out.held.collapsed,
            saved_bytes = out.held.saved_bytes,
            "presence updates not written to an inactive client"
        );
    }
    let final_ack = out.counting.then(|| sm::ack(shared.h.load(Relaxed)));
    drop(out);
    let _ = back_tx.send((rx, held));
    match end {
        End::Closed => {
            if let Some(a) = final_ack {
                writer.send(&a);
            }
            writer.close().await
        }
        End::Fail(cond, text) => {
            if let Some(a) = final_ack {
                writer.send(&a);
            }
            writer.fail(&cond, text.as_deref()).await
        }
        End::FailWith(bytes) => {
            writer.send(&bytes);
            writer.close().await
        }
        End::Gone => {}
    }
}

/// One batch being put together for the client.
struct Batch<'a> {
    writer: &'a mut Writer,
    shared: &'a sm::Shared,
    held: csi::Held,
    /// `<enabled/>` was written: every stanza written from now on waits for its
    /// acknowledgement.
    counting: bool,
    /// Stanzas went into the batch (they want an `<r/>` after them).
    wrote: bool,
}

impl Batch<'_> {
    /// Writes what the reader asked for (`<enabled/>`, `<failed/>`), in order.
    fn controls(&mut self) {
        for c in self.shared.take_controls() {
            if c.starts_counting {
                self.counting = true;
            }
            self.writer.send(&c.bytes);
        }
    }

    /// A stanza from the queue: held for an inactive client if it is a presence update,
    /// else written (after the held ones, so that the client sees them in order).
    fn take(&mut self, q: Queued) {
        if !self
            .shared
            .inactive
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return self.write(q);
        }
        if let Err(q) = self.held.hold(q) {
            for h in self.held.take() {
                self.write(h);
            }
            self.write(q);
        }
    }

    fn write(&mut self, q: Queued) {
        self.writer.send(&q.bytes);
        self.wrote = true;
        if self.counting {
            self.shared.out().unacked.push_back(q);
        }
    }

    /// The batch's last bytes: `<a/>` if the client asked, `<r/>` if stanzas went out and
    /// none is in flight.
    fn finish_batch(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.controls();
        if self.shared.answer.swap(false, Relaxed) {
            self.writer.send(&sm::ack(self.shared.h.load(Relaxed)));
        }
        if std::mem::take(&mut self.wrote) && self.counting {
            let mut out = self.shared.out();
            if !out.unacked.is_empty() && out.requested_at.is_none() {
                out.requested_at = Some(tokio::time::Instant::now());
                self.writer.send(sm::REQUEST);
            }
        }
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
        if self.blocked_outbound(session, &el).await {
            return;
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

/// A database that goes down under a running core, and comes back.
#[cfg(test)]
#[path = "c2s_storage_tests.rs"]
mod storage_tests;
