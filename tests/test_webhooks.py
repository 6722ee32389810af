"""Webhooks, as a receiver sees them: events written to the outbox in the transaction of their change, sent over
real HTTP to a local receiver, signed (checked with the README's own snippet), retried with backoff for a day,
claimed with a lease so a crashed sender loses nothing and two senders never send one at once, one slow endpoint
delaying no other, and URLs that resolve to private addresses refused unless WEBHOOK_ALLOW_PRIVATE."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select

from db import repo, task_life
from db import webhooks as outbox
from db.models import CallOutcome, Speaker, WebhookDelivery, WebhookDeliveryStatus
from db.types import utcnow
from opendeep.analyzer import PostCallAnalyzer
from opendeep.metrics import WEBHOOK_DELIVERIES
from opendeep.summarizer import CampaignSummarizer
from opendeep.webhooks import WebhookSender, refused_address_reason
from tests.doubles.aftercall_seed import answered_call, end_call, seed_task, start_call, verdict
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from webui.app import create_app

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_test-secret-of-enough-length"


def readme_verifier():
    """The verification function exactly as README.md gives it to receivers."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- webhook-verify-snippet -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "README.md snippet", "exec"), namespace)
    return namespace["verify_opendeep_webhook"]


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self):
        return self.now


@pytest_asyncio.fixture
async def receiver():
    receiver = await WebhookReceiver().start()
    yield receiver
    await receiver.stop()


async def add_endpoint(sessions, user_id: int, url: str, events=outbox.EVENT_TYPES) -> int:
    async with sessions() as session, session.begin():
        return (await outbox.add_endpoint(session, user_id, url, SECRET, list(events))).id


async def deliveries(sessions) -> list[WebhookDelivery]:
    async with sessions() as session:
        return list((await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))).all())


def sender_for(settings, sessions, *, allow_private: bool = True, changes: dict | None = None,
               **kwargs) -> WebhookSender:
    """A sender whose settings allow the local receiver (unless allow_private=False), with `changes` applied."""
    changed = {"webhook_allow_private": allow_private, **(changes or {})}
    return WebhookSender(dataclasses.replace(settings, **changed), sessions, **kwargs)


async def send_all(sender: WebhookSender) -> int:
    sent = 0
    while claimed := await sender.run_once():
        sent += claimed
        await sender.drain()
    return sent


