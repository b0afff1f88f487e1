//! Test support for the core's unit tests: a core with no sockets whose sessions are channels
//! the test reads, so that delivery rules run without a network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{CoreConfig, Database, DomainConfig};
use super::sasl::Credentials;
use super::storage::{self, Storage, StorageMetrics};
use super::{Core, Domains, Queued, SessionHandle};
use crate::jid::Jid;
use crate::tls::Tls;
use crate::xml::stanza::{NsContext, Stanza};
use crate::xml::{ns, Element};

/// A core for `a.test` with no gateway link and no listeners: its sessions are channels
/// the test reads, so delivery rules run without sockets.
pub(crate) async fn test_core(dir: &std::path::Path, users: &[&str]) -> Arc<Core> {
    test_core_with(dir, users, |_| {}).await
}

/// [`test_core`] with its configuration changed by `tweak`.
pub(crate) async fn test_core_with(
    dir: &std::path::Path,
    users: &[&str],
    tweak: impl FnOnce(&mut CoreConfig),
) -> Arc<Core> {
    let mut config = CoreConfig {
        database: Database::Sqlite(dir.join("core.sqlite")),
        domain: vec![DomainConfig {
            name: "a.test".into(),
            aliases: Vec::new(),
        }],
        session_queue: 4,
        ..CoreConfig::default()
    };
    tweak(&mut config);
    let tls = Tls::from_tls_config(&crate::config::TlsConfig {
        webpki_roots: false,
        ca_files: Vec::new(),
        certificate: Vec::new(),
    })
    .unwrap();
    let storage = Storage::open(&config.database, StorageMetrics::unregistered()).unwrap();
    for u in users {
        let u = u.to_string();
        storage
            .call(move |c| {
                storage::create_account(c, &u, "a.test", &Credentials::derive("pw", 4096))
            })
            .await
            .unwrap();
    }
    Arc::new(Core {
        domains: Domains::from_config(&config),
        config,
        storage,
        tls: Arc::new(tls),
        links: HashMap::new(),
        sessions: Mutex::new(HashMap::new()),
        resume_table: Default::default(),
        offline: Default::default(),
        disco_items: Vec::new(),
        caps: Default::default(),
        blocklists: Default::default(),
        started: std::time::Instant::now(),
        registrations: Default::default(),
        shutdown: CancellationToken::new(),
    })
}

/// The text of what a session's queue holds, oldest first.
pub(crate) fn drain(rx: &mut mpsc::Receiver<Queued>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(q) = rx.try_recv() {
        out.push(String::from_utf8(q.bytes.to_vec()).unwrap());
    }
    out
}

/// A session bound to `jid`, available with priority 0, whose queue holds `queue` stanzas.
pub(crate) fn session(
    core: &Core,
    jid: &str,
    queue: usize,
) -> (
    Arc<SessionHandle>,
    CancellationToken,
    mpsc::Receiver<Queued>,
) {
    let (tx, rx) = mpsc::channel(queue);
    let jid = Jid::parse(jid).unwrap();
    let account = jid.bare().to_string();
    let (handle, kick) = core.register(jid, account, tx);
    handle.presence().available = true;
    (handle, kick, rx)
}

pub(crate) async fn offline(core: &Core, account: &str) -> Vec<String> {
    let owner = account.to_owned();
    core.storage
        .call(move |c| storage::offline_messages(c, &owner))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, b)| String::from_utf8(b).unwrap())
        .collect()
}

pub(crate) fn ids(stanzas: &[String], name: &str) -> Vec<String> {
    stanzas
        .iter()
        .filter(|s| s.starts_with(&format!("<{name} ")))
        .map(|s| client_el(s).attr("id").unwrap_or_default().to_owned())
        .collect()
}

pub(crate) fn client_el(raw: &str) -> Element {
    let s = Stanza::parse(
        Bytes::from(raw.to_owned()),
        &NsContext::new(ns::CLIENT, &[]),
    )
    .unwrap();
    s.element().unwrap()
}
