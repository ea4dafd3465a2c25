//! Messaging: conversations on the flow engine. Exactly one active execution per
//! (flow, contact): a message from a contact whose execution waits for a reply resumes it;
//! otherwise it starts a new execution at the trigger's `incomingMessage`. Waiting executions
//! live in the store with their deadline, so replies and timeouts work across restarts.

pub mod providers;
pub mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::flow::{Effect, ExecutionInit, Message, Outcome, Trigger};
use crate::routing::{Incoming, LoadedFlow};
use crate::runner::{params, Finished, Medium, NewExecution, Runner};
use crate::store::{new_sid, now_rfc3339, StoreError};

/// The result of sending: Studio's published fields, or why it failed.
pub type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Map<String, Value>, String>> + Send + 'a>>;

/// Sends outbound messages (a provider, SIP MESSAGE, the terminal…). Returns the fields Studio
/// publishes for the sent message (`Sid`, `To`, `From`, `Body`, `Status`…), or why it failed.
pub trait MessageSink: Send + Sync {
    /// Send `msg`.
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a>;
}

/// An inbound message in Twilio's webhook vocabulary.
#[derive(Debug, Clone, Default)]
pub struct InboundMessage {
    /// The contact's address (`From`).
    pub from: String,
    /// Our number (`To`), which picks the flow.
    pub to: String,
    /// The text (`Body`).
    pub body: String,
    /// The provider's message SID (`MessageSid`); empty when it gave none.
    pub message_sid: String,
    /// Further parameters (NumMedia, MediaUrl0, AccountSid, …) passed through to the flow.
    pub extra: Map<String, Value>,
    /// `flow.data` for an execution this message starts.
    pub flow_data: Map<String, Value>,
}

impl InboundMessage {
    /// The message as the flow sees it (`trigger.message`, a reply's `inbound`).
    pub fn fields(&self) -> Map<String, Value> {
        let sid = if self.message_sid.is_empty() {
            new_sid("SM")
        } else {
            self.message_sid.clone()
        };
        let mut m = self.extra.clone();
        m.extend(params([
            ("From", self.from.clone()),
            ("To", self.to.clone()),
            ("Body", self.body.clone()),
            ("MessageSid", sid.clone()),
            ("SmsMessageSid", sid.clone()),
            ("SmsSid", sid),
        ]));
        m.entry("NumMedia")
            .or_insert_with(|| Value::String("0".into()));
        m
    }
}

/// The medium of a conversation: sends messages, nothing else.
pub(crate) struct MessagingChannel {
    pub sink: Arc<dyn MessageSink>,
}

impl Medium for MessagingChannel {
    async fn perform(&mut self, effect: &Effect) -> Option<Outcome> {
        let msg = match effect {
            Effect::SendMessage(m) => m,
            Effect::SendAndWait { message, .. } => message,
            _ => return None,
        };
        Some(match self.sink.send(msg).await {
            Ok(fields) => Outcome::MessageSent { fields },
            Err(error) => Outcome::DeliveryFailure { error },
        })
    }

    fn name(&self) -> &'static str {
        "messaging conversation"
    }
}

/// What happened to an inbound message.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// It started execution `sid`, which is now in `state`.
    Started {
        /// The new execution.
        sid: String,
        /// Where it stands.
        state: Finished,
    },
    /// It was the reply an execution waited for.
    Resumed {
        /// The execution.
        sid: String,
        /// Where it stands.
        state: Finished,
    },
    /// It was the reply a call's execution waited for (during the call).
    ToCall {
        /// The call's execution.
        sid: String,
    },
    /// The contact's execution is busy (not waiting for a reply); the message was not used.
    Busy {
        /// The contact's active execution.
        sid: String,
    },
}

/// Messaging sessions: one active execution per (flow, contact), started or resumed by
/// inbound messages, replying through a [`MessageSink`].
pub struct Conversations {
    /// Runs the executions.
    pub runner: Runner,
    sink: Arc<dyn MessageSink>,
    /// Serialises messages of one session on this node; the store's unique key covers nodes.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Messages enter at `incomingMessage`; a flow wired only for Conversations
/// (`incomingConversationMessage`) gets them there instead.
pub(crate) fn message_trigger(flow: &LoadedFlow, message: Map<String, Value>) -> Trigger {
    let def = flow.flow.definition();
    let wired = |event: &str| {
        flow.flow.state(&def.initial_state).is_some_and(|s| {
            s.transitions
                .iter()
                .any(|t| t.event == event && t.next.as_deref().is_some_and(|n| !n.is_empty()))
        })
    };
    if !wired("incomingMessage") && wired("incomingConversationMessage") {
        Trigger::IncomingConversationMessage { message }
    } else {
        Trigger::IncomingMessage { message }
    }
}

/// A send-and-wait execution counts as waiting from before its question goes out (so a crash
/// right after sending loses nothing). A reply may resume it once the question is recorded as
/// sent, or once nobody has touched the record for 2 s (the node that was sending is gone);
/// before that, the node sending it is still driving it.
fn question_sent_or_stale(rec: &crate::store::ExecutionRecord) -> bool {
    let current = rec
        .state
        .get("current")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sent = rec
        .context
        .pointer(&format!("/widgets/{current}/outbound"))
        .is_some();
    let stale = chrono::DateTime::parse_from_rfc3339(&rec.date_updated)
        .map(|t| chrono::Utc::now().signed_duration_since(t) > chrono::Duration::seconds(2))
        .unwrap_or(true);
    sent || stale
}

pub(crate) use crate::runner::replies::session_key;

impl Conversations {
    /// Conversations that run flows with `runner` and send through `sink`.
    pub fn new(runner: Runner, sink: Arc<dyn MessageSink>) -> Conversations {
        Conversations {
            runner,
            sink,
            locks: Mutex::default(),
        }
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(key.to_string()).or_default().clone()
    }

