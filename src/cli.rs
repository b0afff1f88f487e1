//! The command line: `fedgate run`, `fedgate reload`, `fedgate peers`,
//! `fedgate check config|dns|remote`, `fedgate core` (the c2s core alone) and
//! `fedgate core user add|remove|passwd|list|invite`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// fedgate: an XMPP server-to-server federation gateway.
#[derive(Debug, Parser)]
#[command(name = "fedgate", version, about)]
pub struct Cli {
    /// What to do; `main` dispatches on it.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `fedgate`. The help shows the docs of `Cli` and the variants, not this.
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
    /// Runs the c2s core alone, attached to a gateway over XEP-0114; or, with `user`, manages
    /// its accounts.
    Core {
        /// The core's TOML file (`config/core.toml`), or a gateway's file with a `[core]`
        /// section (for `user` commands).
        #[arg(long, short, default_value = "config/core.toml", global = true)]
        config: PathBuf,
        /// The `user` and `migrate` commands; without one, the core runs.
        #[command(subcommand)]
        command: Option<CoreCommand>,
    },
    /// Runs the group chat (`[muc]`) and file upload (`[upload]`) services alone, attached to
    /// a gateway over XEP-0114 like any component.
    Services {
        /// The services' TOML file.
        #[arg(long, short, default_value = "config/services.toml")]
        config: PathBuf,
    },
    /// Makes the running gateway read its configuration file again (like SIGHUP) and prints
    /// the outcome: the federation policy, certificates and backend secrets take effect at
    /// once, and live sessions the new policy refuses are closed. An invalid file is refused
    /// and the running configuration stays. Talks to the gateway over `[metrics] listen`.
    /// Exits 0 when reloaded, 1 when refused or unreachable, 64 for a bad file.
    Reload {
        /// The configuration file the gateway runs with (checked here first).
        #[arg(long, short, default_value = "config/fedgate.toml")]
        config: PathBuf,
    },
    /// Shows the remote domains the running gateway federates with: sessions in both
    /// directions, queue, whether the peer is up and its latest failure; with DOMAIN,
    /// everything about that peer (what each session negotiated, recent failures with their
    /// causes, the traces of the latest connection attempts). Reads `/peers` on
    /// `[metrics] listen`; `--json` prints it as served.
    Peers {
        /// One remote domain, e.g. `example.org`.
        domain: Option<String>,
        /// The gateway's configuration file (for `[metrics] listen`).
        #[arg(long, short, default_value = "config/fedgate.toml")]
        config: PathBuf,
        /// Print the JSON as the endpoint serves it.
        #[arg(long)]
        json: bool,
    },
    /// Diagnostics that change nothing.
    Check {
        /// Which check to run.
        #[command(subcommand)]
        what: Check,
    },
}

/// The subcommands of `fedgate check`.
#[derive(Debug, Subcommand)]
pub enum Check {
    /// Validates a configuration file: every problem with its key and fix (exit 64), or a
    /// summary and the effective configuration as TOML, defaults filled in and secrets
    /// redacted (exit 0). A TOML syntax error, a wrong type or an unknown key stops at the
    /// first one.
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
    /// Connects to a remote domain as fedgate would and reports each step (DNS, TCP, TLS and
    /// the peer's certificate, stream features, SASL EXTERNAL or a dialback round trip), then
    /// a verdict and the fix for the first step that failed. A dialback key is verified by
    /// our domain's running fedgate (same dialback secret file). Exits 0 when the remote
    /// authenticated us, 1 when a step failed, 64 for a bad domain or configuration.
    Remote {
        /// The remote domain, e.g. `example.org`.
        domain: String,
        /// The TOML configuration file: everything fedgate connects with applies.
        #[arg(long, short, default_value = "config/fedgate.toml")]
        config: PathBuf,
        /// The local domain to connect as (default: the first `[[component.backend]]`).
        #[arg(long)]
        from: Option<String>,
    },
}

/// The subcommands of `fedgate core`.
#[derive(Debug, Subcommand)]
pub enum CoreCommand {
    /// Accounts in the core's database.
    User {
        /// What to do with the accounts.
        #[command(subcommand)]
        action: UserAction,
    },
    /// Copies the core's data, every table, into another database that must be empty (e.g.
    /// from the SQLite file to PostgreSQL), in one transaction of the target, then prints
    /// the rows per table. Stop the core first; then point `database` at the target. Exits
    /// 0 when copied, 1 when refused or failed, 64 for a bad URL.
    Migrate {
        /// The database to copy from: `sqlite:FILE` (or a file's path) or a
        /// `postgres://USER@HOST/DBNAME` URL. Migrated to the current schema first.
        #[arg(long)]
        from: String,
        /// The empty database to copy into, written like `--from`; its schema is created.
        #[arg(long)]
        to: String,
    },
}

/// The subcommands of `fedgate core user`.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Creates an account. The password is read from the first line of standard input unless
    /// `--password` is given (which leaves it in the shell's history).
    Add {
        /// The address, `user@domain` (a domain or alias of the core).
        address: String,
        /// The password, instead of reading it from standard input.
        #[arg(long)]
        password: Option<String>,
    },
    /// Deletes an account with its roster and offline messages.
    Remove {
        /// The address, `user@domain`.
        address: String,
    },
    /// Sets a new password (read like `add`'s).
    Passwd {
        /// The address, `user@domain`.
        address: String,
        /// The new password, instead of reading it from standard input.
        #[arg(long)]
        password: Option<String>,
    },
    /// Lists the accounts.
    List,
    /// Creates a single-use registration invitation (for `registration = "invite"`) and
    /// prints it as an `xmpp:DOMAIN?register;preauth=TOKEN` URI.
    Invite {
        /// The domain the account will be in (default: the first `[[core.domain]]`).
        domain: Option<String>,
    },
}
