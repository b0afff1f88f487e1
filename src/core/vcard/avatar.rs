//! XEP-0398 user avatar to vCard-based avatar conversion: the avatar a client publishes with
//! XEP-0084 (PEP) becomes the account's vCard PHOTO (XEP-0054, whose XEP-0153 hash goes out
//! in presence), and a vCard PHOTO set by a client becomes the XEP-0084 nodes, so that clients
//! of either kind see the same avatar. Announced on the account as
//! `urn:xmpp:pep-vcard-conversion:0` (§2).
//!
//! 1. PEP to vCard (§3.1, the MUST): after the owner publishes to `urn:xmpp:avatar:metadata`,
//!    the first `<info/>` without a `url` names the item of `urn:xmpp:avatar:data` that holds
//!    the image; its bytes must hash (SHA-1) to that id. The vCard keeps its other fields and
//!    gets `<PHOTO><TYPE/><BINVAL/></PHOTO>`. An empty `<metadata/>` (XEP-0084 §4.5: the avatar
//!    is switched off) removes the PHOTO. A data item that is missing or does not match, or a
//!    vCard that would exceed `max_vcard_bytes`, leaves the vCard as it was (logged): the
//!    publish itself has succeeded.
//! 2. vCard to PEP (§3.2): after the owner sets a vCard whose PHOTO is not the avatar already
//!    published, the image is published to the data node (id: its SHA-1) and then the
//!    metadata node (one `<info/>` with the vCard's TYPE), with notifications as for any
//!    publish; a vCard without a PHOTO where there was one publishes an empty `<metadata/>`.
//!    Nodes are created with the PEP defaults (XEP-0084 §4.1: presence access, one item).
//! 3. Either way the account's available resources send their presence again with the new
//!    hash ([`Core::announce_photo`]). A conversion never triggers the other one: they store
//!    and publish directly, not through the client's handlers.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::{load, parse_stored, photo_sha1, store, NS_VCARD};
use crate::core::pep::store as pep_store;
use crate::core::Core;
use crate::xml::{Element, Node};

pub const NS_CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";
pub const NS_AVATAR_DATA: &str = "urn:xmpp:avatar:data";
pub const NS_AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";

/// The image an XEP-0084 metadata item points to (step 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Metadata {
    /// `<info id type/>` of the image stored in the data node.
    Image { id: String, type_: String },
    /// An empty `<metadata/>`: no avatar.
    Disabled,
    /// Only images elsewhere (`url`), or nothing we can use: the vCard is left alone.
    Unusable,
}

/// Reads an XEP-0084 `<metadata/>` payload.
pub(crate) fn parse_metadata(payload: &Element) -> Metadata {
    if payload.name != "metadata" || payload.ns != NS_AVATAR_METADATA {
        return Metadata::Unusable;
    }
    let infos: Vec<&Element> = payload
        .children()
        .filter(|c| c.name == "info" && c.ns == NS_AVATAR_METADATA)
        .collect();
    if infos.is_empty() {
        return Metadata::Disabled;
    }
    infos
        .iter()
        .find(|i| i.attr("url").is_none())
        .and_then(|i| {
            Some(Metadata::Image {
                id: i.attr("id")?.to_ascii_lowercase(),
                type_: i.attr("type").unwrap_or("image/png").to_owned(),
            })
        })
        .unwrap_or(Metadata::Unusable)
}

/// `vcard` with its PHOTO replaced by this one (`None`: removed), other fields kept.
pub(crate) fn with_photo(mut vcard: Element, photo: Option<(&str, &str)>) -> Element {
    vcard
        .children
        .retain(|n| !matches!(n, Node::Element(e) if e.name == "PHOTO" && e.ns == NS_VCARD));
    if let Some((type_, base64)) = photo {
        vcard.children.push(Node::Element(
            Element::new("PHOTO", NS_VCARD)
                .with_child(Element::new("TYPE", NS_VCARD).with_text(type_))
                .with_child(Element::new("BINVAL", NS_VCARD).with_text(base64)),
        ));
    }
    vcard
}

/// The image of a vCard's PHOTO, for step 2: its base64 (whitespace removed), its bytes'
/// length, its SHA-1 and its type.
struct Photo {
    base64: String,
    bytes: usize,
    sha1: String,
    type_: String,
}

fn vcard_photo(vcard: &Element) -> Option<Photo> {
    let photo = vcard.child("PHOTO", NS_VCARD)?;
    let base64: String = photo
        .child("BINVAL", NS_VCARD)?
        .text()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = B64.decode(&base64).ok().filter(|b| !b.is_empty())?;
    let type_ = photo
        .child("TYPE", NS_VCARD)
        .map(|t| t.text().trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "image/png".to_owned());
    Some(Photo {
        sha1: hex::encode(Sha1::digest(&bytes)),
        bytes: bytes.len(),
        base64,
        type_,
    })
}

