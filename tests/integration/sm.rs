//! XEP-0198 stream management on inbound s2s streams (fedgate receives, counts and
//! acknowledges), whitespace keepalives, checked with raw peers authenticated by dialback or
//! SASL EXTERNAL; and the last acknowledgement a stopping gateway asks of its outbound peer.

use std::time::Duration;

use fedgate::xml::framer::Event;

use crate::certs::CertSpec;
use crate::harness::*;

const SM_OFFER: &str = "<sm xmlns='urn:xmpp:sm:3'/>";
const UNEXPECTED: &str = "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>";
const NOT_FOUND: &str = "<failed xmlns='urn:xmpp:sm:3' h='0'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>";

fn sm_metric(event: &str) -> String {
    format!("fedgate_s2s_sm_total{{direction=\"inbound\",event=\"{event}\"}}")
}

/// `<enable/>`, asking for resumption if `resume`; returns the id if any.
async fn enable(s: &mut RawStream, resume: bool) -> Option<String> {
    if resume {
        s.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
    } else {
        s.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    }
    let enabled = s.next().await;
    assert_eq!(enabled.name(), "enabled", "{}", text(enabled.raw()));
    assert_eq!(enabled.ns(), "urn:xmpp:sm:3");
    enabled.attr("id").map(|id| id.into_owned())
}

/// Sends `<resume previd='{id}' h='0'/>` and returns the answer's text.
async fn resume(s: &mut RawStream, id: &str) -> String {
    s.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    s.next_text().await
}

/// The `<resumed/>` that resuming `id` at `h` must get.
fn resumed(id: &str, h: u32) -> String {
    format!("<resumed xmlns='urn:xmpp:sm:3' previd='{id}' h='{h}'/>")
}

/// `<r/>` → the `h` of the `<a/>` that answers it.
async fn acked(s: &mut RawStream) -> u32 {
    s.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    expect_ack(s).await
}

/// Asks with `<r/>` and reads `<a/>`s up to one that reports `want` (or more): the answer
/// gives what has left b.test (here: was written to its backend), and if that is short of
/// what arrived before the `<r/>`, exactly one more `<a/>` follows, unasked, once it has.
/// A third would never come, and reading for it fails the test.
async fn acked_up_to(s: &mut RawStream, want: u32) -> u32 {
    let answer = acked(s).await;
    if answer >= want {
        return answer;
    }
    let caught_up = expect_ack(s).await;
    assert!(
        caught_up > answer,
        "the unasked <a/> ({caught_up}) moves past the answer ({answer})"
    );
    caught_up
}

/// The `h` of the next element, which must be an `<a/>`.
async fn expect_ack(s: &mut RawStream) -> u32 {
    let a = s.next().await;
    assert_eq!(a.name(), "a", "{}", text(a.raw()));
    a.attr("h").unwrap().parse().unwrap()
}

/// Sends `n` messages from a.test to b.test with ids `{prefix}{i}`.
async fn send_messages(s: &mut RawStream, prefix: &str, n: usize) {
    for i in 0..n {
        s.send(&format!(
            "<message from='alice@a.test' to='bob@b.test' id='{prefix}{i}'><body>{i}</body></message>"
        ))
        .await;
    }
}

/// Reads elements until `<stream:error/>` and returns its raw text.
async fn stream_error_text(s: &mut RawStream) -> String {
    loop {
        let e = s.next().await;
        if e.name() == "error" {
            return text(e.raw()).to_string();
        }
    }
}

