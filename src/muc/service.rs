//! The service: its rooms, and where each stanza that reaches the service's domain goes
//! (XEP-0045 §6 discovery, §7 occupants, §8 moderators, §9 admins, §10 owners). Sans I/O:
//! [`Service::handle`] takes one stanza and returns the stanzas to send.

use std::collections::HashMap;

use super::form::{self, NS_DATA};
use super::room::{nick_key, Affiliation, Context, Role, Room, Whois};
use super::store::StoredRoom;
use super::{error_reply, MucConfig, NS_MUC, NS_MUC_ADMIN, NS_MUC_OWNER, NS_MUC_USER, NS_SID};
use crate::core::mam::{self, NS_MAM};
use crate::jid::Jid;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::{ns, Element};

pub use crate::xml::ns::{DISCO_INFO as NS_DISCO_INFO, DISCO_ITEMS as NS_DISCO_ITEMS};
/// XEP-0410: the room answers an occupant's ping to its own occupant JID itself.
pub const NS_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";

/// What disco#info on the service announces.
const SERVICE_FEATURES: &[&str] = &[NS_DISCO_INFO, NS_DISCO_ITEMS, NS_MUC];

/// The rooms of one service domain.
pub struct Service {
    config: MucConfig,
    /// Localpart of the room (canonical) → room.
    rooms: HashMap<String, Room>,
    /// Persistent rooms are stored: changes are noted for [`Service::take_changes`].
    persist: bool,
    changes: Vec<Change>,
    /// Groupchat messages relayed since the start.
    messages: u64,
}

/// Work on the database for the service's task: writes, and archive queries to answer.
#[derive(Debug)]
pub enum Change {
    /// A persistent room's record to write, replacing what is stored of it.
    Save(StoredRoom),
    /// The room (its localpart) is destroyed or no longer persistent.
    Delete(String),
    /// A groupchat message for the room's XEP-0313 archive. Its copies (to the occupants,
    /// and in the history) carry the XEP-0359 stanza-id `placeholder`, which the task
    /// replaces with the archive's id ([`Service::set_archive_id`]) before they go out.
    Archive {
        /// `room@service`: the archive's owner.
        room: String,
        /// The sender's occupant JID.
        with: String,
        /// The message as the room relays it, without `to`.
        message: Element,
        /// The random stanza-id the copies carry until the archive's id replaces it.
        placeholder: String,
    },
    /// An XEP-0313 query to the room's archive, to answer with results and `<fin/>`.
    Query {
        /// The query's iq: its `from` gets the results, its `id` the iq result.
        iq: Element,
        /// `room@service`: whose archive is queried.
        room: String,
        /// The query's `queryid`, repeated in every `<result/>`.
        queryid: Option<String>,
        /// The filters and the page asked for.
        query: crate::core::mam::store::Query,
        /// Ids the query names, which must be in the archive.
        check: Vec<crate::core::mam::store::ArchiveId>,
    },
}

impl PartialEq for Change {
    /// Saves and deletes compare by what they store; archive work never compares equal.
    fn eq(&self, other: &Change) -> bool {
        match (self, other) {
            (Change::Save(a), Change::Save(b)) => a == b,
            (Change::Delete(a), Change::Delete(b)) => a == b,
            _ => false,
        }
    }
}

/// Counts for the metrics, read after each stanza.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rooms that exist now (in memory, with or without occupants).
    pub rooms: usize,
    /// Occupants in all rooms together.
    pub occupants: usize,
    /// Groupchat messages relayed since the start.
    pub messages: u64,
}

impl Service {
    /// A service whose rooms live in memory only.
    pub fn new(config: MucConfig) -> Service {
        Service {
            config,
            rooms: HashMap::new(),
            persist: false,
            changes: Vec::new(),
            messages: 0,
        }
    }

    /// A service that stores its persistent rooms, starting with those stored before.
    pub fn with_stored(config: MucConfig, stored: Vec<StoredRoom>) -> Service {
        let mut s = Service::new(config);
        s.persist = true;
        for r in stored {
            let jid = format!("{}@{}", r.room, s.config.domain);
            s.rooms.insert(r.room.clone(), Room::from_stored(jid, r));
        }
        s
    }

    /// What to write to the database since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The service's domain (`[muc] domain`); rooms are `room@domain`.
    pub fn domain(&self) -> &str {
        &self.config.domain
    }

    /// The figures for the metrics, as they are now.
    pub fn counts(&self) -> Counts {
        Counts {
            rooms: self.rooms.len(),
            occupants: self.rooms.values().map(|r| r.occupants.len()).sum(),
            messages: self.messages,
        }
    }

    /// Puts the archive's id in place of `placeholder` in the stanza-id of the room's
    /// history (the copies for the occupants are the caller's to change).
    pub fn set_archive_id(&mut self, local: &str, placeholder: &str, id: &str) {
        let Some(room) = self.rooms.get_mut(local) else {
            return;
        };
        if let Some(item) = room.history.back_mut() {
            set_stanza_id(&mut item.message, placeholder, id);
        }
    }

