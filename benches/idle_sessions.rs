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

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use fedgate::config::Config;
use fedgate::connection::Connection;
use fedgate::dialback::DialbackSecret;
use fedgate::gateway::{self, RunningGateway};
use fedgate::tls::Tls;
use fedgate::xml::framer::{Event, Limits};
use fedgate::xml::ns;
use fedgate::xml::stream::OpenStream;

const BIN: &str = env!("CARGO_BIN_EXE_fedgate");
/// b.test, the gateway under test.
const GATEWAY_IP: &str = "127.88.3.1";
/// a.test's authoritative server (the bench's in-process gateway).
const AUTHORITATIVE_IP: &str = "127.88.3.2";
/// a.test's dialback secret: the bench signs its `<db:result/>` keys with it.
const SECRET: &str = "idle-sessions-bench-dialback-secret";
/// How long any single step may stall before the run fails.
const STALL: Duration = Duration::from_secs(30);
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
    if let Err(message) = raise_fd_limit(max_n as u64 + 1024) {
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

/// Raises `RLIMIT_NOFILE` to at least `needed`, or says why it cannot and what to do.
fn raise_fd_limit(needed: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; nothing else is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "cannot read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        ));
    }
    if lim.rlim_cur >= needed {
        return Ok(());
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, the soft limit goes as far
    // as the hard one allows.
    let wanted = libc::rlimit {
        rlim_cur: needed,
        rlim_max: lim.rlim_max.max(needed),
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        return Ok(());
    }
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0;
    let now = if raised { lim.rlim_max } else { lim.rlim_cur };
    if now >= needed {
        return Ok(());
    }
    Err(format!(
        "{needed} file descriptors are needed (one per session, plus headroom) and \
         the limit is {now} (hard limit {}). Raise it before running, e.g. \
         `ulimit -n {needed}` as root or after raising the hard limit in \
         /etc/security/limits.conf, or run with a smaller IDLE_N (at most {}).",
        lim.rlim_max,
        now.saturating_sub(1024)
    ))
}

fn security(domain: &str, transport: Transport) -> String {
    match transport {
        Transport::Tls => format!(
            "[[tls.certificate]]\ndomains = [\"{domain}\"]\ncert = \"tls.crt\"\nkey = \"tls.key\"\nself_signed = true\n"
        ),
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

/// The gateway under test as a child process; killed on drop.
struct Gateway {
    child: Child,
}

impl Gateway {
    fn start(config: &Path) -> Gateway {
        let mut command = Command::new(BIN);
        if let Ok(vars) = std::env::var("IDLE_GATEWAY_ENV") {
            for var in vars.split_whitespace() {
                let (key, value) = var
                    .split_once('=')
                    .unwrap_or_else(|| panic!("IDLE_GATEWAY_ENV: {var} is not KEY=VALUE"));
                command.env(key, value);
            }
        }
        let mut child = command
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {BIN}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Reads the log to the end, so the gateway never blocks writing it; shows warnings.
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("fedgate ready") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                } else if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("b.test: {line}");
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("b.test logs `fedgate ready` within 20 s");
        Gateway { child }
    }

    /// `VmRSS` in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status of b.test");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn per_session(rss: u64, rest: u64, n: usize) -> f64 {
    (rss as f64 - rest as f64) / n as f64 / 1e3
}

async fn run(transport: Transport, n: usize, concurrency: usize) {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let authoritative = start_authoritative(dir_a.path(), transport).await;
    let gateway = Gateway::start(&gateway_config(dir_b.path(), transport));
    let client = match transport {
        Transport::Tls => Some(Arc::new(
            Tls::from_config(&client_config(dir_a.path())).expect("a.test's client TLS"),
        )),
        Transport::Plain => None,
    };
    let addr: SocketAddr = format!("{GATEWAY_IP}:5269").parse().expect("address");
    let secret = Arc::new(DialbackSecret::from_bytes(SECRET.as_bytes()));

    // One session first, so that what every process pays once (TLS contexts, the first
    // connect-back, the runtime's threads) is in the figure at rest.
    let warm = open(client.clone(), secret.clone(), addr, 1, 1).await;
    close(warm).await;
    tokio::time::sleep(SETTLE).await;
    let rest = gateway.rss();
    println!(
        "idle sessions over {transport:?}, N = {n}: b.test (pid {}) at rest: RSS {:.1} MB",
        gateway.child.id(),
        mb(rest)
    );

    let start = Instant::now();
    let sessions = open(client.clone(), secret.clone(), addr, n, concurrency).await;
    let opened_in = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open_rss = gateway.rss();
    println!(
        "idle sessions over {transport:?}: {n} open (in {:.1} s): RSS {:.1} MB, {:.1} KB per session",
        opened_in.as_secs_f64(),
        mb(open_rss),
        per_session(open_rss, rest, n)
    );

    close(sessions).await;
    tokio::time::sleep(SETTLE).await;
    let closed_rss = gateway.rss();
    println!(
        "idle sessions over {transport:?}: all closed: RSS {:.1} MB ({:+.1} MB over rest)",
        mb(closed_rss),
        mb(closed_rss) - mb(rest)
    );

    let sessions = open(client.clone(), secret.clone(), addr, n, concurrency).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reopen_rss = gateway.rss();
    println!(
        "idle sessions over {transport:?}: {n} open again: RSS {:.1} MB, {:.1} KB per session ({:+.1}% against the first opening)",
        mb(reopen_rss),
        per_session(reopen_rss, rest, n),
        (reopen_rss as f64 / open_rss as f64 - 1.0) * 100.0
    );
    close(sessions).await;
    drop(gateway);
    authoritative.shutdown(Duration::from_secs(2)).await;
}

/// a.test's TLS side as a client: its certificate, as an outbound session uses it.
fn client_config(dir: &Path) -> Config {
    let text = format!(
        "[s2s]\nlisten = [\"127.0.0.1:0\"]\ndirect_tls_listen = []\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
         [component]\nlisten = \"127.0.0.1:0\"\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"secret\"\n\
         [metrics]\nenabled = false\n{}",
        security("a.test", Transport::Tls)
    );
    Config::from_toml(&text, dir).expect("client config is valid")
}

/// Opens `n` authenticated sessions, `concurrency` at a time.
async fn open(
    client: Option<Arc<Tls>>,
    secret: Arc<DialbackSecret>,
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
) -> Vec<Connection> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let count = n / concurrency + usize::from(t < n % concurrency);
        let client = client.clone();
        let secret = secret.clone();
        tasks.spawn(async move {
            let mut open = Vec::with_capacity(count);
            for _ in 0..count {
                let conn = tokio::time::timeout(STALL, session(client.as_deref(), &secret, addr))
                    .await
                    .expect("a session stalled");
                open.push(conn);
            }
            open
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("client task"));
    }
    all
}

/// Closes every session and waits until b.test answered each close.
async fn close(sessions: Vec<Connection>) {
    let mut tasks = tokio::task::JoinSet::new();
    for conn in sessions {
        tasks.spawn(conn.close());
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("close task");
    }
}

/// One session of a.test to b.test, authenticated by dialback, then left idle.
async fn session(client: Option<&Tls>, secret: &DialbackSecret, addr: SocketAddr) -> Connection {
    let tcp = TcpStream::connect(addr).await.expect("connect to b.test");
    tcp.set_nodelay(true).expect("nodelay");
    let limits = Limits {
        max_stanza_bytes: 65536,
        max_depth: 16,
        max_attributes: 16,
    };
    let mut conn = Connection::new(Box::new(tcp), addr, limits, ns::SERVER);
    let mut id = header_and_features(&mut conn).await;
    if let Some(client) = client {
        conn.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        conn.flush().await.expect("write");
        match conn.next_event().await.expect("proceed") {
            Event::Stanza(s) if s.name() == "proceed" => {}
            other => panic!("expected <proceed/>: {other:?}"),
        }
        let (io, _) = client
            .connect(conn.take_transport(), "a.test", "b.test", false)
            .await
            .expect("STARTTLS handshake");
        conn.restart_on(io);
        id = header_and_features(&mut conn).await;
    }
    let key = secret.key("b.test", "a.test", &id);
    conn.send(format!("<db:result from='a.test' to='b.test'>{key}</db:result>").as_bytes());
    conn.flush().await.expect("write");
    match conn.next_event().await.expect("dialback result") {
        Event::Stanza(s) if s.name() == "result" && s.type_() == Some("valid") => {}
        Event::Stanza(s) => panic!(
            "expected <db:result type='valid'/>: {}",
            String::from_utf8_lossy(s.raw())
        ),
        other => panic!("expected <db:result type='valid'/>: {other:?}"),
    }
    conn
}

/// Our header, then b.test's header and features; returns b.test's stream id.
async fn header_and_features(conn: &mut Connection) -> String {
    conn.open(&OpenStream {
        content_ns: ns::SERVER,
        from: Some("a.test"),
        to: Some("b.test"),
        id: None,
        version: true,
        dialback: true,
        drain: false,
    });
    conn.flush().await.expect("write");
    let id = match conn.next_event().await.expect("header") {
        Event::StreamOpen(h) => h.id.expect("b.test's stream id"),
        other => panic!("expected a stream header: {other:?}"),
    };
    match conn.next_event().await.expect("features") {
        Event::Stanza(s) if s.name() == "features" => {}
        other => panic!("expected features: {other:?}"),
    }
    id
}
