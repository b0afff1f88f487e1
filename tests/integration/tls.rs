//! TLS for federation: STARTTLS, direct TLS, SASL EXTERNAL, certificate verdicts and policy,
//! between real gateways and against raw peers, with certificates from a test CA.

use std::net::SocketAddr;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::certs::CertSpec;
use crate::harness::*;

const EXTERNAL_OUT: &str =
    "fedgate_s2s_auth_total{direction=\"outbound\",method=\"external\",result=\"success\"}";
const EXTERNAL_IN: &str =
    "fedgate_s2s_auth_total{direction=\"inbound\",method=\"external\",result=\"success\"}";
const DIALBACK_OUT: &str =
    "fedgate_s2s_auth_total{direction=\"outbound\",method=\"dialback\",result=\"success\"}";

/// Sends a message from `from`'s backend to `to`'s and returns what the sender's backend got
/// back if it bounced (`Err(error stanza text)`), or `Ok(())` once delivered.
async fn send_message(from: &Instance, to: &Instance, id: &str) -> Result<(), String> {
    let mut sender = from.backend().await;
    let mut receiver = to.backend().await;
    sender
        .send(&format!(
            "<message from='alice@{}' to='bob@{}' id='{id}'><body>hi</body></message>",
            from.domain, to.domain
        ))
        .await;
    tokio::select! {
        got = receiver.next() => {
            assert_eq!(got.id(), Some(id));
            Ok(())
        }
        bounce = sender.next() => {
            assert_eq!(bounce.type_(), Some("error"), "{}", text(bounce.raw()));
            Err(text(bounce.raw()).to_string())
        }
    }
}

fn self_signed() -> CertSpec {
    CertSpec {
        self_signed: true,
        ..CertSpec::default()
    }
}

#[tokio::test]
async fn valid_server_auth_only_certificates_authenticate_with_sasl_external_both_ways() {
    // The test CA issues serverAuth-only leaves, as public CAs do now: they must be accepted
    // as client certificates too.
    // bidi = false: each instance opens its own connection, so that each certificate is
    // checked in both roles (with bidi, b's answer would ride a's connection).
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").s2s("bidi = false").start().await;
    let b = instance(&dns, "b.test").s2s("bidi = false").start().await;
    send_message(&a, &b, "ab").await.unwrap();
    send_message(&b, &a, "ba").await.unwrap();
    for (gw, name) in [(&a, "a"), (&b, "b")] {
        let m = gw.metrics().await;
        assert_eq!(metric(&m, EXTERNAL_OUT), 1.0, "{name}: {m}");
        assert_eq!(metric(&m, EXTERNAL_IN), 1.0, "{name}: {m}");
        // An auth series appears on its first success; EXTERNAL_OUT above is the same family.
        assert_eq!(metric_or_zero(&m, DIALBACK_OUT), 0.0, "{name}: no dialback");
        assert_eq!(
            metric(
                &m,
                "fedgate_certificate_verdicts_total{direction=\"inbound\",verdict=\"valid\"}"
            ),
            1.0,
            "{name}: {m}"
        );
    }
}

#[tokio::test]
async fn self_signed_peers_authenticate_by_dialback_over_tls() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").cert(self_signed()).start().await;
    let b = instance(&dns, "b.test").cert(self_signed()).start().await;
    send_message(&a, &b, "ab").await.unwrap();
    let m = a.metrics().await;
    assert_eq!(metric(&m, DIALBACK_OUT), 1.0, "{m}");
    // An auth series appears on its first success; DIALBACK_OUT is the same family.
    assert_eq!(metric_or_zero(&m, EXTERNAL_OUT), 0.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "fedgate_certificate_verdicts_total{direction=\"outbound\",verdict=\"self_signed\"}"
        ),
        1.0,
        "{m}"
    );
    let m = b.metrics().await;
    for direction in ["inbound", "outbound"] {
        assert_eq!(
            metric(
                &m,
                &format!("fedgate_tls_handshakes_total{{direction=\"{direction}\",result=\"ok\"}}")
            ),
            1.0,
            "{direction}: a's stream, and b's connect-back to a for the key: {m}"
        );
    }
}