#[tokio::test]
async fn sm_is_offered_after_tls_and_after_sasl_restart_unless_disabled() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let (s, features) = plain_s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    drop(s);
    assert!(
        !text(features.raw()).contains(SM_OFFER),
        "not before the required TLS: {}",
        text(features.raw())
    );
    let (_, _, features) = tls_s2s_stream(b.s2s_addr(), "a.test", "b.test", None).await;
    assert_eq!(
        text(features.raw()),
        "<stream:features><bidi xmlns='urn:xmpp:features:bidi'/><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback><sm xmlns='urn:xmpp:sm:3'/><limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>524288</max-bytes><idle-seconds>600</idle-seconds></limits></stream:features>"
    );

    // After SASL EXTERNAL the stream restarts, and the new features offer it again.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::certs::ca().issue(&CertSpec::for_names(&["a.test"]), dir.path(), "a");
    let (mut s, _, features) =
        tls_s2s_stream(b.s2s_addr(), "a.test", "b.test", Some((&cert, &key))).await;
    assert!(text(features.raw()).contains(SM_OFFER));
    s.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        .await;
    assert_eq!(s.next().await.name(), "success");
    s.restart();
    s.send(&s2s_header("a.test", "b.test")).await;
    s.expect_header().await;
    let features = s.next_text().await;
    assert!(features.contains(SM_OFFER), "{features}");
    // SASL EXTERNAL authenticates the stream: enable is honoured.
    assert!(enable(&mut s, true).await.is_some());

    let off = instance(&dns, "off.test")
        .s2s("stream_management = false")
        .start()
        .await;
    let (mut s, _, features) = tls_s2s_stream(off.s2s_addr(), "a.test", "off.test", None).await;
    assert!(!text(features.raw()).contains(SM_OFFER));
    s.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(
        s.next_text().await,
        "<failed xmlns='urn:xmpp:sm:3'><feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
}

#[tokio::test]
async fn enable_needs_an_authenticated_stream_and_is_answered_once() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let (mut s, id) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    s.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    assert_eq!(s.next_text().await, UNEXPECTED, "before authentication");
    s.send("<resume xmlns='urn:xmpp:sm:3' previd='x' h='0'/>")
        .await;
    assert_eq!(s.next_text().await, UNEXPECTED, "before authentication");
    // <r/> and <a/> without stream management are ignored; the stream goes on.
    s.send("<r xmlns='urn:xmpp:sm:3'/><a xmlns='urn:xmpp:sm:3' h='7'/>")
        .await;

    let key = a.dialback_secret().key("b.test", "a.test", &id);
    s.send(&format!(
        "<db:result from='a.test' to='b.test'>{key}</db:result>"
    ))
    .await;
    assert_eq!(s.next().await.type_(), Some("valid"));
    s.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = s.next().await;
    let raw = text(enabled.raw()).to_string();
    let sm_id = enabled.attr("id").expect("an id").into_owned();
    assert_eq!(sm_id.len(), 32, "128 random bits, hex: {raw}");
    assert!(sm_id.bytes().all(|c| c.is_ascii_hexdigit()), "{raw}");
    assert_eq!(
        raw,
        format!("<enabled xmlns='urn:xmpp:sm:3' id='{sm_id}' resume='true' max='300'/>")
    );
    s.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(s.next_text().await, UNEXPECTED, "only once");
    assert_eq!(resume(&mut s, &sm_id).await, UNEXPECTED, "not once enabled");

    // Without resume='true': no id, no resumption.
    let mut t = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    t.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(t.next_text().await, "<enabled xmlns='urn:xmpp:sm:3'/>");

    let m = b.metrics().await;
    assert_eq!(metric(&m, &sm_metric("enabled")), 2.0, "{m}");
}

#[tokio::test]
async fn handled_stanzas_are_counted_from_enable_and_acknowledged() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test")
        .backend("other.test", "other-secret")
        .start()
        .await;
    let mut backend = b.backend().await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    // Before enable: handled, not counted.
    send_messages(&mut s, "before", 1).await;
    enable(&mut s, false).await;
    assert_eq!(acked_up_to(&mut s, 0).await, 0);
    send_messages(&mut s, "m", 2).await;
    s.send("<presence from='alice@a.test/r' to='bob@b.test'/>")
        .await;
    s.send("<iq type='get' id='q1' from='alice@a.test/r' to='b.test'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    assert_eq!(acked_up_to(&mut s, 4).await, 4);
    for id in ["before0", "m0", "m1"] {
        assert_eq!(backend.next().await.id(), Some(id));
    }
    assert_eq!(backend.next().await.name(), "presence");
    assert_eq!(backend.next().await.id(), Some("q1"));

    // A stanza that bounces (other.test has no backend attached) was handled too.
    let id = s.header.as_ref().unwrap().id.clone().unwrap();
    let key = a.dialback_secret().key("other.test", "a.test", &id);
    s.send(&format!(
        "<db:result from='a.test' to='other.test'>{key}</db:result>"
    ))
    .await;
    assert_eq!(s.next().await.type_(), Some("valid"));
    s.send("<message from='alice@a.test' to='x@other.test' id='bounced'/>")
        .await;
    // Dialback and stream management elements are not stanzas.
    assert_eq!(acked_up_to(&mut s, 5).await, 5);
    assert_eq!(acked_up_to(&mut s, 5).await, 5);
    // Four <r/>: four answers, and at most one unasked <a/> after each.
    let m = b.metrics().await;
    let acks = metric(&m, &sm_metric("acked"));
    assert!((4.0..=8.0).contains(&acks), "{acks} <a/> sent: {m}");
}

