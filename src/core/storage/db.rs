//! One connection, to SQLite or to PostgreSQL, behind one small API, so that every feature's
//! SQL is written once.
//!
//! The feature modules write their SQL in the dialect both databases share (`?N`
//! placeholders, `INSERT … ON CONFLICT … DO UPDATE/NOTHING`, `RETURNING`, `CAST`) and read
//! rows through [`Row::get`] with rusqlite's conversions. The differences live here only:
//! 1. placeholders: `?N` (and a bare `?`, numbered in order) become `$N` for PostgreSQL
//!    ([`numbered_placeholders`]);
//! 2. the schema: [`Db::execute_batch`] of a migration turns `INTEGER` into `BIGINT`, `BLOB`
//!    into `BYTEA` and `INTEGER PRIMARY KEY AUTOINCREMENT` into an identity column
//!    ([`postgres_schema`]), so that [`super::MIGRATIONS`] is one list for both;
//! 3. values: both sides speak rusqlite's [`Value`] (null, integer, real, text, blob); a
//!    PostgreSQL parameter is encoded as whatever type the server inferred for it (an integer
//!    into `int4` or `bool`), a PostgreSQL column is read back as a [`Value`];
//! 4. the schema version: `PRAGMA user_version` in SQLite, the one row of `fedgate_schema`
//!    in PostgreSQL ([`Db::schema_version`]);
//! 5. relaxed durability for the archive: `synchronous=NORMAL` / `synchronous_commit=off`
//!    ([`Db::with_relaxed_durability`]).
//!
//! # A PostgreSQL that is down
//! The connection is opened again when it is found closed, at most once per backoff step
//! (0.1 s doubling to 5 s): until then every call fails at once with
//! [`SqlError::Unavailable`] instead of waiting, so that a sign-in gets
//! `<temporary-auth-failure/>` and a stanza `internal-server-error` straight away.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Deref;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql as PgToSql, Type};
use rusqlite::types::{FromSqlError, ToSqlOutput, Value, ValueRef};
use rusqlite::ToSql;

/// The first wait before opening a lost PostgreSQL connection again; doubled per failure.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two attempts to open a lost PostgreSQL connection.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// The most prepared PostgreSQL statements kept per connection (the core has ~80 distinct
/// queries; the archive's are built per filter combination).
const STATEMENT_CACHE: usize = 256;

/// A failed database operation. Non-fatal: the stanza or sign-in that needed it fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// SQLite refused a statement or failed to run it.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused a statement, or the connection failed.
    #[error("postgresql: {}", postgres_text(.0))]
    Postgres(#[from] postgres::Error),
    /// PostgreSQL cannot be reached; the next attempt to connect is after the backoff.
    #[error("postgresql is unreachable ({reason}); next attempt in {retry_in:?}")]
    Unavailable {
        /// Why the last attempt to connect failed.
        reason: String,
        /// Time left until the next attempt.
        retry_in: Duration,
    },
    /// `query_row` found nothing (see [`OptionalExtension::optional`]).
    #[error("the query returned no rows")]
    NoRows,
    /// A column is missing from the row or does not convert to the type asked for.
    #[error("column {index}: {source}")]
    Column {
        /// The zero-based column position.
        index: usize,
        /// What the conversion found.
        source: FromSqlError,
    },
    /// A parameter cannot be sent to PostgreSQL.
    #[error("parameter {index}: {reason}")]
    Parameter {
        /// The zero-based parameter position.
        index: usize,
        /// What is wrong with its value.
        reason: &'static str,
    },
    /// The URL's TLS settings cannot be used (an unreadable `sslrootcert`, ...). Fatal for
    /// the start.
    #[error("postgresql TLS: {0}")]
    Tls(String),
}

