//! The XEP-0045 chat service (`[muc]`) run by the gateway, with real clients: slixmpp's
//! xep_0045 plugin signed in to the embedded core, reaching the rooms through the gateway.

use serde_json::json;

use crate::core::{assert_eventually, core_with_services, login, Client};
use crate::harness::*;
use fedgate::gateway::RunningGateway;

const ROOM: &str = "room@conf.a.test";

/// A gateway for a.test with the embedded core and the chat service conf.a.test, and the
/// accounts alice, bob and carol (password "pw").
async fn deployment(dns: &TestDns) -> Instance {
    deployment_of(dns, "a.test", Some("conf.a.test")).await
}

/// A gateway for `domain` with the embedded core (accounts alice, bob and carol, password
/// "pw") and, with `muc`, the chat service on that domain.
async fn deployment_of(dns: &TestDns, domain: &str, muc: Option<&str>) -> Instance {
    let services: Vec<(&str, String)> = muc
        .map(|m| (m, format!("[muc]\ndomain = \"{m}\"\nhistory_length = 5\n")))
        .into_iter()
        .collect();
    core_with_services(dns, domain, &services, &["alice", "bob", "carol"]).await
}

async fn user(gw: &RunningGateway, name: &str) -> Client {
    user_at(gw, &format!("{name}@a.test")).await
}

async fn user_at(gw: &RunningGateway, account: &str) -> Client {
    let addr = gw.core.as_ref().unwrap().c2s_addrs[0];
    login(addr, &format!("{account}/r"), "pw")
        .muc()
        .like_a_user()
        .online()
        .await
}

