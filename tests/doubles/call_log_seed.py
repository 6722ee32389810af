"""Scenery for the call log, the charts and the paginated campaign page: many tasks, calls and transcript lines
written in bulk (executemany), as a busy tenant's history looks. Used by tests and bench/bench_calllog.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, select, update

from db import repo
from db.models import Call, CallOutcome, CallStatus, CallTranscript, Speaker, Task

OUTCOME_CYCLE = (CallOutcome.ANSWERED, CallOutcome.NO_ANSWER, CallOutcome.BUSY, CallOutcome.ANSWERED,
                 CallOutcome.VOICEMAIL)
WORDS = ("we are open until six", "the price is forty euros", "please call back tomorrow", "no thank you",
         "the manager is out today", "we have a slot on Tuesday", "can you spell that", "yes that works")
CHUNK = 2000


@dataclass
class SeededCampaign:
    campaign_id: int
    task_ids: list[int]
    call_ids: list[int]


async def seed_campaign(sessions, user_id: int, *, tasks: int, calls: int = 0, lines_per_call: int = 0,
                        start: datetime, spacing: timedelta = timedelta(minutes=7), name: str = "Busy campaign",
                        number_prefix: str = "+1415") -> SeededCampaign:
    """A campaign with `tasks` tasks and `calls` ended calls spread over them (every `spacing` from `start`),
    outcomes cycling through OUTCOME_CYCLE, each call with `lines_per_call` transcript lines from WORDS."""
    async with sessions() as session:
        campaign = await repo.create_campaign(session, user_id, name=name, goal="Ask for a quote")
        task_ids: list[int] = []
        for first in range(0, tasks, CHUNK):
            task_ids += await repo.add_tasks(session, user_id, campaign.id, [
                {"target_name": f"Target {n}", "phone_number": f"{number_prefix}{n:07d}"}
                for n in range(first, min(tasks, first + CHUNK))])
        await session.commit()
        call_rows = []
        for n in range(calls):
            outcome = OUTCOME_CYCLE[n % len(OUTCOME_CYCLE)]
            created = start + spacing * n
            answered = outcome in (CallOutcome.ANSWERED, CallOutcome.VOICEMAIL)
            duration = 20 + n % 200 if answered else None
            task_index = n % len(task_ids)
            call_rows.append({
                "user_id": user_id, "task_id": task_ids[task_index], "attempt_number": n // len(task_ids) + 1,
                "status": CallStatus.ENDED, "outcome": outcome, "dialed_number": f"{number_prefix}{task_index:07d}",
                "created_at": created, "started_at": created,
                "answered_at": created + timedelta(seconds=8) if answered else None,
                "ended_at": created + timedelta(seconds=8 + (duration or 22)), "duration_seconds": duration,
                "bridged_to_ai": answered, "analysis_attempts": 0})
        call_ids: list[int] = []
        for first in range(0, len(call_rows), CHUNK):
            await session.execute(insert(Call), call_rows[first:first + CHUNK])
        if calls:   # each task's attempt_count: the calls it had
            per_task = Counter(row["task_id"] for row in call_rows)
            tasks_table = Task.__table__
            await session.execute(update(tasks_table).where(tasks_table.c.id == bindparam("tid"))
                                  .values(attempt_count=bindparam("n")),
                                  [{"tid": tid, "n": n} for tid, n in per_task.items()])
            call_ids = list((await session.scalars(
                select(Call.id).join(Task, Task.id == Call.task_id)
                .where(Call.user_id == user_id, Task.campaign_id == campaign.id).order_by(Call.id))).all())
            await session.commit()
        lines = [{"user_id": user_id, "call_id": call_id, "offset_ms": k * 1500,
                  "speaker": Speaker.AGENT if k % 2 == 0 else Speaker.CALLEE,
                  "text": WORDS[(n + k) % len(WORDS)], "created_at": start}
                 for n, call_id in enumerate(call_ids) for k in range(lines_per_call)]
        for first in range(0, len(lines), CHUNK):
            await session.execute(insert(CallTranscript), lines[first:first + CHUNK])
        await session.commit()
    return SeededCampaign(campaign.id, task_ids, call_ids)


async def set_call(sessions, user_id: int, call_id: int, **values) -> None:
    """Change one seeded call (e.g. its target's odd name, or a line nobody else said)."""
    async with sessions() as session:
        call = await repo.get_call(session, user_id, call_id)
        for key, value in values.items():
            setattr(call, key, value)
        await session.commit()


async def add_line(sessions, user_id: int, call_id: int, text: str, speaker: Speaker = Speaker.CALLEE) -> None:
    async with sessions() as session:
        await repo.add_transcript(session, user_id, call_id, speaker, text, 99_000)
        await session.commit()


def ids(rows: Sequence) -> list[int]:
    return [row.id for row in rows]
