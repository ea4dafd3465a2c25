//! `/v2/Flows`: create, list, fetch, update (a new revision each time), delete; revisions;
//! validation; test users. Invalid definitions are refused like Studio refuses them, with each
//! fault's state and JSON path in `details.errors`.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::paging::{page, PageRequest};
use super::{twilio_date, Api};
use crate::flow::{Flow, FlowError, ValidationError};
use crate::routing::LoadedFlow;
use crate::store::{new_sid, now_rfc3339, FlowRecord, RevisionRecord};
use crate::web::params::Params;
use crate::web::ApiError;

type Answer = Result<Json<Value>, ApiError>;

fn fault_json(e: &ValidationError) -> Value {
    json!({"message": e.to_string(), "property_path": e.path, "state": e.state})
}

/// A checked definition: its normalised JSON text and the compiler's warnings.
#[derive(Debug)]
struct Checked {
    text: String,
    warnings: Value,
}

/// Parse and validate a `Definition` parameter; a fault is a 400 naming state and path.
fn check_definition(text: &str) -> Result<Checked, ApiError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ApiError::BadRequest {
        message: format!("Invalid Flow Definition: Definition is not JSON: {e}"),
        details: Some(json!({"errors": [{"message": format!("not JSON: {e}"), "property_path": "$", "state": null}]})),
    })?;
    match Flow::from_value(&value) {
        Ok(flow) => Ok(Checked {
            text: value.to_string(),
            warnings: Value::Array(flow.warnings().iter().map(fault_json).collect()),
        }),
        Err(FlowError::Invalid(errs)) => {
            let first = errs
                .iter()
                .next()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let more = errs.0.len().saturating_sub(1);
            let message = if more > 0 {
                format!("Invalid Flow Definition: {first} (and {more} more)")
            } else {
                format!("Invalid Flow Definition: {first}")
            };
            Err(ApiError::BadRequest {
                message,
                details: Some(json!({"errors": errs.iter().map(fault_json).collect::<Vec<_>>()})),
            })
        }
        Err(FlowError::Json(e)) => Err(ApiError::bad(format!("Invalid Flow Definition: {e}"))),
    }
}

fn status_param(p: &Params) -> Result<String, ApiError> {
    match p.required("Status")? {
        s @ ("draft" | "published") => Ok(s.to_string()),
        other => Err(ApiError::bad(format!(
            "Status must be draft or published, got {other:?}"
        ))),
    }
}

fn flow_json(api: &Api, f: &FlowRecord, rev: &RevisionRecord) -> Value {
    let base = api.url(&format!("/v2/Flows/{}", f.sid));
    json!({
        "sid": f.sid,
        "account_sid": api.credentials.account_sid,
        "friendly_name": f.friendly_name,
        "definition": serde_json::from_str::<Value>(&rev.definition).unwrap_or(Value::Null),
        "status": f.status,
        "revision": f.revision,
        "commit_message": rev.commit_message,
        "valid": rev.valid,
        "errors": rev.errors,
        "warnings": rev.warnings,
        "date_created": twilio_date(&f.date_created),
        "date_updated": twilio_date(&f.date_updated),
        "webhook_url": api.url(&format!("/v1/Accounts/{}/Flows/{}", api.credentials.account_sid, f.sid)),
        "url": base,
        "links": {
            "test_users": format!("{base}/TestUsers"),
            "revisions": format!("{base}/Revisions"),
            "executions": format!("{base}/Executions"),
        }
    })
}

fn revision_json(api: &Api, rev: &RevisionRecord) -> Value {
    json!({
        "sid": rev.flow_sid,
        "account_sid": api.credentials.account_sid,
        "friendly_name": rev.friendly_name,
        "definition": serde_json::from_str::<Value>(&rev.definition).unwrap_or(Value::Null),
        "status": rev.status,
        "revision": rev.revision,
        "commit_message": rev.commit_message,
        "valid": rev.valid,
        "errors": rev.errors,
        "date_created": twilio_date(&rev.date_created),
        "date_updated": twilio_date(&rev.date_updated),
        "url": api.url(&format!("/v2/Flows/{}/Revisions/{}", rev.flow_sid, rev.revision)),
    })
}

