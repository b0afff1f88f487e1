//! Crash: what a gateway killed with SIGKILL loses of the stanzas a backend gave it (issue 18,
//! item 5), with a raw XEP-0114 backend (no acknowledgements) and with fedgate's component
//! library attached to two gateways with acknowledgements.
//!
//! a.test (127.88.5.1) and b.test (127.88.5.2) are the real `fedgate` binary as child
//! processes, with static routes to each other. A raw XEP-0114 backend on a.test sends
//! `CRASH_N` messages (default 200,000) to b.test at `CRASH_RATE` messages/s (default 20,000),
//! paced once per millisecond; a raw backend on b.test records each one's sequence number.
//! When `CRASH_AT` of them (default half) were written to a.test's socket, a.test is killed
//! with SIGKILL; the writes after that fail. After `CRASH_DRAIN` seconds (default 5) the bench
//! prints, per run (`CRASH_RUNS`, default 3):
//! - written: what backend A handed to a.test's socket without an error (XEP-0114 has no
//!   acknowledgement, so this is all a component learns);
//! - delivered: what reached backend B;
//! - lost: written and never delivered, nor bounced (a dead gateway bounces nothing).
//!
//! `CRASH_MODE` says which backend: `raw` (the above), `library`, or `both` (default).
//! `library`: a second gateway for a.test (127.88.5.3) next to the first; a.test's backend is
//! the component library (`fedgate::component::client`) attached to both, with
//! acknowledgements; the gateway the library sends b.test's traffic through is the one killed.
//! Then "written" is what the library took, and it prints the duplicates (delivered more than
//! once: resent after the kill) and what the library resent. Lost must be 0.
//!
//! `inbound`: the other way, the gateway that *receives* over s2s is the one killed. a.test's raw
//! backend sends to b.test as above; at `CRASH_AT`, b.test is killed with SIGKILL and started
//! again at once on the same address (its raw backend attaches again when it is back). a.test
//! (fedgate, XEP-0198) sends again what b.test had not acknowledged. It prints written,
//! delivered, duplicates, bounced (errors that came back to a.test's backend) and lost
//! (neither delivered nor bounced). Not part of `both`.
//!
//! `FEDGATE_BIN` runs another build of the gateway (to measure a change against the code
//! before it).
//!
//! Run: `cargo bench --bench crash`.

mod support;

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use support::{attach_backend, env_number, ChildGateway};

const A_IP: &str = "127.88.5.1";
const B_IP: &str = "127.88.5.2";
const A_COMPONENT: &str = "127.88.5.1:5347";
const B_COMPONENT: &str = "127.88.5.2:5347";
const A2_IP: &str = "127.88.5.3";
const A2_COMPONENT: &str = "127.88.5.3:5347";
const PACE: Duration = Duration::from_millis(1);

