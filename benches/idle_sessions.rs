//! Memory per idle authenticated inbound s2s session, and whether it comes back.
//!
//! The gateway under test (b.test on 127.88.3.1:5269) is the real `fedgate` binary, started as
//! a child process with its own allocator, so that its RSS (`VmRSS` in `/proc/PID/status`)
//! counts nothing but the gateway. The bench plays the peer a.test: it opens `N` inbound
//! streams and authenticates each by Server Dialback (XEP-0220), which b.test verifies by
//! connecting back to a.test's authoritative server. That server is a second fedgate gateway
//! in this process (127.88.3.2:5269) holding the dialback secret the bench signs its keys with,
//! so every key is checked the way a real peer's is.
//!
//! For each transport (STARTTLS with TLS 1.3, then plaintext) and each `N` (5,000 and 10,000)
//! a fresh b.test is started and the bench prints its RSS:
//! 1. at rest, before any session;
//! 2. with `N` idle authenticated sessions open (header, features, STARTTLS, TLS, header,
//!    features, `<db:result/>` answered `valid`), as bytes per session over the rest figure;
//! 3. after the bench closed them all (`</stream:stream>`, answered, TCP closed);
//! 4. with `N` sessions opened again, and again per session over the rest figure.
//!
//! `IDLE_N` (a comma-separated list, default `5000,10000`), `IDLE_TRANSPORT=tls|plain|both`
//! (default both), `IDLE_CONCURRENCY` (sessions being opened at once, default 32).
//! `IDLE_GATEWAY_ENV` adds variables to b.test's environment only, space-separated
//! `KEY=VALUE`: jemalloc's options (`_RJEM_MALLOC_CONF=...`), or, with b.test built on the
//! system allocator (`cargo bench --no-default-features --bench idle_sessions`), another
//! allocator without a rebuild
//! (`IDLE_GATEWAY_ENV='LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2'`) or glibc's
//! tunables (`IDLE_GATEWAY_ENV='MALLOC_ARENA_MAX=2'`).
//!
//! Each session costs b.test one file descriptor and the bench one (plus a connect-back being
//! answered per session being opened), so the bench raises its `RLIMIT_NOFILE` soft limit to the hard
//! limit (and the hard limit too when it may, as root), and b.test inherits it. When the limit
//! stays too low it says so and what to run (`ulimit -n`), before opening anything.
//!
//! Run: `cargo bench --bench idle_sessions`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedgate::config::Config;
use fedgate::dialback::DialbackSecret;
use fedgate::gateway::{self, RunningGateway};

use support::{close_idle, mb, open_idle, raise_fd_limit, ChildGateway, IdlePeer};

/// b.test, the gateway under test.
const GATEWAY_IP: &str = "127.88.3.1";
/// a.test's authoritative server (the bench's in-process gateway).
const AUTHORITATIVE_IP: &str = "127.88.3.2";
/// a.test's dialback secret: the bench signs its `<db:result/>` keys with it.
const SECRET: &str = "idle-sessions-bench-dialback-secret";
/// After the last close, how long b.test gets to finish its side before RSS is read.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Tls,
    Plain,
}

fn main() {
    let ns_list = std::env::var("IDLE_N").unwrap_or_else(|_| "5000,10000".into());
    let counts: Vec<usize> = ns_list
        .split(',')
        .map(|v| {
            v.trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("IDLE_N={ns_list}: {v} is not a number"))
        })
        .collect();
    let concurrency: usize = std::env::var("IDLE_CONCURRENCY")
        .ok()
        .map(|v| v.parse().expect("IDLE_CONCURRENCY is a number"))
        .unwrap_or(32);
    let transports = match std::env::var("IDLE_TRANSPORT").as_deref() {
        Ok("tls") => vec![Transport::Tls],
        Ok("plain") => vec![Transport::Plain],
        Ok("both") | Err(_) => vec![Transport::Tls, Transport::Plain],
        Ok(other) => panic!("IDLE_TRANSPORT={other}: use tls, plain or both"),
    };
    // The task of each inbound connection holds its whole future for the connection's life.
    println!(
        "idle sessions: an inbound connection's task future is {} bytes (STARTTLS port), {} (direct TLS port)",
        future_size(fedgate::s2s::inbound::handle),
        future_size(fedgate::s2s::inbound::handle_direct_tls),
    );
    let max_n = counts.iter().copied().max().unwrap_or(0);
    if let Err(message) = raise_fd_limit(max_n as u64 + 1024, "IDLE_N") {
        eprintln!("idle_sessions: {message}");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for transport in transports {
        for &n in &counts {
            runtime.block_on(run(transport, n, concurrency));
        }
    }
}

/// The size of the future `f` returns, without calling it.
fn future_size<A, B, C, D, F: std::future::Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
    std::mem::size_of::<F>()
}

fn security(domain: &str, transport: Transport) -> String {
    match transport {
        Transport::Tls => support::self_signed(domain),
        Transport::Plain => String::new(),
    }
}

