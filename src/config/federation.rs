//! `[federation]` and `[[federation.peer]]`: which remote domains may federate with us, and
//! what each must show (TLS, authentication, pins).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::jid::normalize_domain;

use super::s2s::RouteTarget;

/// Who may federate with us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FederationMode {
    /// Any remote domain except those in `deny`.
    #[default]
    Open,
    /// Only domains in `allow` (and not in `deny`).
    Allowlist,
}

/// `[federation]`: the federation policy.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// `"open"` or `"allowlist"`. Default `"open"`. In `"allowlist"` mode an empty `allow`
    /// means no federation at all.
    pub mode: FederationMode,
    /// Domains allowed in `"allowlist"` mode: exact domains, or `"*.example.org"` to match
    /// every subdomain of example.org (list `"example.org"` itself separately). Default empty.
    /// Ignored in `"open"` mode. Canonical form after loading.
    pub allow: Vec<String>,
    /// Domains refused in any mode, same syntax as `allow`; deny wins over allow. Default
    /// empty.
    pub deny: Vec<String>,
    /// Refuse nothing, but log and count (`fedgate_policy_refusals_total{mode="dry_run"}`)
    /// every stream and stanza that `mode`, `allow` and `deny` would refuse. Default `false`.
    /// For moving an open deployment to an allowlist: run with the new lists and
    /// `dry_run = true`, watch what would break, then turn it off. The TLS and authentication
    /// rules of `[[federation.peer]]` are always enforced.
    pub dry_run: bool,
    /// `[[federation.peer]]`: how one remote domain must secure and authenticate its streams,
    /// overriding `[s2s]`. Default none.
    pub peer: Vec<PeerConfig>,
}

/// Whether a peer's streams must be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsRequirement {
    /// TLS is required; a peer without it gets nothing.
    Required,
    /// TLS is used when the peer offers it; without it, dialback runs in clear text.
    Optional,
}

/// Which authentication a peer must use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthRequirement {
    /// SASL EXTERNAL or dialback, whichever the peer can do.
    #[default]
    Any,
    /// Only SASL EXTERNAL with a valid certificate (XEP-0178).
    External,
    /// Only Server Dialback (XEP-0220).
    Dialback,
}

