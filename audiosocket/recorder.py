"""What live calls write to the database (transcripts, call events, outcome hints), in order and off the audio
path: a bridge hands records to its CallRecorder, and one RecordWriter per process persists the records of every
call, so a slow database never delays a frame.

One writer, not one per call: it takes whatever has queued up, from all calls, in one transaction. When 500
calls start or end together, the database sees a few transactions on one connection, instead of 500 writers
waiting for a pool of 15 connections (on SQLite, for its single write lock) until they time out and lose their
records. A call's end waits for its records (`CLOSE_TIMEOUT_SECONDS` is for a database that does not answer at
all; even then the records stay queued and are written if it comes back)."""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import costs, repo
from db.models import Call, CallEvent, CallOutcome, CallStatus, CallTranscript, Speaker
from db.types import utcnow
from opendeep.events import EventHub

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_SECONDS = 120.0
Record = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True)
class CallRef:
    """Who a live call belongs to: every record carries the tenant."""

    user_id: int
    call_id: int
    task_id: int


class RecordWriter:
    """Persists the records of every live call of this process, in the order they were queued.

    Each pass writes everything queued in one transaction. If that fails, each call's records are retried in
    a transaction of their own, and a call's that still fail one by one: a record that cannot be written loses
    only itself. Records of a call that does not exist or is not that user's are never written.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], events: EventHub | None) -> None:
        self.sessions = sessions
        self.events = events
        # (call, record), or (call, future): a flush mark, resolved once everything queued before it is written
        self._queue: collections.deque[tuple[CallRef | None, Record | asyncio.Future]] = collections.deque()
        self._writer: asyncio.Task | None = None
        self._writing: list[tuple[CallRef, Record]] = []   # taken from the queue, not yet written

    def put(self, call: CallRef, record: Record) -> None:
        self._queue.append((call, record))
        self._wake()

    async def flush(self, call: CallRef | None = None, timeout: float = CLOSE_TIMEOUT_SECONDS) -> bool:
        """Wait until every record queued so far is written (or refused); False if the database did not
        answer within `timeout` (the records stay queued). `call` only names the call in the log."""
        mark = asyncio.get_running_loop().create_future()
        self._queue.append((call, mark))
        self._wake()
        try:
            await asyncio.wait_for(asyncio.shield(mark), timeout)
            return True
        except TimeoutError:
            log.error("%s: database writes did not finish within %g s; %d records not yet saved",
                      f"call {call.call_id}" if call else "call records", timeout, self._unsaved(call))
            return False

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Write what is queued (for at most `timeout` seconds), then stop."""
        if self._writer is None:
            return
        if (self._queue or self._writing) and not await self.flush(timeout=timeout):
            log.error("stopping: %d call records not saved (the database did not answer)", self._unsaved())
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        self._writer = None
        for _, item in self._queue:   # nobody waits for these any more
            if isinstance(item, asyncio.Future) and not item.done():
                item.cancel()
        self._queue.clear()

    def _unsaved(self, call: CallRef | None = None) -> int:
        """Records being written or queued (of `call`, or of every call)."""
        queued = [(ref, item) for ref, item in self._queue if not isinstance(item, asyncio.Future)]
        return sum(1 for ref, _ in [*self._writing, *queued] if call is None or ref == call)

    def _wake(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._run(), name="call-record-writer")

    async def _run(self) -> None:
        while self._queue:
            taken = list(self._queue)
            self._queue.clear()
            records = [(call, item) for call, item in taken
                       if call is not None and not isinstance(item, asyncio.Future)]   # None: a flush mark
            if records:
                self._writing = records
                try:
                    await self._write_all(records)
                except Exception:   # never leave a flush waiting because of a bug below
                    log.exception("call records: %d records not saved", len(records))
                finally:
                    self._writing = []
            for _, item in taken:
                if isinstance(item, asyncio.Future) and not item.done():
                    item.set_result(None)
            await asyncio.sleep(0)   # let the records of the next moment queue up

    async def _write_all(self, records: list[tuple[CallRef, Record]]) -> None:
        try:
            await self._write_batch(records)
            return
        except Exception as exc:
            failure = exc
        by_call: dict[CallRef, list[Record]] = {}
        for call, record in records:
            by_call.setdefault(call, []).append(record)
        if len(by_call) > 1:
            log.warning("writing %d records of %d calls at once failed (%s); writing each call's alone",
                        len(records), len(by_call), failure)
            failed = {}
            for call, call_records in by_call.items():
                try:
                    await self._write_batch([(call, record) for record in call_records])
                except Exception as exc:
                    failed[call], failure = call_records, exc
            by_call = failed
        for call, call_records in by_call.items():   # what still fails: one record at a time
            if len(call_records) > 1:
                log.warning("call %s: writing %d records at once failed (%s); writing them one by one",
                            call.call_id, len(call_records), failure)
            for record in call_records:
                try:
                    await self._write_batch([(call, record)])
                except Exception:   # a failed write loses one record, never the call
                    log.exception("call %s: could not save %s %r", call.call_id, record[0], record[1][:1])

    async def _write_batch(self, records: list[tuple[CallRef, Record]]) -> None:
        async with self.sessions() as db, db.begin():
            owned = await repo.owned_calls(db, {(call.user_id, call.call_id) for call, _ in records})
            for call in {call for call, _ in records if (call.user_id, call.call_id) not in owned}:
                log.error("call %s of user %s is gone; its records are not saved", call.call_id, call.user_id)
            records = [(call, record) for call, record in records if (call.user_id, call.call_id) in owned]
            # Usage last: it updates the campaign's row, and finish_call locks a call before its campaign; taking
            # them in the same order means two transactions never wait for each other (PostgreSQL deadlock).
            for call, (kind, args) in sorted(records, key=lambda record: record[1][0] == "usage"):
                await _write(db, call, kind, args)
        if self.events is not None:
            for call, (kind, args) in records:
                if kind == "transcript":
                    speaker, text, offset_ms = args
                    self.events.publish(call.user_id, "call.transcript", {
                        "call_id": call.call_id, "speaker": speaker.value, "text": text, "offset_ms": offset_ms})


