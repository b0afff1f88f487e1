//! Closed federation: the allowlist in both directions, dry runs, live reload (SIGHUP,
//! `fedgate reload`, the reload API) applied to live sessions, and the per-peer view.

use std::time::Duration;

use crate::binary::{signal, spawn_fedgate, wait_for_line};
use crate::certs::{ca, CertSpec};
use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_fedgate");

/// Sends one message from `from`'s backend to `to`'s: `Ok` when it arrives, `Err(bounce text)`
/// when it comes back.
async fn deliver(
    sender: &mut RawStream,
    receiver: &mut RawStream,
    from: &str,
    to: &str,
    id: &str,
) -> Result<(), String> {
    sender
        .send(&format!(
            "<message from='alice@{from}' to='bob@{to}' id='{id}'><body>hi</body></message>"
        ))
        .await;
    tokio::select! {
        got = receiver.next() => {
            assert_eq!(got.id(), Some(id), "{}", text(got.raw()));
            Ok(())
        }
        bounce = sender.next() => {
            assert_eq!(bounce.type_(), Some("error"), "{}", text(bounce.raw()));
            assert_eq!(bounce.id(), Some(id));
            Err(text(bounce.raw()).to_string())
        }
    }
}

/// `sender`'s stanza to `to` bounces, and `refuser`'s policy refused `sender` again for it:
/// waits until `sender` holds no failed link (a bounce within its failure window would not
/// reach `refuser` at all), then requires `refuser`'s refusal count to move with the bounce.
async fn refused_again(
    sender: (&Instance, &mut RawStream),
    receiver: &mut RawStream,
    refuser_metrics: std::net::SocketAddr,
    (from, to, id): (&str, &str, &str),
) {
    // The series appears on the first refusal, which may be this one.
    let refusals = || async {
        metric_or_zero(
            &http_get(refuser_metrics, "/metrics").await,
            "fedgate_policy_refusals_total{mode=\"enforced\"}",
        )
    };
    let (instance, stream) = sender;
    eventually(&format!("{from} has no failed link before {id}"), || {
        instance.gw().router.outbound_count() == 0
    })
    .await;
    let before = refusals().await;
    let bounce = deliver(stream, receiver, from, to, id).await.unwrap_err();
    assert!(bounce.contains("policy-violation"), "{id}: {bounce}");
    assert!(
        refusals().await > before,
        "{id} bounced, but not by {to}'s policy: {bounce}"
    );
}

#[tokio::test]
async fn a_refused_domain_is_closed_with_policy_violation_naming_the_rule() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test")
        .federation("mode = \"allowlist\"\nallow = [\"friend.test\"]\ndeny = [\"*.spam.test\"]")
        .start()
        .await;
    for (from, rule) in [
        ("stranger.test", "not in federation.allow"),
        ("x.spam.test", "federation.deny \"*.spam.test\""),
    ] {
        let mut s = RawStream::connect(b.s2s_addr()).await;
        s.send(&s2s_header(from, "b.test")).await;
        s.expect_header().await;
        let error = s.next_text().await;
        assert!(error.contains("<policy-violation"), "{error}");
        assert!(error.contains(rule), "{error}");
    }
    let view = b.peer_view("stranger.test").await;
    assert!(
        view.policy.federation.starts_with("refused"),
        "{:?}",
        view.policy
    );
    assert!(
        view.failures
            .iter()
            .any(|f| f.cause.contains("policy-violation")),
        "{:?}",
        view.failures
    );
    let metrics = b.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "fedgate_policy_refusals_total{direction=\"inbound\",mode=\"enforced\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn dry_run_counts_what_it_would_refuse_but_delivers_both_ways() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test")
        .federation("mode = \"allowlist\"\nallow = [\"friend.test\"]\ndry_run = true")
        .start()
        .await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    deliver(&mut backend_a, &mut backend_b, "a.test", "b.test", "in")
        .await
        .expect("delivered to b despite the allowlist");
    deliver(&mut backend_b, &mut backend_a, "b.test", "a.test", "out")
        .await
        .expect("delivered from b despite the allowlist");
    let metrics = b.metrics().await;
    for direction in ["inbound", "outbound"] {
        assert!(
            metric(
                &metrics,
                &format!(
                    "fedgate_policy_refusals_total{{direction=\"{direction}\",mode=\"dry_run\"}}"
                )
            ) >= 1.0,
            "{direction}: {metrics}"
        );
    }
    // Every series exists from the start (the handles are resolved once), at 0 here.
    for direction in ["inbound", "outbound"] {
        let enforced =
            format!("fedgate_policy_refusals_total{{direction=\"{direction}\",mode=\"enforced\"}}");
        assert_eq!(metric(&metrics, &enforced), 0.0, "{enforced}");
    }
    let view = b.peer_view("a.test").await;
    assert!(
        view.policy.federation.starts_with("dry run"),
        "{:?}",
        view.policy
    );
}

