//! The PostgreSQL scale-out path against a real PostgreSQL: a throwaway cluster on loopback
//! (one per test process, one database per test) runs the store's scenarios
//! (`tests/store_scenarios/`, which `tests/store.rs` runs on SQLite), and two gateway nodes
//! share one database the way docs/SCALE-OUT.md describes.
//!
//! PostgreSQL comes from the Debian `postgresql` package (`.ci/run` installs it). Without it the
//! tests skip with a message; with SWITCHBOARD_REQUIRE_PEERS=1 they fail instead.

#[macro_use]
mod store_scenarios;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use store_scenarios::exec;
use support::*;
use switchboard::routing::LoadedFlow;
use switchboard::store::{now_rfc3339, ExecutionRecord, StepRecord, Store, StoreError};
use switchboard::web::signature;

// ---------------------------------------------------------------------------------------------
// A throwaway PostgreSQL cluster.

/// How long a cluster may outlive anything: its watchdog stops it after this even if the test
/// process is still running (and at once when the test process is gone).
const CLUSTER_MAX_SECS: u32 = 900;
const DB_PASSWORD: &str = "sb-test-Pa55";

struct Cluster {
    port: u16,
    sock: PathBuf,
    bin: PathBuf,
    /// Whether commands run as the `postgres` system user (we are root).
    as_postgres: bool,
}

