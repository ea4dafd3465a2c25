//! HTTP: `/healthz` (open) and the Studio REST API v2 under `/v2` (HTTP Basic with the account
//! SID and auth token). Twilio's paths, parameters (form-encoded, or JSON) and snake_case JSON.
//!
//! - `auth`: credentials (configured or generated) and the Basic check.
//! - `paging`: `PageSize`/`Page`/`PageToken` and the `meta` block.
//! - `flows`: Flows, Revisions, Validate, TestUsers.
//! - `executions`: Executions, their Context, Steps and step Context.
//! - `numbers`: IncomingPhoneNumbers (2010-04-01), the numbers routed to flows.
//!
//! Request parameters and Twilio-shaped error bodies are `crate::web`'s.

pub mod auth;
mod executions;
mod flows;
pub mod listener;
mod numbers;
pub mod paging;
mod recordings;
mod trunks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;

pub(crate) use crate::web::ApiError;
pub use auth::Credentials;

use crate::messaging::MessageSink;
use crate::routing::{LoadedFlow, Router as FlowRouter};
use crate::runner::Runner;
use crate::store::Store;

/// What the API handlers share.
pub struct Api {
    pub credentials: Credentials,
    /// Base of `url` and `links` fields, without a trailing slash.
    pub public_url: String,
    pub store: Store,
    pub router: Arc<FlowRouter>,
    pub runner: Runner,
    /// Where executions started through the API send their messages.
    pub sink: Arc<dyn MessageSink>,
    /// Executions this node is driving, so ending one stops it.
    running: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Compiled flow revisions by (flow SID, revision).
    compiled: Mutex<HashMap<(String, i64), Arc<LoadedFlow>>>,
    /// Where record-voicemail keeps its files (served under /2010-04-01/.../Recordings).
    pub recordings: Option<crate::call::recordings::Recordings>,
    /// The inbound messaging webhook (`/v1/Accounts/{AccountSid}/Flows/{FlowSid}`), if served.
    webhook: Option<Arc<crate::messaging::webhook::Webhook>>,
    /// Serve `/metrics` here, behind Basic auth (else it has a listener of its own, or none).
    metrics: bool,
    /// `[[trunks]]` as `/v2/Trunks` shows them, with their registrations from `sip`.
    trunks: Vec<trunks::TrunkSummary>,
    sip: Option<crate::sip::SipHandle>,
    /// Calls: REST executions place theirs through them (make-outgoing-call-v2), and
    /// `/v2/Trunks` counts the calls out.
    calls: Option<Arc<crate::call::CallServices>>,
}

impl Api {
    pub fn new(
        credentials: Credentials,
        public_url: &str,
        runner: Runner,
        sink: Arc<dyn MessageSink>,
    ) -> Api {
        Api {
            credentials,
            public_url: public_url.trim_end_matches('/').to_string(),
            store: runner.store.clone(),
            router: runner.router.clone(),
            runner,
            sink,
            running: Mutex::default(),
            compiled: Mutex::default(),
            recordings: None,
            webhook: None,
            metrics: false,
            trunks: Vec::new(),
            sip: None,
            calls: None,
        }
    }

    /// Serve `/v2/Trunks` (these trunks, their registrations and calls out) and let REST
    /// executions place calls through `calls`.
    pub fn with_calls(
        mut self,
        trunks: &[crate::config::TrunkConfig],
        calls: Arc<crate::call::CallServices>,
    ) -> Api {
        self.trunks = trunks.iter().map(trunks::TrunkSummary::from).collect();
        self.sip = Some(calls.sip.clone());
        self.calls = Some(calls);
        self
    }

    pub fn with_recordings(mut self, recordings: crate::call::recordings::Recordings) -> Api {
        self.recordings = Some(recordings);
        self
    }

    /// Serve the inbound messaging webhook too (it checks signatures, not Basic auth).
    pub fn with_webhook(mut self, webhook: Arc<crate::messaging::webhook::Webhook>) -> Api {
        self.webhook = Some(webhook);
        self
    }

