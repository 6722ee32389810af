"""The tenant-scoped repository. Every function that touches tenant data takes `user_id` and filters on it:
a row of another user is simply not found (None / False / empty), never returned or changed.

Functions take an AsyncSession and do not commit; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, case, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from db import webhooks
from db.models import (
    Call,
    CallEvent,
    CallTranscript,
    Campaign,
    CampaignStatus,
    ChatMessage,
    ChatRole,
    ChatSession,
    DndEntry,
    FeedbackRequest,
    FeedbackStatus,
    Notification,
    Speaker,
    Task,
    TaskEvent,
    TaskStatus,
    User,
)
from db.typed import rows_changed, table_of
from db.types import utcnow

BULK_CHUNK_ROWS = 2000
# Rows per transaction of a bulk change (an import, a campaign's pause / resume / cancel): the caller commits after
# each chunk. SQLite has one write lock for the whole file, held from a transaction's first write to its commit; in
# chunks of this size a 10,000-row change holds it for tens of milliseconds at a time (bench/bench_bulk_writes.py:
# 35 ms on SQLite, 75-125 ms on PostgreSQL), and other tenants' writes go between. 500 held it half as long but
# made a 10,000-task pause 1.15 s on PostgreSQL (the goal is 1 s): each chunk is a commit.

# ---------------------------------------------------------------- users (not tenant data: the tenants)


async def create_user(session: AsyncSession, username: str, password_hash: str, *, is_admin: bool = False,
                      profile: dict[str, Any] | None = None) -> User:
    user = User(username=username, password_hash=password_hash, is_admin=is_admin, profile=profile or {})
    session.add(user)
    await session.flush()
    return user


async def get_user_by_username(session: AsyncSession, username: str) -> User | None:
    return await session.scalar(select(User).where(User.username == username))


async def get_user(session: AsyncSession, user_id: int) -> User | None:
    return await session.get(User, user_id)


# ---------------------------------------------------------------- campaigns


async def list_campaigns(session: AsyncSession, user_id: int) -> Sequence[Campaign]:
    rows = await session.scalars(select(Campaign).where(Campaign.user_id == user_id).order_by(Campaign.id.desc()))
    return rows.all()


async def get_campaign(session: AsyncSession, user_id: int, campaign_id: int) -> Campaign | None:
    return await session.scalar(
        select(Campaign).where(Campaign.id == campaign_id, Campaign.user_id == user_id)
    )


async def get_campaign_by_source_key(session: AsyncSession, user_id: int, source_key: str) -> Campaign | None:
    return await session.scalar(
        select(Campaign).where(Campaign.user_id == user_id, Campaign.source_key == source_key)
    )


async def create_campaign(session: AsyncSession, user_id: int, *, name: str, goal: str = "",
                          master_prompt: str = "", window_start: str | None = None,
                          window_end: str | None = None, plan: dict[str, Any] | None = None,
                          source_key: str | None = None) -> Campaign:
    campaign = Campaign(user_id=user_id, name=name, goal=goal, master_prompt=master_prompt,
                        window_start=window_start, window_end=window_end, plan=plan or {},
                        source_key=source_key)
    session.add(campaign)
    await session.flush()
    return campaign


async def set_campaign_status(session: AsyncSession, user_id: int, campaign_id: int, status: CampaignStatus,
                              *, only_from: Iterable[CampaignStatus] | None = None) -> bool:
    """Move a campaign to `status`; with `only_from`, only if it is currently in one of those (of two racing
    clicks on Pause, one wins)."""
    values: dict[str, Any] = {"status": status}
    if status in (CampaignStatus.COMPLETED, CampaignStatus.CANCELLED):
        values["finished_at"] = utcnow()
    query = update(Campaign).where(Campaign.id == campaign_id, Campaign.user_id == user_id)
    if only_from is not None:
        query = query.where(Campaign.status.in_(list(only_from)))
    result = await session.execute(query.values(**values))
    return rows_changed(result) == 1


# ---------------------------------------------------------------- tasks


async def add_task(session: AsyncSession, user_id: int, campaign_id: int, *, target_name: str,
                   phone_number: str, objective: str = "", context: dict[str, Any] | None = None,
                   max_attempts: int = 3, priority: int = 0, language: str = "en",
                   next_action_time: datetime | None = None) -> Task:
    """Add a task to one of the user's campaigns (LookupError if the campaign is not theirs)."""
    if await get_campaign(session, user_id, campaign_id) is None:
        raise LookupError(f"campaign {campaign_id} not found")
    task = Task(user_id=user_id, campaign_id=campaign_id, target_name=target_name, phone_number=phone_number,
                objective=objective, context=context or {}, max_attempts=max_attempts, priority=priority,
                language=language, next_action_time=next_action_time or utcnow())
    session.add(task)
    await session.flush()
    return task