#[tokio::test]
async fn secure_auth_refuses_bad_certificates_both_ways_with_the_reason() {
    let cases = [
        (
            CertSpec::for_names(&["elsewhere.test"]),
            "name mismatch",
            "name_mismatch",
        ),
        (
            CertSpec {
                cn: Some("a.test".into()),
                ..CertSpec::default()
            },
            "name mismatch",
            "name_mismatch",
        ),
        (
            CertSpec {
                expired: true,
                ..CertSpec::default()
            },
            "expired",
            "expired",
        ),
        (
            CertSpec {
                unknown_ca: true,
                ..CertSpec::default()
            },
            "unknown CA",
            "unknown_issuer",
        ),
        (self_signed(), "self-signed", "self_signed"),
    ];
    for (spec, reason, label) in cases {
        let dns = TestDns::start().await;
        // A CN-only certificate must get no name from the CN.
        let spec = if spec.cn.is_some() {
            CertSpec {
                dns: vec!["cn-only.invalid".into()],
                ..spec
            }
        } else {
            spec
        };
        let a = instance(&dns, "a.test").cert(spec).start().await;
        let b = instance(&dns, "b.test")
            .s2s("secure_auth = true")
            .start()
            .await;

        // a → b: b refuses a's client certificate and says why.
        let bounce = send_message(&a, &b, "ab").await.unwrap_err();
        assert!(bounce.contains("remote-server-timeout"), "{bounce}");
        assert!(bounce.contains("policy-violation"), "{bounce}");
        assert!(bounce.contains(reason), "{reason}: {bounce}");
        let m = b.metrics().await;
        assert!(
            metric(
                &m,
                &format!(
                    "fedgate_certificate_verdicts_total{{direction=\"inbound\",verdict=\"{label}\"}}"
                )
            ) >= 1.0,
            "{label}: {m}"
        );

        // b → a: b refuses a's server certificate, says why, and sends nothing.
        let bounce = send_message(&b, &a, "ba").await.unwrap_err();
        assert!(bounce.contains("remote-server-timeout"), "{bounce}");
        assert!(bounce.contains("TLS "), "{bounce}");
        assert!(bounce.contains(reason), "{reason}: {bounce}");
        assert!(bounce.contains(":5269"), "names the target: {bounce}");
    }
}

#[tokio::test]
async fn wildcard_srv_id_and_xmpp_addr_certificates_are_valid_under_secure_auth() {
    let dns = TestDns::start().await;
    // bidi = false: each peer's certificate must be checked on its own inbound connection
    // (with bidi, its answers would ride a's connection to it).
    let a = instance(&dns, "a.test")
        .s2s("secure_auth = true\nbidi = false")
        .start()
        .await;
    let wild = instance(&dns, "chat.wild.test")
        .cert(CertSpec::for_names(&["*.wild.test"]))
        .start()
        .await;
    let srv = instance(&dns, "srv.test")
        .cert(CertSpec {
            srv: vec!["srv.test".into()],
            ..CertSpec::default()
        })
        .start()
        .await;
    let xmpp = instance(&dns, "xmpp.test")
        .cert(CertSpec {
            xmpp_addr: vec!["xmpp.test".into()],
            ..CertSpec::default()
        })
        .start()
        .await;
    for peer in [&wild, &srv, &xmpp] {
        send_message(&a, peer, "out").await.unwrap();
        send_message(peer, &a, "in").await.unwrap();
    }
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_certificate_verdicts_total{direction=\"outbound\",verdict=\"valid\"}"
        ),
        3.0,
        "{m}"
    );
    assert_eq!(metric(&m, EXTERNAL_IN), 3.0, "{m}");

    // A wildcard covers one label only: *.wild.test is not valid for deep.chat.wild.test.
    let deep = instance(&dns, "deep.chat.wild.test")
        .cert(CertSpec::for_names(&["*.wild.test"]))
        .start()
        .await;
    let bounce = send_message(&a, &deep, "deep").await.unwrap_err();
    assert!(bounce.contains("name mismatch"), "{bounce}");
}

