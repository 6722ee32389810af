"""How a call ended -> what happens to its task: the rules for calls that never connected, applied once."""

from datetime import timedelta

import pytest

from ami_controller.outcomes import AWAITING_ANALYSIS, finish_call, map_dial_status, map_originate_reason
from db import repo, task_life
from db.models import Call, CallOutcome, CallStatus, TaskStatus
from db.types import utcnow
from opendeep.events import EventHub


@pytest.mark.parametrize("reason, response, outcome", [
    (4, "Success", CallOutcome.ANSWERED),
    ("0", "Failure", CallOutcome.FAILED),        # no such extension (captured: Reason 0, Uniqueid <unknown>)
    (3, "Failure", CallOutcome.NO_ANSWER),
    (5, "Failure", CallOutcome.BUSY),
    (8, "Failure", CallOutcome.CONGESTION),
    (1, "Failure", CallOutcome.FAILED),
    (4, "Failure", CallOutcome.FAILED),          # contradictory: never call a failure an answer
    ("junk", None, CallOutcome.FAILED),
])
def test_originate_reasons(reason, response, outcome):
    assert map_originate_reason(reason, response) is outcome


@pytest.mark.parametrize("dial_status, cause, outcome", [
    ("ANSWER", 16, CallOutcome.ANSWERED),
    ("BUSY", 17, CallOutcome.BUSY),
    ("NOANSWER", 19, CallOutcome.NO_ANSWER),
    ("CONGESTION", 34, CallOutcome.CONGESTION),
    ("CHANUNAVAIL", 0, CallOutcome.FAILED),
    ("CANCEL", 16, CallOutcome.CANCELLED),
    ("", "17", CallOutcome.BUSY),                # no DIALSTATUS: HANGUPCAUSE decides
    ("", "16", CallOutcome.FAILED),              # never dialed: a normal clearing is not an answer
    (None, None, CallOutcome.FAILED),
])
def test_dial_status_and_hangup_cause(dial_status, cause, outcome):
    assert map_dial_status(dial_status, cause) is outcome


async def _call_in_progress(sessions, attempt_count=1, max_attempts=3):
    async with sessions() as session:
        user = await repo.create_user(session, "alice", "x")
        campaign = await repo.create_campaign(session, user.id, name="c")
        task = await repo.add_task(session, user.id, campaign.id, target_name="Dr. A",
                                   phone_number="+14155550123", max_attempts=max_attempts)
        task.status, task.attempt_count = TaskStatus.IN_PROGRESS, attempt_count
        call = Call(user_id=user.id, task_id=task.id, attempt_number=attempt_count,
                    dialed_number=task.phone_number, status=CallStatus.ORIGINATING, started_at=utcnow())
        session.add(call)
        await session.commit()
        return user.id, task.id, call.id


async def test_busy_callee_is_retried_with_backoff(sessions, settings):
    user_id, task_id, call_id = await _call_in_progress(sessions)
    before = utcnow()
    async with sessions() as session:
        assert await finish_call(session, settings, user_id=user_id, call_id=call_id, outcome=CallOutcome.BUSY,
                                 dial_status="BUSY", hangup_cause=17, source="agi.call-end")
        await session.commit()
    async with sessions() as session:
        task = await repo.get_task(session, user_id, task_id)
        call = await repo.get_call(session, user_id, call_id)
        events = [e.type for e in await repo.list_call_events(session, user_id, call_id)]
    assert task.status is TaskStatus.RETRY_SCHEDULED
    delay = (task.next_action_time - before).total_seconds()
    assert settings.retry_backoff_base_seconds - 1 <= delay <= settings.retry_backoff_base_seconds + 5
    assert (call.status, call.outcome, call.dial_status, call.hangup_cause) == (
        CallStatus.ENDED, CallOutcome.BUSY, "BUSY", 17)
    assert call.analyzed_at is not None          # decided by rule: the analyzer has nothing to read
    assert events == ["call.ended"]


async def test_backoff_doubles_per_attempt(sessions, settings):
    user_id, task_id, call_id = await _call_in_progress(sessions, attempt_count=3, max_attempts=5)
    async with sessions() as session:
        await finish_call(session, settings, user_id=user_id, call_id=call_id, outcome=CallOutcome.NO_ANSWER,
                          source="ami.originate_response")
        await session.commit()
        task = await repo.get_task(session, user_id, task_id)
    expected = min(settings.retry_backoff_base_seconds * 4, settings.retry_backoff_max_seconds)
    assert abs((task.next_action_time - utcnow()).total_seconds() - expected) < 5


