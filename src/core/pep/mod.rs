//! XEP-0163 Personal Eventing Protocol: a pubsub service (the XEP-0060 subset clients use) on
//! each account's bare JID, for OMEMO device lists and bundles (XEP-0384), avatars (XEP-0084),
//! nicknames (XEP-0172) and bookmarks (XEP-0402); and XEP-0049 private XML storage with
//! legacy bookmarks kept in the XEP-0402 node ([`private`]).
//!
//! 1. The owner publishes (§7.1), a node being created on first publish (§7.1.4, XEP-0163
//!    §3) with the publish-options (§7.1.5) as its configuration; options that do not match an
//!    existing node fail with `<conflict/>` + `<precondition-not-met/>`. Item ids are made
//!    when absent. Items are kept in SQLite ([`store`]), at most `max_items` per node.
//! 2. Anyone the node's access model allows ([`config::AccessModel`]) retrieves items
//!    (§6.5: all, `max_items`, by id); the owner retracts (§7.2), purges (§8.5) and deletes
//!    nodes (§8.4), and reads or changes the configuration (§8.2).
//! 3. Notifications (`<message type='headline'><event/></message>` from the bare JID) go to
//!    the owner's available resources, and to the full JIDs that sent the account available
//!    presence whose entity capabilities ([`caps`]) include `NODE+notify` and whom the access
//!    model allows (XEP-0163 §4.2 filtered notifications).
//! 4. The last published item goes to such a full JID when it becomes available, once its
//!    capabilities are known (XEP-0163 §4.3.4, `send_last_published_item` of
//!    `on_sub_and_presence`).
//! 5. Quotas from [`CoreConfig`](super::config::CoreConfig): `pep_max_nodes` per account,
//!    `pep_max_items` per node (`max` means that), `pep_max_item_bytes` per payload.
//!
//! Deliberate choices: the owner's available resources get every notification, with or
//! without `+notify` (XEP-0163 §4.1 subscribes the owner automatically), but the last items
//! on becoming available only for the nodes their caps ask for; a node with
//! `persist_items = false` keeps its last item only, for that delivery.
//!
//! Not implemented: affiliations (a whitelist node is the owner's alone), explicit
//! subscriptions (and so `on_sub`), node creation without a publish, disco#info on a node,
//! collection nodes, item publishers and `<delay/>` in notifications.

pub(crate) mod caps;
pub(crate) mod config;
pub(crate) mod form;
pub(crate) mod private;
pub(crate) mod store;

use std::sync::Arc;

use bytes::Bytes;

use self::caps::{Caps, Watch};
use self::config::{ConfigChange, NodeConfig, NS_NODE_CONFIG, NS_PUBLISH_OPTIONS};
use self::form::Form;
use self::store::{Item, Publish, Published};
use super::disco::{NS_DISCO_INFO, NS_DISCO_ITEMS};
use super::stanzas::{iq_result, payload};
use super::storage::{Db, SqlError, StorageError};
use super::{Core, SessionHandle};
use crate::jid::Jid;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::stanza::NsContext;
use crate::xml::{ns, Element, Node};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

/// The XEP-0060 application-specific conditions (`pubsub#errors`) this service gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PubsubError {
    ClosedNode,
    InvalidOptions,
    InvalidPayload,
    ItemRequired,
    NodeidRequired,
    PayloadRequired,
    PayloadTooBig,
    PreconditionNotMet,
    PresenceSubscriptionRequired,
}

impl PubsubError {
    fn as_str(self) -> &'static str {
        match self {
            PubsubError::ClosedNode => "closed-node",
            PubsubError::InvalidOptions => "invalid-options",
            PubsubError::InvalidPayload => "invalid-payload",
            PubsubError::ItemRequired => "item-required",
            PubsubError::NodeidRequired => "nodeid-required",
            PubsubError::PayloadRequired => "payload-required",
            PubsubError::PayloadTooBig => "payload-too-big",
            PubsubError::PreconditionNotMet => "precondition-not-met",
            PubsubError::PresenceSubscriptionRequired => "presence-subscription-required",
        }
    }
}

/// A refusal: the RFC 6120 condition, the XEP-0060 §7 application condition, a text.
#[derive(Debug)]
struct Refusal {
    cond: StanzaErrorCondition,
    app: Option<PubsubError>,
    text: String,
}

