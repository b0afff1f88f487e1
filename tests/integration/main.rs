//! fedgate's integration tests: real instances on loopback, a DNS server the tests run, raw
//! XML peers. One test binary (`cargo test --test integration`).

mod certs;
mod harness;

mod binary;
mod component;
mod federation;
mod s2s;
mod sm;
mod tls;
