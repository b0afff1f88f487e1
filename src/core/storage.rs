//! The core's storage: an SQLite file (rusqlite, SQLite bundled; the embedded default,
//! created on first start) or a PostgreSQL database (`database = "postgres://…"`), with one
//! schema and one list of migrations for both. [`db`] holds the few dialect differences, so
//! every feature writes its SQL once, against [`Db`].
//!
//! # Threading
//! Both drivers block, so the connection lives on a thread of its own and the async side
//! sends it jobs ([`Storage::call`]); the runtime's workers never wait on the disk or the
//! network. One connection serialises all writes, which is what SQLite does anyway, and keeps
//! transactions simple.
//!
//! # Schema migrations
//! [`MIGRATIONS`] is an append-only list; the database's schema version (SQLite's
//! `PRAGMA user_version`, PostgreSQL's `fedgate_schema` table) says how many have been
//! applied. On open, the missing ones run in order, each in a transaction together with the
//! version bump, so a crash leaves the database at a whole version; in PostgreSQL the
//! version table is locked meanwhile, so two cores starting at once migrate once. A database
//! from a newer fedgate (a higher version than we know) is refused rather than misread.
//!
//! Durability: SQLite runs a WAL journal with `synchronous=FULL`, PostgreSQL commits
//! synchronously, so whatever a client was told is stored (an offline message, a roster
//! change) survives a crash or a restart.
//!
//! # Failures
//! A failed call is counted ([`StorageMetrics`]) and fails only the stanza or sign-in that
//! needed it; a lost PostgreSQL connection is opened again with backoff (see [`db`]).

pub mod copy;
pub mod db;
#[cfg(test)]
pub(crate) mod testing;

use std::path::Path;

use tokio::sync::oneshot;

pub use self::db::{Db, OptionalExtension, PgTarget, Row, SqlError, Tx};
pub use rusqlite::types::Value;
pub use rusqlite::{params, ToSql};

use super::config::Database;
use super::roster::{RosterItem, SubState, Subscription};
use super::sasl::{Credentials, ScramKeys};

/// The schema, one step per entry, never edited once released: add a new entry instead.
pub const MIGRATIONS: &[&str] = &[
    // 1: accounts with salted SCRAM keys, rosters, offline messages.
    "CREATE TABLE accounts (
        localpart TEXT NOT NULL,
        domain TEXT NOT NULL,
        salt BLOB NOT NULL,
        iterations INTEGER NOT NULL,
        sha1_stored_key BLOB NOT NULL,
        sha1_server_key BLOB NOT NULL,
        sha256_stored_key BLOB NOT NULL,
        sha256_server_key BLOB NOT NULL,
        created INTEGER NOT NULL,
        PRIMARY KEY (localpart, domain)
    );
    CREATE TABLE roster (
        owner TEXT NOT NULL,
        contact TEXT NOT NULL,
        name TEXT,
        groups TEXT NOT NULL DEFAULT '',
        subscription TEXT NOT NULL DEFAULT 'none',
        pending_out INTEGER NOT NULL DEFAULT 0,
        pending_in INTEGER NOT NULL DEFAULT 0,
        in_roster INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (owner, contact)
    );
    CREATE TABLE offline (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        owner TEXT NOT NULL,
        stanza BLOB NOT NULL,
        stored INTEGER NOT NULL
    );
    CREATE INDEX offline_owner ON offline (owner, id);",
    // 2: PEP (XEP-0163) nodes with their configuration and items (seq orders them: the highest is
    // the node's latest), and XEP-0049 private XML.
    "CREATE TABLE pep_nodes (
        owner TEXT NOT NULL,
        node TEXT NOT NULL,
        access_model TEXT NOT NULL,
        persist_items INTEGER NOT NULL,
        max_items INTEGER NOT NULL,
        send_last TEXT NOT NULL,
        created INTEGER NOT NULL,
        PRIMARY KEY (owner, node)
    );
    CREATE TABLE pep_items (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        owner TEXT NOT NULL,
        node TEXT NOT NULL,
        item_id TEXT NOT NULL,
        publisher TEXT NOT NULL,
        payload BLOB NOT NULL,
        published INTEGER NOT NULL,
        UNIQUE (owner, node, item_id)
    );
    CREATE INDEX pep_items_latest ON pep_items (owner, node, seq);
    CREATE TABLE private_xml (
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        ns TEXT NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (owner, name, ns)
    );",
    // 3: XEP-0191 blocklists, XEP-0054 vCards (with their XEP-0153 photo hash), XEP-0237
    // roster versions, XEP-0012 last activity, XEP-0077/XEP-0401 invitations.
    "CREATE TABLE blocklist (
        owner TEXT NOT NULL,
        jid TEXT NOT NULL,
        PRIMARY KEY (owner, jid)
    );
    CREATE TABLE vcards (
        owner TEXT PRIMARY KEY NOT NULL,
        xml BLOB NOT NULL,
        photo_hash TEXT
    );
    CREATE TABLE roster_versions (
        owner TEXT PRIMARY KEY NOT NULL,
        ver INTEGER NOT NULL
    );
    CREATE TABLE last_activity (
        owner TEXT PRIMARY KEY NOT NULL,
        ended INTEGER NOT NULL,
        status TEXT
    );
    CREATE TABLE invites (
        token TEXT PRIMARY KEY NOT NULL,
        domain TEXT NOT NULL,
        created INTEGER NOT NULL
    );",
    // 4: XEP-0313 message archives (core::mam::store).
    super::mam::store::SCHEMA,
    // 5: XEP-0045 persistent rooms and their affiliations (muc::store).
    crate::muc::store::SCHEMA,
    // 6: XEP-0357 push registrations (core::push).
    super::push::SCHEMA,
];

