//! A real call over loopback: SIP INVITE/200/ACK, RTP with the demo prompt, BYE from the
//! gateway when the flow ends. The test UA records and decodes what it hears.

mod support;

use std::time::Duration;

use support::*;
use switchboard::media::tts::Tts;
use switchboard::media::Clip;

const DEMO_PROMPT: &str =
    "Welcome to Switchboard. This call is answered by a Twilio Studio flow, running on your own server. Goodbye.";

fn demo_prompt_clip() -> std::sync::Arc<Clip> {
    // The demo prompt ships pre-rendered; its key is what the gateway looks up.
    let tts = Tts::new(std::path::Path::new("/nonexistent"), "espeak-ng", 165);
    let key = tts.key_for(DEMO_PROMPT, "alice", "en-US");
    let path = format!("{}/voice-assets/tts/{key}.wav", env!("CARGO_MANIFEST_DIR"));
    Clip::from_wav(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_flow_speaks_and_hangs_up() {
    let gw = Gateway::start(None);
    let ua = Ua::new().await;
    let report = ua.call(gw.sip, CallOptions::default()).await;
    assert_eq!(report.final_status, 200);
    assert!(
        report.bye_received,
        "the gateway hangs up when the flow ends"
    );

    let expected = active_span(demo_prompt_clip().pcm(), 300.0);
    let heard = active_span(&report.audio, 300.0);
    assert!(
        expected > Duration::from_secs(3),
        "prompt is long enough to judge: {expected:?}"
    );
    let ratio = heard.as_secs_f64() / expected.as_secs_f64();
    assert!(
        (0.8..=1.2).contains(&ratio),
        "heard {heard:?} of speech, prompt has {expected:?}"
    );
    assert!(
        rms(&report.audio) > 500.0,
        "audio is not silent: rms {}",
        rms(&report.audio)
    );

    // Packets are a proper stream: consecutive sequence numbers, 160-sample timestamp steps.
    let p = &report.packets;
    assert!(p.len() > 100);
    let seq_ok = p
        .windows(2)
        .filter(|w| w[1].0 == w[0].0.wrapping_add(1))
        .count();
    assert!(
        seq_ok as f64 >= (p.len() - 1) as f64 * 0.99,
        "sequence gaps: {seq_ok}/{}",
        p.len() - 1
    );
    let ts_ok = p
        .windows(2)
        .filter(|w| w[1].1.wrapping_sub(w[0].1) == 160)
        .count();
    assert!(
        ts_ok as f64 >= (p.len() - 1) as f64 * 0.99,
        "timestamp steps: {ts_ok}/{}",
        p.len() - 1
    );
    // Paced in real time: N packets take about N*20 ms to arrive.
    let span = p.last().unwrap().2 - p.first().unwrap().2;
    let ideal = Duration::from_millis(20 * (p.len() as u64 - 1));
    assert!(
        span + Duration::from_millis(200) > ideal && span < ideal + Duration::from_millis(500),
        "{span:?} vs {ideal:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sip_gets_400_and_the_next_call_succeeds() {
    let gw = Gateway::start(None);
    let ua = Ua::new().await;
    let me = ua.sip.local_addr().unwrap();
    let bad = format!(
        "INVITE sip:ivr@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbad1\r\nFrom: <sip:a@{me}>;tag=1\r\n\
         To: <sip:ivr@{t}>\r\nCall-ID: bad-1\r\nCSeq: not-a-number INVITE\r\nContent-Length: 0\r\n\r\n",
        t = gw.sip
    );
    ua.sip.send_to(bad.as_bytes(), gw.sip).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), ua.sip.recv_from(&mut buf))
        .await
        .expect("a response")
        .unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(status_of(&resp), Some(400), "{resp}");
    assert_eq!(header(&resp, "Call-ID"), Some("bad-1"));

    // Pure garbage and a truncated message are dropped; the gateway keeps serving.
    ua.sip.send_to(b"\x00\x01\x02 hello", gw.sip).await.unwrap();
    ua.sip
        .send_to(b"INVITE sip:x SIP/2.0\r\nVia: broken", gw.sip)
        .await
        .unwrap();

    let ua2 = Ua::new().await;
    let opts = CallOptions {
        max_duration: Duration::from_secs(20),
        hangup_after: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let report = ua2.call(gw.sip, opts).await;
    assert_eq!(report.final_status, 200);
    assert!(
        report.rtp_packets > 20,
        "media flows after the garbage: {}",
        report.rtp_packets
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_over_tcp_and_no_common_codec_is_488() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(None);
    let mut tcp = tokio::net::TcpStream::connect(gw.sip_tcp).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:{t} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKopt1\r\nFrom: <sip:probe@{me}>;tag=p\r\n\
         To: <sip:{t}>\r\nCall-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        t = gw.sip_tcp
    );
    tcp.write_all(options.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(status_of(&resp), Some(200), "{resp}");
    assert!(header(&resp, "Allow").is_some_and(|a| a.contains("INVITE")));

    // An offer with only G.729 has nothing in common with us.
    let ua = Ua::new().await;
    let inv = ua
        .invite(gw.sip, &CallOptions::default(), "z9hG4bKg729")
        .replace("RTP/AVP 0 101", "RTP/AVP 18")
        .replace("a=rtpmap:0 PCMU/8000\r\n", "");
    let inv = fix_length(&inv);
    ua.sip.send_to(inv.as_bytes(), gw.sip).await.unwrap();
    let mut code = 0;
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(5), ua.sip.recv_from(&mut buf)).await
    {
        code = status_of(&String::from_utf8_lossy(&buf[..n])).unwrap_or(0);
        if code >= 200 {
            break;
        }
    }
    assert_eq!(code, 488);
}

fn fix_length(msg: &str) -> String {
    let (head, body) = msg.split_once("\r\n\r\n").unwrap();
    let head: Vec<String> = head
        .split("\r\n")
        .map(|l| {
            if l.starts_with("Content-Length:") {
                format!("Content-Length: {}", body.len())
            } else {
                l.to_string()
            }
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_from_one_caller_get_their_own_executions() {
    let gw = Gateway::start(None);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let target = gw.sip;
        tasks.push(tokio::spawn(async move {
            let ua = Ua::new().await;
            ua.call(target, CallOptions::default()).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.final_status, 200);
        assert!(r.bye_received);
        assert!(rms(&r.audio) > 500.0);
    }
    // Five executions, one per Call-ID, all from +15550100000, all ended.
    let url = format!(
        "sqlite://{}?mode=rw",
        gw.data_dir.join("switchboard.db").display()
    );
    let store = switchboard::store::Store::open(&url).await.unwrap();
    let flow_sid = {
        let f =
            switchboard::routing::LoadedFlow::from_json("demo", switchboard::routing::DEMO_FLOW)
                .unwrap();
        f.sid
    };
    let execs = store.executions_for_flow(&flow_sid).await.unwrap();
    assert_eq!(execs.len(), 5);
    assert!(
        execs
            .iter()
            .all(|e| e.contact == "+15550100000" && e.status == "ended"),
        "{execs:?}"
    );
    let steps = store.steps(&execs[0].sid).await.unwrap();
    assert_eq!(steps.first().map(|s| s.name.as_str()), Some("Trigger"));
    assert!(
        steps
            .iter()
            .any(|s| s.name == "say-play" && s.event == "audioComplete"),
        "{steps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_concurrent_calls_a_second_call_from_one_caller_is_busy_before_the_answer() {
    let flow = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/flows/one-call-per-caller.json"
    ));
    let gw = Gateway::start(Some(flow));
    let first = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    // Its execution is running once its prompt plays.
    for _ in 0..100 {
        if first.heard.lock().unwrap().packets.len() > 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ua = Ua::new().await;
    let second = ua
        .call(
            gw.sip,
            CallOptions {
                max_duration: Duration::from_secs(5),
                ..CallOptions::default()
            },
        )
        .await;
    assert_eq!(
        second.final_status, 486,
        "refused, not answered and dropped"
    );
    assert_eq!(second.rtp_packets, 0);
    // Another caller is not affected; the first call goes on.
    let other = Ua::new().await;
    let third = other
        .call(
            gw.sip,
            CallOptions {
                from_user: "+15550100001".into(),
                hangup_after: Some(Duration::from_secs(1)),
                ..CallOptions::default()
            },
        )
        .await;
    assert_eq!(third.final_status, 200);
    assert!(first.heard.lock().unwrap().packets.len() > 50);
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_calls_invites_get_503_and_live_calls_keep_audio() {
    let flow = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/flows/barge-in.json"
    ));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sb.toml");
    std::fs::write(&cfg, "[sip]\nmax_calls = 2\n").unwrap();
    let gw = Gateway::start_in(dir.path(), Some(flow), &["--config", cfg.to_str().unwrap()]);
    let a = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    let b = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;

    let ua = Ua::new().await;
    let inv = ua.invite(gw.sip, &CallOptions::default(), "z9hG4bKover");
    ua.sip.send_to(inv.as_bytes(), gw.sip).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let resp = loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), ua.sip.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if status_of(&msg).is_some_and(|c| c >= 200) {
            break msg;
        }
    };
    assert_eq!(status_of(&resp), Some(503), "{resp}");
    assert!(header(&resp, "Retry-After").is_some(), "{resp}");

    // The two calls already up keep receiving their prompt.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for p in [&a, &b] {
        let heard = p.heard.lock().unwrap();
        let pcm: Vec<i16> = heard
            .audio_frames()
            .into_iter()
            .flat_map(|(_, f)| f)
            .collect();
        assert!(pcm.len() >= 8000 * 2, "{} samples", pcm.len());
        assert!(rms(&pcm) > 500.0, "clean prompt audio continues");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_sender_reports_describe_the_stream() {
    let flow = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/flows/barge-in.json"
    ));
    let gw = Gateway::start(Some(flow));
    let mut p = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    // Our media, so the gateway's report has a block about us.
    let speech: Vec<i16> = (0..8000 * 6)
        .map(|i| (((i as f64) * 0.2).sin() * 3000.0) as i16)
        .collect();
    p.send_audio(&speech).await;
    let heard = p.heard.lock().unwrap();
    let sr = heard
        .rtcp
        .iter()
        .find(|r| r.len() >= 28 && r[1] == 200)
        .expect("a sender report within 6 s");
    let ssrc = u32::from_be_bytes([sr[4], sr[5], sr[6], sr[7]]);
    let packets = u32::from_be_bytes([sr[20], sr[21], sr[22], sr[23]]);
    let octets = u32::from_be_bytes([sr[24], sr[25], sr[26], sr[27]]);
    assert!(packets >= 250, "{packets}");
    assert_eq!(octets, packets * 160, "PCMU: 160 payload bytes per packet");
    // One report block, about our stream (SSRC 0x12345678 from the test phone), no loss.
    assert_eq!(sr[0] & 0x1F, 1, "one report block");
    assert_eq!(
        u32::from_be_bytes([sr[28], sr[29], sr[30], sr[31]]),
        0x1234_5678
    );
    assert_eq!(sr[32], 0, "fraction lost");
    assert_ne!(ssrc, 0);
}
