"""The Asterisk Manager connection: login, events, reconnect, Originate and live-call commands.

The wire (panoramisk, with three changes) is in ami_controller/wire.py.

Calls are correlated without guessing: the Originate pre-assigns `ChannelId` = `opendeep-<call id>` (the ;1
half, whose Uniqueid is also the Linkedid of every channel of the call) and `OtherChannelId` =
`opendeep-<call id>-b` (the ;2 half, where the dialplan runs). Several call variables go out as separate
`Variable:` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from panoramisk import Manager
from panoramisk.message import Message
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ami_controller.call_events import call_id_from_uniqueid, call_uniqueids, originate_action_id
from ami_controller.outcomes import finish_call, map_dial_status, map_originate_reason
from ami_controller.wire import (
    AmiConnection,
    AmiError,
    AmiLoginRefused,
    AmiNotConnected,
    AmiRefused,
    _header,
)
from db import repo
from db.models import Call, CallOutcome, CallStatus
from db.types import utcnow
from opendeep.asterisk_servers import AsteriskServer
from opendeep.periodic import finishing
from opendeep.settings import Settings

if TYPE_CHECKING:
    from opendeep.events import EventHub

# What other modules use from here: the controller, the errors its actions raise (from the wire), and how a call
# is named in Asterisk.
__all__ = ["AmiController", "AmiError", "AmiLoginRefused", "AmiNotConnected", "AmiRefused", "CONNECTED_CONTEXT",
           "OUTBOUND_CONTEXT", "TRANSFER_CONTEXT", "call_uniqueids", "originate_action_id"]

log = logging.getLogger("opendeep.ami")

OUTBOUND_CONTEXT = "opendeep-outbound"          # dialplan/extensions_opendeep.conf: the ;2 half dials the callee
CONNECTED_CONTEXT = "opendeep-connected"        # where the ;1 half goes once the callee answered (the AI)
TRANSFER_CONTEXT = "opendeep-transfer"          # where a transfer's Redirect sends the ;1 half
# The Originate waits for the callee to answer: call-start's AGI round trip, then Dial's ring time
# (ORIGINATE_TIMEOUT_SECONDS). This margin keeps Asterisk's Dial, not the Originate, the one that times out,
# so an unanswered call ends as DIALSTATUS=NOANSWER.
ORIGINATE_MARGIN_SECONDS = 15
CALL_EVENTS = ("OriginateResponse", "Newchannel", "Newstate", "DialBegin", "DialEnd", "Hangup")
# A call progresses one way only; an event that arrives late never moves it back.
_STATUS_ORDER = [CallStatus.CREATED, CallStatus.ORIGINATING, CallStatus.RINGING, CallStatus.ANSWERED,
                 CallStatus.ENDED]
LIVE_CALL_STATUSES = (CallStatus.ORIGINATING, CallStatus.RINGING, CallStatus.ANSWERED)


@dataclass
class _CallTrack:
    """What the events told us about one call so far (rebuilt lazily after a restart)."""

    dial_status: str | None = None
    hangup_cause: int | None = None
    saw_dialplan_half: bool = False  # the ;2 channel existed, so its `h` extension reports the end too
    finish_timer: asyncio.TimerHandle | None = None


class AmiController:
    """One AMI connection for the process. `originate`, `play_dtmf`, `hangup` and `transfer` raise AmiError
    (AmiNotConnected when Asterisk is not reachable: nothing was sent)."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], events: EventHub | None,
                 *, host: str | None = None, port: int | None = None, action_timeout_seconds: float = 10.0,
                 end_grace_seconds: float = 3.0, ping_seconds: int = 10, server: AsteriskServer | None = None,
                 action_only: bool = False) -> None:
        self.settings = settings
        self.sessions = sessions
        self.events = events
        # Which Asterisk (ASTERISK_SERVERS; the first one by default): its AMI address and login, and the calls
        # whose events and re-sync are ours.
        self.server = server or settings.asterisk_servers[0]
        # action_only: a second connection for live-call actions from a process that does not own this server's
        # calls (actions.py): no events, no re-sync, never an Originate.
        self.action_only = action_only
        # The dialplan's `h` extension (FastAGI call-end) knows DIALSTATUS; AMI only knows the Hangup cause.
        # After a hangup we give call-end this long to finish the call before we finish it from AMI.
        self.end_grace_seconds = end_grace_seconds
        self.wire = AmiConnection(
            self.server, host=host or self.server.ami_host, port=port or self.server.ami_port,
            reconnect_max_seconds=settings.ami_reconnect_max_seconds, action_timeout_seconds=action_timeout_seconds,
            ping_seconds=ping_seconds, event_names=() if action_only else CALL_EVENTS, on_event=self._on_event,
            after_login=None if action_only else self.resync, counted=not action_only,
            role="live-call actions only" if action_only else "")
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._event_worker: asyncio.Task | None = None
        self._tracks: dict[int, _CallTrack] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """Logged in and re-synced: an Originate now would be sent."""
        return self.wire.connected

    @property
    def address(self) -> str:
        return self.wire.address

    async def start(self) -> None:
        """Start connecting in the background; Asterisk being down is not an error (we keep trying)."""
        self._event_worker = asyncio.create_task(self._process_events(), name="ami-events")
        self.wire.start()

    async def stop(self) -> None:
        if self._event_worker is not None:
            self._event_worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._event_worker
        for track in self._tracks.values():
            if track.finish_timer is not None:
                track.finish_timer.cancel()
        await self.wire.stop()

    def carries_call(self):
        """SQL condition: the call is on this controller's server (NULL, from before servers had names: the
        first server)."""
        if self.server.name == self.settings.asterisk_servers[0].name:
            return or_(Call.asterisk_server == self.server.name, Call.asterisk_server.is_(None))
        return Call.asterisk_server == self.server.name

    async def wait_connected(self, timeout: float) -> None:
        """Wait until logged in and re-synced (tests, and `serve` logging)."""
        await self.wire.wait_connected(timeout)

    async def send(self, pairs: Sequence[tuple[str, str]], *, as_list: bool = False) -> Any:
        """Send one action on this server's AMI connection (AmiConnection.send)."""
        return await self.wire.send(pairs, as_list=as_list)

    async def originate(self, call: Call, *, caller_id: str | None = None) -> str:
        """Send the async Originate for a `calls` row; return its ActionID once Asterisk has queued it.

        `Local/<number>@opendeep-outbound/n`: the ;2 half runs our dialplan (call-start AGI, Dial); once the
        callee answers, the ;1 half runs `opendeep-connected` (the AI, through AudioSocket). `/n` keeps the Local
        pair from being optimized away.
        """
        if self.action_only:
            raise AmiRefused(f"the live-call connection to {self.address} never originates calls")
        number = call.dialed_number
        if self.settings.app_test_mode and number != self.settings.app_test_mode_redirect_number:
            raise AmiRefused(f"test mode: refusing to dial {number}; only APP_TEST_MODE_REDIRECT_NUMBER "
                             f"({self.settings.app_test_mode_redirect_number}) may be dialled")
        if not re.fullmatch(r"\+?[0-9]{3,20}", number or ""):
            raise AmiRefused(f"refusing to dial {number!r}: expected an E.164 number")
        action_id = call.ami_action_id or originate_action_id(call.id)
        one, two = call_uniqueids(call.id)
        pairs: list[tuple[str, str]] = [
            ("Action", "Originate"),
            ("ActionID", action_id),
            ("Channel", f"Local/{number}@{OUTBOUND_CONTEXT}/n"),
            ("ChannelId", one),
            ("OtherChannelId", two),
            ("Context", CONNECTED_CONTEXT),
            ("Exten", "s"),
            ("Priority", "1"),
            ("Timeout", str((self.settings.originate_timeout_seconds + ORIGINATE_MARGIN_SECONDS) * 1000)),
            ("Async", "true"),
        ]
        if caller_id or self.settings.caller_id:   # the campaign's own (webui/campaign_edit.py), else CALLER_ID
            pairs.append(("CallerID", caller_id or self.settings.caller_id))
        for name, value in (("OPENDEEP_CALL_ID", call.id), ("OPENDEEP_TASK_ID", call.task_id),
                            ("OPENDEEP_USER_ID", call.user_id), ("OPENDEEP_NUMBER", number)):
            pairs.append(("Variable", f"{name}={value}"))
        self._tracks[call.id] = _CallTrack()
        await self.send(pairs)
        return action_id

    async def play_dtmf(self, channel: str, digits: str) -> None:
        """Send DTMF into a live call: one `PlayDTMF` per digit (Asterisk takes one digit per action)."""
        if not digits or not re.fullmatch(r"[0-9A-Da-d*#]+", digits):
            raise AmiError(f"cannot send DTMF {digits!r}: use digits 0-9, *, # and A-D")
        for digit in digits:
            await self.send([("Action", "PlayDTMF"), ("ActionID", self.wire.next_action_id("dtmf")),
                             ("Channel", channel), ("Digit", digit)])

    async def hangup(self, channel: str, cause: int = 16) -> None:
        """Hang up a live channel with a Q.850 cause (16 = normal clearing)."""
        await self.send([("Action", "Hangup"), ("ActionID", self.wire.next_action_id("hangup")), ("Channel", channel),
                         ("Cause", str(int(cause)))])

    async def transfer(self, channel: str) -> None:
        """Send a live call's ;1 half to [opendeep-transfer]: it leaves the AI, and the dialplan asks FastAGI
        (route `transfer`) for the one number OpenDeep allowed this call. No number travels in this action."""
        await self.send([("Action", "Redirect"), ("ActionID", self.wire.next_action_id("transfer")),
                         ("Channel", channel), ("Context", TRANSFER_CONTEXT), ("Exten", "s"), ("Priority", "1")])

    # ------------------------------------------------------------------ re-sync after (re)connecting

    async def live_channels(self) -> list[Message]:
        """Every channel Asterisk has now (CoreShowChannels; Status when that is not permitted)."""
        try:
            reply = await self.send([("Action", "CoreShowChannels"),
                                     ("ActionID", self.wire.next_action_id("channels"))], as_list=True)
            wanted = "coreshowchannel"
        except AmiRefused:
            reply = await self.send([("Action", "Status"), ("ActionID", self.wire.next_action_id("status"))],
                                    as_list=True)
            wanted = "status"
        return [message for message in reply if message.get("Event", "").lower() == wanted]

    async def resync(self) -> None:
        """Reconcile in-flight calls with what Asterisk has now, so no call is forgotten or dialed again.

        A call whose channels still exist keeps going (its later events finish it). A call whose channels are
        gone ended while we were away: it is finished now (answered if it had been answered, else failed),
        and its task moves on by rule; nothing is re-sent.
        """
        channels = await self.live_channels()
        live = {_header(message, "Uniqueid") for message in channels}
        live |= {_header(message, "Linkedid") for message in channels}
        async with self.sessions() as session:
            # Only this server's calls: another Asterisk's calls are not in this one's channel list.
            calls = (await session.scalars(select(Call).where(Call.status.in_(LIVE_CALL_STATUSES),
                                                              self.carries_call()))).all()
            for call in calls:
                one, two = call_uniqueids(call.id)
                # asterisk_uniqueid: a callback's inbound channel (fastagi_server/callbacks.py) has Asterisk's own.
                if one in live or two in live or (call.asterisk_uniqueid and call.asterisk_uniqueid in live):
                    log.info("re-sync: call %s is still up in Asterisk", call.id)
                    continue
                outcome = CallOutcome.ANSWERED if call.answered_at is not None else CallOutcome.FAILED
                await repo.record_call_event(session, call.user_id, call.id, "ami.resync",
                                             {"found_in_asterisk": False, "outcome": outcome.value})
                await finish_call(session, self.settings, user_id=call.user_id, call_id=call.id, outcome=outcome,
                                  source="ami.resync", events=self.events)
                log.warning("re-sync: call %s was no longer in Asterisk; finished as %s", call.id, outcome.value)
            await session.commit()

    # ------------------------------------------------------------------ events

    def _on_event(self, _manager: Manager, message: Message) -> None:
        # Handled one at a time, in arrival order: a Hangup is never processed before the Newstate before it.
        self._events.put_nowait(message)

    async def _process_events(self) -> None:
        while True:
            message = await self._events.get()
            try:
                await finishing(self.handle_event(message))   # stopping lets the event's write finish
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad event must not stop the others
                log.exception("could not handle AMI event %s", message.get("Event"))

    async def handle_event(self, message: Message) -> None:
        """Apply one AMI event to its calls row (events of channels that are not ours are ignored)."""
        # `Event` first: an OriginateResponse also carries a `Response:` header.
        name = _header(message, "Event")
        if name == "OriginateResponse":
            await self._on_originate_response(message)
            return
        call_id = call_id_from_uniqueid(_header(message, "Linkedid") or _header(message, "DestLinkedid"))
        if call_id is None:
            return
        track = self._tracks.setdefault(call_id, _CallTrack())
        one, two = call_uniqueids(call_id)
        # The callee's Dial() runs on the ;2 half; the ;1 half dials the AudioSocket channel and transfers.
        callee_dial = _header(message, "Uniqueid") == two
        if name == "Newchannel":
            if _header(message, "Uniqueid") == two:
                track.saw_dialplan_half = True
            elif _header(message, "Uniqueid") == one:
                # The ;1 half: what PlayDTMF, Redirect and Hangup act on (a cancelled ringing call included).
                await self._set_channel(call_id, _header(message, "Channel"))
        elif name == "DialBegin" and callee_dial:
            await self._advance(call_id, CallStatus.RINGING, "ami.dial_begin",
                                {"dest_channel": _header(message, "DestChannel") or None})
        elif name == "DialEnd" and callee_dial:
            track.dial_status = _header(message, "DialStatus") or None
            payload = {"dial_status": track.dial_status, "dest_channel": _header(message, "DestChannel") or None}
            if track.dial_status == "ANSWER":
                await self._advance(call_id, CallStatus.ANSWERED, "ami.dial_end", payload)
            else:
                await self._record(call_id, "ami.dial_end", payload)
        elif (name == "Newstate" and _header(message, "ChannelState") == "5"
              and not _header(message, "Channel").startswith("Local/")):
            await self._advance(call_id, CallStatus.RINGING, "ami.ringing",
                                {"channel": _header(message, "Channel") or None})
        elif name == "Hangup" and _header(message, "Uniqueid") == one:
            # The ;1 half goes last: the call is over as far as Asterisk is concerned.
            track.hangup_cause = _int_or_none(_header(message, "Cause"))
            outcome = map_dial_status(track.dial_status, track.hangup_cause)
            self._finish_later(call_id, outcome, "ami.hangup", dial_status=track.dial_status,
                               hangup_cause=track.hangup_cause, answered_wins=True)

    async def _on_originate_response(self, message: Message) -> None:
        action_id = _header(message, "ActionID")
        async with self.sessions() as session:
            call = await session.scalar(select(Call).where(Call.ami_action_id == action_id))
            if call is None:
                return  # not one of ours (another AMI client's Originate)
            track = self._tracks.setdefault(call.id, _CallTrack())
            response, reason = _header(message, "Response"), _header(message, "Reason")
            await repo.record_call_event(session, call.user_id, call.id, "ami.originate_response",
                                         {"response": response, "reason": reason,
                                          "uniqueid": _header(message, "Uniqueid") or None})
            await session.commit()
        outcome = map_originate_reason(_int_or_none(reason), response)
        if outcome is CallOutcome.ANSWERED:
            # Success: the ;1 half is up, which it is only once the callee answered (nothing in the shipped
            # dialplan answers before). The call's end comes from the `h` extension and the Hangup event.
            await self._advance(call.id, CallStatus.ANSWERED, None, {})
            return
        if track.dial_status:
            # The ;2 half's DialEnd said what became of the callee; the Originate of a Local channel only says
            # Reason 0 or 1 whatever it was (tests/test_asterisk_calls.py, real Asterisk 22).
            outcome = map_dial_status(track.dial_status, None)
        if track.saw_dialplan_half:
            # The dialplan ran: its `h` extension reports DIALSTATUS and HANGUPCAUSE; give it the first word.
            self._finish_later(call.id, outcome, "ami.originate_response")
        else:
            await self._finish(call.id, outcome, "ami.originate_response")

    def _finish_later(self, call_id: int, outcome: CallOutcome, source: str, **details: Any) -> None:
        track = self._tracks.setdefault(call_id, _CallTrack())
        if track.finish_timer is not None:
            return
        loop = asyncio.get_running_loop()

        def _fire() -> None:
            task = loop.create_task(self._finish(call_id, outcome, source, **details))
            task.add_done_callback(_log_failure)

        track.finish_timer = loop.call_later(self.end_grace_seconds, _fire)

    async def _finish(self, call_id: int, outcome: CallOutcome, source: str, *, answered_wins: bool = False,
                      **details: Any) -> None:
        async with self.sessions() as session:
            call = await session.get(Call, call_id)
            if call is None:
                return
            if answered_wins and call.answered_at is not None:
                # Answered (OriginateResponse Success / DialEnd ANSWER) then hung up: a normal end, whatever
                # the cause code says.
                outcome = CallOutcome.ANSWERED
            done = await finish_call(session, self.settings, user_id=call.user_id, call_id=call_id,
                                     outcome=outcome, source=source, events=self.events, **details)
            await session.commit()
        track = self._tracks.pop(call_id, None)
        if track is not None and track.finish_timer is not None:
            track.finish_timer.cancel()
        if done:
            log.info("call %s finished from AMI (%s): %s", call_id, source, outcome.value)

    async def _set_channel(self, call_id: int, channel: str) -> None:
        async with self.sessions() as session:
            await session.execute(update(Call).where(Call.id == call_id, Call.channel.is_(None))
                                  .values(channel=channel[:128]))
            await session.commit()

    async def _advance(self, call_id: int, status: CallStatus, event_type: str | None,
                       payload: dict[str, Any]) -> None:
        """Move a call forward to `status` (never backwards); record the event either way."""
        earlier = _STATUS_ORDER[: _STATUS_ORDER.index(status)]
        async with self.sessions() as session:
            call = await session.get(Call, call_id)
            if call is None:
                return
            values: dict[str, Any] = {"status": status}
            if status is CallStatus.ANSWERED and call.answered_at is None:
                values["answered_at"] = utcnow()
            result = await session.execute(
                update(Call).where(Call.id == call_id, Call.status.in_(earlier)).values(**values))
            if event_type:
                await repo.record_call_event(session, call.user_id, call_id, event_type, payload)
            await session.commit()
            if result.rowcount == 1 and self.events is not None:
                self.events.publish(call.user_id, "call.updated", {"call_id": call_id, "task_id": call.task_id,
                                                                   "status": status.value, "outcome": None})

    async def _record(self, call_id: int, event_type: str, payload: dict[str, Any]) -> None:
        async with self.sessions() as session:
            call = await session.get(Call, call_id)
            if call is None:
                return
            await repo.record_call_event(session, call.user_id, call_id, event_type, payload)
            await session.commit()


def _int_or_none(raw: Any) -> int | None:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("finishing a call from AMI failed", exc_info=task.exception())

