"""Test set-up: put a task straight into a state, as if its earlier moves had happened (production moves a task
only through db/task_life.py, whose table would refuse a jump such as pending -> completed)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Task, TaskStatus
from db.types import utcnow


async def put_task(session: AsyncSession, user_id: int, task_id: int, status: TaskStatus, *,
                   reason: str | None = None, next_action_time: datetime | None = None) -> bool:
    """Set the task's status (and time) directly; returns whether the task was the user's."""
    values = {"status": status, "status_reason": reason, "updated_at": utcnow()}
    if next_action_time is not None:
        values["next_action_time"] = next_action_time
    result = await session.execute(update(Task).where(Task.id == task_id, Task.user_id == user_id).values(**values))
    return result.rowcount == 1