/// A storage failure. Fatal at open; for a single operation, the stanza or login that needed
/// it fails (`internal-server-error`, `temporary-auth-failure`), the session goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// `database` names the file or the (password-less) URL.
    #[error("{database}: {source}")]
    Open {
        /// The file or the URL, without its password.
        database: String,
        /// What failed: opening, connecting, or a migration's statement.
        source: SqlError,
    },
    /// The database was migrated by a newer fedgate; we refuse to use a schema we do not
    /// know rather than corrupt it.
    #[error("{database}: schema version {found} is newer than this fedgate knows ({known}); run a newer fedgate or restore a backup")]
    TooNew {
        /// The file or the URL, without its password.
        database: String,
        /// The schema version found in the database (migrations applied).
        found: u32,
        /// The newest version this build knows (the number of its migrations).
        known: u32,
    },
    /// One operation failed.
    #[error("database: {0}")]
    Sql(#[from] SqlError),
    /// The database thread could not be started or has ended, so no call is answered.
    #[error("the database thread is gone")]
    Gone,
}

impl StorageError {
    /// The database could not be reached (rather than a statement failing).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Sql(e) | StorageError::Open { source: e, .. } => e.is_unavailable(),
            StorageError::Gone => true,
            StorageError::TooNew { .. } => false,
        }
    }
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// The database handle; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    jobs: std::sync::mpsc::Sender<Job>,
    metrics: StorageMetrics,
}

/// Storage failures, for `/metrics`: `fedgate_core_storage_errors_total{kind}` with `kind`
/// `unavailable` (the database could not be reached) or `query` (a statement failed).
#[derive(Clone)]
pub struct StorageMetrics {
    unavailable: prometheus::IntCounter,
    query: prometheus::IntCounter,
}

