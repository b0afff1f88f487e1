//! A real XMPP client: `tests/support/client.py` (slixmpp) run as a subprocess, commands written
//! to its stdin and events read from its stdout as JSON lines (client.py lists both). The interop
//! tests log it in on Prosody, ejabberd and jabberd2 (`Peer::login` in `tests/interop/peer.rs`);
//! the core's integration tests (`tests/integration/core.rs` and the `core_*` modules) on
//! fedgate's core.
//!
//! Events a wait passes over are kept, in order, for the waits after it: each event is seen
//! once, whatever order the waits come in.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long to wait for the event a test expects.
pub const EVENT_WAIT: Duration = Duration::from_secs(30);

/// Adds to a failure message what the server side logged (a peer's log tail).
type Context = Box<dyn Fn() -> String + Send + Sync>;

/// How a client signs in: [`Login::new`], the options, then [`Login::online`] (or
/// [`Login::spawn`] to watch a sign-in that may fail).
pub struct Login {
    jid: String,
    args: Vec<String>,
    stderr_dir: Option<PathBuf>,
    context: Option<Context>,
}

impl Login {
    /// As `jid` with `password` at the c2s listener `addr` (by address, no DNS), over STARTTLS
    /// without checking the server's certificate.
    pub fn new(jid: &str, password: &str, addr: SocketAddr) -> Login {
        let args = [
            "--jid",
            jid,
            "--password",
            password,
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ]
        .map(str::to_string)
        .to_vec();
        Login {
            jid: jid.to_string(),
            args,
            stderr_dir: None,
            context: None,
        }
    }