    /// `[muc] archive_max_messages`.
    pub fn archive_max_messages(&self) -> usize {
        self.config.archive_max_messages
    }

    /// Groupchat messages relayed since the start (cheap, unlike [`Service::counts`]).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// A room, for tests and the service's own use.
    pub fn room(&self, local: &str) -> Option<&Room> {
        self.rooms.get(local)
    }

    /// One stanza routed to the service's domain, at `now_ms` (milliseconds since the
    /// epoch, for history stamps). Returns what to send, in order.
    pub fn handle(&mut self, el: &Element, now_ms: i64) -> Vec<Element> {
        let mut out = Vec::new();
        let (Some(Ok(from)), Some(Ok(to))) = (
            el.attr("from").map(Jid::parse),
            el.attr("to").map(Jid::parse),
        ) else {
            return out;
        };
        if to.domain() != self.config.domain {
            return out;
        }
        match to.node() {
            None => self.to_service(el, &mut out),
            Some(local) => {
                let local = local.to_owned();
                self.route_to_room(el, &from, &local, to.resource(), now_ms, &mut out);
                self.after(&local);
            }
        }
        out
    }

    /// Notes what the database must learn about the room, and forgets it when it is empty
    /// and temporary.
    fn after(&mut self, local: &str) {
        let Some(room) = self.rooms.get_mut(local) else {
            return;
        };
        if room.dirty {
            room.dirty = false;
            let keep = room.config.persistent && !room.locked;
            if keep && self.persist {
                self.changes.push(Change::Save(room.record(local)));
                room.stored = true;
            } else if room.stored {
                self.changes.push(Change::Delete(local.to_owned()));
                room.stored = false;
            }
        }
        if room.is_empty_and_temporary() {
            if room.stored {
                self.changes.push(Change::Delete(local.to_owned()));
            }
            self.rooms.remove(local);
        }
    }

    /// Every occupant is told the service is going away (§7.14 with status 332).
    pub fn shutdown(&mut self) -> Vec<Element> {
        let mut out = Vec::new();
        for room in self.rooms.values_mut() {
            while !room.occupants.is_empty() {
                room.remove(0, 332, None, &mut out);
            }
        }
        out
    }

    fn to_service(&self, el: &Element, out: &mut Vec<Element>) {
        if el.name != "iq" || el.attr("type") != Some("get") {
            if el.name != "presence" {
                out.extend(error_reply(
                    el,
                    StanzaErrorCondition::ServiceUnavailable,
                    "the multi-user chat service takes only disco queries; rooms are room@service",
                ));
            }
            return;
        }
        let query = el.children().next();
        match query.map(|q| q.ns.as_str()) {
            Some(NS_DISCO_INFO) => {
                let mut q = Element::new("query", NS_DISCO_INFO).with_child(
                    Element::new("identity", NS_DISCO_INFO)
                        .with_attr("category", "conference")
                        .with_attr("type", "text")
                        .with_attr("name", "Chatrooms"),
                );
                for f in SERVICE_FEATURES {
                    q = q.with_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", *f));
                }
                out.push(result(el, Some(q)));
            }
            Some(NS_DISCO_ITEMS) => {
                let mut rooms: Vec<&Room> = self
                    .rooms
                    .values()
                    .filter(|r| !r.locked && r.config.public)
                    .collect();
                rooms.sort_by(|a, b| a.jid.cmp(&b.jid));
                let mut q = Element::new("query", NS_DISCO_ITEMS);
                for r in rooms {
                    q = q.with_child(
                        Element::new("item", NS_DISCO_ITEMS)
                            .with_attr("jid", r.jid.clone())
                            .with_attr("name", r.config.name.clone()),
                    );
                }
                out.push(result(el, Some(q)));
            }
            _ => out.extend(error_reply(
                el,
                StanzaErrorCondition::FeatureNotImplemented,
                "the service answers disco#info and disco#items only",
            )),
        }
    }

