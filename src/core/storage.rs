//! The core's storage: one SQLite file (rusqlite, SQLite bundled), created on first start.
//!
//! # Threading
//! SQLite calls block, so the connection lives on a thread of its own and the async side sends
//! it jobs ([`Storage::call`]); the runtime's workers never wait on the disk. One connection
//! serialises all writes, which is what SQLite does anyway, and keeps transactions simple.
//!
//! # Schema migrations
//! [`MIGRATIONS`] is an append-only list; the database's `PRAGMA user_version` says how many
//! have been applied. On open, the missing ones run in order, each in a transaction together
//! with the version bump, so a crash leaves the file at a whole version. A file from a newer
//! fedgate (a higher version than we know) is refused rather than misread.
//!
//! Durability: WAL journal with `synchronous=FULL`, so whatever a client was told is stored
//! (an offline message, a roster change) survives a crash or a restart.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

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
];

/// A storage failure. Fatal at open; for a single operation, the stanza or login that needed
/// it fails (`internal-server-error`, `temporary-auth-failure`), the session goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{}: schema version {found} is newer than this fedgate knows ({known}); run a newer fedgate or restore a backup", path.display())]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the database thread is gone")]
    Gone,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The database handle; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    jobs: std::sync::mpsc::Sender<Job>,
}

/// Opens (creating it if needed) and migrates the database at `path`.
fn open_connection(path: &Path) -> Result<Connection, StorageError> {
    let open_err = |source| StorageError::Open {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    migrate(&mut conn).map_err(|e| match e {
        StorageError::TooNew { found, known, .. } => StorageError::TooNew {
            path: path.to_owned(),
            found,
            known,
        },
        StorageError::Sql(source) => StorageError::Open {
            path: path.to_owned(),
            source,
        },
        other => other,
    })?;
    Ok(conn)
}

/// Applies the migrations the database lacks (module docs). Returns the version reached.
pub fn migrate(conn: &mut Connection) -> Result<u32, StorageError> {
    migrate_with(conn, MIGRATIONS)
}

/// [`migrate`] over the given list (tests pass synthetic ones).
fn migrate_with(conn: &mut Connection, migrations: &[&str]) -> Result<u32, StorageError> {
    let known = migrations.len() as u32;
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(StorageError::TooNew {
            path: PathBuf::new(),
            found,
            known,
        });
    }
    for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
        tracing::info!("database schema migrated to version {}", i + 1);
    }
    Ok(known)
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Storage {
    /// Opens the database on its own thread. Fails if the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        let conn = open_connection(path)?;
        Ok(Storage::run(conn))
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Storage, StorageError> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        Ok(Storage::run(conn))
    }

    fn run(mut conn: Connection) -> Storage {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("fedgate-db".into())
            .spawn(move || {
                // Ends when every handle is dropped.
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .expect("spawn the database thread");
        Storage { jobs: tx }
    }

    /// Runs `f` on the database thread and waits for its result without blocking the runtime.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StorageError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, rusqlite::Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| StorageError::Gone)?;
        Ok(rx.await.map_err(|_| StorageError::Gone)??)
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
        F: FnOnce(&mut Connection) -> Result<R, rusqlite::Error> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| StorageError::Gone)?;
        Ok(rx.recv().map_err(|_| StorageError::Gone)??)
    }
}

// ---- accounts -------------------------------------------------------------------------------

