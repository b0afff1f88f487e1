//! The inbound stream's negotiation (RFC 6120 §4–6, XEP-0178, XEP-0368), sans-I/O.
//!
//! [`Negotiation`] is in one [`State`] at a time:
//! 1. [`State::ExpectStreamHeader`]: [`Negotiation::handle_header`] checks the peer's header
//!    (`jabber:server`, version 1.x, a `to` we serve, a valid `from`) and gives [`OurHeader`]
//!    for the task to open our stream with; [`Negotiation::send_features`] then refuses a
//!    `from` our federation policy refuses or whose certificate the policy needs valid and is
//!    not, and writes the features: `<starttls/>` (with `<required/>` when the policy
//!    requires TLS) while there is no TLS and we hold a certificate, SASL EXTERNAL with a valid
//!    certificate for the stream's `from` (once per connection), XEP-0288 bidi over TLS before
//!    authentication when `s2s.bidi` and the peer's `bidi` allow it, dialback with errors when
//!    the policy allows it, XEP-0198, and the XEP-0478 limits wherever authentication may
//!    follow;
//! 2. [`State::ExpectStarttls`]: TLS is required and not there: only `<starttls/>` is
//!    accepted (anything else: `<policy-violation/>`); `<proceed/>`, or `<failure/>` and the
//!    stream's end without a certificate (§5.4.2.2);
//! 3. [`State::ExpectTlsHandshake`]: `<proceed/>` is out; the task runs the handshake
//!    (whatever the peer sent before it is discarded unread) and reports it with
//!    [`Negotiation::handle_tls`]: a new stream id, and a new header expected (§5.4.3.3);
//! 4. [`State::ExpectAuth`]: SASL EXTERNAL is checked here (offered, mechanism `EXTERNAL`, an
//!    authzid, if any, equal to the stream `from`: else `<invalid-mechanism/>`,
//!    `<incorrect-encoding/>` or `<invalid-authzid/>`, the stream ending after
//!    [`MAX_SASL_FAILURES`]); an acceptable one asks the session for room
//!    ([`Next::ExternalRequested`], answered by [`Negotiation::handle_external_admission`]):
//!    `<success/>`, a new stream id and a new header, or `<temporary-auth-failure/>` with the
//!    reason. `<bidi xmlns='urn:xmpp:bidi'/>` (any children) where bidi was offered gives
//!    [`Next::Bidi`], elsewhere `<unsupported-stanza-type/>`. Everything else (dialback,
//!    XEP-0198, stanzas) is the session's ([`Next::Session`]);
//! 5. [`State::Established`]: a pair is proved on this connection, by SASL EXTERNAL or by
//!    dialback ([`Negotiation::authenticated`]); elements go to the session.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;

use crate::dialback::new_stream_id;
use crate::jid;
use crate::metrics::{AuthMethod, Direction};
use crate::policy::PeerSecurity;
use crate::s2s::connect::Security;
use crate::s2s::limits;
use crate::s2s::sm::{self, SmError};
use crate::s2s::S2sContext;
use crate::tls::{CertVerdict, PeerRole, TlsInfo};
use crate::xml::error::{SaslCondition, StreamErrorCondition};
use crate::xml::ns;
use crate::xml::stanza::Stanza;
use crate::xml::stream::StreamHeader;

/// SASL attempts allowed per stream (RFC 6120 §6.4.5 asks for at least two).
pub const MAX_SASL_FAILURES: usize = 3;

/// The stream error that ends an inbound stream, and why.
#[derive(Debug)]
pub struct Refusal {
    /// The condition of the `<stream:error/>` sent before closing.
    pub condition: StreamErrorCondition,
    /// Why, for the `<text/>` of the stream error and the log.
    pub text: String,
    /// The whole `<stream:error/>`, when it carries more than the condition and the text (an
    /// application-specific condition such as XEP-0198's `<handled-count-too-high/>`).
    pub raw: Option<Vec<u8>>,
}

/// A refusal with `condition` and the `text` that says why.
pub fn refuse(condition: StreamErrorCondition, text: impl Into<String>) -> Refusal {
    Refusal {
        condition,
        text: text.into(),
        raw: None,
    }
}

/// A refusal for a stream management error, with its application-specific condition.
pub fn refuse_sm(e: &SmError) -> Refusal {
    Refusal {
        condition: e.into(),
        text: e.to_string(),
        raw: Some(sm::stream_error(e)),
    }
}

