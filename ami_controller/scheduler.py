"""The scheduler: which due tasks may be called now.

`claim_due_tasks` takes due tasks atomically, so that several scheduler processes never claim one task twice:
on PostgreSQL one `UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)` statement, on SQLite one conditional
`UPDATE ... WHERE status = <what we read>` per task (SQLite serializes writers; the rowcount says who won).
A claim counts an attempt and moves the task to `queued`.

`screen_claimed_tasks` then applies the rules that can stop a call: the tenant's do-not-call list, the global
one (a number listed by GLOBAL_DND_TENANT_THRESHOLD tenants), and the calling window in the callee's time zone.
A DND number cancels the task (`cancelled_dnd`); outside the window the task goes back to when the window
next opens, without spending the attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo
from db.models import DUE_TASK_STATUSES, Campaign, CampaignStatus, Task, TaskStatus, User
from db.types import utcnow
from opendeep.phone import callee_timezone
from opendeep.settings import CallingWindow, Settings, parse_window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedTask:
    """A task this scheduler now owns (status `queued`, attempt already counted)."""

    id: int
    user_id: int
    campaign_id: int
    phone_number: str
    attempt_count: int
    max_attempts: int
    previous_status: TaskStatus


def _due_conditions(now: datetime, exclude_user_ids: Iterable[int]) -> list:
    conditions = [
        Task.status.in_(DUE_TASK_STATUSES),
        Task.next_action_time <= now,
        Task.attempt_count < Task.max_attempts,
        Campaign.status == CampaignStatus.ACTIVE,   # paused / cancelled campaigns are skipped
        # An until-one-succeeds campaign holds the targets whose turn has not come (opendeep/campaign_goal.py
        # releases them one by one): a held task is never due, whatever its next_action_time.
        Task.held.is_(False),
        Task.user_id.not_in(select(User.id).where(User.disabled_at.is_not(None))),   # disabled by an admin
    ]
    excluded = list(exclude_user_ids)
    if excluded:
        conditions.append(Task.user_id.not_in(excluded))
    return conditions


_CLAIM_ORDER = (Task.priority.desc(), Task.next_action_time, Task.id)


async def claim_due_tasks(session: AsyncSession, *, claimer: str, limit: int, now: datetime | None = None,
                          exclude_user_ids: Iterable[int] = ()) -> list[ClaimedTask]:
    """Claim up to `limit` due tasks for `claimer` and commit. Never returns a task another claimer holds."""
    if limit <= 0:
        return []
    now = now or utcnow()
    if session.bind.dialect.name == "postgresql":
        claimed = await _claim_postgresql(session, claimer, limit, now, exclude_user_ids)
    else:
        claimed = await _claim_sqlite(session, claimer, limit, now, exclude_user_ids)
    await session.commit()
    return claimed


async def _claim_postgresql(session: AsyncSession, claimer: str, limit: int, now: datetime,
                            exclude_user_ids: Iterable[int]) -> list[ClaimedTask]:
    due = (
        select(Task.id, Task.status.label("previous_status"))
        .join(Campaign, Campaign.id == Task.campaign_id)
        .where(*_due_conditions(now, exclude_user_ids))
        .order_by(*_CLAIM_ORDER)
        .limit(limit)
        .with_for_update(of=Task, skip_locked=True)
        .cte("due")
    )
    statement = (
        update(Task)
        .where(Task.id == due.c.id)
        .values(status=TaskStatus.QUEUED, attempt_count=Task.attempt_count + 1, claimed_by=claimer,
                claimed_at=now, updated_at=now, status_reason=None)
        .returning(Task.id, Task.user_id, Task.campaign_id, Task.phone_number, Task.attempt_count,
                   Task.max_attempts, due.c.previous_status)
    )
    rows = (await session.execute(statement)).all()
    return sorted((ClaimedTask(*row[:6], TaskStatus(row[6])) for row in rows), key=lambda task: task.id)


async def _claim_sqlite(session: AsyncSession, claimer: str, limit: int, now: datetime,
                        exclude_user_ids: Iterable[int]) -> list[ClaimedTask]:
    candidates = (await session.execute(
        select(Task.id, Task.user_id, Task.campaign_id, Task.phone_number, Task.attempt_count, Task.max_attempts,
               Task.status)
        .join(Campaign, Campaign.id == Task.campaign_id)
        .where(*_due_conditions(now, exclude_user_ids))
        .order_by(*_CLAIM_ORDER)
        .limit(limit)
    )).all()
    claimed: list[ClaimedTask] = []
    for task_id, user_id, campaign_id, number, attempts, max_attempts, status in candidates:
        # Conditional on exactly what we read: if another scheduler got there first, rowcount is 0.
        result = await session.execute(
            update(Task)
            .where(Task.id == task_id, Task.status == status, Task.attempt_count == attempts,
                   Task.next_action_time <= now)
            .values(status=TaskStatus.QUEUED, attempt_count=attempts + 1, claimed_by=claimer, claimed_at=now,
                    updated_at=now, status_reason=None)
        )
        if result.rowcount == 1:
            claimed.append(ClaimedTask(task_id, user_id, campaign_id, number, attempts + 1, max_attempts,
                                       TaskStatus(status)))
    return claimed


async def release_task(session: AsyncSession, task: ClaimedTask, *, reason: str,
                       next_action_time: datetime | None = None, event_type: str = "task.released") -> bool:
    """Give a claimed task back, as it was before the claim (the attempt is not spent). Caller commits."""
    values = {"status": task.previous_status, "attempt_count": Task.attempt_count - 1, "claimed_by": None,
              "claimed_at": None, "status_reason": reason, "updated_at": utcnow()}
    if next_action_time is not None:
        values["next_action_time"] = next_action_time
    result = await session.execute(
        update(Task).where(Task.id == task.id, Task.user_id == task.user_id, Task.status == TaskStatus.QUEUED)
        .values(**values)
    )
    if result.rowcount != 1:
        return False
    await repo.record_task_event(session, task.user_id, task.id, event_type, reason,
                                 {"next_action_time": next_action_time.isoformat() if next_action_time else None})
    return True


# ---------------------------------------------------------------- calling window


def window_for(campaign: Campaign | None, settings: Settings) -> CallingWindow:
    """The campaign's own window if it has a valid one, else DEFAULT_CALLING_WINDOW."""
    if campaign is not None and campaign.window_start and campaign.window_end:
        try:
            return parse_window(f"{campaign.window_start}-{campaign.window_end}")
        except ValueError:
            log.warning("campaign %s has an invalid calling window %r-%r; using %s", campaign.id,
                        campaign.window_start, campaign.window_end, settings.default_calling_window)
    return settings.default_calling_window


