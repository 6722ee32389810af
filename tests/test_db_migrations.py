"""The Alembic migrations build exactly the schema the models describe, on both databases."""

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import async_sessionmaker

from db import repo
from db.engine import create_engine
from db.migrate import upgrade
from db.models import Base, Campaign, Task, TaskStatus
from db.typed import table_of
from db.types import utcnow
from tests.conftest import _pg_admin, _pg_url_for


def _exists_on(obj, dialect: str) -> bool:
    """False for a model object made only on other databases (`.ddl_if(dialect=...)`, e.g. a trigram index)."""
    ddl_if = getattr(obj, "_ddl_if", None)
    return ddl_if is None or ddl_if.dialect is None or ddl_if.dialect == dialect


async def test_migrated_schema_matches_the_models(engine):
    async with engine.connect() as connection:
        def diff(sync_connection):
            dialect = sync_connection.dialect.name
            context = MigrationContext.configure(sync_connection, opts={
                "compare_type": True, "include_object": lambda obj, *_: _exists_on(obj, dialect)})
            return compare_metadata(context, Base.metadata)
        differences = await connection.run_sync(diff)
        version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    assert differences == []
    assert version is not None


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database_url(request, tmp_path):
    """An empty database with no migration run yet."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"opendeep_mig_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    yield _pg_url_for(name)
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_0011_gives_tasks_on_hold_until_a_far_future_date_the_time_they_were_held(fresh_database_url):
    """Before 0011, on hold was kept from dialing by 2999 / 9999 dates; now on hold is not due, and the dates go."""
    await upgrade(fresh_database_url, "0010_calllog")
    engine = create_engine(fresh_database_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    retry_at = datetime(2027, 1, 5, 9, 0, tzinfo=UTC)
    async with sessions() as session:
        user = await repo.create_user(session, "alice", "x")
        # Core inserts of the columns 0010 has (the models have more, added by later migrations).
        campaign_id = (await session.execute(insert(table_of(Campaign)).values(
            user_id=user.id, name="c", goal="", master_prompt="", status="active", plan={},
            created_at=utcnow()).returning(table_of(Campaign).c.id))).scalar_one()

        async def task(status: TaskStatus, when: datetime) -> int:
            return (await session.execute(insert(table_of(Task)).values(
                user_id=user.id, campaign_id=campaign_id, target_name="t", phone_number="+14155550100",
                status=status, next_action_time=when, attempt_count=0, max_attempts=3, priority=0, objective="",
                context={}, language="en", inter_call_context="", result={}, created_at=utcnow(),
                updated_at=utcnow()).returning(table_of(Task).c.id))).scalar_one()
        held = await task(TaskStatus.ON_HOLD, datetime(9999, 12, 31, tzinfo=UTC))
        paused = await task(TaskStatus.ON_HOLD, datetime(2999, 1, 1, tzinfo=UTC))
        waiting = await task(TaskStatus.RETRY_SCHEDULED, retry_at)
        await session.commit()
    await upgrade(fresh_database_url, engine=engine)
    async with sessions() as session:
        tasks = {task.id: task for task in await repo.list_tasks(session, user.id)}
    await engine.dispose()
    for task_id in (held, paused):
        assert tasks[task_id].status is TaskStatus.ON_HOLD
        assert tasks[task_id].next_action_time == tasks[task_id].updated_at
    assert tasks[waiting].next_action_time == retry_at
