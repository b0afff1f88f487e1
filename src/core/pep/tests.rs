//! PEP, caps and private storage rules, driven without sockets ([`crate::core::testing`]).

use std::sync::Arc;

use base64::Engine as _;
use sha1::Digest as _;
use tokio::sync::mpsc;

use super::caps::{self, Caps, CapsHash};
use crate::core::roster::{RosterItem, Subscription};
use crate::core::testing::*;
use crate::core::{Core, Queued, SessionHandle};
use crate::xml::Element;

const AVATAR: &str = "urn:xmpp:avatar:metadata";
const DEVICES: &str = "eu.siacs.conversations.axolotl.devicelist";

type Rx = mpsc::Receiver<Queued>;

/// An iq from the account's own client, as c2s hands it to the core.
async fn own_iq(core: &Core, s: &Arc<SessionHandle>, rx: &mut Rx, body: &str) -> Element {
    let raw = format!("<iq from='{}' type='{body}</iq>", s.jid);
    core.client_iq(s, client_el(&raw)).await;
    let got = drain(rx);
    let reply = got
        .iter()
        .find(|g| g.starts_with("<iq "))
        .unwrap_or_else(|| panic!("no reply: {got:?}"));
    client_el(reply)
}

/// An iq from someone else's session to `to` (routed as any stanza).
async fn other_iq(core: &Core, from: &str, to: &str, rx: &mut Rx, body: &str) -> Element {
    let raw = format!("<iq from='{from}' to='{to}' type='{body}</iq>");
    core.route(client_el(&raw)).await;
    let got = drain(rx);
    let reply = got
        .iter()
        .find(|g| g.starts_with("<iq "))
        .unwrap_or_else(|| panic!("no reply: {got:?}"));
    client_el(reply)
}

fn publish(id: &str, node: &str, item: &str, payload: &str, options: &str) -> String {
    let item_id = if item.is_empty() {
        String::new()
    } else {
        format!(" id='{item}'")
    };
    let options = if options.is_empty() {
        String::new()
    } else {
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             {options}</x></publish-options>"
        )
    };
    format!(
        "set' id='{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
         <publish node='{node}'><item{item_id}>{payload}</item></publish>{options}</pubsub>"
    )
}

fn field(var: &str, value: &str) -> String {
    format!("<field var='pubsub#{var}'><value>{value}</value></field>")
}

fn items(id: &str, node: &str, extra: &str, children: &str) -> String {
    format!(
        "get' id='{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
         <items node='{node}'{extra}>{children}</items></pubsub>"
    )
}

fn devices(id: u32) -> String {
    format!("<list xmlns='eu.siacs.conversations.axolotl'><device id='{id}'/></list>")
}

