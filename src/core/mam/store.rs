//! The archive's SQL (XEP-0313 storage), on the connection of [`crate::core::storage`].
//!
//! # Keys and ids
//! Each message has an integer key, its `INTEGER PRIMARY KEY`: the archive time in
//! milliseconds shifted left by [`KEY_SHIFT`] bits, plus a counter, so that keys grow with
//! time and a time filter (`start`, `end`) is a key range ([`key_at`]). Kept strictly
//! increasing: a clock that steps back or many messages in one millisecond only bump the
//! counter. The public id ([`ArchiveId`], the XEP-0359 stanza-id) is the key and a random
//! 64-bit nonce stored with the row, as 32 hex digits: ids sort like keys (time order),
//! looking one up is a primary-key probe plus the nonce check, and an id cannot be guessed
//! from another (1 in 2^64).
//!
//! # Indexes
//! `(owner, key)` serves a query on one account, `(owner, with_bare, key)` one with a `with`
//! filter; every query is a range scan of one of them, in key order, that stops after one
//! row more than the page (which says whether the page is complete), so a page costs the same
//! at the start or end of a million-message archive.
//!
//! # Bounds
//! `archive_owners` counts each account's messages, so the size limit costs no `COUNT(*)`:
//! an insert over [`ArchiveLimits::max_messages`] deletes the oldest. Expired messages
//! ([`ArchiveLimits::retention`]) are deleted at the account's next insert, and queries never
//! return them. Either deletion takes at most [`PRUNE_BATCH`] rows per insert. An account
//! that gets no more messages is cleaned by the periodic sweep ([`sweep_expired`]), in
//! transactions of at most [`SWEEP_BATCH`] deletions, so that a year's worth expiring at once
//! never holds the database for long.

use std::time::Duration;

use crate::core::storage::{params, Db, OptionalExtension, SqlError, ToSql, Value};

/// Bits of the key below the millisecond timestamp.
pub const KEY_SHIFT: u32 = 12;
/// Most rows one insert deletes for the retention or the size limit.
pub const PRUNE_BATCH: usize = 64;

/// Most rows one transaction of the expiry sweep deletes.
pub const SWEEP_BATCH: usize = 500;

/// The archive tables, for the storage migration.
pub const SCHEMA: &str = "CREATE TABLE archive (
        key INTEGER PRIMARY KEY,
        nonce INTEGER NOT NULL,
        owner TEXT NOT NULL,
        with_bare TEXT NOT NULL,
        with_full TEXT NOT NULL,
        stanza BLOB NOT NULL
    );
    CREATE INDEX archive_owner ON archive (owner, key);
    CREATE INDEX archive_with ON archive (owner, with_bare, key);
    CREATE TABLE archive_owners (
        owner TEXT PRIMARY KEY,
        messages INTEGER NOT NULL
    );
    CREATE TABLE archive_prefs (
        owner TEXT PRIMARY KEY,
        default_mode TEXT NOT NULL,
        always TEXT NOT NULL DEFAULT '',
        never TEXT NOT NULL DEFAULT ''
    );";

/// How much an account's archive keeps.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    /// Messages older than this are deleted and never returned.
    pub retention: Duration,
    /// Most messages per account; the oldest go first.
    pub max_messages: usize,
}

/// The first key of millisecond `ms` (keys at or after it were archived at `ms` or later).
pub fn key_at(ms: i64) -> i64 {
    ms.max(0) << KEY_SHIFT
}

/// When the message with this key was archived, in milliseconds since the epoch.
pub fn ms_of(key: i64) -> i64 {
    key >> KEY_SHIFT
}

/// A message's public id: its key and nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveId {
    /// The row's key: archive time and counter (module docs), so ids sort in time order.
    pub key: i64,
    /// Random, stored with the row, so that an id cannot be guessed from another.
    pub nonce: i64,
}

