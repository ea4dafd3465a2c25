//! Voice widgets: say-play, gather, record-voicemail, connect-call-to,
//! make-outgoing-call-v2, add-twiml-redirect.

use serde_json::{json, Map, Value};

use super::{PropError, Props, Resolution};
use crate::flow::context::trigger_call;
use crate::flow::effect::{
    Connect, DialResult, Effect, Gather, GatherInput, Outcome, OutgoingCall, Prompt, Record,
    RecordCall, Redirect,
};

/// Studio's longest voicemail (seconds).
const MAX_RECORD_SECS: u32 = 14_400;

fn prompt(props: &Props<'_>) -> Result<Prompt, PropError> {
    Ok(Prompt {
        say: props.text("say")?,
        play: props.text("play")?,
        digits: props.text("digits")?,
        voice: props.text("voice")?,
        language: props.text("language")?,
        loop_count: props.u32_or("loop", 1)?,
    })
}

pub(crate) fn effect(props: &Props<'_>) -> Result<Effect, PropError> {
    Ok(match props.state.kind.as_str() {
        "say-play" => Effect::SayPlay(prompt(props)?),
        "gather-input-on-call" => Effect::Gather(Gather {
            prompt: prompt(props)?,
            input: gather_input(props.text("input")?.as_deref()),
            timeout_secs: props.u32_or("timeout", 5)?,
            finish_on_key: props.text("finish_on_key")?.unwrap_or_else(|| "#".into()),
            number_of_digits: props
                .text("number_of_digits")?
                .and_then(|n| n.trim().parse().ok()),
            stop_gather: props.bool_or("stop_gather", true)?,
            gather_language: props.text("gather_language")?,
            speech_timeout: props.text("speech_timeout")?,
            speech_model: props.text("speech_model")?,
            hints: props.text("hints")?,
            profanity_filter: props.bool_or("profanity_filter", true)?,
        }),
        "record-voicemail" => Effect::Record(Record {
            timeout_secs: props.u32_or("timeout", 5)?,
            finish_on_key: props.text("finish_on_key")?.unwrap_or_else(|| "#".into()),
            max_length_secs: props.u32_or("max_length", 3600)?.min(MAX_RECORD_SECS),
            play_beep: props.bool_or("play_beep", true)?,
            trim_silence: props.text("trim")?.as_deref() != Some("do-not-trim"),
            transcribe: props.bool_or("transcribe", false)?,
            transcription_callback_url: props.text("transcription_callback_url")?,
            recording_status_callback_url: props.text("recording_status_callback_url")?,
        }),
        "connect-call-to" => Effect::Connect(Connect {
            noun: props.text("noun")?.unwrap_or_else(|| "number".into()),
            to: props.text_or_empty("to")?,
            caller_id: props.text("caller_id")?,
            timeout_secs: props.u32_or("timeout", 30)?,
            time_limit_secs: props.u32_or("time_limit", 14_400)?,
            record: props.bool_or("record", false)?,
            sip_endpoint: props.text("sip_endpoint")?,
            sip_username: props.text("sip_username")?,
            sip_password: props.text("sip_password")?,
            send_digits: None,
            hangup_on_star: false,
        }),
        "make-outgoing-call-v2" => Effect::OutgoingCall(OutgoingCall {
            from: props.text_or_empty("from")?,
            to: props.text_or_empty("to")?,
            timeout_secs: props.u32_or("timeout", 60)?,
            record: props.bool_or("record", false)?,
            record_dual: props.text("recording_channels")?.as_deref() == Some("dual"),
            record_trim: matches!(
                props.text("trim")?.as_deref(),
                Some("trim-silence" | "true")
            ),
            recording_status_callback: props
                .text("recording_status_callback")?
                .filter(|u| !u.trim().is_empty()),
            // Studio exports keep `machine_detection` when the toggle is off: only the toggle
            // (or a hand-written flow that names a mode without it) turns detection on.
            machine_detection: match props.bool_or("detect_answering_machine", true)? {
                true => props.text("machine_detection")?,
                false => None,
            },
            send_digits: props.text("send_digits")?,
            sip_auth_username: props.text("sip_auth_username")?,
            sip_auth_password: props.text("sip_auth_password")?,
        }),
        "record-call" => Effect::RecordCall(RecordCall {
            start: props.bool_or("record_call", true)?,
            dual: props.text("recording_channels")?.as_deref() == Some("dual"),
            trim: matches!(
                props.text("trim")?.as_deref(),
                Some("trim-silence" | "true")
            ),
            recording_status_callback: props
                .text("recording_status_callback")?
                .filter(|u| !u.trim().is_empty()),
        }),
        // add-twiml-redirect
        _ => Effect::Redirect(Redirect {
            url: props.text_or_empty("url")?,
            method: props
                .text("method")?
                .map(|m| m.to_ascii_uppercase())
                .unwrap_or_else(|| "POST".into()),
            timeout_secs: props.u32_or("timeout", 14_400)?,
        }),
    })
}

