//! The second leg: a caller reaches connect-call-to, the gateway places a call through a trunk
//! (SIPp as the carrier's far end) and bridges the two, transcoding PCMU to PCMA; busy, no
//! answer, a number no trunk may dial and a trunk that cannot be reached each end the dial
//! with their `DialCallStatus`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn scenario(name: &str) -> String {
    format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn flow() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/connect-to-carrier.json")
}

/// A free UDP port on loopback (even, so SIPp's RTCP can take the next one).
fn free_port() -> u16 {
    loop {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = s.local_addr().unwrap().port();
        if p % 2 == 0 && p < 60000 && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// Where the SIPp package keeps its sample RTP captures.
fn sipp_pcap(name: &str) -> PathBuf {
    let dir = std::env::var("SIPP_PCAP_DIR").unwrap_or_else(|_| "/usr/share/sip-tester".into());
    Path::new(&dir).join(name)
}

/// SIPp as the carrier's far end (a UAS on `port`, its media on `media_port`), in `dir`.
fn carrier(dir: &Path, scenario_file: &str, port: u16, media_port: u16) -> Child {
    Command::new("sipp")
        .current_dir(dir)
        .args(["-sf", &scenario(scenario_file)])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mp", &media_port.to_string()])
        .args(["-m", "1", "-timeout", "60s", "-timeout_error", "-nostdin"])
        .args(["-trace_msg", "-trace_err"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sipp")
}

/// Wait for SIPp to finish and show its trace when it failed.
fn finished(mut sipp: Child, dir: &Path, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    let code = loop {
        if let Some(s) = sipp.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > limit {
            let _ = sipp.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if code != Some(0) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.to_string_lossy().ends_with(".log") {
                eprintln!(
                    "{}:\n{}",
                    p.display(),
                    std::fs::read_to_string(&p).unwrap_or_default()
                );
            }
        }
    }
    code
}

/// A loopback TwiML app and the `twiml-dial` flow pointed at it (written into `dir`): `/dial`
/// answers `first`; `/after` (the verb's action) reports each request's body and answers
/// `after`.
async fn twiml_app(
    dir: &Path,
    first: &'static str,
    after: &'static str,
) -> (PathBuf, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use axum::routing::post;
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let app = axum::Router::new()
        .route("/dial", post(move || async move { first }))
        .route(
            "/after",
            post(move |body: String| {
                let tx = seen_tx.clone();
                async move {
                    let _ = tx.send(body);
                    after
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let flow_path = dir.join("twiml-app.json");
    std::fs::write(
        &flow_path,
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/twiml-dial.json"),
        )
        .unwrap()
        .replace("{{TWIML_URL}}", &format!("http://{http}/dial")),
    )
    .unwrap();
    (flow_path, seen)
}

/// Wait (off the runtime) for a SIPp run to end; its exit code.
async fn sipp_done(sipp: Child, dir: &Path, limit: Duration) -> Option<i32> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || finished(sipp, &dir, limit))
        .await
        .unwrap()
}

/// 20 ms frames the phone heard between `window` milliseconds after `start`, louder than
/// `threshold` RMS.
fn loud_frames(
    phone: &Phone,
    start: Instant,
    window: std::ops::Range<u64>,
    threshold: f64,
) -> usize {
    phone
        .heard
        .lock()
        .unwrap()
        .audio_frames()
        .iter()
        .filter(|(t, f)| {
            let at = t.duration_since(start).as_millis() as u64;
            window.contains(&at) && rms(f) > threshold
        })
        .count()
}

/// The connect step of the first execution of [`flow`], once committed (as the call ends).
async fn connect_step(gw: &Gateway) -> switchboard::store::StepRecord {
    for _ in 0..50 {
        let ex = executions(gw, &flow()).await;
        let step = ex
            .first()
            .and_then(|(_, steps)| steps.iter().find(|s| s.name == "connect").cloned());
        if let Some(s) = step {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connect step");
}

fn gateway(tmp: &Path, config: &str) -> (Gateway, PathBuf) {
    gateway_with_flow(tmp, Some(&flow()), config)
}

/// A gateway in `tmp` running `flow` with `config`, logging to `tmp/gateway.log`.
fn gateway_with_flow(tmp: &Path, flow: Option<&Path>, config: &str) -> (Gateway, PathBuf) {
    let cfg = tmp.join("switchboard.toml");
    std::fs::write(&cfg, config).unwrap();
    let log = tmp.join("gateway.log");
    let gw = Gateway::start_logging(
        &tmp.join("data"),
        flow,
        &["--config", cfg.to_str().unwrap()],
        Some((ACCOUNT_SID, AUTH_TOKEN)),
        Some(&log),
    );
    (gw, log)
}

fn tone(secs: f64) -> Vec<i16> {
    (0..(8000.0 * secs) as usize)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 8000.0).sin()) as i16)
        .collect()
}

/// Capture what arrives at `port` on loopback: each UDP payload (RTP) as bytes.
fn capture(port: u16) -> Child {
    capture_to(port, &["udp.payload"], 60)
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_connected_through_the_trunk_hears_the_far_end_and_is_heard_transcoded() {
    if !peer_available("sipp") || !peer_available("tshark") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sipp_dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&sipp_dir).unwrap();
    std::fs::copy(sipp_pcap("g711a.pcap"), sipp_dir.join("g711a.pcap"))
        .expect("SIPp's g711a.pcap (package sip-tester)");
    let (port, media_port) = (free_port(), free_port());
    let heard_by_far_end = capture(media_port);
    let sipp = carrier(
        &sipp_dir,
        "carrier-answers-plays-hangs-up.xml",
        port,
        media_port,
    );
    // `srtp = "optional"`: our offer carries SDES keys in RTP/AVP, and SIPp's plain answer
    // makes the leg plain RTP (checked on the wire below).
    let (gw, log) = gateway(
        tmp.path(),
        &format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             inbound_from = [\"127.0.0.1/32\"]\ndial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n\
             srtp = \"optional\"\n"
        ),
    );
    // The caller comes in through the trunk (trusted by address); the flow connects them to
    // their own number, which this trunk may dial.
    let mut phone = Phone::dial(gw.sip, "+15557770001", Offer::Rfc4733).await;
    let start = Instant::now();
    phone.send_audio(&tone(6.0)).await;
    // A digit pressed while bridged reaches the far end as an RFC 4733 event.
    phone.send_rfc4733('5').await;
    phone.send_audio(&tone(1.0)).await;
    phone.wait_bye(Duration::from_secs(30)).await;
    let code = sipp_done(sipp, &sipp_dir, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "SIPp (the far end) failed");

    // The caller heard the far end's speech (PCMA from the pcap, transcoded to PCMU): loud
    // frames well after the ringback, which stops at the answer.
    let speech = loud_frames(&phone, start, 2500..6500, 300.0);
    assert!(
        speech > 50,
        "{speech} loud frames from the far end in 2.5..6.5 s\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // The far end received the caller's tone as PCMA.
    unsafe { libc::kill(heard_by_far_end.id() as i32, libc::SIGINT) };
    let out = heard_by_far_end.wait_with_output().unwrap();
    let packets: Vec<Vec<u8>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(hex)
        .filter(|p| p.len() > 12)
        .collect();
    let loud = packets
        .iter()
        .filter(|p| p[1] & 0x7F == 8)
        .filter(|p| {
            let pcm: Vec<i16> = p[12..]
                .iter()
                .map(|&b| switchboard::media::codec::alaw_to_linear(b))
                .collect();
            rms(&pcm) > 2000.0
        })
        .count();
    assert!(
        loud > 150,
        "{loud} of {} packets to the far end carried the caller's tone in PCMA",
        packets.len()
    );
    let mut events = switchboard::media::dtmf::Rfc4733Receiver::default();
    let relayed: String = packets
        .iter()
        .filter(|p| p[1] & 0x7F == 101)
        .filter_map(|p| events.on_packet(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), &p[12..]))
        .collect();
    assert_eq!(
        relayed, "5",
        "the caller's digit, relayed as telephone-event 101"
    );

    // The step shows how the dial went.
    let sid = switchboard::routing::LoadedFlow::from_file(&flow())
        .unwrap()
        .sid;
    let execs = api_get(&gw, &format!("/v2/Flows/{sid}/Executions")).await;
    let esid = execs["executions"][0]["sid"].as_str().unwrap().to_string();
    let steps = api_get(&gw, &format!("/v2/Flows/{sid}/Executions/{esid}/Steps")).await;
    let step = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "connect")
        .cloned()
        .unwrap_or_else(|| panic!("no connect step: {steps}"));
    assert_eq!(step["transitioned_to"], "after", "{step}");
    let ctx = api_get(
        &gw,
        &format!(
            "/v2/Flows/{sid}/Executions/{esid}/Steps/{}/Context",
            step["sid"].as_str().unwrap()
        ),
    )
    .await;
    let w = &ctx["context"]["widgets"]["connect"];
    assert_eq!(w["DialCallStatus"], "completed", "{ctx}");
    assert!(
        w["DialCallSid"].as_str().unwrap().starts_with("CA"),
        "{ctx}"
    );
    let secs: u32 = w["DialCallDuration"].as_str().unwrap().parse().unwrap();
    assert!((7..=10).contains(&secs), "DialCallDuration {secs}");

    // record: both sides in one stereo WAV, the caller's tone left, the far end's speech right.
    let url = w["RecordingUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("no RecordingUrl: {ctx}"));
    let sid = url.rsplit('/').next().unwrap();
    let wav = gw.data_dir.join("recordings").join(format!("{sid}.wav"));
    let r = hound::WavReader::open(&wav).unwrap();
    assert_eq!((r.spec().channels, r.spec().sample_rate), (2, 8000));
    let samples: Vec<i16> = r.into_samples::<i16>().map(Result::unwrap).collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    let secs = left.len() as f64 / 8000.0;
    assert!((6.0..11.0).contains(&secs), "{secs} s recorded");
    assert!(
        rms(&left[8000..40000]) > 2000.0,
        "the caller's tone on the left"
    );
    assert!(
        rms(&right[8000..40000]) > 300.0,
        "the far end's speech on the right"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_no_answer_refused_unreachable_and_full_each_end_with_their_status() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (busy_dir, ring_dir) = (tmp.path().join("busy"), tmp.path().join("ring"));
    std::fs::create_dir_all(&busy_dir).unwrap();
    std::fs::create_dir_all(&ring_dir).unwrap();
    let (busy_port, ring_port) = (free_port(), free_port());
    // Nothing listens here: connecting over TCP is refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_port = closed.local_addr().unwrap().port();
    drop(closed);
    let busy = carrier(&busy_dir, "carrier-busy.xml", busy_port, free_port());
    let ringing = carrier(
        &ring_dir,
        "carrier-rings-no-answer.xml",
        ring_port,
        free_port(),
    );
    let (gw, log) = gateway(
        tmp.path(),
        &format!(
            "[[trunks]]\nname = \"busy\"\nuri = \"sip:127.0.0.1:{busy_port}\"\ninbound_from = [\"127.0.0.1/32\"]\ndial_allow = [\"+1555888*\"]\nkeepalive_secs = 0\n\
             [[trunks]]\nname = \"ringing\"\nuri = \"sip:127.0.0.1:{ring_port}\"\ndial_allow = [\"+1555999*\"]\nkeepalive_secs = 0\n\
             [[trunks]]\nname = \"down\"\nuri = \"sip:127.0.0.1:{down_port};transport=tcp\"\ndial_allow = [\"+1555666*\"]\nkeepalive_secs = 0\n\
             [[trunks]]\nname = \"full\"\nuri = \"sip:127.0.0.1:9\"\ndial_allow = [\"+1555555*\"]\nmax_outbound = 0\nkeepalive_secs = 0\n"
        ),
    );
    let cases = [
        ("+15558880001", "busy", None),
        ("+15559990001", "no-answer", None),
        ("+15556660001", "failed", Some("503")),
        (
            "+442071234567",
            "failed",
            Some("no trunk may dial +442071234567"),
        ),
        ("+15555550001", "failed", Some("max_outbound of 0 calls")),
    ];
    for (caller, _, _) in &cases {
        let phone = Phone::dial(gw.sip, caller, Offer::Rfc4733).await;
        phone.wait_bye(Duration::from_secs(30)).await;
    }
    let execs = executions(&gw, &flow()).await;
    for (caller, status, error) in cases {
        let (_, steps) = execs
            .iter()
            .find(|(e, _)| e.contact == caller)
            .unwrap_or_else(|| panic!("no execution for {caller}"));
        let step = steps.iter().find(|s| s.name == "connect").unwrap();
        assert_eq!(step.event, "callCompleted");
        assert_eq!(
            step.context["widgets"]["connect"]["DialCallStatus"],
            status,
            "{caller}: {}\n{}",
            step.context,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        match error {
            Some(e) => assert!(
                step.error.as_deref().unwrap_or("").contains(e),
                "{caller}: step error {:?}",
                step.error
            ),
            None => assert_eq!(step.error, None, "{caller}"),
        }
    }
    for (sipp, dir) in [(busy, &busy_dir), (ringing, &ring_dir)] {
        let code = sipp_done(sipp, dir, Duration::from_secs(20)).await;
        assert_eq!(code, Some(0), "a SIPp far end failed");
    }
    // The refusal is in the log with the number it refused.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("refused to dial") && text.contains("+442071234567"),
        "no log line for the refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twilio_library_starts_an_execution_that_calls_out_and_the_callee_hears_the_reminder() {
    if !peer_available("sipp") || !peer_available("tshark") || !peer_available("python3") {
        return;
    }
    if !twilio_library_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sipp_dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&sipp_dir).unwrap();
    let (port, media_port) = (free_port(), free_port());
    let heard = capture(media_port);
    let sipp = carrier(
        &sipp_dir,
        "carrier-answers-waits-for-bye.xml",
        port,
        media_port,
    );
    let (gw, log) = gateway_with_flow(
        tmp.path(),
        None,
        &format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             dial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n"
        ),
    );
    let out = tokio::task::spawn_blocking({
        let url = gw.base_url();
        move || {
            Command::new("python3")
                .arg(format!(
                    "{}/tests/python/outgoing_call.py",
                    env!("CARGO_MANIFEST_DIR")
                ))
                .env("SWITCHBOARD_URL", url)
                .env("SWITCHBOARD_ACCOUNT_SID", ACCOUNT_SID)
                .env("SWITCHBOARD_AUTH_TOKEN", AUTH_TOKEN)
                .env("SWITCHBOARD_TO", "+15557770002")
                .output()
                .expect("run python3")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "python client failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let code = sipp_done(sipp, &sipp_dir, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "SIPp (the callee) failed");
    unsafe { libc::kill(heard.id() as i32, libc::SIGINT) };
    let out = heard.wait_with_output().unwrap();
    let loud = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(hex)
        .filter(|p| p.len() > 12 && p[1] & 0x7F == 0)
        .filter(|p| {
            let pcm: Vec<i16> = p[12..]
                .iter()
                .map(|&b| switchboard::media::codec::ulaw_to_linear(b))
                .collect();
            rms(&pcm) > 300.0
        })
        .count();
    // The reminder is a few seconds of speech.
    assert!(loud > 50, "{loud} loud PCMU packets reached the callee");
}

/// A published flow made through the REST API; its SID.
async fn published_flow(gw: &Gateway, name: &str, definition: &str) -> String {
    let flow = api_post(
        gw,
        "/v2/Flows",
        &[
            ("FriendlyName", name),
            ("Status", "published"),
            ("Definition", definition),
        ],
    )
    .await;
    flow["sid"].as_str().unwrap().to_string()
}

/// A REST execution of `fsid` to `to` from +15550001111; its SID.
async fn start_execution(gw: &Gateway, fsid: &str, to: &str) -> String {
    let exec = api_post(
        gw,
        &format!("/v2/Flows/{fsid}/Executions"),
        &[("To", to), ("From", "+15550001111")],
    )
    .await;
    exec["sid"].as_str().unwrap().to_string()
}

async fn api_post(gw: &Gateway, path: &str, form: &[(&str, &str)]) -> Value {
    let resp = switchboard::web::plain_client()
        .post(format!("{}{path}", gw.base_url()))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .form(form)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_executions_calling_out_take_failed_busy_and_no_answer() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (busy_dir, ring_dir) = (tmp.path().join("busy"), tmp.path().join("ring"));
    std::fs::create_dir_all(&busy_dir).unwrap();
    std::fs::create_dir_all(&ring_dir).unwrap();
    let (busy_port, ring_port) = (free_port(), free_port());
    let busy = carrier(&busy_dir, "carrier-busy.xml", busy_port, free_port());
    let ringing = carrier(
        &ring_dir,
        "carrier-rings-no-answer.xml",
        ring_port,
        free_port(),
    );
    let cfg = tmp.path().join("switchboard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[trunks]]\nname = \"busy\"\nuri = \"sip:127.0.0.1:{busy_port}\"\ndial_allow = [\"+1555888*\"]\nkeepalive_secs = 0\n\
             [[trunks]]\nname = \"ringing\"\nuri = \"sip:127.0.0.1:{ring_port}\"\ndial_allow = [\"+1555999*\"]\nkeepalive_secs = 0\n"
        ),
    )
    .unwrap();
    let gw = Gateway::start_with(
        &tmp.path().join("data"),
        None,
        &["--config", cfg.to_str().unwrap()],
        Some((ACCOUNT_SID, AUTH_TOKEN)),
    );
    let definition = serde_json::json!({
        "states": [
            {"name": "Trigger", "type": "trigger", "properties": {},
             "transitions": [{"event": "incomingMessage"}, {"event": "incomingCall"},
                             {"event": "incomingRequest", "next": "call_user"}]},
            {"name": "call_user", "type": "make-outgoing-call-v2",
             "properties": {"from": "{{flow.channel.address}}", "to": "{{contact.channel.address}}", "timeout": 5},
             "transitions": [{"event": "answered"}, {"event": "busy"}, {"event": "noAnswer"}, {"event": "failed"}]}
        ],
        "initial_state": "Trigger",
        "flags": {"allow_concurrent_calls": true}
    })
    .to_string();
    let fsid = published_flow(&gw, "calls", &definition).await;
    let esid = start_execution(&gw, &fsid, "+33123456789").await;
    let ctx = context_after(&gw, &fsid, &esid, "call_user", Duration::from_secs(10))
        .await
        .expect("make-outgoing-call-v2 finished");
    assert_eq!(ctx["widgets"]["call_user"]["CallStatus"], "failed", "{ctx}");
    let execs = executions_by_sid(&gw, &esid).await;
    assert_eq!(execs.0, "failed", "the event taken");
    assert!(
        execs.1.contains("no trunk may dial +33123456789"),
        "step error {:?}",
        execs.1
    );
    // A busy callee, and one that rings past the widget's 5 s (our CANCEL).
    for (to, event) in [("+15558880001", "busy"), ("+15559990001", "noAnswer")] {
        let esid = start_execution(&gw, &fsid, to).await;
        context_after(&gw, &fsid, &esid, "call_user", Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("calling {to} did not finish"));
        assert_eq!(executions_by_sid(&gw, &esid).await.0, event, "calling {to}");
    }
    for (sipp, dir) in [(busy, &busy_dir), (ringing, &ring_dir)] {
        assert_eq!(sipp_done(sipp, dir, Duration::from_secs(20)).await, Some(0));
    }
}

/// The execution context after `widget`'s step, through the Steps API, once there is one.
async fn context_after(
    gw: &Gateway,
    fsid: &str,
    esid: &str,
    widget: &str,
    within: Duration,
) -> Option<Value> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let steps = api_get(gw, &format!("/v2/Flows/{fsid}/Executions/{esid}/Steps")).await;
        let step = steps["steps"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["transitioned_from"] == widget).cloned());
        if let Some(step) = step {
            let path = format!(
                "/v2/Flows/{fsid}/Executions/{esid}/Steps/{}/Context",
                step["sid"].as_str().unwrap_or_default()
            );
            return Some(api_get(gw, &path).await["context"].clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The event and error of the make-outgoing-call step, from the store.
async fn executions_by_sid(gw: &Gateway, esid: &str) -> (String, String) {
    let url = format!(
        "sqlite://{}?mode=rw",
        gw.data_dir.join("switchboard.db").display()
    );
    let store = switchboard::store::Store::open(&url).await.unwrap();
    let steps = store.steps(esid).await.unwrap();
    let s = steps.iter().find(|s| s.name == "call_user").unwrap();
    (s.event.clone(), s.error.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twiml_dial_bridges_the_caller_and_requests_its_action_with_the_outcome() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sipp_dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&sipp_dir).unwrap();
    std::fs::copy(sipp_pcap("g711a.pcap"), sipp_dir.join("g711a.pcap"))
        .expect("SIPp's g711a.pcap (package sip-tester)");
    // The TwiML app: <Dial> with an action; the action hands the call back to the flow.
    let (flow_path, mut seen) = twiml_app(
        tmp.path(),
        "<Response><Dial action=\"/after\" timeout=\"5\"><Number>+15557770004</Number></Dial>\
                 <Say>not reached</Say></Response>",
        "<Response><Redirect>?FlowEvent=return</Redirect></Response>",
    )
    .await;

    let (port, media_port) = (free_port(), free_port());
    let sipp = carrier(
        &sipp_dir,
        "carrier-answers-plays-hangs-up.xml",
        port,
        media_port,
    );
    let (gw, log) = gateway_with_flow(
        tmp.path(),
        Some(&flow_path),
        &format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             inbound_from = [\"127.0.0.1/32\"]\ndial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n"
        ),
    );
    let phone = Phone::dial(gw.sip, "+15550100", Offer::Rfc4733).await;
    let start = Instant::now();
    let after = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the <Dial> action was not requested\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .unwrap();
    let form: std::collections::HashMap<String, String> =
        reqwest::Url::parse(&format!("http://x/?{after}"))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
    assert_eq!(
        form.get("DialCallStatus").map(String::as_str),
        Some("completed"),
        "{form:?}"
    );
    assert!(form["DialCallSid"].starts_with("CA"), "{form:?}");
    let secs: u32 = form["DialCallDuration"].parse().unwrap();
    assert!((7..=10).contains(&secs), "DialCallDuration {secs}");
    assert!(
        form.contains_key("CallSid"),
        "the call's own parameters too"
    );
    // Back in the flow: "Goodbye", then the gateway hangs up.
    phone.wait_bye(Duration::from_secs(15)).await;
    let code = sipp_done(sipp, &sipp_dir, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "SIPp (the far end) failed");
    // And the caller heard the far end while bridged.
    let speech = loud_frames(&phone, start, 2500..6500, 300.0);
    assert!(speech > 50, "{speech} loud frames from the far end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_that_challenges_our_invite_gets_the_trunk_credentials() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let (port, media_port) = (free_port(), free_port());
    let sipp = Command::new("sipp")
        .current_dir(&dir)
        .args(["-sf", &scenario("carrier-challenges-invite.xml")])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mp", &media_port.to_string()])
        .args(["-m", "2", "-timeout", "60s", "-timeout_error", "-nostdin"])
        .args(["-trace_msg", "-trace_err"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sipp");
    // Two trunks to the same carrier: one with its credentials, one with a wrong password.
    let (gw, log) = gateway(
        tmp.path(),
        &format!(
            "[[trunks]]\nname = \"good\"\nuri = \"sip:127.0.0.1:{port}\"\ninbound_from = [\"127.0.0.1/32\"]\n\
             username = \"acct\"\npassword = \"secret\"\ndial_allow = [\"+1555444*\"]\nkeepalive_secs = 0\n\
             [[trunks]]\nname = \"bad\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             username = \"acct\"\npassword = \"wrong\"\ndial_allow = [\"+1555445*\"]\nkeepalive_secs = 0\n"
        ),
    );
    for caller in ["+15554440001", "+15554450001"] {
        let phone = Phone::dial(gw.sip, caller, Offer::Rfc4733).await;
        phone.wait_bye(Duration::from_secs(30)).await;
    }
    let code = sipp_done(sipp, &dir, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "SIPp (the authenticating carrier) failed");
    let execs = executions(&gw, &flow()).await;
    let widget = |caller: &str| {
        let (_, steps) = execs.iter().find(|(e, _)| e.contact == caller).unwrap();
        let step = steps.iter().find(|s| s.name == "connect").unwrap().clone();
        (step.context["widgets"]["connect"].clone(), step.error)
    };
    let (good, error) = widget("+15554440001");
    assert_eq!(
        good["DialCallStatus"],
        "completed",
        "{good}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(error, None);
    let (bad, error) = widget("+15554450001");
    assert_eq!(bad["DialCallStatus"], "failed", "{bad}");
    assert!(
        error.unwrap_or_default().contains("403"),
        "the step says the carrier refused"
    );
    // The password is not in the log.
    assert!(!std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("secret"));
}

/// A mono 8 kHz WAV of a sine at `hz` for `secs`.
fn tone_wav(path: &Path, hz: f64, secs: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..8000 * secs {
        let v = 8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin();
        w.write_sample(v as i16).unwrap();
    }
    w.finalize().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_call_to_a_client_rings_the_registered_phone_and_bridges_it() {
    if !peer_available("baresip") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/connect-to-client.json");
    let (gw, log) = gateway_with_flow(
        tmp.path(),
        Some(&flow),
        "[[users]]\nusername = \"alice\"\npassword = \"wonderland\"\n\
         [[trunks]]\nname = \"pstn\"\nuri = \"sip:127.0.0.1:9\"\ninbound_from = [\"127.0.0.1/32\"]\nkeepalive_secs = 0\n",
    );
    // baresip as alice's desk phone: registers with digest, answers by itself, plays a tone
    // as its microphone and writes what it hears to a WAV. Its `srtp` module takes the
    // gateway's best-effort offer (RTP/AVP with SDES keys, `[sip] srtp = "optional"`), so the
    // bridge joins a plain caller to an encrypted leg.
    let conf = tmp.path().join("baresip");
    let rec = tmp.path().join("heard");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&rec).unwrap();
    let mic = tmp.path().join("tone.wav");
    tone_wav(&mic, 600.0, 20);
    let port = free_port();
    std::fs::write(
        conf.join("config"),
        format!(
            "sip_listen 127.0.0.1:{port}\nnet_interface 127.0.0.1\n\
             audio_player sndfile,{rec}\naudio_source aufile,{mic}\naudio_alert sndfile,{rec}\n\
             module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\n\
             module sndfile.so\nmodule srtp.so\nmodule menu.so\nmodule account.so\nsnd_path {rec}\n",
            rec = rec.display(),
            mic = mic.display(),
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("accounts"),
        format!(
            "<sip:alice@{}>;auth_pass=wonderland;regint=60;answermode=auto;mediaenc=srtp\n",
            gw.sip
        ),
    )
    .unwrap();
    let baresip = tokio::task::spawn_blocking({
        let conf = conf.clone();
        move || {
            Command::new("baresip")
                .arg("-f")
                .arg(&conf)
                .args(["-t", "20"])
                .stdin(Stdio::null())
                .output()
                .expect("run baresip")
        }
    });
    // baresip starts slowly on a machine busy with the other tests: allow it time, and show
    // what it said if it never registers.
    let registered = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("user registered")
    {
        if registered.elapsed() > Duration::from_secs(12) || baresip.is_finished() {
            let out = baresip.await.unwrap();
            panic!(
                "baresip did not register:\n{}\n{}\ngateway:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut phone = Phone::dial(gw.sip, "+15550100", Offer::Rfc4733).await;
    let start = Instant::now();
    phone.send_audio(&tone(5.0)).await;
    phone.hangup().await;
    let out = baresip.await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("Call established"), "baresip: {said}");
    // The caller heard alice's tone through the bridge.
    let frames = phone.heard.lock().unwrap().audio_frames();
    let loud = frames
        .iter()
        .filter(|(t, f)| t.duration_since(start) > Duration::from_secs(2) && rms(f) > 2000.0)
        .count();
    assert!(
        loud > 50,
        "{loud} loud frames from alice's phone\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // And alice heard the caller.
    let heard = std::fs::read_dir(&rec)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .expect("baresip's recording of what it heard");
    let samples: Vec<i16> = hound::WavReader::open(&heard)
        .unwrap()
        .samples::<i16>()
        .map(|s| s.unwrap_or(0))
        .collect();
    assert!(rms(&samples) > 1000.0, "alice heard rms {}", rms(&samples));
    // The leg to alice was encrypted.
    assert!(said.contains("SRTP is Enabled"), "baresip: {said}");
    let text = plain_log(&std::fs::read_to_string(&log).unwrap_or_default());
    let leg = text
        .lines()
        .find(|l| l.contains("far end media"))
        .expect("the leg's media line");
    assert_eq!(
        log_field(leg, "srtp"),
        Some("AES_CM_128_HMAC_SHA1_80"),
        "{leg}"
    );
    // baresip un-registered as it quit: the same flow now says alice cannot be reached.
    let phone = Phone::dial(gw.sip, "+15550101", Offer::Rfc4733).await;
    phone.wait_bye(Duration::from_secs(10)).await;
    let execs = executions(&gw, &flow).await;
    let (_, steps) = execs
        .iter()
        .find(|(e, _)| e.contact == "+15550101")
        .unwrap();
    let step = steps.iter().find(|s| s.name == "connect").unwrap();
    assert_eq!(
        step.context["widgets"]["connect"]["DialCallStatus"],
        "failed"
    );
    assert!(
        step.error
            .as_deref()
            .unwrap_or("")
            .contains("\"alice\" is not registered"),
        "{:?}",
        step.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_detection_tells_a_person_from_an_answering_machine() {
    if !peer_available("espeak-ng") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The two far ends are gateways too: one answers "Hello?", one plays a voicemail greeting
    // and a beep (TTS by espeak-ng, as a caller would hear them).
    let person = Gateway::start_in(
        &tmp.path().join("person"),
        Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/answers-hello.json")),
        &[],
    );
    let beep = tmp.path().join("beep.wav");
    tone_wav(&beep, 1000.0, 1);
    let machine_flow = tmp.path().join("voicemail-greeting.json");
    std::fs::write(
        &machine_flow,
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/voicemail-greeting.json"),
        )
        .unwrap()
        .replace("{{BEEP}}", beep.to_str().unwrap()),
    )
    .unwrap();
    let machine = Gateway::start_in(&tmp.path().join("machine"), Some(&machine_flow), &[]);
    let cfg = tmp.path().join("switchboard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[trunks]]\nname = \"person\"\nuri = \"sip:{}\"\ndial_allow = [\"+15550000010\"]\nkeepalive_secs = 0\n\
             [[trunks]]\nname = \"machine\"\nuri = \"sip:{}\"\ndial_allow = [\"+15550000020\"]\nkeepalive_secs = 0\n",
            person.sip, machine.sip
        ),
    )
    .unwrap();
    let gw = Gateway::start_with(
        &tmp.path().join("data"),
        None,
        &["--config", cfg.to_str().unwrap()],
        Some((ACCOUNT_SID, AUTH_TOKEN)),
    );
    let definition = serde_json::json!({
        "states": [
            {"name": "Trigger", "type": "trigger", "properties": {},
             "transitions": [{"event": "incomingMessage"}, {"event": "incomingCall"},
                             {"event": "incomingRequest", "next": "call_user"}]},
            {"name": "call_user", "type": "make-outgoing-call-v2",
             "properties": {"from": "{{flow.channel.address}}", "to": "{{contact.channel.address}}",
                            "timeout": 10, "machine_detection": "DetectMessageEnd"},
             "transitions": [{"event": "answered"}, {"event": "busy"}, {"event": "noAnswer"}, {"event": "failed"}]}
        ],
        "initial_state": "Trigger",
        "flags": {"allow_concurrent_calls": true}
    })
    .to_string();
    let fsid = published_flow(&gw, "amd", &definition).await;
    for (to, expect) in [
        ("+15550000010", "human"),
        ("+15550000020", "machine_end_beep"),
    ] {
        let esid = start_execution(&gw, &fsid, to).await;
        let ctx = context_after(&gw, &fsid, &esid, "call_user", Duration::from_secs(30))
            .await
            .unwrap_or_default();
        let answered_by = ctx["widgets"]["call_user"]["AnsweredBy"].clone();
        assert_eq!(answered_by, expect, "calling {to}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twiml_refer_transfers_the_call_and_reports_the_notify_status() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (flow_path, mut seen) = twiml_app(tmp.path(), "<Response><Refer action=\"/after\"><Sip>sip:+15557770009@pbx.example</Sip></Refer></Response>", "<Response><Hangup/></Response>").await;
    let (gw, log) = gateway_with_flow(
        tmp.path(),
        Some(&flow_path),
        "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:9\"\ninbound_from = [\"127.0.0.1/32\"]\n\
         dial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n",
    );
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let sipp = Command::new("sipp")
        .current_dir(&dir)
        .args(["-sf", &scenario("caller-accepts-refer.xml"), "-s", "ivr"])
        .arg(gw.sip.to_string())
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-mp",
            &free_port().to_string(),
        ])
        .args(["-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin"])
        .args(["-trace_msg", "-trace_err"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sipp");
    let after = tokio::time::timeout(Duration::from_secs(20), seen.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the <Refer> action was not requested\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .unwrap();
    let form: std::collections::HashMap<String, String> =
        reqwest::Url::parse(&format!("http://x/?{after}"))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
    assert_eq!(
        form.get("ReferCallStatus").map(String::as_str),
        Some("completed"),
        "{form:?}"
    );
    assert_eq!(
        form.get("ReferSipResponseCode").map(String::as_str),
        Some("200"),
        "{form:?}"
    );
    let code = sipp_done(sipp, &dir, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "SIPp (the transferred caller) failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn number_multi_rings_both_the_first_answer_wins_and_time_limit_ends_it() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ring_dir, answer_dir) = (tmp.path().join("ring"), tmp.path().join("answer"));
    std::fs::create_dir_all(&ring_dir).unwrap();
    std::fs::create_dir_all(&answer_dir).unwrap();
    let (ring_port, answer_port) = (free_port(), free_port());
    let ringing = carrier(
        &ring_dir,
        "carrier-rings-no-answer.xml",
        ring_port,
        free_port(),
    );
    let answering = carrier(
        &answer_dir,
        "carrier-answers-waits-for-bye.xml",
        answer_port,
        free_port(),
    );
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/connect-multi.json");
    let (gw, _log) = gateway_with_flow(
        tmp.path(),
        Some(&flow),
        &format!(
            "[[trunks]]\nname = \"slow\"\nuri = \"sip:127.0.0.1:{ring_port}\"\ninbound_from = [\"127.0.0.1/32\"]\ndial_allow = [\"+1555999*\"]\nkeepalive_secs = 0\n\
             [[trunks]]\nname = \"quick\"\nuri = \"sip:127.0.0.1:{answer_port}\"\ndial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n"
        ),
    );
    let phone = Phone::dial(gw.sip, "+15550100", Offer::Rfc4733).await;
    phone.wait_bye(Duration::from_secs(20)).await;
    for (sipp, dir, who) in [
        (ringing, &ring_dir, "the one still ringing (cancelled)"),
        (
            answering,
            &answer_dir,
            "the one that answered (hung up at the time limit)",
        ),
    ] {
        let code = sipp_done(sipp, dir, Duration::from_secs(20)).await;
        assert_eq!(code, Some(0), "SIPp far end: {who}");
    }
    let execs = executions(&gw, &flow).await;
    let step = execs[0].1.iter().find(|s| s.name == "connect").unwrap();
    let w = &step.context["widgets"]["connect"];
    assert_eq!(w["DialCallStatus"], "completed", "{w}");
    let secs: u32 = w["DialCallDuration"].as_str().unwrap().parse().unwrap();
    assert!(
        (2..=4).contains(&secs),
        "time_limit 3 s, connected {secs} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_hears_early_media_while_it_rings() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(sipp_pcap("g711a.pcap"), dir.join("g711a.pcap"))
        .expect("SIPp's g711a.pcap (package sip-tester)");
    let port = free_port();
    let sipp = carrier(&dir, "carrier-early-media-busy.xml", port, free_port());
    // The usual flow with a ring time longer than the announcement.
    let flow_path = tmp.path().join("connect-long-ring.json");
    std::fs::write(
        &flow_path,
        std::fs::read_to_string(flow())
            .unwrap()
            .replace("\"timeout\": 4", "\"timeout\": 15"),
    )
    .unwrap();
    let (gw, log) = gateway_with_flow(
        tmp.path(),
        Some(&flow_path),
        &format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\ninbound_from = [\"127.0.0.1/32\"]\n\
             dial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n"
        ),
    );
    let phone = Phone::dial(gw.sip, "+15557770005", Offer::Rfc4733).await;
    let start = Instant::now();
    phone.wait_bye(Duration::from_secs(30)).await;
    let code = sipp_done(sipp, &dir, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "SIPp (the carrier) failed");
    // The announcement (speech from the pcap) while ringing: ringback is a steady tone
    // cadence (2 s on, 4 s off), so speech in the ringback's silence is the early media.
    let early = loud_frames(&phone, start, 2200..3400, 300.0);
    assert!(
        early > 25,
        "{early} loud frames of early media\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let execs = executions(&gw, &flow_path).await;
    let step = execs[0].1.iter().find(|s| s.name == "connect").unwrap();
    assert_eq!(step.context["widgets"]["connect"]["DialCallStatus"], "busy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sipp_caller_and_a_sipp_far_end_hear_each_other_through_the_bridge() {
    if !peer_available("sipp") || !peer_available("tshark") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (caller_dir, far_dir) = (tmp.path().join("caller"), tmp.path().join("far"));
    for d in [&caller_dir, &far_dir] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::copy(sipp_pcap("g711a.pcap"), d.join("g711a.pcap"))
            .expect("SIPp's g711a.pcap (package sip-tester)");
    }
    let (far_port, far_media, caller_media) = (free_port(), free_port(), free_port());
    let heard_by_far_end = capture(far_media);
    let heard_by_caller = capture(caller_media);
    let far = carrier(
        &far_dir,
        "carrier-answers-plays-hangs-up.xml",
        far_port,
        far_media,
    );
    // The usual flow, ending when the bridge does (no goodbye prompt to count as audio).
    let flow_path = tmp.path().join("connect-and-end.json");
    std::fs::write(
        &flow_path,
        std::fs::read_to_string(flow()).unwrap().replace(
            "{\"event\": \"callCompleted\", \"next\": \"after\"}",
            "{\"event\": \"callCompleted\"}",
        ),
    )
    .unwrap();
    let (gw, log) = gateway_with_flow(
        tmp.path(),
        Some(&flow_path),
        &format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{far_port}\"\n\
             inbound_from = [\"127.0.0.1/32\"]\ndial_allow = [\"+1555010*\"]\nkeepalive_secs = 0\n"
        ),
    );
    // The flow connects the caller (SIPp, +15550100000) to its own number: the far end.
    let caller = Command::new("sipp")
        .current_dir(&caller_dir)
        .args([
            "-sf",
            &scenario("caller-talks-and-listens.xml"),
            "-s",
            "ivr",
        ])
        .arg(gw.sip.to_string())
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-mp",
            &caller_media.to_string(),
        ])
        .args(["-m", "1", "-timeout", "40s", "-timeout_error", "-nostdin"])
        .args(["-trace_msg", "-trace_err"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sipp");
    let code = sipp_done(caller, &caller_dir, Duration::from_secs(40)).await;
    assert_eq!(
        code,
        Some(0),
        "the SIPp caller failed\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        sipp_done(far, &far_dir, Duration::from_secs(10)).await,
        Some(0)
    );
    // Each side received the other's speech (both PCMA: relayed without transcoding).
    for (capture, who) in [(heard_by_caller, "caller"), (heard_by_far_end, "far end")] {
        unsafe { libc::kill(capture.id() as i32, libc::SIGINT) };
        let out = capture.wait_with_output().unwrap();
        let loud = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(hex)
            .filter(|p| p.len() > 12 && p[1] & 0x7F == 8)
            .filter(|p| {
                let pcm: Vec<i16> = p[12..]
                    .iter()
                    .map(|&b| switchboard::media::codec::alaw_to_linear(b))
                    .collect();
                rms(&pcm) > 300.0
            })
            .count();
        assert!(loud > 100, "the {who} received {loud} loud PCMA packets");
    }
    // The outcome, as a Twilio client reads it: through the Steps API.
    let fsid = switchboard::routing::LoadedFlow::from_file(&flow_path)
        .unwrap()
        .sid;
    let list = api_get(&gw, &format!("/v2/Flows/{fsid}/Executions")).await;
    let esid = list["executions"][0]["sid"].as_str().unwrap().to_string();
    let ctx = context_after(&gw, &fsid, &esid, "connect", Duration::from_secs(10))
        .await
        .expect("the connect step");
    let w = &ctx["widgets"]["connect"];
    assert_eq!(w["DialCallStatus"], "completed", "{w}");
    let secs: u32 = w["DialCallDuration"]
        .as_str()
        .unwrap_or("")
        .parse()
        .unwrap();
    assert!(secs >= 3, "bridged while the pcap played: {w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_hanging_up_ends_the_far_leg_and_takes_hangup() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let far = carrier(&dir, "carrier-answers-waits-for-bye.xml", port, free_port());
    let (gw, _log) = gateway(
        tmp.path(),
        &format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             inbound_from = [\"127.0.0.1/32\"]\ndial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n"
        ),
    );
    let mut phone = Phone::dial(gw.sip, "+15557770006", Offer::Rfc4733).await;
    phone.send_audio(&tone(2.0)).await;
    phone.hangup().await;
    // The far end gets our BYE (its scenario ends only on one).
    assert_eq!(sipp_done(far, &dir, Duration::from_secs(15)).await, Some(0));
    // The step is committed as the call ends: give it a moment.
    let step = connect_step(&gw).await;
    assert_eq!(step.event, "hangup");
    assert_eq!(step.transitioned_to, "Ended");
    let w = &step.context["widgets"]["connect"];
    assert_eq!(w["DialCallStatus"], "completed", "{w}");
    let secs: u32 = w["DialCallDuration"]
        .as_str()
        .unwrap_or("")
        .parse()
        .unwrap();
    assert!((1..=5).contains(&secs), "bridged about 2 s: {w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_sending_a_reliable_183_gets_its_prack_and_the_call_connects() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    // The carrier answers only after a PRACK with the right RAck (its scenario checks it).
    let far = carrier(&dir, "carrier-reliable-183.xml", port, free_port());
    let (gw, log) = gateway(
        tmp.path(),
        &format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             inbound_from = [\"127.0.0.1/32\"]\ndial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n"
        ),
    );
    let mut phone = Phone::dial(gw.sip, "+15557770008", Offer::Rfc4733).await;
    phone.send_audio(&tone(3.0)).await;
    phone.hangup().await;
    assert_eq!(
        sipp_done(far, &dir, Duration::from_secs(15)).await,
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let step = connect_step(&gw).await;
    let w = &step.context["widgets"]["connect"];
    assert_eq!(w["DialCallStatus"], "completed", "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_that_requires_srtp_offers_savp_and_a_plain_answer_is_hung_up() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    // SIPp answers RTP/AVP whatever it is offered: with `srtp = "required"` that answer is
    // unusable, so the gateway ACKs it, sends BYE (which ends SIPp's scenario) and fails over.
    // The caller comes in through another trunk (plain RTP): the SRTP one would refuse it.
    let far = carrier(&dir, "carrier-answers-waits-for-bye.xml", port, free_port());
    let (gw, log) = gateway(
        tmp.path(),
        &format!(
            "[[trunks]]\nname = \"pstn\"\nuri = \"sip:127.0.0.1:9\"\n\
             inbound_from = [\"127.0.0.1/32\"]\nkeepalive_secs = 0\n\
             [[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             dial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\nsrtp = \"required\"\n"
        ),
    );
    let phone = Phone::dial(gw.sip, "+15557770009", Offer::Rfc4733).await;
    assert_eq!(sipp_done(far, &dir, Duration::from_secs(15)).await, Some(0));
    drop(phone);
    // What SIPp received: an RTP/SAVP offer with a key per suite.
    let trace = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().to_string_lossy().ends_with("_messages.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .unwrap_or_default();
    assert!(trace.contains(" RTP/SAVP 0 8 9 101"), "{trace}");
    assert!(
        trace.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:")
            && trace.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"),
        "{trace}"
    );
    let step = connect_step(&gw).await;
    let w = &step.context["widgets"]["connect"];
    assert_eq!(w["DialCallStatus"], "failed", "{w}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("far end answered with unusable SDP"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_hanging_up_while_it_rings_cancels_the_far_leg() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    // Rings, then expects CANCEL and answers it 200 + 487.
    let far = carrier(&dir, "carrier-rings-no-answer.xml", port, free_port());
    let (gw, _log) = gateway(
        tmp.path(),
        &format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             inbound_from = [\"127.0.0.1/32\"]\ndial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n"
        ),
    );
    let mut phone = Phone::dial(gw.sip, "+15557770016", Offer::Rfc4733).await;
    let start = Instant::now();
    // The ring time is 4 s: hang up well before it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        loud_frames(&phone, start, 200..1500, 300.0) > 10,
        "ringback while it rings"
    );
    phone.hangup().await;
    assert_eq!(
        sipp_done(far, &dir, Duration::from_secs(15)).await,
        Some(0),
        "the far end got CANCEL"
    );
    let step = connect_step(&gw).await;
    assert_eq!(step.event, "hangup");
    let w = &step.context["widgets"]["connect"];
    assert_eq!(w["DialCallStatus"], "canceled", "{w}");
    assert!(
        w["DialCallSid"].as_str().unwrap_or("").starts_with("CA"),
        "{w}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_on_star_ends_the_far_leg_and_the_caller_goes_on() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (flow_path, mut seen) = twiml_app(
        tmp.path(),
        "<Response><Dial action=\"/after\" hangupOnStar=\"true\">+15557770007</Dial></Response>",
        "<Response><Redirect>?FlowEvent=return</Redirect></Response>",
    )
    .await;
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let far = carrier(&dir, "carrier-answers-waits-for-bye.xml", port, free_port());
    let (gw, _log) = gateway_with_flow(
        tmp.path(),
        Some(&flow_path),
        &format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             inbound_from = [\"127.0.0.1/32\"]\ndial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n"
        ),
    );
    let mut phone = Phone::dial(gw.sip, "+15550100", Offer::Rfc4733).await;
    phone.send_audio(&tone(1.5)).await;
    phone.send_rfc4733('*').await;
    let after = tokio::time::timeout(Duration::from_secs(15), seen.recv())
        .await
        .expect("the <Dial> action after *")
        .unwrap();
    assert!(after.contains("DialCallStatus=completed"), "{after}");
    assert_eq!(
        sipp_done(far, &dir, Duration::from_secs(10)).await,
        Some(0),
        "the far end got BYE"
    );
    // Back in the flow: "Goodbye", then the call ends.
    phone.wait_bye(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sip_endpoint_on_a_trunk_host_is_dialled_with_the_widget_credentials_and_hears_digits_in_band(
) {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let (port, media) = (free_port(), free_port());
    let far = Command::new("sipp")
        .current_dir(&dir)
        .args(["-sf", &scenario("carrier-challenges-invite.xml")])
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-mp",
            &media.to_string(),
        ])
        .args(["-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin"])
        .args(["-trace_msg", "-trace_err"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sipp");
    let flow_path = tmp.path().join("connect-sip.json");
    std::fs::write(
        &flow_path,
        serde_json::json!({
            "states": [
                {"name": "Trigger", "type": "trigger", "properties": {},
                 "transitions": [{"event": "incomingMessage"}, {"event": "incomingCall", "next": "connect"}, {"event": "incomingRequest"}]},
                {"name": "connect", "type": "connect-call-to",
                 "properties": {"noun": "sip", "sip_endpoint": format!("sip:desk@127.0.0.1:{port}?X-Ticket=42&Contact=evil"),
                                "sip_username": "acct", "sip_password": "secret", "timeout": 10},
                 "transitions": [{"event": "callCompleted"}, {"event": "hangup"}]}
            ],
            "initial_state": "Trigger",
            "flags": {"allow_concurrent_calls": true}
        })
        .to_string(),
    )
    .unwrap();
    // The trunk has no credentials of its own: the widget's are used. No dial_allow either:
    // a SIP URI needs only its host to be the trunk's.
    let (gw, log) = gateway_with_flow(
        tmp.path(),
        Some(&flow_path),
        &format!(
            "[[trunks]]\nname = \"pbx\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             inbound_from = [\"127.0.0.1/32\"]\nkeepalive_secs = 0\n"
        ),
    );
    let heard_by_far_end = capture(media);
    let mut phone = Phone::dial(gw.sip, "+15550100", Offer::Rfc4733).await;
    // The far end has no telephone-event: the caller's digit reaches it as a tone.
    phone.send_audio(&vec![0; 2400]).await;
    phone.send_rfc4733('5').await;
    phone.wait_bye(Duration::from_secs(20)).await;
    assert_eq!(sipp_done(far, &dir, Duration::from_secs(10)).await, Some(0));
    unsafe { libc::kill(heard_by_far_end.id() as i32, libc::SIGINT) };
    let out = heard_by_far_end.wait_with_output().unwrap();
    let mut detector = switchboard::media::goertzel::InbandDtmf::new(8000).unwrap();
    let mut digits = String::new();
    for p in String::from_utf8_lossy(&out.stdout).lines().map(hex) {
        if p.len() > 12 && p[1] & 0x7F == 0 {
            let pcm: Vec<i16> = p[12..]
                .iter()
                .map(|&b| switchboard::media::codec::ulaw_to_linear(b))
                .collect();
            detector.push(&pcm, &mut |d| digits.push(d));
        }
    }
    assert_eq!(digits, "5", "the relayed digit, as an in-band tone");
    let ex = executions(&gw, &flow_path).await;
    let step = ex[0].1.iter().find(|s| s.name == "connect").unwrap();
    assert_eq!(
        step.context["widgets"]["connect"]["DialCallStatus"],
        "completed",
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("sip:desk@127.0.0.1"),
        "the INVITE went to the endpoint"
    );
    assert!(
        !text.contains("secret"),
        "the widget's password is not logged"
    );
    // The URI's X- header reached the far end; the Contact it tried to set did not.
    let trace: String = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().to_string_lossy().ends_with("_messages.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(trace.contains("X-Ticket: 42"), "{trace}");
    assert!(!trace.contains("evil"), "{trace}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_out_is_held_to_the_trunk_call_rate() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let busy = carrier(&dir, "carrier-busy.xml", port, free_port());
    let (gw, _log) = gateway(
        tmp.path(),
        &format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             inbound_from = [\"127.0.0.1/32\"]\ndial_allow = [\"+1555888*\"]\ncalls_per_second = 1\nkeepalive_secs = 0\n"
        ),
    );
    // Three callers at once, each connected to its own number on this trunk.
    let (a, b, c) = tokio::join!(
        Phone::dial(gw.sip, "+15558880011", Offer::Rfc4733),
        Phone::dial(gw.sip, "+15558880012", Offer::Rfc4733),
        Phone::dial(gw.sip, "+15558880013", Offer::Rfc4733),
    );
    for p in [&a, &b, &c] {
        p.wait_bye(Duration::from_secs(20)).await;
    }
    assert_eq!(
        sipp_done(busy, &dir, Duration::from_secs(10)).await,
        Some(0)
    );
    let ex = executions(&gw, &flow()).await;
    let mut statuses: Vec<String> = ex
        .iter()
        .map(|(_, steps)| {
            let s = steps.iter().find(|s| s.name == "connect").unwrap();
            let status = s.context["widgets"]["connect"]["DialCallStatus"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if status == "failed" {
                assert!(
                    s.error
                        .as_deref()
                        .unwrap_or("")
                        .contains("new calls per second"),
                    "{:?}",
                    s.error
                );
            }
            status
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        ["busy", "failed", "failed"],
        "one call a second gets through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_outgoing_call_is_saved_in_two_channels_and_its_callback_is_signed() {
    if !peer_available("sipp") || !peer_available("espeak-ng") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(sipp_pcap("g711a.pcap"), dir.join("g711a.pcap"))
        .expect("SIPp's g711a.pcap (package sip-tester)");
    let port = free_port();
    // Answers, plays 7 s of speech from 0.5 s, hangs up at about 8.5 s.
    let far = carrier(
        &dir,
        "carrier-answers-plays-hangs-up.xml",
        port,
        free_port(),
    );
    let (sink, mut callbacks) = callback_sink().await;
    let callback = format!("{sink}/recording");
    let cfg = tmp.path().join("switchboard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\n\
             dial_allow = [\"+1555777*\"]\nkeepalive_secs = 0\n"
        ),
    )
    .unwrap();
    let gw = Gateway::start_with(
        &tmp.path().join("data"),
        None,
        &["--config", cfg.to_str().unwrap()],
        Some((ACCOUNT_SID, AUTH_TOKEN)),
    );
    // Studio's export shape: the toggle off with a mode named must not run detection.
    let definition = serde_json::json!({
        "states": [
            {"name": "Trigger", "type": "trigger", "properties": {},
             "transitions": [{"event": "incomingMessage"}, {"event": "incomingCall"},
                             {"event": "incomingRequest", "next": "call_user"}]},
            {"name": "call_user", "type": "make-outgoing-call-v2",
             "properties": {"from": "{{flow.channel.address}}", "to": "{{contact.channel.address}}",
                            "timeout": 10, "record": true, "recording_channels": "dual",
                            "trim": "do-not-trim", "recording_status_callback": callback,
                            "detect_answering_machine": false, "machine_detection": "Enable"},
             "transitions": [{"event": "answered", "next": "notice"}, {"event": "busy"},
                             {"event": "noAnswer"}, {"event": "failed"}]},
            {"name": "notice", "type": "say-play",
             "properties": {"say": "This call is recorded for quality."},
             "transitions": [{"event": "audioComplete", "next": "wait"}]},
            {"name": "wait", "type": "gather-input-on-call",
             "properties": {"timeout": 20, "number_of_digits": 1},
             "transitions": [{"event": "keypress"}, {"event": "speech"}, {"event": "timeout"}]}
        ],
        "initial_state": "Trigger",
        "flags": {"allow_concurrent_calls": true}
    })
    .to_string();
    let fsid = published_flow(&gw, "recorded", &definition).await;
    let esid = start_execution(&gw, &fsid, "+15557770031").await;
    let ctx = context_after(&gw, &fsid, &esid, "call_user", Duration::from_secs(10))
        .await
        .expect("the call was answered");
    assert_eq!(ctx["widgets"]["call_user"]["CallStatus"], "in-progress");
    assert!(
        ctx["widgets"]["call_user"].get("AnsweredBy").is_none(),
        "no detection with the toggle off: {ctx}"
    );
    let call_sid = ctx["widgets"]["call_user"]["CallSid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sipp_done(far, &dir, Duration::from_secs(20)).await, Some(0));
    let posted = tokio::time::timeout(Duration::from_secs(15), callbacks.recv())
        .await
        .expect("the recording status callback")
        .unwrap();
    assert!(
        switchboard::web::signature::valid(AUTH_TOKEN, &callback, &posted.form, &posted.signature),
        "signed with the auth token"
    );
    let field = |k: &str| posted.get(k);
    assert_eq!(field("RecordingStatus"), "completed", "{:?}", posted.form);
    assert_eq!(field("CallSid"), call_sid);
    assert_eq!(field("RecordingSource"), "OutboundAPI");
    assert_eq!(field("RecordingChannels"), "2");
    let secs: u32 = field("RecordingDuration").parse().unwrap();
    assert!(
        (6..=11).contains(&secs),
        "answer to BYE is about 8 s: {secs}"
    );
    // The WAV at its URL: left what the gateway said, right the far end's speech.
    let wav = switchboard::web::plain_client()
        .get(format!("{}.wav", field("RecordingUrl")))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .send()
        .await
        .unwrap();
    assert!(wav.status().is_success(), "{}", wav.status());
    let bytes = wav.bytes().await.unwrap();
    let mut r = hound::WavReader::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    assert_eq!(r.spec().channels, 2);
    let samples: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    let (left, right): (Vec<i16>, Vec<i16>) = samples.chunks(2).map(|c| (c[0], c[1])).unzip();
    // 100 ms windows with speech on each side.
    let loud = |pcm: &[i16], from_s: f64, to_s: f64| {
        pcm[(from_s * 8000.0) as usize..((to_s * 8000.0) as usize).min(pcm.len())]
            .chunks(800)
            .filter(|w| rms(w) > 300.0)
            .count()
    };
    assert!(loud(&left, 0.0, 3.0) > 8, "the notice on the left channel");
    assert!(loud(&left, 5.0, 7.0) < 3, "then the gateway is quiet");
    assert!(
        loud(&right, 0.5, 7.0) > 20,
        "the far end on the right channel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_outbound_holds_when_ten_callers_connect_at_once_and_frees_its_slots() {
    if !peer_available("espeak-ng") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The far end is a gateway that speaks for about 18 s: a bridged call holds its slot.
    let far = Gateway::start_in(
        &tmp.path().join("far"),
        Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/long-prompt.json")),
        &[],
    );
    let (gw, log) = gateway(
        tmp.path(),
        &format!(
            "[[trunks]]\nname = \"far\"\nuri = \"sip:{}\"\ninbound_from = [\"127.0.0.1/32\"]\n\
             dial_allow = [\"+1555444*\"]\nmax_outbound = 3\ncalls_per_second = 100\nkeepalive_secs = 0\n",
            far.sip
        ),
    );
    let sip = gw.sip;
    let dials: Vec<_> = (0..10)
        .map(|i| {
            tokio::spawn(async move {
                Phone::dial(sip, &format!("+15554440{i:03}"), Offer::Rfc4733).await
            })
        })
        .collect();
    let mut phones = Vec::new();
    for d in dials {
        phones.push(d.await.unwrap());
    }
    // The seven refused hear how it went and are hung up; three stay bridged.
    let mut most = 0;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let trunks = api_get(&gw, "/v2/Trunks").await;
        let out = trunks["trunks"][0]["calls_out"].as_u64().unwrap();
        assert!(
            out <= 3,
            "{out} calls out through a trunk with max_outbound = 3"
        );
        most = most.max(out);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(most, 3, "three calls went out");
    let mut bridged = Vec::new();
    for p in phones {
        if p.heard.lock().unwrap().bye_at.is_some() {
            continue;
        }
        bridged.push(p);
    }
    assert_eq!(bridged.len(), 3, "three callers are still bridged");
    for p in &mut bridged {
        p.hangup().await;
    }
    // The slots are free again: one more caller gets through.
    let mut calls_out = 3;
    for _ in 0..50 {
        calls_out = api_get(&gw, "/v2/Trunks").await["trunks"][0]["calls_out"]
            .as_u64()
            .unwrap();
        if calls_out == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(calls_out, 0, "the bridged calls gave their slots back");
    let mut late = Phone::dial(gw.sip, "+15554440999", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        late.heard.lock().unwrap().bye_at.is_none(),
        "the late caller is bridged"
    );
    late.hangup().await;
    let mut statuses: Vec<(String, Option<String>)> = Vec::new();
    for _ in 0..50 {
        statuses = executions(&gw, &flow())
            .await
            .iter()
            .filter_map(|(_, steps)| steps.iter().find(|s| s.name == "connect"))
            .map(|s| {
                (
                    s.context["widgets"]["connect"]["DialCallStatus"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    s.error.clone(),
                )
            })
            .collect();
        if statuses.len() == 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let completed = statuses.iter().filter(|(s, _)| s == "completed").count();
    let refused = statuses
        .iter()
        .filter(|(s, e)| {
            s == "failed"
                && e.as_deref()
                    .is_some_and(|e| e.contains("max_outbound of 3 calls"))
        })
        .count();
    assert_eq!(
        (completed, refused),
        (4, 7),
        "{statuses:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