    fn route_to_room(
        &mut self,
        el: &Element,
        from: &Jid,
        local: &str,
        nick: Option<&str>,
        now_ms: i64,
        out: &mut Vec<Element>,
    ) {
        let mut created = false;
        if !self.rooms.contains_key(local) {
            let joining = el.name == "presence" && el.attr("type").is_none() && nick.is_some();
            if !joining {
                if el.name != "presence" {
                    out.extend(error_reply(
                        el,
                        StanzaErrorCondition::ItemNotFound,
                        "no such room: a room is created when its first occupant joins",
                    ));
                }
                return;
            }
            if nick.and_then(nick_key).is_none() {
                out.extend(error_reply(
                    el,
                    StanzaErrorCondition::NotAcceptable,
                    "this nickname is not acceptable: it is empty or has characters a nickname may not",
                ));
                return;
            }
            if self.rooms.len() >= self.config.max_rooms {
                out.extend(error_reply(
                    el,
                    StanzaErrorCondition::NotAllowed,
                    "the service holds as many rooms as it may: join an existing room",
                ));
                return;
            }
            let jid = format!("{local}@{}", self.config.domain);
            let room = Room::new(
                jid,
                from,
                self.config.history_length,
                self.config.max_occupants,
            );
            self.rooms.insert(local.to_owned(), room);
            created = true;
        }
        let config = &self.config;
        let Some(room) = self.rooms.get_mut(local) else {
            return;
        };
        let mut cx = Context {
            now_ms,
            max_history: config.max_history,
            max_occupants: config.max_occupants,
            out,
        };
        match (el.name.as_str(), nick) {
            ("presence", Some(_)) if el.attr("type") == Some("error") => {
                // The occupant's server bounced our presence: it is gone (§7.2, status 333).
                if let Some(i) = room.occupant_of(from) {
                    room.remove(i, 333, None, cx.out);
                }
            }
            ("presence", Some(nick)) => room.handle_presence(el, from, nick, created, &mut cx),
            ("presence", None) if el.attr("type").is_none() => {
                cx.out.extend(error_reply(
                    el,
                    StanzaErrorCondition::JidMalformed,
                    "join with a nickname: presence to room@service/nickname",
                ));
            }
            ("message", None) if el.attr("type") == Some("error") => {}
            ("message", None) => {
                let request = el
                    .child("x", NS_DATA)
                    .filter(|x| form::form_type(x).as_deref() == Some(form::REQUEST));
                if let Some(x) = el.child("x", NS_MUC_USER) {
                    invitation(room, el, x, from, cx.out);
                } else if let Some(x) = request {
                    voice_request(room, el, x, from, cx.out);
                } else if el.attr("type") == Some("groupchat") {
                    let first = cx.out.len();
                    if room.handle_groupchat(el, from, &mut cx) {
                        self.messages += 1;
                        if self.persist && config.archive_max_messages > 0 {
                            if let Some(c) = archive_change(room, from, &cx.out[first..]) {
                                self.changes.push(c);
                            }
                        }
                    }
                } else {
                    cx.out.extend(error_reply(
                        el,
                        StanzaErrorCondition::BadRequest,
                        "messages to the room are of type groupchat",
                    ));
                }
            }
            ("message", Some(nick)) if el.attr("type") != Some("error") => {
                room.handle_private(el, from, nick, cx.out);
            }
            ("iq", None) if el.children().next().is_some_and(|q| q.ns == NS_MAM) => {
                if let Some(c) = mam_iq(room, el, from, self.persist, cx.out) {
                    self.changes.push(c);
                }
            }
            ("iq", None) => room_iq(room, el, from, &mut cx),
            ("iq", Some(nick)) => occupant_iq(room, el, from, nick, cx.out),
            _ => {}
        }
    }
}

/// The archive work for a message the room just relayed (`sent`: its copies): only a
/// message with a body, as history keeps.
fn archive_change(room: &Room, from: &Jid, sent: &[Element]) -> Option<Change> {
    let copy = sent.first()?;
    copy.child("body", ns::COMPONENT)?;
    let placeholder = copy.child("stanza-id", NS_SID)?.attr("id")?.to_owned();
    let mut message = copy.clone();
    message.remove_attr("to");
    let nick = &room.occupants[room.occupant_of(from)?].nick;
    Some(Change::Archive {
        room: room.jid.clone(),
        with: format!("{}/{nick}", room.jid),
        message,
        placeholder,
    })
}

/// Replaces the room's stanza-id `placeholder` with `id` in `m`.
pub fn set_stanza_id(m: &mut Element, placeholder: &str, id: &str) {
    for c in m.children_mut() {
        if c.name == "stanza-id" && c.ns == NS_SID && c.attr("id") == Some(placeholder) {
            c.set_attr("id", id);
        }
    }
}

