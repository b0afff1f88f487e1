//! fedgate's integration tests: real instances on loopback, a DNS server the tests run, raw
//! XML peers. One test binary (`cargo test --test integration`).

// Shared with the interop binary (tests/support/); named here so that `crate::harness` works.
use fedgate_test_support::{certs, dns_server, harness, postgres, proxy};

mod layering;
mod xml_tree;

mod bidi;
mod binary;
mod component;
mod component_acks;
mod component_client;
mod component_reattach;
mod core;
mod core_im;
mod core_mam;
mod core_pep;
mod core_pg;
mod core_push;
mod core_sasl;
mod core_sm;
mod delivery;
mod diagnostics;
mod dns;
mod drain;
mod edge;
mod federation;
mod ha;
mod limits;
mod metrics;
mod muc;
mod outbound;
mod piggyback;
mod policy;
mod roundtrip;
mod s2s;
mod services;
mod sm;
mod tls;
mod upload;
