//! Outbound piggybacking (XEP-0220 §2.6.1): one outbound link carries every local domain that
//! writes to a remote domain, each pair in order; a peer that refuses an extra pair, a full
//! link or `piggyback = false` gives the pair a link of its own, and nothing is lost.

use std::net::IpAddr;

use crate::harness::*;

const COMP: &str = "comp.a.test";
const COMP_SECRET: &str = "comp-secret";

/// Outbound links a opened, and inbound streams b authenticated, as their metrics say.
async fn links(a: &Instance) -> f64 {
    metric_or_zero(
        &a.metrics().await,
        "fedgate_outbound_attempts_total{result=\"established\"}",
    )
}

async fn accepted(b: &Instance) -> f64 {
    metric_or_zero(
        &b.metrics().await,
        "fedgate_s2s_sessions{direction=\"inbound\",state=\"established\"}",
    )
}

fn piggybacked(m: &str, result: &str) -> f64 {
    metric_or_zero(
        m,
        &format!("fedgate_s2s_piggyback_total{{result=\"{result}\"}}"),
    )
}

/// `n` messages from each of `senders` (a backend and its domain) to `to`, interleaved.
async fn send_interleaved(senders: &mut [(&mut RawStream, &str)], to: &str, n: usize) {
    for i in 0..n {
        for (backend, domain) in senders.iter_mut() {
            backend
                .send(&format!(
                    "<message from='x@{domain}' to='{to}' id='{domain}-{i}'><body>{i}</body></message>"
                ))
                .await;
        }
    }
}

/// Reads `total` stanzas and checks that each sender's came in order, none missing.
async fn expect_in_order(receiver: &mut RawStream, domains: &[&str], n: usize) {
    let mut next = vec![0usize; domains.len()];
    for _ in 0..n * domains.len() {
        let s = receiver.next().await;
        let id = s.id().unwrap_or_default().to_string();
        let (domain, i) = id.rsplit_once('-').expect("an id of ours");
        let k = domains.iter().position(|d| *d == domain).expect("a sender");
        assert_eq!(i, next[k].to_string(), "{domain}'s stanzas in order");
        next[k] += 1;
    }
    assert_eq!(next, vec![n; domains.len()]);
}

/// a.test with a second local domain (`COMP`, with a backend of its own) and b.test, each
/// domain with its backend attached.
struct Pairs {
    _dns: TestDns,
    a: Instance,
    b: Instance,
    core: RawStream,
    comp: RawStream,
    backend_b: RawStream,
}

impl Pairs {
    /// `n` stanzas from each local domain to bob@b.test, interleaved; all arrive, each
    /// domain's in order.
    async fn burst_in_order(&mut self, n: usize) {
        send_interleaved(
            &mut [(&mut self.core, "a.test"), (&mut self.comp, COMP)],
            "bob@b.test",
            n,
        )
        .await;
        expect_in_order(&mut self.backend_b, &["a.test", COMP], n).await;
    }

    /// (outbound links a opened, inbound streams b accepted).
    async fn links(&self) -> (f64, f64) {
        (links(&self.a).await, accepted(&self.b).await)
    }
}

async fn two_local_domains(a_builder: impl FnOnce(InstanceBuilder) -> InstanceBuilder) -> Pairs {
    let dns = TestDns::start().await;
    let a = a_builder(instance(&dns, "a.test").backend(COMP, COMP_SECRET))
        .start()
        .await;
    dns.add(COMP, a.ip);
    let b = instance(&dns, "b.test").start().await;
    let core = a.backend().await;
    let comp = a.backend_for(COMP, COMP_SECRET).await;
    let backend_b = b.backend().await;
    Pairs {
        _dns: dns,
        a,
        b,
        core,
        comp,
        backend_b,
    }
}

