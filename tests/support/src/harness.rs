//! Test fixtures: fedgate instances on their own loopback addresses, and raw XEP-0114 / s2s
//! peers that write XML bytes and read what comes back. The DNS server the tests run lives in
//! [`crate::dns_server`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::certs::{ca, CertSpec};
pub use crate::dns_server::TestDns;

use fedgate::config::Config;
use fedgate::connection::BoxTransport;
use fedgate::dialback::{component_handshake, DialbackSecret};
use fedgate::gateway::{self, RunningGateway};
use fedgate::xml::framer::{Event, Framer, Limits};
use fedgate::xml::stanza::Stanza;
use fedgate::xml::stream::StreamHeader;

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A fresh loopback address per instance, so every instance can listen on the standard s2s
/// port 5269 and be found through plain A records, as on the internet.
pub fn next_loopback() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 200) * 256;
    IpAddr::V4(Ipv4Addr::new(
        127,
        77,
        (n / 250 % 250) as u8 + 1,
        (n % 250) as u8 + 2,
    ))
}

/// One fedgate instance serving `domain` with one backend.
pub struct Instance {
    pub domain: String,
    /// The loopback address its s2s listener binds (and DNS publishes).
    #[allow(dead_code)]
    pub ip: IpAddr,
    pub gateway: Option<RunningGateway>,
    pub component_secret: String,
    pub dir: tempfile::TempDir,
    /// What it was started with, for [`Instance::restart`].
    config: Config,
    /// The configuration's text, for [`Instance::reload`].
    text: String,
}

/// How to build an [`Instance`].
pub struct InstanceBuilder<'a> {
    dns: &'a TestDns,
    domain: String,
    dialback_secret: Option<String>,
    extra: String,
    federation: String,
    component: String,
    backends: Vec<(String, String)>,
    register_dns: bool,
    /// The certificate to present; `None` = no `[[tls.certificate]]` at all.
    cert: Option<CertSpec>,
    /// The `domains` of the `[[tls.certificate]]`; empty = the instance's domains.
    cert_domains: Vec<String>,
    tls: String,
    peers: String,
    routes: String,
    /// The port of the s2s listener (STARTTLS); 5269 unless a test publishes another by SRV.
    s2s_port: u16,
    /// Extra lines for `[metrics]`.
    metrics: String,
    /// Whole tables appended to the configuration (e.g. `[core]`).
    tables: String,
    /// The component listener's port on loopback; 0 picks a free one at each start.
    component_port: u16,
    /// Extra `[dns]` keys.
    dns_keys: String,
}

pub fn instance<'a>(dns: &'a TestDns, domain: &str) -> InstanceBuilder<'a> {
    InstanceBuilder {
        dns,
        domain: domain.to_string(),
        dialback_secret: None,
        extra: String::new(),
        federation: String::new(),
        component: String::new(),
        backends: Vec::new(),
        register_dns: true,
        cert: Some(CertSpec::default()),
        cert_domains: Vec::new(),
        tls: String::new(),
        peers: String::new(),
        routes: String::new(),
        s2s_port: 5269,
        metrics: String::new(),
        tables: String::new(),
        component_port: 0,
        dns_keys: String::new(),
    }
}

