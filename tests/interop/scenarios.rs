//! The interop scenarios, written once and run against each peer ([`crate::prosody`],
//! [`crate::ejabberd`], [`crate::jabberd2`]). "Peer → fedgate" is the slixmpp user on the peer
//! talking to the component behind fedgate; "fedgate → peer" is the component talking to the
//! user.

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::{json, Value};

use crate::backend::{stanza_error, Backend};
use crate::certs::CertSpec;
use crate::client::Client;
use crate::harness::{instance, metric, metric_or_zero, text, wait_for_metric, Instance, TestDns};
use crate::peer::{Kind, Peer, PeerTls, PEER_S2S_PORT, USER};
use crate::{capture_logs, dns_port_53, fedgate_log};

/// The port fedgate's s2s listener uses: not 5269, so only its SRV record leads there.
pub const GW_S2S_PORT: u16 = 5299;

/// Every scenario as a test against one kind of peer, in the module that invokes it
/// (`every_scenario!(Kind::Prosody, "pr")`); each test's peer domain is `{prefix}-{what}.test`.
/// A new scenario added here (and in [`scenario_test!`]) runs against every peer that invokes
/// this; a peer that supports only some invokes [`these_scenarios!`] with its list.
macro_rules! every_scenario {
    ($kind:expr, $prefix:literal) => {
        $crate::scenarios::these_scenarios!(
            $kind,
            $prefix,
            dialback_messages_iqs_and_presence_both_ways,
            sasl_external_messages_iqs_and_presence_both_ways,
            peer_stopped_bounces_with_the_cause_then_restarted_delivers,
            a_burst_of_10000_messages_each_way_arrives_in_order,
            fedgate_with_a_server_auth_only_certificate,
            fedgate_stopped_the_peer_bounces_then_reconnects,
            peer_stopped_mid_stream_nothing_is_lost_silently,
            direct_tls_xep_0368_published_first,
            peer_restarted_within_the_retry_window_gets_what_waited,
        );
    };
}
pub(crate) use every_scenario;

/// The named scenarios (the test names of [`scenario_test!`]) as tests against one kind of
/// peer: `these_scenarios!(Kind::Jabberd2, "jd", burst_name, …)`.
macro_rules! these_scenarios {
    ($kind:expr, $prefix:literal, $($test:ident),* $(,)?) => {
        $($crate::scenarios::scenario_test!($kind, $prefix, $test);)*
    };
}
pub(crate) use these_scenarios;

/// One scenario as a `#[tokio::test]` named `$test`, against `$kind`.
macro_rules! scenario_test {
    ($kind:expr, $prefix:literal, dialback_messages_iqs_and_presence_both_ways) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dialback_messages_iqs_and_presence_both_ways() {
            $crate::scenarios::exchange(
                $kind,
                concat!($prefix, "-dialback"),
                $crate::peer::PeerTls::SelfSigned,
            )
            .await;
        }
    };
    ($kind:expr, $prefix:literal, sasl_external_messages_iqs_and_presence_both_ways) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn sasl_external_messages_iqs_and_presence_both_ways() {
            $crate::scenarios::exchange(
                $kind,
                concat!($prefix, "-external"),
                $crate::peer::PeerTls::TestCa,
            )
            .await;
        }
    };
    ($kind:expr, $prefix:literal, peer_stopped_bounces_with_the_cause_then_restarted_delivers) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn peer_stopped_bounces_with_the_cause_then_restarted_delivers() {
            $crate::scenarios::peer_stopped_then_restarted($kind, concat!($prefix, "-restart"))
                .await;
        }
    };
    ($kind:expr, $prefix:literal, a_burst_of_10000_messages_each_way_arrives_in_order) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_burst_of_10000_messages_each_way_arrives_in_order() {
            $crate::scenarios::burst($kind, concat!($prefix, "-burst")).await;
        }
    };
    ($kind:expr, $prefix:literal, fedgate_with_a_server_auth_only_certificate) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn fedgate_with_a_server_auth_only_certificate() {
            $crate::scenarios::server_auth_only_certificate($kind, concat!($prefix, "-eku")).await;
        }
    };
    ($kind:expr, $prefix:literal, fedgate_stopped_the_peer_bounces_then_reconnects) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn fedgate_stopped_the_peer_bounces_then_reconnects() {
            $crate::scenarios::gateway_stopped_then_restarted(
                $kind,
                concat!($prefix, "-gwrestart"),
            )
            .await;
        }
    };
    ($kind:expr, $prefix:literal, peer_stopped_mid_stream_nothing_is_lost_silently) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn peer_stopped_mid_stream_nothing_is_lost_silently() {
            $crate::scenarios::peer_stopped_mid_stream($kind, concat!($prefix, "-midstream")).await;
        }
    };
    ($kind:expr, $prefix:literal, direct_tls_xep_0368_published_first) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn direct_tls_xep_0368_published_first() {
            $crate::scenarios::direct_tls($kind, concat!($prefix, "-directtls")).await;
        }
    };
    ($kind:expr, $prefix:literal, peer_restarted_within_the_retry_window_gets_what_waited) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn peer_restarted_within_the_retry_window_gets_what_waited() {
            $crate::scenarios::peer_restarted_within_the_retry_window(
                $kind,
                concat!($prefix, "-quickrestart"),
            )
            .await;
        }
    };
}
pub(crate) use scenario_test;

/// Everything one test runs.
pub struct World {
    pub dns: TestDns,
    pub gw: Instance,
    pub peer: Peer,
    pub backend: Backend,
    pub client: Client,
}

impl World {
    /// The component user the peer's user talks to.
    pub fn bot(&self) -> String {
        format!("bot@{}", self.gw.domain)
    }

    /// The peer's user, bare.
    pub fn user(&self) -> String {
        format!("{USER}@{}", self.peer.domain)
    }
}

/// What fedgate's certificate (from the test CA) is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GwCert {
    /// serverAuth and clientAuth, as CA-issued server certificates were until 2025: it can
    /// authenticate fedgate as a TLS client too (SASL EXTERNAL on outbound streams).
    ServerAndClient,
    /// serverAuth only, as public CAs issue them now.
    ServerOnly,
}

/// Publishes fedgate's s2s listener as the internet would: `_xmpp-server._tcp` SRV →
/// `xmpp.{domain}:5299` and, with `direct_tls`, first `_xmpps-server._tcp` → its direct TLS port.
pub fn publish_gateway(dns: &TestDns, gw: &Instance, direct_tls: bool) {
    let gw_domain = &gw.domain;
    let host = format!("xmpp.{gw_domain}");
    dns.add(&host, gw.ip);
    dns.add_srv(
        &format!("_xmpp-server._tcp.{gw_domain}"),
        if direct_tls { 10 } else { 0 },
        1,
        GW_S2S_PORT,
        &host,
    );
    if direct_tls {
        dns.add_srv(
            &format!("_xmpps-server._tcp.{gw_domain}"),
            0,
            1,
            gw.direct_tls_addr().port(),
            &host,
        );
    }
}

/// Starts fedgate for `gw-{name}.test` (with `gw_s2s` lines in `[s2s]`) and a `kind` peer for
/// `{name}.test` presenting `tls`, each published by SRV only, then attaches the backend and
/// logs the client in.
pub async fn world(kind: Kind, name: &str, tls: PeerTls, gw_s2s: &str) -> World {
    world_with(kind, name, tls, gw_s2s, GwCert::ServerAndClient, false).await
}

