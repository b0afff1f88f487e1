//! XEP-0198 stream management on client streams: acknowledgements both ways, and resumption,
//! so that a phone that loses its connection for a while loses nothing and is not shown as
//! offline to its contacts.
//!
//! # On the wire (XEP-0198 §3–§5)
//! 1. `<sm xmlns='urn:xmpp:sm:3'/>` is offered with `<bind/>` after authentication.
//! 2. `<enable/>` after binding gets `<enabled/>`; with `resume='true'` and a non-zero
//!    `resume_timeout`, `<enabled id='…' resume='true' max='…'/>` (`max` is the smaller of the
//!    client's `max` and `resume_timeout`). A second `<enable/>`, or one before binding, gets
//!    `<failed><unexpected-request/></failed>`.
//! 3. Every stanza the client sends adds 1 to our count `h` (modulo 2^32); `<r/>` gets
//!    `<a h='…'/>`.
//! 4. Every stanza we write is kept ([`Outbound`]) until the client's `<a h='…'/>` covers it.
//!    We ask for that with `<r/>` at the end of each batch written (in the same write, so it
//!    costs no syscall), at most one request in flight. An `<a/>` that acknowledges more than
//!    was sent ends the stream with `<undefined-condition/>` and `<handled-count-too-high/>`
//!    (§4). At most `session_queue` stanzas wait for an acknowledgement; beyond that the
//!    writer stops taking from the session's queue until the client acknowledges, so that a
//!    client that never acknowledges fills its queue and is disconnected like a slow reader.
//!    An `<r/>` unanswered for `ack_timeout` means the connection is dead (a phone that left
//!    the network leaves a half-open TCP connection behind): the session is detached as in 5.
//! 5. When the connection is lost (no `</stream:stream>` from either side, no stream error)
//!    on a resumable session, the session is **detached**: it stays signed in (contacts see no
//!    unavailable presence), stanzas for it wait in its queue, and what was written but not
//!    acknowledged is kept. After authenticating again, `<resume previd='…' h='…'/>` instead of
//!    binding takes the session over: `<resumed previd='…' h='…'/>`, the unacknowledged
//!    stanzas are written again, then the queue. If the old connection is still open on our
//!    side (the client noticed the loss first), it is ended with `<conflict/>` and taken over
//!    the same way. An unknown or expired `previd`, or one of another account, gets
//!    `<failed h='…'><item-not-found/></failed>` and the client may bind a new session.
//! 6. A session that ends for good — the client closed its stream, was kicked, the server
//!    stops, or `resume_timeout` passed while detached — goes the usual way
//!    (`Core::session_ended`): unavailable presence to its contacts, and every stanza it had
//!    not had acknowledged, then its queue, re-routed: to another resource, to offline
//!    storage, or back to the sender. Nothing the client did not acknowledge is forgotten.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Core, Queued, SessionHandle};

// The wire format and the counting rule are the same as on s2s.
pub use crate::s2s::sm::{
    ack, check_handled, enabled, failed, parse, resumed, stream_error, Request, SmError, NS,
    REQUEST,
};

/// Our side of the acknowledgements: what was written and not yet acknowledged.
#[derive(Default)]
pub(crate) struct Outbound {
    /// Written, not acknowledged, oldest first. `acked + unacked.len()` is what we sent.
    pub unacked: VecDeque<Queued>,
    /// The client's last `h` (stanzas of ours it handled, modulo 2^32).
    pub acked: u32,
    /// When our unanswered `<r/>` went out, if one is in flight.
    pub requested_at: Option<Instant>,
}

impl Outbound {
    /// Stanzas sent, modulo 2^32.
    pub fn sent(&self) -> u32 {
        self.acked.wrapping_add(self.unacked.len() as u32)
    }

    /// The client handled `h` of our stanzas: forget those. An `h` beyond what was sent is
    /// the client's error (§4).
    pub fn acknowledge(&mut self, h: u32) -> Result<(), SmError> {
        check_handled(h, self.acked, self.sent())?;
        let n = h.wrapping_sub(self.acked) as usize;
        self.unacked.drain(..n);
        self.acked = h;
        self.requested_at = None;
        Ok(())
    }
}

/// What the reader and the writer of one client connection share once stream management is
/// enabled. The lock is taken for a few pointer moves, never across an await.
pub(crate) struct Shared {
    /// `<enable/>` succeeded on this session (here or on the stream it resumed).
    pub enabled: AtomicBool,
    /// Stanzas the client sent that we handled, modulo 2^32.
    pub h: AtomicU32,
    /// The reader got `<r/>`: the writer answers with `<a/>`.
    pub answer: AtomicBool,
    /// XEP-0352: the client said it is inactive.
    pub inactive: AtomicBool,
    pub out: Mutex<Outbound>,
    /// Nonzas the reader wants written (`<enabled/>`, `<failed/>`), in order.
    controls: Mutex<Vec<Control>>,
    /// Wakes the writer: an `<r/>` to answer, an acknowledgement that makes room, a client
    /// that became active.
    pub wake: Notify,
}

impl Shared {
    pub fn new(enabled: bool, h: u32, out: Outbound) -> Arc<Shared> {
        Arc::new(Shared {
            enabled: AtomicBool::new(enabled),
            h: AtomicU32::new(h),
            answer: AtomicBool::new(false),
            inactive: AtomicBool::new(false),
            out: Mutex::new(out),
            controls: Mutex::new(Vec::new()),
            wake: Notify::new(),
        })
    }

    pub fn out(&self) -> std::sync::MutexGuard<'_, Outbound> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Asks the writer to write `bytes` (a nonza) before its next stanza.
    pub fn control(&self, bytes: Vec<u8>) {
        self.push_control(Control {
            bytes,
            starts_counting: false,
        })
    }

