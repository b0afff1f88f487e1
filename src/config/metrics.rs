//! `[metrics]`: the Prometheus endpoint.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[metrics]`: the Prometheus `/metrics`, `/healthz` and `/readyz` endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether to serve metrics at all. Default `true`.
    pub enabled: bool,
    /// Address to serve on. Default `"127.0.0.1:9269"`. Metrics name connected peer domains,
    /// so exposing them publicly leaks who we federate with.
    pub listen: SocketAddr,
    /// Remote domains that always get their own `peer` label in per-peer metrics, beside
    /// those named in `[[federation.peer]]`. Default none.
    pub peers: Vec<String>,
    /// How many more remote domains get their own `peer` label, chosen by traffic; the rest
    /// are counted as `peer="other"`. Default 20. Each label costs about a dozen series, so
    /// this bounds what any number of peers can add to Prometheus.
    pub top_peers: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9269)),
            peers: Vec::new(),
            top_peers: 20,
        }
    }
}