/// The item ids of an items result or notification.
fn item_ids(el: &Element) -> Vec<String> {
    fn walk(el: &Element, out: &mut Vec<String>) {
        for c in el.children() {
            if c.name == "item" {
                out.push(c.attr("id").unwrap_or_default().to_owned());
            } else {
                walk(c, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(el, &mut out);
    out
}

/// The error condition and pubsub#errors condition of an error reply.
fn error_of(el: &Element) -> (String, String, String) {
    assert_eq!(el.attr("type"), Some("error"), "{el:?}");
    let e = el.children().find(|c| c.name == "error").unwrap();
    let name = |ns: &str| {
        e.children()
            .find(|c| c.ns == ns)
            .map(|c| c.name.clone())
            .unwrap_or_default()
    };
    let text = e
        .children()
        .find(|c| c.name == "text")
        .map(Element::text)
        .unwrap_or_default();
    (
        name("urn:ietf:params:xml:ns:xmpp-stanzas"),
        name(super::NS_PUBSUB_ERRORS),
        text,
    )
}

/// The pubsub event notifications in a queue.
fn events(got: &[String]) -> Vec<Element> {
    got.iter()
        .filter(|g| g.starts_with("<message ") && g.contains("pubsub#event"))
        .map(|g| client_el(g))
        .collect()
}

async fn set_subscription(core: &Core, owner: &str, contact: &str, sub: Subscription) {
    let mut item = RosterItem::new(contact);
    item.state.sub = sub;
    core.storage.store_roster_item(owner, &item).await.unwrap();
}

/// A disco#info answer with these features, and the caps `ver` (sha-1) it hashes to.
fn disco_answer(features: &[&str]) -> (String, String) {
    let mut q = String::from(
        "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='client' type='pc' name='t'/>",
    );
    let mut sorted: Vec<&str> = features.to_vec();
    sorted.sort();
    let mut s = String::from("client/pc//t<");
    for f in &sorted {
        q.push_str(&format!("<feature var='{f}'/>"));
        s.push_str(f);
        s.push('<');
    }
    q.push_str("</query>");
    let ver = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()));
    (q, ver)
}

/// `from` (a session whose queue is `rx`) sends available presence with caps for `features`
/// to `to`, and answers the core's caps query (with a `ver` of `claimed` if given, else the
/// right one) when one comes. Returns the `ver` and what else `from` received meanwhile.
async fn caps_presence(
    core: &Core,
    from: &str,
    rx: &mut Rx,
    to: &str,
    features: &[&str],
    claimed: Option<&str>,
) -> (String, Vec<String>) {
    let (answer, right) = disco_answer(features);
    let ver = claimed.unwrap_or(&right).to_owned();
    let c = format!(
        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:test' ver='{ver}'/>"
    );
    core.route(client_el(&format!(
        "<presence from='{from}' to='{to}'>{c}</presence>"
    )))
    .await;
    let got = answer_caps_query(core, from, rx, &answer).await;
    (ver, got)
}

/// Answers the caps disco#info query waiting in `rx`, if there is one; returns the other
/// stanzas `rx` held and receives until then.
async fn answer_caps_query(core: &Core, from: &str, rx: &mut Rx, answer: &str) -> Vec<String> {
    let mut got = drain(rx);
    if let Some(i) = got
        .iter()
        .position(|g| g.starts_with("<iq ") && g.contains("disco#info"))
    {
        let q = client_el(&got.remove(i));
        assert_eq!(q.attr("from"), Some("a.test"));
        let node = q
            .children()
            .next()
            .unwrap()
            .attr("node")
            .unwrap()
            .to_owned();
        let answer = answer.replacen("<query ", &format!("<query node='{node}' "), 1);
        core.route(client_el(&format!(
            "<iq from='{from}' to='a.test' type='result' id='{}'>{answer}</iq>",
            q.attr("id").unwrap()
        )))
        .await;
    }
    got.extend(drain(rx));
    got
}

#[tokio::test]
async fn publish_items_retract_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice"]).await;
    let (r1, _, mut rx1) = session(&core, "alice@a.test/r1", 64);
    let (_r2, _, mut rx2) = session(&core, "alice@a.test/r2", 64);
    // An item without id gets one; the node is created on first publish.
    let meta = "<metadata xmlns='urn:xmpp:avatar:metadata'/>";
    let r = own_iq(&core, &r1, &mut rx1, &publish("p1", AVATAR, "", meta, "")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let generated = item_ids(&r);
    assert_eq!(generated.len(), 1);
    assert!(!generated[0].is_empty());
    // The other resource got the notification with the payload.
    let got = drain(&mut rx2);
    let ev = events(&got);
    assert_eq!(ev.len(), 1, "{got:?}");
    assert_eq!(ev[0].attr("type"), Some("headline"));
    assert_eq!(ev[0].attr("from"), Some("alice@a.test"));
    assert_eq!(item_ids(&ev[0]), generated);
    assert!(
        got[0].contains("<metadata xmlns='urn:xmpp:avatar:metadata'/>"),
        "{got:?}"
    );
    // The default max_items is 1: a second item replaces it.
    own_iq(&core, &r1, &mut rx1, &publish("p2", AVATAR, "a2", meta, "")).await;
    let r = own_iq(&core, &r1, &mut rx1, &items("g1", AVATAR, "", "")).await;
    assert_eq!(item_ids(&r), ["a2"]);

    // A node of 10: all, the latest N, by id.
    let opts = field("max_items", "10");
    for i in 1..=3 {
        let r = own_iq(
            &core,
            &r1,
            &mut rx1,
            &publish("p", DEVICES, &format!("i{i}"), &devices(i), &opts),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    }
    let r = own_iq(&core, &r1, &mut rx1, &items("g2", DEVICES, "", "")).await;
    assert_eq!(item_ids(&r), ["i1", "i2", "i3"]);
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &items("g3", DEVICES, " max_items='2'", ""),
    )
    .await;
    assert_eq!(item_ids(&r), ["i2", "i3"]);
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &items("g4", DEVICES, "", "<item id='i1'/>"),
    )
    .await;
    assert_eq!(item_ids(&r), ["i1"]);
    assert!(
        format!("{r:?}").contains("device"),
        "the payload comes back"
    );
    // Republishing an id makes it the latest.
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish("p", DEVICES, "i1", &devices(9), &opts),
    )
    .await;
    let r = own_iq(&core, &r1, &mut rx1, &items("g5", DEVICES, "", "")).await;
    assert_eq!(item_ids(&r), ["i2", "i3", "i1"]);
    drain(&mut rx2);

    // Retract with notify: the other resource learns of it.
    let retract = |id: &str| {
        format!(
            "set' id='rt'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
             <retract node='{DEVICES}' notify='true'><item id='{id}'/></retract></pubsub>"
        )
    };
    let r = own_iq(&core, &r1, &mut rx1, &retract("i2")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let got = drain(&mut rx2);
    assert!(
        got.iter()
            .any(|g| g.contains("<retract id='i2'/>") && g.contains("pubsub#event")),
        "{got:?}"
    );
    let r = own_iq(&core, &r1, &mut rx1, &items("g6", DEVICES, "", "")).await;
    assert_eq!(item_ids(&r), ["i3", "i1"]);
    let r = own_iq(&core, &r1, &mut rx1, &retract("i2")).await;
    assert_eq!(error_of(&r).0, "item-not-found");
    let r = own_iq(&core, &r1, &mut rx1, &items("g7", "no-such-node", "", "")).await;
    assert_eq!(error_of(&r).0, "item-not-found");

    // Purge: a notification, the node stays without items.
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish("p", DEVICES, "i4", &devices(4), &opts),
    )
    .await;
    drain(&mut rx2);
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &format!(
            "set' id='pg'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><purge node='{DEVICES}'/></pubsub>"
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let got = drain(&mut rx2);
    assert!(
        got.iter()
            .any(|g| g.contains(&format!("<purge node='{DEVICES}'/>"))),
        "{got:?}"
    );
    let r = own_iq(&core, &r1, &mut rx1, &items("g7b", DEVICES, "", "")).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    assert!(item_ids(&r).is_empty(), "{r:?}");

    // Delete: a notification, then the node is gone.
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &format!(
            "set' id='d'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='{DEVICES}'/></pubsub>"
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let got = drain(&mut rx2);
    assert!(
        got.iter()
            .any(|g| g.contains(&format!("<delete node='{DEVICES}'/>"))),
        "{got:?}"
    );
    let r = own_iq(&core, &r1, &mut rx1, &items("g8", DEVICES, "", "")).await;
    assert_eq!(error_of(&r).0, "item-not-found");
    // A verb in another namespace is no verb; an unknown verb is named in the refusal.
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        "set' id='x'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish xmlns='urn:x' node='n'/></pubsub>",
    )
    .await;
    assert_eq!(error_of(&r).0, "bad-request");
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        "set' id='x'><pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='n' jid='alice@a.test'/></pubsub>",
    )
    .await;
    let (cond, _, text) = error_of(&r);
    assert_eq!(cond, "feature-not-implemented");
    assert!(text.contains("<subscribe/>"), "{text}");
    // A publish needs exactly one item with exactly one payload.
    let r = own_iq(&core, &r1, &mut rx1, &publish("p", AVATAR, "x", "", "")).await;
    assert_eq!(
        (error_of(&r).0.as_str(), error_of(&r).1.as_str()),
        ("bad-request", "payload-required")
    );
}

