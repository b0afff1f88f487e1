//! HA relay: what a second gateway instance for the same domain costs and carries (issue 17:
//! "relay throughput through 2 gateways sharing one backend vs 1").
//!
//! a.test's backend is fedgate's component library (`fedgate::component::client`, with
//! acknowledgements), sending to two remote domains, each served by its own gateway process
//! with a raw XEP-0114 backend that counts arrivals. a.test is served by one gateway process
//! (127.88.7.1) or by two with the same dialback secret (127.88.7.1 and 127.88.7.2); the
//! library attaches to every instance and sends each remote domain's traffic through the one
//! its stable hash of the domain picks, so the bench picks two remote domain names that hash
//! to different instances. The remote gateways route a.test to the first instance only, so
//! the second one's outbound streams are verified by a dialback connect-back that lands on the
//! first (the shared secret at work).
//!
//! Every gateway is the real `fedgate` binary as a child process. For each setup (`1` and
//! `2` a.test instances) it sends `HA_N` messages (default 1,000,000; half to each remote
//! domain, one task each, as fast as the library's acknowledgement window lets it) and prints:
//! - the rate from the first send until every message arrived;
//! - the CPU time per relayed stanza of each a.test instance (per stanza it carried) and of
//!   the remote gateways, and of the bench process (the library and the receiving backends);
//! - each a.test instance's RSS at the end.
//!
//! On a 2-core machine every process shares the same two cores, so the rate says what the
//! machine does in all; whether a second instance costs anything per stanza is in the CPU
//! time per stanza, which should be the same with one and with two instances.
//!
//! Run: `cargo bench --bench ha_relay` (`HA_N`, `HA_RUNS` (default 2), `HA_SETUPS`
//! (default `1,2`), `HA_ENV` for the children's environment).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedgate::component::client::{choose_gateway, ClientConfig, Component, Event, Target};

use support::{attach_backend, env_number, ChildGateway};

/// a.test's instances: s2s address, component address.
const A: [(&str, &str); 2] = [
    ("127.88.7.1", "127.88.7.1:5347"),
    ("127.88.7.2", "127.88.7.2:5347"),
];
/// The remote gateways: s2s address, component address.
const REMOTE: [(&str, &str); 2] = [
    ("127.88.7.11", "127.88.7.11:5347"),
    ("127.88.7.12", "127.88.7.12:5347"),
];
const SECRET: &str = "ha-relay-bench-dialback-secret";