/// Where PostgreSQL is and how to reach it: the parsed URL and, when it asks for TLS, a
/// connector that verifies the server's certificate.
///
/// TLS is used with `sslmode=require`, or libpq's `verify-ca`/`verify-full`, which mean the
/// same here: fedgate always checks the certificate's chain and the host's name, against
/// `sslrootcert` (a PEM file of CA certificates) when the URL names one, else the Mozilla
/// roots of webpki-roots. `prefer` and `disable`, and a Unix socket, connect in plaintext, as
/// before: an unverified "maybe TLS" would protect nothing.
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl PgTarget {
    /// Reads a `postgres://` URL, taking out the TLS parameters fedgate handles itself (type
    /// docs); sets a 5 s connect timeout and the application name unless the URL does. An
    /// `sslrootcert` without TLS required is an error.
    pub fn parse(url: &str) -> Result<PgTarget, SqlError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut root_file = None;
        let mut verify = false;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslrootcert", path)) => root_file = Some(path.to_owned()),
                Some(("sslmode", "verify-ca" | "verify-full")) => {
                    verify = true;
                    kept.push("sslmode=require".to_owned());
                }
                _ => kept.push(pair.to_owned()),
            }
        }
        let url = match kept.is_empty() {
            true => base.to_owned(),
            false => format!("{base}?{}", kept.join("&")),
        };
        let mut config: postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("fedgate-core");
        }
        let tls = match config.get_ssl_mode() {
            postgres::config::SslMode::Require => Some(tls_connector(root_file.as_deref())?),
            _ if verify || root_file.is_some() => {
                return Err(SqlError::Tls(
                    "sslrootcert is set but TLS is not required; add sslmode=verify-full".into(),
                ))
            }
            _ => None,
        };
        Ok(PgTarget { config, tls })
    }

    /// The parsed URL (without the TLS parameters fedgate handles itself).
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// Opens a connection (blocking; not on a runtime's thread).
    pub fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        }
    }
}

