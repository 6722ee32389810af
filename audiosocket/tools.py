"""What the call AI can do during a call. Each tool returns a JSON-able result for the model, and every call
of a tool is written to call_events ("ai.tool") with its arguments and result.

DTMF and transfer go through the AMI controller on the callee's channel (calls.channel, set by the
call-answered AGI): AudioSocket must never carry a DTMF frame (Asterisk drops the call).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from ami_controller.manager import AmiError
from audiosocket.recorder import CallRecorder, CallRef
from db import repo, transfers
from db.models import Call, CallOutcome, CallStatus, FeedbackStatus
from db.types import utcnow
from opendeep.runtime import Runtime

log = logging.getLogger(__name__)

HITL_POLL_SECONDS = 0.5                  # other processes answer through the DB: poll it this often
_DTMF = re.compile(r"[0-9A-Da-d*#]{1,32}")


class ToolName(enum.StrEnum):
    SEND_DTMF = "send_dtmf"
    END_CALL = "end_call"
    REQUEST_USER_FEEDBACK = "request_user_feedback"
    TRANSFER_TO_HUMAN = "transfer_to_human"
    RECORD_NOTE = "record_note"


class AiCallOutcome(enum.StrEnum):
    """The AI's own verdict when it ends a call (the analyzer reads it from the "ai.end_call" event)."""

    OBJECTIVE_MET = "objective_met"
    OBJECTIVE_NOT_MET = "objective_not_met"
    CALLBACK_REQUESTED = "callback_requested"
    WRONG_NUMBER = "wrong_number"
    VOICEMAIL = "voicemail"              # a machine answered; no message left
    VOICEMAIL_LEFT = "voicemail_left"    # a machine answered and the task's message was left after the beep
    DO_NOT_CALL = "do_not_call"
    OTHER = "other"


def _function(name: ToolName, description: str, properties: dict[str, Any], required: list[str]) -> dict:
    return {"type": "function", "name": name.value, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}


def tool_definitions(transfer_targets: list[str]) -> list[dict[str, Any]]:
    """The tools of one call: transfer_to_human only when the user has transfer targets, and then only with
    their names to choose from."""
    tools = [tool for tool in TOOL_DEFINITIONS if tool["name"] != ToolName.TRANSFER_TO_HUMAN]
    if transfer_targets:
        tools.append(_function(ToolName.TRANSFER_TO_HUMAN, TRANSFER_DESCRIPTION,
                               {"target": {"type": "string", "enum": list(transfer_targets)}}, ["target"]))
    return tools


TRANSFER_DESCRIPTION = "Hand the callee to one of the user's people (by name) and leave the call."
TOOL_DEFINITIONS: list[dict[str, Any]] = [
    _function(ToolName.SEND_DTMF, "Press keys on the phone keypad, e.g. to choose options in a phone menu.",
              {"digits": {"type": "string", "description": "keys to press: 0-9, * and #"}}, ["digits"]),
    _function(ToolName.END_CALL, "Hang up after you have said goodbye.",
              {"outcome": {"type": "string", "enum": [o.value for o in AiCallOutcome]},
               "summary": {"type": "string", "description": "what happened and what was agreed"}},
              ["outcome", "summary"]),
    _function(ToolName.REQUEST_USER_FEEDBACK,
              "Ask the person you are calling for a question only they can answer; waits for their answer.",
              {"question": {"type": "string"}}, ["question"]),
    _function(ToolName.TRANSFER_TO_HUMAN, TRANSFER_DESCRIPTION,
              {"target": {"type": "string", "description": "a name from the list of transfer targets"}},
              ["target"]),
    _function(ToolName.RECORD_NOTE, "Write down a fact worth keeping for later calls and the summary.",
              {"text": {"type": "string"}}, ["text"]),
]


