//! fedgate's own c2s core federating with Prosody: an account on the core (embedded in the
//! gateway, `[core]`) and a user on Prosody add each other and chat, each with a real client
//! (slixmpp), the core's stanzas leaving through fedgate's s2s and Prosody's arriving there.

use serde_json::{json, Value};

use crate::certs::CertSpec;
use crate::harness::{instance, metric};
use crate::peer::{Kind, Peer, PeerTls, USER};
use crate::scenarios::{publish_gateway, GW_S2S_PORT};
use crate::{capture_logs, dns_port_53};
use fedgate::core::accounts::Accounts;

/// The bare JID of an event's `from`.
fn from_bare(e: &Value) -> &str {
    e["from"].as_str().unwrap_or("").split('/').next().unwrap()
}

/// Presence that says the sender is online (no `type`, or a `show`).
fn is_available(e: &Value) -> bool {
    e["event"] == "presence"
        && !matches!(
            e["type"].as_str(),
            Some(
                "subscribe"
                    | "subscribed"
                    | "unsubscribe"
                    | "unsubscribed"
                    | "unavailable"
                    | "error"
                    | "probe"
            )
        )
}

/// A gateway for `gw_domain` with the core inside it (account `alice`, password
/// `alice-password`) and a Prosody server for a peer domain, federating over the test's DNS.
struct CoreAndProsody {
    gw: crate::harness::Instance,
    peer: Peer,
    gw_domain: &'static str,
    _db: tempfile::TempDir,
    _dns: crate::harness::TestDns,
}

impl CoreAndProsody {
    async fn start(gw_domain: &'static str, peer_domain: &str) -> CoreAndProsody {
        CoreAndProsody::start_with(gw_domain, peer_domain, None).await
    }