#[tokio::test]
async fn a_reload_closes_live_sessions_the_new_policy_refuses_and_keeps_the_others() {
    let dns = TestDns::start().await;
    // bidi = false: a session each way per peer, so that the reload is seen closing both
    // an inbound and an outbound one.
    let a = instance(&dns, "a.test")
        .federation("mode = \"allowlist\"\nallow = [\"b.test\", \"c.test\"]")
        .s2s("bidi = false")
        .start()
        .await;
    let b = instance(&dns, "b.test").start().await;
    let c = instance(&dns, "c.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    let mut backend_c = c.backend().await;
    // Sessions both ways with both peers.
    deliver(&mut backend_b, &mut backend_a, "b.test", "a.test", "b1")
        .await
        .unwrap();
    deliver(&mut backend_a, &mut backend_b, "a.test", "b.test", "b2")
        .await
        .unwrap();
    deliver(&mut backend_c, &mut backend_a, "c.test", "a.test", "c1")
        .await
        .unwrap();
    deliver(&mut backend_a, &mut backend_c, "a.test", "c.test", "c2")
        .await
        .unwrap();
    assert_eq!(a.peer_view("b.test").await.sessions.len(), 2);

    // A file that does not validate is refused; the running policy stays.
    let refused = a
        .reload(|t| t.replace("mode = \"allowlist\"", "mode = \"closed\""))
        .unwrap_err();
    let refused = refused.to_string();
    assert!(
        refused.contains("[federation]") && refused.contains("unknown variant `closed`"),
        "{refused}"
    );
    deliver(&mut backend_a, &mut backend_b, "a.test", "b.test", "b3")
        .await
        .unwrap();

    let reloaded = a
        .reload(|t| t.replace("allow = [\"b.test\", \"c.test\"]", "allow = [\"c.test\"]"))
        .unwrap();
    assert_eq!(reloaded.closed.len(), 2, "{reloaded}");
    assert!(
        reloaded.to_string().contains("b.test is refused by policy"),
        "{reloaded}"
    );

    // b's sessions are gone both ways; c's are the same sessions as before.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !a.peer_view("b.test").await.sessions.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's sessions were not closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = b.peer_view("a.test").await;
    assert!(
        view.failures
            .iter()
            .any(|f| f.cause.contains("policy-violation")),
        "b saw the policy-violation: {:?}",
        view.failures
    );
    let bounce = deliver(&mut backend_a, &mut backend_b, "a.test", "b.test", "b4")
        .await
        .unwrap_err();
    assert!(bounce.contains("<not-allowed"), "{bounce}");
    assert!(bounce.contains("not in federation.allow"), "{bounce}");
    let bounce = deliver(&mut backend_b, &mut backend_a, "b.test", "a.test", "b5")
        .await
        .unwrap_err();
    assert!(bounce.contains("policy-violation"), "{bounce}");

    let established =
        |m: &str| metric(m, "fedgate_outbound_attempts_total{result=\"established\"}");
    let before = established(&c.metrics().await);
    deliver(&mut backend_c, &mut backend_a, "c.test", "a.test", "c3")
        .await
        .unwrap();
    deliver(&mut backend_a, &mut backend_c, "a.test", "c.test", "c4")
        .await
        .unwrap();
    assert_eq!(established(&c.metrics().await), before, "c's link was kept");
    assert_eq!(a.peer_view("c.test").await.sessions.len(), 2);
    let metrics = a.metrics().await;
    assert_eq!(
        metric(&metrics, "fedgate_config_reloads_total{result=\"applied\"}"),
        1.0
    );
}

/// A gateway started without a configuration file (the library's `gateway::start` with a
/// config built in memory) has nothing to read again: the reload is refused with a text that
/// says so, and counted as refused like any other.
#[tokio::test]
async fn a_reload_without_a_configuration_file_is_refused_and_counted() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let e = a.gw().reload_file().unwrap_err();
    assert!(matches!(e, fedgate::reload::ReloadError::NoFile), "{e}");
    assert!(
        e.to_string()
            .contains("started without a configuration file"),
        "{e}"
    );
    let m = a.metrics().await;
    assert_eq!(
        metric(&m, "fedgate_config_reloads_total{result=\"refused\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "fedgate_config_reloads_total{result=\"applied\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_reloaded_pin_closes_a_live_session_whose_key_it_does_not_match() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    deliver(&mut backend_b, &mut backend_a, "b.test", "a.test", "1")
        .await
        .unwrap();
    let pin = "00".repeat(32);
    let reloaded = a
        .reload(|t| {
            t.replace(
                "[federation]\n",
                &format!("[federation]\n[[federation.peer]]\ndomain = \"b.test\"\npin_sha256 = [\"{pin}\"]\n"),
            )
        })
        .unwrap();
    assert_eq!(reloaded.closed.len(), 1, "{reloaded}");
    assert!(
        reloaded.to_string().contains("no longer accepted"),
        "{reloaded}"
    );
    // A new session is refused too: the certificate does not match the pin.
    let bounce = deliver(&mut backend_b, &mut backend_a, "b.test", "a.test", "2")
        .await
        .unwrap_err();
    assert!(
        bounce.contains("policy-violation") && bounce.contains("pin"),
        "{bounce}"
    );
}

#[tokio::test]
async fn the_peer_view_of_a_stopped_peer_shows_the_cause_and_the_attempt() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .s2s("retry_window = \"1s\"\nretry_initial_delay = \"200ms\"")
        .start()
        .await;
    let mut b = instance(&dns, "b.test").start().await;
    let mut backend_a = a.backend().await;
    let mut backend_b = b.backend().await;
    deliver(&mut backend_a, &mut backend_b, "a.test", "b.test", "1")
        .await
        .unwrap();
    let view = a.peer_view("b.test").await;
    assert_eq!(view.up, Some(true));
    assert_eq!(view.sessions.len(), 1);
    let session = &view.sessions[0];
    assert_eq!(session.direction, "outbound");
    assert!(session.tls.starts_with("TLSv1.3"), "{session:?}");
    assert_eq!(session.pairs[0].auth, "external");

    b.stop().await;
    drop(backend_b);
    // The link goes with the stop; the next stanza finds nobody listening.
    eventually("a's link to b closed", || {
        a.gw().router.outbound_count() == 0
    })
    .await;
    backend_a
        .send("<message from='alice@a.test' to='bob@b.test' id='2'><body>x</body></message>")
        .await;
    let bounce = backend_a.next().await;
    assert_eq!(bounce.type_(), Some("error"), "{}", text(bounce.raw()));

    let view = a.peer_view("b.test").await;
    assert_eq!(view.up, Some(false));
    assert!(view.sessions.is_empty(), "{:?}", view.sessions);
    let last = view.failures.last().expect("a failure");
    assert!(last.cause.contains("Connection refused"), "{last:?}");
    let attempt = view.attempts.last().expect("an attempt trace");
    assert!(!attempt.ok);
    assert!(
        attempt.steps.iter().any(|s| s.what.contains("DNS")),
        "{attempt:?}"
    );
    assert!(attempt.steps.iter().any(|s| !s.ok), "{attempt:?}");

    // The summary and the text a person reads.
    let body = http_get(a.gw().metrics_addr.unwrap(), "/peers").await;
    let json = body.split("\r\n\r\n").nth(1).unwrap();
    let all: fedgate::peers::PeersView = serde_json::from_str(json).unwrap();
    // The instance that answers is named (several may serve one domain).
    let s2s = a.gw().s2s_addrs[0];
    assert!(
        all.instance.ends_with(&format!("({s2s})")),
        "{}",
        all.instance
    );
    assert!(fedgate::peers::render_all(&all).starts_with(&format!("As seen by {}", all.instance)));
    let summary = all.peers.iter().find(|p| p.domain == "b.test").unwrap();
    assert_eq!(summary.up, Some(false));
    assert!(summary.last_failure.is_some());
    let printed = fedgate::peers::render_one(&view);
    assert!(
        printed.contains("DOWN") && printed.contains("refused"),
        "{printed}"
    );
}

/// The gateway as a process: SIGHUP and `fedgate reload` put a new allowlist in force on live
/// sessions, and refuse files that do not validate or whose certificate does not load.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_fedgate_reload_tighten_the_allowlist_of_a_running_gateway() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    ca().issue(&CertSpec::for_names(&["a.test"]), dir.path(), "a");
    let ip = next_loopback();
    let component_port = free_port();
    let metrics_port = free_port();
    let config = |allow: &str| {
        format!(
            "[s2s]\nlisten = [\"{ip}:5269\"]\ndirect_tls_listen = []\ndialback_secret_file = \"db.secret\"\n\
             [dns]\nnameservers = [\"{}\"]\n\
             [federation]\nmode = \"allowlist\"\nallow = [{allow}]\n\
             [tls]\nwebpki_roots = false\nca_files = [\"{}\"]\n\
             [[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\n\
             [component]\nlisten = \"127.0.0.1:{component_port}\"\n\
             [[component.backend]]\ndomain = \"a.test\"\nsecret = \"s\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            dns.addr,
            ca().ca_file.display()
        )
    };
    let file = dir.path().join("fedgate.toml");
    std::fs::write(&file, config("\"b.test\", \"c.test\"")).unwrap();
    let (mut child, lines) = spawn_fedgate(&file);
    wait_for_line(&lines, "fedgate ready");
    dns.add("a.test", ip);
    let b = instance(&dns, "b.test")
        .s2s("failure_window = \"200ms\"")
        .start()
        .await;
    let c = instance(&dns, "c.test").start().await;
    let component = std::net::SocketAddr::from(([127, 0, 0, 1], component_port));
    let a_metrics = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let mut backend_a = RawStream::component(component, "a.test", "s").await;
    let mut backend_b = b.backend().await;
    let mut backend_c = c.backend().await;
    deliver(&mut backend_b, &mut backend_a, "b.test", "a.test", "b1")
        .await
        .unwrap();
    deliver(&mut backend_c, &mut backend_a, "c.test", "a.test", "c1")
        .await
        .unwrap();

    // SIGHUP with b removed: b's live session is closed, c's goes on.
    std::fs::write(&file, config("\"c.test\"")).unwrap();
    signal(child.id(), "HUP");
    let line = wait_for_line(&lines, "configuration reloaded");
    assert!(line.contains("1 live session(s) closed"), "{line}");
    assert!(line.contains("b.test is refused by policy"), "{line}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !b
        .peer_view("a.test")
        .await
        .failures
        .iter()
        .any(|f| f.cause.contains("policy-violation"))
    {
        assert!(tokio::time::Instant::now() < deadline, "b was not told");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let established =
        |m: &str| metric(m, "fedgate_outbound_attempts_total{result=\"established\"}");
    let before = established(&c.metrics().await);
    deliver(&mut backend_c, &mut backend_a, "c.test", "a.test", "c2")
        .await
        .unwrap();
    assert_eq!(
        established(&c.metrics().await),
        before,
        "c's session was kept"
    );
    refused_again(
        (&b, &mut backend_b),
        &mut backend_a,
        a_metrics,
        ("b.test", "a.test", "b2"),
    )
    .await;

    // An invalid file: refused with its key, and the running allowlist stays.
    std::fs::write(
        &file,
        config("\"c.test\"").replace("mode = \"allowlist\"", "mode = \"closed\""),
    )
    .unwrap();
    signal(child.id(), "HUP");
    let line = wait_for_line(&lines, "configuration was not reloaded");
    assert!(line.contains("unknown variant `closed`"), "{line}");
    let out = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            std::process::Command::new(BIN)
                .args(["reload", "--config"])
                .arg(&file)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    deliver(&mut backend_c, &mut backend_a, "c.test", "a.test", "c3")
        .await
        .unwrap();
    refused_again(
        (&b, &mut backend_b),
        &mut backend_a,
        a_metrics,
        ("b.test", "a.test", "b3"),
    )
    .await;

    // `fedgate reload`: a certificate that does not load is refused by the gateway (exit 1)...
    std::fs::write(&file, config("\"b.test\", \"c.test\"")).unwrap();
    let good_cert = std::fs::read(dir.path().join("a.crt")).unwrap();
    std::fs::write(dir.path().join("a.crt"), "not a certificate").unwrap();
    let reload = || {
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args(["reload", "--config"])
                .arg(&file)
                .output()
                .unwrap()
        })
    };
    let out = reload().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not reloaded") && stderr.contains("a.crt"),
        "{stderr}"
    );
    refused_again(
        (&b, &mut backend_b),
        &mut backend_a,
        a_metrics,
        ("b.test", "a.test", "b4"),
    )
    .await;

    // ...and a good one is applied: b federates again.
    std::fs::write(dir.path().join("a.crt"), good_cert).unwrap();
    let out = reload().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configuration reloaded"),
        "{out:?}"
    );
    // b gave up on a.test after the refusal; its failure window ends before it tries again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut n = 0;
    while deliver(
        &mut backend_b,
        &mut backend_a,
        "b.test",
        "a.test",
        &format!("b5-{n}"),
    )
    .await
    .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never federated again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        n += 1;
    }

    // `fedgate peers` prints the view for a person.
    let peers = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            std::process::Command::new(BIN)
                .args(["peers", "b.test", "--config"])
                .arg(&file)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(peers.status.success(), "{peers:?}");
    let printed = String::from_utf8_lossy(&peers.stdout);
    assert!(
        printed.contains("b.test") && printed.contains("policy: allowed"),
        "{printed}"
    );
    assert!(
        printed.contains("is refused by policy"),
        "the earlier failure is listed: {printed}"
    );

    signal(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_reloaded_backend_secret_is_required_from_the_next_handshake_on() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let attached = a.backend().await;
    let old = a.component_secret.clone();
    a.reload(|t| t.replace(&format!("secret = \"{old}\""), "secret = \"rotated\""))
        .unwrap();
    // The old secret no longer opens a session; the new one does; the attached one stays.
    let addr = a.gw().component_addr;
    let mut s = RawStream::connect(addr).await;
    s.send("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='a.test'>")
        .await;
    let id = s.expect_header().await.id.expect("stream id");
    s.send(&format!(
        "<handshake>{}</handshake>",
        fedgate::dialback::component_handshake(&id, &old)
    ))
    .await;
    assert_eq!(s.expect_stream_error().await, "not-authorized");
    assert!(a.gw().router.component_attached("a.test"));
    drop(attached);
    eventually("the old component detached", || {
        !a.gw().router.component_attached("a.test")
    })
    .await;
    let _rotated = RawStream::component(addr, "a.test", "rotated").await;
}