/// Creates an account; `Ok(false)` if it exists already.
pub fn create_account(
    conn: &Connection,
    localpart: &str,
    domain: &str,
    c: &Credentials,
) -> Result<bool, rusqlite::Error> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO accounts (localpart, domain, salt, iterations, sha1_stored_key,
           sha1_server_key, sha256_stored_key, sha256_server_key, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
    conn: &mut Connection,
    localpart: &str,
    domain: &str,
    c: &Credentials,
) -> Result<bool, rusqlite::Error> {
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
pub fn remove_account(
    conn: &mut Connection,
    localpart: &str,
    domain: &str,
) -> Result<bool, rusqlite::Error> {
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
    tx.commit()?;
    Ok(n == 1)
}

pub fn credentials(
    conn: &mut Connection,
    localpart: &str,
    domain: &str,
) -> Result<Option<Credentials>, rusqlite::Error> {
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

pub fn account_exists(
    conn: &mut Connection,
    localpart: &str,
    domain: &str,
) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT 1 FROM accounts WHERE localpart = ?1 AND domain = ?2",
        params![localpart, domain],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
}

/// Every account as `localpart@domain`, sorted.
pub fn list_accounts(conn: &mut Connection) -> Result<Vec<String>, rusqlite::Error> {
    let mut stmt =
        conn.prepare("SELECT localpart, domain FROM accounts ORDER BY domain, localpart")?;
    let rows = stmt.query_map([], |r| {
        Ok(format!(
            "{}@{}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?
        ))
    })?;
    rows.collect()
}

// ---- rosters --------------------------------------------------------------------------------

fn item_from_row(r: &rusqlite::Row<'_>) -> Result<RosterItem, rusqlite::Error> {
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
pub fn roster(conn: &mut Connection, owner: &str) -> Result<Vec<RosterItem>, rusqlite::Error> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {ITEM_COLUMNS} FROM roster WHERE owner = ?1 ORDER BY contact"
    ))?;
    let rows = stmt.query_map(params![owner], item_from_row)?;
    rows.collect()
}

/// One entry, hidden or not.
pub fn roster_item(
    conn: &mut Connection,
    owner: &str,
    contact: &str,
) -> Result<Option<RosterItem>, rusqlite::Error> {
    conn.query_row(
        &format!("SELECT {ITEM_COLUMNS} FROM roster WHERE owner = ?1 AND contact = ?2"),
        params![owner, contact],
        item_from_row,
    )
    .optional()
}

/// Writes an entry; one that is neither in the roster nor holds anything is deleted.
pub fn put_roster_item(
    conn: &mut Connection,
    owner: &str,
    item: &RosterItem,
) -> Result<(), rusqlite::Error> {
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
pub fn pending_in(conn: &mut Connection, owner: &str) -> Result<Vec<String>, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT contact FROM roster WHERE owner = ?1 AND pending_in = 1 ORDER BY contact",
    )?;
    let rows = stmt.query_map(params![owner], |r| r.get(0))?;
    rows.collect()
}

// ---- offline messages ---------------------------------------------------------------------

