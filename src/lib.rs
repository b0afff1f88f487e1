//! fedgate: an XMPP server-to-server federation gateway.
//!
//! # Layout
//! Imports only point downward in this list.
//! - [`cli`]: the command line (the binary in `main.rs` stays thin).
//! - [`gateway`]: the edge process assembled: listeners, sessions, shutdown in phases; with
//!   `[core]`, the c2s core inside it over an in-process component link.
//! - [`reload`]: live reload (SIGHUP, `fedgate reload`): the new policy, certificates and
//!   backend secrets, applied to live sessions too.
//! - [`peers`]: the per-peer view (`/peers`, `fedgate peers`): sessions, queue, failures, traces.
//! - [`diagnostics`]: `fedgate check config` and `fedgate check remote`: reports, verdicts and
//!   fixes, from the same code paths the gateway runs.
//! - [`core`]: `fedgate core`, a small c2s server (TLS, SASL SCRAM/PLAIN, binding, RFC 6121
//!   rosters and presence, offline messages, SQLite) attached to a gateway as its backend.
//! - [`muc`]: an XEP-0045 multi-user chat service, run in the gateway with `[muc]`.
//! - [`upload`]: an XEP-0363 HTTP file upload service, run in the gateway with `[upload]`.
//! - [`services`]: `fedgate services`, `[muc]` and `[upload]` as a process of their own.
//! - [`s2s`]: server-to-server sessions: [`s2s::inbound`], [`s2s::outbound`],
//!   [`s2s::negotiate`] (sans-I/O negotiation states), [`s2s::connect`] (the initiating side up to authentication: TCP, TLS, certificate check),
//!   [`s2s::dialback`] (XEP-0220: initiating, receiving, authoritative, connect-back),
//!   [`s2s::sm`] (XEP-0198 stream management, both roles), [`s2s::keepalive`] (whitespace,
//!   XEP-0199 pings), [`s2s::registry`] (live sessions, recent failures and attempt traces per
//!   peer), [`s2s::limits`] (what one address, domain and stream may take, and the refusals).
//! - [`component`]: the XEP-0114 listener where backends attach, and [`component::client`],
//!   the backend side (what components and the core use to attach).
//! - [`listener`]: the accept loop every listener shares.
//! - [`connection`]: a framed XMPP stream over a byte transport, split once established.
//! - [`router`]: where a domain lives; hands stanzas to sessions; bounces.
//! - [`policy`]: whom we federate with (`[federation]`).
//! - [`dns`]: where a remote domain's server is (static routes, SRV, A/AAAA).
//! - [`dial`]: TCP connections to a host's addresses, happy eyeballs style.
//! - [`tls`]: rustls for s2s: our certificates by domain, handshakes, peer certificate verdicts.
//! - [`dialback`]: XEP-0185 dialback keys, the shared secret, stream ids, component handshakes.
//! - [`config`]: the TOML configuration.
//! - [`logging`]: `[log]`: text or JSON lines on stderr, colours only on a terminal.
//! - [`notify`]: the systemd readiness protocol (`Type=notify`).
//! - [`ack`]: delivery tickets: when a stanza from an acknowledging backend has left the
//!   gateway for good (XEP-0198 on the component stream).
//! - [`xml`]: the XML stream layer: framer, stanzas, stream headers, errors (no I/O).
//! - [`jid`]: RFC 7622 addresses.
//! - [`metrics`]: Prometheus metrics, per-peer figures under a bounded `peer` label, and the
//!   `/metrics`, `/healthz`, `/readyz`, `/peers` and `/reload` endpoint.

// The library has no unsafe code; the one unsafe block is in the binary (main.rs: the
// jemalloc configuration static the allocator reads by symbol name).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod ack;
pub mod cli;
pub mod component;
pub mod config;
pub mod connection;
pub mod core;
pub mod diagnostics;
pub mod dial;
pub mod dialback;
pub mod dns;
pub mod gateway;
pub mod jid;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod muc;
pub mod notify;
pub mod peers;
pub mod policy;
pub mod reload;
pub mod router;
pub mod s2s;
pub mod services;
pub mod tls;
pub mod upload;
pub mod xml;
