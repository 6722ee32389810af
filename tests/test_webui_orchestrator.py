"""Confirming a plan writes the campaign and its tasks once; pause, resume and cancel move tasks as promised."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ami_controller.manager import AmiController
from db import repo
from db.models import Call, CallStatus, Campaign, CampaignStatus, Task, TaskStatus
from db.types import utcnow
from tests.doubles.fake_ami import FakeAmi
from tests.doubles.task_state import put_task
from tests.doubles.webui_client import add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.controls import ControlAction, ControlError, NotFound, control_campaign, control_task
from webui.orchestrator import PlanRejected, confirm_plan


@pytest.fixture
def runtime(settings_env, engine, sessions):
    return make_runtime(settings_env, engine, sessions)


async def counts(sessions):
    async with sessions() as session:
        return (await session.scalar(select(func.count()).select_from(Campaign)),
                await session.scalar(select(func.count()).select_from(Task)))


async def test_confirm_writes_campaign_and_tasks_and_a_second_click_creates_nothing(runtime):
    alice = await add_user(runtime, "alice")
    async with runtime.events.subscribe(alice) as queue:
        first = await confirm_plan(runtime.sessions, alice, a_plan(), "chat-1-abc", events=runtime.events)
        second = await confirm_plan(runtime.sessions, alice, a_plan(), "chat-1-abc", events=runtime.events)
        published = [queue.get_nowait() for _ in range(queue.qsize())]
    assert first.created and not second.created
    assert first.campaign.id == second.campaign.id and first.task_ids == second.task_ids
    assert await counts(runtime.sessions) == (1, 2)
    assert [e.kind for e in published] == ["task.updated", "task.updated"]   # only the first click publishes
    async with runtime.sessions() as session:
        campaign = await repo.get_campaign(session, alice, first.campaign.id)
        tasks = await repo.list_tasks(session, alice, campaign.id)
    assert (campaign.window_start, campaign.window_end, campaign.source_key) == ("09:00", "17:30", "chat-1-abc")
    assert [(t.phone_number, t.max_attempts, t.status) for t in tasks] == [
        ("+14155550101", 2, TaskStatus.PENDING), ("+14155550102", 2, TaskStatus.PENDING)]
    assert tasks[1].context == {"address": "12 Main St"}


async def test_racing_confirms_of_one_key_create_one_campaign(runtime):
    alice = await add_user(runtime, "alice")
    results = await asyncio.gather(*(confirm_plan(runtime.sessions, alice, a_plan(), "same-key")
                                     for _ in range(4)))
    assert sum(r.created for r in results) == 1
    assert len({r.campaign.id for r in results}) == 1
    assert await counts(runtime.sessions) == (1, 2)


async def test_the_same_key_of_another_user_is_their_own_campaign(runtime):
    alice, bob = await add_user(runtime, "alice"), await add_user(runtime, "bob")
    a = await confirm_plan(runtime.sessions, alice, a_plan(), "k")
    b = await confirm_plan(runtime.sessions, bob, a_plan(), "k")
    assert a.created and b.created and a.campaign.id != b.campaign.id


async def test_an_invalid_plan_never_reaches_the_database(runtime):
    alice = await add_user(runtime, "alice")
    bad = a_plan(targets=[{"name": "A", "phone_number": "+1415555010", "objective": "o"}])
    with pytest.raises(PlanRejected) as caught:
        await confirm_plan(runtime.sessions, alice, bad, "k")
    assert "targets[0].phone_number" in str(caught.value)
    assert await counts(runtime.sessions) == (0, 0)


async def _campaign(runtime, user_id):
    confirmation = await confirm_plan(runtime.sessions, user_id, a_plan(), "k")
    return confirmation.campaign.id, confirmation.task_ids


async def test_pausing_a_task_holds_it_and_resuming_restores_its_retry_time(runtime):
    alice = await add_user(runtime, "alice")
    _, (task_id, _) = await _campaign(runtime, alice)
    retry_at = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
    async with runtime.sessions() as session:
        await put_task(session, alice, task_id, TaskStatus.RETRY_SCHEDULED, next_action_time=retry_at)
        await session.commit()
    await control_task(runtime, alice, task_id, ControlAction.PAUSE)
    async with runtime.sessions() as session:
        task = await repo.get_task(session, alice, task_id)
        assert (task.status, task.next_action_time, task.status_reason) == (
            TaskStatus.ON_HOLD, retry_at, "paused by user")   # on hold is not due: its time stays
    with pytest.raises(ControlError, match="only pending, scheduled or held tasks"):
        await control_task(runtime, alice, task_id, ControlAction.PAUSE)
    await control_task(runtime, alice, task_id, ControlAction.RESUME)
    async with runtime.sessions() as session:
        task = await repo.get_task(session, alice, task_id)
        events = [e.type for e in await repo.list_task_events(session, alice, task_id)]
    assert (task.status, task.next_action_time) == (TaskStatus.RETRY_SCHEDULED, retry_at)
    assert "paused" not in task.context and events == ["task.paused", "task.resumed"]


async def test_campaign_pause_holds_waiting_tasks_and_resume_leaves_individually_paused_ones(runtime):
    alice = await add_user(runtime, "alice")
    campaign_id, (first, second) = await _campaign(runtime, alice)
    await control_task(runtime, alice, first, ControlAction.PAUSE)
    result = await control_campaign(runtime, alice, campaign_id, ControlAction.PAUSE)
    assert result.changed_task_ids == [second]
    with pytest.raises(ControlError):
        await control_campaign(runtime, alice, campaign_id, ControlAction.PAUSE)
    await control_campaign(runtime, alice, campaign_id, ControlAction.RESUME)
    async with runtime.sessions() as session:
        campaign = await repo.get_campaign(session, alice, campaign_id)
        statuses = [t.status for t in await repo.list_tasks(session, alice, campaign_id)]
    assert campaign.status is CampaignStatus.ACTIVE
    assert statuses == [TaskStatus.ON_HOLD, TaskStatus.PENDING]


async def test_another_users_task_or_campaign_is_not_found(runtime):
    alice, bob = await add_user(runtime, "alice"), await add_user(runtime, "bob")
    campaign_id, (task_id, _) = await _campaign(runtime, alice)
    for action in ControlAction:
        with pytest.raises(NotFound):
            await control_task(runtime, bob, task_id, action)
        with pytest.raises(NotFound):
            await control_campaign(runtime, bob, campaign_id, action)
    async with runtime.sessions() as session:
        assert (await repo.get_task(session, alice, task_id)).status is TaskStatus.PENDING


async def test_cancelling_a_live_call_sends_hangup_and_reports_a_refusal(settings_env, engine, sessions):
    fake = FakeAmi(username="opendeep", secret="secret")
    port = await fake.start()
    runtime = make_runtime(settings_env, engine, sessions, AMI_PORT=str(port), AMI_SECRET="secret")
    ami = AmiController(runtime.settings, runtime.sessions, runtime.events)
    await ami.start()
    try:
        await ami.wait_connected(5)
        runtime.ami = ami
        alice = await add_user(runtime, "alice")
        campaign_id, (task_id, other_id) = await _campaign(runtime, alice)
        channel = "PJSIP/opendeep-trunk-00000007"
        async with runtime.sessions() as session:
            await put_task(session, alice, task_id, TaskStatus.IN_PROGRESS)
            session.add(Call(user_id=alice, task_id=task_id, attempt_number=1, status=CallStatus.ANSWERED,
                             dialed_number="+14155550101", channel=channel))
            await session.commit()
        with pytest.raises(ControlError, match="call in progress"):
            await control_task(runtime, alice, task_id, ControlAction.PAUSE)
        result = await control_campaign(runtime, alice, campaign_id, ControlAction.CANCEL)
        hangup = dict(await fake.wait_for_action("Hangup", timeout=5))
    finally:
        await ami.stop()
        await fake.stop()
    # The Hangup reached Asterisk for the callee's channel; this fake Asterisk has no such live channel (the
    # call row was written by the test), so it refuses, and the user is told while the task stays cancelled.
    assert hangup["Channel"] == channel and hangup["Cause"] == "16"
    assert "No such channel" in result.hangup_errors[0] and "1 hangup(s) failed" in result.message
    assert sorted(result.changed_task_ids) == sorted([task_id, other_id])
    async with runtime.sessions() as session:
        assert {t.status for t in await repo.list_tasks(session, alice, campaign_id)} == {TaskStatus.CANCELLED}
        assert (await repo.get_campaign(session, alice, campaign_id)).status is CampaignStatus.CANCELLED


async def test_cancel_without_ami_in_process_says_the_call_ends_on_its_own(runtime):
    alice = await add_user(runtime, "alice")
    _, (task_id, _) = await _campaign(runtime, alice)
    async with runtime.sessions() as session:
        await put_task(session, alice, task_id, TaskStatus.QUEUED)
        session.add(Call(user_id=alice, task_id=task_id, attempt_number=1, status=CallStatus.RINGING,
                         dialed_number="+14155550101", channel="Local/x@opendeep-outbound-0001;1"))
        await session.commit()
    result = await control_task(runtime, alice, task_id, ControlAction.CANCEL)
    assert "ends on its own" in result.message
    with pytest.raises(ControlError, match="already cancelled"):
        await control_task(runtime, alice, task_id, ControlAction.CANCEL)
