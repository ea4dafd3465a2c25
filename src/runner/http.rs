//! Performs the flow's HTTP effects (make-http-request, run-function) with a shared client.
//! Every failure — DNS, refused connection, timeout, TLS — becomes `Outcome::Failed` with the
//! reason, so the widget takes its failure event; non-2xx answers are the engine's call.
//!
//! Credentials: a flow names URLs, so the account's token must never follow a URL a flow
//! chose. run-function requests are signed (`X-Twilio-Signature`, as Twilio signs requests
//! to Functions) and carry no credentials; make-http-request's `add_twilio_auth` sends the
//! account's Basic credentials only to the gateway's own API (`api.public_url` and the HTTP
//! bind address), and to any other URL sends none.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::flow::{HttpAuth, HttpBody, HttpRequest, Outcome};
use crate::web::signature;

/// Responses larger than this are cut (Studio widgets parse at most a few hundred KB).
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Distinct URL origins remembered for "logged once" (beyond this, no more such lines).
const MAX_LOGGED_ORIGINS: usize = 1000;

/// The client for make-http-request and run-function effects: bounded responses, and the
/// account's credentials sent only where configuration allows.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    /// The account (SID, auth token) of our own API: the token signs run-function requests,
    /// and both are the Basic credentials our own API accepts.
    account: Option<(String, String)>,
    /// Where our own API is served (set once the HTTP listener is bound): the only URLs
    /// that may receive the account's Basic credentials.
    own_api: Arc<OnceLock<Vec<ApiBase>>>,
    /// Origins already logged as refused Basic credentials.
    logged: Arc<Mutex<HashSet<String>>>,
}

/// One base URL of our own API: scheme, host and port must match, and the path must lie
/// under the base's path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiBase {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
}

impl ApiBase {
    fn parse(url: &str) -> Option<ApiBase> {
        let u = reqwest::Url::parse(url).ok()?;
        Some(ApiBase {
            scheme: u.scheme().to_string(),
            host: u.host_str()?.to_ascii_lowercase(),
            port: u.port_or_known_default(),
            path: u.path().trim_end_matches('/').to_string(),
        })
    }

