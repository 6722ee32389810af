"""Bad input from the Asterisk side and the end of a call: clean close, no crash, nothing leaked."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from db import repo
from tests.doubles.audiosocket_calls import audiosocket_server, make_runtime, seed_call
from tests.doubles.audiosocket_client import AsteriskAudioSocket


@pytest.fixture
def runtime(settings_env, engine, sessions, realtime):
    return make_runtime(settings_env, engine, sessions, realtime.base_url)


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


async def settle(server, timeout=3.0):
    for _ in range(int(timeout / 0.02)):
        if not server.bridges and not server._handlers:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(server.bridges)} bridges still running")


async def tasks_started_since(before: set[asyncio.Task], timeout=2.0) -> set[asyncio.Task]:
    """Tasks created after `before` was taken that are still alive once `timeout` has passed (a closing
    WebSocket may take a few loop turns; a leaked task stays forever)."""
    for _ in range(int(timeout / 0.02)):
        new = asyncio.all_tasks() - before
        if not new:
            break
        await asyncio.sleep(0.02)
    return new


async def steady_tasks(polls=5, timeout=3.0) -> set[asyncio.Task]:
    """The set of live tasks once it has stayed the same for `polls` turns of 20 ms (or after `timeout`)."""
    tasks, same = asyncio.all_tasks(), 0
    for _ in range(int(timeout / 0.02)):
        if same >= polls:
            break
        await asyncio.sleep(0.02)
        now = asyncio.all_tasks()
        tasks, same = now, same + 1 if now == tasks else 0
    return tasks


BAD_INPUT = {
    "truncated_frame": b"\x10\x01\x40" + bytes(100),      # then EOF in the middle of the payload
    "truncated_frame_then_reset": b"\x10\x01\x40" + bytes(100),   # then a TCP RST instead of the EOF
    "oversized_length": b"\x10\xff\xff" + bytes(64),
    "unknown_kind": b"\x42\x00\x01\x00",
    "early_eof": b"",
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_closes_cleanly_without_leaks(case, runtime, sessions, realtime):
    seeded = await seed_call(sessions)
    warm_call = await seed_call(sessions, username="warm")   # an AudioSocket UUID is good for one connection
    async with audiosocket_server(runtime) as server:
        # One call first, so that the SDK client and the DB pool exist before we count.
        warm = AsteriskAudioSocket(server.port, warm_call.as_uuid)
        await warm.connect()
        warm_model = await realtime.wait_for_connection(0)
        await warm.close()
        await settle(server)
        await asyncio.wait_for(warm_model.closed.wait(), 3)
        tasks_before = await steady_tasks()   # the warm call's last tasks (the fake model's side) have ended
        sockets_before = open_sockets()

        client = AsteriskAudioSocket(server.port, seeded.as_uuid)
        await client.connect()
        model = await realtime.wait_for_connection(1)
        client.play(b"\x01\x00" * 800, keep_sending=False)
        await asyncio.sleep(0.15)
        client.write(BAD_INPUT[case])
        if case.endswith("_reset"):
            await asyncio.sleep(0.05)   # the truncated frame is read before the reset arrives
        await client.close(reset=case.endswith("_reset"))
        await settle(server)
        await asyncio.wait_for(model.closed.wait(), 3)   # the model session was closed with the call
        await asyncio.sleep(0.1)
        assert await tasks_started_since(tasks_before) == set()
        assert open_sockets() == sockets_before
    async with sessions() as db:
        ended = [e for e in await repo.list_call_events(db, seeded.user_id, seeded.call_id)
                 if e.type == "audiosocket.ended"]
    expected = "caller_hung_up" if case == "early_eof" else "protocol_error"
    assert ended[-1].payload["reason"] == expected
    if case != "early_eof":
        assert ended[-1].payload["detail"]


async def test_unknown_uuid_is_refused_with_a_hangup_frame(runtime, realtime, caplog):
    async with audiosocket_server(runtime) as server:
        stranger = str(uuid.uuid4())
        client = AsteriskAudioSocket(server.port, stranger)
        await client.connect()
        await client.wait_hangup(timeout=3)
        await client.wait_eof(timeout=3)
        await client.close()
        await settle(server)
    assert [(f.kind, f.payload) for f in client.received] == [(0x00, b"")]
    assert server.refused == 1
    assert not realtime.connections, "no model session for a refused call"
    assert f"UUID {stranger}" in caplog.text and "matches no live call" in caplog.text


async def test_first_frame_must_be_the_uuid(runtime, realtime):
    async with audiosocket_server(runtime) as server:
        client = AsteriskAudioSocket(server.port, str(uuid.uuid4()))
        await client.connect(send_uuid=False)
        client.write(b"\x10\x01\x40" + bytes(320))
        await client.wait_eof(timeout=3)
        await client.close()
    assert server.refused == 1


async def test_server_stop_ends_live_calls_with_a_hangup_frame(runtime, sessions, realtime):
    seeded = await seed_call(sessions)
    server_cm = audiosocket_server(runtime)
    server = await server_cm.__aenter__()
    client = AsteriskAudioSocket(server.port, seeded.as_uuid)
    await client.connect()
    model = await realtime.wait_for_connection()
    await model.wait_for("response.create")
    await asyncio.wait_for(server_cm.__aexit__(None, None, None), 8)
    await client.wait_hangup(timeout=1)
    await client.close()
    assert model.closed.is_set() or await asyncio.wait_for(model.closed.wait(), 2) is True
