//! Status callbacks a flow asks for (`recording_status_callback`, transcription callbacks):
//! form-encoded POSTs in Twilio's shape, signed with `X-Twilio-Signature` (the auth token
//! itself never leaves), retried on failure, and sent from their own task so a slow or dead
//! receiver never delays the call.

use std::time::Duration;

/// Attempts per callback, and the pause before each retry.
const RETRY_PAUSES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(4)];
/// Twilio waits 15 s for a callback's answer.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(15);

/// Twilio's recording-status parameters for a recording of `call_sid` that was saved
/// (`completed`) or not (`failed`).
pub fn recording_status(
    account_sid: &str,
    call_sid: &str,
    saved: Option<&super::recordings::SavedRecording>,
    channels: u16,
    source: &str,
) -> Vec<(String, String)> {
    let mut p = vec![
        ("AccountSid", account_sid.to_string()),
        ("CallSid", call_sid.to_string()),
        ("RecordingSource", source.to_string()),
        ("RecordingChannels", channels.to_string()),
    ];
    match saved {
        Some(s) => p.extend([
            ("RecordingSid", s.sid.clone()),
            ("RecordingUrl", s.url.clone()),
            ("RecordingStatus", "completed".to_string()),
            ("RecordingDuration", s.duration_secs.to_string()),
        ]),
        None => p.push(("RecordingStatus", "failed".to_string())),
    }
    p.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Where callbacks go from, and how they are signed.
#[derive(Clone)]
pub struct Callbacks {
    pub http: reqwest::Client,
    /// Signs each request; never sent.
    pub auth_token: String,
}

impl Callbacks {
    /// POST `params` to `url` in the background. `what` names the callback in log lines.
    /// A URL that is not http(s) is refused with a log line.
    pub fn post(&self, what: &'static str, url: &str, params: Vec<(String, String)>) {
        let url = url.trim().to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            tracing::warn!(callback = what, url = %crate::redact::url(&url), "callback URL is not http(s); not sent");
            return;
        }
        let signature = crate::web::signature::sign(&self.auth_token, &url, &params);
        let http = self.http.clone();
        tokio::spawn(async move {
            let shown = crate::redact::url(&url);
            for attempt in 0..=RETRY_PAUSES.len() {
                if attempt > 0 {
                    tokio::time::sleep(RETRY_PAUSES[attempt - 1]).await;
                }
                let sent = http
                    .post(&url)
                    .header("X-Twilio-Signature", &signature)
                    .form(&params)
                    .timeout(CALLBACK_TIMEOUT)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        tracing::debug!(callback = what, url = %shown, "callback delivered");
                        return;
                    }
                    Ok(r) => {
                        tracing::warn!(callback = what, url = %shown, status = r.status().as_u16(), attempt = attempt + 1, "callback refused")
                    }
                    Err(e) => {
                        let error = crate::redact::scrub(&e.to_string(), &url);
                        tracing::warn!(callback = what, url = %shown, %error, attempt = attempt + 1, "callback failed")
                    }
                }
            }
            tracing::error!(callback = what, url = %shown, "callback given up after {} attempts", RETRY_PAUSES.len() + 1);
        });
    }
}