async def list_tasks(session: AsyncSession, user_id: int, campaign_id: int | None = None) -> Sequence[Task]:
    query = select(Task).where(Task.user_id == user_id)
    if campaign_id is not None:
        query = query.where(Task.campaign_id == campaign_id)
    return (await session.scalars(query.order_by(Task.id))).all()


async def get_task(session: AsyncSession, user_id: int, task_id: int) -> Task | None:
    return await session.scalar(select(Task).where(Task.id == task_id, Task.user_id == user_id))


async def record_task_event(session: AsyncSession, user_id: int, task_id: int, type_: str, reason: str = "",
                            payload: dict[str, Any] | None = None) -> TaskEvent | None:
    if await get_task(session, user_id, task_id) is None:
        return None
    event = TaskEvent(user_id=user_id, task_id=task_id, type=type_, reason=reason, payload=payload or {})
    session.add(event)
    await session.flush()
    return event


async def list_task_events(session: AsyncSession, user_id: int, task_id: int) -> Sequence[TaskEvent]:
    rows = await session.scalars(
        select(TaskEvent).where(TaskEvent.user_id == user_id, TaskEvent.task_id == task_id).order_by(TaskEvent.id)
    )
    return rows.all()


# ---------------------------------------------------------------- tasks in bulk (imports, a whole campaign's controls)
# Set-based statements, one chunk of at most BULK_CHUNK_ROWS rows per call: Core executemany and INSERT ... SELECT,
# no ORM objects, so the work per row is constant and a 10,000-task campaign costs ~20 chunks of 3 statements.

_TASKS = table_of(Task)
_TASK_EVENTS = table_of(TaskEvent)


async def add_tasks(session: AsyncSession, user_id: int, campaign_id: int,
                    tasks: Sequence[dict[str, Any]]) -> list[int]:
    """Add tasks to one of the user's campaigns in one executemany INSERT; returns their ids, ascending ([] if the
    campaign is not theirs). Each dict has target_name and phone_number, and may have objective, context,
    language, max_attempts, priority and held. Every task is pending and due now (unless held)."""
    if not tasks or await get_campaign(session, user_id, campaign_id) is None:
        return []
    now = utcnow()
    rows = [{"user_id": user_id, "campaign_id": campaign_id, "target_name": task["target_name"],
             "phone_number": task["phone_number"], "objective": task.get("objective", ""),
             "context": task.get("context") or {}, "language": task.get("language", "en"),
             "max_attempts": task.get("max_attempts", 3), "priority": task.get("priority", 0),
             "held": task.get("held", False), "status": TaskStatus.PENDING, "next_action_time": now,
             "created_at": now, "updated_at": now}
            for task in tasks]
    connection = await session.connection()
    result = await connection.execute(insert(_TASKS).returning(_TASKS.c.id), rows)
    return sorted(result.scalars())


async def task_states(session: AsyncSession, user_id: int, *, campaign_id: int | None = None,
                      task_ids: Iterable[int] | None = None, statuses: Iterable[TaskStatus] | None = None,
                      campaign_status: CampaignStatus | None = None, after_id: int = 0,
                      limit: int = BULK_CHUNK_ROWS) -> Sequence[Row]:
    """One chunk of the user's tasks for a bulk change: rows of id, campaign_id, status, next_action_time,
    context and updated_at (columns only), ordered by id, ids above `after_id`. With `campaign_status`, only while
    their campaign is still in that status (a pause that a resume overtook stops at its next chunk)."""
    query = (select(Task.id, Task.campaign_id, Task.status, Task.next_action_time, Task.context, Task.updated_at)
             .where(Task.user_id == user_id, Task.id > after_id))
    if campaign_id is not None:
        query = query.where(Task.campaign_id == campaign_id)
    if task_ids is not None:
        query = query.where(Task.id.in_(list(task_ids)))
    if statuses is not None:
        query = query.where(Task.status.in_(list(statuses)))
    if campaign_status is not None:
        query = query.join(Campaign, Campaign.id == Task.campaign_id).where(Campaign.status == campaign_status)
    return (await session.execute(query.order_by(Task.id).limit(limit))).all()


