//! SIPp interop on the voice IVR: RFC 2833 digits from SIPp's pcaps reach a gather and the
//! split after it; speech from `g711a.pcap` (PCMA) is recorded by record-voicemail. Twenty
//! concurrent calls from one caller ID each get their own execution and their own recording.

mod support;

use std::process::Command;

use support::*;

const FLOW: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/flows/ivr-voicemail.json"
);

fn sipp(gw: &Gateway, scenario: &str, calls: u32) {
    let scenario = format!("{}/tests/sipp/{scenario}", env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let n = calls.to_string();
    let out = Command::new("sipp")
        .current_dir(dir.path())
        .args(["-sf", &scenario, "-s", "ivr", &gw.sip.to_string()])
        .args(["-i", "127.0.0.1", "-p", "0", "-mp", "0"])
        .args([
            "-m",
            &n,
            "-l",
            &n,
            "-r",
            "20",
            "-timeout",
            "120s",
            "-timeout_error",
            "-nostdin",
        ])
        .output()
        .expect("run sipp");
    // SIPp exits 0 only when every call succeeded; the tests then check the gateway's records.
    assert_eq!(
        out.status.code(),
        Some(0),
        "sipp {scenario}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

async fn steps_by_execution(
    gw: &Gateway,
) -> Vec<(
    switchboard::store::ExecutionRecord,
    Vec<switchboard::store::StepRecord>,
)> {
    let store = switchboard::store::Store::open(&format!(
        "sqlite://{}?mode=rw",
        gw.data_dir.join("switchboard.db").display()
    ))
    .await
    .unwrap();
    let flow = switchboard::routing::LoadedFlow::from_file(std::path::Path::new(FLOW)).unwrap();
    let mut out = Vec::new();
    for e in store.executions_for_flow(&flow.sid).await.unwrap() {
        let steps = store.steps(&e.sid).await.unwrap();
        out.push((e, steps));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_digits_reach_gather_and_split() {
    if !peer_available("sipp") || !peer_available("espeak-ng") {
        return;
    }
    let gw = Gateway::start(Some(std::path::Path::new(FLOW)));
    sipp(&gw, "press-1-wait-for-bye.xml", 20);
    let execs = steps_by_execution(&gw).await;
    assert_eq!(execs.len(), 20);
    for (e, steps) in &execs {
        assert_eq!(e.contact, "+15550100000");
        let menu = steps
            .iter()
            .find(|s| s.name == "menu")
            .expect("gather step");
        assert_eq!(menu.event, "keypress", "{steps:?}");
        let route = steps
            .iter()
            .find(|s| s.name == "route")
            .expect("split step");
        assert_eq!(route.transitioned_to, "one");
        assert_eq!(e.context["widgets"]["menu"]["Digits"], "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_callers_each_leave_their_own_voicemail() {
    if !peer_available("sipp") || !peer_available("espeak-ng") {
        return;
    }
    let gw = Gateway::start(Some(std::path::Path::new(FLOW)));
    sipp(&gw, "leave-message.xml", 20);
    let execs = steps_by_execution(&gw).await;
    assert_eq!(execs.len(), 20);
    let mut sids = std::collections::HashSet::new();
    for (e, steps) in &execs {
        let vm = steps
            .iter()
            .find(|s| s.name == "voicemail")
            .expect("record step");
        assert_eq!(vm.event, "recordingComplete", "{steps:?}");
        let sid = e.context["widgets"]["voicemail"]["RecordingSid"]
            .as_str()
            .unwrap()
            .to_string();
        let url = e.context["widgets"]["voicemail"]["RecordingUrl"]
            .as_str()
            .unwrap();
        assert!(url.ends_with(&sid));
        let wav = gw.data_dir.join("recordings").join(format!("{sid}.wav"));
        let reader =
            hound::WavReader::open(&wav).unwrap_or_else(|err| panic!("{}: {err}", wav.display()));
        let secs = reader.duration() as f64 / reader.spec().sample_rate as f64;
        let pcm: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();
        assert!(
            (5.0..9.0).contains(&secs),
            "{sid}: {secs:.2} s of speech recorded (the pcap has ~7 s)"
        );
        assert!(rms(&pcm) > 300.0, "{sid} is not silent");
        sids.insert(sid);
    }
    assert_eq!(sids.len(), 20, "every call has its own recording");
}
