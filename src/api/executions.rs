//! `/v2/Flows/{FlowSid}/Executions`: start an execution by REST (trigger `incomingRequest`,
//! contact = `To`), list, fetch, end, delete; the execution's context; its steps.
//!
//! One active execution per (flow, contact), shared with messaging through the same session
//! key in the store: a second create while one is active is 409. The execution runs in its own
//! task on a messaging channel; the answer is given as soon as it is stored.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::flows::compiled;
use super::paging::{page, PageRequest};
use super::{twilio_date, Api};
use crate::call::outgoing::OutgoingChannel;
use crate::flow::{ExecutionInit, Trigger};
use crate::messaging::{session_key, MessagingChannel};
use crate::routing::LoadedFlow;
use crate::runner::NewExecution;
use crate::store::{
    new_sid, now_rfc3339, ExecutionFilter, ExecutionRecord, StepRecord, StoreError,
};
use crate::web::params::Params;
use crate::web::ApiError;

type Answer = Result<Json<Value>, ApiError>;

fn execution_json(api: &Api, e: &ExecutionRecord) -> Value {
    let base = api.url(&format!("/v2/Flows/{}/Executions/{}", e.flow_sid, e.sid));
    json!({
        "sid": e.sid,
        "account_sid": api.credentials.account_sid,
        "flow_sid": e.flow_sid,
        "contact_channel_address": e.contact,
        "context": e.context,
        "status": e.status,
        "date_created": twilio_date(&e.date_created),
        "date_updated": twilio_date(&e.date_updated),
        "url": base,
        "links": {
            "steps": format!("{base}/Steps"),
            "execution_context": format!("{base}/Context"),
        }
    })
}

fn step_json(api: &Api, flow_sid: &str, s: &StepRecord) -> Value {
    let base = api.url(&format!(
        "/v2/Flows/{flow_sid}/Executions/{}/Steps/{}",
        s.execution_sid, s.sid
    ));
    json!({
        "sid": s.sid,
        "account_sid": api.credentials.account_sid,
        "flow_sid": flow_sid,
        "execution_sid": s.execution_sid,
        "name": s.name,
        "context": s.context,
        "transitioned_from": s.transitioned_from,
        "transitioned_to": s.transitioned_to,
        "date_created": twilio_date(&s.date_created),
        "date_updated": twilio_date(&s.date_created),
        "url": base,
        "links": {"step_context": format!("{base}/Context")},
    })
}

/// Whether the flow exists here: created through the API or configured.
async fn flow_exists(api: &Api, flow_sid: &str) -> Result<(), ApiError> {
    if api.store.flow(flow_sid).await?.is_some() || api.router.configured(flow_sid).is_some() {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("/v2/Flows/{flow_sid}")))
    }
}

/// The execution, if it belongs to the flow.
async fn execution_of(api: &Api, flow_sid: &str, sid: &str) -> Result<ExecutionRecord, ApiError> {
    api.store
        .execution(sid)
        .await?
        .filter(|e| e.flow_sid == flow_sid)
        .ok_or_else(|| ApiError::NotFound(format!("/v2/Flows/{flow_sid}/Executions/{sid}")))
}

/// Which flow a new execution for `contact` runs: test users get the latest revision (the
/// draft), others the latest published one. Configured flows run as loaded.
async fn flow_for(api: &Api, flow_sid: &str, contact: &str) -> Result<Arc<LoadedFlow>, ApiError> {
    if api.store.flow(flow_sid).await?.is_none() {
        return api
            .router
            .configured(flow_sid)
            .ok_or_else(|| ApiError::NotFound(format!("/v2/Flows/{flow_sid}")));
    }
    let test_user = api.store.is_test_user(flow_sid, contact).await?;
    let rev = api.store.latest_revision(flow_sid, !test_user).await?.ok_or_else(|| {
        ApiError::bad(format!(
            "Flow {flow_sid} has no published revision: publish it, or add {contact} to its test users"
        ))
    })?;
    compiled(api, &rev)
}