    /// With `muc`, the gateway also runs the chat service on that domain, published by SRV
    /// and named in its certificate like the gateway's domain.
    async fn start_with(
        gw_domain: &'static str,
        peer_domain: &str,
        muc: Option<&str>,
    ) -> CoreAndProsody {
        capture_logs();
        let dns = dns_port_53().await;
        let db = tempfile::tempdir().unwrap();
        let mut names = vec![gw_domain.to_string()];
        names.extend(muc.map(str::to_string));
        let mut tables = format!(
            "[core]\nlisten = [\"127.0.0.1:0\"]\ndirect_tls_listen = []\ndatabase = {:?}\n[[core.domain]]\nname = \"{gw_domain}\"\n",
            db.path().join("core.sqlite").display().to_string()
        );
        if let Some(m) = muc {
            tables.push_str(&format!("[muc]\ndomain = \"{m}\"\n"));
        }
        let gw = instance(&dns, gw_domain)
            .cert(CertSpec {
                dns: names.clone(),
                eku: vec![
                    rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                    rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                ],
                ..CertSpec::default()
            })
            .cert_domains(&names.iter().map(String::as_str).collect::<Vec<_>>())
            .unlisted()
            .s2s_port(GW_S2S_PORT)
            .tables(&tables)
            .start()
            .await;
        publish_gateway(&dns, &gw, false);
        if let Some(m) = muc {
            dns.add_srv(
                &format!("_xmpp-server._tcp.{m}"),
                0,
                1,
                GW_S2S_PORT,
                &format!("xmpp.{gw_domain}"),
            );
        }
        let peer = Peer::start(Kind::Prosody, peer_domain, &dns, PeerTls::TestCa, false).await;
        let core = gw.gw().core.as_ref().expect("the embedded core runs");
        Accounts::open(&core.core.config)
            .unwrap()
            .add(&format!("alice@{gw_domain}"), "alice-password")
            .unwrap();
        CoreAndProsody {
            gw,
            peer,
            gw_domain,
            _db: db,
            _dns: dns,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_account_and_a_prosody_user_add_each_other_and_chat() {
    let w = CoreAndProsody::start("gw-core.test", "pr-core.test").await;
    let (gw, peer, gw_domain) = (&w.gw, &w.peer, w.gw_domain);
    let core = gw.gw().core.as_ref().expect("the embedded core runs");
    let alice_bare = format!("alice@{gw_domain}");
    let user_bare = format!("{USER}@{}", peer.domain);
    let mut alice = peer
        .login_at(
            &format!("{alice_bare}/core"),
            "alice-password",
            core.c2s_addrs[0],
        )
        .await;
    let mut user = peer.login().await;

    // Alice asks; the Prosody user's client accepts and asks back (as a person clicking
    // "allow" would); Alice's client accepts that.
    alice
        .command(json!({"cmd": "subscription", "to": user_bare, "type": "subscribe"}))
        .await;
    alice
        .wait_for("the Prosody user's subscribed", |e| {
            e["event"] == "presence" && e["type"] == "subscribed" && from_bare(e) == user_bare
        })
        .await;
    user.wait_for("Alice's subscribed", |e| {
        e["event"] == "presence" && e["type"] == "subscribed" && from_bare(e) == alice_bare
    })
    .await;
    // With the subscription both ways, each sees the other online.
    alice
        .wait_for("the Prosody user's presence", |e| {
            is_available(e) && from_bare(e) == user_bare
        })
        .await;
    user.wait_for("Alice's presence", |e| {
        is_available(e) && from_bare(e) == alice_bare
    })
    .await;

    // And they chat, both ways.
    for i in 0..3 {
        alice
            .message(
                &user_bare,
                &format!("a{i}"),
                &format!("hello from the core {i}"),
            )
            .await;
        let m = user
            .wait_for("Alice's message", |e| {
                e["event"] == "message" && e["id"] == format!("a{i}").as_str()
            })
            .await;
        assert_eq!(m["body"], format!("hello from the core {i}").as_str());
        assert_eq!(from_bare(&m), alice_bare);
        user.message(
            &alice_bare,
            &format!("p{i}"),
            &format!("hello from Prosody {i}"),
        )
        .await;
        let m = alice
            .wait_for("the Prosody user's message", |e| {
                e["event"] == "message" && e["id"] == format!("p{i}").as_str()
            })
            .await;
        assert_eq!(m["body"], format!("hello from Prosody {i}").as_str());
        assert_eq!(from_bare(&m), user_bare);
    }
    // It all went over s2s between fedgate and Prosody.
    let m = gw.metrics().await;
    for direction in ["inbound", "outbound"] {
        let sample = format!(
            "fedgate_peer_stanzas_total{{peer=\"{}\",direction=\"{direction}\"}}",
            peer.domain
        );
        assert!(
            metric(&m, &sample) >= 3.0,
            "{sample}: {}",
            metric(&m, &sample)
        );
    }
    alice.quit().await;
    user.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pep_publish_on_the_core_reaches_a_prosody_contact_whose_caps_ask_for_it() {
    const NICK: &str = "http://jabber.org/protocol/nick";
    let w = CoreAndProsody::start("gw-pep.test", "pr-pep.test").await;
    let (gw, peer, gw_domain) = (&w.gw, &w.peer, w.gw_domain);
    let core = gw.gw().core.as_ref().expect("the embedded core runs");
    let alice_bare = format!("alice@{gw_domain}");
    let user_bare = format!("{USER}@{}", peer.domain);
    let mut alice = peer
        .login_pep(
            &format!("{alice_bare}/core"),
            "alice-password",
            core.c2s_addrs[0],
        )
        .await;
    let mut user = peer
        .login_pep(
            &format!("{user_bare}/interop"),
            crate::peer::PASSWORD,
            peer.c2s_addr(),
        )
        .await;
    // The Prosody user's caps ask for alice's nickname; the core learns them across s2s (its
    // disco#info query goes to the user's client through Prosody) and verifies their hash.
    user.run(json!({"cmd": "pep_interest", "node": NICK})).await;
    alice
        .run(json!({"cmd": "pep_interest", "node": NICK}))
        .await;
    for c in [&mut alice, &mut user] {
        c.run(json!({"cmd": "roster_get"})).await;
        c.run(json!({"cmd": "presence"})).await;
    }
    // Subscribed both ways, by hand.
    user.run(json!({"cmd": "subscription", "to": alice_bare, "type": "subscribe"}))
        .await;
    alice
        .wait_for("the subscription request", |e| {
            e["event"] == "presence" && e["type"] == "subscribe" && from_bare(e) == user_bare
        })
        .await;
    alice
        .run(json!({"cmd": "subscription", "to": user_bare, "type": "subscribed"}))
        .await;
    alice
        .run(json!({"cmd": "subscription", "to": user_bare, "type": "subscribe"}))
        .await;
    user.wait_for("alice's request", |e| {
        e["event"] == "presence" && e["type"] == "subscribe" && from_bare(e) == alice_bare
    })
    .await;
    user.run(json!({"cmd": "subscription", "to": alice_bare, "type": "subscribed"}))
        .await;
    alice
        .wait_for("the user's presence", |e| {
            is_available(e) && from_bare(e) == user_bare
        })
        .await;
    let nick = "<nick xmlns='http://jabber.org/protocol/nick'>Alice</nick>";
    alice
        .command(json!({"cmd": "pep_publish", "node": NICK, "id": "current", "xml": nick, "tag": "nick"}))
        .await;
    let r = alice
        .wait_for("the publish", |e| e["event"] == "pep" && e["tag"] == "nick")
        .await;
    assert_eq!(r["type"], "result", "{r}");
    // Live, or as the last item once the user's caps were verified: it arrives over s2s.
    let e = user
        .wait_for("alice's nickname event", |e| {
            e["event"] == "pep_event" && e["node"] == NICK && e["kind"] == "publish"
        })
        .await;
    assert_eq!(e["from"].as_str(), Some(alice_bare.as_str()), "{e}");
    assert_eq!(e["items"], json!(["current"]), "{e}");
    // And the other way: Prosody's PEP notifies alice on the core, through fedgate's s2s (and
    // Prosody learned alice's caps with a query the core routed to her client).
    let nick = "<nick xmlns='http://jabber.org/protocol/nick'>Prosody user</nick>";
    user.command(
        json!({"cmd": "pep_publish", "node": NICK, "id": "current", "xml": nick, "tag": "pnick"}),
    )
    .await;
    let r = user
        .wait_for("the Prosody publish", |e| {
            e["event"] == "pep" && e["tag"] == "pnick"
        })
        .await;
    assert_eq!(r["type"], "result", "{r}");
    let e = alice
        .wait_for("the Prosody user's nickname event", |e| {
            e["event"] == "pep_event" && e["node"] == NICK && from_bare(e) == user_bare
        })
        .await;
    assert_eq!(e["kind"], "publish", "{e}");
    alice.quit().await;
    user.quit().await;
}

/// The result of a tagged MUC command (client.py's `muc_result`).
async fn muc(client: &mut crate::client::Client, mut cmd: Value, tag: &str) -> Value {
    cmd["tag"] = json!(tag);
    client.command(cmd).await;
    client
        .wait_for("the muc_result", |e| {
            e["event"] == "muc_result" && e["tag"] == tag
        })
        .await
}

/// `speaker` says `body` in `room`; `listener` sees it from `nick`.
async fn said(
    speaker: &mut crate::client::Client,
    listener: &mut crate::client::Client,
    room: &str,
    nick: &str,
    body: &str,
) {
    speaker
        .command(json!({"cmd": "muc_say", "room": room, "body": body}))
        .await;
    let m = listener
        .wait_for("the groupchat message", |e| {
            e["event"] == "groupchat" && e["room"] == room && e["body"] == body
        })
        .await;
    assert_eq!(m["nick"], nick, "{m}");
}

/// `creator` makes `room` (an instant room), `joiner` enters it and sees the creator among
/// the occupants, and each says something the other reads, each as its nick.
async fn meet_in_room(
    room: &str,
    (creator, creator_nick): (&mut crate::client::Client, &str),
    (joiner, joiner_nick): (&mut crate::client::Client, &str),
    what: &str,
) {
    let r = muc(
        creator,
        json!({"cmd": "muc_join", "room": room, "nick": creator_nick}),
        "create",
    )
    .await;
    assert_eq!(r["type"], "result", "creating {room}: {r}");
    let r = muc(
        creator,
        json!({"cmd": "muc_configure", "room": room, "fields": {}}),
        "configure",
    )
    .await;
    assert_eq!(r["type"], "result", "configuring {room}: {r}");
    let r = muc(
        joiner,
        json!({"cmd": "muc_join", "room": room, "nick": joiner_nick}),
        "join",
    )
    .await;
    assert_eq!(r["type"], "result", "joining {what}: {r}");
    let occupants = r["occupants"].as_array().unwrap();
    assert!(occupants.iter().any(|n| n == creator_nick), "{r}");
    said(
        creator,
        joiner,
        room,
        creator_nick,
        &format!("welcome from {creator_nick}"),
    )
    .await;
    said(
        joiner,
        creator,
        room,
        joiner_nick,
        &format!("hello from {joiner_nick}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prosody_user_joins_a_room_on_fedgate_and_a_core_account_one_on_prosody() {
    const MUC: &str = "conference.gw-muc.test";
    let w = CoreAndProsody::start_with("gw-muc.test", "pr-muc.test", Some(MUC)).await;
    let (gw, peer, gw_domain) = (&w.gw, &w.peer, w.gw_domain);
    let core = gw.gw().core.as_ref().expect("the embedded core runs");
    let mut alice = peer
        .login_muc(
            &format!("alice@{gw_domain}/core"),
            "alice-password",
            core.c2s_addrs[0],
        )
        .await;
    let mut user = peer
        .login_muc(
            &format!("{USER}@{}/interop", peer.domain),
            crate::peer::PASSWORD,
            peer.c2s_addr(),
        )
        .await;

    // A room on fedgate's service: Alice creates it, the Prosody user joins across s2s.
    let here = format!("lounge@{MUC}");
    let (creator, joiner) = ((&mut alice, "Alice"), (&mut user, "Pro"));
    meet_in_room(&here, creator, joiner, "fedgate's room from Prosody").await;
    // A room on Prosody's service: the Prosody user creates it, Alice joins from the core.
    let there = format!("cafe@{}", crate::peer::muc_domain(&peer.domain));
    let (creator, joiner) = ((&mut user, "Pro"), (&mut alice, "Alice"));
    meet_in_room(&there, creator, joiner, "Prosody's room from the core").await;

    // The room's traffic went over s2s between the chat service and Prosody.
    let m = gw.metrics().await;
    let sample = format!(
        "fedgate_peer_stanzas_total{{peer=\"{}\",direction=\"inbound\"}}",
        peer.domain
    );
    assert!(
        metric(&m, &sample) >= 2.0,
        "{sample}: {}",
        metric(&m, &sample)
    );
    alice.quit().await;
    user.quit().await;
}
