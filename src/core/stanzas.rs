//! Delivery to local addresses (RFC 6121 §8.5), the server's answers for an account and for a
//! domain (rosters §2, XEP-0030 disco, XEP-0199 ping, XEP-0092 version), offline storage.
//!
//! Messages to a bare JID go to every available resource with a non-negative priority
//! (§8.5.2.1.1 allows this for `chat` and `normal`); with none available, `chat` and `normal`
//! messages are stored and delivered when the account next sends initial presence (§8.5.2.2.1,
//! XEP-0160), stamped with an XEP-0203 `<delay/>`. Messages to a full JID whose resource is not
//! signed in are treated as if addressed to the bare JID, except `groupchat` (an error) and
//! `headline`/`error` (dropped). Stanzas for an account that does not exist get
//! `service-unavailable` (§8.5.1), and a subscription request or a probe gets `unsubscribed`
//! (§3.1.3, §4.3.2).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::blocking::NS_BLOCKING;
use super::carbons::NS_CARBONS;
use super::disco::{NS_DISCO_INFO, NS_DISCO_ITEMS, NS_VERSION};
use super::extdisco::NS_EXTDISCO;
use super::last::NS_LAST;
use super::mam::NS_MAM;
use super::pep::private::NS_PRIVATE;
use super::pep::{NS_PUBSUB, NS_PUBSUB_OWNER};
use super::push::NS_PUSH;
use super::register::NS_REGISTER;
use super::roster::{RosterItem, SubscriptionAction, NS_ROSTER};
use super::vcard::NS_VCARD;
use super::{storage, Core, Queued, SessionHandle};
use crate::jid::Jid;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::stanza::{NsContext, Stanza};
use crate::xml::{ns, Element, Node};

pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const NS_DELAY: &str = "urn:xmpp:delay";

/// An iq result to `req`, from `from`.
pub(crate) fn iq_result(req: &Element, from: &str) -> Element {
    let mut r = Element::new("iq", ns::CLIENT)
        .with_attr("type", "result")
        .with_attr("from", from);
    if let Some(to) = req.attr("from") {
        r.set_attr("to", to);
    }
    if let Some(id) = req.attr("id") {
        r.set_attr("id", id);
    }
    r
}

/// The payload element of an iq (its first child element).
pub(crate) fn payload(el: &Element) -> Option<&Element> {
    el.children().next()
}

/// A disco `<query/>` of `ns` without a `node` (nodes are not served yet).
fn is_disco(p: &Element, ns: &str) -> bool {
    p.name == "query" && p.ns == ns && p.attr("node").is_none()
}

/// The iq's payload is a query without a `node`.
fn p_node_none(el: &Element) -> bool {
    payload(el).is_some_and(|p| p.attr("node").is_none())
}

impl Core {
    /// A stanza for one of our domains (or aliases), from a local session or the gateway.
    pub(crate) async fn deliver_local(&self, to: Jid, el: Element) {
        let canonical = self
            .domains
            .canonical(to.domain())
            .unwrap_or(to.domain())
            .to_owned();
        let Some(node) = to.node() else {
            return self.server_stanza(&to, el).await;
        };
        let account = format!("{node}@{canonical}");
        // A signed-in account exists (removing one ends its sessions): no database round
        // trip, and its sessions still get their stanzas (and error replies) while the
        // database is down.
        let exists = if self.sessions_lock().contains_key(&account) {
            Ok(true)
        } else {
            let (n, d) = (node.to_owned(), canonical.clone());
            self.storage
                .call(move |c| storage::account_exists(c, &n, &d))
                .await
        };
        match exists {
            Ok(true) => {}
            Ok(false) => return self.no_such_account(&to, el).await,
            Err(e) => {
                tracing::warn!("account lookup failed: {e}");
                return self.storage_failed(&el).await;
            }
        }
        if self.blocked_inbound(&account, &el).await {
            return;
        }
        match el.name.as_str() {
            "message" => self.deliver_message(&account, &to, el).await,
            "presence" => self.presence_inbound(&account, &to, el).await,
            "iq" => self.deliver_iq(&account, &to, el).await,
            _ => {}
        }
    }