impl ArchiveId {
    /// Reads an id written by [`ArchiveId::fmt`]; `None` for anything else.
    pub fn parse(s: &str) -> Option<ArchiveId> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let key = u64::from_str_radix(&s[..16], 16).ok()? as i64;
        let nonce = u64::from_str_radix(&s[16..], 16).ok()? as i64;
        Some(ArchiveId { key, nonce })
    }
}

impl std::fmt::Display for ArchiveId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.key as u64, self.nonce as u64)
    }
}

/// XEP-0313 §6 archiving preferences: the default for a peer on neither list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultMode {
    /// Archive messages with every peer.
    Always,
    /// Archive nothing.
    Never,
    /// Only peers in the account's roster.
    Roster,
}

impl DefaultMode {
    /// The `default` attribute's value, as stored and sent in `<prefs/>`.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultMode::Always => "always",
            DefaultMode::Never => "never",
            DefaultMode::Roster => "roster",
        }
    }

    /// Reads a `default` attribute's value; `None` for anything XEP-0313 does not define.
    pub fn from_name(s: &str) -> Option<DefaultMode> {
        match s {
            "always" => Some(DefaultMode::Always),
            "never" => Some(DefaultMode::Never),
            "roster" => Some(DefaultMode::Roster),
            _ => None,
        }
    }
}

/// An account's preferences; without any stored, everything is archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefs {
    /// For peers on neither list.
    pub default: DefaultMode,
    /// JIDs always archived (a bare JID covers its resources).
    pub always: Vec<String>,
    /// JIDs never archived; wins over `always`.
    pub never: Vec<String>,
}

impl Default for Prefs {
    fn default() -> Self {
        Prefs {
            default: DefaultMode::Always,
            always: Vec::new(),
            never: Vec::new(),
        }
    }
}

