//! Presence (RFC 6121 §4) and subscription handshakes (§3).
//!
//! - Initial presence from a session makes it an available resource: the presence goes to
//!   every contact with a `from`/`both` subscription and to the account's other available
//!   resources; the server probes the contacts it is subscribed `to` (answering for local ones
//!   at once), shows the session its other resources, repeats pending subscription requests,
//!   and delivers offline messages.
//! - Later broadcasts and unavailable presence go to the same contacts, plus everyone that got
//!   directed presence (§4.6); a session that ends without unavailable gets one sent for it.
//! - A probe is answered with the presence of every available resource when the prober is
//!   subscribed `from` (§4.3.2), with unavailable presence when none is, and with
//!   `unsubscribed` otherwise (also for an account that does not exist), so presence is never
//!   revealed to someone not approved and a stale subscription on the prober's side ends.
//! - Subscription stanzas go through [`SubState`](super::roster::SubState), are stamped with
//!   bare JIDs, update the roster (pushed to interested resources) and are routed or
//!   delivered as its transition says.

use std::sync::Arc;

use super::roster::{RosterItem, SubscriptionAction};
use super::storage::StorageError;
use super::{Core, SessionHandle};
use crate::jid::Jid;
use crate::xml::{ns, Element};

fn presence_to(el: &Element, from: &str, to: &str) -> Element {
    let mut p = el.clone();
    p.set_attr("from", from);
    p.set_attr("to", to);
    p
}

impl Core {
    /// A presence stanza from a signed-in client (already stamped with its full JID).
    pub(crate) async fn presence_outbound(&self, session: &Arc<SessionHandle>, el: Element) {
        let type_ = el.attr("type").map(str::to_owned);
        if let Some(action) = type_.as_deref().and_then(SubscriptionAction::from_type) {
            return self.subscription_outbound(session, el, action).await;
        }
        match type_.as_deref() {
            None | Some("unavailable") => {}
            // Probes are the server's business (§4.3); errors from a client go where they say.
            Some("probe") => return,
            Some(_) => {
                if el.attr("to").is_some() {
                    self.route(el).await;
                }
                return;
            }
        }
        let available = type_.is_none();
        let photo_withheld = available && super::vcard::withholds_photo(&el);
        // XEP-0153: available presence carries the account's avatar hash.
        let el = if available {
            self.with_avatar(&session.account, el).await
        } else {
            el
        };
        if let Some(to) = el.attr("to").map(str::to_owned) {
            // Directed presence (§4.6): remember who must hear of our going.
            {
                let mut p = session.presence();
                if available {
                    if !p.directed.contains(&to) {
                        p.directed.push(to.clone());
                    }
                } else {
                    p.directed.retain(|d| *d != to);
                }
            }
            return self.route(el).await;
        }
        let initial = {
            let mut p = session.presence();
            let initial = available && !p.available;
            p.available = available;
            p.priority = el
                .children()
                .find(|c| c.name == "priority" && c.ns == ns::CLIENT)
                .and_then(|c| c.text().trim().parse::<i32>().ok())
                .unwrap_or(0)
                .clamp(-128, 127);
            p.last = available.then(|| el.clone());
            p.photo_withheld = photo_withheld;
            p.unavailable_status = if available {
                None
            } else {
                el.children()
                    .find(|c| c.name == "status" && c.ns == ns::CLIENT)
                    .map(Element::text)
            };
            initial
        };
        self.broadcast_presence(session, el, initial).await;
    }

    /// §4.2 and §4.4: sends a session's presence to its subscribers and its account's other
    /// resources (and, when it goes, to those that got directed presence); for initial
    /// presence also probes, shows the other resources, repeats pending requests and delivers
    /// offline messages.
    pub(crate) async fn broadcast_presence(
        &self,
        session: &Arc<SessionHandle>,
        el: Element,
        initial: bool,
    ) {
        self.pep_presence(&session.account, &session.jid, &el).await;
        let from = session.jid.to_string();
        let bare = session.jid.bare().to_string();
        let roster = match self.storage.load_roster(&session.account).await {
            Ok(r) => r,
            Err(e) => return tracing::warn!("roster read failed: {e}"),
        };
        for item in roster.iter().filter(|i| i.state.sub.has_from()) {
            // XEP-0191: a blocked contact sees the account as offline (it got unavailable
            // presence when it was blocked).
            if let Ok(j) = Jid::parse(&item.jid) {
                if self.blocks(&session.account, &j).await {
                    continue;
                }
            }
            self.route(presence_to(&el, &from, &item.jid)).await;
        }
        if el.attr("type") == Some("unavailable") {
            let directed = std::mem::take(&mut session.presence().directed);
            for to in directed {
                if !roster.iter().any(|i| i.jid == to && i.state.sub.has_from()) {
                    self.route(presence_to(&el, &from, &to)).await;
                }
            }
        }
        for other in self.sessions_of(&session.account) {
            if other.id != session.id && other.is_available() {
                other.send_element(&presence_to(&el, &from, &other.jid.to_string()));
            }
        }
        if !initial {
            return;
        }
        for item in roster.iter().filter(|i| i.state.sub.has_to()) {
            let probe = Element::new("presence", ns::CLIENT)
                .with_attr("from", &bare)
                .with_attr("to", &item.jid)
                .with_attr("type", "probe");
            self.route(probe).await;
        }
        for other in self.sessions_of(&session.account) {
            if other.id == session.id {
                continue;
            }
            let last = other.presence().last.clone();
            if let Some(p) = last {
                session.send_element(&presence_to(&p, &other.jid.to_string(), &from));
            }
        }
        for item in roster.iter().filter(|i| i.state.pending_in) {
            let request = Element::new("presence", ns::CLIENT)
                .with_attr("from", &item.jid)
                .with_attr("to", &bare)
                .with_attr("type", "subscribe");
            session.send_element(&request);
        }
        if session.presence().priority >= 0 {
            self.deliver_offline(session).await;
        }
    }

