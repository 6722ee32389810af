"""The model WebSocket's per-frame path (audiosocket/model_socket.py) against a real `websockets` server: what
we write synchronously is valid RFC 6455 for it, and every message it sends reaches the callback whole, in
order, including fragmented ones and those sent before anyone listened."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from audiosocket.model_socket import ModelWebSocket


async def test_messages_reach_the_callback_whole_and_in_order_and_our_frames_are_valid():
    received_by_server: list[str] = []
    go_on = asyncio.Event()

    async def handler(websocket):
        await websocket.send('{"type":"session.created"}')           # before the client listens
        await go_on.wait()
        await websocket.send(['{"type":"frag', 'mented","n":', '1}'])   # one message in three frames
        async for message in websocket:
            received_by_server.append(message)
            await websocket.send(message)                              # echo
            if len(received_by_server) == 3:
                break

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", create_connection=ModelWebSocket) as ws:
            assert isinstance(ws, ModelWebSocket)
            got: list[bytes] = []
            lost: list[BaseException | None] = []
            await asyncio.sleep(0.1)   # session.created arrives with nobody listening yet
            assert ws.open
            ws.deliver_to(got.append, lost.append)
            go_on.set()
            small, medium, large = b'{"a":1}', json.dumps({"b": "x" * 300}).encode(), \
                json.dumps({"c": "y" * 70000}).encode()   # 7-bit, 16-bit and 64-bit payload lengths
            for text in (small, medium, large):
                ws.send_now(text)
            for _ in range(200):
                if len(got) >= 5:
                    break
                await asyncio.sleep(0.01)
            assert got == [b'{"type":"session.created"}', b'{"type":"fragmented","n":1}', small, medium, large]
            assert received_by_server == [small.decode(), medium.decode(), large.decode()]
            await asyncio.wait_for(ws.wait_closed(), 5)   # the server ended the session
            assert not ws.open
        assert len(lost) == 1   # the close reached on_lost once


async def test_a_model_that_stops_reading_is_lost_instead_of_buffering_without_bound():
    stop = asyncio.Event()

    async def never_reads(websocket):
        await stop.wait()

    async with serve(never_reads, "127.0.0.1", 0, max_queue=1, max_size=None,
                     close_timeout=0.5) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", create_connection=ModelWebSocket,
                           close_timeout=0.5) as ws:
            chunk = b'{"audio":"' + b"A" * 65536 + b'"}'
            try:
                with pytest.raises(OSError, match="has not read"):
                    for _ in range(1000):   # 64 MiB at most: far beyond the kernel's buffers and our limit
                        ws.send_now(chunk)
                        await asyncio.sleep(0)
            finally:
                stop.set()
