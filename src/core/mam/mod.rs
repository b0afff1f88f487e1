//! XEP-0313 Message Archive Management (`urn:xmpp:mam:2`, with `#extended`) for accounts, and
//! the XEP-0359 stanza-ids it hands out.
//!
//! 1. What is archived (§5.1.1, [`archivable`]): every message of type `chat` or `normal` (or
//!    no type) with a `<body/>` (or the XEP-0334 hint `<store/>`) that an account sends or
//!    receives, unless it carries `<no-store/>` or `<no-permanent-store/>`; the account's
//!    preferences (§6: `always`/`never` lists, default `always`, `never` or `roster`) decide
//!    per peer. Incoming messages are archived when they are delivered, to a session or to
//!    offline storage ([`Core::archive_incoming`]); outgoing ones when the client sends them,
//!    to a local or a remote recipient ([`Core::archive_outgoing`]).
//! 2. XEP-0359 §5: an incoming message that is archived gets
//!    `<stanza-id xmlns='urn:xmpp:sid:0' by='user@domain' id='…'/>`, and any stanza-id that
//!    claims to be ours (`by` the account) but arrived from outside is removed first. One that
//!    names a message in the account's archive is ours (a message re-delivered after its
//!    session ended, or from offline storage): it is kept and not archived twice.
//! 3. Queries (§4): `<query queryid>` with the data form fields `with`, `start`, `end`,
//!    `before-id`, `after-id`, `ids` and XEP-0059 paging (`max`, `after`, `before`, an empty
//!    `<before/>` for the last page, `index` for a page at a position, §2.5; `max` 0 for the
//!    count alone, §2.6); each result is a `<message><result queryid id>
//!    <forwarded><delay stamp/>original</forwarded></result></message>`, then the iq result
//!    with `<fin complete?><set><first index/><last/><count/></set></fin>`: the count and
//!    the index are those of the full result set, the form's filters without the paging
//!    ([`store::position`] says what they cost). An id that is not in the archive gets
//!    `<item-not-found/>`. A `get` of `<query/>` returns the form (§4.1.1).
//! 4. Bounds: `archive_retention` and `archive_max_messages` ([`store`]); a page has at most
//!    [`MAX_PAGE`] results, and never more than half the session's queue.
//! 5. Expiry: besides the deletion at each insert, [`sweep_periodically`] deletes every
//!    account's expired messages at start and every `archive_sweep_interval`, in
//!    transactions of [`store::SWEEP_BATCH`] ([`store::sweep_expired`]).

pub mod store;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use self::store::{
    ArchiveId, ArchiveLimits, DefaultMode, NewMessage, Prefs, Query, SweepFrom, With,
};
use super::carbons::NS_HINTS;
use super::stanzas::{iq_result, payload, NS_DELAY};
use super::{Core, SessionHandle};
use crate::jid::Jid;
use crate::xml::error::StanzaErrorCondition;
use crate::xml::{escape_attr, Element, Node};

/// XEP-0313's namespace: queries, results, `<fin/>` and preferences.
pub const NS_MAM: &str = "urn:xmpp:mam:2";
/// The disco feature for XEP-0313's extended query fields, which we take: `before-id`,
/// `after-id` and `ids`.
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0359's namespace, for the `<stanza-id/>` we add to archived messages.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// XEP-0059 result set management, for paging through query results.
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_DATA: &str = "jabber:x:data";
const NS_XDATA_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";
/// Results in a page when the client asks for none.
pub const DEFAULT_PAGE: usize = 50;
/// Most results in one page (a larger `max` is cut to this).
pub const MAX_PAGE: usize = 250;
/// Most JIDs in each preference list.
pub const MAX_PREFS_JIDS: usize = 1000;

