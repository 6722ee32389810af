"""The post-call analyzer: what did a connected call achieve, and what happens to its task next.

Calls that never connected are decided by rule in ami_controller/outcomes.finish_call. Calls that connected
(answered, voicemail, failed_ai) are left ended with `analyzed_at` NULL and their task in_progress "awaiting
analysis"; this service picks them up, asks an LLM for a verdict in a fixed JSON schema, validates it, and
applies it in one transaction:

    claim the call (conditional UPDATE: token + lease)  ->  read task, transcript, events
    ->  LLM (structured output)  ->  validate (jsonschema)  ->  apply if the claim is still ours

A failing or invalid answer is retried with backoff; after `max_attempts` the task goes on_hold with the reason
in `tasks.status_reason` and a notification. A call is never lost and a task is never silently completed.
"""

from __future__ import annotations

import enum
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jsonschema
import openai
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo, task_life
from db.costs import Scope
from db.models import (
    ANALYZED_OUTCOMES,
    Call,
    CallEvent,
    CallStatus,
    CallTranscript,
    Task,
    TaskStatus,
    UsageKind,
)
from db.typed import rows_changed
from db.types import utcnow
from opendeep.costs import record_chat_usage
from opendeep.llm import LlmNotConfigured, LlmRequestError, chat_client, structured_completion
from opendeep.periodic import run_periodically
from opendeep.retry import next_retry_time
from opendeep.settings import Settings

if TYPE_CHECKING:
    from opendeep.events import EventHub

log = logging.getLogger(__name__)

# Telephony outcomes that mean somebody (or a machine) was on the line: the analyzer reads these.
ANALYZABLE_OUTCOMES = tuple(ANALYZED_OUTCOMES)
# Asterisk may report a call's end before the AudioSocket side has saved its last transcript lines: a call
# bridged to the AI is analyzed once its `audiosocket.ended` event is written, or this long after it ended
# (that process died and the event will never come).
AUDIOSOCKET_SETTLE = timedelta(seconds=60)
AUDIOSOCKET_ENDED = "audiosocket.ended"

# Where a task waiting for analysis is; anything else (the user paused or cancelled it) keeps its status.
LIVE_TASK_STATUSES = task_life.LIVE

# The latest a model-chosen retry time may be: a typo in a year must not park a task for a decade.
MAX_RETRY_HORIZON = timedelta(days=30)
MIN_RETRY_DELAY = timedelta(minutes=1)

# Caps on what we send: a stuck call can leave thousands of lines.
MAX_TRANSCRIPT_CHARS = 40_000
MAX_EVENTS = 200


class AnalysisOutcome(enum.StrEnum):
    """The analyzer's verdict on what a call achieved (not how the line ended: that is CallOutcome)."""

    SUCCESS = "success"
    PARTIAL = "partial"
    RETRY = "retry"
    FAILED = "failed"
    VOICEMAIL = "voicemail"
    VOICEMAIL_LEFT = "voicemail_left"
    WRONG_NUMBER = "wrong_number"
    DO_NOT_CALL = "do_not_call"


ANALYSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["outcome", "summary", "extracted", "should_retry", "retry_at", "callback_requested",
                 "add_to_dnd", "reason", "notes_for_next_call"],
    "properties": {
        "outcome": {"type": "string", "enum": [o.value for o in AnalysisOutcome]},
        "summary": {"type": "string", "description": "Two or three sentences: what happened on the call."},
        "extracted": {
            "type": "array",
            "description": "Facts the task asked for (e.g. booked time, price), one per item.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "value"],
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
            },
        },
        "should_retry": {"type": "boolean", "description": "Call this target again to finish the objective."},
        "retry_at": {"type": ["string", "null"],
                     "description": "When to call again, ISO 8601 with a UTC offset, if the callee named a time."},
        "callback_requested": {"type": "boolean", "description": "The callee asked to be called back."},
        "add_to_dnd": {"type": "boolean", "description": "The callee asked never to be called again."},
        "reason": {"type": "string", "description": "Why this outcome and this next step, in one sentence."},
        "notes_for_next_call": {"type": "string",
                                "description": "What the next call must know (names, hours, objections)."},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(ANALYSIS_SCHEMA)