#[tokio::test]
async fn publish_options_that_conflict_with_the_node_fail_the_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice"]).await;
    let (r1, _, mut rx1) = session(&core, "alice@a.test/r1", 64);
    let open = field("access_model", "open");
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish("p1", DEVICES, "current", &devices(1), &open),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    // The same options again, or none: fine.
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish("p2", DEVICES, "current", &devices(2), &open),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish("p3", DEVICES, "current", &devices(3), ""),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    // Conflicting: conflict + precondition-not-met, and nothing is published.
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p4",
            DEVICES,
            "current",
            &devices(4),
            &field("access_model", "whitelist"),
        ),
    )
    .await;
    let (cond, app, text) = error_of(&r);
    assert_eq!(
        (cond.as_str(), app.as_str()),
        ("conflict", "precondition-not-met")
    );
    assert!(text.contains(DEVICES), "{text}");
    let r = own_iq(&core, &r1, &mut rx1, &items("g", DEVICES, "", "")).await;
    assert!(
        !format!("{r:?}").contains("'4'") && format!("{r:?}").contains("\"3\""),
        "{r:?}"
    );
    // Options compare after normalisation: 'max' is pep_max_items.
    let max = field("max_items", "max");
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p5",
            "urn:xmpp:bookmarks:1",
            "x",
            "<conference xmlns='urn:xmpp:bookmarks:1'/>",
            &max,
        ),
    )
    .await;
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p6",
            "urn:xmpp:bookmarks:1",
            "y",
            "<conference xmlns='urn:xmpp:bookmarks:1'/>",
            &field("max_items", "256"),
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    // The configure form shows the node's configuration.
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &format!("get' id='c'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='{DEVICES}'/></pubsub>"),
    )
    .await;
    let text = String::from_utf8(r.to_bytes()).unwrap();
    assert!(
        text.contains("<field var='pubsub#access_model'><value>open</value>"),
        "{text}"
    );
    // ...and changing it makes the old options conflict.
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &format!(
            "set' id='c2'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='{DEVICES}'>\
             <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             {}</x></configure></pubsub>",
            field("access_model", "presence")
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish("p7", DEVICES, "current", &devices(5), &open),
    )
    .await;
    assert_eq!(error_of(&r).1, "precondition-not-met");
}

#[tokio::test]
async fn access_models_decide_who_reads_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob", "carol"]).await;
    let (r1, _, mut rx1) = session(&core, "alice@a.test/r1", 64);
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/b", 64);
    let (_carol, _, mut carol_rx) = session(&core, "carol@a.test/c", 64);
    set_subscription(&core, "alice@a.test", "bob@a.test", Subscription::From).await;
    // carol is on the roster, but only alice sees carol's presence (to): not enough.
    set_subscription(&core, "alice@a.test", "carol@a.test", Subscription::To).await;
    for (node, model) in [
        ("n-presence", ""),
        ("n-open", "open"),
        ("n-white", "whitelist"),
    ] {
        let opts = if model.is_empty() {
            String::new()
        } else {
            field("access_model", model)
        };
        let r = own_iq(
            &core,
            &r1,
            &mut rx1,
            &publish("p", node, "1", "<x xmlns='urn:t'/>", &opts),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    }
    let read = |node: &str| items("g", node, "", "");
    let alice = "alice@a.test";
    // presence: the subscribed contact reads, anyone else is told to subscribe.
    let r = other_iq(
        &core,
        "bob@a.test/b",
        alice,
        &mut bob_rx,
        &read("n-presence"),
    )
    .await;
    assert_eq!(item_ids(&r), ["1"], "{r:?}");
    let r = other_iq(
        &core,
        "carol@a.test/c",
        alice,
        &mut carol_rx,
        &read("n-presence"),
    )
    .await;
    let (cond, app, _) = error_of(&r);
    assert_eq!(
        (cond.as_str(), app.as_str()),
        ("not-authorized", "presence-subscription-required")
    );
    // open: anyone.
    let r = other_iq(
        &core,
        "carol@a.test/c",
        alice,
        &mut carol_rx,
        &read("n-open"),
    )
    .await;
    assert_eq!(item_ids(&r), ["1"], "{r:?}");
    // whitelist: the owner only.
    let r = other_iq(&core, "bob@a.test/b", alice, &mut bob_rx, &read("n-white")).await;
    let (cond, app, _) = error_of(&r);
    assert_eq!(
        (cond.as_str(), app.as_str()),
        ("not-allowed", "closed-node")
    );
    let r = own_iq(&core, &r1, &mut rx1, &read("n-white")).await;
    assert_eq!(item_ids(&r), ["1"], "{r:?}");
    // The owner addressing its own bare JID is the owner too.
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &read("n-white").replacen("get'", "get' to='alice@a.test'", 1),
    )
    .await;
    assert_eq!(item_ids(&r), ["1"], "{r:?}");
    // Unknown nodes, and publishing on someone else's service.
    let r = other_iq(&core, "bob@a.test/b", alice, &mut bob_rx, &read("nothing")).await;
    assert_eq!(error_of(&r).0, "item-not-found");
    let r = other_iq(
        &core,
        "bob@a.test/b",
        alice,
        &mut bob_rx,
        &publish("p", "n-open", "2", "<x xmlns='urn:t'/>", ""),
    )
    .await;
    assert_eq!(error_of(&r).0, "forbidden");
}

