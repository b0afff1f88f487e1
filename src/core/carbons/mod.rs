//! XEP-0280 Message Carbons: every carbons-enabled resource of an account sees both sides of
//! the account's conversations, whichever resource they happen on.
//!
//! 1. A session turns carbons on and off with `<enable/>` / `<disable/>`
//!    (`urn:xmpp:carbons:2`, §4–§5); repeating either is answered with a result (§10.1). The
//!    state lives on the [`SessionHandle`] and ends with the session.
//! 2. Which messages are copied ([`eligible`], §6): type `chat`, and `normal` (or no type)
//!    with a `<body/>`; never `groupchat`, `headline` or `error`, nor one sent by a chat room
//!    (it carries `muc#user`), nor one marked `<private/>` (§7) or with the XEP-0334 hint
//!    `<no-copy/>`.
//! 3. Received (§8): when the core delivers a message to one resource (a full JID) or to the
//!    resources a bare JID reaches, each other carbons-enabled resource gets
//!    `<received><forwarded xmlns='urn:xmpp:forward:0'>original</forwarded></received>` from
//!    the account's bare JID ([`Core::carbons_received`]); never the resources that got the
//!    original. A `<private/>` element is removed before the recipient sees the message
//!    ([`take_private`]). A message stored offline reaches no session, so it is not copied.
//! 4. Sent (§9): a message a client sends (to a local or a remote recipient) is copied in a
//!    `<sent/>` wrapper to the account's other carbons-enabled resources, whether or not the
//!    sender enabled carbons itself ([`Core::carbons_sent`]); the copy carries the XEP-0359
//!    `<stanza-id/>` the sender's archive gave the message, if it was archived.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::stanzas::{iq_result, payload};
use super::{Core, SessionHandle};
use crate::xml::error::StanzaErrorCondition;
use crate::xml::{ns, Element, Node};

pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334 message processing hints.
pub const NS_HINTS: &str = "urn:xmpp:hints";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// §6: whether a message is copied to the account's other resources.
pub fn eligible(el: &Element) -> bool {
    let typed = match el.attr("type") {
        Some("chat") => true,
        Some("groupchat" | "headline" | "error") => false,
        // `normal`, absent or unknown (RFC 6121 §5.2.2: treated as normal).
        _ => has_body(el),
    };
    typed
        && !el.children().any(|c| {
            (c.name == "private" && c.ns == NS_CARBONS)
                || (c.name == "no-copy" && c.ns == NS_HINTS)
                || (c.name == "x" && c.ns == NS_MUC_USER)
        })
}

/// A `<body/>` in the stanza's own namespace (from a component link the stanza's namespace
/// is the link's, not `jabber:client`).
pub(crate) fn has_body(el: &Element) -> bool {
    el.children()
        .any(|c| c.name == "body" && (c.ns == el.ns || c.ns == ns::CLIENT))
}

/// The message as the recipient gets it, with `<private/>` removed (§7), and whether it is
/// eligible for carbons (decided before the removal).
pub(crate) fn take_private(mut el: Element) -> (Element, bool) {
    let copy = eligible(&el);
    el.children
        .retain(|n| !matches!(n, Node::Element(c) if c.name == "private" && c.ns == NS_CARBONS));
    (el, copy)
}

/// Moves a stanza from the namespace of the stream it came on (`jabber:component:accept` for
/// the gateway's) to `jabber:client`, with its children of that namespace (its `<body/>`), so
/// that it can be embedded in another element (`<forwarded/>`) as a client's stanza.
pub(crate) fn in_client_ns(el: &mut Element) {
    fn retag(el: &mut Element, from: &str) {
        if el.ns == from {
            el.ns = ns::CLIENT.to_owned();
            for c in el.children_mut() {
                retag(c, from);
            }
        }
    }
    if el.ns != ns::CLIENT {
        let from = el.ns.clone();
        retag(el, &from);
    }
}

/// `<message from=bare to=full type><{wrapper} xmlns=carbons><forwarded>original</forwarded>
/// </{wrapper}></message>`.
fn wrap(wrapper: &str, account: &str, to: &SessionHandle, original: &Element) -> Element {
    let mut m = Element::new("message", ns::CLIENT)
        .with_attr("from", account)
        .with_attr("to", to.jid.to_string());
    if let Some(t) = original.attr("type") {
        m.set_attr("type", t);
    }
    let mut inner = original.clone();
    in_client_ns(&mut inner);
    m.with_child(
        Element::new(wrapper, NS_CARBONS)
            .with_child(Element::new("forwarded", NS_FORWARD).with_child(inner)),
    )
}

impl SessionHandle {
    pub(crate) fn carbons_enabled(&self) -> bool {
        self.carbons.load(Ordering::Relaxed)
    }
}

impl Core {
    /// `<enable/>` / `<disable/>` from a session (§4, §5).
    pub(crate) async fn carbons_iq(&self, session: &Arc<SessionHandle>, el: Element) {
        let on = match payload(&el).map(|p| p.name.as_str()) {
            Some("enable") => true,
            Some("disable") => false,
            _ => {
                return self
                    .bounce(
                        &el,
                        StanzaErrorCondition::BadRequest,
                        "carbons takes <enable/> or <disable/>",
                    )
                    .await
            }
        };
        session.carbons.store(on, Ordering::Relaxed);
        session.send_element(&iq_result(&el, &session.account));
    }

    /// §8: copies of a message delivered to the sessions `delivered` (by id) go to the
    /// account's other carbons-enabled sessions. `copy` is [`take_private`]'s verdict.
    pub(crate) fn carbons_received(
        &self,
        account: &str,
        el: &Element,
        copy: bool,
        delivered: &[u64],
    ) {
        if !copy {
            return;
        }
        for s in self.sessions_of(account) {
            if s.carbons_enabled() && !delivered.contains(&s.id) {
                s.send_element(&wrap("received", account, &s, el));
            }
        }
    }

    /// §9: copies of a message `session` sends go to the account's other carbons-enabled
    /// sessions, with the sender's archive id (`archived`, XEP-0359) if there is one.
    pub(crate) fn carbons_sent(
        &self,
        session: &SessionHandle,
        el: &Element,
        archived: Option<Element>,
    ) {
        if !eligible(el) {
            return;
        }
        let others: Vec<_> = self
            .sessions_of(&session.account)
            .into_iter()
            .filter(|s| s.id != session.id && s.carbons_enabled())
            .collect();
        if others.is_empty() {
            return;
        }
        let mut original = el.clone();
        if let Some(sid) = archived {
            original.children.push(Node::Element(sid));
        }
        for s in others {
            s.send_element(&wrap("sent", &session.account, &s, &original));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