fn refuse(
    cond: StanzaErrorCondition,
    app: Option<PubsubError>,
    text: impl Into<String>,
) -> Refusal {
    Refusal {
        cond,
        app,
        text: text.into(),
    }
}

/// What a handler answers: the `<pubsub/>` of the result (or nothing), or a refusal.
type Answer = Result<Option<Element>, Refusal>;

/// From a failed storage call to the refusal the requester gets.
fn storage_refusal(e: StorageError) -> Refusal {
    tracing::warn!("PEP storage failed: {e}");
    refuse(
        StanzaErrorCondition::InternalServerError,
        None,
        "storage failure",
    )
}

/// Reads back an element we serialised (a stored payload).
pub(crate) fn parse_stored(raw: &[u8]) -> Option<Element> {
    crate::xml::element::build(raw, &NsContext::new(ns::CLIENT, &[])).ok()
}

fn notify_feature(node: &str) -> String {
    format!("{node}+notify")
}

/// An `<item id>` with its payload.
fn item_element(ns: &str, item: &Item) -> Element {
    let mut el = Element::new("item", ns).with_attr("id", &item.id);
    if let Some(p) = parse_stored(&item.payload) {
        el = el.with_child(p);
    }
    el
}

/// Who asks the PEP service of `account`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requester {
    Owner,
    Other,
}

impl Core {
    /// A `pubsub` or `pubsub#owner` iq to `account`'s bare JID from the account's own client
    /// (`Core::client_iq`) or from anyone else (`Core::account_iq`).
    pub(crate) async fn pep_iq(&self, account: &str, el: Element) {
        let Some(from) = el.attr("from").and_then(|f| Jid::parse(f).ok()) else {
            return;
        };
        let who = if self.contact_key(&from) == account {
            Requester::Owner
        } else {
            Requester::Other
        };
        let answer = self.pep_answer(account, &from, who, &el).await;
        match answer {
            Ok(pubsub) => {
                let mut r = iq_result(&el, account);
                if let Some(p) = pubsub {
                    r = r.with_child(p);
                }
                self.route(r).await
            }
            Err(refusal) => self.refuse_iq(&el, refusal).await,
        }
    }

    /// Sends an error reply with the application condition of `refusal`.
    async fn refuse_iq(&self, el: &Element, refusal: Refusal) {
        let Some(mut reply) = super::error_reply(el, refusal.cond, &refusal.text) else {
            return;
        };
        if let Some(app) = refusal.app {
            if let Some(error) = reply.children_mut().find(|c| c.name == "error") {
                // After the defined condition, before the text (RFC 6120 §8.3.2).
                let at = error.children.len().min(1);
                error.children.insert(
                    at,
                    Node::Element(Element::new(app.as_str(), NS_PUBSUB_ERRORS)),
                );
            }
        }
        self.route(reply).await
    }

    async fn pep_answer(&self, account: &str, from: &Jid, who: Requester, el: &Element) -> Answer {
        let Some(pubsub) = payload(el) else {
            return Err(refuse(StanzaErrorCondition::BadRequest, None, "no payload"));
        };
        // The first child in the payload's namespace (publish-options follow a publish).
        let Some(verb) = pubsub.children().find(|c| c.ns == pubsub.ns) else {
            return Err(refuse(
                StanzaErrorCondition::BadRequest,
                None,
                "an empty <pubsub/>",
            ));
        };
        let type_ = el.attr("type").unwrap_or_default();
        let owner_only = |what: &str| {
            refuse(
                StanzaErrorCondition::Forbidden,
                None,
                format!("only the account owner may {what} on its PEP service"),
            )
        };
        let owner = who == Requester::Owner;
        match (type_, pubsub.ns.as_str(), verb.name.as_str()) {
            ("set", NS_PUBSUB, "publish") if owner => {
                self.pep_publish(account, from, pubsub, verb).await
            }
            ("set", NS_PUBSUB, "publish") => Err(owner_only("publish")),
            ("set", NS_PUBSUB, "retract") if owner => self.pep_retract(account, verb).await,
            ("set", NS_PUBSUB, "retract") => Err(owner_only("retract items")),
            ("get", NS_PUBSUB, "items") => self.pep_items(account, from, who, verb).await,
            ("set", NS_PUBSUB_OWNER, "delete") if owner => self.pep_delete(account, verb).await,
            ("set", NS_PUBSUB_OWNER, "purge") if owner => self.pep_purge(account, verb).await,
            ("get" | "set", NS_PUBSUB_OWNER, "configure") if owner => {
                self.pep_configure(account, type_, verb).await
            }
            (_, NS_PUBSUB_OWNER, _) => Err(owner_only("manage nodes")),
            (_, _, v) => Err(refuse(
                StanzaErrorCondition::FeatureNotImplemented,
                None,
                format!("pubsub {type_} <{v}/> is not supported by this PEP service"),
            )),
        }
    }

