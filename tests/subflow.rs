//! run-subflow: a child execution with `trigger.parent`, whose variables come back to the parent.

use std::sync::{Arc, Mutex};

use serde_json::Map;
use switchboard::config::{Config, Route};
use switchboard::flow::Message;
use switchboard::messaging::{Conversations, Delivery, InboundMessage, MessageSink, SendFuture};
use switchboard::routing::{LoadedFlow, Router};
use switchboard::runner::{HttpClient, Runner};
use switchboard::store::Store;

#[derive(Default)]
struct Capture(Mutex<Vec<String>>);

impl MessageSink for Capture {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        self.0.lock().unwrap().push(msg.body.clone());
        Box::pin(async { Ok(Map::new()) })
    }
}

const CHILD: &str = r#"{"states":[
  {"name":"Trigger","type":"trigger","properties":{},"transitions":[{"event":"incomingParent","next":"set"}]},
  {"name":"set","type":"set-variables","properties":{"variables":[{"key":"greeting","value":"Hello {{flow.data.name | upcase}} from {{trigger.parent.FlowSid | slice: 0, 2}}"}]},
   "transitions":[{"event":"next"}]}],
  "initial_state":"Trigger","flags":{"allow_concurrent_calls":true}}"#;

fn parent(child_sid: &str) -> String {
    format!(
        r#"{{"states":[
  {{"name":"Trigger","type":"trigger","properties":{{}},"transitions":[{{"event":"incomingMessage","next":"sub"}}]}},
  {{"name":"sub","type":"run-subflow","properties":{{"flow_sid":"{child_sid}","parameters":[{{"key":"name","value":"{{{{trigger.message.Body}}}}"}}]}},
   "transitions":[{{"event":"completed","next":"reply"}},{{"event":"failed","next":"oops"}}]}},
  {{"name":"reply","type":"send-message","properties":{{"body":"{{{{widgets.sub.greeting}}}}"}},"transitions":[{{"event":"sent"}},{{"event":"failed"}}]}},
  {{"name":"oops","type":"send-message","properties":{{"body":"subflow failed"}},"transitions":[{{"event":"sent"}},{{"event":"failed"}}]}}],
  "initial_state":"Trigger","flags":{{"allow_concurrent_calls":true}}}}"#
    )
}

/// Where the parent finds its child.
#[derive(PartialEq)]
enum Child {
    /// Loaded (a route's flow), named by its own SID.
    Loaded,
    /// Named by a Twilio SID that `[subflows]` maps to the child's file.
    Mapped,
    /// Nowhere.
    Missing,
}

/// The Twilio Flow SID an exported parent names.
const TWILIO_CHILD: &str = "FW50120385f4d1e8dcf30c0bcd83695969";

async fn setup(
    child: Child,
) -> (
    Conversations,
    Arc<LoadedFlow>,
    Arc<Capture>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let child_sid = LoadedFlow::from_json("child", CHILD).unwrap().sid;
    let child_path = dir.path().join("child.json");
    let parent_path = dir.path().join("parent.json");
    std::fs::write(&child_path, CHILD).unwrap();
    let named = if child == Child::Mapped {
        TWILIO_CHILD.to_string()
    } else {
        child_sid
    };
    std::fs::write(&parent_path, parent(&named)).unwrap();
    let mut cfg = Config {
        flow: Some(parent_path),
        ..Config::default()
    };
    match child {
        Child::Loaded => cfg.routes.push(Route {
            number: "+15550000001".into(),
            flow: child_path,
        }),
        Child::Mapped => {
            cfg.subflows
                .insert(TWILIO_CHILD.into(), child_path.display().to_string());
        }
        Child::Missing => {}
    }
    let router = Arc::new(Router::from_config(&cfg).unwrap());
    let store = open_store(dir.path()).await;
    let capture = Arc::new(Capture::default());
    let flow = router
        .route_for("+15550199999", switchboard::routing::Incoming::Message)
        .expect("the routed flow");
    let runner = runner(store, router);
    (
        Conversations::new(runner, capture.clone()),
        flow,
        capture,
        dir,
    )
}

async fn open_store(dir: &std::path::Path) -> Store {
    Store::open(&format!("sqlite://{}?mode=rwc", dir.join("db").display()))
        .await
        .unwrap()
}

fn runner(store: Store, router: Arc<Router>) -> Runner {
    Runner {
        store,
        http: HttpClient::new(None),
        router,
        events: None,
        replies: Default::default(),
    }
}

