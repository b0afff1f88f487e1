//! The receiving server (XEP-0220 §2.2): an originating server sends `<db:result>` on its
//! stream to us.
//!
//! 1. `Inbound::db_result`: `to` a domain we serve (else a dialback error
//!    `<item-not-found/>`), `from` a domain (else `invalid-from`) that our federation policy
//!    admits and that is not ours, dialback allowed for it over this stream's security, room
//!    for the pair on the stream (`Inbound::pair_refused`: `max_domain_pairs_per_stream`,
//!    `max_streams_per_domain`), a valid certificate when the peer's policy needs one; then
//!    either the certificate already proves the domain (XEP-0344 §2.4) or the key goes to the
//!    authoritative server ([`connect_back`]), bounded by
//!    `max_pending_verifications` per stream and in all;
//! 2. `Inbound::verified`: the verdict goes back as `<db:result type='valid|invalid'/>`, or
//!    a dialback error when the key could not be verified; a valid one authenticates the pair
//!    (its `max_streams_per_domain` slot taken now), an invalid one ends the stream
//!    (`<not-authorized/>`, §2.2.1).

use super::connect_back::{self, VerifyError};
use super::{error, result_answer, DbElement, Verdict};
use crate::jid;
use crate::metrics::{DialbackResult, DialbackRole, Direction};
use crate::s2s::inbound::{Abort, Inbound};
use crate::s2s::limits::Limit;
use crate::s2s::negotiate::inbound::refuse;
use crate::s2s::outbound::AuthMethod;
use crate::tls::CertVerdict;
use crate::xml::error::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::stanza::Stanza;
use tokio::sync::mpsc;

/// A finished verification: (receiving, originating, outcome).
pub(in crate::s2s) type Verified = (String, String, Result<Verdict, VerifyError>);

