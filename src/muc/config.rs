//! `[muc]`: the multi-user chat service the gateway runs in its own process.

use serde::{Deserialize, Serialize};

use crate::config::{invalid, ConfigError};
use crate::jid::normalize_domain;

/// `[muc]`: an XEP-0045 multi-user chat service on its own domain, attached to the gateway
/// over an in-process XEP-0114 link like the embedded core (no `[[component.backend]]` is
/// needed for it: the gateway serves the domain and gives the link a secret of its own).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucConfig {
    /// The service's domain, e.g. `"conference.example.test"`; rooms are `room@domain`.
    /// Required. It must not be a `[[component.backend]]` domain or a `[[core.domain]]`.
    pub domain: String,
    /// Messages of discussion history a new room keeps for newcomers
    /// (`muc#maxhistoryfetch`, which its owner may change up to `max_history`). Default `20`.
    pub history_length: usize,
    /// Most history messages any room keeps, whatever its owner asks for. Default `100`;
    /// each message is held in memory while its room exists.
    pub max_history: usize,
    /// Most rooms at once; a join that would create one more gets `<not-allowed/>`. Default
    /// `1000`. Bounds the memory anyone who can reach the service may make it hold.
    pub max_rooms: usize,
    /// Occupants a new room admits (`muc#roomconfig_maxusers`, which its owner may lower or
    /// raise up to this), besides its owners and admins. Default `200`.
    pub max_occupants: usize,
    /// Messages each room's XEP-0313 archive keeps, the oldest deleted first. Default
    /// `10000`; `0` keeps no room archives. Archives are kept only with `[core]` in the same
    /// process (in its database), for a year at most.
    pub archive_max_messages: usize,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            domain: String::new(),
            history_length: 20,
            max_history: 100,
            max_rooms: 1000,
            max_occupants: 200,
            archive_max_messages: 10_000,
        }
    }
}

impl MucConfig {
    /// Every problem with the section, each naming its `muc.` key and the fix.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = normalize_domain(&self.domain) {
            problems.push(invalid(
                "muc.domain",
                format!("`{}` is not a valid domain: {e}", self.domain),
                "set the service's domain, e.g. domain = \"conference.example.test\"",
            ));
        }
        if self.history_length > self.max_history {
            problems.push(invalid(
                "muc.history_length",
                format!(
                    "{} is more than muc.max_history ({})",
                    self.history_length, self.max_history
                ),
                "lower history_length or raise max_history",
            ));
        }
        for (key, value) in [
            ("muc.max_rooms", self.max_rooms),
            ("muc.max_occupants", self.max_occupants),
        ] {
            if value == 0 {
                problems.push(invalid(
                    key,
                    "zero lets nobody in",
                    "set a positive number, or remove the key for the default",
                ));
            }
        }
        problems
    }

    /// Rewrites the domain to its canonical form (after validation).
    pub fn normalize(&mut self) {
        if let Ok(d) = normalize_domain(&self.domain) {
            if d != self.domain.as_str() {
                self.domain = d.into_owned();
            }
        }
    }
}
