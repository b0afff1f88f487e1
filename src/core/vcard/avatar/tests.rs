//! XEP-0398 both ways, driven without sockets.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::*;
use crate::core::testing::*;
use crate::core::{Queued, SessionHandle};

/// "hello" in base64 and its SHA-1 (as in the vCard tests).
const IMAGE: &str = "aGVsbG8=";
const IMAGE_SHA1: &str = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d";

type Rx = mpsc::Receiver<Queued>;

/// An iq from the account's own client; what the session got back.
async fn own(core: &Core, s: &Arc<SessionHandle>, rx: &mut Rx, body: &str) -> Vec<String> {
    core.client_iq(s, client_el(&format!("<iq from='{}' {body}</iq>", s.jid)))
        .await;
    drain(rx)
}

fn publish(node: &str, id: &str, payload: &str) -> String {
    format!(
        "type='set' id='p-{id}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>\
         <publish node='{node}'><item id='{id}'>{payload}</item></publish></pubsub>"
    )
}

/// The stored vCard of alice, as a get returns it.
async fn vcard(core: &Core, s: &Arc<SessionHandle>, rx: &mut Rx) -> Element {
    let got = own(core, s, rx, "type='get' id='v'><vCard xmlns='vcard-temp'/>").await;
    let reply = got.iter().find(|g| g.contains("id='v'")).expect("a reply");
    client_el(reply)
        .child("vCard", NS_VCARD)
        .expect("a vCard")
        .clone()
}

/// The item ids and payloads of one of alice's nodes.
async fn node_items(core: &Core, node: &'static str) -> Vec<(String, String)> {
    core.storage
        .call(move |c| pep_store::items(c, "alice@a.test", node, None, &[]))
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.id, String::from_utf8(i.payload).unwrap()))
        .collect()
}

#[test]
fn metadata_names_the_first_image_without_a_url() {
    let m = |xml: &str| parse_metadata(&client_el(xml));
    assert_eq!(
        m("<metadata xmlns='urn:xmpp:avatar:metadata'><info id='EXT' url='https://x/y.png' type='image/png'/><info id='ABC' type='image/jpeg' bytes='3'/></metadata>"),
        Metadata::Image { id: "abc".into(), type_: "image/jpeg".into() }
    );
    assert_eq!(
        m("<metadata xmlns='urn:xmpp:avatar:metadata'/>"),
        Metadata::Disabled
    );
    assert_eq!(
        m("<metadata xmlns='urn:xmpp:avatar:metadata'><info id='e' url='https://x/y.png'/></metadata>"),
        Metadata::Unusable
    );
    assert_eq!(
        m("<nick xmlns='http://jabber.org/protocol/nick'/>"),
        Metadata::Unusable
    );
}

