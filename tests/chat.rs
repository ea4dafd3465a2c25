//! `switchboard chat` drives messaging flows end to end: real fixtures, real HTTP to a local
//! server, reply timeouts, and a conversation that survives killing the process.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/studio-flows");
const FLOWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flows");

struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Chat {
    fn start(flow: &str, extra: &[&str]) -> Chat {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("chat")
            .arg(flow)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chat");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Chat {
            child,
            stdin,
            lines: rx,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn expect(&self, want: &str) {
        match self.lines.recv_timeout(Duration::from_secs(15)) {
            Ok(got) => assert_eq!(got, want),
            Err(e) => panic!("waiting for {want:?}: {e}"),
        }
    }

    /// Close stdin and collect the rest of the output; the process must exit by itself.
    fn finish(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "chat exited with {status}");
        // The reader thread ends at end of output; wait for it rather than racing it.
        self.lines.iter().collect()
    }
}

fn run_script(flow: &str, inputs: &[&str], extra: &[&str]) -> Vec<String> {
    let mut c = Chat::start(flow, extra);
    for i in inputs {
        c.send(i);
    }
    c.finish()
}

#[test]
fn do_you_like_bots_branches_on_the_reply() {
    let flow = format!("{FIXTURES}/conversations-do-you-like-bots.json");
    assert_eq!(
        run_script(&flow, &["hi", "yes"], &[]),
        ["< Hi, do you like bots?", "< 🤖", "-- ended"]
    );
    assert_eq!(
        run_script(&flow, &["hi", "No"], &[]),
        ["< Hi, do you like bots?", "< 👽", "-- ended"]
    );
    assert_eq!(
        run_script(&flow, &["hi", "maybe"], &[]),
        ["< Hi, do you like bots?", "< 👻", "-- ended"]
    );
    // A new message after the end starts a new execution.
    assert_eq!(
        run_script(&flow, &["hi", "yes", "again"], &[]),
        [
            "< Hi, do you like bots?",
            "< 🤖",
            "-- ended",
            "< Hi, do you like bots?"
        ]
    );
}

#[test]
fn support_triage_menu_follows_numbers_and_escapes_newlines() {
    let flow = format!("{FIXTURES}/support-triage-sms.json");
    let out = run_script(&flow, &["oi", "2"], &[]);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out[0].starts_with("< Olá! Seja bem vindo a *Triforsys*!\\n\\n"),
        "{}",
        out[0]
    );
    assert!(out[0].contains("*2* - Financeiro"));
    assert!(out[1].contains("*1* - Extrato de horas"), "{}", out[1]);
    assert!(out.iter().all(|l| !l.contains('\n')));
}

/// A tiny HTTP server on loopback standing in for a customer API.
fn api_server(fail: bool) -> String {
    use axum::routing::{get, post};
    use axum::Json;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = if fail {
                axum::Router::new().route("/customers", get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
            } else {
                axum::Router::new()
                    .route(
                        "/customers",
                        get(|q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                            let name = if q.get("from").map(String::as_str) == Some("+15550100000") { "Ada" } else { "nobody" };
                            Json(serde_json::json!({"name": name, "orders": [1, 2, 3]}))
                        }),
                    )
                    .route(
                        "/orders",
                        post(|Json(v): Json<serde_json::Value>| async move {
                            Json(serde_json::json!({"order": v["order"], "status": format!("shipped to {}", v["from"].as_str().unwrap_or("?"))}))
                        }),
                    )
            };
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", l.local_addr().unwrap())).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

#[test]
fn http_widgets_get_and_post_with_parsed_json() {
    let base = api_server(false);
    let flow = format!("{FLOWS}/http-lookup.json");
    let out = run_script(
        &flow,
        &["hello", "42"],
        &["--data", &format!("base={base}")],
    );
    assert_eq!(
        out,
        [
            "< Hello Ada, you have 3 orders. Reply with an order number.",
            "< Order 42 is shipped to +15550100000",
            "-- ended"
        ]
    );
    let out = run_script(
        &flow,
        &["hello", "forty-two"],
        &["--data", &format!("base={base}")],
    );
    assert_eq!(out[1], "< That is not an order number");
}

#[test]
fn http_failure_takes_the_failed_transition() {
    let base = api_server(true);
    let flow = format!("{FLOWS}/http-lookup.json");
    assert_eq!(
        run_script(&flow, &["hello"], &["--data", &format!("base={base}")]),
        ["< Lookup failed (500)", "-- ended"]
    );
    // Nothing listens here: a connection failure is a failure too, with no status code.
    let out = run_script(&flow, &["hello"], &["--data", "base=http://127.0.0.1:9"]);
    assert_eq!(out, ["< Lookup failed ()", "-- ended"]);
}

#[test]
fn reply_timeout_fires() {
    let base = api_server(false);
    let flow = format!("{FLOWS}/http-lookup.json");
    let mut c = Chat::start(&flow, &["--data", &format!("base={base}")]);
    c.send("hello");
    c.expect("< Hello Ada, you have 3 orders. Reply with an order number.");
    // The widget's timeout is 2 s; stdin stays open and silent.
    c.expect("< No reply, goodbye");
    c.expect("-- ended");
    c.finish();
}

#[test]
fn waiting_conversation_survives_a_killed_process() {
    let flow = format!("{FIXTURES}/conversations-do-you-like-bots.json");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let mut first = Chat::start(&flow, &["--data-dir", data_dir]);
    first.send("hi");
    first.expect("< Hi, do you like bots?");
    first.child.kill().unwrap(); // SIGKILL while the execution waits for the reply
    first.child.wait().unwrap();

    let mut second = Chat::start(&flow, &["--data-dir", data_dir]);
    second.send("no");
    second.expect("< 👽");
    second.expect("-- ended");
    assert!(second.finish().is_empty());
}