async def _write(db: AsyncSession, ref: CallRef, kind: str, args: tuple[Any, ...]) -> None:
    if kind == "transcript":
        speaker, text, offset_ms = args
        db.add(CallTranscript(user_id=ref.user_id, call_id=ref.call_id, speaker=speaker, text=text,
                              offset_ms=offset_ms))
    elif kind == "event":
        type_, payload, at = args
        db.add(CallEvent(user_id=ref.user_id, call_id=ref.call_id, type=type_, payload=payload, at=at))
    elif kind == "hint":
        (outcome,) = args
        await db.execute(update(Call).where(Call.id == ref.call_id, Call.user_id == ref.user_id,
                                            Call.status != CallStatus.ENDED).values(outcome=outcome))
    elif kind == "usage":   # the call AI's / transcription's tokens (audiosocket/usage.py)
        (entry,) = args
        scope = await costs.call_scope(db, ref.user_id, ref.call_id)
        if scope is not None:
            await costs.record_usage(db, scope, entry)
    elif kind == "bridged":
        await db.execute(update(Call).where(Call.id == ref.call_id, Call.user_id == ref.user_id)
                         .values(bridged_to_ai=True))


class CallRecorder:
    """One call's side of the RecordWriter: what the bridge records, tagged with the call and its tenant."""

    def __init__(self, writer: RecordWriter, call: CallRef) -> None:
        self.writer = writer
        self.call = call

    def transcript(self, speaker: Speaker, text: str, offset_ms: int) -> None:
        """A line of what was said, `offset_ms` after the AudioSocket connected."""
        if text and text.strip():
            self.writer.put(self.call, ("transcript", (speaker, text.strip(), max(0, int(offset_ms)))))

    def event(self, type_: str, payload: dict[str, Any] | None = None) -> None:
        """A call event, stamped now (when it happened), however long the write waits."""
        self.writer.put(self.call, ("event", (type_, payload or {}, utcnow())))

    def outcome_hint(self, outcome: CallOutcome) -> None:
        """Set calls.outcome while the call is live; the `h` extension's call-end ends the call with it."""
        self.writer.put(self.call, ("hint", (outcome,)))

    def usage(self, entry: costs.UsageEntry) -> None:
        """Model usage of the call (priced already); written with the call's other records."""
        self.writer.put(self.call, ("usage", (entry,)))

    def bridged(self) -> None:
        self.writer.put(self.call, ("bridged", ()))

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Wait until the call's records are written (gives up only on a database that does not answer)."""
        await self.writer.flush(self.call, timeout)
