"""Webhook endpoints and the delivery outbox (webhook_endpoints, webhook_deliveries).

`enqueue_event` is called inside the transaction of the change it reports (db/repo.py and the after-call
services call it), so an event is in the outbox exactly when its change is committed. The sender
(opendeep/webhooks.py) claims due rows with a lease: one UPDATE whose row choice is `FOR UPDATE SKIP LOCKED` on
PostgreSQL and a conditional UPDATE on SQLite (one writer at a time), so two senders never hold the same delivery
at once, and a sender that dies mid-send leaves a row that is due again when its lease ends.

Every function of a user's rows takes the user and filters on it, as in repo.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import (
    Call,
    Campaign,
    FeedbackRequest,
    Task,
    TaskStatus,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
)
from db.typed import rows_changed, table_of
from db.types import utcnow

EVENT_TYPES = ("call.ended", "task.completed", "task.failed", "campaign.finished", "feedback.asked",
               "feedback.answered")
MAX_ENDPOINTS_PER_USER = 20
HISTORY_KEPT = 20            # attempts shown per delivery; older ones are dropped
BACKOFF_BASE_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 3600.0

# ---------------------------------------------------------------- endpoints (a user's own)


async def list_endpoints(session: AsyncSession, user_id: int) -> Sequence[WebhookEndpoint]:
    rows = await session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.user_id == user_id)
                                 .order_by(WebhookEndpoint.id))
    return rows.all()


async def get_endpoint(session: AsyncSession, user_id: int, endpoint_id: int) -> WebhookEndpoint | None:
    return await session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                              WebhookEndpoint.user_id == user_id))


async def add_endpoint(session: AsyncSession, user_id: int, url: str, secret: str,
                       events: Sequence[str]) -> WebhookEndpoint | None:
    """Add an endpoint (the caller has checked the URL and events); None when the user has the most allowed."""
    count = await session.scalar(select(func.count()).select_from(WebhookEndpoint)
                                 .where(WebhookEndpoint.user_id == user_id))
    if (count or 0) >= MAX_ENDPOINTS_PER_USER:
        return None
    endpoint = WebhookEndpoint(user_id=user_id, url=url, secret=secret, events=list(events), enabled=True)
    session.add(endpoint)
    await session.flush()
    return endpoint


async def set_endpoint_enabled(session: AsyncSession, user_id: int, endpoint_id: int, enabled: bool) -> bool:
    result = await session.execute(update(WebhookEndpoint)
                                   .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.user_id == user_id)
                                   .values(enabled=enabled))
    return rows_changed(result) == 1


async def remove_endpoint(session: AsyncSession, user_id: int, endpoint_id: int) -> bool:
    """Remove an endpoint and its deliveries (sent or not)."""
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id,
                                                        WebhookDelivery.user_id == user_id))
    result = await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                                 WebhookEndpoint.user_id == user_id))
    return rows_changed(result) == 1


# ---------------------------------------------------------------- the outbox


async def endpoints_wanting(session: AsyncSession, user_id: int, event_type: str) -> list[int]:
    """The user's enabled endpoints subscribed to `event_type` (one query; none for most users)."""
    endpoints = await session.execute(select(WebhookEndpoint.id, WebhookEndpoint.events)
                                      .where(WebhookEndpoint.user_id == user_id, WebhookEndpoint.enabled))
    return [endpoint_id for endpoint_id, events in endpoints if event_type in (events or ())]


async def enqueue_event(session: AsyncSession, user_id: int, event_type: str, data: dict[str, Any],
                        endpoint_ids: Sequence[int] | None = None) -> int:
    """Put `event_type` with `data` in the outbox for each of the user's enabled endpoints that wants it (or for
    `endpoint_ids`, already looked up), in the caller's transaction. Returns how many deliveries were queued."""
    if endpoint_ids is None:
        endpoint_ids = await endpoints_wanting(session, user_id, event_type)
    now = utcnow()
    rows = [WebhookDelivery(user_id=user_id, endpoint_id=endpoint_id, event_id=str(uuid.uuid4()),
                            event_type=event_type, payload=data, status=WebhookDeliveryStatus.PENDING,
                            created_at=now, next_attempt_at=now, attempts=0, history=[])
            for endpoint_id in endpoint_ids]
    if rows:
        session.add_all(rows)
        await session.flush()
    return len(rows)