async def test_attempts_exhausted_fails_the_task(sessions, settings):
    user_id, task_id, call_id = await _call_in_progress(sessions, attempt_count=3, max_attempts=3)
    async with sessions() as session:
        await finish_call(session, settings, user_id=user_id, call_id=call_id, outcome=CallOutcome.NO_ANSWER,
                          source="agi.call-end")
        await session.commit()
        task = await repo.get_task(session, user_id, task_id)
    assert task.status is TaskStatus.FAILED
    assert "no attempts left" in task.status_reason


async def test_answered_call_waits_for_the_analyzer(sessions, settings):
    user_id, task_id, call_id = await _call_in_progress(sessions)
    hub = EventHub()
    async with hub.subscribe(user_id) as page, sessions() as session:
        await finish_call(session, settings, user_id=user_id, call_id=call_id, outcome=CallOutcome.ANSWERED,
                          dial_status="ANSWER", hangup_cause=16, answered_seconds=42, source="agi.call-end",
                          events=hub)
        await session.commit()
        kinds = [page.get_nowait().kind, page.get_nowait().kind]
    async with sessions() as session:
        task = await repo.get_task(session, user_id, task_id)
        call = await repo.get_call(session, user_id, call_id)
    assert (task.status, task.status_reason) == (TaskStatus.IN_PROGRESS, AWAITING_ANALYSIS)
    assert call.analyzed_at is None and call.duration_seconds == 42
    assert abs((call.ended_at - call.answered_at) - timedelta(seconds=42)) < timedelta(seconds=1)
    assert kinds == ["call.updated", "task.updated"]


async def test_the_second_report_of_the_same_call_changes_nothing(sessions, settings):
    """AMI's OriginateResponse and the h extension may both report the end: the first one wins."""
    user_id, task_id, call_id = await _call_in_progress(sessions)
    async with sessions() as session:
        assert await finish_call(session, settings, user_id=user_id, call_id=call_id,
                                 outcome=CallOutcome.BUSY, source="agi.call-end")
        await session.commit()
    async with sessions() as session:
        assert not await finish_call(session, settings, user_id=user_id, call_id=call_id,
                                     outcome=CallOutcome.FAILED, source="ami.originate_response")
        await session.commit()
        call = await repo.get_call(session, user_id, call_id)
        events = await repo.list_task_events(session, user_id, task_id)
    assert call.outcome is CallOutcome.BUSY
    assert [e.type for e in events] == ["task.retry_scheduled"]


async def test_a_task_cancelled_meanwhile_stays_cancelled(sessions, settings):
    user_id, task_id, call_id = await _call_in_progress(sessions)
    async with sessions() as session:
        await task_life.move(session, user_id, task_id, TaskStatus.CANCELLED, reason="user cancelled")
        await finish_call(session, settings, user_id=user_id, call_id=call_id, outcome=CallOutcome.CANCELLED,
                          source="agi.call-end")
        await session.commit()
        task = await repo.get_task(session, user_id, task_id)
    assert task.status is TaskStatus.CANCELLED


async def test_dnd_blocked_call_cancels_the_task(sessions, settings):
    user_id, task_id, call_id = await _call_in_progress(sessions)
    async with sessions() as session:
        await finish_call(session, settings, user_id=user_id, call_id=call_id, outcome=CallOutcome.DND_BLOCKED,
                          source="agi.call-start")
        await session.commit()
        task = await repo.get_task(session, user_id, task_id)
    assert task.status is TaskStatus.CANCELLED_DND


async def test_another_tenant_cannot_finish_the_call(sessions, settings):
    user_id, task_id, call_id = await _call_in_progress(sessions)
    async with sessions() as session:
        bob = await repo.create_user(session, "bob", "x")
        assert not await finish_call(session, settings, user_id=bob.id, call_id=call_id,
                                     outcome=CallOutcome.BUSY, source="agi.call-end")
        call = await repo.get_call(session, user_id, call_id)
    assert call.status is CallStatus.ORIGINATING
