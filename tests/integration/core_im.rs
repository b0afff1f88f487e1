//! `fedgate core`'s IM features with the real slixmpp client (tests/support/client.py) and raw
//! streams: PLAIN by default, XEP-0191 blocking, XEP-0054/XEP-0153 vCards and avatars,
//! XEP-0237 roster versioning, XEP-0012 last activity, XEP-0199 ping, XEP-0077 registration.

use serde_json::json;

use crate::core::*;
use crate::harness::*;

/// An im command of client.py (see its docstring) and its result.
async fn ask(c: &mut Client, cmd: serde_json::Value) -> serde_json::Value {
    let tag = format!("t{}", rand_tag());
    let mut cmd = cmd;
    cmd["tag"] = json!(tag);
    c.command(cmd).await;
    c.result(&tag).await
}

fn rand_tag() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn plain_is_offered_after_tls_by_default_and_a_go_sendxmpp_style_sign_in_works() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "secret");
    n.add_user("bob@a.test", "pb");
    let (mut bob, _) = sign_in(n.c2s(), "bob@a.test/r", "pb").await;
    bob.run(json!({"cmd": "presence"})).await;
    // The default config, after TLS: all three, PLAIN last.
    let (mut s, features) = raw_tls(n.c2s(), "a.test").await;
    assert!(
        features.contains("<mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism>"),
        "{features}"
    );
    // What go-sendxmpp (mattn/go-xmpp) does: PLAIN with the bare localpart, bind, the old
    // session iq, one message, close.
    s.send(&plain_auth("alice", "secret", "")).await;
    assert_eq!(
        s.next_text().await,
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    );
    raw_restart(&mut s, "a.test").await;
    raw_bind_resource(&mut s, "go-sendxmpp").await;
    s.send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await;
    assert!(next_matching(&mut s, |t| t.contains("id='s1'"))
        .await
        .contains("type='result'"));
    s.send("<message to='bob@a.test' type='chat' id='gs1'><body>from a script</body></message>")
        .await;
    let m = bob.expect("message", |e| e["id"] == "gs1").await;
    assert_eq!(m["body"], "from a script");
    assert_eq!(m["from"], "alice@a.test/go-sendxmpp");
    // And slixmpp forced to PLAIN signs in with the default config too.
    let c = login(n.c2s(), "alice@a.test/sl", "secret")
        .mech("PLAIN")
        .online()
        .await;
    assert_eq!(c.mechanism, "PLAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_contact_cannot_reach_the_account_and_pushes_reach_every_resource() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("eve@a.test", "pe");
    let (mut alice, _) = sign_in(n.c2s(), "alice@a.test/one", "pa").await;
    let (mut alice2, _) = sign_in(n.c2s(), "alice@a.test/two", "pa").await;
    let (mut eve, _) = sign_in(n.c2s(), "eve@a.test/r", "pe").await;
    for c in [&mut alice, &mut alice2] {
        c.run(json!({"cmd": "presence"})).await;
        let r = ask(c, json!({"cmd": "blocklist"})).await;
        assert_eq!(r["jids"], json!([]), "{r}");
    }
    // The server announces the feature where clients look.
    alice
        .command(json!({"cmd": "disco", "to": "a.test", "tag": "d"}))
        .await;
    let d = alice.result("d").await;
    assert!(
        d["features"]
            .as_array()
            .unwrap()
            .contains(&json!("urn:xmpp:blocking")),
        "{d}"
    );

    let r = ask(&mut alice, json!({"cmd": "block", "jids": ["eve@a.test"]})).await;
    assert_eq!(r["type"], "result", "{r}");
    // The push reaches the other resource (and the one that blocked).
    let p = alice2.expect("block_push", |_| true).await;
    assert_eq!(
        (p["type"].clone(), p["jids"].clone()),
        (json!("block"), json!(["eve@a.test"]))
    );
    alice.expect("block_push", |_| true).await;
    let r = ask(&mut alice2, json!({"cmd": "blocklist"})).await;
    assert_eq!(r["jids"], json!(["eve@a.test"]), "{r}");

    // eve's message does not arrive; she gets service-unavailable.
    eve.message("alice@a.test", "e1", "let me in").await;
    let e = eve.expect("message", |e| e["id"] == "e1").await;
    assert_eq!(
        (e["type"].clone(), e["condition"].clone()),
        (json!("error"), json!("service-unavailable")),
        "{e}"
    );
    alice
        .expect_none("message", std::time::Duration::from_millis(300), |e| {
            e["id"] == "e1"
        })
        .await;
    // alice's message to eve is refused with not-acceptable and <blocked/>.
    alice.message("eve@a.test", "a1", "hello?").await;
    let e = alice.expect("message", |e| e["id"] == "a1").await;
    assert_eq!(e["condition"], "not-acceptable", "{e}");
    eve.expect_none("message", std::time::Duration::from_millis(300), |e| {
        e["id"] == "a1"
    })
    .await;

    // Unblocked, both ways work again.
    let r = ask(
        &mut alice2,
        json!({"cmd": "unblock", "jids": ["eve@a.test"]}),
    )
    .await;
    assert_eq!(r["type"], "result", "{r}");
    let p = alice.expect("block_push", |p| p["type"] == "unblock").await;
    assert_eq!(p["jids"], json!(["eve@a.test"]));
    eve.message("alice@a.test/one", "e2", "now?").await;
    assert_eq!(
        alice.expect("message", |e| e["id"] == "e2").await["body"],
        "now?"
    );
}

