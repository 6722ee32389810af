"""Several AudioSocket processes on one address (AUDIOSOCKET_REUSE_PORT, issue 17): each call is bridged once,
by whichever server the kernel hands its connection to; without the setting a second server is refused with a
message that names it."""

from __future__ import annotations

import asyncio

import pytest

from audiosocket.server import AudioSocketServer
from tests.doubles.audiosocket_calls import seed_call
from tests.doubles.audiosocket_client import AsteriskAudioSocket


async def test_two_servers_share_one_port_and_each_call_is_bridged_once(scene, sessions, realtime):
    runtime = scene(AUDIOSOCKET_REUSE_PORT="true")
    first = AudioSocketServer(runtime, host="127.0.0.1", port=0)
    port = await first.start()
    second = AudioSocketServer(runtime, host="127.0.0.1", port=port)
    await second.start()
    calls = [await seed_call(sessions, username=f"user{n}") for n in range(8)]
    clients = [AsteriskAudioSocket(port, call.as_uuid) for call in calls]
    try:
        for client in clients:
            await client.connect()
        for n in range(len(calls)):
            await realtime.wait_for_connection(n)
        for _ in range(100):
            if len(first.bridges) + len(second.bridges) == len(calls):
                break
            await asyncio.sleep(0.05)
        bridged = sorted(b.call.call_id for b in [*first.bridges, *second.bridges])
        assert bridged == sorted(call.call_id for call in calls)
        assert first.refused == second.refused == 0
    finally:
        for client in clients:
            await client.close()
        await first.stop()
        await second.stop()


async def test_a_second_server_without_reuse_port_is_refused_with_the_setting_named(scene):
    runtime = scene()
    first = AudioSocketServer(runtime, host="127.0.0.1", port=0)
    port = await first.start()
    try:
        with pytest.raises(OSError, match="AUDIOSOCKET_REUSE_PORT"):
            await AudioSocketServer(runtime, host="127.0.0.1", port=port).start()
    finally:
        await first.stop()
