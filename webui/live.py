"""Live updates for a user's open pages (Server-Sent Events) and the human-in-the-loop answers.

Each open page holds one `GET /events` stream, and a user may hold at most MAX_STREAMS_PER_USER of them (the next
one is refused with 429): streams cost memory and a socket each, and one user must not take what the calls need.

Events come from this process's hub (instant), and from the database for what other processes wrote (a call AI
running under `serve --only audiosocket` publishes to its own hub, not ours). The database is read by one poll
per process, not per stream: every POLL_SECONDS the `LiveHub` reads, for each user with an open stream, the open
questions and new notifications, and publishes what changed to the hub, from where every stream of that user
takes it. Three hundred open pages cost the database what one does, and the event loop that also carries the
calls' audio stays free. HITL questions are sent with their context (who is called, the objective, the
transcript so far), read once per process and shared by all the streams that show it.

A pending question whose `timeout_at` has passed is closed as timed out here too (only if still pending, so the
call AI's own timer and ours cannot disagree), and every page shows it as timed out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from db import repo
from db.models import FeedbackRequest, FeedbackStatus, Notification
from db.types import utcnow
from opendeep.events import Event
from opendeep.periodic import log_pass_failure
from opendeep.runtime import Runtime
from webui.views import feedback_card

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5          # DB catch-up cadence: a question from another process shows within ~0.5 s
KEEPALIVE_SECONDS = 15.0    # an SSE comment keeps proxies from closing an idle stream
MAX_ANSWER_CHARS = 2000
MAX_STREAMS_PER_USER = 10   # open event streams (pages, tabs) per user; the next one gets 429 (a setting to come)
RETRY_AFTER_SECONDS = 30    # what a refused stream is told: close a tab, or wait for a closed one to be noticed
_NOTIFICATION_PAGE = 1000


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


class TooManyStreams(Exception):
    """The user already has MAX_STREAMS_PER_USER open event streams (HTTP 429)."""


@dataclass
class _Watched:
    """What the pages of one user have been told from the database (kept while the user has a stream open)."""

    pending: set[int] = field(default_factory=set)   # open questions, as of the last poll
    last_notification: int = 0                       # the newest notification published


@dataclass
class _Changes:
    """What one poll found for one user."""

    pending: list[FeedbackRequest] = field(default_factory=list)   # open now
    expired: list[int] = field(default_factory=list)               # closed as timed out by this poll
    closed: list[FeedbackRequest] = field(default_factory=list)    # closed elsewhere since the last poll
    notes: list[Notification] = field(default_factory=list)        # new notifications


class LiveHub:
    """The live pages of this process: admits event streams (at most `max_streams_per_user` per user) and runs the
    one database poll that feeds them all (see the module's note). Made once per app: `live_hub(app.state)`."""

    def __init__(self, runtime: Runtime, shutdown: asyncio.Event, *, poll_seconds: float = POLL_SECONDS,
                 max_streams_per_user: int = MAX_STREAMS_PER_USER) -> None:
        self.runtime = runtime
        self.shutdown = shutdown
        self.poll_seconds = poll_seconds
        self.max_streams_per_user = max_streams_per_user
        self._streams: Counter[int] = Counter()                    # user_id -> open streams
        self._watched: dict[int, asyncio.Future[_Watched]] = {}    # user_id -> poll state (once read)
        self._cards: dict[tuple[int, int], asyncio.Future[dict[str, Any] | None]] = {}
        self._poller: asyncio.Task | None = None

    def open(self, user_id: int) -> LiveStream:
        """A new event stream for the user; TooManyStreams if they have `max_streams_per_user` open already."""
        if self._streams[user_id] >= self.max_streams_per_user:
            raise TooManyStreams(f"you have {self._streams[user_id]} live pages open, the most allowed; close one "
                                 "(or wait a moment after closing it) for this page to update live")
        self._streams[user_id] += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_forever(), name="web-live-poll")
        return LiveStream(self, user_id)

    def stream_count(self, user_id: int) -> int:
        return self._streams[user_id]

    def _release(self, user_id: int) -> None:
        self._streams[user_id] -= 1
        if self._streams[user_id] <= 0:
            del self._streams[user_id]
            self._watched.pop(user_id, None)
            for key in [key for key in self._cards if key[0] == user_id]:
                del self._cards[key]

    async def watched(self, user_id: int) -> _Watched:
        """The user's poll state, read from the database when their first stream opens."""
        reading = self._watched.get(user_id)
        if reading is None or (reading.done() and (reading.cancelled() or reading.exception() is not None)):
            reading = self._watched[user_id] = asyncio.ensure_future(self._first_look(user_id))
        return await asyncio.shield(reading)

    async def card(self, user_id: int, request_id: int) -> dict[str, Any] | None:
        """The user's question with its context (None if not theirs), read once while the question is open."""
        key = (user_id, request_id)
        reading = self._cards.get(key)
        if reading is None or (reading.done() and (reading.cancelled() or reading.exception() is not None)):
            reading = self._cards[key] = asyncio.ensure_future(self._read_card(user_id, request_id))
        card = await asyncio.shield(reading)
        if card is None or card["status"] != FeedbackStatus.PENDING.value:
            self._cards.pop(key, None)
        return card

    async def _read_card(self, user_id: int, request_id: int) -> dict[str, Any] | None:
        async with self.runtime.sessions() as session:
            request = await repo.get_feedback_request(session, user_id, request_id)
            return await feedback_card(session, user_id, request) if request is not None else None

    async def _first_look(self, user_id: int) -> _Watched:
        watched = _Watched()
        async with self.runtime.sessions() as session:
            watched.pending = {request.id for request in await repo.list_pending_feedback(session, user_id)}
            while True:   # the newest notification: pages show what comes after it
                notes = await repo.list_notifications(session, user_id, after_id=watched.last_notification,
                                                      limit=_NOTIFICATION_PAGE)
                if notes:
                    watched.last_notification = notes[-1].id
                if len(notes) < _NOTIFICATION_PAGE:
                    return watched

    async def _poll_forever(self) -> None:
        while self._streams and not self.shutdown.is_set():
            try:
                await asyncio.wait_for(self.shutdown.wait(), self.poll_seconds)
                return
            except TimeoutError:
                pass
            try:
                await self.poll_once()
            except Exception as exc:   # a failed poll is logged; the next one runs
                log_pass_failure(log, "live poll", exc, self.poll_seconds)

    async def poll_once(self) -> None:
        """One poll for every user with an open stream, in one session: close their overdue questions, then
        publish what changed since the last poll."""
        watching = [(user_id, reading) for user_id, reading in self._watched.items()
                    if reading.done() and not reading.cancelled() and reading.exception() is None]
        if not watching:
            return
        async with self.runtime.sessions() as session:
            # Two queries for every watching user together; more only for what changed.
            pending = await repo.pending_feedback_by_user(session, [user_id for user_id, _ in watching])
            notes = await repo.notifications_by_user(
                session, {user_id: reading.result().last_notification for user_id, reading in watching})
            for user_id, reading in watching:
                changes = await self._changes(session, user_id, reading.result(), pending[user_id], notes[user_id])
                if self._watched.get(user_id) is reading:   # else the user's last stream closed meanwhile
                    self._publish(user_id, reading.result(), changes)

    async def _changes(self, session: AsyncSession, user_id: int, watched: _Watched, pending: list,
                       notes: list) -> _Changes:
        now = utcnow()
        changes = _Changes()
        for request in pending:
            if request.timeout_at is not None and request.timeout_at <= now and \
                    await repo.close_feedback_request(session, user_id, request.id, FeedbackStatus.TIMED_OUT):
                changes.expired.append(request.id)
        if changes.expired:
            await session.commit()
        changes.pending = [request for request in pending if request.id not in changes.expired]
        for request_id in watched.pending - {request.id for request in pending}:
            request = await repo.get_feedback_request(session, user_id, request_id)
            if request is not None and request.status is not FeedbackStatus.PENDING:
                changes.closed.append(request)
        changes.notes = notes
        return changes

    def _publish(self, user_id: int, watched: _Watched, changes: _Changes) -> None:
        # Nothing awaits in here: a stream opening meanwhile sees the state and the events agree.
        publish = self.runtime.events.publish
        for request in changes.pending:
            if request.id not in watched.pending:
                publish(user_id, "feedback.asked", {"request_id": request.id, "call_id": request.call_id,
                                                    "question": request.question})
        watched.pending = {request.id for request in changes.pending}
        for key in [key for key in self._cards if key[0] == user_id and key[1] not in watched.pending]:
            del self._cards[key]   # closed questions: their cards are not shown again
        for request_id in changes.expired:
            publish(user_id, "feedback.timed_out", {"request_id": request_id})
        for request in changes.closed:
            kind = {FeedbackStatus.ANSWERED: "feedback.answered",
                    FeedbackStatus.TIMED_OUT: "feedback.timed_out"}.get(request.status, "feedback.closed")
            publish(user_id, kind, {"request_id": request.id, "answer": request.answer,
                                    "status": request.status.value})
        for note in changes.notes:
            watched.last_notification = note.id
            publish(user_id, "notification", {"id": note.id, "kind": note.kind, "message": note.message})