    /// §8.5.1: no such account.
    async fn no_such_account(&self, to: &Jid, el: Element) {
        match (el.name.as_str(), el.attr("type")) {
            ("presence", Some("subscribe")) => {
                // §3.1.3: the request cannot succeed; say so.
                if let Some(from) = el.attr("from").and_then(|f| Jid::parse(f).ok()) {
                    let reply = Element::new("presence", ns::CLIENT)
                        .with_attr("from", to.bare().to_string())
                        .with_attr("to", from.bare().to_string())
                        .with_attr("type", "unsubscribed");
                    Box::pin(self.route(reply)).await;
                }
            }
            ("presence", Some("probe")) => self.refuse_probe(to, &el).await,
            ("presence", _) => {}
            _ => {
                self.bounce(
                    &el,
                    StanzaErrorCondition::ServiceUnavailable,
                    "no such user",
                )
                .await
            }
        }
    }

    /// §8.5.2 (bare JID) and §8.5.3 (full JID) for messages.
    async fn deliver_message(&self, account: &str, to: &Jid, el: Element) {
        let type_ = el.attr("type").unwrap_or("normal").to_owned();
        let (el, copy) = super::carbons::take_private(el);
        let el = self.archive_incoming(account, el).await;
        if let Some(resource) = to.resource() {
            if let Some(s) = self.session(account, resource) {
                s.send_element(&el);
                self.carbons_received(account, &el, copy, &[s.id]);
                if s.detached.load(Ordering::Relaxed) {
                    self.notify_push(account, &el).await;
                }
                return;
            }
            match type_.as_str() {
                "groupchat" => {
                    return self
                        .bounce(
                            &el,
                            StanzaErrorCondition::ServiceUnavailable,
                            "no such resource",
                        )
                        .await
                }
                "headline" | "error" => return,
                _ => {}
            }
        }
        match type_.as_str() {
            "error" => return,
            "groupchat" => {
                return self
                    .bounce(
                        &el,
                        StanzaErrorCondition::ServiceUnavailable,
                        "not a chat room",
                    )
                    .await
            }
            _ => {}
        }
        let mut targets = self.message_targets(account);
        // No session: stored, unless one became available meanwhile (checked again under
        // the lock that a sign-in takes to read the store, `Core::offline`).
        let offline = if targets.is_empty() {
            let guard = self.offline.lock().await;
            targets = self.message_targets(account);
            Some(guard)
        } else {
            None
        };
        if !targets.is_empty() {
            drop(offline);
            let bytes = Bytes::from(el.to_bytes());
            let shared = targets.len() > 1;
            for s in &targets {
                if shared {
                    s.send_shared(bytes.clone());
                } else {
                    s.send(bytes.clone());
                }
            }
            let ids: Vec<u64> = targets.iter().map(|s| s.id).collect();
            self.carbons_received(account, &el, copy, &ids);
            if targets.iter().all(|s| s.detached.load(Ordering::Relaxed)) {
                self.notify_push(account, &el).await;
            }
            return;
        }
        if type_ == "headline" {
            return;
        }
        let worth_a_push = super::push::is_worth_a_push(&el);
        let stored = self.store_offline(account, el).await;
        drop(offline);
        if stored && worth_a_push {
            self.push_to_app_servers(account).await;
        }
    }

    /// XEP-0160: keep the message, stamped with when it arrived (XEP-0203). A message stored
    /// once already (delivered from storage to a session that ended before writing it) keeps
    /// its first stamp. True when it was stored (else it went back to its sender).
    async fn store_offline(&self, account: &str, mut el: Element) -> bool {
        let domain = account
            .split_once('@')
            .map_or(account, |(_, d)| d)
            .to_owned();
        let stamped = el
            .children()
            .any(|c| c.name == "delay" && c.ns == NS_DELAY && c.attr("from") == Some(&domain));
        if !stamped {
            let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            el.children.push(Node::Element(
                Element::new("delay", NS_DELAY)
                    .with_attr("from", domain)
                    .with_attr("stamp", stamp),
            ));
        }
        let bytes = el.to_bytes();
        let owner = account.to_owned();
        let limit = self.config.offline_max;
        match self
            .storage
            .call(move |c| storage::store_offline(c, &owner, &bytes, limit))
            .await
        {
            Ok(true) => return true,
            Ok(false) => {
                self.bounce(
                    &el,
                    StanzaErrorCondition::ServiceUnavailable,
                    "the recipient's offline storage is full",
                )
                .await
            }
            Err(e) => {
                tracing::warn!("storing an offline message failed: {e}");
                self.storage_failed(&el).await
            }
        }
        false
    }

