//! Connect-back (XEP-0220 §2.3): as receiving server, ask the originating domain's
//! authoritative server whether the key it was given is genuine.
//!
//! Steps:
//! 1. resolve the originating domain's targets (as for outbound) and [open](crate::s2s::connect) a
//!    stream to one, with TLS and the certificate rules of the originating domain;
//! 2. send `<db:verify from=receiving to=originating id=stream_id>key</db:verify>`;
//! 3. wait for the `<db:verify type='valid|invalid'/>` answering exactly that request, then
//!    close. Anything unsolicited ends the attempt.

use std::sync::Arc;

use super::{verify_request, Answer, Verdict};
use crate::connection::Connection;
use crate::s2s::connect;
use crate::s2s::trace::Trace;
use crate::s2s::S2sContext;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::stanza::Kind;

/// Why a key could not be verified; answered with a dialback error (XEP-0220 §2.4) carrying
/// [`VerifyError::condition`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The originating domain has no target that resolves: answered with
    /// `<remote-server-not-found/>`.
    #[error("{0}")]
    Resolve(#[from] crate::dns::ResolveError),
    /// No target of the authoritative server gave an answer: none could be reached, or each
    /// failed before answering. Answered with `<remote-server-timeout/>`.
    #[error("cannot reach the authoritative server of {domain}: {reason}")]
    Unreachable {
        /// The originating domain.
        domain: String,
        /// Why the last target tried failed.
        reason: String,
    },
    /// The authoritative server answered the `<db:verify/>` with `type='error'` (or with no
    /// type it knows): final, no other target is asked. Answered with
    /// `<remote-server-timeout/>`.
    #[error("the authoritative server of {domain} answered with an error: {reason}")]
    Refused {
        /// The originating domain.
        domain: String,
        /// The `type` the answer carried.
        reason: String,
    },
    /// The whole verification took longer than `dialback_timeout`. Answered with
    /// `<remote-server-timeout/>`.
    #[error("no answer from the authoritative server of {domain} in time")]
    Timeout {
        /// The originating domain.
        domain: String,
    },
}

impl VerifyError {
    /// The stanza error condition of the dialback error the originating server gets (XEP-0220
    /// §2.4): not-found for DNS, timeout for everything else.
    pub fn condition(&self) -> StanzaErrorCondition {
        match self {
            VerifyError::Resolve(_) => StanzaErrorCondition::RemoteServerNotFound,
            VerifyError::Timeout { .. }
            | VerifyError::Unreachable { .. }
            | VerifyError::Refused { .. } => StanzaErrorCondition::RemoteServerTimeout,
        }
    }
}

/// Asks `originating`'s authoritative server whether `key` is valid for the stream `stream_id`
/// that `originating` opened to `receiving`.
pub async fn verify(
    ctx: Arc<S2sContext>,
    receiving: String,
    originating: String,
    stream_id: String,
    key: String,
) -> Result<Verdict, VerifyError> {
    let timeout = ctx.settings.dialback_timeout;
    match tokio::time::timeout(
        timeout,
        ask(&ctx, &receiving, &originating, &stream_id, &key),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(VerifyError::Timeout {
            domain: originating,
        }),
    }
}

async fn ask(
    ctx: &S2sContext,
    receiving: &str,
    originating: &str,
    stream_id: &str,
    key: &str,
) -> Result<Verdict, VerifyError> {
    let mut trace = Trace::new();
    let mut walk = connect::Walk::start(ctx, originating, &mut trace).await?;
    // The authoritative server is held to the same TLS rules as the domain's other servers.
    let policy = ctx.security.load().peer(originating);
    let mut last = String::from("no address");
    // When every candidate failed at DNS, the domain has nowhere to connect to.
    let mut unresolved: Option<crate::dns::ResolveError> = None;
    let mut reached = false;
    while let Some(opened) = walk
        .next(ctx, receiving, originating, &policy, &mut trace)
        .await
    {
        let mut opened = match opened {
            Ok(opened) => opened,
            Err(connect::ConnectError::Resolve(e)) => {
                last = e.to_string();
                unresolved.get_or_insert(e);
                continue;
            }
            Err(e) => {
                last = e.to_string();
                reached = true;
                continue;
            }
        };
        reached = true;
        let answer = ask_on(
            &mut opened.conn,
            &opened.label,
            receiving,
            originating,
            stream_id,
            key,
        )
        .await;
        opened.conn.close().await;
        match answer {
            Ok(verdict) => return Ok(verdict),
            Err(Ask::Refused(reason)) => {
                return Err(VerifyError::Refused {
                    domain: originating.to_string(),
                    reason,
                })
            }
            Err(Ask::Failed(reason)) => last = reason,
        }
    }
    tracing::debug!(originating, "dialback verification attempt:\n{trace}");
    if let (Some(e), false) = (unresolved, reached) {
        return Err(e.into());
    }
    Err(VerifyError::Unreachable {
        domain: originating.to_string(),
        reason: last,
    })
}

