//! One active core per PostgreSQL database; the others wait as standbys and take over when it
//! dies.
//!
//! A core's sessions live in its process, so two cores serving the same domains at once would
//! split one account's resources between them and fight over the gateway's component links. A
//! core on PostgreSQL therefore takes a session-level advisory lock
//! (`pg_try_advisory_lock`, PostgreSQL §9.27.10) on a connection of its own before it attaches
//! to a gateway or opens its c2s listeners:
//!
//! 1. The first core gets the lock and becomes active.
//! 2. Another core asks once a second and waits as a standby: no component link, no c2s port
//!    (clients are refused and try the next address their SRV records give), `/readyz` 503.
//! 3. When the active core's process ends, however it ends (SIGKILL included), PostgreSQL ends
//!    its session and releases the lock; the standby gets it at its next try and starts. The
//!    gateway must let the new core's link replace a stale one (`replace_on_conflict = true`
//!    on its backend), for an active core whose host vanished without closing its sockets.
//! 4. The active core checks its lock connection once a second. When it is lost (the
//!    database restarted, a network cut), it connects again and takes the lock again; if a
//!    standby took it meanwhile, this core has lost ([`Leadership::lost`]) and must stop, so
//!    that only one core serves. While the database cannot be reached at all, the active core
//!    keeps serving: no other core can take the lock then either.
//!
//! SQLite needs none of this: its file belongs to one machine.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::config::Database;
use super::storage::{PgTarget, StorageError};

/// The advisory lock's key: one per database, whatever the domains ("fedgate" in ASCII).
const LOCK_KEY: i64 = 0x0066_6564_6761_7465;
/// How often a standby asks for the lock, and how often the active core checks its
/// connection: the takeover time after the active core dies is at most about this.
const POLL: Duration = Duration::from_secs(1);

/// The lock, held by a thread of its own for as long as this value lives.
pub struct Leadership {
    lost: CancellationToken,
    /// Dropped with the value: the thread closes its connection, which releases the lock.
    _release: std::sync::mpsc::Sender<()>,
}

impl Leadership {
    /// Waits until this core holds the lock on `url`'s database. `on_standby` is called once
    /// if another core holds it first. Fails when the database cannot be reached at the first
    /// attempt (a wrong URL should stop the start, as it does for the storage).
    pub async fn acquire(
        url: &str,
        on_standby: impl FnOnce() + Send + 'static,
    ) -> Result<Leadership, StorageError> {
        let database = Database::Postgres(url.to_owned()).to_string();
        let open_error = move |e: postgres::Error| StorageError::Open {
            database: database.clone(),
            source: e.into(),
        };
        let target = PgTarget::parse(url).map_err(|source| StorageError::Open {
            database: Database::Postgres(url.to_owned()).to_string(),
            source,
        })?;
        let lost = CancellationToken::new();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (active, is_active) = oneshot::channel();
        let lost2 = lost.clone();
        // The blocking driver runs a runtime of its own, which cannot start on the core's
        // threads: even the first connection is made by the lock thread.
        std::thread::Builder::new()
            .name("fedgate-core-lock".into())
            .spawn(move || match target.connect() {
                Ok(first) => hold(target, first, on_standby, active, released, lost2),
                Err(e) => {
                    let _ = active.send(Err(open_error(e)));
                }
            })
            .map_err(|_| StorageError::Gone)?;
        match is_active.await {
            Ok(Ok(())) => Ok(Leadership {
                lost,
                _release: release,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StorageError::Gone),
        }
    }

    /// Cancelled when another core took the lock while this one had lost its connection:
    /// this core must stop serving.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }
}

/// The lock thread: waits for the lock, then keeps it (and takes it again after a lost
/// connection) until `released` says the core is done.
fn hold(
    target: PgTarget,
    first: postgres::Client,
    on_standby: impl FnOnce(),
    active: oneshot::Sender<Result<(), StorageError>>,
    released: std::sync::mpsc::Receiver<()>,
    lost: CancellationToken,
) {
    let mut client = Some(first);
    let mut on_standby = Some(on_standby);
    let mut active = Some(active);
    loop {
        // `Err` from the channel: the Leadership was dropped; `Ok`: never sent.
        let done = || {
            matches!(
                released.recv_timeout(POLL),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
            )
        };
        let Some(c) = client.as_mut().filter(|c| !c.is_closed()) else {
            client = target.connect().ok();
            if client.is_none() && done() {
                return;
            }
            continue;
        };
        let holds = match c.query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY]) {
            Ok(row) => row.get::<_, bool>(0),
            Err(e) => {
                tracing::debug!("core lock: {e}");
                client = None;
                continue;
            }
        };
        if holds {
            if let Some(tx) = active.take() {
                let _ = tx.send(Ok(()));
            } else {
                tracing::info!("core lock taken again after the database connection was lost");
            }
            // Keep it: a cheap query per poll shows that the session (and so the lock) lives.
            loop {
                if done() {
                    return;
                }
                if client
                    .as_mut()
                    .is_none_or(|c| c.simple_query("SELECT 1").is_err())
                {
                    tracing::warn!(
                        "core lock: the database connection was lost; taking the lock again when it is back"
                    );
                    client = None;
                    break;
                }
            }
        } else if active.is_none() {
            tracing::error!(
                "core lock: another fedgate core took over this database while the connection was lost; this core stops"
            );
            lost.cancel();
            return;
        } else {
            if let Some(f) = on_standby.take() {
                tracing::info!(
                    "standby: another fedgate core is active on this database; taking over when it stops"
                );
                f();
            }
            if done() {
                return;
            }
        }
    }
}