/// alice and bob, both signed in, available, and subscribed to each other.
async fn friends(n: &Node) -> (Client, Client) {
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let (mut alice, _) = sign_in(n.c2s(), "alice@a.test/home", "pa").await;
    let (mut bob, _) = sign_in(n.c2s(), "bob@a.test/desk", "pb").await;
    alice.roster().await;
    bob.roster().await;
    alice.run(json!({"cmd": "presence"})).await;
    bob.run(json!({"cmd": "presence"})).await;
    alice.subscription("bob@a.test", "subscribe").await;
    bob.presence_from("subscribe", "alice@a.test").await;
    bob.subscription("alice@a.test", "subscribed").await;
    bob.subscription("alice@a.test", "subscribe").await;
    alice.presence_from("subscribe", "bob@a.test").await;
    alice.subscription("bob@a.test", "subscribed").await;
    alice.push("bob@a.test", "both").await;
    bob.push("alice@a.test", "both").await;
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vcard_set_is_read_back_by_another_account_and_its_photo_hash_is_in_presence() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    let (mut alice, mut bob) = friends(&n).await;
    // Before any vCard, bob reads an empty one (XEP-0054 §3.1), not an error.
    let r = ask(&mut bob, json!({"cmd": "vcard_get", "to": "alice@a.test"})).await;
    assert_eq!(
        (r["type"].clone(), r["fn"].clone()),
        (json!("result"), json!(null)),
        "{r}"
    );
    let photo = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"\x89PNG not really",
    );
    let r = ask(
        &mut alice,
        json!({"cmd": "vcard_set", "fn": "Alice Liddell", "photo": photo}),
    )
    .await;
    assert_eq!(r["type"], "result", "{r}");
    let r = ask(&mut bob, json!({"cmd": "vcard_get", "to": "alice@a.test"})).await;
    assert_eq!(r["fn"], "Alice Liddell", "{r}");
    assert_eq!(r["photo"], photo.as_str(), "{r}");
    // XEP-0153: bob sees the SHA-1 of the photo bytes in alice's presence, at once.
    let want = {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(b"\x89PNG not really"))
    };
    let p = bob
        .expect("photo", |e| {
            e["from"] == "alice@a.test/home" && e["hash"] != ""
        })
        .await;
    assert_eq!(p["hash"], want.as_str());
    // bob cannot change alice's vCard.
    bob.command(json!({"cmd": "iq", "to": "alice@a.test", "type": "set", "xml": "<vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard>"})).await;
    let r = bob.expect("iq_result", |_| true).await;
    assert_eq!(r["condition"], "forbidden", "{r}");
    let r = ask(&mut bob, json!({"cmd": "vcard_get", "to": "alice@a.test"})).await;
    assert_eq!(r["fn"], "Alice Liddell", "{r}");
}

