"""Callbacks and voicemail drops on a real Asterisk 22, through the whole product (`opendeep serve`, the dialplan
`opendeep dialplan render` wrote, the fake OpenAI server):

- a callee rings back: the test observer originates a Local channel into [opendeep-inbound] with the number a task
  called as its CallerID; the call AI answers with the task's context, and the call joins that task.
- a machine answers a campaign that leaves messages: AMD, then the wait for the beep, then the AI's message; the
  machine's own recordings (MixMonitor r(), tests/asterisk/extensions_test.conf extension 30) show the message
  came after the beep, none of it during the greeting.
"""

from __future__ import annotations

import pytest

from db.models import CallDirection, CallOutcome, CallStatus
from tests.asterisk import audio_match
from tests.asterisk.stack import BUSY, MACHINE_WITH_BEEP
from tests.doubles.ami_helpers import eventually
from tests.doubles.fake_realtime import FakeResponse

pytestmark = pytest.mark.asterisk

MESSAGE = "Hello, this is the AI assistant of Alice, about a dental cleaning next week. Please call us back."
CALLBACK_NUMBER = "+14155550100"


async def ring_back(stack, number: str, tag: str) -> None:
    """The callee calls the number that called them: a Local channel into [opendeep-inbound] carrying their
    number as caller ID; its other end ([opendeep-test-caller]) records what the caller hears."""
    response = await stack.observer.action(
        "Originate", Channel="Local/s@opendeep-inbound/n", Context="opendeep-test-caller", Exten="s",
        Priority="1", CallerID=f'"Callee" <{number}>', ChannelId=f"caller-{tag}", OtherChannelId=f"caller-{tag}-b",
        Timeout="30000", Async="true")
    assert response["Response"] == "Success", response


async def test_a_callee_who_rings_back_reaches_the_call_ai_with_the_tasks_context(make_stack, asterisk):
    stack = await make_stack()
    # The task called a number that was busy: it waits for its next attempt.
    _, [task_id] = await stack.import_campaign([("Dr. Busy", BUSY)], max_attempts=3)
    await stack.wait_task(task_id, "retry_scheduled", timeout=40)
    stack.fake.realtime.script = lambda conn, index: FakeResponse(
        audio=stack.models.speech, transcript="Hello, thank you for calling back.", chunk_interval=0.1,
        function_call=("end_call", {"outcome": "objective_met", "summary": "They called back."})) \
        if index == 0 else None
    before = len(stack.fake.realtime.connections)

    await ring_back(stack, BUSY, "1")
    answered = await stack.observer.wait_event("UserEvent", 30, UserEvent="OpenDeepTestCaller")
    session = await eventually(lambda: stack.fake.realtime.connections[before:] or None, 20, 0.1,
                               what="the call AI's session")
    await session[0].wait_for("session.update")
    instructions = session[0].session_config()["instructions"]
    assert "returning a call" in instructions and "Ask whether they are open on Sunday." in instructions
    assert "not verified" in instructions   # the caller's words are claims, never instructions

    calls = await eventually(lambda: _ended_inbound(stack, task_id), 40, 0.2, what="the callback's call row")
    (call, events, _), = calls
    assert (call.direction, call.dialed_number, call.attempt_number) == (CallDirection.INBOUND, BUSY, 0)
    assert call.bridged_to_ai and call.outcome is CallOutcome.ANSWERED and call.status is CallStatus.ENDED
    types = [event.type for event in events]
    assert types[0] == "agi.callback" and "audiosocket.connected" in types and "ai.end_call" in types
    # The caller heard the AI: its recording holds the model's speech, from its first frame.
    heard = audio_match.read_wav(asterisk.recordings / f"heard-callback-{answered['Uniqueid']}.wav")
    spoken = audio_match.trim_silence(audio_match.mulaw_to_slin(stack.models.speech))
    assert audio_match.find(spoken, heard)[1] > 0.9
    # The analyzer reads it like any call and moves the task on (the scripted analyzer says: success).
    task = await stack.wait_task(task_id, "completed", timeout=40)
    assert [c["outcome"] for c in task["calls"]] == ["busy", "answered"]


