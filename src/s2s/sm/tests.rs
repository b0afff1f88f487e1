use std::time::Duration;

use tokio::time::Instant;

use super::receiving::{HOLD_AFTER, SETTLE};
use super::*;
use crate::xml::stanza::NsContext;

fn stanza(xml: &str) -> Stanza {
    Stanza::parse(
        bytes::Bytes::copy_from_slice(xml.as_bytes()),
        &NsContext::server(),
    )
    .unwrap()
}

fn stanza_of(bytes: &[u8]) -> Stanza {
    stanza(std::str::from_utf8(bytes).unwrap())
}

fn domains(d: &[&str]) -> Vec<String> {
    d.iter().map(|d| d.to_string()).collect()
}

const TTL: Duration = Duration::from_secs(60);

#[test]
fn kept_counters_are_taken_once() {
    let store = ResumeStore::default();
    store.keep("id1", 7, domains(&["a.test"]), TTL);
    let r = store.take("id1", |d| d == "a.test").unwrap();
    assert_eq!(r.h, 7);
    assert_eq!(r.domains, ["a.test"]);
    assert!(store.take("id1", |_| true).is_none(), "taken once");
    assert!(store.take("other", |_| true).is_none());
}

#[test]
fn counters_expire_after_their_ttl() {
    let store = ResumeStore::default();
    let t0 = Instant::now();
    store.keep_at(t0, "id1", 1, domains(&["a.test"]), TTL);
    store.keep_at(t0, "id2", 2, domains(&["a.test"]), TTL);
    let just_before = t0 + TTL - Duration::from_millis(1);
    assert_eq!(store.take_at(just_before, "id1", |_| true).unwrap().h, 1);
    assert!(
        store.take_at(t0 + TTL, "id2", |_| true).is_none(),
        "expired"
    );
    assert!(
        store.is_empty(),
        "an expired entry found by take is dropped"
    );
}

#[test]
fn every_domain_of_the_dropped_stream_must_be_authenticated() {
    let store = ResumeStore::default();
    store.keep("id1", 3, domains(&["a.test", "c.test"]), TTL);
    assert!(store.take("id1", |d| d == "a.test").is_none());
    assert!(store.take("id1", |d| d == "c.test").is_none());
    assert_eq!(store.len(), 1, "left for its owner");
    let r = store.take("id1", |d| d == "a.test" || d == "c.test");
    assert_eq!(r.unwrap().h, 3);
}

#[test]
fn the_store_is_capped_and_pruned_when_full() {
    let store = ResumeStore::default();
    let t0 = Instant::now();
    for i in 0..MAX_KEPT {
        store.keep_at(t0, &format!("id{i}"), 0, domains(&["a.test"]), TTL);
    }
    store.keep_at(t0, "one-too-many", 0, domains(&["a.test"]), TTL);
    assert_eq!(store.len(), MAX_KEPT);
    assert!(
        store.take_at(t0, "one-too-many", |_| true).is_none(),
        "refused"
    );
    // An id already kept may be updated even when full.
    store.keep_at(t0, "id0", 9, domains(&["a.test"]), TTL);
    assert_eq!(store.take_at(t0, "id0", |_| true).unwrap().h, 9);
    store.keep_at(t0, "id0", 0, domains(&["a.test"]), TTL);
    // Once the old ones expire, a full store makes room.
    let later = t0 + TTL;
    store.keep_at(later, "fresh", 4, domains(&["a.test"]), TTL);
    assert_eq!(store.len(), 1);
    assert_eq!(store.take_at(later, "fresh", |_| true).unwrap().h, 4);
}

