//! The component handshake (XEP-0114 §3): `verify_component_handshake` on arbitrary digests,
//! and on the right one. Input: stream id, NUL, secret, NUL, digest.
use fedgate::dialback::{component_handshake, verify_component_handshake};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else {
            return;
        };
        let mut parts = s.splitn(3, '\0');
        let (id, secret, digest) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let right = component_handshake(id, secret);
        assert!(verify_component_handshake(id, secret, &right));
        let _ = verify_component_handshake(id, secret, digest);
    });
}
