//! Prometheus metrics: one [`Metrics`] struct, registered once, names and help texts here.
//!
//! Labels are small closed sets (direction, kind, condition, result), never JIDs. Handles used
//! per stanza are resolved at registration, so the hot path is one atomic increment.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::xml::stanza::Kind;

/// Which way a stanza or session goes, seen from fedgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a remote server into fedgate.
    Inbound,
    /// From fedgate to a remote server.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Per-kind stanza counters of one direction, resolved once.
#[derive(Clone)]
pub struct StanzaCounters {
    message: IntCounter,
    presence: IntCounter,
    iq: IntCounter,
    bytes: IntCounter,
}

impl StanzaCounters {
    /// Counts one stanza of `kind` and `len` bytes.
    pub fn count(&self, kind: Kind, len: usize) {
        match kind {
            Kind::Message => self.message.inc(),
            Kind::Presence => self.presence.inc(),
            Kind::Iq => self.iq.inc(),
            _ => {}
        }
        self.bytes.inc_by(len as u64);
    }
}

/// XEP-0198 events of one direction, resolved once.
#[derive(Clone)]
pub struct SmCounters {
    /// `<enabled/>` sent (inbound) or received (outbound).
    pub enabled: IntCounter,
    /// A stream resumed.
    pub resumed: IntCounter,
    /// A `<resume/>` answered (or answered us) with `<failed/>`.
    pub resume_failed: IntCounter,
    /// `<a/>` sent (inbound) or received (outbound).
    pub acked: IntCounter,
    /// A dropped stream's counters kept for resumption.
    pub kept: IntCounter,
}

/// Every metric fedgate exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Live s2s sessions by direction.
    pub s2s_sessions: IntGaugeVec,
    /// Attached XEP-0114 backends.
    pub component_sessions: IntGauge,
    /// Stanzas relayed over s2s, inbound (from remote servers).
    pub s2s_in: StanzaCounters,
    /// Stanzas relayed over s2s, outbound (to remote servers).
    pub s2s_out: StanzaCounters,
    /// Stanzas received from backends.
    pub component_in: StanzaCounters,
    /// Stanzas delivered to backends.
    pub component_out: StanzaCounters,
    /// Error stanzas generated for undeliverable stanzas, by condition.
    pub bounces: IntCounterVec,
    /// Stanzas that could not be delivered nor bounced (errors are never bounced), by reason.
    pub dropped: IntCounterVec,
    /// Stream errors by direction (sent, received) and condition.
    pub stream_errors: IntCounterVec,
    /// Dialback outcomes by role (`result` as receiving server, `verify` as authoritative
    /// server, `outbound` as originating server) and result.
    pub dialback: IntCounterVec,
    /// Outbound connection attempts by result (`established`, `dns`, `connect`, `stream`, `auth`).
    pub outbound_attempts: IntCounterVec,
    /// `fedgate_outbound_stanzas_total{event}`: stanzas `resent` after a link dropped (XEP-0198)
    /// and stanzas `unconfirmed` when a link without XEP-0198 dropped after they were written
    /// (they may or may not have arrived).
    pub outbound_stanzas: IntCounterVec,
    /// `fedgate_outbound_events_total{event}`: `retry`, `ping_answered`, `ping_timeout`.
    pub outbound_events: IntCounterVec,
    /// `fedgate_outbound_unacked`: stanzas written to remote servers and not yet acknowledged
    /// (XEP-0198), over all sessions.
    pub outbound_unacked: IntGauge,
    /// `fedgate_tls_handshakes_total{direction, result}`: result `ok` or `failed`.
    pub tls_handshakes: IntCounterVec,
    /// `fedgate_s2s_auth_total{direction, method, result}`: method `external` or `dialback`,
    /// result `success` or `failure`.
    pub s2s_auth: IntCounterVec,
    /// `fedgate_certificate_verdicts_total{direction, verdict}`: peers' certificates checked
    /// after the handshake, `valid` or why not (`self_signed`, `name_mismatch`, ...).
    pub certificate_verdicts: IntCounterVec,
    /// `fedgate_s2s_sm_total{direction, event}`: XEP-0198 stream management on s2s, event
    /// `enabled`, `resumed`, `resume_failed`, `acked` or `kept`.
    pub s2s_sm: IntCounterVec,
    /// The inbound half of `s2s_sm`, resolved.
    pub sm_in: SmCounters,
    /// The outbound half of `s2s_sm`, resolved (`kept` stays 0: only receivers keep state).
    pub sm_out: SmCounters,
}

