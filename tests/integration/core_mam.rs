//! `fedgate core` with slixmpp's XEP-0280 (carbons) and XEP-0313 (MAM) plugins: two resources
//! of one account, one gets a message and the other its carbon; a sent carbon; the archive
//! paged through from a fresh session, every message once and in order, before and after a
//! core restart.

use serde_json::{json, Value};

use crate::core::*;
use crate::harness::*;

/// The bodies and ids the archive query returned.
async fn archive(client: &mut Client, tag: &str, with: Option<&str>) -> Vec<Value> {
    let mut cmd = json!({"cmd": "mam", "tag": tag, "max": 2});
    if let Some(w) = with {
        cmd["with"] = json!(w);
    }
    client.command(cmd).await;
    let e = client.expect("mam", |e| e["tag"] == tag).await;
    e["messages"].as_array().unwrap().clone()
}

fn bodies(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carbons_reach_the_other_resource_and_the_archive_survives_a_restart() {
    let dns = TestDns::start().await;
    let mut n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let (mut alice, alice_jid) = sign_in(n.c2s(), "alice@a.test/home", "pa").await;
    alice.run(json!({"cmd": "presence"})).await;
    let (mut desk, desk_jid) = sign_in(n.c2s(), "bob@a.test/desk", "pb").await;
    let (mut phone, phone_jid) = sign_in(n.c2s(), "bob@a.test/phone", "pb").await;
    for c in [&mut desk, &mut phone] {
        c.run(json!({"cmd": "presence"})).await;
        c.run(json!({"cmd": "carbons", "enable": true})).await;
    }

    // alice writes to bob's desk: the desk gets it, the phone a received carbon.
    alice
        .run(json!({"cmd": "message", "to": desk_jid, "id": "c1", "body": "to the desk"}))
        .await;
    let m = desk.expect("message", |e| e["id"] == "c1").await;
    assert_eq!(m["from"], alice_jid.as_str());
    let carbon = phone.expect("carbon", |_| true).await;
    assert_eq!(carbon["direction"], "received");
    assert_eq!(carbon["from"], "bob@a.test");
    assert_eq!(carbon["msg_from"], alice_jid.as_str());
    assert_eq!(carbon["msg_to"], desk_jid.as_str());
    assert_eq!(carbon["body"], "to the desk");
    // The phone answers: alice gets it, the desk a sent carbon; the phone no copy of its own.
    phone
        .run(json!({"cmd": "message", "to": "alice@a.test", "id": "c2", "body": "from the phone"}))
        .await;
    alice.expect("message", |e| e["id"] == "c2").await;
    let carbon = desk.expect("carbon", |_| true).await;
    assert_eq!(carbon["direction"], "sent");
    assert_eq!(carbon["msg_from"], phone_jid.as_str());
    assert_eq!(carbon["msg_to"], "alice@a.test");
    assert_eq!(carbon["body"], "from the phone");
    phone
        .expect_none("carbon", std::time::Duration::from_millis(300), |_| true)
        .await;
    // Nor did the desk get a copy of what it received itself.
    desk.expect_none("carbon", std::time::Duration::from_millis(1), |e| {
        e["direction"] == "received"
    })
    .await;

    // More messages, to the bare JID: both resources get them, neither a carbon.
    for i in 0..5 {
        alice
            .run(json!({"cmd": "message", "to": "bob@a.test", "id": format!("n{i}"), "body": format!("n{i}")}))
            .await;
    }
    for c in [&mut desk, &mut phone] {
        c.expect("message", |e| e["id"] == "n4").await;
    }
    let expected = [
        "to the desk",
        "from the phone",
        "n0",
        "n1",
        "n2",
        "n3",
        "n4",
    ];
    // A fresh session pages through the archive, 2 at a time: every message once, in order.
    let (mut fresh, _) = sign_in(n.c2s(), "bob@a.test/fresh", "pb").await;
    let all = archive(&mut fresh, "all", None).await;
    assert_eq!(bodies(&all), expected);
    assert_eq!(all[1]["from"], phone_jid.as_str());
    let mut ids: Vec<&str> = all.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), expected.len());
    // alice's archive has her side: what she sent and what she got.
    let hers = archive(&mut alice, "hers", Some("bob@a.test")).await;
    assert_eq!(bodies(&hers), expected);

    // The archive survives a restart of the core.
    n.stop_core().await;
    for c in [alice, desk, phone, fresh] {
        drop(c);
    }
    n.start_core().await;
    let (mut again, _) = sign_in(n.c2s(), "bob@a.test/fresh", "pb").await;
    let after = archive(&mut again, "after-restart", None).await;
    assert_eq!(after, all);
    again.quit().await;
}

