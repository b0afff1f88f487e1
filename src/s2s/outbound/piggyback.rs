//! Outbound piggybacking (XEP-0220 §2.6 "Multiplexing", sender multiplexing §2.6.1): one
//! outbound link per remote domain carries every local domain that writes to it, so that a
//! component's domain next to the core's costs no second TCP+TLS connection.
//!
//! Each (local, remote) pair keeps its own [session](super) (bounded queue, retry window,
//! bounces with causes, metrics); only the link is shared. The session whose own link is up
//! is the link's *host* and is listed in [`Links`]; a session for another local domain to
//! the same remote domain *rides* on it as a [`Guest`] instead of connecting:
//!
//! 1. [`Session::ride`]: before an attempt of its own, a session whose peer allows it
//!    (`piggyback`, and the peer has not refused it before) hands the remote domain's host
//!    its queue and what its last link left unacknowledged;
//! 2. the host ([`Session::admit`]) checks that the link has room
//!    (`max_outbound_pairs_per_stream`, its own pair included) and that dialback may
//!    authenticate the pair on it (policy, TLS, the peer offers dialback), then writes
//!    `<db:result from=local2 to=remote>key</db:result>` with the XEP-0185 key for the
//!    link's stream id. The guest waits in [`GuestState::ExpectDbResult`]: none of its
//!    stanzas is written before the answer (XEP-0220 §2.1.1), while the host's pairs go on.
//!    XEP-0344 §2.4 notes that EXTERNAL cannot add a pair, so on a SASL EXTERNAL link too
//!    the extra pair is a `<db:result>`; a peer whose certificate check covers local2 may
//!    answer it at once (dialback without dialback);
//! 3. [`Session::answered`]: `type='valid'` makes it [`GuestState::Carried`]: what its last
//!    link left unacknowledged is written first, then its queue is read with the others,
//!    each queue in turn, one batch and one flush for all. `invalid`, a dialback error, no
//!    answer within `negotiation_timeout`, or the link ending first, hands the guest its
//!    queue back untouched ([`Parting::NotCarried`]): it connects a link of its own, and a
//!    refusal is remembered for the remote domain (`S2sContext::piggyback_refused`, until
//!    restart), so later pairs do not ask again. A peer that ends the stream over the
//!    request (as fedgate does on `invalid`) is a lost link for the host, which reconnects;
//! 4. when the link ends, every guest gets back its queue, its share of the stanzas not yet
//!    acknowledged (by their `from` domain, in order: [`Carry::split_off`]) and how the link
//!    ended ([`Parting::Ended`]), and goes on as after a link of its own: it resends them on
//!    its next link, or bounces them when it gives up. XEP-0198 counts a stream, not a pair,
//!    so a link that carried guests is not resumed: what it left is resent on fresh streams.
//!
//! The remote domain's entry in [`Links`] is taken before the link is up: a session that finds
//! none lists itself as [`HostLink::Connecting`] and connects; a pair that starts meanwhile
//! waits for that link (within its own retry window) instead of opening a second one, and
//! rides on it once it is up. A host whose link is lost stays listed as connecting while it
//! reconnects, so that its guests come back to its next link rather than each connecting
//! one; a session that ends (nothing left to send, or it gave up) leaves the list, and the
//! pairs waiting on it connect as before (the first of them becomes the host).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::link::Ended;
use super::Session;
use crate::connection::Writer;
use crate::jid;
use crate::metrics::{Direction, PiggybackResult};
use crate::router::{OutboundShared, Queued};
use crate::s2s::dialback::initiating::{self, DialbackRefusal};
use crate::s2s::dialback::result_request;
use crate::s2s::registry::Pair;
use crate::s2s::sm::Carry;
use crate::s2s::trace::Trace;
use crate::xml::stanza::Stanza;

/// Remote domain → the link that takes more pairs to it.
pub type Links = DashMap<String, Host>;

/// The session that holds a remote domain's link, or is connecting it.
pub struct Host {
    /// The host session's id, so that it only ever replaces or removes its own entry.
    id: u64,
    link: HostLink,
}

