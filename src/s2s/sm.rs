//! XEP-0198 stream management on s2s: acknowledgements, so that a link that drops loses
//! nothing, and resumption, so that what is resent after a drop is never delivered twice.
//!
//! On s2s a stream carries stanzas one way (XEP-0288 is not negotiated), so each side plays
//! one role:
//! - the **receiving** side ([`inbound`](super::inbound)) offers `<sm/>`, answers `<enable/>`,
//!   counts the stanzas it has handled (`h`) and answers `<r/>` with `<a h='…'/>`; when the
//!   stream drops, it keeps `h` in the [`ResumeStore`] for `resume_timeout`, so that the
//!   sender can resume and learn exactly what arrived;
//! - the **sending** side ([`outbound`](super::outbound)) enables it when offered, keeps every
//!   stanza written until it is acknowledged, and after a drop resumes (or, if the peer lost
//!   its state, resends everything unacknowledged on a new stream).
//!
//! # The receiving side on the wire
//! fedgate sends no stanzas on an inbound stream, so every count of ours the peer reports
//! must be 0.
//! 1. `<sm xmlns='urn:xmpp:sm:3'/>` is in the features after TLS (and after a SASL restart),
//!    or in the first ones when the peer may skip TLS: a dialback peer gets no features after
//!    dialback, so it must see the offer before (as Prosody and ejabberd do);
//! 2. `<enable/>` on an authenticated stream (a pair proved by dialback, or SASL EXTERNAL),
//!    once: `<enabled xmlns='urn:xmpp:sm:3'/>`, or with `resume='true'`
//!    `<enabled xmlns='urn:xmpp:sm:3' id='…' resume='true' max='…'/>` (128 random bits in hex;
//!    `max` is `resume_timeout` in whole seconds, at least 1). Before authentication, or a
//!    second time: `<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='…stanzas'/></failed>`
//!    (§3); with `stream_management = false`: `<failed>` with `<feature-not-implemented/>`;
//! 3. each `<message/>`, `<presence/>` and `<iq/>` handled after that (routed, bounced, or an
//!    answer to our ping) adds 1 to `h`, modulo 2^32 ([`Receiving`]); `<r/>` gets
//!    `<a xmlns='urn:xmpp:sm:3' h='…'/>` at once. `<r/>` and `<a/>` are ignored without
//!    stream management; with it, an `<a/>` whose `h` is not 0 ends the stream with
//!    `<undefined-condition/>` and `<handled-count-too-high h='…' send-count='0'/>` (§4), and
//!    a count that is not a number with `<bad-format/>`;
//! 4. when fedgate ends the stream (idle, shutdown, a stream error) or answers the peer's
//!    `</stream:stream>`, a last `<a h='…'/>` comes first;
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

use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::router::next_session_id;
use crate::xml::element::Element;
use crate::xml::error::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::stanza::Stanza;
use crate::xml::{escape_attr, ns};

/// The XEP-0198 namespace (version 3).
pub const NS: &str = "urn:xmpp:sm:3";

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

/// What a dropped inbound stream leaves for its resumption.
#[derive(Debug, Clone)]
pub struct Resumable {
    /// Stanzas handled on the stream.
    pub h: u32,
    /// The originating domains the stream was authenticated for; a resuming stream must be
    /// authenticated for each of them too, so that no one else can take over the counters.
    pub domains: Vec<String>,
    pub expires: Instant,
}

/// Counters of dropped inbound streams, by their stream management id, and the live streams
/// that may still be resumed elsewhere.
#[derive(Default)]
pub struct ResumeStore {
    entries: DashMap<String, Resumable>,
    live: Live,
}

impl ResumeStore {
    /// Keeps `h` of a dropped stream for `ttl`. Expired counters are pruned when the store is
    /// full (so that a burst of drops costs O(1) each); when it is still full, about
    /// [`MAX_KEPT`] entries, the counters are not kept.
    pub fn keep(&self, id: &str, h: u32, domains: Vec<String>, ttl: Duration) {
        self.keep_at(Instant::now(), id, h, domains, ttl)
    }