async def count_tasks(session: AsyncSession, user_id: int, campaign_id: int, statuses: Iterable[TaskStatus]) -> int:
    """How many of the user's tasks in this campaign are in one of these statuses."""
    return await session.scalar(
        select(func.count(Task.id))
        .where(Task.user_id == user_id, Task.campaign_id == campaign_id, Task.status.in_(list(statuses)))
    ) or 0


# Moving tasks, one or a chunk: db/task_life.py.


# ---------------------------------------------------------------- calls


async def get_call(session: AsyncSession, user_id: int, call_id: int) -> Call | None:
    return await session.scalar(select(Call).where(Call.id == call_id, Call.user_id == user_id))


async def owned_calls(session: AsyncSession, user_calls: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """Of these (user_id, call_id) pairs, those whose call exists and belongs to that user (one query)."""
    wanted = set(user_calls)
    if not wanted:
        return set()
    rows = await session.execute(select(Call.user_id, Call.id).where(Call.id.in_({c for _, c in wanted})))
    return {(user_id, call_id) for user_id, call_id in rows if (user_id, call_id) in wanted}


async def list_calls(session: AsyncSession, user_id: int, task_id: int) -> Sequence[Call]:
    rows = await session.scalars(
        select(Call).where(Call.user_id == user_id, Call.task_id == task_id).order_by(Call.id)
    )
    return rows.all()


async def record_call_event(session: AsyncSession, user_id: int, call_id: int, type_: str,
                            payload: dict[str, Any] | None = None) -> CallEvent | None:
    if await get_call(session, user_id, call_id) is None:
        return None
    event = CallEvent(user_id=user_id, call_id=call_id, type=type_, payload=payload or {})
    session.add(event)
    await session.flush()
    if type_ == "call.ended":   # every call's end is recorded here once (ami_controller.outcomes.finish_call)
        await webhooks.call_ended(session, user_id, call_id)
    return event


async def list_call_events(session: AsyncSession, user_id: int, call_id: int) -> Sequence[CallEvent]:
    rows = await session.scalars(
        select(CallEvent).where(CallEvent.user_id == user_id, CallEvent.call_id == call_id)
        .order_by(CallEvent.at, CallEvent.id)   # when it happened: the recorder writes some events later
    )
    return rows.all()


async def add_transcript(session: AsyncSession, user_id: int, call_id: int, speaker: Speaker, text: str,
                         offset_ms: int) -> CallTranscript | None:
    if await get_call(session, user_id, call_id) is None:
        return None
    line = CallTranscript(user_id=user_id, call_id=call_id, speaker=speaker, text=text, offset_ms=offset_ms)
    session.add(line)
    await session.flush()
    return line


async def list_transcript(session: AsyncSession, user_id: int, call_id: int) -> Sequence[CallTranscript]:
    rows = await session.scalars(
        select(CallTranscript)
        .where(CallTranscript.user_id == user_id, CallTranscript.call_id == call_id)
        .order_by(CallTranscript.offset_ms, CallTranscript.id)
    )
    return rows.all()


# ---------------------------------------------------------------- do-not-call list


async def add_dnd(session: AsyncSession, user_id: int, phone_number: str, reason: str = "") -> bool:
    """Add a number to the user's DND list; False if it was already there."""
    if await is_dnd(session, user_id, phone_number):
        return False
    session.add(DndEntry(user_id=user_id, phone_number=phone_number, reason=reason))
    await session.flush()
    return True


async def remove_dnd(session: AsyncSession, user_id: int, phone_number: str) -> bool:
    result = await session.execute(
        delete(DndEntry).where(DndEntry.user_id == user_id, DndEntry.phone_number == phone_number)
    )
    return rows_changed(result) == 1


async def list_dnd(session: AsyncSession, user_id: int) -> Sequence[DndEntry]:
    rows = await session.scalars(
        select(DndEntry).where(DndEntry.user_id == user_id).order_by(DndEntry.phone_number)
    )
    return rows.all()


async def is_dnd(session: AsyncSession, user_id: int, phone_number: str) -> bool:
    found = await session.scalar(
        select(DndEntry.id).where(DndEntry.user_id == user_id, DndEntry.phone_number == phone_number)
    )
    return found is not None


async def dnd_numbers_in_campaign(session: AsyncSession, user_id: int, campaign_id: int) -> set[str]:
    """The numbers of the campaign's tasks that are on the user's do-not-call list (one query)."""
    rows = await session.scalars(
        select(DndEntry.phone_number).where(
            DndEntry.user_id == user_id,
            DndEntry.phone_number.in_(select(Task.phone_number).where(Task.user_id == user_id,
                                                                      Task.campaign_id == campaign_id)))
    )
    return set(rows.all())


async def count_dnd_tenants(session: AsyncSession, phone_number: str) -> int:
    """How many tenants list this number: the global DND (a setting's threshold) is built on this count.
    It returns a number only, never who listed it."""
    return await session.scalar(
        select(func.count(func.distinct(DndEntry.user_id))).where(DndEntry.phone_number == phone_number)
    ) or 0


def dnd_verdict(listed_by_user: bool, tenants: int, threshold: int) -> str | None:
    """Why a number must not be called (the task's status reason), or None: on the user's own list, or listed by
    at least `threshold` tenants (the global list). The scheduler and call-start both say it this way."""
    if listed_by_user:
        return "number is on your do-not-call list"
    if tenants >= threshold:
        return f"number is on the global do-not-call list ({tenants} tenants list it, threshold {threshold})"
    return None


async def add_dnd_entries(session: AsyncSession, user_id: int, entries: Sequence[tuple[str, str]]) -> int:
    """Add (number, reason) pairs to the user's DND list in one executemany INSERT (a chunk of an import; at
    most BULK_CHUNK_ROWS is the caller's rule); a number already on the list keeps its entry. Returns how many
    were new."""
    if not entries:
        return 0
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    table = DndEntry.__table__
    statement = (dialect.insert(table).on_conflict_do_nothing(index_elements=["user_id", "phone_number"])
                 .returning(table.c.id))
    now = utcnow()
    connection = await session.connection()
    result = await connection.execute(statement, [
        {"user_id": user_id, "phone_number": number, "reason": reason, "created_at": now}
        for number, reason in entries])
    return len(result.all())


# ---------------------------------------------------------------- human-in-the-loop questions


async def create_feedback_request(session: AsyncSession, user_id: int, call_id: int, question: str,
                                  timeout_at: datetime | None = None) -> FeedbackRequest | None:
    if await get_call(session, user_id, call_id) is None:
        return None
    request = FeedbackRequest(user_id=user_id, call_id=call_id, question=question, timeout_at=timeout_at)
    session.add(request)
    await session.flush()
    await webhooks.feedback_changed(session, user_id, request.id, "feedback.asked")
    return request


async def get_feedback_request(session: AsyncSession, user_id: int, request_id: int) -> FeedbackRequest | None:
    return await session.scalar(
        select(FeedbackRequest).where(FeedbackRequest.id == request_id, FeedbackRequest.user_id == user_id)
    )


async def answer_feedback_request(session: AsyncSession, user_id: int, request_id: int, answer: str) -> bool:
    """Answer a pending question; False if it is not the user's, or no longer pending."""
    result = await session.execute(
        update(FeedbackRequest)
        .where(FeedbackRequest.id == request_id, FeedbackRequest.user_id == user_id,
               FeedbackRequest.status == FeedbackStatus.PENDING)
        .values(answer=answer, status=FeedbackStatus.ANSWERED, answered_at=utcnow())
    )
    if rows_changed(result) == 1:
        await webhooks.feedback_changed(session, user_id, request_id, "feedback.answered")
    return rows_changed(result) == 1


async def close_feedback_request(session: AsyncSession, user_id: int, request_id: int,
                                 status: FeedbackStatus) -> bool:
    """Time out or cancel a pending question (only if still pending)."""
    result = await session.execute(
        update(FeedbackRequest)
        .where(FeedbackRequest.id == request_id, FeedbackRequest.user_id == user_id,
               FeedbackRequest.status == FeedbackStatus.PENDING)
        .values(status=status)
    )
    return rows_changed(result) == 1


async def list_pending_feedback(session: AsyncSession, user_id: int) -> Sequence[FeedbackRequest]:
    rows = await session.scalars(
        select(FeedbackRequest)
        .where(FeedbackRequest.user_id == user_id, FeedbackRequest.status == FeedbackStatus.PENDING)
        .order_by(FeedbackRequest.id)
    )
    return rows.all()


async def list_closed_feedback(session: AsyncSession, user_id: int, limit: int = 50) -> Sequence[FeedbackRequest]:
    """The user's latest questions that are no longer open (answered, timed out, withdrawn), newest first."""
    rows = await session.scalars(
        select(FeedbackRequest)
        .where(FeedbackRequest.user_id == user_id, FeedbackRequest.status != FeedbackStatus.PENDING)
        .order_by(FeedbackRequest.id.desc()).limit(limit)
    )
    return rows.all()


async def pending_feedback_by_user(session: AsyncSession,
                                   user_ids: Sequence[int]) -> dict[int, list[FeedbackRequest]]:
    """list_pending_feedback for several users in one query (the live pages' poll): {user_id: requests}."""
    found: dict[int, list[FeedbackRequest]] = {user_id: [] for user_id in user_ids}
    if user_ids:
        rows = await session.scalars(
            select(FeedbackRequest)
            .where(FeedbackRequest.user_id.in_(user_ids), FeedbackRequest.status == FeedbackStatus.PENDING)
            .order_by(FeedbackRequest.id))
        for request in rows:
            found[request.user_id].append(request)
    return found


# ---------------------------------------------------------------- chat


async def create_chat_session(session: AsyncSession, user_id: int, title: str = "New task") -> ChatSession:
    chat = ChatSession(user_id=user_id, title=title)
    session.add(chat)
    await session.flush()
    return chat


async def get_chat_session(session: AsyncSession, user_id: int, chat_id: int) -> ChatSession | None:
    return await session.scalar(
        select(ChatSession).where(ChatSession.id == chat_id, ChatSession.user_id == user_id)
    )


async def list_chat_sessions(session: AsyncSession, user_id: int) -> Sequence[ChatSession]:
    rows = await session.scalars(
        select(ChatSession).where(ChatSession.user_id == user_id).order_by(ChatSession.id.desc())
    )
    return rows.all()


async def add_chat_message(session: AsyncSession, user_id: int, chat_id: int, role: ChatRole, content: str,
                           *, tool_calls: list[Any] | None = None,
                           tool_call_id: str | None = None) -> ChatMessage | None:
    if await get_chat_session(session, user_id, chat_id) is None:
        return None
    message = ChatMessage(user_id=user_id, session_id=chat_id, role=role, content=content,
                          tool_calls=tool_calls, tool_call_id=tool_call_id)
    session.add(message)
    await session.flush()
    return message


async def list_chat_messages(session: AsyncSession, user_id: int, chat_id: int) -> Sequence[ChatMessage]:
    rows = await session.scalars(
        select(ChatMessage)
        .where(ChatMessage.user_id == user_id, ChatMessage.session_id == chat_id)
        .order_by(ChatMessage.id)
    )
    return rows.all()


# ---------------------------------------------------------------- notifications


async def add_notification(session: AsyncSession, user_id: int, kind: str, message: str,
                           payload: dict[str, Any] | None = None) -> Notification:
    note = Notification(user_id=user_id, kind=kind, message=message, payload=payload or {})
    session.add(note)
    await session.flush()
    return note


async def list_notifications(session: AsyncSession, user_id: int, *, after_id: int = 0,
                             limit: int = 100) -> Sequence[Notification]:
    rows = await session.scalars(
        select(Notification)
        .where(Notification.user_id == user_id, Notification.id > after_id)
        .order_by(Notification.id)
        .limit(limit)
    )
    return rows.all()


async def notifications_by_user(session: AsyncSession, after_ids: dict[int, int],
                                limit: int = 100) -> dict[int, list[Notification]]:
    """list_notifications for several users in one query: {user_id: their notifications after after_ids[user_id]},
    at most `limit` each."""
    found: dict[int, list[Notification]] = {user_id: [] for user_id in after_ids}
    if after_ids:
        rows = await session.scalars(
            select(Notification)
            .where(Notification.user_id.in_(list(after_ids)), Notification.id > min(after_ids.values()))
            .order_by(Notification.id))
        for note in rows:
            mine = found[note.user_id]
            if note.id > after_ids[note.user_id] and len(mine) < limit:
                mine.append(note)
    return found


async def mark_notification_read(session: AsyncSession, user_id: int, notification_id: int) -> bool:
    """Mark the user's notification read (the first time counts); False when the user has no such notification."""
    result = await session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.user_id == user_id,
               Notification.read_at.is_(None))
        .values(read_at=utcnow())
    )
    if rows_changed(result) == 1:
        return True
    return await session.scalar(select(Notification.id).where(Notification.id == notification_id,
                                                              Notification.user_id == user_id)) is not None


