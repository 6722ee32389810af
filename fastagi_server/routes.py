"""What OpenDeep decides when Asterisk's dialplan asks (dialplan/extensions_opendeep.conf calls these).

    call-start     on the Local ;2 channel, before Dial(): may this call ring, and how? Sets OPENDEEP_DIAL and
                   OPENDEEP_RING_SECONDS, or OPENDEEP_ABORT=<reason> (then nothing is dialed).
    call-answered  on the Local ;1 channel once the callee answered ([opendeep-connected]): records that channel
                   (DTMF, transfer and hangup target it) and sets OPENDEEP_AS_UUID, OPENDEEP_AS_ADDR,
                   OPENDEEP_BRIDGE, OPENDEEP_MAX_SECONDS and OPENDEEP_RECORDING for Dial(AudioSocket/...).
    amd            on the ;1 channel after AMD(): MACHINE -> voicemail; HUMAN / NOTSURE -> talk.
    call-end       in the `h` extension of the Local ;2 channel: DIALSTATUS, HANGUPCAUSE, ANSWEREDTIME ->
                   ami_controller.outcomes.finish_call (calls row, call_events, task moved on).

The call's identity (call id, user id) comes as the AGI() arguments: the shipped dialplan passes
${OPENDEEP_CALL_ID},${OPENDEEP_USER_ID}, which the AMI Originate set on both Local halves. Without arguments the
route asks for the OPENDEEP_CALL_ID / OPENDEEP_USER_ID variables (GET VARIABLE). Every query is scoped by that
user: a call id of another tenant is simply unknown. And the session must come from the channel our Originate
made for that call: `agi_uniqueid` is the Uniqueid the Originate pre-assigned to that half (`opendeep-<id>` for
;1, `opendeep-<id>-b` for ;2), so a forged session cannot speak for another call's channel.

call-start decisions of sessions that arrive together share one transaction (GroupCommit): on SQLite the
transaction, not the decision, is what costs (see bench/bench_fastagi.py).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ami_controller.outcomes import finish_call, map_dial_status
from db import repo, task_life, transfers
from db.models import Call, CallEvent, CallOutcome, CallStatus, TaskStatus, VoicemailAction
from db.typed import table_of
from db.types import utcnow
from fastagi_server.callbacks import CallbackRoutes
from fastagi_server.protocol import AgiError, AgiSession
from opendeep.recordings import recording_path
from opendeep.settings import Settings

if TYPE_CHECKING:
    from opendeep.events import EventHub

log = logging.getLogger(__name__)

_E164ISH = re.compile(r"^\+?[0-9]{3,20}$")  # what may reach Dial(): digits only, so no '&', ',' or '/' injection
_NOT_YET_CANCELLED = tuple(status for status in TaskStatus if not status.is_terminal) + (TaskStatus.CANCELLED_DND,)

# The two writes of a call-start batch, built once (executemany over the batch; SQLAlchemy caches the compiled
# form). A call ended meanwhile (e.g. cancelled from the web UI) is never moved back to ringing.
_CALLS = table_of(Call)
_MARK_RINGING = (
    _CALLS.update()
    .where(_CALLS.c.id == bindparam("b_id"), _CALLS.c.user_id == bindparam("b_user_id"),
           _CALLS.c.status != CallStatus.ENDED.value)
    .values(audiosocket_uuid=bindparam("audiosocket_uuid"), status=CallStatus.RINGING.value,
            started_at=bindparam("started_at"), asterisk_other_uniqueid=bindparam("asterisk_other_uniqueid"))
)
# tenant-safe: each event row carries the user_id read from its own call row (as _MARK_RINGING's b_user_id)
_INSERT_CALL_EVENTS = insert(table_of(CallEvent))


class AbortReason(enum.StrEnum):
    """Values of OPENDEEP_ABORT: why call-start refused to dial (the dialplan hangs up without dialing)."""

    UNKNOWN_CALL = "unknown-call"        # no such call id for that user (or ids missing / not numbers)
    CALL_ENDED = "call-ended"            # the call row was already ended (e.g. cancelled meanwhile)
    TASK_NOT_LIVE = "task-not-live"      # the user paused or cancelled the task after the Originate
    DND = "dnd"                          # the number is on the user's DND list, or on the global DND
    INVALID_NUMBER = "invalid-number"    # the dialed number is not digits (never handed to Dial())
    ALREADY_STARTED = "already-started"  # call-start already ran for this call: never ring the callee twice


class AmdAction(enum.StrEnum):
    """Values of OPENDEEP_AMD_ACTION, read by the dialplan after the amd route."""

    TALK = "talk"
    HANGUP = "hangup"
    VOICEMAIL = "voicemail"   # a machine, and the campaign leaves messages: wait for the beep, then the AI speaks


@dataclass(frozen=True)
class CallStartRequest:
    call_id: int
    user_id: int
    agi_uniqueid: str = ""


@dataclass(frozen=True)
class CallStartDecision:
    abort: AbortReason | None = None
    dial: str = ""
    audiosocket_uuid: str = ""
    bridge: bool = False
    bridge_reason: str = ""


class CallRoutes:
    """The four routes, bound to settings, the session factory and (optionally) the event hub."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession],
                 events: EventHub | None = None):
        self.settings = settings
        self.sessions = sessions
        self.events = events
        self._batcher = GroupCommit(self.decide_call_start_batch)
        self.callbacks = CallbackRoutes(settings, sessions, events)   # [opendeep-inbound]
        try:
            settings.dial_string_template.format(number="+15550100", digits="15550100")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"DIAL_STRING_TEMPLATE={settings.dial_string_template!r}: only {{number}} and "
                             f"{{digits}} may be used ({exc})") from None

    def table(self) -> dict[str, Callable[[AgiSession], Awaitable[None]]]:
        """Route name (the `agi://host:port/<name>` path) -> coroutine taking an AgiSession."""
        return {
            "call-start": self.call_start,
            "call-answered": self.call_answered,
            "call-end": self.call_end,
            "amd": self.amd,
            "transfer": self.transfer,
            **self.callbacks.table(),
        }

    # ------------------------------------------------------------ call-start

    async def call_start(self, agi: AgiSession) -> None:
        """Decide whether and how the call rings; the dialplan dials only when OPENDEEP_DIAL is set."""
        call_id, user_id = await _identity(agi, LOCAL_TWO)
        if call_id is None or user_id is None:
            log.warning("call-start on %s without valid OPENDEEP_CALL_ID/OPENDEEP_USER_ID: not dialing",
                        agi.env.channel)
            await agi.set_variable("OPENDEEP_ABORT", AbortReason.UNKNOWN_CALL)
            return
        decision = await self.decide_call_start(call_id, user_id, agi.env.uniqueid)
        if decision.abort is not None:
            await agi.set_variable("OPENDEEP_ABORT", decision.abort)
            return
        # One round trip (EXEC MSet). OPENDEEP_DIAL is the dialplan's go signal: it is set with the others or
        # not at all, so a session cut short never dials.
        await agi.set_variables({"OPENDEEP_RING_SECONDS": str(self.settings.originate_timeout_seconds),
                                 "OPENDEEP_DIAL": decision.dial})

    async def decide_call_start(self, call_id: int, user_id: int, agi_uniqueid: str = "") -> CallStartDecision:
        """The call-start decision, committed before it is returned. Sessions that arrive together share
        one transaction (group commit): on SQLite a transaction costs far more than the decision itself."""
        return await self._batcher.submit(CallStartRequest(call_id, user_id, agi_uniqueid))

    async def decide_call_start_batch(self, requests: list[CallStartRequest]) -> list[CallStartDecision]:
        """Decide several call-starts in one transaction: one query for the calls and their tasks, one for
        the DND lists, one UPDATE and one INSERT for all that ring. Refusals are recorded the same way."""
        decisions: list[CallStartDecision] = []
        published: list[tuple[int, dict]] = []
        async with self.sessions() as db, db.begin():
            found = await repo.get_call_start_rows(db, [(r.user_id, r.call_id) for r in requests])
            started: set[int] = set()
            updates, events = [], []
            now = utcnow()
            for request in requests:
                decision = await self._decide_one(db, request, found, started)
                decisions.append(decision)
                if decision.abort is not None:
                    continue
                call = found[(request.user_id, request.call_id)]
                updates.append({"b_id": call.id, "b_user_id": call.user_id, "audiosocket_uuid":
                                decision.audiosocket_uuid, "started_at": call.started_at or now,
                                "asterisk_other_uniqueid": call.asterisk_other_uniqueid or request.agi_uniqueid
                                or None})
                events.append({"user_id": call.user_id, "call_id": call.id, "type": "agi.call_start",
                               "at": now, "payload": {
                                   "dial": decision.dial, "bridge": decision.bridge,
                                   "bridge_reason": decision.bridge_reason,
                                   "test_mode": self.settings.app_test_mode}})
                published.append((call.user_id, {"call_id": call.id, "task_id": call.task_id,
                                                 "status": CallStatus.RINGING.value, "outcome": None}))
            if updates:
                connection = await db.connection()  # Core executemany: no ORM bookkeeping per row
                await connection.execute(_MARK_RINGING, updates)
                await connection.execute(_INSERT_CALL_EVENTS, events)
        for user_id, payload in published:
            self._publish(user_id, "call.updated", payload)
        return decisions

    async def _decide_one(self, db: AsyncSession, request: CallStartRequest, found: dict,
                          started: set[int]) -> CallStartDecision:
        """One request of a batch; `found` rows come from repo.get_call_start_rows (call, task and DND
        columns)."""
        call_id, user_id = request.call_id, request.user_id
        call = found.get((user_id, call_id))
        if call is None:
            log.warning("call-start: call %s of user %s not found: not dialing", call_id, user_id)
            return CallStartDecision(abort=AbortReason.UNKNOWN_CALL)
        if call.status is CallStatus.ENDED:
            log.info("call-start: call %s already ended (%s): not dialing", call_id, call.outcome)
            return CallStartDecision(abort=AbortReason.CALL_ENDED)
        if call.audiosocket_uuid is not None or call.id in started:
            log.warning("call-start: call %s already had its call-start: not dialing it twice", call_id)
            return CallStartDecision(abort=AbortReason.ALREADY_STARTED)
        started.add(call.id)
        if call.task_status.is_terminal:
            reason = f"task {call.task_id} is {call.task_status.value}: not dialing"
            await self._end_without_dialing(db, call, CallOutcome.CANCELLED, AbortReason.TASK_NOT_LIVE, reason)
            return CallStartDecision(abort=AbortReason.TASK_NOT_LIVE)

        verdict = repo.dnd_verdict(bool(call.dnd_listed_by_user), int(call.dnd_tenants or 0),
                                   self.settings.global_dnd_tenant_threshold)
        if verdict is not None:
            await self._end_without_dialing(db, call, CallOutcome.DND_BLOCKED, AbortReason.DND, verdict)
            return CallStartDecision(abort=AbortReason.DND)

        number = (self.settings.app_test_mode_redirect_number if self.settings.app_test_mode
                  else call.dialed_number)
        if not _E164ISH.match(number or ""):
            reason = f"dialed number {number!r} is not a phone number"
            await self._end_without_dialing(db, call, CallOutcome.FAILED, AbortReason.INVALID_NUMBER, reason)
            return CallStartDecision(abort=AbortReason.INVALID_NUMBER)

        bridge, bridge_reason = self._bridge_decision()
        if not bridge:
            log.warning("call %s will ring without the AI: %s", call_id, bridge_reason)
        return CallStartDecision(
            dial=self.settings.dial_string_template.format(number=number, digits=number.lstrip("+")),
            audiosocket_uuid=str(uuid.uuid4()), bridge=bridge, bridge_reason=bridge_reason)

    def _bridge_decision(self) -> tuple[bool, str]:
        """Whether an answered call goes to the AI. Without a realtime model the call still rings (the
        telephony path is tested end to end) but the callee hears a goodbye prompt instead of the AI."""
        if not self.settings.llm_configured:
            return False, "no realtime model configured: set OPENAI_API_KEY or OPENAI_BASE_URL"
        if not self.settings.openai_realtime_model:
            return False, "OPENAI_REALTIME_MODEL is empty"
        return True, ""

    async def _end_without_dialing(self, db: AsyncSession, call, outcome: CallOutcome,
                                   abort: AbortReason, reason: str) -> None:
        log.info("call-start: call %s of user %s not dialed: %s", call.id, call.user_id, reason)
        db.add(_call_event(call, "agi.call_start_aborted", {"abort": abort.value, "reason": reason}))
        await finish_call(db, self.settings, user_id=call.user_id, call_id=call.id, outcome=outcome,
                          source="agi.call-start", events=self.events)
        if outcome is CallOutcome.DND_BLOCKED:
            # finish_call moves a queued / in-progress task to cancelled_dnd; whatever its state, a listed
            # number is never called again for this task, and the reason names which list.
            await task_life.move(db, call.user_id, call.task_id, TaskStatus.CANCELLED_DND, reason=reason,
                                 only_from=_NOT_YET_CANCELLED)

    # ------------------------------------------------------------ call-answered

    async def call_answered(self, agi: AgiSession) -> None:
        """The callee answered: remember the channel live-call commands target (the Local ;1 half, bridged to
        the callee) and the time, and tell the dialplan where the AI is. Without OPENDEEP_AS_UUID the dialplan
        hangs up."""
        call_id, user_id = await _identity(agi, LOCAL_ONE)
        if call_id is None or user_id is None:
            log.warning("call-answered on %s without a call id: nothing recorded", agi.env.channel)
            return
        channel = agi.env.channel
        async with self.sessions() as db, db.begin():
            call = await repo.get_call(db, user_id, call_id)
            if call is None:
                log.warning("call-answered: call %s of user %s not found (channel %s)", call_id, user_id, channel)
                return
            if call.status is CallStatus.ENDED or not call.audiosocket_uuid:
                log.info("call-answered: call %s already ended or never started; hanging up %s", call_id, channel)
                return
            if call.channel and call.channel != channel:
                log.warning("call-answered for call %s from %s, but AMI saw its ;1 half as %s: refused",
                            call_id, channel, call.channel)
                return
            call.channel = channel[:128]
            call.answered_at = call.answered_at or utcnow()
            call.status = CallStatus.ANSWERED
            db.add(_call_event(call, "agi.call_answered", {"channel": channel}))
            task_id, audiosocket_uuid = call.task_id, call.audiosocket_uuid
            server = self.settings.asterisk_server(call.asterisk_server)
        self._publish(user_id, "call.updated", {"call_id": call_id, "task_id": task_id,
                                                "status": CallStatus.ANSWERED.value, "outcome": None})
        bridge, _ = self._bridge_decision()
        # The AudioSocket address of the Asterisk server carrying the call (ASTERISK_SERVERS).
        address = server.audiosocket_address if server is not None else self.settings.audiosocket_address
        values = {"OPENDEEP_AS_ADDR": address,
                  "OPENDEEP_BRIDGE": "1" if bridge else "0",
                  "OPENDEEP_MAX_SECONDS": str(self.settings.max_call_seconds)}
        if self.settings.record_calls:
            values["OPENDEEP_RECORDING"] = str(recording_path(self.settings, user_id, call_id))
        # All in one round trip (EXEC MSet): without the UUID the dialplan connects nothing.
        values["OPENDEEP_AS_UUID"] = audiosocket_uuid
        await agi.set_variables(values)

    # ------------------------------------------------------------ amd

    async def amd(self, agi: AgiSession) -> None:
        """After AMD(): MACHINE -> voicemail (hint kept on the call): the dialplan hangs up, or, when the
        campaign's plan leaves messages (and the task has one, and an AI can speak it), waits for the beep and
        lets the AI speak it. HUMAN and NOTSURE -> talk (human first: a person hung up on costs more than an AI
        greeting a mailbox)."""
        call_id, user_id = await _identity(agi, LOCAL_ONE)
        status = (await agi.get_variable("AMDSTATUS") or "").upper()
        cause = await agi.get_variable("AMDCAUSE") or ""
        action = AmdAction.HANGUP if status in ("MACHINE", "HANGUP") else AmdAction.TALK
        if call_id is not None and user_id is not None:
            async with self.sessions() as db, db.begin():
                call = await repo.get_call(db, user_id, call_id)
                if call is None:
                    log.warning("amd: call %s of user %s not found", call_id, user_id)
                else:
                    if status == "MACHINE" and call.status is not CallStatus.ENDED:
                        call.outcome = CallOutcome.VOICEMAIL  # a hint until call-end ends the call with it
                        if self._bridge_decision()[0] and await _leaves_messages(db, user_id, call.task_id):
                            action = AmdAction.VOICEMAIL
                    db.add(_call_event(call, "agi.amd", {"amd_status": status or None, "amd_cause": cause,
                                                         "action": action.value}))
        await agi.set_variable("OPENDEEP_AMD_ACTION", action)

    # ------------------------------------------------------------ transfer

    async def transfer(self, agi: AgiSession) -> None:
        """[opendeep-transfer] on the ;1 half, after the call AI's transfer_to_human: the one number OpenDeep
        allowed this call (a target the user listed), used once and checked again (DND, test mode). Without
        OPENDEEP_TRANSFER_DIAL the dialplan dials nothing."""
        call_id, user_id = await _identity(agi, LOCAL_ONE)
        if call_id is None or user_id is None:
            return
        async with self.sessions() as db, db.begin():
            call = await repo.get_call(db, user_id, call_id)
            if call is None:
                return
            number = call.transfer_number if call.status is not CallStatus.ENDED else None
            call.transfer_number = None   # one transfer per permission
            refusal = (await transfers.transfer_refusal(db, self.settings, user_id, number) if number
                       else "no transfer was allowed for this call")
            db.add(_call_event(call, "agi.transfer", {"number": number, "refused": refusal}))
        if refusal is not None or number is None:   # no number always comes with a refusal
            log.warning("transfer of call %s to %s refused: %s", call_id, number, refusal)
            return
        await agi.set_variable("OPENDEEP_TRANSFER_DIAL", self.settings.dial_string_template.format(
            number=number, digits=number.lstrip("+")))

    # ------------------------------------------------------------ call-end

    async def call_end(self, agi: AgiSession) -> None:
        """The Local channel hung up (`h` extension): end the call and move its task on (idempotent)."""
        call_id, user_id = await _identity(agi, LOCAL_TWO)
        # CHANNEL STATUS would answer 511 here; variables are still readable.
        dial_status = await agi.get_variable("DIALSTATUS") or ""
        hangup_cause = _int_or_none(await agi.get_variable("HANGUPCAUSE"))
        answered_seconds = _float_or_none(await agi.get_variable("ANSWEREDTIME"))
        if call_id is None or user_id is None:
            log.warning("call-end on %s without valid OPENDEEP_CALL_ID/OPENDEEP_USER_ID (DIALSTATUS=%s)",
                        agi.env.channel, dial_status)
            return
        outcome = map_dial_status(dial_status, hangup_cause)
        async with self.sessions() as db, db.begin():
            call = await repo.get_call(db, user_id, call_id)
            if call is None:
                log.warning("call-end: call %s of user %s not found", call_id, user_id)
                return
            if outcome is CallOutcome.ANSWERED:
                if call.outcome in (CallOutcome.VOICEMAIL, CallOutcome.VOICEMAIL_LEFT, CallOutcome.FAILED_AI):
                    outcome = call.outcome  # a hint set during the call (AMD, or the call AI lost its model)
                elif not self._bridge_decision()[0]:
                    outcome = CallOutcome.FAILED_AI  # answered, but no AI could take the call
            ended = await finish_call(db, self.settings, user_id=user_id, call_id=call_id, outcome=outcome,
                                      dial_status=dial_status or None, hangup_cause=hangup_cause,
                                      answered_seconds=answered_seconds, source="agi.call-end",
                                      events=self.events)
        if not ended:
            log.info("call-end: call %s was already ended; DIALSTATUS=%s HANGUPCAUSE=%s", call_id, dial_status,
                     hangup_cause)

    def _publish(self, user_id: int, kind: str, payload: dict) -> None:
        if self.events is not None:
            self.events.publish(user_id, kind, payload)


