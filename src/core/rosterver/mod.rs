//! XEP-0237 roster versioning (RFC 6121 §2.6), the simple way the XEP allows: a counter per
//! account, bumped on every roster change a client can see (each one is pushed).
//!
//! 1. The stream features after authentication carry
//!    `<ver xmlns='urn:xmpp:features:rosterver'/>` (c2s).
//! 2. Every roster push carries the new version in `ver`.
//! 3. A roster get with `ver` equal to the current version is answered with an empty result
//!    (no `<query/>`): the client's copy is current, and the pushes keep it so. Any other
//!    `ver` (older, or empty) gets the whole roster with the current version; a get without
//!    `ver` gets the whole roster without one, as before versioning.

#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::core::storage::{params, Db, OptionalExtension, SqlError};

use super::roster::NS_ROSTER;
use super::stanzas::{iq_result, payload};
use super::{storage, Core, SessionHandle};
use crate::xml::Element;

/// `owner`'s roster version: 0 before the first change.
fn current(conn: &Db, owner: &str) -> Result<i64, SqlError> {
    Ok(conn
        .query_row(
            "SELECT ver FROM roster_versions WHERE owner = ?1",
            params![owner],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Bumps `owner`'s roster version; returns the new one.
fn bump(conn: &Db, owner: &str) -> Result<i64, SqlError> {
    conn.query_row(
        "INSERT INTO roster_versions (owner, ver) VALUES (?1, 1)
         ON CONFLICT (owner) DO UPDATE SET ver = roster_versions.ver + 1 RETURNING ver",
        params![owner],
        |r| r.get(0),
    )
}

impl Core {
    /// Step 2: the version a push for a change to `account`'s roster carries; `None` (no
    /// `ver`) when the database failed, logged.
    pub(crate) async fn bump_roster_version(&self, account: &str) -> Option<String> {
        let owner = account.to_owned();
        match self.storage.call(move |c| bump(c, &owner)).await {
            Ok(v) => Some(v.to_string()),
            Err(e) => {
                tracing::warn!("roster version write failed: {e}");
                None
            }
        }
    }

    /// A roster get (RFC 6121 §2.1.3) with step 3; the resource gets roster pushes from now.
    pub(crate) async fn roster_get(&self, session: &Arc<SessionHandle>, el: Element) {
        let me = session.jid.bare().to_string();
        let asked = payload(&el).and_then(|q| q.attr("ver")).map(str::to_owned);
        let owner = session.account.clone();
        let read = self
            .storage
            .call(move |c| Ok((current(c, &owner)?, storage::roster(c, &owner)?)))
            .await;
        let (ver, items) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("roster read failed: {e}");
                return self.storage_failed(&el).await;
            }
        };
        session.presence().interested = true;
        let ver = ver.to_string();
        if asked.as_deref() == Some(ver.as_str()) {
            return session.send_element(&iq_result(&el, &me));
        }
        let mut q = Element::new("query", NS_ROSTER);
        if asked.is_some() {
            q.set_attr("ver", ver);
        }
        for item in items.iter().filter(|i| i.in_roster) {
            q = q.with_child(item.to_element());
        }
        session.send_element(&iq_result(&el, &me).with_child(q));
    }
}
