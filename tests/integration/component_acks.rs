//! Acknowledgements on the component stream (XEP-0198 on XEP-0114, `fedgate::component::sm`):
//! a plain backend is offered nothing and sees nothing; the gateway acknowledges a stanza
//! only once it has left; what it wrote to an acknowledging backend that drops before
//! acknowledging is routed again. The crash test with two gateway processes is in `ha.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use fedgate::component::client::{ClientConfig, Component, Event, Sender};
use fedgate::component::{held, sm};

use crate::harness::*;

const ECHO_SECRET: &str = "echo-secret";

/// Starts the library for `echo.a.test` on `a` and waits until it is online.
async fn library(a: &Instance) -> (Sender, fedgate::component::client::Events) {
    let component = Component::start(ClientConfig::new(
        "echo.a.test",
        ECHO_SECRET,
        fedgate::component::client::Target::Tcp(a.gw().component_addr),
    ));
    let (sender, mut events, stopper) = component.into_parts();
    // Kept running for the test's life.
    std::mem::forget(stopper);
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(Event::Online { .. })) => {}
        other => panic!("expected Online, got {other:?}"),
    }
    (sender, events)
}

async fn next_stanza(events: &mut fedgate::component::client::Events) -> fedgate::xml::Stanza {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(Event::Stanza(s))) => return s,
            Ok(Some(_)) => continue,
            other => panic!("expected a stanza, got {other:?}"),
        }
    }
}

/// A raw component stream for `domain`: our header (declaring acknowledgements when
/// `declare`), the gateway's header, the handshake. Returns whether the gateway declared them.
async fn raw_component(
    addr: SocketAddr,
    domain: &str,
    secret: &str,
    declare: bool,
) -> (RawStream, bool) {
    let sm_ns = if declare {
        format!(" xmlns:sm='{}'", sm::NS)
    } else {
        String::new()
    };
    raw_component_declaring(addr, domain, secret, &sm_ns).await
}

/// A raw backend whose header carries the namespace declarations `declarations`; whether the
/// gateway offered acknowledgements.
async fn raw_component_declaring(
    addr: SocketAddr,
    domain: &str,
    secret: &str,
    declarations: &str,
) -> (RawStream, bool) {
    let mut s = RawStream::connect(addr).await;
    s.send(&format!(
        "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'{declarations} to='{domain}'>"
    ))
    .await;
    let header = s.expect_header().await;
    let offered = sm::declared(&header);
    let id = header.id.clone().expect("stream id");
    s.send(&format!(
        "<handshake>{}</handshake>",
        fedgate::dialback::component_handshake(&id, secret)
    ))
    .await;
    assert_eq!(&s.next().await.raw()[..], b"<handshake/>");
    (s, offered)
}

const ACKED_IN: &str = "fedgate_component_acked_total{direction=\"inbound\"}";
const UNACKED_IN: &str = "fedgate_component_unacked{direction=\"inbound\"}";