fn split_jids(s: String) -> Vec<String> {
    s.split('\n')
        .filter(|j| !j.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `owner`'s stored preferences, or the default (archive everything) if none are stored.
pub fn prefs(conn: &Db, owner: &str) -> Result<Prefs, SqlError> {
    let p = conn
        .query_row(
            "SELECT default_mode, always, never FROM archive_prefs WHERE owner = ?1",
            params![owner],
            |r| {
                Ok(Prefs {
                    default: DefaultMode::from_name(&r.get::<_, String>(0)?)
                        .unwrap_or(DefaultMode::Always),
                    always: split_jids(r.get(1)?),
                    never: split_jids(r.get(2)?),
                })
            },
        )
        .optional()?;
    Ok(p.unwrap_or_default())
}

/// Replaces `owner`'s preferences.
pub fn set_prefs(conn: &Db, owner: &str, p: &Prefs) -> Result<(), SqlError> {
    conn.execute(
        "INSERT INTO archive_prefs (owner, default_mode, always, never) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (owner) DO UPDATE SET default_mode = ?2, always = ?3, never = ?4",
        params![
            owner,
            p.default.as_str(),
            p.always.join("\n"),
            p.never.join("\n")
        ],
    )?;
    Ok(())
}

/// One message to archive for `owner`, exchanged with `with_full` (bare: `with_bare`).
pub struct NewMessage<'a> {
    /// The bare JID of the account whose archive gets the message.
    pub owner: &'a str,
    /// The peer's bare JID, what a bare `with` filter matches.
    pub with_bare: &'a str,
    /// The peer's JID as it appeared on the stanza (full if it had a resource).
    pub with_full: &'a str,
    /// The stanza as stored and returned, self-contained (with its `xmlns`).
    pub stanza: &'a [u8],
}

/// Whether the preferences let a message with this peer into the archive (§6.1).
fn wanted(conn: &Db, m: &NewMessage<'_>) -> Result<bool, SqlError> {
    let p = prefs(conn, m.owner)?;
    let listed = |l: &[String]| l.iter().any(|j| j == m.with_bare || j == m.with_full);
    if listed(&p.never) {
        return Ok(false);
    }
    if listed(&p.always) {
        return Ok(true);
    }
    Ok(match p.default {
        DefaultMode::Always => true,
        DefaultMode::Never => false,
        DefaultMode::Roster => in_roster(conn, m.owner, m.with_bare)?,
    })
}

/// Whether `contact` is an item of `owner`'s roster (a hidden entry is not).
fn in_roster(conn: &Db, owner: &str, contact: &str) -> Result<bool, SqlError> {
    conn.query_row(
        "SELECT in_roster FROM roster WHERE owner = ?1 AND contact = ?2",
        params![owner, contact],
        |r| r.get(0),
    )
    .optional()
    .map(|o| o.unwrap_or(false))
}

/// Archives a message at `now_ms` unless the owner's preferences say no (`Ok(None)`), then
/// enforces the limits for that owner. Run it in a transaction (it writes several tables).
pub fn archive(
    conn: &Db,
    m: &NewMessage<'_>,
    limits: &ArchiveLimits,
    now_ms: i64,
) -> Result<Option<ArchiveId>, SqlError> {
    if !wanted(conn, m)? {
        return Ok(None);
    }
    let last: Option<i64> = conn.query_row("SELECT MAX(key) FROM archive", &[], |r| r.get(0))?;
    let key = key_at(now_ms).max(last.map_or(0, |k| k + 1));
    let id = ArchiveId {
        key,
        nonce: rand::random::<i64>(),
    };
    conn.execute(
        "INSERT INTO archive (key, nonce, owner, with_bare, with_full, stanza)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id.key,
            id.nonce,
            m.owner,
            m.with_bare,
            m.with_full,
            m.stanza
        ],
    )?;
    let mut count: i64 = conn.query_row(
        "INSERT INTO archive_owners (owner, messages) VALUES (?1, 1)
         ON CONFLICT (owner) DO UPDATE SET messages = archive_owners.messages + 1 RETURNING messages",
        params![m.owner],
        |r| r.get(0),
    )?;
    let retention_ms = i64::try_from(limits.retention.as_millis()).unwrap_or(i64::MAX);
    let expired = delete_oldest(
        conn,
        m.owner,
        key_at(now_ms.saturating_sub(retention_ms)),
        PRUNE_BATCH,
    )?;
    count -= expired as i64;
    let over = (count - limits.max_messages as i64).max(0) as usize;
    let dropped = if over > 0 {
        delete_oldest(conn, m.owner, i64::MAX, over.min(PRUNE_BATCH))?
    } else {
        0
    };
    if expired + dropped > 0 {
        conn.execute(
            "UPDATE archive_owners SET messages = messages - ?2 WHERE owner = ?1",
            params![m.owner, (expired + dropped) as i64],
        )?;
    }
    Ok(Some(id))
}

/// [`archive`] in a transaction of its own, as the core runs it for each message.
///
/// The commit does not wait for the disk (`synchronous=NORMAL` for this one transaction; the
/// connection's `FULL` is restored after it): with `FULL`, two fsyncs per message (sender and
/// recipient) would bound the core to a few hundred messages a second on an ordinary disk.
/// In WAL mode this loses no archived message when the process crashes, only those of the
/// last moments before a power loss or a kernel crash, and never corrupts the file; the next
/// `FULL` commit (any other write of the core) makes them durable too.
pub fn archive_now(
    conn: &Db,
    m: &NewMessage<'_>,
    limits: &ArchiveLimits,
    now_ms: i64,
) -> Result<Option<ArchiveId>, SqlError> {
    conn.with_relaxed_durability(|conn| {
        let tx = conn.transaction()?;
        let id = archive(&tx, m, limits, now_ms)?;
        tx.commit()?;
        Ok(id)
    })
}