/// [`world`] with fedgate's certificate for `gw_cert`; with `direct_tls`, both sides also
/// publish a direct TLS (XEP-0368) listener first, as `_xmpps-server._tcp` SRV records.
pub async fn world_with(
    kind: Kind,
    name: &str,
    tls: PeerTls,
    gw_s2s: &str,
    gw_cert: GwCert,
    direct_tls: bool,
) -> World {
    world_with_domains(kind, name, tls, gw_s2s, gw_cert, direct_tls, &[]).await
}

/// [`world_with`], fedgate also serving `extra` backend domains (`(domain, secret)`, in its
/// certificate and published by SRV like its own).
pub async fn world_with_domains(
    kind: Kind,
    name: &str,
    tls: PeerTls,
    gw_s2s: &str,
    gw_cert: GwCert,
    direct_tls: bool,
    extra: &[(&str, &str)],
) -> World {
    capture_logs();
    let dns = dns_port_53().await;
    let gw_domain = format!("gw-{name}.test");
    let eku = match gw_cert {
        GwCert::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        GwCert::ServerOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
    };
    let mut builder = instance(&dns, &gw_domain)
        .cert(CertSpec {
            eku,
            ..CertSpec::default()
        })
        .unlisted()
        .s2s_port(GW_S2S_PORT)
        .s2s(gw_s2s);
    for (domain, secret) in extra {
        builder = builder.backend(domain, secret);
    }
    let gw = builder.start().await;
    publish_gateway(&dns, &gw, direct_tls);
    for (domain, _) in extra {
        dns.add_srv(
            &format!("_xmpp-server._tcp.{domain}"),
            0,
            1,
            GW_S2S_PORT,
            &format!("xmpp.{gw_domain}"),
        );
    }
    let peer = Peer::start(kind, &format!("{name}.test"), &dns, tls, direct_tls).await;
    let backend = Backend::attach(&gw).await;
    let client = peer.login().await;
    World {
        dns,
        gw,
        peer,
        backend,
        client,
    }
}

/// Messages, iqs (disco#info, XEP-0199 ping) and a presence subscription, peer → fedgate and
/// fedgate → peer, with the peer presenting `tls`; then checks how each side found and
/// authenticated the other.
pub async fn exchange(kind: Kind, name: &str, tls: PeerTls) {
    // An idle outbound link is checked after a second: an XEP-0199 ping, or an XEP-0198
    // acknowledgement request when the link has stream management. This scenario checks how
    // each side found and authenticated the other on a connection of its own, so XEP-0288
    // is off with a peer that offers it (Prosody; `bidi_both_ways_on_one_connection` is the
    // bidi one); ejabberd 23.01 and jabberd2 2.7 offer none, so they run with bidi on and show
    // the fallback.
    let gw_s2s = match kind {
        Kind::Prosody => "ping_interval = \"1s\"\nbidi = false",
        Kind::Ejabberd | Kind::Jabberd2 => "ping_interval = \"1s\"",
    };
    let mut w = world(kind, name, tls, gw_s2s).await;
    peer_to_fedgate(&mut w).await;
    fedgate_to_peer(&mut w).await;
    assert_found_through_srv(&w);
    let method = match tls {
        PeerTls::SelfSigned => "dialback",
        PeerTls::TestCa => "external",
    };
    assert_authenticated(&w, method).await;
    assert_liveness_check_answered(&w).await;
    if kind != Kind::Prosody {
        // Not offered, so not asked for: a connection each way, as before XEP-0288.
        let m = w.gw.metrics().await;
        for direction in ["inbound", "outbound"] {
            let sample = format!("fedgate_s2s_bidi_links{{direction=\"{direction}\"}}");
            assert_eq!(metric(&m, &sample), 0.0, "{sample}");
        }
    }
    report(&mut w, method).await;
    w.client.quit().await;
}

/// XEP-0288 with a peer that offers it: whoever connects first, that one connection carries
/// the pair's stanzas both ways (fedgate's metrics: one bidi link, no connection the other
/// way; the peer's log: one s2s session). Prints the first reply's latency in the reverse
/// direction, and the same without bidi (a new connection).
pub async fn bidi_both_ways_on_one_connection(kind: Kind, name: &str) {
    for first in ["peer", "fedgate"] {
        let mut w = world(kind, &format!("{name}-{first}"), PeerTls::TestCa, "").await;
        // The first message opens the connection; the first reply is timed.
        let took = match first {
            "peer" => {
                first_from_peer(&mut w, "f").await;
                let took = reverse_reply_from_fedgate(&mut w, "f").await;
                peer_to_fedgate(&mut w).await;
                fedgate_to_peer(&mut w).await;
                took
            }
            _ => {
                first_from_fedgate(&mut w, "f").await;
                let took = reverse_reply_from_peer(&mut w, "f").await;
                fedgate_to_peer(&mut w).await;
                peer_to_fedgate(&mut w).await;
                took
            }
        };
        let m = w.gw.metrics().await;
        let (opened_by_us, opened_by_peer) = match first {
            "peer" => ("inbound", "outbound"),
            _ => ("outbound", "inbound"),
        };
        assert_eq!(
            metric(
                &m,
                &format!("fedgate_s2s_bidi_links{{direction=\"{opened_by_us}\"}}")
            ),
            1.0,
            "{first} first: {m}\n{}",
            w.peer.log_tail(40)
        );
        // The other direction's authentication never happened: it rode the first one's.
        assert_eq!(
            metric_or_zero(
                &m,
                &format!(
                    "fedgate_s2s_auth_total{{direction=\"{opened_by_peer}\",result=\"success\"}}"
                )
            ),
            0.0,
            "{first} first: a second connection was authenticated\n{m}"
        );
        // XEP-0199 pings to the peer's domain and to ours, both ways, on the one link.
        assert_liveness_check_answered_or_acked(&w).await;
        let sessions = peer_s2s_sessions(&w.peer);
        assert_eq!(
            sessions.len(),
            1,
            "{first} first: the peer's log shows s2s sessions {sessions:?}\n{}",
            w.peer.log_tail(60)
        );
        let line = format!(
            "== {} {} XEP-0288, {first} connects first: one connection both ways ({sessions:?} in its log); first reply the other way in {took:?}\n",
            kind.name(),
            kind.version()
        );
        println!("{line}");
        append_report(&line);
        w.client.quit().await;
    }
    // The same reply without bidi: the first one back opens a connection of its own.
    let mut w = world(
        kind,
        &format!("{name}-off"),
        PeerTls::TestCa,
        "bidi = false",
    )
    .await;
    first_from_peer(&mut w, "f").await;
    let took = reverse_reply_from_fedgate(&mut w, "f").await;
    let line = format!(
        "== {} {} without XEP-0288 (bidi = false): first reply fedgate → peer on a new connection in {took:?}\n",
        kind.name(),
        kind.version()
    );
    println!("{line}");
    append_report(&line);
    w.client.quit().await;
}

/// The peer's client writes to the component: the peer connects to fedgate.
async fn first_from_peer(w: &mut World, tag: &str) {
    let bot = w.bot();
    let id = format!("{tag}-first");
    w.client.message(&bot, &id, "first").await;
    let id_ = id.clone();
    w.backend
        .expect(&format!("message {id}"), |s| s.id() == Some(id_.as_str()))
        .await;
}

