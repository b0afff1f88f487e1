//! The metrics listener: `/metrics` (Prometheus text format), `/healthz` (the process answers)
//! and `/readyz` (it can do its job: for the gateway, listeners bound and every configured
//! backend attached; for a standalone core, a link up to a gateway for every domain).
//!
//! It has its own listener and shutdown token, so that it is stopped last and the shutdown
//! itself can be watched. The gateway and the standalone core serve it alike: each brings its
//! [`Exposition`] (what `/metrics` shows) and its [`Status`] (what `/readyz` says).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// What `/metrics` shows, and the gauge that mirrors `/readyz`.
pub trait Exposition: Send + Sync + 'static {
    /// The text exposition of every metric.
    fn encode(&self) -> String;
    /// Sets the readiness gauge (`fedgate_ready`, `fedgate_core_ready`).
    fn set_ready(&self, ready: bool);
}

impl Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }

    fn set_ready(&self, ready: bool) {
        self.ready.set(ready as i64);
    }
}

/// A registry and its readiness gauge: the exposition of a process without the gateway's
/// [`Metrics`] (the standalone core).
pub struct Registered {
    /// The process's metrics, gathered at each scrape.
    pub registry: prometheus::Registry,
    /// The readiness gauge (`fedgate_core_ready`), registered in `registry` by the caller.
    pub ready: prometheus::IntGauge,
}

impl Exposition for Registered {
    fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }

    fn set_ready(&self, ready: bool) {
        self.ready.set(ready as i64);
    }
}

/// What the endpoint asks of the process it serves.
pub trait Status: Send + Sync + 'static {
    /// What keeps the process from being ready, one line each; empty when ready.
    fn not_ready(&self) -> Vec<String>;

    /// Lines `/readyz` shows after its verdict either way, e.g. the state of every link, so
    /// that an operator sees which one is down before it matters.
    fn detail(&self) -> Vec<String> {
        Vec::new()
    }

    /// `/peers` (`None`) or `/peers/{domain}`, as JSON; `None` for a domain that is not one.
    fn peers(&self, _domain: Option<&str>) -> Option<String> {
        None
    }

    /// `POST /reload`: reads the configuration file again and puts it in force; the outcome
    /// in one line.
    fn reload(&self) -> Result<String, String> {
        Err("reload is not available here".into())
    }

    /// Brings gauges that are read rather than counted (certificate expiry, ...) up to date;
    /// called before each scrape.
    fn refresh(&self) {}
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<dyn Exposition>,
    status: Arc<dyn Status>,
    shutdown: CancellationToken,
) {
    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let status = status.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let method = req.method().clone();
                let path = req.uri().path().to_string();
                let (metrics, status) = (metrics.clone(), status.clone());
                async move {
                    // Reloading reads files and loads keys: off the reactor threads.
                    let response = tokio::task::spawn_blocking(move || {
                        answer(&method, &path, &metrics, &*status)
                    })
                    .await
                    .unwrap_or_else(|_| {
                        Response::builder()
                            .status(StatusCode::INTERNAL_SERVER_ERROR)
                            .body(Full::new(Bytes::from("internal error\n")))
                            .expect("static response parts are valid")
                    });
                    Ok::<_, Infallible>(response)
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

fn answer(
    method: &Method,
    path: &str,
    metrics: &Arc<dyn Exposition>,
    status: &dyn Status,
) -> Response<Full<Bytes>> {
    let text = |code: StatusCode, body: String| {
        Response::builder()
            .status(code)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    let json = |body: String| {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if path == "/reload" {
        if method != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST /reload reloads the configuration (fedgate reload)\n".into(),
            );
        }
        return match status.reload() {
            Ok(done) => text(StatusCode::OK, format!("{done}\n")),
            Err(e) => text(StatusCode::CONFLICT, format!("{e}\n")),
        };
    }
    match path {
        "/peers" | "/peers/" => match status.peers(None) {
            Some(body) => json(body),
            None => text(StatusCode::NOT_FOUND, "not found\n".into()),
        },
        p if p.starts_with("/peers/") => match status.peers(Some(&p["/peers/".len()..])) {
            Some(body) => json(body),
            None => text(StatusCode::NOT_FOUND, "not a domain\n".into()),
        },
        "/metrics" => {
            status.refresh();
            metrics.set_ready(status.not_ready().is_empty());
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(metrics.encode())))
                .expect("static response parts are valid")
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let problems = status.not_ready();
            metrics.set_ready(problems.is_empty());
            let (code, mut body) = if problems.is_empty() {
                (StatusCode::OK, String::from("ready\n"))
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    String::from("not ready:\n"),
                )
            };
            for p in problems {
                body.push_str("- ");
                body.push_str(&p);
                body.push('\n');
            }
            for line in status.detail() {
                body.push_str(&line);
                body.push('\n');
            }
            text(code, body)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}
