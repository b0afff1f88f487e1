//! The initiating side of an s2s stream up to authentication, shared by [outbound
//! sessions](super::outbound) and [dialback's connect-back](super::dialback::connect_back) (RFC 6120 §4–5,
//! XEP-0368).
//!
//! [`Walk`] goes through a domain's candidates (static route, SRV, A/AAAA fallback); for each:
//! 1. resolve its addresses and connect (happy eyeballs, [`dial`], each address within
//!    `connect_timeout`); on a direct TLS target (XEP-0368), the TLS handshake at once, with
//!    ALPN `xmpp-server`;
//! 2. open a `jabber:server` stream declaring `xmlns:db` and read the peer's header and
//!    features;
//! 3. without TLS yet: `<starttls/>` if offered, `<proceed/>`, the handshake (SNI = the remote
//!    domain), then a fresh stream (back to step 2). A peer that offers no TLS while TLS is
//!    required gets nothing but our header and `</stream:stream>`;
//! 4. with TLS: check the peer's certificate for the remote domain ([`Tls::verify_peer`](crate::tls::Tls::verify_peer)); when
//!    the policy needs a valid certificate and it is not, close with `<policy-violation/>`.
//!
//! The caller then authenticates (SASL EXTERNAL or dialback) on the [`Opened`] stream.

use std::fmt;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::trace::Trace;
use super::{PeerStreamError, S2sContext};
use crate::connection::{BoxTransport, Connection, ReadError};
use crate::dial;
use crate::dns::{Candidate, Plan, ResolveError, Target};
use crate::metrics::{BounceCause, Direction};
use crate::policy::PeerSecurity;
use crate::tls::{CertProblem, CertVerdict, PeerRole, TlsError, TlsInfo};
use crate::xml::element::Element;
use crate::xml::error::StreamErrorCondition;
use crate::xml::framer::Event;
use crate::xml::ns;
use crate::xml::stanza::{Kind, Stanza};
use crate::xml::stream::{OpenStream, StreamHeader};

/// Why a stream to one target could not be opened. The next target may do better.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No TCP connection to any address of the host came up (within `connect_timeout` each).
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The host and port that was dialed (`host:port`).
        target: String,
        /// Each address tried, with why it failed (`addr: why; ...`).
        reason: String,
    },
    /// A stage of the attempt took longer than its timeout allows.
    #[error("{stage} at {target} timed out after {after:?}")]
    Timeout {
        /// Which stage ran out of time.
        stage: Stage,
        /// The target as logs name it (`host:port (ip)`).
        target: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The peer sent a `<stream:error/>` (RFC 6120 §4.9) instead of what was expected.
    #[error("{target} closed the stream with {error}")]
    PeerStreamError {
        /// The target as logs name it (`host:port (ip)`).
        target: String,
        /// The condition and text the peer sent.
        error: PeerStreamError,
    },
    /// The stream broke or went off script: an I/O error, an early close, an element out of
    /// place, or a refused STARTTLS.
    #[error("stream to {target} failed: {reason}")]
    Stream {
        /// The target as logs name it (`host:port (ip)`).
        target: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// The peer offers no STARTTLS, but the policy for the domain requires TLS.
    #[error("{target} does not offer TLS, and TLS is required for {domain}")]
    TlsUnavailable {
        /// The target as logs name it (`host:port (ip)`).
        target: String,
        /// The remote domain whose policy requires TLS.
        domain: String,
    },
    /// The TLS handshake failed.
    #[error("TLS with {target} failed: {error}")]
    Tls {
        /// The target as logs name it (`host:port (ip)`).
        target: String,
        /// What the handshake failed on.
        error: TlsError,
    },
    /// A candidate host has no address (or the lookup failed).
    #[error("{0}")]
    Resolve(ResolveError),
    /// The policy needs a valid certificate and the peer's certificate is not valid for the
    /// domain.
    #[error("TLS {problem} at {target}")]
    Certificate {
        /// The target as logs name it (`host:port (ip)`).
        target: String,
        /// Why the certificate is not valid.
        problem: CertProblem,
        /// The TLS session, with the chain the peer presented (for diagnostics).
        tls: Box<TlsInfo>,
    },
}

impl ConnectError {
    /// The step of the attempt that failed.
    pub fn step(&self) -> Step {
        match self {
            ConnectError::Resolve(_) => Step::Dns,
            ConnectError::Connect { .. } => Step::Connect,
            ConnectError::TlsUnavailable { .. }
            | ConnectError::Tls { .. }
            | ConnectError::Certificate { .. } => Step::Tls,
            ConnectError::Timeout { .. }
            | ConnectError::PeerStreamError { .. }
            | ConnectError::Stream { .. } => Step::Stream,
        }
    }
}

/// What a [`ConnectError::Timeout`] waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Headers, features, STARTTLS and the certificate check ([`open`]).
    StreamNegotiation,
    /// SASL EXTERNAL or dialback on an opened stream.
    Authentication,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::StreamNegotiation => "stream negotiation",
            Stage::Authentication => "authentication",
        })
    }
}

