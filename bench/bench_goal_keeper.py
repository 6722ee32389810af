"""The campaign-goal keeper (opendeep/campaign_goal.py keep_goals), which runs at every after-call poll, on SQLite
and PostgreSQL, with one until-one-succeeds campaign of --targets targets (one in play, the rest held) beside
another tenant's each-target campaign of the same size:

  - an idle pass (nothing to do: the target in play is still being called), the cost of every poll;
  - a release pass (the target in play failed: the next one is released);
  - the goal-met pass (a target succeeded: every other one is cancelled, in chunks of repo.BULK_CHUNK_ROWS).

Printed per step: wall time, SQL statements, and the longest write transaction (first INSERT / UPDATE / DELETE
to commit: on SQLite, how long the file's one write lock was held).

    .venv/bin/python bench/bench_goal_keeper.py [--targets 10000] [--pg-url postgresql+asyncpg://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_bulk_writes import WriteLocks, drop_pg, scratch_pg  # noqa: E402
from db import repo  # noqa: E402
from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import CampaignGoal, Task, TaskStatus  # noqa: E402
from opendeep.campaign_goal import keep_goals  # noqa: E402


async def _seed(sessions, targets: int) -> tuple[int, list[int]]:
    async with sessions() as session:
        alice = await repo.create_user(session, "alice", "x")
        bob = await repo.create_user(session, "bob", "x")
        goal = await repo.create_campaign(session, alice.id, name="one of many")
        goal.goal_type = CampaignGoal.UNTIL_ONE_SUCCEEDS
        other = await repo.create_campaign(session, bob.id, name="each of many")
        await session.commit()
        ids: list[int] = []
        for start in range(0, targets, repo.BULK_CHUNK_ROWS):
            rows = [{"target_name": f"Shop {i}", "phone_number": f"+1415{i:07d}", "held": i > 0}
                    for i in range(start, min(targets, start + repo.BULK_CHUNK_ROWS))]
            ids += await repo.add_tasks(session, alice.id, goal.id, rows)
            await repo.add_tasks(session, bob.id, other.id, [{**row, "held": False} for row in rows])
            await session.commit()
    return goal.id, ids


async def measure(url: str, targets: int) -> list[tuple[str, float, int, float, str]]:
    await upgrade(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    locks = WriteLocks(engine)
    results = []
    try:
        _, ids = await _seed(sessions, targets)

        async def step(name: str) -> None:
            locks.reset()
            started = time.perf_counter()
            done = await keep_goals(sessions)
            results.append((name, time.perf_counter() - started, locks.statements, locks.longest,
                            f"{len(done.released)} released, {len(done.cancelled)} cancelled"))

        await step("idle pass (one target in play)")
        async with sessions() as session, session.begin():
            await session.execute(update(Task).where(Task.id == ids[0]).values(
                status=TaskStatus.FAILED, result={"outcome": "failed", "summary": "no slots"}))
        await step("release pass (the next target)")
        async with sessions() as session, session.begin():
            await session.execute(update(Task).where(Task.id == ids[1]).values(
                status=TaskStatus.COMPLETED, result={"outcome": "success", "summary": "booked"}))
        await step(f"goal-met pass (cancel {targets - 2})")
        await step("idle pass after (nothing open)")
    finally:
        await engine.dispose()
    return results


def report(backend: str, results) -> None:
    print(f"\n{backend}")
    print(f"  {'step':<34} {'wall ms':>8} {'stmts':>6} {'longest write txn ms':>21}  result")
    for name, seconds, statements, longest, what in results:
        print(f"  {name:<34} {1000 * seconds:>8.1f} {statements:>6} {1000 * longest:>21.1f}  {what}")


async def main(args: argparse.Namespace) -> None:
    print(f"campaign-goal keeper, {args.targets} targets per campaign; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs (other work on the machine slows every figure)")
    with tempfile.TemporaryDirectory() as tmp:
        report("SQLite", await measure(f"sqlite+aiosqlite:///{tmp}/bench.db", args.targets))
    database = await scratch_pg(args.pg_url)
    if database is None:
        print(f"\nPostgreSQL: no server at {args.pg_url}; not measured")
    else:
        try:
            report("PostgreSQL", await measure(args.pg_url.rsplit("/", 1)[0] + f"/{database}", args.targets))
        finally:
            await drop_pg(args.pg_url, database)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end; goal: an idle pass of a few ms (it runs every poll), "
          f"no write transaction much over 100 ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--pg-url", default=os.environ.get("OPENDEEP_TEST_PG_URL",
                                                           "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    asyncio.run(main(parser.parse_args()))
