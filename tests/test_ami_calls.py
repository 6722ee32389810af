"""Stories of calls through the scheduler, the initiator and the AMI wire (a FakeAmi), on both databases."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ami_controller.component import AmiComponent
from ami_controller.initiator import dispatch_due_tasks
from ami_controller.manager import AmiController
from ami_controller.outcomes import AWAITING_ANALYSIS, finish_call
from db import repo
from db.models import Call, CallEvent, CallOutcome, CallStatus, Task, TaskStatus
from opendeep.events import EventHub
from opendeep.runtime import Runtime
from tests.doubles.ami_helpers import ALL_DAY, ami_settings, eventually, local_noon_after, make_tenant
from tests.doubles.fake_ami import FakeAmi, pairs_all, pairs_get

NUMBER = "+14155550123"
OTHER = "+14155550124"


@pytest.fixture
async def fake():
    fake = FakeAmi(username="opendeep", secret="secret", hold_seconds=30)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def world(fake, settings, sessions):
    """A connected AmiController against the fake; `world.dispatch()` runs one scheduler pass at local noon."""
    class World:
        pass

    w = World()
    w.settings = ami_settings(settings, fake.port)
    w.events = EventHub()
    w.controller = AmiController(w.settings, sessions, w.events, end_grace_seconds=0.2)
    await w.controller.start()
    await w.controller.wait_connected(5)
    w.now = local_noon_after(NUMBER)

    async def dispatch(claimer="test"):
        return await dispatch_due_tasks(sessions, w.settings, w.controller, claimer=claimer, events=w.events,
                                        now=w.now)

    w.dispatch = dispatch
    yield w
    await w.controller.stop()


async def task_of(sessions, task_id) -> Task:
    async with sessions() as session:
        return await session.get(Task, task_id)


async def calls_of(sessions, task_id) -> list[Call]:
    async with sessions() as session:
        return list((await session.scalars(select(Call).where(Call.task_id == task_id).order_by(Call.id))).all())


async def test_a_due_task_becomes_exactly_one_originate(fake, world, sessions):
    user_id, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER])
    report = await world.dispatch()
    again = await world.dispatch()
    originate = await fake.wait_for_action("Originate")
    assert len(report.dialed) == 1 and again.claimed == 0
    assert len(fake.actions_named("Originate")) == 1
    (call,) = await calls_of(sessions, task_id)
    assert pairs_get(originate, "ActionID") == call.ami_action_id == f"opendeep-orig-{call.id}"
    assert pairs_all(originate, "Variable") == [f"OPENDEEP_CALL_ID={call.id}", f"OPENDEEP_TASK_ID={task_id}",
                                                f"OPENDEEP_USER_ID={user_id}", f"OPENDEEP_NUMBER={NUMBER}"]
    assert (call.attempt_number, call.dialed_number) == (1, NUMBER)
    assert (call.asterisk_uniqueid, call.asterisk_other_uniqueid) == (f"opendeep-{call.id}", f"opendeep-{call.id}-b")
    # The fake answers: DialEnd ANSWER + OriginateResponse Success move the call to answered.
    await eventually(lambda: _status_is(sessions, call.id, CallStatus.ANSWERED))
    (call,) = await calls_of(sessions, task_id)
    # The channel live-call commands act on: the ;1 half, from its Newchannel.
    assert call.channel == fake.calls[call.ami_action_id].one.name and call.answered_at is not None
    task = await task_of(sessions, task_id)
    assert (task.status, task.attempt_count) == (TaskStatus.IN_PROGRESS, 1)
    # Hanging up the ;1 half ends the call; with no FastAGI call-end, AMI's Hangup finishes it.
    await world.controller.hangup(call.channel)
    assert pairs_get(await fake.wait_for_action("Hangup"), "Channel") == call.channel
    await eventually(lambda: _status_is(sessions, call.id, CallStatus.ENDED))
    (call,) = await calls_of(sessions, task_id)
    assert (call.outcome, call.hangup_cause, call.dial_status) == (CallOutcome.ANSWERED, 16, "ANSWER")


async def _status_is(sessions, call_id, status) -> bool:
    async with sessions() as session:
        call = await session.get(Call, call_id)
        return call.status is status


async def test_dnd_number_is_never_originated(fake, world, sessions):
    user_id, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER])
    async with sessions() as session:
        await repo.add_dnd(session, user_id, NUMBER)
        await session.commit()
    report = await world.dispatch()
    assert report.cancelled_dnd == [task_id] and report.dialed == []
    assert (await task_of(sessions, task_id)).status is TaskStatus.CANCELLED_DND
    await asyncio.sleep(0.05)
    assert fake.actions_named("Originate") == [] and await calls_of(sessions, task_id) == []


async def test_outside_the_window_nothing_is_dialed(fake, world, sessions):
    _, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER])
    world.now = world.now + timedelta(hours=10)       # 22:00 in San Francisco
    report = await world.dispatch()
    task = await task_of(sessions, task_id)
    assert report.rescheduled == [task_id] and report.dialed == []
    assert task.status is TaskStatus.PENDING and task.attempt_count == 0
    assert task.next_action_time == world.now + timedelta(hours=11)   # 09:00 the next morning
    assert fake.actions_named("Originate") == []


async def test_busy_callee_is_retried_with_backoff(fake, world, sessions):
    # Busy shows as DialEnd BUSY on the ;2 half, then OriginateResponse Failure Reason 0 (as a real Asterisk 22).
    fake.script_number(NUMBER, "busy")
    _, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER], max_attempts=3)
    await world.dispatch()
    (call,) = await calls_of(sessions, task_id)
    await eventually(lambda: _status_is(sessions, call.id, CallStatus.ENDED))
    (call,) = await calls_of(sessions, task_id)
    task = await task_of(sessions, task_id)
    assert call.outcome is CallOutcome.BUSY
    assert task.status is TaskStatus.RETRY_SCHEDULED and task.attempt_count == 1
    delay = (task.next_action_time - call.ended_at).total_seconds()
    assert abs(delay - world.settings.retry_backoff_base_seconds) < 5
    # Not due again before the backoff has passed; due right after.
    world.now = task.next_action_time - timedelta(seconds=1)
    assert (await world.dispatch()).claimed == 0
    world.now = task.next_action_time
    assert (await world.dispatch()).claimed == 1


async def test_attempts_exhausted_fail_the_task(fake, world, sessions):
    fake.script_number(NUMBER, "noanswer")
    _, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER], max_attempts=2)
    for _attempt in (1, 2):
        report = await world.dispatch()
        assert len(report.dialed) == 1
        await eventually(lambda: _task_status_in(sessions, task_id, TaskStatus.RETRY_SCHEDULED, TaskStatus.FAILED))
        world.now = (await task_of(sessions, task_id)).next_action_time + timedelta(seconds=1)
        world.now = max(world.now, local_noon_after(NUMBER, world.now))
    task = await task_of(sessions, task_id)
    calls = await calls_of(sessions, task_id)
    assert task.status is TaskStatus.FAILED and task.attempt_count == 2
    assert [c.outcome for c in calls] == [CallOutcome.NO_ANSWER, CallOutcome.NO_ANSWER]
    assert [c.attempt_number for c in calls] == [1, 2]
    assert "no attempts left" in task.status_reason
    assert (await world.dispatch()).claimed == 0 and len(fake.actions_named("Originate")) == 2


async def _task_status_in(sessions, task_id, *statuses) -> bool:
    return (await task_of(sessions, task_id)).status in statuses


async def test_originate_failure_reason_0_fails_the_attempt(fake, world, sessions):
    """The `fail` capture: no such extension -> Response Failure, Reason 0, Uniqueid <unknown>."""
    fake.script_number(NUMBER, "fail")
    _, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER])
    await world.dispatch()
    (call,) = await calls_of(sessions, task_id)
    await eventually(lambda: _status_is(sessions, call.id, CallStatus.ENDED))
    async with sessions() as session:
        events = await repo.list_call_events(session, call.user_id, call.id)
        call = await session.get(Call, call.id)
    assert call.outcome is CallOutcome.FAILED
    ended = [e.payload for e in events if e.type == "call.ended"]
    assert ended == [{"source": "ami.originate_response", "outcome": "failed", "dial_status": None,
                      "hangup_cause": None, "answered_seconds": None}]
    assert (await task_of(sessions, task_id)).status is TaskStatus.RETRY_SCHEDULED


async def test_answered_call_ends_once_whether_agi_or_ami_reports_first(fake, world, sessions):
    fake.hold_seconds = 0.1
    _, _, (first_task, second_task) = await make_tenant(sessions, numbers=[NUMBER, OTHER])
    await world.dispatch()
    first, second = (await calls_of(sessions, first_task))[0], (await calls_of(sessions, second_task))[0]
    # The first call: the dialplan's `h` extension (FastAGI call-end) reports before AMI's grace runs out.
    await eventually(lambda: _status_is(sessions, first.id, CallStatus.ANSWERED))
    async with sessions() as session:
        assert await finish_call(session, world.settings, user_id=first.user_id, call_id=first.id,
                                 outcome=CallOutcome.ANSWERED, dial_status="ANSWER", hangup_cause=16,
                                 answered_seconds=0.1, source="agi.call-end")
        await session.commit()
    # The second: no call-end at all (FastAGI down) -> AMI's Hangup finishes it after the grace.
    await eventually(lambda: _status_is(sessions, second.id, CallStatus.ENDED))
    await asyncio.sleep(0.4)
    async with sessions() as session:
        ended = (await session.execute(
            select(CallEvent.call_id, CallEvent.payload).where(CallEvent.type == "call.ended"))).all()
        second_row = await session.get(Call, second.id)
    sources = {call_id: payload["source"] for call_id, payload in ended}
    assert len(ended) == 2 and sources == {first.id: "agi.call-end", second.id: "ami.hangup"}
    assert second_row.outcome is CallOutcome.ANSWERED and second_row.hangup_cause == 16
    task = await task_of(sessions, second_task)
    assert task.status is TaskStatus.IN_PROGRESS and task.status_reason == AWAITING_ANALYSIS


async def test_asterisk_down_then_up_the_campaign_goes_on(fake, settings, sessions):
    numbers = [f"+1415555{n:04d}" for n in range(200, 206)]
    _, _, task_ids = await make_tenant(sessions, numbers=numbers)
    port = fake.port
    await fake.stop()                                              # Asterisk is down
    world_settings = ami_settings(settings, port, max_concurrent_calls=4, max_concurrent_calls_per_user=4,
                                  retry_backoff_base_seconds=0)
    controller = AmiController(world_settings, sessions, None, end_grace_seconds=0.1)
    now = local_noon_after(numbers[0])
    await controller.start()
    try:
        report = await dispatch_due_tasks(sessions, world_settings, controller, claimer="s", now=now)
        assert report.claimed == 0                                 # nothing claimed, no attempt spent
        assert {(await task_of(sessions, t)).attempt_count for t in task_ids} == {0}

        await fake.start(port=port)                                # Asterisk is back
        await controller.wait_connected(5)
        report = await dispatch_due_tasks(sessions, world_settings, controller, claimer="s", now=now)
        assert len(report.dialed) == 4                             # MAX_CONCURRENT_CALLS
        await eventually(lambda: len(fake.live_channels()) == 12)   # ;1, ;2 and the callee

        # Asterisk restarts mid-call: the live calls die with it. The re-sync after the new login finds
        # them gone and finishes them; nothing is re-sent.
        await fake.drop_connections(kill_calls=True)
        await eventually(lambda: fake.logins == 2 and controller.connected)
        async with sessions() as session:
            live = await session.scalar(select(func.count()).select_from(Call).where(Call.status != CallStatus.ENDED))
        assert live == 0

        # The campaign goes on: every task is called until it has an answered call, none twice at once.
        fake.hold_seconds = 0.05
        for _ in range(40):
            await dispatch_due_tasks(sessions, world_settings, controller, claimer="s", now=now)
            answered = []
            for task_id in task_ids:
                answered.append(any(c.outcome is CallOutcome.ANSWERED for c in await calls_of(sessions, task_id)))
            if all(answered):
                break
            await asyncio.sleep(0.1)
        assert all(answered)
    finally:
        await controller.stop()
    originates = fake.actions_named("Originate")
    action_ids = [pairs_get(a, "ActionID") for a in originates]
    assert len(action_ids) == len(set(action_ids))                 # no Originate was ever re-sent
    async with sessions() as session:
        calls = (await session.scalars(select(Call).order_by(Call.id))).all()
    assert len(calls) == len(originates)                           # every Originate has its row, and back
    for task_id in task_ids:
        task_calls = [c for c in calls if c.task_id == task_id]
        assert [c.attempt_number for c in task_calls] == list(range(1, len(task_calls) + 1))
        assert sum(c.outcome is CallOutcome.ANSWERED for c in task_calls) == 1


async def test_test_mode_dials_only_the_redirect_number(fake, settings, sessions):
    redirect = "+14155550199"
    world_settings = ami_settings(settings, fake.port, app_test_mode=True, app_test_mode_redirect_number=redirect,
                                  max_concurrent_calls=8, max_concurrent_calls_per_user=8,
                                  default_calling_window=ALL_DAY)
    fake.hold_seconds = 0.05
    numbers = ["+14155550123", "+442071838750", "+14155550124"]
    _, _, task_ids = await make_tenant(sessions, numbers=numbers)
    controller = AmiController(world_settings, sessions, None, end_grace_seconds=0.05)
    await controller.start()
    try:
        await controller.wait_connected(5)
        now = local_noon_after(numbers[0])
        first = await dispatch_due_tasks(sessions, world_settings, controller, claimer="s", now=now)
        assert len(first.dialed) == 1                               # test mode: one call at a time
        for _ in range(50):
            await dispatch_due_tasks(sessions, world_settings, controller, claimer="s", now=now)
            if len(fake.actions_named("Originate")) == 3:
                break
            await asyncio.sleep(0.05)
    finally:
        await controller.stop()
    originates = fake.actions_named("Originate")
    assert len(originates) == 3
    sent_text = "\n".join(f"{k}: {v}" for action in fake.actions for k, v in action)
    for number in numbers:
        assert number not in sent_text                               # no other number reaches AMI at all
    for action in originates:
        assert pairs_get(action, "Channel") == f"Local/{redirect}@opendeep-outbound/n"
        assert f"OPENDEEP_NUMBER={redirect}" in pairs_all(action, "Variable")


async def test_ami_component_sets_runtime_ami_and_dials(fake, settings, sessions, engine):
    runtime = Runtime(settings=ami_settings(settings, fake.port, scheduler_poll_seconds=0.05,
                                            default_calling_window=ALL_DAY),
                      engine=engine, sessions=sessions, events=EventHub())
    _, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER])
    component = AmiComponent(runtime)
    await component.start()
    try:
        assert runtime.ami.controllers["default"] is component.controller
        await fake.wait_for_action("Originate", timeout=5)
        await eventually(lambda: _task_status_in(sessions, task_id, TaskStatus.IN_PROGRESS))
    finally:
        await component.stop()
    assert runtime.ami is None
    assert len(fake.actions_named("Originate")) == 1