pub async fn create(
    State(api): State<Arc<Api>>,
    Path(flow_sid): Path<String>,
    p: Params,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let to = p.required("To")?.to_string();
    let from = p.required("From")?.to_string();
    let data = match p.get("Parameters").filter(|s| !s.trim().is_empty()) {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => return Err(ApiError::bad("Parameters must be a JSON object")),
        },
    };
    let flow = flow_for(&api, &flow_sid, &to).await?;
    let key = session_key(&flow_sid, &to);
    if let Some(active) = api.store.active_for_key(&key).await? {
        return Err(ApiError::ActiveExecution(active.sid));
    }
    let sid = new_sid("FN");
    let mut request = Map::new();
    request.insert("To".into(), json!(to));
    request.insert("From".into(), json!(from));
    request.insert("Parameters".into(), Value::Object(data.clone()));
    let new = NewExecution {
        init: ExecutionInit {
            sid: sid.clone(),
            flow_sid: flow_sid.clone(),
            channel_address: from,
            contact_address: to.clone(),
            data: Value::Object(data),
        },
        trigger: Trigger::IncomingRequest { request },
        contact: to,
        active_key: Some(key.clone()),
    };

    // The task waits for its abort handle to be registered, so it can always remove it.
    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let task_api = api.clone();
    let task_sid = sid.clone();
    let mut task = tokio::spawn(async move {
        let _ = ready.await;
        let mut channel = MessagingChannel {
            sink: task_api.sink.clone(),
        };
        // With trunks, the execution may place a call (make-outgoing-call-v2) and go on on it.
        let result = match &task_api.calls {
            Some(calls) => {
                let mut outgoing = OutgoingChannel::new(channel, calls.clone(), &flow.sid);
                task_api.runner.start(&flow, new, &mut outgoing).await
            }
            None => task_api.runner.start(&flow, new, &mut channel).await,
        };
        task_api
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task_sid);
        result.map(|_| ())
    });
    api.running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(sid.clone(), task.abort_handle());
    let _ = go.send(());

    // Answer once the execution is stored (or the start failed).
    let mut finished = false;
    loop {
        if !finished {
            tokio::select! {
                joined = &mut task => {
                    finished = true;
                    match joined {
                        Ok(Ok(())) => {}
                        Ok(Err(StoreError::ActiveExists(_))) => {
                            let holder = api.store.active_for_key(&key).await?;
                            return Err(ApiError::ActiveExecution(
                                holder.map(|e| e.sid).unwrap_or_default(),
                            ));
                        }
                        Ok(Err(e)) => {
                            if api.store.execution(&sid).await?.is_none() {
                                return Err(e.into());
                            }
                            tracing::warn!(execution = %sid, error = %e, "execution stopped on a store error");
                        }
                        Err(e) => return Err(ApiError::Internal(format!("execution task: {e}"))),
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        if let Some(rec) = api.store.execution(&sid).await? {
            return Ok((StatusCode::CREATED, Json(execution_json(&api, &rec))));
        }
        if finished {
            return Err(ApiError::Internal(format!(
                "execution {sid} was not stored"
            )));
        }
    }
}

/// `DateCreatedFrom` / `DateCreatedTo`: RFC 3339 date-times or plain dates (a `To` date
/// includes that whole day), in the store's form.
fn date_bound(p: &Params, name: &str, end_of_day: bool) -> Result<Option<String>, ApiError> {
    let Some(v) = p.get(name).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let when = if let Ok(d) = chrono::DateTime::parse_from_rfc3339(v) {
        d.with_timezone(&chrono::Utc)
    } else if let Ok(day) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        let t = if end_of_day {
            day.and_hms_milli_opt(23, 59, 59, 999)
        } else {
            day.and_hms_opt(0, 0, 0)
        };
        t.ok_or_else(|| ApiError::bad(format!("{name}: invalid date {v:?}")))?
            .and_utc()
    } else {
        return Err(ApiError::bad(format!(
            "{name} must be an ISO 8601 date-time like 2026-11-26T02:58:33Z, got {v:?}"
        )));
    };
    let millis = if end_of_day && !v.contains('.') && v.contains('T') {
        // A bound given to the second includes that whole second.
        when + chrono::Duration::milliseconds(999)
    } else {
        when
    };
    Ok(Some(
        millis.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    ))
}

pub async fn list(
    State(api): State<Arc<Api>>,
    Path(flow_sid): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    flow_exists(&api, &flow_sid).await?;
    let p = Params::from_query(q.as_deref());
    let req = PageRequest::from_params(&p)?;
    let filter = ExecutionFilter {
        created_from: date_bound(&p, "DateCreatedFrom", false)?,
        created_to: date_bound(&p, "DateCreatedTo", true)?,
    };
    let rows = api
        .store
        .list_executions(&flow_sid, &filter, req.offset, req.fetch_limit())
        .await?
        .iter()
        .map(|e| execution_json(&api, e))
        .collect();
    let kept: Vec<(&str, String)> = ["DateCreatedFrom", "DateCreatedTo"]
        .into_iter()
        .filter_map(|k| {
            p.get(k)
                .filter(|v| !v.is_empty())
                .map(|v| (k, v.to_string()))
        })
        .collect();
    let base = api.url(&format!("/v2/Flows/{flow_sid}/Executions"));
    Ok(Json(page("executions", rows, req, &base, &kept)))
}

pub async fn fetch(
    State(api): State<Arc<Api>>,
    Path((flow_sid, sid)): Path<(String, String)>,
) -> Answer {
    let e = execution_of(&api, &flow_sid, &sid).await?;
    Ok(Json(execution_json(&api, &e)))
}

/// Stop this node's task driving an execution, if any.
fn stop(api: &Api, sid: &str) {
    if let Some(h) = api
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(sid)
    {
        h.abort();
    }
}

/// `Status=ended` ends an active execution and frees its contact's session.
pub async fn update(
    State(api): State<Arc<Api>>,
    Path((flow_sid, sid)): Path<(String, String)>,
    p: Params,
) -> Answer {
    match p.required("Status")? {
        "ended" => {}
        other => {
            return Err(ApiError::bad(format!(
                "Status can only be set to ended, got {other:?}"
            )))
        }
    }
    let e = execution_of(&api, &flow_sid, &sid).await?;
    if e.status == "active" {
        stop(&api, &sid);
        let mut state = e.state.clone();
        if let Some(o) = state.as_object_mut() {
            o.insert("status".into(), json!("ended"));
            o.insert("current".into(), Value::Null);
        }
        let now = now_rfc3339();
        let ended = api.store.end_execution(&sid, &state, &now).await?;
        tracing::info!(execution = %sid, flow = %flow_sid, "execution ended through the API");
        if let (true, Some(ev)) = (ended, &api.runner.events) {
            let rec = ExecutionRecord {
                status: "ended".into(),
                date_updated: now,
                ..e.clone()
            };
            ev.execution_ended(&rec, "ENDED_BY_API");
        }
    }
    let e = execution_of(&api, &flow_sid, &sid).await?;
    Ok(Json(execution_json(&api, &e)))
}

pub async fn delete(
    State(api): State<Arc<Api>>,
    Path((flow_sid, sid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    execution_of(&api, &flow_sid, &sid).await?;
    stop(&api, &sid);
    api.store.delete_execution(&sid).await?;
    tracing::info!(execution = %sid, flow = %flow_sid, "execution deleted through the API");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn context(
    State(api): State<Arc<Api>>,
    Path((flow_sid, sid)): Path<(String, String)>,
) -> Answer {
    let e = execution_of(&api, &flow_sid, &sid).await?;
    Ok(Json(json!({
        "account_sid": api.credentials.account_sid,
        "context": e.context,
        "flow_sid": flow_sid,
        "execution_sid": sid,
        "url": api.url(&format!("/v2/Flows/{flow_sid}/Executions/{sid}/Context")),
    })))
}

pub async fn steps(
    State(api): State<Arc<Api>>,
    Path((flow_sid, sid)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Answer {
    execution_of(&api, &flow_sid, &sid).await?;
    let req = PageRequest::from_params(&Params::from_query(q.as_deref()))?;
    let rows = api
        .store
        .steps_page(&sid, req.offset, req.fetch_limit())
        .await?
        .iter()
        .map(|s| step_json(&api, &flow_sid, s))
        .collect();
    let base = api.url(&format!("/v2/Flows/{flow_sid}/Executions/{sid}/Steps"));
    Ok(Json(page("steps", rows, req, &base, &[])))
}

async fn step_of(api: &Api, flow_sid: &str, sid: &str, step: &str) -> Result<StepRecord, ApiError> {
    execution_of(api, flow_sid, sid).await?;
    api.store
        .step(step)
        .await?
        .filter(|s| s.execution_sid == sid)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "/v2/Flows/{flow_sid}/Executions/{sid}/Steps/{step}"
            ))
        })
}

pub async fn step(
    State(api): State<Arc<Api>>,
    Path((flow_sid, sid, step)): Path<(String, String, String)>,
) -> Answer {
    let s = step_of(&api, &flow_sid, &sid, &step).await?;
    Ok(Json(step_json(&api, &flow_sid, &s)))
}

pub async fn step_context(
    State(api): State<Arc<Api>>,
    Path((flow_sid, sid, step)): Path<(String, String, String)>,
) -> Answer {
    let s = step_of(&api, &flow_sid, &sid, &step).await?;
    Ok(Json(json!({
        "account_sid": api.credentials.account_sid,
        "context": s.context,
        "flow_sid": flow_sid,
        "execution_sid": sid,
        "step_sid": s.sid,
        "url": api.url(&format!("/v2/Flows/{flow_sid}/Executions/{sid}/Steps/{}/Context", s.sid)),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::params::decode_form;

    #[test]
    fn date_bounds() {
        let p = Params(decode_form(
            b"DateCreatedFrom=2026-01-02&DateCreatedTo=2026-01-02T10%3A00%3A00Z&Bad=yesterday",
        ));
        assert_eq!(
            date_bound(&p, "DateCreatedFrom", false).unwrap().unwrap(),
            "2026-01-02T00:00:00.000Z"
        );
        assert_eq!(
            date_bound(&p, "DateCreatedTo", true).unwrap().unwrap(),
            "2026-01-02T10:00:00.999Z"
        );
        assert!(date_bound(&p, "Bad", false).is_err());
        assert_eq!(date_bound(&p, "Absent", false).unwrap(), None);
    }
}
