//! Real Prosody, ejabberd and jabberd2 servers from Debian's packages, started as ordinary
//! processes (no system service), each with its own generated config, data folder, certificate
//! and loopback address, and stopped when the test ends.
//!
//! How they resolve names: each peer runs in a private mount namespace (`unshare --mount`)
//! whose `/etc/resolv.conf` is a bind mount of a file that names only the test's DNS server, as
//! `ip netns exec` does for a network namespace. A libc-style resolver cannot be given a port, so
//! the test DNS server listens on port 53 of a loopback address of its own
//! ([`crate::dns_port_53`]). On top of that:
//! - ejabberd (Erlang's `inet_res`) reads that `resolv.conf`; its `inetrc` is left empty;
//! - jabberd2's s2s resolves with libudns, which reads that `resolv.conf` too (once
//!   `NSCACHEIP` and `NAMESERVERS`, which it would read first, are unset); its `<lookup>`
//!   config only names what to ask for: the `_xmpp-server._tcp` SRV record, then A records;
//! - Prosody resolves with libunbound (lua-unbound), told in its config to use that same
//!   `resolv.conf`, to ignore `/etc/hosts`, and to treat `test.` as a normal zone (libunbound
//!   answers NXDOMAIN for the RFC 6761 `test.` names by default).
//!
//! Each finds fedgate, and fedgate finds each, through `_xmpp-server._tcp` SRV records served by
//! that DNS server; the tests count the queries it receives to show it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::certs::{ca, CertSpec};
use crate::client::{Client, Login};
use crate::harness::{next_loopback, TestDns};

/// The port a peer's s2s listener uses. Not 5269, so that only the SRV record leads there.
pub const PEER_S2S_PORT: u16 = 5369;
/// The port of a peer's direct TLS s2s listener (XEP-0368), when it has one.
pub const PEER_DIRECT_TLS_PORT: u16 = 5370;
/// The port of a peer's c2s listener (the client connects by address, without DNS).
pub const PEER_C2S_PORT: u16 = 5222;
/// The account the tests log in with on every peer.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "interop-secret";
/// The port of jabberd2's router, where its sm, c2s and s2s processes connect (on the peer's
/// address).
const JABBERD2_ROUTER_PORT: u16 = 5347;
/// How long a peer may take to start or stop.
const START_WAIT: Duration = Duration::from_secs(30);

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Prosody,
    Ejabberd,
    /// jabberd2: four processes (router, sm, c2s, s2s), see [`Peer::configure_jabberd2`].
    Jabberd2,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prosody => "prosody",
            Kind::Ejabberd => "ejabberd",
            Kind::Jabberd2 => "jabberd2",
        }
    }

    /// The installed Debian package's version, e.g. `0.12.3-1+deb12u1`.
    pub fn version(self) -> String {
        let out = std::process::Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", self.name()])
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            _ => "not installed".to_string(),
        }
    }

    /// Fails the test, saying why and how to fix it, when the peer's programs are missing.
    fn require_installed(self) {
        let programs: &[&str] = match self {
            Kind::Prosody => &["prosody", "prosodyctl"],
            Kind::Ejabberd => &["ejabberdctl", "erl"],
            Kind::Jabberd2 => &[
                "jabberd2-router",
                "jabberd2-sm",
                "jabberd2-c2s",
                "jabberd2-s2s",
                "zcat",
            ],
        };
        for program in programs.iter().chain(&["unshare", "mount", "setpriv"]) {
            let found = std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
                .unwrap_or(false)
                || Path::new("/usr/sbin").join(program).is_file();
            assert!(
                found,
                "{program} is not installed, so the {} interop tests cannot run: scripts/test.sh \
                 installs it (apt-get install prosody ejabberd jabberd2 lua-unbound)",
                self.name()
            );
        }
        if self == Kind::Prosody {
            assert!(
                Path::new("/usr/lib/x86_64-linux-gnu/lua/5.4/lunbound.so").exists()
                    || std::process::Command::new("dpkg")
                        .args(["-s", "lua-unbound"])
                        .stdout(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success()),
                "lua-unbound is not installed: without it Prosody cannot be pointed at the \
                 test's DNS server; scripts/test.sh installs it"
            );
        }
    }
}

