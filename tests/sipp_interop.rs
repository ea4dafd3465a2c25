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
        "/tests/sipp/listen-wait-for-bye.xml"
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
    // SIPp exits 0 only when every call succeeded; the periodic stats file can lag behind
    // on a loaded machine, so the gateway's own records are the second witness.
    assert_eq!(
        out.status.code(),
        Some(0),
        "sipp failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let demo = switchboard::routing::LoadedFlow::from_json("demo", switchboard::routing::DEMO_FLOW)
        .unwrap();
    let url = format!(
        "sqlite://{}?mode=rw",
        gw.data_dir.join("switchboard.db").display()
    );
    let execs = rt.block_on(async {
        let store = switchboard::store::Store::open(&url).await.unwrap();
        let mut out = Vec::new();
        for e in store.executions_for_flow(&demo.sid).await.unwrap() {
            let steps = store.steps(&e.sid).await.unwrap();
            out.push((e, steps));
        }
        out
    });
    assert_eq!(execs.len(), 50, "one execution per call");
    let call_ids: std::collections::HashSet<_> = execs
        .iter()
        .map(|(e, _)| e.context["trigger"]["call"]["SipCallId"].to_string())
        .collect();
    assert_eq!(call_ids.len(), 50, "each call its own execution");
    for (e, steps) in &execs {
        assert_eq!(e.contact, "+15550100000");
        assert_eq!(e.status, "ended");
        assert!(
            steps
                .iter()
                .any(|s| s.name == "say-play" && s.event == "audioComplete"),
            "{steps:?}"
        );
    }
}
