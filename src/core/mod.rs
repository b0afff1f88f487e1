//! `fedgate core`: a small client-to-server (c2s) XMPP server for closed deployments, attached
//! to a gateway as its backend over XEP-0114, like any other component.
//!
//! # Layout
//! - [`config`]: `[core]`, `[[core.domain]]`, and the standalone file (`[gateway]`, `[tls]`).
//! - [`c2s`]: client streams: STARTTLS (required) or direct TLS, SASL, resource binding.
//! - [`sasl`]: SCRAM-SHA-256, SCRAM-SHA-1 and PLAIN, sans I/O; credentials as salted keys.
//! - `sm`: XEP-0198 stream management on client streams: acknowledgements, detached sessions
//!   and their resumption.
//! - `csi`: XEP-0352 client state indication: presence updates held for inactive clients.
//! - [`roster`]: roster items and the RFC 6121 subscription state machine, sans I/O.
//! - `rosterver`: XEP-0237 roster versions.
//! - `presence`: presence broadcast, probes, directed presence, subscription handshakes.
//! - `stanzas`: delivery rules for messages and iqs (RFC 6121 §8), the server's own iqs
//!   (XEP-0199, XEP-0092, roster), offline storage.
//! - `pep`: XEP-0163 PEP (the XEP-0060 subset clients use), XEP-0115 caps for its
//!   notifications, XEP-0049 private storage with legacy bookmarks in XEP-0402.
//! - `blocking`: XEP-0191 blocklists and their enforcement on every stanza.
//! - `extdisco`: XEP-0215 STUN/TURN discovery with TURN REST credentials.
//! - `last`: XEP-0012 last activity of accounts, uptime of the server.
//! - `carbons`: XEP-0280 message carbons.
//! - [`mam`]: XEP-0313 message archives and XEP-0359 stanza-ids.
//! - `disco`: XEP-0030 on domains and accounts; every feature announces itself there.
//! - `vcard`: XEP-0054 vCards, the XEP-0153 avatar hash in presence, XEP-0398 conversion
//!   between vCard and XEP-0084 avatars.
//! - `push`: XEP-0357 push notifications to the app servers of phones that are away.
//! - `register`: XEP-0077 in-band registration, password change and removal, invitations.
//! - [`storage`]: the SQLite file or PostgreSQL database, and its versioned migrations.
//! - [`accounts`]: `fedgate core user add|remove|passwd|list`.
//! - [`gateway_links`]: the state of every link to a gateway, for `/readyz` and metrics.
//! - [`leadership`]: one active core per PostgreSQL database, the others standbys.
//!
//! # How a stanza travels
//! 1. A client's stanza is read by its session, stamped with the session's full JID as `from`
//!    (a client can never choose its sender address), and handed to [`Core`].
//! 2. Addressed to one of our domains (or an alias), it is delivered here: to sessions, to the
//!    offline store, or answered by the server for the account or the domain.
//! 3. Addressed elsewhere, it goes to the gateway through the component link of the sender's
//!    domain, and the gateway federates it.
//! 4. Stanzas from the gateway take step 2. Whatever cannot be delivered goes back to its
//!    sender with the RFC 6120/6121 error that fits; errors are never bounced.

pub mod accounts;
mod blocking;
pub mod c2s;
mod carbons;
pub mod config;
mod csi;
mod disco;
mod extdisco;
pub mod gateway_links;
mod last;
pub mod leadership;
pub mod mam;
mod pep;
mod presence;
mod push;
mod register;
pub mod roster;
mod rosterver;
pub mod sasl;
mod sm;
mod stanzas;
pub mod storage;
mod vcard;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::component::client::{ClientConfig, Component, Event, Events, Sender, Stopper, Target};
use crate::jid::Jid;
use crate::tls::Tls;
use crate::xml::error::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::framer::Limits;
use crate::xml::stanza::{NsContext, Stanza};
use crate::xml::{ns, Element};

use self::config::CoreConfig;
use self::gateway_links::{CoreStatus, GatewayLinks};
use self::leadership::Leadership;
use self::storage::{Storage, StorageError, StorageMetrics};

