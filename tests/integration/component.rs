//! XEP-0114: handshake, addressing rules, conflicts.

use crate::harness::*;
use fedgate::dialback::component_handshake;

const HEADER: &str = "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='a.test'>";

/// A backend stream for a.test that sends the handshake `digest(stream id)` and is left
/// waiting for the answer.
async fn handshake_with(a: &Instance, digest: impl Fn(&str) -> String) -> RawStream {
    let mut s = RawStream::connect(a.gw().component_addr).await;
    s.send(HEADER).await;
    let id = s.expect_header().await.id.unwrap();
    s.send(&format!("<handshake>{}</handshake>", digest(&id)))
        .await;
    s
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_not_authorized() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut s = handshake_with(&a, |id| component_handshake(id, "wrong")).await;
    assert_eq!(s.expect_stream_error().await, "not-authorized");
}

#[tokio::test]
async fn the_handshake_is_bound_to_the_stream_id() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    // A digest replayed from another stream does not match this one.
    let mut s = handshake_with(&a, |id| {
        component_handshake(&format!("{id}x"), &a.component_secret)
    })
    .await;
    assert_eq!(s.expect_stream_error().await, "not-authorized");
}

#[tokio::test]
async fn a_handshake_with_an_element_inside_is_refused_even_with_the_right_digest() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut s = handshake_with(&a, |id| {
        format!(
            "{}<x xmlns='urn:example'/>",
            component_handshake(id, &a.component_secret)
        )
    })
    .await;
    assert_eq!(s.expect_stream_error().await, "not-authorized");
    // The right digest alone is accepted (the positive control).
    let mut s = handshake_with(&a, |id| component_handshake(id, &a.component_secret)).await;
    assert_eq!(s.next_text().await, "<handshake/>");
}

#[tokio::test]
async fn stream_ids_are_unpredictable() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut previous: Option<String> = None;
    for _ in 0..20 {
        let mut s = RawStream::connect(a.gw().component_addr).await;
        s.send(HEADER).await;
        let id = s.expect_header().await.id.unwrap();
        // 128 random bits in hex: a counter, a clock or a short id would fail here...
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        // ...and consecutive ids share no long prefix (a zero-padded counter would).
        if let Some(p) = &previous {
            let shared = p
                .bytes()
                .zip(id.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            assert!(shared < 8, "{p} and {id} share {shared} leading digits");
        }
        previous = Some(id);
    }
}

#[tokio::test]
async fn an_unknown_domain_is_host_unknown_and_a_missing_to_is_improper_addressing() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    for (header, condition) in [
        ("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='other.test'>", "host-unknown"),
        ("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>", "improper-addressing"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='a.test'>", "invalid-namespace"),
    ] {
        let mut s = RawStream::connect(a.gw().component_addr).await;
        s.send(header).await;
        assert_eq!(s.expect_stream_error().await, condition, "{header}");
    }
}

#[tokio::test]
async fn a_spoofed_from_is_invalid_from() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut backend = a.backend().await;
    backend
        .send("<message from='eve@b.test' to='bob@c.test'><body>x</body></message>")
        .await;
    assert_eq!(backend.expect_stream_error().await, "invalid-from");
    backend.expect_eof().await;
}

#[tokio::test]
async fn a_stanza_without_to_is_improper_addressing() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut backend = a.backend().await;
    backend
        .send("<message from='alice@a.test'><body>x</body></message>")
        .await;
    assert_eq!(backend.expect_stream_error().await, "improper-addressing");
}

#[tokio::test]
async fn a_second_backend_for_a_bound_domain_gets_conflict() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut first = a.backend().await;
    let mut second = handshake_with(&a, |id| component_handshake(id, &a.component_secret)).await;
    assert_eq!(second.expect_stream_error().await, "conflict");
    // The first one still works: a message to itself comes back.
    first
        .send("<message from='a.test' to='alice@a.test' id='self'/>")
        .await;
    assert_eq!(first.next().await.id(), Some("self"));
}

#[tokio::test]
async fn with_replace_on_conflict_the_old_backend_gets_conflict() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .component("replace_on_conflict = true")
        .start()
        .await;
    let mut first = a.backend().await;
    let mut second = a.backend().await;
    assert_eq!(first.expect_stream_error().await, "conflict");
    second
        .send("<message from='a.test' to='alice@a.test' id='new'/>")
        .await;
    assert_eq!(second.next().await.id(), Some("new"));
}

#[tokio::test]
async fn stanzas_between_two_local_backends_are_routed_locally() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend("muc.a.test", "two")
        .start()
        .await;
    let mut one = a.backend().await;
    let mut two = a.backend_for("muc.a.test", "two").await;
    let m = "<message from='alice@a.test' to='room@muc.a.test' type='groupchat' id='g'><body>hi</body></message>";
    one.send(m).await;
    assert_eq!(two.next_text().await, m);
}

#[tokio::test]
async fn restricted_xml_from_a_backend_ends_the_stream() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut backend = a.backend().await;
    backend.send("<!-- a comment -->").await;
    assert_eq!(backend.expect_stream_error().await, "restricted-xml");
}

/// XEP-0114 §3 with RFC 6120 §4.9.3: after the handshake a backend sends only stanzas, each with
/// a `to` that is an address and a `from` within its own domain (not even a subdomain of it);
/// anything else ends its stream.
#[tokio::test]
async fn what_a_backend_may_not_send_ends_its_stream() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    for (xml, condition) in [
        (
            "<message to='bob@c.test'><body>x</body></message>",
            "improper-addressing",
        ),
        (
            "<message from='alice@a.test' to='bob@'><body>x</body></message>",
            "improper-addressing",
        ),
        (
            "<message from='eve@sub.a.test' to='bob@c.test'><body>x</body></message>",
            "invalid-from",
        ),
        ("<handshake/>", "unsupported-stanza-type"),
    ] {
        let mut backend = a.backend().await;
        backend.send(xml).await;
        assert_eq!(backend.expect_stream_error().await, condition, "{xml}");
    }
}

/// A backend that opens a stream and never sends its handshake holds the connection only for
/// the negotiation timeout.
#[tokio::test(start_paused = true)]
async fn no_handshake_in_time_is_connection_timeout() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .s2s("negotiation_timeout = \"300ms\"")
        .start()
        .await;
    let mut s = RawStream::connect(a.gw().component_addr).await;
    s.send(HEADER).await;
    s.expect_header().await;
    assert_eq!(s.expect_stream_error().await, "connection-timeout");
}