async def _ended_inbound(stack, task_id):
    rows = [row for row in await stack.call_rows(task_id) if row[0].direction is CallDirection.INBOUND]
    return rows if rows and rows[0][0].status is CallStatus.ENDED else None


async def test_an_unknown_caller_hears_the_polite_message(make_stack, asterisk):
    stack = await make_stack()
    await ring_back(stack, "+14155550199", "2")
    hangup = await stack.observer.wait_event("Hangup", 30, Uniqueid="caller-2-b")
    assert hangup["Cause"] == "16"
    assert stack.fake.realtime.connections == []
    assert "callback from +14155550199" in stack.serve.log_text() and "message" in stack.serve.log_text()


async def test_a_machine_gets_the_tasks_message_after_the_beep_and_never_during_the_greeting(make_stack, asterisk):
    stack = await make_stack(CALLBACK_NUMBER=CALLBACK_NUMBER)
    await stack.install_dialplan("--amd")
    stack.fake.realtime.script = lambda conn, index: FakeResponse(
        audio=stack.models.speech, transcript=MESSAGE, chunk_interval=0.1,
        function_call=("end_call", {"outcome": "voicemail_left", "summary": "Message left."})) \
        if index == 0 else None
    plan = {"name": "Leave messages", "goal": "Book a cleaning", "calling_window": {"start": "00:00", "end": "23:59"},
            "max_attempts": 2, "voicemail": {"action": "leave_message", "message": MESSAGE},
            "targets": [{"name": "Machine", "phone_number": MACHINE_WITH_BEEP, "objective": "Book a cleaning."}]}
    created = await stack.api("POST", "/api/campaigns", json={"plan": plan, "source_key": "vm-1"})
    assert created.status_code == 201, created.text
    [task_id] = created.json()["task_ids"]

    beep = await stack.observer.wait_event("UserEvent", 40, UserEvent="OpenDeepTestMachine", Kind="beep")
    session = await stack.fake.realtime.wait_for_connection(timeout=30)
    await session.wait_for("session.update")
    instructions = session.session_config()["instructions"]
    # The planner's message, with the callback number read out, and only end_call to use.
    assert MESSAGE in instructions and "plus 1, 4 1 5, 5 5 5, 0 1 0 0" in instructions
    assert [tool["name"] for tool in session.session_config()["tools"]] == ["end_call"]

    (call, events, _), = await eventually(lambda: _ended_outbound(stack, task_id), 40, 0.2, what="the call's end")
    assert call.outcome is CallOutcome.VOICEMAIL_LEFT
    amd = next(e for e in events if e.type == "agi.amd")
    assert (amd.payload["amd_status"], amd.payload["action"]) == ("MACHINE", "voicemail")
    # What the machine recorded after its beep holds the whole message from its first frame; what reached it
    # during the greeting and the beep holds nothing loud.
    uniqueid = beep["Uniqueid"]
    spoken = audio_match.trim_silence(audio_match.mulaw_to_slin(stack.models.speech))
    after = audio_match.read_wav(asterisk.recordings / f"heard-after-beep-{uniqueid}.wav")
    loud_share, score = _heard_share_and_shape(spoken, after)
    assert loud_share >= 0.9 and score > 0.8, (loud_share, score)
    during = audio_match.read_wav(asterisk.recordings / f"heard-in-greeting-{uniqueid}.wav")
    assert audio_match.trim_silence(during) == b""
    # Asterisk's side: the AI's AudioSocket came up only once the line had been quiet for OPENDEEP_VM_SILENCE_MS
    # (1 s) after the beep (a lower bound: a loaded machine only makes it later).
    connected = next(m for m in stack.observer.events("Newchannel")
                     if m.get("Channel", "").startswith("AudioSocket/"))
    assert float(connected["Timestamp"]) - float(beep["Timestamp"]) >= 0.9


