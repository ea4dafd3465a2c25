//! `switchboard chat`: run a messaging flow in the terminal. Each stdin line is an inbound
//! message from `--from`; each outbound message is printed as `< BODY` (newlines escaped as
//! `\n`); `-- ended` marks the end of an execution. The same engine, runner and store as the
//! gateway: with `--data-dir`, a conversation survives a restart of this command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::flow::Message;
use crate::messaging::{Conversations, Delivery, InboundMessage, MessageSink, SendFuture};
use crate::routing::{LoadedFlow, Router};
use crate::runner::{params, Finished, HttpClient, Runner};
use crate::store::{new_sid, Store};

/// `switchboard chat`'s arguments.
pub struct ChatOptions {
    /// The Studio flow file.
    pub flow: PathBuf,
    /// The contact's address (the sender of each line).
    pub from: String,
    /// Our address (the number messaged).
    pub to: String,
    /// `flow.data` for a new execution.
    pub data: Vec<(String, String)>,
    /// Where to keep the store; None: a temporary directory, removed at the end.
    pub data_dir: Option<PathBuf>,
}

struct Terminal;

pub(crate) fn escape(body: &str) -> String {
    body.replace('\\', "\\\\")
        .replace("\r\n", "\\n")
        .replace('\n', "\\n")
}

impl MessageSink for Terminal {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            let line = format!("< {}\n", escape(&msg.body));
            let mut out = tokio::io::stdout();
            out.write_all(line.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            out.flush().await.map_err(|e| e.to_string())?;
            Ok(params([
                ("Sid", new_sid("SM")),
                ("To", msg.to.clone()),
                ("From", msg.from.clone()),
                ("Body", msg.body.clone()),
                ("Status", "sent".to_string()),
            ]))
        })
    }
}

async fn say(line: &str) {
    let mut out = tokio::io::stdout();
    let _ = out.write_all(format!("{line}\n").as_bytes()).await;
    let _ = out.flush().await;
}

async fn report(d: &Finished) {
    if matches!(d, Finished::Ended(_)) {
        say("-- ended").await;
    }
}

/// Run the flow as a conversation in the terminal: each stdin line is an inbound message,
/// each outbound message is printed; until end of input.
pub async fn run(o: ChatOptions) -> anyhow::Result<()> {
    let flow = LoadedFlow::from_file(&o.flow)?;
    for w in flow.flow.warnings() {
        eprintln!("warning: {w}");
    }
    let tmp;
    let dir = match &o.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("creating a temporary data directory")?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = Store::open(&format!(
        "sqlite://{}?mode=rwc",
        dir.join("switchboard.db").display()
    ))
    .await?;
    let router = Arc::new(Router::single(flow));
    let flow = router.default_flow();
    let runner = Runner {
        store: store.clone(),
        http: HttpClient::new(None),
        router,
        events: None,
        replies: Default::default(),
    };
    let conv = Conversations::new(runner, Arc::new(Terminal));
    let data: Map<String, Value> = o
        .data
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let wait = match store.next_wait().await? {
            Some(t) => chrono::DateTime::parse_from_rfc3339(&t)
                .map(|t| {
                    (t.with_timezone(&chrono::Utc) - chrono::Utc::now())
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                })
                .unwrap_or(Duration::from_secs(1)),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            line = lines.next_line() => {
                let Some(body) = line.context("reading stdin")? else { break };
                let m = InboundMessage {
                    from: o.from.clone(),
                    to: o.to.clone(),
                    body,
                    message_sid: String::new(),
                    extra: Map::new(),
                    flow_data: data.clone(),
                };
                match conv.inbound(&flow, m).await? {
                    Delivery::Started { state, .. } | Delivery::Resumed { state, .. } => report(&state).await,
                    Delivery::Busy { sid } => eprintln!("execution {sid} is busy; message ignored"),
                    Delivery::ToCall { sid } => eprintln!("reply delivered to call execution {sid}"),
                }
            }
            _ = tokio::time::sleep(wait) => {
                for (_, state) in conv.fire_timeouts().await? {
                    report(&state).await;
                }
            }
        }
    }
    Ok(())
}
