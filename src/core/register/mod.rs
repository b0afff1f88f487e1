//! XEP-0077 In-Band Registration (`jabber:iq:register`), with XEP-0401-style invitations.
//!
//! Signed in (always available):
//! 1. A get says the account is registered, with its username.
//! 2. A set with `<username/>` (the account's own) and `<password/>` changes the password:
//!    new salted SCRAM keys with `scram_iterations`; the account's sessions stay.
//! 3. A set with `<remove/>` deletes the account and everything stored for it; the result is
//!    written, then every session of the account ends with `<not-authorized/>`.
//!
//! Before authentication, as `registration` says (default `closed`: none of this, and an iq
//! there ends the stream as before):
//! 4. `open` and `invite`: `<register xmlns='http://jabber.org/features/iq-register'/>` in the
//!    features after TLS; a get returns the form (username, password).
//! 5. A set creates the account: `<conflict/>` if it exists, `<not-acceptable/>` for a
//!    username that is not a valid localpart or an empty password, `<resource-constraint/>`
//!    past `registration_per_ip_per_hour` well-formed attempts from one client address.
//! 6. `invite`: the set needs a token first, `<preauth xmlns='urn:xmpp:pars:0' token='...'/>`
//!    in an iq set (an unknown token is `<item-not-found/>`, none is `<not-allowed/>`). Tokens
//!    come from `fedgate core user invite`, which prints `xmpp:DOMAIN?register;preauth=TOKEN`;
//!    each is for one domain and is used up by the account it creates.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::storage::{params, Db, SqlError};

use super::config::Registration;
use super::sasl::Credentials;
use super::stanzas::{iq_result, payload};
use super::{storage, Core, SessionHandle};
use crate::connection::{Connection, ReadError};
use crate::jid::Jid;
use crate::xml::error::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::stanza::{Kind, Stanza};
use crate::xml::{ns, Element};

pub const NS_REGISTER: &str = "jabber:iq:register";
pub const NS_PARS: &str = "urn:xmpp:pars:0";
/// The stream feature of step 4.
pub const REGISTER_FEATURE: &str = "<register xmlns='http://jabber.org/features/iq-register'/>";

/// Most client addresses remembered by the rate limit at once; past it, registrations wait
/// until the oldest entries are an hour old.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Registrations per client address in the last hour (step 5).
#[derive(Default)]
pub(crate) struct RateLimit {
    by_ip: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl RateLimit {
    /// Counts a registration from `ip` if fewer than `per_hour` happened in the last hour.
    fn try_take(&self, ip: IpAddr, per_hour: u32, now: Instant) -> bool {
        let hour = Duration::from_secs(3600);
        let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= hour)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
        if !map.contains_key(&ip) && map.len() >= MAX_TRACKED_ADDRESSES {
            return false;
        }
        let times = map.entry(ip).or_default();
        if times.len() >= per_hour as usize {
            return false;
        }
        times.push_back(now);
        true
    }
}

/// What one unauthenticated stream established on the way to a registration.
#[derive(Default)]
pub(crate) struct Pending {
    /// The invitation token the client presented (step 6), checked to exist.
    token: Option<String>,
}

// ---- storage --------------------------------------------------------------------------------

/// Stores a new invitation for `domain`.
pub(crate) fn create_invite(conn: &Db, token: &str, domain: &str) -> Result<(), SqlError> {
    conn.execute(
        "INSERT INTO invites (token, domain, created) VALUES (?1, ?2, ?3)",
        params![token, domain, storage::now()],
    )?;
    Ok(())
}

