//! XEP-0237, driven without sockets.

use crate::core::testing::*;

fn get(ver: Option<&str>) -> crate::xml::Element {
    let ver = ver.map(|v| format!(" ver='{v}'")).unwrap_or_default();
    client_el(&format!(
        "<iq from='alice@a.test/r' type='get' id='g'><query xmlns='jabber:iq:roster'{ver}/></iq>"
    ))
}

fn set(jid: &str) -> crate::xml::Element {
    client_el(&format!(
        "<iq from='alice@a.test/r' type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='{jid}'/></query></iq>"
    ))
}

#[tokio::test]
async fn the_current_ver_gets_an_empty_result_and_an_old_one_the_whole_roster() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice"]).await;
    let (alice, _, mut rx) = session(&core, "alice@a.test/r", 16);
    // Without ver: the roster as before versioning, no ver.
    core.client_iq(&alice, get(None)).await;
    assert_eq!(
        drain(&mut rx),
        ["<iq type='result' from='alice@a.test' to='alice@a.test/r' id='g'><query xmlns='jabber:iq:roster'/></iq>"]
    );
    // An empty ver: everything, with the version (0 before any change).
    core.client_iq(&alice, get(Some(""))).await;
    assert!(drain(&mut rx)[0].contains("<query xmlns='jabber:iq:roster' ver='0'/>"));
    // Each change bumps it and the push carries it.
    core.client_iq(&alice, set("bob@b.test")).await;
    let got = drain(&mut rx);
    assert!(
        got.iter()
            .any(|s| s.contains("type='set'") && s.contains("ver='1'") && s.contains("bob@b.test")),
        "{got:?}"
    );
    core.client_iq(&alice, set("carol@b.test")).await;
    let got = drain(&mut rx);
    assert!(
        got.iter()
            .any(|s| s.contains("ver='2'") && s.contains("carol@b.test")),
        "{got:?}"
    );
    // The current ver: an empty result, no query.
    core.client_iq(&alice, get(Some("2"))).await;
    assert_eq!(
        drain(&mut rx),
        ["<iq type='result' from='alice@a.test' to='alice@a.test/r' id='g'/>"]
    );
    // An older one: the whole roster with the current ver.
    core.client_iq(&alice, get(Some("1"))).await;
    let got = drain(&mut rx);
    assert!(
        got[0].contains("ver='2'")
            && got[0].contains("bob@b.test")
            && got[0].contains("carol@b.test"),
        "{got:?}"
    );
}

crate::core::storage::testing::on_both_databases! {
    /// A roster version starts at 0 and each bump returns the next.
    fn roster_version_storage(db) {
        use super::super::{bump, current};
        assert_eq!(current(db, "a@a.test").unwrap(), 0);
        assert_eq!(bump(db, "a@a.test").unwrap(), 1);
        assert_eq!(bump(db, "a@a.test").unwrap(), 2);
        assert_eq!(current(db, "a@a.test").unwrap(), 2);
        assert_eq!(current(db, "b@a.test").unwrap(), 0);
    }
}
