//! The inbound messaging webhook of a flow, as Twilio's: `POST
//! /v1/Accounts/{AccountSid}/Flows/{FlowSid}` with the incoming-message form parameters
//! (`From`, `To`, `Body`, `MessageSid`, `NumMedia`, `MediaUrlN`…). The request must carry a
//! valid `X-Twilio-Signature` (signed with the API auth token over `[api] public_url` + path +
//! query) unless `[messaging] validate_signatures = false`. The answer is empty TwiML: the
//! flow's replies go out through the outbound provider.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value};

use super::{Conversations, Delivery, InboundMessage};
use crate::web::params::decode_form;
use crate::web::signature;
use crate::web::ApiError;

pub(crate) const SIGNATURE_HEADER: &str = "x-twilio-signature";
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";
/// The webhook answers after this even if the flow is still busy (it goes on in the background).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

pub(crate) struct Webhook {
    pub conversations: Arc<Conversations>,
    pub account_sid: String,
    auth_token: String,
    /// Base of the URL providers call (`[api] public_url`), without a trailing slash.
    pub public_url: String,
    pub validate_signatures: bool,
}

impl Webhook {
    pub fn new(
        conversations: Arc<Conversations>,
        account_sid: &str,
        auth_token: &str,
        public_url: &str,
        validate_signatures: bool,
    ) -> Webhook {
        Webhook {
            conversations,
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
            public_url: public_url.trim_end_matches('/').to_string(),
            validate_signatures,
        }
    }
}

pub(crate) fn routes(w: Arc<Webhook>) -> axum::Router {
    axum::Router::new()
        .route("/v1/Accounts/{account}/Flows/{flow}", post(inbound))
        .with_state(w)
}

fn twiml() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml")],
        EMPTY_TWIML,
    )
        .into_response()
}

async fn inbound(
    State(w): State<Arc<Webhook>>,
    Path((account, flow_sid)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/Accounts/{account}/Flows/{flow_sid}");
    let params = decode_form(&body);
    if w.validate_signatures {
        let url = match &query {
            Some(q) => format!("{}{path}?{q}", w.public_url),
            None => format!("{}{path}", w.public_url),
        };
        let given = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !signature::valid(&w.auth_token, &url, &params, given) {
            tracing::warn!(flow = %flow_sid, "inbound message webhook: missing or invalid X-Twilio-Signature");
            seen("bad_signature");
            return (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain")],
                "invalid X-Twilio-Signature\n",
            )
                .into_response();
        }
    }
    if account != w.account_sid {
        seen("not_found");
        return ApiError::NotFound(path).into_response();
    }
    let Some(flow) = w.conversations.runner.flow_by_sid(&flow_sid).await else {
        seen("not_found");
        return ApiError::NotFound(path).into_response();
    };
    let m = match inbound_message(&params) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let (from, message_sid) = (m.from.clone(), m.message_sid.clone());
    // One delivery per MessageSid: a provider's retry, or a signed request replayed, must not
    // run the flow again (and send its replies again).
    let store = w.conversations.runner.store.clone();
    if !message_sid.is_empty() {
        match store.claim_inbound_message(&message_sid).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(flow = %flow_sid, message = %message_sid, "message already delivered: repeat ignored");
                seen("repeat");
                return twiml();
            }
            Err(e) => {
                tracing::error!(flow = %flow_sid, error = %e, "inbound message");
                return ApiError::Store(e).into_response();
            }
        }
    }
    let release = |store: crate::store::Store, sid: String| async move {
        if !sid.is_empty() {
            if let Err(e) = store.release_inbound_message(&sid).await {
                tracing::warn!(message = %sid, error = %e, "cannot release the message's delivery claim");
            }
        }
    };
    let conv = w.conversations.clone();
    let task = tokio::spawn(async move { conv.inbound(&flow, m).await });
    match tokio::time::timeout(ANSWER_WITHIN, task).await {
        Ok(Ok(Ok(d))) => {
            seen("delivered");
            match &d {
                Delivery::Busy { sid } => {
                    tracing::info!(execution = %sid, from = %from, message = %message_sid, "message ignored: the contact's execution is not waiting for a reply")
                }
                Delivery::Started { sid, .. }
                | Delivery::Resumed { sid, .. }
                | Delivery::ToCall { sid } => {
                    tracing::debug!(execution = %sid, message = %message_sid, "message delivered")
                }
            }
            twiml()
        }
        // Not delivered: the provider's retry may try again.
        Ok(Ok(Err(e))) => {
            tracing::error!(flow = %flow_sid, error = %e, "inbound message");
            seen("error");
            release(store, message_sid).await;
            ApiError::Store(e).into_response()
        }
        Ok(Err(e)) => {
            release(store, message_sid).await;
            ApiError::Internal(format!("inbound message task: {e}")).into_response()
        }
        Err(_) => {
            tracing::info!(flow = %flow_sid, message = %message_sid, "flow still busy: answered the webhook, the execution goes on");
            twiml()
        }
    }
}

/// Count one webhook request by its result.
fn seen(result: &str) {
    crate::metrics::outcome(&crate::metrics::get().webhook_requests, result);
}

/// The webhook's parameters as an inbound message (`From` is required).
pub fn inbound_message(params: &[(String, String)]) -> Result<InboundMessage, ApiError> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let from = get("From");
    if from.is_empty() {
        return Err(ApiError::missing("From"));
    }
    let mut message_sid = get("MessageSid");
    if message_sid.is_empty() {
        message_sid = get("SmsMessageSid");
    }
    let mut extra = Map::new();
    for (k, v) in params {
        if !matches!(k.as_str(), "From" | "To" | "Body" | "MessageSid") {
            extra
                .entry(k.clone())
                .or_insert_with(|| Value::String(v.clone()));
        }
    }
    Ok(InboundMessage {
        from,
        to: get("To"),
        body: get("Body"),
        message_sid,
        extra,
        flow_data: Map::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_the_message() {
        let p = decode_form(b"From=%2B15551234&To=%2B15559999&Body=hi+there&MessageSid=SM1&NumMedia=1&MediaUrl0=http%3A%2F%2Fx%2Fa.jpg");
        let m = inbound_message(&p).unwrap();
        assert_eq!(m.from, "+15551234");
        assert_eq!(m.body, "hi there");
        let f = m.fields();
        assert_eq!(f["MessageSid"], "SM1");
        assert_eq!(f["NumMedia"], "1");
        assert_eq!(f["MediaUrl0"], "http://x/a.jpg");
        assert!(inbound_message(&decode_form(b"Body=x")).is_err());
    }
}