/// The step of an attempt that failed, as `fedgate_outbound_attempts_total` and the bounces of
/// a session that gave up label it ([`Step::bounce_cause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A candidate host has no address.
    Dns,
    /// TCP.
    Connect,
    /// TLS: none offered, the handshake, or the certificate.
    Tls,
    /// The XMPP stream: headers, features, errors, timeouts.
    Stream,
}

impl Step {
    /// The step as a bounce cause; its [`as_str`](BounceCause::as_str) is also the
    /// `fedgate_outbound_attempts_total` label.
    pub fn bounce_cause(self) -> BounceCause {
        match self {
            Step::Dns => BounceCause::Dns,
            Step::Connect => BounceCause::Connect,
            Step::Tls => BounceCause::Tls,
            Step::Stream => BounceCause::Stream,
        }
    }
}

/// What a stream negotiated, for policy, logs, metrics and diagnostics.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The TLS session, if any.
    pub tls: Option<TlsInfo>,
    /// The peer certificate's verdict for its domain, once known (with TLS only).
    pub verdict: Option<CertVerdict>,
}

impl Security {
    /// Whether the peer's certificate is valid for its domain.
    pub fn certificate_valid(&self) -> bool {
        self.verdict.as_ref().is_some_and(CertVerdict::is_valid)
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tls {
            None => f.write_str("no TLS"),
            Some(tls) => {
                write!(f, "{} {}", tls.version, tls.cipher)?;
                if let Some(alpn) = &tls.alpn {
                    write!(f, " ALPN {alpn}")?;
                }
                match &self.verdict {
                    Some(v) => write!(f, ", {v}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A stream ready for authentication.
pub struct Opened {
    /// The connection, with the stream open on it (on TLS once negotiated).
    pub conn: Connection,
    /// Where it goes.
    pub target: Target,
    /// `target` as errors and logs name it ("xmpp.b.example:5269 (192.0.2.1)").
    pub label: String,
    /// The peer's latest stream header (its id keys dialback).
    pub header: StreamHeader,
    /// The peer's latest features (empty for a pre-1.0 peer).
    pub features: Element,
    /// What the stream negotiated: the TLS session and the certificate verdict.
    pub security: Security,
}

impl fmt::Display for Target {
    /// `host:port (ip)` for a named host, the address alone for an IP literal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let literal = self
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok();
        if literal {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}:{} ({})", self.host, self.addr.port(), self.addr.ip())
        }
    }
}

/// Whether `features` offer SASL EXTERNAL.
pub fn offers_external(features: &Element) -> bool {
    features.child("mechanisms", ns::SASL).is_some_and(|m| {
        m.children()
            .any(|c| c.name == "mechanism" && c.text().trim() == "EXTERNAL")
    })
}

/// The features a peer offered, for traces and diagnostics: `STARTTLS (required), SASL
/// EXTERNAL, XEP-0288 bidi, dialback, XEP-0198`; others by name and namespace; `none` when empty.
pub fn describe_features(features: &Element) -> String {
    let names: Vec<String> = features
        .children()
        .map(|f| match (f.name.as_str(), f.ns.as_str()) {
            ("starttls", ns::TLS) if f.child("required", ns::TLS).is_some() => {
                "STARTTLS (required)".to_string()
            }
            ("starttls", ns::TLS) => "STARTTLS".to_string(),
            ("mechanisms", ns::SASL) => {
                let mechanisms: Vec<String> = f
                    .children()
                    .filter(|m| m.name == "mechanism")
                    .map(|m| m.text().trim().to_string())
                    .collect();
                format!("SASL {}", mechanisms.join(" "))
            }
            ("dialback", ns::DIALBACK_FEATURE) => "dialback".to_string(),
            ("sm", super::sm::NS) => "XEP-0198".to_string(),
            ("bidi", super::bidi::FEATURE_NS) => "XEP-0288 bidi".to_string(),
            (name, ns) => format!("<{name} xmlns='{ns}'/>"),
        })
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Whether the peer offers Server Dialback: the XEP-0220 feature, or `xmlns:db` on an older
/// peer's header.
pub fn offers_dialback(header: &StreamHeader, features: &Element) -> bool {
    features.child("dialback", ns::DIALBACK_FEATURE).is_some() || header.declares_dialback()
}

/// Steps 2–4 on a socket connected to `target`, bounded by `negotiation_timeout`.
pub async fn open(
    ctx: &S2sContext,
    tcp: TcpStream,
    local: &str,
    remote: &str,
    target: &Target,
    security: &PeerSecurity,
) -> Result<Opened, ConnectError> {
    let settings = &ctx.settings;
    let _ = tcp.set_nodelay(true);
    let mut conn = Connection::new(
        Box::new(tcp),
        target.addr,
        settings.negotiation_limits(),
        ns::SERVER,
    );
    let label = target.to_string();
    let negotiated = tokio::time::timeout(
        settings.negotiation_timeout,
        negotiate(ctx, &mut conn, local, remote, target, &label, security),
    )
    .await;
    match negotiated {
        Ok(Ok((header, features, security))) => Ok(Opened {
            conn,
            target: target.clone(),
            label,
            header,
            features,
            security,
        }),
        Ok(Err(Failed { error, goodbye })) => {
            match goodbye {
                Goodbye::Close => conn.close().await,
                Goodbye::Error(condition, text) => conn.fail(&condition, Some(&text)).await,
                Goodbye::None => {}
            }
            Err(error)
        }
        Err(_) => {
            conn.fail_in_background(StreamErrorCondition::ConnectionTimeout);
            Err(ConnectError::Timeout {
                stage: Stage::StreamNegotiation,
                target: label,
                after: settings.negotiation_timeout,
            })
        }
    }
}

/// The targets of one remote domain, tried in order (RFC 6120 §3.2): each candidate of the
/// DNS [`Plan`], and each of its addresses in the happy eyeballs style, until a stream opens.
/// Every step goes into the caller's [`Trace`].
pub struct Walk {
    plan: Plan,
    next: usize,
}

impl Walk {
    /// Resolves `remote`'s candidates. A failure here is final: there is nowhere to go.
    pub async fn start(
        ctx: &S2sContext,
        remote: &str,
        trace: &mut Trace,
    ) -> Result<Walk, ResolveError> {
        let started = Instant::now();
        let planned = ctx.resolver.plan(remote).await;
        let metrics = &ctx.router.metrics;
        match &planned {
            Ok(_) => metrics.dns_lookup("ok", started.elapsed()),
            Err(e) => metrics.dns_lookup(e.label(), started.elapsed()),
        }
        match planned {
            Ok(plan) => {
                for answer in &plan.answers {
                    trace.ok(format!("DNS {answer}"));
                }
                trace.ok(format!(
                    "{} candidate(s): {}",
                    plan.candidates.len(),
                    plan.candidates
                        .iter()
                        .map(|c| format!("[{c}]"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
                Ok(Walk { plan, next: 0 })
            }
            Err(e) => {
                trace.failed(format!("DNS {e}"));
                Err(e)
            }
        }
    }

    /// Opens a stream to the next candidate that answers; `None` when all have been tried.
    /// Each `Some(Err(_))` is one candidate's failure; the caller decides whether to go on.
    pub async fn next(
        &mut self,
        ctx: &S2sContext,
        local: &str,
        remote: &str,
        policy: &PeerSecurity,
        trace: &mut Trace,
    ) -> Option<Result<Opened, ConnectError>> {
        let candidate = self.plan.candidates.get(self.next)?.clone();
        self.next += 1;
        Some(open_candidate(ctx, local, remote, &candidate, policy, trace).await)
    }
}

async fn open_candidate(
    ctx: &S2sContext,
    local: &str,
    remote: &str,
    candidate: &Candidate,
    policy: &PeerSecurity,
    trace: &mut Trace,
) -> Result<Opened, ConnectError> {
    let metrics = &ctx.router.metrics;
    let started = Instant::now();
    let resolved = ctx.resolver.addresses(&candidate.host).await;
    match &resolved {
        Ok(_) => metrics.dns_lookup("ok", started.elapsed()),
        Err(e) => metrics.dns_lookup(e.label(), started.elapsed()),
    }
    let ips = match resolved {
        Ok(ips) => ips,
        Err(e) => {
            trace.failed(format!("DNS {}: {e}", candidate.host));
            return Err(ConnectError::Resolve(e.for_candidate(remote, candidate)));
        }
    };
    let addrs: Vec<std::net::SocketAddr> = ips
        .iter()
        .map(|ip| std::net::SocketAddr::new(*ip, candidate.port))
        .collect();
    trace.ok(format!(
        "DNS {} → {}",
        candidate.host,
        ips.iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let hostport = format!("{}:{}", candidate.host, candidate.port);
    let started = Instant::now();
    let dialed = dial::happy_eyeballs(&addrs, ctx.settings.connect_timeout).await;
    metrics
        .connect_seconds
        .observe(started.elapsed().as_secs_f64());
    let (tcp, addr) = match dialed {
        Ok(connected) => connected,
        Err(e) => {
            trace.failed(format!("TCP {hostport}: {e}"));
            return Err(ConnectError::Connect {
                target: hostport,
                reason: e.to_string(),
            });
        }
    };
    let target = Target {
        host: candidate.host.clone(),
        addr,
        direct_tls: candidate.direct_tls,
    };
    trace.ok(format!("TCP connected to {target}"));
    match open(ctx, tcp, local, remote, &target, policy).await {
        Ok(opened) => {
            let features = describe_features(&opened.features);
            match &opened.security.tls {
                Some(_) => trace.ok(format!(
                    "stream open, {}; features: {features}",
                    opened.security
                )),
                None => trace.ok(format!("stream open without TLS; features: {features}")),
            }
            Ok(opened)
        }
        Err(e) => {
            trace.failed(e.to_string());
            Err(e)
        }
    }
}

/// How to leave a stream that failed.
enum Goodbye {
    /// `</stream:stream>`.
    Close,
    /// A stream error, then `</stream:stream>`.
    Error(StreamErrorCondition, String),
    /// The transport is gone (or was taken for a failed handshake).
    None,
}

struct Failed {
    error: ConnectError,
    goodbye: Goodbye,
}

impl From<ConnectError> for Failed {
    fn from(error: ConnectError) -> Failed {
        Failed {
            error,
            goodbye: Goodbye::Close,
        }
    }
}

async fn negotiate(
    ctx: &S2sContext,
    conn: &mut Connection,
    local: &str,
    remote: &str,
    target: &Target,
    label: &str,
    policy: &PeerSecurity,
) -> Result<(StreamHeader, Element, Security), Failed> {
    let mut security = Security::default();
    if target.direct_tls {
        let info = handshake(ctx, conn, local, remote, label, true).await?;
        security.tls = Some(info);
    }
    loop {
        let (header, features) = exchange_headers(conn, local, remote, label).await?;
        if let Some(info) = &security.tls {
            let verdict = ctx
                .tls
                .verify_peer(info, remote, PeerRole::Server, &policy.pins);
            ctx.router
                .metrics
                .certificate_verdicts
                .count(Direction::Outbound, verdict.label());
            if let CertVerdict::Invalid(problem) = &verdict {
                if policy.needs_valid_certificate() {
                    return Err(Failed {
                        goodbye: Goodbye::Error(
                            StreamErrorCondition::PolicyViolation,
                            format!("a valid certificate for {remote} is required: {problem}"),
                        ),
                        error: ConnectError::Certificate {
                            target: label.to_string(),
                            problem: problem.clone(),
                            tls: Box::new(info.clone()),
                        },
                    });
                }
            }
            security.verdict = Some(verdict);
            return Ok((header, features, security));
        }
        if features.child("starttls", ns::TLS).is_none() {
            if policy.tls_required {
                return Err(ConnectError::TlsUnavailable {
                    target: label.to_string(),
                    domain: remote.to_string(),
                }
                .into());
            }
            return Ok((header, features, security));
        }
        conn.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        flush(conn, label).await?;
        match next_element(conn, label).await? {
            s if s.name() == "proceed" && s.ns() == ns::TLS => {}
            s if s.name() == "failure" && s.ns() == ns::TLS => {
                return Err(Failed {
                    error: ConnectError::Stream {
                        target: label.to_string(),
                        reason: "the peer refused STARTTLS".into(),
                    },
                    // RFC 6120 §5.4.2.2: the receiving entity closes the stream.
                    goodbye: Goodbye::None,
                });
            }
            s => {
                return Err(ConnectError::Stream {
                    target: label.to_string(),
                    reason: format!("expected <proceed/>, got <{}/>", s.name()),
                }
                .into())
            }
        }
        let info = handshake(ctx, conn, local, remote, label, false).await?;
        security.tls = Some(info);
    }
}

/// The client side of a TLS handshake on `conn`'s transport; the stream restarts on it.
async fn handshake(
    ctx: &S2sContext,
    conn: &mut Connection,
    local: &str,
    remote: &str,
    target: &str,
    direct: bool,
) -> Result<TlsInfo, Failed> {
    let io: BoxTransport = conn.take_transport();
    let metrics = &ctx.router.metrics;
    let started = Instant::now();
    match ctx.tls.connect(io, local, remote, direct).await {
        Ok((io, info)) => {
            metrics.tls_handshake(Direction::Outbound, Some(info.version), started.elapsed());
            conn.restart_on(io);
            Ok(info)
        }
        Err(error) => {
            metrics.tls_handshake(Direction::Outbound, None, started.elapsed());
            Err(Failed {
                error: ConnectError::Tls {
                    target: target.to_string(),
                    error,
                },
                goodbye: Goodbye::None,
            })
        }
    }
}

/// Opens our stream and reads the peer's header and, from a version 1.0 peer, its features
/// (RFC 6120 §4.3). Used again after every stream restart.
pub async fn exchange_headers(
    conn: &mut Connection,
    local: &str,
    remote: &str,
    target: &str,
) -> Result<(StreamHeader, Element), ConnectError> {
    conn.open(&OpenStream {
        content_ns: ns::SERVER,
        from: Some(local),
        to: Some(remote),
        id: None,
        version: true,
        dialback: true,
        drain: false,
        sm: false,
        held: false,
    });
    flush(conn, target).await?;
    let header = match conn.next_event().await.map_err(|e| read_error(target, e))? {
        Event::StreamOpen(h) => h,
        _ => {
            return Err(ConnectError::Stream {
                target: target.to_string(),
                reason: "expected a stream header".into(),
            })
        }
    };
    if header.default_ns.as_deref() != Some(ns::SERVER) {
        return Err(ConnectError::Stream {
            target: target.to_string(),
            reason: "the peer's stream is not jabber:server".into(),
        });
    }
    if header.version.is_none() {
        return Ok((header, Element::default()));
    }
    let features = next_element(conn, target).await?;
    if features.kind() != Kind::StreamFeatures {
        return Err(ConnectError::Stream {
            target: target.to_string(),
            reason: format!("expected <stream:features/>, got <{}/>", features.name()),
        });
    }
    let features = features.element().map_err(|e| ConnectError::Stream {
        target: target.to_string(),
        reason: e.to_string(),
    })?;
    Ok((header, features))
}

/// The next top-level element; a stream error or close becomes the error.
pub async fn next_element(conn: &mut Connection, target: &str) -> Result<Stanza, ConnectError> {
    match conn.next_event().await.map_err(|e| read_error(target, e))? {
        Event::Stanza(s) if s.kind() == Kind::StreamError => Err(ConnectError::PeerStreamError {
            target: target.to_string(),
            error: PeerStreamError::parse(&s),
        }),
        Event::Stanza(s) => Ok(s),
        Event::StreamClose => Err(ConnectError::Stream {
            target: target.to_string(),
            reason: "the peer closed the stream".into(),
        }),
        Event::StreamOpen(_) => Err(ConnectError::Stream {
            target: target.to_string(),
            reason: "unexpected stream header".into(),
        }),
    }
}

/// Sends what is queued on `conn`; a write error becomes [`ConnectError::Stream`].
pub async fn flush(conn: &mut Connection, target: &str) -> Result<(), ConnectError> {
    conn.flush()
        .await
        .map_err(|e| read_error(target, ReadError::Io(e)))
}

fn read_error(target: &str, e: ReadError) -> ConnectError {
    ConnectError::Stream {
        target: target.to_string(),
        reason: e.to_string(),
    }
}
