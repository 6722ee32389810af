"""The task lifecycle manager (the seeds' meta-OODA agent): a periodic look at every tenant's open tasks.

Each pass, tenant by tenant, it
- recovers tasks stuck in queued / in_progress with no live call (after a crash, or a lost call-end): an open
  call row older than STUCK_TASK_SECONDS is ended first (as failed, "recovered after restart"), so the task is
  only made due again once nothing can still be ringing: no double dialing;
- carries what earlier calls learned into `tasks.inter_call_context`, which the call AI's instructions include;
- raises the priority of a task whose callee asked for a callback, so the scheduler rings on time;
- posts a check-in notification for tasks open for a long time;
- keeps until-one-succeeds campaigns to their goal (opendeep/campaign_goal.py: cancel the rest once one target
  succeeded, else release the next target with what partial outcomes learned; the after-call component also
  runs this step at its poll interval, so the next call does not wait for a lifecycle pass);
and, once per pass, deletes call recordings older than RECORDING_RETENTION_DAYS.

These are plain rules: the judgment about a call (what it achieved, when to retry) is the post-call
analyzer's LLM verdict, which this module reads. Every decision is a task_event with its reason.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo, task_life
from db.models import (
    ANALYZED_OUTCOMES,
    TERMINAL_TASK_STATUSES,
    Call,
    CallOutcome,
    CallStatus,
    Task,
    TaskEvent,
    TaskStatus,
)
from db.typed import rows_changed
from db.types import utcnow
from opendeep.best_of import BestOfKeeper
from opendeep.campaign_goal import GoalPass, HangUp, keep_goals
from opendeep.periodic import PassCount, run_periodically
from opendeep.recordings import delete_expired_recordings
from opendeep.settings import Settings

if TYPE_CHECKING:
    from opendeep.events import EventHub

log = logging.getLogger(__name__)

OPEN_TASK_STATUSES = (TaskStatus.QUEUED, TaskStatus.IN_PROGRESS)
RECOVERED_REASON = "recovered after restart"

# The call AI reads this at the start of every call: keep it short enough not to crowd out the objective.
MAX_CONTEXT_CHARS = 2000
CALLBACK_PRIORITY = 10


def build_inter_call_context(calls: list[Call]) -> str:
    """What earlier attempts learned, oldest first, one line per analyzed call (empty if nothing learned).

    Rebuilt from the calls' stored verdicts each time, so running it twice never duplicates a line.
    """
    lines: list[str] = []
    for call in sorted(calls, key=lambda c: (c.attempt_number, c.id)):
        analysis = call.analysis or {}
        summary = str(analysis.get("summary") or "").strip()
        if not summary:
            continue  # an unconnected call, or an analysis that failed: nothing learned
        when = f"{call.ended_at:%Y-%m-%d %H:%M} UTC" if call.ended_at else "earlier"
        line = f"Call {call.attempt_number} ({when}, {analysis.get('outcome', '?')}): {summary}"
        notes = str(analysis.get("notes_for_next_call") or "").strip()
        if notes:
            line += f" Next time: {notes}"
        facts = [f"{item.get('name')}={item.get('value')}" for item in analysis.get("extracted") or []
                 if isinstance(item, dict)]
        if facts:
            line += f" Facts: {', '.join(facts)}."
        lines.append(line)
    text = "\n".join(lines)
    if len(text) > MAX_CONTEXT_CHARS:  # the latest calls matter most
        text = "..." + text[-(MAX_CONTEXT_CHARS - 3):]
    return text


async def refresh_inter_call_context(session: AsyncSession, user_id: int, task_id: int) -> bool:
    """Write build_inter_call_context() of the task's calls into tasks.inter_call_context; True if it changed."""
    calls = list(await repo.list_calls(session, user_id, task_id))
    text = build_inter_call_context(calls)
    result = await session.execute(
        update(Task).where(Task.id == task_id, Task.user_id == user_id, Task.inter_call_context != text)
        .values(inter_call_context=text)
    )
    return rows_changed(result) == 1


