//! Channels perform the flow engine's effects. The [`Runner`] drives one execution: it commits
//! each step to the store before the effect runs, performs the effects every channel shares
//! (HTTP requests, subflows) itself, and hands medium effects (say, gather, send a message…) to
//! the `Medium` — the voice channel of a call or the messaging channel of a conversation.

pub(crate) mod http;
pub mod replies;

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
pub(crate) trait Medium: Send {
    /// Perform `effect`, or `None` when this medium cannot (the widget then fails).
    fn perform(&mut self, effect: &Effect) -> impl Future<Output = Option<Outcome>> + Send;
    /// A short name for step errors ("voice call", "SMS conversation").
    fn name(&self) -> &'static str;
    /// Whether it waits for a send-and-wait's reply itself (a call, in memory), rather than
    /// leaving the execution waiting in the store for the messaging side to resume.
    fn waits_for_replies(&self) -> bool {
        false
    }
}

/// A resumed child's outcome for its parent, or Err(deadline) while it waits again.
type ChildResumed<'a> = std::pin::Pin<
    Box<dyn Future<Output = Result<Result<Outcome, String>, StoreError>> + Send + 'a>,
>;

type Driven<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(Execution, Finished), StoreError>> + Send + 'a>>;

/// Where an execution stands after the runner stopped driving it.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// The execution ended.
    Ended(EndReason),
    /// Waiting for a reply (send-and-wait-for-reply) until the deadline (RFC 3339).
    Waiting {
        /// The deadline.
        until: String,
    },
}

