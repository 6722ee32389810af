"""Fuzzing what the AMI connection reads: the line framing (our `_Protocol` on panoramisk's AMIProtocol) and
every event that reaches `AmiController.handle_event`.

Framing: any bytes, cut anywhere, never raise out of `data_received` (an exception there makes asyncio close
the connection); once a message ends (a blank line), the next well-formed event is delivered.

Events, over a real socket from the FakeAmi to a real AmiController and database: whatever headers arrive,
repeated or missing, no handler fails, the connection stays up, a call's status only moves forward, an ended
call has its outcome, and no event ever dials anybody.
"""

from __future__ import annotations

import asyncio
import logging

from hypothesis import example, given
from hypothesis import strategies as st
from panoramisk.message import Message
from sqlalchemy import select

from ami_controller.manager import AmiController, call_uniqueids, originate_action_id
from ami_controller.wire import _PanoramiskManager, _Protocol
from db import repo
from db.engine import create_engine, session_factory
from db.migrate import upgrade
from db.models import Call, CallEvent, CallStatus, Task, TaskStatus
from db.types import utcnow
from opendeep.settings import load_settings
from tests.doubles.ami_helpers import ami_settings, eventually
from tests.doubles.fake_ami import FakeAmi
from tests.doubles.reliability_fuzz import FUZZ, FUZZ_SOCKETS, chunked, cuts, run_bounded

SENTINEL = b"Event: Newstate\r\nPrivilege: call,all\r\nUniqueid: fuzz-sentinel\r\n\r\n"
ORDER = [CallStatus.CREATED, CallStatus.ORIGINATING, CallStatus.RINGING, CallStatus.ANSWERED, CallStatus.ENDED]

# ---------------------------------------------------------------- strategies: what could arrive

value_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30)


def header(name: str, *typical: str) -> st.SearchStrategy[tuple[str, str]]:
    return st.tuples(st.just(name), st.one_of(st.sampled_from(typical), value_text) if typical else value_text)


# Stand-ins for the call's own identifiers, filled in per example (the strategy must not depend on the DB).
ONE, TWO, ACTION = "\u00a7one", "\u00a7two", "\u00a7action"


def event_headers() -> st.SearchStrategy[list[tuple[str, str]]]:
    """The headers of one event about the example's call (or about nobody), in any order, some repeated."""
    ids = (ONE, TWO, "opendeep-999999", "1717000000.42", "")
    return st.tuples(
        header("Event", "OriginateResponse", "Newchannel", "Newstate", "DialBegin", "DialEnd", "Hangup",
               "HangupRequest", "VarSet", "LocalBridge"),
        st.lists(st.one_of(
            header("Linkedid", *ids), header("DestLinkedid", *ids), header("Uniqueid", *ids),
            header("Channel", "", "Local/+14155550123@opendeep-outbound-00000001;1", "PJSIP/opendeep-trunk-0001"),
            header("DestChannel", "PJSIP/opendeep-trunk-0001", ""),
            header("ChannelState", "0", "4", "5", "6"),
            header("DialStatus", "ANSWER", "BUSY", "NOANSWER", "CONGESTION", "CHANUNAVAIL", "CANCEL", ""),
            header("Cause", "16", "17", "19", "21", "34", "0", "-1", "x"),
            header("ActionID", ACTION, "opendeep-orig-999999"),
            header("Response", "Success", "Failure", "Error"),
            header("Reason", "0", "1", "3", "4", "5", "8", "99"),
            st.tuples(st.from_regex(r"[A-Za-z-]{1,12}", fullmatch=True), value_text),
        ), max_size=12),
    ).map(lambda parts: [parts[0], *parts[1]])


def encode_message(pairs: list[tuple[str, str]]) -> bytes:
    return ("".join(f"{key}: {value}\r\n" for key, value in pairs) + "\r\n").encode("utf-8")


event_stream = st.lists(st.one_of(event_headers().map(encode_message), st.binary(max_size=48)),
                        min_size=1, max_size=8).map(b"".join)


def for_call(stream: bytes, call_id: int) -> bytes:
    one, two = call_uniqueids(call_id)
    for token, value in ((ONE, one), (TWO, two), (ACTION, originate_action_id(call_id))):
        stream = stream.replace(token.encode(), value.encode())
    return stream


