//! XEP-0288 bidirectional s2s: one TCP connection carries a pair's stanzas both ways, each
//! direction within the rules of the other's authentication, and a dropped bidi stream loses
//! nothing.

use std::net::IpAddr;

use crate::harness::*;

/// Connections each instance opened and accepted, as its metrics count them.
struct Connections {
    opened: f64,
    accepted: f64,
    bidi_out: f64,
    bidi_in: f64,
}

async fn connections(i: &Instance) -> Connections {
    let m = i.metrics().await;
    Connections {
        // Counters whose labelled child appears on the first connection.
        opened: metric_or_zero(
            &m,
            "fedgate_outbound_attempts_total{result=\"established\"}",
        ),
        accepted: metric_or_zero(
            &m,
            "fedgate_s2s_sessions{direction=\"inbound\",state=\"established\"}",
        ),
        bidi_out: metric(&m, "fedgate_s2s_bidi_links{direction=\"outbound\"}"),
        bidi_in: metric(&m, "fedgate_s2s_bidi_links{direction=\"inbound\"}"),
    }
}

/// a.test's backend writes to b.test, b.test's backend answers; returns how long the answer
/// took from b's backend to a's (a figure for the logs, never asserted).
async fn exchange(a: &Instance, b: &Instance) -> std::time::Duration {
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    let hello = "<message from='alice@a.test' to='bob@b.test' id='hello'><body>hi</body></message>";
    backend_a.send(hello).await;
    assert_eq!(backend_b.next_text().await, hello);
    let reply =
        "<message from='bob@b.test' to='alice@a.test' id='reply'><body>hello</body></message>";
    let sent = std::time::Instant::now();
    backend_b.send(reply).await;
    assert_eq!(backend_a.next_text().await, reply);
    let took = sent.elapsed();
    // And a second round both ways, on the same links.
    backend_a
        .send("<message from='alice@a.test' to='bob@b.test' id='again'/>")
        .await;
    assert_eq!(backend_b.next().await.id(), Some("again"));
    backend_b
        .send("<iq from='b.test' to='alice@a.test' type='get' id='q'><query xmlns='urn:x'/></iq>")
        .await;
    assert_eq!(backend_a.next().await.id(), Some("q"));
    took
}

#[tokio::test]
async fn with_sasl_external_one_connection_carries_both_directions() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let took = exchange(&a, &b).await;
    eprintln!("bidi (SASL EXTERNAL): first reply b → a in {took:?}");
    let (ca, cb) = (connections(&a).await, connections(&b).await);
    assert_eq!(
        (ca.opened, ca.accepted),
        (1.0, 0.0),
        "a opened one, accepted none"
    );
    assert_eq!(
        (cb.opened, cb.accepted),
        (0.0, 1.0),
        "b answered on a's connection"
    );
    assert_eq!((ca.bidi_out, cb.bidi_in), (1.0, 1.0));
    let m = b.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_s2s_auth_total{direction=\"inbound\",method=\"external\"}"
        ),
        1.0
    );
    // `/peers` (and `fedgate peers`) shows the one session, on both sides, as bidi.
    for (gw, remote, direction) in [(&a, "b.test", "outbound"), (&b, "a.test", "inbound")] {
        let view = gw.peer_view(remote).await;
        assert_eq!(view.sessions.len(), 1, "{remote}: {view:?}");
        assert_eq!(view.sessions[0].direction, direction);
        assert!(view.sessions[0].bidi, "{remote}: {view:?}");
    }
}

#[tokio::test]
async fn with_dialback_one_connection_carries_both_directions() {
    let dns = TestDns::start().await;
    // a authenticates to b by dialback: b verifies a's key on a connection of its own to a
    // (the authoritative server), never on the bidi stream the key came on.
    let a = instance(&dns, "a.test")
        .peer("domain = \"b.test\"\nauth = \"dialback\"")
        .start()
        .await;
    let b = instance(&dns, "b.test").start().await;
    let took = exchange(&a, &b).await;
    eprintln!("bidi (dialback): first reply b → a in {took:?}");
    let (ca, cb) = (connections(&a).await, connections(&b).await);
    assert_eq!(ca.opened, 1.0);
    assert_eq!(cb.opened, 0.0, "b's answers went back on a's stream");
    assert_eq!((ca.bidi_out, cb.bidi_in), (1.0, 1.0));
    let m = b.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_dialback_total{role=\"result\",result=\"valid\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn bidi_false_for_a_peer_falls_back_to_a_connection_per_direction() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .peer("domain = \"b.test\"\nbidi = false")
        .start()
        .await;
    let b = instance(&dns, "b.test").start().await;
    let took = exchange(&a, &b).await;
    eprintln!("without bidi: first reply b → a in {took:?} (a new connection)");
    let (ca, cb) = (connections(&a).await, connections(&b).await);
    assert_eq!((ca.opened, cb.opened), (1.0, 1.0), "a connection each way");
    assert_eq!((ca.bidi_out, cb.bidi_in), (0.0, 0.0));

    // Turned off on the receiving side: not offered, so not requested.
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").s2s("bidi = false").start().await;
    exchange(&a, &b).await;
    let (ca, cb) = (connections(&a).await, connections(&b).await);
    assert_eq!((ca.opened, cb.opened), (1.0, 1.0));
    assert_eq!((ca.bidi_out, cb.bidi_in), (0.0, 0.0));
}