    /// The `node` attribute of a pubsub verb, required.
    fn node_of(verb: &Element) -> Result<String, Refusal> {
        match verb.attr("node") {
            Some(n) if !n.is_empty() => Ok(n.to_owned()),
            _ => Err(refuse(
                StanzaErrorCondition::BadRequest,
                Some(PubsubError::NodeidRequired),
                format!("<{}/> needs a 'node'", verb.name),
            )),
        }
    }

    /// §7.1: publish one item.
    async fn pep_publish(
        &self,
        account: &str,
        from: &Jid,
        pubsub: &Element,
        publish: &Element,
    ) -> Answer {
        let node = Self::node_of(publish)?;
        let items: Vec<&Element> = publish
            .children()
            .filter(|c| c.name == "item" && c.ns == NS_PUBSUB)
            .collect();
        let [item] = items[..] else {
            return Err(refuse(
                StanzaErrorCondition::BadRequest,
                Some(PubsubError::ItemRequired),
                "a PEP publish carries exactly one <item/>",
            ));
        };
        let payloads: Vec<&Element> = item.children().collect();
        let [payload_el] = payloads[..] else {
            return Err(refuse(
                StanzaErrorCondition::BadRequest,
                Some(if payloads.is_empty() {
                    PubsubError::PayloadRequired
                } else {
                    PubsubError::InvalidPayload
                }),
                "a PEP item carries exactly one payload element",
            ));
        };
        let options = match pubsub
            .child("publish-options", NS_PUBSUB)
            .and_then(|o| o.children().find_map(Form::parse))
        {
            Some(form) => {
                if form
                    .form_type
                    .as_deref()
                    .is_some_and(|t| t != NS_PUBLISH_OPTIONS)
                {
                    return Err(refuse(
                        StanzaErrorCondition::BadRequest,
                        Some(PubsubError::InvalidOptions),
                        format!("publish-options need FORM_TYPE {NS_PUBLISH_OPTIONS}"),
                    ));
                }
                ConfigChange::from_form(&form, self.config.pep_max_items).map_err(|e| {
                    refuse(
                        StanzaErrorCondition::Conflict,
                        Some(PubsubError::PreconditionNotMet),
                        e.to_string(),
                    )
                })?
            }
            None => ConfigChange::default(),
        };
        let id = match item.attr("id") {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => format!("{:016x}", rand::random::<u64>()),
        };
        match self
            .publish_item(
                account,
                &node,
                &id,
                &from.to_string(),
                payload_el,
                options,
                NodeConfig::DEFAULT,
            )
            .await?
        {
            Published::Done { .. } => {
                if node == crate::core::vcard::avatar::NS_AVATAR_METADATA {
                    self.avatar_to_vcard(account, payload_el).await;
                }
                Ok(Some(
                    Element::new("pubsub", NS_PUBSUB).with_child(
                        Element::new("publish", NS_PUBSUB)
                            .with_attr("node", &node)
                            .with_child(Element::new("item", NS_PUBSUB).with_attr("id", &id)),
                    ),
                ))
            }
            Published::Conflict => Err(refuse(
                StanzaErrorCondition::Conflict,
                Some(PubsubError::PreconditionNotMet),
                format!("the publish-options do not match the configuration of node {node}"),
            )),
            Published::TooManyNodes => Err(refuse(
                StanzaErrorCondition::ResourceConstraint,
                None,
                format!(
                    "the account has the most PEP nodes allowed (pep_max_nodes = {})",
                    self.config.pep_max_nodes
                ),
            )),
        }
    }

