//! XEP-0313 and XEP-0359 rules, driven without sockets ([`super::super::testing`]), and the
//! archive's storage functions on their own.

use std::sync::Arc;
use std::time::Duration;

use crate::core::storage::testing::on_both_databases;
use crate::core::storage::{Db, OptionalExtension};
use tokio::sync::mpsc;

use super::super::carbons::tests::send;
use super::super::testing::*;
use super::super::{Core, Queued, SessionHandle};
use super::store::*;
use super::*;
use crate::xml::ns;

async fn core(dir: &std::path::Path) -> Arc<Core> {
    test_core_with(dir, &["alice", "bob"], |c| c.session_queue = 128).await
}

/// One query's results (the forwarded messages, with their result ids) and its `<fin/>`.
struct Answer {
    ids: Vec<String>,
    messages: Vec<Element>,
    fin: Element,
}

impl Answer {
    fn bodies(&self) -> Vec<String> {
        self.messages
            .iter()
            .map(|m| {
                m.child("body", ns::CLIENT)
                    .map(Element::text)
                    .unwrap_or_default()
            })
            .collect()
    }

    fn complete(&self) -> bool {
        self.fin.attr("complete") == Some("true")
    }

    /// The `index` of `<first/>`.
    fn first_index(&self) -> Option<String> {
        self.fin
            .child("set", NS_RSM)
            .and_then(|s| s.child("first", NS_RSM))
            .and_then(|f| f.attr("index"))
            .map(str::to_owned)
    }

    fn rsm(&self, name: &str) -> Option<String> {
        self.fin
            .child("set", NS_RSM)
            .and_then(|s| s.child(name, NS_RSM))
            .map(Element::text)
    }
}

fn field(var: &str, values: &[&str]) -> String {
    let v: String = values
        .iter()
        .map(|v| format!("<value>{v}</value>"))
        .collect();
    format!("<field var='{var}'>{v}</field>")
}

/// Sends a query with these form fields and RSM elements; the error condition if it fails.
async fn query(
    core: &Core,
    s: &Arc<SessionHandle>,
    rx: &mut mpsc::Receiver<Queued>,
    fields: &[String],
    rsm: &str,
) -> Result<Answer, String> {
    let form = format!(
        "<x xmlns='jabber:x:data' type='submit'>{}{}</x>",
        field("FORM_TYPE", &[NS_MAM]),
        fields.concat()
    );
    let rsm = if rsm.is_empty() {
        String::new()
    } else {
        format!("<set xmlns='{NS_RSM}'>{rsm}</set>")
    };
    send(
        core,
        s,
        &format!(
            "<iq type='set' id='q'><query xmlns='{NS_MAM}' queryid='qid'>{form}{rsm}</query></iq>"
        ),
    )
    .await;
    let got = drain(rx);
    let (last, results) = got.split_last().expect("an answer");
    let iq = client_el(last);
    assert_eq!(iq.attr("id"), Some("q"), "{got:?}");
    if iq.attr("type") == Some("error") {
        let e = iq.child("error", ns::CLIENT).expect("error");
        return Err(e.children().next().unwrap().name.clone());
    }
    let mut answer = Answer {
        ids: Vec::new(),
        messages: Vec::new(),
        fin: iq.child("fin", NS_MAM).expect("fin").clone(),
    };
    for r in results {
        let m = client_el(r);
        assert_eq!(m.attr("to"), Some(s.jid.to_string().as_str()));
        let result = m.child("result", NS_MAM).expect("result");
        assert_eq!(result.attr("queryid"), Some("qid"));
        let fwd = result.child("forwarded", "urn:xmpp:forward:0").unwrap();
        assert!(fwd
            .child("delay", "urn:xmpp:delay")
            .unwrap()
            .attr("stamp")
            .is_some());
        answer.ids.push(result.attr("id").unwrap().to_owned());
        answer
            .messages
            .push(fwd.child("message", ns::CLIENT).unwrap().clone());
    }
    Ok(answer)
}

/// `n` chat messages from alice to bob, bodies `{prefix}0..`.
async fn chat(core: &Core, alice: &Arc<SessionHandle>, to: &str, prefix: &str, n: usize) {
    for i in 0..n {
        send(
            core,
            alice,
            &format!("<message to='{to}' type='chat' id='{prefix}{i}'><body>{prefix}{i}</body></message>"),
        )
        .await;
    }
}

