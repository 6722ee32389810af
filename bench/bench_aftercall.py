"""After-call throughput on SQLite: how many ended calls per second the post-call analyzer applies, with one
analyzer and with several racing on the same database, and how long one campaign summary of many targets takes.

The model is the fake OpenAI server answering at once (over real HTTP through the openai SDK), so the figures are
our own cost per call: claim, read, request/parse/validate, apply. A real model adds its latency per call, which
several analyzers (one per process, or more in one) overlap.

    .venv/bin/python bench/bench_aftercall.py [--calls 300] [--analyzers 3] [--targets 500]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from db.engine import create_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import (  # noqa: E402
    Call,
    CallOutcome,
    CallStatus,
    CallTranscript,
    Campaign,
    Speaker,
    Task,
    TaskEvent,
    TaskStatus,
    User,
)
from db.types import utcnow  # noqa: E402
from opendeep.analyzer import PostCallAnalyzer  # noqa: E402
from opendeep.settings import load_settings  # noqa: E402
from opendeep.summarizer import CampaignSummarizer  # noqa: E402
from tests.doubles.fake_openai import FakeOpenAI  # noqa: E402

VERDICT = json.dumps({"outcome": "success", "summary": "Booked Tuesday 10:00.",
                      "extracted": [{"name": "booked_time", "value": "Tuesday 10:00"}], "should_retry": False,
                      "retry_at": None, "callback_requested": False, "add_to_dnd": False,
                      "reason": "confirmed", "notes_for_next_call": ""})
SUMMARY = json.dumps({"summary": "Done.", "key_findings": [], "next_steps": []})


async def seed(sessions, calls: int) -> int:
    """One tenant, one campaign, `calls` tasks each with an ended, answered call of 12 transcript lines."""
    now = utcnow()
    async with sessions() as session, session.begin():
        user = User(username="bench", password_hash="x")
        session.add(user)
        await session.flush()
        campaign = Campaign(user_id=user.id, name="bench")
        session.add(campaign)
        await session.flush()
        await session.execute(insert(Task), [
            {"user_id": user.id, "campaign_id": campaign.id, "target_name": f"Target {n}",
             "phone_number": f"+1555{n:07d}", "status": TaskStatus.IN_PROGRESS, "attempt_count": 1,
             "status_reason": "awaiting analysis"} for n in range(calls)])
        task_ids = (await session.scalars(select(Task.id).where(Task.campaign_id == campaign.id))).all()
        await session.execute(insert(Call), [
            {"user_id": user.id, "task_id": task_id, "attempt_number": 1, "status": CallStatus.ENDED,
             "outcome": CallOutcome.ANSWERED, "dialed_number": "+15550000000", "answered_at": now,
             "ended_at": now, "duration_seconds": 60} for task_id in task_ids])
        call_ids = (await session.scalars(select(Call.id))).all()
        await session.execute(insert(CallTranscript), [
            {"user_id": user.id, "call_id": call_id, "speaker": Speaker.CALLEE if n % 2 else Speaker.AGENT,
             "text": f"line {n} of the conversation about booking a cleaning", "offset_ms": n * 3000}
            for call_id in call_ids for n in range(12)])
        return campaign.id


async def analyze_all(settings, sessions, analyzers: int, calls: int) -> float:
    services = [PostCallAnalyzer(settings, sessions, worker_id=f"a{n}", batch_size=50) for n in range(analyzers)]

    async def drain(service):
        while await service.run_once():
            pass

    started = time.perf_counter()
    await asyncio.gather(*(drain(s) for s in services))
    elapsed = time.perf_counter() - started
    for service in services:
        await service.close()
    async with sessions() as session:
        applied = await session.scalar(select(func.count()).select_from(TaskEvent)
                                       .where(TaskEvent.type == "analysis.completed"))
        left = await session.scalar(select(func.count()).select_from(Call).where(Call.analyzed_at.is_(None)))
    assert applied == calls and left == 0, (applied, left)  # each call applied exactly once
    return elapsed


async def fresh_database(tmp: str, base_url: str, calls: int):
    """A migrated SQLite file in `tmp` seeded with `calls` ended calls; settings pointing at the fake model."""
    url = f"sqlite+aiosqlite:///{tmp}/bench.db"
    await upgrade(url)
    settings = dataclasses.replace(load_settings({"DATABASE_URL": url, "SECRET_KEY": "x"}, dotenv=None),
                                   openai_base_url=base_url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    await seed(sessions, calls)
    return settings, engine, sessions


async def run(args) -> None:
    logging.disable(logging.WARNING)
    fake = FakeOpenAI()
    base_url = await fake.start()
    fake.responder = lambda body: {"content": VERDICT if body["response_format"]["json_schema"]["name"]
                                   == "call_analysis" else SUMMARY}
    try:
        # The fake model's own round trip (HTTP in this process), to tell it apart from our cost per call.
        client = openai.AsyncOpenAI(api_key="x", base_url=base_url, max_retries=0)
        started = time.perf_counter()
        for _ in range(50):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}],
                response_format={"type": "json_schema", "json_schema": {"name": "call_analysis", "schema": {}}})
        round_trip = (time.perf_counter() - started) / 50
        await client.close()
        print(f"fake model round trip alone: {round_trip * 1000:.1f} ms/request")
        for analyzers in (1, args.analyzers):
            with tempfile.TemporaryDirectory() as tmp:
                settings, engine, sessions = await fresh_database(tmp, base_url, args.calls)
                before = len(fake.requests)
                elapsed = await analyze_all(settings, sessions, analyzers, args.calls)
                requests = len(fake.requests) - before
                own = (f"; our own cost ~{(elapsed / args.calls - round_trip) * 1000:.1f} ms/call"
                       if analyzers == 1 else "")
                print(f"analyzer x{analyzers}: {args.calls} calls in {elapsed:.2f} s = "
                      f"{args.calls / elapsed:.0f} calls/s ({elapsed / args.calls * 1000:.1f} ms/call), "
                      f"{requests} LLM requests{own}")
                await engine.dispose()

        with tempfile.TemporaryDirectory() as tmp:
            settings, engine, sessions = await fresh_database(tmp, base_url, args.targets)
            await analyze_all(settings, sessions, args.analyzers, args.targets)
            summarizer = CampaignSummarizer(settings, sessions)
            started = time.perf_counter()
            assert await summarizer.run_once() == 1
            elapsed = time.perf_counter() - started
            await summarizer.close()
            print(f"summarizer: campaign of {args.targets} targets summarized in {elapsed * 1000:.0f} ms")
            await engine.dispose()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--analyzers", type=int, default=3)
    parser.add_argument("--targets", type=int, default=500)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
