//! The core's delivery rules, driven without sockets ([`super::testing`]).

use super::testing::*;
use super::*;

#[tokio::test]
async fn what_a_kicked_session_never_wrote_is_rerouted_or_bounced() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let (_alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    let (slow, kick, slow_rx) = session(&core, "bob@a.test/slow", 8);
    // Eight stanzas fill the slow client's queue...
    for raw in [
        "<message from='alice@a.test/r' to='bob@a.test/slow' type='chat' id='c1'><body>1</body></message>",
        "<message from='alice@a.test/r' to='bob@a.test' id='n2'><body>2</body></message>",
        "<iq from='alice@a.test/r' to='bob@a.test/slow' type='get' id='q3'><query xmlns='jabber:iq:version'/></iq>",
        "<iq from='alice@a.test/r' to='bob@a.test/slow' type='result' id='q4'/>",
        "<presence from='alice@a.test/r' to='bob@a.test/slow' id='p5'/>",
        "<message from='alice@a.test/r' to='bob@a.test/slow' type='groupchat' id='g6'><body>6</body></message>",
        "<message from='alice@a.test/r' to='bob@a.test/slow' type='headline' id='h7'><body>7</body></message>",
        "<message from='alice@a.test/r' to='bob@a.test/slow' type='error' id='e8'/>",
    ] {
        core.route(client_el(raw)).await;
    }
    assert!(!kick.is_cancelled());
    // ...and the ninth overflows it: the client is kicked, the stanza kept.
    core.route(client_el(
        "<message from='alice@a.test/r' to='bob@a.test/slow' type='chat' id='c9'><body>9</body></message>",
    ))
    .await;
    assert!(kick.is_cancelled());
    assert_eq!(
        slow.kicked_with
            .lock()
            .unwrap()
            .as_ref()
            .map(|k| k.0.clone()),
        Some(StreamErrorCondition::ResourceConstraint)
    );
    // bob has another resource when the slow one's session ends.
    let (_other, _, mut other_rx) = session(&core, "bob@a.test/other", 16);
    core.session_ended(&slow, Some(slow_rx), Vec::new()).await;
    // chat and normal messages reach it, in order (RFC 6121 §8.5.3.2.1 for the full JID);
    let got = drain(&mut other_rx);
    assert_eq!(ids(&got, "message"), ["c1", "n2", "c9"], "{got:?}");
    // groupchat, headline and the iq request go back with service-unavailable; the result,
    // the error and the presence are not bounced.
    let back = drain(&mut alice_rx);
    assert_eq!(ids(&back, "iq"), ["q3"], "{back:?}");
    assert_eq!(ids(&back, "message"), ["g6", "h7"], "{back:?}");
    assert_eq!(back.len(), 3, "{back:?}");
    for e in &back {
        assert!(
            e.contains("type='error'") && e.contains("<service-unavailable "),
            "{e}"
        );
    }
    assert!(offline(&core, "bob@a.test").await.is_empty());
}

