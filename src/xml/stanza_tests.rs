//! Stanzas: facts, re-targeting between stream namespaces, bounces, trees.

use super::*;
use crate::xml::{Event, Framer};

fn parse(xml: &str, ctx: &NsContext) -> Stanza {
    Stanza::parse(Bytes::copy_from_slice(xml.as_bytes()), ctx).expect(xml)
}

fn s2s(xml: &str) -> Stanza {
    parse(xml, &NsContext::server())
}

fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap()
}

#[test]
fn facts_borrow_or_own() {
    let s = s2s("<message to='a@b' from='c&amp;d@e' id='1' type='chat'><body/></message>");
    assert!(matches!(s.facts.to, Some(Val::Span(..))));
    assert!(matches!(s.facts.from, Some(Val::Owned(_))));
    assert_eq!(s.from(), Some("c&d@e"));
    assert_eq!(s.attr("to").as_deref(), Some("a@b"));
    assert_eq!(s.attr("from").as_deref(), Some("c&d@e"));
    assert_eq!(s.attr("nope"), None);
    let r = s2s("<db:result from='a' to='b' type='valid'/>");
    assert_eq!(r.kind(), Kind::DbResult);
    assert_eq!(r.attr("type").as_deref(), Some("valid"));
    assert_eq!(r.type_(), Some("valid"));
}

#[test]
fn kinds() {
    let server = NsContext::server();
    let component = NsContext::component();
    let k = |xml: &str, ctx: &NsContext| parse(xml, ctx).kind();
    assert_eq!(k("<message/>", &server), Kind::Message);
    assert_eq!(k("<presence/>", &component), Kind::Presence);
    assert_eq!(k("<iq xmlns='jabber:server'/>", &server), Kind::Iq);
    assert_eq!(k("<message xmlns='jabber:client'/>", &server), Kind::Other);
    assert_eq!(k("<db:verify id='x'/>", &server), Kind::DbVerify);
    assert_eq!(k("<stream:error/>", &component), Kind::StreamError);
    assert_eq!(k("<handshake>abc</handshake>", &component), Kind::Handshake);
    assert_eq!(k("<handshake>abc</handshake>", &server), Kind::Other);
    assert_eq!(
        k(
            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            &server
        ),
        Kind::Other
    );
}

#[test]
fn parse_rejects_incomplete_and_trailing() {
    let ctx = NsContext::server();
    let p = |xml: &'static str| Stanza::parse(Bytes::from_static(xml.as_bytes()), &ctx);
    assert_eq!(p("<message>"), Err(XmlError::nwf("incomplete element")));
    assert!(matches!(p("<a/><b/>"), Err(XmlError::BadFormat { .. })));
    assert!(matches!(p("</a>"), Err(XmlError::NotWellFormed { .. })));
    assert!(matches!(p(" <a/>"), Err(XmlError::BadFormat { .. })));
}

#[test]
fn common_stanza_passes_through_unchanged() {
    let server = NsContext::server();
    let component = NsContext::component();
    let s = s2s("<message to='a@c.b' from='x@y'><body>hi</body>\
         <x:data xmlns:x='urn:a'><x:f/></x:data><foo xmlns='urn:b'/></message>");
    assert!(s.is_portable_to(&component));
    assert!(s.is_portable_to(&server));
    let out = s.bytes_for(&component);
    assert_eq!(out, s.raw());
    // Same allocation: no copy.
    assert_eq!(out.as_ptr(), s.raw().as_ptr());
}

#[test]
fn explicit_content_namespace_is_rewritten() {
    let s = s2s("<message xmlns='jabber:server' to='a@c.b'><body>x</body></message>");
    assert!(s.is_portable_to(&NsContext::server()));
    assert!(!s.is_portable_to(&NsContext::component()));
    let out = s.bytes_for(&NsContext::component());
    assert_eq!(
        text(&out),
        "<message xmlns='jabber:component:accept' to='a@c.b'><body>x</body></message>"
    );
    let moved = Stanza::parse(out, &NsContext::component()).unwrap();
    assert_eq!(moved.kind(), Kind::Message);
    // And back.
    let back = moved.bytes_for(&NsContext::server());
    assert_eq!(text(&back), text(s.raw()));
    // A prefix bound to the content namespace on the element itself.
    let s = s2s("<s:iq xmlns:s='jabber:server' type=\"it's\"/>");
    assert_eq!(s.kind(), Kind::Iq);
    assert_eq!(
        text(&s.bytes_for(&NsContext::component())),
        "<s:iq xmlns:s='jabber:component:accept' type=\"it's\"/>"
    );
}

#[test]
fn inherited_prefixes_are_declared() {
    let s = s2s("<message to='a@c.b'><db:foo/><stream:bar/></message>");
    let component = NsContext::component();
    // `stream` is bound identically on component streams; `db` is not.
    assert!(!s.is_portable_to(&component));
    assert!(s.is_portable_to(&NsContext::server()));
    let out = s.bytes_for(&component);
    assert_eq!(
        text(&out),
        "<message to='a@c.b' xmlns:db='jabber:server:dialback'><db:foo/><stream:bar/></message>"
    );
    Stanza::parse(out, &component).unwrap();
    // A header prefix bound to the source content namespace maps to the
    // target's.
    let ctx = NsContext::new(ns::SERVER, &[("j", ns::SERVER)]);
    let s = parse("<j:message><j:body/></j:message>", &ctx);
    assert_eq!(s.kind(), Kind::Message);
    assert_eq!(
        text(&s.bytes_for(&NsContext::component())),
        "<j:message xmlns:j='jabber:component:accept'><j:body/></j:message>"
    );
    // Prefixes used only in attributes count too.
    let s = s2s("<message db:x='1'/>");
    assert!(!s.is_portable_to(&component));
}

