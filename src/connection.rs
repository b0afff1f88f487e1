//! A framed XMPP stream over any byte transport.
//!
//! [`Connection`] owns the transport during negotiation (one task reads and writes in turn);
//! once a session that writes stanzas is established (outbound s2s, components, c2s) it splits
//! into a [`Reader`] and a [`Writer`] so that reading and writing never wait for each other
//! (two peers both blocked writing would deadlock). An inbound s2s stream, which only answers
//! what it reads, keeps the [`Connection`].
//! The transport is boxed so that TCP, and TLS on top of it, look the same to the sessions.
//!
//! An idle stream holds no buffers of its own: the read buffer is given up while a read waits
//! with nothing half-read ([`read_into`]), and the write buffer after each flush of a
//! [`Connection`]. Ten thousand idle peers then cost their sockets, TLS state and session
//! state, not 20 KiB of empty buffers each.
//!
//! A stream may be held to a byte rate ([`Connection::limit_rate`], a [`TokenBucket`]): when
//! the bucket is empty the next read waits until it has refilled, so the kernel's buffers
//! fill and TCP slows the sender down, rather than fedgate buffering what it cannot process.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

use crate::xml::error::{stream_error, StreamErrorCondition, XmlError};
use crate::xml::framer::{Event, Framer, Limits, READ_RESERVE};
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
    /// What is queued for the next flush; empty, with no allocation, in between.
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
    /// The inbound byte rate this stream is held to, if any.
    bucket: Option<TokenBucket>,
}

impl Connection {
    /// A stream over `io` from `peer`, read with `limits`; `content_ns` is the namespace our
    /// header declares if an early error has to open our side first.
    pub fn new(
        io: BoxTransport,
        peer: SocketAddr,
        limits: Limits,
        content_ns: &'static str,
    ) -> Connection {
        Connection {
            io,
            framer: Framer::new(limits),
            out: Vec::new(),
            peer,
            content_ns,
            opened: false,
            last_write: tokio::time::Instant::now(),
            bucket: None,
        }
    }

    /// Holds reading to `rate` bytes per second with bursts of `burst` bytes, from now on;
    /// called again, changes the rate and keeps what the bucket holds (up to the new burst).
    pub fn limit_rate(&mut self, rate: u64, burst: u64) {
        let now = tokio::time::Instant::now();
        match &mut self.bucket {
            Some(bucket) => bucket.set_rate(rate, burst, now),
            None => self.bucket = Some(TokenBucket::new(rate, burst, now)),
        }
    }

    /// When bytes last went out (or the connection was made).
    pub fn last_write(&self) -> tokio::time::Instant {
        self.last_write
    }

    /// The next event; reads as needed, waiting first when the byte rate is used up.
    /// Cancel-safe: no event is lost if dropped while waiting.
    pub async fn next_event(&mut self) -> Result<Event, ReadError> {
        next_event(&mut self.io, &mut self.framer, &mut self.bucket).await
    }

    /// Adds the time reads wait on the byte rate limit ([`Connection::limit_rate`]) to
    /// `micros`, e.g. the peer's throttling counter.
    pub fn count_throttling_in(&mut self, micros: Arc<AtomicU64>) {
        if let Some(b) = &mut self.bucket {
            b.count_waits_in(micros);
        }
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

    /// Writes what is queued, then gives the buffer up: a negotiating or inbound stream writes
    /// a few answers now and then, and an idle one should hold no write buffer.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out = Vec::new();
            self.last_write = tokio::time::Instant::now();
        }
        self.io.flush().await
    }

    /// Takes the transport out for a TLS handshake (after `<proceed/>`). Everything read but not
    /// yet framed is discarded, never parsed: bytes a peer sends between `<starttls/>` and the
    /// handshake are an injection attempt (RFC 6120 §5.4.3.3, "STARTTLS command injection").
    /// Until [`Connection::restart_on`], the connection reads end-of-stream and fails writes.
    pub fn take_transport(&mut self) -> BoxTransport {
        // Whitespace is no command: discarded without a word.
        let whitespace = self.framer.buffered_is_whitespace();
        let discarded = self.framer.reset();
        if discarded > 0 && !whitespace {
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
        let header = (!self.opened).then_some(self.content_ns);
        end_with_error(&mut self.io, &mut self.out, header, condition, text).await;
    }

    /// [`Connection::fail`] in a task of its own, for a caller that gave up on a peer that
    /// does not answer: the goodbye and the linger for the peer's close (bounded as ever) do
    /// not hold up what the caller does next, such as trying the next target.
    pub fn fail_in_background(self, condition: StreamErrorCondition) {
        tokio::spawn(async move { self.fail(&condition, None).await });
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
                bucket: self.bucket,
            },
            Writer {
                io: wr,
                out: self.out,
                written: 0,
            },
        )
    }
}

