//! `fedgate services`: `[muc]` and `[upload]` as their own process, attached to a gateway over
//! TCP as `[[component.backend]]`s: a room is joined and a file goes up and comes back down.

use std::net::SocketAddr;

use crate::binary::{spawn_command, wait_for_line, KillOnDrop};
use crate::certs::{ca, CertSpec};
use crate::core::assert_eventually;
use crate::harness::*;
use crate::upload::{attr, https, path_of};

const SECRET: &str = "services-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_run_as_their_own_process_behind_the_gateway() {
    let dns = TestDns::start().await;
    let gw = instance(&dns, "a.test")
        .backend("conference.a.test", SECRET)
        .backend("upload.a.test", SECRET)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca().issue(
        &CertSpec::for_names(&["upload.a.test"]),
        dir.path(),
        "upload",
    );
    let upload_port = free_port();
    let file = dir.path().join("services.toml");
    std::fs::write(
        &file,
        format!(
            "[muc]\ndomain = \"conference.a.test\"\n\
             [upload]\ndomain = \"upload.a.test\"\nlisten = \"127.0.0.1:{upload_port}\"\ndirectory = \"files\"\nallow_domains = [\"a.test\"]\n\
             [storage]\ndatabase = \"rooms.sqlite\"\n\
             [gateway]\naddress = \"{}\"\nsecret = \"{SECRET}\"\n\
             [tls]\nca_files = [{:?}]\n[[tls.certificate]]\ndomains = [\"upload.a.test\"]\ncert = {:?}\nkey = {:?}\n",
            gw.gw().component_addr,
            ca().ca_file.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        ),
    )
    .unwrap();
    let (child, lines) = spawn_command(&["services", "--config"], &file);
    let _kill = KillOnDrop(Some(child));
    let ready =
        tokio::task::spawn_blocking(move || wait_for_line(&lines, "fedgate services ready"))
            .await
            .unwrap();
    assert!(
        ready.contains("conference.a.test, upload.a.test"),
        "{ready}"
    );
    assert_eventually(|| gw.gw().router.component_attached("conference.a.test")).await;
    assert_eventually(|| gw.gw().router.component_attached("upload.a.test")).await;

    // A user of a.test (its backend here) joins a room and gets its own presence back.
    let mut a = gw.backend().await;
    a.send("<presence from='alice@a.test/r' to='room@conference.a.test/Alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    let joined = a.next_text().await;
    assert!(
        joined.contains("from='room@conference.a.test/Alice'"),
        "{joined}"
    );
    assert!(joined.contains("<status code='110'/>"), "{joined}");

    // A slot, a PUT over HTTPS, the same bytes back.
    a.send("<iq from='alice@a.test/r' to='upload.a.test' type='get' id='slot'><request xmlns='urn:xmpp:http:upload:0' filename='hi.txt' size='5' content-type='text/plain'/></iq>")
        .await;
    let slot = loop {
        let t = a.next_text().await;
        if t.contains("id='slot'") {
            break t;
        }
    };
    assert!(slot.contains("type='result'"), "{slot}");
    let put = attr(&slot, "put", "url").unwrap();
    let get = attr(&slot, "get", "url").unwrap();
    let authorization = slot
        .split("name='Authorization'>")
        .nth(1)
        .and_then(|h| h.split("</header>").next())
        .unwrap()
        .to_owned();
    let addr = SocketAddr::from(([127, 0, 0, 1], upload_port));
    let put = https(
        addr,
        &format!("PUT {}", path_of(&put)),
        &[
            &format!("Authorization: {authorization}"),
            "Content-Type: text/plain",
            "Content-Length: 5",
        ],
        b"hello",
    )
    .await;
    assert_eq!(put.status, 201);
    let got = https(addr, &format!("GET {}", path_of(&get)), &[], b"").await;
    assert_eq!((got.status, got.body.as_slice()), (200, &b"hello"[..]));
}
