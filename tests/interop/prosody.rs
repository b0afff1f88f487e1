//! fedgate with Prosody (Debian's package): every scenario, both directions.

use crate::peer::{Kind, PeerTls};
use crate::scenarios;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialback_messages_iqs_and_presence_both_ways() {
    scenarios::exchange(Kind::Prosody, "pr-dialback", PeerTls::SelfSigned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_external_messages_iqs_and_presence_both_ways() {
    scenarios::exchange(Kind::Prosody, "pr-external", PeerTls::TestCa).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_stopped_bounces_with_the_cause_then_restarted_delivers() {
    scenarios::peer_stopped_then_restarted(Kind::Prosody, "pr-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_10000_messages_each_way_arrives_in_order() {
    scenarios::burst(Kind::Prosody, "pr-burst").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedgate_with_a_server_auth_only_certificate() {
    scenarios::server_auth_only_certificate(Kind::Prosody, "pr-eku").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedgate_stopped_the_peer_bounces_then_reconnects() {
    scenarios::gateway_stopped_then_restarted(Kind::Prosody, "pr-gwrestart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_stopped_mid_stream_nothing_is_lost_silently() {
    scenarios::peer_stopped_mid_stream(Kind::Prosody, "pr-midstream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_xep_0368_published_first() {
    scenarios::direct_tls(Kind::Prosody, "pr-directtls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_restarted_within_the_retry_window_gets_what_waited() {
    scenarios::peer_restarted_within_the_retry_window(Kind::Prosody, "pr-quickrestart").await;
}
