//! Channels perform the flow engine's effects. The [`Runner`] drives one execution: it commits
//! each step to the store before the effect runs, performs the effects every channel shares
//! (HTTP requests, subflows) itself, and hands medium effects (say, gather, send a message…) to
//! the [`Medium`] — the voice channel of a call or the messaging channel of a conversation.

pub mod http;

use std::future::Future;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::flow::{
    Advance, Effect, EndReason, Engine, Execution, ExecutionInit, ExecutionStatus, Outcome, Trigger,
};
use crate::routing::{LoadedFlow, Router};
use crate::store::{new_sid, now_rfc3339, ExecutionRecord, StepRecord, Store, StoreError};

pub use http::HttpClient;

/// Subflows nest at most this deep (a flow that runs itself would otherwise recurse forever).
const MAX_SUBFLOW_DEPTH: u32 = 5;

/// A medium that can perform some effects.
pub trait Medium: Send {
    /// Perform `effect`, or `None` when this medium cannot (the widget then fails).
    fn perform(&mut self, effect: &Effect) -> impl Future<Output = Option<Outcome>> + Send;
    /// A short name for step errors ("voice call", "SMS conversation").
    fn name(&self) -> &'static str;
}

type Driven<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(Execution, Finished), StoreError>> + Send + 'a>>;

/// Where an execution stands after the runner stopped driving it.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    Ended(EndReason),
    /// Waiting for a reply (send-and-wait-for-reply) until the deadline (RFC 3339).
    Waiting {
        until: String,
    },
}

#[derive(Clone)]
pub struct Runner {
    pub store: Store,
    pub http: HttpClient,
    pub router: Arc<Router>,
    /// Event Streams (execution started/ended, step ended); None when no sink is configured.
    pub events: Option<crate::events::Events>,
}

/// Run an engine step (pure CPU: widgets and all their Liquid) so that it cannot stall the
/// tokio worker it was called on. A worker runs many tasks, SIP signalling among them, and
/// tokio does not preempt: two heavy renders once delayed SIP by 1.9 s. `block_in_place`
/// hands this worker's queued tasks to another thread for the duration and lets the OS
/// schedule the step like any thread. It was chosen over `spawn_blocking` because the step
/// borrows the caller's flow revision and execution (no `'static` copies per step); its
/// cost is one hand-off per step, which is once per effect, never per packet. Runtimes
/// with one thread (the chat CLI, unit tests) cannot hand off and run the step inline.
fn off_worker<T>(step: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(step),
        _ => step(),
    }
}

pub fn now() -> chrono::DateTime<chrono::FixedOffset> {
    chrono::Utc::now().fixed_offset()
}

/// What the runner keeps of an execution's stored record while driving it.
#[derive(Debug, Clone)]
struct Base {
    contact: String,
    active_key: Option<String>,
    date_created: String,
}

impl From<&ExecutionRecord> for Base {
    fn from(r: &ExecutionRecord) -> Base {
        Base {
            contact: r.contact.clone(),
            active_key: r.active_key.clone(),
            date_created: r.date_created.clone(),
        }
    }
}

/// Identity of a new execution as the store keeps it.
pub struct NewExecution {
    pub init: ExecutionInit,
    pub trigger: Trigger,
    pub contact: String,
    /// Unique while active (one execution per session); None for child executions.
    pub active_key: Option<String>,
}

