//! XEP-0198 stream management on s2s: acknowledgements, so that a link that drops loses
//! nothing, and resumption, so that what is resent after a drop is never delivered twice.
//!
//! XEP-0198 on s2s is per direction: the initiating server enables it for the stanzas it
//! sends, so each side of a stream plays one role (on an XEP-0288 bidi stream the receiving
//! server's stanzas in the other direction are not counted: they are confirmed by XEP-0199
//! pings instead, see [`bidi`](super::bidi)):
//! - the **receiving** side ([`inbound`](super::inbound)) offers `<sm/>`, answers `<enable/>`,
//!   counts the stanzas it has handled (`h`) and answers `<r/>` with `<a h='…'/>`; when the
//!   stream drops, it keeps `h` in the [`ResumeStore`] for `resume_timeout`, so that the
//!   sender can resume and learn exactly what arrived;
//! - the **sending** side ([`outbound`](super::outbound)) enables it when offered, keeps every
//!   stanza written until it is acknowledged, and after a drop resumes (or, if the peer lost
//!   its state, resends everything unacknowledged on a new stream).
//!
//! # The receiving side on the wire
//! The peer enables nothing for what we send on an inbound stream (bidi included), so every
//! count of ours the peer reports must be 0.
//! 1. `<sm xmlns='urn:xmpp:sm:3'/>` is in the features after TLS (and after a SASL restart),
//!    or in the first ones when the peer may skip TLS: a dialback peer gets no features after
//!    dialback, so it must see the offer before (as Prosody and ejabberd do);
//! 2. `<enable/>` on an authenticated stream (a pair proved by dialback, or SASL EXTERNAL),
//!    once: `<enabled xmlns='urn:xmpp:sm:3'/>`, or with `resume='true'`
//!    `<enabled xmlns='urn:xmpp:sm:3' id='…' resume='true' max='…'/>` (128 random bits in hex;
//!    `max` is `resume_timeout` in whole seconds, at least 1). Before authentication, or a
//!    second time: `<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='…stanzas'/></failed>`
//!    (§3); with `stream_management = false`: `<failed>` with `<feature-not-implemented/>`;
//! 3. each `<message/>`, `<presence/>` and `<iq/>` after that adds 1 to `h`, modulo 2^32, once
//!    it has left the gateway (written to its backend or acknowledged by it, bounced, or
//!    answered here; [`Receiving`] has the rule for a backend that takes nothing), so that a
//!    gateway killed while it holds stanzas leaves them with the sender; `<r/>` gets
//!    `<a xmlns='urn:xmpp:sm:3' h='…'/>` at once, and if that `h` is short of what arrived
//!    before the `<r/>`, one more `<a/>` once it is not. `<r/>` and `<a/>` are ignored without
//!    stream management; with it, an `<a/>` whose `h` is not 0 ends the stream with
//!    `<undefined-condition/>` and `<handled-count-too-high h='…' send-count='0'/>` (§4), and
//!    a count that is not a number with `<bad-format/>`;
//! 4. when fedgate ends the stream (idle, shutdown, a stream error) or answers the peer's
//!    `</stream:stream>`, a last `<a h='…'/>` comes first, after what is in flight had up to
//!    [`SETTLE`](receiving::SETTLE) to leave (also before the count is kept, in 5, or handed over);
//! 5. when the connection drops (no clean close by either side), `h` and the stream's
//!    originating domains are kept for `resume_timeout` ([`ResumeStore::keep`], at most
//!    [`MAX_KEPT`]). On a new authenticated stream, `<resume previd='…' h='0'/>` gets
//!    `<resumed xmlns='urn:xmpp:sm:3' previd='…' h='…'/>` if the stream is authenticated for
//!    each of those domains, and counting goes on from there under the same id. If the old
//!    stream is still open on our side (the sender noticed the drop first), it hands its `h`
//!    over ([`Takeover`]) and ends with `<conflict/>`. Otherwise
//!    `<failed xmlns='urn:xmpp:sm:3' h='0'><item-not-found xmlns='…stanzas'/></failed>`, and the
//!    stream goes on (the sender may enable afresh). A `<resume/>` with `h` above 0 is a
//!    handled-count-too-high error as in 3.

