//! The component library (`fedgate::component::client`) against a real gateway: handshake over
//! TCP and over the in-process link, stanzas both ways as bytes and as elements, refusal, and
//! reconnection after the link is cut.

use std::time::Duration;

use crate::harness::*;
use crate::proxy::TestProxy;
use fedgate::component::client::{ClientConfig, Component, Event, Target};
use fedgate::xml::{ns, Element};

const SECRET: &str = "echo-secret";

async fn expect_online(c: &mut Component) {
    loop {
        match tokio::time::timeout(WAIT, c.recv())
            .await
            .expect("event in time")
        {
            Some(Event::Online { .. }) => return,
            Some(Event::Offline { .. }) => continue,
            other => panic!("expected Online, got {other:?}"),
        }
    }
}

/// The next event, which must be [`Event::Offline`]; its reason.
async fn expect_offline(c: &mut Component) -> String {
    match tokio::time::timeout(WAIT, c.recv()).await.unwrap() {
        Some(Event::Offline { reason, .. }) => reason,
        other => panic!("expected Offline, got {other:?}"),
    }
}

/// A gateway for a.test with a backend `echo.a.test` (secret [`SECRET`]), and a raw backend
/// attached for a.test.
async fn gateway(dns: &TestDns) -> (Instance, RawStream) {
    let a = instance(dns, "a.test")
        .backend("echo.a.test", SECRET)
        .start()
        .await;
    let backend = a.backend().await;
    (a, backend)
}

async fn next_stanza(c: &mut Component) -> fedgate::xml::Stanza {
    loop {
        match tokio::time::timeout(WAIT, c.recv())
            .await
            .expect("event in time")
        {
            Some(Event::Stanza(s)) => return s,
            Some(_) => continue,
            None => panic!("component stopped"),
        }
    }
}

/// A raw backend for a.test sends to the component; the component echoes the payload back as
/// an element; the raw backend sees it with the component's address as `from`.
async fn echo_round_trip(backend: &mut RawStream, c: &mut Component) {
    backend
        .send("<message from='alice@a.test/r' to='echo.a.test' id='m1' type='chat'><body>hi &amp; bye</body></message>")
        .await;
    let got = next_stanza(c).await;
    assert_eq!(got.from(), Some("alice@a.test/r"));
    let el = got.element().unwrap();
    assert_eq!(el.ns, ns::COMPONENT);
    let reply = Element::new("message", ns::COMPONENT)
        .with_attr("from", "echo.a.test")
        .with_attr("to", el.attr("from").unwrap())
        .with_attr("type", "chat")
        .with_child(
            Element::new("body", ns::COMPONENT)
                .with_text(el.child("body", ns::COMPONENT).unwrap().text()),
        );
    c.sender().send(&reply).await.unwrap();
    assert_eq!(
        backend.next_text().await,
        "<message from='echo.a.test' to='alice@a.test/r' type='chat'><body>hi &amp; bye</body></message>"
    );
}