    /// Serve `/metrics` on this router, behind the API's Basic auth.
    pub fn with_metrics(mut self, on: bool) -> Api {
        self.metrics = on;
        self
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public_url)
    }
}

/// The HTTP routes: `/healthz` without authentication, everything else behind Basic auth.
pub fn router(api: Arc<Api>) -> Router {
    let webhook = api.webhook.clone();
    let store = api.store.clone();
    let v2 = if api.metrics {
        metrics_routes()
    } else {
        Router::new()
    };
    let v2 = v2
        .route("/v2/Flows", get(flows::list).post(flows::create))
        .route("/v2/Trunks", get(trunks::list))
        .route("/v2/Flows/Validate", post(flows::validate))
        .route(
            "/v2/Flows/{sid}",
            get(flows::fetch).post(flows::update).delete(flows::delete),
        )
        .route("/v2/Flows/{sid}/Revisions", get(flows::revisions))
        .route("/v2/Flows/{sid}/Revisions/{revision}", get(flows::revision))
        .route(
            "/v2/Flows/{sid}/TestUsers",
            get(flows::test_users).post(flows::set_test_users),
        )
        .route(
            "/v2/Flows/{sid}/Executions",
            get(executions::list).post(executions::create),
        )
        .route(
            "/v2/Flows/{sid}/Executions/{execution}",
            get(executions::fetch)
                .post(executions::update)
                .delete(executions::delete),
        )
        .route(
            "/v2/Flows/{sid}/Executions/{execution}/Context",
            get(executions::context),
        )
        .route(
            "/v2/Flows/{sid}/Executions/{execution}/Steps",
            get(executions::steps),
        )
        .route(
            "/v2/Flows/{sid}/Executions/{execution}/Steps/{step}",
            get(executions::step),
        )
        .route(
            "/v2/Flows/{sid}/Executions/{execution}/Steps/{step}/Context",
            get(executions::step_context),
        )
        .route(
            "/2010-04-01/Accounts/{account}/Recordings/{file}",
            get(recordings::fetch),
        )
        .route(
            "/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json",
            get(numbers::list).post(numbers::create),
        )
        .route(
            "/2010-04-01/Accounts/{account}/IncomingPhoneNumbers",
            get(numbers::list).post(numbers::create),
        )
        .route(
            "/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/{file}",
            get(numbers::fetch)
                .post(numbers::update)
                .delete(numbers::delete),
        )
        .fallback(|req: Request| async move { ApiError::NotFound(req.uri().path().to_string()) })
        .layer(from_fn_with_state(api.clone(), auth::require))
        .with_state(api);
    // 503 while the store cannot keep a call (database away, disk low): a load balancer's
    // health check moves traffic elsewhere.
    let open = Router::new().route(
        "/healthz",
        get(move || async move {
            let health = store.health();
            let status = if store.is_available() {
                axum::http::StatusCode::OK
            } else {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            };
            (status, format!("{}\n", health.describe()))
        }),
    );
    let open = match webhook {
        Some(w) => open.merge(crate::messaging::webhook::routes(w)),
        None => open,
    };
    open.merge(v2)
}

/// `GET /metrics`: the Prometheus/OpenMetrics exposition.
pub fn metrics_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    crate::metrics::CONTENT_TYPE,
                )],
                crate::metrics::get().encode(),
            )
        }),
    )
}

/// Twilio's date form: `2026-11-26T02:58:33Z` (stored dates carry milliseconds).
pub(crate) fn twilio_date(stored: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(stored)
        .map(|d| {
            d.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        })
        .unwrap_or_else(|_| stored.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_twilio_form() {
        assert_eq!(
            twilio_date("2026-11-26T02:58:33.123Z"),
            "2026-11-26T02:58:33Z"
        );
        assert_eq!(
            twilio_date("2026-11-26T03:58:33+01:00"),
            "2026-11-26T02:58:33Z"
        );
        assert_eq!(twilio_date("garbage"), "garbage");
    }
}
