//! The live per-peer view: `/peers` and `/peers/{domain}` on the metrics listener (JSON), and
//! `fedgate peers [DOMAIN]`, which prints the same for a person.
//!
//! It answers the operator's question "what is going on with federation to X, and if it fails,
//! why?" from what fedgate already keeps: the live sessions in both directions with what they
//! negotiated ([`registry`](crate::s2s::registry)), the outbound queue, the per-peer counters,
//! the recent failures with their causes, the traces of the latest connection attempts, and
//! what the policy says about the domain.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::metrics::Direction;
use crate::s2s::registry::LiveSession;
use crate::s2s::S2sContext;

/// One line per peer in `/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerSummary {
    /// The remote domain (canonical form).
    pub domain: String,
    /// Live inbound sessions on which the domain is authenticated.
    pub sessions_inbound: usize,
    /// Live outbound sessions to the domain.
    pub sessions_outbound: usize,
    /// Stanzas waiting for the peer.
    pub queued: usize,
    /// Whether the last outbound attempt authenticated; `null` before any.
    pub up: Option<bool>,
    /// The latest failure, if any.
    pub last_failure: Option<FailureView>,
}

/// `/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersView {
    /// The gateway instance that answers (several may serve one domain); empty from a
    /// gateway older than the field.
    #[serde(default)]
    pub instance: String,
    /// One summary per remote domain, sorted by domain.
    pub peers: Vec<PeerSummary>,
}

/// `/peers/{domain}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    /// The gateway instance that answers, as in [`PeersView::instance`].
    #[serde(default)]
    pub instance: String,
    /// The remote domain (canonical form).
    pub domain: String,
    /// What the policy in force says about the domain.
    pub policy: PolicyView,
    /// The live sessions, both directions, on which the domain is authenticated.
    pub sessions: Vec<SessionView>,
    /// Stanzas waiting in the outbound queue for the domain.
    pub queued: usize,
    /// Whether the last outbound attempt authenticated; `null` before any.
    pub up: Option<bool>,
    /// Stanzas received from the domain since fedgate began tracking it.
    pub stanzas_inbound: u64,
    /// Stanzas sent to the domain since fedgate began tracking it.
    pub stanzas_outbound: u64,
    /// Stanzas for the domain returned to their senders with an error.
    pub bounces: u64,
    /// Outbound attempts to the domain that failed.
    pub failed_attempts: u64,
    /// When a session with the peer was last up (RFC 3339), if ever.
    pub last_contact: Option<String>,
    /// When the certificate the peer last presented expires (RFC 3339), if known.
    pub certificate_expires: Option<String>,
    /// Recent failures, oldest first.
    pub failures: Vec<FailureView>,
    /// The latest outbound connection attempts, oldest first.
    pub attempts: Vec<AttemptView>,
}

/// What the policy in force says about the peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    /// `allowed`, or `refused: <rule>`; under `dry_run` a refusal reads `dry run: refused ...`.
    pub federation: String,
    /// `required` or `optional`: whether the stream to the peer must be TLS-encrypted.
    pub tls: String,
    /// How the peer must authenticate: `any`, `external` (SASL EXTERNAL) or `dialback`.
    pub auth: String,
    /// A valid certificate is required.
    pub valid_certificate_required: bool,
    /// Number of pinned keys.
    pub pins: usize,
}

/// One live session with the peer, as `/peers/{domain}` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionView {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// When the session was opened (RFC 3339).
    pub since: String,
    /// The peer's address (`host:port (ip)` for outbound), if known.
    pub address: Option<String>,
    /// `TLSv1.3 TLS13_AES_256_GCM_SHA384`, or `none`.
    pub tls: String,
    /// The certificate verdict: `valid` or why not.
    pub certificate: Option<String>,
    /// `local → remote (auth)` for each authenticated pair.
    pub pairs: Vec<PairView>,
    /// Whether XEP-0198 stream management is on.
    pub stream_management: bool,
    /// XEP-0288: the connection carries stanzas both ways (absent from older gateways).
    #[serde(default)]
    pub bidi: bool,
}

/// A domain pair authenticated on a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairView {
    /// Our domain of the pair.
    pub local: String,
    /// The peer's domain of the pair.
    pub remote: String,
    /// How the pair authenticated: `external` (SASL EXTERNAL) or `dialback`.
    pub auth: String,
}

/// A failure to federate with the peer, as the registry remembers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureView {
    /// When it happened (RFC 3339).
    pub at: String,
    /// `inbound` or `outbound`: which kind of session failed.
    pub direction: String,
    /// What went wrong, in words.
    pub cause: String,
}

