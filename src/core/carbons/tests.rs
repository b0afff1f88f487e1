//! XEP-0280 rules, driven without sockets ([`super::super::testing`]).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::super::testing::*;
use super::super::{Core, Queued, SessionHandle};
use super::*;
use crate::xml::stanza::{NsContext, Stanza};

/// What a client writes, as its session reads it (`from` is stamped by the core).
pub(crate) async fn send(core: &Core, s: &Arc<SessionHandle>, raw: &str) {
    let stanza = Stanza::parse(
        Bytes::from(raw.to_owned()),
        &NsContext::new(ns::CLIENT, &[]),
    )
    .unwrap();
    core.client_stanza(s, stanza).await;
}

async fn enable(core: &Core, s: &Arc<SessionHandle>, rx: &mut mpsc::Receiver<Queued>) {
    send(
        core,
        s,
        "<iq type='set' id='on'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
    )
    .await;
    let got = drain(rx);
    assert_eq!(got.len(), 1, "{got:?}");
    let r = client_el(&got[0]);
    assert_eq!((r.attr("type"), r.attr("id")), (Some("result"), Some("on")));
}

/// The message inside a carbon of kind `wrapper`, checking the wrapper's addresses (§8, §9:
/// from the bare JID, to the resource that gets the copy).
fn unwrap_carbon(raw: &str, wrapper: &str, account: &str, to: &str) -> Element {
    let m = client_el(raw);
    assert_eq!(m.attr("from"), Some(account), "{raw}");
    assert_eq!(m.attr("to"), Some(to), "{raw}");
    let w = m
        .child(wrapper, NS_CARBONS)
        .unwrap_or_else(|| panic!("{raw}"));
    w.child("forwarded", NS_FORWARD)
        .and_then(|f| f.child("message", ns::CLIENT))
        .unwrap_or_else(|| panic!("{raw}"))
        .clone()
}

#[test]
fn eligible_messages_follow_section_6_and_the_hints() {
    let el = |raw: &str| client_el(raw);
    assert!(eligible(&el("<message type='chat'/>")));
    assert!(eligible(&el("<message><body>x</body></message>")));
    assert!(eligible(&el(
        "<message type='normal'><body>x</body></message>"
    )));
    assert!(!eligible(&el("<message type='normal'/>")));
    for t in ["groupchat", "headline", "error"] {
        assert!(!eligible(&el(&format!(
            "<message type='{t}'><body>x</body></message>"
        ))));
    }
    assert!(!eligible(&el(
        "<message type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>"
    )));
    assert!(!eligible(&el(
        "<message type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>"
    )));
    assert!(!eligible(&el(
        "<message type='chat'><body>x</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>"
    )));
}

#[tokio::test]
async fn a_message_to_one_resource_is_copied_to_the_other_enabled_ones_only() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core_with(dir.path(), &["alice", "bob"], |c| c.session_queue = 64).await;
    let (alice, _, _alice_rx) = session(&core, "alice@a.test/r", 64);
    let (a, _, mut a_rx) = session(&core, "bob@a.test/a", 64);
    let (b, _, mut b_rx) = session(&core, "bob@a.test/b", 64);
    let (_c, _, mut c_rx) = session(&core, "bob@a.test/c", 64);
    enable(&core, &a, &mut a_rx).await;
    enable(&core, &b, &mut b_rx).await;
    // Enabling twice is not an error (§10.1).
    enable(&core, &b, &mut b_rx).await;
    send(
        &core,
        &alice,
        "<message to='bob@a.test/a' type='chat' id='m1'><body>hi</body></message>",
    )
    .await;
    // The original to /a, and no copy to it (§8: never to the resource that got it).
    let got = drain(&mut a_rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(client_el(&got[0]).attr("id"), Some("m1"));
    assert!(!got[0].contains("received"), "{got:?}");
    // A received copy to /b.
    let got = drain(&mut b_rx);
    assert_eq!(got.len(), 1, "{got:?}");
    let inner = unwrap_carbon(&got[0], "received", "bob@a.test", "bob@a.test/b");
    assert_eq!(inner.attr("id"), Some("m1"));
    assert_eq!(inner.attr("from"), Some("alice@a.test/r"));
    assert_eq!(inner.attr("to"), Some("bob@a.test/a"));
    // /c did not enable carbons.
    assert!(drain(&mut c_rx).is_empty());

    // Disabled, /b gets no more copies.
    send(
        &core,
        &b,
        "<iq type='set' id='off'><disable xmlns='urn:xmpp:carbons:2'/></iq>",
    )
    .await;
    assert_eq!(ids(&drain(&mut b_rx), "iq"), ["off"]);
    send(
        &core,
        &alice,
        "<message to='bob@a.test/a' type='chat' id='m2'><body>again</body></message>",
    )
    .await;
    assert_eq!(drain(&mut a_rx).len(), 1);
    assert!(drain(&mut b_rx).is_empty());
}

