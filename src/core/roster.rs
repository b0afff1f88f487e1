//! Rosters and presence subscriptions (RFC 6121 §2–§3), sans I/O.
//!
//! A contact's [`SubState`] is the subscription (`none`, `to`, `from`, `both`) plus whether a
//! request we sent is pending (`ask='subscribe'`) and whether one we received is pending. The
//! transitions follow the tables of RFC 6121 Appendix A:
//! - [`SubState::outbound`]: the user sends `subscribe`, `subscribed`, `unsubscribe` or
//!   `unsubscribed` (A.2);
//! - [`SubState::inbound`]: such a stanza arrives from the contact (A.3).
//!
//! Each returns a [`Transition`]: the new state, whether the stanza goes on (to the contact, or
//! to the user's resources), and whether the server itself answers (an inbound `subscribe`
//! from a contact already approved is answered with `subscribed`, §3.1.3).

use crate::xml::Element;

/// The `jabber:iq:roster` namespace (RFC 6121 §2).
pub const NS_ROSTER: &str = "jabber:iq:roster";

/// The `subscription` attribute (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Subscription {
    /// Neither receives the other's presence.
    #[default]
    None,
    /// The user receives the contact's presence.
    To,
    /// The contact receives the user's presence.
    From,
    /// Each receives the other's presence.
    Both,
}

impl Subscription {
    /// The attribute's value, as sent in roster results and pushes.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    /// Reads a stored or received attribute value; `None` for anything else, `remove` too
    /// (a roster set's removal is not a state).
    pub fn from_name(s: &str) -> Option<Subscription> {
        Some(match s {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => return None,
        })
    }

    /// The user receives the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// The contact receives the user's presence.
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }

    fn with(to: bool, from: bool) -> Subscription {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
}

/// One of the four subscription presence types (RFC 6121 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionAction {
    /// A request for the recipient's presence (§3.1).
    Subscribe,
    /// Approves the recipient's request, or approves in advance (§3.1, §3.4).
    Subscribed,
    /// Cancels the sender's subscription to the recipient's presence (§3.3).
    Unsubscribe,
    /// Refuses a request, or cancels the recipient's subscription to the sender (§3.2).
    Unsubscribed,
}

impl SubscriptionAction {
    /// The action of a presence `type`; `None` for the other types (available,
    /// `unavailable`, `probe`, `error`).
    pub fn from_type(t: &str) -> Option<SubscriptionAction> {
        Some(match t {
            "subscribe" => SubscriptionAction::Subscribe,
            "subscribed" => SubscriptionAction::Subscribed,
            "unsubscribe" => SubscriptionAction::Unsubscribe,
            "unsubscribed" => SubscriptionAction::Unsubscribed,
            _ => return None,
        })
    }

    /// The presence `type` that carries this action.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionAction::Subscribe => "subscribe",
            SubscriptionAction::Subscribed => "subscribed",
            SubscriptionAction::Unsubscribe => "unsubscribe",
            SubscriptionAction::Unsubscribed => "unsubscribed",
        }
    }
}

/// A subscription state with its pending flags (RFC 6121 Appendix A.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubState {
    /// Who receives whose presence now.
    pub sub: Subscription,
    /// We asked for the contact's presence and have no answer yet (`ask='subscribe'`).
    pub pending_out: bool,
    /// The contact asked for our presence and the user has not answered yet.
    pub pending_in: bool,
}

/// The outcome of a subscription stanza on a [`SubState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The contact's state after the stanza (store it if it differs, and push the item).
    pub state: SubState,
    /// Outbound: route the stanza to the contact. Inbound: deliver it to the user's
    /// resources.
    pub forward: bool,
    /// Inbound only: the server answers the contact itself with `subscribed` (the contact is
    /// approved already, RFC 6121 §3.1.3).
    pub auto_reply: bool,
}

impl SubState {
    /// No subscription either way and nothing pending: a new contact's state.
    pub const NONE: SubState = SubState {
        sub: Subscription::None,
        pending_out: false,
        pending_in: false,
    };

    fn with_sub(self, to: bool, from: bool) -> SubState {
        SubState {
            sub: Subscription::with(to, from),
            ..self
        }
    }

    /// The user sends `action` to the contact (RFC 6121 Appendix A.2).
    pub fn outbound(self, action: SubscriptionAction) -> Transition {
        let (to, from) = (self.sub.has_to(), self.sub.has_from());
        let mut s = self;
        let forward = match action {
            // A.2.1: ask, unless we are subscribed already. The request is routed again even
            // when pending, as a client may repeat it after the contact's server lost it.
            SubscriptionAction::Subscribe => {
                if !to {
                    s.pending_out = true;
                }
                !to
            }
            // A.2.2: cancel our subscription or our pending request.
            SubscriptionAction::Unsubscribe => {
                let changed = to || s.pending_out;
                s = s.with_sub(false, from);
                s.pending_out = false;
                changed
            }
            // A.2.3: approve a pending request. Without one there is nothing to approve (no
            // pre-approval support), and nothing is routed.
            SubscriptionAction::Subscribed => {
                if s.pending_in {
                    s = s.with_sub(to, true);
                    s.pending_in = false;
                    true
                } else {
                    false
                }
            }
            // A.2.4: deny a pending request or cancel the contact's subscription.
            SubscriptionAction::Unsubscribed => {
                let changed = from || s.pending_in;
                s = s.with_sub(to, false);
                s.pending_in = false;
                changed
            }
        };
        Transition {
            state: s,
            forward,
            auto_reply: false,
        }
    }

