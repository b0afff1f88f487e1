//! XEP-0357 registrations on both databases, and the publish they make.

use super::*;
use crate::core::storage::testing::on_both_databases;

fn registration(jid: &str, node: &str) -> Registration {
    Registration {
        jid: jid.into(),
        node: node.into(),
        options: Some(b"<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s3</value></field></x>".to_vec()),
    }
}

on_both_databases! {
    fn registrations_are_kept_replaced_bounded_and_disabled(c) {
        assert!(enable(c, "alice@a.test", &registration("push.example", "n1")).unwrap());
        // The same node again replaces it (a new secret), it does not add one.
        assert!(enable(c, "alice@a.test", &registration("push.example", "n1")).unwrap());
        assert_eq!(registrations(c, "alice@a.test").unwrap().len(), 1);
        for i in 2..=MAX_REGISTRATIONS {
            assert!(enable(c, "alice@a.test", &registration("push.example", &format!("n{i}"))).unwrap());
        }
        assert!(!enable(c, "alice@a.test", &registration("other.example", "x")).unwrap(), "over the limit");
        assert!(registrations(c, "bob@a.test").unwrap().is_empty());
        // One node, then every node of an app server.
        assert_eq!(disable(c, "alice@a.test", "push.example", Some("n1")).unwrap(), 1);
        assert_eq!(disable(c, "alice@a.test", "push.example", None).unwrap(), MAX_REGISTRATIONS - 1);
        assert!(registrations(c, "alice@a.test").unwrap().is_empty());
    }
}

#[test]
fn the_publish_names_the_node_carries_the_options_and_tells_no_sender_or_body() {
    let iq = publish("alice@a.test", &registration("push.example", "n/1"));
    let text = String::from_utf8(iq.to_bytes()).unwrap();
    assert_eq!(iq.attr("from"), Some("alice@a.test"));
    assert_eq!(iq.attr("to"), Some("push.example"));
    assert_eq!(iq.attr("type"), Some("set"));
    let id = iq.attr("id").unwrap();
    assert_eq!(
        unhex(id.strip_prefix(ID_PREFIX).unwrap()).as_deref(),
        Some("n/1")
    );
    let pubsub = iq.child("pubsub", NS_PUBSUB).unwrap();
    let publish = pubsub.child("publish", NS_PUBSUB).unwrap();
    assert_eq!(publish.attr("node"), Some("n/1"));
    assert!(
        text.contains("<value>urn:xmpp:push:summary</value>"),
        "{text}"
    );
    assert!(text.contains("message-count"), "{text}");
    assert!(!text.contains("last-message-body") && !text.contains("last-message-sender"));
    let options = pubsub.child("publish-options", NS_PUBSUB).unwrap();
    assert!(String::from_utf8(options.to_bytes())
        .unwrap()
        .contains("s3"));
}

#[test]
fn only_messages_for_a_person_are_worth_a_push() {
    let el = |xml: &str| crate::core::testing::client_el(xml);
    assert!(is_worth_a_push(&el("<message><body>hi</body></message>")));
    assert!(is_worth_a_push(&el(
        "<message><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>"
    )));
    assert!(!is_worth_a_push(&el(
        "<message><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )));
    assert!(!is_worth_a_push(&el(
        "<message><received xmlns='urn:xmpp:receipts' id='x'/></message>"
    )));
}
