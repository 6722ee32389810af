"""AMI events -> call state: how an event names its call, and what it means for the call.

Pure: no socket, no database, no clock. `CallEventMapper` reads one event at a time, keeps what earlier events
of the same call said (`CallTrack`), and answers with the changes to make (`SetChannel`, `Advance`, `Record`,
`Finish`); ami_controller/manager.py applies them through ami_controller/call_store.py. So the rules can be
read, and tested from events a real Asterisk sent (tests/test_ami_call_events.py), without either.

Calls are correlated without guessing: the Originate pre-assigns `ChannelId` = `opendeep-<call id>` (the ;1
half, whose Uniqueid is also the Linkedid of every channel of the call) and `OtherChannelId` =
`opendeep-<call id>-b` (the ;2 half, where the dialplan runs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ami_controller.outcomes import map_dial_status, map_originate_reason
from ami_controller.wire import header
from db.models import CallOutcome, CallStatus

CALL_UNIQUEID = re.compile(r"opendeep-(\d+)(-b)?")


def call_uniqueids(call_id: int) -> tuple[str, str]:
    """The Uniqueids the Originate pre-assigns: the ;1 half (also the Linkedid) and the ;2 half."""
    return f"opendeep-{call_id}", f"opendeep-{call_id}-b"


def originate_action_id(call_id: int) -> str:
    return f"opendeep-orig-{call_id}"


def call_id_from_uniqueid(uniqueid: str | None) -> int | None:
    match = CALL_UNIQUEID.fullmatch(uniqueid or "")
    return int(match.group(1)) if match else None


@dataclass
class CallTrack:
    """What the events told us about one call so far (rebuilt lazily after a restart)."""

    dial_status: str | None = None
    hangup_cause: int | None = None
    saw_dialplan_half: bool = False  # the ;2 channel existed, so its `h` extension reports the end too


@dataclass(frozen=True)
class SetChannel:
    """The call's ;1 half is this channel: what PlayDTMF, Redirect and Hangup act on (kept if already set)."""

    call_id: int
    channel: str


@dataclass(frozen=True)
class Advance:
    """Move the call forward to `status` (never backwards); record `event_type` (if any) either way."""

    call_id: int
    status: CallStatus
    event_type: str | None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """Record an event on the call; its status does not change."""

    call_id: int
    event_type: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Finish:
    """End the call with `outcome`. `after_grace`: first give the dialplan's `h` extension (FastAGI call-end,
    which knows DIALSTATUS) the grace period to end it. `answered_wins`: a call that was answered ends as
    ANSWERED whatever the outcome says (a hangup cause after an answer is a normal end)."""

    call_id: int
    outcome: CallOutcome
    source: str
    after_grace: bool = False
    answered_wins: bool = False
    details: dict[str, Any] = field(default_factory=dict)


Change = SetChannel | Advance | Record | Finish


class CallEventMapper:
    """The call-state rules for AMI events, one call track per call in flight."""

    def __init__(self) -> None:
        self.tracks: dict[int, CallTrack] = {}

    def expect(self, call_id: int) -> None:
        """An Originate for this call is going out: start its track afresh."""
        self.tracks[call_id] = CallTrack()

    def forget(self, call_id: int) -> None:
        """The call is finished: its track is not needed any more."""
        self.tracks.pop(call_id, None)

    def call_event(self, message: Mapping[str, Any]) -> list[Change]:
        """What a channel event (Newchannel, DialBegin, DialEnd, Newstate, Hangup) means for its call; [] for
        events of channels that are not ours. OriginateResponse goes to `originate_response` instead: it names
        its call by ActionID, which only the database can resolve."""
        name = header(message, "Event")
        call_id = call_id_from_uniqueid(header(message, "Linkedid") or header(message, "DestLinkedid"))
        if call_id is None:
            return []
        track = self.tracks.setdefault(call_id, CallTrack())
        one, two = call_uniqueids(call_id)
        uniqueid = header(message, "Uniqueid")
        # The callee's Dial() runs on the ;2 half; the ;1 half dials the AudioSocket channel and transfers.
        callee_dial = uniqueid == two
        if name == "Newchannel":
            if uniqueid == two:
                track.saw_dialplan_half = True
            elif uniqueid == one:
                # The ;1 half: what PlayDTMF, Redirect and Hangup act on (a cancelled ringing call included).
                return [SetChannel(call_id, header(message, "Channel"))]
        elif name == "DialBegin" and callee_dial:
            return [Advance(call_id, CallStatus.RINGING, "ami.dial_begin",
                            {"dest_channel": header(message, "DestChannel") or None})]
        elif name == "DialEnd" and callee_dial:
            track.dial_status = header(message, "DialStatus") or None
            payload = {"dial_status": track.dial_status, "dest_channel": header(message, "DestChannel") or None}
            if track.dial_status == "ANSWER":
                return [Advance(call_id, CallStatus.ANSWERED, "ami.dial_end", payload)]
            return [Record(call_id, "ami.dial_end", payload)]
        elif (name == "Newstate" and header(message, "ChannelState") == "5"
              and not header(message, "Channel").startswith("Local/")):
            return [Advance(call_id, CallStatus.RINGING, "ami.ringing",
                            {"channel": header(message, "Channel") or None})]
        elif name == "Hangup" and uniqueid == one:
            # The ;1 half goes last: the call is over as far as Asterisk is concerned.
            track.hangup_cause = _int_or_none(header(message, "Cause"))
            return [Finish(call_id, map_dial_status(track.dial_status, track.hangup_cause), "ami.hangup",
                           after_grace=True, answered_wins=True,
                           details={"dial_status": track.dial_status, "hangup_cause": track.hangup_cause})]
        return []

    def originate_response(self, call_id: int, message: Mapping[str, Any]) -> list[Change]:
        """What our Originate's `Event: OriginateResponse` means for call `call_id`."""
        track = self.tracks.setdefault(call_id, CallTrack())
        response, reason = header(message, "Response"), header(message, "Reason")
        changes: list[Change] = [Record(call_id, "ami.originate_response", {
            "response": response, "reason": reason, "uniqueid": header(message, "Uniqueid") or None})]
        outcome = map_originate_reason(_int_or_none(reason), response)
        if outcome is CallOutcome.ANSWERED:
            # Success: the ;1 half is up, which it is only once the callee answered (nothing in the shipped
            # dialplan answers before). The call's end comes from the `h` extension and the Hangup event.
            return [*changes, Advance(call_id, CallStatus.ANSWERED, None)]
        if track.dial_status:
            # The ;2 half's DialEnd said what became of the callee; the Originate of a Local channel only says
            # Reason 0 or 1 whatever it was (tests/test_asterisk_calls.py, real Asterisk 22).
            outcome = map_dial_status(track.dial_status, None)
        # The dialplan ran: its `h` extension reports DIALSTATUS and HANGUPCAUSE; give it the first word.
        return [*changes, Finish(call_id, outcome, "ami.originate_response", after_grace=track.saw_dialplan_half)]


def _int_or_none(raw: Any) -> int | None:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None