def _inside(window: CallingWindow, local: datetime) -> bool:
    clock = local.time().replace(tzinfo=None)
    if window.start < window.end:
        return window.start <= clock < window.end
    return clock >= window.start or clock < window.end   # the window crosses midnight, e.g. 22:00-06:00


def next_window_opening(now: datetime, zone: ZoneInfo, window: CallingWindow) -> datetime | None:
    """None if `now` is inside the window in `zone`; otherwise the next opening, as a UTC datetime.

    Wall-clock arithmetic in the callee's zone, so a DST change moves the opening with local time; a start
    that falls in a spring-forward gap opens at the first real minute after it.
    """
    local = now.astimezone(zone)
    if _inside(window, local):
        return None
    for days in range(0, 3):
        day = local.date() + timedelta(days=days)
        opening = datetime.combine(day, window.start, tzinfo=zone).astimezone(UTC)
        if opening > now:
            return opening
    raise AssertionError("a daily window opens within two days")  # pragma: no cover


# ---------------------------------------------------------------- screening claimed tasks


@dataclass(frozen=True)
class Screening:
    callable: list[ClaimedTask]
    cancelled_dnd: list[ClaimedTask]
    rescheduled: list[ClaimedTask]


async def screen_claimed_tasks(sessions: async_sessionmaker[AsyncSession], settings: Settings,
                               tasks: Sequence[ClaimedTask], *, now: datetime | None = None,
                               events=None) -> Screening:
    """Apply DND (tenant, then global) and the calling window to claimed tasks; return those to call now."""
    now = now or utcnow()
    result = Screening([], [], [])
    async with sessions() as session:
        for task in tasks:
            decision = await _screen_one(session, settings, task, now)
            if decision is None:
                result.callable.append(task)
                continue
            status, reason, when = decision
            if status is TaskStatus.CANCELLED_DND:
                moved = await repo.set_task_status(session, task.user_id, task.id, TaskStatus.CANCELLED_DND,
                                                   reason=reason, only_from=[TaskStatus.QUEUED])
                if moved:
                    # No call was made: the claim's attempt is given back so counts stay honest.
                    await session.execute(update(Task).where(Task.id == task.id)
                                          .values(attempt_count=Task.attempt_count - 1))
                    await repo.record_task_event(session, task.user_id, task.id, "task.cancelled_dnd", reason)
                    result.cancelled_dnd.append(task)
            elif await release_task(session, task, reason=reason, next_action_time=when,
                                    event_type="task.rescheduled"):
                result.rescheduled.append(task)
            if events is not None:
                events.publish(task.user_id, "task.updated", {"task_id": task.id, "campaign_id": task.campaign_id,
                                                              "status": (status or task.previous_status).value})
        await session.commit()
    return result


async def _screen_one(session: AsyncSession, settings: Settings, task: ClaimedTask,
                      now: datetime) -> tuple[TaskStatus | None, str, datetime | None] | None:
    if await repo.is_dnd(session, task.user_id, task.phone_number):
        return TaskStatus.CANCELLED_DND, "number is on your do-not-call list", None
    tenants = await repo.count_dnd_tenants(session, task.phone_number)
    if tenants >= settings.global_dnd_tenant_threshold:
        return (TaskStatus.CANCELLED_DND,
                f"number is on the global do-not-call list (listed by {tenants} accounts)", None)
    campaign = await repo.get_campaign(session, task.user_id, task.campaign_id)
    window = window_for(campaign, settings)
    zone = callee_timezone(task.phone_number)
    opening = next_window_opening(now, zone, window)
    if opening is not None:
        local = opening.astimezone(zone)
        return (None, f"outside the calling window {window} ({zone.key}); next try {local:%Y-%m-%d %H:%M %Z}",
                opening)
    return None

