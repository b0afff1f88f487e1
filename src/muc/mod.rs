//! XEP-0045 multi-user chat: a service on its own domain (`[muc] domain`), attached to the
//! gateway through [`crate::component::client`] like any backend. The gateway runs it in its
//! own process over an in-process link ([`crate::component::LocalLink`]), as it runs the
//! core; users of the core and of remote servers reach its rooms alike, through the gateway.
//!
//! # Layout
//! - [`config`]: the `[muc]` section.
//! - [`service`]: the rooms of the domain, and where each stanza goes (sans I/O).
//! - [`room`]: one room: occupants, roles, affiliations, history, subject (sans I/O).
//! - [`form`]: the `muc#roomconfig` form and the `muc#roominfo` disco form.
//! - [`store`]: persistent rooms in the core's database (all the service's SQL).
//!
//! # What a room does (XEP-0045)
//! 1. A presence to `room@service/nick` enters the room; the first one creates it (§10.1):
//!    the creator is its owner, the room is locked (others get `<item-not-found/>`) until
//!    the owner submits the configuration form, an empty one for an instant room.
//! 2. Entering (§7.2): the checks in the XEP's order (nickname, lock, ban, members-only,
//!    password, nickname conflict, room full), each refusal with its condition and a text;
//!    then the occupants' presence to the newcomer, the newcomer's to everyone (110 for
//!    itself, 100 in a non-anonymous room, 201 for a new room, 210 when the service changed
//!    the nickname), the history it asked for with `<delay/>`, and the subject.
//! 3. Groupchat messages go to every occupant from `room/nick` with an XEP-0359
//!    `<stanza-id/>` and are kept as history; private messages go to one occupant; moderators
//!    set the subject; nickname changes (303) and leaving are presences.
//! 4. Moderators kick (307) and give or take voice; admins and owners ban (301) and set
//!    affiliations; owners configure the room (§10.2, 104/172/173 notices) or destroy it.
//! 5. Invitations are mediated by the room (§7.8.2); XEP-0249 direct invitations go from
//!    client to client and need nothing of the service. An occupant's ping to its own
//!    occupant JID is answered by the room (XEP-0410).
//! 6. With the core's database, each room has an XEP-0313 archive (`urn:xmpp:mam:2`, the
//!    core's query, RSM and form code): its groupchat messages with a body, the
//!    `<stanza-id/>` of each copy being its archive id; whoever may enter may query it.
//!
//! Rooms live in memory. With the core in the same process (`[core]`), persistent rooms
//! (their configuration, subject and affiliations, not their history) are kept in the core's
//! database and come back after a restart; without it a persistent room outlives its last
//! occupant, not the process.

pub mod config;
pub mod form;
pub mod room;
pub mod service;
pub mod store;

use std::time::SystemTime;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::component::client::{ClientConfig, Component, Event, Sender, Target};
use crate::core::mam::{self, store::ArchiveLimits, store::NewMessage};
use crate::core::storage::{Storage, StorageError};
use crate::metrics::MucMetrics;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::Element;

pub use self::config::MucConfig;
pub use self::service::{Change, Service};

/// XEP-0045's base namespace: the `<x/>` of a join (password, history) and the disco
/// feature.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// What the room tells occupants (§7): affiliations, roles, status codes, invitations.
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// Moderator and admin queries (§8, §9): kicks, bans, voice, affiliation lists.
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// Owner queries (§10): the configuration form and destroying the room.
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// XEP-0203 delayed delivery: the stamp on each history message sent to a joining occupant.
pub const NS_DELAY: &str = "urn:xmpp:delay";
/// XEP-0359 stanza ids, which the room adds to its groupchat messages (`by` the room).
pub const NS_SID: &str = "urn:xmpp:sid:0";

pub use crate::component::in_process_secret;

/// The error reply to `el` (from where it was sent to, RFC 6120 §8.3), or `None` when none
/// may be sent (errors, iq results, unavailable presence). A presence error carries
/// `<x xmlns='http://jabber.org/protocol/muc'/>` as in XEP-0045's examples: clients match
/// the error to their join by it.
pub(crate) fn error_reply(el: &Element, cond: StanzaErrorCondition, text: &str) -> Option<Element> {
    let mut reply = crate::component::client::error_reply(el, cond, text)?;
    if reply.name == "presence" {
        reply
            .children
            .insert(0, crate::xml::Node::Element(Element::new("x", NS_MUC)));
    }
    Some(reply)
}

