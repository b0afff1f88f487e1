//! What is live and what went wrong, per remote domain: the s2s sessions in both directions with
//! what they negotiated, the recent failures with their causes, and the traces of the latest
//! outbound attempts.
//!
//! Two readers: the `/peers` view (an operator asking "why does federation with X fail?"), and a
//! reload, which judges every live session by the new policy and closes those it refuses
//! ([`LiveSession::kick`]). Sessions write here only when they negotiate something, never per
//! stanza, so the locks below are uncontended.
//!
//! Everything is bounded: failures and traces per domain, and the number of domains
//! remembered (an arbitrary one is forgotten beyond it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use super::trace::Trace;
use crate::metrics::Direction;
use crate::tls::TlsInfo;

/// How many remote domains' failures and traces are remembered.
pub const MAX_REMEMBERED_DOMAINS: usize = 4096;
/// Failures kept per remote domain, newest last.
pub const FAILURES_PER_DOMAIN: usize = 8;
/// Attempt traces kept per remote domain, newest last.
pub const TRACES_PER_DOMAIN: usize = 3;

/// A domain pair authenticated on a session, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Our domain of the pair.
    pub local: String,
    /// The peer's domain of the pair.
    pub remote: String,
    /// `external` or `dialback`.
    pub auth: &'static str,
}

/// What a session has negotiated so far.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    /// The peer's address, or the target as outbound logs name it (`host:port (ip)`).
    pub address: Option<String>,
    /// The TLS session, with the peer's certificate chain, if any.
    pub tls: Option<TlsInfo>,
    /// The peer certificate's verdict for its domain, as text (`valid`, or why not).
    pub certificate: Option<String>,
    /// Authenticated pairs: one for an outbound session, one or more on an inbound stream.
    pub pairs: Vec<Pair>,
    /// XEP-0198 is on.
    pub stream_management: bool,
    /// XEP-0288: the connection carries stanzas both ways.
    pub bidi: bool,
}

/// One live s2s session.
#[derive(Debug)]
pub struct LiveSession {
    /// Unique per session (from the router's counter), the key of the registry entry.
    pub id: u64,
    /// Which way the session goes.
    pub direction: Direction,
    /// When the session was registered (wall-clock).
    pub started: SystemTime,
    negotiated: Mutex<Negotiated>,
    kick: CancellationToken,
    reason: OnceLock<String>,
}

impl LiveSession {
    /// What the session has negotiated, locked (a panicked writer left nothing half done that
    /// matters to a reader).
    fn lock(&self) -> MutexGuard<'_, Negotiated> {
        self.negotiated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes what the session has negotiated.
    pub fn update(&self, f: impl FnOnce(&mut Negotiated)) {
        f(&mut self.lock());
    }

    /// A copy of what the session has negotiated (the peer's certificate chain included).
    pub fn negotiated(&self) -> Negotiated {
        self.lock().clone()
    }

    /// The remote domains authenticated on this session, without copying the rest.
    pub fn remotes(&self) -> Vec<String> {
        self.lock().pairs.iter().map(|p| p.remote.clone()).collect()
    }

    /// Asks the session to end with `<policy-violation/>` and `reason`. The first reason wins.
    pub fn kick(&self, reason: String) {
        let _ = self.reason.set(reason);
        self.kick.cancel();
    }

    /// Resolves once the session has been kicked.
    pub fn kicked(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.kick.cancelled()
    }

    /// Why the session was kicked.
    pub fn kick_reason(&self) -> String {
        self.reason
            .get()
            .cloned()
            .unwrap_or_else(|| "refused by the federation policy".into())
    }

    /// Whether `remote` is authenticated on this session.
    pub fn serves(&self, remote: &str) -> bool {
        self.lock().pairs.iter().any(|p| p.remote == remote)
    }
}

/// Removes its session from the registry when the session ends.
pub struct Registration {
    session: Arc<LiveSession>,
    sessions: Arc<DashMap<u64, Arc<LiveSession>>>,
}

impl Registration {
    /// The registered session, shared, for a reader that needs it past the registration.
    pub fn session(&self) -> &Arc<LiveSession> {
        &self.session
    }
}

impl std::ops::Deref for Registration {
    type Target = LiveSession;
    fn deref(&self) -> &LiveSession {
        &self.session
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.remove(&self.session.id);
    }
}

/// A failure to federate with a remote domain: an attempt that failed, a stream we refused or
/// that the peer closed with an error, a key that did not verify.
#[derive(Debug, Clone)]
pub struct Failure {
    /// When the failure happened.
    pub at: SystemTime,
    /// Whether an inbound or an outbound session failed.
    pub direction: Direction,
    /// What went wrong, as logged.
    pub cause: String,
}

/// The live sessions, recent failures and attempt traces of every remote domain.
#[derive(Default)]
pub struct Registry {
    sessions: Arc<DashMap<u64, Arc<LiveSession>>>,
    failures: DashMap<String, VecDeque<Failure>>,
    traces: DashMap<String, VecDeque<Arc<Trace>>>,
}