/// §5.1.1 and XEP-0334: whether a message goes into the archives at all.
pub fn archivable(el: &Element) -> bool {
    let hint = |name: &str| el.child(name, NS_HINTS).is_some();
    if hint("no-store") || hint("no-permanent-store") {
        return false;
    }
    match el.attr("type") {
        Some("groupchat" | "headline" | "error") => false,
        _ => super::carbons::has_body(el) || hint("store"),
    }
}

/// Why a query or a preferences request is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MamError {
    /// `<bad-request/>`.
    #[error("{0}")]
    BadRequest(String),
    /// `<item-not-found/>`: an id not in the archive.
    #[error("no archived message has the id {0}")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] super::storage::StorageError),
}

fn bad(text: impl Into<String>) -> MamError {
    MamError::BadRequest(text.into())
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An XEP-0082 date-time (`2010-06-07T14:07:02Z`, `…02.123+02:00`) in milliseconds.
fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim();
    let (base, offset_min) = match s.len().checked_sub(6).map(|i| s.split_at(i)) {
        Some((b, o)) if (o.starts_with('+') || o.starts_with('-')) && o.as_bytes()[3] == b':' => {
            let h: i64 = o[1..3].parse().ok()?;
            let m: i64 = o[4..6].parse().ok()?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            (format!("{b}Z"), sign * (h * 60 + m))
        }
        _ => (s.to_owned(), 0),
    };
    let t = humantime::parse_rfc3339_weak(&base).ok()?;
    let ms = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(ms - offset_min * 60_000)
}

pub(crate) fn format_ms(ms: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The stanza as the archive keeps it: self-contained, with `xmlns='jabber:client'`, so that
/// it can be written inside `<forwarded/>` as it is.
pub(crate) fn stored_form(el: &Element) -> Vec<u8> {
    let mut m = el.clone();
    super::carbons::in_client_ns(&mut m);
    let bytes = m.to_bytes();
    // `to_bytes` leaves out the stream namespace on the top element: put it back.
    let name = m.name.len() + 1;
    let mut out = Vec::with_capacity(bytes.len() + 24);
    out.extend_from_slice(&bytes[..name]);
    out.extend_from_slice(b" xmlns='jabber:client'");
    out.extend_from_slice(&bytes[name..]);
    out
}

fn stanza_id(by: &str, id: ArchiveId) -> Element {
    Element::new("stanza-id", NS_SID)
        .with_attr("by", by)
        .with_attr("id", id.to_string())
}

/// Runs [`Core::sweep_archives`] at once and then every `archive_sweep_interval`, until the
/// core shuts down. A failed sweep is logged and tried again at the next interval.
pub(crate) async fn sweep_periodically(core: Arc<Core>) {
    let mut tick = tokio::time::interval(core.config.archive_sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = core.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match core.sweep_archives().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("archive sweep: deleted {n} expired messages")
            }
            Err(e) => tracing::warn!(
                "archive sweep failed (tried again in {:?}): {e}",
                core.config.archive_sweep_interval
            ),
        }
    }
}