async def test_every_event_of_a_campaign_reaches_the_receiver_signed_with_its_data(
        sessions, llm_settings, fake_openai, receiver):
    async with sessions() as session, session.begin():
        user_id = (await repo.create_user(session, "alice", "x")).id
    await add_endpoint(sessions, user_id, receiver.url("all"))
    # A booked call (analyzed: task.completed), a number that never answers on its one attempt (task.failed by
    # rule), then the campaign's summary (campaign.finished), through the production code paths.
    booked = await seed_task(sessions, username="alice")
    booked_call = await answered_call(sessions, llm_settings, booked, [(Speaker.CALLEE, "Tuesday at ten it is.")])
    silent = await seed_task(sessions, phone="+15551230002", campaign_id=booked.campaign_id, user_id=user_id,
                             target="Lakeside Dental", max_attempts=1)
    silent_call = await start_call(sessions, silent, answered=False)
    await end_call(sessions, llm_settings, silent, silent_call, CallOutcome.NO_ANSWER)
    fake_openai.queue_reply(content=verdict("success", summary="Booked Tuesday 10:00.",
                                            extracted={"booked_time": "Tuesday 10:00"}))
    analyzer = PostCallAnalyzer(llm_settings, sessions)
    summarizer = CampaignSummarizer(llm_settings, sessions)
    try:
        assert await analyzer.run_once() == 1
        fake_openai.responder = lambda body: {"content": json.dumps(
            {"summary": "Booked Tuesday with Dr. Smith.", "key_findings": [], "next_steps": []})}
        assert await summarizer.run_once() == 1
    finally:
        await analyzer.close()
        await summarizer.close()
    # HITL: the call AI asks on the booked call, the user answers.
    async with sessions() as session, session.begin():
        question = await repo.create_feedback_request(session, user_id, booked_call, "Is 10:00 fine?")
    async with sessions() as session, session.begin():
        assert await repo.answer_feedback_request(session, user_id, question.id, "Yes")

    before = WEBHOOK_DELIVERIES.labels(result="delivered")._value.get()
    sender = sender_for(llm_settings, sessions)
    try:
        assert await send_all(sender) == 7
    finally:
        await sender.close()
    assert WEBHOOK_DELIVERIES.labels(result="delivered")._value.get() == before + 7

    verify = readme_verifier()
    events = {}
    for request in receiver.to("all"):
        assert request.headers["content-type"] == "application/json"
        assert verify(SECRET, request.headers["opendeep-signature"], request.body)
        assert not verify("another-secret-entirely", request.headers["opendeep-signature"], request.body)
        assert not verify(SECRET, request.headers["opendeep-signature"], request.body + b" ")
        body = json.loads(request.body)
        assert request.headers["opendeep-event-id"] == body["id"]
        assert request.headers["opendeep-event"] == body["type"]
        events.setdefault(body["type"], []).append(body["data"])
    assert sorted((kind, len(items)) for kind, items in events.items()) == [
        ("call.ended", 2), ("campaign.finished", 1), ("feedback.answered", 1), ("feedback.asked", 1),
        ("task.completed", 1), ("task.failed", 1)]
    ended = {e["call_id"]: e for e in events["call.ended"]}
    assert ended[booked_call]["outcome"] == "answered" and ended[booked_call]["duration_seconds"] == 42
    assert ended[booked_call]["transcript_url"] == f"/calls/{booked_call}"
    assert ended[silent_call]["outcome"] == "no_answer"
    completed = events["task.completed"][0]
    assert completed["task_id"] == booked.task_id and completed["result"]["data"] == {"booked_time": "Tuesday 10:00"}
    assert completed["analysis"]["outcome"] == "success"
    assert events["task.failed"][0]["task_id"] == silent.task_id
    finished = events["campaign.finished"][0]
    assert finished["summary"]["summary"] == "Booked Tuesday with Dr. Smith."
    assert {row["target"] for row in finished["summary"]["targets"]} == {"Dr. Smith Dental", "Lakeside Dental"}
    assert events["feedback.asked"][0]["question"] == "Is 10:00 fine?"
    assert events["feedback.answered"][0]["answer"] == "Yes"
    assert all(d.status is WebhookDeliveryStatus.DELIVERED and d.attempts == 1 for d in await deliveries(sessions))


async def test_an_event_exists_only_if_its_change_is_committed_and_only_for_endpoints_that_want_it(
        sessions, settings, receiver):
    seeded = await seed_task(sessions)
    other = await seed_task(sessions, username="bob")
    call_id = await start_call(sessions, seeded)
    wants_feedback = await add_endpoint(sessions, seeded.user_id, receiver.url("a"), ["feedback.asked"])
    await add_endpoint(sessions, seeded.user_id, receiver.url("b"), ["call.ended"])
    await add_endpoint(sessions, other.user_id, receiver.url("bob"), ["feedback.asked"])
    async with sessions() as session:
        await repo.create_feedback_request(session, seeded.user_id, call_id, "Rolled back?")
        await session.rollback()
    assert await deliveries(sessions) == []
    async with sessions() as session, session.begin():
        await repo.create_feedback_request(session, seeded.user_id, call_id, "Committed")
    queued = await deliveries(sessions)
    assert [(d.endpoint_id, d.event_type, d.user_id) for d in queued] == [
        (wants_feedback, "feedback.asked", seeded.user_id)]


