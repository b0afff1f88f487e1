//! Outbound reliability: retries, bounces with their cause, the failure window, links that
//! drop, keepalives. In every test, stanzas sent = delivered + bounced.

use std::time::Duration;

use crate::certs::CertSpec;
use crate::harness::*;
use crate::proxy::TestProxy;

/// Sends `<message id='{prefix}{i}'/>` for each `i` in `ids`, from alice at `from` to bob at `to`.
async fn send_messages(
    backend: &mut RawStream,
    from: &str,
    to: &str,
    prefix: &str,
    ids: std::ops::Range<usize>,
) {
    for i in ids {
        backend
            .send(&format!(
                "<message from='alice@{from}' to='bob@{to}' id='{prefix}{i}'><body>{i}</body></message>"
            ))
            .await;
    }
}

/// The ids of the next `n` stanzas `backend` receives.
async fn receive_ids(backend: &mut RawStream, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let s = backend.next().await;
        assert_ne!(s.type_(), Some("error"), "{}", text(s.raw()));
        ids.push(s.id().unwrap_or_default().to_string());
    }
    ids
}

/// b.test with `b_s2s` lines, and a.test with `a_s2s` lines whose route to b.test goes through
/// a [`TestProxy`] the test controls.
async fn linked(dns: &TestDns, a_s2s: &str, b_s2s: &str) -> (Instance, Instance, TestProxy) {
    let b = instance(dns, "b.test").s2s(b_s2s).start().await;
    let proxy = TestProxy::start(b.s2s_addr()).await;
    let a = instance(dns, "a.test")
        .route("b.test", proxy.addr, false)
        .s2s(a_s2s)
        .start()
        .await;
    (a, b, proxy)
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_domain_is_retried_then_bounced_and_new_stanzas_bounce_at_once() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .s2s("retry_window = \"1500ms\"\nretry_initial_delay = \"100ms\"\nfailure_window = \"30s\"")
        .start()
        .await;
    // down.test resolves, but nothing listens there: every connection is refused.
    dns.add("down.test", next_loopback());
    let mut backend = a.backend().await;
    send_messages(&mut backend, "a.test", "down.test", "m", 0..3).await;
    for i in 0..3 {
        let bounce = backend.next().await;
        let t = text(bounce.raw()).to_string();
        assert_eq!(
            bounce.id(),
            Some(format!("m{i}").as_str()),
            "queued stanzas bounce in order"
        );
        assert!(t.contains("<remote-server-timeout"), "{t}");
        assert!(t.contains("cannot connect to down.test:5269"), "{t}");
    }
    let m = a.metrics().await;
    assert!(
        metric(&m, "fedgate_outbound_events_total{event=\"retry\"}") >= 2.0,
        "{m}"
    );
    let attempts = metric(&m, "fedgate_outbound_attempts_total{result=\"connect\"}");

    // Within the failure window a new stanza bounces at once with the same cause, without a
    // new connection attempt.
    send_messages(&mut backend, "a.test", "down.test", "late", 0..1).await;
    let bounce = backend.next().await;
    let t = text(bounce.raw()).to_string();
    assert_eq!(bounce.id(), Some("late0"));
    assert!(t.contains("cannot connect to down.test:5269"), "{t}");
    let m = a.metrics().await;
    assert_eq!(
        metric(&m, "fedgate_outbound_attempts_total{result=\"connect\"}"),
        attempts
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_dns_server_cannot_hold_stanzas_past_the_retry_window() {
    let dns = TestDns::start().await;
    // One attempt against a resolver that never answers takes about 4 × 1 s (SRV, then the
    // address lookups, each asked twice): more than the 1.5 s window, which bounds it.
    let a = instance(&dns, "a.test")
        .dns("timeout = \"1s\"")
        .s2s("retry_window = \"1500ms\"\nretry_initial_delay = \"100ms\"")
        .start()
        .await;
    dns.set_silent(true);
    let mut backend = a.backend().await;
    let sent = tokio::time::Instant::now();
    send_messages(&mut backend, "a.test", "quiet.test", "m", 0..2).await;
    for i in 0..2 {
        let bounce = backend.next().await;
        let t = text(bounce.raw()).to_string();
        assert_eq!(bounce.id(), Some(format!("m{i}").as_str()), "{t}");
        assert!(t.contains("<remote-server-timeout"), "{t}");
        assert!(
            t.contains(
                "no connection within s2s.retry_window (1500ms): the DNS lookup did not answer"
            ),
            "{t}"
        );
    }
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_millis(3500),
        "bounced {waited:?} after sending; the window is 1.5 s and one attempt alone takes ~4 s"
    );
    let m = a.metrics().await;
    assert_eq!(
        metric(&m, "fedgate_outbound_attempts_total{result=\"window\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_domain_that_does_not_exist_bounces_at_once_without_retries() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut backend = a.backend().await;
    send_messages(&mut backend, "a.test", "nx.test", "m", 0..1).await;
    let t = text(backend.next().await.raw()).to_string();
    assert!(t.contains("<remote-server-not-found"), "{t}");
    assert!(t.contains("no SRV or A/AAAA record for nx.test"), "{t}");
    let m = a.metrics().await;
    // A labelled counter appears on its first increment: a link that was never retried has no
    // `retry` series, so its absence is the zero this asserts.
    assert_eq!(
        metric_or_zero(&m, "fedgate_outbound_events_total{event=\"retry\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_certificate_name_mismatch_is_named_in_the_bounce() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .s2s("secure_auth = true")
        .start()
        .await;
    let _b = instance(&dns, "b.test")
        .cert(CertSpec::for_names(&["elsewhere.test"]))
        .start()
        .await;
    let mut backend = a.backend().await;
    send_messages(&mut backend, "a.test", "b.test", "m", 0..1).await;
    let t = text(backend.next().await.raw()).to_string();
    assert!(t.contains("<remote-server-timeout"), "{t}");
    assert!(t.contains("TLS certificate name mismatch"), "{t}");
    assert!(t.contains("at b.test:5269"), "{t}");
}

#[tokio::test]
async fn unavailable_presence_is_never_bounced_but_other_presence_is() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut backend = a.backend().await;
    backend
        .send("<presence from='alice@a.test/r' to='bob@nx.test' type='unavailable'/>")
        .await;
    backend
        .send("<presence from='alice@a.test' to='bob@nx.test' type='subscribe' id='sub'/>")
        .await;
    let bounce = backend.next().await;
    assert_eq!(bounce.id(), Some("sub"), "{}", text(bounce.raw()));
    assert!(text(bounce.raw()).contains("<remote-server-not-found"));
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_stanzas_dropped_total{reason=\"presence_not_bounced\"}"
        ),
        1.0,
        "the unavailable presence is counted, not silently lost"
    );
}

/// Over a link without XEP-0198: a first message, confirmed by an answered ping, then the
/// proxy lets `bytes` more through and cuts the link while `total` messages are on their way.
async fn cut_mid_burst(
    a: &Instance,
    proxy: &TestProxy,
    backend_a: &mut RawStream,
    backend_b: &mut RawStream,
    total: usize,
) {
    send_messages(backend_a, "a.test", "b.test", "w", 0..1).await;
    assert_eq!(receive_ids(backend_b, 1).await, vec!["w0"]);
    wait_for_metric(
        a,
        "fedgate_outbound_events_total{event=\"ping_answered\"}",
        1.0,
    )
    .await;
    proxy.cut_after(6000);
    send_messages(backend_a, "a.test", "b.test", "m", 0..total).await;
}

#[tokio::test]
async fn without_stream_management_a_link_cut_mid_burst_resends_what_was_unconfirmed() {
    let dns = TestDns::start().await;
    let (a, b, proxy) = linked(
        &dns,
        "retry_initial_delay = \"100ms\"",
        "stream_management = false",
    )
    .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    let total = 300;
    cut_mid_burst(&a, &proxy, &mut backend_a, &mut backend_b, total).await;
    // Every message arrives at least once; the resent ones first, then the rest.
    let mut seen = std::collections::HashMap::<String, usize>::new();
    while seen.len() < total {
        let s = backend_b.next().await;
        assert_ne!(s.type_(), Some("error"), "{}", text(s.raw()));
        *seen
            .entry(s.id().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    assert!(ids("m", 0..total).iter().all(|id| seen.contains_key(id)));
    let m = a.metrics().await;
    let resent = metric(
        &m,
        "fedgate_outbound_stanzas_total{event=\"resent_unconfirmed\"}",
    );
    assert!(resent > 0.0, "the cut left some unconfirmed: {m}");
    assert!(
        duplicates as f64 <= resent,
        "every duplicate is counted: {duplicates} arrived twice, {resent} resent unconfirmed"
    );
    assert!(
        metric(&m, "fedgate_outbound_stanzas_total{event=\"unconfirmed\"}") >= resent,
        "{m}"
    );
    assert_eq!(
        metric_or_zero(
            &m,
            "fedgate_bounces_total{condition=\"remote-server-timeout\"}"
        ),
        0.0,
        "nothing bounced"
    );
    assert_eq!(proxy.connections(), 2);
    eprintln!(
        "{total} sent, {} distinct arrived, {duplicates} twice, {resent} resent unconfirmed",
        seen.len()
    );
}

#[tokio::test]
async fn without_stream_management_a_link_cut_mid_burst_bounces_what_was_unconfirmed() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test")
        .s2s("stream_management = false")
        .start()
        .await;
    let proxy = TestProxy::start(b.s2s_addr()).await;
    let a = instance(&dns, "a.test")
        .route("b.test", proxy.addr, false)
        .peer("domain = \"b.test\"\nunconfirmed = \"bounce\"")
        .start()
        .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    let total = 300;
    cut_mid_burst(&a, &proxy, &mut backend_a, &mut backend_b, total).await;
    let mut delivered = std::collections::HashMap::<String, usize>::new();
    let mut bounced = std::collections::HashSet::<String>::new();
    let accounted = |d: &std::collections::HashMap<String, usize>,
                     b: &std::collections::HashSet<String>| {
        ids("m", 0..total)
            .iter()
            .all(|id| d.contains_key(id) || b.contains(id))
    };
    while !accounted(&delivered, &bounced) {
        tokio::select! {
            s = backend_b.next() => {
                assert_ne!(s.type_(), Some("error"), "{}", text(s.raw()));
                *delivered.entry(s.id().unwrap_or_default().to_string()).or_default() += 1;
            }
            s = backend_a.next() => {
                let raw = text(s.raw()).to_string();
                assert_eq!(s.type_(), Some("error"), "{raw}");
                assert!(raw.contains("remote-server-timeout"), "{raw}");
                assert!(raw.contains("it may have been delivered"), "{raw}");
                assert!(bounced.insert(s.id().unwrap_or_default().to_string()), "bounced once: {raw}");
            }
        }
    }
    assert!(
        delivered.values().all(|n| *n == 1),
        "nothing is resent, so nothing arrives twice"
    );
    assert!(!bounced.is_empty(), "the cut left some unconfirmed");
    let both = bounced
        .iter()
        .filter(|id| delivered.contains_key(*id))
        .count();
    assert_eq!(
        delivered.len() + bounced.len() - both,
        total,
        "sent = delivered + bounced"
    );
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_bounces_total{condition=\"remote-server-timeout\"}"
        ),
        bounced.len() as f64
    );
    assert_eq!(
        metric_or_zero(
            &m,
            "fedgate_outbound_stanzas_total{event=\"resent_unconfirmed\"}"
        ),
        0.0
    );
    eprintln!(
        "{total} sent, {} delivered, {} bounced, {both} of them delivered too",
        delivered.len(),
        bounced.len()
    );
}

/// Polls `instance`'s metrics until `sample` is at most `at_most`.
async fn wait_for_metric_below(instance: &Instance, sample: &str, at_most: f64) {
    for _ in 0..200 {
        if metric(&instance.metrics().await, sample) <= at_most {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{sample} never went down to {at_most}");
}

/// Receives until `expected` ids have arrived, then checks that nothing else (no duplicate)
/// comes before a final marker.
async fn expect_exactly(backend_b: &mut RawStream, backend_a: &mut RawStream, expected: &[String]) {
    let got = receive_ids(backend_b, expected.len()).await;
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!(
            "every stanza, in order, once: at {i}, {} instead of {}",
            got[i], expected[i]
        );
    }
    send_messages(backend_a, "a.test", "b.test", "end", 0..1).await;
    assert_eq!(
        receive_ids(backend_b, 1).await,
        vec!["end0"],
        "no duplicates"
    );
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn a_link_cut_mid_stanza_is_resumed_and_every_stanza_arrives_exactly_once() {
    let dns = TestDns::start().await;
    // Plaintext, so that the cut lands inside a stanza and not inside a TLS record (which b
    // could not decrypt at all, leaving it with nothing of the burst).
    let b = instance(&dns, "b.test")
        .no_cert()
        .s2s("require_encryption = false")
        .start()
        .await;
    let proxy = TestProxy::start(b.s2s_addr()).await;
    let a = instance(&dns, "a.test")
        .route("b.test", proxy.addr, false)
        .peer("domain = \"b.test\"\ntls = \"optional\"")
        .s2s("retry_initial_delay = \"100ms\"")
        .start()
        .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    send_messages(&mut backend_a, "a.test", "b.test", "m", 0..10).await;
    assert_eq!(receive_ids(&mut backend_b, 10).await, ids("m", 0..10));
    wait_for_metric_below(&a, "fedgate_outbound_unacked", 0.0).await;

    // The next 150 bytes reach b, then the link breaks: b sees a stanza cut in half.
    proxy.cut_after(150);
    send_messages(&mut backend_a, "a.test", "b.test", "m", 10..60).await;
    expect_exactly(&mut backend_b, &mut backend_a, &ids("m", 10..60)).await;
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_s2s_sm_total{direction=\"outbound\",event=\"resumed\"}"
        ),
        1.0,
        "{m}"
    );
    // A handshake series appears on the first handshake: none, the link was plaintext.
    assert_eq!(
        metric_or_zero(&m, "fedgate_tls_handshakes_total{direction=\"outbound\"}"),
        0.0,
        "{m}"
    );
    // b's `h` at the resumption said how many of the 50 it had handled from the first link:
    // some (the stanzas wholly within the 150 bytes), not all (the one cut in half and after).
    let resent = metric(&m, "fedgate_outbound_stanzas_total{event=\"resent\"}");
    assert!(
        (1.0..50.0).contains(&resent),
        "b got some but not all of the burst before the cut: {resent} resent"
    );
    // No bounce at all means no `fedgate_bounces_total` series yet (it appears on the first
    // bounce), so a missing series is the zero asserted here.
    assert_eq!(
        metric_or_zero(
            &m,
            "fedgate_bounces_total{condition=\"remote-server-timeout\"}"
        ),
        0.0
    );
    assert_eq!(proxy.connections(), 2);
}

#[tokio::test]
async fn a_peer_stopped_mid_burst_and_restarted_gets_every_stanza_exactly_once() {
    let dns = TestDns::start().await;
    let (a, mut b, proxy) = linked(
        &dns,
        "retry_window = \"60s\"\nretry_initial_delay = \"100ms\"\nretry_max_delay = \"300ms\"",
        "",
    )
    .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    send_messages(&mut backend_a, "a.test", "b.test", "w", 0..1).await;
    assert_eq!(receive_ids(&mut backend_b, 1).await, vec!["w0"]);

    // b stops while a burst is on its way: it acknowledges what it handled and goes.
    let total = 2000;
    send_messages(&mut backend_a, "a.test", "b.test", "m", 0..total).await;
    // What b's backend receives until b closes it.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            loop {
                match backend_b.event().await {
                    fedgate::xml::framer::Event::Stanza(s) if s.name() == "message" => {
                        received
                            .lock()
                            .unwrap()
                            .push(s.id().unwrap_or_default().to_string());
                    }
                    _ => return,
                }
            }
        })
    };
    b.stop().await;
    let _ = reader.await;
    let received = received.lock().unwrap().clone();
    // Until b's backend is back, its connection attempts wait in the (paused) proxy.
    proxy.pause(true);
    b.restart().await;
    let mut backend_b = b.backend().await;
    proxy.pause(false);
    let rest = total - received.len();
    let mut all = received.clone();
    all.extend(receive_ids(&mut backend_b, rest).await);
    let expected = ids("m", 0..total);
    if let Some(i) = (0..all.len().max(total)).find(|&i| all.get(i) != expected.get(i)) {
        panic!(
            "every stanza, in order, once: {} received before the stop, first difference at {i}: {:?} instead of {:?}",
            received.len(),
            all.get(i),
            expected.get(i)
        );
    }
    send_messages(&mut backend_a, "a.test", "b.test", "end", 0..1).await;
    assert_eq!(
        receive_ids(&mut backend_b, 1).await,
        vec!["end0"],
        "no duplicates"
    );
    let m = a.metrics().await;
    // No bounce at all means no `fedgate_bounces_total` series yet (it appears on the first
    // bounce), so a missing series is the zero asserted here.
    assert_eq!(
        metric_or_zero(
            &m,
            "fedgate_bounces_total{condition=\"remote-server-timeout\"}"
        ),
        0.0
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_link_gets_whitespace_and_a_silent_one_is_found_dead() {
    let dns = TestDns::start().await;
    let (a, b, proxy) = linked(
        &dns,
        "keepalive_interval = \"200ms\"\nping_interval = \"1s\"\nping_timeout = \"500ms\"",
        "",
    )
    .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    send_messages(&mut backend_a, "a.test", "b.test", "m", 0..1).await;
    assert_eq!(receive_ids(&mut backend_b, 1).await, vec!["m0"]);
    // Idle: single spaces follow. The link is TLS 1.3, so each is an application data record
    // of 18 bytes (1 byte, its content type, a 16-byte tag).
    let spaces = || {
        proxy
            .forwarded()
            .windows(5)
            .filter(|w| *w == [0x17, 0x03, 0x03, 0x00, 0x12])
            .count()
    };
    for _ in 0..100 {
        if spaces() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(spaces() >= 2, "whitespace keepalives on the idle link");
    // The live link answers its checks.
    wait_for_metric(
        &a,
        "fedgate_outbound_events_total{event=\"ping_answered\"}",
        1.0,
    )
    .await;
    let m = a.metrics().await;
    // The `ping_timeout` series appears on the first timeout; `ping_answered` of the same
    // family was just read above, so the name and label are the real ones.
    assert_eq!(
        metric_or_zero(&m, "fedgate_outbound_events_total{event=\"ping_timeout\"}"),
        0.0
    );
    // A path that goes silent is found dead.
    proxy.pause(true);
    wait_for_metric(
        &a,
        "fedgate_outbound_events_total{event=\"ping_timeout\"}",
        1.0,
    )
    .await;
    wait_for_metric_below(
        &a,
        "fedgate_s2s_sessions{direction=\"outbound\",state=\"established\"}",
        0.0,
    )
    .await;
}

#[tokio::test]
async fn srv_targets_without_address_or_listener_are_passed_over_for_a_live_one_and_the_trace_says_so(
) {
    let dns = TestDns::start().await;
    // b.test has no A record of its own: only its SRV records lead to it.
    let b = instance(&dns, "b.test").unlisted().start().await;
    let dead = next_loopback();
    dns.add("dead.b.test", dead);
    dns.add("live.b.test", b.ip);
    // ghost.b.test has no address at all.
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 1, 5269, "ghost.b.test");
    dns.add_srv("_xmpp-server._tcp.b.test", 5, 1, 5269, "dead.b.test");
    dns.add_srv("_xmpp-server._tcp.b.test", 10, 1, 5269, "live.b.test");
    let a = instance(&dns, "a.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    send_messages(&mut backend_a, "a.test", "b.test", "m", 0..3).await;
    assert_eq!(receive_ids(&mut backend_b, 3).await, ids("m", 0..3));
    let trace = a
        .gw()
        .last_attempt("b.test")
        .expect("the attempt is remembered");
    let step = |ok: bool, what: &str| {
        trace
            .steps
            .iter()
            .position(|s| s.ok == ok && s.what.contains(what))
            .unwrap_or_else(|| panic!("no step {ok} {what}:\n{trace}"))
    };
    let ghost = step(false, "DNS ghost.b.test: no A/AAAA record");
    let dead = step(false, "TCP dead.b.test:5269");
    let live = step(true, "TCP connected to live.b.test:5269");
    let authenticated = step(true, "authenticated by");
    assert!(
        ghost < dead && dead < live && live < authenticated,
        "{trace}"
    );
}

#[tokio::test]
async fn a_lone_dot_srv_target_bounces_at_once_with_the_cause() {
    let dns = TestDns::start().await;
    dns.add_srv("_xmpp-server._tcp.noservice.test", 0, 0, 0, ".");
    let a = instance(&dns, "a.test").start().await;
    let mut backend = a.backend().await;
    send_messages(&mut backend, "a.test", "noservice.test", "m", 0..1).await;
    let t = text(backend.next().await.raw()).to_string();
    assert!(t.contains("<remote-server-not-found"), "{t}");
    assert!(
        t.contains("noservice.test offers no XMPP server-to-server service"),
        "{t}"
    );
}

#[tokio::test]
async fn without_stream_management_an_answered_ping_confirms_what_was_written_before_it() {
    let dns = TestDns::start().await;
    let (a, b, proxy) = linked(
        &dns,
        "ping_interval = \"300ms\"\nping_timeout = \"5s\"",
        "stream_management = false",
    )
    .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    send_messages(&mut backend_a, "a.test", "b.test", "m", 0..3).await;
    assert_eq!(receive_ids(&mut backend_b, 3).await, ids("m", 0..3));
    // b answers the XEP-0199 ping to its domain itself, over its own stream to a.
    wait_for_metric(
        &a,
        "fedgate_outbound_events_total{event=\"ping_answered\"}",
        1.0,
    )
    .await;
    proxy.cut();
    wait_for_metric_below(
        &a,
        "fedgate_s2s_sessions{direction=\"outbound\",state=\"established\"}",
        0.0,
    )
    .await;
    let m = a.metrics().await;
    // `unconfirmed` appears on the first unconfirmed stanza: none is what this asserts.
    assert_eq!(
        metric_or_zero(&m, "fedgate_outbound_stanzas_total{event=\"unconfirmed\"}"),
        0.0,
        "the answered ping proved the three messages were read"
    );
    // The ping never reached b's backend: the next thing it sees is the next message.
    send_messages(&mut backend_a, "a.test", "b.test", "n", 0..1).await;
    assert_eq!(receive_ids(&mut backend_b, 1).await, vec!["n0"]);
}

#[tokio::test]
async fn with_stream_management_but_no_resumption_only_what_was_not_acknowledged_is_resent() {
    let dns = TestDns::start().await;
    // b forgets a dropped stream's count at once, so a's resumption on the new link fails
    // and it enables stream management afresh.
    let (a, b, proxy) = linked(
        &dns,
        "retry_initial_delay = \"1s\"",
        // A lost link is reconnected at once, sooner than any longer timeout would expire.
        "resume_timeout = \"1ms\"",
    )
    .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    send_messages(&mut backend_a, "a.test", "b.test", "m", 0..10).await;
    assert_eq!(receive_ids(&mut backend_b, 10).await, ids("m", 0..10));
    wait_for_metric_below(&a, "fedgate_outbound_unacked", 0.0).await;
    // Cut inside the first TLS record of the burst: b gets none of it.
    proxy.cut_after(150);
    send_messages(&mut backend_a, "a.test", "b.test", "m", 10..60).await;
    // The acknowledged m0..m9 would come first if they were resent.
    expect_exactly(&mut backend_b, &mut backend_a, &ids("m", 10..60)).await;
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_s2s_sm_total{direction=\"outbound\",event=\"resume_failed\"}"
        ),
        1.0,
        "{m}"
    );
    assert!(metric(&m, "fedgate_outbound_stanzas_total{event=\"resent\"}") <= 50.0);
    assert_eq!(proxy.connections(), 2);
}
