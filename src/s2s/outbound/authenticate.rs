//! Steps 1–2 of an outbound session: walk the remote domain's targets until a stream opens
//! ([`connect::Walk`]), then authenticate it: SASL EXTERNAL when it can work (XEP-0178), else
//! dialback ([`initiating`]); a refused key or certificate is final for the domain.

use tokio::time::Instant;

use super::{AuthMethod, OutboundError, Session};
use crate::connection::Connection;
use crate::dns::ResolveError;
use crate::metrics::Direction;
use crate::policy::PeerSecurity;
use crate::s2s::connect::{
    self, offers_dialback, offers_external, ConnectError, Opened, Security, Stage, Walk,
};
use crate::s2s::dialback::initiating;
use crate::s2s::trace::Trace;
use crate::xml::element::Element;
use crate::xml::error::{SaslCondition, StreamErrorCondition};
use crate::xml::ns;
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
                self.authenticate(&mut conn, &label, header, features, &security, &policy),
            )
            .await;
            match authenticated {
                Ok(Ok((method, features))) => {
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
                    conn.fail(&StreamErrorCondition::ConnectionTimeout, None)
                        .await;
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
    /// Authenticates an opened stream: SASL EXTERNAL when the peer offers it, we hold a
    /// certificate for our domain that our own trust anchors accept, the policy allows it and
    /// the peer has not refused it before; otherwise (or after a refusal) dialback.
    async fn authenticate(
        &self,
        conn: &mut Connection,
        target: &str,
        header: StreamHeader,
        features: Element,
        security: &Security,
        policy: &PeerSecurity,
    ) -> Result<(AuthMethod, Element), OutboundError> {
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
                    let (_, features) =
                        connect::exchange_headers(conn, &self.local, &self.remote, target).await?;
                    return Ok((AuthMethod::External, features));
                }
                ("failure", ns::SASL) => {
                    metrics
                        .s2s_auth
                        .with_label_values(&["outbound", "external", "failure"])
                        .inc();
                    let named = answer
                        .element()
                        .ok()
                        .and_then(|e| e.children().next().map(|c| c.name.clone()))
                        .unwrap_or_else(|| "failure".into());
                    let condition = SaslCondition::from_name(&named);
                    if condition == Some(SaslCondition::TemporaryAuthFailure) {
                        // Busy (e.g. at its streams-per-domain limit), not a verdict on our
                        // certificate: EXTERNAL is tried again next time.
                        tracing::info!(local = %self.local, remote = %self.remote, "SASL EXTERNAL refused for now ({named}); trying dialback");
                    } else {
                        tracing::info!(local = %self.local, remote = %self.remote, "SASL EXTERNAL refused ({named}); using dialback from now on");
                        self.ctx.external_refused.insert(self.remote.clone());
                    }
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
                        target: target.to_string(),
                        reason: format!("expected a SASL answer, got <{name}/>"),
                    }
                    .into())
                }
            }
        }
        if !policy.allows_dialback(tls) {
            return Err(OutboundError::NoAuthentication {
                target: target.to_string(),
                reason: if tls {
                    "SASL EXTERNAL is required but not available".into()
                } else {
                    "dialback without TLS is not allowed".into()
                },
            });
        }
        if !offers_dialback(&header, &features) {
            return Err(OutboundError::NoAuthentication {
                target: target.to_string(),
                reason: "the peer offers no Server Dialback and no usable SASL EXTERNAL".into(),
            });
        }
        let Some(stream_id) = header.id.take() else {
            return Err(ConnectError::Stream {
                target: target.to_string(),
                reason: "the peer's stream header has no id, so dialback is impossible".into(),
            }
            .into());
        };
        let metrics = &self.ctx.router.metrics;
        let key = self.ctx.secret.key(&self.remote, &self.local, &stream_id);
        initiating::authenticate(conn, target, &self.local, &self.remote, &key, metrics)
            .await?
            .map_err(|refusal| OutboundError::DialbackRefused {
                remote: self.remote.clone(),
                refusal,
            })?;
        Ok((AuthMethod::Dialback, features))
    }
}
