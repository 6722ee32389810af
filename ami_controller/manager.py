"""One Asterisk server's AMI side of calls: Originate and live-call commands, and its events applied to calls.

Three parts, each in its own module:
- the wire (ami_controller/wire.py): panoramisk with three changes, login, reconnect with back-off, send;
- the call-state rules (ami_controller/call_events.py): pure, event in, changes out;
- the database writes of those changes (ami_controller/call_store.py).
This module joins them: it sends our actions, queues events in arrival order, applies each event's changes, and
holds the grace timers that give the dialplan's `h` extension the first word on how a call ended.

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
from typing import TYPE_CHECKING, Any

from panoramisk import Manager
from panoramisk.message import Message
from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ami_controller.call_events import (
    Advance,
    CallEventMapper,
    Change,
    Finish,
    Record,
    SetChannel,
    call_uniqueids,
    originate_action_id,
)
from ami_controller.call_store import CallStore
from ami_controller.wire import (
    AmiConnection,
    AmiError,
    AmiLoginRefused,
    AmiNotConnected,
    AmiRefused,
    header,
)
from db.models import Call
from opendeep.asterisk_servers import AsteriskServer
from opendeep.periodic import finishing
from opendeep.settings import Settings

if TYPE_CHECKING:
    from opendeep.events import EventHub

# What other modules use from here: the controller, the errors its actions raise (from the wire), and how a call
# is named in Asterisk.
__all__ = ["AmiController", "AmiError", "AmiLoginRefused", "AmiNotConnected", "AmiRefused", "CONNECTED_CONTEXT",
           "OUTBOUND_CONTEXT", "TRANSFER_CONTEXT", "call_uniqueids", "originate_action_id"]

log = logging.getLogger(__name__)

OUTBOUND_CONTEXT = "opendeep-outbound"          # dialplan/extensions_opendeep.conf: the ;2 half dials the callee
CONNECTED_CONTEXT = "opendeep-connected"        # where the ;1 half goes once the callee answered (the AI)
TRANSFER_CONTEXT = "opendeep-transfer"          # where a transfer's Redirect sends the ;1 half
# The Originate waits for the callee to answer: call-start's AGI round trip, then Dial's ring time
# (ORIGINATE_TIMEOUT_SECONDS). This margin keeps Asterisk's Dial, not the Originate, the one that times out,
# so an unanswered call ends as DIALSTATUS=NOANSWER.
ORIGINATE_MARGIN_SECONDS = 15
CALL_EVENTS = ("OriginateResponse", "Newchannel", "Newstate", "DialBegin", "DialEnd", "Hangup")


class AmiController:
    """One Asterisk server's AMI side in this process. `originate`, `play_dtmf`, `hangup` and `transfer` raise
    AmiError (AmiNotConnected when Asterisk is not reachable: nothing was sent)."""

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
        self.calls = CallEventMapper()     # what the events said so far, and what they mean
        self.store = CallStore(settings, sessions, events, self.server)
        self._finish_timers: dict[int, asyncio.TimerHandle] = {}

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
        for timer in self._finish_timers.values():
            timer.cancel()
        await self.wire.stop()

    def carries_call(self) -> ColumnElement[bool]:
        """SQL condition: the call is on this controller's server (CallStore.carries_call)."""
        return self.store.carries_call()

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
        self.calls.expect(call.id)
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
        await self.send([("Action", "Hangup"), ("ActionID", self.wire.next_action_id("hangup")),
                         ("Channel", channel), ("Cause", str(int(cause)))])

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
        live = {header(message, "Uniqueid") for message in channels}
        live |= {header(message, "Linkedid") for message in channels}
        await self.store.finish_calls_not_in(live)

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
        if header(message, "Event") == "OriginateResponse":
            call_id = await self.store.call_for_originate(header(message, "ActionID"))
            if call_id is None:
                return  # not one of ours (another AMI client's Originate)
            changes = self.calls.originate_response(call_id, message)
        else:
            changes = self.calls.call_event(message)
        for change in changes:
            await self._apply(change)

    async def _apply(self, change: Change) -> None:
        if isinstance(change, SetChannel):
            await self.store.set_channel(change.call_id, change.channel)
        elif isinstance(change, Advance):
            await self.store.advance(change.call_id, change.status, change.event_type, change.payload)
        elif isinstance(change, Record):
            await self.store.record(change.call_id, change.event_type, change.payload)
        elif change.after_grace:
            self._finish_later(change)
        else:
            await self._finish(change)

    def _finish_later(self, change: Finish) -> None:
        if change.call_id in self._finish_timers:
            return
        loop = asyncio.get_running_loop()

        def _fire() -> None:
            task = loop.create_task(self._finish(change))
            task.add_done_callback(_log_failure)

        self._finish_timers[change.call_id] = loop.call_later(self.end_grace_seconds, _fire)

    async def _finish(self, change: Finish) -> None:
        await self.store.finish(change.call_id, change.outcome, change.source, answered_wins=change.answered_wins,
                                **change.details)
        self.calls.forget(change.call_id)
        timer = self._finish_timers.pop(change.call_id, None)
        if timer is not None:
            timer.cancel()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("finishing a call from AMI failed", exc_info=task.exception())