/// A rustls client that trusts the CA certificates of `root_file`, or the webpki roots.
fn tls_connector(
    root_file: Option<&str>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, SqlError> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match root_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| SqlError::Tls(format!("sslrootcert {path}: {e}")))?;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| SqlError::Tls(format!("sslrootcert {path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| SqlError::Tls(format!("sslrootcert {path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(SqlError::Tls(format!(
                    "sslrootcert {path}: no CERTIFICATE block found; name a PEM file of CA certificates"
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SqlError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A PostgreSQL error with the server's message (the driver's own text is only its kind).
fn postgres_text(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{}: {}", db.severity(), db.message()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

impl SqlError {
    /// The database could not be reached (as opposed to a statement that failed): what the
    /// `kind="unavailable"` storage error metric counts.
    pub fn is_unavailable(&self) -> bool {
        match self {
            SqlError::Unavailable { .. } => true,
            SqlError::Postgres(e) => e.is_closed() || e.as_db_error().is_none(),
            SqlError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
            ),
            _ => false,
        }
    }
}

/// `query_row(…).optional()`: no row is `Ok(None)`, as with rusqlite's trait of that name.
pub trait OptionalExtension<T> {
    /// [`SqlError::NoRows`] becomes `Ok(None)`; other errors stay errors.
    fn optional(self) -> Result<Option<T>, SqlError>;
}

impl<T> OptionalExtension<T> for Result<T, SqlError> {
    fn optional(self) -> Result<Option<T>, SqlError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One row of a result, its columns as values.
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    /// Column `index` converted with rusqlite's [`rusqlite::types::FromSql`] (integers to
    /// `i64`, `u32`, `bool`; text to `String`; blobs to `Vec<u8>`; `Option` for a null).
    pub fn get<I: ColumnIndex, T: rusqlite::types::FromSql>(
        &self,
        index: I,
    ) -> Result<T, SqlError> {
        let index = index.index();
        let v = self.values.get(index).ok_or(SqlError::Column {
            index,
            source: FromSqlError::InvalidType,
        })?;
        T::column_result(ValueRef::from(v)).map_err(|source| SqlError::Column { index, source })
    }

    /// The row's values, to copy it elsewhere.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }
}

/// A column's position; a trait (for `usize` only) so that `r.get::<_, T>(0)` reads as with
/// rusqlite.
pub trait ColumnIndex {
    /// The zero-based position.
    fn index(self) -> usize;
}

impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// A database connection (see the module docs). Used from one thread: calls take `&self`,
/// and a [`Tx`] borrows the connection like any other caller.
pub enum Db {
    /// A SQLite file, in WAL mode.
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL server; in a `RefCell` because a lost connection is replaced from `&self`,
    /// boxed because its client is several times the size of a SQLite connection.
    Postgres(Box<RefCell<Postgres>>),
}

/// A PostgreSQL connection that is opened again after it was lost (module docs).
pub struct Postgres {
    target: PgTarget,
    client: Option<postgres::Client>,
    /// Prepared statements by their SQL as written (`?N`), dropped with the connection.
    statements: HashMap<String, postgres::Statement>,
    retry_at: Instant,
    delay: Duration,
}

impl Db {
    /// Connects to PostgreSQL. The first connection must succeed (a wrong URL or password
    /// should stop the start); later ones are retried with backoff.
    pub fn connect_postgres(url: &str) -> Result<Db, SqlError> {
        let target = PgTarget::parse(url)?;
        let client = target.connect()?;
        Ok(Db::Postgres(Box::new(RefCell::new(Postgres {
            target,
            client: Some(client),
            statements: HashMap::new(),
            retry_at: Instant::now(),
            delay: RECONNECT_MIN,
        }))))
    }

    /// Runs one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn ToSql]) -> Result<usize, SqlError> {
        match self {
            Db::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(params)?),
            Db::Postgres(pg) => {
                let values = pg_params(params)?;
                let n = pg
                    .borrow_mut()
                    .run(sql, |client, st| client.execute(st, &pg_refs(&values)))?;
                Ok(n as usize)
            }
        }
    }

    /// Every row of a query.
    pub fn query(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Row>, SqlError> {
        match self {
            Db::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.column_count();
                let mut rows = st.query(params)?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let values = (0..n)
                        .map(|i| r.get::<_, Value>(i))
                        .collect::<Result<_, _>>()?;
                    out.push(Row { values });
                }
                Ok(out)
            }
            Db::Postgres(pg) => {
                let values = pg_params(params)?;
                let rows = pg
                    .borrow_mut()
                    .run(sql, |client, st| client.query(st, &pg_refs(&values)))?;
                rows.iter()
                    .map(|r| {
                        let values = (0..r.len())
                            .map(|i| r.try_get::<_, PgValue>(i).map(|v| v.0))
                            .collect::<Result<_, _>>()?;
                        Ok(Row { values })
                    })
                    .collect()
            }
        }
    }

    /// Every row of a query, one at a time, without holding the result in memory (for
    /// copying a whole table); stops at the first error of `f`.
    pub fn for_each_row(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        mut f: impl FnMut(Row) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        match self {
            Db::Sqlite(c) => {
                let mut st = c.prepare(sql)?;
                let n = st.column_count();
                let mut rows = st.query(params)?;
                while let Some(r) = rows.next()? {
                    let values = (0..n)
                        .map(|i| r.get::<_, Value>(i))
                        .collect::<Result<_, _>>()?;
                    f(Row { values })?;
                }
                Ok(())
            }
            Db::Postgres(pg) => {
                use postgres::fallible_iterator::FallibleIterator;
                let values = pg_params(params)?;
                let mut failed = None;
                pg.borrow_mut().run(sql, |client, st| {
                    let mut rows = client.query_raw(st, values.iter())?;
                    while let Some(r) = rows.next()? {
                        let values = (0..r.len())
                            .map(|i| r.try_get::<_, PgValue>(i).map(|v| v.0))
                            .collect::<Result<_, _>>()?;
                        if let Err(e) = f(Row { values }) {
                            failed = Some(e);
                            break;
                        }
                    }
                    Ok(())
                })?;
                failed.map_or(Ok(()), Err)
            }
        }
    }

    /// The first row of a query, through `f`; [`SqlError::NoRows`] when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        f: impl FnOnce(&Row) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let rows = self.query(sql, params)?;
        f(rows.first().ok_or(SqlError::NoRows)?)
    }

    /// Every row of a query, each through `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        f: impl FnMut(&Row) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, SqlError> {
        self.query(sql, params)?.iter().map(f).collect()
    }

    /// Runs several statements without parameters (a migration), translated to the
    /// PostgreSQL schema dialect there ([`postgres_schema`]).
    pub fn execute_batch(&self, sql: &str) -> Result<(), SqlError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Db::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let sql = postgres_schema(sql);
                let client = pg.client()?;
                let r = client.batch_execute(&sql);
                // Prepared statements may refer to tables that changed.
                pg.statements.clear();
                pg.note(r)
            }
        }
    }

    /// A statement of the session, not the schema (`BEGIN`, `COMMIT`, `SET`): unlike
    /// [`Db::execute_batch`], untranslated, and the prepared statements stay.
    fn control(&self, sql: &str) -> Result<(), SqlError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Db::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let r = pg.client()?.batch_execute(sql);
                pg.note(r)
            }
        }
    }

    /// Opens a transaction: committed by [`Tx::commit`], rolled back when dropped without.
    pub fn transaction(&self) -> Result<Tx<'_>, SqlError> {
        self.control("BEGIN")?;
        Ok(Tx {
            db: self,
            done: false,
        })
    }

    /// The number of migrations applied. In PostgreSQL, the version table is created here
    /// when missing; call it inside the migration's transaction after [`Db::lock_schema`].
    pub fn schema_version(&self) -> Result<u32, SqlError> {
        let v: i64 = match self {
            Db::Sqlite(_) => self.query_row("PRAGMA user_version", &[], |r| r.get(0))?,
            Db::Postgres(_) => self
                .query_row("SELECT version FROM fedgate_schema", &[], |r| r.get(0))
                .optional()?
                .unwrap_or(0),
        };
        Ok(u32::try_from(v).unwrap_or(u32::MAX))
    }

    /// Serialises migrations of several processes on one PostgreSQL (two cores starting at
    /// once): takes the version table's lock until the transaction ends. In SQLite the
    /// transaction's write lock does that already.
    pub fn lock_schema(&self) -> Result<(), SqlError> {
        if let Db::Postgres(_) = self {
            // (The notice that the table exists is not worth a log line.)
            self.execute_batch(
                "SET LOCAL client_min_messages = warning;
                 CREATE TABLE IF NOT EXISTS fedgate_schema (version BIGINT NOT NULL);
                 LOCK TABLE fedgate_schema IN EXCLUSIVE MODE;",
            )?;
        }
        Ok(())
    }

    /// Records that `version` migrations are applied; call it in the migration's
    /// transaction.
    pub fn set_schema_version(&self, version: u32) -> Result<(), SqlError> {
        match self {
            Db::Sqlite(_) => self.execute_batch(&format!("PRAGMA user_version = {version}")),
            Db::Postgres(_) => {
                self.execute("DELETE FROM fedgate_schema", &[])?;
                self.execute(
                    "INSERT INTO fedgate_schema (version) VALUES (?1)",
                    &[&i64::from(version)],
                )?;
                Ok(())
            }
        }
    }

    /// Runs `f` (which opens its own transaction) with commits that do not wait for the disk
    /// (SQLite `synchronous=NORMAL`, PostgreSQL `synchronous_commit=off`): a crash of the
    /// machine may lose the last moments' commits, never corrupts; the usual durability is
    /// restored after.
    pub fn with_relaxed_durability<T>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let (relax, restore) = match self {
            Db::Sqlite(_) => ("PRAGMA synchronous = NORMAL", "PRAGMA synchronous = FULL"),
            Db::Postgres(_) => (
                "SET synchronous_commit = off",
                "SET synchronous_commit = on",
            ),
        };
        self.control(relax)?;
        let result = f(self);
        self.control(restore)?;
        result
    }

    /// The tables of the schema, by name, the version table left out (for copying).
    pub fn tables(&self) -> Result<Vec<String>, SqlError> {
        let sql = match self {
            Db::Sqlite(_) => {
                "SELECT name FROM sqlite_master WHERE type = 'table'
                   AND name NOT LIKE 'sqlite_%' ORDER BY name"
            }
            Db::Postgres(_) => {
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
                   AND table_name <> 'fedgate_schema' ORDER BY table_name"
            }
        };
        self.query_map(sql, &[], |r| r.get(0))
    }

    /// A table's columns, in order.
    pub fn columns(&self, table: &str) -> Result<Vec<String>, SqlError> {
        let sql = match self {
            Db::Sqlite(_) => "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
            Db::Postgres(_) => {
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?1
                 ORDER BY ordinal_position"
            }
        };
        self.query_map(sql, &[&table], |r| r.get(0))
    }

    /// After rows were copied in with their ids: moves each identity column's sequence past
    /// the highest id, so that the next insert does not collide (PostgreSQL only).
    pub fn reset_identities(&self, table: &str) -> Result<(), SqlError> {
        if let Db::Postgres(_) = self {
            let identities: Vec<String> = self.query_map(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?1
                   AND is_identity = 'YES'",
                &[&table],
                |r| r.get(0),
            )?;
            for col in identities {
                self.execute_batch(&format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{col}'),
                       COALESCE((SELECT MAX({col}) FROM {table}), 0) + 1, false)"
                ))?;
            }
        }
        Ok(())
    }
}

