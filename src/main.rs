//! The `fedgate` binary: parse the command line, load the config, run, map errors to exit codes
//! (64 for a bad config or command line, 1 for a runtime failure).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use fedgate::cli::{Check, Cli, Command, CoreCommand, UserAction};
use std::sync::Arc;

use fedgate::component::client::Target;
use fedgate::config::{Config, ConfigError};
use fedgate::core::accounts::Accounts;
use fedgate::core::config::{CoreConfig, CoreFile, Database};
use fedgate::notify::{notify, State};

/// jemalloc rather than the system allocator: with ten thousand streams opening and closing,
/// glibc's malloc keeps what they freed (10,000 closed TLS sessions left 370 MB resident, and
/// reopening them grew it by a fifth), where jemalloc with background purging gives it back
/// within seconds. Measured with `cargo bench --bench idle_sessions` (docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts: a background thread purges unused pages, dirty
/// pages are purged after a second (jemalloc's default is ten) and straight to the system (no
/// "muzzy" stage, whose pages still count as resident until the kernel needs them). The
/// environment variable `_RJEM_MALLOC_CONF` overrides them.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: a pointer to the first byte of a 'static, NUL-terminated string.
    unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() },
);

/// `EX_USAGE` from sysexits.h: bad configuration or command line.
const EXIT_CONFIG: u8 = 64;
/// How long each shutdown phase may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            what: Check::Config { file },
        } => ExitCode::from(
            fedgate::diagnostics::check_config(
                &file,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )
            .code(),
        ),
        Command::Check {
            what:
                Check::Remote {
                    domain,
                    config,
                    from,
                },
        } => check_remote(&domain, &config, from.as_deref()),
        Command::Check {
            what: Check::Dns { domain, config },
        } => check_dns(&domain, &config),
        Command::Reload { config } => reload(&config),
        Command::Peers {
            domain,
            config,
            json,
        } => peers(domain.as_deref(), &config, json),
        Command::Core {
            config,
            command: Some(CoreCommand::User { action }),
        } => user_command(&config, action),
        Command::Core {
            command: Some(CoreCommand::Migrate { from, to }),
            ..
        } => migrate_command(&from, &to),
        Command::Core {
            config,
            command: None,
        } => run_core(&config),
        Command::Services { config } => run_services(&config),
        Command::Run { config, workers } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("Error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            config.log.init();
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = workers {
                builder.worker_threads(n.max(1));
            }
            let runtime = match build_runtime(builder) {
                Ok(r) => r,
                Err(code) => return code,
            };
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    match e.downcast_ref::<fedgate::gateway::GatewayError>() {
                        Some(fedgate::gateway::GatewayError::Config(_)) => {
                            ExitCode::from(EXIT_CONFIG)
                        }
                        _ => ExitCode::FAILURE,
                    }
                }
            }
        }
    }
}

