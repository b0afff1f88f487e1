//! The sending side (an outbound stream): enable or resume stream management when the peer
//! offers it, keep every stanza written until it is acknowledged ([`Carry`]), and read what
//! the receiving side sends us ([`Incoming`]).
//!
//! 1. [`negotiate`]: with the id of the last link, `<resume previd='…' h='0'/>`; on
//!    `<resumed h='…'/>` the acknowledged stanzas are forgotten and the rest resent; on
//!    `<failed/>`, or without an id, `<enable resume='true'/>`; `<enabled/>` with
//!    `resume='true'` gives the id for the next link, `<failed/>` leaves the link without
//!    acknowledgements;
//! 2. the established link asks with `<r/>` and applies each `<a h='…'/>` ([`Carry::ack`]),
//!    and answers the peer's `<r/>` with `<a h='0'/>` (we receive no stanzas on it);
//! 3. when the link closes, [`final_acks`] waits briefly for the answer to a last `<r/>`, so
//!    that what the peer has received is neither reported lost nor bounced.

use std::collections::VecDeque;
use std::time::Duration;

use super::{h_of, resume, ENABLE, NS};
use crate::connection::{Reader, Writer};
use crate::metrics::SmCounters;
use crate::s2s::PeerStreamError;
use crate::xml::framer::Event;
use crate::xml::stanza::{Kind, Stanza};

/// How long a closing link waits for the peer's last acknowledgement.
pub const FINAL_ACK_WAIT: Duration = Duration::from_secs(2);

/// What outlives one link of a session (XEP-0198 §5): the one place for stanzas written and
/// not yet known delivered. With XEP-0198 an `<a/>` releases them; without it, the answer
/// to an XEP-0199 ping written after them ([`Carry::release`]).
pub struct Carry {
    /// `fedgate_outbound_unacked`, kept equal to the sum of every session's `unacked`.
    gauge: prometheus::IntGauge,
    /// Stanzas written and not yet acknowledged (or confirmed), oldest first. With XEP-0198
    /// the first one's sequence number is `acked + 1`.
    pub unacked: VecDeque<Stanza>,
    /// How many of the oldest in `unacked` a link without XEP-0198 wrote and lost before
    /// the peer confirmed them: the peer may have them, so resending may deliver them twice.
    pub unconfirmed: usize,
    /// The last count the peer acknowledged (modulo 2^32).
    pub acked: u32,
    /// The stream management id of the last link, if the peer allows resuming it.
    pub resume: Option<String>,
}

impl Carry {
    /// An empty carry whose unacknowledged stanzas are counted in `gauge`.
    pub fn new(gauge: prometheus::IntGauge) -> Carry {
        Carry {
            gauge,
            unacked: VecDeque::new(),
            acked: 0,
            resume: None,
            unconfirmed: 0,
        }
    }

    /// Keeps a stanza just written until the peer acknowledges (or confirms) it.
    pub fn push(&mut self, stanza: Stanza) {
        self.unacked.push_back(stanza);
        self.gauge.inc();
    }

    /// Forgets every unacknowledged stanza (resent without tracking, bounced, or given up).
    pub fn take_unacked(&mut self) -> VecDeque<Stanza> {
        self.gauge.sub(self.unacked.len() as i64);
        self.unconfirmed = 0;
        std::mem::take(&mut self.unacked)
    }

    /// Forgets the `n` oldest stanzas: the peer proved it has read them (at most all).
    pub fn release(&mut self, n: usize) {
        let n = n.min(self.unacked.len());
        self.unacked.drain(..n);
        self.gauge.sub(n as i64);
        self.unconfirmed = self.unconfirmed.saturating_sub(n);
    }

    /// An empty carry counted in the same gauge.
    pub fn empty_like(&self) -> Carry {
        Carry::new(self.gauge.clone())
    }

    /// Moves the unacknowledged stanzas for which `belongs` holds into `into`, in order,
    /// with their share of `unconfirmed`: on a link that carried several domain pairs
    /// (XEP-0220 multiplexing), each pair's session takes back its own when the link ends.
    /// The counts of the stream (`acked`, `resume`) stay here.
    pub fn split_off(&mut self, into: &mut Carry, belongs: impl Fn(&Stanza) -> bool) {
        debug_assert!(
            into.unacked.is_empty(),
            "the oldest stanzas are the unconfirmed ones"
        );
        let mut kept = VecDeque::with_capacity(self.unacked.len());
        let (mut kept_unconfirmed, mut moved_unconfirmed) = (0, 0);
        for (i, stanza) in std::mem::take(&mut self.unacked).into_iter().enumerate() {
            let unconfirmed = i < self.unconfirmed;
            if belongs(&stanza) {
                moved_unconfirmed += usize::from(unconfirmed);
                self.gauge.dec();
                into.push(stanza);
            } else {
                kept_unconfirmed += usize::from(unconfirmed);
                kept.push_back(stanza);
            }
        }
        self.unacked = kept;
        self.unconfirmed = kept_unconfirmed;
        into.unconfirmed += moved_unconfirmed;
    }

    /// Applies an acknowledgement of `h` stanzas: those are delivered and forgotten.
    pub fn ack(&mut self, h: u32) -> Result<(), String> {
        let n = h.wrapping_sub(self.acked) as usize;
        if n > self.unacked.len() {
            // Counts are modulo 2^32 (XEP-0198 §4): an `h` that went back looks like one past
            // what was sent, so the text gives the range an `h` must fall in.
            let sent = self.acked.wrapping_add(self.unacked.len() as u32);
            return Err(format!(
                "the peer acknowledged h={h}, outside {}..={sent} (acknowledged before, sent so far)",
                self.acked
            ));
        }
        self.release(n);
        self.acked = h;
        Ok(())
    }
}

