//! The service driven by stanzas in, stanzas out: no sockets, no clock (times are given).

use bytes::Bytes;

use super::form::NS_DATA;
use super::service::{NS_DISCO_INFO, NS_DISCO_ITEMS};
use super::*;
use crate::xml::ns;
use crate::xml::stanza::{NsContext, Stanza};

const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

fn el(xml: &str) -> Element {
    Stanza::parse(Bytes::from(xml.to_owned()), &NsContext::component())
        .unwrap()
        .element()
        .unwrap()
}

fn service() -> Service {
    Service::new(MucConfig {
        domain: "conf.test".into(),
        history_length: 2,
        max_rooms: 3,
        max_occupants: 3,
        ..MucConfig::default()
    })
}

fn send(s: &mut Service, xml: &str) -> Vec<Element> {
    s.handle(&el(xml), 1_000_000)
}

fn join_xml(from: &str, to: &str, extra: &str) -> String {
    format!("<presence from='{from}' to='{to}'><x xmlns='http://jabber.org/protocol/muc'>{extra}</x></presence>")
}

fn join(s: &mut Service, from: &str, to: &str) -> Vec<Element> {
    send(s, &join_xml(from, to, ""))
}

/// The status codes of a MUC presence or message.
fn codes(e: &Element) -> Vec<u16> {
    e.child("x", NS_MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name == "status")
                .filter_map(|c| c.attr("code")?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn item(e: &Element) -> &Element {
    e.child("x", NS_MUC_USER)
        .and_then(|x| x.child("item", NS_MUC_USER))
        .expect("a muc#user item")
}

fn condition(e: &Element) -> String {
    assert_eq!(e.attr("type"), Some("error"), "{e:?}");
    let err = e.child("error", ns::COMPONENT).expect("an error");
    let text = err
        .child("text", NS_STANZAS)
        .map(Element::text)
        .unwrap_or_default();
    assert!(!text.is_empty(), "an error with a text");
    err.children()
        .find(|c| c.ns == NS_STANZAS && c.name != "text")
        .map(|c| c.name.clone())
        .unwrap()
}

fn to_of(e: &Element) -> &str {
    e.attr("to").unwrap()
}

/// An unlocked room `room@conf.test` owned by alice (nick Alice), made instant.
fn instant_room(s: &mut Service) {
    join(s, "alice@a.test/phone", "room@conf.test/Alice");
    let out = send(s, "<iq from='alice@a.test/phone' to='room@conf.test' type='set' id='c1'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>");
    assert_eq!(out[0].attr("type"), Some("result"));
}

fn configure(s: &mut Service, fields: &[(&str, &str)]) -> Vec<Element> {
    let fields: String = fields
        .iter()
        .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
        .collect();
    send(s, &format!("<iq from='alice@a.test/phone' to='room@conf.test' type='set' id='cf'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>{fields}</x></query></iq>"))
}

#[test]
fn the_first_join_creates_a_locked_room_owned_by_its_creator() {
    let mut s = service();
    let out = join(&mut s, "alice@a.test/phone", "room@conf.test/Alice");
    // Its own presence (110, 201 new room), then the empty subject.
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].attr("from"), Some("room@conf.test/Alice"));
    assert_eq!(to_of(&out[0]), "alice@a.test/phone");
    assert_eq!(codes(&out[0]), [201, 110]);
    assert_eq!(item(&out[0]).attr("affiliation"), Some("owner"));
    assert_eq!(item(&out[0]).attr("role"), Some("moderator"));
    let subject = out[1].child("subject", ns::COMPONENT).unwrap();
    assert_eq!(subject.text(), "");
    // Locked: nobody else enters, and nobody else sees it, until the owner configures it.
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    assert_eq!(condition(&out[0]), "item-not-found");
    let out = send(&mut s, "<iq from='bob@b.test/pc' to='room@conf.test' type='get' id='d'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    assert_eq!(condition(&out[0]), "item-not-found");
    // An instant room: the empty form accepts the defaults and unlocks it.
    let out = send(&mut s, "<iq from='alice@a.test/phone' to='room@conf.test' type='set' id='c1'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>");
    assert_eq!(out[0].attr("type"), Some("result"));
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    assert!(
        out.iter().all(|e| e.attr("type") != Some("error")),
        "{out:?}"
    );
}

#[test]
fn a_newcomer_gets_the_occupants_then_itself_and_everyone_gets_the_newcomer() {
    let mut s = service();
    instant_room(&mut s);
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    // Alice's presence to Bob; Bob's to Alice; Bob's own (110); the subject.
    assert_eq!(out.len(), 4, "{out:?}");
    assert_eq!(out[0].attr("from"), Some("room@conf.test/Alice"));
    assert_eq!(to_of(&out[0]), "bob@b.test/pc");
    // Semi-anonymous: Bob (a participant) does not see Alice's real JID.
    assert_eq!(item(&out[0]).attr("jid"), None);
    assert_eq!(out[1].attr("from"), Some("room@conf.test/Bob"));
    assert_eq!(to_of(&out[1]), "alice@a.test/phone");
    // ...but Alice, a moderator, sees Bob's.
    assert_eq!(item(&out[1]).attr("jid"), Some("bob@b.test/pc"));
    assert_eq!(codes(&out[1]), Vec::<u16>::new());
    assert_eq!(to_of(&out[2]), "bob@b.test/pc");
    assert_eq!(codes(&out[2]), [110]);
    assert_eq!(item(&out[2]).attr("role"), Some("participant"));
    assert_eq!(item(&out[2]).attr("affiliation"), Some("none"));
    assert!(out[3].child("subject", ns::COMPONENT).is_some());
}

#[test]
fn a_non_anonymous_room_says_so_with_100_and_shows_real_jids_to_all() {
    let mut s = service();
    instant_room(&mut s);
    let out = configure(&mut s, &[("muc#roomconfig_whois", "anyone")]);
    assert_eq!(out[0].attr("type"), Some("result"));
    // The occupants are told: 104 configuration changed, 172 now non-anonymous.
    assert_eq!(codes(&out[1]), [104, 172]);
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    assert_eq!(item(&out[0]).attr("jid"), Some("alice@a.test/phone"));
    assert_eq!(codes(&out[2]), [100, 110]);
    let out = configure(&mut s, &[("muc#roomconfig_whois", "moderators")]);
    assert_eq!(codes(&out[1]), [104, 173]);
}

#[test]
fn nicknames_conflict_change_and_are_enforced() {
    let mut s = service();
    instant_room(&mut s);
    // Conflict: compared as nicknames, so case does not tell them apart.
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/alice");
    assert_eq!(condition(&out[0]), "conflict");
    assert_eq!(out[0].attr("from"), Some("room@conf.test/alice"));
    // Not a nickname: only spaces.
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/ ");
    assert_eq!(condition(&out[0]), "not-acceptable");
    // No nickname at all.
    let out = send(
        &mut s,
        "<presence from='bob@b.test/pc' to='room@conf.test'/>",
    );
    assert_eq!(condition(&out[0]), "jid-malformed");
    // Fullwidth letters are mapped (NFKC): the service changed the nickname, 210.
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/\u{FF22}ob");
    let own = out.iter().find(|e| codes(e).contains(&110)).unwrap();
    assert_eq!(own.attr("from"), Some("room@conf.test/Bob"));
    assert_eq!(codes(own), [210, 110]);
    // A change: unavailable from the old nickname with 303 and the new one, to everyone.
    let out = send(
        &mut s,
        "<presence from='bob@b.test/pc' to='room@conf.test/Robert'/>",
    );
    assert_eq!(out.len(), 4, "{out:?}");
    assert_eq!(out[0].attr("type"), Some("unavailable"));
    assert_eq!(out[0].attr("from"), Some("room@conf.test/Bob"));
    assert_eq!(codes(&out[0]), [303]);
    assert_eq!(item(&out[0]).attr("nick"), Some("Robert"));
    assert_eq!(codes(&out[1]), [303, 110]);
    assert_eq!(out[2].attr("from"), Some("room@conf.test/Robert"));
    assert_eq!(out[2].attr("type"), None);
    assert_eq!(codes(&out[3]), [110]);
    // A change to a taken nickname.
    let out = send(
        &mut s,
        "<presence from='bob@b.test/pc' to='room@conf.test/ALICE'/>",
    );
    assert_eq!(condition(&out[0]), "conflict");
}

#[test]
fn groupchat_goes_to_everyone_with_a_stanza_id_and_private_messages_to_one() {
    let mut s = service();
    instant_room(&mut s);
    join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    let out = send(&mut s, "<message from='bob@b.test/pc' to='room@conf.test' type='groupchat' id='m1'><body>hi</body><stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='room@conf.test'/></message>");
    assert_eq!(out.len(), 2);
    let to: Vec<&str> = out.iter().map(to_of).collect();
    assert_eq!(to, ["alice@a.test/phone", "bob@b.test/pc"]);
    for m in &out {
        assert_eq!(m.attr("from"), Some("room@conf.test/Bob"));
        assert_eq!(m.attr("id"), Some("m1"));
        let ids: Vec<&Element> = m.children().filter(|c| c.name == "stanza-id").collect();
        assert_eq!(ids.len(), 1, "the forged stanza-id is replaced");
        assert_ne!(ids[0].attr("id"), Some("forged"));
        assert_eq!(ids[0].attr("by"), Some("room@conf.test"));
    }
    assert_eq!(
        out[0].child("stanza-id", NS_SID).unwrap().attr("id"),
        out[1].child("stanza-id", NS_SID).unwrap().attr("id")
    );
    // Not an occupant.
    let out = send(&mut s, "<message from='eve@e.test/x' to='room@conf.test' type='groupchat'><body>spam</body></message>");
    assert_eq!(condition(&out[0]), "not-acceptable");
    // A private message: to Alice's real JID, from Bob's occupant JID.
    let out = send(&mut s, "<message from='bob@b.test/pc' to='room@conf.test/Alice' type='chat'><body>psst</body></message>");
    assert_eq!(out.len(), 1);
    assert_eq!(to_of(&out[0]), "alice@a.test/phone");
    assert_eq!(out[0].attr("from"), Some("room@conf.test/Bob"));
    assert!(out[0].child("x", NS_MUC_USER).is_some());
    let out = send(&mut s, "<message from='eve@e.test/x' to='room@conf.test/Alice' type='chat'><body>psst</body></message>");
    assert_eq!(condition(&out[0]), "not-acceptable");
    let out = send(&mut s, "<message from='bob@b.test/pc' to='room@conf.test/Nobody' type='chat'><body>psst</body></message>");
    assert_eq!(condition(&out[0]), "item-not-found");
}

#[test]
fn moderators_set_the_subject_and_newcomers_get_it_last() {
    let mut s = service();
    instant_room(&mut s);
    join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    let out = send(&mut s, "<message from='bob@b.test/pc' to='room@conf.test' type='groupchat'><subject>mine</subject></message>");
    assert_eq!(condition(&out[0]), "forbidden");
    let out = send(&mut s, "<message from='alice@a.test/phone' to='room@conf.test' type='groupchat'><subject>Plans</subject></message>");
    assert_eq!(out.len(), 2);
    let out = join(&mut s, "carol@c.test/x", "room@conf.test/Carol");
    let last = out.last().unwrap();
    assert_eq!(last.attr("from"), Some("room@conf.test/Alice"));
    assert_eq!(
        last.child("subject", ns::COMPONENT).unwrap().text(),
        "Plans"
    );
}

#[test]
fn history_on_join_is_the_latest_messages_with_delay_as_asked() {
    let mut s = service();
    instant_room(&mut s);
    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        let m = el(&format!("<message from='alice@a.test/phone' to='room@conf.test' type='groupchat'><body>{body}</body></message>"));
        s.handle(&m, 1_000 * (i as i64 + 1));
    }
    let history = |out: &[Element]| -> Vec<String> {
        out.iter()
            .filter(|e| e.name == "message" && e.child("delay", NS_DELAY).is_some())
            .map(|e| e.child("body", ns::COMPONENT).unwrap().text())
            .collect()
    };
    // The room keeps 2 (history_length): the latest two, oldest first, stamped.
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    assert_eq!(history(&out), ["two", "three"]);
    let m = out
        .iter()
        .find(|e| e.child("delay", NS_DELAY).is_some())
        .unwrap();
    let delay = m.child("delay", NS_DELAY).unwrap();
    assert_eq!(delay.attr("from"), Some("room@conf.test"));
    assert_eq!(delay.attr("stamp"), Some("1970-01-01T00:00:02.000Z"));
    assert_eq!(m.attr("from"), Some("room@conf.test/Alice"));
    // History comes before the subject.
    assert!(out
        .last()
        .unwrap()
        .child("subject", ns::COMPONENT)
        .is_some());
    // maxstanzas, maxchars and since limit it further.
    let out = send(
        &mut s,
        &join_xml(
            "c@c.test/1",
            "room@conf.test/C",
            "<history maxstanzas='1'/>",
        ),
    );
    assert_eq!(history(&out), ["three"]);
    let out = send(
        &mut s,
        &join_xml("d@c.test/1", "room@conf.test/D", "<history maxchars='0'/>"),
    );
    assert!(history(&out).is_empty());
    let out = send(
        &mut s,
        &join_xml(
            "e@c.test/1",
            "room@conf.test/E",
            "<history since='1970-01-01T00:00:02.500Z'/>",
        ),
    );
    // The room is full (max 3 occupants) by now; an owner-admitted test of `since` needs room.
    assert_eq!(condition(&out[0]), "service-unavailable");
    send(
        &mut s,
        "<presence from='c@c.test/1' to='room@conf.test/C' type='unavailable'/>",
    );
    let out = send(
        &mut s,
        &join_xml(
            "e@c.test/1",
            "room@conf.test/E",
            "<history since='1970-01-01T00:00:02.500Z'/>",
        ),
    );
    assert_eq!(history(&out), ["three"]);
}