/// `fedgate check dns DOMAIN`: prints [`fedgate::dns::Report`]; exit 0 when there is an
/// address to connect to, 1 when there is none, 64 for a bad domain or configuration.
fn check_dns(domain: &str, file: &std::path::Path) -> ExitCode {
    let domain = match fedgate::jid::normalize_domain(domain) {
        Ok(d) => d.into_owned(),
        Err(e) => {
            eprintln!("Error: `{domain}` is not a domain: {e}; give a domain such as example.org");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match build_runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let report = runtime.block_on(async {
        let resolver = fedgate::dns::Resolver::from_config(&config)?;
        Ok::<_, fedgate::dns::ResolveError>(resolver.report(&domain).await)
    });
    match report {
        Ok(report) => {
            print!("{report}");
            if report.has_address() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!(
                "Error: {e}; check the system resolver configuration, or set [dns] nameservers in {}",
                file.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// `fedgate check remote DOMAIN`: see [`fedgate::diagnostics::RemoteCheck`].
fn check_remote(domain: &str, file: &std::path::Path, from: Option<&str>) -> ExitCode {
    use fedgate::diagnostics::{Exit, RemoteCheck};
    let check = match RemoteCheck::prepare(domain, file, from) {
        Ok(check) => check,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(Exit::Usage.code());
        }
    };
    let runtime = match build_runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(check.run()) {
        Ok(report) => {
            print!("{report}");
            ExitCode::from(report.exit().code())
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(Exit::Usage.code())
        }
    }
}

/// Loads the gateway's config for a command that talks to the running gateway; the address of
/// its metrics listener, or the exit code after saying what is wrong.
fn metrics_address(file: &std::path::Path) -> Result<std::net::SocketAddr, ExitCode> {
    let config = Config::load(file).map_err(|e| {
        eprintln!("Error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    if !config.metrics.enabled {
        eprintln!(
            "Error: [metrics] is disabled in {}, so the running gateway cannot be reached; enable it, or send SIGHUP to reload (kill -HUP <pid>)",
            file.display()
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    let mut addr = config.metrics.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr)
}

/// One HTTP/1.1 request to the running gateway's metrics listener: (status, body).
async fn ask_gateway(
    addr: std::net::SocketAddr,
    method: hyper::Method,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} in 5s"))??;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .map_err(|_| anyhow::anyhow!("{addr} did not answer in 30s"))??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Asks the running gateway of `file` (over its metrics listener): its answer (status, body),
/// or the exit code after saying what is wrong.
fn call_gateway(
    file: &std::path::Path,
    method: hyper::Method,
    path: &str,
) -> Result<(u16, String), ExitCode> {
    let addr = metrics_address(file)?;
    let runtime = build_runtime(tokio::runtime::Builder::new_current_thread())?;
    runtime
        .block_on(ask_gateway(addr, method, path))
        .map_err(|e| {
            eprintln!(
                "Error: cannot reach the gateway at {addr}: {e:#}; is fedgate running with {}?",
                file.display()
            );
            ExitCode::FAILURE
        })
}

/// `fedgate reload`: exit 0 when the gateway reloaded, 1 when it refused or cannot be reached,
/// 64 when the file is invalid (checked here first, with the key and the fix).
fn reload(file: &std::path::Path) -> ExitCode {
    match call_gateway(file, hyper::Method::POST, "/reload") {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((_, body)) => {
            eprint!("Error: {body}");
            ExitCode::FAILURE
        }
        Err(code) => code,
    }
}

/// `fedgate peers [DOMAIN]`: exit 0, 1 when the gateway cannot be reached, 64 for a bad domain
/// or file.
fn peers(domain: Option<&str>, file: &std::path::Path, json: bool) -> ExitCode {
    let domain = match domain.map(fedgate::jid::normalize_domain) {
        None => None,
        Some(Ok(d)) => Some(d.into_owned()),
        Some(Err(e)) => {
            eprintln!(
                "Error: `{}` is not a domain: {e}; give a domain such as example.org",
                domain.unwrap_or_default()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let path = match &domain {
        Some(d) => format!("/peers/{d}"),
        None => "/peers".into(),
    };
    let body = match call_gateway(file, hyper::Method::GET, &path) {
        Ok((200, body)) => body,
        Ok((status, body)) => {
            eprintln!("Error: the gateway answered {status}: {}", body.trim());
            return ExitCode::FAILURE;
        }
        Err(code) => return code,
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let printed = match domain {
        Some(_) => serde_json::from_str(&body).map(|v| fedgate::peers::render_one(&v)),
        None => serde_json::from_str(&body).map(|v| fedgate::peers::render_all(&v)),
    };
    match printed {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: the gateway sent an answer this fedgate does not understand ({e}); is it the same version?");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Installed before "ready" is logged, so a signal sent on seeing it is never lost to the
    // default action.
    let signals = Signals::install()?;
    let gateway = fedgate::gateway::start(&config).await?;
    for addr in &gateway.s2s_addrs {
        tracing::info!("s2s listening on {addr}");
    }
    for addr in &gateway.direct_tls_addrs {
        tracing::info!("s2s direct TLS listening on {addr}");
    }
    tracing::info!("components listening on {}", gateway.component_addr);
    if let Some(core) = &gateway.core {
        for addr in &core.c2s_addrs {
            tracing::info!("c2s listening on {addr}");
        }
        for addr in &core.direct_tls_addrs {
            tracing::info!("c2s direct TLS listening on {addr}");
        }
    }
    if let Some(addr) = gateway.metrics_addr {
        tracing::info!("metrics listening on {addr}");
    }
    tracing::info!(
        "fedgate ready, serving {}",
        gateway
            .router
            .local_domains()
            .collect::<Vec<_>>()
            .join(", ")
    );
    notify(State::Ready);
    signals.wait(&gateway).await;
    notify(State::Stopping);
    tracing::info!("shutting down");
    gateway.shutdown(SHUTDOWN_GRACE).await;
    tracing::info!("stopped");
    Ok(())
}

/// The signals fedgate acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM or SIGINT; on SIGHUP, reloads the configuration file (the reload
    /// logs its outcome) and goes on waiting.
    async fn wait(mut self, gateway: &fedgate::gateway::RunningGateway) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    notify(State::Reloading);
                    let _ = gateway.reload_file();
                    notify(State::Ready);
                }
            }
        }
    }

    /// Waits for SIGTERM or SIGINT, ignoring SIGHUP (nothing to reload yet).
    async fn terminated(&mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {}
            }
        }
    }

    /// Waits for SIGTERM or SIGINT; on SIGHUP, re-reads certificates (the standalone core).
    async fn wait_reloading(&mut self, tls: &fedgate::tls::Tls) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: certificates reloaded"),
                    Err(e) => tracing::error!("SIGHUP: certificates not reloaded, the old ones stay in use: {e}"),
                },
            }
        }
    }
}

/// Reads the `[core]` section: from a core file, or from a gateway file that has one.
fn load_core_config(file: &std::path::Path) -> Result<CoreConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
        path: file.to_owned(),
        source,
    })?;
    let is_gateway_file = text
        .parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("component") || t.contains_key("s2s"));
    if !is_gateway_file {
        return Ok(CoreFile::load(file)?.core);
    }
    Config::load(file)?
        .core
        .ok_or_else(|| ConfigError::Invalid {
            key: "core".into(),
            problem: "this gateway configuration has no [core] section".into(),
            fix: "add [core] with a [[core.domain]], or pass the core's own file".into(),
            path: Some(file.to_owned()),
        })
}