#[tokio::test]
async fn an_avatar_published_with_pep_becomes_the_vcard_photo() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice"]).await;
    let (alice, _, mut rx) = session(&core, "alice@a.test/r", 64);
    let (other, _, mut other_rx) = session(&core, "alice@a.test/two", 64);
    core.presence_outbound(&other, client_el("<presence from='alice@a.test/two'/>"))
        .await;
    own(
        &core,
        &alice,
        &mut rx,
        "type='set' id='s'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>",
    )
    .await;
    drain(&mut other_rx);
    // XEP-0084: the data first, then the metadata that points to it.
    own(
        &core,
        &alice,
        &mut rx,
        &publish(
            NS_AVATAR_DATA,
            IMAGE_SHA1,
            &format!("<data xmlns='urn:xmpp:avatar:data'>{IMAGE}</data>"),
        ),
    )
    .await;
    let got = own(&core, &alice, &mut rx, &publish(NS_AVATAR_METADATA, IMAGE_SHA1, &format!("<metadata xmlns='urn:xmpp:avatar:metadata'><info id='{IMAGE_SHA1}' bytes='5' type='image/jpeg'/></metadata>"))).await;
    assert!(
        got.iter()
            .any(|g| g.contains("id='p-") && g.contains("type='result'")),
        "{got:?}"
    );
    let v = vcard(&core, &alice, &mut rx).await;
    assert_eq!(
        v.child("FN", NS_VCARD).map(Element::text).as_deref(),
        Some("Alice")
    );
    let photo = v.child("PHOTO", NS_VCARD).expect("a PHOTO");
    assert_eq!(
        photo.child("TYPE", NS_VCARD).map(Element::text).as_deref(),
        Some("image/jpeg")
    );
    assert_eq!(
        photo
            .child("BINVAL", NS_VCARD)
            .map(Element::text)
            .as_deref(),
        Some(IMAGE)
    );
    // The XEP-0153 hash went out in presence at once (here: to alice's other resource).
    assert!(
        got.iter()
            .any(|p| p.starts_with("<presence")
                && p.contains(&format!("<photo>{IMAGE_SHA1}</photo>"))),
        "{got:?}"
    );
    // Metadata whose data does not hash to its id leaves the vCard as it is.
    own(
        &core,
        &alice,
        &mut rx,
        &publish(
            NS_AVATAR_DATA,
            "0000000000000000000000000000000000000000",
            &format!("<data xmlns='urn:xmpp:avatar:data'>{IMAGE}</data>"),
        ),
    )
    .await;
    own(&core, &alice, &mut rx, &publish(NS_AVATAR_METADATA, "bad", "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='0000000000000000000000000000000000000000' bytes='5' type='image/png'/></metadata>")).await;
    let v = vcard(&core, &alice, &mut rx).await;
    assert_eq!(photo_sha1(&v).as_deref(), Some(IMAGE_SHA1));
    // An empty metadata switches the avatar off: the PHOTO goes, the rest stays.
    own(
        &core,
        &alice,
        &mut rx,
        &publish(
            NS_AVATAR_METADATA,
            "off",
            "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
        ),
    )
    .await;
    let v = vcard(&core, &alice, &mut rx).await;
    assert!(
        v.child("PHOTO", NS_VCARD).is_none(),
        "{:?}",
        String::from_utf8(v.to_bytes())
    );
    assert_eq!(
        v.child("FN", NS_VCARD).map(Element::text).as_deref(),
        Some("Alice")
    );
}

#[tokio::test]
async fn a_vcard_photo_becomes_the_pep_avatar_and_the_feature_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core(dir.path(), &["alice"]).await;
    let (alice, _, mut rx) = session(&core, "alice@a.test/r", 64);
    let got = own(&core, &alice, &mut rx, "type='set' id='s'><vCard xmlns='vcard-temp'><FN>A</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>aGVs\n bG8=</BINVAL></PHOTO></vCard>").await;
    assert!(
        got.iter()
            .any(|g| g.contains("id='s'") && g.contains("type='result'")),
        "{got:?}"
    );
    // Data first (id: the SHA-1), then metadata with the vCard's type; the owner's resource
    // is notified of both.
    let data = node_items(&core, NS_AVATAR_DATA).await;
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].0, IMAGE_SHA1);
    assert!(data[0].1.contains(&format!(">{IMAGE}</data>")), "{data:?}");
    let meta = node_items(&core, NS_AVATAR_METADATA).await;
    assert_eq!(meta.len(), 1);
    assert_eq!(meta[0].0, IMAGE_SHA1);
    let info = client_el(&meta[0].1);
    let info = info.child("info", NS_AVATAR_METADATA).expect("an info");
    assert_eq!(info.attr("id"), Some(IMAGE_SHA1));
    assert_eq!(info.attr("bytes"), Some("5"));
    assert_eq!(info.attr("type"), Some("image/png"));
    let events: Vec<&String> = got.iter().filter(|g| g.contains("pubsub#event")).collect();
    assert_eq!(events.len(), 2, "{got:?}");
    assert!(events[0].contains(NS_AVATAR_DATA) && events[1].contains(NS_AVATAR_METADATA));
    // The same photo again publishes nothing new; removing it publishes an empty metadata.
    own(&core, &alice, &mut rx, "type='set' id='s2'><vCard xmlns='vcard-temp'><PHOTO><BINVAL>aGVsbG8=</BINVAL></PHOTO></vCard>").await;
    assert_eq!(node_items(&core, NS_AVATAR_METADATA).await, meta);
    own(
        &core,
        &alice,
        &mut rx,
        "type='set' id='s3'><vCard xmlns='vcard-temp'><FN>A</FN></vCard>",
    )
    .await;
    let meta = node_items(&core, NS_AVATAR_METADATA).await;
    assert_eq!(meta.len(), 1);
    assert!(!meta[0].1.contains("<info"), "{meta:?}");
    // disco#info on the account says the conversion happens (XEP-0398 §2).
    assert!(core
        .account_disco_info()
        .children()
        .any(|c| c.attr("var") == Some(NS_CONVERSION)));
}