#[tokio::test]
async fn a_shared_copy_is_not_sent_twice_and_the_last_one_goes_offline_once_stamped() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let (_alice, _, _alice_rx) = session(&core, "alice@a.test/r", 16);
    let (a, _, a_rx) = session(&core, "bob@a.test/a", 8);
    let (b, _, mut b_rx) = session(&core, "bob@a.test/b", 8);
    // To the bare JID: both resources get a copy (§8.5.2.1.1).
    core.route(client_el(
        "<message from='alice@a.test/r' to='bob@a.test' type='chat' id='s1'><body>1</body></message>",
    ))
    .await;
    // a ends before writing it: b has its own copy, so it gets no second one.
    core.session_ended(&a, Some(a_rx), Vec::new()).await;
    let mut b_queue = Vec::new();
    while let Ok(q) = b_rx.try_recv() {
        b_queue.push(q);
    }
    let texts: Vec<String> = b_queue
        .iter()
        .map(|q| String::from_utf8(q.bytes.to_vec()).unwrap())
        .collect();
    // (and a's unavailable presence)
    assert_eq!(ids(&texts, "message"), ["s1"], "{texts:?}");
    assert!(offline(&core, "bob@a.test").await.is_empty());
    // b ends with its copy and a message to its full JID unwritten: with no resource left
    // both are stored, once each.
    core.route(client_el(
        "<message from='alice@a.test/r' to='bob@a.test/b' type='chat' id='f2'><body>2</body></message>",
    ))
    .await;
    while let Ok(q) = b_rx.try_recv() {
        b_queue.push(q);
    }
    let (tx, b_rx) = mpsc::channel(8);
    for q in b_queue {
        tx.try_send(q).unwrap();
    }
    core.session_ended(&b, Some(b_rx), Vec::new()).await;
    let stored = offline(&core, "bob@a.test").await;
    assert_eq!(ids(&stored, "message"), ["s1", "f2"], "{stored:?}");
    // Delivered from storage to a session that ends before writing them, they are stored
    // again with their first <delay/> only.
    let (c, _, c_rx) = session(&core, "bob@a.test/c", 8);
    core.deliver_offline(&c).await;
    core.session_ended(&c, Some(c_rx), Vec::new()).await;
    let again = offline(&core, "bob@a.test").await;
    assert_eq!(ids(&again, "message"), ["s1", "f2"], "{again:?}");
    for m in &again {
        assert_eq!(m.matches("<delay ").count(), 1, "{m}");
    }
    assert_eq!(stored, again);
}

#[tokio::test]
async fn a_stanza_with_no_federation_link_comes_back_to_its_sender() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice"]).await;
    let (tx, mut rx) = mpsc::channel(8);
    let jid = Jid::parse("alice@a.test/r").unwrap();
    let _session = core.register(jid, "alice@a.test".into(), tx);
    // A client's stanza: the client gets the error.
    core.route(client_el(
        "<message from='alice@a.test/r' to='bob@b.test' id='m1' type='chat'><body>x</body></message>",
    ))
    .await;
    let got = drain(&mut rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("<message from='bob@b.test' to='alice@a.test/r' id='m1' type='error'>")
            && got[0]
                .contains("<remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>")
            && got[0].contains("no federation link for a.test"),
        "{}",
        got[0]
    );
    // An iq too; an error or a result is never answered, so nothing loops.
    core.route(client_el(
        "<iq from='alice@a.test/r' to='b.test' id='q1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
    ))
    .await;
    assert!(drain(&mut rx)[0].contains("<remote-server-not-found"));
    for raw in [
        "<iq from='alice@a.test/r' to='b.test' id='q2' type='result'/>",
        "<message from='alice@a.test/r' to='bob@b.test' type='error'/>",
        "<message from='eve@c.test' to='bob@b.test'><body>x</body></message>",
    ] {
        core.route(client_el(raw)).await;
    }
    assert_eq!(drain(&mut rx), Vec::<String>::new());
}

#[test]
fn error_replies_swap_addresses_and_skip_errors() {
    let raw = "<message xmlns='jabber:client' to='nobody@a.test' type='chat' id='m1' xml:lang='en'><body>x</body></message>";
    let s = Stanza::parse(Bytes::from(raw), &NsContext::new(ns::CLIENT, &[])).unwrap();
    let mut el = s.element().unwrap();
    el.set_attr("from", "alice@a.test/r");
    let e = error_reply(
        &el,
        StanzaErrorCondition::ServiceUnavailable,
        "no such user",
    )
    .expect("an error reply");
    assert_eq!(e.attr("to"), Some("alice@a.test/r"));
    assert_eq!(e.attr("from"), Some("nobody@a.test"));
    assert_eq!(e.attr("type"), Some("error"));
    assert!(error_reply(&e, StanzaErrorCondition::ServiceUnavailable, "").is_none());
}