    /// A publish the server makes for `account` itself (XEP-0398 conversion): no
    /// publish-options, a new node with the PEP defaults, notifications as usual. `Err` says
    /// why it was refused.
    pub(crate) async fn publish_for_account(
        &self,
        account: &str,
        node: &str,
        id: &str,
        payload: &Element,
    ) -> Result<(), String> {
        match self
            .publish_item(
                account,
                node,
                id,
                account,
                payload,
                ConfigChange::default(),
                NodeConfig::DEFAULT,
            )
            .await
        {
            Ok(Published::Done { .. }) => Ok(()),
            Ok(Published::Conflict) => Err("the node's configuration conflicts".into()),
            Ok(Published::TooManyNodes) => Err("the account has pep_max_nodes nodes".into()),
            Err(refusal) => Err(refusal.text),
        }
    }

    /// Stores an item (creating the node with `options` over `defaults`) and notifies.
    #[allow(clippy::too_many_arguments)]
    async fn publish_item(
        &self,
        account: &str,
        node: &str,
        id: &str,
        publisher: &str,
        payload_el: &Element,
        options: ConfigChange,
        defaults: NodeConfig,
    ) -> Result<Published, Refusal> {
        let bytes = payload_el.to_bytes();
        if bytes.len() > self.config.pep_max_item_bytes {
            return Err(refuse(
                StanzaErrorCondition::NotAcceptable,
                Some(PubsubError::PayloadTooBig),
                format!(
                    "the payload has {} bytes, more than pep_max_item_bytes = {}",
                    bytes.len(),
                    self.config.pep_max_item_bytes
                ),
            ));
        }
        let p = Publish {
            owner: account.to_owned(),
            node: node.to_owned(),
            item_id: id.to_owned(),
            publisher: publisher.to_owned(),
            payload: bytes,
            options,
            defaults,
            max_nodes: self.config.pep_max_nodes,
        };
        let outcome = self
            .storage
            .call(move |c| store::publish(c, &p))
            .await
            .map_err(storage_refusal)?;
        if let Published::Done { config, .. } = &outcome {
            let event = Element::new("items", NS_PUBSUB_EVENT)
                .with_attr("node", node)
                .with_child(
                    Element::new("item", NS_PUBSUB_EVENT)
                        .with_attr("id", id)
                        .with_child(payload_el.clone()),
                );
            self.notify(account, node, config, event).await;
        }
        Ok(outcome)
    }

    /// Whether `from` (not the owner) may see a node of `account` under `access`; `Err` with
    /// the §6.5.9 refusal when not.
    async fn may_access(
        &self,
        account: &str,
        from: &Jid,
        access: config::AccessModel,
    ) -> Result<(), Refusal> {
        match access {
            config::AccessModel::Open => Ok(()),
            config::AccessModel::Whitelist => Err(refuse(
                StanzaErrorCondition::NotAllowed,
                Some(PubsubError::ClosedNode),
                "this node is the owner's only (whitelist)",
            )),
            config::AccessModel::Presence => {
                let item = self
                    .storage
                    .load_roster_item(account, &self.contact_key(from))
                    .await
                    .map_err(storage_refusal)?;
                if item.is_some_and(|i| i.state.sub.has_from()) {
                    Ok(())
                } else {
                    Err(refuse(
                        StanzaErrorCondition::NotAuthorized,
                        Some(PubsubError::PresenceSubscriptionRequired),
                        "this node is for contacts subscribed to the owner's presence",
                    ))
                }
            }
        }
    }

    /// §6.5: items of a node.
    async fn pep_items(
        &self,
        account: &str,
        from: &Jid,
        who: Requester,
        items: &Element,
    ) -> Answer {
        let node = Self::node_of(items)?;
        let config = self.existing_node(account, &node).await?;
        if who == Requester::Other {
            self.may_access(account, from, config.access).await?;
        }
        let ids: Vec<String> = items
            .children()
            .filter(|c| c.name == "item" && c.ns == NS_PUBSUB)
            .filter_map(|c| c.attr("id").map(str::to_owned))
            .collect();
        let max = items.attr("max_items").and_then(|m| m.parse::<u32>().ok());
        let (owner, n, wanted) = (account.to_owned(), node.clone(), ids.clone());
        let found = self
            .storage
            .call(move |c| store::items(c, &owner, &n, max, &wanted))
            .await
            .map_err(storage_refusal)?;
        if !ids.is_empty() && found.is_empty() {
            return Err(refuse(
                StanzaErrorCondition::ItemNotFound,
                None,
                format!("no such item in node {node}"),
            ));
        }
        let mut out = Element::new("items", NS_PUBSUB).with_attr("node", &node);
        for item in &found {
            out = out.with_child(item_element(NS_PUBSUB, item));
        }
        Ok(Some(Element::new("pubsub", NS_PUBSUB).with_child(out)))
    }

