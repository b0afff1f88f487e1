//! XEP-0012 Last Activity (`jabber:iq:last`).
//!
//! 1. To an account's bare JID (§3, offline user query): only a contact the account lets see
//!    its presence (subscription `from` or `both`) may ask, anyone else gets `<forbidden/>`.
//!    With an available resource the answer is `seconds='0'`; else the seconds since its last
//!    session ended, with the status of the unavailable presence it last sent as the text.
//!    Nothing recorded yet (never signed in) is `<item-not-found/>`.
//! 2. To a domain (§5, server uptime): the seconds since the core started.
//!
//! Each session's end is recorded (time and status) when it ends, so the record survives a
//! restart.

#[cfg(test)]
mod tests;

use crate::core::storage::{params, Db, OptionalExtension, SqlError};

use super::stanzas::iq_result;
use super::{Core, SessionHandle};
use crate::jid::Jid;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::Element;

pub const NS_LAST: &str = "jabber:iq:last";

fn record(conn: &Db, owner: &str, ended: i64, status: Option<&str>) -> Result<(), SqlError> {
    // Only for an account that still exists (a session of a removed account ends too).
    conn.execute(
        "INSERT INTO last_activity (owner, ended, status)
         SELECT ?1, CAST(?2 AS BIGINT), ?3 WHERE EXISTS
           (SELECT 1 FROM accounts WHERE localpart || '@' || domain = ?1)
         ON CONFLICT (owner) DO UPDATE SET ended = ?2, status = ?3",
        params![owner, ended, status],
    )?;
    Ok(())
}

fn load(conn: &Db, owner: &str) -> Result<Option<(i64, Option<String>)>, SqlError> {
    conn.query_row(
        "SELECT ended, status FROM last_activity WHERE owner = ?1",
        params![owner],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The `<query/>` of an answer.
fn query(seconds: u64, status: Option<&str>) -> Element {
    let mut q = Element::new("query", NS_LAST).with_attr("seconds", seconds.to_string());
    if let Some(s) = status.filter(|s| !s.is_empty()) {
        q = q.with_text(s);
    }
    q
}

impl Core {
    /// Records that `session` ended, with the status of its last unavailable presence.
    pub(crate) async fn record_last_activity(&self, session: &SessionHandle) {
        let owner = session.account.clone();
        let status = session.presence().unavailable_status.clone();
        let now = unix_now();
        if let Err(e) = self
            .storage
            .call(move |c| record(c, &owner, now, status.as_deref()))
            .await
        {
            tracing::warn!("last activity write failed: {e}");
        }
    }

    /// Step 1: a last activity request to `account`'s bare JID from someone else.
    pub(crate) async fn last_activity_of(&self, account: &str, to: &Jid, el: Element) {
        if el.attr("type") != Some("get") {
            return self.unsupported_iq(&el).await;
        }
        let Some(from) = el.attr("from").and_then(|f| Jid::parse(f).ok()) else {
            return;
        };
        let key = self.contact_key(&from);
        let allowed = match self.storage.load_roster_item(account, &key).await {
            Ok(item) => item.is_some_and(|i| i.state.sub.has_from()),
            Err(e) => {
                tracing::warn!("roster read failed: {e}");
                return self.storage_failed(&el).await;
            }
        };
        if !allowed {
            return self
                .bounce(
                    &el,
                    StanzaErrorCondition::Forbidden,
                    "only contacts subscribed to this account's presence may ask",
                )
                .await;
        }
        let bare = to.bare().to_string();
        if self
            .sessions_of(account)
            .iter()
            .any(|s| s.presence().available)
        {
            return Box::pin(self.route(iq_result(&el, &bare).with_child(query(0, None)))).await;
        }
        let owner = account.to_owned();
        match self.storage.call(move |c| load(c, &owner)).await {
            Ok(Some((ended, status))) => {
                let seconds = (unix_now() - ended).max(0) as u64;
                let reply = iq_result(&el, &bare).with_child(query(seconds, status.as_deref()));
                Box::pin(self.route(reply)).await
            }
            Ok(None) => {
                self.bounce(
                    &el,
                    StanzaErrorCondition::ItemNotFound,
                    "this account has not signed in yet",
                )
                .await
            }
            Err(e) => {
                tracing::warn!("last activity read failed: {e}");
                self.storage_failed(&el).await
            }
        }
    }

    /// Step 2: the `<query/>` of an uptime answer for our domains.
    pub(crate) fn uptime(&self) -> Element {
        query(self.started.elapsed().as_secs(), None)
    }
}
