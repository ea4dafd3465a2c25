//! Widget families: what each widget type is, which events it may fire,
//! what it needs from the medium and how an outcome maps to an event.

pub(crate) mod http;
pub(crate) mod logic;
pub(crate) mod messaging;
pub(crate) mod unsupported;
pub(crate) mod voice;

use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};

use super::definition::{parse_bool_str, parse_u64_str, scalar_text, State};
use super::effect::{Effect, Outcome};
use super::template::{Scope, TemplateError, Templates};

/// A property that could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("property `{property}`: {source}")]
pub(crate) struct PropError {
    pub property: String,
    pub source: TemplateError,
}

/// Rendered access to one state's properties.
pub(crate) struct Props<'a> {
    pub state: &'a State,
    pub templates: &'a Templates,
    pub scope: &'a Scope,
}

impl Props<'_> {
    /// Render a literal that belongs to property `key`.
    pub fn render_raw(&self, key: &str, src: &str) -> Result<String, PropError> {
        self.templates
            .render(src, self.scope)
            .map_err(|source| PropError {
                property: key.to_owned(),
                source,
            })
    }

    /// Rendered text; `None` when absent, null or rendering to "".
    pub fn text(&self, key: &str) -> Result<Option<String>, PropError> {
        let Some(raw) = self.state.properties.get(key).and_then(scalar_text) else {
            return Ok(None);
        };
        let out = self.render_raw(key, &raw)?;
        Ok((!out.is_empty()).then_some(out))
    }

    /// Rendered text or `""`.
    pub fn text_or_empty(&self, key: &str) -> Result<String, PropError> {
        Ok(self.text(key)?.unwrap_or_default())
    }

    /// Rendered number; `default` when absent or not a number.
    pub fn u32_or(&self, key: &str, default: u32) -> Result<u32, PropError> {
        Ok(self
            .text(key)?
            .and_then(|t| parse_u64_str(&t))
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or(default))
    }

    /// Rendered boolean; `default` when absent or not a boolean.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, PropError> {
        Ok(self
            .text(key)?
            .and_then(|t| parse_bool_str(&t))
            .unwrap_or(default))
    }

    /// A `[{key, value}]` list with rendered values (keys are literal).
    pub fn pairs(&self, key: &str) -> Result<Vec<(String, String)>, PropError> {
        let Some(Value::Array(items)) = self.state.properties.get(key) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let Some(k) = item.get("key").and_then(scalar_text) else {
                continue;
            };
            let v = match item.get("value").and_then(scalar_text) {
                Some(src) => self.render_raw(key, &src)?,
                None => String::new(),
            };
            out.push((k, v));
        }
        Ok(out)
    }
}

/// What entering a widget produces.
#[derive(Debug)]
pub(crate) enum Action {
    /// The channel must do something; the widget waits for an [`Outcome`].
    Effect(Effect),
    /// The widget finished inside the engine.
    Done(Resolution),
}

/// How a widget finished.
#[derive(Debug, Default)]
pub(crate) struct Resolution {
    pub event: String,
    /// Which transition to follow when several share the event (split `match`).
    pub transition: Option<usize>,
    /// Replaces `widgets.NAME`.
    pub publish: Option<Map<String, Value>>,
    /// Merged into `widgets.NAME` (keeps what was published earlier).
    pub merge: Option<Map<String, Value>>,
    /// `flow.variables` to set.
    pub variables: Vec<(String, String)>,
    /// Why the widget failed, recorded in the step.
    pub error: Option<String>,
    /// End the execution here whatever the transitions say (hangup).
    pub end_hangup: bool,
}

impl Resolution {
    pub fn event(event: &str) -> Resolution {
        Resolution {
            event: event.to_owned(),
            ..Resolution::default()
        }
    }

    pub fn published(event: &str, publish: Map<String, Value>) -> Resolution {
        Resolution {
            event: event.to_owned(),
            publish: Some(publish),
            ..Resolution::default()
        }
    }

    /// The widget's failure event with a step error; `None` when it has none.
    pub fn failure(kind: &str, error: impl Into<String>) -> Option<Resolution> {
        let event = spec(kind)?.failure_event?;
        Some(Resolution {
            event: event.to_owned(),
            error: Some(error.into()),
            ..Resolution::default()
        })
    }
}

/// Why a widget could not finish normally and has no failure event to take.
pub(crate) type Fatal = String;

/// Enter a widget: run it here or ask the channel for an effect.
pub(crate) fn enter(
    props: &Props<'_>,
    context: &Value,
    now: DateTime<FixedOffset>,
) -> Result<Action, Fatal> {
    let kind = props.state.kind.as_str();
    let action = match kind {
        "split-based-on" => logic::split(props, now).map(Action::Done),
        "set-variables" => logic::set_variables(props).map(Action::Done),
        "say-play"
        | "gather-input-on-call"
        | "record-voicemail"
        | "connect-call-to"
        | "make-outgoing-call-v2"
        | "add-twiml-redirect"
        | "record-call" => voice::effect(props).map(Action::Effect),
        "send-message" | "send-and-wait-for-reply" => {
            messaging::effect(props, context).map(Action::Effect)
        }
        "make-http-request" | "run-function" | "run-subflow" => http::enter(props),
        "trigger" => return Err("a trigger cannot be entered from another widget".into()),
        _ => return Ok(Action::Done(unsupported::resolve(kind)?)),
    };
    match action {
        Ok(a) => Ok(a),
        // A property that cannot be rendered fails the widget like its effect would.
        Err(e) => match Resolution::failure(kind, e.to_string()) {
            Some(r) => Ok(Action::Done(r)),
            None => Err(e.to_string()),
        },
    }
}

