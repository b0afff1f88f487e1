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
use fedgate::core::config::{CoreConfig, CoreFile};

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
        Command::Core {
            config,
            command: Some(CoreCommand::User { action }),
        } => user_command(&config, action),
        Command::Core {
            config,
            command: None,
        } => run_core(&config),
        Command::Run { config, workers } => {
            init_tracing();
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("Error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
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
    signals.wait(&gateway).await;
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

    /// Waits for SIGTERM or SIGINT; on SIGHUP, re-reads certificates and goes on waiting.
    async fn wait(self, gateway: &fedgate::gateway::RunningGateway) {
        self.wait_reloading(&gateway.tls).await
    }

    async fn wait_reloading(mut self, tls: &fedgate::tls::Tls) {
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

/// `fedgate core --config config/core.toml`: the c2s core alone, attached to a gateway over
/// TCP.
fn run_core(file: &std::path::Path) -> ExitCode {
    init_tracing();
    let config = match CoreFile::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match build_runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let signals = Signals::install()?;
        let tls = Arc::new(fedgate::tls::Tls::from_tls_config(&config.tls)?);
        let secret = config.gateway.secret()?;
        let link = fedgate::core::GatewayLink {
            target: Target::Tcp(config.gateway.address),
            secrets: config
                .core
                .all_domains()
                .map(|d| (d.to_owned(), secret.clone()))
                .collect(),
            neighbours: Vec::new(),
        };
        let core = fedgate::core::start(&config.core, tls.clone(), link).await?;
        for addr in &core.c2s_addrs {
            tracing::info!("c2s listening on {addr}");
        }
        for addr in &core.direct_tls_addrs {
            tracing::info!("c2s direct TLS listening on {addr}");
        }
        tracing::info!(
            "fedgate core ready, serving {} through the gateway at {}",
            config.core.all_domains().collect::<Vec<_>>().join(", "),
            config.gateway.address
        );
        signals.wait_reloading(&tls).await;
        tracing::info!("shutting down");
        core.shutdown(SHUTDOWN_GRACE).await;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
