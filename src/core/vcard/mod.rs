//! XEP-0054 vcard-temp and XEP-0153 vCard-based avatars.
//!
//! 1. Get of the own vCard (no `to`, or the own bare JID) and of another local account's
//!    (`to` = its bare JID, from anyone): the stored `<vCard/>`, or an empty one when there is
//!    none (XEP-0054 §3.1).
//! 2. Set: only by the owner (a set to someone else's bare JID is `<forbidden/>`); larger than
//!    `max_vcard_bytes` is `<not-acceptable/>`. Stored as its XML.
//! 3. XEP-0153: the SHA-1 of the PHOTO's BINVAL bytes is kept with it, and every available
//!    presence of the account carries `<x xmlns='vcard-temp:x:update'><photo>HASH</photo></x>`
//!    (an empty `<photo/>` without a photo), replacing whatever the client put there, except
//!    an empty `<photo/>` of its own: a client not ready to advertise an avatar (XEP-0153
//!    §3.2), which XEP-0398 §4 says the server must leave alone. After a set the account's
//!    available resources (but those) broadcast their presence again with the new hash, so
//!    that contacts learn of the change at once.
//! 4. XEP-0398: the PHOTO and the XEP-0084 avatar nodes are kept the same both ways
//!    ([`avatar`]).

