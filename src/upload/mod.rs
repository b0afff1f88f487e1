//! XEP-0363 HTTP file upload: a service on its own domain (`[upload] domain`), attached to
//! the gateway through [`crate::component::client`] like any backend (in process, over a
//! [`crate::component::LocalLink`], as `[muc]` is), with an HTTPS listener of its own.
//!
//! 1. A client finds the domain in its server's disco#items and reads its disco#info
//!    ([`disco`]): `store/file`, the feature and `max-file-size`.
//! 2. It asks for a slot (`<request filename size content-type/>`, §4); [`service`] answers
//!    users of the allowed domains ([`UploadConfig::allow_domains`]) with a slot ([`slot`])
//!    whose `Authorization` token ([`token`]) is signed for the path, size, type, owner and
//!    expiry, or with the refusal the XEP names (too large, over quota).
//! 3. It PUTs the file over HTTPS ([`http`]); [`put`] decides whether the PUT matches its
//!    slot, and the body streams to disk ([`store`]).
//! 4. Whoever has the URL GETs it, until `expire_after`: then a sweep deletes it.
//!
//! The token key is made once per process and never written: a slot given out before a
//! restart cannot be used after it (slots live minutes), stored files are unaffected.
//!
//! # Layout
//! - [`config`]: the `[upload]` section.
//! - [`service`]: the XMPP side: disco and slot requests.
//! - [`slot`], [`token`], [`put`], [`disco`]: the rules, sans I/O.
//! - [`store`]: the files on disk and the per-account usage.
//! - [`http`]: the HTTPS listener: PUT, GET, HEAD, OPTIONS.

pub mod config;
pub mod disco;
pub mod http;
pub mod put;
pub mod service;
pub mod slot;
pub mod store;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::component::client::{ClientConfig, Component, Event, Target};
use crate::metrics::UploadMetrics;
use crate::tls::Tls;

pub use self::config::UploadConfig;
pub use self::service::Service;

/// Most HTTPS connections at once.
const MAX_CONNECTIONS: usize = 256;

/// How often expired files are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A started service.
pub struct RunningUpload {
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// What the service needs of the gateway that runs it.
pub struct Attachment {
    /// Where its component link goes.
    pub gateways: Vec<Target>,
    /// Acknowledgements on that link.
    pub acks: crate::component::client::AckSettings,
    /// The link's handshake secret.
    pub secret: String,
    /// The sender domains given slots when `allow_domains` is empty: the gateway's own.
    pub own_domains: Vec<String>,
    /// The `[tls]` certificates, for the HTTPS listener (one must cover the URLs' host).
    pub tls: Arc<Tls>,
    /// Where slots, uploads and refusals are counted; `None` counts nothing.
    pub metrics: Option<UploadMetrics>,
}

/// Opens the files directory, attaches the service as `config.domain` and serves HTTPS on
/// `listener` (bound by the caller, so a port clash fails the start cleanly).
pub fn start(
    config: &UploadConfig,
    listener: TcpListener,
    at: Attachment,
) -> std::io::Result<RunningUpload> {
    // The default URL names the port as bound (port 0 in the config becomes the real one).
    let mut config = config.clone();
    if let Ok(bound) = listener.local_addr() {
        config.listen = bound;
    }
    let config = &config;
    let files = Arc::new(store::Files::open(&config.directory)?);
    let key: [u8; 32] = rand::random();
    let signer = token::Signer::new(&key);
    let allowed = if config.allow_domains.is_empty() {
        at.own_domains
    } else {
        config.allow_domains.clone()
    };
    let service = Service::new(
        config,
        allowed,
        signer.clone(),
        files.clone(),
        at.metrics.clone(),
    );
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let component = Component::start(
        ClientConfig::with_gateways(&config.domain, &at.secret, at.gateways).with_acks(at.acks),
    );
    tasks.spawn(serve(service, component, stop.clone()));
    tasks.spawn(sweep(
        files.clone(),
        SWEEP_INTERVAL,
        now_secs,
        at.metrics.clone(),
        stop.clone(),
    ));
    let ctx = Arc::new(http::HttpContext {
        files,
        signer,
        prefix: config.url_path(),
        host: config.url_host().unwrap_or_else(|| config.domain.clone()),
        quota: config.quota,
        expire_after: config.expire_after.as_secs(),
        tls: at.tls,
        metrics: at.metrics,
    });
    tasks.spawn(crate::listener::accept_loop(
        "upload",
        listener,
        Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        stop.clone(),
        tasks.clone(),
        move |tcp, peer, permit| {
            let ctx = ctx.clone();
            async move {
                http::handle(tcp, peer, ctx).await;
                drop(permit);
            }
        },
    ));
    Ok(RunningUpload { stop, tasks })
}

impl RunningUpload {
    /// Stops the link, the sweep and the listener; uploads under way are cut off (their
    /// partial files are deleted at the next start).
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Answers stanzas one at a time until `stop`.
async fn serve(service: Service, component: Component, stop: CancellationToken) {
    let (sender, mut events, stopper) = component.into_parts();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = events.recv() => e,
        };
        let Some(event) = event else { break };
        let Event::Stanza(stanza) = event else {
            continue;
        };
        let Ok(el) = stanza.element() else { continue };
        if let Some(reply) = service.handle(&el, now_secs()) {
            if sender.send(&reply).await.is_err() {
                break;
            }
        }
    }
    stopper.stop().await;
}

/// Deletes expired files every `every` (and once at start), `now` being the wall clock in
/// seconds since the epoch (file expiries outlive restarts, so they are not monotonic
/// instants), and keeps the stored-bytes gauge up to date.
async fn sweep(
    files: Arc<store::Files>,
    every: Duration,
    now: impl Fn() -> u64,
    metrics: Option<UploadMetrics>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let deleted = files.sweep(now()).await;
        if deleted > 0 {
            tracing::info!(files = deleted, "expired uploads deleted");
        }
        if let Some(m) = &metrics {
            m.expired.inc_by(deleted as u64);
            m.stored_bytes.set(files.totals().0 as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn the_sweep_runs_on_its_timer_and_deletes_what_expired() {
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(store::Files::open(dir.path()).unwrap());
        let id = store::new_id();
        let f = files.begin(&id).await.unwrap();
        let meta = store::Meta {
            name: "a".into(),
            content_type: "text/plain".into(),
            size: 0,
            owner: "alice@a.test".into(),
            expires: 1_000,
        };
        files.commit(&id, f, meta).await.unwrap();
        let clock = Arc::new(AtomicU64::new(900));
        let stop = CancellationToken::new();
        let task = tokio::spawn(sweep(
            files.clone(),
            SWEEP_INTERVAL,
            {
                let clock = clock.clone();
                move || clock.load(Ordering::SeqCst)
            },
            None,
            stop.clone(),
        ));
        // The first sweep, at start, finds nothing expired.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(files.lookup(&id, "a").is_some());
        // The file expires; the next tick deletes it.
        clock.store(1_001, Ordering::SeqCst);
        tokio::time::sleep(SWEEP_INTERVAL).await;
        assert_eq!(files.lookup(&id, "a"), None);
        assert!(!dir.path().join(&id).exists());
        stop.cancel();
        task.await.unwrap();
    }
}
