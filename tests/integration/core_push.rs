//! XEP-0357 push notifications from the core, with raw client streams: a phone registers an
//! app server (here another account's session, which receives the publishes as an app server
//! would), goes away, and a message for it wakes it through the app server.

use crate::core::*;
use crate::harness::*;

const ENABLE: &str = "<iq type='set' id='e'><enable xmlns='urn:xmpp:push:0' jid='app@a.test/srv' node='n1'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s3cret</value></field></x></enable></iq>";

async fn three_accounts() -> (TestDns, Node) {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| c.allow_plain = true).await;
    for user in ["alice@a.test", "bob@a.test", "app@a.test"] {
        n.add_user(user, "pw");
    }
    (dns, n)
}

async fn chat(s: &mut RawStream, body: &str) {
    s.send(&format!(
        "<message to='alice@a.test' type='chat' id='{body}'><body>{body}</body></message>"
    ))
    .await;
}

#[tokio::test]
async fn an_offline_phone_is_woken_through_its_app_server_until_the_app_server_refuses() {
    let (_dns, n) = three_accounts().await;
    let mut app = raw_session(n.c2s(), "app@a.test", "pw", "srv").await;
    let mut alice = raw_session(n.c2s(), "alice@a.test", "pw", "phone").await;
    alice
        .send("<iq type='get' id='d' to='alice@a.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        .await;
    let info = next_matching(&mut alice, |t| t.contains("id='d'")).await;
    assert!(info.contains("var='urn:xmpp:push:0'"), "{info}");
    alice
        .send("<iq type='set' id='bad'><enable xmlns='urn:xmpp:push:0' jid='app@a.test/srv'/></iq>")
        .await;
    let bad = next_matching(&mut alice, |t| t.contains("id='bad'")).await;
    assert!(bad.contains("<bad-request"), "{bad}");
    alice.send(ENABLE).await;
    let enabled = next_matching(&mut alice, |t| t.contains("id='e'")).await;
    assert!(enabled.contains("type='result'"), "{enabled}");
    drop(alice);

    let mut bob = raw_session(n.c2s(), "bob@a.test", "pw", "desk").await;
    chat(&mut bob, "wake-up").await;
    let push = next_matching(&mut app, |t| t.contains("urn:xmpp:push:0")).await;
    assert!(push.contains("from='alice@a.test'"), "{push}");
    assert!(push.contains("type='set'"), "{push}");
    assert!(push.contains("<publish node='n1'>"), "{push}");
    assert!(
        push.contains("<value>urn:xmpp:push:summary</value>"),
        "{push}"
    );
    assert!(
        push.contains("<value>s3cret</value>"),
        "the publish-options: {push}"
    );
    assert!(
        !push.contains("wake-up") && !push.contains("bob@"),
        "no body or sender: {push}"
    );

    // A chat state alone wakes nobody.
    bob.send("<message to='alice@a.test' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    silent(&mut app, 400).await;

    // The app server no longer knows the node: the registration is dropped.
    let id = push
        .split("id='")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    app.send(&format!(
        "<iq type='error' to='alice@a.test' id='{id}'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    ))
    .await;
    silent(&mut app, 300).await;
    chat(&mut bob, "again").await;
    silent(&mut app, 500).await;

    // Both messages with a body were kept for the phone.
    let mut alice = raw_session(n.c2s(), "alice@a.test", "pw", "phone").await;
    alice.send("<presence/>").await;
    next_matching(&mut alice, |t| t.contains("<body>wake-up</body>")).await;
    next_matching(&mut alice, |t| t.contains("<body>again</body>")).await;
}

#[tokio::test]
async fn a_detached_session_wakes_its_phone_and_a_disabled_registration_does_not() {
    let (_dns, n) = three_accounts().await;
    let mut app = raw_session(n.c2s(), "app@a.test", "pw", "srv").await;
    let mut alice = raw_session(n.c2s(), "alice@a.test", "pw", "phone").await;
    alice
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    next_matching(&mut alice, |t| t.starts_with("<enabled")).await;
    alice.send("<presence/>").await;
    alice.send(ENABLE).await;
    next_matching(&mut alice, |t| t.contains("id='e'")).await;
    // The phone's connection is lost: the session waits to be resumed, and a message for it
    // wakes the phone.
    drop(alice);
    let mut bob = raw_session(n.c2s(), "bob@a.test", "pw", "desk").await;
    chat(&mut bob, "while-detached").await;
    let push = next_matching(&mut app, |t| t.contains("urn:xmpp:push:0")).await;
    assert!(push.contains("<publish node='n1'>"), "{push}");

    // Disabled by the client: nothing more.
    let mut laptop = raw_session(n.c2s(), "alice@a.test", "pw", "laptop").await;
    laptop
        .send(
            "<iq type='set' id='off'><disable xmlns='urn:xmpp:push:0' jid='app@a.test/srv'/></iq>",
        )
        .await;
    let off = next_matching(&mut laptop, |t| t.contains("id='off'")).await;
    assert!(off.contains("type='result'"), "{off}");
    drop(laptop);
    chat(&mut bob, "after-disable").await;
    silent(&mut app, 500).await;
}