# ---------------------------------------------------------------- the events, built from the rows just changed
# Each reads the rows inside the caller's transaction (so it sees the change being made) only when an endpoint
# wants the event. Links are paths; the sender puts PUBLIC_BASE_URL in front of every "..._url" value.


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def call_ended(session: AsyncSession, user_id: int, call_id: int) -> int:
    """`call.ended`: the telephony outcome, duration and where the transcript is."""
    wanting = await endpoints_wanting(session, user_id, "call.ended")
    call = wanting and (await session.execute(
        select(Call.id, Call.task_id, Task.campaign_id, Task.target_name, Call.dialed_number, Call.attempt_number,
               Call.outcome, Call.dial_status, Call.hangup_cause, Call.duration_seconds, Call.answered_at,
               Call.ended_at)
        .join(Task, Task.id == Call.task_id).where(Call.id == call_id, Call.user_id == user_id))).first()
    if not call:
        return 0
    return await enqueue_event(session, user_id, "call.ended", {
        "call_id": call.id, "task_id": call.task_id, "campaign_id": call.campaign_id,
        "target_name": call.target_name, "phone_number": call.dialed_number, "attempt": call.attempt_number,
        "outcome": call.outcome.value if call.outcome else None, "dial_status": call.dial_status,
        "hangup_cause": call.hangup_cause, "duration_seconds": call.duration_seconds,
        "answered_at": _iso(call.answered_at), "ended_at": _iso(call.ended_at),
        "transcript_url": f"/calls/{call.id}", "transcript_api_url": f"/api/calls/{call.id}"}, wanting)


async def task_finished(session: AsyncSession, user_id: int, task_id: int, status: TaskStatus) -> int:
    """`task.completed` / `task.failed`: the task's result and its latest call's analysis."""
    event_type = {TaskStatus.COMPLETED: "task.completed", TaskStatus.FAILED: "task.failed"}.get(status)
    if event_type is None:
        return 0
    wanting = await endpoints_wanting(session, user_id, event_type)
    if not wanting:
        return 0
    # Columns, not the Task object: the caller may hold that object, and must keep what it has in memory.
    task = (await session.execute(
        select(Task.id, Task.campaign_id, Task.target_name, Task.phone_number, Task.status_reason,
               Task.attempt_count, Task.result).where(Task.id == task_id, Task.user_id == user_id))).first()
    if not task:
        return 0
    latest = (await session.execute(select(Call.id, Call.analysis).where(Call.task_id == task_id,
                                                                         Call.user_id == user_id)
                                    .order_by(Call.id.desc()).limit(1))).first()
    return await enqueue_event(session, user_id, event_type, {
        "task_id": task.id, "campaign_id": task.campaign_id, "target_name": task.target_name,
        "phone_number": task.phone_number, "status": status.value, "reason": task.status_reason,
        "attempts": task.attempt_count, "result": task.result or {},
        "analysis": latest.analysis if latest else None, "last_call_id": latest.id if latest else None,
        "campaign_url": f"/campaigns/{task.campaign_id}"}, wanting)


async def campaign_finished(session: AsyncSession, user_id: int, campaign_id: int) -> int:
    """`campaign.finished`: the stored summary (text, counts, one row per target)."""
    wanting = await endpoints_wanting(session, user_id, "campaign.finished")
    campaign = wanting and (await session.execute(
        select(Campaign.id, Campaign.name, Campaign.status, Campaign.finished_at, Campaign.summary_text,
               Campaign.summary).where(Campaign.id == campaign_id, Campaign.user_id == user_id))).first()
    if not campaign:
        return 0
    return await enqueue_event(session, user_id, "campaign.finished", {
        "campaign_id": campaign.id, "name": campaign.name, "status": campaign.status.value,
        "finished_at": _iso(campaign.finished_at), "summary_text": campaign.summary_text,
        "summary": campaign.summary, "summary_url": f"/campaigns/{campaign.id}/summary",
        "summary_csv_url": f"/campaigns/{campaign.id}/summary.csv"}, wanting)


