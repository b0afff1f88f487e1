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
//!    number done: one atomic `or` into a bitmap and a wake-up, no allocation.
//! 3. A stanza the gateway gives up on without knowing its fate (a link closing at shutdown
//!    with stanzas the peer never confirmed) is [abandoned](Ticket::abandon): its number is
//!    never marked, so `h` stops before it and the backend, which keeps every stanza until
//!    it is acknowledged, sends it again through another gateway or session.
//! 4. Stanzas to different destinations finish out of order, so `h` is the length of the
//!    contiguous prefix of finished numbers. The session's writer (the one task that moves
//!    `h`) advances it over the bitmap ([`AckWindow::advance`]) and writes `<a h='…'/>`.
//!
//! The bitmap is a ring of [`WINDOW`] bits indexed by sequence number modulo its size: a
//! number is only taken while fewer than [`WINDOW`] are unfinished, so two numbers in flight
//! never share a bit, and a bit is cleared (by `advance`) before its slot is taken again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Stanzas from one backend that may be unfinished in the gateway at once (a power of two,
/// a multiple of 64): 2 KiB of bitmap per acknowledging session. A backend with more in
/// flight is read more slowly (TCP back-pressure), not refused.
pub const WINDOW: u32 = 16 * 1024;

/// The in-flight sequence numbers of one component session.
pub struct AckWindow {
    /// Bit `n % WINDOW` is set when stanza `n` (counted modulo 2^32) has finished and `h` has
    /// not yet passed it.
    done: Box<[AtomicU64]>,
    /// Finished prefix: every stanza numbered below it has finished. Moved by
    /// [`AckWindow::advance`] only.
    h: AtomicU32,
    /// Told when a ticket finishes, so that the writer advances `h`.
    finished: Notify,
    /// Told when `h` moves, so that a reader waiting for room looks again.
    room: Notify,
    /// Set once a ticket was abandoned (for the log line and the metric).
    abandoned: AtomicBool,
}

impl Default for AckWindow {
    fn default() -> Self {
        AckWindow {
            done: (0..WINDOW / 64).map(|_| AtomicU64::new(0)).collect(),
            h: AtomicU32::new(0),
            finished: Notify::new(),
            room: Notify::new(),
            abandoned: AtomicBool::new(false),
        }
    }
}

impl AckWindow {
    pub fn new() -> Arc<AckWindow> {
        Arc::new(AckWindow::default())
    }

    /// A window whose first stanza is numbered `h` (to test the wrap at 2^32).
    #[cfg(test)]
    fn starting_at(h: u32) -> Arc<AckWindow> {
        let window = AckWindow::default();
        window.h.store(h, Ordering::Relaxed);
        Arc::new(window)
    }

    /// The finished prefix (what `<a h='…'/>` reports).
    pub fn h(&self) -> u32 {
        self.h.load(Ordering::Acquire)
    }

    /// Whether stanza `next` may be taken now: fewer than [`WINDOW`] are unfinished.
    pub fn has_room(&self, next: u32) -> bool {
        next.wrapping_sub(self.h()) < WINDOW
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
        Ticket {
            window: self.clone(),
            seq: next,
            abandoned: false,
        }
    }

    /// Moves `h` over every finished number after it; `Some(h)` when it moved. Only one task
    /// (the session's writer) calls this.
    pub fn advance(&self) -> Option<u32> {
        let start = self.h.load(Ordering::Acquire);
        let mut h = start;
        loop {
            let i = h % WINDOW;
            let (word, bit) = (&self.done[(i / 64) as usize], 1u64 << (i % 64));
            if word.load(Ordering::Acquire) & bit == 0 {
                break;
            }
            word.fetch_and(!bit, Ordering::AcqRel);
            h = h.wrapping_add(1);
        }
        if h == start {
            return None;
        }
        self.h.store(h, Ordering::Release);
        self.room.notify_one();
        Some(h)
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
        let i = self.seq % WINDOW;
        self.window.done[(i / 64) as usize].fetch_or(1u64 << (i % 64), Ordering::AcqRel);
        self.window.finished.notify_one();
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.seq)
    }
}

#[cfg(test)]
mod tests;
