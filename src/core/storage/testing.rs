//! Test databases: an in-memory SQLite, and a real PostgreSQL from Debian's `postgresql`
//! package, made with `initdb` in a temporary folder and serving on a Unix socket in it
//! only (no port to collide on), stopped when dropped.
//!
//! [`on_both_databases!`] turns one storage test into two, `NAME::sqlite` and
//! `NAME::postgres`. The PostgreSQL ones share one server while they overlap (each gets a
//! database of its own); the server stops when the last of them is done.
//!
//! PostgreSQL refuses to run as root: when the tests are root (CI), the server runs as the
//! `postgres` user the package creates (else `nobody`), which then owns the folder.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::{migrate, Db};

/// Where `initdb`, `pg_ctl` and `postgres` are: on the `PATH` (Debian links none there;
/// this machine has /usr/local/bin links), else the newest /usr/lib/postgresql/*/bin.
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/local/bin")])
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file());
    if let Some(d) = on_path {
        return d;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no initdb): scripts/test.sh installs Debian's postgresql package")
    })
}

/// The user the server runs as: ourselves, or an unprivileged one when we are root.
fn server_user() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if me.ok() != Some(0) {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() > 3 && f[0] == name {
                Some((f[2].parse().ok()?, f[3].parse().ok()?))
            } else {
                None
            }
        })
    };
    Some(
        entry("postgres")
            .or_else(|| entry("nobody"))
            .expect("a postgres or nobody user to run PostgreSQL as"),
    )
}

/// A PostgreSQL server of the test's own (module docs).
pub(crate) struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

impl TestPostgres {
    /// `initdb` and start; panics with the tool's output when either fails.
    pub(crate) fn start() -> TestPostgres {
        let dir = tempfile::Builder::new()
            .prefix("fedgate-pg")
            .tempdir()
            .unwrap();
        let server = TestPostgres {
            bin: bin_dir(),
            user: server_user(),
            dir,
        };
        if let Some((uid, gid)) = server.user {
            std::os::unix::fs::chown(server.dir.path(), Some(uid), Some(gid)).unwrap();
        }
        server.run(
            "initdb",
            &[
                "-D",
                &server.data().to_string_lossy(),
                "-U",
                "fedgate",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        server.start_again();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `tool`, to run as the server's user in its folder.
    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again, after [`TestPostgres::stop`]) and waits until it accepts.
    pub(crate) fn start_again(&self) {
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off \
             -c max_connections=200",
            self.socket_dir().display()
        );
        self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &self.dir.path().join("log").to_string_lossy(),
                "-o",
                &options,
            ],
        );
    }

    /// Stops the server, ending every connection (`-m fast`).
    pub(crate) fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                "fast",
                "-D",
                &self.data().to_string_lossy(),
            ],
        );
    }

    /// The URL of `database` on this server.
    pub(crate) fn url(&self, database: &str) -> String {
        format!(
            "postgres://fedgate@localhost/{database}?host={}",
            self.socket_dir().display()
        )
    }

    /// A new, empty database; its URL. Callable from an async test too.
    pub(crate) fn create_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        // On a thread of its own: the driver's runtime cannot start inside an async test's.
        let admin = self.url("postgres");
        std::thread::scope(|s| {
            s.spawn(|| {
                Db::connect_postgres(&admin)
                    .expect("connect to postgres")
                    .execute_batch(&format!("CREATE DATABASE {name}"))
                    .expect("create a database")
            })
            .join()
            .expect("create a database")
        });
        self.url(&name)
    }

    /// The server the PostgreSQL storage tests share while they overlap (module docs).
    pub(crate) fn shared() -> Arc<TestPostgres> {
        static SHARED: Mutex<Weak<TestPostgres>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shared.upgrade() {
            return s;
        }
        let s = Arc::new(TestPostgres::start());
        *shared = Arc::downgrade(&s);
        s
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.data())
            .output();
    }
}

/// A migrated test database; drops the connection before the server it may hold.
pub(crate) struct TestDb {
    db: Db,
    _server: Option<Arc<TestPostgres>>,
}

impl std::ops::Deref for TestDb {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

/// A migrated in-memory SQLite database.
pub(crate) fn sqlite() -> TestDb {
    let db = sqlite_unmigrated();
    migrate(&db).unwrap();
    db
}

/// A migrated database of its own on the shared PostgreSQL server.
pub(crate) fn postgres() -> TestDb {
    let db = postgres_unmigrated();
    migrate(&db).unwrap();
    db
}

/// An empty in-memory SQLite database, schema version 0.
pub(crate) fn sqlite_unmigrated() -> TestDb {
    TestDb {
        db: Db::Sqlite(rusqlite::Connection::open_in_memory().unwrap()),
        _server: None,
    }
}

/// An empty database of its own on the shared PostgreSQL server, schema version 0.
pub(crate) fn postgres_unmigrated() -> TestDb {
    let server = TestPostgres::shared();
    TestDb {
        db: Db::connect_postgres(&server.create_database()).expect("connect"),
        _server: Some(server),
    }
}

/// `on_both_databases! { fn name(db) { … } }`: the test `name::sqlite` runs the body on an
/// in-memory SQLite, `name::postgres` on PostgreSQL; `db` is a migrated `&Db`
/// (`fn name(db: unmigrated)`: an empty one, schema version 0).
macro_rules! on_both_databases {
    (@one $(#[$m:meta])* $name:ident $db:ident $body:block $sqlite:ident $postgres:ident) => {
        $(#[$m])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($db: &$crate::core::storage::Db) $body

            #[test]
            fn sqlite() {
                run(&$crate::core::storage::testing::$sqlite());
            }

            #[test]
            fn postgres() {
                run(&$crate::core::storage::testing::$postgres());
            }
        }
    };
    ($(#[$m:meta])* fn $name:ident($db:ident: unmigrated) $body:block $($rest:tt)*) => {
        $crate::core::storage::testing::on_both_databases!(
            @one $(#[$m])* $name $db $body sqlite_unmigrated postgres_unmigrated
        );
        $crate::core::storage::testing::on_both_databases!($($rest)*);
    };
    ($(#[$m:meta])* fn $name:ident($db:ident) $body:block $($rest:tt)*) => {
        $crate::core::storage::testing::on_both_databases!(
            @one $(#[$m])* $name $db $body sqlite postgres
        );
        $crate::core::storage::testing::on_both_databases!($($rest)*);
    };
    () => {};
}
pub(crate) use on_both_databases;