#[test]
fn leaving_tells_everyone_and_the_last_to_leave_ends_a_temporary_room() {
    let mut s = service();
    instant_room(&mut s);
    join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    let out = send(
        &mut s,
        "<presence from='bob@b.test/pc' to='room@conf.test/Bob' type='unavailable'/>",
    );
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|e| e.attr("type") == Some("unavailable")));
    assert_eq!(codes(&out[1]), [110]);
    assert_eq!(item(&out[0]).attr("role"), Some("none"));
    assert_eq!(s.counts().occupants, 1);
    send(
        &mut s,
        "<presence from='alice@a.test/phone' to='room@conf.test/Alice' type='unavailable'/>",
    );
    assert_eq!(s.counts().rooms, 0);
    // A persistent room stays.
    instant_room(&mut s);
    configure(&mut s, &[("muc#roomconfig_persistentroom", "1")]);
    send(
        &mut s,
        "<presence from='alice@a.test/phone' to='room@conf.test/Alice' type='unavailable'/>",
    );
    assert_eq!(s.counts().rooms, 1);
}

#[test]
fn disco_of_the_service_and_of_a_room() {
    let mut s = service();
    let out = send(&mut s, "<iq from='bob@b.test/pc' to='conf.test' type='get' id='1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let q = out[0].child("query", NS_DISCO_INFO).unwrap();
    let id = q.child("identity", NS_DISCO_INFO).unwrap();
    assert_eq!(id.attr("category"), Some("conference"));
    assert!(q.children().any(|f| f.attr("var") == Some(NS_MUC)));
    instant_room(&mut s);
    join(&mut s, "zed@z.test/x", "locked@conf.test/Zed");
    let out = send(&mut s, "<iq from='bob@b.test/pc' to='conf.test' type='get' id='2'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>");
    let items: Vec<&str> = out[0]
        .child("query", NS_DISCO_ITEMS)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert_eq!(items, ["room@conf.test"], "locked rooms are not listed");
    configure(
        &mut s,
        &[
            ("muc#roomconfig_roomdesc", "About plans"),
            ("muc#roomconfig_membersonly", "1"),
        ],
    );
    let out = send(&mut s, "<iq from='bob@b.test/pc' to='room@conf.test' type='get' id='3'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let q = out[0].child("query", NS_DISCO_INFO).unwrap();
    let features: Vec<&str> = q.children().filter_map(|f| f.attr("var")).collect();
    for f in [
        NS_MUC,
        "muc_temporary",
        "muc_membersonly",
        "muc_unmoderated",
        "muc_semianonymous",
        "muc_unsecured",
        NS_SID,
    ] {
        assert!(features.contains(&f), "{f} in {features:?}");
    }
    let form = q.child("x", NS_DATA).unwrap();
    let value = |var: &str| {
        form.children()
            .find(|f| f.attr("var") == Some(var))
            .and_then(|f| f.child("value", NS_DATA))
            .map(Element::text)
    };
    assert_eq!(
        value("FORM_TYPE").as_deref(),
        Some("http://jabber.org/protocol/muc#roominfo")
    );
    assert_eq!(
        value("muc#roominfo_description").as_deref(),
        Some("About plans")
    );
    assert_eq!(value("muc#roominfo_occupants").as_deref(), Some("1"));
    let out = send(&mut s, "<iq from='bob@b.test/pc' to='nowhere@conf.test' type='get' id='4'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    assert_eq!(condition(&out[0]), "item-not-found");
    let out = send(&mut s, "<message from='bob@b.test/pc' to='nowhere@conf.test' type='groupchat'><body>x</body></message>");
    assert_eq!(condition(&out[0]), "item-not-found");
}

#[test]
fn entry_is_refused_for_password_ban_members_only_full_room_and_room_count() {
    let mut s = service();
    instant_room(&mut s);
    configure(
        &mut s,
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "sesame"),
        ],
    );
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    assert_eq!(condition(&out[0]), "not-authorized");
    let out = send(
        &mut s,
        &join_xml(
            "bob@b.test/pc",
            "room@conf.test/Bob",
            "<password>wrong</password>",
        ),
    );
    assert_eq!(condition(&out[0]), "not-authorized");
    let out = send(
        &mut s,
        &join_xml(
            "bob@b.test/pc",
            "room@conf.test/Bob",
            "<password>sesame</password>",
        ),
    );
    assert!(out.iter().all(|e| e.attr("type") != Some("error")));
    // A password-protected room needs a password.
    let out = configure(
        &mut s,
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", ""),
        ],
    );
    assert_eq!(condition(&out[0]), "not-acceptable");
    configure(&mut s, &[("muc#roomconfig_passwordprotectedroom", "0")]);
    // Full: max 2 now; owners and admins still enter.
    configure(&mut s, &[("muc#roomconfig_maxusers", "2")]);
    let out = join(&mut s, "carol@c.test/x", "room@conf.test/Carol");
    assert_eq!(condition(&out[0]), "service-unavailable");
    // Banned.
    send(&mut s, "<iq from='alice@a.test/phone' to='room@conf.test' type='set' id='b'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='outcast' jid='carol@c.test'/></query></iq>");
    let out = join(&mut s, "carol@c.test/x", "room@conf.test/Carol");
    assert_eq!(condition(&out[0]), "forbidden");
    // Members-only.
    configure(
        &mut s,
        &[
            ("muc#roomconfig_maxusers", "3"),
            ("muc#roomconfig_membersonly", "1"),
        ],
    );
    let out = join(&mut s, "dave@d.test/x", "room@conf.test/Dave");
    assert_eq!(condition(&out[0]), "registration-required");
    // Too many rooms (max_rooms 3).
    join(&mut s, "x@x.test/1", "r2@conf.test/X");
    join(&mut s, "x@x.test/1", "r3@conf.test/X");
    let out = join(&mut s, "x@x.test/1", "r4@conf.test/X");
    assert_eq!(condition(&out[0]), "not-allowed");
}

