//! The edge process assembled: listeners, router, sessions, metrics, and an orderly shutdown.
//!
//! Shutdown runs in phases so that nothing is lost, also when other instances of the
//! deployment are to carry the traffic meanwhile (a rolling restart, see docs/deployment.md):
//! 1. drain, bounded by `s2s.drain_timeout`: backends that declared the
//!    [drain protocol](crate::component::drain) get its notice and send new stanzas through
//!    another gateway; the s2s listeners stop and inbound streams end (a last XEP-0198 `<a/>`,
//!    then `<system-shutdown/>`), so that peers reconnect to another instance (SRV) and resend
//!    what we had not acknowledged. The drain waits until those backends have answered (so
//!    every stanza they sent us is routed) and those streams are closed ([`wait_drained`]);
//! 2. s2s: outbound sessions write out their queues, ask for a last acknowledgement and close
//!    (or bounce what they hold to the still-attached backends when they are not connected);
//! 3. backends: each component session writes what is queued for it, then `<system-shutdown/>`;
//! 4. metrics last, so the shutdown itself can be watched.
//!
//! With a `[core]` section the c2s core runs in this process, attached over an in-process
//! XEP-0114 link ([`LocalLink`]); it stops first, so its clients' unavailable presence still
//! goes out. With `[muc]` the chat service runs here too, over a link of its own; it stops
//! next, telling its occupants (status 332). With `[upload]` the file upload service runs
//! here too, over its own link, with its HTTPS listener; it stops after the chat service.
//!
//! Each phase is bounded by a grace period; when it expires the rest is abandoned and logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::component::{self, ComponentContext, LocalLink};
use crate::config::{Config, ConfigError};
use crate::dialback::{DialbackError, DialbackSecret};
use crate::dns::{ResolveError, Resolver};
use crate::metrics::{self, Metrics};
use crate::policy::Policy;
use crate::reload::{ReloadError, Reloaded, Reloader};
use crate::router::Router;
use crate::s2s::{self, S2sContext};
use crate::tls::{Tls, TlsError};