/// A transaction on a [`Db`]; derefs to it, so the feature functions take either.
pub struct Tx<'a> {
    db: &'a Db,
    done: bool,
}

impl Tx<'_> {
    /// Commits the transaction; without it, dropping the [`Tx`] rolls back.
    pub fn commit(mut self) -> Result<(), SqlError> {
        self.done = true;
        self.db.control("COMMIT")
    }
}

impl Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            // On a lost connection there is nothing to roll back: the server did.
            let _ = self.db.control("ROLLBACK");
        }
    }
}

impl Postgres {
    /// The open connection, opening it again after a loss (module docs).
    fn client(&mut self) -> Result<&mut postgres::Client, SqlError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
            self.statements.clear();
        }
        if self.client.is_none() {
            let now = Instant::now();
            if now < self.retry_at {
                return Err(SqlError::Unavailable {
                    reason: "the connection was lost".into(),
                    retry_in: self.retry_at - now,
                });
            }
            match self.target.connect() {
                Ok(c) => {
                    tracing::info!("postgresql: connected again");
                    self.delay = RECONNECT_MIN;
                    self.client = Some(c);
                }
                Err(e) => {
                    self.retry_at = now + self.delay;
                    let retry_in = self.delay;
                    self.delay = (self.delay * 2).min(RECONNECT_MAX);
                    tracing::warn!(
                        "postgresql: cannot connect ({e}); next attempt in {retry_in:?}"
                    );
                    return Err(SqlError::Unavailable {
                        reason: e.to_string(),
                        retry_in,
                    });
                }
            }
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Prepares `sql` (cached) and runs `f` with it.
    fn run<T>(
        &mut self,
        sql: &str,
        f: impl FnOnce(&mut postgres::Client, &postgres::Statement) -> Result<T, postgres::Error>,
    ) -> Result<T, SqlError> {
        self.client()?;
        let st = match self.statements.get(sql) {
            Some(st) => st.clone(),
            None => {
                let client = self.client.as_mut().expect("connected above");
                let r = client.prepare(&numbered_placeholders(sql));
                let st = self.note(r)?;
                if self.statements.len() >= STATEMENT_CACHE {
                    self.statements.clear();
                }
                self.statements.insert(sql.to_owned(), st.clone());
                st
            }
        };
        let client = self.client.as_mut().expect("connected above");
        let r = f(client, &st);
        self.note(r)
    }

    /// Passes a result on; a failure that closed the connection (the server stopped, the
    /// network broke) is [`SqlError::Unavailable`], and the next call connects again.
    fn note<T>(&mut self, r: Result<T, postgres::Error>) -> Result<T, SqlError> {
        match r {
            Err(e) if self.client.as_ref().is_some_and(|c| c.is_closed()) => {
                let reason = postgres_text(&e);
                tracing::warn!("postgresql: the connection was lost ({reason})");
                self.client = None;
                self.statements.clear();
                self.retry_at = Instant::now();
                Err(SqlError::Unavailable {
                    reason,
                    retry_in: Duration::ZERO,
                })
            }
            r => Ok(r?),
        }
    }
}