/// b.test's configuration: room for every session, a static route to a.test's authoritative
/// server, timers long enough that nothing but the bench ends a session.
fn gateway_config(dir: &Path, transport: Transport) -> std::path::PathBuf {
    let text = format!(
        r#"
[s2s]
listen = ["{GATEWAY_IP}:5269"]
direct_tls_listen = []
require_encryption = {require}
dialback_secret_file = "dialback.secret"
negotiation_timeout = "60s"
idle_timeout = "1h"
keepalive_interval = "1h"
max_connections = 100000
max_connections_per_ip = 100000
max_streams_per_domain = 100000
max_pending_verifications_total = 4096

[[s2s.route]]
domain = "a.test"
target = "{AUTHORITATIVE_IP}:5269"

[dns]
nameservers = ["127.0.0.1:9"]

[component]
listen = "127.0.0.1:0"

[[component.backend]]
domain = "b.test"
secret = "secret"

[metrics]
enabled = false

[log]
level = "info"

{security}
"#,
        require = transport == Transport::Tls,
        security = security("b.test", transport),
    );
    let file = dir.join("fedgate.toml");
    std::fs::write(&file, text).expect("write b.test's config");
    file
}

/// a.test's authoritative server: answers b.test's `<db:verify/>` with the bench's secret.
async fn start_authoritative(dir: &Path, transport: Transport) -> RunningGateway {
    std::fs::write(dir.join("dialback.secret"), SECRET).expect("write the dialback secret");
    let text = format!(
        r#"
[s2s]
listen = ["{AUTHORITATIVE_IP}:5269"]
direct_tls_listen = []
require_encryption = {require}
dialback_secret_file = "dialback.secret"
max_connections = 100000
max_connections_per_ip = 100000

[dns]
nameservers = ["127.0.0.1:9"]

[component]
listen = "127.0.0.1:0"

[[component.backend]]
domain = "a.test"
secret = "secret"

[metrics]
enabled = false

{security}
"#,
        require = transport == Transport::Tls,
        security = security("a.test", transport),
    );
    let config = Config::from_toml(&text, dir).expect("a.test's config is valid");
    gateway::start(&config)
        .await
        .expect("a.test's authoritative server starts")
}

fn per_session(rss: u64, rest: u64, n: usize) -> f64 {
    (rss as f64 - rest as f64) / n as f64 / 1e3
}

async fn run(transport: Transport, n: usize, concurrency: usize) {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let authoritative = start_authoritative(dir_a.path(), transport).await;
    let gateway = ChildGateway::start(
        "b.test",
        &gateway_config(dir_b.path(), transport),
        "IDLE_GATEWAY_ENV",
    );
    let tls = match transport {
        Transport::Tls => Some(support::client_tls(dir_a.path(), "a.test")),
        Transport::Plain => None,
    };
    let addr: SocketAddr = format!("{GATEWAY_IP}:5269").parse().expect("address");
    let peer = IdlePeer {
        from: "a.test",
        to: "b.test",
        secret: Arc::new(DialbackSecret::from_bytes(SECRET.as_bytes())),
        tls,
    };

    // One session first, so that what every process pays once (TLS contexts, the first
    // connect-back, the runtime's threads) is in the figure at rest.
    let warm = open_idle(&peer, addr, 1, 1).await;
    close_idle(warm).await;
    tokio::time::sleep(SETTLE).await;
    let rest = gateway.rss();
    println!(
        "idle sessions over {transport:?}, N = {n}: b.test (pid {}) at rest: RSS {:.1} MB",
        gateway.child.id(),
        mb(rest)
    );

    let start = Instant::now();
    let sessions = open_idle(&peer, addr, n, concurrency).await;
    let opened_in = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open_rss = gateway.rss();
    println!(
        "idle sessions over {transport:?}: {n} open (in {:.1} s): RSS {:.1} MB, {:.1} KB per session",
        opened_in.as_secs_f64(),
        mb(open_rss),
        per_session(open_rss, rest, n)
    );

    close_idle(sessions).await;
    tokio::time::sleep(SETTLE).await;
    let closed_rss = gateway.rss();
    println!(
        "idle sessions over {transport:?}: all closed: RSS {:.1} MB ({:+.1} MB over rest)",
        mb(closed_rss),
        mb(closed_rss) - mb(rest)
    );

    let sessions = open_idle(&peer, addr, n, concurrency).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reopen_rss = gateway.rss();
    println!(
        "idle sessions over {transport:?}: {n} open again: RSS {:.1} MB, {:.1} KB per session ({:+.1}% against the first opening)",
        mb(reopen_rss),
        per_session(reopen_rss, rest, n),
        (reopen_rss as f64 / open_rss as f64 - 1.0) * 100.0
    );
    close_idle(sessions).await;
    drop(gateway);
    authoritative.shutdown(Duration::from_secs(2)).await;
}
