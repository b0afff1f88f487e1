//! Metrics as operators use them: every metric that a dashboard panel or an alert rule in
//! `dashboards/` reads exists and moves under real traffic; per-peer labels stay bounded with
//! 1,000 remote domains; `/readyz` says what is missing; and Debian's Prometheus, scraping a live
//! fedgate, evaluates every dashboard expression and alert rule to a non-empty result.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::certs::{ca, CertSpec};
use crate::harness::*;
use crate::proxy::TestProxy;

/// Where the dashboards and alert rules live.
fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// Every PromQL expression of the dashboards (with Grafana's variables in) and of the alert
/// rules, each with where it comes from.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in ["fedgate-overview.json", "fedgate-peers.json"] {
        let text = std::fs::read_to_string(dashboards_dir().join(file)).unwrap();
        // The dashboards are JSON; every "expr" value is a query.
        for (i, chunk) in text.split("\"expr\": \"").skip(1).enumerate() {
            let end = chunk.find("\",").or_else(|| chunk.find('"')).unwrap();
            let expr = chunk[..end].replace("\\\"", "\"");
            out.push((format!("{file} query {i}"), expr));
        }
    }
    for (name, expr) in alert_rules() {
        out.push((format!("alert {name}"), expr));
    }
    assert!(out.len() > 40, "found only {} expressions", out.len());
    out
}

/// (alert name, expression) of every rule in `alerts.yml`.
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dashboards_dir().join("alerts.yml")).unwrap();
    let mut rules = Vec::new();
    let mut lines = text.lines().peekable();
    let mut name = String::new();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(n) = trimmed.strip_prefix("- alert: ") {
            name = n.to_string();
        } else if let Some(expr) = trimmed.strip_prefix("expr:") {
            let expr = expr.trim();
            let expr = if expr == "|" {
                // A block: every following line indented deeper than `expr:`.
                let indent = line.len() - line.trim_start().len();
                let mut block = Vec::new();
                while let Some(next) = lines.peek() {
                    if next.trim().is_empty() || next.len() - next.trim_start().len() > indent {
                        block.push(next.trim().to_string());
                        lines.next();
                    } else {
                        break;
                    }
                }
                block.join(" ")
            } else {
                expr.to_string()
            };
            rules.push((name.clone(), expr.trim().to_string()));
        }
    }
    assert_eq!(rules.len(), 6, "alert rules: {rules:?}");
    rules
}