async fn found(api: &Api, sid: &str) -> Result<(FlowRecord, RevisionRecord), ApiError> {
    let missing = || ApiError::NotFound(format!("/v2/Flows/{sid}"));
    let f = api.store.flow(sid).await?.ok_or_else(missing)?;
    let rev = api
        .store
        .revision(sid, f.revision)
        .await?
        .ok_or_else(missing)?;
    Ok((f, rev))
}

/// Compile a revision once and keep it.
pub(crate) fn compiled(api: &Api, rev: &RevisionRecord) -> Result<Arc<LoadedFlow>, ApiError> {
    let key = (rev.flow_sid.clone(), rev.revision);
    let mut cache = api.compiled.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = cache.get(&key) {
        return Ok(f.clone());
    }
    let name = format!("{} (revision {})", rev.friendly_name, rev.revision);
    let flow = LoadedFlow::with_sid(&rev.flow_sid, &name, &rev.definition)
        .map(Arc::new)
        .map_err(|e| ApiError::Internal(format!("stored flow {}: {e}", rev.flow_sid)))?;
    cache.insert(key, flow.clone());
    Ok(flow)
}

/// Make the router's copy of a flow its runnable revision.
async fn refresh_router(api: &Api, sid: &str) -> Result<(), ApiError> {
    if let Some(rev) = api.store.runnable_revision(sid).await? {
        api.router.register(compiled(api, &rev)?);
    }
    Ok(())
}

pub async fn create(
    State(api): State<Arc<Api>>,
    p: Params,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = p.required("FriendlyName")?.to_string();
    let status = status_param(&p)?;
    let checked = check_definition(p.required("Definition")?)?;
    let now = now_rfc3339();
    let sid = new_sid("FW");
    let rev = RevisionRecord {
        flow_sid: sid.clone(),
        revision: 1,
        friendly_name: name,
        definition: checked.text,
        status,
        commit_message: p.get("CommitMessage").map(str::to_string),
        valid: true,
        errors: json!([]),
        warnings: checked.warnings,
        date_created: now.clone(),
        date_updated: now,
    };
    api.store.create_flow(&rev).await?;
    refresh_router(&api, &sid).await?;
    let (f, rev) = found(&api, &sid).await?;
    tracing::info!(flow = %sid, name = %f.friendly_name, status = %f.status, "flow created through the API");
    Ok((StatusCode::CREATED, Json(flow_json(&api, &f, &rev))))
}

pub async fn list(State(api): State<Arc<Api>>, RawQuery(q): RawQuery) -> Answer {
    let req = PageRequest::from_params(&Params::from_query(q.as_deref()))?;
    let mut rows = Vec::new();
    for f in api.store.flows(req.offset, req.fetch_limit()).await? {
        if let Some(rev) = api.store.revision(&f.sid, f.revision).await? {
            rows.push(flow_json(&api, &f, &rev));
        }
    }
    Ok(Json(page("flows", rows, req, &api.url("/v2/Flows"), &[])))
}

pub async fn fetch(State(api): State<Arc<Api>>, Path(sid): Path<String>) -> Answer {
    let (f, rev) = found(&api, &sid).await?;
    Ok(Json(flow_json(&api, &f, &rev)))
}

/// An update always makes a new revision; what it does not name is kept from the latest one.
pub async fn update(State(api): State<Arc<Api>>, Path(sid): Path<String>, p: Params) -> Answer {
    let (f, latest) = found(&api, &sid).await?;
    let status = status_param(&p)?;
    let (definition, warnings) = match p.get("Definition").filter(|d| !d.is_empty()) {
        Some(d) => {
            let c = check_definition(d)?;
            (c.text, c.warnings)
        }
        None => (latest.definition.clone(), latest.warnings.clone()),
    };
    let now = now_rfc3339();
    let rev = RevisionRecord {
        flow_sid: sid.clone(),
        revision: 0,
        friendly_name: p
            .get("FriendlyName")
            .filter(|n| !n.is_empty())
            .unwrap_or(&f.friendly_name)
            .to_string(),
        definition,
        status,
        commit_message: p.get("CommitMessage").map(str::to_string),
        valid: true,
        errors: json!([]),
        warnings,
        date_created: now.clone(),
        date_updated: now,
    };
    if api.store.add_revision(&rev).await?.is_none() {
        return Err(ApiError::NotFound(format!("/v2/Flows/{sid}")));
    }
    refresh_router(&api, &sid).await?;
    let (f, rev) = found(&api, &sid).await?;
    tracing::info!(flow = %sid, revision = f.revision, status = %f.status, "flow updated through the API");
    Ok(Json(flow_json(&api, &f, &rev)))
}