/// Where the host's link stands.
pub enum HostLink {
    /// Being connected (a first attempt, backoff between attempts, or a reconnect after a
    /// loss). Pairs that come now wait: replacing or removing the entry drops the sender,
    /// which wakes them.
    Connecting(watch::Sender<()>),
    /// Up: requests to carry another pair go here.
    Up(mpsc::Sender<Guest>),
}

impl HostLink {
    /// A link being connected, with no pair waiting on it yet.
    fn connecting() -> HostLink {
        HostLink::Connecting(watch::channel(()).0)
    }
}

/// Requests a host holds before it reads them.
const REQUESTS: usize = 16;

/// Why a pair was not carried; its session connects a link of its own.
#[derive(Debug)]
pub(super) enum NotCarried {
    /// The peer answered our `<db:result>` with `invalid` or a dialback error.
    Refused(DialbackRefusal),
    /// The link carries `max_outbound_pairs_per_stream` pairs already.
    Full { max: usize },
    /// No answer within `negotiation_timeout`.
    Timeout,
    /// The link cannot take the pair (dialback not possible on it), or ended first.
    Unavailable(String),
}

impl std::fmt::Display for NotCarried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotCarried::Refused(refusal) => write!(f, "the peer refused the pair ({refusal})"),
            NotCarried::Full { max } => write!(
                f,
                "the link carries max_outbound_pairs_per_stream ({max}) pairs already"
            ),
            NotCarried::Timeout => f.write_str("the peer did not answer the pair's dialback key"),
            NotCarried::Unavailable(why) => f.write_str(why),
        }
    }
}

/// How a guest left its host.
pub(super) enum Parting {
    /// It was never carried: its queue comes back untouched.
    NotCarried(NotCarried),
    /// It was carried until the link ended so.
    Ended(Ended),
}

/// What a guest gets back from its host.
pub(super) struct Detached {
    pub(super) rx: mpsc::Receiver<Queued>,
    pub(super) carry: Carry,
    pub(super) parting: Parting,
}

/// What a guest waits for on its host's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GuestState {
    /// The peer's `<db:result type=…/>` for the pair, by `deadline`.
    ExpectDbResult { deadline: Instant },
    /// The link carries the pair.
    Carried,
}

/// A pair handed to a host: its queue and carry, and how to tell its session. Always goes
/// back to its session ([`Drop`] sends it back if nothing else did), so no stanza is left
/// behind in a host that ends.
pub(super) struct Guest {
    pub(super) local: String,
    /// The pair's session id (its router entry).
    id: u64,
    shared: Arc<OutboundShared>,
    state: GuestState,
    /// `None` only once sent back.
    parts: Option<(mpsc::Receiver<Queued>, Carry)>,
    accepted: Option<oneshot::Sender<()>>,
    back: Option<oneshot::Sender<Detached>>,
}

impl Guest {
    fn rx(&mut self) -> &mut mpsc::Receiver<Queued> {
        &mut self
            .parts
            .as_mut()
            .expect("a guest has its queue until it leaves")
            .0
    }

    /// Sends the guest back to its session, with `carry` (its share of the link's) for one
    /// that was carried.
    fn part(mut self, parting: Parting, carry: Option<Carry>) {
        if let (Some(back), Some((rx, own))) = (self.back.take(), self.parts.take()) {
            let _ = back.send(Detached {
                rx,
                carry: carry.unwrap_or(own),
                parting,
            });
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let (Some(back), Some((rx, carry))) = (self.back.take(), self.parts.take()) {
            let why = "the link's session ended".to_string();
            let parting = match self.state {
                GuestState::Carried => Parting::Ended(Ended::Lost(why)),
                GuestState::ExpectDbResult { .. } => {
                    Parting::NotCarried(NotCarried::Unavailable(why))
                }
            };
            let _ = back.send(Detached { rx, carry, parting });
        }
    }
}

/// Which queue a stanza came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// The link's own pair.
    Host,
    /// The guest at this index.
    Guest(usize),
}

