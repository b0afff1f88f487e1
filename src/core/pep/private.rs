//! XEP-0049 private XML storage (`jabber:iq:private`), the account's own only, with legacy
//! bookmarks (`storage:bookmarks`, XEP-0048) kept in the XEP-0402 node `urn:xmpp:bookmarks:1`
//! (XEP-0402 §5.3 compatibility), so that old and new clients see the same bookmarks:
//!
//! 1. A get of `<storage xmlns='storage:bookmarks'/>` is built from the node's items: one
//!    `<conference/>` per item, its `jid` the item id.
//! 2. A set of it makes the node hold exactly its conferences: each published as an item
//!    (`<conference xmlns='urn:xmpp:bookmarks:1' name autojoin><nick/><password/>`), the
//!    others retracted, each with its notification. A node too small for them (made by a
//!    client without publish-options) is widened to `pep_max_items` first. Legacy `<url/>`
//!    bookmarks have no place in XEP-0402 and are not kept.
//! 3. Any other namespace is stored as it is and given back as it was (an empty element when
//!    nothing is stored). `jabber:client`, `jabber:server` and `jabber:iq:private` itself are
//!    refused with `<not-acceptable/>` (XEP-0049 §3).
//!
//! Bounded: each element at most `pep_max_item_bytes`, at most `pep_max_nodes` namespaces per
//! account, at most `pep_max_items` bookmarks.

use std::sync::Arc;

use super::config::{AccessModel, ConfigChange, NodeConfig, SendLast};
use super::store::{self, Published};
use super::{parse_stored, refuse, Refusal};
use crate::core::stanzas::{iq_result, payload};
use crate::core::{Core, SessionHandle};
use crate::xml::error::StanzaErrorCondition;
use crate::xml::{ns, Element};

pub const NS_PRIVATE: &str = "jabber:iq:private";
pub const NS_LEGACY_BOOKMARKS: &str = "storage:bookmarks";
pub const NS_BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
pub const NS_BOOKMARKS_COMPAT: &str = "urn:xmpp:bookmarks:1#compat";

/// The bookmarks node's configuration (XEP-0402 §3: whitelist, persistent, unlimited).
fn bookmarks_options(max_items: u32) -> ConfigChange {
    ConfigChange {
        access: Some(AccessModel::Whitelist),
        persist_items: Some(true),
        max_items: Some(max_items),
        send_last: Some(SendLast::Never),
    }
}

/// A legacy `<conference/>` from an XEP-0402 item.
fn legacy_conference(jid: &str, item: &Element) -> Element {
    let mut c = Element::new("conference", NS_LEGACY_BOOKMARKS).with_attr("jid", jid);
    for attr in ["name", "autojoin"] {
        if let Some(v) = item.attr(attr) {
            c.set_attr(attr, v);
        }
    }
    for child in ["nick", "password"] {
        if let Some(e) = item.child(child, NS_BOOKMARKS) {
            c = c.with_child(Element::new(child, NS_LEGACY_BOOKMARKS).with_text(e.text()));
        }
    }
    c
}

/// An XEP-0402 `<conference/>` from a legacy one; `None` without a `jid`.
fn bookmark(legacy: &Element) -> Option<(String, Element)> {
    let jid = legacy.attr("jid").filter(|j| !j.is_empty())?.to_owned();
    let autojoin = matches!(legacy.attr("autojoin"), Some("true" | "1"));
    let mut c = Element::new("conference", NS_BOOKMARKS)
        .with_attr("autojoin", if autojoin { "true" } else { "false" });
    if let Some(name) = legacy.attr("name") {
        c.set_attr("name", name);
    }
    for child in ["nick", "password"] {
        if let Some(e) = legacy.child(child, NS_LEGACY_BOOKMARKS) {
            c = c.with_child(Element::new(child, NS_BOOKMARKS).with_text(e.text()));
        }
    }
    Some((jid, c))
}