pub mod receiving;
pub mod resume;
pub mod sending;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use receiving::Receiving;
pub use resume::{Registration, ResumeStore, Takeover, MAX_KEPT, TAKEOVER_TIMEOUT};
pub use sending::Carry;

use crate::xml::element::Element;
use crate::xml::error::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::stanza::Stanza;
use crate::xml::{escape_attr, ns};

/// The XEP-0198 namespace (version 3).
pub const NS: &str = crate::xml::ns::SM;

/// Whether stream features offer stream management.
pub fn offered(features: &Element) -> bool {
    features.child("sm", NS).is_some()
}

/// The `h` attribute of an `<a/>`, `<resumed/>` or `<failed/>` (a count modulo 2^32).
pub fn h_of(stanza: &Stanza) -> Option<u32> {
    count_attr(stanza, "h")
}

/// An attribute that is a count (an unsigned 32-bit number), read from the start tag: no tree
/// is built for an `<a/>`.
fn count_attr(stanza: &Stanza, attribute: &str) -> Option<u32> {
    stanza
        .attr(attribute)
        .and_then(|v| v.trim().parse::<u32>().ok())
}

/// A stream management element from the sending side, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `<enable/>`; `resume` when it asks to be able to resume (`resume='true'` or `'1'`).
    Enable {
        /// The sender asks for an id to resume with after a drop.
        resume: bool,
    },
    /// `<resume previd='…' h='…'/>`: `h` counts the stanzas the sender received from us on
    /// the old stream.
    Resume {
        /// The id `<enabled/>` gave the old stream.
        previd: String,
        /// Stanzas of ours the sender received on the old stream, modulo 2^32.
        h: u32,
    },
    /// `<r/>`: how many stanzas have we handled?
    AckRequest,
    /// `<a h='…'/>`: how many of ours the peer handled.
    Ack {
        /// Stanzas of ours the peer has handled, modulo 2^32.
        h: u32,
    },
}

/// Why a stream management element ends the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SmError {
    /// A required attribute is missing or not a count (an unsigned 32-bit number). Fatal:
    /// `<bad-format/>`.
    #[error("<{element}/> needs a valid '{attribute}'")]
    BadAttribute {
        /// The element's name, e.g. `a`.
        element: &'static str,
        /// The attribute that is missing or bad, e.g. `h`.
        attribute: &'static str,
    },
    /// An element a sender never sends (`<enabled/>`, `<resumed/>`, ...). Fatal:
    /// `<unsupported-stanza-type/>`.
    #[error("<{name}/> is not a stream management request")]
    Unexpected {
        /// The element's name as received.
        name: String,
    },
    /// The peer claims to have handled more stanzas than we sent (XEP-0198 §4). Fatal:
    /// `<undefined-condition/>` with `<handled-count-too-high/>`.
    #[error("the peer acknowledged {h} stanzas, but {sent} were sent")]
    HandledCountTooHigh {
        /// The count the peer claimed.
        h: u32,
        /// How many stanzas we sent (modulo 2^32).
        sent: u32,
    },
}

impl From<&SmError> for StreamErrorCondition {
    fn from(e: &SmError) -> StreamErrorCondition {
        match e {
            SmError::BadAttribute { .. } => StreamErrorCondition::BadFormat,
            SmError::Unexpected { .. } => StreamErrorCondition::UnsupportedStanzaType,
            SmError::HandledCountTooHigh { .. } => StreamErrorCondition::UndefinedCondition,
        }
    }
}

impl SmError {
    /// The application-specific condition that goes with the stream error, if any.
    pub fn app_condition(&self) -> Option<String> {
        match self {
            SmError::HandledCountTooHigh { h, sent } => Some(format!(
                "<handled-count-too-high xmlns='{NS}' h='{h}' send-count='{sent}'/>"
            )),
            _ => None,
        }
    }
}

