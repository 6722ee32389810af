"""Toll fraud through the call AI's transfer, against a real Asterisk 22 (tests/asterisk/): the model's words
never choose a number. A made-up number, a listed target on a do-not-call list, test mode, and a Redirect into
[opendeep-transfer] that OpenDeep did not allow all end with nothing dialed -- checked on Asterisk's own events."""

from __future__ import annotations

import asyncio

import pytest

from tests.asterisk.observer import AmiObserver
from tests.asterisk.stack import IVR, PERSON, RealStack
from tests.doubles.fake_realtime import FakeResponse

pytestmark = pytest.mark.asterisk

PREMIUM = "+19005550199"


def _ask_for(stack: RealStack, target: str) -> None:
    """The callee talked the model into it: the model asks to transfer to `target`, then ends the call."""
    def script(conn, index):
        if index == 0:
            return FakeResponse(audio=stack.models.speech, transcript="Transferring you now.",
                                function_call=("transfer_to_human", {"target": target}))
        if index == 1:
            return FakeResponse(audio=stack.models.speech, transcript="Sorry, I cannot. Goodbye.",
                                function_call=("end_call", {"outcome": "other", "summary": "No transfer."}))
        return None
    stack.fake.realtime.script = script


def _dialed(stack: RealStack, number: str) -> list[dict]:
    digits = number.lstrip("+")
    return [m for m in stack.observer.events("Newchannel") if f"{digits}@opendeep-test-callees" in m.get("Channel", "")]


async def _refused_transfer(stack: RealStack, task_id: int) -> dict:
    await stack.wait_task(task_id, "completed", "failed", "retry_scheduled", timeout=60)
    (call, events, _), = await stack.call_rows(task_id)
    (tool,) = [e.payload for e in events if e.type == "ai.tool" and e.payload["name"] == "transfer_to_human"]
    assert tool["result"]["ok"] is False and call.transfer_number is None
    assert not any(e.type == "agi.transfer" for e in events)   # no Redirect: the dialplan was never asked
    return tool["result"]


async def test_a_number_the_model_makes_up_is_never_dialed(make_stack):
    stack = await make_stack()
    await stack.api("POST", "/api/transfer-targets", json={"name": "Front desk", "phone_number": PERSON})
    _ask_for(stack, PREMIUM)
    _, [task_id] = await stack.import_campaign([("IVR", IVR)])
    result = await _refused_transfer(stack, task_id)
    assert "not one of the user's transfer targets (Front desk)" in result["error"]
    assert _dialed(stack, PREMIUM) == [] and _dialed(stack, PERSON) == []


async def test_a_listed_target_on_the_dnd_list_is_not_dialed(make_stack):
    stack = await make_stack()
    await stack.api("POST", "/api/transfer-targets", json={"name": "Front desk", "phone_number": PERSON})
    await stack.api("POST", "/api/dnd", json={"phone_number": PERSON})
    _ask_for(stack, "Front desk")
    _, [task_id] = await stack.import_campaign([("IVR", IVR)])
    result = await _refused_transfer(stack, task_id)
    assert result["error"] == "cannot transfer to Front desk: the number is on a do-not-call list"
    assert _dialed(stack, PERSON) == []


async def test_in_test_mode_a_transfer_dials_nothing_but_the_test_number(make_stack):
    stack = await make_stack(APP_TEST_MODE="true", APP_TEST_MODE_REDIRECT_NUMBER=IVR)
    await stack.api("POST", "/api/transfer-targets", json={"name": "Front desk", "phone_number": PERSON})
    _ask_for(stack, "Front desk")
    _, [task_id] = await stack.import_campaign([("IVR", IVR)])
    result = await _refused_transfer(stack, task_id)
    assert "test mode" in result["error"] and _dialed(stack, PERSON) == []


async def test_a_redirect_into_the_transfer_context_that_opendeep_did_not_allow_dials_nothing(make_stack, asterisk):
    """Another AMI client (or a bug) sends the live call's ;1 half to [opendeep-transfer]: the transfer AGI finds
    no permission for the call, and the dialplan hangs up instead of dialing."""
    stack = await make_stack()
    stack.fake.realtime.script = lambda conn, index: FakeResponse(audio=stack.models.speech, transcript="Hello.") \
        if index == 0 else None
    _, [task_id] = await stack.import_campaign([("IVR", IVR)])
    await stack.observer.wait_for(lambda m: m.get("Event") == "Newchannel"
                                  and m.get("Channel", "").startswith("AudioSocket/"), 30, "the AI on the line")
    (call, _, _), = await stack.call_rows(task_id)
    attacker = AmiObserver(asterisk.ami_port)
    await attacker.start()
    try:
        attacker._writer.write(f"Action: Redirect\r\nActionID: evil-1\r\nChannel: {call.channel}\r\n"
                               f"Context: opendeep-transfer\r\nExten: s\r\nPriority: 1\r\n\r\n".encode())
        reply = await attacker.wait_for(lambda m: m.get("ActionID") == "evil-1", 10)
        assert reply.get("Response") == "Success"   # Asterisk did move the channel...
    finally:
        await attacker.stop()
    await stack.wait_task(task_id, "completed", "failed", "retry_scheduled", timeout=60)
    await asyncio.sleep(0.5)
    (call, events, _), = await stack.call_rows(task_id)
    (transfer,) = [e.payload for e in events if e.type == "agi.transfer"]   # ...but OpenDeep gave it nothing
    assert transfer == {"number": None, "refused": "no transfer was allowed for this call"}
    assert any(m.get("Context") == "opendeep-transfer" and "no transfer allowed" in m.get("AppData", "")
               for m in stack.observer.events("Newexten"))
    assert [m for m in stack.observer.events("DialBegin") if m.get("Uniqueid") == f"opendeep-{call.id}"
            and not m.get("DestChannel", "").startswith("AudioSocket/")] == []
