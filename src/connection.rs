//! A framed XMPP stream over any byte transport.
//!
//! [`Connection`] owns the transport during negotiation (one task reads and writes in turn);
//! once a session is established it splits into a [`Reader`] and a [`Writer`] so that reading
//! and writing never wait for each other (two peers both blocked writing would deadlock).
//! The transport is boxed so that TCP, and TLS on top of it, look the same to the sessions.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::xml::error::{stream_error, StreamErrorCondition, XmlError};
use crate::xml::framer::{Event, Framer, Limits};
use crate::xml::stream::{OpenStream, CLOSE_STREAM};

/// Anything a stream can run over: TCP, or TLS over TCP.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// A boxed transport.
pub type BoxTransport = Box<dyn Transport>;

/// How long a failing stream may take to deliver its last words (stream error + close).
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why reading a stream ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The transport failed. Fatal; nothing more can be sent.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bad XML. Fatal; answer with the error's stream condition.
    #[error("{0}")]
    Xml(#[from] XmlError),
    /// The peer closed the TCP connection without closing the stream. Fatal.
    #[error("connection closed by peer")]
    Eof,
}

/// A stream being negotiated: reads events, writes batches.
pub struct Connection {
    io: BoxTransport,
    framer: Framer,
    out: Vec<u8>,
    /// The peer's address, for logs.
    pub peer: SocketAddr,
    /// Our content namespace, needed to open our side of the stream before an early error.
    content_ns: &'static str,
    /// Whether our stream header has been written (RFC 6120 §4.9.1.2: a stream error needs an
    /// open stream, so an error before our header opens one first).
    opened: bool,
    /// When bytes last went out: a whitespace keepalive is due after a silence (RFC 6120
    /// §4.6.1), and this lets the session check it without a timer reset per write.
    last_write: tokio::time::Instant,
}

impl Connection {
    pub fn new(
        io: BoxTransport,
        peer: SocketAddr,
        limits: Limits,
        content_ns: &'static str,
    ) -> Connection {
        Connection {
            io,
            framer: Framer::new(limits),
            out: Vec::with_capacity(4096),
            peer,
            content_ns,
            opened: false,
            last_write: tokio::time::Instant::now(),
        }
    }

    /// When bytes last went out (or the connection was made).
    pub fn last_write(&self) -> tokio::time::Instant {
        self.last_write
    }

    /// The next event; reads as needed.
    pub async fn next_event(&mut self) -> Result<Event, ReadError> {
        next_event(&mut self.io, &mut self.framer).await
    }

    /// Queues our stream header.
    pub fn open(&mut self, header: &OpenStream<'_>) {
        header.write(&mut self.out);
        self.opened = true;
    }

    /// Queues bytes; nothing is written until [`Connection::flush`].
    pub fn send(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
            self.last_write = tokio::time::Instant::now();
        }
        self.io.flush().await
    }

    /// Takes the transport out for a TLS handshake (after `<proceed/>`). Everything read but not
    /// yet framed is discarded, never parsed: bytes a peer sends between `<starttls/>` and the
    /// handshake are an injection attempt (RFC 6120 §5.4.3.3, "STARTTLS command injection").
    /// Until [`Connection::restart_on`], the connection reads end-of-stream and fails writes.
    pub fn take_transport(&mut self) -> BoxTransport {
        let discarded = self.framer.reset();
        if discarded > 0 {
            tracing::warn!(peer = %self.peer, "discarded {discarded} bytes sent before the TLS handshake (STARTTLS injection?)");
        }
        self.out.clear();
        self.opened = false;
        std::mem::replace(&mut self.io, Box::new(Closed))
    }

    /// Continues on a new transport (the TLS stream) with a fresh stream: a new header is
    /// expected from the peer, and ours is not yet written (RFC 6120 §5.4.3.3).
    pub fn restart_on(&mut self, io: BoxTransport) {
        self.io = io;
        self.restart();
    }

    /// Starts a fresh stream on the same transport after SASL success (RFC 6120 §6.4.6).
    /// Unframed bytes are discarded: the peer may not send before the restart.
    pub fn restart(&mut self) {
        self.framer.reset();
        self.opened = false;
    }

    /// Changes the framer's limits (e.g. larger stanzas once authenticated).
    pub fn set_limits(&mut self, limits: Limits) {
        self.framer.set_limits(limits);
    }

    /// Ends the stream with a stream error and closes the transport, best effort and bounded in
    /// time: the peer may be gone or not reading.
    pub async fn fail(mut self, condition: &StreamErrorCondition, text: Option<&str>) {
        if !self.opened {
            OpenStream {
                content_ns: self.content_ns,
                from: None,
                to: None,
                id: None,
                version: true,
                dialback: false,
            }
            .write(&mut self.out);
        }
        self.out.extend_from_slice(&stream_error(condition, text));
        goodbye(&mut self.io, &mut self.out).await;
        linger(&mut self.io).await;
    }

    /// Closes the stream cleanly: `</stream:stream>`, then shuts the transport, bounded in time.
    pub async fn close(mut self) {
        goodbye(&mut self.io, &mut self.out).await;
        linger(&mut self.io).await;
    }

    /// Splits an established stream into independent halves. Anything already read but not yet
    /// framed stays with the reader.
    pub fn split(self) -> (Reader, Writer) {
        let (rd, wr) = tokio::io::split(self.io);
        (
            Reader {
                io: rd,
                framer: self.framer,
            },
            Writer {
                io: wr,
                out: self.out,
            },
        )
    }
}