/// One outbound connection attempt, step by step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptView {
    /// When the attempt began (RFC 3339).
    pub started: String,
    /// Whether the attempt's last step succeeded.
    pub ok: bool,
    /// The steps in order: DNS, TCP, TLS, authentication.
    pub steps: Vec<StepView>,
}

/// One step of an attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepView {
    /// Milliseconds since the attempt began.
    pub after_ms: u64,
    /// Whether the step worked.
    pub ok: bool,
    /// What was done, e.g. `TCP connected to xmpp.b.example:5269 (203.0.113.5)`.
    pub what: String,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn unix(seconds: i64) -> Option<String> {
    (seconds > 0).then(|| rfc3339(UNIX_EPOCH + Duration::from_secs(seconds as u64)))
}

fn up(value: i64) -> Option<bool> {
    (value >= 0).then_some(value == 1)
}

fn session_view(s: &LiveSession) -> SessionView {
    let n = s.negotiated();
    SessionView {
        direction: s.direction.as_str().into(),
        since: rfc3339(s.started),
        address: n.address,
        tls: n
            .tls
            .as_ref()
            .map_or_else(|| "none".into(), |t| format!("{} {}", t.version, t.cipher)),
        certificate: n.certificate,
        pairs: n
            .pairs
            .into_iter()
            .map(|p| PairView {
                local: p.local,
                remote: p.remote,
                auth: p.auth.into(),
            })
            .collect(),
        stream_management: n.stream_management,
        bidi: n.bidi,
    }
}

fn failure_view(f: &crate::s2s::registry::Failure) -> FailureView {
    FailureView {
        at: rfc3339(f.at),
        direction: f.direction.as_str().into(),
        cause: f.cause.clone(),
    }
}

/// Every remote domain fedgate has something to say about, with a one-line summary each.
pub fn all(ctx: &S2sContext) -> PeersView {
    let queues: HashMap<String, usize> = ctx.router.outbound_queues().into_iter().collect();
    let domains: BTreeSet<String> = ctx
        .registry
        .domains()
        .into_iter()
        .chain(queues.keys().cloned())
        .collect();
    // Sessions per (domain, direction), in one pass over the sessions.
    let mut counts: HashMap<(String, Direction), usize> = HashMap::new();
    for session in ctx.registry.sessions() {
        let mut remotes = session.remotes();
        remotes.sort();
        remotes.dedup();
        for remote in remotes {
            *counts.entry((remote, session.direction)).or_default() += 1;
        }
    }
    let peers = domains
        .into_iter()
        .map(|domain| {
            let count = |direction: Direction| {
                counts
                    .get(&(domain.clone(), direction))
                    .copied()
                    .unwrap_or(0)
            };
            let snapshot = ctx
                .router
                .metrics
                .peers
                .existing(&domain)
                .map(|e| e.snapshot())
                .unwrap_or_default();
            PeerSummary {
                sessions_inbound: count(Direction::Inbound),
                sessions_outbound: count(Direction::Outbound),
                queued: queues.get(&domain).copied().unwrap_or(0),
                up: up(snapshot.up),
                last_failure: ctx.registry.failures_of(&domain).last().map(failure_view),
                domain,
            }
        })
        .collect();
    PeersView {
        instance: ctx.instance.clone(),
        peers,
    }
}