    /// Re-routes what an ended session had queued but never wrote, each stanza as if it had
    /// just arrived for the account with this resource gone (RFC 6121 §8.5):
    /// - a message of type `chat` or `normal` (or none, or unknown: §5.2.2) goes through the
    ///   delivery rules again: to another available resource, or to offline storage (to the
    ///   session that now holds the same resource, after a conflict). A copy that went to the
    ///   other resources too is not sent to them twice: it is stored only if none is left;
    /// - `groupchat` and `headline` messages and iq requests go back to their sender with
    ///   `<service-unavailable/>` (the error §8.5.3.2.1 and §8.5.3.2.3 give for a resource
    ///   that is gone; a headline could be ignored, but then its sender would never learn):
    ///   no other session could answer them;
    /// - errors and iq results are never bounced, and presence is not re-routed (the sender
    ///   learns of the session's end from its unavailable presence): both are dropped, counted
    ///   in the debug log.
    pub(crate) async fn reroute_unwritten(&self, session: &SessionHandle, unwritten: Vec<Queued>) {
        let (mut rerouted, mut bounced, mut presence, mut dropped) = (0, 0, 0, 0);
        for q in unwritten {
            let el = match Stanza::parse(q.bytes, &NsContext::new(ns::CLIENT, &[]))
                .and_then(|s| s.element())
            {
                Ok(el) => el,
                Err(e) => {
                    // We wrote these bytes ourselves; they always parse.
                    tracing::warn!(jid = %session.jid, "an unwritten stanza does not parse: {e}");
                    continue;
                }
            };
            match (el.name.as_str(), el.attr("type")) {
                ("presence", _) => presence += 1,
                ("message", Some("error")) | ("iq", Some("result" | "error")) => dropped += 1,
                ("message", Some("groupchat" | "headline")) | ("iq", _) => {
                    bounced += 1;
                    self.bounce(
                        &el,
                        StanzaErrorCondition::ServiceUnavailable,
                        "the recipient's session ended",
                    )
                    .await
                }
                ("message", _) => {
                    if q.shared && !self.message_targets(&session.account).is_empty() {
                        dropped += 1;
                        continue;
                    }
                    match el.attr("to").map(Jid::parse) {
                        Some(Ok(to)) => {
                            rerouted += 1;
                            self.deliver_local(to, el).await
                        }
                        _ => dropped += 1,
                    }
                }
                _ => dropped += 1,
            }
        }
        tracing::debug!(
            jid = %session.jid,
            rerouted,
            bounced,
            presence,
            dropped,
            "stanzas left unwritten by an ended session"
        );
    }

    /// Answers a stanza that needed the database when the database failed (RFC 6120
    /// §8.3.3.6 `internal-server-error`).
    pub(crate) async fn storage_failed(&self, el: &Element) {
        self.bounce(
            el,
            StanzaErrorCondition::InternalServerError,
            "storage failure",
        )
        .await
    }

    /// The sessions a message to the account's bare JID goes to now: the available resources
    /// with a non-negative priority (§8.5.2.1.1).
    fn message_targets(&self, account: &str) -> Vec<Arc<SessionHandle>> {
        self.sessions_of(account)
            .into_iter()
            .filter(|s| {
                let p = s.presence();
                p.available && p.priority >= 0
            })
            .collect()
    }

    /// Delivers stored messages to a session that just became available, then forgets them.
    pub(crate) async fn deliver_offline(&self, session: &SessionHandle) {
        // The session is available by now: a message that finds none and waits for this
        // lock checks again and goes to it directly.
        let _offline = self.offline.lock().await;
        let owner = session.account.clone();
        let msgs = match self
            .storage
            .call({
                let owner = owner.clone();
                move |c| storage::offline_messages(c, &owner)
            })
            .await
        {
            Ok(m) => m,
            Err(e) => return tracing::warn!("reading offline messages failed: {e}"),
        };
        let Some(last) = msgs.last().map(|(id, _)| *id) else {
            return;
        };
        for (_, bytes) in msgs {
            session.send(Bytes::from(bytes));
        }
        if let Err(e) = self
            .storage
            .call(move |c| storage::delete_offline(c, &owner, last))
            .await
        {
            tracing::warn!("deleting delivered offline messages failed: {e}");
        }
    }

