//! The stream header: the framer before and at the stream start tag, and what the sessions do
//! with the header (version check, namespace context).
use fedgate::xml::framer::Event;
use fedgate::xml::NsContext;
use fedgate_fuzz::{frame, limits};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (events, _) = frame(data, &[], limits());
        if let Some(Event::StreamOpen(h)) = events.first() {
            let _ = h.unsupported_version(true);
            let _ = h.unsupported_version(false);
            let _ = h.declares_dialback();
            let ctx = NsContext::from_header(h);
            let _ = ctx.content_ns();
            let _ = ctx.prefix_uri("stream");
        }
    });
}
