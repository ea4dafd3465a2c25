//! `kind = "sip"`: SIP MESSAGE (RFC 3428) to a trunk. The SIP layer builds the real provider
//! and passes it to [`super::Providers::from_config_with`]; this placeholder fails every send
//! with a clear reason so send-message takes `failed`.

use std::sync::Arc;

use super::ProviderError;
use crate::config::ProviderConfig;
use crate::flow::Message;
use crate::messaging::{MessageSink, SendFuture};

/// The provider used for `kind = "sip"` while no SIP MESSAGE provider is plugged in.
pub struct Unavailable {
    name: String,
}

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
pub fn unavailable(p: &ProviderConfig) -> Result<Arc<dyn MessageSink>, ProviderError> {
    tracing::warn!(provider = %p.name, "SIP MESSAGE provider not available yet: its messages will fail");
    Ok(Arc::new(Unavailable {
        name: p.name.clone(),
    }))
}
