"""Scheduler claims per second: 10,000 due tasks on PostgreSQL (goal: all claimed in under 2 s).

Creates a fresh database (like tests/conftest.py), migrates it, inserts the tasks, then claims them with
`claim_due_tasks` — once with one scheduler, once with four concurrent ones on their own engines — and drops
the database. Server: OPENDEEP_BENCH_PG_URL or OPENDEEP_TEST_PG_URL
(default postgresql+asyncpg://postgres@127.0.0.1:5432/test).

    .venv/bin/python bench/bench_scheduler.py [--tasks 10000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert, select, text, update  # noqa: E402

from ami_controller.scheduler import claim_due_tasks  # noqa: E402
from db import repo  # noqa: E402
from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Task, TaskStatus  # noqa: E402
from db.types import utcnow  # noqa: E402

SERVER_URL = os.environ.get("OPENDEEP_BENCH_PG_URL") or os.environ.get(
    "OPENDEEP_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


async def admin(statement: str) -> None:
    engine = create_engine(SERVER_URL, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def seed(url: str, count: int) -> None:
    engine = create_engine(url)
    sessions = session_factory(engine)
    async with sessions() as session:
        user = await repo.create_user(session, "bench", "x")
        campaign = await repo.create_campaign(session, user.id, name="bench")
        now = utcnow()
        rows = [{"user_id": user.id, "campaign_id": campaign.id, "target_name": f"t{i}",
                 "phone_number": "+14155550123", "next_action_time": now, "status": TaskStatus.PENDING,
                 "attempt_count": 0, "max_attempts": 3, "priority": i % 5, "objective": "", "context": {},
                 "language": "en", "inter_call_context": "", "result": {}, "created_at": now, "updated_at": now}
                for i in range(count)]
        for start in range(0, count, 2000):
            await session.execute(insert(Task), rows[start:start + 2000])
        await session.commit()
    async with engine.connect() as connection:
        await connection.execute(text("ANALYZE tasks"))
        await connection.commit()
    await engine.dispose()


async def reset(url: str) -> None:
    engine = create_engine(url)
    async with session_factory(engine)() as session:
        await session.execute(update(Task).values(status=TaskStatus.PENDING, attempt_count=0, claimed_by=None,
                                                  claimed_at=None))
        await session.commit()
    await engine.dispose()


async def claim_all(url: str, name: str, batch: int) -> list[int]:
    engine = create_engine(url)
    sessions = session_factory(engine)
    claimed: list[int] = []
    try:
        async with engine.connect() as connection:   # open the pool's connection before the clock starts
            await connection.execute(text("SELECT 1"))
        while True:
            async with sessions() as session:
                tasks = await claim_due_tasks(session, claimer=name, limit=batch)
            if not tasks:
                return claimed
            claimed.extend(task.id for task in tasks)
    finally:
        await engine.dispose()


async def run(count: int, batch: int) -> int:
    name = f"opendeep_bench_{uuid.uuid4().hex[:10]}"
    base, _, _ = SERVER_URL.rpartition("/")
    url = f"{base}/{name}"
    await admin(f'CREATE DATABASE "{name}"')
    try:
        await upgrade(url)
        await seed(url, count)
        print(f"scheduler claim benchmark: {count} due tasks on PostgreSQL, batches of {batch}")
        results = {}
        for schedulers in (1, 4):
            await reset(url)
            started = time.perf_counter()
            claimed = await asyncio.gather(*(claim_all(url, f"s{n}", batch) for n in range(schedulers)))
            elapsed = time.perf_counter() - started
            ids = [task_id for part in claimed for task_id in part]
            unique = len(set(ids))
            results[schedulers] = elapsed
            print(f"  {schedulers} scheduler(s): {len(ids)} claims ({unique} distinct) in {elapsed:.3f} s = "
                  f"{len(ids) / elapsed:,.0f} claims/s; per scheduler {[len(p) for p in claimed]}")
            if unique != count or len(ids) != count:
                print("  ERROR: some task was claimed twice or not at all")
                return 1
        engine = create_engine(url)
        async with engine.connect() as connection:
            queued = await connection.scalar(
                select(text("count(*)")).select_from(Task).where(Task.status == TaskStatus.QUEUED))
        await engine.dispose()
        goal = all(elapsed < 2.0 for elapsed in results.values())
        print(f"  tasks queued afterwards: {queued}; goal (all claimed in under 2 s): {'met' if goal else 'MISSED'}")
        return 0 if goal else 1
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.tasks, args.batch)))


if __name__ == "__main__":
    main()
