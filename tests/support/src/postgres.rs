//! A real PostgreSQL for the tests (Debian's `postgresql` package): `initdb` into a temporary
//! folder, `pg_ctl start` on a Unix socket in it (no port to collide on), stopped when
//! dropped. As root (CI) the server runs as the package's `postgres` user (else `nobody`),
//! which PostgreSQL requires. The library's storage tests have their own (in
//! `src/core/storage/testing.rs`, not visible from here).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    /// The TCP port of a TLS server ([`Postgres::start_tls`]); 0 for a socket-only one.
    port: u16,
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// A server that also listens on 127.0.0.1 (`port`, see [`Postgres::tls_url`]) and takes
    /// TCP connections only with TLS (`hostssl`), presenting `cert` and `key`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Postgres {
        Postgres::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&std::path::Path, &std::path::Path)>) -> Postgres {
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
        let port = match tls {
            Some(_) => std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            None => 0,
        };
        let pg = Postgres {
            dir,
            bin,
            user,
            port,
        };
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
        let mut options = format!(
            "-c unix_socket_directories='{}' -c fsync=off",
            pg.dir.path().display()
        );
        match tls {
            None => options.push_str(" -c listen_addresses=''"),
            Some((cert, key)) => {
                // The server reads them as its own user, and refuses a key others can read.
                for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                    let to = data.join(to);
                    std::fs::copy(from, &to).unwrap();
                    std::fs::set_permissions(
                        &to,
                        std::os::unix::fs::PermissionsExt::from_mode(0o600),
                    )
                    .unwrap();
                    if let Some((uid, gid)) = user {
                        std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
                    }
                }
                std::fs::write(
                    data.join("pg_hba.conf"),
                    "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
                )
                .unwrap();
                options.push_str(&format!(
                    " -c listen_addresses='127.0.0.1' -p {port} -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
                ));
            }
        }
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
    pub fn create_database(&self, name: &str) -> String {
        let socket = self.dir.path().to_str().unwrap().to_owned();
        self.run("createdb", &["-h", &socket, "-U", "fedgate", name]);
        format!("postgres://fedgate@localhost/{name}?host={socket}")
    }
}

impl Postgres {
    /// A new, empty database on a TLS server; its URL over TCP to `localhost`, without the
    /// TLS parameters.
    pub fn tls_url(&self, name: &str) -> String {
        let socket = self.dir.path().to_str().unwrap().to_owned();
        let port = self.port.to_string();
        self.run(
            "createdb",
            &["-h", &socket, "-p", &port, "-U", "fedgate", name],
        );
        format!("postgres://fedgate@localhost:{port}/{name}")
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
