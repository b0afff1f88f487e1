//! New inbound s2s sessions per second: how fast one gateway takes peers through TCP accept,
//! stream header, STARTTLS (or direct TLS, XEP-0368) and the TLS handshake to the post-TLS
//! stream features, where authentication would begin.
//!
//! The gateway (b.test on 127.88.2.1, self-signed ECDSA P-256 certificate) and the clients run
//! in this process; the clients use fedgate's own TLS client ([`Tls::connect`]), as outbound
//! sessions do. `HANDSHAKES_N` sessions (default 2000) per mode, `HANDSHAKES_CONCURRENCY` at
//! a time (default 16). Every session must reach its features, or the run panics.
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

fn main() {
    let n = support::env_number("HANDSHAKES_N", 2000) as usize;
    let concurrency = support::env_number("HANDSHAKES_CONCURRENCY", 16) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let dir_b = tempfile::tempdir().expect("tempdir");
        let gw: RunningGateway =
            gateway::start(&config(dir_b.path(), "b.test", &format!("{IP}:5269")))
                .await
                .expect("gateway starts");
        // The client side: a.test's certificate, used as an outbound session would.
        let dir_a = tempfile::tempdir().expect("tempdir");
        let client = Arc::new(
            Tls::from_config(&config(dir_a.path(), "a.test", "127.0.0.1:0")).expect("client TLS"),
        );
        println!(
            "handshakes: {n} sessions per mode, {concurrency} at a time, tokio workers: {}",
            tokio::runtime::Handle::current().metrics().num_workers()
        );
        for direct in [false, true] {
            let addr = if direct {
                gw.direct_tls_addrs[0]
            } else {
                gw.s2s_addrs[0]
            };
            let start = Instant::now();
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
            let secs = start.elapsed().as_secs_f64();
            let done = per_task * concurrency;
            println!(
                "handshakes {}: {:.0} new s2s sessions/s ({done} in {secs:.2} s)",
                if direct { "direct TLS" } else { "STARTTLS" },
                done as f64 / secs
            );
        }
        gw.shutdown(Duration::from_secs(2)).await;
    });
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