/// a.test, and b.test whose backend attached and dropped its link: what arrives for it waits
/// for it to attach again (`reattach_grace`, 5 s), and has not left the gateway meanwhile.
async fn b_whose_backend_just_left(dns: &TestDns) -> (Instance, Instance) {
    let a = instance(dns, "a.test").start().await;
    let b = instance(dns, "b.test").start().await;
    drop(b.backend().await);
    wait_for_metric(
        &b,
        "fedgate_component_reattach_total{outcome=\"waited\"}",
        1.0,
    )
    .await;
    (a, b)
}

/// A stanza counts in `h` only once it has left the gateway. Messages for a backend that has
/// just dropped its link wait for it to attach again (`reattach_grace`), so they are not
/// counted: an `<r/>` is answered with 0, and when the sender closes the stream, the last
/// `<a/>` comes after a second's wait for them and still leaves them out, so that the sender
/// keeps them. Once the backend is back, they arrive.
#[tokio::test]
async fn the_last_ack_leaves_out_what_still_waits_for_its_backend() {
    let dns = TestDns::start().await;
    let (a, b) = b_whose_backend_just_left(&dns).await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    enable(&mut s, false).await;
    send_messages(&mut s, "m", 3).await;
    assert_eq!(
        acked(&mut s).await,
        0,
        "waiting for the backend: not counted"
    );
    s.send("</stream:stream>").await;
    let closed_at = tokio::time::Instant::now();
    assert_eq!(expect_ack(&mut s).await, 0, "the last <a/> leaves them out");
    assert!(
        closed_at.elapsed() >= Duration::from_millis(900),
        "the stream waited for them first: {:?}",
        closed_at.elapsed()
    );
    assert!(matches!(s.event().await, Event::StreamClose));
    let mut backend = b.backend().await;
    for i in 0..3 {
        assert_eq!(backend.next().await.id(), Some(format!("m{i}").as_str()));
    }
}

/// The count a resumption takes is what had left the gateway too: with messages waiting for
/// their backend (as in the test above), a stream that drops is kept with `h` 0, and one
/// still open hands over 0 when a resumption takes it over, each after its second's wait, so
/// that the sender resends them. (They are also delivered once the backend is back: at least
/// once.)
#[tokio::test]
async fn a_resumption_takes_only_what_had_left_the_gateway() {
    let dns = TestDns::start().await;
    let (a, b) = b_whose_backend_just_left(&dns).await;

    // Dropped, then resumed.
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    let id = enable(&mut s, true).await.expect("resumable");
    send_messages(&mut s, "dropped", 2).await;
    assert_eq!(acked(&mut s).await, 0);
    drop(s);
    wait_for_metric(&b, &sm_metric("kept"), 1.0).await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    assert_eq!(resume(&mut s, &id).await, resumed(&id, 0));

    // Still open, then taken over.
    send_messages(&mut s, "open", 1).await;
    assert_eq!(acked(&mut s).await, 0);
    let mut t = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    assert_eq!(resume(&mut t, &id).await, resumed(&id, 0));
    assert_eq!(s.expect_stream_error().await, "conflict");

    let mut backend = b.backend().await;
    for want in ["dropped0", "dropped1", "open0"] {
        assert_eq!(backend.next().await.id(), Some(want));
    }
}

#[tokio::test]
async fn a_dropped_stream_resumes_with_its_count_and_keeps_its_id() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend = b.backend().await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    let id = enable(&mut s, true).await.expect("resumable");
    send_messages(&mut s, "first", 3).await;
    for i in 0..3 {
        assert_eq!(
            backend.next().await.id(),
            Some(format!("first{i}").as_str())
        );
    }
    drop(s);
    wait_for_metric(&b, &sm_metric("kept"), 1.0).await;

    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    assert_eq!(resume(&mut s, &id).await, resumed(&id, 3));
    send_messages(&mut s, "second", 2).await;
    assert_eq!(
        acked_up_to(&mut s, 5).await,
        5,
        "counting goes on from the resumed h"
    );
    drop(s);
    wait_for_metric(&b, &sm_metric("kept"), 2.0).await;

    // Resumed once, it is kept under the same id again; and taken only once.
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    assert_eq!(resume(&mut s, &id).await, resumed(&id, 5));
    let mut t = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    s.send("</stream:stream>").await;
    assert_eq!(expect_ack(&mut s).await, 5);
    assert!(matches!(s.event().await, Event::StreamClose));
    assert_eq!(
        resume(&mut t, &id).await,
        NOT_FOUND,
        "a clean close keeps nothing"
    );
    let m = b.metrics().await;
    assert_eq!(metric(&m, &sm_metric("resumed")), 2.0, "{m}");
    assert_eq!(metric(&m, &sm_metric("resume_failed")), 1.0, "{m}");
}

