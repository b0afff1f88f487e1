//! The closed sets metric labels take. Their own file so that the families in [`super`] and
//! the per-peer figures in [`peers`](super::peers) share them without importing each other.

/// Which way a stanza or session goes, seen from fedgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a remote server into fedgate.
    Inbound,
    /// From fedgate to a remote server.
    Outbound,
}

impl Direction {
    /// The `direction` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// How an s2s stream was authenticated (outbound, and each pair of an inbound stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// SASL EXTERNAL with the initiating server's certificate (XEP-0178).
    External,
    /// Server Dialback (XEP-0220).
    Dialback,
}

impl AuthMethod {
    /// The `auth` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::External => "external",
            AuthMethod::Dialback => "dialback",
        }
    }
}

/// fedgate's part in a Server Dialback exchange (XEP-0220 §1.3), the `role` of
/// `fedgate_dialback_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialbackRole {
    /// Receiving server: we verified a peer's `<db:result>` (`result`).
    Receiving,
    /// Authoritative server: we answered a `<db:verify>` (`verify`).
    Authoritative,
    /// Originating server: a peer answered our `<db:result>` (`outbound`).
    Originating,
}

impl DialbackRole {
    /// The `role` label's value, named for the element we handled (`result`, `verify`) or
    /// `outbound`, not for the role.
    pub fn as_str(self) -> &'static str {
        match self {
            DialbackRole::Receiving => "result",
            DialbackRole::Authoritative => "verify",
            DialbackRole::Originating => "outbound",
        }
    }
}

/// The `result` of `fedgate_dialback_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialbackResult {
    /// `type='valid'`.
    Valid,
    /// `type='invalid'`.
    Invalid,
    /// `type='error'`, no answer the rules allow, or a verification that could not be made.
    Error,
}

impl DialbackResult {
    /// The `result` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            DialbackResult::Valid => "valid",
            DialbackResult::Invalid => "invalid",
            DialbackResult::Error => "error",
        }
    }
}

/// The `mode` of `fedgate_policy_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    /// The federation policy refused it.
    Enforced,
    /// `dry_run`: it would have been refused.
    DryRun,
}

impl PolicyMode {
    /// The `mode` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforced => "enforced",
            PolicyMode::DryRun => "dry_run",
        }
    }
}

/// The `reason` of `fedgate_stanzas_dropped_total`: why a stanza was neither delivered nor
/// bounced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A stanza between two remote domains: never relayed.
    RelayRefused,
    /// A bounce that could not be delivered either (bounces are never bounced).
    BounceUndeliverable,
    /// An undeliverable unavailable presence (never bounced).
    PresenceNotBounced,
    /// An undeliverable error or iq result (never bounced).
    ErrorNotBounced,
}

impl DropReason {
    /// The `reason` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RelayRefused => "relay_refused",
            DropReason::BounceUndeliverable => "bounce_undeliverable",
            DropReason::PresenceNotBounced => "presence_not_bounced",
            DropReason::ErrorNotBounced => "error_not_bounced",
        }
    }
}

/// The `cause` of `fedgate_bounces_total`: why fedgate returned a stanza to its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceCause {
    /// The stanza's `to` or `from` is missing or no valid address.
    Malformed,
    /// No backend is attached for the local domain it is for.
    NoBackend,
    /// The backend it was for detached (and did not attach again within `reattach_grace`).
    BackendDetached,
    /// The federation policy refuses the remote domain, or a reload's policy ended the
    /// session that held it.
    Policy,
    /// The queue it was for was full: a backend reconnecting, or a session still connecting.
    QueueFull,
    /// The destination stopped reading: its queue stayed full for `stall_timeout`.
    Stalled,
    /// The session to the remote server kept closing while it was handed over.
    LinkUnstable,
    /// Over the peer's stanza size limit (XEP-0478).
    TooLarge,
    /// Written on a link without XEP-0198 that dropped before the peer confirmed it, and
    /// `[[federation.peer]] unconfirmed` says bounce.
    Unconfirmed,
    /// An outbound session gave up: the peer's records could not be found or looked up.
    Dns,
    /// An outbound session gave up: no TCP connection.
    Connect,
    /// An outbound session gave up at TLS: none offered, the handshake, or the certificate.
    Tls,
    /// An outbound session gave up at the XMPP stream (headers, features, errors, timeouts),
    /// or its link was lost.
    Stream,
    /// An outbound session gave up: the peer did not authenticate us.
    Auth,
    /// An outbound session gave up: `s2s.retry_window` closed during an attempt.
    Window,
    /// An outbound session gave up: fedgate is shutting down.
    Shutdown,
}

impl BounceCause {
    /// The `cause` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceCause::Malformed => "malformed",
            BounceCause::NoBackend => "no_backend",
            BounceCause::BackendDetached => "backend_detached",
            BounceCause::Policy => "policy",
            BounceCause::QueueFull => "queue_full",
            BounceCause::Stalled => "stalled",
            BounceCause::LinkUnstable => "link_unstable",
            BounceCause::TooLarge => "too_large",
            BounceCause::Unconfirmed => "unconfirmed",
            BounceCause::Dns => "dns",
            BounceCause::Connect => "connect",
            BounceCause::Tls => "tls",
            BounceCause::Stream => "stream",
            BounceCause::Auth => "auth",
            BounceCause::Window => "window",
            BounceCause::Shutdown => "shutdown",
        }
    }
}