#[tokio::test]
async fn sasl_external_checks_the_authzid_and_the_mechanism() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::certs::ca().issue(&CertSpec::for_names(&["a.test"]), dir.path(), "a");
    let (mut s, _, features) =
        tls_s2s_stream(b.s2s_addr(), "a.test", "b.test", Some((&cert, &key))).await;
    assert!(
        text(features.raw()).contains("<mechanism>EXTERNAL</mechanism>"),
        "{}",
        text(features.raw())
    );
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    s.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{}</auth>",
        b64("c.test")
    ))
    .await;
    assert_eq!(
        s.next_text().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-authzid/></failure>"
    );
    s.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>=</auth>")
        .await;
    assert_eq!(
        s.next_text().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>"
    );
    // An authzid equal to the stream's from is fine.
    s.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{}</auth>",
        b64("a.test")
    ))
    .await;
    assert_eq!(
        s.next_text().await,
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    );
    s.restart();
    s.send(&s2s_header("a.test", "b.test")).await;
    s.expect_header().await;
    let features = s.next_text().await;
    assert!(
        !features.contains("EXTERNAL"),
        "not offered twice: {features}"
    );
    let mut backend = b.backend().await;
    s.send("<message from='alice@a.test' to='bob@b.test' id='m1'><body>x</body></message>")
        .await;
    assert_eq!(backend.next().await.id(), Some("m1"));
}

#[tokio::test]
async fn a_certificate_for_another_domain_gets_no_sasl_external() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::certs::ca().issue(&CertSpec::for_names(&["c.test"]), dir.path(), "c");
    let (mut s, _, features) =
        tls_s2s_stream(b.s2s_addr(), "a.test", "b.test", Some((&cert, &key))).await;
    assert!(!text(features.raw()).contains("EXTERNAL"));
    s.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        .await;
    assert_eq!(
        s.next_text().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>"
    );
}

/// A plaintext-only s2s server: answers our header with its own and features offering only
/// dialback, and records every byte it receives.
async fn plaintext_only_server(
    ip: std::net::IpAddr,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind((ip, 5269)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut answered = false;
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if !answered && seen.windows(2).any(|w| w == b"'>") {
                answered = true;
                let _ = tcp.write_all(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' id='plain-1' from='plain.test' version='1.0'><stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>").await;
            }
        }
        let _ = tx.send(seen);
    });
    (addr, rx)
}

#[tokio::test]
async fn a_peer_that_never_offers_tls_gets_nothing_in_plaintext_and_its_stanzas_bounce() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let ip = next_loopback();
    let (_addr, seen) = plaintext_only_server(ip).await;
    dns.add("plain.test", ip);
    let mut backend = a.backend().await;
    backend
        .send("<message from='alice@a.test' to='bob@plain.test' id='p1'><body>secret</body></message>")
        .await;
    let bounce = backend.next_text().await;
    assert!(bounce.contains("remote-server-timeout"), "{bounce}");
    assert!(bounce.contains("does not offer TLS"), "{bounce}");
    let seen = String::from_utf8(seen.await.unwrap()).unwrap();
    assert!(
        seen.starts_with("<?xml version='1.0'?><stream:stream "),
        "{seen}"
    );
    assert!(seen.ends_with("</stream:stream>"), "{seen}");
    assert!(
        !seen.contains("db:result"),
        "no dialback key in clear: {seen}"
    );
    assert!(!seen.contains("secret"), "no stanza in clear: {seen}");
}