#[tokio::test]
async fn resume_prefers_kept_counters_then_asks_the_live_stream() {
    let store = std::sync::Arc::new(ResumeStore::default());
    let a = domains(&["a.test"]);
    assert_eq!(store.resume("none", &a).await, None);

    store.keep("kept", 5, a.clone(), TTL);
    assert_eq!(store.resume("kept", &a).await, Some(5));

    // A live stream of a.test hands over its h to a stream of a.test only.
    let mut live = store.register("live");
    let answering = tokio::spawn(async move {
        for _ in 0..2 {
            let t = live.takeovers.recv().await.unwrap();
            if t.domains.iter().any(|d| d == "a.test") {
                t.reply.send(11).unwrap();
            }
        }
        live
    });
    assert_eq!(store.resume("live", &domains(&["c.test"])).await, None);
    assert_eq!(store.resume("live", &a).await, Some(11));
    let live = answering.await.unwrap();

    // A newer registration under the same id is not removed by the older one's end.
    let newer = store.register("live");
    store.unregister("live", live.session);
    assert!(store.live.streams.contains_key("live"));
    store.unregister("live", newer.session);
    assert!(!store.live.streams.contains_key("live"));
}

#[tokio::test]
async fn a_live_stream_that_ended_meanwhile_is_found_kept() {
    let store = std::sync::Arc::new(ResumeStore::default());
    let a = domains(&["a.test"]);
    let live = store.register("id");
    let s = store.clone();
    let ending = tokio::spawn(async move {
        // The stream drops instead of answering: keep, then unregister (as inbound does).
        tokio::task::yield_now().await;
        s.keep("id", 8, domains(&["a.test"]), TTL);
        s.unregister("id", live.session);
        drop(live);
    });
    assert_eq!(store.resume("id", &a).await, Some(8));
    ending.await.unwrap();
}

#[test]
fn requests_are_parsed_and_bad_counts_refused() {
    let p = |xml: &str| parse(&stanza(xml));
    assert_eq!(
        p("<enable xmlns='urn:xmpp:sm:3'/>"),
        Ok(Request::Enable { resume: false })
    );
    for yes in ["true", "1"] {
        assert_eq!(
            p(&format!("<enable xmlns='urn:xmpp:sm:3' resume='{yes}'/>")),
            Ok(Request::Enable { resume: true })
        );
    }
    assert_eq!(
        p("<enable xmlns='urn:xmpp:sm:3' resume='false'/>"),
        Ok(Request::Enable { resume: false })
    );
    assert_eq!(
        p("<resume xmlns='urn:xmpp:sm:3' previd='x1' h='4294967295'/>"),
        Ok(Request::Resume {
            previd: "x1".into(),
            h: u32::MAX
        })
    );
    assert_eq!(p("<r xmlns='urn:xmpp:sm:3'/>"), Ok(Request::AckRequest));
    assert_eq!(
        p("<a xmlns='urn:xmpp:sm:3' h='12'/>"),
        Ok(Request::Ack { h: 12 })
    );
    let bad = |element, attribute| Err(SmError::BadAttribute { element, attribute });
    assert_eq!(p("<a xmlns='urn:xmpp:sm:3'/>"), bad("a", "h"));
    assert_eq!(p("<a xmlns='urn:xmpp:sm:3' h='-1'/>"), bad("a", "h"));
    assert_eq!(
        p("<a xmlns='urn:xmpp:sm:3' h='4294967296'/>"),
        bad("a", "h")
    );
    assert_eq!(
        p("<resume xmlns='urn:xmpp:sm:3' previd='x'/>"),
        bad("resume", "h")
    );
    assert_eq!(
        p("<resume xmlns='urn:xmpp:sm:3' h='0'/>"),
        bad("resume", "previd")
    );
    assert_eq!(
        p("<enabled xmlns='urn:xmpp:sm:3'/>"),
        Err(SmError::Unexpected {
            name: "enabled".into()
        })
    );
}

#[test]
fn the_count_wraps_at_2_pow_32() {
    let mut r = Receiving::new(None, u32::MAX);
    drop(r.ticket());
    assert_eq!(r.h(), 0);
    drop(r.ticket());
    assert_eq!(r.h(), 1);
}