def live_hub(state: Any) -> LiveHub:
    """The app's LiveHub (`app.state.live_hub`), made on first use from the app's runtime and shutdown event."""
    hub = getattr(state, "live_hub", None)
    if hub is None:
        hub = state.live_hub = LiveHub(state.runtime, state.shutdown)
    return hub


class LiveStream:
    """The event stream of one open page: its user's hub events as Server-Sent Events, from a catch-up on what
    is open now. Made by `LiveHub.open`; its place is given back when the stream ends (or, should the response
    never start, when the stream is dropped)."""

    def __init__(self, hub: LiveHub, user_id: int) -> None:
        self.hub = hub
        self.user_id = user_id
        self._feedback_status: dict[int, FeedbackStatus] = {}   # what this page was told about each question
        self._last_notification = 0
        self._release = weakref.finalize(self, hub._release, user_id)

    async def events(self) -> AsyncIterator[str]:
        try:
            async with self.hub.runtime.events.subscribe(self.user_id) as queue:
                yield "retry: 2000\n\n"
                self._last_notification = (await self.hub.watched(self.user_id)).last_notification
                for chunk in await self._catch_up():
                    yield chunk
                yield sse("ready", {"at": utcnow().isoformat()})
                closing = asyncio.ensure_future(self.hub.shutdown.wait())
                try:
                    while not closing.done():
                        getter = asyncio.ensure_future(queue.get())
                        done, _ = await asyncio.wait((getter, closing), timeout=KEEPALIVE_SECONDS,
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if getter not in done:
                            getter.cancel()
                            if not done:
                                yield ": keepalive\n\n"
                            continue
                        events = [getter.result()]
                        while not queue.empty():
                            events.append(queue.get_nowait())
                        for event in events:
                            for chunk in await self._from_hub(event):
                                yield chunk
                finally:
                    closing.cancel()
        finally:
            self._release()

    async def _catch_up(self) -> list[str]:
        """The questions open now (a page that opens late, or reconnects, shows them at once)."""
        async with self.hub.runtime.sessions() as session:
            pending = await repo.list_pending_feedback(session, self.user_id)
        chunks: list[str] = []
        for request in pending:
            chunks += await self._asked(request.id)
        return chunks

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
        card = await self.hub.card(self.user_id, request_id)
        if card is None or request_id in self._feedback_status:
            return []
        self._feedback_status[request_id] = FeedbackStatus(card["status"])
        return [sse("feedback.asked", card)] if card["status"] == FeedbackStatus.PENDING.value else []
