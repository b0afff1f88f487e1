//! A small XEP-0114 component built on `fedgate::component::client`: it answers service
//! discovery (XEP-0030 disco#info) and XMPP pings (XEP-0199), and echoes messages back to
//! their sender.
//!
//! Run a gateway with a backend for the component's domain, then the component:
//!
//! ```text
//! cargo run --example echo_component -- echo.example.test change-me-echo-secret 127.0.0.1:5347
//! ```
//!
//! Arguments: the component's domain, its handshake secret, the gateway's component address
//! (defaults: `example.test`, `change-me-example-secret`, `127.0.0.1:5347`, which match
//! `config/fedgate.toml` when its `[core]` section is removed).

use fedgate::component::client::{ClientConfig, Component, Event, Sender, Target};
use fedgate::xml::{ns, Element, Stanza};

const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let domain = args.next().unwrap_or_else(|| "example.test".into());
    let secret = args
        .next()
        .unwrap_or_else(|| "change-me-example-secret".into());
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:5347".into())
        .parse()
        .expect("the gateway address is host:port");

    let mut component = Component::start(ClientConfig::new(&domain, &secret, Target::Tcp(addr)));
    let sender = component.sender();
    while let Some(event) = component.recv().await {
        match event {
            Event::Online { gateway } => println!("attached as {domain} to {gateway}"),
            Event::Offline { gateway, reason } => {
                println!("link to {gateway} down ({reason}), reconnecting")
            }
            Event::Stanza(stanza) => answer(&stanza, &sender).await,
        }
    }
}

/// Answers one stanza the gateway routed to us. (Public for the test that runs it:
/// `tests/integration/component_client.rs`.)
pub async fn answer(stanza: &Stanza, sender: &Sender) {
    let Ok(el) = stanza.element() else { return };
    let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
        return;
    };
    let reply = |name: &str, type_: &str| {
        let mut r = Element::new(name, ns::COMPONENT)
            .with_attr("from", to)
            .with_attr("to", from)
            .with_attr("type", type_);
        if let Some(id) = el.attr("id") {
            r.set_attr("id", id);
        }
        r
    };
    match (el.name.as_str(), el.attr("type").unwrap_or("")) {
        ("message", "error") => {}
        ("message", type_) => {
            // Echo: the same payload, back to the sender.
            let mut echo = reply("message", if type_.is_empty() { "normal" } else { type_ });
            echo.children = el.children.clone();
            let _ = sender.send(&echo).await;
        }
        ("iq", "get") if el.child("ping", ns::PING).is_some() => {
            let _ = sender.send(&reply("iq", "result")).await;
        }
        ("iq", "get") if el.child("query", DISCO_INFO).is_some() => {
            let query = Element::new("query", DISCO_INFO)
                .with_child(
                    Element::new("identity", DISCO_INFO)
                        .with_attr("category", "component")
                        .with_attr("type", "generic")
                        .with_attr("name", "echo"),
                )
                .with_child(Element::new("feature", DISCO_INFO).with_attr("var", DISCO_INFO))
                .with_child(Element::new("feature", DISCO_INFO).with_attr("var", ns::PING));
            let _ = sender.send(&reply("iq", "result").with_child(query)).await;
        }
        ("iq", "get" | "set") => {
            // Anything else we do not implement (RFC 6120 §8.4).
            if let Some(b) =
                stanza.bounce(fedgate::xml::StanzaErrorCondition::ServiceUnavailable, None)
            {
                let _ = sender.send_raw(b.raw().clone()).await;
            }
        }
        _ => {}
    }
}
