//! The drain notice on the component stream: how a gateway that is about to stop (a rolling
//! restart) tells its backends to send new traffic through another gateway while it still
//! delivers what it holds.
//!
//! XEP-0114 has no such thing, and `<stream:error><system-shutdown/>` is final: it ends the
//! stream, so whatever the gateway still had to deliver to the backend would be lost with
//! it. So fedgate adds three steps, none of which a plain XEP-0114 component ever sees:
//! 1. **Declaration.** A backend that speaks the protocol declares its namespace on its
//!    stream header, `xmlns:drain='urn:fedgate:drain:0'`, the way pre-features servers
//!    announce dialback (XEP-0220 §2.4). An unused namespace declaration is plain XML: any
//!    XEP-0114 server accepts the header, so the component library can attach to other
//!    servers too.
//! 2. **Notice.** When the gateway starts draining, it writes [`NOTICE`] (a top-level
//!    `<drain xmlns='urn:fedgate:drain:0'/>`) on the streams of the backends that declared
//!    the namespace, and only on those. A backend that gets it stops choosing this gateway
//!    for new stanzas, hands what it still queued for it to another gateway (or keeps it
//!    queued until the link is back, when it has only this one), and goes on receiving:
//!    the gateway still delivers what it holds and what its inbound s2s streams bring.
//! 3. **Answer.** Once it has written the last stanza it will send on this stream, the backend
//!    writes [`ANSWER`] (`<drained xmlns='urn:fedgate:drain:0'/>`) and nothing else after it.
//!    The stream is ordered, so when the gateway reads the answer it has read (and routed)
//!    every stanza the backend sent it: its outbound queues can now be drained without new
//!    stanzas arriving behind them.
//!
//! The stream still ends as before, with `<system-shutdown/>` once the drain is over. A plain
//! component gets no notice and gives no answer; the gateway does not wait for it, and it
//! keeps sending to the gateway until then (what then cannot go out bounces to it, as on
//! any shutdown).

/// The namespace of the notice and the answer, and of the declaration on the header.
pub const NS: &str = crate::xml::ns::DRAIN;

/// Gateway → backend: this gateway is draining; send new stanzas elsewhere.
pub const NOTICE: &[u8] = b"<drain xmlns='urn:fedgate:drain:0'/>";

/// Backend → gateway: nothing more follows on this stream from the backend.
pub const ANSWER: &[u8] = b"<drained xmlns='urn:fedgate:drain:0'/>";

/// Whether a stream header declares the protocol (step 1).
pub fn declared(header: &crate::xml::stream::StreamHeader) -> bool {
    header.prefixes.iter().any(|(_, uri)| uri == NS)
}

/// Whether `stanza` is the element `name` of the protocol.
fn is(stanza: &crate::xml::stanza::Stanza, name: &str) -> bool {
    stanza.name() == name && stanza.ns() == NS
}

/// Whether `stanza` is the gateway's notice (step 2).
pub fn is_notice(stanza: &crate::xml::stanza::Stanza) -> bool {
    is(stanza, "drain")
}

/// Whether `stanza` is the backend's answer (step 3).
pub fn is_answer(stanza: &crate::xml::stanza::Stanza) -> bool {
    is(stanza, "drained")
}
