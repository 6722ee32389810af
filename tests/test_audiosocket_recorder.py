"""The call recorder: what a live call writes (transcripts, events, hints) reaches the database complete, in
order and in few transactions, even when many records queue up at once (100 calls ending together)."""

from __future__ import annotations

from sqlalchemy import event, select

from audiosocket.recorder import CallRecorder, CallRef
from db import repo
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
    recorder = CallRecorder(sessions, None, CallRef(seeded.user_id, seeded.call_id, seeded.task_id))
    begun = count_transactions(engine)
    recorder.start()
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
    recorder = CallRecorder(sessions, None, CallRef(seeded.user_id, seeded.call_id, seeded.task_id))
    recorder.start()
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
    recorder = CallRecorder(sessions, None, CallRef(bob.user_id, alice.call_id, alice.task_id))   # wrong tenant
    recorder.start()
    recorder.transcript(Speaker.AGENT, "must not land in alice's call", 0)
    await recorder.close()
    async with sessions() as db:
        assert await repo.list_transcript(db, alice.user_id, alice.call_id) == []
