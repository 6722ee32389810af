"""Pause, resume and cancel a campaign or one task, on the user's behalf.

A paused task is put ON_HOLD, a state that is never due (db/task_life.py), so no scheduler claims it; what it
was before (status and time, e.g. a retry in two hours) is kept in
`tasks.context["paused"]` and restored on resume. A task with a call in progress cannot be paused (the call is
already under way) but can be cancelled: the task is cancelled first and committed, then the live call's
channel is hung up through the AMI controller when it runs in this process, so the call's end does not move a
cancelled task on (`finish_call` only moves queued / in-progress tasks).

A campaign's own status changes first, in a transaction of its own: from then on the scheduler claims none of
its tasks (it only claims tasks of active campaigns). Its tasks then move in chunks of repo.BULK_CHUNK_ROWS, each
chunk one short transaction of three statements (read the chunk, one UPDATE for all its moves, one INSERT ...
SELECT of their task events), so pausing 10,000 tasks never holds SQLite's write lock for more than a few
milliseconds at a time and other tenants' writes go in between. Every move is conditional on the task being
as it was read (its updated_at): a task the scheduler claimed meanwhile is left as it is.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from db import costs, repo, task_life
from db.models import CallStatus, CampaignStatus, TaskStatus
from db.task_life import TaskMove
from db.types import utcnow
from opendeep.runtime import Runtime

log = logging.getLogger(__name__)

PAUSABLE = (TaskStatus.PENDING, TaskStatus.RETRY_SCHEDULED, TaskStatus.ON_HOLD)
LIVE = task_life.LIVE
NOT_FINISHED = task_life.OPEN


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


@dataclass(frozen=True)
class _Step:
    """What an action does to each task: which tasks it reads, how it moves one (None: not this one), the reason
    and task event it records, and whether calls in progress are hung up."""

    statuses: tuple[TaskStatus, ...]
    move: Callable[[Row], TaskMove | None]
    reason: str
    event_type: str
    ends_calls: bool = False


def _step(action: ControlAction, by: PausedBy) -> _Step:
    if action is ControlAction.PAUSE:
        return _Step(PAUSABLE, lambda task: _pause_move(task, by), f"paused by {by.value}", "task.paused")
    if action is ControlAction.RESUME:
        only_by = PausedBy.CAMPAIGN if by is PausedBy.CAMPAIGN else None
        return _Step((TaskStatus.ON_HOLD,), lambda task: _resume_move(task, only_by), "resumed by user",
                     "task.resumed")
    return _Step(NOT_FINISHED, _cancel_move, "cancelled by user", "task.cancelled", ends_calls=True)


async def control_task(runtime: Runtime, user_id: int, task_id: int, action: ControlAction) -> ControlResult:
    """Pause, resume or cancel one of the user's tasks."""
    step = _step(action, PausedBy.USER)
    async with runtime.sessions() as session:
        found = await repo.task_states(session, user_id, task_ids=[task_id])
        if not found:
            raise NotFound(f"task {task_id} not found")
        task = found[0]
        if action is ControlAction.PAUSE and task.status in LIVE:
            raise ControlError("call_in_progress", f"task {task_id} has a call in progress; cancel the task "
                                                   "to hang up, or pause it after the call ends")
        move = step.move(task)
        refusal = {ControlAction.PAUSE: ("not_pausable", f"task {task_id} is {task.status.value}; only pending, "
                                                         "scheduled or held tasks can be paused"),
                   ControlAction.RESUME: ("not_paused", f"task {task_id} is not paused"),
                   ControlAction.CANCEL: ("already_finished", f"task {task_id} is already {task.status.value}")}
        if move is None:
            raise ControlError(*refusal[action])
        if not await task_life.move_many(session, user_id, [move], reason=step.reason, event_type=step.event_type):
            raise ControlError(refusal[action][0], f"task {task_id} changed meanwhile (a call may have started); "
                                                   "look at it again and retry")
        channels = await _live_channels(session, user_id, [task]) if step.ends_calls else []
        await session.commit()
    _publish(runtime, user_id, task.campaign_id, [move])
    result = ControlResult(f"task {task_id} {_DONE[action]}", [task_id])
    await _hang_up(runtime, channels, result)
    return result


_DONE = {ControlAction.PAUSE: "paused", ControlAction.RESUME: "resumed", ControlAction.CANCEL: "cancelled"}
# action -> (the campaign statuses it applies to, the status it sets)
_CAMPAIGN_MOVES = {
    ControlAction.PAUSE: ((CampaignStatus.ACTIVE,), CampaignStatus.PAUSED),
    ControlAction.RESUME: ((CampaignStatus.PAUSED,), CampaignStatus.ACTIVE),
    ControlAction.CANCEL: ((CampaignStatus.ACTIVE, CampaignStatus.PAUSED), CampaignStatus.CANCELLED),
}


