"""The task lifecycle manager: crash recovery without double dialing, inter-call context, priority, check-ins."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
from datetime import timedelta

from sqlalchemy import select, update

from ami_controller.scheduler import claim_due_tasks
from db import repo
from db.models import Call, CallEvent, CallOutcome, CallStatus, Speaker, Task, TaskStatus
from db.types import utcnow
from opendeep.analyzer import PostCallAnalyzer
from opendeep.events import EventHub
from opendeep.lifecycle import CALLBACK_PRIORITY, RECOVERED_REASON, LifecycleManager
from tests.doubles.aftercall_seed import answered_call, load, seed_task, start_call, verdict

LONG_AGO = timedelta(hours=2)  # well past STUCK_TASK_SECONDS (900 s by default)


async def task_events(sessions, seeded, prefix="lifecycle."):
    async with sessions() as session:
        return [(e.type, e.reason) for e in await repo.list_task_events(session, seeded.user_id, seeded.task_id)
                if e.type.startswith(prefix)]


async def test_recovery_after_a_crash_loses_no_task_and_dials_none_twice(sessions, llm_settings, fake_openai):
    old = utcnow() - LONG_AGO
    # The process died with these rows in flight:
    ringing = await seed_task(sessions, phone="+15551230001")       # dialing, never heard back
    ringing_call = await start_call(sessions, ringing, answered=False, created_at=old)
    talking = await seed_task(sessions, phone="+15551230002")       # mid-conversation
    talking_call = await start_call(sessions, talking, answered=True, created_at=old)
    await repo_say(sessions, talking, talking_call, "We open at nine tomorrow.")
    claimed = await seed_task(sessions, phone="+15551230003")       # claimed by the scheduler, no call row yet
    async with sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == claimed.task_id).values(
            status=TaskStatus.QUEUED, attempt_count=1, claimed_by="scheduler-1", claimed_at=old, updated_at=old))
    live = await seed_task(sessions, phone="+15551230004")          # a call that is really still going on
    live_call = await start_call(sessions, live, answered=True)
    waiting = await seed_task(sessions, phone="+15551230005")       # ended, waiting for the analyzer
    waiting_call = await answered_call(sessions, llm_settings, waiting, [(Speaker.CALLEE, "Hello?")])
    async with sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == waiting.task_id).values(updated_at=old))

    hub = EventHub()
    first, second = LifecycleManager(llm_settings, sessions, hub), LifecycleManager(llm_settings, sessions, hub)
    async with hub.subscribe(ringing.user_id) as queue:
        results = await asyncio.gather(first.run_once(), second.run_once())  # two processes restarting at once
        assert sum(r["recovered"] for r in results) == 3
        assert (await first.run_once())["recovered"] == 0                    # and nothing more on the next pass
        updates = {}
        while not queue.empty():
            event = queue.get_nowait()
            updates[event.payload["task_id"]] = event.payload["status"]

    task, call = await load(sessions, ringing, ringing_call)
    assert call.status is CallStatus.ENDED and call.outcome is CallOutcome.FAILED
    assert task.status is TaskStatus.RETRY_SCHEDULED and task.attempt_count == 1
    assert [r for _, r in await task_events(sessions, ringing)][0].startswith(
        f"{RECOVERED_REASON}: call {ringing_call} was left ringing")

    task, call = await load(sessions, talking, talking_call)
    assert call.outcome is CallOutcome.FAILED_AI and call.analyzed_at is None  # the analyzer reads what was said
    assert task.status is TaskStatus.IN_PROGRESS

    task, _ = await load(sessions, claimed)
    assert task.status is TaskStatus.PENDING and task.attempt_count == 0   # the attempt never dialed is given back
    assert task.claimed_by is None and RECOVERED_REASON in task.status_reason

    task, call = await load(sessions, live, live_call)
    assert task.status is TaskStatus.IN_PROGRESS and call.status is CallStatus.ANSWERED  # left alone
    task, call = await load(sessions, waiting, waiting_call)
    assert task.status is TaskStatus.IN_PROGRESS and await task_events(sessions, waiting) == []

    assert updates == {ringing.task_id: "retry_scheduled", talking.task_id: "in_progress",
                       claimed.task_id: "pending"}
    async with sessions() as session:  # each open call was ended exactly once
        ended = (await session.scalars(select(CallEvent.call_id).where(CallEvent.type == "call.ended")
                                       .order_by(CallEvent.call_id))).all()
    assert ended == sorted([ringing_call, talking_call, waiting_call])
    for seeded in (ringing, talking, claimed):
        assert len(await task_events(sessions, seeded, "lifecycle.recovered")) == 1

    # The scheduler now dials only what is due and has nothing live: never the live call's task, never twice.
    async with sessions() as session:
        got = await claim_due_tasks(session, claimer="s1", limit=10, now=utcnow() + timedelta(days=1))
    async with sessions() as session:
        again = await claim_due_tasks(session, claimer="s2", limit=10, now=utcnow() + timedelta(days=1))
    assert sorted(t.id for t in got) == sorted([ringing.task_id, claimed.task_id]) and again == []

    # The conversation cut off by the crash is analyzed like any other.
    fake_openai.queue_reply(content=verdict("retry", should_retry=True, reason="cut off; they open at nine"))
    analyzer = PostCallAnalyzer(llm_settings, sessions)
    try:
        assert await analyzer.analyze_call(talking.user_id, talking_call)
    finally:
        await analyzer.close()
    task, _ = await load(sessions, talking)
    assert task.status is TaskStatus.RETRY_SCHEDULED


async def repo_say(sessions, seeded, call_id, text):
    async with sessions() as session, session.begin():
        await repo.add_transcript(session, seeded.user_id, call_id, Speaker.CALLEE, text, 0)


async def test_a_recently_claimed_task_is_not_recovered_yet(sessions, settings):
    seeded = await seed_task(sessions)
    async with sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == seeded.task_id).values(
            status=TaskStatus.QUEUED, attempt_count=1, claimed_at=utcnow()))
    manager = LifecycleManager(settings, sessions)
    assert (await manager.run_once())["recovered"] == 0
    assert (await manager.run_once(now=utcnow() + timedelta(seconds=settings.stuck_task_seconds + 5)))[
        "recovered"] == 1
    task, _ = await load(sessions, seeded)
    assert task.status is TaskStatus.PENDING


async def test_a_stuck_task_with_no_attempts_left_fails_with_its_reason(sessions, settings):
    seeded = await seed_task(sessions, max_attempts=1)
    old = utcnow() - LONG_AGO
    call_id = await start_call(sessions, seeded, answered=False, created_at=old)
    async with sessions() as session, session.begin():  # the call ended by rule, but the task was re-queued
        await session.execute(update(Call).where(Call.id == call_id).values(
            status=CallStatus.ENDED, outcome=CallOutcome.NO_ANSWER, analyzed_at=old))
        await session.execute(update(Task).where(Task.id == seeded.task_id).values(
            status=TaskStatus.QUEUED, updated_at=old, claimed_at=old))
    assert (await LifecycleManager(settings, sessions).run_once())["recovered"] == 1
    task, _ = await load(sessions, seeded)
    assert task.status is TaskStatus.FAILED and "all 1 attempts used" in task.status_reason


def call_ai_instructions(task, user, campaign):
    """The call AI's instructions for this attempt (the AudioSocket engineer's builder, once it exists)."""
    if importlib.util.find_spec("audiosocket.instructions") is None:
        return task.inter_call_context
    from audiosocket.instructions import build_instructions
    return build_instructions(task=task, user=user, campaign=campaign)


async def test_what_call_one_learned_reaches_the_second_attempt(sessions, llm_settings, fake_openai):
    seeded = await seed_task(sessions)
    await answered_call(sessions, llm_settings, seeded, [
        (Speaker.CALLEE, "Dr. Smith only takes bookings from Maria, she is in mornings."),
    ])
    fake_openai.queue_reply(content=verdict("retry", should_retry=True, summary="Receptionist could not book.",
                                     extracted={"price": "$120"}, notes="Ask for Maria; call before noon."))
    analyzer = PostCallAnalyzer(llm_settings, sessions)
    try:
        assert await analyzer.run_once() == 1
    finally:
        await analyzer.close()
    task, _ = await load(sessions, seeded)
    assert task.status is TaskStatus.RETRY_SCHEDULED
    assert task.inter_call_context.startswith("Call 1 (")
    assert "Receptionist could not book. Next time: Ask for Maria; call before noon." in task.inter_call_context
    assert "price=$120" in task.inter_call_context

    # Attempt 2 starts: the instructions the call AI gets carry what call 1 learned.
    await start_call(sessions, seeded)
    async with sessions() as session:
        task = await repo.get_task(session, seeded.user_id, seeded.task_id)
        user = await repo.get_user(session, seeded.user_id)
        campaign = await repo.get_campaign(session, seeded.user_id, seeded.campaign_id)
    instructions = call_ai_instructions(task, user, campaign)
    assert "Receptionist could not book. Next time: Ask for Maria; call before noon." in instructions
    assert "price=$120" in instructions

    # The lifecycle pass keeps it: rebuilt from the calls, never duplicated, restored if lost.
    manager = LifecycleManager(llm_settings, sessions)
    assert (await manager.run_once())["context"] == 0
    async with sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == seeded.task_id).values(inter_call_context=""))
    assert (await manager.run_once())["context"] == 1
    restored, _ = await load(sessions, seeded)
    assert restored.inter_call_context == task.inter_call_context
    assert ("lifecycle.context", "carried what earlier calls learned into the next call") in await task_events(
        sessions, seeded)


async def test_a_requested_callback_raises_the_priority_once(sessions, llm_settings, fake_openai):
    seeded = await seed_task(sessions)
    await answered_call(sessions, llm_settings, seeded, [(Speaker.CALLEE, "Call me back tomorrow at three.")])
    when = (utcnow() + timedelta(days=1)).replace(microsecond=0).isoformat()
    fake_openai.queue_reply(content=verdict("retry", should_retry=True, retry_at=when, callback_requested=True))
    analyzer = PostCallAnalyzer(llm_settings, sessions)
    try:
        await analyzer.run_once()
    finally:
        await analyzer.close()
    manager = LifecycleManager(llm_settings, sessions)
    assert (await manager.run_once())["priority"] == 1
    assert (await manager.run_once())["priority"] == 0
    task, _ = await load(sessions, seeded)
    assert task.priority == CALLBACK_PRIORITY
    (event,) = await task_events(sessions, seeded, "lifecycle.priority")
    assert "callee asked for a callback" in event[1]


async def test_a_long_running_task_gets_one_check_in_per_period(sessions, settings):
    mine = await seed_task(sessions, username="alice")
    other = await seed_task(sessions, username="bob", target="Bob's plumber")
    async with sessions() as session, session.begin():
        await session.execute(update(Task).where(Task.id == mine.task_id).values(
            created_at=utcnow() - timedelta(days=2)))
    hub = EventHub()
    manager = LifecycleManager(settings, sessions, hub)
    async with hub.subscribe(mine.user_id) as queue:
        assert (await manager.run_once())["check_in"] == 1
        assert (await manager.run_once())["check_in"] == 0
        event = queue.get_nowait()
    assert event.kind == "notification" and "Dr. Smith Dental" in event.payload["message"]
    assert "open for 2.0 days" in event.payload["message"]
    async with sessions() as session:
        assert [n.kind for n in await repo.list_notifications(session, mine.user_id)] == ["task.check_in"]
        assert await repo.list_notifications(session, other.user_id) == []
    # A day later: Alice's next check-in is due, and Bob's task is now a day old too.
    assert (await manager.run_once(now=utcnow() + timedelta(days=1, hours=1)))["check_in"] == 2
    async with sessions() as session:
        assert len(await repo.list_notifications(session, mine.user_id)) == 2
        assert len(await repo.list_notifications(session, other.user_id)) == 1


async def test_an_open_call_younger_than_the_longest_possible_call_is_never_ended(sessions, settings):
    # Even with an impatient STUCK_TASK_SECONDS, a call may ring 45 s and talk 600 s (MAX_CALL_SECONDS).
    impatient = dataclasses.replace(settings, stuck_task_seconds=60)
    seeded = await seed_task(sessions)
    call_id = await start_call(sessions, seeded, answered=True, created_at=utcnow() - timedelta(seconds=300))
    manager = LifecycleManager(impatient, sessions)
    assert (await manager.run_once())["recovered"] == 0
    _, call = await load(sessions, seeded, call_id)
    assert call.status is CallStatus.ANSWERED
    assert (await manager.run_once(now=utcnow() + timedelta(seconds=500)))["recovered"] == 1
    task, call = await load(sessions, seeded, call_id)
    assert call.outcome is CallOutcome.FAILED_AI and task.status is TaskStatus.IN_PROGRESS
