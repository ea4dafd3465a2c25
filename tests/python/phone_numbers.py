"""Attach a number to a Studio flow with the official `twilio` helper library.

Run by tests/phone_numbers.rs. Environment:
  SWITCHBOARD_URL          base URL of the gateway (http://127.0.0.1:PORT)
  SWITCHBOARD_ACCOUNT_SID  / SWITCHBOARD_AUTH_TOKEN   the gateway's API credentials
  SWITCHBOARD_NUMBER       the number to attach
Usage:
  phone_numbers.py setup          create a published flow and attach the number to it with
                                  VoiceUrl = its Studio webhook URL (Twilio's form); prints
                                  {"flow_sid": ..., "number_sid": ...}
  phone_numbers.py delete SID     delete the number, check it is gone; prints "ok"
"""

import json
import os
import sys

from twilio.rest import Client

FLOW = {
    "description": "Answers the attached number",
    "states": [
        {"name": "Trigger", "type": "trigger", "properties": {},
         "transitions": [{"event": "incomingMessage"}, {"event": "incomingCall", "next": "hello"},
                         {"event": "incomingRequest"}]},
        {"name": "hello", "type": "say-play",
         "properties": {"say": "Hello, this number runs a flow made through the API.", "loop": 1},
         "transitions": [{"event": "audioComplete"}]},
    ],
    "initial_state": "Trigger",
    "flags": {"allow_concurrent_calls": True},
}


def client() -> Client:
    env = os.environ
    c = Client(env["SWITCHBOARD_ACCOUNT_SID"], env["SWITCHBOARD_AUTH_TOKEN"])
    c.studio.base_url = env["SWITCHBOARD_URL"]
    c.api.base_url = env["SWITCHBOARD_URL"]
    return c


def setup() -> int:
    c = client()
    account = os.environ["SWITCHBOARD_ACCOUNT_SID"]
    number = os.environ["SWITCHBOARD_NUMBER"]
    flow = c.studio.v2.flows.create(friendly_name="Attached", status="published", definition=FLOW)
    url = f"https://webhooks.twilio.com/v1/Accounts/{account}/Flows/{flow.sid}"
    pn = c.incoming_phone_numbers.create(phone_number=number, voice_url=url,
                                         friendly_name="Front desk")
    assert pn.sid.startswith("PN"), pn.sid
    assert pn.phone_number == number, pn.phone_number
    assert pn.voice_url == url, pn.voice_url
    # Listed (filtered by number) and fetched as Twilio clients do.
    listed = c.incoming_phone_numbers.list(phone_number=number)
    assert [p.sid for p in listed] == [pn.sid], [p.sid for p in listed]
    fetched = c.incoming_phone_numbers(pn.sid).fetch()
    assert fetched.friendly_name == "Front desk", fetched.friendly_name
    updated = c.incoming_phone_numbers(pn.sid).update(friendly_name="Reception")
    assert updated.friendly_name == "Reception", updated.friendly_name
    assert updated.voice_url == url, updated.voice_url
    print(json.dumps({"flow_sid": flow.sid, "number_sid": pn.sid}))
    return 0


def delete(sid: str) -> int:
    c = client()
    assert c.incoming_phone_numbers(sid).delete() is True
    remaining = [p.sid for p in c.incoming_phone_numbers.list()]
    assert sid not in remaining, remaining
    print("ok")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["setup"]:
        sys.exit(setup())
    if sys.argv[1:2] == ["delete"] and len(sys.argv) == 3:
        sys.exit(delete(sys.argv[2]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
