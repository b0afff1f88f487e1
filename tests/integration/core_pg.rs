//! The core on a real PostgreSQL, with the real slixmpp client: the whole of a sign-in, a
//! roster subscription, presence, offline messages and the archive run on it, and the data is
//! there after the core restarts.

use std::time::Duration;

use serde_json::json;

use crate::core::*;
use crate::dns_server::TestDns;
use crate::postgres::Postgres;

#[tokio::test]
async fn the_core_runs_on_postgresql_and_keeps_its_data_across_a_restart() {
    let pg = Postgres::start();
    let url = pg.create_database("core");
    let dns = TestDns::start().await;
    let mut n = node_with(&dns, "a.test", &[], |c| {
        c.database = fedgate::core::config::Database::Postgres(url)
    })
    .await;
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let (mut alice, alice_jid) = sign_in(n.c2s(), "alice@a.test/home", "pa").await;
    alice.run(json!({"cmd": "presence"})).await;
    for i in 0..3 {
        alice
            .run(json!({"cmd": "message", "to": "bob@a.test", "body": format!("m{i}")}))
            .await;
    }
    alice.subscription("bob@a.test", "subscribe").await;
    alice.quit().await;

    // A restart: what was stored is in PostgreSQL, not in the process.
    n.stop_core().await;
    n.start_core().await;
    let (mut bob, _) = sign_in(n.c2s(), "bob@a.test/desk", "pb").await;
    bob.run(json!({"cmd": "presence"})).await;
    for i in 0..3 {
        let m = bob.expect("message", |_| true).await;
        assert_eq!(m["body"], format!("m{i}"));
        assert_eq!(m["from"], alice_jid.as_str());
        assert_eq!(m["delay"], true);
    }
    // The subscription request waited too (a hidden roster entry), and is repeated.
    bob.presence_from("subscribe", "alice@a.test").await;
    bob.quit().await;
    // Delivered once: the next sign-in gets nothing.
    let (mut bob, _) = sign_in(n.c2s(), "bob@a.test/desk", "pb").await;
    bob.run(json!({"cmd": "presence"})).await;
    bob.expect_none("message", Duration::from_millis(500), |_| true)
        .await;
}
