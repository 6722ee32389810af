"""The call initiator: turns screened, claimed tasks into calls, within the concurrency limits.

One pass (`dispatch_due_tasks`) for one Asterisk server: count the calls not ended (the server's limit: its
ASTERISK_SERVERS max_calls, MAX_CONCURRENT_CALLS with one server, 1 overall in test mode;
MAX_CONCURRENT_CALLS_PER_USER per tenant over all servers), claim at most that many due tasks, screen them (DND, calling
window), then for each: write the `calls` row, move the task to `in_progress`, and hand the Originate to the
AMI controller.

Nothing is dialed twice: when AMI is not connected nothing is claimed; when it drops between the claim and
the Originate (AmiNotConnected: nothing was written) the call row is removed and the task goes back to due
with its attempt given back; when the Originate was written but its answer was lost, the call stays
`originating` and the controller's re-sync after reconnecting decides what happened to it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ami_controller.manager import (
    AmiError,
    AmiNotConnected,
    AmiRefused,
    call_uniqueids,
    originate_action_id,
)
from ami_controller.outcomes import finish_call
from ami_controller.scheduler import ClaimedTask, claim_due_tasks, release_task, screen_claimed_tasks
from db import repo, task_life
from db.models import Call, CallOutcome, CallStatus, TaskStatus
from db.types import utcnow
from opendeep.metrics import CALLS_IN_PROGRESS, ORIGINATES
from opendeep.settings import Settings

if TYPE_CHECKING:
    from ami_controller.manager import AmiController
    from opendeep.events import EventHub

log = logging.getLogger(__name__)


@dataclass
class DispatchReport:
    """What one pass did (for logs and tests)."""

    claimed: int = 0
    dialed: list[int] = field(default_factory=list)          # call ids whose Originate Asterisk queued
    cancelled_dnd: list[int] = field(default_factory=list)   # task ids
    rescheduled: list[int] = field(default_factory=list)     # task ids (outside the calling window)
    deferred: list[int] = field(default_factory=list)        # task ids given back (AMI down, tenant at limit)
    failed: list[int] = field(default_factory=list)          # call ids Asterisk refused


async def active_call_counts(session: AsyncSession) -> Counter[int]:
    """Calls not ended, per user id (the concurrency limits count these)."""
    rows = await session.execute(
        select(Call.user_id, func.count()).where(Call.status != CallStatus.ENDED).group_by(Call.user_id))
    return Counter({user_id: count for user_id, count in rows.all()})


async def server_capacity(session: AsyncSession, settings: Settings, ami: AmiController, active_total: int) -> int:
    """How many more calls `ami`'s server may carry now: its own limit (ASTERISK_SERVERS max_calls; with one
    server, MAX_CONCURRENT_CALLS) minus its calls not ended. Test mode: one call at a time over all servers."""
    if settings.app_test_mode:
        return 1 - active_total
    # tenant-safe: every tenant's calls on this server, counted for its max_calls: a number, no rows
    on_server = await session.scalar(select(func.count()).select_from(Call).where(
        Call.status != CallStatus.ENDED, ami.carries_call()))
    return ami.server.max_calls - int(on_server or 0)


def dial_number(settings: Settings, task_number: str) -> str:
    """The number that reaches Asterisk: in test mode always APP_TEST_MODE_REDIRECT_NUMBER."""
    return settings.app_test_mode_redirect_number if settings.app_test_mode else task_number


async def dispatch_due_tasks(sessions: async_sessionmaker[AsyncSession], settings: Settings,
                             ami: AmiController | None, *, claimer: str, events: EventHub | None = None,
                             now: datetime | None = None) -> DispatchReport:
    """One scheduler pass: claim what may be called now and originate it."""
    report = DispatchReport()
    if ami is None or not ami.connected:
        return report  # nothing is claimed while Asterisk is unreachable: no attempt is spent
    async with sessions() as session:
        active = await active_call_counts(session)
        CALLS_IN_PROGRESS.set(sum(active.values()))
        capacity = await server_capacity(session, settings, ami, sum(active.values()))
        if capacity <= 0:
            return report
        full = [user_id for user_id, count in active.items() if count >= settings.max_concurrent_calls_per_user]
        claimed = await claim_due_tasks(session, claimer=claimer, limit=capacity, now=now, exclude_user_ids=full)
    report.claimed = len(claimed)
    if not claimed:
        return report
    screening = await screen_claimed_tasks(sessions, settings, claimed, now=now, events=events)
    report.cancelled_dnd = [task.id for task in screening.cancelled_dnd]
    report.rescheduled = [task.id for task in screening.rescheduled]
    for task in screening.callable:
        if active[task.user_id] >= settings.max_concurrent_calls_per_user:
            async with sessions() as session:
                await release_task(session, task, event_type="task.deferred",
                                   reason=f"your limit of {settings.max_concurrent_calls_per_user} calls at once "
                                          f"is reached; waiting for a call to end")
                await session.commit()
            report.deferred.append(task.id)
            continue
        active[task.user_id] += 1
        await _dial(sessions, settings, ami, task, report, events)
    return report


async def _dial(sessions: async_sessionmaker[AsyncSession], settings: Settings, ami: AmiController,
                task: ClaimedTask, report: DispatchReport, events: EventHub | None) -> None:
    async with sessions() as session:
        call = Call(user_id=task.user_id, task_id=task.id, attempt_number=task.attempt_count,
                    dialed_number=dial_number(settings, task.phone_number), status=CallStatus.CREATED,
                    asterisk_server=ami.server.name)
        session.add(call)
        await session.flush()
        one, two = call_uniqueids(call.id)
        call.ami_action_id = originate_action_id(call.id)
        call.asterisk_uniqueid, call.asterisk_other_uniqueid, call.asterisk_linkedid = one, two, one
        moved = await task_life.move(session, task.user_id, task.id, TaskStatus.IN_PROGRESS,
                                     reason=f"calling (attempt {task.attempt_count} of {task.max_attempts})",
                                     only_from=[TaskStatus.QUEUED], payload={"call_id": call.id})
        if not moved:  # the user paused or cancelled the task since the claim
            await session.rollback()
            return
        campaign = await repo.get_campaign(session, task.user_id, task.campaign_id)
        caller_id = campaign.caller_id if campaign is not None else None
        await session.commit()
    _publish_task(events, task, TaskStatus.IN_PROGRESS)
    try:
        await ami.originate(call, caller_id=caller_id)
        ORIGINATES.labels("accepted").inc()
    except AmiNotConnected as exc:
        ORIGINATES.labels("error").inc()
        await _give_back(sessions, task, call.id, f"Asterisk not reachable ({exc}); will call once it is back")
        report.deferred.append(task.id)
        _publish_task(events, task, task.previous_status)
        return
    except AmiRefused as exc:
        ORIGINATES.labels("refused").inc()
        async with sessions() as session:
            await repo.record_call_event(session, task.user_id, call.id, "ami.originate_refused",
                                         {"message": str(exc)})
            await finish_call(session, settings, user_id=task.user_id, call_id=call.id,
                              outcome=CallOutcome.FAILED, source="ami.originate_refused", events=events)
            await session.commit()
        log.error("call %s for task %s not placed: %s", call.id, task.id, exc)
        report.failed.append(call.id)
        return
    except AmiError as exc:
        ORIGINATES.labels("error").inc()
        # Written but unanswered: Asterisk may be dialing. Never re-send; the re-sync decides.
        log.warning("call %s: Originate sent but not confirmed (%s); the AMI re-sync will settle it", call.id, exc)
    async with sessions() as session:
        # tenant-safe: the call row this function just created (its id, under this task's user_id)
        await session.execute(update(Call).where(Call.id == call.id, Call.status == CallStatus.CREATED)
                              .values(status=CallStatus.ORIGINATING, started_at=utcnow()))
        await repo.record_call_event(session, task.user_id, call.id, "ami.originate",
                                     {"action_id": call.ami_action_id, "dialed_number": call.dialed_number})
        await session.commit()
    report.dialed.append(call.id)
    if events is not None:
        events.publish(task.user_id, "call.updated", {"call_id": call.id, "task_id": task.id,
                                                      "status": CallStatus.ORIGINATING.value, "outcome": None})


async def _give_back(sessions: async_sessionmaker[AsyncSession], task: ClaimedTask, call_id: int,
                     reason: str) -> None:
    """Undo a dial that never reached Asterisk: no call row, the task due again, the attempt not spent."""
    async with sessions() as session:
        # tenant-safe: the call row this dial created (its id, from the ClaimedTask of this user)
        await session.execute(delete(Call).where(Call.id == call_id, Call.status == CallStatus.CREATED))
        await task_life.move(session, task.user_id, task.id, task.previous_status, reason=reason,
                             only_from=[TaskStatus.IN_PROGRESS], next_action_time=utcnow(),
                             also=task_life.GIVE_BACK_CLAIM, event_type="task.deferred")
        await session.commit()


def _publish_task(events: EventHub | None, task: ClaimedTask, status: TaskStatus) -> None:
    task_life.task_updated(events, task.user_id, task.id, task.campaign_id, status)
