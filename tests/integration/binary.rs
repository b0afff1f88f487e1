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
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("fedgate ready") {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("s2s listening on 127.0.0.1:")),
        "{seen:?}"
    );
    assert!(
        dir.path().join("fedgate-dialback.secret").exists(),
        "secret created on first start"
    );
    assert!(
        dir.path().join("a.crt").exists() && dir.path().join("a.key").exists(),
        "self-signed certificate created on first start"
    );
    unsafe_kill(child.id());
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
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

fn unsafe_kill(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}
