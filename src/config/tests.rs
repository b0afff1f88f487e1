//! The configuration: parsing, defaults, validation, the example files.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

const MINIMAL: &str = "[[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n\n[[component.backend]]\ndomain = \"a.test\"\nsecret = \"s3cret\"\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/tmp"))
}

fn invalid_key(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn an_unnamed_direct_tls_listener_follows_the_hosts_of_listen() {
    let base = "[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n[tls]\n[[tls.certificate]]\ndomains = [\"a.test\"]\ncert = \"a.crt\"\nkey = \"a.key\"\nself_signed = true\n";
    let c = parse(&format!(
        "[s2s]\nlisten = [\"127.0.0.2:5269\", \"[::1]:5269\"]\n{base}[core]\nlisten = [\"127.0.0.2:5222\"]\n[[core.domain]]\nname = \"a.test\"\n"
    ))
    .unwrap();
    let addrs = |v: &[&str]| -> Vec<SocketAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
    assert_eq!(
        c.s2s.direct_tls_listen,
        addrs(&["127.0.0.2:5270", "[::1]:5270"])
    );
    assert_eq!(
        c.core.as_ref().unwrap().direct_tls_listen,
        addrs(&["127.0.0.2:5223"])
    );
    // Named, it is what it says, off included.
    let c = parse(&format!(
        "[s2s]\nlisten = [\"127.0.0.2:5269\"]\ndirect_tls_listen = []\n{base}"
    ))
    .unwrap();
    assert!(c.s2s.direct_tls_listen.is_empty());
    // Without listen either: the defaults (all interfaces), as before.
    let c = parse(base).unwrap();
    assert_eq!(c.s2s.direct_tls_listen, addrs(&["0.0.0.0:5270"]));
}

#[test]
fn example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let text = include_str!("../../config/fedgate.toml");
    let c = Config::from_toml(text, &dir).unwrap();
    // One backend, the embedded core: ready after the one command.
    assert_eq!(
        c.local_domains().collect::<Vec<_>>(),
        [
            "example.test",
            "conference.example.test",
            "upload.example.test"
        ]
    );
    let core = c.core.as_ref().expect("the example runs an embedded core");
    assert_eq!(core.domain[0].name, "example.test");
    assert_eq!(
        core.database,
        crate::core::config::Database::Sqlite(dir.join("fedgate-core.sqlite"))
    );
    assert!(core.listen.iter().all(|a| a.ip().is_loopback()));
    assert!(c.s2s.listen.iter().all(|a| a.ip().is_loopback()));
    assert!(c.component.listen.ip().is_loopback());
    assert!(c.metrics.listen.ip().is_loopback());
    assert_eq!(
        c.s2s.dialback_secret_file,
        dir.join("fedgate-dialback.secret")
    );
    // Loading by path gives the same result.
    let loaded = Config::load(&dir.join("fedgate.toml")).unwrap();
    assert_eq!(loaded.s2s.listen, c.s2s.listen);
}

#[test]
fn a_muc_section_serves_its_domain_with_the_in_process_secret() {
    let c = parse(&format!("{MINIMAL}[muc]\ndomain = \"Conf.A.Test\"\n")).unwrap();
    let muc = c.muc.as_ref().unwrap();
    assert_eq!(muc.domain, "conf.a.test");
    assert_eq!(muc.history_length, 20);
    assert_eq!(
        c.local_domains().collect::<Vec<_>>(),
        ["a.test", "conf.a.test"]
    );
    let secrets = c.backend_secrets().unwrap();
    assert_eq!(secrets["conf.a.test"], crate::muc::in_process_secret());
    // The same secret each time, so a reload keeps the link attached.
    assert_eq!(
        c.backend_secrets().unwrap()["conf.a.test"],
        secrets["conf.a.test"]
    );
    let with_muc = |muc: &str| parse(&format!("{MINIMAL}[muc]\n{muc}\n")).unwrap_err();
    assert_eq!(invalid_key(with_muc("domain = \"a.test\"")), "muc.domain");
    assert_eq!(invalid_key(with_muc("history_length = 5")), "muc.domain");
    assert_eq!(
        invalid_key(with_muc("domain = \"c.a.test\"\nhistory_length = 500")),
        "muc.history_length"
    );
    assert_eq!(
        invalid_key(with_muc("domain = \"c.a.test\"\nmax_rooms = 0")),
        "muc.max_rooms"
    );
    assert!(parse(MINIMAL).unwrap().muc.is_none());
}