/// XEP-0313 on a room (§5.1.2 of XEP-0313 for MUC): whoever may enter may read its archive
/// (occupants of a password-protected room only); a `get` returns the query form.
fn mam_iq(
    room: &Room,
    el: &Element,
    from: &Jid,
    archived: bool,
    out: &mut Vec<Element>,
) -> Option<Change> {
    let query = el.children().next()?;
    if query.name != "query" {
        refuse(
            el,
            StanzaErrorCondition::FeatureNotImplemented,
            "the room's archive takes queries only",
            out,
        );
        return None;
    }
    let affiliation = room.affiliation(from);
    let occupant = room.occupant_of(from).is_some();
    let allowed = occupant
        || (affiliation != Affiliation::Outcast
            && !room.locked
            && (!room.config.members_only || affiliation >= Affiliation::Member)
            && room.config.password.is_none());
    if !allowed {
        refuse(
            el,
            StanzaErrorCondition::Forbidden,
            "only those who may enter the room read its archive",
            out,
        );
        return None;
    }
    if !archived {
        refuse(
            el,
            StanzaErrorCondition::ServiceUnavailable,
            "this service keeps no room archives (it runs without the core's database)",
            out,
        );
        return None;
    }
    match el.attr("type") {
        Some("get") => {
            out.push(result(
                el,
                Some(Element::new("query", NS_MAM).with_child(mam::query_form())),
            ));
            None
        }
        Some("set") => match mam::parse_query(query, mam::MAX_PAGE, &|j| j.to_string()) {
            Ok((q, check)) => Some(Change::Query {
                iq: el.clone(),
                room: room.jid.clone(),
                queryid: query.attr("queryid").map(str::to_owned),
                query: q,
                check,
            }),
            Err(e) => {
                refuse(el, StanzaErrorCondition::BadRequest, &e.to_string(), out);
                None
            }
        },
        _ => None,
    }
}

/// An iq result to `el`, with `payload`.
pub fn result(el: &Element, payload: Option<Element>) -> Element {
    let mut r = Element::new("iq", ns::COMPONENT)
        .with_attr("type", "result")
        .with_attr("from", el.attr("to").unwrap_or_default())
        .with_attr("to", el.attr("from").unwrap_or_default());
    if let Some(id) = el.attr("id") {
        r.set_attr("id", id);
    }
    if let Some(p) = payload {
        r = r.with_child(p);
    }
    r
}

fn refuse(el: &Element, cond: StanzaErrorCondition, text: &str, out: &mut Vec<Element>) {
    out.extend(error_reply(el, cond, text));
}

/// §7.8.2 mediated invitations and §7.8.3 declines, sent through the room.
fn invitation(room: &mut Room, el: &Element, x: &Element, from: &Jid, out: &mut Vec<Element>) {
    if let Some(decline) = x.child("decline", NS_MUC_USER) {
        let Some(Ok(to)) = decline.attr("to").map(Jid::parse) else {
            return refuse(
                el,
                StanzaErrorCondition::BadRequest,
                "a decline needs 'to'",
                out,
            );
        };
        let mut d = Element::new("decline", NS_MUC_USER).with_attr("from", from.to_string());
        if let Some(r) = decline.child("reason", NS_MUC_USER) {
            d = d.with_child(r.clone());
        }
        out.push(
            Element::new("message", ns::COMPONENT)
                .with_attr("from", room.jid.clone())
                .with_attr("to", to.to_string())
                .with_child(Element::new("x", NS_MUC_USER).with_child(d)),
        );
        return;
    }
    let Some(i) = room.occupant_of(from) else {
        return refuse(
            el,
            StanzaErrorCondition::NotAcceptable,
            "only occupants may invite: join the room first",
            out,
        );
    };
    let inviter = room.affiliation(&room.occupants[i].jid);
    if room.config.members_only && inviter < Affiliation::Admin {
        return refuse(
            el,
            StanzaErrorCondition::Forbidden,
            "in a members-only room only admins and owners invite",
            out,
        );
    }
    for invite in x.children().filter(|c| c.name == "invite") {
        let Some(Ok(to)) = invite.attr("to").map(Jid::parse) else {
            return refuse(
                el,
                StanzaErrorCondition::JidMalformed,
                "an invitation needs a valid 'to'",
                out,
            );
        };
        if room.config.members_only {
            // §7.8.2: the invitee of a members-only room becomes a member.
            room.affiliations
                .entry(to.bare().to_string())
                .or_insert(Affiliation::Member);
            room.dirty = true;
        }
        let mut inv = Element::new("invite", NS_MUC_USER).with_attr("from", from.to_string());
        if let Some(r) = invite.child("reason", NS_MUC_USER) {
            inv = inv.with_child(r.clone());
        }
        let mut ux = Element::new("x", NS_MUC_USER).with_child(inv);
        if let Some(p) = &room.config.password {
            ux = ux.with_child(Element::new("password", NS_MUC_USER).with_text(p));
        }
        out.push(
            Element::new("message", ns::COMPONENT)
                .with_attr("from", room.jid.clone())
                .with_attr("to", to.to_string())
                .with_child(ux),
        );
    }
}

