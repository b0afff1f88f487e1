//! `fedgate core migrate --from DATABASE --to DATABASE`: copies a deployment's data, every
//! table of the schema, from one database into another, e.g. from the SQLite file to
//! PostgreSQL (or back, for a backup).
//!
//! 1. Both are opened as the core opens them, so both reach the current schema version (the
//!    source is migrated in place first, as the next start of the core would).
//! 2. The target must be empty: a table with rows there refuses the copy, naming it, so that
//!    nothing is merged into or over a deployment by mistake.
//! 3. All tables are copied in one transaction of the target, rows streamed from the source;
//!    a failure leaves the target empty. Identity columns (offline message ids, PEP item
//!    sequence numbers) keep their values, and PostgreSQL's sequences are moved past them.
//!
//! The core should be stopped meanwhile: what it writes during the copy may be missed.

use super::{open_db, Db, SqlError, StorageError, ToSql, Value};
use crate::core::config::Database;

/// Why a copy did not happen; nothing was written to the target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The target has rows already: copying would mix two databases' accounts and ids.
    #[error(
        "{target} is not empty (table {table} has {rows} rows); copy into a new, empty database"
    )]
    TargetNotEmpty {
        /// The target database, without its password.
        target: String,
        /// The first table found with rows.
        table: String,
        /// How many rows it has.
        rows: i64,
    },
    /// Source and target are one database (its name, without a password).
    #[error("--from and --to name the same database ({0})")]
    SameDatabase(String),
    /// A database could not be opened or migrated, or the transaction failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Reading or inserting a table's rows failed; the transaction is rolled back.
    #[error("copying {table}: {source}")]
    Table {
        /// The table being copied.
        table: String,
        /// The statement that failed.
        source: SqlError,
    },
}

/// Copies everything from `from` into the empty `to`; the rows copied, per table.
pub fn copy(from: &Database, to: &Database) -> Result<Vec<(String, u64)>, CopyError> {
    if from == to {
        return Err(CopyError::SameDatabase(from.to_string()));
    }
    let source = open_db(from)?;
    let target = open_db(to)?;
    let tables = target.tables().map_err(StorageError::from)?;
    for table in &tables {
        let rows: i64 = target
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), &[], |r| r.get(0))
            .map_err(StorageError::from)?;
        if rows > 0 {
            return Err(CopyError::TargetNotEmpty {
                target: to.to_string(),
                table: table.clone(),
                rows,
            });
        }
    }
    let tx = target.transaction().map_err(StorageError::from)?;
    let mut copied = Vec::with_capacity(tables.len());
    for table in tables {
        let n = copy_table(&source, &tx, &table).map_err(|source| CopyError::Table {
            table: table.clone(),
            source,
        })?;
        copied.push((table, n));
    }
    tx.commit().map_err(StorageError::from)?;
    Ok(copied)
}

