//! `kind = "sip"`: SIP MESSAGE (RFC 3428) to a trunk — the flow's `to` becomes the user part
//! of the request URI on the trunk's host. The server builds [`SipMessageSink`] with the SIP
//! endpoint's handle and passes it to [`super::Providers::from_config_with`]. Without one,
//! `unavailable` (kept for the unit tests: the server always has the endpoint) fails every send
//! with a clear reason so send-message takes `failed`.

#[cfg(test)]
use std::sync::Arc;

use serde_json::{Map, Value};

#[cfg(test)]
use super::ProviderError;
#[cfg(test)]
use crate::config::ProviderConfig;
use crate::flow::Message;
use crate::messaging::{MessageSink, SendFuture};

/// The provider used for `kind = "sip"` while no SIP MESSAGE provider is plugged in.
#[cfg(test)]
pub struct Unavailable {
    name: String,
}

#[cfg(test)]
impl MessageSink for Unavailable {
    fn send<'a>(&'a self, _msg: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            Err(format!(
                "messaging provider {:?}: sip provider not available yet",
                self.name
            ))
        })
    }
}

/// The default factory for `kind = "sip"`.
#[cfg(test)]
pub fn unavailable(p: &ProviderConfig) -> Result<Arc<dyn MessageSink>, ProviderError> {
    tracing::warn!(provider = %p.name, "SIP MESSAGE provider not available yet: its messages will fail");
    Ok(Arc::new(Unavailable {
        name: p.name.clone(),
    }))
}

use crate::sip::SipHandle;
use crate::store::new_sid;

pub struct SipMessageSink {
    pub handle: SipHandle,
    /// The trunk, e.g. `sip:sms-gw.example.net:5060` or `sip:127.0.0.1:5070`.
    pub trunk: String,
}

impl SipMessageSink {
    pub fn request_uri(&self, to: &str) -> String {
        let host = self.trunk.strip_prefix("sip:").unwrap_or(&self.trunk);
        let host = host.rsplit('@').next().unwrap_or(host);
        let to: String = to
            .chars()
            .filter(|c| !c.is_whitespace() && !matches!(c, '<' | '>' | '@' | ';'))
            .collect();
        format!("sip:{to}@{host}")
    }
}

impl MessageSink for SipMessageSink {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            let uri = self.request_uri(&msg.to);
            let from: String = msg
                .from
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
                .collect();
            self.handle
                .send_message(&uri, &from, &msg.body)
                .await
                .map_err(|e| e.to_string())?;
            let mut m = Map::new();
            for (k, v) in [
                ("Sid", new_sid("SM")),
                ("To", msg.to.clone()),
                ("From", msg.from.clone()),
                ("Body", msg.body.clone()),
                ("Status", "sent".into()),
            ] {
                m.insert(k.into(), Value::String(v));
            }
            Ok(m)
        })
    }
}