/// Parses an element of [`NS`] sent to the receiving side.
pub fn parse(stanza: &Stanza) -> Result<Request, SmError> {
    let count = |element: &'static str, attribute: &'static str| {
        count_attr(stanza, attribute).ok_or(SmError::BadAttribute { element, attribute })
    };
    match stanza.name() {
        "enable" => Ok(Request::Enable {
            resume: stanza
                .attr("resume")
                .is_some_and(|v| matches!(v.trim(), "true" | "1")),
        }),
        "resume" => Ok(Request::Resume {
            h: count("resume", "h")?,
            previd: stanza
                .attr("previd")
                .filter(|p| !p.is_empty())
                .ok_or(SmError::BadAttribute {
                    element: "resume",
                    attribute: "previd",
                })?
                .into_owned(),
        }),
        "r" => Ok(Request::AckRequest),
        "a" => Ok(Request::Ack {
            h: count("a", "h")?,
        }),
        other => Err(SmError::Unexpected {
            name: other.to_string(),
        }),
    }
}

/// Checks an `h` the peer reports for our stanzas: it lies between what the peer
/// acknowledged before (`acked`) and what we sent (`sent`), counted modulo 2^32 like `h`
/// itself (XEP-0198 §4). On an inbound s2s stream we send no stanzas, so both are 0 there.
pub fn check_handled(h: u32, acked: u32, sent: u32) -> Result<(), SmError> {
    if h.wrapping_sub(acked) <= sent.wrapping_sub(acked) {
        Ok(())
    } else {
        Err(SmError::HandledCountTooHigh { h, sent })
    }
}

/// `<enabled/>`: with `id`, resumable within `max` (whole seconds, at least 1).
pub fn enabled(id: Option<&str>, max: Duration) -> Vec<u8> {
    match id {
        Some(id) => format!(
            "<enabled xmlns='{NS}' id='{}' resume='true' max='{}'/>",
            escape_attr(id),
            max.as_secs().max(1)
        )
        .into_bytes(),
        None => format!("<enabled xmlns='{NS}'/>").into_bytes(),
    }
}

/// `<resumed/>`: the old stream's id and how many of its stanzas were handled.
pub fn resumed(previd: &str, h: u32) -> Vec<u8> {
    format!(
        "<resumed xmlns='{NS}' previd='{}' h='{h}'/>",
        escape_attr(previd)
    )
    .into_bytes()
}

/// `<failed/>` with a stanza error condition, and `h` when the answer is to `<resume/>`.
pub fn failed(condition: StanzaErrorCondition, h: Option<u32>) -> Vec<u8> {
    let h = h.map(|h| format!(" h='{h}'")).unwrap_or_default();
    format!(
        "<failed xmlns='{NS}'{h}><{} xmlns='{}'/></failed>",
        condition.as_str(),
        ns::STANZAS
    )
    .into_bytes()
}

/// `<a h='…'/>`.
pub fn ack(h: u32) -> Vec<u8> {
    format!("<a xmlns='{NS}' h='{h}'/>").into_bytes()
}

/// `<r/>`, from the sending side: how many have you handled?
pub const REQUEST: &[u8] = b"<r xmlns='urn:xmpp:sm:3'/>";

/// `<enable/>` from the sending side, asking to be able to resume.
pub const ENABLE: &[u8] = b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>";

/// `<resume/>` from the sending side: the old stream's id, and how many of the peer's
/// stanzas we handled on it.
pub fn resume(previd: &str, h: u32) -> Vec<u8> {
    format!(
        "<resume xmlns='{NS}' previd='{}' h='{h}'/>",
        escape_attr(previd)
    )
    .into_bytes()
}

/// A `<stream:error/>` for `error`, with its application-specific condition (RFC 6120
/// §4.9.4: after the defined condition and the text).
pub fn stream_error(error: &SmError) -> Vec<u8> {
    let text = error.to_string();
    let mut out = crate::xml::error::stream_error(&error.into(), Some(&text));
    if let Some(app) = error.app_condition() {
        let end = b"</stream:error>";
        out.truncate(out.len() - end.len());
        out.extend_from_slice(app.as_bytes());
        out.extend_from_slice(end);
    }
    out
}