#[tokio::test]
async fn a_live_stream_is_taken_over_by_its_resumption_for_the_same_domains_only() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let c = instance(&dns, "c.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend = b.backend().await;
    // The old stream is still open on our side (its sender has given up on it).
    let mut old = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    let id = enable(&mut old, true).await.unwrap();
    send_messages(&mut old, "old", 2).await;
    assert_eq!(acked_up_to(&mut old, 2).await, 2);

    // Another domain cannot take it: the old stream goes on.
    let mut other = authenticated_s2s(b.s2s_addr(), &c, "b.test").await;
    assert_eq!(resume(&mut other, &id).await, NOT_FOUND);
    send_messages(&mut old, "old-more", 1).await;
    assert_eq!(acked_up_to(&mut old, 3).await, 3);

    let mut new = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    assert_eq!(resume(&mut new, &id).await, resumed(&id, 3));
    assert_eq!(old.expect_stream_error().await, "conflict");
    send_messages(&mut new, "new", 1).await;
    assert_eq!(acked_up_to(&mut new, 4).await, 4);
    for want in ["old0", "old1", "old-more0", "new0"] {
        assert_eq!(backend.next().await.id(), Some(want));
    }
}

#[tokio::test]
async fn failed_resumptions_leave_the_stream_open_and_the_counters_for_their_owner() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let c = instance(&dns, "c.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let _backend = b.backend().await;

    // Unknown id: failed, then enable works on the same stream.
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    s.send("<resume xmlns='urn:xmpp:sm:3' previd='0123456789abcdef0123456789abcdef' h='0'/>")
        .await;
    assert_eq!(s.next_text().await, NOT_FOUND);
    let id = enable(&mut s, true).await.unwrap();
    send_messages(&mut s, "m", 2).await;
    assert_eq!(acked_up_to(&mut s, 2).await, 2);
    drop(s);
    wait_for_metric(&b, &sm_metric("kept"), 1.0).await;

    // Kept for a.test: a stream authenticated for c.test cannot take it...
    let mut t = authenticated_s2s(b.s2s_addr(), &c, "b.test").await;
    assert_eq!(resume(&mut t, &id).await, NOT_FOUND);
    // ...and a.test still can.
    let mut u = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    assert_eq!(resume(&mut u, &id).await, resumed(&id, 2));
}

#[tokio::test(start_paused = true)]
async fn kept_counters_expire_after_resume_timeout() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test")
        .s2s("resume_timeout = \"300ms\"")
        .start()
        .await;
    // Two streams to drop, and the two that resume them, authenticated beforehand so that the
    // first resumption is one round trip within the timeout.
    let mut s1 = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    s1.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = s1.next().await;
    assert_eq!(
        enabled.attr("max").as_deref(),
        Some("1"),
        "whole seconds, at least 1"
    );
    let early = enabled.attr("id").unwrap().into_owned();
    let mut s2 = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    let late = enable(&mut s2, true).await.unwrap();
    let mut t1 = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    let mut t2 = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    drop((s1, s2));
    wait_for_metric(&b, &sm_metric("kept"), 2.0).await;
    // Both were kept by now, so both expire by `kept + resume_timeout`.
    let expired_by = tokio::time::Instant::now() + Duration::from_millis(300);
    // Within the timeout: resumed.
    assert_eq!(resume(&mut t1, &early).await, resumed(&early, 0));
    assert!(
        tokio::time::Instant::now() < expired_by,
        "the early resumption came in time"
    );
    // After it: gone. Expiry is a timer, checked at the resumption, so this waits for it.
    tokio::time::sleep_until(expired_by).await;
    assert_eq!(resume(&mut t2, &late).await, NOT_FOUND);
}

