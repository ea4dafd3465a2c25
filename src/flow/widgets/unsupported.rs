//! Widgets whose service does not exist here: they take their failure event
//! with a step error that says why.

use super::{Fatal, Resolution};

pub(crate) fn resolve(kind: &str) -> Result<Resolution, Fatal> {
    let why = match kind {
        "send-to-flex" => "Twilio Flex is not available in Switchboard: no task was created",
        "send-to-auto-pilot" => "Autopilot is retired and not available: no hand-off was made",
        "connect-virtual-agent" => "virtual agents are not available in Switchboard",
        "capture-payments" => "no payment connector is available in Switchboard",
        "enqueue-call" => "call queues (TaskRouter) are not available in Switchboard",
        "fork-stream" => "media streams are not supported by Switchboard",
        other => return Err(format!("widget type \"{other}\" is not supported")),
    };
    Resolution::failure(kind, why).ok_or_else(|| why.to_owned())
}