    fn arg(mut self, args: &[&str]) -> Login {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Verifies the server's certificate for the JID's domain against this CA.
    pub fn ca(self, ca_file: &Path) -> Login {
        let ca = ca_file.display().to_string();
        self.arg(&["--ca", &ca])
    }

    /// TLS from the first byte (XEP-0368) instead of STARTTLS.
    pub fn direct_tls(self) -> Login {
        self.arg(&["--mode", "direct"])
    }

    /// Forces this SASL mechanism.
    pub fn mech(self, mechanism: &str) -> Login {
        self.arg(&["--mech", mechanism])
    }

    /// Enables XEP-0198 stream management (slixmpp's xep_0198, with resumption), as mobile
    /// clients do.
    pub fn stream_management(self) -> Login {
        self.arg(&["--sm"])
    }

    /// Gets the roster and sends initial presence before it reports online, and accepts
    /// subscription requests (asking back), as a person would; without it the test does each.
    pub fn like_a_user(self) -> Login {
        self.arg(&["--like-a-user"])
    }

    /// Registers slixmpp's PEP plugins (XEP-0060, XEP-0163, XEP-0115 caps, XEP-0048/0049,
    /// XEP-0402) for client.py's PEP commands; the client then announces caps in presence.
    pub fn pep(self) -> Login {
        self.arg(&["--pep"])
    }

    /// Registers slixmpp's XEP-0045 plugin for client.py's multi-user chat commands and
    /// events.
    pub fn muc(self) -> Login {
        self.arg(&["--muc"])
    }

    /// Creates the account with XEP-0077 in-band registration before signing in (the server
    /// offers it), after presenting an XEP-0401 invitation token when one is given.
    pub fn register(self, preauth: Option<&str>) -> Login {
        let s = self.arg(&["--register"]);
        match preauth {
            Some(t) => s.arg(&["--preauth", t]),
            None => s,
        }
    }

    /// Keeps the client's stderr in this folder (else in a temporary one, gone with the client).
    pub fn stderr_in(mut self, dir: &Path) -> Login {
        self.stderr_dir = Some(dir.to_owned());
        self
    }

    /// What a failure message adds, e.g. the tail of the server's log.
    pub fn context(mut self, context: impl Fn() -> String + Send + Sync + 'static) -> Login {
        self.context = Some(Box::new(context));
        self
    }

    /// Starts the client; its first events say whether it signed in (`online`, `failed`).
    pub fn spawn(self) -> Client {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/client.py");
        let (stderr_file, tmp) = match &self.stderr_dir {
            Some(dir) => (dir.to_owned(), None),
            None => {
                let tmp = tempfile::tempdir().unwrap();
                (tmp.path().to_owned(), Some(tmp))
            }
        };
        let stderr_file = stderr_file.join(format!(
            "client-{}.stderr",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = Command::new("python3")
            .arg(script)
            .args(&self.args)
            // INTEROP_CLIENT_DEBUG=1: slixmpp logs every stanza to the stderr file.
            .args(std::env::var_os("INTEROP_CLIENT_DEBUG").map(|_| "--debug"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the slixmpp client (scripts/test.sh installs slixmpp)");
        Client {
            stdin: child.stdin.take().unwrap(),
            events: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            backlog: VecDeque::new(),
            jid: self.jid,
            mechanism: String::new(),
            stderr_file,
            _stderr_dir: tmp,
            context: self.context,
        }
    }

    /// Starts the client and waits until it is signed in.
    pub async fn online(self) -> Client {
        let mut client = self.spawn();
        let online = client.expect("online", |_| true).await;
        client.jid = online["jid"].as_str().unwrap().to_string();
        client.mechanism = online["mechanism"].as_str().unwrap_or_default().to_string();
        client
    }
}

pub struct Client {
    child: Child,
    stdin: ChildStdin,
    events: Lines<BufReader<ChildStdout>>,
    /// Events read but not yet taken by a wait, oldest first.
    backlog: VecDeque<Value>,
    /// The client's full JID, as bound (once online).
    pub jid: String,
    /// The SASL mechanism it signed in with (once online).
    pub mechanism: String,
    stderr_file: PathBuf,
    _stderr_dir: Option<tempfile::TempDir>,
    context: Option<Context>,
}

impl Client {
    /// The client's stderr (slixmpp's warnings and tracebacks) and the failure context.
    pub fn stderr(&self) -> String {
        let mut out = std::fs::read_to_string(&self.stderr_file).unwrap_or_default();
        if let Some(context) = &self.context {
            out.push('\n');
            out.push_str(&context());
        }
        out
    }

    /// Sends one command (see client.py).
    pub async fn command(&mut self, cmd: Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("the client is running");
        self.stdin.flush().await.unwrap();
    }

    /// Runs a command and waits until the client says it is done.
    pub async fn run(&mut self, cmd: Value) {
        let name = cmd["cmd"].as_str().unwrap().to_string();
        self.command(cmd).await;
        self.expect("done", |e| e["cmd"] == name.as_str()).await;
    }

    pub async fn message(&mut self, to: &str, id: &str, body: &str) {
        self.command(json!({"cmd": "message", "to": to, "id": id, "body": body}))
            .await;
    }

    /// Reads the next event from the client: `Ok(None)` when it exited, `Err` when none came
    /// by `deadline`.
    async fn read(&mut self, deadline: tokio::time::Instant) -> Result<Option<Value>, ()> {
        let line = tokio::time::timeout_at(deadline, self.events.next_line())
            .await
            .map_err(|_| ())?
            .expect("read the client's stdout");
        Ok(line.map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))))
    }

    /// The next event within `wait`: `None` when nothing came or the client exited.
    pub async fn event_within(&mut self, wait: Duration) -> Option<Value> {
        if let Some(e) = self.backlog.pop_front() {
            return Some(e);
        }
        self.read(tokio::time::Instant::now() + wait)
            .await
            .ok()
            .flatten()
    }

    /// The first event for which `want` holds, from those passed over before or within
    /// [`EVENT_WAIT`] (`what` names it in the failure message). A sign-in failure ends the
    /// wait unless it is what `want` wants.
    pub async fn wait_for(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&want) {
            return self.backlog.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        loop {
            let e = match self.read(deadline).await {
                Ok(Some(e)) => e,
                Ok(None) => panic!(
                    "{}: the client exited while waiting for {what}; events: {:?}\nstderr:\n{}",
                    self.jid,
                    self.backlog,
                    self.stderr()
                ),
                Err(()) => panic!(
                    "{}: no {what} within {EVENT_WAIT:?}; events: {:?}\nstderr:\n{}",
                    self.jid,
                    self.backlog,
                    self.stderr()
                ),
            };
            if want(&e) {
                return e;
            }
            if e["event"] == "failed" {
                panic!(
                    "{}: the client failed ({e}) while waiting for {what}; stderr:\n{}",
                    self.jid,
                    self.stderr()
                );
            }
            self.backlog.push_back(e);
        }
    }

    /// The first event of kind `event` for which `pred` holds (see [`Client::wait_for`]).
    pub async fn expect(&mut self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(event, |e| e["event"] == event && pred(e))
            .await
    }

    /// Asserts that no event of kind `event` for which `pred` holds is waiting or arrives
    /// within `wait`.
    pub async fn expect_none(
        &mut self,
        event: &str,
        wait: Duration,
        pred: impl Fn(&Value) -> bool,
    ) {
        let matches = |v: &Value| v["event"] == event && pred(v);
        assert!(
            !self.backlog.iter().any(matches),
            "{}: unexpected {event}: {:?}",
            self.jid,
            self.backlog
        );
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.read(deadline).await {
                Ok(Some(e)) => {
                    assert!(!matches(&e), "{}: unexpected {e}", self.jid);
                    self.backlog.push_back(e);
                }
                // A client that crashed or quit sees nothing: that proves no absence.
                Ok(None) => panic!(
                    "{}: the client exited while waiting to see no {event}: {:?}",
                    self.jid, self.backlog
                ),
                Err(()) => return,
            }
        }
    }

    /// The result of the iq sent with `tag` (a disco or ping command).
    pub async fn result(&mut self, tag: &str) -> Value {
        self.wait_for(&format!("the result of {tag}"), |e| {
            e["event"] == "result" && e["tag"] == tag
        })
        .await
    }

    /// Gets the roster (which also makes this resource receive roster pushes).
    pub async fn roster(&mut self) -> Value {
        self.command(json!({"cmd": "roster_get"})).await;
        self.expect("roster", |_| true).await
    }

    /// Ends the session, sees it end, and waits for the process to exit.
    pub async fn quit(mut self) {
        self.command(json!({"cmd": "quit"})).await;
        self.expect("disconnected", |_| true).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Commands and waits the tests take again and again, each one command or one wait.
impl Client {
    /// Sends a subscription stanza of `type_` (`subscribe`, `subscribed`, ...) to `to`.
    pub async fn subscription(&mut self, to: &str, type_: &str) {
        self.run(json!({"cmd": "subscription", "to": to, "type": type_}))
            .await;
    }

    /// The next presence of `type_` (`available` when it has none) from `from`.
    pub async fn presence_from(&mut self, type_: &str, from: &str) -> Value {
        self.expect("presence", |e| e["type"] == type_ && e["from"] == from)
            .await
    }

    /// The next roster push for `jid` with this subscription.
    pub async fn push(&mut self, jid: &str, subscription: &str) -> Value {
        self.expect("roster_push", |e| {
            e["jid"] == jid && e["subscription"] == subscription
        })
        .await
    }

    /// Runs a PEP command and returns its `pep` event.
    pub async fn pep(&mut self, mut cmd: Value, tag: &str) -> Value {
        cmd["tag"] = json!(tag);
        self.command(cmd).await;
        self.expect("pep", |e| e["tag"] == tag).await
    }

    /// The next notification of `kind` for `node`.
    pub async fn pep_event(&mut self, node: &str, kind: &str) -> Value {
        self.expect("pep_event", |e| e["node"] == node && e["kind"] == kind)
            .await
    }

    /// Runs a tagged MUC command and returns its `muc_result`.
    pub async fn muc(&mut self, mut cmd: Value, tag: &str) -> Value {
        cmd["tag"] = json!(tag);
        self.command(cmd).await;
        self.expect("muc_result", |e| e["tag"] == tag).await
    }
}
