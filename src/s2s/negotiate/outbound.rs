//! The outbound stream's authentication (RFC 6120 §6 SASL EXTERNAL with XEP-0178, XEP-0220
//! §2.1 dialback), sans-I/O, on a stream that [`connect`](crate::s2s::connect) opened.
//!
//! [`Authentication::start`] decides the method and writes its first element:
//! - SASL EXTERNAL when the peer offers it over TLS, we hold a certificate for our domain that
//!   our own trust anchors accept, the policy allows it and the peer has not refused it before:
//!   `<auth mechanism='EXTERNAL'>=</auth>`, then [`State::ExpectSaslAnswer`];
//! - otherwise dialback, if the policy allows it over this stream's security and the peer
//!   offers it (else [`OutboundError::NoAuthentication`]): `<db:result>` with our key for the
//!   peer's stream id, then [`State::ExpectDbResult`].
//!
//! When the peer offers XEP-0288 bidi over TLS and the policy allows it, `<bidi/>` goes
//! first ([`Authentication::bidi`]): the link then also carries the peer's stanzas to us.
//!
//! Then [`Authentication::handle_element`] takes each element the task reads:
//! 1. [`State::ExpectSaslAnswer`]: `<success/>` asks for a restart ([`Next::Restart`]: the
//!    task opens a new stream, and gives its features to
//!    [`Authentication::handle_features`], [`State::ExpectFeatures`]); `<failure/>` remembers
//!    the refusal (not for `<temporary-auth-failure/>`, a busy peer) and goes on with dialback
//!    on the same stream when it may (RFC 6120 §6.4.5), else
//!    [`OutboundError::ExternalRefused`];
//! 2. [`State::ExpectDbResult`]: the verdict on exactly our pair
//!    ([`initiating::answer`](crate::s2s::dialback::initiating::answer)).

use std::sync::Arc;

use crate::metrics::{Direction, Metrics};
use crate::policy::PeerSecurity;
use crate::s2s::connect::{offers_dialback, offers_external, ConnectError, Security};
use crate::s2s::dialback::{initiating, result_request};
use crate::s2s::outbound::{AuthMethod, OutboundError};
use crate::s2s::S2sContext;
use crate::xml::element::Element;
use crate::xml::error::SaslCondition;
use crate::xml::ns;
use crate::xml::stanza::Stanza;
use crate::xml::stream::StreamHeader;

/// What the outbound stream's authentication waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `<success/>` or `<failure/>` to our `<auth mechanism='EXTERNAL'/>`.
    ExpectSaslAnswer,
    /// The features of the stream restarted after SASL success.
    ExpectFeatures,
    /// The receiving server's `<db:result type=…/>` for our pair.
    ExpectDbResult,
    /// Done: the stream is authenticated.
    Authenticated,
}

/// What the task does next.
#[derive(Debug)]
pub enum Next {
    /// Write the output, read the next element and hand it to
    /// [`Authentication::handle_element`].
    Read,
    /// Restart the stream (RFC 6120 §6.4.6) and hand the new features to
    /// [`Authentication::handle_features`].
    Restart,
    /// The stream is authenticated; these are its features (XEP-0198 is offered there).
    Authenticated(AuthMethod, Element),
}

/// An opened outbound stream being authenticated for (local, remote).
pub struct Authentication {
    state: State,
    local: String,
    remote: String,
    /// Where the stream goes, as errors name it.
    target: String,
    tls: bool,
    policy: Arc<PeerSecurity>,
    /// The peer's stream id, which keys dialback.
    stream_id: Option<String>,
    /// We asked for XEP-0288 bidi (the peer offered it over TLS and the policy allows it):
    /// once authenticated, the stream also carries the peer's stanzas to us.
    bidi: bool,
    /// Whether the peer offers dialback (features or the `db` namespace on its header).
    dialback_offered: bool,
    /// The features before authentication: those of the stream after dialback too (taken
    /// when it succeeds).
    features: Option<Element>,
    out: Vec<u8>,
}