/// The newest `/usr/lib/postgresql/<ver>/bin` with an `initdb`.
fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Cluster {
    /// Run a shell command line as the cluster's owner.
    fn sh(&self, script: &str) -> std::process::Output {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        };
        cmd.stdin(Stdio::null())
            .output()
            .expect("run a PostgreSQL command")
    }

    fn start() -> Result<Cluster, String> {
        let bin = pg_bin().ok_or("no /usr/lib/postgresql/*/bin/initdb")?;
        let as_postgres = is_root();
        // A directory the cluster owner can write: /tmp/switchboard-pg-<pid>-<rand>.
        let dir = std::env::temp_dir().join(format!(
            "switchboard-pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if as_postgres {
            let ok = Command::new("chown")
                .args(["postgres:", &dir.display().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err("cannot chown the cluster directory to postgres".into());
            }
        }
        let c = Cluster {
            port: free_port(),
            sock: dir.clone(),
            bin,
            as_postgres,
        };
        let data = dir.join("data");
        let b = c.bin.display();
        let out = c.sh(&format!(
            "'{b}/initdb' -D '{}' -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >'{}/initdb.log' 2>&1",
            data.display(),
            dir.display()
        ));
        if !out.status.success() {
            let log = std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default();
            return Err(format!("initdb failed: {log}"));
        }
        let out = c.sh(&format!(
            "'{b}/pg_ctl' -D '{}' -l '{}/server.log' -w -t 30 -o \"-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200\" start",
            data.display(),
            dir.display(),
            c.port,
            dir.display()
        ));
        if !out.status.success() {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            return Err(format!("pg_ctl start failed: {log}"));
        }
        // The watchdog: stops the cluster and removes it once this test process is gone, or
        // after CLUSTER_MAX_SECS whatever happens. Detached, with no handle on our output.
        c.sh(&format!(
            "setsid sh -c 'i=0; while [ -d /proc/{pid} ] && [ $i -lt {CLUSTER_MAX_SECS} ]; do sleep 1; i=$((i+1)); done; \
             \"{b}/pg_ctl\" -D \"{data}\" -m immediate -w -t 10 stop; rm -rf \"{dir}\"' </dev/null >/dev/null 2>&1 &",
            pid = std::process::id(),
            data = data.display(),
            dir = dir.display(),
        ));
        let out = c.psql(&format!(
            "CREATE ROLE switchboard LOGIN PASSWORD '{DB_PASSWORD}'"
        ));
        if !out.status.success() {
            return Err(format!(
                "creating the role: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(c)
    }

    fn psql(&self, sql: &str) -> std::process::Output {
        self.sh(&format!(
            "'{}/psql' -X -q -v ON_ERROR_STOP=1 -h '{}' -p {} -U postgres -d postgres -c \"{sql}\"",
            self.bin.display(),
            self.sock.display(),
            self.port
        ))
    }

    /// Stop the server (fast: connections are cut, as when a database host goes away).
    fn stop(&self) {
        let out = self.sh(&format!(
            "'{}/pg_ctl' -D '{}' -m fast -w -t 30 stop",
            self.bin.display(),
            self.sock.join("data").display()
        ));
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start it again on the same port.
    fn restart(&self) {
        let dir = self.sock.display();
        let out = self.sh(&format!(
            "'{}/pg_ctl' -D '{dir}/data' -l '{dir}/server.log' -w -t 30 -o \"-p {} -k '{dir}' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200\" start",
            self.bin.display(),
            self.port,
        ));
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new empty database owned by the test role; its `postgres://` URL (TCP, password).
    fn database(&self) -> String {
        let name = format!("sb_{:016x}", rand::random::<u64>());
        let out = self.psql(&format!("CREATE DATABASE {name} OWNER switchboard"));
        assert!(
            out.status.success(),
            "CREATE DATABASE: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!(
            "postgres://switchboard:{DB_PASSWORD}@127.0.0.1:{}/{name}",
            self.port
        )
    }
}

/// The process's cluster, started on first use; None (after a message) when PostgreSQL is
/// not installed, unless SWITCHBOARD_REQUIRE_PEERS=1 makes that a failure.
fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(c) => Some(c),
        Err(e) => {
            if std::env::var("SWITCHBOARD_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!("PostgreSQL is required (SWITCHBOARD_REQUIRE_PEERS=1): {e}");
            }
            eprintln!("skipping: PostgreSQL not available: {e}");
            None
        }
    }
}

/// A fresh database URL, or None to skip.
fn database() -> Option<String> {
    cluster().map(Cluster::database)
}

// ---------------------------------------------------------------------------------------------
// The store on PostgreSQL: the scenarios every database runs (tests/store_scenarios/, also
// run on SQLite by tests/store.rs), and what only several nodes do.

mod store {
    store_scenarios!(super::database());
}

/// What several nodes do at once: open (create the schema) together, and race to start the
/// one execution of a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_open_together_and_only_one_wins_a_session_on_postgres() {
    let Some(url) = database() else { return };
    let opens = (0..8).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Store::open(&url).await })
    });
    let mut stores = Vec::new();
    for o in opens {
        stores.push(
            o.await
                .unwrap()
                .expect("several nodes open one new database at once"),
        );
    }
    let now = now_rfc3339();
    let tries = stores.iter().enumerate().map(|(i, s)| {
        let s = s.clone();
        let e = exec(
            &format!("FNrace{i}"),
            "active",
            &now,
            Some("contact|FW1|+1"),
        );
        tokio::spawn(async move { s.create_execution(&e).await })
    });
    let mut won = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::ActiveExists(k)) => assert_eq!(k, "contact|FW1|+1"),
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(won, 1, "exactly one execution per session across nodes");
    let active = stores[0].active_for_key("contact|FW1|+1").await.unwrap();
    assert!(active.is_some());
}

// ---------------------------------------------------------------------------------------------
// Two gateway nodes on one PostgreSQL database.

const NUMBER: &str = "+15550199999";

