//! XEP-0191 Blocking Command (`urn:xmpp:blocking`): an account's list of blocked JIDs, kept in
//! SQLite and cached per account (every stanza to or from the account consults it).
//!
//! 1. `<blocklist/>` get (§3.2): the items; the resource is then sent the pushes of step 2.
//! 2. `<block/>` and `<unblock/>` sets (§3.3–§3.5): each item needs a valid `jid` (else
//!    `<bad-request/>`), a block at least one item; an unblock without items empties the list.
//!    The change is pushed to every resource of the account that asked for the blocklist;
//!    a contact that could see the account's presence (a `from` subscription or directed
//!    presence) gets unavailable presence when blocked, and a subscribed contact gets the
//!    account's current presence again when unblocked. At most `max_blocklist` JIDs
//!    (`<resource-constraint/>`).
//! 3. Enforcement (§3.3, JID matching as XEP-0016 §2.1): an item `user@domain/resource`
//!    matches that full JID only, `user@domain` any of its resources, `domain/resource` that
//!    JID only, `domain` the domain and every JID at it. A stanza from a blocked JID to the
//!    account is dropped: presence silently, a message or an iq get/set answered
//!    `<service-unavailable/>` (so the account looks offline, not blocking), other iqs
//!    silently. The account's own stanzas to a blocked JID come back `<not-acceptable/>` with
//!    `<blocked xmlns='urn:xmpp:blocking:errors'/>`, and its presence broadcasts skip them.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::core::storage::{params, Db, SqlError};

use super::stanzas::{iq_result, payload};
use super::storage::StorageError;
use super::{Core, SessionHandle};
use crate::jid::Jid;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::{ns, Element, Node};

pub const NS_BLOCKING: &str = "urn:xmpp:blocking";
pub const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";

/// The blocklists of the accounts that needed theirs, by canonical bare JID; loaded from the
/// database on first use and kept in step with it by block and unblock.
#[derive(Default)]
pub(crate) struct Blocklists {
    lists: Mutex<HashMap<String, Arc<Vec<Jid>>>>,
}

impl Blocklists {
    fn get(&self, account: &str) -> Option<Arc<Vec<Jid>>> {
        self.lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account)
            .cloned()
    }

    fn put(&self, account: &str, list: Vec<Jid>) -> Arc<Vec<Jid>> {
        let list = Arc::new(list);
        self.lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account.to_owned(), list.clone());
        list
    }

    /// Forgets an account's list (the account is gone).
    pub(crate) fn forget(&self, account: &str) {
        self.lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(account);
    }
}

/// Whether blocklist item `item` covers `jid` (XEP-0016 §2.1 order of matching).
pub(crate) fn matches(item: &Jid, jid: &Jid) -> bool {
    if item.domain() != jid.domain() {
        return false;
    }
    match (item.node(), item.resource()) {
        (Some(_), Some(_)) => item == jid,
        (Some(n), None) => jid.node() == Some(n),
        (None, Some(r)) => jid.node().is_none() && jid.resource() == Some(r),
        (None, None) => true,
    }
}

/// The block/unblock command of a set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Command {
    Block,
    Unblock,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Command::Block => "block",
            Command::Unblock => "unblock",
        }
    }
}

// ---- storage --------------------------------------------------------------------------------

pub(crate) fn load(conn: &Db, owner: &str) -> Result<Vec<String>, SqlError> {
    conn.query_map(
        "SELECT jid FROM blocklist WHERE owner = ?1 ORDER BY jid",
        params![owner],
        |r| r.get(0),
    )
}

/// Adds `jids` unless the list would then hold more than `max`; `Ok(false)` when it would.
fn add(conn: &Db, owner: &str, jids: &[String], max: usize) -> Result<bool, SqlError> {
    let tx = conn.transaction()?;
    for j in jids {
        tx.execute(
            "INSERT INTO blocklist (owner, jid) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![owner, j],
        )?;
    }
    let count: i64 = tx.query_row(
        "SELECT COUNT(*) FROM blocklist WHERE owner = ?1",
        params![owner],
        |r| r.get(0),
    )?;
    if count as usize > max {
        return Ok(false); // rolled back on drop
    }
    tx.commit()?;
    Ok(true)
}

/// Removes `jids`, or everything when `None`.
fn remove(conn: &Db, owner: &str, jids: Option<&[String]>) -> Result<(), SqlError> {
    match jids {
        None => {
            conn.execute("DELETE FROM blocklist WHERE owner = ?1", params![owner])?;
        }
        Some(jids) => {
            let tx = conn.transaction()?;
            for j in jids {
                tx.execute(
                    "DELETE FROM blocklist WHERE owner = ?1 AND jid = ?2",
                    params![owner, j],
                )?;
            }
            tx.commit()?;
        }
    }
    Ok(())
}