async def test_a_failing_endpoint_is_retried_with_growing_backoff_then_given_up_after_a_day(
        sessions, settings, receiver):
    seeded = await seed_task(sessions)
    await add_endpoint(sessions, seeded.user_id, receiver.url("down"), ["call.ended"])
    receiver.status["down"] = 503
    call_id = await start_call(sessions, seeded, answered=False)
    await end_call(sessions, settings, seeded, call_id, CallOutcome.BUSY)
    clock = Clock()
    sender = sender_for(settings, sessions, clock=clock)
    gaps = []
    try:
        for _ in range(60):
            if not await send_all(sender):
                break
            (delivery,) = await deliveries(sessions)
            if delivery.status is not WebhookDeliveryStatus.PENDING:
                break
            gaps.append((delivery.next_attempt_at - clock.now).total_seconds())
            assert await sender.run_once() == 0     # not due yet: nothing is sent early
            clock.now = delivery.next_attempt_at
    finally:
        await sender.close()
    (delivery,) = await deliveries(sessions)
    assert delivery.status is WebhookDeliveryStatus.GAVE_UP
    assert delivery.last_status_code == 503 and delivery.last_error == "HTTP 503 Service Unavailable"
    assert delivery.attempts == len(receiver.to("down")) == len(gaps) + 1
    assert 9 <= gaps[0] <= 11 and 18 <= gaps[1] <= 22 and 36 <= gaps[2] <= 44     # 10 s, doubling, +/- 10 %
    assert max(gaps) <= 3600 * 1.1 and gaps == sorted(gaps[:9]) + gaps[9:]
    last_try = clock.now - delivery.created_at
    assert timedelta(hours=22) < last_try <= timedelta(hours=24)
    assert [a["attempt"] for a in delivery.history] == list(range(delivery.attempts - 19, delivery.attempts + 1))
    assert len({r.headers["opendeep-event-id"] for r in receiver.to("down")}) == 1    # one idempotency id


async def test_a_delivery_held_by_a_sender_that_died_is_sent_once_its_lease_ends(sessions, settings, receiver):
    seeded = await seed_task(sessions)
    await add_endpoint(sessions, seeded.user_id, receiver.url("hook"), ["call.ended"])
    call_id = await start_call(sessions, seeded, answered=False)
    await end_call(sessions, settings, seeded, call_id, CallOutcome.BUSY)
    clock = Clock()
    # A sender claims it, then its process dies before sending (nothing recorded).
    async with sessions() as session, session.begin():
        held = await outbox.claim_due_deliveries(session, now=clock.now, lease_seconds=40, free_slots={},
                                                 default_slots=4, limit=10)
    assert len(held) == 1
    restarted = sender_for(settings, sessions, clock=clock)
    try:
        assert await restarted.run_once() == 0          # still leased: not sent twice at once
        clock.now += timedelta(seconds=41)
        assert await send_all(restarted) == 1
        assert await send_all(restarted) == 0
    finally:
        await restarted.close()
    (delivery,) = await deliveries(sessions)
    assert delivery.status is WebhookDeliveryStatus.DELIVERED and delivery.attempts == 2
    assert [r.headers["opendeep-event-id"] for r in receiver.to("hook")] == [held[0].event_id]


async def test_racing_senders_send_each_delivery_once(sessions, settings, receiver):
    seeded = await seed_task(sessions)
    await add_endpoint(sessions, seeded.user_id, receiver.url("hook"), ["feedback.asked"])
    call_id = await start_call(sessions, seeded)
    async with sessions() as session, session.begin():
        for n in range(30):
            await repo.create_feedback_request(session, seeded.user_id, call_id, f"question {n}")
    senders = [sender_for(settings, sessions, changes={"webhook_concurrency_per_endpoint": 50}) for _ in range(3)]
    try:
        await asyncio.gather(*(send_all(s) for s in senders))
    finally:
        for sender in senders:
            await sender.close()
    ids = [r.headers["opendeep-event-id"] for r in receiver.to("hook")]
    assert len(ids) == len(set(ids)) == 30


async def test_a_slow_endpoint_holds_only_its_own_slots_and_delays_no_other(sessions, settings, receiver):
    seeded = await seed_task(sessions)
    await add_endpoint(sessions, seeded.user_id, receiver.url("slow"), ["feedback.asked"])
    await add_endpoint(sessions, seeded.user_id, receiver.url("fast"), ["feedback.asked"])
    call_id = await start_call(sessions, seeded)
    async with sessions() as session, session.begin():
        for n in range(10):
            await repo.create_feedback_request(session, seeded.user_id, call_id, f"question {n}")
    receiver.hold["slow"] = asyncio.Event()
    sender = sender_for(settings, sessions, changes={"webhook_concurrency_per_endpoint": 2})
    running = asyncio.create_task(sender.run_forever(poll_seconds=0.05))
    try:
        # All ten to the fast endpoint arrive while the slow one still holds its first two requests.
        while len(receiver.to("fast")) < 10:
            receiver.arrived.clear()
            await asyncio.wait_for(receiver.arrived.wait(), 10)
        assert len(receiver.to("slow")) == 2 and not receiver.hold["slow"].is_set()
        receiver.hold["slow"].set()
        while len(receiver.to("slow")) < 10:
            receiver.arrived.clear()
            await asyncio.wait_for(receiver.arrived.wait(), 10)
        await asyncio.sleep(0)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await sender.drain()
        await sender.close()
    assert all(d.status is WebhookDeliveryStatus.DELIVERED for d in await deliveries(sessions))


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("10.1.2.3", "private"),
    ("192.168.0.10", "private"), ("fd00::1", "private"), ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"),
    ("100.64.0.1", "non-public"), ("240.0.0.1", "reserved"), ("93.184.215.14", None), ("2606:4700::1", None)])
