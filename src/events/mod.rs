//! Event Streams: `com.twilio.studio.flow.execution.started`, `...execution.ended` and
//! `...step.ended` as CloudEvents (JSON) POSTed in batches to the configured sink URLs.
//!
//! Emitting never blocks and never fails: each sink has a bounded in-memory queue; when it is
//! full the oldest event is dropped (counted, with a warning). One background task per sink
//! takes up to `batch_size` events, waiting at most `flush_ms` for a batch to fill, and POSTs
//! them as one JSON array, retrying with exponential back-off up to `max_attempts` times.
//! Delivery is best effort, like Studio's step logs: events queued when the process stops are
//! lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::flow::EndReason;
use crate::store::{new_sid, now_rfc3339, ExecutionRecord, StepRecord};

pub(crate) const EXECUTION_STARTED: &str = "com.twilio.studio.flow.execution.started";
pub(crate) const EXECUTION_ENDED: &str = "com.twilio.studio.flow.execution.ended";
pub(crate) const STEP_ENDED: &str = "com.twilio.studio.flow.step.ended";

/// Twilio's `ended_reason` for how an execution ended.
pub(crate) fn end_code(reason: &EndReason) -> &'static str {
    match reason {
        EndReason::Completed { .. } => "FLOW_END",
        EndReason::Hangup { .. } => "HANGUP",
        EndReason::StepLimit { .. } | EndReason::LoopLimit { .. } => "LIMIT_REACHED",
        EndReason::Error { .. } => "ERROR",
        EndReason::AlreadyEnded => "ENDED",
    }
}

pub(crate) use crate::config::EventsConfig;

/// Why the event sinks could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// A sink is not an http(s) URL (the sink).
    #[error("[events] sink {0:?} is not an http(s) URL")]
    BadSink(String),
}

/// A handle for emitting events; cheap to clone. Emitting is a short, non-blocking push.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    account_sid: String,
    queues: Vec<Arc<SinkQueue>>,
}

struct SinkQueue {
    url: String,
    queue: Mutex<VecDeque<Value>>,
    notify: Notify,
    capacity: usize,
    dropped: AtomicU64,
    /// A batch is being sent (taken off the queue, not yet delivered or given up).
    sending: std::sync::atomic::AtomicBool,
    /// Shutting down: send what is queued without waiting for a batch to fill.
    hurry: std::sync::atomic::AtomicBool,
}

impl SinkQueue {
    fn push(&self, event: Value) {
        let dropped_now = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = if q.len() >= self.capacity.max(1) {
                q.pop_front();
                true
            } else {
                false
            };
            q.push_back(event);
            dropped
        };
        if dropped_now {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One warning for the first drop and then one per thousand, not one per event.
            if n == 1 || n % 1000 == 0 {
                tracing::warn!(sink = %crate::redact::url(&self.url), dropped = n, "event queue full: oldest events dropped");
            }
        }
        self.notify.notify_one();
    }

    fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn take(&self, n: usize) -> Vec<Value> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let n = n.min(q.len());
        q.drain(..n).collect()
    }
}

