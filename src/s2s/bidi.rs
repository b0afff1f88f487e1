//! XEP-0288 bidirectional server-to-server connections: one TCP connection carries a domain
//! pair's stanzas both ways, instead of one connection per direction.
//!
//! 1. The receiving server offers `<bidi xmlns='urn:xmpp:features:bidi'/>` in its stream
//!    features (we do on encrypted streams only, when `s2s.bidi` and the peer's
//!    `[[federation.peer]] bidi` allow: [`negotiate::inbound`](super::negotiate::inbound));
//! 2. the initiating server that wants it sends `<bidi xmlns='urn:xmpp:bidi'/>` before it
//!    authenticates (§2.2; children are accepted: Prosody 13's XEP-0478 `<limits/>` there
//!    say the largest stanza it takes back, which we keep to; anything else is ignored).
//!    Nothing answers it;
//! 3. each direction is authenticated by the other's authentication (§2.2): the receiving
//!    server may send only from the stream's `to` to its `from` after SASL EXTERNAL, and
//!    only the reverse of each pair the initiating server proved by dialback. The initiating
//!    server takes only those. A receiving server never verifies a dialback key on the
//!    connection the key came on: our verifications always open a connection of their own
//!    ([`dialback::connect_back`](super::dialback::connect_back)), and a `<db:result>` on our
//!    own outbound stream is answered with a dialback error, so that the peer proves its
//!    domain on a connection of its own.
//!
//! Our two roles:
//! - **receiving** (the peer connected to us): `Reverse` is the stream's way back. For each
//!   pair proved on the stream it puts an [`OutboundHandle`] into the router
//!   ([`Router::attach_reverse`](crate::router::Router::attach_reverse)), unless an outbound
//!   session for that pair exists already; the inbound task writes what the router queues
//!   there. Without XEP-0198 in this direction, what it writes is kept until an XEP-0199 ping
//!   written after it is answered (as on outbound links); a ping unanswered for
//!   `ping_timeout` ends the stream (`<connection-timeout/>`). When the stream ends, the handles
//!   leave the router first, then what was queued or written unconfirmed goes back through
//!   the router, which starts an ordinary outbound session for it (or bounces it with the
//!   cause), so that a dropped stream loses nothing;
//! - **initiating** (we connected): the outbound link takes stanzas from the remote domain to
//!   the local one of its pair ([`reverse_allowed`]) and routes them, as an inbound stream
//!   would.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::{BidiLink, BounceCause, Direction};
use crate::router::{next_session_id, OutboundHandle, OutboundShared, Queued};
use crate::s2s::limits::{Limit, OutboundCap};
use crate::s2s::negotiate::inbound::{refuse, Refusal};
use crate::s2s::sm::Carry;
use crate::s2s::S2sContext;
use crate::xml::element::Element;
use crate::xml::error::StreamErrorCondition;
use crate::xml::stanza::{Kind, Stanza};
use crate::{config::Unconfirmed, jid};

/// The stream feature's namespace (§2.1).
pub const FEATURE_NS: &str = "urn:xmpp:features:bidi";
/// The request's namespace (§2.2).
pub const NS: &str = "urn:xmpp:bidi";
/// The stream feature we offer.
pub const FEATURE: &str = "<bidi xmlns='urn:xmpp:features:bidi'/>";
/// The request the initiating server sends, before it authenticates.
pub const REQUEST: &[u8] = b"<bidi xmlns='urn:xmpp:bidi'/>";

/// Whether the peer's stream features offer bidi.
pub fn offered(features: &Element) -> bool {
    features.child("bidi", FEATURE_NS).is_some()
}

/// Whether `stanza` is the initiating server's `<bidi/>` request (with any children).
pub fn is_request(stanza: &Stanza) -> bool {
    stanza.name() == "bidi" && stanza.ns() == NS
}

