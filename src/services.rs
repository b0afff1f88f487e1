//! `fedgate services --config config/services.toml`: the group chat (`[muc]`) and file upload
//! (`[upload]`) services as a process of their own, attached to a gateway over XEP-0114 like
//! any other component, so that they restart (or move to another host) without touching s2s.
//!
//! 1. The file has the gateway file's `[muc]` and `[upload]` sections (either or both),
//!    `[gateway]` as the standalone core's (`address`, one or several instances, and `secret`
//!    or `secret_file`), `[tls]` for the upload service's HTTPS certificate, and `[storage]`
//!    `database` for persistent rooms (the core's database, an SQLite file or PostgreSQL URL;
//!    without it rooms live in memory only).
//! 2. The gateway serves the services' domains as `[[component.backend]]` tables with that
//!    secret (and has no `[muc]`/`[upload]` of its own).
//! 3. Run alone, the upload service cannot know the gateway's own domains, so
//!    `upload.allow_domains` must name whose users get slots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::component::client::Target;
use crate::config::{invalid, ConfigError, TlsConfig};
use crate::core::config::{Database, GatewayLinkConfig};
use crate::core::storage::{Storage, StorageError, StorageMetrics};
use crate::muc::{MucConfig, RunningMuc};
use crate::tls::Tls;
use crate::upload::{RunningUpload, UploadConfig};

/// The whole of `config/services.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesFile {
    /// `[muc]`: as in the gateway's file.
    pub muc: Option<MucConfig>,
    /// `[upload]`: as in the gateway's file; `allow_domains` is required here.
    pub upload: Option<UploadConfig>,
    /// `[gateway]`: where the gateway's component listener is, as in the core's file.
    #[serde(default)]
    pub gateway: GatewayLinkConfig,
    /// `[tls]`: the upload service's certificate, for the host of its URLs.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[storage]`: where persistent rooms are kept.
    #[serde(default)]
    pub storage: StorageConfig,
    /// `[log]`: as in the gateway's file.
    #[serde(default)]
    pub log: crate::logging::LogConfig,
}

/// `[storage]` of the services' file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The database of persistent rooms and room archives: the core's (`database` of its
    /// `[core]`), an SQLite file relative to this file, or a PostgreSQL URL. Default: none,
    /// rooms live in memory. With SQLite, two processes on one file wait on each other's
    /// writes: give the services a file of their own, or share a PostgreSQL database.
    pub database: Option<String>,
}

impl ServicesFile {
    /// Reads, parses, resolves relative paths and validates the file.
    pub fn load(path: &Path) -> Result<ServicesFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        ServicesFile::parse(&text, &dir, path).map_err(|e| e.in_file(path))
    }

    fn parse(text: &str, base_dir: &Path, path: &Path) -> Result<ServicesFile, ConfigError> {
        let mut file: ServicesFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: crate::config::parse_message(text, &e),
        })?;
        if let Some(u) = &mut file.upload {
            u.resolve_paths(base_dir);
        }
        if let Some(p) = &mut file.gateway.secret_file {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        }
        file.tls.resolve_paths(base_dir);
        if let Some(db) = &mut file.storage.database {
            if let Database::Sqlite(p) = Database::parse(db) {
                if p.is_relative() {
                    *db = base_dir.join(p).display().to_string();
                }
            }
        }
        file.validate()?;
        Ok(file)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.muc.is_none() && self.upload.is_none() {
            return Err(invalid(
                "muc",
                "the file has neither [muc] nor [upload]",
                "add the service(s) to run, e.g. [muc] domain = \"conference.example.test\"",
            ));
        }
        let mut problems: Vec<ConfigError> = Vec::new();
        if let Some(m) = &self.muc {
            problems.extend(m.problems());
        }
        if let Some(u) = &self.upload {
            problems.extend(u.problems());
            if u.allow_domains.is_empty() {
                problems.push(invalid(
                    "upload.allow_domains",
                    "run on its own, the upload service does not know whose users it serves",
                    "list the domains whose users get slots, e.g. allow_domains = [\"example.test\"]",
                ));
            }
            if self.muc.as_ref().is_some_and(|m| m.domain == u.domain) {
                problems.push(invalid(
                    "upload.domain",
                    format!("`{}` is also the [muc] domain", u.domain),
                    "give each service a domain of its own",
                ));
            }
            problems.extend(u.uncovered_url_host(&self.tls));
        }
        if let Some(db) = &self.storage.database {
            if let Some(e) = Database::parse(db).problem() {
                problems.push(e);
            }
        }
        if let Some(first) = problems.into_iter().next() {
            return Err(first);
        }
        self.gateway.secret()?;
        self.gateway.check_addresses()?;
        Ok(())
    }
}

