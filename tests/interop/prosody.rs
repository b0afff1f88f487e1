//! fedgate with Prosody (Debian's package): every scenario, both directions.

crate::scenarios::every_scenario!(crate::peer::Kind::Prosody, "pr");

/// XEP-0288: Prosody's mod_s2s_bidi is enabled (tests/interop/peer.rs); ejabberd 23.01 has no
/// bidi, and its scenarios show the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_both_ways_on_one_connection() {
    crate::scenarios::bidi_both_ways_on_one_connection(crate::peer::Kind::Prosody, "pr-bidi").await;
}

/// XEP-0220 multiplexing: two local domains to one Prosody over one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_local_domains_on_one_connection() {
    crate::scenarios::two_local_domains_on_one_connection(crate::peer::Kind::Prosody, "pr-mux")
        .await;
}
