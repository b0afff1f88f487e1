//! SCRAM-*-PLUS on the core's client streams: channel binding to the TLS connection
//! (`tls-exporter`, RFC 9266; `tls-server-end-point`, RFC 5929), announced with XEP-0440,
//! checked with a SCRAM client written here from RFC 5802 so that each rule can be broken
//! on purpose.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::core::*;
use crate::harness::*;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// A raw stream over STARTTLS up to the SASL features; with what the client saw of TLS.
async fn tls_stream(n: &Node) -> (RawStream, TlsSeen, String) {
    let mut s = RawStream::connect(n.c2s()).await;
    s.send(&client_header("a.test")).await;
    s.expect_header().await;
    s.next().await;
    let seen = s.starttls("a.test", None).await;
    s.send(&client_header("a.test")).await;
    s.expect_header().await;
    let features = s.next_text().await;
    (s, seen, features)
}

/// A SCRAM-SHA-256 exchange for alice/pw with the gs2 header `gs2` and `cbind` after it in
/// `c=`; returns the server's last answer.
async fn scram(s: &mut RawStream, mechanism: &str, gs2: &str, cbind: &[u8]) -> String {
    let bare = "n=alice,r=clientnonce";
    s.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>{}</auth>",
        B64.encode(format!("{gs2}{bare}"))
    ))
    .await;
    let challenge = s.next().await;
    if challenge.name() != "challenge" {
        return text(challenge.raw()).to_owned();
    }
    let server_first =
        String::from_utf8(B64.decode(challenge.element().unwrap().text()).unwrap()).unwrap();
    let attr = |k: &str| {
        server_first
            .split(',')
            .find_map(|a| a.strip_prefix(k))
            .unwrap()
            .to_owned()
    };
    let (nonce, salt, iterations) = (attr("r="), attr("s="), attr("i="));
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2::<Hmac<Sha256>>(
        b"pw",
        &B64.decode(salt).unwrap(),
        iterations.parse().unwrap(),
        &mut salted,
    )
    .unwrap();
    let client_key = hmac(&salted, b"Client Key");
    let mut c = gs2.as_bytes().to_vec();
    c.extend_from_slice(cbind);
    let without_proof = format!("c={},r={nonce}", B64.encode(c));
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&Sha256::digest(&client_key), auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(k, s)| k ^ s)
        .collect();
    s.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(format!("{without_proof},p={}", B64.encode(proof)))
    ))
    .await;
    text(s.next().await.raw()).to_owned()
}

#[tokio::test]
async fn scram_plus_binds_to_this_tls_connection_and_a_downgrade_fails() {
    let dns = TestDns::start().await;
    let n = node(&dns, "a.test", &[]).await;
    n.add_user("alice@a.test", "pw");
    let (mut s, seen, features) = tls_stream(&n).await;
    assert!(
        features.contains("<mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>")
            && features.contains("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/><channel-binding type='tls-server-end-point'/></sasl-channel-binding>"),
        "{features}"
    );
    assert_eq!(seen.version, Some(rustls::ProtocolVersion::TLSv1_3));
    let exporter = seen.exporter.clone().unwrap();
    // Another connection's binding (what a relay in the middle would have): refused.
    let other: Vec<u8> = exporter.iter().map(|b| b ^ 1).collect();
    let answer = scram(&mut s, "SCRAM-SHA-256-PLUS", "p=tls-exporter,,", &other).await;
    assert!(answer.contains("<not-authorized/>"), "{answer}");
    // "y": the client could bind but thinks we do not offer it, while we do: a downgrade.
    let answer = scram(&mut s, "SCRAM-SHA-256", "y,,", b"").await;
    assert!(answer.contains("<not-authorized/>"), "{answer}");
    // -PLUS without binding is malformed.
    let answer = scram(&mut s, "SCRAM-SHA-256-PLUS", "n,,", b"").await;
    assert!(answer.contains("<malformed-request/>"), "{answer}");
    // The right binding succeeds, on a stream of its own (three failures end a stream).
    let (mut s, seen, _) = tls_stream(&n).await;
    let answer = scram(
        &mut s,
        "SCRAM-SHA-256-PLUS",
        "p=tls-exporter,,",
        &seen.exporter.unwrap(),
    )
    .await;
    assert!(answer.starts_with("<success "), "{answer}");
    // tls-server-end-point: the hash of the certificate the server presented (the test CA
    // signs with ECDSA-SHA256, so SHA-256).
    let (mut s, seen, _) = tls_stream(&n).await;
    let end_point = Sha256::digest(&seen.server_cert).to_vec();
    let answer = scram(
        &mut s,
        "SCRAM-SHA-256-PLUS",
        "p=tls-server-end-point,,",
        &end_point,
    )
    .await;
    assert!(answer.starts_with("<success "), "{answer}");
}
