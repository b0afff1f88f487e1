//! Delivery tickets: how a component session learns that a stanza its backend gave the
//! gateway has left the gateway for good, so that it may acknowledge it (XEP-0198 §4 `h`, on
//! the component stream; see [`component`](crate::component), step 6).
//!
//! 1. The component session's reader takes a sequence number for each stanza it reads
//!    ([`AckWindow::reserve`], which waits while [`WINDOW`] stanzas are in flight) and puts
//!    a [`Ticket`] for it on the stanza ([`Stanza::with_ticket`](crate::xml::stanza::Stanza)).
//! 2. The stanza goes through the router as any other. Whoever holds it last lets it go
//!    when it is done with it: the component writer after the batch it was in was flushed
//!    to another backend's socket, the outbound s2s link when the peer acknowledged it
//!    (XEP-0198) or answered a ping written after it (XEP-0199), the router after a bounce
//!    (the bounce is itself routed back) or a counted drop. Dropping the ticket marks its
//!    number done: one atomic operation on its slot and a wake-up, no allocation.
//! 3. A stanza the gateway gives up on without knowing its fate (a link closing at shutdown
//!    with stanzas the peer never confirmed) is [abandoned](Ticket::abandon): its number is
//!    never marked, so `h` stops before it and the backend, which keeps every stanza until
//!    it is acknowledged, sends it again through another gateway or session.
//! 4. Stanzas to different destinations finish out of order, so `h` is the length of the
//!    contiguous prefix of finished numbers. The session's writer (the one task that moves
//!    `h`) advances it over the slots ([`AckWindow::advance`]) and writes `<a h='…'/>`.
//! 5. **Held stanzas.** One destination that does not take its stanzas (a remote server
//!    that stopped reading) would keep `h` where it is, and a backend that keeps a bounded
//!    number of unacknowledged stanzas would then stop sending to every destination: the
//!    head-of-line blocking the per-destination queues exist to prevent. So the writer may
//!    [hold](AckWindow::hold) the unfinished stanzas that keep `h` back: `h` passes them,
//!    the backend is told their numbers first (the [`held`](crate::component::held)
//!    protocol) and keeps them, and when a held ticket finishes its number is
//!    [reported](AckWindow::take_finished_held) on its own. The backend still resends a held
//!    stanza if the gateway dies before it finished, so holding moves nothing out of the
//!    backend's safekeeping; it only lifts the order.
//!
//! The same window counts an inbound s2s stream's stanzas (XEP-0198 `h` towards a remote
//! server, see [`crate::s2s::sm::receiving`]): smaller ([`S2S_WINDOW`]), and without step 5's
//! reports, since XEP-0198 has no way to name a stanza; there a held stanza is simply
//! acknowledged before it finished.
//!
//! The slots are a ring of as many words as the window is large, indexed by sequence number
//! modulo its size: a number is only taken while fewer than that many after `h` are taken, so two
//! numbers in flight never share a slot unless the older was held. Each word carries the
//! number's *lap* (which turn round the ring it is) next to its flags, so a held ticket that
//! finishes after its slot was taken again sees that the slot is no longer its own, and
//! reports itself as held instead of marking the newcomer done.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Numbers after `h` that may be taken at once on a component session (a power of two):
/// 32 KiB of slots per acknowledging session. A backend with more in flight is read more
/// slowly (TCP back-pressure), not refused. Held stanzas do not count: `h` has passed them.
pub const WINDOW: u32 = 8 * 1024;

/// The same for an inbound s2s stream with XEP-0198 (a power of two): 1 KiB of slots, taken
/// only while stanzas are in flight ([`crate::s2s::sm::receiving`]). Far more s2s streams
/// than backend links are open, and a remote server's own queue of unacknowledged stanzas
/// is bounded too (Prosody's `smacks_max_queue_size` is 500 by default), so `h` must not
/// fall far behind what it sent.
pub const S2S_WINDOW: u32 = 256;

/// Slot flag: the stanza finished.
const DONE: u32 = 1;
/// Slot flag: the writer held the stanza (step 5); `h` may pass it unfinished.
const HELD: u32 = 2;
/// The slot's lap, above the two flags.
const LAP_SHIFT: u32 = 2;

/// What a slot of a window of `size` says when `seq` has just taken it: its lap, no flags.
fn fresh(seq: u32, size: u32) -> u32 {
    (seq / size) << LAP_SHIFT
}