impl StorageMetrics {
    /// Counters in `registry` (an error if they are registered there already).
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<StorageMetrics> {
        let errors = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "fedgate_core_storage_errors_total",
                "Core storage calls that failed, by kind: unavailable (the database could not \
                 be reached) or query (a statement failed)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        Ok(StorageMetrics {
            unavailable: errors.with_label_values(&["unavailable"]),
            query: errors.with_label_values(&["query"]),
        })
    }

    /// Counters that no registry shows (tests, the command line).
    pub fn unregistered() -> StorageMetrics {
        StorageMetrics::register(&prometheus::Registry::new()).expect("a fresh registry")
    }

    fn count(&self, e: &StorageError) {
        if e.is_unavailable() {
            self.unavailable.inc();
        } else {
            self.query.inc();
        }
    }

    /// Failed calls so far: (unavailable, query).
    pub fn errors(&self) -> (u64, u64) {
        (self.unavailable.get(), self.query.get())
    }
}

/// Opens (creating it if needed) and migrates the database; call it on the thread that will
/// use the connection (the PostgreSQL driver runs a runtime of its own, which cannot start
/// inside the core's).
pub fn open_db(database: &Database) -> Result<Db, StorageError> {
    let name = database.to_string();
    let open_err = |source| StorageError::Open {
        database: name.clone(),
        source,
    };
    let db = match database {
        Database::Sqlite(path) => open_sqlite(path).map_err(open_err)?,
        Database::Postgres(url) => Db::connect_postgres(url).map_err(open_err)?,
    };
    migrate(&db).map_err(|e| match e {
        StorageError::TooNew { found, known, .. } => StorageError::TooNew {
            database: name.clone(),
            found,
            known,
        },
        StorageError::Sql(source) => open_err(source),
        other => other,
    })?;
    Ok(db)
}

fn open_sqlite(path: &Path) -> Result<Db, SqlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(Db::Sqlite(conn))
}

/// Applies the migrations the database lacks (module docs). Returns the version reached.
pub fn migrate(db: &Db) -> Result<u32, StorageError> {
    migrate_with(db, MIGRATIONS)
}

/// [`migrate`] over the given list (tests pass synthetic ones).
fn migrate_with(db: &Db, migrations: &[&str]) -> Result<u32, StorageError> {
    let known = migrations.len() as u32;
    loop {
        let tx = db.transaction()?;
        tx.lock_schema()?;
        // Read under the lock: another process may have migrated meanwhile.
        let found = tx.schema_version()?;
        if found > known {
            return Err(StorageError::TooNew {
                database: String::new(),
                found,
                known,
            });
        }
        if found == known {
            tx.commit()?;
            return Ok(known);
        }
        tx.execute_batch(migrations[found as usize])?;
        tx.set_schema_version(found + 1)?;
        tx.commit()?;
        tracing::info!("database schema migrated to version {}", found + 1);
    }
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Storage {
    /// Opens the database on its own thread. Fails if it cannot be opened or migrated.
    pub fn open(database: &Database, metrics: StorageMetrics) -> Result<Storage, StorageError> {
        let database = database.clone();
        Storage::run(move || open_db(&database), metrics)
    }

    /// A private in-memory SQLite database (tests).
    pub fn in_memory() -> Result<Storage, StorageError> {
        Storage::run(
            || {
                let db =
                    Db::Sqlite(rusqlite::Connection::open_in_memory().map_err(SqlError::from)?);
                migrate(&db)?;
                Ok(db)
            },
            StorageMetrics::unregistered(),
        )
    }

    /// Starts the database thread, which opens the connection with `open` and then runs the
    /// jobs until every handle is dropped. Waits for the opening (at start only).
    fn run(
        open: impl FnOnce() -> Result<Db, StorageError> + Send + 'static,
        metrics: StorageMetrics,
    ) -> Result<Storage, StorageError> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (opened_tx, opened) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("fedgate-db".into())
            .spawn(move || {
                let mut db = match open() {
                    Ok(db) => {
                        let _ = opened_tx.send(Ok(()));
                        db
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut db);
                }
            })
            .map_err(|_| StorageError::Gone)?;
        opened.recv().map_err(|_| StorageError::Gone)??;
        Ok(Storage { jobs: tx, metrics })
    }

    /// The failure counters of this database.
    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
    }

    /// Runs `f` on the database thread and waits for its result without blocking the runtime.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StorageError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R, SqlError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let sent = self.jobs.send(Box::new(move |db| {
            let _ = tx.send(f(db));
        }));
        let r = match sent {
            Ok(()) => match rx.await {
                Ok(r) => r.map_err(StorageError::from),
                Err(_) => Err(StorageError::Gone),
            },
            Err(_) => Err(StorageError::Gone),
        };
        if let Err(e) = &r {
            self.metrics.count(e);
        }
        r
    }

    /// Every roster entry of `owner`, hidden ones included (see [`roster`]).
    pub async fn load_roster(&self, owner: &str) -> Result<Vec<RosterItem>, StorageError> {
        let o = owner.to_owned();
        self.call(move |db| roster(db, &o)).await
    }

    /// `owner`'s roster entry for `contact`, hidden or not (see [`roster_item`]).
    pub async fn load_roster_item(
        &self,
        owner: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StorageError> {
        let (o, c) = (owner.to_owned(), contact.to_owned());
        self.call(move |db| roster_item(db, &o, &c)).await
    }

    /// Writes `owner`'s roster entry (see [`put_roster_item`]).
    pub async fn store_roster_item(
        &self,
        owner: &str,
        item: &RosterItem,
    ) -> Result<(), StorageError> {
        let (o, i) = (owner.to_owned(), item.clone());
        self.call(move |db| put_roster_item(db, &o, &i)).await
    }

    /// Like [`Storage::call`], for the command line (no runtime).
    pub fn call_blocking<R, F>(&self, f: F) -> Result<R, StorageError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R, SqlError> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send(Box::new(move |db| {
                let _ = tx.send(f(db));
            }))
            .map_err(|_| StorageError::Gone)?;
        Ok(rx.recv().map_err(|_| StorageError::Gone)??)
    }
}