#[test]
fn an_upload_section_serves_its_domain_and_needs_a_certificate_for_its_urls() {
    let cert = "[[tls.certificate]]\ndomains = [\"upload.a.test\"]\ncert = \"u.crt\"\nkey = \"u.key\"\nself_signed = true\n";
    let c = parse(&format!(
        "{MINIMAL}{cert}[upload]\ndomain = \"Upload.A.Test\"\nlisten = \"127.0.0.1:0\"\n"
    ))
    .unwrap();
    let u = c.upload.as_ref().unwrap();
    assert_eq!(u.domain, "upload.a.test");
    assert_eq!(u.directory, Path::new("/tmp/fedgate-uploads"));
    assert!(c.local_domains().any(|d| d == "upload.a.test"));
    assert_eq!(
        c.backend_secrets().unwrap()["upload.a.test"],
        crate::component::in_process_secret()
    );
    let with = |extra: &str, upload: &str| {
        invalid_key(parse(&format!("{MINIMAL}{extra}[upload]\n{upload}\n")).unwrap_err())
    };
    assert_eq!(with(cert, "domain = \"a.test\""), "upload.domain");
    assert_eq!(
        with(
            &format!("{cert}[muc]\ndomain = \"upload.a.test\"\n"),
            "domain = \"upload.a.test\""
        ),
        "upload.domain"
    );
    // No certificate covers the host of the URLs.
    assert_eq!(with("", "domain = \"upload.a.test\""), "upload.url");
    assert_eq!(
        with(
            cert,
            "domain = \"upload.a.test\"\nurl = \"https://files.a.test/\""
        ),
        "upload.url"
    );
    assert_eq!(
        with(
            cert,
            "domain = \"upload.a.test\"\nlisten = \"127.0.0.1:5347\""
        ),
        "upload.listen"
    );
}

#[test]
fn core_section_is_checked_against_the_backends() {
    let with_core = |core: &str| parse(&format!("{MINIMAL}[core]\n{core}\n"));
    let c = with_core("listen = [\"127.0.0.1:5222\"]\n[[core.domain]]\nname = \"A.Test\"").unwrap();
    let core = c.core.unwrap();
    assert_eq!(core.domain[0].name, "a.test");
    assert_eq!(
        core.database,
        crate::core::config::Database::Sqlite("/tmp/fedgate-core.sqlite".into())
    );
    // Every domain and alias must be a backend of this gateway.
    let e = with_core("[[core.domain]]\nname = \"a.test\"\naliases = [\"b.test\"]").unwrap_err();
    assert_eq!(invalid_key(e), "core.domain[0]");
    // The core's listeners may not clash with the gateway's.
    let e =
        with_core("listen = [\"127.0.0.1:9269\"]\n[[core.domain]]\nname = \"a.test\"").unwrap_err();
    assert!(e.to_string().contains("core.listen[0]"), "{e}");
    // Its own rules apply, with `core.` keys.
    let e = with_core("session_queue = 0\n[[core.domain]]\nname = \"a.test\"").unwrap_err();
    assert_eq!(invalid_key(e), "core.session_queue");
    // Without [core], nothing changes.
    assert!(parse(MINIMAL).unwrap().core.is_none());
}