/// Stores a message for `owner` unless `limit` are waiting already; `Ok(false)` when full.
pub fn store_offline(
    conn: &mut Connection,
    owner: &str,
    stanza: &[u8],
    limit: usize,
) -> Result<bool, rusqlite::Error> {
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
pub fn offline_messages(
    conn: &mut Connection,
    owner: &str,
) -> Result<Vec<(i64, Vec<u8>)>, rusqlite::Error> {
    let mut stmt = conn.prepare("SELECT id, stanza FROM offline WHERE owner = ?1 ORDER BY id")?;
    let rows = stmt.query_map(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Deletes delivered messages (those with ids up to and including `last`).
pub fn delete_offline(
    conn: &mut Connection,
    owner: &str,
    last: i64,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "DELETE FROM offline WHERE owner = ?1 AND id <= ?2",
        params![owner, last],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core.sqlite");
        let conn = open_connection(&path).unwrap();
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as u32);
        let c = Credentials::derive("pw", 4096);
        assert!(create_account(&conn, "alice", "a.test", &c).unwrap());
        assert!(!create_account(&conn, "alice", "a.test", &c).unwrap());
        drop(conn);
        // Reopening migrates nothing and keeps the data.
        let mut conn = open_connection(&path).unwrap();
        assert_eq!(credentials(&mut conn, "alice", "a.test").unwrap(), Some(c));
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len() as u32);
    }

    /// With synthetic migrations, each depending on the one before: they run in list order,
    /// each once, the version counts them, and a later list applies only what is new.
    #[test]
    fn synthetic_migrations_run_once_and_in_order() {
        let steps = [
            "CREATE TABLE log (step TEXT NOT NULL)",
            "INSERT INTO log VALUES ('2')",
            "INSERT INTO log VALUES ('3'); ALTER TABLE log ADD COLUMN extra TEXT",
            "INSERT INTO log (step, extra) VALUES ('4', 'x')",
        ];
        let mut conn = Connection::open_in_memory().unwrap();
        let log = |conn: &Connection| -> Vec<String> {
            let mut q = conn.prepare("SELECT step FROM log ORDER BY rowid").unwrap();
            q.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let version = |conn: &Connection| -> u32 {
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(migrate_with(&mut conn, &steps[..2]).unwrap(), 2);
        assert_eq!(version(&conn), 2);
        assert_eq!(log(&conn), ["2"]);
        // Two more: only those run, in order.
        assert_eq!(migrate_with(&mut conn, &steps).unwrap(), 4);
        assert_eq!(version(&conn), 4);
        assert_eq!(log(&conn), ["2", "3", "4"]);
        // Nothing new: nothing runs again.
        assert_eq!(migrate_with(&mut conn, &steps).unwrap(), 4);
        assert_eq!(log(&conn), ["2", "3", "4"]);
        // A failing one leaves the version (and the data) where the last good one left them.
        let broken = [
            steps[0],
            steps[1],
            steps[2],
            steps[3],
            "INSERT INTO nowhere VALUES (1)",
        ];
        assert!(migrate_with(&mut conn, &broken).is_err());
        assert_eq!(version(&conn), 4);
        assert_eq!(log(&conn), ["2", "3", "4"]);
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(conn);
        match open_connection(&path) {
            Err(StorageError::TooNew { found: 99, .. }) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_version_0_database_is_upgraded_in_place() {
        // A database created by hand with nothing in it is version 0: every migration runs.
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE unrelated (x)").unwrap();
        migrate(&mut conn).unwrap();
        assert!(list_accounts(&mut conn).unwrap().is_empty());
    }

    #[test]
    fn accounts_rosters_and_offline_messages() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let c = Credentials::derive("pw", 4096);
        create_account(&conn, "bob", "a.test", &c).unwrap();
        create_account(&conn, "alice", "a.test", &c).unwrap();
        assert_eq!(
            list_accounts(&mut conn).unwrap(),
            ["alice@a.test", "bob@a.test"]
        );
        let c2 = Credentials::derive("pw2", 4096);
        assert!(set_credentials(&mut conn, "bob", "a.test", &c2).unwrap());
        assert!(credentials(&mut conn, "bob", "a.test")
            .unwrap()
            .unwrap()
            .verify_password("pw2"));

        let mut item = RosterItem::new("carol@b.test");
        item.groups = vec!["Friends".into(), "Work".into()];
        item.state.pending_out = true;
        put_roster_item(&mut conn, "bob@a.test", &item).unwrap();
        assert_eq!(roster(&mut conn, "bob@a.test").unwrap(), [item.clone()]);
        // A hidden entry with nothing pending disappears.
        item.in_roster = false;
        put_roster_item(&mut conn, "bob@a.test", &item).unwrap();
        assert!(roster(&mut conn, "bob@a.test").unwrap().is_empty());

        assert!(store_offline(&mut conn, "bob@a.test", b"<message/>", 2).unwrap());
        assert!(store_offline(&mut conn, "bob@a.test", b"<message id='2'/>", 2).unwrap());
        assert!(!store_offline(&mut conn, "bob@a.test", b"<message id='3'/>", 2).unwrap());
        let msgs = offline_messages(&mut conn, "bob@a.test").unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1].1, b"<message id='2'/>");
        delete_offline(&mut conn, "bob@a.test", msgs[1].0).unwrap();
        assert!(offline_messages(&mut conn, "bob@a.test")
            .unwrap()
            .is_empty());

        assert!(remove_account(&mut conn, "bob", "a.test").unwrap());
        assert!(!account_exists(&mut conn, "bob", "a.test").unwrap());
    }
}
