//! `fedgate core` with real clients: slixmpp (tests/support/client.py) signing in over STARTTLS
//! and direct TLS, rosters, presence and subscriptions between local accounts and across two
//! federating gateways, offline delivery, aliases with Google's JID domain discovery, service
//! discovery, a restart from SQLite; and raw streams for the negotiation rules a client library
//! would never break on purpose.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::binary::{signal, spawn_command, wait_for_line, KillOnDrop};
use crate::certs::{ca, CertSpec};
use crate::harness::*;
use fedgate::component::client::Target;
use fedgate::config::TlsConfig;
use fedgate::core::accounts::Accounts;
use fedgate::core::config::{CoreConfig, DomainConfig};
use fedgate::core::{GatewayLink, RunningCore};
use fedgate::tls::Tls;

/// The slixmpp client the interop tests use too.
pub(crate) use fedgate_test_support::slixmpp;
pub(crate) use slixmpp::{Client, Login};

const ALIAS_SECRET: &str = "alias-secret";

/// A gateway with a core attached over TCP as its backend.
pub(crate) struct Node {
    pub(crate) gw: Instance,
    pub(crate) core: Option<RunningCore>,
    pub(crate) config: CoreConfig,
    tls: Arc<Tls>,
    secrets: HashMap<String, String>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn node(dns: &TestDns, domain: &str, aliases: &[&str]) -> Node {
    node_with(dns, domain, aliases, |_| {}).await
}

pub(crate) async fn node_with(
    dns: &TestDns,
    domain: &str,
    aliases: &[&str],
    tweak: impl FnOnce(&mut CoreConfig),
) -> Node {
    let mut builder = instance(dns, domain);
    for a in aliases {
        builder = builder.backend(a, ALIAS_SECRET);
    }
    let gw = builder.start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut names: Vec<&str> = vec![domain];
    names.extend(aliases);
    let (cert, key) = ca().issue(&CertSpec::for_names(&names), dir.path(), "core");
    let tls = TlsConfig {
        webpki_roots: false,
        ca_files: Vec::new(),
        certificate: vec![toml::from_str(&format!(
            "domains = {names:?}\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ))
        .unwrap()],
    };
    let mut config = CoreConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        direct_tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
        database: fedgate::core::config::Database::Sqlite(dir.path().join("core.sqlite")),
        negotiation_timeout: Duration::from_secs(5),
        domain: vec![DomainConfig {
            name: domain.to_string(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        }],
        ..CoreConfig::default()
    };
    tweak(&mut config);
    let mut secrets = HashMap::new();
    secrets.insert(domain.to_string(), gw.component_secret.clone());
    for a in aliases {
        secrets.insert(a.to_string(), ALIAS_SECRET.to_string());
    }
    let tls = Arc::new(Tls::from_tls_config(&tls).unwrap());
    let mut n = Node {
        gw,
        core: None,
        config,
        tls,
        secrets,
        _dir: dir,
    };
    n.start_core().await;
    n
}

impl Node {
    pub(crate) async fn start_core(&mut self) {
        let link = GatewayLink {
            gateways: vec![Target::Tcp(self.gw.gw().component_addr)],
            secrets: self.secrets.clone(),
            neighbours: Vec::new(),
            acks: Default::default(),
        };
        let registry = prometheus::Registry::new();
        let core = fedgate::core::start(&self.config, self.tls.clone(), link, &registry)
            .await
            .expect("core starts");
        // Wait until every domain is attached at the gateway.
        for d in self.secrets.keys() {
            assert_eventually(|| self.gw.gw().router.component_attached(d)).await;
        }
        // Later restarts reuse the same ports, so clients need no new address.
        self.config.listen = core.c2s_addrs.clone();
        self.config.direct_tls_listen = core.direct_tls_addrs.clone();
        self.core = Some(core);
    }

    pub(crate) async fn stop_core(&mut self) {
        if let Some(core) = self.core.take() {
            core.shutdown(Duration::from_secs(5)).await;
        }
        let domain = self.gw.domain.clone();
        assert_eventually(|| !self.gw.gw().router.component_attached(&domain)).await;
    }

    pub(crate) fn c2s(&self) -> SocketAddr {
        self.config.listen[0]
    }

    pub(crate) fn direct(&self) -> SocketAddr {
        self.config.direct_tls_listen[0]
    }

    pub(crate) fn add_user(&self, address: &str, password: &str) {
        Accounts::open(&self.config)
            .unwrap()
            .add(address, password)
            .unwrap();
    }
}

/// A gateway for `domain` with the embedded core (its database in the instance's folder,
/// the accounts `users` with password "pw") and the services of `services`, each a domain
/// with its table (`[muc]`, `[upload]`): in DNS and in the gateway's certificate like the
/// domain itself, and attached before this returns.
pub(crate) async fn core_with_services(
    dns: &TestDns,
    domain: &str,
    services: &[(&str, String)],
    users: &[&str],
) -> Instance {
    let mut names = vec![domain];
    let mut tables = format!(
        "[core]\nlisten = [\"127.0.0.1:0\"]\ndirect_tls_listen = []\ndatabase = \"core.sqlite\"\n[[core.domain]]\nname = \"{domain}\"\n"
    );
    for (name, table) in services {
        names.push(name);
        tables.push_str(table);
        tables.push('\n');
    }
    let a = instance(dns, domain)
        .cert(CertSpec::for_names(&names))
        .cert_domains(&names)
        .tables(&tables)
        .start()
        .await;
    for name in &names {
        assert_eventually(|| a.gw().router.component_attached(name)).await;
    }
    for (name, _) in services {
        dns.add(name, a.ip);
    }
    let core = a.gw().core.as_ref().expect("embedded core");
    let accounts = Accounts::open(&core.core.config).unwrap();
    for user in users {
        accounts.add(&format!("{user}@{domain}"), "pw").unwrap();
    }
    a
}

pub(crate) async fn assert_eventually(f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client for `jid` at `addr` that verifies the core's certificate (from the test CA).
pub(crate) fn login(addr: SocketAddr, jid: &str, password: &str) -> Login {
    Login::new(jid, password, addr).ca(&ca().ca_file)
}

/// Signs in over STARTTLS and waits for the session; returns the bound JID too.
pub(crate) async fn sign_in(addr: SocketAddr, jid: &str, password: &str) -> (Client, String) {
    let client = login(addr, jid, password).online().await;
    let bound = client.jid.clone();
    (client, bound)
}

pub(crate) fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap()
}

/// A raw client stream over STARTTLS to `to`, up to the post-TLS features.
pub(crate) async fn raw_tls(addr: SocketAddr, to: &str) -> (RawStream, String) {
    let mut s = RawStream::connect(addr).await;
    s.send(&client_header(to)).await;
    s.expect_header().await;
    let features = s.next_text().await;
    assert!(features.contains("<starttls"), "{features}");
    s.starttls(to, None).await;
    s.send(&client_header(to)).await;
    s.expect_header().await;
    let features = s.next_text().await;
    (s, features)
}

pub(crate) fn client_header(to: &str) -> String {
    format!("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>")
}

pub(crate) fn plain_auth(user: &str, password: &str, extra: &str) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'{extra}>{payload}</auth>"
    )
}

/// Restarts a raw stream that just succeeded with SASL, up to features that offer `<bind/>`.
pub(crate) async fn raw_restart(s: &mut RawStream, to: &str) {
    s.restart();
    s.send(&client_header(to)).await;
    s.expect_header().await;
    let features = s.next_text().await;
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{features}"
    );
}

