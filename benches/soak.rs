//! Soak: two gateways under steady traffic for ten minutes, with idle sessions and the peer
//! restarted now and then; memory must stay flat and every stanza be accounted for.
//!
//! a.test (127.88.4.1) is the gateway watched: the real `fedgate` binary as a child process, so
//! that its RSS and CPU time are its own. b.test (127.88.4.2) is its peer, also a child
//! process, stopped with SIGTERM and started again every `SOAK_RESTART`. A raw XEP-0114
//! backend on each side: backend A sends messages to b.test at a steady rate, backend B
//! receives them (attaching again after each restart) and records each one's sequence number.
//! `SOAK_IDLE` idle inbound sessions from c.test (authenticated by dialback, verified against
//! c.test's authoritative server, an in-process gateway on 127.88.4.3) sit on a.test all along.
//!
//! 1. Throughput: `SOAK_MEASURE_N` messages (default 200,000) as fast as backend A writes them,
//!    timed to the last arrival at backend B.
//! 2. Soak: for `SOAK_SECS` (default 600) backend A sends at `SOAK_RATE` messages/s (default
//!    half the throughput measured in step 1), paced once per millisecond. Every `SOAK_EVERY`
//!    (default 30 s) the bench prints a.test's RSS and its CPU time per stanza over the last
//!    interval, and what was sent, delivered, duplicated and bounced so far.
//! 3. Accounting: after the last message the bench waits until every message was delivered or
//!    bounced back to backend A, then prints the totals, the bounces by condition, and any
//!    message neither delivered nor bounced (and fails if there is one).
//!
//! The memory verdict compares each sample after the first minute with the first sample after
//! it: flat means within 10 %.
//!
//! Run: `cargo bench --bench soak` (about 11 minutes); `SOAK_SECS=120 SOAK_RESTART=30` for a
//! short run.

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use fedgate::config::Config;
use fedgate::dialback::DialbackSecret;
use fedgate::gateway::{self, RunningGateway};
use fedgate::xml::stanza::Stanza;

use support::{
    attach_backend, attach_backend_on, close_idle, env_number, mb, open_idle, BackendReader,
    ChildGateway, IdlePeer,
};

const A_IP: &str = "127.88.4.1";
const B_IP: &str = "127.88.4.2";
const C_IP: &str = "127.88.4.3";
/// b.test's component port: fixed, so that backend B finds it again after a restart.
const B_COMPONENT: &str = "127.88.4.2:5347";
const A_COMPONENT: &str = "127.88.4.1:5347";
const C_SECRET: &str = "soak-bench-c-dialback-secret";
/// The first minute is warm-up: the memory verdict starts after it.
const WARM_UP: Duration = Duration::from_secs(60);
/// How long the accounting waits for the last deliveries and bounces.
const DRAIN: Duration = Duration::from_secs(90);
/// The pacing period of backend A.
const PACE: Duration = Duration::from_millis(1);

fn main() {
    let settings = Settings {
        secs: env_number("SOAK_SECS", 600),
        every: Duration::from_secs(env_number("SOAK_EVERY", 30)),
        restart: Duration::from_secs(env_number("SOAK_RESTART", 90)),
        idle: env_number("SOAK_IDLE", 300) as usize,
        measure_n: env_number("SOAK_MEASURE_N", 200_000),
        rate: std::env::var("SOAK_RATE")
            .ok()
            .map(|_| env_number("SOAK_RATE", 0)),
    };
    if let Err(message) = support::raise_fd_limit(settings.idle as u64 + 1024, "SOAK_IDLE") {
        eprintln!("soak: {message}");
        std::process::exit(2);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run(settings));
}

struct Settings {
    secs: u64,
    every: Duration,
    restart: Duration,
    idle: usize,
    measure_n: u64,
    rate: Option<u64>,
}

/// One bit per message sequence number, set from several tasks.
struct Bits(Vec<AtomicU64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits((0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    /// Sets bit `i`; whether it was set already.
    fn set(&self, i: u64) -> bool {
        let bit = 1u64 << (i % 64);
        self.0[(i / 64) as usize].fetch_or(bit, Ordering::Relaxed) & bit != 0
    }

    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize].load(Ordering::Relaxed) & (1u64 << (i % 64)) != 0
    }
}

