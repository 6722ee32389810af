"""Callbacks: a callee rings back the number that called them ([opendeep-inbound] in the shipped dialplan).

    callback      on the inbound channel, before it is answered: who is calling (CALLERID(num)), which task
                  called that number last (any tenant, within CALLBACK_WINDOW_DAYS), and what happens:
                  OPENDEEP_CALLBACK_ACTION = ai (OPENDEEP_AS_UUID, OPENDEEP_AS_ADDR, ... as call-answered sets
                  them), forward (OPENDEEP_CALLBACK_DIAL: the owner's fallback person) or message (a polite
                  prompt, then hangup). Matched callbacks get a `calls` row (direction inbound) on that task and
                  OPENDEEP_CALL_ID / OPENDEEP_USER_ID for the `h` extension.
    callback-end  in the inbound context's `h` extension: ends that call row (finish_call, like call-end), so
                  the post-call analyzer reads it like any other call of the task.

What happens to a callback (written down in dialplan/README.md, "Callbacks"):
  - no call to that number within the window, or the number withheld: the global message (unknown caller).
  - the number is on the owner's do-not-call list, the global one, or the task was cancelled for DND: the
    message. The callee asked us to leave them alone; the AI does not pitch to them and nobody is rung.
  - the task or its campaign was cancelled by the owner: the owner's fallback (their person, else the message).
  - the owner turned the AI off for callbacks (callback_ai), or no realtime model is configured: the fallback.
  - otherwise the call AI takes it with the task's context (audiosocket/instructions.py). A task still waiting
    for its next attempt (pending, retry scheduled) or failed moves to in_progress while the callee talks, so the
    scheduler does not dial them meanwhile, and the analyzer's verdict moves it on like any call's. A completed
    (or paused) task keeps its status; the verdict is recorded on the call. A campaign that is finished or paused
    does not matter: the callee called us.
  - test mode: every call went to APP_TEST_MODE_REDIRECT_NUMBER, so only that number is a callback (of the latest
    call of any task); any other number was never really called and is unknown. A forward goes only to that
    number too (transfers.transfer_refusal).

The caller ID is not proof of identity (it can be forged): the AI is told to treat the caller as unverified
and what they say as claims, never instructions, and the route only ever reveals the task to the call AI.
"""

from __future__ import annotations

import enum
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ami_controller.outcomes import finish_call, map_dial_status
from db import repo, task_life, transfers
from db.models import (
    Call,
    CallDirection,
    CallEvent,
    CallOutcome,
    CallStatus,
    Campaign,
    CampaignStatus,
    Task,
    TaskStatus,
    TransferTarget,
)
from db.types import utcnow
from fastagi_server.protocol import AgiSession
from opendeep.phone import InvalidPhoneNumber, normalize_e164
from opendeep.recordings import recording_path
from opendeep.settings import Settings

if TYPE_CHECKING:
    from opendeep.events import EventHub

log = logging.getLogger(__name__)

_DIGITS = re.compile(r"^\+?[0-9]{3,20}$")
# A callback moves these to in_progress while the callee talks: the task still wants an answer from them.
_REOPENED = (TaskStatus.PENDING, TaskStatus.RETRY_SCHEDULED, TaskStatus.FAILED)


class CallbackAction(enum.StrEnum):
    """Values of OPENDEEP_CALLBACK_ACTION, read by [opendeep-inbound]."""

    AI = "ai"             # Dial(AudioSocket/...) with the task's context
    FORWARD = "forward"   # Dial(${OPENDEEP_CALLBACK_DIAL}): the owner's fallback person
    MESSAGE = "message"   # Playback(${OPENDEEP_CALLBACK_MESSAGE}), then hang up


@dataclass(frozen=True)
class CallbackDecision:
    action: CallbackAction
    reason: str
    call_id: int | None = None
    user_id: int | None = None
    task_id: int | None = None
    audiosocket_uuid: str = ""
    forward_number: str = ""


def caller_number(raw: str) -> str | None:
    """The caller's number as E.164 (what calls.dialed_number holds), or None when withheld or not a number."""
    text = (raw or "").strip()
    if not _DIGITS.match(text):
        return None
    try:
        return normalize_e164(text if text.startswith("+") else f"+{text}")
    except InvalidPhoneNumber:
        return None