impl Core {
    /// A `jabber:iq:private` iq from the account's own client.
    pub(crate) async fn private_iq(&self, session: &Arc<SessionHandle>, el: Element) {
        let answer = match el.attr("type") {
            Some("get") => self.private_get(&session.account, &el).await,
            Some("set") => self.private_set(session, &el).await,
            _ => return,
        };
        match answer {
            Ok(q) => {
                let mut r = iq_result(&el, &session.account);
                if let Some(q) = q {
                    r = r.with_child(q);
                }
                session.send_element(&r)
            }
            Err(refusal) => self.refuse_iq(&el, refusal).await,
        }
    }

    /// XEP-0049 §2: anyone but the account itself is refused.
    pub(crate) async fn private_forbidden(&self, el: &Element) {
        self.bounce(
            el,
            StanzaErrorCondition::Forbidden,
            "private XML storage is the account's own",
        )
        .await
    }

    async fn private_get(&self, account: &str, el: &Element) -> Result<Option<Element>, Refusal> {
        let query = payload(el).expect("dispatched on its payload");
        let wanted: Vec<&Element> = query.children().collect();
        let [wanted] = wanted[..] else {
            return Err(refuse(
                StanzaErrorCondition::BadRequest,
                None,
                "a private storage get names exactly one element",
            ));
        };
        check_namespace(wanted)?;
        let found = if (wanted.name.as_str(), wanted.ns.as_str())
            == ("storage", NS_LEGACY_BOOKMARKS)
        {
            let owner = account.to_owned();
            let items = self
                .storage
                .call(move |c| store::items(c, &owner, NS_BOOKMARKS, None, &[]))
                .await
                .map_err(super::storage_refusal)?;
            let mut storage = Element::new("storage", NS_LEGACY_BOOKMARKS);
            for item in items {
                if let Some(conf) = parse_stored(&item.payload)
                    .filter(|p| p.name == "conference" && p.ns == NS_BOOKMARKS)
                {
                    storage = storage.with_child(legacy_conference(&item.id, &conf));
                }
            }
            storage
        } else {
            let (owner, name, ns) = (account.to_owned(), wanted.name.clone(), wanted.ns.clone());
            let stored = self
                .storage
                .call(move |c| store::private_get(c, &owner, &name, &ns))
                .await
                .map_err(super::storage_refusal)?;
            stored
                .and_then(|b| parse_stored(&b))
                .unwrap_or_else(|| Element::new(&wanted.name, &wanted.ns))
        };
        Ok(Some(Element::new("query", NS_PRIVATE).with_child(found)))
    }

    async fn private_set(
        &self,
        session: &Arc<SessionHandle>,
        el: &Element,
    ) -> Result<Option<Element>, Refusal> {
        let query = payload(el).expect("dispatched on its payload");
        let mut plain = Vec::new();
        let mut bookmarks = None;
        for child in query.children() {
            check_namespace(child)?;
            if (child.name.as_str(), child.ns.as_str()) == ("storage", NS_LEGACY_BOOKMARKS) {
                bookmarks = Some(child);
                continue;
            }
            let bytes = child.to_bytes();
            if bytes.len() > self.config.pep_max_item_bytes {
                return Err(refuse(
                    StanzaErrorCondition::NotAcceptable,
                    None,
                    format!(
                        "{{{}}}{} has {} bytes, more than pep_max_item_bytes = {}",
                        child.ns,
                        child.name,
                        bytes.len(),
                        self.config.pep_max_item_bytes
                    ),
                ));
            }
            plain.push((child.name.clone(), child.ns.clone(), bytes));
        }
        if plain.is_empty() && bookmarks.is_none() {
            return Err(refuse(
                StanzaErrorCondition::BadRequest,
                None,
                "a private storage set carries at least one element",
            ));
        }
        if !plain.is_empty() {
            let owner = session.account.clone();
            let max = self.config.pep_max_nodes;
            let stored = self
                .storage
                .call(move |c| store::private_set(c, &owner, &plain, max))
                .await
                .map_err(super::storage_refusal)?;
            if !stored {
                return Err(refuse(
                    StanzaErrorCondition::ResourceConstraint,
                    None,
                    format!(
                        "the account keeps the most private elements allowed (pep_max_nodes = {max})"
                    ),
                ));
            }
        }
        if let Some(storage) = bookmarks {
            self.store_legacy_bookmarks(session, storage).await?;
        }
        Ok(None)
    }

