//! Acknowledgements on the component stream: XEP-0198 stream management between fedgate's
//! component library ([`client`](super::client)) and the gateway, so that a gateway that
//! dies (SIGKILL, a crash, a lost machine) takes nothing with it that its backend gave it.
//!
//! XEP-0114 has no acknowledgements, and a plain component (biboumi, any other) or a plain
//! gateway (Prosody's, ejabberd's component listener) must never see an element it does not
//! know. So, as with the [drain notice](super::drain), nothing happens unless both sides
//! said so on their stream headers:
//! 1. **Declaration.** The component library declares `xmlns:sm='urn:xmpp:sm:3'` on its
//!    header (with [`ClientConfig::acknowledgements`](super::client::ClientConfig), the
//!    default). An unused namespace declaration is plain XML: any XEP-0114 server accepts it.
//! 2. **Answer.** A fedgate gateway with `[component] acknowledgements = true` (the default)
//!    declares the same namespace on its own header, to a backend that declared it and only
//!    to one: that is its offer. A gateway that does not declare it gets nothing more.
//! 3. **Enable.** After the handshake the library writes `<enable xmlns='urn:xmpp:sm:3'/>`
//!    and waits for `<enabled xmlns='urn:xmpp:sm:3'/>` before it writes any stanza. From
//!    there on both sides count the `<message/>`, `<presence/>` and `<iq/>` they receive,
//!    modulo 2^32, as in XEP-0198 §4; `<r/>` asks for the count and `<a h='…'/>` reports it,
//!    either way. An `<enable/>` the gateway did not offer is refused like any other
//!    non-stanza (`<unsupported-stanza-type/>`, as for a plain backend), and so is a second
//!    one; an `h` above what was sent ends the stream with `<undefined-condition/>`
//!    (XEP-0198 §4). There is no resumption: a new session starts from 0.
//!
//! What a count means (the reason for all this):
//! - **Gateway → backend, `h` of the backend's stanzas**: a stanza counts only once it has
//!   left the gateway for good ([`crate::ack`]): written to another backend's socket (or
//!   acknowledged by it, when that one acknowledges too), acknowledged by an XEP-0198 s2s peer,
//!   confirmed by an XEP-0199 ping answered after it on a link without XEP-0198, or bounced
//!   (the bounce is routed back, and counts as done). Stanzas to different destinations
//!   finish out of order, so `h` is the length of the finished prefix, and the gateway
//!   writes `<a/>` when it moves (at most every [`ACK_INTERVAL`], and at once to `<r/>`).
//!   A stanza that keeps that prefix back while later ones finished (its destination is
//!   slow or stopped reading) is reported [held](super::held) to a library that declared
//!   it, and the prefix passes it; it is reported done later.
//!   The library keeps every stanza until it is acknowledged, at most
//!   [`ClientConfig::max_unacked`](super::client::ClientConfig) (it then waits), and when
//!   the link drops it sends the unacknowledged ones again: through another gateway, or on
//!   the next session with a single one. At least once: what the dead gateway had sent on
//!   but not yet confirmed may arrive twice (counted in the library's
//!   [`Stats`](super::client::Stats)).
//! - **Backend → gateway, `h` of the gateway's stanzas**: what the component has finished
//!   with: the library counts a stanza when the application asks for the event after it
//!   ([`Events`](super::client::Events)), so one still waiting in the library's queue, or
//!   being handled (a core storing it offline), when the backend dies is not counted. The gateway keeps what it wrote to an acknowledging backend until the
//!   backend acknowledges it (asking with `<r/>` after a batch, and again shortly after an
//!   answer that left some unacknowledged); when that link drops, what
//!   was not acknowledged is routed again: to the backend's newer session (a replacement,
//!   e.g. a standby core), or bounced to its sender with `service-unavailable`, instead of
//!   vanishing with the socket buffer (`fedgate_component_unacked_returned_total`).

use crate::xml::stanza::Stanza;
use crate::xml::stream::StreamHeader;

pub use crate::s2s::sm::NS;

/// The gateway writes `<a/>` at most this often while `h` moves (an `<r/>` is answered at
/// once): acknowledgements in batches, not per stanza.
pub const ACK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// `<enable/>` from the library (step 3).
pub const ENABLE: &[u8] = b"<enable xmlns='urn:xmpp:sm:3'/>";

/// The gateway's answer to `<enable/>` (step 3).
pub const ENABLED: &[u8] = b"<enabled xmlns='urn:xmpp:sm:3'/>";

/// Whether a stream header declares acknowledgements (steps 1 and 2).
pub fn declared(header: &StreamHeader) -> bool {
    header.prefixes.iter().any(|(_, uri)| uri == NS)
}

/// Whether `stanza` is an element of XEP-0198 (rather than a stanza to route).
pub fn is_sm(stanza: &Stanza) -> bool {
    stanza.ns() == NS
}

/// Whether `stanza` counts for `h` (XEP-0198 §4): a message, presence or iq.
pub fn counts(stanza: &Stanza) -> bool {
    use crate::xml::stanza::Kind;
    matches!(stanza.kind(), Kind::Message | Kind::Presence | Kind::Iq)
}
