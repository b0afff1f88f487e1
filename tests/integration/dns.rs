//! DNS resolution against the test DNS server: SRV order and weights (RFC 2782), direct TLS
//! and STARTTLS records merged (XEP-0368), the A/AAAA fallback (RFC 6120 §3.2.2), `.`
//! targets, address interleaving (RFC 8305), caching, static routes; and gateways that find
//! each other through SRV records only.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use fedgate::config::Config;
use fedgate::dns::{Candidate, Origin, ResolveError, Resolver, Target};

use crate::harness::*;

/// A resolver that asks only `dns`, with extra `[dns]` keys and other tables.
fn resolver_with(dns: &TestDns, dns_keys: &str, tables: &str) -> Resolver {
    let text = format!(
        "[dns]\nnameservers = [\"{}\"]\n{dns_keys}\n{tables}\n\
         [[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n\
         [[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n",
        dns.addr
    );
    let config = Config::from_toml(&text, Path::new("/tmp")).expect("test config is valid");
    Resolver::from_config(&config).expect("resolver")
}

fn resolver(dns: &TestDns) -> Resolver {
    resolver_with(dns, "", "")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (host, port, direct TLS) of each candidate.
fn summary(candidates: &[Candidate]) -> Vec<(&str, u16, bool)> {
    candidates
        .iter()
        .map(|c| (c.host.as_str(), c.port, c.direct_tls))
        .collect()
}

/// Every address of every candidate, in order, the way an outbound attempt walks them
/// (`s2s::connect::Walk`): a candidate without addresses is skipped; when none has any, the
/// first one's error (as `for_candidate` words it) is the cause.
async fn all_targets(resolver: &Resolver, domain: &str) -> Result<Vec<Target>, ResolveError> {
    let plan = resolver.plan(domain).await?;
    let mut targets = Vec::new();
    let mut first_error = None;
    for candidate in &plan.candidates {
        match resolver.addresses(&candidate.host).await {
            Ok(ips) => targets.extend(ips.into_iter().map(|ip| Target {
                host: candidate.host.clone(),
                addr: SocketAddr::new(ip, candidate.port),
                direct_tls: candidate.direct_tls,
            })),
            Err(e) => {
                first_error.get_or_insert_with(|| e.for_candidate(domain, candidate));
            }
        }
    }
    match first_error {
        Some(e) if targets.is_empty() => Err(e),
        _ => Ok(targets),
    }
}

#[tokio::test]
async fn srv_targets_are_tried_by_priority_then_the_fallback_is_not() {
    let dns = TestDns::start().await;
    dns.add_srv("_xmpp-server._tcp.b.test", 30, 0, 5271, "three.b.test");
    dns.add_srv("_xmpp-server._tcp.b.test", 10, 0, 5269, "one.b.test");
    dns.add_srv("_xmpp-server._tcp.b.test", 20, 100, 5270, "two.b.test");
    dns.add("b.test", ip("127.0.0.9"));
    let plan = resolver(&dns).plan("b.test").await.unwrap();
    assert_eq!(
        summary(&plan.candidates),
        [
            ("one.b.test", 5269, false),
            ("two.b.test", 5270, false),
            ("three.b.test", 5271, false)
        ]
    );
    assert_eq!(
        plan.candidates[1].origin,
        Origin::Srv {
            priority: 20,
            weight: 100
        }
    );
    let answers = plan.answers.join("\n");
    assert!(
        answers.contains(
            "_xmpp-server._tcp.b.test: SRV priority 10 weight 0 port 5269 target one.b.test"
        ),
        "{answers}"
    );
    assert!(
        answers.contains("_xmpps-server._tcp.b.test: SRV NXDOMAIN"),
        "{answers}"
    );
}

#[tokio::test]
async fn weights_share_out_the_first_attempt() {
    let dns = TestDns::start().await;
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 1, 5269, "light.b.test");
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 3, 5269, "heavy.b.test");
    let resolver = resolver(&dns);
    const DRAWS: usize = 2000;
    let mut heavy_first = 0;
    for _ in 0..DRAWS {
        let plan = resolver.plan("b.test").await.unwrap();
        assert_eq!(plan.candidates.len(), 2);
        if plan.candidates[0].host == "heavy.b.test" {
            heavy_first += 1;
        }
    }
    // Binomial(2000, 3/4): mean 1500, standard deviation about 19.4; allow 5 of them.
    let margin = 5.0 * (DRAWS as f64 * 0.75 * 0.25).sqrt();
    assert!(
        (heavy_first as f64 - 1500.0).abs() < margin,
        "heavy first in {heavy_first} of {DRAWS}"
    );
    // The draws come from cached records.
    assert_eq!(
        dns.queries_of("_xmpp-server._tcp.b.test", RecordType::SRV),
        1
    );
}