/// `fedgate core user ...`: exit 0, 1 when the command fails, 64 for a bad configuration.
/// `fedgate core migrate --from DATABASE --to DATABASE` (see `fedgate::core::storage::copy`).
fn migrate_command(from: &str, to: &str) -> ExitCode {
    let (from, to) = (Database::parse(from), Database::parse(to));
    for (flag, database) in [("--from", &from), ("--to", &to)] {
        if let Some(e) = database.problem() {
            eprintln!("Error: {flag}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    match fedgate::core::storage::copy::copy(&from, &to) {
        Ok(tables) => {
            for (table, rows) in tables {
                println!("{table}: {rows} rows");
            }
            println!("copied {from} to {to}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn user_command(file: &std::path::Path, action: UserAction) -> ExitCode {
    let config = match load_core_config(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let accounts = match Accounts::open(&config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let read_password = |given: Option<String>| -> String {
        given.unwrap_or_else(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            line.trim_end_matches(['\r', '\n']).to_owned()
        })
    };
    let result = match action {
        UserAction::Add { address, password } => accounts
            .add(&address, &read_password(password))
            .map(|a| println!("added {a}")),
        UserAction::Passwd { address, password } => accounts
            .passwd(&address, &read_password(password))
            .map(|a| println!("password changed for {a}")),
        UserAction::Remove { address } => {
            accounts.remove(&address).map(|a| println!("removed {a}"))
        }
        UserAction::Invite { domain } => accounts
            .invite(domain.as_deref())
            .map(|uri| println!("{uri}")),
        UserAction::List => accounts.list().map(|all| {
            for a in all {
                println!("{a}");
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds a runtime with every driver on; a failure is said on stderr and becomes the exit code.
fn build_runtime(
    mut builder: tokio::runtime::Builder,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("Error: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// The gateways a standalone process attaches to, for its "ready" line.
fn gateway_list(gateway: &fedgate::core::config::GatewayLinkConfig) -> String {
    let addresses: Vec<String> = gateway.address.iter().map(|a| a.to_string()).collect();
    addresses.join(", ")
}

/// A standalone process (the core, the services): loads its file (exit code 64 and one line
/// for a bad one), starts its logging, and runs `body` on a multi-threaded runtime; the exit
/// code says how it ended.
fn run_standalone<C, F>(
    load: impl FnOnce() -> Result<C, ConfigError>,
    init_log: impl FnOnce(&C),
    body: impl FnOnce(C) -> F,
) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = match load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_log(&config);
    let runtime = match build_runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(body(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `fedgate services --config config/services.toml`: `[muc]` and `[upload]` alone, attached
/// to a gateway over TCP.
fn run_services(file: &std::path::Path) -> ExitCode {
    run_standalone(
        || fedgate::services::ServicesFile::load(file),
        |c| c.log.init(),
        |config| async move {
            let mut signals = Signals::install()?;
            let services = fedgate::services::start(&config).await?;
            if let Some(addr) = services.upload_addr {
                tracing::info!("upload listening on {addr}");
            }
            let names: Vec<&str> = [
                config.muc.as_ref().map(|m| m.domain.as_str()),
                config.upload.as_ref().map(|u| u.domain.as_str()),
            ]
            .into_iter()
            .flatten()
            .collect();
            tracing::info!(
                "fedgate services ready, serving {} through the gateway at {}",
                names.join(", "),
                gateway_list(&config.gateway)
            );
            notify(State::Ready);
            signals.wait_reloading(&services.tls).await;
            notify(State::Stopping);
            tracing::info!("shutting down");
            services.shutdown().await;
            tracing::info!("stopped");
            Ok::<_, anyhow::Error>(())
        },
    )
}

/// `fedgate core --config config/core.toml`: the c2s core alone, attached to a gateway over
/// TCP.
fn run_core(file: &std::path::Path) -> ExitCode {
    run_standalone(
        || CoreFile::load(file),
        |c| c.log.init(),
        |config| async move {
            let signals = Signals::install()?;
            let tls = Arc::new(fedgate::tls::Tls::from_tls_config(&config.tls)?);
            let secret = config.gateway.secret()?;
            let link = fedgate::core::GatewayLink {
                gateways: config
                    .gateway
                    .address
                    .iter()
                    .map(|a| Target::Tcp(*a))
                    .collect(),
                secrets: config
                    .core
                    .all_domains()
                    .map(|d| (d.to_owned(), secret.clone()))
                    .collect(),
                neighbours: Vec::new(),
                acks: fedgate::component::client::AckSettings::from_gateway(&config.gateway),
            };
            let registry = prometheus::Registry::new();
            let status = Arc::new(fedgate::core::gateway_links::CoreStatus::default());
            // Served from before the core starts, so that a standby answers /readyz too; bound
            // first, so that a port clash stops the start cleanly.
            let metrics_shutdown = tokio_util::sync::CancellationToken::new();
            if let Some(addr) = config.metrics.listen {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {addr} (metrics.listen): {e}; if another process holds the port, stop it or change `metrics.listen`"
                )
            })?;
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!("metrics listening on {addr}");
                }
                let ready = prometheus::IntGauge::new(
                    "fedgate_core_ready",
                    "1 when /readyz answers 200: every domain has a link up to a gateway",
                )?;
                registry.register(Box::new(ready.clone()))?;
                let exposition = fedgate::metrics::http::Registered {
                    registry: registry.clone(),
                    ready,
                };
                tokio::spawn(fedgate::metrics::http::serve(
                    listener,
                    Arc::new(exposition),
                    status.clone(),
                    metrics_shutdown.clone(),
                ));
            }
            let mut signals = signals;
            let start = fedgate::core::start_with_status(
                &config.core,
                tls.clone(),
                link,
                &registry,
                status,
            );
            // A standby waits here until the active core stops; a signal ends the wait.
            let core = tokio::select! {
                core = start => core?,
                () = signals.terminated() => {
                    tracing::info!("stopped while on standby");
                    return Ok(());
                }
            };
            for addr in &core.c2s_addrs {
                tracing::info!("c2s listening on {addr}");
            }
            for addr in &core.direct_tls_addrs {
                tracing::info!("c2s direct TLS listening on {addr}");
            }
            tracing::info!(
                "fedgate core ready, serving {} through the gateway at {}",
                config.core.all_domains().collect::<Vec<_>>().join(", "),
                gateway_list(&config.gateway)
            );
            notify(State::Ready);
            let lost = core.lost();
            let took_over = tokio::select! {
                () = signals.wait_reloading(&tls) => false,
                () = lost.cancelled() => true,
            };
            notify(State::Stopping);
            tracing::info!("shutting down");
            core.shutdown(SHUTDOWN_GRACE).await;
            metrics_shutdown.cancel();
            if took_over {
                anyhow::bail!(
                "another fedgate core took over the database while this one had lost its connection; restart this one to make it the standby"
            );
            }
            tracing::info!("stopped");
            Ok::<_, anyhow::Error>(())
        },
    )
}
