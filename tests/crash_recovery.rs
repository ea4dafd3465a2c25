//! kill -9 in the middle of a call that records a voicemail: at the next start nothing
//! half-written is left in `recordings/` (the audio that reached the disk is saved as a valid
//! recording of that call), the call's execution is ended with a reason instead of staying
//! active, and the data the gateway keeps is readable by its own user only.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use support::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_recording_leaves_a_valid_recording_and_an_ended_execution() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/voicemail-only.json");
    let mut gw = Gateway::start_in(&data, Some(&flow), &[]);
    let mut phone = Phone::dial(gw.sip, "+15550004444", Offer::Rfc4733).await;
    // Three seconds of a loud tone into the voicemail, then the process dies mid-recording.
    let tone: Vec<i16> = (0..24_000)
        .map(|i| ((i as f64 * 0.25).sin() * 9000.0) as i16)
        .collect();
    phone.send_audio(&tone).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.kill();
    let rec_dir = data.join("recordings");
    let left: Vec<String> = names(&rec_dir);
    assert!(
        left.iter()
            .any(|n| n.starts_with(".rec-") && n.ends_with(".wav.tmp")),
        "the killed process left its recording in progress: {left:?}"
    );
    let before = executions(&gw, &flow).await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].0.status, "active", "killed mid-call");
    let call_sid = before[0].0.context["trigger"]["call"]["CallSid"]
        .as_str()
        .unwrap()
        .to_string();
    drop(phone);

    let gw = Gateway::start_in(&data, Some(&flow), &[]);
    let after = names(&rec_dir);
    assert!(
        after.iter().all(|n| !n.ends_with(".tmp")),
        "no temporary file survives the restart: {after:?}"
    );
    let wav = after
        .iter()
        .find(|n| n.ends_with(".wav"))
        .unwrap_or_else(|| panic!("the interrupted audio is saved: {after:?}"));
    let path = rec_dir.join(wav);
    let reader = hound::WavReader::open(&path).expect("a valid WAV");
    let secs = reader.duration() as f64 / reader.spec().sample_rate as f64;
    assert!((1.5..=3.5).contains(&secs), "recovered {secs} s of 3 s");
    let samples: Vec<i16> = hound::WavReader::open(&path)
        .unwrap()
        .into_samples::<i16>()
        .map(Result::unwrap)
        .collect();
    assert!(rms(&samples) > 2000.0, "the tone, not silence");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.with_extension("json")).expect("sidecar"))
            .unwrap();
    assert_eq!(sidecar["call_sid"], call_sid.as_str());

    let ex = executions(&gw, &flow).await;
    assert_eq!(
        ex[0].0.status, "ended",
        "the dead call's execution is ended"
    );
    let reason = ex[0].0.state["end_reason"].as_str().unwrap_or("");
    assert!(reason.contains("gateway stopped"), "{reason:?}");
    assert!(ex[0].0.active_key.is_none());

    // Private by default: the data directory, the database and the recording.
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("switchboard.db")), 0o600);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&rec_dir), 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_rest_execution_keeps_its_steps_and_ends_it_with_a_reason() {
    // An HTTP server that takes a minute to answer: the execution is mid-step when killed.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", slow.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = slow.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(s);
            });
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/rest-slow-lookup.json");
    let flow_sid = switchboard::routing::LoadedFlow::from_file(&flow)
        .unwrap()
        .sid;
    let mut gw = Gateway::start_in(&data, Some(&flow), &[]);
    let http = switchboard::web::plain_client();
    let created = http
        .post(format!("{}/v2/Flows/{flow_sid}/Executions", gw.base_url()))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .form(&[
            ("To", "+15550009999"),
            ("From", "+15550100000"),
            ("Parameters", &format!("{{\"base\": \"{base}\"}}")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let start = std::time::Instant::now();
    while hits.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the lookup starts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.kill();

    let gw = Gateway::start_in(&data, Some(&flow), &[]);
    let ex = executions(&gw, &flow).await;
    assert_eq!(ex.len(), 1);
    let (e, steps) = &ex[0];
    assert_eq!(e.status, "ended");
    assert!(
        e.state["end_reason"]
            .as_str()
            .unwrap_or("")
            .contains("gateway stopped"),
        "{:?}",
        e.state
    );
    // What was decided before the kill is kept: the steps up to the lookup, and the variable.
    let names: Vec<&str> = steps.iter().map(|s| s.transitioned_to.as_str()).collect();
    assert_eq!(names, ["note", "lookup"], "{names:?}");
    assert_eq!(e.context["flow"]["variables"]["started"], "yes");
}