#[tokio::test]
async fn both_sides_are_archived_and_the_recipient_gets_a_stanza_id() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path()).await;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 128);
    let (bob, _, mut bob_rx) = session(&core, "bob@a.test/a", 128);
    chat(&core, &alice, "bob@a.test", "m", 2).await;
    // Not archived: a headline, a normal message without a body, a no-store hint.
    for raw in [
        "<message to='bob@a.test' type='headline'><body>h</body></message>",
        "<message to='bob@a.test'><subject>s</subject></message>",
        "<message to='bob@a.test' type='chat'><body>n</body><no-store xmlns='urn:xmpp:hints'/></message>",
    ] {
        send(&core, &alice, raw).await;
    }
    let got = drain(&mut bob_rx);
    assert_eq!(got.len(), 5, "{got:?}");
    let m0 = client_el(&got[0]);
    let sid = m0.child("stanza-id", NS_SID).expect("stanza-id");
    assert_eq!(sid.attr("by"), Some("bob@a.test"));
    assert!(client_el(&got[4]).child("stanza-id", NS_SID).is_none());
    // bob's archive: the incoming ones, with the stanza-ids he was given.
    let a = query(&core, &bob, &mut bob_rx, &[], "").await.unwrap();
    assert_eq!(a.bodies(), ["m0", "m1"]);
    assert_eq!(a.ids[0], sid.attr("id").unwrap());
    assert!(a.complete());
    assert_eq!(a.messages[0].attr("from"), Some("alice@a.test/r"));
    // alice's: the outgoing ones.
    let a = query(&core, &alice, &mut alice_rx, &[], "").await.unwrap();
    assert_eq!(a.bodies(), ["m0", "m1"]);
    assert_eq!(a.messages[1].attr("to"), Some("bob@a.test"));
    // Stored offline: archived at that point, stanza-id included in the stored copy.
    core.unregister(&bob);
    chat(&core, &alice, "bob@a.test", "off", 1).await;
    let stored = offline(&core, "bob@a.test").await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].contains("urn:xmpp:sid:0"), "{stored:?}");
    let (bob2, _, mut bob2_rx) = session(&core, "bob@a.test/b", 128);
    let a = query(&core, &bob2, &mut bob2_rx, &[], "").await.unwrap();
    assert_eq!(a.bodies(), ["m0", "m1", "off0"]);
}

#[tokio::test]
async fn a_stanza_id_claiming_to_be_ours_is_removed_unless_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path()).await;
    let (alice, _, _alice_rx) = session(&core, "alice@a.test/r", 128);
    let (bob, _, mut bob_rx) = session(&core, "bob@a.test/a", 128);
    send(
        &core,
        &alice,
        "<message to='bob@a.test' type='chat' id='x'><body>x</body><stanza-id xmlns='urn:xmpp:sid:0' by='bob@a.test' id='forged'/><stanza-id xmlns='urn:xmpp:sid:0' by='alice@a.test' id='hers'/></message>",
    )
    .await;
    let got = drain(&mut bob_rx);
    let m = client_el(&got[0]);
    let sids: Vec<(String, String)> = m
        .children()
        .filter(|c| c.name == "stanza-id" && c.ns == NS_SID)
        .map(|c| (c.attr("by").unwrap().into(), c.attr("id").unwrap().into()))
        .collect();
    // Someone else's stays; the forged one is gone; ours was added.
    assert_eq!(sids.len(), 2, "{sids:?}");
    assert_eq!(sids[0], ("alice@a.test".into(), "hers".into()));
    assert_eq!(sids[1].0, "bob@a.test");
    assert_ne!(sids[1].1, "forged");
    // A real id of bob's archive forged onto a new message is removed too... unless the
    // message is the archived one itself (re-delivered): then it is kept and not archived
    // again.
    let real = sids[1].1.clone();
    core.route(m.clone()).await;
    let again = client_el(&drain(&mut bob_rx)[0]);
    let kept: Vec<_> = again
        .children()
        .filter(|c| c.name == "stanza-id" && c.attr("by") == Some("bob@a.test"))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].attr("id"), Some(real.as_str()));
    let a = query(&core, &bob, &mut bob_rx, &[], "").await.unwrap();
    assert_eq!(a.bodies(), ["x"], "archived once");
}

