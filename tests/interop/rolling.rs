//! A rolling restart with Prosody as the peer (issue 17, item 3): three fedgate instances of one
//! domain share the dialback secret and are all published by SRV; the domain's backend (the
//! component library) is attached to all three; Prosody (Debian's package, XEP-0198 on s2s with
//! its mod_smacks) serves the other domain, with a slixmpp user on it. With messages both ways at
//! a steady rate, each instance in turn is stopped (the drain) and started again. Every message
//! arrives exactly once and nothing bounces. The integration test `drain::` does the same with
//! another fedgate as the peer.

use std::time::Duration;

use fedgate::component::client::Target;
use fedgate_test_support::library::{attach, steady, Received, Seen};
use serde_json::json;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::harness::{free_port, instance, Instance, WAIT};
use crate::peer::{Kind, Peer, PeerTls};
use crate::scenarios::GW_S2S_PORT;
use crate::{capture_logs, dns_port_53};

const SECRET: &str = "the-deployment-wide-dialback-secret";

/// Both sides' events, and what each received.
struct Sides {
    backend: mpsc::UnboundedReceiver<Seen>,
    client: Client,
    /// What fedgate's backend received (from the Prosody user), and bounces of what it sent.
    at_backend: Received,
    /// What the Prosody user received (from fedgate's backend), and bounces of what it sent.
    at_client: Received,
    /// The Prosody user's "sent" report, once it came.
    client_sent: Option<usize>,
}

