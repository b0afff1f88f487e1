//! Test fixtures: a DNS server the test runs, fedgate instances on their own loopback
//! addresses, and raw XEP-0114 / s2s peers that write XML bytes and read what comes back.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use fedgate::config::Config;
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

/// A DNS server on loopback UDP serving A records for test domains; every other name is
/// NXDOMAIN. fedgate instances query only this server (`[dns] nameservers`).
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
        let addr = socket.local_addr().unwrap();
        let zone: Arc<Mutex<HashMap<String, Vec<IpAddr>>>> = Arc::default();
        let served = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let mut response =
                    Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                response.metadata.authoritative = true;
                response.metadata.recursion_desired = query.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                for q in &query.queries {
                    response.add_query(q.clone());
                    let name = q.name().to_ascii().trim_end_matches('.').to_lowercase();
                    let addrs = served.lock().unwrap().get(&name).cloned();
                    match addrs {
                        None => response.metadata.response_code = ResponseCode::NXDomain,
                        Some(addrs) => {
                            for ip in addrs {
                                let rdata = match (ip, q.query_type()) {
                                    (IpAddr::V4(v4), RecordType::A) => RData::A(rdata::A(v4)),
                                    (IpAddr::V6(v6), RecordType::AAAA) => {
                                        RData::AAAA(rdata::AAAA(v6))
                                    }
                                    _ => continue,
                                };
                                response.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    60,
                                    rdata,
                                ));
                            }
                        }
                    }
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        TestDns { addr, zone, task }
    }

    /// Serves `domain` A → `ip`.
    pub fn add(&self, domain: &str, ip: IpAddr) {
        self.zone
            .lock()
            .unwrap()
            .entry(domain.to_string())
            .or_default()
            .push(ip);
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
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
    }
}

impl InstanceBuilder<'_> {
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
        let text = format!(
            r#"
[s2s]
listen = ["{ip}:5269"]
dialback_secret_file = "dialback.secret"
{extra}
[dns]
nameservers = ["{dns}"]

[federation]
{federation}

[component]
listen = "127.0.0.1:0"
{component}

[[component.backend]]
domain = "{domain}"
secret = "{component_secret}"

[metrics]
listen = "127.0.0.1:0"
"#,
            dns = self.dns.addr,
            federation = self.federation,
            component = self.component,
            domain = self.domain,
        );
        let mut text = text;
        for (domain, secret) in &self.backends {
            text.push_str(&format!(
                "[[component.backend]]\ndomain = \"{domain}\"\nsecret = \"{secret}\"\n"
            ));
        }
        let config = Config::from_toml(&text, dir.path()).expect("test config is valid");
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

    pub async fn metrics(&self) -> String {
        http_get(self.gw().metrics_addr.unwrap(), "/metrics").await
    }

    pub async fn stop(&mut self) {
        if let Some(gw) = self.gateway.take() {
            gw.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// A minimal HTTP/1.0 GET, enough for `/metrics`.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

/// A raw XML stream: writes bytes as given, frames what comes back with fedgate's framer.
pub struct RawStream {
    tcp: TcpStream,
    framer: Framer,
    pub header: Option<StreamHeader>,
}

impl RawStream {
    pub async fn connect(addr: SocketAddr) -> RawStream {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        RawStream {
            tcp,
            framer: Framer::new(Limits {
                max_stanza_bytes: 16 * 1024 * 1024,
                max_depth: 64,
                max_attributes: 64,
            }),
            header: None,
        }
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

/// Opens an s2s stream to `addr` as `from` → `to` and reads the header and features.
pub async fn s2s_stream(addr: SocketAddr, from: &str, to: &str) -> (RawStream, String) {
    let mut s = RawStream::connect(addr).await;
    s.send(&format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'>"
    ))
    .await;
    let header = s.expect_header().await;
    let features = s.next().await;
    assert_eq!(features.name(), "features");
    (s, header.id.expect("stream id"))
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

/// Payload bytes of a stanza, for byte-exact comparisons.
pub fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap()
}
