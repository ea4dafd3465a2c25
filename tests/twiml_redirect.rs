//! add-twiml-redirect end to end: a real call through the gateway runs TwiML served by a local
//! HTTP server, gathers a digit sent by RFC 4733, and returns to the flow with the parameters the
//! TwiML app appended to the return URL; a failing app takes the widget's `fail` event.

mod support;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use support::*;

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    form: HashMap<String, String>,
    signed: bool,
}

/// An answer: status and body.
type Answer = (u16, String);

#[derive(Clone, Default)]
struct App {
    base: Arc<Mutex<String>>,
    /// Per path, answers in turn (the last one repeats): status and body.
    routes: Arc<Mutex<HashMap<String, VecDeque<Answer>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn handle(
    State(app): State<App>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let base = app.base.lock().unwrap().clone();
    let form: Vec<(String, String)> =
        reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(&body)))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
    let full = format!(
        "{base}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let given = headers
        .get("X-Twilio-Signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let signed = switchboard::web::signature::valid(AUTH_TOKEN, &full, &form, given);
    app.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        form: form.into_iter().collect(),
        signed,
    });
    let answer = {
        let mut routes = app.routes.lock().unwrap();
        match routes.get_mut(uri.path()) {
            Some(q) if q.len() > 1 => q.pop_front(),
            Some(q) => q.front().cloned(),
            None => None,
        }
    };
    let (status, body) = answer.unwrap_or((404, "not found".into()));
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}

impl App {
    async fn start() -> App {
        let app = App::default();
        let router = axum::Router::new().fallback(handle).with_state(app.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        *app.base.lock().unwrap() = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(l, router).await;
        });
        app
    }

    fn base(&self) -> String {
        self.base.lock().unwrap().clone()
    }

    fn answer(&self, path: &str, status: u16, body: &str) {
        self.routes
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push_back((status, body.to_string()));
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn flow_json(base: &str) -> String {
    serde_json::json!({
        "description": "Hands the call to a TwiML app and takes it back",
        "states": [
            {"name": "Trigger", "type": "trigger", "properties": {},
             "transitions": [{"event": "incomingMessage"}, {"event": "incomingCall", "next": "app"}, {"event": "incomingRequest"}]},
            {"name": "app", "type": "add-twiml-redirect",
             "properties": {"url": format!("{base}/start"), "method": "POST", "timeout": 60},
             "transitions": [{"event": "return", "next": "back"}, {"event": "timeout"}, {"event": "fail", "next": "sorry"}]},
            {"name": "back", "type": "say-play", "properties": {"say": "Welcome back, you chose {{widgets.app.choice}}"},
             "transitions": [{"event": "audioComplete"}]},
            {"name": "sorry", "type": "say-play", "properties": {"say": "Sorry, something went wrong"},
             "transitions": [{"event": "audioComplete"}]}
        ],
        "initial_state": "Trigger",
        "flags": {"allow_concurrent_calls": true}
    })
    .to_string()
}

async fn ended_execution(
    gw: &Gateway,
    flow: &Path,
    call_id: &str,
) -> (serde_json::Value, Vec<switchboard::store::StepRecord>) {
    for _ in 0..100 {
        for (e, steps) in executions(gw, flow).await {
            if e.context["trigger"]["call"]["SipCallId"] == call_id && e.status == "ended" {
                return (e.context, steps);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("execution for {call_id} did not end");
}

// Enabled when VoiceChannel implements VoiceOps (and performs Effect::Redirect with
// switchboard::twiml::run_redirect, signing with the API auth token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twiml_app_gathers_and_returns_to_the_flow() {
    if !peer_available("espeak-ng") {
        return;
    }
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("twiml-redirect.json");
    std::fs::write(&flow, flow_json(&app.base())).unwrap();
    let flow_sid = switchboard::routing::LoadedFlow::from_file(&flow)
        .unwrap()
        .sid
        .clone();

    // Call 1: <Gather> → action /menu with Digits → back to the flow with choice=one.
    app.answer(
        "/start",
        200,
        r#"<Response><Gather action="/menu" numDigits="1" timeout="10"><Say>Press one</Say></Gather><Say>No input</Say></Response>"#,
    );
    app.answer(
        "/menu",
        200,
        &format!(
            "<Response><Say>Thanks</Say><Redirect>{}/v1/Accounts/{ACCOUNT_SID}/Flows/{flow_sid}?FlowEvent=return&amp;choice=one</Redirect></Response>",
            app.base()
        ),
    );
    // Call 2: the app fails.
    app.answer("/start", 500, "boom");

    let gw = Gateway::start(Some(&flow));
    let mut a = Phone::dial(gw.sip, "+15550100000", Offer::Rfc4733).await;
    for _ in 0..100 {
        if app.seen().iter().any(|s| s.path == "/start") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.send_rfc4733('1').await;
    a.wait_bye(Duration::from_secs(20)).await;
    let (ctx, steps) = ended_execution(&gw, &flow, &a.call_id()).await;
    assert_eq!(ctx["widgets"]["app"]["choice"], "one", "{ctx}");
    assert_eq!(ctx["widgets"]["app"]["FlowEvent"], "return");
    let step = steps.iter().find(|s| s.name == "app").expect("app step");
    assert_eq!(
        (step.event.as_str(), step.transitioned_to.as_str()),
        ("return", "back")
    );
    let seen = app.seen();
    assert_eq!(seen[0].path, "/start");
    assert_eq!(
        seen[0].form.get("From").map(String::as_str),
        Some("+15550100000")
    );
    assert!(seen[0].form.contains_key("CallSid"));
    assert!(seen[0].signed, "signed with the account's auth token");
    let menu = seen
        .iter()
        .find(|s| s.path == "/menu")
        .expect("/menu requested");
    assert_eq!(menu.form.get("Digits").map(String::as_str), Some("1"));

    let b = Phone::dial(gw.sip, "+15550100001", Offer::Rfc4733).await;
    b.wait_bye(Duration::from_secs(20)).await;
    let (_, steps) = ended_execution(&gw, &flow, &b.call_id()).await;
    let step = steps.iter().find(|s| s.name == "app").expect("app step");
    assert_eq!(
        (step.event.as_str(), step.transitioned_to.as_str()),
        ("fail", "sorry")
    );
}
