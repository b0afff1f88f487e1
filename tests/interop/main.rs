//! Interop tests: fedgate federating with real Prosody, ejabberd and jabberd2 servers from
//! Debian's packages (`cargo test --test interop`).
//!
//! Every test starts its own world on loopback:
//! - a DNS server ([`TestDns`]) on port 53 of a loopback address of its own
//!   ([`dns_port_53`]), the only resolver that fedgate and the peer use;
//! - fedgate in-process (the integration harness), found through
//!   `_xmpp-server._tcp.{gateway}` SRV → `xmpp.{gateway}:5299`, with a test component behind it
//!   ([`backend::Backend`]);
//! - a Prosody or ejabberd process, or jabberd2's four ([`peer::Peer`]), found through
//!   `_xmpp-server._tcp.{peer}` SRV → `xmpp.{peer}:5369`, with its own config, data folder,
//!   certificate and private `resolv.conf`;
//! - a slixmpp client logged in on the peer ([`client::Client`]).
//!
//! Neither s2s port is 5269, so a connection that arrives at all arrived through SRV.
//!
//! These tests never skip: a peer that is not installed or does not start fails the test with
//! the reason and the tail of its log. `scripts/test.sh` installs the peers.

// Shared with the integration binary (tests/support/); named here so that `crate::harness`
// and `crate::client` work.
use fedgate_test_support::slixmpp as client;
use fedgate_test_support::{certs, harness};

mod backend;
mod peer;
mod scenarios;

mod ejabberd;
mod jabberd2;
mod prosody;

mod rolling;
mod with_core;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use harness::TestDns;

/// A DNS server on port 53 of a fresh loopback address 127.53.x.y, so that resolvers which
/// cannot be given a port (libc's, Erlang's `inet_res` reading `resolv.conf`) can use it.
/// Addresses depend on the process id and a counter, and a taken one is skipped, so parallel
/// tests and parallel test runs do not collide.
pub async fn dns_port_53() -> TestDns {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut last_error = None;
    for _ in 0..64 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 250) * 250;
        let ip = Ipv4Addr::new(127, 53, (n / 250 % 250) as u8 + 1, (n % 250) as u8 + 2);
        match TestDns::start_on(SocketAddr::from((ip, 53))).await {
            Ok(dns) => return dns,
            Err(e) => last_error = Some(e),
        }
    }
    panic!(
        "cannot bind a DNS server on port 53 of 127.53.x.y: {last_error:?} \
         (the interop tests need root, or CAP_NET_BIND_SERVICE, for port 53)"
    );
}

/// fedgate's log lines (all instances in this process), captured so that tests can read what
/// was negotiated (`RUST_LOG` filters them, default `fedgate=info`; `INTEROP_ECHO_LOG=1` also
/// writes them to stderr).
fn log_buffer() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        // Which listener accepted a connection is logged at debug (XEP-0368 tests read it).
        let filter = std::env::var("RUST_LOG")
            .unwrap_or_else(|_| "fedgate=info,fedgate::listener=debug".to_string());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
        Mutex::new(Vec::new())
    })
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        log_buffer().lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("INTEROP_ECHO_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing fedgate's logs (call before starting instances).
pub fn capture_logs() {
    log_buffer();
}

/// The captured fedgate log lines that contain `needle`.
pub fn fedgate_log(needle: &str) -> Vec<String> {
    let buf = log_buffer().lock().unwrap();
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}