/// Whether slot word `word` belongs to `seq` (rather than to a number a lap before or after).
fn owned_by(word: u32, seq: u32, size: u32) -> bool {
    word >> LAP_SHIFT == seq / size
}

/// The in-flight sequence numbers of one component session.
pub struct AckWindow {
    /// Slot `n % size`: the lap and flags of the number that took it last.
    slots: Box<[AtomicU32]>,
    /// How many numbers after `h` may be taken: the slots' count, a power of two.
    size: u32,
    /// Whether held stanzas that finish are kept for [`AckWindow::take_finished_held`] (a
    /// component session reports them; an s2s stream has no way to).
    reports_held: bool,
    /// Finished prefix: every stanza numbered below it has finished or is held. Moved by
    /// [`AckWindow::advance`] only.
    h: AtomicU32,
    /// The next number the reader will take (so the writer knows what is in flight).
    taken: AtomicU32,
    /// Held stanzas that finished, not yet reported (step 5). Only held tickets touch it.
    finished_held: Mutex<Vec<u32>>,
    /// Told when a ticket finishes, so that the writer advances `h`.
    finished: Notify,
    /// Told when `h` moves, so that a reader waiting for room looks again.
    room: Notify,
    /// Set once a ticket was abandoned (for the log line and the metric).
    abandoned: AtomicBool,
}

impl AckWindow {
    /// `size` slots (a power of two, at least 4), the first number `h`.
    fn build(size: u32, h: u32, reports_held: bool) -> AckWindow {
        assert!(size.is_power_of_two() && size >= 4, "window size {size}");
        AckWindow {
            slots: (0..size).map(|_| AtomicU32::new(0)).collect(),
            size,
            reports_held,
            h: AtomicU32::new(h),
            taken: AtomicU32::new(h),
            finished_held: Mutex::new(Vec::new()),
            finished: Notify::new(),
            room: Notify::new(),
            abandoned: AtomicBool::new(false),
        }
    }

    /// An empty window for a new component session: `h` is 0 and nothing is in flight.
    pub fn new() -> Arc<AckWindow> {
        Arc::new(AckWindow::build(WINDOW, 0, true))
    }

    /// A component session's window whose first stanza is numbered `h` (to test the wrap at
    /// 2^32).
    #[cfg(test)]
    fn starting_at(h: u32) -> Arc<AckWindow> {
        Arc::new(AckWindow::build(WINDOW, h, true))
    }

    /// An inbound s2s stream's window ([`S2S_WINDOW`] slots) whose first stanza is numbered
    /// `h`: the count the stream had reached when the window was taken.
    pub fn for_s2s(h: u32) -> Arc<AckWindow> {
        Arc::new(AckWindow::build(S2S_WINDOW, h, false))
    }

    fn slot(&self, seq: u32) -> &AtomicU32 {
        &self.slots[(seq % self.size) as usize]
    }

    /// Whether every number taken so far has finished or is held: nothing is in flight.
    pub fn is_settled(&self) -> bool {
        self.h() == self.taken()
    }

    /// The finished prefix (what `<a h='…'/>` reports).
    pub fn h(&self) -> u32 {
        self.h.load(Ordering::Acquire)
    }

    /// The next number the reader takes: `h..taken()` are in flight or finished.
    pub fn taken(&self) -> u32 {
        self.taken.load(Ordering::Acquire)
    }

    /// Whether stanza `next` may be taken now: fewer than the window's size are unfinished.
    pub fn has_room(&self, next: u32) -> bool {
        next.wrapping_sub(self.h()) < self.size
    }

    /// A ticket for stanza number `next` if there is room for it now ([`AckWindow::reserve`]
    /// without the wait).
    pub fn try_reserve(self: &Arc<Self>, next: u32) -> Option<Ticket> {
        self.has_room(next).then(|| self.take(next))
    }

    /// Takes `next`'s slot, which `h` has passed.
    fn take(self: &Arc<Self>, next: u32) -> Ticket {
        // `h` passed the slot's last owner (finished or held), so it is ours now.
        self.slot(next)
            .store(fresh(next, self.size), Ordering::Release);
        self.taken.store(next.wrapping_add(1), Ordering::Release);
        Ticket {
            window: self.clone(),
            seq: next,
            abandoned: false,
        }
    }

    /// A ticket for stanza number `next` (the reader's own count, starting at 0), once there
    /// is room for it. Only one task (the session's reader) takes tickets, in order.
    pub async fn reserve(self: &Arc<Self>, next: u32) -> Ticket {
        while !self.has_room(next) {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.has_room(next) {
                break;
            }
            room.await;
        }
        self.take(next)
    }

