//! XEP-0191, driven without sockets.

use super::*;
use crate::core::testing::*;

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

#[test]
fn jid_matching_follows_xep_0016() {
    let full = jid("eve@b.test/phone");
    let bare = jid("eve@b.test");
    let other_res = jid("eve@b.test/laptop");
    let domain = jid("b.test");
    let domain_res = jid("b.test/r");
    let someone = jid("mallory@b.test");
    // user@domain/resource: that full JID only.
    assert!(matches(&full, &full));
    assert!(!matches(&full, &other_res) && !matches(&full, &bare));
    // user@domain: any resource of it, and the bare JID.
    assert!(matches(&bare, &full) && matches(&bare, &bare) && matches(&bare, &other_res));
    assert!(!matches(&bare, &someone) && !matches(&bare, &domain));
    // domain/resource: that JID only.
    assert!(matches(&domain_res, &domain_res));
    assert!(!matches(&domain_res, &domain) && !matches(&domain_res, &jid("eve@b.test/r")));
    // domain: everything at the domain.
    for j in [&full, &bare, &domain, &domain_res, &someone] {
        assert!(matches(&domain, j), "{j}");
    }
    assert!(!matches(&domain, &jid("eve@c.test")));
}

fn iq(id: &str, type_: &str, payload: &str) -> Element {
    client_el(&format!(
        "<iq from='alice@a.test/r' type='{type_}' id='{id}'>{payload}</iq>"
    ))
}