SYSTEM_PROMPT = """You review phone calls made by an AI calling assistant on behalf of a user.
You get the task (who was called and why), the call's telephony facts, the transcript and the call events
(an "ai.end_call" event carries the call AI's own reason for hanging up). Decide what the call achieved:
- success: the objective was fully met.
- partial: some of it was met; say in should_retry whether another call could finish it.
- retry: nothing decisive happened but another call may succeed (callee busy, asked to call back, cut off).
- failed: the objective cannot be met with this target (refused, closed for good, not possible).
- voicemail: only a voicemail / answering machine was reached, and no message was left.
- voicemail_left: an answering machine was reached and the AI left its message (telephony_outcome
  voicemail_left, or an "ai.end_call" event with outcome voicemail_left); the callee may call back.
A call with "direction": "inbound" is the callee calling us back about the task: judge it like any call.
- wrong_number: the number does not belong to the target.
- do_not_call: the callee asked not to be called again (also set add_to_dnd).
Only report facts present in the transcript. Answer in the JSON schema given."""


class AnalysisError(Exception):
    """The LLM gave no usable verdict (timeout, HTTP error, invalid JSON, schema violation)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent  # retrying cannot help (no LLM configured)


@dataclass(frozen=True)
class Decision:
    """What a verdict means for the task."""

    status: TaskStatus
    reason: str
    next_action_time: datetime | None = None
    add_to_dnd: bool = False


def validate_analysis(raw: str | None) -> dict[str, Any]:
    """Parse and validate the model's JSON answer; AnalysisError says what is wrong with it."""
    if not raw or not raw.strip():
        raise AnalysisError("the model returned an empty answer")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AnalysisError(f"the model's answer is not valid JSON ({exc.msg} at char {exc.pos})") from None
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise AnalysisError(f"the model's answer does not match the analysis schema at {where}: {first.message}")
    return data


def build_analysis_messages(task: Task, call: Call, transcript: list[CallTranscript],
                            events: list[CallEvent]) -> list[dict[str, str]]:
    """The chat messages that ask for a verdict on one call."""
    lines = [f"[{line.offset_ms // 60000:02d}:{line.offset_ms // 1000 % 60:02d}] {line.speaker.value}: {line.text}"
             for line in transcript]
    text = "\n".join(lines)
    if len(text) > MAX_TRANSCRIPT_CHARS:  # keep the end: how a call ends says most about its outcome
        text = "[... earlier lines cut ...]\n" + text[-MAX_TRANSCRIPT_CHARS:]
    facts = {
        "task": {"target_name": task.target_name, "phone_number": task.phone_number,
                 "objective": task.objective, "context": task.context, "language": task.language,
                 "attempt": call.attempt_number, "max_attempts": task.max_attempts,
                 "learned_on_earlier_calls": task.inter_call_context or ""},
        "call": {"telephony_outcome": call.outcome.value if call.outcome else None,
                 "direction": call.direction.value if call.direction else "outbound",
                 "duration_seconds": call.duration_seconds, "dial_status": call.dial_status,
                 "hangup_cause": call.hangup_cause,
                 "answered_at": call.answered_at.isoformat() if call.answered_at else None,
                 "ended_at": call.ended_at.isoformat() if call.ended_at else None},
        "events": [{"type": e.type, "payload": e.payload, "at": e.at.isoformat()} for e in events[-MAX_EVENTS:]],
        "now": utcnow().isoformat(),
    }
    user = (f"{json.dumps(facts, ensure_ascii=False, default=str, indent=1)}\n\n"
            f"Transcript:\n{text or '(no speech was transcribed)'}")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


