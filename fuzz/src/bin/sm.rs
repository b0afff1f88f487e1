//! XEP-0198 elements after an s2s header: `sm::parse` and `sm::h_of` on every top-level element.
use fedgate::s2s::sm;
use fedgate::xml::framer::Event;
use fedgate_fuzz::{frame, limits, SOURCE_HEADER};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut input = SOURCE_HEADER.as_bytes().to_vec();
        input.extend_from_slice(data);
        let (events, _) = frame(&input, &[], limits());
        for event in events.iter().skip(1) {
            let Event::Stanza(s) = event else { continue };
            let _ = sm::h_of(s);
            if let Err(e) = sm::parse(s) {
                let _ = e.app_condition();
                let _ = sm::stream_error(&e);
            }
        }
    });
}
