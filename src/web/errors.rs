//! Errors at the edge, in Twilio's shape: `{code, message, more_info, status}` (plus `details`
//! where Twilio gives them), with the HTTP status Twilio would answer.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::store::StoreError;

/// An HTTP error answer, with Twilio's status code, error code and JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong credentials.
    #[error("Authenticate")]
    Unauthorized,
    /// No such resource (the request path).
    #[error("The requested resource {0} was not found")]
    NotFound(String),
    /// A parameter is missing or wrong.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// Twilio's `details` object (e.g. each validation error).
        details: Option<Value>,
    },
    /// The contact already has an active execution of this flow.
    #[error("Execution {0} is already active for this contact. End the active Execution before creating a new one.")]
    ActiveExecution(String),
    /// The store failed (500).
    #[error("internal error: {0}")]
    Store(#[from] StoreError),
    /// Anything else that is our fault (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 with `message` and no details.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            details: None,
        }
    }

    /// A 400 for a missing required parameter, in Twilio's words.
    pub fn missing(param: &str) -> ApiError {
        ApiError::bad(format!(
            "Missing required parameter {param} in the post body"
        ))
    }

    fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, 20003),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, 20404),
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, 20001),
            ApiError::ActiveExecution(_) => (StatusCode::CONFLICT, 20409),
            ApiError::Store(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, 20500)
            }
        }
    }

    /// The JSON body Twilio sends with this error.
    pub fn body(&self) -> Value {
        let (status, code) = self.status_and_code();
        let message = match self {
            // Internal details go to the log, not to the client.
            ApiError::Store(_) | ApiError::Internal(_) => "Internal Server Error".to_string(),
            other => other.to_string(),
        };
        let mut body = json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        });
        if let (
            ApiError::BadRequest {
                details: Some(d), ..
            },
            Some(o),
        ) = (self, body.as_object_mut())
        {
            o.insert("details".into(), d.clone());
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "REST API request failed");
        }
        let mut resp = (status, Json(self.body())).into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Switchboard\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_shaped_bodies() {
        let b = ApiError::ActiveExecution("FN1".into()).body();
        assert_eq!(b["code"], 20409);
        assert_eq!(b["status"], 409);
        assert_eq!(b["more_info"], "https://www.twilio.com/docs/errors/20409");
        assert!(b["message"]
            .as_str()
            .unwrap()
            .contains("FN1 is already active"));
        let b = ApiError::Internal("secret detail".into()).body();
        assert_eq!(b["message"], "Internal Server Error");
        let b = ApiError::BadRequest {
            message: "x".into(),
            details: Some(json!({"errors": []})),
        }
        .body();
        assert_eq!(b["details"], json!({"errors": []}));
        let r = ApiError::Unauthorized.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"Switchboard\""
        );
    }
}
