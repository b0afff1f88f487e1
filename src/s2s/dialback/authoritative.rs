//! The authoritative server (XEP-0220 §2.3): a receiving server asks us, with `<db:verify>`
//! on its stream to us, whether a key one of our domains sent it is genuine. We recompute the
//! XEP-0185 key with our secret (any fedgate sharing the secret answers the same) and compare
//! in constant time ([`DialbackSecret::verify`](crate::dialback::DialbackSecret::verify)).
//!
//! - `to`, `from` and `id` are required (else `<improper-addressing/>`);
//! - `to` must be a domain we serve, else a dialback error `<item-not-found/>`;
//! - the answer is `<db:verify type='valid|invalid'/>` with the request's addresses swapped
//!   and its `id`.

use super::{error, verify_answer, DbElement, Verdict};
use crate::jid;
use crate::metrics::DialbackRole;
use crate::s2s::inbound::{Abort, Inbound};
use crate::s2s::negotiate::inbound::{refuse, Refusal};
use crate::s2s::S2sContext;
use crate::xml::error::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::stanza::Stanza;

impl Inbound {
    /// `<db:verify>` from a receiving server: we are the authoritative server.
    pub(in crate::s2s) fn db_verify(&mut self, stanza: &Stanza) -> Result<(), Abort> {
        let answer = answer(&self.ctx, stanza).map_err(Abort::Refused)?;
        self.conn.send(&answer);
        Ok(())
    }
}

/// The answer to a `<db:verify>` (on an inbound stream, or on our outbound one when it is
/// bidirectional, XEP-0288): a verdict, or a dialback error for a `to` we do not serve.
/// `Err` ends the stream.
pub(in crate::s2s) fn answer(ctx: &S2sContext, stanza: &Stanza) -> Result<Vec<u8>, Refusal> {
    let (Some(to), Some(from), Some(id)) = (stanza.to(), stanza.from(), stanza.id()) else {
        return Err(refuse(
            StreamErrorCondition::ImproperAddressing,
            "<db:verify/> needs 'to', 'from' and 'id'",
        ));
    };
    let originating = match jid::normalize_domain(to) {
        Ok(d) if ctx.router.is_local(&d) => d.into_owned(),
        _ => {
            return Ok(error(
                DbElement::Verify,
                to,
                from,
                Some(id),
                StanzaErrorCondition::ItemNotFound,
                None,
            ));
        }
    };
    let key = stanza
        .element()
        .map(|e| e.text().trim().to_string())
        .map_err(|e| refuse(StreamErrorCondition::from(&e), e.to_string()))?;
    let receiving = jid::normalize_domain(from)
        .map(|d| d.into_owned())
        .unwrap_or_else(|_| from.to_string());
    let verdict = Verdict::from_valid(ctx.secret.verify(&receiving, &originating, id, &key));
    ctx.router
        .metrics
        .dialback
        .count(DialbackRole::Authoritative, verdict.result());
    Ok(verify_answer(to, from, id, verdict))
}