impl Inbound {
    /// `<db:result>` from an initiating server: start verifying its key, or accept it at once
    /// when the TLS certificate already proves the sender domain (XEP-0344 §2.4).
    pub(in crate::s2s) fn db_result(
        &mut self,
        stanza: &Stanza,
        results: &mpsc::Sender<Box<Verified>>,
    ) -> Result<Option<Verified>, Abort> {
        let (Some(to), Some(from)) = (stanza.to(), stanza.from()) else {
            return Err(Abort::Refused(refuse(
                StreamErrorCondition::ImproperAddressing,
                "<db:result/> needs 'to' and 'from'",
            )));
        };
        let originating = match jid::normalize_domain(from) {
            Ok(d) => d.into_owned(),
            Err(_) => {
                return Err(Abort::Refused(refuse(
                    StreamErrorCondition::InvalidFrom,
                    format!("'{from}' is not a domain"),
                )))
            }
        };
        let receiving = match jid::normalize_domain(to) {
            Ok(d) if self.ctx.router.is_local(&d) => d.into_owned(),
            _ => {
                // XEP-0220 §2.4: a dialback error, not a stream error.
                self.result_error(to, from, StanzaErrorCondition::ItemNotFound, None);
                return Ok(None);
            }
        };
        if let Err(refused) = self.ctx.router.admit(&originating, Direction::Inbound) {
            tracing::info!(peer = %self.conn.peer, "{refused}");
            self.ctx
                .registry
                .failed(&originating, Direction::Inbound, refused.to_string());
            self.result_error(to, from, StanzaErrorCondition::PolicyViolation, None);
            return Ok(None);
        }
        if self.ctx.router.is_local(&originating) {
            self.result_error(to, from, StanzaErrorCondition::NotAcceptable, None);
            return Ok(None);
        }
        let tls = self.negotiation.security().tls.is_some();
        let policy = self.ctx.security.load().peer(&originating);
        if !policy.allows_dialback(tls) {
            tracing::info!(peer = %self.conn.peer, remote = %originating, tls, "dialback refused by policy for this peer");
            self.result_error(to, from, StanzaErrorCondition::PolicyViolation, None);
            return Ok(None);
        }
        if let Some(why) = self.pair_refused(&receiving, &originating) {
            self.result_error(to, from, StanzaErrorCondition::PolicyViolation, Some(&why));
            return Ok(None);
        }
        let verdict = if self.negotiation.remote() == Some(originating.as_str()) {
            self.negotiation.security().verdict.clone()
        } else {
            self.negotiation.verdict_for(&self.ctx, &originating)
        };
        let certified = verdict.as_ref().is_some_and(CertVerdict::is_valid);
        if policy.needs_valid_certificate() && !certified {
            let why = verdict.map_or_else(|| "no TLS".to_string(), |v| v.to_string());
            tracing::info!(peer = %self.conn.peer, remote = %originating, "dialback refused: a valid certificate is required ({why})");
            self.result_error(to, from, StanzaErrorCondition::PolicyViolation, None);
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
                self.result_error(
                    to,
                    from,
                    StanzaErrorCondition::ResourceConstraint,
                    Some(&why),
                );
                return Ok(None);
            }
        };
        let key = stanza
            .element()
            .map(|e| e.text().trim().to_string())
            .map_err(|e| Abort::Refused(refuse(StreamErrorCondition::from(&e), e.to_string())))?;
        self.pending += 1;
        let ctx = self.ctx.clone();
        let results = results.clone();
        let stream_id = self.negotiation.stream_id().to_string();
        self.ctx.tracker.spawn(async move {
            let outcome =
                connect_back::verify(ctx, receiving.clone(), originating.clone(), stream_id, key)
                    .await;
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
    pub(in crate::s2s) async fn verified(
        &mut self,
        (receiving, originating, outcome): Verified,
    ) -> Result<(), Abort> {
        let metrics = &self.ctx.router.metrics;
        let verdict = match outcome {
            Ok(verdict) => verdict,
            Err(e) => {
                metrics
                    .dialback
                    .count(DialbackRole::Receiving, DialbackResult::Error);
                tracing::info!(peer = %self.conn.peer, remote = %originating, "dialback verification failed: {e}");
                self.ctx.registry.failed(
                    &originating,
                    Direction::Inbound,
                    format!(
                        "could not verify the dialback key from {}: {e}",
                        self.conn.peer
                    ),
                );
                self.result_error(&receiving, &originating, e.condition(), None);
                return self.conn.flush().await.map_err(|_| Abort::Gone);
            }
        };
        if verdict == Verdict::Valid {
            if let Err(why) = self.admit(&originating) {
                // Streams of the domain were authenticated while this one was verified.
                self.result_error(
                    &receiving,
                    &originating,
                    StanzaErrorCondition::PolicyViolation,
                    Some(&why),
                );
                return self.conn.flush().await.map_err(|_| Abort::Gone);
            }
        }
        match verdict {
            Verdict::Valid => {
                self.authenticate(receiving.clone(), originating.clone(), AuthMethod::Dialback);
            }
            Verdict::Invalid => {
                tracing::warn!(peer = %self.conn.peer, local = %receiving, remote = %originating, "dialback key refused by the authoritative server: spoofing attempt?");
                self.ctx.registry.failed(
                    &originating,
                    Direction::Inbound,
                    format!("the dialback key from {} was refused by {originating}'s authoritative server", self.conn.peer),
                );
            }
        }
        let metrics = &self.ctx.router.metrics;
        metrics
            .dialback
            .count(DialbackRole::Receiving, verdict.result());
        metrics.s2s_auth.count(
            Direction::Inbound,
            AuthMethod::Dialback,
            verdict == Verdict::Valid,
        );
        self.conn
            .send(&result_answer(&receiving, &originating, verdict));
        self.conn.flush().await.map_err(|_| Abort::Gone)?;
        if verdict == Verdict::Invalid {
            // XEP-0220 §2.2.1: after an invalid result the stream MUST be closed.
            return Err(Abort::Refused(refuse(
                StreamErrorCondition::NotAuthorized,
                format!("the dialback key for {originating} is invalid"),
            )));
        }
        Ok(())
    }

    /// A `<db:result type='error'/>` from `from` (the domain the request was addressed to) to
    /// `to`, with a text saying why when there is more to say than the condition.
    fn result_error(
        &mut self,
        from: &str,
        to: &str,
        condition: StanzaErrorCondition,
        text: Option<&str>,
    ) {
        self.conn
            .send(&error(DbElement::Result, from, to, None, condition, text));
    }
}