/// What the backends saw.
struct Ledger {
    delivered: Bits,
    bounced: Bits,
    sent: AtomicU64,
    delivered_n: AtomicU64,
    bounced_n: AtomicU64,
    duplicates: AtomicU64,
    conditions: Mutex<BTreeMap<String, u64>>,
    restarts: AtomicUsize,
}

impl Ledger {
    fn accounted(&self) -> u64 {
        self.delivered_n.load(Ordering::Relaxed) + self.bounced_n.load(Ordering::Relaxed)
    }
}

fn seq_of(s: &Stanza) -> Option<u64> {
    s.id()?.parse().ok()
}

/// The condition of an error stanza: the first child of `<error/>` other than `<text/>`.
fn condition_of(s: &Stanza) -> String {
    s.element()
        .ok()
        .and_then(|e| {
            e.children().find(|c| c.name == "error").and_then(|error| {
                error
                    .children()
                    .find(|c| c.name != "text")
                    .map(|c| c.name.clone())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn push_message(out: &mut Vec<u8>, seq: u64) {
    write!(
        out,
        "<message from='juliet@a.test/balcony' to='romeo@b.test/orchard' type='chat' \
         id='{seq}'><body>Wherefore art thou, Romeo? Deny thy father and refuse thy \
         name.</body></message>"
    )
    .expect("write to a Vec");
}

/// Backend A's reader: every stanza it gets is a bounce of one of its messages.
async fn watch_bounces(mut reader: BackendReader, ledger: Arc<Ledger>) {
    while let Some(s) = reader.next_stanza().await {
        let Some(seq) = seq_of(&s).filter(|_| s.type_() == Some("error")) else {
            eprintln!(
                "backend A received {}",
                String::from_utf8_lossy(&s.raw()[..s.raw().len().min(300)])
            );
            continue;
        };
        if !ledger.bounced.set(seq) {
            ledger.bounced_n.fetch_add(1, Ordering::Relaxed);
        }
        *ledger
            .conditions
            .lock()
            .unwrap()
            .entry(condition_of(&s))
            .or_default() += 1;
    }
}

/// Backend B: receives, and attaches again whenever b.test went away, until `stop`.
async fn receive(ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let addr: std::net::SocketAddr = B_COMPONENT.parse().expect("address");
    while !stop.load(Ordering::Relaxed) {
        // b.test may be restarting: try again until it listens.
        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mut reader, _wr) = attach_backend_on(tcp, "b.test", "secret").await;
        // Until b.test stops: its `<system-shutdown/>` is the one stanza that is no message.
        while let Some(s) = reader.next_stanza().await {
            if s.name() != "message" {
                continue;
            }
            let seq = seq_of(&s).expect("a message the bench sent");
            if ledger.delivered.set(seq) {
                ledger.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                ledger.delivered_n.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends `count` messages from `seq` on, `batch` per `PACE`, on an absolute schedule; or, with
/// `batch` 0, as fast as possible. Stops early when `stop` is set. Returns the next sequence
/// number.
async fn send(
    wr: &mut OwnedWriteHalf,
    ledger: &Ledger,
    mut seq: u64,
    count: u64,
    batch: u64,
    stop: &AtomicBool,
) -> u64 {
    let end = seq + count;
    let start = tokio::time::Instant::now();
    let mut tick = 0u32;
    let mut buf = Vec::with_capacity(64 * 1024);
    while seq < end && !stop.load(Ordering::Relaxed) {
        let this = if batch == 0 {
            (end - seq).min(256)
        } else {
            tokio::time::sleep_until(start + PACE * tick).await;
            tick += 1;
            batch.min(end - seq)
        };
        for s in seq..seq + this {
            push_message(&mut buf, s);
        }
        wr.write_all(&buf).await.expect("backend A write");
        buf.clear();
        seq += this;
        ledger.sent.store(seq, Ordering::Relaxed);
    }
    seq
}

async fn wait_accounted(ledger: &Ledger, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while ledger.accounted() < ledger.sent.load(Ordering::Relaxed) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

async fn start_c(dir: &Path) -> RunningGateway {
    support::write_secret(dir, C_SECRET);
    let text = support::config_text("c.test", C_IP, "127.0.0.1:0", &[]);
    let config = Config::from_toml(&text, dir).expect("c.test's config is valid");
    gateway::start(&config)
        .await
        .expect("c.test's authoritative server starts")
}

async fn run(settings: Settings) {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let a_config = support::write_config(
        dirs[0].path(),
        &support::config_text(
            "a.test",
            A_IP,
            A_COMPONENT,
            &[("b.test", B_IP), ("c.test", C_IP)],
        ),
        "soak-bench-a-dialback-secret",
    );
    let b_config = support::write_config(
        dirs[1].path(),
        &support::config_text("b.test", B_IP, B_COMPONENT, &[("a.test", A_IP)]),
        "soak-bench-b-dialback-secret",
    );
    let c = start_c(dirs[2].path()).await;
    let a = ChildGateway::start("a.test", &a_config, "SOAK_GATEWAY_ENV");
    let b = Arc::new(Mutex::new(Some(ChildGateway::start(
        "b.test",
        &b_config,
        "SOAK_GATEWAY_ENV",
    ))));

    let capacity =
        settings.measure_n + 1 + settings.rate.unwrap_or(500_000) * settings.secs * 6 / 5;
    let ledger = Arc::new(Ledger {
        delivered: Bits::new(capacity),
        bounced: Bits::new(capacity),
        sent: AtomicU64::new(0),
        delivered_n: AtomicU64::new(0),
        bounced_n: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        conditions: Mutex::new(BTreeMap::new()),
        restarts: AtomicUsize::new(0),
    });
    let stop_receiving = Arc::new(AtomicBool::new(false));
    let receiver = tokio::spawn(receive(ledger.clone(), stop_receiving.clone()));
    let (reader_a, mut wr_a) =
        attach_backend(A_COMPONENT.parse().unwrap(), "a.test", "secret").await;
    let bounces = tokio::spawn(watch_bounces(reader_a, ledger.clone()));
    let never = AtomicBool::new(false);

    // Idle sessions from c.test, for the whole run.
    let tls = support::client_tls(dirs[2].path(), "c.test");
    let peer = IdlePeer {
        from: "c.test",
        to: "a.test",
        secret: Arc::new(DialbackSecret::from_bytes(C_SECRET.as_bytes())),
        tls: Some(tls),
    };
    let idle = open_idle(
        &peer,
        format!("{A_IP}:5269").parse().unwrap(),
        settings.idle,
        16,
    )
    .await;
    let rest = a.rss();
    println!(
        "soak: a.test (pid {}) with {} idle TLS sessions from c.test: RSS {:.1} MB",
        a.child.id(),
        idle.len(),
        mb(rest)
    );

    // Warm-up message (establishes a.test -> b.test), then the throughput.
    let mut seq = send(&mut wr_a, &ledger, 0, 1, 0, &never).await;
    assert!(
        wait_accounted(&ledger, Duration::from_secs(30)).await,
        "the first message arrives"
    );
    let start = Instant::now();
    let cpu_start = a.cpu();
    seq = send(&mut wr_a, &ledger, seq, settings.measure_n, 0, &never).await;
    assert!(
        wait_accounted(&ledger, Duration::from_secs(120)).await,
        "the throughput phase completes"
    );
    let measured = settings.measure_n as f64 / start.elapsed().as_secs_f64();
    let cpu = a.cpu() - cpu_start;
    println!(
        "soak: throughput {measured:.0} stanzas/s ({} in {:.2} s), a.test CPU {:.2} µs per stanza; bounced so far: {}",
        settings.measure_n,
        start.elapsed().as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / settings.measure_n as f64,
        ledger.bounced_n.load(Ordering::Relaxed)
    );
    let rate = settings.rate.unwrap_or((measured / 2.0) as u64).max(1000);
    let batch = (rate as f64 * PACE.as_secs_f64()).round().max(1.0) as u64;
    let count = rate * settings.secs;
    assert!(
        seq + count < capacity,
        "SOAK_RATE={rate} over SOAK_SECS={} needs more room than the ledger has: {}",
        settings.secs,
        capacity
    );
    println!(
        "soak: {} s at {rate} stanzas/s ({batch} per {PACE:?}), b.test restarted every {} s",
        settings.secs,
        settings.restart.as_secs()
    );

    // The restarts, on a thread of their own (starting a child waits for its log line).
    let stop_restarts = Arc::new(AtomicBool::new(false));
    let restarter = {
        let (b, ledger, stop) = (b.clone(), ledger.clone(), stop_restarts.clone());
        let every = settings.restart;
        std::thread::spawn(move || {
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                next += every;
                let old = b.lock().unwrap().take();
                if let Some(old) = old {
                    old.terminate();
                }
                *b.lock().unwrap() =
                    Some(ChildGateway::start("b.test", &b_config, "SOAK_GATEWAY_ENV"));
                ledger.restarts.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The soak, with a sample every `every`.
    let stop_sending = Arc::new(AtomicBool::new(false));
    let sender = {
        let (ledger, stop) = (ledger.clone(), stop_sending.clone());
        tokio::spawn(async move {
            send(&mut wr_a, &ledger, seq, count, batch, &stop).await;
            wr_a
        })
    };
    let began = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let (mut last_cpu, mut last_sent) = (a.cpu(), ledger.sent.load(Ordering::Relaxed));
    println!(
        "{:>6} {:>9} {:>12} {:>12} {:>10} {:>10} {:>9} {:>8}",
        "t (s)", "RSS (MB)", "sent", "delivered", "bounced", "duplicate", "µs CPU/st", "restarts"
    );
    let mut sender = Some(sender);
    while began.elapsed() < Duration::from_secs(settings.secs) {
        tokio::time::sleep(
            settings
                .every
                .min(Duration::from_secs(settings.secs).saturating_sub(began.elapsed())),
        )
        .await;
        let (rss, cpu, sent) = (a.rss(), a.cpu(), ledger.sent.load(Ordering::Relaxed));
        let per = (cpu - last_cpu).as_secs_f64() * 1e6 / (sent - last_sent).max(1) as f64;
        (last_cpu, last_sent) = (cpu, sent);
        samples.push((began.elapsed(), rss));
        println!(
            "{:>6.0} {:>9.1} {:>12} {:>12} {:>10} {:>10} {:>9.2} {:>8}",
            began.elapsed().as_secs_f64(),
            mb(rss),
            sent,
            ledger.delivered_n.load(Ordering::Relaxed),
            ledger.bounced_n.load(Ordering::Relaxed),
            ledger.duplicates.load(Ordering::Relaxed),
            per,
            ledger.restarts.load(Ordering::Relaxed)
        );
    }
    stop_sending.store(true, Ordering::Relaxed);
    let _wr_a = sender.take().unwrap().await.expect("sender");
    stop_restarts.store(true, Ordering::Relaxed);
    restarter.join().expect("restarter");
    let achieved =
        (ledger.sent.load(Ordering::Relaxed) - seq) as f64 / began.elapsed().as_secs_f64();

    // Accounting.
    let complete = wait_accounted(&ledger, DRAIN).await;
    let sent = ledger.sent.load(Ordering::Relaxed);
    let missing: Vec<u64> = (0..sent)
        .filter(|&i| !ledger.delivered.get(i) && !ledger.bounced.get(i))
        .collect();
    let both = (0..sent)
        .filter(|&i| ledger.delivered.get(i) && ledger.bounced.get(i))
        .count();
    println!(
        "soak: sent {sent} (achieved {achieved:.0}/s in the soak), delivered {}, bounced {}, \
         delivered and bounced {both}, duplicates {}, missing {}",
        ledger.delivered_n.load(Ordering::Relaxed),
        ledger.bounced_n.load(Ordering::Relaxed),
        ledger.duplicates.load(Ordering::Relaxed),
        missing.len()
    );
    println!(
        "soak: bounces by condition: {:?}",
        ledger.conditions.lock().unwrap()
    );
    let after: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= WARM_UP)
        .map(|&(_, rss)| rss)
        .collect();
    if let Some(&first) = after.first() {
        let worst = after
            .iter()
            .map(|&r| (r as f64 / first as f64 - 1.0) * 100.0)
            .fold(0.0f64, |w, d| if d.abs() > w.abs() { d } else { w });
        println!(
            "soak: a.test RSS after warm-up {:.1} MB, last {:.1} MB, largest change {worst:+.1}%: {}",
            mb(first),
            mb(*after.last().unwrap()),
            if worst.abs() <= 10.0 { "flat" } else { "NOT flat (over 10%)" }
        );
    }
    close_idle(idle).await;
    stop_receiving.store(true, Ordering::Relaxed);
    bounces.abort();
    drop(b.lock().unwrap().take());
    drop(a);
    c.shutdown(Duration::from_secs(2)).await;
    receiver.abort();
    assert!(
        complete && missing.is_empty(),
        "{} messages neither delivered nor bounced, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}