    /// Makes the XEP-0402 node hold exactly the conferences of a legacy `<storage/>`.
    async fn store_legacy_bookmarks(
        &self,
        session: &Arc<SessionHandle>,
        storage: &Element,
    ) -> Result<(), Refusal> {
        let account = session.account.as_str();
        let wanted: Vec<(String, Element)> = storage
            .children()
            .filter(|c| c.name == "conference" && c.ns == NS_LEGACY_BOOKMARKS)
            .filter_map(bookmark)
            .collect();
        let cap = self.config.pep_max_items;
        if wanted.len() > cap as usize {
            return Err(refuse(
                StanzaErrorCondition::ResourceConstraint,
                None,
                format!("more than pep_max_items = {cap} bookmarks"),
            ));
        }
        let owner = account.to_owned();
        let existing = self
            .storage
            .call(move |c| {
                Ok((
                    store::node_config(c, &owner, NS_BOOKMARKS)?,
                    store::items(c, &owner, NS_BOOKMARKS, None, &[])?,
                ))
            })
            .await
            .map_err(super::storage_refusal)?;
        let (config, items) = existing;
        // A new node gets XEP-0402's configuration. An existing one keeps its own, except that
        // it must hold every bookmark: one made by a client without publish-options (one item)
        // would silently lose all but the last.
        let options = match config {
            Some(c) if c.max_items < wanted.len() as u32 => {
                let widened = NodeConfig {
                    max_items: cap,
                    persist_items: true,
                    ..c
                };
                let owner = account.to_owned();
                self.storage
                    .call(move |db| store::configure(db, &owner, NS_BOOKMARKS, &widened))
                    .await
                    .map_err(super::storage_refusal)?;
                ConfigChange::default()
            }
            Some(_) => ConfigChange::default(),
            None => bookmarks_options(cap),
        };
        let publisher = session.jid.to_string();
        for (jid, conf) in &wanted {
            let unchanged = items
                .iter()
                .any(|i| i.id == *jid && i.payload == conf.to_bytes());
            if unchanged {
                continue;
            }
            match self
                .publish_item(
                    account,
                    NS_BOOKMARKS,
                    jid,
                    &publisher,
                    conf,
                    options,
                    NodeConfig::DEFAULT,
                )
                .await?
            {
                Published::Done { .. } => {}
                Published::Conflict => {
                    // Only when another client created the node at the same moment.
                    return Err(refuse(
                        StanzaErrorCondition::Conflict,
                        None,
                        "the bookmarks node changed meanwhile; try again",
                    ));
                }
                Published::TooManyNodes => {
                    return Err(refuse(
                        StanzaErrorCondition::ResourceConstraint,
                        None,
                        format!(
                            "the account has the most PEP nodes allowed (pep_max_nodes = {})",
                            self.config.pep_max_nodes
                        ),
                    ))
                }
            }
        }
        let config = config.unwrap_or_else(|| bookmarks_options(cap).apply(&NodeConfig::DEFAULT));
        for gone in items
            .iter()
            .filter(|i| !wanted.iter().any(|(j, _)| *j == i.id))
        {
            let (owner, id) = (account.to_owned(), gone.id.clone());
            let removed = self
                .storage
                .call(move |c| store::retract(c, &owner, NS_BOOKMARKS, &id))
                .await
                .map_err(super::storage_refusal)?;
            if removed {
                self.notify_retract(account, NS_BOOKMARKS, &config, &gone.id)
                    .await;
            }
        }
        Ok(())
    }
}

/// XEP-0049 §3: these namespaces cannot be stored.
fn check_namespace(el: &Element) -> Result<(), Refusal> {
    if [ns::CLIENT, ns::SERVER, NS_PRIVATE].contains(&el.ns.as_str()) {
        return Err(refuse(
            StanzaErrorCondition::NotAcceptable,
            None,
            format!("elements in {} cannot be stored", el.ns),
        ));
    }
    Ok(())
}