#[tokio::test]
async fn the_feature_is_offered_over_tls_only_and_a_request_may_carry_children() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test")
        .peer("domain = \"a.test\"\ntls = \"optional\"")
        .start()
        .await;
    let (mut plain, features) = plain_s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    assert!(
        !text(features.raw()).contains("bidi"),
        "{}",
        text(features.raw())
    );
    // Asked for where it was not offered: refused, with the reason.
    plain.send("<bidi xmlns='urn:xmpp:bidi'/>").await;
    assert_eq!(plain.expect_stream_error().await, "unsupported-stanza-type");

    // As Prosody 13 sends it: with its limits inside.
    let (mut s, features) = bidi_stream(&a, &b, "<bidi xmlns='urn:xmpp:bidi'><limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>10000</max-bytes></limits></bidi>").await;
    assert!(
        text(features.raw()).contains("<bidi xmlns='urn:xmpp:features:bidi'/>"),
        "{}",
        text(features.raw())
    );
    // b's backend now writes to a.test on this very stream: the reverse of the pair proved.
    let mut backend_b = b.backend().await;
    backend_b
        .send("<message from='bob@b.test' to='alice@a.test' id='back'><body>x</body></message>")
        .await;
    let got = s.next().await;
    assert_eq!(got.id(), Some("back"));
    assert_eq!(connections(&b).await.opened, 0.0);
}

#[tokio::test]
async fn a_dropped_bidi_stream_loses_nothing() {
    let dns = TestDns::start().await;
    // a.test is real (the authoritative server for the raw stream's key, and where b goes
    // once the stream is gone); the raw stream speaks for a.test.
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    let (mut s, _) = bidi_stream(&a, &b, "<bidi xmlns='urn:xmpp:bidi'/>").await;

    // Written on the bidi stream, then the peer's confirming ping: never answered.
    backend_b
        .send("<message from='bob@b.test' to='alice@a.test' id='m1'/>")
        .await;
    assert_eq!(s.next().await.id(), Some("m1"));
    let ping = s.next().await;
    assert!(
        text(ping.raw()).contains("urn:xmpp:ping"),
        "{}",
        text(ping.raw())
    );
    // The connection drops without a word.
    drop(s);
    // m1 was not confirmed: it goes out again, on b's own connection to a.test, and so does
    // what comes after.
    assert_eq!(backend_a.next().await.id(), Some("m1"));
    backend_b
        .send("<message from='bob@b.test' to='alice@a.test' id='m2'/>")
        .await;
    assert_eq!(backend_a.next().await.id(), Some("m2"));
    let m = b.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_outbound_stanzas_total{event=\"resent_unconfirmed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "fedgate_s2s_bidi_links{direction=\"inbound\"}"),
        0.0
    );
    assert_eq!(connections(&b).await.opened, 1.0);
}

/// A gateway that stops (a rolling restart) ends a bidi stream only once the peer has
/// confirmed what it wrote back on it: ended at once, the unconfirmed stanzas would go out
/// again on another connection and arrive twice.
#[tokio::test(start_paused = true)]
async fn a_stopping_gateway_ends_a_bidi_stream_once_the_peer_confirmed_what_it_wrote_back() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut b = instance(&dns, "b.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    let (mut s, _) = bidi_stream(&a, &b, "<bidi xmlns='urn:xmpp:bidi'/>").await;
    backend_b
        .send("<message from='bob@b.test' to='alice@a.test' id='m1'/>")
        .await;
    assert_eq!(s.next().await.id(), Some("m1"));
    let ping = s.next().await;
    assert!(
        text(ping.raw()).contains("urn:xmpp:ping"),
        "{}",
        text(ping.raw())
    );
    let stopping = tokio::spawn(async move {
        b.stop().await;
        b
    });
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), s.event()).await;
    assert!(
        early.is_err(),
        "the stream went on or ended while m1 was unconfirmed"
    );
    s.send(&format!(
        "<iq type='result' from='a.test' to='b.test' id='{}'/>",
        ping.id().unwrap()
    ))
    .await;
    assert_eq!(s.expect_stream_error().await, "system-shutdown");
    let _b = stopping.await.unwrap();
    let again = tokio::time::timeout(std::time::Duration::from_millis(500), backend_a.next()).await;
    assert!(again.is_err(), "m1 was confirmed: not sent again");
}

