//! Several gateway instances for one domain (issue 17): two instances of a.test sharing the
//! dialback secret, both listed by SRV, with a.test's backend (the component library)
//! attached to both, and a peer b.test.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fedgate::component::client::{choose_gateway, ClientConfig, Component, Event, Sender, Target};
use tokio::sync::mpsc;

use crate::certs::CertSpec;
use crate::harness::*;
use crate::proxy::TestProxy;

const SECRET: &str = "the-deployment-wide-dialback-secret";

/// A component attached to every gateway of `gateways`: its sender, the ids of the stanzas
/// it receives (in order), and a signal per link that comes up.
fn attach(
    secret: &str,
    gateways: Vec<Target>,
) -> (Sender, mpsc::UnboundedReceiver<String>, mpsc::Receiver<()>) {
    attach_paced(secret, gateways, 1024, Duration::ZERO)
}

/// [`attach`], with the library's event queue `queue_len` long and an application that
/// takes `pace` for each event: the library acknowledges a stanza when the next event is
/// asked for, so it acknowledges at that pace, and soon reads at it too.
fn attach_paced(
    secret: &str,
    gateways: Vec<Target>,
    queue_len: usize,
    pace: Duration,
) -> (Sender, mpsc::UnboundedReceiver<String>, mpsc::Receiver<()>) {
    let mut config = ClientConfig::with_gateways("a.test", secret, gateways);
    config.queue_len = queue_len;
    let component = Component::start(config);
    let (sender, mut events, stopper) = component.into_parts();
    let (ids_tx, ids) = mpsc::unbounded_channel();
    let (online_tx, online) = mpsc::channel(8);
    tokio::spawn(async move {
        let _links = stopper;
        while let Some(event) = events.recv().await {
            match event {
                Event::Stanza(s) => {
                    if let Some(id) = s.id() {
                        let _ = ids_tx.send(id.to_owned());
                    }
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                }
                Event::Online { .. } => {
                    let _ = online_tx.send(()).await;
                }
                Event::Offline { .. } => {}
            }
        }
    });
    (sender, ids, online)
}