#[tokio::test]
async fn a_handled_count_above_what_we_sent_is_a_stream_error() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let _backend = b.backend().await;

    // <a h='0'/> is right: we send no stanzas on this stream.
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    enable(&mut s, false).await;
    send_messages(&mut s, "m", 1).await;
    s.send("<a xmlns='urn:xmpp:sm:3' h='0'/>").await;
    assert_eq!(acked_up_to(&mut s, 1).await, 1);
    s.send("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    assert_eq!(expect_ack(&mut s).await, 1, "the last <a/> comes first");
    let error = stream_error_text(&mut s).await;
    assert!(error.contains("<undefined-condition "), "{error}");
    assert!(
        error.contains("<handled-count-too-high xmlns='urn:xmpp:sm:3' h='1' send-count='0'/>"),
        "{error}"
    );
    assert!(matches!(s.event().await, Event::StreamClose));

    // The same for <resume/> claiming stanzas from us.
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    s.send("<resume xmlns='urn:xmpp:sm:3' previd='abc' h='2'/>")
        .await;
    let error = stream_error_text(&mut s).await;
    assert!(
        error.contains("<handled-count-too-high xmlns='urn:xmpp:sm:3' h='2' send-count='0'/>"),
        "{error}"
    );

    // A count that is not a number is bad-format.
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    enable(&mut s, false).await;
    s.send("<a xmlns='urn:xmpp:sm:3' h='-1'/>").await;
    assert_eq!(s.expect_stream_error().await, "bad-format");
}

#[tokio::test(start_paused = true)]
async fn every_close_of_ours_or_the_peers_ends_with_a_final_ack() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut b = instance(&dns, "b.test").start().await;
    let idle = instance(&dns, "idle.test")
        .s2s("idle_timeout = \"1s\"")
        .start()
        .await;
    let mut backend = b.backend().await;
    let _idle_backend = idle.backend().await;

    // The peer closes: <a/>, then our close.
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    enable(&mut s, false).await;
    send_messages(&mut s, "p", 2).await;
    s.send("</stream:stream>").await;
    assert_eq!(expect_ack(&mut s).await, 2);
    assert!(matches!(s.event().await, Event::StreamClose));

    // Idle: <a/>, then our close.
    let mut s = authenticated_s2s(idle.s2s_addr(), &a, "idle.test").await;
    enable(&mut s, false).await;
    s.send("<message from='alice@a.test' to='bob@idle.test'/>")
        .await;
    assert_eq!(expect_ack(&mut s).await, 1);
    assert!(matches!(s.event().await, Event::StreamClose));

    // Shutdown: <a/>, then <system-shutdown/>.
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    enable(&mut s, false).await;
    send_messages(&mut s, "s", 3).await;
    for want in ["p0", "p1", "s0", "s1", "s2"] {
        assert_eq!(backend.next().await.id(), Some(want));
    }
    b.stop().await;
    assert_eq!(expect_ack(&mut s).await, 3);
    assert_eq!(s.expect_stream_error().await, "system-shutdown");
}

#[tokio::test(start_paused = true)]
async fn an_idle_inbound_stream_gets_whitespace_keepalives_and_still_closes_when_idle() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test")
        .s2s("keepalive_interval = \"200ms\"\nidle_timeout = \"1500ms\"")
        .start()
        .await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    let started = tokio::time::Instant::now();
    let raw = s
        .read_raw_until(|got| got.ends_with(b"</stream:stream>"))
        .await;
    let raw = String::from_utf8(raw).unwrap();
    let spaces = raw
        .strip_suffix("</stream:stream>")
        .expect("closed when idle");
    assert!(
        spaces.len() >= 3 && spaces.bytes().all(|b| b == b' '),
        "single spaces only: {raw:?}"
    );
    assert!(
        spaces.len() <= 8,
        "one per interval of silence, not more: {raw:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1300),
        "keepalives do not count as activity, and do not end it early either"
    );
}

/// The next stanza a.test writes to the fake receiver.
async fn next_stanza(conn: &mut fedgate::connection::Connection) -> fedgate::xml::stanza::Stanza {
    match tokio::time::timeout(WAIT, conn.next_event())
        .await
        .expect("a.test writes on")
    {
        Ok(Event::Stanza(s)) => s,
        other => panic!("expected a stanza: {:?}", other.map(|_| ())),
    }
}

