"""Live updates for a user's open pages (Server-Sent Events) and the human-in-the-loop answers.

Each open page holds one `GET /events` stream. Events come from the in-process hub (instant) and from the
database (catch-up when a page opens, and a poll every POLL_SECONDS for what other processes wrote: a call AI
running under `serve --only audiosocket` publishes to its own hub, not ours). HITL questions are sent with their
context (who is called, the objective, the transcript so far) so a page can show them without another request.

A pending question whose `timeout_at` has passed is closed as timed out here too (only if still pending, so the
call AI's own timer and ours cannot disagree), and every page shows it as timed out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from db import repo
from db.models import FeedbackRequest, FeedbackStatus
from db.types import utcnow
from opendeep.events import Event
from opendeep.runtime import Runtime
from webui.views import feedback_card

log = logging.getLogger("opendeep.webui.live")

POLL_SECONDS = 0.5          # DB catch-up cadence: a question from another process shows within ~0.5 s
KEEPALIVE_SECONDS = 15.0    # an SSE comment keeps proxies from closing an idle stream
MAX_ANSWER_CHARS = 2000


class FeedbackError(Exception):
    """An answer cannot be accepted; `code` is stable (not_found, not_pending, empty_answer, too_long)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def sse(kind: str, payload: dict[str, Any]) -> str:
    """One Server-Sent Event."""
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'), default=str)}\n\n"


async def expire_overdue(runtime: Runtime, user_id: int) -> list[int]:
    """Close the user's pending questions whose time is up; publish feedback.timed_out for each."""
    now = utcnow()
    expired: list[int] = []
    async with runtime.sessions() as session:
        for request in await repo.list_pending_feedback(session, user_id):
            if request.timeout_at is not None and request.timeout_at <= now:
                if await repo.close_feedback_request(session, user_id, request.id, FeedbackStatus.TIMED_OUT):
                    expired.append(request.id)
        if expired:
            await session.commit()
    for request_id in expired:
        runtime.events.publish(user_id, "feedback.timed_out", {"request_id": request_id})
    return expired


async def answer_feedback(runtime: Runtime, user_id: int, request_id: int, answer: str) -> FeedbackRequest:
    """Store the user's answer and tell the live call (hub event; the call AI also polls the row)."""
    answer = (answer or "").strip()
    if not answer:
        raise FeedbackError("empty_answer", "the answer is empty")
    if len(answer) > MAX_ANSWER_CHARS:
        raise FeedbackError("too_long", f"the answer is longer than {MAX_ANSWER_CHARS} characters")
    await expire_overdue(runtime, user_id)
    async with runtime.sessions() as session:
        request = await repo.get_feedback_request(session, user_id, request_id)
        if request is None:
            raise FeedbackError("not_found", f"question {request_id} not found")
        if not await repo.answer_feedback_request(session, user_id, request_id, answer):
            await session.refresh(request)
            raise FeedbackError("not_pending", f"question {request_id} is already {request.status.value}; the "
                                               "call went on without this answer")
        await session.commit()
        await session.refresh(request)
    runtime.events.publish(user_id, "feedback.answered", {"request_id": request_id, "answer": answer})
    return request


class LiveStream:
    """The event stream of one open page."""

    def __init__(self, runtime: Runtime, user_id: int, shutdown: asyncio.Event,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.runtime = runtime
        self.user_id = user_id
        self.shutdown = shutdown
        self.poll_seconds = poll_seconds
        self._feedback_status: dict[int, FeedbackStatus] = {}   # what this page was told about each question
        self._last_notification = 0

    async def events(self) -> AsyncIterator[str]:
        async with self.runtime.events.subscribe(self.user_id) as queue:
            yield "retry: 2000\n\n"
            async with self.runtime.sessions() as session:
                latest = await repo.list_notifications(session, self.user_id, after_id=0, limit=10_000)
                self._last_notification = latest[-1].id if latest else 0
            for chunk in await self._poll():
                yield chunk
            yield sse("ready", {"at": utcnow().isoformat()})
            last_poll = last_sent = time.monotonic()
            while not self.shutdown.is_set():
                try:
                    event: Event | None = await asyncio.wait_for(queue.get(), self.poll_seconds)
                except TimeoutError:
                    event = None
                chunks = await self._from_hub(event) if event is not None else []
                if time.monotonic() - last_poll >= self.poll_seconds:
                    chunks += await self._poll()
                    last_poll = time.monotonic()
                if not chunks and time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                    chunks = [": keepalive\n\n"]
                for chunk in chunks:
                    yield chunk
                if chunks:
                    last_sent = time.monotonic()

    async def _from_hub(self, event: Event) -> list[str]:
        if event.kind == "feedback.asked":
            return await self._asked(int(event.payload.get("request_id", 0)))
        if event.kind in ("feedback.answered", "feedback.timed_out"):
            request_id = int(event.payload.get("request_id", 0))
            status = FeedbackStatus.ANSWERED if event.kind == "feedback.answered" else FeedbackStatus.TIMED_OUT
            if self._feedback_status.get(request_id) is status:
                return []
            self._feedback_status[request_id] = status
        if event.kind == "notification":
            note_id = int(event.payload.get("id") or 0)
            if note_id and note_id <= self._last_notification:
                return []
            self._last_notification = max(self._last_notification, note_id)
        return [sse(event.kind, event.payload)]

    async def _asked(self, request_id: int) -> list[str]:
        if request_id in self._feedback_status:
            return []
        async with self.runtime.sessions() as session:
            request = await repo.get_feedback_request(session, self.user_id, request_id)
            if request is None:
                return []
            self._feedback_status[request_id] = request.status
            card = await feedback_card(session, self.user_id, request)
        return [sse("feedback.asked", card)] if request.status is FeedbackStatus.PENDING else []

    async def _poll(self) -> list[str]:
        """What the database knows that this page has not been told: new or closed questions, notifications."""
        chunks: list[str] = []
        await expire_overdue(self.runtime, self.user_id)   # its hub events reach this page through the queue
        async with self.runtime.sessions() as session:
            pending = await repo.list_pending_feedback(session, self.user_id)
            pending_ids = {request.id for request in pending}
            for request in pending:
                if request.id not in self._feedback_status:
                    self._feedback_status[request.id] = FeedbackStatus.PENDING
                    chunks.append(sse("feedback.asked", await feedback_card(session, self.user_id, request)))
            for request_id, status in list(self._feedback_status.items()):
                if status is FeedbackStatus.PENDING and request_id not in pending_ids:
                    request = await repo.get_feedback_request(session, self.user_id, request_id)
                    if request is None or request.status is FeedbackStatus.PENDING:
                        continue
                    self._feedback_status[request_id] = request.status
                    kind = {FeedbackStatus.ANSWERED: "feedback.answered",
                            FeedbackStatus.TIMED_OUT: "feedback.timed_out"}.get(request.status, "feedback.closed")
                    chunks.append(sse(kind, {"request_id": request_id, "answer": request.answer,
                                             "status": request.status.value}))
            for note in await repo.list_notifications(session, self.user_id, after_id=self._last_notification):
                self._last_notification = note.id
                chunks.append(sse("notification", {"id": note.id, "kind": note.kind, "message": note.message}))
        return chunks
