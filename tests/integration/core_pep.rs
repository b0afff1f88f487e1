//! XEP-0163 PEP on `fedgate core` with the real slixmpp client (its XEP-0060, XEP-0163,
//! XEP-0115, XEP-0048/0049 and XEP-0402 plugins, through client.py's PEP commands): a publish
//! reaches the account's resources and a subscribed contact whose caps ask for it, an
//! OMEMO-shaped device list published with `access_model=open` is read by a stranger, and
//! legacy bookmarks stored with XEP-0049 read back as XEP-0402 items.

use serde_json::{json, Value};

use crate::core::*;
use crate::harness::*;

const NICK: &str = "http://jabber.org/protocol/nick";
const DEVICES: &str = "eu.siacs.conversations.axolotl.devicelist";

async fn pep_client(addr: std::net::SocketAddr, jid: &str, password: &str) -> Client {
    login(addr, jid, password).pep().online().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_both_resources_and_a_subscribed_contact_asking_for_it() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let mut one = pep_client(n.c2s(), "alice@a.test/one", "pa").await;
    let mut two = pep_client(n.c2s(), "alice@a.test/two", "pa").await;
    let mut bob = pep_client(n.c2s(), "bob@a.test/desk", "pb").await;
    // bob's caps say he wants nicknames (XEP-0172), before his first presence.
    bob.run(json!({"cmd": "pep_interest", "node": NICK})).await;
    for c in [&mut one, &mut two, &mut bob] {
        c.roster().await;
        c.run(json!({"cmd": "presence"})).await;
    }
    // The account announces its PEP service.
    one.run(json!({"cmd": "disco", "to": "alice@a.test", "tag": "info"}))
        .await;
    let info = one.result("info").await;
    assert!(
        info["identities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i[0] == "pubsub" && i[1] == "pep"),
        "{info}"
    );
    assert!(
        info["features"]
            .as_array()
            .unwrap()
            .contains(&json!("http://jabber.org/protocol/pubsub#publish-options")),
        "{info}"
    );
    // bob and alice subscribe to each other.
    one.subscription("bob@a.test", "subscribe").await;
    bob.presence_from("subscribe", "alice@a.test").await;
    bob.subscription("alice@a.test", "subscribed").await;
    bob.subscription("alice@a.test", "subscribe").await;
    one.presence_from("subscribe", "bob@a.test").await;
    one.subscription("bob@a.test", "subscribed").await;
    bob.push("alice@a.test", "both").await;

    let r = one
        .pep(
            json!({"cmd": "pep_publish", "node": NICK, "id": "current",
                   "xml": "<nick xmlns='http://jabber.org/protocol/nick'>Alice</nick>"}),
            "nick",
        )
        .await;
    assert_eq!(r["type"], "result", "{r}");
    assert_eq!(r["id"], "current");
    // Both of alice's resources are notified, from her bare JID.
    for c in [&mut one, &mut two] {
        let e = c.pep_event(NICK, "publish").await;
        assert_eq!(e["from"], "alice@a.test", "{e}");
        assert_eq!(e["items"], json!(["current"]));
    }
    // bob gets it once: live, or as the last item once his caps were verified.
    let e = bob.pep_event(NICK, "publish").await;
    assert_eq!(e["from"], "alice@a.test", "{e}");
    // bob, a subscribed contact, reads the node (presence access model).
    let r = bob
        .pep(
            json!({"cmd": "pep_items", "jid": "alice@a.test", "node": NICK}),
            "read",
        )
        .await;
    assert_eq!(r["type"], "result", "{r}");
    assert!(
        r["items"][0]["xml"].as_str().unwrap().contains("Alice"),
        "{r}"
    );
    for c in [one, two, bob] {
        c.quit().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_omemo_device_list_published_open_is_read_by_anyone() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("carol@a.test", "pc");
    let mut alice = pep_client(n.c2s(), "alice@a.test/phone", "pa").await;
    let mut carol = pep_client(n.c2s(), "carol@a.test/laptop", "pc").await;
    let list = "<list xmlns='eu.siacs.conversations.axolotl'><device id='1234'/></list>";
    let open = json!({"pubsub#access_model": "open"});
    let r = alice
        .pep(
            json!({"cmd": "pep_publish", "node": DEVICES, "id": "current", "xml": list,
                   "options": open}),
            "devices",
        )
        .await;
    assert_eq!(r["type"], "result", "{r}");
    let bundle_node = "eu.siacs.conversations.axolotl.bundles:1234";
    let bundle = "<bundle xmlns='eu.siacs.conversations.axolotl'><signedPreKeyPublic signedPreKeyId='1'>AAAA</signedPreKeyPublic></bundle>";
    let r = alice
        .pep(
            json!({"cmd": "pep_publish", "node": bundle_node, "id": "current", "xml": bundle,
                   "options": open}),
            "bundle",
        )
        .await;
    assert_eq!(r["type"], "result", "{r}");
    // carol, not on alice's roster, fetches both as an OMEMO client starting a session does.
    for (node, want) in [(DEVICES, "1234"), (bundle_node, "signedPreKeyPublic")] {
        let r = carol
            .pep(
                json!({"cmd": "pep_items", "jid": "alice@a.test", "node": node}),
                node,
            )
            .await;
        assert_eq!(r["type"], "result", "{r}");
        assert!(r["items"][0]["xml"].as_str().unwrap().contains(want), "{r}");
    }
    // Options that contradict the node: the precondition OMEMO clients rely on.
    let r = alice
        .pep(
            json!({"cmd": "pep_publish", "node": DEVICES, "id": "current", "xml": list,
                   "options": {"pubsub#access_model": "whitelist"}}),
            "conflict",
        )
        .await;
    assert_eq!(
        (r["condition"].as_str(), r["app"].as_str()),
        (Some("conflict"), Some("precondition-not-met")),
        "{r}"
    );
    // A node with the default (presence) access model is not for carol.
    alice
        .pep(
            json!({"cmd": "pep_publish", "node": NICK, "xml":
                   "<nick xmlns='http://jabber.org/protocol/nick'>Alice</nick>"}),
            "nick",
        )
        .await;
    let r = carol
        .pep(
            json!({"cmd": "pep_items", "jid": "alice@a.test", "node": NICK}),
            "nick-read",
        )
        .await;
    assert_eq!(
        (r["condition"].as_str(), r["app"].as_str()),
        (
            Some("not-authorized"),
            Some("presence-subscription-required")
        ),
        "{r}"
    );
    alice.quit().await;
    carol.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_bookmarks_read_back_as_xep_0402_items() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    let mut old = pep_client(n.c2s(), "alice@a.test/old", "pa").await;
    let mut new = pep_client(n.c2s(), "alice@a.test/new", "pa").await;
    let r = old
        .pep(
            json!({"cmd": "bookmarks_set", "conferences": [
                {"jid": "room@muc.a.test", "name": "The Room", "nick": "al", "autojoin": true}
            ]}),
            "set",
        )
        .await;
    assert_eq!(r["type"], "result", "{r}");
    // The XEP-0402 client sees the conference as an item of urn:xmpp:bookmarks:1.
    let r = new
        .pep(
            json!({"cmd": "pep_items", "jid": "alice@a.test", "node": "urn:xmpp:bookmarks:1"}),
            "items",
        )
        .await;
    assert_eq!(r["type"], "result", "{r}");
    assert_eq!(r["items"][0]["id"], "room@muc.a.test", "{r}");
    assert_eq!(
        r["items"][0]["conference"],
        json!({"name": "The Room", "autojoin": true, "nick": "al"}),
        "{r}"
    );
    // And the legacy client reads back what it stored.
    let r = old.pep(json!({"cmd": "bookmarks_get"}), "get").await;
    assert_eq!(
        r["conferences"],
        json!([{"jid": "room@muc.a.test", "name": "The Room", "nick": "al", "autojoin": true}]),
        "{r}"
    );
    old.quit().await;
    new.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_behind_the_gateway_gets_notifications_its_caps_ask_for() {
    let dns = TestDns::start().await;
    let a = node(&dns, "a.test", &[]).await;
    let b = node(&dns, "b.test", &[]).await;
    a.add_user("alice@a.test", "pa");
    b.add_user("bob@b.test", "pb");
    let mut alice = pep_client(a.c2s(), "alice@a.test/home", "pa").await;
    let mut bob = pep_client(b.c2s(), "bob@b.test/desk", "pb").await;
    // bob's caps ask for alice's device list; his presence crosses the federation with them,
    // and a.test's disco#info query for them goes to him through both gateways.
    bob.run(json!({"cmd": "pep_interest", "node": DEVICES}))
        .await;
    alice.roster().await;
    bob.roster().await;
    alice.run(json!({"cmd": "presence"})).await;
    bob.run(json!({"cmd": "presence"})).await;
    bob.subscription("alice@a.test", "subscribe").await;
    alice.presence_from("subscribe", "bob@b.test").await;
    alice.subscription("bob@b.test", "subscribed").await;
    alice.subscription("bob@b.test", "subscribe").await;
    bob.presence_from("subscribe", "alice@a.test").await;
    bob.subscription("alice@a.test", "subscribed").await;
    alice.push("bob@b.test", "both").await;
    let list = "<list xmlns='eu.siacs.conversations.axolotl'><device id='42'/></list>";
    let r = alice
        .pep(
            json!({"cmd": "pep_publish", "node": DEVICES, "id": "current", "xml": list}),
            "devices",
        )
        .await;
    assert_eq!(r["type"], "result", "{r}");
    // Once, live or as the last item when bob's caps were verified.
    let e = bob.pep_event(DEVICES, "publish").await;
    assert_eq!(
        (e["from"].as_str(), &e["items"]),
        (Some("alice@a.test"), &json!(["current"])),
        "{e}"
    );
    // A second publish is live for sure now.
    let list =
        "<list xmlns='eu.siacs.conversations.axolotl'><device id='42'/><device id='43'/></list>";
    alice
        .pep(
            json!({"cmd": "pep_publish", "node": DEVICES, "id": "current", "xml": list}),
            "devices2",
        )
        .await;
    bob.pep_event(DEVICES, "publish").await;
    alice.quit().await;
    bob.quit().await;
}

/// XEP-0398 with slixmpp's XEP-0084 and XEP-0054 plugins: an avatar published with PEP is
/// the vCard photo another account reads, a vCard photo set by the client becomes the PEP
/// avatar (data and metadata items named by its SHA-1), and the account announces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatars_convert_between_pep_and_vcard_both_ways() {
    use base64::Engine as _;
    use sha1::Digest as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let mut alice = pep_client(n.c2s(), "alice@a.test/one", "pa").await;
    let (mut bob, _) = sign_in(n.c2s(), "bob@a.test/r", "pb").await;
    let ask = |tag: &'static str, mut cmd: Value| {
        cmd["tag"] = json!(tag);
        cmd
    };

    // PEP to vCard: bob reads the photo alice published with XEP-0084.
    let first = b"\x89PNG first avatar";
    let r = alice
        .pep(
            json!({"cmd": "avatar_publish", "data": b64(first), "type": "image/png"}),
            "publish",
        )
        .await;
    assert_eq!(r["type"], "result", "{r}");
    bob.command(ask("v1", json!({"cmd": "vcard_get", "to": "alice@a.test"})))
        .await;
    let r = bob.result("v1").await;
    assert_eq!(r["photo"], b64(first), "{r}");

    // vCard to PEP: alice sets a vCard photo; her PEP avatar is that image.
    let second = b"\x89PNG second avatar";
    let sha1 = hex::encode(sha1::Sha1::digest(second));
    alice
        .command(ask(
            "v2",
            json!({"cmd": "vcard_set", "fn": "Alice", "photo": b64(second)}),
        ))
        .await;
    assert_eq!(alice.result("v2").await["type"], "result");
    let meta = alice
        .pep(
            json!({"cmd": "pep_items", "jid": "alice@a.test", "node": "urn:xmpp:avatar:metadata"}),
            "meta",
        )
        .await;
    assert_eq!(meta["items"][0]["id"], sha1.as_str(), "{meta}");
    let xml = meta["items"][0]["xml"].as_str().unwrap();
    assert!(
        xml.contains(&format!("id=\"{sha1}\"")) && xml.contains("image/png"),
        "{xml}"
    );
    let data = alice
        .pep(
            json!({"cmd": "pep_items", "jid": "alice@a.test", "node": "urn:xmpp:avatar:data"}),
            "data",
        )
        .await;
    let item = data["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == sha1.as_str())
        .unwrap_or_else(|| panic!("no data item {sha1}: {data}"));
    assert!(
        item["xml"].as_str().unwrap().contains(&b64(second)),
        "{item}"
    );

    // XEP-0398 §2: the account says it converts.
    bob.command(json!({"cmd": "disco", "to": "alice@a.test", "tag": "d"}))
        .await;
    let d = bob.result("d").await;
    assert!(
        d["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "urn:xmpp:pep-vcard-conversion:0"),
        "{d}"
    );
    alice.quit().await;
    bob.quit().await;
}

/// OMEMO 2 (`urn:xmpp:omemo:2`) bundles through slixmpp: one node with an item per device,
/// created by publish-options `max_items = max` and `access_model = open`; a stranger reads
/// every device's bundle, and a device's new bundle replaces its old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omemo_2_bundles_keep_an_item_per_device_for_anyone() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("carol@a.test", "pc");
    let mut alice = pep_client(n.c2s(), "alice@a.test/phone", "pa").await;
    let mut carol = pep_client(n.c2s(), "carol@a.test/laptop", "pc").await;
    let node_name = "urn:xmpp:omemo:2:bundles";
    let options = json!({"pubsub#access_model": "open", "pubsub#max_items": "max"});
    for (device, key) in [("11", "A"), ("22", "B"), ("11", "C")] {
        let bundle = format!("<bundle xmlns='urn:xmpp:omemo:2'><ik>{key}</ik></bundle>");
        let r = alice
            .pep(
                json!({"cmd": "pep_publish", "node": node_name, "id": device, "xml": bundle,
                       "options": options}),
                &format!("b{device}{key}"),
            )
            .await;
        assert_eq!(r["type"], "result", "{r}");
    }
    let r = carol
        .pep(
            json!({"cmd": "pep_items", "jid": "alice@a.test", "node": node_name}),
            "read",
        )
        .await;
    assert_eq!(r["type"], "result", "{r}");
    let items = r["items"].as_array().unwrap();
    let mut got: Vec<(String, bool)> = items
        .iter()
        .map(|i| {
            let xml = i["xml"].as_str().unwrap();
            (i["id"].as_str().unwrap().to_owned(), xml.contains(">C<"))
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("11".to_owned(), true), ("22".to_owned(), false)],
        "{r}"
    );
    alice.quit().await;
    carol.quit().await;
}
