//! The voice IVR over loopback with real RTP: DTMF by RFC 4733, SIP INFO and in-band tones
//! each reach the right branch; voicemail recordings end on the finish key and on silence;
//! barge-in cuts the prompt; DTMF digits are sent back as RFC 4733 events.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;
use switchboard::media::Clip;

const IVR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/flows/ivr-voicemail.json"
);
const BARGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flows/barge-in.json");

/// Real speech to speak into the phone: the demo prompt, pre-rendered in the repository.
fn speech() -> Vec<i16> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/voice-assets/tts");
    let f = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "wav"))
        .unwrap();
    Clip::from_wav(&std::fs::read(f.path()).unwrap())
        .unwrap()
        .pcm()
        .to_vec()
}

async fn route_taken(gw: &Gateway, call_id: &str) -> (String, serde_json::Value) {
    for _ in 0..100 {
        for (e, steps) in executions(gw, Path::new(IVR)).await {
            if e.context["trigger"]["call"]["SipCallId"] == call_id && e.status == "ended" {
                let route = steps
                    .iter()
                    .find(|s| s.name == "route")
                    .map(|s| s.transitioned_to.clone())
                    .unwrap_or_default();
                return (route, e.context);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("execution for {call_id} did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_by_rfc4733_info_and_inband_reach_their_branches() {
    if !peer_available("espeak-ng") {
        return;
    }
    let gw = Gateway::start(Some(Path::new(IVR)));

    let mut a = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.send_rfc4733('1').await;
    a.wait_bye(Duration::from_secs(15)).await;
    let (route, ctx) = route_taken(&gw, &a.call_id()).await;
    assert_eq!(route, "one");
    assert_eq!(ctx["widgets"]["menu"]["Digits"], "1");

    let mut b = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send_info('2').await;
    b.wait_bye(Duration::from_secs(15)).await;
    assert_eq!(route_taken(&gw, &b.call_id()).await.0, "two");
    // Branch "two" sends the digits 12# back to the caller as RFC 4733 events.
    assert_eq!(b.heard.lock().unwrap().events(101), "12#");

    let mut c = Phone::dial(gw.sip, "+15550100000", Offer::PcmuOnly).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send_inband('9').await;
    c.wait_bye(Duration::from_secs(15)).await;
    let (route, ctx) = route_taken(&gw, &c.call_id()).await;
    assert_eq!(
        route, "invalid",
        "in-band 9 is detected and matches neither 1 nor 2"
    );
    assert_eq!(ctx["widgets"]["menu"]["Digits"], "9");
}

async fn leave_message(
    gw: &Gateway,
    speak: &[i16],
    then_pound: bool,
) -> (serde_json::Value, Instant, Instant) {
    let mut p = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    // "Press 1." (~1 s) + 1 s gather timeout + beep: recording runs from about 2.5 s.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    p.send_audio(speak).await;
    let spoke_until = Instant::now();
    if then_pound {
        p.send_rfc4733('#').await;
    }
    let bye = p.wait_bye(Duration::from_secs(20)).await;
    let (_, ctx) = route_taken(gw, &p.call_id()).await;
    (ctx, spoke_until, bye)
}

fn wav_of(gw: &Gateway, ctx: &serde_json::Value) -> (f64, Vec<i16>) {
    let sid = ctx["widgets"]["voicemail"]["RecordingSid"]
        .as_str()
        .expect("a recording")
        .to_string();
    let r =
        hound::WavReader::open(gw.data_dir.join("recordings").join(format!("{sid}.wav"))).unwrap();
    let secs = r.duration() as f64 / r.spec().sample_rate as f64;
    (secs, r.into_samples::<i16>().map(Result::unwrap).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemail_ends_on_the_finish_key_with_the_right_audio() {
    if !peer_available("espeak-ng") {
        return;
    }
    let gw = Gateway::start(Some(Path::new(IVR)));
    let speech = speech();
    let spoken = speech.len() as f64 / 8000.0;
    let (ctx, spoke_until, bye) = leave_message(&gw, &speech, true).await;
    let (secs, pcm) = wav_of(&gw, &ctx);
    assert!(
        (secs - spoken).abs() < 0.8,
        "recorded {secs:.2} s of {spoken:.2} s spoken"
    );
    assert!(rms(&pcm) > 500.0, "recording is not silent");
    assert_eq!(
        ctx["widgets"]["voicemail"]["RecordingDuration"],
        format!("{}", secs.round() as u32)
    );
    // '#' ended it at once: "Goodbye." and the BYE follow within a couple of seconds, far
    // sooner than the 4 s silence timeout would have.
    assert!(
        bye - spoke_until < Duration::from_millis(3500),
        "{:?}",
        bye - spoke_until
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemail_ends_after_the_silence_timeout() {
    if !peer_available("espeak-ng") {
        return;
    }
    let gw = Gateway::start(Some(Path::new(IVR)));
    let speech = speech();
    let part = &speech[..8000 * 3];
    let (ctx, spoke_until, bye) = leave_message(&gw, part, false).await;
    let (secs, pcm) = wav_of(&gw, &ctx);
    assert!((2.0..4.0).contains(&secs), "silence trimmed: {secs:.2} s");
    assert!(rms(&pcm) > 500.0);
    let waited = bye - spoke_until;
    assert!(
        waited > Duration::from_secs(4) && waited < Duration::from_secs(8),
        "timeout is 4 s of silence: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_stops_the_prompt() {
    let gw = Gateway::start(Some(Path::new(BARGE)));
    let mut p = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pressed = Instant::now();
    p.send_rfc4733('5').await;
    p.wait_bye(Duration::from_secs(10)).await;
    {
        let heard = p.heard.lock().unwrap();
        let last = heard.last_loud(300.0).expect("heard the prompt");
        assert!(
            last < pressed + Duration::from_millis(400),
            "prompt kept playing {:?} after the key",
            last - pressed
        );
        let before: Vec<i16> = heard
            .audio_frames()
            .into_iter()
            .filter(|(t, _)| *t < pressed)
            .flat_map(|(_, f)| f)
            .collect();
        assert!(
            rms(&before) > 500.0,
            "the prompt was playing before the key"
        );
    }
    let execs = executions(&gw, Path::new(BARGE)).await;
    assert_eq!(
        execs[0]
            .1
            .iter()
            .find(|s| s.name == "menu")
            .map(|s| s.event.as_str()),
        Some("keypress")
    );
    assert_eq!(execs[0].0.context["widgets"]["menu"]["Digits"], "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_hanging_up_mid_prompt_ends_the_execution() {
    let gw = Gateway::start(Some(Path::new(BARGE)));
    let mut p = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    p.hangup().await;
    for _ in 0..50 {
        let execs = executions(&gw, Path::new(BARGE)).await;
        if execs.len() == 1 && execs[0].0.status == "ended" {
            let state = &execs[0].0.state;
            assert_eq!(state["end_reason"]["kind"], "hangup", "{state}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("execution did not end after the caller hung up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tts_engine_is_a_step_error_not_a_silent_call() {
    let flow = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/flows/say-dynamic.json"
    ));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sb.toml");
    std::fs::write(&cfg, "[tts]\ncommand = \"/nonexistent/espeak-ng\"\n").unwrap();
    let gw = Gateway::start_in(dir.path(), Some(flow), &["--config", cfg.to_str().unwrap()]);
    let p = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    p.wait_bye(Duration::from_secs(5)).await;
    let execs = executions(&gw, flow).await;
    let (e, steps) = &execs[0];
    assert_eq!(e.status, "ended");
    let hello = steps
        .iter()
        .find(|s| s.name == "hello")
        .expect("the failing step is logged");
    let error = hello.error.as_deref().unwrap_or("");
    assert!(
        error.contains("not installed") && error.contains("espeak-ng"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn say_renders_new_text_with_espeak() {
    if !peer_available("espeak-ng") {
        return;
    }
    let flow = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/flows/say-dynamic.json"
    ));
    let gw = Gateway::start(Some(flow));
    let p = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    p.wait_bye(Duration::from_secs(15)).await;
    let heard = p.heard.lock().unwrap();
    let pcm: Vec<i16> = heard
        .audio_frames()
        .into_iter()
        .flat_map(|(_, f)| f)
        .collect();
    assert!(
        active_span(&pcm, 300.0) > Duration::from_secs(2),
        "heard {:?} of speech",
        active_span(&pcm, 300.0)
    );
    // The rendered prompt landed in the content-addressed cache.
    let cached = std::fs::read_dir(gw.data_dir.join("tts")).unwrap().count();
    assert_eq!(cached, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_answer_is_recognised_and_branches() {
    if !peer_available("espeak-ng") || !peer_available("pocketsphinx_continuous") {
        return;
    }
    let flow = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/flows/speech.json"
    ));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sb.toml");
    std::fs::write(&cfg, "[speech]\nengine = \"pocketsphinx\"\n").unwrap();
    let gw = Gateway::start_in(dir.path(), Some(flow), &["--config", cfg.to_str().unwrap()]);
    let tts = switchboard::media::tts::Tts::new(dir.path(), "espeak-ng", 150);
    let word = tts.say("operator", "woman", "en-US").await.unwrap();
    let mut p = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut audio = switchboard::media::tones::silence(300, 8000);
    audio.extend_from_slice(word.pcm());
    audio.extend(switchboard::media::tones::silence(1500, 8000));
    p.send_audio(&audio).await;
    p.wait_bye(Duration::from_secs(15)).await;
    let execs = executions(&gw, flow).await;
    let (e, steps) = &execs[0];
    assert_eq!(
        steps
            .iter()
            .find(|s| s.name == "ask")
            .map(|s| s.event.as_str()),
        Some("speech"),
        "{steps:?}"
    );
    assert_eq!(e.context["widgets"]["ask"]["SpeechResult"], "operator");
    assert_eq!(
        steps
            .iter()
            .find(|s| s.name == "route")
            .map(|s| s.transitioned_to.as_str()),
        Some("operator")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_call_records_both_directions_while_a_voicemail_records_the_caller() {
    if !peer_available("espeak-ng") {
        return;
    }
    let flow = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flows/record-call.json");
    let gw = Gateway::start(Some(Path::new(flow)));
    let speech = speech();
    let mut p = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    let answered = Instant::now();
    // The beep (0.4 s), a second of silence, then the caller speaks into the voicemail and
    // presses #.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.send_audio(&speech).await;
    p.send_rfc4733('#').await;
    p.wait_bye(Duration::from_secs(20)).await;
    let stopped_by = answered.elapsed().as_secs_f64();
    let mut steps = Vec::new();
    for _ in 0..50 {
        if let Some((e, s)) = executions(&gw, Path::new(flow)).await.into_iter().next() {
            if e.status == "ended" {
                steps = s;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.event.as_str()))
        .collect();
    assert_eq!(
        events,
        [
            ("Trigger", "incomingCall"),
            ("start_recording", "success"),
            ("voicemail", "recordingComplete"),
            ("stop_recording", "success"),
            ("goodbye", "audioComplete"),
        ]
    );
    // Two recordings: the voicemail (the caller only) and the call's (the beep and the caller,
    // mixed), saved when record-call stopped it, before "Goodbye".
    let dir = gw.data_dir.join("recordings");
    let mut by_source = std::collections::HashMap::new();
    let mut saved = Vec::new();
    for _ in 0..50 {
        saved = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        if saved.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for meta in &saved {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(meta).unwrap()).unwrap();
        let pcm: Vec<i16> = hound::WavReader::open(meta.with_extension("wav"))
            .unwrap()
            .into_samples::<i16>()
            .map(Result::unwrap)
            .collect();
        by_source.insert(v["source"].as_str().unwrap().to_string(), pcm);
    }
    let call = by_source
        .remove("StartCallRecordingAPI")
        .expect("the call recording");
    let voicemail = by_source.remove("RecordVerb").expect("the voicemail");
    let loud = |pcm: &[i16], from_s: f64, to_s: f64| {
        pcm[((from_s * 8000.0) as usize).min(pcm.len())..((to_s * 8000.0) as usize).min(pcm.len())]
            .chunks(800)
            .filter(|w| rms(w) > 300.0)
            .count()
    };
    // The call recording starts at the answer: the beep we sent first, then the caller.
    assert!(
        loud(&call, 0.0, 0.4) >= 3,
        "the beep is in the call recording"
    );
    let spoken = speech.len() as f64 / 8000.0;
    let voicemail_secs = voicemail.len() as f64 / 8000.0;
    assert!(
        (voicemail_secs - spoken).abs() < 0.8,
        "the voicemail is the caller's speech only: {voicemail_secs:.1} s of {spoken:.1} s"
    );
    assert!(
        loud(&call, 1.5, 1.5 + spoken) > (spoken * 4.0) as usize,
        "the caller is in the call recording"
    );
    let call_secs = call.len() as f64 / 8000.0;
    assert!(
        call_secs > spoken + 0.5 && call_secs < stopped_by - 0.5,
        "recorded {call_secs:.1} s: stopped before the goodbye (call lasted {stopped_by:.1} s)"
    );
    assert!(rms(&voicemail) > 500.0, "the voicemail has the caller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voicemail_is_transcribed_and_both_callbacks_arrive_signed() {
    if !peer_available("espeak-ng") || !peer_available("pocketsphinx_continuous") {
        return;
    }
    let (base, mut rx) = callback_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("voicemail-transcribed.json");
    std::fs::write(
        &flow,
        serde_json::json!({
            "states": [
                {"name": "Trigger", "type": "trigger", "properties": {},
                 "transitions": [{"event": "incomingMessage"}, {"event": "incomingCall", "next": "voicemail"}, {"event": "incomingRequest"}]},
                {"name": "voicemail", "type": "record-voicemail",
                 "properties": {"timeout": 2, "finish_on_key": "#", "max_length": 30, "play_beep": "false",
                                "trim": "do-not-trim", "transcribe": true,
                                "transcription_callback_url": format!("{base}/transcription"),
                                "recording_status_callback_url": format!("{base}/recording")},
                 "transitions": [{"event": "recordingComplete"}, {"event": "noAudio"}, {"event": "hangup"}]}
            ],
            "initial_state": "Trigger",
            "flags": {"allow_concurrent_calls": true}
        })
        .to_string(),
    )
    .unwrap();
    let cfg = dir.path().join("sb.toml");
    std::fs::write(&cfg, "[speech]\nengine = \"pocketsphinx\"\n").unwrap();
    let gw = Gateway::start_in(
        dir.path(),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let tts = switchboard::media::tts::Tts::new(dir.path(), "espeak-ng", 150);
    let words = tts
        .say("Please call me back about the order.", "woman", "en-US")
        .await
        .unwrap();
    let mut p = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.send_audio(words.pcm()).await;
    p.send_rfc4733('#').await;
    let bye = p.wait_bye(Duration::from_secs(15)).await;
    let mut got = std::collections::HashMap::new();
    while got.len() < 2 {
        let posted = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("both callbacks")
            .unwrap();
        let url = format!("{base}{}", posted.path);
        assert!(
            switchboard::web::signature::valid(AUTH_TOKEN, &url, &posted.form, &posted.signature),
            "{} callback signed",
            posted.path
        );
        let name = posted.path.trim_start_matches('/').to_string();
        got.insert(name, (posted, std::time::Instant::now()));
    }
    let field = |name: &str, k: &str| got[name].0.get(k);
    assert_eq!(field("recording", "RecordingStatus"), "completed");
    assert!(field("recording", "RecordingSid").starts_with("RE"));
    assert_eq!(field("transcription", "TranscriptionStatus"), "completed");
    assert_eq!(
        field("transcription", "RecordingSid"),
        field("recording", "RecordingSid")
    );
    assert!(field("transcription", "TranscriptionSid").starts_with("TR"));
    let text = field("transcription", "TranscriptionText");
    assert!(!text.trim().is_empty(), "recognised something: {text:?}");
    assert_eq!(field("transcription", "From"), "+15550100000");
    // The call did not wait for the transcription: it ended before that callback came.
    assert!(
        got["transcription"].1 > bye,
        "transcribed after the call ended"
    );
}