    /// [`ResumeStore::keep`] at `now` (a clock tests can set).
    fn keep_at(&self, now: Instant, id: &str, h: u32, domains: Vec<String>, ttl: Duration) {
        if self.entries.len() >= MAX_KEPT {
            self.entries.retain(|_, r| r.expires > now);
            if self.entries.len() >= MAX_KEPT && !self.entries.contains_key(id) {
                tracing::warn!(
                    "{MAX_KEPT} dropped s2s streams already await resumption: not keeping another"
                );
                return;
            }
        }
        self.entries.insert(
            id.to_string(),
            Resumable {
                h,
                domains,
                expires: now + ttl,
            },
        );
    }

    /// Takes the counters kept for `id`, if they have not expired and `authenticated` holds
    /// for each of their domains. Counters for other domains stay (their owner may still
    /// come); expired ones found here are dropped.
    pub fn take(&self, id: &str, authenticated: impl Fn(&str) -> bool) -> Option<Resumable> {
        self.take_at(Instant::now(), id, authenticated)
    }

    /// [`ResumeStore::take`] at `now`.
    fn take_at(
        &self,
        now: Instant,
        id: &str,
        authenticated: impl Fn(&str) -> bool,
    ) -> Option<Resumable> {
        let (_, r) = self.entries.remove_if(id, |_, r| {
            r.expires <= now || r.domains.iter().all(|d| authenticated(d))
        })?;
        (r.expires > now).then_some(r)
    }
}

/// Counters kept for resumption at most; beyond this, dropped streams are not resumable (their
/// senders resend what was unacknowledged on a new stream instead). Bounds memory when many
/// links drop at once (about 100 bytes each).
pub const MAX_KEPT: usize = 10_000;

/// How long a resuming stream waits for the live stream that still holds its counters (a
/// link that died silently on our side) to hand them over.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// The live streams with resumption enabled, by id, so that a resumption can take over one
/// whose death we have not noticed yet (the sender usually notices first: a NAT that forgets
/// the link drops packets silently, and our side only learns when a write times out).
#[derive(Default)]
struct Live {
    streams: DashMap<String, LiveStream>,
}

struct LiveStream {
    /// Which registration this is: a stream only ever removes its own.
    session: u64,
    takeover: mpsc::Sender<Takeover>,
}

/// A resuming stream's request to the live stream that holds its counters.
#[derive(Debug)]
pub struct Takeover {
    /// The originating domains authenticated on the resuming stream.
    pub domains: Vec<String>,
    /// For the live stream's `h`, sent only if each of its domains is in `domains`; the live
    /// stream then ends without handling anything more.
    pub reply: oneshot::Sender<u32>,
}

/// A live stream's registration: where takeovers arrive, until [`ResumeStore::unregister`].
pub struct Registration {
    pub session: u64,
    pub takeovers: mpsc::Receiver<Takeover>,
}

impl ResumeStore {
    /// Registers a live stream with resumption enabled under `id`, replacing any earlier one
    /// (the stream it resumed).
    pub fn register(&self, id: &str) -> Registration {
        let session = next_session_id();
        let (takeover, takeovers) = mpsc::channel(1);
        self.live
            .streams
            .insert(id.to_string(), LiveStream { session, takeover });
        Registration { session, takeovers }
    }

    /// Forgets the live stream `session` registered under `id`, if it is still the one there.
    pub fn unregister(&self, id: &str, session: u64) {
        self.live
            .streams
            .remove_if(id, |_, live| live.session == session);
    }

