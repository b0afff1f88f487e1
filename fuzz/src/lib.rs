//! Shared helpers of the fuzz targets: framing an input in pieces, and the tree a conforming
//! namespace-aware parser builds (the same oracle as the round-trip property test).

use fedgate::xml::framer::{Event, Framer, Limits};

#[path = "../../tests/integration/xml_tree.rs"]
pub mod xml_tree;

/// A stream header that declares extra prefixes for stanzas to inherit.
pub const SOURCE_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
    xmlns:x='urn:x' xmlns:e='urn:&#xE9;' to='b.example' from='a.example' version='1.0'>";
pub const SERVER_HEADER: &str = "<stream:stream xmlns='jabber:server' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'>";
pub const COMPONENT_HEADER: &str = "<stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams'>";

/// Small limits, so that the fuzzer reaches them.
pub fn limits() -> Limits {
    Limits {
        max_stanza_bytes: 4096,
        max_depth: 8,
        max_attributes: 8,
    }
}

/// The framer's events for `input` fed in the pieces `cuts` (ascending offsets) makes, and
/// its error, if any, as text ([`Framer::frame_in_pieces`]).
pub fn frame(input: &[u8], cuts: &[usize], limits: Limits) -> (Vec<Event>, Option<String>) {
    let (events, error) = Framer::frame_in_pieces(input, cuts, limits);
    (events, error.map(|e| format!("{e:?}")))
}

/// Cut points for `len` bytes drawn from `seed` (xorshift), ascending, at most 16.
pub fn cuts(seed: &[u8], len: usize) -> Vec<usize> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for &b in seed {
        x = (x ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
    }
    let n = (x % 17) as usize;
    let mut out: Vec<usize> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (len as u64 + 1)) as usize
        })
        .collect();
    out.sort_unstable();
    out
}