#[tokio::test]
async fn notifications_reach_the_owner_and_interested_allowed_contacts_only() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob", "carol", "dave"]).await;
    let (r1, _, mut rx1) = session(&core, "alice@a.test/r1", 64);
    let (_r2, _, mut rx2) = session(&core, "alice@a.test/r2", 64);
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/b", 64);
    let (_carol, _, mut carol_rx) = session(&core, "carol@a.test/c", 64);
    let (_dave, _, mut dave_rx) = session(&core, "dave@a.test/d", 64);
    for c in ["bob@a.test", "carol@a.test"] {
        set_subscription(&core, "alice@a.test", c, Subscription::From).await;
    }
    let notify = format!("{AVATAR}+notify");
    let open_notify = "urn:open+notify";
    // bob and dave want the notifications, carol does not; dave is not subscribed.
    caps_presence(
        &core,
        "bob@a.test/b",
        &mut bob_rx,
        "alice@a.test",
        &[&notify, open_notify],
        None,
    )
    .await;
    caps_presence(
        &core,
        "carol@a.test/c",
        &mut carol_rx,
        "alice@a.test",
        &["urn:other"],
        None,
    )
    .await;
    caps_presence(
        &core,
        "dave@a.test/d",
        &mut dave_rx,
        "alice@a.test",
        &[&notify, open_notify],
        None,
    )
    .await;
    for rx in [&mut rx1, &mut rx2, &mut bob_rx, &mut carol_rx, &mut dave_rx] {
        drain(rx);
    }
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p",
            AVATAR,
            "v1",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
            "",
        ),
    )
    .await;
    assert_eq!(events(&drain(&mut rx2)).len(), 1, "the other resource");
    let got = events(&drain(&mut bob_rx));
    assert_eq!(got.len(), 1, "bob: subscribed, +notify");
    assert_eq!(got[0].attr("to"), Some("bob@a.test/b"));
    assert!(
        events(&drain(&mut carol_rx)).is_empty(),
        "carol has no +notify"
    );
    assert!(
        events(&drain(&mut dave_rx)).is_empty(),
        "dave is not subscribed"
    );
    // On an open node dave gets it too.
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p",
            "urn:open",
            "v1",
            "<x xmlns='urn:t'/>",
            &field("access_model", "open"),
        ),
    )
    .await;
    assert_eq!(events(&drain(&mut dave_rx)).len(), 1);
    // Once bob goes unavailable he gets nothing more.
    core.route(client_el(
        "<presence from='bob@a.test/b' to='alice@a.test' type='unavailable'/>",
    ))
    .await;
    drain(&mut bob_rx);
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p",
            AVATAR,
            "v2",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
            "",
        ),
    )
    .await;
    assert!(events(&drain(&mut bob_rx)).is_empty());
}

#[test]
fn the_verification_string_follows_xep_0115_section_5() {
    // §5.2 and §5.3's examples.
    let simple = client_el(
        "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'>\
         <identity category='client' name='Exodus 0.9.1' type='pc'/>\
         <feature var='http://jabber.org/protocol/disco#info'/>\
         <feature var='http://jabber.org/protocol/disco#items'/>\
         <feature var='http://jabber.org/protocol/muc'/>\
         <feature var='http://jabber.org/protocol/caps'/></query></iq>",
    );
    let q = simple.children().next().unwrap();
    let c = |ver: &str| Caps {
        hash: CapsHash::Sha1,
        node: "n".into(),
        ver: ver.into(),
    };
    assert!(caps::verify(&c("QgayPKawpkPSDYmwT/WM94uAlu0="), q));
    assert!(!caps::verify(&c("QgayPKawpkPSDYmwT/WM94uAlu1="), q));
    let complex = client_el(
        "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'>\
         <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
         <identity xml:lang='el' category='client' name='\u{3a8} 0.11' type='pc'/>\
         <feature var='http://jabber.org/protocol/caps'/>\
         <feature var='http://jabber.org/protocol/disco#info'/>\
         <feature var='http://jabber.org/protocol/disco#items'/>\
         <feature var='http://jabber.org/protocol/muc'/>\
         <x xmlns='jabber:x:data' type='result'>\
         <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
         <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
         <field var='os'><value>Mac</value></field>\
         <field var='os_version'><value>10.5.1</value></field>\
         <field var='software'><value>Psi</value></field>\
         <field var='software_version'><value>0.11</value></field></x></query></iq>",
    );
    let q = complex.children().next().unwrap();
    assert_eq!(
        caps::verification_string(q).unwrap(),
        "client/pc/el/\u{3a8} 0.11<client/pc/en/Psi 0.11<http://jabber.org/protocol/caps<\
         http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<\
         http://jabber.org/protocol/muc<urn:xmpp:dataforms:softwareinfo<ip_version<ipv4<ipv6<\
         os<Mac<os_version<10.5.1<software<Psi<software_version<0.11<"
    );
    assert!(caps::verify(&c("q07IKJEyjvHSyhy//CH0CxmKi8w="), q));
    // sha-256 is checked with sha-256.
    let s = caps::verification_string(q).unwrap();
    let ver256 =
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(s.as_bytes()));
    let mut c256 = c(&ver256);
    c256.hash = CapsHash::Sha256;
    assert!(caps::verify(&c256, q));
    assert!(!caps::verify(&c(&ver256), q));
    // A duplicate feature is never trusted (§5.4).
    let dup = client_el(
        "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'>\
         <feature var='a'/><feature var='a'/></query></iq>",
    );
    assert!(caps::verification_string(dup.children().next().unwrap()).is_none());
}

