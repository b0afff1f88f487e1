//! The backend behind fedgate: a XEP-0114 component written with the harness's raw stream.
//! The test drives it step by step; while it waits for the stanza a step expects, it answers
//! what a component must answer (disco#info and XEP-0199 pings addressed to it, presence
//! probes) and keeps the rest, so that servers' own traffic (probes, caps queries) does not
//! break a scenario.

use fedgate::xml::stanza::Stanza;

use crate::harness::{text, Instance, RawStream};

/// How long [`Backend::expect`] waits (less than the harness's own limit per read).
pub const EXPECT_WAIT: std::time::Duration = std::time::Duration::from_secs(9);

/// The features the component announces in disco#info.
pub const FEATURES: [&str; 2] = ["http://jabber.org/protocol/disco#info", "urn:xmpp:ping"];

pub struct Backend {
    stream: RawStream,
    /// Stanzas seen while waiting for others, as text.
    pub other: Vec<String>,
}

impl Backend {
    pub async fn attach(gw: &Instance) -> Backend {
        Backend {
            stream: gw.backend().await,
            other: Vec::new(),
        }
    }

    pub async fn send(&mut self, xml: &str) {
        self.stream.send(xml).await;
    }

    /// The next stanza for which `want` holds; `what` names it in the failure message.
    /// Panics after [`EXPECT_WAIT`] without it, listing what came instead.
    pub async fn expect(&mut self, what: &str, want: impl Fn(&Stanza) -> bool) -> Stanza {
        let deadline = tokio::time::Instant::now() + EXPECT_WAIT;
        loop {
            let Ok(s) = tokio::time::timeout_at(deadline, self.stream.next()).await else {
                panic!(
                    "the backend got no {what} within {EXPECT_WAIT:?}; the last other stanzas: {:#?}",
                    &self.other[self.other.len().saturating_sub(10)..]
                );
            };
            if want(&s) {
                return s;
            }
            self.answer(&s).await;
        }
    }

    /// The next stanza for which `want` holds within `wait`, or `None`.
    pub async fn next_within(
        &mut self,
        wait: std::time::Duration,
        want: impl Fn(&Stanza) -> bool,
    ) -> Option<Stanza> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let s = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            if want(&s) {
                return Some(s);
            }
            self.answer(&s).await;
        }
    }

    /// The next message (other stanzas are answered or kept).
    pub async fn next_message(&mut self) -> Stanza {
        self.expect("message", |s| s.name() == "message").await
    }

    /// Answers what a component answers on its own, keeps everything else.
    async fn answer(&mut self, s: &Stanza) {
        let raw = text(s.raw()).to_string();
        let (from, to, id) = (
            s.from().unwrap_or_default().to_string(),
            s.to().unwrap_or_default().to_string(),
            s.id().unwrap_or_default().to_string(),
        );
        if s.name() == "iq" && s.type_() == Some("get") {
            let reply = if raw.contains("http://jabber.org/protocol/disco#info") {
                disco_result(&to, &from, &id)
            } else if raw.contains("urn:xmpp:ping") {
                format!("<iq type='result' from='{to}' to='{from}' id='{id}'/>")
            } else {
                format!("<iq type='error' from='{to}' to='{from}' id='{id}'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
            };
            self.send(&reply).await;
        } else if s.name() == "presence" && s.type_() == Some("probe") {
            self.send(&format!("<presence from='{to}/bot' to='{from}'/>"))
                .await;
        }
        self.other.push(raw);
    }
}

/// A disco#info result from the component: identity `component/generic` and [`FEATURES`].
pub fn disco_result(from: &str, to: &str, id: &str) -> String {
    let features: String = FEATURES
        .iter()
        .map(|f| format!("<feature var='{f}'/>"))
        .collect();
    format!(
        "<iq type='result' from='{from}' to='{to}' id='{id}'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='component' type='generic' name='fedgate interop bot'/>{features}</query></iq>"
    )
}

/// The stanza error condition of an error stanza (the first child of `<error/>` that is not
/// `<text/>`), and its text.
pub fn stanza_error(s: &Stanza) -> (String, String) {
    let e = s.element().expect("a parsed stanza");
    let Some(error) = e.children().find(|c| c.name == "error") else {
        return (String::new(), String::new());
    };
    let condition = error
        .children()
        .find(|c| c.name != "text")
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let text = error
        .children()
        .find(|c| c.name == "text")
        .map(|c| c.text())
        .unwrap_or_default();
    (condition, text)
}
