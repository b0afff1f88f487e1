//! Server Dialback (XEP-0220, keys per XEP-0185): every role fedgate plays, in one place.
//!
//! A stream from an originating server to a receiving server is authenticated for one
//! (receiving, originating) domain pair at a time; several pairs may share a stream
//! (piggybacking, XEP-0220 §2.4).
//! 1. [`initiating`]: on our outbound stream we are the originating server's initiating side:
//!    we send `<db:result from=local to=remote>key</db:result>` and wait for the verdict on
//!    exactly that pair;
//! 2. [`receiving`]: on an inbound stream we are the receiving server: a `<db:result>` is
//!    checked (addresses, policy, limits, a certificate that already proves the domain,
//!    XEP-0344) and its key verified by [`connect_back`];
//! 3. [`connect_back`]: the receiving server asks the originating domain's authoritative
//!    server, on a stream of its own, whether the key is genuine (`<db:verify>`);
//! 4. [`authoritative`]: on an inbound stream we are the authoritative server: a `<db:verify>`
//!    is answered by recomputing the key with our secret.
//!
//! The keys themselves (HMAC-SHA256 of the shared secret, constant-time comparison) are
//! [`crate::dialback`], a service below the sessions; this module holds the wire elements
//! and the roles. The receiving and authoritative roles are methods of the inbound session,
//! whose stream state (pairs, limits, certificate verdicts) they read and change.

pub mod authoritative;
pub mod connect_back;
pub mod initiating;
pub mod receiving;

use crate::xml::error::{write_stanza_error, StanzaErrorCondition};
use crate::xml::escape_attr;

/// A dialback key's verdict: what the authoritative server says of it, and what the receiving
/// server answers in `type` (XEP-0220 §2.1.2, §2.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key is genuine: the peer may send as the domain.
    Valid,
    /// The key is not genuine: the peer is not authorized for the domain.
    Invalid,
}

impl Verdict {
    /// The `type` attribute on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
        }
    }

    /// The `fedgate_dialback_total` result it is counted as.
    pub fn result(self) -> crate::metrics::DialbackResult {
        match self {
            Verdict::Valid => crate::metrics::DialbackResult::Valid,
            Verdict::Invalid => crate::metrics::DialbackResult::Invalid,
        }
    }

    /// A valid key when `valid`.
    pub fn from_valid(valid: bool) -> Verdict {
        if valid {
            Verdict::Valid
        } else {
            Verdict::Invalid
        }
    }
}

/// The `type` of a dialback answer (XEP-0220 §2.1.2, §2.4): a verdict, or a dialback error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `type='valid'` or `type='invalid'`.
    Verdict(Verdict),
    /// `type='error'`: no verdict could be reached (XEP-0220 §2.4).
    Error,
}

impl Answer {
    /// `None` for a missing or unknown `type`.
    pub fn parse(type_: Option<&str>) -> Option<Answer> {
        match type_? {
            "valid" => Some(Answer::Verdict(Verdict::Valid)),
            "invalid" => Some(Answer::Verdict(Verdict::Invalid)),
            "error" => Some(Answer::Error),
            _ => None,
        }
    }
}

/// Which dialback element an answer or error is (XEP-0220 §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbElement {
    /// `<db:result/>`: between the originating and the receiving server.
    Result,
    /// `<db:verify/>`: between the receiving and the authoritative server.
    Verify,
}

impl DbElement {
    fn name(self) -> &'static str {
        match self {
            DbElement::Result => "result",
            DbElement::Verify => "verify",
        }
    }
}

/// `<db:result from=originating to=receiving>key</db:result>` (XEP-0220 §2.1.1).
pub fn result_request(from: &str, to: &str, key: &str) -> Vec<u8> {
    format!(
        "<db:result from='{}' to='{}'>{}</db:result>",
        escape_attr(from),
        escape_attr(to),
        key
    )
    .into_bytes()
}

