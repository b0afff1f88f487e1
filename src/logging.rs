//! `[log]`: what the daemon writes to stderr, and in which format.
//!
//! One event per line, with the same fields in both formats (peer, domain, cause, ...):
//! - `format = "text"` (default): human-readable; ANSI colours only when stderr is a terminal
//!   and `NO_COLOR` is not set (<https://no-color.org>), so log files and journald get plain
//!   text;
//! - `format = "json"`: one JSON object per line (`timestamp`, `level`, `target`, `fields`),
//!   for log shippers.
//!
//! `RUST_LOG`, when set, overrides `level` (e.g. `RUST_LOG=fedgate::s2s=debug,info`).

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `"text"`: for people; coloured only on a terminal without `NO_COLOR`.
    #[default]
    Text,
    /// `"json"`: one object per line, for log shippers.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"text"` or `"json"`. Default `"text"`.
    pub format: LogFormat,
    /// The least severe level written: `error`, `warn`, `info`, `debug` or `trace`, or a
    /// filter such as `"info,fedgate::s2s=debug"`. Default `"info"`. `debug` logs every
    /// stream's negotiation (peer addresses and domains): mind the volume and the privacy.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl LogConfig {
    /// Whether `level` is a filter tracing understands.
    pub fn check_level(&self) -> Result<(), String> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Installs the global subscriber. Call once, before anything logs.
    pub fn init(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new(&self.level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // A log line that cannot be written is dropped. tracing-subscriber's default reports
        // it with `eprintln!`, which panics when stderr is gone: a closed log pipe (a
        // supervisor restarted, a `| head`) would then panic whichever task logs next.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .log_internal_errors(false);
        match self.format {
            LogFormat::Text => builder.with_ansi(colours()).init(),
            LogFormat::Json => builder.json().with_ansi(false).init(),
        }
    }
}

/// Colours only for a person at a terminal who did not ask for none.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
