//! `kind = "twilio"`: Twilio's Messages API, or any service that speaks it:
//! `POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded `To`, `From`,
//! `Body`, `MediaUrl` (repeated), `MessagingServiceSid`; HTTP Basic with the account SID and
//! auth token. The JSON answer becomes the fields Studio publishes for the sent message.

use std::time::Duration;

use serde_json::{Map, Value};

use super::ProviderError;
use crate::config::ProviderConfig;
use crate::flow::Message;
use crate::messaging::{MessageSink, SendFuture};

pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct TwilioProvider {
    name: String,
    url: String,
    account_sid: String,
    auth_token: String,
    http: reqwest::Client,
}

impl TwilioProvider {
    pub fn new(p: &ProviderConfig, http: reqwest::Client) -> Result<TwilioProvider, ProviderError> {
        let base = p
            .base_url
            .as_deref()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or(DEFAULT_BASE_URL)
            .trim_end_matches('/');
        match reqwest::Url::parse(base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(ProviderError::invalid(
                    p,
                    format!("base_url {base:?} is not an http(s) URL"),
                ))
            }
        }
        let account_sid = p
            .account_sid
            .clone()
            .filter(|s| !s.is_empty() && !s.contains(['/', '?', '#']))
            .ok_or_else(|| ProviderError::invalid(p, "kind \"twilio\" needs account_sid"))?;
        let auth_token = p
            .auth_token
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ProviderError::invalid(p, "kind \"twilio\" needs auth_token"))?;
        Ok(TwilioProvider {
            name: p.name.clone(),
            url: format!("{base}/2010-04-01/Accounts/{account_sid}/Messages.json"),
            account_sid,
            auth_token,
            http,
        })
    }

    async fn deliver(&self, msg: &Message) -> Result<Map<String, Value>, String> {
        let mut form: Vec<(&str, &str)> = vec![("To", &msg.to), ("Body", &msg.body)];
        // A Messaging Service SID in `from` (or the widget's `service`) sends through the service.
        let service = msg
            .service
            .as_deref()
            .filter(|s| !s.is_empty())
            .or_else(|| msg.from.starts_with("MG").then_some(msg.from.as_str()));
        if let Some(s) = service {
            form.push(("MessagingServiceSid", s));
        }
        if !msg.from.is_empty() && !msg.from.starts_with("MG") {
            form.push(("From", &msg.from));
        }
        if let Some(media) = &msg.media_url {
            for url in media.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                form.push(("MediaUrl", url));
            }
        }
        let resp = self
            .http
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .timeout(TIMEOUT)
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("messaging provider {:?}: {}", self.name, describe(&e)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("messaging provider {:?}: {}", self.name, describe(&e)))?;
        let json: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let j = json.unwrap_or(Value::Null);
            let message = j
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
            return Err(match j.get("code").filter(|c| !c.is_null()) {
                Some(code) => format!(
                    "messaging provider {:?}: HTTP {}: error {}: {message}",
                    self.name,
                    status.as_u16(),
                    plain(code)
                ),
                None => format!(
                    "messaging provider {:?}: HTTP {}: {message}",
                    self.name,
                    status.as_u16()
                ),
            });
        }
        Ok(published(json.as_ref(), msg))
    }
}

/// reqwest's error with its causes, without the URL's query (never holds secrets here anyway).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out after 10 s".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Twilio's snake_case message resource as the PascalCase fields Studio publishes.
fn published(json: Option<&Value>, msg: &Message) -> Map<String, Value> {
    const FIELDS: &[(&str, &str)] = &[
        ("sid", "Sid"),
        ("account_sid", "AccountSid"),
        ("messaging_service_sid", "MessagingServiceSid"),
        ("to", "To"),
        ("from", "From"),
        ("body", "Body"),
        ("status", "Status"),
        ("num_segments", "NumSegments"),
        ("num_media", "NumMedia"),
        ("direction", "Direction"),
        ("date_created", "DateCreated"),
        ("date_sent", "DateSent"),
        ("error_code", "ErrorCode"),
        ("error_message", "ErrorMessage"),
        ("price", "Price"),
        ("uri", "Uri"),
    ];
    let mut out = Map::new();
    for (from, to) in FIELDS {
        if let Some(v) = json.and_then(|j| j.get(*from)).filter(|v| !v.is_null()) {
            out.insert((*to).into(), Value::String(plain(v)));
        }
    }
    for (key, value) in [("To", &msg.to), ("From", &msg.from), ("Body", &msg.body)] {
        out.entry(key)
            .or_insert_with(|| Value::String(value.clone()));
    }
    out.entry("Status")
        .or_insert_with(|| Value::String("queued".into()));
    out
}

impl MessageSink for TwilioProvider {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(self.deliver(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(base: &str) -> ProviderConfig {
        serde_json::from_value(json!({
            "name": "default", "kind": "twilio", "base_url": base,
            "account_sid": "AC1", "auth_token": "tok-sekrit"
        }))
        .unwrap()
    }

    #[test]
    fn configuration_is_checked() {
        let http = crate::web::plain_client();
        let p = TwilioProvider::new(&cfg("http://127.0.0.1:9/"), http.clone()).unwrap();
        assert_eq!(
            p.url,
            "http://127.0.0.1:9/2010-04-01/Accounts/AC1/Messages.json"
        );
        assert!(TwilioProvider::new(&cfg("ftp://x"), http.clone()).is_err());
        let mut c = cfg("http://x");
        c.auth_token = None;
        assert!(TwilioProvider::new(&c, http).is_err());
    }

    #[test]
    fn publishes_the_answer() {
        let m = Message {
            from: "+1".into(),
            to: "+2".into(),
            body: "hi".into(),
            media_url: None,
            service: None,
            channel: None,
        };
        let f = published(
            Some(
                &json!({"sid": "SM1", "status": "queued", "num_segments": "1", "error_code": null}),
            ),
            &m,
        );
        assert_eq!(f["Sid"], "SM1");
        assert_eq!(f["To"], "+2");
        assert_eq!(f["NumSegments"], "1");
        assert!(!f.contains_key("ErrorCode"));
    }

    #[tokio::test]
    async fn unreachable_is_a_delivery_failure() {
        crate::web::install_crypto_provider();
        let p =
            TwilioProvider::new(&cfg("http://127.0.0.1:9"), crate::web::plain_client()).unwrap();
        let m = Message {
            from: "+1".into(),
            to: "+2".into(),
            body: "hi".into(),
            media_url: None,
            service: None,
            channel: None,
        };
        let err = p.send(&m).await.unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
        assert!(!err.contains("sekrit"), "{err}");
    }
}