    /// The `h` to resume `id` from, for a stream authenticated for `domains`: kept counters of
    /// a dropped stream, or those of a live stream that agrees to hand them over (and ends).
    /// `None` when there are none, they expired, or they belong to other domains.
    pub async fn resume(&self, id: &str, domains: &[String]) -> Option<u32> {
        let authenticated = |d: &str| domains.iter().any(|a| a == d);
        if let Some(r) = self.take(id, authenticated) {
            return Some(r.h);
        }
        let takeover = self.live.streams.get(id).map(|l| l.takeover.clone())?;
        let (reply, answer) = oneshot::channel();
        let request = Takeover {
            domains: domains.to_vec(),
            reply,
        };
        let handed = tokio::time::timeout(TAKEOVER_TIMEOUT, async {
            takeover.send(request).await.ok()?;
            answer.await.ok()
        })
        .await
        .ok()
        .flatten();
        // A stream that ended meanwhile kept its counters instead of answering.
        handed.or_else(|| self.take(id, authenticated).map(|r| r.h))
    }

    /// Counters kept for dropped streams (expired ones included until pruned).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A stream management element from the sending side, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `<enable/>`; `resume` when it asks to be able to resume (`resume='true'` or `'1'`).
    Enable { resume: bool },
    /// `<resume previd='…' h='…'/>`: `h` counts the stanzas the sender received from us on
    /// the old stream.
    Resume { previd: String, h: u32 },
    /// `<r/>`: how many stanzas have we handled?
    AckRequest,
    /// `<a h='…'/>`: how many of ours the peer handled.
    Ack { h: u32 },
}

/// Why a stream management element ends the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SmError {
    /// A required attribute is missing or not a count (an unsigned 32-bit number). Fatal:
    /// `<bad-format/>`.
    #[error("<{element}/> needs a valid '{attribute}'")]
    BadAttribute {
        element: &'static str,
        attribute: &'static str,
    },
    /// An element a sender never sends (`<enabled/>`, `<resumed/>`, ...). Fatal:
    /// `<unsupported-stanza-type/>`.
    #[error("<{name}/> is not a stream management request")]
    Unexpected { name: String },
    /// The peer claims to have handled more stanzas than we sent (XEP-0198 §4). Fatal:
    /// `<undefined-condition/>` with `<handled-count-too-high/>`.
    #[error("the peer acknowledged {h} stanzas, but {sent} were sent")]
    HandledCountTooHigh { h: u32, sent: u32 },
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

/// Stream management on one inbound stream once `<enable/>` or `<resume/>` succeeded: the
/// count of handled stanzas, and the id under which it can be resumed.
#[derive(Debug)]
pub struct Receiving {
    /// Stanzas handled, modulo 2^32 (XEP-0198 §4): a plain counter, nothing per stanza.
    h: u32,
    /// The id the sender quotes to resume; `None` when it did not ask for resumption.
    id: Option<String>,
}

impl Receiving {
    pub fn new(id: Option<String>, h: u32) -> Receiving {
        Receiving { h, id }
    }

    /// One more stanza handled (routed, bounced, or answered here).
    #[inline]
    pub fn handled(&mut self) {
        self.h = self.h.wrapping_add(1);
    }