impl Registry {
    /// Registers a new session; it stays listed until the registration is dropped.
    pub fn open(&self, direction: Direction, address: Option<String>) -> Registration {
        let session = Arc::new(LiveSession {
            id: crate::router::next_session_id(),
            direction,
            started: SystemTime::now(),
            negotiated: Mutex::new(Negotiated {
                address,
                ..Negotiated::default()
            }),
            kick: CancellationToken::new(),
            reason: OnceLock::new(),
        });
        self.sessions.insert(session.id, session.clone());
        Registration {
            session,
            sessions: self.sessions.clone(),
        }
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<Arc<LiveSession>> {
        self.sessions.iter().map(|e| e.value().clone()).collect()
    }

    /// The live sessions on which `remote` is authenticated.
    pub fn sessions_of(&self, remote: &str) -> Vec<Arc<LiveSession>> {
        self.sessions
            .iter()
            .filter(|e| e.value().serves(remote))
            .map(|e| e.value().clone())
            .collect()
    }

    /// Remembers a failure with `remote`, logged by the caller.
    pub fn failed(&self, remote: &str, direction: Direction, cause: impl Into<String>) {
        let failure = Failure {
            at: SystemTime::now(),
            direction,
            cause: cause.into(),
        };
        remember(&self.failures, remote, failure, FAILURES_PER_DOMAIN);
    }

    /// Recent failures with `remote`, oldest first.
    pub fn failures_of(&self, remote: &str) -> Vec<Failure> {
        self.failures
            .get(remote)
            .map(|f| f.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Keeps `trace` as the latest attempt to reach `remote`.
    pub fn attempted(&self, remote: &str, trace: Trace) {
        remember(&self.traces, remote, Arc::new(trace), TRACES_PER_DOMAIN);
    }

    /// The traces of the latest attempts to reach `remote`, oldest first.
    pub fn traces_of(&self, remote: &str) -> Vec<Arc<Trace>> {
        self.traces
            .get(remote)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every remote domain with a live session, a failure or a trace.
    pub fn domains(&self) -> Vec<String> {
        let mut domains: Vec<String> = self
            .sessions
            .iter()
            .flat_map(|e| e.value().remotes())
            .chain(self.failures.iter().map(|e| e.key().clone()))
            .chain(self.traces.iter().map(|e| e.key().clone()))
            .collect();
        domains.sort();
        domains.dedup();
        domains
    }
}

/// Appends `item` to `domain`'s list, keeping the newest `per_domain`, and at most
/// [`MAX_REMEMBERED_DOMAINS`] domains.
fn remember<T>(map: &DashMap<String, VecDeque<T>>, domain: &str, item: T, per_domain: usize) {
    if map.len() >= MAX_REMEMBERED_DOMAINS && !map.contains_key(domain) {
        let victim = map.iter().next().map(|e| e.key().clone());
        if let Some(victim) = victim {
            map.remove(&victim);
        }
    }
    let mut list = map.entry(domain.to_string()).or_default();
    if list.len() >= per_domain {
        list.pop_front();
    }
    list.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_leave_when_their_registration_drops() {
        let registry = Registry::default();
        let a = registry.open(Direction::Inbound, Some("192.0.2.1:1234".into()));
        a.update(|n| {
            n.pairs.push(Pair {
                local: "a.test".into(),
                remote: "b.test".into(),
                auth: "dialback",
            })
        });
        let _c = registry.open(Direction::Outbound, None);
        assert_eq!(registry.sessions().len(), 2);
        assert_eq!(registry.sessions_of("b.test").len(), 1);
        assert_eq!(registry.domains(), ["b.test"]);
        drop(a);
        assert_eq!(registry.sessions().len(), 1);
        assert!(registry.sessions_of("b.test").is_empty());
    }

    #[test]
    fn failures_and_traces_are_bounded_per_domain_and_in_domains() {
        let registry = Registry::default();
        for i in 0..FAILURES_PER_DOMAIN + 3 {
            registry.failed("b.test", Direction::Outbound, format!("failure {i}"));
        }
        let failures = registry.failures_of("b.test");
        assert_eq!(failures.len(), FAILURES_PER_DOMAIN);
        assert_eq!(
            failures.last().unwrap().cause,
            format!("failure {}", FAILURES_PER_DOMAIN + 2)
        );
        for _ in 0..TRACES_PER_DOMAIN + 1 {
            registry.attempted("b.test", Trace::new());
        }
        assert_eq!(registry.traces_of("b.test").len(), TRACES_PER_DOMAIN);
        for i in 0..MAX_REMEMBERED_DOMAINS + 10 {
            registry.failed(&format!("d{i}.test"), Direction::Inbound, "x");
        }
        assert!(registry.failures.len() <= MAX_REMEMBERED_DOMAINS);
    }

    #[tokio::test]
    async fn a_kick_wakes_the_session_with_the_first_reason() {
        let registry = Registry::default();
        let s = registry.open(Direction::Outbound, None);
        s.kick("federation with b.test is refused by policy".into());
        s.kick("second".into());
        s.kicked().await;
        assert_eq!(
            s.kick_reason(),
            "federation with b.test is refused by policy"
        );
    }
}