async def control_campaign(runtime: Runtime, user_id: int, campaign_id: int,
                           action: ControlAction) -> ControlResult:
    """Pause, resume or cancel one of the user's campaigns and its tasks (in chunks: see the module's note)."""
    applies_to, new_status = _CAMPAIGN_MOVES[action]
    async with runtime.sessions() as session:
        campaign = await repo.get_campaign(session, user_id, campaign_id)
        if campaign is None:
            raise NotFound(f"campaign {campaign_id} not found")
        if campaign.status not in applies_to:
            if action is ControlAction.CANCEL:
                raise ControlError("already_finished", f"campaign {campaign_id} is already {campaign.status.value}")
            code, wanted = ("not_active", "active") if action is ControlAction.PAUSE else ("not_paused", "paused")
            raise ControlError(code, f"campaign {campaign_id} is {campaign.status.value}, not {wanted}")
        if action is ControlAction.RESUME and (refusal := costs.budget_refusal(campaign)):
            raise ControlError("budget_spent", f"campaign {campaign_id} cannot resume: {refusal}")
        if not await repo.set_campaign_status(session, user_id, campaign_id, new_status,
                                              only_from=(campaign.status,)):
            raise ControlError("changed", f"campaign {campaign_id} changed meanwhile; look at it again and retry")
        if action is ControlAction.RESUME:
            await costs.clear_pause_reason(session, user_id, campaign_id)
        live = await repo.count_tasks(session, user_id, campaign_id, LIVE) if action is ControlAction.PAUSE else 0
        await session.commit()
    changed, channels = await _move_campaign_tasks(runtime, user_id, campaign_id, new_status,
                                                   _step(action, PausedBy.CAMPAIGN))
    if action is ControlAction.PAUSE:
        message = f"campaign {campaign_id} paused ({len(changed)} task(s) held" + (
            f"; {live} call(s) in progress finish first)" if live else ")")
    elif action is ControlAction.RESUME:
        message = f"campaign {campaign_id} resumed ({len(changed)} task(s) due again)"
    else:
        message = f"campaign {campaign_id} cancelled ({len(changed)} task(s) cancelled)"
    runtime.events.publish(user_id, "campaign.updated", {"campaign_id": campaign_id, "action": action.value})
    result = ControlResult(message, changed)
    await _hang_up(runtime, channels, result)
    return result


async def _move_campaign_tasks(runtime: Runtime, user_id: int, campaign_id: int, campaign_status: CampaignStatus,
                               step: _Step) -> tuple[list[int], list[str]]:
    """Apply `step` to the campaign's tasks, one committed chunk at a time, while the campaign keeps
    `campaign_status`; returns the ids that moved and the channels of cancelled calls in progress."""
    changed: list[int] = []
    channels: list[str] = []
    after = 0
    while True:
        async with runtime.sessions() as session:
            chunk = await repo.task_states(session, user_id, campaign_id=campaign_id, statuses=step.statuses,
                                           campaign_status=campaign_status, after_id=after)
            moves = [move for move in map(step.move, chunk) if move is not None]
            moved = set(await task_life.move_many(session, user_id, moves, reason=step.reason,
                                              event_type=step.event_type))
            if moved and step.ends_calls:
                channels += await _live_channels(session, user_id, [task for task in chunk if task.id in moved])
            await session.commit()
        _publish(runtime, user_id, campaign_id, [move for move in moves if move.task_id in moved])
        changed += sorted(moved)
        if len(chunk) < repo.BULK_CHUNK_ROWS:
            return changed, channels
        after = chunk[-1].id


def _pause_move(task: Row, by: PausedBy) -> TaskMove | None:
    if task.status not in PAUSABLE or "paused" in (task.context or {}):
        return None
    previous = {"status": task.status.value, "next_action_time": task.next_action_time.isoformat(),
                "by": by.value}
    return TaskMove(task.id, task.updated_at, TaskStatus.ON_HOLD, task.next_action_time,   # ON_HOLD: not due
                    {**(task.context or {}), "paused": previous}, was=task.status)


def _resume_move(task: Row, only_by: PausedBy | None) -> TaskMove | None:
    paused = (task.context or {}).get("paused")
    if not paused or task.status is not TaskStatus.ON_HOLD:
        return None
    if only_by is not None and paused.get("by") != only_by.value:
        return None   # paused on its own: resuming the campaign leaves it paused
    status = TaskStatus(paused.get("status", TaskStatus.PENDING.value))
    when = datetime.fromisoformat(paused["next_action_time"]) if paused.get("next_action_time") else utcnow()
    context = {key: value for key, value in task.context.items() if key != "paused"}
    return TaskMove(task.id, task.updated_at, status, when, context, was=task.status)


def _cancel_move(task: Row) -> TaskMove | None:
    if task.status.is_terminal:
        return None
    return TaskMove(task.id, task.updated_at, TaskStatus.CANCELLED, task.next_action_time, was=task.status)


async def _live_channels(session: AsyncSession, user_id: int, tasks: Sequence[Row]) -> list[str]:
    """The channels of the calls in progress of these (just cancelled) tasks: few, as calls run in parallel."""
    channels: list[str] = []
    for task in tasks:
        if task.status in LIVE:
            channels += [call.channel for call in await repo.list_calls(session, user_id, task.id)
                         if call.status is not CallStatus.ENDED and call.channel]
    return channels


def _publish(runtime: Runtime, user_id: int, campaign_id: int, moves: Sequence[TaskMove]) -> None:
    for move in moves:
        task_life.task_updated(runtime.events, user_id, move.task_id, campaign_id, move.status)


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
