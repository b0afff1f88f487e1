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
//!    out once it is back; a stanza the gateway had not read when a link dropped is lost (XEP-0114
//!    has no acknowledgements), so a component that cannot lose anything answers iqs and lets
//!    its peers retry.
//!
//! Reading and writing run in separate tasks, so a component that is slow to take events
//! never stops its own replies from going out, and vice versa.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::LocalLink;
use crate::connection::{BoxTransport, Connection, ReadError, Reader, Writer};
use crate::dialback::component_handshake;
use crate::xml::framer::{Event as FrameEvent, Limits};
use crate::xml::stanza::{Kind, Stanza};
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
    /// The handshake secret configured for the domain at the gateway.
    pub secret: String,
    pub target: Target,
    /// Limits for what the gateway sends. Default: 512 KiB stanzas, like the gateway's own.
    pub limits: Limits,
    /// From connecting until the handshake is answered. Default 10 s.
    pub handshake_timeout: Duration,
    /// First delay before reconnecting. Default 100 ms.
    pub backoff_initial: Duration,
    /// Longest delay between attempts. Default 10 s.
    pub backoff_max: Duration,
    /// Stanzas that may wait to be written (also while the link is down) before
    /// [`Sender::send_raw`] waits and [`Sender::try_send_raw`] refuses. Default 1024.
    pub queue_len: usize,
}

impl ClientConfig {
    pub fn new(domain: &str, secret: &str, target: Target) -> ClientConfig {
        ClientConfig {
            domain: domain.to_owned(),
            secret: secret.to_owned(),
            target,
            limits: Limits {
                max_stanza_bytes: 512 * 1024,
                ..Limits::default()
            },
            handshake_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            queue_len: 1024,
        }
    }
}

/// Why a session could not be set up, or ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The gateway could not be reached. Retried.
    #[error("cannot connect to the gateway at {target}: {source}")]
    Connect { target: String, source: io::Error },
    /// The gateway refused us with a stream error, e.g. `not-authorized` for a wrong secret,
    /// `host-unknown` for a domain it does not serve, `conflict` when the domain is attached
    /// already. Retried, since an operator may be fixing the gateway's configuration.
    #[error("the gateway refused {domain}: <{condition}/>{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Refused {
        domain: String,
        condition: String,
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
}

impl Session {
    /// The read and write halves.
    pub fn split(self) -> (Reader, Writer) {
        self.conn.split()
    }
}

