//! One room: its occupants, affiliations, configuration, subject and history, and the
//! XEP-0045 rules for what occupants do in it. Sans I/O: each `handle_*` takes the stanza
//! that arrived and pushes the stanzas to send onto `out`.

use std::collections::{HashMap, VecDeque};

use precis_profiles::precis_core::profile::PrecisFastInvocation;
use precis_profiles::Nickname;

use super::store::StoredRoom;
use super::{error_reply, NS_DELAY, NS_MUC, NS_MUC_USER, NS_SID};
use crate::jid::Jid;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::{ns, Element, Node};

/// XEP-0045 §5.2: long-lived association with the room. Ordered: a higher one may act on a
/// lower one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Affiliation {
    /// Banned: may not enter.
    Outcast,
    /// No long-lived association; may enter unless the room is members-only.
    None,
    /// May enter a members-only room; a participant in a moderated one.
    Member,
    /// Manages members and outcasts, and moderates.
    Admin,
    /// Configures and destroys the room, and manages admins and owners.
    Owner,
}

impl Affiliation {
    /// The `affiliation` attribute's value, as sent and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    /// Reads an `affiliation` attribute; `None` for an unknown value.
    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// XEP-0045 §5.1: an occupant's role while in the room. `None` is not kept: an occupant
/// whose role becomes none is out of the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Not in the room; only ever sent, when an occupant leaves or is kicked.
    None,
    /// Present but may not speak in a moderated room.
    Visitor,
    /// May speak.
    Participant,
    /// May kick, and grant or take voice.
    Moderator,
}

impl Role {
    /// The `role` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    /// Reads a `role` attribute; `None` for an unknown value.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// Who may see occupants' real JIDs (`muc#roomconfig_whois`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whois {
    /// Semi-anonymous: moderators only.
    Moderators,
    /// Non-anonymous: every occupant.
    Anyone,
}

/// What the owner configures (XEP-0045 §10.2, the `muc#roomconfig` form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomConfig {
    /// The room's name for people (`muc#roomconfig_roomname`), shown in disco; may be empty.
    pub name: String,
    /// What the room is about (`muc#roomconfig_roomdesc`), shown in `muc#roominfo`.
    pub description: String,
    /// Kept when the last occupant leaves.
    pub persistent: bool,
    /// Listed in the service's disco#items.
    pub public: bool,
    /// Only members (and admins, owners) may enter.
    pub members_only: bool,
    /// Only participants and moderators may speak; newcomers without affiliation are visitors.
    pub moderated: bool,
    /// Needed to enter, when set.
    pub password: Option<String>,
    /// Occupants admitted besides owners and admins.
    pub max_users: usize,
    /// Who may see occupants' real JIDs (`muc#roomconfig_whois`).
    pub whois: Whois,
    /// Messages of history kept for newcomers.
    pub history_length: usize,
}

/// One occupant: one client session in the room under a nickname.
#[derive(Clone, Debug)]
pub struct Occupant {
    /// The nickname: the resource of the occupant JID `room@service/nick`.
    pub nick: String,
    /// The occupant's real full JID.
    pub jid: Jid,
    /// What the occupant may do now; never [`Role::None`] while in the room.
    pub role: Role,
    /// What the occupant's presence carries besides the MUC elements (show, status, caps...).
    pub payload: Vec<Element>,
}

/// A groupchat message kept for newcomers.
#[derive(Clone, Debug)]
pub struct HistoryItem {
    /// As broadcast, without `to`.
    pub message: Element,
    /// When it was sent, in milliseconds since the epoch.
    pub at_ms: i64,
    /// Characters of the message as sent, for `maxchars`.
    pub chars: usize,
}

/// A room.
#[derive(Debug)]
pub struct Room {
    /// `room@service`.
    pub jid: String,
    /// What the owner configured (or the service's defaults for a new room).
    pub config: RoomConfig,
    /// XEP-0045 §10.1.1: a new room is locked until its owner configures it (or accepts the
    /// default configuration); nobody else may enter meanwhile.
    pub locked: bool,
    /// Bare JID → affiliation; absent is `none`.
    pub affiliations: HashMap<String, Affiliation>,
    /// In order of entry.
    pub occupants: Vec<Occupant>,
    /// The subject and the nickname that set it.
    pub subject: Option<(String, String)>,
    /// The last groupchat messages, oldest first, at most `config.history_length`.
    pub history: VecDeque<HistoryItem>,
    /// What is stored of a persistent room (configuration, subject, affiliations) changed
    /// since the service last looked.
    pub dirty: bool,
    /// The room is in the database.
    pub stored: bool,
}