/// The certificate a peer presents, and whether it trusts the test CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerTls {
    /// A self-signed certificate, and only the system's CAs trusted: peers authenticate each
    /// other by dialback (over TLS).
    SelfSigned,
    /// A certificate from the test CA, which it trusts too: SASL EXTERNAL both ways.
    TestCa,
}

/// One running (or stopped) peer server.
pub struct Peer {
    pub kind: Kind,
    pub domain: String,
    pub ip: IpAddr,
    pub dir: tempfile::TempDir,
    /// The process group of the running server (`None` while stopped).
    child: Option<Child>,
    /// The command line that starts it, kept for [`Peer::restart`].
    argv: Vec<String>,
    /// Whether it listens for direct TLS (XEP-0368) s2s too.
    direct_tls: bool,
    /// ejabberd's Erlang node name (unique per peer, so that parallel tests do not clash).
    node: String,
}

/// The domain of a peer's chat service (Prosody's `Component "muc"`), in its DNS and its
/// certificate.
pub fn muc_domain(domain: &str) -> String {
    format!("conference.{domain}")
}

impl Peer {
    /// Writes the config, publishes the peer in `dns` (`_xmpp-server._tcp.{domain}` →
    /// `xmpp.{domain}:5369` → a fresh loopback address; with `direct_tls` also a direct TLS
    /// listener on 5370 published first, as `_xmpps-server._tcp.{domain}`), creates the test
    /// account and starts the server; returns once its c2s and s2s ports accept connections.
    pub async fn start(
        kind: Kind,
        domain: &str,
        dns: &TestDns,
        tls: PeerTls,
        direct_tls: bool,
    ) -> Peer {
        Peer::start_with(kind, domain, dns, tls, direct_tls, "").await
    }

    /// [`Peer::start`] with `prosody_options` (Lua lines) added to Prosody's global section.
    pub async fn start_with(
        kind: Kind,
        domain: &str,
        dns: &TestDns,
        tls: PeerTls,
        direct_tls: bool,
        prosody_options: &str,
    ) -> Peer {
        kind.require_installed();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new()
            .prefix(&format!("fedgate-{}-", kind.name()))
            .tempdir()
            .unwrap();
        let ip = next_loopback();
        let host = format!("xmpp.{domain}");
        dns.add(&host, ip);
        dns.add_srv(
            &format!("_xmpp-server._tcp.{domain}"),
            if direct_tls { 10 } else { 0 },
            1,
            PEER_S2S_PORT,
            &host,
        );
        if direct_tls {
            dns.add_srv(
                &format!("_xmpps-server._tcp.{domain}"),
                0,
                1,
                PEER_DIRECT_TLS_PORT,
                &host,
            );
        }
        // Prosody's chat service (see `configure_prosody`), on the same server.
        dns.add_srv(
            &format!("_xmpp-server._tcp.{}", muc_domain(domain)),
            0,
            1,
            PEER_S2S_PORT,
            &host,
        );

        let d = dir.path();
        std::fs::write(
            d.join("resolv.conf"),
            format!(
                "# The test's DNS server only (see tests/interop/peer.rs).\nnameserver {}\noptions timeout:2 attempts:2\n",
                dns.addr.ip()
            ),
        )
        .unwrap();
        let spec = CertSpec {
            dns: vec![domain.to_string(), muc_domain(domain)],
            self_signed: tls == PeerTls::SelfSigned,
            ten_years: true,
            ..CertSpec::default()
        };
        let (cert, key) = ca().issue(&spec, d, "peer");
        let trust = (tls == PeerTls::TestCa).then(|| ca().ca_file.clone());

        let node = format!("fedgate_interop_{}_{n}@localhost", std::process::id());
        let mut peer = Peer {
            kind,
            domain: domain.to_string(),
            ip,
            argv: Vec::new(),
            direct_tls,
            node,
            child: None,
            dir,
        };
        match kind {
            Kind::Prosody => peer.configure_prosody(&cert, &key, trust.as_deref(), prosody_options),
            Kind::Ejabberd => peer.configure_ejabberd(&cert, &key, trust.as_deref()),
            Kind::Jabberd2 => peer.configure_jabberd2(&cert, &key),
        }
        peer.spawn().await;
        if kind == Kind::Ejabberd {
            peer.ejabberdctl(&["register", USER, domain, PASSWORD]);
        }
        peer
    }