impl Runner {
    /// The flow with this SID: loaded here already, or stored by another node through the API.
    pub async fn flow_by_sid(&self, sid: &str) -> Option<Arc<LoadedFlow>> {
        if let Some(f) = self.router.by_sid(sid) {
            return Some(f);
        }
        match crate::api::load_stored_flow(&self.store, &self.router, sid).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(flow = %sid, error = %e, "looking up a stored flow");
                None
            }
        }
    }

    /// Start an execution and drive it until it ends or waits.
    pub async fn start<M: Medium>(
        &self,
        flow: &LoadedFlow,
        new: NewExecution,
        medium: &mut M,
    ) -> Result<(Execution, Finished), StoreError> {
        let (exec, adv) = off_worker(|| Engine::start(&flow.flow, new.init, new.trigger, now()));
        let created = now_rfc3339();
        let base = {
            let rec = record(&exec, &new.contact, new.active_key.clone(), &created, None);
            self.store.create_execution(&rec).await?;
            if let Some(ev) = &self.events {
                ev.execution_started(&rec);
            }
            Base::from(&rec)
        };
        tracing::info!(execution = %exec.sid, flow = %flow.name, contact = %new.contact, "execution started");
        self.drive(flow, exec, adv, base, medium, 0).await
    }

    /// Resume a stored execution with an outcome (a reply, a timeout) and drive it on.
    pub async fn resume<M: Medium>(
        &self,
        flow: &LoadedFlow,
        rec: ExecutionRecord,
        outcome: Outcome,
        medium: &mut M,
    ) -> Result<(Execution, Finished), StoreError> {
        let base = Base::from(&rec);
        let mut exec: Execution = serde_json::from_value(rec.state)?;
        let adv = off_worker(|| Engine::resume(&flow.flow, &mut exec, outcome, now()));
        self.drive(flow, exec, adv, base, medium, 0).await
    }

    fn drive<'a, M: Medium>(
        &'a self,
        flow: &'a LoadedFlow,
        mut exec: Execution,
        mut adv: Advance,
        base: Base,
        medium: &'a mut M,
        depth: u32,
    ) -> Driven<'a> {
        Box::pin(async move {
            loop {
                // A send-and-wait counts as waiting from before its message goes out, so a
                // crash right after sending still leaves the execution ready for the reply.
                let waiting = match &adv.effect {
                    Effect::AwaitReply { timeout_secs }
                    | Effect::SendAndWait { timeout_secs, .. } => Some(
                        (chrono::Utc::now() + chrono::Duration::seconds(*timeout_secs as i64))
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    ),
                    _ => None,
                };
                // The step is committed before its effect runs: a crash never loses a decided step.
                {
                    let rec = record(
                        &exec,
                        &base.contact,
                        base.active_key.clone(),
                        &base.date_created,
                        waiting.clone(),
                    );
                    let taken = steps(&exec, &adv);
                    self.store.record_progress(&rec, &taken).await?;
                    if let Some(ev) = &self.events {
                        taken.iter().for_each(|s| ev.step_ended(&rec.flow_sid, s));
                        if let Effect::End(reason) = &adv.effect {
                            ev.execution_ended(&rec, crate::events::end_code(reason));
                        }
                    }
                }
                for s in adv.steps.iter().filter(|s| s.error.is_some()) {
                    tracing::warn!(execution = %exec.sid, widget = %s.name, error = s.error.as_deref().unwrap_or(""), "step error");
                }
                // The steps' context snapshots are stored; a call waiting on its effect for
                // minutes should not keep them in memory.
                adv.steps = Vec::new();
                let outcome = match &adv.effect {
                    Effect::End(reason) => {
                        tracing::info!(execution = %exec.sid, %reason, "execution ended");
                        return Ok((exec, Finished::Ended(reason.clone())));
                    }
                    Effect::AwaitReply { .. } => {
                        let until = waiting.unwrap_or_default();
                        return Ok((exec, Finished::Waiting { until }));
                    }
                    Effect::HttpRequest(r) => self.http.perform(r).await,
                    Effect::RunSubflow(s) => self.subflow(&exec, s, medium, depth).await,
                    other => match medium.perform(other).await {
                        Some(o) => o,
                        None => Outcome::Failed {
                            error: format!("this widget cannot run in a {}", medium.name()),
                        },
                    },
                };
                adv = off_worker(|| Engine::resume(&flow.flow, &mut exec, outcome, now()));
            }
        })
    }

    /// run-subflow: a child execution on the same medium; its `flow.variables` come back.
    async fn subflow<M: Medium>(
        &self,
        parent: &Execution,
        s: &crate::flow::RunSubflow,
        medium: &mut M,
        depth: u32,
    ) -> Outcome {
        if depth >= MAX_SUBFLOW_DEPTH {
            return Outcome::Failed {
                error: format!("subflows nest deeper than {MAX_SUBFLOW_DEPTH}"),
            };
        }
        let Some(child_flow) = self.flow_by_sid(&s.flow_sid).await else {
            return Outcome::Failed {
                error: format!("subflow {:?} is not loaded here", s.flow_sid),
            };
        };
        let ctx = &parent.context;
        let text = |p: &str| {
            ctx.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let init = ExecutionInit {
            sid: new_sid("FN"),
            flow_sid: child_flow.sid.clone(),
            channel_address: text("/flow/channel/address"),
            contact_address: text("/contact/channel/address"),
            data: Value::Object(s.parameters.clone()),
        };
        let mut parent_data = s.parameters.clone();
        parent_data.insert("ExecutionSid".into(), json!(parent.sid));
        parent_data.insert("FlowSid".into(), json!(parent.flow_sid));
        let (exec, adv) = off_worker(|| {
            Engine::start(
                &child_flow.flow,
                init,
                Trigger::IncomingParent {
                    parent: parent_data,
                },
                now(),
            )
        });
        let created = now_rfc3339();
        let rec = record(
            &exec,
            &text("/contact/channel/address"),
            None,
            &created,
            None,
        );
        if let Err(e) = self.store.create_execution(&rec).await {
            return Outcome::Failed {
                error: format!("cannot store subflow execution: {e}"),
            };
        }
        if let Some(ev) = &self.events {
            ev.execution_started(&rec);
        }
        match self
            .drive(&child_flow, exec, adv, Base::from(&rec), medium, depth + 1)
            .await
        {
            Ok((child, Finished::Ended(EndReason::Completed { .. }))) => {
                let variables = child
                    .context
                    .pointer("/flow/variables")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                Outcome::SubflowCompleted { variables }
            }
            Ok((_, Finished::Ended(EndReason::Hangup { .. }))) => Outcome::Hangup,
            Ok((_, Finished::Ended(reason))) => Outcome::Failed {
                error: format!("subflow failed: {reason}"),
            },
            Ok((_, Finished::Waiting { .. })) => Outcome::Failed {
                error: "subflows that wait for a reply are not supported".into(),
            },
            Err(e) => Outcome::Failed {
                error: format!("subflow: {e}"),
            },
        }
    }
}

