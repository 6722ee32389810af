"""Pause, resume and cancel a campaign or one task, on the user's behalf.

A paused task is put ON_HOLD with a next action time far in the future, so any scheduler that claims due tasks
by status and time skips it; what it was before (status and time, e.g. a retry in two hours) is kept in
`tasks.context["paused"]` and restored on resume. A task with a call in progress cannot be paused (the call is
already under way) but can be cancelled: the task is cancelled first and committed, then the live call's
channel is hung up through the AMI controller when it runs in this process, so the call's end does not move a
cancelled task on (`finish_call` only moves queued / in-progress tasks).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from db import repo
from db.models import CallStatus, CampaignStatus, Task, TaskStatus
from opendeep.runtime import Runtime

log = logging.getLogger("opendeep.webui.controls")

PAUSED_UNTIL = datetime(2999, 1, 1, tzinfo=UTC)   # "never due" for any scheduler comparing times
PAUSABLE = (TaskStatus.PENDING, TaskStatus.RETRY_SCHEDULED, TaskStatus.ON_HOLD)
LIVE = (TaskStatus.QUEUED, TaskStatus.IN_PROGRESS)


class ControlAction(enum.StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


class PausedBy(enum.StrEnum):
    USER = "user"          # this task was paused on its own
    CAMPAIGN = "campaign"  # paused with its campaign; resuming the campaign resumes it


class ControlError(Exception):
    """The action does not apply to the row's current state (HTTP 409); the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NotFound(LookupError):
    """No such campaign / task for this user."""


@dataclass
class ControlResult:
    message: str
    changed_task_ids: list[int] = field(default_factory=list)
    hangup_errors: list[str] = field(default_factory=list)


