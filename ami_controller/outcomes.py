"""How a call ended, and what that means for its task.

Two sources say how a call ended: AMI's OriginateResponse (the call never reached the dialplan, or the callee
never answered the Local channel) and the dialplan's `h` extension (DIALSTATUS, HANGUPCAUSE, ANSWEREDTIME via
FastAGI call-end). Either may come first, both may come: `finish_call` is idempotent, and the first one wins.

Calls that never connected are decided here, by rule (retry with backoff, or failed once attempts are used up);
connected calls wait for the post-call analyzer (opendeep/analyzer.py), which reads the transcript.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from db import repo, task_life
from db.models import Call, CallOutcome, CallStatus, Task, TaskStatus
from db.typed import rows_changed
from db.types import utcnow
from opendeep.costs import record_trunk_usage
from opendeep.metrics import CALL_OUTCOMES
from opendeep.retry import next_retry_time
from opendeep.settings import Settings

if TYPE_CHECKING:
    from opendeep.events import EventHub

log = logging.getLogger(__name__)

# Asterisk's Originate "Reason" codes (enum ast_control_frame_type values it reports).
ORIGINATE_REASONS: dict[int, CallOutcome] = {
    0: CallOutcome.FAILED,       # no such extension / channel could not be created
    1: CallOutcome.FAILED,       # hung up before it rang
    3: CallOutcome.NO_ANSWER,    # rang, timed out
    4: CallOutcome.ANSWERED,
    5: CallOutcome.BUSY,
    8: CallOutcome.CONGESTION,
}

DIAL_STATUSES: dict[str, CallOutcome] = {
    "ANSWER": CallOutcome.ANSWERED,
    "BUSY": CallOutcome.BUSY,
    "NOANSWER": CallOutcome.NO_ANSWER,
    "CANCEL": CallOutcome.CANCELLED,
    "CONGESTION": CallOutcome.CONGESTION,
    "CHANUNAVAIL": CallOutcome.FAILED,
    "DONTCALL": CallOutcome.FAILED,
    "TORTURE": CallOutcome.FAILED,
    "INVALIDARGS": CallOutcome.FAILED,
}

# Q.850 causes (HANGUPCAUSE / AMI Hangup Cause) that say more than "it failed".
HANGUP_CAUSES: dict[int, CallOutcome] = {
    16: CallOutcome.ANSWERED,    # normal clearing (only meaningful after an answer)
    17: CallOutcome.BUSY,
    18: CallOutcome.NO_ANSWER,   # no user responding
    19: CallOutcome.NO_ANSWER,   # no answer from user (alerted)
    21: CallOutcome.BUSY,        # call rejected: treat like busy, try again later
    34: CallOutcome.CONGESTION,  # no circuit available
    38: CallOutcome.CONGESTION,  # network out of order
    41: CallOutcome.CONGESTION,  # temporary failure
    42: CallOutcome.CONGESTION,  # switching equipment congestion
}

AWAITING_ANALYSIS = "awaiting analysis"
DND_LISTED = "number is on the do-not-call list"   # call-start says which list (repo.dnd_verdict)


def map_originate_reason(reason: int | str | None, response: str | None = None) -> CallOutcome:
    """OriginateResponse's Reason/Response -> outcome. `Response: Success` is an answer whatever the Reason."""
    if (response or "").strip().lower() == "success":
        return CallOutcome.ANSWERED
    try:
        code = int(reason) if reason is not None else 0
    except (TypeError, ValueError):
        code = 0
    outcome = ORIGINATE_REASONS.get(code, CallOutcome.FAILED)
    return CallOutcome.FAILED if outcome is CallOutcome.ANSWERED else outcome


def map_dial_status(dial_status: str | None, hangup_cause: int | str | None = None) -> CallOutcome:
    """DIALSTATUS (preferred) or else HANGUPCAUSE -> outcome."""
    status = (dial_status or "").strip().upper()
    if status in DIAL_STATUSES:
        return DIAL_STATUSES[status]
    try:
        cause = int(hangup_cause) if hangup_cause not in (None, "") else None
    except (TypeError, ValueError):
        cause = None
    if cause is None:
        return CallOutcome.FAILED
    # Without DIALSTATUS the callee was never dialed (e.g. aborted before Dial): normal clearing is not an answer.
    outcome = HANGUP_CAUSES.get(cause, CallOutcome.FAILED)
    return CallOutcome.FAILED if outcome is CallOutcome.ANSWERED else outcome


