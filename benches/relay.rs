//! End-to-end loopback relay: backend A → gateway a.test → s2s → gateway b.test → backend B.
//!
//! Two gateways run in this process, each on its own tokio runtime whose threads are named
//! `gw-a` and `gw-b`, each with its s2s listener on its own loopback address and port 5269, a
//! static route to the other, and a nameserver that is never queried, so nothing leaves the
//! machine. The bench's two raw XEP-0114 backends (the load generator) run on a third runtime
//! (threads named `load`, and the main thread). After one warm-up message (which establishes
//! the s2s session, so the router applies backpressure instead of bouncing when the queue
//! fills), it measures:
//!
//! 1. throughput: backend A writes `RELAY_N` messages (default 1,000,000) in 64 KiB writes,
//!    timed from the first write to the last arrival at backend B;
//! 2. latency: `RELAY_LAT_N` messages (default 100,000) at 10% of the measured throughput,
//!    paced in batches once per millisecond; each carries its send time in its `id`.
//!
//! For both phases it prints the CPU time per relayed stanza of each gateway, of the two
//! together, of the load generator, and of the whole process (`getrusage`), from the CPU time
//! of each thread by name (`support::cpu`: what each side spent, not the process as a whole),
//! and after the throughput phase the process's peak RSS (`VmHWM`: gateways and backends
//! together, as one process has one address space).
//!
//! Each gateway's runtime has `RELAY_GATEWAY_WORKERS` workers (default 1, so that the two
//! gateways together have no more workers than a 2-core machine has cores; tokio's default of
//! one per core each puts four gateway workers and the load generator's on two cores, and the
//! extra wake-ups and switches cost about a third more CPU per stanza there); the load
//! generator's runtime has one worker per core. The three sides compete for the same cores,
//! so the throughput is that of the machine shared with the load generator; the CPU per
//! stanza is what tells the gateways' own cost.
//!
//! Every message carries a sequence number; backend B checks that each arrives exactly once
//! and in order, and the run panics otherwise.
//!
//! Both phases run twice: over TLS (each gateway has a self-signed certificate, created at
//! start, so the session authenticates by dialback over TLS) and in plaintext
//! (`require_encryption = false`). `RELAY_TRANSPORT=tls` or `=plain` runs one of them;
//! `RELAY_SM=off` turns XEP-0198 off and `RELAY_BIDI=off` XEP-0288.
//!
//! Run: `cargo bench --bench relay`.

mod support;

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use fedgate::config::Config;
use fedgate::gateway::{self, RunningGateway};
use fedgate::xml::framer::Event;

use support::{attach_backend, cpu, cpu_time, mb, own_status_bytes, BackendReader};

/// The allocator the `fedgate` binary runs with (src/main.rs), so that the gateways here cost
/// what they cost deployed (with glibc's malloc: 3.24–3.41 µs per stanza for both gateways
/// over 2 runs, with jemalloc 3.24–3.32 µs over 4, on 2026-12-03: within the noise).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Size of one write from backend A in the throughput phase.
const CHUNK: usize = 64 * 1024;
/// The latency phase sends one batch per this period (tokio's timer resolution).
const PACE: Duration = Duration::from_millis(1);

fn main() {
    let n = support::env_number("RELAY_N", 1_000_000) as usize;
    let lat_n = support::env_number("RELAY_LAT_N", 100_000) as usize;
    let transport = std::env::var("RELAY_TRANSPORT").unwrap_or_else(|_| "both".into());
    let workers = Some(support::env_number("RELAY_GATEWAY_WORKERS", 1) as usize);
    let load = cpu::runtime(LOAD, None);
    for t in [Transport::Tls, Transport::Plain] {
        if transport == "both" || transport == format!("{t:?}").to_lowercase() {
            run(&load, n, lat_n, t, workers);
        }
    }
}

/// Thread names of the gateways' runtimes, which [`cpu::Usage`] adds up per name.
const GW_A: &str = "gw-a";
const GW_B: &str = "gw-b";
/// Thread name of the load generator's runtime; the main thread, which drives its top-level
/// future (backend A's writes), is counted with it as "not a gateway".
const LOAD: &str = "load";

