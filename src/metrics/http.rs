//! The metrics listener: `/metrics` (Prometheus text format), `/healthz` (the process answers)
//! and `/readyz` (it can do its job: listeners bound, every configured backend attached).
//!
//! It has its own listener and shutdown token, so that it is stopped last and the shutdown
//! itself can be watched.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// What the endpoint asks of the process it serves.
pub trait Status: Send + Sync + 'static {
    /// What keeps the process from being ready, one line each; empty when ready.
    fn not_ready(&self) -> Vec<String>;

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
    metrics: Metrics,
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
    metrics: &Metrics,
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
            metrics.ready.set(status.not_ready().is_empty() as i64);
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(metrics.encode())))
                .expect("static response parts are valid")
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let problems = status.not_ready();
            metrics.ready.set(problems.is_empty() as i64);
            if problems.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                let mut body = String::from("not ready:\n");
                for p in problems {
                    body.push_str("- ");
                    body.push_str(&p);
                    body.push('\n');
                }
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}
