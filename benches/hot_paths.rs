//! Criterion benches for the per-stanza hot paths: framing, pass-through between stream
//! contexts, dialback keys and component handshakes, the router's JID domain lookup, metrics,
//! and the inbound byte rate limit's cost per read.
//!
//! Run: `cargo bench --bench hot_paths` (add `-- --warm-up-time 1 --measurement-time 3` for a
//! quick pass). The dev VM is noisy: compare only runs made on the same machine.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use fedgate::dialback::{component_handshake, DialbackSecret};
use fedgate::jid::{check_parts, domain_of};
use fedgate::xml::framer::{Event, Framer, Limits};
use fedgate::xml::stanza::{NsContext, Stanza};

/// What a remote server opens its s2s stream with.
const S2S_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    from='a.example' to='b.example' id='5e1d1c4ab9d04f7c' version='1.0'>";

/// Stanzas per framed batch.
const BATCH: usize = 64;

/// A realistic one-to-one chat message of about 200 bytes; `i` varies the id.
fn message(i: usize) -> String {
    format!(
        "<message from='juliet@a.example/balcony' to='romeo@b.example/orchard' type='chat' \
         id='m{i:06}'><body>Wherefore art thou, Romeo? &amp; \u{2603}</body>\
         <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
}

fn framer(c: &mut Criterion) {
    let batch: Vec<u8> = (0..BATCH).flat_map(|i| message(i).into_bytes()).collect();
    let mut group = c.benchmark_group("framer");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("messages_x{BATCH}_{}B", batch.len() / BATCH), |b| {
        // One stream for the whole run, as on a long-lived s2s session: the header is parsed
        // once, then every iteration feeds one read's worth of stanzas and drains them.
        let mut framer = Framer::new(Limits::default());
        framer.feed(S2S_HEADER.as_bytes());
        assert!(matches!(
            framer.next_event(),
            Ok(Some(Event::StreamOpen(_)))
        ));
        b.iter(|| {
            framer.read_buf().extend_from_slice(&batch);
            let mut n = 0;
            while let Some(event) = framer.next_event().expect("well-formed") {
                black_box(event);
                n += 1;
            }
            assert_eq!(n, BATCH);
        });
    });
    group.finish();
}

/// Frames one stanza on an s2s stream, as the inbound session receives it.
fn received(stanza: &str) -> Stanza {
    let mut framer = Framer::new(Limits::default());
    framer.feed(S2S_HEADER.as_bytes());
    framer.feed(stanza.as_bytes());
    assert!(matches!(
        framer.next_event(),
        Ok(Some(Event::StreamOpen(_)))
    ));
    match framer.next_event() {
        Ok(Some(Event::Stanza(s))) => s,
        other => panic!("expected a stanza, got {other:?}"),
    }
}

fn bytes_for(c: &mut Criterion) {
    let component = NsContext::component();
    let portable = received(&message(1));
    assert!(portable.is_portable_to(&component));
    assert_eq!(portable.bytes_for(&component), portable.raw());

    // Pins the source namespace: the start tag has to be rebuilt for the component stream.
    let pinned = received(&message(2).replacen("<message ", "<message xmlns='jabber:server' ", 1));
    assert!(!pinned.is_portable_to(&component));
    let rebuilt = pinned.bytes_for(&component);
    assert!(rebuilt.starts_with(b"<message xmlns='jabber:component:accept' "));
    // The same stanza built outside a stream takes the same path.
    let parsed = Stanza::parse(Bytes::copy_from_slice(pinned.raw()), &NsContext::server())
        .expect("stanza parses");
    assert_eq!(parsed.bytes_for(&component), rebuilt);

    let mut group = c.benchmark_group("bytes_for");
    group.throughput(Throughput::Elements(1));
    group.bench_function("pass_through", |b| {
        b.iter(|| black_box(&portable).bytes_for(black_box(&component)))
    });
    group.bench_function("rebuild_xmlns_jabber_server", |b| {
        b.iter(|| black_box(&pinned).bytes_for(black_box(&component)))
    });
    group.finish();
}

