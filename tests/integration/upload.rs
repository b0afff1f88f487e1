//! The XEP-0363 upload service (`[upload]`) run by the gateway, with real sockets: a user of
//! the embedded core (slixmpp, tests/support/client.py) asks for slots with raw iqs, then the
//! test PUTs and GETs over HTTPS, verifying the service's certificate with the test CA.
//!
//! slixmpp's own xep_0363 plugin is not used: it needs aiohttp, which the test machines do
//! not have; the slot request it would send is the one below.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::certs::ca;
use crate::core::{core_with_services, login, Client};
use crate::harness::*;

const UPLOAD: &str = "upload.a.test";
const MAX: u64 = 1000;
const QUOTA: u64 = 1500;

/// A gateway for a.test with the embedded core (accounts alice and bob, password "pw") and
/// the upload service, its files at most [`MAX`] bytes and [`QUOTA`] per account.
async fn deployment(dns: &TestDns) -> Instance {
    deployment_of(dns, "a.test", Some("")).await
}

/// A gateway for `domain` with the embedded core (accounts alice and bob, password "pw")
/// and, with `upload` (extra `[upload]` lines), the service `upload.a.test`. The database
/// and the files are in the instance's own folder.
async fn deployment_of(dns: &TestDns, domain: &str, upload: Option<&str>) -> Instance {
    let services: Vec<(&str, String)> = upload
        .map(|extra| {
            (
                UPLOAD,
                format!("[upload]\ndomain = \"{UPLOAD}\"\nlisten = \"127.0.0.1:0\"\nmax_file_size = {MAX}\nquota = {QUOTA}\n{extra}\n"),
            )
        })
        .into_iter()
        .collect();
    core_with_services(dns, domain, &services, &["alice", "bob"]).await
}

async fn user(a: &Instance, name: &str) -> Client {
    user_at(a, &format!("{name}@a.test")).await
}

async fn user_at(a: &Instance, account: &str) -> Client {
    let addr = a.gw().core.as_ref().unwrap().c2s_addrs[0];
    login(addr, &format!("{account}/r"), "pw")
        .like_a_user()
        .online()
        .await
}
/// A slot as the service gave it.
struct Slot {
    put: String,
    get: String,
    authorization: String,
}

/// The value of attribute `name` in the first `<tag ` of `xml`.
pub(crate) fn attr(xml: &str, tag: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag} "))?;
    let rest = &xml[start..];
    let rest = &rest[..rest.find('>')?];
    let at = rest.find(&format!(" {name}="))? + name.len() + 2;
    let quote = rest[at..].chars().next()?;
    let value = &rest[at + 1..];
    Some(value[..value.find(quote)?].to_owned())
}

/// What the upload tests ask of the shared client.
trait Uploader {
    async fn iq_get(&mut self, to: &str, payload: &str) -> serde_json::Value;
    async fn request_slot(
        &mut self,
        filename: &str,
        size: u64,
        content_type: &str,
    ) -> Result<Slot, serde_json::Value>;
}

impl Uploader for Client {
    /// Sends an iq get of `payload` to `to`; the `iq_result` event.
    async fn iq_get(&mut self, to: &str, payload: &str) -> serde_json::Value {
        self.command(json!({"cmd": "iq", "to": to, "xml": payload, "type": "get"}))
            .await;
        self.expect("iq_result", |_| true).await
    }