/// Deletes up to `limit` of `owner`'s oldest messages with keys below `below`.
fn delete_oldest(conn: &Db, owner: &str, below: i64, limit: usize) -> Result<usize, SqlError> {
    conn.execute(
        "DELETE FROM archive WHERE key IN
           (SELECT key FROM archive WHERE owner = ?1 AND key < ?2 ORDER BY key LIMIT ?3)",
        params![owner, below, limit as i64],
    )
}

/// Whether `id` is one of `owner`'s archived messages.
pub fn exists(conn: &Db, owner: &str, id: ArchiveId) -> Result<bool, SqlError> {
    conn.query_row(
        "SELECT 1 FROM archive WHERE key = ?1 AND owner = ?2 AND nonce = ?3",
        params![id.key, owner, id.nonce],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
}

/// Deletes an account's archive and preferences (the account is removed).
pub fn remove_owner(conn: &Db, owner: &str) -> Result<(), SqlError> {
    for table in ["archive", "archive_owners", "archive_prefs"] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE owner = ?1"),
            params![owner],
        )?;
    }
    Ok(())
}

/// The `with` filter (XEP-0313 §4.1.1): a bare JID matches every resource of it, a full JID
/// only itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum With {
    /// A bare JID: messages with any of its resources, or with the bare JID itself.
    Bare(String),
    /// A full JID: messages with that resource only.
    Full {
        /// Its bare part, so that the `(owner, with_bare, key)` index serves the query.
        bare: String,
        /// The whole JID, matched exactly.
        full: String,
    },
}

/// A query's filters and page, ids already checked ([`exists`]).
///
/// The filters (`with`, `from_key`/`to_key`, `after`/`before`, `ids`) define the full result
/// set that XEP-0059 counts; `rsm_after`/`rsm_before`/`index` only choose a page of it.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only messages with this peer; `None` for all of them.
    pub with: Option<With>,
    /// Inclusive key range from `start` and `end`.
    pub from_key: Option<i64>,
    /// Upper end of that range ([`key_at`] of the millisecond after `end`, less one).
    pub to_key: Option<i64>,
    /// Exclusive bounds from the form's `after-id` and `before-id`.
    pub after: Option<i64>,
    /// Only keys below this one (`before-id`).
    pub before: Option<i64>,
    /// `ids`: only these messages (none when empty).
    pub ids: Option<Vec<ArchiveId>>,
    /// Exclusive bounds from RSM `<after/>` and `<before/>`: paging, not filtering.
    pub rsm_after: Option<i64>,
    /// The page ends before this key (a non-empty RSM `<before/>`).
    pub rsm_before: Option<i64>,
    /// RSM `<index/>` (XEP-0059 §2.5): the page starts at this zero-based position of the
    /// result set, read forwards.
    pub index: Option<usize>,
    /// The page ends at the newest end (RSM `<before/>`): read backwards.
    pub backwards: bool,
    /// Most results on the page (RSM `<max/>`, capped by the caller); 0 returns none.
    pub max: usize,
}

/// One archived message.
#[derive(Debug, Clone)]
pub struct Archived {
    /// Its public id, for the `<result id/>` and for paging.
    pub id: ArchiveId,
    /// The stanza as archived, self-contained (with its `xmlns`).
    pub stanza: Vec<u8>,
}

/// A page of results, oldest first.
#[derive(Debug, Clone)]
pub struct Page {
    /// At most `max` messages of the result set.
    pub items: Vec<Archived>,
    /// Nothing more matches beyond the page in the direction it was read (XEP-0313 §4.3.3).
    pub complete: bool,
}

/// Where a page lies in its full result set: XEP-0059 `<count/>` and `<first index/>`,
/// each left out (XEP-0059 makes both optional) when finding it would scan more than
/// [`CountBounds::max_counted`] messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Messages in the full result set (the query's filters, without its paging).
    pub count: Option<u64>,
    /// Zero-based position of the page's first message in that set; `None` for an empty
    /// page.
    pub first_index: Option<u64>,
}

