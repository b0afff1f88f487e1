//! XEP-0198 stream management and XEP-0352 client state indication on the core's client
//! streams, with raw streams (exact bytes) for the rules and the real slixmpp client for a
//! resumption as a phone does it.

use std::time::Duration;

use crate::core::*;
use crate::harness::*;

const SM: &str = "urn:xmpp:sm:3";

/// A raw session bound to `resource` with stream management enabled for resumption; returns
/// the stream and the id to resume it with.
async fn sm_session(n: &Node, user: &str, resource: &str) -> (RawStream, String) {
    let mut s = raw_session(n.c2s(), user, "pw", resource).await;
    s.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = s.next().await;
    assert_eq!(
        (enabled.name(), enabled.ns()),
        ("enabled", SM),
        "{}",
        text(enabled.raw())
    );
    let id = enabled.attr("id").expect("a resumable id").to_string();
    (s, id)
}

/// Reads until a stanza whose text contains `needle` arrives, and returns it (passing over
/// the acknowledgement requests in between).
async fn until(s: &mut RawStream, needle: &str) -> String {
    next_matching(s, |t| t.contains(needle)).await
}

/// A chat message from `from`'s session to `to`, with an id.
async fn chat(s: &mut RawStream, to: &str, id: &str) {
    s.send(&format!(
        "<message to='{to}' type='chat' id='{id}'><body>{id}</body></message>"
    ))
    .await;
}

async fn two_accounts(
    tweak: impl FnOnce(&mut fedgate::core::config::CoreConfig),
) -> (TestDns, Node) {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| {
        c.allow_plain = true;
        tweak(c)
    })
    .await;
    n.add_user("alice@a.test", "pw");
    n.add_user("bob@a.test", "pw");
    (dns, n)
}