/// The rule for stanzas the receiving server sends us on our outbound stream (§2.2): from
/// `remote` (the domain we connected to and authenticated against) to `local` (the domain we
/// proved), nothing else. `Err` is the stream error that ends the stream.
pub fn reverse_allowed(
    stanza: &Stanza,
    local: &str,
    remote: &str,
    is_local: impl Fn(&str) -> bool,
) -> Result<(), Refusal> {
    let (Some(to), Some(from)) = (stanza.to(), stanza.from()) else {
        return Err(refuse(
            StreamErrorCondition::ImproperAddressing,
            "s2s stanzas need 'to' and 'from'",
        ));
    };
    let (Ok(to_domain), Ok(from_domain)) = (jid::domain_of(to), jid::domain_of(from)) else {
        return Err(refuse(
            StreamErrorCondition::ImproperAddressing,
            "'to' or 'from' is not a valid JID",
        ));
    };
    if !is_local(&to_domain) {
        return Err(refuse(
            StreamErrorCondition::HostUnknown,
            format!("{to_domain} is not served here"),
        ));
    }
    if *to_domain != *local || *from_domain != *remote {
        return Err(refuse(
            StreamErrorCondition::InvalidFrom,
            format!(
                "this bidirectional stream carries only {remote} to {local} (XEP-0288 §2.2), not {from_domain} to {to_domain}"
            ),
        ));
    }
    Ok(())
}

/// Whether `stanza` is a stanza (message, presence, iq) rather than a stream-level element.
pub fn is_stanza(stanza: &Stanza) -> bool {
    matches!(stanza.kind(), Kind::Message | Kind::Presence | Kind::Iq)
}

/// A ping whose answer confirms what was written before it.
struct Confirming {
    id: String,
    answered: oneshot::Receiver<()>,
    /// The oldest stanzas in the carry that it covers.
    covers: usize,
    /// `ping_timeout` after it was written: unanswered by then, the peer is taken for dead.
    deadline: tokio::time::Instant,
}

/// What the reverse direction of an inbound stream has for its task. A transient value of
/// the task's `select!`, handled at once: boxing the stanza would cost an allocation per
/// batch for nothing.
#[allow(clippy::large_enum_variant)]
pub(in crate::s2s) enum ReverseEvent {
    /// A stanza the router queued for the peer.
    Queued(Queued),
    /// The ping in flight was answered: what it covers has been read.
    Confirmed,
    /// The ping in flight went unanswered for `ping_timeout`: the stream is dead, and what it
    /// holds must go another way (fatal: the task ends the stream).
    Unanswered,
}

/// The way back on an inbound bidi stream: the router's handles on it and what it wrote
/// that the peer has not confirmed yet.
pub(in crate::s2s) struct Reverse {
    /// The id of every handle this stream put into the router, so that only they are removed.
    id: u64,
    tx: mpsc::Sender<Queued>,
    rx: mpsc::Receiver<Queued>,
    shared: Arc<OutboundShared>,
    /// The (local, remote) pairs the router sends here.
    attached: Vec<(String, String)>,
    /// Written and not yet confirmed by a ping's answer, oldest first.
    carry: Carry,
    ping: Option<Confirming>,
    /// The largest stanza the peer takes from us, as it said inside its `<bidi/>` (XEP-0478).
    advertised_max_bytes: Option<usize>,
    /// Stanzas over the peer's limit taken from the queue, with the bounce text, to bounce
    /// after the batch ([`Reverse::take_too_large`]).
    too_large: Vec<(Stanza, String)>,
    /// Set by a shutdown ([`Reverse::stop_taking`]): nothing more is taken from the queue.
    closing: bool,
    /// `fedgate_s2s_bidi_links{direction="inbound"}`.
    _gauge: BidiLink,
}

impl Reverse {
    pub(in crate::s2s) fn new(ctx: &S2sContext, advertised_max_bytes: Option<usize>) -> Reverse {
        let (tx, rx) = mpsc::channel(ctx.settings.queue_max_stanzas.max(1));
        let shared = Arc::new(OutboundShared::default());
        // Authenticated and writing from the start: a full queue is a slow peer.
        shared.established.store(true, Ordering::Release);
        let metrics = &ctx.router.metrics;
        Reverse {
            id: next_session_id(),
            tx,
            rx,
            shared,
            attached: Vec::new(),
            carry: Carry::new(metrics.outbound_unacked.clone()),
            ping: None,
            advertised_max_bytes,
            too_large: Vec::new(),
            closing: false,
            _gauge: metrics.bidi_links.link(Direction::Inbound),
        }
    }

