"""Place a call from a REST execution with the official `twilio` helper library.

Run by tests/second_leg.rs. Environment:
  SWITCHBOARD_URL          base URL of the gateway (http://127.0.0.1:PORT)
  SWITCHBOARD_ACCOUNT_SID  / SWITCHBOARD_AUTH_TOKEN   the gateway's API credentials
  SWITCHBOARD_TO           the number to call (a trunk's dial_allow lets it through)
The flow (Studio's REST-trigger example: an appointment reminder) is created here, published,
and executed; the script waits for the execution to end and checks its steps. Prints "ok".
"""

import os
import sys
import time

from twilio.rest import Client

FLOW = {
    "description": "Appointment reminder",
    "states": [
        {"name": "Trigger", "type": "trigger", "properties": {},
         "transitions": [{"event": "incomingMessage"}, {"event": "incomingCall"},
                         {"event": "incomingRequest", "next": "call_user"}]},
        {"name": "call_user", "type": "make-outgoing-call-v2",
         "properties": {"from": "{{flow.channel.address}}", "to": "{{contact.channel.address}}",
                        "timeout": 20, "record": False, "machine_detection": "Disable"},
         "transitions": [{"event": "answered", "next": "remind"}, {"event": "busy"},
                         {"event": "noAnswer"}, {"event": "failed"}]},
        {"name": "remind", "type": "say-play",
         "properties": {"say": "Hello {{flow.data.name}}. This is a reminder of your appointment tomorrow at ten.", "loop": 1},
         "transitions": [{"event": "audioComplete"}]},
    ],
    "initial_state": "Trigger",
    "flags": {"allow_concurrent_calls": True},
}


def main() -> int:
    env = os.environ
    client = Client(env["SWITCHBOARD_ACCOUNT_SID"], env["SWITCHBOARD_AUTH_TOKEN"])
    client.studio.base_url = env["SWITCHBOARD_URL"]
    studio = client.studio.v2
    flow = studio.flows.create(friendly_name="Reminder", status="published", definition=FLOW)
    execution = studio.flows(flow.sid).executions.create(
        to=env["SWITCHBOARD_TO"], from_="+15550001111", parameters={"name": "Ada"}
    )
    assert execution.status == "active", execution.status
    deadline = time.time() + 40
    while time.time() < deadline:
        if studio.flows(flow.sid).executions(execution.sid).fetch().status == "ended":
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the execution did not end")
    steps = studio.flows(flow.sid).executions(execution.sid).steps.list()
    by_name = {s.transitioned_from: s for s in steps}
    call = by_name["call_user"]
    # Only `answered` leads to the reminder.
    assert call.transitioned_to == "remind", (call.transitioned_to, [s.name for s in steps])
    context = studio.flows(flow.sid).executions(execution.sid).steps(call.sid).step_context().fetch()
    widget = context.context["widgets"]["call_user"]
    assert widget["CallStatus"] == "in-progress", widget
    assert widget["CallSid"].startswith("CA"), widget
    assert by_name["remind"].transitioned_to == "Ended", [s.transitioned_to for s in steps]
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