/// What the inbound stream waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The peer's stream header: first, after TLS, after SASL success.
    ExpectStreamHeader,
    /// `<starttls/>`, and nothing else: the peer's policy requires TLS.
    ExpectStarttls,
    /// The TLS handshake, which the task runs after `<proceed/>`.
    ExpectTlsHandshake,
    /// Authentication: SASL EXTERNAL, or dialback (the session's).
    ExpectAuth,
    /// A pair is authenticated: stanzas, more dialback pairs, XEP-0198 (the session's).
    Established,
}

/// The header we answer with: the task opens the stream with it (`Connection::open`, so that
/// a refusal after it does not write a second header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurHeader {
    /// The domain the peer addressed (canonical), ours.
    pub from: String,
    /// The peer's `from` (canonical), if it said.
    pub to: Option<String>,
    /// Our new stream id (random), the one dialback keys for this stream are made with.
    pub id: String,
    /// Whether the peer announced version 1.x, and so gets features.
    pub version: bool,
}

/// What the task does after an element.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Write the output and read on.
    Continue,
    /// Write the output (`<proceed/>`), then hand the transport to a TLS handshake with this
    /// certificate hint, and report it with [`Negotiation::handle_tls`].
    StartTls {
        /// The domain the peer addressed (the header's `to`): picks our certificate when the
        /// peer sends no SNI.
        hint: Option<String>,
    },
    /// SASL EXTERNAL is acceptable for (local, remote) if the session has room for `remote`
    /// (`max_streams_per_domain`): answer with [`Negotiation::handle_external_admission`].
    ExternalRequested {
        /// Our domain, as the stream header's `to`.
        local: String,
        /// The peer's domain (the header's `from`), which its certificate is valid for.
        remote: String,
    },
    /// Write the output (`<success/>`), record (local, remote) as authenticated by SASL
    /// EXTERNAL, and restart the stream: a new header follows (RFC 6120 §6.4.6).
    Authenticated {
        /// Our domain of the pair.
        local: String,
        /// The peer's domain of the pair.
        remote: String,
    },
    /// The peer asked for XEP-0288 bidi and may have it: the stream carries our stanzas
    /// back for every pair proved on it, those so far and those to come.
    Bidi,
    /// Not negotiation: the session handles the element (dialback, XEP-0198, stanzas,
    /// stream errors).
    Session,
    /// Write the output and end the stream cleanly (`</stream:stream>`).
    End,
}

/// An inbound stream's negotiation: its state and what it has learnt.
#[derive(Debug)]
pub struct Negotiation {
    state: State,
    /// The peer's address, for logs.
    peer: SocketAddr,
    /// Our stream id: part of every dialback key for this stream; new after each restart.
    stream_id: String,
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
    /// The pair SASL EXTERNAL asked for, while the session checks for room.
    external_pending: Option<(String, String)>,
    /// A pair is authenticated on this connection.
    authenticated: bool,
    /// The peer asked for XEP-0288 bidi, which we offered: the stream may carry our stanzas
    /// back (for the pairs proved on it).
    bidi: bool,
    /// The XEP-0478 `max-bytes` the peer put inside its `<bidi/>` (Prosody 13 does): the
    /// largest stanza it takes from us on this stream.
    bidi_max_bytes: Option<usize>,
    /// Bytes to write, taken by [`Negotiation::take_output`].
    out: Vec<u8>,
}

impl Negotiation {
    /// A new connection; `tls` when it came in on the direct TLS port (XEP-0368).
    pub fn new(peer: SocketAddr, tls: Option<TlsInfo>) -> Negotiation {
        Negotiation {
            state: State::ExpectStreamHeader,
            peer,
            stream_id: new_stream_id(),
            security: Security { tls, verdict: None },
            local: None,
            remote: None,
            external_offered: false,
            external_done: false,
            external_failures: 0,
            external_pending: None,
            authenticated: false,
            bidi: false,
            bidi_max_bytes: None,
            out: Vec::new(),
        }
    }

    /// What the stream waits for now.
    pub fn state(&self) -> State {
        self.state
    }

    /// Our id of the current stream; it changes at each restart (after TLS, after SASL).
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The TLS session and the certificate verdict so far (no TLS: both empty).
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Whether the peer negotiated XEP-0288 bidi on this connection.
    pub fn bidi(&self) -> bool {
        self.bidi
    }