/// Why the gateway could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A listener could not be bound. `error` is not a `source`: the message says it once.
    #[error("cannot listen on {addr} ({key}): {error}; if another process holds the port, stop it or change `{key}`")]
    Bind {
        /// The configuration key that names the address.
        key: &'static str,
        /// The address from the configuration.
        addr: SocketAddr,
        /// The operating system's error (e.g. address in use, permission denied).
        error: std::io::Error,
    },
    /// The configuration is not valid (or a backend secret cannot be read).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The dialback secret file cannot be read or created.
    #[error(transparent)]
    Secret(#[from] DialbackError),
    /// The DNS resolver cannot be set up from the system or `[dns]` configuration.
    #[error("DNS resolver: {0}")]
    Resolver(#[from] ResolveError),
    /// A certificate, key or CA file cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The embedded c2s core (`[core]`) did not start.
    #[error("core: {0}")]
    Core(#[from] crate::core::CoreError),
    /// The chat service's rooms could not be read from the core's database.
    #[error("chat service (muc): database {0}")]
    Muc(#[from] crate::core::storage::StorageError),
    /// The upload service's files directory could not be opened.
    #[error("upload service: cannot open upload.directory {path}: {error}; create it or point upload.directory at a writable folder")]
    Upload {
        /// The configured `upload.directory`.
        path: std::path::PathBuf,
        /// Why it could not be opened.
        error: std::io::Error,
    },
}

/// How the drain (phase 1 of a shutdown) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Every backend told answered, the outbound queues were written and every inbound
    /// stream closed.
    Complete,
    /// `drain_timeout` passed first with this many backends that had not answered, this many
    /// stanzas still queued for remote servers, and this many inbound streams (or listeners)
    /// still open; the shutdown goes on without them.
    TimedOut {
        backends: usize,
        outbound: usize,
        inbound: usize,
    },
}

/// How often the drain looks whether the outbound queues are written out.
const QUEUE_POLL: Duration = Duration::from_millis(20);

/// Waits, at most `timeout`, until `backends` (a token per backend told of the drain that has
/// not answered) and `inbound` (the s2s listeners and inbound streams, told to end) are empty,
/// and then the outbound queues (`outbound_queued`, stanzas waiting) too. The queues count
/// only once both have ended, since until then either may add to them: a backend's last
/// stanzas before its answer, and what an ending XEP-0288 bidi stream held for its peer, which
/// it hands to a new outbound session ([`Router::reroute`]). Closes both trackers, so that they
/// count as done once empty.
async fn wait_drained(
    timeout: Duration,
    backends: &TaskTracker,
    outbound_queued: impl Fn() -> usize,
    inbound: &TaskTracker,
) -> Drained {
    backends.close();
    inbound.close();
    let all = async {
        tokio::join!(backends.wait(), inbound.wait());
        while outbound_queued() > 0 {
            tokio::time::sleep(QUEUE_POLL).await;
        }
    };
    match tokio::time::timeout(timeout, all).await {
        Ok(_) => Drained::Complete,
        Err(_) => Drained::TimedOut {
            backends: backends.len(),
            outbound: outbound_queued(),
            inbound: inbound.len(),
        },
    }
}

/// A started gateway: its bound addresses, and the handles to stop it.
pub struct RunningGateway {
    /// Inbound s2s listeners, as bound (port 0 in the config becomes the real port).
    pub s2s_addrs: Vec<SocketAddr>,
    /// Direct TLS (XEP-0368) s2s listeners, as bound.
    pub direct_tls_addrs: Vec<SocketAddr>,
    /// Certificates: [`RunningGateway::reload`] replaces them.
    pub tls: Arc<Tls>,
    /// The XEP-0114 component listener, as bound.
    pub component_addr: SocketAddr,
    /// The metrics listener, as bound, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The upload service's HTTPS listener (`[upload] listen`), as bound, if configured.
    pub upload_addr: Option<SocketAddr>,
    /// Attaches backends in this process (the embedded core) over in-memory pipes.
    component_link: LocalLink,
    /// Hands stanzas to the backends and the s2s sessions; shared with every session.
    pub router: Arc<Router>,
    /// What every s2s session shares: for diagnostics (the latest attempts per peer).
    pub s2s: Arc<S2sContext>,
    /// The embedded c2s core (`[core]`), if configured.
    pub core: Option<crate::core::RunningCore>,
    /// The embedded multi-user chat service (`[muc]`), if configured.
    muc: Option<crate::muc::RunningMuc>,
    /// The embedded file upload service (`[upload]`), if configured.
    upload: Option<crate::upload::RunningUpload>,
    /// Puts a new configuration in force (SIGHUP, `fedgate reload`).
    reloader: Arc<Reloader>,
    s2s_shutdown: CancellationToken,
    s2s_tracker: TaskTracker,
    /// The s2s listeners and inbound sessions: the drain waits for them to end.
    s2s_inbound_tracker: TaskTracker,
    /// The backends' side: its drain token and the tracker of backends yet to answer.
    component_ctx: Arc<ComponentContext>,
    /// `s2s.drain_timeout`.
    drain_timeout: Duration,
    component_shutdown: CancellationToken,
    component_tracker: TaskTracker,
    metrics_shutdown: CancellationToken,
    metrics_task: Option<JoinHandle<()>>,
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| GatewayError::Bind { key, addr, error })
}

/// Binds every listener and starts serving. Returns once all are bound.
pub async fn start(config: &Config) -> Result<RunningGateway, GatewayError> {
    config.validate()?;
    let named_peers = config
        .metrics
        .peers
        .iter()
        .chain(config.federation.peer.iter().map(|p| &p.domain))
        .cloned()
        .collect();
    let metrics = Metrics::register_with(named_peers, config.metrics.top_peers);
    metrics.expect_backends(config.local_domains());
    let secret = Arc::new(DialbackSecret::load_or_create(
        &config.s2s.dialback_secret_file,
    )?);
    let resolver = Resolver::from_config(config)?;
    let tls = Arc::new(Tls::from_config(config)?);
    let router = Arc::new(
        Router::new(
            config.local_domains().map(str::to_string),
            config.s2s.queue_max_bytes,
            Policy::from_config(&config.federation),
            metrics.clone(),
        )
        .with_stall_timeout(config.s2s.stall_timeout),
    );

    let s2s_shutdown = CancellationToken::new();
    let s2s_tracker = TaskTracker::new();
    let s2s_ctx = Arc::new(S2sContext::new(
        config,
        router.clone(),
        tls.clone(),
        resolver,
        secret,
        s2s_shutdown.clone(),
        s2s_tracker.clone(),
    ));
    {
        let ctx = s2s_ctx.clone();
        router.set_outbound_factory(Box::new(move |local, remote| {
            s2s::outbound::spawn(ctx.clone(), local, remote)
        }));
    }

    // Bind everything before serving anything, so a port clash fails the start cleanly.
    let mut s2s_listeners = Vec::new();
    for addr in &config.s2s.listen {
        s2s_listeners.push(bind("s2s.listen", *addr).await?);
    }
    let mut direct_tls_listeners = Vec::new();
    for addr in &config.s2s.direct_tls_listen {
        direct_tls_listeners.push(bind("s2s.direct_tls_listen", *addr).await?);
    }
    let component_listener = bind("component.listen", config.component.listen).await?;
    let metrics_listener = match (config.metrics.enabled, config.metrics.listen) {
        (true, addr) => Some(bind("metrics.listen", addr).await?),
        _ => None,
    };
    let upload_listener = match &config.upload {
        Some(u) => Some(bind("upload.listen", u.listen).await?),
        None => None,
    };

    let s2s_addrs = s2s_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let s2s_limit = Arc::new(Semaphore::new(config.s2s.max_connections));
    // Listeners and inbound streams stop at the start of a drain, before the outbound ones.
    let s2s_inbound_tracker = TaskTracker::new();
    for listener in s2s_listeners {
        let ctx = s2s_ctx.clone();
        s2s_inbound_tracker.spawn(crate::listener::accept_loop(
            "s2s",
            listener,
            s2s_limit.clone(),
            s2s_ctx.inbound_shutdown.clone(),
            s2s_inbound_tracker.clone(),
            move |tcp, peer, permit| s2s::inbound::handle(tcp, peer, ctx.clone(), permit),
        ));
    }
    let direct_tls_addrs = direct_tls_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    for listener in direct_tls_listeners {
        let ctx = s2s_ctx.clone();
        s2s_inbound_tracker.spawn(crate::listener::accept_loop(
            "s2s-direct-tls",
            listener,
            s2s_limit.clone(),
            s2s_ctx.inbound_shutdown.clone(),
            s2s_inbound_tracker.clone(),
            move |tcp, peer, permit| {
                s2s::inbound::handle_direct_tls(tcp, peer, ctx.clone(), permit)
            },
        ));
    }

    let component_shutdown = CancellationToken::new();
    let component_tracker = TaskTracker::new();
    let secrets = config.backend_secrets()?;
    let settings = &s2s_ctx.settings;
    let stanza_limits = settings.stanza_limits();
    let component_ctx = Arc::new(ComponentContext {
        router: router.clone(),
        secrets: arc_swap::ArcSwap::from_pointee(secrets.clone()),
        replace_on_conflict: config.component.replace_on_conflict,
        acknowledgements: config.component.acknowledgements,
        negotiation_limits: settings.negotiation_limits(),
        stanza_limits,
        negotiation_timeout: settings.negotiation_timeout,
        queue_len: config.s2s.queue_max_stanzas,
        reattach_grace: config.component.reattach_grace,
        drain: CancellationToken::new(),
        draining: TaskTracker::new(),
        shutdown: component_shutdown.clone(),
    });
    let component_link = LocalLink::new(component_ctx.clone(), component_tracker.clone());
    let reloader = Arc::new(Reloader::new(
        s2s_ctx.clone(),
        component_ctx.clone(),
        config.clone(),
    ));
    let component_addr = component_listener
        .local_addr()
        .unwrap_or(config.component.listen);
    {
        let ctx = component_ctx.clone();
        component_tracker.spawn(crate::listener::accept_loop(
            "component",
            component_listener,
            Arc::new(Semaphore::new(1024)),
            component_shutdown.clone(),
            component_tracker.clone(),
            move |tcp, peer, _permit| {
                let ctx = ctx.clone();
                async move {
                    component::handle(Box::new(tcp), peer, ctx).await;
                    drop(_permit);
                }
            },
        ));
    }

    let core = match &config.core {
        Some(core_config) => {
            let neighbours = config.local_domains().map(str::to_owned).collect();
            let link = crate::core::GatewayLink {
                gateways: vec![component::client::Target::Local(component_link.clone())],
                secrets,
                neighbours,
                acks: Default::default(),
            };
            Some(crate::core::start(core_config, tls.clone(), link, &metrics.registry).await?)
        }
        None => None,
    };
    let muc = match &config.muc {
        Some(m) => {
            let link = component::client::Target::Local(component_link.clone());
            let storage = core.as_ref().map(|c| c.core.storage.clone());
            let secret = crate::muc::in_process_secret();
            let figures = Some(metrics.muc.clone());
            Some(
                crate::muc::start(m, vec![link], Default::default(), secret, storage, figures)
                    .await?,
            )
        }
        None => None,
    };
    let mut upload_addr = None;
    let upload = match (&config.upload, upload_listener) {
        (Some(u), Some(listener)) => {
            upload_addr = listener.local_addr().ok();
            let at = crate::upload::Attachment {
                gateways: vec![component::client::Target::Local(component_link.clone())],
                acks: Default::default(),
                secret: component::in_process_secret().to_owned(),
                own_domains: config
                    .component
                    .backend
                    .iter()
                    .map(|b| b.domain.clone())
                    .collect(),
                tls: tls.clone(),
                metrics: Some(metrics.upload.clone()),
            };
            let started = crate::upload::start(u, listener, at);
            Some(started.map_err(|error| GatewayError::Upload {
                path: u.directory.clone(),
                error,
            })?)
        }
        _ => None,
    };

    let metrics_shutdown = CancellationToken::new();
    let mut metrics_addr = None;
    let metrics_task = metrics_listener.map(|l| {
        metrics_addr = l.local_addr().ok();
        let status = Arc::new(Status {
            router: router.clone(),
            tls: tls.clone(),
            // The chat service's domain too: ready once it is attached like the backends.
            backends: config.local_domains().map(str::to_owned).collect(),
            metrics: metrics.clone(),
            s2s: s2s_ctx.clone(),
            reloader: reloader.clone(),
        });
        tokio::spawn(metrics::http::serve(
            l,
            Arc::new(metrics.clone()),
            status,
            metrics_shutdown.clone(),
        ))
    });

    Ok(RunningGateway {
        s2s_addrs,
        direct_tls_addrs,
        tls,
        component_addr,
        metrics_addr,
        upload_addr,
        component_link,
        router,
        s2s: s2s_ctx,
        core,
        muc,
        upload,
        reloader,
        s2s_shutdown,
        s2s_tracker,
        s2s_inbound_tracker,
        component_ctx,
        drain_timeout: config.s2s.drain_timeout,
        component_shutdown,
        component_tracker,
        metrics_shutdown,
        metrics_task,
    })
}

impl RunningGateway {
    /// Puts `config` in force: federation policy, certificates and backend secrets, applied to
    /// live sessions too (see [`crate::reload`]). On error the running configuration stays.
    pub fn reload(&self, config: Config) -> Result<Reloaded, ReloadError> {
        self.reloader.apply(config)
    }

    /// Reads the configuration file fedgate was started with again and puts it in force.
    pub fn reload_file(&self) -> Result<Reloaded, ReloadError> {
        self.reloader.reload_file()
    }

    /// A link for backends in this process: `Target::Local(gateway.component_link())` attaches
    /// a [`component::client`] through the same XEP-0114 session code as the TCP listener.
    pub fn component_link(&self) -> LocalLink {
        self.component_link.clone()
    }

    /// The steps of the latest attempt to reach `remote`, if there was one.
    pub fn last_attempt(&self, remote: &str) -> Option<Arc<crate::s2s::trace::Trace>> {
        self.s2s.registry.traces_of(remote).pop()
    }

    /// Stops in the phases described in the module docs: the drain bounded by
    /// `s2s.drain_timeout`, each other phase by `grace`.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(core) = self.core {
            core.shutdown(grace).await;
        }
        if let Some(muc) = self.muc {
            if tokio::time::timeout(grace, muc.shutdown()).await.is_err() {
                tracing::warn!("the chat service did not stop in {grace:?}, terminating now");
            }
        }
        if let Some(upload) = self.upload {
            if tokio::time::timeout(grace, upload.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("the upload service did not stop in {grace:?}, terminating now");
            }
        }
        let drain = self.drain_timeout;
        tracing::info!("draining for at most {drain:?}: backends told, inbound streams ending");
        self.component_ctx.drain.cancel();
        self.s2s.inbound_shutdown.cancel();
        let started = tokio::time::Instant::now();
        let outbound_queued = || {
            let queues = self.router.outbound_queues();
            queues.iter().map(|(_, n)| n).sum()
        };
        match wait_drained(
            drain,
            &self.component_ctx.draining,
            outbound_queued,
            &self.s2s_inbound_tracker,
        )
        .await
        {
            Drained::Complete => {
                tracing::info!("drained in {:?}", started.elapsed());
            }
            Drained::TimedOut {
                backends,
                outbound,
                inbound,
            } => {
                tracing::warn!("the drain did not complete in {drain:?} ({backends} backends had not answered, {outbound} stanzas queued for remote servers, {inbound} inbound streams open), stopping now");
            }
        }
        self.s2s_shutdown.cancel();
        self.s2s_tracker.close();
        let s2s_done =
            async { tokio::join!(self.s2s_tracker.wait(), self.s2s_inbound_tracker.wait()) };
        if tokio::time::timeout(grace, s2s_done).await.is_err() {
            tracing::warn!("s2s sessions did not complete in {grace:?}, terminating now");
        }
        self.component_shutdown.cancel();
        self.component_tracker.close();
        if tokio::time::timeout(grace, self.component_tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("backend sessions did not complete in {grace:?}, terminating now");
        }
        self.metrics_shutdown.cancel();
        if let Some(task) = self.metrics_task {
            let _ = task.await;
        }
    }
}

