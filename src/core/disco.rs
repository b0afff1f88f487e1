//! XEP-0030 service discovery for what the core serves: the domain (the server) and each
//! account's bare JID. Every feature module announces itself here, in one list per entity, so
//! that what disco says and what the core answers cannot drift apart: a feature var goes into
//! [`SERVER_FEATURES`] or [`ACCOUNT_FEATURES`] in the same commit as its handler.
//!
//! - disco#info on a domain: identity `server/im`, [`SERVER_FEATURES`].
//! - disco#items on a domain: the configured `disco_items` and the gateway's other backends.
//! - disco#info on an account's bare JID (XEP-0030 §3.1, asked by clients before they use PEP
//!   or OMEMO): identity `account/registered`, [`ACCOUNT_FEATURES`]; answered for the account's
//!   owner and for anyone else alike, since it reveals only that the account exists, which a
//!   message to it reveals too.
//! - disco on a full JID is the client's to answer: it is routed to that session.

use super::carbons::NS_CARBONS;
use super::mam::{NS_MAM, NS_MAM_EXTENDED, NS_SID};
use super::roster::NS_ROSTER;
use super::Core;
use crate::xml::{ns, Element};

pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const NS_VERSION: &str = "jabber:iq:version";

/// What disco#info on one of our domains announces.
pub(crate) const SERVER_FEATURES: &[&str] = &[
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    ns::PING,
    NS_VERSION,
    NS_ROSTER,
    NS_CARBONS,
];

/// What disco#info on an account's bare JID announces.
pub(crate) const ACCOUNT_FEATURES: &[&str] = &[
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    ns::PING,
    NS_MAM,
    NS_MAM_EXTENDED,
    NS_SID,
];

/// A disco#info `<query/>` with one identity and the given features.
fn info(category: &str, type_: &str, name: Option<&str>, features: &[&str]) -> Element {
    let mut identity = Element::new("identity", NS_DISCO_INFO)
        .with_attr("category", category)
        .with_attr("type", type_);
    if let Some(name) = name {
        identity.set_attr("name", name);
    }
    let mut q = Element::new("query", NS_DISCO_INFO).with_child(identity);
    for f in features {
        q = q.with_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", *f));
    }
    q
}

impl Core {
    /// disco#info on one of our domains.
    pub(crate) fn server_disco_info(&self) -> Element {
        info("server", "im", Some("fedgate"), SERVER_FEATURES)
    }

    /// disco#items on one of our domains.
    pub(crate) fn server_disco_items(&self) -> Element {
        let mut q = Element::new("query", NS_DISCO_ITEMS);
        for item in &self.disco_items {
            q = q.with_child(Element::new("item", NS_DISCO_ITEMS).with_attr("jid", item));
        }
        q
    }

    /// disco#info on an account's bare JID.
    pub(crate) fn account_disco_info(&self) -> Element {
        info("account", "registered", None, ACCOUNT_FEATURES)
    }

    /// disco#items on an account's bare JID: nothing public is listed.
    pub(crate) fn account_disco_items(&self) -> Element {
        Element::new("query", NS_DISCO_ITEMS)
    }
}
