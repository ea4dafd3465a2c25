//! HTTP-shaped widgets: make-http-request, run-function, run-subflow.

use serde_json::{json, Map, Value};

use super::{Action, PropError, Props, Resolution};
use crate::flow::effect::{Effect, HttpAuth, HttpBody, HttpRequest, Outcome, RunSubflow};

/// Studio's HTTP/function timeout (seconds).
pub(crate) const HTTP_TIMEOUT_SECS: u32 = 10;
const FORM: &str = "application/x-www-form-urlencoded;charset=utf-8";

pub(crate) fn enter(props: &Props<'_>) -> Result<Action, PropError> {
    match props.state.kind.as_str() {
        "make-http-request" => {
            let Some(url) = props.text("url")? else {
                return Ok(fail("make-http-request", "the request URL rendered empty"));
            };
            let method = props
                .text("method")?
                .map(|m| m.to_ascii_uppercase())
                .unwrap_or_else(|| "GET".into());
            let content_type = props.text("content_type")?.unwrap_or_else(|| FORM.into());
            let params = props.pairs("parameters")?;
            let (query, body) = if method == "GET" {
                (params, HttpBody::None)
            } else if content_type.contains("json") {
                (Vec::new(), HttpBody::Text(props.text_or_empty("body")?))
            } else {
                (Vec::new(), HttpBody::Form(params))
            };
            Ok(Action::Effect(Effect::HttpRequest(HttpRequest {
                method,
                url,
                content_type,
                query,
                headers: props.pairs("headers")?,
                body,
                timeout_secs: HTTP_TIMEOUT_SECS,
                auth: if props.bool_or("add_twilio_auth", false)? {
                    HttpAuth::TwilioBasic
                } else {
                    HttpAuth::None
                },
            })))
        }
        "run-function" => {
            let Some(url) = props.text("url")? else {
                let sid = props.text("function_sid")?.unwrap_or_default();
                return Ok(fail(
                    "run-function",
                    &format!(
                        "Function \"{sid}\" has no URL: Twilio Functions are not available here; set the widget's url or map the Function SID to a URL in configuration"
                    ),
                ));
            };
            Ok(Action::Effect(Effect::HttpRequest(HttpRequest {
                method: "POST".into(),
                url,
                content_type: FORM.into(),
                query: Vec::new(),
                headers: Vec::new(),
                body: HttpBody::Form(props.pairs("parameters")?),
                timeout_secs: HTTP_TIMEOUT_SECS,
                auth: HttpAuth::TwilioSignature,
            })))
        }
        // run-subflow
        _ => Ok(Action::Effect(Effect::RunSubflow(RunSubflow {
            flow_sid: props.text_or_empty("flow_sid")?,
            revision: props
                .text("flow_revision")?
                .unwrap_or_else(|| "LatestPublished".into()),
            parameters: props
                .pairs("parameters")?
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        }))),
    }
}

fn fail(kind: &str, msg: &str) -> Action {
    // Both kinds have a failure event, so this always resolves.
    Action::Done(Resolution::failure(kind, msg).unwrap_or_else(|| Resolution::event("failed")))
}

/// `status_code`, `content_type`, `body` and, for JSON bodies, `parsed`.
fn response(status: u16, content_type: Option<String>, body: String) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("status_code".into(), json!(status));
    let looks_json = content_type.as_deref().is_some_and(|c| c.contains("json"))
        || matches!(body.trim_start().chars().next(), Some('{' | '['));
    if looks_json {
        if let Ok(parsed) = serde_json::from_str::<Value>(&body) {
            m.insert("parsed".into(), parsed);
        }
    }
    m.insert(
        "content_type".into(),
        json!(content_type.unwrap_or_default()),
    );
    m.insert("body".into(), json!(body));
    m
}

pub(crate) fn resolve(kind: &str, outcome: Outcome) -> Result<Resolution, Outcome> {
    Ok(match (kind, outcome) {
        (
            "make-http-request" | "run-function",
            Outcome::Http {
                status,
                content_type,
                body,
            },
        ) => {
            let ok = (200..300).contains(&status);
            let event = match (kind, ok) {
                (_, true) => "success",
                ("run-function", false) => "fail",
                _ => "failed",
            };
            Resolution {
                event: event.into(),
                publish: Some(response(status, content_type, body)),
                error: (!ok).then(|| format!("HTTP status {status}")),
                ..Resolution::default()
            }
        }
        ("make-http-request", Outcome::Timeout) => Resolution {
            event: "failed".into(),
            error: Some("request timed out".into()),
            ..Resolution::default()
        },
        ("run-function", Outcome::Timeout) => Resolution {
            event: "fail".into(),
            error: Some("request timed out".into()),
            ..Resolution::default()
        },
        ("run-subflow", Outcome::SubflowCompleted { variables }) => {
            Resolution::published("completed", variables)
        }
        (_, other) => return Err(other),
    })
}
