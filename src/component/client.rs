//! The backend side of the Jabber Component Protocol (XEP-0114): what a component (or
//! fedgate's own c2s core) uses to attach to a gateway.
//!
//! 1. [`connect`] opens one session: TCP (or an in-process [`LocalLink`]), our
//!    `jabber:component:accept` stream header with `to` = the component's domain, the gateway's
//!    header with its stream id, then `<handshake>hex(SHA1(stream_id + secret))</handshake>`
//!    (XEP-0114 §3) answered by an empty `<handshake/>`; a `<stream:error/>` instead comes back
//!    as [`ClientError::Refused`].
//! 2. [`Component::start`] keeps a session up: it connects, reports [`Event::Online`], passes
//!    every stanza the gateway routes to us on as [`Event::Stanza`], and when the stream ends
//!    reports [`Event::Offline`] and reconnects with exponential backoff and jitter
//!    ([`ClientConfig::backoff_initial`] doubling up to [`ClientConfig::backoff_max`]).
//! 3. [`Sender`] writes stanzas, as raw bytes ([`Sender::send_raw`]) or as an [`Element`]
//!    ([`Sender::send`]). Stanzas sent while the link is down wait in a bounded queue and go
//!    out once it is back.
//! 4. With a fedgate gateway, the link acknowledges ([`super::sm`]; on by default,
//!    [`ClientConfig::acknowledgements`]): every stanza written is kept until the gateway
//!    acknowledges it, which it does only once the stanza has left it for good, at most
//!    [`ClientConfig::max_unacked`] of them (then sending waits). When the link drops, or
//!    the gateway dies, the unacknowledged ones are sent again (through another gateway, or
//!    on the next session): nothing is lost, and what the dead gateway had passed on without
//!    confirming it may arrive twice ([`Stats::resent`]). An [`Event::Stanza`] is
//!    acknowledged to the gateway in turn once the application has finished with it (it
//!    asked [`Events::recv`] for the next event), so the gateway routes again what a
//!    component that died had not finished with. A gateway that does not declare acknowledgements (Prosody's or
//!    ejabberd's component listener, an older fedgate) gets plain XEP-0114: a stanza it had
//!    not read when the link dropped is then lost, so a component that cannot lose anything
//!    answers iqs and lets its peers retry.
//!
//! Reading and writing run in separate tasks, so a component that is slow to take events
//! never stops its own replies from going out, and vice versa.
//!
//! # Several gateways
//! A deployment may run several gateway instances for the same domains (they share nothing
//! but the dialback secret). Given more than one [`ClientConfig::gateways`], a component keeps
//! a link to each and receives from all of them. Each stanza it sends goes through the link
//! chosen by [`choose_gateway`]: a rendezvous hash of the stanza's destination domain over the
//! links that are up. So the stanzas for one remote domain take one gateway (their order is
//! kept, and each gateway holds one s2s session per pair), and when that gateway's link drops
//! only its domains move, to the gateway that scores next. Stanzas still queued for a link
//! when it drops are handed back and sent through another one, after those the gateway had
//! not acknowledged (step 4; without acknowledgements, what the dropped gateway had read but
//! not yet sent on is lost).
//!
//! # A gateway that drains
//! Every session declares fedgate's [drain extension](super::drain) on its header. When a
//! gateway about to stop sends the drain notice, the link counts as down for choosing (an
//! [`Event::Offline`] says so), what is queued for it goes to another gateway (with a single
//! gateway it waits for the next session), the answer is written last, and stanzas the
//! gateway still delivers on that stream arrive as usual until it ends.
//!
//! ```no_run
//! # async fn demo() {
//! use fedgate::component::client::{ClientConfig, Component, Event, Target};
//! let config = ClientConfig::new("echo.example.test", "secret", Target::Tcp("127.0.0.1:5347".parse().unwrap()));
//! let mut component = Component::start(config);
//! let sender = component.sender();
//! while let Some(event) = component.recv().await {
//!     if let Event::Stanza(stanza) = event {
//!         let _ = sender.send_raw(stanza.raw().clone()).await;
//!     }
//! }
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::held::Report;
use super::unacked::Unacked;
use super::LocalLink;
use crate::connection::{BoxTransport, Connection, ReadError, Reader, Writer};
use crate::dialback::component_handshake;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::framer::{Event as FrameEvent, Limits};
use crate::xml::stanza::{Kind, NsContext, Stanza};
use crate::xml::stream::OpenStream;
use crate::xml::{ns, Element};

/// Largest batch written before a flush.
const BATCH_BYTES: usize = 256 * 1024;

/// Where the gateway is.
#[derive(Clone)]
pub enum Target {
    /// The gateway's component listener (`[component] listen`).
    Tcp(SocketAddr),
    /// A gateway in this process ([`crate::gateway::RunningGateway::component_link`]).
    Local(LocalLink),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(addr) => write!(f, "{addr}"),
            Target::Local(_) => f.write_str("in-process"),
        }
    }
}

/// How to attach to a gateway. [`ClientConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The domain this component serves: a `[[component.backend]]` of the gateway.
    pub domain: String,
    /// The handshake secret configured for the domain at the gateway (the same at every
    /// gateway).
    pub secret: String,
    /// The gateways to attach to, one link each; at least one. With several, see the module
    /// docs ("Several gateways").
    pub gateways: Vec<Target>,
    /// Limits for what the gateway sends. Default: 512 KiB stanzas, like the gateway's own.
    pub limits: Limits,
    /// From connecting until the handshake is answered. Default 10 s.
    pub handshake_timeout: Duration,
    /// First delay before reconnecting. Default 100 ms.
    pub backoff_initial: Duration,
    /// Longest delay between attempts. Default 10 s.
    pub backoff_max: Duration,
    /// Stanzas that may wait to be written (also while the link is down) before
    /// [`Sender::send_raw`] waits and [`Sender::try_send_raw`] refuses. Default 1024. With
    /// several gateways, each link has a queue of this length too.
    pub queue_len: usize,
    /// Ask the gateway for acknowledgements (module docs, step 4; [`super::sm`]): declared
    /// on our header, enabled only when the gateway declares it too, so a plain XEP-0114
    /// gateway never sees it. Default `true`. `false`: plain XEP-0114, and what a gateway
    /// that dies had not passed on is lost.
    pub acknowledgements: bool,
    /// Stanzas written to one gateway and not yet acknowledged, at most: past that, the link
    /// takes no more until the gateway acknowledges some (the sender then waits once the
    /// queue is full). Each is kept (its bytes) to be sent again if the link drops. Default
    /// 4096; the gateway itself takes at most 8,192 in flight per link. Stanzas the gateway
    /// [held](super::held) are kept as well but do not count here.
    pub max_unacked: usize,
}

