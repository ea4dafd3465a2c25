//! `switchboard call` against the real gateway over loopback: one call with DTMF and a
//! recording, a small load run, and calls that fail with a clear message.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::Gateway;

const FLOW: &str = "tests/flows/caller-ivr.json";

fn call(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("call")
        .args(args)
        .output()
        .expect("run switchboard call")
}

fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {stdout}"));
    v["summary"].clone()
}

/// Seconds of 20 ms frames louder than `threshold` RMS in an 8 kHz mono PCM16 WAV.
fn loud_seconds(path: &Path, threshold: f64) -> f64 {
    let mut r = hound::WavReader::open(path).expect("a WAV file");
    let spec = r.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (8000, 1, 16)
    );
    let pcm: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let loud = pcm
        .chunks(160)
        .filter(|c| support::rms(c) > threshold)
        .count();
    loud as f64 * 0.02
}

#[test]
fn one_call_sends_dtmf_and_records_both_prompts() {
    let gw = Gateway::start(Some(Path::new(FLOW)));
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("heard.wav");
    let target = format!("sip:ivr@{}", gw.sip);
    let out = call(&[
        &target,
        "--dtmf",
        "1",
        "--dtmf-after",
        "1500ms",
        "--record",
        wav.to_str().unwrap(),
        "--max-duration",
        "30s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let s = summary(&out);
    assert_eq!(s["completed"], 1, "{s}");
    assert_eq!(s["hung_up_by_remote"], 1, "the flow ends the call: {s}");
    assert_eq!(s["dtmf_to_prompt_ms"]["count"], 1, "{s}");
    assert!(
        s["dtmf_to_prompt_ms"]["max"].as_f64().unwrap() < 1000.0,
        "{s}"
    );
    // The 1 s menu tone, then (only because the digit arrived) the 0.6 s tone.
    let loud = loud_seconds(&wav, 1000.0);
    assert!(
        (1.4..=1.8).contains(&loud),
        "heard {loud} s of tones: {stderr}"
    );
    assert!(stderr.contains("answered in"), "{stderr}");
}

#[test]
fn an_srtp_call_hears_both_prompts_and_its_digit_is_heard() {
    // RTP/SAVP with SDES keys: the prompts, and the digit's RFC 4733 events, all go encrypted;
    // the second prompt plays only if the gateway decrypted the digit.
    let gw = Gateway::start(Some(Path::new(FLOW)));
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("heard.wav");
    let target = format!("sip:ivr@{}", gw.sip);
    let out = call(&[
        &target,
        "--srtp",
        "required",
        "--dtmf",
        "1",
        "--dtmf-after",
        "1500ms",
        "--record",
        wav.to_str().unwrap(),
        "--max-duration",
        "30s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(
        stderr.contains("SRTP AES_CM_128_HMAC_SHA1_80"),
        "answered encrypted: {stderr}"
    );
    assert_eq!(summary(&out)["completed"], 1);
    let loud = loud_seconds(&wav, 1000.0);
    assert!(
        (1.4..=1.8).contains(&loud),
        "heard {loud} s of tones: {stderr}"
    );
    // A trunk-less gateway with `[sip] srtp = "off"` refuses the same offer, saying why.
    let cfg = dir.path().join("off.toml");
    std::fs::write(&cfg, "[sip]\nsrtp = \"off\"\n").unwrap();
    let off = Gateway::start_in(
        &dir.path().join("off"),
        Some(Path::new(FLOW)),
        &["--config", cfg.to_str().unwrap()],
    );
    let out = call(&[&format!("sip:ivr@{}", off.sip), "--srtp", "required"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("488"), "{stderr}");
}

#[test]
fn without_the_digit_the_flow_never_plays_its_second_prompt() {
    let gw = Gateway::start(Some(Path::new(FLOW)));
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("heard.wav");
    let target = format!("sip:ivr@{}", gw.sip);
    // Hang up ourselves before the gather times out.
    let out = call(&[
        &target,
        "--hangup-after",
        "2500ms",
        "--record",
        wav.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(
        (s["completed"].as_u64(), s["hung_up_by_remote"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(s["dtmf_to_prompt_ms"].is_null());
    let loud = loud_seconds(&wav, 1000.0);
    assert!((0.8..=1.2).contains(&loud), "heard {loud} s");
}

#[test]
fn small_load_run_completes_every_call_with_audio() {
    let gw = Gateway::start(Some(Path::new(FLOW)));
    let target = format!("sip:ivr@{}", gw.sip);
    let out = call(&[
        &target,
        "--calls",
        "20",
        "--concurrency",
        "10",
        "--rate",
        "10",
        "--dtmf",
        "1",
        "--dtmf-after",
        "1500ms",
        "--require-audio",
        "--from-range",
        "5",
        "--max-duration",
        "60s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let s = summary(&out);
    assert_eq!(s["attempted"], 20, "{s}");
    assert_eq!(s["completed"], 20, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["audio"]["with"], 20, "{s}");
    assert_eq!(s["audio"]["without"], 0, "{s}");
    assert_eq!(s["setup_ms"]["count"], 20, "{s}");
    assert_eq!(s["dtmf_to_prompt_ms"]["count"], 20, "{s}");
    let max = s["max_concurrent"].as_u64().unwrap();
    assert!((2..=10).contains(&max), "concurrency cap: {s}");
    // Each call ran its own execution (one per caller and Call-ID).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let execs = rt.block_on(support::executions(&gw, Path::new(FLOW)));
    assert_eq!(execs.len(), 20);
}

#[test]
fn a_refused_call_exits_non_zero_with_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("full.toml");
    std::fs::write(&cfg, "[sip]\nmax_calls = 0\n").unwrap();
    let gw = Gateway::start_in(
        dir.path(),
        Some(Path::new(FLOW)),
        &["--config", cfg.to_str().unwrap()],
    );
    let out = call(&[&format!("sip:ivr@{}", gw.sip)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("call failed: 503 Service Unavailable"),
        "{stderr}"
    );
    assert_eq!(summary(&out)["failures"]["503 Service Unavailable"], 1);
}

#[test]
fn a_target_that_never_answers_times_out() {
    // Bound, so the INVITEs are swallowed rather than refused by ICMP.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = format!("sip:ivr@{}", silent.local_addr().unwrap());
    let start = std::time::Instant::now();
    let out = call(&[&target, "--setup-timeout", "1200ms"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("timeout (no answer)"), "{stderr}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    // INVITE at 0, retransmitted at 0.5 s (Timer A), not again before 1.5 s.
    let mut buf = [0u8; 4096];
    silent.set_nonblocking(true).unwrap();
    let mut invites = 0;
    while let Ok((n, _)) = silent.recv_from(&mut buf) {
        assert!(buf[..n].starts_with(b"INVITE "));
        invites += 1;
    }
    assert_eq!(invites, 2);
}

#[test]
fn bad_options_are_reported() {
    let out = call(&["sip:ivr@127.0.0.1:5060", "--dtmf", "1x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad DTMF digit 'x'"));
    let out = call(&["sip:ivr@127.0.0.1:5060", "--hangup-after", "soon"]);
    assert!(!out.status.success());
    let out = call(&["http://example", "--calls", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad target"));
}
