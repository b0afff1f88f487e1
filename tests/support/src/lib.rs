//! What fedgate's two test binaries share (`tests/integration/`, `tests/interop/`), as one
//! crate rather than files included into both: each binary names these modules at its root
//! (`use fedgate_test_support::harness;`), so that tests write `crate::harness::…` either way.
//!
//! - [`harness`]: fedgate instances on loopback addresses of their own, raw XEP-0114 and s2s
//!   streams that write XML and read what comes back, metrics, eventual assertions;
//! - [`dns_server`]: the DNS server every test resolves through (SRV, A, AAAA, answers that
//!   never come);
//! - [`certs`]: the test CA and the certificates it signs;
//! - [`library`]: fedgate's component library as a test backend, and the counts of what it
//!   received (the rolling-restart tests);
//! - [`proxy`]: a TCP proxy that cuts, pauses or truncates links;
//! - [`postgres`]: a real PostgreSQL (Debian's package) in a temporary folder;
//! - [`slixmpp`]: the slixmpp client (`client.py`) driven over JSON lines.

pub mod certs;
pub mod dns_server;
pub mod harness;
pub mod library;
pub mod postgres;
pub mod proxy;
pub mod slixmpp;
