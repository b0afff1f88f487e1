//! Opening a TCP connection to one host whose addresses are known: happy eyeballs
//! (RFC 8305 §5).
//!
//! 1. The first address is tried.
//! 2. If it has not connected after [`CONNECTION_ATTEMPT_DELAY`], or as soon as it fails, the
//!    next address is tried alongside it, and so on down the list; earlier attempts keep
//!    running.
//! 3. The first connection to complete wins; the other attempts are dropped, which closes
//!    their sockets.
//! 4. Each attempt gives up after `attempt_timeout` on its own clock.
//!
//! So a black-holed address (typically a broken IPv6 route, tried first because
//! [`crate::dns::Resolver::addresses`] puts IPv6 first) costs 250 ms instead of a whole
//! connect timeout. The attempts are futures polled by the caller's task, not spawned tasks,
//! so cancelling the dial cancels them all.

use std::fmt;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an attempt has before the next address is tried too: RFC 8305 §5's recommended
/// "Connection Attempt Delay". Shorter opens more needless sockets on slow links; longer
/// makes a dead first address cost more.
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Every address of a host failed.
#[derive(Debug, Clone)]
pub struct DialError {
    /// Each address tried, with why it failed, in the order tried.
    pub failures: Vec<(SocketAddr, String)>,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.is_empty() {
            return f.write_str("no address to connect to");
        }
        for (i, (addr, why)) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{addr}: {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DialError {}

/// One running connection attempt: its index in the address list and its future.
type Attempt = (
    usize,
    Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send>>,
);

/// Connects to the first of `addrs` that answers, racing them as RFC 8305 §5 describes (see
/// the [module docs](self)); each attempt is bounded by `attempt_timeout`.
pub async fn happy_eyeballs(
    addrs: &[SocketAddr],
    attempt_timeout: Duration,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let attempt_delay = CONNECTION_ATTEMPT_DELAY;
    let mut running: Vec<Attempt> = Vec::with_capacity(addrs.len().min(4));
    // (index, address, why), sorted by index at the end: attempts fail out of order.
    let mut failures: Vec<(usize, SocketAddr, String)> = Vec::new();
    let mut next = 0;
    let start = |i: usize| -> Attempt {
        let addr = addrs[i];
        let attempt = async move {
            match tokio::time::timeout(attempt_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => Ok(tcp),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("timed out after {attempt_timeout:?}")),
            }
        };
        (i, Box::pin(attempt))
    };
    let delay = tokio::time::sleep(attempt_delay);
    tokio::pin!(delay);
    if !addrs.is_empty() {
        running.push(start(0));
        next = 1;
    }
    while !running.is_empty() {
        tokio::select! {
            (i, result) = first_done(&mut running) => match result {
                Ok(tcp) => return Ok((tcp, addrs[i])),
                Err(why) => {
                    failures.push((i, addrs[i], why));
                    // A failure starts the next attempt at once (RFC 8305 §5).
                    if next < addrs.len() {
                        running.push(start(next));
                        next += 1;
                        delay.as_mut().reset(Instant::now() + attempt_delay);
                    }
                }
            },
            () = &mut delay, if next < addrs.len() => {
                running.push(start(next));
                next += 1;
                delay.as_mut().reset(Instant::now() + attempt_delay);
            }
        }
    }
    failures.sort_by_key(|(i, _, _)| *i);
    Err(DialError {
        failures: failures
            .into_iter()
            .map(|(_, addr, why)| (addr, why))
            .collect(),
    })
}

/// Resolves when one of `running` completes, removing it. Pending while `running` is empty.
async fn first_done(running: &mut Vec<Attempt>) -> (usize, Result<TcpStream, String>) {
    poll_fn(|cx| {
        for k in 0..running.len() {
            if let Poll::Ready(result) = running[k].1.as_mut().poll(cx) {
                let (i, _) = running.swap_remove(k);
                return Poll::Ready((i, result));
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpSocket};

    /// A loopback address where nothing listens: connecting is refused at once.
    async fn refusing() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
        // Dropped here: the port is closed.
    }

    /// A listener whose accept queue is full, so that the kernel drops further SYNs and a
    /// connect hangs as on a black-holed route. `None` where the kernel does not behave so.
    async fn black_hole() -> Option<(TcpListener, Vec<TcpStream>, SocketAddr)> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => queued.push(tcp),
                Ok(Err(_)) => return None,
                Err(_) => return Some((listener, queued, addr)),
            }
        }
        None
    }

    #[tokio::test]
    async fn no_address_is_an_error_without_failures() {
        let e = happy_eyeballs(&[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.failures.is_empty());
        assert_eq!(e.to_string(), "no address to connect to");
    }

    #[tokio::test]
    async fn the_first_address_that_listens_wins() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        let (_tcp, addr) = happy_eyeballs(&[good], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(addr, good);
    }

    #[tokio::test]
    async fn a_refused_address_falls_through_to_the_next() {
        let bad = refusing().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        let (tcp, addr) = happy_eyeballs(&[bad, good], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(addr, good);
        assert_eq!(tcp.peer_addr().unwrap(), good);
    }

    #[tokio::test]
    async fn when_all_fail_every_failure_is_reported_in_order() {
        let addrs = [refusing().await, refusing().await, refusing().await];
        let e = happy_eyeballs(&addrs, Duration::from_secs(10))
            .await
            .unwrap_err();
        let tried: Vec<SocketAddr> = e.failures.iter().map(|(a, _)| *a).collect();
        assert_eq!(tried, addrs);
        assert!(
            e.failures.iter().all(|(_, why)| why.contains("refused")),
            "{e}"
        );
        assert_eq!(e.to_string().matches("; ").count(), 2, "{e}");
    }

    #[tokio::test]
    async fn a_black_hole_does_not_hold_up_the_next_address() {
        let Some((_hole, _queued, hole)) = black_hole().await else {
            // Linux drops SYNs past a full accept queue (unless tcp_abort_on_overflow is set):
            // there, no black hole means the test proves nothing, which is a failure.
            assert!(
                !cfg!(target_os = "linux"),
                "no black hole: the full backlog did not hold a connect"
            );
            eprintln!("skipped: the kernel accepts beyond a full backlog here");
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // Tried one after the other, the black hole would take the whole minute.
        let dialled = tokio::time::timeout(
            Duration::from_secs(20),
            happy_eyeballs(&[hole, good], Duration::from_secs(60)),
        )
        .await
        .expect("the second address is tried while the first hangs");
        assert_eq!(dialled.unwrap().1, good);
    }

    #[tokio::test]
    async fn each_attempt_is_bounded_by_the_attempt_timeout() {
        let Some((_hole, _queued, hole)) = black_hole().await else {
            // Linux drops SYNs past a full accept queue (unless tcp_abort_on_overflow is set):
            // there, no black hole means the test proves nothing, which is a failure.
            assert!(
                !cfg!(target_os = "linux"),
                "no black hole: the full backlog did not hold a connect"
            );
            eprintln!("skipped: the kernel accepts beyond a full backlog here");
            return;
        };
        let bad = refusing().await;
        let e = happy_eyeballs(&[hole, bad], Duration::from_millis(500))
            .await
            .unwrap_err();
        assert_eq!(e.failures.len(), 2, "{e}");
        assert_eq!(e.failures[0].0, hole, "failures in the order tried: {e}");
        assert!(e.failures[0].1.contains("timed out"), "{e}");
        assert!(e.failures[1].1.contains("refused"), "{e}");
    }
}