impl Core {
    /// One sweep over every account's archive: deletes what `archive_retention` expired,
    /// one [`store::sweep_expired`] transaction per storage call, so that other calls run
    /// between them. Returns how many messages went.
    pub(crate) async fn sweep_archives(&self) -> Result<usize, super::storage::StorageError> {
        let retention_ms =
            i64::try_from(self.config.archive_retention.as_millis()).unwrap_or(i64::MAX);
        let below = store::key_at(now_ms().saturating_sub(retention_ms));
        let mut from = SweepFrom::Start;
        let mut total = 0;
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(total);
            }
            let f = from.clone();
            let step = self
                .storage
                .call(move |c| store::sweep_expired(c, &f, below, store::SWEEP_BATCH))
                .await?;
            total += step.deleted;
            match step.next {
                Some(next) => from = next,
                None => return Ok(total),
            }
        }
    }

    fn archive_limits(&self) -> ArchiveLimits {
        ArchiveLimits {
            retention: self.config.archive_retention,
            max_messages: self.config.archive_max_messages,
        }
    }

    /// Archives `stanza` for `owner` (peer `with`) ([`store::archive_now`]); `None` when the
    /// preferences or a failure say no (a failure is logged: the message is delivered
    /// anyway).
    async fn archive(&self, owner: &str, with: &Jid, stanza: Vec<u8>) -> Option<ArchiveId> {
        let owner = owner.to_owned();
        let with_bare = self.contact_key(with);
        let with_full = with.to_string();
        let limits = self.archive_limits();
        let r = self
            .storage
            .call(move |c| {
                let m = NewMessage {
                    owner: &owner,
                    with_bare: &with_bare,
                    with_full: &with_full,
                    stanza: &stanza,
                };
                store::archive_now(c, &m, &limits, now_ms())
            })
            .await;
        r.unwrap_or_else(|e| {
            tracing::warn!("archiving a message failed: {e}");
            None
        })
    }

    /// A message on its way to `account` (step 2 of the module docs): spoofed stanza-ids
    /// removed, archived and stamped with its stanza-id.
    pub(crate) async fn archive_incoming(&self, account: &str, mut el: Element) -> Element {
        let ours = |c: &Element| {
            c.name == "stanza-id"
                && c.ns == NS_SID
                && c.attr("by")
                    .and_then(|b| Jid::parse(b).ok())
                    .is_some_and(|b| b.is_bare() && self.contact_key(&b) == account)
        };
        let claimed: Vec<Option<ArchiveId>> = el
            .children()
            .filter(|c| ours(c))
            .map(|c| c.attr("id").and_then(ArchiveId::parse))
            .collect();
        if let [Some(id)] = claimed[..] {
            let owner = account.to_owned();
            match self
                .storage
                .call(move |c| store::exists(c, &owner, id))
                .await
            {
                Ok(true) => return el,
                Ok(false) => {}
                Err(e) => tracing::warn!("checking a stanza-id failed: {e}"),
            }
        }
        if !claimed.is_empty() {
            el.children
                .retain(|n| !matches!(n, Node::Element(c) if ours(c)));
        }
        if !archivable(&el) {
            return el;
        }
        let Some(from) = el.attr("from").and_then(|f| Jid::parse(f).ok()) else {
            return el;
        };
        if let Some(id) = self.archive(account, &from, stored_form(&el)).await {
            el.children.push(Node::Element(stanza_id(account, id)));
        }
        el
    }

    /// A message `session` sends: archived in the sender's archive; returns the stanza-id
    /// (for the sent carbons) when it was.
    pub(crate) async fn archive_outgoing(
        &self,
        session: &SessionHandle,
        el: &Element,
    ) -> Option<Element> {
        if !archivable(el) {
            return None;
        }
        let to = Jid::parse(el.attr("to")?).ok()?;
        let id = self.archive(&session.account, &to, stored_form(el)).await?;
        Some(stanza_id(&session.account, id))
    }

    /// A `urn:xmpp:mam:2` iq from the account's own client.
    pub(crate) async fn mam_iq(&self, session: &Arc<SessionHandle>, el: Element) {
        let Some(p) = payload(&el) else { return };
        let done = match (el.attr("type"), p.name.as_str()) {
            (Some("get"), "query") => {
                session.send_element(
                    &iq_result(&el, &session.account)
                        .with_child(Element::new("query", NS_MAM).with_child(query_form())),
                );
                Ok(())
            }
            (Some("set"), "query") => self.mam_query(session, &el).await,
            (Some("get"), "prefs") => self.mam_prefs(session, &el, None).await,
            (Some("set"), "prefs") => match parse_prefs(p) {
                Ok(prefs) => self.mam_prefs(session, &el, Some(prefs)).await,
                Err(e) => Err(e),
            },
            _ => Err(bad(format!(
                "no {} of <{}/> in {NS_MAM}",
                el.attr("type").unwrap_or(""),
                p.name
            ))),
        };
        match done {
            Ok(()) => {}
            Err(MamError::BadRequest(t)) => {
                self.bounce(&el, StanzaErrorCondition::BadRequest, &t).await
            }
            Err(e @ MamError::NotFound(_)) => {
                self.bounce(&el, StanzaErrorCondition::ItemNotFound, &e.to_string())
                    .await
            }
            Err(MamError::Storage(e)) => {
                tracing::warn!("archive query failed: {e}");
                self.storage_failed(&el).await
            }
        }
    }

    /// §6: get (`set` None) or replace the preferences; the answer shows what is stored.
    async fn mam_prefs(
        &self,
        session: &SessionHandle,
        el: &Element,
        set: Option<Prefs>,
    ) -> Result<(), MamError> {
        let owner = session.account.clone();
        let prefs = self
            .storage
            .call(move |c| {
                if let Some(p) = &set {
                    store::set_prefs(c, &owner, p)?;
                }
                store::prefs(c, &owner)
            })
            .await?;
        session.send_element(&iq_result(el, &session.account).with_child(prefs_element(&prefs)));
        Ok(())
    }

    /// §4: one query: the results, then the iq result with `<fin/>`.
    async fn mam_query(&self, session: &SessionHandle, el: &Element) -> Result<(), MamError> {
        let p = payload(el).expect("checked by mam_iq");
        let queryid = p.attr("queryid").map(str::to_owned);
        let cap = MAX_PAGE.min(self.config.session_queue / 2).max(1);
        let (q, check) = self.parse_query(p, cap)?;
        let owner = session.account.clone();
        let oldest = store::key_at(
            now_ms()
                - self
                    .config
                    .archive_retention
                    .as_millis()
                    .min(i64::MAX as u128) as i64,
        );
        let (page, position) = self
            .storage
            .call(move |c| {
                for id in &check {
                    if !store::exists(c, &owner, *id)? {
                        return Ok(Err(*id));
                    }
                }
                let page = store::query(c, &owner, &q, oldest)?;
                let position = store::position(c, &owner, &q, oldest, &page)?;
                Ok(Ok((page, position)))
            })
            .await?
            .map_err(|id| MamError::NotFound(id.to_string()))?;
        let me = &session.account;
        let to = session.jid.to_string();
        for out in result_messages(&to, me, queryid.as_deref(), &page) {
            session.send(Bytes::from(out));
        }
        session.send_element(&iq_result(el, me).with_child(fin(&page, Some(position))));
        Ok(())
    }

    /// The filters and the page of a `<query/>`, and the ids that must exist.
    fn parse_query(&self, p: &Element, cap: usize) -> Result<(Query, Vec<ArchiveId>), MamError> {
        parse_query(p, cap, &|j| self.contact_key(j))
    }
}