#[test]
fn defaults_applied_to_minimal_file() {
    let c = parse(MINIMAL).unwrap();
    let s = &c.s2s;
    assert_eq!(s.listen, ["0.0.0.0:5269".parse().unwrap()]);
    assert_eq!(s.connect_timeout, Duration::from_secs(10));
    assert_eq!(s.negotiation_timeout, Duration::from_secs(30));
    assert_eq!(s.dialback_timeout, Duration::from_secs(15));
    assert_eq!(s.idle_timeout, Duration::from_secs(600));
    assert_eq!(s.max_stanza_bytes, 524_288);
    assert_eq!(s.max_negotiation_stanza_bytes, 8192);
    assert_eq!(s.max_depth, 32);
    assert_eq!(s.max_attributes, 64);
    assert_eq!(s.max_connections, 10_000);
    assert_eq!(s.queue_max_stanzas, 1000);
    assert_eq!(s.queue_max_bytes, 4_194_304);
    assert!(s.route.is_empty());
    assert!(c.dns.nameservers.is_none());
    assert_eq!(c.dns.negative_ttl, Duration::from_secs(30));
    assert_eq!(c.dns.timeout, Duration::from_secs(5));
    assert_eq!(c.federation.mode, FederationMode::Open);
    assert_eq!(c.component.listen, "127.0.0.1:5347".parse().unwrap());
    assert!(!c.component.replace_on_conflict);
    assert!(c.metrics.enabled);
    assert_eq!(c.metrics.listen, "127.0.0.1:9269".parse().unwrap());
    assert_eq!(c.component.backend[0].secret().unwrap(), "s3cret");
}

#[test]
fn a_gone_backend_is_waited_for_5_s_by_default_zero_is_allowed_and_over_1_min_refused() {
    assert_eq!(
        parse(MINIMAL).unwrap().component.reattach_grace,
        Duration::from_secs(5)
    );
    let zero = parse(&format!("[component]\nreattach_grace = \"0s\"\n{MINIMAL}")).unwrap();
    assert_eq!(zero.component.reattach_grace, Duration::ZERO);
    let e = parse(&format!("[component]\nreattach_grace = \"2m\"\n{MINIMAL}")).unwrap_err();
    assert!(e.to_string().contains("at most \"1m\""), "{e}");
    assert_eq!(invalid_key(e), "component.reattach_grace");
}

#[test]
fn the_drain_lasts_10_s_by_default_zero_is_allowed_and_over_5_min_refused() {
    assert_eq!(
        parse(MINIMAL).unwrap().s2s.drain_timeout,
        Duration::from_secs(10)
    );
    let zero = parse(&format!("[s2s]\ndrain_timeout = \"0s\"\n{MINIMAL}")).unwrap();
    assert_eq!(zero.s2s.drain_timeout, Duration::ZERO);
    let e = parse(&format!("[s2s]\ndrain_timeout = \"6m\"\n{MINIMAL}")).unwrap_err();
    let message = e.to_string();
    assert!(message.contains("TimeoutStopSec"), "{message}");
    assert_eq!(invalid_key(e), "s2s.drain_timeout");
}

