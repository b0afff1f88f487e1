//! Where a domain lives, and the one place that hands stanzas to sessions or bounces them.
//!
//! - A local domain (a configured backend) → its component session, if attached.
//! - A remote domain → the outbound s2s session for the (local, remote) pair, created on demand.
//!
//! Tables are [`DashMap`]s (sharded locks, never held across an await), so the hot path takes no
//! global lock. Sessions receive stanzas through bounded channels. An undeliverable stanza is
//! bounced to its sender with the RFC 6120 §8.3.3 condition that fits; error stanzas and iq
//! results are never bounced (no loops), and such a drop is counted, never silent.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::{DashMap, DashSet};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::jid;
use crate::metrics::{BounceCause, Direction, DropReason, Metrics, PolicyMode};
use crate::policy::{Policy, Refused};
use crate::xml::error::StanzaErrorCondition;
use crate::xml::stanza::Stanza;

/// A unique id per session, so that a session only ever removes its own table entry.
pub fn next_session_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// How the router reaches an attached backend.
#[derive(Clone)]
pub struct ComponentHandle {
    /// The backend session's id: a session only ever detaches its own handle.
    pub id: u64,
    /// The backend's bounded queue, read by its session's writer.
    pub tx: mpsc::Sender<Stanza>,
    /// Cancelled to end the session with `<conflict/>` when a newer connection replaces it.
    pub kick: CancellationToken,
    /// Set when the backend stopped reading (see [`Router::route`], "Stalled destinations").
    pub stalled: Arc<AtomicBool>,
    /// The backend's link dropped and its queue waits for a new one ([`Router::park_component`]):
    /// nobody reads `tx`, so a full queue bounces at once instead of making the sender wait.
    pub parked: bool,
}

impl ComponentHandle {
    /// The handle of a session that just attached: not stalled, not parked.
    pub fn new(id: u64, tx: mpsc::Sender<Stanza>, kick: CancellationToken) -> ComponentHandle {
        ComponentHandle {
            id,
            tx,
            kick,
            stalled: Arc::default(),
            parked: false,
        }
    }
}

/// What a backend session leaves when its link drops, for the next session of its domain.
pub struct Left {
    /// The receiving end of its queue: what was routed to it and not yet taken.
    pub rx: mpsc::Receiver<Stanza>,
    /// To be written before anything in `rx`, oldest first: what it wrote and the backend
    /// had not acknowledged, then what it had taken and not written.
    pub first: std::collections::VecDeque<Stanza>,
}

impl Left {
    /// The oldest stanza left: from `first`, then from the queue (closed, or nobody would
    /// see the end of it).
    pub fn take_oldest(&mut self) -> Option<Stanza> {
        self.first.pop_front().or_else(|| self.rx.try_recv().ok())
    }
}

/// A [`Left`] waiting for its domain's next session ([`Router::park_component`]).
struct Parked {
    /// The session that left it, so that only it expires it.
    id: u64,
    left: Left,
    /// Cancelled when a new session takes it over.
    adopted: CancellationToken,
}

/// State an outbound session shares with the router.
#[derive(Default)]
pub struct OutboundShared {
    /// Authenticated and writing: a full queue then means "slow peer" (wait), not "still
    /// connecting" (bounce with `resource-constraint`).
    pub established: AtomicBool,
    /// Bytes of stanzas in the queue, bounded by `queue_max_bytes`.
    pub queued_bytes: AtomicUsize,
    /// Set when the peer stopped reading (see [`Router::route`], "Stalled destinations").
    pub stalled: AtomicBool,
}

/// A stanza in an outbound queue, with when it was queued
/// (`fedgate_outbound_queue_seconds`).
pub struct Queued {
    /// The stanza as the router took it (its bytes are written as they came).
    pub stanza: Stanza,
    /// When it was queued, for the queue-time histogram.
    pub since: tokio::time::Instant,
}

/// How the router reaches an outbound s2s session.
#[derive(Clone)]
pub struct OutboundHandle {
    /// The session's id: a session only ever removes its own handle.
    pub id: u64,
    /// The local domain of the session's pair (stanzas from it go to this session).
    pub local: Arc<str>,
    /// The session's bounded queue.
    pub tx: mpsc::Sender<Queued>,
    /// What the router reads of the session without asking it: queued bytes, established.
    pub shared: Arc<OutboundShared>,
}

/// Starts an outbound session for (local, remote); set once by the gateway, which knows how.
pub type OutboundFactory = Box<dyn Fn(&str, &str) -> OutboundHandle + Send + Sync>;

/// Where a stanza goes.
enum Destination {
    Component(ComponentHandle),
    Outbound(OutboundHandle),
}