/// Frames what is buffered, else reads. With a bucket, a read waits until the bucket is no
/// longer in debt, and is debited once it returns: one clock read per read, nothing allocated.
/// Cancel-safe: a read that completed is debited before the next await.
async fn next_event<R: AsyncRead + Unpin>(
    io: &mut R,
    framer: &mut Framer,
    bucket: &mut Option<TokenBucket>,
) -> Result<Event, ReadError> {
    loop {
        if let Some(event) = framer.next_event()? {
            return Ok(event);
        }
        if let Some(b) = bucket.as_ref() {
            if let Some(at) = b.ready_at() {
                if let Some(waited) = &b.waited {
                    let wait = at.saturating_duration_since(tokio::time::Instant::now());
                    waited.fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep_until(at).await;
            }
        }
        let n = read_into(io, framer).await?;
        if n == 0 {
            return Err(ReadError::Eof);
        }
        if let Some(bucket) = bucket {
            bucket.debit(n, tokio::time::Instant::now());
        }
    }
}

/// One read into the framer. While the framer holds bytes (half a stanza), or the transport has
/// more at once, it reads into the framer's buffer, as fast as before. A read that has to wait
/// with nothing buffered gives that buffer up ([`Framer::release_buffer`]), and the read that
/// ends the wait goes through a buffer on the stack of the poll (not in the task, which would
/// keep it) and is copied into a fresh framer buffer: one allocation and one copy per wake-up
/// from idle, none while bytes keep coming. Cancel-safe: bytes are in the framer once the
/// read returns.
async fn read_into<R: AsyncRead + Unpin>(io: &mut R, framer: &mut Framer) -> io::Result<usize> {
    poll_fn(|cx| {
        if framer.has_buffer() {
            let polled = pin!(io.read_buf(framer.read_buf())).poll(cx);
            if polled.is_pending() {
                framer.release_buffer();
            }
            return polled;
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_RESERVE];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled();
                if !read.is_empty() {
                    framer.read_buf().extend_from_slice(read);
                }
                Poll::Ready(Ok(read.len()))
            }
            other => other.map(|r| r.map(|()| 0)),
        }
    })
    .await
}

/// A token bucket over bytes read: `rate` bytes per second, at most `burst` saved up. Reads are
/// debited after the fact, so the bucket may go into debt by one read; the next read waits
/// until the debt is paid ([`TokenBucket::ready_at`]). Over any span `t` a stream thus reads at
/// most `burst + rate × t` plus one read's worth. Sans-I/O: time is passed in.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    /// Most bytes saved up, so that a burst that size passes at once.
    burst: f64,
    /// Bytes that may be read now; negative is a debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: tokio::time::Instant,
    /// Where the time reads wait for this bucket is added up, in microseconds (the peer's
    /// metrics), if anywhere.
    waited: Option<Arc<AtomicU64>>,
}

