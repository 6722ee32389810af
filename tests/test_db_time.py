"""Times are UTC-aware on the way in and out and compare as times (not text) on SQLite and PostgreSQL."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from db import repo
from db.models import Task
from db.types import NaiveDatetimeError


async def _campaign(session):
    user = await repo.create_user(session, "alice", "x")
    campaign = await repo.create_campaign(session, user.id, name="dentists")
    return user, campaign


async def test_times_come_back_aware_in_utc(sessions):
    paris = timezone(timedelta(hours=2))
    async with sessions() as session:
        user, campaign = await _campaign(session)
        task = await repo.add_task(session, user.id, campaign.id, target_name="A", phone_number="+33142685300",
                                   next_action_time=datetime(2026, 6, 1, 11, 0, tzinfo=paris))
        await session.commit()
    async with sessions() as session:
        loaded = await repo.get_task(session, user.id, task.id)
    assert loaded.next_action_time == datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
    assert loaded.next_action_time.utcoffset() == timedelta(0)


async def test_a_naive_datetime_is_refused(sessions):
    async with sessions() as session:
        user, campaign = await _campaign(session)
        session.add(Task(user_id=user.id, campaign_id=campaign.id, target_name="B", phone_number="+14155550123",
                         next_action_time=datetime(2026, 1, 1, 9, 0)))
        with pytest.raises(Exception) as error:
            await session.flush()
    assert isinstance(error.value, NaiveDatetimeError) or isinstance(error.value.__cause__, NaiveDatetimeError)


async def test_due_comparison_is_by_instant_across_offsets(sessions):
    """The bug the seeds had: text timestamps with different offsets/formats sorted wrongly, tasks never due."""
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    tokyo, new_york = timezone(timedelta(hours=9)), timezone(timedelta(hours=-5))
    async with sessions() as session:
        user, campaign = await _campaign(session)
        due_times = {
            "due-tokyo": datetime(2026, 3, 1, 20, 59, tzinfo=tokyo),       # 11:59 UTC: due
            "later-ny": datetime(2026, 3, 1, 7, 1, tzinfo=new_york),       # 12:01 UTC: not due
            "due-micro": now - timedelta(microseconds=1),                  # due by 1 µs
            "exact": now,                                                  # due (<=)
            "future-utc": now + timedelta(microseconds=1),
        }
        for name, when in due_times.items():
            await repo.add_task(session, user.id, campaign.id, target_name=name, phone_number="+14155550123",
                                next_action_time=when)
        await session.commit()
    async with sessions() as session:
        due = (await session.scalars(
            select(Task.target_name).where(Task.next_action_time <= now).order_by(Task.next_action_time)
        )).all()
    assert due == ["due-tokyo", "due-micro", "exact"]


async def test_storage_is_not_text(engine):
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            column = (await connection.execute(text("PRAGMA table_info(tasks)"))).all()
            kinds = {row[1]: row[2] for row in column}
            assert kinds["next_action_time"].upper() == "BIGINT"
        else:
            kind = await connection.scalar(text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'tasks' AND column_name = 'next_action_time'"))
            assert kind == "timestamp with time zone"