    /// Deliver an inbound message to `flow`: start an execution for the contact, resume the
    /// one waiting for a reply, or report it busy.
    pub async fn inbound(
        &self,
        flow: &LoadedFlow,
        m: InboundMessage,
    ) -> Result<Delivery, StoreError> {
        // A test user runs the latest revision, from its first message to its last.
        let draft = self
            .runner
            .router
            .test_revision(&self.runner.store, flow, &m.from)
            .await;
        let flow = draft.as_deref().unwrap_or(flow);
        let key = session_key(&flow.sid, &m.from);
        // The contact is on a call whose flow waits for this reply.
        if let Some(sid) = self.runner.replies.deliver(&key, m.fields()) {
            tracing::info!(execution = %sid, from = %m.from, "reply delivered to the call waiting for it");
            return Ok(Delivery::ToCall { sid });
        }
        let lock = self.lock_for(&key);
        let _guard = lock.lock().await;
        let mut channel = MessagingChannel {
            sink: self.sink.clone(),
        };
        // A few rounds: another node may be starting this contact's execution or still sending
        // its question at this very moment (about 3 s at most, then the message is "busy").
        for _ in 0..60 {
            if let Some(rec) = self.runner.store.active_for_key(&key).await? {
                let Some(until) = rec.wait_until.clone() else {
                    return Ok(Delivery::Busy { sid: rec.sid });
                };
                // A parent waits on its child's question, not one of its own.
                let on_child = self.runner.store.subflow_child(&rec.sid).await?.is_some();
                if !on_child && !question_sent_or_stale(&rec) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                // Claim the wait in the store: another node may be resuming it this instant.
                if !self.runner.store.claim_wait(&rec.sid, &until).await? {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                let sid = rec.sid.clone();
                let (_, state) = self
                    .runner
                    .resume(
                        flow,
                        rec,
                        Outcome::Reply { fields: m.fields() },
                        &mut channel,
                    )
                    .await?;
                return Ok(Delivery::Resumed { sid, state });
            }
            let new = NewExecution {
                init: ExecutionInit {
                    sid: new_sid("FN"),
                    flow_sid: flow.sid.clone(),
                    channel_address: m.to.clone(),
                    contact_address: m.from.clone(),
                    data: Value::Object(m.flow_data.clone()),
                },
                trigger: message_trigger(flow, m.fields()),
                contact: m.from.clone(),
                active_key: Some(key.clone()),
            };
            match self.runner.start(flow, new, &mut channel).await {
                Ok((exec, state)) => {
                    return Ok(Delivery::Started {
                        sid: exec.sid,
                        state,
                    })
                }
                // Another node started one a moment ago: deliver to it instead.
                Err(StoreError::ActiveExists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::ActiveExists(key))
    }

    /// Resume every execution whose wait for a reply has expired with `timeout`.
    pub async fn fire_timeouts(&self) -> Result<Vec<(String, Finished)>, StoreError> {
        let due = self.runner.store.due_waits(&now_rfc3339()).await?;
        let mut out = Vec::new();
        for rec in due {
            let Some(flow) = self.runner.flow_by_sid(&rec.flow_sid).await else {
                tracing::warn!(execution = %rec.sid, flow = %rec.flow_sid, "waiting execution's flow is not loaded");
                continue;
            };
            let key = rec.active_key.clone().unwrap_or_default();
            let lock = self.lock_for(&key);
            let _guard = lock.lock().await;
            // Re-read under the lock: the reply may have arrived meanwhile.
            let Some(rec) = self.runner.store.execution(&rec.sid).await? else {
                continue;
            };
            let Some(until) = rec.wait_until.clone().filter(|_| rec.status == "active") else {
                continue;
            };
            if !self.runner.store.claim_wait(&rec.sid, &until).await? {
                continue; // the reply (or another node's timer) got there first
            }
            let sid = rec.sid.clone();
            let mut channel = MessagingChannel {
                sink: self.sink.clone(),
            };
            let (_, state) = self
                .runner
                .resume(&flow, rec, Outcome::Timeout, &mut channel)
                .await?;
            out.push((sid, state));
        }
        Ok(out)
    }

    /// Background task: deliver messages that providers received themselves (SMPP
    /// `deliver_sm`) to the flow routed for the number they were sent to.
    pub async fn run_inbound(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<InboundMessage>) {
        while let Some(m) = rx.recv().await {
            let Some(flow) = self.runner.router.route_for(&m.to, Incoming::Message) else {
                tracing::warn!(to = %m.to, from = %m.from, "message dropped: no flow answers this number ([[routes]], IncomingPhoneNumbers, or a default `flow`)");
                continue;
            };
            let conv = self.clone();
            // Per-contact order is kept by the session lock; contacts do not wait on each other.
            tokio::spawn(async move {
                match conv.inbound(&flow, m).await {
                    Ok(Delivery::Busy { sid }) => {
                        tracing::info!(execution = %sid, "message ignored: the contact's execution is not waiting for a reply")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(flow = %flow.sid, error = %e, "inbound message"),
                }
            });
        }
    }

    /// Background task: fire reply timeouts as they fall due (checked every second).
    pub async fn run_timeouts(self: Arc<Self>) {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if let Err(e) = self.fire_timeouts().await {
                tracing::warn!(error = %e, "reply timeouts");
            }
        }
    }
}
