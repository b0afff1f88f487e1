//! `[component] reattach_grace`: when a backend's link drops (it died, restarted, or its
//! standby is taking over), what is queued for it and what arrives meanwhile waits for its next
//! link instead of bouncing at once; bounced with the cause once the grace is over; bounded by
//! the backend's queue. What an acknowledging backend had not acknowledged is in
//! `component_acks.rs`.

use std::time::Duration;

use crate::harness::*;

const ECHO_SECRET: &str = "echo-secret";
const WAITED: &str = "fedgate_component_reattach_total{outcome=\"waited\"}";
const ADOPTED: &str = "fedgate_component_reattach_total{outcome=\"adopted\"}";
const EXPIRED: &str = "fedgate_component_reattach_total{outcome=\"expired\"}";

/// Nothing more arrives on `stream` for a moment.
async fn assert_quiet(stream: &mut RawStream, what: &str) {
    let more = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(
        more.is_err(),
        "{what}: {:?}",
        more.map(|s| text(s.raw()).to_string())
    );
}

/// The backend for a.test drops; what echo.a.test sends it meanwhile reaches its next link, in
/// order, and nobody gets a bounce.
#[tokio::test]
async fn a_backend_that_attaches_again_within_the_grace_gets_what_came_meanwhile_in_order() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend("echo.a.test", ECHO_SECRET)
        .start()
        .await;
    let mut echo = a.backend_for("echo.a.test", ECHO_SECRET).await;
    let mut core = a.backend().await;
    echo.send("<message from='echo.a.test' to='a.test' id='m0'/>")
        .await;
    assert_eq!(core.next().await.id(), Some("m0"));

    drop(core);
    wait_for_metric(&a, WAITED, 1.0).await;
    for id in ["m1", "m2", "m3"] {
        echo.send(&format!(
            "<message from='echo.a.test' to='a.test' id='{id}'/>"
        ))
        .await;
    }
    // Queued for the link that is gone, not bounced.
    assert_quiet(&mut echo, "a bounce while the backend was away").await;

    let mut core = a.backend().await;
    for id in ["m1", "m2", "m3"] {
        assert_eq!(core.next().await.id(), Some(id));
    }
    // And the new link carries new traffic after them.
    echo.send("<message from='echo.a.test' to='a.test' id='m4'/>")
        .await;
    assert_eq!(core.next().await.id(), Some("m4"));
    assert_quiet(&mut echo, "a bounce").await;
    let m = a.metrics().await;
    assert_eq!(metric(&m, ADOPTED), 1.0);
    assert_eq!(metric_or_zero(&m, EXPIRED), 0.0);
}

/// No new link within the grace: what waited bounces with `service-unavailable` and a text
/// that says so; after that, the domain has no backend.
#[tokio::test]
async fn what_waited_for_a_backend_that_did_not_come_back_bounces_with_the_cause() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend("echo.a.test", ECHO_SECRET)
        .component("reattach_grace = \"1s\"")
        .start()
        .await;
    let mut echo = a.backend_for("echo.a.test", ECHO_SECRET).await;
    drop(a.backend().await);
    wait_for_metric(&a, WAITED, 1.0).await;

    echo.send("<message from='echo.a.test' to='a.test' id='waits'/>")
        .await;
    let bounce = echo.next().await;
    assert_eq!(bounce.id(), Some("waits"));
    assert_eq!(bounce.type_(), Some("error"));
    let raw = text(bounce.raw()).to_string();
    assert!(raw.contains("service-unavailable"), "{raw}");
    assert!(
        raw.contains("the backend for a.test detached and did not attach again within 1s"),
        "{raw}"
    );
    assert_eq!(metric(&a.metrics().await, EXPIRED), 1.0);
}

/// While the backend is away nobody reads its queue, so a full queue bounces at once with
/// `resource-constraint` (the sender is never made to wait for a backend that is gone); what
/// fitted still reaches the next link.
#[tokio::test]
async fn a_full_queue_while_the_backend_is_away_bounces_with_resource_constraint() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend("echo.a.test", ECHO_SECRET)
        .s2s("queue_max_stanzas = 2")
        .start()
        .await;
    let mut echo = a.backend_for("echo.a.test", ECHO_SECRET).await;
    drop(a.backend().await);
    wait_for_metric(&a, WAITED, 1.0).await;

    for id in ["q1", "q2", "over"] {
        echo.send(&format!(
            "<message from='echo.a.test' to='a.test' id='{id}'/>"
        ))
        .await;
    }
    let bounce = echo.next().await;
    assert_eq!(bounce.id(), Some("over"));
    let raw = text(bounce.raw()).to_string();
    assert!(raw.contains("resource-constraint"), "{raw}");
    assert!(
        raw.contains("is reconnecting and its queue is full"),
        "{raw}"
    );

    let mut core = a.backend().await;
    assert_eq!(core.next().await.id(), Some("q1"));
    assert_eq!(core.next().await.id(), Some("q2"));
}

/// `reattach_grace = "0s"`: the old behaviour, a bounce as soon as the link is gone.
#[tokio::test]
async fn with_no_grace_a_gone_backend_bounces_at_once() {
    let dns = TestDns::start().await;
    let a = instance(&dns, "a.test")
        .backend("echo.a.test", ECHO_SECRET)
        .component("reattach_grace = \"0s\"")
        .start()
        .await;
    let mut echo = a.backend_for("echo.a.test", ECHO_SECRET).await;
    drop(a.backend().await);
    eventually("the link is gone", || {
        !a.gw().router.component_attached("a.test")
    })
    .await;
    echo.send("<message from='echo.a.test' to='a.test' id='now'/>")
        .await;
    let bounce = tokio::time::timeout(Duration::from_millis(500), echo.next())
        .await
        .expect("a bounce at once");
    assert_eq!(bounce.id(), Some("now"));
    assert_eq!(metric_or_zero(&a.metrics().await, WAITED), 0.0);
}