#[test]
fn the_configuration_form_is_for_owners_and_bad_values_are_refused() {
    let mut s = service();
    instant_room(&mut s);
    join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    let out = send(&mut s, "<iq from='bob@b.test/pc' to='room@conf.test' type='get' id='f'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>");
    assert_eq!(condition(&out[0]), "forbidden");
    let out = send(&mut s, "<iq from='alice@a.test/phone' to='room@conf.test' type='get' id='f'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>");
    let form = out[0]
        .child("query", NS_MUC_OWNER)
        .and_then(|q| q.child("x", NS_DATA))
        .unwrap();
    let vars: Vec<&str> = form.children().filter_map(|f| f.attr("var")).collect();
    for v in [
        "muc#roomconfig_persistentroom",
        "muc#roomconfig_membersonly",
        "muc#roomconfig_moderatedroom",
        "muc#roomconfig_roomsecret",
        "muc#roomconfig_maxusers",
        "muc#roomconfig_whois",
        "muc#maxhistoryfetch",
        "muc#roomconfig_roomname",
        "muc#roomconfig_roomdesc",
    ] {
        assert!(vars.contains(&v), "{v}");
    }
    let out = configure(&mut s, &[("muc#roomconfig_moderatedroom", "maybe")]);
    assert_eq!(condition(&out[0]), "not-acceptable");
    let out = configure(&mut s, &[("muc#roomconfig_whois", "everybody")]);
    assert_eq!(condition(&out[0]), "not-acceptable");
    let out = configure(&mut s, &[("muc#roomconfig_maxusers", "0")]);
    assert_eq!(condition(&out[0]), "not-acceptable");
    // The history length is capped by the service's max_history and trims what is kept.
    configure(&mut s, &[("muc#maxhistoryfetch", "100000")]);
    assert_eq!(s.room("room").unwrap().config.history_length, 100);
}

