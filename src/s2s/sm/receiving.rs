//! The receiving side (an inbound stream): the wire behaviour is listed step by step in the
//! [module docs](super). [`Receiving`] counts what is handled; `Inbound::stream_management`
//! answers each element, `Inbound::hand_over` gives the counters to a stream resuming this
//! one.

use super::{ack, check_handled, enabled, failed, parse, resumed, Request, SmError, Takeover};
use crate::dialback::new_stream_id;
use crate::s2s::inbound::{Abort, Inbound};
use crate::s2s::negotiate::inbound::refuse_sm;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::stanza::Stanza;

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
    /// Counting from `h`: 0 after `<enable/>`, the kept count after `<resume/>`; `id` when the
    /// stream can be resumed.
    pub fn new(id: Option<String>, h: u32) -> Receiving {
        Receiving { h, id }
    }

    /// One more stanza handled (routed, bounced, or answered here).
    #[inline]
    pub fn handled(&mut self) {
        self.h = self.h.wrapping_add(1);
    }

    /// Stanzas handled so far, modulo 2^32: the `h` of our next `<a/>`.
    pub fn h(&self) -> u32 {
        self.h
    }

    /// The resumption id given in `<enabled/>` or carried over by `<resumed/>`, if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

impl Inbound {
    /// A stream management element (XEP-0198). We are the receiving side: we answer
    /// `<enable/>` and `<resume/>`, count, and acknowledge; we send no stanzas here, so the
    /// peer's own count of ours must be 0.
    pub(in crate::s2s) async fn stream_management(&mut self, stanza: &Stanza) -> Result<(), Abort> {
        let request = parse(stanza).map_err(|e| Abort::Refused(refuse_sm(&e)))?;
        let settings = &self.ctx.settings;
        let metrics = &self.ctx.router.metrics.sm_in;
        let negotiated = self.sm.is_some();
        match request {
            Request::Enable { .. } | Request::Resume { .. } if !settings.stream_management => {
                self.conn
                    .send(&failed(StanzaErrorCondition::FeatureNotImplemented, None));
            }
            // §3: only on an authenticated stream, and only once.
            Request::Enable { .. } | Request::Resume { .. }
                if self.authenticated.is_empty() || negotiated =>
            {
                self.conn
                    .send(&failed(StanzaErrorCondition::UnexpectedRequest, None));
            }
            Request::Enable { resume } => {
                let id = resume.then(new_stream_id);
                self.conn
                    .send(&enabled(id.as_deref(), settings.resume_timeout));
                metrics.enabled.inc();
                self.start_sm(id, 0);
            }
            Request::Resume { h, .. } if h != 0 => {
                return Err(Abort::Refused(refuse_sm(&SmError::HandledCountTooHigh {
                    h,
                    sent: 0,
                })));
            }
            Request::Resume { previd, .. } => {
                let domains = self.remote_domains();
                match self.ctx.resumable.resume(&previd, &domains).await {
                    Some(h) => {
                        tracing::debug!(peer = %self.conn.peer, h, "inbound s2s resumed");
                        self.conn.send(&resumed(&previd, h));
                        metrics.resumed.inc();
                        self.start_sm(Some(previd), h);
                    }
                    None => {
                        // §5: the stream stays; the sender may enable afresh and resend.
                        self.conn
                            .send(&failed(StanzaErrorCondition::ItemNotFound, Some(0)));
                        metrics.resume_failed.inc();
                    }
                }
            }
            Request::AckRequest => match &self.sm {
                Some(sm) => {
                    self.conn.send(&ack(sm.h()));
                    metrics.acked.inc();
                }
                None => {
                    tracing::debug!(peer = %self.conn.peer, "<r/> without stream management: ignored")
                }
            },
            Request::Ack { h } => {
                if negotiated {
                    check_handled(h, 0, 0).map_err(|e| Abort::Refused(refuse_sm(&e)))?;
                }
            }
        }
        Ok(())
    }
    /// Stream management is on from `h`, resumable under `id` if given.
    fn start_sm(&mut self, id: Option<String>, h: u32) {
        if let Some(id) = &id {
            self.sm_live = Some(self.ctx.resumable.register(id));
        }
        self.sm = Some(Receiving::new(id, h));
        self.live.update(|n| n.stream_management = true);
    }
    /// Stream management is off: the stream restarted, or its counters moved elsewhere.
    pub(in crate::s2s) fn end_sm(&mut self) {
        let sm = self.sm.take();
        let live = self.sm_live.take();
        self.live.update(|n| n.stream_management = false);
        if let (Some(id), Some(live)) = (sm.as_ref().and_then(Receiving::id), live) {
            self.ctx.resumable.unregister(id, live.session);
        }
    }
    /// A stream resuming this one asks for its counters: they move if that stream is
    /// authenticated for each of our domains, and then this stream must handle nothing more.
    pub(in crate::s2s) fn hand_over(&mut self, takeover: Takeover) -> bool {
        let ours = self.remote_domains();
        if !ours.iter().all(|d| takeover.domains.contains(d)) {
            tracing::info!(peer = %self.conn.peer, "refused a resumption of this stream from other domains");
            return false;
        }
        let Some(h) = self.sm.as_ref().map(Receiving::h) else {
            return false;
        };
        if takeover.reply.send(h).is_err() {
            // The resuming stream gave up waiting; this one goes on.
            return false;
        }
        self.end_sm();
        true
    }
}
