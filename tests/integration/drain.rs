//! Rolling restarts lose nothing (issue 17, item 3): three gateway instances of a.test share
//! the dialback secret and are all listed by SRV; a.test's backend (the component library) is
//! attached to all three; b.test (another fedgate, XEP-0198 on) is the peer. With traffic both
//! ways at a steady rate, each instance in turn is stopped (the drain: its backend moves new
//! traffic to the others, its inbound streams end, its queues are written and acknowledged)
//! and started again. Every stanza sent arrives exactly once, and nothing bounces.

use std::time::Duration;

use fedgate::component::client::Target;
use fedgate_test_support::library::{attach, steady, Received, Seen};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

const SECRET: &str = "the-deployment-wide-dialback-secret";

/// Both backends' events and what they received.
struct Both {
    a: mpsc::UnboundedReceiver<Seen>,
    b: mpsc::UnboundedReceiver<Seen>,
    to_a: Received,
    to_b: Received,
}

impl Both {
    /// Takes what both backends see for `how_long`; the gateways a.test's backend attached to
    /// meanwhile.
    async fn settle(&mut self, how_long: Duration) -> Vec<String> {
        let until = tokio::time::Instant::now() + how_long;
        let mut came_up = Vec::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return came_up,
                Some(seen) = self.a.recv() => came_up.extend(self.to_a.take(seen)),
                Some(seen) = self.b.recv() => { self.to_b.take(seen); }
            }
        }
    }
}

#[tokio::test]
async fn a_rolling_restart_of_three_instances_delivers_everything_once_and_bounces_nothing() {
    let dns = TestDns::start().await;
    let mut gws = Vec::new();
    for i in 0..3 {
        let gw = instance(&dns, "a.test")
            .dialback_secret(SECRET)
            .component_port(free_port())
            .unlisted()
            .start()
            .await;
        let host = format!("gw{i}.a.test");
        dns.add(&host, gw.ip);
        dns.add_srv("_xmpp-server._tcp.a.test", 10 * i as u16, 0, 5269, &host);
        gws.push(gw);
    }
    let b = instance(&dns, "b.test")
        .s2s("retry_initial_delay = \"100ms\"\nretry_max_delay = \"300ms\"")
        .start()
        .await;

    let targets: Vec<Target> = gws
        .iter()
        .map(|g| Target::Tcp(g.gw().component_addr))
        .collect();
    let labels: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let (a_sender, mut a_seen) = attach("a.test", &gws[0].component_secret, targets);
    let (b_sender, mut b_seen) = attach(
        "b.test",
        &b.component_secret,
        vec![Target::Tcp(b.gw().component_addr)],
    );
    let mut to_a = Received::default();
    let mut to_b = Received::default();
    let mut up = 0;
    while up < 3 {
        let seen = tokio::time::timeout(WAIT, a_seen.recv())
            .await
            .unwrap()
            .unwrap();
        up += usize::from(to_a.take(seen).is_some());
    }
    let b_up = tokio::time::timeout(WAIT, b_seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(to_b.take(b_up).is_some());

    let stop = CancellationToken::new();
    // Clones: a component stops when every sender of it is gone.
    let a_to_b = tokio::spawn(steady(
        a_sender.clone(),
        "alice@a.test".into(),
        "bob@b.test".into(),
        "a",
        stop.clone(),
    ));
    let b_to_a = tokio::spawn(steady(
        b_sender.clone(),
        "bob@b.test".into(),
        "alice@a.test".into(),
        "b",
        stop.clone(),
    ));
    let mut seen = Both {
        a: a_seen,
        b: b_seen,
        to_a,
        to_b,
    };
    seen.settle(Duration::from_millis(500)).await;
    for (k, label) in labels.iter().enumerate() {
        // Stopping (the drain and the shutdown) runs while traffic goes on and is read.
        let mut gw = gws.remove(k);
        let stopping = tokio::spawn(async move {
            gw.stop().await;
            gw
        });
        while !stopping.is_finished() {
            let came_up = seen.settle(Duration::from_millis(50)).await;
            assert!(
                came_up.is_empty(),
                "a link came up during a stop: {came_up:?}"
            );
        }
        let mut gw = stopping.await.unwrap();
        // Down for a while: b.test's stream moves to another instance.
        seen.settle(Duration::from_millis(500)).await;
        gw.restart().await;
        gws.insert(k, gw);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the backend did not reattach to gw{k}"
            );
            let came_up = seen.settle(Duration::from_millis(50)).await;
            if came_up.contains(label) {
                break;
            }
        }
        seen.settle(Duration::from_millis(500)).await;
    }
    stop.cancel();
    let sent_to_b = a_to_b.await.unwrap();
    let sent_to_a = b_to_a.await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while (seen.to_a.ids.len() < sent_to_a || seen.to_b.ids.len() < sent_to_b)
        && tokio::time::Instant::now() < deadline
    {
        seen.settle(Duration::from_millis(50)).await;
    }
    // Anything arriving twice would come now.
    seen.settle(Duration::from_millis(500)).await;
    // A bounce goes back to the sender: a.test's bounces are of what it sent to b.test.
    let directions = [
        (
            "a.test → b.test",
            sent_to_b,
            &seen.to_b,
            &seen.to_a.bounces,
            "a",
        ),
        (
            "b.test → a.test",
            sent_to_a,
            &seen.to_a,
            &seen.to_b.bounces,
            "b",
        ),
    ];
    for (what, sent, received, bounced, _) in directions {
        eprintln!(
            "{what}: {sent} sent, {} delivered, {} of them twice, {} bounced",
            received.ids.len(),
            received.twice().len(),
            bounced.len()
        );
    }
    assert!(
        sent_to_a > 500 && sent_to_b > 500,
        "too little traffic to tell"
    );
    for (what, sent, received, bounced, prefix) in directions {
        assert!(bounced.is_empty(), "{what}: bounced {bounced:?}");
        let missing: Vec<String> = (0..sent)
            .map(|i| format!("{prefix}{i}"))
            .filter(|id| !received.ids.contains_key(id))
            .collect();
        assert!(
            missing.is_empty(),
            "{what}: {} of {sent} missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert!(received.twice().is_empty(), "{what}: delivered twice");
        assert_eq!(received.ids.len(), sent, "{what}: unexpected ids");
    }
}