/// Why the core could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A listener could not be bound. `error` is not a `source`: the message says it once.
    #[error("cannot listen on {addr} ({key}): {error}; if another process holds the port, stop it or change `{key}`")]
    Bind {
        /// The configuration key that names the address.
        key: &'static str,
        /// The address that could not be bound.
        addr: SocketAddr,
        /// Why binding failed, e.g. address in use or permission denied.
        error: std::io::Error,
    },
    /// The database could not be opened, migrated or read at start.
    #[error("database {0}")]
    Storage(#[from] StorageError),
    /// The c2s certificates or keys could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// The domains the core answers for.
#[derive(Debug, Clone)]
pub struct Domains {
    /// Each served domain and alias → the canonical domain its accounts live in.
    canonical: HashMap<String, String>,
}

impl Domains {
    /// Each `[[core.domain]]` name, and each of its aliases, mapped to that name.
    pub fn from_config(config: &CoreConfig) -> Domains {
        let mut canonical = HashMap::new();
        for d in &config.domain {
            canonical.insert(d.name.clone(), d.name.clone());
            for a in &d.aliases {
                canonical.insert(a.clone(), d.name.clone());
            }
        }
        Domains { canonical }
    }

    /// The canonical domain for a served domain or alias; `None` if we do not serve it.
    pub fn canonical<'a>(&'a self, domain: &str) -> Option<&'a str> {
        self.canonical.get(domain).map(String::as_str)
    }

    /// Whether we serve `domain`, as a domain or an alias (its accounts are ours).
    pub fn is_local(&self, domain: &str) -> bool {
        self.canonical.contains_key(domain)
    }

    /// Every served domain and alias.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.canonical.keys().map(String::as_str)
    }
}

/// What every session and handler shares.
pub struct Core {
    /// The `[core]` configuration the core was started with.
    pub config: CoreConfig,
    /// The domains and aliases served, and the canonical domain of each.
    pub domains: Domains,
    /// The database: accounts, rosters, offline messages, archives and the rest.
    pub storage: Storage,
    /// Our c2s certificates, for STARTTLS and direct TLS.
    pub tls: Arc<Tls>,
    /// The component link per served domain and alias: stanzas to other domains leave
    /// through the link of their sender's domain.
    links: HashMap<String, Sender>,
    /// Signed-in sessions by canonical bare JID (`user@domain`), detached ones included.
    sessions: Mutex<HashMap<String, Vec<Arc<SessionHandle>>>>,
    /// XEP-0198 sessions that can be resumed, connected or detached.
    resume_table: sm::ResumeTable,
    /// Held while a message for an account without an available session is stored offline
    /// (after checking again, under it, that none became available), and while a session
    /// that just became available takes the stored ones: so that no message is stored just
    /// after a sign-in read the store, and waits there until the next one. One lock for all
    /// accounts: the database runs on one thread, so stores were one at a time already.
    offline: tokio::sync::Mutex<()>,
    /// Items for disco#items on our domains.
    disco_items: Vec<String>,
    /// XEP-0115 caps of the entities that send our accounts presence, for PEP notifications.
    caps: pep::caps::CapsState,
    /// XEP-0191 blocklists of the accounts that needed theirs, kept in step with the database.
    blocklists: blocking::Blocklists,
    /// When the core started: the domain's XEP-0012 uptime.
    started: std::time::Instant,
    /// In-band registrations per client address in the last hour (XEP-0077).
    registrations: register::RateLimit,
    /// Cancelled by [`RunningCore::shutdown`]: client sessions end with `<system-shutdown/>`.
    pub shutdown: CancellationToken,
}