    /// Moves `h` over every finished or held number after it; `Some(h)` when it moved. Only
    /// one task (the session's writer) calls this.
    pub fn advance(&self) -> Option<u32> {
        let start = self.h.load(Ordering::Acquire);
        let end = self.taken();
        let mut h = start;
        while h != end {
            let word = self.slot(h).load(Ordering::Acquire);
            if !owned_by(word, h, self.size) || word & (DONE | HELD) == 0 {
                break;
            }
            h = h.wrapping_add(1);
        }
        if h == start {
            return None;
        }
        self.h.store(h, Ordering::Release);
        self.room.notify_one();
        Some(h)
    }

    /// Holds the unfinished stanzas that keep `h` back (module docs, step 5): those numbered
    /// before `before` that have a finished one after them, so that `h` does not wait for
    /// them. Returns their numbers, oldest first; the caller tells the backend before it
    /// reports an `h` past them. Only the writer calls this.
    pub fn hold(&self, before: u32) -> Vec<u32> {
        let h = self.h();
        let span = before.wrapping_sub(h).min(self.taken().wrapping_sub(h));
        // The last finished number in the span: nothing after it is held up by anything.
        let Some(last_done) = (0..span).rev().map(|i| h.wrapping_add(i)).find(|&seq| {
            let word = self.slot(seq).load(Ordering::Acquire);
            owned_by(word, seq, self.size) && word & DONE != 0
        }) else {
            return Vec::new();
        };
        self.hold_until(last_done)
    }

    /// Holds every unfinished stanza numbered before `before` (at most what was taken), so
    /// that `h` passes them all: for an inbound s2s stream whose `h` has not moved for a
    /// while (its oldest stanzas wait for a destination that takes nothing). Returns their
    /// numbers, oldest first. Only the writer calls this.
    pub fn hold_all(&self, before: u32) -> Vec<u32> {
        let h = self.h();
        let span = before.wrapping_sub(h).min(self.taken().wrapping_sub(h));
        self.hold_until(h.wrapping_add(span))
    }

    /// Holds the fresh slots from `h` up to `end` (not included).
    fn hold_until(&self, end: u32) -> Vec<u32> {
        let mut held = Vec::new();
        let mut seq = self.h();
        while seq != end {
            let slot = self.slot(seq);
            let word = slot.load(Ordering::Acquire);
            // Only a fresh slot is held: a DONE one finished, a HELD one is held already. A
            // ticket finishing at the same moment either wins (DONE) or finds HELD.
            if owned_by(word, seq, self.size)
                && word & (DONE | HELD) == 0
                && slot
                    .compare_exchange(word, word | HELD, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                held.push(seq);
            }
            seq = seq.wrapping_add(1);
        }
        held
    }

    /// The held stanzas that finished since the last call (module docs, step 5).
    pub fn take_finished_held(&self) -> Vec<u32> {
        std::mem::take(&mut *self.finished_held.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves when a ticket has finished since the last call (a permit is kept when none
    /// waits, so none is missed).
    pub async fn finished(&self) {
        self.finished.notified().await
    }

    /// Whether a ticket was abandoned: `h` will not pass it on this session.
    pub fn any_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }
}

/// One stanza's place in its session's [`AckWindow`]; finished when dropped.
pub struct Ticket {
    window: Arc<AckWindow>,
    seq: u32,
    abandoned: bool,
}

impl Ticket {
    /// The stanza's sequence number on its component stream.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The gateway gives up on the stanza without knowing whether it arrived: it is never
    /// acknowledged, so the backend sends it again (module docs, step 3).
    pub fn abandon(mut self) {
        self.abandoned = true;
        self.window.abandoned.store(true, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.abandoned {
            return;
        }
        let window = &self.window;
        let slot = window.slot(self.seq);
        let mut word = slot.load(Ordering::Acquire);
        loop {
            if !owned_by(word, self.seq, window.size) || word & HELD != 0 {
                // Held: `h` passed it (its slot may be another number's by now), so it is
                // reported by number instead, where the session reports held stanzas.
                if window.reports_held {
                    window
                        .finished_held
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(self.seq);
                }
                break;
            }
            match slot.compare_exchange_weak(word, word | DONE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        window.finished.notify_one();
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.seq)
    }
}

#[cfg(test)]
mod tests;
