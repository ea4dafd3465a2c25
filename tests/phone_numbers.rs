//! Numbers attached to flows at run time through Twilio's IncomingPhoneNumbers resource: the
//! official twilio Python library creates a flow and attaches a number, a SIPp call to that
//! number runs the flow, deleting the number stops the routing; unrouted numbers get 404; a
//! test user's call runs the flow's draft while everyone else runs the published revision.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const NUMBER: &str = "+15550102000";

/// A gateway whose only configured route is another number: no default flow, so numbers
/// nothing routes get 404.
fn gateway(tmp: &Path) -> Gateway {
    let cfg = tmp.join("switchboard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[routes]]\nnumber = \"+15550109999\"\nflow = \"{}/tests/flows/answers-hello.json\"\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    Gateway::start_in(
        &tmp.join("data"),
        None,
        &["--config", cfg.to_str().unwrap()],
    )
}

fn python(gw: &Gateway, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(format!(
            "{}/tests/python/phone_numbers.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .env("SWITCHBOARD_URL", gw.base_url())
        .env("SWITCHBOARD_ACCOUNT_SID", ACCOUNT_SID)
        .env("SWITCHBOARD_AUTH_TOKEN", AUTH_TOKEN)
        .env("SWITCHBOARD_NUMBER", NUMBER)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "phone_numbers.py {args:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// One SIPp call to `number` that listens until the gateway hangs up; SIPp's exit code.
fn sipp_call(gw: &Gateway, number: &str) -> Option<i32> {
    let dir = tempfile::tempdir().unwrap();
    let scenario = format!(
        "{}/tests/sipp/listen-wait-for-bye.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    Command::new("sipp")
        .current_dir(dir.path())
        .args(["-sf", &scenario, "-s", number, &gw.sip.to_string()])
        .args(["-i", "127.0.0.1", "-p", "0", "-mp", "0"])
        .args(["-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin"])
        .output()
        .expect("run sipp")
        .status
        .code()
}

/// The final status of a call to `number`.
async fn status_of_call_to(gw: &Gateway, number: &str) -> u16 {
    Ua::new()
        .await
        .call(
            gw.sip,
            CallOptions {
                to_user: number.into(),
                max_duration: Duration::from_secs(10),
                hangup_after: Some(Duration::from_millis(300)),
                ..CallOptions::default()
            },
        )
        .await
        .final_status
}

/// Each execution of a flow: (contact, the names of its steps).
async fn runs(gw: &Gateway, fsid: &str) -> Vec<(String, Vec<String>)> {
    let list = api_get(gw, &format!("/v2/Flows/{fsid}/Executions")).await;
    let mut out = Vec::new();
    for e in list["executions"].as_array().cloned().unwrap_or_default() {
        let esid = e["sid"].as_str().unwrap_or_default();
        let steps = api_get(gw, &format!("/v2/Flows/{fsid}/Executions/{esid}/Steps")).await;
        let names = steps["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s["transitioned_from"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        out.push((
            e["contact_channel_address"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            names,
        ));
    }
    out
}

async fn api_send(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let resp = switchboard::web::plain_client()
        .request(method, format!("{}{path}", gw.base_url()))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twilio_library_attaches_a_number_and_a_sipp_call_to_it_runs_the_flow() {
    if !twilio_library_available() || !peer_available("sipp") || !peer_available("espeak-ng") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(tmp.path());
    assert_eq!(
        status_of_call_to(&gw, NUMBER).await,
        404,
        "nothing routes it yet"
    );
    let out = python(&gw, &["setup"]);
    let ids: Value = serde_json::from_str(out.trim()).expect("setup's JSON");
    let fsid = ids["flow_sid"].as_str().unwrap().to_string();
    let pnsid = ids["number_sid"].as_str().unwrap().to_string();
    assert_eq!(sipp_call(&gw, NUMBER), Some(0), "the SIPp call to {NUMBER}");
    let r = runs(&gw, &fsid).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].1, ["Trigger", "hello"], "{r:?}");
    // The list shows the configured route too, read-only.
    let account = format!("/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers");
    let list = api_get(&gw, &format!("{account}.json")).await;
    let numbers: Vec<(String, String)> = list["incoming_phone_numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["phone_number"].as_str().unwrap().to_string(),
                n["origin"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        numbers,
        [
            ("+15550109999".to_string(), "config".to_string()),
            (NUMBER.to_string(), "api".to_string())
        ]
    );
    let configured = list["incoming_phone_numbers"][0]["sid"].as_str().unwrap();
    let (status, body) = api_send(
        &gw,
        reqwest::Method::DELETE,
        &format!("{account}/{configured}.json"),
        &[],
    )
    .await;
    assert_eq!(status, 400, "a [[routes]] entry is read-only: {body}");
    // Another account's numbers are not ours to see.
    let (status, _) = api_send(
        &gw,
        reqwest::Method::GET,
        "/2010-04-01/Accounts/AC00000000000000000000000000000000/IncomingPhoneNumbers.json",
        &[],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(python(&gw, &["delete", &pnsid]).trim(), "ok");
    assert_eq!(
        status_of_call_to(&gw, NUMBER).await,
        404,
        "deleting the number stopped the routing"
    );
    assert_eq!(runs(&gw, &fsid).await.len(), 1, "no new execution");
    // The configured route still answers.
    assert_eq!(status_of_call_to(&gw, "+15550109999").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_user_runs_the_draft_while_another_caller_runs_the_published_flow() {
    if !peer_available("espeak-ng") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gw = gateway(tmp.path());
    let flow = |widget: &str, say: &str| {
        serde_json::json!({
            "states": [
                {"name": "Trigger", "type": "trigger", "properties": {},
                 "transitions": [{"event": "incomingMessage"}, {"event": "incomingCall", "next": widget},
                                 {"event": "incomingRequest"}]},
                {"name": widget, "type": "say-play", "properties": {"say": say},
                 "transitions": [{"event": "audioComplete"}]}
            ],
            "initial_state": "Trigger",
            "flags": {"allow_concurrent_calls": true}
        })
        .to_string()
    };
    let published = flow("published_hello", "Hello.");
    let (status, created) = api_send(
        &gw,
        reqwest::Method::POST,
        "/v2/Flows",
        &[
            ("FriendlyName", "desk"),
            ("Status", "published"),
            ("Definition", &published),
        ],
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let fsid = created["sid"].as_str().unwrap().to_string();
    let draft = flow("draft_hello", "Hello from the draft.");
    let (status, body) = api_send(
        &gw,
        reqwest::Method::POST,
        &format!("/v2/Flows/{fsid}"),
        &[("Status", "draft"), ("Definition", &draft)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api_send(
        &gw,
        reqwest::Method::POST,
        &format!("/v2/Flows/{fsid}/TestUsers"),
        &[("TestUsers", "+15550001111")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // This gateway's own webhook URL form names the flow too.
    let voice_url = format!("{}/v1/Accounts/{ACCOUNT_SID}/Flows/{fsid}", gw.base_url());
    let (status, body) = api_send(
        &gw,
        reqwest::Method::POST,
        &format!("/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json"),
        &[("PhoneNumber", NUMBER), ("VoiceUrl", &voice_url)],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["voice_flow_sid"], fsid.as_str());
    for caller in ["+15550001111", "+15550002222"] {
        let phone = Phone::dial_number(gw.sip, caller, NUMBER, Offer::Rfc4733).await;
        phone.wait_bye(Duration::from_secs(20)).await;
    }
    let mut r = runs(&gw, &fsid).await;
    r.sort();
    assert_eq!(
        r,
        [
            (
                "+15550001111".to_string(),
                vec!["Trigger".to_string(), "draft_hello".to_string()]
            ),
            (
                "+15550002222".to_string(),
                vec!["Trigger".to_string(), "published_hello".to_string()]
            ),
        ]
    );
}