    /// §7.2: the owner retracts an item, notifying when asked to.
    async fn pep_retract(&self, account: &str, retract: &Element) -> Answer {
        let node = Self::node_of(retract)?;
        let Some(id) = retract
            .child("item", NS_PUBSUB)
            .and_then(|i| i.attr("id"))
            .map(str::to_owned)
        else {
            return Err(refuse(
                StanzaErrorCondition::BadRequest,
                Some(PubsubError::ItemRequired),
                "a retract names one <item id/>",
            ));
        };
        let notify = matches!(retract.attr("notify"), Some("true" | "1"));
        let (owner, n, i) = (account.to_owned(), node.clone(), id.clone());
        let (config, removed) = self
            .storage
            .call(move |c| {
                let config = store::node_config(c, &owner, &n)?;
                let removed = config.is_some() && store::retract(c, &owner, &n, &i)?;
                Ok((config, removed))
            })
            .await
            .map_err(storage_refusal)?;
        let Some(config) = config else {
            return Err(refuse(
                StanzaErrorCondition::ItemNotFound,
                None,
                format!("no node {node}"),
            ));
        };
        if !removed {
            return Err(refuse(
                StanzaErrorCondition::ItemNotFound,
                None,
                format!("no item {id} in node {node}"),
            ));
        }
        if notify {
            self.notify_retract(account, &node, &config, &id).await;
        }
        Ok(None)
    }

    async fn notify_retract(&self, account: &str, node: &str, config: &NodeConfig, id: &str) {
        let event = Element::new("items", NS_PUBSUB_EVENT)
            .with_attr("node", node)
            .with_child(Element::new("retract", NS_PUBSUB_EVENT).with_attr("id", id));
        self.notify(account, node, config, event).await;
    }

    /// §8.4: the owner deletes a node; whoever got its notifications learns of it.
    async fn pep_delete(&self, account: &str, delete: &Element) -> Answer {
        self.node_gone(account, delete, "delete", |c, owner, node| {
            store::delete_node(c, owner, node).map(drop)
        })
        .await
    }

    /// §8.5: the owner removes every item of a node; whoever got its notifications learns of
    /// it.
    async fn pep_purge(&self, account: &str, purge: &Element) -> Answer {
        self.node_gone(account, purge, "purge", |c, owner, node| {
            store::purge(c, owner, node)
        })
        .await
    }

    /// Delete and purge: `change` on an existing node, then an `<event/>` child named
    /// `event` to those the node notifies (its configuration read before the change).
    async fn node_gone(
        &self,
        account: &str,
        request: &Element,
        event: &str,
        change: fn(&Db, &str, &str) -> Result<(), SqlError>,
    ) -> Answer {
        let node = Self::node_of(request)?;
        let (owner, n) = (account.to_owned(), node.clone());
        let config = self
            .storage
            .call(move |c| {
                let config = store::node_config(c, &owner, &n)?;
                if config.is_some() {
                    change(c, &owner, &n)?;
                }
                Ok(config)
            })
            .await
            .map_err(storage_refusal)?
            .ok_or_else(|| {
                refuse(
                    StanzaErrorCondition::ItemNotFound,
                    None,
                    format!("no node {node}"),
                )
            })?;
        let event = Element::new(event, NS_PUBSUB_EVENT).with_attr("node", &node);
        self.notify(account, &node, &config, event).await;
        Ok(None)
    }

    /// The configuration of `account`'s node `node`; `<item-not-found/>` when there is none.
    async fn existing_node(&self, account: &str, node: &str) -> Result<NodeConfig, Refusal> {
        let (owner, n) = (account.to_owned(), node.to_owned());
        self.storage
            .call(move |c| store::node_config(c, &owner, &n))
            .await
            .map_err(storage_refusal)?
            .ok_or_else(|| {
                refuse(
                    StanzaErrorCondition::ItemNotFound,
                    None,
                    format!("no node {node}"),
                )
            })
    }