/// How far [`position`] scans the archive's indexes.
#[derive(Debug, Clone, Copy)]
pub struct CountBounds {
    /// Messages counted past the newer end of a page before the older side is counted
    /// instead: clients read the newest pages most (the last page, catching up), so the
    /// messages newer than a page are usually few.
    pub near_newest: i64,
    /// Most messages one count scans: a bound on the cost of a query. SQLite counts about
    /// 10,000 index entries a millisecond (`cargo bench --bench core_archive`,
    /// `archive_position_1M`), so 50,000 keeps a query with its count under the 10 ms the
    /// archive aims at; half the default `archive_max_messages`.
    pub max_counted: i64,
}

/// The bounds the core uses.
pub const COUNT_BOUNDS: CountBounds = CountBounds {
    near_newest: 10_000,
    max_counted: 50_000,
};

/// The SQL condition (after `WHERE`) and arguments of the query's filters, without its
/// paging: the full result set (`ids` is matched by key only; callers check nonces).
///
/// `after`/`before` narrow it further (exclusive keys: paging, or one side of a page). Every
/// key bound is merged into one `key >= ?` and one `key <= ?`: SQLite ranges an index scan
/// on one lower and one upper bound only, and checks any other bound row by row, which made
/// a count past a page scan the owner's whole archive.
fn filters(
    owner: &str,
    q: &Query,
    oldest_key: i64,
    after: Option<i64>,
    before: Option<i64>,
) -> (String, Vec<Value>) {
    let mut sql = String::from("owner = ?");
    let mut args: Vec<Value> = vec![Value::Text(owner.to_owned())];
    match &q.with {
        Some(With::Bare(b)) => {
            sql.push_str(" AND with_bare = ?");
            args.push(Value::Text(b.clone()));
        }
        Some(With::Full { bare, full }) => {
            sql.push_str(" AND with_bare = ? AND with_full = ?");
            args.push(Value::Text(bare.clone()));
            args.push(Value::Text(full.clone()));
        }
        None => {}
    }
    let low = [
        Some(oldest_key),
        q.from_key,
        q.after.map(|k| k.saturating_add(1)),
        after.map(|k| k.saturating_add(1)),
    ]
    .into_iter()
    .flatten()
    .max();
    let high = [
        q.to_key,
        q.before.map(|k| k.saturating_sub(1)),
        before.map(|k| k.saturating_sub(1)),
    ]
    .into_iter()
    .flatten()
    .min();
    if let Some(l) = low {
        sql.push_str(" AND key >= ?");
        args.push(Value::Integer(l));
    }
    if let Some(h) = high {
        sql.push_str(" AND key <= ?");
        args.push(Value::Integer(h));
    }
    if let Some(ids) = &q.ids {
        sql.push_str(" AND key IN (");
        for (i, id) in ids.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            args.push(Value::Integer(id.key));
        }
        sql.push(')');
    }
    (sql, args)
}

/// Whether the query filters nothing but the owner (and expiry): its result set is the
/// whole archive, counted in `archive_owners`.
fn unfiltered(q: &Query) -> bool {
    q.with.is_none()
        && q.from_key.is_none()
        && q.to_key.is_none()
        && q.after.is_none()
        && q.before.is_none()
        && q.ids.is_none()
}

fn as_args(args: &[Value]) -> Vec<&dyn ToSql> {
    args.iter().map(|a| a as &dyn ToSql).collect()
}