async fn next_event<R: AsyncRead + Unpin>(
    io: &mut R,
    framer: &mut Framer,
) -> Result<Event, ReadError> {
    loop {
        if let Some(event) = framer.next_event()? {
            return Ok(event);
        }
        if io.read_buf(framer.read_buf()).await? == 0 {
            return Err(ReadError::Eof);
        }
    }
}

/// The read half of an established stream.
pub struct Reader {
    io: ReadHalf<BoxTransport>,
    framer: Framer,
}

impl Reader {
    /// The next event; reads as needed. Cancel-safe: no event is lost if dropped while waiting.
    pub async fn next_event(&mut self) -> Result<Event, ReadError> {
        next_event(&mut self.io, &mut self.framer).await
    }
}

/// The write half of an established stream: queue, then flush once per batch.
pub struct Writer {
    io: WriteHalf<BoxTransport>,
    out: Vec<u8>,
}

impl Writer {
    pub fn send(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Writes what is queued. Cancel-safe: dropped before it completes, what was not written
    /// stays queued, so a later `flush`, `close` or `fail` goes on from there (the c2s writer
    /// stops waiting on a slow client when its session ends).
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            while !self.out.is_empty() {
                let n = self.io.write(&self.out).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                self.out.drain(..n);
            }
            // Keep the batch buffer from pinning memory after a burst.
            if self.out.capacity() > 256 * 1024 {
                self.out.shrink_to(64 * 1024);
            }
        }
        self.io.flush().await
    }

    /// Writes a stream error and closes, bounded in time.
    pub async fn fail(mut self, condition: &StreamErrorCondition, text: Option<&str>) {
        self.out.extend_from_slice(&stream_error(condition, text));
        self.close().await;
    }

    /// Writes `</stream:stream>` and shuts the write side, bounded in time.
    pub async fn close(mut self) {
        goodbye(&mut self.io, &mut self.out).await;
    }
}

/// How long a closed stream keeps reading for the peer's own close.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes read (and discarded) while lingering.
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// After our closing tag, reads and discards until the peer closes too (RFC 6120 §4.4), within
/// [`LINGER_TIMEOUT`] and [`LINGER_BYTES`]. Closing a socket with unread data makes the kernel
/// send a reset, which also throws away what we wrote last and the peer has not read yet — a
/// stream error's text, or a final XEP-0198 acknowledgement that spares the peer resending
/// what already arrived.
async fn linger<R: AsyncRead + Unpin>(io: &mut R) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
        while total < LINGER_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// The transport of a [`Connection`] whose real one was taken for a TLS handshake: reads end,
/// writes fail.
struct Closed;

impl AsyncRead for Closed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Closed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Writes what is queued plus `</stream:stream>` and shuts the write side. Best effort and
/// bounded in time: the peer may be gone or not reading.
async fn goodbye<W: AsyncWrite + Unpin>(io: &mut W, out: &mut Vec<u8>) {
    out.extend_from_slice(CLOSE_STREAM);
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        let _ = io.write_all(out).await;
        let _ = io.shutdown().await;
    })
    .await;
}
