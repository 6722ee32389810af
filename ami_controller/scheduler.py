"""The scheduler: which due tasks may be called now.

`claim_due_tasks` takes due tasks (db/task_life.py says which are) atomically, so that several scheduler
processes never claim one task twice:
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

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo, task_life
from db.models import Campaign, Task, TaskStatus
from db.task_life import ClaimedTask
from db.types import utcnow
from opendeep.phone import callee_timezone
from opendeep.settings import CallingWindow, Settings, parse_window

log = logging.getLogger(__name__)


async def claim_due_tasks(session: AsyncSession, *, claimer: str, limit: int, now: datetime | None = None,
                          exclude_user_ids: Iterable[int] = ()) -> list[ClaimedTask]:
    """Claim up to `limit` due tasks for `claimer` and commit. Never returns a task another claimer holds."""
    claimed = await task_life.claim_due(session, claimer=claimer, limit=limit, now=now or utcnow(),
                                        exclude_user_ids=exclude_user_ids)
    await session.commit()
    return claimed


async def release_task(session: AsyncSession, task: ClaimedTask, *, reason: str,
                       next_action_time: datetime | None = None, event_type: str = "task.released") -> bool:
    """Give a claimed task back, as it was before the claim (the attempt is not spent). Caller commits."""
    return await task_life.move(
        session, task.user_id, task.id, task.previous_status, reason=reason, only_from=[TaskStatus.QUEUED],
        next_action_time=next_action_time, also=task_life.GIVE_BACK_CLAIM, event_type=event_type,
        payload={"next_action_time": next_action_time.isoformat() if next_action_time else None})


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
                # No call was made: the claim's attempt is given back so counts stay honest.
                if await task_life.move(session, task.user_id, task.id, TaskStatus.CANCELLED_DND, reason=reason,
                                        only_from=[TaskStatus.QUEUED], event_type="task.cancelled_dnd",
                                        also={"attempt_count": Task.attempt_count - 1}):
                    result.cancelled_dnd.append(task)
            elif await release_task(session, task, reason=reason, next_action_time=when,
                                    event_type="task.rescheduled"):
                result.rescheduled.append(task)
            task_life.task_updated(events, task.user_id, task.id, task.campaign_id, status or task.previous_status)
        await session.commit()
    return result


async def _screen_one(session: AsyncSession, settings: Settings, task: ClaimedTask,
                      now: datetime) -> tuple[TaskStatus | None, str, datetime | None] | None:
    listed_by_user = await repo.is_dnd(session, task.user_id, task.phone_number)
    reason = repo.dnd_verdict(listed_by_user, 0 if listed_by_user else await repo.count_dnd_tenants(
        session, task.phone_number), settings.global_dnd_tenant_threshold)
    if reason is not None:
        return TaskStatus.CANCELLED_DND, reason, None
    campaign = await repo.get_campaign(session, task.user_id, task.campaign_id)
    window = window_for(campaign, settings)
    zone = callee_timezone(task.phone_number)
    opening = next_window_opening(now, zone, window)
    if opening is not None:
        local = opening.astimezone(zone)
        return (None, f"outside the calling window {window} ({zone.key}); next try {local:%Y-%m-%d %H:%M %Z}",
                opening)
    return None