    /// `owner`'s entry for `contact`, or a new hidden one (not in the roster, nothing pending)
    /// for the subscription state machine to start from. A failure is logged here; the
    /// subscription stanza is then dropped (presence stanzas are not answered with errors).
    async fn entry_or_hidden(
        &self,
        owner: &str,
        contact: &str,
    ) -> Result<RosterItem, StorageError> {
        let item = self
            .storage
            .load_roster_item(owner, contact)
            .await
            .inspect_err(|e| tracing::warn!("roster read failed for a subscription: {e}"))?;
        Ok(item.unwrap_or_else(|| RosterItem {
            in_roster: false,
            ..RosterItem::new(contact)
        }))
    }

    /// §3: the user sends a subscription stanza to a contact.
    async fn subscription_outbound(
        &self,
        session: &Arc<SessionHandle>,
        el: Element,
        action: SubscriptionAction,
    ) {
        let Some(contact) = el.attr("to").and_then(|t| Jid::parse(t).ok()) else {
            return;
        };
        let key = self.contact_key(&contact);
        if key == session.account {
            return;
        }
        let owner = session.account.clone();
        let Ok(mut item) = self.entry_or_hidden(&owner, &key).await else {
            return;
        };
        let before = item.clone();
        let t = item.state.outbound(action);
        item.state = t.state;
        // §3.1.2 and §3.1.5: asking for or approving a subscription puts the contact on the
        // roster.
        if matches!(action, SubscriptionAction::Subscribe)
            || (matches!(action, SubscriptionAction::Subscribed) && t.forward)
        {
            item.in_roster = true;
        }
        if item != before {
            if let Err(e) = self.storage.store_roster_item(&owner, &item).await {
                return tracing::warn!("roster write failed for a subscription: {e}");
            }
            if item.in_roster {
                self.push_roster(&owner, item.to_element()).await;
            }
        }
        if !t.forward {
            return;
        }
        let bare = session.jid.bare().to_string();
        let mut out = Element::new("presence", ns::CLIENT)
            .with_attr("from", &bare)
            .with_attr("to", contact.bare().to_string())
            .with_attr("type", action.as_str());
        out.children = el.children;
        self.route(out).await;
        match action {
            // §3.1.5: the new subscriber gets our current presence at once.
            SubscriptionAction::Subscribed => {
                for s in self.sessions_of(&session.account) {
                    let last = s.presence().last.clone();
                    if let Some(p) = last {
                        self.route(presence_to(
                            &p,
                            &s.jid.to_string(),
                            &contact.bare().to_string(),
                        ))
                        .await;
                    }
                }
            }
            // §3.2.2: a cancelled subscriber stops seeing us.
            SubscriptionAction::Unsubscribed if before.state.sub.has_from() => {
                self.send_unavailable_to(&session.account, &contact.bare().to_string())
                    .await
            }
            _ => {}
        }
    }

    /// Unavailable presence from each available resource of `account` to `to`.
    pub(crate) async fn send_unavailable_to(&self, account: &str, to: &str) {
        for s in self.sessions_of(account) {
            if s.is_available() {
                let p = Element::new("presence", ns::CLIENT)
                    .with_attr("from", s.jid.to_string())
                    .with_attr("to", to)
                    .with_attr("type", "unavailable");
                self.route(p).await;
            }
        }
    }

