//! The Studio REST API v2 over real HTTP against the real binary: auth, flows, revisions,
//! validation, test users, executions (409 for a second active one), steps and contexts.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{Gateway, ACCOUNT_SID, AUTH_TOKEN};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture")
}

struct Client {
    base: String,
    http: reqwest::Client,
    auth: Option<(String, String)>,
}

impl Client {
    fn new(g: &Gateway) -> Client {
        switchboard::web::install_crypto_provider();
        Client {
            base: g.base_url(),
            http: switchboard::web::plain_client(),
            auth: Some((ACCOUNT_SID.into(), AUTH_TOKEN.into())),
        }
    }

    async fn call(&self, method: Method, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self.http.request(method.clone(), url);
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        if method == Method::POST {
            req = req.form(form);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (status, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, &[]).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        self.call(Method::POST, path, form).await
    }

    async fn create_flow(&self, name: &str, status: &str, definition: &str) -> Value {
        let (s, b) = self
            .post(
                "/v2/Flows",
                &[
                    ("FriendlyName", name),
                    ("Status", status),
                    ("Definition", definition),
                    ("CommitMessage", "first"),
                ],
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b
    }
}

fn assert_twilio_error(body: &Value, status: u16, code: u64) {
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        body["more_info"],
        format!("https://www.twilio.com/docs/errors/{code}")
    );
}

fn twilio_date(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 20
            && s.ends_with('Z')
            && chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ").is_ok()
    })
}

