//! The inbound negotiation driven without a socket: the peer's bytes go through the framer,
//! each event into [`Negotiation`], and the tests read the bytes it wants written.

use super::inbound::{Negotiation, Next, OurHeader, Refusal, State, MAX_SASL_FAILURES};
use crate::s2s::test_support::{config, context};
use crate::s2s::S2sContext;
use crate::xml::error::StreamErrorCondition;
use crate::xml::framer::{Event, Framer, Limits};
use crate::xml::stanza::Stanza;
use crate::xml::stream::StreamHeader;

const HEADER: &str = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>";

/// The peer's side of the wire: bytes in, framed events out.
struct Peer {
    framer: Framer,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            framer: Framer::new(Limits {
                max_stanza_bytes: 65536,
                max_depth: 16,
                max_attributes: 16,
            }),
        }
    }

    fn event(&mut self, xml: &str) -> Event {
        self.framer.read_buf().extend_from_slice(xml.as_bytes());
        self.framer.next_event().unwrap().expect("a whole event")
    }

    fn header(&mut self, xml: &str) -> StreamHeader {
        match self.event(xml) {
            Event::StreamOpen(h) => h,
            _ => panic!("expected a header"),
        }
    }

    fn element(&mut self, xml: &str) -> Stanza {
        match self.event(xml) {
            Event::Stanza(s) => s,
            _ => panic!("expected an element"),
        }
    }
}

/// A gateway context serving b.test, with `extra` in `[s2s]` (and after it).
fn ctx(extra: &str) -> (tempfile::TempDir, std::sync::Arc<S2sContext>) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(&config(dir.path(), "b.test", extra));
    (dir, ctx)
}

fn negotiation() -> Negotiation {
    Negotiation::new("127.0.0.1:1".parse().unwrap(), None)
}

/// The header step: our header, then the features as text.
fn open(n: &mut Negotiation, peer: &mut Peer, ctx: &S2sContext) -> (OurHeader, String) {
    let header = peer.header(HEADER);
    let ours = n.handle_header(&header, ctx).unwrap();
    n.send_features(&ours, ctx).unwrap();
    (ours, String::from_utf8(n.take_output()).unwrap())
}

fn refused(r: Result<impl std::fmt::Debug, Refusal>) -> StreamErrorCondition {
    r.expect_err("a refusal").condition
}

#[test]
fn a_header_is_answered_with_ours_and_the_features() {
    let (_dir, ctx) = ctx("");
    let mut n = negotiation();
    assert_eq!(n.state(), State::ExpectStreamHeader);
    let (ours, features) = open(&mut n, &mut Peer::new(), &ctx);
    assert_eq!(ours.from, "b.test");
    assert_eq!(ours.to.as_deref(), Some("a.test"));
    assert_eq!(ours.id, n.stream_id());
    assert!(ours.version);
    assert!(features.starts_with("<stream:features>"), "{features}");
    assert!(
        features.contains("<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"),
        "{features}"
    );
    assert!(
        features.contains("<sm xmlns='urn:xmpp:sm:3'/>"),
        "{features}"
    );
    assert!(
        !features.contains("starttls") && !features.contains("EXTERNAL"),
        "no certificate, no TLS: {features}"
    );
    assert_eq!(n.state(), State::ExpectAuth);
    assert_eq!((n.local(), n.remote()), (Some("b.test"), Some("a.test")));
}

#[test]
fn a_bad_header_is_refused_with_the_condition_that_says_why() {
    let (_dir, ctx) = ctx("");
    let header = |xml: &str| Peer::new().header(xml);
    let cases = [
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='1.0'>",
            StreamErrorCondition::InvalidNamespace,
        ),
        (
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='a.test' version='1.0'>",
            StreamErrorCondition::ImproperAddressing,
        ),
        (
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='c.test' version='1.0'>",
            StreamErrorCondition::HostUnknown,
        ),
        (
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' from='a..test' version='1.0'>",
            StreamErrorCondition::InvalidFrom,
        ),
    ];
    for (xml, condition) in cases {
        assert_eq!(
            refused(negotiation().handle_header(&header(xml), &ctx)),
            condition,
            "{xml}"
        );
    }
}

#[test]
fn an_element_before_the_header_or_a_second_header_is_bad_format() {
    let (_dir, ctx) = ctx("");
    let mut n = negotiation();
    let mut peer = Peer::new();
    peer.header(HEADER);
    let element = peer.element("<db:result from='a.test' to='b.test'>key</db:result>");
    assert_eq!(
        refused(n.handle_element(&element, &ctx)),
        StreamErrorCondition::BadFormat
    );
    let mut n = negotiation();
    open(&mut n, &mut Peer::new(), &ctx);
    assert_eq!(
        refused(n.handle_header(&Peer::new().header(HEADER), &ctx)),
        StreamErrorCondition::BadFormat
    );
}