/// Binds `resource` on a restarted raw stream; returns the bound JID.
pub(crate) async fn raw_bind_resource(s: &mut RawStream, resource: &str) -> String {
    s.send(&format!("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>")).await;
    let result = s.next().await;
    assert_eq!(result.type_(), Some("result"), "{}", text(result.raw()));
    let el = result.element().unwrap();
    el.child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
        .and_then(|b| b.child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
        .unwrap()
        .text()
}

/// Binds a resource on a raw stream that just succeeded with SASL; returns the bound JID.
pub(crate) async fn raw_bind(s: &mut RawStream, to: &str) -> String {
    raw_restart(s, to).await;
    raw_bind_resource(s, "raw").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_signs_in_with_scram_over_starttls_and_direct_tls() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "secret");
    let a = login(n.c2s(), "alice@a.test/home", "secret").online().await;
    assert_eq!(a.jid, "alice@a.test/home");
    assert_eq!(a.mechanism, "SCRAM-SHA-256");
    a.quit().await;
    let b = login(n.direct(), "alice@a.test/work", "secret")
        .direct_tls()
        .mech("SCRAM-SHA-1")
        .online()
        .await;
    assert_eq!(b.jid, "alice@a.test/work");
    assert_eq!(b.mechanism, "SCRAM-SHA-1");
    b.quit().await;
    // A wrong password fails, over either mechanism.
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-1"] {
        let mut c = login(n.c2s(), "alice@a.test", "wrong").mech(mech).spawn();
        c.expect("failed", |e| e["why"] == "auth").await;
    }
    let mut c = login(n.c2s(), "nobody@a.test", "secret").spawn();
    c.expect("failed", |e| e["why"] == "auth").await;
}

#[tokio::test]
async fn tls_comes_first_and_plain_only_after_it_unless_turned_off() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "secret");
    // Before TLS: only STARTTLS is offered, SASL is refused, stanzas end the stream.
    let mut s = RawStream::connect(n.c2s()).await;
    s.send(&client_header("a.test")).await;
    s.expect_header().await;
    assert_eq!(
        s.next_text().await,
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
    );
    s.send(&plain_auth("alice", "secret", "")).await;
    assert_eq!(
        s.next_text().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>"
    );
    s.send("<message to='bob@a.test'><body>x</body></message>")
        .await;
    assert_eq!(s.expect_stream_error().await, "policy-violation");

    // After TLS, with `allow_plain = false` (PLAIN is on by default now): PLAIN is neither
    // offered nor accepted.
    let n = node_with(&dns, "c.test", &[], |c| c.allow_plain = false).await;
    n.add_user("alice@c.test", "secret");
    let (mut s, features) = raw_tls(n.c2s(), "c.test").await;
    assert!(
        features.contains("<mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>"),
        "{features}"
    );
    assert!(!features.contains("PLAIN"), "{features}");
    s.send(&plain_auth("alice", "secret", "")).await;
    assert_eq!(
        s.next_text().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-mechanism/></failure>"
    );

    // By default, over TLS: offered, and a wrong password is not-authorized.
    let n = node(&dns, "b.test", &[]).await;
    n.add_user("bob@b.test", "pw");
    let (mut s, features) = raw_tls(n.c2s(), "b.test").await;
    assert!(
        features.contains("<mechanism>PLAIN</mechanism>"),
        "{features}"
    );
    s.send(&plain_auth("bob", "nope", "")).await;
    assert_eq!(
        s.next_text().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"
    );
    s.send(&plain_auth("bob", "pw", "")).await;
    assert_eq!(
        s.next_text().await,
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    );
    assert_eq!(raw_bind(&mut s, "b.test").await, "bob@b.test/raw");
    // And PLAIN before TLS is still refused there.
    let mut s = RawStream::connect(n.c2s()).await;
    s.send(&client_header("b.test")).await;
    s.expect_header().await;
    s.next().await;
    s.send(&plain_auth("bob", "pw", "")).await;
    assert!(s.next_text().await.contains("<encryption-required/>"));
}