# ---------------------------------------------------------------- FastAGI call-start


async def dnd_check(session: AsyncSession, user_id: int, phone_number: str) -> tuple[bool, int]:
    """(listed by this user, how many tenants list it) in one query: the user's DND and the global DND."""
    listed_by_user, tenants = (await session.execute(
        select(func.max(case((DndEntry.user_id == user_id, 1), else_=0)),
               func.count(func.distinct(DndEntry.user_id)))
        .where(DndEntry.phone_number == phone_number)
    )).one()
    return bool(listed_by_user), int(tenants or 0)


# The batch forms below take (user_id, ...) pairs: FastAGI decides the call-starts that arrive together in one
# transaction. Each pair is scoped by its own user_id exactly like the single forms above.


def _call_start_query():
    """Built once: calls joined to their tasks, with the DND answers as two correlated subqueries (one
    statement per batch instead of two; SQLAlchemy caches its compiled form)."""
    dnd_own, dnd_all = DndEntry.__table__.alias("dnd_own"), DndEntry.__table__.alias("dnd_all")
    listed_by_user = (select(dnd_own.c.id).where(dnd_own.c.phone_number == Task.phone_number,
                                                 dnd_own.c.user_id == Call.user_id).exists())
    tenants = (select(func.count(func.distinct(dnd_all.c.user_id)))
               .where(dnd_all.c.phone_number == Task.phone_number).scalar_subquery())
    return (
        select(Call.id, Call.user_id, Call.task_id, Call.status, Call.outcome, Call.audiosocket_uuid,
               Call.dialed_number, Call.started_at, Call.asterisk_other_uniqueid,
               Task.status.label("task_status"), Task.phone_number,
               listed_by_user.label("dnd_listed_by_user"), tenants.label("dnd_tenants"))
        .join(Task, Task.id == Call.task_id)
        .where(Call.id.in_(bindparam("call_ids", expanding=True)), Task.user_id == Call.user_id)
    )