fn main() {
    let n = env_number("CRASH_N", 200_000);
    let rate = env_number("CRASH_RATE", 20_000);
    let at = env_number("CRASH_AT", n / 2);
    let drain = Duration::from_secs(env_number("CRASH_DRAIN", 5));
    let runs = env_number("CRASH_RUNS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mode = std::env::var("CRASH_MODE").unwrap_or_else(|_| "both".into());
    let (raw, library) = match mode.as_str() {
        "raw" => (true, false),
        "library" => (false, true),
        "both" => (true, true),
        "inbound" => {
            println!("crash: {n} messages at {rate}/s, b.test (receiving) killed (SIGKILL) and restarted after {at} were written");
            for run in 1..=runs {
                runtime.block_on(inbound_run(run, n, rate, at, drain));
            }
            return;
        }
        other => panic!("CRASH_MODE={other}: use raw, library, both or inbound"),
    };
    println!("crash: {n} messages at {rate}/s, a.test killed (SIGKILL) after {at} were written");
    if raw {
        println!("raw XEP-0114 backend, one gateway for a.test:");
        for run in 1..=runs {
            runtime.block_on(one_run(run, n, rate, at, drain));
        }
    }
    if library {
        println!("component library with acknowledgements, two gateways for a.test:");
        for run in 1..=runs {
            runtime.block_on(library_run(run, n, rate, at, drain));
        }
    }
}

/// `CRASH_MODE=library`: see the module docs.
async fn library_run(run: u64, n: u64, rate: u64, at: u64, drain: Duration) {
    use fedgate::component::client::{choose_gateway, ClientConfig, Component, Target};
    let dir = tempfile::tempdir().expect("tempdir");
    let targets = vec![
        Target::Tcp(A_COMPONENT.parse().unwrap()),
        Target::Tcp(A2_COMPONENT.parse().unwrap()),
    ];
    let labels: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let via = choose_gateway("b.test", &labels, &[true, true]).unwrap();
    let (via_ip, other_ip) = if via == 0 {
        (A_IP, A2_IP)
    } else {
        (A2_IP, A_IP)
    };
    let secret = "crash-bench-dialback-secret";
    let mut configs = Vec::new();
    for (name, ip, component) in [("a1", A_IP, A_COMPONENT), ("a2", A2_IP, A2_COMPONENT)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        configs.push(support::write_config(
            &d,
            &support::config_text("a.test", ip, component, &[("b.test", B_IP)]),
            secret,
        ));
    }
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    // b.test's dialback checks go to the instance that stays.
    let b_config = support::write_config(
        &b_dir,
        &support::config_text("b.test", B_IP, B_COMPONENT, &[("a.test", other_ip)]),
        secret,
    );
    let b = ChildGateway::start("b.test", &b_config, "CRASH_ENV");
    let mut a: Vec<ChildGateway> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| ChildGateway::start(&format!("a.test#{i}"), c, "CRASH_ENV"))
        .collect();

    let (delivered, receiver, _wr_b) = record_deliveries().await;
    let component = Component::start(ClientConfig::with_gateways("a.test", "secret", targets));
    let (sender, mut events, stopper) = component.into_parts();
    let mut up = 0;
    while up < 2 {
        match tokio::time::timeout(support::STALL, events.recv()).await {
            Ok(Some(fedgate::component::client::Event::Online { .. })) => up += 1,
            Ok(Some(_)) => {}
            other => panic!("the library did not come online: {other:?}"),
        }
    }
    // Nothing comes back, but the events must be taken.
    tokio::spawn(async move { while events.recv().await.is_some() {} });

    let per_tick = (rate / 1000).max(1);
    let mut written = 0u64;
    let mut tick = tokio::time::interval(PACE);
    let mut killed = false;
    while written < n {
        tick.tick().await;
        let upto = (written + per_tick).min(n);
        for seq in written..upto {
            sender
                .send_raw(format!(
                    "<message from='juliet@a.test/balcony' to='romeo@b.test/orchard' type='chat' \
                     id='{seq}'><body>Wherefore art thou, Romeo?</body></message>"
                ))
                .await
                .expect("the library runs");
        }
        written = upto;
        if !killed && written >= at {
            let child = &mut a[via].child;
            // SAFETY: kill sends a signal to our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = child.wait();
            killed = true;
        }
    }
    // Until everything arrived, or the drain time passed after the last was sent.
    let until = Instant::now() + drain;
    while Instant::now() < until && delivered.lock().unwrap().0.len() < n as usize {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    receiver.abort();
    let (unique, total) = {
        let d = delivered.lock().unwrap();
        (d.0.len() as u64, d.1)
    };
    let stats = sender.stats();
    let lost = written.saturating_sub(unique);
    println!(
        "run {run}: written {written} (the gateway {via_ip} killed after {at}), delivered {unique}, lost {lost}, duplicates {}; the library resent {}, {} acknowledged, {} unacknowledged",
        total - unique,
        stats.resent(),
        stats.acked(),
        stats.unacked(),
    );
    stopper.stop().await;
    drop(a);
    drop(b);
}

async fn one_run(run: u64, n: u64, rate: u64, at: u64, drain: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_config, b_config) = one_gateway_each(dir.path());
    let b = ChildGateway::start("b.test", &b_config, "CRASH_ENV");
    let mut a = ChildGateway::start("a.test", &a_config, "CRASH_ENV");

    let (delivered, receiver, _wr_b) = record_deliveries().await;
    let (_reader_a, mut wr_a) =
        attach_backend(A_COMPONENT.parse().unwrap(), "a.test", "secret").await;

    let per_tick = (rate / 1000).max(1);
    let mut written = 0u64;
    let mut killed_at = None;
    let mut tick = tokio::time::interval(PACE);
    let mut batch = Vec::new();
    'send: while written < n {
        tick.tick().await;
        let upto = (written + per_tick).min(n);
        messages(&mut batch, written..upto);
        if wr_a.write_all(&batch).await.is_err() {
            break 'send;
        }
        written = upto;
        if killed_at.is_none() && written >= at {
            // SAFETY: kill sends a signal to our own child's pid.
            unsafe {
                libc::kill(a.child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = a.child.wait();
            killed_at = Some((written, Instant::now()));
        }
    }
    tokio::time::sleep(drain).await;
    receiver.abort();
    let delivered = delivered.lock().unwrap().0.len() as u64;
    let (written_before_kill, _) = killed_at.unwrap_or((written, Instant::now()));
    let lost = written.saturating_sub(delivered);
    println!(
        "run {run}: written {written} ({written_before_kill} before the kill, {} after it before the socket failed), delivered {delivered}, lost {lost} ({:.2} % of written)",
        written - written_before_kill,
        100.0 * lost as f64 / written.max(1) as f64
    );
    drop(b);
}

/// `CRASH_MODE=inbound`: see the module docs.
async fn inbound_run(run: u64, n: u64, rate: u64, at: u64, drain: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_config, b_config) = one_gateway_each(dir.path());
    let b = ChildGateway::start("b.test", &b_config, "CRASH_ENV");
    let _a = ChildGateway::start("a.test", &a_config, "CRASH_ENV");

    // b.test's backend, attached again after the restart.
    let delivered = Deliveries::default();
    let seen = delivered.clone();
    let receiver = tokio::spawn(async move {
        loop {
            let Ok(tcp) = tokio::net::TcpStream::connect(B_COMPONENT).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (mut reader, _writer) = support::attach_backend_on(tcp, "b.test", "secret").await;
            while let Some(s) = reader.next_stanza().await {
                if let Some(seq) = s.id().and_then(|id| id.parse::<u64>().ok()) {
                    let mut seen = seen.lock().unwrap();
                    seen.1 += 1;
                    seen.0.insert(seq);
                }
            }
        }
    });
    // What comes back to a.test's backend: bounces.
    let (mut reader_a, mut wr_a) =
        attach_backend(A_COMPONENT.parse().unwrap(), "a.test", "secret").await;
    let bounced: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let returned = bounced.clone();
    let bounce_reader = tokio::spawn(async move {
        while let Some(s) = reader_a.next_stanza().await {
            if s.type_() == Some("error") {
                if let Some(seq) = s.id().and_then(|id| id.parse::<u64>().ok()) {
                    returned.lock().unwrap().insert(seq);
                }
            }
        }
    });

    let per_tick = (rate / 1000).max(1);
    let mut written = 0u64;
    let mut tick = tokio::time::interval(PACE);
    let mut batch = Vec::new();
    let mut b = Some(b);
    let mut restart = None;
    while written < n {
        tick.tick().await;
        let upto = (written + per_tick).min(n);
        messages(&mut batch, written..upto);
        wr_a.write_all(&batch)
            .await
            .expect("a.test reads its backend");
        written = upto;
        if written >= at {
            if let Some(mut dead) = b.take() {
                // SAFETY: kill sends a signal to our own child's pid.
                unsafe {
                    libc::kill(dead.child.id() as libc::pid_t, libc::SIGKILL);
                }
                let _ = dead.child.wait();
                drop(dead);
                let config = b_config.clone();
                // Started again off the sending loop, which goes on meanwhile.
                restart = Some(tokio::task::spawn_blocking(move || {
                    ChildGateway::start("b.test", &config, "CRASH_ENV")
                }));
            }
        }
    }
    let restarted = restart
        .expect("b.test was killed")
        .await
        .expect("b.test restarted");
    let accounted = |d: &Deliveries, b: &Mutex<HashSet<u64>>| {
        let d = d.lock().unwrap();
        let b = b.lock().unwrap();
        d.0.len() + b.iter().filter(|s| !d.0.contains(s)).count()
    };
    let until = Instant::now() + drain;
    while Instant::now() < until && accounted(&delivered, &bounced) < n as usize {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    receiver.abort();
    bounce_reader.abort();
    let (unique, total) = {
        let d = delivered.lock().unwrap();
        (d.0.len() as u64, d.1)
    };
    let bounced_n = bounced.lock().unwrap().len() as u64;
    let lost = n - accounted(&delivered, &bounced) as u64;
    println!(
        "run {run}: written {written}, delivered {unique}, duplicates {}, bounced {bounced_n}, lost {lost}",
        total - unique,
    );
    drop(restarted);
}

/// Juliet's messages numbered `seqs`, in place of what `batch` held.
fn messages(batch: &mut Vec<u8>, seqs: std::ops::Range<u64>) {
    batch.clear();
    for seq in seqs {
        write!(
            batch,
            "<message from='juliet@a.test/balcony' to='romeo@b.test/orchard' type='chat' \
             id='{seq}'><body>Wherefore art thou, Romeo?</body></message>"
        )
        .unwrap();
    }
}

/// The configurations of one a.test and one b.test gateway, routed to each other, in
/// folders of `dir`.
fn one_gateway_each(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let secret = "crash-bench-dialback-secret";
    let a_config = support::write_config(
        &a_dir,
        &support::config_text("a.test", A_IP, A_COMPONENT, &[("b.test", B_IP)]),
        secret,
    );
    let b_config = support::write_config(
        &b_dir,
        &support::config_text("b.test", B_IP, B_COMPONENT, &[("a.test", A_IP)]),
        secret,
    );
    (a_config, b_config)
}

/// What backend B received: the distinct sequence numbers, and every arrival (so that
/// duplicates show); filled by the returned task, from a raw backend attached to b.test.
type Deliveries = Arc<Mutex<(HashSet<u64>, u64)>>;

async fn record_deliveries() -> (
    Deliveries,
    tokio::task::JoinHandle<()>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let delivered = Deliveries::default();
    let (mut reader_b, writer_b) =
        attach_backend(B_COMPONENT.parse().unwrap(), "b.test", "secret").await;
    let seen = delivered.clone();
    let receiver = tokio::spawn(async move {
        while let Some(s) = reader_b.next_stanza().await {
            if let Some(seq) = s.id().and_then(|id| id.parse::<u64>().ok()) {
                let mut seen = seen.lock().unwrap();
                seen.1 += 1;
                seen.0.insert(seq);
            }
        }
    });
    (delivered, receiver, writer_b)
}