#[tokio::test]
async fn a_message_to_the_bare_jid_is_copied_only_to_enabled_resources_it_did_not_reach() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core_with(dir.path(), &["alice", "bob"], |c| c.session_queue = 64).await;
    let (alice, _, _alice_rx) = session(&core, "alice@a.test/r", 64);
    let (a, _, mut a_rx) = session(&core, "bob@a.test/a", 64);
    let (b, _, mut b_rx) = session(&core, "bob@a.test/b", 64);
    enable(&core, &a, &mut a_rx).await;
    enable(&core, &b, &mut b_rx).await;
    // /b has a negative priority: a message to the bare JID does not reach it (RFC 6121
    // §8.5.2.1.1), so it gets a copy instead.
    b.presence().priority = -1;
    send(
        &core,
        &alice,
        "<message to='bob@a.test' type='chat' id='m1'><body>hi</body></message>",
    )
    .await;
    let got = drain(&mut a_rx);
    assert_eq!(ids(&got, "message"), ["m1"], "{got:?}");
    assert!(!got[0].contains("received"), "{got:?}");
    let got = drain(&mut b_rx);
    assert_eq!(got.len(), 1, "{got:?}");
    unwrap_carbon(&got[0], "received", "bob@a.test", "bob@a.test/b");
    // Both reached: no copies at all.
    b.presence().priority = 0;
    send(
        &core,
        &alice,
        "<message to='bob@a.test' type='chat' id='m2'><body>hi</body></message>",
    )
    .await;
    for rx in [&mut a_rx, &mut b_rx] {
        let got = drain(rx);
        assert_eq!(ids(&got, "message"), ["m2"], "{got:?}");
        assert!(!got[0].contains("received"), "{got:?}");
    }
}

#[tokio::test]
async fn sent_messages_are_copied_to_the_senders_other_enabled_resources() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core_with(dir.path(), &["alice", "bob"], |c| c.session_queue = 64).await;
    let (_alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 64);
    let (a, _, mut a_rx) = session(&core, "bob@a.test/a", 64);
    let (b, _, mut b_rx) = session(&core, "bob@a.test/b", 64);
    enable(&core, &a, &mut a_rx).await;
    enable(&core, &b, &mut b_rx).await;
    // To a local account.
    send(
        &core,
        &a,
        "<message to='alice@a.test' type='chat' id='s1'><body>hi</body></message>",
    )
    .await;
    assert_eq!(ids(&drain(&mut alice_rx), "message"), ["s1"]);
    // The sender, enabled itself, gets no copy (§9).
    assert!(drain(&mut a_rx).is_empty());
    let got = drain(&mut b_rx);
    assert_eq!(got.len(), 1, "{got:?}");
    let inner = unwrap_carbon(&got[0], "sent", "bob@a.test", "bob@a.test/b");
    assert_eq!(inner.attr("from"), Some("bob@a.test/a"));
    assert_eq!(inner.attr("to"), Some("alice@a.test"));
    // The copy names the sender's archive entry (XEP-0359 by the sender's account).
    let sid = inner
        .child("stanza-id", "urn:xmpp:sid:0")
        .expect("stanza-id");
    assert_eq!(sid.attr("by"), Some("bob@a.test"));

    // To a remote account (no gateway link here, so it comes back as an error): copied too,
    // before it leaves.
    send(
        &core,
        &a,
        "<message to='carol@b.test' type='chat' id='s2'><body>hi</body></message>",
    )
    .await;
    let got = drain(&mut b_rx);
    assert_eq!(got.len(), 1, "{got:?}");
    let inner = unwrap_carbon(&got[0], "sent", "bob@a.test", "bob@a.test/b");
    assert_eq!(inner.attr("to"), Some("carol@b.test"));
    // A non-eligible message (headline) is not copied.
    send(
        &core,
        &a,
        "<message to='alice@a.test' type='headline' id='s3'><body>news</body></message>",
    )
    .await;
    assert!(drain(&mut b_rx).is_empty());
}