/// Alice creates the room (an instant room) and says two things.
async fn alice_opens_the_room(alice: &mut Client, fields: serde_json::Value) {
    let joined = alice.join("Alice", "create").await;
    assert_eq!(joined["type"], "result", "{joined}");
    let codes = joined["codes"].as_array().unwrap();
    assert!(
        codes.contains(&json!(201)) && codes.contains(&json!(110)),
        "{joined}"
    );
    assert_eq!(joined["affiliation"], "owner");
    assert_eq!(joined["role"], "moderator");
    let configured = alice
        .muc(
            json!({"cmd": "muc_configure", "room": ROOM, "fields": {}}),
            "instant",
        )
        .await;
    assert_eq!(configured["type"], "result", "{configured}");
    if fields.as_object().is_some_and(|f| !f.is_empty()) {
        let configured = alice
            .muc(
                json!({"cmd": "muc_configure", "room": ROOM, "fields": fields}),
                "configure",
            )
            .await;
        assert_eq!(configured["type"], "result", "{configured}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_join_talk_privately_and_publicly_and_a_newcomer_gets_the_history() {
    let dns = TestDns::start().await;
    let mut a = deployment(&dns).await;
    let mut alice = user(a.gw(), "alice").await;
    let mut bob = user(a.gw(), "bob").await;

    // The service is in the domain's disco#items.
    alice
        .command(json!({"cmd": "iq", "to": "a.test", "xml": "<query xmlns='http://jabber.org/protocol/disco#items'/>"}))
        .await;
    let items = alice.expect("iq_result", |_| true).await;
    assert!(
        items["xml"].as_str().unwrap().contains("conf.a.test"),
        "{items}"
    );

    alice_opens_the_room(&mut alice, json!({})).await;
    for body in ["first", "second"] {
        alice
            .run(json!({"cmd": "muc_say", "room": ROOM, "body": body}))
            .await;
        alice
            .expect("groupchat", |e| e["body"] == body && e["delay"] == false)
            .await;
    }

    // Bob enters: Alice is there, the history comes with <delay/>.
    let joined = bob.join("Bob", "join").await;
    assert_eq!(joined["type"], "result", "{joined}");
    // slixmpp lists every presence of the join, its own last (XEP-0045 §7.2.3's order).
    assert_eq!(joined["occupants"], json!(["Alice", "Bob"]));
    assert_eq!(joined["codes"], json!([110]));
    assert_eq!(joined["role"], "participant");
    let history: Vec<(&str, &str)> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["nick"].as_str().unwrap(), m["body"].as_str().unwrap()))
        .collect();
    assert_eq!(history, [("Alice", "first"), ("Alice", "second")]);
    let p = alice
        .expect("muc_presence", |e| {
            e["nick"] == "Bob" && e["type"] == "available"
        })
        .await;
    // Alice is a moderator of a semi-anonymous room: she sees Bob's real JID.
    assert_eq!(p["jid"], "bob@a.test/r");

    // Groupchat to everyone, with a stanza-id by the room.
    bob.run(json!({"cmd": "muc_say", "room": ROOM, "body": "hello all"}))
        .await;
    let m = alice
        .expect("groupchat", |e| e["body"] == "hello all")
        .await;
    assert_eq!(m["nick"], "Bob");
    assert!(m["stanza_id"].is_string(), "{m}");
    bob.expect("groupchat", |e| e["body"] == "hello all").await;

    // A private message through the room.
    bob.command(
        json!({"cmd": "message", "to": format!("{ROOM}/Alice"), "body": "psst", "type": "chat"}),
    )
    .await;
    let pm = alice.expect("message", |e| e["body"] == "psst").await;
    assert_eq!(pm["from"], format!("{ROOM}/Bob"));

    // The room's archive (XEP-0313), paged two at a time: the ids are the stanza-ids the
    // occupants got.
    let archive = bob
        .muc(
            json!({"cmd": "muc_archive", "room": ROOM, "max": 2}),
            "archive",
        )
        .await;
    assert_eq!(archive["type"], "result", "{archive}");
    let bodies: Vec<&str> = archive["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["first", "second", "hello all"]);
    assert_eq!(archive["messages"][2]["nick"], "Bob");
    assert_eq!(archive["messages"][2]["id"], m["stanza_id"]);

    // Nickname conflict.
    let mut carol = user(a.gw(), "carol").await;
    let refused = carol.join("alice", "conflict").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["condition"], "conflict");
    assert!(refused["text"].as_str().is_some_and(|t| !t.is_empty()));

    // The metrics: one room, its three messages; the occupant gauge follows within a second.
    let mut scraped = String::new();
    for _ in 0..50 {
        scraped = a.metrics().await;
        if metric(&scraped, "fedgate_muc_occupants") == 2.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&scraped, "fedgate_muc_occupants"), 2.0, "{scraped}");
    assert_eq!(metric(&scraped, "fedgate_muc_rooms"), 1.0);
    assert_eq!(metric(&scraped, "fedgate_muc_messages_total"), 3.0);

    // Leaving.
    bob.run(json!({"cmd": "muc_leave", "room": ROOM, "nick": "Bob"}))
        .await;
    alice
        .expect("muc_presence", |e| {
            e["nick"] == "Bob" && e["type"] == "unavailable"
        })
        .await;
    alice.quit().await;
    bob.quit().await;
    carol.quit().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_moderated_room_a_visitor_needs_voice_and_a_banned_user_stays_out() {
    let dns = TestDns::start().await;
    let mut a = deployment(&dns).await;
    let mut alice = user(a.gw(), "alice").await;
    let mut bob = user(a.gw(), "bob").await;
    alice_opens_the_room(&mut alice, json!({"muc#roomconfig_moderatedroom": true})).await;

    let joined = bob.join("Bob", "join").await;
    assert_eq!(joined["role"], "visitor", "{joined}");
    bob.run(json!({"cmd": "muc_say", "room": ROOM, "body": "may I?"}))
        .await;
    let refused = bob.expect("message", |e| e["type"] == "error").await;
    assert_eq!(refused["condition"], "forbidden", "{refused}");

    // Voice.
    let r = alice
        .muc(
            json!({"cmd": "muc_role", "room": ROOM, "nick": "Bob", "role": "participant"}),
            "voice",
        )
        .await;
    assert_eq!(r["type"], "result", "{r}");
    bob.expect("muc_presence", |e| {
        e["nick"] == "Bob" && e["role"] == "participant"
    })
    .await;
    bob.run(json!({"cmd": "muc_say", "room": ROOM, "body": "thanks"}))
        .await;
    alice.expect("groupchat", |e| e["body"] == "thanks").await;

    // A ban: Bob is removed with 301 and cannot come back.
    let r = alice
        .muc(json!({"cmd": "muc_affiliation", "room": ROOM, "jid": "bob@a.test", "affiliation": "outcast"}), "ban")
        .await;
    assert_eq!(r["type"], "result", "{r}");
    let gone = bob
        .expect("muc_presence", |e| {
            e["nick"] == "Bob" && e["type"] == "unavailable"
        })
        .await;
    assert!(
        gone["codes"].as_array().unwrap().contains(&json!(301)),
        "{gone}"
    );
    let refused = bob.join("Bob", "again").await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["condition"], "forbidden", "{refused}");
    alice.quit().await;
    bob.quit().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_another_server_joins_across_s2s_and_talks_with_a_local_one() {
    let dns = TestDns::start().await;
    let mut a = deployment(&dns).await;
    let mut b = deployment_of(&dns, "b.test", None).await;
    let mut alice = user(a.gw(), "alice").await;
    let mut bob = user_at(b.gw(), "bob@b.test").await;
    alice_opens_the_room(&mut alice, json!({"muc#roomconfig_whois": "anyone"})).await;
    alice
        .run(json!({"cmd": "muc_say", "room": ROOM, "body": "before you came"}))
        .await;

    // Bob's join goes from b.test's core through both gateways and s2s to conf.a.test.
    let joined = bob.join("Bob", "join").await;
    assert_eq!(joined["type"], "result", "{joined}");
    let codes = joined["codes"].as_array().unwrap();
    assert!(codes.contains(&json!(100)), "non-anonymous: {joined}");
    assert_eq!(joined["history"][0]["body"], "before you came");
    let p = alice
        .expect("muc_presence", |e| {
            e["nick"] == "Bob" && e["type"] == "available"
        })
        .await;
    assert_eq!(p["jid"], "bob@b.test/r");
    bob.run(json!({"cmd": "muc_say", "room": ROOM, "body": "hello from b"}))
        .await;
    alice
        .expect("groupchat", |e| {
            e["body"] == "hello from b" && e["nick"] == "Bob"
        })
        .await;
    alice
        .run(json!({"cmd": "muc_say", "room": ROOM, "body": "welcome"}))
        .await;
    bob.expect("groupchat", |e| {
        e["body"] == "welcome" && e["nick"] == "Alice"
    })
    .await;
    // Bob's server ending his session tells the room (his directed presence is undone).
    bob.quit().await;
    alice
        .expect("muc_presence", |e| {
            e["nick"] == "Bob" && e["type"] == "unavailable"
        })
        .await;
    alice.quit().await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_room_comes_back_after_a_restart_with_its_rules_and_subject() {
    let dns = TestDns::start().await;
    let mut a = deployment(&dns).await;
    let mut alice = user(a.gw(), "alice").await;
    alice_opens_the_room(
        &mut alice,
        json!({"muc#roomconfig_persistentroom": true, "muc#roomconfig_membersonly": true}),
    )
    .await;
    alice
        .run(json!({"cmd": "muc_subject", "room": ROOM, "subject": "Kept"}))
        .await;
    let r = alice
        .muc(json!({"cmd": "muc_affiliation", "room": ROOM, "jid": "bob@a.test", "affiliation": "member"}), "member")
        .await;
    assert_eq!(r["type"], "result", "{r}");
    alice.quit().await;

    a.stop().await;
    a.restart().await;
    assert_eventually(|| a.gw().router.component_attached("conf.a.test")).await;

    // Members-only still: Carol is refused, Bob (a member) enters and gets the subject.
    let mut carol = user(a.gw(), "carol").await;
    let refused = carol.join("Carol", "join").await;
    assert_eq!(refused["condition"], "registration-required", "{refused}");
    let mut bob = user(a.gw(), "bob").await;
    let joined = bob.join("Bob", "join").await;
    assert_eq!(joined["type"], "result", "{joined}");
    assert_eq!(joined["affiliation"], "member");
    assert_eq!(joined["subject"], "Kept");
    // Alice is still its owner, and the room is not new.
    let mut alice = user(a.gw(), "alice").await;
    let joined = alice.join("Alice", "rejoin").await;
    assert_eq!(joined["affiliation"], "owner", "{joined}");
    assert!(!joined["codes"].as_array().unwrap().contains(&json!(201)));
    alice.quit().await;
    bob.quit().await;
    carol.quit().await;
    a.stop().await;
}

/// Joining the test's room, on the shared client.
trait JoinRoom {
    async fn join(&mut self, nick: &str, tag: &str) -> serde_json::Value;
}

impl JoinRoom for Client {
    async fn join(&mut self, nick: &str, tag: &str) -> serde_json::Value {
        self.muc(json!({"cmd": "muc_join", "room": ROOM, "nick": nick}), tag)
            .await
    }
}