    /// Like [`Shared::control`] for `<enabled/>`: the writer counts its stanzas from there.
    pub fn control_enable(&self, bytes: Vec<u8>) {
        self.push_control(Control {
            bytes,
            starts_counting: true,
        })
    }

    fn push_control(&self, c: Control) {
        self.controls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
        self.wake.notify_one();
    }

    /// What [`Shared::control`] queued, oldest first.
    pub fn take_controls(&self) -> Vec<Control> {
        std::mem::take(&mut *self.controls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// One more stanza from the client handled.
    pub fn handled(&self) {
        if self.is_enabled() {
            self.h.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A nonza for the writer to write.
pub(crate) struct Control {
    pub bytes: Vec<u8>,
    /// `<enabled/>`: stanzas written after it are counted.
    pub starts_counting: bool,
}

/// A session whose connection was lost, waiting to be resumed.
pub(crate) struct Detached {
    pub handle: Arc<SessionHandle>,
    /// The session's queue: stanzas for it go on arriving here while it is detached.
    pub queue: mpsc::Receiver<Queued>,
    pub shared: Arc<Shared>,
    /// Taken from the queue and not written (presences held for an inactive client): they
    /// come first after a resumption.
    pub pending: Vec<Queued>,
}

/// Where a resumable session is.
enum Resumable {
    /// Connected; cancelling the token makes its connection end and detach it.
    Live {
        account: String,
        takeover: CancellationToken,
    },
    /// Detached, until `resumed` is cancelled or its timer ends it.
    Detached(Box<Detached>, CancellationToken),
}

/// Resumable sessions by stream management id. Bounded by the number of sessions.
#[derive(Default)]
pub(crate) struct ResumeTable {
    entries: Mutex<HashMap<String, Resumable>>,
    /// Notified when a session detaches, for a resumption waiting on a takeover.
    detached: Notify,
}

/// Why a resumption was refused; both are `<item-not-found/>` on the wire.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ResumeRefused {
    /// No such id, expired, or taken by a resumption that came first.
    Unknown,
    /// The id belongs to another account.
    OtherAccount,
}

/// How long a resumption waits for the old connection to detach after the takeover.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

impl ResumeTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resumable>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connected session became resumable under `id`; the token ends its connection when
    /// another stream resumes it.
    pub fn live(&self, id: &str, account: &str, takeover: CancellationToken) {
        self.lock().insert(
            id.to_owned(),
            Resumable::Live {
                account: account.to_owned(),
                takeover,
            },
        );
    }

    /// The session under `id` ended for good: it can no longer be resumed.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

impl Core {
    /// Detaches a session whose connection was lost; it ends for good after
    /// `resume_timeout`, when kicked, or when the server stops, unless resumed first.
    pub(crate) fn detach(self: &Arc<Core>, id: String, detached: Detached) {
        let resumed = CancellationToken::new();
        let handle = detached.handle.clone();
        handle
            .detached
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.resume_table.lock().insert(
            id.clone(),
            Resumable::Detached(Box::new(detached), resumed.clone()),
        );
        self.resume_table.detached.notify_waiters();
        tracing::debug!(jid = %handle.jid, "c2s session detached, waiting to be resumed");
        let core = self.clone();
        let timeout = self.config.resume_timeout;
        tokio::spawn(async move {
            tokio::select! {
                _ = resumed.cancelled() => return,
                _ = tokio::time::sleep(timeout) => {}
                _ = handle.kick.cancelled() => {}
                _ = core.shutdown.cancelled() => {}
            }
            let entry = {
                let mut table = core.resume_table.lock();
                match table.remove(&id) {
                    Some(Resumable::Detached(d, _)) => Some(d),
                    // Resumed in the meantime: put back what we took.
                    Some(other) => {
                        table.insert(id, other);
                        None
                    }
                    None => None,
                }
            };
            if let Some(d) = entry {
                tracing::debug!(jid = %d.handle.jid, "detached c2s session not resumed in time");
                let d = *d;
                let mut unwritten: Vec<Queued> = d.shared.out().unacked.drain(..).collect();
                unwritten.extend(d.pending);
                core.session_ended(&d.handle, Some(d.queue), unwritten)
                    .await;
            }
        });
    }

    /// Takes the session `id` of `account` over for a resuming stream: a detached one at
    /// once, a connected one after its connection ended and detached it.
    pub(crate) async fn take_for_resume(
        &self,
        id: &str,
        account: &str,
    ) -> Result<Detached, ResumeRefused> {
        let deadline = Instant::now() + TAKEOVER_WAIT;
        loop {
            // Registered before looking, so that a detach between the look and the wait
            // is not missed.
            let detached_now = self.resume_table.detached.notified();
            tokio::pin!(detached_now);
            detached_now.as_mut().enable();
            {
                let mut table = self.resume_table.lock();
                let detached = match table.get(id) {
                    None => return Err(ResumeRefused::Unknown),
                    Some(entry) if entry.account() != account => {
                        return Err(ResumeRefused::OtherAccount)
                    }
                    Some(Resumable::Live { takeover, .. }) => {
                        takeover.cancel();
                        false
                    }
                    Some(Resumable::Detached(..)) => true,
                };
                if detached {
                    if let Some(Resumable::Detached(d, resumed)) = table.remove(id) {
                        resumed.cancel();
                        d.handle
                            .detached
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                        return Ok(*d);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, detached_now)
                .await
                .is_err()
            {
                return Err(ResumeRefused::Unknown);
            }
        }
    }
}

impl Resumable {
    /// The account the session belongs to.
    fn account(&self) -> &str {
        match self {
            Resumable::Live { account, .. } => account,
            Resumable::Detached(d, _) => &d.handle.account,
        }
    }
}