async def feedback_changed(session: AsyncSession, user_id: int, request_id: int, event_type: str) -> int:
    """`feedback.asked` / `feedback.answered`: the call AI's question to the user, and the user's answer."""
    wanting = await endpoints_wanting(session, user_id, event_type)
    request = wanting and (await session.execute(
        select(FeedbackRequest.id, FeedbackRequest.call_id, Call.task_id, FeedbackRequest.question,
               FeedbackRequest.status, FeedbackRequest.answer, FeedbackRequest.asked_at,
               FeedbackRequest.answered_at, FeedbackRequest.timeout_at)
        .join(Call, Call.id == FeedbackRequest.call_id)
        .where(FeedbackRequest.id == request_id, FeedbackRequest.user_id == user_id))).first()
    if not request:
        return 0
    return await enqueue_event(session, user_id, event_type, {
        "request_id": request.id, "call_id": request.call_id, "task_id": request.task_id,
        "question": request.question, "status": request.status.value, "answer": request.answer,
        "asked_at": _iso(request.asked_at), "answered_at": _iso(request.answered_at),
        "timeout_at": _iso(request.timeout_at), "feedback_url": "/feedback"}, wanting)


async def list_deliveries(session: AsyncSession, user_id: int, *, endpoint_id: int | None = None,
                          limit: int = 200) -> Sequence[WebhookDelivery]:
    """The user's latest deliveries, newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.user_id == user_id)
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    return (await session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit))).all()


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this sender holds until `locked_until`, with what it needs to send it."""

    id: int
    claim: str
    endpoint_id: int
    url: str
    secret: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    created_at: datetime
    attempt: int          # this attempt's number, from 1


def _due(now: datetime):
    return and_(WebhookDelivery.status == WebhookDeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now))


async def claim_due_deliveries(session: AsyncSession, *, now: datetime, lease_seconds: float,
                               free_slots: dict[int, int], default_slots: int, limit: int) -> list[ClaimedDelivery]:
    """Claim up to `limit` due deliveries, at most `free_slots[endpoint]` (else `default_slots`) per endpoint, so
    one slow endpoint's backlog never fills a batch that other endpoints' deliveries wait behind. The attempt is
    counted at claim time: a sender that dies mid-send still used it. The caller commits at once."""
    if limit <= 0 or default_slots <= 0 and not any(free_slots.values()):
        return []
    # The oldest due rows of each endpoint (a window function: no FOR UPDATE allowed here), then the claim itself.
    most_per_endpoint = max([default_slots, *free_slots.values()])
    ranked = (select(WebhookDelivery.id, WebhookDelivery.endpoint_id,
                     func.row_number().over(partition_by=WebhookDelivery.endpoint_id,
                                            order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.id))
                     .label("rank"))
              .where(_due(now)).subquery())
    candidates = await session.execute(select(ranked.c.id, ranked.c.endpoint_id)
                                       .where(ranked.c.rank <= most_per_endpoint).order_by(ranked.c.id))
    chosen: list[int] = []
    taken: dict[int, int] = {}
    for delivery_id, endpoint_id in candidates:
        if len(chosen) >= limit:
            break
        if taken.get(endpoint_id, 0) < free_slots.get(endpoint_id, default_slots):
            taken[endpoint_id] = taken.get(endpoint_id, 0) + 1
            chosen.append(delivery_id)
    if not chosen:
        return []
    token = str(uuid.uuid4())
    # PostgreSQL: rows another sender is claiming right now are skipped, not waited for. SQLite renders no
    # FOR UPDATE; its single writer makes the conditional UPDATE atomic.
    # Two statements: as one (UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)) PostgreSQL ran the
    # subquery once per row of the table (0.7 s for 2,000 rows). The UPDATE checks again for SQLite, which
    # takes no row locks.
    lockable = (select(WebhookDelivery.id).where(WebhookDelivery.id.in_(chosen), _due(now))
                .with_for_update(skip_locked=True))
    locked = list((await session.scalars(lockable)).all())
    if not locked:
        return []
    claimed = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(locked), _due(now))
        .values(claim=token, locked_until=now + timedelta(seconds=lease_seconds),
                attempts=WebhookDelivery.attempts + 1)
        .returning(WebhookDelivery.id, WebhookDelivery.endpoint_id, WebhookDelivery.event_id,
                   WebhookDelivery.event_type, WebhookDelivery.payload, WebhookDelivery.created_at,
                   WebhookDelivery.attempts)
        .execution_options(synchronize_session=False)
    )
    rows = claimed.all()
    if not rows:
        return []
    endpoints = {row.id: row for row in await session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.url, WebhookEndpoint.secret)
        .where(WebhookEndpoint.id.in_({row.endpoint_id for row in rows})))}
    return sorted((ClaimedDelivery(id=row.id, claim=token, endpoint_id=row.endpoint_id,
                                   url=endpoints[row.endpoint_id].url, secret=endpoints[row.endpoint_id].secret,
                                   event_id=row.event_id, event_type=row.event_type, payload=row.payload,
                                   created_at=row.created_at, attempt=row.attempts) for row in rows),
                  key=lambda d: d.id)