    /// The largest stanza the peer said (inside `<bidi/>`, XEP-0478) it takes from us.
    pub fn bidi_max_bytes(&self) -> Option<usize> {
        self.bidi_max_bytes
    }

    /// Whether XEP-0288 bidi may be negotiated with this peer now: over TLS only, and when
    /// `s2s.bidi` and the peer's `bidi` allow it.
    fn bidi_allowed(&self, ctx: &S2sContext) -> bool {
        self.security.tls.is_some() && self.remote.is_some() && self.peer_policy(ctx).bidi
    }

    /// The stream header's `to`, once read.
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    /// The stream header's `from`, if the peer said.
    pub fn remote(&self) -> Option<&str> {
        self.remote.as_deref()
    }

    /// The bytes to write now (features, answers), leaving none.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The policy for the peer: its stream `from`'s, or the default when it did not say.
    pub fn peer_policy(&self, ctx: &S2sContext) -> Arc<PeerSecurity> {
        match &self.remote {
            Some(remote) => ctx.security.load().peer(remote),
            None => ctx.security.load().default_peer(),
        }
    }

    /// The peer certificate's verdict for `domain` (with TLS only), counted in metrics.
    pub fn verdict_for(&self, ctx: &S2sContext, domain: &str) -> Option<CertVerdict> {
        let info = self.security.tls.as_ref()?;
        let policy = ctx.security.load().peer(domain);
        let verdict = ctx
            .tls
            .verify_peer(info, domain, PeerRole::Client, &policy.pins);
        ctx.router
            .metrics
            .certificate_verdicts
            .count(Direction::Inbound, verdict.label());
        Some(verdict)
    }

    /// Step 1: the peer's header, in [`State::ExpectStreamHeader`].
    pub fn handle_header(
        &mut self,
        header: &StreamHeader,
        ctx: &S2sContext,
    ) -> Result<OurHeader, Refusal> {
        if self.state != State::ExpectStreamHeader {
            return Err(refuse(
                StreamErrorCondition::BadFormat,
                "unexpected stream header",
            ));
        }
        if header.default_ns.as_deref() != Some(ns::SERVER) {
            return Err(refuse(
                StreamErrorCondition::InvalidNamespace,
                "the s2s content namespace is jabber:server",
            ));
        }
        if let Some(why) = header.unsupported_version(true) {
            return Err(refuse(StreamErrorCondition::UnsupportedVersion, why));
        }
        let Some(to) = header.to.as_deref() else {
            return Err(refuse(
                StreamErrorCondition::ImproperAddressing,
                "the stream header needs a 'to'",
            ));
        };
        let local = match jid::normalize_domain(to) {
            Ok(d) if ctx.router.is_local(&d) => d.into_owned(),
            _ => {
                return Err(refuse(
                    StreamErrorCondition::HostUnknown,
                    format!("{to} is not served here"),
                ))
            }
        };
        let from = match header.from.as_deref() {
            None => None,
            Some(f) => match jid::normalize_domain(f) {
                Ok(d) => Some(d.into_owned()),
                Err(_) => {
                    return Err(refuse(
                        StreamErrorCondition::InvalidFrom,
                        format!("'{f}' is not a domain"),
                    ))
                }
            },
        };
        self.local = Some(local.clone());
        self.remote = from.clone();
        Ok(OurHeader {
            from: local,
            to: from,
            id: self.stream_id.clone(),
            version: header.version.is_some(),
        })
    }