#[tokio::test]
async fn stream_headers_failures_and_timeouts_get_their_stream_errors() {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| {
        c.negotiation_timeout = Duration::from_millis(500)
    })
    .await;
    let cases = [
        ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='a.test' version='1.0'>", "invalid-namespace"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='other.test' version='1.0'>", "host-unknown"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='a.test'>", "unsupported-version"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='a.test' version='2.0'>", "unsupported-version"),
    ];
    for (header, cond) in cases {
        let mut s = RawStream::connect(n.c2s()).await;
        s.send(header).await;
        assert_eq!(s.expect_stream_error().await, cond, "{header}");
    }
    let mut s = RawStream::connect(n.c2s()).await;
    s.send(&client_header("a.test")).await;
    assert_eq!(s.expect_stream_error().await, "connection-timeout");
    // Three wrong passwords end the stream.
    let n = node_with(&dns, "b.test", &[], |c| c.allow_plain = true).await;
    let (mut s, _) = raw_tls(n.c2s(), "b.test").await;
    for _ in 0..2 {
        s.send(&plain_auth("bob", "nope", "")).await;
        assert!(s.next_text().await.contains("<not-authorized/>"));
    }
    s.send(&plain_auth("bob", "nope", "")).await;
    assert_eq!(s.expect_stream_error().await, "policy-violation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_subscriptions_and_presence_between_two_local_accounts() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let (mut alice, alice_jid) = sign_in(n.c2s(), "alice@a.test/home", "pa").await;
    let (mut bob, bob_jid) = sign_in(n.c2s(), "bob@a.test/desk", "pb").await;
    alice.roster().await;
    bob.roster().await;
    alice.run(json!({"cmd": "presence"})).await;
    bob.run(json!({"cmd": "presence"})).await;

    // alice adds bob with a name and a group; the roster push reaches her.
    alice
        .run(
            json!({"cmd": "roster_set", "jid": "bob@a.test", "name": "Bob", "groups": ["Friends"]}),
        )
        .await;
    alice.push("bob@a.test", "none").await;
    // alice asks for bob's presence: pending out (ask='subscribe'), bob gets the request.
    alice.subscription("bob@a.test", "subscribe").await;
    alice
        .expect("roster_push", |e| {
            e["jid"] == "bob@a.test" && e["ask"] == "subscribe"
        })
        .await;
    bob.presence_from("subscribe", "alice@a.test").await;
    // Not subscribed yet: alice does not see bob's presence.
    alice
        .expect_none("presence", Duration::from_millis(300), |e| {
            e["from"] == bob_jid.as_str() && e["type"] == "available"
        })
        .await;
    // bob approves and subscribes back; alice approves too.
    bob.subscription("alice@a.test", "subscribed").await;
    alice.presence_from("subscribed", "bob@a.test").await;
    alice.push("bob@a.test", "to").await;
    // bob's current presence follows his approval.
    alice.presence_from("available", bob_jid.as_str()).await;
    bob.subscription("alice@a.test", "subscribe").await;
    alice.presence_from("subscribe", "bob@a.test").await;
    alice.subscription("bob@a.test", "subscribed").await;
    alice.push("bob@a.test", "both").await;
    bob.push("alice@a.test", "both").await;
    let roster = alice.roster().await;
    assert_eq!(
        roster["items"]["bob@a.test"],
        json!({"subscription": "both", "ask": "", "name": "Bob", "groups": ["Friends"]}),
        "{roster}"
    );

    // Presence broadcast: a status change reaches the subscriber.
    bob.run(json!({"cmd": "presence", "show": "away", "status": "lunch"}))
        .await;
    alice
        .expect("presence", |e| {
            e["from"] == bob_jid.as_str() && e["show"] == "away" && e["status"] == "lunch"
        })
        .await;
    // A second resource of bob's sees alice's presence (probe answered) and bob's own.
    let (mut bob2, bob2_jid) = sign_in(n.c2s(), "bob@a.test/phone", "pb").await;
    bob2.run(json!({"cmd": "presence"})).await;
    bob2.presence_from("available", alice_jid.as_str()).await;
    bob2.expect("presence", |e| e["from"] == bob_jid.as_str())
        .await;
    bob.expect("presence", |e| e["from"] == bob2_jid.as_str())
        .await;
    alice.presence_from("available", bob2_jid.as_str()).await;
    // Disconnecting without unavailable: the server sends it.
    drop(bob2);
    alice.presence_from("unavailable", bob2_jid.as_str()).await;
    // A message to bob's bare JID reaches his available resource; one to alice's full JID
    // reaches exactly that session.
    alice
        .run(json!({"cmd": "message", "to": "bob@a.test", "body": "hi bob"}))
        .await;
    bob.expect("message", |e| {
        e["body"] == "hi bob" && e["from"] == alice_jid.as_str()
    })
    .await;
    bob.run(json!({"cmd": "message", "to": alice_jid, "body": "hi alice"}))
        .await;
    alice
        .expect("message", |e| {
            e["body"] == "hi alice" && e["from"] == bob_jid.as_str()
        })
        .await;

    // alice removes bob: both subscriptions are cancelled and bob's roster shows it.
    alice
        .run(json!({"cmd": "roster_remove", "jid": "bob@a.test"}))
        .await;
    alice.push("bob@a.test", "remove").await;
    bob.push("alice@a.test", "none").await;
    bob.presence_from("unavailable", alice_jid.as_str()).await;
    alice.quit().await;
    bob.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_offline_and_arrive_once_at_the_next_sign_in() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let (mut alice, alice_jid) = sign_in(n.c2s(), "alice@a.test/home", "pa").await;
    alice.run(json!({"cmd": "presence"})).await;
    for i in 0..3 {
        alice
            .run(json!({"cmd": "message", "to": "bob@a.test", "body": format!("m{i}")}))
            .await;
    }
    // To a resource that is not signed in: treated as to the bare JID (stored too).
    alice
        .run(json!({"cmd": "message", "to": "bob@a.test/gone", "body": "m3"}))
        .await;
    // bob signs in: nothing until initial presence, then everything, in order, with a delay.
    let (mut bob, _) = sign_in(n.c2s(), "bob@a.test/desk", "pb").await;
    bob.expect_none("message", Duration::from_millis(300), |_| true)
        .await;
    bob.run(json!({"cmd": "presence"})).await;
    for i in 0..4 {
        let m = bob.expect("message", |_| true).await;
        assert_eq!(m["body"], format!("m{i}"));
        assert_eq!(m["from"], alice_jid.as_str());
        assert_eq!(m["delay"], true);
    }
    bob.quit().await;
    // Delivered once: the next sign-in gets nothing.
    let (mut bob, _) = sign_in(n.c2s(), "bob@a.test/desk", "pb").await;
    bob.run(json!({"cmd": "presence"})).await;
    bob.expect_none("message", Duration::from_millis(500), |_| true)
        .await;
    // No such user: an error comes back.
    alice
        .run(json!({"cmd": "message", "to": "nobody@a.test", "body": "x"}))
        .await;
    let e = alice
        .expect("message", |e| {
            e["type"] == "error" && e["from"] == "nobody@a.test"
        })
        .await;
    assert_eq!(e["condition"], "service-unavailable");
    // A client cannot choose its sender address.
    alice
        .run(
            json!({"cmd": "message", "to": "bob@a.test", "body": "spoof", "from": "carol@a.test/x"}),
        )
        .await;
    let m = bob.expect("message", |e| e["body"] == "spoof").await;
    assert_eq!(m["from"], alice_jid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_signs_in_with_and_without_jid_domain_discovery() {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "googlemail.com", &["gmail.com"], |c| {
        c.allow_plain = true
    })
    .await;
    n.add_user("user@googlemail.com", "pw");
    n.add_user("friend@googlemail.com", "pf");
    // With client-uses-full-bind-result='true' (prefixed, as Google's clients send it): bound
    // under the canonical domain although the client signed in as user@gmail.com.
    let (mut s, _) = raw_tls(n.c2s(), "gmail.com").await;
    s.send(&plain_auth(
        "user@gmail.com",
        "pw",
        " xmlns:ga='http://www.google.com/talk/protocol/auth' ga:client-uses-full-bind-result='true'",
    ))
    .await;
    assert_eq!(
        s.next_text().await,
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    );
    assert_eq!(
        raw_bind(&mut s, "gmail.com").await,
        "user@googlemail.com/raw"
    );
    // Without it, the client keeps the domain it used, and still signs in (slixmpp, SCRAM).
    let (mut legacy, jid) = sign_in(n.c2s(), "user@gmail.com/old", "pw").await;
    assert_eq!(jid, "user@gmail.com/old");
    legacy.run(json!({"cmd": "presence"})).await;
    // Both spellings reach the one account.
    let (mut friend, friend_jid) = sign_in(n.c2s(), "friend@googlemail.com/f", "pf").await;
    friend
        .run(json!({"cmd": "message", "to": "user@googlemail.com", "body": "one"}))
        .await;
    friend
        .run(json!({"cmd": "message", "to": "user@gmail.com", "body": "two"}))
        .await;
    for body in ["one", "two"] {
        let m = legacy.expect("message", |e| e["body"] == body).await;
        assert_eq!(m["from"], friend_jid.as_str());
    }
    // The raw session is not available (no presence), the legacy one is: it answered both.
    // Plain accounts in an alias domain do not exist on their own.
    let (mut s, _) = raw_tls(n.c2s(), "gmail.com").await;
    s.send(&plain_auth("nobody", "pw", "")).await;
    assert!(s.next_text().await.contains("<not-authorized/>"));
    legacy.quit().await;
    friend.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disco_ping_and_version_on_the_domain() {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| {
        c.disco_items = vec!["conference.a.test".into()]
    })
    .await;
    n.add_user("alice@a.test", "pa");
    let (mut alice, _) = sign_in(n.c2s(), "alice@a.test/r", "pa").await;
    let cases = [
        (
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            "urn:xmpp:ping",
        ),
        (
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            "category=\"server\"",
        ),
        (
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
            "conference.a.test",
        ),
        ("<ping xmlns='urn:xmpp:ping'/>", "type=\"result\""),
        ("<query xmlns='jabber:iq:version'/>", "<name>fedgate</name>"),
    ];
    for (xml, want) in cases {
        alice
            .command(json!({"cmd": "iq", "to": "a.test", "xml": xml}))
            .await;
        let r = alice.expect("iq_result", |_| true).await;
        assert_eq!(r["type"], "result", "{xml}: {r}");
        assert!(r["xml"].as_str().unwrap().contains(want), "{xml}: {r}");
    }
    // Something the server does not do: service-unavailable.
    alice
        .command(
            json!({"cmd": "iq", "to": "a.test", "xml": "<query xmlns='urn:example:nothing'/>"}),
        )
        .await;
    let r = alice.expect("iq_result", |_| true).await;
    assert_eq!(r["condition"], "service-unavailable");
    // An iq to a resource that is not signed in: service-unavailable too.
    alice.command(
        json!({"cmd": "iq", "to": "alice@a.test/elsewhere", "xml": "<ping xmlns='urn:xmpp:ping'/>"}),
    ).await;
    let r = alice.expect("iq_result", |_| true).await;
    assert_eq!(r["condition"], "service-unavailable");
    alice.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_on_two_federated_cores_subscribe_and_chat_through_the_gateways() {
    let dns = TestDns::start().await;
    let a = node(&dns, "a.test", &[]).await;
    let b = node(&dns, "b.test", &[]).await;
    a.add_user("alice@a.test", "pa");
    b.add_user("bob@b.test", "pb");
    let (mut alice, alice_jid) = sign_in(a.c2s(), "alice@a.test/home", "pa").await;
    let (mut bob, bob_jid) = sign_in(b.c2s(), "bob@b.test/desk", "pb").await;
    alice.roster().await;
    bob.roster().await;
    alice.run(json!({"cmd": "presence"})).await;
    bob.run(json!({"cmd": "presence"})).await;
    alice.subscription("bob@b.test", "subscribe").await;
    bob.presence_from("subscribe", "alice@a.test").await;
    bob.subscription("alice@a.test", "subscribed").await;
    bob.subscription("alice@a.test", "subscribe").await;
    alice.push("bob@b.test", "to").await;
    alice.presence_from("available", bob_jid.as_str()).await;
    alice.presence_from("subscribe", "bob@b.test").await;
    alice.subscription("bob@b.test", "subscribed").await;
    bob.push("alice@a.test", "both").await;
    bob.presence_from("available", alice_jid.as_str()).await;
    alice
        .run(json!({"cmd": "message", "to": "bob@b.test", "body": "hello across"}))
        .await;
    bob.expect("message", |e| {
        e["body"] == "hello across" && e["from"] == alice_jid.as_str()
    })
    .await;
    bob.run(json!({"cmd": "message", "to": alice_jid, "body": "hello back"}))
        .await;
    alice
        .expect("message", |e| {
            e["body"] == "hello back" && e["from"] == bob_jid.as_str()
        })
        .await;
    // A stanza from the other side for an account that does not exist comes back as an error.
    bob.run(json!({"cmd": "message", "to": "nobody@a.test", "body": "x"}))
        .await;
    let e = bob
        .expect("message", |e| {
            e["type"] == "error" && e["from"] == "nobody@a.test"
        })
        .await;
    assert_eq!(e["condition"], "service-unavailable");
    // Going offline is seen across the federation.
    bob.quit().await;
    alice.presence_from("unavailable", bob_jid.as_str()).await;
    alice.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_core_keeps_accounts_rosters_and_offline_messages() {
    let dns = TestDns::start().await;
    let mut n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let (mut alice, _) = sign_in(n.c2s(), "alice@a.test/home", "pa").await;
    alice.roster().await;
    alice
        .run(json!({"cmd": "roster_set", "jid": "bob@a.test", "name": "Bob", "groups": ["G"]}))
        .await;
    alice.subscription("bob@a.test", "subscribe").await;
    alice
        .run(json!({"cmd": "message", "to": "bob@a.test", "body": "kept"}))
        .await;
    alice
        .expect("roster_push", |e| e["ask"] == "subscribe")
        .await;
    // A round trip after the message: the session handles its stanzas in order, so once the
    // answer is here the message is stored.
    alice
        .command(json!({"cmd": "iq", "to": "a.test", "xml": "<ping xmlns='urn:xmpp:ping'/>"}))
        .await;
    alice.expect("iq_result", |_| true).await;
    // Stopping ends the client's stream with system-shutdown.
    n.stop_core().await;
    alice.expect("disconnected", |_| true).await;
    drop(alice);
    n.start_core().await;
    let (mut alice, _) = sign_in(n.c2s(), "alice@a.test/home", "pa").await;
    let roster = alice.roster().await;
    assert_eq!(
        roster["items"]["bob@a.test"],
        json!({"subscription": "none", "ask": "subscribe", "name": "Bob", "groups": ["G"]})
    );
    let (mut bob, _) = sign_in(n.c2s(), "bob@a.test/desk", "pb").await;
    bob.run(json!({"cmd": "presence"})).await;
    // The pending request and the offline message both survived.
    bob.presence_from("subscribe", "alice@a.test").await;
    let m = bob.expect("message", |e| e["body"] == "kept").await;
    assert_eq!(bare(m["from"].as_str().unwrap()), "alice@a.test");
    alice.quit().await;
    bob.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_core_serves_clients_from_the_gateway_process() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("embedded.sqlite");
    let a = instance(&dns, "a.test")
        .tables(&format!(
            "[core]\nlisten = [\"127.0.0.1:0\"]\ndirect_tls_listen = []\ndatabase = {:?}\n[[core.domain]]\nname = \"a.test\"\n",
            db.display().to_string()
        ))
        .start()
        .await;
    let core = a.gw().core.as_ref().expect("embedded core");
    assert_eventually(|| a.gw().router.component_attached("a.test")).await;
    Accounts::open(&core.core.config)
        .unwrap()
        .add("alice@a.test", "pa")
        .unwrap();
    let (mut alice, jid) = sign_in(core.c2s_addrs[0], "alice@a.test/r", "pa").await;
    assert_eq!(jid, "alice@a.test/r");
    // The gateway's certificate (from the test CA) is what clients verify; a ping to the
    // domain goes through the core.
    alice
        .command(json!({"cmd": "iq", "to": "a.test", "xml": "<ping xmlns='urn:xmpp:ping'/>"}))
        .await;
    let r = alice.expect("iq_result", |_| true).await;
    assert_eq!(r["type"], "result");
    alice.quit().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_fedgate");

/// Runs `fedgate ARGS`, with `stdin` as its input; returns (exit code, stdout, stderr).
fn fedgate(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A standalone core's file for `domain` on `c2s`, attached to `gateway` with `secret`.
fn core_toml(
    dir: &std::path::Path,
    domain: &str,
    c2s: u16,
    gateway: SocketAddr,
    secret: &str,
) -> PathBuf {
    core_toml_with(dir, domain, c2s, &[gateway], secret, "", "")
}

/// A standalone core's file for `domain` (and `alias.{domain}`) attached to `gateways`, with
/// `core_keys` in `[core]` and `extra` TOML sections at the end.
fn core_toml_with(
    dir: &std::path::Path,
    domain: &str,
    c2s: u16,
    gateways: &[SocketAddr],
    secret: &str,
    core_keys: &str,
    extra: &str,
) -> PathBuf {
    let (cert, key) = ca().issue(&CertSpec::for_names(&[domain]), dir, "core");
    let file = dir.join("core.toml");
    let gateways: Vec<String> = gateways.iter().map(|g| format!("\"{g}\"")).collect();
    std::fs::write(
        &file,
        format!(
            "[core]\nlisten = [\"127.0.0.1:{c2s}\"]\ndirect_tls_listen = []\n{core_keys}\n\
             [[core.domain]]\nname = \"{domain}\"\naliases = [\"alias.{domain}\"]\n\
             [gateway]\naddress = [{}]\nsecret = \"{secret}\"\n\
             [tls]\n[[tls.certificate]]\ndomains = [\"{domain}\"]\ncert = {:?}\nkey = {:?}\n{extra}",
            gateways.join(", "),
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    file
}

/// Starts `fedgate core --config file` and waits for its "ready" log line; the line and the
/// rest of its stderr, one line at a time.
async fn spawn_core(
    file: &std::path::Path,
) -> (KillOnDrop, String, std::sync::mpsc::Receiver<String>) {
    spawn_core_until(file, "fedgate core ready").await
}

/// Starts `fedgate core --config file` and waits for a log line with `wanted`.
async fn spawn_core_until(
    file: &std::path::Path,
    wanted: &'static str,
) -> (KillOnDrop, String, std::sync::mpsc::Receiver<String>) {
    let (child, lines) = spawn_command(&["core", "--config"], file);
    let child = KillOnDrop(Some(child));
    let (ready, lines) =
        tokio::task::spawn_blocking(move || (wait_for_line(&lines, wanted), lines))
            .await
            .unwrap();
    (child, ready, lines)
}

/// Sends SIGTERM to `child` and waits for it to exit cleanly.
async fn stop_child(mut child: KillOnDrop) {
    let mut child = child.0.take().expect("running");
    signal(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

#[test]
fn accounts_are_managed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = core_toml(dir.path(), "a.test", 1, "127.0.0.1:9".parse().unwrap(), "s");
    let file = file.to_str().unwrap();
    let (code, out, err) = fedgate(
        &["core", "user", "add", "Alice@a.test", "--config", file],
        "pw1\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "added alice@a.test");
    // An alias names the same account.
    let (code, _, err) = fedgate(
        &[
            "core",
            "user",
            "add",
            "alice@alias.a.test",
            "--config",
            file,
        ],
        "x\n",
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("exists already"), "{err}");
    let (code, _, err) = fedgate(
        &["core", "user", "add", "bob@other.test", "--config", file],
        "x\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("not served") && err.contains("a.test"),
        "{err}"
    );
    let (code, _, _) = fedgate(
        &[
            "core",
            "user",
            "add",
            "bob@a.test",
            "--password",
            "pw2",
            "--config",
            file,
        ],
        "",
    );
    assert_eq!(code, Some(0));
    let (code, out, _) = fedgate(&["core", "user", "list", "--config", file], "");
    assert_eq!(code, Some(0));
    assert_eq!(out, "alice@a.test\nbob@a.test\n");
    let (code, out, _) = fedgate(
        &["core", "user", "passwd", "bob@a.test", "--config", file],
        "pw3\n",
    );
    assert_eq!(
        (code, out.trim()),
        (Some(0), "password changed for bob@a.test")
    );
    // The new password is the one that signs in, the old one no longer does: the check a
    // PLAIN sign-in runs, on the keys the command stored.
    let signs_in = |password: &str| {
        let db = dir.path().join("fedgate-core.sqlite");
        let storage = fedgate::core::storage::Storage::open(
            &fedgate::core::config::Database::Sqlite(db),
            fedgate::core::storage::StorageMetrics::unregistered(),
        )
        .unwrap();
        storage
            .call_blocking(|c| fedgate::core::storage::credentials(c, "bob", "a.test"))
            .unwrap()
            .expect("bob exists")
            .verify_password(password)
    };
    assert!(signs_in("pw3"), "the new password");
    assert!(!signs_in("pw2"), "the old password");
    let (code, _, _) = fedgate(
        &["core", "user", "remove", "bob@a.test", "--config", file],
        "",
    );
    assert_eq!(code, Some(0));
    let (code, _, err) = fedgate(
        &["core", "user", "remove", "bob@a.test", "--config", file],
        "",
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("does not exist"), "{err}");
    let (_, out, _) = fedgate(&["core", "user", "list", "--config", file], "");
    assert_eq!(out, "alice@a.test\n");
    // A bad configuration: exit 64, one line naming the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[core]\nscram_iterations = 10\n[[core.domain]]\nname = \"a.test\"\n",
    )
    .unwrap();
    for args in [
        vec!["core", "user", "list", "--config", bad.to_str().unwrap()],
        vec!["core", "--config", bad.to_str().unwrap()],
    ] {
        let (code, _, err) = fedgate(&args, "");
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let (code, _, err) = fedgate(
        &["core", "user", "list", "--config", bad.to_str().unwrap()],
        "",
    );
    assert!(err.contains("core.scram_iterations"), "{code:?} {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedgate_core_runs_as_its_own_process_and_stops_on_sigterm() {
    let dns = TestDns::start().await;
    let gw = instance(&dns, "a.test")
        .backend("alias.a.test", "component-secret-a.test")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = core_toml(
        dir.path(),
        "a.test",
        port,
        gw.gw().component_addr,
        &gw.component_secret,
    );
    let (code, _, err) = fedgate(
        &[
            "core",
            "user",
            "add",
            "alice@a.test",
            "--config",
            file.to_str().unwrap(),
        ],
        "pw\n",
    );
    assert_eq!(code, Some(0), "{err}");
    let (child, ready, _lines) = spawn_core(&file).await;
    assert!(ready.contains("a.test"), "{ready}");
    assert_eventually(|| gw.gw().router.component_attached("a.test")).await;
    assert_eventually(|| gw.gw().router.component_attached("alias.a.test")).await;
    let (alice, jid) = sign_in(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "alice@a.test/r",
        "pw",
    )
    .await;
    assert_eq!(jid, "alice@a.test/r");
    alice.quit().await;
    stop_child(child).await;
    // Detached from the gateway on the way out.
    assert_eventually(|| !gw.gw().router.component_attached("a.test")).await;
}

/// A standalone core's `/readyz` is 200 while every domain has a link up to some gateway, and
/// names every link, up or down; `fedgate_core_gateway_link_up{domain,gateway}` says the same.
/// Here one of two gateways never answers, then the other's link is cut and held down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_core_names_its_gateway_links_on_readyz_and_in_metrics() {
    let dns = TestDns::start().await;
    let gw = instance(&dns, "a.test")
        .backend("alias.a.test", "component-secret-a.test")
        .start()
        .await;
    let proxy = crate::proxy::TestProxy::start(gw.gw().component_addr).await;
    // Nothing listens there: every attempt is refused.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let file = core_toml_with(
        dir.path(),
        "a.test",
        free_port(),
        &[proxy.addr, dead],
        &gw.component_secret,
        "",
        &format!("[metrics]\nlisten = \"{metrics}\"\n"),
    );
    let (child, _, _lines) = spawn_core(&file).await;
    let up = [
        format!("a.test via {}: up", proxy.addr),
        format!("alias.a.test via {}: up", proxy.addr),
    ];
    let readyz = wait_for_http(metrics, "/readyz", |r| {
        up.iter().all(|u| r.lines().any(|l| l == u))
    })
    .await;
    assert!(
        readyz.starts_with("HTTP/1.0 200") || readyz.starts_with("HTTP/1.1 200"),
        "{readyz}"
    );
    assert!(readyz.contains("\r\n\r\nready\n"), "{readyz}");
    assert!(
        readyz.contains(&format!("a.test via {dead}: down (")),
        "{readyz}"
    );
    let scrape = http_get(metrics, "/metrics").await;
    let gauge = |domain: &str, gateway: SocketAddr| {
        format!("fedgate_core_gateway_link_up{{domain=\"{domain}\",gateway=\"{gateway}\"}}")
    };
    assert!(
        scrape.contains(&format!("{} 1", gauge("a.test", proxy.addr))),
        "{scrape}"
    );
    assert!(
        scrape.contains(&format!("{} 0", gauge("a.test", dead))),
        "{scrape}"
    );
    assert!(scrape.contains("fedgate_core_ready 1"), "{scrape}");

    // The working gateway's links are cut and new ones stall: no domain is served now.
    proxy.pause(true);
    proxy.cut();
    let down = [
        "- no gateway link is up for a.test",
        "- no gateway link is up for alias.a.test",
    ];
    let readyz = wait_for_http(metrics, "/readyz", |r| {
        down.iter().all(|d| r.lines().any(|l| l == *d))
    })
    .await;
    assert!(readyz.contains(" 503 "), "{readyz}");
    assert!(
        readyz.contains(&format!("a.test via {}: down (", proxy.addr)),
        "{readyz}"
    );
    let scrape = http_get(metrics, "/metrics").await;
    assert!(
        scrape.contains(&format!("{} 0", gauge("a.test", proxy.addr))),
        "{scrape}"
    );
    assert!(scrape.contains("fedgate_core_ready 0"), "{scrape}");
    stop_child(child).await;
}

/// The files of one of two standalone cores for a.test that share a database.
struct CoreFiles {
    _dir: tempfile::TempDir,
    c2s: u16,
    metrics: SocketAddr,
    file: PathBuf,
}

/// Two core configurations for a.test on the database `url`, attached to `gw`, each with
/// its own c2s and metrics ports; `users` (password `pw`) added through the first.
fn two_cores_on(url: &str, gw: &Instance, users: &[&str]) -> Vec<CoreFiles> {
    let cores: Vec<CoreFiles> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let c2s = free_port();
            let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let file = core_toml_with(
                dir.path(),
                "a.test",
                c2s,
                &[gw.gw().component_addr],
                &gw.component_secret,
                &format!("database = {url:?}"),
                &format!("[metrics]\nlisten = \"{metrics}\"\n"),
            );
            CoreFiles {
                _dir: dir,
                c2s,
                metrics,
                file,
            }
        })
        .collect();
    for user in users {
        let args = [
            "core",
            "user",
            "add",
            user,
            "--config",
            cores[0].file.to_str().unwrap(),
        ];
        let (code, _, err) = fedgate(&args, "pw\n");
        assert_eq!(code, Some(0), "{err}");
    }
    cores
}

/// Two cores on one PostgreSQL: the first is active, the second waits as a standby (no c2s
/// port, `/readyz` 503) and takes over when the first is killed with SIGKILL; a message stored
/// offline through the first is delivered by the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_core_on_postgresql_takes_over_when_the_active_one_is_killed() {
    let pg = crate::postgres::Postgres::start();
    let url = pg.create_database("core");
    let dns = TestDns::start().await;
    let gw = instance(&dns, "a.test")
        .backend("alias.a.test", "component-secret-a.test")
        .start()
        .await;
    let cores = two_cores_on(&url, &gw, &["alice@a.test", "bob@a.test"]);
    let (active, _, _active_log) = spawn_core(&cores[0].file).await;
    let (standby, _, standby_log) = spawn_core_until(&cores[1].file, "standby").await;
    let readyz = wait_for_http(cores[1].metrics, "/readyz", |r| r.contains("standby:")).await;
    assert!(readyz.contains(" 503 "), "{readyz}");
    // The standby serves no clients: its port is closed, so clients try the next address.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", cores[1].c2s))
        .await
        .is_err());

    let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut alice = raw_session(addr(cores[0].c2s), "alice@a.test", "pw", "r").await;
    alice
        .send(
            "<message to='bob@a.test' type='chat' id='m1'><body>before the crash</body></message>",
        )
        .await;
    // Through the active core's storage: ask for something after it, so the message is in.
    alice
        .send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    next_matching(&mut alice, |t| t.contains("id='p'")).await;

    let killed = std::time::Instant::now();
    let mut active = active;
    let mut child = active.0.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The standby takes the lock, attaches and opens its port.
    tokio::task::spawn_blocking(move || wait_for_line(&standby_log, "fedgate core ready"))
        .await
        .unwrap();
    wait_for_http(cores[1].metrics, "/readyz", |r| r.contains(" 200 ")).await;
    eprintln!("takeover after SIGKILL: {:?}", killed.elapsed());
    assert_eventually(|| gw.gw().router.component_attached("a.test")).await;

    let mut bob = raw_session(addr(cores[1].c2s), "bob@a.test", "pw", "r").await;
    bob.send("<presence/>").await;
    let m = next_matching(&mut bob, |t| t.starts_with("<message")).await;
    assert!(m.contains("<body>before the crash</body>"), "{m}");
    assert!(m.contains("from='alice@a.test/r'"), "{m}");
    stop_child(standby).await;
}

/// The ids of the messages (`m…`) that arrive on `s` until it is quiet for `quiet` or ends.
async fn message_ids_until_quiet(s: &mut RawStream, quiet: Duration) -> Vec<String> {
    use fedgate::xml::framer::Event;
    let mut ids = Vec::new();
    while let Ok(Some(Event::Stanza(st))) = tokio::time::timeout(quiet, s.event_or_end()).await {
        if st.name() == "message" {
            if let Some(id) = st.id().filter(|id| id.starts_with('m')) {
                ids.push(id.to_owned());
            }
        }
    }
    ids
}

/// The core failover of issue 17 under traffic: a peer (b.test) sends a steady stream of
/// messages to an account that is offline (stored) and to one that is online, and the active
/// core is killed with SIGKILL in the middle of it. Every message is then delivered (on the
/// old connection before the kill, or by the standby: live or from offline storage); none is
/// lost and none bounces. What the killed core was handling when it died was not
/// acknowledged to the gateway (the component library acknowledges a stanza only when the
/// core asks for the next one), and what arrived while no core was attached waited for the
/// next one (`[component] reattach_grace`, 5 s by default; the standby takes over in under
/// one), so the gateway writes all of it to the standby: a message may arrive twice, and the
/// test prints how many did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_killed_during_traffic_loses_no_message_to_the_standby_that_takes_over() {
    let pg = crate::postgres::Postgres::start();
    let url = pg.create_database("core");
    let dns = TestDns::start().await;
    let gw = instance(&dns, "a.test")
        .backend("alias.a.test", "component-secret-a.test")
        .start()
        .await;
    let b = instance(&dns, "b.test").start().await;
    let mut b_backend = b.backend().await;
    let cores = two_cores_on(&url, &gw, &["bob@a.test", "carol@a.test"]);
    let (mut active, _, _active_log) = spawn_core(&cores[0].file).await;
    let (standby, _, standby_log) = spawn_core_until(&cores[1].file, "standby").await;
    wait_for_http(cores[1].metrics, "/readyz", |r| r.contains("standby:")).await;

    let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut carol = raw_session(addr(cores[0].c2s), "carol@a.test", "pw", "r").await;
    carol.send("<presence/>").await;
    // The s2s link b.test → a.test is up and carol is available before the traffic starts.
    b_backend
        .send("<message from='x@b.test' to='carol@a.test' type='chat' id='warm'><body>hi</body></message>")
        .await;
    next_matching(&mut carol, |t| t.contains("id='warm'")).await;
    let carol_before =
        tokio::spawn(
            async move { message_ids_until_quiet(&mut carol, Duration::from_secs(5)).await },
        );

    // 300 messages, half to bob (offline: each one a write to PostgreSQL), half to carol:
    // 0–99 one every 5 ms, 100–199 in one burst that the core is still working through when
    // it is killed 20 ms later, 200–299 one every 5 ms during and after the takeover.
    const N: usize = 300;
    let message = |i: usize| {
        let to = if i % 2 == 0 {
            "bob@a.test"
        } else {
            "carol@a.test"
        };
        format!(
            "<message from='x@b.test' to='{to}' type='chat' id='m{i}'><body>{i}</body></message>"
        )
    };
    for i in 0..100 {
        b_backend.send(&message(i)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b_backend
        .send(&(100..200).map(message).collect::<String>())
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut child = active.0.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = std::time::Instant::now();
    for i in 200..N {
        b_backend.send(&message(i)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::spawn_blocking(move || wait_for_line(&standby_log, "fedgate core ready"))
        .await
        .unwrap();
    wait_for_http(cores[1].metrics, "/readyz", |r| r.contains(" 200 ")).await;
    eprintln!("takeover after SIGKILL: {:?}", killed.elapsed());

    let mut delivered: HashMap<String, usize> = HashMap::new();
    let before = carol_before.await.unwrap();
    for id in &before {
        *delivered.entry(id.clone()).or_default() += 1;
    }
    for user in ["bob@a.test", "carol@a.test"] {
        let mut s = raw_session(addr(cores[1].c2s), user, "pw", "r").await;
        s.send("<presence/>").await;
        for id in message_ids_until_quiet(&mut s, Duration::from_secs(3)).await {
            *delivered.entry(id).or_default() += 1;
        }
    }
    let mut bounced = std::collections::HashSet::new();
    while let Ok(st) = tokio::time::timeout(Duration::from_secs(1), b_backend.next()).await {
        if st.name() == "message" && st.attr("type").as_deref() == Some("error") {
            bounced.insert(st.id().unwrap_or_default().to_owned());
        }
    }
    let lost: Vec<String> = (0..N)
        .map(|i| format!("m{i}"))
        .filter(|id| !delivered.contains_key(id) && !bounced.contains(id))
        .collect();
    let twice = delivered.values().filter(|&&n| n > 1).count();
    // Stored by the killed core but not acknowledged, then bounced while no core was attached.
    let both = bounced
        .iter()
        .filter(|id| delivered.contains_key(*id))
        .count();
    eprintln!(
        "{N} sent: {} delivered ({} on carol's connection before the kill), {} bounced, {twice} delivered twice, {both} delivered and bounced, {} lost",
        delivered.len(),
        before.len(),
        bounced.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(
        bounced.is_empty(),
        "bounced although the standby took over within the reattach grace: {bounced:?}"
    );
    stop_child(standby).await;
}

/// GETs `path` until the answer satisfies `pred`; panics after [`WAIT`].
async fn wait_for_http(addr: SocketAddr, path: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let last = try_http_get(addr, path).await.unwrap_or_default();
        if pred(&last) {
            return last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never matched; last answer:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw client signed in as `user@domain` with PLAIN (the node must allow it), its stream
/// restarted and not yet bound.
pub(crate) async fn raw_signed_in(addr: SocketAddr, user: &str, password: &str) -> RawStream {
    let domain = user.split('@').nth(1).unwrap();
    let (mut s, _) = raw_tls(addr, domain).await;
    s.send(&plain_auth(user, password, "")).await;
    assert_eq!(
        s.next_text().await,
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    );
    raw_restart(&mut s, domain).await;
    s
}

/// A raw client signed in with PLAIN (the node must allow it) and bound to `resource`.
pub(crate) async fn raw_session(
    addr: SocketAddr,
    user: &str,
    password: &str,
    resource: &str,
) -> RawStream {
    let mut s = raw_signed_in(addr, user, password).await;
    raw_bind_resource(&mut s, resource).await;
    s
}

/// Reads stanzas until one satisfies `pred`; panics after [`WAIT`].
pub(crate) async fn next_matching(s: &mut RawStream, pred: impl Fn(&str) -> bool) -> String {
    loop {
        let t = s.next_text().await;
        if pred(&t) {
            return t;
        }
    }
}

/// Asserts that nothing arrives for `ms` milliseconds.
pub(crate) async fn silent(s: &mut RawStream, ms: u64) {
    if let Ok(e) = tokio::time::timeout(Duration::from_millis(ms), s.event()).await {
        panic!("unexpected {e:?}");
    }
}

#[tokio::test]
async fn binding_rules_conflicts_and_unsupported_elements() {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| c.allow_plain = true).await;
    n.add_user("alice@a.test", "pa");
    // Before binding, only <bind/> is accepted.
    let mut s = raw_signed_in(n.c2s(), "alice@a.test", "pa").await;
    s.send("<message to='alice@a.test'><body>x</body></message>")
        .await;
    assert_eq!(s.expect_stream_error().await, "not-authorized");
    // A second session on the same resource replaces the first with <conflict/>.
    let mut first = raw_session(n.c2s(), "alice@a.test", "pa", "r").await;
    let mut second = raw_session(n.c2s(), "alice@a.test", "pa", "r").await;
    assert_eq!(first.expect_stream_error().await, "conflict");
    second
        .send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(
        second.next_text().await,
        "<iq type='result' from='alice@a.test' to='alice@a.test/r' id='p'/>"
    );
    // A server-made resource when the client asks for none.
    let mut s = raw_signed_in(n.c2s(), "alice@a.test", "pa").await;
    s.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    assert!(s.next_text().await.contains("<jid>alice@a.test/fedgate-"));
    // Elements that are no stanza and no nonza we know end the stream.
    second.send("<unknown xmlns='urn:example:nonza'/>").await;
    assert_eq!(
        second.expect_stream_error().await,
        "unsupported-stanza-type"
    );
}

#[tokio::test]
async fn message_types_and_priorities_follow_rfc_6121() {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| c.allow_plain = true).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let mut alice = raw_session(n.c2s(), "alice@a.test", "pa", "r").await;
    // groupchat to an account is an error; headline to nobody available is dropped, not stored.
    alice
        .send("<message to='bob@a.test' type='groupchat' id='g'><body>g</body></message>")
        .await;
    let e = alice.next_text().await;
    assert!(
        e.contains("type='error'") && e.contains("<service-unavailable"),
        "{e}"
    );
    alice
        .send("<message to='bob@a.test' type='headline'><body>headline</body></message>")
        .await;
    // bob with a negative priority: bare-JID messages are not his, they wait offline.
    let mut bob = raw_session(n.c2s(), "bob@a.test", "pb", "neg").await;
    bob.send("<presence><priority>-1</priority></presence>")
        .await;
    alice
        .send("<message to='bob@a.test' type='chat'><body>stored</body></message>")
        .await;
    // ...while one to his full JID reaches him.
    alice
        .send("<message to='bob@a.test/neg' type='chat'><body>direct</body></message>")
        .await;
    let m = next_matching(&mut bob, |t| t.starts_with("<message")).await;
    assert!(m.contains("<body>direct</body>"), "{m}");
    silent(&mut bob, 300).await;
    // A resource with priority 0 gets the stored message, not the headline.
    let mut bob2 = raw_session(n.c2s(), "bob@a.test", "pb", "pos").await;
    bob2.send("<presence/>").await;
    let m = next_matching(&mut bob2, |t| t.starts_with("<message")).await;
    assert!(
        m.contains("<body>stored</body>") && m.contains("urn:xmpp:delay"),
        "{m}"
    );
    assert!(!m.contains("headline"));
    // A subscription request to an account that does not exist is answered `unsubscribed`.
    alice
        .send("<presence to='nobody@a.test' type='subscribe'/>")
        .await;
    let p = next_matching(&mut alice, |t| t.starts_with("<presence")).await;
    assert_eq!(
        p,
        "<presence from='nobody@a.test' to='alice@a.test' type='unsubscribed'/>"
    );
}

#[tokio::test]
async fn presence_is_revealed_only_to_approved_contacts_and_directed_presence_is_undone() {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| c.allow_plain = true).await;
    let b = instance(&dns, "b.test").start().await;
    let mut eve = b.backend().await; // a raw backend for b.test: eve@b.test is any address there
    n.add_user("alice@a.test", "pa");
    let mut alice = raw_session(n.c2s(), "alice@a.test", "pa", "r").await;
    alice
        .send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    alice.next().await;
    alice
        .send("<presence><status>here</status></presence>")
        .await;
    // A probe from someone not approved reveals nothing: RFC 6121 §4.3.2 step 1 answers
    // `unsubscribed` from the bare JID, and the same for an account that does not exist.
    eve.send("<presence from='eve@b.test/x' to='alice@a.test' type='probe' id='p1'/>")
        .await;
    assert_eq!(
        eve.next_text().await,
        "<presence from='alice@a.test' to='eve@b.test' type='unsubscribed' id='p1'/>"
    );
    eve.send("<presence from='eve@b.test' to='nobody@a.test' type='probe'/>")
        .await;
    assert_eq!(
        eve.next_text().await,
        "<presence from='nobody@a.test' to='eve@b.test' type='unsubscribed'/>"
    );
    silent(&mut eve, 300).await;
    // eve asks; alice sees the request (stamped with bare JIDs) and approves.
    eve.send("<presence from='eve@b.test/x' to='alice@a.test' type='subscribe'/>")
        .await;
    assert_eq!(
        next_matching(&mut alice, |t| t.starts_with("<presence")).await,
        "<presence from='eve@b.test' to='alice@a.test' type='subscribe'/>"
    );
    alice
        .send("<presence to='eve@b.test' type='subscribed'/>")
        .await;
    assert_eq!(
        next_matching(&mut eve, |t| t.contains("subscribed")).await,
        "<presence from='alice@a.test' to='eve@b.test' type='subscribed'/>"
    );
    // The approval sends alice's presence; the roster push says `from`.
    assert!(
        next_matching(&mut eve, |t| t.contains("<status>here</status>"))
            .await
            .contains("from='alice@a.test/r'")
    );
    let push = next_matching(&mut alice, |t| t.contains("jabber:iq:roster")).await;
    assert!(push.contains("subscription='from'"), "{push}");
    // Now a probe is answered, and a repeated request is approved by the server itself.
    eve.send("<presence from='eve@b.test' to='alice@a.test' type='probe'/>")
        .await;
    assert!(next_matching(&mut eve, |t| t.starts_with("<presence"))
        .await
        .contains("<status>here</status>"));
    eve.send("<presence from='eve@b.test' to='alice@a.test' type='subscribe'/>")
        .await;
    assert_eq!(
        next_matching(&mut eve, |t| t.starts_with("<presence")).await,
        "<presence from='alice@a.test' to='eve@b.test' type='subscribed'/>"
    );
    // Directed presence to someone without a subscription, then a disconnect: they get
    // unavailable; so does the subscriber.
    alice
        .send("<presence to='mallory@b.test'><show>chat</show></presence>")
        .await;
    assert!(next_matching(&mut eve, |t| t.contains("mallory"))
        .await
        .contains("<show>chat</show>"));
    drop(alice);
    let mut got = vec![
        next_matching(&mut eve, |t| t.contains("unavailable")).await,
        next_matching(&mut eve, |t| t.contains("unavailable")).await,
    ];
    got.sort();
    assert_eq!(
        got,
        [
            "<presence from='alice@a.test/r' type='unavailable' to='eve@b.test'/>",
            "<presence from='alice@a.test/r' type='unavailable' to='mallory@b.test'/>",
        ]
    );
}

#[tokio::test]
async fn a_roster_set_that_breaks_rfc_6121_is_refused_and_changes_nothing() {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| c.allow_plain = true).await;
    n.add_user("alice@a.test", "pa");
    let mut alice = raw_session(n.c2s(), "alice@a.test", "pa", "r").await;
    let set = |items: &str| {
        format!("<iq type='set' id='s'><query xmlns='jabber:iq:roster'>{items}</query></iq>")
    };
    // §2.3.3: one item per set, no group twice, no empty group; the account itself is no
    // contact (§2.3.2: not-allowed).
    for (items, condition) in [
        (
            "<item jid='bob@a.test'/><item jid='carol@a.test'/>",
            "bad-request",
        ),
        (
            "<item jid='bob@a.test'><group>A</group><group>B</group><group>A</group></item>",
            "bad-request",
        ),
        (
            "<item jid='bob@a.test'><group>A</group><group></group></item>",
            "not-acceptable",
        ),
        ("<item jid='alice@a.test'/>", "not-allowed"),
    ] {
        alice.send(&set(items)).await;
        let e = alice.next_text().await;
        assert!(
            e.starts_with("<iq ")
                && e.contains("type='error'")
                && e.contains(&format!("<{condition} ")),
            "{items}: {e}"
        );
    }
    alice
        .send("<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert_eq!(
        alice.next_text().await,
        "<iq type='result' from='alice@a.test' to='alice@a.test/r' id='g'><query xmlns='jabber:iq:roster'/></iq>"
    );
}

#[tokio::test]
async fn sasl_aborts_do_not_count_and_an_authzid_must_be_the_account() {
    let dns = TestDns::start().await;
    let n = node_with(&dns, "a.test", &[], |c| c.allow_plain = true).await;
    n.add_user("alice@a.test", "pa");
    n.add_user("bob@a.test", "pb");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let sasl = |name: &str, attrs: &str, payload: &str| {
        format!("<{name} xmlns='urn:ietf:params:xml:ns:xmpp-sasl'{attrs}>{payload}</{name}>")
    };
    let (mut s, _) = raw_tls(n.c2s(), "a.test").await;
    // RFC 6120 §6.4.4: the client may abort an exchange; more aborts than the failures
    // allowed (MAX_AUTH_FAILURES) do not end the stream.
    for _ in 0..4 {
        s.send(&sasl(
            "auth",
            " mechanism='SCRAM-SHA-256'",
            &b64("n,,n=alice,r=abcdefgh"),
        ))
        .await;
        let challenge = s.next_text().await;
        assert!(challenge.starts_with("<challenge "), "{challenge}");
        s.send(&sasl("abort", "", "")).await;
        assert_eq!(
            s.next_text().await,
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><aborted/></failure>"
        );
    }
    // Neither do requests that try no password: an old client (poezio's slixmpp) asks for
    // -PLUS with tls-unique, which TLS 1.3 does not have, before it falls back to SCRAM.
    for mechanism in [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256-PLUS",
    ] {
        s.send(&sasl(
            "auth",
            &format!(" mechanism='{mechanism}'"),
            &b64("p=tls-unique,,n=alice,r=abcdefgh"),
        ))
        .await;
        assert_eq!(
            s.next_text().await,
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><malformed-request/></failure>"
        );
    }
    // §6.3.8: an authzid other than the account itself is invalid-authzid (even with the
    // right password); the account's own bare JID is accepted.
    s.send(&sasl(
        "auth",
        " mechanism='PLAIN'",
        &b64("bob@a.test\0alice\0pa"),
    ))
    .await;
    assert_eq!(
        s.next_text().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><invalid-authzid/></failure>"
    );
    s.send(&sasl(
        "auth",
        " mechanism='PLAIN'",
        &b64("alice@a.test\0alice\0pa"),
    ))
    .await;
    assert_eq!(
        s.next_text().await,
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    );
    assert_eq!(raw_bind(&mut s, "a.test").await, "alice@a.test/raw");
}