#[tokio::test]
async fn an_account_answers_disco_for_itself_and_names_what_it_does_not_support() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let (_alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    core.route(client_el(
        "<iq from='alice@a.test/r' to='bob@a.test' type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    ))
    .await;
    let got = drain(&mut alice_rx);
    assert_eq!(got.len(), 1, "{got:?}");
    let r = client_el(&got[0]);
    assert_eq!(
        (r.attr("type"), r.attr("id"), r.attr("from")),
        (Some("result"), Some("d1"), Some("bob@a.test"))
    );
    let q = r
        .child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    let identity = q.children().find(|c| c.name == "identity").unwrap();
    assert_eq!(
        (identity.attr("category"), identity.attr("type")),
        (Some("account"), Some("registered"))
    );
    // Something nobody serves: service-unavailable with a text that names it.
    core.route(client_el(
        "<iq from='alice@a.test/r' to='bob@a.test' type='get' id='x1'><query xmlns='urn:example:nothing'/></iq>",
    ))
    .await;
    let got = drain(&mut alice_rx);
    assert!(
        got[0].contains("<service-unavailable ")
            && got[0].contains(">{urn:example:nothing}query is not supported here</text>"),
        "{got:?}"
    );
}

#[tokio::test]
async fn the_server_names_the_account_services_clients_look_for_there() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &[]).await;
    let info = core.server_disco_info();
    let features: Vec<&str> = info
        .children()
        .filter(|c| c.name == "feature")
        .filter_map(|c| c.attr("var"))
        .collect();
    // poezio decides on remote bookmarks from these two on the server's disco#info.
    for f in [
        "http://jabber.org/protocol/pubsub#publish",
        "jabber:iq:private",
    ] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
}

/// XEP-0086: the core's stanza errors carry the legacy code next to the condition (and none
/// where the XEP has none), whichever feature refused.
#[tokio::test]
async fn error_replies_carry_the_legacy_code() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice"]).await;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    // A message to an account that does not exist: service-unavailable, 503.
    core.route(client_el(
        "<message from='alice@a.test/r' to='nobody@a.test' type='chat' id='m1'><body>hi</body></message>",
    ))
    .await;
    // A malformed archive query (a feature's own refusal): bad-request, 400.
    core.client_iq(
        &alice,
        client_el("<iq from='alice@a.test/r' to='alice@a.test' type='set' id='q1'><query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>many</max></set></query></iq>"),
    )
    .await;
    let got = drain(&mut alice_rx);
    let error_of = |id: &str| {
        let reply = got
            .iter()
            .map(|s| client_el(s))
            .find(|e| e.attr("id") == Some(id))
            .unwrap_or_else(|| panic!("no reply to {id}: {got:?}"));
        reply.child("error", ns::CLIENT).expect("an error").clone()
    };
    let e = error_of("m1");
    assert_eq!(e.attr("code"), Some("503"));
    assert_eq!(e.attr("type"), Some("cancel"));
    assert!(e.child("service-unavailable", ns::STANZAS).is_some());
    let e = error_of("q1");
    assert_eq!(e.attr("code"), Some("400"));
    assert!(e.child("bad-request", ns::STANZAS).is_some());
    // policy-violation has no legacy code: no attribute rather than a made-up one.
    let reply = error_reply(
        &client_el("<message from='alice@a.test/r' to='bob@a.test' id='p'/>"),
        StanzaErrorCondition::PolicyViolation,
        "too fast",
    )
    .unwrap();
    assert_eq!(reply.child("error", ns::CLIENT).unwrap().attr("code"), None);
}

/// A message for an account without an available session is stored, unless one became
/// available meanwhile: a sign-in reads the store once, so a message stored just after that
/// read would wait there until the next sign-in. Here the message's delivery finds no session
/// while a sign-in is taking the store, and waits for it; when it goes on, the session is
/// available, and the message goes to it rather than to the store.
#[tokio::test]
async fn a_message_that_races_a_sign_in_goes_to_the_session_not_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let signing_in = core.offline.lock().await;
    let delivering = tokio::spawn({
        let core = core.clone();
        async move {
            core.route(client_el(
                "<message from='alice@a.test/r' to='bob@a.test' id='m1'><body>x</body></message>",
            ))
            .await
        }
    });
    // The delivery finds no session and waits for the store (the storage runs on its own
    // thread, so this is real time).
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        !delivering.is_finished(),
        "stored while a sign-in held the store"
    );
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/r", 8);
    drop(signing_in);
    delivering.await.unwrap();
    assert_eq!(ids(&drain(&mut bob_rx), "message"), ["m1"]);
    assert!(offline(&core, "bob@a.test").await.is_empty());
}
