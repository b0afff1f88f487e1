//! The chat service's fan-out (`fedgate::muc`): one groupchat message in a room of 100
//! occupants, through `Service::handle` (the rules, the stanza-id, the history) and the
//! serialisation of the 100 copies the service's task writes to the gateway. Sans I/O: what
//! the service costs per message, not the gateway's or the clients' part.
//!
//! Run: `cargo bench --bench muc -- --warm-up-time 1 --measurement-time 3`. The dev VM is
//! noisy: compare only runs made on the same machine.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput};

use fedgate::muc::{MucConfig, Service};
use fedgate::xml::stanza::{NsContext, Stanza};
use fedgate::xml::Element;

const OCCUPANTS: usize = 100;

fn el(xml: &str) -> Element {
    Stanza::parse(Bytes::from(xml.to_owned()), &NsContext::component())
        .unwrap()
        .element()
        .unwrap()
}

/// A configured room with `OCCUPANTS` occupants, the first its owner.
fn room() -> Service {
    let mut s = Service::new(MucConfig {
        domain: "conf.a.test".into(),
        max_occupants: 1000,
        ..MucConfig::default()
    });
    let join = |i: usize| {
        el(&format!(
            "<presence from='user{i}@a.test/r' to='room@conf.a.test/user{i}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
    };
    s.handle(&join(0), 0);
    s.handle(&el("<iq from='user0@a.test/r' to='room@conf.a.test' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"), 0);
    for i in 1..OCCUPANTS {
        s.handle(&join(i), 0);
    }
    assert_eq!(s.counts().occupants, OCCUPANTS);
    s
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut s = room();
    let message = el("<message from='user7@a.test/r' to='room@conf.a.test' type='groupchat' id='m1'><body>Hello everyone, this is a message of ordinary length.</body><origin-id xmlns='urn:xmpp:sid:0' id='abc'/></message>");
    let mut g = c.benchmark_group("muc_fan_out");
    g.throughput(Throughput::Elements(1));
    g.bench_function("groupchat_to_100_occupants_handle", |b| {
        b.iter(|| black_box(s.handle(black_box(&message), 1_000)))
    });
    g.bench_function("groupchat_to_100_occupants_handle_and_serialise", |b| {
        b.iter(|| {
            let out = s.handle(black_box(&message), 1_000);
            let bytes: usize = out.iter().map(|e| e.to_bytes().len()).sum();
            black_box(bytes)
        })
    });
    g.finish();
    c.final_summary();
}