/// §7.13 and §8.6: a visitor in a moderated room asks for voice with a `muc#request` form;
/// every moderator gets the approval form; a moderator's submitted form with
/// `muc#request_allow` true gives the named occupant voice, as an admin role change would
/// (presence to everyone), and false skips it.
fn voice_request(room: &mut Room, el: &Element, x: &Element, from: &Jid, out: &mut Vec<Element>) {
    let Some(i) = room.occupant_of(from) else {
        return refuse(
            el,
            StanzaErrorCondition::NotAcceptable,
            "only occupants may ask for voice: join the room first",
            out,
        );
    };
    let asker = room.occupants[i].clone();
    if form::field_value(x, "muc#request_allow").is_some() {
        // A moderator's answer.
        if !form::is_true(x, "muc#request_allow") {
            return;
        }
        let Some(nick) = form::field_value(x, "muc#roomnick") else {
            return refuse(
                el,
                StanzaErrorCondition::BadRequest,
                "the approval names the occupant in muc#roomnick",
                out,
            );
        };
        let item = Element::new("item", NS_MUC_ADMIN)
            .with_attr("nick", nick)
            .with_attr("role", "participant");
        let actor_affiliation = room.affiliation(from);
        let outcome = set_role(
            room,
            &item,
            Role::Participant,
            asker.role,
            actor_affiliation,
            Some(&asker.nick),
            out,
        );
        if let Err((cond, text)) = outcome {
            refuse(el, cond, text, out);
        }
        return;
    }
    if asker.role != Role::Visitor {
        // Voice already, or more: nothing to ask for.
        return;
    }
    let moderators: Vec<Jid> = room
        .occupants
        .iter()
        .filter(|o| o.role == Role::Moderator)
        .map(|o| o.jid.clone())
        .collect();
    if moderators.is_empty() {
        return refuse(
            el,
            StanzaErrorCondition::ServiceUnavailable,
            "no moderator is in the room to give voice",
            out,
        );
    }
    let approval = form::voice_approval(&asker.jid.to_string(), &asker.nick);
    for m in moderators {
        out.push(
            Element::new("message", ns::COMPONENT)
                .with_attr("from", room.jid.clone())
                .with_attr("to", m.to_string())
                .with_child(approval.clone()),
        );
    }
}

/// An iq to the room's bare JID: disco (§6.4, §6.5), owner (§10) and admin (§8, §9) queries.
fn room_iq(room: &mut Room, el: &Element, from: &Jid, cx: &mut Context<'_>) {
    let type_ = el.attr("type").unwrap_or_default();
    if !matches!(type_, "get" | "set") {
        return;
    }
    let Some(query) = el.children().next() else {
        return refuse(
            el,
            StanzaErrorCondition::BadRequest,
            "an iq needs a payload",
            cx.out,
        );
    };
    let ns_ = query.ns.as_str();
    if room.locked && room.affiliation(from) != Affiliation::Owner {
        return refuse(
            el,
            StanzaErrorCondition::ItemNotFound,
            "the room is locked until its owner configures it",
            cx.out,
        );
    }
    match (type_, ns_) {
        ("get", NS_DISCO_INFO) => {
            let c = &room.config;
            let mut q = Element::new("query", NS_DISCO_INFO).with_child(
                Element::new("identity", NS_DISCO_INFO)
                    .with_attr("category", "conference")
                    .with_attr("type", "text")
                    .with_attr("name", c.name.clone()),
            );
            let features = [
                NS_MUC,
                if c.persistent {
                    "muc_persistent"
                } else {
                    "muc_temporary"
                },
                if c.members_only {
                    "muc_membersonly"
                } else {
                    "muc_open"
                },
                if c.moderated {
                    "muc_moderated"
                } else {
                    "muc_unmoderated"
                },
                if c.password.is_some() {
                    "muc_passwordprotected"
                } else {
                    "muc_unsecured"
                },
                match c.whois {
                    Whois::Anyone => "muc_nonanonymous",
                    Whois::Moderators => "muc_semianonymous",
                },
                if c.public { "muc_public" } else { "muc_hidden" },
                NS_SID,
                NS_MAM,
                NS_SELF_PING,
                form::REQUEST,
                NS_DISCO_INFO,
                NS_DISCO_ITEMS,
            ];
            for f in features {
                q = q.with_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", f));
            }
            q = q.with_child(form::roominfo(room));
            cx.out.push(result(el, Some(q)));
        }
        ("get", NS_DISCO_ITEMS) => {
            // §6.5: the occupants, to occupants only (others learn nobody's nickname).
            let mut q = Element::new("query", NS_DISCO_ITEMS);
            if room.occupant_of(from).is_some() {
                for o in &room.occupants {
                    q = q.with_child(
                        Element::new("item", NS_DISCO_ITEMS)
                            .with_attr("jid", format!("{}/{}", room.jid, o.nick)),
                    );
                }
            }
            cx.out.push(result(el, Some(q)));
        }
        (_, NS_MUC_OWNER) => owner_iq(room, el, query, from, cx),
        (_, NS_MUC_ADMIN) => admin_iq(room, el, query, from, cx.out),
        _ => refuse(
            el,
            StanzaErrorCondition::FeatureNotImplemented,
            "the room answers disco, muc#owner and muc#admin queries",
            cx.out,
        ),
    }
}

