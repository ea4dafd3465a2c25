//! Every real Studio export must load; every invalid one must be refused with
//! errors that name the state and JSON path at fault.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::DateTime;
use serde_json::{json, Map, Value};
use switchboard::flow::{
    validate, Effect, Engine, ExecutionInit, Flow, FlowError, Outcome, Trigger,
};

const VALID: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/studio-flows");
const INVALID: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/studio-flows-invalid"
);

fn json_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_real_flow_validates_and_compiles() {
    let files = json_files(VALID);
    assert_eq!(files.len(), 62, "corpus size changed");
    let mut failures = Vec::new();
    let mut templates = 0;
    let mut warnings = Vec::new();
    for path in &files {
        let text = fs::read_to_string(path).unwrap_or_default();
        match Flow::from_json(&text) {
            Ok(flow) => {
                templates += flow.template_count();
                for w in flow.warnings() {
                    assert!(w.state.is_some() && w.path.starts_with("$.states["), "{w}");
                    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
                    warnings.push(format!("{file}: {w}"));
                }
                // Round trip: the typed model serialises back to the same states.
                let original = load(path);
                let back = serde_json::to_value(flow.definition()).unwrap_or(Value::Null);
                assert_eq!(
                    back["states"].as_array().map(Vec::len),
                    original["states"].as_array().map(Vec::len),
                    "{}",
                    path.display()
                );
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Broken Liquid that Studio imports: an unclosed `{{` and a `?` in a widget name.
    let expected = [
        (
            "hotel-apaleo-sms.json",
            "state \"cancel_reservation\" at $.states[23].properties.parameters[0].value",
        ),
        (
            "sms-to-flex-autopilot.json",
            "state \"CheckResponse\" at $.states[6].properties.input",
        ),
    ];
    assert_eq!(warnings.len(), expected.len(), "{warnings:#?}");
    for (file, prefix) in expected {
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with(&format!("{file}: {prefix}"))),
            "{warnings:#?}"
        );
    }
    // The corpus is full of Liquid; if none compiled, the walk is broken.
    assert!(templates > 500, "only {templates} templates compiled");
}

#[test]
fn every_invalid_flow_is_refused_naming_state_and_path() {
    let files = json_files(INVALID);
    assert_eq!(files.len(), 3, "invalid corpus size changed");
    for path in &files {
        let errs = match validate(&load(path)) {
            Ok(_) => panic!("{} validated", path.display()),
            Err(e) => e,
        };
        assert!(!errs.0.is_empty());
        for e in errs.iter() {
            assert!(e.path.starts_with("$"), "{}: {e}", path.display());
            if e.path.starts_with("$.states[") {
                let state = e
                    .state
                    .as_deref()
                    .unwrap_or_else(|| panic!("{}: no state in {e}", path.display()));
                assert!(e.to_string().contains(&format!("state \"{state}\"")), "{e}");
            }
        }
    }
}

fn messages(file: &str) -> Vec<String> {
    let path = Path::new(INVALID).join(file);
    match Flow::from_value(&load(&path)) {
        Err(FlowError::Invalid(e)) => e.iter().map(ToString::to_string).collect(),
        other => panic!("{file}: {other:?}"),
    }
}

#[test]
fn invalid_flows_report_the_documented_faults() {
    let m = messages("legal-intake.json");
    assert!(
        m.iter()
            .any(|e| e.starts_with("state \"Hangup\" at $.states[")
                && e.contains(".type: unknown widget type \"hangup\"")),
        "{m:?}"
    );

    let m = messages("legal-intake-es.json");
    for (state, kind) in [
        ("checkSubscriber", "http-request"),
        ("routeLookup", "http-request"),
        ("end", "hang-up"),
    ] {
        assert!(
            m.iter().any(
                |e| e.starts_with(&format!("state \"{state}\" at $.states["))
                    && e.contains(&format!("unknown widget type \"{kind}\""))
            ),
            "{state}: {m:?}"
        );
    }

    let m = messages("legacy-v1-gather-enqueue.json");
    assert!(
        m.iter()
            .any(|e| e.starts_with("at $.initial_state") && e.contains("v1 (2018)")),
        "{m:?}"
    );
    assert!(
        m.iter().any(|e| e.starts_with("state \"Trigger\"")
            && e.contains("unknown widget type \"InitialState\"")),
        "{m:?}"
    );
    assert!(
        m.iter().any(|e| e.starts_with("state \"Trigger\"")
            && e.contains(".next: event \"incomingCall\" goes to missing state \"FFed2061cbcccea5d1e81bc370443c86af\"")),
        "{m:?}"
    );
}

fn now() -> chrono::DateTime<chrono::FixedOffset> {
    DateTime::parse_from_rfc3339("2026-11-26T12:00:00+00:00").unwrap_or_default()
}

/// Answer every effect with a plausible outcome and check each real flow runs
/// to an end without panicking (the message trigger, scripted replies).
#[test]
fn every_real_flow_runs_to_an_end_on_scripted_input() {
    for path in json_files(VALID) {
        let flow = Flow::from_value(&load(&path)).unwrap_or_else(|e| panic!("{e}"));
        for trigger in ["call", "message", "request"] {
            let mut data = Map::new();
            data.insert("From".into(), json!("+15551111"));
            data.insert("To".into(), json!("+15550000"));
            data.insert("Body".into(), json!("1"));
            let trig = match trigger {
                "call" => Trigger::IncomingCall { call: data },
                "message" => Trigger::IncomingMessage { message: data },
                _ => Trigger::IncomingRequest { request: data },
            };
            let init = ExecutionInit {
                sid: "FN1".into(),
                flow_sid: "FW1".into(),
                channel_address: "+15550000".into(),
                contact_address: "+15551111".into(),
                data: json!({}),
            };
            let (mut exec, mut adv) = Engine::start(&flow, init, trig, now());
            let mut rounds = 0;
            while !matches!(adv.effect, Effect::End(_)) {
                rounds += 1;
                assert!(rounds < 2000, "{}: does not end", path.display());
                let outcome = match &adv.effect {
                    Effect::SayPlay(_) => Outcome::AudioComplete,
                    Effect::Gather(_) => Outcome::Digits { digits: "1".into() },
                    Effect::Record(_) => Outcome::NoAudio,
                    Effect::HttpRequest(_) => Outcome::Http {
                        status: 200,
                        content_type: Some("application/json".into()),
                        body: "{}".into(),
                    },
                    Effect::SendAndWait { .. } | Effect::AwaitReply { .. } => {
                        let mut f = Map::new();
                        f.insert("Body".into(), json!("yes"));
                        Outcome::Reply { fields: f }
                    }
                    Effect::SendMessage(_) => Outcome::MessageSent { fields: Map::new() },
                    _ => Outcome::Failed {
                        error: "not in this test".into(),
                    },
                };
                adv = Engine::resume(&flow, &mut exec, outcome, now());
            }
            assert!(exec.end_reason.is_some(), "{}", path.display());
        }
    }
}

#[test]
fn the_corpus_manifest_names_every_file_and_its_licence() {
    for dir in [VALID, INVALID] {
        let manifest = fs::read_to_string(format!("{dir}/MANIFEST.md")).expect("MANIFEST.md");
        for file in json_files(dir) {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let row = manifest
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}`")))
                .unwrap_or_else(|| panic!("{name} is not in {dir}/MANIFEST.md"));
            let licence = row
                .split('|')
                .nth(3)
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            assert!(!licence.is_empty(), "{name}: no licence column");
            for forbidding in [
                "all rights reserved",
                "proprietary",
                "no redistribution",
                "confidential",
            ] {
                assert!(
                    !licence.contains(forbidding),
                    "{name} is under {licence:?}: it must not be redistributed here"
                );
            }
        }
    }
}

/// What a widget needs to run here that a bare install does not have, or why it cannot run:
/// None when it runs as it is. Kept in step with docs/COMPATIBILITY.md by the test below.
fn needs(state: &Value) -> Option<String> {
    let kind = state["type"].as_str().unwrap_or_default();
    let props = &state["properties"];
    let text = |k: &str| props[k].as_str().unwrap_or_default().trim().to_string();
    Some(match kind {
        "send-to-flex" => "Flex (Twilio only)".into(),
        "send-to-auto-pilot" => "Autopilot (retired by Twilio)".into(),
        "capture-payments" => "Pay connector (Twilio only)".into(),
        "connect-virtual-agent" => "Dialogflow virtual agent (Twilio only)".into(),
        "enqueue-call" => "call queues: not yet".into(),
        "fork-stream" => "media streams: not yet".into(),
        "run-subflow" => format!(
            "child flow {} (a Twilio SID): a `[subflows]` mapping",
            text("flow_sid")
        ),
        "run-function" if text("url").is_empty() && text("function_sid").is_empty() => {
            "a Function named by neither SID nor URL: give it a `url`".into()
        }
        "run-function" if text("url").is_empty() => {
            format!("Function {}: a `[functions]` URL", text("function_sid"))
        }
        "connect-call-to" | "make-outgoing-call-v2" => "a `[[trunks]]` entry".into(),
        "gather-input-on-call" if text("input").contains("speech") => {
            "speech: a `[speech]` engine".into()
        }
        "record-voicemail" if props["transcribe"].as_bool() == Some(true) => {
            "transcription: a `[speech]` engine".into()
        }
        _ => return None,
    })
}

/// The widgets reachable from the trigger's `events`, in the order first reached.
fn reachable<'a>(flow: &'a Value, events: &[&str]) -> Vec<&'a Value> {
    let states = flow["states"].as_array().cloned().unwrap_or_default();
    let by_name = |n: &str| {
        flow["states"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == n))
    };
    let Some(trigger) = states.iter().find(|s| s["type"] == "trigger") else {
        return Vec::new();
    };
    let mut queue: std::collections::VecDeque<String> = trigger["transitions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|t| events.contains(&t["event"].as_str().unwrap_or_default()))
        .filter_map(|t| t["next"].as_str().map(str::to_string))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(st) = by_name(&name) else { continue };
        out.push(st);
        for t in st["transitions"].as_array().into_iter().flatten() {
            if let Some(n) = t["next"].as_str() {
                queue.push_back(n.to_string());
            }
        }
    }
    out
}

/// One cell: what the path needs, `runs`, or `–` when the trigger has no such path.
fn path_cell(flow: &Value, events: &[&str]) -> String {
    let widgets = reachable(flow, events);
    if widgets.is_empty() {
        return "–".into();
    }
    let mut notes: Vec<String> = Vec::new();
    for w in widgets {
        if let Some(n) = needs(w) {
            let note = format!(
                "{} `{}`: {n}",
                w["type"].as_str().unwrap_or(""),
                w["name"].as_str().unwrap_or("")
            );
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    if notes.is_empty() {
        "runs".into()
    } else {
        notes.join("; ")
    }
}

const COMPAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/COMPATIBILITY.md");
const TABLE_START: &str = "<!-- table: generated by tests/flow_fixtures.rs -->";
const TABLE_END: &str = "<!-- end of table -->";

#[test]
fn the_compatibility_table_lists_what_each_corpus_flow_needs() {
    let mut table =
        String::from("| flow | call path | message path | REST path |\n|---|---|---|---|\n");
    for file in json_files(VALID) {
        let flow = load(&file);
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        table.push_str(&format!(
            "| `{name}` | {} | {} | {} |\n",
            path_cell(&flow, &["incomingCall"]),
            path_cell(&flow, &["incomingMessage", "incomingConversationMessage"]),
            path_cell(&flow, &["incomingRequest", "incomingParent"]),
        ));
    }
    let doc = fs::read_to_string(COMPAT).expect("docs/COMPATIBILITY.md");
    let (Some(a), Some(b)) = (doc.find(TABLE_START), doc.find(TABLE_END)) else {
        panic!("docs/COMPATIBILITY.md lacks the table markers");
    };
    let current = doc[a + TABLE_START.len()..b].trim();
    if current != table.trim() {
        if std::env::var("SWITCHBOARD_BLESS").as_deref() == Ok("1") {
            let new = format!("{}{TABLE_START}\n{table}{}", &doc[..a], &doc[b..]);
            fs::write(COMPAT, new).unwrap();
        } else {
            panic!(
                "docs/COMPATIBILITY.md is out of date (SWITCHBOARD_BLESS=1 rewrites it); expected:\n{table}"
            );
        }
    }
}