/// A dialback key made by one instance verifies on the other (b.test's connect-back lands on
/// the instance SRV lists first, while the stream came from the other one), and when the
/// link to the instance b.test streams to is cut in the middle of a burst and that instance
/// stops, b.test goes on with the other (which has no XEP-0198 state for the stream, so the
/// resumption fails cleanly) and every message reaches the backend, those delivered but not
/// acknowledged at the cut possibly twice.
#[tokio::test]
async fn two_instances_verify_each_others_keys_and_a_stopped_one_loses_nothing() {
    let dns = TestDns::start().await;
    let mut gws = Vec::new();
    for _ in 0..2 {
        gws.push(
            // Self-signed, so that b.test cannot take the certificate as proof (XEP-0178,
            // XEP-0344) and verifies each key by connecting back.
            instance(&dns, "a.test")
                .cert(CertSpec {
                    self_signed: true,
                    ..CertSpec::default()
                })
                .dialback_secret(SECRET)
                .unlisted()
                .start()
                .await,
        );
    }
    let ips: Vec<IpAddr> = gws.iter().map(|g| g.ip).collect();
    let components: Vec<SocketAddr> = gws.iter().map(|g| g.gw().component_addr).collect();
    let targets: Vec<Target> = components.iter().map(|a| Target::Tcp(*a)).collect();
    let labels: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    // The backend sends to b.test through `via`; SRV lists the other instance first, so that
    // b.test's connect-back asks an instance that did not make the key.
    let via = choose_gateway("b.test", &labels, &[true, true]).unwrap();
    let first = 1 - via;
    // `first` is reached through a proxy, so that its link can be cut like a crash would.
    let proxy = TestProxy::start(gws[first].s2s_addr()).await;
    dns.add("gw-first.a.test", proxy.addr.ip());
    dns.add("gw-second.a.test", ips[via]);
    dns.add_srv(
        "_xmpp-server._tcp.a.test",
        0,
        0,
        proxy.addr.port(),
        "gw-first.a.test",
    );
    dns.add_srv("_xmpp-server._tcp.a.test", 10, 0, 5269, "gw-second.a.test");

    // bidi = false: b.test's answers must take its own outbound link to a.test's instances
    // (SRV order, the cut, the failed resumption), not ride back on the stream from `via`.
    let b = instance(&dns, "b.test")
        .s2s("retry_initial_delay = \"100ms\"\nretry_max_delay = \"300ms\"\nbidi = false")
        .start()
        .await;
    let mut b_backend = b.backend().await;
    let secret = gws[0].component_secret.clone();
    let (sender, mut ids, mut online) = attach(&secret, targets);
    for _ in 0..2 {
        tokio::time::timeout(WAIT, online.recv())
            .await
            .expect("both links up");
    }

    // 1. a.test → b.test leaves through `via` and is verified by dialback at `first`.
    sender
        .send_raw("<message from='a.test' to='bob@b.test' id='hello'/>")
        .await
        .unwrap();
    let hello = b_backend.next().await;
    assert_eq!(hello.id(), Some("hello"), "{}", text(hello.raw()));
    const VERIFIED: &str = "fedgate_dialback_total{result=\"valid\",role=\"verify\"}";
    assert_eq!(
        metric_or_zero(&gws[first].metrics().await, VERIFIED),
        1.0,
        "the connect-back went to the other instance"
    );
    assert_eq!(metric_or_zero(&gws[via].metrics().await, VERIFIED), 0.0);

    // 2. b.test → a.test streams to `first` (SRV's first). After 50 have arrived the link is
    //    cut, without a final acknowledgement, and `first` stops: b.test goes on with `via`,
    //    where its resumption fails cleanly, and resends what was not acknowledged.
    //    (The link is up first: while it connects, at most queue_max_stanzas may wait.)
    b_backend
        .send("<message from='bob@b.test' to='a.test' id='warm'/>")
        .await;
    let warm = tokio::time::timeout(WAIT, ids.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(warm, "warm");
    const N: usize = 2000;
    let mut burst = String::new();
    for i in 0..N {
        burst.push_str(&format!(
            "<message from='bob@b.test' to='a.test' id='m{i}'><body>{i}</body></message>"
        ));
    }
    b_backend.send(&burst).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    while seen.len() < 50 {
        let id = tokio::time::timeout(WAIT, ids.recv())
            .await
            .unwrap()
            .unwrap();
        *seen.entry(id).or_default() += 1;
    }
    proxy.cut();
    gws[first].stop().await;
    while seen.len() < N {
        let Ok(Some(id)) = tokio::time::timeout(WAIT, ids.recv()).await else {
            panic!(
                "{} of {N} messages arrived; missing e.g. {:?}",
                seen.len(),
                (0..N)
                    .map(|i| format!("m{i}"))
                    .find(|id| !seen.contains_key(id))
            );
        };
        *seen.entry(id).or_default() += 1;
    }
    // Delivered but not acknowledged when the link was cut: XEP-0198 without resumption
    // resends those too (at least once).
    let twice = seen.values().filter(|n| **n > 1).count();
    let resent = metric(
        &b.metrics().await,
        "fedgate_outbound_stanzas_total{event=\"resent\"}",
    );
    assert!(resent > 0.0, "the cut left nothing unacknowledged");
    assert!(
        twice as f64 <= resent,
        "{twice} arrived twice, {resent} were resent"
    );
    eprintln!("{N} sent, all delivered; {resent} resent, {twice} of them twice");
    // b.test did try to resume at the other instance, which refused it cleanly.
    let resume_failed = |direction: &str| {
        format!("fedgate_s2s_sm_total{{direction=\"{direction}\",event=\"resume_failed\"}}")
    };
    assert_eq!(metric(&b.metrics().await, &resume_failed("outbound")), 1.0);
    assert_eq!(
        metric(&gws[via].metrics().await, &resume_failed("inbound")),
        1.0
    );
}

/// A child `fedgate run` for a.test on `ip`, with the test CA's certificate for a.test and
/// `SECRET` as its dialback secret: the process (killed on drop) and its component listener.
fn child_gateway(
    dns: &TestDns,
    dir: &std::path::Path,
    ip: IpAddr,
) -> (crate::binary::KillOnDrop, SocketAddr) {
    use std::os::unix::fs::PermissionsExt as _;
    let (cert, key) = crate::certs::ca().issue(&CertSpec::for_names(&["a.test"]), dir, "tls");
    let secret = dir.join("dialback.secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = dir.join("fedgate.toml");
    std::fs::write(
        &file,
        format!(
            "[s2s]\nlisten = [\"{ip}:5269\"]\ndirect_tls_listen = []\ndialback_secret_file = \"dialback.secret\"\n\
             [dns]\nnameservers = [\"{dns}\"]\n\
             [tls]\nwebpki_roots = false\nca_files = [\"{ca}\"]\n\
             [[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             [component]\nlisten = \"127.0.0.1:0\"\n\
             [[component.backend]]\ndomain = \"a.test\"\nsecret = \"crash-secret\"\n\
             [metrics]\nenabled = false\n",
            dns = dns.addr,
            ca = crate::certs::ca().ca_file.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    let (child, lines) = crate::binary::spawn_fedgate(&file);
    let child = crate::binary::KillOnDrop(Some(child));
    let line = crate::binary::wait_for_line(&lines, "components listening on ");
    let addr = line
        .rsplit(' ')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("the component listener's address in the log line");
    crate::binary::wait_for_line(&lines, "fedgate ready");
    // Keep reading its log, so that it never blocks writing it.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// Issue 18, item 5: two gateway processes for a.test, the component library attached to
/// both with acknowledgements, a peer b.test (fedgate, with XEP-0198) whose backend counts
/// what arrives. Messages to b.test flow at a steady rate through the gateway b.test hashes
/// to; that process is killed with SIGKILL in the middle. Every message arrives at least
/// once: what the dead gateway had not had confirmed by b.test is sent again through the
/// other one (duplicates counted and reported, none lost).
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_with_sigkill_mid_traffic_loses_nothing() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut b_backend = b.backend().await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let ips: Vec<IpAddr> = (0..2).map(|_| next_loopback()).collect();
    let mut children = Vec::new();
    let mut targets = Vec::new();
    for (dir, ip) in dirs.iter().zip(&ips) {
        let (child, addr) = child_gateway(&dns, dir.path(), *ip);
        children.push(child);
        targets.push(Target::Tcp(addr));
    }
    let labels: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let via = choose_gateway("b.test", &labels, &[true, true]).unwrap();
    // A dialback check by b.test lands on the instance that stays.
    dns.add("a.test", ips[1 - via]);
    let (sender, _ids, mut online) = attach("crash-secret", targets);
    for _ in 0..2 {
        tokio::time::timeout(WAIT, online.recv())
            .await
            .expect("both links up");
    }

    // 4,000 messages at 2,000/s (20 every 10 ms); the gateway that carries them is killed
    // once half were handed to the library.
    const N: usize = 4000;
    const KILL_AT: usize = N / 2;
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel();
    let traffic = {
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut killed_tx = Some(killed_tx);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0..N {
                if i % 20 == 0 {
                    tick.tick().await;
                }
                if i == KILL_AT {
                    let _ = killed_tx.take().unwrap().send(());
                }
                sender
                    .send_raw(format!(
                        "<message from='juliet@a.test' to='romeo@b.test' id='m{i}'><body>{i}</body></message>"
                    ))
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut killed_rx = Some(killed_rx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < N {
        if let Some(rx) = killed_rx.as_mut() {
            if rx.try_recv().is_ok() {
                killed_rx = None;
                let child = children[via].0.as_mut().unwrap();
                child.kill().expect("SIGKILL the gateway");
                child.wait().unwrap();
                eprintln!(
                    "killed the gateway carrying b.test after {} arrived",
                    seen.len()
                );
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let stanza = match tokio::time::timeout(left, b_backend.next()).await {
            Ok(s) => s,
            Err(_) => panic!(
                "{} of {N} arrived; missing e.g. {:?}; library: {} acknowledged, {} resent, {} unacknowledged",
                seen.len(),
                (0..N).map(|i| format!("m{i}")).find(|id| !seen.contains_key(id)),
                sender.stats().acked(),
                sender.stats().resent(),
                sender.stats().unacked(),
            ),
        };
        if let Some(id) = stanza.id() {
            *seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    traffic.await.unwrap();
    assert!(killed_rx.is_none(), "the gateway was killed mid-traffic");
    let twice: usize = seen.values().map(|n| n - 1).sum();
    let stats = sender.stats();
    eprintln!(
        "{N} sent, {N} delivered (0 lost), {twice} duplicates; the library resent {} and has {} acknowledged",
        stats.resent(),
        stats.acked()
    );
    assert!(stats.resent() > 0, "nothing was in flight at the kill");
    assert!(
        twice as u64 <= stats.resent(),
        "{twice} duplicates, {} resent",
        stats.resent()
    );
    eventually(
        "everything is acknowledged by the gateway that stayed",
        || stats.unacked() == 0,
    )
    .await;
}

/// Issue 18, the receiving side: b.test (fedgate, XEP-0198) sends a burst to a.test, whose
/// two gateway processes are listed by SRV. a.test's backend, the component library on
/// both, takes 1 ms per message, so that the gateway b.test streams to (SRV's first) always
/// holds some of the burst; that gateway is killed with SIGKILL. A stanza counts in its `h`
/// only once it has left the gateway (here: once the backend acknowledged it), so b.test
/// still keeps every one the dead gateway held, and sends them again through the other one:
/// every message arrives, some twice. (Counting `h` on arrival, as before, the same test
/// loses the 51 the gateway still had queued for the backend, in each of two runs.)
#[tokio::test(flavor = "multi_thread")]
async fn a_receiving_gateway_killed_with_sigkill_loses_nothing_it_had_taken() {
    let dns = TestDns::start().await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let ips: Vec<IpAddr> = (0..2).map(|_| next_loopback()).collect();
    let mut children = Vec::new();
    let mut targets = Vec::new();
    for (i, (dir, ip)) in dirs.iter().zip(&ips).enumerate() {
        let (child, addr) = child_gateway(&dns, dir.path(), *ip);
        children.push(child);
        targets.push(Target::Tcp(addr));
        dns.add(&format!("gw{i}.a.test"), *ip);
    }
    dns.add_srv("_xmpp-server._tcp.a.test", 0, 0, 5269, "gw0.a.test");
    dns.add_srv("_xmpp-server._tcp.a.test", 10, 0, 5269, "gw1.a.test");
    let b = instance(&dns, "b.test")
        .s2s("retry_initial_delay = \"100ms\"\nretry_max_delay = \"300ms\"\nbidi = false")
        .start()
        .await;
    let mut b_backend = b.backend().await;
    let (_sender, mut ids, mut online) =
        attach_paced("crash-secret", targets, 16, Duration::from_millis(1));
    for _ in 0..2 {
        tokio::time::timeout(WAIT, online.recv())
            .await
            .expect("both links up");
    }
    // The link to gw0 is up before the burst.
    b_backend
        .send("<message from='bob@b.test' to='juliet@a.test' id='warm'/>")
        .await;
    let warm = tokio::time::timeout(WAIT, ids.recv()).await.unwrap();
    assert_eq!(warm.as_deref(), Some("warm"));

    const N: usize = 2000;
    const KILL_AT: usize = 300;
    let mut burst = String::new();
    for i in 0..N {
        burst.push_str(&format!(
            "<message from='bob@b.test' to='juliet@a.test' id='m{i}'><body>{i}</body></message>"
        ));
    }
    b_backend.send(&burst).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    while seen.len() < N {
        if seen.len() == KILL_AT && children[0].0.is_some() {
            let mut gw0 = children[0].0.take().unwrap();
            gw0.kill().expect("SIGKILL gw0");
            gw0.wait().unwrap();
        }
        let Ok(Some(id)) = tokio::time::timeout(Duration::from_secs(15), ids.recv()).await else {
            panic!(
                "{} of {N} messages arrived (gw0 killed after {KILL_AT}); missing e.g. {:?}; b.test: {} resent",
                seen.len(),
                (0..N).map(|i| format!("m{i}")).find(|id| !seen.contains_key(id)),
                metric_or_zero(&b.metrics().await, "fedgate_outbound_stanzas_total{event=\"resent\"}"),
            );
        };
        *seen.entry(id).or_default() += 1;
    }
    let twice: usize = seen.values().map(|n| n - 1).sum();
    let resent = metric(
        &b.metrics().await,
        "fedgate_outbound_stanzas_total{event=\"resent\"}",
    );
    eprintln!("{N} sent, {N} delivered (0 lost), {twice} twice; b.test resent {resent}");
    assert!(
        resent > 0.0,
        "gw0 held nothing unacknowledged when it was killed"
    );
    assert!(twice as f64 <= resent, "{twice} twice, {resent} resent");
}
