"""Callbacks and voicemail drops over the real FastAGI wire, on SQLite and PostgreSQL: the fake Asterisk runs
[opendeep-inbound]'s `callback` (the caller's number as the AGI argument, as the shipped dialplan passes it) and
`callback-end`, and [opendeep-connected]'s `amd`; the database shows what was decided. The same path on a real
Asterisk is tests/test_asterisk_callbacks.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from db import repo, transfers
from db.models import (
    Call,
    CallDirection,
    CallOutcome,
    CallStatus,
    CampaignStatus,
    TaskStatus,
    User,
    VoicemailAction,
)
from db.types import utcnow
from fastagi_server.server import FastAgiComponent
from opendeep.events import EventHub
from opendeep.runtime import Runtime
from opendeep.settings import load_settings
from tests.doubles.agi_client import ENV_H_EXTENSION, FakeAsteriskAgi

NUMBER = "+14155550123"
INBOUND = "PJSIP/trunk-00000007"


@pytest.fixture
def ai_settings(settings_env):
    return load_settings({**settings_env, "OPENAI_API_KEY": "sk-test", "AUDIOSOCKET_ADVERTISE": "10.0.0.5:9092",
                          "DIAL_STRING_TEMPLATE": "PJSIP/{digits}@opendeep-trunk"}, dotenv=None)


async def _start(engine, sessions, settings):
    runtime = Runtime(settings=settings, engine=engine, sessions=sessions, events=EventHub())
    component = FastAgiComponent(runtime, host="127.0.0.1", port=0)
    await component.start()
    return component


@pytest.fixture
async def agi(engine, sessions, ai_settings):
    component = await _start(engine, sessions, ai_settings)
    yield component
    await component.stop()


async def _called(sessions, *, username="alice", number=NUMBER, ago=timedelta(hours=2),
                  task_status=TaskStatus.RETRY_SCHEDULED, campaign_status=CampaignStatus.ACTIVE):
    """A user whose task called `number` `ago` (an outbound call that rang), as the scheduler leaves it after a
    no-answer. Returns (user id, task id, call id)."""
    async with sessions() as db, db.begin():
        user = await repo.get_user_by_username(db, username) or await repo.create_user(db, username, "x")
        campaign = await repo.create_campaign(db, user.id, name="Dentists", goal="Book a cleaning")
        campaign.status = campaign_status
        task = await repo.add_task(db, user.id, campaign.id, target_name="Dr. Who", phone_number=number,
                                   objective="Book a cleaning next week")
        task.status, task.attempt_count = task_status, 1
        call = Call(user_id=user.id, task_id=task.id, attempt_number=1, dialed_number=number,
                    status=CallStatus.ENDED, outcome=CallOutcome.NO_ANSWER, started_at=utcnow() - ago)
        db.add(call)
        await db.flush()
        return user.id, task.id, call.id


async def _callback(port, caller, uniqueid="1733140000.17"):
    return await FakeAsteriskAgi(port, script="callback", args=(caller,), overrides={
        "agi_channel": INBOUND, "agi_uniqueid": uniqueid, "agi_context": "opendeep-inbound",
        "agi_extension": "s", "agi_callerid": caller}).run()


async def _callback_end(port, run, uniqueid="1733140000.17", **variables):
    return await FakeAsteriskAgi(port, script="callback-end", template=ENV_H_EXTENSION, dead=True,
                                 args=(run.variables["OPENDEEP_CALL_ID"], run.variables["OPENDEEP_USER_ID"]),
                                 overrides={"agi_uniqueid": uniqueid, "agi_channel": INBOUND},
                                 variables=variables).run()


async def _inbound_calls(sessions):
    async with sessions() as db:
        return (await db.scalars(select(Call).where(Call.direction == CallDirection.INBOUND))).all()


async def test_a_callee_ringing_back_reaches_the_ai_and_the_call_joins_that_task(agi, sessions):
    user_id, task_id, last_call = await _called(sessions)
    run = await _callback(agi.port, "14155550123")   # a trunk may send the number without its '+'
    assert run.agi_status == "SUCCESS"
    assert run.variables["OPENDEEP_CALLBACK_ACTION"] == "ai"
    assert run.variables["OPENDEEP_AS_ADDR"] == "10.0.0.5:9092" and run.variables["OPENDEEP_AS_UUID"]
    (call,) = await _inbound_calls(sessions)
    assert (call.user_id, call.task_id, call.dialed_number, call.status, call.attempt_number) == (
        user_id, task_id, NUMBER, CallStatus.ANSWERED, 0)
    assert run.variables["OPENDEEP_CALL_ID"] == str(call.id) and call.audiosocket_uuid == run.variables[
        "OPENDEEP_AS_UUID"]
    async with sessions() as db:
        task = await repo.get_task(db, user_id, task_id)
        events = await repo.list_call_events(db, user_id, call.id)
    # While the callee talks the scheduler must not dial them: the task is in progress.
    assert task.status is TaskStatus.IN_PROGRESS and "called back" in task.status_reason
    assert events[0].type == "agi.callback" and events[0].payload["last_call_id"] == last_call

    await _callback_end(agi.port, run, DIALSTATUS="ANSWER", HANGUPCAUSE="16")
    async with sessions() as db:
        call = await repo.get_call(db, user_id, call.id)
        task = await repo.get_task(db, user_id, task_id)
    # Ended like any connected call: the analyzer reads it and moves the task on.
    assert (call.status, call.outcome, call.analyzed_at) == (CallStatus.ENDED, CallOutcome.ANSWERED, None)
    assert task.status is TaskStatus.IN_PROGRESS and task.status_reason == "awaiting analysis"


async def test_the_latest_call_of_any_tenant_wins(agi, sessions):
    await _called(sessions, username="alice", ago=timedelta(days=2))
    bob_id, bob_task, _ = await _called(sessions, username="bob", ago=timedelta(hours=1))
    run = await _callback(agi.port, NUMBER)
    (call,) = await _inbound_calls(sessions)
    assert (call.user_id, call.task_id, run.variables["OPENDEEP_USER_ID"]) == (bob_id, bob_task, str(bob_id))


@pytest.mark.parametrize("caller", ["", "anonymous", "+14155550199"])
async def test_unknown_or_withheld_callers_hear_the_message_and_leave_no_row(agi, sessions, caller):
    await _called(sessions)
    run = await _callback(agi.port, caller)
    assert run.variables["OPENDEEP_CALLBACK_ACTION"] == "message"
    assert "OPENDEEP_CALL_ID" not in run.variables and await _inbound_calls(sessions) == []


async def test_a_call_older_than_the_window_is_not_a_callback(agi, sessions):
    await _called(sessions, ago=timedelta(days=7, minutes=1))
    run = await _callback(agi.port, NUMBER)
    assert run.variables["OPENDEEP_CALLBACK_ACTION"] == "message" and await _inbound_calls(sessions) == []


async def test_a_do_not_call_number_hears_the_message_and_the_call_is_recorded_on_the_task(agi, sessions):
    user_id, task_id, _ = await _called(sessions)
    async with sessions() as db, db.begin():
        await repo.add_dnd(db, user_id, NUMBER, "asked")
        target = await transfers.add_transfer_target(db, user_id, "Front desk", "+14155550106")
        await db.execute(User.__table__.update().values(callback_fallback_target_id=target.id))
    run = await _callback(agi.port, NUMBER)
    assert run.variables["OPENDEEP_CALLBACK_ACTION"] == "message"   # not even the fallback person is rung
    (call,) = await _inbound_calls(sessions)
    assert call.task_id == task_id and call.analyzed_at is not None and call.audiosocket_uuid is None
    async with sessions() as db:
        assert (await repo.get_task(db, user_id, task_id)).status is TaskStatus.RETRY_SCHEDULED


async def test_a_cancelled_campaign_goes_to_the_owners_fallback_person(agi, sessions):
    user_id, task_id, _ = await _called(sessions, campaign_status=CampaignStatus.CANCELLED,
                                        task_status=TaskStatus.CANCELLED)
    async with sessions() as db, db.begin():
        target = await transfers.add_transfer_target(db, user_id, "Front desk", "+14155550106")
        await db.execute(User.__table__.update().where(User.id == user_id)
                         .values(callback_fallback_target_id=target.id))
    run = await _callback(agi.port, NUMBER)
    assert run.variables["OPENDEEP_CALLBACK_ACTION"] == "forward"
    assert run.variables["OPENDEEP_CALLBACK_DIAL"] == "PJSIP/14155550106@opendeep-trunk"
    (call,) = await _inbound_calls(sessions)
    assert call.transfer_number == "+14155550106" and call.audiosocket_uuid is None
    await _callback_end(agi.port, run, DIALSTATUS="NOANSWER", HANGUPCAUSE="16")
    async with sessions() as db:
        call = await repo.get_call(db, user_id, call.id)
        task = await repo.get_task(db, user_id, task_id)
        types = [e.type for e in await repo.list_call_events(db, user_id, call.id)]
    assert call.status is CallStatus.ENDED and task.status is TaskStatus.CANCELLED
    assert types == ["agi.callback", "call.ended", "callback.forward_unanswered"]


async def test_an_owner_who_turned_the_ai_off_without_a_fallback_person_gives_the_message(agi, sessions):
    user_id, _, _ = await _called(sessions)
    async with sessions() as db, db.begin():
        await db.execute(User.__table__.update().where(User.id == user_id).values(callback_ai=False))
    run = await _callback(agi.port, NUMBER)
    assert run.variables["OPENDEEP_CALLBACK_ACTION"] == "message"
    (call,) = await _inbound_calls(sessions)
    assert call.user_id == user_id


async def test_a_completed_task_is_answered_by_the_ai_and_keeps_its_status(agi, sessions):
    user_id, task_id, _ = await _called(sessions, task_status=TaskStatus.COMPLETED,
                                        campaign_status=CampaignStatus.COMPLETED)
    run = await _callback(agi.port, NUMBER)
    assert run.variables["OPENDEEP_CALLBACK_ACTION"] == "ai"
    async with sessions() as db:
        assert (await repo.get_task(db, user_id, task_id)).status is TaskStatus.COMPLETED


async def test_in_test_mode_only_the_redirect_number_is_a_callback(engine, sessions, settings_env):
    settings = load_settings({**settings_env, "OPENAI_API_KEY": "sk-test", "APP_TEST_MODE": "true",
                              "APP_TEST_MODE_REDIRECT_NUMBER": "+14155550177"}, dotenv=None)
    component = await _start(engine, sessions, settings)
    try:
        _, task_id, _ = await _called(sessions)
        assert (await _callback(component.port, NUMBER)).variables["OPENDEEP_CALLBACK_ACTION"] == "message"
        run = await _callback(component.port, "+14155550177")
        assert run.variables["OPENDEEP_CALLBACK_ACTION"] == "ai"
        (call,) = await _inbound_calls(sessions)
        assert call.task_id == task_id
    finally:
        await component.stop()


async def test_callback_end_from_another_channel_is_refused(agi, sessions):
    user_id, _, _ = await _called(sessions)
    run = await _callback(agi.port, NUMBER)
    await _callback_end(agi.port, run, uniqueid="1733140000.99", DIALSTATUS="ANSWER")
    (call,) = await _inbound_calls(sessions)
    assert call.status is CallStatus.ANSWERED   # still live: a forged session cannot end it


async def _outbound_call_answered(agi, sessions, *, leave_message: bool, message: str | None):
    user_id, task_id, _ = await _called(sessions, task_status=TaskStatus.IN_PROGRESS)
    async with sessions() as db, db.begin():
        task = await repo.get_task(db, user_id, task_id)
        task.voicemail_message = message
        campaign = await repo.get_campaign(db, user_id, task.campaign_id)
        campaign.voicemail_action = VoicemailAction.LEAVE_MESSAGE if leave_message else VoicemailAction.HANG_UP
        call = Call(user_id=user_id, task_id=task_id, attempt_number=2, dialed_number=NUMBER,
                    status=CallStatus.ORIGINATING)
        db.add(call)
        await db.flush()
        call_id = call.id
    args = (str(call_id), str(user_id))
    await FakeAsteriskAgi(agi.port, script="call-start", args=args).run()
    await FakeAsteriskAgi(agi.port, script="call-answered", args=args).run()
    amd = await FakeAsteriskAgi(agi.port, script="amd", args=args,
                                variables={"AMDSTATUS": "MACHINE", "AMDCAUSE": "LONGGREETING-1500-1500"}).run()
    return user_id, call_id, amd.variables["OPENDEEP_AMD_ACTION"]


@pytest.mark.parametrize(("leave_message", "message", "action"), [
    (True, "Hi, this is Alice's assistant about a cleaning.", "voicemail"),
    (True, None, "hangup"),            # nothing to say: hang up as before
    (False, "Hi, this is Alice's assistant.", "hangup"),
])
async def test_a_machine_gets_the_message_only_when_the_plan_leaves_one(agi, sessions, leave_message, message,
                                                                        action):
    user_id, call_id, got = await _outbound_call_answered(agi, sessions, leave_message=leave_message,
                                                          message=message)
    assert got == action
    async with sessions() as db:
        assert (await repo.get_call(db, user_id, call_id)).outcome is CallOutcome.VOICEMAIL   # the hint


async def test_a_message_left_is_the_calls_outcome_at_call_end(agi, sessions):
    user_id, call_id, _ = await _outbound_call_answered(agi, sessions, leave_message=True, message="Hi.")
    async with sessions() as db, db.begin():   # what the call AI's end_call(voicemail_left) leaves on the row
        (await repo.get_call(db, user_id, call_id)).outcome = CallOutcome.VOICEMAIL_LEFT
    await FakeAsteriskAgi(agi.port, script="call-end", template=ENV_H_EXTENSION, dead=True,
                          args=(str(call_id), str(user_id)), variables={"DIALSTATUS": "ANSWER",
                                                                        "HANGUPCAUSE": "16"}).run()
    async with sessions() as db:
        call = await repo.get_call(db, user_id, call_id)
    assert (call.status, call.outcome, call.analyzed_at) == (CallStatus.ENDED, CallOutcome.VOICEMAIL_LEFT, None)
