//! New inbound s2s sessions per second: how fast one gateway takes peers through TCP accept,
//! stream header, STARTTLS (or direct TLS, XEP-0368) and the TLS handshake to the post-TLS
//! stream features, where authentication would begin.
//!
//! The gateway (b.test on 127.88.2.1, self-signed ECDSA P-256 certificate) runs in this process
//! on its own tokio runtime, whose threads are named `gw`; the clients run on another (threads
//! named `load`, and the main thread) and use fedgate's own TLS client ([`Tls::connect`]), as
//! outbound sessions do. `HANDSHAKES_N` sessions (default 2000) per mode,
//! `HANDSHAKES_CONCURRENCY` at a time (default 16). Every session must reach its features, or
//! the run panics. The gateway's runtime has `HANDSHAKES_GATEWAY_WORKERS` workers (default:
//! one per core, as `fedgate run` without `--workers`), the clients' one per core.
//!
//! Per mode it prints the measured rate, which is that of the machine shared between the
//! gateway and the clients (a TLS client's half of a handshake costs about as much as the
//! server's), and, from the CPU time of each thread by name (`support::cpu`), the gateway's
//! CPU time per handshake and the rate it implies for one core of the gateway alone
//! (1,000,000 / µs per handshake), next to the clients' CPU per handshake.
//!
//! Run: `cargo bench --bench handshakes`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedgate::config::Config;
use fedgate::gateway::{self, RunningGateway};
use fedgate::tls::Tls;

use support::cpu;

const IP: &str = "127.88.2.1";
const STALL: Duration = Duration::from_secs(10);

fn config(dir: &Path, domain: &str, listen: &str) -> Config {
    let text = format!(
        r#"
[s2s]
listen = ["{listen}"]
direct_tls_listen = ["{IP}:5270"]
dialback_secret_file = "dialback.secret"
max_connections = 100000
max_connections_per_ip = 100000

[dns]
nameservers = ["127.0.0.1:9"]

[component]
listen = "127.0.0.1:0"

[[component.backend]]
domain = "{domain}"
secret = "secret"

[metrics]
enabled = false

[[tls.certificate]]
domains = ["{domain}"]
cert = "tls.crt"
key = "tls.key"
self_signed = true
"#
    );
    Config::from_toml(&text, dir).expect("bench config is valid")
}

/// Thread names of the gateway's and the clients' runtimes, which [`cpu::Usage`] adds up per
/// name; the main thread, which drives the clients' top-level future, counts with the clients.
const GW: &str = "gw";
const LOAD: &str = "load";

fn main() {
    let n = support::env_number("HANDSHAKES_N", 2000) as usize;
    let concurrency = support::env_number("HANDSHAKES_CONCURRENCY", 16) as usize;
    let workers = match support::env_number("HANDSHAKES_GATEWAY_WORKERS", 0) {
        0 => None,
        n => Some(n as usize),
    };
    let gw_runtime = cpu::runtime(GW, workers);
    let load = cpu::runtime(LOAD, None);
    let dir_b = tempfile::tempdir().expect("tempdir");
    let gw: RunningGateway = gw_runtime
        .block_on(gateway::start(&config(
            dir_b.path(),
            "b.test",
            &format!("{IP}:5269"),
        )))
        .expect("gateway starts");
    // The client side: a.test's certificate, used as an outbound session would.
    let dir_a = tempfile::tempdir().expect("tempdir");
    let client = Arc::new(
        Tls::from_config(&config(dir_a.path(), "a.test", "127.0.0.1:0")).expect("client TLS"),
    );
    println!(
        "handshakes: {n} sessions per mode, {concurrency} at a time, tokio workers: {} for the gateway, {} for the clients",
        gw_runtime.metrics().num_workers(),
        load.metrics().num_workers()
    );
    for direct in [false, true] {
        let addr = if direct {
            gw.direct_tls_addrs[0]
        } else {
            gw.s2s_addrs[0]
        };
        let threads_start = cpu::Snapshot::take();
        let start = Instant::now();
        let done = load.block_on(clients(client.clone(), addr, direct, n, concurrency));
        let secs = start.elapsed().as_secs_f64();
        let usage = cpu::Snapshot::take().since(&threads_start);
        let per = |t: Duration| t.as_secs_f64() * 1e6 / done as f64;
        let server = per(usage.named(GW));
        println!(
            "handshakes {}: {:.0} new s2s sessions/s measured ({done} in {secs:.2} s, clients in the same process); \
             gateway CPU {server:.1} µs per handshake ({:.2} cores busy), so {:.0}/s per core for the gateway alone; \
             clients {:.1} µs per handshake{}",
            if direct { "direct TLS" } else { "STARTTLS" },
            done as f64 / secs,
            usage.named(GW).as_secs_f64() / secs,
            1e6 / server,
            per(usage.others(&[GW])),
            match usage.exited {
                0 => String::new(),
                k => format!("; {k} threads exited during the run and are not counted"),
            }
        );
    }
    gw_runtime.block_on(gw.shutdown(Duration::from_secs(2)));
}

/// `concurrency` clients opening `n / concurrency` sessions each, one after another; returns
/// how many were opened.
async fn clients(
    client: Arc<Tls>,
    addr: SocketAddr,
    direct: bool,
    n: usize,
    concurrency: usize,
) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = n / concurrency;
    for _ in 0..concurrency {
        let client = client.clone();
        tasks.spawn(async move {
            for _ in 0..per_task {
                tokio::time::timeout(STALL, session(&client, addr, direct))
                    .await
                    .expect("session stalled");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("client task");
    }
    per_task * concurrency
}

/// One session up to the post-TLS features, then a clean close.
async fn session(client: &Tls, addr: SocketAddr, direct: bool) {
    let mut conn = support::connect_s2s(addr).await;
    if direct {
        let (io, _) = client
            .connect(conn.take_transport(), "a.test", "b.test", true)
            .await
            .expect("direct TLS handshake");
        conn.restart_on(io);
    } else {
        support::header_and_features(&mut conn, "a.test", "b.test").await;
        support::starttls(&mut conn, client, "a.test", "b.test").await;
    }
    support::header_and_features(&mut conn, "a.test", "b.test").await;
    conn.close().await;
}
