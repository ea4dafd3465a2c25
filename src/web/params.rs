//! Request parameters as Twilio's API takes them: `application/x-www-form-urlencoded` bodies
//! (and query strings), with repeated keys for lists. JSON object bodies are accepted too.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde_json::Value;

use super::errors::ApiError;

/// Name/value pairs in request order (a name may repeat).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A parameter that must be present and not empty.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::missing(name))
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn from_query(query: Option<&str>) -> Params {
        Params(decode_form(query.unwrap_or("").as_bytes()))
    }

    /// A JSON object body: strings as they are, arrays as repeated names, anything else as JSON.
    fn from_json(v: Value) -> Result<Params, ApiError> {
        let Value::Object(map) = v else {
            return Err(ApiError::bad("a JSON request body must be an object"));
        };
        let mut out = Vec::new();
        for (k, v) in map {
            let items = match v {
                Value::Array(a) => a,
                other => vec![other],
            };
            for item in items {
                match item {
                    Value::String(s) => out.push((k.clone(), s)),
                    Value::Null => {}
                    other => out.push((k.clone(), other.to_string())),
                }
            }
        }
        Ok(Params(out))
    }
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad(format!("cannot read the request body: {e}")))?;
        if json && !body.is_empty() {
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad(format!("the request body is not valid JSON: {e}")))?;
            Params::from_json(v)
        } else {
            Ok(Params(decode_form(&body)))
        }
    }
}

/// Decode `a=1&b=x+y&c=%2B1` (invalid escapes are kept as written; bytes that are not UTF-8
/// are replaced, never a panic).
pub fn decode_form(input: &[u8]) -> Vec<(String, String)> {
    input
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let k = it.next().unwrap_or_default();
            let v = it.next().unwrap_or_default();
            (unescape(k), unescape(v))
        })
        .collect()
}

fn unescape(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encode a query value (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        let p = Params(decode_form(
            b"To=%2B15550100&Body=hi+there&TestUsers=a&TestUsers=b&x&bad=%zz%4",
        ));
        assert_eq!(p.get("To"), Some("+15550100"));
        assert_eq!(p.get("Body"), Some("hi there"));
        assert_eq!(p.all("TestUsers"), ["a", "b"]);
        assert_eq!(p.get("x"), Some(""));
        assert_eq!(p.get("bad"), Some("%zz%4"));
        assert!(p.required("x").is_err());
        assert_eq!(Params(decode_form(b"a=%FF")).get("a"), Some("\u{FFFD}"));
        assert_eq!(
            Params(decode_form(b"%")).0,
            [("%".to_string(), String::new())]
        );
    }

    #[test]
    fn json_bodies_and_encoding() {
        let p = Params::from_json(serde_json::json!({
            "FriendlyName": "x", "Definition": {"a": 1}, "TestUsers": ["+1", "+2"], "N": null
        }))
        .unwrap();
        assert_eq!(p.get("Definition"), Some("{\"a\":1}"));
        assert_eq!(p.all("TestUsers"), ["+1", "+2"]);
        assert_eq!(p.get("N"), None);
        assert!(Params::from_json(serde_json::json!([1])).is_err());
        assert_eq!(
            encode("2026-01-01T00:00:00Z +1"),
            "2026-01-01T00%3A00%3A00Z%20%2B1"
        );
        let round = Params(decode_form(format!("k={}", encode("a+b c/é")).as_bytes()));
        assert_eq!(round.get("k"), Some("a+b c/é"));
    }
}