#[tokio::test]
async fn an_answer_that_does_not_match_its_hash_is_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let (r1, _, mut rx1) = session(&core, "alice@a.test/r1", 64);
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/b", 64);
    set_subscription(&core, "alice@a.test", "bob@a.test", Subscription::From).await;
    let notify = format!("{AVATAR}+notify");
    // bob claims a ver that his features do not hash to.
    let (ver, _) = caps_presence(
        &core,
        "bob@a.test/b",
        &mut bob_rx,
        "alice@a.test",
        &[&notify],
        Some("bm90IHRoZSBoYXNoIGF0IGFsbA=="),
    )
    .await;
    assert!(core
        .caps
        .features_for("alice@a.test", "bob@a.test/b")
        .is_none());
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p",
            AVATAR,
            "v1",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
            "",
        ),
    )
    .await;
    assert!(
        events(&drain(&mut bob_rx)).is_empty(),
        "unverified caps bring nothing"
    );
    // An answer from someone else than the one asked is not taken either.
    core.route(client_el(&format!(
        "<presence from='bob@a.test/b' to='alice@a.test'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='{}'/></presence>",
        disco_answer(&[&notify]).1
    )))
    .await;
    let got = drain(&mut bob_rx);
    let q = got
        .iter()
        .find(|g| g.contains("disco#info"))
        .expect("asked again");
    let id = client_el(q).attr("id").unwrap().to_owned();
    core.route(client_el(&format!(
        "<iq from='alice@a.test/r1' to='a.test' type='result' id='{id}'>{}</iq>",
        disco_answer(&[&notify]).0
    )))
    .await;
    assert!(core
        .caps
        .features_for("alice@a.test", "bob@a.test/b")
        .is_none());
    assert_ne!(ver, disco_answer(&[&notify]).1);
}

#[tokio::test]
async fn the_last_item_goes_to_a_contact_and_an_own_resource_when_they_become_available() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let (r1, _, mut rx1) = session(&core, "alice@a.test/r1", 64);
    set_subscription(&core, "alice@a.test", "bob@a.test", Subscription::From).await;
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p",
            AVATAR,
            "v1",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
            "",
        ),
    )
    .await;
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p",
            AVATAR,
            "v2",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
            "",
        ),
    )
    .await;
    let never = field("send_last_published_item", "never");
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish("p", "urn:never", "n1", "<x xmlns='urn:t'/>", &never),
    )
    .await;
    let notify = [format!("{AVATAR}+notify"), "urn:never+notify".to_owned()];
    let notify: Vec<&str> = notify.iter().map(String::as_str).collect();
    // bob comes online with +notify: after his caps are learned he gets the last item only.
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/b", 64);
    let (_, raw) = caps_presence(
        &core,
        "bob@a.test/b",
        &mut bob_rx,
        "alice@a.test",
        &notify,
        None,
    )
    .await;
    let got = events(&raw);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(item_ids(&got[0]), ["v2"]);
    // A presence update is not becoming available: nothing again.
    let (_, raw) = caps_presence(
        &core,
        "bob@a.test/b",
        &mut bob_rx,
        "alice@a.test",
        &notify,
        None,
    )
    .await;
    assert!(events(&raw).is_empty(), "{raw:?}");
    // Another resource with the same (now known) caps gets it at once, without a query.
    let (_bob2, _, mut bob2_rx) = session(&core, "bob@a.test/b2", 64);
    let (_, got) = caps_presence(
        &core,
        "bob@a.test/b2",
        &mut bob2_rx,
        "alice@a.test",
        &notify,
        None,
    )
    .await;
    assert!(!got.iter().any(|g| g.contains("disco#info")), "{got:?}");
    assert_eq!(events(&got).len(), 1, "{got:?}");
    // A resource whose first presence had no caps gets it when caps come.
    let (_bob3, _, mut bob3_rx) = session(&core, "bob@a.test/b3", 64);
    core.route(client_el(
        "<presence from='bob@a.test/b3' to='alice@a.test'/>",
    ))
    .await;
    assert!(events(&drain(&mut bob3_rx)).is_empty());
    let (_, got) = caps_presence(
        &core,
        "bob@a.test/b3",
        &mut bob3_rx,
        "alice@a.test",
        &notify,
        None,
    )
    .await;
    assert_eq!(events(&got).len(), 1, "{got:?}");
    // alice's new resource, on its initial presence with caps.
    let (r3, _, mut rx3) = session(&core, "alice@a.test/r3", 64);
    r3.presence().available = false;
    let (_, ver) = disco_answer(&notify);
    core.presence_outbound(
        &r3,
        client_el(&format!(
            "<presence from='alice@a.test/r3'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='{ver}'/></presence>"
        )),
    )
    .await;
    let got = drain(&mut rx3);
    assert!(
        events(&got).len() == 1 && got.iter().any(|g| g.contains("id='v2'")),
        "{got:?}"
    );
}

