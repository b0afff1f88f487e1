//! The accept loop shared by every listener: a permit per connection, back-off on accept
//! errors, one task per connection, and an end on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accepts connections until `shutdown`, handing each to `handler` in its own task. At most
/// `limit` connections are open at once: past that, accepting pauses and new connections wait
/// in the kernel's backlog, which pushes back on floods without costing memory here.
///
/// The permit is taken after `accept`, not before: several listeners share one limit (the
/// STARTTLS and direct TLS ports), and a permit held by a listener waiting for its next
/// connection would be one connection fewer for the others. So a listener whose limit is
/// reached holds at most the one accepted connection it waits with.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: wait instead of spinning; the error clears as
                // connections close.
                tracing::warn!(listener = name, error = %e, "accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let _ = tcp.set_nodelay(true);
        tracing::debug!(listener = name, %peer, "accepted");
        tracker.spawn(handler(tcp, peer, permit));
    }
}