pub fn record(
    exec: &Execution,
    contact: &str,
    active_key: Option<String>,
    created: &str,
    wait_until: Option<String>,
) -> ExecutionRecord {
    let active = exec.status == ExecutionStatus::Active;
    ExecutionRecord {
        sid: exec.sid.clone(),
        flow_sid: exec.flow_sid.clone(),
        contact: contact.to_string(),
        status: if active {
            "active".into()
        } else {
            "ended".into()
        },
        context: exec.context.clone(),
        state: serde_json::to_value(exec).unwrap_or(json!({})),
        active_key,
        wait_until: if active { wait_until } else { None },
        date_created: created.to_string(),
        date_updated: now_rfc3339(),
    }
}

fn steps(exec: &Execution, adv: &Advance) -> Vec<StepRecord> {
    adv.steps
        .iter()
        .map(|s| StepRecord {
            sid: new_sid("FT"),
            execution_sid: exec.sid.clone(),
            name: s.name.clone(),
            transitioned_from: s.transitioned_from.clone(),
            transitioned_to: s.transitioned_to.clone(),
            event: s.event.clone(),
            context: s.context.clone(),
            error: s.error.clone(),
            date_created: now_rfc3339(),
        })
        .collect()
}

/// Twilio-style string map from pairs.
pub fn params<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// With one worker thread, a long engine step must not stop the other tasks (SIP).
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn engine_steps_do_not_stall_the_worker() {
        let ticks = Arc::new(AtomicU32::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let before = ticks.load(Ordering::Relaxed);
        off_worker(|| std::thread::sleep(Duration::from_millis(400)));
        let during = ticks.load(Ordering::Relaxed) - before;
        ticker.abort();
        // Inline on the only worker, the ticker would not have run at all.
        assert!(
            during >= 10,
            "ticker ran {during} times during a 400 ms step"
        );
    }

    #[test]
    fn steps_run_inline_without_a_multi_thread_runtime() {
        assert_eq!(off_worker(|| 7), 7);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert_eq!(rt.block_on(async { off_worker(|| 8) }), 8);
    }
}