#[test]
fn a_stanza_counts_in_h_only_once_it_has_left_the_gateway() {
    let mut r = Receiving::new(None, 0);
    let first = r.ticket().unwrap();
    let second = r.ticket().unwrap();
    let third = r.ticket().unwrap();
    drop(third);
    drop(second);
    assert_eq!(r.h(), 0, "the first is still in flight");
    assert_eq!(r.in_flight(), 3);
    // `<r/>` now is answered short, and an `<a/>` is owed.
    assert_eq!(r.answer(), 0);
    assert!(r.owes());
    assert_eq!(r.caught_up(), None);
    drop(first);
    assert_eq!(
        r.caught_up(),
        Some(3),
        "the unasked <a/> once all three left"
    );
    assert!(!r.owes(), "only one");
    assert_eq!(r.caught_up(), None);
    // An answer that is complete owes nothing.
    drop(r.ticket());
    assert_eq!(r.answer(), 4);
    assert!(!r.owes());
}

#[test]
fn an_idle_stream_lets_its_window_go_only_with_nothing_in_flight() {
    let mut r = Receiving::new(None, 7);
    let ticket = r.ticket().unwrap();
    r.release_if_idle();
    assert_eq!(r.h(), 7, "kept: one is in flight");
    drop(ticket);
    r.release_if_idle();
    assert_eq!(r.h(), 8);
    assert_eq!(r.in_flight(), 0);
    // A new window starts where the count is.
    let ticket = r.ticket().unwrap();
    assert_eq!(ticket.seq(), 8);
}

#[tokio::test(start_paused = true)]
async fn a_full_window_that_does_not_move_for_a_while_is_passed() {
    let held = prometheus::IntCounter::new("held", "held").unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut r = Receiving::new(None, 0);
    let size = crate::ack::S2S_WINDOW;
    let mut tickets: Vec<_> = (0..size).map(|_| r.ticket().unwrap()).collect();
    assert!(r.ticket().is_none(), "the window is full");
    // The first ten are slow (one backend); the rest left (another backend).
    let slow: Vec<_> = tickets.drain(..10).collect();
    drop(tickets);
    let started = tokio::time::Instant::now();
    let ticket = r.wait_for_room(&held, &stop).await.expect("room");
    assert_eq!(started.elapsed(), HOLD_AFTER);
    assert_eq!(held.get(), 10);
    assert_eq!(ticket.seq(), size);
    assert_eq!(r.h(), size, "h passed the slow ones");
    drop(slow);
    assert_eq!(r.h(), size, "they finish later without moving h again");
    // A window none of whose stanzas leaves (a destination that takes nothing) is passed
    // whole after the same wait.
    let stuck: Vec<_> = (1..size).map(|_| r.ticket().unwrap()).collect();
    assert!(r.ticket().is_none());
    let started = tokio::time::Instant::now();
    let _next = r.wait_for_room(&held, &stop).await.expect("room");
    assert_eq!(started.elapsed(), HOLD_AFTER);
    assert_eq!(held.get(), 10 + u64::from(size));
    drop((ticket, stuck));
}

#[tokio::test(start_paused = true)]
async fn a_full_window_whose_oldest_keep_leaving_paces_the_stream_without_holding() {
    let held = prometheus::IntCounter::new("held", "held").unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut r = Receiving::new(None, 0);
    let size = crate::ack::S2S_WINDOW;
    let mut tickets: std::collections::VecDeque<_> =
        (0..size).map(|_| r.ticket().unwrap()).collect();
    // A slow destination: the oldest leaves every 200 ms (less than HOLD_AFTER).
    let slow = tokio::spawn(async move {
        while let Some(t) = tickets.pop_front() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(t);
        }
    });
    let started = tokio::time::Instant::now();
    let mut taken = Vec::new();
    for _ in 0..5 {
        taken.push(r.wait_for_room(&held, &stop).await.expect("room"));
    }
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(1000),
        "one in as one leaves"
    );
    assert_eq!(held.get(), 0, "nothing passed unfinished");
    assert_eq!(r.h(), 5);
    slow.abort();
}
#[tokio::test(start_paused = true)]
async fn settling_waits_for_what_is_in_flight_at_most_its_patience() {
    let mut r = Receiving::new(None, 0);
    let first = r.ticket().unwrap();
    let second = r.ticket().unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(first);
    });
    let started = tokio::time::Instant::now();
    assert_eq!(r.settle(SETTLE).await, 1, "the second never leaves");
    assert_eq!(started.elapsed(), SETTLE);
    drop(second);
    assert_eq!(r.settle(SETTLE).await, 2);
    assert_eq!(started.elapsed(), SETTLE, "nothing in flight: no wait");
}