#[tokio::test]
async fn legacy_bookmarks_in_private_storage_are_xep_0402_items_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let (r1, _, mut rx1) = session(&core, "alice@a.test/r1", 64);
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/b", 64);
    let set = |body: &str| format!("set' id='s'><query xmlns='jabber:iq:private'>{body}</query>");
    let get = |body: &str| format!("get' id='g'><query xmlns='jabber:iq:private'>{body}</query>");
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &set("<storage xmlns='storage:bookmarks'>\
              <conference jid='room@muc.a.test' name='Room' autojoin='true'><nick>al</nick></conference>\
              <conference jid='other@muc.a.test'/></storage>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &items("g", "urn:xmpp:bookmarks:1", "", ""),
    )
    .await;
    assert_eq!(item_ids(&r), ["room@muc.a.test", "other@muc.a.test"]);
    let text = String::from_utf8(r.to_bytes()).unwrap();
    assert!(
        text.contains("<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true' name='Room'><nick>al</nick></conference>"),
        "{text}"
    );
    // The node is the owner's only.
    let r = other_iq(
        &core,
        "bob@a.test/b",
        "alice@a.test",
        &mut bob_rx,
        &items("g", "urn:xmpp:bookmarks:1", "", ""),
    )
    .await;
    assert_eq!(error_of(&r).0, "not-allowed");
    // A bookmark published the XEP-0402 way is in the legacy storage.
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p",
            "urn:xmpp:bookmarks:1",
            "new@muc.a.test",
            "<conference xmlns='urn:xmpp:bookmarks:1' name='New' autojoin='false'/>",
            "",
        ),
    )
    .await;
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &get("<storage xmlns='storage:bookmarks'/>"),
    )
    .await;
    let text = String::from_utf8(r.to_bytes()).unwrap();
    assert!(
        text.contains("<conference jid='room@muc.a.test' name='Room' autojoin='true'><nick>al</nick></conference>")
            && text.contains("<conference jid='new@muc.a.test' name='New' autojoin='false'/>"),
        "{text}"
    );
    // A legacy set with one conference leaves one item (the others retracted, notified).
    drain(&mut rx1);
    own_iq(&core, &r1, &mut rx1, &set("<storage xmlns='storage:bookmarks'><conference jid='new@muc.a.test' name='New'/></storage>")).await;
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &items("g", "urn:xmpp:bookmarks:1", "", ""),
    )
    .await;
    assert_eq!(item_ids(&r), ["new@muc.a.test"]);
    // A bookmarks node made without publish-options (one item) is widened, not truncated.
    own_iq(&core, &r1, &mut rx1, "set' id='d'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='urn:xmpp:bookmarks:1'/></pubsub>").await;
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p",
            "urn:xmpp:bookmarks:1",
            "a@muc.a.test",
            "<conference xmlns='urn:xmpp:bookmarks:1'/>",
            "",
        ),
    )
    .await;
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &set("<storage xmlns='storage:bookmarks'><conference jid='a@muc.a.test'/><conference jid='b@muc.a.test'/></storage>"),
    )
    .await;
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &items("g", "urn:xmpp:bookmarks:1", "", ""),
    )
    .await;
    assert_eq!(item_ids(&r), ["a@muc.a.test", "b@muc.a.test"]);
    // Other namespaces are kept as they are; an unknown one comes back empty.
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &set("<prefs xmlns='urn:example:prefs'><a b='c'>d</a></prefs>"),
    )
    .await;
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &get("<prefs xmlns='urn:example:prefs'/>"),
    )
    .await;
    assert!(
        String::from_utf8(r.to_bytes())
            .unwrap()
            .contains("<prefs xmlns='urn:example:prefs'><a b='c'>d</a></prefs>"),
        "{r:?}"
    );
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &get("<none xmlns='urn:example:none'/>"),
    )
    .await;
    assert!(String::from_utf8(r.to_bytes())
        .unwrap()
        .contains("<none xmlns='urn:example:none'/>"));
    let r = own_iq(&core, &r1, &mut rx1, &set("<x xmlns='jabber:iq:private'/>")).await;
    assert_eq!(error_of(&r).0, "not-acceptable");
    // Someone else's private storage is forbidden.
    let r = other_iq(
        &core,
        "bob@a.test/b",
        "alice@a.test",
        &mut bob_rx,
        &get("<prefs xmlns='urn:example:prefs'/>"),
    )
    .await;
    assert_eq!(error_of(&r).0, "forbidden");
}