    /// Step 1, once our header is open: the policy's checks of the peer's `from`, then the
    /// features (only when `header.version`).
    pub fn send_features(&mut self, header: &OurHeader, ctx: &S2sContext) -> Result<(), Refusal> {
        if let Some(remote) = &self.remote {
            // A peer that names a domain we do not federate with gets nothing but the reason.
            if let Err(refused) = ctx.router.admit(remote, Direction::Inbound) {
                ctx.registry
                    .failed(remote, Direction::Inbound, refused.to_string());
                return Err(refuse(
                    StreamErrorCondition::PolicyViolation,
                    refused.to_string(),
                ));
            }
        }
        let policy = self.peer_policy(ctx);
        let tls = self.security.tls.is_some();
        if tls && self.security.verdict.is_none() {
            // Once per connection: the certificate does not change across stream restarts.
            if let Some(remote) = self.remote.clone() {
                let verdict = self.verdict_for(ctx, &remote);
                if let Some(CertVerdict::Invalid(problem)) = &verdict {
                    if policy.needs_valid_certificate() {
                        return Err(refuse(
                            StreamErrorCondition::PolicyViolation,
                            format!("a valid certificate for {remote} is required: {problem}"),
                        ));
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
        self.state = if self.authenticated {
            State::Established
        } else if !tls && policy.tls_required {
            State::ExpectStarttls
        } else {
            State::ExpectAuth
        };
        if header.version {
            let mut features = String::from("<stream:features>");
            if !tls && ctx.tls.can_accept() {
                features.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                if policy.tls_required {
                    features.push_str("<required/>");
                }
                features.push_str("</starttls>");
            }
            if self.external_offered {
                features.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>");
            }
            // XEP-0288 §2.1: before authentication, on encrypted streams; the request comes
            // before SASL or dialback.
            if !self.authenticated && !self.bidi && self.bidi_allowed(ctx) {
                features.push_str(crate::s2s::bidi::FEATURE);
            }
            if policy.allows_dialback(tls) {
                features
                    .push_str("<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>");
            }
            // Offered wherever authentication may follow, so that a peer authenticating by
            // dialback (which brings no new features) has seen it; honoured only once the
            // stream is authenticated.
            if ctx.settings.stream_management && (tls || !policy.tls_required) {
                features.push_str("<sm xmlns='urn:xmpp:sm:3'/>");
            }
            // XEP-0478: what the peer may send once authenticated, wherever it may
            // authenticate (before a required TLS, nothing but <starttls/> is accepted, and
            // the limits come with the features after it).
            if tls || !policy.tls_required {
                let settings = &ctx.settings;
                let max_bytes = policy.max_stanza_bytes.unwrap_or(settings.max_stanza_bytes);
                features.push_str(&limits::limits_feature(max_bytes, settings.idle_timeout));
            }
            features.push_str("</stream:features>");
            self.out.extend_from_slice(features.as_bytes());
        }
        Ok(())
    }

    /// Steps 2–5: an element after the features.
    pub fn handle_element(&mut self, stanza: &Stanza, ctx: &S2sContext) -> Result<Next, Refusal> {
        match self.state {
            State::ExpectStreamHeader | State::ExpectTlsHandshake => {
                return Err(refuse(
                    StreamErrorCondition::BadFormat,
                    "expected a stream header",
                ))
            }
            State::ExpectStarttls | State::ExpectAuth | State::Established => {}
        }
        let tls = self.security.tls.is_some();
        let is_starttls = stanza.name() == "starttls" && stanza.ns() == ns::TLS;
        // Asked of the policy each time: a reload may have changed it.
        if !tls && !is_starttls && self.peer_policy(ctx).tls_required {
            return Err(refuse(
                StreamErrorCondition::PolicyViolation,
                "TLS is required: send <starttls/> first",
            ));
        }
        if is_starttls {
            return self.starttls(ctx);
        }
        if stanza.name() == "auth" && stanza.ns() == ns::SASL {
            return self.sasl_external(stanza, ctx);
        }
        if crate::s2s::bidi::is_request(stanza) {
            return self.bidi_request(stanza, ctx);
        }
        Ok(Next::Session)
    }

    /// XEP-0288 §2.2: `<bidi xmlns='urn:xmpp:bidi'/>`, whatever its children (Prosody 13 puts
    /// its XEP-0478 `<limits/>` there, and their `max-bytes` is kept; anything else is
    /// ignored). Nothing answers it.
    fn bidi_request(&mut self, stanza: &Stanza, ctx: &S2sContext) -> Result<Next, Refusal> {
        if !self.bidi_allowed(ctx) {
            return Err(refuse(
                StreamErrorCondition::UnsupportedStanzaType,
                "bidirectional streams (XEP-0288) are not offered on this stream",
            ));
        }
        self.bidi = true;
        // Its XEP-0478 limits, if it put them inside: what it takes from us.
        self.bidi_max_bytes = stanza
            .element()
            .ok()
            .and_then(|e| limits::advertised_max_bytes(&e));
        Ok(Next::Bidi)
    }

    /// Step 2: `<starttls/>` (RFC 6120 §5.4.2).
    fn starttls(&mut self, ctx: &S2sContext) -> Result<Next, Refusal> {
        if self.security.tls.is_some() {
            return Err(refuse(
                StreamErrorCondition::PolicyViolation,
                "TLS is already negotiated",
            ));
        }
        if !ctx.tls.can_accept() {
            // §5.4.2.2: <failure/>, then the stream is closed (no stream error).
            tracing::info!(peer = %self.peer, "STARTTLS requested but no certificate is configured");
            self.out
                .extend_from_slice(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
            return Ok(Next::End);
        }
        self.out
            .extend_from_slice(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        self.state = State::ExpectTlsHandshake;
        Ok(Next::StartTls {
            hint: self.local.clone(),
        })
    }

    /// Step 3: the handshake succeeded; a new stream follows, with a new id (RFC 6120
    /// §4.7.3). A failed handshake ends the connection: the task has nothing to report.
    pub fn handle_tls(&mut self, info: TlsInfo) {
        self.security.tls = Some(info);
        self.stream_id = new_stream_id();
        self.state = State::ExpectStreamHeader;
    }

    /// Step 4: `<auth mechanism='EXTERNAL'/>` (RFC 6120 §6.4, XEP-0178 §3).
    fn sasl_external(&mut self, stanza: &Stanza, ctx: &S2sContext) -> Result<Next, Refusal> {
        let element = stanza
            .element()
            .map_err(|e| refuse(StreamErrorCondition::from(&e), e.to_string()))?;
        let failure = if !self.external_offered || element.attr("mechanism") != Some("EXTERNAL") {
            Some(SaslCondition::InvalidMechanism)
        } else {
            match decode_authzid(&element.text()) {
                Err(()) => Some(SaslCondition::IncorrectEncoding),
                Ok(None) => None,
                Ok(Some(authzid)) => {
                    let matches = jid::normalize_domain(&authzid)
                        .is_ok_and(|a| Some(a.as_ref()) == self.remote.as_deref());
                    (!matches).then_some(SaslCondition::InvalidAuthzid)
                }
            }
        };
        if let Some(condition) = failure {
            tracing::info!(peer = %self.peer, remote = ?self.remote, "SASL EXTERNAL refused: {condition}");
            return self.sasl_failure(ctx, condition, None);
        }
        // Offered only with a valid certificate for the stream's from, so both are known.
        let (Some(local), Some(remote)) = (self.local.clone(), self.remote.clone()) else {
            return self.sasl_failure(ctx, SaslCondition::InvalidMechanism, None);
        };
        self.external_pending = Some((local.clone(), remote.clone()));
        Ok(Next::ExternalRequested { local, remote })
    }

    /// Step 4's answer once the session has checked for room: `why` refuses it for now.
    pub fn handle_external_admission(
        &mut self,
        admitted: Result<(), String>,
        ctx: &S2sContext,
    ) -> Result<Next, Refusal> {
        let Some((local, remote)) = self.external_pending.take() else {
            return Err(refuse(
                StreamErrorCondition::UndefinedCondition,
                "no SASL EXTERNAL request to answer",
            ));
        };
        if let Err(why) = admitted {
            // RFC 6120 §6.5.10: the certificate is good; try again when a stream closes.
            return self.sasl_failure(ctx, SaslCondition::TemporaryAuthFailure, Some(&why));
        }
        ctx.router
            .metrics
            .s2s_auth
            .count(Direction::Inbound, AuthMethod::External, true);
        self.out
            .extend_from_slice(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
        self.external_done = true;
        self.authenticated = true;
        self.stream_id = new_stream_id();
        self.state = State::ExpectStreamHeader;
        Ok(Next::Authenticated { local, remote })
    }

    /// A SASL `<failure/>`, counted; the stream goes on until [`MAX_SASL_FAILURES`] (RFC 6120
    /// §6.4.5).
    fn sasl_failure(
        &mut self,
        ctx: &S2sContext,
        condition: SaslCondition,
        text: Option<&str>,
    ) -> Result<Next, Refusal> {
        ctx.router
            .metrics
            .s2s_auth
            .count(Direction::Inbound, AuthMethod::External, false);
        self.external_failures += 1;
        self.out.extend_from_slice(&condition.failure(text));
        if self.external_failures >= MAX_SASL_FAILURES {
            return Err(refuse(
                StreamErrorCondition::PolicyViolation,
                "too many failed authentication attempts",
            ));
        }
        Ok(Next::Continue)
    }

    /// Step 5: the session proved a pair by dialback.
    pub fn authenticated(&mut self) {
        self.authenticated = true;
        if self.state == State::ExpectAuth {
            self.state = State::Established;
        }
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
