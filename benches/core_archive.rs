//! The core's message archive (XEP-0313, `fedgate::core::mam::store`) at scale: one account
//! with 1,000,000 archived messages in a SQLite file, as the core keeps it (WAL), and
//! - a query for a page of 50: the newest page (RSM `<before/>`), a page after an id half way
//!   into the archive, and the same two with a `with` filter (a peer with a tenth of the
//!   messages); and for each, what the XEP-0059 `<count/>` and `<first index/>` of its
//!   answer cost (`store::position`);
//! - archiving one message per transaction, with `synchronous=FULL` and as the core does it
//!   (`store::archive_now`: the commit does not wait for an fsync), for each message it
//!   delivers or a client sends (a message between two local accounts is archived twice:
//!   once for the sender, once for the recipient).
//!
//! - c2s messages a second between two local accounts over real c2s streams (STARTTLS,
//!   PLAIN), each account with a second, carbons-enabled resource: every message is archived
//!   for both and copied to both second resources (`C2S_MESSAGES`, default 20000;
//!   `C2S_ONLY=1` runs only this part, `ARCHIVE_OFF=1` sets both accounts' archiving
//!   preferences to `never`, for a comparison; `DATABASE=postgres://USER@HOST/DB` runs the
//!   core on PostgreSQL, an empty database, for a comparison with SQLite);
//! - then c2s sign-ins a second (`C2S_SIGNINS`, default 1,000, `SIGNIN_CONCURRENCY` at a
//!   time, default 8): STARTTLS, SASL PLAIN, bind, presence and carbons, as a client signs in.
//!
//! The archive is filled once, in one transaction (the time it took is printed), and kept in
//! a temporary folder for the run. Next to the rates it prints the process's CPU time
//! (getrusage) and resident memory (VmRSS, VmHWM).
//!
//! Run: `cargo bench --bench core_archive -- --warm-up-time 1 --measurement-time 3`. The
//! dev VM is noisy: compare only runs made on the same machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};

use fedgate::core::config::Database;
use fedgate::core::mam::store::{self, ArchiveId, ArchiveLimits, NewMessage, Query, With};
use fedgate::core::storage::{open_db, Db};

const MESSAGES: usize = 1_000_000;
const PEERS: usize = 10;
const OWNER: &str = "bob@a.example";
const PAGE: usize = 50;

const LIMITS: ArchiveLimits = ArchiveLimits {
    retention: Duration::from_secs(10 * 365 * 24 * 3600),
    max_messages: 2 * MESSAGES,
};

#[repr(C)]
struct Timeval {
    tv_sec: i64,
    tv_usec: i64,
}

/// `struct rusage` of Linux (x86_64 and aarch64): two timevals, then 14 longs.
#[repr(C)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    rest: [i64; 14],
}

extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

/// User and system CPU time of this process so far.
fn cpu() -> (Duration, Duration) {
    let mut u = Rusage {
        utime: Timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        stime: Timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        rest: [0; 14],
    };
    // SAFETY: RUSAGE_SELF (0) with a pointer to a struct of the kernel's layout.
    unsafe { getrusage(0, &mut u) };
    let d = |t: &Timeval| Duration::from_micros((t.tv_sec * 1_000_000 + t.tv_usec) as u64);
    (d(&u.utime), d(&u.stime))
}

/// VmRSS and VmHWM (peak) from /proc/self/status.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(what: &str) {
    let (user, sys) = cpu();
    println!(
        "[{what}] cpu user {:.2}s sys {:.2}s; {}",
        user.as_secs_f64(),
        sys.as_secs_f64(),
        memory()
    );
}

/// The file as the core opens it (WAL, `synchronous=FULL`, migrated).
fn open(path: &std::path::Path) -> Db {
    open_db(&Database::Sqlite(path.to_owned())).unwrap()
}

