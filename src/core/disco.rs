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
//!   The account's owner also gets its PEP nodes in disco#items.
//! - disco on a full JID is the client's to answer: it is routed to that session.

use super::blocking::NS_BLOCKING;
use super::carbons::NS_CARBONS;
use super::extdisco::NS_EXTDISCO;
use super::last::NS_LAST;
use super::mam::{NS_MAM, NS_MAM_EXTENDED, NS_SID};
use super::pep;
use super::register::NS_REGISTER;
use super::roster::NS_ROSTER;
use super::vcard::NS_VCARD;
use super::Core;
use crate::xml::{ns, Element};

pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const NS_VERSION: &str = "jabber:iq:version";

/// What disco#info on one of our domains announces. The account services that clients look
/// for on the server (poezio decides on remote bookmarks from these two, and Prosody and
/// ejabberd list them there too) are named here as well as on the account: PEP publishing and
/// XEP-0049 private storage, both answered for an iq without `to`.
pub(crate) const SERVER_FEATURES: &[&str] = &[
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    ns::PING,
    NS_VERSION,
    NS_ROSTER,
    NS_BLOCKING,
    NS_VCARD,
    NS_LAST,
    NS_REGISTER,
    NS_EXTDISCO,
    NS_CARBONS,
    "http://jabber.org/protocol/pubsub#publish",
    pep::private::NS_PRIVATE,
];

/// What disco#info on an account's bare JID announces: the PEP service (XEP-0163, the
/// XEP-0060 §10 features it implements), XEP-0049 private storage with XEP-0402 compat, and
/// XEP-0012 last activity, XEP-0313 archives with XEP-0359 stanza-ids, XEP-0398 avatar
/// conversion.
pub(crate) const ACCOUNT_FEATURES: &[&str] = &[
    NS_DISCO_INFO,
    super::push::NS_PUSH,
    NS_DISCO_ITEMS,
    ns::PING,
    pep::NS_PUBSUB,
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#item-ids",
    pep::private::NS_PRIVATE,
    pep::private::NS_BOOKMARKS_COMPAT,
    NS_LAST,
    NS_MAM,
    NS_MAM_EXTENDED,
    NS_SID,
    super::vcard::avatar::NS_CONVERSION,
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

    /// disco#info on an account's bare JID: the account, and its PEP service (XEP-0163 §1).
    pub(crate) fn account_disco_info(&self) -> Element {
        let mut q = info("account", "registered", None, ACCOUNT_FEATURES);
        let pep = Element::new("identity", NS_DISCO_INFO)
            .with_attr("category", "pubsub")
            .with_attr("type", "pep");
        q.children.insert(1, crate::xml::Node::Element(pep));
        q
    }

    /// disco#items on an account's bare JID: nothing public is listed.
    pub(crate) fn account_disco_items(&self) -> Element {
        Element::new("query", NS_DISCO_ITEMS)
    }
}