/// What [`place`] did with an item.
enum Placed<T> {
    Queued,
    /// The queue stayed full for the stall timeout, or had stalled already: handed back.
    Stalled(T),
    Closed(T),
}

/// The domain of a stanza's `to`, for the text of a bounce (empty when there is none).
fn to_domain(s: &Stanza) -> String {
    s.to()
        .and_then(|t| jid::domain_of(t).ok())
        .unwrap_or_default()
        .into_owned()
}

/// Puts `item` into the queue of a destination whose reader may have fallen behind. A full
/// queue makes us wait (TCP back-pressure, passed on) for at most `patience`; past that the
/// destination is marked `stalled` and the item handed back, and while it is stalled items
/// are handed back at once instead of waiting, so that one destination that stopped reading
/// never holds up the link that carries traffic for others. The first item that finds room
/// clears the mark.
async fn place<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    stalled: &AtomicBool,
    patience: Duration,
) -> Placed<T> {
    match try_place(tx, item, stalled) {
        Ok(()) => Placed::Queued,
        Err(TrySendError::Closed(item)) => Placed::Closed(item),
        Err(TrySendError::Full(item)) if stalled.load(Ordering::Relaxed) => Placed::Stalled(item),
        // Boxed: waiting (a timer and a semaphore acquire) is the slow path, and inline it
        // would make every routing future, which every session's task holds, 1 KB larger.
        Err(TrySendError::Full(item)) => Box::pin(wait_for_room(tx, item, stalled, patience)).await,
    }
}

/// The part of [`place`] that never waits: queued (clearing the stall mark), or handed back.
fn try_place<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    stalled: &AtomicBool,
) -> Result<(), TrySendError<T>> {
    tx.try_send(item)?;
    if stalled.load(Ordering::Relaxed) {
        stalled.store(false, Ordering::Relaxed);
    }
    Ok(())
}

/// [`place`] once the queue is full: waits at most `patience` for room.
async fn wait_for_room<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    stalled: &AtomicBool,
    patience: Duration,
) -> Placed<T> {
    match tokio::time::timeout(patience, tx.reserve()).await {
        Ok(Ok(permit)) => {
            permit.send(item);
            Placed::Queued
        }
        Ok(Err(_)) => Placed::Closed(item),
        Err(_) => {
            stalled.store(true, Ordering::Relaxed);
            Placed::Stalled(item)
        }
    }
}

/// What [`Router::enqueue`] did with a stanza.
enum Enqueued {
    Queued,
    /// The session is still connecting and its queue is full.
    Overflow(Stanza),
    /// The session is established and its peer stopped reading ([`place`]).
    Stalled(Stanza),
    /// The session has closed.
    Closed(Stanza),
}

/// What limits a stanza's place in the queue of an outbound session that is still
/// connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// `queue_max_bytes` and the queue's length: a new stanza.
    QueueBytes,
    /// The queue's length only: a stanza handed back by a link that is gone.
    QueueLength,
}

/// Why a stanza goes nowhere.
enum Undeliverable {
    /// Back to the sender with this condition, cause (a metric label) and text.
    Bounce(StanzaErrorCondition, BounceCause, String),
    /// From a remote domain to a remote domain: never relayed, counted.
    Relay,
}

/// A backend domain is already attached.
#[derive(Debug, thiserror::Error)]
#[error("domain {domain} already has a backend attached")]
pub struct Conflict {
    /// The domain the backend asked for.
    pub domain: String,
}

/// Where every stanza goes: to an attached backend, to the outbound s2s session for its
/// domain pair (started on the first stanza), or back to its sender as a bounce.
pub struct Router {
    /// The domains fedgate serves (configured backends), normalised.
    local_domains: HashSet<String>,
    /// Backend domain → the attached backend's handle.
    components: DashMap<String, ComponentHandle>,
    /// Backend domain → the queue its dropped session left, while it waits for a new one.
    /// Only touched when a backend's link ends or attaches, always while holding the
    /// domain's `components` entry (that lock first, then this one).
    parked: std::sync::Mutex<std::collections::HashMap<String, Parked>>,
    /// Remote domain → the outbound sessions towards it, one per local domain.
    outbound: DashMap<String, Vec<OutboundHandle>>,
    /// Starts an outbound session; set once by the s2s layer at start-up.
    factory: OnceLock<OutboundFactory>,
    /// `queue_max_bytes`: bytes that may wait for one outbound session while it connects.
    queue_max_bytes: usize,
    /// `stall_timeout`: how long a stanza waits for room in a full queue ([`place`]).
    stall_timeout: Duration,
    /// Whom we federate with, checked per stanza and per stream; replaced whole by a reload.
    policy: ArcSwap<Policy>,
    /// Domains already logged as "would be refused" under `dry_run`, so that a busy domain is
    /// logged once, not per stanza. Bounded; cleared when the policy changes.
    dry_run_logged: DashSet<String>,
    /// Every metric fedgate exports; the router counts stanzas and bounces in it.
    pub metrics: Metrics,
}

