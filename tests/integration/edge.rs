//! What the edge lets through to the parsers behind it (backends) and beyond it (peers):
//! bytes that would break expat or ElementTree, garbage that would hang a stream, addresses
//! a JID parser refuses. Each case sends the bytes, asserts the answer, and asserts that
//! nothing reached the other side.

use std::time::Duration;

use crate::harness::*;

/// Nothing arrives on `s` for `ms` milliseconds.
async fn nothing_on(s: &mut RawStream, ms: u64) {
    if let Ok(e) = tokio::time::timeout(Duration::from_millis(ms), s.event()).await {
        panic!("unexpected {e:?}");
    }
}

#[tokio::test]
async fn a_duplicate_attribute_by_expanded_name_ends_the_stream_and_goes_nowhere() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    // From a remote to a backend.
    let mut peer = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    peer.send("<message xmlns:p='urn:x' xmlns:q='urn:x' p:z='1' q:z='2' from='alice@a.test' to='bob@b.test'><body>x</body></message>").await;
    assert_eq!(peer.expect_stream_error().await, "not-well-formed");
    nothing_on(&mut backend_b, 300).await;
    // From a backend to a remote.
    backend_a.send("<message xmlns:p='urn:x' xmlns:q='urn:x' p:z='1' q:z='2' from='alice@a.test' to='bob@b.test'><body>x</body></message>").await;
    assert_eq!(backend_a.expect_stream_error().await, "not-well-formed");
    nothing_on(&mut backend_b, 300).await;
}

#[tokio::test]
async fn a_brace_in_a_namespace_name_is_refused_before_it_reaches_a_backend() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_b = b.backend().await;
    let mut peer = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    peer.send("<message from='alice@a.test' to='bob@b.test'><q xmlns='urn:a}b'/></message>")
        .await;
    assert_eq!(peer.expect_stream_error().await, "not-well-formed");
    nothing_on(&mut backend_b, 300).await;
}

#[tokio::test]
async fn garbage_after_a_lt_is_answered_at_once_not_at_the_timeout() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_b = b.backend().await;
    // Before the stream header.
    let mut s = RawStream::connect(b.s2s_addr()).await;
    s.send("<'").await;
    let started = tokio::time::Instant::now();
    assert_eq!(s.expect_stream_error().await, "not-well-formed");
    // After authentication, with a stanza behind it that must not be swallowed silently.
    let mut peer = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    peer.send("<' x='<message from=\"alice@a.test\" to=\"bob@b.test\"/>'>")
        .await;
    assert_eq!(peer.expect_stream_error().await, "not-well-formed");
    assert!(started.elapsed() < Duration::from_secs(5));
    nothing_on(&mut backend_b, 300).await;
}

#[tokio::test]
async fn a_malformed_localpart_or_resourcepart_bounces_jid_malformed_and_is_not_forwarded() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    let long = "x".repeat(1024);
    let mut peer = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    for (i, to) in [
        "b ob@b.test".to_string(),
        "bo:b@b.test".to_string(),
        "b\u{a0}ob@b.test".to_string(),
        "bob@b.test/r\u{85}".to_string(),
        format!("{long}@b.test"),
        format!("bob@b.test/{long}"),
    ]
    .iter()
    .enumerate()
    {
        peer.send(&format!(
            "<message from='alice@a.test' to='{to}' id='m{i}'><body>x</body></message>"
        ))
        .await;
        // The sender's server (a.test) hands the error to its backend.
        let bounce = backend_a.next().await;
        assert_eq!(
            (bounce.type_(), bounce.id()),
            (Some("error"), Some(format!("m{i}").as_str())),
            "{}",
            text(bounce.raw())
        );
        assert!(
            text(bounce.raw()).contains("<jid-malformed "),
            "{}",
            text(bounce.raw())
        );
    }
    nothing_on(&mut backend_b, 300).await;
    // A backend's malformed address comes back to it the same way.
    backend_b
        .send("<message from='b ob@b.test' to='alice@a.test' id='x'><body>x</body></message>")
        .await;
    let bounce = backend_b.next().await;
    assert!(
        text(bounce.raw()).contains("<jid-malformed "),
        "{}",
        text(bounce.raw())
    );
    nothing_on(&mut backend_a, 300).await;
}

#[tokio::test]
async fn a_nested_stream_header_is_refused_at_its_start_tag() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut peer = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    peer.send("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='b.test'>")
        .await;
    assert_eq!(peer.expect_stream_error().await, "bad-format");
}