/// The metric names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = (rest.starts_with("fedgate_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..len];
            names.insert(name.strip_suffix("_bucket").unwrap_or(name).to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// A gateway (a.test) with traffic of every kind: EXTERNAL with b.test, dialback with c.test
/// (self-signed), a link to e.test (no XEP-0198) that is cut, a domain that does not exist, a
/// peer that refuses connections while stanzas for it pile up, a backend that never attaches,
/// our certificate and b's expiring in 7 days, and a client that sends garbage.
struct Busy {
    _dns: TestDns,
    a: Instance,
    b: Instance,
    c: Instance,
    e: Instance,
    proxy_e: TestProxy,
    backends: Vec<RawStream>,
}

/// A certificate from the test CA that expires in 7 days.
fn soon() -> CertSpec {
    CertSpec {
        expires_in_days: Some(7),
        ..CertSpec::default()
    }
}

impl Busy {
    async fn start() -> Busy {
        let dns = TestDns::start().await;
        let b = instance(&dns, "b.test").cert(soon()).start().await;
        // c.test holds a.test to dialback both ways (it offers no EXTERNAL to it).
        let c = instance(&dns, "c.test")
            .cert(CertSpec {
                self_signed: true,
                ..CertSpec::default()
            })
            .peer("domain = \"a.test\"\nauth = \"dialback\"")
            .start()
            .await;
        let e = instance(&dns, "e.test")
            .s2s("stream_management = false")
            .start()
            .await;
        let proxy_e = TestProxy::start(e.s2s_addr()).await;
        // down.test resolves, but nothing listens there.
        dns.add("down.test", next_loopback());
        let a = instance(&dns, "a.test")
            .cert(soon())
            .backend("extra.a.test", "extra-secret")
            .backend("comp.a.test", "comp-secret")
            .route("e.test", proxy_e.addr, false)
            .s2s(
                "ping_interval = \"1s\"\nretry_window = \"10m\"\nretry_initial_delay = \"100ms\"\nretry_max_delay = \"300ms\"",
            )
            .metrics("peers = [\"down.test\"]\ntop_peers = 5")
            .federation("deny = [\"spam.test\"]")
            // c.test's streams are held to 4 KiB/s, so that its burst below waits.
            .peer("domain = \"c.test\"\nmax_stanza_bytes = 4096\nmax_inbound_bytes_per_second = 4096")
            .start()
            .await;
        Busy {
            _dns: dns,
            a,
            b,
            c,
            e,
            proxy_e,
            backends: Vec::new(),
        }
    }

    /// Runs the traffic; stanzas for down.test come in two batches `apart`, so that its
    /// queue is seen growing.
    async fn traffic(&mut self, apart: Duration) {
        let mut a = self.a.backend().await;
        let mut b = self.b.backend().await;
        let mut c = self.c.backend().await;
        for i in 0..20 {
            a.send(&format!(
                "<message from='u@a.test' to='v@b.test' id='ab{i}'><body>hi</body></message>"
            ))
            .await;
            b.send(&format!(
                "<message from='v@b.test' to='u@a.test' id='ba{i}'><body>hi</body></message>"
            ))
            .await;
        }
        a.send("<presence from='u@a.test' to='v@b.test' type='subscribe'/>")
            .await;
        // A second local domain rides on the link to b.test (XEP-0220 multiplexing).
        wait_for_metric(
            &self.a,
            "fedgate_s2s_auth_total{direction=\"outbound\",method=\"external\",result=\"success\"}",
            1.0,
        )
        .await;
        let mut comp = self.a.backend_for("comp.a.test", "comp-secret").await;
        comp.send(
            "<message from='c@comp.a.test' to='v@b.test' id='comp'><body>hi</body></message>",
        )
        .await;
        wait_for_metric(
            &self.a,
            "fedgate_s2s_piggyback_total{result=\"carried\"}",
            1.0,
        )
        .await;
        a.send("<iq from='u@a.test' to='b.test' type='get' id='ping'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        for i in 0..5 {
            a.send(&format!(
                "<message from='u@a.test' to='w@c.test' id='ac{i}'><body>hi</body></message>"
            ))
            .await;
            c.send(&format!(
                "<message from='w@c.test' to='u@a.test' id='ca{i}'><body>hi</body></message>"
            ))
            .await;
        }
        // About 7 KiB from c.test: past its burst, so a.test's reads wait on the byte rate.
        for i in 5..65 {
            c.send(&format!(
                "<message from='w@c.test' to='u@a.test' id='ca{i}'><body>a little more</body></message>"
            ))
            .await;
        }
        // Bounces come in two bursts, so that Prometheus sees their rate.
        for i in 0..20 {
            a.send(&format!(
                "<message from='u@a.test' to='x@nowhere.test' id='n{i}'><body>?</body></message>"
            ))
            .await;
        }
        // The policy refuses spam.test both ways, in two bursts like the bounces.
        a.send("<message from='u@a.test' to='x@spam.test' id='spam1'><body>?</body></message>")
            .await;
        let mut spam = RawStream::connect(self.a.s2s_addr()).await;
        spam.send(&s2s_header("spam.test", "a.test")).await;
        spam.expect_stream_error().await;
        // A stanza over c.test's configured size limit is bounced, not sent.
        a.send(&format!(
            "<message from='u@a.test' to='w@c.test' id='big'><body>{}</body></message>",
            "x".repeat(5000)
        ))
        .await;
        // A reload of the same file: applied, nothing closed.
        let reloaded = self
            .a
            .reload(|t| t.to_string())
            .expect("the same file reloads");
        assert!(reloaded.closed.is_empty(), "{reloaded}");
        // An error is never bounced: it is counted as dropped.
        a.send("<message from='u@a.test' to='x@nowhere.test' type='error' id='err'/>")
            .await;
        // The link to e.test (no XEP-0198) drops right after its stanzas arrived, before a
        // ping could confirm them: they count as unconfirmed.
        let mut e = self.e.backend().await;
        for i in 0..10 {
            a.send(&format!(
                "<message from='u@a.test' to='y@e.test' id='e{i}'><body>hi</body></message>"
            ))
            .await;
        }
        for _ in 0..10 {
            e.next().await;
        }
        self.proxy_e.cut();
        for i in 0..60 {
            a.send(&format!(
                "<message from='u@a.test' to='z@down.test' id='d{i}'><body>hi</body></message>"
            ))
            .await;
        }
        // A backend with acknowledgements on the component stream (XEP-0198 on XEP-0114):
        // it acknowledges the first stanza the gateway writes to it, the gateway acknowledges
        // its stanza to a.test, and it goes away before acknowledging the second: routed
        // again (bounced to a.test, which has no other session for extra.a.test).
        let mut acking = RawStream::connect(self.a.gw().component_addr).await;
        acking
            .send("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' xmlns:sm='urn:xmpp:sm:3' xmlns:held='urn:fedgate:held:0' to='extra.a.test'>")
            .await;
        let id = acking.expect_header().await.id.clone().unwrap();
        acking
            .send(&format!(
                "<handshake>{}</handshake><enable xmlns='urn:xmpp:sm:3'/>",
                fedgate::dialback::component_handshake(&id, "extra-secret")
            ))
            .await;
        assert_eq!(acking.next().await.name(), "handshake");
        assert_eq!(acking.next().await.name(), "enabled");
        a.send("<message from='u@a.test' to='extra.a.test' id='x1'/>")
            .await;
        assert_eq!(acking.next().await.id(), Some("x1"));
        acking
            .send("<a xmlns='urn:xmpp:sm:3' h='1'/><message from='extra.a.test' to='u@a.test' id='x2'/>")
            .await;
        let a_ = &self.a;
        wait_for_metric(
            a_,
            "fedgate_component_acked_total{direction=\"outbound\"}",
            1.0,
        )
        .await;
        wait_for_metric(
            a_,
            "fedgate_component_acked_total{direction=\"inbound\"}",
            1.0,
        )
        .await;
        a.send("<message from='u@a.test' to='extra.a.test' id='x3'/>")
            .await;
        loop {
            if acking.next().await.id() == Some("x3") {
                break;
            }
        }
        // One for down.test (it waits in the queue) ahead of one that leaves at once: the
        // first is held so that the count passes it.
        acking
            .send("<message from='extra.a.test' to='x@down.test' id='x4'/><message from='extra.a.test' to='u@a.test' id='x5'/>")
            .await;
        wait_for_metric(a_, "fedgate_component_held_total", 1.0).await;
        drop(acking);
        wait_for_metric(a_, "fedgate_component_unacked_returned_total", 1.0).await;

        // Garbage on the s2s port: a stream error.
        let mut garbage = RawStream::connect(self.a.s2s_addr()).await;
        garbage.send("<not-a-stream/>").await;
        garbage.expect_stream_error().await;

        let a_ = &self.a;
        wait_for_metric(
            a_,
            "fedgate_s2s_auth_total{direction=\"inbound\",method=\"external\",result=\"success\"}",
            1.0,
        )
        .await;
        wait_for_metric(
            a_,
            "fedgate_s2s_auth_total{direction=\"outbound\",method=\"external\",result=\"success\"}",
            1.0,
        )
        .await;
        wait_for_metric(
            a_,
            "fedgate_s2s_auth_total{direction=\"inbound\",method=\"dialback\",result=\"success\"}",
            1.0,
        )
        .await;
        wait_for_metric(
            a_,
            "fedgate_s2s_auth_total{direction=\"outbound\",method=\"dialback\",result=\"success\"}",
            1.0,
        )
        .await;
        wait_for_metric(a_, "fedgate_bounces_total{cause=\"dns\"}", 20.0).await;
        wait_for_metric(
            a_,
            "fedgate_stanzas_total{link=\"s2s\",direction=\"outbound\",kind=\"message\"}",
            35.0,
        )
        .await;
        wait_for_metric(
            a_,
            "fedgate_stanzas_total{link=\"s2s\",direction=\"inbound\",kind=\"message\"}",
            25.0,
        )
        .await;
        wait_for_metric(a_, "fedgate_outbound_events_total{event=\"retry\"}", 1.0).await;
        wait_for_metric(
            a_,
            "fedgate_outbound_events_total{event=\"ping_answered\"}",
            1.0,
        )
        .await;
        wait_for_metric(
            a_,
            "fedgate_outbound_stanzas_total{event=\"unconfirmed\"}",
            1.0,
        )
        .await;

        tokio::time::sleep(apart).await;
        for i in 60..150 {
            a.send(&format!(
                "<message from='u@a.test' to='z@down.test' id='d{i}'><body>hi</body></message>"
            ))
            .await;
        }
        for i in 20..40 {
            a.send(&format!(
                "<message from='u@a.test' to='x@nowhere.test' id='n{i}'><body>?</body></message>"
            ))
            .await;
        }
        a.send("<message from='u@a.test' to='x@spam.test' id='spam2'><body>?</body></message>")
            .await;
        wait_for_metric(a_, "fedgate_bounces_total{cause=\"dns\"}", 40.0).await;
        wait_for_metric(a_, "fedgate_outbound_queue_stanzas", 150.0).await;
        self.backends.extend([a, b, c, e, comp]);
    }
}

/// Names, in the exposition, of samples with a non-zero value, and of all samples.
fn samples(exposition: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut moved = BTreeSet::new();
    let mut all = BTreeSet::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap();
        let name = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| exposition.contains(&format!("# TYPE {base} histogram")))
            .unwrap_or(name)
            .to_string();
        if value.parse::<f64>().unwrap_or(0.0) != 0.0 {
            moved.insert(name.clone());
        }
        all.insert(name);
    }
    (moved, all)
}

