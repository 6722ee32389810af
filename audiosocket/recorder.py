"""What a call writes to the database (transcripts, call events, outcome hints), in order and off the audio
path: the bridge hands records to a queue and one writer task persists them, so a slow database never delays
a frame. The writer takes whatever has queued up in one transaction (when 100 calls end at once, SQLite sees a
few hundred transactions, not a few thousand), and a call's end waits for its records instead of dropping them
(`CLOSE_TIMEOUT_SECONDS` is for a database that does not answer at all)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo
from db.models import Call, CallEvent, CallOutcome, CallStatus, CallTranscript, Speaker
from opendeep.events import EventHub

log = logging.getLogger("opendeep.audiosocket.recorder")

CLOSE_TIMEOUT_SECONDS = 120.0
Record = tuple[str, tuple[Any, ...]]


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
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue()
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

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Write everything queued, then stop the writer (gives up only on a database that does not answer)."""
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
            batch: list[Record] = []
            record = await self._queue.get()
            while record is not None:
                batch.append(record)
                if self._queue.empty():
                    break
                record = self._queue.get_nowait()
            if batch:
                await self._write_batch(batch)
            if record is None:
                return

    async def _write_batch(self, batch: list[Record]) -> None:
        try:
            async with self.sessions() as db, db.begin():
                if await repo.get_call(db, self.call.user_id, self.call.call_id) is None:
                    log.error("call %s of user %s is gone; %d records not saved", self.call.call_id,
                              self.call.user_id, len(batch))
                    return
                for kind, args in batch:
                    await self._write(db, kind, args)
        except Exception:
            if len(batch) == 1:   # a failed write loses one record, never the call
                log.exception("call %s: could not save %s %r", self.call.call_id, batch[0][0], batch[0][1][:1])
                return
            log.warning("call %s: writing %d records at once failed; writing them one by one",
                        self.call.call_id, len(batch), exc_info=True)
            for record in batch:
                await self._write_batch([record])
            return
        for kind, args in batch:
            if kind == "transcript" and self.events is not None:
                speaker, text, offset_ms = args
                self.events.publish(self.call.user_id, "call.transcript", {
                    "call_id": self.call.call_id, "speaker": speaker.value, "text": text, "offset_ms": offset_ms})

    async def _write(self, db: AsyncSession, kind: str, args: tuple[Any, ...]) -> None:
        ref = self.call
        if kind == "transcript":
            speaker, text, offset_ms = args
            db.add(CallTranscript(user_id=ref.user_id, call_id=ref.call_id, speaker=speaker, text=text,
                                  offset_ms=offset_ms))
        elif kind == "event":
            type_, payload = args
            db.add(CallEvent(user_id=ref.user_id, call_id=ref.call_id, type=type_, payload=payload))
        elif kind == "hint":
            (outcome,) = args
            await db.execute(update(Call).where(Call.id == ref.call_id, Call.user_id == ref.user_id,
                                                Call.status != CallStatus.ENDED).values(outcome=outcome))
        elif kind == "bridged":
            await db.execute(update(Call).where(Call.id == ref.call_id, Call.user_id == ref.user_id)
                             .values(bridged_to_ai=True))