impl Authentication {
    /// Chooses the method for the stream `header` and `features` describe, and writes its
    /// first element.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        ctx: &S2sContext,
        local: &str,
        remote: &str,
        target: &str,
        header: StreamHeader,
        features: Element,
        security: &Security,
        policy: Arc<PeerSecurity>,
    ) -> Result<(Authentication, Next), OutboundError> {
        let tls = security.tls.is_some();
        let use_external = tls
            && policy.allows_external()
            && offers_external(&features)
            && ctx.tls.has_valid_certificate(local)
            && !ctx.external_refused.contains(remote);
        // XEP-0288 §2.2: asked for before authentication, on encrypted streams.
        let bidi = tls && policy.bidi && crate::s2s::bidi::offered(&features);
        let mut auth = Authentication {
            bidi,
            state: State::ExpectSaslAnswer,
            local: local.to_string(),
            remote: remote.to_string(),
            target: target.to_string(),
            tls,
            dialback_offered: offers_dialback(&header, &features),
            stream_id: header.id,
            policy,
            features: Some(features),
            out: Vec::new(),
        };
        if bidi {
            auth.out.extend_from_slice(crate::s2s::bidi::REQUEST);
        }
        if use_external {
            // RFC 6120 §6.4.2: "=" is an empty initial response, no authzid; the receiving
            // server takes our identity from the certificate and the stream's 'from'.
            auth.out.extend_from_slice(
                b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
            );
        } else {
            auth.dialback(ctx)?;
        }
        Ok((auth, Next::Read))
    }

    /// What the authentication waits for now.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether we asked for XEP-0288 bidi on this stream.
    pub fn bidi(&self) -> bool {
        self.bidi
    }

    /// The peer's stream id, which keys dialback on this stream (after a SASL restart, the
    /// new stream's: [`Authentication::handle_features`] takes its header).
    pub fn stream_id(&self) -> Option<&str> {
        self.stream_id.as_deref()
    }

    /// Whether the peer offers Server Dialback on this stream (for more pairs once it is
    /// authenticated, XEP-0220 §2.6.1).
    pub fn dialback_offered(&self) -> bool {
        self.dialback_offered
    }

    /// The bytes to write now, leaving none.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Dialback on this stream, if the policy and the peer allow it: our `<db:result>`.
    fn dialback(&mut self, ctx: &S2sContext) -> Result<(), OutboundError> {
        if !self.policy.allows_dialback(self.tls) {
            return Err(OutboundError::NoAuthentication {
                target: self.target.clone(),
                reason: if self.tls {
                    "SASL EXTERNAL is required but not available".into()
                } else {
                    "dialback without TLS is not allowed".into()
                },
            });
        }
        if !self.dialback_offered {
            return Err(OutboundError::NoAuthentication {
                target: self.target.clone(),
                reason: "the peer offers no Server Dialback and no usable SASL EXTERNAL".into(),
            });
        }
        let Some(stream_id) = &self.stream_id else {
            return Err(ConnectError::Stream {
                target: self.target.clone(),
                reason: "the peer's stream header has no id, so dialback is impossible".into(),
            }
            .into());
        };
        let key = ctx.secret.key(&self.remote, &self.local, stream_id);
        self.out
            .extend_from_slice(&result_request(&self.local, &self.remote, &key));
        self.state = State::ExpectDbResult;
        Ok(())
    }

    /// An element the peer sent.
    pub fn handle_element(
        &mut self,
        stanza: &Stanza,
        ctx: &S2sContext,
    ) -> Result<Next, OutboundError> {
        let metrics: &Metrics = &ctx.router.metrics;
        match self.state {
            State::ExpectSaslAnswer => match (stanza.name(), stanza.ns()) {
                ("success", ns::SASL) => {
                    metrics
                        .s2s_auth
                        .count(Direction::Outbound, AuthMethod::External, true);
                    self.state = State::ExpectFeatures;
                    Ok(Next::Restart)
                }
                ("failure", ns::SASL) => {
                    metrics
                        .s2s_auth
                        .count(Direction::Outbound, AuthMethod::External, false);
                    self.sasl_failure(stanza, ctx)?;
                    Ok(Next::Read)
                }
                (name, _) => Err(ConnectError::Stream {
                    target: self.target.clone(),
                    reason: format!("expected a SASL answer, got <{name}/>"),
                }
                .into()),
            },
            State::ExpectDbResult => {
                initiating::answer(stanza, &self.target, &self.local, &self.remote, metrics)?
                    .map_err(|refusal| OutboundError::DialbackRefused {
                        remote: self.remote.clone(),
                        refusal,
                    })?;
                self.state = State::Authenticated;
                let features = self.features.take().unwrap_or_default();
                Ok(Next::Authenticated(AuthMethod::Dialback, features))
            }
            State::ExpectFeatures | State::Authenticated => Err(ConnectError::Stream {
                target: self.target.clone(),
                reason: format!("<{}/> where a new stream was expected", stanza.name()),
            }
            .into()),
        }
    }

    /// SASL EXTERNAL refused: remembered (unless only for now), then dialback on the same
    /// stream when it may (RFC 6120 §6.4.5).
    fn sasl_failure(&mut self, stanza: &Stanza, ctx: &S2sContext) -> Result<(), OutboundError> {
        let named = stanza
            .element()
            .ok()
            .and_then(|e| e.children().next().map(|c| c.name.clone()))
            .unwrap_or_else(|| "failure".into());
        let condition = SaslCondition::from_name(&named);
        let (local, remote) = (&self.local, &self.remote);
        if condition == Some(SaslCondition::TemporaryAuthFailure) {
            // Busy (e.g. at its streams-per-domain limit), not a verdict on our certificate:
            // EXTERNAL is tried again next time.
            tracing::info!(%local, %remote, "SASL EXTERNAL refused for now ({named}); trying dialback");
        } else {
            tracing::info!(%local, %remote, "SASL EXTERNAL refused ({named}); using dialback from now on");
            ctx.external_refused.insert(self.remote.clone());
        }
        if !(self.policy.allows_dialback(self.tls) && self.dialback_offered) {
            return Err(OutboundError::ExternalRefused {
                remote: self.remote.clone(),
                condition,
            });
        }
        self.dialback(ctx)
    }

    /// The header and features of the stream restarted after SASL success.
    pub fn handle_features(
        &mut self,
        header: StreamHeader,
        features: Element,
    ) -> Result<Next, OutboundError> {
        if self.state != State::ExpectFeatures {
            return Err(ConnectError::Stream {
                target: self.target.clone(),
                reason: "unexpected stream features".into(),
            }
            .into());
        }
        self.dialback_offered = offers_dialback(&header, &features);
        self.stream_id = header.id;
        self.state = State::Authenticated;
        Ok(Next::Authenticated(AuthMethod::External, features))
    }
}