impl Sides {
    /// Takes what both sides see for `how_long`; the gateways the backend attached to
    /// meanwhile.
    async fn settle(&mut self, how_long: Duration) -> Vec<String> {
        let until = tokio::time::Instant::now() + how_long;
        let mut came_up = Vec::new();
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return came_up;
            }
            tokio::select! {
                Some(seen) = self.backend.recv() => match seen {
                    Seen::Message { id, error } => self.at_backend.add(id, error),
                    Seen::Online(gateway) => came_up.push(gateway),
                },
                e = self.client.event_within(left) => match e {
                    Some(e) if e["event"] == "message" => {
                        let id = e["id"].as_str().unwrap_or_default().to_owned();
                        let bounce = (e["type"] == "error")
                            .then(|| format!("{} {}", e["condition"], e["text"]));
                        self.at_client.add(id, bounce);
                    }
                    Some(e) if e["event"] == "sent" => {
                        self.client_sent = e["count"].as_u64().map(|n| n as usize);
                    }
                    _ => {}
                },
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_instances_with_prosody_delivers_everything_once() {
    capture_logs();
    let dns = dns_port_53().await;
    let gw_domain = "gw-pr-rolling.test";
    let mut gws: Vec<Instance> = Vec::new();
    for i in 0..3 {
        let gw = instance(&dns, gw_domain)
            .dialback_secret(SECRET)
            .component_port(free_port())
            .s2s_port(GW_S2S_PORT)
            .unlisted()
            .start()
            .await;
        let host = format!("gw{i}.{gw_domain}");
        dns.add(&host, gw.ip);
        dns.add_srv(
            &format!("_xmpp-server._tcp.{gw_domain}"),
            10 * i as u16,
            0,
            GW_S2S_PORT,
            &host,
        );
        gws.push(gw);
    }
    // When an instance ends the stream Prosody sends on, what Prosody wrote after the
    // instance's last <a/> (a round trip's worth) is unacknowledged; by default Prosody bounces
    // it (recipient-unavailable), with this option it sends it again on its next stream.
    let peer = Peer::start_with(
        Kind::Prosody,
        "pr-rolling.test",
        &dns,
        PeerTls::TestCa,
        false,
        "smacks_s2s_resend = true",
    )
    .await;
    let mut client = peer.login().await;
    let user = client.jid.clone();

    let targets: Vec<Target> = gws
        .iter()
        .map(|g| Target::Tcp(g.gw().component_addr))
        .collect();
    let labels: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let (sender, mut backend) = attach(gw_domain, &gws[0].component_secret, targets);
    let mut up = 0;
    while up < 3 {
        match tokio::time::timeout(WAIT, backend.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Seen::Online(_) => up += 1,
            Seen::Message { .. } => {}
        }
    }
    // Both directions' s2s streams are up before the clock starts.
    let bot = format!("bot@{gw_domain}");
    client.message(&bot, "warm", "warm").await;
    loop {
        match tokio::time::timeout(WAIT, backend.recv())
            .await
            .expect("the warm-up message arrives")
        {
            Some(Seen::Message { id, .. }) if id == "warm" => break,
            _ => {}
        }
    }
    sender
        .send_raw(format!(
            "<message from='{bot}' to='{user}' id='warm'><body>warm</body></message>"
        ))
        .await
        .unwrap();
    client
        .wait_for("the warm-up message", |e| {
            e["event"] == "message" && e["id"] == "warm"
        })
        .await;

    // fedgate → Prosody: one message every 5 ms from the backend; Prosody → fedgate: the same
    // from the user.
    let stop = tokio_util::sync::CancellationToken::new();
    let steady = tokio::spawn(steady(
        sender.clone(),
        bot.clone(),
        user.clone(),
        "f",
        stop.clone(),
    ));
    client
        .command(json!({"cmd": "steady", "to": bot, "prefix": "p", "every_ms": 5}))
        .await;
    let mut sides = Sides {
        backend,
        client,
        at_backend: Received::default(),
        at_client: Received::default(),
        client_sent: None,
    };
    sides.settle(Duration::from_millis(500)).await;
    for (k, label) in labels.iter().enumerate() {
        let mut gw = gws.remove(k);
        let stopping = tokio::spawn(async move {
            gw.stop().await;
            gw
        });
        while !stopping.is_finished() {
            sides.settle(Duration::from_millis(50)).await;
        }
        let mut gw = stopping.await.unwrap();
        // Down for a while: Prosody's streams move to another instance.
        sides.settle(Duration::from_millis(500)).await;
        gw.restart().await;
        gws.insert(k, gw);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the backend did not reattach to gw{k}"
            );
            if sides
                .settle(Duration::from_millis(50))
                .await
                .contains(label)
            {
                break;
            }
        }
        sides.settle(Duration::from_millis(500)).await;
    }
    stop.cancel();
    let sent_to_peer = steady.await.unwrap();
    sides.client.command(json!({"cmd": "steady_stop"})).await;
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let sent_to_gw = sides.client_sent.unwrap_or(usize::MAX);
        let all_in = sides.at_backend.ids.len() + sides.at_client.bounces.len() >= sent_to_gw
            && sides.at_client.ids.len() + sides.at_backend.bounces.len() >= sent_to_peer;
        if all_in || tokio::time::Instant::now() > deadline {
            break;
        }
        sides.settle(Duration::from_millis(100)).await;
    }
    // Anything arriving twice would come now.
    sides.settle(Duration::from_millis(1000)).await;
    let sent_to_gw = sides.client_sent.expect("the user reported what it sent");
    let report = format!(
        "Prosody → fedgate: {sent_to_gw} sent, {} arrived, {} twice, {} bounced; fedgate → Prosody: {sent_to_peer} sent, {} arrived, {} twice, {} bounced",
        sides.at_backend.ids.len(),
        sides.at_backend.twice().len(),
        sides.at_client.bounces.len(),
        sides.at_client.ids.len(),
        sides.at_client.twice().len(),
        sides.at_backend.bounces.len(),
    );
    println!("{report}");
    let missing = |received: &Received, prefix: &str, sent: usize| -> Vec<String> {
        (0..sent)
            .map(|i| format!("{prefix}{i}"))
            .filter(|id| !received.ids.contains_key(id))
            .take(10)
            .collect()
    };
    assert!(
        missing(&sides.at_backend, "p", sent_to_gw).is_empty()
            && missing(&sides.at_client, "f", sent_to_peer).is_empty()
            && sides.at_backend.bounces.is_empty()
            && sides.at_client.bounces.is_empty()
            && sides.at_backend.twice().is_empty()
            && sides.at_client.twice().is_empty(),
        "{report}; missing at fedgate's backend: {:?}; missing at the user: {:?}; bounced to the user: {:?}; bounced to the backend: {:?}\n{}",
        missing(&sides.at_backend, "p", sent_to_gw),
        missing(&sides.at_client, "f", sent_to_peer),
        sides.at_client.bounces.iter().take(10).collect::<Vec<_>>(),
        sides.at_backend.bounces.iter().take(10).collect::<Vec<_>>(),
        peer.log_tail(40),
    );
    sides.client.quit().await;
}
