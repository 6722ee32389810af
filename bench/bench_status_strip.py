"""The status strip every page shows (webui/status.py): what it costs a page to load it, with 100,000 calls in the
database (90,000 of the user's, 10,000 of another's) on SQLite. Goal: a few milliseconds, so that no page,
however small, is slowed by it (it ran in 300-500 ms before the calls indexes of migration 0009).

    .venv/bin/python bench/bench_status_strip.py [--calls 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert  # noqa: E402

from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Call, CallOutcome, CallStatus, Campaign, Task, TaskStatus, User  # noqa: E402
from db.types import utcnow  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from webui.status import system_status  # noqa: E402

ROUNDS = 20
CHUNK = 5000


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{folder}/bench.db"
        await upgrade(url)
        engine = create_engine(url)
        sessions = session_factory(engine)
        settings = load_settings({"DATABASE_URL": url}, dotenv=None)
        now = utcnow()
        async with sessions() as session:
            session.add_all([User(id=1, username="alice", password_hash="x"),
                             User(id=2, username="bob", password_hash="x")])
            await session.flush()
            session.add(Campaign(id=1, user_id=1, name="bench", goal="bench"))
            await session.flush()
            await session.execute(insert(Task), [
                {"id": i, "user_id": 1, "campaign_id": 1, "target_name": "t", "phone_number": "+14155550101",
                 "objective": "o", "status": TaskStatus.COMPLETED, "next_action_time": now, "max_attempts": 3}
                for i in range(1, 10_001)])
            for start in range(0, calls, CHUNK):
                await session.execute(insert(Call), [
                    {"user_id": 2 if i % 10 == 0 else 1, "task_id": i % 10_000 + 1, "attempt_number": 1,
                     "status": CallStatus.ENDED, "outcome": CallOutcome.ANSWERED, "dialed_number": "+14155550101",
                     "ended_at": now - timedelta(seconds=i), "analyzed_at": now - timedelta(seconds=i),
                     "analysis": {"outcome": "success"}}
                    for i in range(start, min(start + CHUNK, calls))])
            await session.commit()
        timings = []
        for _ in range(ROUNDS):
            async with sessions() as session:
                started = time.perf_counter()
                await system_status(session, settings, None, 1)
                timings.append((time.perf_counter() - started) * 1000)
        await engine.dispose()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; SQLite, {calls} calls")
    print(f"status strip per page (4 queries): median {statistics.median(timings):.1f} ms, "
          f"max {max(timings):.1f} ms over {ROUNDS} pages (goal: < 20 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().calls))