#[tokio::test]
async fn filters_with_start_end_ids_and_unknown_ids() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path()).await;
    let (alice, _, mut alice_rx) = session(&core, "alice@a.test/r", 128);
    let (alice2, _, _alice2_rx) = session(&core, "alice@a.test/phone", 128);
    let (bob, _, mut bob_rx) = session(&core, "bob@a.test/a", 128);
    chat(&core, &alice, "bob@a.test", "r", 2).await;
    chat(&core, &alice2, "bob@a.test", "p", 2).await;
    // bob writes to someone else too (outgoing: with = the recipient).
    send(
        &core,
        &bob,
        "<message to='carol@b.test' type='chat'><body>c</body></message>",
    )
    .await;
    drain(&mut bob_rx);
    let all = query(&core, &bob, &mut bob_rx, &[], "").await.unwrap();
    assert_eq!(all.bodies(), ["r0", "r1", "p0", "p1", "c"]);
    // with: a bare JID matches every resource; a full JID only itself.
    let a = query(
        &core,
        &bob,
        &mut bob_rx,
        &[field("with", &["alice@a.test"])],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.bodies(), ["r0", "r1", "p0", "p1"]);
    let a = query(
        &core,
        &bob,
        &mut bob_rx,
        &[field("with", &["alice@a.test/phone"])],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.bodies(), ["p0", "p1"]);
    let a = query(
        &core,
        &bob,
        &mut bob_rx,
        &[field("with", &["carol@b.test"])],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.bodies(), ["c"]);
    // start/end: by archive time (all of these are within this second).
    let future = "2999-01-01T00:00:00Z";
    let past = "2000-01-01T00:00:00+02:00";
    let a = query(&core, &bob, &mut bob_rx, &[field("start", &[future])], "")
        .await
        .unwrap();
    assert!(a.messages.is_empty());
    let a = query(&core, &bob, &mut bob_rx, &[field("end", &[past])], "")
        .await
        .unwrap();
    assert!(a.messages.is_empty());
    let a = query(
        &core,
        &bob,
        &mut bob_rx,
        &[field("start", &[past]), field("end", &[future])],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.messages.len(), 5);
    assert_eq!(
        query(
            &core,
            &bob,
            &mut bob_rx,
            &[field("start", &["yesterday"])],
            ""
        )
        .await
        .err(),
        Some("bad-request".into())
    );
    // after-id / before-id (#extended).
    let a = query(
        &core,
        &bob,
        &mut bob_rx,
        &[field("after-id", &[&all.ids[1]])],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.bodies(), ["p0", "p1", "c"]);
    let a = query(
        &core,
        &bob,
        &mut bob_rx,
        &[
            field("after-id", &[&all.ids[0]]),
            field("before-id", &[&all.ids[3]]),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.bodies(), ["r1", "p0"]);
    // ids: exactly those.
    let a = query(
        &core,
        &bob,
        &mut bob_rx,
        &[field("ids", &[&all.ids[4], &all.ids[0]])],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.bodies(), ["r0", "c"]);
    // Ids that are not there are left out: alone, they match nothing (not everything).
    let unknown_id = ArchiveId { key: 5, nonce: 7 }.to_string();
    let a = query(
        &core,
        &bob,
        &mut bob_rx,
        &[field("ids", &[&unknown_id, "junk"])],
        "",
    )
    .await
    .unwrap();
    assert!(a.messages.is_empty() && a.complete());
    // An id that is not in the archive: item-not-found, for the form and for RSM alike.
    let unknown = ArchiveId { key: 5, nonce: 7 }.to_string();
    for (fields, rsm) in [
        (vec![field("after-id", &[&unknown])], String::new()),
        (vec![field("before-id", &["nonsense"])], String::new()),
        (vec![], format!("<after>{unknown}</after>")),
        (vec![], format!("<before>{unknown}</before>")),
    ] {
        assert_eq!(
            query(&core, &bob, &mut bob_rx, &fields, &rsm).await.err(),
            Some("item-not-found".into()),
            "{fields:?} {rsm}"
        );
    }
    // Someone else's id is unknown here too: alice's archive entry is not bob's.
    let hers = query(&core, &alice, &mut alice_rx, &[], "").await.unwrap();
    assert_eq!(
        query(
            &core,
            &bob,
            &mut bob_rx,
            &[field("after-id", &[&hers.ids[0]])],
            ""
        )
        .await
        .err(),
        Some("item-not-found".into())
    );
    // An unknown field is refused.
    assert_eq!(
        query(&core, &bob, &mut bob_rx, &[field("colour", &["red"])], "")
            .await
            .err(),
        Some("bad-request".into())
    );
}