/// Streams one table's rows into the target, column by column name.
fn copy_table(source: &Db, target: &Db, table: &str) -> Result<u64, SqlError> {
    let columns = target.columns(table)?.join(", ");
    let placeholders = (1..=target.columns(table)?.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let insert = format!("INSERT INTO {table} ({columns}) VALUES ({placeholders})");
    let mut n = 0;
    source.for_each_row(&format!("SELECT {columns} FROM {table}"), &[], |row| {
        let values: Vec<Value> = row.into_values();
        let params: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
        target.execute(&insert, &params)?;
        n += 1;
        Ok(())
    })?;
    target.reset_identities(table)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestPostgres;
    use super::super::{
        create_account, credentials, offline_messages, put_roster_item, store_offline,
    };
    use super::*;
    use crate::core::mam::store::{archive, query, ArchiveLimits, NewMessage, Query};
    use crate::core::roster::RosterItem;
    use crate::core::sasl::Credentials;

    /// Some of everything: an account, a roster item, offline messages, an archived message,
    /// a vCard row, a blocklist entry, PEP and private XML rows.
    fn fill(db: &Db) -> Credentials {
        let c = Credentials::derive("pw", 4096);
        create_account(db, "alice", "a.test", &c).unwrap();
        put_roster_item(db, "alice@a.test", &RosterItem::new("bob@b.test")).unwrap();
        store_offline(db, "alice@a.test", b"<message id='1'/>", 10).unwrap();
        store_offline(db, "alice@a.test", b"<message id='2'/>", 10).unwrap();
        let limits = ArchiveLimits {
            retention: std::time::Duration::from_secs(3600),
            max_messages: 10,
        };
        let m = NewMessage {
            owner: "alice@a.test",
            with_bare: "bob@b.test",
            with_full: "bob@b.test/r",
            stanza: b"<message><body>hi</body></message>",
        };
        archive(db, &m, &limits, super::super::now() * 1000).unwrap();
        for sql in [
            "INSERT INTO vcards (owner, xml, photo_hash) VALUES ('alice@a.test', X'3C762F3E', NULL)",
            "INSERT INTO blocklist (owner, jid) VALUES ('alice@a.test', 'spam@c.test')",
            "INSERT INTO pep_nodes (owner, node, access_model, persist_items, max_items, send_last,
               created) VALUES ('alice@a.test', 'n', 'presence', 1, 10, 'never', 0)",
            "INSERT INTO pep_items (owner, node, item_id, publisher, payload, published)
               VALUES ('alice@a.test', 'n', 'i', 'alice@a.test', X'3C702F3E', 0)",
            "INSERT INTO private_xml (owner, name, ns, payload)
               VALUES ('alice@a.test', 'p', 'urn:x', X'3C702F3E')",
        ] {
            db.execute_batch(sql).unwrap();
        }
        c
    }

    /// Every table's rows, in a canonical order, for comparing two databases.
    fn dump(db: &Db) -> Vec<(String, Vec<Vec<Value>>)> {
        db.tables()
            .unwrap()
            .into_iter()
            .map(|t| {
                let cols = db.columns(&t).unwrap().join(", ");
                let mut rows = db
                    .query(&format!("SELECT {cols} FROM {t}"), &[])
                    .unwrap()
                    .into_iter()
                    .map(|r| r.into_values())
                    .collect::<Vec<_>>();
                rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
                (t, rows)
            })
            .collect()
    }

    /// SQLite → PostgreSQL → SQLite: every table arrives whole, the data works (a sign-in's
    /// credentials, offline ids, the archive), new rows get fresh ids, and a second copy into
    /// the now non-empty database is refused.
    #[test]
    fn a_deployment_round_trips_through_postgresql_and_a_full_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Database::Sqlite(dir.path().join("core.sqlite"));
        let creds = fill(&open_db(&sqlite).unwrap());
        let server = TestPostgres::shared();
        let pg = Database::Postgres(server.create_database());

        let copied = copy(&sqlite, &pg).unwrap();
        let rows = |name: &str| copied.iter().find(|(t, _)| t == name).unwrap().1;
        assert_eq!(rows("accounts"), 1);
        assert_eq!(rows("offline"), 2);
        assert_eq!(rows("archive"), 1);
        let (a, b) = (open_db(&sqlite).unwrap(), open_db(&pg).unwrap());
        assert_eq!(dump(&a), dump(&b));
        assert_eq!(credentials(&b, "alice", "a.test").unwrap(), Some(creds));
        let page = query(
            &b,
            "alice@a.test",
            &Query {
                max: 10,
                ..Query::default()
            },
            0,
        )
        .unwrap();
        assert_eq!(page.items.len(), 1);
        // The identity continues after the copied ids.
        store_offline(&b, "alice@a.test", b"<message id='3'/>", 10).unwrap();
        let ids: Vec<i64> = offline_messages(&b, "alice@a.test")
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids[2] > ids[1], "{ids:?}");

        match copy(&sqlite, &pg) {
            Err(e @ CopyError::TargetNotEmpty { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("is not empty") && !text.contains('\n'),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }

        // And back into a new SQLite file: the same data, the new message included.
        let back = Database::Sqlite(dir.path().join("back.sqlite"));
        copy(&pg, &back).unwrap();
        assert_eq!(dump(&open_db(&pg).unwrap()), dump(&open_db(&back).unwrap()));
        assert!(matches!(
            copy(&back, &back),
            Err(CopyError::SameDatabase(_))
        ));
    }
}
