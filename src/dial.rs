//! Opening a TCP connection to one host whose addresses are known, in the style of happy
//! eyeballs (RFC 8305).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Every address of a host failed.
#[derive(Debug, Clone)]
pub struct DialError {
    /// Each address tried, with why it failed, in the order tried.
    pub failures: Vec<(SocketAddr, String)>,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.is_empty() {
            return f.write_str("no address to connect to");
        }
        for (i, (addr, why)) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{addr}: {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DialError {}

/// Connects to the first of `addrs` that answers, each attempt bounded by `attempt_timeout`.
pub async fn happy_eyeballs(
    addrs: &[SocketAddr],
    attempt_timeout: Duration,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let mut failures = Vec::new();
    for &addr in addrs {
        match tokio::time::timeout(attempt_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok((tcp, addr)),
            Ok(Err(e)) => failures.push((addr, e.to_string())),
            Err(_) => failures.push((addr, format!("timed out after {attempt_timeout:?}"))),
        }
    }
    Err(DialError { failures })
}