/// How many domains `dry_run` remembers having logged.
const DRY_RUN_LOGGED_MAX: usize = 10_000;

impl Router {
    /// A router for `local_domains` with no backend attached and no outbound session yet.
    pub fn new(
        local_domains: impl IntoIterator<Item = String>,
        queue_max_bytes: usize,
        policy: Policy,
        metrics: Metrics,
    ) -> Router {
        Router {
            local_domains: local_domains.into_iter().collect(),
            components: DashMap::new(),
            parked: Default::default(),
            outbound: DashMap::new(),
            factory: OnceLock::new(),
            queue_max_bytes,
            stall_timeout: Duration::from_secs(5),
            policy: ArcSwap::from_pointee(policy),
            dry_run_logged: DashSet::new(),
            metrics,
        }
    }

    /// `s2s.stall_timeout` (default 5 s): see [`Router::route`], "Stalled destinations".
    pub fn with_stall_timeout(mut self, stall_timeout: Duration) -> Router {
        self.stall_timeout = stall_timeout;
        self
    }

    /// Sets how outbound sessions are started. Called once at assembly.
    pub fn set_outbound_factory(&self, factory: OutboundFactory) {
        let _ = self.factory.set(factory);
    }

    /// The federation policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Puts a new federation policy in force (a reload). Stanzas routed from now on, and
    /// streams negotiated from now on, are judged by it; live sessions are the reloader's
    /// business.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
        self.dry_run_logged.clear();
    }

    /// Whether we federate with `remote` in `direction`: the policy's verdict, counted in
    /// `fedgate_policy_refusals_total`. Under `dry_run` a refusal is logged (once per domain)
    /// and counted, and `remote` is admitted.
    pub fn admit(&self, remote: &str, direction: Direction) -> Result<(), Refused> {
        let policy = self.policy.load();
        let Err(refused) = policy.check(remote) else {
            return Ok(());
        };
        if policy.dry_run() {
            self.metrics
                .policy_refusals
                .count(direction, PolicyMode::DryRun);
            if self.dry_run_logged.len() < DRY_RUN_LOGGED_MAX
                && self.dry_run_logged.insert(remote.to_string())
            {
                tracing::warn!(
                    remote,
                    direction = direction.as_str(),
                    "dry run: {refused}; admitted because [federation] dry_run = true"
                );
            }
            return Ok(());
        }
        self.metrics
            .policy_refusals
            .count(direction, PolicyMode::Enforced);
        Err(refused)
    }

    /// Whether fedgate serves `domain` (normalised).
    pub fn is_local(&self, domain: &str) -> bool {
        self.local_domains.contains(domain)
    }

    /// The domains fedgate serves (normalised), in no particular order.
    pub fn local_domains(&self) -> impl Iterator<Item = &str> {
        self.local_domains.iter().map(String::as_str)
    }

    /// Binds a backend to its domain. With `replace`, an existing session is kicked (it ends
    /// with `<conflict/>`) and the new one takes over; without, the new one is refused. A
    /// domain whose previous session's link dropped is taken over whatever `replace` says:
    /// the new session gets what that one left ([`Router::park_component`]) and must write
    /// it before anything else, its `unacked` first, then from its `rx` (which replaces the
    /// receiving end of the channel `handle` was made with).
    pub fn attach_component(
        &self,
        domain: &str,
        mut handle: ComponentHandle,
        replace: bool,
    ) -> Result<Option<Left>, Conflict> {
        match self.components.entry(domain.to_string()) {
            dashmap::Entry::Occupied(mut e) if e.get().parked => {
                let parked = self.lock_parked().remove(domain);
                let Some(parked) = parked.filter(|p| p.id == e.get().id) else {
                    // Not reachable: a parked handle always has its entry.
                    e.insert(handle);
                    return Ok(None);
                };
                parked.adopted.cancel();
                // Senders that looked the old handle up keep writing into the same queue.
                handle.tx = e.get().tx.clone();
                e.insert(handle);
                Ok(Some(parked.left))
            }
            dashmap::Entry::Occupied(mut e) => {
                if !replace {
                    return Err(Conflict {
                        domain: domain.to_string(),
                    });
                }
                e.get().kick.cancel();
                e.insert(handle);
                Ok(None)
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(handle);
                Ok(None)
            }
        }
    }

    /// Unbinds a backend session, unless a newer one has replaced it already.
    pub fn detach_component(&self, domain: &str, id: u64) {
        self.components.remove_if(domain, |_, h| h.id == id);
    }

    /// Keeps the domain of a backend session whose link dropped bound to its queue, so that
    /// the next session of the same backend (a restart, a standby taking over) writes what
    /// this one left instead of its senders getting bounces. Stanzas routed meanwhile join
    /// the queue, bounded by its length. The session then waits for the returned token (a new
    /// session took it over) or its grace, and then calls [`Router::expire_parked`].
    ///
    /// Hands `left` back when the session is no longer the domain's (it was replaced).
    pub fn park_component(
        &self,
        domain: &str,
        id: u64,
        left: Left,
    ) -> Result<CancellationToken, Left> {
        let Some(mut handle) = self.components.get_mut(domain) else {
            return Err(left);
        };
        if handle.id != id || handle.parked {
            return Err(left);
        }
        handle.parked = true;
        let adopted = CancellationToken::new();
        self.lock_parked().insert(
            domain.to_string(),
            Parked {
                id,
                left,
                adopted: adopted.clone(),
            },
        );
        Ok(adopted)
    }

    /// Ends the wait of [`Router::park_component`]: unbinds the domain and returns what the
    /// session left, for its caller to bounce; `None` if a new session took it over.
    pub fn expire_parked(&self, domain: &str, id: u64) -> Option<Left> {
        let dashmap::Entry::Occupied(e) = self.components.entry(domain.to_string()) else {
            return None;
        };
        if e.get().id != id || !e.get().parked {
            return None;
        }
        let parked = self.lock_parked().remove(domain);
        e.remove();
        let mut left = parked?.left;
        // Nothing routed from now on joins it: senders get "no backend" at once.
        left.rx.close();
        Some(left)
    }

    fn lock_parked(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Parked>> {
        // A panic while holding it cannot leave the map half-changed (single inserts and
        // removes), so a poisoned lock is still sound to use.
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a backend is attached for `domain` (not one whose link dropped and whose
    /// queue waits for it).
    pub fn component_attached(&self, domain: &str) -> bool {
        self.components.get(domain).is_some_and(|h| !h.parked)
    }

    /// Forgets an outbound session (it failed or closed), unless it was replaced already.
    pub fn remove_outbound(&self, remote: &str, id: u64) {
        if let dashmap::Entry::Occupied(mut e) = self.outbound.entry(remote.to_string()) {
            e.get_mut().retain(|h| h.id != id);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// Sends stanzas from `handle.local` to `remote` on an inbound stream that negotiated
    /// XEP-0288 bidi, instead of an outbound session of their own: `true` if it took the
    /// pair, `false` when an outbound session for it exists already (it carries on). The
    /// stream removes it with [`Router::remove_outbound`] when it ends.
    pub fn attach_reverse(&self, remote: &str, handle: OutboundHandle) -> bool {
        let mut list = self.outbound.entry(remote.to_string()).or_default();
        if list.iter().any(|h| h.local == handle.local) {
            return false;
        }
        list.push(handle);
        true
    }

    /// Stanzas waiting in each remote domain's outbound queues, read from the channels
    /// themselves so that queueing costs nothing extra per stanza.
    pub fn outbound_queues(&self) -> Vec<(String, usize)> {
        self.outbound
            .iter()
            .map(|e| {
                let waiting = e
                    .value()
                    .iter()
                    .map(|h| h.tx.max_capacity() - h.tx.capacity())
                    .sum();
                (e.key().clone(), waiting)
            })
            .collect()
    }

    /// Number of outbound sessions, for tests and metrics.
    pub fn outbound_count(&self) -> usize {
        self.outbound.iter().map(|e| e.value().len()).sum()
    }

    /// Routes a stanza whose origin the calling session has checked: its `from` is a domain the
    /// origin may speak for, and a stanza from a remote server is addressed to a local domain.
    ///
    /// The common path allocates nothing: domains are borrowed from the stanza while the
    /// destination is looked up, and texts are only formatted for bounces.
    ///
    /// # Stalled destinations
    /// The caller is a session's reader, and a link carries stanzas for many destinations. A
    /// destination whose queue is full (a remote server or a backend that reads slower than
    /// we write) slows the caller down for at most `stall_timeout`, which keeps TCP
    /// back-pressure for a sender that talks to one destination while it is read. A queue
    /// that stays full that long marks the destination stalled: that stanza and every one
    /// after it for the same destination bounce with `resource-constraint` (type `wait`, cause
    /// `stalled`) at once, without waiting, until its queue has room again, while the link
    /// goes on carrying everything else.
    pub fn route(&self, stanza: Stanza) -> impl std::future::Future<Output = ()> + Send + '_ {
        // Decided before the future is made, so that it holds only what is left to do: every
        // s2s and component session's task awaits `route` for each stanza it reads, so this
        // future is part of what each idle session holds. The slow path (waiting for room,
        // bouncing, starting a session) is boxed: inline, it made this future 2.6 KB.
        let slow = self.route_now(stanza).err();
        async move {
            if let Some(stanza) = slow {
                Box::pin(self.route_with(stanza, Bound::QueueBytes)).await
            }
        }
    }

    /// The common case of [`Router::route`] without waiting: a well-formed stanza for a
    /// destination whose queue has room (an attached backend, an established outbound session)
    /// is queued and `Ok`. Anything else (a malformed address, a bounce, a full queue, a session
    /// to start or still connecting) is handed back for [`Router::route_with`], which decides
    /// it again from the start.
    // The stanza is handed back by value (moved, not copied to the heap): boxing it would
    // allocate on the path this exists to keep free of allocations.
    #[allow(clippy::result_large_err)]
    fn route_now(&self, stanza: Stanza) -> Result<(), Stanza> {
        // Each address split and checked once, here, for both the rule that whatever leaves is
        // well-formed and the routing decision.
        let Some(Ok(to_domain)) = stanza.to().map(jid::checked_domain) else {
            return Err(stanza);
        };
        let from_domain = match stanza.from().map(jid::checked_domain) {
            Some(Err(_)) => return Err(stanza),
            from => from.and_then(Result::ok),
        };
        let Ok(dest) = self.destination_for(&to_domain, from_domain.as_deref()) else {
            return Err(stanza);
        };
        match dest {
            Destination::Component(handle) if handle.parked => Err(stanza),
            Destination::Component(handle) => {
                try_place(&handle.tx, stanza, &handle.stalled).map_err(TrySendError::into_inner)
            }
            // An established session's queue, as `Router::enqueue` fills it.
            Destination::Outbound(handle) => {
                if !handle.shared.established.load(Ordering::Acquire) {
                    return Err(stanza);
                }
                let len = stanza.raw().len();
                handle.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
                let queued = Queued {
                    stanza,
                    since: tokio::time::Instant::now(),
                };
                try_place(&handle.tx, queued, &handle.shared.stalled).map_err(|e| {
                    handle.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                    e.into_inner().stanza
                })
            }
        }
    }

    /// [`Router::route`] for a stanza that was queued for a link that is gone (an XEP-0288
    /// bidi stream that ended): it was admitted to a queue once, so the session that takes it
    /// over is not held to `queue_max_bytes` while it connects (only to its queue's length),
    /// as the stanzas of an outbound session that lost its link stay in its queue.
    pub async fn reroute(&self, stanza: Stanza) {
        self.route_with(stanza, Bound::QueueLength).await
    }

    async fn route_with(&self, mut stanza: Stanza, bound: Bound) {
        // Whatever leaves here is parsed by another server's or a backend's JID parser.
        if let Some(Err(e)) = stanza.to().map(jid::check_parts) {
            // The error comes from the domain, the one valid part of that address.
            let domain = stanza.to().and_then(|t| jid::domain_of(t).ok());
            let text = format!("malformed 'to': {e}");
            self.bounce_from(&stanza, domain.as_deref(), BounceCause::Malformed, &text)
                .await;
            return;
        }
        if let Some(Err(e)) = stanza.from().map(jid::check_parts) {
            let text = format!("malformed 'from': {e}");
            self.bounce(
                &stanza,
                StanzaErrorCondition::JidMalformed,
                BounceCause::Malformed,
                &text,
            )
            .await;
            return;
        }
        // A session that closes between our lookup and our send hands the stanza back and a new
        // one is started. Bounded, so a session that dies at once cannot spin us.
        for _ in 0..3 {
            let dest = match self.destination(&stanza) {
                Ok(dest) => dest,
                Err(Undeliverable::Bounce(condition, cause, text)) => {
                    self.bounce(&stanza, condition, cause, &text).await;
                    return;
                }
                Err(Undeliverable::Relay) => {
                    // Never a relay between two remote domains; sessions check this first.
                    self.metrics.dropped.count(DropReason::RelayRefused);
                    tracing::warn!(
                        to = stanza.to().unwrap_or(""),
                        "refused to relay a stanza that is not from a local domain"
                    );
                    return;
                }
            };
            match dest {
                Destination::Component(handle) if handle.parked => {
                    // Nobody reads this queue until the backend is back: never wait for room.
                    match handle.tx.try_send(stanza) {
                        Ok(()) => {}
                        Err(TrySendError::Full(s)) => {
                            let domain = to_domain(&s);
                            let text = format!(
                                "the backend for {domain} is reconnecting and its queue is full"
                            );
                            self.bounce(
                                &s,
                                StanzaErrorCondition::ResourceConstraint,
                                BounceCause::QueueFull,
                                &text,
                            )
                            .await;
                        }
                        Err(TrySendError::Closed(s)) => {
                            let domain = to_domain(&s);
                            let text = format!("the backend for {domain} detached");
                            self.bounce(
                                &s,
                                StanzaErrorCondition::ServiceUnavailable,
                                BounceCause::BackendDetached,
                                &text,
                            )
                            .await;
                        }
                    }
                    return;
                }
                Destination::Component(handle) => {
                    match place(&handle.tx, stanza, &handle.stalled, self.stall_timeout).await {
                        Placed::Queued => {}
                        Placed::Stalled(s) => {
                            let who = format!("the backend for {} is not reading", to_domain(&s));
                            self.bounce_stalled(&s, &who).await;
                        }
                        Placed::Closed(s) => {
                            let domain = to_domain(&s);
                            self.bounce(
                                &s,
                                StanzaErrorCondition::ServiceUnavailable,
                                BounceCause::BackendDetached,
                                &format!("the backend for {domain} detached"),
                            )
                            .await;
                        }
                    }
                    return;
                }
                Destination::Outbound(handle) => match self.enqueue(&handle, stanza, bound).await {
                    Enqueued::Queued => return,
                    Enqueued::Overflow(s) => {
                        let remote = to_domain(&s);
                        self.bounce(
                            &s,
                            StanzaErrorCondition::ResourceConstraint,
                            BounceCause::QueueFull,
                            &format!("the queue for {remote} is full while connecting"),
                        )
                        .await;
                        return;
                    }
                    Enqueued::Stalled(s) => {
                        let who = format!("{} stopped reading", to_domain(&s));
                        self.bounce_stalled(&s, &who).await;
                        return;
                    }
                    Enqueued::Closed(back) => {
                        self.remove_outbound_handle(&back, &handle);
                        stanza = back;
                    }
                },
            }
        }
        self.bounce(
            &stanza,
            StanzaErrorCondition::RemoteServerTimeout,
            BounceCause::LinkUnstable,
            "the session to the remote server keeps closing",
        )
        .await;
    }

    /// A stanza for a destination that stopped reading ([`place`]); `who` says which.
    async fn bounce_stalled(&self, stanza: &Stanza, who: &str) {
        let text = format!(
            "{who}: its queue has been full for {:?}",
            self.stall_timeout
        );
        self.bounce(
            stanza,
            StanzaErrorCondition::ResourceConstraint,
            BounceCause::Stalled,
            &text,
        )
        .await;
    }

    /// Where `stanza` goes, or why it cannot go anywhere.
    fn destination(&self, stanza: &Stanza) -> Result<Destination, Undeliverable> {
        let to = stanza.to().ok_or_else(|| {
            Undeliverable::Bounce(
                StanzaErrorCondition::JidMalformed,
                BounceCause::Malformed,
                "missing 'to'".into(),
            )
        })?;
        let to_domain = jid::domain_of(to).map_err(|e| {
            Undeliverable::Bounce(
                StanzaErrorCondition::JidMalformed,
                BounceCause::Malformed,
                e.to_string(),
            )
        })?;
        let from_domain = stanza.from().and_then(|f| jid::domain_of(f).ok());
        self.destination_for(&to_domain, from_domain.as_deref())
    }

    /// [`Router::destination`] once the addresses' canonical domains are known: `from_domain`
    /// is `None` for a missing or malformed `from`.
    fn destination_for(
        &self,
        to_domain: &str,
        from_domain: Option<&str>,
    ) -> Result<Destination, Undeliverable> {
        if self.is_local(to_domain) {
            return match self.components.get(to_domain) {
                Some(h) => Ok(Destination::Component(h.clone())),
                None => Err(Undeliverable::Bounce(
                    StanzaErrorCondition::ServiceUnavailable,
                    BounceCause::NoBackend,
                    format!("no backend is attached for {to_domain}"),
                )),
            };
        }
        let from_domain = match from_domain {
            Some(d) if self.is_local(d) => d,
            _ => return Err(Undeliverable::Relay),
        };
        if let Err(refused) = self.admit(to_domain, Direction::Outbound) {
            return Err(Undeliverable::Bounce(
                StanzaErrorCondition::NotAllowed,
                BounceCause::Policy,
                refused.to_string(),
            ));
        }
        Ok(Destination::Outbound(
            self.outbound_handle(from_domain, to_domain),
        ))
    }

    /// Queues `stanza` on an outbound session. While the session connects, its queue is bounded
    /// in count and bytes (overflow is handed back); once established, a full queue makes the
    /// sender wait (the peer reads slower than we write). A closed session hands it back too.
    async fn enqueue(&self, handle: &OutboundHandle, stanza: Stanza, bound: Bound) -> Enqueued {
        let len = stanza.raw().len();
        let established = handle.shared.established.load(Ordering::Acquire);
        let queued = handle.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        let unqueue = || handle.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
        if !established && bound == Bound::QueueBytes && queued + len > self.queue_max_bytes {
            unqueue();
            return Enqueued::Overflow(stanza);
        }
        let queued = Queued {
            stanza,
            since: tokio::time::Instant::now(),
        };
        if established {
            return match place(
                &handle.tx,
                queued,
                &handle.shared.stalled,
                self.stall_timeout,
            )
            .await
            {
                Placed::Queued => Enqueued::Queued,
                Placed::Stalled(q) => {
                    unqueue();
                    Enqueued::Stalled(q.stanza)
                }
                Placed::Closed(q) => {
                    unqueue();
                    Enqueued::Closed(q.stanza)
                }
            };
        }
        match handle.tx.try_send(queued) {
            Ok(()) => Enqueued::Queued,
            Err(TrySendError::Full(q)) => {
                unqueue();
                Enqueued::Overflow(q.stanza)
            }
            Err(TrySendError::Closed(q)) => {
                unqueue();
                Enqueued::Closed(q.stanza)
            }
        }
    }

    /// Forgets a session that handed `stanza` back closed.
    fn remove_outbound_handle(&self, stanza: &Stanza, handle: &OutboundHandle) {
        if let Some(Ok(remote)) = stanza.to().map(jid::domain_of) {
            self.remove_outbound(&remote, handle.id);
        }
    }

    /// The live outbound session for (local, remote), started if there is none.
    fn outbound_handle(&self, local: &str, remote: &str) -> OutboundHandle {
        if let Some(list) = self.outbound.get(remote) {
            if let Some(h) = list.iter().find(|h| &*h.local == local) {
                return h.clone();
            }
        }
        let mut list = self.outbound.entry(remote.to_string()).or_default();
        if let Some(h) = list.iter().find(|h| &*h.local == local) {
            return h.clone();
        }
        let factory = self
            .factory
            .get()
            .expect("the gateway sets the outbound factory before routing");
        let handle = factory(local, remote);
        list.push(handle.clone());
        handle
    }

    /// Returns `stanza` to its sender with `condition`, unless it must not be bounced (errors,
    /// iq results), in which case the drop is counted. Waits for room in the sender's queue, so
    /// a burst of bounces is not lost to a full queue.
    ///
    /// `cause` is the `fedgate_bounces_total` label: [`BounceCause`] is its closed set.
    pub async fn bounce(
        &self,
        stanza: &Stanza,
        condition: StanzaErrorCondition,
        cause: BounceCause,
        text: &str,
    ) {
        self.bounce_as(stanza, stanza.to(), condition, cause, text)
            .await
    }

    /// A `<jid-malformed/>` bounce for a stanza whose `to` is no valid address, from `from`.
    async fn bounce_from(
        &self,
        stanza: &Stanza,
        from: Option<&str>,
        cause: BounceCause,
        text: &str,
    ) {
        self.bounce_as(
            stanza,
            from,
            StanzaErrorCondition::JidMalformed,
            cause,
            text,
        )
        .await
    }

    async fn bounce_as(
        &self,
        stanza: &Stanza,
        from: Option<&str>,
        condition: StanzaErrorCondition,
        cause: BounceCause,
        text: &str,
    ) {
        match stanza.bounce_from(from, condition, Some(text)) {
            Some(bounce) => {
                self.metrics.bounces.count(condition, cause);
                if let Some(Ok(to)) = stanza.to().map(jid::domain_of) {
                    if !self.is_local(&to) {
                        if let Some(peer) = self.metrics.peers.existing(&to) {
                            peer.bounced();
                        }
                    }
                }
                tracing::debug!(
                    to = stanza.to().unwrap_or(""),
                    from = stanza.from().unwrap_or(""),
                    %condition,
                    text,
                    "bounced"
                );
                // Boxed: a bounce is the rare path, and inline its future would make every
                // `route` future (held by every s2s and component session's task while it
                // routes) about 2 KB larger.
                Box::pin(self.deliver_bounce(bounce)).await;
            }
            None => {
                // Errors and iq results are never bounced (no loops); unavailable presence
                // neither (see `Stanza::bounce`).
                let reason = if stanza.kind() == crate::xml::stanza::Kind::Presence {
                    DropReason::PresenceNotBounced
                } else {
                    DropReason::ErrorNotBounced
                };
                self.metrics.dropped.count(reason);
                tracing::debug!(%condition, text, "undeliverable error or result dropped (never bounced)");
            }
        }
    }

    /// Delivers a bounce. A bounce is an error stanza, so if it cannot be delivered either, it
    /// is counted, never bounced again.
    async fn deliver_bounce(&self, bounce: Stanza) {
        let delivered = match self.destination(&bounce) {
            Ok(Destination::Component(h)) => matches!(
                place(&h.tx, bounce, &h.stalled, self.stall_timeout).await,
                Placed::Queued
            ),
            Ok(Destination::Outbound(handle)) => {
                matches!(
                    self.enqueue(&handle, bounce, Bound::QueueBytes).await,
                    Enqueued::Queued
                )
            }
            Err(_) => false,
        };
        if !delivered {
            self.metrics.dropped.count(DropReason::BounceUndeliverable);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router serving a.test whose outbound sessions never connect: their queues are the
    /// test's to read.
    fn router_with_silent_outbound(queue_max_bytes: usize) -> (Router, mpsc::Receiver<Queued>) {
        let router = Router::new(
            ["a.test".to_string()],
            queue_max_bytes,
            Policy::from_config(&crate::config::FederationConfig::default()),
            Metrics::register(),
        );
        let (tx, rx) = mpsc::channel(16);
        let handle = OutboundHandle {
            id: next_session_id(),
            local: Arc::from("a.test"),
            tx,
            shared: Arc::default(),
        };
        router.set_outbound_factory(Box::new(move |_, _| handle.clone()));
        (router, rx)
    }

    fn message(id: &str) -> Stanza {
        let xml = format!("<message from='alice@a.test' to='bob@b.test' id='{id}'><body>0123456789</body></message>");
        Stanza::parse(
            bytes::Bytes::from(xml),
            &crate::xml::stanza::NsContext::server(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_stanza_handed_back_by_a_gone_link_is_not_held_to_queue_max_bytes() {
        // Room for one message's bytes while the session connects.
        let one = message("m0").raw().len();
        let (router, mut queue) = router_with_silent_outbound(one);
        router.route(message("m0")).await;
        router.route(message("m1")).await;
        // What a bidi stream that ended hands back takes its place regardless.
        router.reroute(message("m2")).await;
        let ids: Vec<_> = std::iter::from_fn(|| queue.try_recv().ok())
            .map(|q| q.stanza.id().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["m0", "m2"], "m1 overflowed (and bounced)");
        assert_eq!(
            router.metrics.bounces.get(
                StanzaErrorCondition::ResourceConstraint,
                BounceCause::QueueFull
            ),
            1
        );
    }

    const PATIENCE: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_waits_then_stalls_then_bounces_at_once_until_it_has_room() {
        let (tx, mut rx) = mpsc::channel(1);
        let stalled = AtomicBool::new(false);
        assert!(matches!(
            place(&tx, 1, &stalled, PATIENCE).await,
            Placed::Queued
        ));

        // Full, and read within the patience: the sender was only slowed down.
        let start = tokio::time::Instant::now();
        let reader = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rx.recv().await
        };
        let (placed, read) = tokio::join!(place(&tx, 2, &stalled, PATIENCE), reader);
        assert!(matches!(placed, Placed::Queued));
        assert_eq!(read, Some(1));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert!(!stalled.load(Ordering::Relaxed));

        // Full for the whole patience: handed back, and the destination is stalled.
        let start = tokio::time::Instant::now();
        assert!(matches!(
            place(&tx, 3, &stalled, PATIENCE).await,
            Placed::Stalled(3)
        ));
        assert_eq!(start.elapsed(), PATIENCE);
        assert!(stalled.load(Ordering::Relaxed));
        // Stalled: handed back without waiting.
        let start = tokio::time::Instant::now();
        assert!(matches!(
            place(&tx, 4, &stalled, PATIENCE).await,
            Placed::Stalled(4)
        ));
        assert_eq!(start.elapsed(), Duration::ZERO);

        // It reads again: the next item finds room and clears the mark.
        assert_eq!(rx.recv().await, Some(2));
        assert!(matches!(
            place(&tx, 5, &stalled, PATIENCE).await,
            Placed::Queued
        ));
        assert!(!stalled.load(Ordering::Relaxed));

        drop(rx);
        assert!(matches!(
            place(&tx, 6, &stalled, PATIENCE).await,
            Placed::Closed(6)
        ));
    }
}
