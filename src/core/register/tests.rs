//! XEP-0077 for signed-in clients and the rules of registration, driven without sockets.

use super::*;
use crate::core::storage::testing::on_both_databases;
use crate::core::testing::*;

#[test]
fn the_rate_limit_counts_per_address_and_per_hour() {
    let limit = RateLimit::default();
    let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
    let t0 = Instant::now();
    assert!(limit.try_take(a, 2, t0));
    assert!(limit.try_take(a, 2, t0));
    assert!(!limit.try_take(a, 2, t0), "a third within the hour");
    assert!(
        limit.try_take(b, 2, t0),
        "another address has its own count"
    );
    assert!(
        limit.try_take(a, 2, t0 + Duration::from_secs(3600)),
        "an hour later"
    );
}

on_both_databases! {
    fn an_invitation_is_used_up_by_the_account_it_creates_and_kept_on_a_conflict(db) {
    let c = Credentials::derive("pw", 4096);
    create_invite(db, "t1", "a.test").unwrap();
    create_invite(db, "t2", "a.test").unwrap();
    assert!(
        !invite_exists(db, "t1", "b.test").unwrap(),
        "for its domain only"
    );
    assert_eq!(
        create(db, "new", "a.test", &c, Some("t1")).unwrap(),
        Created::Yes
    );
    assert!(!invite_exists(db, "t1", "a.test").unwrap());
    assert_eq!(
        create(db, "other", "a.test", &c, Some("t1")).unwrap(),
        Created::NoInvite
    );
    assert!(!storage::account_exists(db, "other", "a.test").unwrap());
    assert_eq!(
        create(db, "new", "a.test", &c, Some("t2")).unwrap(),
        Created::Exists
    );
    assert!(
        invite_exists(db, "t2", "a.test").unwrap(),
        "a conflict keeps the token"
    );
}
}

#[tokio::test]
async fn a_signed_in_client_changes_its_password_and_removes_its_account() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let (alice, _, mut rx) = session(&core, "alice@a.test/r", 16);
    let (_other, other_kick, _other_rx) = session(&core, "alice@a.test/other", 16);
    let set = |id: &str, q: &str| {
        client_el(&format!(
            "<iq from='alice@a.test/r' type='set' id='{id}'><query xmlns='jabber:iq:register'>{q}</query></iq>"
        ))
    };
    // Someone else's password: not allowed.
    core.client_iq(
        &alice,
        set("p0", "<username>bob</username><password>x</password>"),
    )
    .await;
    assert!(drain(&mut rx)[0].contains("<not-allowed "));
    core.client_iq(
        &alice,
        set(
            "p1",
            "<username>alice</username><password>new pw</password>",
        ),
    )
    .await;
    assert!(drain(&mut rx)[0].contains("type='result'"));
    let creds = core
        .storage
        .call(|c| storage::credentials(c, "alice", "a.test"))
        .await
        .unwrap()
        .unwrap();
    assert!(creds.verify_password("new pw") && !creds.verify_password("pw"));
    assert!(!other_kick.is_cancelled(), "the other sessions stay");
    // Removal: the result, then every session ends.
    core.client_iq(&alice, set("r", "<remove/>")).await;
    assert!(drain(&mut rx)[0].contains("type='result'"));
    tokio::time::timeout(Duration::from_secs(5), other_kick.cancelled())
        .await
        .unwrap();
    assert!(!core
        .storage
        .call(|c| storage::account_exists(c, "alice", "a.test"))
        .await
        .unwrap());
}