/// A receiving server for `fake.test` on `ip`:5269 that offers bidi over TLS, takes any
/// dialback key, then sends on a.test's outbound stream what `send` says, and reports the
/// names of the elements it got and the stream error that ended it.
async fn bidi_peer(
    ip: IpAddr,
    dir: &std::path::Path,
    send: Vec<String>,
) -> tokio::sync::mpsc::Receiver<Vec<String>> {
    use fedgate::xml::framer::Event;
    let receiver = FakeReceiver::bind(ip, dir).await;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let mut conn = receiver.accept().await.unwrap();
        fake_peer_starttls(&mut conn, &receiver.tls, 0).await;
        conn.send(b"<stream:features><bidi xmlns='urn:xmpp:features:bidi'/><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>");
        conn.flush().await.unwrap();
        let mut seen = Vec::new();
        loop {
            let s = match conn.next_event().await {
                Ok(Event::Stanza(s)) => s,
                _ => break,
            };
            // A dialback answer with its type: `verify:valid`, `result:error`.
            match (s.name(), s.type_()) {
                (name @ ("verify" | "result"), Some(t)) => seen.push(format!("{name}:{t}")),
                (name, _) => seen.push(name.to_string()),
            }
            match s.name() {
                "result" if s.type_().is_none() => {
                    conn.send(b"<db:result from='fake.test' to='a.test' type='valid'/>");
                }
                "message" => {
                    for xml in &send {
                        conn.send(xml.as_bytes());
                    }
                }
                "error" => {
                    let condition = s
                        .element()
                        .unwrap()
                        .children()
                        .next()
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    seen.push(condition);
                    break;
                }
                _ => {}
            }
            conn.flush().await.unwrap();
        }
        let _ = tx.send(seen).await;
    });
    rx
}

#[tokio::test]
async fn on_our_outbound_stream_the_peer_may_send_only_from_its_domain_to_ours() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let dir = tempfile::tempdir().unwrap();
    let ip = next_loopback();
    let mut seen = bidi_peer(
        ip,
        dir.path(),
        vec![
            // The reverse of the pair a.test proved: delivered.
            "<message from='bob@fake.test' to='alice@a.test' id='ok'><body>1</body></message>"
                .into(),
            // From a domain nobody proved on this stream: the stream ends with invalid-from.
            "<message from='eve@evil.test' to='alice@a.test' id='spoof'><body>2</body></message>"
                .into(),
        ],
    )
    .await;
    dns.add("fake.test", ip);
    let mut backend = a.backend().await;
    backend
        .send("<message from='alice@a.test' to='bob@fake.test' id='m1'><body>1</body></message>")
        .await;
    assert_eq!(backend.next().await.id(), Some("ok"));
    let seen = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen[..3],
        ["bidi", "result", "message"],
        "bidi asked for first: {seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("invalid-from"),
        "{seen:?}"
    );
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_stream_errors_total{direction=\"sent\",condition=\"invalid-from\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_or_zero(
            &m,
            "fedgate_stanzas_total{direction=\"inbound\",kind=\"message\",link=\"s2s\"}"
        ),
        1.0,
        "the spoofed one was not routed"
    );
}

#[tokio::test]
async fn with_stream_management_what_we_write_back_on_a_bidi_link_is_counted_like_the_rest() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    exchange(&a, &b).await;
    // b confirms what it wrote back with a ping, which a answers on the same link; a's
    // XEP-0198 (a → b) must count that answer, or b's next <a/> acknowledges more than a
    // thinks it sent and the link is torn down.
    wait_for_metric(
        &b,
        "fedgate_s2s_sm_total{direction=\"inbound\",event=\"acked\"}",
        1.0,
    )
    .await;
    wait_for_metric(
        &a,
        "fedgate_s2s_sm_total{direction=\"outbound\",event=\"acked\"}",
        1.0,
    )
    .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    for i in 0..3 {
        backend_b
            .send(&format!(
                "<message from='bob@b.test' to='alice@a.test' id='r{i}'/>"
            ))
            .await;
        assert_eq!(backend_a.next().await.id(), Some(format!("r{i}").as_str()));
        backend_a
            .send(&format!(
                "<message from='alice@a.test' to='bob@b.test' id='s{i}'/>"
            ))
            .await;
        assert_eq!(backend_b.next().await.id(), Some(format!("s{i}").as_str()));
        // After the traffic pauses a asks for an acknowledgement, and gets a right one.
        wait_for_metric(
            &a,
            "fedgate_s2s_sm_total{direction=\"outbound\",event=\"acked\"}",
            2.0 + i as f64,
        )
        .await;
    }
    assert_eq!(connections(&a).await.opened, 1.0, "the link was never lost");
}