    pub fn h(&self) -> u32 {
        self.h
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stanza::NsContext;

    fn stanza(xml: &str) -> Stanza {
        Stanza::parse(
            bytes::Bytes::copy_from_slice(xml.as_bytes()),
            &NsContext::server(),
        )
        .unwrap()
    }

    fn stanza_of(bytes: &[u8]) -> Stanza {
        stanza(std::str::from_utf8(bytes).unwrap())
    }

    fn domains(d: &[&str]) -> Vec<String> {
        d.iter().map(|d| d.to_string()).collect()
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn kept_counters_are_taken_once() {
        let store = ResumeStore::default();
        store.keep("id1", 7, domains(&["a.test"]), TTL);
        let r = store.take("id1", |d| d == "a.test").unwrap();
        assert_eq!(r.h, 7);
        assert_eq!(r.domains, ["a.test"]);
        assert!(store.take("id1", |_| true).is_none(), "taken once");
        assert!(store.take("other", |_| true).is_none());
    }

    #[test]
    fn counters_expire_after_their_ttl() {
        let store = ResumeStore::default();
        let t0 = Instant::now();
        store.keep_at(t0, "id1", 1, domains(&["a.test"]), TTL);
        store.keep_at(t0, "id2", 2, domains(&["a.test"]), TTL);
        let just_before = t0 + TTL - Duration::from_millis(1);
        assert_eq!(store.take_at(just_before, "id1", |_| true).unwrap().h, 1);
        assert!(
            store.take_at(t0 + TTL, "id2", |_| true).is_none(),
            "expired"
        );
        assert!(
            store.is_empty(),
            "an expired entry found by take is dropped"
        );
    }

    #[test]
    fn every_domain_of_the_dropped_stream_must_be_authenticated() {
        let store = ResumeStore::default();
        store.keep("id1", 3, domains(&["a.test", "c.test"]), TTL);
        assert!(store.take("id1", |d| d == "a.test").is_none());
        assert!(store.take("id1", |d| d == "c.test").is_none());
        assert_eq!(store.len(), 1, "left for its owner");
        let r = store.take("id1", |d| d == "a.test" || d == "c.test");
        assert_eq!(r.unwrap().h, 3);
    }

    #[test]
    fn the_store_is_capped_and_pruned_when_full() {
        let store = ResumeStore::default();
        let t0 = Instant::now();
        for i in 0..MAX_KEPT {
            store.keep_at(t0, &format!("id{i}"), 0, domains(&["a.test"]), TTL);
        }
        store.keep_at(t0, "one-too-many", 0, domains(&["a.test"]), TTL);
        assert_eq!(store.len(), MAX_KEPT);
        assert!(
            store.take_at(t0, "one-too-many", |_| true).is_none(),
            "refused"
        );
        // An id already kept may be updated even when full.
        store.keep_at(t0, "id0", 9, domains(&["a.test"]), TTL);
        assert_eq!(store.take_at(t0, "id0", |_| true).unwrap().h, 9);
        store.keep_at(t0, "id0", 0, domains(&["a.test"]), TTL);
        // Once the old ones expire, a full store makes room.
        let later = t0 + TTL;
        store.keep_at(later, "fresh", 4, domains(&["a.test"]), TTL);
        assert_eq!(store.len(), 1);
        assert_eq!(store.take_at(later, "fresh", |_| true).unwrap().h, 4);
    }

    #[tokio::test]
    async fn resume_prefers_kept_counters_then_asks_the_live_stream() {
        let store = std::sync::Arc::new(ResumeStore::default());
        let a = domains(&["a.test"]);
        assert_eq!(store.resume("none", &a).await, None);

        store.keep("kept", 5, a.clone(), TTL);
        assert_eq!(store.resume("kept", &a).await, Some(5));

        // A live stream of a.test hands over its h to a stream of a.test only.
        let mut live = store.register("live");
        let answering = tokio::spawn(async move {
            for _ in 0..2 {
                let t = live.takeovers.recv().await.unwrap();
                if t.domains.iter().any(|d| d == "a.test") {
                    t.reply.send(11).unwrap();
                }
            }
            live
        });
        assert_eq!(store.resume("live", &domains(&["c.test"])).await, None);
        assert_eq!(store.resume("live", &a).await, Some(11));
        let live = answering.await.unwrap();

        // A newer registration under the same id is not removed by the older one's end.
        let newer = store.register("live");
        store.unregister("live", live.session);
        assert!(store.live.streams.contains_key("live"));
        store.unregister("live", newer.session);
        assert!(!store.live.streams.contains_key("live"));
    }

    #[tokio::test]
    async fn a_live_stream_that_ended_meanwhile_is_found_kept() {
        let store = std::sync::Arc::new(ResumeStore::default());
        let a = domains(&["a.test"]);
        let live = store.register("id");
        let s = store.clone();
        let ending = tokio::spawn(async move {
            // The stream drops instead of answering: keep, then unregister (as inbound does).
            tokio::task::yield_now().await;
            s.keep("id", 8, domains(&["a.test"]), TTL);
            s.unregister("id", live.session);
            drop(live);
        });
        assert_eq!(store.resume("id", &a).await, Some(8));
        ending.await.unwrap();
    }

    #[test]
    fn requests_are_parsed_and_bad_counts_refused() {
        let p = |xml: &str| parse(&stanza(xml));
        assert_eq!(
            p("<enable xmlns='urn:xmpp:sm:3'/>"),
            Ok(Request::Enable { resume: false })
        );
        for yes in ["true", "1"] {
            assert_eq!(
                p(&format!("<enable xmlns='urn:xmpp:sm:3' resume='{yes}'/>")),
                Ok(Request::Enable { resume: true })
            );
        }
        assert_eq!(
            p("<enable xmlns='urn:xmpp:sm:3' resume='false'/>"),
            Ok(Request::Enable { resume: false })
        );
        assert_eq!(
            p("<resume xmlns='urn:xmpp:sm:3' previd='x1' h='4294967295'/>"),
            Ok(Request::Resume {
                previd: "x1".into(),
                h: u32::MAX
            })
        );
        assert_eq!(p("<r xmlns='urn:xmpp:sm:3'/>"), Ok(Request::AckRequest));
        assert_eq!(
            p("<a xmlns='urn:xmpp:sm:3' h='12'/>"),
            Ok(Request::Ack { h: 12 })
        );
        let bad = |element, attribute| Err(SmError::BadAttribute { element, attribute });
        assert_eq!(p("<a xmlns='urn:xmpp:sm:3'/>"), bad("a", "h"));
        assert_eq!(p("<a xmlns='urn:xmpp:sm:3' h='-1'/>"), bad("a", "h"));
        assert_eq!(
            p("<a xmlns='urn:xmpp:sm:3' h='4294967296'/>"),
            bad("a", "h")
        );
        assert_eq!(
            p("<resume xmlns='urn:xmpp:sm:3' previd='x'/>"),
            bad("resume", "h")
        );
        assert_eq!(
            p("<resume xmlns='urn:xmpp:sm:3' h='0'/>"),
            bad("resume", "previd")
        );
        assert_eq!(
            p("<enabled xmlns='urn:xmpp:sm:3'/>"),
            Err(SmError::Unexpected {
                name: "enabled".into()
            })
        );
    }

    #[test]
    fn the_count_wraps_at_2_pow_32() {
        let mut r = Receiving::new(None, u32::MAX);
        r.handled();
        assert_eq!(r.h(), 0);
        r.handled();
        assert_eq!(r.h(), 1);
    }

    #[test]
    fn a_peer_may_acknowledge_only_what_was_sent() {
        assert_eq!(check_handled(0, 0, 0), Ok(()));
        assert_eq!(check_handled(5, 0, 5), Ok(()));
        // Part of what was sent: allowed (h == sent would refuse it).
        assert_eq!(check_handled(3, 0, 5), Ok(()));
        assert_eq!(
            check_handled(1, 0, 0),
            Err(SmError::HandledCountTooHigh { h: 1, sent: 0 })
        );
        assert_eq!(
            check_handled(6, 0, 5),
            Err(SmError::HandledCountTooHigh { h: 6, sent: 5 })
        );
        // Less than acknowledged before is no count at all.
        assert_eq!(
            check_handled(2, 3, 5),
            Err(SmError::HandledCountTooHigh { h: 2, sent: 5 })
        );
        // Across the wrap at 2^32: 4 sent since u32::MAX - 1 was acknowledged.
        let acked = u32::MAX - 1;
        let sent = acked.wrapping_add(4);
        assert_eq!(check_handled(u32::MAX, acked, sent), Ok(()));
        assert_eq!(check_handled(2, acked, sent), Ok(()));
        assert_eq!(
            check_handled(3, acked, sent),
            Err(SmError::HandledCountTooHigh { h: 3, sent })
        );
    }

    #[test]
    fn wire_formats() {
        assert_eq!(
            enabled(Some("abc"), Duration::from_secs(300)),
            b"<enabled xmlns='urn:xmpp:sm:3' id='abc' resume='true' max='300'/>"
        );
        assert_eq!(
            enabled(Some("abc"), Duration::from_millis(10)),
            b"<enabled xmlns='urn:xmpp:sm:3' id='abc' resume='true' max='1'/>"
        );
        assert_eq!(enabled(None, TTL), b"<enabled xmlns='urn:xmpp:sm:3'/>");
        assert_eq!(
            resumed("a'b", 3),
            b"<resumed xmlns='urn:xmpp:sm:3' previd='a&apos;b' h='3'/>"
        );
        assert_eq!(
            failed(StanzaErrorCondition::ItemNotFound, Some(0)),
            b"<failed xmlns='urn:xmpp:sm:3' h='0'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
        );
        assert_eq!(
            failed(StanzaErrorCondition::UnexpectedRequest, None),
            b"<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
        );
        assert_eq!(
            ack(4_000_000_000),
            b"<a xmlns='urn:xmpp:sm:3' h='4000000000'/>"
        );
        // The sending side's elements are what the receiving side parses.
        assert_eq!(parse(&stanza_of(REQUEST)), Ok(Request::AckRequest));
        assert_eq!(
            parse(&stanza_of(ENABLE)),
            Ok(Request::Enable { resume: true })
        );
        assert_eq!(
            resume("a'b", 0),
            b"<resume xmlns='urn:xmpp:sm:3' previd='a&apos;b' h='0'/>"
        );
        assert_eq!(
            parse(&stanza_of(&resume("a'b", 7))),
            Ok(Request::Resume {
                previd: "a'b".into(),
                h: 7
            })
        );
    }

    #[test]
    fn handled_count_too_high_is_an_undefined_condition_with_the_counts() {
        let e = SmError::HandledCountTooHigh { h: 3, sent: 0 };
        assert_eq!(
            StreamErrorCondition::from(&e),
            StreamErrorCondition::UndefinedCondition
        );
        let raw = String::from_utf8(stream_error(&e)).unwrap();
        assert_eq!(
            raw,
            "<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>the peer acknowledged 3 stanzas, but 0 were sent</text>\
             <handled-count-too-high xmlns='urn:xmpp:sm:3' h='3' send-count='0'/></stream:error>"
        );
        let bad = SmError::BadAttribute {
            element: "a",
            attribute: "h",
        };
        assert_eq!(
            StreamErrorCondition::from(&bad),
            StreamErrorCondition::BadFormat
        );
        assert!(!String::from_utf8(stream_error(&bad))
            .unwrap()
            .contains("urn:xmpp:sm:3"));
    }

    #[test]
    fn offered_and_h_of() {
        let features = stanza("<stream:features xmlns:stream='http://etherx.jabber.org/streams'><sm xmlns='urn:xmpp:sm:3'/></stream:features>");
        assert!(offered(&features.element().unwrap()));
        assert_eq!(h_of(&stanza("<a xmlns='urn:xmpp:sm:3' h='9'/>")), Some(9));
        assert_eq!(
            h_of(&stanza(
                "<resumed xmlns='urn:xmpp:sm:3' previd='x' h=' 4294967295 '/>"
            )),
            Some(u32::MAX)
        );
        assert_eq!(h_of(&stanza("<a xmlns='urn:xmpp:sm:3'/>")), None);
        assert_eq!(h_of(&stanza("<a xmlns='urn:xmpp:sm:3' h='-1'/>")), None);
    }
}