/// A signed-in client session as the rest of the core sees it.
pub struct SessionHandle {
    /// Unique in the process (from [`crate::router::next_session_id`]); tells apart two
    /// sessions of one full JID, so that a replaced session unregisters only itself.
    pub id: u64,
    /// The full JID the client was bound to (its domain is an alias when the client signed in
    /// with one and did not ask for the full bind result).
    pub jid: Jid,
    /// The canonical bare JID of the account.
    pub account: String,
    tx: mpsc::Sender<Queued>,
    /// Stanzas the queue did not take: the one that overflowed it, and any that arrived after
    /// the session stopped reading its queue. Re-routed with the queue's leftovers when the
    /// session ends; holds at most as many stanzas as the queue.
    refused: Mutex<Vec<Queued>>,
    /// Cancelled to end the session, with `kicked_with` as the stream error.
    kick: CancellationToken,
    kicked_with: Mutex<Option<(StreamErrorCondition, String)>>,
    pub(crate) presence: Mutex<PresenceState>,
    /// XEP-0280: the client enabled carbons (`super::carbons`).
    pub(crate) carbons: AtomicBool,
    /// XEP-0198: the connection is gone and the session waits to be resumed (`super::sm`);
    /// what reaches it now also wakes the phone (`super::push`).
    pub(crate) detached: AtomicBool,
}

/// One stanza in a session's queue: the bytes the writer sends as they are, and what
/// re-routing them needs if the session ends before they are written (the stanza itself is
/// parsed back from the bytes then, so the per-stanza path costs nothing more).
pub(crate) struct Queued {
    pub bytes: Bytes,
    /// The same bytes went to the account's other available resources too (a message to the
    /// bare JID, RFC 6121 §8.5.2.1.1): if one of them is still there, it has its copy already.
    pub shared: bool,
    /// For a presence update (available or unavailable), its sender: an inactive client
    /// (XEP-0352) gets only the newest one per sender ([`csi::Held`]).
    pub presence_from: Option<Box<str>>,
}

/// A session's presence, as RFC 6121 §4 needs it.
#[derive(Default)]
pub(crate) struct PresenceState {
    /// Initial presence was sent and no unavailable since (an "available resource").
    pub available: bool,
    pub priority: i32,
    /// The last broadcast presence (without `to`), re-sent to answer probes.
    pub last: Option<Element>,
    /// That presence came from the client with an empty XEP-0153 `<photo/>` (not ready to
    /// advertise an avatar), which the server leaves alone (XEP-0398 §4).
    pub photo_withheld: bool,
    /// Entities that got directed presence and must get unavailable when we go (§4.6).
    pub directed: Vec<String>,
    /// The client asked for the roster, so it gets roster pushes (§2.1.6).
    pub interested: bool,
    /// The client asked for its blocklist, so it gets block and unblock pushes (XEP-0191).
    pub blocklist_requested: bool,
    /// The status of the last unavailable presence it broadcast, for XEP-0012.
    pub unavailable_status: Option<String>,
}

impl SessionHandle {
    /// Queues a stanza's bytes for the client. A client that lets its queue fill is too slow
    /// to keep: it is disconnected with `<resource-constraint/>`, and the stanza that did not
    /// fit is kept to be re-routed with the rest of the queue (`Core::session_ended`).
    pub fn send(&self, bytes: Bytes) {
        self.queue(Queued {
            bytes,
            shared: false,
            presence_from: None,
        });
    }

    /// Like [`SessionHandle::send`], for a copy of a stanza also queued for the account's
    /// other resources.
    pub(crate) fn send_shared(&self, bytes: Bytes) {
        self.queue(Queued {
            bytes,
            shared: true,
            presence_from: None,
        });
    }