#[tokio::test]
async fn direct_tls_and_starttls_records_are_merged_into_one_order() {
    let dns = TestDns::start().await;
    dns.add_srv("_xmpps-server._tcp.b.test", 5, 0, 5270, "tls.b.test");
    dns.add_srv("_xmpp-server._tcp.b.test", 10, 0, 5269, "plain.b.test");
    dns.add_srv("_xmpps-server._tcp.b.test", 20, 0, 443, "backup.b.test");
    let plan = resolver(&dns).plan("b.test").await.unwrap();
    assert_eq!(
        summary(&plan.candidates),
        [
            ("tls.b.test", 5270, true),
            ("plain.b.test", 5269, false),
            ("backup.b.test", 443, true)
        ]
    );
}

#[tokio::test]
async fn without_srv_records_the_domain_itself_on_port_5269() {
    let dns = TestDns::start().await;
    dns.add("b.test", ip("127.0.0.9"));
    let resolver = resolver(&dns);
    let plan = resolver.plan("b.test").await.unwrap();
    assert_eq!(
        plan.candidates,
        [Candidate {
            host: "b.test".into(),
            port: 5269,
            direct_tls: false,
            origin: Origin::Fallback
        }]
    );
    assert!(
        plan.answers.iter().any(|a| a.contains("falling back")),
        "{:?}",
        plan.answers
    );
    let targets = all_targets(&resolver, "b.test").await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].addr, "127.0.0.9:5269".parse().unwrap());
    assert!(!targets[0].direct_tls);
}

#[tokio::test]
async fn a_dot_target_means_no_service_and_no_fallback() {
    let dns = TestDns::start().await;
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 0, 0, ".");
    // The domain has an address, but its SRV record says there is no s2s service.
    dns.add("b.test", ip("127.0.0.9"));
    let resolver = resolver(&dns);
    let e = resolver.plan("b.test").await.unwrap_err();
    assert!(matches!(e, ResolveError::NoService { .. }), "{e}");
    assert!(e.to_string().contains("b.test offers no XMPP"), "{e}");
    assert!(matches!(
        all_targets(&resolver, "b.test").await,
        Err(ResolveError::NoService { .. })
    ));

    // A `.` among other records is ignored (it must be the only one) and reported.
    dns.add_srv("_xmpp-server._tcp.d.test", 0, 0, 0, ".");
    dns.add_srv("_xmpp-server._tcp.d.test", 5, 0, 5269, "xmpp.d.test");
    let plan = resolver.plan("d.test").await.unwrap();
    assert_eq!(summary(&plan.candidates), [("xmpp.d.test", 5269, false)]);
    assert!(
        plan.answers.iter().any(|a| a.contains("ignored")),
        "{:?}",
        plan.answers
    );

    // A `.` for one service only leaves the other.
    dns.add_srv("_xmpps-server._tcp.c.test", 0, 0, 0, ".");
    dns.add_srv("_xmpp-server._tcp.c.test", 0, 0, 5269, "xmpp.c.test");
    let plan = resolver.plan("c.test").await.unwrap();
    assert_eq!(summary(&plan.candidates), [("xmpp.c.test", 5269, false)]);
}

#[tokio::test]
async fn a_domain_without_any_record_has_a_clear_cause() {
    let dns = TestDns::start().await;
    let resolver = resolver(&dns);
    let plan = resolver.plan("nowhere.test").await.unwrap();
    assert_eq!(plan.candidates[0].origin, Origin::Fallback);
    let e = resolver.addresses("nowhere.test").await.unwrap_err();
    assert!(matches!(e, ResolveError::NoAddress { .. }), "{e}");
    let e = all_targets(&resolver, "nowhere.test").await.unwrap_err();
    assert_eq!(e.to_string(), "no SRV or A/AAAA record for nowhere.test");
}

#[tokio::test]
async fn an_ip_literal_domain_is_not_looked_up() {
    let dns = TestDns::start().await;
    let resolver = resolver(&dns);
    let targets = all_targets(&resolver, "127.0.0.5").await.unwrap();
    assert_eq!(targets[0].addr, "127.0.0.5:5269".parse().unwrap());
    let targets = all_targets(&resolver, "[::1]").await.unwrap();
    assert_eq!(targets[0].addr, "[::1]:5269".parse().unwrap());
    assert_eq!(dns.queries("_xmpp-server._tcp.127.0.0.5"), 0);
    assert_eq!(dns.queries("_xmpps-server._tcp.127.0.0.5"), 0);
}