    /// Asks the service for a slot (XEP-0363 §4).
    async fn request_slot(
        &mut self,
        filename: &str,
        size: u64,
        content_type: &str,
    ) -> Result<Slot, serde_json::Value> {
        let r = self
            .iq_get(
                UPLOAD,
                &format!(
                    "<request xmlns='urn:xmpp:http:upload:0' filename='{filename}' size='{size}' content-type='{content_type}'/>"
                ),
            )
            .await;
        if r["type"] != "result" {
            return Err(r);
        }
        let xml = r["xml"].as_str().unwrap();
        let header = xml
            .split("name=\"Authorization\">")
            .nth(1)
            .or_else(|| xml.split("name='Authorization'>").nth(1))
            .and_then(|h| h.split("</header>").next())
            .unwrap_or_else(|| panic!("no Authorization header in {xml}"));
        Ok(Slot {
            put: attr(xml, "put", "url").unwrap(),
            get: attr(xml, "get", "url").unwrap(),
            authorization: header.to_owned(),
        })
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The path of `url` after its authority.
pub(crate) fn path_of(url: &str) -> &str {
    let rest = url.strip_prefix("https://").unwrap();
    &rest[rest.find('/').unwrap()..]
}

/// One HTTP/1.1 request over TLS to `addr`, verifying the certificate for `upload.a.test`
/// with the test CA; `head` lines and `body` as given, the connection closed after it.
pub(crate) async fn https(
    addr: SocketAddr,
    request_line: &str,
    head: &[&str],
    body: &[u8],
) -> Response {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca().ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(UPLOAD.to_owned()).unwrap(), tcp)
        .await
        .expect("the upload service's certificate verifies for its host");
    let mut request = format!("{request_line} HTTP/1.1\r\nHost: {UPLOAD}\r\nConnection: close\r\n");
    for h in head {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    tls.flush().await.unwrap();
    let mut raw = Vec::new();
    // The server may close without a TLS close_notify after a refusal: what was read counts.
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut raw)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn put(
    addr: SocketAddr,
    slot: &Slot,
    auth: &str,
    content_type: &str,
    body: &[u8],
) -> Response {
    https(
        addr,
        &format!("PUT {}", path_of(&slot.put)),
        &[
            &format!("Authorization: {auth}"),
            &format!("Content-Type: {content_type}"),
            &format!("Content-Length: {}", body.len()),
        ],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_uploads_a_file_and_gets_it_back_byte_identical_with_its_headers() {
    let dns = TestDns::start().await;
    let a = deployment(&dns).await;
    let addr = a.gw().upload_addr.expect("the upload listener");
    let mut alice = user(&a, "alice").await;

    // The service is found in the server's disco#items, and says its limit.
    let items = alice
        .iq_get(
            "a.test",
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await;
    assert!(items["xml"].as_str().unwrap().contains(UPLOAD), "{items}");
    let info = alice
        .iq_get(
            UPLOAD,
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await;
    let info = info["xml"].as_str().unwrap();
    assert!(info.contains("urn:xmpp:http:upload:0"), "{info}");
    assert!(info.contains(&format!("<value>{MAX}</value>")), "{info}");

    let bytes: Vec<u8> = (0..MAX).map(|i| (i * 7 % 251) as u8).collect();
    let slot = alice
        .request_slot("cat photo.png", MAX, "image/png")
        .await
        .unwrap();
    assert!(slot
        .put
        .starts_with(&format!("https://{UPLOAD}:{}/", addr.port())));
    assert!(slot.put.ends_with("/cat%20photo.png"), "{}", slot.put);
    let stored = put(addr, &slot, &slot.authorization, "image/png", &bytes).await;
    assert_eq!(stored.status, 201, "{stored:?}");
    assert_eq!(stored.header("Access-Control-Allow-Origin"), Some("*"));

    // Anyone with the URL gets the bytes back, with their type and the headers web clients
    // need.
    let got = https(addr, &format!("GET {}", path_of(&slot.get)), &[], b"").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.body, bytes, "byte-identical");
    assert_eq!(got.header("Content-Type"), Some("image/png"));
    assert_eq!(got.header("Content-Length"), Some("1000"));
    assert_eq!(
        got.header("Content-Disposition"),
        Some("inline; filename*=UTF-8''cat%20photo.png")
    );
    assert_eq!(got.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(got.header("X-Content-Type-Options"), Some("nosniff"));
    let head = https(addr, &format!("HEAD {}", path_of(&slot.get)), &[], b"").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some("1000"));
    assert!(head.body.is_empty());

    // The CORS preflight a browser sends before its PUT.
    let preflight = https(
        addr,
        &format!("OPTIONS {}", path_of(&slot.put)),
        &[
            "Origin: https://web.example",
            "Access-Control-Request-Method: PUT",
            "Access-Control-Request-Headers: authorization, content-type",
        ],
        b"",
    )
    .await;
    assert!(matches!(preflight.status, 200 | 204), "{preflight:?}");
    let methods = preflight.header("Access-Control-Allow-Methods").unwrap();
    assert!(
        methods.contains("PUT") && methods.contains("GET"),
        "{methods}"
    );
    let allowed = preflight.header("Access-Control-Allow-Headers").unwrap();
    assert!(
        allowed.contains("Authorization") && allowed.contains("Content-Type"),
        "{allowed}"
    );

    // A second PUT to the same URL, an unknown URL, another method.
    let again = put(addr, &slot, &slot.authorization, "image/png", &bytes).await;
    assert_eq!(again.status, 409, "{again:?}");
    let unknown = path_of(&slot.get).replace("cat%20photo", "dog");
    let missing = https(addr, &format!("GET {unknown}"), &[], b"").await;
    assert_eq!(missing.status, 404);
    let delete = https(addr, &format!("DELETE {}", path_of(&slot.get)), &[], b"").await;
    assert_eq!(delete.status, 405);

    // A script type is offered as a download, not shown.
    let html = alice
        .request_slot("page.html", 5, "text/html")
        .await
        .unwrap();
    let stored = put(addr, &html, &html.authorization, "text/html", b"<b/>x").await;
    assert_eq!(stored.status, 201, "{stored:?}");
    let got = https(addr, &format!("GET {}", path_of(&html.get)), &[], b"").await;
    assert!(
        got.header("Content-Disposition")
            .unwrap()
            .starts_with("attachment;"),
        "{got:?}"
    );

    let metrics = a.metrics().await;
    assert!(
        metrics.contains("fedgate_upload_files_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fedgate_upload_bytes_total 1005"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fedgate_upload_refusals_total{reason=\"conflict\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_does_not_match_its_slot_gets_the_status_of_what_it_broke() {
    let dns = TestDns::start().await;
    let a = deployment(&dns).await;
    let addr = a.gw().upload_addr.unwrap();
    let mut alice = user(&a, "alice").await;
    let slot = alice
        .request_slot("notes.txt", 10, "text/plain")
        .await
        .unwrap();
    let ten = b"0123456789";

    let longer = put(
        addr,
        &slot,
        &slot.authorization,
        "text/plain",
        b"0123456789A",
    )
    .await;
    assert_eq!(longer.status, 413, "{longer:?}");
    assert!(String::from_utf8_lossy(&longer.body).contains("10 bytes"));
    let other_type = put(addr, &slot, &slot.authorization, "image/png", ten).await;
    assert_eq!(other_type.status, 415, "{other_type:?}");
    let mut forged = slot.authorization.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let bad_token = put(addr, &slot, &forged, "text/plain", ten).await;
    assert_eq!(bad_token.status, 403, "{bad_token:?}");
    // Another slot's token does not open this one.
    let other = alice
        .request_slot("notes.txt", 10, "text/plain")
        .await
        .unwrap();
    let borrowed = put(addr, &slot, &other.authorization, "text/plain", ten).await;
    assert_eq!(borrowed.status, 403, "{borrowed:?}");
    let no_token = https(
        addr,
        &format!("PUT {}", path_of(&slot.put)),
        &["Content-Type: text/plain", "Content-Length: 10"],
        ten,
    )
    .await;
    assert_eq!(no_token.status, 403);
    let no_length = https(
        addr,
        &format!("PUT {}", path_of(&slot.put)),
        &[
            &format!("Authorization: {}", slot.authorization),
            "Content-Type: text/plain",
            "Transfer-Encoding: chunked",
        ],
        b"a\r\n0123456789\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(no_length.status, 411, "{no_length:?}");

    // None of them stored anything: the slot still takes its file.
    let missing = https(addr, &format!("GET {}", path_of(&slot.get)), &[], b"").await;
    assert_eq!(missing.status, 404);
    let stored = put(
        addr,
        &slot,
        &slot.authorization,
        "text/plain; charset=utf-8",
        ten,
    )
    .await;
    assert_eq!(stored.status, 201, "{stored:?}");
    let got = https(addr, &format!("GET {}", path_of(&slot.get)), &[], b"").await;
    assert_eq!(got.body, ten);

    let metrics = a.metrics().await;
    for (reason, n) in [("token", 3), ("size", 2), ("content_type", 1)] {
        let line = format!("fedgate_upload_refusals_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_over_the_size_limit_or_the_quota_are_refused_with_their_conditions() {
    let dns = TestDns::start().await;
    let a = deployment(&dns).await;
    let addr = a.gw().upload_addr.unwrap();
    let mut alice = user(&a, "alice").await;

    let too_large = alice
        .request_slot("big.bin", MAX + 1, "application/octet-stream")
        .await
        .err()
        .expect("refused");
    assert_eq!(too_large["condition"], "not-acceptable", "{too_large}");
    let xml = too_large["xml"].as_str().unwrap();
    assert!(xml.contains("file-too-large"), "{xml}");
    assert!(
        xml.contains(&format!("<max-file-size>{MAX}</max-file-size>")),
        "{xml}"
    );

    // 1000 of alice's 1500 bytes stored: 600 more do not fit, 500 do; bob has his own.
    let slot = alice
        .request_slot("a.bin", MAX, "application/octet-stream")
        .await
        .unwrap();
    let stored = put(
        addr,
        &slot,
        &slot.authorization,
        "application/octet-stream",
        &vec![1u8; MAX as usize],
    )
    .await;
    assert_eq!(stored.status, 201, "{stored:?}");
    let over = alice
        .request_slot("b.bin", 600, "application/octet-stream")
        .await
        .err()
        .expect("over quota");
    assert_eq!(over["condition"], "resource-constraint", "{over}");
    assert!(
        over["xml"]
            .as_str()
            .unwrap()
            .contains("1500 bytes per account"),
        "{over}"
    );
    // Two slots that each fit, but not both: the PUT that would go over is refused.
    let octets = "application/octet-stream";
    let c = alice.request_slot("c.bin", 500, octets).await.unwrap();
    let d = alice.request_slot("d.bin", 400, octets).await.unwrap();
    let stored = put(addr, &c, &c.authorization, octets, &[2u8; 500]).await;
    assert_eq!(stored.status, 201, "{stored:?}");
    let over = put(addr, &d, &d.authorization, octets, &[3u8; 400]).await;
    assert_eq!(over.status, 413, "{over:?}");
    assert!(
        String::from_utf8_lossy(&over.body).contains("quota"),
        "{over:?}"
    );
    let mut bob = user(&a, "bob").await;
    assert!(bob
        .request_slot("b.bin", 600, "application/octet-stream")
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_other_servers_get_no_slot_unless_their_domain_is_allowed() {
    let dns = TestDns::start().await;
    let a = deployment(&dns).await;
    let b = deployment_of(&dns, "b.test", None).await;
    let mut bob = user_at(&b, "bob@b.test").await;
    // Bob's request goes from b.test's core through both gateways and s2s to the service.
    let refused = bob
        .request_slot("x.bin", 10, "application/octet-stream")
        .await
        .err()
        .expect("a stranger gets no slot");
    assert_eq!(refused["condition"], "forbidden", "{refused}");
    assert!(
        refused["xml"].as_str().unwrap().contains("users of b.test"),
        "{refused}"
    );
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("fedgate_upload_refusals_total{reason=\"forbidden\"} 1"),
        "{metrics}"
    );
    drop((a, bob));

    // Named in allow_domains, the same request gets a slot, and its PUT stores the file.
    let dns = TestDns::start().await;
    let a = deployment_of(
        &dns,
        "a.test",
        Some("allow_domains = [\"a.test\", \"b.test\"]"),
    )
    .await;
    let b = deployment_of(&dns, "b.test", None).await;
    let mut bob = user_at(&b, "bob@b.test").await;
    let slot = bob
        .request_slot("x.bin", 10, "application/octet-stream")
        .await
        .unwrap();
    let addr = a.gw().upload_addr.unwrap();
    let stored = put(
        addr,
        &slot,
        &slot.authorization,
        "application/octet-stream",
        b"0123456789",
    )
    .await;
    assert_eq!(stored.status, 201, "{stored:?}");
}