impl Metrics {
    /// Creates every metric in a new registry.
    pub fn register() -> Metrics {
        let registry = Registry::new();
        let s2s_sessions = IntGaugeVec::new(
            Opts::new("fedgate_s2s_sessions", "Live s2s sessions"),
            &["direction"],
        )
        .expect("valid metric");
        let component_sessions = IntGauge::new(
            "fedgate_component_sessions",
            "Attached XEP-0114 backend sessions",
        )
        .expect("valid metric");
        let stanzas = IntCounterVec::new(
            Opts::new("fedgate_stanzas_total", "Stanzas relayed, by link and kind"),
            &["link", "direction", "kind"],
        )
        .expect("valid metric");
        let bytes = IntCounterVec::new(
            Opts::new(
                "fedgate_stanza_bytes_total",
                "Stanza bytes relayed, by link",
            ),
            &["link", "direction"],
        )
        .expect("valid metric");
        let bounces = IntCounterVec::new(
            Opts::new("fedgate_bounces_total", "Error stanzas returned to senders"),
            &["condition"],
        )
        .expect("valid metric");
        let dropped = IntCounterVec::new(
            Opts::new(
                "fedgate_stanzas_dropped_total",
                "Stanzas neither delivered nor bounced (error stanzas are never bounced)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let stream_errors = IntCounterVec::new(
            Opts::new(
                "fedgate_stream_errors_total",
                "Stream errors sent and received",
            ),
            &["direction", "condition"],
        )
        .expect("valid metric");
        let dialback = IntCounterVec::new(
            Opts::new("fedgate_dialback_total", "Server Dialback outcomes"),
            &["role", "result"],
        )
        .expect("valid metric");
        let outbound_attempts = IntCounterVec::new(
            Opts::new(
                "fedgate_outbound_attempts_total",
                "Outbound s2s connection attempts by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let outbound_stanzas = IntCounterVec::new(
            Opts::new(
                "fedgate_outbound_stanzas_total",
                "Outbound stanzas resent after a dropped link (XEP-0198), or unconfirmed when a link without it dropped",
            ),
            &["event"],
        )
        .expect("valid metric");
        let outbound_events = IntCounterVec::new(
            Opts::new(
                "fedgate_outbound_events_total",
                "Outbound link events: retries, pings, stream management",
            ),
            &["event"],
        )
        .expect("valid metric");
        let outbound_unacked = IntGauge::new(
            "fedgate_outbound_unacked",
            "Stanzas written to remote servers and not yet acknowledged (XEP-0198)",
        )
        .expect("valid metric");
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "fedgate_tls_handshakes_total",
                "TLS handshakes on s2s streams, by direction and result",
            ),
            &["direction", "result"],
        )
        .expect("valid metric");
        let s2s_auth = IntCounterVec::new(
            Opts::new(
                "fedgate_s2s_auth_total",
                "s2s authentications (SASL EXTERNAL or dialback), by direction, method and result",
            ),
            &["direction", "method", "result"],
        )
        .expect("valid metric");
        let certificate_verdicts = IntCounterVec::new(
            Opts::new(
                "fedgate_certificate_verdicts_total",
                "Peer certificates checked after TLS handshakes, by verdict",
            ),
            &["direction", "verdict"],
        )
        .expect("valid metric");
        let s2s_sm = IntCounterVec::new(
            Opts::new(
                "fedgate_s2s_sm_total",
                "XEP-0198 stream management on s2s, by direction and event",
            ),
            &["direction", "event"],
        )
        .expect("valid metric");
        for c in [
            Box::new(tls_handshakes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(s2s_sm.clone()),
            Box::new(s2s_auth.clone()),
            Box::new(certificate_verdicts.clone()),
            Box::new(s2s_sessions.clone()),
            Box::new(component_sessions.clone()),
            Box::new(stanzas.clone()),
            Box::new(bytes.clone()),
            Box::new(bounces.clone()),
            Box::new(dropped.clone()),
            Box::new(stream_errors.clone()),
            Box::new(dialback.clone()),
            Box::new(outbound_attempts.clone()),
            Box::new(outbound_stanzas.clone()),
            Box::new(outbound_events.clone()),
            Box::new(outbound_unacked.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let counters = |link: &str, direction: &str| StanzaCounters {
            message: stanzas.with_label_values(&[link, direction, "message"]),
            presence: stanzas.with_label_values(&[link, direction, "presence"]),
            iq: stanzas.with_label_values(&[link, direction, "iq"]),
            bytes: bytes.with_label_values(&[link, direction]),
        };
        let sm = |direction: &str| SmCounters {
            enabled: s2s_sm.with_label_values(&[direction, "enabled"]),
            resumed: s2s_sm.with_label_values(&[direction, "resumed"]),
            resume_failed: s2s_sm.with_label_values(&[direction, "resume_failed"]),
            acked: s2s_sm.with_label_values(&[direction, "acked"]),
            kept: s2s_sm.with_label_values(&[direction, "kept"]),
        };
        Metrics {
            sm_in: sm("inbound"),
            sm_out: sm("outbound"),
            s2s_sm,
            s2s_in: counters("s2s", "inbound"),
            s2s_out: counters("s2s", "outbound"),
            component_in: counters("component", "inbound"),
            component_out: counters("component", "outbound"),
            registry,
            s2s_sessions,
            component_sessions,
            bounces,
            dropped,
            stream_errors,
            dialback,
            outbound_attempts,
            outbound_stanzas,
            outbound_events,
            outbound_unacked,
            tls_handshakes,
            s2s_auth,
            certificate_verdicts,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        let _ = encoder.encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

/// Serves `/metrics` (Prometheus text format) and `/healthz` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};

    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let response = match req.uri().path() {
                        "/metrics" => Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(metrics.encode()))),
                        "/healthz" => {
                            Response::builder().body(Full::new(Bytes::from_static(b"ok\n")))
                        }
                        _ => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"not found\n"))),
                    };
                    Ok::<_, std::convert::Infallible>(
                        response.expect("static response parts are valid"),
                    )
                }
            });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(tcp);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