#[tokio::test]
async fn quotas_bound_nodes_items_and_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core_with(dir.path(), &["alice"], |c| {
        c.pep_max_nodes = 2;
        c.pep_max_items = 3;
        c.pep_max_item_bytes = 100;
    })
    .await;
    let (r1, _, mut rx1) = session(&core, "alice@a.test/r1", 64);
    let max = field("max_items", "max");
    for i in 0..5 {
        let r = own_iq(
            &core,
            &r1,
            &mut rx1,
            &publish("p", "n1", &format!("i{i}"), "<x xmlns='urn:t'/>", &max),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    }
    // 'max' is pep_max_items: the 3 latest are kept.
    let r = own_iq(&core, &r1, &mut rx1, &items("g", "n1", "", "")).await;
    assert_eq!(item_ids(&r), ["i2", "i3", "i4"]);
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish("p", "n2", "1", "<x xmlns='urn:t'/>", ""),
    )
    .await;
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish("p", "n3", "1", "<x xmlns='urn:t'/>", ""),
    )
    .await;
    let (cond, _, text) = error_of(&r);
    assert_eq!(cond, "resource-constraint");
    assert!(text.contains("pep_max_nodes = 2"), "{text}");
    let big = format!("<x xmlns='urn:t'>{}</x>", "a".repeat(200));
    let r = own_iq(&core, &r1, &mut rx1, &publish("p", "n1", "big", &big, "")).await;
    let (cond, _, text) = error_of(&r);
    assert_eq!(cond, "not-acceptable");
    assert!(text.contains("pep_max_item_bytes = 100"), "{text}");
}

#[tokio::test]
async fn the_account_announces_its_pep_service_and_lists_its_nodes_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let (r1, _, mut rx1) = session(&core, "alice@a.test/r1", 64);
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p",
            AVATAR,
            "1",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
            "",
        ),
    )
    .await;
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        "get' id='i'><query xmlns='http://jabber.org/protocol/disco#info'/>",
    )
    .await;
    let text = String::from_utf8(r.to_bytes()).unwrap();
    for want in [
        "<identity category='pubsub' type='pep'/>",
        "<feature var='http://jabber.org/protocol/pubsub#publish-options'/>",
        "<feature var='urn:xmpp:bookmarks:1#compat'/>",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let r = own_iq(
        &core,
        &r1,
        &mut rx1,
        "get' id='i'><query xmlns='http://jabber.org/protocol/disco#items'/>",
    )
    .await;
    let text = String::from_utf8(r.to_bytes()).unwrap();
    assert!(
        text.contains(&format!("<item jid='alice@a.test' node='{AVATAR}'/>")),
        "{text}"
    );
}

#[tokio::test]
async fn removing_an_account_removes_its_nodes_items_and_private_xml() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice"]).await;
    let (r1, _, mut rx1) = session(&core, "alice@a.test/r1", 64);
    own_iq(
        &core,
        &r1,
        &mut rx1,
        &publish(
            "p",
            AVATAR,
            "1",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
            "",
        ),
    )
    .await;
    own_iq(
        &core,
        &r1,
        &mut rx1,
        "set' id='s'><query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query>",
    )
    .await;
    let count = |core: &Arc<Core>| {
        let storage = core.storage.clone();
        async move {
            storage
                .call(|c| {
                    let n = |t: &str| {
                        c.query_row(&format!("SELECT COUNT(*) FROM {t}"), &[], |r| {
                            r.get::<_, i64>(0)
                        })
                    };
                    Ok((n("pep_nodes")?, n("pep_items")?, n("private_xml")?))
                })
                .await
                .unwrap()
        }
    };
    assert_eq!(count(&core).await, (1, 1, 1));
    core.storage
        .call(|c| crate::core::storage::remove_account(c, "alice", "a.test"))
        .await
        .unwrap();
    assert_eq!(count(&core).await, (0, 0, 0));
}

crate::core::storage::testing::on_both_databases! {
    /// PEP and private XML storage: publish with a replace of the same id, trimming to
    /// `max_items`, the node quota, the latest item per node, retract and private XML
    /// replace and quota, on either database.
    fn pep_and_private_storage(db) {
        use crate::core::pep::config::{AccessModel, ConfigChange, NodeConfig, SendLast};
        use crate::core::pep::store::{self, Publish, Published};
        let config = NodeConfig {
            access: AccessModel::Presence,
            persist_items: true,
            max_items: 2,
            send_last: SendLast::OnSubAndPresence,
        };
        let publish = |node: &str, id: &str, max_nodes: usize| {
            store::publish(
                db,
                &Publish {
                    owner: "alice@a.test".into(),
                    node: node.into(),
                    item_id: id.into(),
                    publisher: "alice@a.test/r".into(),
                    payload: format!("<p id='{id}'/>").into_bytes(),
                    options: ConfigChange::default(),
                    defaults: config,
                    max_nodes,
                },
            )
            .unwrap()
        };
        assert_eq!(publish("n", "1", 2), Published::Done { config });
        publish("n", "2", 2);
        publish("n", "1", 2); // the same id again: replaced, now the latest
        publish("n", "3", 2); // over max_items: the oldest ("2") goes
        let ids = |max| -> Vec<String> {
            store::items(db, "alice@a.test", "n", max, &[])
                .unwrap()
                .into_iter()
                .map(|i| i.id)
                .collect()
        };
        assert_eq!(ids(None), ["1", "3"]);
        assert_eq!(ids(Some(1)), ["3"]);
        let wanted = ["3".to_owned(), "gone".to_owned()];
        let found = store::items(db, "alice@a.test", "n", None, &wanted).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].payload, b"<p id='3'/>");
        publish("m", "x", 2);
        assert_eq!(publish("third", "x", 2), Published::TooManyNodes);
        let last = store::last_items(db, "alice@a.test").unwrap();
        let last: Vec<(&str, &str)> = last.iter().map(|(n, _, i)| (n.as_str(), i.id.as_str())).collect();
        assert_eq!(last, [("m", "x"), ("n", "3")]);
        assert!(store::retract(db, "alice@a.test", "n", "3").unwrap());
        assert!(!store::retract(db, "alice@a.test", "n", "3").unwrap());
        assert!(store::delete_node(db, "alice@a.test", "m").unwrap());
        assert_eq!(store::nodes(db, "alice@a.test").unwrap().len(), 1);

        let el = |name: &str, body: &str| (name.to_owned(), "urn:x".to_owned(), body.as_bytes().to_vec());
        assert!(store::private_set(db, "alice@a.test", &[el("a", "1"), el("b", "1")], 2).unwrap());
        assert!(store::private_set(db, "alice@a.test", &[el("a", "2")], 2).unwrap());
        assert!(!store::private_set(db, "alice@a.test", &[el("c", "1")], 2).unwrap());
        assert_eq!(
            store::private_get(db, "alice@a.test", "a", "urn:x").unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(store::private_get(db, "alice@a.test", "c", "urn:x").unwrap(), None);
    }
}

