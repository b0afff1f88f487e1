//! A TCP forwarder between two servers, so that tests can break the link between them the ways
//! networks do: cut it, cut it in the middle of a stanza, or let it go silent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct State {
    /// Forwarding stops (bytes are read and held back), as on a dead path.
    paused: AtomicBool,
    /// Bytes still allowed towards the target before the connection is cut; negative = no limit.
    budget: AtomicI64,
    connections: AtomicUsize,
    /// Everything forwarded towards the target, in order.
    forwarded: Mutex<Vec<u8>>,
    /// Cancelled to cut every live connection; replaced after each cut.
    cut: Mutex<CancellationToken>,
}

pub struct TestProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl TestProxy {
    /// Listens on a loopback port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        state.budget.store(-1, Ordering::SeqCst);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let cut = shared.cut.lock().unwrap().clone();
                tokio::spawn(forward(client, server, shared.clone(), cut));
            }
        });
        TestProxy { addr, state, task }
    }

    /// Closes every live connection at once.
    pub fn cut(&self) {
        let mut cut = self.state.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Forwards `bytes` more bytes towards the target, then cuts: the target sees the stream
    /// end wherever that falls, e.g. in the middle of a stanza.
    pub fn cut_after(&self, bytes: i64) {
        self.state.budget.store(bytes, Ordering::SeqCst);
    }

    /// Stops forwarding in both directions without closing anything.
    pub fn pause(&self, paused: bool) {
        self.state.paused.store(paused, Ordering::SeqCst);
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Everything forwarded towards the target so far.
    pub fn forwarded(&self) -> Vec<u8> {
        self.state.forwarded.lock().unwrap().clone()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.cut.lock().unwrap().cancel();
    }
}

async fn forward(client: TcpStream, server: TcpStream, state: Arc<State>, cut: CancellationToken) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    // Cancelled by a truncating cut.
    let cut_now = CancellationToken::new();
    let towards_target = {
        let state = state.clone();
        let cut_now = cut_now.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match client_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        // A half close passes through, so the other way keeps flowing.
                        let _ = server_wr.shutdown().await;
                        return;
                    }
                    Ok(n) => n,
                };
                while state.paused.load(Ordering::SeqCst) {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                let budget = state.budget.load(Ordering::SeqCst);
                let allowed = if budget < 0 {
                    n
                } else {
                    n.min(budget as usize)
                };
                if budget >= 0 {
                    state
                        .budget
                        .store(budget - allowed as i64, Ordering::SeqCst);
                }
                state
                    .forwarded
                    .lock()
                    .unwrap()
                    .extend_from_slice(&buf[..allowed]);
                if server_wr.write_all(&buf[..allowed]).await.is_err() {
                    return;
                }
                if allowed < n || state.budget.load(Ordering::SeqCst) == 0 {
                    state.budget.store(-1, Ordering::SeqCst);
                    // A cut, not a close: both sockets go at once.
                    return cut_now.cancel();
                }
            }
        }
    };
    let towards_client = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = client_wr.shutdown().await;
                    return;
                }
                Ok(n) => n,
            };
            while state.paused.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            if client_wr.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Both ways run until each has closed, unless the link is cut: then both sockets drop at
    // once and both peers see the link go.
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = cut_now.cancelled() => {}
        _ = async { tokio::join!(towards_target, towards_client) } => {}
    }
}
