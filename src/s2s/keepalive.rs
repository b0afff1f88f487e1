//! Keeping links alive and finding dead ones: whitespace keepalives (RFC 6120 §4.6.1) and
//! XEP-0199 pings.
//!
//! [`Whitespace`] is the one rule both directions follow: after `keepalive_interval` without
//! writing anything, a single space. It keeps NATs and firewalls from forgetting the link and
//! finds a dead one when the write fails; it is not a stanza, so it does not count as
//! activity (`idle_timeout` still ends a link without stanzas).
//!
//! Without XEP-0288 bidi our outbound stream carries stanzas one way, so the answer to a ping
//! we send on it comes back on the peer's own stream to us (on a bidi stream, on the same
//! one). [`Pings`] is where the two meet: the session that sent the ping registers its id,
//! and whichever session receives the answer hands it over instead of routing it to a
//! backend.

use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::jid;
use crate::router::next_session_id;
use crate::xml::stanza::{Kind, NsContext, Stanza};
use crate::xml::{escape_attr, ns};

/// Whitespace keepalives (RFC 6120 §4.6.1) every `interval` of silence.
#[derive(Debug, Clone, Copy)]
pub struct Whitespace {
    interval: Duration,
}

impl Whitespace {
    /// What is written: a single space between top-level elements.
    pub const BYTES: &'static [u8] = b" ";

    /// Keepalives after `interval` without a write (`s2s.keepalive_interval`).
    pub fn new(interval: Duration) -> Whitespace {
        Whitespace { interval }
    }

    /// When a keepalive is due, the stream having last written at `last_write`.
    pub fn due(&self, last_write: Instant) -> Instant {
        last_write + self.interval
    }
}

/// The answer to an XEP-0199 server-to-server ping (§4.3) addressed to one of our domains
/// itself (`to` a bare domain that `is_local` accepts): an empty result from that domain. The
/// peer checks the link with it, so it must not depend on whether a backend answers iqs.
/// `None` for anything else, which is routed as usual.
pub fn answer_server_ping(stanza: &Stanza, is_local: impl Fn(&str) -> bool) -> Option<Stanza> {
    if stanza.kind() != Kind::Iq || stanza.type_() != Some("get") {
        return None;
    }
    let to = stanza.to()?;
    if to.contains(['@', '/']) || !is_local(to) {
        return None;
    }
    let element = stanza.element().ok()?;
    let mut children = element.children();
    let ping = children.next()?;
    if ping.name != "ping" || ping.ns != ns::PING || children.next().is_some() {
        return None;
    }
    let mut out = format!("<iq type='result' from='{}'", escape_attr(to));
    if let Some(from) = stanza.from() {
        out.push_str(&format!(" to='{}'", escape_attr(from)));
    }
    if let Some(id) = stanza.id() {
        out.push_str(&format!(" id='{}'", escape_attr(id)));
    }
    out.push_str("/>");
    Stanza::parse(bytes::Bytes::from(out), &NsContext::server()).ok()
}

/// Every ping id we send starts with this, so that other stanzas are passed over cheaply.
pub const PING_ID_PREFIX: &str = "fedgate-ping-";

struct Waiting {
    /// The domain we pinged; only it may answer.
    remote: String,
    /// The domain we pinged from; the answer is addressed to it.
    local: String,
    answered: oneshot::Sender<()>,
}

/// Our pings in flight, by id.
#[derive(Default)]
pub struct Pings {
    waiting: DashMap<String, Waiting>,
}

/// A ping to send and the way to learn it was answered.
pub struct Ping {
    /// The `<iq/>` id (prefixed so [`Pings::claim`] can tell our pings' answers apart).
    pub id: String,
    /// The `<iq/>` to write.
    pub bytes: Vec<u8>,
    /// Fires when the answer (a result or an error: either proves the peer alive) arrives.
    pub answered: oneshot::Receiver<()>,
}

impl Pings {
    /// Registers a ping from `local` to `remote`.
    pub fn start(&self, local: &str, remote: &str) -> Ping {
        let id = format!("{PING_ID_PREFIX}{}", next_session_id());
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(
            id.clone(),
            Waiting {
                remote: remote.to_string(),
                local: local.to_string(),
                answered: tx,
            },
        );
        let bytes = format!(
            "<iq type='get' id='{id}' from='{}' to='{}'><ping xmlns='{}'/></iq>",
            escape_attr(local),
            escape_attr(remote),
            ns::PING
        )
        .into_bytes();
        Ping {
            id,
            bytes,
            answered: rx,
        }
    }

    /// Forgets a ping that timed out or whose link closed.
    pub fn cancel(&self, id: &str) {
        self.waiting.remove(id);
    }