#[tokio::test]
async fn block_pushes_enforces_and_unblock_all_undoes() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob", "carol"]).await;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    let (alice2, _, mut alice2_rx) = session(&core, "alice@a.test/two", 16);
    let (_other, _, mut other_rx) = session(&core, "alice@a.test/uninterested", 16);
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/r", 16);
    // Both of alice's first resources ask for the blocklist: empty.
    for (s, rx) in [(&alice, &mut alice_rx), (&alice2, &mut alice2_rx)] {
        core.client_iq(s, iq("g", "get", "<blocklist xmlns='urn:xmpp:blocking'/>"))
            .await;
        let got = drain(rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("<blocklist xmlns='urn:xmpp:blocking'/>"),
            "{got:?}"
        );
    }
    // alice had sent directed presence to bob; blocking him sends unavailable.
    core.presence_outbound(&alice, client_el("<presence from='alice@a.test/r'/>"))
        .await;
    core.presence_outbound(
        &alice,
        client_el("<presence from='alice@a.test/r' to='bob@a.test'/>"),
    )
    .await;
    drain(&mut bob_rx);
    drain(&mut alice2_rx);
    drain(&mut other_rx);
    core.client_iq(
        &alice,
        iq(
            "b1",
            "set",
            "<block xmlns='urn:xmpp:blocking'><item jid='bob@a.test'/></block>",
        ),
    )
    .await;
    let got = drain(&mut alice_rx);
    assert!(
        got.iter().any(|s| s
            .contains("type='result' from='alice@a.test' to='alice@a.test/r' id='b1'")
            || (s.contains("id='b1'") && s.contains("type='result'"))),
        "{got:?}"
    );
    assert!(
        got.iter().any(
            |s| s.contains("<block xmlns='urn:xmpp:blocking'><item jid='bob@a.test'/></block>")
        ),
        "the pushes reach the requesting resource too: {got:?}"
    );
    let got2 = drain(&mut alice2_rx);
    assert_eq!(got2.len(), 1, "{got2:?}");
    assert!(
        got2[0].contains("type='set'") && got2[0].contains("<item jid='bob@a.test'/>"),
        "{got2:?}"
    );
    assert!(
        drain(&mut other_rx).is_empty(),
        "no push for a resource that never asked"
    );
    let got = drain(&mut bob_rx);
    assert!(
        got.iter().any(|s| s.starts_with("<presence")
            && s.contains("type='unavailable'")
            && s.contains("from='alice@a.test/r'")),
        "{got:?}"
    );
    // bob's message does not arrive; he gets service-unavailable (§3.3: not "blocked").
    core.route(client_el("<message from='bob@a.test/r' to='alice@a.test' type='chat' id='m1'><body>hi</body></message>")).await;
    assert!(drain(&mut alice_rx).is_empty());
    let back = drain(&mut bob_rx);
    assert_eq!(back.len(), 1, "{back:?}");
    assert!(
        back[0].contains("type='error'") && back[0].contains("<service-unavailable "),
        "{back:?}"
    );
    // An iq get too; his presence and iq results are dropped silently.
    core.route(client_el("<iq from='bob@a.test/r' to='alice@a.test' type='get' id='q1'><query xmlns='jabber:iq:version'/></iq>")).await;
    assert!(drain(&mut bob_rx)[0].contains("<service-unavailable "));
    core.route(client_el(
        "<presence from='bob@a.test/r' to='alice@a.test'/>",
    ))
    .await;
    core.route(client_el(
        "<iq from='bob@a.test/r' to='alice@a.test/r' type='result' id='q2'/>",
    ))
    .await;
    assert!(drain(&mut alice_rx).is_empty());
    assert!(drain(&mut bob_rx).is_empty());
    // alice's own message to bob is refused with not-acceptable + <blocked/>.
    let out = client_el("<message from='alice@a.test/r' to='bob@a.test/r' type='chat' id='m2'><body>x</body></message>");
    assert!(core.blocked_outbound(&alice, &out).await);
    let e = drain(&mut alice_rx);
    assert!(
        e[0].contains("<not-acceptable ")
            && e[0].contains("<blocked xmlns='urn:xmpp:blocking:errors'/>"),
        "{e:?}"
    );
    // Someone else is not affected.
    let ok = client_el("<message from='alice@a.test/r' to='carol@a.test' id='m3'/>");
    assert!(!core.blocked_outbound(&alice, &ok).await);
    // The blocklist get lists bob; unblock without items empties it, pushed as such.
    core.client_iq(
        &alice,
        iq("g2", "get", "<blocklist xmlns='urn:xmpp:blocking'/>"),
    )
    .await;
    assert!(drain(&mut alice_rx)[0].contains("<item jid='bob@a.test'/>"));
    core.client_iq(
        &alice,
        iq("u", "set", "<unblock xmlns='urn:xmpp:blocking'/>"),
    )
    .await;
    drain(&mut alice_rx);
    assert!(drain(&mut alice2_rx)[0].contains("<unblock xmlns='urn:xmpp:blocking'/>"));
    core.route(client_el("<message from='bob@a.test/r' to='alice@a.test' type='chat' id='m4'><body>hi</body></message>")).await;
    assert_eq!(ids(&drain(&mut alice_rx), "message"), ["m4"]);
    // Reloaded from the database, the list is empty too.
    core.blocklists.lists.lock().unwrap().clear();
    assert!(core.blocklist("alice@a.test").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_domain_block_covers_its_users_and_lists_are_bounded_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice"]).await;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    core.client_iq(
        &alice,
        iq(
            "b",
            "set",
            "<block xmlns='urn:xmpp:blocking'><item jid='spam.test'/></block>",
        ),
    )
    .await;
    drain(&mut alice_rx);
    assert!(core.blocks("alice@a.test", &jid("x@spam.test/r")).await);
    assert!(core.blocks("alice@a.test", &jid("spam.test")).await);
    assert!(!core.blocks("alice@a.test", &jid("x@ham.test")).await);
    // Blocking its own domain blocks its neighbours, not the account itself or its server.
    core.client_iq(
        &alice,
        iq(
            "b2",
            "set",
            "<block xmlns='urn:xmpp:blocking'><item jid='a.test'/></block>",
        ),
    )
    .await;
    drain(&mut alice_rx);
    for (to, refused) in [
        ("bob@a.test", true),
        ("alice@a.test", false),
        ("a.test", false),
    ] {
        let el = client_el(&format!("<iq from='alice@a.test/r' to='{to}' type='get' id='o'><ping xmlns='urn:xmpp:ping'/></iq>"));
        assert_eq!(core.blocked_outbound(&alice, &el).await, refused, "{to}");
    }
    drain(&mut alice_rx);
    // Stored: another core on the same database sees it.
    core.blocklists.lists.lock().unwrap().clear();
    assert!(core.blocks("alice@a.test", &jid("y@spam.test")).await);
    // An item without a valid jid, and a block without items: bad-request.
    for payload in [
        "<block xmlns='urn:xmpp:blocking'><item/></block>",
        "<block xmlns='urn:xmpp:blocking'><item jid='@@'/></block>",
        "<block xmlns='urn:xmpp:blocking'/>",
    ] {
        core.client_iq(&alice, iq("bad", "set", payload)).await;
        let got = drain(&mut alice_rx);
        assert!(got[0].contains("<bad-request "), "{payload}: {got:?}");
    }
}