/// `[[federation.peer]]`: per-remote-domain overrides of the TLS and authentication policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The remote domain. Required; exact (no patterns). Canonical form after loading.
    pub domain: String,
    /// `"required"` or `"optional"`. Default: `s2s.require_encryption`. `"optional"` lets this
    /// one peer federate (and run dialback) in clear text; meant for a named test peer.
    #[serde(default)]
    pub tls: Option<TlsRequirement>,
    /// Require a certificate valid for this domain. Default: `s2s.secure_auth`.
    #[serde(default)]
    pub secure_auth: Option<bool>,
    /// `"any"`, `"external"` or `"dialback"`. Default `"any"`.
    #[serde(default)]
    pub auth: AuthRequirement,
    /// Accept only certificates whose public key (SubjectPublicKeyInfo) has one of these
    /// SHA-256 digests, in base64 or hex, e.g. the output of `openssl x509 -pubkey -noout |
    /// openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`. Default
    /// empty (no pinning). A pinned certificate need not chain to a trust anchor.
    #[serde(default)]
    pub pin_sha256: Vec<String>,
    /// Largest stanza to and from this peer, in bytes of raw XML. Default: inbound
    /// `s2s.max_stanza_bytes`; outbound none of ours (the peer's own XEP-0478 `max-bytes`
    /// still applies). Inbound, a larger stanza from this peer ends the stream with
    /// `<policy-violation/>`; outbound, a larger stanza for it is bounced to its sender with
    /// `policy-violation` and a text naming the limit. May exceed `s2s.max_stanza_bytes` for
    /// a trusted peer (each of its streams may then buffer that much), at most
    /// `s2s.queue_max_bytes`.
    #[serde(default)]
    pub max_stanza_bytes: Option<usize>,
    /// `s2s.max_inbound_bytes_per_second` for streams from this peer, applied once it has
    /// authenticated (its stream header's `from` proves nothing). Default: that key. A stream
    /// that carries several remote domains is held to the lowest of their rates.
    #[serde(default)]
    pub max_inbound_bytes_per_second: Option<u64>,
    /// A static route to this peer, `host:port`, as a `[[s2s.route]]` (STARTTLS; use
    /// `[[s2s.route]]` for direct TLS): DNS is not asked, and the TLS and dialback identity
    /// is still `domain`. Default none. A domain has at most one route.
    #[serde(default)]
    pub route: Option<RouteTarget>,
    /// What happens to stanzas written on a link to this peer without XEP-0198 stream
    /// management whose reading the peer had not yet confirmed (with an XEP-0199 ping) when
    /// the link dropped: `"resend"` (default) writes them again on the next link, so each
    /// arrives at least once but may arrive twice (counted in
    /// `fedgate_outbound_stanzas_total{event="resent_unconfirmed"}`); `"bounce"` returns them
    /// to their senders with `remote-server-timeout` and a text saying they may have been
    /// delivered, so none arrives twice but some bounced ones did arrive. Links with XEP-0198
    /// resend only what was not acknowledged, whatever this says.
    #[serde(default)]
    pub unconfirmed: Unconfirmed,
    /// XEP-0288 bidirectional streams with this peer. Default: `s2s.bidi`. `false` keeps one
    /// connection per direction, for a peer whose bidi is broken or to keep the directions
    /// apart.
    #[serde(default)]
    pub bidi: Option<bool>,
    /// Outbound piggybacking with this peer: whether one outbound link carries several of
    /// our domains to it. Default: `s2s.piggyback`. `false` opens a link per (local,
    /// remote) pair, for a peer that mishandles multiplexed dialback.
    #[serde(default)]
    pub piggyback: Option<bool>,
    /// Most domain pairs one outbound link to this peer carries, its own included. Default:
    /// `s2s.max_outbound_pairs_per_stream`. For a peer that accepts fewer pairs per stream
    /// than we would send (it refuses the extra `<db:result/>`, and the pair then gets a link
    /// of its own anyway), or `1` for a link per pair without turning `piggyback` off.
    #[serde(default)]
    pub max_outbound_pairs_per_stream: Option<usize>,
}

/// `[[federation.peer]] unconfirmed`: what a dropped link without XEP-0198 does with the
/// stanzas the peer had not confirmed reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unconfirmed {
    /// Write them again on the next link: at least once, perhaps twice.
    #[default]
    Resend,
    /// Return them to their senders with `remote-server-timeout`: at most once.
    Bounce,
}

impl PeerConfig {
    /// The pins decoded to 32-byte digests; `Err` names the first bad one.
    pub fn pins(&self) -> Result<Vec<[u8; 32]>, String> {
        self.pin_sha256.iter().map(|p| decode_pin(p)).collect()
    }
}

/// A SHA-256 digest in hex (colons allowed) or base64.
fn decode_pin(pin: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let hex_form: String = pin.chars().filter(|c| *c != ':').collect();
    let bytes = if hex_form.len() == 64 {
        hex::decode(&hex_form).map_err(|e| format!("`{pin}` is not hex: {e}"))?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(pin.trim())
            .map_err(|e| format!("`{pin}` is neither 64 hex digits nor base64: {e}"))?
    };
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("`{pin}` is {} bytes, a SHA-256 digest is 32", b.len()))
}

/// Validates and canonicalises a federation pattern: a domain, or `*.` + a domain.
pub(super) fn normalize_pattern(p: &str) -> Result<String, String> {
    let (prefix, domain) = match p.strip_prefix("*.") {
        Some(rest) => ("*.", rest),
        None => ("", p),
    };
    if domain.contains('*') {
        return Err(format!("`{p}`: `*` is only allowed as a leading `*.`"));
    }
    let d = normalize_domain(domain).map_err(|e| format!("`{p}` is not a valid domain: {e}"))?;
    if !prefix.is_empty() && (d.starts_with('[') || d.parse::<IpAddr>().is_ok()) {
        return Err(format!(
            "`{p}`: a `*.` pattern needs a domain name, not an IP address"
        ));
    }
    Ok(format!("{prefix}{d}"))
}
