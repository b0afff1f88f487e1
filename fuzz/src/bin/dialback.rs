//! Dialback: `db:result` / `db:verify` elements after an s2s header, read as the sessions read
//! them (addresses, id, type, the key as text, domain normalization, stream errors), and the
//! key check itself.
use fedgate::dialback::DialbackSecret;
use fedgate::jid;
use fedgate::s2s::PeerStreamError;
use fedgate::xml::framer::Event;
use fedgate::xml::Kind;
use fedgate_fuzz::{frame, limits, SOURCE_HEADER};

fn main() {
    let secret = DialbackSecret::from_bytes(b"fuzzing secret");
    afl::fuzz!(|data: &[u8]| {
        let mut input = SOURCE_HEADER.as_bytes().to_vec();
        input.extend_from_slice(data);
        let (events, _) = frame(&input, &[], limits());
        for event in events.iter().skip(1) {
            let Event::Stanza(s) = event else { continue };
            match s.kind() {
                Kind::DbResult | Kind::DbVerify => {
                    let (to, from, id) = (s.to(), s.from(), s.id());
                    let _ = s.type_();
                    let key = s
                        .element()
                        .map(|e| e.text().trim().to_string())
                        .unwrap_or_default();
                    let to = to.map(|t| jid::normalize_domain(t).map(|d| d.into_owned()));
                    let from = from.map(|f| jid::normalize_domain(f).map(|d| d.into_owned()));
                    if let (Some(Ok(to)), Some(Ok(from))) = (to, from) {
                        let id = id.unwrap_or("");
                        let right = secret.key(&from, &to, id);
                        assert!(secret.verify(&from, &to, id, &right));
                        let _ = secret.verify(&from, &to, id, &key);
                    }
                }
                Kind::StreamError => {
                    let e = PeerStreamError::parse(s);
                    let _ = e.label();
                }
                _ => {}
            }
        }
    });
}