/// (1) A plain XEP-0114 backend works as before: its header gets no offer, an `<enable/>` from
/// it is refused like any other non-stanza, and it never sees `<enabled/>`, `<r/>` or `<a/>`,
/// while the library next to it on the same gateway has acknowledgements.
#[tokio::test]
async fn a_plain_backend_is_offered_nothing_and_never_sees_stream_management() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend("echo.a.test", ECHO_SECRET)
        .start()
        .await;
    let (mut plain, offered) =
        raw_component(a.gw().component_addr, "a.test", &a.component_secret, false).await;
    assert!(
        !offered,
        "the gateway declared acknowledgements to a plain backend"
    );
    let (sender, mut events) = library(&a).await;
    assert_eq!(
        metric(&a.metrics().await, "fedgate_component_acks_enabled_total"),
        1.0,
        "the library enabled them"
    );
    for i in 0..3 {
        plain
            .send(&format!(
                "<message from='a.test' to='echo.a.test' id='p{i}'/>"
            ))
            .await;
        assert_eq!(
            next_stanza(&mut events).await.id(),
            Some(format!("p{i}").as_str())
        );
        sender
            .send_raw(format!(
                "<message from='echo.a.test' to='a.test' id='e{i}'/>"
            ))
            .await
            .unwrap();
    }
    for i in 0..3 {
        assert_eq!(
            plain.next_text().await,
            format!("<message from='echo.a.test' to='a.test' id='e{i}'/>"),
            "exactly the stanzas, nothing of urn:xmpp:sm:3 in between"
        );
    }
    // The library's stanzas were written to the plain backend's socket: acknowledged.
    eventually("the library's stanzas are acknowledged", || {
        sender.stats().acked() == 3
    })
    .await;
    let more = tokio::time::timeout(Duration::from_millis(300), plain.next());
    assert!(
        more.await.is_err(),
        "the plain backend got more than its stanzas"
    );
    // Not offered: <enable/> is no stanza, as before.
    plain.send(&format!("<enable xmlns='{}'/>", sm::NS)).await;
    assert_eq!(plain.expect_stream_error().await, "unsupported-stanza-type");
}

/// A gateway for a.test with a plain backend `echo.a.test`'s domain, and a "server" for
/// slow.test that accepts and never says anything, so that a stanza for it waits in the
/// outbound queue until the retry window (2 s) closes and it bounces.
async fn with_a_silent_remote(dns: &TestDns) -> Instance {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    instance(dns, "a.test")
        .backend("echo.a.test", ECHO_SECRET)
        // A backend's next session starts clean, without what the last one left unacknowledged.
        .component("reattach_grace = \"0s\"")
        .s2s("retry_window = \"2s\"\nnegotiation_timeout = \"1s\"")
        .route("slow.test", silent_addr, false)
        .start()
        .await
}

/// (2) A stanza is acknowledged only once it has left the gateway for good: one for a remote
/// server that never finishes negotiating waits in the outbound queue unacknowledged until
/// its bounce, and the library keeps it until then. The stanza after it, which left at once,
/// is not held up by it: the gateway reports the slow one held (component::held) and
/// acknowledges past it, so the library forgets the other and keeps sending.
#[tokio::test(start_paused = true)]
async fn a_stanza_is_acknowledged_once_it_has_left_and_a_slow_one_holds_up_nothing() {
    let dns = TestDns::start().await;
    let a = with_a_silent_remote(&dns).await;
    let mut plain = a.backend().await;
    let (sender, mut events) = library(&a).await;
    let to_plain = |id: &str| format!("<message from='echo.a.test' to='a.test' id='{id}'/>");

    sender.send_raw(to_plain("first")).await.unwrap();
    assert_eq!(plain.next().await.id(), Some("first"));
    eventually("the first is acknowledged", || sender.stats().acked() == 1).await;

    sender
        .send_raw("<message from='echo.a.test' to='x@slow.test' id='slow'><body>?</body></message>")
        .await
        .unwrap();
    sender.send_raw(to_plain("after")).await.unwrap();
    // "after" has left (written to the plain backend), "slow" before it has not.
    assert_eq!(plain.next().await.id(), Some("after"));
    eventually("the one after the slow one is acknowledged", || {
        sender.stats().acked() == 2
    })
    .await;
    assert_eq!(
        sender.stats().unacked(),
        1,
        "the library keeps the slow one"
    );
    let m = a.metrics().await;
    assert_eq!(metric(&m, "fedgate_component_held_total"), 1.0);
    assert_eq!(metric(&m, UNACKED_IN), 1.0, "held is not done");

    // The retry window closes: "slow" bounces, which counts as done.
    let bounce = next_stanza(&mut events).await;
    assert_eq!(bounce.id(), Some("slow"));
    assert_eq!(bounce.type_(), Some("error"));
    eventually("everything is acknowledged", || sender.stats().acked() == 3).await;
    assert_eq!(sender.stats().unacked(), 0);
    let m = a.metrics().await;
    assert_eq!(metric(&m, ACKED_IN), 3.0);
    assert_eq!(metric(&m, UNACKED_IN), 0.0);
}

