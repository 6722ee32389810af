"""Call decisions over the real FastAGI wire, on SQLite and PostgreSQL: the fake Asterisk sends the captured
environment, the route answers with SET VARIABLE, and the database shows what was decided."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from db import repo
from db.models import Call, CallOutcome, CallStatus, TaskStatus
from fastagi_server.server import FastAgiComponent
from opendeep.events import EventHub
from opendeep.recordings import recording_path
from opendeep.runtime import Runtime
from opendeep.settings import load_settings
from tests.doubles.agi_client import ENV_H_EXTENSION, FakeAsteriskAgi

NUMBER = "+14155550123"


@pytest.fixture
def ai_settings(settings_env):
    return load_settings({**settings_env, "OPENAI_API_KEY": "sk-test", "AUDIOSOCKET_ADVERTISE": "10.0.0.5:9092",
                          "DIAL_STRING_TEMPLATE": "PJSIP/{digits}@opendeep-trunk"}, dotenv=None)


async def _fastagi(engine, sessions, settings):
    runtime = Runtime(settings=settings, engine=engine, sessions=sessions, events=EventHub())
    component = FastAgiComponent(runtime, host="127.0.0.1", port=0)
    await component.start()
    return component


@pytest.fixture
async def agi(engine, sessions, ai_settings):
    component = await _fastagi(engine, sessions, ai_settings)
    yield component
    await component.stop()


async def _call(sessions, *, username="alice", number=NUMBER, task_status=TaskStatus.IN_PROGRESS,
                attempt_count=1, max_attempts=3):
    """A user with a campaign, a task being dialed and its calls row, as the call initiator leaves them."""
    async with sessions() as db, db.begin():
        user = await repo.create_user(db, username, "x")
        campaign = await repo.create_campaign(db, user.id, name="Dentists")
        task = await repo.add_task(db, user.id, campaign.id, target_name="Dr. Who", phone_number=number,
                                   max_attempts=max_attempts)
        task.status = task_status
        task.attempt_count = attempt_count
        call = Call(user_id=user.id, task_id=task.id, attempt_number=attempt_count, dialed_number=number,
                    status=CallStatus.ORIGINATING)
        db.add(call)
        await db.flush()
        return user.id, task.id, call.id


def _originate_variables(call_id, user_id, task_id=1):
    return {"OPENDEEP_CALL_ID": str(call_id), "OPENDEEP_USER_ID": str(user_id), "OPENDEEP_TASK_ID": str(task_id),
            "OPENDEEP_NUMBER": NUMBER}


async def _load(sessions, user_id, call_id, task_id):
    async with sessions() as db:
        return (await repo.get_call(db, user_id, call_id), await repo.get_task(db, user_id, task_id),
                [event.type for event in await repo.list_call_events(db, user_id, call_id)])


async def test_call_start_sets_what_the_dialplan_needs_and_stores_the_audiosocket_uuid(agi, sessions):
    user_id, task_id, call_id = await _call(sessions)
    run = await FakeAsteriskAgi(agi.port, script="call-start",
                                variables=_originate_variables(call_id, user_id, task_id)).run()
    assert run.agi_status == "SUCCESS"
    assert run.commands[:2] == ["GET VARIABLE OPENDEEP_CALL_ID", "GET VARIABLE OPENDEEP_USER_ID"]
    # One round trip for both variables; the go signal comes with the others or not at all.
    assert run.commands[2:] == ["EXEC MSet OPENDEEP_RING_SECONDS=45,OPENDEEP_DIAL=PJSIP/14155550123@opendeep-trunk"]
    variables = run.variables
    assert variables["OPENDEEP_RING_SECONDS"] == "45"
    assert "OPENDEEP_ABORT" not in variables and "OPENDEEP_AS_UUID" not in variables   # the AI: once answered
    call, task, events = await _load(sessions, user_id, call_id, task_id)
    assert str(uuid.UUID(call.audiosocket_uuid)) == call.audiosocket_uuid
    assert call.status is CallStatus.RINGING and call.started_at is not None
    assert call.asterisk_other_uniqueid == f"opendeep-{call_id}-b"  # agi_uniqueid: the ;2 half our Originate named
    assert events == ["agi.call_start"]


async def test_without_a_realtime_model_the_call_rings_unbridged_and_says_why(engine, sessions, settings):
    component = await _fastagi(engine, sessions, settings)  # no OPENAI_API_KEY / OPENAI_BASE_URL
    try:
        user_id, task_id, call_id = await _call(sessions)
        run = await FakeAsteriskAgi(component.port, script="call-start",
                                    variables=_originate_variables(call_id, user_id)).run()
        answered = await _answer(component.port, call_id, user_id)
    finally:
        await component.stop()
    assert run.variables["OPENDEEP_DIAL"] == f"PJSIP/{NUMBER}@opendeep-trunk"  # default template
    assert answered.variables["OPENDEEP_BRIDGE"] == "0"   # the callee hears the prompt, not the AI
    async with sessions() as db:
        event, _ = await repo.list_call_events(db, user_id, call_id)
    assert event.payload["bridge"] is False and "OPENAI_API_KEY" in event.payload["bridge_reason"]


async def test_test_mode_dials_only_the_redirect_number(engine, sessions, settings_env):
    settings = load_settings({**settings_env, "APP_TEST_MODE": "true",
                              "APP_TEST_MODE_REDIRECT_NUMBER": "+442071838750"}, dotenv=None)
    component = await _fastagi(engine, sessions, settings)
    try:
        user_id, _, call_id = await _call(sessions)
        run = await FakeAsteriskAgi(component.port, script="call-start",
                                    variables=_originate_variables(call_id, user_id)).run()
    finally:
        await component.stop()
    assert run.variables["OPENDEEP_DIAL"] == "PJSIP/+442071838750@opendeep-trunk"
    assert NUMBER not in "".join(run.commands)


async def test_number_on_the_users_dnd_list_is_not_dialed_and_the_task_is_cancelled_dnd(agi, sessions):
    user_id, task_id, call_id = await _call(sessions)
    async with sessions() as db, db.begin():
        await repo.add_dnd(db, user_id, NUMBER, "asked not to be called")
    events = []
    async with agi.runtime.events.subscribe(user_id) as queue:
        run = await FakeAsteriskAgi(agi.port, script="call-start",
                                    variables=_originate_variables(call_id, user_id)).run()
        while not queue.empty():
            events.append(queue.get_nowait().kind)
    assert run.variables["OPENDEEP_ABORT"] == "dnd"
    assert not any(name in run.variables for name in ("OPENDEEP_DIAL", "OPENDEEP_AS_UUID"))
    call, task, call_events = await _load(sessions, user_id, call_id, task_id)
    assert (call.status, call.outcome) == (CallStatus.ENDED, CallOutcome.DND_BLOCKED)
    assert call.audiosocket_uuid is None
    assert task.status is TaskStatus.CANCELLED_DND
    assert task.status_reason == "number is on your do-not-call list"
    assert call_events == ["agi.call_start_aborted", "call.ended"]
    assert {"call.updated", "task.updated"} <= set(events)


async def test_global_dnd_forms_when_enough_tenants_list_the_number(agi, sessions):
    user_id, task_id, call_id = await _call(sessions)
    async with sessions() as db, db.begin():
        for name in ("bob", "carol", "dave"):  # GLOBAL_DND_TENANT_THRESHOLD defaults to 3
            other = await repo.create_user(db, name, "x")
            await repo.add_dnd(db, other.id, NUMBER)
    run = await FakeAsteriskAgi(agi.port, script="call-start",
                                variables=_originate_variables(call_id, user_id)).run()
    assert run.variables["OPENDEEP_ABORT"] == "dnd"
    _, task, _ = await _load(sessions, user_id, call_id, task_id)
    assert task.status is TaskStatus.CANCELLED_DND
    assert "global do-not-call list (3 tenants" in task.status_reason


async def test_two_other_tenants_are_below_the_threshold_and_the_call_rings(agi, sessions):
    user_id, _, call_id = await _call(sessions)
    async with sessions() as db, db.begin():
        for name in ("bob", "carol"):
            other = await repo.create_user(db, name, "x")
            await repo.add_dnd(db, other.id, NUMBER)
    run = await FakeAsteriskAgi(agi.port, script="call-start",
                                variables=_originate_variables(call_id, user_id)).run()
    assert "OPENDEEP_ABORT" not in run.variables and run.variables["OPENDEEP_DIAL"]


async def test_another_users_call_id_is_unknown_and_nothing_is_dialed(agi, sessions):
    owner_id, task_id, call_id = await _call(sessions)
    intruder_id, _, _ = await _call(sessions, username="mallory", number="+14155550199")
    run = await FakeAsteriskAgi(agi.port, script="call-start",
                                variables=_originate_variables(call_id, intruder_id)).run()
    assert run.variables["OPENDEEP_ABORT"] == "unknown-call"
    assert "OPENDEEP_DIAL" not in run.variables
    call, _, events = await _load(sessions, owner_id, call_id, task_id)
    assert call.status is CallStatus.ORIGINATING and events == []  # the owner's call is untouched


@pytest.mark.parametrize("variables", [
    {}, {"OPENDEEP_CALL_ID": "42"}, {"OPENDEEP_CALL_ID": "x", "OPENDEEP_USER_ID": "1"},
    {"OPENDEEP_CALL_ID": "999", "OPENDEEP_USER_ID": "1"},
])
async def test_missing_or_bogus_ids_abort_as_unknown_call(agi, variables):
    run = await FakeAsteriskAgi(agi.port, script="call-start", variables=variables).run()
    assert run.variables.get("OPENDEEP_ABORT") == "unknown-call"
    assert "OPENDEEP_DIAL" not in run.variables


async def test_a_task_cancelled_after_the_originate_is_not_dialed(agi, sessions):
    user_id, task_id, call_id = await _call(sessions, task_status=TaskStatus.CANCELLED)
    run = await FakeAsteriskAgi(agi.port, script="call-start",
                                variables=_originate_variables(call_id, user_id)).run()
    assert run.variables["OPENDEEP_ABORT"] == "task-not-live"
    call, task, _ = await _load(sessions, user_id, call_id, task_id)
    assert (call.status, call.outcome, task.status) == (CallStatus.ENDED, CallOutcome.CANCELLED, TaskStatus.CANCELLED)


async def test_a_number_that_is_not_digits_never_reaches_dial(agi, sessions):
    user_id, task_id, call_id = await _call(sessions, number="+1415&Local/x")
    run = await FakeAsteriskAgi(agi.port, script="call-start",
                                variables=_originate_variables(call_id, user_id)).run()
    assert run.variables["OPENDEEP_ABORT"] == "invalid-number" and "OPENDEEP_DIAL" not in run.variables


async def test_hangup_during_call_start_leaves_no_dial(agi, sessions):
    user_id, _, call_id = await _call(sessions)
    run = await FakeAsteriskAgi(agi.port, script="call-start", variables=_originate_variables(call_id, user_id),
                                hangup_after=2).run()   # two GET VARIABLEs answered, then gone during the MSet
    assert run.agi_status == "HANGUP" and "OPENDEEP_DIAL" not in run.variables
    assert run.commands[-1].startswith("EXEC MSet ")


LOCAL_ONE = f"Local/{NUMBER}@opendeep-outbound-0000002a;1"


async def _answer(port, call_id, user_id, channel=LOCAL_ONE):
    """call-answered as [opendeep-connected] runs it on the Local ;1 half once the callee answered: ids as AGI()
    arguments."""
    return await FakeAsteriskAgi(port, script="call-answered", args=(str(call_id), str(user_id)),
                                 overrides={"agi_channel": channel, "agi_context": "opendeep-connected",
                                            "agi_extension": "s"}).run()


async def _hang_up(port, call_id, user_id, **variables):
    """call-end as the `h` extension of the Local ;2 channel runs it (dead channel: CHANNEL STATUS -> 511)."""
    values = {**_originate_variables(call_id, user_id), **variables}
    return await FakeAsteriskAgi(port, script="call-end", template=ENV_H_EXTENSION, variables=values,
                                 dead=True).run()


async def test_answered_call_records_the_callee_channel_then_ends_awaiting_analysis(agi, sessions):
    user_id, task_id, call_id = await _call(sessions)
    start = await FakeAsteriskAgi(agi.port, script="call-start",
                                  variables=_originate_variables(call_id, user_id)).run()
    assert start.agi_status == "SUCCESS"
    answered = await _answer(agi.port, call_id, user_id)
    # The ids came as arguments: nothing to ask. All variables in one MSet round trip (the UUID with them: without
    # it the dialplan connects nothing).
    assert len(answered.commands) == 1 and answered.commands[0].startswith("EXEC MSet ")
    call, _, _ = await _load(sessions, user_id, call_id, task_id)
    assert answered.variables == {"OPENDEEP_AS_ADDR": "10.0.0.5:9092", "OPENDEEP_BRIDGE": "1",
                                  "OPENDEEP_MAX_SECONDS": "600", "OPENDEEP_AS_UUID": call.audiosocket_uuid,
                                  "OPENDEEP_RECORDING": str(recording_path(agi.routes.settings, user_id, call_id))}
    assert answered.variables["OPENDEEP_RECORDING"].endswith(f"/recordings/{user_id}/{call_id}.wav")
    assert (call.status, call.channel) == (CallStatus.ANSWERED, LOCAL_ONE)
    assert call.answered_at is not None

    end = await _hang_up(agi.port, call_id, user_id, DIALSTATUS="ANSWER", HANGUPCAUSE="16")
    assert "CHANNEL STATUS" not in end.commands
    call, task, events = await _load(sessions, user_id, call_id, task_id)
    assert (call.status, call.outcome, call.dial_status, call.hangup_cause) == (
        CallStatus.ENDED, CallOutcome.ANSWERED, "ANSWER", 16)
    assert call.duration_seconds is not None
    assert (task.status, task.status_reason) == (TaskStatus.IN_PROGRESS, "awaiting analysis")
    assert events == ["agi.call_start", "agi.call_answered", "call.ended"]


async def test_busy_callee_is_retried_with_backoff(agi, sessions):
    user_id, task_id, call_id = await _call(sessions, attempt_count=1, max_attempts=3)
    await _hang_up(agi.port, call_id, user_id, DIALSTATUS="BUSY", HANGUPCAUSE="17")
    call, task, _ = await _load(sessions, user_id, call_id, task_id)
    assert call.outcome is CallOutcome.BUSY
    assert task.status is TaskStatus.RETRY_SCHEDULED and task.next_action_time > call.ended_at


async def test_no_answer_on_the_last_attempt_fails_the_task(agi, sessions):
    user_id, task_id, call_id = await _call(sessions, attempt_count=3, max_attempts=3)
    await _hang_up(agi.port, call_id, user_id, DIALSTATUS="NOANSWER", HANGUPCAUSE="19")
    _, task, _ = await _load(sessions, user_id, call_id, task_id)
    assert task.status is TaskStatus.FAILED


async def test_call_end_twice_ends_the_call_once(agi, sessions):
    user_id, task_id, call_id = await _call(sessions)
    await _hang_up(agi.port, call_id, user_id, DIALSTATUS="CONGESTION", HANGUPCAUSE="34")
    await _hang_up(agi.port, call_id, user_id, DIALSTATUS="ANSWER", HANGUPCAUSE="16")
    call, _, events = await _load(sessions, user_id, call_id, task_id)
    assert call.outcome is CallOutcome.CONGESTION and events.count("call.ended") == 1


async def test_answered_without_the_ai_ends_as_failed_ai(engine, sessions, settings):
    component = await _fastagi(engine, sessions, settings)  # no realtime model configured
    try:
        user_id, task_id, call_id = await _call(sessions)
        await FakeAsteriskAgi(component.port, script="call-start", args=(str(call_id), str(user_id))).run()
        await _answer(component.port, call_id, user_id)
        await _hang_up(component.port, call_id, user_id, DIALSTATUS="ANSWER", HANGUPCAUSE="16")
    finally:
        await component.stop()
    call, _, _ = await _load(sessions, user_id, call_id, task_id)
    assert call.outcome is CallOutcome.FAILED_AI


async def test_call_answered_for_a_call_that_never_started_connects_nothing(agi, sessions):
    """No call-start (so no AudioSocket UUID): the dialplan sees no OPENDEEP_AS_UUID and hangs up."""
    user_id, task_id, call_id = await _call(sessions)
    answered = await _answer(agi.port, call_id, user_id)
    assert answered.agi_status == "SUCCESS" and answered.variables == {}
    call, _, events = await _load(sessions, user_id, call_id, task_id)
    assert call.channel is None and events == []


async def test_the_call_ai_losing_its_model_keeps_failed_ai_at_call_end(agi, sessions):
    """The AudioSocket bridge marks calls.outcome failed_ai when the model connection drops; the h extension
    then reports a normal answered hangup, which must not turn it back into a plain answer."""
    user_id, task_id, call_id = await _call(sessions)
    await FakeAsteriskAgi(agi.port, script="call-start", args=(str(call_id), str(user_id))).run()
    await _answer(agi.port, call_id, user_id)
    async with sessions() as db, db.begin():
        (await repo.get_call(db, user_id, call_id)).outcome = CallOutcome.FAILED_AI
    await _hang_up(agi.port, call_id, user_id, DIALSTATUS="ANSWER", HANGUPCAUSE="16")
    call, task, _ = await _load(sessions, user_id, call_id, task_id)
    assert (call.status, call.outcome) == (CallStatus.ENDED, CallOutcome.FAILED_AI)
    assert task.status_reason == "awaiting analysis"


async def test_call_start_never_ran_then_call_end_records_a_failure(agi, sessions):
    """FastAGI was down at call-start (AGISTATUS=FAILURE, nothing dialed) and back for the `h` extension."""
    user_id, task_id, call_id = await _call(sessions)
    await _hang_up(agi.port, call_id, user_id, HANGUPCAUSE="16")  # no DIALSTATUS: Dial never ran
    call, task, _ = await _load(sessions, user_id, call_id, task_id)
    assert call.outcome is CallOutcome.FAILED and task.status is TaskStatus.RETRY_SCHEDULED


async def test_answering_machine_becomes_a_voicemail_outcome(agi, sessions):
    user_id, task_id, call_id = await _call(sessions)
    await FakeAsteriskAgi(agi.port, script="call-start", args=(str(call_id), str(user_id))).run()
    await _answer(agi.port, call_id, user_id)
    amd = await FakeAsteriskAgi(agi.port, script="amd", args=(str(call_id), str(user_id)),
                                variables={"AMDSTATUS": "MACHINE", "AMDCAUSE": "INITIALSILENCE-2500-2500"}).run()
    assert amd.variables["OPENDEEP_AMD_ACTION"] == "hangup"
    await _hang_up(agi.port, call_id, user_id, DIALSTATUS="ANSWER", HANGUPCAUSE="16")
    call, task, events = await _load(sessions, user_id, call_id, task_id)
    assert call.outcome is CallOutcome.VOICEMAIL
    assert events == ["agi.call_start", "agi.call_answered", "agi.amd", "call.ended"]
    async with sessions() as db:
        amd_event = (await repo.list_call_events(db, user_id, call_id))[2]
    assert amd_event.payload == {"amd_status": "MACHINE", "amd_cause": "INITIALSILENCE-2500-2500",
                                 "action": "hangup"}


@pytest.mark.parametrize("status", ["HUMAN", "NOTSURE"])
async def test_human_and_not_sure_are_put_through_to_the_ai(agi, sessions, status):
    user_id, task_id, call_id = await _call(sessions)
    amd = await FakeAsteriskAgi(agi.port, script="amd", args=(str(call_id), str(user_id)),
                                variables={"AMDSTATUS": status, "AMDCAUSE": "HUMAN-500-500"}).run()
    assert amd.variables["OPENDEEP_AMD_ACTION"] == "talk"
    call, _, _ = await _load(sessions, user_id, call_id, task_id)
    assert call.outcome is None


async def test_a_dial_template_with_an_unknown_placeholder_is_refused_at_start(engine, sessions, settings_env):
    settings = load_settings({**settings_env, "DIAL_STRING_TEMPLATE": "PJSIP/{phone}@trunk"}, dotenv=None)
    with pytest.raises(ValueError, match="DIAL_STRING_TEMPLATE"):
        await _fastagi(engine, sessions, settings)


async def test_a_second_call_start_for_the_same_call_never_rings_twice(agi, sessions):
    user_id, _, call_id = await _call(sessions)
    variables = _originate_variables(call_id, user_id)
    first = await FakeAsteriskAgi(agi.port, script="call-start", variables=dict(variables)).run()
    second = await FakeAsteriskAgi(agi.port, script="call-start", variables=dict(variables)).run()
    assert first.variables["OPENDEEP_DIAL"] and "OPENDEEP_ABORT" not in first.variables
    assert second.variables["OPENDEEP_ABORT"] == "already-started" and "OPENDEEP_DIAL" not in second.variables


async def test_call_starts_arriving_together_are_each_decided_on_their_own(agi, sessions):
    """Group commit: 30 sessions share transactions, yet each gets its own UUID, and the DND one, the
    unknown one and the duplicate are refused without affecting the rest."""
    calls = []
    for index in range(30):
        calls.append(await _call(sessions, username=f"user{index}", number=f"+1415555{index:04d}"))
    async with sessions() as db, db.begin():
        await repo.add_dnd(db, calls[7][0], "+14155550007")
    runs = [FakeAsteriskAgi(agi.port, script="call-start", variables=_originate_variables(call_id, user_id))
            for user_id, _, call_id in calls]
    runs.append(FakeAsteriskAgi(agi.port, script="call-start", variables=_originate_variables(calls[3][2], 999)))
    runs.append(FakeAsteriskAgi(agi.port, script="call-start", variables=_originate_variables(calls[5][2],
                                                                                               calls[5][0])))
    results = await asyncio.gather(*(run.run() for run in runs))
    aborts = [result.variables.get("OPENDEEP_ABORT") for result in results]
    assert aborts[7] == "dnd" and aborts[30] == "unknown-call"
    assert sorted([aborts[5], aborts[31]], key=str) == sorted([None, "already-started"], key=str)
    assert aborts.count(None) == 29
    async with sessions() as db:
        stored = {}
        for (user_id, _task_id, call_id), result in zip(calls, results, strict=False):
            call = await repo.get_call(db, user_id, call_id)
            stored[call_id] = call.audiosocket_uuid
            if result.variables.get("OPENDEEP_AS_UUID"):
                assert call.audiosocket_uuid == result.variables["OPENDEEP_AS_UUID"]
    assert len({uuid for uuid in stored.values() if uuid}) == 29


async def test_group_commit_retries_a_failed_batch_one_by_one():
    from fastagi_server.routes import CallStartDecision, CallStartRequest, GroupCommit

    seen_batches = []

    async def decide(requests):
        seen_batches.append([request.call_id for request in requests])
        await asyncio.sleep(0.01)
        if any(request.call_id == 13 for request in requests):
            raise RuntimeError("poisoned row")
        return [CallStartDecision(dial=f"PJSIP/{request.call_id}") for request in requests]

    group = GroupCommit(decide)
    results = await asyncio.gather(*(group.submit(CallStartRequest(call_id, 1)) for call_id in range(10, 16)),
                                   return_exceptions=True)
    assert [getattr(result, "dial", None) for result in results] == [
        "PJSIP/10", "PJSIP/11", "PJSIP/12", None, "PJSIP/14", "PJSIP/15"]
    assert "decision failed" in str(results[3])
    assert max(len(batch) for batch in seen_batches) > 1  # they really were batched


async def test_batch_lookups_are_scoped_by_each_pairs_user(sessions):
    alice_id, _, alice_call = await _call(sessions)
    bob_id, _, bob_call = await _call(sessions, username="bob", number="+14155550199")
    async with sessions() as db, db.begin():
        await repo.add_dnd(db, alice_id, NUMBER)
    async with sessions() as db:
        rows = await repo.get_call_start_rows(db, [(bob_id, alice_call), (bob_id, bob_call)])
        assert list(rows) == [(bob_id, bob_call)]  # Alice's call asked for as Bob's: simply not found
        checks = await repo.dnd_checks(db, [(bob_id, NUMBER), (alice_id, NUMBER)])
        assert checks == {(bob_id, NUMBER): (False, 1), (alice_id, NUMBER): (True, 1)}  # a count, never who


async def test_ids_given_as_agi_arguments_save_the_round_trips(agi, sessions):
    """The shipped dialplan: AGI(agi://.../call-start,${OPENDEEP_CALL_ID},${OPENDEEP_USER_ID})."""
    user_id, _, call_id = await _call(sessions)
    run = await FakeAsteriskAgi(agi.port, script="call-start", args=(str(call_id), str(user_id))).run()
    assert not any(command.startswith("GET VARIABLE") for command in run.commands)
    assert [command.split()[:2] for command in run.commands] == [["EXEC", "MSet"]]
    assert set(run.variables) >= {"OPENDEEP_RING_SECONDS", "OPENDEEP_DIAL"}