class LifecycleManager:
    """One pass per interval over each tenant's open tasks; see the module docstring for the rules."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession],
                 events: EventHub | None = None, *, checkin_after_seconds: float = 86_400.0,
                 hang_up: HangUp | None = None) -> None:
        self.settings = settings
        self.hang_up = hang_up   # ends a ringing call whose task the goal cancelled (the AMI controller's hangup)
        self.sessions = sessions
        self.events = events
        self.best_of = BestOfKeeper(settings, sessions, events)   # decides best-of campaigns (opendeep/best_of.py)
        # Two loops run the goal step: one best-of decision pass (LLM requests) at a time, and the other loop's
        # until-one-succeeds moves never wait behind it.
        self._best_of_lock = asyncio.Lock()
        self.passes = PassCount()
        self.stuck_after = timedelta(seconds=settings.stuck_task_seconds)
        # An open call row is only ended once no real call could still be on the line (ringing + the hard call
        # limit + slack): ending a live call's row would let the scheduler dial the same person again.
        longest_call = timedelta(seconds=settings.originate_timeout_seconds + settings.max_call_seconds + 60)
        self.open_call_after = max(self.stuck_after, longest_call)
        if longest_call > self.stuck_after:
            log.info("open calls are recovered after %ss (ORIGINATE_TIMEOUT_SECONDS + MAX_CALL_SECONDS + 60), "
                     "not STUCK_TASK_SECONDS=%s", int(longest_call.total_seconds()), settings.stuck_task_seconds)
        self.checkin_after = timedelta(seconds=checkin_after_seconds)

    async def tenants_with_open_tasks(self) -> list[int]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(Task.user_id).where(Task.status.not_in(list(TERMINAL_TASK_STATUSES)))
                .distinct().order_by(Task.user_id)
            )
            return list(rows.all())

    async def run_once(self, now: datetime | None = None) -> dict[str, int]:
        """One pass over every tenant; returns how many of each decision were taken."""
        counts = {"recovered": 0, "context": 0, "priority": 0, "check_in": 0,
                  "recordings_deleted": await asyncio.to_thread(delete_expired_recordings, self.settings,
                                                                now or utcnow())}
        counts["goal_moves"] = await self.keep_goals(now)
        for user_id in await self.tenants_with_open_tasks():
            try:
                for key, value in (await self.run_tenant(user_id, now)).items():
                    counts[key] += value
            except asyncio.CancelledError:
                raise
            except Exception:  # one tenant's bad row must not stop the others' recovery
                log.exception("lifecycle pass failed for user %s", user_id)
        return counts

    async def keep_goals(self, now: datetime | None = None) -> int:
        """The goal step of a pass (see opendeep/campaign_goal.py); returns how many tasks it moved."""
        done: GoalPass = await keep_goals(self.sessions, events=self.events, hang_up=self.hang_up, now=now)
        decided = 0
        if not self._best_of_lock.locked():   # the other loop is deciding (an LLM request): its turn, not ours
            async with self._best_of_lock:
                decided = len((await self.best_of.run_once(now)).decided)
        return len(done.cancelled) + len(done.released) + decided

    async def run_forever(self, interval: float) -> None:
        """The first pass runs at once (startup after a crash), then every `interval` seconds until cancelled."""
        await run_periodically(self.run_once, interval, "lifecycle pass", self.passes)

    async def run_tenant(self, user_id: int, now: datetime | None = None) -> dict[str, int]:
        """Every rule, for one tenant."""
        now = now or utcnow()
        published: list[tuple[str, dict[str, Any]]] = []
        counts = {"recovered": 0, "context": 0, "priority": 0, "check_in": 0}
        async with self.sessions() as session, session.begin():
            tasks = (await session.scalars(
                select(Task).where(Task.user_id == user_id, Task.status.not_in(list(TERMINAL_TASK_STATUSES)))
                .order_by(Task.id)
            )).all()
            calls_of: dict[int, list[Call]] = {task.id: [] for task in tasks}
            if tasks:  # one query for every open task's calls, not one per task
                rows = await session.scalars(
                    select(Call).where(Call.user_id == user_id, Call.task_id.in_(list(calls_of)))
                    .order_by(Call.task_id, Call.attempt_number, Call.id)
                )
                for call in rows.all():
                    calls_of[call.task_id].append(call)
            for task in tasks:
                calls = calls_of[task.id]
                if task.status in OPEN_TASK_STATUSES:
                    if await self._recover_if_stuck(session, task, calls, now, published):
                        counts["recovered"] += 1
                        continue
                if (build_inter_call_context(calls) != task.inter_call_context
                        and await refresh_inter_call_context(session, user_id, task.id)):
                    counts["context"] += 1
                    await repo.record_task_event(session, user_id, task.id, "lifecycle.context",
                                                 "carried what earlier calls learned into the next call")
                if await self._raise_priority_for_callback(session, task, calls):
                    counts["priority"] += 1
                if await self._check_in(session, task, calls, now, published):
                    counts["check_in"] += 1
        for kind, payload in published:  # after commit only
            if self.events is not None:
                self.events.publish(user_id, kind, payload)
        return counts

    async def _recover_if_stuck(self, session: AsyncSession, task: Task, calls: list[Call], now: datetime,
                                published: list[tuple[str, dict[str, Any]]]) -> bool:
        from ami_controller.outcomes import finish_call  # the one place that ends a call and moves its task

        open_calls = [c for c in calls if c.status is not CallStatus.ENDED]
        if open_calls:
            stale = [c for c in open_calls if now - c.created_at > self.open_call_after]
            if len(stale) < len(open_calls):
                return False  # a recent call may still be live: leave the task to it
            ended_here = 0
            for call in stale:
                # Answered: a conversation happened, the analyzer judges the partial transcript. Else: a dead dial.
                outcome = CallOutcome.FAILED_AI if call.answered_at else CallOutcome.FAILED
                left = call.status.value  # before finish_call updates the row (and this object with it)
                ended = await finish_call(session, self.settings, user_id=task.user_id, call_id=call.id,
                                          outcome=outcome, source=f"lifecycle: {RECOVERED_REASON}")
                if not ended:
                    continue  # a real call-end (or another manager) got there first: its rules moved the task
                ended_here += 1
                reason = (f"{RECOVERED_REASON}: call {call.id} was left {left} since "
                          f"{call.created_at:%Y-%m-%d %H:%M} UTC with no call-end; ended as {outcome.value}")
                await repo.record_call_event(session, task.user_id, call.id, "lifecycle.recovered",
                                             {"reason": reason})
                await repo.record_task_event(session, task.user_id, task.id, "lifecycle.recovered", reason,
                                             {"call_id": call.id, "outcome": outcome.value})
            if not ended_here:
                return False
            await session.refresh(task)
            published.append(("task.updated", {"task_id": task.id, "campaign_id": task.campaign_id,
                                               "status": task.status.value}))
            log.warning("task %s recovered: %d open call(s) ended", task.id, ended_here)
            return True

        latest = calls[-1] if calls else None
        if latest is not None and latest.analyzed_at is None and latest.outcome in ANALYZED_OUTCOMES:
            return False  # ended and awaiting the post-call analyzer: not stuck
        since = task.claimed_at or task.updated_at
        if now - since <= self.stuck_after:
            return False  # the scheduler may be between claiming the task and creating the call
        # Nothing is ringing: make the task due again. An attempt counts only if a call row was created for it.
        dialed = len(calls)
        attempts = min(task.attempt_count, dialed)
        status, when = task_life.retry_or_fail(attempts, task.max_attempts, now,
                                               retry_as=TaskStatus.RETRY_SCHEDULED if attempts else TaskStatus.PENDING)
        if when is None:
            reason = (f"{RECOVERED_REASON}: task was left {task.status.value} with no live call; "
                      f"all {task.max_attempts} attempts used")
        else:
            reason = (f"{RECOVERED_REASON}: task was left {task.status.value} since {since:%Y-%m-%d %H:%M} UTC "
                      f"with no live call; due again ({attempts} of {task.max_attempts} attempts used)")
        moved = await task_life.move(
            session, task.user_id, task.id, status, reason=reason, only_from=[task.status],
            unchanged_since=task.updated_at,   # nobody touched it since we looked
            next_action_time=when, also={"attempt_count": attempts, "claimed_by": None, "claimed_at": None},
            event_type="lifecycle.recovered",
            payload={"from": task.status.value, "to": status.value, "attempt_count": attempts})
        if not moved:
            return False
        published.append(("task.updated", {"task_id": task.id, "campaign_id": task.campaign_id,
                                           "status": status.value}))
        log.warning("task %s recovered: %s", task.id, reason)
        return True

    async def _raise_priority_for_callback(self, session: AsyncSession, task: Task, calls: list[Call]) -> bool:
        if task.status is not TaskStatus.RETRY_SCHEDULED or task.priority >= CALLBACK_PRIORITY:
            return False
        latest = next((c for c in reversed(calls) if c.analysis), None)
        if latest is None or not (latest.analysis or {}).get("callback_requested"):
            return False
        result = await session.execute(
            update(Task).where(Task.id == task.id, Task.user_id == task.user_id, Task.priority < CALLBACK_PRIORITY)
            .values(priority=CALLBACK_PRIORITY)
        )
        if rows_changed(result) != 1:
            return False
        reason = (f"callee asked for a callback on call {latest.id}: priority {task.priority} -> "
                  f"{CALLBACK_PRIORITY} so the scheduler rings at {task.next_action_time:%Y-%m-%d %H:%M} UTC")
        await repo.record_task_event(session, task.user_id, task.id, "lifecycle.priority", reason,
                                     {"call_id": latest.id, "priority": CALLBACK_PRIORITY})
        return True

    async def _check_in(self, session: AsyncSession, task: Task, calls: list[Call], now: datetime,
                        published: list[tuple[str, dict[str, Any]]]) -> bool:
        if now - task.created_at <= self.checkin_after:
            return False
        last = await session.scalar(
            select(TaskEvent.at).where(TaskEvent.user_id == task.user_id, TaskEvent.task_id == task.id,
                                       TaskEvent.type == "lifecycle.check_in")
            .order_by(TaskEvent.at.desc()).limit(1)
        )
        if last is not None and now - last <= self.checkin_after:
            return False  # one check-in per period, not one per pass
        days = (now - task.created_at) / timedelta(days=1)
        latest = calls[-1] if calls else None
        last_outcome = (latest.analysis or {}).get("outcome") if latest else None
        last_outcome = last_outcome or (latest.outcome.value if latest and latest.outcome else "not called yet")
        message = (f"Task '{task.target_name}' has been open for {days:.1f} days: {task.status.value}, "
                   f"{task.attempt_count} of {task.max_attempts} attempts, last result {last_outcome}"
                   + (f", next try {task.next_action_time:%Y-%m-%d %H:%M} UTC"
                      if task.status in (TaskStatus.PENDING, TaskStatus.RETRY_SCHEDULED) else "")
                   + ". Keep trying, change it, or cancel it?")
        await repo.record_task_event(session, task.user_id, task.id, "lifecycle.check_in", message)
        note = await repo.add_notification(session, task.user_id, "task.check_in", message,
                                           {"task_id": task.id, "campaign_id": task.campaign_id})
        published.append(("notification", {"id": note.id, "kind": note.kind, "message": note.message}))
        return True