impl InstanceBuilder<'_> {
    /// Adds lines to `[metrics]`.
    #[allow(dead_code)]
    pub fn metrics(mut self, lines: &str) -> Self {
        self.metrics.push_str(lines);
        self.metrics.push('\n');
        self
    }

    /// Uses this dialback secret instead of a generated one.
    pub fn dialback_secret(mut self, secret: &str) -> Self {
        self.dialback_secret = Some(secret.to_string());
        self
    }

    /// Extra `[s2s]` keys, e.g. `"negotiation_timeout = \"1s\""`.
    pub fn s2s(mut self, lines: &str) -> Self {
        self.extra.push_str(lines);
        self.extra.push('\n');
        self
    }

    /// The body of the `[federation]` section.
    pub fn federation(mut self, lines: &str) -> Self {
        self.federation = lines.to_string();
        self
    }

    /// Extra `[dns]` keys, e.g. `"timeout = \"1s\""`.
    #[allow(dead_code)]
    pub fn dns(mut self, lines: &str) -> Self {
        self.dns_keys.push_str(lines);
        self.dns_keys.push('\n');
        self
    }

    /// Extra `[component]` keys.
    pub fn component(mut self, lines: &str) -> Self {
        self.component = lines.to_string();
        self
    }

    /// Another backend domain besides the instance's own.
    pub fn backend(mut self, domain: &str, secret: &str) -> Self {
        self.backends.push((domain.to_string(), secret.to_string()));
        self
    }

    /// Presents this certificate (default: issued by the test CA for the instance's domains).
    /// Names left empty are filled with the instance's domains.
    pub fn cert(mut self, spec: CertSpec) -> Self {
        self.cert = Some(spec);
        self
    }

    /// The domains the certificate is configured for (default: the instance's domains).
    #[allow(dead_code)]
    pub fn cert_domains(mut self, domains: &[&str]) -> Self {
        self.cert_domains = domains.iter().map(|d| d.to_string()).collect();
        self
    }

    /// No certificate at all (and so no TLS inbound; needs `require_encryption = false`).
    pub fn no_cert(mut self) -> Self {
        self.cert = None;
        self
    }

    /// Extra `[tls]` keys.
    #[allow(dead_code)]
    pub fn tls(mut self, lines: &str) -> Self {
        self.tls.push_str(lines);
        self.tls.push('\n');
        self
    }

    /// A `[[federation.peer]]` table with these keys.
    pub fn peer(mut self, lines: &str) -> Self {
        self.peers
            .push_str(&format!("[[federation.peer]]\n{lines}\n"));
        self
    }

    /// A `[[s2s.route]]` for `domain` to `target`, direct TLS or STARTTLS.
    #[allow(dead_code)]
    pub fn route(mut self, domain: &str, target: SocketAddr, direct_tls: bool) -> Self {
        self.routes.push_str(&format!(
            "[[s2s.route]]\ndomain = \"{domain}\"\ntarget = \"{target}\"\ndirect_tls = {direct_tls}\n"
        ));
        self
    }

    /// Listens for s2s (STARTTLS) on this port instead of 5269, e.g. behind an SRV record.
    #[allow(dead_code)]
    pub fn s2s_port(mut self, port: u16) -> Self {
        self.s2s_port = port;
        self
    }

    /// Whole TOML tables appended to the configuration, e.g. a `[core]` section.
    #[allow(dead_code)]
    pub fn tables(mut self, text: &str) -> Self {
        self.tables.push_str(text);
        self.tables.push('\n');
        self
    }

    /// Listens for backends on this loopback port, also after [`Instance::restart`], so that
    /// backends reconnect by themselves.
    pub fn component_port(mut self, port: u16) -> Self {
        self.component_port = port;
        self
    }

    /// Do not publish this instance's address in DNS (an impostor).
    pub fn unlisted(mut self) -> Self {
        self.register_dns = false;
        self
    }

    pub async fn start(self) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let ip = next_loopback();
        let secret_file = dir.path().join("dialback.secret");
        if let Some(s) = &self.dialback_secret {
            std::fs::write(&secret_file, s).unwrap();
        }
        let component_secret = format!("component-secret-{}", self.domain);
        // Defaults for tests, unless the test sets the key itself.
        let mut extra = self.extra.clone();
        for (key, value) in [
            ("connect_timeout", "\"2s\""),
            ("negotiation_timeout", "\"5s\""),
            ("dialback_timeout", "\"5s\""),
        ] {
            if !extra.contains(key) {
                extra.push_str(&format!("{key} = {value}\n"));
            }
        }
        let mut certificate = String::new();
        if let Some(spec) = &self.cert {
            let mut spec = spec.clone();
            let mut domains = vec![self.domain.clone()];
            domains.extend(self.backends.iter().map(|(d, _)| d.clone()));
            if spec.dns.is_empty() && spec.srv.is_empty() && spec.xmpp_addr.is_empty() {
                spec.dns = domains.clone();
            }
            let (cert, key) = ca().issue(&spec, dir.path(), "tls");
            if !self.cert_domains.is_empty() {
                domains = self.cert_domains.clone();
            }
            let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
            certificate = format!(
                "[[tls.certificate]]\ndomains = [{}]\ncert = \"{}\"\nkey = \"{}\"\n",
                domains.join(", "),
                cert.display(),
                key.display()
            );
        }
        let text = format!(
            r#"
[s2s]
listen = ["{ip}:{s2s_port}"]
direct_tls_listen = ["{ip}:5270"]
dialback_secret_file = "dialback.secret"
{extra}
{routes}
[dns]
nameservers = ["{dns}"]
{dns_keys}
[federation]
{federation}
{peers}
[tls]
webpki_roots = false
ca_files = ["{ca_file}"]
{tls}
{certificate}

[component]
listen = "127.0.0.1:{component_port}"
{component}

[[component.backend]]
domain = "{domain}"
secret = "{component_secret}"

[metrics]
listen = "127.0.0.1:0"
{metrics}
"#,
            metrics = self.metrics,
            dns = self.dns.addr,
            dns_keys = self.dns_keys,
            s2s_port = self.s2s_port,
            federation = self.federation,
            peers = self.peers,
            routes = self.routes,
            ca_file = ca().ca_file.display(),
            tls = self.tls,
            component = self.component,
            component_port = self.component_port,
            domain = self.domain,
        );
        let mut text = text;
        for (domain, secret) in &self.backends {
            text.push_str(&format!(
                "[[component.backend]]\ndomain = \"{domain}\"\nsecret = \"{secret}\"\n"
            ));
        }
        text.push_str(&self.tables);
        let config = Config::from_toml(&text, dir.path()).expect("test config is valid");
        let config_text = text.clone();
        let gateway = gateway::start(&config).await.expect("gateway starts");
        if self.register_dns {
            self.dns.add(&self.domain, ip);
        }
        Instance {
            domain: self.domain,
            ip,
            gateway: Some(gateway),
            component_secret,
            dir,
            config,
            text: config_text,
        }
    }
}