/// What [`Guests::poll_input`] found.
pub(super) enum Input {
    /// A would-be guest asks to be carried.
    Request(Guest),
    /// A stanza from the queue of this slot, or `None`: that queue closed.
    Stanza(Slot, Option<Queued>),
}

/// The host side: the link's guests, and the requests of would-be ones.
pub(super) struct Guests {
    list: Vec<Guest>,
    /// Requests, while this link is listed in [`Links`].
    requests: Option<mpsc::Receiver<Guest>>,
    /// Which queue is read first next time, so that no pair always waits for the others.
    turn: usize,
    /// A guest was carried: the link is not resumed (XEP-0198 counts the stream).
    carried_any: bool,
}

impl Guests {
    /// No guests, and none taken (not listed).
    pub(super) fn none() -> Guests {
        Guests {
            list: Vec::new(),
            requests: None,
            turn: 0,
            carried_any: false,
        }
    }

    /// Whether the link carries a pair from `local`, as a guest.
    pub(super) fn carries(&self, local: &str) -> bool {
        self.list
            .iter()
            .any(|g| g.state == GuestState::Carried && g.local == local)
    }

    /// The guest waiting for the answer for (`local`, remote).
    fn expecting(&self, local: &str) -> Option<usize> {
        self.list
            .iter()
            .position(|g| g.local == local && matches!(g.state, GuestState::ExpectDbResult { .. }))
    }

    /// When the first pending answer is due, if any is.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.list
            .iter()
            .filter_map(|g| match g.state {
                GuestState::ExpectDbResult { deadline } => Some(deadline),
                GuestState::Carried => None,
            })
            .min()
    }

    /// The shared state of the pair that `slot` names.
    pub(super) fn shared<'a>(
        &'a self,
        slot: Slot,
        host: &'a Arc<OutboundShared>,
    ) -> &'a Arc<OutboundShared> {
        match slot {
            Slot::Host => host,
            Slot::Guest(i) => &self.list[i].shared,
        }
    }

    /// How many queues the link reads: the host's and each carried guest's.
    pub(super) fn slots(&self) -> usize {
        1 + self
            .list
            .iter()
            .filter(|g| g.state == GuestState::Carried)
            .count()
    }

    /// The `k`-th of the [`slots`](Guests::slots) queues counted from the one whose turn it
    /// is. Found again each time rather than collected, so that reading the queues (each
    /// wake-up, each batch) allocates nothing.
    pub(super) fn slot(&self, k: usize, slots: usize) -> Slot {
        match (self.turn + k) % slots {
            0 => Slot::Host,
            j => Slot::Guest(
                self.list
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.state == GuestState::Carried)
                    .nth(j - 1)
                    .map(|(i, _)| i)
                    .expect("counted by slots()"),
            ),
        }
    }

    /// The next batch starts with the next queue, so that no pair always waits for the
    /// others.
    pub(super) fn next_turn(&mut self) {
        self.turn = self.turn.wrapping_add(1);
    }

    /// The queue of `slot`.
    pub(super) fn queue<'a>(
        &'a mut self,
        slot: Slot,
        host: &'a mut mpsc::Receiver<Queued>,
    ) -> &'a mut mpsc::Receiver<Queued> {
        match slot {
            Slot::Host => host,
            Slot::Guest(i) => self.list[i].rx(),
        }
    }

    /// What the link reads next from its pairs: a would-be guest's request, or (with
    /// `room`) the first stanza found in the queues, read in turn. A guest queue that
    /// closed yields `(slot, None)`.
    pub(super) fn poll_input(
        &mut self,
        cx: &mut Context<'_>,
        host: &mut mpsc::Receiver<Queued>,
        room: bool,
    ) -> Poll<Input> {
        if let Some(requests) = &mut self.requests {
            if let Poll::Ready(Some(guest)) = requests.poll_recv(cx) {
                return Poll::Ready(Input::Request(guest));
            }
        }
        if !room {
            return Poll::Pending;
        }
        if self.list.is_empty() {
            return host.poll_recv(cx).map(|q| Input::Stanza(Slot::Host, q));
        }
        let slots = self.slots();
        for k in 0..slots {
            let slot = self.slot(k, slots);
            if let Poll::Ready(next) = self.queue(slot, host).poll_recv(cx) {
                return Poll::Ready(Input::Stanza(slot, next));
            }
        }
        Poll::Pending
    }

    /// Every guest, leaving none.
    pub(super) fn take_all(&mut self) -> Vec<Guest> {
        std::mem::take(&mut self.list)
    }
}