#[tokio::test]
async fn rsm_pages_forwards_and_backwards_with_complete_flags() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path()).await;
    let (alice, _, _alice_rx) = session(&core, "alice@a.test/r", 128);
    let (bob, _, mut bob_rx) = session(&core, "bob@a.test/a", 128);
    chat(&core, &alice, "bob@a.test", "", 7).await;
    drain(&mut bob_rx);
    // Forwards, 3 at a time: 0-2, 3-5, 6 (complete).
    let p1 = query(&core, &bob, &mut bob_rx, &[], "<max>3</max>")
        .await
        .unwrap();
    assert_eq!(p1.bodies(), ["0", "1", "2"]);
    assert!(!p1.complete());
    assert_eq!(p1.rsm("first").as_deref(), Some(p1.ids[0].as_str()));
    assert_eq!(p1.rsm("last").as_deref(), Some(p1.ids[2].as_str()));
    let after = |id: &str| format!("<max>3</max><after>{id}</after>");
    let p2 = query(&core, &bob, &mut bob_rx, &[], &after(&p1.ids[2]))
        .await
        .unwrap();
    assert_eq!(p2.bodies(), ["3", "4", "5"]);
    assert!(!p2.complete());
    let p3 = query(&core, &bob, &mut bob_rx, &[], &after(&p2.ids[2]))
        .await
        .unwrap();
    assert_eq!(p3.bodies(), ["6"]);
    assert!(p3.complete());
    // Past the end: an empty, complete page without first/last.
    let p4 = query(&core, &bob, &mut bob_rx, &[], &after(&p3.ids[0]))
        .await
        .unwrap();
    assert!(p4.messages.is_empty() && p4.complete());
    assert_eq!(p4.rsm("first"), None);
    // Backwards: an empty <before/> is the last page, in order; then pages before it.
    let b1 = query(&core, &bob, &mut bob_rx, &[], "<max>3</max><before/>")
        .await
        .unwrap();
    assert_eq!(b1.bodies(), ["4", "5", "6"]);
    assert!(!b1.complete());
    let before = |id: &str| format!("<max>3</max><before>{id}</before>");
    let b2 = query(&core, &bob, &mut bob_rx, &[], &before(&b1.ids[0]))
        .await
        .unwrap();
    assert_eq!(b2.bodies(), ["1", "2", "3"]);
    assert!(!b2.complete());
    let b3 = query(&core, &bob, &mut bob_rx, &[], &before(&b2.ids[0]))
        .await
        .unwrap();
    assert_eq!(b3.bodies(), ["0"]);
    assert!(b3.complete());
    // XEP-0059 §2.1: every answer counts the result set and places its first item in it.
    for (page, index) in [
        (&p1, "0"),
        (&p2, "3"),
        (&p3, "6"),
        (&b1, "4"),
        (&b2, "1"),
        (&b3, "0"),
    ] {
        assert_eq!(page.rsm("count").as_deref(), Some("7"));
        assert_eq!(page.first_index().as_deref(), Some(index));
    }
    assert_eq!(
        (p4.rsm("count").as_deref(), p4.first_index()),
        (Some("7"), None)
    );
    // §2.5: a page by index; §2.6: <max>0</max> for the count alone.
    let i = query(
        &core,
        &bob,
        &mut bob_rx,
        &[],
        "<max>2</max><index>5</index>",
    )
    .await
    .unwrap();
    assert_eq!(i.bodies(), ["5", "6"]);
    assert!(i.complete());
    assert_eq!(i.first_index().as_deref(), Some("5"));
    let c = query(&core, &bob, &mut bob_rx, &[], "<max>0</max>")
        .await
        .unwrap();
    assert!(c.messages.is_empty());
    assert_eq!(c.rsm("count").as_deref(), Some("7"));
    // Index and an id together are ambiguous; an index must be a number.
    for rsm in [
        format!("<index>1</index><after>{}</after>", p1.ids[0]),
        "<index>1</index><before/>".to_owned(),
        "<index>first</index>".to_owned(),
    ] {
        assert_eq!(
            query(&core, &bob, &mut bob_rx, &[], &rsm).await.err(),
            Some("bad-request".into()),
            "{rsm}"
        );
    }
    // Exactly a page left is complete too.
    let e = query(&core, &bob, &mut bob_rx, &[], "<max>7</max>")
        .await
        .unwrap();
    assert!(e.complete());
    // Without <max/>, the default page; a larger max is cut to what the session's queue
    // holds (half of 128 here).
    let big = query(&core, &bob, &mut bob_rx, &[], "<max>100000</max>")
        .await
        .unwrap();
    assert_eq!(big.messages.len(), 7);
    // Ids sort like the archive order (time-ordered).
    let mut sorted = e.ids.clone();
    sorted.sort();
    assert_eq!(sorted, e.ids);
}

#[tokio::test]
async fn the_form_and_the_account_features() {
    let dir = tempfile::tempdir().unwrap();
    let core = core(dir.path()).await;
    let (bob, _, mut bob_rx) = session(&core, "bob@a.test/a", 128);
    send(
        &core,
        &bob,
        &format!("<iq type='get' id='f'><query xmlns='{NS_MAM}'/></iq>"),
    )
    .await;
    let got = drain(&mut bob_rx);
    let x = client_el(&got[0]);
    let form = x
        .child("query", NS_MAM)
        .and_then(|q| q.child("x", "jabber:x:data"))
        .expect("a form");
    let vars: Vec<&str> = form.children().filter_map(|f| f.attr("var")).collect();
    assert_eq!(
        vars,
        [
            "FORM_TYPE",
            "with",
            "start",
            "end",
            "before-id",
            "after-id",
            "ids"
        ]
    );
    let info = core.account_disco_info();
    for f in [NS_MAM, NS_MAM_EXTENDED, NS_SID] {
        assert!(info.children().any(|c| c.attr("var") == Some(f)), "{f}");
    }
}

async fn set_prefs_iq(
    core: &Core,
    s: &Arc<SessionHandle>,
    rx: &mut mpsc::Receiver<Queued>,
    default: &str,
    always: &[&str],
    never: &[&str],
) -> Element {
    let list = |l: &[&str]| {
        l.iter()
            .map(|j| format!("<jid>{j}</jid>"))
            .collect::<String>()
    };
    send(
        core,
        s,
        &format!(
            "<iq type='set' id='p'><prefs xmlns='{NS_MAM}' default='{default}'><always>{}</always><never>{}</never></prefs></iq>",
            list(always),
            list(never)
        ),
    )
    .await;
    client_el(&drain(rx)[0])
}

