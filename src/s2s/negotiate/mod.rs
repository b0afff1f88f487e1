//! Stream negotiation, sans-I/O: each direction's steps as states named for what they wait
//! for. A state takes parsed input (a stream header, an element, the outcome of a TLS
//! handshake) and gives back the bytes to write and what the task around it must do next; the
//! task owns the socket and the timers. Unit tests drive it with no socket at all.
//!
//! - [`inbound`]: a remote server's stream to us, from its header to authentication (RFC 6120
//!   §4, §5 STARTTLS, §6 SASL EXTERNAL with XEP-0178). Dialback pairs, XEP-0198 and stanzas
//!   are the [session](super::inbound)'s, which tells the negotiation when a pair is proved.
//! - [`outbound`]: our stream's authentication once [`connect`](super::connect) has opened it
//!   (SASL EXTERNAL, dialback on the same stream after a refusal, dialback). Opening the stream
//!   itself (header, features, STARTTLS, certificate check) is still async code in
//!   [`connect`](super::connect).

pub mod inbound;
pub mod outbound;
#[cfg(test)]
mod tests;
