//! The `fedgate` binary: parse the command line, load the config, run, map errors to exit codes
//! (64 for a bad config or command line, 1 for a runtime failure).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use fedgate::cli::{Check, Cli, Command};
use fedgate::config::Config;

/// `EX_USAGE` from sysexits.h: bad configuration or command line.
const EXIT_CONFIG: u8 = 64;
/// How long each shutdown phase may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            what: Check::Config { file },
        } => match Config::load(&file) {
            Ok(config) => {
                let domains: Vec<&str> = config.local_domains().collect();
                println!(
                    "{}: OK — serves {}; s2s on {:?}; components on {}",
                    file.display(),
                    domains.join(", "),
                    config.s2s.listen,
                    config.component.listen
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Check {
            what: Check::Dns { domain, config },
        } => check_dns(&domain, &config),
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
            builder.enable_all();
            if let Some(n) = workers {
                builder.worker_threads(n.max(1));
            }
            let runtime = match builder.build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("Error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
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
    async fn wait(mut self, gateway: &fedgate::gateway::RunningGateway) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => match gateway.reload_tls() {
                    Ok(()) => tracing::info!("SIGHUP: certificates reloaded"),
                    Err(e) => tracing::error!("SIGHUP: certificates not reloaded, the old ones stay in use: {e}"),
                },
            }
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