    /// An iq for an account: to a full JID it goes to that session; to the bare JID the server
    /// answers on the account's behalf (RFC 6120 §10.5.3).
    async fn deliver_iq(&self, account: &str, to: &Jid, el: Element) {
        let is_request = matches!(el.attr("type"), Some("get" | "set"));
        if let Some(resource) = to.resource() {
            match self.session(account, resource) {
                Some(s) => s.send_element(&el),
                None if is_request => {
                    self.bounce(
                        &el,
                        StanzaErrorCondition::ServiceUnavailable,
                        "no such resource",
                    )
                    .await
                }
                None => {}
            }
            return;
        }
        if !is_request {
            // Answers to the account's bare JID: ours to push publishes, or nobody's.
            self.push_answer(account, &el).await;
            return;
        }
        let from_self = el
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .is_some_and(|f| self.contact_key(&f) == account);
        if from_self {
            // The account's own clients addressing their bare JID: like an iq without `to`.
            return;
        }
        self.account_iq(account, to, el).await
    }

    /// An iq request to an account's bare JID from anyone but the account itself: the server
    /// answers for the account (RFC 6120 §10.5.3.2).
    async fn account_iq(&self, account: &str, to: &Jid, el: Element) {
        match payload(&el).map(|p| (p.name.as_str(), p.ns.as_str())) {
            Some(("pubsub", NS_PUBSUB | NS_PUBSUB_OWNER)) => return self.pep_iq(account, el).await,
            Some((_, NS_PRIVATE)) => return self.private_forbidden(&el).await,
            Some((_, NS_VCARD)) => return self.vcard_of(account, to, el).await,
            Some((_, NS_LAST)) => return self.last_activity_of(account, to, el).await,
            _ => {}
        }
        let reply = match (el.attr("type"), payload(&el)) {
            (Some("get"), Some(p)) if (p.name.as_str(), p.ns.as_str()) == ("ping", ns::PING) => {
                Some(iq_result(&el, &to.to_string()))
            }
            (Some("get"), Some(p)) if is_disco(p, NS_DISCO_INFO) => {
                Some(iq_result(&el, &to.to_string()).with_child(self.account_disco_info()))
            }
            (Some("get"), Some(p)) if is_disco(p, NS_DISCO_ITEMS) => {
                Some(iq_result(&el, &to.to_string()).with_child(self.account_disco_items()))
            }
            _ => None,
        };
        match reply {
            Some(r) => Box::pin(self.route(r)).await,
            None => self.unsupported_iq(&el).await,
        }
    }

    /// An iq request nobody here handles: `<service-unavailable/>` (RFC 6120 §8.4), naming
    /// what was asked for so that the client's user learns more than "unknown".
    pub(crate) async fn unsupported_iq(&self, el: &Element) {
        let text = match payload(el) {
            Some(p) => format!("{{{}}}{} is not supported here", p.ns, p.name),
            None => "an iq request needs a payload".to_owned(),
        };
        self.bounce(el, StanzaErrorCondition::ServiceUnavailable, &text)
            .await
    }

    /// A stanza for a domain itself: the server's own iqs.
    async fn server_stanza(&self, to: &Jid, el: Element) {
        if el.name != "iq" {
            if el.name == "message" {
                self.bounce(
                    &el,
                    StanzaErrorCondition::ServiceUnavailable,
                    "the server does not take messages; address a user",
                )
                .await;
            }
            return;
        }
        if matches!(el.attr("type"), Some("result" | "error")) {
            return self.caps_answer(&el).await;
        }
        if !matches!(el.attr("type"), Some("get" | "set")) {
            return;
        }
        let domain = to.to_string();
        if payload(&el).is_some_and(|p| p.ns == NS_EXTDISCO) {
            return self.extdisco_iq(&domain, el).await;
        }
        let reply = match (el.attr("type"), payload(&el)) {
            (Some("get"), Some(p)) if p.ns == ns::PING && p.name == "ping" => {
                Some(iq_result(&el, &domain))
            }
            (Some("get"), Some(p)) if is_disco(p, NS_DISCO_INFO) => {
                Some(iq_result(&el, &domain).with_child(self.server_disco_info()))
            }
            (Some("get"), Some(p)) if is_disco(p, NS_DISCO_ITEMS) => {
                Some(iq_result(&el, &domain).with_child(self.server_disco_items()))
            }
            (Some("get"), Some(p)) if p.ns == NS_LAST && p.name == "query" => {
                Some(iq_result(&el, &domain).with_child(self.uptime()))
            }
            (Some("get"), Some(p)) if p.ns == NS_VERSION && p.name == "query" => Some(
                iq_result(&el, &domain).with_child(
                    Element::new("query", NS_VERSION)
                        .with_child(Element::new("name", NS_VERSION).with_text("fedgate"))
                        .with_child(
                            Element::new("version", NS_VERSION)
                                .with_text(env!("CARGO_PKG_VERSION")),
                        ),
                ),
            ),
            _ => None,
        };
        match reply {
            Some(r) => Box::pin(self.route(r)).await,
            None => self.unsupported_iq(&el).await,
        }
    }

