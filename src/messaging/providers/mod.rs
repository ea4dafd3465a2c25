//! Outbound messaging providers, chosen per number. Each provider is a [`MessageSink`]; the
//! `Providers` router is itself one: a message goes out through the provider that lists its
//! `from` number, else through the provider named `default`.
//!
//! Kinds: `twilio` (Twilio's Messages API or a compatible service), `smpp` (SMPP 3.4, behind the
//! `smpp` cargo feature) and `sip` (SIP MESSAGE to a trunk; the slot is filled by the SIP layer
//! through `Providers::from_config_with`, until then it fails with a clear error).

pub(crate) mod sip;
#[cfg(feature = "smpp")]
pub mod smpp;
pub(crate) mod twilio;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{InboundMessage, MessageSink, SendFuture};
use crate::config::{MessagingConfig, ProviderConfig, ProviderKind};
use crate::flow::Message;

/// The provider serving every number no other provider lists.
pub(crate) const DEFAULT_PROVIDER: &str = "default";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProviderError {
    #[error("[[messaging.providers]] {name:?}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("[[messaging.providers]]: two providers are named {0:?}")]
    DuplicateName(String),
    #[error("[[messaging.providers]]: number {number} is listed by both {first:?} and {second:?}")]
    DuplicateNumber {
        number: String,
        first: String,
        second: String,
    },
}

impl ProviderError {
    pub fn invalid(p: &ProviderConfig, reason: impl Into<String>) -> ProviderError {
        ProviderError::Invalid {
            name: p.name.clone(),
            reason: reason.into(),
        }
    }
}

/// What providers get to build themselves.
pub(crate) struct ProviderContext {
    /// Shared HTTP client (rustls + ring).
    pub http: reqwest::Client,
    /// Where providers that receive messages themselves (SMPP deliver_sm) hand them in.
    pub inbound: mpsc::Sender<InboundMessage>,
}

/// Builds the provider for `kind = "sip"`; the SIP layer supplies one.
pub(crate) type SipFactory<'a> =
    &'a dyn Fn(&ProviderConfig) -> Result<Arc<dyn MessageSink>, ProviderError>;

/// The configured providers, routing each message by its `from` number.
#[derive(Default)]
pub(crate) struct Providers {
    named: Vec<(String, Arc<dyn MessageSink>)>,
    by_number: HashMap<String, usize>,
    default: Option<usize>,
}

/// Numbers compare without spaces, dashes, dots or parentheses, and without a `tel:` prefix.
pub(crate) fn normalize_number(n: &str) -> String {
    n.trim()
        .trim_start_matches("tel:")
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect()
}

impl Providers {
    /// Providers from `[messaging]`, with the placeholder for `kind = "sip"` (the server always
    /// passes the SIP MESSAGE factory; only the unit tests use the placeholder).
    #[cfg(test)]
    pub fn from_config(
        cfg: &MessagingConfig,
        ctx: &ProviderContext,
    ) -> Result<Providers, ProviderError> {
        Self::from_config_with(cfg, ctx, &sip::unavailable)
    }

    /// Providers from `[messaging]`, building `kind = "sip"` ones with `sip`.
    pub fn from_config_with(
        cfg: &MessagingConfig,
        ctx: &ProviderContext,
        sip: SipFactory<'_>,
    ) -> Result<Providers, ProviderError> {
        let mut out = Providers::default();
        for p in &cfg.providers {
            if p.name.trim().is_empty() {
                return Err(ProviderError::invalid(p, "name must not be empty"));
            }
            let sink: Arc<dyn MessageSink> = match p.kind {
                ProviderKind::Twilio => Arc::new(twilio::TwilioProvider::new(p, ctx.http.clone())?),
                ProviderKind::Sip => sip(p)?,
                ProviderKind::Smpp => smpp_provider(p, ctx)?,
            };
            out.add(&p.name, &p.numbers, sink)?;
        }
        Ok(out)
    }