/// Two questions by message (the second with a short timeout) and a greeting by voice.
const TWO_NODE_FLOW: &str = r#"{
  "description": "Scale-out test: two questions by message, a greeting by voice",
  "states": [
    {"name": "Trigger", "type": "trigger", "properties": {"offset": {"x": 0, "y": 0}},
     "transitions": [{"event": "incomingMessage", "next": "ask"}, {"event": "incomingCall", "next": "greet"}, {"event": "incomingRequest"}]},
    {"name": "ask", "type": "send-and-wait-for-reply",
     "properties": {"from": "{{flow.channel.address}}", "body": "Q1 {{trigger.message.Body}}", "timeout": "300", "offset": {"x": 0, "y": 200}},
     "transitions": [{"event": "incomingMessage", "next": "ask2"}, {"event": "timeout", "next": "too-slow"}, {"event": "deliveryFailure"}]},
    {"name": "ask2", "type": "send-and-wait-for-reply",
     "properties": {"from": "{{flow.channel.address}}", "body": "Q2 {{widgets.ask.inbound.Body}}", "timeout": "3", "offset": {"x": 0, "y": 400}},
     "transitions": [{"event": "incomingMessage", "next": "thanks"}, {"event": "timeout", "next": "too-slow"}, {"event": "deliveryFailure"}]},
    {"name": "thanks", "type": "send-message",
     "properties": {"body": "Thanks", "offset": {"x": 0, "y": 600}},
     "transitions": [{"event": "sent"}, {"event": "failed"}]},
    {"name": "too-slow", "type": "send-message",
     "properties": {"body": "Too slow", "offset": {"x": 300, "y": 600}},
     "transitions": [{"event": "sent"}, {"event": "failed"}]},
    {"name": "greet", "type": "say-play",
     "properties": {"say": "Hello.", "voice": "alice", "language": "en-US", "loop": 1, "offset": {"x": 600, "y": 200}},
     "transitions": [{"event": "audioComplete"}]}
  ],
  "initial_state": "Trigger",
  "flags": {"allow_concurrent_calls": true}
}"#;

/// A Twilio-compatible Messages API that records what the nodes send.
#[derive(Default)]
struct Outbox {
    sent: Mutex<Vec<(String, String)>>,
}

async fn outbox_messages(
    State(outbox): State<Arc<Outbox>>,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let form = switchboard::web::params::decode_form(&body);
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (to, text) = (get("To"), get("Body"));
    let n = {
        let mut sent = outbox.sent.lock().unwrap();
        sent.push((to.clone(), text.clone()));
        sent.len()
    };
    (
        StatusCode::CREATED,
        Json(
            json!({"sid": format!("SM{n:032}"), "status": "queued", "to": to, "body": text,
                    "from": get("From"), "num_segments": "1", "num_media": "0", "error_code": null}),
        ),
    )
}

impl Outbox {
    async fn start() -> (Arc<Outbox>, String) {
        let outbox = Arc::new(Outbox::default());
        let app = axum::Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(outbox_messages),
            )
            .with_state(outbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (outbox, base)
    }

    /// Bodies sent to `to`, in order.
    fn to(&self, to: &str) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == to)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// Post a signed inbound message to a node's webhook for the flow; the HTTP status.