/// One transport: both gateways on fresh runtimes of their own, the backends on `load`.
fn run(
    load: &tokio::runtime::Runtime,
    n: usize,
    lat_n: usize,
    transport: Transport,
    workers: Option<usize>,
) {
    let (ip_a, ip_b) = transport.ips();
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let rt_a = cpu::runtime(GW_A, workers);
    let rt_b = cpu::runtime(GW_B, workers);
    let gw_a = rt_a.block_on(start_gateway(
        dir_a.path(),
        "a.test",
        ip_a,
        "b.test",
        ip_b,
        "secret-a",
        transport,
    ));
    let gw_b = rt_b.block_on(start_gateway(
        dir_b.path(),
        "b.test",
        ip_b,
        "a.test",
        ip_a,
        "secret-b",
        transport,
    ));
    println!(
        "relay over {transport:?}: a.test@{ip_a} -> b.test@{ip_b}; tokio workers: {} per gateway, {} for the load generator",
        rt_a.metrics().num_workers(),
        load.metrics().num_workers()
    );
    let gateways = [(gw_a, rt_a.handle().clone()), (gw_b, rt_b.handle().clone())];
    load.block_on(drive(n, lat_n, gateways));
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Tls,
    Plain,
}

impl Transport {
    /// Each transport on its own addresses, so the second run never meets the first's sockets.
    fn ips(self) -> (&'static str, &'static str) {
        match self {
            Transport::Tls => ("127.88.1.1", "127.88.1.2"),
            Transport::Plain => ("127.88.0.1", "127.88.0.2"),
        }
    }
}

/// Starts a gateway serving `domain` with its s2s listener on `ip:5269` and a static route to
/// `peer_domain` at `peer_ip:5269`.
async fn start_gateway(
    dir: &Path,
    domain: &str,
    ip: &str,
    peer_domain: &str,
    peer_ip: &str,
    component_secret: &str,
    transport: Transport,
) -> RunningGateway {
    let security = match transport {
        Transport::Tls => support::self_signed(domain),
        Transport::Plain => String::new(),
    };
    let require = transport == Transport::Tls;
    // XEP-0198 on by default, as in production; RELAY_SM=off measures without it.
    let sm = std::env::var("RELAY_SM").map_or(true, |v| v != "off");
    // XEP-0288 bidi on by default, as in production; RELAY_BIDI=off measures without it.
    let bidi = std::env::var("RELAY_BIDI").map_or(true, |v| v != "off");
    std::fs::write(
        dir.join("dialback.secret"),
        format!("relay-bench-dialback-secret-{domain}"),
    )
    .expect("write dialback secret");
    let text = format!(
        r#"
[s2s]
listen = ["{ip}:5269"]
direct_tls_listen = []
require_encryption = {require}
dialback_secret_file = "dialback.secret"
connect_timeout = "2s"
negotiation_timeout = "5s"
stream_management = {sm}
bidi = {bidi}
dialback_timeout = "5s"
# The bench measures the relay, not the per-stream byte rate limit (1 MiB/s by default).
max_inbound_bytes_per_second = 4294967296

[[s2s.route]]
domain = "{peer_domain}"
target = "{peer_ip}:5269"

[dns]
nameservers = ["127.0.0.1:9"]

[component]
listen = "127.0.0.1:0"

[[component.backend]]
domain = "{domain}"
secret = "{component_secret}"

[metrics]
enabled = false

{security}
"#
    );
    let config = Config::from_toml(&text, dir).expect("bench config is valid");
    gateway::start(&config)
        .await
        .unwrap_or_else(|e| panic!("gateway {domain} starts: {e}"))
}

/// Appends message `seq`, sent at `nanos` after the shared start instant (0 when untimed).
fn push_message(out: &mut Vec<u8>, seq: u64, nanos: u64) {
    write!(
        out,
        "<message from='juliet@a.test/balcony' to='romeo@b.test/orchard' type='chat' \
         id='{seq}.{nanos}'><body>Wherefore art thou, Romeo? Deny thy father and refuse thy \
         name.</body></message>"
    )
    .expect("write to a Vec");
}

/// What backend B checks and records while receiving.
struct Receiver {
    reader: BackendReader,
    /// The sequence number the next message must carry.
    next_seq: u64,
}

/// Received `count` messages in order; `last` is when the last one arrived.
struct Received {
    last: Instant,
    /// Per message, receive time minus send time, in nanoseconds (latency phase only).
    latencies: Vec<u64>,
}