impl Instance {
    pub fn gw(&self) -> &RunningGateway {
        self.gateway.as_ref().unwrap()
    }

    pub fn s2s_addr(&self) -> SocketAddr {
        self.gw().s2s_addrs[0]
    }

    /// The direct TLS (XEP-0368) listener.
    pub fn direct_tls_addr(&self) -> SocketAddr {
        self.gw().direct_tls_addrs[0]
    }

    /// The certificate and key files this instance presents.
    pub fn cert_files(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        (
            self.dir.path().join("tls.crt"),
            self.dir.path().join("tls.key"),
        )
    }

    /// The dialback secret this instance uses (the file it created or was given).
    pub fn dialback_secret(&self) -> DialbackSecret {
        DialbackSecret::load_or_create(&self.dir.path().join("dialback.secret")).unwrap()
    }

    /// Attaches a raw backend for this instance's domain.
    pub async fn backend(&self) -> RawStream {
        RawStream::component(
            self.gw().component_addr,
            &self.domain,
            &self.component_secret,
        )
        .await
    }

    /// Attaches a raw backend for another configured domain.
    pub async fn backend_for(&self, domain: &str, secret: &str) -> RawStream {
        RawStream::component(self.gw().component_addr, domain, secret).await
    }

    /// `/peers/{domain}`: what this instance knows of a remote domain.
    pub async fn peer_view(&self, domain: &str) -> fedgate::peers::PeerView {
        let body = http_get(self.gw().metrics_addr.unwrap(), &format!("/peers/{domain}")).await;
        let json = body.split("\r\n\r\n").nth(1).unwrap_or(&body);
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    pub async fn metrics(&self) -> String {
        http_get(self.gw().metrics_addr.unwrap(), "/metrics").await
    }

    /// Reloads the configuration as `edit` rewrites its text (e.g. a new `[federation]`), the
    /// way SIGHUP and `fedgate reload` do.
    pub fn reload(
        &self,
        edit: impl FnOnce(&str) -> String,
    ) -> Result<fedgate::reload::Reloaded, fedgate::reload::ReloadError> {
        let text = edit(&self.text);
        let config = Config::from_toml(&text, self.dir.path())?;
        self.gw().reload(config)
    }

    pub async fn stop(&mut self) {
        if let Some(gw) = self.gateway.take() {
            gw.shutdown(Duration::from_secs(5)).await;
        }
    }

    /// Starts the gateway again with the same configuration (same addresses and secret) after
    /// [`Instance::stop`]. Its component listener gets a new port: attach backends anew.
    pub async fn restart(&mut self) {
        assert!(self.gateway.is_none(), "stop the instance first");
        self.gateway = Some(
            gateway::start(&self.config)
                .await
                .expect("gateway restarts"),
        );
    }
}

/// A minimal HTTP/1.0 GET, enough for `/metrics`.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|| panic!("GET http://{addr}{path} failed"))
}