#[tokio::test]
async fn acknowledgements_go_both_ways_and_what_xep_0198_forbids_is_refused() {
    let (_dns, n) = two_accounts(|_| {}).await;
    // Offered with <bind/>, with XEP-0352 next to it.
    let domain = "a.test";
    let (mut s, _) = raw_tls(n.c2s(), domain).await;
    s.send(&plain_auth("alice@a.test", "pw", "")).await;
    s.next().await;
    s.restart();
    s.send(&client_header(domain)).await;
    s.expect_header().await;
    let features = s.next_text().await;
    assert!(
        features.contains("<sm xmlns='urn:xmpp:sm:3'/>")
            && features.contains("<csi xmlns='urn:xmpp:csi:0'/>"),
        "{features}"
    );
    // §3: not before binding.
    s.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(
        s.next_text().await,
        "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
    raw_bind_resource(&mut s, "r").await;
    s.send("<enable xmlns='urn:xmpp:sm:3' resume='true' max='60'/>")
        .await;
    let enabled = s.next_text().await;
    assert!(
        enabled.starts_with("<enabled xmlns='urn:xmpp:sm:3' id='")
            && enabled.ends_with("' resume='true' max='60'/>"),
        "the client's shorter max is taken: {enabled}"
    );
    // Once only.
    s.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(
        s.next_text().await,
        "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
    // Two stanzas handled: <a h='2'/>.
    for id in ["p1", "p2"] {
        s.send(&format!(
            "<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    }
    until(&mut s, "id='p2'").await;
    s.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(
        until(&mut s, "<a ").await,
        "<a xmlns='urn:xmpp:sm:3' h='2'/>"
    );
    // The server asked for our count after its stanzas; it may not be more than it sent (2).
    s.send("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    s.send("<a xmlns='urn:xmpp:sm:3' h='3'/>").await;
    let mut error = String::new();
    loop {
        match s.event().await {
            fedgate::xml::framer::Event::Stanza(st) if st.name() == "error" => {
                error = text(st.raw()).to_owned();
                break;
            }
            fedgate::xml::framer::Event::StreamClose => break,
            _ => continue,
        }
    }
    assert!(
        error.contains("<undefined-condition ")
            && error
                .contains("<handled-count-too-high xmlns='urn:xmpp:sm:3' h='3' send-count='2'/>"),
        "{error}"
    );
}

#[tokio::test]
async fn a_lost_connection_is_resumed_with_what_the_client_had_not_acknowledged() {
    let (_dns, n) = two_accounts(|_| {}).await;
    let (mut alice, id) = sm_session(&n, "alice@a.test", "phone").await;
    let mut bob = raw_session(n.c2s(), "bob@a.test", "pw", "r").await;
    chat(&mut bob, "alice@a.test/phone", "m1").await;
    until(&mut alice, "id='m1'").await;
    // The phone loses its connection before acknowledging m1.
    drop(alice);
    // While detached the session is still there: bob's message to the full JID is kept for
    // it (no error comes back), not stored offline.
    chat(&mut bob, "alice@a.test/phone", "m2").await;
    silent(&mut bob, 300).await;
    // Resumed: the server's count (alice sent nothing), then m1 again and m2, in order.
    let mut alice = raw_signed_in(n.c2s(), "alice@a.test", "pw").await;
    alice
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
        ))
        .await;
    assert_eq!(
        alice.next_text().await,
        format!("<resumed xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>")
    );
    let m1 = alice.next_text().await;
    assert!(m1.contains("id='m1'"), "{m1}");
    let m2 = until(&mut alice, "<message").await;
    assert!(m2.contains("id='m2'"), "{m2}");
    // The resumed stream acknowledges both, and they are not sent a third time on the next
    // resumption.
    alice.send("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;
    alice
        .send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    until(&mut alice, "id='p'").await;
    drop(alice);
    let mut alice = raw_signed_in(n.c2s(), "alice@a.test", "pw").await;
    alice
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='3'/>"
        ))
        .await;
    assert_eq!(
        alice.next_text().await,
        format!("<resumed xmlns='urn:xmpp:sm:3' previd='{id}' h='1'/>"),
        "one stanza (the ping) handled since"
    );
    silent(&mut alice, 300).await;
}

#[tokio::test]
async fn a_resumption_of_an_unknown_or_foreign_session_fails_and_the_client_binds_anew() {
    let (_dns, n) = two_accounts(|_| {}).await;
    let (bob, bobs_id) = sm_session(&n, "bob@a.test", "r").await;
    drop(bob);
    let not_found = "<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>";
    let mut alice = raw_signed_in(n.c2s(), "alice@a.test", "pw").await;
    alice
        .send("<resume xmlns='urn:xmpp:sm:3' previd='nosuchid' h='0'/>")
        .await;
    assert_eq!(alice.next_text().await, not_found);
    // bob's detached session is not alice's to take.
    alice
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{bobs_id}' h='0'/>"
        ))
        .await;
    assert_eq!(alice.next_text().await, not_found);
    assert_eq!(
        raw_bind_resource(&mut alice, "new").await,
        "alice@a.test/new"
    );
    // ...and bob still can.
    let mut bob = raw_signed_in(n.c2s(), "bob@a.test", "pw").await;
    bob.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{bobs_id}' h='0'/>"
    ))
    .await;
    assert!(bob.next_text().await.starts_with("<resumed "));
}

#[tokio::test]
async fn a_session_still_connected_is_taken_over_by_its_resumption() {
    let (_dns, n) = two_accounts(|_| {}).await;
    let (mut old, id) = sm_session(&n, "alice@a.test", "phone").await;
    let mut bob = raw_session(n.c2s(), "bob@a.test", "pw", "r").await;
    chat(&mut bob, "alice@a.test/phone", "m1").await;
    until(&mut old, "id='m1'").await;
    // The client noticed the loss first; the server still has the old connection open.
    let mut new = raw_signed_in(n.c2s(), "alice@a.test", "pw").await;
    new.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    assert_eq!(old.expect_stream_error().await, "conflict");
    assert_eq!(
        new.next_text().await,
        format!("<resumed xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>")
    );
    assert!(new.next_text().await.contains("id='m1'"));
}

#[tokio::test]
async fn unacknowledged_messages_go_offline_when_the_session_is_not_resumed_in_time() {
    let (_dns, n) = two_accounts(|c| {
        c.resume_timeout = Duration::from_millis(500);
    })
    .await;
    let (mut alice, _) = sm_session(&n, "alice@a.test", "phone").await;
    alice.send("<presence/>").await;
    let mut bob = raw_session(n.c2s(), "bob@a.test", "pw", "r").await;
    chat(&mut bob, "alice@a.test", "m1").await;
    until(&mut alice, "id='m1'").await;
    drop(alice);
    // Not resumed: the session ends; m1, never acknowledged, is stored, and arrives (once,
    // stamped) at the next sign-in.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut alice = raw_session(n.c2s(), "alice@a.test", "pw", "laptop").await;
    alice.send("<presence/>").await;
    let m1 = until(&mut alice, "<message").await;
    assert!(
        m1.contains("id='m1'") && m1.contains("<delay xmlns='urn:xmpp:delay'"),
        "{m1}"
    );
    silent(&mut alice, 300).await;
}