/// The acknowledgement settings of a [`ClientConfig`] (module docs, step 4), as a
/// standalone process's `[gateway]` sets them.
#[derive(Clone, Copy, Debug)]
pub struct AckSettings {
    /// [`ClientConfig::acknowledgements`].
    pub enabled: bool,
    /// [`ClientConfig::max_unacked`].
    pub max_unacked: usize,
}

impl AckSettings {
    /// `[gateway] acknowledgements` and `max_unacked` of a core's or services' file. Here, not
    /// in the config: the config module is below the component library.
    pub fn from_gateway(gateway: &crate::core::config::GatewayLinkConfig) -> AckSettings {
        AckSettings {
            enabled: gateway.acknowledgements,
            max_unacked: gateway.max_unacked.max(1),
        }
    }
}

impl Default for AckSettings {
    fn default() -> Self {
        AckSettings {
            enabled: true,
            max_unacked: 4096,
        }
    }
}

impl ClientConfig {
    /// These acknowledgement settings instead of the defaults.
    pub fn with_acks(mut self, acks: AckSettings) -> ClientConfig {
        self.acknowledgements = acks.enabled;
        self.max_unacked = acks.max_unacked;
        self
    }

    /// A component attached to one gateway, with the defaults.
    pub fn new(domain: &str, secret: &str, target: Target) -> ClientConfig {
        Self::with_gateways(domain, secret, vec![target])
    }

    /// A component attached to each of `gateways` (at least one), with the defaults.
    pub fn with_gateways(domain: &str, secret: &str, gateways: Vec<Target>) -> ClientConfig {
        ClientConfig {
            domain: domain.to_owned(),
            secret: secret.to_owned(),
            gateways,
            limits: Limits {
                max_stanza_bytes: 512 * 1024,
                ..Limits::default()
            },
            handshake_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            queue_len: 1024,
            acknowledgements: AckSettings::default().enabled,
            max_unacked: AckSettings::default().max_unacked,
        }
    }
}

/// Why a session could not be set up, or ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The gateway could not be reached. Retried.
    #[error("cannot connect to the gateway at {target}: {source}")]
    Connect {
        /// The gateway's address, or `in-process gateway` for a [`LocalLink`].
        target: String,
        /// Why the connection failed (a timeout shows as `TimedOut`).
        source: io::Error,
    },
    /// The gateway refused us with a stream error, e.g. `not-authorized` for a wrong secret,
    /// `host-unknown` for a domain it does not serve, `conflict` when the domain is attached
    /// already. Retried, since an operator may be fixing the gateway's configuration.
    #[error("the gateway refused {domain}: <{condition}/>{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Refused {
        /// The backend domain we tried to attach.
        domain: String,
        /// The stream error condition's element name, e.g. `not-authorized`.
        condition: String,
        /// The gateway's `<text/>` with the error, if it sent one.
        text: Option<String>,
    },
    /// The gateway sent something XEP-0114 does not allow here.
    #[error("unexpected from the gateway: {0}")]
    Protocol(String),
    /// Reading failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// No answer to the handshake in time.
    #[error("no handshake answer within {0:?}")]
    Timeout(Duration),
}

/// An established component session, before it is split for use.
pub struct Session {
    conn: Connection,
    /// The id of the gateway's stream header, which the handshake was computed over.
    pub stream_id: String,
    /// The gateway declared acknowledgements and we enabled them (`<enable/>` is written,
    /// not yet flushed): from here on both sides count ([`super::sm`], step 3).
    pub acks: bool,
    /// With `acks`, the gateway declared [`super::held`] too: it may acknowledge out of order.
    pub held: bool,
}

impl Session {
    /// The read and write halves.
    pub fn split(self) -> (Reader, Writer) {
        self.conn.split()
    }
}

