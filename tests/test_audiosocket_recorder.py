"""The call recorder: what live calls write (transcripts, events, hints) reaches the database complete, in
order and in few transactions, even when many records queue up at once (100 calls ending together) and when
hundreds of calls record at the same time (one writer, one connection)."""

from __future__ import annotations

import asyncio

from sqlalchemy import event, select

from audiosocket.recorder import CallRecorder, CallRef, RecordWriter
from db import repo
from db.engine import create_engine, session_factory
from db.models import Call, CallOutcome, CallTranscript, Speaker
from tests.doubles.audiosocket_calls import seed_call


def count_transactions(engine) -> list[int]:
    begun = [0]

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(_connection):
        begun[0] += 1
    return begun


async def test_queued_records_are_written_in_order_in_one_transaction(engine, sessions):
    seeded = await seed_call(sessions)
    recorder = CallRecorder(RecordWriter(sessions, None), CallRef(seeded.user_id, seeded.call_id, seeded.task_id))
    begun = count_transactions(engine)
    for n in range(300):   # queued before the writer first runs: one batch
        recorder.transcript(Speaker.AGENT if n % 2 else Speaker.CALLEE, f"line {n}", n * 10)
        recorder.event("ai.tool", {"n": n})
    recorder.outcome_hint(CallOutcome.FAILED_AI)
    await recorder.close()
    transactions = begun[0]

    async with sessions() as db:
        lines = await repo.list_transcript(db, seeded.user_id, seeded.call_id)
        events = await repo.list_call_events(db, seeded.user_id, seeded.call_id)
        call = await db.get(Call, seeded.call_id)
    assert [line.text for line in lines] == [f"line {n}" for n in range(300)]
    assert [e.payload["n"] for e in events] == list(range(300))
    assert {line.user_id for line in lines} | {e.user_id for e in events} == {seeded.user_id}
    assert call.outcome is CallOutcome.FAILED_AI
    assert transactions == 1   # the whole batch at once (one per record before)


async def test_one_record_that_cannot_be_written_loses_only_itself(engine, sessions):
    seeded = await seed_call(sessions)
    recorder = CallRecorder(RecordWriter(sessions, None), CallRef(seeded.user_id, seeded.call_id, seeded.task_id))
    recorder.transcript(Speaker.CALLEE, "before", 0)
    recorder.event("ai.tool", {"not json": object()})   # the batch fails; then one by one
    recorder.transcript(Speaker.AGENT, "after", 20)
    await recorder.close()
    async with sessions() as db:
        lines = (await db.scalars(select(CallTranscript.text).where(CallTranscript.call_id == seeded.call_id)
                                  .order_by(CallTranscript.id))).all()
        events = await repo.list_call_events(db, seeded.user_id, seeded.call_id)
    assert lines == ["before", "after"]
    assert events == []


async def test_records_of_a_call_that_is_not_the_users_are_not_written(sessions):
    alice = await seed_call(sessions, username="alice")
    bob = await seed_call(sessions, username="bob")
    writer = RecordWriter(sessions, None)
    recorder = CallRecorder(writer, CallRef(bob.user_id, alice.call_id, alice.task_id))   # wrong tenant
    own = CallRecorder(writer, CallRef(bob.user_id, bob.call_id, bob.task_id))
    own.transcript(Speaker.AGENT, "bob's own line", 0)   # in the same batch: still written
    recorder.transcript(Speaker.AGENT, "must not land in alice's call", 0)
    await recorder.close()
    async with sessions() as db:
        assert await repo.list_transcript(db, alice.user_id, alice.call_id) == []
        assert [line.text for line in await repo.list_transcript(db, bob.user_id, bob.call_id)] == \
            ["bob's own line"]


async def test_hundreds_of_calls_recording_at_once_use_one_connection_and_lose_nothing(engine, sessions):
    """500 calls starting together used to mean 500 writers for a pool of 15 connections: after 30 s the
    pool timed out (SQLite: 'database is locked') and records were lost. One writer holds one connection."""
    calls = [await seed_call(sessions, username=f"user{n}") for n in range(200)]
    writer = RecordWriter(sessions, None)
    recorders = [CallRecorder(writer, CallRef(c.user_id, c.call_id, c.task_id)) for c in calls]
    begun = count_transactions(engine)
    in_use, most_in_use = [0], [0]

    @event.listens_for(engine.sync_engine, "checkout")
    def _checkout(*_):
        in_use[0] += 1
        most_in_use[0] = max(most_in_use[0], in_use[0])

    @event.listens_for(engine.sync_engine, "checkin")
    def _checkin(*_):
        in_use[0] -= 1

    async def one_call(n: int, recorder: CallRecorder) -> None:
        recorder.bridged()
        for line in range(5):   # lines arrive over time, interleaved with the other calls'
            recorder.transcript(Speaker.AGENT if line % 2 else Speaker.CALLEE, f"call {n} line {line}", line * 100)
            recorder.event("ai.tool", {"line": line})
            await asyncio.sleep(0.001 * (n % 7))
        recorder.outcome_hint(CallOutcome.VOICEMAIL if n % 2 else CallOutcome.FAILED_AI)
        await recorder.close()

    await asyncio.gather(*(one_call(n, recorder) for n, recorder in enumerate(recorders)))
    await writer.close()

    assert most_in_use[0] == 1
    assert begun[0] < 200   # records of many calls share a transaction
    async with sessions() as db:
        for n, call in enumerate(calls):
            lines = await repo.list_transcript(db, call.user_id, call.call_id)
            events = await repo.list_call_events(db, call.user_id, call.call_id)
            row = await db.get(Call, call.call_id)
            assert [line.text for line in lines] == [f"call {n} line {line}" for line in range(5)]
            assert [e.payload["line"] for e in events] == list(range(5))
            assert row.bridged_to_ai and row.outcome is (CallOutcome.VOICEMAIL if n % 2 else CallOutcome.FAILED_AI)


async def test_a_database_that_does_not_answer_does_not_hold_up_the_stop(caplog):
    """A server that accepts the connection and never answers: stopping gives up after its timeout and says
    how many records were not saved, instead of hanging."""
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    engine = create_engine(f"postgresql+asyncpg://opendeep@127.0.0.1:{port}/test")
    writer = RecordWriter(session_factory(engine), None)
    recorder = CallRecorder(writer, CallRef(1, 1, 1))
    recorder.transcript(Speaker.AGENT, "hello", 0)
    recorder.event("ai.tool", {})
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        assert await writer.flush(recorder.call, timeout=0.3) is False
        await writer.close(timeout=0.3)
    finally:
        silent.close()
        await engine.dispose()
    assert loop.time() - started < 3
    assert "call 1: database writes did not finish within 0.3 s; 2 records not yet saved" in caplog.text
    assert "stopping: 2 call records not saved" in caplog.text