/// A started service.
pub struct RunningMuc {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Attaches the service to `gateways` as `config.domain` with `secret`, and serves it. With
/// `storage`, the persistent rooms stored there come back and changes are written to it.
pub async fn start(
    config: &MucConfig,
    gateways: Vec<Target>,
    acks: crate::component::client::AckSettings,
    secret: &str,
    storage: Option<Storage>,
    metrics: Option<MucMetrics>,
) -> Result<RunningMuc, StorageError> {
    let service = match &storage {
        Some(db) => {
            let domain = config.domain.clone();
            let stored = db.call(move |c| store::load(c, &domain)).await?;
            tracing::info!(rooms = stored.len(), "persistent chat rooms loaded");
            Service::with_stored(config.clone(), stored)
        }
        None => Service::new(config.clone()),
    };
    let component = Component::start(
        ClientConfig::with_gateways(&config.domain, secret, gateways).with_acks(acks),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(service, component, storage, metrics, stop.clone()));
    Ok(RunningMuc { stop, task })
}

impl RunningMuc {
    /// Tells every occupant the service is going away (status 332), then closes the link.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// How often the room and occupant gauges are brought up to date.
const GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How long a room archive keeps a message.
const ROOM_ARCHIVE_RETENTION: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// Does the database work the service noted: stores rooms, archives messages (putting the
/// archive's id into the stanza-ids of `replies`), answers archive queries through `sender`.
/// A failure is logged (or answered, for a query); the rooms stay as they are in memory.
async fn do_changes(
    service: &mut Service,
    storage: &Option<Storage>,
    replies: &mut [Element],
    sender: &Sender,
) {
    let Some(db) = storage else { return };
    for change in service.take_changes() {
        let domain = service.domain().to_owned();
        let result = match change {
            Change::Save(room) => db.call(move |c| store::save(c, &domain, &room)).await,
            Change::Delete(room) => db.call(move |c| store::delete(c, &domain, &room)).await,
            Change::Archive {
                room,
                with,
                message,
                placeholder,
            } => {
                let local = room.split('@').next().unwrap_or_default().to_owned();
                let stanza = mam::stored_form(&message);
                let limits = ArchiveLimits {
                    retention: ROOM_ARCHIVE_RETENTION,
                    max_messages: service.archive_max_messages(),
                };
                let now = now_ms();
                let archived = db
                    .call(move |c| {
                        let m = NewMessage {
                            owner: &room,
                            with_bare: &with,
                            with_full: &with,
                            stanza: &stanza,
                        };
                        mam::store::archive_now(c, &m, &limits, now)
                    })
                    .await;
                match archived {
                    Ok(Some(id)) => {
                        let id = id.to_string();
                        for r in replies.iter_mut() {
                            service::set_stanza_id(r, &placeholder, &id);
                        }
                        service.set_archive_id(&local, &placeholder, &id);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Change::Query {
                iq,
                room,
                queryid,
                query,
                check,
            } => {
                answer_query(db, sender, &iq, room, queryid, query, check).await;
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!("chat service database: {e}");
        }
    }
}

/// XEP-0313 §4: the results of a query to a room's archive, then the iq result with
/// `<fin/>`; an id not in the archive gets `<item-not-found/>`.
async fn answer_query(
    db: &Storage,
    sender: &Sender,
    iq: &Element,
    room: String,
    queryid: Option<String>,
    query: mam::store::Query,
    check: Vec<mam::store::ArchiveId>,
) {
    let oldest = mam::store::key_at(now_ms() - ROOM_ARCHIVE_RETENTION.as_millis() as i64);
    let owner = room.clone();
    let page = db
        .call(move |c| {
            for id in &check {
                if !mam::store::exists(c, &owner, *id)? {
                    return Ok(Err(*id));
                }
            }
            let page = mam::store::query(c, &owner, &query, oldest)?;
            let position = mam::store::position(c, &owner, &query, oldest, &page)?;
            Ok(Ok((page, position)))
        })
        .await;
    let reply = match page {
        Ok(Ok((page, position))) => {
            let to = iq.attr("from").unwrap_or_default();
            for m in mam::result_messages(to, &room, queryid.as_deref(), &page) {
                if sender.send_raw(m).await.is_err() {
                    return;
                }
            }
            Some(service::result(iq, Some(mam::fin(&page, Some(position)))))
        }
        Ok(Err(id)) => error_reply(
            iq,
            StanzaErrorCondition::ItemNotFound,
            &format!("no archived message has the id {id}"),
        ),
        Err(e) => {
            tracing::warn!("chat service database: {e}");
            error_reply(
                iq,
                StanzaErrorCondition::InternalServerError,
                "the room's archive cannot be read right now",
            )
        }
    };
    if let Some(r) = reply {
        let _ = sender.send(&r).await;
    }
}

/// One stanza at a time: rooms are the service's alone, so nothing is locked.
async fn serve(
    mut service: Service,
    component: Component,
    storage: Option<Storage>,
    metrics: Option<MucMetrics>,
    stop: CancellationToken,
) {
    let (sender, mut events, stopper) = component.into_parts();
    // The gauges are counted over all rooms: once a second, not per stanza.
    let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted = 0;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            _ = gauges.tick() => {
                if let Some(m) = &metrics {
                    let c = service.counts();
                    m.rooms.set(c.rooms as i64);
                    m.occupants.set(c.occupants as i64);
                }
                continue;
            }
            e = events.recv() => e,
        };
        let Some(event) = event else { break };
        let Event::Stanza(stanza) = event else {
            continue;
        };
        let Ok(el) = stanza.element() else { continue };
        let mut replies = service.handle(&el, now_ms());
        if let Some(m) = &metrics {
            m.messages.inc_by(service.messages() - counted);
            counted = service.messages();
        }
        do_changes(&mut service, &storage, &mut replies, &sender).await;
        for out in replies {
            if sender.send(&out).await.is_err() {
                return;
            }
        }
    }
    for out in service.shutdown() {
        if sender.send(&out).await.is_err() {
            break;
        }
    }
    stopper.stop().await;
}

#[cfg(test)]
mod tests;