/// Opens one session to the gateway `target`: transport, stream headers, handshake (module
/// docs, step 1).
pub async fn connect(config: &ClientConfig, target: &Target) -> Result<Session, ClientError> {
    let (io, peer): (BoxTransport, SocketAddr) = match target {
        Target::Tcp(addr) => {
            let tcp = tokio::time::timeout(config.handshake_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))
                .and_then(|r| r)
                .map_err(|source| ClientError::Connect {
                    target: addr.to_string(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            (Box::new(tcp), *addr)
        }
        Target::Local(link) => (
            link.connect().map_err(|source| ClientError::Connect {
                target: "in-process gateway".into(),
                source,
            })?,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ),
    };
    let mut conn = Connection::new(io, peer, config.limits, ns::COMPONENT);
    let timeout = config.handshake_timeout;
    let (stream_id, offered) = tokio::time::timeout(timeout, handshake(&mut conn, config))
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    let acks = config.acknowledgements && offered.acks;
    if acks {
        // Step 3 of super::sm: counting starts after this on our side, after the gateway
        // reads it on its side; no need to wait for <enabled/> (a gateway that offered
        // never refuses it).
        conn.send(super::sm::ENABLE);
    }
    Ok(Session {
        conn,
        stream_id,
        acks,
        held: acks && offered.held,
    })
}

/// What the gateway's header offered.
#[derive(Debug, Clone, Copy)]
struct Offered {
    /// Acknowledgements ([`super::sm`]).
    acks: bool,
    /// Held stanzas ([`super::held`]).
    held: bool,
}

/// The stream headers and the handshake: the gateway's stream id, and what it offered.
async fn handshake(
    conn: &mut Connection,
    config: &ClientConfig,
) -> Result<(String, Offered), ClientError> {
    conn.open(&OpenStream {
        content_ns: ns::COMPONENT,
        to: Some(&config.domain),
        drain: true,
        sm: config.acknowledgements,
        held: config.acknowledgements,
        ..Default::default()
    });
    conn.flush().await.map_err(ReadError::Io)?;
    let (id, offered) = match conn.next_event().await? {
        FrameEvent::StreamOpen(h) => {
            let offered = Offered {
                acks: super::sm::declared(&h),
                held: super::held::declared(&h),
            };
            let id = h.id.ok_or_else(|| {
                ClientError::Protocol("the gateway's stream header has no id".into())
            })?;
            (id, offered)
        }
        _ => return Err(ClientError::Protocol("expected a stream header".into())),
    };
    let digest = component_handshake(&id, &config.secret);
    conn.send(format!("<handshake>{digest}</handshake>").as_bytes());
    conn.flush().await.map_err(ReadError::Io)?;
    match conn.next_event().await? {
        FrameEvent::Stanza(s) if s.kind() == Kind::Handshake => Ok((id, offered)),
        FrameEvent::Stanza(s) if s.kind() == Kind::StreamError => {
            let (condition, text) = stream_error_of(&s);
            Err(ClientError::Refused {
                domain: config.domain.clone(),
                condition,
                text,
            })
        }
        FrameEvent::Stanza(s) => Err(ClientError::Protocol(format!(
            "<{}/> instead of <handshake/>",
            s.name()
        ))),
        _ => Err(ClientError::Protocol(
            "the gateway closed the stream during the handshake".into(),
        )),
    }
}

/// The condition and text of a `<stream:error/>`.
fn stream_error_of(s: &Stanza) -> (String, Option<String>) {
    let Ok(e) = s.element() else {
        return ("undefined-condition".into(), None);
    };
    let condition = e
        .children()
        .find(|c| c.ns == ns::STREAMS && c.name != "text")
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "undefined-condition".into());
    let text = e.child("text", ns::STREAMS).map(Element::text);
    (condition, text)
}

/// What a running [`Component`] reports.
#[derive(Debug)]
pub enum Event {
    /// The handshake with `gateway` (its address, or `in-process`) succeeded; stanzas flow.
    Online {
        /// The gateway's address, or `in-process`.
        gateway: String,
    },
    /// The link to `gateway` is down (or could not be set up); a reconnect follows after a
    /// backoff. With several gateways, the others carry the traffic meanwhile. Also reported
    /// when the gateway starts to drain: it takes no more stanzas from us but still delivers
    /// what it holds, and another `Offline` follows when its stream ends.
    Offline {
        /// The gateway's address, or `in-process`.
        gateway: String,
        /// Why the link went down, for logs (an error's text, or the drain notice).
        reason: String,
    },
    /// A stanza the gateway routed to us, with its bytes and routing facts; build a tree with
    /// [`Stanza::element`].
    Stanza(Stanza),
}

/// An event on its way to the application, with the session to tell once the application
/// has finished with the stanza ([`Events`]).
struct Delivery {
    event: Event,
    /// For a stanza the gateway counts (acknowledgements on): the session's count to move.
    receipt: Option<Arc<AckState>>,
}

impl From<Event> for Delivery {
    fn from(event: Event) -> Delivery {
        Delivery {
            event,
            receipt: None,
        }
    }
}

/// The events of a [`Component`], in order.
///
/// With acknowledgements (module docs, step 4), a stanza counts as received, and so is
/// acknowledged to the gateway, only when the application asks for the event after it: by
/// then it has finished with the stanza (stored it, answered it, passed it on). A component
/// that dies while handling a stanza, or with stanzas still waiting here, has not
/// acknowledged them, and the gateway routes them again (to a standby that takes over, or
/// back to their senders as bounces). A component that hands stanzas to other tasks gives
/// up that guarantee for them: it is acknowledged once handed over.
pub struct Events {
    rx: mpsc::Receiver<Delivery>,
    /// The receipt of the stanza returned last, not yet counted.
    taken: Option<Arc<AckState>>,
}

impl Events {
    /// The next event; `None` once stopped. Counts the stanza returned before as received.
    pub async fn recv(&mut self) -> Option<Event> {
        if let Some(session) = self.taken.take() {
            session.passed_on();
        }
        let delivery = self.rx.recv().await?;
        self.taken = delivery.receipt;
        Some(delivery.event)
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// The link is gone for good: the component was stopped.
#[derive(Debug, thiserror::Error)]
#[error("the component is stopped")]
pub struct Closed;

/// What the links of a [`Component`] counted, for its own metrics ([`Sender::stats`]).
#[derive(Debug, Default)]
pub struct Stats {
    acked: AtomicU64,
    resent: AtomicU64,
    unacked: AtomicU64,
}

impl Stats {
    /// Stanzas the gateways acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stanzas sent again because the link they were written to dropped before the gateway
    /// acknowledged them: each was sent at least twice, and may arrive twice (a gateway that
    /// died may have passed it on without confirming it).
    pub fn resent(&self) -> u64 {
        self.resent.load(Ordering::Relaxed)
    }

    /// Stanzas written and not yet acknowledged (kept to be sent again), over every link.
    pub fn unacked(&self) -> u64 {
        self.unacked.load(Ordering::Relaxed)
    }
}

/// Writes stanzas to the gateway; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Bytes>,
    online: Arc<[AtomicBool]>,
    stats: Arc<Stats>,
}

impl Sender {
    /// Queues a stanza's bytes (one complete element, no `xmlns` on the top element or the
    /// component namespace) for the gateway; waits while the queue is full.
    pub async fn send_raw(&self, bytes: impl Into<Bytes>) -> Result<(), Closed> {
        self.tx.send(bytes.into()).await.map_err(|_| Closed)
    }

    /// Like [`Sender::send_raw`] but never waits: `Err` with the bytes back when the queue is
    /// full or the component is stopped.
    pub fn try_send_raw(&self, bytes: impl Into<Bytes>) -> Result<(), Bytes> {
        self.tx.try_send(bytes.into()).map_err(|e| match e {
            mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
        })
    }

    /// Queues an element, written with [`Element::to_bytes`].
    pub async fn send(&self, element: &Element) -> Result<(), Closed> {
        self.send_raw(element.to_bytes()).await
    }

    /// Whether a link (to any gateway) is up right now.
    pub fn is_online(&self) -> bool {
        self.online.iter().any(|up| up.load(Ordering::Relaxed))
    }

    /// What the links counted: acknowledged, sent again, unacknowledged.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// A component kept attached to its gateway (module docs, step 2).
pub struct Component {
    sender: Sender,
    events: Events,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Component {
    /// Starts connecting in the background; events arrive through [`Component::recv`].
    /// A config without gateways gets a component that is never online.
    pub fn start(config: ClientConfig) -> Component {
        let (tx, rx) = mpsc::channel(config.queue_len.max(1));
        let (events_tx, events_rx) = mpsc::channel(config.queue_len.max(1));
        let online: Arc<[AtomicBool]> = config
            .gateways
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect();
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let task = if config.gateways.len() <= 1 {
            let link = Link {
                index: 0,
                online: online.clone(),
                came_up: Arc::new(Notify::new()),
                requeue: None,
                stats: stats.clone(),
            };
            tokio::spawn(supervise(config, link, rx, events_tx, stop.clone()))
        } else {
            tokio::spawn(attach_to_all(
                config,
                rx,
                events_tx,
                online.clone(),
                stats.clone(),
                stop.clone(),
            ))
        };
        Component {
            sender: Sender { tx, online, stats },
            events: Events {
                rx: events_rx,
                taken: None,
            },
            stop,
            task,
        }
    }

    /// The next event; `None` once stopped. Counts the stanza returned before as received
    /// ([`Events`]).
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// A handle to write stanzas with.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// Splits off the event stream, for a component that handles events in another task.
    pub fn into_parts(self) -> (Sender, Events, Stopper) {
        (
            self.sender,
            self.events,
            Stopper {
                stop: self.stop,
                task: self.task,
            },
        )
    }

    /// Writes what is queued, closes the stream and stops reconnecting. While the link is down
    /// (connecting, or waiting to retry) what is queued is dropped.
    pub async fn stop(self) {
        Stopper {
            stop: self.stop,
            task: self.task,
        }
        .stop()
        .await
    }
}

/// Stops a [`Component`] whose parts were split off.
pub struct Stopper {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Stopper {
    /// Like [`Component::stop`].
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// One gateway link of a component, as its supervisor sees it.
struct Link {
    /// Which of [`ClientConfig::gateways`].
    index: usize,
    /// Every link's state; this link sets `online[index]`.
    online: Arc<[AtomicBool]>,
    /// Told when this link comes up, so that a dispatcher waiting for any link looks again.
    came_up: Arc<Notify>,
    /// With several gateways: where stanzas still queued for this link go when it drops, to
    /// be sent through another.
    requeue: Option<mpsc::UnboundedSender<Bytes>>,
    stats: Arc<Stats>,
}

impl Link {
    fn set_online(&self, up: bool) {
        self.online[self.index].store(up, Ordering::Relaxed);
        if up {
            self.came_up.notify_one();
        }
    }

    /// Hands what is queued for this (down) link back to the dispatcher.
    fn give_back(&self, out: &mut mpsc::Receiver<Bytes>) {
        if self.requeue.is_some() {
            while let Ok(b) = out.try_recv() {
                self.give_back_one(b);
            }
        }
    }

    /// Hands what this (down) link wrote and the gateway did not acknowledge back to the
    /// dispatcher, to be sent again through another gateway (oldest first, before what is
    /// still queued); with a single gateway it stays for the next session.
    fn give_back_unacked(&self, unacked: &mut Unacked) {
        if self.requeue.is_some() && !unacked.is_empty() {
            let n = unacked.len() as u64;
            self.stats.resent.fetch_add(n, Ordering::Relaxed);
            self.stats.unacked.fetch_sub(n, Ordering::Relaxed);
            for b in unacked.take_all() {
                self.give_back_one(b);
            }
        }
    }

    /// Hands one stanza taken for this (down) link back to the dispatcher.
    fn give_back_one(&self, bytes: Bytes) {
        if let Some(requeue) = &self.requeue {
            let _ = requeue.send(bytes);
        }
    }
}

/// Connects to one gateway, runs a session, reconnects after a backoff; until stopped.
async fn supervise(
    config: ClientConfig,
    link: Link,
    mut out: mpsc::Receiver<Bytes>,
    events: mpsc::Sender<Delivery>,
    stop: CancellationToken,
) {
    let Some(target) = config.gateways.get(link.index).cloned() else {
        return;
    };
    let gateway = format!("{target:?}");
    let mut backoff = config.backoff_initial;
    // Written and not acknowledged (module docs, step 4): with a single gateway kept across
    // sessions and written first on the next one; with several handed to the others.
    let mut unacked = Unacked::default();
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            a = connect(&config, &target) => a,
        };
        let reason = match attempt {
            Ok(session) => {
                tracing::info!(domain = %config.domain, %gateway, acknowledgements = session.acks, "attached to the gateway");
                backoff = config.backoff_initial;
                link.set_online(true);
                if events
                    .send(
                        Event::Online {
                            gateway: gateway.clone(),
                        }
                        .into(),
                    )
                    .await
                    .is_err()
                {
                    return;
                }
                let end = run(
                    session,
                    &mut out,
                    &mut unacked,
                    events.clone(),
                    &stop,
                    &link,
                    &gateway,
                    config.max_unacked.max(1),
                )
                .await;
                link.set_online(false);
                match end {
                    SessionEnd::Stopped => return,
                    SessionEnd::Lost(reason) => reason,
                }
            }
            Err(e) => e.to_string(),
        };
        link.give_back_unacked(&mut unacked);
        link.give_back(&mut out);
        if !unacked.is_empty() {
            tracing::info!(domain = %config.domain, %gateway, "{} stanzas the gateway did not acknowledge will be sent again on the next session", unacked.len());
        }
        tracing::info!(domain = %config.domain, %gateway, "gateway link down: {reason}; retrying in {backoff:?}");
        let offline = Event::Offline {
            gateway: gateway.clone(),
            reason,
        };
        if events.send(offline.into()).await.is_err() {
            return;
        }
        // Jitter of up to a quarter, so that many components do not reconnect in lockstep.
        let jitter = backoff.mul_f64(rand::random::<f64>() * 0.25);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        // A stanza the dispatcher placed just as the link went down waited out the backoff.
        link.give_back(&mut out);
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Several gateways: a supervisor per gateway, and the dispatcher that spreads the stanzas
/// of [`Sender`] over the links that are up (module docs, "Several gateways").
async fn attach_to_all(
    config: ClientConfig,
    rx: mpsc::Receiver<Bytes>,
    events: mpsc::Sender<Delivery>,
    online: Arc<[AtomicBool]>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let came_up = Arc::new(Notify::new());
    let (requeue_tx, requeue_rx) = mpsc::unbounded_channel();
    // The links stop after the dispatcher has handed them what was still queued.
    let links_stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut queues = Vec::new();
    for index in 0..config.gateways.len() {
        let (tx, out) = mpsc::channel(config.queue_len.max(1));
        queues.push(tx);
        let link = Link {
            index,
            online: online.clone(),
            came_up: came_up.clone(),
            requeue: Some(requeue_tx.clone()),
            stats: stats.clone(),
        };
        tasks.spawn(supervise(
            config.clone(),
            link,
            out,
            events.clone(),
            links_stop.clone(),
        ));
    }
    drop(requeue_tx);
    let labels: Vec<String> = config.gateways.iter().map(|t| format!("{t:?}")).collect();
    let dispatcher = Dispatcher {
        labels,
        online,
        came_up,
        queues,
        ctx: NsContext::component(),
    };
    dispatcher.run(rx, requeue_rx, &stop).await;
    links_stop.cancel();
    while tasks.join_next().await.is_some() {}
}

/// Hands each stanza to the link [`choose_gateway`] picks among those up.
struct Dispatcher {
    /// Each gateway's name in the hash: its address, so that every process sharing the
    /// gateway list picks alike.
    labels: Vec<String>,
    online: Arc<[AtomicBool]>,
    came_up: Arc<Notify>,
    queues: Vec<mpsc::Sender<Bytes>>,
    /// What stanzas from the component are parsed in, to read their `to`.
    ctx: NsContext,
}

impl Dispatcher {
    /// The link for `bytes` among those up; with `or_any`, among all when none is up.
    fn gateway_for(&self, bytes: &Bytes, or_any: bool) -> Option<usize> {
        let stanza = Stanza::parse(bytes.clone(), &self.ctx).ok();
        // A stanza without a readable `to` still goes somewhere: it scores by the empty name.
        let domain = stanza
            .as_ref()
            .and_then(|s| s.to())
            .and_then(|to| crate::jid::domain_of(to).ok())
            .unwrap_or_default();
        let up = |i: usize| self.online[i].load(Ordering::Relaxed);
        choose(&domain, &self.labels, up).or_else(|| {
            or_any
                .then(|| choose(&domain, &self.labels, |_| true))
                .flatten()
        })
    }

    /// Until stopped, or every [`Sender`] is gone. Stanzas handed back by a dropped link go
    /// first, since they are older than the ones still waiting in `rx`.
    async fn run(
        &self,
        mut rx: mpsc::Receiver<Bytes>,
        mut requeue: mpsc::UnboundedReceiver<Bytes>,
        stop: &CancellationToken,
    ) {
        loop {
            let bytes = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(b) = requeue.recv() => b,
                b = rx.recv() => match b {
                    Some(b) => b,
                    None => break,
                },
            };
            let index = loop {
                if let Some(i) = self.gateway_for(&bytes, false) {
                    break i;
                }
                tokio::select! {
                    _ = stop.cancelled() => return self.hand_over(bytes, rx, requeue),
                    _ = self.came_up.notified() => {}
                }
            };
            // A full link queue slows the sender down, as one gateway does.
            tokio::select! {
                _ = stop.cancelled() => return self.hand_over(bytes, rx, requeue),
                permit = self.queues[index].reserve() => match permit {
                    Ok(permit) => permit.send(bytes),
                    // The link's supervisor is gone: only when stopping.
                    Err(_) => return self.hand_over(bytes, rx, requeue),
                },
            }
        }
        while let Ok(b) = requeue.try_recv() {
            self.place(b);
        }
        while let Ok(b) = rx.try_recv() {
            self.place(b);
        }
    }

    /// On stop: `first` and everything still queued go to the links, which write what they
    /// can before they close.
    fn hand_over(
        &self,
        first: Bytes,
        mut rx: mpsc::Receiver<Bytes>,
        mut requeue: mpsc::UnboundedReceiver<Bytes>,
    ) {
        self.place(first);
        while let Ok(b) = requeue.try_recv() {
            self.place(b);
        }
        while let Ok(b) = rx.try_recv() {
            self.place(b);
        }
    }

    /// Without waiting: into the chosen link's queue (any link's when none is up); dropped
    /// when that queue is full, which only happens while stopping.
    fn place(&self, bytes: Bytes) {
        if let Some(i) = self.gateway_for(&bytes, true) {
            let _ = self.queues[i].try_send(bytes);
        }
    }
}

/// The error reply a component sends to `el` (from where `el` was sent to, RFC 6120 §8.3),
/// with `text`; `None` when none may be sent (to an error, an iq result or an unavailable
/// presence).
pub fn error_reply(el: &Element, cond: StanzaErrorCondition, text: &str) -> Option<Element> {
    let stanza = Stanza::parse(Bytes::from(el.to_bytes()), &NsContext::component()).ok()?;
    stanza.bounce(cond, Some(text))?.element().ok()
}

/// The gateway for stanzas to `domain`: among the links that are `up`, the one whose label
/// scores highest for it (rendezvous hashing). Stable while the same links are up, and when
/// one drops only the domains it had move. `None` when no link is up.
pub fn choose_gateway(domain: &str, labels: &[String], up: &[bool]) -> Option<usize> {
    choose(domain, labels, |i| up.get(i).copied().unwrap_or(false))
}

/// [`choose_gateway`] with the links' state read in place, so that picking allocates nothing.
fn choose(domain: &str, labels: &[String], up: impl Fn(usize) -> bool) -> Option<usize> {
    (0..labels.len())
        .filter(|&i| up(i))
        .max_by_key(|&i| rendezvous_score(domain, &labels[i]))
}

/// FNV-1a over `domain`, a separator and `label`, then a 64-bit finaliser (from SplitMix64)
/// so that labels differing in one character still score independently. Fixed, so that
/// every process and every build picks the same gateway.
fn rendezvous_score(domain: &str, label: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain.bytes().chain([0xff]).chain(label.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

enum SessionEnd {
    /// [`Component::stop`], or every sender and the event receiver are gone.
    Stopped,
    /// The link dropped or the gateway ended the stream.
    Lost(String),
}

/// What the gateway reported about our stanzas and the writer has not applied yet, in one
/// place so that the writer takes a `<held>` list together with the `<done>` that may follow
/// it ([`Unacked::apply`]).
#[derive(Default)]
struct Reported {
    /// `<held>` lists, in the order read.
    held: Vec<u32>,
    /// The latest `<a h='…'/>`, if one came since the writer last looked.
    h: Option<u32>,
    /// `<done>` lists, in the order read.
    done: Vec<u32>,
}

/// With held stanzas ([`super::held`]), at most this many times
/// [`ClientConfig::max_unacked`] may be held before the link takes no more.
const MAX_HELD_PER_UNACKED: usize = 16;

impl AckState {
    /// The application finished with one more stanza of this session ([`Events`]).
    fn passed_on(&self) {
        self.received.fetch_add(1, Ordering::AcqRel);
    }

    /// The reader records a report and wakes the writer.
    fn report(&self, f: impl FnOnce(&mut Reported)) {
        f(&mut self.reported.lock().unwrap_or_else(|e| e.into_inner()));
        self.ack.notify_one();
    }
}

/// What the reader tells the writer about acknowledgements, without a channel.
#[derive(Default)]
struct AckState {
    /// What the gateway reported (`<a/>`, and with [`super::held`] `<held>` and `<done>`).
    reported: std::sync::Mutex<Reported>,
    /// `reported` changed.
    ack: Notify,
    /// Stanzas the application finished with since `<enabled/>` (our `h`, modulo 2^32),
    /// counted by [`Events::recv`].
    received: AtomicU32,
    /// The gateway asked with `<r/>`.
    request: Notify,
}

/// One established session: the reader in its own task, the writer here. When the gateway
/// sends the [drain notice](super::drain), the link stops taking new stanzas (the
/// dispatcher picks another gateway), answers, and from then on only receives: what is
/// queued for it goes back to the dispatcher, or, with a single gateway, waits for the next
/// session. With acknowledgements, what is written stays in `unacked` until acknowledged;
/// what the last session left there is written first.
#[allow(clippy::too_many_arguments)]
async fn run(
    session: Session,
    out: &mut mpsc::Receiver<Bytes>,
    unacked: &mut Unacked,
    events: mpsc::Sender<Delivery>,
    stop: &CancellationToken,
    link: &Link,
    gateway: &str,
    max_unacked: usize,
) -> SessionEnd {
    let acks = session.acks;
    let held = session.held;
    let (reader, mut writer) = session.split();
    let state = Arc::new(AckState::default());
    let (notice_tx, mut notice) = mpsc::channel(1);
    let mut reader_task = tokio::spawn(read_loop(
        reader,
        events.clone(),
        notice_tx,
        acks.then(|| state.clone()),
        held,
    ));
    let stats = &link.stats;
    let mut requested = false;
    // The new session counts from 0; what the last one left is written again first.
    let again = unacked.restart();
    if !again.is_empty() {
        // Sent before, on a session that ended before the gateway acknowledged them.
        let n = again.len() as u64;
        stats.resent.fetch_add(n, Ordering::Relaxed);
        for b in again.iter() {
            writer.send(b);
        }
        if !acks {
            stats.unacked.fetch_sub(n, Ordering::Relaxed);
            unacked.take_all();
        }
        tracing::info!(%gateway, "sent {n} stanzas again that the last session did not get acknowledged");
    }
    // `<enable/>`, and what is sent again, go out now.
    if let Err(e) = writer.flush().await {
        reader_task.abort();
        return SessionEnd::Lost(format!("write failed: {e}"));
    }
    // Applies what the gateway reported: forgets what it acknowledged, keeps what it holds.
    let apply = |unacked: &mut Unacked| -> Result<(), String> {
        let reported =
            std::mem::take(&mut *state.reported.lock().unwrap_or_else(|e| e.into_inner()));
        let h = reported.h.unwrap_or(unacked.acked());
        let n = unacked
            .apply(&reported.held, h, &reported.done)
            .map_err(|e| e.to_string())?;
        stats.acked.fetch_add(n as u64, Ordering::Relaxed);
        stats.unacked.fetch_sub(n as u64, Ordering::Relaxed);
        Ok(())
    };
    // Held stanzas wait in the gateway's bounded queues, so they are bounded there; this is
    // only a backstop against a gateway that holds without end.
    let room_for = |unacked: &Unacked| {
        unacked.len() - unacked.held() < max_unacked
            && unacked.held() < max_unacked * MAX_HELD_PER_UNACKED
    };
    let mut draining = false;
    loop {
        let room = !acks || room_for(unacked);
        tokio::select! {
            _ = stop.cancelled() => {
                // After the answer to a drain notice nothing more may be written.
                if !draining {
                    while let Ok(b) = out.try_recv() {
                        writer.send(&b);
                    }
                }
                writer.close().await;
                reader_task.abort();
                return SessionEnd::Stopped;
            }
            end = &mut reader_task => {
                // A last <a/> read just before the stream ended counts.
                if acks {
                    let _ = apply(unacked);
                }
                return match end {
                    Ok(Some(reason)) => SessionEnd::Lost(reason),
                    _ => SessionEnd::Stopped,
                };
            }
            _ = state.ack.notified(), if acks => {
                if let Err(e) = apply(unacked) {
                    writer.send(&crate::xml::stream_error(
                        &crate::xml::error::StreamErrorCondition::UndefinedCondition,
                        Some(&e),
                    ));
                    let _ = writer.flush().await;
                    reader_task.abort();
                    return SessionEnd::Lost(e);
                }
                requested = false;
            }
            _ = state.request.notified(), if acks => {
                writer.send(&crate::s2s::sm::ack(state.received.load(Ordering::Acquire)));
                if let Err(e) = writer.flush().await {
                    reader_task.abort();
                    return SessionEnd::Lost(format!("write failed: {e}"));
                }
            }
            Some(()) = notice.recv(), if !draining => {
                draining = true;
                link.set_online(false);
                tracing::info!(%gateway, "the gateway is draining: sending through the others");
                link.give_back(out);
                // Everything taken from `out` so far has been written: this comes last.
                writer.send(super::drain::ANSWER);
                if let Err(e) = writer.flush().await {
                    reader_task.abort();
                    return SessionEnd::Lost(format!("write failed: {e}"));
                }
                let offline = Event::Offline {
                    gateway: gateway.to_owned(),
                    reason: "the gateway is draining (stopping); it still delivers what it holds".into(),
                };
                if events.send(offline.into()).await.is_err() {
                    reader_task.abort();
                    return SessionEnd::Stopped;
                }
            }
            // Draining, with a single gateway the stanzas wait in `out` for the next session.
            next = out.recv(), if room && (!draining || link.requeue.is_some()) => {
                if let (true, Some(b)) = (draining, &next) {
                    // A stanza the dispatcher placed just before it saw this link go down.
                    link.give_back_one(b.clone());
                    continue;
                }
                let Some(first) = next else {
                    writer.close().await;
                    reader_task.abort();
                    return SessionEnd::Stopped;
                };
                let keep = |b: Bytes, unacked: &mut Unacked| {
                    if acks {
                        stats.unacked.fetch_add(1, Ordering::Relaxed);
                        unacked.push(b);
                    }
                };
                writer.send(&first);
                keep(first, unacked);
                while writer.pending() < BATCH_BYTES && (!acks || room_for(unacked)) {
                    match out.try_recv() {
                        Ok(b) => {
                            writer.send(&b);
                            keep(b, unacked);
                        }
                        Err(_) => break,
                    }
                }
                if acks && !room_for(unacked) && !requested {
                    // At the limit: ask, rather than wait for the gateway's own <a/>.
                    writer.send(crate::s2s::sm::REQUEST);
                    requested = true;
                }
                if let Err(e) = writer.flush().await {
                    reader_task.abort();
                    return SessionEnd::Lost(format!("write failed: {e}"));
                }
            }
        }
    }
}

/// Passes stanzas on until the stream ends; `Some(reason)` for a lost link, `None` when nobody
/// takes events any more. The gateway's drain notice goes to `notice`; with acknowledgements
/// (`acks`), its `<a/>` and `<r/>` go there (and with `held` its [`super::held`] reports),
/// and what we pass on after `<enabled/>` carries a receipt ([`Events`]).
async fn read_loop(
    mut reader: Reader,
    events: mpsc::Sender<Delivery>,
    notice: mpsc::Sender<()>,
    acks: Option<Arc<AckState>>,
    held: bool,
) -> Option<String> {
    // The gateway counts what it writes after <enabled/>, so we count from there too.
    let mut counting = false;
    loop {
        match reader.next_event().await {
            Ok(FrameEvent::Stanza(s)) if super::drain::is_notice(&s) => {
                let _ = notice.try_send(());
            }
            Ok(FrameEvent::Stanza(s)) if acks.is_some() && super::sm::is_sm(&s) => {
                let Some(state) = &acks else { continue };
                match s.name() {
                    "enabled" => counting = true,
                    "a" => match crate::s2s::sm::h_of(&s) {
                        Some(h) => {
                            state.report(|r| r.h = Some(h));
                        }
                        None => return Some("the gateway sent <a/> without a valid 'h'".into()),
                    },
                    "r" => state.request.notify_one(),
                    other => {
                        return Some(format!("the gateway sent <{other}/> of {}", super::sm::NS))
                    }
                }
            }
            Ok(FrameEvent::Stanza(s)) if held && super::held::is_report(&s) => {
                let Some(state) = &acks else { continue };
                match super::held::parse(&s) {
                    Ok(Report::Held(seqs)) => state.report(|r| r.held.extend(seqs)),
                    Ok(Report::Done(seqs)) => state.report(|r| r.done.extend(seqs)),
                    Err(e) => return Some(format!("the gateway sent a bad report: {e}")),
                }
            }
            Ok(FrameEvent::Stanza(s)) if s.kind() == Kind::StreamError => {
                let (condition, text) = stream_error_of(&s);
                return Some(format!(
                    "the gateway ended the stream with <{condition}/>{}",
                    text.map(|t| format!(" ({t})")).unwrap_or_default()
                ));
            }
            Ok(FrameEvent::Stanza(s)) => {
                // Ours to acknowledge once the application has finished with it.
                let receipt = acks
                    .as_ref()
                    .filter(|_| counting && super::sm::counts(&s))
                    .cloned();
                let delivery = Delivery {
                    event: Event::Stanza(s),
                    receipt,
                };
                if events.send(delivery).await.is_err() {
                    return None;
                }
            }
            Ok(FrameEvent::StreamClose) => return Some("the gateway closed the stream".into()),
            Ok(FrameEvent::StreamOpen(_)) => {
                return Some("the gateway opened a second stream header".into())
            }
            Err(e) => return Some(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::error::StreamErrorCondition;

    /// A gateway side that answers the handshake by hand; the connection and the
    /// component's stream header.
    async fn fake_gateway(
        io: crate::connection::BoxTransport,
        secret: &str,
        accept: bool,
        acks: bool,
    ) -> (Connection, crate::xml::stream::StreamHeader) {
        let mut conn = Connection::new(
            io,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Limits::default(),
            ns::COMPONENT,
        );
        let FrameEvent::StreamOpen(h) = conn.next_event().await.unwrap() else {
            panic!()
        };
        assert_eq!(h.to.as_deref(), Some("c.test"));
        assert_eq!(h.default_ns.as_deref(), Some(ns::COMPONENT));
        conn.open(&OpenStream {
            content_ns: ns::COMPONENT,
            from: Some("c.test"),
            id: Some("id1"),
            sm: acks,
            ..Default::default()
        });
        conn.flush().await.unwrap();
        let FrameEvent::Stanza(s) = conn.next_event().await.unwrap() else {
            panic!()
        };
        assert_eq!(
            s.element().unwrap().text(),
            component_handshake("id1", secret)
        );
        if accept {
            conn.send(b"<handshake/>");
        } else {
            conn.send(&crate::xml::stream_error(
                &StreamErrorCondition::NotAuthorized,
                Some("wrong"),
            ));
        }
        conn.flush().await.unwrap();
        (conn, h)
    }

    /// Our side of the handshake for `c.test` with secret `s3cret`, against [`fake_gateway`].
    async fn handshake_against(accept: bool) -> Result<(String, bool), ClientError> {
        let (a, b) = tokio::io::duplex(4096);
        let client = async {
            let mut conn = Connection::new(
                Box::new(a),
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Limits::default(),
                ns::COMPONENT,
            );
            let config =
                ClientConfig::new("c.test", "s3cret", Target::Tcp(([127, 0, 0, 1], 1).into()));
            handshake(&mut conn, &config).await
        };
        let (r, _) = tokio::join!(client, fake_gateway(Box::new(b), "s3cret", accept, false));
        r.map(|(id, offered)| (id, offered.acks))
    }

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:5347")).collect()
    }

    #[test]
    fn each_domain_has_one_gateway_and_only_a_dropped_gateways_domains_move() {
        let labels = labels(3);
        let domains: Vec<String> = (0..3000).map(|i| format!("d{i}.test")).collect();
        let all_up = [true, true, true];
        let before: Vec<usize> = domains
            .iter()
            .map(|d| choose_gateway(d, &labels, &all_up).unwrap())
            .collect();
        // Spread: each gateway gets roughly a third.
        for g in 0..3 {
            let n = before.iter().filter(|&&c| c == g).count();
            assert!((800..1200).contains(&n), "gateway {g} got {n} of 3000");
        }
        // Stable: the same answer every time.
        assert_eq!(choose_gateway("d7.test", &labels, &all_up), Some(before[7]));
        // Gateway 1 drops: its domains move, nobody else's does.
        let after: Vec<usize> = domains
            .iter()
            .map(|d| choose_gateway(d, &labels, &[true, false, true]).unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b == 1 {
                assert_ne!(*a, 1);
            } else {
                assert_eq!(a, b);
            }
        }
        assert_eq!(choose_gateway("d7.test", &labels, &[false; 3]), None);
    }

    #[test]
    fn a_stanza_goes_by_the_domain_of_its_to_and_anywhere_only_when_asked() {
        let labels = labels(8);
        let dispatcher = Dispatcher {
            labels: labels.clone(),
            online: (0..8).map(|_| AtomicBool::new(true)).collect(),
            came_up: Arc::new(Notify::new()),
            queues: (0..8).map(|_| mpsc::channel(1).0).collect(),
            ctx: NsContext::component(),
        };
        let pick = |xml: &'static str, or_any| {
            dispatcher.gateway_for(&Bytes::from_static(xml.as_bytes()), or_any)
        };
        let all = [true; 8];
        let b_test = choose_gateway("b.test", &labels, &all);
        assert_eq!(pick("<message to='Alice@B.test/r'/>", false), b_test);
        assert_eq!(pick("<iq to='b.test' type='get' id='1'/>", false), b_test);
        assert_eq!(
            pick("<presence/>", false),
            choose_gateway("", &labels, &all)
        );
        for up in dispatcher.online.iter() {
            up.store(false, Ordering::Relaxed);
        }
        assert_eq!(pick("<message to='bob@b.test'/>", false), None);
        assert_eq!(pick("<message to='bob@b.test'/>", true), b_test);
    }

    /// A gateway on a loopback port that accepts one component for `c.test`: its address,
    /// and the connection once the handshake is done, with whether the header declared the
    /// drain protocol.
    async fn tcp_gateway() -> (SocketAddr, JoinHandle<(Connection, bool)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (
            addr,
            tokio::spawn(async move { accept_component(&listener).await }),
        )
    }

    /// The gateway side of one component's handshake on `listener` (secret `s3cret`).
    async fn accept_component(listener: &tokio::net::TcpListener) -> (Connection, bool) {
        let (tcp, _) = listener.accept().await.unwrap();
        let (conn, h) = fake_gateway(Box::new(tcp), "s3cret", true, false).await;
        (conn, crate::component::drain::declared(&h))
    }

    async fn next_stanza(conn: &mut Connection) -> Stanza {
        match tokio::time::timeout(Duration::from_secs(5), conn.next_event()).await {
            Ok(Ok(FrameEvent::Stanza(s))) => s,
            other => panic!("expected a stanza, got {:?}", other.map(|e| e.map(|_| ()))),
        }
    }

    async fn next_event(component: &mut Component) -> Event {
        tokio::time::timeout(Duration::from_secs(5), component.recv())
            .await
            .expect("an event in time")
            .expect("the component runs")
    }

    #[tokio::test]
    async fn a_drain_notice_moves_new_stanzas_to_the_other_gateway_and_is_answered() {
        let (addr0, gw0) = tcp_gateway().await;
        let (addr1, gw1) = tcp_gateway().await;
        let targets = vec![Target::Tcp(addr0), Target::Tcp(addr1)];
        let labels: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
        let mut component =
            Component::start(ClientConfig::with_gateways("c.test", "s3cret", targets));
        let (mut conns, mut declared) = (Vec::new(), Vec::new());
        for gw in [gw0, gw1] {
            let (conn, d) = gw.await.unwrap();
            conns.push(conn);
            declared.push(d);
        }
        assert_eq!(
            declared,
            [true, true],
            "the header declares the drain namespace"
        );
        for _ in 0..2 {
            assert!(matches!(
                next_event(&mut component).await,
                Event::Online { .. }
            ));
        }
        let sender = component.sender();
        let chosen = choose_gateway("b.test", &labels, &[true, true]).unwrap();
        let other = 1 - chosen;
        sender
            .send_raw("<message from='c.test' to='x@b.test' id='before'/>")
            .await
            .unwrap();
        assert_eq!(next_stanza(&mut conns[chosen]).await.id(), Some("before"));

        conns[chosen].send(crate::component::drain::NOTICE);
        conns[chosen].flush().await.unwrap();
        let answer = next_stanza(&mut conns[chosen]).await;
        assert!(
            crate::component::drain::is_answer(&answer),
            "{:?}",
            answer.raw()
        );
        match next_event(&mut component).await {
            Event::Offline { gateway, reason } => {
                assert_eq!(gateway, labels[chosen]);
                assert!(reason.contains("draining"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // New stanzas for b.test take the other gateway; the draining one still delivers.
        sender
            .send_raw("<message from='c.test' to='x@b.test' id='after'/>")
            .await
            .unwrap();
        assert_eq!(next_stanza(&mut conns[other]).await.id(), Some("after"));
        conns[chosen].send(b"<message from='x@b.test' to='c.test' id='held'/>");
        conns[chosen].flush().await.unwrap();
        match next_event(&mut component).await {
            Event::Stanza(s) => assert_eq!(s.id(), Some("held")),
            other => panic!("{other:?}"),
        }
        assert!(sender.is_online(), "the other gateway is up");
        // Nothing more on the draining link after the answer.
        let more = tokio::time::timeout(Duration::from_millis(200), conns[chosen].next_event());
        assert!(more.await.is_err(), "the component wrote after its answer");
        component.stop().await;
    }

    #[tokio::test]
    async fn with_a_single_gateway_stanzas_sent_while_it_drains_wait_for_the_next_session() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::Tcp(listener.local_addr().unwrap());
        let mut component = Component::start(ClientConfig::new("c.test", "s3cret", target));
        let (mut conn, _) = accept_component(&listener).await;
        assert!(matches!(
            next_event(&mut component).await,
            Event::Online { .. }
        ));
        conn.send(crate::component::drain::NOTICE);
        conn.flush().await.unwrap();
        assert!(crate::component::drain::is_answer(
            &next_stanza(&mut conn).await
        ));
        assert!(matches!(
            next_event(&mut component).await,
            Event::Offline { .. }
        ));
        let sender = component.sender();
        sender
            .send_raw("<message from='c.test' to='x@b.test' id='waits'/>")
            .await
            .unwrap();
        let more = tokio::time::timeout(Duration::from_millis(200), conn.next_event());
        assert!(more.await.is_err(), "written to the draining gateway");
        // The gateway stops; the component attaches again and the stanza goes out.
        conn.send(&crate::xml::stream_error(
            &StreamErrorCondition::SystemShutdown,
            None,
        ));
        conn.flush().await.unwrap();
        drop(conn);
        let (mut conn, _) = accept_component(&listener).await;
        assert_eq!(next_stanza(&mut conn).await.id(), Some("waits"));
        component.stop().await;
    }

    /// A stanza is acknowledged once the application has finished with it, that is, when it
    /// asks for the next event: not while it waits in the library's queue or is handled.
    #[tokio::test]
    async fn a_stanza_is_acknowledged_only_when_the_application_asks_for_the_next_event() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::Tcp(listener.local_addr().unwrap());
        let mut component = Component::start(ClientConfig::new("c.test", "s3cret", target));
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut conn, h) = fake_gateway(Box::new(tcp), "s3cret", true, true).await;
        assert!(super::super::sm::declared(&h));
        assert_eq!(
            &next_stanza(&mut conn).await.raw()[..],
            super::super::sm::ENABLE
        );
        conn.send(super::super::sm::ENABLED);
        assert!(matches!(
            next_event(&mut component).await,
            Event::Online { .. }
        ));
        let h_after_request = async |conn: &mut Connection| {
            conn.send(crate::s2s::sm::REQUEST);
            conn.flush().await.unwrap();
            crate::s2s::sm::h_of(&next_stanza(conn).await).expect("an <a/> with h")
        };
        conn.send(b"<message from='x@b.test' to='c.test' id='m1'/>");
        conn.send(b"<message from='x@b.test' to='c.test' id='m2'/>");
        conn.flush().await.unwrap();
        // Both read by the library, neither taken by the application.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(h_after_request(&mut conn).await, 0);
        // m1 taken: being handled, not yet finished.
        match next_event(&mut component).await {
            Event::Stanza(s) => assert_eq!(s.id(), Some("m1")),
            other => panic!("{other:?}"),
        }
        assert_eq!(h_after_request(&mut conn).await, 0);
        // Asking for the next event finishes m1; m2 is being handled.
        match next_event(&mut component).await {
            Event::Stanza(s) => assert_eq!(s.id(), Some("m2")),
            other => panic!("{other:?}"),
        }
        assert_eq!(h_after_request(&mut conn).await, 1);
        let waiting = tokio::time::timeout(Duration::from_millis(50), component.recv()).await;
        assert!(waiting.is_err(), "no more events");
        assert_eq!(h_after_request(&mut conn).await, 2);
        component.stop().await;
    }

    #[tokio::test]
    async fn handshake_digest_and_refusal() {
        assert_eq!(handshake_against(true).await.unwrap().0, "id1");
        let r = handshake_against(false).await;
        match r {
            Err(ClientError::Refused {
                condition, text, ..
            }) => {
                assert_eq!(condition, "not-authorized");
                assert_eq!(text.as_deref(), Some("wrong"));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