/// A stopping gateway asks its outbound XEP-0198 peer for a last acknowledgement and waits
/// for the answer before it closes the stream. Closing at once, a peer that reads the close
/// first may end the stream without answering (Prosody did), and what it had received would
/// count as unconfirmed: an acknowledging backend sends it again, and it arrives twice.
#[tokio::test]
async fn a_stopping_gateway_waits_for_its_peers_last_ack_before_it_closes() {
    let dns = TestDns::start().await;
    // Dialback, XEP-0198, then m1, which we hold unacknowledged.
    let FakePeer {
        mut a,
        backend: _backend,
        mut conn,
        ..
    } = fake_peer(&dns, "", "m1", Sm::Offered).await;
    let stopping = tokio::spawn(async move {
        a.stop().await;
        a
    });
    // Nothing but requests comes while m1 is unanswered: no close.
    let quiet = tokio::time::sleep(Duration::from_millis(300));
    tokio::pin!(quiet);
    let mut asked = false;
    loop {
        tokio::select! {
            _ = &mut quiet => break,
            e = conn.next_event() => match e {
                Ok(Event::Stanza(s)) if s.name() == "r" => asked = true,
                other => panic!("the stream went on or ended before our answer: {:?}", other.map(|e| matches!(e, Event::StreamClose))),
            },
        }
    }
    assert!(asked, "no last <r/>");
    conn.send(b"<a xmlns='urn:xmpp:sm:3' h='1'/>");
    conn.flush().await.unwrap();
    let close = next_stanza(&mut conn).await;
    assert_eq!(close.name(), "error", "{}", text(close.raw()));
    assert!(
        text(close.raw()).contains("system-shutdown"),
        "{}",
        text(close.raw())
    );
    stopping.await.unwrap();
}