/// §4.2: one `<message><result><forwarded/></result></message>` per archived message of the
/// page, `to` the querier `from` the archive's owner; also used by the chat service's room
/// archives.
pub(crate) fn result_messages<'a>(
    to: &str,
    from: &str,
    queryid: Option<&str>,
    page: &'a store::Page,
) -> impl Iterator<Item = Vec<u8>> + 'a {
    let head = format!(
        "<message to='{}' from='{}'><result xmlns='{NS_MAM}'{} id='",
        escape_attr(to),
        escape_attr(from),
        queryid
            .map(|q| format!(" queryid='{}'", escape_attr(q)))
            .unwrap_or_default()
    );
    page.items.iter().map(move |item| {
        let mut out = Vec::with_capacity(head.len() + item.stanza.len() + 160);
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(
            format!(
                "{}'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='{NS_DELAY}' stamp='{}'/>",
                item.id,
                format_ms(store::ms_of(item.id.key))
            )
            .as_bytes(),
        );
        out.extend_from_slice(&item.stanza);
        out.extend_from_slice(b"</forwarded></result></message>");
        out
    })
}

/// §4.3: the `<fin/>` of the iq result that ends a query, with the page's RSM bounds and,
/// when known, its position in the result set (XEP-0059 §2.1: `<first index/>`, `<count/>`).
pub(crate) fn fin(page: &store::Page, position: Option<store::Position>) -> Element {
    let mut set = Element::new("set", NS_RSM);
    if let (Some(first), Some(last)) = (page.items.first(), page.items.last()) {
        let mut f = Element::new("first", NS_RSM).with_text(first.id.to_string());
        if let Some(i) = position.and_then(|p| p.first_index) {
            f.set_attr("index", i.to_string());
        }
        set = set
            .with_child(f)
            .with_child(Element::new("last", NS_RSM).with_text(last.id.to_string()));
    }
    if let Some(count) = position.and_then(|p| p.count) {
        set = set.with_child(Element::new("count", NS_RSM).with_text(count.to_string()));
    }
    let mut fin = Element::new("fin", NS_MAM);
    if page.complete {
        fin.set_attr("complete", "true");
    }
    fin.with_child(set)
}

