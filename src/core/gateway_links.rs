//! The state of the core's component links, one per domain and gateway instance, for
//! `/readyz` and `fedgate_core_gateway_link_up{domain,gateway}`.
//!
//! The core attaches every domain (and alias) it serves to every gateway it is configured
//! with ([`crate::component::client`]). A domain is served while at least one of its links is
//! up: the component library moves its traffic to the links that are. So the core is ready when
//! every domain has a link up, and `/readyz` names every link either way, so that an operator
//! sees a gateway that dropped out before the last one does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{IntGaugeVec, Opts, Registry};

/// Every link's last known state.
pub struct GatewayLinks {
    /// (domain, gateway) → why it is down (`None`: up). Gateways are named as the component
    /// library names them in its events (`10.0.0.1:5347`, `in-process`).
    links: Mutex<BTreeMap<(String, String), Option<String>>>,
    /// `fedgate_core_gateway_link_up{domain,gateway}`: 1 while the link is up. The label sets
    /// are the configured domains × gateways, fixed at start.
    up: IntGaugeVec,
}

/// Before the first attempt has ended.
const CONNECTING: &str = "not attached yet";

impl GatewayLinks {
    /// Every link of `domains` × `gateways`, all down until their first handshake. The gauge
    /// goes into `registry`; a second core in one process (a reload) keeps the first one's.
    pub fn new(registry: &Registry, domains: &[String], gateways: &[String]) -> GatewayLinks {
        let up = IntGaugeVec::new(
            Opts::new(
                "fedgate_core_gateway_link_up",
                "1 while the core's component link for a domain to a gateway instance is up",
            ),
            &["domain", "gateway"],
        )
        .expect("valid metric");
        if let Err(e) = registry.register(Box::new(up.clone())) {
            tracing::debug!("gateway link metric not registered again: {e}");
        }
        let mut links = BTreeMap::new();
        for d in domains {
            for g in gateways {
                up.with_label_values(&[d, g]).set(0);
                links.insert((d.clone(), g.clone()), Some(CONNECTING.to_owned()));
            }
        }
        GatewayLinks {
            links: Mutex::new(links),
            up,
        }
    }

    /// The link of `domain` to `gateway` came up.
    pub fn online(&self, domain: &str, gateway: &str) {
        self.set(domain, gateway, None);
    }

    /// The link of `domain` to `gateway` went down, for `reason`.
    pub fn offline(&self, domain: &str, gateway: &str, reason: &str) {
        self.set(domain, gateway, Some(reason.to_owned()));
    }

    fn set(&self, domain: &str, gateway: &str, down: Option<String>) {
        self.up
            .with_label_values(&[domain, gateway])
            .set(down.is_none() as i64);
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.insert((domain.to_owned(), gateway.to_owned()), down);
    }

    /// One line per domain that no gateway link serves; empty when every domain has one.
    pub fn not_ready(&self) -> Vec<String> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let mut served: BTreeMap<&str, bool> = BTreeMap::new();
        for ((domain, _), down) in links.iter() {
            *served.entry(domain).or_default() |= down.is_none();
        }
        served
            .into_iter()
            .filter(|(_, up)| !up)
            .map(|(domain, _)| format!("no gateway link is up for {domain}"))
            .collect()
    }

    /// One line per link: `a.test via 10.0.0.1:5347: up`, or `down (why)`.
    pub fn detail(&self) -> Vec<String> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .iter()
            .map(|((domain, gateway), down)| match down {
                None => format!("{domain} via {gateway}: up"),
                Some(why) => format!("{domain} via {gateway}: down ({why})"),
            })
            .collect()
    }
}

/// What a core's `/readyz` reads: its links once it has started; before that, whether it
/// waits as a standby ([`super::leadership`]).
#[derive(Default)]
pub struct CoreStatus {
    links: OnceLock<Arc<GatewayLinks>>,
    standby: AtomicBool,
}

impl CoreStatus {
    pub(super) fn started(&self, links: Arc<GatewayLinks>) {
        let _ = self.links.set(links);
    }

    pub(super) fn standby(&self) {
        self.standby.store(true, Ordering::Relaxed);
    }
}

impl crate::metrics::http::Status for CoreStatus {
    fn not_ready(&self) -> Vec<String> {
        match self.links.get() {
            Some(links) => links.not_ready(),
            None if self.standby.load(Ordering::Relaxed) => vec![
                "standby: another fedgate core is active on this database; this one takes over when it stops".into(),
            ],
            None => vec!["starting".into()],
        }
    }

    fn detail(&self) -> Vec<String> {
        self.links.get().map(|l| l.detail()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(registry: &Registry, domain: &str, gateway: &str) -> Option<i64> {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "fedgate_core_gateway_link_up")?
            .get_metric()
            .iter()
            .find(|m| {
                let labels: Vec<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                labels.contains(&("domain", domain)) && labels.contains(&("gateway", gateway))
            })
            .map(|m| m.get_gauge().get_value() as i64)
    }

    #[test]
    fn a_domain_is_served_while_one_of_its_links_is_up() {
        let registry = Registry::new();
        let domains = ["a.test".to_owned(), "b.test".to_owned()];
        let gateways = ["10.0.0.1:5347".to_owned(), "10.0.0.2:5347".to_owned()];
        let links = GatewayLinks::new(&registry, &domains, &gateways);
        assert_eq!(
            links.not_ready(),
            [
                "no gateway link is up for a.test",
                "no gateway link is up for b.test"
            ]
        );
        assert_eq!(gauge(&registry, "a.test", "10.0.0.2:5347"), Some(0));

        links.online("a.test", "10.0.0.1:5347");
        links.online("b.test", "10.0.0.2:5347");
        assert!(links.not_ready().is_empty());
        assert_eq!(gauge(&registry, "a.test", "10.0.0.1:5347"), Some(1));
        assert_eq!(gauge(&registry, "a.test", "10.0.0.2:5347"), Some(0));

        links.offline("b.test", "10.0.0.2:5347", "connection refused");
        assert_eq!(links.not_ready(), ["no gateway link is up for b.test"]);
        assert_eq!(
            links.detail(),
            [
                "a.test via 10.0.0.1:5347: up",
                "a.test via 10.0.0.2:5347: down (not attached yet)",
                "b.test via 10.0.0.1:5347: down (not attached yet)",
                "b.test via 10.0.0.2:5347: down (connection refused)",
            ]
        );
        assert_eq!(gauge(&registry, "b.test", "10.0.0.2:5347"), Some(0));
    }
}
