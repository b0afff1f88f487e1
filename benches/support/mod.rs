//! What the benches share: a gateway run as a child process (so that its RSS and CPU time
//! are its own), a raw XEP-0114 backend, idle s2s sessions authenticated by dialback, and the
//! CPU time of this process and of its threads by name ([`cpu`]). Each bench uses a part of
//! it (`mod support;`).
#![allow(dead_code)]

pub mod cpu;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use fedgate::config::Config;
use fedgate::connection::Connection;
use fedgate::dialback::{component_handshake, DialbackSecret};
use fedgate::tls::Tls;
use fedgate::xml::framer::{Event, Framer, Limits};
use fedgate::xml::ns;
use fedgate::xml::stanza::Stanza;
use fedgate::xml::stream::OpenStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_fedgate");

/// How long any single step may stall before the run fails.
pub const STALL: Duration = Duration::from_secs(30);

/// The `[[tls.certificate]]` of `domain`: self-signed, made at start in the config's folder.
pub fn self_signed(domain: &str) -> String {
    format!(
        "[[tls.certificate]]\ndomains = [\"{domain}\"]\ncert = \"tls.crt\"\nkey = \"tls.key\"\nself_signed = true\n"
    )
}

/// `domain`'s TLS side as a client, with the certificate from [`self_signed`] in `dir`, as its
/// outbound sessions use it.
pub fn client_tls(dir: &Path, domain: &str) -> Arc<Tls> {
    let text = format!(
        "[s2s]\nlisten = [\"127.0.0.1:0\"]\ndirect_tls_listen = []\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
         [component]\nlisten = \"127.0.0.1:0\"\n[[component.backend]]\ndomain = \"{domain}\"\nsecret = \"secret\"\n\
         [metrics]\nenabled = false\n{}",
        self_signed(domain)
    );
    let config = Config::from_toml(&text, dir).expect("client config is valid");
    Arc::new(Tls::from_config(&config).unwrap_or_else(|e| panic!("{domain}'s client TLS: {e}")))
}

/// A `fedgate run` child process; killed on drop.
pub struct ChildGateway {
    pub child: Child,
    name: String,
}