fn invite_exists(conn: &Db, token: &str, domain: &str) -> Result<bool, SqlError> {
    conn.query_row(
        "SELECT COUNT(*) FROM invites WHERE token = ?1 AND domain = ?2",
        params![token, domain],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// What creating an account came to.
#[derive(Debug, PartialEq, Eq)]
enum Created {
    Yes,
    Exists,
    /// The invitation was used up meanwhile.
    NoInvite,
}

/// Creates the account, using up `token` in the same transaction when given.
fn create(
    conn: &Db,
    local: &str,
    domain: &str,
    creds: &Credentials,
    token: Option<&str>,
) -> Result<Created, SqlError> {
    let tx = conn.transaction()?;
    if let Some(t) = token {
        let n = tx.execute(
            "DELETE FROM invites WHERE token = ?1 AND domain = ?2",
            params![t, domain],
        )?;
        if n == 0 {
            return Ok(Created::NoInvite);
        }
    }
    if !storage::create_account(&tx, local, domain, creds)? {
        return Ok(Created::Exists); // the token stays: rolled back
    }
    tx.commit()?;
    Ok(Created::Yes)
}

/// The registration form (step 4).
fn form() -> Element {
    Element::new("query", NS_REGISTER)
        .with_child(
            Element::new("instructions", NS_REGISTER)
                .with_text("Choose a username and password for this server."),
        )
        .with_child(Element::new("username", NS_REGISTER))
        .with_child(Element::new("password", NS_REGISTER))
}

/// Writes `el`'s error reply on an unauthenticated stream.
async fn refuse(
    conn: &mut Connection,
    el: &Element,
    cond: StanzaErrorCondition,
    text: &str,
) -> Result<(), ReadError> {
    if let Some(e) = super::error_reply(el, cond, text) {
        conn.send(&e.to_bytes());
        conn.flush().await?;
    }
    Ok(())
}

/// Steps 4–6: an iq before authentication on a stream for `domain`. `Ok(false)`: not a
/// registration iq (or registration is closed), left to the caller.
pub(crate) async fn negotiation_iq(
    conn: &mut Connection,
    core: &Core,
    domain: &str,
    pending: &mut Pending,
    s: &Stanza,
) -> Result<bool, ReadError> {
    let mode = core.config.registration;
    if mode == Registration::Closed || s.kind() != Kind::Iq {
        return Ok(false);
    }
    let el = s.element()?;
    let Some(p) = payload(&el) else {
        return Ok(false);
    };
    let canonical = core.domains.canonical(domain).unwrap_or(domain).to_owned();
    let mut ok = Element::new("iq", ns::CLIENT).with_attr("type", "result");
    if let Some(id) = el.attr("id") {
        ok.set_attr("id", id);
    }
    match (el.attr("type"), p.name.as_str(), p.ns.as_str()) {
        (Some("get"), "query", NS_REGISTER) => {
            conn.send(&ok.with_child(form()).to_bytes());
            conn.flush().await?;
        }
        (Some("set"), "preauth", NS_PARS) => {
            let token = p.attr("token").unwrap_or_default().to_owned();
            let (t, d) = (token.clone(), canonical.clone());
            match core.storage.call(move |c| invite_exists(c, &t, &d)).await {
                Ok(true) => {
                    pending.token = Some(token);
                    conn.send(&ok.to_bytes());
                    conn.flush().await?;
                }
                Ok(false) => {
                    refuse(
                        conn,
                        &el,
                        StanzaErrorCondition::ItemNotFound,
                        "no such invitation",
                    )
                    .await?
                }
                Err(e) => {
                    tracing::warn!("invitation lookup failed: {e}");
                    refuse(
                        conn,
                        &el,
                        StanzaErrorCondition::InternalServerError,
                        "storage failure",
                    )
                    .await?
                }
            }
        }
        (Some("set"), "query", NS_REGISTER) => {
            let (cond, text) = match register(conn.peer.ip(), core, &canonical, pending, p).await {
                Ok(()) => {
                    conn.send(&ok.to_bytes());
                    conn.flush().await?;
                    return Ok(true);
                }
                Err(refusal) => refusal,
            };
            refuse(conn, &el, cond, &text).await?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Step 5 (and 6's check): creates the account a registration set asks for.
async fn register(
    ip: IpAddr,
    core: &Core,
    domain: &str,
    pending: &mut Pending,
    q: &Element,
) -> Result<(), (StanzaErrorCondition, String)> {
    let mode = core.config.registration;
    if mode == Registration::Invite && pending.token.is_none() {
        return Err((
            StanzaErrorCondition::NotAllowed,
            "registration here needs an invitation (XEP-0401 preauth)".into(),
        ));
    }
    let username = q
        .child("username", NS_REGISTER)
        .map(Element::text)
        .unwrap_or_default();
    let password = q
        .child("password", NS_REGISTER)
        .map(Element::text)
        .unwrap_or_default();
    let local = match Jid::parse(&format!("{}@{domain}", username.trim())) {
        Ok(j) if j.is_bare() && j.node().is_some_and(|n| !n.is_empty()) => {
            j.node().unwrap_or_default().to_owned()
        }
        _ => {
            return Err((
                StanzaErrorCondition::NotAcceptable,
                format!("`{username}` cannot be a username here"),
            ))
        }
    };
    if password.is_empty() {
        return Err((
            StanzaErrorCondition::NotAcceptable,
            "the password is empty".into(),
        ));
    }
    let per_hour = core.config.registration_per_ip_per_hour;
    if !core.registrations.try_take(ip, per_hour, Instant::now()) {
        return Err((
            StanzaErrorCondition::ResourceConstraint,
            format!("at most {per_hour} registrations an hour from one address"),
        ));
    }
    let iterations = core.config.scram_iterations;
    let creds = tokio::task::spawn_blocking(move || Credentials::derive(&password, iterations))
        .await
        .map_err(|_| {
            (
                StanzaErrorCondition::InternalServerError,
                "internal failure".to_owned(),
            )
        })?;
    let token = pending.token.clone();
    let (l, d) = (local.clone(), domain.to_owned());
    let created = core
        .storage
        .call(move |c| create(c, &l, &d, &creds, token.as_deref()))
        .await
        .map_err(|e| {
            tracing::warn!("account creation failed: {e}");
            (
                StanzaErrorCondition::InternalServerError,
                "storage failure".to_owned(),
            )
        })?;
    match created {
        Created::Yes => {
            pending.token = None;
            tracing::info!(%ip, user = %format!("{local}@{domain}"), "c2s account registered");
            Ok(())
        }
        Created::Exists => Err((
            StanzaErrorCondition::Conflict,
            format!("{local}@{domain} exists already"),
        )),
        Created::NoInvite => {
            pending.token = None;
            Err((
                StanzaErrorCondition::ItemNotFound,
                "the invitation was used already".into(),
            ))
        }
    }
}

impl Core {
    /// Steps 1–3: a `jabber:iq:register` iq from a signed-in client.
    pub(crate) async fn register_iq(&self, session: &Arc<SessionHandle>, el: Element) {
        let me = session.jid.bare().to_string();
        let (local, domain) = session
            .account
            .split_once('@')
            .map(|(l, d)| (l.to_owned(), d.to_owned()))
            .unwrap_or_default();
        let Some(q) = payload(&el) else { return };
        match el.attr("type") {
            Some("get") => {
                let q = Element::new("query", NS_REGISTER)
                    .with_child(Element::new("registered", NS_REGISTER))
                    .with_child(Element::new("username", NS_REGISTER).with_text(&local))
                    .with_child(Element::new("password", NS_REGISTER));
                session.send_element(&iq_result(&el, &me).with_child(q));
            }
            Some("set") if q.child("remove", NS_REGISTER).is_some() => {
                let (l, d) = (local.clone(), domain.clone());
                match self
                    .storage
                    .call(move |c| storage::remove_account(c, &l, &d))
                    .await
                {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("account removal failed: {e}");
                        return self.storage_failed(&el).await;
                    }
                }
                self.blocklists.forget(&session.account);
                session.send_element(&iq_result(&el, &me));
                tracing::info!(user = %session.account, "c2s account removed by its owner");
                let sessions = self.sessions_of(&session.account);
                let asking = session.clone();
                tokio::spawn(async move {
                    // The result first: the writer has taken it once the queue is empty again.
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while asking.tx.capacity() < asking.tx.max_capacity()
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    for s in sessions {
                        s.kick_with(
                            StreamErrorCondition::NotAuthorized,
                            "the account was removed",
                        );
                    }
                });
            }
            Some("set") => {
                let username = q.child("username", NS_REGISTER).map(Element::text);
                let password = q
                    .child("password", NS_REGISTER)
                    .map(Element::text)
                    .unwrap_or_default();
                if username.as_deref().map(str::trim) != Some(local.as_str()) {
                    return self
                        .bounce(
                            &el,
                            StanzaErrorCondition::NotAllowed,
                            "a signed-in client changes only its own account's password",
                        )
                        .await;
                }
                if password.is_empty() {
                    return self
                        .bounce(
                            &el,
                            StanzaErrorCondition::NotAcceptable,
                            "the password is empty",
                        )
                        .await;
                }
                let iterations = self.config.scram_iterations;
                let Ok(creds) =
                    tokio::task::spawn_blocking(move || Credentials::derive(&password, iterations))
                        .await
                else {
                    return self.storage_failed(&el).await;
                };
                match self
                    .storage
                    .call(move |c| storage::set_credentials(c, &local, &domain, &creds))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(user = %session.account, "c2s password changed in-band");
                        session.send_element(&iq_result(&el, &me))
                    }
                    Err(e) => {
                        tracing::warn!("password change failed: {e}");
                        self.storage_failed(&el).await
                    }
                }
            }
            _ => {}
        }
    }
}