/// rusqlite parameters as values PostgreSQL can encode.
fn pg_params(params: &[&dyn ToSql]) -> Result<Vec<PgValue>, SqlError> {
    params
        .iter()
        .enumerate()
        .map(|(index, p)| match p.to_sql()? {
            ToSqlOutput::Borrowed(v) => {
                Value::try_from(v)
                    .map(PgValue)
                    .map_err(|_| SqlError::Parameter {
                        index,
                        reason: "text that is not UTF-8",
                    })
            }
            ToSqlOutput::Owned(v) => Ok(PgValue(v)),
            _ => Err(SqlError::Parameter {
                index,
                reason: "not a plain value",
            }),
        })
        .collect()
}

fn pg_refs(values: &[PgValue]) -> Vec<&(dyn PgToSql + Sync)> {
    values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect()
}

/// A value crossing to or from PostgreSQL, converted to the type the server uses.
#[derive(Debug)]
struct PgValue(Value);

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl PgToSql for PgValue {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match &self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT8 => PgToSql::to_sql(&i, ty, out),
                Type::INT4 => PgToSql::to_sql(&i32::try_from(*i)?, ty, out),
                Type::INT2 => PgToSql::to_sql(&i16::try_from(*i)?, ty, out),
                Type::BOOL => PgToSql::to_sql(&(*i != 0), ty, out),
                Type::FLOAT8 => PgToSql::to_sql(&(*i as f64), ty, out),
                _ => PgToSql::to_sql(&i.to_string(), ty, out),
            },
            Value::Real(f) => PgToSql::to_sql(&f, ty, out),
            Value::Text(s) => PgToSql::to_sql(&s, ty, out),
            Value::Blob(b) => PgToSql::to_sql(&b, ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for PgValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<PgValue, BoxError> {
        Ok(PgValue(match *ty {
            Type::BOOL => Value::Integer(i64::from(bool::from_sql(ty, raw)?)),
            Type::INT2 => Value::Integer(i64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => Value::Integer(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => Value::Integer(i64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::BYTEA => Value::Blob(Vec::<u8>::from_sql(ty, raw)?),
            _ => Value::Text(String::from_sql(ty, raw)?),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<PgValue, BoxError> {
        Ok(PgValue(Value::Null))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::BOOL
                | Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::FLOAT4
                | Type::FLOAT8
                | Type::BYTEA
        ) || <String as FromSql>::accepts(ty)
    }
}

/// `?N` and bare `?` placeholders as PostgreSQL's `$N` (outside quoted text).
pub fn numbered_placeholders(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1;
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                out.push('$');
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    while let Some(d) = chars.next_if(char::is_ascii_digit) {
                        out.push(d);
                    }
                } else {
                    out.push_str(&next.to_string());
                    next += 1;
                }
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// A migration written for SQLite in PostgreSQL's types: 64-bit integers (SQLite's
/// `INTEGER` is 64-bit; PostgreSQL's is 32), `BYTEA` for blobs, identity columns for
/// `AUTOINCREMENT` keys. Applies to the upper-case type names the schema is written with.
pub fn postgres_schema(sql: &str) -> String {
    let sql = sql.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    );
    let mut out = String::with_capacity(sql.len() + 32);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "INTEGER" => "BIGINT",
            "BLOB" => "BYTEA",
            w => w,
        });
        word.clear();
    };
    for c in sql.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgresql_outside_quotes() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE a = ?1 AND b = ?12 OR c = ?1"),
            "SELECT a FROM t WHERE a = $1 AND b = $12 OR c = $1"
        );
        assert_eq!(
            numbered_placeholders("WHERE x = ? AND y = '?' AND z IN (?, ?)"),
            "WHERE x = $1 AND y = '?' AND z IN ($2, $3)"
        );
    }

    #[test]
    fn the_schema_is_translated_word_by_word() {
        assert_eq!(
            postgres_schema(
                "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, b BLOB, \
                 INTEGERS TEXT)"
            ),
            "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
             n BIGINT, b BYTEA, INTEGERS TEXT)"
        );
    }
}