#[tokio::test]
async fn a_peer_allowed_plaintext_by_override_federates_without_tls() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .peer("domain = \"plain.test\"\ntls = \"optional\"")
        .start()
        .await;
    let plain = instance(&dns, "plain.test")
        .no_cert()
        .s2s("require_encryption = false")
        .start()
        .await;
    send_message(&a, &plain, "ok").await.unwrap();
    let m = a.metrics().await;
    assert_eq!(metric(&m, DIALBACK_OUT), 1.0, "{m}");
    // A handshake series appears on the first handshake: with none, there is no series (the
    // `ok` label is the one the TLS tests above read as 1).
    assert_eq!(
        metric_or_zero(
            &m,
            "fedgate_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}"
        ),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn anything_but_starttls_before_tls_is_a_policy_violation() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let (mut s, _) = plain_s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    s.send("<db:result from='a.test' to='b.test'>abcdef</db:result>")
        .await;
    assert_eq!(s.expect_stream_error().await, "policy-violation");
}

#[tokio::test]
async fn bytes_injected_after_starttls_are_never_processed() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let (mut s, _) = plain_s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    // One write: the request to start TLS and, behind it, a plaintext dialback request that
    // would be answered if anything parsed it.
    s.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><db:verify from='a.test' to='b.test' id='injected'>00</db:verify>")
        .await;
    let proceed = s.next().await;
    assert_eq!(proceed.name(), "proceed");
    s.upgrade("b.test", None).await;
    s.send(&s2s_header("a.test", "b.test")).await;
    s.expect_header().await;
    assert_eq!(s.next().await.name(), "features");
    s.send("<db:verify from='a.test' to='b.test' id='mine'>00</db:verify>")
        .await;
    let answer = s.next().await;
    assert_eq!(answer.id(), Some("mine"), "{}", text(answer.raw()));
    let m = b.metrics().await;
    assert_eq!(
        metric(
            &m,
            "fedgate_dialback_total{result=\"invalid\",role=\"verify\"}"
        ),
        1.0,
        "only our own request was answered: {m}"
    );
}

#[tokio::test]
async fn direct_tls_negotiates_alpn_and_federates() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let (mut s, seen) =
        RawStream::connect_direct_tls(b.direct_tls_addr(), "b.test", true, None).await;
    assert_eq!(seen.alpn.as_deref(), Some(&b"xmpp-server"[..]));
    s.send(&s2s_header("a.test", "b.test")).await;
    s.expect_header().await;
    let features = s.next_text().await;
    assert!(!features.contains("starttls"), "{features}");
    assert!(
        features.contains("urn:xmpp:features:dialback"),
        "{features}"
    );

    // A gateway routed to b's direct TLS port federates over it.
    let a = instance(&dns, "a.test")
        .route("b.test", b.direct_tls_addr(), true)
        .start()
        .await;
    send_message(&a, &b, "direct").await.unwrap();
    let m = b.metrics().await;
    assert_eq!(metric(&m, EXTERNAL_IN), 1.0, "{m}");
}

#[tokio::test]
async fn our_certificate_is_chosen_by_sni_or_by_the_stream_to() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert2, key2) =
        crate::certs::ca().issue(&CertSpec::for_names(&["other.test"]), dir.path(), "other");
    let b = instance(&dns, "b.test")
        .backend("other.test", "other-secret")
        .cert(CertSpec::for_names(&["b.test"]))
        .cert_domains(&["b.test"])
        .tls(&format!(
            "[[tls.certificate]]\ndomains = [\"other.test\"]\ncert = \"{}\"\nkey = \"{}\"",
            cert2.display(),
            key2.display()
        ))
        .start()
        .await;
    let names = |der: &[u8]| {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        )
    };
    let (_, by_sni) =
        RawStream::connect_direct_tls(b.direct_tls_addr(), "other.test", true, None).await;
    assert!(names(&by_sni.server_cert).contains("other.test"));
    let (_, by_sni) =
        RawStream::connect_direct_tls(b.direct_tls_addr(), "b.test", true, None).await;
    assert!(names(&by_sni.server_cert).contains("b.test"));
    // STARTTLS with an SNI that names nothing we have: the stream's 'to' decides.
    let (mut s, _) = plain_s2s_stream(b.s2s_addr(), "a.test", "other.test").await;
    let seen = s.starttls("unknown.example", None).await;
    assert!(names(&seen.server_cert).contains("other.test"));
}

