//! Issue #10 "Hardening", against the real binary over loopback: hostile Liquid is a
//! validation error and the gateway keeps answering; run-function requests are signed and
//! carry no credentials; a widget the medium cannot perform records why on its step.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{api_get, Gateway, ACCOUNT_SID, AUTH_TOKEN};

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
    switchboard::web::plain_client()
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

/// One request as the loopback server saw it.
#[derive(Debug)]
struct Seen {
    path: String,
    headers: std::collections::HashMap<String, String>,
    body: String,
}

/// A loopback HTTP server that answers `{"ok":true}` to at most `n` requests and reports
/// each one's path, headers and body.
async fn recorder(n: usize) -> (String, tokio::sync::mpsc::Receiver<Seen>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(n);
    tokio::spawn(async move {
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let seen = loop {
                let k = s.read(&mut chunk).await.unwrap_or(0);
                if k == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).to_string();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let mut lines = head.lines();
                let path = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or("")
                    .to_string();
                let headers: std::collections::HashMap<String, String> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    break Seen {
                        path,
                        headers,
                        body: body.to_string(),
                    };
                }
            };
            let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}";
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = tx.send(seen).await;
        }
    });
    (base, rx)
}

async fn api_post(g: &Gateway, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let resp = client()
        .post(format!("{}{path}", g.base_url()))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn run_function_is_signed_and_the_token_never_leaves_for_foreign_urls() {
    let g = Gateway::start(None);
    let (fn_base, mut seen) = recorder(2).await;
    let fn_url = format!("{fn_base}/fn");
    let own_api = format!("{}/v2/Flows", g.base_url());
    let def = json!({
        "description": "credentials",
        "states": [
            {"name": "Trigger", "type": "trigger", "properties": {},
             "transitions": [{"event": "incomingRequest", "next": "fn"}]},
            {"name": "fn", "type": "run-function",
             "properties": {"service_sid": "ZS1", "function_sid": "ZH1", "url": fn_url,
                            "parameters": [{"key": "Name", "value": "{{flow.data.name}}"}]},
             "transitions": [{"event": "success", "next": "ext"}, {"event": "fail"}]},
            {"name": "ext", "type": "make-http-request",
             "properties": {"method": "GET", "url": format!("{fn_base}/ext"), "add_twilio_auth": true},
             "transitions": [{"event": "success", "next": "own"}, {"event": "failed"}]},
            {"name": "own", "type": "make-http-request",
             "properties": {"method": "GET", "url": own_api, "add_twilio_auth": true},
             "transitions": [{"event": "success"}, {"event": "failed"}]}
        ],
        "initial_state": "Trigger",
        "flags": {"allow_concurrent_calls": true}
    })
    .to_string();
    let (s, f) = api_post(
        &g,
        "/v2/Flows",
        &[
            ("FriendlyName", "creds"),
            ("Status", "published"),
            ("Definition", &def),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{f}");
    let fsid = f["sid"].as_str().unwrap().to_string();
    let (s, e) = api_post(
        &g,
        &format!("/v2/Flows/{fsid}/Executions"),
        &[
            ("To", "+15550100001"),
            ("From", "+15550199999"),
            ("Parameters", r#"{"name":"Ada"}"#),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let esid = e["sid"].as_str().unwrap().to_string();

    let first = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the function is called")
        .unwrap();
    assert_eq!(first.path, "/fn");
    assert!(
        !first.headers.contains_key("authorization"),
        "the auth token must not be sent to a Function: {first:?}"
    );
    let params: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{}", first.body))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(params, vec![("Name".to_string(), "Ada".to_string())]);
    let sig = first
        .headers
        .get("x-twilio-signature")
        .expect("X-Twilio-Signature");
    assert!(
        switchboard::web::signature::valid(AUTH_TOKEN, &fn_url, &params, sig),
        "signature {sig} does not verify"
    );

    let second = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the foreign URL is called")
        .unwrap();
    assert_eq!(second.path, "/ext");
    assert!(
        !second.headers.contains_key("authorization"),
        "add_twilio_auth must not send credentials to a foreign URL: {second:?}"
    );

    // The gateway's own API accepted the request: it got the Basic credentials.
    let steps_path = format!("/v2/Flows/{fsid}/Executions/{esid}/Steps");
    for _ in 0..100 {
        let steps = api_get(&g, &steps_path).await;
        let own = steps["steps"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "own").cloned());
        if let Some(own) = own {
            assert_eq!(own["transitioned_from"], "own");
            let ctx = api_get(
                &g,
                &format!("{steps_path}/{}/Context", own["sid"].as_str().unwrap()),
            )
            .await;
            assert_eq!(
                ctx["context"]["widgets"]["own"]["status_code"], 200,
                "{ctx}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the execution did not reach the own-API request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_call_to_without_trunks_fails_and_records_why_on_its_step() {
    let flow = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/flows/connect-call.json"
    ));
    let g = Gateway::start(Some(flow));
    let p = support::Phone::dial(g.sip, "+15550100000", support::Offer::Rfc4733).await;
    // The execution ends, and so does the call: but not silently.
    p.wait_bye(Duration::from_secs(10)).await;
    for _ in 0..50 {
        let execs = support::executions(&g, flow).await;
        if let Some((e, steps)) = execs.iter().find(|(e, _)| e.status == "ended") {
            let step = steps
                .iter()
                .find(|s| s.name == "connect")
                .unwrap_or_else(|| panic!("no step for connect-call-to: {steps:?}"));
            assert_eq!(step.transitioned_to, "Ended");
            let error = step.error.as_deref().unwrap_or("");
            // No trunk to call through: DialCallStatus=failed, and the step says why.
            assert!(error.contains("needs a [[trunks]] entry"), "{error}");
            assert_eq!(e.state["end_reason"]["kind"], "completed", "{}", e.state);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the execution did not end");
}
