//! `fedgate check remote` and `fedgate check config`, run as the binary: against harness
//! instances on loopback, with every name resolved by the test's DNS server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::certs::{ca, CertSpec};
use crate::harness::{instance, next_loopback, TestDns};

const BIN: &str = env!("CARGO_BIN_EXE_fedgate");

/// Runs the binary without blocking the runtime that serves the instances.
async fn fedgate(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(args).output().unwrap())
        .await
        .unwrap()
}

/// `fedgate check remote DOMAIN --config FILE`, with stdout and the exit code.
async fn check_remote(domain: &str, file: &Path) -> (Option<i32>, String) {
    let out = fedgate(vec![
        "check".into(),
        "remote".into(),
        domain.into(),
        "--config".into(),
        file.display().to_string(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "stderr: {stderr}\nstdout: {stdout}");
    (out.status.code(), stdout)
}

/// The configuration of the domain `a.test` that runs the check: the test DNS server, the
/// test CA, a certificate for a.test issued by it, the given dialback secret file and extra
/// `[s2s]` lines.
fn local_config(dir: &Path, dns: &TestDns, secret_file: &Path, s2s: &str) -> PathBuf {
    local_config_with(dir, dns, secret_file, s2s, CertSpec::for_names(&["a.test"]))
}

/// [`local_config`] presenting the certificate `cert`.
fn local_config_with(
    dir: &Path,
    dns: &TestDns,
    secret_file: &Path,
    s2s: &str,
    cert: CertSpec,
) -> PathBuf {
    let (cert, key) = ca().issue(&cert, dir, "a");
    let file = dir.join("fedgate.toml");
    std::fs::write(
        &file,
        format!(
            "[s2s]\nconnect_timeout = \"2s\"\nnegotiation_timeout = \"5s\"\ndialback_secret_file = \"{}\"\n{s2s}\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\n\
             [tls]\nwebpki_roots = false\nca_files = [\"{}\"]\n\
             [[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\
             [[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n",
            secret_file.display(),
            dns.addr,
            ca().ca_file.display(),
            cert.display(),
            key.display(),
        ),
    )
    .unwrap();
    file
}

/// `needles` all occur in `text`, in this order.
fn assert_in_order(text: &str, needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        match text[from..].find(needle) {
            Some(i) => from += i + needle.len(),
            None => panic!("{needle:?} not found (in order) in:\n{text}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_remote_names_a_wrong_name_certificate_and_the_fix() {
    let dns = TestDns::start().await;
    let _b = instance(&dns, "b.test")
        .cert(CertSpec::for_names(&["wrong.test", "other.test"]))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("dialback.secret");
    std::fs::write(&secret, "a-secret-of-sixteen-bytes-or-more").unwrap();

    // Valid certificates required: the certificate step fails, and says why and what to do.
    let file = local_config(dir.path(), &dns, &secret, "secure_auth = true");
    let (code, out) = check_remote("b.test", &file).await;
    assert_eq!(code, Some(1), "{out}");
    assert_in_order(
        &out,
        &[
            "ok   DNS b.test → ",
            "ok   TCP connected to b.test:5269",
            "FAIL TLS certificate name mismatch: it is for DNS:wrong.test, DNS:other.test, not b.test at b.test:5269",
            "\nTLS\n  TLSv1.3, cipher TLS13_",
            "\nCertificate: 1 in the chain presented by b.test:5269",
            "issuer:  CN=fedgate test CA",
            "names:   DNS:wrong.test, DNS:other.test (do not match b.test)",
            "days left)",
            "SPKI sha256: ",
            "Verdict: FAILED at certificate: TLS certificate name mismatch",
            "Fix: the certificate presented by b.test:5269 (",
            "is for DNS:wrong.test, DNS:other.test, not b.test: the remote operator must install a certificate that names b.test",
            "secure_auth = false",
        ],
    );
    assert!(!out.contains("Verdict: OK"), "{out}");

    // By default a mismatched certificate does not stop federation: the check says it works,
    // and warns with the same fix.
    let file = local_config(dir.path(), &dns, &secret, "");
    let (code, out) = check_remote("b.test", &file).await;
    assert_eq!(code, Some(0), "{out}");
    assert_in_order(
        &out,
        &[
            "names:   DNS:wrong.test, DNS:other.test (do not match b.test)",
            "Warning: certificate name mismatch: it is for DNS:wrong.test, DNS:other.test, not b.test; fedgate federates anyway",
            "Verdict: OK — b.test accepts a.test by SASL EXTERNAL over TLSv1.3",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_remote_of_a_healthy_peer_reports_every_step_ok() {
    let dns = TestDns::start().await;
    let _b = instance(&dns, "b.test").start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("dialback.secret");
    std::fs::write(&secret, "a-secret-of-sixteen-bytes-or-more").unwrap();
    let file = local_config(dir.path(), &dns, &secret, "");

    let (code, out) = check_remote("b.test", &file).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(!out.contains("Warning"), "{out}");
    assert_in_order(
        &out,
        &[
            "Checking federation with b.test as a.test",
            "Policy: ok",
            "\nSteps\n",
            "ok   DNS no SRV record: falling back to b.test:5269",
            "ok   TCP connected to b.test:5269",
            "ok   stream open, TLSv1.3",
            "certificate valid; features: SASL EXTERNAL, XEP-0288 bidi, dialback, XEP-0198",
            "ok   authenticated by external",
            "ok   stream to b.test:5269",
            "\nTLS\n  TLSv1.3",
            "names:   DNS:b.test (match b.test)",
            "  for b.test: certificate valid",
            "\nFeatures\n  before authentication: SASL EXTERNAL, XEP-0288 bidi, dialback, XEP-0198",
            "\nAuthentication\n  SASL EXTERNAL with our certificate for a.test: accepted",
            "Verdict: OK — b.test accepts a.test by SASL EXTERNAL over TLSv1.3",
        ],
    );

    // Our own policy refuses it: that is the first step, and the verdict.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("[federation]\ndeny = [\"b.test\"]\n");
    std::fs::write(&file, text).unwrap();
    let (code, out) = check_remote("b.test", &file).await;
    assert_eq!(code, Some(1), "{out}");
    assert_in_order(
        &out,
        &[
            "Policy: FAIL federation with b.test is refused by policy (federation.deny \"b.test\")",
            "Verdict: FAILED at policy: federation with b.test is refused",
            "Fix: remove the entry from federation.deny in ",
            "Then: OK — b.test accepts a.test by SASL EXTERNAL over TLSv1.3",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_remote_dialback_is_verified_by_the_running_gateway_of_the_local_domain() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .dialback_secret("the-shared-secret-of-a.test-instances")
        .start()
        .await;
    let _b = instance(&dns, "b.test").start().await;
    let dir = tempfile::tempdir().unwrap();
    // A self-signed certificate for a.test: b.test cannot take it as proof (XEP-0344), and
    // we do not try SASL EXTERNAL with it, so dialback is a full round trip.
    let self_signed = CertSpec {
        self_signed: true,
        ..CertSpec::for_names(&["a.test"])
    };

    // The same secret file as the running gateway of a.test: b.test asks it, it confirms.
    let shared = a.dir.path().join("dialback.secret");
    let file = local_config_with(dir.path(), &dns, &shared, "", self_signed.clone());
    let (code, out) = check_remote("b.test", &file).await;
    assert_eq!(code, Some(0), "{out}");
    assert_in_order(
        &out,
        &[
            "features: XEP-0288 bidi, dialback, XEP-0198",
            "ok   authenticated by dialback",
            "\nAuthentication\n  dialback: our key for a.test was verified: b.test asked a.test's authoritative server",
            "Verdict: OK — b.test accepts a.test by dialback over TLSv1.3",
        ],
    );

    // Another secret: the running gateway cannot confirm the key, and the fix says where to
    // look.
    let other = dir.path().join("other.secret");
    std::fs::write(&other, "not-the-secret-the-gateway-uses").unwrap();
    let file = local_config_with(dir.path(), &dns, &other, "", self_signed);
    let (code, out) = check_remote("b.test", &file).await;
    assert_eq!(code, Some(1), "{out}");
    assert_in_order(
        &out,
        &[
            "FAIL authentication: b.test refused our dialback key (invalid)",
            "\nAuthentication\n  FAIL b.test refused our dialback key",
            "Verdict: FAILED at authentication: b.test refused our dialback key (invalid)",
            "Fix: b.test could not verify our dialback key",
            "Is fedgate running for a.test, reachable from b.test",
            "using the same dialback secret file as this check (",
        ],
    );
    assert!(out.contains(&other.display().to_string()), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_remote_without_dns_records_or_a_listener_says_which_step_and_the_fix() {
    let dns = TestDns::start().await;
    // Nothing listens on this address's port 5269: refused at once.
    dns.add("closed.test", next_loopback());
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("dialback.secret");
    std::fs::write(&secret, "a-secret-of-sixteen-bytes-or-more").unwrap();
    let file = local_config(dir.path(), &dns, &secret, "");

    let (code, out) = check_remote("nowhere.test", &file).await;
    assert_eq!(code, Some(1), "{out}");
    assert_in_order(
        &out,
        &[
            "ok   DNS no SRV record: falling back to nowhere.test:5269",
            "FAIL DNS nowhere.test: no A/AAAA record for nowhere.test",
            "Verdict: FAILED at DNS: no SRV or A/AAAA record for nowhere.test",
            "Fix: publish an SRV record for nowhere.test's XMPP server, e.g. `_xmpp-server._tcp.nowhere.test. 3600 IN SRV 5 0 5269 xmpp.nowhere.test.`",
            "[[s2s.route]] domain = \"nowhere.test\"",
        ],
    );
    assert!(!out.contains("\nTLS\n"), "{out}");

    let (code, out) = check_remote("closed.test", &file).await;
    assert_eq!(code, Some(1), "{out}");
    assert_in_order(
        &out,
        &[
            "ok   DNS closed.test → 127.",
            "FAIL TCP closed.test:5269: ",
            "refused",
            "Verdict: FAILED at TCP: cannot connect to closed.test:5269",
            "Fix: nothing listens on closed.test:5269: the remote server is down or listens on another port",
        ],
    );

    // Mistakes on the command line: one line, exit 64.
    for (args, says) in [
        (vec!["not a domain"], "give a domain such as example.org"),
        (vec!["b.test", "--from", "c.test"], "use one of a.test"),
    ] {
        let mut all = vec!["check".to_string(), "remote".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend(["--config".into(), file.display().to_string()]);
        let out = fedgate(all).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn check_config_lists_every_problem_or_prints_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let file = dir.path().join("fedgate.toml");
        std::fs::write(&file, text).unwrap();
        Command::new(BIN)
            .args(["check", "config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let backend = "[[component.backend]]\ndomain = \"a.test\"\nsecret = \"very-secret-value\"\n";
    let valid = format!("[s2s]\nrequire_encryption = false\n{backend}");

    // Two independent problems: both keys, each with its fix.
    let out = run(&format!(
        "[s2s]\nrequire_encryption = false\nmax_depth = 0\n[dns]\ntimeout = \"0s\"\n{backend}"
    ));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_in_order(
        &err,
        &[
            "2 problems",
            "  s2s.max_depth: the limit is zero\n    fix: set a positive number",
            "  dns.timeout: the timeout is zero\n    fix: set a positive duration",
        ],
    );

    // Valid: the summary, then every key with its value, defaults included, secrets not.
    let out = run(&valid);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK — serves a.test"), "{stdout}");
    assert!(stdout.contains("negotiation_timeout = \"30s\""), "{stdout}");
    assert!(stdout.contains("secret = \"<redacted>\""), "{stdout}");
    assert!(!stdout.contains("very-secret-value"), "{stdout}");
    let table: toml::Table = stdout.parse().expect("the output is TOML");
    assert_eq!(table["s2s"]["max_depth"].as_integer(), Some(32));
    assert_eq!(table["metrics"]["listen"].as_str(), Some("127.0.0.1:9269"));

    // The dialback secret file: missing, readable by others, then as it should be.
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("does not exist yet"), "{stderr}");
    assert!(stderr.contains("copy the same file"), "{stderr}");
    let secret = dir.path().join("fedgate-dialback.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&valid);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("has mode 0644"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&valid);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

/// `check remote` on one of our own domains: every instance its SRV lists is asked to verify
/// a key made with this machine's secret file (and one made with another secret); an
/// instance with another secret file is named, with the fix.
#[tokio::test]
async fn check_remote_on_our_own_domain_asks_every_instance_for_the_shared_secret() {
    const SECRET: &str = "the-secret-every-instance-should-have";
    let dns = TestDns::start().await;
    let same = instance(&dns, "a.test")
        .dialback_secret(SECRET)
        .unlisted()
        .start()
        .await;
    let mut other = instance(&dns, "a.test")
        .dialback_secret("a-secret-nobody-copied-to-the-others")
        .unlisted()
        .start()
        .await;
    dns.add("gw1.a.test", same.ip);
    dns.add("gw2.a.test", other.ip);
    dns.add_srv("_xmpp-server._tcp.a.test", 0, 0, 5269, "gw1.a.test");
    dns.add_srv("_xmpp-server._tcp.a.test", 10, 0, 5269, "gw2.a.test");
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("dialback.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let file = local_config(dir.path(), &dns, &secret_file, "");

    let (code, out) = check_remote("a.test", &file).await;
    assert_eq!(code, Some(1), "{out}");
    assert_in_order(
        &out,
        &[
            "a.test is one of our domains: asking each of its instances",
            "ok   gw1.a.test",
            ": shares this secret",
            "FAIL gw2.a.test",
            "refuses keys made with this secret: it has another dialback secret file",
            "Verdict: FAILED",
            "Fix: copy ",
        ],
    );

    // The odd one out gets the file and restarts: every instance verifies this machine's keys.
    other.stop().await;
    std::fs::write(other.dir.path().join("dialback.secret"), SECRET).unwrap();
    other.restart().await;
    let (code, out) = check_remote("a.test", &file).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Verdict: OK — all 2 instance(s) of a.test share the dialback secret"),
        "{out}"
    );
}
