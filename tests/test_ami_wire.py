"""The AMI wire: the fake is byte-faithful to the Asterisk 22 capture, and what we send arrives as Asterisk
needs it (several `Variable:` headers, one PlayDTMF per digit, no header injection)."""

from __future__ import annotations

import asyncio
import re

import pytest
from panoramisk import Manager

from ami_controller.manager import AmiController, AmiError, AmiNotConnected, AmiRefused
from ami_controller.wire import WireAction
from db.models import Call
from tests.doubles.ami_helpers import ami_settings, eventually
from tests.doubles.captures import CAPTURES
from tests.doubles.fake_ami import FakeAmi, pairs_all, pairs_get

RAW = (CAPTURES / "ami-originate-local.raw").read_bytes()


def capture_messages() -> list[bytes]:
    """The capture split into messages (each with its blank line), banner first."""
    banner, rest = RAW.split(b"\r\n", 1)
    return [banner + b"\r\n"] + [part + b"\r\n\r\n" for part in rest.split(b"\r\n\r\n") if part]


async def read_messages(reader: asyncio.StreamReader, count: int, timeout: float = 5.0) -> list[bytes]:
    messages = []
    for _ in range(count):
        messages.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout))
    return messages


@pytest.fixture
async def fake():
    fake = FakeAmi(username="opendeep", secret="secret", hold_seconds=0.2)
    await fake.start()
    yield fake
    await fake.stop()


async def test_fake_replays_the_captured_originate_byte_for_byte(fake):
    fake.script_number("101", "self_answer")   # the capture's Local/101@smoke answers by itself
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    writer.write(b"Action: Login\r\nActionID: login-1\r\nUsername: opendeep\r\nSecret: secret\r\n"
                 b"Events: call,agi,dialplan\r\n\r\n")
    banner = await asyncio.wait_for(reader.readline(), 5)
    expected = capture_messages()
    assert banner == expected[0] == b"Asterisk Call Manager/11.0.0\r\n"
    assert (await read_messages(reader, 1))[0] == expected[1]   # Authentication accepted
    # The Originate that produced the capture (its variables in the order the VarSet events reveal).
    writer.write(b"Action: Originate\r\nActionID: opendeep-orig-42\r\nChannel: Local/101@smoke/n\r\n"
                 b"ChannelId: opendeep-call-42\r\nOtherChannelId: opendeep-call-42-b\r\n"
                 b"Context: smoke-driver\r\nExten: 200\r\nPriority: 1\r\nCallerID: \"OpenDeep\" <5551234>\r\n"
                 b"Async: true\r\nVariable: OPENDEEP_CALL_ID=42\r\nVariable: OPENDEEP_TASK_ID=7\r\n"
                 b"Variable: OPENDEEP_USER_ID=3\r\nVariable: OPENDEEP_NUMBER=+14155550123\r\n\r\n")
    emitted = {"Newchannel", "VarSet", "LocalBridge", "DialBegin", "Newstate", "DialEnd", "OriginateResponse"}
    captured = [message for message in expected[2:]
                if message.startswith(b"Response:") or message.split(b"\r\n", 1)[0][7:].decode() in emitted]
    end = next(i for i, message in enumerate(captured) if message.startswith(b"Event: OriginateResponse"))
    captured = captured[: end + 1]
    got = await read_messages(reader, len(captured))
    for mine, real in zip(got, captured, strict=True):
        assert mine == real
    writer.close()


async def test_fake_replays_the_captured_failing_originate(fake):
    """`Local/999@smoke`: no such extension -> Cause 0, OriginateResponse Failure, Reason 0, <unknown>."""
    fake.script_number("999", "fail")
    fake._channel_seq = 1    # the capture's failing Originate was the second Local channel of that Asterisk
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    writer.write(b"Action: Login\r\nActionID: login-1\r\nUsername: opendeep\r\nSecret: secret\r\n"
                 b"Events: call,agi,dialplan\r\n\r\n")
    await reader.readline()
    await read_messages(reader, 1)
    writer.write(b"Action: Originate\r\nActionID: opendeep-orig-43\r\nChannel: Local/999@smoke\r\n"
                 b"Application: Wait\r\nData: 1\r\nAsync: true\r\n\r\n")
    expected = capture_messages()
    start = expected.index(b"Response: Success\r\nActionID: opendeep-orig-43\r\n"
                           b"Message: Originate successfully queued\r\n\r\n")
    captured = [m for m in expected[start:] if not m.startswith((b"Event: Newexten", b"Response: Goodbye"))]
    got = await read_messages(reader, len(captured))

    def generic(message: bytes) -> bytes:   # Asterisk's own Uniqueids differ per run
        return re.sub(rb"(Uniqueid|Linkedid): \d+\.\d+", rb"\1: N", message)

    assert [generic(m) for m in got] == [generic(m) for m in captured]
    writer.close()