    fn queue(&self, q: Queued) {
        match self.tx.try_send(q) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(q)) => {
                self.keep_refused(q);
                self.kick_with(
                    StreamErrorCondition::ResourceConstraint,
                    "too many stanzas waiting for this client",
                );
            }
            // The session is ending and no longer reads its queue.
            Err(mpsc::error::TrySendError::Closed(q)) => self.keep_refused(q),
        }
    }

    fn keep_refused(&self, q: Queued) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.len() < self.tx.max_capacity() {
            refused.push(q);
        } else {
            // Bounded like the queue: only a flood aimed at one ending session gets here.
            tracing::warn!(jid = %self.jid, "stanza for an ending session dropped: too many waiting");
        }
    }

    /// Queues an element; a presence update is marked as one, for XEP-0352.
    pub fn send_element(&self, el: &Element) {
        let update = el.name == "presence"
            && matches!(el.attr("type"), None | Some("unavailable"))
            && el.ns == ns::CLIENT;
        self.queue(Queued {
            bytes: Bytes::from(el.to_bytes()),
            shared: false,
            presence_from: update.then(|| el.attr("from").unwrap_or_default().into()),
        });
    }

    /// Ends the session with a stream error.
    pub fn kick_with(&self, condition: StreamErrorCondition, text: &str) {
        let mut k = self.kicked_with.lock().unwrap_or_else(|e| e.into_inner());
        if k.is_none() {
            *k = Some((condition, text.to_owned()));
        }
        self.kick.cancel();
    }

    pub(crate) fn presence(&self) -> std::sync::MutexGuard<'_, PresenceState> {
        self.presence.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_available(&self) -> bool {
        self.presence().available
    }
}

/// A started core.
pub struct RunningCore {
    /// c2s STARTTLS listeners, as bound.
    pub c2s_addrs: Vec<SocketAddr>,
    /// c2s direct TLS listeners, as bound.
    pub direct_tls_addrs: Vec<SocketAddr>,
    /// The shared state; the gateway hands its storage to an embedded MUC service.
    pub core: Arc<Core>,
    tracker: TaskTracker,
    links: Vec<Stopper>,
    /// Every link's state, for `/readyz` and `fedgate_core_gateway_link_up`.
    pub gateway_links: Arc<GatewayLinks>,
    /// The database lock that makes this core the active one (PostgreSQL only); released
    /// when the core is dropped.
    leadership: Option<Leadership>,
}

/// How the core reaches its gateway.
pub struct GatewayLink {
    /// Every gateway instance to attach to (one link per domain and gateway).
    pub gateways: Vec<Target>,
    /// The handshake secret per domain (and alias).
    pub secrets: HashMap<String, String>,
    /// Other domains behind the gateway, for disco#items.
    pub neighbours: Vec<String>,
    /// Acknowledgements on the links (`[gateway] acknowledgements`, `max_unacked`).
    pub acks: crate::component::client::AckSettings,
}

/// Opens the database, attaches every domain to the gateway, binds the c2s listeners.
/// The core's metrics (storage errors) go into `registry`.
pub async fn start(
    config: &CoreConfig,
    tls: Arc<Tls>,
    gateway: GatewayLink,
    registry: &prometheus::Registry,
) -> Result<RunningCore, CoreError> {
    start_with_status(config, tls, gateway, registry, Arc::default()).await
}