/// Whether `stanza` is from `local` (the pair it belongs to on a shared link).
fn from_domain_is(stanza: &Stanza, local: &str) -> bool {
    stanza
        .from()
        .and_then(|f| jid::domain_of(f).ok())
        .is_some_and(|d| *d == *local)
}

/// What the host needs of its link to take more pairs.
pub(super) struct LinkFacts {
    pub(super) stream_id: Option<String>,
    pub(super) dialback_offered: bool,
    pub(super) tls: bool,
}

impl Session {
    /// Lists this session's link as the remote domain's host, if the peer allows
    /// piggybacking and no other link is listed: the requests it will read.
    pub(super) fn host(&self) -> Guests {
        let mut guests = Guests::none();
        if !self.ctx.security.load().peer(&self.remote).piggyback {
            // A reload turned it off while we connected: our "connecting" entry must not
            // keep pairs waiting for a link that will take none.
            self.unlist();
            return guests;
        }
        let (tx, rx) = mpsc::channel(REQUESTS);
        let up = Host {
            id: self.id,
            link: HostLink::Up(tx),
        };
        match self.ctx.links.entry(self.remote.clone()) {
            dashmap::Entry::Vacant(e) => {
                e.insert(up);
            }
            // Our own "connecting" entry: the pairs waiting on it wake and ask.
            dashmap::Entry::Occupied(mut e) if e.get().id == self.id => {
                e.insert(up);
            }
            // Another session's link (we connected on our own after waiting for it).
            dashmap::Entry::Occupied(_) => return guests,
        }
        guests.requests = Some(rx);
        guests
    }

    /// The link ends: every request not read yet goes back as not carried. After a loss the
    /// entry stays as `Connecting` (`reconnect`), so that the guests parted now wait for
    /// this session's next link; [`Session::unlist`] removes it if there is none.
    pub(super) fn unhost(&self, guests: &mut Guests, reconnect: bool) {
        let Some(mut requests) = guests.requests.take() else {
            return;
        };
        if reconnect {
            if let Some(mut host) = self.ctx.links.get_mut(&self.remote) {
                if host.id == self.id {
                    host.link = HostLink::connecting();
                }
            }
        } else {
            self.unlist();
        }
        requests.close();
        while let Ok(guest) = requests.try_recv() {
            self.ctx
                .router
                .metrics
                .piggyback
                .result(PiggybackResult::Lost);
            guest.part(
                Parting::NotCarried(NotCarried::Unavailable("the link closed".into())),
                None,
            );
        }
    }

    /// This session holds no link to the remote domain and connects none: its entry (up or
    /// connecting) goes, which wakes the pairs that wait on it.
    pub(super) fn unlist(&self) {
        self.ctx
            .links
            .remove_if(&self.remote, |_, h| h.id == self.id);
    }

