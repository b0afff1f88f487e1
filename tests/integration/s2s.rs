//! Inbound s2s rules, checked with a raw peer writing XML bytes.

use crate::harness::*;

#[tokio::test]
async fn the_inbound_stream_requires_starttls_then_offers_dialback_with_errors() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut s = RawStream::connect(b.s2s_addr()).await;
    s.send("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>").await;
    let h = s.expect_header().await;
    assert_eq!(h.from.as_deref(), Some("b.test"));
    assert_eq!(h.to.as_deref(), Some("a.test"));
    assert!(h.declares_dialback());
    assert_eq!(
        s.next_text().await,
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
    );
    s.starttls("b.test", None).await;
    s.send(&s2s_header("a.test", "b.test")).await;
    let h2 = s.expect_header().await;
    assert_ne!(h2.id, h.id, "a new stream id after TLS");
    // No client certificate: no SASL EXTERNAL, dialback over TLS; XEP-0288 bidi (encrypted
    // streams only) and XEP-0198 offered.
    assert_eq!(
        s.next_text().await,
        "<stream:features><bidi xmlns='urn:xmpp:features:bidi'/><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback><sm xmlns='urn:xmpp:sm:3'/><limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>524288</max-bytes><idle-seconds>600</idle-seconds></limits></stream:features>"
    );
}

#[tokio::test]
async fn header_errors() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let cases = [
        ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='c.test' version='1.0'>", "host-unknown"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='1.0'>", "invalid-namespace"),
        ("<stream:stream xmlns='jabber:server' xmlns:stream='urn:wrong' to='b.test' version='1.0'>", "invalid-namespace"),
        ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='2.0'>", "unsupported-version"),
        ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>", "improper-addressing"),
        ("<!DOCTYPE foo><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='b.test'>", "restricted-xml"),
    ];
    for (header, expected) in cases {
        let mut s = RawStream::connect(b.s2s_addr()).await;
        s.send(header).await;
        assert_eq!(s.expect_stream_error().await, expected, "for {header}");
    }
}

#[tokio::test]
async fn stanzas_before_authentication_are_not_authorized() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let (mut s, _) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    s.send("<message from='alice@a.test' to='bob@b.test'><body>x</body></message>")
        .await;
    assert_eq!(s.expect_stream_error().await, "not-authorized");
}

#[tokio::test]
async fn a_spoofed_from_on_an_authenticated_stream_is_invalid_from() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    s.send("<message from='eve@c.test' to='bob@b.test'><body>x</body></message>")
        .await;
    assert_eq!(s.expect_stream_error().await, "invalid-from");
}

#[tokio::test]
async fn a_stanza_to_a_domain_we_do_not_serve_is_host_unknown() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    // Never a relay: b.test does not forward to a third domain.
    s.send("<message from='alice@a.test' to='carol@c.test'><body>x</body></message>")
        .await;
    assert_eq!(s.expect_stream_error().await, "host-unknown");
}

#[tokio::test]
async fn a_stanza_without_from_is_improper_addressing() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    s.send("<message to='bob@b.test'><body>x</body></message>")
        .await;
    assert_eq!(s.expect_stream_error().await, "improper-addressing");
}

#[tokio::test]
async fn split_input_one_byte_per_write_is_framed_like_whole_input() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_b = b.backend().await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    let m = "<message from='alice@a.test' to='bob@b.test' id='split'><body>caf\u{e9} \u{1d11e} &amp;&#x41;</body><x xmlns='urn:x'><![CDATA[<raw>]]></x></message>";
    for byte in m.as_bytes() {
        s.send_bytes(&[*byte]).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(backend_b.next_text().await, m);
}

#[tokio::test]
async fn restricted_xml_is_refused() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    for (bad, expected) in [
        ("<!-- hi -->", "restricted-xml"),
        ("<?pi data?>", "restricted-xml"),
        (
            "<db:result from='a.test' to='b.test'>&custom;</db:result>",
            "restricted-xml",
        ),
        ("<message>\u{1}</message>", "not-well-formed"),
    ] {
        let (mut s, _) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
        s.send(bad).await;
        assert_eq!(s.expect_stream_error().await, expected, "for {bad:?}");
    }
    let (mut s, _) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    s.send_bytes(b"<message to='b.test'>\xff\xfe</message>")
        .await;
    assert_eq!(s.expect_stream_error().await, "not-well-formed");
}

#[tokio::test]
async fn oversize_stanzas_are_a_policy_violation() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test")
        .s2s("max_stanza_bytes = 65536")
        .start()
        .await;
    // Before authentication the limit is 8 KiB.
    let (mut s, _) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    s.send(&format!(
        "<db:result from='a.test' to='b.test'>{}</db:result>",
        "a".repeat(9000)
    ))
    .await;
    assert_eq!(s.expect_stream_error().await, "policy-violation");
    // After, max_stanza_bytes; 20 KiB passes, 70 KiB does not.
    let mut backend_b = b.backend().await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    let body = "b".repeat(20_000);
    s.send(&format!(
        "<message from='alice@a.test' to='bob@b.test'><body>{body}</body></message>"
    ))
    .await;
    assert!(backend_b.next_text().await.contains(&body));
    s.send(&format!(
        "<message from='alice@a.test' to='bob@b.test'><body>{}</body></message>",
        "c".repeat(70_000)
    ))
    .await;
    assert_eq!(s.expect_stream_error().await, "policy-violation");
}