/// What the service around the room decides with, per call.
pub struct Context<'a> {
    /// The time now, in milliseconds since the epoch: given, so that a room reads no clock.
    pub now_ms: i64,
    /// `[muc] max_history`.
    pub max_history: usize,
    /// `[muc] max_occupants`.
    pub max_occupants: usize,
    /// Where the room puts the stanzas it sends, in order.
    pub out: &'a mut Vec<Element>,
}

/// A nickname's form for comparing (XEP-0045 §7.2.6 conflicts, RFC 8266 Nickname profile:
/// case and width do not tell nicknames apart); `None` when it is not a nickname at all.
pub fn nick_key(nick: &str) -> Option<String> {
    let enforced = Nickname::enforce(nick).ok()?;
    (!enforced.is_empty()).then(|| enforced.to_lowercase())
}

/// The nickname as the room uses it: RFC 8266 enforced (spaces trimmed, NFKC). `None` when
/// nothing is left or it is not valid.
fn enforce_nick(nick: &str) -> Option<String> {
    let enforced = Nickname::enforce(nick).ok()?;
    (!enforced.is_empty()).then(|| enforced.into_owned())
}

fn status(code: u16) -> Element {
    Element::new("status", NS_MUC_USER).with_attr("code", code.to_string())
}

/// The `<delay/>` stamp of XEP-0082 for milliseconds since the epoch.
pub fn stamp(ms: i64) -> String {
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// What a join asked for: `<history/>` (§7.2.15) and the password.
struct JoinRequest {
    password: Option<String>,
    max_stanzas: Option<usize>,
    max_chars: Option<usize>,
    seconds: Option<i64>,
    since_ms: Option<i64>,
}

impl JoinRequest {
    fn of(x: Option<&Element>) -> JoinRequest {
        let password = x
            .and_then(|x| x.child("password", NS_MUC))
            .map(Element::text);
        let history = x.and_then(|x| x.child("history", NS_MUC));
        let num = |name: &str| history.and_then(|h| h.attr(name)?.parse::<usize>().ok());
        JoinRequest {
            password,
            max_stanzas: num("maxstanzas"),
            max_chars: num("maxchars"),
            seconds: num("seconds").map(|s| s as i64),
            since_ms: history
                .and_then(|h| h.attr("since"))
                .and_then(|s| humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok())
                .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64),
        }
    }
}

impl Room {
    /// A room created by `owner`'s join: locked, with the service's defaults.
    pub fn new(jid: String, owner: &Jid, history_length: usize, max_users: usize) -> Room {
        let local = jid.split('@').next().unwrap_or_default().to_owned();
        let mut affiliations = HashMap::new();
        affiliations.insert(owner.bare().to_string(), Affiliation::Owner);
        Room {
            jid,
            config: RoomConfig {
                name: local,
                description: String::new(),
                persistent: false,
                public: true,
                members_only: false,
                moderated: false,
                password: None,
                max_users,
                whois: Whois::Moderators,
                history_length,
            },
            locked: true,
            affiliations,
            occupants: Vec::new(),
            subject: None,
            history: VecDeque::new(),
            dirty: false,
            stored: false,
        }
    }

    /// A persistent room as the database kept it: configured, empty.
    pub fn from_stored(jid: String, stored: StoredRoom) -> Room {
        Room {
            jid,
            config: stored.config,
            locked: false,
            affiliations: stored.affiliations.into_iter().collect(),
            occupants: Vec::new(),
            subject: stored.subject,
            history: VecDeque::new(),
            dirty: false,
            stored: true,
        }
    }

    /// What the database keeps of the room, whose localpart is `local`.
    pub fn record(&self, local: &str) -> StoredRoom {
        let mut affiliations: Vec<(String, Affiliation)> = self
            .affiliations
            .iter()
            .map(|(j, a)| (j.clone(), *a))
            .collect();
        affiliations.sort();
        StoredRoom {
            room: local.to_owned(),
            config: self.config.clone(),
            subject: self.subject.clone(),
            affiliations,
        }
    }

