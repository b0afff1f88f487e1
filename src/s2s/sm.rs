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

use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::xml::element::Element;
use crate::xml::stanza::Stanza;

/// The XEP-0198 namespace (version 3).
pub const NS: &str = "urn:xmpp:sm:3";

/// Whether stream features offer stream management.
pub fn offered(features: &Element) -> bool {
    features.child("sm", NS).is_some()
}

/// The `h` attribute of an `<a/>`, `<resumed/>` or `<failed/>` (a count modulo 2^32).
pub fn h_of(stanza: &Stanza) -> Option<u32> {
    stanza
        .element()
        .ok()?
        .attr("h")
        .and_then(|h| h.trim().parse().ok())
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

/// Counters of dropped inbound streams, by their stream management id.
#[derive(Default)]
pub struct ResumeStore {
    entries: DashMap<String, Resumable>,
}

impl ResumeStore {
    /// Keeps `h` of a dropped stream for `ttl`.
    pub fn keep(&self, id: &str, h: u32, domains: Vec<String>, ttl: Duration) {
        let now = Instant::now();
        self.entries.retain(|_, r| r.expires > now);
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
    /// for each of their domains.
    pub fn take(&self, id: &str, authenticated: impl Fn(&str) -> bool) -> Option<Resumable> {
        let (_, r) = self.entries.remove_if(id, |_, r| {
            r.expires > Instant::now() && r.domains.iter().all(|d| authenticated(d))
        })?;
        Some(r)
    }
}