async def request_analysis(client: openai.AsyncOpenAI, model: str, messages: list[dict[str, str]],
                           on_usage: Any = None) -> dict[str, Any]:
    """One structured-output request; returns the validated verdict or raises AnalysisError. `on_usage` gets
    the response's token usage (see structured_completion)."""
    try:
        content = await structured_completion(client, model, messages, name="call_analysis",
                                              schema=ANALYSIS_SCHEMA, on_usage=on_usage)
    except LlmRequestError as exc:
        raise AnalysisError(f"the analyzer {exc}") from None
    return validate_analysis(content)


def parse_retry_at(raw: str | None, now: datetime) -> datetime | None:
    """A model-chosen retry time we can trust: tz-aware, in the future, within MAX_RETRY_HORIZON."""
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None or when.utcoffset() is None:
        return None  # a local time without a zone could be hours off: use the backoff instead
    when = when.astimezone(UTC)
    if when < now + MIN_RETRY_DELAY:
        return None
    return min(when, now + MAX_RETRY_HORIZON)


def decide(task: Task, analysis: dict[str, Any], settings: Settings, now: datetime) -> Decision:
    """Turn a validated verdict into the task's next status (plain rules: the judgment was the model's)."""
    outcome = AnalysisOutcome(analysis["outcome"])
    why = analysis["reason"].strip() or analysis["summary"].strip()
    attempts = f"attempt {task.attempt_count} of {task.max_attempts}"
    dnd = bool(analysis["add_to_dnd"]) or outcome is AnalysisOutcome.DO_NOT_CALL

    def retry_or_fail(label: str) -> Decision:
        asked = parse_retry_at(analysis["retry_at"], now)
        status, when = task_life.retry_or_fail(task.attempt_count, task.max_attempts,
                                               asked or next_retry_time(task.attempt_count, settings, now))
        if when is None:
            return Decision(status, f"{label} on {attempts}; no attempts left: {why}", add_to_dnd=dnd)
        source = "time the callee asked for" if asked else "backoff"
        return Decision(status, f"{label} on {attempts}; retry at {when:%Y-%m-%d %H:%M} UTC ({source}): {why}",
                        next_action_time=when, add_to_dnd=dnd)

    if outcome is AnalysisOutcome.DO_NOT_CALL:
        return Decision(TaskStatus.CANCELLED_DND, f"callee asked not to be called again: {why}", add_to_dnd=True)
    if outcome is AnalysisOutcome.SUCCESS:
        return Decision(TaskStatus.COMPLETED, f"objective met: {why}", add_to_dnd=dnd)
    if dnd:  # whatever else happened, the callee asked us to stop: never call again
        return Decision(TaskStatus.CANCELLED_DND, f"{outcome.value}; callee asked not to be called again: {why}",
                        add_to_dnd=True)
    if outcome is AnalysisOutcome.PARTIAL:
        if analysis["should_retry"] and task.attempt_count < task.max_attempts:
            return retry_or_fail("partly done")
        return Decision(TaskStatus.COMPLETED, f"partly done (no further call planned): {why}")
    if outcome is AnalysisOutcome.VOICEMAIL_LEFT:
        # A message asked them to call back: give them the longest backoff to do it before we call again.
        status, when = task_life.retry_or_fail(task.attempt_count, task.max_attempts, max(
            next_retry_time(task.attempt_count, settings, now),
            now + timedelta(seconds=settings.retry_backoff_max_seconds)))
        if when is None:
            return Decision(status, f"voicemail left on {attempts}; no attempts left (a callback still "
                                    f"reaches this task): {why}")
        return Decision(status, f"voicemail left on {attempts}; waiting for a callback, "
                        f"next call at {when:%Y-%m-%d %H:%M} UTC: {why}", next_action_time=when)
    if outcome in (AnalysisOutcome.RETRY, AnalysisOutcome.VOICEMAIL):
        return retry_or_fail("voicemail" if outcome is AnalysisOutcome.VOICEMAIL else "not finished")
    if outcome is AnalysisOutcome.WRONG_NUMBER:
        return Decision(TaskStatus.FAILED, f"wrong number: {why}")
    return Decision(TaskStatus.FAILED, f"objective cannot be met: {why}")


