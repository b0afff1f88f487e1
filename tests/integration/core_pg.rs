//! The core on a real PostgreSQL, with the real slixmpp client: the whole of a sign-in, a
//! roster subscription, presence, offline messages and the archive run on it, and the data is
//! there after the core restarts.

use std::time::Duration;

use serde_json::json;

use crate::certs::{ca, CertSpec};
use crate::core::*;
use crate::dns_server::TestDns;
use crate::postgres::Postgres;
use fedgate::core::storage::Db;

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

/// `sslmode=verify-full` with `sslrootcert`: the connection is TLS (the server takes no other
/// on TCP), the certificate is checked against that CA and not the Mozilla roots, and the whole
/// core (storage and the standby lock) runs over it.
#[tokio::test]
async fn the_core_reaches_postgresql_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca().issue(&CertSpec::for_names(&["localhost"]), dir.path(), "pg");
    let pg = Postgres::start_tls(&cert, &key);
    let base = pg.tls_url("core");
    let verified = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        ca().ca_file.display()
    );
    let (url, base2) = (verified.clone(), base.clone());
    tokio::task::spawn_blocking(move || {
        let db = Db::connect_postgres(&url).expect("TLS verified against the test CA");
        let sql = "SELECT CAST(ssl AS INTEGER) FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
        let rows = db.query(sql, &[]).unwrap();
        assert_eq!(rows[0].get::<_, i64>(0).unwrap(), 1, "the session is TLS");
        // The Mozilla roots do not know the test CA.
        let err = Db::connect_postgres(&format!("{base2}?sslmode=require"))
            .err()
            .expect("an unknown issuer is refused")
            .to_string();
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        // A CA file without TLS asked for is a mistake, said as such.
        let err = Db::connect_postgres(&format!("{base2}?sslrootcert={}", ca().ca_file.display()))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("sslmode=verify-full"), "{err}");
        // Plaintext is refused by this server.
        assert!(Db::connect_postgres(&format!("{base2}?sslmode=disable")).is_err());
    })
    .await
    .unwrap();

    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| {
        c.database = fedgate::core::config::Database::Postgres(verified)
    })
    .await;
    n.add_user("alice@a.test", "pa");
    let (alice, jid) = sign_in(n.c2s(), "alice@a.test/home", "pa").await;
    assert_eq!(jid, "alice@a.test/home");
    alice.quit().await;
}