LOCAL_ONE, LOCAL_TWO = "", "-b"   # suffixes of the Uniqueids our Originate pre-assigns: opendeep-<id>, opendeep-<id>-b


async def _identity(agi: AgiSession, half: str) -> tuple[int | None, int | None]:
    """(call id, user id): from AGI(...,<call id>,<user id>) arguments when given, else from the OPENDEEP_CALL_ID
    / OPENDEEP_USER_ID variables the Originate set on the Local channel. (None, None) unless the session runs on
    that call's own `half` of the Local channel (its pre-assigned agi_uniqueid)."""
    if len(agi.env.args) >= 2 and agi.env.args[0] and agi.env.args[1]:
        call_id, user_id = _int_or_none(agi.env.args[0]), _int_or_none(agi.env.args[1])
    else:
        call_id = _int_or_none(await agi.get_variable("OPENDEEP_CALL_ID"))
        user_id = _int_or_none(await agi.get_variable("OPENDEEP_USER_ID"))
    if call_id is not None and agi.env.uniqueid != f"opendeep-{call_id}{half}":
        log.warning("FastAGI %s for call %s refused: it runs on %s (Uniqueid %r), not on the call's own channel",
                    agi.env.script, call_id, agi.env.channel, agi.env.uniqueid)
        return None, None
    return call_id, user_id