    /// An iq from a signed-in client with no `to` or its own bare JID: roster, session, ping;
    /// or addressed to one of our domains.
    pub(crate) async fn client_iq(&self, session: &Arc<SessionHandle>, el: Element) {
        let to = el.attr("to").and_then(|t| Jid::parse(t).ok());
        let own = to
            .as_ref()
            .is_none_or(|t| t.is_bare() && self.contact_key(t) == session.account);
        if !own {
            return self.route(el).await;
        }
        if !matches!(el.attr("type"), Some("get" | "set")) {
            return;
        }
        let me = session.jid.bare().to_string();
        let p = payload(&el).map(|p| (p.name.clone(), p.ns.clone()));
        match (
            el.attr("type"),
            p.as_ref().map(|(n, s)| (n.as_str(), s.as_str())),
        ) {
            (Some("get"), Some(("query", NS_ROSTER))) => self.roster_get(session, el).await,
            (Some("set"), Some(("query", NS_ROSTER))) => self.roster_set(session, el).await,
            (Some("set"), Some(("session", NS_SESSION))) => {
                session.send_element(&iq_result(&el, &me))
            }
            (Some("get"), Some(("ping", ns::PING))) => session.send_element(&iq_result(&el, &me)),
            (Some("set"), Some((_, NS_CARBONS))) => self.carbons_iq(session, el).await,
            (_, Some((_, NS_MAM))) => self.mam_iq(session, el).await,
            (Some("get"), Some(("query", NS_DISCO_INFO))) if p_node_none(&el) => {
                session.send_element(&iq_result(&el, &me).with_child(self.account_disco_info()))
            }
            (Some("get"), Some(("query", NS_DISCO_ITEMS))) if p_node_none(&el) => {
                self.pep_disco_items(session, &el).await
            }
            (_, Some(("pubsub", NS_PUBSUB | NS_PUBSUB_OWNER))) => {
                self.pep_iq(&session.account, el).await
            }
            (_, Some(("query", NS_PRIVATE))) => self.private_iq(session, el).await,
            (_, Some((_, NS_BLOCKING))) => self.blocking_iq(session, el).await,
            (_, Some((_, NS_PUSH))) => self.push_iq(session, el).await,
            (_, Some(("vCard", NS_VCARD))) => self.vcard_own(session, el).await,
            (_, Some(("query", NS_REGISTER))) => self.register_iq(session, el).await,
            _ => self.unsupported_iq(&el).await,
        }
    }

