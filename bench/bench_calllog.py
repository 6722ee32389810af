"""Call log, campaign page and charts with a busy tenant's history, on SQLite and PostgreSQL.

One user, one campaign of 10,000 tasks, 10,000 ended calls (one a task, 7 minutes apart) with 100,000 transcript
lines (10 a call), plus a second tenant with the same amount (so every query has to skip another tenant's rows).
Each page is requested ROUNDS times through the real app (ASGI, in process: server time, no network); we print
the median and the slowest. Text search is timed for a phrase in every call's transcript (the page fills at
once), one in a single call (every line is read, or the index answers) and one in none; on PostgreSQL also
without the pg_trgm index, to show what the index buys.

    .venv/bin/python bench/bench_calllog.py [--rounds 15] [--pg-url postgresql+asyncpg://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text  # noqa: E402

from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from opendeep.events import EventHub  # noqa: E402
from opendeep.runtime import Runtime  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from tests.doubles.call_log_seed import add_line, seed_campaign  # noqa: E402
from tests.doubles.webui_client import WebClient, add_user  # noqa: E402
from webui.app import create_app  # noqa: E402
from webui.views import campaign_detail  # noqa: E402

TASKS = CALLS = 10_000
LINES_PER_CALL = 10
START = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)


async def timed(client: WebClient, path: str, rounds: int) -> tuple[float, float, int]:
    times = []
    size = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        response = await client.http.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        size = len(response.content)
    return statistics.median(times), max(times), size


async def bench(url: str, rounds: int) -> None:
    engine = create_engine(url)
    sessions = session_factory(engine)
    settings = load_settings({"DATABASE_URL": url, "SECRET_KEY": "bench"}, dotenv=None)
    runtime = Runtime(settings=settings, engine=engine, sessions=sessions, events=EventHub())
    alice = await add_user(runtime, "alice")
    bob = await add_user(runtime, "bob")
    t0 = time.perf_counter()
    seeded = await seed_campaign(sessions, alice, tasks=TASKS, calls=CALLS, lines_per_call=LINES_PER_CALL,
                                 start=START)
    await seed_campaign(sessions, bob, tasks=TASKS, calls=CALLS, lines_per_call=LINES_PER_CALL, start=START)
    await add_line(sessions, alice, seeded.call_ids[1234], "the sourdough starter is ninety years old")
    if engine.dialect.name == "postgresql":
        async with engine.begin() as connection:
            await connection.execute(text("ANALYZE"))
    print(f"  seeded 2 tenants x {CALLS} calls, {CALLS * LINES_PER_CALL} lines in {time.perf_counter() - t0:.0f} s")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    campaign = seeded.campaign_id
    cases = [
        ("call log, first page (50 of 10,000)", "/calls"),
        ("call log, page after a cursor deep in the log", None),
        ("call log, campaign + outcome", f"/calls?campaign={campaign}&outcome=busy"),
        ("call log, one day", "/calls?from=2026-10-20&to=2026-10-20"),
        ("call log, number contains 0001234", "/calls?number=0001234"),
        ("call log, words said in every call", "/calls?q=call+back+tomorrow"),
        ("call log, words said in one call", "/calls?q=sourdough+starter"),
        ("call log, words said in no call", "/calls?q=zebra+crossing"),
        ("campaign page 1 (100 of 10,000 tasks)", f"/campaigns/{campaign}"),
        ("campaign page 100", f"/campaigns/{campaign}?page=100"),
        ("campaign charts (10,000 calls)", f"/campaigns/{campaign}/charts"),
        ("overall charts (30 days)", "/charts"),
    ]
    for name, path in cases:
        if path is None:   # the cursor of a page ~60 % down the log
            path = "/calls"
            for _ in range(120):
                page = (await client.http.get(path)).text
                path = "/calls?" + page.split('" rel="next"')[0].rsplit('href="/calls?', 1)[1].replace("&amp;", "&")
        median, slowest, size = await timed(client, path, rounds)
        print(f"  {name:48s} median {median:6.1f} ms, slowest {slowest:6.1f} ms ({size // 1024} KiB)")
    t0 = time.perf_counter()
    response = await client.http.get("/calls.csv")
    print(f"  {'CSV export, all 10,000 calls':48s} {(time.perf_counter() - t0) * 1000:6.0f} ms "
          f"({len(response.content) // 1024} KiB)")
    t0 = time.perf_counter()
    async with sessions() as session:
        everything = await campaign_detail(session, alice, campaign, per_page=TASKS)
    print(f"  {'for comparison: all 10,000 tasks, data only':48s} {(time.perf_counter() - t0) * 1000:6.0f} ms "
          f"(what the unpaginated page loaded before rendering {len(everything['tasks'])} rows)")
    if engine.dialect.name == "sqlite":
        await _fts5_comparison(engine, alice, rounds)
    if engine.dialect.name == "postgresql":
        async with engine.begin() as connection:
            await connection.execute(text("DROP INDEX ix_call_transcripts_text_trgm"))
        for name, path in cases[5:8]:
            median, slowest, _ = await timed(client, path, rounds)
            print(f"  without pg_trgm: {name[10:]:31s} median {median:6.1f} ms, slowest {slowest:6.1f} ms")
    await client.aclose()
    await engine.dispose()


async def _fts5_comparison(engine, user_id: int, rounds: int) -> None:
    """What an FTS5 trigram index would buy on SQLite (not used by OpenDeep): the same rare-phrase lookup as the
    bounded LIKE the call log runs, on the same 200,000 lines."""
    async with engine.begin() as connection:
        t0 = time.perf_counter()
        await connection.execute(text("CREATE VIRTUAL TABLE bench_fts USING fts5(text, content='call_transcripts', "
                                      "content_rowid='id', tokenize='trigram')"))
        await connection.execute(text("INSERT INTO bench_fts(bench_fts) VALUES ('rebuild')"))
        built = (time.perf_counter() - t0) * 1000
        like, fts = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await connection.execute(text("SELECT DISTINCT call_id FROM call_transcripts WHERE user_id = :u AND "
                                          "lower(text) LIKE '%sourdough starter%'"), {"u": user_id})
            like.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            await connection.execute(text("SELECT DISTINCT t.call_id FROM bench_fts JOIN call_transcripts t ON "
                                          "t.id = bench_fts.rowid WHERE bench_fts MATCH '\"sourdough starter\"' "
                                          "AND t.user_id = :u"), {"u": user_id})
            fts.append((time.perf_counter() - t0) * 1000)
        await connection.execute(text("DROP TABLE bench_fts"))
    print(f"  rare phrase, SQL alone: LIKE over every line median {statistics.median(like):.1f} ms; an FTS5 trigram "
          f"index median {statistics.median(fts):.1f} ms (built in {built:.0f} ms, not used: see README)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pg-url", default=os.environ.get("OPENDEEP_TEST_PG_URL",
                                                           "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    print(f"call log bench: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; server time per "
          f"request through the ASGI app, {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        await upgrade(url)
        print("SQLite:")
        await bench(url, args.rounds)
    name = f"opendeep_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        print(f"PostgreSQL: skipped, not reachable at {args.pg_url} ({exc})")
        await admin.dispose()
        return
    try:
        url = args.pg_url.rsplit("/", 1)[0] + "/" + name
        await upgrade(url)
        print("PostgreSQL:")
        await bench(url, args.rounds)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
    print(f"load average at the end: {os.getloadavg()[0]:.2f}; goals: call log first page < 150 ms, campaign page "
          "< 200 ms")


if __name__ == "__main__":
    asyncio.run(main())
