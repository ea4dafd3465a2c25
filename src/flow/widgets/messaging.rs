//! Messaging widgets: send-message, send-and-wait-for-reply.

use serde_json::{Map, Value};

use super::{PropError, Props, Resolution};
use crate::flow::context::contact_address;
use crate::flow::effect::{Effect, Message, Outcome};

/// Studio's default wait for a reply (seconds).
pub(crate) const DEFAULT_REPLY_TIMEOUT_SECS: u32 = 3600;

fn message(props: &Props<'_>, context: &Value) -> Result<Message, PropError> {
    // Studio's editor pre-fills these two; exports may leave them out.
    let own = context
        .pointer("/flow/channel/address")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(Message {
        from: props.text("from")?.unwrap_or_else(|| own.to_owned()),
        to: props
            .text("to")?
            .unwrap_or_else(|| contact_address(context)),
        body: props.text_or_empty("body")?,
        media_url: props.text("media_url")?,
        service: props.text("service")?,
        channel: props.text("channel")?,
    })
}

pub(crate) fn effect(props: &Props<'_>, context: &Value) -> Result<Effect, PropError> {
    let message = message(props, context)?;
    Ok(if props.state.kind == "send-message" {
        Effect::SendMessage(message)
    } else {
        Effect::SendAndWait {
            message,
            timeout_secs: props.u32_or("timeout", DEFAULT_REPLY_TIMEOUT_SECS)?,
        }
    })
}

fn one(key: &str, fields: Map<String, Value>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_owned(), Value::Object(fields));
    m
}

pub(crate) fn resolve(kind: &str, outcome: Outcome) -> Result<Resolution, Outcome> {
    Ok(match (kind, outcome) {
        ("send-message", Outcome::MessageSent { fields }) => {
            Resolution::published("sent", one("message", fields))
        }
        ("send-message", Outcome::DeliveryFailure { error }) => Resolution {
            event: "failed".into(),
            error: Some(error),
            ..Resolution::default()
        },
        ("send-and-wait-for-reply", Outcome::Reply { fields }) => Resolution {
            event: "incomingMessage".into(),
            merge: Some(one("inbound", fields)),
            ..Resolution::default()
        },
        ("send-and-wait-for-reply", Outcome::Timeout) => Resolution::event("timeout"),
        ("send-and-wait-for-reply", Outcome::DeliveryFailure { error }) => Resolution {
            event: "deliveryFailure".into(),
            error: Some(error),
            ..Resolution::default()
        },
        (_, other) => return Err(other),
    })
}