impl Events {
    /// Queues for each sink, without delivery tasks (see [`Events::start`]).
    pub fn new(cfg: &EventsConfig, account_sid: &str) -> Result<Events, EventsError> {
        let mut queues = Vec::new();
        for url in &cfg.sinks {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => return Err(EventsError::BadSink(url.clone())),
            }
            queues.push(Arc::new(SinkQueue {
                url: url.clone(),
                queue: Mutex::default(),
                notify: Notify::new(),
                capacity: cfg.queue_capacity,
                dropped: AtomicU64::new(0),
                sending: Default::default(),
                hurry: Default::default(),
            }));
        }
        Ok(Events {
            inner: Arc::new(Inner {
                account_sid: account_sid.to_string(),
                queues,
            }),
        })
    }

    /// Events for the configured sinks, with one delivery task per sink; None without sinks.
    /// Must be called inside a tokio runtime.
    pub fn start(
        cfg: &EventsConfig,
        account_sid: &str,
        client: reqwest::Client,
    ) -> Result<Option<Events>, EventsError> {
        if cfg.sinks.is_empty() {
            return Ok(None);
        }
        let events = Events::new(cfg, account_sid)?;
        for q in &events.inner.queues {
            tokio::spawn(deliver(q.clone(), cfg.clone(), client.clone()));
        }
        Ok(Some(events))
    }

    /// Events dropped so far because a sink's queue was full (all sinks).
    /// Deliver everything queued now (shutdown), waiting at most `within`; false if some
    /// events were still queued or in flight then.
    pub async fn flush(&self, within: Duration) -> bool {
        for q in &self.inner.queues {
            q.hurry.store(true, Ordering::Relaxed);
            q.notify.notify_one();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self
                .inner
                .queues
                .iter()
                .all(|q| q.len() == 0 && !q.sending.load(Ordering::Relaxed));
            if idle {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Events dropped so far because a sink's queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner
            .queues
            .iter()
            .map(|q| q.dropped.load(Ordering::Relaxed))
            .sum()
    }

    fn emit(&self, kind: &str, schema: &str, data: Value) {
        let event = json!({
            "specversion": "1.0",
            "type": kind,
            "source": format!("/v2/Accounts/{}/Studio", self.inner.account_sid),
            "id": new_sid("EV"),
            "time": now_rfc3339(),
            "dataschema": format!("https://events-schemas.twilio.com/{schema}"),
            "datacontenttype": "application/json",
            "data": data,
        });
        for q in &self.inner.queues {
            q.push(event.clone());
        }
    }

    fn execution_data(&self, e: &ExecutionRecord) -> Value {
        json!({
            "execution_sid": e.sid,
            "account_sid": self.inner.account_sid,
            "flow_sid": e.flow_sid,
            "contact_channel_address": e.contact,
            "status": e.status,
            "date_created": e.date_created,
            "date_updated": e.date_updated,
        })
    }

    /// Emit `execution.started` for `e`.
    pub fn execution_started(&self, e: &ExecutionRecord) {
        let data = self.execution_data(e);
        self.emit(EXECUTION_STARTED, "Studio.FlowExecutionEvent/2", data);
    }

    /// `reason` is a short code (`FLOW_END`, `ERROR`, `ENDED_BY_RETENTION`…).
    pub fn execution_ended(&self, e: &ExecutionRecord, reason: &str) {
        let mut data = self.execution_data(e);
        data["status"] = json!("ended");
        data["ended_reason"] = json!(reason);
        self.emit(EXECUTION_ENDED, "Studio.FlowExecutionEvent/2", data);
    }

    /// Emit `step.ended` for `s`, a step of flow `flow_sid`.
    pub fn step_ended(&self, flow_sid: &str, s: &StepRecord) {
        let data = json!({
            "step_sid": s.sid,
            "execution_sid": s.execution_sid,
            "account_sid": self.inner.account_sid,
            "flow_sid": flow_sid,
            "name": s.name,
            "transitioned_from": s.transitioned_from,
            "transitioned_to": s.transitioned_to,
            "event": s.event,
            "error": s.error,
            "date_created": s.date_created,
            "date_updated": s.date_created,
        });
        self.emit(STEP_ENDED, "Studio.FlowStepEvent/2", data);
    }
}

/// One sink's delivery loop: wait for events, let a batch fill (up to `batch_size` or
/// `flush_ms`), send it with retries, repeat.
async fn deliver(q: Arc<SinkQueue>, cfg: EventsConfig, client: reqwest::Client) {
    let batch_size = cfg.batch_size.max(1);
    loop {
        if q.len() == 0 {
            q.notify.notified().await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.flush_ms);
        while q.len() < batch_size && !q.hurry.load(Ordering::Relaxed) {
            tokio::select! {
                _ = q.notify.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        loop {
            q.sending.store(true, Ordering::Relaxed);
            let batch = q.take(batch_size);
            if batch.is_empty() {
                q.sending.store(false, Ordering::Relaxed);
                break;
            }
            post_with_retry(&client, &q.url, &batch, &cfg).await;
        }
    }
}

/// POST one batch; retried on network errors, 408, 429 and 5xx with exponential back-off.
/// Returns whether the sink accepted it.
async fn post_with_retry(
    client: &reqwest::Client,
    url: &str,
    batch: &[Value],
    cfg: &EventsConfig,
) -> bool {
    let attempts = cfg.max_attempts.max(1);
    let mut delay = Duration::from_millis(cfg.retry_base_ms.max(1));
    for attempt in 1..=attempts {
        let result = client
            .post(url)
            .timeout(Duration::from_secs(10))
            .json(batch)
            .send()
            .await;
        let retry = match result {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                let s = r.status();
                tracing::warn!(sink = %crate::redact::url(url), status = s.as_u16(), attempt, "event sink refused a batch");
                s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429
            }
            Err(e) => {
                tracing::warn!(sink = %crate::redact::url(url), error = %e.without_url(), attempt, "event sink unreachable");
                true
            }
        };
        if !retry || attempt == attempts {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    tracing::warn!(sink = %crate::redact::url(url), events = batch.len(), "event batch given up");
    crate::metrics::get().event_batches_dropped.inc();
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use axum::Json;

    fn exec() -> ExecutionRecord {
        ExecutionRecord {
            sid: "FN1".into(),
            flow_sid: "FW1".into(),
            contact: "+1555".into(),
            status: "active".into(),
            context: json!({}),
            state: json!({}),
            active_key: None,
            wait_until: None,
            date_created: now_rfc3339(),
            date_updated: now_rfc3339(),
        }
    }

    #[test]
    fn full_queue_drops_the_oldest() {
        let cfg = EventsConfig {
            sinks: vec!["http://127.0.0.1:9/".into()],
            queue_capacity: 2,
            ..EventsConfig::default()
        };
        let ev = Events::new(&cfg, "AC1").unwrap();
        for _ in 0..5 {
            ev.execution_started(&exec());
        }
        assert_eq!(ev.dropped(), 3);
        assert_eq!(ev.inner.queues[0].len(), 2);
        assert!(Events::new(
            &EventsConfig {
                sinks: vec!["ftp://x".into()],
                ..EventsConfig::default()
            },
            "AC1"
        )
        .is_err());
    }

    #[tokio::test]
    async fn batches_are_posted_and_retried() {
        crate::web::install_crypto_provider();
        let got: Arc<Mutex<Vec<Vec<Value>>>> = Arc::default();
        let calls = Arc::new(AtomicU64::new(0));
        let (g, c) = (got.clone(), calls.clone());
        let app = axum::Router::new().route(
            "/sink",
            post(move |Json(batch): Json<Vec<Value>>| {
                let (g, c) = (g.clone(), c.clone());
                async move {
                    // The first attempt fails: the batch must come again.
                    if c.fetch_add(1, Ordering::SeqCst) == 0 {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    g.lock().unwrap().push(batch);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let cfg = EventsConfig {
            sinks: vec![format!("http://{addr}/sink")],
            flush_ms: 100,
            retry_base_ms: 20,
            ..EventsConfig::default()
        };
        let ev = Events::start(&cfg, "AC1", crate::web::plain_client())
            .unwrap()
            .unwrap();
        let e = exec();
        ev.execution_started(&e);
        ev.step_ended(
            "FW1",
            &StepRecord {
                sid: "FT1".into(),
                execution_sid: "FN1".into(),
                name: "hello".into(),
                transitioned_from: "Trigger".into(),
                transitioned_to: "hello".into(),
                event: "incomingMessage".into(),
                context: json!({}),
                error: None,
                date_created: now_rfc3339(),
            },
        );
        ev.execution_ended(&e, "FLOW_END");
        let start = std::time::Instant::now();
        while got.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let batches = got.lock().unwrap().clone();
        assert_eq!(batches.len(), 1, "{batches:?}");
        let types: Vec<&str> = batches[0]
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, [EXECUTION_STARTED, STEP_ENDED, EXECUTION_ENDED]);
        assert_eq!(batches[0][0]["specversion"], "1.0");
        assert_eq!(batches[0][1]["data"]["name"], "hello");
        assert_eq!(batches[0][2]["data"]["ended_reason"], "FLOW_END");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
