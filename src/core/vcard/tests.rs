//! XEP-0054 and XEP-0153, driven without sockets.

use super::*;
use crate::core::testing::*;

/// "hello" in base64, with the line breaks vCards often have, and its SHA-1.
const PHOTO: &str = "aGVs\n  bG8=";
const PHOTO_SHA1: &str = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d";

#[test]
fn the_photo_hash_is_the_sha1_of_the_decoded_binval() {
    let v = client_el(&format!(
        "<vCard xmlns='vcard-temp'><FN>A</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{PHOTO}</BINVAL></PHOTO></vCard>"
    ));
    assert_eq!(photo_sha1(&v).as_deref(), Some(PHOTO_SHA1));
    assert_eq!(
        photo_sha1(&client_el("<vCard xmlns='vcard-temp'><FN>A</FN></vCard>")),
        None
    );
    // The client's own update element is replaced, not doubled.
    let p = client_el("<presence><x xmlns='vcard-temp:x:update'><photo>old</photo></x><status>s</status></presence>");
    let p = with_update(p, Some("new"));
    let text = String::from_utf8(p.to_bytes()).unwrap();
    assert_eq!(text.matches("vcard-temp:x:update").count(), 1, "{text}");
    assert!(
        text.contains("<photo>new</photo>") && text.contains("<status>s</status>"),
        "{text}"
    );
    let none = String::from_utf8(with_update(client_el("<presence/>"), None).to_bytes()).unwrap();
    assert!(none.contains("<photo/>"), "{none}");
}

#[tokio::test]
async fn a_vcard_is_set_by_its_owner_read_by_others_and_its_hash_goes_out_in_presence() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice", "bob"]).await;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    let (alice2, _, mut alice2_rx) = session(&core, "alice@a.test/two", 16);
    let (_bob, _, mut bob_rx) = session(&core, "bob@a.test/r", 16);
    // No vCard yet: an empty one, for bob as for alice.
    core.route(client_el("<iq from='bob@a.test/r' to='alice@a.test' type='get' id='g0'><vCard xmlns='vcard-temp'/></iq>")).await;
    let got = drain(&mut bob_rx);
    assert!(
        got[0].contains("type='result'") && got[0].contains("<vCard xmlns='vcard-temp'/>"),
        "{got:?}"
    );
    // alice2 is available; the hash in its presence starts empty.
    core.presence_outbound(&alice2, client_el("<presence from='alice@a.test/two'><x xmlns='vcard-temp:x:update'><photo>forged</photo></x></presence>")).await;
    let seen = drain(&mut alice_rx);
    assert!(
        seen.iter()
            .any(|p| p.contains("<photo/>") && !p.contains("forged")),
        "{seen:?}"
    );
    core.client_iq(&alice, client_el(&format!(
        "<iq from='alice@a.test/r' type='set' id='s1'><vCard xmlns='vcard-temp'><FN>Alice</FN><PHOTO><BINVAL>{PHOTO}</BINVAL></PHOTO></vCard></iq>"
    ))).await;
    let got = drain(&mut alice_rx);
    assert!(
        got.iter()
            .any(|s| s.contains("id='s1'") && s.contains("type='result'")),
        "{got:?}"
    );
    // alice2's presence goes out again with the new hash (here: to alice's other resource).
    assert!(
        got.iter()
            .any(|s| s.starts_with("<presence")
                && s.contains(&format!("<photo>{PHOTO_SHA1}</photo>"))),
        "{got:?}"
    );
    assert_eq!(
        alice2
            .presence()
            .last
            .as_ref()
            .map(|p| String::from_utf8(p.to_bytes())
                .unwrap()
                .contains(PHOTO_SHA1)),
        Some(true)
    );
    drain(&mut alice2_rx);
    // bob reads it back.
    core.route(client_el("<iq from='bob@a.test/r' to='alice@a.test' type='get' id='g1'><vCard xmlns='vcard-temp'/></iq>")).await;
    let got = drain(&mut bob_rx);
    assert!(
        got[0].contains("<FN>Alice</FN>") && got[0].contains("from='alice@a.test'"),
        "{got:?}"
    );
    // bob may not change it.
    core.route(client_el("<iq from='bob@a.test/r' to='alice@a.test' type='set' id='s2'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>")).await;
    assert!(drain(&mut bob_rx)[0].contains("<forbidden "));
    // A later presence of alice carries the hash as well.
    core.presence_outbound(&alice, client_el("<presence from='alice@a.test/r'/>"))
        .await;
    let got = drain(&mut alice2_rx);
    assert!(got.iter().any(|p| p.contains(PHOTO_SHA1)), "{got:?}");
    // Own get.
    core.client_iq(
        &alice,
        client_el("<iq from='alice@a.test/r' type='get' id='g2'><vCard xmlns='vcard-temp'/></iq>"),
    )
    .await;
    assert!(drain(&mut alice_rx)
        .iter()
        .any(|s| s.contains("id='g2'") && s.contains("<FN>Alice</FN>")));
}