/// Like [`http_get`], but `None` when nothing answers (yet).
#[allow(dead_code)]
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// A free loopback port (bound, then released).
#[allow(dead_code)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw XML stream: writes bytes as given, frames what comes back with fedgate's framer.
pub struct RawStream {
    tcp: BoxTransport,
    framer: Framer,
    pub header: Option<StreamHeader>,
}

/// What a raw stream saw of a TLS handshake.
#[derive(Debug)]
#[allow(dead_code)]
pub struct TlsSeen {
    pub alpn: Option<Vec<u8>>,
    /// The certificate the server presented (leaf).
    pub server_cert: Vec<u8>,
    pub version: Option<rustls::ProtocolVersion>,
    /// The RFC 9266 `tls-exporter` channel binding of the connection (TLS 1.3).
    pub exporter: Option<Vec<u8>>,
}

/// A client certificate for a raw stream: (cert file, key file).
pub type ClientCert<'a> = Option<(&'a std::path::Path, &'a std::path::Path)>;

impl RawStream {
    pub async fn connect(addr: SocketAddr) -> RawStream {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        RawStream::over(Box::new(tcp))
    }

    /// Connects from `source` (any loopback address: each is a different peer to fedgate)
    /// and, with `send_buffer`, a send buffer that small (so TCP back-pressure shows early).
    #[allow(dead_code)]
    pub async fn connect_from(
        addr: SocketAddr,
        source: Option<IpAddr>,
        send_buffer: Option<u32>,
    ) -> RawStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
        }
        if let Some(bytes) = send_buffer {
            socket.set_send_buffer_size(bytes).unwrap();
        }
        let tcp = socket.connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        RawStream::over(Box::new(tcp))
    }

    fn over(io: BoxTransport) -> RawStream {
        RawStream {
            tcp: io,
            framer: Framer::new(Limits {
                max_stanza_bytes: 16 * 1024 * 1024,
                max_depth: 64,
                max_attributes: 64,
            }),
            header: None,
        }
    }

    /// Connects with TLS from the first byte (XEP-0368), SNI `sni`, ALPN `xmpp-server` if
    /// `alpn`.
    pub async fn connect_direct_tls(
        addr: SocketAddr,
        sni: &str,
        alpn: bool,
        client: ClientCert<'_>,
    ) -> (RawStream, TlsSeen) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        let (io, seen) = tls_handshake(Box::new(tcp), sni, alpn, client).await;
        (RawStream::over(io), seen)
    }

    /// `<starttls/>`, `<proceed/>`, then the handshake; the framer starts afresh.
    pub async fn starttls(&mut self, sni: &str, client: ClientCert<'_>) -> TlsSeen {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let proceed = self.next().await;
        assert_eq!(proceed.name(), "proceed", "{}", text(proceed.raw()));
        self.upgrade(sni, client).await
    }

    /// A fresh stream on the same transport (after SASL success).
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        self.framer.reset();
    }

    /// The TLS handshake on this stream's transport (after `<proceed/>` was read).
    pub async fn upgrade(&mut self, sni: &str, client: ClientCert<'_>) -> TlsSeen {
        self.framer.reset();
        let io = std::mem::replace(&mut self.tcp, Box::new(tokio::io::duplex(1).0));
        let (io, seen) = tls_handshake(io, sni, false, client).await;
        self.tcp = io;
        seen
    }

    /// Connects as a XEP-0114 backend for `domain` and completes the handshake.
    pub async fn component(addr: SocketAddr, domain: &str, secret: &str) -> RawStream {
        let mut s = RawStream::connect(addr).await;
        s.send(&format!(
            "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
        ))
        .await;
        let header = s.expect_header().await;
        let id = header.id.clone().expect("stream id");
        s.send(&format!(
            "<handshake>{}</handshake>",
            component_handshake(&id, secret)
        ))
        .await;
        let reply = s.next().await;
        assert_eq!(&reply.raw()[..], b"<handshake/>", "handshake accepted");
        s
    }

    pub async fn send(&mut self, xml: &str) {
        self.send_bytes(xml.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
        // Over TLS, what the socket did not take at once waits in the TLS layer until a flush.
        self.tcp.flush().await.expect("flush");
    }

    /// The next event, or panics after [`WAIT`].
    pub async fn event(&mut self) -> Event {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(e) = self
                    .framer
                    .next_event()
                    .expect("fedgate sends well-formed XML")
                {
                    return e;
                }
                let n = self
                    .tcp
                    .read_buf(self.framer.read_buf())
                    .await
                    .expect("read");
                assert!(n > 0, "connection closed while waiting for an event");
            }
        })
        .await
        .expect("timed out waiting for fedgate")
    }

    /// The next event, or `None` when the connection ends (closed, reset, or bytes that do
    /// not parse: a peer killed in the middle of a write) or nothing comes for [`WAIT`].
    pub async fn event_or_end(&mut self) -> Option<Event> {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.framer.next_event() {
                    Ok(Some(e)) => return Some(e),
                    Ok(None) => {}
                    Err(_) => return None,
                }
                match self.tcp.read_buf(self.framer.read_buf()).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    pub async fn expect_header(&mut self) -> StreamHeader {
        match self.event().await {
            Event::StreamOpen(h) => {
                self.header = Some(h.clone());
                h
            }
            _ => panic!("expected a stream header"),
        }
    }

    /// The next top-level element.
    pub async fn next(&mut self) -> Stanza {
        match self.event().await {
            Event::Stanza(s) => s,
            Event::StreamClose => panic!("stream closed while waiting for a stanza"),
            Event::StreamOpen(_) => panic!("unexpected stream header"),
        }
    }

    /// The next element's bytes as text.
    pub async fn next_text(&mut self) -> String {
        String::from_utf8(self.next().await.raw().to_vec()).unwrap()
    }

    /// Reads until the stream ends and returns the stream error condition it ended with.
    pub async fn expect_stream_error(&mut self) -> String {
        loop {
            match self.event().await {
                Event::StreamOpen(h) => self.header = Some(h),
                Event::Stanza(s) if s.name() == "error" => {
                    let e = s.element().unwrap();
                    let cond = e
                        .children()
                        .find(|c| c.name != "text")
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    return cond;
                }
                Event::Stanza(_) => continue,
                Event::StreamClose => panic!("stream closed without a stream error"),
            }
        }
    }

    /// Whether the peer closed the connection (read returns 0) within [`WAIT`].
    pub async fn expect_eof(&mut self) {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(WAIT, async {
            loop {
                match self.tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .expect("connection not closed");
    }
}

/// Our s2s stream header, `from` → `to`.
pub fn s2s_header(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'>"
    )
}

/// Opens a plaintext s2s stream to `addr` as `from` → `to`, reads the header and returns the
/// features.
pub async fn plain_s2s_stream(addr: SocketAddr, from: &str, to: &str) -> (RawStream, Stanza) {
    let mut s = RawStream::connect(addr).await;
    s.send(&s2s_header(from, to)).await;
    s.expect_header().await;
    let features = s.next().await;
    assert_eq!(features.name(), "features");
    (s, features)
}

/// Opens an s2s stream to `addr` as `from` → `to`, negotiates STARTTLS (presenting `client`
/// if given), and returns the stream, its id and the features after TLS.
pub async fn tls_s2s_stream(
    addr: SocketAddr,
    from: &str,
    to: &str,
    client: ClientCert<'_>,
) -> (RawStream, String, Stanza) {
    let (mut s, features) = plain_s2s_stream(addr, from, to).await;
    assert!(
        text(features.raw()).contains("<starttls"),
        "STARTTLS offered: {}",
        text(features.raw())
    );
    s.starttls(to, client).await;
    s.send(&s2s_header(from, to)).await;
    let header = s.expect_header().await;
    let features = s.next().await;
    assert_eq!(features.name(), "features");
    (s, header.id.expect("stream id"), features)
}

/// An s2s stream over STARTTLS without a client certificate, ready for dialback: the stream
/// and its id.
pub async fn s2s_stream(addr: SocketAddr, from: &str, to: &str) -> (RawStream, String) {
    let (s, id, _) = tls_s2s_stream(addr, from, to, None).await;
    (s, id)
}

/// A TLS client that accepts any server certificate (tests look at what they got) and
/// presents `client` if given.
async fn tls_handshake(
    io: BoxTransport,
    sni: &str,
    alpn: bool,
    client: ClientCert<'_>,
) -> (BoxTransport, TlsSeen) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)));
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    if alpn {
        config.alpn_protocols = vec![b"xmpp-server".to_vec()];
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio::time::timeout(WAIT, connector.connect(name, io))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    let (_, conn) = tls.get_ref();
    let seen = TlsSeen {
        alpn: conn.alpn_protocol().map(|a| a.to_vec()),
        server_cert: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default(),
        version: conn.protocol_version(),
        exporter: conn
            .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok(),
    };
    (Box::new(tls), seen)
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An s2s stream authenticated by dialback as `from` (whose real server is `authority`, so
/// we can compute valid keys with its secret) → `to`.
pub async fn authenticated_s2s(addr: SocketAddr, authority: &Instance, to: &str) -> RawStream {
    let from = authority.domain.clone();
    let (mut s, id) = s2s_stream(addr, &from, to).await;
    let key = authority.dialback_secret().key(to, &from, &id);
    s.send(&format!(
        "<db:result from='{from}' to='{to}'>{key}</db:result>"
    ))
    .await;
    let result = s.next().await;
    assert_eq!(
        result.type_(),
        Some("valid"),
        "dialback result: {:?}",
        std::str::from_utf8(result.raw())
    );
    s
}

/// Waits (up to 15 s) until `sample` on `instance`'s `/metrics` is at least `at_least`, and
/// returns its value; panics with the exposition otherwise.
#[allow(dead_code)]
pub async fn wait_for_metric(instance: &Instance, sample: &str, at_least: f64) -> f64 {
    let what = format!("at least {at_least}");
    wait_for_metric_where(instance, sample, &what, |v| v >= at_least).await
}

/// Waits (up to 15 s) until `sample` is exactly `value`: for a gauge that settles after the
/// event a test waited for (an acknowledgement that follows the delivery).
#[allow(dead_code)]
pub async fn wait_for_metric_to_be(instance: &Instance, sample: &str, value: f64) {
    wait_for_metric_where(instance, sample, &value.to_string(), |v| v == value).await;
}

async fn wait_for_metric_where(
    instance: &Instance,
    sample: &str,
    what: &str,
    holds: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let exposition = instance.metrics().await;
        // Waiting for a counter to reach a value: before its first increment a labelled counter
        // has no series, and a series that never appears times out below.
        let value = metric_or_zero(&exposition, sample);
        if holds(value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} never reached {what} (last {value}): {exposition}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `done` every 10 ms until it holds; panics naming `what` after 15 s. For state that
/// has no event to wait on (a link closed, a component detached), instead of a fixed sleep.
#[allow(dead_code)]
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sum of the samples in a Prometheus text exposition that have the given name and at
/// least the given labels, e.g.
/// `metric(&text, "fedgate_bounces_total{condition=\"remote-server-timeout\"}")` sums over
/// every `cause`. Panics if no series matches: a renamed metric or label must fail the test, not
/// read as 0. Use [`metric_or_zero`] only for a labelled counter that appears on its first
/// increment, and say at the call why it may not exist yet.
#[allow(dead_code)]
pub fn metric(exposition: &str, sample: &str) -> f64 {
    series_sum(exposition, sample)
        .unwrap_or_else(|| panic!("no series matches {sample} in:\n{exposition}"))
}

/// [`metric`], but 0 when no series matches: for a labelled counter (a `CounterVec` child) that
/// the process creates on its first increment, so "never happened" has no series yet.
#[allow(dead_code)]
pub fn metric_or_zero(exposition: &str, sample: &str) -> f64 {
    series_sum(exposition, sample).unwrap_or(0.0)
}

/// The sum of the matching samples, `None` if there are none.
fn series_sum(exposition: &str, sample: &str) -> Option<f64> {
    let (name, labels) = split_sample(sample);
    let mut found = None;
    for l in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let (n, have) = split_sample(series);
        if n == name && labels.iter().all(|want| have.contains(want)) {
            *found.get_or_insert(0.0) += value.trim().parse::<f64>().unwrap();
        }
    }
    found
}

/// `name{a="x",b="y"}` → (`name`, [`a="x"`, `b="y"`]).
fn split_sample(sample: &str) -> (&str, Vec<&str>) {
    match sample.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.trim_end_matches('}');
            let labels = inner.split(',').filter(|l| !l.is_empty()).collect();
            (name, labels)
        }
        None => (sample, Vec::new()),
    }
}

