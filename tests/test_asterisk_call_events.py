"""The call-state rules (ami_controller/call_events.py) replayed on what a real Asterisk 22 sent for OpenDeep's own
calls. The tests' AMI session (tests/asterisk/observer.py) receives the same call events as OpenDeep's; fed to a
fresh mapper, with no database, they must lead to the verdict the whole path wrote to the `calls` row.
"""

from __future__ import annotations

import pytest

from ami_controller.call_events import (
    Advance,
    CallEventMapper,
    Finish,
    SetChannel,
    call_uniqueids,
    originate_action_id,
)
from db.models import CallOutcome, CallStatus
from tests.asterisk.stack import BUSY, HANGS_UP_FIRST

pytestmark = pytest.mark.asterisk

ORDER = [CallStatus.CREATED, CallStatus.ORIGINATING, CallStatus.RINGING, CallStatus.ANSWERED, CallStatus.ENDED]


@pytest.fixture
async def stack(make_stack):
    return await make_stack()


async def replay(stack, call_id: int) -> list[object]:
    """The changes a fresh mapper asks for, given every event the observer saw for this call, in order."""
    action_id = originate_action_id(call_id)
    await stack.observer.wait_for(lambda m: m.get("Event") == "OriginateResponse" and m.get("ActionID") == action_id,
                                  10, what="the call's OriginateResponse")
    # The task is finished once OpenDeep's own AMI session saw the hangups; the observer's session may lag.
    first_half = call_uniqueids(call_id)[0]
    await stack.observer.wait_for(lambda m: m.get("Event") == "Hangup" and m.get("Uniqueid") == first_half,
                                  10, what="the call's ;1 Hangup")
    mapper = CallEventMapper()
    mapper.expect(call_id)
    changes: list[object] = []
    for message in list(stack.observer.messages):
        if message.get("Event") == "OriginateResponse" and message.get("ActionID") == action_id:
            changes += mapper.originate_response(call_id, message)
        elif "Event" in message and message.get("Event") != "OriginateResponse":
            changes += [c for c in mapper.call_event(message) if c.call_id == call_id]
    return changes


def check_against_the_row(changes: list[object], call) -> None:
    statuses = [c.status for c in changes if isinstance(c, Advance)]
    assert statuses == sorted(statuses, key=ORDER.index)   # forward only
    assert (CallStatus.ANSWERED in statuses) == (call.answered_at is not None)
    assert {c.outcome if not (c.answered_wins and call.answered_at) else CallOutcome.ANSWERED
            for c in changes if isinstance(c, Finish)} == {call.outcome}
    channels = [c.channel for c in changes if isinstance(c, SetChannel)]
    assert channels and channels[0] == call.channel and channels[0].endswith(";1")


async def test_a_busy_callee_replayed_is_ringing_then_busy(stack):
    _, [task_id] = await stack.import_campaign([("Callee", BUSY)])
    await stack.wait_task(task_id, "failed", timeout=40)
    (call, _, _), = await stack.call_rows(task_id)
    changes = await replay(stack, call.id)
    check_against_the_row(changes, call)
    assert [c.status for c in changes if isinstance(c, Advance)] == [CallStatus.RINGING]   # the ;2 half's DialBegin
    assert call.outcome is CallOutcome.BUSY


async def test_an_answered_call_replayed_is_answered_then_ends_normally(stack):
    from tests.doubles.fake_realtime import FakeResponse

    stack.fake.realtime.script = lambda conn, index: None if index else FakeResponse(
        audio=stack.models.speech, transcript="Hello, this is an AI assistant.", chunk_interval=0.1)
    _, [task_id] = await stack.import_campaign([("Hangs up", HANGS_UP_FIRST)])
    await stack.wait_task(task_id, "completed", timeout=40)
    (call, _, _), = await stack.call_rows(task_id)
    changes = await replay(stack, call.id)
    check_against_the_row(changes, call)
    assert CallStatus.ANSWERED in [c.status for c in changes if isinstance(c, Advance)]
    assert call.outcome is CallOutcome.ANSWERED