/// Runs a query on `owner`'s archive; messages with keys below `oldest_key` are expired.
pub fn query(conn: &Db, owner: &str, q: &Query, oldest_key: i64) -> Result<Page, SqlError> {
    if q.ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Page {
            items: Vec::new(),
            complete: true,
        });
    }
    let (cond, mut args) = filters(owner, q, oldest_key, q.rsm_after, q.rsm_before);
    let mut sql = format!("SELECT key, nonce, stanza FROM archive WHERE {cond}");
    let backwards = q.backwards && q.index.is_none();
    sql.push_str(if backwards {
        " ORDER BY key DESC LIMIT ?"
    } else {
        " ORDER BY key ASC LIMIT ?"
    });
    // `ids` are matched by nonce after the SQL: read every candidate (at most a page).
    let limit = match &q.ids {
        Some(ids) => ids.len(),
        None => q.max,
    };
    args.push(Value::Integer(limit as i64 + 1));
    if let Some(i) = q.index {
        if q.ids.is_none() {
            sql.push_str(" OFFSET ?");
            args.push(Value::Integer(i64::try_from(i).unwrap_or(i64::MAX)));
        }
    }
    let rows = conn.query_map(&sql, &as_args(&args), |r| {
        Ok(Archived {
            id: ArchiveId {
                key: r.get(0)?,
                nonce: r.get(1)?,
            },
            stanza: r.get(2)?,
        })
    })?;
    let mut items = Vec::with_capacity(q.max + 1);
    for a in rows {
        // An `ids` entry must match its nonce too, not only its key.
        if q.ids.as_ref().is_none_or(|ids| ids.contains(&a.id)) {
            items.push(a);
        }
    }
    if let (Some(i), Some(_)) = (q.index, &q.ids) {
        items.drain(..i.min(items.len()));
    }
    let complete = items.len() <= q.max;
    items.truncate(q.max);
    if backwards {
        items.reverse();
    }
    Ok(Page { items, complete })
}

/// XEP-0059 §2.1 and §2.5: how many messages the query's full result set has, and where
/// `page` (its answer from [`query`]) starts in it.
///
/// Cost: an archive without filters is counted from `archive_owners` (less the expired
/// messages the sweep has not deleted yet); a filtered one by a range scan of the index the
/// page used. The position counts the messages newer than the page when they are at most
/// [`CountBounds::near_newest`], else the older ones. No scan goes past
/// [`CountBounds::max_counted`] rows: what it would need is left out instead.
pub fn position(
    conn: &Db,
    owner: &str,
    q: &Query,
    oldest_key: i64,
    page: &Page,
) -> Result<Position, SqlError> {
    position_within(conn, owner, q, oldest_key, page, COUNT_BOUNDS)
}

/// [`position`] with other bounds (tests use small ones).
pub(crate) fn position_within(
    conn: &Db,
    owner: &str,
    q: &Query,
    oldest_key: i64,
    page: &Page,
    bounds: CountBounds,
) -> Result<Position, SqlError> {
    if let Some(ids) = &q.ids {
        // At most a page of ids: read their keys and count here.
        let mut keys = Vec::new();
        if !ids.is_empty() {
            let (cond, args) = filters(owner, q, oldest_key, None, None);
            let rows = conn.query_map(
                &format!("SELECT key, nonce FROM archive WHERE {cond}"),
                &as_args(&args),
                |r| {
                    Ok(ArchiveId {
                        key: r.get(0)?,
                        nonce: r.get(1)?,
                    })
                },
            )?;
            keys = rows
                .into_iter()
                .filter(|id| ids.contains(id))
                .map(|id| id.key)
                .collect();
        }
        let first_index = page
            .items
            .first()
            .map(|f| keys.iter().filter(|k| **k < f.id.key).count() as u64);
        return Ok(Position {
            count: Some(keys.len() as u64),
            first_index,
        });
    }
    // The rows of the result set past `after` or before `before`, if at most `limit`.
    let counted =
        |after: Option<i64>, before: Option<i64>, limit: i64| -> Result<Option<u64>, SqlError> {
            let (cond, mut args) = filters(owner, q, oldest_key, after, before);
            let inner = format!("SELECT 1 FROM archive WHERE {cond}");
            args.push(Value::Integer(limit.saturating_add(1)));
            let n: i64 = conn.query_row(
                &format!("SELECT COUNT(*) FROM ({inner} LIMIT ?) AS counted"),
                &as_args(&args),
                |r| r.get(0),
            )?;
            Ok((n <= limit).then_some(n.max(0) as u64))
        };
    let count = if unfiltered(q) {
        let stored: Option<i64> = conn
            .query_row(
                "SELECT messages FROM archive_owners WHERE owner = ?1",
                params![owner],
                |r| r.get(0),
            )
            .optional()?;
        let (stored, oldest) = (stored.unwrap_or(0).max(0) as u64, oldest_key);
        // Expired rows the sweep has not deleted yet: few, unless it has not run.
        let mut expired_args = vec![Value::Text(owner.to_owned()), Value::Integer(oldest)];
        expired_args.push(Value::Integer(bounds.max_counted.saturating_add(1)));
        let expired: i64 = conn.query_row(
            "SELECT COUNT(*) FROM (SELECT 1 FROM archive WHERE owner = ? AND key < ? LIMIT ?) AS counted",
            &as_args(&expired_args),
            |r| r.get(0),
        )?;
        (expired <= bounds.max_counted).then(|| stored.saturating_sub(expired.max(0) as u64))
    } else {
        counted(None, None, bounds.max_counted)?
    };
    let first_index = match (page.items.first(), page.items.last()) {
        (Some(first), Some(last)) => {
            let newer = counted(Some(last.id.key), None, bounds.near_newest)?;
            match (newer, count) {
                (Some(newer), Some(count)) => {
                    Some(count.saturating_sub(page.items.len() as u64 + newer))
                }
                _ => counted(None, Some(first.id.key), bounds.max_counted)?,
            }
        }
        _ => None,
    };
    Ok(Position { count, first_index })
}