/// §10.1 and §10.2: the configuration form, its submission, and §10.9 destruction.
fn owner_iq(room: &mut Room, el: &Element, query: &Element, from: &Jid, cx: &mut Context<'_>) {
    if room.affiliation(from) != Affiliation::Owner {
        return refuse(
            el,
            StanzaErrorCondition::Forbidden,
            "only the room's owners may configure it",
            cx.out,
        );
    }
    if el.attr("type") == Some("get") {
        let q = Element::new("query", NS_MUC_OWNER)
            .with_child(form::config_form(&room.config, cx.max_occupants));
        cx.out.push(result(el, Some(q)));
        return;
    }
    if let Some(destroy) = query.child("destroy", NS_MUC_OWNER) {
        destroy_room(room, destroy, cx.out);
        cx.out.push(result(el, None));
        return;
    }
    let Some(x) = query.child("x", NS_DATA) else {
        return refuse(
            el,
            StanzaErrorCondition::BadRequest,
            "submit the muc#roomconfig form, or <destroy/>",
            cx.out,
        );
    };
    if x.attr("type") == Some("cancel") {
        // §10.1.3: cancelling the initial configuration destroys the new room.
        if room.locked {
            destroy_room(room, &Element::new("destroy", NS_MUC_OWNER), cx.out);
        }
        cx.out.push(result(el, None));
        return;
    }
    let new = match form::apply_form(&room.config, x, cx.max_occupants, cx.max_history) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                el,
                StanzaErrorCondition::NotAcceptable,
                &e.to_string(),
                cx.out,
            );
        }
    };
    let was_locked = room.locked;
    let old = std::mem::replace(&mut room.config, new);
    room.locked = false;
    room.dirty = true;
    while room.history.len() > room.config.history_length {
        room.history.pop_front();
    }
    cx.out.push(result(el, None));
    if !was_locked && old != room.config {
        // §10.2.1: occupants are told the configuration changed, and how privacy changed.
        let mut codes = vec![104];
        match (old.whois, room.config.whois) {
            (Whois::Moderators, Whois::Anyone) => codes.push(172),
            (Whois::Anyone, Whois::Moderators) => codes.push(173),
            _ => {}
        }
        room.notify_codes(&codes, cx.out);
    }
}

/// §10.9: every occupant leaves with `<destroy/>`, and the room is left empty and
/// temporary, so the service forgets it.
fn destroy_room(room: &mut Room, destroy: &Element, out: &mut Vec<Element>) {
    let mut d = Element::new("destroy", NS_MUC_USER);
    if let Some(j) = destroy.attr("jid") {
        d.set_attr("jid", j);
    }
    if let Some(r) = destroy.child("reason", NS_MUC_OWNER) {
        d = d.with_child(Element::new("reason", NS_MUC_USER).with_text(r.text()));
    }
    for o in &room.occupants {
        out.push(
            Element::new("presence", ns::COMPONENT)
                .with_attr("from", format!("{}/{}", room.jid, o.nick))
                .with_attr("to", o.jid.to_string())
                .with_attr("type", "unavailable")
                .with_child(
                    Element::new("x", NS_MUC_USER)
                        .with_child(
                            Element::new("item", NS_MUC_USER)
                                .with_attr("affiliation", "none")
                                .with_attr("role", "none"),
                        )
                        .with_child(d.clone()),
                ),
        );
    }
    room.occupants.clear();
    room.config.persistent = false;
    room.dirty = true;
}