/// Map the channel's outcome for a waiting widget to an event.
pub(crate) fn resolve(kind: &str, outcome: Outcome, context: &Value) -> Result<Resolution, Fatal> {
    let has_hangup_event = spec(kind).is_some_and(|s| s.events.contains(&"hangup"));
    match outcome {
        Outcome::Hangup if has_hangup_event => Ok(Resolution::event("hangup")),
        Outcome::Hangup => Ok(Resolution {
            event: "hangup".into(),
            end_hangup: true,
            ..Resolution::default()
        }),
        Outcome::Failed { error } => Resolution::failure(kind, error.clone())
            .ok_or_else(|| format!("{kind} failed: {error}")),
        outcome => {
            let res = match kind {
                "say-play"
                | "gather-input-on-call"
                | "record-voicemail"
                | "connect-call-to"
                | "make-outgoing-call-v2"
                | "add-twiml-redirect"
                | "record-call" => voice::resolve(kind, outcome, context),
                "send-message" | "send-and-wait-for-reply" => messaging::resolve(kind, outcome),
                "make-http-request" | "run-function" | "run-subflow" => {
                    http::resolve(kind, outcome)
                }
                _ => Err(outcome),
            };
            res.or_else(|outcome| {
                let msg = format!("{kind} cannot handle outcome {}", outcome_name(&outcome));
                Resolution::failure(kind, msg.clone()).ok_or(msg)
            })
        }
    }
}

fn outcome_name(o: &Outcome) -> String {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Static facts about one widget type (SPEC §2).
#[derive(Debug)]
pub(crate) struct WidgetSpec {
    pub type_name: &'static str,
    pub events: &'static [&'static str],
    /// Event taken when the widget cannot run or its effect failed.
    pub failure_event: Option<&'static str>,
    /// Properties Studio refuses to save without (any one of each group).
    pub required: &'static [&'static [&'static str]],
}

const fn w(
    type_name: &'static str,
    events: &'static [&'static str],
    failure_event: Option<&'static str>,
    required: &'static [&'static [&'static str]],
) -> WidgetSpec {
    WidgetSpec {
        type_name,
        events,
        failure_event,
        required,
    }
}

/// Every widget type Studio exports (SPEC §2 plus what the corpus shows).
pub(crate) static WIDGETS: &[WidgetSpec] = &[
    w(
        "trigger",
        &[
            "incomingMessage",
            "incomingCall",
            "incomingConversationMessage",
            "incomingRequest",
            "incomingParent",
        ],
        None,
        &[],
    ),
    w("split-based-on", &["noMatch", "match"], None, &[&["input"]]),
    w("set-variables", &["next"], None, &[]),
    w(
        "say-play",
        &["audioComplete"],
        None,
        &[&["say", "play", "digits"]],
    ),
    w(
        "gather-input-on-call",
        &["keypress", "speech", "timeout"],
        None,
        &[],
    ),
    w(
        "record-voicemail",
        &["recordingComplete", "noAudio", "hangup"],
        None,
        &[],
    ),
    w("connect-call-to", &["callCompleted", "hangup"], None, &[]),
    w(
        "make-outgoing-call-v2",
        &["answered", "busy", "noAnswer", "failed"],
        Some("failed"),
        &[],
    ),
    w(
        "enqueue-call",
        &["callComplete", "failedToEnqueue", "callFailure"],
        Some("failedToEnqueue"),
        &[],
    ),
    w(
        "add-twiml-redirect",
        &["return", "timeout", "fail"],
        Some("fail"),
        &[&["url"]],
    ),
    w("record-call", &["success", "failed"], Some("failed"), &[]),
    w("fork-stream", &["next"], Some("next"), &[]),
    w(
        "capture-payments",
        &[
            "success",
            "maxFailedAttempts",
            "providerError",
            "payInterrupted",
            "hangup",
            "validationError",
        ],
        Some("providerError"),
        &[],
    ),
    w(
        "connect-virtual-agent",
        &["hangup", "return"],
        Some("return"),
        &[],
    ),
    w("send-message", &["sent", "failed"], Some("failed"), &[]),
    w(
        "send-and-wait-for-reply",
        &["incomingMessage", "timeout", "deliveryFailure"],
        Some("deliveryFailure"),
        &[],
    ),
    w(
        "make-http-request",
        &["success", "failed"],
        Some("failed"),
        &[&["url"], &["method"]],
    ),
    w("run-function", &["success", "fail"], Some("fail"), &[]),
    w(
        "run-subflow",
        &["completed", "failed"],
        Some("failed"),
        &[&["flow_sid"]],
    ),
    w(
        "send-to-flex",
        &["callComplete", "failedToEnqueue", "callFailure"],
        Some("failedToEnqueue"),
        &[],
    ),
    w(
        "send-to-auto-pilot",
        &["sessionEnded", "failure", "timeout"],
        Some("failure"),
        &[],
    ),
];

/// The spec of a widget type, or `None` when Studio has no such type.
pub(crate) fn spec(type_name: &str) -> Option<&'static WidgetSpec> {
    WIDGETS.iter().find(|w| w.type_name == type_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_types() {
        assert!(spec("say-play").is_some());
        assert!(spec("hangup").is_none());
        assert!(spec("http-request").is_none());
        assert!(spec("InitialState").is_none());
        // A failure event must be one of the widget's own events.
        for w in WIDGETS {
            if let Some(f) = w.failure_event {
                assert!(w.events.contains(&f), "{}", w.type_name);
            }
        }
    }
}
