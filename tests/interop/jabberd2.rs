//! fedgate with jabberd2 (Debian's package): the scenarios a dialback-only server can take part
//! in, both directions. jabberd2 2.7's s2s does STARTTLS and dialback (XEP-0220) and nothing
//! else: no SASL EXTERNAL, no XEP-0198, no XEP-0288 bidi, no direct TLS (XEP-0368). So every
//! link to it is confirmed by XEP-0199 pings only, which the mid-stream stop puts to the test.
//!
//! Left out:
//! - `sasl_external_messages_iqs_and_presence_both_ways`: no SASL on jabberd2's s2s (it ignores
//!   fedgate's offer and does dialback; the scenario asserts EXTERNAL both ways);
//! - `fedgate_with_a_server_auth_only_certificate`: about SASL EXTERNAL and the certificate's
//!   purpose, which dialback never looks at;
//! - `direct_tls_xep_0368_published_first`: jabberd2's s2s has no direct TLS listener, nor
//!   does it look up `_xmpps-server._tcp`.

crate::scenarios::these_scenarios!(
    crate::peer::Kind::Jabberd2,
    "jd",
    dialback_messages_iqs_and_presence_both_ways,
    peer_stopped_bounces_with_the_cause_then_restarted_delivers,
    a_burst_of_10000_messages_each_way_arrives_in_order,
    fedgate_stopped_the_peer_bounces_then_reconnects,
    peer_stopped_mid_stream_nothing_is_lost_silently,
    peer_restarted_within_the_retry_window_gets_what_waited,
);