/// §8 (roles: kick, voice) and §9 (affiliations: ban, members, admins, owners), and the
/// lists.
fn admin_iq(room: &mut Room, el: &Element, query: &Element, from: &Jid, out: &mut Vec<Element>) {
    let actor_affiliation = room.affiliation(from);
    let actor = room.occupant_of(from).map(|i| room.occupants[i].clone());
    let actor_role = actor.as_ref().map_or(Role::None, |a| a.role);
    if el.attr("type") == Some("get") {
        let Some(item) = query.child("item", NS_MUC_ADMIN) else {
            return refuse(
                el,
                StanzaErrorCondition::BadRequest,
                "ask for an affiliation or a role",
                out,
            );
        };
        let mut q = Element::new("query", NS_MUC_ADMIN);
        if let Some(a) = item.attr("affiliation").and_then(Affiliation::parse) {
            if actor_affiliation < Affiliation::Admin {
                return refuse(
                    el,
                    StanzaErrorCondition::Forbidden,
                    "only admins and owners see affiliation lists",
                    out,
                );
            }
            let mut jids: Vec<&String> = room
                .affiliations
                .iter()
                .filter(|(_, v)| **v == a)
                .map(|(k, _)| k)
                .collect();
            jids.sort();
            for j in jids {
                q = q.with_child(
                    Element::new("item", NS_MUC_ADMIN)
                        .with_attr("affiliation", a.as_str())
                        .with_attr("jid", j.clone()),
                );
            }
        } else if let Some(r) = item.attr("role").and_then(Role::parse) {
            if actor_role != Role::Moderator {
                return refuse(
                    el,
                    StanzaErrorCondition::Forbidden,
                    "only moderators see role lists",
                    out,
                );
            }
            for o in room.occupants.iter().filter(|o| o.role == r) {
                q = q.with_child(
                    Element::new("item", NS_MUC_ADMIN)
                        .with_attr("role", r.as_str())
                        .with_attr("nick", o.nick.clone())
                        .with_attr("jid", o.jid.to_string())
                        .with_attr("affiliation", room.affiliation(&o.jid).as_str()),
                );
            }
        } else {
            return refuse(
                el,
                StanzaErrorCondition::BadRequest,
                "the item needs a valid affiliation or role",
                out,
            );
        }
        out.push(result(el, Some(q)));
        return;
    }
    let items: Vec<&Element> = query.children().filter(|c| c.name == "item").collect();
    if items.is_empty() {
        return refuse(
            el,
            StanzaErrorCondition::BadRequest,
            "an admin set needs items",
            out,
        );
    }
    let actor_nick = actor.as_ref().map(|a| a.nick.clone());
    let mut notices = Vec::new();
    for item in items {
        let outcome = if let Some(r) = item.attr("role") {
            let Some(role) = Role::parse(r) else {
                return refuse(el, StanzaErrorCondition::BadRequest, "unknown role", out);
            };
            set_role(
                room,
                item,
                role,
                actor_role,
                actor_affiliation,
                actor_nick.as_deref(),
                &mut notices,
            )
        } else if let Some(a) = item.attr("affiliation") {
            let Some(affiliation) = Affiliation::parse(a) else {
                return refuse(
                    el,
                    StanzaErrorCondition::BadRequest,
                    "unknown affiliation",
                    out,
                );
            };
            set_affiliation(
                room,
                item,
                affiliation,
                actor_affiliation,
                actor_nick.as_deref(),
                &mut notices,
            )
        } else {
            Err((
                StanzaErrorCondition::BadRequest,
                "an item needs a role or an affiliation",
            ))
        };
        if let Err((cond, text)) = outcome {
            return refuse(el, cond, text, out);
        }
    }
    out.push(result(el, None));
    out.append(&mut notices);
}