/// Where the expiry sweep goes on from ([`sweep_expired`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepFrom {
    /// The first account.
    Start,
    /// This account: the last batch stopped inside its expired messages.
    Owner(String),
    /// The accounts after this one.
    After(String),
}

/// What one batch of the sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepStep {
    /// Messages deleted.
    pub deleted: usize,
    /// Where the next batch starts; `None` once every account was visited.
    pub next: Option<SweepFrom>,
}

/// One transaction of the periodic expiry sweep: from `from`, deletes the messages with keys
/// below `expired_below` of accounts (rows of `accounts`: the chat service's room archives,
/// in the same table, keep their own retention), at most `batch` of them, and keeps
/// `archive_owners` in step. Call it again with [`SweepStep::next`] until that is `None`.
pub fn sweep_expired(
    conn: &Db,
    from: &SweepFrom,
    expired_below: i64,
    batch: usize,
) -> Result<SweepStep, SqlError> {
    let (op, cursor) = match from {
        SweepFrom::Start => (">=", ""),
        SweepFrom::Owner(o) => (">=", o.as_str()),
        SweepFrom::After(o) => (">", o.as_str()),
    };
    let tx = conn.transaction()?;
    // Accounts with messages, a batch of them at a time, in a stable order to resume in.
    let owners: Vec<String> = tx.query_map(
        &format!(
            "SELECT o.owner FROM archive_owners o
             JOIN accounts a ON o.owner = a.localpart || '@' || a.domain
             WHERE o.owner {op} ?1 ORDER BY o.owner LIMIT ?2"
        ),
        params![cursor, batch as i64],
        |r| r.get(0),
    )?;
    let mut deleted = 0;
    let mut next = None;
    for owner in &owners {
        let budget = batch - deleted;
        let n = delete_oldest(&tx, owner, expired_below, budget)?;
        if n > 0 {
            tx.execute(
                "UPDATE archive_owners SET messages = messages - ?2 WHERE owner = ?1",
                params![owner, n as i64],
            )?;
        }
        deleted += n;
        if n == budget {
            // This account may have more: the next batch starts with it again.
            next = Some(SweepFrom::Owner(owner.clone()));
            break;
        }
    }
    if next.is_none() && owners.len() == batch {
        next = owners.last().cloned().map(SweepFrom::After);
    }
    tx.commit()?;
    Ok(SweepStep { deleted, next })
}
