//! HTTP Basic authentication with the account SID and auth token, as Twilio's API does it.
//! Credentials come from `[api]` in the config or, when none are set, from
//! `<data_dir>/api-credentials.toml`, generated on first start (mode 0600, written atomically)
//! and reused afterwards. The token is never logged.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

use super::Api;
use crate::config::ApiConfig;
use crate::web::{constant_time_eq, ApiError};

pub const CREDENTIALS_FILE: &str = "api-credentials.toml";

#[derive(Clone)]
pub struct Credentials {
    pub account_sid: String,
    auth_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"***")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("[api] sets only one of account_sid and auth_token; set both, or neither to use generated credentials")]
    Partial,
    #[error("[api] account_sid must not be empty or contain ':'")]
    BadSid,
    #[error("cannot read API credentials from {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write API credentials to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    account_sid: String,
    auth_token: String,
}

impl Credentials {
    pub fn new(account_sid: &str, auth_token: &str) -> Credentials {
        Credentials {
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
        }
    }

    pub fn auth_token(&self) -> &str {
        &self.auth_token
    }

    /// The configured credentials, or the generated ones in `data_dir` (made on first use).
    pub fn resolve(cfg: &ApiConfig, data_dir: &Path) -> Result<Credentials, CredentialsError> {
        let sid = cfg.account_sid.as_deref().filter(|s| !s.is_empty());
        let token = cfg.auth_token.as_deref().filter(|s| !s.is_empty());
        match (sid, token) {
            (Some(sid), Some(token)) => {
                if sid.contains(':') {
                    return Err(CredentialsError::BadSid);
                }
                Ok(Credentials::new(sid, token))
            }
            (None, None) => Self::generated(data_dir),
            _ => Err(CredentialsError::Partial),
        }
    }

    fn generated(data_dir: &Path) -> Result<Credentials, CredentialsError> {
        let path = data_dir.join(CREDENTIALS_FILE);
        if path.exists() {
            let s: Stored = Figment::from(Toml::file_exact(&path))
                .extract()
                .map_err(|e| CredentialsError::Read {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if s.account_sid.is_empty() || s.account_sid.contains(':') || s.auth_token.is_empty() {
                return Err(CredentialsError::Read {
                    path,
                    reason: "account_sid or auth_token is empty or malformed".into(),
                });
            }
            tracing::info!(file = %path.display(), account_sid = %s.account_sid, "REST API credentials loaded");
            return Ok(Credentials::new(&s.account_sid, &s.auth_token));
        }
        let creds = Credentials::new(
            &format!("AC{:032x}", rand::random::<u128>()),
            &format!("{:032x}", rand::random::<u128>()),
        );
        write_private(
            &path,
            &format!(
                "# Switchboard REST API credentials (HTTP Basic: account SID and auth token).\n\
                 account_sid = \"{}\"\nauth_token = \"{}\"\n",
                creds.account_sid, creds.auth_token
            ),
        )
        .map_err(|source| CredentialsError::Write {
            path: path.clone(),
            source,
        })?;
        tracing::info!(file = %path.display(), account_sid = %creds.account_sid, "REST API credentials generated; the auth token is in the file");
        Ok(creds)
    }

    /// Whether an `Authorization` header value carries these credentials.
    pub fn check(&self, authorization: Option<&str>) -> bool {
        let Some(encoded) = authorization.and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
        }) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return false;
        };
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        // Both compared in full whatever the first gives: no early exit on the SID.
        let sid_ok = constant_time_eq(user, self.account_sid.as_bytes());
        let token_ok = constant_time_eq(pass, self.auth_token.as_bytes());
        sid_ok & token_ok
    }
}

/// Write `text` to `path` readable by the owner only, atomically (temp file + rename).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Middleware: every API request must carry the credentials.
pub async fn require(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if api.credentials.check(given) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[test]
    fn checks_basic_credentials() {
        let c = Credentials::new("AC1", "tok:en");
        assert!(c.check(Some(&basic("AC1", "tok:en"))));
        assert!(c.check(Some(&basic("AC1", "tok:en").replace("Basic", "basic"))));
        assert!(!c.check(Some(&basic("AC1", "tok"))));
        assert!(!c.check(Some(&basic("AC2", "tok:en"))));
        assert!(!c.check(Some("Bearer x")));
        assert!(!c.check(Some("Basic !!!")));
        assert!(!c.check(Some("Basic")));
        assert!(!c.check(None));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b"ab"));
        assert!(!format!("{c:?}").contains("tok:en"));
    }

    #[test]
    fn generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Credentials::resolve(&ApiConfig::default(), dir.path()).unwrap();
        assert!(first.account_sid.starts_with("AC") && first.account_sid.len() == 34);
        assert_eq!(first.auth_token().len(), 32);
        let path = dir.path().join(CREDENTIALS_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Credentials::resolve(&ApiConfig::default(), dir.path()).unwrap();
        assert_eq!(again.account_sid, first.account_sid);
        assert_eq!(again.auth_token(), first.auth_token());

        let configured = ApiConfig {
            account_sid: Some("ACx".into()),
            auth_token: Some("t".into()),
            public_url: None,
        };
        assert_eq!(
            Credentials::resolve(&configured, dir.path())
                .unwrap()
                .account_sid,
            "ACx"
        );
        let partial = ApiConfig {
            auth_token: None,
            ..configured
        };
        assert!(matches!(
            Credentials::resolve(&partial, dir.path()),
            Err(CredentialsError::Partial)
        ));
        std::fs::write(&path, "account_sid = 1\n").unwrap();
        assert!(Credentials::resolve(&ApiConfig::default(), dir.path()).is_err());
    }
}