def test_addresses_that_are_not_public_are_refused(address, kind):
    assert refused_address_reason(address) == kind


async def test_a_name_that_resolves_to_a_private_address_at_send_time_is_never_contacted(
        sessions, settings, receiver):
    seeded = await seed_task(sessions)
    # Public when saved; its DNS now answers 127.0.0.1 (rebinding). The receiver listens there.
    port = receiver.server.port
    await add_endpoint(sessions, seeded.user_id, f"http://hooks.example.com:{port}/hook/rebound", ["call.ended"])
    call_id = await start_call(sessions, seeded, answered=False)
    await end_call(sessions, settings, seeded, call_id, CallOutcome.BUSY)

    async def rebinding_resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    before = WEBHOOK_DELIVERIES.labels(result="gave_up")._value.get()
    sender = sender_for(settings, sessions, allow_private=False, resolver=rebinding_resolver)
    try:
        assert await send_all(sender) == 1
    finally:
        await sender.close()
    (delivery,) = await deliveries(sessions)
    assert delivery.status is WebhookDeliveryStatus.GAVE_UP
    assert "resolves to a loopback address (127.0.0.1)" in delivery.last_error
    assert receiver.received == []
    assert WEBHOOK_DELIVERIES.labels(result="gave_up")._value.get() == before + 1


async def test_the_sender_connects_to_the_address_it_checked_with_the_urls_host(sessions, settings, receiver):
    """With private addresses allowed, a name is still resolved by us and the request goes to that address."""
    seeded = await seed_task(sessions)
    port = receiver.server.port
    await add_endpoint(sessions, seeded.user_id, f"http://receiver.invalid:{port}/hook/named", ["call.ended"])
    call_id = await start_call(sessions, seeded, answered=False)
    await end_call(sessions, settings, seeded, call_id, CallOutcome.BUSY)

    async def resolver(host: str, port: int) -> list[str]:
        assert host == "receiver.invalid"
        return ["127.0.0.1"]

    sender = sender_for(settings, sessions, resolver=resolver)
    try:
        assert await send_all(sender) == 1
    finally:
        await sender.close()
    (request,) = receiver.to("named")
    assert request.headers["host"] == f"receiver.invalid:{port}"


# ---------------------------------------------------------------- the page and the JSON API


@pytest_asyncio.fixture
async def web(settings_env, engine, sessions):
    def build(**env):
        runtime = make_runtime(settings_env, engine, sessions, **env)
        return runtime, create_app(runtime)
    return build


async def logged_in(app, *names):
    clients = []
    for name in names:
        client = WebClient(app)
        await client.login(name)
        clients.append(client)
    return clients


async def test_urls_to_private_addresses_are_refused_when_saved_unless_allowed(web, receiver):
    runtime, app = web()
    await add_user(runtime, "alice")
    (alice,) = await logged_in(app, "alice")
    try:
        for url in [receiver.url("x"), "http://localhost/hook", "http://10.0.0.5/", "http://[::1]:8080/",
                    "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/"]:
            refused = await alice.api("POST", "/api/webhooks", json={"url": url, "events": ["call.ended"]})
            assert refused.status_code == 400, url
            assert refused.json()["error"]["code"] == "invalid_url"
            assert "WEBHOOK_ALLOW_PRIVATE" in refused.json()["error"]["message"]
        for url, why in [("ftp://example.com/", "http:// or https://"), ("https://user:pw@example.com/", "no user"),
                         ("http://no-such-host.invalid/", "does not resolve")]:
            refused = await alice.api("POST", "/api/webhooks", json={"url": url, "events": ["call.ended"]})
            assert refused.status_code == 400 and why in refused.json()["error"]["message"], url
        assert (await alice.api("GET", "/api/webhooks")).json()["endpoints"] == []
    finally:
        await alice.aclose()
    runtime, app = web(WEBHOOK_ALLOW_PRIVATE="true")
    (alice,) = await logged_in(app, "alice")
    try:
        added = await alice.api("POST", "/api/webhooks", json={"url": receiver.url("x"), "events": ["call.ended"]})
        assert added.status_code == 201, added.text
        assert added.json()["secret"].startswith("whsec_")
    finally:
        await alice.aclose()