#[tokio::test]
async fn an_unanswered_acknowledgement_request_detaches_the_session() {
    let (_dns, n) = two_accounts(|c| c.ack_timeout = Duration::from_secs(1)).await;
    let (mut alice, id) = sm_session(&n, "alice@a.test", "phone").await;
    let mut bob = raw_session(n.c2s(), "bob@a.test", "pw", "r").await;
    chat(&mut bob, "alice@a.test/phone", "m1").await;
    until(&mut alice, "id='m1'").await;
    assert_eq!(until(&mut alice, "<r ").await, "<r xmlns='urn:xmpp:sm:3'/>");
    // A half-open connection: the client never answers. The server gives up on it...
    alice.expect_eof().await;
    // ...but not on the session.
    let mut alice = raw_signed_in(n.c2s(), "alice@a.test", "pw").await;
    alice
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
        ))
        .await;
    assert!(alice.next_text().await.starts_with("<resumed "));
    assert!(alice.next_text().await.contains("id='m1'"));
}

#[tokio::test]
async fn an_inactive_client_gets_the_newest_presence_per_contact_before_a_message() {
    let (_dns, n) = two_accounts(|_| {}).await;
    let mut alice = raw_session(n.c2s(), "alice@a.test", "pw", "phone").await;
    let mut bob = raw_session(n.c2s(), "bob@a.test", "pw", "r").await;
    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    // Directed presence from bob: three updates while alice's screen is off.
    for status in ["one", "two", "three"] {
        bob.send(&format!(
            "<presence to='alice@a.test/phone'><status>{status}</status></presence>"
        ))
        .await;
    }
    // Held: nothing is written yet.
    silent(&mut alice, 300).await;
    // A message matters now: the newest presence first, then the message.
    chat(&mut bob, "alice@a.test/phone", "m1").await;
    let p = alice.next_text().await;
    assert!(
        p.starts_with("<presence") && p.contains("<status>three</status>"),
        "{p}"
    );
    assert!(alice.next_text().await.contains("id='m1'"));
    // Active again: held presence is written at once.
    bob.send("<presence to='alice@a.test/phone'><status>four</status></presence>")
        .await;
    silent(&mut alice, 300).await;
    alice.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    assert!(alice.next_text().await.contains("<status>four</status>"));
    bob.send("<presence to='alice@a.test/phone'><status>five</status></presence>")
        .await;
    assert!(alice.next_text().await.contains("<status>five</status>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_resumes_after_losing_its_connection_and_nothing_is_lost_or_doubled() {
    let (_dns, n) = two_accounts(|_| {}).await;
    // alice's phone reaches the core through a path the test can break.
    let path = crate::proxy::TestProxy::start(n.c2s()).await;
    let mut alice = login(path.addr, "alice@a.test/phone", "pw")
        .stream_management()
        .online()
        .await;
    let mut bob = raw_session(n.c2s(), "bob@a.test", "pw", "r").await;
    chat(&mut bob, "alice@a.test/phone", "m1").await;
    alice.expect("message", |e| e["id"] == "m1").await;
    // The path goes dead: m2 and m3 are written by the core but never reach the phone.
    path.pause(true);
    chat(&mut bob, "alice@a.test/phone", "m2").await;
    chat(&mut bob, "alice@a.test/phone", "m3").await;
    silent(&mut bob, 300).await;
    // The phone gives up on the connection and comes back.
    alice.run(serde_json::json!({"cmd": "drop"})).await;
    path.pause(false);
    alice.expect("resumed", |_| true).await;
    chat(&mut bob, "alice@a.test/phone", "m4").await;
    // m2 and m3 arrive after all, once each; m1 (acknowledged) not again; m4 ends the list.
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("m4") {
        let e = alice.expect("message", |_| true).await;
        got.push(e["id"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(got, ["m2", "m3", "m4"]);
    assert_eq!(path.connections(), 2, "one reconnection, resumed");
    alice.quit().await;
}
