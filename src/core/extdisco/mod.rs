//! XEP-0215 External Service Discovery (`urn:xmpp:extdisco:2`) for the STUN and TURN servers
//! of `[[core.stun]]` and `[[core.turn]]`, asked of our domain.
//!
//! 1. `<services/>` get (§3.2): every configured service (only those of the `type` asked
//!    for, when one is), with host, port, transport and type.
//! 2. A TURN service with a `secret` carries credentials for the asking account, per coturn's
//!    `use-auth-secret` REST scheme: `username` = `EXPIRY:user@domain` (EXPIRY in Unix
//!    seconds, now + `turn_credentials_ttl`), `password` = base64(HMAC-SHA1(secret,
//!    username)), and `expires` (XEP-0082 date-time). coturn checks them without asking us.
//! 3. `<credentials/>` get (§3.3) for one service by host (and type): that service with fresh
//!    credentials; `<item-not-found/>` for a service not configured.
//!
//! Only our own signed-in accounts are answered: from anyone else (a remote server's user)
//! the request is `<forbidden/>`, so the relay is not open to the federation.

#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::config::ExternalService;
use super::stanzas::{iq_result, payload};
use super::Core;
use crate::jid::Jid;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::Element;

pub const NS_EXTDISCO: &str = "urn:xmpp:extdisco:2";

/// Step 2: the TURN REST credentials of `user` valid until `expiry` (Unix seconds).
pub(crate) fn turn_credentials(secret: &str, user: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    (username, B64.encode(mac.finalize().into_bytes()))
}

impl Core {
    /// Every configured service with its table (`stun`, `turn`).
    fn external_services(&self) -> impl Iterator<Item = (&'static str, &ExternalService)> {
        let stun = self.config.stun.iter().map(|s| ("stun", s));
        let turn = self.config.turn.iter().map(|s| ("turn", s));
        stun.chain(turn)
    }

    /// One `<service/>`, with credentials for `user` when it has a secret.
    fn service_element(&self, table: &str, svc: &ExternalService, user: &str) -> Element {
        let mut el = Element::new("service", NS_EXTDISCO)
            .with_attr("host", &svc.host)
            .with_attr("port", svc.port_for(table).to_string())
            .with_attr("transport", &svc.transport)
            .with_attr("type", svc.kind(table));
        if let Some(secret) = &svc.secret {
            let until = SystemTime::now() + self.config.turn_credentials_ttl;
            let expiry = until
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs();
            let (username, password) = turn_credentials(secret.expose(), user, expiry);
            let expires =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(expiry));
            el = el
                .with_attr("username", username)
                .with_attr("password", password)
                .with_attr("expires", expires.to_string())
                .with_attr("restricted", "1");
        }
        el
    }

    /// The account a request comes from, when it is one of ours (the only ones answered).
    fn extdisco_user(&self, from: Option<&Jid>) -> Option<String> {
        let f = from?;
        (f.node().is_some() && self.domains.is_local(f.domain())).then(|| self.contact_key(f))
    }

    /// Steps 1–3: an `urn:xmpp:extdisco:2` get to our domain `domain`.
    pub(crate) async fn extdisco_iq(&self, domain: &str, el: Element) {
        let Some(p) = payload(&el) else { return };
        let from = el.attr("from").and_then(|f| Jid::parse(f).ok());
        let user = match self.extdisco_user(from.as_ref()) {
            Some(u) => u,
            None => {
                return self
                    .bounce(
                        &el,
                        StanzaErrorCondition::Forbidden,
                        "external services are for this server's own accounts",
                    )
                    .await
            }
        };
        let (name, asked) = match (el.attr("type"), p.name.as_str()) {
            (Some("get"), "services") => ("services", p),
            (Some("get"), "credentials") => match p.child("service", NS_EXTDISCO) {
                Some(s) => ("credentials", s),
                None => {
                    return self
                        .bounce(
                            &el,
                            StanzaErrorCondition::BadRequest,
                            "credentials are asked for one <service/>",
                        )
                        .await
                }
            },
            _ => return self.unsupported_iq(&el).await,
        };
        let type_ = asked.attr("type");
        let host = (name == "credentials")
            .then(|| asked.attr("host"))
            .flatten();
        let mut q = Element::new(name, NS_EXTDISCO);
        for (table, svc) in self.external_services() {
            if type_.is_some_and(|t| t != svc.kind(table)) || host.is_some_and(|h| h != svc.host) {
                continue;
            }
            q = q.with_child(self.service_element(table, svc, &user));
        }
        if name == "credentials" && q.children().next().is_none() {
            return self
                .bounce(
                    &el,
                    StanzaErrorCondition::ItemNotFound,
                    "no such service is configured",
                )
                .await;
        }
        Box::pin(self.route(iq_result(&el, domain).with_child(q))).await
    }
}
