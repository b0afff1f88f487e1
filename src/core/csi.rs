//! XEP-0352 client state indication: a client that says it is `<inactive/>` (a phone with its
//! screen off) is sent only what matters now; presence updates wait.
//!
//! While inactive, the writer holds presence updates (available and unavailable presence;
//! never subscription requests, which need the user) instead of writing them, keeping only
//! the newest one per sender: a contact that changes status ten times costs one stanza when
//! the client wakes up. Anything else — a message, an iq, a subscription request — is
//! written at once, after the held presences (so the client sees them in the order they
//! happened before the message). `<active/>` writes what is held. At most [`MAX_HELD`]
//! senders are held; one more writes them all, so the buffer is bounded.

use super::Queued;

/// `urn:xmpp:csi:0`.
pub const NS: &str = "urn:xmpp:csi:0";

/// Most senders whose presence is held for an inactive client.
pub const MAX_HELD: usize = 256;

/// Presence updates held for an inactive client, oldest first, one per sender.
#[derive(Default)]
pub(crate) struct Held {
    presences: Vec<Queued>,
    /// Bytes not written because a newer presence replaced them (the point of CSI).
    pub saved_bytes: u64,
    /// Presence stanzas replaced.
    pub collapsed: u64,
}

impl Held {
    /// Holds `q` if it is a presence update; gives it back otherwise (to be written now).
    /// When the buffer is full, the held ones must be written first: `Err` carries `q` then
    /// too, and [`Held::take`] gives the rest.
    pub fn hold(&mut self, q: Queued) -> Result<(), Queued> {
        let Some(from) = q.presence_from.as_deref() else {
            return Err(q);
        };
        if let Some(i) = self
            .presences
            .iter()
            .position(|h| h.presence_from.as_deref() == Some(from))
        {
            let old = self.presences.remove(i);
            self.saved_bytes += old.bytes.len() as u64;
            self.collapsed += 1;
        } else if self.presences.len() >= MAX_HELD {
            return Err(q);
        }
        self.presences.push(q);
        Ok(())
    }

    /// Everything held, oldest first; the buffer is empty afterwards.
    pub fn take(&mut self) -> Vec<Queued> {
        std::mem::take(&mut self.presences)
    }
}