#[tokio::test]
async fn roster_versioning_with_the_current_and_an_old_ver() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    let (mut s, _) = raw_tls(n.c2s(), "a.test").await;
    s.send(&plain_auth("alice", "pa", "")).await;
    assert!(s.next_text().await.starts_with("<success"));
    s.restart();
    s.send(&client_header("a.test")).await;
    s.expect_header().await;
    let features = s.next_text().await;
    assert!(
        features.contains("<ver xmlns='urn:xmpp:features:rosterver'/>"),
        "{features}"
    );
    raw_bind_resource(&mut s, "r").await;
    let get = |id: &str, ver: &str| {
        format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster' ver='{ver}'/></iq>")
    };
    s.send(&get("g0", "")).await;
    let r = next_matching(&mut s, |t| t.contains("id='g0'")).await;
    assert!(r.contains("ver='0'"), "{r}");
    s.send("<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='bob@b.test' name='Bob'/></query></iq>").await;
    next_matching(&mut s, |t| t.contains("id='s1'")).await;
    let push = next_matching(&mut s, |t| t.contains("type='set'")).await;
    assert!(
        push.contains("ver='1'") && push.contains("bob@b.test"),
        "{push}"
    );
    // The current version: an empty result, no roster.
    s.send(&get("g1", "1")).await;
    let r = next_matching(&mut s, |t| t.contains("id='g1'")).await;
    assert!(r.contains("type='result'") && !r.contains("<query"), "{r}");
    // An old one: the whole roster with the current version.
    s.send(&get("g2", "0")).await;
    let r = next_matching(&mut s, |t| t.contains("id='g2'")).await;
    assert!(
        r.contains("ver='1'") && r.contains("jid='bob@b.test'"),
        "{r}"
    );
    // Kept across a restart of the core.
    drop(s);
    let mut n = n;
    n.stop_core().await;
    n.start_core().await;
    let mut s = raw_session(n.c2s(), "alice@a.test", "pa", "r2").await;
    s.send(&get("g3", "1")).await;
    let r = next_matching(&mut s, |t| t.contains("id='g3'")).await;
    assert!(!r.contains("<query"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_activity_and_ping_of_an_account_with_slixmpp() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    let (mut alice, mut bob) = friends(&n).await;
    n.add_user("eve@a.test", "pe");
    let (mut eve, _) = sign_in(n.c2s(), "eve@a.test/r", "pe").await;
    // XEP-0199: bob pings alice's bare JID, alice her own.
    bob.command(json!({"cmd": "ping", "to": "alice@a.test", "tag": "p1"}))
        .await;
    assert_eq!(bob.result("p1").await["type"], "result");
    alice
        .command(json!({"cmd": "ping", "to": "alice@a.test", "tag": "p2"}))
        .await;
    assert_eq!(alice.result("p2").await["type"], "result");
    // XEP-0012: online is seconds 0; eve, not subscribed, is forbidden.
    let r = ask(&mut bob, json!({"cmd": "last", "to": "alice@a.test"})).await;
    assert_eq!(
        (r["type"].clone(), r["seconds"].clone()),
        (json!("result"), json!(0)),
        "{r}"
    );
    let r = ask(&mut eve, json!({"cmd": "last", "to": "alice@a.test"})).await;
    assert_eq!(r["condition"], "forbidden", "{r}");
    // After alice's session ends: a few seconds at most.
    alice.quit().await;
    bob.presence_from("unavailable", "alice@a.test/home").await;
    let r = ask(&mut bob, json!({"cmd": "last", "to": "alice@a.test"})).await;
    assert_eq!(r["type"], "result", "{r}");
    assert!(r["seconds"].as_u64().unwrap() < 10, "{r}");
    // The server's uptime.
    let r = ask(&mut eve, json!({"cmd": "last", "to": "a.test"})).await;
    assert_eq!(r["type"], "result", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_and_an_account_removal_in_band() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "old pw");
    let (mut alice, _) = sign_in(n.c2s(), "alice@a.test/home", "old pw").await;
    let (mut alice2, _) = sign_in(n.c2s(), "alice@a.test/work", "old pw").await;
    let r = ask(&mut alice, json!({"cmd": "passwd", "password": "new pw"})).await;
    assert_eq!(r["type"], "result", "{r}");
    // The new password signs in (either SCRAM), the old one no longer; the other session stays.
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
        let c = login(n.c2s(), "alice@a.test/new", "new pw")
            .mech(mech)
            .online()
            .await;
        c.quit().await;
    }
    let mut c = login(n.c2s(), "alice@a.test/old", "old pw").spawn();
    c.expect("failed", |e| e["why"] == "auth").await;
    alice2
        .command(json!({"cmd": "ping", "to": "a.test", "tag": "still"}))
        .await;
    assert_eq!(alice2.result("still").await["type"], "result");
    // Removal: the result, then both sessions end, and the account is gone.
    let r = ask(&mut alice, json!({"cmd": "unregister"})).await;
    assert_eq!(r["type"], "result", "{r}");
    alice.expect("disconnected", |_| true).await;
    alice2.expect("disconnected", |_| true).await;
    let mut c = login(n.c2s(), "alice@a.test/gone", "new pw").spawn();
    c.expect("failed", |e| e["why"] == "auth").await;
}