class CallTools:
    """The tools of one call. `on_end_call(outcome, summary)` and `on_transfer(extension)` tell the bridge."""

    def __init__(self, runtime: Runtime, call: CallRef, recorder: CallRecorder, *,
                 on_end_call: Callable[[AiCallOutcome, str], None], on_transfer: Callable[[str], None],
                 user_name: str = "the user", poll_seconds: float = HITL_POLL_SECONDS) -> None:
        self.runtime = runtime
        self.call = call
        self.recorder = recorder   # the call's events go in order with the rest, and survive the call's end
        self.on_end_call = on_end_call
        self.on_transfer = on_transfer
        self.user_name = user_name
        self.poll_seconds = poll_seconds
        self.pending = 0   # tools running now: the silence timeout waits while the AI waits for an answer
        self.transferring = ""   # the extension a transfer is under way to

    async def run(self, name: str, arguments: str) -> dict[str, Any]:
        """Run one tool call from the model; never raises (errors go back to the model as results)."""
        self.pending += 1
        try:
            try:
                args = json.loads(arguments or "{}")
                if not isinstance(args, dict):
                    raise ValueError("arguments must be a JSON object")
            except ValueError as exc:
                result: dict[str, Any] = {"ok": False, "error": f"arguments are not valid JSON: {exc}"}
                args = {"raw": arguments}
            else:
                result = await self._dispatch(name, args)
        except Exception as exc:  # a tool failing must not end the call; the model hears what went wrong
            log.exception("call %s: tool %s failed", self.call.call_id, name)
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            self.pending -= 1
        self._record("ai.tool", {"name": name, "arguments": args, "result": result})
        return result

    async def _dispatch(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            tool = ToolName(name)
        except ValueError:
            return {"ok": False, "error": f"unknown tool {name!r}; use one of {', '.join(t.value for t in ToolName)}"}
        if tool is ToolName.SEND_DTMF:
            return await self.send_dtmf(str(args.get("digits", "")))
        if tool is ToolName.END_CALL:
            return await self.end_call(str(args.get("outcome", "")), str(args.get("summary", "")))
        if tool is ToolName.REQUEST_USER_FEEDBACK:
            return await self.request_user_feedback(str(args.get("question", "")))
        if tool is ToolName.TRANSFER_TO_HUMAN:
            return await self.transfer_to_human(str(args.get("target", "")))
        return await self.record_note(str(args.get("text", "")))

    # ------------------------------------------------------------------ the tools

    async def send_dtmf(self, digits: str) -> dict[str, Any]:
        """Press keys through AMI PlayDTMF on the callee's channel."""
        digits = digits.strip().replace(" ", "")
        if not _DTMF.fullmatch(digits):
            return {"ok": False, "error": f"cannot press {digits!r}: use 0-9, * and # (at most 32 keys)"}
        channel, error = await self._live_channel()
        if error:
            return error
        assert self.runtime.ami is not None   # _live_channel said so
        try:
            await self.runtime.ami.play_dtmf(channel, digits)
        except AmiError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "pressed": digits}

    async def end_call(self, outcome: str, summary: str) -> dict[str, Any]:
        """Record the AI's outcome and summary, then let the bridge hang up after the goodbye."""
        try:
            verdict = AiCallOutcome(outcome)
        except ValueError:
            verdict = AiCallOutcome.OTHER
        self._record("ai.end_call", {"outcome": verdict.value, "summary": summary,
                                           "outcome_given": outcome})
        if verdict in (AiCallOutcome.VOICEMAIL, AiCallOutcome.VOICEMAIL_LEFT):
            await self._set_outcome_hint(CallOutcome(verdict.value))
        self.on_end_call(verdict, summary)
        return {"ok": True, "status": "the call ends after your last words; say nothing more"}

    async def request_user_feedback(self, question: str) -> dict[str, Any]:
        """Ask the user (web UI) and wait for the answer: hub event or DB row, whichever comes first."""
        question = question.strip()
        if not question:
            return {"ok": False, "error": "question is empty"}
        ref = self.call
        timeout = self.runtime.settings.hitl_timeout_seconds
        async with self.runtime.sessions() as db, db.begin():
            request = await repo.create_feedback_request(db, ref.user_id, ref.call_id, question,
                                                         timeout_at=utcnow() + timedelta(seconds=timeout))
            if request is None:
                return {"ok": False, "error": "this call is no longer known; cannot ask"}
            request_id = request.id
        self._record("ai.feedback_asked", {"request_id": request_id, "question": question})
        async with self.runtime.events.subscribe(ref.user_id) as inbox:
            self.runtime.events.publish(ref.user_id, "feedback.asked", {
                "request_id": request_id, "call_id": ref.call_id, "task_id": ref.task_id, "question": question})
            try:
                status, answer = await self._wait_for_answer(inbox, request_id, timeout)
            except asyncio.CancelledError:
                # The call ended while waiting: the question must not stay open in the user's UI.
                await asyncio.shield(self._cancel_request(request_id))
                raise
        if status is FeedbackStatus.ANSWERED:
            return {"ok": True, "answered": True, "answer": answer}
        if status is FeedbackStatus.TIMED_OUT:
            self.runtime.events.publish(ref.user_id, "feedback.timed_out", {"request_id": request_id})
            self._record("ai.feedback_timed_out", {"request_id": request_id})
        return {"ok": True, "answered": False,
                "message": f"No answer came from {self.user_name} within {timeout} seconds. Tell the callee you "
                           f"could not reach {self.user_name} right now, and carry on without it or offer "
                           f"to call back."}

    async def _wait_for_answer(self, inbox: asyncio.Queue, request_id: int,
                               timeout: float) -> tuple[FeedbackStatus, str | None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_poll = loop.time()
        while True:
            now = loop.time()
            if now >= next_poll:
                next_poll = now + self.poll_seconds
                status, answer = await self._feedback_row(request_id)
                if status is not FeedbackStatus.PENDING:
                    return status, answer
            if now >= deadline:
                break
            try:
                event = await asyncio.wait_for(inbox.get(), max(0.0, min(next_poll, deadline) - now))
            except TimeoutError:
                continue
            if event.kind == "feedback.answered" and event.payload.get("request_id") == request_id:
                next_poll = loop.time()   # the DB row is the truth: read it now
        async with self.runtime.sessions() as db, db.begin():
            closed = await repo.close_feedback_request(db, self.call.user_id, request_id, FeedbackStatus.TIMED_OUT)
        if closed:
            return FeedbackStatus.TIMED_OUT, None
        return await self._feedback_row(request_id)   # answered in the last instant

    async def _cancel_request(self, request_id: int) -> None:
        try:
            async with self.runtime.sessions() as db, db.begin():
                await repo.close_feedback_request(db, self.call.user_id, request_id, FeedbackStatus.CANCELLED)
        except Exception:
            log.exception("call %s: could not cancel question %s", self.call.call_id, request_id)

    async def _feedback_row(self, request_id: int) -> tuple[FeedbackStatus, str | None]:
        async with self.runtime.sessions() as db:
            row = await repo.get_feedback_request(db, self.call.user_id, request_id)
        if row is None:
            return FeedbackStatus.CANCELLED, None
        return row.status, row.answer

    async def transfer_to_human(self, target: str) -> dict[str, Any]:
        """Hand the callee to one of the user's transfer targets, named as the user named it. The number comes
        from the user's list, never from the model; it is checked like any outbound number (DND, test mode),
        stored as the one transfer this call may make, and the ;1 half is redirected to [opendeep-transfer],
        whose AGI asks for that number."""
        channel, error = await self._live_channel()
        if error:
            return error
        async with self.runtime.sessions() as db, db.begin():
            allowed = await transfers.find_transfer_target(db, self.call.user_id, target)
            if allowed is None:
                names = [t.name for t in await transfers.list_transfer_targets(db, self.call.user_id)]
                return {"ok": False, "error": f"{target!r} is not one of the user's transfer targets "
                                              f"({', '.join(names) or 'there are none'})"}
            refusal = await transfers.transfer_refusal(db, self.runtime.settings, self.call.user_id,
                                                       allowed.phone_number)
            if refusal is None:
                await db.execute(update(Call).where(Call.id == self.call.call_id, Call.user_id == self.call.user_id)
                                 .values(transfer_number=allowed.phone_number))
        if refusal is not None:
            return {"ok": False, "error": f"cannot transfer to {allowed.name}: {refusal}"}
        self.transferring = allowed.name   # Asterisk may close the AudioSocket before the Redirect's reply
        assert self.runtime.ami is not None   # _live_channel said so
        try:
            await self.runtime.ami.transfer(channel)
        except AmiError as exc:
            self.transferring = ""
            return {"ok": False, "error": str(exc)}
        self.on_transfer(allowed.name)
        return {"ok": True, "status": f"transferring to {allowed.name}"}

    async def record_note(self, text: str) -> dict[str, Any]:
        text = text.strip()
        if not text:
            return {"ok": False, "error": "note is empty"}
        self._record("ai.note", {"text": text})
        return {"ok": True}

    # ------------------------------------------------------------------ helpers

    async def _live_channel(self) -> tuple[str, dict[str, Any] | None]:
        if self.runtime.ami is None:
            return "", {"ok": False, "error": "the phone system control (AMI) is not available in this process"}
        async with self.runtime.sessions() as db:
            call = await repo.get_call(db, self.call.user_id, self.call.call_id)
        if call is None or not call.channel:
            return "", {"ok": False, "error": "the call's channel is not known yet; try again in a moment"}
        return call.channel, None

    def _record(self, type_: str, payload: dict[str, Any]) -> None:
        self.recorder.event(type_, payload)

    async def _set_outcome_hint(self, outcome: CallOutcome) -> None:
        async with self.runtime.sessions() as db, db.begin():
            await db.execute(update(Call).where(Call.id == self.call.call_id, Call.user_id == self.call.user_id,
                                                Call.status != CallStatus.ENDED).values(outcome=outcome))