#[tokio::test]
async fn an_srv_target_without_address_is_skipped_and_named() {
    // Through fedgate's own walk of the targets (`s2s::connect::Walk`), not a re-implementation.
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let mut backend_a = a.backend().await;
    // b.test's only SRV target has no address: the stanza bounces and the cause names it.
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 0, 5269, "ghost.b.test");
    backend_a
        .send("<message from='alice@a.test' to='bob@b.test' id='b1'/>")
        .await;
    let bounce = backend_a.next().await;
    assert_eq!(bounce.id(), Some("b1"));
    let t = text(bounce.raw());
    assert!(t.contains("<remote-server-not-found"), "{t}");
    assert!(t.contains("no A/AAAA record for ghost.b.test"), "{t}");

    // c.test's first target has none, its second is c: skipped, then delivered through the
    // second, and the attempt's trace names the one skipped.
    let c = instance(&dns, "c.test").start().await;
    let mut backend_c = c.backend().await;
    dns.add_srv("_xmpp-server._tcp.c.test", 0, 0, 5269, "ghost.c.test");
    dns.add_srv(
        "_xmpp-server._tcp.c.test",
        1,
        0,
        c.s2s_addr().port(),
        "real.c.test",
    );
    dns.add("real.c.test", c.s2s_addr().ip());
    backend_a
        .send("<message from='alice@a.test' to='bob@c.test' id='c1'/>")
        .await;
    assert_eq!(backend_c.next().await.id(), Some("c1"));
    let trace = a
        .gw()
        .last_attempt("c.test")
        .expect("an attempt")
        .to_string();
    assert!(
        trace.contains("ghost.c.test: no A/AAAA record for ghost.c.test"),
        "{trace}"
    );
    assert!(trace.contains("real.c.test"), "{trace}");
}

#[tokio::test]
async fn ipv6_and_ipv4_addresses_interleave_ipv6_first() {
    let dns = TestDns::start().await;
    for a in ["127.0.0.1", "::1", "127.0.0.2", "::2", "127.0.0.3"] {
        dns.add("xmpp.b.test", ip(a));
    }
    dns.add_srv("_xmpps-server._tcp.b.test", 0, 0, 5270, "xmpp.b.test");
    let resolver = resolver(&dns);
    let addrs = resolver.addresses("xmpp.b.test").await.unwrap();
    assert_eq!(
        addrs,
        [
            ip("::1"),
            ip("127.0.0.1"),
            ip("::2"),
            ip("127.0.0.2"),
            ip("127.0.0.3")
        ]
    );
    let targets = all_targets(&resolver, "b.test").await.unwrap();
    assert_eq!(targets[0].addr, "[::1]:5270".parse().unwrap());
    assert_eq!(targets[1].addr, "127.0.0.1:5270".parse().unwrap());
    assert!(targets.iter().all(|t| t.direct_tls));
}

#[tokio::test]
async fn answers_are_cached_within_their_ttl() {
    let dns = TestDns::start().await;
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 0, 5269, "xmpp.b.test");
    dns.add("xmpp.b.test", ip("127.0.0.9"));
    dns.add("xmpp.b.test", ip("::9"));
    let resolver = resolver(&dns);
    for _ in 0..3 {
        all_targets(&resolver, "b.test").await.unwrap();
    }
    assert_eq!(dns.queries("_xmpp-server._tcp.b.test"), 1);
    assert_eq!(dns.queries_of("xmpp.b.test", RecordType::A), 1);
    assert_eq!(dns.queries_of("xmpp.b.test", RecordType::AAAA), 1);
    // The NXDOMAIN for the direct TLS service carries no SOA here, so it is not cached
    // (RFC 2308 §5).
    assert_eq!(dns.queries("_xmpps-server._tcp.b.test"), 3);

    // A record whose TTL has passed is asked for again.
    dns.set_ttl("_xmpp-server._tcp.c.test", 1);
    dns.add_srv("_xmpp-server._tcp.c.test", 0, 0, 5269, "xmpp.b.test");
    resolver.plan("c.test").await.unwrap();
    resolver.plan("c.test").await.unwrap();
    assert_eq!(dns.queries("_xmpp-server._tcp.c.test"), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    resolver.plan("c.test").await.unwrap();
    assert_eq!(dns.queries("_xmpp-server._tcp.c.test"), 2);
}

