//! Several gateway instances for one domain (issue 17): two instances of a.test sharing the
//! dialback secret, both listed by SRV, with a.test's backend (the component library)
//! attached to both, and a peer b.test.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

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
    let component = Component::start(ClientConfig::with_gateways("a.test", secret, gateways));
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