/// One query with this XEP-0059 set (see client.py's `mam_page`), as slixmpp reads it.
async fn page(client: &mut Client, tag: &str, mut rsm: Value) -> Value {
    rsm["cmd"] = json!("mam_page");
    rsm["tag"] = json!(tag);
    client.command(rsm).await;
    client.expect("mam_page", |e| e["tag"] == tag).await
}

/// What a page says: its bodies, `<first index/>`, `<count/>` and whether it is complete.
fn summary(p: &Value) -> (Vec<&str>, &Value, &Value, &Value) {
    let bodies = p["bodies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    (bodies, &p["first_index"], &p["count"], &p["complete"])
}

/// XEP-0059 through slixmpp's RSM stanzas: the count and the first item's index in every
/// answer, a page by `<index/>`, the last page by an empty `<before/>` and the one before it,
/// the count alone with `<max>0</max>`, and index with an id refused.
async fn rsm_count_and_index(n: Node) {
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let (mut alice, _) = sign_in(n.c2s(), "alice@a.test/home", "pa").await;
    let (mut bob, _) = sign_in(n.c2s(), "bob@a.test/desk", "pb").await;
    bob.run(json!({"cmd": "presence"})).await;
    for i in 0..7 {
        alice
            .run(json!({"cmd": "message", "to": "bob@a.test", "id": format!("p{i}"), "body": format!("p{i}")}))
            .await;
    }
    bob.expect("message", |e| e["id"] == "p6").await;

    let first = page(&mut bob, "first", json!({"max": 3})).await;
    assert_eq!(
        summary(&first),
        (
            vec!["p0", "p1", "p2"],
            &json!("0"),
            &json!("7"),
            &json!(false)
        )
    );
    let by_index = page(&mut bob, "index", json!({"max": 3, "index": 5})).await;
    assert_eq!(
        summary(&by_index),
        (vec!["p5", "p6"], &json!("5"), &json!("7"), &json!(true))
    );
    let last = page(&mut bob, "last", json!({"max": 3, "before": ""})).await;
    assert_eq!(
        summary(&last),
        (
            vec!["p4", "p5", "p6"],
            &json!("4"),
            &json!("7"),
            &json!(false)
        )
    );
    let before = page(
        &mut bob,
        "before",
        json!({"max": 3, "before": last["first"].clone()}),
    )
    .await;
    assert_eq!(
        summary(&before),
        (
            vec!["p1", "p2", "p3"],
            &json!("1"),
            &json!("7"),
            &json!(false)
        )
    );
    let count = page(&mut bob, "count", json!({"max": 0})).await;
    assert_eq!(
        summary(&count),
        (vec![], &Value::Null, &json!("7"), &json!(false))
    );
    let refused = page(
        &mut bob,
        "both",
        json!({"max": 3, "index": 1, "after": first["last"].clone()}),
    )
    .await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["condition"], "bad-request");
    assert!(refused["text"]
        .as_str()
        .is_some_and(|t| t.contains("index")));
    alice.quit().await;
    bob.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsm_counts_and_pages_by_index_on_sqlite() {
    let dns = TestDns::start().await;
    rsm_count_and_index(node(&dns, "a.test", &[]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsm_counts_and_pages_by_index_on_postgresql() {
    let pg = crate::postgres::Postgres::start();
    let url = pg.create_database("core");
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| {
        c.database = fedgate::core::config::Database::Postgres(url)
    })
    .await;
    rsm_count_and_index(n).await;
}