    /// Add a provider by name for `numbers` (`default` also serves unlisted numbers).
    pub fn add(
        &mut self,
        name: &str,
        numbers: &[String],
        sink: Arc<dyn MessageSink>,
    ) -> Result<(), ProviderError> {
        if self.named.iter().any(|(n, _)| n == name) {
            return Err(ProviderError::DuplicateName(name.to_string()));
        }
        let idx = self.named.len();
        for number in numbers {
            let key = normalize_number(number);
            if let Some(&other) = self.by_number.get(&key) {
                return Err(ProviderError::DuplicateNumber {
                    number: number.clone(),
                    first: self.named[other].0.clone(),
                    second: name.to_string(),
                });
            }
            self.by_number.insert(key, idx);
        }
        if name == DEFAULT_PROVIDER {
            self.default = Some(idx);
        }
        self.named.push((name.to_string(), sink));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    /// The provider sending for our number `from`, and its name.
    pub fn for_number(&self, from: &str) -> Option<(&str, &Arc<dyn MessageSink>)> {
        let idx = self
            .by_number
            .get(&normalize_number(from))
            .copied()
            .or(self.default)?;
        self.named.get(idx).map(|(n, s)| (n.as_str(), s))
    }
}

impl MessageSink for Providers {
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        match self.for_number(&msg.from) {
            Some((name, sink)) => Box::pin(async move {
                let sent = sink.send(msg).await;
                if sent.is_err() {
                    crate::metrics::count(&crate::metrics::get().provider_errors, name);
                }
                sent
            }),
            None => {
                let reason = if self.is_empty() {
                    "no messaging provider configured ([[messaging.providers]])".to_string()
                } else {
                    format!(
                        "no messaging provider sends for {:?} (list it in a provider's numbers, or name a provider \"default\")",
                        msg.from
                    )
                };
                crate::metrics::count(&crate::metrics::get().provider_errors, "none");
                Box::pin(async move { Err(reason) })
            }
        }
    }
}

#[cfg(feature = "smpp")]
fn smpp_provider(
    p: &ProviderConfig,
    ctx: &ProviderContext,
) -> Result<Arc<dyn MessageSink>, ProviderError> {
    Ok(Arc::new(smpp::SmppProvider::start(p, ctx.inbound.clone())?))
}

#[cfg(not(feature = "smpp"))]
fn smpp_provider(
    p: &ProviderConfig,
    _ctx: &ProviderContext,
) -> Result<Arc<dyn MessageSink>, ProviderError> {
    Err(ProviderError::invalid(
        p,
        "kind \"smpp\" needs switchboard built with the `smpp` cargo feature",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::params;

    struct Named(&'static str);

    impl MessageSink for Named {
        fn send<'a>(&'a self, _msg: &'a Message) -> SendFuture<'a> {
            Box::pin(async move { Ok(params([("Provider", self.0.to_string())])) })
        }
    }

    fn msg(from: &str) -> Message {
        Message {
            from: from.into(),
            to: "+15550000".into(),
            body: "hi".into(),
            media_url: None,
            service: None,
            channel: None,
        }
    }

    #[tokio::test]
    async fn routes_by_number_then_default() {
        let mut p = Providers::default();
        assert!(p
            .send(&msg("+1"))
            .await
            .unwrap_err()
            .contains("no messaging provider configured"));
        p.add("smsc", &["+1 555-0001".into()], Arc::new(Named("smsc")))
            .unwrap();
        assert!(p
            .send(&msg("+19999"))
            .await
            .unwrap_err()
            .contains("default"));
        p.add(DEFAULT_PROVIDER, &[], Arc::new(Named("default")))
            .unwrap();
        assert_eq!(p.send(&msg("+15550001")).await.unwrap()["Provider"], "smsc");
        assert_eq!(p.send(&msg("+19999")).await.unwrap()["Provider"], "default");
        assert!(matches!(
            p.add("smsc", &[], Arc::new(Named("x"))),
            Err(ProviderError::DuplicateName(_))
        ));
        assert!(matches!(
            p.add("other", &["tel:+15550001".into()], Arc::new(Named("x"))),
            Err(ProviderError::DuplicateNumber { .. })
        ));
    }

    #[tokio::test]
    async fn sip_slot_fails_clearly_until_filled() {
        let cfg: MessagingConfig = serde_json::from_value(serde_json::json!({
            "providers": [{"name": "default", "kind": "sip", "trunk": "sip:carrier.example"}]
        }))
        .unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let ctx = ProviderContext {
            http: crate::web::plain_client(),
            inbound: tx,
        };
        let p = Providers::from_config(&cfg, &ctx).unwrap();
        let err = p.send(&msg("+1")).await.unwrap_err();
        assert!(err.contains("sip provider not available yet"), "{err}");
        let filled =
            Providers::from_config_with(&cfg, &ctx, &|_| Ok(Arc::new(Named("sip")))).unwrap();
        assert_eq!(filled.send(&msg("+1")).await.unwrap()["Provider"], "sip");
    }
}