    /// A presence stanza for an existing local account, from a local session or the gateway.
    pub(crate) async fn presence_inbound(&self, account: &str, to: &Jid, el: Element) {
        let Some(from) = el.attr("from").and_then(|f| Jid::parse(f).ok()) else {
            return;
        };
        let type_ = el.attr("type").map(str::to_owned);
        if let Some(action) = type_.as_deref().and_then(SubscriptionAction::from_type) {
            return self
                .subscription_inbound(account, to, &from, el, action)
                .await;
        }
        self.pep_presence(account, &from, &el).await;
        match type_.as_deref() {
            Some("probe") => self.answer_probe(account, to, &from, &el).await,
            None | Some("unavailable") | Some("error") => match to.resource() {
                Some(r) => {
                    if let Some(s) = self.session(account, r) {
                        s.send_element(&el);
                    }
                }
                None if type_.as_deref() != Some("error") => {
                    for s in self.sessions_of(account) {
                        if s.is_available() {
                            s.send_element(&el);
                        }
                    }
                }
                None => {}
            },
            _ => {}
        }
    }

    /// §4.3.2: the presence of every available resource when the prober is subscribed `from`
    /// (`From`, `From + Pending Out`, `Both`), unavailable presence when none is available.
    /// Anyone else gets `unsubscribed` from the bare JID (step 1: a full JID would leak which
    /// resources are online), so that a prober whose server wrongly believes it is subscribed
    /// cancels that subscription (§3.2) instead of probing forever; presence is never revealed.
    async fn answer_probe(&self, account: &str, to: &Jid, from: &Jid, probe: &Element) {
        let key = self.contact_key(from);
        if key == account {
            // The account's own resources see each other through the broadcast (§4.2.2).
            return;
        }
        let item = self.storage.load_roster_item(account, &key).await;
        let subscribed = match item {
            Ok(item) => item.is_some_and(|i| i.state.sub.has_from()),
            Err(e) => {
                // Unknown: neither reveal presence nor make the prober cancel.
                return tracing::warn!("roster read failed answering a probe: {e}");
            }
        };
        let prober = from.bare().to_string();
        if !subscribed {
            return self.refuse_probe(to, probe).await;
        }
        let mut any = false;
        for s in self.sessions_of(account) {
            let last = s.presence().last.clone();
            if let Some(p) = last {
                any = true;
                self.route(presence_to(&p, &s.jid.to_string(), &prober))
                    .await;
            }
        }
        if !any {
            let p = Element::new("presence", ns::CLIENT)
                .with_attr("from", to.bare().to_string())
                .with_attr("to", prober)
                .with_attr("type", "unavailable");
            self.route(p).await;
        }
    }

    /// §4.3.2 step 1: `unsubscribed` from the probed bare JID, for a prober that may not see its
    /// presence or an account that does not exist (the same answer, so a probe cannot tell the
    /// two apart).
    /// The probe's `id` is kept, as in the RFC's example, so the prober can match the answer.
    pub(crate) async fn refuse_probe(&self, probed: &Jid, probe: &Element) {
        let Some(prober) = probe.attr("from").and_then(|f| Jid::parse(f).ok()) else {
            return;
        };
        let mut p = Element::new("presence", ns::CLIENT)
            .with_attr("from", probed.bare().to_string())
            .with_attr("to", prober.bare().to_string())
            .with_attr("type", "unsubscribed");
        if let Some(id) = probe.attr("id") {
            p.set_attr("id", id);
        }
        Box::pin(self.route(p)).await;
    }

    /// §3: a contact's subscription stanza for the user.
    async fn subscription_inbound(
        &self,
        account: &str,
        to: &Jid,
        from: &Jid,
        el: Element,
        action: SubscriptionAction,
    ) {
        let key = self.contact_key(from);
        let owner = account.to_owned();
        let Ok(mut item) = self.entry_or_hidden(&owner, &key).await else {
            return;
        };
        let before = item.clone();
        let t = item.state.inbound(action);
        item.state = t.state;
        let user_bare = to.bare().to_string();
        let contact_bare = from.bare().to_string();
        if t.auto_reply {
            let reply = Element::new("presence", ns::CLIENT)
                .with_attr("from", &user_bare)
                .with_attr("to", &contact_bare)
                .with_attr("type", "subscribed");
            return self.route(reply).await;
        }
        if item != before {
            if let Err(e) = self.storage.store_roster_item(&owner, &item).await {
                return tracing::warn!("roster write failed for a subscription: {e}");
            }
            // A request alone does not change the roster (§3.1.3); answers do.
            if item.in_roster && action != SubscriptionAction::Subscribe {
                self.push_roster(account, item.to_element()).await;
            }
        }
        if !t.forward {
            return;
        }
        // Stamped with bare JIDs (§3.1.3).
        let mut out = el;
        out.set_attr("from", &contact_bare);
        out.set_attr("to", &user_bare);
        for s in self.sessions_of(account) {
            if s.is_available() || action != SubscriptionAction::Subscribe {
                s.send_element(&out);
            }
        }
        // §3.3.3: the contact no longer receives our presence.
        if action == SubscriptionAction::Unsubscribe && before.state.sub.has_from() {
            self.send_unavailable_to(account, &contact_bare).await;
        }
        // §3.1.5 on the contact's side: once subscribed, the user learns the contact's
        // presence from the contact's server, which sends it after approving.
    }
}