class CallbackRoutes:
    """The two routes of [opendeep-inbound], bound to settings, the session factory and the event hub."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession],
                 events: EventHub | None = None, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.sessions = sessions
        self.events = events
        self.clock = clock

    def table(self) -> dict[str, Callable[[AgiSession], Awaitable[None]]]:
        return {"callback": self.callback, "callback-end": self.callback_end}

    # ------------------------------------------------------------ callback

    async def callback(self, agi: AgiSession) -> None:
        """Decide what a call to our number gets; the dialplan plays the message unless told otherwise."""
        number = caller_number(agi.env.args[0] if agi.env.args and agi.env.args[0] else agi.env.get("agi_callerid"))
        decision = await self.decide_callback(number, agi.env.uniqueid, agi.env.channel)
        log.info("callback from %s on %s: %s (%s)", number or "a withheld number", agi.env.channel,
                 decision.action.value, decision.reason)
        if decision.call_id is not None:
            await agi.set_variable("OPENDEEP_CALL_ID", str(decision.call_id))
            await agi.set_variable("OPENDEEP_USER_ID", str(decision.user_id))
        if decision.action is CallbackAction.FORWARD:
            await agi.set_variable("OPENDEEP_CALLBACK_DIAL", self.settings.dial_string_template.format(
                number=decision.forward_number, digits=decision.forward_number.lstrip("+")))
        elif decision.action is CallbackAction.AI:
            await agi.set_variable("OPENDEEP_AS_ADDR", self.settings.audiosocket_address)
            await agi.set_variable("OPENDEEP_MAX_SECONDS", str(self.settings.max_call_seconds))
            if self.settings.record_calls and decision.user_id is not None and decision.call_id is not None:
                await agi.set_variable("OPENDEEP_RECORDING", str(recording_path(  # an AI answer has its call row
                    self.settings, decision.user_id, decision.call_id)))
            await agi.set_variable("OPENDEEP_AS_UUID", decision.audiosocket_uuid)
        # Last on purpose: a session cut short leaves the dialplan's default, the message.
        await agi.set_variable("OPENDEEP_CALLBACK_ACTION", decision.action)

    async def decide_callback(self, number: str | None, agi_uniqueid: str, channel: str) -> CallbackDecision:
        """The decision for a call from `number` (committed, with its call row, before it is returned)."""
        if number is None:
            return CallbackDecision(CallbackAction.MESSAGE, "caller ID withheld or not a number")
        async with self.sessions() as db, db.begin():
            found = await self._last_call_to(db, number)
            if found is None:
                return CallbackDecision(CallbackAction.MESSAGE, f"no call to {number} in the last "
                                        f"{self.settings.callback_window_days} day(s)")
            last_call, task, campaign = found
            user = await repo.get_user(db, task.user_id)
            action, reason, forward = await self._choose(db, task, campaign, user)
            call = Call(user_id=task.user_id, task_id=task.id, attempt_number=0, direction=CallDirection.INBOUND,
                        status=CallStatus.ANSWERED, dialed_number=number, channel=channel[:128] or None,
                        asterisk_uniqueid=agi_uniqueid[:64] or None, started_at=self.clock(),
                        answered_at=self.clock(), transfer_number=forward or None,
                        audiosocket_uuid=str(uuid.uuid4()) if action is CallbackAction.AI else None)
            if action is not CallbackAction.AI:
                call.analyzed_at = self.clock()   # nobody talked to the AI: nothing for the analyzer to read
            db.add(call)
            await db.flush()
            db.add(CallEvent(user_id=call.user_id, call_id=call.id, type="agi.callback", payload={
                "action": action.value, "reason": reason, "caller": number, "last_call_id": last_call.id,
                "forward_to": forward or None, "test_mode": self.settings.app_test_mode}))
            if action is CallbackAction.AI and task.status in _REOPENED:
                await task_life.move(db, task.user_id, task.id, TaskStatus.IN_PROGRESS,
                                     reason=f"the callee called back (call {call.id})", only_from=_REOPENED,
                                     event_type="task.callback", payload={"call_id": call.id,
                                                                          "was": task.status.value})
            decision = CallbackDecision(action, reason, call.id, call.user_id, task.id,
                                        call.audiosocket_uuid or "", forward)
        self._publish(decision.user_id, "call.updated", {"call_id": decision.call_id, "task_id": decision.task_id,
                                                         "status": CallStatus.ANSWERED.value, "outcome": None})
        return decision

    async def _last_call_to(self, db: AsyncSession, number: str) -> tuple[Call, Task, Campaign] | None:
        """The latest call that rang `number` within the window, of any tenant, with its task and campaign.
        In test mode every call rang the redirect number, so only that number matches (the latest call)."""
        since = self.clock() - timedelta(days=self.settings.callback_window_days)
        query = (select(Call, Task, Campaign).join(Task, (Task.id == Call.task_id) & (Task.user_id == Call.user_id))
                 .join(Campaign, (Campaign.id == Task.campaign_id) & (Campaign.user_id == Task.user_id))
                 .where(Call.direction == CallDirection.OUTBOUND, Call.started_at >= since)
                 .order_by(Call.started_at.desc(), Call.id.desc()).limit(1))
        if self.settings.app_test_mode:
            if number != self.settings.app_test_mode_redirect_number:
                return None
        else:
            query = query.where(Call.dialed_number == number)
        row = (await db.execute(query)).first()
        return (row[0], row[1], row[2]) if row else None

    async def _choose(self, db: AsyncSession, task: Task, campaign: Campaign,
                      user) -> tuple[CallbackAction, str, str]:
        """(action, why, number to forward to) for a matched callback; see the module's docstring."""
        listed_by_user, tenants = await repo.dnd_check(db, task.user_id, task.phone_number)
        if (listed_by_user or tenants >= self.settings.global_dnd_tenant_threshold
                or task.status is TaskStatus.CANCELLED_DND):
            return CallbackAction.MESSAGE, "the number is on a do-not-call list", ""
        if task.status is TaskStatus.CANCELLED or campaign.status is CampaignStatus.CANCELLED:
            return await self._fallback(db, task.user_id, user, "the task or its campaign was cancelled")
        if user is None or not user.callback_ai:
            return await self._fallback(db, task.user_id, user, "the owner takes callbacks without the AI")
        if not self.settings.llm_configured or not self.settings.openai_realtime_model:
            return await self._fallback(db, task.user_id, user, "no realtime model configured")
        return CallbackAction.AI, f"task {task.id} ({task.status.value}) called this number", ""

    async def _fallback(self, db: AsyncSession, user_id: int, user, why: str) -> tuple[CallbackAction, str, str]:
        """The owner's fallback: their chosen transfer target when it may be rung, else the message."""
        target_id = user.callback_fallback_target_id if user is not None else None
        target = (await db.scalar(select(TransferTarget).where(TransferTarget.id == target_id,
                                                               TransferTarget.user_id == user_id))
                  if target_id is not None else None)
        if target is None:
            return CallbackAction.MESSAGE, f"{why}; no fallback person set", ""
        refusal = await transfers.transfer_refusal(db, self.settings, user_id, target.phone_number)
        if refusal is not None:
            return CallbackAction.MESSAGE, f"{why}; fallback {target.name} refused: {refusal}", ""
        return CallbackAction.FORWARD, f"{why}; forwarded to {target.name}", target.phone_number

    # ------------------------------------------------------------ callback-end

    async def callback_end(self, agi: AgiSession) -> None:
        """The inbound channel hung up: end its call row (idempotent) so the analyzer reads it."""
        call_id = _int_or_none(agi.env.args[0] if len(agi.env.args) > 0 else "")
        user_id = _int_or_none(agi.env.args[1] if len(agi.env.args) > 1 else "")
        if call_id is None or user_id is None:
            return   # an unknown caller: no call row
        dial_status = await agi.get_variable("DIALSTATUS") or ""
        hangup_cause = _int_or_none(await agi.get_variable("HANGUPCAUSE"))
        async with self.sessions() as db, db.begin():
            call = await repo.get_call(db, user_id, call_id)
            # Only the channel the callback route saw may end its call (a forged session knows no Uniqueid).
            if call is None or call.direction is not CallDirection.INBOUND or \
                    call.asterisk_uniqueid != agi.env.uniqueid:
                log.warning("callback-end for call %s refused: not the inbound channel that call came in on (%s)",
                            call_id, agi.env.channel)
                return
            outcome = call.outcome if call.outcome is CallOutcome.FAILED_AI else CallOutcome.ANSWERED
            await finish_call(db, self.settings, user_id=user_id, call_id=call_id, outcome=outcome,
                              dial_status=dial_status or None, hangup_cause=hangup_cause,
                              source="agi.callback-end", events=self.events)
            if dial_status and map_dial_status(dial_status) is not CallOutcome.ANSWERED and call.transfer_number:
                await repo.record_call_event(db, user_id, call_id, "callback.forward_unanswered",
                                             {"dial_status": dial_status})

    def _publish(self, user_id: int | None, kind: str, payload: dict) -> None:
        if self.events is not None and user_id is not None:
            self.events.publish(user_id, kind, payload)


def _int_or_none(raw: str | None) -> int | None:
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        return None
