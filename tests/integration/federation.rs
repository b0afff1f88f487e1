//! Two fedgate instances federating by dialback, with a raw backend on each.

use crate::certs::CertSpec;
use crate::harness::*;

#[tokio::test]
async fn messages_iqs_and_presence_flow_both_ways_byte_for_byte() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;

    // A message with a foreign-namespace payload and a prefixed payload, a → b.
    let message = "<message from='alice@a.test/home' to='bob@b.test' type='chat' id='m1'><body>h\u{e9}llo &amp; &lt;you&gt; \u{2603}</body><x xmlns='urn:example:foreign'><y a='1'/></x><p:data xmlns:p='urn:example:prefixed'><p:item>v</p:item></p:data></message>";
    backend_a.send(message).await;
    assert_eq!(backend_b.next_text().await, message);

    // An iq get b → a and its result a → b.
    let iq = "<iq from='bob@b.test/phone' to='a.test' type='get' id='q1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>";
    backend_b.send(iq).await;
    assert_eq!(backend_a.next_text().await, iq);
    let result = "<iq from='a.test' to='bob@b.test/phone' type='result' id='q1'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' type='im'/></query></iq>";
    backend_a.send(result).await;
    assert_eq!(backend_b.next_text().await, result);

    // Presence both ways.
    let presence = "<presence from='alice@a.test/home' to='bob@b.test' type='subscribe'/>";
    backend_a.send(presence).await;
    assert_eq!(backend_b.next_text().await, presence);
    let presence = "<presence from='bob@b.test' to='alice@a.test' type='subscribed'/>";
    backend_b.send(presence).await;
    assert_eq!(backend_a.next_text().await, presence);

    // Many in order.
    for i in 0..500 {
        backend_a
            .send(&format!(
                "<message from='alice@a.test' to='bob@b.test' id='n{i}'><body>{i}</body></message>"
            ))
            .await;
    }
    for i in 0..500 {
        let s = backend_b.next().await;
        assert_eq!(s.id(), Some(format!("n{i}").as_str()));
    }

    let metrics = b.metrics().await;
    assert!(
        metrics.contains(
            "fedgate_s2s_auth_total{direction=\"inbound\",method=\"external\",result=\"success\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "fedgate_stanzas_total{direction=\"inbound\",kind=\"message\",link=\"s2s\"} 501"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stanza_with_the_server_namespace_declared_reaches_the_backend_in_the_component_namespace(
) {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let _backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    // A raw s2s peer authenticated as a.test sends a stanza that names jabber:server itself.
    let mut peer = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    peer.send("<message xmlns='jabber:server' from='alice@a.test' to='bob@b.test'><body>x</body></message>").await;
    assert_eq!(
        backend_b.next_text().await,
        "<message xmlns='jabber:component:accept' from='alice@a.test' to='bob@b.test'><body>x</body></message>"
    );
}

#[tokio::test]
async fn an_impostor_with_another_secret_gets_invalid_and_its_stanzas_bounce() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    // The impostor claims a.test, with its own secret and a self-signed certificate (no CA
    // would issue it one); DNS sends verifiers to the real a.test.
    let impostor = instance(&dns, "a.test")
        .cert(CertSpec {
            self_signed: true,
            ..CertSpec::default()
        })
        .dialback_secret("an entirely different secret value")
        .unlisted()
        .start()
        .await;
    let mut backend_b = b.backend().await;
    let mut backend_evil = impostor.backend().await;

    backend_evil
        .send("<message from='mallory@a.test' to='bob@b.test' id='spoof'><body>trust me</body></message>")
        .await;
    let bounce = backend_evil.next().await;
    assert_eq!(bounce.type_(), Some("error"));
    assert_eq!(bounce.id(), Some("spoof"));
    assert!(
        text(bounce.raw())
            .contains("<internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
        "{}",
        text(bounce.raw())
    );

    // The real a.test still federates, and bob never saw the spoofed message.
    let mut backend_a = a.backend().await;
    backend_a
        .send("<message from='alice@a.test' to='bob@b.test' id='real'><body>hi</body></message>")
        .await;
    let got = backend_b.next().await;
    assert_eq!(got.id(), Some("real"));
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("fedgate_dialback_total{result=\"invalid\",role=\"result\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_domain_without_dns_records_bounces_and_nothing_is_lost() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;

    let total = 200;
    for i in 0..total {
        let to = if i % 3 == 0 {
            "carol@nowhere.test"
        } else {
            "bob@b.test"
        };
        backend_a
            .send(&format!(
                "<message from='alice@a.test' to='{to}' id='s{i}'><body>{i}</body></message>"
            ))
            .await;
    }
    let ids = |nowhere: bool| -> Vec<String> {
        (0..total)
            .filter(|i| (i % 3 == 0) == nowhere)
            .map(|i| format!("s{i}"))
            .collect()
    };
    let (mut to_nowhere, to_b) = (ids(true), ids(false));
    let mut bounced = Vec::new();
    while bounced.len() < to_nowhere.len() {
        let s = backend_a.next().await;
        assert_eq!(s.type_(), Some("error"));
        assert_eq!(s.from(), Some("carol@nowhere.test"));
        let t = text(s.raw());
        assert!(
            t.contains("<remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
            "{t}"
        );
        assert!(
            t.contains("no SRV or A/AAAA record for nowhere.test"),
            "{t}"
        );
        bounced.push(s.id().unwrap_or_default().to_string());
    }
    let mut delivered = Vec::new();
    while delivered.len() < to_b.len() {
        let s = backend_b.next().await;
        assert_eq!(s.to(), Some("bob@b.test"));
        delivered.push(s.id().unwrap_or_default().to_string());
    }
    // Markers sent after all the rest must come next: anything sent twice would be before them.
    backend_a
        .send("<message from='alice@a.test' to='carol@nowhere.test' id='end-nowhere'/>")
        .await;
    backend_a
        .send("<message from='alice@a.test' to='bob@b.test' id='end-b'/>")
        .await;
    assert_eq!(
        backend_a.next().await.id(),
        Some("end-nowhere"),
        "none bounced twice"
    );
    assert_eq!(
        backend_b.next().await.id(),
        Some("end-b"),
        "none delivered twice"
    );
    // Each stanza came back or arrived, exactly once: none lost, none duplicated.
    bounced.sort();
    to_nowhere.sort();
    assert_eq!(
        bounced, to_nowhere,
        "every stanza to nowhere.test bounced, once"
    );
    assert_eq!(
        delivered, to_b,
        "every stanza to b.test arrived, once, in order"
    );
}

#[tokio::test]
async fn errors_and_iq_results_are_never_bounced() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut backend_a = a.backend().await;
    backend_a
        .send("<message from='alice@a.test' to='x@nowhere.test' type='error' id='e1'/>")
        .await;
    backend_a
        .send("<iq from='alice@a.test' to='x@nowhere.test' type='result' id='r1'/>")
        .await;
    backend_a
        .send("<iq from='alice@a.test' to='x@nowhere.test' type='get' id='g1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    // Only the get comes back.
    let s = backend_a.next().await;
    assert_eq!(s.id(), Some("g1"));
    assert_eq!(s.type_(), Some("error"));
    let dropped = "fedgate_stanzas_dropped_total{reason=\"error_not_bounced\"}";
    wait_for_metric(&a, dropped, 2.0).await;
    let metrics = a.metrics().await;
    assert_eq!(metric(&metrics, dropped), 2.0, "{metrics}");
}

#[tokio::test]
async fn a_backend_that_is_not_attached_gets_service_unavailable_bounced_to_the_sender() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let _b = instance(&dns, "b.test").start().await;
    let mut backend_a = a.backend().await;
    // b.test federates but has no backend attached.
    backend_a
        .send("<message from='alice@a.test' to='bob@b.test' id='nb'><body>anyone?</body></message>")
        .await;
    let s = backend_a.next().await;
    assert_eq!(s.type_(), Some("error"));
    assert_eq!(s.from(), Some("bob@b.test"));
    assert!(
        text(s.raw()).contains("<service-unavailable"),
        "{}",
        text(s.raw())
    );
}

#[tokio::test(start_paused = true)]
async fn idle_outbound_sessions_close_and_reopen_on_demand() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .s2s("idle_timeout = \"300ms\"")
        .start()
        .await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    backend_a
        .send("<message from='alice@a.test' to='bob@b.test' id='1'/>")
        .await;
    assert_eq!(backend_b.next().await.id(), Some("1"));
    eventually("the idle session closed", || {
        a.gw().router.outbound_count() == 0
    })
    .await;
    backend_a
        .send("<message from='alice@a.test' to='bob@b.test' id='2'/>")
        .await;
    assert_eq!(backend_b.next().await.id(), Some("2"));
}

#[tokio::test]
async fn shutdown_tells_backends_with_system_shutdown() {
    let dns = TestDns::start().await;
    let mut a = instance(&dns, "a.test").start().await;
    let mut backend_a = a.backend().await;
    a.stop().await;
    assert_eq!(backend_a.expect_stream_error().await, "system-shutdown");
}

#[tokio::test]
async fn an_allowlist_refuses_an_unknown_peer_in_both_directions() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test")
        .federation("mode = \"allowlist\"\nallow = [\"friend.test\"]")
        .start()
        .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;

    // b → a: bounced before any connection, with a text naming the rule.
    backend_b
        .send("<message from='bob@b.test' to='alice@a.test' id='out'><body>x</body></message>")
        .await;
    let bounce = backend_b.next().await;
    let t = text(bounce.raw());
    assert!(
        t.contains("<not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
        "{t}"
    );
    assert!(t.contains("not in federation.allow"), "{t}");

    // a → b: b refuses a's dialback with a policy-violation dialback error; a bounces.
    backend_a
        .send("<message from='alice@a.test' to='bob@b.test' id='in'><body>x</body></message>")
        .await;
    let bounce = backend_a.next().await;
    assert_eq!(bounce.id(), Some("in"));
    assert!(
        text(bounce.raw()).contains("policy-violation"),
        "{}",
        text(bounce.raw())
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_remote_overflows_the_queue_then_times_out_and_every_stanza_comes_back() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .s2s("queue_max_stanzas = 10\nnegotiation_timeout = \"1s\"\nretry_window = \"3s\"\nretry_initial_delay = \"200ms\"")
        .start()
        .await;
    // silent.test accepts TCP and never says a word.
    let ip = next_loopback();
    let silent = tokio::net::TcpListener::bind((ip, 5269)).await.unwrap();
    dns.add("silent.test", ip);
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let mut backend_a = a.backend().await;
    let total = 25;
    for i in 0..total {
        backend_a
            .send(&format!(
                "<message from='alice@a.test' to='x@silent.test' id='q{i}'/>"
            ))
            .await;
    }
    let (mut overflow, mut timeout) = (Vec::new(), Vec::new());
    for _ in 0..total {
        let s = backend_a.next().await;
        let t = text(s.raw()).to_string();
        let id = s.id().unwrap_or_default().to_string();
        if t.contains("<resource-constraint") {
            assert!(t.contains("the queue for silent.test is full"), "{t}");
            overflow.push(id);
        } else {
            assert!(t.contains("<remote-server-timeout"), "{t}");
            // The negotiation timeout ends each attempt; when the retry window, which bounds
            // the whole wait, cuts the last one, the bounce still names that cause.
            assert!(t.contains("stream negotiation at"), "{t}");
            if t.contains("no connection within s2s.retry_window") {
                assert!(
                    t.contains("; the attempt before: stream negotiation at silent.test"),
                    "the window's bounce names why the attempt before it failed: {t}"
                );
            }
            timeout.push(id);
        }
    }
    // The first ten filled the queue and waited for the timeout; the rest overflowed at once.
    let ids = |range: std::ops::Range<usize>| range.map(|i| format!("q{i}")).collect::<Vec<_>>();
    assert_eq!(
        timeout,
        ids(0..10),
        "the queue held queue_max_stanzas, in order"
    );
    assert_eq!(
        overflow,
        ids(10..total),
        "every other stanza came back, once"
    );
    // A marker bounced at once (no DNS records) after all of them must be the next thing back:
    // a stanza bounced twice would come before it.
    backend_a
        .send("<message from='alice@a.test' to='x@nowhere.test' id='end'/>")
        .await;
    assert_eq!(
        backend_a.next().await.id(),
        Some("end"),
        "none came back twice"
    );
}