/// Everything about one remote domain (canonical).
pub fn one(ctx: &S2sContext, domain: &str) -> PeerView {
    let policy = ctx.router.policy();
    let federation = match policy.check(domain) {
        Ok(()) => "allowed".to_string(),
        Err(refused) if policy.dry_run() => format!("dry run: {refused}"),
        Err(refused) => format!("refused: {refused}"),
    };
    let security = ctx.security.load().peer(domain);
    let snapshot = ctx
        .router
        .metrics
        .peers
        .existing(domain)
        .map(|e| e.snapshot())
        .unwrap_or_default();
    let queued = ctx
        .router
        .outbound_queues()
        .into_iter()
        .find(|(d, _)| d == domain)
        .map_or(0, |(_, n)| n);
    PeerView {
        instance: ctx.instance.clone(),
        domain: domain.to_string(),
        policy: PolicyView {
            federation,
            tls: if security.tls_required {
                "required"
            } else {
                "optional"
            }
            .into(),
            auth: format!("{:?}", security.auth).to_lowercase(),
            valid_certificate_required: security.needs_valid_certificate(),
            pins: security.pins.len(),
        },
        sessions: ctx
            .registry
            .sessions_of(domain)
            .iter()
            .map(|s| session_view(s))
            .collect(),
        queued,
        up: up(snapshot.up),
        stanzas_inbound: snapshot.stanzas_in,
        stanzas_outbound: snapshot.stanzas_out,
        bounces: snapshot.bounces,
        failed_attempts: snapshot.failures,
        last_contact: unix(snapshot.last_contact),
        certificate_expires: unix(snapshot.cert_expiry),
        failures: ctx
            .registry
            .failures_of(domain)
            .iter()
            .map(failure_view)
            .collect(),
        attempts: ctx
            .registry
            .traces_of(domain)
            .iter()
            .map(|t| AttemptView {
                started: rfc3339(t.started),
                ok: t.steps.last().is_some_and(|s| s.ok),
                steps: t
                    .steps
                    .iter()
                    .map(|s| StepView {
                        after_ms: s.after.as_millis() as u64,
                        ok: s.ok,
                        what: s.what.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn yes_no(up: Option<bool>) -> &'static str {
    match up {
        Some(true) => "up",
        Some(false) => "DOWN",
        None => "-",
    }
}

/// `fedgate peers`: one line per peer.
pub fn render_all(view: &PeersView) -> String {
    let seen_by = match view.instance.as_str() {
        "" => String::new(),
        i => format!("As seen by {i}.\n"),
    };
    if view.peers.is_empty() {
        return format!("{seen_by}No remote domains: no sessions, queues or failures yet.\n");
    }
    let width = view
        .peers
        .iter()
        .map(|p| p.domain.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = seen_by;
    let _ = writeln!(
        out,
        "{:width$}  {:>3} {:>3}  {:>6}  {:4}  LAST FAILURE",
        "DOMAIN", "IN", "OUT", "QUEUED", "UP"
    );
    for p in &view.peers {
        let failure = p
            .last_failure
            .as_ref()
            .map_or_else(|| "-".to_string(), |f| format!("{} {}", f.at, f.cause));
        let _ = writeln!(
            out,
            "{:width$}  {:>3} {:>3}  {:>6}  {:4}  {failure}",
            p.domain,
            p.sessions_inbound,
            p.sessions_outbound,
            p.queued,
            yes_no(p.up)
        );
    }
    out
}

/// `fedgate peers DOMAIN`: everything about one peer.
pub fn render_one(p: &PeerView) -> String {
    let mut out = String::new();
    match p.instance.as_str() {
        "" => {
            let _ = writeln!(out, "{}", p.domain);
        }
        i => {
            let _ = writeln!(out, "{} (as seen by {i})", p.domain);
        }
    }
    let _ = writeln!(
        out,
        "  policy: {}; TLS {}; auth {}{}{}",
        p.policy.federation,
        p.policy.tls,
        p.policy.auth,
        if p.policy.valid_certificate_required {
            "; valid certificate required"
        } else {
            ""
        },
        if p.policy.pins > 0 {
            format!("; {} pinned key(s)", p.policy.pins)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  outbound: {}; {} queued; {} failed attempts; last contact {}",
        yes_no(p.up),
        p.queued,
        p.failed_attempts,
        p.last_contact.as_deref().unwrap_or("never")
    );
    let _ = writeln!(
        out,
        "  stanzas: {} in, {} out, {} bounced; certificate expires {}",
        p.stanzas_inbound,
        p.stanzas_outbound,
        p.bounces,
        p.certificate_expires.as_deref().unwrap_or("(unknown)")
    );
    let _ = writeln!(out, "Sessions ({}):", p.sessions.len());
    for s in &p.sessions {
        let pairs: Vec<String> = s
            .pairs
            .iter()
            .map(|x| format!("{} → {} by {}", x.local, x.remote, x.auth))
            .collect();
        let _ = writeln!(
            out,
            "  {} since {} {}: {}; certificate {}; XEP-0198 {}; {}{}",
            s.direction,
            s.since,
            s.address.as_deref().unwrap_or("-"),
            s.tls,
            s.certificate.as_deref().unwrap_or("-"),
            if s.stream_management { "on" } else { "off" },
            if s.bidi { "XEP-0288 bidi; " } else { "" },
            pairs.join(", ")
        );
    }
    let _ = writeln!(out, "Recent failures ({}):", p.failures.len());
    for f in &p.failures {
        let _ = writeln!(out, "  {} {}: {}", f.at, f.direction, f.cause);
    }
    let _ = writeln!(out, "Latest connection attempts ({}):", p.attempts.len());
    for a in &p.attempts {
        let _ = writeln!(
            out,
            "  started {} — {}",
            a.started,
            if a.ok { "ok" } else { "FAILED" }
        );
        for s in &a.steps {
            let mark = if s.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "    +{}ms {mark} {}", s.after_ms, s.what);
        }
    }
    out
}