#[tokio::test(start_paused = true)]
async fn a_bidi_stream_that_does_not_answer_our_ping_is_ended_and_its_stanzas_go_another_way() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test")
        .s2s("ping_timeout = \"1s\"")
        .start()
        .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    let (mut s, _) = bidi_stream(&a, &b, "<bidi xmlns='urn:xmpp:bidi'/>").await;
    backend_b
        .send("<message from='bob@b.test' to='alice@a.test' id='m1'/>")
        .await;
    assert_eq!(s.next().await.id(), Some("m1"));
    // The peer reads on but never answers the ping: b takes the stream for dead.
    let ping = s.next().await;
    assert!(
        text(ping.raw()).contains("urn:xmpp:ping"),
        "{}",
        text(ping.raw())
    );
    assert_eq!(s.expect_stream_error().await, "connection-timeout");
    assert_eq!(
        backend_a.next().await.id(),
        Some("m1"),
        "sent again, another way"
    );
}

#[tokio::test]
async fn on_our_bidi_outbound_stream_a_db_verify_is_answered_and_a_db_result_refused() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let dir = tempfile::tempdir().unwrap();
    let ip = next_loopback();
    // fake.test asks a.test, as the authoritative server, about a key on this very stream
    // (for another connection's stream id), and asks to authenticate fake.test → a.test by
    // dialback here: a.test answers the first and refuses the second (it would have to verify
    // a key on the connection it came on, XEP-0288 §2.2).
    let key = a
        .dialback_secret()
        .key("fake.test", "a.test", "other-stream");
    let mut seen = bidi_peer(
        ip,
        dir.path(),
        vec![
            format!("<db:verify from='fake.test' to='a.test' id='other-stream'>{key}</db:verify>"),
            "<db:result from='fake.test' to='a.test'>anykey</db:result>".into(),
            "<message from='eve@evil.test' to='alice@a.test' id='end'/>".into(),
        ],
    )
    .await;
    dns.add("fake.test", ip);
    let mut backend = a.backend().await;
    backend
        .send("<message from='alice@a.test' to='bob@fake.test' id='m1'><body>1</body></message>")
        .await;
    let seen = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    let at = |what: &str| seen.iter().position(|s| s == what);
    assert!(at("verify:valid").is_some(), "{seen:?}");
    assert!(at("result:error").is_some(), "{seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("invalid-from"),
        "{seen:?}"
    );
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_dialback_total{role=\"verify\",result=\"valid\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn on_our_bidi_outbound_stream_the_peers_stanza_limit_applies_as_on_its_own_streams() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .peer("domain = \"fake.test\"\nmax_stanza_bytes = 2000")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ip = next_loopback();
    let big = format!(
        "<message from='bob@fake.test' to='alice@a.test' id='big'><body>{}</body></message>",
        "x".repeat(3000)
    );
    let mut seen = bidi_peer(ip, dir.path(), vec![big]).await;
    dns.add("fake.test", ip);
    let mut backend = a.backend().await;
    backend
        .send("<message from='alice@a.test' to='bob@fake.test' id='m1'><body>1</body></message>")
        .await;
    let seen = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("policy-violation"),
        "{seen:?}"
    );
    assert_eq!(
        metric(
            &a.metrics().await,
            "fedgate_limit_refusals_total{limit=\"stanza_bytes\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn on_our_bidi_outbound_stream_the_peers_byte_rate_applies_as_on_its_own_streams() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .peer(
            "domain = \"fake.test\"\nmax_inbound_bytes_per_second = 20000\nmax_stanza_bytes = 2000",
        )
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ip = next_loopback();
    // 50 KB, well over a second's worth (the bucket's burst).
    let flood: Vec<String> = (0..50)
        .map(|i| {
            format!(
                "<message from='bob@fake.test' to='alice@a.test' id='f{i}'><body>{}</body></message>",
                "x".repeat(900)
            )
        })
        .collect();
    let _seen = bidi_peer(ip, dir.path(), flood).await;
    dns.add("fake.test", ip);
    let mut backend = a.backend().await;
    backend
        .send("<message from='alice@a.test' to='bob@fake.test' id='m1'><body>1</body></message>")
        .await;
    for i in 0..50 {
        assert_eq!(
            backend.next().await.id(),
            Some(format!("f{i}").as_str()),
            "in order"
        );
    }
    // The reads waited for the bucket, and the wait shows on the peer.
    let throttled = metric(
        &a.metrics().await,
        "fedgate_peer_inbound_throttled_seconds_total{peer=\"fake.test\"}",
    );
    assert!(throttled > 0.0, "throttled {throttled}s");
}