    /// §8.2: the owner reads or changes a node's configuration.
    async fn pep_configure(&self, account: &str, type_: &str, configure: &Element) -> Answer {
        let node = Self::node_of(configure)?;
        let current = self.existing_node(account, &node).await?;
        if type_ == "get" {
            return Ok(Some(
                Element::new("pubsub", NS_PUBSUB_OWNER).with_child(
                    Element::new("configure", NS_PUBSUB_OWNER)
                        .with_attr("node", &node)
                        .with_child(current.to_form().to_element()),
                ),
            ));
        }
        let Some(form) = configure.children().find_map(Form::parse) else {
            return Err(refuse(
                StanzaErrorCondition::BadRequest,
                None,
                "a configure set carries a data form",
            ));
        };
        if form.type_ == "cancel" {
            return Ok(None);
        }
        if form
            .form_type
            .as_deref()
            .is_some_and(|t| t != NS_NODE_CONFIG)
        {
            return Err(refuse(
                StanzaErrorCondition::BadRequest,
                None,
                format!("the configuration form needs FORM_TYPE {NS_NODE_CONFIG}"),
            ));
        }
        let change = ConfigChange::from_form(&form, self.config.pep_max_items)
            .map_err(|e| refuse(StanzaErrorCondition::NotAcceptable, None, e.to_string()))?;
        let updated = change.apply(&current);
        let (owner, n) = (account.to_owned(), node.clone());
        self.storage
            .call(move |c| store::configure(c, &owner, &n, &updated))
            .await
            .map_err(storage_refusal)?;
        Ok(None)
    }