/// What `/readyz` and the scrape-time gauges read. Listeners are bound before the metrics
/// endpoint starts, so readiness is about backends.
struct Status {
    router: Arc<Router>,
    tls: Arc<Tls>,
    /// Configured backend domains.
    backends: Vec<String>,
    metrics: Metrics,
    s2s: Arc<S2sContext>,
    reloader: Arc<Reloader>,
}

impl metrics::http::Status for Status {
    fn not_ready(&self) -> Vec<String> {
        self.backends
            .iter()
            .filter(|d| !self.router.component_attached(d))
            .map(|d| format!("no backend attached for {d}"))
            .collect()
    }

    fn peers(&self, domain: Option<&str>) -> Option<String> {
        let json = match domain {
            None => serde_json::to_string_pretty(&crate::peers::all(&self.s2s)),
            Some(d) => {
                let domain = crate::jid::normalize_domain(d).ok()?;
                serde_json::to_string_pretty(&crate::peers::one(&self.s2s, &domain))
            }
        };
        json.ok()
    }

    fn reload(&self) -> Result<String, String> {
        self.reloader
            .reload_file()
            .map(|r| r.to_string())
            .map_err(|e| e.to_string())
    }

    fn refresh(&self) {
        let queues: std::collections::HashMap<String, usize> =
            self.router.outbound_queues().into_iter().collect();
        self.metrics
            .outbound_queued
            .set(queues.values().sum::<usize>() as i64);
        self.metrics
            .peers
            .set_queues(|remote| queues.get(remote).copied().unwrap_or(0));
        for (domain, not_after) in self.tls.certificate_expiries() {
            self.metrics
                .certificate_expiry
                .with_label_values(&[&domain])
                .set(not_after as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const DRAIN: Duration = Duration::from_secs(10);

    /// Runs `wait_drained` with `queued` stanzas in the outbound queues; returns how it ended
    /// and when (simulated time).
    async fn drain(
        backends: &TaskTracker,
        queued: &Arc<AtomicUsize>,
        inbound: &TaskTracker,
        timeout: Duration,
    ) -> (Drained, Duration) {
        let started = tokio::time::Instant::now();
        let queued = queued.clone();
        let ended = wait_drained(
            timeout,
            backends,
            move || queued.load(Ordering::Relaxed),
            inbound,
        )
        .await;
        (ended, started.elapsed())
    }

    /// `what` happens after `after` of simulated time.
    fn later(after: Duration, what: impl FnOnce() + Send + 'static) {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            what();
        });
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_ends_once_the_backends_answered_the_queues_are_written_and_streams_closed() {
        let backends = TaskTracker::new();
        let inbound = TaskTracker::new();
        let queued = Arc::new(AtomicUsize::new(5));
        let answer = backends.token();
        later(Duration::from_secs(1), move || drop(answer));
        let written = queued.clone();
        later(Duration::from_secs(2), move || {
            written.store(0, Ordering::Relaxed)
        });
        inbound.spawn(tokio::time::sleep(Duration::from_secs(3)));
        let (ended, took) = drain(&backends, &queued, &inbound, DRAIN).await;
        assert_eq!(ended, Drained::Complete);
        assert_eq!(
            took,
            Duration::from_secs(3),
            "the last inbound stream closed at 3 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn empty_queues_count_only_once_the_backends_have_answered() {
        let backends = TaskTracker::new();
        let inbound = TaskTracker::new();
        // Empty at first, then a backend's last stanzas arrive before its answer.
        let queued = Arc::new(AtomicUsize::new(0));
        let answer = backends.token();
        let arriving = queued.clone();
        later(Duration::from_secs(1), move || {
            arriving.store(3, Ordering::Relaxed);
            drop(answer);
        });
        let written = queued.clone();
        later(Duration::from_secs(4), move || {
            written.store(0, Ordering::Relaxed)
        });
        let (ended, took) = drain(&backends, &queued, &inbound, DRAIN).await;
        assert_eq!(ended, Drained::Complete);
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(4) + 2 * QUEUE_POLL,
            "ended at {took:?}, before the queues were written"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn empty_queues_count_only_once_the_inbound_streams_have_ended() {
        let backends = TaskTracker::new();
        let inbound = TaskTracker::new();
        // A bidi stream's last stanzas for its peer go to an outbound queue as it ends (at
        // 1 s), and are written at 2 s.
        let queued = Arc::new(AtomicUsize::new(0));
        let handed_over = queued.clone();
        inbound.spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            handed_over.store(2, Ordering::Relaxed);
        });
        let written = queued.clone();
        later(Duration::from_secs(2), move || {
            written.store(0, Ordering::Relaxed)
        });
        let (ended, took) = drain(&backends, &queued, &inbound, DRAIN).await;
        assert_eq!(ended, Drained::Complete);
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(2) + 2 * QUEUE_POLL,
            "ended at {took:?}, before what the stream handed over was written"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_drain_timeout_the_drain_gives_up_and_says_what_was_pending() {
        let backends = TaskTracker::new();
        let inbound = TaskTracker::new();
        let queued = Arc::new(AtomicUsize::new(7));
        let _never_answers = backends.token();
        inbound.spawn(std::future::pending::<()>());
        let (ended, took) = drain(&backends, &queued, &inbound, DRAIN).await;
        assert_eq!(
            ended,
            Drained::TimedOut {
                backends: 1,
                outbound: 7,
                inbound: 1
            }
        );
        assert_eq!(took, DRAIN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_drain_timeout_waits_for_nothing() {
        let backends = TaskTracker::new();
        let inbound = TaskTracker::new();
        let queued = Arc::new(AtomicUsize::new(0));
        let (ended, took) = drain(&backends, &queued, &inbound, Duration::ZERO).await;
        assert_eq!(ended, Drained::Complete, "nothing was pending");
        assert_eq!(took, Duration::ZERO);
        let _never_answers = backends.token();
        let (ended, took) = drain(&backends, &queued, &inbound, Duration::ZERO).await;
        assert!(matches!(ended, Drained::TimedOut { backends: 1, .. }));
        assert_eq!(took, Duration::ZERO);
    }
}