#[test]
fn inherited_prefixes_recorded_by_framer() {
    let mut framer = Framer::new(Default::default());
    framer.feed(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
          xmlns:db='jabber:server:dialback'><message><db:foo/></message><message/>",
    );
    let mut out = Vec::new();
    while let Some(e) = framer.next_event().unwrap() {
        out.push(e);
    }
    let [Event::StreamOpen(_), Event::Stanza(a), Event::Stanza(b)] = &out[..] else {
        panic!("{out:?}")
    };
    assert!(!a.is_portable_to(&NsContext::component()));
    assert!(b.is_portable_to(&NsContext::component()));
    // Interpreted in the framer's context, and in an equal one.
    assert!(a.is_portable_to(framer.ns_context()));
    assert!(a.is_portable_to(&NsContext::server()));
}

#[test]
fn declared_payloads_pass_through() {
    let component = NsContext::component();
    for xml in [
        "<message><x:data xmlns:x='urn:a'/></message>",
        "<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>",
        "<message><db:x xmlns:db='urn:other'/></message>",
    ] {
        let s = s2s(xml);
        assert!(s.is_portable_to(&component), "{xml}");
        assert_eq!(text(&s.bytes_for(&component)), xml);
    }
}

#[test]
fn bounces() {
    let msg =
        s2s("<message from='a@x' to='b@y' id='m&amp;1' type='chat'><body>secret</body></message>");
    let b = msg
        .bounce(
            StanzaErrorCondition::RemoteServerNotFound,
            Some("no <route>"),
        )
        .unwrap();
    assert_eq!(
        text(b.raw()),
        "<message from='b@y' to='a@x' id='m&amp;1' type='error'><error type='cancel'>\
         <remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no &lt;route&gt;</text>\
         </error></message>"
    );
    assert_eq!(b.kind(), Kind::Message);
    assert_eq!(b.to(), Some("a@x"));
    assert_eq!(b.from(), Some("b@y"));
    assert_eq!(b.id(), Some("m&1"));
    assert_eq!(b.type_(), Some("error"));
    // Bouncing a bounce is not allowed.
    assert!(b
        .bounce(StanzaErrorCondition::ServiceUnavailable, None)
        .is_none());

    let p = s2s("<presence from='a@x' to='b@y'/>")
        .bounce(StanzaErrorCondition::RemoteServerTimeout, None)
        .unwrap();
    assert_eq!(
        text(p.raw()),
        "<presence from='b@y' to='a@x' type='error'><error type='wait'>\
         <remote-server-timeout xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
    );
    let iq = s2s("<iq from='a@x' to='b@y' id='q' type='get'><query xmlns='urn:q'/></iq>")
        .bounce(StanzaErrorCondition::ServiceUnavailable, None)
        .unwrap();
    assert_eq!(iq.kind(), Kind::Iq);
    assert!(!text(iq.raw()).contains("query"));
    // Component streams: the bounce inherits that content namespace.
    let c = parse(
        "<iq from='a@x' to='b@y' id='q' type='set'/>",
        &NsContext::component(),
    );
    let cb = c.bounce(StanzaErrorCondition::ItemNotFound, None).unwrap();
    assert_eq!(cb.source_context().content_ns(), ns::COMPONENT);
    assert_eq!(cb.kind(), Kind::Iq);

    for xml in [
        "<iq from='a@x' to='b@y' id='q' type='result'/>",
        "<iq from='a@x' to='b@y' id='q' type='error'/>",
        "<message from='a@x' to='b@y' type='error'/>",
        "<presence type='error'/>",
        "<db:result from='a' to='b'>k</db:result>",
        "<message xmlns='jabber:client' to='b@y'/>",
    ] {
        assert!(
            s2s(xml)
                .bounce(StanzaErrorCondition::ServiceUnavailable, None)
                .is_none(),
            "{xml}"
        );
    }
}

#[test]
fn element_of_features() {
    let mut framer = Framer::new(Default::default());
    framer.feed(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>\
          <stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\
          <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
    );
    framer.next_event().unwrap();
    let Some(Event::Stanza(s)) = framer.next_event().unwrap() else {
        panic!()
    };
    let e = s.element().unwrap();
    assert_eq!(e.name, "features");
    assert_eq!(e.ns, ns::STREAM);
    let db = e.child("dialback", ns::DIALBACK_FEATURE).unwrap();
    assert_eq!(
        db.child("errors", ns::DIALBACK_FEATURE).unwrap().name,
        "errors"
    );
    let tls = e.child("starttls", ns::TLS).unwrap();
    assert!(tls.child("required", ns::TLS).is_some());
    assert_eq!(e.children().count(), 2);
    assert!(e.child("dialback", ns::SERVER).is_none());
}

#[test]
fn element_of_db_result() {
    let s = s2s("<db:result from='a.example' to='b.example' xml:lang='en'>\
         b4835385f37f&amp;<![CDATA[<x>]]>&#x41;</db:result>");
    let e = s.element().unwrap();
    assert_eq!(e.name, "result");
    assert_eq!(e.ns, ns::DIALBACK);
    assert_eq!(e.attr("from"), Some("a.example"));
    assert_eq!(e.attr("xml:lang"), Some("en"));
    assert_eq!(e.text(), "b4835385f37f&<x>A");
    let m = s2s("<message><body>a</body>x<y xmlns='urn:y'>z</y>b</message>")
        .element()
        .unwrap();
    assert_eq!(m.ns, ns::SERVER);
    assert_eq!(m.text(), "xb");
    assert_eq!(m.child("body", ns::SERVER).unwrap().text(), "a");
    assert_eq!(m.child("y", "urn:y").unwrap().text(), "z");
}