fn admin(s: &mut Service, from: &str, item: &str) -> Vec<Element> {
    send(s, &format!("<iq from='{from}' to='room@conf.test' type='set' id='a'><query xmlns='http://jabber.org/protocol/muc#admin'>{item}</query></iq>"))
}

#[test]
fn moderators_kick_and_admins_ban_with_307_and_301() {
    let mut s = service();
    instant_room(&mut s);
    join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    join(&mut s, "carol@c.test/x", "room@conf.test/Carol");
    // A participant kicks nobody.
    let out = admin(&mut s, "bob@b.test/pc", "<item nick='Carol' role='none'/>");
    assert_eq!(condition(&out[0]), "forbidden");
    // Nobody kicks an owner.
    send(&mut s, "<iq from='alice@a.test/phone' to='room@conf.test' type='set' id='m'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Bob' role='moderator'/></query></iq>");
    let out = admin(&mut s, "bob@b.test/pc", "<item nick='Alice' role='none'/>");
    assert_eq!(condition(&out[0]), "not-allowed");
    let out = admin(
        &mut s,
        "bob@b.test/pc",
        "<item nick='Carol' role='none'><reason>spam</reason></item>",
    );
    assert_eq!(out[0].attr("type"), Some("result"));
    let gone: Vec<&Element> = out[1..]
        .iter()
        .filter(|e| e.attr("type") == Some("unavailable"))
        .collect();
    assert_eq!(gone.len(), 3);
    let to_carol = gone.iter().find(|e| to_of(e) == "carol@c.test/x").unwrap();
    assert_eq!(codes(to_carol), [307, 110]);
    let actor = item(to_carol).child("actor", NS_MUC_USER).unwrap();
    assert_eq!(actor.attr("nick"), Some("Bob"));
    // Kicked, not banned: she comes back; then banned.
    join(&mut s, "carol@c.test/x", "room@conf.test/Carol");
    let out = admin(
        &mut s,
        "bob@b.test/pc",
        "<item jid='carol@c.test' affiliation='outcast'/>",
    );
    assert_eq!(
        condition(&out[0]),
        "forbidden",
        "a moderator without affiliation bans nobody"
    );
    let out = admin(
        &mut s,
        "alice@a.test/phone",
        "<item jid='carol@c.test' affiliation='outcast'/>",
    );
    assert_eq!(out[0].attr("type"), Some("result"));
    let to_carol = out
        .iter()
        .find(|e| e.attr("to") == Some("carol@c.test/x"))
        .unwrap();
    assert_eq!(codes(to_carol), [301, 110]);
    assert_eq!(item(to_carol).attr("affiliation"), Some("outcast"));
    let out = join(&mut s, "carol@c.test/other", "room@conf.test/Carol2");
    assert_eq!(condition(&out[0]), "forbidden");
    // The ban list.
    let out = send(&mut s, "<iq from='alice@a.test/phone' to='room@conf.test' type='get' id='l'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='outcast'/></query></iq>");
    let listed = out[0]
        .child("query", NS_MUC_ADMIN)
        .unwrap()
        .child("item", NS_MUC_ADMIN)
        .unwrap();
    assert_eq!(listed.attr("jid"), Some("carol@c.test"));
    // The last owner stays one.
    let out = admin(
        &mut s,
        "alice@a.test/phone",
        "<item jid='alice@a.test' affiliation='member'/>",
    );
    assert_eq!(condition(&out[0]), "conflict");
}