class GroupCommit:
    """Run `decide_batch` for requests that arrive while a batch is in the database, together.

    When idle, the first request starts at once (no added latency). When busy -- the previous batch started
    less than `linger` seconds ago -- the next batch waits until `linger` after it, so the requests of those
    moments share one transaction (PostgreSQL's commit_delay idea). A transaction costs the same for one
    request or fifty: on SQLite each statement is several hops to aiosqlite's thread, far more than the
    decision itself. If a batch fails, its requests are retried one by one, so a request that cannot be
    decided never takes the others down with it.
    """

    def __init__(self, decide_batch, max_batch: int = 200, linger: float = 0.002):
        self.decide_batch = decide_batch
        self.max_batch = max_batch
        self.linger = linger
        self._pending: list[tuple[CallStartRequest, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._last_batch_at = float("-inf")

    async def submit(self, request: CallStartRequest) -> CallStartDecision:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            wait = self._last_batch_at + self.linger - loop.time()
            if wait > 0:  # busy: let the requests of the next moment join this batch
                await asyncio.sleep(wait)
            self._last_batch_at = loop.time()
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            requests = [request for request, _ in batch]
            try:
                results: list = await self.decide_batch(requests)
            except Exception:
                if len(batch) == 1:
                    log.exception("call-start decision failed for call %s", requests[0].call_id)
                    results = [AgiError("call-start decision failed; see the log")]
                else:
                    results = []
                    for request in requests:
                        try:
                            results.extend(await self.decide_batch([request]))
                        except Exception as exc:
                            log.exception("call-start decision failed for call %s", request.call_id)
                            results.append(AgiError(f"call-start decision failed: {exc}"))
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the session was cancelled (server stopping); the decision is recorded
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


async def _leaves_messages(db: AsyncSession, user_id: int, task_id: int) -> bool:
    """Whether the task's campaign leaves a message on machines, and the task has one to leave."""
    task = await repo.get_task(db, user_id, task_id)
    if task is None or not (task.voicemail_message or "").strip():
        return False
    campaign = await repo.get_campaign(db, user_id, task.campaign_id)
    return campaign is not None and campaign.voicemail_action is VoicemailAction.LEAVE_MESSAGE


def _call_event(call, type_: str, payload: dict) -> CallEvent:
    """A call_events row for `call` (an ORM Call or a row with id and user_id)."""
    return CallEvent(user_id=call.user_id, call_id=call.id, type=type_, payload=payload)


def _int_or_none(raw: str | None) -> int | None:
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        return None


def _float_or_none(raw: str | None) -> float | None:
    try:
        return float(raw) if raw not in (None, "") else None
    except ValueError:
        return None