    /// Step 2: a would-be guest's request. Refused at once when the link has no room or
    /// cannot authenticate the pair; else our `<db:result>` for it is written (not flushed)
    /// and it waits for the answer.
    pub(super) fn admit(
        &self,
        guests: &mut Guests,
        mut guest: Guest,
        link: &LinkFacts,
        writer: &mut Writer,
    ) {
        let metrics = &self.ctx.router.metrics;
        let policy = self.ctx.security.load().peer(&self.remote);
        let max = policy.max_outbound_pairs_per_stream;
        let refusal = if 1 + guests.list.len() >= max {
            metrics.piggyback.result(PiggybackResult::Full);
            Some(NotCarried::Full { max })
        } else if !policy.piggyback {
            Some(NotCarried::Unavailable(format!(
                "piggybacking to {} is off",
                self.remote
            )))
        } else if !policy.allows_dialback(link.tls) || !link.dialback_offered {
            Some(NotCarried::Unavailable(format!(
                "dialback is not possible on the link to {}",
                self.remote
            )))
        } else if link.stream_id.is_none() {
            Some(NotCarried::Unavailable(
                "the link's stream has no id to key dialback".into(),
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            guest.part(Parting::NotCarried(why), None);
            return;
        }
        let stream_id = link.stream_id.as_deref().unwrap_or_default();
        let key = self.ctx.secret.key(&self.remote, &guest.local, stream_id);
        writer.send(&result_request(&guest.local, &self.remote, &key));
        tracing::debug!(local = %guest.local, remote = %self.remote, host = %self.local, "asking to carry the pair on the established link (XEP-0220 multiplexing)");
        guest.state = GuestState::ExpectDbResult {
            deadline: Instant::now() + self.ctx.settings.negotiation_timeout,
        };
        guests.list.push(guest);
    }

    /// Whether `stanza` is the peer's answer to one of our `<db:result>`s for a guest (or a
    /// late one for a pair given up on): a typed `<db:result>` from the remote domain to a
    /// local one.
    pub(super) fn is_guest_answer(&self, stanza: &Stanza) -> bool {
        stanza.kind() == crate::xml::stanza::Kind::DbResult
            && stanza.type_().is_some()
            && stanza.from() == Some(self.remote.as_str())
            && stanza
                .to()
                .is_some_and(|to| to != self.local && self.ctx.router.is_local(to))
    }

    /// Step 3: the peer's answer for a guest's pair. Valid: the guest is carried (what its
    /// last link left unacknowledged written first, not flushed: `Ok(n)` with how many);
    /// refused: it goes back. An answer for no pair we are waiting for is ignored (a late
    /// one, after the deadline; XEP-0220 §3.1: never acted on).
    pub(super) fn answered(
        &self,
        guests: &mut Guests,
        stanza: &Stanza,
        writer: &mut Writer,
        carry: &mut Carry,
    ) -> usize {
        let metrics = &self.ctx.router.metrics;
        let to = stanza.to().unwrap_or_default();
        let Some(i) = guests.expecting(to) else {
            tracing::debug!(local = %to, remote = %self.remote, "ignored a dialback answer for a pair not waiting for one");
            return 0;
        };
        let local = guests.list[i].local.clone();
        let verdict = initiating::answer(stanza, &self.remote, &local, &self.remote, metrics);
        let refusal = match verdict {
            Ok(Ok(())) => None,
            Ok(Err(refusal)) => Some(refusal),
            // Not ours after all (cannot happen: `is_guest_answer` checked the pair).
            Err(_) => return 0,
        };
        if let Some(refusal) = refusal {
            let result = match refusal {
                DialbackRefusal::Invalid => PiggybackResult::Invalid,
                _ => PiggybackResult::Error,
            };
            metrics.piggyback.result(result);
            tracing::info!(%local, remote = %self.remote, "the peer refused to carry the pair on the established link ({refusal}); it gets a link of its own, and later pairs to it too");
            self.ctx.piggyback_refused.insert(self.remote.clone());
            guests
                .list
                .remove(i)
                .part(Parting::NotCarried(NotCarried::Refused(refusal)), None);
            return 0;
        }
        metrics.piggyback.result(PiggybackResult::Carried);
        metrics.piggyback.pairs.inc();
        guests.carried_any = true;
        let guest = &mut guests.list[i];
        guest.state = GuestState::Carried;
        let leftover = guest
            .parts
            .as_mut()
            .map(|(_, c)| {
                let unconfirmed = c.unconfirmed;
                (c.take_unacked(), unconfirmed)
            })
            .unwrap_or_default();
        if let Some(accepted) = guest.accepted.take() {
            let _ = accepted.send(());
        }
        tracing::info!(%local, remote = %self.remote, host = %self.local, "outbound s2s carried on the established link (XEP-0220 multiplexing)");
        self.live.update(|n| {
            n.pairs.push(Pair {
                local: local.clone(),
                remote: self.remote.clone(),
                auth: super::AuthMethod::Dialback.as_str(),
            })
        });
        let (stanzas, unconfirmed) = leftover;
        let n = stanzas.len();
        if n > 0 {
            let target = crate::xml::stanza::NsContext::server();
            for stanza in stanzas {
                writer.send(&stanza.bytes_for(&target));
                carry.push(stanza);
            }
            metrics.outbound_stanzas.resent.inc_by(n as u64);
            if unconfirmed > 0 {
                metrics
                    .outbound_stanzas
                    .resent_unconfirmed
                    .inc_by(unconfirmed as u64);
            }
        }
        n
    }

    /// Pending guests whose answer is overdue go back (not carried).
    pub(super) fn expire(&self, guests: &mut Guests, now: Instant) {
        let mut i = 0;
        while i < guests.list.len() {
            let overdue = matches!(guests.list[i].state, GuestState::ExpectDbResult { deadline } if deadline <= now);
            if overdue {
                self.ctx
                    .router
                    .metrics
                    .piggyback
                    .result(PiggybackResult::Timeout);
                self.ctx.piggyback_refused.insert(self.remote.clone());
                guests
                    .list
                    .remove(i)
                    .part(Parting::NotCarried(NotCarried::Timeout), None);
            } else {
                i += 1;
            }
        }
    }

    /// Step 4, on the way out (after the host's own accounting of a lost link): each guest
    /// goes back to its session with its share of `carry` and how the link ended.
    pub(super) fn part_all(&self, guests: &mut Guests, carry: &mut Carry, ended: &Ended) {
        self.unhost(guests, matches!(ended, Ended::Lost(_)));
        let metrics = &self.ctx.router.metrics;
        for guest in guests.take_all() {
            match guest.state {
                GuestState::Carried => {
                    metrics.piggyback.pairs.dec();
                    let mut own = carry.empty_like();
                    carry.split_off(&mut own, |s| from_domain_is(s, &guest.local));
                    self.live
                        .update(|n| n.pairs.retain(|p| p.local != guest.local));
                    // `Done` ends a session only once its queue was closed and written out
                    // (`close_guest_queues`); a guest whose queue is still open goes on.
                    let mut guest = guest;
                    let ended = match ended {
                        Ended::Done if !guest.rx().is_closed() => {
                            Ended::Lost("the link it rode on closed".into())
                        }
                        other => other.clone(),
                    };
                    guest.part(Parting::Ended(ended), Some(own));
                }
                GuestState::ExpectDbResult { .. } => {
                    // Perhaps over our request (some servers end the stream on a
                    // <db:result> they do not expect): not asked again.
                    metrics.piggyback.result(PiggybackResult::Lost);
                    if matches!(ended, Ended::Lost(_)) {
                        self.ctx.piggyback_refused.insert(self.remote.clone());
                    }
                    guest.part(
                        Parting::NotCarried(NotCarried::Unavailable(
                            "the link ended before the peer answered".into(),
                        )),
                        None,
                    );
                }
            }
        }
        if guests.carried_any {
            carry.resume = None;
        }
    }

    /// A carried guest's queue closed (nothing can route to it any more): it goes back to
    /// its session, which is over.
    pub(super) fn closed_guest(&self, guests: &mut Guests, i: usize, carry: &mut Carry) {
        let guest = guests.list.remove(i);
        self.ctx.router.metrics.piggyback.pairs.dec();
        let mut own = carry.empty_like();
        carry.split_off(&mut own, |s| from_domain_is(s, &guest.local));
        self.live
            .update(|n| n.pairs.retain(|p| p.local != guest.local));
        guest.part(Parting::Ended(Ended::Done), Some(own));
    }

    /// Finishing the link (idle or shutdown): the guests leave the router and their queues
    /// are written out like the host's.
    pub(super) fn close_guest_queues(&self, guests: &mut Guests) -> Vec<(Slot, Queued)> {
        let mut out = Vec::new();
        for (i, guest) in guests.list.iter_mut().enumerate() {
            if guest.state != GuestState::Carried {
                continue;
            }
            self.ctx.router.remove_outbound(&self.remote, guest.id);
            let rx = guest.rx();
            rx.close();
            while let Ok(q) = rx.try_recv() {
                out.push((Slot::Guest(i), q));
            }
        }
        out
    }

    /// Step 1, the guest's side: rides on the remote domain's listed link if there is one
    /// that will carry the pair. `Some` with how the link ended and when the pair began to be
    /// carried; `None` when it was not carried (`rx` and `carry` are as before).
    pub(super) async fn ride(
        &self,
        rx: &mut mpsc::Receiver<Queued>,
        carry: &mut Carry,
        deadline: Instant,
        trace: &mut Trace,
    ) -> Option<(Ended, Instant)> {
        if !self.ctx.security.load().peer(&self.remote).piggyback
            || self.ctx.piggyback_refused.contains(&self.remote)
        {
            return None;
        }
        let host = loop {
            let mut connecting = match self.ctx.links.entry(self.remote.clone()) {
                // No link to the peer, nor one being connected: ours will be the one.
                dashmap::Entry::Vacant(e) => {
                    e.insert(Host {
                        id: self.id,
                        link: HostLink::connecting(),
                    });
                    return None;
                }
                dashmap::Entry::Occupied(e) if e.get().id == self.id => return None,
                dashmap::Entry::Occupied(e) => match &e.get().link {
                    HostLink::Up(tx) => break tx.clone(),
                    HostLink::Connecting(tx) => tx.subscribe(),
                },
            };
            // Another session is connecting the link: wait for it rather than open a second
            // one, within the retry window this pair's own attempt would have had.
            let ready = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => false,
                _ = self.live.kicked() => false,
                _ = tokio::time::sleep_until(deadline) => false,
                _ = connecting.changed() => true,
            };
            // What a bounce names if the window closes now: the wait took it.
            trace.ok(format!(
                "waited for the link another pair to {} was connecting",
                self.remote
            ));
            if !ready {
                return None;
            }
        };
        let metrics = &self.ctx.router.metrics;
        let (accepted_tx, accepted_rx) = oneshot::channel();
        let (back_tx, back_rx) = oneshot::channel();
        let taken = std::mem::replace(rx, mpsc::channel(1).1);
        let empty = carry.empty_like();
        let guest = Guest {
            local: self.local.clone(),
            id: self.id,
            shared: self.shared.clone(),
            state: GuestState::ExpectDbResult {
                deadline: Instant::now(),
            },
            parts: Some((taken, std::mem::replace(carry, empty))),
            accepted: Some(accepted_tx),
            back: Some(back_tx),
        };
        if let Err(e) = host.try_send(guest) {
            // Closing, or busy with requests: connect as before.
            let mut guest = e.into_inner();
            guest.back = None;
            if let Some((r, c)) = guest.parts.take() {
                *rx = r;
                *carry = c;
            }
            return None;
        }
        let mut gauge = metrics.session(Direction::Outbound);
        let mut carried = None;
        if accepted_rx.await.is_ok() {
            gauge.established(super::AuthMethod::Dialback.as_str());
            self.shared.established.store(true, Ordering::Release);
            self.peer.attempt_succeeded();
            carried = Some((
                metrics.peers.open(&self.remote, Direction::Outbound),
                Instant::now(),
            ));
        }
        let Detached {
            rx: r,
            carry: c,
            parting,
        } = back_rx
            .await
            .expect("a guest always comes back (Guest's Drop sends it)");
        *rx = r;
        *carry = c;
        self.shared.established.store(false, Ordering::Release);
        drop(gauge);
        match parting {
            Parting::NotCarried(why) => {
                tracing::info!(local = %self.local, remote = %self.remote, "not carried on the established link: {why}; connecting a link of its own");
                None
            }
            Parting::Ended(ended) => carried.map(|(_session, up)| (ended, up)),
        }
    }
}