#[test]
fn a_visitor_asks_for_voice_and_a_moderator_grants_it_with_the_approval_form() {
    let mut s = service();
    instant_room(&mut s);
    configure(&mut s, &[("muc#roomconfig_moderatedroom", "1")]);
    join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    let request = "<message from='bob@b.test/pc' to='room@conf.test'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#role'><value>participant</value></field></x></message>";
    // The moderator (Alice, the owner) gets the approval form, with who asks.
    let out = send(&mut s, request);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].attr("to"), Some("alice@a.test/phone"));
    assert_eq!(out[0].attr("from"), Some("room@conf.test"));
    let form = out[0].child("x", NS_DATA).unwrap();
    assert_eq!(form.attr("type"), Some("form"));
    let text = String::from_utf8(form.to_bytes()).unwrap();
    for needle in [
        "muc#request_allow",
        "<value>Bob</value>",
        "<value>bob@b.test/pc</value>",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    // A visitor cannot answer the form for itself.
    let grant = |from: &str, allow: &str| {
        format!("<message from='{from}' to='room@conf.test'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field><field var='muc#role'><value>participant</value></field><field var='muc#roomnick'><value>Bob</value></field><field var='muc#request_allow'><value>{allow}</value></field></x></message>")
    };
    let out = send(&mut s, &grant("bob@b.test/pc", "true"));
    assert_eq!(condition(&out[0]), "forbidden");
    // Skipped: nothing changes.
    assert!(send(&mut s, &grant("alice@a.test/phone", "false")).is_empty());
    // Granted: Bob is a participant, announced to everyone, and may speak.
    let out = send(&mut s, &grant("alice@a.test/phone", "1"));
    let to_bob = out
        .iter()
        .find(|e| e.attr("to") == Some("bob@b.test/pc"))
        .unwrap();
    assert_eq!(item(to_bob).attr("role"), Some("participant"));
    let say = "<message from='bob@b.test/pc' to='room@conf.test' type='groupchat'><body>thanks</body></message>";
    assert_eq!(send(&mut s, say).len(), 2);
    // With voice already, a request asks for nothing.
    assert!(send(&mut s, request).is_empty());
}