    /// The address of the c2s listener.
    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, PEER_C2S_PORT)
    }

    pub fn s2s_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, PEER_S2S_PORT)
    }

    /// The peer's main log file (jabberd2's s2s process: the federation side).
    pub fn log_file(&self) -> PathBuf {
        match self.kind {
            Kind::Prosody => self.dir.path().join("prosody.log"),
            Kind::Ejabberd => self.dir.path().join("logs/ejabberd.log"),
            Kind::Jabberd2 => self.dir.path().join("s2s.log"),
        }
    }

    /// The last `lines` lines of the peer's log and of its console output, for failure
    /// messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_files(), lines)
    }

    /// The main log, jabberd2's other processes' logs, and the console output.
    fn log_files(&self) -> Vec<PathBuf> {
        let d = self.dir.path();
        let mut files = vec![self.log_file()];
        if self.kind == Kind::Jabberd2 {
            files.extend(["router.log", "sm.log", "c2s.log"].map(|f| d.join(f)));
        }
        files.push(d.join("console.log"));
        files
    }

    /// A slixmpp client logged in as the test account (STARTTLS on the c2s port, by address),
    /// behaving like a user ([`Login::like_a_user`]).
    pub async fn login(&self) -> Client {
        self.login_at(
            &format!("{USER}@{}/interop", self.domain),
            PASSWORD,
            self.c2s_addr(),
        )
        .await
    }

    /// Like [`Peer::login`] as `jid` at `c2s`: this peer's account, or an account of fedgate's
    /// own core. Its failures show this peer's log.
    pub async fn login_at(&self, jid: &str, password: &str, c2s: SocketAddr) -> Client {
        let files = self.log_files();
        Login::new(jid, password, c2s)
            .like_a_user()
            .stderr_in(self.dir.path())
            .context(move || tail(&files, 30))
            .online()
            .await
    }

    /// Like [`Peer::login_at`] with slixmpp's XEP-0045 plugin, for the multi-user chat
    /// commands.
    pub async fn login_muc(&self, jid: &str, password: &str, c2s: SocketAddr) -> Client {
        let files = self.log_files();
        Login::new(jid, password, c2s)
            .muc()
            .like_a_user()
            .stderr_in(self.dir.path())
            .context(move || tail(&files, 30))
            .online()
            .await
    }

    /// Like [`Peer::login_at`] with slixmpp's PEP plugins and without the user's automatic
    /// steps (the test sends presence itself, after announcing what its caps ask for).
    pub async fn login_pep(&self, jid: &str, password: &str, c2s: SocketAddr) -> Client {
        let files = self.log_files();
        Login::new(jid, password, c2s)
            .pep()
            .stderr_in(self.dir.path())
            .context(move || tail(&files, 30))
            .online()
            .await
    }

    fn configure_prosody(&mut self, cert: &Path, key: &Path, trust: Option<&Path>, options: &str) {
        let d = self.dir.path();
        let cafile = match trust {
            Some(ca) => format!("cafile = {:?};", ca.display().to_string()),
            None => String::new(),
        };
        let config = format!(
            r#"-- Generated by fedgate's interop tests (tests/interop/peer.rs).
-- The tests run as root and Prosody would otherwise switch to the prosody user.
run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
certificates = "{d}"
interfaces = {{ "{ip}" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {s2s} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ {direct} }}
log = {{ {{ levels = {{ min = "{level}" }}, to = "file", filename = "{d}/prosody.log" }} }}
modules_enabled = {{
    "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "s2s_bidi"; "smacks"; "pep";
}}
-- Names resolve through the test's DNS server only: the private resolv.conf, no /etc/hosts,
-- and test. as an ordinary zone (libunbound answers NXDOMAIN for it by default, RFC 6761).
unbound = {{
    resolvconf = "{d}/resolv.conf";
    hoststxt = false;
    options = {{ ["local-zone:"] = "test. transparent" }};
}}
ssl = {{ certificate = "{cert}"; key = "{key}"; {cafile} }}
authentication = "internal_hashed"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = false
-- Bursts of 10,000 stanzas: no rate limits (mod_limits is not loaded).
{options}
VirtualHost "{domain}"
-- XEP-0045 rooms, for the cross-server group chat test (tests/interop/with_core.rs).
Component "{muc}" "muc"
"#,
            muc = muc_domain(&self.domain),
            d = d.display(),
            ip = self.ip,
            c2s = PEER_C2S_PORT,
            s2s = PEER_S2S_PORT,
            cert = cert.display(),
            key = key.display(),
            domain = self.domain,
            level = log_level(),
            direct = if self.direct_tls {
                PEER_DIRECT_TLS_PORT.to_string()
            } else {
                String::new()
            },
        );
        let cfg = d.join("prosody.cfg.lua");
        std::fs::write(&cfg, config).unwrap();
        let out = std::process::Command::new("prosodyctl")
            .arg("--config")
            .arg(&cfg)
            .args(["register", USER, &self.domain, PASSWORD])
            .output()
            .expect("run prosodyctl");
        assert!(
            out.status.success(),
            "prosodyctl register failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.argv = vec![
            "prosody".into(),
            "--config".into(),
            cfg.display().to_string(),
            "-F".into(),
        ];
    }

    fn configure_ejabberd(&mut self, cert: &Path, key: &Path, trust: Option<&Path>) {
        let d = self.dir.path();
        let ca_file = match trust {
            Some(ca) => format!("ca_file: {:?}\n", ca.display().to_string()),
            None => String::new(),
        };
        let config = format!(
            r#"# Generated by fedgate's interop tests (tests/interop/peer.rs).
hosts: ["{domain}"]
loglevel: {level}
log_rotate_count: 0
certfiles: ["{cert}", "{key}"]
{ca_file}# No ACME (the example config's default would try to reach the internet).
acme:
  auto: false
listen:
  -
    port: {c2s}
    ip: "{ip}"
    module: ejabberd_c2s
    starttls_required: true
    max_stanza_size: 262144
  -
    port: {s2s}
    ip: "{ip}"
    module: ejabberd_s2s_in
    max_stanza_size: 524288
{direct}s2s_use_starttls: required
# Reconnect quickly after a peer went away (default up to 300 s), so a restart is seen soon.
s2s_max_retry_delay: 2
auth_method: internal
# No traffic shapers anywhere (the example config limits c2s to 1,000 B/s).
acl:
  local:
    user_regexp: ""
access_rules:
  c2s:
    allow: all
modules:
  mod_disco: {{}}
  mod_offline: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_s2s_dialback: {{}}
  mod_stream_mgmt: {{}}
"#,
            domain = self.domain,
            cert = cert.display(),
            key = key.display(),
            c2s = PEER_C2S_PORT,
            s2s = PEER_S2S_PORT,
            ip = self.ip,
            level = log_level(),
            direct = if self.direct_tls {
                format!(
                    "  -\n    port: {PEER_DIRECT_TLS_PORT}\n    ip: \"{}\"\n    module: ejabberd_s2s_in\n    tls: true\n    max_stanza_size: 524288\n",
                    self.ip
                )
            } else {
                String::new()
            },
        );
        std::fs::write(d.join("ejabberd.yml"), config).unwrap();
        // ejabberdctl points ERL_INETRC here; empty = Erlang's defaults, which read the
        // (private) /etc/resolv.conf.
        std::fs::write(d.join("inetrc"), "").unwrap();
        std::fs::create_dir_all(d.join("logs")).unwrap();
        std::fs::create_dir_all(d.join("spool")).unwrap();
        // ejabberdctl runs the node as the ejabberd user, who must read the config and
        // certificates and write the spool and logs.
        let status = std::process::Command::new("chown")
            .args(["-R", "ejabberd:ejabberd"])
            .arg(d)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {} to ejabberd failed", d.display());
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
        let mut argv = self.ejabberdctl_argv();
        argv.push("foreground".into());
        self.argv = argv;
    }

    /// jabberd2 is four processes that find each other through its router: the session manager
    /// (sm: the domain, its users' sessions, rosters and offline storage), c2s (clients) and s2s
    /// (federation: STARTTLS and dialback). Each gets its XML config here, with the peer's
    /// address, domain, certificate and folder: its pid file, log file and SQLite database
    /// (sm's storage and c2s's accounts, created from the package's schema with the test
    /// account in it) are all in the peer's folder. The four start together as one process
    /// group ([`Peer::spawn`]); the router first, since the others connect to it.
    fn configure_jabberd2(&mut self, cert: &Path, key: &Path) {
        let d = self.dir.path();
        let dir = d.display().to_string();
        let ip = self.ip;
        let domain = &self.domain;
        // Its storage, authreg and sm modules' folder (multiarch: /usr/lib/x86_64-linux-gnu/…).
        let modules = jabberd2_package_file(&["/storage_sqlite.so"]);
        let modules = modules.trim_end_matches("/storage_sqlite.so");
        let router_port = JABBERD2_ROUTER_PORT;
        // c2s and s2s read the certificate and its key from one PEM file.
        let pem = d.join("peer.pem");
        let pem_text = format!(
            "{}{}",
            std::fs::read_to_string(cert).unwrap(),
            std::fs::read_to_string(key).unwrap()
        );
        std::fs::write(&pem, pem_text).unwrap();
        let pem = pem.display().to_string();

        // The database, and the account (authreg's plaintext passwords: SASL PLAIN over TLS).
        let db = d.join("jabberd2.db");
        let sqlite = rusqlite::Connection::open(&db).unwrap();
        sqlite.execute_batch(&jabberd2_schema()).unwrap();
        sqlite
            .execute(
                "INSERT INTO authreg (username, realm, password) VALUES (?1, ?2, ?3)",
                (USER, domain, PASSWORD),
            )
            .unwrap();
        drop(sqlite);
        let db = db.display().to_string();

        // How sm, c2s and s2s reach the router (`<retry>`: for the moment before it listens).
        let router = format!(
            "<router><ip>{ip}</ip><port>{router_port}</port><user>jabberd</user><pass>interop-router</pass>\
             <retry><init>10</init><lost>3</lost><sleep>1</sleep></retry></router>"
        );
        let files = [
            (
                "router.xml",
                format!(
                    r#"<!-- Generated by fedgate's interop tests (tests/interop/peer.rs). -->
<router>
  <id>router</id>
  <pidfile>{dir}/router.pid</pidfile>
  <log type='file'><file>{dir}/router.log</file></log>
  <!-- No <secret>: no XEP-0114 components. -->
  <local><ip>{ip}</ip><port>{router_port}</port><users>{dir}/router-users.xml</users></local>
  <check><interval>60</interval><keepalive>0</keepalive></check>
  <io><limits><bytes>0</bytes><connects>0</connects></limits></io>
  <aci><acl type='all'><user>jabberd</user></acl><filter>{dir}/router-filter.xml</filter></aci>
</router>
"#
                ),
            ),
            (
                "router-users.xml",
                "<users><user><name>jabberd</name><secret>interop-router</secret></user></users>\n"
                    .to_string(),
            ),
            ("router-filter.xml", "<filter/>\n".to_string()),
            (
                "sm.xml",
                format!(
                    r#"<!-- Generated by fedgate's interop tests (tests/interop/peer.rs). -->
<sm>
  <id>{domain}</id>
  <pidfile>{dir}/sm.pid</pidfile>
  {router}
  <log type='file'><file>{dir}/sm.log</file></log>
  <local><id>{domain}</id></local>
  <storage>
    <path>{modules}</path>
    <driver>sqlite</driver>
    <sqlite><dbname>{db}</dbname><busy-timeout>5000</busy-timeout></sqlite>
  </storage>
  <!-- The Debian config's chains without the modules that need more setup (vacation, amp,
       announce, help, echo, template-roster, roster-publish), and without disco in pkt-user:
       there it answers disco#info sent to a user's full JID itself (an account identity), so
       the query would never reach the client, as it does on Prosody and ejabberd. -->
  <modules>
    <path>{modules}</path>
    <chain id='sess-start'><module>status</module></chain>
    <chain id='sess-end'><module>status</module><module>iq-last</module></chain>
    <chain id='in-sess'>
      <module>validate</module><module>status</module><module>privacy</module>
      <module>roster</module><module>iq-vcard</module><module>iq-ping</module>
      <module>iq-private</module><module>disco</module><module>offline</module>
      <module>presence</module><module>deliver</module>
    </chain>
    <chain id='out-sess'/>
    <chain id='in-router'>
      <module>session</module><module>validate</module><module>presence</module>
      <module>privacy</module>
    </chain>
    <chain id='out-router'><module>privacy</module></chain>
    <chain id='pkt-sm'>
      <module>iq-last</module><module>iq-ping</module><module>iq-time</module>
      <module>iq-version</module><module>disco</module><module>status</module>
      <module>presence</module>
    </chain>
    <chain id='pkt-user'>
      <module>roster</module><module>presence</module><module>iq-vcard</module>
      <module>deliver</module><module>offline</module>
      <module>iq-last</module>
    </chain>
    <chain id='pkt-router'><module>session</module><module>disco</module></chain>
    <chain id='user-load'><module>active</module><module>roster</module><module>privacy</module></chain>
    <chain id='user-unload'/>
    <chain id='user-create'><module>active</module></chain>
    <chain id='user-delete'>
      <module>active</module><module>offline</module><module>privacy</module>
      <module>roster</module><module>status</module><module>iq-last</module>
      <module>iq-private</module><module>iq-vcard</module>
    </chain>
    <chain id='disco-extend'><module>iq-version</module></chain>
  </modules>
  <discovery><identity><category>server</category><type>im</type><name>jabberd2</name></identity></discovery>
  <!-- The account exists in c2s's authreg table; sm creates its own record at the first login. -->
  <user><auto-create/></user>
</sm>
"#
                ),
            ),
            (
                "c2s.xml",
                format!(
                    r#"<!-- Generated by fedgate's interop tests (tests/interop/peer.rs). -->
<c2s>
  <id>c2s</id>
  <pidfile>{dir}/c2s.pid</pidfile>
  {router}
  <log type='file'><file>{dir}/c2s.log</file></log>
  <local>
    <id realm='{domain}' pemfile='{pem}' require-starttls='yes'>{domain}</id>
    <ip>{ip}</ip>
    <port>{c2s}</port>
  </local>
  <!-- No rate limits: the default 1,000 stanzas a second would throttle the bursts. -->
  <io>
    <limits><bytes>0</bytes><stanzas>0</stanzas><connects>0</connects></limits>
    <check><interval>0</interval><idle>0</idle><keepalive>0</keepalive></check>
  </io>
  <authreg>
    <path>{modules}</path>
    <module>sqlite</module>
    <mechanisms><sasl><plain/></sasl></mechanisms>
    <ssl-mechanisms><sasl><plain/></sasl></ssl-mechanisms>
    <sqlite>
      <dbname>{db}</dbname><busy-timeout>5000</busy-timeout>
      <password_type><plaintext/></password_type>
    </sqlite>
  </authreg>
</c2s>
"#,
                    c2s = PEER_C2S_PORT,
                ),
            ),
            (
                "s2s.xml",
                format!(
                    r#"<!-- Generated by fedgate's interop tests (tests/interop/peer.rs). -->
<s2s>
  <id>s2s</id>
  <pidfile>{dir}/s2s.pid</pidfile>
  {router}
  <log type='file'><file>{dir}/s2s.log</file></log>
  <!-- STARTTLS both ways with this certificate (not verified by either side: jabberd2
       authenticates servers by dialback only), dialback keys from this secret. -->
  <local>
    <ip>{ip}</ip>
    <port>{s2s}</port>
    <secret>interop-dialback</secret>
    <pemfile>{pem}</pemfile>
  </local>
  <!-- Checks every second: a route that is not up within 10 s bounces what waited for it
       (default 60 s, checked every 60 s). -->
  <check><interval>1</interval><queue>10</queue><retry>10</retry><idle>86400</idle><keepalive>0</keepalive></check>
  <!-- Names resolve through libudns, which reads the private /etc/resolv.conf: the
       _xmpp-server._tcp SRV record, then its target's A record (no AAAA: no <resolve-ipv6/>).
       A host that refused a connection is tried again at once (no bad-host cache), so a
       restarted fedgate is reached again. -->
  <lookup>
    <srv>xmpp-server</srv>
    <min-ttl>1</min-ttl>
    <max-ttl>60</max-ttl>
    <bad-host-timeout>0</bad-host-timeout>
  </lookup>
  <security><require_tls/></security>
</s2s>
"#,
                    s2s = PEER_S2S_PORT,
                ),
            ),
        ];
        for (name, text) in files {
            std::fs::write(d.join(name), text).unwrap();
        }
        // The router first; the others once it accepts connections (bash's /dev/tcp), so that
        // none of them waits out a retry. `wait` keeps the group's leader until all have exited.
        // libudns takes its name servers from NSCACHEIP or NAMESERVERS before resolv.conf:
        // unset, so that the private resolv.conf is all it reads.
        let script = format!(
            r#"d="$1"
/usr/sbin/jabberd2-router -c "$d/router.xml" &
for _ in $(seq 100); do (exec 3<>/dev/tcp/{ip}/{router_port}) 2>/dev/null && break; sleep 0.05; done
for p in sm s2s c2s; do /usr/sbin/jabberd2-$p -c "$d/$p.xml" & done
wait"#
        );
        self.argv = [
            "env",
            "-u",
            "NSCACHEIP",
            "-u",
            "NAMESERVERS",
            "bash",
            "-c",
            &script,
            "jabberd2",
            &dir,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
    }

    /// How many times jabberd2's sm logged that it is ready ("ready for sessions": its domain
    /// is bound at the router). c2s accepts logins before that, and their sessions would fail.
    fn jabberd2_sm_ready_count(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("sm.log"))
            .unwrap_or_default()
            .matches("ready for sessions")
            .count()
    }

    /// `ejabberdctl` for this peer's node and folders, as the ejabberd user (whose home holds
    /// the Erlang cookie), so that the node is in our process group rather than behind `su`.
    fn ejabberdctl_argv(&self) -> Vec<String> {
        let d = self.dir.path().display().to_string();
        [
            "env",
            "HOME=/var/lib/ejabberd",
            "setpriv",
            "--reuid=ejabberd",
            "--regid=ejabberd",
            "--init-groups",
            // Debian installs it in /usr/sbin, which a non-login PATH may lack.
            if Path::new("/usr/sbin/ejabberdctl").exists() {
                "/usr/sbin/ejabberdctl"
            } else {
                "ejabberdctl"
            },
            "--node",
            &self.node,
            "--config-dir",
            &d,
            "--logs",
            &format!("{d}/logs"),
            "--spool",
            &format!("{d}/spool"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Runs an `ejabberdctl` command against the running node; panics with its output when
    /// it fails.
    pub fn ejabberdctl(&self, args: &[&str]) -> String {
        let mut argv = self.ejabberdctl_argv();
        argv.extend(args.iter().map(|s| s.to_string()));
        // ejabberd answers commands before mnesia has loaded its tables on a busy machine
        // (`{aborted,{no_exists,passwd,…}}`): such an answer is retried for a few seconds.
        let mut tries = 0;
        let (out, text) = loop {
            let out = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .output()
                .expect("run ejabberdctl");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            tries += 1;
            if out.status.success() || !text.contains("no_exists") || tries >= 50 {
                break (out, text);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        assert!(
            out.status.success(),
            "ejabberdctl {args:?} failed: {text}\n{}",
            self.log_tail(30)
        );
        text
    }

    /// Starts the server in a private mount namespace with the test's `resolv.conf`, in a
    /// process group of its own, and waits until its c2s and s2s ports accept connections
    /// (jabberd2: and its sm is ready).
    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let sm_ready_before = self.jabberd2_sm_ready_count();
        let d = self.dir.path();
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("console.log"))
            .unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
            .arg(d.join("resolv.conf"))
            .args(&self.argv)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({:?}): {e}", self.kind.name(), self.argv));
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let c2s = TcpStream::connect(self.c2s_addr()).await.is_ok();
            let s2s = TcpStream::connect(self.s2s_addr()).await.is_ok();
            let ready =
                self.kind != Kind::Jabberd2 || self.jabberd2_sm_ready_count() > sm_ready_before;
            if c2s && s2s && ready {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "{} exited ({status}) instead of starting:\n{}",
                    self.kind.name(),
                    self.log_tail(40)
                );
            }
            if started.elapsed() > START_WAIT {
                panic!(
                    "{} did not open {} and {} within {START_WAIT:?}:\n{}",
                    self.kind.name(),
                    self.c2s_addr(),
                    self.s2s_addr(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server as an administrator would (SIGTERM: it closes its streams) and waits
    /// until every process of it has exited.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = child.id().expect("running") as i32;
        signal_group(group, "TERM");
        let started = Instant::now();
        while group_alive(group) {
            if started.elapsed() > START_WAIT {
                signal_group(group, "KILL");
                panic!(
                    "{} did not stop within {START_WAIT:?}:\n{}",
                    self.kind.name(),
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.wait().await;
    }

    /// Starts the stopped server again with the same config, data and address.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }
}

impl Drop for Peer {
    /// Kills what is still running; after a failure (or with `INTEROP_KEEP=1`), keeps the
    /// folder (config, logs, the client's stderr) and says where it is.
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            if let Some(id) = child.id() {
                signal_group(id as i32, "KILL");
            }
        }
        if std::thread::panicking() || std::env::var_os("INTEROP_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "{} {}: its config, logs and the client's stderr are kept in {}",
                self.kind.name(),
                self.domain,
                self.dir.path().display()
            );
        }
    }
}

/// The peers' log level: `info`, or `debug` with `INTEROP_PEER_DEBUG=1` (every stanza, slow).
fn log_level() -> &'static str {
    if std::env::var_os("INTEROP_PEER_DEBUG").is_some() {
        "debug"
    } else {
        "info"
    }
}

/// Sends `signal` to the process group `group` (one we started with `process_group(0)`).
fn signal_group(group: i32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{group}"))
        .stderr(Stdio::null())
        .status();
}

/// Whether a live (not zombie) process is left in process group `group`.
fn group_alive(group: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 3 && fields[0] != "Z" && fields[2] == group.to_string()
    })
}

/// The last `lines` lines of each file, with a heading naming it.
fn tail(files: &[PathBuf], lines: usize) -> String {
    let mut out = String::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        out.push_str(&format!("--- {} (last {lines} lines)\n", file.display()));
        for line in &all[from..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The path of the file of Debian's jabberd2 package whose name ends with one of `suffixes`
/// (`dpkg -L jabberd2`).
fn jabberd2_package_file(suffixes: &[&str]) -> String {
    let out = std::process::Command::new("dpkg")
        .args(["-L", "jabberd2"])
        .output()
        .expect("run dpkg -L jabberd2");
    let listing = String::from_utf8_lossy(&out.stdout);
    listing
        .lines()
        .find(|l| suffixes.iter().any(|s| l.ends_with(s)) && Path::new(l).exists())
        .unwrap_or_else(|| panic!("no {suffixes:?} in jabberd2's package (dpkg -L jabberd2)"))
        .to_string()
}

/// jabberd2's SQLite schema: db-setup.sqlite, gzipped in Debian's package.
fn jabberd2_schema() -> String {
    let path = jabberd2_package_file(&["/db-setup.sqlite", "/db-setup.sqlite.gz"]);
    if path.ends_with(".gz") {
        let out = std::process::Command::new("zcat")
            .arg(&path)
            .output()
            .expect("run zcat");
        assert!(out.status.success(), "zcat {path} failed");
        String::from_utf8(out.stdout).unwrap()
    } else {
        std::fs::read_to_string(path).unwrap()
    }
}