async def finish_call(session: AsyncSession, settings: Settings, *, user_id: int, call_id: int,
                      outcome: CallOutcome, dial_status: str | None = None, hangup_cause: int | None = None,
                      answered_seconds: float | None = None, source: str,
                      events: EventHub | None = None) -> bool:
    """End the call once and move its task on. Returns True only for the caller that ended it.

    The caller commits. `source` (e.g. "ami.originate_response", "agi.call-end") is recorded in the event.
    """
    now = utcnow()
    values: dict = {"status": CallStatus.ENDED, "outcome": outcome, "ended_at": now}
    if dial_status:
        values["dial_status"] = dial_status[:32]
    if hangup_cause is not None:
        values["hangup_cause"] = int(hangup_cause)
    if answered_seconds is not None and answered_seconds >= 0:
        values["duration_seconds"] = int(round(answered_seconds))
    if not outcome.needs_analysis:
        values["analyzed_at"] = now  # decided by rule: nothing for the analyzer to read
    result = await session.execute(
        update(Call)
        .where(Call.id == call_id, Call.user_id == user_id, Call.status != CallStatus.ENDED)
        .values(**values)
    )
    if rows_changed(result) != 1:
        return False
    CALL_OUTCOMES.labels(outcome.value).inc()   # CallOutcome values: a fixed set

    call = await repo.get_call(session, user_id, call_id)
    assert call is not None
    if call.answered_at is None and outcome is CallOutcome.ANSWERED and answered_seconds:
        call.answered_at = now - timedelta(seconds=answered_seconds)
    if call.answered_at is not None and call.duration_seconds is None:
        call.duration_seconds = max(int((now - call.answered_at).total_seconds()), 0)
    await repo.record_call_event(session, user_id, call_id, "call.ended", {
        "source": source, "outcome": outcome.value, "dial_status": dial_status, "hangup_cause": hangup_cause,
        "answered_seconds": answered_seconds,
    })
    task = await repo.get_task(session, user_id, call.task_id)
    assert task is not None
    new_status = await _move_task_on(session, settings, task, outcome, call_id)
    await record_trunk_usage(session, settings, call)   # answered seconds -> trunk cost, campaign budget
    log.info("call %s ended: %s (%s); task %s -> %s", call_id, outcome.value, source, task.id,
             new_status.value if new_status else task.status.value)
    if events is not None:
        events.publish(user_id, "call.updated", {"call_id": call_id, "task_id": task.id,
                                                 "status": CallStatus.ENDED.value, "outcome": outcome.value})
        events.publish(user_id, "task.updated", {"task_id": task.id, "campaign_id": task.campaign_id,
                                                 "status": (new_status or task.status).value})
    return True


async def _move_task_on(session: AsyncSession, settings: Settings, task: Task, outcome: CallOutcome,
                        call_id: int) -> TaskStatus | None:
    """Apply the rule for this outcome; a task the user paused or cancelled meanwhile is left alone."""
    if outcome is CallOutcome.DND_BLOCKED:
        status, reason, when = TaskStatus.CANCELLED_DND, DND_LISTED, None
    elif not outcome.needs_analysis:
        status, when = task_life.retry_or_fail(task.attempt_count, task.max_attempts,
                                               next_retry_time(task.attempt_count, settings))
        reason = (f"{outcome.value} on attempt {task.attempt_count} of {task.max_attempts}; "
                  + (f"retry at {when:%Y-%m-%d %H:%M} UTC" if when else "no attempts left"))
    else:
        status, reason, when = TaskStatus.IN_PROGRESS, AWAITING_ANALYSIS, None
    moved = await task_life.move(session, task.user_id, task.id, status, reason=reason, next_action_time=when,
                                 only_from=task_life.LIVE, payload={"call_id": call_id, "outcome": outcome.value})
    if not moved:
        return None
    return status
