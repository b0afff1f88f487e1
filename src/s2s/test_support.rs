//! What the s2s unit tests share: a configuration and the context a session runs in, with no
//! listener and no socket.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::S2sContext;
use crate::config::Config;
use crate::dialback::DialbackSecret;
use crate::dns::Resolver;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::router::Router;
use crate::tls::Tls;

/// A plaintext-only configuration serving `domain`, with `extra` lines in `[s2s]`.
pub fn config(dir: &std::path::Path, domain: &str, extra: &str) -> Config {
    Config::from_toml(
        &format!(
            r#"
[s2s]
listen = ["127.0.0.1:0"]
direct_tls_listen = []
require_encryption = false
dialback_secret_file = "{domain}.secret"
{extra}

[component]
listen = "127.0.0.1:0"

[[component.backend]]
domain = "{domain}"
secret = "secret"

[metrics]
enabled = false
"#
        ),
        dir,
    )
    .unwrap()
}

/// What `gateway::start` builds, without listeners: the test drives the session itself.
pub fn context(config: &Config) -> Arc<S2sContext> {
    let router = Arc::new(Router::new(
        config.local_domains().map(str::to_string),
        config.s2s.queue_max_bytes,
        Policy::from_config(&config.federation),
        Metrics::register(),
    ));
    Arc::new(S2sContext::new(
        config,
        router,
        Arc::new(Tls::from_config(config).unwrap()),
        Resolver::from_config(config).unwrap(),
        Arc::new(DialbackSecret::load_or_create(&config.s2s.dialback_secret_file).unwrap()),
        CancellationToken::new(),
        TaskTracker::new(),
    ))
}