impl ChildGateway {
    /// Starts `fedgate run --config CONFIG` and waits for its `fedgate ready` log line. `env`
    /// names a variable whose space-separated `KEY=VALUE` pairs go into the child's
    /// environment only (allocator options, `LD_PRELOAD`). Warnings and errors it logs are
    /// shown, prefixed with `name`.
    pub fn start(name: &str, config: &Path, env: &str) -> ChildGateway {
        // `FEDGATE_BIN`: another build, to compare a change with the code before it.
        let bin = std::env::var("FEDGATE_BIN").unwrap_or_else(|_| BIN.to_string());
        let mut command = Command::new(&bin);
        if let Ok(vars) = std::env::var(env) {
            for var in vars.split_whitespace() {
                let (key, value) = var
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{env}: {var} is not KEY=VALUE"));
                command.env(key, value);
            }
        }
        let mut child = command
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let prefix = name.to_string();
        // The last lines it logged, to say why when it never becomes ready.
        let last = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let kept = last.clone();
        // Reads the log to the end, so the gateway never blocks writing it.
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("fedgate ready") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                } else if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("{prefix}: {line}");
                }
                if ready.is_some() {
                    let mut kept = kept.lock().unwrap();
                    kept.push(line);
                    let excess = kept.len().saturating_sub(5);
                    kept.drain(..excess);
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = child.kill();
            panic!(
                "{name} did not log `fedgate ready` within 20 s; its last lines:\n{}",
                last.lock().unwrap().join("\n")
            );
        }
        ChildGateway {
            child,
            name: name.to_string(),
        }
    }

    /// `VmRSS` in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_else(|e| panic!("read /proc/PID/status of {}: {e}", self.name));
        status_bytes(&status, "VmRSS").expect("VmRSS in /proc/PID/status")
    }

    /// The CPU time (user + system) the process has used so far.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .unwrap_or_else(|e| panic!("read /proc/PID/stat of {}: {e}", self.name));
        stat_cpu(&stat).expect("utime and stime in /proc/PID/stat")
    }

    /// SIGTERM, as systemd stops it, and waits for the process to end.
    pub fn terminate(mut self) {
        // SAFETY: kill sends a signal to our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// CPU time this process has used so far, user + system.
pub fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A `kB` line of `/proc/self/status` in bytes: `VmRSS` (resident now) or `VmHWM` (the peak
/// resident set since the process started).
pub fn own_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status_bytes(&status, field).unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// The `kB` line `field` of a `/proc/PID/status` text, in bytes.
fn status_bytes(status: &str, field: &str) -> Option<u64> {
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kb * 1024)
}

/// User + system CPU time from a `/proc/PID/stat` or `/proc/PID/task/TID/stat` line.
pub fn stat_cpu(stat: &str) -> Option<Duration> {
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 14th and 15th fields of the line, in clock ticks.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// The receiving half of a raw XEP-0114 backend.
pub struct BackendReader {
    pub rd: OwnedReadHalf,
    pub framer: Framer,
}

impl BackendReader {
    /// Reads more bytes into the framer; panics on EOF or a stall.
    pub async fn fill(&mut self) {
        let more = tokio::time::timeout(STALL, self.try_fill())
            .await
            .unwrap_or_else(|_| panic!("nothing received for {STALL:?}"));
        assert!(more, "the gateway closed the backend connection");
    }

    /// Reads more bytes into the framer, waiting as long as it takes; `false` when the
    /// gateway closed the connection.
    pub async fn try_fill(&mut self) -> bool {
        matches!(self.rd.read_buf(self.framer.read_buf()).await, Ok(n) if n > 0)
    }

    /// The next stanza, waiting as long as it takes; `None` when the stream ended.
    pub async fn next_stanza(&mut self) -> Option<Stanza> {
        loop {
            match self.framer.next_event() {
                Ok(Some(Event::Stanza(s))) => return Some(s),
                Ok(Some(Event::StreamClose)) => return None,
                Ok(Some(Event::StreamOpen(_))) => continue,
                Ok(None) => {
                    if !self.try_fill().await {
                        return None;
                    }
                }
                Err(e) => panic!("fedgate sent bad XML: {e}"),
            }
        }
    }

    pub async fn event(&mut self) -> Event {
        loop {
            if let Some(e) = self
                .framer
                .next_event()
                .expect("fedgate sends well-formed XML")
            {
                return e;
            }
            self.fill().await;
        }
    }

    pub async fn stanza(&mut self) -> Stanza {
        match self.event().await {
            Event::Stanza(s) => s,
            other => panic!("expected a stanza, got {other:?}"),
        }
    }
}

/// Connects a raw backend for `domain` and completes the XEP-0114 handshake.
pub async fn attach_backend(
    addr: SocketAddr,
    domain: &str,
    secret: &str,
) -> (BackendReader, OwnedWriteHalf) {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to components");
    attach_backend_on(tcp, domain, secret).await
}

/// [`attach_backend`] on a connection already open.
pub async fn attach_backend_on(
    tcp: TcpStream,
    domain: &str,
    secret: &str,
) -> (BackendReader, OwnedWriteHalf) {
    tcp.set_nodelay(true).expect("nodelay");
    let (rd, mut wr) = tcp.into_split();
    let mut reader = BackendReader {
        rd,
        framer: Framer::new(Limits {
            max_stanza_bytes: 1 << 20,
            ..Limits::default()
        }),
    };
    wr.write_all(
        format!(
            "<stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
        )
        .as_bytes(),
    )
    .await
    .expect("write header");
    let id = match reader.event().await {
        Event::StreamOpen(h) => h.id.expect("stream id"),
        other => panic!("expected a stream header, got {other:?}"),
    };
    wr.write_all(
        format!(
            "<handshake>{}</handshake>",
            component_handshake(&id, secret)
        )
        .as_bytes(),
    )
    .await
    .expect("write handshake");
    let reply = reader.stanza().await;
    assert_eq!(&reply.raw()[..], b"<handshake/>", "handshake accepted");
    (reader, wr)
}

/// Who an idle session is from and to: `from`'s authoritative server must hold `secret`.
#[derive(Clone)]
pub struct IdlePeer {
    pub from: &'static str,
    pub to: &'static str,
    pub secret: Arc<DialbackSecret>,
    /// STARTTLS with this client side, or plaintext.
    pub tls: Option<Arc<Tls>>,
}

/// Opens `n` authenticated sessions to `addr`, `concurrency` at a time.
pub async fn open_idle(
    peer: &IdlePeer,
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
) -> Vec<Connection> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let count = n / concurrency + usize::from(t < n % concurrency);
        let peer = peer.clone();
        tasks.spawn(async move {
            let mut open = Vec::with_capacity(count);
            for _ in 0..count {
                let conn = tokio::time::timeout(STALL, idle_session(&peer, addr))
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

/// Closes every session and waits until the gateway answered each close.
pub async fn close_idle(sessions: Vec<Connection>) {
    let mut tasks = tokio::task::JoinSet::new();
    for conn in sessions {
        tasks.spawn(conn.close());
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("close task");
    }
}

/// One session from `peer.from` to `peer.to`, authenticated by dialback, then left idle.
pub async fn idle_session(peer: &IdlePeer, addr: SocketAddr) -> Connection {
    let mut conn = connect_s2s(addr).await;
    let mut id = header_and_features(&mut conn, peer.from, peer.to).await;
    if let Some(client) = &peer.tls {
        starttls(&mut conn, client, peer.from, peer.to).await;
        id = header_and_features(&mut conn, peer.from, peer.to).await;
    }
    let key = peer.secret.key(peer.to, peer.from, &id);
    conn.send(
        format!(
            "<db:result from='{}' to='{}'>{key}</db:result>",
            peer.from, peer.to
        )
        .as_bytes(),
    );
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

/// A plaintext s2s connection to `addr`, nothing sent yet.
pub async fn connect_s2s(addr: SocketAddr) -> Connection {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    tcp.set_nodelay(true).expect("nodelay");
    let limits = Limits {
        max_stanza_bytes: 65536,
        max_depth: 16,
        max_attributes: 16,
    };
    Connection::new(Box::new(tcp), addr, limits, ns::SERVER)
}

/// `<starttls/>`, the gateway's `<proceed/>`, and the TLS handshake as `from` to `to`; the
/// stream is then to be opened again.
pub async fn starttls(conn: &mut Connection, client: &Tls, from: &str, to: &str) {
    conn.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    conn.flush().await.expect("write");
    match conn.next_event().await.expect("proceed") {
        Event::Stanza(s) if s.name() == "proceed" => {}
        other => panic!("expected <proceed/>: {other:?}"),
    }
    let (io, _) = client
        .connect(conn.take_transport(), from, to, false)
        .await
        .expect("STARTTLS handshake");
    conn.restart_on(io);
}

/// Our header, then the gateway's header and features; returns its stream id.
pub async fn header_and_features(conn: &mut Connection, from: &str, to: &str) -> String {
    conn.open(&OpenStream {
        content_ns: ns::SERVER,
        from: Some(from),
        to: Some(to),
        id: None,
        version: true,
        dialback: true,
        drain: false,
        sm: false,
        held: false,
    });
    conn.flush().await.expect("write");
    let id = match conn.next_event().await.expect("header") {
        Event::StreamOpen(h) => h.id.expect("the gateway's stream id"),
        other => panic!("expected a stream header: {other:?}"),
    };
    match conn.next_event().await.expect("features") {
        Event::Stanza(s) if s.name() == "features" => {}
        other => panic!("expected features: {other:?}"),
    }
    id
}

/// The number in environment variable `name` (`_` allowed between digits), or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// Raises `RLIMIT_NOFILE` to at least `needed`, or says why it cannot and what to do;
/// `smaller` names the setting that asks for fewer sessions.
pub fn raise_fd_limit(needed: u64, smaller: &str) -> Result<(), String> {
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
         /etc/security/limits.conf, or run with a smaller {smaller} (at most {}).",
        lim.rlim_max,
        now.saturating_sub(1024)
    ))
}

/// A gateway's configuration for `domain` on `ip`, with routes to the others; written to
/// `dir/fedgate.toml` for a child process.
pub fn config_text(domain: &str, ip: &str, component: &str, routes: &[(&str, &str)]) -> String {
    let routes: String = routes
        .iter()
        .map(|(d, ip)| format!("[[s2s.route]]\ndomain = \"{d}\"\ntarget = \"{ip}:5269\"\n"))
        .collect();
    format!(
        r#"
[s2s]
listen = ["{ip}:5269"]
direct_tls_listen = []
dialback_secret_file = "dialback.secret"
idle_timeout = "1h"
max_connections_per_ip = 100000
max_streams_per_domain = 100000
max_pending_verifications_total = 4096
# The bench measures the relay, not the per-stream byte rate limit (1 MiB/s by default).
max_inbound_bytes_per_second = 4294967296
retry_initial_delay = "100ms"
retry_max_delay = "1s"
failure_window = "1s"

{routes}
[dns]
nameservers = ["127.0.0.1:9"]

[component]
listen = "{component}"

[[component.backend]]
domain = "{domain}"
secret = "secret"

[metrics]
enabled = false

[log]
level = "info"

{security}
"#,
        security = self_signed(domain),
    )
}

pub fn write_config(dir: &Path, text: &str, secret: &str) -> PathBuf {
    write_secret(dir, secret);
    let file = dir.join("fedgate.toml");
    std::fs::write(&file, text).expect("write the config");
    file
}

/// The dialback secret file, readable by its owner only (fedgate warns otherwise).
pub fn write_secret(dir: &Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let file = dir.join("dialback.secret");
    std::fs::write(&file, secret).expect("write the dialback secret");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}
