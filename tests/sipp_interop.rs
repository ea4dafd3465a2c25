//! SIPp as the caller: 50 concurrent calls from one caller ID against the demo flow.

mod support;

use std::process::Command;

use support::*;

#[test]
fn sipp_fifty_concurrent_calls_from_one_caller_id() {
    if !peer_available("sipp") {
        return;
    }
    let gw = Gateway::start(None);
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/sipp/listen-wait-for-bye.xml"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sipp")
        .current_dir(dir.path())
        .args(["-sf", scenario, "-s", "ivr", &gw.sip.to_string()])
        .args(["-i", "127.0.0.1", "-p", "0", "-mp", "0"])
        .args([
            "-m",
            "50",
            "-l",
            "50",
            "-r",
            "25",
            "-timeout",
            "90s",
            "-timeout_error",
            "-nostdin",
            "-trace_stat",
            "-stf",
            "stats.csv",
        ])
        .output()
        .expect("run sipp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stats = std::fs::read_to_string(dir.path().join("stats.csv")).unwrap_or_default();
    let last = stats.lines().last().unwrap_or("");
    let header: Vec<&str> = stats.lines().next().unwrap_or("").split(';').collect();
    let col = |name: &str| -> u64 {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| last.split(';').nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let (ok, failed) = (col("SuccessfulCall(C)"), col("FailedCall(C)"));
    assert_eq!(out.status.code(), Some(0), "sipp failed: {stdout}\n{stats}");
    assert_eq!((ok, failed), (50, 0), "stats: {last}");
}