#[tokio::test]
async fn two_local_domains_share_one_link_to_a_peer_each_in_order() {
    let mut p = two_local_domains(|a| a).await;

    // The first pair opens the link.
    p.core
        .send("<message from='x@a.test' to='bob@b.test' id='first'/>")
        .await;
    assert_eq!(p.backend_b.next().await.id(), Some("first"));
    // The second rides on it, the two interleaved.
    p.burst_in_order(50).await;

    assert_eq!(
        p.links().await,
        (1.0, 1.0),
        "a opened one link, b accepted one stream"
    );
    let m = p.a.metrics().await;
    assert_eq!(metric(&m, "fedgate_s2s_piggybacked_pairs"), 1.0);
    assert_eq!(piggybacked(&m, "carried"), 1.0);
    // b proved comp.a.test on the stream a authenticated by SASL EXTERNAL: the certificate
    // covers it (XEP-0344 §2.4), a db:result answered at once.
    let m = p.b.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_s2s_auth_total{direction=\"inbound\",method=\"dialback\",result=\"success\"}"
        ),
        1.0
    );

    // XEP-0288: b answers comp.a.test on the same link, as the reverse of the pair it proved.
    p.backend_b
        .send("<message from='bob@b.test' to='x@comp.a.test' id='back'/>")
        .await;
    assert_eq!(p.comp.next().await.id(), Some("back"));
    assert_eq!(links(&p.b).await, 0.0, "b opened no link of its own");

    // `/peers`: one outbound session carrying both pairs.
    let view = p.a.peer_view("b.test").await;
    assert_eq!(view.sessions.len(), 1, "{view:?}");
    let mut pairs: Vec<_> = view.sessions[0]
        .pairs
        .iter()
        .map(|pair| (pair.local.as_str(), pair.auth.as_str()))
        .collect();
    pairs.sort();
    assert_eq!(pairs, [("a.test", "external"), (COMP, "dialback")]);
}

/// Two pairs that start at the same moment, before any link is up: the second waits for the
/// link the first is connecting and rides on it, rather than opening one of its own.
#[tokio::test]
async fn two_pairs_that_start_together_share_the_first_link() {
    let mut p = two_local_domains(|a| a).await;

    p.burst_in_order(20).await;

    assert_eq!(
        p.links().await,
        (1.0, 1.0),
        "a opened one link for both pairs, b accepted one stream"
    );
    assert_eq!(piggybacked(&p.a.metrics().await, "carried"), 1.0);
}

/// A pair that waits for another pair's link waits within its own retry window: against a
/// resolver that never answers both pairs bounce when the window closes, and the one that
/// waited says so.
#[tokio::test(start_paused = true)]
async fn a_pair_waiting_for_another_pairs_link_bounces_within_its_own_retry_window() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend(COMP, COMP_SECRET)
        .dns("timeout = \"1s\"")
        .s2s("retry_window = \"1500ms\"\nretry_initial_delay = \"100ms\"")
        .start()
        .await;
    let mut core = a.backend().await;
    let mut comp = a.backend_for(COMP, COMP_SECRET).await;
    dns.set_silent(true);
    let sent = tokio::time::Instant::now();
    core.send("<message from='x@a.test' to='bob@quiet.test' id='core'/>")
        .await;
    comp.send(&format!(
        "<message from='x@{COMP}' to='bob@quiet.test' id='comp'/>"
    ))
    .await;
    let mut waited = 0;
    for (backend, id) in [(&mut core, "core"), (&mut comp, "comp")] {
        let bounce = backend.next().await;
        let t = text(bounce.raw()).to_string();
        assert_eq!(bounce.id(), Some(id), "{t}");
        assert!(t.contains("<remote-server-timeout"), "{t}");
        assert!(
            t.contains("no connection within s2s.retry_window (1500ms)"),
            "{t}"
        );
        if t.contains("waited for the link another pair to quiet.test was connecting") {
            waited += 1;
        }
    }
    let elapsed = sent.elapsed();
    assert!(
        elapsed < std::time::Duration::from_millis(3500),
        "bounced {elapsed:?} after sending; the window is 1.5 s"
    );
    assert_eq!(waited, 1, "one pair connected, the other waited for it");
}

#[tokio::test]
async fn with_dialback_the_extra_pair_is_verified_with_its_authoritative_server() {
    let mut p = two_local_domains(|a| a.peer("domain = \"b.test\"\nauth = \"dialback\"")).await;
    p.core
        .send("<message from='x@a.test' to='bob@b.test' id='first'/>")
        .await;
    assert_eq!(p.backend_b.next().await.id(), Some("first"));
    p.burst_in_order(20).await;
    assert_eq!(links(&p.a).await, 1.0);
    assert_eq!(
        metric(&p.a.metrics().await, "fedgate_s2s_piggybacked_pairs"),
        1.0
    );
}

