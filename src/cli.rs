//! The command line: `fedgate run`, `fedgate check config`, `fedgate check dns`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// fedgate: an XMPP server-to-server federation gateway.
#[derive(Debug, Parser)]
#[command(name = "fedgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the gateway.
    Run {
        /// The TOML configuration file.
        #[arg(long, short, default_value = "config/fedgate.toml")]
        config: PathBuf,
        /// Runtime worker threads (overrides the number of CPUs).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Diagnostics that change nothing.
    Check {
        #[command(subcommand)]
        what: Check,
    },
}

#[derive(Debug, Subcommand)]
pub enum Check {
    /// Validates a configuration file and prints what it configures.
    Config {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Shows how fedgate would reach a remote domain: the DNS answers (SRV, A/AAAA), the
    /// hosts and addresses in the order it would try them, and what is wrong. Exits 0 when
    /// there is at least one address to connect to, 1 when there is none.
    Dns {
        /// The remote domain, e.g. `example.org`.
        domain: String,
        /// The TOML configuration file: its `[dns]` and `[[s2s.route]]` apply.
        #[arg(long, short, default_value = "config/fedgate.toml")]
        config: PathBuf,
    },
}