    /// Whether `stanza`, received from a remote server, answers one of our pings; if so it is
    /// consumed here and must not be routed.
    pub fn claim(&self, stanza: &Stanza) -> bool {
        if stanza.kind() != Kind::Iq || !matches!(stanza.type_(), Some("result" | "error")) {
            return false;
        }
        let Some(id) = stanza.id().filter(|id| id.starts_with(PING_ID_PREFIX)) else {
            return false;
        };
        let matches = |w: &Waiting| {
            let from = stanza.from().and_then(|f| jid::domain_of(f).ok());
            let to = stanza.to().and_then(|t| jid::domain_of(t).ok());
            from.as_deref() == Some(w.remote.as_str()) && to.as_deref() == Some(w.local.as_str())
        };
        match self.waiting.remove_if(id, |_, w| matches(w)) {
            Some((_, w)) => {
                let _ = w.answered.send(());
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_due_an_interval_after_the_last_write() {
        let w = Whitespace::new(std::time::Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(w.due(t), t + std::time::Duration::from_secs(60));
        assert_eq!(Whitespace::BYTES, b" ");
    }
    use crate::xml::stanza::NsContext;

    fn stanza(xml: &str) -> Stanza {
        Stanza::parse(
            bytes::Bytes::copy_from_slice(xml.as_bytes()),
            &NsContext::server(),
        )
        .unwrap()
    }

    #[test]
    fn the_pinged_domain_answering_our_domain_is_claimed_once() {
        let pings = Pings::default();
        let mut ping = pings.start("b.test", "a.test");
        assert!(ping.id.starts_with(PING_ID_PREFIX));
        let sent = std::str::from_utf8(&ping.bytes).unwrap();
        assert!(sent.contains(&format!("id='{}'", ping.id)), "{sent}");
        let answer = stanza(&format!(
            "<iq type='result' id='{}' from='a.test' to='b.test'/>",
            ping.id
        ));
        assert!(pings.claim(&answer));
        assert_eq!(ping.answered.try_recv(), Ok(()));
        assert!(!pings.claim(&answer), "claimed once: a replay is routed");
    }

    #[test]
    fn an_error_answer_proves_the_peer_alive_too() {
        let pings = Pings::default();
        let mut ping = pings.start("b.test", "a.test");
        let answer = stanza(&format!(
            "<iq type='error' id='{}' from='a.test' to='b.test'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            ping.id
        ));
        assert!(pings.claim(&answer));
        assert_eq!(ping.answered.try_recv(), Ok(()));
    }

    #[test]
    fn forged_or_unrelated_stanzas_are_not_claimed() {
        let pings = Pings::default();
        let mut ping = pings.start("b.test", "a.test");
        let id = ping.id.clone();
        for xml in [
            // Another domain answering for a.test.
            format!("<iq type='result' id='{id}' from='c.test' to='b.test'/>"),
            // Addressed to another of our domains.
            format!("<iq type='result' id='{id}' from='a.test' to='other.test'/>"),
            // Not an answer.
            format!("<iq type='get' id='{id}' from='a.test' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>"),
            format!("<message id='{id}' from='a.test' to='b.test'/>"),
            // An id we never sent.
            format!("<iq type='result' id='{PING_ID_PREFIX}0' from='a.test' to='b.test'/>"),
            "<iq type='result' id='q1' from='a.test' to='b.test'/>".to_string(),
        ] {
            assert!(!pings.claim(&stanza(&xml)), "{xml}");
        }
        assert!(ping.answered.try_recv().is_err(), "still waiting");
        // A full JID on either side still names the domains.
        assert!(pings.claim(&stanza(&format!(
            "<iq type='result' id='{id}' from='a.test/x' to='b.test'/>"
        ))));
    }

    #[test]
    fn a_cancelled_ping_is_not_claimed() {
        let pings = Pings::default();
        let ping = pings.start("b.test", "a.test");
        pings.cancel(&ping.id);
        assert!(!pings.claim(&stanza(&format!(
            "<iq type='result' id='{}' from='a.test' to='b.test'/>",
            ping.id
        ))));
    }

    #[test]
    fn a_ping_to_our_domain_is_answered_and_anything_else_is_not() {
        let local = |d: &str| d == "a.test";
        let answer = answer_server_ping(
            &stanza("<iq type='get' id='p1' from='b.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>"),
            local,
        )
        .expect("answered");
        assert_eq!(
            &answer.raw()[..],
            b"<iq type='result' from='a.test' to='b.test' id='p1'/>"
        );
        for other in [
            // To a user or a resource: the backend's business.
            "<iq type='get' id='p' from='b.test' to='u@a.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<iq type='get' id='p' from='b.test' to='a.test/r'><ping xmlns='urn:xmpp:ping'/></iq>",
            // Not ours, not a get, not a ping.
            "<iq type='get' id='p' from='b.test' to='c.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<iq type='set' id='p' from='b.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<iq type='get' id='p' from='b.test' to='a.test'><query xmlns='jabber:iq:version'/></iq>",
            "<message from='b.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></message>",
        ] {
            assert!(answer_server_ping(&stanza(other), local).is_none(), "{other}");
        }
    }
}