async def test_the_api_manages_only_the_users_own_endpoints_and_deliveries(web, receiver, sessions):
    runtime, app = web(WEBHOOK_ALLOW_PRIVATE="true")
    alice_id = await add_user(runtime, "alice")
    await add_user(runtime, "bob")
    alice, bob = await logged_in(app, "alice", "bob")
    try:
        bad = await alice.api("POST", "/api/webhooks", json={"url": receiver.url("a"), "events": ["call.started"]})
        assert bad.status_code == 400 and "unknown event" in bad.json()["error"]["message"]
        short = await alice.api("POST", "/api/webhooks", json={"url": receiver.url("a"), "events": ["task.failed"],
                                                               "secret": "short"})
        assert short.status_code == 400
        no_csrf = await alice.http.post("/api/webhooks", json={"url": receiver.url("a"), "events": ["task.failed"]})
        assert no_csrf.status_code == 403
        added = await alice.api("POST", "/api/webhooks", json={"url": receiver.url("a"), "secret": SECRET,
                                                               "events": ["feedback.asked", "call.ended"]})
        assert added.status_code == 201
        endpoint = added.json()
        assert endpoint["events"] == ["call.ended", "feedback.asked"] and endpoint["secret"] == SECRET
        seeded = await seed_task(sessions, user_id=alice_id)
        call_id = await start_call(sessions, seeded)
        async with sessions() as session, session.begin():
            await repo.create_feedback_request(session, alice_id, call_id, "Which day?")
        listed = (await alice.api("GET", "/api/webhooks/deliveries")).json()["deliveries"]
        assert [(d["event_type"], d["status"], d["attempts"]) for d in listed] == [("feedback.asked", "pending", 0)]
        # Bob sees and changes none of it.
        assert (await bob.api("GET", "/api/webhooks")).json()["endpoints"] == []
        assert (await bob.api("GET", "/api/webhooks/deliveries")).json()["deliveries"] == []
        assert (await bob.api("GET", f"/api/webhooks/deliveries?endpoint_id={endpoint['id']}")
                ).json()["deliveries"] == []
        assert (await bob.api("PATCH", f"/api/webhooks/{endpoint['id']}", json={"enabled": False})).status_code == 404
        assert (await bob.api("DELETE", f"/api/webhooks/{endpoint['id']}")).status_code == 404
        assert (await bob.form(f"/webhooks/{endpoint['id']}/remove")).status_code == 404
        # A disabled endpoint gets no new events.
        assert (await alice.api("PATCH", f"/api/webhooks/{endpoint['id']}", json={"enabled": False})
                ).status_code == 204
        async with sessions() as session, session.begin():
            await repo.create_feedback_request(session, alice_id, call_id, "Which time?")
        assert len((await alice.api("GET", "/api/webhooks/deliveries")).json()["deliveries"]) == 1
        assert (await alice.api("DELETE", f"/api/webhooks/{endpoint['id']}")).status_code == 204
        assert (await alice.api("GET", "/api/webhooks/deliveries")).json()["deliveries"] == []
    finally:
        await alice.aclose()
        await bob.aclose()


async def test_the_pages_add_an_endpoint_and_show_its_deliveries(web, receiver, sessions, settings):
    runtime, app = web(WEBHOOK_ALLOW_PRIVATE="true")
    alice_id = await add_user(runtime, "alice")
    (alice,) = await logged_in(app, "alice")
    try:
        assert 'href="/webhooks"' in (await alice.http.get("/webhooks")).text
        without_token = await alice.http.post("/webhooks", data={"url": receiver.url("p"), "events": "call.ended"})
        assert without_token.status_code == 403
        added = await alice.form("/webhooks", {"url": receiver.url("p"), "events": ["call.ended", "task.failed"]})
        assert added.status_code == 303
        page = (await alice.http.get("/webhooks")).text
        assert receiver.url("p") in page and "whsec_" in page and "call.ended, task.failed" in page
        receiver.status["p"] = 500
        seeded = await seed_task(sessions, user_id=alice_id)
        call_id = await start_call(sessions, seeded, answered=False)
        await end_call(sessions, settings, seeded, call_id, CallOutcome.BUSY)
        sender = sender_for(settings, sessions)
        try:
            assert await send_all(sender) == 1
        finally:
            await sender.close()
        deliveries_page = (await alice.http.get("/webhooks/deliveries")).text
        assert "call.ended" in deliveries_page and "HTTP 500 Internal Server Error" in deliveries_page
        assert "pending" in deliveries_page
    finally:
        await alice.aclose()