impl Core {
    /// Step 1: the owner published `payload` to the metadata node.
    pub(crate) async fn avatar_to_vcard(&self, account: &str, payload: &Element) {
        let (id, photo) = match parse_metadata(payload) {
            Metadata::Unusable => return,
            Metadata::Disabled => (None, None),
            Metadata::Image { id, type_ } => {
                let owner = account.to_owned();
                let wanted = vec![id.clone()];
                let items = match self
                    .storage
                    .call(move |c| pep_store::items(c, &owner, NS_AVATAR_DATA, None, &wanted))
                    .await
                {
                    Ok(items) => items,
                    Err(e) => {
                        return tracing::warn!("avatar conversion: reading the data failed: {e}")
                    }
                };
                let data = items
                    .first()
                    .and_then(|i| crate::core::pep::parse_stored(&i.payload))
                    .filter(|d| d.name == "data" && d.ns == NS_AVATAR_DATA)
                    .map(|d| {
                        d.text()
                            .chars()
                            .filter(|c| !c.is_ascii_whitespace())
                            .collect::<String>()
                    });
                let Some(base64) = data else {
                    return tracing::info!(
                        "avatar conversion for {account}: no data item {id}; the vCard is unchanged"
                    );
                };
                let matches = B64
                    .decode(&base64)
                    .is_ok_and(|b| hex::encode(Sha1::digest(&b)) == id);
                if !matches {
                    return tracing::info!(
                        "avatar conversion for {account}: the data of item {id} does not hash to its id; the vCard is unchanged"
                    );
                }
                (Some(id), Some((type_, base64)))
            }
        };
        let owner = account.to_owned();
        let max = self.config.max_vcard_bytes;
        let hash = id.clone();
        let stored = self
            .storage
            .call(move |c| {
                let vcard = load(c, &owner)?
                    .and_then(parse_stored)
                    .unwrap_or_else(|| Element::new("vCard", NS_VCARD));
                if photo.is_none() && photo_sha1(&vcard).is_none() {
                    return Ok(false);
                }
                let vcard =
                    with_photo(vcard, photo.as_ref().map(|(t, b)| (t.as_str(), b.as_str())));
                let xml = vcard.to_bytes();
                if xml.len() > max {
                    return Ok(false);
                }
                store(c, &owner, &xml, hash.as_deref())?;
                Ok(true)
            })
            .await;
        match stored {
            Ok(true) => self.announce_photo(account, id.as_deref()).await,
            Ok(false) => tracing::debug!("avatar conversion for {account}: the vCard is unchanged"),
            Err(e) => tracing::warn!("avatar conversion: writing the vCard failed: {e}"),
        }
    }

    /// Step 2: the owner set `vcard`, whose photo had the hash `before`.
    pub(crate) async fn vcard_to_avatar(
        &self,
        account: &str,
        vcard: &Element,
        before: Option<&str>,
    ) {
        let metadata = match vcard_photo(vcard) {
            Some(photo) => {
                let owner = account.to_owned();
                let published = self
                    .storage
                    .call(move |c| pep_store::items(c, &owner, NS_AVATAR_METADATA, Some(1), &[]))
                    .await;
                if published.is_ok_and(|items| items.first().is_some_and(|i| i.id == photo.sha1)) {
                    return; // The client published it with XEP-0084 itself.
                }
                let data = Element::new("data", NS_AVATAR_DATA).with_text(&photo.base64);
                if !self
                    .publish_converted(account, NS_AVATAR_DATA, &photo.sha1, &data)
                    .await
                {
                    return;
                }
                let info = Element::new("info", NS_AVATAR_METADATA)
                    .with_attr("id", &photo.sha1)
                    .with_attr("bytes", photo.bytes.to_string())
                    .with_attr("type", &photo.type_);
                (
                    photo.sha1.clone(),
                    Element::new("metadata", NS_AVATAR_METADATA).with_child(info),
                )
            }
            None if before.is_some() => (
                format!("{:016x}", rand::random::<u64>()),
                Element::new("metadata", NS_AVATAR_METADATA),
            ),
            None => return,
        };
        self.publish_converted(account, NS_AVATAR_METADATA, &metadata.0, &metadata.1)
            .await;
    }

    /// Publishes for the account itself; `false`, logged, when refused.
    async fn publish_converted(
        &self,
        account: &str,
        node: &str,
        id: &str,
        payload: &Element,
    ) -> bool {
        match self.publish_for_account(account, node, id, payload).await {
            Ok(()) => true,
            Err(why) => {
                tracing::info!("avatar conversion for {account}: {node} not published: {why}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
