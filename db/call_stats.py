"""What the charts count, read per user: a campaign's calls and tasks, and the user's calls of recent days.

The rows are small (a few columns a call); webui.chart_pages groups them into the user's days and buckets.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Call, Task


async def campaign_calls(session: AsyncSession, user_id: int, campaign_id: int) -> list[Any]:
    """Every call of the campaign: when, its status, outcome, whether it was answered, how long it talked."""
    return list((await session.execute(
        select(Call.created_at, Call.status, Call.outcome, Call.answered_at, Call.duration_seconds)
        .join(Task, and_(Task.id == Call.task_id, Task.user_id == user_id))
        .where(Call.user_id == user_id, Task.campaign_id == campaign_id))).all())


async def campaign_attempts(session: AsyncSession, user_id: int, campaign_id: int) -> dict[int, int]:
    """How many of the campaign's tasks took 0, 1, 2, ... attempts: {attempts: tasks}."""
    rows = await session.execute(
        select(Task.attempt_count, func.count()).where(Task.user_id == user_id, Task.campaign_id == campaign_id)
        .group_by(Task.attempt_count))
    return {attempts: tasks for attempts, tasks in rows}


async def calls_since(session: AsyncSession, user_id: int, since: datetime) -> list[Any]:
    """The user's calls placed since `since`: when, whether the call AI was on the line, how long it talked."""
    return list((await session.execute(
        select(Call.created_at, Call.bridged_to_ai, Call.duration_seconds)
        .where(Call.user_id == user_id, Call.created_at >= since))).all())