pub(crate) mod avatar;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::core::storage::{params, Db, OptionalExtension, SqlError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use sha1::{Digest, Sha1};

use super::stanzas::{iq_result, payload};
use super::{Core, SessionHandle};
use crate::jid::Jid;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::stanza::{NsContext, Stanza};
use crate::xml::{ns, Element, Node};

pub const NS_VCARD: &str = "vcard-temp";
pub const NS_VCARD_UPDATE: &str = "vcard-temp:x:update";

// ---- storage --------------------------------------------------------------------------------

/// The stored vCard XML of `owner`.
fn load(conn: &Db, owner: &str) -> Result<Option<Vec<u8>>, SqlError> {
    conn.query_row(
        "SELECT xml FROM vcards WHERE owner = ?1",
        params![owner],
        |r| r.get(0),
    )
    .optional()
}

fn store(conn: &Db, owner: &str, xml: &[u8], photo: Option<&str>) -> Result<(), SqlError> {
    conn.execute(
        "INSERT INTO vcards (owner, xml, photo_hash) VALUES (?1, ?2, ?3)
         ON CONFLICT (owner) DO UPDATE SET xml = ?2, photo_hash = ?3",
        params![owner, xml, photo],
    )?;
    Ok(())
}

/// The avatar hash of `owner`: `None` without a vCard photo.
fn photo_hash(conn: &Db, owner: &str) -> Result<Option<String>, SqlError> {
    Ok(conn
        .query_row(
            "SELECT photo_hash FROM vcards WHERE owner = ?1",
            params![owner],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// XEP-0153 §2: the lowercase hex SHA-1 of the photo's bytes (BINVAL decoded); `None` when the
/// vCard has no photo.
pub(crate) fn photo_sha1(vcard: &Element) -> Option<String> {
    let binval = vcard
        .child("PHOTO", NS_VCARD)?
        .child("BINVAL", NS_VCARD)?
        .text();
    let clean: String = binval
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if clean.is_empty() {
        return None;
    }
    let bytes = B64.decode(clean).ok()?;
    Some(hex::encode(Sha1::digest(bytes)))
}

/// Whether the client's `presence` carries `<x xmlns='vcard-temp:x:update'><photo/></x>`
/// with an empty photo: it does not advertise an avatar yet (step 3).
pub(crate) fn withholds_photo(presence: &Element) -> bool {
    presence
        .children()
        .filter(|x| x.name == "x" && x.ns == NS_VCARD_UPDATE)
        .flat_map(|x| x.children())
        .any(|p| p.name == "photo" && p.ns == NS_VCARD_UPDATE && p.text().trim().is_empty())
}

/// `presence` with its `vcard-temp:x:update` replaced by one carrying `hash`.
pub(crate) fn with_update(mut presence: Element, hash: Option<&str>) -> Element {
    presence
        .children
        .retain(|n| !matches!(n, Node::Element(e) if e.name == "x" && e.ns == NS_VCARD_UPDATE));
    let mut photo = Element::new("photo", NS_VCARD_UPDATE);
    if let Some(h) = hash {
        photo = photo.with_text(h);
    }
    presence.children.push(Node::Element(
        Element::new("x", NS_VCARD_UPDATE).with_child(photo),
    ));
    presence
}

fn parse_stored(xml: Vec<u8>) -> Option<Element> {
    Stanza::parse(Bytes::from(xml), &NsContext::new(ns::CLIENT, &[]))
        .and_then(|s| s.element())
        .ok()
}

impl Core {
    /// The account's available presence with its avatar hash (step 3). A database failure
    /// leaves the presence as the client sent it.
    pub(crate) async fn with_avatar(&self, account: &str, presence: Element) -> Element {
        if withholds_photo(&presence) {
            return presence;
        }
        let owner = account.to_owned();
        match self.storage.call(move |c| photo_hash(c, &owner)).await {
            Ok(hash) => with_update(presence, hash.as_deref()),
            Err(e) => {
                tracing::warn!("avatar hash read failed: {e}");
                presence
            }
        }
    }

    /// A vcard-temp iq from the account's own client (step 1 and 2).
    pub(crate) async fn vcard_own(&self, session: &Arc<SessionHandle>, el: Element) {
        match el.attr("type") {
            Some("get") => {
                let me = session.jid.bare().to_string();
                self.vcard_get(&session.account, &me, el).await
            }
            Some("set") => self.vcard_set(session, el).await,
            _ => {}
        }
    }

    /// A vcard-temp iq to an account's bare JID from anyone else: a get is answered, a set
    /// is forbidden.
    pub(crate) async fn vcard_of(&self, account: &str, to: &Jid, el: Element) {
        match el.attr("type") {
            Some("get") => self.vcard_get(account, &to.bare().to_string(), el).await,
            _ => {
                self.bounce(
                    &el,
                    StanzaErrorCondition::Forbidden,
                    "only its owner may change a vCard",
                )
                .await
            }
        }
    }

    async fn vcard_get(&self, account: &str, from: &str, el: Element) {
        let owner = account.to_owned();
        let stored = match self.storage.call(move |c| load(c, &owner)).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("vCard read failed: {e}");
                return self.storage_failed(&el).await;
            }
        };
        let vcard = stored
            .and_then(parse_stored)
            .unwrap_or_else(|| Element::new("vCard", NS_VCARD));
        Box::pin(self.route(iq_result(&el, from).with_child(vcard))).await
    }

    async fn vcard_set(&self, session: &Arc<SessionHandle>, el: Element) {
        let Some(vcard) = payload(&el).filter(|p| p.name == "vCard") else {
            return self.unsupported_iq(&el).await;
        };
        let xml = vcard.to_bytes();
        if xml.len() > self.config.max_vcard_bytes {
            let text = format!(
                "the vCard has {} bytes; at most {} are kept",
                xml.len(),
                self.config.max_vcard_bytes
            );
            return self
                .bounce(&el, StanzaErrorCondition::NotAcceptable, &text)
                .await;
        }
        let hash = photo_sha1(vcard);
        let owner = session.account.clone();
        let h = hash.clone();
        let before = match self
            .storage
            .call(move |c| {
                let before = photo_hash(c, &owner)?;
                store(c, &owner, &xml, h.as_deref())?;
                Ok(before)
            })
            .await
        {
            Ok(before) => before,
            Err(e) => {
                tracing::warn!("vCard write failed: {e}");
                return self.storage_failed(&el).await;
            }
        };
        session.send_element(&iq_result(&el, &session.jid.bare().to_string()));
        self.announce_photo(&session.account, hash.as_deref()).await;
        self.vcard_to_avatar(&session.account, vcard, before.as_deref())
            .await;
    }

    /// Step 3: the new hash goes out with the current presence of every available resource
    /// of `account`.
    pub(crate) async fn announce_photo(&self, account: &str, hash: Option<&str>) {
        for s in self.sessions_of(account) {
            let last = {
                let mut p = s.presence();
                if p.photo_withheld {
                    continue;
                }
                match p.last.take() {
                    Some(last) => {
                        let updated = with_update(last, hash);
                        p.last = Some(updated.clone());
                        Some(updated)
                    }
                    None => None,
                }
            };
            if let Some(p) = last {
                self.broadcast_presence(&s, p, false).await;
            }
        }
    }
}