#[tokio::test]
async fn a_component_attaches_over_tcp_and_exchanges_stanzas() {
    let dns = TestDns::start().await;
    let (a, mut backend) = gateway(&dns).await;
    let mut c = Component::start(ClientConfig::new(
        "echo.a.test",
        SECRET,
        Target::Tcp(a.gw().component_addr),
    ));
    expect_online(&mut c).await;
    assert!(c.sender().is_online());
    echo_round_trip(&mut backend, &mut c).await;
    // Raw bytes go out unchanged.
    c.sender()
        .send_raw(&b"<iq from='echo.a.test' to='alice@a.test/r' id='x' type='result'/>"[..])
        .await
        .unwrap();
    assert_eq!(
        backend.next_text().await,
        "<iq from='echo.a.test' to='alice@a.test/r' id='x' type='result'/>"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_component_attaches_in_process() {
    let dns = TestDns::start().await;
    let (a, mut backend) = gateway(&dns).await;
    let mut c = Component::start(ClientConfig::new(
        "echo.a.test",
        SECRET,
        Target::Local(a.gw().component_link()),
    ));
    expect_online(&mut c).await;
    assert!(a.gw().router.component_attached("echo.a.test"));
    echo_round_trip(&mut backend, &mut c).await;
    // The gateway's own checks apply in process too: a spoofed `from` ends the session.
    c.sender()
        .send_raw(&b"<message from='eve@a.test' to='bob@b.test'/>"[..])
        .await
        .unwrap();
    let reason = expect_offline(&mut c).await;
    assert!(reason.contains("invalid-from"), "{reason}");
    c.stop().await;
}

#[tokio::test]
async fn a_wrong_secret_is_reported_and_retried() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend("echo.a.test", SECRET)
        .start()
        .await;
    let mut config = ClientConfig::new("echo.a.test", "wrong", Target::Tcp(a.gw().component_addr));
    config.backoff_initial = Duration::from_millis(20);
    let mut c = Component::start(config);
    for _ in 0..2 {
        let reason = expect_offline(&mut c).await;
        assert!(reason.contains("not-authorized"), "{reason}");
    }
    assert!(!a.gw().router.component_attached("echo.a.test"));
    c.stop().await;
}

#[tokio::test]
async fn a_cut_link_is_reestablished_and_queued_stanzas_go_out() {
    let dns = TestDns::start().await;
    let (a, mut backend) = gateway(&dns).await;
    let proxy = TestProxy::start(a.gw().component_addr).await;
    let mut config = ClientConfig::new("echo.a.test", SECRET, Target::Tcp(proxy.addr));
    config.backoff_initial = Duration::from_millis(50);
    let mut c = Component::start(config);
    expect_online(&mut c).await;
    proxy.cut();
    expect_offline(&mut c).await;
    // Sent while down: waits in the queue, written once the link is back.
    c.sender()
        .send_raw(&b"<message from='echo.a.test' to='alice@a.test' id='q'/>"[..])
        .await
        .unwrap();
    expect_online(&mut c).await;
    assert_eq!(proxy.connections(), 2);
    assert_eq!(
        backend.next_text().await,
        "<message from='echo.a.test' to='alice@a.test' id='q'/>"
    );
    echo_round_trip(&mut backend, &mut c).await;
    c.stop().await;
}

/// The example component (`examples/echo_component.rs`), its `answer` driven by a component
/// attached for echo.a.test.
#[allow(dead_code)]
#[path = "../../examples/echo_component.rs"]
mod echo_example;

#[tokio::test]
async fn the_echo_example_echoes_and_answers_pings_disco_and_the_rest() {
    let dns = TestDns::start().await;
    let (a, mut backend) = gateway(&dns).await;
    let mut c = Component::start(ClientConfig::new(
        "echo.a.test",
        SECRET,
        Target::Tcp(a.gw().component_addr),
    ));
    expect_online(&mut c).await;
    let sender = c.sender();
    for (request, answer) in [
        (
            "<message from='alice@a.test/r' to='echo.a.test' id='m1'><body>hi</body></message>",
            "<message from='echo.a.test' to='alice@a.test/r' type='normal' id='m1'><body>hi</body></message>",
        ),
        (
            "<iq from='alice@a.test/r' to='echo.a.test' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<iq from='echo.a.test' to='alice@a.test/r' type='result' id='p1'/>",
        ),
        (
            "<iq from='alice@a.test/r' to='echo.a.test' type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "<iq from='echo.a.test' to='alice@a.test/r' type='result' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='component' type='generic' name='echo'/><feature var='http://jabber.org/protocol/disco#info'/><feature var='urn:xmpp:ping'/></query></iq>",
        ),
    ] {
        backend.send(request).await;
        echo_example::answer(&next_stanza(&mut c).await, &sender).await;
        assert_eq!(backend.next_text().await, answer);
    }
    // Anything else it does not do: service-unavailable (RFC 6120 §8.4).
    backend
        .send("<iq from='alice@a.test/r' to='echo.a.test' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    echo_example::answer(&next_stanza(&mut c).await, &sender).await;
    let e = backend.next().await;
    assert_eq!(
        (e.type_(), e.id(), e.to()),
        (Some("error"), Some("v1"), Some("alice@a.test/r")),
        "{}",
        text(e.raw())
    );
    assert!(
        text(e.raw()).contains("<service-unavailable "),
        "{}",
        text(e.raw())
    );
    c.stop().await;
}

/// Several gateway instances for one deployment (two for a.test, each with the raw a.test
/// backend): the component attaches to both, receives from both, sends the stanzas for one
/// destination domain through the gateway the rendezvous hash picks (in order), and moves
/// them to the other gateway when that one stops.
#[tokio::test]
async fn a_component_attached_to_two_gateways_uses_one_per_domain_and_fails_over() {
    use fedgate::component::client::choose_gateway;
    let dns = TestDns::start().await;
    let (gw1, mut backend1) = gateway(&dns).await;
    let (gw2, mut backend2) = gateway(&dns).await;
    let targets = vec![
        Target::Tcp(gw1.gw().component_addr),
        Target::Tcp(gw2.gw().component_addr),
    ];
    let labels: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let mut config = ClientConfig::with_gateways("echo.a.test", SECRET, targets);
    config.backoff_initial = Duration::from_millis(50);
    let mut c = Component::start(config);
    expect_online(&mut c).await;
    expect_online(&mut c).await;
    assert!(gw1.gw().router.component_attached("echo.a.test"));
    assert!(gw2.gw().router.component_attached("echo.a.test"));

    // Received from both.
    for backend in [&mut backend1, &mut backend2] {
        backend
            .send("<message from='alice@a.test/r' to='echo.a.test' id='in'/>")
            .await;
        assert_eq!(next_stanza(&mut c).await.id(), Some("in"));
    }

    // Sent through the chosen one, in order.
    let chosen = choose_gateway("a.test", &labels, &[true, true]).unwrap();
    let message = |i: usize| format!("<message from='echo.a.test' to='alice@a.test' id='m{i}'/>");
    for i in 0..20 {
        c.sender().send_raw(message(i)).await.unwrap();
    }
    let (mut stopped, mut other_backend) = if chosen == 0 {
        for i in 0..20 {
            assert_eq!(backend1.next_text().await, message(i));
        }
        (gw1, backend2)
    } else {
        for i in 0..20 {
            assert_eq!(backend2.next_text().await, message(i));
        }
        (gw2, backend1)
    };

    // The chosen gateway stops: its link goes down and the other one carries the domain.
    stopped.stop().await;
    match tokio::time::timeout(WAIT, c.recv()).await.unwrap() {
        Some(Event::Offline { gateway, .. }) => assert_eq!(gateway, labels[chosen]),
        other => panic!("expected Offline, got {other:?}"),
    }
    assert!(c.sender().is_online());
    for i in 20..40 {
        c.sender().send_raw(message(i)).await.unwrap();
    }
    for i in 20..40 {
        assert_eq!(other_backend.next_text().await, message(i));
    }
    c.stop().await;
    drop(stopped);
}