# ---------------------------------------------------------------- framing


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=2048), event_stream.map(lambda s: for_call(s, 7))), cuts)
# Found by this test: a repeated Event or ActionID header raised out of data_received (connection closed).
@example(b"Event: Newstate\r\nEvent: Hangup\r\n\r\n", [])
@example(b"Response: Success\r\nActionID: 1\r\nActionID: 2\r\n\r\n", [])
def test_any_bytes_in_any_chunking_never_break_the_framing(data, cut_at):
    async def feed() -> list[Message]:
        delivered: list[Message] = []
        manager = _PanoramiskManager(on_lost=lambda _exc: None, loop=asyncio.get_running_loop())
        manager.register_event("*", lambda _manager, message: delivered.append(message))
        protocol = _Protocol()
        protocol.connection_made(_Transport())
        protocol.factory = manager
        for piece in [b"Asterisk Call Manager/11.0.0\r\n", *chunked(data, cut_at), b"\r\n\r\n", SENTINEL]:
            protocol.data_received(piece)
        return delivered

    with asyncio.Runner() as runner:
        delivered = run_bounded(runner, feed(), timeout=2.0)
    assert delivered and delivered[-1].get("Uniqueid") == "fuzz-sentinel"


# ---------------------------------------------------------------- events, over a real socket


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_any_event_stream_moves_calls_only_forward_and_dials_nobody(tmp_path):
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}"
    settings = load_settings({"DATABASE_URL": database_url, "SECRET_KEY": "x", "RETRY_JITTER": "0"}, dotenv=None)
    errors = _Errors()
    packages = ("ami_controller", "db", "opendeep")   # each module logs under its own name (__name__)
    for package in packages:
        logging.getLogger(package).addHandler(errors)
    with asyncio.Runner() as runner:
        runner.run(upgrade(database_url))
        engine = create_engine(database_url)
        sessions = session_factory(engine)
        fake = FakeAmi()
        port = runner.run(fake.start())
        controller = AmiController(ami_settings(settings, port), sessions, None, end_grace_seconds=0.0)

        async def setup() -> tuple[int, int, int]:
            await controller.start()
            await controller.wait_connected(5)
            async with sessions() as session, session.begin():
                user = await repo.create_user(session, "fuzz", "x")
                campaign = await repo.create_campaign(session, user.id, name="fuzz")
                probe = await _call(session, user.id, campaign.id, CallStatus.ORIGINATING)
            return user.id, campaign.id, probe

        user_id, campaign_id, probe = runner.run(setup())

        async def one_example(status: CallStatus, stream: bytes) -> None:
            assert fake.logins == 1 and controller.connected, "an earlier example dropped the connection"
            async with sessions() as session, session.begin():
                call_id = await _call(session, user_id, campaign_id, status)
            data = for_call(stream, call_id)
            async with sessions() as session:
                task_before = await session.scalar(select(Task).join(Call).where(Call.id == call_id))
                seen = await _probe_events(session, probe)
            fake.emit_raw(data + b"\r\n\r\n")
            # The probe's OriginateResponse comes after everything above: once it is handled, so is the rest.
            fake.emit([("Event", "OriginateResponse"), ("Privilege", "call,all"),
                       ("ActionID", originate_action_id(probe)), ("Response", "Success"), ("Reason", "4")])

            async def probe_handled() -> bool:
                async with sessions() as session:
                    return await _probe_events(session, probe) > seen
            await eventually(probe_handled, timeout=3)
            # A finish the events deferred (the grace for the `h` extension) has run.
            await eventually(lambda: call_id not in controller._finish_timers, timeout=3)
            async with sessions() as session:
                call = await session.get(Call, call_id)
                task = await session.get(Task, call.task_id)
            assert ORDER.index(call.status) >= ORDER.index(status), (status, call.status, data)
            if call.status is CallStatus.ENDED and status is not CallStatus.ENDED:
                assert call.outcome is not None and call.ended_at is not None
                assert task.status is not TaskStatus.QUEUED
            assert task.attempt_count == task_before.attempt_count

        @FUZZ_SOCKETS
        @given(st.sampled_from(ORDER), event_stream)
        def events(status, stream):
            run_bounded(runner, one_example(status, stream))
            assert not errors.records, errors.records[0].getMessage()
            assert fake.logins == 1 and controller.connected   # no input dropped the connection

        try:
            events()
        finally:
            for package in packages:
                logging.getLogger(package).removeHandler(errors)
            runner.run(controller.stop())
            runner.run(fake.stop())
            runner.run(engine.dispose())
    assert fake.actions_named("Originate") == []   # events never dial


async def _call(session, user_id: int, campaign_id: int, status: CallStatus) -> int:
    task = await repo.add_task(session, user_id, campaign_id, target_name="callee", phone_number="+14155550123")
    task.status = TaskStatus.IN_PROGRESS
    task.attempt_count = 1
    call = Call(user_id=user_id, task_id=task.id, attempt_number=1, status=status, dialed_number="+14155550123",
                answered_at=utcnow() if status in (CallStatus.ANSWERED, CallStatus.ENDED) else None)
    session.add(call)
    await session.flush()
    call.ami_action_id = originate_action_id(call.id)
    return call.id


async def _probe_events(session, probe: int) -> int:
    rows = await session.scalars(select(CallEvent.id).where(CallEvent.call_id == probe))
    return len(rows.all())