/// Attaches a raw backend for a.test that declares the drain protocol on its header.
async fn declaring_backend(a: &Instance) -> RawStream {
    let mut s = RawStream::connect(a.gw().component_addr).await;
    s.send(
        "<stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:drain='urn:fedgate:drain:0' to='a.test'>",
    )
    .await;
    let id = s.expect_header().await.id.unwrap();
    let digest = fedgate::dialback::component_handshake(&id, &a.component_secret);
    s.send(&format!("<handshake>{digest}</handshake>")).await;
    assert_eq!(&s.next().await.raw()[..], b"<handshake/>");
    s
}

/// The component stream's drain protocol on the wire (docs/deployment.md): a backend that
/// declares it gets the notice first; until it answers, the gateway goes on routing what it
/// sends and delivering to it, and the stop waits; a plain XEP-0114 backend sees nothing new
/// (the stanzas, then `<system-shutdown/>`) and holds nothing up.
#[tokio::test]
async fn a_declaring_backend_gets_the_notice_and_the_stop_waits_for_its_answer() {
    let dns = TestDns::start().await;
    let mut a = instance(&dns, "a.test")
        .backend("plain.test", "plain-secret")
        .start()
        .await;
    let mut declaring = declaring_backend(&a).await;
    let mut plain = a.backend_for("plain.test", "plain-secret").await;
    let stopping = tokio::spawn(async move {
        a.stop().await;
    });
    assert_eq!(
        declaring.next_text().await,
        "<drain xmlns='urn:fedgate:drain:0'/>"
    );
    // Both ways still work while the gateway waits for the answer.
    declaring
        .send("<message from='alice@a.test' to='p@plain.test' id='during'/>")
        .await;
    assert_eq!(plain.next().await.id(), Some("during"));
    plain
        .send("<message from='p@plain.test' to='alice@a.test' id='back'/>")
        .await;
    assert_eq!(declaring.next().await.id(), Some("back"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the stop did not wait for the answer"
    );
    declaring
        .send("<drained xmlns='urn:fedgate:drain:0'/>")
        .await;
    // Not drain_timeout (10 s): the plain backend is not waited for.
    tokio::time::timeout(Duration::from_secs(3), stopping)
        .await
        .expect("the stop went on once the declaring backend answered")
        .unwrap();
    assert_eq!(declaring.expect_stream_error().await, "system-shutdown");
    let end = plain.next().await;
    assert_eq!(end.name(), "error", "{}", text(end.raw()));
    assert!(
        text(end.raw()).contains("<system-shutdown "),
        "{}",
        text(end.raw())
    );
}

/// A declaring backend that never answers holds the stop up for `drain_timeout`, no longer;
/// meanwhile inbound s2s streams have ended at once (so that their peers go to another
/// instance) and the s2s listener refuses new connections.
#[tokio::test(start_paused = true)]
async fn a_backend_that_never_answers_holds_the_stop_for_drain_timeout() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut a = instance(&dns, "a.test")
        .s2s("drain_timeout = \"1s\"")
        .start()
        .await;
    let s2s_addr = a.s2s_addr();
    let mut silent = declaring_backend(&a).await;
    let mut inbound = authenticated_s2s(s2s_addr, &b, "a.test").await;
    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(async move {
        a.stop().await;
    });
    assert_eq!(
        silent.next_text().await,
        "<drain xmlns='urn:fedgate:drain:0'/>"
    );
    assert_eq!(inbound.expect_stream_error().await, "system-shutdown");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the inbound stream ended only after {:?}",
        started.elapsed()
    );
    let mut refused = false;
    for _ in 0..10 {
        if tokio::net::TcpStream::connect(s2s_addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the s2s listener still accepts during the drain");
    assert_eq!(silent.expect_stream_error().await, "system-shutdown");
    let took = started.elapsed();
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "stopped after {took:?}"
    );
}