/// [`start`], reporting to `status` for `/readyz`. On PostgreSQL it first waits until no
/// other core is active on the database ([`leadership`]), as a standby.
pub async fn start_with_status(
    config: &CoreConfig,
    tls: Arc<Tls>,
    gateway: GatewayLink,
    registry: &prometheus::Registry,
    status: Arc<CoreStatus>,
) -> Result<RunningCore, CoreError> {
    config.validate()?;
    let metrics = StorageMetrics::register(registry).unwrap_or_else(|e| {
        // A core started again in the same process (a reload): the first one's are shown.
        tracing::debug!("storage metrics not registered again: {e}");
        StorageMetrics::unregistered()
    });
    let storage = Storage::open(&config.database, metrics)?;
    let leadership = match &config.database {
        config::Database::Postgres(url) => {
            let waiting = status.clone();
            Some(Leadership::acquire(url, move || waiting.standby()).await?)
        }
        config::Database::Sqlite(_) => None,
    };
    let domains = Domains::from_config(config);

    let mut links = HashMap::new();
    let mut components = Vec::new();
    let mut all: Vec<&str> = domains.all().collect();
    all.sort();
    for domain in all {
        let secret = gateway.secrets.get(domain).cloned().unwrap_or_default();
        let mut cc = ClientConfig::with_gateways(domain, &secret, gateway.gateways.clone())
            .with_acks(gateway.acks);
        cc.limits = Limits {
            max_stanza_bytes: config.max_stanza_bytes.max(512 * 1024),
            ..Limits::default()
        };
        let component = Component::start(cc);
        links.insert(domain.to_owned(), component.sender());
        components.push((domain.to_owned(), component));
    }
    let gateway_names: Vec<String> = gateway.gateways.iter().map(|t| format!("{t:?}")).collect();
    let link_domains: Vec<String> = components.iter().map(|(d, _)| d.clone()).collect();
    let gateway_links = Arc::new(GatewayLinks::new(registry, &link_domains, &gateway_names));
    let mut disco_items: Vec<String> = config.disco_items.clone();
    for n in gateway.neighbours {
        if !domains.is_local(&n) && !disco_items.contains(&n) {
            disco_items.push(n);
        }
    }
    let core = Arc::new(Core {
        config: config.clone(),
        domains,
        storage,
        tls,
        links,
        sessions: Mutex::new(HashMap::new()),
        resume_table: sm::ResumeTable::default(),
        offline: Default::default(),
        disco_items,
        caps: Default::default(),
        blocklists: Default::default(),
        started: std::time::Instant::now(),
        registrations: Default::default(),
        shutdown: CancellationToken::new(),
    });

    // Bind everything before serving, so that a port clash fails the start cleanly.
    let bind = |key, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|error| CoreError::Bind { key, addr, error })
    };
    let mut plain = Vec::new();
    for addr in &config.listen {
        plain.push(bind("core.listen", *addr).await?);
    }
    let mut direct = Vec::new();
    for addr in &config.direct_tls_listen {
        direct.push(bind("core.direct_tls_listen", *addr).await?);
    }
    let c2s_addrs = plain.iter().filter_map(|l| l.local_addr().ok()).collect();
    let direct_tls_addrs = direct.iter().filter_map(|l| l.local_addr().ok()).collect();

    let tracker = TaskTracker::new();
    let stoppers = components
        .into_iter()
        .map(|(domain, c)| {
            let (_, events, stopper) = c.into_parts();
            tracker.spawn(gateway_events(
                core.clone(),
                domain,
                gateway_links.clone(),
                events,
            ));
            stopper
        })
        .collect();
    tracker.spawn(mam::sweep_periodically(core.clone()));
    let limit = Arc::new(Semaphore::new(config.max_connections));
    for (listener, direct_tls) in plain
        .into_iter()
        .map(|l| (l, false))
        .chain(direct.into_iter().map(|l| (l, true)))
    {
        let core2 = core.clone();
        tracker.spawn(crate::listener::accept_loop(
            if direct_tls { "c2s-direct-tls" } else { "c2s" },
            listener,
            limit.clone(),
            core.shutdown.clone(),
            tracker.clone(),
            move |tcp, peer, permit| {
                let core = core2.clone();
                async move {
                    c2s::handle(Box::new(tcp), peer, core, direct_tls).await;
                    drop(permit);
                }
            },
        ));
    }
    status.started(gateway_links.clone());
    Ok(RunningCore {
        c2s_addrs,
        direct_tls_addrs,
        core,
        tracker,
        links: stoppers,
        gateway_links,
        leadership,
    })
}

/// Passes stanzas from the component links of `domain` to the core, one at a time, and
/// records the links' ups and downs. One at a time matters: a stanza is acknowledged to the
/// gateway only when the next event is asked for ([`Events`]), so one that a killed core was
/// still storing is routed again by the gateway, to the standby that takes over.
async fn gateway_events(
    core: Arc<Core>,
    domain: String,
    links: Arc<GatewayLinks>,
    mut events: Events,
) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Stanza(s) => core.handle_from_gateway(s).await,
            Event::Online { gateway } => links.online(&domain, &gateway),
            Event::Offline { gateway, reason } => links.offline(&domain, &gateway, &reason),
        }
    }
}

impl RunningCore {
    /// Cancelled when another core took over the database while this one had lost its
    /// connection ([`leadership`]): this core must stop. Never, on SQLite.
    pub fn lost(&self) -> CancellationToken {
        self.leadership
            .as_ref()
            .map(Leadership::lost)
            .unwrap_or_default()
    }