    /// The affiliation of `jid`'s bare JID; `none` if it has none.
    pub fn affiliation(&self, jid: &Jid) -> Affiliation {
        self.affiliations
            .get(&jid.bare().to_string())
            .copied()
            .unwrap_or(Affiliation::None)
    }

    /// The occupant that is the session `jid`.
    pub fn occupant_of(&self, jid: &Jid) -> Option<usize> {
        self.occupants.iter().position(|o| &o.jid == jid)
    }

    /// The occupant with a nickname (compared as nicknames).
    pub fn occupant_named(&self, nick: &str) -> Option<usize> {
        let key = nick_key(nick)?;
        self.occupants
            .iter()
            .position(|o| nick_key(&o.nick).as_deref() == Some(&key))
    }

    /// The room should go away: nobody is in it and it is not persistent (or it was never
    /// configured).
    pub fn is_empty_and_temporary(&self) -> bool {
        self.occupants.is_empty() && (!self.config.persistent || self.locked)
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{nick}", self.jid)
    }

    /// The role a newcomer with `affiliation` gets (§5.1.2).
    fn default_role(&self, affiliation: Affiliation) -> Role {
        match affiliation {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            _ if self.config.moderated => Role::Visitor,
            _ => Role::Participant,
        }
    }

    /// `occupant`'s presence as `viewer` gets it: its payload, then `<x muc#user>` with the
    /// item (its real JID only where the room reveals it to `viewer`) and the status codes
    /// (110 added for the occupant itself).
    fn presence_of(
        &self,
        occupant: &Occupant,
        viewer: &Occupant,
        unavailable: bool,
        codes: &[u16],
        extra_item: impl Fn(&mut Element),
    ) -> Element {
        let mut p = Element::new("presence", ns::COMPONENT)
            .with_attr("from", self.occupant_jid(&occupant.nick))
            .with_attr("to", viewer.jid.to_string());
        if unavailable {
            p.set_attr("type", "unavailable");
        } else {
            for c in &occupant.payload {
                p = p.with_child(c.clone());
            }
        }
        let mut item = Element::new("item", NS_MUC_USER)
            .with_attr("affiliation", self.affiliation(&occupant.jid).as_str())
            .with_attr(
                "role",
                if unavailable {
                    "none"
                } else {
                    occupant.role.as_str()
                },
            );
        if self.config.whois == Whois::Anyone || viewer.role == Role::Moderator {
            item.set_attr("jid", occupant.jid.to_string());
        }
        extra_item(&mut item);
        let mut x = Element::new("x", NS_MUC_USER).with_child(item);
        let is_self = occupant.jid == viewer.jid;
        for &c in codes {
            x = x.with_child(status(c));
        }
        if is_self {
            x = x.with_child(status(110));
        }
        p.with_child(x)
    }

    /// `occupant`'s presence to everyone in the room (itself last, as §7.2.3 asks).
    fn broadcast_presence(
        &self,
        occupant: &Occupant,
        unavailable: bool,
        codes: &[u16],
        self_codes: &[u16],
        extra_item: impl Fn(&mut Element) + Copy,
        out: &mut Vec<Element>,
    ) {
        for viewer in self.occupants.iter().filter(|v| v.jid != occupant.jid) {
            out.push(self.presence_of(occupant, viewer, unavailable, codes, extra_item));
        }
        let mut own: Vec<u16> = codes.to_vec();
        own.extend_from_slice(self_codes);
        out.push(self.presence_of(occupant, occupant, unavailable, &own, extra_item));
    }

    /// A presence from `from` to `room/nick`: entering, a nickname change, a presence
    /// update, or leaving (`unavailable`).
    pub fn handle_presence(
        &mut self,
        el: &Element,
        from: &Jid,
        nick: &str,
        created: bool,
        cx: &mut Context<'_>,
    ) {
        let unavailable = el.attr("type") == Some("unavailable");
        match self.occupant_of(from) {
            Some(i) if unavailable => self.leave(i, cx),
            Some(i) => {
                if nick_key(nick) == nick_key(&self.occupants[i].nick) {
                    self.occupants[i].payload = payload_of(el);
                    let occupant = self.occupants[i].clone();
                    self.broadcast_presence(&occupant, false, &[], &[], |_| {}, cx.out);
                } else {
                    self.change_nick(el, i, nick, cx);
                }
            }
            None if unavailable => {}
            None => self.join(el, from, nick, created, cx),
        }
    }

