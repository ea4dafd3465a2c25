//! Performs the flow's HTTP effects (make-http-request, run-function) with a shared client.
//! Every failure — DNS, refused connection, timeout, TLS — becomes `Outcome::Failed` with the
//! reason, so the widget takes its failure event; non-2xx answers are the engine's call.

use std::time::Duration;

use crate::flow::{HttpBody, HttpRequest, Outcome};

/// Responses larger than this are cut (Studio widgets parse at most a few hundred KB).
const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    /// Basic credentials sent when a widget asks for `add_twilio_auth` (our own API's account).
    twilio_auth: Option<(String, String)>,
}

/// A plain client with the crypto provider installed (tests and tools that need no settings).
pub fn plain_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::new()
}

pub fn install_crypto_provider() {
    // One crypto stack (ring); a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl HttpClient {
    pub fn new(twilio_auth: Option<(String, String)>) -> HttpClient {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpClient {
            client,
            twilio_auth,
        }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub async fn perform(&self, r: &HttpRequest) -> Outcome {
        let method = match reqwest::Method::from_bytes(r.method.as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                return Outcome::Failed {
                    error: format!("unsupported HTTP method {:?}", r.method),
                }
            }
        };
        let url = match reqwest::Url::parse(&r.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            Ok(u) => {
                return Outcome::Failed {
                    error: format!("unsupported URL scheme {:?}", u.scheme()),
                }
            }
            Err(e) => {
                return Outcome::Failed {
                    error: format!("invalid URL {:?}: {e}", r.url),
                }
            }
        };
        let mut req = self
            .client
            .request(method, url)
            .timeout(Duration::from_secs(r.timeout_secs.clamp(1, 60) as u64));
        if !r.query.is_empty() {
            req = req.query(&r.query);
        }
        for (k, v) in &r.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req = match &r.body {
            HttpBody::None => req,
            HttpBody::Form(pairs) => req.form(pairs),
            HttpBody::Text(text) => req
                .header("content-type", r.content_type.as_str())
                .body(text.clone()),
        };
        if r.add_twilio_auth {
            if let Some((user, pass)) = &self.twilio_auth {
                req = req.basic_auth(user, Some(pass));
            }
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    error: describe(&e),
                }
            }
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut resp = resp;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY_BYTES.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if room <= chunk.len() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome::Failed {
                        error: describe(&e),
                    }
                }
            }
        }
        Outcome::Http {
            status,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "failed"
    };
    // reqwest's own text names the URL, which may carry credentials; the cause chain does not.
    let mut msg = format!("HTTP request {what}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}