type Refusal = (StanzaErrorCondition, &'static str);

/// §8.2 kick (role none, 307), §8.3/§8.4 voice, §9.6 moderator.
fn set_role(
    room: &mut Room,
    item: &Element,
    role: Role,
    actor_role: Role,
    actor_affiliation: Affiliation,
    actor_nick: Option<&str>,
    out: &mut Vec<Element>,
) -> Result<(), Refusal> {
    let Some(nick) = item.attr("nick") else {
        return Err((
            StanzaErrorCondition::BadRequest,
            "a role change names the occupant by 'nick'",
        ));
    };
    let Some(i) = room.occupant_named(nick) else {
        return Err((
            StanzaErrorCondition::ItemNotFound,
            "no occupant of the room has this nickname",
        ));
    };
    if actor_role != Role::Moderator {
        return Err((
            StanzaErrorCondition::Forbidden,
            "only moderators change roles",
        ));
    }
    let target_affiliation = room.affiliation(&room.occupants[i].jid);
    if (role == Role::Moderator || room.occupants[i].role == Role::Moderator)
        && actor_affiliation < Affiliation::Admin
    {
        return Err((
            StanzaErrorCondition::NotAllowed,
            "only admins and owners grant or revoke moderator",
        ));
    }
    if role < Role::Participant && target_affiliation >= Affiliation::Admin {
        return Err((
            StanzaErrorCondition::NotAllowed,
            "admins and owners cannot be kicked or silenced",
        ));
    }
    if role == Role::None {
        room.remove(i, 307, actor_nick, out);
    } else {
        room.occupants[i].role = role;
        room.announce(i, out);
    }
    Ok(())
}

/// §9.1 ban (outcast, 301), §9.3 members, §10.3/§10.6 owners and admins.
fn set_affiliation(
    room: &mut Room,
    item: &Element,
    affiliation: Affiliation,
    actor_affiliation: Affiliation,
    actor_nick: Option<&str>,
    out: &mut Vec<Element>,
) -> Result<(), Refusal> {
    let target = match item.attr("jid").map(Jid::parse) {
        Some(Ok(j)) => j.bare(),
        Some(Err(_)) => {
            return Err((
                StanzaErrorCondition::JidMalformed,
                "the item's 'jid' is not valid",
            ))
        }
        None => match item.attr("nick").and_then(|n| room.occupant_named(n)) {
            Some(i) => room.occupants[i].jid.bare(),
            None => {
                return Err((
                    StanzaErrorCondition::BadRequest,
                    "an affiliation change names a 'jid' (or an occupant's 'nick')",
                ))
            }
        },
    };
    let current = room.affiliation(&target);
    if actor_affiliation < Affiliation::Admin {
        return Err((
            StanzaErrorCondition::Forbidden,
            "only admins and owners change affiliations",
        ));
    }
    if actor_affiliation == Affiliation::Admin
        && (affiliation >= Affiliation::Admin || current >= Affiliation::Admin)
    {
        return Err((
            StanzaErrorCondition::NotAllowed,
            "only owners grant or change admin and owner",
        ));
    }
    let owners = room
        .affiliations
        .values()
        .filter(|a| **a == Affiliation::Owner)
        .count();
    if current == Affiliation::Owner && affiliation != Affiliation::Owner && owners == 1 {
        return Err((
            StanzaErrorCondition::Conflict,
            "the room's last owner cannot give up ownership",
        ));
    }
    room.dirty = true;
    let key = target.to_string();
    if affiliation == Affiliation::None {
        room.affiliations.remove(&key);
    } else {
        room.affiliations.insert(key, affiliation);
    }
    // Occupants of the account see the change: banned ones leave (301), non-members of a
    // members-only room leave (321), the others get their new role.
    let mut i = 0;
    while i < room.occupants.len() {
        if room.occupants[i].jid.bare() != target {
            i += 1;
            continue;
        }
        if affiliation == Affiliation::Outcast {
            room.remove(i, 301, actor_nick, out);
        } else if room.config.members_only && affiliation < Affiliation::Member {
            room.remove(i, 321, actor_nick, out);
        } else {
            room.occupants[i].role = match affiliation {
                Affiliation::Owner | Affiliation::Admin => Role::Moderator,
                Affiliation::Member if room.occupants[i].role < Role::Participant => {
                    Role::Participant
                }
                _ if room.occupants[i].role == Role::Moderator => {
                    if room.config.moderated {
                        Role::Visitor
                    } else {
                        Role::Participant
                    }
                }
                _ => room.occupants[i].role,
            };
            room.announce(i, out);
            i += 1;
        }
    }
    Ok(())
}

/// An iq to an occupant JID (XEP-0045 §6.5 for disco, and the same for every other request):
/// 1. XEP-0410 self-ping (to one's own occupant JID) is answered by the room.
/// 2. A request (get/set) from an occupant goes to the addressed occupant's real full JID,
///    a vcard-temp request to its bare JID (vCards are per account, XEP-0054), from the
///    sender's occupant JID and with the id unchanged, so that the sender can match the answer.
///    A real JID is never shown, in any room.
/// 3. An answer (result/error) from an occupant's real JID (full, or bare for a vCard) to
///    another occupant's JID goes to that occupant's real JID, from the answerer's occupant
///    JID. An answer from anyone else, or to a nick nobody has, is dropped: an answer is never
///    answered with an error (RFC 6120 §8.2.3).
fn occupant_iq(room: &Room, el: &Element, from: &Jid, nick: &str, out: &mut Vec<Element>) {
    let request = matches!(el.attr("type"), Some("get" | "set"));
    if !request {
        return relay_iq_answer(room, el, from, nick, out);
    }
    let Some(i) = room.occupant_of(from) else {
        return refuse(
            el,
            StanzaErrorCondition::NotAcceptable,
            "only occupants may send iqs to occupants: join the room first",
            out,
        );
    };
    let is_ping = el.child("ping", ns::PING).is_some();
    if is_ping && nick_key(nick) == nick_key(&room.occupants[i].nick) {
        out.push(result(el, None));
        return;
    }
    let Some(j) = room.occupant_named(nick) else {
        return refuse(
            el,
            StanzaErrorCondition::ItemNotFound,
            "no occupant of the room has this nickname",
            out,
        );
    };
    let target = &room.occupants[j].jid;
    let to = match el.child("vCard", "vcard-temp") {
        Some(_) => target.bare().to_string(),
        None => target.to_string(),
    };
    let mut forwarded = el.clone();
    forwarded.set_attr("from", format!("{}/{}", room.jid, room.occupants[i].nick));
    forwarded.set_attr("to", to);
    out.push(forwarded);
}

/// Step 3 of [`occupant_iq`]: an answer to a relayed request.
fn relay_iq_answer(room: &Room, el: &Element, from: &Jid, nick: &str, out: &mut Vec<Element>) {
    if !matches!(el.attr("type"), Some("result" | "error")) {
        return;
    }
    let answerer = room.occupant_of(from).or_else(|| {
        // A vCard answer comes from the account's bare JID.
        from.is_bare()
            .then(|| room.occupants.iter().position(|o| o.jid.bare() == *from))
            .flatten()
    });
    let (Some(a), Some(asker)) = (answerer, room.occupant_named(nick)) else {
        return;
    };
    let mut answer = el.clone();
    answer.set_attr("from", format!("{}/{}", room.jid, room.occupants[a].nick));
    answer.set_attr("to", room.occupants[asker].jid.to_string());
    out.push(answer);
}