#[test]
fn a_peer_may_acknowledge_only_what_was_sent() {
    assert_eq!(check_handled(0, 0, 0), Ok(()));
    assert_eq!(check_handled(5, 0, 5), Ok(()));
    // Part of what was sent: allowed (h == sent would refuse it).
    assert_eq!(check_handled(3, 0, 5), Ok(()));
    assert_eq!(
        check_handled(1, 0, 0),
        Err(SmError::HandledCountTooHigh { h: 1, sent: 0 })
    );
    assert_eq!(
        check_handled(6, 0, 5),
        Err(SmError::HandledCountTooHigh { h: 6, sent: 5 })
    );
    // Less than acknowledged before is no count at all.
    assert_eq!(
        check_handled(2, 3, 5),
        Err(SmError::HandledCountTooHigh { h: 2, sent: 5 })
    );
    // Across the wrap at 2^32: 4 sent since u32::MAX - 1 was acknowledged.
    let acked = u32::MAX - 1;
    let sent = acked.wrapping_add(4);
    assert_eq!(check_handled(u32::MAX, acked, sent), Ok(()));
    assert_eq!(check_handled(2, acked, sent), Ok(()));
    assert_eq!(
        check_handled(3, acked, sent),
        Err(SmError::HandledCountTooHigh { h: 3, sent })
    );
}