/// What one instance of a domain answered in [`ask_each`].
#[derive(Debug)]
pub struct InstanceAnswer {
    /// The target as the walk names it (host, port, address).
    pub label: String,
    /// Its verdict on each key, in the order given; `Err` says why there is none.
    pub verdicts: Result<Vec<Verdict>, String>,
}

/// Asks every target of `originating` (not only the first that answers, as [`verify`] does)
/// to verify each of `keys` for the stream `stream_id` to `receiving`: whether all instances
/// of a deployment share one dialback secret (`fedgate check remote` on one of our own
/// domains).
pub async fn ask_each(
    ctx: &S2sContext,
    receiving: &str,
    originating: &str,
    stream_id: &str,
    keys: &[String],
) -> Result<Vec<InstanceAnswer>, crate::dns::ResolveError> {
    let mut trace = Trace::new();
    let mut walk = connect::Walk::start(ctx, originating, &mut trace).await?;
    let policy = ctx.security.load().peer(originating);
    let mut answers = Vec::new();
    while let Some(opened) = walk
        .next(ctx, receiving, originating, &policy, &mut trace)
        .await
    {
        let mut opened = match opened {
            Ok(opened) => opened,
            Err(e) => {
                answers.push(InstanceAnswer {
                    label: e.to_string(),
                    verdicts: Err("not reached".into()),
                });
                continue;
            }
        };
        let mut verdicts = Ok(Vec::new());
        for key in keys {
            let asked = ask_on(
                &mut opened.conn,
                &opened.label,
                receiving,
                originating,
                stream_id,
                key,
            );
            match tokio::time::timeout(ctx.settings.dialback_timeout, asked).await {
                Ok(Ok(v)) => {
                    if let Ok(list) = &mut verdicts {
                        list.push(v);
                    }
                }
                Ok(Err(Ask::Refused(why) | Ask::Failed(why))) => {
                    verdicts = Err(why);
                    break;
                }
                Err(_) => {
                    verdicts = Err("no answer in time".into());
                    break;
                }
            }
        }
        opened.conn.close().await;
        answers.push(InstanceAnswer {
            label: opened.label,
            verdicts,
        });
    }
    Ok(answers)
}

enum Ask {
    /// The server answered, with an error: final.
    Refused(String),
    /// This target failed (the text names it); try the next.
    Failed(String),
}

/// Steps 2 and 3 on a stream opened to `target`. A stream error or close instead of the
/// answer is read as [`connect`] reads it, so the peer's condition is in the failure.
async fn ask_on(
    conn: &mut Connection,
    target: &str,
    receiving: &str,
    originating: &str,
    stream_id: &str,
    key: &str,
) -> Result<Verdict, Ask> {
    let failed = |e: connect::ConnectError| Ask::Failed(e.to_string());
    conn.send(&verify_request(receiving, originating, stream_id, key));
    connect::flush(conn, target).await.map_err(failed)?;
    let s = connect::next_element(conn, target).await.map_err(failed)?;
    if s.kind() != Kind::DbVerify {
        return Err(Ask::Failed(format!(
            "{target}: expected <db:verify/>, got <{}/>",
            s.name()
        )));
    }
    // XEP-0220 §2.4: the answer must match our request exactly.
    if s.id() != Some(stream_id) || s.from() != Some(originating) || s.to() != Some(receiving) {
        return Err(Ask::Failed(format!(
            "{target}: unsolicited db:verify answer"
        )));
    }
    match Answer::parse(s.type_()) {
        Some(Answer::Verdict(verdict)) => Ok(verdict),
        Some(Answer::Error) | None => Err(Ask::Refused(format!(
            "db:verify type={}",
            s.type_().unwrap_or("(none)")
        ))),
    }
}