#[tokio::test]
async fn preferences_never_always_and_roster() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core_with(dir.path(), &["alice", "bob", "carol"], |c| {
        c.session_queue = 128
    })
    .await;
    let (alice, _, _alice_rx) = session(&core, "alice@a.test/r", 128);
    let (carol, _, _carol_rx) = session(&core, "carol@a.test/r", 128);
    let (bob, _, mut bob_rx) = session(&core, "bob@a.test/a", 128);
    // The default, before anything is set: always.
    send(
        &core,
        &bob,
        &format!("<iq type='get' id='g'><prefs xmlns='{NS_MAM}'/></iq>"),
    )
    .await;
    let p = client_el(&drain(&mut bob_rx)[0]);
    assert_eq!(
        p.child("prefs", NS_MAM).unwrap().attr("default"),
        Some("always")
    );
    // never, with alice always: only alice's message is archived.
    let r = set_prefs_iq(&core, &bob, &mut bob_rx, "never", &["alice@a.test"], &[]).await;
    let stored = r.child("prefs", NS_MAM).expect("the stored prefs");
    assert_eq!(stored.attr("default"), Some("never"));
    assert_eq!(
        stored
            .child("always", NS_MAM)
            .unwrap()
            .children()
            .next()
            .unwrap()
            .text(),
        "alice@a.test"
    );
    chat(&core, &alice, "bob@a.test", "a", 1).await;
    chat(&core, &carol, "bob@a.test", "c", 1).await;
    drain(&mut bob_rx);
    let a = query(&core, &bob, &mut bob_rx, &[], "").await.unwrap();
    assert_eq!(a.bodies(), ["a0"]);
    // always, with carol never: carol's is not archived, and her message has no stanza-id.
    set_prefs_iq(&core, &bob, &mut bob_rx, "always", &[], &["carol@a.test"]).await;
    chat(&core, &alice, "bob@a.test", "a", 2).await;
    chat(&core, &carol, "bob@a.test", "c", 2).await;
    let got = drain(&mut bob_rx);
    assert!(!got.last().unwrap().contains("stanza-id"), "{got:?}");
    let a = query(&core, &bob, &mut bob_rx, &[], "").await.unwrap();
    assert_eq!(a.bodies(), ["a0", "a0", "a1"]);
    // roster: only contacts in bob's roster; outgoing messages too.
    set_prefs_iq(&core, &bob, &mut bob_rx, "roster", &[], &[]).await;
    core.storage
        .store_roster_item(
            "bob@a.test",
            &super::super::roster::RosterItem::new("alice@a.test"),
        )
        .await
        .unwrap();
    chat(&core, &alice, "bob@a.test", "r", 1).await;
    chat(&core, &carol, "bob@a.test", "r", 1).await;
    chat(&core, &bob, "carol@a.test", "out", 1).await;
    chat(&core, &bob, "alice@a.test", "out", 1).await;
    drain(&mut bob_rx);
    let a = query(
        &core,
        &bob,
        &mut bob_rx,
        &[field("after-id", &[&a.ids[2]])],
        "",
    )
    .await
    .unwrap();
    assert_eq!(a.bodies(), ["r0", "out0"]);
    assert_eq!(a.messages[1].attr("to"), Some("alice@a.test"));
    // A bad default is refused.
    let r = set_prefs_iq(&core, &bob, &mut bob_rx, "sometimes", &[], &[]).await;
    assert_eq!(r.attr("type"), Some("error"));
}

fn put(c: &Db, limits: &ArchiveLimits, at_ms: i64, body: &str) -> ArchiveId {
    let stanza = format!("<message xmlns='jabber:client'><body>{body}</body></message>");
    archive(
        c,
        &NewMessage {
            owner: "bob@a.test",
            with_bare: "alice@a.test",
            with_full: "alice@a.test/r",
            stanza: stanza.as_bytes(),
        },
        limits,
        at_ms,
    )
    .unwrap()
    .unwrap()
}

fn all(c: &Db, oldest_key: i64) -> Vec<String> {
    let q = Query {
        max: 100,
        ..Query::default()
    };
    store::query(c, "bob@a.test", &q, oldest_key)
        .unwrap()
        .items
        .into_iter()
        .map(|a| String::from_utf8(a.stanza).unwrap())
        .map(|s| s[s.find("<body>").unwrap() + 6..s.find("</body>").unwrap()].to_owned())
        .collect()
}

