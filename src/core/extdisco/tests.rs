//! XEP-0215, driven without sockets.

use std::sync::Arc;

use super::*;
use crate::config::Secret;
use crate::core::testing::*;

#[test]
fn turn_credentials_follow_the_coturn_rest_scheme() {
    // HMAC-SHA1("north", "1700000000:alice@a.test"), base64 (computed independently).
    assert_eq!(
        turn_credentials("north", "alice@a.test", 1_700_000_000),
        (
            "1700000000:alice@a.test".to_owned(),
            "H2wo+dTjC8cxASETyrENZo+UISE=".to_owned()
        )
    );
}

fn svc(host: &str, type_: Option<&str>, secret: Option<&str>) -> ExternalService {
    ExternalService {
        host: host.into(),
        port: None,
        transport: "udp".into(),
        type_: type_.map(str::to_owned),
        secret: secret.map(Secret::new),
    }
}

#[tokio::test]
async fn services_and_credentials_for_local_accounts_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = test_core(dir.path(), &["alice"]).await;
    {
        let c = &mut Arc::get_mut(&mut core).unwrap().config;
        c.stun = vec![svc("stun.a.test", None, None)];
        c.turn = vec![
            svc("turn.a.test", None, Some("north")),
            svc("turns.a.test", Some("turns"), None),
        ];
    }
    let (_alice, _, mut rx) = session(&core, "alice@a.test/r", 16);
    let ask = |payload: &str| {
        client_el(&format!(
            "<iq from='alice@a.test/r' to='a.test' type='get' id='x'>{payload}</iq>"
        ))
    };
    core.route(ask("<services xmlns='urn:xmpp:extdisco:2'/>"))
        .await;
    let got = drain(&mut rx);
    let r = client_el(&got[0]);
    let services: Vec<&Element> = r
        .child("services", NS_EXTDISCO)
        .unwrap()
        .children()
        .collect();
    assert_eq!(services.len(), 3, "{got:?}");
    assert_eq!(
        (
            services[0].attr("host"),
            services[0].attr("port"),
            services[0].attr("type")
        ),
        (Some("stun.a.test"), Some("3478"), Some("stun"))
    );
    assert_eq!(services[0].attr("username"), None);
    assert_eq!(services[2].attr("port"), Some("5349"));
    // The TURN server with a secret: credentials that coturn will accept until `expires`.
    let turn = services[1];
    let username = turn.attr("username").unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice@a.test");
    let expiry: u64 = expiry.parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 24 * 3600 - 5..=now + 24 * 3600 + 5).contains(&expiry),
        "{expiry}"
    );
    assert_eq!(
        turn.attr("password").unwrap(),
        turn_credentials("north", "alice@a.test", expiry).1
    );
    assert!(humantime::parse_rfc3339(turn.attr("expires").unwrap()).is_ok());
    // Filtered by type.
    core.route(ask("<services xmlns='urn:xmpp:extdisco:2' type='turn'/>"))
        .await;
    let got = drain(&mut rx);
    assert!(
        got[0].contains("turn.a.test") && !got[0].contains("stun.a.test"),
        "{got:?}"
    );
    // Credentials for one service; an unknown one is item-not-found.
    core.route(ask("<credentials xmlns='urn:xmpp:extdisco:2'><service host='turn.a.test' type='turn'/></credentials>")).await;
    let got = drain(&mut rx);
    assert!(
        got[0].contains("<credentials ") && got[0].contains("password="),
        "{got:?}"
    );
    core.route(ask("<credentials xmlns='urn:xmpp:extdisco:2'><service host='nope.a.test' type='turn'/></credentials>")).await;
    assert!(drain(&mut rx)[0].contains("<item-not-found "));
    // Only our own accounts are answered: not a remote server's user, nor a bare domain.
    let j = |s: &str| Jid::parse(s).unwrap();
    assert_eq!(
        core.extdisco_user(Some(&j("alice@a.test/r"))).as_deref(),
        Some("alice@a.test")
    );
    assert_eq!(core.extdisco_user(Some(&j("mallory@b.test/r"))), None);
    assert_eq!(core.extdisco_user(Some(&j("a.test"))), None);
    assert_eq!(core.extdisco_user(None), None);
}
