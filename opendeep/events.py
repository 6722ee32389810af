"""In-process publish/subscribe, per user: live page updates, HITL questions and answers.

Everything published is also in the database, so a page that (re)connects, or a component in another
process (`serve --only`), can catch up from there; the hub only makes it instant inside one process.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

QUEUE_LIMIT = 1000  # a page that stops reading loses its oldest events, never blocks a call


@dataclass(frozen=True)
class Event:
    user_id: int
    kind: str                      # e.g. "task.updated", "call.transcript", "feedback.asked"
    payload: dict[str, Any] = field(default_factory=dict)


class EventHub:
    def __init__(self) -> None:
        self._subscribers: dict[int, set[asyncio.Queue[Event]]] = defaultdict(set)

    def publish(self, user_id: int, kind: str, payload: dict[str, Any] | None = None) -> None:
        """Deliver to every subscriber of `user_id` (and no one else). Never blocks."""
        event = Event(user_id, kind, payload or {})
        for queue in list(self._subscribers.get(user_id, ())):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self, user_id: int) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers[user_id].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[user_id].discard(queue)
            if not self._subscribers[user_id]:
                del self._subscribers[user_id]

    def subscriber_count(self, user_id: int) -> int:
        return len(self._subscribers.get(user_id, ()))
