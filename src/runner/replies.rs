//! Replies awaited in memory: a call's send-and-wait-for-reply waits for the caller's SMS while
//! the call goes on, so the reply cannot go through the store as a conversation's does. The
//! messaging side hands an inbound message for that session to the waiting call instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// A messaging session's key: one per (flow, contact).
pub fn session_key(flow_sid: &str, contact: &str) -> String {
    format!("contact|{flow_sid}|{contact}")
}

type Waiter = (String, mpsc::UnboundedSender<Map<String, Value>>);

/// The sessions whose reply an execution waits for in memory.
#[derive(Default)]
pub struct Replies {
    waiting: Mutex<HashMap<String, Waiter>>,
}

/// A registered wait; the registration ends when it is dropped.
pub struct ReplyWait {
    /// The inbound message's fields (`Body`, `From`, ...).
    pub replies: mpsc::UnboundedReceiver<Map<String, Value>>,
    key: String,
    execution: String,
    owner: Arc<Replies>,
}

impl Drop for ReplyWait {
    fn drop(&mut self) {
        if let Ok(mut w) = self.owner.waiting.lock() {
            // Only our own registration: a later wait of the same contact took the key over.
            if w.get(&self.key).is_some_and(|(e, _)| *e == self.execution) {
                w.remove(&self.key);
            }
        }
    }
}

impl Replies {
    /// Wait for the next message of session `key` (execution `execution` waits). A newer wait
    /// of the same session (the contact's second call in the same flow) takes the messages.
    pub fn wait(self: &Arc<Self>, key: &str, execution: &str) -> ReplyWait {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(key.to_string(), (execution.to_string(), tx));
        }
        ReplyWait {
            replies: rx,
            key: key.to_string(),
            execution: execution.to_string(),
            owner: self.clone(),
        }
    }

    /// Hand `fields` to whoever waits on `key`; the waiting execution's SID, or None.
    pub fn deliver(&self, key: &str, fields: Map<String, Value>) -> Option<String> {
        let w = self.waiting.lock().ok()?;
        let (execution, tx) = w.get(key)?;
        tx.send(fields).ok()?;
        Some(execution.clone())
    }
}
