"""Live pages over a real socket: Server-Sent Events from the hub and the database, HITL questions on every open
page of the user (and nobody else's), answers going back to the call, questions that time out visibly."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import timedelta

import httpx
import pytest_asyncio

from db import repo
from db.models import Call, CallStatus, FeedbackStatus, Speaker
from db.types import utcnow
from tests.doubles.webui_client import PASSWORD, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import WebComponent
from webui.orchestrator import confirm_plan

TIMEOUT = 5.0


class EventReader:
    """One open page's event stream."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async with self.client.stream("GET", "/events", timeout=None) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    await self.queue.put((kind, json.loads(line[6:])))
                    kind = None

    async def next(self, kind: str, timeout: float = TIMEOUT) -> dict:
        async def wait():
            while True:
                got_kind, payload = await self.queue.get()
                if got_kind == kind:
                    return payload
        return await asyncio.wait_for(wait(), timeout)

    async def close(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass


async def logged_in(base_url: str, username: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT)
    csrf = (await client.get("/api/session")).json()["csrf_token"]
    response = await client.post("/api/login", json={"username": username, "password": PASSWORD},
                                 headers={"x-csrf-token": csrf})
    assert response.status_code == 200
    client.headers["x-csrf-token"] = response.json()["csrf_token"]
    return client


@pytest_asyncio.fixture
async def live(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)
    alice, bob = await add_user(runtime, "alice"), await add_user(runtime, "bob")
    confirmation = await confirm_plan(sessions, alice, a_plan(), "k")
    task_id = confirmation.task_ids[0]
    async with sessions() as session:
        call = Call(user_id=alice, task_id=task_id, attempt_number=1, status=CallStatus.ANSWERED,
                    dialed_number="+14155550101", channel="PJSIP/trunk-00000001")
        session.add(call)
        await session.flush()
        await repo.add_transcript(session, alice, call.id, Speaker.AGENT, "Hi, I'm calling for Alice.", 0)
        await repo.add_transcript(session, alice, call.id, Speaker.CALLEE, "We have Tuesday at 9.", 2100)
        await session.commit()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    component = WebComponent(runtime, sock=sock)
    await component.start()
    base_url = f"http://127.0.0.1:{component.port}"
    yield runtime, component, base_url, {"alice": alice, "bob": bob, "call": call.id, "task": task_id}
    await component.stop()


async def ask(runtime, user_id, call_id, question, *, publish=True, timeout_in=60.0) -> int:
    """What the call AI does: a feedback_requests row, then the hub event."""
    async with runtime.sessions() as session:
        request = await repo.create_feedback_request(session, user_id, call_id, question,
                                                     timeout_at=utcnow() + timedelta(seconds=timeout_in))
        await session.commit()
    if publish:
        runtime.events.publish(user_id, "feedback.asked", {"request_id": request.id, "call_id": call_id,
                                                           "task_id": 0, "question": question})
    return request.id


async def test_a_question_reaches_every_open_page_of_its_user_with_context_and_the_answer_goes_back(live):
    runtime, _, base_url, ids = live
    alice_a, alice_b, bob = (await logged_in(base_url, "alice"), await logged_in(base_url, "alice"),
                             await logged_in(base_url, "bob"))
    pages = [EventReader(alice_a), EventReader(alice_b)]
    bob_page = EventReader(bob)
    try:
        for page in [*pages, bob_page]:
            await page.next("ready")
        request_id = await ask(runtime, ids["alice"], ids["call"], "Is Tuesday 9:00 OK?")
        cards = [await page.next("feedback.asked") for page in pages]
        for card in cards:
            assert card["request_id"] == request_id and card["question"] == "Is Tuesday 9:00 OK?"
            assert card["task"]["target_name"] == "Bright Smile" and card["task"]["objective"] == "Book a cleaning"
            assert [line["text"] for line in card["transcript"]] == ["Hi, I'm calling for Alice.",
                                                                      "We have Tuesday at 9."]
        async with runtime.events.subscribe(ids["alice"]) as call_side:
            answered = await alice_a.post(f"/api/feedback/{request_id}/answer", json={"answer": "Yes, book it"})
            assert answered.status_code == 200 and answered.json()["status"] == "answered"
            event = await asyncio.wait_for(call_side.get(), TIMEOUT)
        assert (event.kind, event.payload) == ("feedback.answered", {"request_id": request_id,
                                                                     "answer": "Yes, book it"})
        for page in pages:
            assert (await page.next("feedback.answered"))["request_id"] == request_id
        async with runtime.sessions() as session:
            row = await repo.get_feedback_request(session, ids["alice"], request_id)
        assert (row.status, row.answer) == (FeedbackStatus.ANSWERED, "Yes, book it")
        again = await alice_b.post(f"/api/feedback/{request_id}/answer", json={"answer": "No"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "not_pending"
        # Bob's page got nothing of Alice's: the next thing on it is an event published to Bob after all of the
        # above (the hub delivers one user's events in order).
        runtime.events.publish(ids["bob"], "test.marker", {"after": request_id})
        assert await asyncio.wait_for(bob_page.queue.get(), TIMEOUT) == ("test.marker", {"after": request_id})
    finally:
        for page in [*pages, bob_page]:
            await page.close()
        for client in (alice_a, alice_b, bob):
            await client.aclose()


async def test_a_question_written_by_another_process_shows_from_the_database(live):
    runtime, _, base_url, ids = live
    client = await logged_in(base_url, "alice")
    page = EventReader(client)
    try:
        await page.next("ready")
        started = time.monotonic()
        request_id = await ask(runtime, ids["alice"], ids["call"], "Leave a message?", publish=False)
        card = await page.next("feedback.asked")
        assert card["request_id"] == request_id and time.monotonic() - started < TIMEOUT
        # A page opened later catches up on the pending question at once.
        late = EventReader(client)
        assert (await late.next("feedback.asked"))["request_id"] == request_id
        await late.close()
    finally:
        await page.close()
        await client.aclose()


async def test_an_unanswered_question_times_out_visibly_and_cannot_be_answered_late(live):
    runtime, _, base_url, ids = live
    client = await logged_in(base_url, "alice")
    page = EventReader(client)
    try:
        await page.next("ready")
        request_id = await ask(runtime, ids["alice"], ids["call"], "Quick: yes or no?", timeout_in=0.3)
        assert (await page.next("feedback.asked"))["timeout_at"] is not None
        assert (await page.next("feedback.timed_out"))["request_id"] == request_id
        async with runtime.sessions() as session:
            assert (await repo.get_feedback_request(session, ids["alice"], request_id)).status \
                is FeedbackStatus.TIMED_OUT
        late = await client.post(f"/api/feedback/{request_id}/answer", json={"answer": "yes"})
        assert late.status_code == 409 and "timed_out" in late.json()["error"]["message"]
    finally:
        await page.close()
        await client.aclose()


async def test_task_updates_and_notifications_reach_the_page_and_stop_ends_open_streams(live):
    runtime, component, base_url, ids = live
    client = await logged_in(base_url, "alice")
    page = EventReader(client)
    try:
        await page.next("ready")
        runtime.events.publish(ids["alice"], "task.updated", {"task_id": ids["task"], "campaign_id": 1,
                                                              "status": "queued"})
        assert (await page.next("task.updated"))["status"] == "queued"
        async with runtime.sessions() as session:
            note = await repo.add_notification(session, ids["alice"], "lifecycle", "Campaign is half done")
            await session.commit()
        assert (await page.next("notification"))["id"] == note.id
        started = time.monotonic()
        await component.stop()
        assert time.monotonic() - started < 3
        await asyncio.wait_for(page.task, TIMEOUT)   # the stream ended instead of hanging
    finally:
        await page.close()
        await client.aclose()