impl Receiver {
    /// Receives the next `count` messages, checking the sequence. With `timed`, records each
    /// message's latency: its send time from the `id` against the time the read that completed
    /// it returned.
    async fn receive(&mut self, count: usize, timed: bool, t0: Instant) -> Received {
        let mut latencies = Vec::with_capacity(if timed { count } else { 0 });
        let mut got = 0;
        let mut read_at = Instant::now();
        while got < count {
            let event = match self.reader.framer.next_event() {
                Ok(Some(e)) => e,
                Ok(None) => {
                    self.reader.fill().await;
                    read_at = Instant::now();
                    continue;
                }
                Err(e) => panic!("fedgate sent bad XML: {e}"),
            };
            let Event::Stanza(s) = event else {
                panic!("backend B: unexpected {event:?} after {got} of {count}");
            };
            let (seq, sent) = s
                .id()
                .filter(|_| s.name() == "message" && s.type_() == Some("chat"))
                .and_then(|id| id.split_once('.'))
                .and_then(|(seq, sent)| Some((seq.parse::<u64>().ok()?, sent.parse::<u64>().ok()?)))
                .unwrap_or_else(|| {
                    panic!(
                        "backend B: unexpected stanza {}",
                        String::from_utf8_lossy(s.raw())
                    )
                });
            assert_eq!(
                seq, self.next_seq,
                "backend B: message {seq} arrived when {} was due (lost, duplicated or reordered)",
                self.next_seq
            );
            self.next_seq += 1;
            got += 1;
            if timed {
                let received = read_at.duration_since(t0).as_nanos() as u64;
                latencies.push(received.saturating_sub(sent));
            }
        }
        Received {
            last: read_at,
            latencies,
        }
    }
}

/// Sends `count` messages starting at `seq` as fast as possible, in `CHUNK`-sized writes.
async fn send_bulk(wr: &mut OwnedWriteHalf, seq: u64, count: usize) {
    let mut buf = Vec::with_capacity(CHUNK + 512);
    for s in seq..seq + count as u64 {
        push_message(&mut buf, s, 0);
        if buf.len() >= CHUNK {
            wr.write_all(&buf).await.expect("backend A write");
            buf.clear();
        }
    }
    if !buf.is_empty() {
        wr.write_all(&buf).await.expect("backend A write");
    }
}

