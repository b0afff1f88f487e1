//! What the component library keeps of the stanzas it wrote to one gateway until the gateway
//! acknowledges them ([`client`](super::client), step 4): the ones XEP-0198's `h` has not
//! passed, in the order they were written, and the ones the gateway [held](super::held),
//! which `h` passed although they are not finished. Both are sent again if the link drops
//! first. Sans I/O: the session feeds it what the gateway reported and writes what it
//! returns.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

/// A report of the gateway's that does not fit what was written: the stream ends with
/// `<undefined-condition/>` (XEP-0198 §4 for `h`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    /// `h` acknowledges more stanzas than were written and not yet acknowledged.
    #[error("the gateway acknowledged {acked} more stanzas than the {unacked} unacknowledged")]
    TooMany {
        /// How many stanzas the new `h` acknowledges past the previous one.
        acked: usize,
        /// How many were waiting for an acknowledgement.
        unacked: usize,
    },
    /// A `<held/>` number (the stanza's count on the stream) that is not waiting for an
    /// acknowledgement, or that does not come after those already held.
    #[error("the gateway held stanza {0}, which was not written, was acknowledged already, or does not come after those it held before")]
    HeldUnknown(u32),
}

/// Stanzas written to one gateway and not yet acknowledged.
#[derive(Default)]
pub struct Unacked {
    /// Not passed by `h` on this session, oldest first; the front is number `acked`.
    queue: VecDeque<Bytes>,
    /// The gateway's last `h` on this session (modulo 2^32).
    acked: u32,
    /// How many `h` has passed on this session, not wrapping: the position of `queue`'s
    /// front, so that held stanzas keep an order across the wrap of `h`.
    passed: u64,
    /// Positions in `queue` the gateway said it holds, ascending: kept when `h` passes them.
    to_hold: VecDeque<u64>,
    /// Held by the gateway (passed by `h`, not finished), by position.
    held: BTreeMap<u64, Bytes>,
}

impl Unacked {
    /// Everything kept: unacknowledged and held.
    pub fn len(&self) -> usize {
        self.queue.len() + self.held.len()
    }

    /// Nothing is kept for this gateway: every stanza written to it is acknowledged or done.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The gateway's last `h` on this session.
    pub fn acked(&self) -> u32 {
        self.acked
    }

    /// Of [`len`](Self::len), how many the gateway holds.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Keeps a stanza just written.
    pub fn push(&mut self, bytes: Bytes) {
        self.queue.push_back(bytes);
    }

    /// A new session starts counting from 0: everything kept is written again on it, held
    /// ones first (they are the oldest), in the order first written. Returns them, in that
    /// order, and keeps them as the new session's unacknowledged.
    pub fn restart(&mut self) -> &VecDeque<Bytes> {
        let held = std::mem::take(&mut self.held);
        for (_, bytes) in held.into_iter().rev() {
            self.queue.push_front(bytes);
        }
        self.acked = 0;
        self.passed = 0;
        self.to_hold.clear();
        &self.queue
    }

    /// Takes everything kept, oldest first (to hand to another gateway).
    pub fn take_all(&mut self) -> Vec<Bytes> {
        self.restart();
        self.queue.drain(..).collect()
    }

