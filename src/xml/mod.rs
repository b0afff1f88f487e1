//! XML layer of an XMPP stream (RFC 6120 §4 and §11), sans-I/O.
//!
//! fedgate relays stanzas as the raw bytes it received, so this layer does
//! not build a tree per stanza. It frames and validates instead:
//!
//! 1. [`Framer`] takes bytes from the socket ([`Framer::read_buf`]) and yields
//!    [`Event`]s: the opening [`StreamHeader`] (RFC 6120 §4.7), each complete
//!    top-level element as a [`Stanza`], and the closing `</stream:stream>`
//!    (§4.4). It enforces well-formedness, the restrictions of §11.1 and the
//!    configured [`Limits`], and maps every failure to an [`XmlError`] whose
//!    [`StreamErrorCondition`] is the `<stream:error/>` to send (§4.9.3).
//! 2. A [`Stanza`] keeps its exact bytes plus the routing facts (`to`, `from`,
//!    `id`, `type`, [`Kind`]), and knows which namespace bindings it inherited
//!    from its stream so it can be moved between `jabber:server` and
//!    `jabber:component:accept` streams ([`Stanza::bytes_for`]).
//! 3. Negotiation elements (features, dialback, errors) are small; they get a
//!    tree via [`Stanza::element`] ([`Element`]).
//! 4. The outgoing side is plain byte writing: [`OpenStream`],
//!    [`CLOSE_STREAM`], [`stream_error`], [`Stanza::bounce`].

// The files from the floor up; each imports only files before it in this list (checked by
// tests/integration/layering.rs): ns, escape, error, chars, facts, scan, element, stream,
// stanza, framer.
mod chars;
pub mod element;
pub mod error;
mod escape;
mod facts;
pub mod framer;
pub mod ns;
mod scan;
pub mod stanza;
pub mod stream;

pub use element::{Element, Node};
pub use error::{
    stream_error, StanzaErrorCondition, StanzaErrorType, StreamErrorCondition, XmlError,
};
pub use escape::{escape_attr, escape_text};
pub use framer::{Event, Framer, Limits};
pub use ns::NsContext;
pub use stanza::{Kind, Stanza};
pub use stream::{OpenStream, StreamHeader, CLOSE_STREAM};