fn main() {
    let n = env_number("HA_N", 1_000_000);
    let runs = env_number("HA_RUNS", 2);
    let setups: Vec<usize> = std::env::var("HA_SETUPS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .map(|s| match s.trim() {
            "1" => 1,
            "2" => 2,
            other => panic!("HA_SETUPS: {other} is not 1 or 2 (the a.test instances)"),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let remotes = remote_domains();
    println!(
        "ha relay: {n} messages per run, half to {} and half to {}; a.test instances: {setups:?}",
        remotes[0], remotes[1]
    );
    for run in 1..=runs {
        for &instances in &setups {
            runtime.block_on(one_run(run, instances, n, &remotes));
        }
    }
}

/// The library's label of each instance, as it hashes them.
fn labels(instances: usize) -> (Vec<Target>, Vec<String>) {
    let targets: Vec<Target> = A[..instances]
        .iter()
        .map(|(_, c)| Target::Tcp(c.parse().unwrap()))
        .collect();
    let labels = targets.iter().map(|t| format!("{t:?}")).collect();
    (targets, labels)
}

/// Two remote domain names that the library sends through different instances when it has
/// two: the first through instance 0, the second through instance 1.
fn remote_domains() -> [String; 2] {
    let (_, labels) = labels(2);
    let mut found: [Option<String>; 2] = [None, None];
    for c in b'b'..=b'z' {
        let domain = format!("{}.test", c as char);
        let via = choose_gateway(&domain, &labels, &[true, true]).expect("two links up");
        found[via].get_or_insert(domain);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.map(|d| d.expect("some one-letter domain hashes to each instance"))
}

async fn one_run(run: u64, instances: usize, n: u64, remotes: &[String; 2]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes: Vec<(&str, &str)> = remotes
        .iter()
        .zip(REMOTE)
        .map(|(d, (ip, _))| (d.as_str(), ip))
        .collect();
    let a: Vec<ChildGateway> = A[..instances]
        .iter()
        .enumerate()
        .map(|(i, (ip, component))| {
            let d = dir.path().join(format!("a{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let config = support::write_config(
                &d,
                &support::config_text("a.test", ip, component, &routes),
                SECRET,
            );
            ChildGateway::start(&format!("a.test#{i}"), &config, "HA_ENV")
        })
        .collect();
    let remote: Vec<ChildGateway> = remotes
        .iter()
        .zip(REMOTE)
        .map(|(domain, (ip, component))| {
            let d = dir.path().join(domain);
            std::fs::create_dir_all(&d).unwrap();
            let config = support::write_config(
                &d,
                &support::config_text(domain, ip, component, &[("a.test", A[0].0)]),
                SECRET,
            );
            ChildGateway::start(domain, &config, "HA_ENV")
        })
        .collect();

    // The receiving backends count what arrives.
    let arrived: Arc<[AtomicU64; 2]> = Arc::default();
    let mut receivers = Vec::new();
    let mut keep = Vec::new();
    for (i, (domain, (_, component))) in remotes.iter().zip(REMOTE).enumerate() {
        let (mut reader, writer) =
            attach_backend(component.parse().unwrap(), domain, "secret").await;
        keep.push(writer);
        let arrived = arrived.clone();
        receivers.push(tokio::spawn(async move {
            while let Some(s) = reader.next_stanza().await {
                if s.name() == "message" {
                    arrived[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let (targets, _) = labels(instances);
    let component = Component::start(ClientConfig::with_gateways("a.test", "secret", targets));
    let (sender, mut events, stopper) = component.into_parts();
    let mut up = 0;
    while up < instances {
        match tokio::time::timeout(support::STALL, events.recv()).await {
            Ok(Some(Event::Online { .. })) => up += 1,
            Ok(Some(_)) => {}
            other => panic!("the library did not come online: {other:?}"),
        }
    }
    // Bounces would come back here; count them (there should be none).
    let bounced = Arc::new(AtomicU64::new(0));
    let counted = bounced.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if let Event::Stanza(s) = e {
                if s.type_() == Some("error") {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    // One message each way first, so that both s2s links are up before the clock starts.
    for (i, domain) in remotes.iter().enumerate() {
        sender
            .send_raw(message(domain, u64::MAX - i as u64))
            .await
            .expect("the library runs");
    }
    wait_until(
        || arrived.iter().all(|a| a.load(Ordering::Relaxed) >= 1),
        "warm-up",
    )
    .await;
    for a in arrived.iter() {
        a.store(0, Ordering::Relaxed);
    }

    let cpu_a0: Vec<Duration> = a.iter().map(ChildGateway::cpu).collect();
    let cpu_r0: Vec<Duration> = remote.iter().map(ChildGateway::cpu).collect();
    let own0 = support::cpu_time();
    let t0 = Instant::now();
    let per_domain = n / 2;
    let senders: Vec<_> = remotes
        .iter()
        .map(|domain| {
            let sender = sender.clone();
            let domain = domain.clone();
            tokio::spawn(async move {
                for seq in 0..per_domain {
                    sender
                        .send_raw(message(&domain, seq))
                        .await
                        .expect("the library runs");
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let total = per_domain * 2;
    wait_until(
        || {
            arrived
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .sum::<u64>()
                >= total
        },
        "every message arrives",
    )
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let own = support::cpu_time() - own0;
    let cpu_a: Vec<Duration> = a.iter().zip(&cpu_a0).map(|(g, c0)| g.cpu() - *c0).collect();
    let cpu_r: Vec<Duration> = remote
        .iter()
        .zip(&cpu_r0)
        .map(|(g, c0)| g.cpu() - *c0)
        .collect();

    // What each instance carried: with one, all; with two, one remote domain each.
    let carried = |i: usize| -> u64 {
        if instances == 1 {
            total
        } else {
            arrived[i].load(Ordering::Relaxed)
        }
    };
    let us = |cpu: Duration, stanzas: u64| cpu.as_secs_f64() * 1e6 / stanzas.max(1) as f64;
    let per_instance: Vec<String> = (0..instances)
        .map(|i| {
            format!(
                "#{i} {:.2} µs/stanza over {} ({:.1} MB RSS)",
                us(cpu_a[i], carried(i)),
                carried(i),
                support::mb(a[i].rss())
            )
        })
        .collect();
    let a_total: Duration = cpu_a.iter().sum();
    let r_total: Duration = cpu_r.iter().sum();
    println!(
        "run {run}, {instances} a.test instance(s): {total} in {secs:.2} s = {:.0} stanzas/s; \
         a.test CPU {:.2} µs/stanza in all ({}); remote gateways {:.2} µs/stanza; \
         bench process (library + receivers) {:.2} µs/stanza; {} bounced",
        total as f64 / secs,
        us(a_total, total),
        per_instance.join(", "),
        us(r_total, total),
        us(own, total),
        bounced.load(Ordering::Relaxed),
    );
    stopper.stop().await;
    for r in receivers {
        r.abort();
    }
    drop(keep);
    drop(a);
    drop(remote);
}

fn message(to_domain: &str, seq: u64) -> String {
    format!(
        "<message from='juliet@a.test/balcony' to='romeo@{to_domain}/orchard' type='chat' \
         id='{seq}'><body>Wherefore art thou, Romeo?</body></message>"
    )
}

/// Polls `done` every millisecond; panics after a minute without it.
async fn wait_until(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