#[tokio::test]
async fn auth_is_required_and_checked() {
    let g = Gateway::start(None);
    let mut c = Client::new(&g);
    let health = c
        .http
        .get(format!("{}/healthz", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "/healthz needs no credentials"
    );

    c.auth = None;
    let resp = c
        .http
        .get(format!("{}/v2/Flows", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Basic realm=\"Switchboard\""
    );
    let body: Value = resp.json().await.unwrap();
    assert_twilio_error(&body, 401, 20003);

    c.auth = Some((ACCOUNT_SID.into(), "wrong".into()));
    let (s, b) = c.get("/v2/Flows").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_twilio_error(&b, 401, 20003);
    c.auth = Some(("ACnope".into(), AUTH_TOKEN.into()));
    assert_eq!(c.get("/v2/Flows").await.0, StatusCode::UNAUTHORIZED);
    // Unknown paths are not revealed without credentials either.
    assert_eq!(c.get("/v2/Nothing").await.0, StatusCode::UNAUTHORIZED);

    c.auth = Some((ACCOUNT_SID.into(), AUTH_TOKEN.into()));
    let (s, b) = c.get("/v2/Flows").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = c.get("/v2/Nothing").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_twilio_error(&b, 404, 20404);
}

#[tokio::test]
async fn flows_revisions_validation_and_paging() {
    let g = Gateway::start(None);
    let c = Client::new(&g);
    let def = fixture("studio-flows/outgoing-call-hello-world.json");
    let flow = c.create_flow("Hello", "draft", &def).await;
    let sid = flow["sid"].as_str().unwrap().to_string();
    assert!(sid.starts_with("FW") && sid.len() == 34, "{sid}");
    assert_eq!(flow["account_sid"], ACCOUNT_SID);
    assert_eq!(flow["friendly_name"], "Hello");
    assert_eq!(flow["status"], "draft");
    assert_eq!(flow["revision"], 1);
    assert_eq!(flow["commit_message"], "first");
    assert_eq!(flow["valid"], true);
    assert_eq!(flow["errors"], serde_json::json!([]));
    assert!(flow["warnings"].is_array());
    let expected: Value = serde_json::from_str(&def).unwrap();
    assert_eq!(flow["definition"], expected);
    assert!(
        twilio_date(&flow["date_created"]),
        "{}",
        flow["date_created"]
    );
    assert!(twilio_date(&flow["date_updated"]));
    let url = format!("{}/v2/Flows/{sid}", g.base_url());
    assert_eq!(flow["url"], url);
    assert_eq!(flow["links"]["revisions"], format!("{url}/Revisions"));
    assert_eq!(flow["links"]["test_users"], format!("{url}/TestUsers"));
    assert_eq!(flow["links"]["executions"], format!("{url}/Executions"));
    assert!(flow["webhook_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/Flows/{sid}")));

    // Invalid definitions are refused with the state and JSON path at fault.
    let bad = fixture("studio-flows-invalid/legal-intake.json");
    let (s, b) = c
        .post(
            "/v2/Flows",
            &[
                ("FriendlyName", "bad"),
                ("Status", "draft"),
                ("Definition", &bad),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_twilio_error(&b, 400, 20001);
    let errors = b["details"]["errors"].as_array().unwrap();
    let e = errors
        .iter()
        .find(|e| e["state"] == "Hangup")
        .unwrap_or_else(|| panic!("{b}"));
    assert!(
        e["property_path"]
            .as_str()
            .unwrap()
            .starts_with("$.states["),
        "{e}"
    );
    assert!(b["message"].as_str().unwrap().contains("state \""), "{b}");
    let (s, b) = c
        .post("/v2/Flows", &[("FriendlyName", "x"), ("Status", "draft")])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["message"].as_str().unwrap().contains("Definition"), "{b}");
    let (s, _) = c
        .post(
            "/v2/Flows",
            &[
                ("FriendlyName", "x"),
                ("Status", "live"),
                ("Definition", &def),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Validate.
    let form = |d: &'static str| {
        [
            ("FriendlyName", "v"),
            ("Status", "draft"),
            ("Definition", d),
        ]
    };
    let def_static: &'static str = Box::leak(def.clone().into_boxed_str());
    let bad_static: &'static str = Box::leak(bad.into_boxed_str());
    let (s, b) = c.post("/v2/Flows/Validate", &form(def_static)).await;
    assert_eq!((s, b), (StatusCode::OK, serde_json::json!({"valid": true})));
    let (s, b) = c.post("/v2/Flows/Validate", &form(bad_static)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["details"]["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{b}"
    );
    let (s, _) = c.post("/v2/Flows/Validate", &form("{not json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Publishing is an update: a new revision.
    let (s, up) = c
        .post(
            &format!("/v2/Flows/{sid}"),
            &[("Status", "published"), ("CommitMessage", "go live")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{up}");
    assert_eq!(up["revision"], 2);
    assert_eq!(up["status"], "published");
    assert_eq!(up["friendly_name"], "Hello");
    assert_eq!(up["commit_message"], "go live");
    assert_eq!(up["definition"], expected);
    let (s, fetched) = c.get(&format!("/v2/Flows/{sid}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(fetched["revision"], 2);
    // A draft on top keeps the published revision.
    let (s, up) = c
        .post(
            &format!("/v2/Flows/{sid}"),
            &[("Status", "draft"), ("FriendlyName", "Hello v3")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{up}");
    assert_eq!(
        (up["revision"].as_i64(), up["status"].as_str()),
        (Some(3), Some("draft"))
    );

    let (s, revs) = c.get(&format!("/v2/Flows/{sid}/Revisions")).await;
    assert_eq!(s, StatusCode::OK);
    let list = revs["revisions"].as_array().unwrap();
    assert_eq!(
        list.iter()
            .map(|r| r["revision"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert_eq!(revs["meta"]["key"], "revisions");
    let (_, r) = c
        .get(&format!("/v2/Flows/{sid}/Revisions/LatestPublished"))
        .await;
    assert_eq!(
        (r["revision"].as_i64(), r["status"].as_str()),
        (Some(2), Some("published"))
    );
    let (_, r) = c
        .get(&format!("/v2/Flows/{sid}/Revisions/LatestRevision"))
        .await;
    assert_eq!(
        (r["revision"].as_i64(), r["friendly_name"].as_str()),
        (Some(3), Some("Hello v3"))
    );
    let (_, r) = c.get(&format!("/v2/Flows/{sid}/Revisions/1")).await;
    assert_eq!(r["status"], "draft");
    assert_eq!(r["url"], format!("{url}/Revisions/1"));
    assert_eq!(
        c.get(&format!("/v2/Flows/{sid}/Revisions/9")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.get(&format!("/v2/Flows/{sid}/Revisions/x")).await.0,
        StatusCode::NOT_FOUND
    );

    // Paging: three flows, two per page; clients follow next_page_url as given.
    c.create_flow("Two", "draft", &def).await;
    c.create_flow("Three", "published", &def).await;
    let (s, p1) = c.get("/v2/Flows?PageSize=2").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p1["flows"].as_array().unwrap().len(), 2);
    let meta = &p1["meta"];
    assert_eq!(meta["key"], "flows");
    assert_eq!(meta["page"], 0);
    assert_eq!(meta["page_size"], 2);
    assert_eq!(meta["previous_page_url"], Value::Null);
    assert!(meta["first_page_url"]
        .as_str()
        .unwrap()
        .starts_with(&g.base_url()));
    let next = meta["next_page_url"].as_str().unwrap().to_string();
    let (s, p2) = c.get(&next).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p2["flows"].as_array().unwrap().len(), 1);
    assert_eq!(p2["meta"]["page"], 1);
    assert_eq!(p2["meta"]["next_page_url"], Value::Null);
    assert!(p2["meta"]["previous_page_url"].is_string());
    let mut names: Vec<_> = p1["flows"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["flows"].as_array().unwrap())
        .map(|f| f["friendly_name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["Hello v3", "Three", "Two"]);
    assert_eq!(
        c.get("/v2/Flows?PageSize=0").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        c.get("/v2/Flows?PageSize=1001").await.0,
        StatusCode::BAD_REQUEST
    );

    // Delete.
    let (s, b) = c
        .call(Method::DELETE, &format!("/v2/Flows/{sid}"), &[])
        .await;
    assert_eq!((s, b), (StatusCode::NO_CONTENT, Value::Null));
    let (s, b) = c.get(&format!("/v2/Flows/{sid}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_twilio_error(&b, 404, 20404);
    assert_eq!(
        c.call(Method::DELETE, &format!("/v2/Flows/{sid}"), &[])
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

/// A TCP port that accepts connections (in the kernel's backlog) and never answers: an HTTP
/// widget calling it keeps its execution active until the request times out.
fn silent_server() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

async fn wait_for<F, Fut>(what: &str, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn executions_one_active_per_contact_steps_and_context() {
    let g = Gateway::start(None);
    let c = Client::new(&g);
    let (_hold, silent) = silent_server();
    // The fixture's incomingRequest goes to an HTTP widget; point it at the silent server.
    let def = fixture("studio-flows/daily-sit-down-parent.json")
        .replace("https://ngrok.anthonydellavecchia.com", &silent);
    let flow = c.create_flow("Daily", "published", &def).await;
    let fsid = flow["sid"].as_str().unwrap().to_string();
    let execs = format!("/v2/Flows/{fsid}/Executions");

    let start = [
        ("To", "+15550100001"),
        ("From", "+15550199999"),
        ("Parameters", r#"{"team":"blue","n":3}"#),
    ];
    let (s, e) = c.post(&execs, &start).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let esid = e["sid"].as_str().unwrap().to_string();
    assert!(esid.starts_with("FN") && esid.len() == 34);
    assert_eq!(e["account_sid"], ACCOUNT_SID);
    assert_eq!(e["flow_sid"], fsid);
    assert_eq!(e["contact_channel_address"], "+15550100001");
    assert_eq!(e["status"], "active");
    assert!(twilio_date(&e["date_created"]));
    let eurl = format!("{}{execs}/{esid}", g.base_url());
    assert_eq!(e["url"], eurl);
    assert_eq!(e["links"]["steps"], format!("{eurl}/Steps"));
    assert_eq!(e["links"]["execution_context"], format!("{eurl}/Context"));
    assert_eq!(e["context"]["flow"]["data"]["team"], "blue");
    assert_eq!(e["context"]["flow"]["data"]["n"], 3);

    // Same contact while active: 409, Twilio's way.
    let (s, b) = c.post(&execs, &start).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_twilio_error(&b, 409, 20409);
    assert!(b["message"].as_str().unwrap().contains(&esid), "{b}");
    // Another contact is free.
    let (s, other) = c
        .post(&execs, &[("To", "+15550100002"), ("From", "+15550199999")])
        .await;
    assert_eq!(s, StatusCode::CREATED, "{other}");

    // Steps (the trigger's step is stored before the HTTP widget runs) and contexts.
    let steps = wait_for("the trigger step", || async {
        let (s, b) = c.get(&format!("{execs}/{esid}/Steps")).await;
        assert_eq!(s, StatusCode::OK);
        b["steps"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map(|_| b.clone())
    })
    .await;
    assert_eq!(steps["meta"]["key"], "steps");
    let step = &steps["steps"][0];
    let ssid = step["sid"].as_str().unwrap();
    assert!(ssid.starts_with("FT"));
    assert_eq!(step["account_sid"], ACCOUNT_SID);
    assert_eq!(step["flow_sid"], fsid);
    assert_eq!(step["execution_sid"], esid);
    assert_eq!(step["name"], "Trigger");
    assert_eq!(step["transitioned_from"], "Trigger");
    assert_eq!(step["transitioned_to"], "schedule_multiple_messages");
    assert!(step["context"].is_object());
    assert!(twilio_date(&step["date_created"]) && twilio_date(&step["date_updated"]));
    let surl = format!("{eurl}/Steps/{ssid}");
    assert_eq!(step["url"], surl);
    assert_eq!(step["links"]["step_context"], format!("{surl}/Context"));
    let (s, one) = c.get(&format!("{execs}/{esid}/Steps/{ssid}")).await;
    assert_eq!((s, &one["sid"]), (StatusCode::OK, &step["sid"]));
    let (s, sc) = c.get(&format!("{execs}/{esid}/Steps/{ssid}/Context")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(sc["step_sid"], ssid);
    assert_eq!(sc["execution_sid"], esid);
    assert!(sc["context"].is_object());
    let (s, ctx) = c.get(&format!("{execs}/{esid}/Context")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ctx["account_sid"], ACCOUNT_SID);
    assert_eq!(ctx["flow_sid"], fsid);
    assert_eq!(ctx["execution_sid"], esid);
    assert_eq!(ctx["url"], format!("{eurl}/Context"));
    assert_eq!(
        ctx["context"]["contact"]["channel"]["address"],
        "+15550100001"
    );
    assert_eq!(ctx["context"]["trigger"]["request"]["From"], "+15550199999");
    assert_eq!(ctx["context"]["flow"]["data"]["team"], "blue");

    // End it; the contact can start again.
    let (s, b) = c
        .post(&format!("{execs}/{esid}"), &[("Status", "active")])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, ended) = c
        .post(&format!("{execs}/{esid}"), &[("Status", "ended")])
        .await;
    assert_eq!(s, StatusCode::OK, "{ended}");
    assert_eq!(ended["status"], "ended");
    let (s, again) = c.post(&execs, &start).await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    assert_ne!(again["sid"], esid);
    let (_, old) = c.get(&format!("{execs}/{esid}")).await;
    assert_eq!(old["status"], "ended", "an ended execution stays ended");

    // List, with date filters.
    let (s, list) = c.get(&execs).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["executions"].as_array().unwrap().len(), 3);
    assert_eq!(list["meta"]["key"], "executions");
    let (_, none) = c
        .get(&format!("{execs}?DateCreatedFrom=2999-01-01T00:00:00Z"))
        .await;
    assert_eq!(none["executions"].as_array().unwrap().len(), 0);
    assert!(none["meta"]["url"]
        .as_str()
        .unwrap()
        .contains("DateCreatedFrom=2999-01-01T00%3A00%3A00Z"));
    let (_, all) = c
        .get(&format!(
            "{execs}?DateCreatedFrom=2000-01-01T00:00:00Z&DateCreatedTo=2999-01-01"
        ))
        .await;
    assert_eq!(all["executions"].as_array().unwrap().len(), 3);
    let (_, paged) = c.get(&format!("{execs}?PageSize=2")).await;
    assert_eq!(paged["executions"].as_array().unwrap().len(), 2);
    assert!(paged["meta"]["next_page_url"].is_string());
    assert_eq!(
        c.get(&format!("{execs}?DateCreatedFrom=yesterday")).await.0,
        StatusCode::BAD_REQUEST
    );

    // Delete.
    let (s, _) = c
        .call(Method::DELETE, &format!("{execs}/{esid}"), &[])
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = c.get(&format!("{execs}/{esid}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_twilio_error(&b, 404, 20404);
    assert_eq!(
        c.get(&format!("{execs}/{esid}/Steps")).await.0,
        StatusCode::NOT_FOUND
    );

    // Bad input.
    let (s, b) = c.post(&execs, &[("To", "+1")]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["message"].as_str().unwrap().contains("From"), "{b}");
    let (s, _) = c
        .post(
            &execs,
            &[("To", "+1"), ("From", "+2"), ("Parameters", "[1]")],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = c
        .post(
            "/v2/Flows/FW00000000000000000000000000000000/Executions",
            &[("To", "+1"), ("From", "+2")],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn test_users_run_drafts_and_messages_fail_without_a_provider() {
    let g = Gateway::start(None);
    let c = Client::new(&g);
    // incomingRequest -> send-and-wait-for-reply; no provider is configured, so it fails.
    let def = fixture("studio-flows/requestbin.json");
    let flow = c.create_flow("Bin", "draft", &def).await;
    let fsid = flow["sid"].as_str().unwrap().to_string();
    let execs = format!("/v2/Flows/{fsid}/Executions");
    let form = [("To", "+15550100009"), ("From", "+15550199999")];

    let (s, b) = c.post(&execs, &form).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "a draft-only flow runs for test users only: {b}"
    );
    assert!(b["message"].as_str().unwrap().contains("published"), "{b}");

    let tu = format!("/v2/Flows/{fsid}/TestUsers");
    let (s, b) = c
        .post(
            &tu,
            &[("TestUsers", "+15550100009"), ("TestUsers", "+15550100010")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["sid"], fsid);
    assert_eq!(
        b["test_users"],
        serde_json::json!(["+15550100009", "+15550100010"])
    );
    assert_eq!(b["url"], format!("{}{tu}", g.base_url()));
    let (_, got) = c.get(&tu).await;
    assert_eq!(got["test_users"], b["test_users"]);
    assert_eq!(c.post(&tu, &[]).await.0, StatusCode::BAD_REQUEST);

    let (s, e) = c.post(&execs, &form).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let esid = e["sid"].as_str().unwrap().to_string();
    let done = wait_for("the execution to end", || async {
        let (_, b) = c.get(&format!("{execs}/{esid}")).await;
        (b["status"] == "ended").then_some(b)
    })
    .await;
    assert_eq!(done["status"], "ended");
    let (_, steps) = c.get(&format!("{execs}/{esid}/Steps")).await;
    let names: Vec<_> = steps["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["Trigger", "intro"], "{steps}");
    assert_eq!(steps["steps"][1]["transitioned_to"], "Ended");
}

#[tokio::test]
async fn generated_credentials_are_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let read = || {
        let path = dir.path().join("api-credentials.toml");
        let text = std::fs::read_to_string(&path).expect("credentials file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "credentials file mode {mode:o}");
        }
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k} = \"")))
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("no {k} in {text}"))
                .to_string()
        };
        (field("account_sid"), field("auth_token"))
    };
    let mut g = Gateway::start_with(dir.path(), None, &[], None);
    let (sid, token) = read();
    assert!(sid.starts_with("AC") && sid.len() == 34, "{sid}");
    assert_eq!(token.len(), 32);
    let mut c = Client::new(&g);
    c.auth = Some((sid.clone(), token.clone()));
    assert_eq!(c.get("/v2/Flows").await.0, StatusCode::OK);
    c.auth = Some((ACCOUNT_SID.into(), AUTH_TOKEN.into()));
    assert_eq!(c.get("/v2/Flows").await.0, StatusCode::UNAUTHORIZED);
    let def = fixture("studio-flows/outgoing-call-hello-world.json");
    c.auth = Some((sid.clone(), token.clone()));
    let flow = c.create_flow("Kept", "published", &def).await;
    g.kill();

    let g = Gateway::start_with(dir.path(), None, &[], None);
    assert_eq!(
        read(),
        (sid.clone(), token.clone()),
        "reused across restarts"
    );
    let mut c = Client::new(&g);
    c.auth = Some((sid, token));
    let (s, b) = c
        .get(&format!("/v2/Flows/{}", flow["sid"].as_str().unwrap()))
        .await;
    assert_eq!(s, StatusCode::OK, "flows survive restarts: {b}");
    assert_eq!(b["account_sid"], flow["account_sid"]);
}
