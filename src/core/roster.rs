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
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

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
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubscriptionAction {
    pub fn from_type(t: &str) -> Option<SubscriptionAction> {
        Some(match t {
            "subscribe" => SubscriptionAction::Subscribe,
            "subscribed" => SubscriptionAction::Subscribed,
            "unsubscribe" => SubscriptionAction::Unsubscribe,
            "unsubscribed" => SubscriptionAction::Unsubscribed,
            _ => return None,
        })
    }

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
    pub sub: Subscription,
    /// We asked for the contact's presence and have no answer yet (`ask='subscribe'`).
    pub pending_out: bool,
    /// The contact asked for our presence and the user has not answered yet.
    pub pending_in: bool,
}

/// The outcome of a subscription stanza on a [`SubState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub state: SubState,
    /// Outbound: route the stanza to the contact. Inbound: deliver it to the user's
    /// resources.
    pub forward: bool,
    /// Inbound only: the server answers the contact itself with `subscribed` (the contact is
    /// approved already, RFC 6121 §3.1.3).
    pub auto_reply: bool,
}

impl SubState {
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
            // A.3.1: approved already → the server answers; else the request waits for the
            // user (delivered now, and again at each sign-in until answered).
            SubscriptionAction::Subscribe => {
                if from {
                    (false, true)
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
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub state: SubState,
    /// False for an entry that exists only to remember a pending inbound request from someone
    /// the user has not added (RFC 6121 §3.1.3: such a request does not create a roster item).
    pub in_roster: bool,
}

impl RosterItem {
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

    /// What a transition that changes nothing and forwards nothing looks like.
    fn ignored(state: SubState, auto_reply: bool) -> Transition {
        Transition {
            state,
            forward: false,
            auto_reply,
        }
    }

    /// Every state of RFC 6121 Appendix A.1.
    fn all_states() -> Vec<SubState> {
        vec![
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

    #[test]
    fn outbound_subscribe_a21() {
        let t = |s| SubState::outbound(s, Subscribe);
        assert_eq!(t(st(None, false, false)).state, st(None, true, false));
        assert_eq!(t(st(None, false, true)).state, st(None, true, true));
        assert_eq!(t(st(From, false, false)).state, st(From, true, false));
        for s in [
            st(To, false, false),
            st(To, false, true),
            st(Both, false, false),
        ] {
            assert_eq!(t(s), ignored(s, false));
        }
        assert!(t(st(None, true, false)).forward);
    }

    #[test]
    fn outbound_unsubscribe_a22() {
        let t = |s| SubState::outbound(s, Unsubscribe);
        assert_eq!(t(st(None, true, false)).state, st(None, false, false));
        assert_eq!(t(st(None, true, true)).state, st(None, false, true));
        assert_eq!(t(st(To, false, false)).state, st(None, false, false));
        assert_eq!(t(st(To, false, true)).state, st(None, false, true));
        assert_eq!(t(st(From, true, false)).state, st(From, false, false));
        assert_eq!(t(st(Both, false, false)).state, st(From, false, false));
        for s in [
            st(None, false, false),
            st(None, false, true),
            st(From, false, false),
        ] {
            assert_eq!(t(s).state, s);
            assert!(!t(s).forward);
        }
    }

    #[test]
    fn outbound_subscribed_a23() {
        let t = |s| SubState::outbound(s, Subscribed);
        assert_eq!(t(st(None, false, true)).state, st(From, false, false));
        assert_eq!(t(st(None, true, true)).state, st(From, true, false));
        assert_eq!(t(st(To, false, true)).state, st(Both, false, false));
        for s in all_states().into_iter().filter(|s| !s.pending_in) {
            assert_eq!(t(s), ignored(s, false));
        }
    }

    #[test]
    fn outbound_unsubscribed_a24() {
        let t = |s| SubState::outbound(s, Unsubscribed);
        assert_eq!(t(st(None, false, true)).state, st(None, false, false));
        assert_eq!(t(st(None, true, true)).state, st(None, true, false));
        assert_eq!(t(st(To, false, true)).state, st(To, false, false));
        assert_eq!(t(st(From, false, false)).state, st(None, false, false));
        assert_eq!(t(st(From, true, false)).state, st(None, true, false));
        assert_eq!(t(st(Both, false, false)).state, st(To, false, false));
        for s in [
            st(None, false, false),
            st(None, true, false),
            st(To, false, false),
        ] {
            assert_eq!(t(s).state, s);
            assert!(!t(s).forward);
        }
    }

    #[test]
    fn inbound_subscribe_a31() {
        let t = |s| SubState::inbound(s, Subscribe);
        assert_eq!(t(st(None, false, false)).state, st(None, false, true));
        assert_eq!(t(st(None, true, false)).state, st(None, true, true));
        assert_eq!(t(st(To, false, false)).state, st(To, false, true));
        assert!(t(st(None, false, false)).forward);
        for s in [
            st(From, false, false),
            st(From, true, false),
            st(Both, false, false),
        ] {
            assert_eq!(t(s), ignored(s, true));
        }
    }

    #[test]
    fn inbound_unsubscribe_a32() {
        let t = |s| SubState::inbound(s, Unsubscribe);
        assert_eq!(t(st(None, false, true)).state, st(None, false, false));
        assert_eq!(t(st(None, true, true)).state, st(None, true, false));
        assert_eq!(t(st(To, false, true)).state, st(To, false, false));
        assert_eq!(t(st(From, false, false)).state, st(None, false, false));
        assert_eq!(t(st(From, true, false)).state, st(None, true, false));
        assert_eq!(t(st(Both, false, false)).state, st(To, false, false));
        for s in [
            st(None, false, false),
            st(None, true, false),
            st(To, false, false),
        ] {
            assert_eq!(t(s), ignored(s, false));
        }
    }

    #[test]
    fn inbound_subscribed_a33() {
        let t = |s| SubState::inbound(s, Subscribed);
        assert_eq!(t(st(None, true, false)).state, st(To, false, false));
        assert_eq!(t(st(None, true, true)).state, st(To, false, true));
        assert_eq!(t(st(From, true, false)).state, st(Both, false, false));
        assert!(t(st(None, true, false)).forward);
        // Unsolicited: ignored (no state change, not delivered).
        for s in all_states().into_iter().filter(|s| !s.pending_out) {
            assert_eq!(t(s), ignored(s, false));
        }
    }

    #[test]
    fn inbound_unsubscribed_a34() {
        let t = |s| SubState::inbound(s, Unsubscribed);
        assert_eq!(t(st(None, true, false)).state, st(None, false, false));
        assert_eq!(t(st(None, true, true)).state, st(None, false, true));
        assert_eq!(t(st(To, false, false)).state, st(None, false, false));
        assert_eq!(t(st(To, false, true)).state, st(None, false, true));
        assert_eq!(t(st(From, true, false)).state, st(From, false, false));
        assert_eq!(t(st(Both, false, false)).state, st(From, false, false));
        for s in [
            st(None, false, false),
            st(None, false, true),
            st(From, false, false),
        ] {
            assert_eq!(t(s), ignored(s, false));
        }
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
