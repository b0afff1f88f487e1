//! The systemd readiness protocol (`sd_notify`, `Type=notify` units): `READY=1` once every
//! listener is bound, `RELOADING=1` … `READY=1` around a SIGHUP reload, `STOPPING=1` when the
//! shutdown starts. Without `$NOTIFY_SOCKET` (not started by systemd) every call does nothing.
//!
//! The protocol is one datagram per state change to the Unix socket `$NOTIFY_SOCKET` names
//! (a path, or `@name` for the abstract namespace); written here rather than taken from a
//! crate because it is those few lines. A failure is logged and otherwise ignored: systemd
//! then times the start out and says so, which is the right place for that error.

use std::os::unix::net::UnixDatagram;

/// A state change for the service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Started: every listener is bound.
    Ready,
    /// A reload began; [`State::Ready`] follows when it is done.
    Reloading,
    /// The shutdown began.
    Stopping,
}

impl State {
    /// The datagram. (`MONOTONIC_USEC` with `RELOADING=1` matters only to `Type=notify-reload`
    /// units, systemd 253 and later; ours is `Type=notify` with `ExecReload`.)
    fn message(self) -> &'static str {
        match self {
            State::Ready => "READY=1",
            State::Reloading => "RELOADING=1",
            State::Stopping => "STOPPING=1",
        }
    }
}

/// Tells the service manager, if there is one.
pub fn notify(state: State) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state.message().as_bytes()) {
        tracing::warn!(socket = ?path, "cannot tell systemd {state:?}: {e}");
    }
}

fn send(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &addr)?;
        }
        None => {
            socket.send_to(message, path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_the_socket_named_by_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), State::Ready.message().as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        send(path.as_os_str(), State::Reloading.message().as_bytes()).unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"RELOADING=1");
        // The abstract namespace (`@name`).
        let name = format!("fedgate-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        send(
            std::ffi::OsStr::new(&format!("@{name}")),
            State::Stopping.message().as_bytes(),
        )
        .unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
