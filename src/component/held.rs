//! Held stanzas on an acknowledging component stream: how the gateway acknowledges a
//! backend's stanzas out of order, so that one destination that does not take its stanzas
//! never stops the backend's traffic to every other destination.
//!
//! XEP-0198's `h` ([`super::sm`]) is cumulative: it counts a prefix. A backend's stanzas go
//! to many destinations and finish out of order, and one of them that waits for a remote
//! server which stopped reading keeps `h` where it is. The component library keeps a bounded
//! number of unacknowledged stanzas ([`ClientConfig::max_unacked`]), so after that many more
//! it would stop sending altogether, to every destination: the head-of-line blocking the
//! gateway's per-destination queues exist to prevent. XEP-0198 has no selective
//! acknowledgement, so fedgate adds one, in three steps that neither a plain component nor
//! a backend of an older fedgate ever sees:
//! 1. **Declaration.** The library declares `xmlns:held='urn:fedgate:held:0'` on its header
//!    next to acknowledgements; a gateway that supports it and offered acknowledgements
//!    declares it back. Without it on both headers, `h` only ever counts a prefix.
//! 2. **Held.** When stanzas have kept `h` back for a while (at least [`HOLD_AFTER`]) while
//!    later ones finished, the gateway writes `<held xmlns='urn:fedgate:held:0'>` listing
//!    their numbers (the XEP-0198 count of the stream, from 0, modulo 2^32), and only then
//!    an `<a h='…'/>` past them. The backend keeps each held stanza exactly as it keeps an
//!    unacknowledged one: if the link drops before it is reported done, it is sent again.
//!    Only the order is lifted, not the safekeeping.
//! 3. **Done.** When a held stanza has left the gateway for good (the same rule as for `h`:
//!    written to a backend, acknowledged by the s2s peer, confirmed by a ping, or bounced),
//!    the gateway lists its number in `<done xmlns='urn:fedgate:held:0'>`, and the backend
//!    forgets it.
//!
//! A list is numbers and inclusive ranges separated by spaces, `17 20-25`, in the order the
//! stanzas were sent; a range may wrap past 2^32 − 1 to 0.
//!
//! [`ClientConfig::max_unacked`]: super::client::ClientConfig::max_unacked

use std::time::Duration;

use crate::xml::stanza::Stanza;
use crate::xml::stream::StreamHeader;

pub use crate::xml::ns::HELD as NS;

/// A stanza that kept `h` back at least this long while later ones finished is held (step
/// 2): long enough that what is merely on its way (an s2s peer's acknowledgement, a
/// confirming ping every 200 ms) finishes first, short enough that a backend's window of
/// unacknowledged stanzas does not fill at any rate it can send.
pub const HOLD_AFTER: Duration = Duration::from_millis(250);

/// Most numbers one list may stand for: a gateway never has more in flight for one stream
/// than its acknowledgement window ([`crate::ack::WINDOW`]).
const MAX_LISTED: u32 = crate::ack::WINDOW;

/// Whether a stream header declares the protocol (step 1).
pub fn declared(header: &StreamHeader) -> bool {
    header.prefixes.iter().any(|(_, uri)| uri == NS)
}

/// A report of the protocol, as the backend reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Step 2: these are not finished, although the next `<a/>` passes them.
    Held(Vec<u32>),
    /// Step 3: these held stanzas finished.
    Done(Vec<u32>),
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// An element of the namespace that is neither `<held/>` nor `<done/>` (its name).
    #[error("<{0}/> is not an element of {NS}")]
    UnknownElement(String),
    /// A list item that is not a number or a range (or the whole stanza, when its text
    /// could not be read).
    #[error("'{0}' in a list of {NS} is neither a number nor a range")]
    BadItem(String),
    /// The list stands for more stanzas than a gateway can have in flight on one stream.
    #[error("a list of {NS} stands for more than {MAX_LISTED} stanzas")]
    TooLong,
}

/// Whether `stanza` belongs to the protocol.
pub fn is_report(stanza: &Stanza) -> bool {
    stanza.ns() == NS
}

/// Reads `<held/>` or `<done/>`.
pub fn parse(stanza: &Stanza) -> Result<Report, ReportError> {
    let text = stanza
        .element()
        .map(|e| e.text())
        .map_err(|_| ReportError::BadItem(String::from_utf8_lossy(stanza.raw()).into()))?;
    let list = parse_list(&text)?;
    match stanza.name() {
        "held" => Ok(Report::Held(list)),
        "done" => Ok(Report::Done(list)),
        other => Err(ReportError::UnknownElement(other.to_owned())),
    }
}

/// `<held>` listing `seqs` (step 2).
pub fn held(seqs: &[u32]) -> Vec<u8> {
    element("held", seqs)
}

/// `<done>` listing `seqs` (step 3).
pub fn done(seqs: &[u32]) -> Vec<u8> {
    element("done", seqs)
}

fn element(name: &str, seqs: &[u32]) -> Vec<u8> {
    format!("<{name} xmlns='{NS}'>{}</{name}>", write_list(seqs)).into_bytes()
}

/// `seqs` with runs of consecutive numbers written as ranges.
fn write_list(seqs: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        let mut end = start;
        while i + 1 < seqs.len() && seqs[i + 1] == end.wrapping_add(1) {
            end = seqs[i + 1];
            i += 1;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        if end == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

fn parse_list(text: &str) -> Result<Vec<u32>, ReportError> {
    let mut out = Vec::new();
    for item in text.split_ascii_whitespace() {
        let bad = || ReportError::BadItem(item.to_owned());
        let (start, end) = match item.split_once('-') {
            Some((a, b)) => (
                a.parse::<u32>().map_err(|_| bad())?,
                b.parse::<u32>().map_err(|_| bad())?,
            ),
            None => {
                let n = item.parse::<u32>().map_err(|_| bad())?;
                (n, n)
            }
        };
        let count = u64::from(end.wrapping_sub(start)) + 1;
        if out.len() as u64 + count > u64::from(MAX_LISTED) {
            return Err(ReportError::TooLong);
        }
        let mut n = start;
        loop {
            out.push(n);
            if n == end {
                break;
            }
            n = n.wrapping_add(1);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::stanza::NsContext;

    fn report(bytes: &[u8]) -> Result<Report, ReportError> {
        let stanza = Stanza::parse(bytes.to_vec().into(), &NsContext::component()).unwrap();
        parse(&stanza)
    }

    #[test]
    fn lists_are_written_with_ranges_and_read_back() {
        let seqs = [3, 4, 5, 9, u32::MAX - 1, u32::MAX, 0, 1, 7];
        let bytes = held(&seqs);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "<held xmlns='urn:fedgate:held:0'>3-5 9 4294967294-1 7</held>"
        );
        assert_eq!(report(&bytes), Ok(Report::Held(seqs.to_vec())));
        assert_eq!(report(&done(&[12])), Ok(Report::Done(vec![12])));
        assert_eq!(report(&done(&[])), Ok(Report::Done(vec![])));
    }

    #[test]
    fn a_bad_list_or_element_is_an_error_not_a_guess() {
        assert_eq!(
            report(b"<held xmlns='urn:fedgate:held:0'>3 x</held>"),
            Err(ReportError::BadItem("x".into()))
        );
        assert_eq!(
            report(b"<held xmlns='urn:fedgate:held:0'>0-4294967295</held>"),
            Err(ReportError::TooLong)
        );
        assert_eq!(
            report(b"<kept xmlns='urn:fedgate:held:0'>1</kept>"),
            Err(ReportError::UnknownElement("kept".into()))
        );
    }
}