def task_result(task: Task, call: Call, analysis: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The task's result JSON: the latest verdict, with facts from earlier calls kept unless overwritten."""
    previous = task.result.get("data", {}) if isinstance(task.result, dict) else {}
    data = dict(previous) if isinstance(previous, dict) else {}
    data.update({item["name"]: item["value"] for item in analysis["extracted"]})
    return {"outcome": analysis["outcome"], "summary": analysis["summary"], "data": data,
            "call_id": call.id, "analyzed_at": now.isoformat()}


def _ready_for_analysis(now: datetime) -> list:
    """Ended, not analyzed, not leased or backing off, and its transcript complete (see AUDIOSOCKET_SETTLE)."""
    # tenant-safe: a correlated subquery on the outer call's own id (the outer query is per call)
    transcript_saved = select(CallEvent.id).where(CallEvent.call_id == Call.id,
                                                  CallEvent.type == AUDIOSOCKET_ENDED).exists()
    return [Call.status == CallStatus.ENDED, Call.analyzed_at.is_(None), Call.outcome.in_(ANALYZABLE_OUTCOMES),
            or_(Call.analysis_locked_until.is_(None), Call.analysis_locked_until <= now),
            or_(Call.bridged_to_ai.is_(False), transcript_saved, Call.ended_at <= now - AUDIOSOCKET_SETTLE)]


class PostCallAnalyzer:
    """Finds ended, connected, unanalyzed calls and applies the LLM's verdict to their tasks exactly once."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession],
                 events: EventHub | None = None, *, worker_id: str | None = None, max_attempts: int = 4,
                 retry_base_seconds: float = 30.0, retry_max_seconds: float = 900.0,
                 lease_seconds: float | None = None, batch_size: int = 20) -> None:
        self.settings = settings
        self.sessions = sessions
        self.events = events
        self.worker_id = worker_id or f"analyzer-{uuid.uuid4().hex[:8]}"
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        # The lease must outlive one LLM request, or a slow answer would let a second analyzer start.
        self.lease = timedelta(seconds=lease_seconds if lease_seconds is not None
                               else settings.llm_timeout_seconds + 60)
        self.batch_size = batch_size
        self._client: openai.AsyncOpenAI | None = None

    def _llm(self) -> openai.AsyncOpenAI:
        if self._client is None:
            try:
                self._client = chat_client(self.settings)
            except LlmNotConfigured as exc:
                raise AnalysisError(f"post-call analysis needs an LLM: {exc}", permanent=True) from None
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def due_calls(self, now: datetime | None = None) -> list[tuple[int, int]]:
        """(user_id, call_id) of calls waiting for analysis whose lease (or retry backoff) has run out."""
        now = now or utcnow()
        async with self.sessions() as session:
            rows = await session.execute(
                select(Call.user_id, Call.id)
                .where(*_ready_for_analysis(now))
                .order_by(Call.ended_at, Call.id)
                .limit(self.batch_size)
            )
            return [(user_id, call_id) for user_id, call_id in rows.all()]

    async def run_once(self) -> int:
        """Analyze every call that is due now; returns how many calls were claimed."""
        claimed = 0
        for user_id, call_id in await self.due_calls():
            if await self.analyze_call(user_id, call_id):
                claimed += 1
        return claimed

    async def run_forever(self, interval: float) -> None:
        """Poll until cancelled; one failing pass is logged and the next one runs."""
        await run_periodically(self.run_once, interval, "post-call analyzer pass")

    async def _claim(self, user_id: int, call_id: int, token: str, now: datetime) -> bool:
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(Call)
                .where(Call.id == call_id, Call.user_id == user_id, *_ready_for_analysis(now))
                .values(analysis_claim=token, analysis_locked_until=now + self.lease,
                        analysis_attempts=Call.analysis_attempts + 1)
            )
            return rows_changed(result) == 1

    async def analyze_call(self, user_id: int, call_id: int) -> bool:
        """Claim one call, ask the model, apply the verdict (or the failure). False if another analyzer has it."""
        token = uuid.uuid4().hex
        if not await self._claim(user_id, call_id, token, utcnow()):
            return False
        async with self.sessions() as session:
            call = await repo.get_call(session, user_id, call_id)
            assert call is not None  # we just claimed it
            task = await repo.get_task(session, user_id, call.task_id)
            assert task is not None  # calls.task_id is a foreign key
            transcript = list(await repo.list_transcript(session, user_id, call_id))
            events = list(await repo.list_call_events(session, user_id, call_id))
        if call.analysis_attempts > self.max_attempts:
            # Earlier claims never finished (the process died mid-analysis each time): stop and ask the user.
            await self._record_failure(user_id, call, task, token, AnalysisError(
                f"the analyzer stopped before finishing {call.analysis_attempts - 1} time(s)", permanent=True))
            return True
        # No database transaction is open while the model thinks.
        usage: list[Any] = []   # what the model used is recorded whether its answer is usable or not
        model, scope = self.settings.openai_analyzer_model, Scope(user_id, task.campaign_id, task.id, call.id)
        try:
            analysis = await request_analysis(self._llm(), model,
                                              build_analysis_messages(task, call, transcript, events), usage.append)
        except AnalysisError as exc:
            await record_chat_usage(self.sessions, self.settings, scope, UsageKind.ANALYZER, model, usage)
            await self._record_failure(user_id, call, task, token, exc)
            return True
        await record_chat_usage(self.sessions, self.settings, scope, UsageKind.ANALYZER, model, usage)
        await self._apply(user_id, call, task, token, analysis)
        return True

    async def _apply(self, user_id: int, call: Call, task: Task, token: str, analysis: dict[str, Any]) -> None:
        from opendeep.lifecycle import refresh_inter_call_context  # lifecycle imports us for the outcome names

        now = utcnow()
        published: list[tuple[str, dict[str, Any]]] = []
        async with self.sessions() as session, session.begin():
            stored = {**analysis, "analyzer": self.worker_id, "model": self.settings.openai_analyzer_model,
                      "attempts": call.analysis_attempts}
            result = await session.execute(
                update(Call)
                .where(Call.id == call.id, Call.user_id == user_id, Call.analyzed_at.is_(None),
                       Call.analysis_claim == token)
                .values(analysis=stored, analyzed_at=now, analysis_claim=None, analysis_locked_until=None)
            )
            if rows_changed(result) != 1:  # our lease ran out and another analyzer took over: it applies, not us
                log.warning("call %s: claim lost before applying the analysis; leaving it to the new owner", call.id)
                return
            reloaded = await repo.get_task(session, user_id, task.id)
            assert reloaded is not None
            task = reloaded
            decision = decide(task, analysis, self.settings, now)
            if decision.add_to_dnd:
                added = await repo.add_dnd(session, user_id, task.phone_number,
                                           f"callee asked on call {call.id}: {analysis['reason']}"[:500])
                await repo.record_task_event(session, user_id, task.id, "analysis.dnd_added" if added
                                             else "analysis.dnd_already_listed",
                                             f"{task.phone_number} on the do-not-call list",
                                             {"call_id": call.id})
            task.result = task_result(task, call, analysis, now)
            moved = await task_life.move(session, user_id, task.id, decision.status, reason=decision.reason,
                                         next_action_time=decision.next_action_time, only_from=LIVE_TASK_STATUSES,
                                         event_type=f"analysis.{decision.status.value}",
                                         payload={"call_id": call.id, "outcome": analysis["outcome"],
                                                  "next_action_time": decision.next_action_time.isoformat()
                                                  if decision.next_action_time else None})
            if not moved:
                await repo.record_task_event(session, user_id, task.id, "analysis.recorded",
                                             f"verdict {analysis['outcome']} recorded; task left "
                                             f"{task.status.value} (changed meanwhile)",
                                             {"call_id": call.id, "outcome": analysis["outcome"],
                                              "next_action_time": None})
            await refresh_inter_call_context(session, user_id, task.id)
            status = decision.status if moved else task.status
            published.append(("task.updated", {"task_id": task.id, "campaign_id": task.campaign_id,
                                               "status": status.value}))
        log.info("call %s analyzed: %s; task %s -> %s", call.id, analysis["outcome"], task.id, status.value)
        self._publish(user_id, published)

    async def _record_failure(self, user_id: int, call: Call, task: Task, token: str, error: AnalysisError) -> None:
        now = utcnow()
        attempt = call.analysis_attempts
        give_up = error.permanent or attempt >= self.max_attempts
        published: list[tuple[str, dict[str, Any]]] = []
        async with self.sessions() as session, session.begin():
            if give_up:
                values: dict[str, Any] = {
                    "analysis": {"error": str(error), "attempts": attempt, "analyzer": self.worker_id},
                    "analyzed_at": now, "analysis_claim": None, "analysis_locked_until": None}
            else:
                delay = min(self.retry_base_seconds * 2 ** (attempt - 1), self.retry_max_seconds)
                retry_at = now + timedelta(seconds=delay)
                values = {"analysis_claim": None, "analysis_locked_until": retry_at}
            result = await session.execute(
                update(Call)
                .where(Call.id == call.id, Call.user_id == user_id, Call.analyzed_at.is_(None),
                       Call.analysis_claim == token)
                .values(**values)
            )
            if rows_changed(result) != 1:
                return
            if give_up:
                reason = (f"post-call analysis of call {call.id} failed after {attempt} attempt(s): {error}. "
                          f"Read the transcript at /calls/{call.id} and set the outcome by hand.")
                # ON_HOLD is not due: the task waits for the user (call now, or the outcome set by hand).
                moved = await task_life.move(session, user_id, task.id, TaskStatus.ON_HOLD, reason=reason,
                                             only_from=LIVE_TASK_STATUSES, event_type="analysis.on_hold",
                                             payload={"call_id": call.id, "error": str(error), "attempts": attempt})
                note = await repo.add_notification(
                    session, user_id, "task.on_hold",
                    f"Call to {task.target_name} needs your review: {reason}",
                    {"task_id": task.id, "call_id": call.id})
                published.append(("notification", {"id": note.id, "kind": note.kind, "message": note.message}))
                if moved:
                    published.append(("task.updated", {"task_id": task.id, "campaign_id": task.campaign_id,
                                                       "status": TaskStatus.ON_HOLD.value}))
                log.warning("call %s: analysis gave up after %s attempt(s): %s", call.id, attempt, error)
            else:
                reason = (f"awaiting analysis: attempt {attempt} of {self.max_attempts} failed ({error}); "
                          f"next try at {retry_at:%H:%M:%S} UTC")
                await task_life.move(session, user_id, task.id, TaskStatus.IN_PROGRESS, reason=reason,
                                     only_from=(TaskStatus.IN_PROGRESS,), event_type="analysis.retry",
                                     payload={"call_id": call.id, "error": str(error), "attempt": attempt,
                                              "retry_at": retry_at.isoformat()})
                log.info("call %s: analysis attempt %s failed (%s); retrying at %s", call.id, attempt, error,
                         retry_at.isoformat())
        self._publish(user_id, published)

    def _publish(self, user_id: int, published: list[tuple[str, dict[str, Any]]]) -> None:
        if self.events is None:
            return
        for kind, payload in published:  # only after commit: a page must never see an undone change
            self.events.publish(user_id, kind, payload)
