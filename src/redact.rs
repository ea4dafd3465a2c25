//! Secrets out of text that reaches a log line or an error message: URLs lose the password of
//! their userinfo and the values of secret-looking query parameters, and error text from a
//! library that quotes a URL can be scrubbed of that URL's secrets. Secrets are compared with
//! [`constant_time_eq`].

/// Query parameters whose values are credentials (compared case-insensitively).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "pass",
    "passwd",
    "pwd",
    "secret",
    "token",
    "auth_token",
    "authtoken",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "sslpassword",
];

/// `url` with `user:***@` for any password and `***` for secret query values.
pub fn url(url: &str) -> String {
    let mut out = url.to_string();
    for secret in secrets_of(url) {
        out = out.replace(&format!(":{secret}@"), ":***@");
        out = replace_param_values(&out, &secret);
    }
    out
}

/// `text` with every secret of `url` (password, secret query values) replaced by `***`: for
/// error messages of libraries that quote the URL they were given.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.to_string();
    for secret in secrets_of(url) {
        out = out.replace(&secret, "***");
    }
    out
}

fn replace_param_values(url: &str, secret: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if v == secret => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// The secret strings in a URL: the userinfo password and secret query values (non-empty).
fn secrets_of(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if let Some((_, pass)) = userinfo.split_once(':') {
            found.push(pass.to_string());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        let query = query.split('#').next().unwrap_or("");
        for kv in query.split('&') {
            if let Some((k, v)) = kv.split_once('=') {
                if SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(k)) {
                    found.push(v.to_string());
                }
            }
        }
    }
    found.retain(|s| !s.is_empty() && s != "***");
    found
}

/// Compare without an early exit on the first differing byte (lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secret_parameters_are_hidden() {
        assert_eq!(
            url("postgres://sb:secret@db:5432/sb"),
            "postgres://sb:***@db:5432/sb"
        );
        assert_eq!(
            url("postgres://sb@db/sb?sslmode=require&password=hunter2"),
            "postgres://sb@db/sb?sslmode=require&password=***"
        );
        assert_eq!(
            url("https://u:p%40ss@sink.example/events?token=abc&x=1"),
            "https://u:***@sink.example/events?token=***&x=1"
        );
        assert_eq!(url("sqlite://./data/x.db"), "sqlite://./data/x.db");
        assert_eq!(
            url("http://127.0.0.1:8080/a@b"),
            "http://127.0.0.1:8080/a@b"
        );
        assert_eq!(
            scrub(
                "error connecting to postgres://sb:hunter2@db/sb: password hunter2 refused",
                "postgres://sb:hunter2@db/sb"
            ),
            "error connecting to postgres://sb:***@db/sb: password *** refused"
        );
    }
}