/// A raw stream after TLS, up to the pre-auth features; returns them too.
async fn pre_auth(n: &Node) -> (RawStream, String) {
    raw_tls(n.c2s(), "a.test").await
}

async fn iq_reply(s: &mut RawStream, id: &str, xml: &str) -> String {
    s.send(xml).await;
    next_matching(s, |t| t.contains(&format!("id='{id}'"))).await
}

fn register_set(id: &str, user: &str, pw: &str) -> String {
    format!("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>{user}</username><password>{pw}</password></query></iq>")
}

#[tokio::test]
async fn registration_closed_by_default_open_with_limits_and_by_invitation() {
    let dns = TestDns::start().await;
    // Closed (the default): no feature, and a registration iq ends the stream as before.
    let n = node(&dns, "a.test", &[]).await;
    let (mut s, features) = pre_auth(&n).await;
    assert!(!features.contains("iq-register"), "{features}");
    s.send("<iq type='get' id='g'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    assert_eq!(s.expect_stream_error().await, "not-authorized");
    drop(n);

    // Open: the feature, the form, an account, then the rules.
    let n = node_with(&dns, "a.test", &[], |c| {
        c.registration = fedgate::core::config::Registration::Open;
        // Counted: the two accounts and the conflict (each costs a key derivation).
        c.registration_per_ip_per_hour = 3;
    })
    .await;
    let (mut s, features) = pre_auth(&n).await;
    assert!(
        features.contains("<register xmlns='http://jabber.org/features/iq-register'/>"),
        "{features}"
    );
    let form = iq_reply(
        &mut s,
        "g",
        "<iq type='get' id='g'><query xmlns='jabber:iq:register'/></iq>",
    )
    .await;
    assert!(
        form.contains("<username/>") && form.contains("<password/>"),
        "{form}"
    );
    let r = iq_reply(&mut s, "r1", &register_set("r1", "newbie", "pw1")).await;
    assert!(r.contains("type='result'"), "{r}");
    let r = iq_reply(&mut s, "r2", &register_set("r2", "newbie", "other")).await;
    assert!(r.contains("<conflict "), "{r}");
    let r = iq_reply(&mut s, "r3", &register_set("r3", "bad user@x", "pw")).await;
    assert!(r.contains("<not-acceptable "), "{r}");
    let r = iq_reply(&mut s, "r4", &register_set("r4", "second", "pw2")).await;
    assert!(r.contains("type='result'"), "{r}");
    let r = iq_reply(&mut s, "r5", &register_set("r5", "third", "pw3")).await;
    assert!(r.contains("<resource-constraint "), "{r}");
    // The same stream then signs in as the new account; slixmpp can too.
    s.send(&plain_auth("newbie", "pw1", "")).await;
    assert!(s.next_text().await.starts_with("<success"));
    let c = login(n.c2s(), "second@a.test/r", "pw2").online().await;
    c.quit().await;
    drop(n);

    // Invite: a token is needed, works once, and only a real one.
    let n = node_with(&dns, "a.test", &[], |c| {
        c.registration = fedgate::core::config::Registration::Invite
    })
    .await;
    let accounts = fedgate::core::accounts::Accounts::open(&n.config).unwrap();
    let uri = accounts.invite(None).unwrap();
    let token = uri
        .strip_prefix("xmpp:a.test?register;preauth=")
        .unwrap()
        .to_owned();
    let (mut s, features) = pre_auth(&n).await;
    assert!(features.contains("iq-register"), "{features}");
    let r = iq_reply(&mut s, "i1", &register_set("i1", "invited", "pw")).await;
    assert!(r.contains("<not-allowed "), "{r}");
    let preauth = |id: &str, t: &str| {
        format!("<iq type='set' id='{id}'><preauth xmlns='urn:xmpp:pars:0' token='{t}'/></iq>")
    };
    let r = iq_reply(&mut s, "p0", &preauth("p0", "forged")).await;
    assert!(r.contains("<item-not-found "), "{r}");
    let r = iq_reply(&mut s, "p1", &preauth("p1", &token)).await;
    assert!(r.contains("type='result'"), "{r}");
    let r = iq_reply(&mut s, "i2", &register_set("i2", "invited", "pw")).await;
    assert!(r.contains("type='result'"), "{r}");
    // Used up: a second stream cannot use it again.
    let (mut s, _) = pre_auth(&n).await;
    let r = iq_reply(&mut s, "p2", &preauth("p2", &token)).await;
    assert!(r.contains("<item-not-found "), "{r}");
    let r = iq_reply(&mut s, "i3", &register_set("i3", "again", "pw")).await;
    assert!(r.contains("<not-allowed "), "{r}");
    let c = login(n.c2s(), "invited@a.test/r", "pw").online().await;
    c.quit().await;
}

#[tokio::test]
async fn stun_and_turn_services_with_turn_credentials_over_extdisco() {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| {
        let mut core: fedgate::core::config::CoreConfig = toml::from_str(
            "[[stun]]\nhost = \"stun.a.test\"\n[[turn]]\nhost = \"turn.a.test\"\nport = 3479\nsecret = \"north\"\n",
        )
        .unwrap();
        c.stun = std::mem::take(&mut core.stun);
        c.turn = std::mem::take(&mut core.turn);
    })
    .await;
    n.add_user("alice@a.test", "pa");
    let (mut alice, _) = sign_in(n.c2s(), "alice@a.test/r", "pa").await;
    alice
        .command(
            json!({"cmd": "iq", "to": "a.test", "xml": "<services xmlns='urn:xmpp:extdisco:2'/>"}),
        )
        .await;
    let r = alice.expect("iq_result", |_| true).await;
    let xml = r["xml"].as_str().unwrap();
    assert_eq!(r["type"], "result", "{r}");
    assert!(
        xml.contains("host=\"stun.a.test\"") && xml.contains("host=\"turn.a.test\""),
        "{xml}"
    );
    assert!(
        xml.contains("port=\"3479\"") && xml.contains(":alice@a.test\""),
        "{xml}"
    );
    assert!(
        xml.contains("password=\"") && xml.contains("expires=\""),
        "{xml}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_registers_in_band_when_open_and_with_an_invitation() {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| {
        c.registration = fedgate::core::config::Registration::Open
    })
    .await;
    let mut c = login(n.c2s(), "newcomer@a.test/r", "fresh pw")
        .register(None)
        .spawn();
    c.expect("registered", |_| true).await;
    c.expect("online", |_| true).await;
    c.quit().await;
    // Taken now: the second registration is a conflict (and the wrong password fails).
    let mut c = login(n.c2s(), "newcomer@a.test/r", "other pw")
        .register(None)
        .spawn();
    let e = c.expect("register_failed", |_| true).await;
    assert_eq!(e["condition"], "conflict", "{e}");
    c.expect("failed", |e| e["why"] == "auth").await;
    drop(n);

    let n = node_with(&dns, "a.test", &[], |c| {
        c.registration = fedgate::core::config::Registration::Invite
    })
    .await;
    let uri = fedgate::core::accounts::Accounts::open(&n.config)
        .unwrap()
        .invite(Some("a.test"))
        .unwrap();
    let token = uri.rsplit_once("preauth=").unwrap().1.to_owned();
    let mut c = login(n.c2s(), "uninvited@a.test/r", "pw")
        .register(None)
        .spawn();
    let e = c.expect("register_failed", |_| true).await;
    assert_eq!(e["condition"], "not-allowed", "{e}");
    let mut c = login(n.c2s(), "invited@a.test/r", "pw")
        .register(Some(&token))
        .spawn();
    c.expect("registered", |_| true).await;
    c.expect("online", |_| true).await;
    // Single use: the spent token is refused, so the registration is not allowed.
    let mut c = login(n.c2s(), "second@a.test/r", "pw")
        .register(Some(&token))
        .spawn();
    let e = c.expect("register_failed", |_| true).await;
    assert_eq!(e["condition"], "not-allowed", "{e}");
}