fn msg(body: &str) -> InboundMessage {
    InboundMessage {
        from: "+15550100000".into(),
        to: "+15550199999".into(),
        body: body.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn subflow_returns_its_variables() {
    let (conv, flow, capture, _dir) = setup(Child::Loaded).await;
    let d = conv.inbound(&flow, msg("ada")).await.unwrap();
    assert!(matches!(d, Delivery::Started { .. }), "{d:?}");
    assert_eq!(*capture.0.lock().unwrap(), ["Hello ADA from FW"]);
    // Parent and child are both stored, the child as its own execution.
    let parent = conv
        .runner
        .store
        .executions_for_flow(&flow.sid)
        .await
        .unwrap();
    assert_eq!(parent.len(), 1);
    assert_eq!(parent[0].status, "ended");
}

#[tokio::test]
async fn missing_subflow_takes_failed() {
    let (conv, flow, capture, _dir) = setup(Child::Missing).await;
    conv.inbound(&flow, msg("ada")).await.unwrap();
    assert_eq!(*capture.0.lock().unwrap(), ["subflow failed"]);
    let exec = &conv
        .runner
        .store
        .executions_for_flow(&flow.sid)
        .await
        .unwrap()[0];
    let steps = conv.runner.store.steps(&exec.sid).await.unwrap();
    let sub = steps.iter().find(|s| s.name == "sub").unwrap();
    assert_eq!(sub.event, "failed");
    assert!(
        sub.error.as_deref().unwrap_or("").contains("not loaded"),
        "{sub:?}"
    );
}

#[tokio::test]
async fn a_child_named_by_a_twilio_sid_runs_the_flow_subflows_maps_it_to() {
    let (conv, flow, capture, _dir) = setup(Child::Mapped).await;
    let d = conv.inbound(&flow, msg("ada")).await.unwrap();
    assert!(matches!(d, Delivery::Started { .. }), "{d:?}");
    assert_eq!(*capture.0.lock().unwrap(), ["Hello ADA from FW"]);
}

#[tokio::test]
async fn flow_revision_picks_a_stored_revision_of_the_child() {
    use switchboard::store::{now_rfc3339, RevisionRecord};
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    // A child made through the API: revision 1 says "Hello", revision 2 (published) "Bye".
    let sid = "FW0123456789abcdef0123456789abcdef";
    let rev = |n: i64, definition: &str, status: &str| RevisionRecord {
        flow_sid: sid.into(),
        revision: n,
        friendly_name: "child".into(),
        definition: definition.into(),
        status: status.into(),
        commit_message: None,
        valid: true,
        errors: serde_json::json!([]),
        warnings: serde_json::json!([]),
        date_created: now_rfc3339(),
        date_updated: now_rfc3339(),
    };
    store.create_flow(&rev(1, CHILD, "draft")).await.unwrap();
    store
        .add_revision(&rev(2, &CHILD.replace("Hello", "Bye"), "published"))
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for revision in ["1", "LatestPublished"] {
        let parent_path = dir.path().join(format!("parent-{revision}.json"));
        std::fs::write(
            &parent_path,
            parent(sid).replace(
                r#""flow_sid":"#,
                &format!(r#""flow_revision":"{revision}","flow_sid":"#),
            ),
        )
        .unwrap();
        let cfg = Config {
            flow: Some(parent_path),
            ..Config::default()
        };
        let router = Arc::new(Router::from_config(&cfg).unwrap());
        let flow = router.default_flow();
        let capture = Arc::new(Capture::default());
        let runner = runner(store.clone(), router);
        let conv = Conversations::new(runner, capture.clone());
        let mut m = msg("ada");
        m.from = format!("+1555010{}", bodies.len());
        conv.inbound(&flow, m).await.unwrap();
        bodies.push(capture.0.lock().unwrap().clone());
    }
    assert_eq!(
        bodies,
        [
            vec!["Hello ADA from FW".to_string()],
            vec!["Bye ADA from FW".to_string()]
        ]
    );
}

#[tokio::test]
async fn a_child_that_asks_and_waits_for_a_reply_runs_in_a_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let asking_child = r#"{"states":[
      {"name":"Trigger","type":"trigger","properties":{},"transitions":[{"event":"incomingParent","next":"ask"}]},
      {"name":"ask","type":"send-and-wait-for-reply","properties":{"body":"What is your name?","timeout":"60"},
       "transitions":[{"event":"incomingMessage","next":"set"},{"event":"timeout"},{"event":"deliveryFailure"}]},
      {"name":"set","type":"set-variables","properties":{"variables":[{"key":"greeting","value":"Hello {{widgets.ask.inbound.Body}}"}]},
       "transitions":[{"event":"next"}]}],
      "initial_state":"Trigger","flags":{"allow_concurrent_calls":true}}"#;
    let child_sid = LoadedFlow::from_json("child", asking_child).unwrap().sid;
    let child_path = dir.path().join("child.json");
    let parent_path = dir.path().join("parent.json");
    std::fs::write(&child_path, asking_child).unwrap();
    std::fs::write(&parent_path, parent(&child_sid)).unwrap();
    let mut cfg = Config {
        flow: Some(parent_path),
        ..Config::default()
    };
    cfg.routes.push(Route {
        number: "+15550000001".into(),
        flow: child_path,
    });
    let router = Arc::new(Router::from_config(&cfg).unwrap());
    let flow = router.default_flow();
    let store = open_store(dir.path()).await;
    let capture = Arc::new(Capture::default());
    let runner = runner(store.clone(), router);
    let conv = Conversations::new(runner, capture.clone());
    // The first message runs the parent into the child, which asks and waits.
    let d = conv.inbound(&flow, msg("hi")).await.unwrap();
    assert!(matches!(d, Delivery::Started { .. }), "{d:?}");
    assert_eq!(*capture.0.lock().unwrap(), ["What is your name?"]);
    let parent = store.executions_for_flow(&flow.sid).await.unwrap();
    assert_eq!(parent.len(), 1);
    assert_eq!(parent[0].status, "active");
    assert!(
        parent[0].wait_until.is_some(),
        "the parent waits with its child"
    );
    // The reply goes to the child; it completes, and the parent goes on with its variables.
    let d = conv.inbound(&flow, msg("Ada")).await.unwrap();
    assert!(matches!(d, Delivery::Resumed { .. }), "{d:?}");
    assert_eq!(
        *capture.0.lock().unwrap(),
        ["What is your name?", "Hello Ada"]
    );
    let parent = store.execution(&parent[0].sid).await.unwrap().unwrap();
    assert_eq!(parent.status, "ended");
    let child = store.executions_for_flow(&child_sid).await.unwrap();
    assert_eq!(child.len(), 1);
    assert_eq!(child[0].status, "ended");
    assert_eq!(store.subflow_child(&parent.sid).await.unwrap(), None);
}
