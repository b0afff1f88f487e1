//! A real XMPP client logged in on a peer: `tests/interop/client.py` (slixmpp) run as a
//! subprocess, commands written to its stdin and events read from its stdout as JSON lines.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::peer::{Peer, PASSWORD, USER};

/// How long to wait for one event from the client.
pub const EVENT_WAIT: Duration = Duration::from_secs(30);

pub struct Client {
    child: Child,
    stdin: ChildStdin,
    events: Lines<BufReader<ChildStdout>>,
    /// The client's full JID, as bound.
    pub jid: String,
    stderr_file: std::path::PathBuf,
}

impl Client {
    /// Logs in as the test account on `peer` (STARTTLS on its c2s port, by address) and
    /// waits until the session is online.
    pub async fn login(peer: &Peer) -> Client {
        let jid = format!("{USER}@{}/interop", peer.domain);
        Client::login_at(&jid, PASSWORD, peer.c2s_addr(), peer).await
    }

    /// Logs in as `jid` at `c2s` (STARTTLS, by address): a peer's account, or an account of
    /// fedgate's own core. `peer` is whose log a failure shows.
    pub async fn login_at(jid: &str, password: &str, c2s: SocketAddr, peer: &Peer) -> Client {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/client.py");
        let stderr_file = peer.dir.path().join(format!(
            "client-{}.stderr",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--jid", jid])
            .args(["--password", password])
            .args(["--host", &c2s.ip().to_string()])
            .args(["--port", &c2s.port().to_string()])
            // INTEROP_CLIENT_DEBUG=1: slixmpp logs every stanza to the stderr file.
            .args(std::env::var_os("INTEROP_CLIENT_DEBUG").map(|_| "--debug"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the slixmpp client (scripts/test.sh installs slixmpp)");
        let stdin = child.stdin.take().unwrap();
        let events = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut client = Client {
            child,
            stdin,
            events,
            jid: String::new(),
            stderr_file,
        };
        let online = client
            .wait_for("online", |e| e["event"] == "online", peer)
            .await;
        client.jid = online["jid"].as_str().unwrap().to_string();
        client
    }

    /// The client's stderr (slixmpp's warnings and tracebacks).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_file).unwrap_or_default()
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

    pub async fn message(&mut self, to: &str, id: &str, body: &str) {
        self.command(json!({"cmd": "message", "to": to, "id": id, "body": body}))
            .await;
    }

    /// The next event, or `None` when the client exited.
    pub async fn next_event(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(EVENT_WAIT, self.events.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no event from the client within {EVENT_WAIT:?}; its stderr:\n{}",
                    self.stderr()
                )
            })
            .expect("read the client's stdout")?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
    }

    /// The next event within `wait`: `None` when nothing came or the client exited.
    pub async fn event_within(&mut self, wait: Duration) -> Option<Value> {
        let line = tokio::time::timeout(wait, self.events.next_line())
            .await
            .ok()?
            .ok()??;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
    }

    /// The next event for which `want` holds (`what` names it in the failure message); the
    /// events skipped are kept in the failure message too.
    pub async fn wait_for(
        &mut self,
        what: &str,
        want: impl Fn(&Value) -> bool,
        peer: &Peer,
    ) -> Value {
        let mut skipped = Vec::new();
        loop {
            match self.next_event().await {
                Some(e) if want(&e) => return e,
                Some(e) if e["event"] == "failed" => panic!(
                    "the client failed ({e}) while waiting for {what}; stderr:\n{}\n{}",
                    self.stderr(),
                    peer.log_tail(30)
                ),
                Some(e) => {
                    skipped.push(e.to_string());
                    if skipped.len() > 20_000 {
                        panic!("no {what} among {} events", skipped.len());
                    }
                }
                None => panic!(
                    "the client exited while waiting for {what}; events: {}\nstderr:\n{}\n{}",
                    skipped.join("\n"),
                    self.stderr(),
                    peer.log_tail(30)
                ),
            }
        }
    }

    /// The result of the iq sent with `tag` (a disco or ping command).
    pub async fn result(&mut self, tag: &str, peer: &Peer) -> Value {
        self.wait_for(
            &format!("the result of {tag}"),
            |e| e["event"] == "result" && e["tag"] == tag,
            peer,
        )
        .await
    }

    /// Ends the session and waits for the process to exit.
    pub async fn quit(mut self) {
        self.command(json!({"cmd": "quit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
