//! The configuration's one error type and the helpers that build its messages: one line that
//! names the file and key and says how to fix it. The floor of `config/`: every section,
//! including the core's, the MUC's and the upload service's, imports it, and it imports none
//! of them.

use std::io;
use std::path::{Path, PathBuf};

/// A configuration problem. All are fatal: the gateway does not start (exit code 64).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{}: cannot read the configuration file: {source}; check the path and its permissions", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type, or a key is unknown.
    /// `message` keeps toml's own message (which names the key) with the line and column.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file (`<inline>` when parsed from a string).
        path: PathBuf,
        /// One line: position, enclosing table, toml's message.
        message: String,
    },
    /// The file parsed but a value is not acceptable.
    #[error("{}{key}: {problem}; {fix}", file_prefix(.path.as_deref()))]
    Invalid {
        /// The key, as a TOML path with zero-based indices, e.g. `component.backend[1].domain`.
        key: String,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
        /// The configuration file, when known ([`Config::load`] fills it in).
        path: Option<PathBuf>,
    },
}

impl ConfigError {
    /// Names the file in an [`ConfigError::Invalid`] found while checking it.
    pub fn in_file(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Invalid {
                key, problem, fix, ..
            } => ConfigError::Invalid {
                key,
                problem,
                fix,
                path: Some(file.to_owned()),
            },
            other => other,
        }
    }
}

/// The first of a non-empty list of problems.
pub(super) fn first(problems: Vec<ConfigError>) -> ConfigError {
    problems
        .into_iter()
        .next()
        .expect("a failed load has at least one problem")
}

fn file_prefix(path: Option<&Path>) -> String {
    path.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

pub(crate) fn invalid(
    key: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
        path: None,
    }
}

/// One line from a toml error: position, the table it is in, and toml's message (which names
/// the offending key or value).
pub(crate) fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(|l| l.split('#').next())
        .map(|l| format!(" in {}", l.trim()))
        .unwrap_or_default();
    format!("line {line}, column {column}{table}: {message}")
}