#[tokio::test]
async fn every_metric_in_a_dashboard_or_alert_rule_exists_and_moves_under_traffic() {
    let mut busy = Busy::start().await;
    busy.traffic(Duration::from_millis(100)).await;
    let exposition = busy.a.metrics().await;
    let (moved, all) = samples(&exposition);
    let mut used = BTreeSet::new();
    for (_, expr) in expressions() {
        used.extend(metric_names(&expr));
    }
    assert!(used.len() > 30, "{used:?}");
    let missing: Vec<_> = used.iter().filter(|n| !all.contains(*n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    // Counters and histograms must have counted something; gauges must exist (a gauge at 0,
    // like the ready flag with a backend missing, is a value too). The process collector's
    // `process_cpu_seconds_total` counts whole seconds of the test process, which this test
    // run alone does not reach: it must exist, like a gauge.
    let still: Vec<_> = used
        .iter()
        .filter(|n| !n.starts_with("process_"))
        .filter(|n| {
            let counted = n.ends_with("_total")
                || exposition.contains(&format!("# TYPE {n} histogram"))
                || exposition.contains(&format!("# TYPE {n} counter"));
            counted && !moved.contains(*n)
        })
        .collect();
    assert!(still.is_empty(), "never moved: {still:?}");

    // A few values an operator reads off the dashboards.
    let m = |s: &str| metric(&exposition, s);
    assert_eq!(
        m("fedgate_component_attached{backend=\"extra.a.test\"}"),
        0.0
    );
    assert_eq!(m("fedgate_component_attached{backend=\"a.test\"}"), 1.0);
    assert_eq!(m("fedgate_peer_up{peer=\"down.test\"}"), 0.0);
    assert_eq!(m("fedgate_peer_up{peer=\"b.test\"}"), 1.0);
    assert!(m("fedgate_peer_connect_failures_total{peer=\"down.test\"}") >= 1.0);
    assert!(m("fedgate_peer_queued_stanzas{peer=\"down.test\"}") >= 150.0);
    assert_eq!(
        m("fedgate_bounces_total{condition=\"remote-server-not-found\",cause=\"dns\"}"),
        40.0
    );
    assert_eq!(
        m("fedgate_stanzas_dropped_total{reason=\"error_not_bounced\"}"),
        1.0
    );
    assert!(
        m("fedgate_s2s_sessions{direction=\"outbound\",state=\"established\",auth=\"external\"}")
            >= 1.0
    );
    assert!(
        m("fedgate_s2s_sessions{direction=\"inbound\",state=\"established\",auth=\"dialback\"}")
            >= 1.0
    );
    assert!(m("fedgate_tls_handshakes_total{result=\"ok\",version=\"TLSv1.3\"}") >= 2.0);
    let week = 7.0 * 86400.0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for sample in [
        "fedgate_certificate_expiry_timestamp_seconds{domain=\"a.test\"}",
        "fedgate_peer_certificate_expiry_timestamp_seconds{peer=\"b.test\"}",
    ] {
        let left = m(sample) - now;
        assert!((left - week).abs() < 86400.0, "{sample}: {left} s left");
    }
    // Per-peer stanzas add up with the totals.
    let peers_out = m("fedgate_peer_stanzas_total{direction=\"outbound\"}");
    let all_out = m("fedgate_stanzas_total{link=\"s2s\",direction=\"outbound\"}");
    assert_eq!(peers_out, all_out);
    drop(busy);
}

#[tokio::test]
async fn readyz_names_the_backend_that_is_missing_until_it_attaches() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend("extra.a.test", "extra-secret")
        .start()
        .await;
    let addr = a.gw().metrics_addr.unwrap();
    let health = http_get(addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.0 200"), "{health}");
    let not_ready = http_get(addr, "/readyz").await;
    assert!(not_ready.starts_with("HTTP/1.0 503"), "{not_ready}");
    assert!(
        not_ready.contains("no backend attached for a.test"),
        "{not_ready}"
    );
    assert!(
        not_ready.contains("no backend attached for extra.a.test"),
        "{not_ready}"
    );
    let _main = a.backend().await;
    let _extra = a.backend_for("extra.a.test", "extra-secret").await;
    let ready = http_get(addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.0 200"), "{ready}");
    assert_eq!(metric(&a.metrics().await, "fedgate_ready"), 1.0);
}

#[tokio::test]
async fn peer_labels_stay_bounded_with_a_thousand_remote_domains() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .metrics("peers = [\"d7.many.test\"]\ntop_peers = 10")
        .s2s("max_domain_pairs_per_stream = 2000")
        .start()
        .await;
    let mut backend = a.backend().await;
    // One TLS stream whose certificate covers *.many.test: each domain's dialback key is
    // accepted on the certificate (XEP-0344), so 1,000 domains talk over one connection.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca().issue(&CertSpec::for_names(&["*.many.test"]), dir.path(), "many");
    let (mut s, _, _) =
        tls_s2s_stream(a.s2s_addr(), "d0.many.test", "a.test", Some((&cert, &key))).await;
    const DOMAINS: usize = 1000;
    for i in 0..DOMAINS {
        s.send(&format!(
            "<db:result from='d{i}.many.test' to='a.test'>unchecked</db:result>"
        ))
        .await;
    }
    for i in 0..DOMAINS {
        let answer = s.next().await;
        assert_eq!(
            answer.type_(),
            Some("valid"),
            "answer {i}: {}",
            text(answer.raw())
        );
    }
    // d{i} sends i % 50 + 1 messages; the busiest get labels.
    let mut sent = 0;
    for i in 0..DOMAINS {
        for j in 0..(i % 50 + 1) {
            s.send(&format!(
                "<message from='u@d{i}.many.test' to='v@a.test' id='{i}-{j}'/>"
            ))
            .await;
            sent += 1;
        }
    }
    for _ in 0..sent {
        backend.next().await;
    }
    let exposition = a.metrics().await;
    let peers: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split("peer=\"").nth(1)?.split('"').next())
        .collect();
    // The named peer, at most 10 by traffic, and "other".
    assert!(peers.contains("d7.many.test"), "{peers:?}");
    assert!(peers.contains("other"), "{peers:?}");
    assert!(peers.len() <= 12, "{} peer labels: {peers:?}", peers.len());
    let series = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("peer=\""))
        .count();
    assert!(series <= 12 * 10, "{series} per-peer series");
    assert_eq!(metric(&exposition, "fedgate_peers_tracked"), DOMAINS as f64);
    // Nothing is lost to the bound: labelled and "other" add up to every stanza.
    assert_eq!(
        metric(
            &exposition,
            "fedgate_peer_stanzas_total{direction=\"inbound\"}"
        ),
        sent as f64
    );
    assert_eq!(
        metric(&exposition, "fedgate_peer_sessions{direction=\"inbound\"}"),
        DOMAINS as f64
    );
}