/// How the fake peer answers the `<db:result>` for a second domain on the first connection.
#[derive(Clone, Copy)]
enum Refuse {
    Invalid,
    Error,
    /// Ends the stream (as fedgate itself does on `invalid`).
    StreamError,
}

/// A receiving server for fake.test on `ip`:5269 (STARTTLS, dialback only): on its first
/// connection it takes a.test's key and refuses any other domain's as `refuse` says; on
/// later connections it takes every key. Reports `(connection, what)` for each dialback
/// key (`result:<from>`) and message (`message:<id>`) it got.
async fn refusing_peer(
    ip: IpAddr,
    dir: &std::path::Path,
    refuse: Refuse,
) -> tokio::sync::mpsc::UnboundedReceiver<(usize, String)> {
    use fedgate::xml::framer::Event;
    let receiver = FakeReceiver::bind(ip, dir).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for n in 1.. {
            let Some(mut conn) = receiver.accept().await else {
                return;
            };
            let (tls, tx) = (receiver.tls.clone(), tx.clone());
            tokio::spawn(async move {
                fake_peer_starttls(&mut conn, &tls, n).await;
                conn.send(b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>");
                conn.flush().await.unwrap();
                while let Ok(Event::Stanza(s)) = conn.next_event().await {
                    let from = s.from().unwrap_or_default().to_string();
                    match s.name() {
                        "result" => {
                            let _ = tx.send((n, format!("result:{from}")));
                            if n > 1 || from == "a.test" {
                                conn.send(
                                    format!(
                                        "<db:result from='fake.test' to='{from}' type='valid'/>"
                                    )
                                    .as_bytes(),
                                );
                            } else {
                                match refuse {
                                    Refuse::Invalid => conn.send(format!("<db:result from='fake.test' to='{from}' type='invalid'/>").as_bytes()),
                                    Refuse::Error => conn.send(format!("<db:result from='fake.test' to='{from}' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>").as_bytes()),
                                    Refuse::StreamError => {
                                        conn.send(b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>");
                                        let _ = conn.flush().await;
                                        return;
                                    }
                                }
                            }
                        }
                        "message" => {
                            let _ = tx.send((n, format!("message:{}", s.id().unwrap_or_default())));
                        }
                        _ => {}
                    }
                    if conn.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx
}

/// What the fake peer reported, until `done` says it has all it needs.
async fn seen_until(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<(usize, String)>,
    done: impl Fn(&[(usize, String)]) -> bool,
) -> Vec<(usize, String)> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !done(&all) {
            all.push(seen.recv().await.expect("the fake peer reports"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the fake peer saw only {all:?}"));
    all
}

async fn a_refused_pair_falls_back_to_a_link_of_its_own(refuse: Refuse) {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend(COMP, COMP_SECRET)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ip = next_loopback();
    let mut seen = refusing_peer(ip, dir.path(), refuse).await;
    dns.add("fake.test", ip);
    let mut core = a.backend().await;
    let mut comp = a.backend_for(COMP, COMP_SECRET).await;
    core.send("<message from='x@a.test' to='bob@fake.test' id='first'/>")
        .await;
    seen_until(&mut seen, |s| s.iter().any(|(_, w)| w == "message:first")).await;
    for i in 0..10 {
        comp.send(&format!(
            "<message from='x@{COMP}' to='bob@fake.test' id='c{i}'/>"
        ))
        .await;
    }
    let seen = seen_until(&mut seen, |s| {
        s.iter().filter(|(_, w)| w.starts_with("message:c")).count() >= 10
    })
    .await;
    // Asked on the first connection, refused, then a connection of its own.
    let asked: Vec<_> = seen
        .iter()
        .filter(|(_, w)| *w == format!("result:{COMP}"))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(asked.first(), Some(&1), "{seen:?}");
    assert_eq!(asked.len(), 2, "asked once more, on its own link: {seen:?}");
    let own = asked[1];
    // Every one of comp's stanzas once, in order, all on its own link.
    let comp_ids: Vec<_> = seen
        .iter()
        .filter(|(_, w)| w.starts_with("message:c"))
        .map(|(n, w)| (*n, w.clone()))
        .collect();
    let expected: Vec<_> = (0..10).map(|i| (own, format!("message:c{i}"))).collect();
    assert_eq!(comp_ids, expected, "{seen:?}");
    let m = a.metrics().await;
    let result = match refuse {
        Refuse::Invalid => "invalid",
        Refuse::Error => "error",
        Refuse::StreamError => "lost",
    };
    assert_eq!(piggybacked(&m, result), 1.0, "{m}");
    assert_eq!(piggybacked(&m, "carried"), 0.0);
    assert_eq!(metric(&m, "fedgate_s2s_piggybacked_pairs"), 0.0);
    assert_eq!(
        metric_or_zero(
            &m,
            "fedgate_bounces_total{condition=\"remote-server-timeout\",cause=\"auth\"}"
        ),
        0.0
    );
    // The first pair goes on (on its link, or after a stream error a new one).
    core.send("<message from='x@a.test' to='bob@fake.test' id='again'/>")
        .await;
    drop(comp);
}

#[tokio::test]
async fn a_pair_the_peer_answers_invalid_gets_a_link_of_its_own_and_loses_nothing() {
    a_refused_pair_falls_back_to_a_link_of_its_own(Refuse::Invalid).await;
}

#[tokio::test]
async fn a_pair_the_peer_answers_with_a_dialback_error_gets_a_link_of_its_own() {
    a_refused_pair_falls_back_to_a_link_of_its_own(Refuse::Error).await;
}

#[tokio::test]
async fn a_pair_whose_request_ends_the_stream_gets_a_link_of_its_own() {
    a_refused_pair_falls_back_to_a_link_of_its_own(Refuse::StreamError).await;
}

#[tokio::test]
async fn past_the_pair_limit_a_pair_gets_a_link_of_its_own() {
    three_pairs_past_a_limit_of_two(|a| a.s2s("max_outbound_pairs_per_stream = 2")).await;
}

/// The peer's own limit, under a larger default.
#[tokio::test]
async fn past_the_peers_own_pair_limit_a_pair_gets_a_link_of_its_own() {
    three_pairs_past_a_limit_of_two(|a| {
        a.peer("domain = \"b.test\"\nmax_outbound_pairs_per_stream = 2")
    })
    .await;
}

/// Three local domains to b.test, with a limit of two pairs per link that `limit` sets: the
/// third gets a link of its own.
async fn three_pairs_past_a_limit_of_two(limit: impl FnOnce(InstanceBuilder) -> InstanceBuilder) {
    let dns = TestDns::start().await;
    let a = limit(
        instance(&dns, "a.test")
            .backend(COMP, COMP_SECRET)
            .backend("x.a.test", "x-secret"),
    )
    .start()
    .await;
    let b = instance(&dns, "b.test").start().await;
    let mut core = a.backend().await;
    let mut comp = a.backend_for(COMP, COMP_SECRET).await;
    let mut x = a.backend_for("x.a.test", "x-secret").await;
    let mut backend_b = b.backend().await;
    core.send("<message from='x@a.test' to='bob@b.test' id='first'/>")
        .await;
    assert_eq!(backend_b.next().await.id(), Some("first"));
    comp.send("<message from='x@comp.a.test' to='bob@b.test' id='second'/>")
        .await;
    assert_eq!(backend_b.next().await.id(), Some("second"));
    send_interleaved(
        &mut [
            (&mut core, "a.test"),
            (&mut comp, COMP),
            (&mut x, "x.a.test"),
        ],
        "bob@b.test",
        20,
    )
    .await;
    expect_in_order(&mut backend_b, &["a.test", COMP, "x.a.test"], 20).await;
    let m = a.metrics().await;
    assert_eq!(piggybacked(&m, "carried"), 1.0);
    assert_eq!(piggybacked(&m, "full"), 1.0);
    assert_eq!(
        links(&a).await,
        2.0,
        "the third pair opened a link of its own"
    );
    assert_eq!(accepted(&b).await, 2.0);
}

#[tokio::test]
async fn with_piggyback_off_for_the_peer_each_pair_has_its_own_link() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend(COMP, COMP_SECRET)
        .peer("domain = \"b.test\"\npiggyback = false")
        .start()
        .await;
    let b = instance(&dns, "b.test").start().await;
    let mut core = a.backend().await;
    let mut comp = a.backend_for(COMP, COMP_SECRET).await;
    let mut backend_b = b.backend().await;
    core.send("<message from='x@a.test' to='bob@b.test' id='first'/>")
        .await;
    assert_eq!(backend_b.next().await.id(), Some("first"));
    send_interleaved(
        &mut [(&mut core, "a.test"), (&mut comp, COMP)],
        "bob@b.test",
        10,
    )
    .await;
    expect_in_order(&mut backend_b, &["a.test", COMP], 10).await;
    let m = a.metrics().await;
    assert_eq!(links(&a).await, 2.0);
    assert_eq!(accepted(&b).await, 2.0);
    for result in ["carried", "full", "invalid", "error"] {
        assert_eq!(piggybacked(&m, result), 0.0, "{result}");
    }
}

/// The shared link is cut in the middle of a burst from both pairs: each pair takes back what
/// b had not acknowledged and sends it again on the next link, so every stanza of each
/// domain arrives, the first arrivals in order; what b had read but not yet acknowledged when
/// the link died may arrive twice (a link that carried guests is not resumed).
#[tokio::test]
async fn a_shared_link_cut_mid_burst_loses_nothing_of_either_pair() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let proxy = crate::proxy::TestProxy::start(b.s2s_addr()).await;
    let a = instance(&dns, "a.test")
        .backend(COMP, COMP_SECRET)
        .route("b.test", proxy.addr, false)
        .s2s("retry_initial_delay = \"50ms\"")
        .start()
        .await;
    dns.add(COMP, a.ip);
    let mut core = a.backend().await;
    let mut comp = a.backend_for(COMP, COMP_SECRET).await;
    let mut backend_b = b.backend().await;

    core.send("<message from='x@a.test' to='bob@b.test' id='first'/>")
        .await;
    assert_eq!(backend_b.next().await.id(), Some("first"));
    comp.send(&format!(
        "<message from='x@{COMP}' to='bob@b.test' id='second'/>"
    ))
    .await;
    assert_eq!(backend_b.next().await.id(), Some("second"));
    assert_eq!(
        piggybacked(&a.metrics().await, "carried"),
        1.0,
        "both pairs on one link before the cut"
    );

    // About a third of the burst gets through, then the link dies mid-stanza.
    const N: usize = 600;
    proxy.cut_after(40_000);
    send_interleaved(
        &mut [(&mut core, "a.test"), (&mut comp, COMP)],
        "bob@b.test",
        N,
    )
    .await;

    let domains = ["a.test", COMP];
    let mut seen = [
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    ];
    let mut next_new = [0usize; 2];
    let mut twice = 0;
    while seen.iter().map(|s| s.len()).sum::<usize>() < 2 * N {
        let s = backend_b.next().await;
        let id = s.id().unwrap_or_default().to_string();
        let Some((domain, i)) = id.rsplit_once('-') else {
            // "first" or "second" again: b had not acknowledged them before the cut.
            assert!(id == "first" || id == "second", "{id}");
            twice += 1;
            continue;
        };
        let k = domains.iter().position(|d| *d == domain).expect("a sender");
        let i: usize = i.parse().unwrap();
        if !seen[k].insert(i) {
            twice += 1;
            continue;
        }
        assert_eq!(i, next_new[k], "{domain}: first arrivals in order");
        next_new[k] += 1;
    }
    // The host reconnects and the guest waits for that link instead of opening its own.
    assert_eq!(
        proxy.connections(),
        2,
        "the pairs connected again, on one link"
    );
    assert_eq!(piggybacked(&a.metrics().await, "carried"), 2.0);
    eprintln!(
        "shared link cut: {} of {} arrived, {twice} twice, {} connections",
        2 * N,
        2 * N,
        proxy.connections()
    );
}
