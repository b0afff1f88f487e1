//! Steps 1–2 of an outbound session: walk the remote domain's targets until a stream opens
//! ([`connect::Walk`]), then authenticate it with the sans-I/O
//! [`Authentication`](crate::s2s::negotiate::outbound::Authentication): SASL EXTERNAL when it
//! can work (XEP-0178), else dialback; a refused key or certificate is final for the domain.

use std::sync::Arc;

use tokio::time::Instant;

use super::{AuthMethod, OutboundError, Session};
use crate::connection::Connection;
use crate::dns::ResolveError;
use crate::metrics::Direction;
use crate::policy::PeerSecurity;
use crate::s2s::connect::{self, ConnectError, Opened, Security, Stage, Walk};
use crate::s2s::negotiate::outbound::{Authentication, Next};
use crate::s2s::trace::Trace;
use crate::xml::element::Element;
use crate::xml::error::StreamErrorCondition;
use crate::xml::stream::StreamHeader;

/// An authenticated stream.
pub(super) struct Link {
    pub(super) conn: Connection,
    /// Where it goes, as logs and errors name it.
    pub(super) label: String,
    pub(super) method: AuthMethod,
    pub(super) security: Security,
    /// The peer's features after authentication (XEP-0198 is offered there).
    pub(super) features: Element,
    /// The features it offered before authentication, for diagnostics.
    pub(super) offered: Element,
    /// XEP-0288 bidi was requested: the peer may send its stanzas to us on this stream.
    pub(super) bidi: bool,
    /// What dialback for more pairs on this stream needs ([`piggyback`](super::piggyback)).
    pub(super) dialback: DialbackOnLink,
}

/// Whether, and with which key input, more pairs may be authenticated by dialback on an
/// established stream.
#[derive(Debug, Clone, Default)]
pub(super) struct DialbackOnLink {
    /// The peer's id for the current stream (after a SASL restart, the new one's).
    pub(super) stream_id: Option<String>,
    /// The peer offers dialback on it.
    pub(super) offered: bool,
}

impl Session {
    /// Steps 1–2 over each target in turn, until one authenticates.
    pub(super) async fn connect(&self, trace: &mut Trace) -> Result<Link, OutboundError> {
        let mut walk = Walk::start(&self.ctx, &self.remote, trace).await?;
        let policy = self.ctx.security.load().peer(&self.remote);
        let settings = &self.ctx.settings;
        let mut best: Option<OutboundError> = None;
        let keep = |e: OutboundError, best: &mut Option<OutboundError>| {
            if best.as_ref().is_none_or(|b| e.progress() > b.progress()) {
                *best = Some(e);
            }
        };
        while let Some(opened) = walk
            .next(&self.ctx, &self.local, &self.remote, &policy, trace)
            .await
        {
            let Opened {
                mut conn,
                label,
                header,
                features,
                security,
                ..
            } = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::debug!(remote = %self.remote, "{e}");
                    keep(e.into(), &mut best);
                    continue;
                }
            };
            let started = Instant::now();
            let offered = features.clone();
            let authenticated = tokio::time::timeout(
                settings.negotiation_timeout,
                self.authenticate(
                    &mut conn,
                    &label,
                    header,
                    features,
                    &security,
                    policy.clone(),
                ),
            )
            .await;
            match authenticated {
                Ok(Ok((method, features, bidi, dialback))) => {
                    trace.ok(format!("authenticated by {}", method.as_str()));
                    self.ctx.router.metrics.authenticated(
                        Direction::Outbound,
                        method.as_str(),
                        started.elapsed(),
                    );
                    conn.set_limits(settings.stanza_limits());
                    return Ok(Link {
                        conn,
                        label,
                        method,
                        security,
                        features,
                        offered,
                        bidi,
                        dialback,
                    });
                }
                Ok(Err(e)) => {
                    trace.failed(format!("authentication: {e}"));
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
                    keep(e, &mut best);
                }
                Err(_) => {
                    conn.fail_in_background(StreamErrorCondition::ConnectionTimeout);
                    let e = ConnectError::Timeout {
                        stage: Stage::Authentication,
                        target: label,
                        after: settings.negotiation_timeout,
                    };
                    trace.failed(e.to_string());
                    keep(e.into(), &mut best);
                }
            }
        }
        Err(best.unwrap_or_else(|| {
            ResolveError::NoRecords {
                domain: self.remote.clone(),
            }
            .into()
        }))
    }

    /// Authenticates an opened stream: drives [`Authentication`] (SASL EXTERNAL when it can
    /// work, else or after a refusal dialback), writing what it asks and reading what it waits
    /// for.
    async fn authenticate(
        &self,
        conn: &mut Connection,
        target: &str,
        header: StreamHeader,
        features: Element,
        security: &Security,
        policy: Arc<PeerSecurity>,
    ) -> Result<(AuthMethod, Element, bool, DialbackOnLink), OutboundError> {
        let (mut auth, mut next) = Authentication::start(
            &self.ctx,
            &self.local,
            &self.remote,
            target,
            header,
            features,
            security,
            policy,
        )?;
        loop {
            let out = auth.take_output();
            if !out.is_empty() {
                conn.send(&out);
            }
            next = match next {
                Next::Read => {
                    connect::flush(conn, target).await?;
                    let element = connect::next_element(conn, target).await?;
                    auth.handle_element(&element, &self.ctx)?
                }
                Next::Restart => {
                    // RFC 6120 §6.4.6: a fresh stream after SASL success.
                    conn.restart();
                    let (header, features) =
                        connect::exchange_headers(conn, &self.local, &self.remote, target).await?;
                    auth.handle_features(header, features)?
                }
                Next::Authenticated(method, features) => {
                    let dialback = DialbackOnLink {
                        stream_id: auth.stream_id().map(str::to_owned),
                        offered: auth.dialback_offered(),
                    };
                    return Ok((method, features, auth.bidi(), dialback));
                }
            };
        }
    }
}
