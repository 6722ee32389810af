"""Until-one-succeeds campaigns on SQLite and PostgreSQL: held targets are never claimed, the next one is released
(in the plan's order, with what partial outcomes learned) when the one before did not succeed, and one success
cancels every other target with the reason. The scheduler's claim query and the goal keeper are the real ones;
tasks are moved the way the analyzer moves them (status + result)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from ami_controller.scheduler import claim_due_tasks
from db import repo
from db.models import Call, CallEvent, CallStatus, Campaign, CampaignGoal, CampaignStatus, Task, TaskEvent, TaskStatus
from db.types import utcnow
from opendeep.campaign_goal import CARRIED_KEY, describe_goal, keep_goals, parse_goal
from opendeep.events import EventHub
from opendeep.lifecycle import LifecycleManager
from webui.orchestrator import confirm_plan

NUMBERS = ["+14155550101", "+14155550102", "+14155550103"]


def a_plan(goal_type="until_one_succeeds", parallel=None, numbers=NUMBERS):
    plan = {"name": "One cleaning", "goal": "Book one cleaning", "goal_type": goal_type,
            "calling_window": {"start": "00:00", "end": "23:59"}, "max_attempts": 2,
            "targets": [{"name": f"Dentist {chr(65 + i)}", "phone_number": n, "objective": "Book a cleaning"}
                        for i, n in enumerate(numbers)]}
    if parallel is not None:
        plan["parallel_calls"] = parallel
    return plan


async def _campaign(sessions, username="alice", **plan_args) -> tuple[int, int, list[int]]:
    async with sessions() as session:
        user = await repo.create_user(session, username, "x")
        await session.commit()
    confirmation = await confirm_plan(sessions, user.id, a_plan(**plan_args), f"key-{username}")
    return user.id, confirmation.campaign.id, confirmation.task_ids


async def _claim(sessions, now=None) -> list[int]:
    async with sessions() as session:
        return [t.id for t in await claim_due_tasks(session, claimer="test", limit=10, now=now)]


async def _finish(sessions, task_id: int, status: TaskStatus, outcome: str, summary: str = "", data=None) -> None:
    """What the analyzer writes when it applies a verdict."""
    async with sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == task_id).values(
            status=status, result={"outcome": outcome, "summary": summary, "data": data or {}},
            status_reason=f"analyzer: {outcome}"))


async def _tasks(sessions, campaign_id) -> dict[int, Task]:
    async with sessions() as session:
        rows = await session.scalars(select(Task).where(Task.campaign_id == campaign_id).order_by(Task.id))
        return {task.id: task for task in rows.all()}


async def test_the_targets_are_called_one_at_a_time_in_the_plans_order(sessions):
    _, campaign_id, (a, b, c) = await _campaign(sessions)
    tasks = await _tasks(sessions, campaign_id)
    assert [tasks[t].held for t in (a, b, c)] == [False, True, True]
    assert await _claim(sessions) == [a]            # the held ones are not due, whatever their time
    assert await _claim(sessions) == []
    assert (await keep_goals(sessions)).released == []   # A is in play: B waits
    await _finish(sessions, a, TaskStatus.FAILED, "failed", "No slots at all.")
    done = await keep_goals(sessions)
    assert done.released == [b] and done.cancelled == []
    assert await _claim(sessions) == [b]
    async with sessions() as session:
        events = (await session.scalars(select(TaskEvent).where(TaskEvent.task_id == b,
                                                                TaskEvent.type == "goal.released"))).all()
    assert [e.reason for e in events] == ["its turn: Dentist A did not succeed"]


async def test_a_partial_outcome_is_carried_to_the_next_target(sessions, settings):
    _, campaign_id, (a, b, _) = await _campaign(sessions)
    await _claim(sessions)
    await _finish(sessions, a, TaskStatus.COMPLETED, "partial", "They only do cleanings with an exam.",
                  {"price": "$180"})
    lifecycle = LifecycleManager(settings, sessions)   # the lifecycle manager's pass runs the goal step
    counts = await lifecycle.run_once()
    assert counts["goal_moves"] == 1
    released = (await _tasks(sessions, campaign_id))[b]
    assert not released.held
    assert released.context[CARRIED_KEY] == ("Dentist A: They only do cleanings with an exam. Facts: "
                                             "price=$180.")


async def test_one_success_cancels_every_other_target_with_the_reason(sessions):
    hub = EventHub()
    user_id, campaign_id, (a, b, c) = await _campaign(sessions, parallel=2)
    assert sorted(await _claim(sessions)) == [a, b]
    await _finish(sessions, b, TaskStatus.COMPLETED, "success", "Booked Tuesday 10:00.")
    async with hub.subscribe(user_id) as inbox:
        done = await keep_goals(sessions, events=hub)
        kinds = [inbox.get_nowait().kind for _ in range(inbox.qsize())]
    assert done.goals_met == [campaign_id] and sorted(done.cancelled) == [a, c]
    assert "campaign.updated" in kinds
    tasks = await _tasks(sessions, campaign_id)
    assert tasks[a].status is TaskStatus.CANCELLED and tasks[c].status is TaskStatus.CANCELLED
    assert tasks[a].status_reason == tasks[c].status_reason == "the goal was met with Dentist B"
    assert tasks[c].attempt_count == 0 and not tasks[c].held
    async with sessions() as session:
        campaign = await session.get(Campaign, campaign_id)
    assert campaign.goal_met_task_id == b
    # A queued task had no call yet: nothing to wrap up or hang up; nothing left to claim, ever.
    assert done.wrap_up == [] and done.hang_up == []
    assert await _claim(sessions, now=utcnow() + timedelta(days=1)) == []
    assert (await keep_goals(sessions)).cancelled == []   # a second pass changes nothing


async def test_two_goal_keepers_at_once_cancel_each_task_once(sessions):
    _, campaign_id, (a, b, c) = await _campaign(sessions)
    await _claim(sessions)
    await _finish(sessions, a, TaskStatus.COMPLETED, "success", "Booked.")
    first, second = await asyncio.gather(keep_goals(sessions), keep_goals(sessions))
    assert sorted(first.cancelled + second.cancelled) == [b, c]
    async with sessions() as session:
        events = (await session.scalars(select(TaskEvent).where(TaskEvent.type == "goal.cancelled"))).all()
    assert sorted(e.task_id for e in events) == [b, c]


async def test_a_paused_campaign_releases_no_one_and_each_target_campaigns_are_left_alone(sessions):
    user_id, campaign_id, (a, b, _) = await _campaign(sessions)
    _, each_id, each_tasks = await _campaign(sessions, "bob", goal_type="each_target")
    assert not any(t.held for t in (await _tasks(sessions, each_id)).values())
    await _claim(sessions)
    await _finish(sessions, a, TaskStatus.FAILED, "failed")
    async with sessions() as session, session.begin():
        await repo.set_campaign_status(session, user_id, campaign_id, CampaignStatus.PAUSED)
    assert (await keep_goals(sessions)).released == []
    async with sessions() as session, session.begin():
        await repo.set_campaign_status(session, user_id, campaign_id, CampaignStatus.ACTIVE)
    assert (await keep_goals(sessions)).released == [b]
    # bob's each-target campaign: every task was claimable from the start, and the keeper never touched it
    assert {t.status for t in (await _tasks(sessions, each_id)).values()} == {TaskStatus.QUEUED}


async def test_no_success_anywhere_leaves_the_goal_unmet(sessions):
    _, campaign_id, task_ids = await _campaign(sessions, numbers=NUMBERS[:2])
    for task_id in task_ids:
        await keep_goals(sessions)
        assert await _claim(sessions) == [task_id]
        await _finish(sessions, task_id, TaskStatus.FAILED, "failed")
    assert (await keep_goals(sessions)).released == []
    async with sessions() as session:
        assert (await session.get(Campaign, campaign_id)).goal_met_task_id is None


async def test_live_calls_of_cancelled_targets_are_wrapped_up_hung_up_or_marked(sessions):
    user_id, campaign_id, (a, b, c) = await _campaign(sessions, parallel=3)
    assert sorted(await _claim(sessions)) == [a, b, c]
    now = utcnow()
    async with sessions() as session, session.begin():
        await session.execute(update(Task).values(status=TaskStatus.IN_PROGRESS))
        talking = Call(user_id=user_id, task_id=b, attempt_number=1, status=CallStatus.ANSWERED, answered_at=now,
                       bridged_to_ai=True, dialed_number=NUMBERS[1], channel="Local/x@opendeep-outbound-1;1")
        ringing = Call(user_id=user_id, task_id=c, attempt_number=1, status=CallStatus.RINGING,
                       dialed_number=NUMBERS[2], channel="Local/y@opendeep-outbound-2;1")
        session.add_all([talking, ringing])
    await _finish(sessions, a, TaskStatus.COMPLETED, "success", "Booked.")
    hung_up: list[str] = []

    async def hang_up(channel: str) -> None:
        hung_up.append(channel)
    done = await keep_goals(sessions, hang_up=hang_up)
    assert done.wrap_up == [(user_id, talking.id)]   # the AI is told to wrap up (audiosocket/wrap_up.py)
    assert hung_up == ["Local/y@opendeep-outbound-2;1"]   # the ringing call is hung up ...
    async with sessions() as session:
        marked = (await session.scalars(select(CallEvent.call_id).where(CallEvent.type == "goal.wrap_up"))).all()
    # ... and marked too: were it answered in that instant, its AI would wrap up as soon as it connects.
    assert sorted(marked) == sorted([talking.id, ringing.id])


def test_the_goal_in_words_and_bad_values():
    assert describe_goal(CampaignGoal.EACH_TARGET).startswith("Each target")
    assert "one call at a time" in describe_goal("until_one_succeeds")
    assert "2 calls at a time" in describe_goal("until_one_succeeds", 2)
    assert parse_goal(None) is CampaignGoal.EACH_TARGET
    assert parse_goal("best_of") is CampaignGoal.BEST_OF
    assert describe_goal("best_of").startswith("Best of several")
    with pytest.raises(ValueError, match="use one of each_target, until_one_succeeds, best_of"):
        parse_goal("cheapest")



async def test_the_0008_goal_migration_goes_down_and_up_again(engine, database_url):
    from alembic import command
    from sqlalchemy import inspect

    from db.migrate import alembic_config

    config = alembic_config(database_url)

    def migrate(sync_connection, to: str, step) -> list[str]:
        config.attributes["connection"] = sync_connection
        step(config, to)
        inspector = inspect(sync_connection)
        return ([c["name"] for c in inspector.get_columns("campaigns")]
                + [c["name"] for c in inspector.get_columns("tasks")])

    async with engine.begin() as connection:
        down = await connection.run_sync(migrate, "0003_security", command.downgrade)
    try:
        assert not {"goal_type", "parallel_calls", "goal_met_task_id", "caller_id", "held"} & set(down)
    finally:
        async with engine.begin() as connection:
            up = await connection.run_sync(migrate, "head", command.upgrade)
    assert {"goal_type", "parallel_calls", "goal_met_task_id", "caller_id", "held"} <= set(up)


def test_the_next_targets_call_ai_reads_what_the_others_learned():
    from audiosocket.instructions import build_instructions
    from db.models import User

    task = Task(target_name="Dentist B", phone_number=NUMBERS[1], objective="Book a cleaning", language="en",
                context={"address": "12 Main St", CARRIED_KEY: "Dentist A: only with an exam. Facts: price=$180."})
    text = build_instructions(task=task, user=User(username="alice", profile={}))
    assert "Context for this call:\n{\n \"address\": \"12 Main St\"\n}" in text and CARRIED_KEY not in text
    assert ("This call follows calls to other businesses for the same goal, which did not fully succeed. What "
            "they learned:\nDentist A: only with an exam. Facts: price=$180.") in text


async def test_a_large_campaign_is_cancelled_in_short_transactions(sessions, engine, monkeypatch):
    from sqlalchemy import event

    monkeypatch.setattr(repo, "BULK_CHUNK_ROWS", 3)
    user_id, campaign_id, (a, *_) = await _campaign(sessions)
    async with sessions() as session, session.begin():
        more = await repo.add_tasks(session, user_id, campaign_id, [
            {"target_name": f"Shop {i}", "phone_number": f"+1415555{i:04d}", "held": True} for i in range(10)])
    await _claim(sessions)
    await _finish(sessions, a, TaskStatus.COMPLETED, "success", "Booked.")
    commits = []

    def count(connection) -> None:
        commits.append(connection)
    event.listen(engine.sync_engine, "commit", count)
    try:
        done = await keep_goals(sessions)
    finally:
        event.remove(engine.sync_engine, "commit", count)
    assert len(done.cancelled) == 12 and set(more) <= set(done.cancelled)
    assert len(commits) >= 4   # 12 targets, 3 per transaction
    tasks = await _tasks(sessions, campaign_id)
    assert {t.status for t in tasks.values() if t.id != a} == {TaskStatus.CANCELLED}
    assert not any(t.held for t in tasks.values())