on_both_databases! {
    fn retention_deletes_expired_messages_at_the_next_insert_and_hides_them_before(c) {
    let limits = ArchiveLimits {
        retention: Duration::from_secs(10),
        max_messages: 1000,
    };
    let t0 = 1_700_000_000_000;
    put(c, &limits, t0, "old1");
    put(c, &limits, t0 + 1, "old2");
    put(c, &limits, t0 + 5_000, "recent");
    // 12 s later: the first two have expired; a query no longer returns them...
    let now = t0 + 12_000;
    assert_eq!(all(c, key_at(now - 10_000)), ["recent"]);
    let rows = |c: &Db| -> i64 {
        c.query_row("SELECT COUNT(*) FROM archive", &[], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(rows(c), 3);
    // ...and the next insert deletes them.
    put(c, &limits, now, "new");
    assert_eq!(rows(c), 2);
    assert_eq!(all(c, 0), ["recent", "new"]);
}
}

on_both_databases! {
    fn the_size_limit_drops_the_oldest_and_keys_stay_increasing(c) {
    let limits = ArchiveLimits {
        retention: Duration::from_secs(1_000_000),
        max_messages: 3,
    };
    let t0 = 1_700_000_000_000;
    let mut ids = Vec::new();
    for i in 0..5 {
        // The same millisecond, and then a clock that steps back: keys still increase.
        let at = if i < 4 { t0 } else { t0 - 1000 };
        ids.push(put(c, &limits, at, &format!("m{i}")));
    }
    assert!(ids.windows(2).all(|w| w[0].key < w[1].key), "{ids:?}");
    assert_eq!(all(c, 0), ["m2", "m3", "m4"]);
    let count: i64 = c.query_row(
            "SELECT messages FROM archive_owners WHERE owner = 'bob@a.test'",
            &[],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(count, 3);
    // Ids read back as they were written; garbage is no id.
    assert_eq!(ArchiveId::parse(&ids[0].to_string()), Some(ids[0]));
    assert_eq!(ArchiveId::parse("xyz"), None);
    // A dropped message is no longer there for an id lookup.
    assert!(!exists(c, "bob@a.test", ids[0]).unwrap());
    assert!(exists(c, "bob@a.test", ids[4]).unwrap());
    // The right key with the wrong nonce is not it.
    let guessed = ArchiveId {
        key: ids[4].key,
        nonce: ids[4].nonce ^ 1,
    };
    assert!(!exists(c, "bob@a.test", guessed).unwrap());
}
}

#[test]
fn datetimes_of_xep_0082() {
    assert_eq!(parse_datetime("1970-01-01T00:00:01Z"), Some(1000));
    assert_eq!(parse_datetime("1970-01-01T00:00:01.250Z"), Some(1250));
    assert_eq!(parse_datetime("1970-01-01T01:00:01+01:00"), Some(1000));
    assert_eq!(parse_datetime("1970-01-01T00:00:01-01:00"), Some(3_601_000));
    assert_eq!(parse_datetime("tomorrow"), None);
}

on_both_databases! {
    fn removing_an_account_removes_its_archive_and_preferences(c) {
    let limits = ArchiveLimits {
        retention: Duration::from_secs(1000),
        max_messages: 10,
    };
    put(c, &limits, 1_700_000_000_000, "gone");
    set_prefs(
        c,
        "bob@a.test",
        &Prefs {
            default: DefaultMode::Never,
            always: Vec::new(),
            never: Vec::new(),
        },
    )
    .unwrap();
    crate::core::storage::remove_account(c, "bob", "a.test").unwrap();
    assert!(all(c, 0).is_empty());
    assert_eq!(prefs(c, "bob@a.test").unwrap(), Prefs::default());
    let owners: i64 = c.query_row("SELECT COUNT(*) FROM archive_owners", &[], |r| r.get(0))
        .unwrap();
    assert_eq!(owners, 0);
}
}

/// A message for bob with `with` at `at_ms`, body `body`.
fn put_with(c: &Db, limits: &ArchiveLimits, at_ms: i64, with: &str, body: &str) -> ArchiveId {
    let stanza = format!("<message xmlns='jabber:client'><body>{body}</body></message>");
    archive(
        c,
        &NewMessage {
            owner: "bob@a.test",
            with_bare: with,
            with_full: &format!("{with}/r"),
            stanza: stanza.as_bytes(),
        },
        limits,
        at_ms,
    )
    .unwrap()
    .unwrap()
}

/// The bodies of a page.
fn bodies_of(page: &Page) -> Vec<String> {
    page.items
        .iter()
        .map(|a| String::from_utf8(a.stanza.clone()).unwrap())
        .map(|s| s[s.find("<body>").unwrap() + 6..s.find("</body>").unwrap()].to_owned())
        .collect()
}

on_both_databases! {
    /// XEP-0059 §2.1/§2.5: the count is the full result set's (filters, not paging, and no
    /// expired message), the index the page's place in it, from either end; `index` pages.
    fn count_and_index_of_pages_and_paging_by_index(c) {
    let limits = ArchiveLimits {
        retention: Duration::from_secs(1_000_000),
        max_messages: 1000,
    };
    let t0 = 1_700_000_000_000;
    // Two that a query treats as expired, then a0..a6 with alice and c0..c2 with carol.
    put_with(c, &limits, t0, "alice@a.test", "old0");
    put_with(c, &limits, t0 + 1, "alice@a.test", "old1");
    let mut alice = Vec::new();
    for i in 0..7 {
        alice.push(put_with(c, &limits, t0 + 1000 + i * 2, "alice@a.test", &format!("a{i}")));
        if i < 3 {
            put_with(c, &limits, t0 + 1001 + i * 2, "carol@a.test", &format!("c{i}"));
        }
    }
    let oldest = key_at(t0 + 500);
    let run = |q: &Query, near: i64| {
        let page = store::query(c, "bob@a.test", q, oldest).unwrap();
        let bounds = CountBounds { near_newest: near, max_counted: 1000 };
        let pos = position_within(c, "bob@a.test", q, oldest, &page, bounds).unwrap();
        (bodies_of(&page), pos.count.unwrap(), pos.first_index)
    };
    let q = |f: &dyn Fn(&mut Query)| {
        let mut q = Query { max: 3, ..Query::default() };
        f(&mut q);
        q
    };
    // The whole archive (counted from archive_owners, less the 2 expired): first page.
    let first = q(&|_| {});
    assert_eq!(run(&first, 100), (vec!["a0".into(), "c0".into(), "a1".into()], 10, Some(0)));
    // The last page (an empty <before/>), counted from the newer end or the older one.
    let last = q(&|q| q.backwards = true);
    for near in [100, 1] {
        let (b, count, index) = run(&last, near);
        assert_eq!((b, count, index), (vec!["a4".into(), "a5".into(), "a6".into()], 10, Some(7)), "near {near}");
    }
    // A page in the middle, by RSM after: the count stays the result set's.
    let page1 = store::query(c, "bob@a.test", &first, oldest).unwrap();
    let after = q(&|q| q.rsm_after = Some(page1.items[2].id.key));
    for near in [100, 2] {
        assert_eq!(run(&after, near), (vec!["c1".into(), "a2".into(), "c2".into()], 10, Some(3)));
    }
    // Paging by index: the page that starts at position 4, and one past the end.
    let by_index = q(&|q| q.index = Some(4));
    assert_eq!(run(&by_index, 100), (vec!["a2".into(), "c2".into(), "a3".into()], 10, Some(4)));
    let (b, count, index) = run(&q(&|q| q.index = Some(10)), 100);
    assert!(b.is_empty());
    assert_eq!((count, index), (10, None));
    // A filter makes its own result set: with carol, 3; with alice after a1 (after-id), 5.
    let carol = q(&|q| {
        q.with = Some(With::Bare("carol@a.test".into()));
        q.index = Some(1);
    });
    assert_eq!(run(&carol, 100), (vec!["c1".into(), "c2".into()], 3, Some(1)));
    let after_id = q(&|q| {
        q.with = Some(With::Bare("alice@a.test".into()));
        q.after = Some(alice[1].key);
        q.backwards = true;
    });
    for near in [100, 1] {
        assert_eq!(run(&after_id, near), (vec!["a4".into(), "a5".into(), "a6".into()], 5, Some(2)));
    }
    // max 0: the count alone.
    let (b, count, index) = run(&q(&|q| q.max = 0), 100);
    assert!(b.is_empty());
    assert_eq!((count, index), (10, None));
    // ids: the ones that exist (a wrong nonce is not one), in order, paged by index too.
    let wrong = ArchiveId { key: alice[3].key, nonce: alice[3].nonce ^ 1 };
    let ids = q(&|q| {
        q.ids = Some(vec![alice[5], wrong, alice[0], alice[6]]);
        q.index = Some(1);
    });
    assert_eq!(run(&ids, 100), (vec!["a5".into(), "a6".into()], 3, Some(1)));
    // Beyond max_counted a filtered count is left out, not scanned; the index too when
    // neither side is small. The whole archive's count comes from archive_owners anyway.
    let tight = CountBounds { near_newest: 1, max_counted: 2 };
    let at = |q: &Query| {
        let page = store::query(c, "bob@a.test", q, oldest).unwrap();
        position_within(c, "bob@a.test", q, oldest, &page, tight).unwrap()
    };
    let alice_mid = q(&|q| {
        q.with = Some(With::Bare("alice@a.test".into()));
        q.max = 1;
        q.index = Some(3);
    });
    assert_eq!(at(&alice_mid), Position { count: None, first_index: None });
    let alice_first = q(&|q| {
        q.with = Some(With::Bare("alice@a.test".into()));
        q.max = 1;
    });
    assert_eq!(at(&alice_first), Position { count: None, first_index: Some(0) });
    assert_eq!(at(&first), Position { count: Some(10), first_index: Some(0) });
}
}

/// A message in `owner`'s archive at `at_ms` (retention long enough that the insert deletes
/// nothing: the sweep is what is tested).
fn put_for(c: &Db, owner: &str, at_ms: i64) {
    let limits = ArchiveLimits {
        retention: Duration::from_secs(100 * 365 * 24 * 3600),
        max_messages: 1000,
    };
    archive(
        c,
        &NewMessage {
            owner,
            with_bare: "zed@b.test",
            with_full: "zed@b.test/r",
            stanza: b"<message xmlns='jabber:client'><body>x</body></message>",
        },
        &limits,
        at_ms,
    )
    .unwrap()
    .unwrap();
}

/// Rows and `archive_owners` count of `owner`.
fn stored(c: &Db, owner: &str) -> (i64, i64) {
    let rows = c
        .query_row(
            "SELECT COUNT(*) FROM archive WHERE owner = ?1",
            crate::core::storage::params![owner],
            |r| r.get(0),
        )
        .unwrap();
    let counted: Option<i64> = c
        .query_row(
            "SELECT messages FROM archive_owners WHERE owner = ?1",
            crate::core::storage::params![owner],
            |r| r.get(0),
        )
        .optional()
        .unwrap();
    (rows, counted.unwrap_or(0))
}

on_both_databases! {
    /// The sweep deletes every account's expired messages in batches of at most `batch`,
    /// resuming inside an account and after it, keeps the counts in step, and leaves the
    /// messages in time and the room archives (not accounts) alone.
    fn the_sweep_deletes_expired_messages_of_accounts_in_bounded_batches(c) {
    for u in ["alice", "bob", "carol"] {
        crate::core::storage::create_account(c, u, "a.test", &crate::core::sasl::Credentials::derive("pw", 4096)).unwrap();
    }
    let t0 = 1_700_000_000_000;
    for i in 0..5 {
        put_for(c, "alice@a.test", t0 + i);
    }
    put_for(c, "bob@a.test", t0 + 10);
    put_for(c, "bob@a.test", t0 + 11);
    put_for(c, "room@muc.a.test", t0 + 12);
    // In time: after the cut.
    let cut = t0 + 1000;
    put_for(c, "alice@a.test", cut);
    put_for(c, "carol@a.test", cut + 1);
    let mut from = SweepFrom::Start;
    let mut steps = Vec::new();
    loop {
        let step = sweep_expired(c, &from, key_at(cut), 2).unwrap();
        assert!(step.deleted <= 2, "{step:?}");
        steps.push(step.deleted);
        match step.next {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(steps.iter().sum::<usize>(), 7, "{steps:?}");
    assert!(steps.len() >= 4, "batches of 2: {steps:?}");
    assert_eq!(stored(c, "alice@a.test"), (1, 1));
    assert_eq!(stored(c, "bob@a.test"), (0, 0));
    assert_eq!(stored(c, "carol@a.test"), (1, 1));
    assert_eq!(stored(c, "room@muc.a.test"), (1, 1), "rooms keep their own retention");
    // Nothing left to do: one batch, nothing deleted.
    let again = sweep_expired(c, &SweepFrom::Start, key_at(cut), 2).unwrap();
    assert_eq!(again.deleted, 0);
}
}

/// The core sweeps at start and then every `archive_sweep_interval` (time paused: the
/// interval passes when the test says so), also for an account that receives nothing.
#[tokio::test(start_paused = true)]
async fn the_core_sweeps_expired_messages_at_start_and_every_interval() {
    let dir = tempfile::tempdir().unwrap();
    let core = test_core_with(dir.path(), &["alice", "bob"], |c| {
        c.archive_retention = Duration::from_secs(3600);
        c.archive_sweep_interval = Duration::from_secs(600);
    })
    .await;
    let two_hours_ago = now_ms() - 2 * 3600 * 1000;
    let put = |owner: &'static str, at: i64, n: usize| {
        let core = core.clone();
        async move {
            core.storage
                .call(move |c| {
                    for i in 0..n {
                        put_for(c, owner, at + i as i64);
                    }
                    Ok::<_, crate::core::storage::SqlError>(())
                })
                .await
                .unwrap()
        }
    };
    let rows = |owner: &'static str| {
        let core = core.clone();
        async move {
            core.storage
                .call(move |c| Ok::<_, crate::core::storage::SqlError>(stored(c, owner)))
                .await
                .unwrap()
        }
    };
    // More than one transaction's worth.
    put("alice@a.test", two_hours_ago, store::SWEEP_BATCH + 20).await;
    let sweeper = tokio::spawn(sweep_periodically(core.clone()));
    let mut polls = 0;
    while rows("alice@a.test").await != (0, 0) {
        polls += 1;
        assert!(
            polls < 1000,
            "not swept at start: {:?}",
            rows("alice@a.test").await
        );
        tokio::task::yield_now().await;
    }
    // bob's messages arrive later (archive keys only grow: they go in while the archive is
    // empty), then one of alice's in time; the next interval deletes bob's only.
    put("bob@a.test", two_hours_ago, 3).await;
    put("alice@a.test", now_ms(), 1).await;
    tokio::time::advance(Duration::from_secs(600)).await;
    let mut polls = 0;
    while rows("bob@a.test").await != (0, 0) {
        polls += 1;
        assert!(polls < 1000, "not swept after the interval");
        tokio::task::yield_now().await;
    }
    assert_eq!(rows("alice@a.test").await, (1, 1));
    // The sweeper ends with the core.
    core.shutdown.cancel();
    sweeper.await.unwrap();
}