/// `input` is absent in exports (both kinds); accept "dtmf", "speech" or both.
fn gather_input(input: Option<&str>) -> GatherInput {
    match input.map(str::to_ascii_lowercase) {
        Some(i) if i.contains("dtmf") || i.contains("speech") => GatherInput {
            dtmf: i.contains("dtmf"),
            speech: i.contains("speech"),
        },
        _ => GatherInput {
            dtmf: true,
            speech: true,
        },
    }
}

/// Gather and record publish the call's own parameters alongside their results,
/// as Twilio's webhook does.
fn with_call(context: &Value, extra: Map<String, Value>) -> Map<String, Value> {
    let mut m = trigger_call(context);
    m.extend(extra);
    m
}

fn map(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

pub(crate) fn resolve(
    kind: &str,
    outcome: Outcome,
    context: &Value,
) -> Result<Resolution, Outcome> {
    Ok(match (kind, outcome) {
        ("say-play", Outcome::AudioComplete) => Resolution::event("audioComplete"),
        ("gather-input-on-call", Outcome::Digits { digits }) if digits.is_empty() => {
            Resolution::event("timeout")
        }
        ("gather-input-on-call", Outcome::Digits { digits }) => Resolution::published(
            "keypress",
            with_call(context, map(&[("Digits", json!(digits))])),
        ),
        ("gather-input-on-call", Outcome::Speech { result, confidence }) => {
            let conf = confidence.map(|c| c.to_string()).unwrap_or_default();
            Resolution::published(
                "speech",
                with_call(
                    context,
                    map(&[("SpeechResult", json!(result)), ("Confidence", json!(conf))]),
                ),
            )
        }
        ("gather-input-on-call", Outcome::Timeout) => Resolution::event("timeout"),
        (
            "record-voicemail",
            Outcome::Recording {
                url,
                sid,
                duration_secs,
                transcription,
                hung_up,
            },
        ) => {
            let mut m = map(&[
                ("RecordingUrl", json!(url)),
                ("RecordingSid", json!(sid)),
                ("RecordingDuration", json!(duration_secs.to_string())),
            ]);
            if let Some(t) = transcription {
                m.insert("TranscriptionText".into(), json!(t));
            }
            let event = if hung_up {
                "hangup"
            } else {
                "recordingComplete"
            };
            Resolution::published(event, with_call(context, m))
        }
        ("record-voicemail", Outcome::NoAudio | Outcome::Timeout) => Resolution::event("noAudio"),
        ("connect-call-to", Outcome::Dial(d)) => {
            let DialResult {
                status,
                sid,
                duration_secs,
                recording_url,
                error,
                caller_hung_up,
                ..
            } = *d;
            let mut m = map(&[
                ("DialCallStatus", json!(status)),
                ("DialCallSid", json!(sid.unwrap_or_default())),
                (
                    "DialCallDuration",
                    json!(duration_secs.map(|d| d.to_string()).unwrap_or_default()),
                ),
            ]);
            if let Some(r) = recording_url {
                m.insert("RecordingUrl".into(), json!(r));
            }
            let event = if caller_hung_up {
                "hangup"
            } else {
                "callCompleted"
            };
            Resolution {
                error,
                ..Resolution::published(event, m)
            }
        }
        ("make-outgoing-call-v2", Outcome::Dial(d)) => {
            let DialResult {
                status,
                sid,
                answered_by,
                error,
                ..
            } = *d;
            let event = match status.as_str() {
                "answered" | "in-progress" | "completed" => "answered",
                "busy" => "busy",
                "no-answer" => "noAnswer",
                _ => "failed",
            };
            let mut m = map(&[
                ("CallSid", json!(sid.unwrap_or_default())),
                ("CallStatus", json!(status)),
            ]);
            if let Some(a) = answered_by {
                m.insert("AnsweredBy".into(), json!(a));
            }
            Resolution {
                error,
                ..Resolution::published(event, m)
            }
        }
        ("make-outgoing-call-v2", Outcome::Timeout) => Resolution::event("noAnswer"),
        ("add-twiml-redirect", Outcome::RedirectReturned { params }) => {
            Resolution::published("return", params)
        }
        ("add-twiml-redirect", Outcome::Timeout) => Resolution::event("timeout"),
        ("record-call", Outcome::Done) => Resolution::event("success"),
        (_, other) => return Err(other),
    })
}