#[tokio::test]
async fn pins_accept_a_pinned_self_signed_peer_and_refuse_any_other() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").cert(self_signed()).start().await;
    let spki = {
        use sha2::Digest;
        let pem = std::fs::read(b.cert_files().0).unwrap();
        let der = rustls_pki_types_der(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        hex::encode(sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    };
    let good = instance(&dns, "a.test")
        .peer(&format!("domain = \"b.test\"\npin_sha256 = [\"{spki}\"]"))
        .start()
        .await;
    send_message(&good, &b, "pinned").await.unwrap();

    let dns2 = TestDns::start().await;
    let b2 = instance(&dns2, "b.test").start().await;
    let bad = instance(&dns2, "a.test")
        .peer(&format!(
            "domain = \"b.test\"\npin_sha256 = [\"{}\"]",
            "00".repeat(32)
        ))
        .start()
        .await;
    let bounce = send_message(&bad, &b2, "unpinned").await.unwrap_err();
    assert!(bounce.contains("pinned public key"), "{bounce}");
}

fn rustls_pki_types_der(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_peer_held_to_dialback_is_offered_no_sasl_external() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let b = instance(&dns, "b.test")
        .peer("domain = \"a.test\"\nauth = \"dialback\"")
        .start()
        .await;
    send_message(&a, &b, "1").await.unwrap();
    let m = a.metrics().await;
    // An auth series appears on its first success; DIALBACK_OUT is the same family.
    assert_eq!(metric_or_zero(&m, EXTERNAL_OUT), 0.0, "{m}");
    assert_eq!(metric(&m, DIALBACK_OUT), 1.0, "{m}");
}

/// A peer that offers SASL EXTERNAL and refuses it, then accepts dialback without checking
/// (it is the receiving server; its verdict is its own). It serves two connections and
/// reports, for each, the elements it received after TLS.
async fn external_refusing_peer(
    ip: std::net::IpAddr,
    dir: &std::path::Path,
) -> tokio::sync::mpsc::Receiver<Vec<String>> {
    use fedgate::xml::framer::Event;
    let receiver = FakeReceiver::bind(ip, dir).await;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        for n in 0..2 {
            let mut conn = receiver.accept().await.unwrap();
            let mut seen = Vec::new();
            // Plain stream: STARTTLS only.
            fake_peer_starttls(&mut conn, &receiver.tls, n).await;
            conn.send(b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>");
            conn.flush().await.unwrap();
            loop {
                let Ok(Event::Stanza(s)) = conn.next_event().await else {
                    break;
                };
                seen.push(s.name().to_string());
                match s.name() {
                    "auth" => conn.send(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"),
                    "result" => conn.send(b"<db:result from='fake.test' to='a.test' type='valid'/>"),
                    // One message per connection, then the stream ends.
                    _ => break,
                }
                conn.flush().await.unwrap();
            }
            conn.close().await;
            tx.send(seen).await.unwrap();
        }
    });
    rx
}

#[tokio::test]
async fn a_peer_that_refuses_our_external_gets_dialback_and_is_remembered() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test").start().await;
    let dir = tempfile::tempdir().unwrap();
    let ip = next_loopback();
    let mut sessions = external_refusing_peer(ip, dir.path()).await;
    dns.add("fake.test", ip);
    let mut backend = a.backend().await;
    backend
        .send("<message from='alice@a.test' to='bob@fake.test' id='m1'><body>1</body></message>")
        .await;
    assert_eq!(
        sessions.recv().await.unwrap(),
        ["auth", "result", "message"],
        "EXTERNAL tried, refused, then dialback on the same stream"
    );
    // The peer ended that stream before it confirmed m1 (no XEP-0198, no ping answered):
    // fedgate connects again to resend it, and goes straight to dialback.
    let second = tokio::time::timeout(WAIT, sessions.recv())
        .await
        .expect("a second session in time");
    assert_eq!(second.expect("a second session"), ["result", "message"]);
}