impl Core {
    /// A JID with one of our aliases mapped to the canonical domain, resource kept, so that
    /// an item and a sender spelled with either domain compare alike.
    fn canonical_jid(&self, jid: &Jid) -> Jid {
        match self.domains.canonical(jid.domain()) {
            Some(d) if d != jid.domain() => {
                let mut s = String::new();
                if let Some(n) = jid.node() {
                    s.push_str(n);
                    s.push('@');
                }
                s.push_str(d);
                if let Some(r) = jid.resource() {
                    s.push('/');
                    s.push_str(r);
                }
                Jid::parse(&s).unwrap_or_else(|_| jid.clone())
            }
            _ => jid.clone(),
        }
    }

    /// An account's blocklist, from the cache or the database.
    pub(crate) async fn blocklist(&self, account: &str) -> Result<Arc<Vec<Jid>>, StorageError> {
        if let Some(list) = self.blocklists.get(account) {
            return Ok(list);
        }
        let owner = account.to_owned();
        let rows = self.storage.call(move |c| load(c, &owner)).await?;
        let list = rows.iter().filter_map(|j| Jid::parse(j).ok()).collect();
        Ok(self.blocklists.put(account, list))
    }

    /// Whether `account` blocks `jid`. A database failure counts as not blocked (logged): the
    /// stanza is delivered rather than lost.
    pub(crate) async fn blocks(&self, account: &str, jid: &Jid) -> bool {
        match self.blocklist(account).await {
            Ok(list) if list.is_empty() => false,
            Ok(list) => {
                let jid = self.canonical_jid(jid);
                list.iter().any(|item| matches(item, &jid))
            }
            Err(e) => {
                tracing::warn!("blocklist read failed: {e}");
                false
            }
        }
    }

    /// Step 3, inbound: `true` when `el` (for `account`) comes from a JID the account
    /// blocks; it has been dropped or answered.
    pub(crate) async fn blocked_inbound(&self, account: &str, el: &Element) -> bool {
        let Some(from) = el.attr("from").and_then(|f| Jid::parse(f).ok()) else {
            return false;
        };
        if self.contact_key(&from) == account || !self.blocks(account, &from).await {
            return false;
        }
        match (el.name.as_str(), el.attr("type")) {
            ("presence", _) | ("iq", Some("result" | "error")) => {}
            _ => {
                self.bounce(
                    el,
                    StanzaErrorCondition::ServiceUnavailable,
                    "the recipient is not available",
                )
                .await
            }
        }
        true
    }

    /// Step 3, outbound: `true` when the session's stanza `el` is addressed to a JID its
    /// account blocks; the session got the error.
    pub(crate) async fn blocked_outbound(&self, session: &SessionHandle, el: &Element) -> bool {
        let Some(to) = el.attr("to").and_then(|t| Jid::parse(t).ok()) else {
            return false;
        };
        // The account's own addresses (and its server) stay reachable whatever it blocks.
        let own_domain = session.account.split_once('@').map(|(_, d)| d);
        if self.contact_key(&to) == session.account
            || (to.node().is_none() && self.domains.canonical(to.domain()) == own_domain)
            || !self.blocks(&session.account, &to).await
        {
            return false;
        }
        if let Some(mut reply) = super::error_reply(
            el,
            StanzaErrorCondition::NotAcceptable,
            "you have blocked this address; unblock it first",
        ) {
            if let Some(error) = reply.children_mut().find(|c| c.name == "error") {
                error
                    .children
                    .push(Node::Element(Element::new("blocked", NS_BLOCKING_ERRORS)));
            }
            session.send_element(&reply);
        }
        true
    }