/// A peer that counts a stanza only once it has passed it on (fedgate does, see
/// `fedgate::s2s::sm::Receiving`) may answer `<r/>` with less than was written. The sending
/// side then asks again after another batch of stanzas, or a while after the traffic
/// pauses, never after every batch or every round trip. (Before, each batch after the
/// first 128 asked, and a pause made `<r/>` and `<a/>` go back and forth as fast as the
/// link allowed.) The fake peer here acknowledges nothing: every answer is `h='0'`.
#[tokio::test]
async fn a_peer_that_answers_short_is_asked_again_per_batch_not_per_round_trip() {
    let dns = TestDns::start().await;
    let FakePeer {
        a,
        mut backend,
        mut conn,
        ..
    } = fake_peer(&dns, "", "m0", Sm::Offered).await;
    // 600 more in 120 small batches, 1 ms apart.
    const N: usize = 600;
    let sending = tokio::spawn(async move {
        for i in 0..N / 5 {
            let mut batch = String::new();
            for j in 0..5 {
                batch.push_str(&format!(
                    "<message from='alice@a.test' to='bob@fake.test' id='b{}'/>",
                    i * 5 + j
                ));
            }
            backend.send(&batch).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        backend
    });
    let (mut messages, mut requests) = (0, 0);
    let mut quiet_until = None;
    loop {
        let next = match quiet_until {
            Some(t) => match tokio::time::timeout_at(t, conn.next_event()).await {
                Ok(e) => e,
                Err(_) => break,
            },
            None => tokio::time::timeout(WAIT, conn.next_event())
                .await
                .expect("a.test writes on"),
        };
        let Ok(Event::Stanza(s)) = next else {
            panic!("the link ended");
        };
        match s.name() {
            "message" => messages += 1,
            "r" => {
                requests += 1;
                conn.send(b"<a xmlns='urn:xmpp:sm:3' h='0'/>");
                conn.flush().await.unwrap();
            }
            other => panic!("unexpected <{other}/>"),
        }
        if messages == N && quiet_until.is_none() {
            // Then a second without new stanzas, everything still unacknowledged.
            quiet_until = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
    let _backend = sending.await.unwrap();
    // One per 128 written (4), and one per 200 ms of the pause (5), with a little room for
    // the timers' rounding.
    assert!(
        requests <= N / 128 + 5 + 3,
        "{requests} <r/> for {N} stanzas and a 1 s pause"
    );
    assert!(requests >= 2, "asked at all: {requests}");
}

/// a.test with a link to fake.test, a fake peer that takes it up to its first message.
struct FakePeer {
    a: Instance,
    /// a.test's backend, which sent the link's first message.
    backend: RawStream,
    /// The fake peer's side of the link, after that message.
    conn: fedgate::connection::Connection,
    /// Where a.test's next link to fake.test arrives.
    receiver: FakeReceiver,
    _dir: tempfile::TempDir,
}

/// a.test (with `s2s` lines in its `[s2s]`) and its backend, which sends a message with id
/// `first` to fake.test; the fake peer takes the link up to that message
/// ([`fake_peer_until_a_message`], offering XEP-0198 as `sm` says).
async fn fake_peer(dns: &TestDns, s2s: &str, first: &str, sm: Sm) -> FakePeer {
    let a = instance(dns, "a.test").s2s(s2s).start().await;
    let dir = tempfile::tempdir().unwrap();
    let ip = next_loopback();
    let receiver = FakeReceiver::bind(ip, dir.path()).await;
    dns.add("fake.test", ip);
    let mut backend = a.backend().await;
    backend
        .send(&format!(
            "<message from='alice@a.test' to='bob@fake.test' id='{first}'/>"
        ))
        .await;
    let (conn, m) = fake_peer_until_a_message(&receiver, 0, sm).await;
    assert_eq!(m.id(), Some(first));
    FakePeer {
        a,
        backend,
        conn,
        receiver,
        _dir: dir,
    }
}

/// Whether the fake peer offers XEP-0198.
#[derive(Clone, Copy, PartialEq)]
enum Sm {
    Offered,
    NotOffered,
}

/// The fake peer's side of a new outbound stream from a.test: STARTTLS, dialback features
/// (and XEP-0198 if `sm` says so, enabled without resumption), `valid` for the result, until
/// the first message, which is returned.
async fn fake_peer_until_a_message(
    receiver: &FakeReceiver,
    tag: usize,
    sm: Sm,
) -> (
    fedgate::connection::Connection,
    fedgate::xml::stanza::Stanza,
) {
    let mut conn = tokio::time::timeout(WAIT, receiver.accept())
        .await
        .expect("a.test connects")
        .unwrap();
    fake_peer_starttls(&mut conn, &receiver.tls, tag).await;
    let offer = if sm == Sm::Offered { SM_OFFER } else { "" };
    conn.send(format!("<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>{offer}</stream:features>").as_bytes());
    conn.flush().await.unwrap();
    loop {
        let s = next_stanza(&mut conn).await;
        match s.name() {
            "result" => conn.send(b"<db:result from='fake.test' to='a.test' type='valid'/>"),
            "enable" if sm == Sm::Offered => conn.send(b"<enabled xmlns='urn:xmpp:sm:3'/>"),
            "message" => return (conn, s),
            _ => {}
        }
        conn.flush().await.unwrap();
    }
}

/// A link without XEP-0198 that closes idle before the peer confirmed its last stanza (the
/// confirming ping went unanswered) does not count it delivered: it waits for the answer a
/// little longer before it closes, and then, as `unconfirmed = "resend"` (the default) says, sends it again on a
/// new link. Before, the stanza was counted `unconfirmed` and its sender never heard of it.
#[tokio::test]
async fn a_link_that_closes_idle_before_the_peer_confirmed_sends_the_rest_again() {
    let dns = TestDns::start().await;
    let FakePeer {
        a,
        backend: _backend,
        mut conn,
        receiver,
        ..
    } = fake_peer(
        &dns,
        "idle_timeout = \"1s\"\nping_timeout = \"30s\"\nretry_initial_delay = \"100ms\"",
        "m1",
        Sm::NotOffered,
    )
    .await;
    // Nothing is answered: the confirming ping comes (still in flight when the link is idle,
    // so the last wait is for its answer), then the close.
    let mut pings = 0;
    loop {
        match tokio::time::timeout(WAIT, conn.next_event()).await.unwrap() {
            Ok(Event::Stanza(s)) if s.name() == "iq" => pings += 1,
            Ok(Event::Stanza(s)) => panic!("unexpected {}", text(s.raw())),
            _ => break,
        }
    }
    assert!(pings >= 1, "a confirming ping before closing: {pings}");
    let (_conn, again) = fake_peer_until_a_message(&receiver, 1, Sm::NotOffered).await;
    assert_eq!(again.id(), Some("m1"), "sent again on a new link");
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_outbound_stanzas_total{event=\"resent_unconfirmed\"}"
        ),
        1.0
    );
}