/// Payload bytes of a stanza, for byte-exact comparisons.
pub fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap()
}

impl RawStream {
    /// Bytes exactly as they arrive, unframed (whitespace keepalives included), until `done`
    /// holds for all read so far or the connection closes; panics after [`WAIT`]. Use it only
    /// when nothing is left in the framer from earlier reads.
    pub async fn read_raw_until(&mut self, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 4096];
            while !done(&got) {
                match self.tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("timed out reading raw bytes");
        got
    }
}

/// A fake receiving server for fake.test on `ip`:5269, with a certificate for fake.test from
/// the test CA: the peer of the tests that watch what our outbound links send. The test
/// answers what arrives on each [`FakeReceiver::accept`]ed connection itself.
#[allow(dead_code)]
pub struct FakeReceiver {
    listener: tokio::net::TcpListener,
    pub tls: Arc<fedgate::tls::Tls>,
}

#[allow(dead_code)]
impl FakeReceiver {
    /// Binds `ip`:5269; the certificate goes into `dir`.
    pub async fn bind(ip: IpAddr, dir: &std::path::Path) -> FakeReceiver {
        let (cert, key) = ca().issue(&CertSpec::for_names(&["fake.test"]), dir, "fake");
        let config = Config::from_toml(
            &format!(
                "[[tls.certificate]]\ndomains = [\"fake.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\
                 [[component.backend]]\ndomain = \"fake.test\"\nsecret = \"x\"\n",
                cert.display(),
                key.display()
            ),
            dir,
        )
        .unwrap();
        let tls = Arc::new(fedgate::tls::Tls::from_config(&config).unwrap());
        let listener = tokio::net::TcpListener::bind((ip, 5269)).await.unwrap();
        FakeReceiver { listener, tls }
    }

