//! A real PostgreSQL for the tests (Debian's `postgresql` package): `initdb` into a temporary
//! folder, `pg_ctl start` on a Unix socket in it (no port to collide on), stopped when
//! dropped. As root (CI) the server runs as the package's `postgres` user (else `nobody`),
//! which PostgreSQL requires. The library's storage tests have their own (in
//! `src/core/storage/testing.rs`, not visible from here).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

pub(crate) struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

impl Postgres {
    pub(crate) fn start() -> Postgres {
        // Debian's own folder has every tool (createdb too); /usr/local/bin may link some.
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .chain([PathBuf::from("/usr/local/bin")])
            .find(|d| d.join("initdb").is_file() && d.join("createdb").is_file())
            .expect("PostgreSQL is not installed (no initdb): scripts/test.sh installs Debian's postgresql package");
        let user = (effective_uid() == 0).then(|| {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
            ["postgres", "nobody"]
                .iter()
                .find_map(|name| {
                    passwd.lines().find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        if f.len() > 3 && f[0] == *name {
                            Some((f[2].parse().ok()?, f[3].parse().ok()?))
                        } else {
                            None
                        }
                    })
                })
                .expect("a postgres or nobody user")
        });
        let dir = tempfile::Builder::new()
            .prefix("fedgate-pg")
            .tempdir()
            .unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let pg = Postgres { dir, bin, user };
        let data = pg.dir.path().join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "fedgate",
                "--auth=trust",
                "--no-sync",
            ],
        );
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off",
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("log");
        pg.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
            ],
        );
        pg
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new, empty database; its URL.
    pub(crate) fn create_database(&self, name: &str) -> String {
        let socket = self.dir.path().to_str().unwrap().to_owned();
        self.run("createdb", &["-h", &socket, "-U", "fedgate", name]);
        format!("postgres://fedgate@localhost/{name}?host={socket}")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(data)
            .output();
    }
}

fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}