/// The receiving server's verdict: `<db:result from=receiving to=originating type=…/>`
/// (XEP-0220 §2.2.1).
pub fn result_answer(from: &str, to: &str, verdict: Verdict) -> Vec<u8> {
    format!(
        "<db:result from='{}' to='{}' type='{}'/>",
        escape_attr(from),
        escape_attr(to),
        verdict.as_str()
    )
    .into_bytes()
}

/// `<db:verify from=receiving to=originating id=stream_id>key</db:verify>` (XEP-0220 §2.3.1).
pub fn verify_request(from: &str, to: &str, id: &str, key: &str) -> Vec<u8> {
    format!(
        "<db:verify from='{}' to='{}' id='{}'>{}</db:verify>",
        escape_attr(from),
        escape_attr(to),
        escape_attr(id),
        key
    )
    .into_bytes()
}

/// The authoritative server's verdict: `<db:verify from to id type=…/>` (XEP-0220 §2.3.2).
pub fn verify_answer(from: &str, to: &str, id: &str, verdict: Verdict) -> Vec<u8> {
    format!(
        "<db:verify from='{}' to='{}' id='{}' type='{}'/>",
        escape_attr(from),
        escape_attr(to),
        escape_attr(id),
        verdict.as_str()
    )
    .into_bytes()
}

/// A dialback error (XEP-0220 §2.4): `from` is the domain the request was addressed to;
/// `text`, when given, says why (a limit and its key).
pub fn error(
    element: DbElement,
    from: &str,
    to: &str,
    id: Option<&str>,
    condition: StanzaErrorCondition,
    text: Option<&str>,
) -> Vec<u8> {
    let element = element.name();
    let id = id
        .map(|id| format!(" id='{}'", escape_attr(id)))
        .unwrap_or_default();
    let mut out = format!(
        "<db:{element} from='{}' to='{}'{id} type='error'>",
        escape_attr(from),
        escape_attr(to)
    )
    .into_bytes();
    write_stanza_error(&mut out, condition, text);
    out.extend_from_slice(format!("</db:{element}>").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialback_answer_type_is_a_verdict_an_error_or_nothing_we_know() {
        assert_eq!(
            Answer::parse(Some("valid")),
            Some(Answer::Verdict(Verdict::Valid))
        );
        assert_eq!(
            Answer::parse(Some("invalid")),
            Some(Answer::Verdict(Verdict::Invalid))
        );
        assert_eq!(Answer::parse(Some("error")), Some(Answer::Error));
        assert_eq!(Answer::parse(Some("Valid")), None);
        assert_eq!(Answer::parse(None), None);
        assert_eq!(Verdict::from_valid(true).as_str(), "valid");
        assert_eq!(Verdict::from_valid(false).as_str(), "invalid");
    }

    #[test]
    fn wire_elements() {
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        assert_eq!(
            text(result_request("a.test", "b.test", "k")),
            "<db:result from='a.test' to='b.test'>k</db:result>"
        );
        assert_eq!(
            text(result_answer("b.test", "a.test", Verdict::Invalid)),
            "<db:result from='b.test' to='a.test' type='invalid'/>"
        );
        assert_eq!(
            text(verify_answer("a.test", "b.test", "i'd", Verdict::Valid)),
            "<db:verify from='a.test' to='b.test' id='i&apos;d' type='valid'/>"
        );
        assert_eq!(
            text(error(
                DbElement::Result,
                "b.test",
                "a.test",
                None,
                StanzaErrorCondition::ResourceConstraint,
                Some("busy"),
            )),
            "<db:result from='b.test' to='a.test' type='error'><error type='wait'>\
             <resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>busy</text></error></db:result>"
        );
        assert!(text(error(
            DbElement::Verify,
            "a.test",
            "b.test",
            Some("id1"),
            StanzaErrorCondition::ItemNotFound,
            None,
        ))
        .starts_with("<db:verify from='a.test' to='b.test' id='id1' type='error'>"));
    }
}