    /// The next connection, framed; `None` once the listener fails.
    pub async fn accept(&self) -> Option<fedgate::connection::Connection> {
        let (tcp, peer) = self.listener.accept().await.ok()?;
        let limits = Limits {
            max_stanza_bytes: 65536,
            max_depth: 16,
            max_attributes: 16,
        };
        Some(fedgate::connection::Connection::new(
            Box::new(tcp),
            peer,
            limits,
            "jabber:server",
        ))
    }
}

/// The fake receiver's side of STARTTLS on `conn` (a.test's outbound stream to fake.test):
/// our header with `<starttls><required/>`, `<proceed/>`, the TLS handshake as fake.test,
/// and the encrypted stream's header; the stream ids end in `-{tag}`. The caller sends its
/// features next.
#[allow(dead_code)]
pub async fn fake_peer_starttls(
    conn: &mut fedgate::connection::Connection,
    tls: &fedgate::tls::Tls,
    tag: usize,
) {
    let header = |id: &str| {
        format!("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='fake.test' to='a.test' id='{id}-{tag}' version='1.0'>")
    };
    assert!(matches!(
        conn.next_event().await.unwrap(),
        Event::StreamOpen(_)
    ));
    conn.send(header("plain").as_bytes());
    conn.send(b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>");
    conn.flush().await.unwrap();
    conn.next_event().await.unwrap();
    conn.send(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    conn.flush().await.unwrap();
    let (io, _) = tls
        .accept(conn.take_transport(), Some("fake.test"), false)
        .await
        .unwrap();
    conn.restart_on(io);
    assert!(matches!(
        conn.next_event().await.unwrap(),
        Event::StreamOpen(_)
    ));
    conn.send(header("tls").as_bytes());
}