fn stanza(i: usize, peer: usize) -> String {
    format!(
        "<message xmlns='jabber:client' from='peer{peer}@b.example/phone' to='{OWNER}/desk' \
         type='chat' id='m{i:07}'><body>Message number {i}: wherefore art thou?</body>\
         <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
}

/// 1,000,000 messages for one account, one per millisecond, round-robin over the peers.
/// Returns every id, in order.
fn fill(c: &Db) -> Vec<ArchiveId> {
    let t0 = 1_700_000_000_000_i64;
    let start = Instant::now();
    let tx = c.transaction().unwrap();
    let peers: Vec<(String, String)> = (0..PEERS)
        .map(|p| {
            (
                format!("peer{p}@b.example"),
                format!("peer{p}@b.example/phone"),
            )
        })
        .collect();
    let mut ids = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let (bare, full) = &peers[i % PEERS];
        let s = stanza(i, i % PEERS);
        let m = NewMessage {
            owner: OWNER,
            with_bare: bare,
            with_full: full,
            stanza: s.as_bytes(),
        };
        ids.push(
            store::archive(&tx, &m, &LIMITS, t0 + i as i64)
                .unwrap()
                .unwrap(),
        );
    }
    tx.commit().unwrap();
    let took = start.elapsed();
    println!(
        "filled {MESSAGES} messages in {:.1}s ({:.0} inserts/s in one transaction)",
        took.as_secs_f64(),
        MESSAGES as f64 / took.as_secs_f64()
    );
    ids
}

fn queries(crit: &mut Criterion, c: &Db, ids: &[ArchiveId]) {
    let deep = ids[MESSAGES / 2];
    let with = Some(With::Bare("peer3@b.example".into()));
    let cases = [
        (
            "newest_page",
            Query {
                backwards: true,
                max: PAGE,
                ..Query::default()
            },
        ),
        (
            "after_id_half_way",
            Query {
                after: Some(deep.key),
                max: PAGE,
                ..Query::default()
            },
        ),
        (
            "with_newest_page",
            Query {
                with: with.clone(),
                backwards: true,
                max: PAGE,
                ..Query::default()
            },
        ),
        (
            "with_after_id_half_way",
            Query {
                with,
                after: Some(deep.key),
                max: PAGE,
                ..Query::default()
            },
        ),
    ];
    let mut group = crit.benchmark_group("archive_query_1M");
    group.throughput(Throughput::Elements(PAGE as u64));
    for (name, q) in &cases {
        let page = store::query(c, OWNER, q, 0).unwrap();
        assert_eq!(page.items.len(), PAGE, "{name}");
        group.bench_function(format!("{name}_page_of_{PAGE}"), |b| {
            b.iter(|| {
                // What a query costs the core: the id check, then the page.
                assert!(store::exists(c, OWNER, deep).unwrap());
                black_box(store::query(c, OWNER, q, 0).unwrap())
            })
        });
    }
    group.finish();
    // What the answer's XEP-0059 <count/> and <first index/> add to each query.
    let mut group = crit.benchmark_group("archive_position_1M");
    for (name, q) in &cases {
        let page = store::query(c, OWNER, q, 0).unwrap();
        let p = store::position(c, OWNER, q, 0, &page).unwrap();
        println!(
            "{name}: count {:?}, first index {:?}",
            p.count, p.first_index
        );
        group.bench_function(format!("{name}_count_and_index"), |b| {
            b.iter(|| black_box(store::position(c, OWNER, q, 0, &page).unwrap()))
        });
    }
    group.finish();
    report("after the queries");
}

fn inserts(crit: &mut Criterion, c: &Db) {
    let mut group = crit.benchmark_group("archive_insert_1M");
    group.throughput(Throughput::Elements(1));
    let s = stanza(0, 1);
    let mut now = 1_800_000_000_000_i64;
    group.bench_function("one_message_per_transaction_sync_full", |b| {
        b.iter(|| {
            now += 1;
            let tx = c.transaction().unwrap();
            let m = NewMessage {
                owner: OWNER,
                with_bare: "peer1@b.example",
                with_full: "peer1@b.example/phone",
                stanza: s.as_bytes(),
            };
            black_box(store::archive(&tx, &m, &LIMITS, now).unwrap());
            tx.commit().unwrap();
        })
    });
    // The core's own path: store::archive_now.
    group.bench_function("archive_now_as_the_core_does", |b| {
        b.iter(|| {
            now += 1;
            let m = NewMessage {
                owner: OWNER,
                with_bare: "peer1@b.example",
                with_full: "peer1@b.example/phone",
                stanza: s.as_bytes(),
            };
            black_box(store::archive_now(c, &m, &LIMITS, now).unwrap());
        })
    });
    group.finish();
    report("after the inserts");
}

