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
use hyper::{Response, StatusCode};
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// What the endpoint asks of the process it serves.
pub trait Status: Send + Sync + 'static {
    /// What keeps the process from being ready, one line each; empty when ready.
    fn not_ready(&self) -> Vec<String>;

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
                let response = answer(req.uri().path(), &metrics, &*status);
                async move { Ok::<_, Infallible>(response) }
            });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(tcp);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn answer(path: &str, metrics: &Metrics, status: &dyn Status) -> Response<Full<Bytes>> {
    let text = |code: StatusCode, body: String| {
        Response::builder()
            .status(code)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    match path {
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