/// The component writes to the peer's client: fedgate connects to the peer.
async fn first_from_fedgate(w: &mut World, tag: &str) {
    let bot = w.bot();
    let me = w.client.jid.clone();
    let id = format!("{tag}-first");
    w.backend
        .send(&format!(
            "<message from='{bot}/bot' to='{me}' type='chat' id='{id}'><body>first</body></message>"
        ))
        .await;
    wait_message(w, &id).await;
}

/// XEP-0220 multiplexing: fedgate's own domain and a second local domain (a component's)
/// write to the peer's user; the second rides on the link the first opened (one outbound
/// connection in fedgate's metrics, one s2s session in the peer's log), each in order.
pub async fn two_local_domains_on_one_connection(kind: Kind, name: &str) {
    let comp_domain = format!("comp.gw-{name}.test");
    let extra = [(comp_domain.as_str(), "comp-secret")];
    let mut w = world_with_domains(
        kind,
        name,
        PeerTls::TestCa,
        "",
        GwCert::ServerAndClient,
        false,
        &extra,
    )
    .await;
    first_from_fedgate(&mut w, "p").await;
    let mut comp = w.gw.backend_for(&comp_domain, "comp-secret").await;
    let bot = w.bot();
    let me = w.client.jid.clone();
    for i in 0..5 {
        w.backend
            .send(&format!(
                "<message from='{bot}/bot' to='{me}' type='chat' id='gw-{i}'><body>{i}</body></message>"
            ))
            .await;
        comp.send(&format!(
            "<message from='svc@{comp_domain}/bot' to='{me}' type='chat' id='comp-{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    for i in 0..5 {
        wait_message(&mut w, &format!("gw-{i}")).await;
        wait_message(&mut w, &format!("comp-{i}")).await;
    }
    let m = w.gw.metrics().await;
    let links = metric_or_zero(
        &m,
        "fedgate_outbound_attempts_total{result=\"established\"}",
    );
    let carried = metric_or_zero(&m, "fedgate_s2s_piggyback_total{result=\"carried\"}");
    let sessions = peer_s2s_sessions(&w.peer);
    // The peer may verify the second domain's key with its authoritative server (us) on a
    // connection of its own (XEP-0220 step 2): that one carries a <db:verify>, no stanzas.
    let inbound: Vec<_> = sessions.iter().filter(|s| s.starts_with("s2sin")).collect();
    let verified = metric_or_zero(
        &m,
        "fedgate_dialback_total{role=\"verify\",result=\"valid\"}",
    );
    let line = format!(
        "== {} {} XEP-0220 multiplexing: two local domains, {links} outbound connection(s), {carried} pair(s) piggybacked, peer's log shows s2s sessions {sessions:?} ({verified} key(s) verified with us)\n",
        kind.name(),
        kind.version()
    );
    println!("{line}");
    append_report(&line);
    assert_eq!(carried, 1.0, "{m}\n{}", w.peer.log_tail(60));
    assert_eq!(links, 1.0, "{m}");
    assert_eq!(metric(&m, "fedgate_s2s_piggybacked_pairs"), 1.0);
    assert_eq!(
        inbound.len(),
        1,
        "the peer's log shows s2s sessions {sessions:?}\n{}",
        w.peer.log_tail(60)
    );
    w.client.quit().await;
}

/// How long a message from the component takes to reach the peer's client: on the link the
/// peer opened when bidi is on, else on a connection fedgate opens if it has none yet.
async fn reverse_reply_from_fedgate(w: &mut World, tag: &str) -> Duration {
    let bot = w.bot();
    let me = w.client.jid.clone();
    let id = format!("{tag}-fedgate");
    let sent = std::time::Instant::now();
    w.backend
        .send(&format!(
            "<message from='{bot}/bot' to='{me}' type='chat' id='{id}'><body>back</body></message>"
        ))
        .await;
    wait_message(w, &id).await;
    sent.elapsed()
}

/// How long a message from the peer's client takes to reach the component, on our link.
async fn reverse_reply_from_peer(w: &mut World, tag: &str) -> Duration {
    let bot = w.bot();
    let id = format!("{tag}-peer");
    let sent = std::time::Instant::now();
    w.client.message(&bot, &id, "back").await;
    let id_ = id.clone();
    w.backend
        .expect(&format!("message {id}"), |s| s.id() == Some(id_.as_str()))
        .await;
    sent.elapsed()
}

/// Our outbound link's liveness check was answered, or (on a link the peer opened) the peer
/// answered what we wrote back with acknowledgements or pings: the link is alive both ways.
async fn assert_liveness_check_answered_or_acked(w: &World) {
    for _ in 0..60 {
        let m = w.gw.metrics().await;
        // Series appear on their first event.
        let answered = metric_or_zero(&m, "fedgate_outbound_events_total{event=\"ping_answered\"}")
            + metric_or_zero(&m, "fedgate_s2s_sm_total{event=\"acked\"}");
        if answered >= 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no answer on the bidi link");
}

/// The ids of the s2s sessions (`s2sin…`, `s2sout…`) the peer logged as complete
fn peer_s2s_sessions(peer: &crate::peer::Peer) -> Vec<String> {
    let log = std::fs::read_to_string(peer.log_file()).unwrap_or_default();
    let mut ids: Vec<String> = Vec::new();
    for line in log.lines() {
        for word in line.split_whitespace() {
            if (word.starts_with("s2sin") || word.starts_with("s2sout"))
                && word.len() > 6
                && line.contains("s2s connection")
                && line.contains("complete")
                && !ids.iter().any(|i| i == word)
            {
                ids.push(word.to_string());
            }
        }
    }
    ids
}

/// The user writes to the component and gets its reply; asks disco#info and pings the
/// component (answered by it) and fedgate's domain (answered by fedgate); subscribes to the
/// component's presence, which the component accepts.
async fn peer_to_fedgate(w: &mut World) {
    let bot = w.bot();
    let user = w.user();
    let gw_domain = w.gw.domain.clone();
    let me = w.client.jid.clone();

    // Peer → fedgate: a message, and the component's reply.
    w.client.message(&bot, "c1", "hello from the peer").await;
    let m = w
        .backend
        .expect("message c1", |s| s.id() == Some("c1"))
        .await;
    assert_eq!(m.from(), Some(me.as_str()), "{}", text(m.raw()));
    assert_eq!(m.to(), Some(bot.as_str()));
    assert!(text(m.raw()).contains("<body>hello from the peer</body>"));
    w.backend
        .send(&format!(
            "<message from='{bot}/bot' to='{me}' type='chat' id='e1'><body>echo: hello</body></message>"
        ))
        .await;
    let e = wait_message(w, "e1").await;
    assert_eq!(e["from"], format!("{bot}/bot"));
    assert_eq!(e["body"], "echo: hello");

    // Peer → fedgate: disco#info and a ping to the component, answered by it.
    w.client
        .command(json!({"cmd": "disco", "to": bot, "tag": "d1"}))
        .await;
    let q = w
        .backend
        .expect("disco#info get", |s| {
            s.name() == "iq" && text(s.raw()).contains("disco#info")
        })
        .await;
    assert_eq!(q.from(), Some(me.as_str()));
    assert_eq!(q.type_(), Some("get"));
    w.backend
        .send(&crate::backend::disco_result(&bot, &me, q.id().unwrap()))
        .await;
    let r = w.client.result("d1").await;
    assert_eq!(r["type"], "result", "{r}");
    assert_eq!(
        r["identities"][0],
        json!(["component", "generic", "fedgate interop bot"])
    );
    assert!(r["features"]
        .as_array()
        .unwrap()
        .contains(&json!("urn:xmpp:ping")));

    w.client
        .command(json!({"cmd": "ping", "to": bot, "tag": "p1"}))
        .await;
    let q = w
        .backend
        .expect("ping", |s| {
            s.name() == "iq" && text(s.raw()).contains("urn:xmpp:ping")
        })
        .await;
    assert_eq!(q.from(), Some(me.as_str()));
    w.backend
        .send(&format!(
            "<iq type='result' from='{bot}' to='{me}' id='{}'/>",
            q.id().unwrap()
        ))
        .await;
    assert_eq!(w.client.result("p1").await["type"], "result");
    // A ping to fedgate's own domain is answered by the gateway (XEP-0199 on s2s).
    w.client
        .command(json!({"cmd": "ping", "to": gw_domain, "tag": "p2"}))
        .await;
    assert_eq!(w.client.result("p2").await["type"], "result");

    // Peer → fedgate: a presence subscription, accepted by the component.
    w.client
        .command(json!({"cmd": "subscription", "to": bot, "type": "subscribe"}))
        .await;
    let p = w
        .backend
        .expect("presence subscribe", |s| {
            s.name() == "presence" && s.type_() == Some("subscribe")
        })
        .await;
    assert_eq!(p.from(), Some(user.as_str()), "{}", text(p.raw()));
    assert_eq!(p.to(), Some(bot.as_str()));
    w.backend
        .send(&format!(
            "<presence from='{bot}' to='{user}' type='subscribed'/><presence from='{bot}/bot' to='{user}'/>"
        ))
        .await;
    wait_presence(w, "subscribed", &bot).await;
    wait_presence(w, "available", &format!("{bot}/bot")).await;
}

/// The component writes to the user; asks disco#info of and pings the user's client and the
/// peer server; subscribes to the user's presence, which the client accepts.
async fn fedgate_to_peer(w: &mut World) {
    let bot = w.bot();
    let user = w.user();
    let gw_domain = w.gw.domain.clone();
    let peer_domain = w.peer.domain.clone();
    let me = w.client.jid.clone();

    // Fedgate → peer: a message to the bare JID, delivered to the client.
    w.backend
        .send(&format!(
            "<message from='{bot}/bot' to='{user}' type='chat' id='m1'><body>from the component</body></message>"
        ))
        .await;
    let e = wait_message(w, "m1").await;
    assert_eq!(e["body"], "from the component");

    // Fedgate → peer: disco#info and pings, to the client and to the peer server itself.
    for (id, to, payload) in [
        (
            "q1",
            me.as_str(),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        ),
        (
            "q2",
            peer_domain.as_str(),
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        ),
        ("q3", me.as_str(), "<ping xmlns='urn:xmpp:ping'/>"),
        ("q4", peer_domain.as_str(), "<ping xmlns='urn:xmpp:ping'/>"),
    ] {
        w.backend
            .send(&format!(
                "<iq type='get' from='{bot}/bot' to='{to}' id='{id}'>{payload}</iq>"
            ))
            .await;
        let r = w
            .backend
            .expect(&format!("the answer to {id}"), |s| s.id() == Some(id))
            .await;
        assert_eq!(r.type_(), Some("result"), "{id}: {}", text(r.raw()));
        assert_eq!(r.from(), Some(to));
        if id == "q1" {
            assert!(text(r.raw()).contains("urn:xmpp:ping"), "{}", text(r.raw()));
        }
        if id == "q2" {
            assert!(
                text(r.raw()).contains("category=\"server\"")
                    || text(r.raw()).contains("category='server'"),
                "{}",
                text(r.raw())
            );
        }
    }

    // Fedgate → peer: a presence subscription, accepted by the client.
    let bot2 = format!("bot2@{gw_domain}");
    w.backend
        .send(&format!(
            "<presence from='{bot2}' to='{user}' type='subscribe'/>"
        ))
        .await;
    wait_presence(w, "subscribe", &bot2).await;
    let p = w
        .backend
        .expect("presence subscribed", |s| {
            s.name() == "presence" && s.type_() == Some("subscribed")
        })
        .await;
    assert_eq!(p.from(), Some(user.as_str()));
    assert_eq!(p.to(), Some(bot2.as_str()));
}

/// Each side asked the test's DNS server for the other's SRV record.
fn assert_found_through_srv(w: &World) {
    let gw_domain = &w.gw.domain;
    let peer_domain = &w.peer.domain;
    // Both found each other through SRV records served by the test's DNS server.
    let gw_srv = w
        .dns
        .queries_of(&format!("_xmpp-server._tcp.{gw_domain}"), RecordType::SRV);
    let peer_srv = w
        .dns
        .queries_of(&format!("_xmpp-server._tcp.{peer_domain}"), RecordType::SRV);
    assert!(gw_srv >= 1, "the peer never asked for fedgate's SRV record");
    assert!(
        peer_srv >= 1,
        "fedgate never asked for the peer's SRV record"
    );
}

/// Both directions authenticated by `method`; with dialback, each key was verified for real.
async fn assert_authenticated(w: &World, method: &str) {
    // How they authenticated each other.
    let m = w.gw.metrics().await;
    for direction in ["inbound", "outbound"] {
        let sample = format!(
            "fedgate_s2s_auth_total{{direction=\"{direction}\",method=\"{method}\",result=\"success\"}}"
        );
        assert!(
            metric(&m, &sample) >= 1.0,
            "{sample} in\n{m}\n{}",
            w.peer.log_tail(40)
        );
    }
    if method == "dialback" {
        // fedgate verified the peer's key (by connecting back to the peer: its certificate
        // proves nothing), the peer verified fedgate's (by connecting back to fedgate, whose
        // dialback answers are counted as `verify`), and the peer accepted fedgate's key.
        for sample in [
            "fedgate_dialback_total{result=\"valid\",role=\"result\"}",
            "fedgate_dialback_total{result=\"valid\",role=\"verify\"}",
            "fedgate_dialback_total{result=\"valid\",role=\"outbound\"}",
        ] {
            assert!(metric(&m, sample) >= 1.0, "{sample} in\n{m}");
        }
    }
    // A drop reason's series appears on its first drop: none dropped means no series.
    assert_eq!(
        metric_or_zero(
            &m,
            "fedgate_stanzas_dropped_total{reason=\"error_not_bounced\"}"
        ),
        0.0
    );
}

/// The peer answers fedgate's liveness check of the idle outbound link.
async fn assert_liveness_check_answered(w: &World) {
    let mut answered = 0.0;
    for _ in 0..60 {
        // Waiting for the first answer: until it comes the series does not exist.
        answered = metric_or_zero(
            &w.gw.metrics().await,
            "fedgate_outbound_events_total{event=\"ping_answered\"}",
        );
        if answered >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered >= 1.0, "the peer never answered a liveness check");
}

/// The client's next presence of this type from `from`.
async fn wait_presence(w: &mut World, type_: &str, from: &str) -> Value {
    w.client
        .wait_for(&format!("presence {type_} from {from}"), |e| {
            e["event"] == "presence" && e["type"] == type_ && e["from"] == from
        })
        .await
}

/// The client's next message with this id.
async fn wait_message(w: &mut World, id: &str) -> Value {
    w.client
        .wait_for(&format!("message {id}"), |e| {
            e["event"] == "message" && e["id"] == id
        })
        .await
}

/// What was negotiated, from fedgate's log and metrics and from a look at the peer's stream
/// features; printed (`--nocapture`) and appended to `$INTEROP_REPORT` when set.
async fn report(w: &mut World, what: &str) {
    let peer_domain = &w.peer.domain;
    let mut out = format!(
        "== {} {} ({what}): fedgate {} <-> {}\n",
        w.peer.kind.name(),
        w.peer.kind.version(),
        w.gw.domain,
        peer_domain
    );
    for line in fedgate_log(&format!("remote={peer_domain}")) {
        if line.contains("established") || line.contains("authenticated by") {
            let msg = line
                .split_once("fedgate::")
                .map_or(line.as_str(), |(_, m)| m);
            out.push_str(&format!("  fedgate log: {msg}\n"));
        }
    }
    let m = w.gw.metrics().await;
    for l in m.lines() {
        if (l.starts_with("fedgate_s2s_sm_total")
            || l.starts_with("fedgate_outbound_events_total")
            || l.starts_with("fedgate_s2s_auth_total")
            || l.starts_with("fedgate_tls_handshakes_total")
            || l.starts_with("fedgate_certificate_verdicts_total"))
            && !l.ends_with(" 0")
        {
            out.push_str(&format!("  metric: {l}\n"));
        }
    }
    out.push_str(&format!(
        "  peer's features to an s2s initiator after STARTTLS: {}\n",
        peer_features(&w.peer, &w.gw.domain).await
    ));
    println!("{out}");
    append_report(&out);
}

/// The stream features the peer offers an s2s initiator (us, as the gateway's domain, without a
/// client certificate) after STARTTLS, as `name (namespace)` list.
async fn peer_features(peer: &Peer, from: &str) -> String {
    let (_s, _id, features) =
        crate::harness::tls_s2s_stream(peer.s2s_addr(), from, &peer.domain, None).await;
    let e = features.element().unwrap();
    let mut names: Vec<String> = e
        .children()
        .map(|c| {
            let mut s = format!("{} ({})", c.name, c.ns);
            let mechs: Vec<String> = c.children().map(|m| m.text()).collect();
            if !mechs.is_empty() && c.name == "mechanisms" {
                s.push_str(&format!(" [{}]", mechs.join(", ")));
            }
            s
        })
        .collect();
    names.sort();
    names.join(", ")
}

/// Both ways, one message each, so that both s2s links are up.
async fn warm_up(w: &mut World, tag: &str) {
    let bot = w.bot();
    let me = w.client.jid.clone();
    let id = format!("{tag}-up");
    w.client.message(&bot, &id, "up").await;
    let id_ = id.clone();
    w.backend
        .expect(&format!("message {id}"), |s| s.id() == Some(id_.as_str()))
        .await;
    let id = format!("{tag}-down");
    w.backend
        .send(&format!(
            "<message from='{bot}/bot' to='{me}' type='chat' id='{id}'><body>down</body></message>"
        ))
        .await;
    wait_message(w, &id).await;
}

/// Sends `count` messages `{prefix}{i}` from the component to `to`, written in batches.
async fn component_sends(w: &mut World, to: &str, prefix: &str, count: usize) {
    let bot = w.bot();
    let mut batch = String::new();
    for i in 0..count {
        batch.push_str(&format!(
            "<message from='{bot}/bot' to='{to}' type='chat' id='{prefix}{i}'><body>{i}</body></message>"
        ));
        if batch.len() > 32 * 1024 || i + 1 == count {
            w.backend.send(&batch).await;
            batch.clear();
        }
    }
}

/// The peer stopped in the middle of a conversation: fedgate's stanzas to it come back as
/// bounces that say why (sent = delivered + bounced); the peer restarted: fedgate connects
/// again and delivery resumes, both ways.
pub async fn peer_stopped_then_restarted(kind: Kind, name: &str) {
    // Short retries and failure window, so that the bounces and the recovery take seconds.
    let mut w = world(
        kind,
        name,
        PeerTls::SelfSigned,
        "retry_window = \"2s\"\nretry_initial_delay = \"200ms\"\nretry_max_delay = \"500ms\"\nfailure_window = \"1s\"",
    )
    .await;
    warm_up(&mut w, "before").await;
    let user = w.user();
    let me = w.client.jid.clone();
    let bot = w.bot();

    w.peer.stop().await;
    w.client
        .wait_for("disconnected", |e| e["event"] == "disconnected")
        .await;

    // Stanzas to the stopped peer: 20 messages and an iq.
    let sent = 20;
    component_sends(&mut w, &me, "down", sent).await;
    w.backend
        .send(&format!(
            "<iq type='get' from='{bot}/bot' to='{user}' id='down-iq'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    let host = format!("xmpp.{}:{PEER_S2S_PORT}", w.peer.domain);
    let mut bounced = Vec::new();
    // Warm-up stanzas written just before the stop and not yet confirmed by a ping answer
    // (a peer without XEP-0198) are resent, and bounced too, saying they may have arrived.
    let mut unconfirmed = 0;
    let started = Instant::now();
    while bounced.len() < sent + 1 {
        let s = w
            .backend
            .expect("a bounce", |s| s.type_() == Some("error"))
            .await;
        let (condition, why) = stanza_error(&s);
        assert_eq!(condition, "remote-server-timeout", "{}", text(s.raw()));
        assert!(
            why.contains(&format!("cannot connect to {host}")) && why.contains("refused"),
            "the bounce names the cause: {}",
            text(s.raw())
        );
        let id = s.id().unwrap_or_default().to_string();
        if id.starts_with("before") {
            assert!(why.contains("may have been delivered"), "{}", text(s.raw()));
            unconfirmed += 1;
            continue;
        }
        bounced.push(id);
    }
    // The failure window (1 s, configured above) runs from the last failure.
    let failure_window_ends = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut expected: Vec<String> = (0..sent).map(|i| format!("down{i}")).collect();
    expected.push("down-iq".to_string());
    assert_eq!(bounced, expected, "every stanza bounced once, in order");
    let m = w.gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_bounces_total{condition=\"remote-server-timeout\"}"
        ),
        (sent + 1 + unconfirmed) as f64,
        "sent = delivered (0) + bounced"
    );
    println!(
        "{} stopped: {} stanzas bounced after {:?}",
        kind.name(),
        bounced.len(),
        started.elapsed()
    );

    // The peer restarts; after the failure window, fedgate connects again. The window is a
    // timer: wait for what is left of it (usually nothing, the restart takes longer).
    w.peer.restart().await;
    tokio::time::sleep_until(failure_window_ends).await;
    w.client = w.peer.login().await;
    let me = w.client.jid.clone();
    let count = 20;
    component_sends(&mut w, &me, "again", count).await;
    for i in 0..count {
        let e = wait_message(&mut w, &format!("again{i}")).await;
        assert_eq!(e["type"], "chat", "{e}");
    }
    // And the peer reaches fedgate again.
    w.client.message(&bot, "back", "I am back").await;
    let m = w
        .backend
        .expect("message back", |s| s.id() == Some("back"))
        .await;
    assert!(text(m.raw()).contains("I am back"));
    let m = w.gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_bounces_total{condition=\"remote-server-timeout\"}"
        ),
        (sent + 1 + unconfirmed) as f64,
        "nothing else bounced"
    );
    w.client.quit().await;
}

/// 10,000 messages each way, every one delivered, in order.
pub async fn burst(kind: Kind, name: &str) {
    let mut w = world(kind, name, PeerTls::TestCa, "").await;
    warm_up(&mut w, "warm").await;
    let n = 10_000;
    let me = w.client.jid.clone();
    let bot = w.bot();

    // fedgate → peer.
    let started = Instant::now();
    component_sends(&mut w, &me, "b", n).await;
    let mut next = 0;
    while next < n {
        let e = w
            .client
            .wait_for("a burst message", |e| e["event"] == "message")
            .await;
        assert_eq!(e["type"], "chat", "not an error: {e}");
        assert_eq!(e["id"], format!("b{next}"), "in order");
        assert_eq!(e["body"], next.to_string());
        next += 1;
    }
    let down = started.elapsed();

    // peer → fedgate.
    let started = Instant::now();
    w.client
        .command(json!({"cmd": "burst", "to": bot, "prefix": "c", "count": n}))
        .await;
    for i in 0..n {
        let s = w.backend.next_message().await;
        assert_ne!(s.type_(), Some("error"), "{}", text(s.raw()));
        assert_eq!(s.id(), Some(format!("c{i}").as_str()), "in order");
    }
    let up = started.elapsed();
    let line = format!(
        "{} {}: {n} messages fedgate → peer → client in {:.1} s ({:.0}/s); client → peer → fedgate in {:.1} s ({:.0}/s)\n",
        kind.name(),
        kind.version(),
        down.as_secs_f64(),
        n as f64 / down.as_secs_f64(),
        up.as_secs_f64(),
        n as f64 / up.as_secs_f64()
    );
    println!("{line}");
    append_report(&line);
    w.client.quit().await;
}

/// fedgate presenting a serverAuth-only certificate (what public CAs issue now) to a peer that
/// trusts its CA: Prosody accepts it for SASL EXTERNAL; ejabberd 23.01 refuses it
/// ("unsupported certificate purpose": OpenSSL checks the TLS client purpose), and fedgate falls
/// back to dialback for that peer, so that nothing is lost either way.
pub async fn server_auth_only_certificate(kind: Kind, name: &str) {
    // bidi = false: the certificate is checked on fedgate's own connection to the peer, which
    // with XEP-0288 the warm-up would not need (the peer's connection carries both ways).
    let mut w = world_with(
        kind,
        name,
        PeerTls::TestCa,
        "bidi = false",
        GwCert::ServerOnly,
        false,
    )
    .await;
    warm_up(&mut w, "eku").await;
    let m = w.gw.metrics().await;
    // An auth series appears on its first count: an attempt that never happened has none (the
    // `success` asserted beside each zero proves the family's name and labels).
    let outbound = |method: &str, result: &str| {
        metric_or_zero(
            &m,
            &format!(
                "fedgate_s2s_auth_total{{direction=\"outbound\",method=\"{method}\",result=\"{result}\"}}"
            ),
        )
    };
    match kind {
        Kind::Prosody => {
            assert_eq!(outbound("external", "success"), 1.0, "{m}");
            assert_eq!(outbound("external", "failure"), 0.0, "{m}");
        }
        Kind::Ejabberd => {
            assert_eq!(outbound("external", "failure"), 1.0, "{m}");
            assert_eq!(outbound("dialback", "success"), 1.0, "{m}");
            let refused = fedgate_log("SASL EXTERNAL refused (not-authorized)");
            assert!(
                refused
                    .iter()
                    .any(|l| l.contains(&format!("remote={}", w.peer.domain))),
                "fedgate logs the refusal"
            );
        }
        Kind::Jabberd2 => unreachable!(
            "jabberd2's s2s has no SASL: this scenario is left out (tests/interop/jabberd2.rs)"
        ),
    }
    // The peer's certificate is valid for fedgate either way: EXTERNAL inbound (ejabberd
    // opens a second stream to verify fedgate's dialback key, authenticated the same way).
    assert!(
        metric(
            &m,
            "fedgate_s2s_auth_total{direction=\"inbound\",method=\"external\",result=\"success\"}"
        ) >= 1.0,
        "{m}"
    );
    report(&mut w, "fedgate with a serverAuth-only certificate").await;
    w.client.quit().await;
}

/// The other direction of a restart: fedgate stopped while the peer's user talks to the
/// component. The peer bounces the user's messages (its own error, with its own cause); fedgate
/// restarted, the peer connects again (ejabberd after its retry delay, bouncing until then) and
/// delivery resumes. At the client, sent = delivered + bounced, in order.
pub async fn gateway_stopped_then_restarted(kind: Kind, name: &str) {
    let mut w = world(kind, name, PeerTls::SelfSigned, "").await;
    warm_up(&mut w, "before").await;
    let bot = w.bot();

    w.gw.stop().await;
    w.client.message(&bot, "gone", "anyone there?").await;
    let e = w
        .client
        .wait_for("the peer's bounce", |e| {
            e["event"] == "message" && e["id"] == "gone"
        })
        .await;
    assert_eq!(e["type"], "error", "{e}");
    let condition = e["condition"].as_str().unwrap_or_default().to_string();
    assert!(
        condition.starts_with("remote-server-") || condition == "service-unavailable",
        "{e}"
    );
    println!(
        "{} bounces a message to a stopped fedgate with <{condition}/> {}",
        kind.name(),
        e["text"]
    );

    w.gw.restart().await;
    w.backend = Backend::attach(&w.gw).await;
    let (mut delivered, mut bounced) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 0..30 {
        let id = format!("again{i}");
        w.client.message(&bot, &id, "back?").await;
        let World {
            client, backend, ..
        } = &mut w;
        let (want_message, want_bounce) = (format!("message {id}"), format!("the bounce of {id}"));
        let arrived = tokio::select! {
            s = backend.expect(&want_message, |s| s.id() == Some(id.as_str())) => {
                assert_ne!(s.type_(), Some("error"));
                true
            }
            e = client.wait_for(
                &want_bounce,
                |e| e["event"] == "message" && e["id"] == id.as_str() && e["type"] == "error",
            ) => {
                assert!(e["condition"].is_string(), "{e}");
                false
            }
        };
        if arrived {
            delivered.push(id);
            break;
        }
        bounced.push(id);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !delivered.is_empty(),
        "the peer never reached fedgate again; bounced: {bounced:?}\n{}",
        w.peer.log_tail(30)
    );
    println!(
        "{} reached fedgate again {:?} after the restart ({} messages bounced meanwhile)",
        kind.name(),
        started.elapsed(),
        bounced.len()
    );
    // And from now on everything arrives, in order.
    for i in 0..20 {
        w.client.message(&bot, &format!("after{i}"), "hi").await;
    }
    for i in 0..20 {
        let s = w.backend.next_message().await;
        assert_eq!(s.id(), Some(format!("after{i}").as_str()));
    }
    w.client.quit().await;
}

/// The peer stopped while fedgate is writing a stream of messages to it: every message is
/// delivered (before the stop, or after the restart from the peer's offline storage), or comes
/// back as an error that says why (from fedgate, or from the peer for what it accepted but could
/// no longer deliver). On a link without XEP-0198 (ejabberd's s2s, and with Prosody the
/// XEP-0288 stream Prosody opened, which fedgate writes back on) what the peer read but never
/// handled cannot be known: fedgate counts it as `unconfirmed`, and that count must cover the
/// gap. When Prosody's bidi stream drops, what fedgate still held for it goes to a new
/// outbound session, which bounces it when it cannot connect.
pub async fn peer_stopped_mid_stream(kind: Kind, name: &str) {
    let retry_window = Duration::from_secs(3);
    let mut w = world(
        kind,
        name,
        PeerTls::TestCa,
        // A short ping interval: the warm-up is confirmed by an answered ping before the burst,
        // so `unconfirmed` counts only what the burst left unconfirmed.
        "retry_window = \"3s\"\nretry_initial_delay = \"200ms\"\nretry_max_delay = \"500ms\"\nfailure_window = \"1s\"\nping_interval = \"500ms\"",
    )
    .await;
    warm_up(&mut w, "warm").await;
    let me = w.client.jid.clone();
    let n = 4000;
    component_sends(&mut w, &me, "s", n).await;

    // Stop the peer once the client has seen a few hundred of them.
    let mut delivered = std::collections::BTreeMap::<String, usize>::new();
    let mut in_order = Vec::new();
    while delivered.len() < 300 {
        let e = w
            .client
            .wait_for("a message", |e| e["event"] == "message")
            .await;
        in_order.push(e["id"].as_str().unwrap().to_string());
        *delivered
            .entry(e["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Whether our stanzas travel on the stream Prosody opened (XEP-0288), read while the link
    // is up: then that direction has no XEP-0198 and pings confirm it.
    let links = w.gw.metrics().await;
    let bidi_before_stop = links
        .lines()
        .filter(|l| l.starts_with("fedgate_s2s_bidi_links"))
        .any(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"));
    w.peer.stop().await;
    // The client reads what the peer wrote before it closed.
    while let Some(e) = w.client.event_within(Duration::from_secs(5)).await {
        if e["event"] == "message" && e["type"] != "error" {
            in_order.push(e["id"].as_str().unwrap().to_string());
            *delivered
                .entry(e["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        if e["event"] == "disconnected" {
            break;
        }
    }
    let before_stop = delivered.len();
    // Preconditions: the stop came mid-stream, and what came before it came in order, once.
    assert!(
        before_stop < n,
        "the peer stopped after all {n} were delivered"
    );
    let prefix: Vec<String> = (0..before_stop).map(|i| format!("s{i}")).collect();
    assert_eq!(
        in_order, prefix,
        "before the stop: s0, s1, … in order, once each"
    );

    // Bounces, from fedgate (after its retries) or from the peer, until none came for longer
    // than fedgate's retry window.
    let mut bounced = std::collections::BTreeMap::<String, usize>::new();
    let mut causes = std::collections::BTreeMap::<String, usize>::new();
    while let Some(s) = w
        .backend
        .next_within(retry_window + Duration::from_secs(3), |s| {
            s.type_() == Some("error")
        })
        .await
    {
        let (condition, why) = stanza_error(&s);
        assert!(!condition.is_empty(), "{}", text(s.raw()));
        let by = s.from().unwrap_or_default().to_string();
        *causes
            .entry(format!("<{condition}/> from {by}: {why}"))
            .or_default() += 1;
        *bounced
            .entry(s.id().unwrap_or_default().to_string())
            .or_default() += 1;
    }

    // The peer restarts; whatever it stored for the user arrives at the next login.
    w.peer.restart().await;
    w.client = w.peer.login().await;
    let mut after = 0;
    while let Some(e) = w.client.event_within(Duration::from_secs(3)).await {
        if e["event"] == "message" && e["type"] != "error" {
            *delivered
                .entry(e["id"].as_str().unwrap().to_string())
                .or_default() += 1;
            after += 1;
        }
    }

    let m = w.gw.metrics().await;
    // These two appear on their first count, and either may legitimately be none.
    let unconfirmed =
        metric_or_zero(&m, "fedgate_outbound_stanzas_total{event=\"unconfirmed\"}") as usize;
    let resent = metric_or_zero(&m, "fedgate_outbound_stanzas_total{event=\"resent\"}") as usize;
    let acks = metric(
        &m,
        "fedgate_s2s_sm_total{direction=\"outbound\",event=\"acked\"}",
    ) as usize;
    let delivered_and_bounced = delivered
        .keys()
        .filter(|id| bounced.contains_key(*id))
        .count();
    let missing: Vec<String> = (0..n)
        .map(|i| format!("s{i}"))
        .filter(|id| !delivered.contains_key(id) && !bounced.contains_key(id))
        .collect();
    let twice: Vec<&String> = delivered
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, _)| id)
        .collect();
    let line = format!(
        "{} {}: peer stopped mid-stream: {n} sent, {before_stop} delivered before the stop, {after} after the restart, {} bounced ({causes:?}), {} missing, {} delivered twice, {delivered_and_bounced} delivered and bounced; fedgate counted {unconfirmed} unconfirmed, {resent} resent, {acks} XEP-0198 acknowledgements\n",
        kind.name(),
        kind.version(),
        bounced.len(),
        missing.len(),
        twice.len(),
    );
    println!("{line}");
    append_report(&line);
    let sm_on = metric(
        &m,
        "fedgate_s2s_sm_total{direction=\"outbound\",event=\"enabled\"}",
    ) > 0.0;
    // With XEP-0288 fedgate writes on the stream Prosody opened (the warm-up's first message
    // came from the peer), which has no XEP-0198 in that direction: pings confirm it.
    let bidi = bidi_before_stop
        || metric_or_zero(&m, "fedgate_outbound_stanzas_total{event=\"unconfirmed\"}") > 0.0;
    if kind == Kind::Prosody && !bidi {
        assert!(
            sm_on,
            "Prosody's s2s offers XEP-0198: fedgate must have enabled it\n{m}"
        );
    }
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    // By ids: what is missing is one run of consecutive ids right after what was delivered
    // before the stop (what the peer had read but not handled when it stopped).
    let missing_at: Vec<usize> = missing.iter().map(|id| id[1..].parse().unwrap()).collect();
    if let (Some(first), Some(last)) = (missing_at.first(), missing_at.last()) {
        assert!(
            *first >= before_stop,
            "{missing:?} were delivered before the stop?"
        );
        assert_eq!(
            last - first + 1,
            missing_at.len(),
            "the missing ones are one run: {missing:?}"
        );
    }
    // fedgate kept every stanza the peer had not acknowledged (XEP-0198) or not confirmed by
    // answering a ping written after it (without): each was resent, then delivered or
    // bounced (possibly one the peer had handled without saying so yet).
    assert!(
        missing.is_empty(),
        "neither delivered nor bounced (XEP-0198 {}; {unconfirmed} counted unconfirmed): {:?}",
        if sm_on { "on" } else { "off" },
        &missing[..missing.len().min(20)]
    );
    assert!(bounced.values().all(|c| *c == 1), "a message bounced twice");
    w.client.quit().await;
}

/// XEP-0368: both sides publish a direct TLS listener first (`_xmpps-server._tcp`, priority 0)
/// and STARTTLS second; each connects to the other with TLS from the first byte.
pub async fn direct_tls(kind: Kind, name: &str) {
    // bidi = false: each side's own connection to the other is what is checked (with
    // XEP-0288 the peer's connection would carry both ways and fedgate open none).
    let mut w = world_with(
        kind,
        name,
        PeerTls::TestCa,
        "bidi = false",
        GwCert::ServerAndClient,
        true,
    )
    .await;
    warm_up(&mut w, "direct").await;
    let trace =
        w.gw.gw()
            .last_attempt(&w.peer.domain)
            .expect("fedgate connected to the peer")
            .to_string();
    assert!(
        trace.contains(&format!(
            "TCP connected to xmpp.{}:{}",
            w.peer.domain,
            crate::peer::PEER_DIRECT_TLS_PORT
        )),
        "fedgate used the peer's direct TLS listener:\n{trace}"
    );
    // Which of fedgate's listeners the peer's authenticated stream came in on.
    let inbound_peers: Vec<String> = fedgate_log(&format!("remote={}", w.peer.domain))
        .iter()
        .filter(|l| l.contains("inbound s2s authenticated"))
        .filter_map(|l| l.split("peer=").nth(1))
        .filter_map(|p| p.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(!inbound_peers.is_empty(), "the peer connected to fedgate");
    let direct = inbound_peers.iter().any(|p| {
        fedgate_log(&format!("peer={p}"))
            .iter()
            .any(|l| l.contains("listener=\"s2s-direct-tls\""))
    });
    assert!(
        direct,
        "the peer connects to fedgate's _xmpps-server (direct TLS) first"
    );
    let line = format!(
        "{} {}: fedgate → peer over direct TLS (XEP-0368); peer → fedgate over {}\n",
        kind.name(),
        kind.version(),
        if direct {
            "direct TLS (XEP-0368)"
        } else {
            "STARTTLS (it does not use _xmpps-server)"
        }
    );
    println!("{line}");
    append_report(&line);
    report(&mut w, "direct TLS published first").await;
    w.client.quit().await;
}

/// Appends to `$INTEROP_REPORT`, when set.
fn append_report(text: &str) {
    if let Ok(path) = std::env::var("INTEROP_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

/// The peer restarted while fedgate still retries: the messages fedgate took meanwhile wait in
/// its queue and go out on the new link once the peer is back (with XEP-0198, fedgate first
/// tries to resume the old stream). Each reaches the user once and in order (live, or from the
/// peer's offline storage when it arrives before the user is back), or comes back with the
/// peer's error; fedgate itself bounces none.
pub async fn peer_restarted_within_the_retry_window(kind: Kind, name: &str) {
    let mut w = world(
        kind,
        name,
        PeerTls::TestCa,
        "retry_window = \"30s\"\nretry_initial_delay = \"200ms\"\nretry_max_delay = \"1s\"",
    )
    .await;
    warm_up(&mut w, "before").await;
    let user = w.user();
    w.peer.stop().await;
    w.client
        .wait_for("disconnected", |e| e["event"] == "disconnected")
        .await;
    let n = 20;
    // A retry counted after the sends: fedgate holds them and is trying the stopped peer.
    let retries = "fedgate_outbound_events_total{event=\"retry\"}";
    let retried = metric_or_zero(&w.gw.metrics().await, retries);
    component_sends(&mut w, &user, "r", n).await;
    wait_for_metric(&w.gw, retries, retried + 1.0).await;
    w.peer.restart().await;
    w.client = w.peer.login().await;

    // What the user gets, until nothing more comes; then what came back to the component.
    let mut delivered = collect_messages(&mut w.client, "r").await;
    let first_login = delivered.len();
    let mut bounced = Vec::new();
    while let Some(s) = w
        .backend
        .next_within(Duration::from_millis(500), |s| s.type_() == Some("error"))
        .await
    {
        let (condition, why) = stanza_error(&s);
        // Who says it bounced (fedgate writes no `by`): for the report only; what fedgate
        // bounced is counted below.
        let by = error_by(&s);
        bounced.push(format!(
            "{} <{condition}/> by {by}: {why}",
            s.id().unwrap_or_default()
        ));
    }
    let mut sorted = delivered.clone();
    sorted.sort_by_key(|id| id[1..].parse::<usize>().unwrap());
    assert_eq!(delivered, sorted, "delivered in order");
    if delivered.len() + bounced.len() < n {
        // A message the peer stored offline while the user was logging in may wait for the
        // next login (ejabberd 23.01 stores it while it flushes the offline store).
        w.client.quit().await;
        w.client = w.peer.login().await;
        delivered.extend(collect_messages(&mut w.client, "r").await);
    }
    let mut all: Vec<String> = delivered
        .iter()
        .cloned()
        .chain(
            bounced
                .iter()
                .map(|b| b.split(' ').next().unwrap().to_string()),
        )
        .collect();
    all.sort_by_key(|id| id[1..].parse::<usize>().unwrap());
    let expected: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    assert_eq!(all, expected, "each delivered or bounced by the peer, once");
    if kind == Kind::Prosody {
        assert!(bounced.is_empty(), "{bounced:?}");
        assert_eq!(first_login, n, "all at the first login");
    }
    let m = w.gw.metrics().await;
    // fedgate itself bounced none: every error above is the peer's. The family appears on the
    // first bounce, so no series at all is the zero asserted.
    assert_eq!(
        metric_or_zero(&m, "fedgate_bounces_total"),
        0.0,
        "fedgate bounced a stanza it should have delivered: {bounced:?}\n{m}"
    );
    let line = format!(
        "{} {}: restarted within fedgate's retry window: of {n} messages fedgate queued meanwhile, {first_login} delivered in order at the user's first login, {} at the next one, {} bounced by the peer {bounced:?}; XEP-0198 resumption tried {} time(s), refused {} time(s)\n",
        kind.name(),
        kind.version(),
        delivered.len() - first_login,
        bounced.len(),
        metric(&m, "fedgate_s2s_sm_total{direction=\"outbound\",event=\"resumed\"}")
            + metric(&m, "fedgate_s2s_sm_total{direction=\"outbound\",event=\"resume_failed\"}"),
        metric(&m, "fedgate_s2s_sm_total{direction=\"outbound\",event=\"resume_failed\"}"),
    );
    println!("{line}");
    append_report(&line);
    w.client.quit().await;
}

/// The ids of the messages starting with `prefix` that the client reports until nothing came
/// for three seconds (none of them an error).
async fn collect_messages(client: &mut Client, prefix: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(e) = client.event_within(Duration::from_secs(3)).await {
        if e["event"] == "message" && e["id"].as_str().is_some_and(|id| id.starts_with(prefix)) {
            assert_eq!(e["type"], "chat", "not an error: {e}");
            ids.push(e["id"].as_str().unwrap().to_string());
        }
    }
    ids
}

/// The `by` attribute of an error stanza's `<error/>`: who generated it.
fn error_by(s: &fedgate::xml::stanza::Stanza) -> String {
    let e = s.element().expect("a parsed stanza");
    let by = e
        .children()
        .find(|c| c.name == "error")
        .and_then(|error| error.attr("by"))
        .unwrap_or_default()
        .to_string();
    by
}