impl Drop for Carry {
    fn drop(&mut self) {
        self.gauge.sub(self.unacked.len() as i64);
    }
}

/// An element of [`NS`] from the receiving side, parsed from its start tag (no tree is built
/// for an `<a/>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `<enabled/>`; `resume` is its id when it may be resumed (`resume='true'` or `'1'`).
    Enabled {
        /// The id to resume the stream with, when resumption was granted.
        resume: Option<String>,
    },
    /// `<resumed h='…'/>`; `None` for a missing or invalid count.
    Resumed {
        /// Stanzas of ours the peer handled on the old stream, modulo 2^32.
        h: Option<u32>,
    },
    /// `<failed/>`: to `<enable/>` or `<resume/>`.
    Failed,
    /// `<a h='…'/>`; `None` for a missing or invalid count.
    Ack {
        /// Stanzas of ours the peer has handled, modulo 2^32.
        h: Option<u32>,
    },
    /// `<r/>`.
    AckRequest,
    /// Any other element of the namespace: ignored.
    Other,
}

impl Incoming {
    /// `None` when `stanza` is not in [`NS`].
    pub fn parse(stanza: &Stanza) -> Option<Incoming> {
        if stanza.ns() != NS {
            return None;
        }
        Some(match stanza.name() {
            "a" => Incoming::Ack { h: h_of(stanza) },
            "r" => Incoming::AckRequest,
            "enabled" => {
                let resumable = matches!(stanza.attr("resume").as_deref(), Some("true" | "1"));
                Incoming::Enabled {
                    resume: stanza
                        .attr("id")
                        .filter(|_| resumable)
                        .map(|id| id.into_owned()),
                }
            }
            "resumed" => Incoming::Resumed { h: h_of(stanza) },
            "failed" => Incoming::Failed,
            _ => Incoming::Other,
        })
    }
}

/// XEP-0198 §5 and §3: resume the last link's stream if we can, else enable afresh, each
/// answer within `timeout`. `Ok(false)`: the peer declined; the link runs without
/// acknowledgements. `Err` says why the link is lost.
pub async fn negotiate(
    reader: &mut Reader,
    writer: &mut Writer,
    carry: &mut Carry,
    counters: &SmCounters,
    timeout: Duration,
    remote: &str,
) -> Result<bool, String> {
    if let Some(id) = carry.resume.take() {
        // We receive no stanzas on an outbound stream, so our own count is always 0.
        writer.send(&resume(&id, 0));
        match answer(reader, writer, timeout).await? {
            Incoming::Resumed { h } => {
                let h = h.ok_or("<resumed/> without a valid 'h'")?;
                carry.ack(h)?;
                carry.resume = Some(id);
                counters.resumed.inc();
                tracing::info!(
                    remote,
                    "XEP-0198 stream resumed; {} stanzas to resend",
                    carry.unacked.len()
                );
                return Ok(true);
            }
            _ => {
                // The peer lost our stream's state (it restarted, or too much time
                // passed): what it acknowledged before is all we know arrived.
                counters.resume_failed.inc();
                carry.acked = 0;
            }
        }
    }
    writer.send(ENABLE);
    let Incoming::Enabled { resume } = answer(reader, writer, timeout).await? else {
        carry.acked = 0;
        return Ok(false);
    };
    carry.resume = resume;
    carry.acked = 0;
    counters.enabled.inc();
    Ok(true)
}

/// The peer's answer to `<enable/>` or `<resume/>`: `<enabled/>`, `<resumed/>` or
/// `<failed/>`, within `timeout`.
async fn answer(
    reader: &mut Reader,
    writer: &mut Writer,
    timeout: Duration,
) -> Result<Incoming, String> {
    writer
        .flush()
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let read = async {
        loop {
            match reader.next_event().await {
                Ok(Event::Stanza(s)) => match Incoming::parse(&s) {
                    Some(
                        answer @ (Incoming::Enabled { .. }
                        | Incoming::Resumed { .. }
                        | Incoming::Failed),
                    ) => return Ok(answer),
                    // An early <r/> or <a/> is harmless here.
                    Some(_) => {}
                    None if s.kind() == Kind::StreamError => {
                        return Err(format!(
                            "the peer closed the stream with {}",
                            PeerStreamError::parse(&s)
                        ))
                    }
                    None => {
                        return Err(format!(
                            "unexpected <{}/> during stream management negotiation",
                            s.name()
                        ))
                    }
                },
                Ok(_) => return Err("the peer closed the stream".to_string()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| "no answer to XEP-0198 negotiation in time".to_string())?
}

/// Waits (up to `FINAL_ACK_WAIT`) for the peer's answer to our last `<r/>`, so that what
/// it has received is not reported as lost or bounced.
pub async fn final_acks(reader: &mut Reader, carry: &mut Carry) {
    // The peer answers our <r/> (or sends a last <a/> on its own) before closing.
    let _ = tokio::time::timeout(FINAL_ACK_WAIT, async {
        while !carry.unacked.is_empty() {
            match reader.next_event().await {
                Ok(Event::Stanza(s)) => {
                    if let Some(Incoming::Ack { h }) = Incoming::parse(&s) {
                        if h.map(|h| carry.ack(h)).is_none() {
                            break;
                        }
                    }
                }
                _ => break,
            }
        }
    })
    .await;
}