#[test]
fn in_a_moderated_room_visitors_need_voice_to_speak() {
    let mut s = service();
    instant_room(&mut s);
    configure(&mut s, &[("muc#roomconfig_moderatedroom", "1")]);
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    let own = out.iter().find(|e| codes(e).contains(&110)).unwrap();
    assert_eq!(item(own).attr("role"), Some("visitor"));
    let say = "<message from='bob@b.test/pc' to='room@conf.test' type='groupchat'><body>hello?</body></message>";
    let out = send(&mut s, say);
    assert_eq!(condition(&out[0]), "forbidden");
    let out = admin(
        &mut s,
        "alice@a.test/phone",
        "<item nick='Bob' role='participant'/>",
    );
    assert_eq!(out[0].attr("type"), Some("result"));
    let to_bob = out
        .iter()
        .find(|e| e.attr("to") == Some("bob@b.test/pc"))
        .unwrap();
    assert_eq!(item(to_bob).attr("role"), Some("participant"));
    let out = send(&mut s, say);
    assert_eq!(out.len(), 2, "now everyone gets it");
    // Voice taken back.
    admin(
        &mut s,
        "alice@a.test/phone",
        "<item nick='Bob' role='visitor'/>",
    );
    let out = send(&mut s, say);
    assert_eq!(condition(&out[0]), "forbidden");
    // A member gets voice on entry.
    admin(
        &mut s,
        "alice@a.test/phone",
        "<item jid='carol@c.test' affiliation='member'/>",
    );
    let out = join(&mut s, "carol@c.test/x", "room@conf.test/Carol");
    let own = out.iter().find(|e| codes(e).contains(&110)).unwrap();
    assert_eq!(item(own).attr("role"), Some("participant"));
    assert_eq!(item(own).attr("affiliation"), Some("member"));
}

#[test]
fn invitations_go_through_the_room_and_declines_back() {
    let mut s = service();
    instant_room(&mut s);
    configure(
        &mut s,
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "sesame"),
        ],
    );
    let out = send(&mut s, "<message from='alice@a.test/phone' to='room@conf.test'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='bob@b.test'><reason>join us</reason></invite></x></message>");
    assert_eq!(out.len(), 1);
    assert_eq!(to_of(&out[0]), "bob@b.test");
    assert_eq!(out[0].attr("from"), Some("room@conf.test"));
    let x = out[0].child("x", NS_MUC_USER).unwrap();
    let invite = x.child("invite", NS_MUC_USER).unwrap();
    assert_eq!(invite.attr("from"), Some("alice@a.test/phone"));
    assert_eq!(
        invite.child("reason", NS_MUC_USER).unwrap().text(),
        "join us"
    );
    assert_eq!(x.child("password", NS_MUC_USER).unwrap().text(), "sesame");
    let out = send(&mut s, "<message from='bob@b.test/pc' to='room@conf.test'><x xmlns='http://jabber.org/protocol/muc#user'><decline to='alice@a.test/phone'/></x></message>");
    assert_eq!(to_of(&out[0]), "alice@a.test/phone");
    let decline = out[0]
        .child("x", NS_MUC_USER)
        .unwrap()
        .child("decline", NS_MUC_USER)
        .unwrap();
    assert_eq!(decline.attr("from"), Some("bob@b.test/pc"));
    let out = send(&mut s, "<message from='eve@e.test/x' to='room@conf.test'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='bob@b.test'/></x></message>");
    assert_eq!(condition(&out[0]), "not-acceptable");
    // Members-only: the invitee becomes a member and may enter.
    configure(
        &mut s,
        &[
            ("muc#roomconfig_passwordprotectedroom", "0"),
            ("muc#roomconfig_membersonly", "1"),
        ],
    );
    send(&mut s, "<message from='alice@a.test/phone' to='room@conf.test'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='bob@b.test'/></x></message>");
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    assert!(
        out.iter().all(|e| e.attr("type") != Some("error")),
        "{out:?}"
    );
}