async fn deliver(
    http: &reqwest::Client,
    node: &Gateway,
    flow_sid: &str,
    from: &str,
    body: &str,
) -> u16 {
    let url = format!(
        "{}/v1/Accounts/{ACCOUNT_SID}/Flows/{flow_sid}",
        node.base_url()
    );
    let params: Vec<(String, String)> = [
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
    .collect();
    let sig = signature::sign(AUTH_TOKEN, &url, &params);
    http.post(&url)
        .header("X-Twilio-Signature", sig)
        .form(&params)
        .send()
        .await
        .expect("webhook request")
        .status()
        .as_u16()
}

/// The flow's executions of one contact, with their steps, from the shared database.
async fn of_contact(
    store: &Store,
    flow_sid: &str,
    contact: &str,
) -> Vec<(ExecutionRecord, Vec<StepRecord>)> {
    let mut out = Vec::new();
    for e in store.executions_for_flow(flow_sid).await.unwrap() {
        if e.contact == contact {
            let steps = store.steps(&e.sid).await.unwrap();
            out.push((e, steps));
        }
    }
    out
}

async fn wait_for<T, F: Fn(&T) -> bool>(
    within: Duration,
    mut get: impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>,
    done: F,
) -> T {
    let start = Instant::now();
    loop {
        let v = get().await;
        if done(&v) || start.elapsed() > within {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn transitions(steps: &[StepRecord]) -> Vec<String> {
    steps.iter().map(|s| s.transitioned_to.clone()).collect()
}

fn node_config(dir: &Path, db_url: &str, provider: &str) -> PathBuf {
    let path = dir.join("switchboard.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"{db_url}\"\n\n\
             [[messaging.providers]]\nname = \"default\"\nkind = \"twilio\"\nbase_url = \"{provider}\"\n\
             account_sid = \"ACprovider0000000000000000000000000\"\nauth_token = \"provider-token\"\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_sessions_replies_timeouts_and_calls_on_postgres() {
    let Some(db_url) = database() else { return };
    switchboard::web::install_crypto_provider();
    let (outbox, provider) = Outbox::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let flow = tmp.path().join("two-node.json");
    std::fs::write(&flow, TWO_NODE_FLOW).unwrap();
    let flow_sid = LoadedFlow::from_file(&flow).unwrap().sid;
    let cfg = node_config(tmp.path(), &db_url, &provider);
    let cfg = cfg.to_str().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("node-a"), tmp.path().join("node-b"));
    let a = Gateway::start_in(&dir_a, Some(&flow), &["--config", cfg]);
    let b = Gateway::start_in(&dir_b, Some(&flow), &["--config", cfg]);
    assert!(
        !dir_a.join("switchboard.db").exists() && !dir_b.join("switchboard.db").exists(),
        "the nodes use PostgreSQL, not a local SQLite file"
    );
    let store = Store::open(&db_url).await.unwrap();
    let http = switchboard::web::plain_client();

    // 1. One contact's first message reaches both nodes at the same moment: one execution.
    let racer = "+15550100010";
    let (sa, sb) = tokio::join!(
        deliver(&http, &a, &flow_sid, racer, "hello-a"),
        deliver(&http, &b, &flow_sid, racer, "hello-b"),
    );
    assert_eq!((sa, sb), (200, 200));
    let ex = wait_for(
        Duration::from_secs(10),
        || {
            let (s, f) = (store.clone(), flow_sid.clone());
            Box::pin(async move { of_contact(&s, &f, racer).await })
        },
        |ex| {
            ex.iter()
                .any(|(_, st)| transitions(st).contains(&"ask".to_string()))
        },
    )
    .await;
    assert_eq!(ex.len(), 1, "exactly one execution for the contact: {ex:?}");
    let (e, steps) = &ex[0];
    assert_eq!(e.status, "active", "{steps:?}");
    assert_eq!(
        e.active_key.as_deref(),
        Some(format!("contact|{flow_sid}|{racer}").as_str())
    );
    assert_eq!(
        transitions(steps).iter().filter(|t| *t == "ask").count(),
        1,
        "the flow started once: {:?}",
        transitions(steps)
    );
    assert_eq!(
        outbox
            .to(racer)
            .iter()
            .filter(|b| b.starts_with("Q1 "))
            .count(),
        1,
        "one first question: {:?}",
        outbox.to(racer)
    );

    // 2. Node A starts a conversation; the reply reaches node B, which resumes that execution.
    let contact = "+15550100020";
    assert_eq!(deliver(&http, &a, &flow_sid, contact, "hi").await, 200);
    let ex = wait_for(
        Duration::from_secs(10),
        || {
            let (s, f) = (store.clone(), flow_sid.clone());
            Box::pin(async move { of_contact(&s, &f, contact).await })
        },
        |ex| ex.iter().any(|(e, _)| e.wait_until.is_some()),
    )
    .await;
    assert_eq!(ex.len(), 1, "{ex:?}");
    let started = ex[0].0.sid.clone();
    assert_eq!(transitions(&ex[0].1), ["ask"]);
    assert_eq!(outbox.to(contact), ["Q1 hi"]);

    assert_eq!(deliver(&http, &b, &flow_sid, contact, "Ada").await, 200);
    let ex = wait_for(
        Duration::from_secs(10),
        || {
            let (s, f) = (store.clone(), flow_sid.clone());
            Box::pin(async move { of_contact(&s, &f, contact).await })
        },
        |ex| ex.iter().any(|(_, st)| st.len() >= 2),
    )
    .await;
    assert_eq!(ex.len(), 1, "no second execution: {ex:?}");
    assert_eq!(ex[0].0.sid, started, "node B resumed node A's execution");
    assert_eq!(transitions(&ex[0].1), ["ask", "ask2"]);
    assert_eq!(ex[0].1[1].event, "incomingMessage");
    assert_eq!(outbox.to(contact), ["Q1 hi", "Q2 Ada"]);

    // 3. The second question times out after 3 s: both nodes watch the same deadline, it fires once.
    let ex = wait_for(
        Duration::from_secs(15),
        || {
            let (s, f) = (store.clone(), flow_sid.clone());
            Box::pin(async move { of_contact(&s, &f, contact).await })
        },
        |ex| ex.iter().all(|(e, _)| e.status == "ended"),
    )
    .await;
    // Give a second firing (the other node) time to show.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ex2 = of_contact(&store, &flow_sid, contact).await;
    assert_eq!(ex[0].0.status, "ended", "{ex:?}");
    assert_eq!(
        transitions(&ex2[0].1),
        ["ask", "ask2", "too-slow", "Ended"],
        "the timeout fired once"
    );
    assert_eq!(outbox.to(contact), ["Q1 hi", "Q2 Ada", "Too slow"]);

    // 4. A call on each node: both executions are in the one database.
    let mut pa = Phone::dial(a.sip, "+15550100031", Offer::Rfc4733).await;
    let mut pb = Phone::dial(b.sip, "+15550100032", Offer::Rfc4733).await;
    let calls = wait_for(
        Duration::from_secs(10),
        || {
            let (s, f) = (store.clone(), flow_sid.clone());
            Box::pin(async move {
                let mut v = of_contact(&s, &f, "+15550100031").await;
                v.extend(of_contact(&s, &f, "+15550100032").await);
                v
            })
        },
        |v| v.len() == 2 && v.iter().all(|(_, st)| !st.is_empty()),
    )
    .await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    for (e, steps) in &calls {
        assert_eq!(steps[0].transitioned_to, "greet", "{e:?}");
        assert_eq!(steps[0].event, "incomingCall");
    }
    pa.hangup().await;
    pb.hangup().await;
}

// ---------------------------------------------------------------------------------------------
// Kamailio (examples/kamailio) in front of two nodes on one database; SIPp places the calls.

/// Kamailio in the foreground on loopback with the example configuration; killed on drop.
struct Kamailio {
    child: std::process::Child,
    log: PathBuf,
    addr: std::net::SocketAddr,
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM: the main process stops its worker processes (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kamailio {
    fn start(dir: &Path, nodes: &[std::net::SocketAddr]) -> Kamailio {
        let list = dir.join("dispatcher.list");
        let entries: String = nodes.iter().map(|n| format!("1 sip:{n}\n")).collect();
        std::fs::write(&list, entries).unwrap();
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let log = dir.join("kamailio.log");
        let cfg = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/kamailio/kamailio.cfg"
        );
        let child = Command::new("kamailio")
            .args(["-f", cfg, "-DD", "-E", "-m", "64", "-M", "8"])
            .args(["-Y", run.to_str().unwrap()])
            .args(["-A", &format!("LISTEN=udp:127.0.0.1:{port}")])
            .args(["-A", &format!("DISPATCHER_LIST=\"{}\"", list.display())])
            .args(["-A", "PING_INTERVAL=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn kamailio");
        let k = Kamailio {
            child,
            log,
            addr: ([127, 0, 0, 1], port).into(),
        };
        // Ready once it answers a keep-alive.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let me = sock.local_addr().unwrap();
        let start = Instant::now();
        loop {
            let ping = format!(
                "OPTIONS sip:{a} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{r:08x};rport\r\n\
                 From: <sip:test@{me}>;tag={r:x}\r\nTo: <sip:{a}>\r\nCall-ID: {r:x}@ka\r\nCSeq: 1 OPTIONS\r\n\
                 Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                a = k.addr,
                r = rand::random::<u32>()
            );
            let _ = sock.send_to(ping.as_bytes(), k.addr);
            let mut buf = [0u8; 4096];
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]);
                assert_eq!(status_of(&msg), Some(200), "keep-alive answer: {msg}");
                return k;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "kamailio did not start: {}",
                std::fs::read_to_string(&k.log).unwrap_or_default()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_dispatcher_spreads_calls_over_two_nodes_on_postgres() {
    if !peer_available("kamailio") || !peer_available("sipp") {
        return;
    }
    let Some(db_url) = database() else { return };
    let (_outbox, provider) = Outbox::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let flow = tmp.path().join("two-node.json");
    std::fs::write(&flow, TWO_NODE_FLOW).unwrap();
    let flow_sid = LoadedFlow::from_file(&flow).unwrap().sid;
    let cfg = node_config(tmp.path(), &db_url, &provider);
    let cfg = cfg.to_str().unwrap();
    let a = Gateway::start_in(&tmp.path().join("node-a"), Some(&flow), &["--config", cfg]);
    let b = Gateway::start_in(&tmp.path().join("node-b"), Some(&flow), &["--config", cfg]);
    let k = Kamailio::start(tmp.path(), &[a.sip, b.sip]);

    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/through-proxy.xml");
    let calls = 12;
    let sipp_dir = tmp.path().to_path_buf();
    let proxy = k.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .current_dir(&sipp_dir)
            .args(["-sf", scenario, "-s", "ivr", &proxy])
            .args(["-i", "127.0.0.1", "-p", "0", "-mp", "0"])
            .args(["-m", &calls.to_string(), "-l", "12", "-r", "12"])
            .args(["-timeout", "60s", "-timeout_error", "-nostdin"])
            .output()
            .expect("run sipp")
    })
    .await
    .unwrap();
    let log = std::fs::read_to_string(&k.log).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(0),
        "sipp through kamailio failed: {}\n{}\nkamailio: {log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every call is one execution in the shared database, and both nodes answered some.
    let store = Store::open(&db_url).await.unwrap();
    let execs = store.executions_for_flow(&flow_sid).await.unwrap();
    assert_eq!(execs.len(), calls, "one execution per call");
    for e in &execs {
        let steps = store.steps(&e.sid).await.unwrap();
        assert_eq!(steps[0].transitioned_to, "greet", "{e:?}");
    }
    for node in [a.sip, b.sip] {
        let n = log
            .lines()
            .filter(|l| l.contains("INVITE") && l.contains(&format!("-> sip:{node}")))
            .count();
        assert!(n > 0, "no call went to node {node}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_refuses_new_calls_keeps_the_call_in_progress_and_recovers() {
    // A cluster of its own: stopping the shared one would fail the other tests.
    if cluster().is_none() {
        return;
    }
    let own = Cluster::start().expect("a second cluster");
    let db_url = own.database();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("switchboard.toml");
    std::fs::write(&cfg, format!("[database]\nurl = \"{db_url}\"\n")).unwrap();
    let flow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flows/long-prompt.json");
    let gw = Gateway::start_in(
        &tmp.path().join("data"),
        Some(&flow),
        &["--config", cfg.to_str().unwrap()],
    );
    let healthz = || async {
        switchboard::web::plain_client()
            .get(format!("{}/healthz", gw.base_url()))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let call = |max: u64| {
        let target = gw.sip;
        async move {
            Ua::new()
                .await
                .call(
                    target,
                    CallOptions {
                        max_duration: Duration::from_secs(max),
                        hangup_after: Some(Duration::from_millis(300)),
                        ..CallOptions::default()
                    },
                )
                .await
                .final_status
        }
    };
    let mut phone = Phone::dial(gw.sip, "+15550007777", Offer::Rfc4733).await;
    assert_eq!(healthz().await, 200);
    // The call's execution and its first step are stored before the database goes away (a call
    // whose execution cannot be stored at all is hung up, which is not what this test is about).
    let store = Store::open(&db_url).await.unwrap();
    let flow_sid = LoadedFlow::from_file(&flow).unwrap().sid;
    let start = Instant::now();
    loop {
        let ex = store.executions_for_flow(&flow_sid).await.unwrap();
        if let Some(e) = ex.first() {
            if !store.steps(&e.sid).await.unwrap().is_empty() {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the call's execution is stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(store);

    own.stop();
    let down = Instant::now();
    while healthz().await != 503 {
        assert!(
            down.elapsed() < Duration::from_secs(10),
            "the outage is noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        call(5).await,
        503,
        "a new call is refused, not answered and dropped"
    );
    // The call in progress keeps its audio.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let recent = phone
        .heard
        .lock()
        .unwrap()
        .packets
        .iter()
        .filter(|(t, ..)| t.elapsed() < Duration::from_millis(900))
        .count();
    assert!(
        recent >= 30,
        "{recent} packets in the last 0.9 s of the outage"
    );

    own.restart();
    let up = Instant::now();
    while healthz().await != 200 {
        assert!(up.elapsed() < Duration::from_secs(15), "recovers by itself");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(call(10).await, 200, "calls are answered again");
    // The call that lived through the outage ends and is stored whole.
    phone.hangup().await;
    let store = Store::open(&db_url).await.unwrap();
    let start = Instant::now();
    loop {
        let ex = store.executions_for_flow(&flow_sid).await.unwrap();
        let ended = ex.iter().filter(|e| e.status == "ended").count();
        if ex.len() == 2 && ended == 2 {
            let steps = store.steps(&ex[0].sid).await.unwrap();
            assert!(!steps.is_empty());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{ex:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_attached_on_one_node_routes_calls_on_the_other_on_postgres() {
    let Some(db_url) = database() else { return };
    if !peer_available("espeak-ng") {
        return;
    }
    switchboard::web::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    // A configured route elsewhere: no default flow, so an unrouted number gets 404.
    let cfg = tmp.path().join("switchboard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{db_url}\"\n\n[[routes]]\nnumber = \"+15550109999\"\n\
             flow = \"{}/tests/flows/answers-hello.json\"\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let a = Gateway::start_in(&tmp.path().join("node-a"), None, &["--config", cfg]);
    let b = Gateway::start_in(&tmp.path().join("node-b"), None, &["--config", cfg]);
    let number = format!("+1555020{:04}", rand::random::<u16>() % 10_000);
    let call = |gw: &Gateway| {
        let (sip, to) = (gw.sip, number.clone());
        async move {
            Ua::new()
                .await
                .call(
                    sip,
                    CallOptions {
                        to_user: to,
                        max_duration: Duration::from_secs(10),
                        hangup_after: Some(Duration::from_millis(300)),
                        ..CallOptions::default()
                    },
                )
                .await
                .final_status
        }
    };
    assert_eq!(call(&b).await, 404);
    // Node A makes the flow and attaches the number; node B has loaded neither.
    let http = switchboard::web::plain_client();
    let definition = json!({
        "states": [
            {"name": "Trigger", "type": "trigger", "properties": {},
             "transitions": [{"event": "incomingMessage"}, {"event": "incomingCall", "next": "hi"}, {"event": "incomingRequest"}]},
            {"name": "hi", "type": "say-play", "properties": {"say": "Hi."},
             "transitions": [{"event": "audioComplete"}]}
        ],
        "initial_state": "Trigger"
    })
    .to_string();
    let flow: Value = http
        .post(format!("{}/v2/Flows", a.base_url()))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .form(&[
            ("FriendlyName", "shared"),
            ("Status", "published"),
            ("Definition", &definition),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fsid = flow["sid"].as_str().unwrap().to_string();
    let voice_url = format!("https://webhooks.twilio.com/v1/Accounts/{ACCOUNT_SID}/Flows/{fsid}");
    let created = http
        .post(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json",
            a.base_url()
        ))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .form(&[("PhoneNumber", number.as_str()), ("VoiceUrl", &voice_url)])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let pn: Value = created.json().await.unwrap();
    // Node B routes it within its refresh (3 s).
    let until = Instant::now() + Duration::from_secs(8);
    let mut status = 0;
    while Instant::now() < until {
        status = call(&b).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(status, 200, "node B answers the number node A attached");
    let store = Store::open(&db_url).await.unwrap();
    let ex = store.executions_for_flow(&fsid).await.unwrap();
    assert!(!ex.is_empty(), "the call ran the flow");
    // Removed on node A: node B stops routing it too.
    let gone = http
        .delete(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers/{}.json",
            a.base_url(),
            pn["sid"].as_str().unwrap()
        ))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 204);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(call(&b).await, 404);
}
