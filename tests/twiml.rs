//! The TwiML interpreter against a real HTTP server on loopback, with a fake voice channel
//! that records what it was asked to do and answers from a script.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode, Uri};
use serde_json::{json, Map, Value};
use switchboard::flow::{Gather, Outcome, Prompt, Record, Redirect};
use switchboard::twiml::{run_redirect, Limits, RedirectEnv, VoiceOps};
use switchboard::web::signature;

const TOKEN: &str = "tok-twiml-test";

/// One request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: HashMap<String, String>,
    form: HashMap<String, String>,
    signed: bool,
}

/// An answer: status, body (`{base}` becomes the server's URL), delay in milliseconds.
type Answer = (u16, String, u64);

/// Per path: the answers to give, in turn (the last one repeats).
#[derive(Clone, Default)]
struct App {
    base: Arc<Mutex<String>>,
    routes: Arc<Mutex<HashMap<String, VecDeque<Answer>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn pairs(s: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{s}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

async fn handle(
    State(app): State<App>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let base = app.base.lock().unwrap().clone();
    let query = pairs(uri.query().unwrap_or(""));
    let form = pairs(&String::from_utf8_lossy(&body));
    let full = format!(
        "{base}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let given = headers
        .get("X-Twilio-Signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let signed = if method == HttpMethod::GET {
        signature::valid(TOKEN, &full, &[], given)
    } else {
        signature::valid(TOKEN, &full, &form, given)
    };
    app.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: query.into_iter().collect(),
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
    let (status, body, delay) = answer.unwrap_or((404, "not found".into(), 0));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.replace("{base}", &base),
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

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.lock().unwrap())
    }

    /// Serve `twiml` at `path` (after the answers already queued there).
    fn serve(&self, path: &str, twiml: &str) -> &Self {
        self.answer(path, 200, twiml, 0)
    }

    fn answer(&self, path: &str, status: u16, body: &str, delay_ms: u64) -> &Self {
        self.routes
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push_back((status, body.to_string(), delay_ms));
        self
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A voice channel that logs what it was asked and answers from a script.
#[derive(Default)]
struct FakeOps {
    log: Vec<String>,
    gathers: VecDeque<Outcome>,
    records: VecDeque<Outcome>,
    dials: VecDeque<Outcome>,
    /// What say_play answers (AudioComplete when None).
    say_outcome: Option<Outcome>,
    /// Pauses really wait.
    real_pauses: bool,
}

impl VoiceOps for FakeOps {
    async fn say_play(&mut self, p: &Prompt) -> Outcome {
        if let Some(s) = &p.say {
            self.log.push(format!("say:{s}"));
        }
        if let Some(u) = &p.play {
            self.log.push(format!("play:{u}"));
        }
        if let Some(d) = &p.digits {
            self.log.push(format!("digits:{d}"));
        }
        self.say_outcome.clone().unwrap_or(Outcome::AudioComplete)
    }

    async fn gather(&mut self, g: &Gather) -> Outcome {
        self.log.push(format!(
            "gather:{}|timeout={}|finish={}|num={:?}",
            g.prompt.say.as_deref().unwrap_or(""),
            g.timeout_secs,
            g.finish_on_key,
            g.number_of_digits
        ));
        self.gathers.pop_front().unwrap_or(Outcome::Digits {
            digits: String::new(),
        })
    }

    async fn record(&mut self, r: &Record) -> Outcome {
        self.log.push(format!(
            "record:max={}|finish={}|beep={}",
            r.max_length_secs, r.finish_on_key, r.play_beep
        ));
        self.records.pop_front().unwrap_or(Outcome::NoAudio)
    }

    async fn pause(&mut self, d: Duration) -> Outcome {
        self.log.push(format!("pause:{}", d.as_secs()));
        if self.real_pauses {
            tokio::time::sleep(d).await;
        }
        Outcome::AudioComplete
    }

    async fn dial(&mut self, c: &switchboard::flow::Connect) -> Outcome {
        self.log.push(format!(
            "dial:{}|{}|sip={:?}|timeout={}|caller_id={:?}|digits={:?}|star={}",
            c.noun,
            c.to,
            c.sip_endpoint,
            c.timeout_secs,
            c.caller_id,
            c.send_digits,
            c.hangup_on_star
        ));
        self.dials.pop_front().unwrap_or(Outcome::Hangup)
    }

    async fn send_message(&mut self, m: &switchboard::flow::Message) -> Outcome {
        self.log
            .push(format!("message:{}>{}:{}", m.from, m.to, m.body));
        let mut fields = serde_json::Map::new();
        fields.insert("Sid".into(), json!("SM1"));
        Outcome::MessageSent { fields }
    }

    async fn refer(&mut self, target: &str) -> switchboard::twiml::Transfer {
        self.log.push(format!("refer:{target}"));
        switchboard::twiml::Transfer {
            completed: true,
            sip_code: 200,
            hung_up: false,
            error: None,
        }
    }

    fn hangup(&mut self) {
        self.log.push("hangup".into());
    }
}

fn dialled(status: &str, sid: Option<&str>, secs: Option<u32>) -> Outcome {
    Outcome::Dial(Box::new(switchboard::flow::DialResult {
        status: status.into(),
        sid: sid.map(str::to_string),
        duration_secs: secs,
        ..Default::default()
    }))
}

fn call() -> Map<String, Value> {
    let v = json!({
        "CallSid": "CA1", "AccountSid": "AC1", "From": "+15550001", "To": "+15550002",
        "CallStatus": "in-progress", "Direction": "inbound", "ApiVersion": "2010-04-01"
    });
    v.as_object().cloned().unwrap_or_default()
}

async fn run(ops: &mut FakeOps, url: &str, limits: Limits) -> Outcome {
    run_with(ops, url, "POST", 14_400, limits).await
}

async fn run_with(
    ops: &mut FakeOps,
    url: &str,
    method: &str,
    timeout_secs: u32,
    limits: Limits,
) -> Outcome {
    switchboard::web::install_crypto_provider();
    let http = switchboard::web::plain_client();
    let call = call();
    let env = RedirectEnv {
        http: &http,
        call: &call,
        flow_sid: "FW1",
        auth: Some(("AC1", TOKEN)),
        limits,
    };
    let r = Redirect {
        url: url.to_string(),
        method: method.to_string(),
        timeout_secs,
    };
    run_redirect(ops, &env, &r).await
}

fn returned(o: Outcome) -> Map<String, Value> {
    match o {
        Outcome::RedirectReturned { params } => params,
        other => panic!("expected a return to the flow, got {other:?}"),
    }
}

fn failed(o: Outcome) -> String {
    match o {
        Outcome::Failed { error } => error,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn verbs_run_in_order_and_a_document_that_ends_hangs_up() {
    let app = App::start().await;
    app.serve(
        "/start",
        r#"<?xml version="1.0" encoding="UTF-8"?>
        <Response>
          <Say voice="alice">Hello &amp; welcome</Say>
          <Play>/sounds/a.wav</Play>
          <Play digits="12"/>
          <Pause length="2"/>
        </Response>"#,
    );
    let mut ops = FakeOps::default();
    let out = run(&mut ops, &app.url("/start"), Limits::default()).await;
    assert_eq!(out, Outcome::Hangup);
    assert_eq!(
        ops.log,
        vec![
            "say:Hello & welcome".to_string(),
            format!("play:{}", app.url("/sounds/a.wav")),
            "digits:12".into(),
            "pause:2".into(),
            "hangup".into(),
        ]
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    for (k, v) in [
        ("CallSid", "CA1"),
        ("AccountSid", "AC1"),
        ("From", "+15550001"),
        ("To", "+15550002"),
        ("CallStatus", "in-progress"),
        ("Direction", "inbound"),
        ("ApiVersion", "2010-04-01"),
    ] {
        assert_eq!(seen[0].form.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(seen[0].signed, "X-Twilio-Signature must validate");
}

#[tokio::test]
async fn gather_digits_request_the_action_and_its_twiml_returns_to_the_flow() {
    let app = App::start().await;
    app.serve(
        "/start",
        r#"<Response>
            <Gather action="/menu" numDigits="1" timeout="7"><Say>Press one</Say><Say>or two</Say></Gather>
            <Say>not reached</Say>
        </Response>"#,
    )
    .serve(
        "/menu",
        r#"<Response><Say>You chose</Say>
            <Redirect>https://gateway.example/v1/Accounts/AC1/Flows/FW1?FlowEvent=return&amp;choice=1</Redirect>
            <Say>not reached either</Say></Response>"#,
    );
    let mut ops = FakeOps {
        gathers: [Outcome::Digits { digits: "1".into() }].into(),
        ..FakeOps::default()
    };
    let params = returned(run(&mut ops, &app.url("/start"), Limits::default()).await);
    assert_eq!(params["FlowEvent"], "return");
    assert_eq!(params["choice"], "1");
    assert_eq!(params["CallSid"], "CA1");
    assert_eq!(
        ops.log,
        vec![
            "gather:Press one or two|timeout=7|finish=#|num=Some(1)",
            "say:You chose"
        ]
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 2, "the return URL is not fetched: {seen:?}");
    assert_eq!(seen[1].path, "/menu");
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].form.get("Digits").map(String::as_str), Some("1"));
    assert!(seen[1].signed);
}

#[tokio::test]
async fn dial_requests_its_action_with_the_dial_call_status_and_without_one_goes_on() {
    let app = App::start().await;
    app.serve(
        "/start",
        r#"<Response>
            <Dial timeout="9" callerId="+15550009" hangupOnStar="true">
              <Number sendDigits="1#">+15551230001</Number><Number>+15551230002</Number>
            </Dial>
            <Say>Back from the first call</Say>
            <Dial action="/after" method="GET"><Sip username="u" password="p">sip:desk@pbx.example</Sip></Dial>
            <Say>not reached</Say>
        </Response>"#,
    )
    .serve(
        "/after",
        "<Response><Redirect>?FlowEvent=return&amp;done=1</Redirect></Response>",
    );
    let mut ops = FakeOps {
        dials: [
            dialled("busy", None, None),
            dialled("completed", Some("CA42"), Some(17)),
        ]
        .into(),
        ..FakeOps::default()
    };
    let params = returned(run(&mut ops, &app.url("/start"), Limits::default()).await);
    assert_eq!(params["done"], "1");
    assert_eq!(
        ops.log,
        vec![
            "dial:number-multi|+15551230001,+15551230002|sip=None|timeout=9|caller_id=Some(\"+15550009\")|digits=Some(\"1#\")|star=true",
            "say:Back from the first call",
            "dial:sip||sip=Some(\"sip:desk@pbx.example\")|timeout=30|caller_id=None|digits=None|star=false",
        ]
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[1].path.as_str(), seen[1].method.as_str()),
        ("/after", "GET")
    );
    assert_eq!(
        seen[1].query.get("DialCallStatus").map(String::as_str),
        Some("completed")
    );
    assert_eq!(
        seen[1].query.get("DialCallSid").map(String::as_str),
        Some("CA42")
    );
    assert_eq!(
        seen[1].query.get("DialCallDuration").map(String::as_str),
        Some("17")
    );
    assert!(seen[1].signed);
}

#[tokio::test]
async fn message_in_voice_twiml_texts_the_caller_and_requests_its_action() {
    let app = App::start().await;
    app.serve(
        "/start",
        r#"<Response>
            <Message>Your code is 42</Message>
            <Say>We sent you a code</Say>
            <Sms to="+15550009" from="+15550008" action="/sent">Second</Sms>
            <Say>not reached</Say>
        </Response>"#,
    )
    .serve(
        "/sent",
        "<Response><Redirect>?FlowEvent=return</Redirect></Response>",
    );
    let mut ops = FakeOps::default();
    returned(run(&mut ops, &app.url("/start"), Limits::default()).await);
    assert_eq!(
        ops.log,
        vec![
            "message:+15550002>+15550001:Your code is 42",
            "say:We sent you a code",
            "message:+15550008>+15550009:Second",
        ]
    );
    let seen = app.seen();
    assert_eq!(seen[1].path, "/sent");
    assert_eq!(
        seen[1].form.get("SmsStatus").map(String::as_str),
        Some("sent")
    );
    assert_eq!(seen[1].form.get("SmsSid").map(String::as_str), Some("SM1"));
}

#[tokio::test]
async fn gather_without_input_goes_on_with_the_next_verb() {
    let app = App::start().await;
    app.serve(
        "/start",
        r#"<Response>
            <Gather action="/menu"><Say>Press something</Say></Gather>
            <Say>We did not hear from you</Say>
            <Redirect>?FlowEvent=return&amp;why=timeout</Redirect>
        </Response>"#,
    );
    let mut ops = FakeOps::default(); // the gather answers with no digits
    let params = returned(run(&mut ops, &app.url("/start"), Limits::default()).await);
    assert_eq!(params["why"], "timeout");
    assert_eq!(params["FlowEvent"], "return");
    assert_eq!(ops.log.len(), 2);
    assert_eq!(ops.log[1], "say:We did not hear from you");
    assert_eq!(app.seen().len(), 1, "no action request without input");
}

#[tokio::test]
async fn gather_without_action_posts_to_the_current_document() {
    let app = App::start().await;
    app.serve(
        "/self",
        r#"<Response><Gather numDigits="2"><Play>beep.wav</Play></Gather></Response>"#,
    )
    .serve(
        "/self",
        r#"<Response><Redirect method="GET">/v1/Accounts/AC1/Flows/FW1?FlowEvent=return</Redirect></Response>"#,
    );
    let mut ops = FakeOps {
        gathers: [Outcome::Digits {
            digits: "42".into(),
        }]
        .into(),
        ..FakeOps::default()
    };
    let params = returned(run(&mut ops, &app.url("/self"), Limits::default()).await);
    assert_eq!(params["FlowEvent"], "return");
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/self");
    assert_eq!(seen[1].form.get("Digits").map(String::as_str), Some("42"));
}

#[tokio::test]
async fn gather_action_to_the_return_url_publishes_the_digits() {
    let app = App::start().await;
    // An app written for Twilio, returning to the flow's Twilio webhook URL (another SID).
    app.serve(
        "/start",
        r#"<Response><Gather action="https://webhooks.twilio.com/v1/Accounts/ACx/Flows/FWelsewhere?FlowEvent=return" numDigits="3"/></Response>"#,
    );
    let mut ops = FakeOps {
        gathers: [Outcome::Digits {
            digits: "123".into(),
        }]
        .into(),
        ..FakeOps::default()
    };
    let params = returned(run(&mut ops, &app.url("/start"), Limits::default()).await);
    assert_eq!(params["Digits"], "123");
    assert_eq!(params["FlowEvent"], "return");
    assert_eq!(params["From"], "+15550001");
}

#[tokio::test]
async fn another_flows_return_url_on_another_host_is_just_a_redirect() {
    let app = App::start().await;
    app.serve(
        "/start",
        "<Response><Redirect>/v1/Accounts/AC1/Flows/FW2?FlowEvent=return</Redirect></Response>",
    )
    .serve(
        "/v1/Accounts/AC1/Flows/FW2",
        "<Response><Reject/></Response>",
    );
    let mut ops = FakeOps::default();
    let out = run(&mut ops, &app.url("/start"), Limits::default()).await;
    assert_eq!(out, Outcome::Hangup);
    assert_eq!(ops.log, vec!["hangup"]);
    assert_eq!(app.seen().len(), 2);
}

#[tokio::test]
async fn record_posts_the_recording_to_the_action() {
    let app = App::start().await;
    app.serve(
        "/start",
        r#"<Response><Say>Leave a message</Say><Record action="/rec" maxLength="20" finishOnKey="*" playBeep="false"/><Say>not reached</Say></Response>"#,
    )
    .serve("/rec", "<Response><Say>Thanks</Say><Hangup/></Response>");
    let mut ops = FakeOps {
        records: [Outcome::Recording {
            url: "http://gw/Recordings/RE1".into(),
            sid: "RE1".into(),
            duration_secs: 4,
            transcription: None,
            hung_up: false,
        }]
        .into(),
        ..FakeOps::default()
    };
    let out = run(&mut ops, &app.url("/start"), Limits::default()).await;
    assert_eq!(out, Outcome::Hangup);
    assert_eq!(
        ops.log,
        vec![
            "say:Leave a message",
            "record:max=20|finish=*|beep=false",
            "say:Thanks",
            "hangup"
        ]
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/rec");
    let f = &seen[1].form;
    assert_eq!(
        f.get("RecordingUrl").map(String::as_str),
        Some("http://gw/Recordings/RE1")
    );
    assert_eq!(f.get("RecordingSid").map(String::as_str), Some("RE1"));
    assert_eq!(f.get("RecordingDuration").map(String::as_str), Some("4"));
    assert_eq!(f.get("CallSid").map(String::as_str), Some("CA1"));
}

#[tokio::test]
async fn empty_recording_goes_on_and_hang_up_while_recording_still_notifies() {
    let app = App::start().await;
    app.serve(
        "/start",
        r#"<Response><Record action="/rec"/><Say>Nothing recorded</Say><Record action="/rec"/></Response>"#,
    )
    .serve("/rec", "<Response><Say>never run</Say></Response>");
    let mut ops = FakeOps {
        records: [
            Outcome::NoAudio,
            Outcome::Recording {
                url: "http://gw/Recordings/RE2".into(),
                sid: "RE2".into(),
                duration_secs: 2,
                transcription: None,
                hung_up: true,
            },
        ]
        .into(),
        ..FakeOps::default()
    };
    let out = run(&mut ops, &app.url("/start"), Limits::default()).await;
    assert_eq!(out, Outcome::Hangup);
    assert_eq!(ops.log.len(), 3, "{:?}", ops.log);
    assert_eq!(ops.log[1], "say:Nothing recorded");
    assert!(
        !ops.log.contains(&"hangup".to_string()),
        "the caller hung up"
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].form.get("RecordingSid").map(String::as_str),
        Some("RE2")
    );
    assert_eq!(
        seen[1].form.get("Digits").map(String::as_str),
        Some("hangup")
    );
}

#[tokio::test]
async fn redirect_chain_with_relative_urls_and_get() {
    let app = App::start().await;
    app.serve(
        "/dir/a",
        r#"<Response><Redirect method="GET">b</Redirect></Response>"#,
    )
    .serve(
        "/dir/b",
        r#"<Response><Say>in b</Say><Redirect>/c?x=1</Redirect></Response>"#,
    )
    .serve(
        "/c",
        r#"<Response><Redirect method="get">?FlowEvent=return&amp;from=c</Redirect></Response>"#,
    );
    let mut ops = FakeOps::default();
    let params = returned(run(&mut ops, &app.url("/dir/a"), Limits::default()).await);
    assert_eq!(params["from"], "c");
    assert_eq!(ops.log, vec!["say:in b"]);
    let seen = app.seen();
    let route: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        route,
        vec![("POST", "/dir/a"), ("GET", "/dir/b"), ("POST", "/c")]
    );
    assert_eq!(
        seen[1].query.get("CallSid").map(String::as_str),
        Some("CA1"),
        "GET carries the call in the query"
    );
    assert!(seen[1].form.is_empty());
    assert_eq!(seen[2].query.get("x").map(String::as_str), Some("1"));
    assert!(seen.iter().all(|s| s.signed), "{seen:?}");
}

#[tokio::test]
async fn widget_get_method_is_used_for_the_first_request() {
    let app = App::start().await;
    app.serve("/start", "<Response><Hangup/></Response>");
    let mut ops = FakeOps::default();
    let out = run_with(
        &mut ops,
        &app.url("/start?lang=en"),
        "GET",
        60,
        Limits::default(),
    )
    .await;
    assert_eq!(out, Outcome::Hangup);
    let seen = app.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].query.get("lang").map(String::as_str), Some("en"));
    assert_eq!(
        seen[0].query.get("To").map(String::as_str),
        Some("+15550002")
    );
    assert!(seen[0].signed);
}

#[tokio::test]
async fn http_errors_fail_naming_the_url() {
    let app = App::start().await;
    app.answer("/broken", 500, "boom", 0);
    let mut ops = FakeOps::default();
    let err = failed(run(&mut ops, &app.url("/broken"), Limits::default()).await);
    assert!(err.contains("/broken") && err.contains("500"), "{err}");
    assert!(ops.log.is_empty());

    // A redirect to a missing document fails after running what came before.
    app.serve(
        "/start",
        "<Response><Say>one</Say><Redirect>/missing</Redirect></Response>",
    );
    let mut ops = FakeOps::default();
    let err = failed(run(&mut ops, &app.url("/start"), Limits::default()).await);
    assert!(err.contains("/missing") && err.contains("404"), "{err}");
    assert_eq!(ops.log, vec!["say:one"]);

    // Nobody listening.
    let mut ops = FakeOps::default();
    let err = failed(run(&mut ops, "http://127.0.0.1:9/twiml", Limits::default()).await);
    assert!(err.contains("http://127.0.0.1:9/twiml"), "{err}");
}

#[tokio::test]
async fn invalid_twiml_fails_naming_the_verb_and_position() {
    let app = App::start().await;
    app.serve(
        "/start",
        "<Response>\n  <Say>hi</Say>\n  <Dance/>\n</Response>",
    )
    .serve("/html", "<html><body>Hello</body></html>")
    .serve("/broken-xml", "<Response><Say>hi</Response>")
    .serve(
        "/enqueue",
        "<Response><Enqueue>support</Enqueue></Response>",
    );
    let mut ops = FakeOps::default();
    let err = failed(run(&mut ops, &app.url("/start"), Limits::default()).await);
    assert!(
        err.contains("<Dance>") && err.contains("line 3, column 3") && err.contains("/start"),
        "{err}"
    );
    assert!(ops.log.is_empty(), "nothing runs from an invalid document");
    let err = failed(run(&mut ops, &app.url("/html"), Limits::default()).await);
    assert!(
        err.contains("<html>") && err.contains("<Response>"),
        "{err}"
    );
    let err = failed(run(&mut ops, &app.url("/broken-xml"), Limits::default()).await);
    assert!(err.contains("malformed XML"), "{err}");
    let err = failed(run(&mut ops, &app.url("/enqueue"), Limits::default()).await);
    assert!(
        err.contains("<Enqueue>") && err.contains("not supported"),
        "{err}"
    );
}

#[tokio::test]
async fn a_redirect_loop_stops_at_the_document_limit() {
    let app = App::start().await;
    app.serve("/loop", "<Response><Redirect>/loop</Redirect></Response>");
    let mut ops = FakeOps::default();
    let err = failed(run(&mut ops, &app.url("/loop"), Limits::default()).await);
    assert!(err.contains("100"), "{err}");
    assert_eq!(app.seen().len(), 100);
}

#[tokio::test]
async fn the_widget_timeout_ends_the_redirect() {
    let app = App::start().await;
    app.serve(
        "/start",
        r#"<Response><Pause length="30"/><Say>late</Say></Response>"#,
    );
    let mut ops = FakeOps {
        real_pauses: true,
        ..FakeOps::default()
    };
    let started = std::time::Instant::now();
    let out = run_with(&mut ops, &app.url("/start"), "POST", 1, Limits::default()).await;
    assert_eq!(out, Outcome::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(ops.log, vec!["pause:30"]);
}

#[tokio::test]
async fn a_slow_server_fails_the_fetch() {
    let app = App::start().await;
    app.answer("/slow", 200, "<Response/>", 3000);
    let mut ops = FakeOps::default();
    let limits = Limits {
        fetch_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let started = std::time::Instant::now();
    let err = failed(run(&mut ops, &app.url("/slow"), limits).await);
    assert!(err.contains("timed out") && err.contains("/slow"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn caller_hang_up_and_reject() {
    let app = App::start().await;
    app.serve(
        "/start",
        "<Response><Say>one</Say><Say>two</Say></Response>",
    )
    .serve(
        "/reject",
        r#"<Response><Reject reason="busy"/><Say>no</Say></Response>"#,
    );
    let mut ops = FakeOps {
        say_outcome: Some(Outcome::Hangup),
        ..FakeOps::default()
    };
    let out = run(&mut ops, &app.url("/start"), Limits::default()).await;
    assert_eq!(out, Outcome::Hangup);
    assert_eq!(
        ops.log,
        vec!["say:one"],
        "we do not hang up a call that is gone"
    );

    let mut ops = FakeOps::default();
    let out = run(&mut ops, &app.url("/reject"), Limits::default()).await;
    assert_eq!(out, Outcome::Hangup);
    assert_eq!(ops.log, vec!["hangup"]);
}

#[tokio::test]
async fn bad_widget_settings_fail() {
    let mut ops = FakeOps::default();
    let err = failed(run(&mut ops, "ftp://example.com/x.xml", Limits::default()).await);
    assert!(err.contains("ftp"), "{err}");
    let err = failed(run(&mut ops, "", Limits::default()).await);
    assert!(err.contains("invalid TwiML URL"), "{err}");
    let err = failed(
        run_with(
            &mut ops,
            "http://127.0.0.1:9/x",
            "PUT",
            10,
            Limits::default(),
        )
        .await,
    );
    assert!(err.contains("PUT"), "{err}");
}
