//! fedgate's component library (`fedgate::component::client`) as a test backend: attached to
//! one or more gateways, reporting the messages it receives and the links that come up, and
//! sending a steady stream; [`Received`] keeps count of what arrived, what arrived twice and
//! what bounced. The rolling-restart tests (`tests/integration/drain.rs` with another fedgate,
//! `tests/interop/rolling.rs` with Prosody) are built on it.

use std::collections::HashMap;
use std::time::Duration;

use fedgate::component::client::{ClientConfig, Component, Event, Sender, Target};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the library reports to the test.
pub enum Seen {
    /// A message: its id, and for an error (a bounce) its text.
    Message { id: String, error: Option<String> },
    /// A link came up, to this gateway.
    Online(String),
}

/// The library for `domain`, attached to each of `gateways`: its sender and what it sees. A
/// restarted gateway is found again within a fraction of a second (backoff at most 200 ms).
pub fn attach(
    domain: &str,
    secret: &str,
    gateways: Vec<Target>,
) -> (Sender, mpsc::UnboundedReceiver<Seen>) {
    let mut config = ClientConfig::with_gateways(domain, secret, gateways);
    config.backoff_max = Duration::from_millis(200);
    let (sender, mut events, stopper) = Component::start(config).into_parts();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _links = stopper;
        while let Some(event) = events.recv().await {
            let seen = match event {
                Event::Stanza(s) if s.name() == "message" => Seen::Message {
                    id: s.id().unwrap_or_default().to_owned(),
                    error: (s.type_() == Some("error"))
                        .then(|| crate::harness::text(s.raw()).to_string()),
                },
                Event::Online { gateway } => Seen::Online(gateway),
                _ => continue,
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    (sender, rx)
}

/// Sends `<message/>`s from `from` to `to`, ids `{prefix}0`, `{prefix}1`…, one every 5 ms
/// until `stop`; returns how many were sent.
pub async fn steady(
    sender: Sender,
    from: String,
    to: String,
    prefix: &'static str,
    stop: CancellationToken,
) -> usize {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut sent = 0;
    while !stop.is_cancelled() {
        tick.tick().await;
        let xml = format!(
            "<message from='{from}' to='{to}' id='{prefix}{sent}' type='chat'><body>{sent}</body></message>"
        );
        sender.send_raw(xml).await.expect("the component runs");
        sent += 1;
    }
    sent
}

/// What one side received: each id's count, and the errors that came back (id and text).
#[derive(Default)]
pub struct Received {
    pub ids: HashMap<String, usize>,
    pub bounces: Vec<String>,
}

impl Received {
    /// A message with `id`; `bounce` is an error's text.
    pub fn add(&mut self, id: String, bounce: Option<String>) {
        if let Some(bounce) = bounce {
            self.bounces.push(format!("{id}: {bounce}"));
        } else {
            *self.ids.entry(id).or_default() += 1;
        }
    }

    /// Takes what the library saw: `Some(gateway)` for a link that came up.
    pub fn take(&mut self, seen: Seen) -> Option<String> {
        match seen {
            Seen::Message { id, error } => self.add(id, error),
            Seen::Online(gateway) => return Some(gateway),
        }
        None
    }

    /// The ids that arrived more than once.
    pub fn twice(&self) -> Vec<&String> {
        self.ids
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id)
            .collect()
    }
}
