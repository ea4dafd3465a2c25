//! Widget families: what each widget type is, which events it may fire,
//! what it needs from the medium and how an outcome maps to an event.

pub(crate) mod http;
pub(crate) mod logic;
pub(crate) mod messaging;
pub(crate) mod unsupported;
pub(crate) mod voice;

/// Static facts about one widget type (SPEC §2).
#[derive(Debug)]
pub(crate) struct WidgetSpec {
    pub type_name: &'static str,
    pub events: &'static [&'static str],
    /// Event taken when the widget cannot run or its effect failed.
    #[allow(dead_code)] // read by the engine
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
