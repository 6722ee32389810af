"""An until-one-succeeds campaign against a real Asterisk 22 (`opendeep serve`, the rendered dialplan, Local-channel
callees from tests/asterisk/extensions_test.conf, the fake OpenAI server): the targets are called one at a time in
the file's order; a busy one ends, the next is released and books; the last is cancelled with the reason and never
dialed -- Asterisk sees exactly two Originates."""

from __future__ import annotations

import csv
import io

import pytest

from tests.asterisk.stack import ANSWERS, BUSY
from tests.doubles.ami_helpers import eventually

pytestmark = pytest.mark.asterisk

ANSWERS_TOO = "+14155550110"   # the test dialplan's _141555501[12]X: answers like ANSWERS


async def _pending(stack):
    return (await stack.api("GET", "/api/feedback")).json()["pending"]


async def _summary(stack, campaign_id):
    summary = (await stack.api("GET", f"/api/campaigns/{campaign_id}/summary")).json()
    return summary if summary.get("summarized_at") else None


async def test_one_call_at_a_time_until_one_books_then_the_rest_are_never_dialed(make_stack, asterisk):
    stack = await make_stack()
    body = io.StringIO()
    writer = csv.writer(body)
    writer.writerow(["name", "phone_number", "max_attempts"])
    for row in (("Busy Dental", BUSY, 1), ("Bright Smile", ANSWERS, 1), ("Golden Gate", ANSWERS_TOO, 1)):
        writer.writerow(row)
    response = await stack.api("POST", "/api/campaigns/import?name=One%20cleaning&goal=Book%20a%20cleaning"
                               "&goal_type=until_one_succeeds", content=body.getvalue(),
                               headers={"content-type": "text/csv"})
    assert response.status_code == 201, response.text
    campaign_id, (busy, bright, golden) = response.json()["campaign_id"], response.json()["task_ids"]

    await stack.wait_task(busy, "failed", timeout=40)
    pending = await eventually(lambda: _pending(stack), 40, 0.2, what="the booking call's question")
    assert pending[0]["task"]["id"] == bright
    reply = await stack.api("POST", f"/api/feedback/{pending[0]['request_id']}/answer",
                            json={"answer": "Tuesday at 10:00 please."})
    assert reply.status_code == 200, reply.text
    await stack.wait_task(bright, "completed", timeout=60)
    cancelled = await stack.wait_task(golden, "cancelled", timeout=20)
    assert cancelled["status_reason"] == "the goal was met with Bright Smile"
    summary = await eventually(lambda: _summary(stack, campaign_id), 30, 0.2, what="the summary")
    assert "Did not call Golden Gate because the goal was met." in summary["summary"]["goal"]["report"]

    # The database and Asterisk agree: one call each for the first two, none for the third, never overlapping.
    (busy_call, _, _), = await stack.call_rows(busy)
    (bright_call, _, _), = await stack.call_rows(bright)
    assert await stack.call_rows(golden) == []
    assert busy_call.ended_at <= bright_call.created_at
    # Asterisk's side: one Local channel pair per Originate, in the file's order, none for the third target.
    originated = [m["Channel"] for m in stack.observer.events("Newchannel")
                  if m.get("Channel", "").startswith("Local/") and "@opendeep-outbound-" in m["Channel"]
                  and m["Channel"].endswith(";1")]
    assert [channel.split("@")[0] for channel in originated] == [f"Local/{BUSY}", f"Local/{ANSWERS}"], originated
