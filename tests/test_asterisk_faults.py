"""Faults on the real call path, against a real Asterisk 22 (see tests/test_asterisk_calls.py for the setup):
OpenDeep's FastAGI unreachable, Asterisk restarted in the middle of a campaign, 20 calls at once."""

from __future__ import annotations

import asyncio

import pytest

from db.models import CallOutcome
from tests.asterisk.instance import free_port
from tests.asterisk.stack import ANSWERS, BUSY, NO_ANSWER
from tests.doubles.ami_helpers import eventually
from tests.doubles.fake_realtime import FakeResponse

pytestmark = pytest.mark.asterisk


async def test_with_fastagi_unreachable_the_dialplan_never_dials(make_stack, asterisk):
    """AGISTATUS=FAILURE: the shipped dialplan logs why and hangs up; the callee's phone never rings."""
    stack = await make_stack(FASTAGI_ADVERTISE=f"127.0.0.1:{free_port()}")   # nobody listens there
    for line in (r"Connecting to '127\.0\.0\.1:\d+' failed for url "
                 r"'agi://127\.0\.0\.1:\d+/call-(start|end)\?secret=[^']+': Connection refused",
                 r"Couldn't connect to any host\.  FastAGI failed\."):
        asterisk.expect_log(line, "this test points the dialplan's AGI() at a closed port")
    asterisk.expect_log(r"not dialed: no call-start decision \(AGISTATUS=FAILURE\)",
                        "the shipped dialplan's own warning for the admin")
    _, [task_id] = await stack.import_campaign([("Callee", ANSWERS)])
    task = await stack.wait_task(task_id, "failed", "retry_scheduled", timeout=40)
    (call, events, _), = await stack.call_rows(task_id)
    assert call.outcome is CallOutcome.FAILED and call.answered_at is None, [e.payload for e in events]
    assert not any(e.get("Channel", "").startswith("Local/14155550101@opendeep-test-callees")
                   for e in stack.observer.events("Newchannel")), "the callee's channel was created"
    assert not stack.observer.events("UserEvent")
    assert task["calls"][0]["outcome"] == "failed"


async def test_asterisk_restarted_mid_campaign_reconnects_resyncs_and_dials_nothing_twice(make_stack, asterisk):
    stack = await make_stack(MAX_CONCURRENT_CALLS_PER_USER="1", AMI_RECONNECT_MAX_SECONDS="1")
    campaign_id, [ringing_task, waiting_task] = await stack.import_campaign(
        [("Rings", NO_ANSWER), ("Busy later", BUSY)])
    await stack.observer.wait_for(lambda m: m.get("Event") == "Newchannel"
                                  and m.get("Channel", "").startswith("Local/14155550103@opendeep-test-callees"),
                                  30, "the first callee ringing")
    await asyncio.to_thread(asterisk.kill)   # Asterisk dies with the call ringing
    page = await eventually(lambda: _campaign_page_if_waiting(stack, campaign_id), 20, 0.2,
                            what="the campaign page to say the tasks wait on Asterisk")
    assert "not reachable" in page
    api = (await stack.api("GET", f"/api/campaigns/{campaign_id}")).json()
    assert api["asterisk"]["connected"] is False
    await asyncio.to_thread(asterisk.start)
    await stack.install_dialplan()           # the admin's files are still there; a reload is harmless
    await stack.wait_ami_connected(30)
    first = await stack.wait_task(ringing_task, "failed", timeout=30)
    second = await stack.wait_task(waiting_task, "failed", timeout=40)
    assert len(first["calls"]) == 1 and len(second["calls"]) == 1, (first, second)
    assert second["calls"][0]["outcome"] == "busy"
    (call, events, _), = await stack.call_rows(ringing_task)
    assert any(e.type == "ami.resync" and e.payload["found_in_asterisk"] is False for e in events)
    assert "not reachable" not in (await stack.http.get(f"/campaigns/{campaign_id}")).text


async def _campaign_page_if_waiting(stack, campaign_id):
    page = (await stack.http.get(f"/campaigns/{campaign_id}")).text
    return page if 'id="asterisk-down"' in page else None


async def test_twenty_calls_at_once_all_connect_talk_and_end(make_stack, asterisk):
    stack = await make_stack(MAX_CONCURRENT_CALLS="20", MAX_CONCURRENT_CALLS_PER_USER="20")
    # 4 s of speech before end_call: long enough that every call is up before the first one ends, even on a
    # busy machine (the scheduler starts all twenty within about a second).
    stack.fake.realtime.script = lambda conn, index: FakeResponse(
        audio=stack.models.speech * 4, transcript="Hello, goodbye.", chunk_interval=0.1,
        function_call=("end_call", {"outcome": "objective_met", "summary": "Said hello."})) if index == 0 else None
    _, task_ids = await stack.import_campaign([(f"Callee {n}", f"+141555501{n}") for n in range(10, 30)])
    for task_id in task_ids:
        await stack.wait_task(task_id, "completed", timeout=120)
    calls = []
    for task_id in task_ids:
        (call, events, _), = await stack.call_rows(task_id)
        assert (call.outcome, call.dial_status) == (CallOutcome.ANSWERED, "ANSWER")
        assert next(e for e in events if e.type == "audiosocket.ended").payload["reason"] == "ai_ended"
        calls.append(call)
    # All twenty were up together: the last answer came before the first end.
    assert max(c.answered_at for c in calls) < min(c.ended_at for c in calls)
    assert len(stack.fake.realtime.connections) == 20
