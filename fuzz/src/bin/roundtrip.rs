//! Framer + serializer round trip: every stanza the framer accepts after SOURCE_HEADER parses,
//! in a conforming namespace-aware parser, to one tree within that header, and what
//! `Stanza::bytes_for` forwards to a jabber:server stream and to a component stream parses to
//! the same tree (jabber:server read as jabber:component:accept where the router re-targets it).
use fedgate::xml::framer::Event;
use fedgate::xml::{ns, NsContext};
use fedgate_fuzz::xml_tree::first_stanza;
use fedgate_fuzz::{frame, limits, COMPONENT_HEADER, SERVER_HEADER, SOURCE_HEADER};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut input = SOURCE_HEADER.as_bytes().to_vec();
        input.extend_from_slice(data);
        let (events, _) = frame(&input, &[], limits());
        for event in events.iter().skip(1).take(4) {
            let Event::Stanza(s) = event else { continue };
            let raw = std::str::from_utf8(s.raw()).expect("the framer passed invalid UTF-8");
            let doc = format!("{SOURCE_HEADER}{raw}");
            let seen = first_stanza(&doc, None)
                .unwrap_or_else(|e| panic!("fedgate accepted what a parser refuses ({e}): {raw}"));
            let out = s.bytes_for(&NsContext::server());
            let out = std::str::from_utf8(&out).expect("UTF-8");
            let got = first_stanza(&format!("{SERVER_HEADER}{out}"), None)
                .unwrap_or_else(|e| panic!("forwarded to jabber:server unparsable ({e}): {out}"));
            assert_eq!(got, seen, "to jabber:server: {raw} became {out}");
            let out = s.bytes_for(&NsContext::component());
            let out = std::str::from_utf8(&out).expect("UTF-8");
            let got = first_stanza(&format!("{COMPONENT_HEADER}{out}"), None)
                .unwrap_or_else(|e| panic!("forwarded to a component unparsable ({e}): {out}"));
            let meant =
                first_stanza(&doc, Some((ns::SERVER, ns::COMPONENT))).expect("parsed above");
            assert_eq!(got, meant, "to a component: {raw} became {out}");
        }
    });
}