/// Why the services did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServicesError {
    /// The services' file is not valid, or the gateway secret cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The upload service's certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The `[storage]` database cannot be opened, or the chat service cannot read its rooms.
    #[error("database {0}")]
    Storage(#[from] StorageError),
    /// The upload service's HTTPS listener cannot be bound.
    #[error("cannot listen on {addr} (upload.listen): {error}; if another process holds the port, stop it or change `upload.listen`")]
    Bind {
        /// The `upload.listen` address.
        addr: std::net::SocketAddr,
        /// The operating system's error (e.g. address in use).
        error: std::io::Error,
    },
    /// The upload service's files directory cannot be opened.
    #[error("upload directory {path}: {error}")]
    Upload {
        /// The configured `upload.directory`.
        path: PathBuf,
        /// Why it could not be opened.
        error: std::io::Error,
    },
}

/// The started services.
pub struct RunningServices {
    muc: Option<RunningMuc>,
    upload: Option<RunningUpload>,
    /// The upload service's HTTPS listener, as bound.
    pub upload_addr: Option<std::net::SocketAddr>,
    /// The certificates, for SIGHUP.
    pub tls: Arc<Tls>,
}

/// Attaches every configured service to the gateways of `file`.
pub async fn start(file: &ServicesFile) -> Result<RunningServices, ServicesError> {
    let tls = Arc::new(Tls::from_tls_config(&file.tls)?);
    let secret = file.gateway.secret()?;
    let gateways: Vec<Target> = file
        .gateway
        .address
        .iter()
        .map(|a| Target::Tcp(*a))
        .collect();
    let storage = match &file.storage.database {
        Some(db) => Some(Storage::open(
            &Database::parse(db),
            StorageMetrics::unregistered(),
        )?),
        None => None,
    };
    let muc = match &file.muc {
        Some(m) => Some(
            crate::muc::start(
                m,
                gateways.clone(),
                crate::component::client::AckSettings::from_gateway(&file.gateway),
                &secret,
                storage,
                None,
            )
            .await?,
        ),
        None => None,
    };
    let mut upload_addr = None;
    let upload = match &file.upload {
        Some(u) => {
            let listener = tokio::net::TcpListener::bind(u.listen)
                .await
                .map_err(|error| ServicesError::Bind {
                    addr: u.listen,
                    error,
                })?;
            upload_addr = listener.local_addr().ok();
            let at = crate::upload::Attachment {
                gateways,
                acks: crate::component::client::AckSettings::from_gateway(&file.gateway),
                secret,
                own_domains: Vec::new(),
                tls: tls.clone(),
                metrics: None,
            };
            Some(
                crate::upload::start(u, listener, at).map_err(|error| ServicesError::Upload {
                    path: u.directory.clone(),
                    error,
                })?,
            )
        }
        None => None,
    };
    Ok(RunningServices {
        muc,
        upload,
        upload_addr,
        tls,
    })
}

impl RunningServices {
    /// Tells the rooms' occupants the service goes (status 332), stops the upload listener,
    /// and closes the links.
    pub async fn shutdown(self) {
        if let Some(m) = self.muc {
            m.shutdown().await;
        }
        if let Some(u) = self.upload {
            u.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_loads() {
        let file = ServicesFile::load(Path::new("config/services.toml")).expect("loads");
        assert_eq!(file.muc.unwrap().domain, "conference.example.test");
        assert_eq!(file.upload.unwrap().allow_domains, ["example.test"]);
        assert!(file
            .storage
            .database
            .unwrap()
            .ends_with("fedgate-services.sqlite"));
    }

    #[test]
    fn mistakes_name_the_key() {
        let dir = Path::new(".");
        let load = |text: &str| ServicesFile::parse(text, dir, Path::new("<inline>"));
        let key = |e: ConfigError| match e {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("{other}"),
        };
        let gateway = "[gateway]\nsecret = \"s\"\n";
        assert_eq!(key(load(gateway).unwrap_err()), "muc");
        let upload = format!("{gateway}[upload]\ndomain = \"upload.a.test\"\n");
        assert_eq!(key(load(&upload).unwrap_err()), "upload.allow_domains");
        let muc = "[muc]\ndomain = \"conference.a.test\"\n";
        assert_eq!(key(load(muc).unwrap_err()), "gateway.secret");
        assert!(load(&format!("{gateway}{muc}")).is_ok());
    }
}