// ---- accounts -------------------------------------------------------------------------------

/// Creates an account; `Ok(false)` if it exists already.
pub fn create_account(
    conn: &Db,
    localpart: &str,
    domain: &str,
    c: &Credentials,
) -> Result<bool, SqlError> {
    let n = conn.execute(
        "INSERT INTO accounts (localpart, domain, salt, iterations, sha1_stored_key,
           sha1_server_key, sha256_stored_key, sha256_server_key, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
        params![
            localpart,
            domain,
            c.salt,
            c.iterations,
            c.sha1.stored_key,
            c.sha1.server_key,
            c.sha256.stored_key,
            c.sha256.server_key,
            now()
        ],
    )?;
    Ok(n == 1)
}

/// Replaces an account's credentials; `Ok(false)` if there is no such account.
pub fn set_credentials(
    conn: &Db,
    localpart: &str,
    domain: &str,
    c: &Credentials,
) -> Result<bool, SqlError> {
    let n = conn.execute(
        "UPDATE accounts SET salt = ?3, iterations = ?4, sha1_stored_key = ?5,
           sha1_server_key = ?6, sha256_stored_key = ?7, sha256_server_key = ?8
         WHERE localpart = ?1 AND domain = ?2",
        params![
            localpart,
            domain,
            c.salt,
            c.iterations,
            c.sha1.stored_key,
            c.sha1.server_key,
            c.sha256.stored_key,
            c.sha256.server_key
        ],
    )?;
    Ok(n == 1)
}

/// Removes an account with its roster, offline messages, PEP nodes, private XML, blocklist,
/// vCard, roster version and archive; `Ok(false)` if there was none.
pub fn remove_account(conn: &Db, localpart: &str, domain: &str) -> Result<bool, SqlError> {
    let tx = conn.transaction()?;
    let n = tx.execute(
        "DELETE FROM accounts WHERE localpart = ?1 AND domain = ?2",
        params![localpart, domain],
    )?;
    let bare = format!("{localpart}@{domain}");
    tx.execute("DELETE FROM roster WHERE owner = ?1", params![bare])?;
    tx.execute("DELETE FROM offline WHERE owner = ?1", params![bare])?;
    super::pep::store::remove_account(&tx, &bare)?;
    tx.execute("DELETE FROM blocklist WHERE owner = ?1", params![bare])?;
    tx.execute("DELETE FROM vcards WHERE owner = ?1", params![bare])?;
    tx.execute(
        "DELETE FROM roster_versions WHERE owner = ?1",
        params![bare],
    )?;
    super::mam::store::remove_owner(&tx, &bare)?;
    super::push::forget(&tx, &bare)?;
    tx.commit()?;
    Ok(n == 1)
}