#[tokio::test]
async fn a_vcard_over_max_vcard_bytes_is_not_acceptable() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = test_core(dir.path(), &["alice"]).await;
    Arc::get_mut(&mut core).unwrap().config.max_vcard_bytes = 100;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    let big = "x".repeat(200);
    core.client_iq(&alice, client_el(&format!(
        "<iq from='alice@a.test/r' type='set' id='s'><vCard xmlns='vcard-temp'><FN>{big}</FN></vCard></iq>"
    ))).await;
    let got = drain(&mut alice_rx);
    assert!(
        got[0].contains("<not-acceptable ") && got[0].contains("at most 100"),
        "{got:?}"
    );
}

crate::core::storage::testing::on_both_databases! {
    /// A vCard and its photo hash are stored, replaced and read back.
    fn vcard_storage(db) {
        assert_eq!(load(db, "a@a.test").unwrap(), None);
        store(db, "a@a.test", b"<vCard/>", Some("abc")).unwrap();
        store(db, "a@a.test", b"<vCard><FN>A</FN></vCard>", None).unwrap();
        assert_eq!(
            load(db, "a@a.test").unwrap().as_deref(),
            Some(&b"<vCard><FN>A</FN></vCard>"[..])
        );
        assert_eq!(photo_hash(db, "a@a.test").unwrap(), None);
    }
}

/// XEP-0398 §4: a client's own empty `<photo/>` (not ready to advertise an avatar) is left
/// alone, at its presence and when the vCard changes; a presence without one gets the hash.
#[tokio::test]
async fn an_empty_photo_from_the_client_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice"]).await;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 16);
    let (shy, _, _shy_rx) = session(&core, "alice@a.test/shy", 16);
    core.client_iq(&alice, client_el(&format!(
        "<iq from='alice@a.test/r' type='set' id='s1'><vCard xmlns='vcard-temp'><PHOTO><BINVAL>{PHOTO}</BINVAL></PHOTO></vCard></iq>"
    ))).await;
    drain(&mut alice_rx);
    core.presence_outbound(&shy, client_el("<presence from='alice@a.test/shy'><x xmlns='vcard-temp:x:update'><photo/></x></presence>")).await;
    let seen = drain(&mut alice_rx);
    let p = seen
        .iter()
        .find(|p| p.starts_with("<presence"))
        .expect("shy's presence");
    assert!(p.contains("<photo/>") && !p.contains(PHOTO_SHA1), "{p}");
    // A new photo: shy's presence is not sent again with it.
    core.client_iq(&alice, client_el(
        "<iq from='alice@a.test/r' type='set' id='s2'><vCard xmlns='vcard-temp'><PHOTO><BINVAL>d29ybGQ=</BINVAL></PHOTO></vCard></iq>"
    )).await;
    let seen = drain(&mut alice_rx);
    assert!(!seen.iter().any(|p| p.starts_with("<presence")), "{seen:?}");
    // Without the empty photo, the hash is stamped in.
    core.presence_outbound(&shy, client_el("<presence from='alice@a.test/shy'/>"))
        .await;
    let seen = drain(&mut alice_rx);
    let hash = photo_sha1(&client_el(
        "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>d29ybGQ=</BINVAL></PHOTO></vCard>",
    ))
    .unwrap();
    assert!(
        seen.iter()
            .any(|p| p.contains(&format!("<photo>{hash}</photo>"))),
        "{seen:?}"
    );
}
