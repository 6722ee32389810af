"""Rows the after-call tests start from: a tenant, a campaign, a task and a call that just ended.

Calls are ended through ami_controller.outcomes.finish_call, the same path the AMI and FastAGI call-end take,
so the analyzer sees exactly what production leaves behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ami_controller.outcomes import finish_call
from db import repo
from db.models import Call, CallOutcome, CallStatus, Speaker, Task, TaskStatus
from db.types import utcnow


@dataclass
class Seeded:
    user_id: int
    campaign_id: int
    task_id: int


async def seed_task(sessions, *, username: str = "alice", phone: str = "+15551230001", max_attempts: int = 3,
                    campaign_id: int | None = None, user_id: int | None = None,
                    target: str = "Dr. Smith Dental", objective: str = "Book a cleaning next week") -> Seeded:
    async with sessions() as session, session.begin():
        if user_id is None:
            user = await repo.get_user_by_username(session, username) or await repo.create_user(
                session, username, "x")
            user_id = user.id
        if campaign_id is None:
            campaign_id = (await repo.create_campaign(session, user_id, name="Dentists",
                                                      goal="Find a cleaning slot")).id
        task = await repo.add_task(session, user_id, campaign_id, target_name=target, phone_number=phone,
                                   objective=objective, max_attempts=max_attempts)
        return Seeded(user_id, campaign_id, task.id)


async def start_call(sessions, seeded: Seeded, *, answered: bool = True, created_at: datetime | None = None,
                     status: CallStatus | None = None) -> int:
    """What the scheduler + initiator + call-answered AGI leave: task in_progress, a call row, one more attempt."""
    now = utcnow()
    async with sessions() as session, session.begin():
        task = await repo.get_task(session, seeded.user_id, seeded.task_id)
        task.attempt_count += 1
        task.status = TaskStatus.IN_PROGRESS
        task.claimed_at = created_at or now
        call = Call(user_id=seeded.user_id, task_id=task.id, attempt_number=task.attempt_count,
                    dialed_number=task.phone_number, created_at=created_at or now,
                    status=status or (CallStatus.ANSWERED if answered else CallStatus.RINGING),
                    answered_at=(created_at or now) + timedelta(seconds=5) if answered else None,
                    channel="PJSIP/opendeep-trunk-00000001" if answered else None)
        session.add(call)
        await session.flush()
        return call.id


async def say(sessions, seeded: Seeded, call_id: int, lines: list[tuple[Speaker, str]]) -> None:
    async with sessions() as session, session.begin():
        for n, (speaker, text) in enumerate(lines):
            await repo.add_transcript(session, seeded.user_id, call_id, speaker, text, offset_ms=n * 3000)


async def end_call(sessions, settings, seeded: Seeded, call_id: int,
                   outcome: CallOutcome = CallOutcome.ANSWERED, end_reason: str | None = None) -> None:
    async with sessions() as session, session.begin():
        if end_reason:
            await repo.record_call_event(session, seeded.user_id, call_id, "ai.end_call", {"reason": end_reason})
        assert await finish_call(session, settings, user_id=seeded.user_id, call_id=call_id, outcome=outcome,
                                 dial_status="ANSWER", hangup_cause=16, answered_seconds=42, source="agi.call-end")


async def answered_call(sessions, settings, seeded: Seeded, lines: list[tuple[Speaker, str]],
                        end_reason: str | None = "goal reached",
                        outcome: CallOutcome = CallOutcome.ANSWERED) -> int:
    call_id = await start_call(sessions, seeded)
    await say(sessions, seeded, call_id, lines)
    await end_call(sessions, settings, seeded, call_id, outcome, end_reason)
    return call_id


def verdict(outcome: str, *, summary: str = "Spoke with the receptionist.", extracted: dict[str, str] | None = None,
            should_retry: bool = False, retry_at: str | None = None, callback_requested: bool = False,
            add_to_dnd: bool = False, reason: str = "as heard on the call", notes: str = "") -> str:
    """A model answer in the analyzer's schema, as the JSON text the model would send."""
    body: dict[str, Any] = {
        "outcome": outcome, "summary": summary,
        "extracted": [{"name": k, "value": v} for k, v in (extracted or {}).items()],
        "should_retry": should_retry, "retry_at": retry_at, "callback_requested": callback_requested,
        "add_to_dnd": add_to_dnd, "reason": reason, "notes_for_next_call": notes,
    }
    return json.dumps(body)


async def load(sessions, seeded: Seeded, call_id: int | None = None) -> tuple[Task, Call | None]:
    async with sessions() as session:
        task = await repo.get_task(session, seeded.user_id, seeded.task_id)
        call = await repo.get_call(session, seeded.user_id, call_id) if call_id else None
        return task, call