/// Drives executions: runs engine steps, commits each step before its effect, performs the
/// effects every medium shares (HTTP, run-function, subflows) and hands the rest to a medium.
#[derive(Clone)]
pub struct Runner {
    /// Where executions and steps are kept.
    pub store: Store,
    /// Performs HTTP effects.
    pub http: HttpClient,
    /// Finds subflows by SID.
    pub router: Arc<Router>,
    /// Event Streams (execution started/ended, step ended); None when no sink is configured.
    pub events: Option<crate::events::Events>,
    /// Replies that calls wait for in memory (send-and-wait-for-reply during a call).
    pub replies: Arc<replies::Replies>,
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

pub(crate) fn now() -> chrono::DateTime<chrono::FixedOffset> {
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
pub(crate) struct NewExecution {
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
        match self.router.load_stored_flow(&self.store, sid).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(flow = %sid, error = %e, "looking up a stored flow");
                None
            }
        }
    }

    /// The child a run-subflow runs: its `flow_sid` (or the flow `[subflows]` maps it to), at
    /// `flow_revision` when that names a stored revision, else as loaded (the latest
    /// published revision).
    async fn child_flow(&self, s: &crate::flow::RunSubflow) -> Result<Arc<LoadedFlow>, String> {
        let sid = self.router.subflow_sid(&s.flow_sid).to_string();
        let not_here = || {
            format!(
                "subflow {:?} is not loaded here (create it through the API, or map it in [subflows])",
                s.flow_sid
            )
        };
        if let Ok(n) = s.revision.trim().parse::<i64>() {
            if self.router.configured(&sid).is_none() {
                let rev = self
                    .store
                    .revision(&sid, n)
                    .await
                    .map_err(|e| format!("subflow {sid} revision {n}: {e}"))?
                    .ok_or_else(|| format!("subflow {sid} has no revision {n}"))?;
                return LoadedFlow::with_sid(&sid, &rev.friendly_name, &rev.definition)
                    .map(Arc::new)
                    .map_err(|e| e.to_string());
            }
        }
        self.flow_by_sid(&sid).await.ok_or_else(not_here)
    }

    /// Start an execution and drive it until it ends or waits.
    pub(crate) async fn start<M: Medium>(
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
        crate::metrics::outcome(&crate::metrics::get().executions, "started");
        self.drive(flow, exec, adv, base, medium, 0).await
    }

    /// Resume a stored execution with an outcome (a reply, a timeout) and drive it on.
    pub(crate) async fn resume<M: Medium>(
        &self,
        flow: &LoadedFlow,
        rec: ExecutionRecord,
        outcome: Outcome,
        medium: &mut M,
    ) -> Result<(Execution, Finished), StoreError> {
        self.resume_at(flow, rec, outcome, medium, 0).await
    }

    /// [`resume`](Self::resume) for an execution `depth` subflows down (a waiting child is
    /// resumed through its parent, and its own subflows count from its depth).
    async fn resume_at<M: Medium>(
        &self,
        flow: &LoadedFlow,
        rec: ExecutionRecord,
        outcome: Outcome,
        medium: &mut M,
        depth: u32,
    ) -> Result<(Execution, Finished), StoreError> {
        // A parent whose run-subflow child waits: the outcome is the child's.
        let outcome = match self.store.subflow_child(&rec.sid).await? {
            None => outcome,
            Some(child) => match self
                .resume_child(&child, outcome, medium, depth + 1)
                .await?
            {
                Ok(o) => {
                    self.store.clear_subflow_wait(&rec.sid).await?;
                    o
                }
                Err(until) => {
                    let exec: Execution = serde_json::from_value(rec.state.clone())?;
                    let mut waiting = rec;
                    waiting.wait_until = Some(until.clone());
                    waiting.date_updated = now_rfc3339();
                    self.store.record_progress(&waiting, &[]).await?;
                    return Ok((exec, Finished::Waiting { until }));
                }
            },
        };
        let base = Base::from(&rec);
        let mut exec: Execution = serde_json::from_value(rec.state)?;
        let adv = off_worker(|| Engine::resume(&flow.flow, &mut exec, outcome, now()));
        self.drive(flow, exec, adv, base, medium, depth).await
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
                    // A call waits itself; a crash ends it like any call.
                    Effect::AwaitReply { .. } | Effect::SendAndWait { .. }
                        if medium.waits_for_replies() =>
                    {
                        None
                    }
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
                let metrics = crate::metrics::get();
                for s in &adv.steps {
                    let ok = s.error.is_none();
                    crate::metrics::outcome(&metrics.steps, if ok { "ok" } else { "error" });
                    if !ok {
                        tracing::warn!(execution = %exec.sid, widget = %s.name, error = s.error.as_deref().unwrap_or(""), "step error");
                    }
                }
                // The steps' context snapshots are stored; a call waiting on its effect for
                // minutes should not keep them in memory.
                adv.steps = Vec::new();
                let outcome = match &adv.effect {
                    Effect::End(reason) => {
                        tracing::info!(execution = %exec.sid, %reason, "execution ended");
                        crate::metrics::outcome(
                            &metrics.executions,
                            crate::events::end_code(reason),
                        );
                        return Ok((exec, Finished::Ended(reason.clone())));
                    }
                    Effect::AwaitReply { .. } if medium.waits_for_replies() => {
                        match medium.perform(&adv.effect).await {
                            Some(o) => o,
                            None => Outcome::Timeout,
                        }
                    }
                    Effect::AwaitReply { .. } => {
                        let until = waiting.unwrap_or_default();
                        return Ok((exec, Finished::Waiting { until }));
                    }
                    Effect::HttpRequest(r) => self.http.perform(r).await,
                    Effect::RunSubflow(s) => match self.subflow(&exec, s, medium, depth).await {
                        Ok(o) => o,
                        // The child waits for a reply: so does this execution, until the
                        // reply (or the timeout) resumes the child through it.
                        Err(ChildWaits { child, until }) => {
                            self.store.set_subflow_wait(&exec.sid, &child).await?;
                            let rec = record(
                                &exec,
                                &base.contact,
                                base.active_key.clone(),
                                &base.date_created,
                                Some(until.clone()),
                            );
                            self.store.record_progress(&rec, &[]).await?;
                            return Ok((exec, Finished::Waiting { until }));
                        }
                    },
                    other => match medium.perform(other).await {
                        Some(o) => o,
                        // The widget takes its failure event, or the execution ends with
                        // this reason on the widget's step (logged above as a step error).
                        None => Outcome::Failed {
                            error: unavailable(other, medium.name()),
                        },
                    },
                };
                adv = off_worker(|| Engine::resume(&flow.flow, &mut exec, outcome, now()));
            }
        })
    }

    /// run-subflow: a child execution on the same medium; its `flow.variables` come back.
    /// Resume a waiting child with `outcome`: how it went for its parent, or Err(deadline)
    /// when it waits again.
    fn resume_child<'a, M: Medium>(
        &'a self,
        child_sid: &'a str,
        outcome: Outcome,
        medium: &'a mut M,
        depth: u32,
    ) -> ChildResumed<'a> {
        Box::pin(async move {
            if depth > MAX_SUBFLOW_DEPTH {
                return Ok(Ok(Outcome::Failed {
                    error: format!("subflows nest deeper than {MAX_SUBFLOW_DEPTH}"),
                }));
            }
            let gone = |why: &str| {
                Ok(Ok(Outcome::Failed {
                    error: format!("subflow execution {child_sid} {why}"),
                }))
            };
            let Some(child) = self.store.execution(child_sid).await? else {
                return gone("no longer exists");
            };
            if child.status != "active" {
                return gone("has ended");
            }
            let Some(flow) = self.flow_by_sid(&child.flow_sid).await else {
                return gone("runs a flow that is not loaded here");
            };
            let done = self.resume_at(&flow, child, outcome, medium, depth).await;
            Ok(child_outcome(done))
        })
    }

    async fn subflow<M: Medium>(
        &self,
        parent: &Execution,
        s: &crate::flow::RunSubflow,
        medium: &mut M,
        depth: u32,
    ) -> Result<Outcome, ChildWaits> {
        if depth >= MAX_SUBFLOW_DEPTH {
            return Ok(Outcome::Failed {
                error: format!("subflows nest deeper than {MAX_SUBFLOW_DEPTH}"),
            });
        }
        let child_flow = match self.child_flow(s).await {
            Ok(f) => f,
            Err(error) => return Ok(Outcome::Failed { error }),
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
            return Ok(Outcome::Failed {
                error: format!("cannot store subflow execution: {e}"),
            });
        }
        if let Some(ev) = &self.events {
            ev.execution_started(&rec);
        }
        let child = rec.sid.clone();
        let done = self
            .drive(&child_flow, exec, adv, Base::from(&rec), medium, depth + 1)
            .await;
        child_outcome(done).map_err(|until| ChildWaits { child, until })
    }
}

