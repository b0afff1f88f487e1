//! The command line: `fedgate run`, `fedgate check config`.

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
}