#[tokio::test]
async fn sasl_failures_are_limited_and_bad_base64_is_incorrect_encoding() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::certs::ca().issue(&CertSpec::for_names(&["a.test"]), dir.path(), "a");
    let (mut s, _, _) = tls_s2s_stream(b.s2s_addr(), "a.test", "b.test", Some((&cert, &key))).await;
    s.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>%%%</auth>")
        .await;
    assert_eq!(
        s.next_text().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><incorrect-encoding/></failure>"
    );
    for _ in 0..2 {
        s.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>=</auth>")
            .await;
    }
    // The third failure is answered, then the stream ends.
    assert!(s.next_text().await.contains("<invalid-mechanism/>"));
    assert!(s.next_text().await.contains("<invalid-mechanism/>"));
    assert_eq!(s.expect_stream_error().await, "policy-violation");
}

#[tokio::test]
async fn a_dialback_key_over_tls_with_a_valid_certificate_needs_no_connect_back() {
    // a.test is not in DNS: a connect-back would fail, so a 'valid' answer can only come
    // from the certificate (XEP-0344 §2.4).
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test").start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::certs::ca().issue(&CertSpec::for_names(&["a.test"]), dir.path(), "a");
    let (mut s, _, _) = tls_s2s_stream(b.s2s_addr(), "a.test", "b.test", Some((&cert, &key))).await;
    s.send("<db:result from='a.test' to='b.test'>not-checked</db:result>")
        .await;
    let answer = s.next().await;
    assert_eq!(answer.type_(), Some("valid"), "{}", text(answer.raw()));

    // Without a certificate the same key goes to the (unreachable) authoritative server.
    let (mut s, _) = s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    s.send("<db:result from='a.test' to='b.test'>not-checked</db:result>")
        .await;
    let answer = s.next().await;
    assert_eq!(answer.type_(), Some("error"), "{}", text(answer.raw()));
    assert!(text(answer.raw()).contains("remote-server-not-found"));
}

#[tokio::test]
async fn a_peer_held_to_external_is_offered_no_dialback_and_its_keys_are_refused() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test")
        .peer("domain = \"a.test\"\nauth = \"external\"")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::certs::ca().issue(&CertSpec::for_names(&["a.test"]), dir.path(), "a");
    let (mut s, _, features) =
        tls_s2s_stream(b.s2s_addr(), "a.test", "b.test", Some((&cert, &key))).await;
    let features = text(features.raw()).to_string();
    assert!(features.contains("EXTERNAL"), "{features}");
    assert!(!features.contains("dialback"), "{features}");
    s.send("<db:result from='a.test' to='b.test'>key</db:result>")
        .await;
    let answer = s.next_text().await;
    assert!(answer.contains("type='error'"), "{answer}");
    assert!(answer.contains("policy-violation"), "{answer}");
}

#[tokio::test]
async fn starttls_without_a_certificate_gets_failure_and_the_stream_closes() {
    let dns = TestDns::start().await;
    let b = instance(&dns, "b.test")
        .no_cert()
        .s2s("require_encryption = false")
        .start()
        .await;
    let (mut s, features) = plain_s2s_stream(b.s2s_addr(), "a.test", "b.test").await;
    assert!(!text(features.raw()).contains("starttls"));
    s.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert_eq!(
        s.next_text().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    );
    assert!(matches!(
        s.event().await,
        fedgate::xml::framer::Event::StreamClose
    ));
}