    /// Offers the router this stream for stanzas from `local` to `remote`; a pair that has an
    /// outbound session already keeps it.
    pub(in crate::s2s) fn attach(&mut self, ctx: &S2sContext, local: &str, remote: &str) {
        if self.attached.iter().any(|(l, r)| l == local && r == remote) {
            return;
        }
        let handle = OutboundHandle {
            id: self.id,
            local: Arc::from(local),
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        };
        if ctx.router.attach_reverse(remote, handle) {
            tracing::debug!(
                local,
                remote,
                "the inbound stream carries our stanzas back (XEP-0288)"
            );
            self.attached.push((local.to_string(), remote.to_string()));
        }
    }

    /// Whether this stream carries `stanza` back: its `from` and `to` domains are a pair
    /// attached here.
    pub(in crate::s2s) fn carries(&self, stanza: &Stanza) -> bool {
        let from = stanza.from().and_then(|j| jid::domain_of(j).ok());
        let to = stanza.to().and_then(|j| jid::domain_of(j).ok());
        match (from, to) {
            (Some(from), Some(to)) => self
                .attached
                .iter()
                .any(|(l, r)| **l == *from && **r == *to),
            _ => false,
        }
    }

    /// Takes the stream out of the router: stanzas for its pairs go elsewhere from now on.
    pub(in crate::s2s) fn detach(&self, ctx: &S2sContext) {
        for (_, remote) in &self.attached {
            ctx.router.remove_outbound(remote, self.id);
        }
    }

    /// Whether the carry has room for more stanzas before the peer confirms some.
    fn room(&self, ctx: &S2sContext) -> bool {
        !self.closing && self.carry.unacked.len() < ctx.settings.queue_max_stanzas.max(1)
    }

    /// The gateway is stopping and the stream is to end: the router forgets it (new stanzas
    /// for its pairs take an ordinary outbound session, which the drain waits for), and it
    /// takes nothing more from its queue (what is there goes the same way when it ends).
    /// `Some` when what it wrote is not confirmed yet: the stream should end only once the
    /// ping in flight is answered (or goes unanswered), since the stanzas it covers would
    /// otherwise be sent again and arrive twice. The bytes are a ping to write when none is in
    /// flight.
    pub(in crate::s2s) fn stop_taking(&mut self, ctx: &S2sContext) -> Option<Vec<u8>> {
        self.detach(ctx);
        self.closing = true;
        if self.all_confirmed() {
            return None;
        }
        Some(match self.ping {
            Some(_) => Vec::new(),
            None => self.confirm(ctx),
        })
    }

    /// Whether the peer has confirmed everything written.
    pub(in crate::s2s) fn all_confirmed(&self) -> bool {
        self.carry.unacked.is_empty()
    }