#[tokio::test]
async fn negative_answers_are_cached_at_most_negative_ttl() {
    let dns = TestDns::start().await;
    // The zone would let resolvers keep its negative answers for 5 minutes.
    dns.set_negative_ttl(300);
    let resolver = resolver_with(&dns, "negative_ttl = \"2s\"", "");
    let name = "_xmpp-server._tcp.gone.test";
    resolver.plan("gone.test").await.unwrap();
    resolver.plan("gone.test").await.unwrap();
    assert_eq!(dns.queries(name), 1, "the NXDOMAIN is cached");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    resolver.plan("gone.test").await.unwrap();
    assert_eq!(dns.queries(name), 2, "and asked again after negative_ttl");
}

#[tokio::test]
async fn a_static_route_overrides_dns() {
    let dns = TestDns::start().await;
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 0, 5269, "xmpp.b.test");
    dns.add("xmpp.b.test", ip("127.0.0.9"));
    let resolver = resolver_with(
        &dns,
        "",
        "[[s2s.route]]\ndomain = \"b.test\"\ntarget = \"127.0.0.8:5999\"\ndirect_tls = true\n",
    );
    let plan = resolver.plan("b.test").await.unwrap();
    assert_eq!(
        plan.candidates,
        [Candidate {
            host: "127.0.0.8".into(),
            port: 5999,
            direct_tls: true,
            origin: Origin::Route
        }]
    );
    let targets = all_targets(&resolver, "b.test").await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].addr, "127.0.0.8:5999".parse().unwrap());
    assert_eq!(dns.queries("_xmpp-server._tcp.b.test"), 0);
    assert_eq!(dns.queries("_xmpps-server._tcp.b.test"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dead_resolver_is_a_lookup_failure_not_a_missing_domain() {
    let dns = TestDns::start().await;
    dns.add("b.test", ip("127.0.0.9"));
    dns.set_silent(true);
    let resolver = resolver_with(&dns, "timeout = \"200ms\"", "");
    // With the default 5 s timeout, retried, this would take well over 8 s.
    let plan = tokio::time::timeout(Duration::from_secs(8), resolver.plan("b.test"))
        .await
        .expect("[dns] timeout bounds each query")
        .unwrap();
    assert_eq!(plan.candidates[0].origin, Origin::Fallback);
    assert!(
        plan.answers.iter().any(|a| a.contains("lookup failed")),
        "{:?}",
        plan.answers
    );
    let e = all_targets(&resolver, "b.test").await.unwrap_err();
    assert!(matches!(e, ResolveError::Lookup { .. }), "{e}");
    assert!(
        e.to_string().starts_with("DNS lookup for b.test failed"),
        "{e}"
    );
    assert!(
        dns.queries("b.test") > 0,
        "the queries arrived and went unanswered"
    );
}

#[tokio::test]
async fn an_aliased_srv_target_is_followed_and_reported() {
    let dns = TestDns::start().await;
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 0, 5269, "alias.b.test");
    dns.add_cname("alias.b.test", "real.b.test");
    dns.add("real.b.test", ip("127.0.0.9"));
    let resolver = resolver(&dns);
    assert_eq!(
        resolver.addresses("alias.b.test").await.unwrap(),
        [ip("127.0.0.9")]
    );
    let report = resolver.report("b.test").await;
    assert!(report.has_address());
    let hosts = report.hosts.as_ref().unwrap();
    assert_eq!(hosts[0].alias_of.as_deref(), Some("real.b.test"));
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("alias.b.test is an alias (CNAME) for real.b.test")),
        "{report}"
    );
}

/// A message from a.test's backend reaches b.test's.
async fn message_flows(a: &Instance, b: &Instance) {
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    let message =
        "<message from='alice@a.test' to='bob@b.test' id='srv1'><body>via SRV</body></message>";
    backend_a.send(message).await;
    assert_eq!(backend_b.next_text().await, message);
}

#[tokio::test]
async fn a_gateway_reaches_a_peer_published_only_by_srv_on_another_port() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    // b.test itself has no address record; only its SRV record leads to it.
    let b = instance(&dns, "b.test")
        .unlisted()
        .s2s_port(5299)
        .start()
        .await;
    dns.add("xmpp.b.test", b.ip);
    dns.add_srv("_xmpp-server._tcp.b.test", 0, 0, 5299, "xmpp.b.test");
    message_flows(&a, &b).await;
    assert!(dns.queries_of("_xmpp-server._tcp.b.test", RecordType::SRV) > 0);
}

#[tokio::test]
async fn a_gateway_uses_direct_tls_when_the_xmpps_server_record_says_so() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    // b.test's only SRV record points at its direct TLS listener (port 5270), where a
    // STARTTLS stream header would be refused.
    let b = instance(&dns, "b.test").unlisted().start().await;
    dns.add("tls.b.test", b.ip);
    dns.add_srv("_xmpps-server._tcp.b.test", 0, 0, 5270, "tls.b.test");
    message_flows(&a, &b).await;
}