    /// `action` arrives from the contact (RFC 6121 Appendix A.3).
    pub fn inbound(self, action: SubscriptionAction) -> Transition {
        let (to, from) = (self.sub.has_to(), self.sub.has_from());
        let mut s = self;
        let (forward, auto_reply) = match action {
            // A.3.1: approved already → the server answers; pending already → not delivered
            // again (the user has it, and gets it at each sign-in until answered); else the
            // request waits for the user, delivered now.
            SubscriptionAction::Subscribe => {
                if from {
                    (false, true)
                } else if s.pending_in {
                    (false, false)
                } else {
                    s.pending_in = true;
                    (true, false)
                }
            }
            // A.3.2: the contact cancels its subscription or its request.
            SubscriptionAction::Unsubscribe => {
                let changed = from || s.pending_in;
                s = s.with_sub(to, false);
                s.pending_in = false;
                (changed, false)
            }
            // A.3.3: only an answer to our pending request counts.
            SubscriptionAction::Subscribed => {
                if s.pending_out {
                    s = s.with_sub(true, from);
                    s.pending_out = false;
                    (true, false)
                } else {
                    (false, false)
                }
            }
            // A.3.4: the contact denies our request or cancels our subscription.
            SubscriptionAction::Unsubscribed => {
                let changed = to || s.pending_out;
                s = s.with_sub(false, from);
                s.pending_out = false;
                (changed, false)
            }
        };
        Transition {
            state: s,
            forward,
            auto_reply,
        }
    }
}

/// A roster entry (RFC 6121 §2.1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    /// The user's name for the contact (the `name` attribute), if set.
    pub name: Option<String>,
    /// The roster groups the user put the contact in (`<group/>`); empty for none.
    pub groups: Vec<String>,
    /// The subscription and what is pending.
    pub state: SubState,
    /// False for an entry that exists only to remember a pending inbound request from someone
    /// the user has not added (RFC 6121 §3.1.3: such a request does not create a roster item).
    pub in_roster: bool,
}

impl RosterItem {
    /// A roster entry for `jid` without name, groups or subscription.
    pub fn new(jid: &str) -> RosterItem {
        RosterItem {
            jid: jid.to_owned(),
            name: None,
            groups: Vec::new(),
            state: SubState::NONE,
            in_roster: true,
        }
    }

    /// The `<item/>` of a roster result or push.
    pub fn to_element(&self) -> Element {
        let mut item = Element::new("item", NS_ROSTER)
            .with_attr("jid", &self.jid)
            .with_attr("subscription", self.state.sub.as_str());
        if let Some(name) = &self.name {
            item.set_attr("name", name);
        }
        if self.state.pending_out {
            item.set_attr("ask", "subscribe");
        }
        for g in &self.groups {
            item = item.with_child(Element::new("group", NS_ROSTER).with_text(g));
        }
        item
    }

    /// The `<item subscription='remove'/>` of a push after a removal.
    pub fn removed(jid: &str) -> Element {
        Element::new("item", NS_ROSTER)
            .with_attr("jid", jid)
            .with_attr("subscription", "remove")
    }
}

#[cfg(test)]
mod tests {
    use super::Subscription::*;
    use super::SubscriptionAction::*;
    use super::*;

    fn st(sub: Subscription, pending_out: bool, pending_in: bool) -> SubState {
        SubState {
            sub,
            pending_out,
            pending_in,
        }
    }

    /// Every state of RFC 6121 Appendix A.1, in the order of its tables: None, None + Pending
    /// Out, None + Pending In, None + Pending Out/In, To, To + Pending In, From, From + Pending
    /// Out, Both.
    fn all_states() -> [SubState; 9] {
        [
            st(None, false, false),
            st(None, true, false),
            st(None, false, true),
            st(None, true, true),
            st(To, false, false),
            st(To, false, true),
            st(From, false, false),
            st(From, true, false),
            st(Both, false, false),
        ]
    }

    /// One row of an Appendix A table: whether the stanza goes on (routed to the contact, or
    /// delivered to the user) and the new state (`None` for "no state change").
    type Row = (bool, Option<SubState>);

    /// Checks `transition` against a table whose rows follow [`all_states`]; `auto_reply` for
    /// the states where the server answers itself.
    fn follows(
        table: &str,
        transition: impl Fn(SubState) -> Transition,
        rows: [Row; 9],
        auto_reply: impl Fn(SubState) -> bool,
    ) {
        for (state, (forward, new)) in all_states().into_iter().zip(rows) {
            let want = Transition {
                state: new.unwrap_or(state),
                forward,
                auto_reply: auto_reply(state),
            };
            assert_eq!(transition(state), want, "{table}, from {state:?}");
        }
    }