    /// Applies what the gateway reported, in the order it wrote it: `held` (a `<held>` list
    /// read before the `<a/>`), `h` (the latest `<a/>`), then `done` (`<done>` lists).
    /// Returns how many stanzas are now forgotten (acknowledged for good).
    pub fn apply(&mut self, held: &[u32], h: u32, done: &[u32]) -> Result<usize, AckError> {
        for &seq in held {
            let offset = seq.wrapping_sub(self.acked) as usize;
            let position = self.passed + offset as u64;
            let in_order = self.to_hold.back().is_none_or(|&last| position > last);
            if offset >= self.queue.len() || !in_order {
                return Err(AckError::HeldUnknown(seq));
            }
            self.to_hold.push_back(position);
        }
        let n = h.wrapping_sub(self.acked) as usize;
        if n > self.queue.len() {
            return Err(AckError::TooMany {
                acked: n,
                unacked: self.queue.len(),
            });
        }
        let mut forgotten = 0;
        for _ in 0..n {
            let bytes = self.queue.pop_front().expect("n is within the queue");
            if self.to_hold.front() == Some(&self.passed) {
                self.to_hold.pop_front();
                self.held.insert(self.passed, bytes);
            } else {
                forgotten += 1;
            }
            self.passed += 1;
        }
        self.acked = h;
        for &seq in done {
            // Behind `h`: a held one. Ahead of it: held, but `h` has not passed it yet, so it
            // is simply acknowledged when it does.
            let ahead = seq.wrapping_sub(self.acked) as usize;
            if ahead < self.queue.len() {
                let position = self.passed + ahead as u64;
                self.to_hold.retain(|&p| p != position);
            } else {
                let position = self
                    .passed
                    .wrapping_sub(u64::from(self.acked.wrapping_sub(seq)));
                if self.held.remove(&position).is_some() {
                    forgotten += 1;
                }
            }
        }
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(n: u32) -> Unacked {
        let mut u = Unacked::default();
        for i in 0..n {
            u.push(Bytes::from(format!("<m{i}/>")));
        }
        u
    }

    fn names(u: &mut Unacked) -> Vec<String> {
        u.take_all()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn h_forgets_a_prefix() {
        let mut u = written(5);
        assert_eq!(u.apply(&[], 3, &[]), Ok(3));
        assert_eq!(u.len(), 2);
        assert_eq!(names(&mut u), ["<m3/>", "<m4/>"]);
    }

    #[test]
    fn a_held_stanza_is_kept_when_h_passes_it_and_forgotten_when_done() {
        let mut u = written(6);
        assert_eq!(u.apply(&[1, 3], 5, &[]), Ok(3), "0, 2 and 4 are done");
        assert_eq!((u.len(), u.held()), (3, 2));
        assert_eq!(u.apply(&[], 5, &[3]), Ok(1));
        assert_eq!(names(&mut u), ["<m1/>", "<m5/>"], "held first, in order");
    }

    #[test]
    fn done_before_h_passes_a_held_stanza_acknowledges_it_in_order() {
        let mut u = written(4);
        assert_eq!(u.apply(&[2], 1, &[2]), Ok(1));
        assert_eq!(u.apply(&[], 4, &[]), Ok(3));
        assert!(u.is_empty());
    }

    #[test]
    fn a_new_session_writes_held_ones_first_and_counts_from_zero() {
        let mut u = written(4);
        u.apply(&[0], 2, &[]).unwrap();
        let again: Vec<_> = u.restart().iter().cloned().collect();
        assert_eq!(
            again,
            [&b"<m0/>"[..], b"<m2/>", b"<m3/>"].map(Bytes::from_static)
        );
        // On the new session <m0/> is number 0.
        assert_eq!(u.apply(&[], 1, &[]), Ok(1));
        assert_eq!(names(&mut u), ["<m2/>", "<m3/>"]);
    }

    #[test]
    fn a_new_session_counts_from_zero_even_when_nothing_was_left() {
        let mut u = written(3);
        assert_eq!(u.apply(&[], 3, &[]), Ok(3));
        assert!(u.restart().is_empty());
        u.push(Bytes::from_static(b"<n0/>"));
        assert_eq!(u.apply(&[], 1, &[]), Ok(1), "h = 1 on the new session");
    }

    #[test]
    fn numbers_wrap_at_two_to_the_thirty_two() {
        let mut u = Unacked::default();
        u.acked = u32::MAX - 1;
        for i in 0..4 {
            u.push(Bytes::from(format!("<m{i}/>")));
        }
        // Numbers u32::MAX - 1, u32::MAX, 0, 1: hold u32::MAX and 0.
        assert_eq!(u.apply(&[u32::MAX, 0], 2, &[]), Ok(2));
        assert_eq!(u.apply(&[], 2, &[0]), Ok(1));
        assert_eq!(names(&mut u), ["<m1/>"]);
    }

    #[test]
    fn reports_that_do_not_fit_what_was_written_are_errors() {
        let mut u = written(2);
        assert_eq!(
            u.apply(&[], 3, &[]),
            Err(AckError::TooMany {
                acked: 3,
                unacked: 2
            })
        );
        assert_eq!(u.apply(&[7], 0, &[]), Err(AckError::HeldUnknown(7)));
    }
}