async def test_on_postgresql_a_claim_skips_rows_another_sender_is_claiming_instead_of_waiting(pg_engine):
    from db.engine import session_factory

    sessions = session_factory(pg_engine)
    seeded = await seed_task(sessions)
    await add_endpoint(sessions, seeded.user_id, "https://hooks.example.com/a", ["feedback.asked"])
    call_id = await start_call(sessions, seeded)
    async with sessions() as session, session.begin():
        for n in range(6):
            await repo.create_feedback_request(session, seeded.user_id, call_id, f"question {n}")
    now = utcnow()
    async with sessions() as first, first.begin():
        held = await outbox.claim_due_deliveries(first, now=now, lease_seconds=40, free_slots={}, default_slots=3,
                                                 limit=3)
        # The first transaction is still open, its rows locked: the second claim passes them by at once.
        async with sessions() as second, second.begin():
            other = await asyncio.wait_for(outbox.claim_due_deliveries(
                second, now=now, lease_seconds=40, free_slots={}, default_slots=6, limit=6), 10)
    assert len(held) == 3 and len(other) == 3
    assert not {d.id for d in held} & {d.id for d in other}


async def test_no_outbox_function_lets_one_tenant_see_or_touch_anothers_rows(sessions, settings):
    """Function by function, as tests/test_repo_isolation.py does for db/repo.py."""
    import inspect

    from db.models import TaskStatus

    alice = await seed_task(sessions)
    bob = await seed_task(sessions, username="bob")
    call_id = await start_call(sessions, alice)
    endpoint = await add_endpoint(sessions, alice.user_id, "https://hooks.example.com/a")
    async with sessions() as session, session.begin():
        question = await repo.create_feedback_request(session, alice.user_id, call_id, "Which day?")
        await task_life.move(session, alice.user_id, alice.task_id, TaskStatus.COMPLETED)
    queued = len(await deliveries(sessions))
    assert queued == 2
    b = bob.user_id
    async with sessions() as session, session.begin():
        checks = {
            "list_endpoints": await outbox.list_endpoints(session, b) == [],
            "get_endpoint": await outbox.get_endpoint(session, b, endpoint) is None,
            "set_endpoint_enabled": await outbox.set_endpoint_enabled(session, b, endpoint, False) is False,
            "remove_endpoint": await outbox.remove_endpoint(session, b, endpoint) is False,
            "list_deliveries": await outbox.list_deliveries(session, b, endpoint_id=endpoint) == [],
            "endpoints_wanting": await outbox.endpoints_wanting(session, b, "call.ended") == [],
            "enqueue_event": await outbox.enqueue_event(session, b, "call.ended", {}) == 0,
            "call_ended": await outbox.call_ended(session, b, call_id) == 0,
            "task_finished": await outbox.task_finished(session, b, alice.task_id, TaskStatus.COMPLETED) == 0,
            "campaign_finished": await outbox.campaign_finished(session, b, alice.campaign_id) == 0,
            "feedback_changed": await outbox.feedback_changed(session, b, question.id, "feedback.asked") == 0,
            # Creates a row of B's own, counted against B's limit only.
            "add_endpoint": (await outbox.add_endpoint(session, b, "https://b.example.com/", SECRET,
                                                       ["call.ended"])).user_id == b,
        }
    tenant_functions = {name for name, fn in inspect.getmembers(outbox, inspect.iscoroutinefunction)
                        if "user_id" in inspect.signature(fn).parameters}
    assert tenant_functions == set(checks)
    assert all(checks.values()), checks
    async with sessions() as session:
        assert (await outbox.get_endpoint(session, alice.user_id, endpoint)).enabled
    assert len(await deliveries(sessions)) == queued