def retry_delay(attempt: int, delivery_id: int) -> timedelta:
    """Exponential backoff from BACKOFF_BASE_SECONDS, doubling per attempt up to BACKOFF_MAX_SECONDS, spread by
    +/- 10 % (fixed per delivery, so retries after an outage do not all arrive together)."""
    seconds = min(BACKOFF_BASE_SECONDS * 2 ** max(attempt - 1, 0), BACKOFF_MAX_SECONDS)
    spread = (delivery_id * 2654435761 % 1000) / 1000 * 0.2 - 0.1
    return timedelta(seconds=seconds * (1 + spread))


@dataclass(frozen=True)
class AttemptResult:
    """What one request of a claimed delivery came to. `final`: a failure not worth retrying (the URL now
    resolves to a refused address): given up at once."""

    delivery: ClaimedDelivery
    status_code: int | None
    error: str | None          # None: delivered (2xx)
    elapsed_ms: float
    final: bool = False


_DELIVERIES = table_of(WebhookDelivery)
_RECORD = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.id == bindparam("b_id"), _DELIVERIES.c.claim == bindparam("b_claim"))
    .values(status=bindparam("v_status"), claim=None, locked_until=None, last_status_code=bindparam("v_code"),
            last_error=bindparam("v_error"), history=bindparam("v_history"), next_attempt_at=bindparam("v_next"),
            delivered_at=bindparam("v_delivered"))
)


async def record_attempts(session: AsyncSession, results: Sequence[AttemptResult], *, now: datetime,
                          give_up_after: timedelta) -> list[WebhookDeliveryStatus | None]:
    """Record many attempts in two statements, each only while its claim is still ours. Returns each delivery's
    new status (PENDING: retried at its next_attempt_at), or None where the claim was lost (lease over, another
    sender took it)."""
    if not results:
        return []
    claims = {result.delivery.id: result.delivery.claim for result in results}
    held = {row.id: row.history for row in await session.execute(
        select(WebhookDelivery.id, WebhookDelivery.claim, WebhookDelivery.history)
        .where(WebhookDelivery.id.in_(claims))) if row.claim == claims[row.id]}
    statuses: list[WebhookDeliveryStatus | None] = []
    params = []
    for result in results:
        delivery = result.delivery
        if delivery.id not in held:
            statuses.append(None)
            continue
        entry = {"at": now.isoformat(), "attempt": delivery.attempt, "status_code": result.status_code,
                 "error": result.error, "ms": round(result.elapsed_ms, 1)}
        if result.error is None:
            status, next_at, delivered = WebhookDeliveryStatus.DELIVERED, now, now
        else:
            next_at, delivered = now + retry_delay(delivery.attempt, delivery.id), None
            status = WebhookDeliveryStatus.GAVE_UP if result.final or next_at > delivery.created_at + give_up_after \
                else WebhookDeliveryStatus.PENDING
        statuses.append(status)
        params.append({"b_id": delivery.id, "b_claim": delivery.claim, "v_status": status,
                       "v_code": result.status_code, "v_error": result.error,
                       "v_history": [*(held[delivery.id] or []), entry][-HISTORY_KEPT:], "v_next": next_at,
                       "v_delivered": delivered})
    if params:
        connection = await session.connection()
        await connection.execute(_RECORD, params)
    return statuses