impl TokenBucket {
    /// A full bucket at `now`. `rate` and `burst` are at least 1.
    pub fn new(rate: u64, burst: u64, now: tokio::time::Instant) -> TokenBucket {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate: rate.max(1) as f64,
            burst,
            tokens: burst,
            at: now,
            waited: None,
        }
    }

    /// Adds the time reads wait for this bucket to `micros` from now on.
    pub fn count_waits_in(&mut self, micros: Arc<AtomicU64>) {
        self.waited = Some(micros);
    }

    /// Records `n` bytes read at `now`: refills for the time since the last update, then
    /// takes `n`.
    #[inline]
    pub fn debit(&mut self, n: usize, now: tokio::time::Instant) {
        self.refill(now);
        self.tokens -= n as f64;
    }

    /// When the next read may start: `None` for at once, else when the debt is paid.
    #[inline]
    pub fn ready_at(&self) -> Option<tokio::time::Instant> {
        (self.tokens < 0.0).then(|| self.at + Duration::from_secs_f64(-self.tokens / self.rate))
    }

    /// Changes the rate and burst at `now`; the tokens saved so far stay, up to the new burst.
    pub fn set_rate(&mut self, rate: u64, burst: u64, now: tokio::time::Instant) {
        self.refill(now);
        self.rate = rate.max(1) as f64;
        self.burst = burst.max(1) as f64;
        self.tokens = self.tokens.min(self.burst);
    }

    /// Bytes that may be read at `now` (negative: the debt), without changing the bucket.
    pub fn available(&self, now: tokio::time::Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * self.rate).min(self.burst)
    }

    fn refill(&mut self, now: tokio::time::Instant) {
        self.tokens = self.available(now);
        self.at = self.at.max(now);
    }
}

/// The read half of an established stream.
pub struct Reader {
    io: ReadHalf<BoxTransport>,
    framer: Framer,
    /// The byte rate the stream was held to before it was split, if any.
    bucket: Option<TokenBucket>,
}

impl Reader {
    /// The next event; reads as needed. Cancel-safe: no event is lost if dropped while waiting.
    pub async fn next_event(&mut self) -> Result<Event, ReadError> {
        next_event(&mut self.io, &mut self.framer, &mut self.bucket).await
    }
}

/// The write half of an established stream: queue, then flush once per batch.
pub struct Writer {
    io: WriteHalf<BoxTransport>,
    out: Vec<u8>,
    /// How much of `out` a flush has written so far: a slow peer takes a batch in several
    /// writes, and the rest is not moved to the front after each.
    written: usize,
}

impl Writer {
    /// Queues bytes; nothing is written until [`Writer::flush`].
    pub fn send(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.out.len() - self.written
    }

    /// Writes what is queued. Cancel-safe: dropped before it completes, what was not written
    /// stays queued, so a later `flush`, `close` or `fail` goes on from there (the c2s writer
    /// stops waiting on a slow client when its session ends).
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            while self.written < self.out.len() {
                let n = self.io.write(&self.out[self.written..]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                self.written += n;
            }
            self.out.clear();
            self.written = 0;
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
        self.out.drain(..self.written);
        goodbye(&mut self.io, &mut self.out).await;
    }
}

/// How long a closed stream keeps reading for the peer's own close.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes read (and discarded) while lingering.
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Bytes read at a time while lingering, on the stack of the poll.
const LINGER_CHUNK: usize = 4096;

/// After our closing tag, reads and discards until the peer closes too (RFC 6120 §4.4), within
/// [`LINGER_TIMEOUT`] and [`LINGER_BYTES`]. Closing a socket with unread data makes the kernel
/// send a reset, which also throws away what we wrote last and the peer has not read yet — a
/// stream error's text, or a final XEP-0198 acknowledgement that spares the peer resending
/// what already arrived.
///
/// What is discarded goes through a buffer on the stack of each poll, neither allocated nor
/// kept in the task: closing ten thousand streams at once costs no memory.
async fn linger<R: AsyncRead + Unpin>(io: &mut R) {
    let mut total = 0;
    let drain = poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); LINGER_CHUNK];
        while total < LINGER_BYTES {
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => total += buf.filled().len(),
                Poll::Ready(_) => return Poll::Ready(()),
            }
        }
        Poll::Ready(())
    });
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
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

