//! JIDs: `Jid::parse`, `check_parts`, `domain_of`, `normalize_domain`, and their consistency:
//! what the gateway's per-stanza checks (`domain_of` + `check_parts`) pass, the full parser
//! accepts, and the reverse; a parsed JID's text parses to the same JID.
use fedgate::jid::{self, Jid};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else {
            return;
        };
        let parsed = Jid::parse(s);
        let edge_ok = jid::domain_of(s).is_ok() && jid::check_parts(s).is_ok();
        let _ = jid::normalize_domain(s);
        assert_eq!(
            edge_ok,
            parsed.is_ok(),
            "{s:?}: edge checks {edge_ok}, parse {parsed:?}"
        );
        if let Ok(j) = parsed {
            let _ = (j.node(), j.resource(), j.is_bare(), j.is_domain());
            let again = Jid::parse(&j.to_string()).expect("a parsed JID's text parses");
            assert_eq!(again, j, "{s:?}");
            assert_eq!(j.bare().domain(), j.domain());
        }
    });
}
