"""The call-state rules (ami_controller/call_events.py) read from events a real Asterisk 22 sent.

No socket and no database: the recorded AMI bytes (tests/captures) are parsed by panoramisk, as the wire does,
and fed one by one to the mapper, which answers with the changes to make. The whole path, with the database
and a real Asterisk, is in tests/test_asterisk_calls.py.
"""

from __future__ import annotations

import re

import pytest
from panoramisk.message import Message

from ami_controller.call_events import Advance, CallEventMapper, Finish, Record, SetChannel
from ami_controller.wire import header
from db.models import CallOutcome, CallStatus
from tests.doubles.captures import CAPTURES

ORIGINATE_ACTION = re.compile(r"opendeep-orig-(\d+)")


def capture_events(name: str) -> list[Message]:
    """The events of a raw AMI capture, parsed by panoramisk (replies and the banner left out).

    ami-originate-local.raw was recorded when the pre-assigned Uniqueids read `opendeep-call-<id>`; OpenDeep now
    assigns `opendeep-<id>` (call_events.call_uniqueids), so the prefix is rewritten and nothing else."""
    raw = (CAPTURES / name).read_bytes().replace(b"opendeep-call-", b"opendeep-")
    _banner, rest = raw.split(b"\r\n", 1)
    messages = [Message.from_line(part.decode()) for part in rest.split(b"\r\n\r\n") if part.strip()]
    return [message for message in messages if message is not None and "Event" in message]


def feed(mapper: CallEventMapper, events: list[Message]) -> list[object]:
    """Every change the events ask for, in order. An OriginateResponse names its call by our ActionID; in
    production the calls row holding that ActionID is looked up, here `opendeep-orig-<call id>` is read."""
    changes: list[object] = []
    for message in events:
        if header(message, "Event") == "OriginateResponse":
            match = ORIGINATE_ACTION.fullmatch(header(message, "ActionID"))
            if match:
                changes += mapper.originate_response(int(match.group(1)), message)
        else:
            changes += mapper.call_event(message)
    return changes


@pytest.fixture(scope="module")
def events() -> list[Message]:
    return capture_events("ami-originate-local.raw")


def test_the_capture_holds_both_calls(events):
    # Guard for the tests below: the parse found the events they talk about.
    names = [header(m, "Event") for m in events]
    assert names.count("OriginateResponse") == 2 and names.count("Hangup") == 4 and "DialBegin" in names


def test_an_answered_originate_sets_the_channel_answers_then_ends_after_the_grace(events):
    mapper = CallEventMapper()
    mapper.expect(42)
    changes = [c for c in feed(mapper, events) if c.call_id == 42]
    assert changes == [
        # Newchannel of the ;1 half: the channel live-call actions go to.
        SetChannel(42, "Local/101@smoke-00000000;1"),
        # OriginateResponse Success / Reason 4: recorded, and the call is answered.
        Record(42, "ami.originate_response", {"response": "Success", "reason": "4", "uniqueid": "opendeep-42"}),
        Advance(42, CallStatus.ANSWERED, None),
        # The ;1 half's Hangup (cause 16) ends it, after the grace the `h` extension gets to report DIALSTATUS.
        # No DialEnd said ANSWER, so the cause alone says FAILED; answered_wins lets the answer the database
        # holds (from the OriginateResponse above) make it a normal end.
        Finish(42, CallOutcome.FAILED, "ami.hangup", after_grace=True, answered_wins=True,
               details={"dial_status": None, "hangup_cause": 16}),
    ]
    # The ;2 half (where the dialplan runs) was seen, the ;2 Hangup asked for nothing.
    assert mapper.tracks[42].saw_dialplan_half and mapper.tracks[42].hangup_cause == 16


def test_the_originates_own_dial_of_the_local_channel_is_not_the_callee_ringing(events):
    # The Originate dials the ;1 half (DialBegin/DialEnd with only Dest* headers) and both halves go Up
    # (Newstate 6): none of it is the callee's Dial on the ;2 half, so none of it moves the call.
    mapper = CallEventMapper()
    for message in events:
        if header(message, "Event") in ("DialBegin", "DialEnd", "Newstate", "LocalBridge", "VarSet"):
            assert mapper.call_event(message) == [], message
    assert mapper.tracks[42].dial_status is None


def test_an_originate_to_a_missing_extension_fails_at_once(events):
    # Local/999@smoke does not exist: its channels get Asterisk's own Uniqueids (not ours: ignored), and the
    # OriginateResponse (Failure, Reason 0) ends the call now, since no dialplan of ours ran to report it.
    mapper = CallEventMapper()
    mapper.expect(43)
    changes = [c for c in feed(mapper, events) if c.call_id == 43]
    assert changes == [
        Record(43, "ami.originate_response", {"response": "Failure", "reason": "0", "uniqueid": "<unknown>"}),
        Finish(43, CallOutcome.FAILED, "ami.originate_response", after_grace=False),
    ]


def test_events_of_channels_that_are_not_ours_ask_for_nothing(events):
    mapper = CallEventMapper()
    strangers = [m for m in events if "opendeep-" not in header(m, "Linkedid") + header(m, "DestLinkedid")]
    assert strangers and all(mapper.call_event(m) == [] for m in strangers)
    assert mapper.tracks == {}


def test_the_callee_dial_on_the_dialplan_half_decides_the_outcome(events):
    # Our dialplan's ;2 half runs Dial(); its DialEnd says what became of the callee, and the Originate of a
    # Local channel then only reports Reason 0 (tests/test_asterisk_calls.py). Built from the capture's own
    # Hangup/OriginateResponse with the ;2 half's Dial events, as the real dialplan sends them.
    mapper = CallEventMapper()
    mapper.expect(7)
    dial = {"Privilege": "call,all", "Uniqueid": "opendeep-7-b", "Linkedid": "opendeep-7",
            "DestChannel": "PJSIP/callee-00000001", "DestLinkedid": "opendeep-7"}
    assert mapper.call_event(Message({"Event": "Newchannel", "Uniqueid": "opendeep-7-b",
                                      "Linkedid": "opendeep-7"})) == []
    assert mapper.call_event(Message({"Event": "DialBegin", **dial})) == [
        Advance(7, CallStatus.RINGING, "ami.dial_begin", {"dest_channel": "PJSIP/callee-00000001"})]
    assert mapper.call_event(Message({"Event": "DialEnd", "DialStatus": "BUSY", **dial})) == [
        Record(7, "ami.dial_end", {"dial_status": "BUSY", "dest_channel": "PJSIP/callee-00000001"})]
    failure = next(m for m in events
                   if header(m, "Event") == "OriginateResponse" and header(m, "Response") == "Failure")
    assert mapper.originate_response(7, failure)[-1] == Finish(7, CallOutcome.BUSY, "ami.originate_response",
                                                               after_grace=True)

