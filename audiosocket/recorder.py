"""What a call writes to the database (transcripts, call events, outcome hints), in order and off the audio
path: the bridge hands records to a queue and one writer task persists them, so a slow database never delays
a frame."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo
from db.models import Call, CallOutcome, CallStatus, Speaker
from opendeep.events import EventHub

log = logging.getLogger("opendeep.audiosocket.recorder")


@dataclass(frozen=True)
class CallRef:
    """Who a live call belongs to: every record carries the tenant."""

    user_id: int
    call_id: int
    task_id: int


class CallRecorder:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], events: EventHub | None, call: CallRef) -> None:
        self.sessions = sessions
        self.events = events
        self.call = call
        self._queue: asyncio.Queue[tuple[str, tuple[Any, ...]] | None] = asyncio.Queue()
        self._writer: asyncio.Task | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._run(), name=f"call-{self.call.call_id}-recorder")

    def transcript(self, speaker: Speaker, text: str, offset_ms: int) -> None:
        """A line of what was said, `offset_ms` after the AudioSocket connected."""
        if text and text.strip():
            self._queue.put_nowait(("transcript", (speaker, text.strip(), max(0, int(offset_ms)))))

    def event(self, type_: str, payload: dict[str, Any] | None = None) -> None:
        self._queue.put_nowait(("event", (type_, payload or {})))

    def outcome_hint(self, outcome: CallOutcome) -> None:
        """Set calls.outcome while the call is live; the `h` extension's call-end ends the call with it."""
        self._queue.put_nowait(("hint", (outcome,)))

    def bridged(self) -> None:
        self._queue.put_nowait(("bridged", ()))

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (bounded in time), then stop the writer."""
        if self._writer is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), timeout)
        except TimeoutError:
            log.error("call %s: database writes did not finish within %g s; %d records not saved",
                      self.call.call_id, timeout, self._queue.qsize())
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self._writer = None

    async def _run(self) -> None:
        while True:
            record = await self._queue.get()
            if record is None:
                return
            kind, args = record
            try:
                await self._write(kind, args)
            except Exception:  # a failed write loses one record, never the call
                log.exception("call %s: could not save %s %r", self.call.call_id, kind, args[:1])

    async def _write(self, kind: str, args: tuple[Any, ...]) -> None:
        ref = self.call
        async with self.sessions() as db, db.begin():
            if kind == "transcript":
                speaker, text, offset_ms = args
                await repo.add_transcript(db, ref.user_id, ref.call_id, speaker, text, offset_ms)
            elif kind == "event":
                type_, payload = args
                await repo.record_call_event(db, ref.user_id, ref.call_id, type_, payload)
            elif kind == "hint":
                (outcome,) = args
                await db.execute(update(Call).where(Call.id == ref.call_id, Call.user_id == ref.user_id,
                                                    Call.status != CallStatus.ENDED).values(outcome=outcome))
            elif kind == "bridged":
                await db.execute(update(Call).where(Call.id == ref.call_id, Call.user_id == ref.user_id)
                                 .values(bridged_to_ai=True))
        if kind == "transcript" and self.events is not None:
            speaker, text, offset_ms = args
            self.events.publish(ref.user_id, "call.transcript", {"call_id": ref.call_id, "speaker": speaker.value,
                                                                 "text": text, "offset_ms": offset_ms})
