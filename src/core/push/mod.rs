//! XEP-0357 Push Notifications, the XMPP server's part: a phone's client registers an app
//! server, and the core tells that app server when a message arrives that the phone cannot
//! receive right now, so that the phone's operating system wakes the app.
//!
//! 1. `<enable xmlns='urn:xmpp:push:0' jid='APP-SERVER' node='NODE'>` (§5), optionally with a
//!    `publish-options` data form (the app server's secret), is kept per account in the
//!    database (`push_registrations`), at most [`MAX_REGISTRATIONS`] per account.
//!    `<disable jid='APP-SERVER' [node='NODE']/>` (§6) removes one, or every node of that app
//!    server. A missing `jid` or `node` is `<bad-request/>`.
//! 2. When a message that matters to a person (a body, an encrypted payload, a call
//!    proposal; not a bare chat state or receipt) is stored offline, or reaches only sessions
//!    that are detached (XEP-0198, the phone's connection is gone and not yet resumed), each
//!    registration gets a publish (§7) from the account's bare JID to its node, with the
//!    `urn:xmpp:push:summary` form: `message-count` only. The sender and the body are not
//!    sent: the app server (and the push service behind it, run by the phone's vendor) learns
//!    that something arrived, not who wrote what.
//! 3. An error answer from the app server disables that registration (§8: the app server
//!    no longer knows the node, or refuses us). The publish's id names the node, so no state is
//!    kept for answers.

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;

use super::stanzas::{iq_result, payload};
use super::storage::{params, Db, SqlError};
use super::{Core, SessionHandle};
use crate::jid::Jid;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::stanza::{NsContext, Stanza};
use crate::xml::Element;

pub const NS_PUSH: &str = "urn:xmpp:push:0";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_DATA: &str = "jabber:x:data";
const SUMMARY: &str = "urn:xmpp:push:summary";

/// Most app servers one account may register (a few devices, each with one app).
pub const MAX_REGISTRATIONS: usize = 10;
/// Longest `jid`, `node` or options form kept, in bytes.
const MAX_FIELD_BYTES: usize = 4096;
/// The publish's id: this prefix, then the node in hex, so that an error answer names the
/// registration it is about.
const ID_PREFIX: &str = "fedgate-push-";

/// The table, migration 6 ([`super::storage::MIGRATIONS`]).
pub(crate) const SCHEMA: &str = "CREATE TABLE push_registrations (
        account TEXT NOT NULL,
        jid TEXT NOT NULL,
        node TEXT NOT NULL,
        options BLOB,
        PRIMARY KEY (account, jid, node)
    );";

/// One registered app server node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registration {
    pub jid: String,
    pub node: String,
    /// The `publish-options` form as the client sent it, if any.
    pub options: Option<Vec<u8>>,
}

/// Whether `el` (a message) is one a person would want to be woken for.
pub(crate) fn is_worth_a_push(el: &Element) -> bool {
    el.children()
        .any(|c| matches!(c.name.as_str(), "body" | "encrypted" | "propose"))
}

impl Core {
    /// §5 `<enable/>` and §6 `<disable/>` from one of the account's clients.
    pub(crate) async fn push_iq(&self, session: &Arc<SessionHandle>, el: Element) {
        let me = session.jid.bare().to_string();
        let Some(p) = payload(&el) else { return };
        if el.attr("type") != Some("set") {
            return self.unsupported_iq(&el).await;
        }
        let jid = p.attr("jid").map(str::to_owned);
        let node = p.attr("node").map(str::to_owned);
        let too_long = [jid.as_deref(), node.as_deref()]
            .iter()
            .flatten()
            .any(|v| v.len() > MAX_FIELD_BYTES);
        let jid = match jid.as_deref().map(Jid::parse) {
            Some(Ok(j)) if !too_long => j.to_string(),
            _ => {
                return self
                    .bounce(
                        &el,
                        StanzaErrorCondition::BadRequest,
                        "enable and disable need the app server's 'jid' (at most 4096 bytes)",
                    )
                    .await
            }
        };
        let account = session.account.clone();
        let result = match p.name.as_str() {
            "enable" => {
                let Some(node) = node.filter(|n| !n.is_empty()) else {
                    return self
                        .bounce(
                            &el,
                            StanzaErrorCondition::BadRequest,
                            "enable needs the app server's 'node'",
                        )
                        .await;
                };
                let options = p
                    .children()
                    .find(|c| c.name == "x" && c.ns == NS_DATA)
                    .map(|x| x.to_bytes());
                if options.as_ref().is_some_and(|o| o.len() > MAX_FIELD_BYTES) {
                    return self
                        .bounce(
                            &el,
                            StanzaErrorCondition::NotAcceptable,
                            "the publish-options form is larger than 4096 bytes",
                        )
                        .await;
                }
                let registration = Registration { jid, node, options };
                self.storage
                    .call(move |c| enable(c, &account, &registration))
                    .await
            }
            "disable" => {
                self.storage
                    .call(move |c| disable(c, &account, &jid, node.as_deref()).map(|_| true))
                    .await
            }
            _ => return self.unsupported_iq(&el).await,
        };
        match result {
            Ok(true) => session.send_element(&iq_result(&el, &me)),
            Ok(false) => {
                self.bounce(
                    &el,
                    StanzaErrorCondition::ResourceConstraint,
                    "this account has registered the most app servers it may (10); disable one first",
                )
                .await
            }
            Err(e) => {
                tracing::warn!("push registration failed: {e}");
                self.storage_failed(&el).await
            }
        }
    }