/// The filters and the page of a `<query/>` (at most `cap` results), and the ids that must
/// exist; `contact_key` is how a `with` JID is keyed in the archive. Shared by accounts'
/// archives and the chat service's room archives.
pub(crate) fn parse_query(
    p: &Element,
    cap: usize,
    contact_key: &dyn Fn(&Jid) -> String,
) -> Result<(Query, Vec<ArchiveId>), MamError> {
    let mut q = Query {
        max: DEFAULT_PAGE.min(cap),
        ..Query::default()
    };
    let mut check = Vec::new();
    let id_of = |v: &str, check: &mut Vec<ArchiveId>| {
        let id = ArchiveId::parse(v.trim()).ok_or_else(|| MamError::NotFound(v.to_owned()))?;
        check.push(id);
        Ok::<i64, MamError>(id.key)
    };
    if let Some(x) = p.child("x", NS_DATA) {
        for f in x
            .children()
            .filter(|f| f.name == "field" && f.ns == NS_DATA)
        {
            let var = f.attr("var").unwrap_or("");
            let values: Vec<String> = f
                .children()
                .filter(|v| v.name == "value" && v.ns == NS_DATA)
                .map(Element::text)
                .collect();
            if values.is_empty() {
                // A field without a value filters nothing (slixmpp sends such fields).
                continue;
            }
            let one = || -> Result<&str, MamError> {
                match &values[..] {
                    [v] => Ok(v.as_str()),
                    _ => Err(bad(format!("the field {var} takes one value"))),
                }
            };
            match var {
                "FORM_TYPE" => {
                    if one()? != NS_MAM {
                        return Err(bad(format!("FORM_TYPE must be {NS_MAM}")));
                    }
                }
                "with" => {
                    let j = Jid::parse(one()?.trim())
                        .map_err(|_| bad("the 'with' field is not a JID"))?;
                    q.with = Some(match j.resource() {
                        None => With::Bare(contact_key(&j)),
                        Some(_) => With::Full {
                            bare: contact_key(&j),
                            full: j.to_string(),
                        },
                    });
                }
                "start" => {
                    let ms = parse_datetime(one()?)
                        .ok_or_else(|| bad("'start' is not an XEP-0082 date-time"))?;
                    q.from_key = Some(store::key_at(ms));
                }
                "end" => {
                    let ms = parse_datetime(one()?)
                        .ok_or_else(|| bad("'end' is not an XEP-0082 date-time"))?;
                    q.to_key = Some(store::key_at(ms + 1) - 1);
                }
                "after-id" => {
                    let k = id_of(one()?, &mut check)?;
                    q.after = Some(q.after.map_or(k, |a| a.max(k)));
                }
                "before-id" => {
                    let k = id_of(one()?, &mut check)?;
                    q.before = Some(q.before.map_or(k, |b| b.min(k)));
                }
                "ids" => {
                    if values.len() > cap {
                        return Err(bad(format!("at most {cap} ids in one query")));
                    }
                    // Ids not in the archive are left out of the results.
                    q.ids = Some(
                        values
                            .iter()
                            .filter_map(|v| ArchiveId::parse(v.trim()))
                            .collect(),
                    );
                }
                other => return Err(bad(format!("the field '{other}' is not supported"))),
            }
        }
    }
    if let Some(set) = p.child("set", NS_RSM) {
        let mut by_id = false;
        for c in set.children().filter(|c| c.ns == NS_RSM) {
            let text = c.text();
            match c.name.as_str() {
                "max" => {
                    let n: usize = text
                        .trim()
                        .parse()
                        .map_err(|_| bad("RSM <max/> is not a number"))?;
                    q.max = n.min(cap);
                }
                "after" => {
                    by_id = true;
                    q.rsm_after = Some(id_of(&text, &mut check)?);
                }
                "before" => {
                    by_id = true;
                    q.backwards = true;
                    if !text.trim().is_empty() {
                        q.rsm_before = Some(id_of(&text, &mut check)?);
                    }
                }
                "index" => {
                    let i: usize = text
                        .trim()
                        .parse()
                        .map_err(|_| bad("RSM <index/> is not a number"))?;
                    q.index = Some(i);
                }
                _ => {}
            }
        }
        if by_id && q.index.is_some() {
            return Err(bad(
                "RSM <index/> chooses the page on its own: leave out <after/> and <before/>",
            ));
        }
    }
    Ok((q, check))
}

