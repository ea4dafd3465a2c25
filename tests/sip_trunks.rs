//! Trunks and phones as a carrier or a desk phone sees them: digest authentication of
//! `[[users]]` (SIPp as the phone), trust by a trunk's address, and registration.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

const USERS: &str = "[[users]]\nusername = \"alice\"\npassword = \"wonderland\"\n";

fn scenario(name: &str) -> String {
    format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Run SIPp once against `target` with digest credentials.
fn sipp(scenario_file: &str, target: std::net::SocketAddr, user: &str, password: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new("sipp")
        .current_dir(dir.path())
        .args(["-sf", scenario_file, "-s", "+15550100", &target.to_string()])
        .args(["-i", "127.0.0.1", "-p", "0", "-mp", "0"])
        .args(["-au", user, "-ap", password])
        .args([
            "-m",
            "1",
            "-timeout",
            "30s",
            "-timeout_error",
            "-nostdin",
            "-trace_msg",
        ])
        .output()
        .inspect(|_| {
            // SIPp's message trace, shown when the test fails.
            for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
                if e.path().to_string_lossy().ends_with("_messages.log") {
                    eprintln!("{}", std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        })
        .expect("run sipp")
}

fn gateway_with(tmp: &Path, config: &str) -> (Gateway, PathBuf, PathBuf) {
    let cfg = tmp.join("switchboard.toml");
    std::fs::write(&cfg, config).unwrap();
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/long-prompt.json");
    let log = tmp.join("gateway.log");
    let gw = Gateway::start_logging(
        &tmp.join("data"),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
        Some((ACCOUNT_SID, AUTH_TOKEN)),
        Some(&log),
    );
    (gw, flow, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_registers_and_calls_with_digest_and_wrong_credentials_are_refused() {
    if !peer_available("sipp") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (gw, flow, log) = gateway_with(tmp.path(), USERS);

    // Users are configured: a loopback caller without credentials is challenged, not routed.
    assert_eq!(short_call(gw.sip, Duration::from_secs(5)).await, 401);

    let ok = tokio::task::spawn_blocking({
        let target = gw.sip;
        move || {
            sipp(
                &scenario("register-and-call-with-digest.xml"),
                target,
                "alice",
                "wonderland",
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "the registered phone's call: {}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr),
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("SIP request refused") || l.contains("registered"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (user, password) in [("alice", "looking-glass"), ("bob", "wonderland")] {
        let refused = tokio::task::spawn_blocking({
            let target = gw.sip;
            move || {
                sipp(
                    &scenario("call-with-digest-refused.xml"),
                    target,
                    user,
                    password,
                )
            }
        })
        .await
        .unwrap();
        assert_eq!(
            refused.status.code(),
            Some(0),
            "{user}/{password} gets 403: {}",
            String::from_utf8_lossy(&refused.stdout)
        );
    }

    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("switchboard_sip_auth_failures_total 2"),
        "two refused credentials counted: {metrics}"
    );
    // Only alice's authenticated call reached the flow, and it is stored whole.
    one_call_stored(&gw, &flow).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("user registered") && l.contains("alice")),
        "the registration is logged"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("SIP request refused") && l.contains("wrong password")),
        "the refusal is logged with its reason"
    );
    assert!(!text.contains("wonderland"), "no password in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_is_trusted_by_address_and_others_must_authenticate() {
    let tmp = tempfile::tempdir().unwrap();
    // 127.0.0.2 is the trunk; the test's phone calls from 127.0.0.1.
    let config = "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.2:5060\"\ninbound_from = [\"127.0.0.2/32\"]\n";
    let (gw, flow, _) = gateway_with(tmp.path(), config);
    assert_eq!(
        short_call(gw.sip, Duration::from_secs(5)).await,
        401,
        "not the trunk, no credentials"
    );
    let from_trunk = Ua::bound("127.0.0.2:0".parse().unwrap())
        .await
        .call(
            gw.sip,
            CallOptions {
                max_duration: Duration::from_secs(5),
                hangup_after: Some(Duration::from_millis(300)),
                ..CallOptions::default()
            },
        )
        .await
        .final_status;
    assert_eq!(from_trunk, 200, "the trunk's source is trusted");
    let start = Instant::now();
    while executions(&gw, &flow).await.len() != 1 {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn trunk_settings_that_cannot_work_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    for (config, says) in [
        (
            "[[trunks]]\nname = \"a\"\nuri = \"sip:x\"\nregister = true\n",
            "register = true needs username and password",
        ),
        (
            "[[trunks]]\nname = \"a\"\nuri = \"sip:x\"\nsrtp = \"sometimes\"\n",
            "unknown variant",
        ),
        (
            "[[trunks]]\nname = \"a\"\nuri = \"sip:x\"\nbogus = 1\n",
            "unknown field",
        ),
        (
            "[[users]]\nusername = \"a\"\npassword = \"p\"\n[[users]]\nusername = \"a\"\npassword = \"q\"\n",
            "used twice",
        ),
        ("[sip]\ndigest_algorithms = [\"SHA-512\"]\n", "digest_algorithms"),
        ("[sip]\ntls_bind = \"127.0.0.1:0\"\n", "tls_bind needs tls_cert and tls_key"),
        (
            "[sip]\ntls_bind = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent.pem\"\ntls_key = \"/nonexistent.pem\"\n",
            "/nonexistent.pem",
        ),
    ] {
        let cfg = tmp.path().join("bad.toml");
        std::fs::write(&cfg, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--sip-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{config}: {err}");
        assert!(!err.contains("\"p\"") && !err.contains("\"q\""), "{err}");
    }
}

async fn trunks_json(gw: &Gateway) -> serde_json::Value {
    let resp = switchboard::web::plain_client()
        .get(format!("{}/v2/Trunks", gw.base_url()))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_a_challenging_registrar_refreshes_and_unregisters_on_shutdown() {
    if !peer_available("sipp") {
        return;
    }
    // SIPp is the carrier's registrar on a port of its own.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let registrar = Command::new("sipp")
        .current_dir(dir.path())
        .args(["-sf", &scenario("registrar-challenges.xml")])
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-mp", "0"])
        .args(["-m", "1", "-timeout", "40s", "-timeout_error", "-nostdin"])
        .args(["-trace_msg"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sipp");
    std::thread::sleep(Duration::from_millis(300));

    let config = format!(
        "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{port}\"\nusername = \"acct\"\npassword = \"secret\"\nregister = true\nregister_expires = 600\nkeepalive_secs = 0\n"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (mut gw, _, log) = gateway_with(tmp.path(), &config);
    let start = Instant::now();
    loop {
        let t = trunks_json(&gw).await;
        let reg = &t["trunks"][0]["registration"];
        if reg["state"] == "registered" {
            assert_eq!(reg["expires"], 10, "the registrar's grant is honoured: {t}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = trunks_json(&gw).await;
    assert_eq!(t["trunks"][0]["name"], "carrier");
    assert!(
        !t.to_string().contains("secret"),
        "no password in the API: {t}"
    );
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("switchboard_trunk_registered{trunk=\"carrier\"} 1"),
        "{metrics}"
    );
    // The refresh is due 5 s into the 10 s grant; shut down after it, before the next one.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    assert_eq!(unsafe { libc::kill(gw.pid() as i32, libc::SIGTERM) }, 0);
    assert!(
        gw.wait_exit(Duration::from_secs(20)).is_some(),
        "the gateway exits"
    );
    let out = tokio::task::spawn_blocking(move || registrar.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let trace: String = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().to_string_lossy().ends_with("_messages.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the registrar saw REGISTER, authenticated REGISTER, refresh, un-REGISTER: {}\n{}\n{trace}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("registered with trunk"), "logged");
    assert!(text.contains("unregistered from trunk"), "logged");
    assert!(!text.contains("secret"), "no password in the log");
}

/// RTP packets the phone received in the last `window`.
fn heard_within(phone: &Phone, window: Duration) -> usize {
    phone
        .heard
        .lock()
        .unwrap()
        .packets
        .iter()
        .filter(|(t, ..)| t.elapsed() < window)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinvite_or_update_holds_resumes_and_moves_the_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/long-prompt.json");
    let gw = Gateway::start_in(&tmp.path().join("data"), Some(&flow), &[]);
    let mut phone = Phone::dial(gw.sip, "+15550004444", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        heard_within(&phone, Duration::from_millis(900)) >= 30,
        "the prompt plays"
    );

    // Hold: sendonly from the phone, answered recvonly; the gateway stops sending.
    let ok = phone.reoffer("INVITE", "sendonly", None).await;
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    assert!(ok.contains("a=recvonly"), "{ok}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let held = heard_within(&phone, Duration::from_millis(900));
    assert!(held <= 2, "{held} packets in 0.9 s on hold");

    // Resume: packets flow again, within a frame or two.
    let ok = phone.reoffer("INVITE", "sendrecv", None).await;
    assert!(ok.contains("a=sendrecv"), "{ok}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let resumed = heard_within(&phone, Duration::from_millis(900));
    assert!(resumed >= 30, "{resumed} packets in 0.9 s after resuming");

    // UPDATE with inactive holds too.
    let ok = phone.reoffer("UPDATE", "inactive", None).await;
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    assert!(ok.contains("a=inactive"), "{ok}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(heard_within(&phone, Duration::from_millis(900)) <= 2);
    let ok = phone.reoffer("UPDATE", "sendrecv", None).await;
    assert_eq!(status_of(&ok), Some(200));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(heard_within(&phone, Duration::from_millis(900)) >= 30);

    // A new address: the media moves to it.
    let other = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ok = phone
        .reoffer("INVITE", "sendrecv", Some(other.local_addr().unwrap()))
        .await;
    assert_eq!(status_of(&ok), Some(200));
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_secs(2), other.recv_from(&mut buf)).await;
    assert!(got.is_ok(), "RTP arrives at the new address");
    phone.hangup().await;
}

/// An even, free UDP port below 60000 (SIPp's media port; RTCP would take the next one).
fn even_port() -> u16 {
    loop {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = s.local_addr().unwrap().port();
        if p % 2 == 0 && p < 60000 {
            return p;
        }
    }
}

/// Stop a capture (after the last packets landed) and take what it printed.
async fn stop_capture(capture: std::process::Child) -> Output {
    tokio::time::sleep(Duration::from_millis(300)).await;
    unsafe { libc::kill(capture.id() as i32, libc::SIGINT) };
    capture.wait_with_output().unwrap()
}

/// One SIPp caller running `scenario_file` against `target`, its media on `media_port`.
async fn sipp_caller(target: std::net::SocketAddr, scenario_file: &str, media_port: u16) -> Output {
    let scenario_path = scenario(scenario_file);
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        Command::new("sipp")
            .current_dir(dir.path())
            .args(["-sf", &scenario_path, "-s", "+15550100"])
            .arg(target.to_string())
            .args(["-i", "127.0.0.1", "-p", "0", "-mp", &media_port.to_string()])
            .args(["-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin"])
            .output()
            .expect("run sipp")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sipp_caller_holds_and_resumes_and_the_capture_shows_the_gap() {
    if !peer_available("sipp") || !peer_available("tshark") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/long-prompt.json");
    let gw = Gateway::start_in(&tmp.path().join("data"), Some(&flow), &[]);
    // SIPp's media port; the capture takes what the gateway sends to it.
    let media_port = even_port();
    let capture = capture_to(media_port, &["frame.time_epoch"], 30);
    let out = sipp_caller(gw.sip, "hold-and-resume.xml", media_port).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let captured = stop_capture(capture).await;
    let times: Vec<f64> = String::from_utf8_lossy(&captured.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(times.len() > 100, "{} RTP packets captured", times.len());
    // The longest silence is the hold (2 s), with the prompt before and after it.
    let (gap_at, gap) = times
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1] - w[0]))
        .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
    assert!((1.5..3.0).contains(&gap), "hold gap {gap:.2} s");
    let before = gap_at + 1;
    let after = times.len() - before;
    assert!(before >= 60, "{before} packets before the hold");
    assert!(after >= 60, "{after} packets after resuming");
    // Otherwise a steady 20 ms stream: no other gap over 100 ms.
    let other = times
        .windows(2)
        .enumerate()
        .filter(|(i, w)| *i != gap_at && w[1] - w[0] > 0.1)
        .count();
    assert_eq!(other, 0, "gaps outside the hold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sipp_caller_switches_codec_by_reinvite_and_the_prompt_goes_on_in_the_new_one() {
    if !peer_available("sipp") || !peer_available("tshark") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/long-prompt.json");
    let gw = Gateway::start_in(&tmp.path().join("data"), Some(&flow), &[]);
    // What the gateway sends to SIPp's media port: each packet's arrival time and bytes.
    let media_port = even_port();
    let capture = capture_to(media_port, &["frame.time_epoch", "udp.payload"], 30);
    let out = sipp_caller(gw.sip, "codec-switch.xml", media_port).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "SIPp: the re-INVITE offering only PCMA was answered with PCMA\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let captured = stop_capture(capture).await;
    let packets: Vec<(f64, Vec<u8>)> = String::from_utf8_lossy(&captured.stdout)
        .lines()
        .filter_map(|l| {
            let (t, p) = l.split_once('\t')?;
            let bytes: Vec<u8> = (0..p.len() / 2)
                .filter_map(|i| u8::from_str_radix(p.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            Some((t.parse().ok()?, bytes))
        })
        .filter(|(_, b)| b.len() > 12)
        .collect();
    // PCMU first, then PCMA to the end, never back: one switch.
    let pts: Vec<u8> = packets.iter().map(|(_, p)| p[1] & 0x7F).collect();
    let switch = pts
        .iter()
        .position(|&pt| pt == 8)
        .expect("PCMA packets after the switch");
    assert!(switch >= 60, "{switch} PCMU packets before the switch");
    assert!(pts[..switch].iter().all(|&pt| pt == 0), "{pts:?}");
    assert!(pts[switch..].iter().all(|&pt| pt == 8), "{pts:?}");
    assert!(
        pts.len() - switch >= 100,
        "{} PCMA packets",
        pts.len() - switch
    );
    // The prompt went on through the switch: the A-law packets decode to speech, not silence,
    // and the stream kept its 20 ms pace (no gap over 100 ms).
    let loud = packets[switch..]
        .iter()
        .filter(|(_, p)| {
            let pcm: Vec<i16> = p[12..]
                .iter()
                .map(|&b| switchboard::media::codec::alaw_to_linear(b))
                .collect();
            rms(&pcm) > 300.0
        })
        .count();
    assert!(loud >= 50, "{loud} loud PCMA packets");
    let gaps = packets.windows(2).filter(|w| w[1].0 - w[0].0 > 0.1).count();
    assert_eq!(gaps, 0, "the stream paused at the switch");
    // Its timestamps and sequence numbers run on across the switch (one stream).
    let seq = |p: &[u8]| u16::from_be_bytes([p[2], p[3]]);
    assert_eq!(
        seq(&packets[switch].1),
        seq(&packets[switch - 1].1).wrapping_add(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nat_the_public_address_is_what_contact_and_sdp_name() {
    let tmp = tempfile::tempdir().unwrap();
    // 127.0.0.9 stands for the NAT's public address (loopback: nothing leaves the machine).
    let config = "[sip]\npublic_addr = \"127.0.0.9:5099\"\n[media]\npublic_ip = \"127.0.0.9\"\n";
    let (gw, _, _) = gateway_with(tmp.path(), config);
    let mut phone = Phone::dial(gw.sip, "+15550003333", Offer::Rfc4733).await;
    let contact = header(&phone.ok, "Contact").unwrap_or_default().to_string();
    assert!(contact.contains("@127.0.0.9:5099"), "{contact}");
    assert!(phone.ok.contains("c=IN IP4 127.0.0.9\r\n"), "{}", phone.ok);
    phone.hangup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_keepalives_show_whether_a_trunk_answers() {
    // A carrier's SIP stack on loopback that answers OPTIONS 200, and one that is silent.
    let carrier = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (up, down) = (carrier.local_addr().unwrap(), silent.local_addr().unwrap());
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = carrier.recv_from(&mut buf).await {
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            if req.starts_with("OPTIONS ") {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = carrier
                    .send_to(response_to(&req, 200, "OK").as_bytes(), from)
                    .await;
            }
        }
    });
    let config = format!(
        "[[trunks]]\nname = \"up\"\nuri = \"sip:{up}\"\nkeepalive_secs = 1\n\
         [[trunks]]\nname = \"down\"\nuri = \"sip:{down}\"\n"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (gw, _, log) = gateway_with(tmp.path(), &config);
    let start = Instant::now();
    loop {
        let t = trunks_json(&gw).await;
        let up = &t["trunks"][0];
        if up["reachable"] == true && answered.load(std::sync::atomic::Ordering::Relaxed) >= 2 {
            assert_eq!(up["last_status"], 200, "{t}");
            assert_eq!(up["keepalive_secs"], 1);
            // The silent one is not known to be down before 32 s of silence.
            assert_eq!(t["trunks"][1]["reachable"], serde_json::Value::Null, "{t}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The silent trunk was sent OPTIONS too (and retransmissions).
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_secs(2), silent.recv_from(&mut buf)).await;
    assert!(got.is_ok_and(|r| r.is_ok_and(|(n, _)| buf[..n].starts_with(b"OPTIONS "))));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("trunk answers OPTIONS keep-alives"), "logged");
}

/// One SIP message from a stream: the head and as much body as Content-Length says.
async fn read_message<S: tokio::io::AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> String {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let msg: Vec<u8> = buf.drain(..end + 4 + len).collect();
                return String::from_utf8_lossy(&msg).to_string();
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a message within 5 s")
            .unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_calls_over_tls_and_the_dialog_stays_on_tls() {
    use tokio::io::AsyncWriteExt;
    if !peer_available("openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(tmp.path());
    let config = tls_listener(&cert, &key);
    let (gw, flow, _) = gateway_with(tmp.path(), &config);
    let tls_addr = gw.sip_tls.expect("the ready line names the TLS listener");

    // A phone that trusts exactly this certificate.
    switchboard::web::plain_client();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cert).unwrap();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let c: rustls::pki_types::CertificateDer = c.unwrap();
        roots.add(c).unwrap();
    }
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let mut buf = Vec::new();

    let options = format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKo1\r\nFrom: <sip:phone@{me}>;tag=1\r\n\
         To: <sip:127.0.0.1>\r\nCall-ID: tls-options\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(options.as_bytes()).await.unwrap();
    let ok = read_message(&mut tls, &mut buf).await;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");

    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let invite = format!(
        "INVITE sips:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKi1\r\nFrom: <sips:+15550002222@{me}>;tag=2\r\n\
         To: <sips:ivr@127.0.0.1>\r\nCall-ID: tls-call\r\nCSeq: 1 INVITE\r\nContact: <sips:phone@{me}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    tls.write_all(invite.as_bytes()).await.unwrap();
    let answer = loop {
        let m = read_message(&mut tls, &mut buf).await;
        if !m.starts_with("SIP/2.0 1") {
            break m;
        }
    };
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    let contact = header(&answer, "Contact").unwrap_or_default().to_string();
    assert!(contact.contains(";transport=tls"), "{contact}");
    let to = header(&answer, "To").unwrap_or_default().to_string();
    let ack = format!(
        "ACK sips:switchboard@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKa1\r\nFrom: <sips:+15550002222@{me}>;tag=2\r\n\
         To: {to}\r\nCall-ID: tls-call\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(ack.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bye = format!(
        "BYE sips:switchboard@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKb1\r\nFrom: <sips:+15550002222@{me}>;tag=2\r\n\
         To: {to}\r\nCall-ID: tls-call\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(bye.as_bytes()).await.unwrap();
    let ok = read_message(&mut tls, &mut buf).await;
    assert!(
        ok.starts_with("SIP/2.0 200") && ok.contains("CSeq: 2 BYE"),
        "{ok}"
    );
    one_call_stored(&gw, &flow).await;
    // Plain TCP on the TLS port is not SIP: the handshake fails and nothing is answered.
    let mut raw = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    raw.write_all(options.as_bytes()).await.unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut raw, &mut b),
    )
    .await
    .map(|r| r.unwrap_or(0))
    .unwrap_or(0);
    assert!(!b[..n].starts_with(b"SIP/2.0"), "no SIP answer without TLS");
}

/// A self-signed leaf certificate for 127.0.0.1 (and its key), made by openssl in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=switchboard-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A leaf, not a CA: the phone trusts this one certificate as its own anchor.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// A UDP port whose TCP twin and next TCP port are free too (baresip listens on all three).
fn free_port_triple() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if p < 60000
            && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_registers_with_digest_over_tls_calls_a_flow_with_srtp_and_hears_the_prompt() {
    if !peer_available("baresip") || !peer_available("openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(tmp.path());
    let config = format!("{USERS}{}", tls_listener(&cert, &key));
    let (gw, flow, log) = gateway_with(tmp.path(), &config);
    let tls = gw.sip_tls.expect("TLS listener");

    // baresip as alice's desk phone: TLS to the gateway, the certificate checked against ours,
    // SRTP mandatory (RTP/SAVP with SDES keys, its `srtp` module, loaded before the accounts
    // that name it), silence as its microphone, what it hears written to a WAV by `sndfile`.
    let conf = tmp.path().join("baresip");
    let rec = tmp.path().join("heard");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&rec).unwrap();
    let mic = tmp.path().join("silence.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&mic, spec).unwrap();
    for _ in 0..8000 * 12 {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
    let port = free_port_triple();
    std::fs::write(
        conf.join("config"),
        format!(
            "sip_listen 127.0.0.1:{port}\nnet_interface 127.0.0.1\nsip_cafile {}\n\
             audio_player sndfile,{}\naudio_source aufile,{}\naudio_alert sndfile,{}\n\
             module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\n\
             module sndfile.so\nmodule srtp.so\nmodule menu.so\nmodule account.so\nsnd_path {}\n",
            cert.display(),
            rec.display(),
            mic.display(),
            rec.display(),
            rec.display()
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("accounts"),
        format!(
            "<sip:alice@{tls};transport=tls>;auth_pass=wonderland;regint=60;mediaenc=srtp-mand\n"
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let conf = conf.clone();
        move || {
            Command::new("baresip")
                .arg("-f")
                .arg(&conf)
                .args([
                    "-e",
                    &format!("d sip:+15550100@{tls};transport=tls"),
                    "-t",
                    "8",
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run baresip")
        }
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("{0/TLS/v4} 200 OK"),
        "registered over TLS: {said}"
    );
    assert!(said.contains("Call established"), "{said}");
    // What baresip decoded from the gateway: the flow's prompt, not silence.
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
    assert!(samples.len() > 8000 * 3, "{} samples", samples.len());
    assert!(rms(&samples) > 500.0, "heard rms {}", rms(&samples));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("user registered") && l.contains("transport=tls")),
        "the binding is a TLS one"
    );
    // The call was answered encrypted, and what baresip sent authenticated and decrypted.
    assert!(
        said.contains("SRTP is Enabled"),
        "baresip used SRTP: {said}"
    );
    let text = plain_log(&text);
    let answered = text
        .lines()
        .find(|l| l.contains(" answered "))
        .expect("an answered line");
    assert_eq!(
        log_field(answered, "srtp"),
        Some("AES_CM_128_HMAC_SHA1_80"),
        "{answered}"
    );
    let received: u64 = text
        .lines()
        .find(|l| l.contains("call finished"))
        .and_then(|l| log_field(l, "rtp_received")?.parse().ok())
        .unwrap_or(0);
    assert!(
        received > 100,
        "{received} SRTP packets from baresip taken:\n{text}"
    );
    // baresip 1.0 ends with one short RTCP packet outside SRTCP, refused; had keys or
    // ciphers disagreed, every packet would be.
    let metrics = metrics_text(&gw).await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_srtp_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(u64::MAX);
    assert!(refused <= 2, "{refused} SRTP packets refused");
    one_call_stored(&gw, &flow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_a_trunk_over_tls_and_keeps_it_alive_there() {
    if !peer_available("openssl") {
        return;
    }
    // Gateway B is the carrier: a registrar for acct/secret behind SIP over TLS.
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(tmp.path());
    let (b_dir, a_dir) = (tmp.path().join("carrier"), tmp.path().join("us"));
    std::fs::create_dir_all(&b_dir).unwrap();
    std::fs::create_dir_all(&a_dir).unwrap();
    let b_config = format!(
        "[[users]]\nusername = \"acct\"\npassword = \"secret\"\n{}",
        tls_listener(&cert, &key)
    );
    let (carrier, _, carrier_log) = gateway_with(&b_dir, &b_config);
    let tls = carrier.sip_tls.unwrap();
    // Gateway A registers with it over TLS, trusting its certificate, and pings it.
    let a_config = format!(
        "[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{};transport=tls\"\nusername = \"acct\"\npassword = \"secret\"\n\
         register = true\ntls_ca = \"{}\"\nkeepalive_secs = 1\n",
        tls.port(),
        cert.display()
    );
    let (us, _, _) = gateway_with(&a_dir, &a_config);
    let start = Instant::now();
    loop {
        let t = trunks_json(&us).await;
        let trunk = &t["trunks"][0];
        if trunk["registration"]["state"] == "registered" && trunk["reachable"] == true {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&carrier_log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("user registered")
            && l.contains("acct")
            && l.contains("transport=tls")),
        "the carrier holds our binding, a TLS one (our Contact says ;transport=tls)"
    );
    // A trunk whose certificate we cannot verify is not registered with (system roots only).
    let bad_dir = tmp.path().join("untrusting");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let bad_config = a_config.replace(&format!("tls_ca = \"{}\"\n", cert.display()), "");
    let (untrusting, _, untrusting_log) = gateway_with(&bad_dir, &bad_config);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = trunks_json(&untrusting).await;
    assert_ne!(t["trunks"][0]["registration"]["state"], "registered", "{t}");
    let text = std::fs::read_to_string(&untrusting_log).unwrap();
    assert!(
        text.contains("cannot connect to trunk"),
        "the TLS failure is logged"
    );
}

/// `[sip]` with a TLS listener on a port of its own and this certificate.
fn tls_listener(cert: &Path, key: &Path) -> String {
    format!(
        "[sip]\ntls_bind = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// Wait until the flow has exactly one execution, ended, with its steps.
async fn one_call_stored(gw: &Gateway, flow: &Path) {
    let start = Instant::now();
    loop {
        let ex = executions(gw, flow).await;
        if ex.len() == 1 && ex[0].0.status == "ended" && !ex[0].1.is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{ex:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway's `/metrics` text.
async fn metrics_text(gw: &Gateway) -> String {
    switchboard::web::plain_client()
        .get(format!("{}/metrics", gw.base_url()))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
