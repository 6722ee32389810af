"""Live event streams cannot be used to load the server: a user holds at most MAX_STREAMS_PER_USER of them (the
next GET /events is refused with 429), and all the streams of a process are fed by one database poll per interval
(per user with an open page), not one per stream.

Before, 300 SSE streams of one user each polled the database every 0.5 s: 50-100 % CPU, and a live call's
AudioSocket frame gap stretched to ~2 s (Asterisk hangs up at 2 s without a frame). The frame gap with 300 open
streams is measured in bench/bench_live_streams.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest_asyncio
from sqlalchemy import event

from db.models import Call, CallStatus
from tests.doubles.webui_client import add_user, make_runtime
from tests.test_webui_live import EventReader, ask, logged_in
from tests.test_webui_plan_csv import a_plan
from webui.app import WebComponent
from webui.live import MAX_STREAMS_PER_USER, LiveHub, live_hub
from webui.orchestrator import confirm_plan

TIMEOUT = 10.0


@pytest_asyncio.fixture
async def web(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    users = {name: await add_user(runtime, name) for name in ("alice", "bob")}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    component = WebComponent(runtime, sock=sock)
    await component.start()
    yield runtime, component, f"http://127.0.0.1:{component.port}", users
    await component.stop()


async def _wait_until(condition, timeout: float = TIMEOUT) -> None:
    async def poll():
        while not condition():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


async def test_the_eleventh_stream_of_a_user_is_refused_with_429_and_a_closed_one_frees_its_place(web):
    _, component, base_url, users = web
    alice, bob = await logged_in(base_url, "alice"), await logged_in(base_url, "bob")
    pages = [EventReader(alice) for _ in range(MAX_STREAMS_PER_USER)]
    try:
        for page in pages:
            await page.next("ready")
        refused = await alice.get("/events")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert "live pages open" in refused.text
        bobs_page = EventReader(bob)   # the cap is per user: another tenant is not affected
        await bobs_page.next("ready")
        await bobs_page.close()

        await pages.pop().close()      # a tab closes: the server notices the disconnect and frees the place
        hub = live_hub(component.app.state)
        await _wait_until(lambda: hub.stream_count(users["alice"]) < MAX_STREAMS_PER_USER)
        pages.append(EventReader(alice))
        await pages[-1].next("ready")
    finally:
        for page in pages:
            await page.close()
        await alice.aclose()
        await bob.aclose()


@contextlib.contextmanager
def sql_statements(engine):
    """Every SQL statement `engine` runs inside the block, in order."""
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)
    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_fifty_streams_of_one_user_cost_one_database_poll_per_interval_not_fifty(web):
    runtime, component, base_url, users = web
    poll_seconds = 0.2
    hub = component.app.state.live_hub = LiveHub(runtime, component.app.state.shutdown, poll_seconds=poll_seconds,
                                                 max_streams_per_user=50)
    confirmation = await confirm_plan(runtime.sessions, users["alice"], a_plan(), "k")
    async with runtime.sessions() as session:
        call = Call(user_id=users["alice"], task_id=confirmation.task_ids[0], attempt_number=1,
                    status=CallStatus.ANSWERED, dialed_number="+14155550101")
        session.add(call)
        await session.commit()
    client = await logged_in(base_url, "alice")
    pages = [EventReader(client) for _ in range(50)]
    try:
        for page in pages:
            await page.next("ready")
        with sql_statements(runtime.engine) as statements:
            window = 10 * poll_seconds
            await asyncio.sleep(window)
            polls = sum("FROM notifications" in s for s in statements)
            questions = sum("FROM feedback_requests" in s for s in statements)
            # One poll per interval for the user (the first may fall at either edge of the window), not 50.
            assert 1 <= polls <= window / poll_seconds + 2, polls
            assert questions <= window / poll_seconds + 2, questions
            assert len(statements) <= 2 * (window / poll_seconds + 2)

            # A question written by another process (DB only) reaches all 50 pages; its card is read once.
            statements.clear()
            request_id = await ask(runtime, users["alice"], call.id, "Is Tuesday 9:00 OK?", publish=False)
            cards = await asyncio.gather(*(page.next("feedback.asked") for page in pages))
            assert {card["request_id"] for card in cards} == {request_id}
            assert sum("FROM call_transcripts" in s for s in statements) == 1
        assert hub.stream_count(users["alice"]) == 50
    finally:
        for page in pages:
            await page.close()
        await client.aclose()


async def test_thirty_users_with_a_page_each_cost_the_same_two_queries_per_poll(web):
    """The poll reads every watching user's questions and notifications together: its cost does not grow with
    the number of users who have a page open."""
    runtime, component, base_url, users = web
    poll_seconds = 0.2
    component.app.state.live_hub = LiveHub(runtime, component.app.state.shutdown, poll_seconds=poll_seconds)
    names = [f"user{n:02d}" for n in range(30)]
    for name in names:
        await add_user(runtime, name)
    clients = [await logged_in(base_url, name) for name in names]
    pages = [EventReader(client) for client in clients]
    try:
        for page in pages:
            await page.next("ready")
        with sql_statements(runtime.engine) as statements:
            window = 10 * poll_seconds
            await asyncio.sleep(window)
        polls = sum("FROM notifications" in s for s in statements)
        assert 1 <= polls <= window / poll_seconds + 2, polls   # one per interval for all 30, not 30
        assert sum("FROM feedback_requests" in s for s in statements) <= window / poll_seconds + 2
    finally:
        for page in pages:
            await page.close()
        for client in clients:
            await client.aclose()
