//! XEP-0012 (and XEP-0199 to accounts), driven without sockets.

use super::*;
use crate::core::roster::{RosterItem, Subscription};
use crate::core::testing::*;

async fn subscribe_from(core: &Core, owner: &str, contact: &str) {
    let mut item = RosterItem::new(contact);
    item.state.sub = Subscription::From;
    core.storage.store_roster_item(owner, &item).await.unwrap();
}

fn last_get(from: &str, to: &str, id: &str) -> Element {
    client_el(&format!(
        "<iq from='{from}' to='{to}' type='get' id='{id}'><query xmlns='jabber:iq:last'/></iq>"
    ))
}

#[tokio::test]
async fn last_activity_is_for_subscribers_zero_when_online_and_recorded_at_session_end() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob", "eve"]).await;
    subscribe_from(&core, "alice@a.test", "bob@a.test").await;
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/r", 16);
    let (_eve, _, mut eve_rx) = session(&core, "eve@a.test/r", 16);
    // Never signed in: nothing known.
    core.route(last_get("bob@a.test/r", "alice@a.test", "l0"))
        .await;
    assert!(drain(&mut bob_rx)[0].contains("<item-not-found "));
    // Online: seconds='0'.
    let (alice, _, alice_rx) = session(&core, "alice@a.test/r", 16);
    core.route(last_get("bob@a.test/r", "alice@a.test", "l1"))
        .await;
    let got = drain(&mut bob_rx);
    assert!(
        got[0].contains("type='result'") && got[0].contains("seconds='0'"),
        "{got:?}"
    );
    // eve has no subscription: forbidden, online or not.
    core.route(last_get("eve@a.test/r", "alice@a.test", "l2"))
        .await;
    assert!(drain(&mut eve_rx)[0].contains("<forbidden "));
    // alice leaves with a status; the session's end is recorded with it.
    core.presence_outbound(&alice, client_el("<presence from='alice@a.test/r' type='unavailable'><status>gone fishing</status></presence>")).await;
    core.session_ended(&alice, Some(alice_rx), Vec::new()).await;
    drain(&mut bob_rx);
    core.route(last_get("bob@a.test/r", "alice@a.test", "l3"))
        .await;
    let got = drain(&mut bob_rx);
    let r = client_el(&got[0]);
    let q = r.child("query", NS_LAST).unwrap();
    assert!(
        q.attr("seconds").unwrap().parse::<u64>().unwrap() < 5,
        "{got:?}"
    );
    assert_eq!(q.text(), "gone fishing");
    // The domain answers with its uptime.
    core.route(last_get("eve@a.test/r", "a.test", "u")).await;
    let got = drain(&mut eve_rx);
    assert!(
        got[0].contains("type='result'") && got[0].contains("seconds='"),
        "{got:?}"
    );
}

#[tokio::test]
async fn ping_to_an_accounts_bare_and_full_jid_is_answered_for_others_and_itself() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/r", 16);
    let ping = |from: &str, to: &str, id: &str| {
        client_el(&format!(
            "<iq from='{from}' to='{to}' type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
    };
    // From someone else, to the bare JID: the server answers for the account.
    core.route(ping("bob@a.test/r", "alice@a.test", "p1")).await;
    assert_eq!(
        drain(&mut bob_rx),
        ["<iq type='result' from='alice@a.test' to='bob@a.test/r' id='p1'/>"]
    );
    // To a full JID: the client's to answer; it reaches the session.
    core.route(ping("bob@a.test/r", "alice@a.test/r", "p2"))
        .await;
    assert!(drain(&mut alice_rx)[0].contains("id='p2'"));
    // The account itself, to its own bare JID.
    core.client_iq(&alice, ping("alice@a.test/r", "alice@a.test", "p3"))
        .await;
    assert_eq!(
        drain(&mut alice_rx),
        ["<iq type='result' from='alice@a.test' to='alice@a.test/r' id='p3'/>"]
    );
}

crate::core::storage::testing::on_both_databases! {
    /// Last activity is recorded for an existing account only, and replaced.
    fn last_activity_storage(db) {
        let c = crate::core::sasl::Credentials::derive("pw", 4096);
        crate::core::storage::create_account(db, "a", "a.test", &c).unwrap();
        record(db, "a@a.test", 100, Some("away")).unwrap();
        record(db, "a@a.test", 200, None).unwrap();
        record(db, "gone@a.test", 100, None).unwrap();
        assert_eq!(load(db, "a@a.test").unwrap(), Some((200, None)));
        assert_eq!(load(db, "gone@a.test").unwrap(), None);
    }
}