    /// Steps 1 and 2: a `urn:xmpp:blocking` iq from the account's own client.
    pub(crate) async fn blocking_iq(&self, session: &Arc<SessionHandle>, el: Element) {
        let me = session.jid.bare().to_string();
        let Some(p) = payload(&el) else { return };
        let command = match (el.attr("type"), p.name.as_str()) {
            (Some("get"), "blocklist") => {
                let list = match self.blocklist(&session.account).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!("blocklist read failed: {e}");
                        return self.storage_failed(&el).await;
                    }
                };
                let mut q = Element::new("blocklist", NS_BLOCKING);
                for j in list.iter() {
                    q = q.with_child(
                        Element::new("item", NS_BLOCKING).with_attr("jid", j.to_string()),
                    );
                }
                session.presence().blocklist_requested = true;
                return session.send_element(&iq_result(&el, &me).with_child(q));
            }
            (Some("set"), "block") => Command::Block,
            (Some("set"), "unblock") => Command::Unblock,
            _ => return self.unsupported_iq(&el).await,
        };
        let mut jids = Vec::new();
        for item in p
            .children()
            .filter(|c| c.name == "item" && c.ns == NS_BLOCKING)
        {
            match item.attr("jid").map(Jid::parse) {
                Some(Ok(j)) => {
                    let j = self.canonical_jid(&j);
                    if !jids.contains(&j) {
                        jids.push(j);
                    }
                }
                _ => {
                    return self
                        .bounce(
                            &el,
                            StanzaErrorCondition::BadRequest,
                            "each item needs a valid 'jid'",
                        )
                        .await
                }
            }
        }
        if command == Command::Block && jids.is_empty() {
            return self
                .bounce(
                    &el,
                    StanzaErrorCondition::BadRequest,
                    "a block needs at least one item",
                )
                .await;
        }
        // What an unblock without items lifts: everything blocked now.
        let unblocked: Vec<Jid> = match command {
            Command::Unblock if jids.is_empty() => match self.blocklist(&session.account).await {
                Ok(l) => l.to_vec(),
                Err(_) => Vec::new(),
            },
            _ => jids.clone(),
        };
        let owner = session.account.clone();
        let texts: Vec<String> = jids.iter().map(Jid::to_string).collect();
        let max = self.config.max_blocklist;
        let stored = match command {
            Command::Block => {
                self.storage
                    .call(move |c| add(c, &owner, &texts, max))
                    .await
            }
            Command::Unblock => {
                let all = texts.is_empty();
                self.storage
                    .call(move |c| remove(c, &owner, (!all).then_some(&texts[..])).map(|_| true))
                    .await
            }
        };
        match stored {
            Ok(true) => {}
            Ok(false) => {
                let text = format!("a blocklist holds at most {max} JIDs");
                return self
                    .bounce(&el, StanzaErrorCondition::ResourceConstraint, &text)
                    .await;
            }
            Err(e) => {
                tracing::warn!("blocklist write failed: {e}");
                return self.storage_failed(&el).await;
            }
        }
        // The cache follows the database, re-read so that concurrent changes from the
        // account's other resources cannot be lost.
        let owner = session.account.clone();
        match self.storage.call(move |c| load(c, &owner)).await {
            Ok(rows) => {
                let list = rows.iter().filter_map(|j| Jid::parse(j).ok()).collect();
                self.blocklists.put(&session.account, list);
            }
            Err(e) => {
                tracing::warn!("blocklist read failed: {e}");
                self.blocklists.forget(&session.account);
            }
        }
        session.send_element(&iq_result(&el, &me));
        match command {
            Command::Block => self.unavailable_to_blocked(&session.account, &jids).await,
            Command::Unblock => {
                self.presence_to_unblocked(&session.account, &unblocked)
                    .await
            }
        }
        let mut push = Element::new(command.name(), NS_BLOCKING);
        for j in &jids {
            push =
                push.with_child(Element::new("item", NS_BLOCKING).with_attr("jid", j.to_string()));
        }
        for s in self.sessions_of(&session.account) {
            if !s.presence().blocklist_requested {
                continue;
            }
            let iq = Element::new("iq", ns::CLIENT)
                .with_attr("type", "set")
                .with_attr("id", format!("block{}", rand::random::<u32>()))
                .with_attr("to", s.jid.to_string())
                .with_child(push.clone());
            s.send_element(&iq);
        }
    }

    /// §3.4: the unblocked subscribed to the account (`from`) see its current presence
    /// again: that of each available resource.
    async fn presence_to_unblocked(&self, account: &str, unblocked: &[Jid]) {
        if unblocked.is_empty() {
            return;
        }
        let roster = match self.storage.load_roster(account).await {
            Ok(r) => r,
            Err(e) => return tracing::warn!("roster read failed: {e}"),
        };
        for item in roster.iter().filter(|i| i.state.sub.has_from()) {
            let Ok(contact) = Jid::parse(&item.jid) else {
                continue;
            };
            let contact = self.canonical_jid(&contact);
            // Still covered by another item: it stays offline to them.
            if !unblocked.iter().any(|u| matches(u, &contact))
                || self.blocks(account, &contact).await
            {
                continue;
            }
            for s in self.sessions_of(account) {
                let last = s.presence().last.clone();
                if let Some(mut p) = last {
                    p.set_attr("from", s.jid.to_string());
                    p.set_attr("to", &item.jid);
                    self.route(p).await;
                }
            }
        }
    }

    /// §3.3: the newly blocked that could see the account's presence (a `from`
    /// subscription, or directed presence from one of its resources) get unavailable.
    async fn unavailable_to_blocked(&self, account: &str, blocked: &[Jid]) {
        let roster = match self.storage.load_roster(account).await {
            Ok(r) => r,
            Err(e) => return tracing::warn!("roster read failed: {e}"),
        };
        let hit = |addr: &str| {
            Jid::parse(addr).is_ok_and(|j| {
                let j = self.canonical_jid(&j);
                blocked.iter().any(|b| matches(b, &j))
            })
        };
        let mut targets: Vec<String> = roster
            .iter()
            .filter(|i| i.state.sub.has_from() && hit(&i.jid))
            .map(|i| i.jid.clone())
            .collect();
        for s in self.sessions_of(account) {
            let mut p = s.presence();
            let (gone, kept): (Vec<String>, Vec<String>) = std::mem::take(&mut p.directed)
                .into_iter()
                .partition(|d| hit(d));
            p.directed = kept;
            for d in gone {
                if !targets.contains(&d) {
                    targets.push(d);
                }
            }
        }
        for t in targets {
            self.send_unavailable_to(account, &t).await;
        }
    }
}