_CALL_START_QUERY = _call_start_query()


async def get_call_start_rows(session: AsyncSession,
                              user_calls: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    """Several (user_id, call_id) at once -> {(user_id, call_id): row}; a pair whose call is not that user's
    is absent. The row has the call's id, user_id, task_id, status, outcome, audiosocket_uuid, dialed_number,
    started_at, asterisk_other_uniqueid, its task's task_status and phone_number, and the DND answers for
    that number: dnd_listed_by_user (on this user's list) and dnd_tenants (how many tenants list it; a count,
    never who). FastAGI decides the call-starts that arrive together with this one query (columns only: no
    ORM objects to build)."""
    if not user_calls:
        return {}
    wanted = set(user_calls)
    connection = await session.connection()
    rows = await connection.execute(_CALL_START_QUERY, {"call_ids": list({call_id for _, call_id in wanted})})
    return {(row.user_id, row.id): row for row in rows if (row.user_id, row.id) in wanted}


async def dnd_checks(session: AsyncSession,
                     user_numbers: Sequence[tuple[int, str]]) -> dict[tuple[int, str], tuple[bool, int]]:
    """Several (user_id, number) at once: {(user_id, number): (listed by that user, how many tenants list
    it)} -- the user's DND and the global DND. Other tenants' entries only ever count, never show.
    (get_call_start_rows carries the same answers in its rows; this form checks numbers without calls.)"""
    if not user_numbers:
        return {}
    listed: dict[str, set[int]] = {}
    connection = await session.connection()
    rows = await connection.execute(
        select(DndEntry.phone_number, DndEntry.user_id)
        .where(DndEntry.phone_number.in_({number for _, number in user_numbers}))
    )
    for number, user_id in rows:
        listed.setdefault(number, set()).add(user_id)
    return {(user_id, number): (user_id in listed.get(number, ()), len(listed.get(number, ())))
            for user_id, number in user_numbers}