pub async fn delete(
    State(api): State<Arc<Api>>,
    Path(sid): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !api.store.delete_flow(&sid).await? {
        return Err(ApiError::NotFound(format!("/v2/Flows/{sid}")));
    }
    api.router.unregister(&sid);
    api.compiled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(s, _), _| *s != sid);
    tracing::info!(flow = %sid, "flow deleted through the API");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn validate(p: Params) -> Answer {
    p.required("FriendlyName")?;
    status_param(&p)?;
    check_definition(p.required("Definition")?)?;
    Ok(Json(json!({"valid": true})))
}

pub async fn revisions(
    State(api): State<Arc<Api>>,
    Path(sid): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    found(&api, &sid).await?;
    let req = PageRequest::from_params(&Params::from_query(q.as_deref()))?;
    let rows = api
        .store
        .revisions(&sid, req.offset, req.fetch_limit())
        .await?
        .iter()
        .map(|r| revision_json(&api, r))
        .collect();
    let base = api.url(&format!("/v2/Flows/{sid}/Revisions"));
    Ok(Json(page("revisions", rows, req, &base, &[])))
}

/// `/Revisions/{Revision}`: a number, `LatestPublished` or `LatestRevision`.
pub async fn revision(
    State(api): State<Arc<Api>>,
    Path((sid, which)): Path<(String, String)>,
) -> Answer {
    let missing = || ApiError::NotFound(format!("/v2/Flows/{sid}/Revisions/{which}"));
    let rev = match which.as_str() {
        "LatestPublished" => api.store.latest_revision(&sid, true).await?,
        "LatestRevision" => api.store.latest_revision(&sid, false).await?,
        n => match n.parse::<i64>() {
            Ok(n) => api.store.revision(&sid, n).await?,
            Err(_) => return Err(missing()),
        },
    };
    Ok(Json(revision_json(&api, &rev.ok_or_else(missing)?)))
}

fn test_users_json(api: &Api, sid: &str, users: Vec<String>) -> Value {
    json!({
        "sid": sid,
        "account_sid": api.credentials.account_sid,
        "test_users": users,
        "url": api.url(&format!("/v2/Flows/{sid}/TestUsers")),
    })
}

pub async fn test_users(State(api): State<Arc<Api>>, Path(sid): Path<String>) -> Answer {
    found(&api, &sid).await?;
    let users = api.store.test_users(&sid).await?;
    Ok(Json(test_users_json(&api, &sid, users)))
}

/// Replace the test users with the `TestUsers` parameters (repeated).
pub async fn set_test_users(
    State(api): State<Arc<Api>>,
    Path(sid): Path<String>,
    p: Params,
) -> Answer {
    found(&api, &sid).await?;
    let users: Vec<String> = p
        .all("TestUsers")
        .into_iter()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if users.is_empty() {
        return Err(ApiError::missing("TestUsers"));
    }
    api.store.set_test_users(&sid, &users).await?;
    let users = api.store.test_users(&sid).await?;
    Ok(Json(test_users_json(&api, &sid, users)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_checked_with_state_and_path() {
        let ok = check_definition(crate::routing::DEMO_FLOW).unwrap();
        assert!(ok.warnings.is_array());
        let bad = r#"{"initial_state":"Trigger","states":[{"name":"Trigger","type":"trigger","properties":{},"transitions":[{"event":"incomingCall","next":"nowhere"}]}]}"#;
        let err = check_definition(bad).unwrap_err();
        let body = err.body();
        assert_eq!(body["status"], 400);
        let e = &body["details"]["errors"][0];
        assert_eq!(e["state"], "Trigger");
        assert_eq!(e["property_path"], "$.states[0].transitions[0].next");
        assert!(
            body["message"].as_str().unwrap().contains("Trigger"),
            "{body}"
        );
        assert!(check_definition("{nope").is_err());
    }
}