#[tokio::test]
async fn what_goes_back_on_a_bidi_stream_keeps_to_the_limit_the_peer_put_in_its_request() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_b = b.backend().await;
    // As Prosody 13 does: its XEP-0478 limits for what it takes back, inside the request.
    let (mut s, _) = bidi_stream(&a, &b, "<bidi xmlns='urn:xmpp:bidi'><limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>1000</max-bytes></limits></bidi>").await;
    let big = format!(
        "<message from='bob@b.test' to='alice@a.test' id='big'><body>{}</body></message>",
        "x".repeat(2000)
    );
    backend_b.send(&big).await;
    let bounce = backend_b.next().await;
    assert_eq!((bounce.id(), bounce.type_()), (Some("big"), Some("error")));
    let t = text(bounce.raw()).to_string();
    assert!(t.contains("<policy-violation"), "{t}");
    assert!(
        t.contains("a.test accepts at most 1000 (its XEP-0478 max-bytes)"),
        "{t}"
    );
    backend_b
        .send("<message from='bob@b.test' to='alice@a.test' id='small'/>")
        .await;
    assert_eq!(
        s.next().await.id(),
        Some("small"),
        "the big one never went out"
    );
}

#[tokio::test(start_paused = true)]
async fn what_is_written_back_while_a_ping_is_out_is_confirmed_by_the_next_one() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_b = b.backend().await;
    let (mut s, _) = bidi_stream(&a, &b, "<bidi xmlns='urn:xmpp:bidi'/>").await;
    let answer = |ping: &fedgate::xml::stanza::Stanza| {
        format!(
            "<iq type='result' from='a.test' to='b.test' id='{}'/>",
            ping.id().unwrap()
        )
    };
    backend_b
        .send("<message from='bob@b.test' to='alice@a.test' id='m1'/>")
        .await;
    assert_eq!(s.next().await.id(), Some("m1"));
    let first = s.next().await;
    assert!(
        text(first.raw()).contains("urn:xmpp:ping"),
        "{}",
        text(first.raw())
    );
    // m2 goes out while the first ping is unanswered: it covers only m1.
    backend_b
        .send("<message from='bob@b.test' to='alice@a.test' id='m2'/>")
        .await;
    assert_eq!(s.next().await.id(), Some("m2"));
    s.send(&answer(&first)).await;
    let second = s.next().await;
    assert!(
        text(second.raw()).contains("urn:xmpp:ping"),
        "a ping for m2: {}",
        text(second.raw())
    );
    s.send(&answer(&second)).await;
    // Both confirmed: a clean close leaves nothing to send again.
    s.send("</stream:stream>").await;
    s.expect_eof().await;
    // The stream's end is handled after the close: wait for the link to be gone.
    let mut m = b.metrics().await;
    for _ in 0..200 {
        if metric(&m, "fedgate_s2s_bidi_links{direction=\"inbound\"}") == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        m = b.metrics().await;
    }
    assert_eq!(
        metric(&m, "fedgate_s2s_bidi_links{direction=\"inbound\"}"),
        0.0
    );
    // The series appears on the first unconfirmed stanza: none is what this asserts.
    assert_eq!(
        metric_or_zero(&m, "fedgate_outbound_stanzas_total{event=\"unconfirmed\"}"),
        0.0
    );
}

/// A raw TLS stream from "a.test" to b that asks for bidi with `request` (`<bidi/>`, with
/// children as Prosody 13 sends them) and proves a.test → b.test by dialback with a key of a's
/// secret; with the features b offered after TLS.
async fn bidi_stream(
    a: &Instance,
    b: &Instance,
    request: &str,
) -> (RawStream, fedgate::xml::stanza::Stanza) {
    let (mut s, id, features) = tls_s2s_stream(b.s2s_addr(), "a.test", "b.test", None).await;
    s.send(request).await;
    let key = a.dialback_secret().key("b.test", "a.test", &id);
    s.send(&format!(
        "<db:result from='a.test' to='b.test'>{key}</db:result>"
    ))
    .await;
    assert_eq!(s.next().await.type_(), Some("valid"));
    (s, features)
}