/// A run-subflow child that waits for a reply (in a conversation), and until when.
struct ChildWaits {
    child: String,
    until: String,
}

/// How a child's run went, as its parent's run-subflow hears it; Err(deadline) while the
/// child waits for a reply.
fn child_outcome(done: Result<(Execution, Finished), StoreError>) -> Result<Outcome, String> {
    Ok(match done {
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
        Ok((_, Finished::Waiting { until })) => return Err(until),
        Err(e) => Outcome::Failed {
            error: format!("subflow: {e}"),
        },
    })
}

pub(crate) fn record(
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

/// Why `effect` was not performed by a medium called `medium`. Every medium performs the
/// effects it can: voice effects are done only by calls, message effects only by
/// conversations (and REST executions, which run on one), and Connect / OutgoingCall by none
/// yet. So the effect alone says which case this is.
fn unavailable(effect: &Effect, medium: &str) -> String {
    let widget = match effect {
        Effect::SayPlay(_) => "say-play",
        Effect::Gather(_) => "gather-input-on-call",
        Effect::Record(_) => "record-voicemail",
        Effect::Redirect(_) => "add-twiml-redirect",
        Effect::Connect(_) => "connect-call-to",
        Effect::OutgoingCall(_) => {
            return format!("make-outgoing-call-v2 places the call of a REST execution (incomingRequest); this execution runs in a {medium}")
        }
        Effect::SendMessage(_) | Effect::SendAndWait { .. } => {
            let widget = if matches!(effect, Effect::SendMessage(_)) {
                "send-message"
            } else {
                "send-and-wait-for-reply"
            };
            return format!("{widget} is not available in a {medium} yet: only messaging conversations and REST executions send messages");
        }
        other => {
            return format!("the {medium} cannot perform {:?}", effect_name(other));
        }
    };
    format!("{widget} needs a voice call; this execution runs in a {medium}")
}

fn effect_name(e: &Effect) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Twilio-style string map from pairs.
pub(crate) fn params<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Router;
    use crate::store::Store;
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

    /// Performs what `call::voice::VoiceChannel` performs, with canned outcomes.
    struct FakeCall;

    impl Medium for FakeCall {
        async fn perform(&mut self, effect: &Effect) -> Option<Outcome> {
            match effect {
                Effect::SayPlay(_) => Some(Outcome::AudioComplete),
                Effect::Gather(_) => Some(Outcome::Timeout),
                Effect::Record(_) => Some(Outcome::NoAudio),
                Effect::Redirect(_) => Some(Outcome::RedirectReturned { params: Map::new() }),
                Effect::RecordCall(_) => Some(Outcome::Done),
                Effect::SendMessage(_) => Some(Outcome::MessageSent { fields: Map::new() }),
                // As a call with a trunk performs it: the far end answered and hung up.
                Effect::Connect(_) => Some(Outcome::Dial(Box::new(crate::flow::DialResult {
                    status: "completed".into(),
                    sid: Some("CA1".into()),
                    duration_secs: Some(3),
                    ..Default::default()
                }))),
                _ => None,
            }
        }
        fn name(&self) -> &'static str {
            "voice call"
        }
    }

    struct Sent;

    impl crate::messaging::MessageSink for Sent {
        fn send<'a>(&'a self, _msg: &'a crate::flow::Message) -> crate::messaging::SendFuture<'a> {
            Box::pin(async { Ok(Map::new()) })
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Expect {
        /// Performed: the widget's step carries no error.
        Runs,
        /// Waiting for a reply (send-and-wait on a conversation).
        Waits,
        /// Not performed: the widget's failure event, with the reason on its step.
        Fails,
        /// Not performed and no failure event: the execution ends, the reason on the step.
        Ends,
    }
    use Expect::*;

    /// Every widget type × medium (REST executions run on the messaging medium).
    const TABLE: &[(&str, Expect, Expect)] = &[
        // (type, on a call, in a conversation / REST)
        ("split-based-on", Runs, Runs),
        ("set-variables", Runs, Runs),
        ("say-play", Runs, Ends),
        ("gather-input-on-call", Runs, Ends),
        ("record-voicemail", Runs, Ends),
        ("connect-call-to", Runs, Ends),
        ("make-outgoing-call-v2", Fails, Fails),
        ("add-twiml-redirect", Runs, Fails),
        ("record-call", Runs, Fails),
        ("send-message", Runs, Runs),
        ("send-and-wait-for-reply", Fails, Waits),
        // Performed by the runner on every medium; here each fails on purpose (refused
        // connection, no Function URL, subflow not loaded).
        ("make-http-request", Fails, Fails),
        ("run-function", Fails, Fails),
        ("run-subflow", Fails, Fails),
        // No such service here: the failure event, decided in the engine.
        ("enqueue-call", Fails, Fails),
        ("fork-stream", Fails, Fails),
        ("capture-payments", Fails, Fails),
        ("connect-virtual-agent", Fails, Fails),
        ("send-to-flex", Fails, Fails),
        ("send-to-auto-pilot", Fails, Fails),
    ];

    fn props(kind: &str) -> Value {
        match kind {
            "split-based-on" => json!({"input": "x"}),
            "say-play" | "gather-input-on-call" => json!({"say": "hi"}),
            "connect-call-to" => json!({"noun": "number", "to": "+15550000002"}),
            "add-twiml-redirect" => json!({"url": "http://127.0.0.1:9/twiml"}),
            "send-message" | "send-and-wait-for-reply" => json!({"body": "hi"}),
            "make-http-request" => json!({"method": "GET", "url": "http://127.0.0.1:9/"}),
            "run-subflow" => json!({"flow_sid": "FWnotloaded"}),
            _ => json!({}),
        }
    }

    async fn run_one<M: Medium>(
        kind: &str,
        voice: bool,
        medium: &mut M,
        dir: &std::path::Path,
    ) -> (Finished, Vec<crate::store::StepRecord>) {
        let spec = crate::flow::widgets::spec(kind).expect("known type");
        let transitions: Vec<Value> = spec.events.iter().map(|e| json!({"event": e})).collect();
        let event = if voice {
            "incomingCall"
        } else {
            "incomingMessage"
        };
        let def = json!({"states": [
            {"name": "Trigger", "type": "trigger", "properties": {},
             "transitions": [{"event": event, "next": "w"}]},
            {"name": "w", "type": kind, "properties": props(kind), "transitions": transitions}],
            "initial_state": "Trigger", "flags": {"allow_concurrent_calls": false}});
        let flow = LoadedFlow::from_json(kind, &def.to_string()).expect("valid flow");
        let db = dir.join(format!("{kind}-{voice}.db"));
        let store = Store::open(&format!("sqlite://{}?mode=rwc", db.display()))
            .await
            .expect("store");
        let runner = Runner {
            store: store.clone(),
            http: HttpClient::new(None),
            router: Arc::new(Router::single(
                LoadedFlow::from_json(kind, &def.to_string()).expect("flow"),
            )),
            events: None,
            replies: Default::default(),
        };
        let trigger = if voice {
            Trigger::IncomingCall { call: Map::new() }
        } else {
            Trigger::IncomingMessage {
                message: Map::new(),
            }
        };
        let new = NewExecution {
            init: ExecutionInit {
                sid: new_sid("FN"),
                flow_sid: flow.sid.clone(),
                channel_address: "+15550000000".into(),
                contact_address: "+15550000001".into(),
                data: json!({}),
            },
            trigger,
            contact: "+15550000001".into(),
            active_key: None,
        };
        let (exec, finished) = runner.start(&flow, new, medium).await.expect("runs");
        (finished, store.steps(&exec.sid).await.expect("steps"))
    }

    #[tokio::test]
    async fn every_widget_on_every_medium_runs_fails_over_or_ends_with_a_step_error() {
        // The table covers every widget type there is.
        for w in crate::flow::widgets::WIDGETS
            .iter()
            .filter(|w| w.type_name != "trigger")
        {
            assert!(
                TABLE.iter().any(|t| t.0 == w.type_name),
                "{} not in the table",
                w.type_name
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        for &(kind, on_call, on_messaging) in TABLE {
            let spec = crate::flow::widgets::spec(kind).expect("known type");
            let mut conversation = crate::messaging::MessagingChannel {
                sink: Arc::new(Sent),
            };
            for (voice, expect) in [(true, on_call), (false, on_messaging)] {
                let (finished, steps) = if voice {
                    run_one(kind, true, &mut FakeCall, dir.path()).await
                } else {
                    run_one(kind, false, &mut conversation, dir.path()).await
                };
                let case = format!("{kind} on {}", if voice { "a call" } else { "messaging" });
                if expect == Waits {
                    assert!(
                        matches!(finished, Finished::Waiting { .. }),
                        "{case}: {finished:?}"
                    );
                    continue;
                }
                let step = steps
                    .iter()
                    .find(|s| s.name == "w")
                    .unwrap_or_else(|| panic!("{case}: no step for the widget: {steps:?}"));
                match expect {
                    Runs => assert_eq!(step.error, None, "{case}"),
                    Fails => {
                        assert_eq!(Some(step.event.as_str()), spec.failure_event, "{case}");
                        assert!(
                            step.error.as_deref().is_some_and(|e| !e.is_empty()),
                            "{case}: {step:?}"
                        );
                    }
                    Ends => {
                        assert_eq!(step.transitioned_to, crate::flow::ENDED, "{case}");
                        let error = step.error.as_deref().unwrap_or("");
                        assert!(
                            error.contains("not available yet")
                                || error.contains("needs a voice call"),
                            "{case}: {error}"
                        );
                        assert!(
                            matches!(finished, Finished::Ended(EndReason::Error { .. })),
                            "{case}: {finished:?}"
                        );
                    }
                    Waits => {}
                }
            }
        }
    }

    #[test]
    fn unavailable_reasons_name_the_widget_and_why() {
        let connect = Effect::Connect(crate::flow::Connect {
            noun: "number".into(),
            to: "+1".into(),
            caller_id: None,
            timeout_secs: 30,
            time_limit_secs: 0,
            record: false,
            sip_endpoint: None,
            sip_username: None,
            sip_password: None,
            send_digits: None,
            hangup_on_star: false,
        });
        assert_eq!(
            unavailable(&connect, "messaging conversation"),
            "connect-call-to needs a voice call; this execution runs in a messaging conversation"
        );
        let say = Effect::SayPlay(crate::flow::Prompt::default());
        assert_eq!(
            unavailable(&say, "messaging conversation"),
            "say-play needs a voice call; this execution runs in a messaging conversation"
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