    fn covers(&self, u: &reqwest::Url) -> bool {
        let path = u.path();
        u.scheme() == self.scheme
            && u.host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && u.port_or_known_default() == self.port
            && (self.path.is_empty()
                || path == self.path
                || path
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

impl HttpClient {
    /// `account`: our own API's (account SID, auth token), when there is one.
    pub fn new(account: Option<(String, String)>) -> HttpClient {
        crate::web::install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpClient {
            client,
            account,
            own_api: Arc::new(OnceLock::new()),
            logged: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Name where our own API is served: `api.public_url` and the bound HTTP address. Set
    /// once (later calls are ignored); shared by every clone of this client.
    pub fn set_own_api(&self, public_url: &str, bound: std::net::SocketAddr) {
        let mut bases: Vec<ApiBase> = ApiBase::parse(public_url).into_iter().collect();
        let mut hosts = vec![bound.ip().to_string()];
        // Bound to every address: this machine's loopback names reach it too.
        if bound.ip().is_unspecified() {
            hosts.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
        }
        for h in hosts {
            let h = if h.contains(':') { format!("[{h}]") } else { h };
            bases.extend(ApiBase::parse(&format!("http://{h}:{}", bound.port())));
        }
        let _ = self.own_api.set(bases);
    }

    fn is_own_api(&self, u: &reqwest::Url) -> bool {
        self.own_api
            .get()
            .is_some_and(|bases| bases.iter().any(|b| b.covers(u)))
    }

    /// Log at debug, once per origin, why a request went without credentials.
    fn note_once(&self, u: &reqwest::Url, why: &str) {
        let origin = u.origin().ascii_serialization();
        let first = {
            let mut seen = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            seen.len() < MAX_LOGGED_ORIGINS && seen.insert(origin.clone())
        };
        if first {
            tracing::debug!(%origin, "{why}");
        }
    }

    /// The underlying reqwest client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Perform an HTTP effect: `Outcome::Http` with the response, or `Outcome::Failed`.
    pub async fn perform(&self, r: &HttpRequest) -> Outcome {
        let method = match reqwest::Method::from_bytes(r.method.as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                return Outcome::Failed {
                    error: format!("unsupported HTTP method {:?}", r.method),
                }
            }
        };
        let mut url = match reqwest::Url::parse(&r.url) {
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
        // The query goes into the URL here, so a signature covers exactly what is sent.
        if !r.query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(r.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        let auth = self.auth_headers(r, &url);
        let mut req = self
            .client
            .request(method, url)
            .timeout(Duration::from_secs(r.timeout_secs.clamp(1, 60) as u64));
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
        req = match auth {
            Auth::None => req,
            Auth::Basic(user, pass) => req.basic_auth(user, Some(pass)),
            Auth::Signature(sig) => req.header("X-Twilio-Signature", sig),
        };
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

/// What a request carries to authenticate itself.
enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Signature(String),
}

impl HttpClient {
    fn auth_headers(&self, r: &HttpRequest, url: &reqwest::Url) -> Auth<'_> {
        let Some((sid, token)) = &self.account else {
            return Auth::None;
        };
        match r.auth {
            HttpAuth::None => Auth::None,
            HttpAuth::TwilioBasic if self.is_own_api(url) => Auth::Basic(sid, token),
            HttpAuth::TwilioBasic => {
                self.note_once(
                    url,
                    "add_twilio_auth: no credentials sent; the account's credentials go only to this gateway's own API (api.public_url, http.bind)",
                );
                Auth::None
            }
            HttpAuth::TwilioSignature => {
                let params: &[(String, String)] = match &r.body {
                    HttpBody::Form(p) => p,
                    _ => &[],
                };
                Auth::Signature(signature::sign(token, url.as_str(), params))
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request as the loopback server saw it.
    #[derive(Debug)]
    struct Seen {
        path: String,
        headers: HashMap<String, String>,
        body: String,
    }

    /// A loopback HTTP server answering `{}` to `n` requests and reporting what it received.
    async fn recorder(n: usize) -> (String, tokio::sync::mpsc::Receiver<Seen>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", l.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::mpsc::channel(n);
        tokio::spawn(async move {
            for _ in 0..n {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let seen = loop {
                    let Ok(k) = s.read(&mut chunk).await else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let mut lines = head.lines();
                    let path = lines
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .unwrap_or("")
                        .to_string();
                    let headers: HashMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Seen {
                            path,
                            headers,
                            body: body.to_string(),
                        };
                    }
                };
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                    .await;
                let _ = tx.send(seen).await;
            }
        });
        (base, rx)
    }

    fn request(url: &str, auth: HttpAuth, body: HttpBody) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            url: url.into(),
            content_type: "application/x-www-form-urlencoded".into(),
            query: Vec::new(),
            headers: Vec::new(),
            body,
            timeout_secs: 5,
            auth,
        }
    }

    const TOKEN: &str = "feedc0de0123456789abcdef01234567";

    fn client() -> HttpClient {
        HttpClient::new(Some(("AC0123".into(), TOKEN.into())))
    }

    #[tokio::test]
    async fn run_function_is_signed_and_carries_no_credentials() {
        let (base, mut seen) = recorder(1).await;
        let url = format!("{base}/fn?x=1");
        let params = vec![("Name".to_string(), "Ada Lovelace".to_string())];
        let r = request(
            &url,
            HttpAuth::TwilioSignature,
            HttpBody::Form(params.clone()),
        );
        let out = client().perform(&r).await;
        assert!(matches!(out, Outcome::Http { status: 200, .. }), "{out:?}");
        let got = seen.recv().await.expect("a request");
        assert_eq!(got.path, "/fn?x=1");
        assert!(!got.headers.contains_key("authorization"), "{got:?}");
        let sig = got.headers.get("x-twilio-signature").expect("signed");
        assert!(signature::valid(TOKEN, &url, &params, sig), "{got:?}");
        assert!(got.body.contains("Name=Ada"), "{got:?}");
    }

    #[tokio::test]
    async fn twilio_basic_goes_only_to_the_own_api() {
        let (base, mut seen) = recorder(2).await;
        let c = client();
        let r = request(
            &format!("{base}/elsewhere"),
            HttpAuth::TwilioBasic,
            HttpBody::None,
        );
        // No own API known yet: nothing is sent.
        c.perform(&r).await;
        let got = seen.recv().await.expect("a request");
        assert!(!got.headers.contains_key("authorization"), "{got:?}");
        // The recorder *is* the own API now: Basic credentials go there.
        let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().expect("addr");
        c.set_own_api("https://sb.example/base", addr);
        c.perform(&r).await;
        let got = seen.recv().await.expect("a request");
        assert!(
            got.headers
                .get("authorization")
                .is_some_and(|a| a.starts_with("Basic ")),
            "{got:?}"
        );
    }

    #[test]
    fn own_api_matching() {
        let c = client();
        c.set_own_api(
            "https://sb.example/studio/",
            "0.0.0.0:8080".parse().expect("addr"),
        );
        let own = |u: &str| c.is_own_api(&reqwest::Url::parse(u).expect("url"));
        assert!(own("https://sb.example/studio/v2/Flows"));
        assert!(own("https://SB.example:443/studio"));
        assert!(own("http://127.0.0.1:8080/v2/Flows"));
        assert!(own("http://localhost:8080/"));
        assert!(!own("https://sb.example/studiox"));
        assert!(!own("https://sb.example/other"));
        assert!(!own("http://sb.example/studio/v2"));
        assert!(!own("https://sb.example.evil/studio"));
        assert!(!own("http://127.0.0.1:8081/"));
        assert!(!own("https://attacker.example/studio"));
    }
}