/// The stored SCRAM credentials of `localpart@domain` (canonical domain); `None` if there is
/// no such account.
pub fn credentials(
    conn: &Db,
    localpart: &str,
    domain: &str,
) -> Result<Option<Credentials>, SqlError> {
    conn.query_row(
        "SELECT salt, iterations, sha1_stored_key, sha1_server_key, sha256_stored_key,
           sha256_server_key FROM accounts WHERE localpart = ?1 AND domain = ?2",
        params![localpart, domain],
        |r| {
            Ok(Credentials {
                salt: r.get(0)?,
                iterations: r.get(1)?,
                sha1: ScramKeys {
                    stored_key: r.get(2)?,
                    server_key: r.get(3)?,
                },
                sha256: ScramKeys {
                    stored_key: r.get(4)?,
                    server_key: r.get(5)?,
                },
            })
        },
    )
    .optional()
}

/// Whether `localpart@domain` (canonical domain) is an account.
pub fn account_exists(conn: &Db, localpart: &str, domain: &str) -> Result<bool, SqlError> {
    conn.query_row(
        "SELECT 1 FROM accounts WHERE localpart = ?1 AND domain = ?2",
        params![localpart, domain],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
}

/// Every account as `localpart@domain`, sorted.
pub fn list_accounts(conn: &Db) -> Result<Vec<String>, SqlError> {
    conn.query_map(
        "SELECT localpart, domain FROM accounts ORDER BY domain, localpart",
        &[],
        |r| {
            Ok(format!(
                "{}@{}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?
            ))
        },
    )
}

// ---- rosters --------------------------------------------------------------------------------

fn item_from_row(r: &Row) -> Result<RosterItem, SqlError> {
    let groups: String = r.get(2)?;
    let sub: String = r.get(3)?;
    Ok(RosterItem {
        jid: r.get(0)?,
        name: r.get(1)?,
        groups: groups
            .split('\n')
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
        state: SubState {
            sub: Subscription::from_name(&sub).unwrap_or(Subscription::None),
            pending_out: r.get(4)?,
            pending_in: r.get(5)?,
        },
        in_roster: r.get(6)?,
    })
}

const ITEM_COLUMNS: &str =
    "contact, name, groups, subscription, pending_out, pending_in, in_roster";

/// Every entry of `owner`'s roster, by contact: the items, and the hidden entries
/// (`in_roster` false) that only hold a pending inbound subscription request, which presence
/// needs to repeat the request at sign-in. A roster result shows only the items.
pub fn roster(conn: &Db, owner: &str) -> Result<Vec<RosterItem>, SqlError> {
    conn.query_map(
        &format!("SELECT {ITEM_COLUMNS} FROM roster WHERE owner = ?1 ORDER BY contact"),
        params![owner],
        item_from_row,
    )
}

/// One entry, hidden or not.
pub fn roster_item(conn: &Db, owner: &str, contact: &str) -> Result<Option<RosterItem>, SqlError> {
    conn.query_row(
        &format!("SELECT {ITEM_COLUMNS} FROM roster WHERE owner = ?1 AND contact = ?2"),
        params![owner, contact],
        item_from_row,
    )
    .optional()
}

/// Writes an entry; one that is neither in the roster nor holds anything is deleted.
pub fn put_roster_item(conn: &Db, owner: &str, item: &RosterItem) -> Result<(), SqlError> {
    if !item.in_roster && !item.state.pending_in {
        conn.execute(
            "DELETE FROM roster WHERE owner = ?1 AND contact = ?2",
            params![owner, item.jid],
        )?;
        return Ok(());
    }
    conn.execute(
        "INSERT INTO roster (owner, contact, name, groups, subscription, pending_out, pending_in,
           in_roster) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (owner, contact) DO UPDATE SET name = ?3, groups = ?4, subscription = ?5,
           pending_out = ?6, pending_in = ?7, in_roster = ?8",
        params![
            owner,
            item.jid,
            item.name,
            item.groups.join("\n"),
            item.state.sub.as_str(),
            item.state.pending_out,
            item.state.pending_in,
            item.in_roster
        ],
    )?;
    Ok(())
}

