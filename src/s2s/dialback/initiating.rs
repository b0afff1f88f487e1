//! The initiating side (XEP-0220 §2.1): on our outbound stream, we prove our domain by
//! sending a key the receiving server verifies with our authoritative server.
//!
//! 1. send `<db:result from=local to=remote>key</db:result>`
//!    ([`result_request`](super::result_request)), the key computed for the peer's stream id
//!    ([`DialbackSecret::key`](crate::dialback::DialbackSecret::key)); the
//!    [outbound negotiation](crate::s2s::negotiate::outbound) writes it and reads the answer;
//! 2. [`answer`]: the `<db:result>` answering exactly that pair (§2.1.2: anything else ends
//!    the attempt as unsolicited);
//! 3. `type='valid'`: the pair is authenticated; `type='invalid'` or a dialback error
//!    (§2.4): a [`DialbackRefusal`], final for the domain.

use super::{Answer, Verdict};
use crate::metrics::{AuthMethod, DialbackResult, DialbackRole, Direction, Metrics};
use crate::s2s::connect::ConnectError;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::ns;
use crate::xml::stanza::{Kind, Stanza};

/// Why a receiving server did not accept our dialback key (XEP-0220 §2.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialbackRefusal {
    /// `type='invalid'`: the authoritative server refused the key.
    Invalid,
    /// `type='error'` (XEP-0220 §2.4), with its condition when it names a defined one.
    Error(Option<StanzaErrorCondition>),
    /// A missing or unknown `type`, as sent (empty when missing).
    Unknown(String),
}

impl DialbackRefusal {
    /// The `fedgate_dialback_total` result it is counted as.
    pub fn result(&self) -> DialbackResult {
        match self {
            DialbackRefusal::Invalid => DialbackResult::Invalid,
            DialbackRefusal::Error(_) | DialbackRefusal::Unknown(_) => DialbackResult::Error,
        }
    }
}

impl std::fmt::Display for DialbackRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialbackRefusal::Invalid => f.write_str("invalid"),
            DialbackRefusal::Error(Some(condition)) => write!(f, "error: {condition}"),
            DialbackRefusal::Error(None) => f.write_str("error"),
            DialbackRefusal::Unknown(type_) => f.write_str(type_),
        }
    }
}

/// Steps 2–3: the element the receiving server answered our `<db:result>` with. `Err` when it
/// is not the answer for our pair (the stream fails); `Ok(Err)` when it refused our key.
pub fn answer(
    s: &Stanza,
    target: &str,
    local: &str,
    remote: &str,
    metrics: &Metrics,
) -> Result<Result<(), DialbackRefusal>, ConnectError> {
    if s.kind() != Kind::DbResult {
        return Err(ConnectError::Stream {
            target: target.to_string(),
            reason: format!("unexpected <{}/> during dialback", s.name()),
        });
    }
    // XEP-0220 §2.1.2: the answer must be for the pair we asked about.
    if s.from() != Some(remote) || s.to() != Some(local) {
        return Err(ConnectError::Stream {
            target: target.to_string(),
            reason: "unsolicited dialback result".into(),
        });
    }
    let refusal = match Answer::parse(s.type_()) {
        Some(Answer::Verdict(Verdict::Valid)) => None,
        Some(Answer::Verdict(Verdict::Invalid)) => Some(DialbackRefusal::Invalid),
        Some(Answer::Error) => Some(DialbackRefusal::Error(s.element().ok().and_then(|e| {
            e.child("error", ns::SERVER)
                .or_else(|| e.child("error", ns::DIALBACK))
                .and_then(|err| err.children().next())
                .and_then(|c| StanzaErrorCondition::from_name(&c.name))
        }))),
        None => Some(DialbackRefusal::Unknown(
            s.type_().unwrap_or_default().to_string(),
        )),
    };
    let result = refusal
        .as_ref()
        .map_or(DialbackResult::Valid, DialbackRefusal::result);
    metrics.dialback.count(DialbackRole::Originating, result);
    metrics
        .s2s_auth
        .count(Direction::Outbound, AuthMethod::Dialback, refusal.is_none());
    Ok(match refusal {
        None => Ok(()),
        Some(refusal) => Err(refusal),
    })
}