/// §4.1.1: the query form.
pub(crate) fn query_form() -> Element {
    let field = |var: &str, type_: &str| {
        Element::new("field", NS_DATA)
            .with_attr("var", var)
            .with_attr("type", type_)
    };
    Element::new("x", NS_DATA)
        .with_attr("type", "form")
        .with_child(
            field("FORM_TYPE", "hidden")
                .with_child(Element::new("value", NS_DATA).with_text(NS_MAM)),
        )
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"))
        .with_child(field("before-id", "text-single"))
        .with_child(field("after-id", "text-single"))
        .with_child(
            field("ids", "list-multi").with_child(
                Element::new("validate", NS_XDATA_VALIDATE)
                    .with_attr("datatype", "xs:string")
                    .with_child(Element::new("open", NS_XDATA_VALIDATE)),
            ),
        )
}

fn prefs_element(p: &Prefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        jids.iter().fold(Element::new(name, NS_MAM), |l, j| {
            l.with_child(Element::new("jid", NS_MAM).with_text(j))
        })
    };
    Element::new("prefs", NS_MAM)
        .with_attr("default", p.default.as_str())
        .with_child(list("always", &p.always))
        .with_child(list("never", &p.never))
}

fn parse_prefs(p: &Element) -> Result<Prefs, MamError> {
    let default = p
        .attr("default")
        .and_then(DefaultMode::from_name)
        .ok_or_else(|| bad("<prefs/> needs default='always', 'never' or 'roster'"))?;
    let list = |name: &str| -> Result<Vec<String>, MamError> {
        let jids: Vec<String> = p
            .child(name, NS_MAM)
            .map(|l| {
                l.children()
                    .filter(|j| j.name == "jid")
                    .map(|j| j.text().trim().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if jids.len() > MAX_PREFS_JIDS {
            return Err(bad(format!("at most {MAX_PREFS_JIDS} JIDs in <{name}/>")));
        }
        jids.iter()
            .map(|j| {
                Jid::parse(j)
                    .map(|j| j.to_string())
                    .map_err(|_| bad(format!("'{j}' in <{name}/> is not a JID")))
            })
            .collect()
    };
    Ok(Prefs {
        default,
        always: list("always")?,
        never: list("never")?,
    })
}

#[cfg(test)]
mod tests;