    /// The next thing to do on the reverse direction.
    pub(in crate::s2s) async fn next(&mut self, ctx: &S2sContext) -> ReverseEvent {
        loop {
            let room = self.room(ctx);
            let Reverse { ping, rx, .. } = self;
            let deadline = ping.as_ref().map(|p| p.deadline);
            let answered = async {
                match ping.as_mut() {
                    Some(p) => (&mut p.answered).await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let timed_out = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ok = answered => if ok {
                    return ReverseEvent::Confirmed;
                },
                () = timed_out => return ReverseEvent::Unanswered,
                Some(q) = rx.recv(), if room => return ReverseEvent::Queued(q),
            }
            // The ping can no longer be answered (it was cancelled): dropped without
            // releasing anything, and never polled again; the next batch asks again, for
            // everything still unconfirmed.
            self.ping = None;
        }
    }

    /// The stanzas [`Reverse::batch`] held back as larger than the peer takes, with the text
    /// of their bounce (`policy-violation`, cause `too_large`).
    pub(in crate::s2s) fn take_too_large(&mut self) -> Vec<(Stanza, String)> {
        std::mem::take(&mut self.too_large)
    }

    /// The stanzas of a confirmed ping are read: forgotten. Those written while it was in
    /// flight are not covered by it: the bytes returned are a new ping for them (to write
    /// now), or nothing.
    pub(in crate::s2s) fn confirmed(&mut self, ctx: &S2sContext) -> Vec<u8> {
        if let Some(p) = self.ping.take() {
            self.carry.release(p.covers);
        }
        if self.carry.unacked.is_empty() {
            return Vec::new();
        }
        self.confirm(ctx)
    }

    /// A ping whose answer confirms everything in the carry so far, made the one in flight;
    /// its bytes to write.
    fn confirm(&mut self, ctx: &S2sContext) -> Vec<u8> {
        let Some((local, remote)) = self.attached.first() else {
            return Vec::new();
        };
        let ping = ctx.pings.start(local, remote);
        self.ping = Some(Confirming {
            id: ping.id,
            answered: ping.answered,
            covers: self.carry.unacked.len(),
            deadline: tokio::time::Instant::now() + ctx.settings.ping_timeout,
        });
        ping.bytes
    }

    /// Takes `first` and whatever else is queued (up to the carry's room), and returns the
    /// bytes to write: the stanzas in `jabber:server`, and a ping that confirms them when
    /// none is in flight.
    pub(in crate::s2s) fn batch(&mut self, ctx: &S2sContext, first: Queued) -> Vec<u8> {
        let target = crate::xml::stanza::NsContext::server();
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(Queued { stanza, .. }) = next.take() {
            self.shared
                .queued_bytes
                .fetch_sub(stanza.raw().len(), Ordering::AcqRel);
            let bytes = stanza.bytes_for(&target);
            let remote = stanza
                .to()
                .and_then(|t| jid::domain_of(t).ok())
                .map(|d| d.into_owned())
                .unwrap_or_default();
            let configured = ctx.security.load().peer(&remote).max_stanza_bytes;
            let cap = OutboundCap::from_limits(configured, self.advertised_max_bytes);
            if let Some(cap) = cap.filter(|cap| bytes.len() > cap.max) {
                // XEP-0478 §4: not sent; bounced after the batch.
                ctx.limits
                    .refused(Limit::PeerMaxBytes, &remote, "an outbound stanza");
                self.too_large
                    .push((stanza, cap.text(&remote, bytes.len())));
                if out.len() < 256 * 1024 && self.room(ctx) {
                    next = self.rx.try_recv().ok();
                }
                continue;
            }
            ctx.router.metrics.s2s_out.count(stanza.kind(), bytes.len());
            out.extend_from_slice(&bytes);
            self.carry.push(stanza);
            if out.len() < 256 * 1024 && self.room(ctx) {
                next = self.rx.try_recv().ok();
            }
        }
        // A ping confirms what is written; a batch held back whole writes none. With one in
        // flight, the next goes when it is answered ([`Reverse::confirmed`]).
        if self.ping.is_none() && !out.is_empty() {
            let ping = self.confirm(ctx);
            out.extend_from_slice(&ping);
        }
        out
    }

    /// The stream has ended: the router forgets it first, so that nothing new arrives, then
    /// what it wrote unconfirmed (oldest first; resent or bounced as the peer's
    /// `unconfirmed` says) and what was still queued go back through the router, to an
    /// ordinary outbound session.
    pub(in crate::s2s) async fn end(mut self, ctx: &S2sContext, why: &str) {
        self.detach(ctx);
        self.rx.close();
        if let Some(mut p) = self.ping.take() {
            // An answer read just before the stream ended still confirms.
            if p.answered.try_recv().is_ok() {
                self.carry.release(p.covers);
            } else {
                ctx.pings.cancel(&p.id);
            }
        }
        let router = &ctx.router;
        let unconfirmed = self.carry.take_unacked();
        if !unconfirmed.is_empty() {
            let n = unconfirmed.len();
            router.metrics.outbound_stanzas.unconfirmed.inc_by(n as u64);
            tracing::info!("{n} stanzas written on a bidirectional inbound stream and not confirmed go out again: {why}");
        }
        for stanza in unconfirmed {
            let remote = stanza
                .to()
                .and_then(|t| jid::domain_of(t).ok())
                .map(|d| d.into_owned())
                .unwrap_or_default();
            match ctx.security.load().peer(&remote).unconfirmed {
                Unconfirmed::Resend => {
                    router.metrics.outbound_stanzas.resent_unconfirmed.inc();
                    router.reroute(stanza).await;
                }
                Unconfirmed::Bounce => {
                    let text = format!("the bidirectional stream from {remote} closed before it confirmed receiving this stanza ({why}); it may have been delivered");
                    router
                        .bounce(
                            &stanza,
                            crate::xml::error::StanzaErrorCondition::RemoteServerTimeout,
                            BounceCause::Unconfirmed,
                            &text,
                        )
                        .await;
                }
            }
        }
        while let Ok(Queued { stanza, .. }) = self.rx.try_recv() {
            self.shared
                .queued_bytes
                .fetch_sub(stanza.raw().len(), Ordering::AcqRel);
            router.reroute(stanza).await;
        }
    }
}