    /// RFC 6121 §2.3–§2.5: add, update or remove one roster item, then push it to every
    /// interested resource.
    async fn roster_set(&self, session: &Arc<SessionHandle>, el: Element) {
        let me = session.jid.bare().to_string();
        let items: Vec<&Element> = payload(&el)
            .map(|q| {
                q.children()
                    .filter(|c| c.name == "item" && c.ns == NS_ROSTER)
                    .collect()
            })
            .unwrap_or_default();
        let [item] = items[..] else {
            return self
                .bounce(
                    &el,
                    StanzaErrorCondition::BadRequest,
                    "a roster set has exactly one item",
                )
                .await;
        };
        let contact = match item.attr("jid").map(Jid::parse) {
            Some(Ok(j)) if j.is_bare() => self.contact_key(&j),
            _ => {
                return self
                    .bounce(
                        &el,
                        StanzaErrorCondition::BadRequest,
                        "the item needs a bare 'jid'",
                    )
                    .await
            }
        };
        if contact == session.account {
            return self
                .bounce(
                    &el,
                    StanzaErrorCondition::NotAllowed,
                    "you cannot add yourself",
                )
                .await;
        }
        let owner = session.account.clone();
        let existing = match self.storage.load_roster_item(&owner, &contact).await {
            Ok(existing) => existing,
            Err(e) => {
                tracing::warn!("roster read failed: {e}");
                return self.storage_failed(&el).await;
            }
        };
        if item.attr("subscription") == Some("remove") {
            let Some(old) = existing.filter(|i| i.in_roster) else {
                return self
                    .bounce(&el, StanzaErrorCondition::ItemNotFound, "not in the roster")
                    .await;
            };
            // §2.5.2: cancel both directions of the subscription with the contact.
            let mut gone = old.clone();
            gone.in_roster = false;
            gone.state.pending_in = false;
            if let Err(e) = self.storage.store_roster_item(&owner, &gone).await {
                tracing::warn!("roster write failed: {e}");
                return self.storage_failed(&el).await;
            }
            session.send_element(&iq_result(&el, &me));
            self.push_roster(&owner, RosterItem::removed(&contact))
                .await;
            for (needed, action) in [
                (
                    old.state.sub.has_to() || old.state.pending_out,
                    SubscriptionAction::Unsubscribe,
                ),
                (
                    old.state.sub.has_from() || old.state.pending_in,
                    SubscriptionAction::Unsubscribed,
                ),
            ] {
                if needed {
                    let p = Element::new("presence", ns::CLIENT)
                        .with_attr("from", &me)
                        .with_attr("to", &contact)
                        .with_attr("type", action.as_str());
                    self.route(p).await;
                }
            }
            if old.state.sub.has_from() {
                self.send_unavailable_to(&session.account, &contact).await;
            }
            return;
        }
        let groups: Vec<String> = item
            .children()
            .filter(|g| g.name == "group" && g.ns == NS_ROSTER)
            .map(Element::text)
            .collect();
        // §2.3.3: an empty group is not-acceptable, a group named twice a bad request.
        if groups.iter().any(String::is_empty) {
            return self
                .bounce(&el, StanzaErrorCondition::NotAcceptable, "an empty group")
                .await;
        }
        if groups
            .iter()
            .enumerate()
            .any(|(i, g)| groups[..i].contains(g))
        {
            return self
                .bounce(&el, StanzaErrorCondition::BadRequest, "a group named twice")
                .await;
        }
        let mut updated = existing.unwrap_or_else(|| RosterItem::new(&contact));
        updated.in_roster = true;
        updated.name = item
            .attr("name")
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        updated.groups = groups;
        if let Err(e) = self.storage.store_roster_item(&owner, &updated).await {
            tracing::warn!("roster write failed: {e}");
            return self.storage_failed(&el).await;
        }
        session.send_element(&iq_result(&el, &me));
        self.push_roster(&owner, updated.to_element()).await;
    }

    /// A roster push (RFC 6121 §2.1.6) to every resource of `account` that asked for its
    /// roster, with the roster's new XEP-0237 version.
    pub(crate) async fn push_roster(&self, account: &str, item: Element) {
        let mut query = Element::new("query", NS_ROSTER);
        if let Some(ver) = self.bump_roster_version(account).await {
            query.set_attr("ver", ver);
        }
        let query = query.with_child(item);
        for s in self.sessions_of(account) {
            if !s.presence().interested {
                continue;
            }
            let push = Element::new("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_attr("id", format!("push{}", rand::random::<u32>()))
                .with_attr("to", s.jid.to_string())
                .with_child(query.clone());
            s.send_element(&push);
        }
    }

    /// The roster key for a contact: its bare JID, with one of our aliases mapped to the
    /// canonical domain so that both spellings are one contact.
    pub(crate) fn contact_key(&self, jid: &Jid) -> String {
        let bare = jid.bare();
        match (bare.node(), self.domains.canonical(bare.domain())) {
            (Some(n), Some(d)) => format!("{n}@{d}"),
            _ => bare.to_string(),
        }
    }
}
