"""A task's life: its states, the moves allowed between them, and the only functions that move a task.

Every other module asks this one: `move` (one task), `move_many` (a chunk of a bulk change), `claim_due` (the
scheduler's claim), `release_held` / `clear_held` (the until-one-succeeds hold). Each move is one conditional
UPDATE scoped by user_id, so two racing writers never both win; each writes its task_events row (a claim excepted:
see `claim_due`) and, for task.completed / task.failed, enqueues the webhook in the same transaction. Callers
commit, and publish `task.updated` after their commit (`task_updated` builds it).

Not due: ON_HOLD (held for the user's review, or paused: the pause is kept in context["paused"]) and any task
with `held` set (an until-one-succeeds campaign's target waiting for its turn). Due: PENDING and RETRY_SCHEDULED
whose next_action_time has come.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import JSON, CursorResult, Table, bindparam, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db import webhooks
from db.models import Campaign, CampaignStatus, Task, TaskEvent, TaskStatus, User
from db.types import UTCDateTime, utcnow

P, Q, G, H, R = (TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.IN_PROGRESS, TaskStatus.ON_HOLD,
                 TaskStatus.RETRY_SCHEDULED)
C, F, X, D = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.CANCELLED_DND

# P pending, Q queued, G in proGress, H on hold, R retry scheduled; C completed, F failed, X cancelled,
# D cancelled (do not call). From (row) -> the states a task may move to. Who makes each move:
#   P/R -> Q          the scheduler claims a due task              Q -> G      the initiator dials it
#   Q -> P/R/H        the claim given back (window closed)         Q/G -> D    the number is on a do-not-call list
#   Q/G -> R/F/G      a call ended (outcomes) or was analyzed      G -> C/F/D  the analyzer's verdict
#   G -> H            analysis gave up: held for the user's review G -> P/R    a dial never reached Asterisk, or
#   P/R/H -> H        paused by the user (previous state in context)            recovery of a stuck task
#   H -> P/R/H        resumed (back to the state before the pause) P/R/H -> P  "call now"
#   C/F/X -> P        "retry now"                                  P/R/F -> G  the callee called back
#   any open -> X     cancelled (user, or the campaign's goal met) any -> D    call-start found the number listed
ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    P: frozenset({Q, H, P, G, X, D}),
    R: frozenset({Q, H, P, G, X, D}),
    H: frozenset({P, R, H, X, D}),
    Q: frozenset({P, R, H, G, F, X, D}),
    G: frozenset({P, R, H, G, C, F, X, D}),
    C: frozenset({P}),
    F: frozenset({P, G, D}),
    X: frozenset({P}),
    D: frozenset({D}),
}

DUE = (P, R)            # and next_action_time <= now, not held, attempts left, campaign active, user enabled
LIVE = (Q, G)           # a call is being placed or is in progress
OPEN = tuple(status for status in TaskStatus if not status.is_terminal)
FINISHED = tuple(status for status in TaskStatus if status.is_terminal)


def retry_or_fail(attempt_count: int, max_attempts: int, retry_at: datetime,
                  retry_as: TaskStatus = R) -> tuple[TaskStatus, datetime | None]:
    """After a call (or its absence) that did not finish the task: due again at `retry_at` (as `retry_as`) while
    attempts are left, else failed."""
    if attempt_count >= max_attempts:
        return F, None
    return retry_as, retry_at


def sources(to: TaskStatus) -> tuple[TaskStatus, ...]:
    """The states a task may move to `to` from."""
    return tuple(status for status in TaskStatus if to in ALLOWED[status])


def _rowcount(result: object) -> int:
    """Rows an UPDATE changed (session.execute is typed as returning a Result; an UPDATE's is a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount


class IllegalMove(ValueError):
    """A caller asked for a move the table does not allow (a programming error, not a race)."""


def _from(to: TaskStatus, only_from: Iterable[TaskStatus] | None) -> list[TaskStatus]:
    """The states a move to `to` may start from: `only_from` (the caller's condition) narrowed to the table's."""
    allowed = sources(to)
    if only_from is None:
        return list(allowed)
    asked = [status for status in only_from if status in allowed]
    if not asked:
        raise IllegalMove(f"a task cannot move to {to.value} from {', '.join(s.value for s in only_from)}")
    return asked


async def move(session: AsyncSession, user_id: int, task_id: int, to: TaskStatus, *, reason: str | None = None,
               only_from: Iterable[TaskStatus] | None = None, next_action_time: datetime | None = None,
               unchanged_since: datetime | None = None, also: dict[str, Any] | None = None,
               event_type: str | None = None, payload: dict[str, Any] | None = None) -> bool:
    """Move one of the user's tasks to `to` if it is in one of `only_from` that the table allows (default: all)
    and, with `unchanged_since`, not written since that updated_at. `also` sets other columns in the same UPDATE
    (e.g. the attempt a claim counted, given back). Records task_events `event_type` (default "task.<to>") and, on
    completed / failed, the webhook. Returns whether it moved; the caller commits."""
    now = utcnow()
    values: dict[str, Any] = {"status": to, "status_reason": reason, "updated_at": now, **(also or {})}
    if next_action_time is not None:
        values["next_action_time"] = next_action_time
    query = update(Task).where(Task.id == task_id, Task.user_id == user_id, Task.status.in_(_from(to, only_from)))
    if unchanged_since is not None:
        query = query.where(Task.updated_at == unchanged_since)
    if _rowcount(await session.execute(query.values(**values))) != 1:
        return False
    session.add(TaskEvent(user_id=user_id, task_id=task_id, type=event_type or f"task.{to.value}",
                          reason=reason or "", payload=payload or {}, at=now))
    if to in (C, F):
        await webhooks.task_finished(session, user_id, task_id, to)   # the outbox, in this transaction
    await session.flush()
    return True


class Publisher(Protocol):
    def publish(self, user_id: int, kind: str, data: dict[str, Any]) -> None: ...


def task_updated(events: Publisher | None, user_id: int, task_id: int, campaign_id: int,
                 status: TaskStatus) -> None:
    """Tell the user's pages a task moved (after the commit that moved it)."""
    if events is not None:
        events.publish(user_id, "task.updated", {"task_id": task_id, "campaign_id": campaign_id,
                                                 "status": status.value})


# ---------------------------------------------------------------- bulk moves (a whole campaign's controls, its goal)
# Set-based statements, one chunk of at most repo.BULK_CHUNK_ROWS rows per call: a 10,000-task campaign costs ~20
# chunks of 2 statements (bench/bench_bulk_writes.py).

_TASKS = cast(Table, Task.__table__)
_TASK_EVENTS = cast(Table, TaskEvent.__table__)


@dataclass(frozen=True)
class TaskMove:
    """One task's move in a bulk change, decided on the task as it was when last updated at `read_at`."""

    task_id: int
    read_at: datetime          # the task's updated_at when it was read: every write of a task changes it
    status: TaskStatus
    next_action_time: datetime
    context: dict[str, Any] | None = None   # the task's new context; None leaves it as it is
    was: TaskStatus | None = None            # the status it was read in, checked against ALLOWED


async def move_many(session: AsyncSession, user_id: int, moves: Sequence[TaskMove], reason: str,
                    event_type: str) -> list[int]:
    """Move several of the user's tasks, each only if it has not changed since it was read (its updated_at: a
    task the scheduler claimed meanwhile is left alone), and record a task_events row `event_type` for each that
    moved. Two statements whatever the number of moves: an executemany UPDATE, then an INSERT ... SELECT of the
    events, which returns the ids that moved (the rows now carrying this move's reason and time). All moves carry
    a context, or none does. No bulk move finishes a task as completed / failed (those have webhooks: `move`).
    (The UPDATE finds each row by id and updated_at only: with the status in the WHERE, PostgreSQL picks the
    (user_id, status) index for it on a freshly imported table, 2 ms a row; `was` is checked here instead.)"""
    if not moves:
        return []
    for one in moves:
        if one.status in (C, F) or (one.was is not None and one.status not in ALLOWED[one.was]):
            raise IllegalMove(f"task {one.task_id}: no bulk move from {one.was} to {one.status.value}")
    at = utcnow()
    values: dict[str, Any] = {"status": bindparam("to_status"), "next_action_time": bindparam("to_time"),
                              "status_reason": reason, "updated_at": at}
    if moves[0].context is not None:
        values["context"] = bindparam("to_context")
    statement = (
        update(_TASKS)
        .where(_TASKS.c.id == bindparam("b_id"), _TASKS.c.user_id == user_id,
               _TASKS.c.updated_at == bindparam("b_read_at"))
        .values(**values)
    )
    params = [{"b_id": one.task_id, "b_read_at": one.read_at, "to_status": one.status,
               "to_time": one.next_action_time}
              | ({"to_context": one.context} if one.context is not None else {}) for one in moves]
    connection = await session.connection()
    await connection.execute(statement, params)
    moved = (
        select(_TASKS.c.user_id, _TASKS.c.id, literal(event_type), literal(reason), literal({}, JSON()),
               literal(at, UTCDateTime()))
        .where(_TASKS.c.id.in_([one.task_id for one in moves]), _TASKS.c.user_id == user_id,
               _TASKS.c.updated_at == at, _TASKS.c.status_reason == reason)
    )
    events = insert(_TASK_EVENTS).from_select(["user_id", "task_id", "type", "reason", "payload", "at"], moved)
    return sorted((await connection.execute(events.returning(_TASK_EVENTS.c.task_id))).scalars())


# ---------------------------------------------------------------- the hold of an until-one-succeeds campaign


async def release_held(session: AsyncSession, user_id: int, task_id: int, *, was: TaskStatus, reason: str,
                       next_action_time: datetime | None = None, context: dict[str, Any] | None = None,
                       payload: dict[str, Any] | None = None) -> bool:
    """A held target's turn has come: clear `held` (it is due again if its status is) if it is still held and
    `was`; records task_events "goal.released"."""
    now = utcnow()
    values: dict[str, Any] = {"held": False, "updated_at": now}
    if next_action_time is not None:
        values["next_action_time"] = next_action_time
    if context is not None:
        values["context"] = context
    result = await session.execute(
        update(Task).where(Task.id == task_id, Task.user_id == user_id, Task.held.is_(True), Task.status == was)
        .values(**values))
    if _rowcount(result) != 1:
        return False
    session.add(TaskEvent(user_id=user_id, task_id=task_id, type="goal.released", reason=reason,
                          payload=payload or {}, at=now))
    await session.flush()
    return True


async def clear_held(session: AsyncSession, user_id: int, task_ids: Iterable[int]) -> None:
    """These (just cancelled) tasks wait for nothing any more."""
    ids = list(task_ids)
    if ids:
        await session.execute(update(Task).where(Task.id.in_(ids), Task.user_id == user_id, Task.held.is_(True))
                              .values(held=False))


# ---------------------------------------------------------------- the scheduler's claim


@dataclass(frozen=True)
class ClaimedTask:
    """A task a scheduler now owns (status `queued`, attempt already counted)."""

    id: int
    user_id: int
    campaign_id: int
    phone_number: str
    attempt_count: int
    max_attempts: int
    previous_status: TaskStatus


def _due_conditions(now: datetime, exclude_user_ids: Iterable[int]) -> list[Any]:
    # Every user's tasks, by design: the scheduler serves all tenants; a claimed row carries its user_id, and
    # every later move of it is scoped by that user_id.
    conditions = [
        Task.status.in_(DUE),
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


async def claim_due(session: AsyncSession, *, claimer: str, limit: int, now: datetime,
                    exclude_user_ids: Iterable[int] = ()) -> list[ClaimedTask]:
    """Move up to `limit` due tasks of any user to QUEUED for `claimer`, counting the attempt; never a task another
    claimer holds. No task_events row: a claim is followed at once by the dial (`move` to in_progress, which
    writes one) or its release (which writes one), and the claim runs every tick over many tasks."""
    if limit <= 0:
        return []
    if session.get_bind().dialect.name == "postgresql":
        return await _claim_postgresql(session, claimer, limit, now, exclude_user_ids)
    return await _claim_sqlite(session, claimer, limit, now, exclude_user_ids)


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
        .values(status=Q, attempt_count=Task.attempt_count + 1, claimed_by=claimer,
                claimed_at=now, updated_at=now, status_reason=None)
        .returning(Task.id, Task.user_id, Task.campaign_id, Task.phone_number, Task.attempt_count,
                   Task.max_attempts, due.c.previous_status)
    )
    rows: Sequence[Any] = (await session.execute(statement)).all()
    claimed = [ClaimedTask(task_id, user_id, campaign_id, number, attempts, max_attempts, TaskStatus(previous))
               for task_id, user_id, campaign_id, number, attempts, max_attempts, previous in rows]
    return sorted(claimed, key=lambda task: task.id)


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
            .where(Task.id == task_id, Task.user_id == user_id, Task.status == status,
                   Task.attempt_count == attempts, Task.next_action_time <= now)
            .values(status=Q, attempt_count=attempts + 1, claimed_by=claimer, claimed_at=now,
                    updated_at=now, status_reason=None)
        )
        if _rowcount(result) == 1:
            claimed.append(ClaimedTask(task_id, user_id, campaign_id, number, attempts + 1, max_attempts,
                                       TaskStatus(status)))
    return claimed


GIVE_BACK_CLAIM = {"attempt_count": Task.attempt_count - 1, "claimed_by": None, "claimed_at": None}
"""`also` for a move that undoes a claim: the attempt it counted is not spent."""