    /// Ends every client stream with `<system-shutdown/>` (after sending each one's unavailable
    /// presence on), then closes the gateway links; bounded by `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.core.shutdown.cancel();
        self.tracker.close();
        let sessions_done = async {
            // Session tasks end on the token; the gateway event tasks end when links stop.
            loop {
                if self.core.session_count() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(grace, sessions_done).await.is_err() {
            tracing::warn!("c2s sessions did not complete in {grace:?}, terminating now");
        }
        for link in self.links {
            link.stop().await;
        }
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("core tasks did not complete in {grace:?}, terminating now");
        }
    }
}

impl Core {
    /// Signed-in sessions, all accounts.
    pub fn session_count(&self) -> usize {
        self.sessions_lock().values().map(Vec::len).sum()
    }

    fn sessions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<SessionHandle>>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sessions of an account (canonical bare JID).
    pub(crate) fn sessions_of(&self, account: &str) -> Vec<Arc<SessionHandle>> {
        self.sessions_lock()
            .get(account)
            .cloned()
            .unwrap_or_default()
    }

    /// The session bound to `resource` of an account.
    pub(crate) fn session(&self, account: &str, resource: &str) -> Option<Arc<SessionHandle>> {
        self.sessions_lock()
            .get(account)?
            .iter()
            .find(|s| s.jid.resource() == Some(resource))
            .cloned()
    }

    /// Registers a newly bound session. A session already bound to the same resource is
    /// ended with `<conflict/>` (RFC 6120 §7.7.2.2: the newer one wins).
    pub(crate) fn register(
        &self,
        jid: Jid,
        account: String,
        tx: mpsc::Sender<Queued>,
    ) -> (Arc<SessionHandle>, CancellationToken) {
        let kick = CancellationToken::new();
        let handle = Arc::new(SessionHandle {
            id: crate::router::next_session_id(),
            jid,
            account: account.clone(),
            tx,
            refused: Mutex::new(Vec::new()),
            kick: kick.clone(),
            kicked_with: Mutex::new(None),
            presence: Mutex::new(PresenceState::default()),
            carbons: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        });
        let mut sessions = self.sessions_lock();
        let list = sessions.entry(account).or_default();
        if let Some(i) = list
            .iter()
            .position(|s| s.jid.resource() == handle.jid.resource())
        {
            let old = list.remove(i);
            old.kick_with(
                StreamErrorCondition::Conflict,
                "replaced by a new session for the same resource",
            );
        }
        list.push(handle.clone());
        (handle, kick)
    }

    /// Removes a session from the table (only itself, never a successor).
    pub(crate) fn unregister(&self, handle: &SessionHandle) {
        let mut sessions = self.sessions_lock();
        if let Some(list) = sessions.get_mut(&handle.account) {
            list.retain(|s| s.id != handle.id);
            if list.is_empty() {
                sessions.remove(&handle.account);
            }
        }
    }

    /// Routes a stanza whose `from` is set: delivered here when it is for one of our domains,
    /// else sent to the gateway through the link of the sender's domain.
    pub(crate) async fn route(&self, el: Element) {
        let to = match el.attr("to").map(Jid::parse) {
            Some(Ok(j)) => j,
            Some(Err(_)) => {
                self.bounce(&el, StanzaErrorCondition::JidMalformed, "bad 'to' address")
                    .await;
                return;
            }
            None => return,
        };
        if self.domains.is_local(to.domain()) {
            Box::pin(self.deliver_local(to, el)).await;
        } else {
            self.send_to_gateway(el).await;
        }
    }