    /// Step 2: message `el` for `account` reached only detached sessions.
    pub(crate) async fn notify_push(&self, account: &str, el: &Element) {
        if is_worth_a_push(el) {
            self.push_to_app_servers(account).await;
        }
    }

    /// Step 2: a publish to every app server `account` registered.
    pub(crate) async fn push_to_app_servers(&self, account: &str) {
        let owner = account.to_owned();
        let registrations = match self.storage.call(move |c| registrations(c, &owner)).await {
            Ok(r) => r,
            Err(e) => return tracing::warn!("reading push registrations failed: {e}"),
        };
        for r in registrations {
            self.route(publish(account, &r)).await;
        }
    }

    /// Step 3: an answer to one of our publishes, addressed to `account`'s bare JID. True
    /// when it was one (it goes no further).
    pub(crate) async fn push_answer(&self, account: &str, el: &Element) -> bool {
        let Some(node) = el
            .attr("id")
            .and_then(|id| id.strip_prefix(ID_PREFIX))
            .and_then(unhex)
        else {
            return false;
        };
        if el.attr("type") == Some("error") {
            if let Some(jid) = el.attr("from").and_then(|f| Jid::parse(f).ok()) {
                tracing::info!(
                    %account, app_server = %jid,
                    "push notifications disabled: the app server answered with an error"
                );
                let (owner, jid) = (account.to_owned(), jid.to_string());
                let done = self
                    .storage
                    .call(move |c| disable(c, &owner, &jid, Some(&node)))
                    .await;
                if let Err(e) = done {
                    tracing::warn!("disabling a push registration failed: {e}");
                }
            }
        }
        true
    }
}

/// The §7 publish for one registration.
fn publish(account: &str, r: &Registration) -> Element {
    let field = |var: &str, value: &str| {
        Element::new("field", NS_DATA)
            .with_attr("var", var)
            .with_child(Element::new("value", NS_DATA).with_text(value))
    };
    let summary = Element::new("x", NS_DATA)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", SUMMARY))
        .with_child(field("message-count", "1"));
    let item = Element::new("item", NS_PUBSUB)
        .with_child(Element::new("notification", NS_PUSH).with_child(summary));
    let mut pubsub = Element::new("pubsub", NS_PUBSUB).with_child(
        Element::new("publish", NS_PUBSUB)
            .with_attr("node", r.node.clone())
            .with_child(item),
    );
    if let Some(form) = r.options.as_deref().and_then(parse_form) {
        pubsub = pubsub.with_child(Element::new("publish-options", NS_PUBSUB).with_child(form));
    }
    Element::new("iq", crate::xml::ns::COMPONENT)
        .with_attr("type", "set")
        .with_attr("from", account)
        .with_attr("to", r.jid.clone())
        .with_attr("id", format!("{ID_PREFIX}{}", hex::encode(&r.node)))
        .with_child(pubsub)
}

/// A stored form, parsed back.
fn parse_form(bytes: &[u8]) -> Option<Element> {
    let ctx = NsContext::new(crate::xml::ns::CLIENT, &[]);
    Stanza::parse(Bytes::copy_from_slice(bytes), &ctx)
        .ok()?
        .element()
        .ok()
}

fn unhex(s: &str) -> Option<String> {
    String::from_utf8(hex::decode(s).ok()?).ok()
}

/// Stores a registration (replacing one for the same app server and node); false when the
/// account has [`MAX_REGISTRATIONS`] others already.
pub(crate) fn enable(c: &Db, account: &str, r: &Registration) -> Result<bool, SqlError> {
    let tx = c.transaction()?;
    let others: i64 = tx.query_row(
        "SELECT COUNT(*) FROM push_registrations WHERE account = ?1 AND NOT (jid = ?2 AND node = ?3)",
        params![account, r.jid, r.node],
        |row| row.get(0),
    )?;
    if others as usize >= MAX_REGISTRATIONS {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO push_registrations (account, jid, node, options) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (account, jid, node) DO UPDATE SET options = excluded.options",
        params![account, r.jid, r.node, r.options],
    )?;
    tx.commit()?;
    Ok(true)
}

/// Removes one node of an app server, or all of them (`node` `None`).
pub(crate) fn disable(
    c: &Db,
    account: &str,
    jid: &str,
    node: Option<&str>,
) -> Result<usize, SqlError> {
    match node {
        Some(node) => c.execute(
            "DELETE FROM push_registrations WHERE account = ?1 AND jid = ?2 AND node = ?3",
            params![account, jid, node],
        ),
        None => c.execute(
            "DELETE FROM push_registrations WHERE account = ?1 AND jid = ?2",
            params![account, jid],
        ),
    }
}

/// Every registration of an account.
pub(crate) fn registrations(c: &Db, account: &str) -> Result<Vec<Registration>, SqlError> {
    c.query(
        "SELECT jid, node, options FROM push_registrations WHERE account = ?1 ORDER BY jid, node",
        params![account],
    )?
    .into_iter()
    .map(|row| {
        Ok(Registration {
            jid: row.get(0)?,
            node: row.get(1)?,
            options: row.get(2)?,
        })
    })
    .collect()
}

/// Removes an account's registrations (the account is deleted).
pub(crate) fn forget(c: &Db, account: &str) -> Result<usize, SqlError> {
    c.execute(
        "DELETE FROM push_registrations WHERE account = ?1",
        params![account],
    )
}
