"""The scheduler: atomic claims (also under 4 concurrent claimers on PostgreSQL), DND, calling windows."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select

from ami_controller.scheduler import claim_due_tasks, next_window_opening, screen_claimed_tasks
from db import repo
from db.engine import create_engine, session_factory
from db.models import CampaignStatus, Task, TaskEvent, TaskStatus
from db.types import utcnow
from opendeep.settings import CallingWindow
from tests.doubles.ami_helpers import local_noon_after, make_tenant

NUMBER = "+14155550123"     # San Francisco: America/Los_Angeles


async def test_a_due_task_is_claimed_once_and_counts_an_attempt(sessions):
    _, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER])
    async with sessions() as session:
        first = await claim_due_tasks(session, claimer="a", limit=10)
    async with sessions() as session:
        second = await claim_due_tasks(session, claimer="b", limit=10)
        task = await session.get(Task, task_id)
    assert [t.id for t in first] == [task_id] and second == []
    assert first[0].previous_status is TaskStatus.PENDING
    assert (task.status, task.attempt_count, task.claimed_by) == (TaskStatus.QUEUED, 1, "a")
    assert task.claimed_at is not None


async def test_not_due_exhausted_and_paused_tasks_are_not_claimed(sessions):
    later = utcnow() + timedelta(hours=1)
    user_id, campaign_id, (future_id,) = await make_tenant(sessions, numbers=[NUMBER], next_action_time=later)
    _, _, (spent_id,) = await make_tenant(sessions, "bob", numbers=[NUMBER], max_attempts=0)
    carol, paused_campaign, (paused_id,) = await make_tenant(sessions, "carol", numbers=[NUMBER])
    async with sessions() as session:
        await repo.set_campaign_status(session, carol, paused_campaign, CampaignStatus.PAUSED)
        await session.commit()
        claimed = await claim_due_tasks(session, claimer="a", limit=10)
    assert claimed == []
    async with sessions() as session:
        claimed = await claim_due_tasks(session, claimer="a", limit=10, now=later + timedelta(seconds=1))
    assert [t.id for t in claimed] == [future_id]


async def test_users_at_their_limit_are_skipped(sessions):
    alice, _, alice_tasks = await make_tenant(sessions, numbers=[NUMBER])
    _, _, bob_tasks = await make_tenant(sessions, "bob", numbers=[NUMBER])
    async with sessions() as session:
        claimed = await claim_due_tasks(session, claimer="a", limit=10, exclude_user_ids=[alice])
    assert [t.id for t in claimed] == bob_tasks


async def test_four_schedulers_on_postgresql_claim_every_task_exactly_once(pg_engine, pg_database_url):
    sessions = session_factory(pg_engine)
    user_id, campaign_id, _ = await make_tenant(sessions, numbers=[])
    now = utcnow()
    async with sessions() as session:
        await session.execute(insert(Task), [
            {"user_id": user_id, "campaign_id": campaign_id, "target_name": f"t{i}", "phone_number": NUMBER,
             "next_action_time": now, "status": TaskStatus.PENDING, "attempt_count": 0, "max_attempts": 3,
             "priority": i % 3, "objective": "", "context": {}, "language": "en", "inter_call_context": "",
             "result": {}, "created_at": now, "updated_at": now}
            for i in range(2000)])
        await session.commit()

    async def claimer(name: str) -> list[int]:
        engine = create_engine(pg_database_url)      # its own engine: a separate scheduler process
        own = session_factory(engine)
        got: list[int] = []
        try:
            while True:
                async with own() as session:
                    batch = await claim_due_tasks(session, claimer=name, limit=37)
                if not batch:
                    return got
                got.extend(task.id for task in batch)
                await asyncio.sleep(0)
        finally:
            await engine.dispose()

    results = await asyncio.gather(*(claimer(f"scheduler-{n}") for n in range(4)))
    every = [task_id for result in results for task_id in result]
    assert len(every) == 2000 and len(set(every)) == 2000
    async with sessions() as session:
        rows = (await session.execute(select(Task.id, Task.status, Task.attempt_count, Task.claimed_by))).all()
    assert {(status, attempts) for _, status, attempts, _ in rows} == {(TaskStatus.QUEUED, 1)}
    owner = {task_id: claimed_by for task_id, _, _, claimed_by in rows}
    for n, result in enumerate(results):
        assert {owner[task_id] for task_id in result} <= {f"scheduler-{n}"}


async def test_a_claim_skips_the_tasks_another_scheduler_is_claiming_instead_of_waiting(pg_engine,
                                                                                         pg_database_url):
    """Deterministic concurrency: another scheduler's claim transaction holds the first four due rows (FOR UPDATE,
    not committed); this claim takes the other six at once and returns; after the other one rolls back, the four
    are claimable again."""
    sessions = session_factory(pg_engine)
    _, _, task_ids = await make_tenant(sessions, numbers=[NUMBER] * 10)
    other = create_engine(pg_database_url)          # its own engine: a separate scheduler process
    try:
        async with session_factory(other)() as holder:
            held = (await holder.execute(select(Task.id).order_by(Task.id).limit(4).with_for_update())).scalars()
            held = list(held)
            async with sessions() as session:
                # The guard only stops a hang (a claim that waited for the lock); it measures nothing.
                claimed = await asyncio.wait_for(claim_due_tasks(session, claimer="b", limit=10), 60)
            assert sorted(t.id for t in claimed) == sorted(set(task_ids) - set(held))
            await holder.rollback()
        async with sessions() as session:
            claimed = await claim_due_tasks(session, claimer="c", limit=10)
        assert sorted(t.id for t in claimed) == sorted(held)
    finally:
        await other.dispose()


async def test_dnd_number_is_cancelled_with_a_reason(sessions, settings):
    user_id, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER])
    async with sessions() as session:
        await repo.add_dnd(session, user_id, NUMBER, "asked not to be called")
        await session.commit()
        claimed = await claim_due_tasks(session, claimer="a", limit=10)
    screening = await screen_claimed_tasks(sessions, settings, claimed, now=local_noon_after(NUMBER))
    assert screening.callable == [] and [t.id for t in screening.cancelled_dnd] == [task_id]
    async with sessions() as session:
        task = await session.get(Task, task_id)
        events = await repo.list_task_events(session, user_id, task_id)
    assert task.status is TaskStatus.CANCELLED_DND and task.attempt_count == 0
    assert [(e.type, e.reason) for e in events] == [("task.cancelled_dnd", "number is on your do-not-call list")]


async def test_global_dnd_forms_at_the_tenant_threshold(sessions, settings):
    settings = dataclasses.replace(settings, global_dnd_tenant_threshold=2)
    user_id, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER])
    other_id, _, _ = await make_tenant(sessions, "bob", numbers=[])
    async with sessions() as session:
        await repo.add_dnd(session, other_id, NUMBER)
        await session.commit()
        claimed = await claim_due_tasks(session, claimer="a", limit=10)
    one_list = await screen_claimed_tasks(sessions, settings, claimed, now=local_noon_after(NUMBER))
    assert [t.id for t in one_list.callable] == [task_id]      # one tenant's list does not block the others

    _, _, (second_id,) = await make_tenant(sessions, "carol", numbers=[NUMBER])
    third_id, _, _ = await make_tenant(sessions, "dave", numbers=[])
    async with sessions() as session:
        await repo.add_dnd(session, third_id, NUMBER)
        await session.commit()
        claimed = await claim_due_tasks(session, claimer="a", limit=10)
    screening = await screen_claimed_tasks(sessions, settings, claimed, now=local_noon_after(NUMBER))
    assert [t.id for t in screening.cancelled_dnd] == [second_id]
    async with sessions() as session:
        event = await session.scalar(select(TaskEvent).where(TaskEvent.task_id == second_id))
    assert "global do-not-call list (2 tenants list it, threshold 2)" in event.reason


async def test_outside_the_window_the_task_waits_for_the_next_opening(sessions, settings):
    user_id, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER])
    zone = ZoneInfo("America/Los_Angeles")
    noon = local_noon_after(NUMBER)
    night = datetime.combine(noon.astimezone(zone).date() + timedelta(days=1), time(23, 30), tzinfo=zone)
    async with sessions() as session:
        claimed = await claim_due_tasks(session, claimer="a", limit=10, now=night.astimezone(UTC))
    screening = await screen_claimed_tasks(sessions, settings, claimed, now=night.astimezone(UTC))
    assert screening.callable == [] and [t.id for t in screening.rescheduled] == [task_id]
    async with sessions() as session:
        task = await session.get(Task, task_id)
    opening = datetime.combine(night.date() + timedelta(days=1), time(9, 0), tzinfo=zone)
    assert task.next_action_time == opening.astimezone(UTC)
    assert (task.status, task.attempt_count, task.claimed_by) == (TaskStatus.PENDING, 0, None)
    assert "outside the calling window 09:00-20:00 (America/Los_Angeles)" in task.status_reason


async def test_campaign_window_overrides_the_default(sessions, settings):
    _, _, (task_id,) = await make_tenant(sessions, numbers=[NUMBER], window=("13:00", "14:00"))
    noon = local_noon_after(NUMBER)
    async with sessions() as session:
        claimed = await claim_due_tasks(session, claimer="a", limit=10, now=noon)
    screening = await screen_claimed_tasks(sessions, settings, claimed, now=noon)
    assert [t.id for t in screening.rescheduled] == [task_id]
    async with sessions() as session:
        task = await session.get(Task, task_id)
    assert task.next_action_time == noon + timedelta(hours=1)


def test_window_that_crosses_midnight():
    zone = ZoneInfo("Europe/Berlin")
    window = CallingWindow(time(22, 0), time(6, 0))
    at = lambda h, m=0: datetime(2026, 3, 10, h, m, tzinfo=zone).astimezone(UTC)  # noqa: E731
    assert next_window_opening(at(23), zone, window) is None
    assert next_window_opening(at(5, 59), zone, window) is None
    assert next_window_opening(at(6), zone, window) == at(22)
    assert next_window_opening(at(12), zone, window) == at(22)


def test_window_opening_follows_daylight_saving_time():
    zone = ZoneInfo("America/New_York")
    window = CallingWindow(time(9, 0), time(20, 0))
    # Saturday 7 March 2026 21:00 EST; clocks go forward on Sunday 8 March at 02:00.
    evening = datetime(2026, 3, 7, 21, 0, tzinfo=zone).astimezone(UTC)
    opening = next_window_opening(evening, zone, window)
    assert opening == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)       # 09:00 EDT (UTC-4), not 14:00 UTC
    # A window opening inside the spring-forward gap opens at the first real minute after it.
    gap = CallingWindow(time(2, 30), time(4, 0))
    assert next_window_opening(evening, zone, gap) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # 03:30 EDT