    /// XEP-0045 §7.2: the entry checks in the order the XEP lists them, then the presences,
    /// the history and the subject.
    fn join(&mut self, el: &Element, from: &Jid, nick: &str, created: bool, cx: &mut Context<'_>) {
        let refuse = |cx: &mut Context<'_>, cond, text: &str| {
            cx.out.extend(error_reply(el, cond, text));
        };
        let Some(enforced) = enforce_nick(nick) else {
            return refuse(
                cx,
                StanzaErrorCondition::NotAcceptable,
                "this nickname is not acceptable: it is empty or has characters a nickname may not",
            );
        };
        let affiliation = self.affiliation(from);
        if self.locked && affiliation != Affiliation::Owner {
            return refuse(
                cx,
                StanzaErrorCondition::ItemNotFound,
                "the room is locked until its owner configures it",
            );
        }
        if affiliation == Affiliation::Outcast {
            return refuse(
                cx,
                StanzaErrorCondition::Forbidden,
                "you are banned from this room",
            );
        }
        if self.config.members_only && affiliation < Affiliation::Member {
            return refuse(
                cx,
                StanzaErrorCondition::RegistrationRequired,
                "this room is members-only and you are not a member",
            );
        }
        let x = el.child("x", NS_MUC);
        let request = JoinRequest::of(x);
        if let Some(password) = &self.config.password {
            if affiliation < Affiliation::Owner && request.password.as_ref() != Some(password) {
                let text = if request.password.is_some() {
                    "wrong password for this room"
                } else {
                    "this room needs a password"
                };
                return refuse(cx, StanzaErrorCondition::NotAuthorized, text);
            }
        }
        // §7.2.9. Another session of the same account is refused too: a nickname is one
        // session here (several sessions per nickname are not supported).
        if self.occupant_named(&enforced).is_some() {
            return refuse(
                cx,
                StanzaErrorCondition::Conflict,
                "this nickname is taken by another occupant",
            );
        }
        let max = self.config.max_users.min(cx.max_occupants);
        if affiliation < Affiliation::Admin && self.occupants.len() >= max {
            return refuse(
                cx,
                StanzaErrorCondition::ServiceUnavailable,
                "the room is full",
            );
        }
        let occupant = Occupant {
            nick: enforced.clone(),
            jid: from.clone(),
            role: self.default_role(affiliation),
            payload: payload_of(el),
        };
        // §7.2.3: first the others' presence to the newcomer, then its own to everyone.
        for other in &self.occupants {
            cx.out
                .push(self.presence_of(other, &occupant, false, &[], |_| {}));
        }
        self.occupants.push(occupant.clone());
        let mut own = Vec::new();
        if self.config.whois == Whois::Anyone {
            own.push(100);
        }
        if created {
            own.push(201);
        }
        if enforced != nick {
            own.push(210);
        }
        self.broadcast_presence(&occupant, false, &[], &own, |_| {}, cx.out);
        self.send_history(&occupant, &request, cx);
        // §7.2.15: the subject last, empty when none is set, so the client knows the join is
        // complete.
        let mut subject = Element::new("message", ns::COMPONENT)
            .with_attr("type", "groupchat")
            .with_attr("to", occupant.jid.to_string());
        match &self.subject {
            Some((by, text)) => {
                subject.set_attr("from", self.occupant_jid(by));
                subject =
                    subject.with_child(Element::new("subject", ns::COMPONENT).with_text(text));
            }
            None => {
                subject.set_attr("from", self.jid.clone());
                subject = subject.with_child(Element::new("subject", ns::COMPONENT));
            }
        }
        cx.out.push(subject);
    }

    /// §7.2.15: the history the newcomer asked for, within what the room keeps, each with
    /// `<delay/>` from the room.
    fn send_history(&self, to: &Occupant, request: &JoinRequest, cx: &mut Context<'_>) {
        let keep = self.config.history_length.min(cx.max_history);
        let max_stanzas = request.max_stanzas.unwrap_or(keep).min(keep);
        let oldest = match (request.seconds, request.since_ms) {
            (Some(s), Some(t)) => Some((cx.now_ms - s * 1000).max(t)),
            (Some(s), None) => Some(cx.now_ms - s * 1000),
            (None, t) => t,
        };
        let mut chars_left = request.max_chars.unwrap_or(usize::MAX);
        let mut picked = Vec::new();
        for item in self.history.iter().rev().take(max_stanzas) {
            if oldest.is_some_and(|o| item.at_ms < o) || item.chars > chars_left {
                break;
            }
            chars_left -= item.chars;
            picked.push(item);
        }
        for item in picked.into_iter().rev() {
            let mut m = item.message.clone();
            m.set_attr("to", to.jid.to_string());
            m = m.with_child(
                Element::new("delay", NS_DELAY)
                    .with_attr("from", self.jid.clone())
                    .with_attr("stamp", stamp(item.at_ms)),
            );
            cx.out.push(m);
        }
    }

    /// §7.6: unavailable from the old nickname with 303 and the new one, then presence from
    /// the new one.
    fn change_nick(&mut self, el: &Element, i: usize, nick: &str, cx: &mut Context<'_>) {
        let Some(enforced) = enforce_nick(nick) else {
            cx.out.extend(error_reply(
                el,
                StanzaErrorCondition::NotAcceptable,
                "this nickname is not acceptable: it is empty or has characters a nickname may not",
            ));
            return;
        };
        if self.occupant_named(&enforced).is_some_and(|j| j != i) {
            cx.out.extend(error_reply(
                el,
                StanzaErrorCondition::Conflict,
                "this nickname is taken by another occupant",
            ));
            return;
        }
        let old = self.occupants[i].clone();
        let new_nick = enforced.clone();
        self.broadcast_presence(
            &old,
            true,
            &[303],
            &[],
            |item| item.set_attr("nick", new_nick.clone()),
            cx.out,
        );
        self.occupants[i].nick = enforced.clone();
        self.occupants[i].payload = payload_of(el);
        let renamed = self.occupants[i].clone();
        let own: &[u16] = if enforced != nick { &[210] } else { &[] };
        self.broadcast_presence(&renamed, false, &[], own, |_| {}, cx.out);
    }

    /// §7.14: the occupant leaves; everyone, itself included, gets its unavailable presence.
    fn leave(&mut self, i: usize, cx: &mut Context<'_>) {
        let occupant = self.occupants[i].clone();
        self.broadcast_presence(&occupant, true, &[], &[], |_| {}, cx.out);
        self.occupants.remove(i);
    }

    /// Removes an occupant with the given status code (307 kicked, 301 banned, 321 no longer
    /// a member, 332 service shutting down), telling it and everyone.
    pub fn remove(&mut self, i: usize, code: u16, actor: Option<&str>, out: &mut Vec<Element>) {
        let occupant = self.occupants[i].clone();
        let actor = actor.map(str::to_owned);
        self.broadcast_presence(
            &occupant,
            true,
            &[code],
            &[],
            |item| {
                if let Some(a) = &actor {
                    item.children.push(Node::Element(
                        Element::new("actor", NS_MUC_USER).with_attr("nick", a.clone()),
                    ));
                }
            },
            out,
        );
        self.occupants.remove(i);
    }

    /// Every occupant's presence again (after a role or affiliation change of `i`).
    pub fn announce(&self, i: usize, out: &mut Vec<Element>) {
        let occupant = self.occupants[i].clone();
        self.broadcast_presence(&occupant, false, &[], &[], |_| {}, out);
    }

    /// A message to the room's bare JID from `from`: groupchat (to everyone, kept in the
    /// history) or a subject change. True when a message went to the occupants.
    pub fn handle_groupchat(&mut self, el: &Element, from: &Jid, cx: &mut Context<'_>) -> bool {
        let Some(i) = self.occupant_of(from) else {
            cx.out.extend(error_reply(
                el,
                StanzaErrorCondition::NotAcceptable,
                "only occupants may send messages to the room: join it first",
            ));
            return false;
        };
        let sender = &self.occupants[i];
        if let Some(subject) = el.child("subject", ns::COMPONENT) {
            // §8.1: moderators change the subject.
            if sender.role != Role::Moderator {
                cx.out.extend(error_reply(
                    el,
                    StanzaErrorCondition::Forbidden,
                    "only moderators may change the subject",
                ));
                return false;
            }
            let text = subject.text();
            self.subject = (!text.is_empty()).then(|| (sender.nick.clone(), text));
            self.dirty = true;
            let nick = sender.nick.clone();
            let message = self.stamped_message(el, &nick, false);
            self.fan_out(&message, cx.out);
            return true;
        }
        if sender.role < Role::Participant {
            cx.out.extend(error_reply(
                el,
                StanzaErrorCondition::Forbidden,
                "visitors may not speak in this moderated room: ask a moderator for voice",
            ));
            return false;
        }
        let nick = sender.nick.clone();
        let message = self.stamped_message(el, &nick, true);
        self.fan_out(&message, cx.out);
        if message.child("body", ns::COMPONENT).is_some() {
            let chars = message
                .child("body", ns::COMPONENT)
                .map(|b| b.text().chars().count())
                .unwrap_or(0);
            self.history.push_back(HistoryItem {
                message,
                at_ms: cx.now_ms,
                chars,
            });
            let keep = self.config.history_length.min(cx.max_history);
            while self.history.len() > keep {
                self.history.pop_front();
            }
        }
        true
    }

    /// The message as the room relays it: from `room/nick`, type groupchat, its children,
    /// and (with `stanza_id`) an XEP-0359 `<stanza-id/>` by the room in place of any a sender
    /// put there.
    fn stamped_message(&self, el: &Element, nick: &str, stanza_id: bool) -> Element {
        let mut m = Element::new("message", ns::COMPONENT)
            .with_attr("from", self.occupant_jid(nick))
            .with_attr("type", "groupchat");
        if let Some(id) = el.attr("id") {
            m.set_attr("id", id);
        }
        for c in el.children() {
            let forged = c.name == "stanza-id" && c.ns == NS_SID && c.attr("by") == Some(&self.jid);
            if !forged {
                m = m.with_child(c.clone());
            }
        }
        if stanza_id {
            let id = format!("{:032x}", rand::random::<u128>());
            m = m.with_child(
                Element::new("stanza-id", NS_SID)
                    .with_attr("id", id)
                    .with_attr("by", self.jid.clone()),
            );
        }
        m
    }

    /// One copy of `message` per occupant.
    pub fn fan_out(&self, message: &Element, out: &mut Vec<Element>) {
        for o in &self.occupants {
            let mut m = message.clone();
            m.set_attr("to", o.jid.to_string());
            out.push(m);
        }
    }

    /// §7.5: a private message from `from` to the occupant `nick`, relayed to its real JID
    /// from the sender's occupant JID.
    pub fn handle_private(&self, el: &Element, from: &Jid, nick: &str, out: &mut Vec<Element>) {
        let Some(i) = self.occupant_of(from) else {
            out.extend(error_reply(
                el,
                StanzaErrorCondition::NotAcceptable,
                "only occupants may send private messages: join the room first",
            ));
            return;
        };
        if el.attr("type") == Some("groupchat") {
            out.extend(error_reply(
                el,
                StanzaErrorCondition::BadRequest,
                "a groupchat message goes to the room's bare JID, not to an occupant",
            ));
            return;
        }
        let Some(j) = self.occupant_named(nick) else {
            out.extend(error_reply(
                el,
                StanzaErrorCondition::ItemNotFound,
                "no occupant of the room has this nickname",
            ));
            return;
        };
        let mut m = el.clone();
        m.set_attr("from", self.occupant_jid(&self.occupants[i].nick));
        m.set_attr("to", self.occupants[j].jid.to_string());
        m.children
            .push(Node::Element(Element::new("x", NS_MUC_USER)));
        out.push(m);
    }

    /// A message from the room itself with status codes, to every occupant (§10.2.1: 104
    /// after a configuration change, 172/173 when the room's anonymity changed).
    pub fn notify_codes(&self, codes: &[u16], out: &mut Vec<Element>) {
        let mut x = Element::new("x", NS_MUC_USER);
        for &c in codes {
            x = x.with_child(status(c));
        }
        let m = Element::new("message", ns::COMPONENT)
            .with_attr("from", self.jid.clone())
            .with_attr("type", "groupchat")
            .with_child(x);
        self.fan_out(&m, out);
    }
}

/// A presence's children but the MUC ones: what the room shows of an occupant.
fn payload_of(el: &Element) -> Vec<Element> {
    el.children()
        .filter(|c| c.ns != NS_MUC && c.ns != NS_MUC_USER)
        .cloned()
        .collect()
}
