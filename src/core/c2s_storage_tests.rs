//! The core on a PostgreSQL that stops and starts again under it: sign-in gets
//! `<temporary-auth-failure/>`, a stanza that needed storage `internal-server-error` with a
//! text, the failures are counted, nothing panics, and once the server is back the same
//! requests succeed (the connection is opened again, with backoff).

use std::time::{Duration, Instant};

use super::*;
use crate::core::config::Database;
use crate::core::storage::testing::TestPostgres;
use crate::core::testing::*;

fn plain_auth(user: &str, password: &str) -> Element {
    let payload = B64.encode(format!("\0{user}\0{password}"));
    client_el(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
    ))
}

async fn sign_in(core: &Core) -> Result<(), SaslError> {
    plain(core, &plain_auth("alice", "pw"), "a.test", false)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_database_that_goes_down_fails_requests_cleanly_and_is_reconnected() {
    let server = TestPostgres::start();
    let url = server.create_database();
    let dir = tempfile::tempdir().unwrap();
    let core = test_core_with(dir.path(), &["alice", "bob"], |c| {
        c.database = Database::Postgres(url)
    })
    .await;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    assert!(
        sign_in(&core).await.is_ok(),
        "signs in while the database is up"
    );

    server.stop();
    // Sign-in: the credentials cannot be read, so "try again later", not "not authorized".
    let refused = sign_in(&core).await.unwrap_err();
    assert!(
        matches!(refused, SaslError::TemporaryFailure),
        "{refused:?}"
    );
    assert_eq!(refused.condition(), "temporary-auth-failure");
    // A stanza that needed storage: an error with a text, to its sender.
    core.client_iq(
        &alice,
        client_el("<iq from='alice@a.test/r' to='alice@a.test' type='get' id='v1'><vCard xmlns='vcard-temp'/></iq>"),
    )
    .await;
    // A message for bob, who is offline, cannot be stored: bounced, not lost silently.
    core.route(client_el(
        "<message from='alice@a.test/r' to='bob@a.test' id='m1'><body>hi</body></message>",
    ))
    .await;
    let got = drain(&mut alice_rx);
    for id in ["v1", "m1"] {
        let reply = got
            .iter()
            .find(|s| s.contains(&format!("id='{id}'")))
            .unwrap_or_else(|| panic!("no reply to {id}: {got:?}"));
        assert!(
            reply.contains("type='error'")
                && reply.contains("<internal-server-error")
                && reply.contains("<text"),
            "{reply}"
        );
    }
    let (unavailable, query) = core.storage.metrics().errors();
    assert!(unavailable >= 3, "every failure counted: {unavailable}");
    assert_eq!(query, 0, "no statement failed: the database was down");

    server.start_again();
    // The next attempt after the backoff (at most 5 s) connects again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while sign_in(&core).await.is_err() {
        assert!(Instant::now() < deadline, "not reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    core.route(client_el(
        "<message from='alice@a.test/r' to='bob@a.test' id='m2'><body>again</body></message>",
    ))
    .await;
    assert_eq!(offline(&core, "bob@a.test").await.len(), 1, "stored again");
}