#[test]
fn abuse_limits_have_safe_defaults_and_zero_is_refused_naming_the_key() {
    let s = parse(MINIMAL).unwrap().s2s;
    assert_eq!(s.max_connections_per_ip, 32);
    assert_eq!(s.max_streams_per_domain, 32);
    assert_eq!(s.max_domain_pairs_per_stream, 100);
    assert_eq!(s.max_pending_verifications, 16);
    assert_eq!(s.max_pending_verifications_total, 1024);
    assert_eq!(s.max_inbound_bytes_per_second, 1_048_576);
    for key in [
        "max_connections_per_ip",
        "max_streams_per_domain",
        "max_domain_pairs_per_stream",
        "max_pending_verifications",
        "max_pending_verifications_total",
        "max_inbound_bytes_per_second",
    ] {
        let e = parse(&format!("[s2s]\n{key} = 0\n{MINIMAL}")).unwrap_err();
        let message = e.to_string();
        assert!(message.contains("the default is"), "{message}");
        assert_eq!(invalid_key(e), format!("s2s.{key}"));
    }
    let e = parse(&format!(
        "[s2s]\nmax_pending_verifications = 20\nmax_pending_verifications_total = 10\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(invalid_key(e), "s2s.max_pending_verifications");
}

#[test]
fn peer_limits_and_routes_are_checked() {
    let with = |tables: &str| parse(&format!("{MINIMAL}{tables}"));
    let c = with(
        "[[federation.peer]]\ndomain = \"B.Test\"\nmax_stanza_bytes = 1000\nmax_inbound_bytes_per_second = 5000\nroute = \"XMPP.B.Test:5269\"\n",
    )
    .unwrap();
    let p = &c.federation.peer[0];
    assert_eq!(p.max_stanza_bytes, Some(1000));
    assert_eq!(p.max_inbound_bytes_per_second, Some(5000));
    assert_eq!(p.route.as_ref().unwrap().to_string(), "xmpp.b.test:5269");
    for (tables, key) in [
        (
            "[[federation.peer]]\ndomain = \"b.test\"\nmax_stanza_bytes = 0\n",
            "federation.peer[0].max_stanza_bytes",
        ),
        (
            "[[federation.peer]]\ndomain = \"b.test\"\nmax_inbound_bytes_per_second = 0\n",
            "federation.peer[0].max_inbound_bytes_per_second",
        ),
        (
            "[[federation.peer]]\ndomain = \"b.test\"\nmax_outbound_pairs_per_stream = 0\n",
            "federation.peer[0].max_outbound_pairs_per_stream",
        ),
        // Larger than the outbound queue could ever hold.
        (
            "[[federation.peer]]\ndomain = \"b.test\"\nmax_stanza_bytes = 5000000\n",
            "federation.peer[0].max_stanza_bytes",
        ),
        // One route per domain, whichever table it is in.
        (
            "[[s2s.route]]\ndomain = \"b.test\"\ntarget = \"127.0.0.1:5269\"\n[[federation.peer]]\ndomain = \"b.test\"\nroute = \"127.0.0.2:5269\"\n",
            "federation.peer[0].route",
        ),
        (
            "[[federation.peer]]\ndomain = \"b.test\"\nroute = \"127.0.0.1:5269\"\n[[federation.peer]]\ndomain = \"B.test\"\nroute = \"127.0.0.2:5269\"\n",
            "federation.peer[1].route",
        ),
        (
            "[[federation.peer]]\ndomain = \"a.test\"\nroute = \"127.0.0.1:5269\"\n",
            "federation.peer[0].route",
        ),
    ] {
        assert_eq!(invalid_key(with(tables).unwrap_err()), key, "{tables}");
    }
    let e = with("[[federation.peer]]\ndomain = \"b.test\"\nroute = \"b.test\"\n").unwrap_err();
    assert!(e.to_string().contains("no port"), "{e}");
}

#[test]
fn durations_are_written_in_their_largest_whole_unit_and_read_back() {
    use std::time::Duration as D;
    for (d, text) in [
        (D::from_secs(365 * 86_400), "365d"),
        (D::from_secs(86_400), "1d"),
        (D::from_secs(7_200), "2h"),
        (D::from_secs(600), "10m"),
        (D::from_secs(90), "90s"),
        (D::from_millis(250), "250ms"),
        (D::ZERO, "0s"),
    ] {
        assert_eq!(duration::text(d), text);
        assert_eq!(humantime::parse_duration(text).unwrap(), d, "{text}");
    }
}

#[test]
fn durations_parse() {
    let c = parse(&format!(
        "[s2s]\nconnect_timeout = \"500ms\"\nidle_timeout = \"1h\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.s2s.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.s2s.idle_timeout, Duration::from_secs(3600));
    let e = parse(&format!("[s2s]\nidle_timeout = \"0s\"\n{MINIMAL}")).unwrap_err();
    assert_eq!(invalid_key(e), "s2s.idle_timeout");
}

#[test]
fn unknown_key_rejected_with_its_name() {
    let e = parse(&format!("[s2s]\nlisten_on = []\n{MINIMAL}")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ConfigError::Parse { .. }));
    assert!(msg.contains("listen_on"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    assert!(msg.contains("[s2s]"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");

    let e = parse(&format!("{MINIMAL}secrte = \"x\"\n")).unwrap_err();
    assert!(e.to_string().contains("secrte"), "{e}");
}

#[test]
fn missing_backend_or_secret() {
    let e = parse("").unwrap_err();
    assert_eq!(invalid_key(e), "component.backend");
    let e = parse("[[component.backend]]\ndomain = \"a.test\"\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("component.backend[0]: neither"), "{msg}");
    let e = parse("[[component.backend]]\ndomain = \"a.test\"\nsecret = \"\"\n").unwrap_err();
    assert_eq!(invalid_key(e), "component.backend[0].secret");
}

#[test]
fn both_secrets_refused_with_file_in_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fedgate.toml");
    std::fs::write(
        &path,
        "[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\nsecret_file = \"s\"\n",
    )
    .unwrap();
    let msg = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "{}: component.backend[0]: both `secret` and `secret_file` are set; keep one of them",
            path.display()
        )
    );
}

#[test]
fn secret_file_relative_to_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.secret"), "  file-secret\n").unwrap();
    let path = dir.path().join("fedgate.toml");
    std::fs::write(
        &path,
        "[s2s]\ndialback_secret_file = \"db.secret\"\nrequire_encryption = false\n\
         [[component.backend]]\ndomain = \"a.test\"\nsecret_file = \"a.secret\"\n",
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(
        c.component.backend[0].secret_file,
        Some(dir.path().join("a.secret"))
    );
    assert_eq!(c.component.backend[0].secret().unwrap(), "file-secret");
    assert_eq!(c.s2s.dialback_secret_file, dir.path().join("db.secret"));

    // Absolute paths are kept; a missing file is reported against its key.
    let e = parse("[[component.backend]]\ndomain = \"a.test\"\nsecret_file = \"/nonexistent/x\"\n")
        .unwrap_err();
    assert_eq!(invalid_key(e), "component.backend[0].secret_file");
}

#[test]
fn tls_defaults_and_checks() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.s2s.require_encryption);
    assert!(!c.s2s.secure_auth);
    assert_eq!(c.s2s.direct_tls_listen, ["0.0.0.0:5270".parse().unwrap()]);
    assert!(c.tls.webpki_roots);
    assert_eq!(c.tls.certificate[0].cert, Path::new("/tmp/a.crt"));

    // Encryption required and no certificate for a local domain: named, with the fix.
    let e = parse("[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("no certificate for a.test"), "{msg}");
    assert!(msg.contains("self_signed = true"), "{msg}");
    // A wildcard covers one label, not the apex and not two labels.
    assert!(certificate_covers("*.a.test", "x.a.test"));
    assert!(!certificate_covers("*.a.test", "a.test"));
    assert!(!certificate_covers("*.a.test", "y.x.a.test"));
    let e = parse(&MINIMAL.replace("[\"a.test\"]", "[\"*.a.test\"]")).unwrap_err();
    assert_eq!(invalid_key(e), "tls.certificate");
    // Files must exist unless they are to be created.
    let e = parse(&MINIMAL.replace("self_signed = true", "")).unwrap_err();
    assert_eq!(invalid_key(e), "tls.certificate[0].cert");
    let e = parse(&format!(
        "[tls]\nca_files = [\"/nonexistent/ca.pem\"]\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(invalid_key(e), "tls.ca_files[0]");
    // Listeners may not collide across kinds.
    let e = parse(&format!(
        "[s2s]\nlisten = [\"127.0.0.1:5269\"]\ndirect_tls_listen = [\"127.0.0.1:5269\"]\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(invalid_key(e), "s2s.direct_tls_listen[0]");
}

#[test]
fn federation_peers() {
    let hex_pin = "ab".repeat(32);
    let c = parse(&format!(
        "[[federation.peer]]\ndomain = \"B.test\"\ntls = \"optional\"\nauth = \"dialback\"\n\
         pin_sha256 = [\"{hex_pin}\", \"{}\"]\n{MINIMAL}",
        "q83vq83vq83vq83vq83vq83vq83vq83vq83vq83vq80="
    ))
    .unwrap();
    let p = &c.federation.peer[0];
    assert_eq!(p.domain, "b.test");
    assert_eq!(p.tls, Some(TlsRequirement::Optional));
    assert_eq!(p.auth, AuthRequirement::Dialback);
    assert_eq!(p.secure_auth, None);
    let pins = p.pins().unwrap();
    assert_eq!(pins[0], [0xab; 32]);
    assert_eq!(&pins[1][..3], &[0xab, 0xcd, 0xef]);

    let e = parse(&format!(
        "[[federation.peer]]\ndomain = \"b.test\"\npin_sha256 = [\"abcd\"]\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(invalid_key(e), "federation.peer[0].pin_sha256");
    let e = parse(&format!(
        "[[federation.peer]]\ndomain = \"b.test\"\ntls = \"optional\"\nauth = \"external\"\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(invalid_key(e), "federation.peer[0].auth");
}

#[test]
fn duplicate_and_invalid_domains() {
    let dup = "[[component.backend]]\ndomain = \"a.test\"\nsecret = \"x\"\n\
               [[component.backend]]\ndomain = \"A.test.\"\nsecret = \"y\"\n";
    let e = parse(dup).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("component.backend[1].domain"), "{msg}");
    assert!(msg.contains("component.backend[0]"), "{msg}");

    let e = parse("[[component.backend]]\ndomain = \"a..test\"\nsecret = \"x\"\n").unwrap_err();
    assert_eq!(invalid_key(e), "component.backend[0].domain");
}

#[test]
fn domains_normalised() {
    let c = parse(
        "[federation]\nmode = \"allowlist\"\nallow = [\"*.Example.ORG\", \"B.test.\"]\n\
         [[s2s.route]]\ndomain = \"Remote.TEST\"\ntarget = \"XMPP.remote.test:5270\"\n\
         [[tls.certificate]]\ndomains = [\"MÜNCHEN.test\", \"*.Xn--Mnchen-3ya.TEST\"]\n\
         cert = \"m.crt\"\nkey = \"m.key\"\nself_signed = true\n\
         [[component.backend]]\ndomain = \"MÜNCHEN.test\"\nsecret = \"x\"\n",
    )
    .unwrap();
    assert_eq!(
        c.tls.certificate[0].domains,
        ["münchen.test", "*.münchen.test"]
    );
    assert_eq!(c.local_domains().collect::<Vec<_>>(), ["münchen.test"]);
    assert_eq!(c.federation.allow, ["*.example.org", "b.test"]);
    assert_eq!(c.s2s.route[0].domain, "remote.test");
    assert_eq!(c.s2s.route[0].target.to_string(), "xmpp.remote.test:5270");
}

#[test]
fn route_targets() {
    let with_route = |target: &str| {
        parse(&format!(
            "[[s2s.route]]\ndomain = \"b.test\"\ntarget = \"{target}\"\n{MINIMAL}"
        ))
    };
    let c = with_route("127.0.0.1:5270").unwrap();
    assert_eq!(
        c.s2s.route[0].target.ip(),
        Some("127.0.0.1".parse().unwrap())
    );
    assert_eq!(c.s2s.route[0].target.port, 5270);
    let c = with_route("[::1]:5270").unwrap();
    assert_eq!(c.s2s.route[0].target.host, "::1");
    assert_eq!(c.s2s.route[0].target.to_string(), "[::1]:5270");

    for bad in [
        "b.test",
        "b.test:0",
        "b.test:70000",
        ":5269",
        "::1:5269",
        "[::1]5269",
    ] {
        let e = with_route(bad).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::Parse { .. }), "{bad}: {msg}");
        assert!(msg.contains("host:port"), "{bad}: {msg}");
    }
    let e = with_route("bad_host:5269").unwrap_err();
    assert_eq!(invalid_key(e), "s2s.route[0].target");

    // A route for a local domain makes no sense.
    let e = parse(&format!(
        "[[s2s.route]]\ndomain = \"a.test\"\ntarget = \"127.0.0.1:5270\"\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(invalid_key(e), "s2s.route[0].domain");
}

#[test]
fn federation_patterns() {
    let with = |p: &str| parse(&format!("[federation]\ndeny = [\"{p}\"]\n{MINIMAL}"));
    assert!(with("*.example.org").is_ok());
    assert!(with("example.org").is_ok());
    for bad in ["*", "a.*.org", "example.*", "**.org", "*.1.2.3.4"] {
        let e = with(bad).unwrap_err();
        assert_eq!(invalid_key(e), "federation.deny[0]", "{bad}");
    }
    let e = parse(&format!("[federation]\nmode = \"closed\"\n{MINIMAL}")).unwrap_err();
    assert!(e.to_string().contains("closed"), "{e}");
}

#[test]
fn limits_checked() {
    let e = parse(&format!("[s2s]\nmax_depth = 0\n{MINIMAL}")).unwrap_err();
    assert_eq!(invalid_key(e), "s2s.max_depth");
    let e = parse(&format!(
        "[s2s]\nmax_stanza_bytes = 4096\nmax_negotiation_stanza_bytes = 8192\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(invalid_key(e), "s2s.max_negotiation_stanza_bytes");
    let e = parse(&format!("[s2s]\nlisten = []\n{MINIMAL}")).unwrap_err();
    assert_eq!(invalid_key(e), "s2s.listen");
    let e = parse(&format!("[dns]\nnameservers = []\n{MINIMAL}")).unwrap_err();
    assert_eq!(invalid_key(e), "dns.nameservers");
    let e = parse(&format!(
        "[metrics]\nlisten = \"127.0.0.1:5347\"\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(invalid_key(e), "metrics.listen");
}

#[test]
fn dns_caching_and_timeout_checked() {
    let c = parse(&format!(
        "[dns]\nnameservers = [\"127.0.0.1:53\"]\nnegative_ttl = \"0s\"\ntimeout = \"300ms\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.dns.negative_ttl, Duration::ZERO);
    assert_eq!(c.dns.timeout, Duration::from_millis(300));
    assert!(parse(&format!("[dns]\nnegative_ttl = \"3h\"\n{MINIMAL}")).is_ok());
    let e = parse(&format!("[dns]\nnegative_ttl = \"4h\"\n{MINIMAL}")).unwrap_err();
    assert_eq!(invalid_key(e), "dns.negative_ttl");
    let e = parse(&format!("[dns]\ntimeout = \"0s\"\n{MINIMAL}")).unwrap_err();
    assert_eq!(invalid_key(e), "dns.timeout");
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = format!(
        "[s2s]\nmax_depth = 0\nidle_timeout = \"0s\"\n[dns]\ntimeout = \"0s\"\n\
         [[federation.peer]]\ndomain = \"b.test\"\npin_sha256 = [\"abcd\"]\n{MINIMAL}\
         [[component.backend]]\ndomain = \"a..test\"\n"
    );
    let config: Config = toml::from_str(&text).unwrap();
    let keys: Vec<String> = config.problems().into_iter().map(invalid_key).collect();
    assert_eq!(
        keys,
        [
            "s2s.idle_timeout",
            "s2s.max_depth",
            "component.backend[1].domain",
            "component.backend[1]",
            "federation.peer[0].pin_sha256",
            "dns.timeout",
        ]
    );
    // `validate` and `from_toml` give the first.
    assert_eq!(invalid_key(parse(&text).unwrap_err()), "s2s.idle_timeout");
    assert!(parse(MINIMAL).unwrap().problems().is_empty());
}

#[test]
fn the_effective_config_has_every_default_and_no_secret() {
    let c = parse(&format!(
        "[[s2s.route]]\ndomain = \"b.test\"\ntarget = \"[::1]:5270\"\n{MINIMAL}"
    ))
    .unwrap();
    let text = toml::to_string(&c).unwrap();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("secret = \"<redacted>\""), "{text}");
    for line in [
        "negotiation_timeout = \"30s\"",
        "idle_timeout = \"10m\"",
        "max_stanza_bytes = 524288",
        "target = \"[::1]:5270\"",
        "mode = \"open\"",
        "webpki_roots = true",
        "cert = \"/tmp/a.crt\"",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    // It reads back as the same configuration (the secret aside).
    let back = parse(&text).unwrap();
    assert_eq!(toml::to_string(&back).unwrap(), text);
}

#[test]
fn secrets_not_in_debug() {
    let c = parse(MINIMAL).unwrap();
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn io_error_names_file() {
    let e = Config::load(Path::new("/nonexistent/fedgate.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(
        e.to_string().starts_with("/nonexistent/fedgate.toml: "),
        "{e}"
    );
}