/// Opens one session to the gateway: transport, stream headers, handshake (module docs, step 1).
pub async fn connect(config: &ClientConfig) -> Result<Session, ClientError> {
    let (io, peer): (BoxTransport, SocketAddr) = match &config.target {
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
    let stream_id = tokio::time::timeout(timeout, handshake(&mut conn, config))
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    Ok(Session { conn, stream_id })
}

async fn handshake(conn: &mut Connection, config: &ClientConfig) -> Result<String, ClientError> {
    conn.open(&OpenStream {
        content_ns: ns::COMPONENT,
        to: Some(&config.domain),
        ..Default::default()
    });
    conn.flush().await.map_err(ReadError::Io)?;
    let id = match conn.next_event().await? {
        FrameEvent::StreamOpen(h) => h
            .id
            .ok_or_else(|| ClientError::Protocol("the gateway's stream header has no id".into()))?,
        _ => return Err(ClientError::Protocol("expected a stream header".into())),
    };
    let digest = component_handshake(&id, &config.secret);
    conn.send(format!("<handshake>{digest}</handshake>").as_bytes());
    conn.flush().await.map_err(ReadError::Io)?;
    match conn.next_event().await? {
        FrameEvent::Stanza(s) if s.kind() == Kind::Handshake => Ok(id),
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
    /// The handshake succeeded; stanzas flow.
    Online,
    /// The link is down (or could not be set up); a reconnect follows after a backoff.
    Offline { reason: String },
    /// A stanza the gateway routed to us, with its bytes and routing facts; build a tree with
    /// [`Stanza::element`].
    Stanza(Stanza),
}

/// The link is gone for good: the component was stopped.
#[derive(Debug, thiserror::Error)]
#[error("the component is stopped")]
pub struct Closed;

/// Writes stanzas to the gateway; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Bytes>,
    online: Arc<AtomicBool>,
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

    /// Whether the link is up right now.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }
}

/// A component kept attached to its gateway (module docs, step 2).
pub struct Component {
    sender: Sender,
    events: mpsc::Receiver<Event>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Component {
    /// Starts connecting in the background; events arrive through [`Component::recv`].
    pub fn start(config: ClientConfig) -> Component {
        let (tx, rx) = mpsc::channel(config.queue_len.max(1));
        let (events_tx, events) = mpsc::channel(config.queue_len.max(1));
        let online = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            config,
            rx,
            events_tx,
            online.clone(),
            stop.clone(),
        ));
        Component {
            sender: Sender { tx, online },
            events,
            stop,
            task,
        }
    }

    /// The next event; `None` once stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// A handle to write stanzas with.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// Splits off the event stream, for a component that handles events in another task.
    pub fn into_parts(self) -> (Sender, mpsc::Receiver<Event>, Stopper) {
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

/// Connects, runs a session, reconnects after a backoff; until stopped.
async fn supervise(
    config: ClientConfig,
    mut out: mpsc::Receiver<Bytes>,
    events: mpsc::Sender<Event>,
    online: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut backoff = config.backoff_initial;
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            a = connect(&config) => a,
        };
        let reason = match attempt {
            Ok(session) => {
                tracing::info!(domain = %config.domain, target = ?config.target, "attached to the gateway");
                backoff = config.backoff_initial;
                online.store(true, Ordering::Relaxed);
                if events.send(Event::Online).await.is_err() {
                    return;
                }
                let end = run(session, &mut out, events.clone(), &stop).await;
                online.store(false, Ordering::Relaxed);
                match end {
                    SessionEnd::Stopped => return,
                    SessionEnd::Lost(reason) => reason,
                }
            }
            Err(e) => e.to_string(),
        };
        tracing::info!(domain = %config.domain, "gateway link down: {reason}; retrying in {backoff:?}");
        if events.send(Event::Offline { reason }).await.is_err() {
            return;
        }
        // Jitter of up to a quarter, so that many components do not reconnect in lockstep.
        let jitter = backoff.mul_f64(rand::random::<f64>() * 0.25);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

enum SessionEnd {
    /// [`Component::stop`], or every sender and the event receiver are gone.
    Stopped,
    /// The link dropped or the gateway ended the stream.
    Lost(String),
}

/// One established session: the reader in its own task, the writer here.
async fn run(
    session: Session,
    out: &mut mpsc::Receiver<Bytes>,
    events: mpsc::Sender<Event>,
    stop: &CancellationToken,
) -> SessionEnd {
    let (reader, mut writer) = session.split();
    let mut reader_task = tokio::spawn(read_loop(reader, events));
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                while let Ok(b) = out.try_recv() {
                    writer.send(&b);
                }
                writer.close().await;
                reader_task.abort();
                return SessionEnd::Stopped;
            }
            end = &mut reader_task => {
                return match end {
                    Ok(Some(reason)) => SessionEnd::Lost(reason),
                    _ => SessionEnd::Stopped,
                };
            }
            next = out.recv() => {
                let Some(first) = next else {
                    writer.close().await;
                    reader_task.abort();
                    return SessionEnd::Stopped;
                };
                writer.send(&first);
                while writer.pending() < BATCH_BYTES {
                    match out.try_recv() {
                        Ok(b) => writer.send(&b),
                        Err(_) => break,
                    }
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
/// takes events any more.
async fn read_loop(mut reader: Reader, events: mpsc::Sender<Event>) -> Option<String> {
    loop {
        match reader.next_event().await {
            Ok(FrameEvent::Stanza(s)) if s.kind() == Kind::StreamError => {
                let (condition, text) = stream_error_of(&s);
                return Some(format!(
                    "the gateway ended the stream with <{condition}/>{}",
                    text.map(|t| format!(" ({t})")).unwrap_or_default()
                ));
            }
            Ok(FrameEvent::Stanza(s)) => {
                if events.send(Event::Stanza(s)).await.is_err() {
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

    /// A gateway side that answers the handshake by hand.
    async fn fake_gateway(io: tokio::io::DuplexStream, secret: &str, accept: bool) -> Connection {
        let mut conn = Connection::new(
            Box::new(io),
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
        conn
    }

    /// Our side of the handshake for `c.test` with secret `s3cret`, against [`fake_gateway`].
    async fn handshake_against(accept: bool) -> Result<String, ClientError> {
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
        let (r, _) = tokio::join!(client, fake_gateway(b, "s3cret", accept));
        r
    }

    #[tokio::test]
    async fn handshake_digest_and_refusal() {
        assert_eq!(handshake_against(true).await.unwrap(), "id1");
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