async def test_panoramisk_alone_swallows_the_originate_response(fake):
    """Why we do not use panoramisk's plain send_action for Originate: with `Async: true` its future waits
    for the OriginateResponse (same ActionID) and that event never reaches a registered handler."""
    manager = Manager(host="127.0.0.1", port=fake.port, username="opendeep", secret="secret", events="call",
                      loop=asyncio.get_running_loop())
    seen = []
    manager.register_event("OriginateResponse", lambda _m, event: seen.append(event))
    await manager.connect()
    await asyncio.wait_for(manager.authenticated_future, 5)
    future = manager.send_action({"Action": "Originate", "ActionID": "plain-1",
                                  "Channel": "Local/100@opendeep-outbound/n", "Context": "opendeep-connected",
                                  "Exten": "s", "Priority": "1", "Async": "true",
                                  "Variable": ["OPENDEEP_CALL_ID=1", "OPENDEEP_TASK_ID=2"]})
    sent = await fake.wait_for_action("Originate")
    # panoramisk 1.4 does write a list as repeated headers...
    assert pairs_all(sent, "Variable") == ["OPENDEEP_CALL_ID=1", "OPENDEEP_TASK_ID=2"]
    replies = await asyncio.wait_for(future, 5)
    # ...but the "queued" ack alone does not resolve it: the OriginateResponse is folded into the reply.
    assert [reply.get("Event") or reply.get("Response") for reply in replies] == ["Success", "OriginateResponse"]
    assert seen == []
    manager.close()


async def test_originate_sends_each_variable_as_its_own_header(fake, settings, sessions):
    controller = AmiController(ami_settings(settings, fake.port, caller_id='"Acme" <+15551234>'), sessions, None)
    await controller.start()
    try:
        await controller.wait_connected(5)
        call = Call(id=42, user_id=3, task_id=7, attempt_number=1, dialed_number="+14155550123")
        action_id = await controller.originate(call)
        sent = await fake.wait_for_action("Originate")
    finally:
        await controller.stop()
    assert action_id == "opendeep-orig-42" == pairs_get(sent, "ActionID")
    assert sent[0] == ("Action", "Originate")
    assert pairs_get(sent, "Channel") == "Local/+14155550123@opendeep-outbound/n"
    assert (pairs_get(sent, "ChannelId"), pairs_get(sent, "OtherChannelId")) == ("opendeep-42", "opendeep-42-b")
    assert (pairs_get(sent, "Context"), pairs_get(sent, "Exten"), pairs_get(sent, "Priority")) == \
        ("opendeep-connected", "s", "1")
    assert pairs_get(sent, "Async") == "true"
    # Ring time plus a margin for call-start: Dial's own timeout, not the Originate's, ends an unanswered call.
    assert pairs_get(sent, "Timeout") == str((settings.originate_timeout_seconds + 15) * 1000)
    assert pairs_get(sent, "CallerID") == '"Acme" <+15551234>'
    assert pairs_all(sent, "Variable") == ["OPENDEEP_CALL_ID=42", "OPENDEEP_TASK_ID=7", "OPENDEEP_USER_ID=3",
                                           "OPENDEEP_NUMBER=+14155550123"]