/// OMEMO (XEP-0384 v0.8+, `urn:xmpp:omemo:2`) as Conversations, Dino and Gajim publish it,
/// addressed to the account's own bare JID: an open device list; one bundles node holding an
/// item per device (`max_items = max`), read by a stranger; and the recovery from a node an
/// older client made with the defaults: precondition-not-met, the owner configures the node,
/// the same publish then succeeds (XEP-0060 §7.1.5 and §8.2).
#[tokio::test]
async fn omemo_flows_with_publish_options_to_the_own_bare_jid() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "carol"]).await;
    let (alice, _, mut rx) = session(&core, "alice@a.test/r", 64);
    let (_carol, _, mut carol_rx) = session(&core, "carol@a.test/r", 64);
    let to_self = |iq: String| iq.replacen("set'", "set' to='alice@a.test'", 1);
    let open = field("access_model", "open");
    let bundles_options = format!("{open}{}", field("max_items", "max"));
    let list = "<devices xmlns='urn:xmpp:omemo:2'><device id='1'/><device id='2'/></devices>";
    let r = own_iq(
        &core,
        &alice,
        &mut rx,
        &to_self(publish(
            "d",
            "urn:xmpp:omemo:2:devices",
            "current",
            list,
            &open,
        )),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    assert_eq!(r.attr("from"), Some("alice@a.test"), "{r:?}");
    for device in ["1", "2", "1"] {
        let bundle =
            format!("<bundle xmlns='urn:xmpp:omemo:2'><spk id='{device}'>AAAA</spk></bundle>");
        let r = own_iq(
            &core,
            &alice,
            &mut rx,
            &to_self(publish(
                "b",
                "urn:xmpp:omemo:2:bundles",
                device,
                &bundle,
                &bundles_options,
            )),
        )
        .await;
        assert_eq!(r.attr("type"), Some("result"), "bundle {device}: {r:?}");
    }
    // carol (no subscription) reads the device list and both bundles; device 1's was replaced.
    let r = other_iq(
        &core,
        "carol@a.test/r",
        "alice@a.test",
        &mut carol_rx,
        &items("i1", "urn:xmpp:omemo:2:devices", "", ""),
    )
    .await;
    assert_eq!(item_ids(&r), ["current"], "{r:?}");
    let r = other_iq(
        &core,
        "carol@a.test/r",
        "alice@a.test",
        &mut carol_rx,
        &items("i2", "urn:xmpp:omemo:2:bundles", "", ""),
    )
    .await;
    let mut ids = item_ids(&r);
    ids.sort();
    assert_eq!(ids, ["1", "2"], "{r:?}");
    // A bundles node an older client created with the defaults (presence, one item).
    let legacy = "eu.siacs.conversations.axolotl.bundles:7";
    let bundle = "<bundle xmlns='eu.siacs.conversations.axolotl'><signedPreKeyPublic signedPreKeyId='1'>AAAA</signedPreKeyPublic></bundle>";
    own_iq(
        &core,
        &alice,
        &mut rx,
        &publish("l1", legacy, "current", bundle, ""),
    )
    .await;
    let r = own_iq(
        &core,
        &alice,
        &mut rx,
        &to_self(publish("l2", legacy, "current", bundle, &open)),
    )
    .await;
    let (cond, app, text) = error_of(&r);
    assert_eq!(
        (cond.as_str(), app.as_str()),
        ("conflict", "precondition-not-met")
    );
    assert!(!text.is_empty());
    let error = r.children().find(|c| c.name == "error").unwrap();
    assert_eq!(error.attr("code"), Some("409"), "XEP-0086 code");
    let r = own_iq(
        &core,
        &alice,
        &mut rx,
        &format!(
            "set' to='alice@a.test' id='c'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='{legacy}'>\
             <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             {open}</x></configure></pubsub>"
        ),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = own_iq(
        &core,
        &alice,
        &mut rx,
        &to_self(publish("l3", legacy, "current", bundle, &open)),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let r = other_iq(
        &core,
        "carol@a.test/r",
        "alice@a.test",
        &mut carol_rx,
        &items("i3", legacy, "", ""),
    )
    .await;
    assert_eq!(item_ids(&r), ["current"], "{r:?}");
}