#[tokio::test]
async fn db_verify_is_answered_with_our_key() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let (mut s, _) = s2s_stream(a.s2s_addr(), "b.test", "a.test").await;
    let key = a.dialback_secret().key("b.test", "a.test", "STREAM1");
    s.send(&format!(
        "<db:verify from='b.test' to='a.test' id='STREAM1'>{key}</db:verify>"
    ))
    .await;
    assert_eq!(
        s.next_text().await,
        "<db:verify from='a.test' to='b.test' id='STREAM1' type='valid'/>"
    );
    s.send(&format!(
        "<db:verify from='b.test' to='a.test' id='STREAM2'>{key}</db:verify>"
    ))
    .await;
    assert_eq!(
        s.next_text().await,
        "<db:verify from='a.test' to='b.test' id='STREAM2' type='invalid'/>"
    );
    s.send(&format!(
        "<db:verify from='b.test' to='x.test' id='STREAM1'>{key}</db:verify>"
    ))
    .await;
    // XEP-0220 §2.4: a dialback error, swapped addresses, the stanza error element inside.
    assert_eq!(
        s.next_text().await,
        "<db:verify from='x.test' to='b.test' id='STREAM1' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:verify>"
    );
}

#[tokio::test]
async fn a_db_result_for_a_domain_we_do_not_serve_gets_a_dialback_error_and_the_stream_lives() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let (mut s, id) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    s.send("<db:result from='a.test' to='other.test'>abc</db:result>")
        .await;
    let err = s.next_text().await;
    assert!(
        err.contains("type='error'") && err.contains("<item-not-found"),
        "{err}"
    );
    // Several pairs: the same stream still authenticates a.test → b.test.
    let key = a.dialback_secret().key("b.test", "a.test", &id);
    s.send(&format!(
        "<db:result from='a.test' to='b.test'>{key}</db:result>"
    ))
    .await;
    assert_eq!(s.next().await.type_(), Some("valid"));
}

#[tokio::test]
async fn an_unsolicited_dialback_response_ends_the_stream() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let (mut s, _) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    s.send("<db:result from='a.test' to='b.test' type='valid'/>")
        .await;
    assert_eq!(s.expect_stream_error().await, "not-authorized");
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_gets_connection_timeout() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test")
        .s2s("negotiation_timeout = \"500ms\"")
        .start()
        .await;
    let (mut s, _) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    assert_eq!(s.expect_stream_error().await, "connection-timeout");
}

#[tokio::test]
async fn several_domain_pairs_share_one_stream() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let c = instance(&dns, "c.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_b = b.backend().await;
    let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
    // Sender multiplexing (XEP-0220 §2.6.1): c.test proves itself on a.test's stream.
    let id = s.header.as_ref().unwrap().id.clone().unwrap();
    let key = c.dialback_secret().key("b.test", "c.test", &id);
    s.send(&format!(
        "<db:result from='c.test' to='b.test'>{key}</db:result>"
    ))
    .await;
    assert_eq!(s.next().await.type_(), Some("valid"));
    s.send("<message from='alice@a.test' to='bob@b.test' id='from-a'/>")
        .await;
    s.send("<message from='carol@c.test' to='bob@b.test' id='from-c'/>")
        .await;
    assert_eq!(backend_b.next().await.id(), Some("from-a"));
    assert_eq!(backend_b.next().await.id(), Some("from-c"));
    // A key for a.test → b.test cannot be replayed as c.test.
    let (mut t, id) = s2s_stream(b.s2s_addr(), "c.test", "b.test").await;
    let wrong = a.dialback_secret().key("b.test", "a.test", &id);
    t.send(&format!(
        "<db:result from='c.test' to='b.test'>{wrong}</db:result>"
    ))
    .await;
    assert_eq!(t.next().await.type_(), Some("invalid"));
    assert_eq!(t.expect_stream_error().await, "not-authorized");
}

#[tokio::test]
async fn a_second_starttls_is_a_policy_violation() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let (mut s, _) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    s.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert_eq!(s.expect_stream_error().await, "policy-violation");
}

#[tokio::test]
async fn an_element_that_is_no_s2s_stanza_is_unsupported_stanza_type() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    for element in [
        "<foo xmlns='urn:example:unknown'/>",
        // Stream management elements that only the receiving side sends.
        "<enabled xmlns='urn:xmpp:sm:3'/>",
        "<resumed xmlns='urn:xmpp:sm:3' previd='x' h='0'/>",
    ] {
        let mut s = authenticated_s2s(b.s2s_addr(), &a, "b.test").await;
        s.send(element).await;
        assert_eq!(
            s.expect_stream_error().await,
            "unsupported-stanza-type",
            "for {element}"
        );
    }
    // Before authentication too.
    let (mut s, _) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    s.send("<foo xmlns='urn:example:unknown'/>").await;
    assert_eq!(s.expect_stream_error().await, "unsupported-stanza-type");
}