async def test_live_call_commands_reach_asterisk(fake, settings, sessions):
    controller = AmiController(ami_settings(settings, fake.port), sessions, None)
    await controller.start()
    try:
        await controller.wait_connected(5)
        await controller.play_dtmf("PJSIP/trunk-00000001", "12#")
        digits = [await fake.wait_for_action("PlayDTMF") for _ in range(3)]
        assert [(pairs_get(a, "Channel"), pairs_get(a, "Digit")) for a in digits] == \
            [("PJSIP/trunk-00000001", "1"), ("PJSIP/trunk-00000001", "2"), ("PJSIP/trunk-00000001", "#")]
        await controller.transfer("PJSIP/trunk-00000001")   # a transfer's Redirect names no number
        redirect = await fake.wait_for_action("Redirect")
        assert [pairs_get(redirect, h) for h in ("Channel", "Context", "Exten", "Priority")] == \
            ["PJSIP/trunk-00000001", "opendeep-transfer", "s", "1"]
        with pytest.raises(AmiRefused, match="No such channel"):
            await controller.hangup("PJSIP/gone-00000009")
        with pytest.raises(AmiError, match="DTMF"):
            await controller.play_dtmf("PJSIP/trunk-00000001", "1x")
    finally:
        await controller.stop()
    with pytest.raises(AmiNotConnected, match="not connected to Asterisk AMI at 127.0.0.1"):
        await controller.hangup("PJSIP/trunk-00000001")



async def test_each_connection_numbers_its_own_action_ids(fake, settings, sessions):
    # The ActionID counter belongs to the connection (Asterisk matches replies per session), not to the module:
    # a second connection in the same process starts at 1 whatever the first one sent.
    first = AmiController(ami_settings(settings, fake.port), sessions, None)
    second = AmiController(ami_settings(settings, fake.port), sessions, None, action_only=True)
    for controller in (first, second):
        await controller.start()
    try:
        await first.wait_connected(5)
        await second.wait_connected(5)
        await first.play_dtmf("PJSIP/trunk-00000001", "12")
        await second.play_dtmf("PJSIP/trunk-00000002", "3")
        await eventually(lambda: len(fake.actions_named("PlayDTMF")) == 3)
        assert [(pairs_get(a, "Channel"), pairs_get(a, "ActionID")) for a in fake.actions_named("PlayDTMF")] == [
            ("PJSIP/trunk-00000001", "opendeep-dtmf-1"), ("PJSIP/trunk-00000001", "opendeep-dtmf-2"),
            ("PJSIP/trunk-00000002", "opendeep-dtmf-1")]
    finally:
        for controller in (first, second):
            await controller.stop()

def test_header_injection_is_refused():
    with pytest.raises(AmiError, match="line breaks"):
        WireAction([("Action", "Hangup"), ("Channel", "x\r\nAction: Originate")])


async def test_wrong_secret_is_reported_and_never_connects(fake, settings, sessions, caplog):
    controller = AmiController(ami_settings(settings, fake.port, ami_secret="wrong"), sessions, None)
    await controller.start()
    try:
        await eventually(lambda: "AMI login refused for user 'opendeep'" in caplog.text)
        assert not controller.connected
        assert fake.logins == 0
    finally:
        await controller.stop()


async def test_waits_for_asterisk_then_connects_when_it_comes_up(settings, sessions, caplog):
    fake = FakeAmi()
    port = await fake.start()
    await fake.stop()           # the port is free again: Asterisk is "down"
    controller = AmiController(ami_settings(settings, port), sessions, None)
    await controller.start()
    try:
        await eventually(lambda: f"waiting for Asterisk AMI at 127.0.0.1:{port}" in caplog.text)
        assert not controller.connected
        await fake.start(port=port)
        await controller.wait_connected(5)
        assert controller.connected and fake.logins == 1
        # An Asterisk restart: the controller notices, logs in again and re-syncs.
        await fake.drop_connections()
        await eventually(lambda: fake.logins == 2 and controller.connected)
        assert len(fake.actions_named("CoreShowChannels")) == 2
    finally:
        await controller.stop()
        await fake.stop()


async def test_an_asterisk_that_closes_before_answering_login_is_retried_without_a_traceback(settings, sessions,
                                                                                              caplog):
    """Seen on the real Asterisk 22 while it restarts: it accepts the connection, sends its banner, reads Login
    and closes. panoramisk's login callback raised then, and asyncio logged 'Exception in callback'."""
    logins = 0

    async def booting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal logins
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        await reader.readuntil(b"\r\n\r\n")
        logins += 1
        writer.close()

    server = await asyncio.start_server(booting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    controller = AmiController(ami_settings(settings, port), sessions, None)
    await controller.start()
    try:
        await eventually(lambda: logins >= 2, 10, what="a second login attempt")
        assert not controller.connected
        assert "closed before Asterisk answered Login" in caplog.text
        assert "Exception in callback" not in caplog.text and "Traceback" not in caplog.text
    finally:
        await controller.stop()
        server.close()