    /// A.2: the user sends a subscription stanza. The RFC's tables give the new state; whether
    /// it is routed is ours: what changes something goes on, and a `subscribe` is routed again
    /// while pending (the contact's server may have lost it).
    #[test]
    fn outbound_follows_appendix_a2() {
        let no = (false, Option::None);
        follows(
            "A.2.1 subscribe",
            |s| s.outbound(Subscribe),
            [
                (true, Some(st(None, true, false))),
                (true, Option::None),
                (true, Some(st(None, true, true))),
                (true, Option::None),
                no,
                no,
                (true, Some(st(From, true, false))),
                (true, Option::None),
                no,
            ],
            |_| false,
        );
        follows(
            "A.2.2 unsubscribe",
            |s| s.outbound(Unsubscribe),
            [
                no,
                (true, Some(st(None, false, false))),
                no,
                (true, Some(st(None, false, true))),
                (true, Some(st(None, false, false))),
                (true, Some(st(None, false, true))),
                no,
                (true, Some(st(From, false, false))),
                (true, Some(st(From, false, false))),
            ],
            |_| false,
        );
        follows(
            "A.2.3 subscribed",
            |s| s.outbound(Subscribed),
            [
                no,
                no,
                (true, Some(st(From, false, false))),
                (true, Some(st(From, true, false))),
                no,
                (true, Some(st(Both, false, false))),
                no,
                no,
                no,
            ],
            |_| false,
        );
        follows(
            "A.2.4 unsubscribed",
            |s| s.outbound(Unsubscribed),
            [
                no,
                no,
                (true, Some(st(None, false, false))),
                (true, Some(st(None, true, false))),
                no,
                (true, Some(st(To, false, false))),
                (true, Some(st(None, false, false))),
                (true, Some(st(None, true, false))),
                (true, Some(st(To, false, false))),
            ],
            |_| false,
        );
    }

    /// A.3: a subscription stanza arrives from the contact; "deliver?" and the new state are
    /// the RFC's, cell for cell.
    #[test]
    fn inbound_follows_appendix_a3() {
        let no = (false, Option::None);
        follows(
            "A.3.1 subscribe",
            |s| s.inbound(Subscribe),
            [
                (true, Some(st(None, false, true))),
                (true, Some(st(None, true, true))),
                no,
                no,
                (true, Some(st(To, false, true))),
                no,
                no,
                no,
                no,
            ],
            // "Server SHOULD auto-reply with subscribed" where the contact is approved.
            |s| s.sub.has_from(),
        );
        follows(
            "A.3.2 unsubscribe",
            |s| s.inbound(Unsubscribe),
            [
                no,
                no,
                (true, Some(st(None, false, false))),
                (true, Some(st(None, true, false))),
                no,
                (true, Some(st(To, false, false))),
                (true, Some(st(None, false, false))),
                (true, Some(st(None, true, false))),
                (true, Some(st(To, false, false))),
            ],
            |_| false,
        );
        follows(
            "A.3.3 subscribed",
            |s| s.inbound(Subscribed),
            [
                no,
                (true, Some(st(To, false, false))),
                no,
                (true, Some(st(To, false, true))),
                no,
                no,
                no,
                (true, Some(st(Both, false, false))),
                no,
            ],
            |_| false,
        );
        follows(
            "A.3.4 unsubscribed",
            |s| s.inbound(Unsubscribed),
            [
                no,
                (true, Some(st(None, false, false))),
                no,
                (true, Some(st(None, false, true))),
                (true, Some(st(None, false, false))),
                (true, Some(st(None, false, true))),
                no,
                (true, Some(st(From, false, false))),
                (true, Some(st(From, false, false))),
            ],
            |_| false,
        );
    }

    #[test]
    fn a_full_handshake_ends_in_both_on_each_side() {
        // alice subscribes to bob; bob approves and subscribes back; alice approves.
        let (mut a, mut b) = (SubState::NONE, SubState::NONE);
        a = a.outbound(Subscribe).state;
        b = b.inbound(Subscribe).state;
        b = b.outbound(Subscribed).state;
        a = a.inbound(Subscribed).state;
        b = b.outbound(Subscribe).state;
        a = a.inbound(Subscribe).state;
        a = a.outbound(Subscribed).state;
        b = b.inbound(Subscribed).state;
        assert_eq!(a, st(Both, false, false));
        assert_eq!(b, st(Both, false, false));
    }

    #[test]
    fn items_as_elements() {
        let mut item = RosterItem::new("bob@b.test");
        item.name = Some("Bob".into());
        item.groups = vec!["Friends".into()];
        item.state = st(To, true, false);
        assert_eq!(
            String::from_utf8(item.to_element().to_bytes()).unwrap(),
            "<item xmlns='jabber:iq:roster' jid='bob@b.test' subscription='to' name='Bob' \
             ask='subscribe'><group>Friends</group></item>"
        );
    }
}