/// Contacts with a pending inbound subscription request, to repeat at sign-in.
pub fn pending_in(conn: &Db, owner: &str) -> Result<Vec<String>, SqlError> {
    conn.query_map(
        "SELECT contact FROM roster WHERE owner = ?1 AND pending_in = 1 ORDER BY contact",
        params![owner],
        |r| r.get(0),
    )
}

// ---- offline messages ---------------------------------------------------------------------

/// Stores a message for `owner` unless `limit` are waiting already; `Ok(false)` when full.
pub fn store_offline(
    conn: &Db,
    owner: &str,
    stanza: &[u8],
    limit: usize,
) -> Result<bool, SqlError> {
    let tx = conn.transaction()?;
    let count: i64 = tx.query_row(
        "SELECT COUNT(*) FROM offline WHERE owner = ?1",
        params![owner],
        |r| r.get(0),
    )?;
    if count as usize >= limit {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO offline (owner, stanza, stored) VALUES (?1, ?2, ?3)",
        params![owner, stanza, now()],
    )?;
    tx.commit()?;
    Ok(true)
}

/// The messages waiting for `owner`, oldest first, with their ids.
pub fn offline_messages(conn: &Db, owner: &str) -> Result<Vec<(i64, Vec<u8>)>, SqlError> {
    conn.query_map(
        "SELECT id, stanza FROM offline WHERE owner = ?1 ORDER BY id",
        params![owner],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Deletes delivered messages (those with ids up to and including `last`).
pub fn delete_offline(conn: &Db, owner: &str, last: i64) -> Result<(), SqlError> {
    conn.execute(
        "DELETE FROM offline WHERE owner = ?1 AND id <= ?2",
        params![owner, last],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::testing::{on_both_databases, TestPostgres};
    use super::*;

    /// Opening creates the schema; opening again migrates nothing and keeps the data.
    fn reopening_keeps_the_data(database: &Database) {
        let db = open_db(database).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as u32);
        let c = Credentials::derive("pw", 4096);
        assert!(create_account(&db, "alice", "a.test", &c).unwrap());
        assert!(!create_account(&db, "alice", "a.test", &c).unwrap());
        drop(db);
        let db = open_db(database).unwrap();
        assert_eq!(credentials(&db, "alice", "a.test").unwrap(), Some(c));
        assert_eq!(migrate(&db).unwrap(), MIGRATIONS.len() as u32);
    }

    #[test]
    fn migrations_run_once_and_in_order_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        reopening_keeps_the_data(&Database::Sqlite(dir.path().join("core.sqlite")));
    }

    #[test]
    fn migrations_run_once_and_in_order_postgres() {
        let server = TestPostgres::shared();
        reopening_keeps_the_data(&Database::Postgres(server.create_database()));
    }

    on_both_databases! {
            /// With synthetic migrations, each depending on the one before: they run in list
            /// order, each once, the version counts them, and a later list applies only what is
            /// new.
            fn synthetic_migrations_run_once_and_in_order(db: unmigrated) {
                let steps = [
                    "CREATE TABLE log (step TEXT NOT NULL)",
                    "INSERT INTO log VALUES ('2')",
                    "INSERT INTO log VALUES ('3'); ALTER TABLE log ADD COLUMN extra TEXT",
                    "INSERT INTO log (step, extra) VALUES ('4', 'x')",
                ];
                let log = |db: &Db| -> Vec<String> {
                    db.query_map("SELECT step FROM log ORDER BY step", &[], |r| r.get(0))
                        .unwrap()
                };
                let version = |db: &Db| db.schema_version().unwrap();
                assert_eq!(migrate_with(db, &steps[..2]).unwrap(), 2);
                assert_eq!(version(db), 2);
                assert_eq!(log(db), ["2"]);
                // Two more: only those run, in order.
                assert_eq!(migrate_with(db, &steps).unwrap(), 4);
                assert_eq!(version(db), 4);
                assert_eq!(log(db), ["2", "3", "4"]);
                // Nothing new: nothing runs again.
                assert_eq!(migrate_with(db, &steps).unwrap(), 4);
                assert_eq!(log(db), ["2", "3", "4"]);
                // A failing one leaves the version (and the data) where the last good one left
                // them.
                let broken = [
                    steps[0],
                    steps[1],
                    steps[2],
                    steps[3],
                    "INSERT INTO nowhere VALUES (1)",
                ];
                assert!(migrate_with(db, &broken).is_err());
                assert_eq!(version(db), 4);
                assert_eq!(log(db), ["2", "3", "4"]);
            }

            fn a_database_from_a_newer_version_is_refused(db: unmigrated) {
                db.lock_schema().unwrap();
                db.set_schema_version(99).unwrap();
                match migrate(db) {
                    Err(StorageError::TooNew { found: 99, .. }) => {}
                    other => panic!("{other:?}"),
                }
            }

            fn a_version_0_database_is_upgraded_in_place(db: unmigrated) {
                // A database created by hand with nothing of ours in it is version 0: every
                // migration runs.
                db.execute_batch("CREATE TABLE unrelated (x TEXT)").unwrap();
                migrate(db).unwrap();
                assert!(list_accounts(db).unwrap().is_empty());
            }

            fn accounts_rosters_and_offline_messages(conn) {
            let c = Credentials::derive("pw", 4096);
            create_account(conn, "bob", "a.test", &c).unwrap();
            create_account(conn, "alice", "a.test", &c).unwrap();
            assert_eq!(
                list_accounts(conn).unwrap(),
                ["alice@a.test", "bob@a.test"]
            );
            let c2 = Credentials::derive("pw2", 4096);
            assert!(set_credentials(conn, "bob", "a.test", &c2).unwrap());
            assert!(credentials(conn, "bob", "a.test")
                .unwrap()
                .unwrap()
                .verify_password("pw2"));

            let mut item = RosterItem::new("carol@b.test");
            item.groups = vec!["Friends".into(), "Work".into()];
            item.state.pending_out = true;
            put_roster_item(conn, "bob@a.test", &item).unwrap();
            assert_eq!(roster(conn, "bob@a.test").unwrap(), [item.clone()]);
            // A hidden entry with nothing pending disappears.
            item.in_roster = false;
            put_roster_item(conn, "bob@a.test", &item).unwrap();
            assert!(roster(conn, "bob@a.test").unwrap().is_empty());

            assert!(store_offline(conn, "bob@a.test", b"<message/>", 2).unwrap());
            assert!(store_offline(conn, "bob@a.test", b"<message id='2'/>", 2).unwrap());
            assert!(!store_offline(conn, "bob@a.test", b"<message id='3'/>", 2).unwrap());
            let msgs = offline_messages(conn, "bob@a.test").unwrap();
            assert_eq!(msgs.len(), 2);
            assert_eq!(msgs[1].1, b"<message id='2'/>");
            delete_offline(conn, "bob@a.test", msgs[1].0).unwrap();
            assert!(offline_messages(conn, "bob@a.test")
                .unwrap()
                .is_empty());

            assert!(remove_account(conn, "bob", "a.test").unwrap());
            assert!(!account_exists(conn, "bob", "a.test").unwrap());
        }
    }
}
