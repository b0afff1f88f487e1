//! The core's message archive (XEP-0313, `fedgate::core::mam::store`) at scale: one account
//! with 1,000,000 archived messages in a SQLite file, as the core keeps it (WAL), and
//! - a query for a page of 50: the newest page (RSM `<before/>`), a page after an id half way
//!   into the archive, and the same two with a `with` filter (a peer with a tenth of the
//!   messages);
//! - archiving one message per transaction, with `synchronous=FULL` and as the core does it
//!   (`store::archive_now`: the commit does not wait for an fsync), for each message it
//!   delivers or a client sends (a message between two local accounts is archived twice:
//!   once for the sender, once for the recipient).
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
use rusqlite::Connection;

use fedgate::core::mam::store::{self, ArchiveId, ArchiveLimits, NewMessage, Query, With};
use fedgate::core::storage::migrate;

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

fn open(path: &std::path::Path) -> Connection {
    let mut c = Connection::open(path).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
        .unwrap();
    migrate(&mut c).unwrap();
    c
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
fn fill(c: &mut Connection) -> Vec<ArchiveId> {
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

fn queries(crit: &mut Criterion, c: &Connection, ids: &[ArchiveId]) {
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
    report("after the queries");
}

fn inserts(crit: &mut Criterion, c: &mut Connection) {
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("archive.sqlite");
    let mut c = open(&path);
    report("start");
    let ids = fill(&mut c);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dir.path().join("archive.sqlite-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!("database file: {:.0} MiB", size as f64 / (1024.0 * 1024.0));
    report("after the fill");
    let mut crit = Criterion::default().configure_from_args();
    queries(&mut crit, &c, &ids);
    inserts(&mut crit, &mut c);
    crit.final_summary();
}