/// Debian's Prometheus server, scraping `target` every second and evaluating the alert rules.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!(
                "prometheus is not installed: scripts/test.sh installs Debian's prometheus package"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let rules = dashboards_dir().join("alerts.yml");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: fedgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` (with a query string already encoded) and its JSON body.
    async fn get(&self, path: &str) -> String {
        let response = http_get(self.addr, path).await;
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default()
    }

    /// For `scripts/dashboard-snapshots.sh`: every dashboard expression over the last 30 s,
    /// as Prometheus's `query_range` JSON, in `dir/FILE-N.json` (N in the file's order).
    async fn save_dashboard_data(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for (origin, expr) in expressions() {
            let Some((file, n)) = origin.split_once(" query ") else {
                continue; // an alert rule
            };
            let expr = expr
                .replace("$__rate_interval", "5s")
                .replace("$peer", ".+");
            let body = self
                .get(&format!(
                    "/api/v1/query_range?query={}&start={}&end={end}&step=1",
                    url_encode(&expr),
                    end - 30
                ))
                .await;
            let name = format!("{}-{n}.json", file.trim_end_matches(".json"));
            std::fs::write(dir.join(name), body).unwrap();
        }
    }

    async fn query(&self, expr: &str) -> String {
        self.get(&format!("/api/v1/query?query={}", url_encode(expr)))
            .await
    }

    /// Waits until Prometheus answers and has scraped fedgate `samples` times.
    async fn wait_for_samples(&self, samples: usize) {
        for _ in 0..600 {
            let body = tokio::time::timeout(
                Duration::from_secs(2),
                try_http_get(
                    self.addr,
                    &format!(
                        "/api/v1/query?query={}",
                        url_encode("count_over_time(fedgate_ready[5m])")
                    ),
                ),
            )
            .await
            .ok()
            .flatten();
            if let Some(body) = body {
                if let Some(n) = body
                    .split("\"value\":[")
                    .nth(1)
                    .and_then(|v| v.split('"').nth(1))
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    if n >= samples {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "Prometheus never scraped fedgate {samples} times; its log:\n{}",
            self.log()
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[tokio::test]
async fn prometheus_evaluates_every_dashboard_expression_and_alert_rule_against_a_live_fedgate() {
    let rules = dashboards_dir().join("alerts.yml");
    let promtool = which("promtool").unwrap_or_else(|| {
        panic!("promtool is not installed: scripts/test.sh installs Debian's prometheus package")
    });
    let check = Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let mut busy = Busy::start().await;
    let prometheus = Prometheus::start(busy.a.gw().metrics_addr.unwrap());
    prometheus.wait_for_samples(2).await;
    // The queue for down.test grows across scrapes.
    busy.traffic(Duration::from_millis(2500)).await;
    prometheus.wait_for_samples(8).await;

    let mut empty = Vec::new();
    for (origin, expr) in expressions() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$peer", ".+");
        let body = prometheus.query(&expr).await;
        assert!(
            body.contains("\"status\":\"success\""),
            "{origin}: {expr}\n{body}"
        );
        if body.contains("\"result\":[]") {
            empty.push(format!("{origin}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "empty results:\n{}", empty.join("\n"));
    if let Some(dir) = std::env::var_os("FEDGATE_DASHBOARD_DATA") {
        // Half a minute of traffic in rounds, for plots with a shape.
        for _ in 0..8 {
            // The backends of the last round detach before the next attaches again.
            busy.backends.clear();
            for g in [&busy.a, &busy.b, &busy.c, &busy.e] {
                eventually("the last round's backend detached", || {
                    !g.gw().router.component_attached(&g.domain)
                })
                .await;
            }
            busy.traffic(Duration::from_millis(2500)).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        prometheus.save_dashboard_data(Path::new(&dir)).await;
    }

    // Every alert's condition holds in this scenario: each rule is pending or firing.
    let mut states = String::new();
    for _ in 0..50 {
        states = prometheus.get("/api/v1/rules").await;
        if !states.contains("\"state\":\"inactive\"") && states.contains("\"state\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, _) in alert_rules() {
        let rule = states
            .split("\"name\":\"")
            .find(|chunk| chunk.starts_with(&format!("{name}\"")))
            .unwrap_or_else(|| panic!("{name} not loaded: {states}"));
        let state = rule
            .split("\"state\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next());
        assert!(
            matches!(state, Some("pending") | Some("firing")),
            "{name} is {state:?}: {rule}"
        );
    }
    drop(busy);
}
