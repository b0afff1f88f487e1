//! Resumption on the receiving side (XEP-0198 §5): the counters of dropped inbound streams,
//! kept for `resume_timeout`, and the live resumable streams a resumption may take over.

use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::router::next_session_id;

/// What a dropped inbound stream leaves for its resumption.
#[derive(Debug, Clone)]
pub struct Resumable {
    /// Stanzas handled on the stream.
    pub h: u32,
    /// The originating domains the stream was authenticated for; a resuming stream must be
    /// authenticated for each of them too, so that no one else can take over the counters.
    pub domains: Vec<String>,
    /// When the counters are forgotten: `resume_timeout` after the drop.
    pub expires: Instant,
}

/// Counters of dropped inbound streams, by their stream management id, and the live streams
/// that may still be resumed elsewhere.
#[derive(Default)]
pub struct ResumeStore {
    entries: DashMap<String, Resumable>,
    pub(super) live: Live,
}

impl ResumeStore {
    /// Keeps `h` of a dropped stream for `ttl`. Expired counters are pruned when the store is
    /// full (so that a burst of drops costs O(1) each); when it is still full, about
    /// [`MAX_KEPT`] entries, the counters are not kept.
    pub fn keep(&self, id: &str, h: u32, domains: Vec<String>, ttl: Duration) {
        self.keep_at(Instant::now(), id, h, domains, ttl)
    }

    /// [`ResumeStore::keep`] at `now` (a clock tests can set).
    pub(super) fn keep_at(
        &self,
        now: Instant,
        id: &str,
        h: u32,
        domains: Vec<String>,
        ttl: Duration,
    ) {
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
    pub(super) fn take_at(
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
pub(super) struct Live {
    pub(super) streams: DashMap<String, LiveStream>,
}

pub(super) struct LiveStream {
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
    /// Tells this registration from a later one under the same id, for
    /// [`ResumeStore::unregister`].
    pub session: u64,
    /// Where resuming streams ask this stream for its `h`.
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

    /// Whether no counters of dropped streams are kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
