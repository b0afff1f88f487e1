//! Server-to-server sessions (RFC 6120, XEP-0220 Server Dialback).
//!
//! - [`inbound`]: a remote server connects to us; we authenticate it by dialback (verifying its
//!   key by connecting back to its authoritative server, [`verify`]) and accept stanzas from
//!   the domains it proved, to the domains we serve.
//! - [`outbound`]: we connect to a remote server for one (local, remote) domain pair, prove our
//!   domain by dialback, and write the stanzas the router queues for it.
//! - [`verify`]: the connect-back half of dialback.

pub mod inbound;
pub mod outbound;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dialback::DialbackSecret;
use crate::dns::Resolver;
use crate::router::Router;
use crate::xml::framer::Limits;

/// Timeouts and limits of s2s sessions, from `[s2s]`.
#[derive(Debug, Clone)]
pub struct S2sSettings {
    pub connect_timeout: Duration,
    pub negotiation_timeout: Duration,
    pub dialback_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_negotiation_stanza_bytes: usize,
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    pub queue_max_stanzas: usize,
    /// Dialback verifications one inbound stream may have in flight.
    pub max_pending_verifications: usize,
}

impl S2sSettings {
    pub fn from_config(config: &Config) -> S2sSettings {
        let s = &config.s2s;
        S2sSettings {
            connect_timeout: s.connect_timeout,
            negotiation_timeout: s.negotiation_timeout,
            dialback_timeout: s.dialback_timeout,
            idle_timeout: s.idle_timeout,
            max_negotiation_stanza_bytes: s.max_negotiation_stanza_bytes,
            max_stanza_bytes: s.max_stanza_bytes,
            max_depth: s.max_depth,
            max_attributes: s.max_attributes,
            queue_max_stanzas: s.queue_max_stanzas,
            max_pending_verifications: 16,
        }
    }

    /// Limits before authentication: small, since anyone can connect.
    pub fn negotiation_limits(&self) -> Limits {
        Limits {
            max_stanza_bytes: self.max_negotiation_stanza_bytes,
            max_depth: self.max_depth,
            max_attributes: self.max_attributes,
        }
    }

    /// Limits once the peer is authenticated.
    pub fn stanza_limits(&self) -> Limits {
        Limits {
            max_stanza_bytes: self.max_stanza_bytes,
            max_depth: self.max_depth,
            max_attributes: self.max_attributes,
        }
    }
}

/// What every s2s session needs, shared.
pub struct S2sContext {
    pub router: Arc<Router>,
    pub resolver: Resolver,
    pub secret: Arc<DialbackSecret>,
    pub settings: S2sSettings,
    /// Cancelled when fedgate stops: sessions close with `<system-shutdown/>`.
    pub shutdown: CancellationToken,
    /// Outbound sessions and verifications, so shutdown can wait for them.
    pub tracker: TaskTracker,
}
