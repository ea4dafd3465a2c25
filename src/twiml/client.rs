//! Fetching TwiML as Twilio's voice webhook does: the call's parameters as a form (POST) or in
//! the query string (GET), signed with `X-Twilio-Signature` when an auth token is configured.

use std::time::Duration;

use reqwest::Url;

use super::parse::{Method, ParseError};
use crate::web::signature;

/// The largest TwiML document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Why a TwiML document could not be had or run.
#[derive(Debug, thiserror::Error)]
pub enum TwimlError {
    #[error("invalid TwiML URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("unsupported HTTP method {method:?} for {url} (GET or POST)")]
    BadMethod { method: String, url: String },
    #[error("fetching TwiML from {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("fetching TwiML from {url} timed out after {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("fetching TwiML from {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the TwiML from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("the TwiML from {url} is not UTF-8 text")]
    NotText { url: String },
    #[error("invalid TwiML from {url}: {source}")]
    Parse {
        url: String,
        #[source]
        source: Box<ParseError>,
    },
    #[error("stopped after fetching {limit} TwiML documents for one redirect (a redirect loop?); last URL {url}")]
    TooManyDocuments { limit: u32, url: String },
}

/// Resolve `reference` (absolute, or relative to `base`) to an http(s) URL.
pub fn resolve(base: Option<&Url>, reference: &str) -> Result<Url, TwimlError> {
    let reference = reference.trim();
    let url = match base {
        Some(b) => b.join(reference),
        None => Url::parse(reference),
    }
    .map_err(|e| TwimlError::BadUrl {
        url: reference.to_string(),
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(TwimlError::BadUrl {
            url: reference.to_string(),
            reason: format!("scheme {other:?} is not http or https"),
        }),
    }
}

/// Request `url` with `params` and return the response body (any 2xx status).
pub async fn fetch(
    http: &reqwest::Client,
    url: &Url,
    method: Method,
    params: &[(String, String)],
    auth_token: Option<&str>,
    timeout: Duration,
) -> Result<String, TwimlError> {
    let shown = url.to_string();
    let request = match method {
        Method::Get => {
            let mut full = url.clone();
            if !params.is_empty() {
                full.query_pairs_mut()
                    .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            }
            let mut rb = http.get(full.clone());
            if let Some(token) = auth_token {
                rb = rb.header(
                    "X-Twilio-Signature",
                    signature::sign(token, full.as_str(), &[]),
                );
            }
            rb
        }
        Method::Post => {
            let mut rb = http.post(url.clone()).form(params);
            if let Some(token) = auth_token {
                rb = rb.header(
                    "X-Twilio-Signature",
                    signature::sign(token, url.as_str(), params),
                );
            }
            rb
        }
    };
    let request = request
        .header("Accept", "text/xml, application/xml, */*;q=0.1")
        .timeout(timeout);
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            TwimlError::Timeout {
                url: shown.clone(),
                secs: timeout.as_secs().max(1),
            }
        } else {
            TwimlError::Request {
                url: shown.clone(),
                message: error_chain(&e),
            }
        }
    };
    let work = async {
        let mut resp = request.send().await.map_err(failed)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(TwimlError::Status {
                url: shown.clone(),
                status: status.as_u16(),
            });
        }
        let mut body: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(TwimlError::TooLarge {
                    url: shown.clone(),
                    limit: MAX_DOCUMENT_BYTES,
                });
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| TwimlError::NotText { url: shown.clone() })
    };
    // reqwest's own timeout covers the body too; this one is a backstop.
    match tokio::time::timeout(timeout + Duration::from_millis(250), work).await {
        Ok(r) => r,
        Err(_) => Err(TwimlError::Timeout {
            url: shown.clone(),
            secs: timeout.as_secs().max(1),
        }),
    }
}

/// reqwest's error with its causes ("connection refused" sits a few levels down).
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