#[test]
fn dialback_and_stanzas_are_the_sessions_and_dialback_establishes_the_stream() {
    let (_dir, ctx) = ctx("");
    let mut n = negotiation();
    let mut peer = Peer::new();
    open(&mut n, &mut peer, &ctx);
    let db = peer.element("<db:result from='a.test' to='b.test'>key</db:result>");
    assert_eq!(n.handle_element(&db, &ctx).unwrap(), Next::Session);
    assert!(n.take_output().is_empty());
    n.authenticated();
    assert_eq!(n.state(), State::Established);
    let message = peer.element("<message from='a@a.test' to='b@b.test'/>");
    assert_eq!(n.handle_element(&message, &ctx).unwrap(), Next::Session);
}

#[test]
fn sasl_external_not_offered_fails_and_the_third_failure_ends_the_stream() {
    let (_dir, ctx) = ctx("");
    let mut n = negotiation();
    let mut peer = Peer::new();
    open(&mut n, &mut peer, &ctx);
    for attempt in 1..=MAX_SASL_FAILURES {
        let auth = peer.element(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
        );
        let answer = n.handle_element(&auth, &ctx);
        // The <failure/> is written every time, the last one before the stream error.
        assert_eq!(
            n.take_output(),
            b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>"
        );
        if attempt < MAX_SASL_FAILURES {
            assert_eq!(answer.unwrap(), Next::Continue);
        } else {
            assert_eq!(refused(answer), StreamErrorCondition::PolicyViolation);
        }
    }
}