fn dialback(c: &mut Criterion) {
    let secret = DialbackSecret::from_bytes(b"8f4c2b6e0d1a3957c8e2f4a6b0d2e4f6");
    let stream_id = "d2a5c3f0e1b44c7a9e8d6b5a4c3b2a19";
    let key = secret.key("b.example", "a.example", stream_id);
    assert!(secret.verify("b.example", "a.example", stream_id, &key));

    let mut group = c.benchmark_group("dialback");
    group.throughput(Throughput::Elements(1));
    group.bench_function("key", |b| {
        b.iter(|| {
            black_box(&secret).key(
                black_box("b.example"),
                black_box("a.example"),
                black_box(stream_id),
            )
        })
    });
    group.bench_function("verify", |b| {
        b.iter(|| {
            black_box(&secret).verify(
                black_box("b.example"),
                black_box("a.example"),
                black_box(stream_id),
                black_box(&key),
            )
        })
    });
    group.bench_function("component_handshake", |b| {
        b.iter(|| component_handshake(black_box(stream_id), black_box("component-secret")))
    });
    group.finish();
}

fn jid(c: &mut Criterion) {
    let mut group = c.benchmark_group("jid");
    group.throughput(Throughput::Elements(1));
    // Already canonical: one scan, borrowed, no allocation.
    let typical = "juliet@capulet.example/balcony";
    assert!(matches!(
        domain_of(typical),
        Ok(std::borrow::Cow::Borrowed("capulet.example"))
    ));
    group.bench_function("domain_of_full", |b| {
        b.iter(|| domain_of(black_box(typical)).map(|d| d.len()))
    });
    // Needs case folding: an owned copy.
    let upper = "Juliet@CAPULET.Example/Balcony";
    assert_eq!(domain_of(upper).expect("valid"), "capulet.example");
    group.bench_function("domain_of_uppercase", |b| {
        b.iter(|| domain_of(black_box(upper)).map(|d| d.len()))
    });
    // What every routed stanza pays for its 'to' and 'from' on top of domain_of: the ASCII
    // fast path over the localpart and resourcepart; PRECIS only for non-ASCII parts.
    group.bench_function("check_parts_ascii", |b| {
        b.iter(|| check_parts(black_box(typical)))
    });
    let unicode = "jürgen@capulet.example/Küche";
    assert!(check_parts(unicode).is_ok());
    group.bench_function("check_parts_non_ascii", |b| {
        b.iter(|| check_parts(black_box(unicode)))
    });
    group.finish();
}

/// What metrics cost per relayed stanza: on the outbound path, the kind and byte counters, the
/// peer's counter, and the time in queue (a clock read when queued, a local histogram
/// observation when written, flushed per batch of 64).
fn metrics(c: &mut Criterion) {
    use fedgate::metrics::{Direction, Metrics};
    use fedgate::xml::stanza::Kind;
    let metrics = Metrics::register();
    let peer = metrics.peers.open("peer.example", Direction::Outbound);
    let waited = metrics.outbound_queue_seconds.local();
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(64));
    group.bench_function("per_stanza_outbound_x64", |b| {
        b.iter(|| {
            for _ in 0..64 {
                let since = tokio::time::Instant::now();
                metrics
                    .s2s_out
                    .count(Kind::Message, std::hint::black_box(171));
                peer.stanza();
                waited.observe(since.elapsed().as_secs_f64());
            }
            waited.flush();
        })
    });
    group.bench_function("counters_only_x64", |b| {
        b.iter(|| {
            for _ in 0..64 {
                metrics
                    .s2s_out
                    .count(Kind::Message, std::hint::black_box(171));
                peer.stanza();
            }
        })
    });
    group.finish();
}

/// What the inbound byte rate limit adds to a read: whether the bucket allows it, then a
/// clock read and the debit (a bucket that is never in debt, so nothing waits). An unlimited
/// connection skips both (`None`).
fn token_bucket(c: &mut Criterion) {
    use fedgate::connection::TokenBucket;
    use tokio::time::Instant;
    let mut bucket = TokenBucket::new(u64::MAX / 4, u64::MAX / 4, Instant::now());
    let mut group = c.benchmark_group("token_bucket");
    group.throughput(Throughput::Elements(1));
    group.bench_function("per_read", |b| {
        b.iter(|| {
            if let Some(at) = bucket.ready_at() {
                black_box(at);
            }
            bucket.debit(black_box(16 * 1024), Instant::now());
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    framer,
    bytes_for,
    dialback,
    jid,
    metrics,
    token_bucket
);
criterion_main!(benches);