async def control_task(runtime: Runtime, user_id: int, task_id: int, action: ControlAction) -> ControlResult:
    """Pause, resume or cancel one of the user's tasks."""
    async with runtime.sessions() as session:
        task = await repo.get_task(session, user_id, task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        channels: list[str] = []
        if action is ControlAction.PAUSE:
            if task.status in LIVE:
                raise ControlError("call_in_progress", f"task {task_id} has a call in progress; cancel the task "
                                                       "to hang up, or pause it after the call ends")
            if not await _pause(session, task, PausedBy.USER):
                raise ControlError("not_pausable", f"task {task_id} is {task.status.value}; only pending, "
                                                   "scheduled or held tasks can be paused")
            message = f"task {task_id} paused"
        elif action is ControlAction.RESUME:
            if not await _resume(session, task, None):
                raise ControlError("not_paused", f"task {task_id} is not paused")
            message = f"task {task_id} resumed"
        else:
            if not await _cancel(session, task, channels):
                raise ControlError("already_finished", f"task {task_id} is already {task.status.value}")
            message = f"task {task_id} cancelled"
        await session.commit()
        _publish(runtime, [task])
    result = ControlResult(message, [task.id])
    await _hang_up(runtime, channels, result)
    return result


async def control_campaign(runtime: Runtime, user_id: int, campaign_id: int,
                           action: ControlAction) -> ControlResult:
    """Pause, resume or cancel one of the user's campaigns and its tasks."""
    async with runtime.sessions() as session:
        campaign = await repo.get_campaign(session, user_id, campaign_id)
        if campaign is None:
            raise NotFound(f"campaign {campaign_id} not found")
        tasks = list(await repo.list_tasks(session, user_id, campaign_id))
        changed: list[Task] = []
        channels: list[str] = []
        if action is ControlAction.PAUSE:
            if campaign.status is not CampaignStatus.ACTIVE:
                raise ControlError("not_active", f"campaign {campaign_id} is {campaign.status.value}, not active")
            await repo.set_campaign_status(session, user_id, campaign_id, CampaignStatus.PAUSED)
            changed = [task for task in tasks if await _pause(session, task, PausedBy.CAMPAIGN)]
            live = sum(task.status in LIVE for task in tasks)
            message = f"campaign {campaign_id} paused ({len(changed)} task(s) held" + (
                f"; {live} call(s) in progress finish first)" if live else ")")
        elif action is ControlAction.RESUME:
            if campaign.status is not CampaignStatus.PAUSED:
                raise ControlError("not_paused", f"campaign {campaign_id} is {campaign.status.value}, not paused")
            await repo.set_campaign_status(session, user_id, campaign_id, CampaignStatus.ACTIVE)
            changed = [task for task in tasks if await _resume(session, task, PausedBy.CAMPAIGN)]
            message = f"campaign {campaign_id} resumed ({len(changed)} task(s) due again)"
        else:
            if campaign.status in (CampaignStatus.CANCELLED, CampaignStatus.COMPLETED):
                raise ControlError("already_finished", f"campaign {campaign_id} is already {campaign.status.value}")
            await repo.set_campaign_status(session, user_id, campaign_id, CampaignStatus.CANCELLED)
            changed = [task for task in tasks if await _cancel(session, task, channels)]
            message = f"campaign {campaign_id} cancelled ({len(changed)} task(s) cancelled)"
        await session.commit()
        _publish(runtime, changed)
    runtime.events.publish(user_id, "campaign.updated", {"campaign_id": campaign_id, "action": action.value})
    result = ControlResult(message, [task.id for task in changed])
    await _hang_up(runtime, channels, result)
    return result


async def _pause(session: AsyncSession, task: Task, by: PausedBy) -> bool:
    if task.status not in PAUSABLE or "paused" in (task.context or {}):
        return False
    previous = {"status": task.status.value, "next_action_time": task.next_action_time.isoformat(),
                "by": by.value}
    if not await repo.set_task_status(session, task.user_id, task.id, TaskStatus.ON_HOLD,
                                      reason=f"paused by {by.value}", next_action_time=PAUSED_UNTIL,
                                      only_from=(task.status,)):
        return False
    task.context = {**(task.context or {}), "paused": previous}   # a new dict so the JSON change is saved
    await repo.record_task_event(session, task.user_id, task.id, "task.paused", f"paused by {by.value}")
    await session.flush()
    await session.refresh(task)
    return True


async def _resume(session: AsyncSession, task: Task, only_by: PausedBy | None) -> bool:
    paused = (task.context or {}).get("paused")
    if not paused or task.status is not TaskStatus.ON_HOLD:
        return False
    if only_by is not None and paused.get("by") != only_by.value:
        return False   # paused on its own: resuming the campaign leaves it paused
    status = TaskStatus(paused.get("status", TaskStatus.PENDING.value))
    when = datetime.fromisoformat(paused["next_action_time"]) if paused.get("next_action_time") else None
    if not await repo.set_task_status(session, task.user_id, task.id, status, reason="resumed by user",
                                      next_action_time=when, only_from=(TaskStatus.ON_HOLD,)):
        return False
    task.context = {key: value for key, value in task.context.items() if key != "paused"}
    await repo.record_task_event(session, task.user_id, task.id, "task.resumed", "resumed by user")
    await session.flush()
    await session.refresh(task)
    return True


async def _cancel(session: AsyncSession, task: Task, channels: list[str]) -> bool:
    if task.status.is_terminal:
        return False
    was_live = task.status in LIVE
    if not await repo.set_task_status(session, task.user_id, task.id, TaskStatus.CANCELLED,
                                      reason="cancelled by user", only_from=(task.status,)):
        return False
    await repo.record_task_event(session, task.user_id, task.id, "task.cancelled", "cancelled by user")
    if was_live:
        for call in await repo.list_calls(session, task.user_id, task.id):
            if call.status is not CallStatus.ENDED and call.channel:
                channels.append(call.channel)
    await session.refresh(task)
    return True


def _publish(runtime: Runtime, tasks: list[Task]) -> None:
    for task in tasks:
        runtime.events.publish(task.user_id, "task.updated", {"task_id": task.id, "campaign_id": task.campaign_id,
                                                              "status": task.status.value})


async def _hang_up(runtime: Runtime, channels: list[str], result: ControlResult) -> None:
    if not channels:
        return
    if runtime.ami is None:
        result.message += "; the call in progress ends on its own (the AMI controller does not run in this process)"
        return
    for channel in channels:
        try:
            await runtime.ami.hangup(channel)
        except Exception as exc:  # AmiError and connection errors: the task stays cancelled either way
            log.warning("hangup of %s failed: %s", channel, exc)
            result.hangup_errors.append(f"{channel}: {exc}")
    result.message += f"; hung up {len(channels) - len(result.hangup_errors)} call(s)"
    if result.hangup_errors:
        result.message += f" ({len(result.hangup_errors)} hangup(s) failed: {'; '.join(result.hangup_errors)})"