    /// Writes a stanza to the gateway on its sender's domain's link; bounces it when the link
    /// cannot take it.
    ///
    /// With no link for the sender's domain (a `from` that is not one of our domains or
    /// aliases) there is no route to any remote server: the sender gets
    /// `<remote-server-not-found/>` (RFC 6120 §8.3.3.16, as when the remote domain cannot be
    /// resolved), and a link that is down gives `<remote-server-timeout/>` (§8.3.3.17). A
    /// client's stanza comes back to that client this way.
    async fn send_to_gateway(&self, el: Element) {
        let from_domain = el
            .attr("from")
            .and_then(|f| crate::jid::domain_of(f).ok())
            .map(|d| d.into_owned())
            .unwrap_or_default();
        let Some(link) = self.links.get(&from_domain) else {
            tracing::debug!(from = %from_domain, "no gateway link for the sender's domain");
            let text = format!("no federation link for {from_domain}");
            self.bounce(&el, StanzaErrorCondition::RemoteServerNotFound, &text)
                .await;
            return;
        };
        if let Err(_bytes) = link.try_send_raw(el.to_bytes()) {
            let text = if link.is_online() {
                "too many stanzas waiting for the gateway"
            } else {
                "the federation gateway is not reachable"
            };
            self.bounce(&el, StanzaErrorCondition::RemoteServerTimeout, text)
                .await;
        }
    }

    /// Sends the error reply RFC 6120 §8.3 asks for, unless the stanza must not be answered
    /// (errors, iq results, unavailable presence).
    pub(crate) async fn bounce(&self, el: &Element, cond: StanzaErrorCondition, text: &str) {
        if let Some(reply) = error_reply(el, cond, text) {
            Box::pin(self.route(reply)).await;
        }
    }

    /// A stanza the gateway routed to one of our domains.
    async fn handle_from_gateway(&self, stanza: Stanza) {
        let Ok(el) = stanza.element() else { return };
        if el.attr("from").is_none() {
            return;
        }
        match el.attr("to").map(Jid::parse) {
            Some(Ok(to)) if self.domains.is_local(to.domain()) => self.deliver_local(to, el).await,
            Some(Ok(_)) => {
                tracing::debug!("the gateway routed a stanza for a domain we do not serve")
            }
            _ => {
                self.bounce(&el, StanzaErrorCondition::JidMalformed, "bad 'to' address")
                    .await
            }
        }
    }

    /// A session ended for good: it is forgotten, unavailable presence goes out for it, and
    /// what the client never acknowledged (`unacked`, XEP-0198: written but maybe never
    /// received), then what its queue still held (`queue`, the receiver its writer gave back;
    /// `None` if the session never started writing), then the stanzas the queue refused are
    /// re-routed, oldest first ([`Core::reroute_unwritten`]).
    pub(crate) async fn session_ended(
        &self,
        handle: &Arc<SessionHandle>,
        queue: Option<mpsc::Receiver<Queued>>,
        unacked: Vec<Queued>,
    ) {
        let was_available = handle.is_available();
        self.unregister(handle);
        self.record_last_activity(handle).await;
        if was_available {
            let unavailable = Element::new("presence", ns::CLIENT)
                .with_attr("from", handle.jid.to_string())
                .with_attr("type", "unavailable");
            self.broadcast_presence(handle, unavailable, false).await;
        }
        let mut unwritten = unacked;
        if let Some(mut rx) = queue {
            // Closed first, so that what arrives from now on lands in `refused`.
            rx.close();
            while let Ok(q) = rx.try_recv() {
                unwritten.push(q);
            }
        }
        unwritten.append(&mut handle.refused.lock().unwrap_or_else(|e| e.into_inner()));
        if !unwritten.is_empty() {
            self.reroute_unwritten(handle, unwritten).await;
        }
    }
}

/// The error reply to `el`, or `None` when none may be sent: every stanza error the core
/// makes comes from here. Its `<error/>` carries the XEP-0086 legacy `code` next to the
/// condition, for clients that show the code (profanity) or read only it.
pub(crate) fn error_reply(el: &Element, cond: StanzaErrorCondition, text: &str) -> Option<Element> {
    let stanza =
        Stanza::parse(Bytes::from(el.to_bytes()), &NsContext::new(ns::CLIENT, &[])).ok()?;
    let mut reply = stanza.bounce(cond, Some(text))?.element().ok()?;
    if let Some(code) = cond.legacy_code() {
        if let Some(error) = reply.children_mut().find(|c| c.name == "error") {
            error.set_attr("code", code.to_string());
        }
    }
    Some(reply)
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
