//! Hostile media from the network: malformed RTCP and RTP sent to a live call's ports must cost
//! at most the datagram itself. The call keeps its audio, and so does every other call that the
//! same pacing worker serves.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::net::UdpSocket;

/// Packets heard since `since`.
fn heard_since(p: &Phone, since: Instant) -> usize {
    p.heard
        .lock()
        .unwrap()
        .packets
        .iter()
        .filter(|(t, ..)| *t >= since)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_rtcp_and_garbage_rtp_do_not_stop_any_calls_media() {
    // One pacing worker: every call shares it, so a worker that dies silences them all.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("switchboard.toml");
    std::fs::write(&cfg, "[media]\nworkers = 1\n").unwrap();
    let flow =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/long-prompt.json");
    let gw = Gateway::start_in(
        dir.path(),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let victim = Phone::dial(gw.sip, "+15550001111", Offer::Rfc4733).await;
    let bystander = Phone::dial(gw.sip, "+15550002222", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtcp = std::net::SocketAddr::new(victim.remote_rtp.ip(), victim.remote_rtp.port() + 1);
    // An 8-byte receiver report whose length field says 4 bytes (once a slice panic on the
    // worker), then RTCP and RTP of every short length with lying length fields and CSRC counts.
    let mut hostile: Vec<(Vec<u8>, std::net::SocketAddr)> =
        vec![(vec![0x81, 201, 0, 0, 0, 0, 0, 1], rtcp)];
    for len in 0..64usize {
        let mut b: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
        if len > 1 {
            b[0] = 0x80 | (len as u8 & 0x3F);
            b[1] = [200u8, 201, 202, 203][len % 4];
        }
        hostile.push((b.clone(), rtcp));
        if len > 1 {
            b[1] = if len % 2 == 0 { 0 } else { 101 };
        }
        hostile.push((b, victim.remote_rtp));
    }
    // RTCP is read about once a second: keep sending for two seconds.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for (b, to) in &hostile {
            attacker.send_to(b, to).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 1 s of 20 ms packets is 50: allow for scheduling, not for a dead worker.
    for (who, p) in [("victim", &victim), ("bystander", &bystander)] {
        let n = heard_since(p, after);
        assert!(
            n >= 35,
            "{who} heard {n} RTP packets in the second after the attack"
        );
    }
    // Calls placed after the attack still get media from the same worker.
    let later = Phone::dial(gw.sip, "+15550003333", Offer::Rfc4733).await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = heard_since(&later, start);
    assert!(
        n >= 35,
        "a later call heard {n} RTP packets in its first second"
    );
}
