"""The post-call analyzer, with the real openai SDK talking HTTP to a fake_openai OpenAI server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta, timezone

import pytest
from sqlalchemy import select

from ami_controller.outcomes import finish_call
from ami_controller.scheduler import claim_due_tasks
from db import repo, task_life
from db.models import Call, CallOutcome, DndEntry, Speaker, TaskStatus
from db.types import utcnow
from opendeep.analyzer import AUDIOSOCKET_SETTLE, PostCallAnalyzer
from opendeep.events import EventHub
from tests.doubles.aftercall_seed import answered_call, end_call, load, seed_task, start_call, verdict

CONVERSATION = [
    (Speaker.AGENT, "Hello, I'm calling for Alice to book a cleaning next week."),
    (Speaker.CALLEE, "We have Tuesday at ten."),
    (Speaker.AGENT, "Tuesday at ten is perfect, please book it."),
]


@pytest.fixture
def llm_settings(settings, fake_openai):
    return dataclasses.replace(settings, openai_base_url=fake_openai.base_url, llm_timeout_seconds=5.0,
                               openai_analyzer_model="analyzer-test-model")


@pytest.fixture
async def analyzer(llm_settings, sessions):
    service = PostCallAnalyzer(llm_settings, sessions, EventHub(), max_attempts=3, retry_base_seconds=0)
    yield service
    await service.close()


async def events_of(sessions, seeded):
    async with sessions() as session:
        return [(e.type, e.reason) for e in await repo.list_task_events(session, seeded.user_id, seeded.task_id)]


def drain(queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def test_successful_call_completes_the_task_with_the_booked_time(sessions, llm_settings, fake_openai, analyzer):
    seeded = await seed_task(sessions)
    call_id = await answered_call(sessions, llm_settings, seeded, CONVERSATION, end_reason="appointment booked")
    fake_openai.queue_reply(content=verdict("success", summary="Booked Tuesday 10:00.",
                                     extracted={"booked_time": "Tuesday 10:00"}, reason="the callee confirmed"))
    async with analyzer.events.subscribe(seeded.user_id) as queue:
        assert await analyzer.run_once() == 1
        published = drain(queue)

    task, call = await load(sessions, seeded, call_id)
    assert task.status is TaskStatus.COMPLETED
    assert task.status_reason == "objective met: the callee confirmed"
    assert task.result["data"] == {"booked_time": "Tuesday 10:00"} and task.result["call_id"] == call_id
    assert call.analysis["outcome"] == "success" and call.analyzed_at is not None and call.analysis_claim is None
    assert ("analysis.completed", "objective met: the callee confirmed") in await events_of(sessions, seeded)
    assert [(e.kind, e.payload) for e in published] == [
        ("task.updated", {"task_id": seeded.task_id, "campaign_id": seeded.campaign_id, "status": "completed"})]

    # What the model was asked: structured output in our schema, with the transcript and the call AI's events.
    (body,) = fake_openai.requests
    assert body["model"] == "analyzer-test-model"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert "do_not_call" in json.dumps(body["response_format"]["json_schema"]["schema"])
    prompt = body["messages"][-1]["content"]
    assert "callee: We have Tuesday at ten." in prompt
    assert "ai.end_call" in prompt and "appointment booked" in prompt and "Book a cleaning next week" in prompt

    assert await analyzer.run_once() == 0  # applied once: nothing left to analyze
    assert len(fake_openai.requests) == 1


# The callee's "call me back the day after tomorrow" in their zone (+02:00), as the model would write it.
CALLBACK = (utcnow() + timedelta(days=2)).replace(microsecond=0)
RETRY_AT = CALLBACK.astimezone(timezone(timedelta(hours=2))).isoformat()


@pytest.mark.parametrize(("answer", "max_attempts", "status", "in_reason", "dnd"), [
    (verdict("partial", should_retry=True, reason="only got the price"), 3, TaskStatus.RETRY_SCHEDULED,
     "partly done on attempt 1 of 3", False),
    (verdict("partial", reason="price known, no slot needed"), 3, TaskStatus.COMPLETED, "partly done", False),
    (verdict("retry", should_retry=True, retry_at=RETRY_AT, callback_requested=True, reason="call back Tuesday"),
     3, TaskStatus.RETRY_SCHEDULED, "time the callee asked for", False),
    (verdict("voicemail", should_retry=True, reason="answering machine"), 3, TaskStatus.RETRY_SCHEDULED,
     "voicemail on attempt 1 of 3", False),
    (verdict("retry", should_retry=True, reason="line cut off"), 1, TaskStatus.FAILED, "no attempts left", False),
    (verdict("failed", reason="practice closed for good"), 3, TaskStatus.FAILED, "objective cannot be met", False),
    (verdict("wrong_number", reason="this is a pizzeria"), 3, TaskStatus.FAILED, "wrong number", False),
    (verdict("do_not_call", add_to_dnd=True, reason="stop calling me"), 3, TaskStatus.CANCELLED_DND,
     "asked not to be called again", True),
    (verdict("success", add_to_dnd=True, reason="booked, but never call again"), 3, TaskStatus.COMPLETED,
     "objective met", True),
], ids=["partial-retry", "partial-done", "callback-time", "voicemail", "retry-exhausted", "failed",
        "wrong-number", "do-not-call", "success-then-dnd"])
async def test_every_verdict_moves_the_task_by_its_rule(sessions, llm_settings, fake_openai, analyzer, answer,
                                                        max_attempts, status, in_reason, dnd):
    seeded = await seed_task(sessions, max_attempts=max_attempts)
    call_id = await answered_call(sessions, llm_settings, seeded, CONVERSATION)
    fake_openai.queue_reply(content=answer)
    before = utcnow()
    assert await analyzer.run_once() == 1

    task, call = await load(sessions, seeded, call_id)
    assert task.status is status, task.status_reason
    assert in_reason in task.status_reason
    assert call.analysis["outcome"] == json.loads(answer)["outcome"]
    async with sessions() as session:
        listed = await repo.is_dnd(session, seeded.user_id, task.phone_number)
    assert listed is dnd
    if status is TaskStatus.RETRY_SCHEDULED:
        asked = json.loads(answer)["retry_at"]
        if asked:
            assert task.next_action_time == CALLBACK
        else:  # RETRY_BACKOFF_BASE_SECONDS (300) after the first attempt, no jitter in tests
            assert before + timedelta(seconds=299) <= task.next_action_time <= utcnow() + timedelta(seconds=301)
        assert str(call.attempt_number) in task.status_reason


async def test_unconnected_calls_are_decided_by_rule_without_asking_the_model(sessions, llm_settings, fake_openai,
                                                                              analyzer):
    seeded = await seed_task(sessions)
    call_id = await start_call(sessions, seeded, answered=False)
    async with sessions() as session, session.begin():
        await finish_call(session, llm_settings, user_id=seeded.user_id, call_id=call_id,
                          outcome=CallOutcome.BUSY, dial_status="BUSY", source="agi.call-end")
    assert await analyzer.run_once() == 0
    assert fake_openai.requests == []
    task, _ = await load(sessions, seeded)
    assert task.status is TaskStatus.RETRY_SCHEDULED


@pytest.mark.parametrize(("bad", "complaint"), [
    ("Sure! The call went well.", "not valid JSON"),
    (json.dumps({"outcome": "maybe"}), "does not match the analysis schema"),
    ("", "empty answer"),
])
async def test_invalid_answers_are_retried_then_the_task_is_held_for_review(sessions, llm_settings, fake_openai,
                                                                           analyzer, bad, complaint):
    seeded = await seed_task(sessions)
    call_id = await answered_call(sessions, llm_settings, seeded, CONVERSATION)
    for attempt in (1, 2):
        fake_openai.queue_reply(content=bad)
        assert await analyzer.run_once() == 1
        task, call = await load(sessions, seeded, call_id)
        assert task.status is TaskStatus.IN_PROGRESS  # still waiting: never silently completed
        assert f"attempt {attempt} of 3 failed" in task.status_reason and complaint in task.status_reason
        assert call.analyzed_at is None and call.analysis_attempts == attempt

    fake_openai.queue_reply(content=bad)
    async with analyzer.events.subscribe(seeded.user_id) as queue:
        assert await analyzer.run_once() == 1
        kinds = [e.kind for e in drain(queue)]
    task, call = await load(sessions, seeded, call_id)
    assert task.status is TaskStatus.ON_HOLD
    assert "failed after 3 attempt(s)" in task.status_reason and f"/calls/{call_id}" in task.status_reason
    assert complaint in task.status_reason
    async with sessions() as session:   # the scheduler must not redial it on its own, whatever the time
        claimed = await claim_due_tasks(session, claimer="t", limit=100, now=utcnow() + timedelta(days=3650))
    assert task.id not in [c.id for c in claimed]
    assert task.result == {}
    assert call.analyzed_at is not None and complaint in call.analysis["error"]
    assert kinds == ["notification", "task.updated"]
    async with sessions() as session:
        notes = await repo.list_notifications(session, seeded.user_id)
    assert [n.kind for n in notes] == ["task.on_hold"]
    assert [t for t, _ in await events_of(sessions, seeded)].count("analysis.retry") == 2
    assert await analyzer.run_once() == 0 and len(fake_openai.requests) == 3


async def test_a_failed_answer_waits_for_its_backoff_then_succeeds(sessions, llm_settings, fake_openai):
    analyzer = PostCallAnalyzer(llm_settings, sessions, max_attempts=3, retry_base_seconds=30)
    try:
        seeded = await seed_task(sessions)
        call_id = await answered_call(sessions, llm_settings, seeded, CONVERSATION)
        fake_openai.queue_reply(status=503)
        assert await analyzer.run_once() == 1
        task, call = await load(sessions, seeded, call_id)
        assert "HTTP 503" in task.status_reason
        assert utcnow() + timedelta(seconds=25) < call.analysis_locked_until <= utcnow() + timedelta(seconds=30)
        assert await analyzer.due_calls() == []  # backing off
        assert await analyzer.due_calls(now=call.analysis_locked_until) == [(seeded.user_id, call_id)]

        fake_openai.queue_reply(content=verdict("success"))
        assert await analyzer.analyze_call(seeded.user_id, call_id) is False  # the claim respects the backoff
        async with sessions() as session, session.begin():  # time passes
            stored = await repo.get_call(session, seeded.user_id, call_id)
            stored.analysis_locked_until = utcnow() - timedelta(seconds=1)
        assert await analyzer.run_once() == 1
        task, call = await load(sessions, seeded, call_id)
        assert task.status is TaskStatus.COMPLETED and call.analysis["attempts"] == 2
    finally:
        await analyzer.close()


async def test_a_model_timeout_is_a_retryable_failure(sessions, llm_settings, fake_openai):
    slow = dataclasses.replace(llm_settings, llm_timeout_seconds=0.2)
    analyzer = PostCallAnalyzer(slow, sessions, max_attempts=3, retry_base_seconds=0)
    try:
        seeded = await seed_task(sessions)
        call_id = await answered_call(sessions, slow, seeded, CONVERSATION)
        fake_openai.queue_reply(content=verdict("success"), delay=0.6)
        assert await asyncio.wait_for(analyzer.run_once(), 5) == 1
        task, call = await load(sessions, seeded, call_id)
        assert task.status is TaskStatus.IN_PROGRESS and "did not answer in time" in task.status_reason
        assert call.analyzed_at is None

        fake_openai.queue_reply(content=verdict("success", summary="Booked."))
        assert await analyzer.run_once() == 1
        task, _ = await load(sessions, seeded)
        assert task.status is TaskStatus.COMPLETED and task.result["summary"] == "Booked."
    finally:
        await analyzer.close()


async def test_two_analyzers_racing_apply_a_verdict_once(sessions, llm_settings, fake_openai):
    first = PostCallAnalyzer(llm_settings, sessions, worker_id="first")
    second = PostCallAnalyzer(llm_settings, sessions, worker_id="second")
    try:
        seeded = await seed_task(sessions)
        await answered_call(sessions, llm_settings, seeded, CONVERSATION)
        fake_openai.queue_reply(content=verdict("do_not_call", add_to_dnd=True), delay=0.2)
        results = await asyncio.gather(first.run_once(), second.run_once())
        assert sorted(results) == [0, 1]
        assert len(fake_openai.requests) == 1
        applied = [t for t, _ in await events_of(sessions, seeded) if t.startswith("analysis.")]
        assert applied == ["analysis.dnd_added", "analysis.cancelled_dnd"]
    finally:
        await first.close()
        await second.close()


async def test_an_analyzer_whose_lease_ran_out_does_not_apply_over_the_new_owner(sessions, llm_settings, fake_openai):
    # The first analyzer's lease expires at once (as if its LLM call outlived the lease); a second one takes over.
    slow = PostCallAnalyzer(llm_settings, sessions, worker_id="slow", lease_seconds=0)
    quick = PostCallAnalyzer(llm_settings, sessions, worker_id="quick")
    try:
        seeded = await seed_task(sessions)
        call_id = await answered_call(sessions, llm_settings, seeded, CONVERSATION)
        fake_openai.queue_reply(content=verdict("failed", reason="slow verdict"), delay=0.5)
        fake_openai.queue_reply(content=verdict("success", reason="quick verdict"))
        slow_run = asyncio.create_task(slow.run_once())
        while not fake_openai.requests:
            await asyncio.sleep(0.01)
        assert await quick.run_once() == 1
        assert await asyncio.wait_for(slow_run, 5) == 1
        task, call = await load(sessions, seeded, call_id)
        assert task.status is TaskStatus.COMPLETED and call.analysis["analyzer"] == "quick"
        applied = [r for t, r in await events_of(sessions, seeded) if t.startswith("analysis.")]
        assert applied == ["objective met: quick verdict"]
    finally:
        await slow.close()
        await quick.close()


async def test_a_task_the_user_cancelled_meanwhile_keeps_its_status(sessions, llm_settings, fake_openai, analyzer):
    seeded = await seed_task(sessions)
    call_id = await answered_call(sessions, llm_settings, seeded, CONVERSATION)
    async with sessions() as session, session.begin():
        await task_life.move(session, seeded.user_id, seeded.task_id, TaskStatus.CANCELLED,
                                   reason="cancelled by the user")
    fake_openai.queue_reply(content=verdict("do_not_call", add_to_dnd=True))
    assert await analyzer.run_once() == 1
    task, call = await load(sessions, seeded, call_id)
    assert task.status is TaskStatus.CANCELLED and call.analysis["outcome"] == "do_not_call"
    assert "analysis.recorded" in [t for t, _ in await events_of(sessions, seeded)]
    async with sessions() as session:  # the callee's wish is honoured whatever the task's status
        assert (await session.scalars(select(DndEntry.phone_number))).all() == [task.phone_number]


async def test_without_an_llm_the_task_is_held_with_the_setting_to_fix(sessions, settings):
    analyzer = PostCallAnalyzer(settings, sessions, max_attempts=3)
    seeded = await seed_task(sessions)
    await answered_call(sessions, settings, seeded, CONVERSATION)
    assert await analyzer.run_once() == 1
    task, _ = await load(sessions, seeded)
    assert task.status is TaskStatus.ON_HOLD
    assert "OPENAI_API_KEY" in task.status_reason and "after 1 attempt(s)" in task.status_reason


async def test_a_call_whose_analyses_keep_dying_midway_is_held_not_retried_forever(sessions, llm_settings, fake_openai,
                                                                                   analyzer):
    seeded = await seed_task(sessions)
    call_id = await answered_call(sessions, llm_settings, seeded, CONVERSATION)
    async with sessions() as session, session.begin():  # three claims whose process died before finishing
        stored = await repo.get_call(session, seeded.user_id, call_id)
        stored.analysis_attempts = 3
        stored.analysis_claim = "dead-process"
        stored.analysis_locked_until = utcnow() - timedelta(seconds=1)
    assert await analyzer.run_once() == 1
    assert fake_openai.requests == []
    task, call = await load(sessions, seeded, call_id)
    assert task.status is TaskStatus.ON_HOLD and "stopped before finishing 3 time(s)" in task.status_reason
    assert call.analyzed_at is not None


async def test_a_call_bridged_to_the_ai_waits_until_its_transcript_is_saved(sessions, analyzer, llm_settings):
    """Asterisk's call-end can come before the AudioSocket side has written its last lines: the call is
    analyzed once `audiosocket.ended` is saved (or AUDIOSOCKET_SETTLE after its end, if it never comes)."""
    seeded = await seed_task(sessions)
    call_id = await start_call(sessions, seeded)
    async with sessions() as session, session.begin():
        (await session.get(Call, call_id)).bridged_to_ai = True
    await end_call(sessions, llm_settings, seeded, call_id)
    assert await analyzer.due_calls() == []
    _, call = await load(sessions, seeded, call_id)
    assert await analyzer.due_calls(now=call.ended_at + AUDIOSOCKET_SETTLE) == [(seeded.user_id, call_id)]

    async with sessions() as session, session.begin():
        await repo.record_call_event(session, seeded.user_id, call_id, "audiosocket.ended", {"reason": "ai_ended"})
    assert await analyzer.due_calls() == [(seeded.user_id, call_id)]