#[test]
fn wire_formats() {
    assert_eq!(
        enabled(Some("abc"), Duration::from_secs(300)),
        b"<enabled xmlns='urn:xmpp:sm:3' id='abc' resume='true' max='300'/>"
    );
    assert_eq!(
        enabled(Some("abc"), Duration::from_millis(10)),
        b"<enabled xmlns='urn:xmpp:sm:3' id='abc' resume='true' max='1'/>"
    );
    assert_eq!(enabled(None, TTL), b"<enabled xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(
        resumed("a'b", 3),
        b"<resumed xmlns='urn:xmpp:sm:3' previd='a&apos;b' h='3'/>"
    );
    assert_eq!(
        failed(StanzaErrorCondition::ItemNotFound, Some(0)),
        b"<failed xmlns='urn:xmpp:sm:3' h='0'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
    assert_eq!(
        failed(StanzaErrorCondition::UnexpectedRequest, None),
        b"<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    );
    assert_eq!(
        ack(4_000_000_000),
        b"<a xmlns='urn:xmpp:sm:3' h='4000000000'/>"
    );
    // The sending side's elements are what the receiving side parses.
    assert_eq!(parse(&stanza_of(REQUEST)), Ok(Request::AckRequest));
    assert_eq!(
        parse(&stanza_of(ENABLE)),
        Ok(Request::Enable { resume: true })
    );
    assert_eq!(
        resume("a'b", 0),
        b"<resume xmlns='urn:xmpp:sm:3' previd='a&apos;b' h='0'/>"
    );
    assert_eq!(
        parse(&stanza_of(&resume("a'b", 7))),
        Ok(Request::Resume {
            previd: "a'b".into(),
            h: 7
        })
    );
}

#[test]
fn handled_count_too_high_is_an_undefined_condition_with_the_counts() {
    let e = SmError::HandledCountTooHigh { h: 3, sent: 0 };
    assert_eq!(
        StreamErrorCondition::from(&e),
        StreamErrorCondition::UndefinedCondition
    );
    let raw = String::from_utf8(stream_error(&e)).unwrap();
    assert_eq!(
        raw,
        "<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>the peer acknowledged 3 stanzas, but 0 were sent</text>\
         <handled-count-too-high xmlns='urn:xmpp:sm:3' h='3' send-count='0'/></stream:error>"
    );
    let bad = SmError::BadAttribute {
        element: "a",
        attribute: "h",
    };
    assert_eq!(
        StreamErrorCondition::from(&bad),
        StreamErrorCondition::BadFormat
    );
    assert!(!String::from_utf8(stream_error(&bad))
        .unwrap()
        .contains("urn:xmpp:sm:3"));
}

#[test]
fn offered_and_h_of() {
    let features = stanza("<stream:features xmlns:stream='http://etherx.jabber.org/streams'><sm xmlns='urn:xmpp:sm:3'/></stream:features>");
    assert!(offered(&features.element().unwrap()));
    assert_eq!(h_of(&stanza("<a xmlns='urn:xmpp:sm:3' h='9'/>")), Some(9));
    assert_eq!(
        h_of(&stanza(
            "<resumed xmlns='urn:xmpp:sm:3' previd='x' h=' 4294967295 '/>"
        )),
        Some(u32::MAX)
    );
    assert_eq!(h_of(&stanza("<a xmlns='urn:xmpp:sm:3'/>")), None);
    assert_eq!(h_of(&stanza("<a xmlns='urn:xmpp:sm:3' h='-1'/>")), None);
}

fn carry_of(n: usize) -> (Carry, prometheus::IntGauge) {
    let gauge = prometheus::IntGauge::new("unacked", "test").unwrap();
    let mut carry = Carry::new(gauge.clone());
    for i in 0..n {
        carry.push(stanza(&format!("<message to='b.test' id='m{i}'/>")));
    }
    (carry, gauge)
}

#[test]
fn a_confirmation_releases_the_oldest_stanzas_and_the_rest_stay_unconfirmed() {
    let (mut carry, gauge) = carry_of(5);
    // A ping written after three stanzas is answered: those three were read.
    carry.unconfirmed = 5;
    carry.release(3);
    assert_eq!(gauge.get(), 2);
    let left: Vec<_> = carry
        .unacked
        .iter()
        .map(|s| s.id().unwrap().to_string())
        .collect();
    assert_eq!(left, ["m3", "m4"], "the newest stay, in order");
    assert_eq!(
        carry.unconfirmed, 2,
        "released stanzas are no longer duplicates-possible"
    );
    // An answer never releases more than there is.
    carry.release(10);
    assert!(carry.unacked.is_empty());
    assert_eq!((gauge.get(), carry.unconfirmed), (0, 0));
}

#[test]
fn without_resumption_only_what_was_not_acknowledged_is_kept_for_resending() {
    let (mut carry, gauge) = carry_of(5);
    carry.ack(2).unwrap();
    // The link drops and the peer cannot resume: what is resent is what remains.
    let left: Vec<_> = carry
        .unacked
        .iter()
        .map(|s| s.id().unwrap().to_string())
        .collect();
    assert_eq!(left, ["m2", "m3", "m4"]);
    assert_eq!(gauge.get(), 3);
    assert_eq!(
        carry.ack(6),
        Err("the peer acknowledged h=6, outside 2..=5 (acknowledged before, sent so far)".into())
    );
    assert!(carry.ack(1).is_err(), "an h that goes back");
    drop(carry);
    assert_eq!(gauge.get(), 0, "the gauge follows the carry");
}

#[test]
fn a_shared_link_hands_each_pair_its_own_unacknowledged_stanzas_in_order() {
    let gauge = prometheus::IntGauge::new("unacked", "test").unwrap();
    let mut link = Carry::new(gauge.clone());
    for (i, from) in ["a.test", "c.a.test", "a.test", "c.a.test", "a.test"]
        .iter()
        .enumerate()
    {
        link.push(stanza(&format!(
            "<message from='x@{from}' to='b.test' id='m{i}'/>"
        )));
    }
    // The three oldest were written on a link that dropped before a ping confirmed them.
    link.unconfirmed = 3;
    let mut guest = link.empty_like();
    link.split_off(&mut guest, |s| s.from() == Some("x@c.a.test"));
    let ids = |c: &Carry| -> Vec<String> {
        c.unacked
            .iter()
            .map(|s| s.id().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&link), ["m0", "m2", "m4"]);
    assert_eq!(ids(&guest), ["m1", "m3"]);
    assert_eq!(
        (link.unconfirmed, guest.unconfirmed),
        (2, 1),
        "m0 and m2 for the link, m1 for the guest"
    );
    assert_eq!(gauge.get(), 5, "moved, not counted twice");
    drop(guest);
    assert_eq!(gauge.get(), 3);
}