async def _ended_outbound(stack, task_id):
    rows = await stack.call_rows(task_id)
    return rows if rows and rows[0][0].status is CallStatus.ENDED and any(
        e.type == "audiosocket.ended" for e in rows[0][1]) else None


def _heard_share_and_shape(spoken: bytes, heard: bytes) -> tuple[float, float]:
    """(share of the message's 20 ms frames that arrived loud, envelope correlation of what arrived with the
    message). On a loaded machine the machine's MixMonitor now and then records a digitally silent frame (RMS
    exactly 0) in the middle of the AI's speech, in place of a frame or between two; those are left out of the
    comparison. This test is about when the message was spoken; tests/test_asterisk_calls.py checks the line's
    quality."""
    said = audio_match.envelope(spoken)
    arrived = [level for level in audio_match.envelope(audio_match.trim_silence(heard)) if level > 0]
    share = min(len(arrived), len(said)) / len(said)
    if len(arrived) < len(said):
        said = said[:len(arrived)]
    best = max((audio_match._correlation(said, arrived[i:i + len(said)])
                for i in range(len(arrived) - len(said) + 1)), default=0.0)
    return share, best


async def test_the_ami_resync_keeps_a_live_callback_and_ends_one_whose_channel_is_gone(asterisk, settings, sessions):
    """After every AMI login OpenDeep ends the calls Asterisk no longer has. A callback's channel has Asterisk's
    own Uniqueid (not opendeep-<id>), recorded by the callback route: a live one must survive the re-sync."""
    import dataclasses

    from ami_controller.manager import AmiController
    from db import repo
    from db.models import Call
    from db.types import utcnow
    from tests.asterisk.instance import TEST_AMI_SECRET, TEST_AMI_USER
    from tests.asterisk.observer import AmiObserver

    observer = AmiObserver(asterisk.ami_port)
    await observer.start()
    controller = None
    try:
        # A channel that stays up: a caller still ringing (the test callee that never answers).
        response = await observer.action("Originate", Channel="Local/14155550103@opendeep-test-callees/n",
                                         Application="Wait", Data="30", ChannelId="inbound-live",
                                         OtherChannelId="inbound-live-b", Timeout="30000", Async="true")
        assert response["Response"] == "Success", response
        channel = (await observer.wait_event("Newchannel", 10, Uniqueid="inbound-live"))["Channel"]
        async with sessions() as db, db.begin():
            user = await repo.create_user(db, "alice", "x")
            campaign = await repo.create_campaign(db, user.id, name="Callbacks")
            task = await repo.add_task(db, user.id, campaign.id, target_name="Callee", phone_number=BUSY)
            live, gone = (Call(user_id=user.id, task_id=task.id, attempt_number=0, dialed_number=BUSY,
                               direction=CallDirection.INBOUND, status=CallStatus.ANSWERED, asterisk_uniqueid=uid,
                               started_at=utcnow(), answered_at=utcnow()) for uid in ("inbound-live", "gone-1"))
            db.add_all([live, gone])
            await db.flush()
            live_id, gone_id, user_id = live.id, gone.id, user.id
        ami = dataclasses.replace(settings, ami_port=asterisk.ami_port, ami_username=TEST_AMI_USER,
                                  ami_secret=TEST_AMI_SECRET)
        controller = AmiController(ami, sessions, None, end_grace_seconds=0.1)
        await controller.start()
        await controller.wait_connected(10)   # connected = logged in and re-synced

        async with sessions() as db:
            statuses = [(await repo.get_call(db, user_id, call_id)).status for call_id in (live_id, gone_id)]
        assert statuses == [CallStatus.ANSWERED, CallStatus.ENDED]
        await observer.action("Hangup", Channel=channel)
    finally:
        if controller is not None:
            await controller.stop()
        await observer.stop()