#[test]
fn with_tls_required_only_starttls_is_accepted_and_without_a_certificate_it_fails() {
    let (_dir, ctx) = ctx("\n[[federation.peer]]\ndomain = \"a.test\"\ntls = \"required\"\n");
    let mut n = negotiation();
    let mut peer = Peer::new();
    let (_, features) = open(&mut n, &mut peer, &ctx);
    assert_eq!(n.state(), State::ExpectStarttls);
    assert!(
        !features.contains("<sm ") && !features.contains("<limits"),
        "nothing before the required TLS but what leads to it: {features}"
    );
    let db = peer.element("<db:result from='a.test' to='b.test'>key</db:result>");
    assert_eq!(
        refused(n.handle_element(&db, &ctx)),
        StreamErrorCondition::PolicyViolation
    );
    let starttls = peer.element("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert_eq!(n.handle_element(&starttls, &ctx).unwrap(), Next::End);
    assert_eq!(
        n.take_output(),
        b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        "RFC 6120 §5.4.2.2: <failure/>, then the stream's end"
    );
}

#[test]
fn an_external_answer_without_a_request_is_refused() {
    let (_dir, ctx) = ctx("");
    let mut n = negotiation();
    open(&mut n, &mut Peer::new(), &ctx);
    assert_eq!(
        refused(n.handle_external_admission(Ok(()), &ctx)),
        StreamErrorCondition::UndefinedCondition
    );
}

mod outbound {
    //! The outbound authentication driven without a socket: the peer's header, features and
    //! answers go through the framer.

    use super::{ctx, Peer};
    use crate::s2s::connect::{ConnectError, Security};
    use crate::s2s::dialback::initiating::DialbackRefusal;
    use crate::s2s::negotiate::outbound::{Authentication, Next, State};
    use crate::s2s::outbound::{AuthMethod, OutboundError};
    use crate::s2s::S2sContext;

    /// The peer a.test's stream to us, as b.test: its header (with `xmlns:db` when
    /// `dialback`) and features.
    fn start(ctx: &S2sContext, dialback: bool) -> Result<(Authentication, Next), OutboundError> {
        let mut peer = Peer::new();
        let db = if dialback {
            " xmlns:db='jabber:server:dialback'"
        } else {
            ""
        };
        let header = peer.header(&format!("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'{db} from='a.test' to='b.test' id='s1' version='1.0'>"));
        let features = peer
            .element("<stream:features><sm xmlns='urn:xmpp:sm:3'/></stream:features>")
            .element()
            .unwrap();
        Authentication::start(
            ctx,
            "b.test",
            "a.test",
            "a.test:5269",
            header,
            features,
            &Security::default(),
            ctx.security.load().peer("a.test"),
        )
    }

    #[test]
    fn without_tls_dialback_sends_our_key_and_a_valid_answer_authenticates() {
        let (_dir, ctx) = ctx("");
        let (mut auth, next) = start(&ctx, true).unwrap();
        assert!(matches!(next, Next::Read));
        assert_eq!(auth.state(), State::ExpectDbResult);
        let key = ctx.secret.key("a.test", "b.test", "s1");
        assert_eq!(
            String::from_utf8(auth.take_output()).unwrap(),
            format!("<db:result from='b.test' to='a.test'>{key}</db:result>")
        );
        let mut peer = Peer::new();
        peer.header("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'>");
        let valid = peer.element("<db:result from='a.test' to='b.test' type='valid'/>");
        match auth.handle_element(&valid, &ctx).unwrap() {
            Next::Authenticated(AuthMethod::Dialback, features) => {
                assert!(
                    features.child("sm", "urn:xmpp:sm:3").is_some(),
                    "the features offered before"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(auth.state(), State::Authenticated);
    }

    #[test]
    fn an_invalid_answer_refuses_and_an_answer_for_another_pair_fails_the_stream() {
        let (_dir, ctx) = ctx("");
        let mut peer = Peer::new();
        peer.header("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'>");
        let (mut auth, _) = start(&ctx, true).unwrap();
        let invalid = peer.element("<db:result from='a.test' to='b.test' type='invalid'/>");
        assert!(matches!(
            auth.handle_element(&invalid, &ctx),
            Err(OutboundError::DialbackRefused {
                refusal: DialbackRefusal::Invalid,
                ..
            })
        ));
        let (mut auth, _) = start(&ctx, true).unwrap();
        let other = peer.element("<db:result from='c.test' to='b.test' type='valid'/>");
        assert!(matches!(
            auth.handle_element(&other, &ctx),
            Err(OutboundError::Connect(ConnectError::Stream { .. }))
        ));
    }

    #[test]
    fn a_peer_without_dialback_or_usable_external_leaves_no_method() {
        let (_dir, ctx) = ctx("");
        assert!(matches!(
            start(&ctx, false),
            Err(OutboundError::NoAuthentication { .. })
        ));
    }
}

/// A TLS session without a peer certificate, as after STARTTLS with a peer that presents none.
fn tls() -> crate::tls::TlsInfo {
    crate::tls::TlsInfo {
        version: "TLSv1.3",
        cipher: "TLS13_AES_256_GCM_SHA384",
        alpn: None,
        peer_chain: std::sync::Arc::from([]),
        handshake: None,
    }
}

#[test]
fn bidi_is_offered_over_tls_only_and_its_request_is_taken_whatever_its_children() {
    let (_dir, ctx) = ctx("[[federation.peer]]\ndomain = \"a.test\"\ntls = \"optional\"\n");
    // Without TLS: not offered, and a request is refused with the reason.
    let mut n = negotiation();
    let mut peer = Peer::new();
    let (_, features) = open(&mut n, &mut peer, &ctx);
    assert!(!features.contains("bidi"), "{features}");
    let request = peer.element("<bidi xmlns='urn:xmpp:bidi'/>");
    assert_eq!(
        refused(n.handle_element(&request, &ctx)),
        StreamErrorCondition::UnsupportedStanzaType
    );
    assert!(!n.bidi());

    // Over TLS: offered before authentication; a request with children is taken.
    let mut n = Negotiation::new("127.0.0.1:1".parse().unwrap(), Some(tls()));
    let mut peer = Peer::new();
    let (_, features) = open(&mut n, &mut peer, &ctx);
    assert!(
        features.contains("<bidi xmlns='urn:xmpp:features:bidi'/>"),
        "{features}"
    );
    let request = peer.element("<bidi xmlns='urn:xmpp:bidi'><limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>10000</max-bytes></limits></bidi>");
    assert_eq!(n.handle_element(&request, &ctx).unwrap(), Next::Bidi);
    assert!(n.bidi());
    assert!(n.take_output().is_empty(), "nothing answers it");
}

#[test]
fn bidi_false_for_the_peer_or_in_s2s_is_neither_offered_nor_taken() {
    for extra in [
        "bidi = false\n",
        "[[federation.peer]]\ndomain = \"a.test\"\nbidi = false\n",
    ] {
        let (_dir, ctx) = ctx(extra);
        let mut n = Negotiation::new("127.0.0.1:1".parse().unwrap(), Some(tls()));
        let mut peer = Peer::new();
        let (_, features) = open(&mut n, &mut peer, &ctx);
        assert!(!features.contains("bidi"), "{extra}: {features}");
        let request = peer.element("<bidi xmlns='urn:xmpp:bidi'/>");
        assert_eq!(
            refused(n.handle_element(&request, &ctx)),
            StreamErrorCondition::UnsupportedStanzaType,
            "{extra}"
        );
    }
}
