//! Issue #10 "Hardening", against the real binary over loopback: hostile Liquid is a
//! validation error and the gateway keeps answering; run-function requests are signed and
//! carry no credentials; a widget the medium cannot perform records why on its step.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{Gateway, ACCOUNT_SID, AUTH_TOKEN};

/// A say-play whose text nests `{% if true %}` `depth` deep.
fn nested_flow(depth: usize) -> String {
    let say = format!(
        "{}boom{}",
        "{% if true %}".repeat(depth),
        "{% endif %}".repeat(depth)
    );
    json!({
        "description": "hostile",
        "states": [
            {"name": "Trigger", "type": "trigger", "properties": {},
             "transitions": [{"event": "incomingCall", "next": "deep"}]},
            {"name": "deep", "type": "say-play", "properties": {"say": say},
             "transitions": [{"event": "audioComplete"}]}
        ],
        "initial_state": "Trigger",
        "flags": {"allow_concurrent_calls": true}
    })
    .to_string()
}

fn client() -> reqwest::Client {
    switchboard::channel::http::plain_client()
}

async fn validate(g: &Gateway, definition: &str) -> (StatusCode, Value) {
    let resp = client()
        .post(format!("{}/v2/Flows/Validate", g.base_url()))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .form(&[
            ("FriendlyName", "hostile"),
            ("Status", "draft"),
            ("Definition", definition),
        ])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the gateway answers the validation");
    let status = resp.status();
    (status, resp.json().await.expect("JSON body"))
}

#[tokio::test]
async fn deeply_nested_liquid_is_a_validation_error_and_the_gateway_survives() {
    let g = Gateway::start(None);
    // The report's flow: 1,200 levels, 29 KB of text.
    let hostile = nested_flow(1200);
    assert!(hostile.len() > 28_000, "{}", hostile.len());
    let (s, b) = validate(&g, &hostile).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let errors = b["details"]["errors"].as_array().expect("errors");
    assert_eq!(errors[0]["state"], "deep", "{b}");
    assert_eq!(
        errors[0]["property_path"], "$.states[1].properties.say",
        "{b}"
    );
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit is 16384 bytes")),
        "{b}"
    );
    // Small enough to pass the size limit: the nesting depth is what is refused.
    let (s, b) = validate(&g, &nested_flow(600)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(
        b["message"]
            .as_str()
            .is_some_and(|m| m.contains("nest more than 32 deep")),
        "{b}"
    );
    // Still alive, and a sane nesting is valid.
    let health = client()
        .get(format!("{}/healthz", g.base_url()))
        .send()
        .await
        .expect("the gateway still answers");
    assert_eq!(health.status(), StatusCode::OK);
    let (s, b) = validate(&g, &nested_flow(8)).await;
    assert_eq!((s, b), (StatusCode::OK, json!({"valid": true})));
}

#[test]
fn deeply_nested_liquid_in_a_flow_file_is_reported_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hostile.json");
    std::fs::write(&path, nested_flow(1200)).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["flow", "validate"])
        .arg(&path)
        .output()
        .expect("run");
    // An exit code (not a signal): the process reported the fault and ended normally.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("state \"deep\" at $.states[1].properties.say"),
        "{text}"
    );
}