/// (2, on the wire) The held report comes before the `<a/>` that passes the held stanza, and
/// its `<done>` once it bounced. A backend that declared acknowledgements but not held
/// reports (an older library) gets the plain XEP-0198 count: `h` stops at the slow stanza.
#[tokio::test]
async fn held_reports_precede_the_ack_past_them_and_only_a_backend_that_declared_them_gets_them() {
    let dns = TestDns::start().await;
    let a = with_a_silent_remote(&dns).await;
    let mut plain = a.backend().await;
    for held in [true, false] {
        let declarations = if held {
            format!(" xmlns:sm='{}' xmlns:held='{}'", sm::NS, held::NS)
        } else {
            format!(" xmlns:sm='{}'", sm::NS)
        };
        let (mut raw, offered) = raw_component_declaring(
            a.gw().component_addr,
            "echo.a.test",
            ECHO_SECRET,
            &declarations,
        )
        .await;
        assert!(offered);
        raw.send(&format!("<enable xmlns='{}'/>", sm::NS)).await;
        assert_eq!(raw.next_text().await, "<enabled xmlns='urn:xmpp:sm:3'/>");
        raw.send("<message from='echo.a.test' to='x@slow.test' id='slow'/><message from='echo.a.test' to='a.test' id='after'/>")
            .await;
        assert_eq!(plain.next().await.id(), Some("after"));
        // What the gateway writes about acknowledgements until the bounce of "slow" has come
        // and the count has passed it; its requests (<r/>) for the bounce aside.
        let last = if held {
            "<done xmlns='urn:fedgate:held:0'>0</done>"
        } else {
            "<a xmlns='urn:xmpp:sm:3' h='2'/>"
        };
        let mut reports = Vec::new();
        let mut bounced = false;
        while !(bounced && reports.iter().any(|r| r == last)) {
            let text = raw.next_text().await;
            if text.contains("id='slow'") {
                bounced = true;
            } else if !text.starts_with("<r ") {
                reports.push(text);
            }
        }
        let expected: &[&str] = if held {
            &[
                "<held xmlns='urn:fedgate:held:0'>0</held>",
                "<a xmlns='urn:xmpp:sm:3' h='2'/>",
                "<done xmlns='urn:fedgate:held:0'>0</done>",
            ]
        } else {
            &["<a xmlns='urn:xmpp:sm:3' h='2'/>"]
        };
        assert_eq!(reports, expected, "held = {held}");
        drop(raw);
        // The session ends before the next round attaches.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (2, the other way) What the gateway writes to an acknowledging backend stays until the
/// backend acknowledges it; if its link drops first, it is routed again (here, with
/// `reattach_grace = "0s"`: bounced to its sender, as no other session serves the domain)
/// instead of vanishing with the socket.
#[tokio::test]
async fn what_a_backend_did_not_acknowledge_before_its_link_dropped_is_routed_again() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend("echo.a.test", ECHO_SECRET)
        .component("reattach_grace = \"0s\"")
        .start()
        .await;
    let (mut acking, offered) =
        raw_component(a.gw().component_addr, "a.test", &a.component_secret, true).await;
    assert!(offered, "declared to a backend that declared it");
    acking.send(&format!("<enable xmlns='{}'/>", sm::NS)).await;
    assert_eq!(acking.next_text().await, "<enabled xmlns='urn:xmpp:sm:3'/>");
    let mut echo = a.backend_for("echo.a.test", ECHO_SECRET).await;

    echo.send("<message from='echo.a.test' to='a.test' id='m1'/>")
        .await;
    assert_eq!(acking.next().await.id(), Some("m1"));
    let r = acking.next().await;
    assert_eq!(
        (r.name(), r.ns()),
        ("r", sm::NS),
        "the gateway asks after a batch"
    );
    // Not passed on yet: the gateway asks again shortly, without a new batch.
    acking.send(&format!("<a xmlns='{}' h='0'/>", sm::NS)).await;
    let r = acking.next().await;
    assert_eq!((r.name(), r.ns()), ("r", sm::NS), "asked again");
    acking.send(&format!("<a xmlns='{}' h='1'/>", sm::NS)).await;
    // Answered <r/> of ours: the gateway's count of what we sent (nothing).
    acking.send(&format!("<r xmlns='{}'/>", sm::NS)).await;
    assert_eq!(acking.next_text().await, "<a xmlns='urn:xmpp:sm:3' h='0'/>");
    wait_for_metric(
        &a,
        "fedgate_component_acked_total{direction=\"outbound\"}",
        1.0,
    )
    .await;

    echo.send("<message from='echo.a.test' to='a.test' id='m2'/>")
        .await;
    assert_eq!(acking.next().await.id(), Some("m2"));
    // The backend goes away without acknowledging m2.
    drop(acking);
    let bounce = echo.next().await;
    assert_eq!(bounce.id(), Some("m2"), "{}", text(bounce.raw()));
    assert_eq!(bounce.type_(), Some("error"));
    assert!(text(bounce.raw()).contains("service-unavailable"));
    let m = a.metrics().await;
    assert_eq!(metric(&m, "fedgate_component_unacked_returned_total"), 1.0);
    assert_eq!(
        metric(&m, "fedgate_component_unacked{direction=\"outbound\"}"),
        0.0
    );
    // m1 was acknowledged: not bounced.
    let more = tokio::time::timeout(Duration::from_millis(300), echo.next());
    assert!(more.await.is_err(), "an acknowledged stanza came back");
}

/// With the default grace, what an acknowledging backend had not acknowledged when its link
/// dropped is written to its next session first, before what was routed to it meanwhile.
#[tokio::test]
async fn what_a_backend_did_not_acknowledge_goes_first_to_its_next_session() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend("echo.a.test", ECHO_SECRET)
        .start()
        .await;
    let (mut acking, offered) =
        raw_component(a.gw().component_addr, "a.test", &a.component_secret, true).await;
    assert!(offered);
    acking.send(&format!("<enable xmlns='{}'/>", sm::NS)).await;
    assert_eq!(acking.next_text().await, "<enabled xmlns='urn:xmpp:sm:3'/>");
    let mut echo = a.backend_for("echo.a.test", ECHO_SECRET).await;

    echo.send("<message from='echo.a.test' to='a.test' id='unacked'/>")
        .await;
    assert_eq!(acking.next().await.id(), Some("unacked"));
    drop(acking);
    wait_for_metric(
        &a,
        "fedgate_component_reattach_total{outcome=\"waited\"}",
        1.0,
    )
    .await;
    echo.send("<message from='echo.a.test' to='a.test' id='meanwhile'/>")
        .await;

    // A plain session this time: it gets both, as stanzas, oldest first.
    let (mut next, _) =
        raw_component(a.gw().component_addr, "a.test", &a.component_secret, false).await;
    assert_eq!(next.next().await.id(), Some("unacked"));
    assert_eq!(next.next().await.id(), Some("meanwhile"));
    let more = tokio::time::timeout(Duration::from_millis(300), echo.next());
    assert!(
        more.await.is_err(),
        "a bounce although the backend came back"
    );
    let m = a.metrics().await;
    assert_eq!(metric(&m, "fedgate_component_unacked_returned_total"), 1.0);
}

/// An acknowledgement of more than the gateway wrote ends the stream (XEP-0198 §4).
#[tokio::test]
async fn an_acknowledgement_of_more_than_was_written_ends_the_stream() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let (mut acking, _) =
        raw_component(a.gw().component_addr, "a.test", &a.component_secret, true).await;
    acking.send(&format!("<enable xmlns='{}'/>", sm::NS)).await;
    assert_eq!(acking.next().await.name(), "enabled");
    acking.send(&format!("<a xmlns='{}' h='5'/>", sm::NS)).await;
    assert_eq!(acking.expect_stream_error().await, "undefined-condition");
}
