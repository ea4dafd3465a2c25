"""Drive Switchboard's Studio REST API v2 with the official `twilio` helper library.

Run by tests/api_twilio_python.rs. Environment:
  SWITCHBOARD_URL          base URL of the gateway (http://127.0.0.1:PORT)
  SWITCHBOARD_ACCOUNT_SID  / SWITCHBOARD_AUTH_TOKEN   the gateway's API credentials
  SWITCHBOARD_FIXTURE      a Studio flow JSON whose incomingRequest goes to HTTP widgets
  SWITCHBOARD_SILENT_URL   a server that never answers (keeps the execution active)
Prints "ok" and exits 0 when every check passed.
"""

import json
import os
import sys
import time

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client


def main() -> int:
    env = os.environ
    client = Client(env["SWITCHBOARD_ACCOUNT_SID"], env["SWITCHBOARD_AUTH_TOKEN"])
    # The Studio domain builds its URLs from base_url (https://studio.twilio.com by default).
    client.studio.base_url = env["SWITCHBOARD_URL"]
    studio = client.studio.v2

    with open(env["SWITCHBOARD_FIXTURE"], encoding="utf-8") as f:
        text = f.read().replace("https://ngrok.anthonydellavecchia.com", env["SWITCHBOARD_SILENT_URL"])
    definition = json.loads(text)

    assert studio.flow_validate.update(friendly_name="py", status="draft", definition=definition).valid is True
    try:
        studio.flow_validate.update(friendly_name="py", status="draft", definition={"states": []})
        raise AssertionError("an invalid definition validated")
    except TwilioRestException as e:
        assert e.status == 400, e

    flow = studio.flows.create(
        friendly_name="From Python", status="draft", definition=definition, commit_message="first"
    )
    assert flow.sid.startswith("FW") and len(flow.sid) == 34, flow.sid
    assert (flow.revision, flow.status, flow.valid) == (1, "draft", True), flow
    assert flow.definition == definition
    flow = studio.flows(flow.sid).update(status="published", commit_message="go live")
    assert (flow.revision, flow.status) == (2, "published"), flow
    assert flow.date_created.year >= 2024, flow.date_created  # parsed as a datetime
    revisions = studio.flows(flow.sid).revisions.list()
    assert [r.revision for r in revisions] == [2, 1], revisions
    assert studio.flows(flow.sid).revisions("LatestPublished").fetch().revision == 2

    users = studio.flows(flow.sid).test_users().update(test_users=["+15550100077", "+15550100078"])
    assert users.test_users == ["+15550100077", "+15550100078"], users.test_users

    contact = "+15550100042"
    execution = studio.flows(flow.sid).executions.create(
        to=contact, from_="+15550199999", parameters={"source": "python"}
    )
    assert execution.sid.startswith("FN"), execution.sid
    assert execution.status == "active", execution.status
    assert execution.contact_channel_address == contact
    try:
        studio.flows(flow.sid).executions.create(to=contact, from_="+15550199999")
        raise AssertionError("a second active execution for the same contact was created")
    except TwilioRestException as e:
        assert e.status == 409, e
        assert e.code == 20409, e.code

    steps = []
    for _ in range(100):
        steps = studio.flows(flow.sid).executions(execution.sid).steps.list()
        if steps:
            break
        time.sleep(0.05)
    assert steps and steps[0].name == "Trigger", steps
    assert steps[0].transitioned_to == "schedule_multiple_messages", steps[0].transitioned_to
    step_ctx = studio.flows(flow.sid).executions(execution.sid).steps(steps[0].sid).step_context().fetch()
    assert step_ctx.step_sid == steps[0].sid

    ctx = studio.flows(flow.sid).executions(execution.sid).execution_context().fetch()
    assert ctx.context["flow"]["data"]["source"] == "python", ctx.context
    assert ctx.context["contact"]["channel"]["address"] == contact

    ended = studio.flows(flow.sid).executions(execution.sid).update(status="ended")
    assert ended.status == "ended", ended.status
    again = studio.flows(flow.sid).executions.create(to=contact, from_="+15550199999")
    assert again.sid != execution.sid
    listed = studio.flows(flow.sid).executions.list(page_size=1)  # follows next_page_url
    assert {e.sid for e in listed} == {execution.sid, again.sid}, listed

    second = studio.flows.create(friendly_name="Second", status="published", definition=definition)
    assert {f.sid for f in studio.flows.list(page_size=1)} >= {flow.sid, second.sid}

    assert studio.flows(flow.sid).executions(execution.sid).delete() is True
    assert studio.flows(second.sid).delete() is True
    try:
        studio.flows(second.sid).fetch()
        raise AssertionError("a deleted flow was found")
    except TwilioRestException as e:
        assert e.status == 404, e
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
