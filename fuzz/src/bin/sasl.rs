//! SASL: PLAIN, the SCRAM client-first message, and a SCRAM server's check of a client-final
//! message. The input is two messages separated by the first 0xFF byte (not UTF-8): the
//! client-first and the client-final.
use fedgate::core::sasl::{ClientFirst, Credentials, Plain, ScramHash, ScramServer};

fn main() {
    let credentials = Credentials::derive_with_salt("pencil", b"fuzzing salt", 64);
    afl::fuzz!(|data: &[u8]| {
        let _ = Plain::parse(data);
        let (first, last) = match data.iter().position(|&b| b == 0xFF) {
            Some(i) => (&data[..i], &data[i + 1..]),
            None => (data, &b""[..]),
        };
        let Ok(first) = ClientFirst::parse(first) else {
            return;
        };
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            for cbind in [None, Some(&b"binding data"[..])] {
                let (server, _) =
                    ScramServer::new(hash, &first, Some(&credentials), 4096, "snonce", cbind);
                let _ = server.finish(last);
                let (server, _) = ScramServer::new(hash, &first, None, 64, "snonce", cbind);
                assert!(
                    server.finish(last).is_err(),
                    "an unknown user authenticated"
                );
            }
        }
    });
}