#[test]
fn self_ping_is_answered_for_occupants_only() {
    let mut s = service();
    instant_room(&mut s);
    let ping = |from: &str| {
        format!("<iq from='{from}' to='room@conf.test/Alice' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
    };
    let out = send(&mut s, &ping("alice@a.test/phone"));
    assert_eq!(out[0].attr("type"), Some("result"));
    assert_eq!(out[0].attr("from"), Some("room@conf.test/Alice"));
    // Another session of the same account is not that occupant.
    let out = send(&mut s, &ping("alice@a.test/laptop"));
    assert_eq!(condition(&out[0]), "not-acceptable");
}

#[test]
fn iqs_between_occupants_are_relayed_without_real_jids() {
    let mut s = service();
    instant_room(&mut s);
    join(&mut s, "bob@b.test/desk", "room@conf.test/Bob");
    // A request goes to Bob's real full JID, from Alice's occupant JID, with its id.
    let out = send(&mut s, "<iq from='alice@a.test/phone' to='room@conf.test/Bob' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].attr("to"), Some("bob@b.test/desk"));
    assert_eq!(out[0].attr("from"), Some("room@conf.test/Alice"));
    assert_eq!(out[0].attr("id"), Some("v1"));
    assert!(out[0].child("query", "jabber:iq:version").is_some());
    // Bob's answer goes back to Alice, from Bob's occupant JID.
    let out = send(&mut s, "<iq from='bob@b.test/desk' to='room@conf.test/Alice' type='result' id='v1'><query xmlns='jabber:iq:version'><name>x</name></query></iq>");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].attr("to"), Some("alice@a.test/phone"));
    assert_eq!(out[0].attr("from"), Some("room@conf.test/Bob"));
    assert_eq!(out[0].attr("type"), Some("result"));
    // A vCard is asked of the account (bare JID), and its answer comes from there.
    let out = send(&mut s, "<iq from='alice@a.test/phone' to='room@conf.test/Bob' type='get' id='vc'><vCard xmlns='vcard-temp'/></iq>");
    assert_eq!(out[0].attr("to"), Some("bob@b.test"));
    let out = send(&mut s, "<iq from='bob@b.test' to='room@conf.test/Alice' type='result' id='vc'><vCard xmlns='vcard-temp'><FN>Bob</FN></vCard></iq>");
    assert_eq!(out[0].attr("from"), Some("room@conf.test/Bob"));
    assert_eq!(out[0].attr("to"), Some("alice@a.test/phone"));
    // Answers from non-occupants, or to nobody, are dropped (never answered with an error).
    let stranger = "<iq from='eve@e.test/x' to='room@conf.test/Alice' type='result' id='v1'/>";
    assert!(send(&mut s, stranger).is_empty());
    let to_nobody = "<iq from='bob@b.test/desk' to='room@conf.test/Nobody' type='error' id='v1'/>";
    assert!(send(&mut s, to_nobody).is_empty());
    // Requests from non-occupants, or to a nick nobody has, are refused.
    let out = send(&mut s, "<iq from='eve@e.test/x' to='room@conf.test/Bob' type='get' id='e'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert_eq!(condition(&out[0]), "not-acceptable");
    let out = send(&mut s, "<iq from='alice@a.test/phone' to='room@conf.test/Nobody' type='get' id='n'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert_eq!(condition(&out[0]), "item-not-found");
}

#[test]
fn a_stopping_service_tells_every_occupant_with_332_and_bounced_presence_removes_one() {
    let mut s = service();
    instant_room(&mut s);
    join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    let out = send(&mut s, "<presence from='bob@b.test/pc' to='room@conf.test/Bob' type='error'><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>");
    assert_eq!(codes(&out[0]), [333]);
    assert_eq!(s.counts().occupants, 1);
    let out = s.shutdown();
    assert_eq!(out.len(), 1);
    assert_eq!(codes(&out[0]), [332, 110]);
}

fn stored_service(stored: Vec<store::StoredRoom>) -> Service {
    Service::with_stored(
        MucConfig {
            domain: "conf.test".into(),
            ..MucConfig::default()
        },
        stored,
    )
}

#[test]
fn persistent_rooms_note_their_changes_for_the_database() {
    let mut s = stored_service(Vec::new());
    instant_room(&mut s);
    // A temporary room is never stored.
    assert_eq!(s.take_changes(), []);
    configure(&mut s, &[("muc#roomconfig_persistentroom", "1")]);
    let changes = s.take_changes();
    let [Change::Save(saved)] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!(saved.room, "room");
    assert!(saved.config.persistent);
    assert_eq!(
        saved.affiliations,
        [("alice@a.test".to_string(), room::Affiliation::Owner)]
    );
    // A groupchat message changes nothing stored of the room (it goes to the archive); a
    // subject and an affiliation do.
    send(&mut s, "<message from='alice@a.test/phone' to='room@conf.test' type='groupchat'><body>x</body></message>");
    let changes = s.take_changes();
    assert!(
        matches!(&changes[..], [Change::Archive { .. }]),
        "{changes:?}"
    );
    send(&mut s, "<message from='alice@a.test/phone' to='room@conf.test' type='groupchat'><subject>Topic</subject></message>");
    let changes = s.take_changes();
    assert!(
        matches!(&changes[..], [Change::Save(r)] if r.subject == Some(("Alice".into(), "Topic".into())))
    );
    admin(
        &mut s,
        "alice@a.test/phone",
        "<item jid='bob@b.test' affiliation='member'/>",
    );
    let changes = s.take_changes();
    assert!(matches!(&changes[..], [Change::Save(r)] if r.affiliations.len() == 2));
    // Made temporary again: deleted, and the empty room goes away when Alice leaves.
    configure(&mut s, &[("muc#roomconfig_persistentroom", "0")]);
    assert_eq!(s.take_changes(), [Change::Delete("room".into())]);
    configure(&mut s, &[("muc#roomconfig_persistentroom", "1")]);
    s.take_changes();
    // Destroyed: deleted.
    let out = send(&mut s, "<iq from='alice@a.test/phone' to='room@conf.test' type='set' id='x'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy><reason>done</reason></destroy></query></iq>");
    let gone = out
        .iter()
        .find(|e| e.attr("type") == Some("unavailable"))
        .unwrap();
    assert!(gone
        .child("x", NS_MUC_USER)
        .unwrap()
        .child("destroy", NS_MUC_USER)
        .is_some());
    assert_eq!(s.take_changes(), [Change::Delete("room".into())]);
    assert_eq!(s.counts().rooms, 0);
}

crate::core::storage::testing::on_both_databases! {
/// Saved, then loaded after a restart: the room's rules, subject and affiliations.
fn stored_rooms_come_back_configured_with_their_affiliations_and_subject(db) {
    let conn = db;
    let mut s = stored_service(Vec::new());
    instant_room(&mut s);
    configure(
        &mut s,
        &[
            ("muc#roomconfig_persistentroom", "1"),
            ("muc#roomconfig_membersonly", "1"),
            ("muc#roomconfig_roomname", "Plans"),
        ],
    );
    admin(
        &mut s,
        "alice@a.test/phone",
        "<item jid='bob@b.test' affiliation='member'/>",
    );
    admin(
        &mut s,
        "alice@a.test/phone",
        "<item jid='eve@e.test' affiliation='outcast'/>",
    );
    send(&mut s, "<message from='alice@a.test/phone' to='room@conf.test' type='groupchat'><subject>Topic</subject></message>");
    for change in s.take_changes() {
        match change {
            Change::Save(r) => store::save(conn, "conf.test", &r).unwrap(),
            Change::Delete(r) => store::delete(conn, "conf.test", &r).unwrap(),
            Change::Archive { .. } | Change::Query { .. } => {}
        }
    }
    // Another service's rooms are its own.
    assert!(store::load(conn, "other.test").unwrap().is_empty());
    let stored = store::load(conn, "conf.test").unwrap();
    assert_eq!(stored.len(), 1);
    // A restart: the room is there, unlocked, with its rules.
    let mut s = stored_service(stored);
    let out = join(&mut s, "carol@c.test/x", "room@conf.test/Carol");
    assert_eq!(condition(&out[0]), "registration-required");
    let out = join(&mut s, "eve@e.test/x", "room@conf.test/Eve");
    assert_eq!(condition(&out[0]), "forbidden");
    let out = join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    let last = out.last().unwrap();
    assert_eq!(
        last.child("subject", ns::COMPONENT).unwrap().text(),
        "Topic"
    );
    let out = join(&mut s, "alice@a.test/phone", "room@conf.test/Alice");
    let own = out.iter().find(|e| codes(e).contains(&110)).unwrap();
    assert_eq!(item(own).attr("affiliation"), Some("owner"));
    assert!(!codes(own).contains(&201), "not a new room");
    // The empty persistent room stays after everyone leaves.
    send(
        &mut s,
        "<presence from='alice@a.test/phone' to='room@conf.test/Alice' type='unavailable'/>",
    );
    send(
        &mut s,
        "<presence from='bob@b.test/pc' to='room@conf.test/Bob' type='unavailable'/>",
    );
    assert_eq!(s.counts().rooms, 1);
    store::delete(conn, "conf.test", "room").unwrap();
    assert!(store::load(conn, "conf.test").unwrap().is_empty());
}}

#[test]
fn a_stored_service_archives_groupchat_and_turns_archive_queries_into_work() {
    let mut s = stored_service(Vec::new());
    instant_room(&mut s);
    join(&mut s, "bob@b.test/pc", "room@conf.test/Bob");
    let out = send(&mut s, "<message from='bob@b.test/pc' to='room@conf.test' type='groupchat'><body>keep me</body></message>");
    let changes = s.take_changes();
    let [Change::Archive {
        room,
        with,
        message,
        placeholder,
    }] = changes.as_slice()
    else {
        panic!("{changes:?}")
    };
    assert_eq!(room, "room@conf.test");
    assert_eq!(with, "room@conf.test/Bob");
    assert_eq!(message.attr("to"), None);
    for copy in &out {
        assert_eq!(
            copy.child("stanza-id", NS_SID).unwrap().attr("id"),
            Some(placeholder.as_str())
        );
    }
    // The archive's id replaces the placeholder in the history too.
    s.set_archive_id("room", placeholder, "0123");
    let out = join(&mut s, "carol@c.test/x", "room@conf.test/Carol");
    let history = out
        .iter()
        .find(|e| e.child("delay", NS_DELAY).is_some())
        .unwrap();
    assert_eq!(
        history.child("stanza-id", NS_SID).unwrap().attr("id"),
        Some("0123")
    );
    // A subject is not archived.
    send(&mut s, "<message from='alice@a.test/phone' to='room@conf.test' type='groupchat'><subject>S</subject></message>");
    assert!(!s
        .take_changes()
        .iter()
        .any(|c| matches!(c, Change::Archive { .. })));

    let mam = |from: &str, type_: &str, body: &str| {
        format!("<iq from='{from}' to='room@conf.test' type='{type_}' id='q'><query xmlns='urn:xmpp:mam:2' queryid='f'>{body}</query></iq>")
    };
    let out = send(&mut s, &mam("bob@b.test/pc", "get", ""));
    assert!(out[0]
        .child("query", "urn:xmpp:mam:2")
        .unwrap()
        .child("x", NS_DATA)
        .is_some());
    send(
        &mut s,
        &mam(
            "bob@b.test/pc",
            "set",
            "<set xmlns='http://jabber.org/protocol/rsm'><max>5</max></set>",
        ),
    );
    let changes = s.take_changes();
    let [Change::Query {
        room,
        queryid,
        query,
        ..
    }] = changes.as_slice()
    else {
        panic!("{changes:?}")
    };
    assert_eq!(room, "room@conf.test");
    assert_eq!(queryid.as_deref(), Some("f"));
    assert_eq!(query.max, 5);
    let out = send(
        &mut s,
        &mam(
            "bob@b.test/pc",
            "set",
            "<set xmlns='http://jabber.org/protocol/rsm'><max>many</max></set>",
        ),
    );
    assert_eq!(condition(&out[0]), "bad-request");
    // An outcast reads nothing.
    admin(
        &mut s,
        "alice@a.test/phone",
        "<item jid='eve@e.test' affiliation='outcast'/>",
    );
    let out = send(&mut s, &mam("eve@e.test/x", "set", ""));
    assert_eq!(condition(&out[0]), "forbidden");
    // Without the database there is no archive, and the client is told so.
    let mut memory = service();
    instant_room(&mut memory);
    let out = send(&mut memory, "<iq from='alice@a.test/phone' to='room@conf.test' type='set' id='q'><query xmlns='urn:xmpp:mam:2'/></iq>");
    assert_eq!(condition(&out[0]), "service-unavailable");
}