#[tokio::test]
async fn private_and_no_copy_messages_are_not_copied_and_private_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core_with(dir.path(), &["alice", "bob"], |c| c.session_queue = 64).await;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 64);
    let (alice2, _, mut alice2_rx) = session(&core, "alice@a.test/other", 64);
    let (a, _, mut a_rx) = session(&core, "bob@a.test/a", 64);
    let (b, _, mut b_rx) = session(&core, "bob@a.test/b", 64);
    for (s, rx) in [(&alice2, &mut alice2_rx), (&a, &mut a_rx), (&b, &mut b_rx)] {
        enable(&core, s, rx).await;
    }
    send(
        &core,
        &alice,
        "<message to='bob@a.test/a' type='chat' id='p1'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>",
    )
    .await;
    // No sent copy for the sender's other resource, no received copy for the recipient's.
    assert!(drain(&mut alice2_rx).is_empty());
    assert!(drain(&mut b_rx).is_empty());
    // The recipient's copy has no <private/> (§7, SHOULD remove).
    let got = drain(&mut a_rx);
    assert_eq!(ids(&got, "message"), ["p1"]);
    assert!(!got[0].contains("private"), "{got:?}");
    send(
        &core,
        &alice,
        "<message to='bob@a.test/a' type='chat' id='p2'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>",
    )
    .await;
    assert!(drain(&mut alice2_rx).is_empty());
    assert!(drain(&mut b_rx).is_empty());
    assert_eq!(ids(&drain(&mut a_rx), "message"), ["p2"]);
    assert!(drain(&mut alice_rx).is_empty());
}

#[tokio::test]
async fn the_server_announces_carbons() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &[]).await;
    let info = core.server_disco_info();
    assert!(info.children().any(|f| f.attr("var") == Some(NS_CARBONS)));
}

#[tokio::test]
async fn a_message_from_the_gateway_is_copied_in_the_client_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core_with(dir.path(), &["bob"], |c| c.session_queue = 64).await;
    let (_a, _, mut a_rx) = session(&core, "bob@a.test/a", 64);
    let (b, _, mut b_rx) = session(&core, "bob@a.test/b", 64);
    enable(&core, &b, &mut b_rx).await;
    // As the component link parses it: in jabber:component:accept.
    let el = Stanza::parse(
        Bytes::from_static(
            b"<message from='carol@b.test/x' to='bob@a.test/a' type='chat' id='g1'><body>remote</body></message>",
        ),
        &NsContext::new(ns::COMPONENT, &[]),
    )
    .unwrap()
    .element()
    .unwrap();
    core.route(el).await;
    assert_eq!(ids(&drain(&mut a_rx), "message"), ["g1"]);
    let got = drain(&mut b_rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(!got[0].contains("component"), "{got:?}");
    let inner = unwrap_carbon(&got[0], "received", "bob@a.test", "bob@a.test/b");
    assert_eq!(
        inner
            .child("body", ns::CLIENT)
            .map(Element::text)
            .as_deref(),
        Some("remote")
    );
}
