"""The web port against clients that hold connections: one that never sends a request, one that sends its
headers a line at a time, one that sends its body a byte at a time, and a crowd of idle sockets. Each is a raw
socket against the real uvicorn server (`WebComponent`), with short limits injected through the settings.

Before: every one of them was held for as long as the client liked (uvicorn's keep-alive timer runs only
between requests and every byte received stops it), and 1,100 idle sockets used up the process's 1024 file
descriptors, starving FastAGI and AudioSocket.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest_asyncio

from tests.doubles.webui_client import make_runtime
from webui.app import WebComponent

HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 1.0
SLACK = 1.0   # scheduling on a busy test machine


@pytest_asyncio.fixture
async def web_server(settings_env, engine, sessions):
    """`start(**env)` -> a running WebComponent on a free loopback port."""
    started: list[WebComponent] = []

    async def start(**env: str) -> WebComponent:
        env = {"WEB_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT), "WEB_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
               **env}
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        component = WebComponent(make_runtime(settings_env, engine, sessions, **env), sock=sock)
        await component.start()
        started.append(component)
        return component

    yield start
    for component in started:
        await component.stop()


async def until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, drip: bytes = b"",
                       every: float = 0.1, limit: float = 10.0) -> tuple[bytes, float]:
    """Read (sending `drip` every `every` s, like a slow client) until the server closes; (what it said, when)."""
    started = time.monotonic()
    received = b""
    while time.monotonic() - started < limit:
        if drip:
            try:
                writer.write(drip)
                await writer.drain()
            except ConnectionError:
                break
        try:
            chunk = await asyncio.wait_for(reader.read(65536), every)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


async def test_a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout(web_server):
    web = await web_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    said, after = await until_closed(reader, writer)
    writer.close()
    assert said == b"" and HEADER_TIMEOUT - 0.1 <= after < HEADER_TIMEOUT + SLACK, after


async def test_headers_sent_a_line_at_a_time_get_408_within_the_header_timeout(web_server):
    web = await web_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    writer.write(b"GET /login HTTP/1.1\r\nHost: opendeep\r\n")
    said, after = await until_closed(reader, writer, drip=b"X-Slow: 1\r\n")
    writer.close()
    assert said.startswith(b"HTTP/1.1 408 "), said
    assert after < HEADER_TIMEOUT + SLACK, after


async def test_a_body_sent_a_byte_at_a_time_gets_408_within_the_body_timeout(web_server):
    web = await web_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    # The login form: the CSRF check reads the whole form, so the app waits for this body.
    writer.write(b"POST /login HTTP/1.1\r\nHost: opendeep\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 100000\r\n\r\n")
    said, after = await until_closed(reader, writer, drip=b"a")
    writer.close()
    assert said.startswith(b"HTTP/1.1 408 "), said
    assert BODY_TIMEOUT - 0.1 <= after < BODY_TIMEOUT + SLACK, after


async def test_a_body_still_dripping_after_the_answer_is_cut_off_at_the_body_timeout(web_server):
    web = await web_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    writer.write(b"POST /nowhere HTTP/1.1\r\nHost: opendeep\r\nContent-Length: 100000\r\n\r\n")
    said, after = await until_closed(reader, writer, drip=b"a")
    writer.close()
    assert said.startswith(b"HTTP/1.1 404 "), said   # answered at once, but the client keeps the socket busy
    assert after < BODY_TIMEOUT + SLACK, after


async def test_a_normal_request_succeeds_while_more_idle_connections_than_the_limit_are_open(web_server):
    web = await web_server(WEB_MAX_CONNECTIONS="20", WEB_HEADER_TIMEOUT_SECONDS="30")
    idle = [await asyncio.open_connection("127.0.0.1", web.port) for _ in range(50)]
    await asyncio.sleep(0.2)
    assert len(web._server.server_state.connections) <= 20
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web.port}", timeout=5) as browser:
        for _ in range(3):
            page = await browser.get("/login")
            assert page.status_code == 200 and "Log in" in page.text
    # The oldest idle sockets made room: the server closed them without a word.
    closed = 0
    for reader, writer in idle:
        try:
            closed += await asyncio.wait_for(reader.read(1), 0.05) == b""
        except TimeoutError:
            pass
        writer.close()
    assert closed >= 30


async def test_when_every_connection_is_busy_a_new_one_gets_503(web_server):
    web = await web_server(WEB_MAX_CONNECTIONS="3", WEB_BODY_TIMEOUT_SECONDS="30")
    busy = []
    for _ in range(3):   # three uploads in progress: none of them can be dropped to make room
        reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
        writer.write(b"POST /login HTTP/1.1\r\nHost: opendeep\r\nContent-Type: application/x-www-form-urlencoded"
                     b"\r\nContent-Length: 1000\r\n\r\nusername=")
        busy.append((reader, writer))
    await asyncio.sleep(0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
    said, _ = await until_closed(reader, writer, limit=5)
    writer.close()
    assert said.startswith(b"HTTP/1.1 503 "), said
    for _, other in busy:
        other.close()