/// Refuses a connection before reading anything from it: our stream header, a stream error
/// and the close (RFC 6120 §4.9.1.1 allows the error right after our header), then the same
/// bounded goodbye as [`Connection::fail`]. Nothing is parsed and no TLS is set up, so a
/// refusal costs a write and the short linger.
pub async fn refuse<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    content_ns: &'static str,
    condition: &StreamErrorCondition,
    text: &str,
) {
    let mut out = Vec::with_capacity(512);
    end_with_error(&mut io, &mut out, Some(content_ns), condition, Some(text)).await;
}

/// After what `out` holds: a bare stream header of ours in `header`'s content namespace if
/// given (RFC 6120 §4.9.1.2: a stream error needs an open stream), the stream error, the
/// close; then the linger.
async fn end_with_error<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    out: &mut Vec<u8>,
    header: Option<&str>,
    condition: &StreamErrorCondition,
    text: Option<&str>,
) {
    if let Some(content_ns) = header {
        OpenStream {
            content_ns,
            version: true,
            ..Default::default()
        }
        .write(out);
    }
    out.extend_from_slice(&stream_error(condition, text));
    goodbye(io, out).await;
    linger(io).await;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;

    use super::{linger, Connection, TokenBucket, Writer};
    use crate::xml::framer::{Event, Limits};
    use crate::xml::stream::CLOSE_STREAM;

    const KIB: u64 = 1024;

    /// A writer whose peer reads nothing until told: its transport takes 1 KiB, then blocks.
    fn stalled_writer() -> (Writer, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let conn = Connection::new(
            Box::new(ours),
            "127.0.0.1:1".parse().unwrap(),
            Limits::default(),
            "jabber:server",
        );
        (conn.split().1, theirs)
    }

    const HEADER: &[u8] = b"<stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' to='b.test' from='a.test' version='1.0'>";

    /// The next event, or `None` when there is none within 20 ms (the read waits).
    async fn event_soon(conn: &mut Connection) -> Option<Event> {
        tokio::time::timeout(Duration::from_millis(20), conn.next_event())
            .await
            .ok()
            .map(|e| e.expect("no read error"))
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffers_and_loses_no_byte() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let mut conn = Connection::new(
            Box::new(ours),
            "127.0.0.1:1".parse().unwrap(),
            Limits::default(),
            "jabber:server",
        );
        assert!(!conn.framer.has_buffer() && conn.out.capacity() == 0);
        theirs
            .write_all(&[HEADER, b"<message><body>half"].concat())
            .await
            .unwrap();
        assert!(matches!(
            event_soon(&mut conn).await,
            Some(Event::StreamOpen(_))
        ));
        assert_eq!(event_soon(&mut conn).await, None);
        assert!(
            conn.framer.has_buffer(),
            "half a stanza waits in the buffer"
        );
        theirs.write_all(b" of it</body></message>").await.unwrap();
        let Some(Event::Stanza(s)) = event_soon(&mut conn).await else {
            panic!("the stanza");
        };
        assert_eq!(&s.raw()[..], b"<message><body>half of it</body></message>");
        assert_eq!(event_soon(&mut conn).await, None);
        assert!(!conn.framer.has_buffer(), "idle: no read buffer");
        conn.send(b"<iq type='result'/>");
        conn.flush().await.unwrap();
        assert_eq!(conn.out.capacity(), 0, "flushed: no write buffer");
        // The read that ends the wait goes through the stack: a batch larger than one read,
        // in one write, arrives whole and in order.
        let many: Vec<u8> = (0..2000)
            .flat_map(|i| format!("<iq id='{i}'/>").into_bytes())
            .collect();
        theirs.write_all(&many).await.unwrap();
        for i in 0..2000 {
            let Some(Event::Stanza(s)) = event_soon(&mut conn).await else {
                panic!("stanza {i}");
            };
            assert_eq!(s.id(), Some(i.to_string().as_str()));
        }
        let mut answer = vec![0u8; 64];
        let n = theirs.read(&mut answer).await.unwrap();
        assert_eq!(&answer[..n], b"<iq type='result'/>");
    }

    #[tokio::test]
    async fn linger_reads_until_the_peer_closes() {
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let peer = tokio::spawn(async move {
            // More than the pipe holds and more than one chunk, then the close.
            theirs.write_all(&vec![b' '; 100_000]).await.unwrap();
        });
        let start = std::time::Instant::now();
        linger(&mut ours).await;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "ended at the close"
        );
        peer.await.unwrap();
    }

    fn batch() -> Vec<u8> {
        (0..10_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_cancelled_flush_is_continued_by_the_next_flush_or_the_close() {
        for close_at_once in [false, true] {
            let (mut writer, mut theirs) = stalled_writer();
            writer.send(&batch());
            let stalled = tokio::time::timeout(Duration::from_millis(50), writer.flush()).await;
            assert!(stalled.is_err(), "the peer reads nothing yet");
            assert_eq!(writer.pending(), batch().len() - 1024);
            let reading = tokio::spawn(async move {
                let mut got = Vec::new();
                theirs.read_to_end(&mut got).await.unwrap();
                got
            });
            if !close_at_once {
                writer.flush().await.unwrap();
                assert_eq!(writer.pending(), 0);
            }
            writer.send(b"<x/>");
            writer.close().await;
            let got = reading.await.unwrap();
            assert!(
                got == [&batch()[..], b"<x/>", CLOSE_STREAM].concat(),
                "every byte once, in order (close_at_once: {close_at_once})"
            );
        }
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_charges_the_debt_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(256 * KIB, 64 * KIB, t0);
        assert_eq!(b.ready_at(), None, "full at the start");
        b.debit(64 * KIB as usize, t0);
        assert_eq!(b.ready_at(), None, "exactly empty: the next read may start");
        // 16 KiB more is a debt of 16 KiB: paid after 1/16 s at 256 KiB/s.
        b.debit(16 * KIB as usize, t0);
        assert_eq!(b.ready_at(), Some(t0 + Duration::from_micros(62_500)));
        // Half way there, still in debt, and the deadline does not move.
        let half = t0 + Duration::from_micros(31_250);
        assert!((b.available(half) + 8.0 * KIB as f64).abs() < 1e-6);
        b.debit(0, half);
        assert_eq!(b.ready_at(), Some(t0 + Duration::from_micros(62_500)));
    }

    #[test]
    fn savings_are_capped_at_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 5000, t0);
        b.debit(5000, t0);
        // An hour idle saves up 5000 bytes, not 3.6 MB.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.available(later), 5000.0);
        b.debit(6000, later);
        assert_eq!(b.ready_at(), Some(later + Duration::from_secs(1)));
    }

    #[test]
    fn a_sender_that_always_reads_when_allowed_gets_the_rate_plus_the_burst() {
        // Simulated time: read 16 KiB whenever the bucket allows, for 10 s.
        let rate = 256 * KIB;
        let burst = 64 * KIB;
        let t0 = Instant::now();
        let mut b = TokenBucket::new(rate, burst, t0);
        let mut now = t0;
        let mut read = 0u64;
        let end = t0 + Duration::from_secs(10);
        while now < end {
            // As the reader does: wait until the debt is paid, then read and debit.
            if let Some(at) = b.ready_at() {
                now = now.max(at);
            }
            b.debit(16 * 1024, now);
            read += 16 * 1024;
        }
        let allowed = burst + rate * 10 + 16 * KIB;
        assert!(read <= allowed, "{read} > {allowed}");
        assert!(read >= rate * 10, "{read} < {}", rate * 10);
    }

    #[test]
    fn a_new_rate_applies_from_the_change_and_keeps_the_savings() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 10_000, t0);
        b.debit(10_000, t0);
        let t1 = t0 + Duration::from_secs(2);
        // 2000 saved at the old rate; the new rate refills 10 times faster from t1 on.
        b.set_rate(10_000, 20_000, t1);
        assert_eq!(b.available(t1), 2000.0);
        b.debit(12_000, t1);
        assert_eq!(b.ready_at(), Some(t1 + Duration::from_secs(1)));
        // A smaller burst caps what was saved.
        let t2 = t1 + Duration::from_secs(60);
        b.set_rate(10_000, 500, t2);
        assert_eq!(b.available(t2), 500.0);
    }
}