/// Sends `count` messages starting at `seq` at `rate` per second: `batch` messages per `PACE`,
/// on an absolute schedule (a late tick is caught up, not skipped), each stamped with the
/// time just before its write.
async fn send_paced(wr: &mut OwnedWriteHalf, seq: u64, count: usize, batch: usize, t0: Instant) {
    let start = tokio::time::Instant::now();
    let mut buf = Vec::with_capacity(batch * 256);
    let mut sent = 0;
    let mut tick = 0u32;
    while sent < count {
        tokio::time::sleep_until(start + PACE * tick).await;
        tick += 1;
        let now = t0.elapsed().as_nanos() as u64;
        let this = batch.min(count - sent);
        for i in 0..this {
            push_message(&mut buf, seq + (sent + i) as u64, now);
        }
        wr.write_all(&buf).await.expect("backend A write");
        buf.clear();
        sent += this;
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// CPU time per relayed stanza of each side over a phase that relayed `n` stanzas in `secs`
/// seconds: `usage` per thread name, `process` from `getrusage`.
fn report_cpu(phase: &str, usage: &cpu::Usage, process: Duration, n: usize, secs: f64) {
    let per = |t: Duration| t.as_secs_f64() * 1e6 / n as f64;
    let (a, b) = (usage.named(GW_A), usage.named(GW_B));
    let load = usage.others(&[GW_A, GW_B]);
    println!(
        "relay CPU {phase}: gateways {:.2} µs per stanza (a.test {:.2}, b.test {:.2}; {:.2} cores busy), \
         load generator {:.2} µs, whole process {:.2} µs (getrusage){}",
        per(a + b),
        per(a),
        per(b),
        (a + b).as_secs_f64() / secs,
        per(load),
        per(process),
        match usage.exited {
            0 => String::new(),
            k => format!("; {k} threads exited during the phase and are not counted"),
        }
    );
}

/// Attaches the backends to both gateways, runs both phases, then shuts the gateways down,
/// each on its own runtime.
async fn drive(n: usize, lat_n: usize, gateways: [(RunningGateway, tokio::runtime::Handle); 2]) {
    let t0 = Instant::now();
    let [(gw_a, rt_a), (gw_b, rt_b)] = gateways;
    let (mut reader_a, mut wr_a) = attach_backend(gw_a.component_addr, "a.test", "secret-a").await;
    let (reader_b, wr_b) = attach_backend(gw_b.component_addr, "b.test", "secret-b").await;

    // Backend A must receive nothing (a bounce would mean a lost message); keep reading so
    // the gateway never blocks writing to it.
    let bounced = Arc::new(AtomicUsize::new(0));
    let watch_a = {
        let bounced = bounced.clone();
        tokio::spawn(async move {
            loop {
                let s = reader_a.stanza().await;
                eprintln!(
                    "backend A received {}",
                    String::from_utf8_lossy(&s.raw()[..s.raw().len().min(400)])
                );
                bounced.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let check_bounces = || {
        let b = bounced.load(Ordering::Relaxed);
        assert_eq!(b, 0, "backend A received {b} stanzas (bounces?)");
    };

    let mut rx = Receiver {
        reader: reader_b,
        next_seq: 0,
    };
    let mut sample = Vec::new();
    push_message(&mut sample, 0, 0);
    println!("relay: {} byte messages", sample.len());

    // Warm-up: establishes a.test -> b.test (dialback included).
    let start = Instant::now();
    wr_a.write_all(&sample).await.expect("backend A write");
    rx.receive(1, false, t0).await;
    println!(
        "relay warm-up: s2s session established, first message in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut seq = 1u64;

    // Throughput.
    let receiving = tokio::spawn(async move {
        let r = rx.receive(n, false, t0).await;
        (rx, r.last)
    });
    let start = Instant::now();
    let threads_start = cpu::Snapshot::take();
    let process_start = cpu_time();
    send_bulk(&mut wr_a, seq, n).await;
    let written = start.elapsed();
    let (mut rx, last) = receiving.await.expect("receiver");
    let usage = cpu::Snapshot::take().since(&threads_start);
    let process = cpu_time() - process_start;
    seq += n as u64;
    let secs = last.duration_since(start).as_secs_f64();
    let rate = n as f64 / secs;
    println!(
        "relay throughput: {rate:.0} stanzas/s ({n} in {secs:.3} s; {:.1} MB/s; backend A done writing after {:.3} s)",
        rate * sample.len() as f64 / 1e6,
        written.as_secs_f64()
    );
    report_cpu("at full throughput", &usage, process, n, secs);
    println!(
        "relay memory: peak RSS {:.1} MB, RSS now {:.1} MB (the whole process: both gateways and both backends)",
        mb(own_status_bytes("VmHWM")),
        mb(own_status_bytes("VmRSS"))
    );
    check_bounces();

    // Latency at 10% of the measured throughput.
    let target = rate * 0.1;
    let batch = ((target * PACE.as_secs_f64()).round() as usize).max(1);
    let paced_rate = batch as f64 / PACE.as_secs_f64();
    let receiving = tokio::spawn(async move {
        let r = rx.receive(lat_n, true, t0).await;
        (rx, r)
    });
    let start = Instant::now();
    let threads_start = cpu::Snapshot::take();
    let process_start = cpu_time();
    send_paced(&mut wr_a, seq, lat_n, batch, t0).await;
    let (mut rx, mut received) = receiving.await.expect("receiver");
    let usage = cpu::Snapshot::take().since(&threads_start);
    let process = cpu_time() - process_start;
    let secs = start.elapsed().as_secs_f64();
    let achieved = lat_n as f64 / secs;
    seq += lat_n as u64;
    received.latencies.sort_unstable();
    let l = &received.latencies;
    println!(
        "relay latency at {paced_rate:.0} stanzas/s: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs \
         ({lat_n} messages, {batch} per {PACE:?}, achieved {achieved:.0}/s)",
        percentile(l, 0.50),
        percentile(l, 0.99),
        percentile(l, 1.0),
    );
    report_cpu(
        &format!("at {paced_rate:.0} stanzas/s"),
        &usage,
        process,
        lat_n,
        secs,
    );
    check_bounces();

    // A last message: nothing from before it may arrive after it (duplicates of the tail).
    sample.clear();
    push_message(&mut sample, seq, 0);
    wr_a.write_all(&sample).await.expect("backend A write");
    rx.receive(1, false, t0).await;
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(200), rx.reader.event()).await {
        panic!("backend B received more than was sent: {extra:?}");
    }
    check_bounces();
    println!(
        "relay: all {} messages arrived exactly once, in order",
        seq + 1
    );

    watch_a.abort();
    let start = Instant::now();
    let a = rt_a.spawn(gw_a.shutdown(Duration::from_secs(2)));
    let b = rt_b.spawn(gw_b.shutdown(Duration::from_secs(2)));
    a.await.expect("a.test shuts down");
    b.await.expect("b.test shuts down");
    drop((wr_a, wr_b, rx));
    println!(
        "relay: both gateways shut down in {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
}