    /// The full JIDs a notification of `node` goes to: the owner's available resources, and
    /// the watchers with `NODE+notify` whom the access model allows.
    async fn recipients(&self, account: &str, node: &str, config: &NodeConfig) -> Vec<String> {
        let mut out: Vec<String> = self
            .sessions_of(account)
            .iter()
            .filter(|s| s.is_available())
            .map(|s| s.jid.to_string())
            .collect();
        if config.access == config::AccessModel::Whitelist {
            return out;
        }
        let interested: Vec<String> = self
            .caps
            .interested(account, &notify_feature(node))
            .into_iter()
            .filter(|jid| Jid::parse(jid).is_ok_and(|j| self.contact_key(&j) != account))
            .collect();
        if interested.is_empty() {
            return out;
        }
        if config.access == config::AccessModel::Open {
            out.extend(interested);
            return out;
        }
        let roster = match self.storage.load_roster(account).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("roster read failed for PEP notifications: {e}");
                return out;
            }
        };
        for jid in interested {
            let Ok(j) = Jid::parse(&jid) else { continue };
            let key = self.contact_key(&j);
            if roster
                .iter()
                .any(|i| i.jid == key && i.state.sub.has_from())
            {
                out.push(jid);
            }
        }
        out
    }

    /// Sends `event` (the child of `<event/>`) about `node` to its recipients.
    async fn notify(&self, account: &str, node: &str, config: &NodeConfig, event: Element) {
        let event = Element::new("event", NS_PUBSUB_EVENT).with_child(event);
        for to in self.recipients(account, node, config).await {
            self.send_event(account, &to, event.clone()).await;
        }
    }

    /// One `<message type='headline'/>` with `event` from the account's bare JID.
    async fn send_event(&self, account: &str, to: &str, event: Element) {
        let msg = Element::new("message", ns::CLIENT)
            .with_attr("from", account)
            .with_attr("to", to)
            .with_attr("type", "headline")
            .with_attr("id", format!("pep{:x}", rand::random::<u64>()))
            .with_child(event);
        let local = Jid::parse(to).ok().and_then(|j| {
            let r = j.resource()?.to_owned();
            (self.contact_key(&j) == account).then_some(r)
        });
        match local.and_then(|r| self.session(account, &r)) {
            // The owner's own resources directly: no account lookup needed.
            Some(s) => s.send(Bytes::from(msg.to_bytes())),
            None => self.route(msg).await,
        }
    }

    /// XEP-0163 §4.3.4: the last item of each node `jid` is interested in and allowed to see.
    async fn send_last_items(&self, account: &str, jid: &str) {
        let Some(features) = self.caps.features_for(account, jid) else {
            return;
        };
        if !features.iter().any(|f| f.ends_with("+notify")) {
            return;
        }
        let Ok(j) = Jid::parse(jid) else { return };
        let owner = account.to_owned();
        let last = match self
            .storage
            .call(move |c| store::last_items(c, &owner))
            .await
        {
            Ok(l) => l,
            Err(e) => return tracing::warn!("reading last PEP items failed: {e}"),
        };
        let is_owner = self.contact_key(&j) == account;
        let mut allowed_presence: Option<bool> = None;
        for (node, config, item) in last {
            if !features.iter().any(|f| *f == notify_feature(&node)) {
                continue;
            }
            if !is_owner {
                let ok = match config.access {
                    config::AccessModel::Open => true,
                    config::AccessModel::Whitelist => false,
                    config::AccessModel::Presence => match allowed_presence {
                        Some(ok) => ok,
                        None => {
                            let ok = self.may_access(account, &j, config.access).await.is_ok();
                            allowed_presence = Some(ok);
                            ok
                        }
                    },
                };
                if !ok {
                    continue;
                }
            }
            let event = Element::new("event", NS_PUBSUB_EVENT).with_child(
                Element::new("items", NS_PUBSUB_EVENT)
                    .with_attr("node", &node)
                    .with_child(item_element(NS_PUBSUB_EVENT, &item)),
            );
            self.send_event(account, jid, event).await;
        }
    }

    /// Presence that reached `account` (from its own resource's broadcast or from a contact):
    /// tracks who is interested in which nodes ([`caps`]).
    pub(crate) async fn pep_presence(&self, account: &str, from: &Jid, el: &Element) {
        if from.resource().is_none() {
            return;
        }
        let jid = from.to_string();
        match el.attr("type") {
            None => {}
            Some("unavailable") => return self.caps.unwatch(account, &jid),
            Some(_) => return,
        }
        match self.caps.watch(account, &jid, Caps::of_presence(el)) {
            Watch::Known { send_last: true } => self.send_last_items(account, &jid).await,
            Watch::Known { send_last: false } | Watch::Wait => {}
            Watch::Ask { caps } => {
                let domain = account.split_once('@').map_or(account, |(_, d)| d);
                let id = format!("caps{:x}", rand::random::<u64>());
                let query = Element::new("query", NS_DISCO_INFO)
                    .with_attr("node", format!("{}#{}", caps.node, caps.ver));
                let iq = Element::new("iq", ns::CLIENT)
                    .with_attr("from", domain)
                    .with_attr("to", &jid)
                    .with_attr("type", "get")
                    .with_attr("id", &id)
                    .with_child(query);
                self.caps.begin_query(&id, &jid, caps);
                self.route(iq).await;
            }
        }
    }

    /// An iq result or error to one of our domains: the answer to a caps query, if it is one.
    pub(crate) async fn caps_answer(&self, el: &Element) {
        let Some(pending) = el.attr("id").and_then(|id| self.caps.take_query(id)) else {
            return;
        };
        if el.attr("from") != Some(pending.jid.as_str()) || el.attr("type") != Some("result") {
            return;
        }
        let Some(query) = el.child("query", NS_DISCO_INFO) else {
            return;
        };
        if !caps::verify(&pending.caps, query) {
            tracing::debug!(jid = %pending.jid, "caps answer does not match its hash; not cached");
            return;
        }
        for (account, jid) in self.caps.learn(&pending.caps.ver, caps::features_of(query)) {
            self.send_last_items(&account, &jid).await;
        }
    }

    /// disco#items on the account's bare JID by its owner: the PEP nodes.
    pub(crate) async fn pep_disco_items(&self, session: &Arc<SessionHandle>, el: &Element) {
        let owner = session.account.clone();
        match self.storage.call(move |c| store::nodes(c, &owner)).await {
            Ok(nodes) => {
                let mut q = Element::new("query", NS_DISCO_ITEMS);
                for (node, _) in nodes {
                    q = q.with_child(
                        Element::new("item", NS_DISCO_ITEMS)
                            .with_attr("jid", &session.account)
                            .with_attr("node", node),
                    );
                }
                session.send_element(&iq_result(el, &session.account).with_child(q));
            }
            Err(e) => {
                tracing::warn!("reading PEP nodes failed: {e}");
                self.storage_failed(el).await
            }
        }
    }
}

#[cfg(test)]
mod tests;
