//! The `fedgate` binary: exit codes, config errors, start and stop on signals.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fedgate");

#[test]
fn the_example_config_is_valid() {
    let out = Command::new(BIN)
        .args(["check", "config", "config/fedgate.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn an_unknown_key_is_refused_with_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[s2s]\nlisten_on = [\"127.0.0.1:5269\"]\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n",
    )
    .unwrap();
    for args in [vec!["check", "config"], vec!["run", "--config"]] {
        let out = Command::new(BIN).args(&args).arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("listen_on"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn a_missing_secret_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[[component.backend]]\ndomain = \"a.test\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("component.backend[0]") && err.contains("secret"),
        "{err}"
    );
}

#[test]
fn run_starts_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fedgate.toml");
    std::fs::write(
        &file,
        "[s2s]\nlisten = [\"127.0.0.1:0\"]\ndirect_tls_listen = []\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[component]\nlisten = \"127.0.0.1:0\"\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n",
    )
    .unwrap();
    let (mut child, lines) = spawn_fedgate(&file);
    wait_for_line(&lines, "s2s listening on 127.0.0.1:");
    wait_for_line(&lines, "fedgate ready");
    assert!(
        dir.path().join("fedgate-dialback.secret").exists(),
        "secret created on first start"
    );
    assert!(
        dir.path().join("a.crt").exists() && dir.path().join("a.key").exists(),
        "self-signed certificate created on first start"
    );
    signal(child.id(), "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fedgate did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    wait_for_line(&lines, "stopped");
}

/// A log pipe that closes (a supervisor restarted, `| head`) costs the log lines, not the
/// gateway: before, the first line it could not write panicked (tracing-subscriber reported
/// the failure with `eprintln!`), and the stop on SIGTERM exited 101.
#[test]
fn a_closed_log_pipe_does_not_break_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fedgate.toml");
    std::fs::write(
        &file,
        "[s2s]\nlisten = [\"127.0.0.1:0\"]\ndirect_tls_listen = []\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[component]\nlisten = \"127.0.0.1:0\"\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n",
    )
    .unwrap();
    let (mut child, lines) = spawn_fedgate(&file);
    wait_for_line(&lines, "fedgate ready");
    // The reader stops at the next line it gets: the pipe's read end is closed then.
    drop(lines);
    signal(child.id(), "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fedgate did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_json_lines_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[s2s]\nlisten = [\"127.0.0.1:0\"]\ndirect_tls_listen = []\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[component]\nlisten = \"127.0.0.1:0\"\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n";
    for format in ["text", "json"] {
        let file = dir.path().join(format!("{format}.toml"));
        std::fs::write(&file, format!("{base}[log]\nformat = \"{format}\"\n")).unwrap();
        // stderr is a pipe here, as with a log file or journald.
        let (mut child, lines) = spawn_fedgate(&file);
        let ready = wait_for_line(&lines, "fedgate ready");
        signal(child.id(), "TERM");
        child.wait().unwrap();
        let mut all: Vec<String> = vec![ready];
        all.extend(lines.try_iter());
        for line in &all {
            assert!(!line.contains('\x1b'), "an escape code in {line:?}");
            if format == "json" {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
        }
    }
    // A level that is no filter is a config error naming the key.
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, format!("{base}[log]\nlevel = \"fedgate=loud\"\n")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.level"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_is_ready_after_the_one_command() {
    // config/fedgate.toml as shipped, with free ports instead of the standard ones (another
    // test or a local server may hold those) and the nameserver of a test.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("config/fedgate.toml").unwrap();
    let text = with_free_ports(&text);
    let file = dir.path().join("fedgate.toml");
    std::fs::write(&file, text).unwrap();
    let (mut child, lines) = spawn_fedgate(&file);
    let metrics = wait_for_line(&lines, "metrics listening on ");
    let addr: std::net::SocketAddr = metrics
        .rsplit("metrics listening on ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for_line(&lines, "fedgate ready");
    let mut status = String::new();
    for _ in 0..50 {
        status = crate::harness::http_get(addr, "/readyz").await;
        if status.contains(" 200 OK") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(child.id(), "TERM");
    child.wait().unwrap();
    assert!(status.contains(" 200 OK"), "{status}");
}

#[test]
fn an_address_in_use_is_said_once_with_the_key_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fedgate.toml");
    std::fs::write(
        &file,
        format!("[s2s]\nlisten = [\"127.0.0.1:{port}\"]\ndirect_tls_listen = []\nrequire_encryption = false\n[component]\nlisten = \"127.0.0.1:0\"\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n[metrics]\nenabled = false\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("Error:"))
        .unwrap_or_default();
    assert!(line.contains("s2s.listen"), "{err}");
    assert_eq!(line.matches("in use").count(), 1, "said once: {line}");
}

/// Every `127.0.0.1:PORT` of a config made `127.0.0.1:0`.
fn with_free_ports(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("127.0.0.1:") {
        out.push_str(&rest[..i + "127.0.0.1:".len()]);
        rest = &rest[i + "127.0.0.1:".len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        out.push('0');
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// Starts `fedgate run --config file`; its log lines arrive on the receiver.
pub fn spawn_fedgate(
    file: &std::path::Path,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    spawn_command(&["run", "--config"], file)
}

/// Starts `fedgate ARGS... file` (e.g. `core --config`); its log lines arrive on the receiver.
pub fn spawn_command(
    args: &[&str],
    file: &std::path::Path,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg(file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, lines)
}

/// A child process killed when dropped, so that a failed assert leaves none behind.
pub struct KillOnDrop(pub Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits up to 10 s for a log line containing `pattern` and returns it.
pub fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, pattern: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(pattern) => return line,
            Ok(_) => continue,
            Err(_) => panic!("no log line containing {pattern:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_certificates_for_new_sessions_and_keeps_live_ones() {
    use crate::certs::{ca, CertSpec};
    use crate::harness::{s2s_header, RawStream};
    let dir = tempfile::tempdir().unwrap();
    let spec = CertSpec::for_names(&["a.test"]);
    ca().issue(&spec, dir.path(), "a");
    let file = dir.path().join("fedgate.toml");
    std::fs::write(
        &file,
        "[s2s]\nlisten = [\"127.0.0.1:0\"]\ndirect_tls_listen = [\"127.0.0.1:0\"]\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
         [component]\nlisten = \"127.0.0.1:0\"\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\n",
    )
    .unwrap();
    let (mut child, lines) = spawn_fedgate(&file);
    // In the order the gateway logs them (each wait reads past the lines before its own).
    let listening = wait_for_line(&lines, "s2s direct TLS listening on ");
    let addr: std::net::SocketAddr = listening
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .expect("address in the log line");
    let metrics = wait_for_line(&lines, "metrics listening on ");
    let metrics: std::net::SocketAddr = metrics
        .rsplit("metrics listening on ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for_line(&lines, "fedgate ready");

    let (mut live, first) = RawStream::connect_direct_tls(addr, "a.test", true, None).await;

    // New certificate files, then SIGHUP: new sessions get the new certificate.
    ca().issue(&spec, dir.path(), "a");
    signal(child.id(), "HUP");
    wait_for_line(&lines, "configuration reloaded");
    let (_, second) = RawStream::connect_direct_tls(addr, "a.test", true, None).await;
    assert_ne!(first.server_cert, second.server_cert, "the new certificate");
    let on_disk = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(dir.path().join("a.crt")).unwrap()
    };
    assert_eq!(second.server_cert, on_disk.to_vec());

    // The session that started before the reload goes on.
    live.send(&s2s_header("b.test", "a.test")).await;
    live.expect_header().await;
    assert_eq!(live.next().await.name(), "features");

    // A broken file is refused with its name, and the last good certificate stays.
    std::fs::write(dir.path().join("a.crt"), "not a certificate").unwrap();
    signal(child.id(), "HUP");
    let refused = wait_for_line(&lines, "configuration was not reloaded");
    assert!(refused.contains("a.crt"), "{refused}");
    let (_, third) = RawStream::connect_direct_tls(addr, "a.test", true, None).await;
    assert_eq!(third.server_cert, second.server_cert);
    // Each reload counted once, by its result.
    let exposition = crate::harness::http_get(metrics, "/metrics").await;
    for (result, n) in [("applied", 1.0), ("refused", 1.0)] {
        let sample = format!("fedgate_config_reloads_total{{result=\"{result}\"}}");
        assert_eq!(crate::harness::metric(&exposition, &sample), n, "{sample}");
    }

    signal(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

pub fn signal(pid: u32, name: &str) {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn check_dns_prints_the_answers_and_the_order_of_attempts() {
    use crate::harness::TestDns;
    let dns = TestDns::start().await;
    dns.add_srv("_xmpps-server._tcp.b.test", 20, 0, 5270, "two.b.test");
    dns.add_srv("_xmpp-server._tcp.b.test", 10, 0, 5269, "one.b.test");
    dns.add("one.b.test", "127.0.0.1".parse().unwrap());
    dns.add("one.b.test", "::1".parse().unwrap());
    dns.add_srv("_xmpp-server._tcp.closed.test", 0, 0, 0, ".");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fedgate.toml");
    std::fs::write(
        &file,
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n\
             [[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n",
            dns.addr
        ),
    )
    .unwrap();
    let check = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || Command::new(BIN).args(args).output().unwrap())
    };
    let args = |domain: &str| {
        vec![
            "check".to_string(),
            "dns".to_string(),
            domain.to_string(),
            "--config".to_string(),
            file.display().to_string(),
        ]
    };

    let out = check(args("b.test")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let position = |needle: &str| {
        stdout
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{stdout}"))
    };
    let order = [
        position("_xmpp-server._tcp.b.test: SRV priority 10 weight 0 port 5269 target one.b.test"),
        position("1. one.b.test:5269, STARTTLS, SRV priority 10 weight 0"),
        position("[::1]:5269"),
        position("127.0.0.1:5269"),
        position("2. two.b.test:5270, direct TLS, SRV priority 20 weight 0"),
        position("SRV target two.b.test has no A/AAAA record"),
        position("Result: 2 addresses to try"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{stdout}");
    assert!(
        stdout.contains(
            "_xmpps-server._tcp.b.test: SRV priority 20 weight 0 port 5270 target two.b.test"
        ),
        "{stdout}"
    );

    // No record at all: the cause, and exit 1.
    let out = check(args("nowhere.test")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("no SRV or A/AAAA record for nowhere.test"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Result: no address to connect to"),
        "{stdout}"
    );

    // A `.` target: no service, said so, exit 1.
    let out = check(args("closed.test")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("closed.test offers no XMPP server-to-server service"),
        "{stdout}"
    );

    // Command line mistakes: one line with the fix, exit 64.
    let out = check(args("not a domain")).await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("example.org"), "{err}");
    let out = check(vec![
        "check".into(),
        "dns".into(),
        "b.test".into(),
        "--config".into(),
        "/nonexistent/fedgate.toml".into(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/fedgate.toml"), "{err}");
}

/// Every key of the configuration (the structs, serialized with their defaults, so a new
/// key cannot be forgotten) is documented in docs/configuration.md and shown, set or
/// commented, in the example file of its section.
#[test]
fn every_config_key_is_in_the_reference_and_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let config = fedgate::config::Config::from_toml(
        "[muc]\ndomain = \"conference.a.test\"\n[upload]\ndomain = \"upload.a.test\"\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n[core]\n[[core.domain]]\nname = \"a.test\"\n\
         [[tls.certificate]]\ndomains = [\"a.test\", \"upload.a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n",
        dir.path(),
    )
    .expect("a minimal config");
    let value = toml::Value::try_from(&config).expect("the config serializes");
    let overview = std::fs::read_to_string("docs/configuration.md").unwrap();
    let reference = ConfigReference::read("docs/config-reference.md");
    let gateway = std::fs::read_to_string("config/fedgate.toml").unwrap();
    let core = std::fs::read_to_string("config/core.toml").unwrap();
    let stale = "docs/config-reference.md is stale: run scripts/config-reference.py";
    let mut missing = Vec::new();
    let toml::Value::Table(sections) = value else {
        panic!("a table")
    };
    let in_tempdir = format!("{}/", dir.path().display());
    for (section, body) in &sections {
        let toml::Value::Table(keys) = body else {
            continue;
        };
        for (key, default) in keys {
            let path = format!("{section}.{key}");
            // A list of tables is written `[[section.key]]`, with a section of its own.
            let tables = format!("[[{path}]]");
            let listed = reference.sections.contains_key(&tables);
            if !listed {
                match reference.default_of(&format!("[{section}]"), key) {
                    None => missing.push(format!("{path}: not in the reference ({stale})")),
                    Some(cell) if cell.starts_with('`') => {
                        let shown = default.to_string().replace(&in_tempdir, "");
                        if cell.trim_matches('`') != shown {
                            missing.push(format!(
                                "{path}: the reference says {cell}, the code {shown} ({stale})"
                            ));
                        }
                    }
                    Some(_) => {} // a default in words, e.g. derived from another key
                }
            }
            if !overview.contains(&format!("`{key}`")) && !overview.contains(&tables) {
                missing.push(format!("{path}: not in docs/configuration.md"));
            }
            let example = if section == "core" { &core } else { &gateway };
            let shown = example
                .lines()
                .map(|l| l.trim_start_matches(['#', ' ']))
                .any(|l| l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}=")))
                || example.contains(&tables);
            if !shown {
                missing.push(format!("{path}: not in the example config"));
            }
        }
    }
    // And no row for a key the code no longer has.
    for (heading, rows) in &reference.sections {
        let Some(section) = heading.strip_prefix('[').and_then(|h| h.strip_suffix(']')) else {
            continue;
        };
        let Some(toml::Value::Table(keys)) = sections.get(section) else {
            continue;
        };
        for (key, cell) in rows {
            if !keys.contains_key(key)
                && cell != "none"
                && !reference
                    .sections
                    .contains_key(&format!("[[{section}.{key}]]"))
            {
                missing.push(format!(
                    "{section}.{key}: in the reference, not in the code ({stale})"
                ));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// docs/config-reference.md: each `## `[section]`` heading's table of key and default.
struct ConfigReference {
    sections: std::collections::HashMap<String, Vec<(String, String)>>,
}

impl ConfigReference {
    fn read(path: &str) -> ConfigReference {
        let mut sections = std::collections::HashMap::new();
        let mut current: Option<String> = None;
        for line in std::fs::read_to_string(path).unwrap().lines() {
            if let Some(h) = line.strip_prefix("## `").and_then(|h| h.strip_suffix('`')) {
                current = Some(h.to_owned());
                sections.entry(h.to_owned()).or_insert_with(Vec::new);
                continue;
            }
            let (Some(section), Some(row)) = (&current, line.strip_prefix("| `")) else {
                continue;
            };
            let mut cells = row.splitn(3, " | ");
            let key = cells.next().unwrap_or("").trim_end_matches('`').to_owned();
            let default = cells.next().unwrap_or("").to_owned();
            sections.get_mut(section).unwrap().push((key, default));
        }
        ConfigReference { sections }
    }

    fn default_of(&self, heading: &str, key: &str) -> Option<&str> {
        self.sections
            .get(heading)?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, d)| d.as_str())
    }
}