fn main() {
    let c2s_messages = std::env::var("C2S_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    if std::env::var_os("C2S_ONLY").is_some() {
        return c2s::run(c2s_messages);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("archive.sqlite");
    let c = open(&path);
    report("start");
    let ids = fill(&c);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dir.path().join("archive.sqlite-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!("database file: {:.0} MiB", size as f64 / (1024.0 * 1024.0));
    report("after the fill");
    let mut crit = Criterion::default().configure_from_args();
    queries(&mut crit, &c, &ids);
    inserts(&mut crit, &c);
    crit.final_summary();
    drop(c);
    drop(dir);
    c2s::run(c2s_messages);
}

mod c2s {
    //! Messages a second between two local accounts over real c2s streams (STARTTLS, PLAIN),
    //! each with a second resource that has carbons on, so that every message is archived
    //! twice and copied twice.

    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use base64::Engine as _;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpStream;

    use fedgate::component::client::Target;
    use fedgate::config::TlsConfig;
    use fedgate::core::accounts::Accounts;
    use fedgate::core::config::{CoreConfig, Database, DomainConfig};
    use fedgate::core::GatewayLink;
    use fedgate::tls::Tls;

    const DOMAIN: &str = "a.example";

    trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

    fn header() -> String {
        format!(
            "<?xml version='1.0'?><stream:stream to='{DOMAIN}' xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        )
    }

    /// Reads until `want` has arrived.
    async fn until(s: &mut (impl AsyncRead + Unpin), want: &str) {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(want) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "stream closed waiting for {want}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    }

    /// A bound, available session of `user` on `resource`, carbons enabled.
    async fn session(
        addr: std::net::SocketAddr,
        connector: &tokio_rustls::TlsConnector,
        user: &str,
        resource: &str,
    ) -> Box<dyn Io> {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.write_all(header().as_bytes()).await.unwrap();
        until(&mut tcp, "</stream:features>").await;
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .unwrap();
        until(&mut tcp, "<proceed").await;
        let mut s = connector
            .connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
            .await
            .unwrap();
        s.write_all(header().as_bytes()).await.unwrap();
        until(&mut s, "</stream:features>").await;
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw"));
        s.write_all(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        until(&mut s, "<success").await;
        s.write_all(header().as_bytes()).await.unwrap();
        until(&mut s, "</stream:features>").await;
        // ARCHIVE_OFF=1: the accounts' preferences say never, for a comparison.
        let prefs = if std::env::var_os("ARCHIVE_OFF").is_some() {
            "<iq type='set' id='p'><prefs xmlns='urn:xmpp:mam:2' default='never'/></iq>"
        } else {
            ""
        };
        s.write_all(
            format!(
                "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                 <resource>{resource}</resource></bind></iq><presence/>\
                 {prefs}<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        until(&mut s, "id='c'").await;
        Box::new(s)
    }

    /// Reads until `count` occurrences of `marker` have arrived.
    async fn count(mut s: Box<dyn Io>, marker: &'static str, count: usize) -> Box<dyn Io> {
        let m = marker.as_bytes();
        let mut seen = 0;
        let mut carry: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while seen < count {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream closed after {seen} of {count}");
            carry.extend_from_slice(&buf[..n]);
            seen += carry.windows(m.len()).filter(|w| *w == m).count();
            let keep = carry.len().saturating_sub(m.len() - 1);
            carry.drain(..keep);
        }
        s
    }

    pub fn run(messages: usize) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let cert = dir.path().join("core.crt");
            let tls_config = TlsConfig {
                webpki_roots: false,
                ca_files: Vec::new(),
                certificate: vec![toml::from_str(&format!(
                    "domains = [{DOMAIN:?}]\ncert = {:?}\nkey = {:?}\nself_signed = true\n",
                    cert.display().to_string(),
                    dir.path().join("core.key").display().to_string()
                ))
                .unwrap()],
            };
            let tls = Arc::new(Tls::from_tls_config(&tls_config).unwrap());
            let config = CoreConfig {
                listen: vec!["127.0.0.1:0".parse().unwrap()],
                direct_tls_listen: Vec::new(),
                allow_plain: true,
                // DATABASE=postgres://… runs the core on PostgreSQL instead.
                database: std::env::var("DATABASE").map_or_else(
                    |_| Database::Sqlite(dir.path().join("core.sqlite")),
                    |d| Database::parse(&d),
                ),
                domain: vec![DomainConfig {
                    name: DOMAIN.into(),
                    aliases: Vec::new(),
                }],
                ..CoreConfig::default()
            };
            let accounts = Accounts::open(&config).unwrap();
            for u in ["alice", "bob"] {
                accounts.add(&format!("{u}@{DOMAIN}"), "pw").unwrap();
            }
            drop(accounts);
            // No gateway: the link retries in the background; local messages do not need it.
            let link = GatewayLink {
                gateways: vec![Target::Tcp("127.0.0.1:9".parse().unwrap())],
                secrets: HashMap::from([(DOMAIN.to_string(), "s".to_string())]),
                neighbours: Vec::new(),
                acks: Default::default(),
            };
            let registry = prometheus::Registry::new();
            let core = fedgate::core::start(&config, tls, link, &registry)
                .await
                .unwrap();
            let addr = core.c2s_addrs[0];
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(&cert).unwrap())
                .unwrap();
            let client = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let mut alice = session(addr, &connector, "alice", "r1").await;
            let alice2 = session(addr, &connector, "alice", "r2").await;
            let bob = session(addr, &connector, "bob", "r1").await;
            let bob2 = session(addr, &connector, "bob", "r2").await;
            // Each carbon holds the original: r2 of each account sees `</body>` once a message.
            let readers = [
                tokio::spawn(count(bob, "</body>", messages)),
                tokio::spawn(count(alice2, "</body>", messages)),
                tokio::spawn(count(bob2, "</body>", messages)),
            ];
            let (u0, s0) = super::cpu();
            let t0 = Instant::now();
            let mut batch = String::new();
            for i in 0..messages {
                batch.push_str(&format!(
                    "<message to='bob@{DOMAIN}/r1' type='chat' id='m{i}'>\
                     <body>message {i}: wherefore art thou?</body></message>"
                ));
                if i % 64 == 63 || i == messages - 1 {
                    alice.write_all(batch.as_bytes()).await.unwrap();
                    batch.clear();
                }
            }
            for r in readers {
                tokio::time::timeout(Duration::from_secs(600), r)
                    .await
                    .expect("every message arrives")
                    .unwrap();
            }
            let took = t0.elapsed();
            let (u1, s1) = super::cpu();
            println!(
                "c2s: {messages} messages alice/r1 -> bob/r1 (carbons to alice/r2 and bob/r2, \
                 {}) in {:.2}s: {:.0} messages/s; cpu user {:.2}s sys {:.2}s \
                 ({:.0} us/message); {}",
                if std::env::var_os("ARCHIVE_OFF").is_some() {
                    "archiving off by preference"
                } else {
                    "archived for both"
                },
                took.as_secs_f64(),
                messages as f64 / took.as_secs_f64(),
                (u1 - u0).as_secs_f64(),
                (s1 - s0).as_secs_f64(),
                ((u1 - u0) + (s1 - s0)).as_secs_f64() * 1e6 / messages as f64,
                super::memory()
            );
            signins(addr, &connector).await;
            core.shutdown(Duration::from_secs(2)).await;
        });
    }

    /// `C2S_SIGNINS` (default 1,000) sign-ins of alice, `SIGNIN_CONCURRENCY` (8) at a time,
    /// each as a client does it: TCP, STARTTLS, SASL PLAIN (the password checked against its
    /// stored hash), bind, presence, carbons; then the stream is dropped.
    async fn signins(addr: std::net::SocketAddr, connector: &tokio_rustls::TlsConnector) {
        let env = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(default)
        };
        let n = env("C2S_SIGNINS", 1_000);
        let concurrency = env("SIGNIN_CONCURRENCY", 8).max(1);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (u0, s0) = super::cpu();
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let next = next.clone();
                let connector = connector.clone();
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        drop(session(addr, &connector, "alice", &format!("s{i}")).await);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let took = t0.elapsed();
        let (u1, s1) = super::cpu();
        println!(
            "c2s sign-ins: {n} ({concurrency} at a time) in {:.2}s: {:.0} sign-ins/s; cpu user \
             {:.2}s sys {:.2}s ({:.0} us per sign-in, client side included); {}",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            (u1 - u0).as_secs_f64(),
            (s1 - s0).as_secs_f64(),
            ((u1 - u0) + (s1 - s0)).as_secs_f64() * 1e6 / n as f64,
            super::memory()
        );
    }
}
