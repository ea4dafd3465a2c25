//! Messaging end to end against the real binary: signed inbound webhooks drive a
//! send-and-wait-for-reply flow whose replies go out through the Twilio-compatible provider (a
//! local HTTP server here that records them), event streams reach a local sink, a reply
//! timeout fires after a restart, one flow serves a call and a conversation, and SMPP runs
//! against a real SMSC peer (the npm `smpp` package's server).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use support::*;
use switchboard::routing::LoadedFlow;
use switchboard::web::signature;

const FLOWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flows");
const CONTACT: &str = "+15550100001";
const NUMBER: &str = "+15550199999";
/// Sending to this number makes the recording provider answer like Twilio for a bad `To`.
const BAD_NUMBER: &str = "+15550000400";
const PROVIDER_SID: &str = "ACprovider0000000000000000000000000";
const PROVIDER_TOKEN: &str = "provider-token-sekrit";

fn flow_path(name: &str) -> PathBuf {
    Path::new(FLOWS).join(name)
}

#[derive(Debug, Clone)]
struct Sent {
    account: String,
    authorization: String,
    form: Vec<(String, String)>,
}

impl Sent {
    fn get(&self, k: &str) -> &str {
        self.form
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

#[derive(Default)]
struct Recorded {
    messages: Mutex<Vec<Sent>>,
    events: Mutex<Vec<Value>>,
}

/// A Twilio-compatible Messages API and an event sink on one local HTTP server.
struct Recorder {
    base: String,
    rec: Arc<Recorded>,
}

async fn messages(
    State(rec): State<Arc<Recorded>>,
    UrlPath(account): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let form = switchboard::web::params::decode_form(&body);
    let sent = Sent {
        account: account.clone(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        form,
    };
    let answer = if sent.get("To") == BAD_NUMBER {
        (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"code": 21211, "message": "The 'To' number is not a valid phone number.",
                        "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}),
            ),
        )
    } else {
        let n = rec.messages.lock().unwrap().len();
        (
            StatusCode::CREATED,
            Json(
                json!({"sid": format!("SM{n:032}"), "account_sid": account, "status": "queued",
                        "to": sent.get("To"), "from": sent.get("From"), "body": sent.get("Body"),
                        "num_segments": "1", "num_media": "0", "error_code": null}),
            ),
        )
    };
    rec.messages.lock().unwrap().push(sent);
    answer
}

async fn events(State(rec): State<Arc<Recorded>>, Json(batch): Json<Vec<Value>>) -> StatusCode {
    rec.events.lock().unwrap().extend(batch);
    StatusCode::OK
}

impl Recorder {
    async fn start() -> Recorder {
        let rec = Arc::new(Recorded::default());
        let app = axum::Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(messages),
            )
            .route("/events", post(events))
            .with_state(rec.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { base, rec }
    }

    fn messages(&self) -> Vec<Sent> {
        self.rec.messages.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<Value> {
        self.rec.events.lock().unwrap().clone()
    }

    async fn wait_messages(&self, n: usize, within: Duration) -> Vec<Sent> {
        let start = Instant::now();
        loop {
            let got = self.messages();
            if got.len() >= n || start.elapsed() > within {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A gateway configuration whose default provider is this recorder.
    fn config(&self, dir: &Path, extra: &str) -> PathBuf {
        let path = dir.join("switchboard.toml");
        std::fs::write(
            &path,
            format!(
                "[[messaging.providers]]\nname = \"default\"\nkind = \"twilio\"\nbase_url = \"{}\"\n\
                 account_sid = \"{PROVIDER_SID}\"\nauth_token = \"{PROVIDER_TOKEN}\"\n\n\
                 [events]\nsinks = [\"{}/events\"]\nflush_ms = 50\n{extra}",
                self.base, self.base
            ),
        )
        .unwrap();
        path
    }
}

/// Posts inbound messages to a flow's webhook, signed like Twilio signs them.
struct Inbound {
    http: reqwest::Client,
    url: String,
}

impl Inbound {
    fn new(gw: &Gateway, flow_sid: &str) -> Inbound {
        switchboard::web::install_crypto_provider();
        Inbound {
            http: switchboard::web::plain_client(),
            url: format!(
                "{}/v1/Accounts/{ACCOUNT_SID}/Flows/{flow_sid}",
                gw.base_url()
            ),
        }
    }

    fn params(from: &str, body: &str) -> Vec<(String, String)> {
        [
            ("From", from),
            ("To", NUMBER),
            ("Body", body),
            ("MessageSid", &format!("SM{:032x}", rand::random::<u128>())),
            ("AccountSid", ACCOUNT_SID),
            ("NumMedia", "0"),
            ("SmsStatus", "received"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    async fn post_signed(
        &self,
        url: &str,
        params: &[(String, String)],
        signature: &str,
    ) -> (StatusCode, String, String) {
        let resp = self
            .http
            .post(url)
            .header("X-Twilio-Signature", signature)
            .form(params)
            .send()
            .await
            .expect("webhook request");
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, ct, resp.text().await.unwrap_or_default())
    }

    async fn send(&self, from: &str, body: &str) -> (StatusCode, String, String) {
        let params = Self::params(from, body);
        let sig = signature::sign(AUTH_TOKEN, &self.url, &params);
        self.post_signed(&self.url, &params, &sig).await
    }
}

async fn wait_until<
    F: Fn(
        &[(
            switchboard::store::ExecutionRecord,
            Vec<switchboard::store::StepRecord>,
        )],
    ) -> bool,
>(
    gw: &Gateway,
    flow: &Path,
    within: Duration,
    done: F,
) -> Vec<(
    switchboard::store::ExecutionRecord,
    Vec<switchboard::store::StepRecord>,
)> {
    let start = Instant::now();
    loop {
        let ex = executions(gw, flow).await;
        if done(&ex) || start.elapsed() > within {
            return ex;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn step_names(steps: &[switchboard::store::StepRecord]) -> Vec<String> {
    steps.iter().map(|s| s.transitioned_to.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_drive_a_conversation_through_the_twilio_provider() {
    let recorder = Recorder::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = recorder.config(tmp.path(), "");
    let flow = flow_path("sms-survey.json");
    let gw = Gateway::start_in(
        tmp.path(),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let flow_sid = LoadedFlow::from_file(&flow).unwrap().sid;
    let inbound = Inbound::new(&gw, &flow_sid);

    // A bad signature is refused and starts nothing; so is a missing one.
    let params = Inbound::params(CONTACT, "hello");
    let (status, _, _) = inbound
        .post_signed(&inbound.url, &params, "bm90IGEgc2lnbmF0dXJl")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let wrong_key = signature::sign("not-the-token", &inbound.url, &params);
    let (status, _, _) = inbound.post_signed(&inbound.url, &params, &wrong_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = inbound.post_signed(&inbound.url, &params, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        executions(&gw, &flow).await.is_empty(),
        "a refused webhook starts nothing"
    );
    assert!(recorder.messages().is_empty());

    // Unknown flow and wrong account: 404 with Twilio's error body (signed, so they get that far).
    for url in [
        format!(
            "{}/v1/Accounts/{ACCOUNT_SID}/Flows/FW{:032x}",
            gw.base_url(),
            7
        ),
        format!(
            "{}/v1/Accounts/AC{:032x}/Flows/{flow_sid}",
            gw.base_url(),
            7
        ),
    ] {
        let sig = signature::sign(AUTH_TOKEN, &url, &params);
        let (status, _, body) = inbound.post_signed(&url, &params, &sig).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{url}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], 404);
    }

    // The first message starts the execution; the question goes out through the provider.
    let (status, ct, body) = inbound.send(CONTACT, "hello").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(ct.starts_with("text/xml"), "{ct}");
    assert_eq!(
        body,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>"
    );
    let sent = recorder.wait_messages(1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].account, PROVIDER_SID);
    let basic = format!("{PROVIDER_SID}:{PROVIDER_TOKEN}");
    use base64::Engine as _;
    assert_eq!(
        sent[0].authorization,
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(basic)
        )
    );
    assert_eq!(sent[0].get("To"), CONTACT);
    assert_eq!(sent[0].get("From"), NUMBER);
    assert_eq!(sent[0].get("Body"), "Hi hello! What is your name?");

    // A second contact gets an execution of its own.
    let other = "+15550100002";
    inbound.send(other, "hey").await;
    // The reply resumes the waiting execution of the first contact.
    let (status, _, _) = inbound.send(CONTACT, "Ada").await;
    assert_eq!(status, StatusCode::OK);
    let sent = recorder.wait_messages(3, Duration::from_secs(10)).await;
    let thanks: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.get("Body") == "Thanks Ada")
        .collect();
    assert_eq!(thanks.len(), 1, "{sent:?}");
    assert_eq!(thanks[0].get("To"), CONTACT);

    let ex = wait_until(&gw, &flow, Duration::from_secs(10), |ex| {
        ex.iter()
            .any(|(e, _)| e.contact == CONTACT && e.status == "ended")
    })
    .await;
    assert_eq!(ex.len(), 2, "one execution per contact");
    let (done, steps) = ex.iter().find(|(e, _)| e.contact == CONTACT).unwrap();
    assert_eq!(done.status, "ended");
    assert_eq!(step_names(steps), ["ask", "thanks", "Ended"], "{steps:?}");
    assert_eq!(done.context["widgets"]["ask"]["inbound"]["Body"], "Ada");
    assert_eq!(
        done.context["widgets"]["thanks"]["message"]["Status"],
        "queued"
    );
    assert!(done.context["widgets"]["thanks"]["message"]["Sid"]
        .as_str()
        .unwrap()
        .starts_with("SM"));
    let (waiting, _) = ex.iter().find(|(e, _)| e.contact == other).unwrap();
    assert_eq!(waiting.status, "active");

    // A provider error takes deliveryFailure with Twilio's code and message.
    inbound.send(BAD_NUMBER, "hello").await;
    let ex = wait_until(&gw, &flow, Duration::from_secs(10), |ex| {
        ex.iter()
            .any(|(e, _)| e.contact == BAD_NUMBER && e.status == "ended")
    })
    .await;
    let (failed, steps) = ex.iter().find(|(e, _)| e.contact == BAD_NUMBER).unwrap();
    assert_eq!(failed.status, "ended");
    let failure = steps
        .iter()
        .find(|s| s.event == "deliveryFailure")
        .unwrap_or_else(|| panic!("{steps:?}"));
    let error = failure.error.clone().unwrap_or_default();
    assert!(
        error.contains("21211") && error.contains("not a valid phone number"),
        "{error}"
    );

    // Event streams: started, steps and ended for the finished conversation, as CloudEvents.
    let start = Instant::now();
    let mine = loop {
        let ev: Vec<Value> = recorder
            .events()
            .into_iter()
            .filter(|e| e["data"]["execution_sid"] == json!(done.sid))
            .collect();
        if ev
            .iter()
            .any(|e| e["type"] == "com.twilio.studio.flow.execution.ended")
            || start.elapsed() > Duration::from_secs(10)
        {
            break ev;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let types: Vec<&str> = mine.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types.first(),
        Some(&"com.twilio.studio.flow.execution.started"),
        "{types:?}"
    );
    assert_eq!(
        types.last(),
        Some(&"com.twilio.studio.flow.execution.ended"),
        "{types:?}"
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "com.twilio.studio.flow.step.ended")
            .count(),
        steps_of(&ex, &done.sid),
        "{types:?}"
    );
    for e in &mine {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["data"]["flow_sid"], json!(flow_sid));
        assert_eq!(e["data"]["account_sid"], ACCOUNT_SID);
    }
}

fn steps_of(
    ex: &[(
        switchboard::store::ExecutionRecord,
        Vec<switchboard::store::StepRecord>,
    )],
    sid: &str,
) -> usize {
    ex.iter()
        .find(|(e, _)| e.sid == sid)
        .map(|(_, s)| s.len())
        .unwrap_or(0)
}

/// A conversation whose first question went out, on a gateway then killed with SIGKILL.
struct KilledWhileWaiting {
    recorder: Recorder,
    tmp: tempfile::TempDir,
    flow: PathBuf,
    flow_sid: String,
    cfg: PathBuf,
}

impl KilledWhileWaiting {
    async fn new(flow_name: &str) -> KilledWhileWaiting {
        let recorder = Recorder::start().await;
        let tmp = tempfile::tempdir().unwrap();
        let cfg = recorder.config(tmp.path(), "");
        let flow = flow_path(flow_name);
        let flow_sid = LoadedFlow::from_file(&flow).unwrap().sid;
        let k = KilledWhileWaiting {
            recorder,
            tmp,
            flow,
            flow_sid,
            cfg,
        };
        let mut gw = k.start();
        let (status, _, _) = Inbound::new(&gw, &k.flow_sid).send(CONTACT, "hello").await;
        assert_eq!(status, StatusCode::OK);
        let asked = k.recorder.wait_messages(1, Duration::from_secs(10)).await;
        assert_eq!(asked.len(), 1);
        gw.kill();
        k
    }

    fn start(&self) -> Gateway {
        Gateway::start_in(
            self.tmp.path(),
            Some(&self.flow),
            &["--config", self.cfg.to_str().unwrap()],
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_timeout_fires_after_a_restart() {
    // Down before the 3 s deadline, up again after it.
    let k = KilledWhileWaiting::new("sms-survey-short.json").await;
    let (recorder, flow) = (&k.recorder, &k.flow);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        recorder.messages().len(),
        1,
        "nothing fires while the gateway is down"
    );
    let gw = k.start();
    let sent = recorder.wait_messages(2, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].get("Body"), "Too slow");
    assert_eq!(sent[1].get("To"), CONTACT);
    let ex = wait_until(&gw, flow, Duration::from_secs(10), |ex| {
        ex.iter().all(|(e, _)| e.status == "ended")
    })
    .await;
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].0.status, "ended");
    assert_eq!(step_names(&ex[0].1), ["ask", "too-slow", "Ended"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flow_serves_a_call_and_a_conversation() {
    let recorder = Recorder::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = recorder.config(tmp.path(), "");
    let flow = flow_path("call-and-message.json");
    let flow_sid = LoadedFlow::from_file(&flow).unwrap().sid;
    let gw = Gateway::start_in(
        tmp.path(),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );

    let ua = Ua::new().await;
    let call = ua.call(gw.sip, CallOptions::default());
    let inbound = Inbound::new(&gw, &flow_sid);
    let message = inbound.send(CONTACT, "hi");
    let (report, (status, _, _)) = tokio::join!(call, message);
    assert_eq!(report.final_status, 200);
    assert!(
        report.bye_received,
        "the call's branch of the flow ends the call"
    );
    assert!(rms(&report.audio) > 500.0, "the caller heard the prompt");
    assert_eq!(status, StatusCode::OK);
    let sent = recorder.wait_messages(1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].get("Body"),
        format!("Hello from the same flow, {CONTACT}")
    );

    let ex = wait_until(&gw, &flow, Duration::from_secs(10), |ex| {
        ex.len() == 2 && ex.iter().all(|(e, _)| e.status == "ended")
    })
    .await;
    assert_eq!(ex.len(), 2, "{ex:?}");
    let mut paths: Vec<Vec<String>> = ex
        .iter()
        .map(|(e, steps)| {
            assert_eq!(e.flow_sid, flow_sid);
            step_names(steps)
        })
        .collect();
    paths.sort();
    assert_eq!(paths, [vec!["greet", "Ended"], vec!["reply", "Ended"]]);
    let triggers: Vec<&str> = ex
        .iter()
        .map(|(_, steps)| steps[0].event.as_str())
        .collect();
    assert!(
        triggers.contains(&"incomingCall") && triggers.contains(&"incomingMessage"),
        "{triggers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_ends_and_deletes_old_executions() {
    let recorder = Recorder::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = recorder.config(
        tmp.path(),
        "[retention]\nmax_age_secs = 1\nmax_active_secs = 1\ninterval_secs = 1\n",
    );
    let flow = flow_path("sms-survey.json");
    let flow_sid = LoadedFlow::from_file(&flow).unwrap().sid;
    let gw = Gateway::start_in(
        tmp.path(),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let (status, _, _) = Inbound::new(&gw, &flow_sid).send(CONTACT, "hello").await;
    assert_eq!(status, StatusCode::OK);
    let ex = executions(&gw, &flow).await;
    assert_eq!(ex.len(), 1);
    let sid = ex[0].0.sid.clone();
    // Waiting for a reply (active) but older than the limit: ended, then deleted with its steps.
    let ex = wait_until(&gw, &flow, Duration::from_secs(10), |ex| ex.is_empty()).await;
    assert!(ex.is_empty(), "{ex:?}");
    let start = Instant::now();
    let ended = loop {
        let ended: Vec<Value> = recorder
            .events()
            .into_iter()
            .filter(|e| {
                e["type"] == "com.twilio.studio.flow.execution.ended"
                    && e["data"]["execution_sid"] == json!(sid)
            })
            .collect();
        if !ended.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break ended;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["data"]["ended_reason"], "ENDED_BY_RETENTION");
    // The session is free: the contact starts afresh.
    let (status, _, _) = Inbound::new(&gw, &flow_sid).send(CONTACT, "again").await;
    assert_eq!(status, StatusCode::OK);
    let sent = recorder.wait_messages(2, Duration::from_secs(10)).await;
    assert_eq!(
        sent.last().unwrap().get("Body"),
        "Hi again! What is your name?"
    );
}

/// The npm `smpp` package as installed by .ci/run, or None (skip; a failure when peers are
/// required).
fn smpp_peer() -> Option<PathBuf> {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/smpp/node_modules/smpp");
    if peer_available("node") && module.join("package.json").exists() {
        return Some(module);
    }
    if std::env::var("SWITCHBOARD_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("the npm smpp package is required (SWITCHBOARD_REQUIRE_PEERS=1): run .ci/run to install it");
    }
    eprintln!("skipping: npm smpp package not installed under .peers/smpp");
    None
}

struct Smsc {
    child: Child,
    lines: std::sync::mpsc::Receiver<Value>,
    port: u16,
}

impl Smsc {
    fn start(module: &Path) -> Smsc {
        let mut child = Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smpp/server.js"))
            .env("SMPP_MODULE", module)
            .env("SMPP_SYSTEM_ID", "switchboard")
            .env("SMPP_PASSWORD", "secret")
            .env("SMPP_LIFETIME_MS", "40000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("SMSC listening");
        assert_eq!(first["event"], "listening");
        let port = first["port"].as_u64().expect("port") as u16;
        Smsc {
            child,
            lines: rx,
            port,
        }
    }

    /// The next event of `kind` (others are collected too).
    fn next(&self, kind: &str, seen: &mut Vec<Value>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    seen.push(v.clone());
                    if v["event"] == kind {
                        return v;
                    }
                }
                Err(e) => panic!("waiting for {kind}: {e}; seen {seen:?}"),
            }
        }
    }
}

impl Drop for Smsc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smpp_conversation_with_a_real_smsc() {
    let Some(module) = smpp_peer() else {
        return;
    };
    let smsc = Smsc::start(&module);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("switchboard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[messaging.providers]]\nname = \"default\"\nkind = \"smpp\"\nhost = \"127.0.0.1\"\n\
             port = {}\nsystem_id = \"switchboard\"\npassword = \"secret\"\n",
            smsc.port
        ),
    )
    .unwrap();
    let flow = flow_path("sms-survey.json");
    let gw = Gateway::start_in(
        tmp.path(),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );

    // The SMSC delivers "hello" once bound; the flow's question comes back as submit_sm, its
    // receipt is acknowledged, the contact answers "Ada" and is thanked.
    let mut seen = Vec::new();
    let bound = smsc.next("bound", &mut seen);
    assert_eq!(bound["interface_version"], 0x34);
    let q = smsc.next("submit_sm", &mut seen);
    assert_eq!(q["text"], "Hi hello! What is your name?");
    assert_eq!(q["dest"], "15550100001");
    assert_eq!(q["dest_ton"], 1);
    assert_eq!(q["source"], "15550199999");
    assert_eq!(q["registered_delivery"], 1);
    let thanks = smsc.next("submit_sm", &mut seen);
    assert_eq!(thanks["text"], "Thanks Ada");
    assert_eq!(thanks["id"], "smsc-2");
    let receipt = smsc.next("receipt_resp", &mut seen);
    assert_eq!(receipt["status"], 0, "delivery receipts are acknowledged");
    assert!(
        seen.iter()
            .any(|v| v["event"] == "deliver_sm_resp" && v["status"] == 0),
        "inbound messages are acknowledged: {seen:?}"
    );

    let ex = wait_until(&gw, &flow, Duration::from_secs(10), |ex| {
        ex.iter().any(|(e, _)| e.status == "ended")
    })
    .await;
    assert_eq!(ex.len(), 1, "{ex:?}");
    let (e, steps) = &ex[0];
    assert_eq!(e.status, "ended");
    assert_eq!(e.contact, CONTACT);
    assert_eq!(step_names(steps), ["ask", "thanks", "Ended"]);
    assert_eq!(e.context["widgets"]["ask"]["outbound"]["Sid"], "smsc-1");
    assert_eq!(e.context["widgets"]["thanks"]["message"]["Sid"], "smsc-2");
    assert_eq!(e.context["widgets"]["ask"]["inbound"]["Body"], "Ada");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_webhook_delivers_once_per_message_sid() {
    let recorder = Recorder::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = recorder.config(tmp.path(), "");
    let flow = flow_path("sms-echo.json");
    let gw = Gateway::start_in(
        tmp.path(),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let flow_sid = LoadedFlow::from_file(&flow).unwrap().sid;
    let inbound = Inbound::new(&gw, &flow_sid);
    // The same signed request five times over: a provider retrying, or someone replaying it.
    let params = Inbound::params(CONTACT, "once");
    let sig = signature::sign(AUTH_TOKEN, &inbound.url, &params);
    for _ in 0..5 {
        let (status, _, body) = inbound.post_signed(&inbound.url, &params, &sig).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A new message (another MessageSid) is a new delivery.
    let (status, _, _) = inbound.send(CONTACT, "twice").await;
    assert_eq!(status, StatusCode::OK);
    let sent = recorder.wait_messages(3, Duration::from_secs(3)).await;
    let bodies: Vec<&str> = sent.iter().map(|m| m.get("Body")).collect();
    assert_eq!(
        bodies,
        ["You said: once", "You said: twice"],
        "one reply per message"
    );
    assert_eq!(executions(&gw, &flow).await.len(), 2);
}

/// A SIP MESSAGE request from this test, from `source`, to the gateway.
async fn sip_message(gw: &Gateway, source: &str, to: &str, body: &str) -> String {
    let sock = tokio::net::UdpSocket::bind((source, 0)).await.unwrap();
    let me = sock.local_addr().unwrap();
    let branch = format!("z9hG4bK{:08x}", rand::random::<u32>());
    let req = format!(
        "MESSAGE sip:{to}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch}\r\n\
         From: <sip:{CONTACT}@{me}>;tag=f{branch}\r\nTo: <sip:{to}@{gw}>\r\nCall-ID: {branch}@sms\r\n\
         CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        gw = gw.sip,
    );
    sock.send_to(req.as_bytes(), gw.sip).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("an answer to MESSAGE")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_message_from_a_source_that_is_not_an_sms_trunk_sends_nothing() {
    // The SIP ACL admits all of loopback (calls may come from anywhere on it), but the only SMS
    // trunk is 127.0.0.3: a MESSAGE from 127.0.0.1 must not turn into a paid SMS.
    let recorder = Recorder::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = recorder.config(tmp.path(), "\n[sip]\nmessage_from = [\"127.0.0.3\"]\n");
    let flow = flow_path("sms-echo.json");
    let gw = Gateway::start_in(
        tmp.path(),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let answer = sip_message(&gw, "127.0.0.1", "+15559990000", "toll fraud").await;
    assert!(answer.starts_with("SIP/2.0 403"), "{answer}");
    // The trunk's own MESSAGE is inbound SMS and is answered through the provider.
    let answer = sip_message(&gw, "127.0.0.3", NUMBER, "from the trunk").await;
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    let sent = recorder.wait_messages(2, Duration::from_secs(3)).await;
    let bodies: Vec<&str> = sent.iter().map(|m| m.get("Body")).collect();
    assert_eq!(bodies, ["You said: from the trunk"]);
}

/// A loopback port with nothing listening on it.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_even_at_trace_level() {
    let api_token = "api-token-9d8e7f6a5b4c3d2e1f0011";
    let sink_pass = "sink-pass-7f3a9c55e1";
    let recorder = Recorder::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("switchboard.toml");
    // An event sink with credentials in its URL that cannot be reached: its warnings name it.
    std::fs::write(
        &cfg,
        format!(
            "[[messaging.providers]]\nname = \"default\"\nkind = \"twilio\"\nbase_url = \"{}\"\n\
             account_sid = \"{PROVIDER_SID}\"\nauth_token = \"{PROVIDER_TOKEN}\"\n\n\
             [events]\nsinks = [\"http://sinkuser:{sink_pass}@127.0.0.1:{}/events?token={sink_pass}\"]\n\
             flush_ms = 50\nmax_attempts = 2\nretry_base_ms = 10\n",
            recorder.base,
            dead_port()
        ),
    )
    .unwrap();
    let log = tmp.path().join("gateway.log");
    let flow = flow_path("sms-echo.json");
    let mut gw = Gateway::start_logging(
        &tmp.path().join("data"),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
        Some((ACCOUNT_SID, api_token)),
        Some(&log),
    );
    // A conversation through the webhook and the provider, and a call.
    let inbound = Inbound::new(&gw, &LoadedFlow::from_file(&flow).unwrap().sid);
    let params = Inbound::params(CONTACT, "hello");
    let sig = signature::sign(api_token, &inbound.url, &params);
    let (status, _, _) = inbound.post_signed(&inbound.url, &params, &sig).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        recorder
            .wait_messages(1, Duration::from_secs(3))
            .await
            .len(),
        1
    );
    let phone = Phone::dial(gw.sip, CONTACT, Offer::Rfc4733).await;
    phone.wait_bye(Duration::from_secs(5)).await;
    // The API with the right and a wrong password.
    let http = switchboard::web::plain_client();
    for pass in [api_token, "wrong-password-123"] {
        let _ = http
            .get(format!("{}/v2/Flows", gw.base_url()))
            .basic_auth(ACCOUNT_SID, Some(pass))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    gw.kill();

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("event sink unreachable"),
        "the sink's warnings were logged"
    );
    assert!(
        text.contains("sinkuser:***@"),
        "the sink is named, redacted"
    );
    for secret in [api_token, PROVIDER_TOKEN, sink_pass, "wrong-password-123"] {
        let hits: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(secret))
            .take(3)
            .collect();
        assert!(hits.is_empty(), "{secret} in the log: {hits:#?}");
    }

    // A database URL with a password, refused at start: the error names it redacted.
    let db_pass = "db-pass-31c0ffee";
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"postgres://sb:{db_pass}@127.0.0.1:{}/sb?password={db_pass}\"\n",
            dead_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "serve",
            "--sip-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("data2"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("sb:***@127.0.0.1"), "{all}");
    assert!(!all.contains(db_pass), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_waiting_through_a_kill_9_resumes_on_the_reply() {
    let k = KilledWhileWaiting::new("sms-survey.json").await;
    let (recorder, flow, flow_sid) = (&k.recorder, &k.flow, &k.flow_sid);

    // After the restart the waiting execution is still active (not ended as an orphan), and
    // the reply carries it on.
    let gw = k.start();
    let ex = executions(&gw, flow).await;
    assert_eq!(ex.len(), 1);
    assert_eq!(
        ex[0].0.status, "active",
        "a waiting conversation survives the restart"
    );
    let (status, _, _) = Inbound::new(&gw, flow_sid).send(CONTACT, "Ada").await;
    assert_eq!(status, StatusCode::OK);
    let sent = recorder.wait_messages(2, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    let ex = executions(&gw, flow).await;
    assert_eq!(
        ex.len(),
        1,
        "the reply resumed the execution, it did not start another"
    );
    assert!(
        step_names(&ex[0].1).len() >= 2,
        "{:?}",
        step_names(&ex[0].1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_message_during_a_call_texts_the_caller_and_the_call_goes_on() {
    let recorder = Recorder::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = recorder.config(tmp.path(), "");
    let flow = flow_path("call-texts-link.json");
    let gw = Gateway::start_in(
        tmp.path(),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let phone = Phone::dial(gw.sip, CONTACT, Offer::Rfc4733).await;
    let sent = recorder.wait_messages(1, Duration::from_secs(15)).await;
    let texted_at = Instant::now();
    assert_eq!(sent.len(), 1, "one SMS through the provider");
    assert_eq!(sent[0].get("To"), CONTACT, "to the caller");
    assert!(sent[0].get("Body").contains("https://example.com/help"));
    assert_eq!(sent[0].account, PROVIDER_SID);
    phone.wait_bye(Duration::from_secs(20)).await;
    // The caller heard the next prompt after the text went out.
    let after = phone
        .heard
        .lock()
        .unwrap()
        .audio_frames()
        .iter()
        .filter(|(t, f)| *t > texted_at && rms(f) > 500.0)
        .count();
    assert!(after > 25, "{after} loud frames after the SMS");
    let ex = wait_until(&gw, &flow, Duration::from_secs(10), |ex| {
        ex.len() == 1 && ex[0].0.status == "ended"
    })
    .await;
    let step = ex[0].1.iter().find(|s| s.name == "text_link").unwrap();
    assert_eq!(step.event, "sent");
    assert!(step.context["widgets"]["text_link"]["message"]["Sid"]
        .as_str()
        .is_some_and(|s| s.starts_with("SM")));
    assert_eq!(step_names(&ex[0].1), ["hello", "text_link", "bye", "Ended"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_for_the_callers_sms_reply_and_goes_on_with_it() {
    if !peer_available("espeak-ng") {
        return;
    }
    let recorder = Recorder::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = recorder.config(tmp.path(), "");
    let flow = flow_path("call-asks-by-sms.json");
    let gw = Gateway::start_in(
        tmp.path(),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let phone = Phone::dial(gw.sip, CONTACT, Offer::Rfc4733).await;
    let sent = recorder.wait_messages(1, Duration::from_secs(15)).await;
    assert_eq!(sent.len(), 1, "the question went out by SMS");
    assert_eq!(sent[0].get("To"), CONTACT);
    assert_eq!(sent[0].get("Body"), "Reply with your zip code");
    // The caller answers by SMS while still on the call.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        phone.heard.lock().unwrap().bye_at.is_none(),
        "still on the call"
    );
    let replied_at = Instant::now();
    let flow_sid = LoadedFlow::from_file(&flow).unwrap().sid;
    let (status, _, _) = Inbound::new(&gw, &flow_sid).send(CONTACT, "90210").await;
    assert_eq!(status, StatusCode::OK);
    phone.wait_bye(Duration::from_secs(20)).await;
    let spoken = phone
        .heard
        .lock()
        .unwrap()
        .audio_frames()
        .iter()
        .filter(|(t, f)| *t > replied_at && rms(f) > 500.0)
        .count();
    assert!(
        spoken > 25,
        "the caller heard the answer: {spoken} loud frames"
    );
    let ex = wait_until(&gw, &flow, Duration::from_secs(10), |ex| {
        ex.len() == 1 && ex[0].0.status == "ended"
    })
    .await;
    assert_eq!(step_names(&ex[0].1), ["ask", "thanks", "Ended"]);
    let ask = ex[0].1.iter().find(|s| s.name == "ask").unwrap();
    assert_eq!(ask.event, "incomingMessage");
    assert_eq!(ask.context["widgets"]["ask"]["inbound"]["Body"], "90210");
    // The reply was the call's: no conversation was started for it.
    assert_eq!(ex.len(), 1);
}