#[tokio::test]
async fn the_quota_refuses_a_block_beyond_max_blocklist() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = test_core(dir.path(), &["alice"]).await;
    Arc::get_mut(&mut core).unwrap().config.max_blocklist = 2;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    core.client_iq(
        &alice,
        iq(
            "b",
            "set",
            "<block xmlns='urn:xmpp:blocking'><item jid='a@x.test'/><item jid='b@x.test'/></block>",
        ),
    )
    .await;
    assert!(drain(&mut alice_rx)[0].contains("type='result'"));
    core.client_iq(
        &alice,
        iq(
            "c",
            "set",
            "<block xmlns='urn:xmpp:blocking'><item jid='c@x.test'/></block>",
        ),
    )
    .await;
    let got = drain(&mut alice_rx);
    assert!(
        got[0].contains("<resource-constraint ") && got[0].contains("at most 2"),
        "{got:?}"
    );
    assert!(!core.blocks("alice@a.test", &jid("c@x.test")).await);
    core.blocklists.lists.lock().unwrap().clear();
    assert_eq!(core.blocklist("alice@a.test").await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_subscriber_sees_unavailable_when_blocked_and_the_presence_again_when_unblocked() {
    use crate::core::roster::{RosterItem, Subscription};
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let mut item = RosterItem::new("bob@a.test");
    item.state.sub = Subscription::From;
    core.storage
        .store_roster_item("alice@a.test", &item)
        .await
        .unwrap();
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/r", 16);
    core.presence_outbound(
        &alice,
        client_el("<presence from='alice@a.test/r'><show>away</show></presence>"),
    )
    .await;
    assert!(drain(&mut bob_rx)
        .iter()
        .any(|p| p.contains("<show>away</show>")));
    core.client_iq(
        &alice,
        iq(
            "b",
            "set",
            "<block xmlns='urn:xmpp:blocking'><item jid='bob@a.test'/></block>",
        ),
    )
    .await;
    let got = drain(&mut bob_rx);
    assert!(
        got.iter().any(|p| p.contains("type='unavailable'")),
        "{got:?}"
    );
    // While blocked, a new broadcast skips him.
    core.presence_outbound(
        &alice,
        client_el("<presence from='alice@a.test/r'><show>dnd</show></presence>"),
    )
    .await;
    assert!(drain(&mut bob_rx).is_empty());
    core.client_iq(
        &alice,
        iq("u", "set", "<unblock xmlns='urn:xmpp:blocking'/>"),
    )
    .await;
    let got = drain(&mut bob_rx);
    assert!(
        got.iter()
            .any(|p| p.starts_with("<presence") && p.contains("<show>dnd</show>")),
        "{got:?}"
    );
    drain(&mut alice_rx);
}

crate::core::storage::testing::on_both_databases! {
    /// A blocklist: adding twice keeps one, the limit refuses the whole addition, removal of
    /// some or all.
    fn blocklist_storage(db) {
        let jids = |j: &[&str]| j.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(add(db, "a@a.test", &jids(&["x@b.test", "y@b.test"]), 3).unwrap());
        assert!(add(db, "a@a.test", &jids(&["x@b.test"]), 3).unwrap());
        assert!(!add(db, "a@a.test", &jids(&["z@b.test", "w@b.test"]), 3).unwrap());
        assert_eq!(load(db, "a@a.test").unwrap(), ["x@b.test", "y@b.test"]);
        remove(db, "a@a.test", Some(&jids(&["x@b.test"]))).unwrap();
        assert_eq!(load(db, "a@a.test").unwrap(), ["y@b.test"]);
        remove(db, "a@a.test", None).unwrap();
        assert!(load(db, "a@a.test").unwrap().is_empty());
    }
}
