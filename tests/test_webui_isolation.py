"""Tenant isolation through HTTP: user B tries every one of user A's URLs and gets 404, and A's data is intact."""

from __future__ import annotations

from datetime import timedelta

import pytest_asyncio

from db import repo
from db.models import Call, CallStatus, FeedbackStatus, Speaker, TaskStatus
from db.types import utcnow
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.orchestrator import confirm_plan


@pytest_asyncio.fixture
async def world(settings_env, engine, sessions):
    """Alice owns a chat with a plan, a campaign with tasks, a call with a transcript, a question, a DND entry."""
    runtime = make_runtime(settings_env, engine, sessions, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    alice, bob = await add_user(runtime, "alice"), await add_user(runtime, "bob")
    async with sessions() as session:
        chat = await repo.create_chat_session(session, alice)
        chat.plan = a_plan()
        await session.commit()
    confirmation = await confirm_plan(sessions, alice, a_plan(), "k1")
    campaign_id, task_id = confirmation.campaign.id, confirmation.task_ids[0]
    async with sessions() as session:
        call = Call(user_id=alice, task_id=task_id, attempt_number=1, status=CallStatus.ANSWERED,
                    dialed_number="+14155550101")
        session.add(call)
        await session.flush()
        await repo.add_transcript(session, alice, call.id, Speaker.CALLEE, "Hello, Bright Smile", 100)
        question = await repo.create_feedback_request(session, alice, call.id, "Tuesday 9:00 ok?",
                                                      timeout_at=utcnow() + timedelta(minutes=5))
        await repo.add_dnd(session, alice, "+14155550199", "asked")
        campaign = await repo.get_campaign(session, alice, campaign_id)
        campaign.summary = {"rows": [{"target": "Bright Smile", "result": "booked"}]}
        await session.commit()
    app = create_app(runtime)
    client = WebClient(app)
    await client.login("bob")
    ids = {"chat": chat.id, "campaign": campaign_id, "task": task_id, "call": call.id, "question": question.id,
           "alice": alice, "bob": bob}
    yield runtime, client, ids
    await client.aclose()


async def test_user_b_gets_404_on_every_url_of_user_a(world):
    runtime, bob, ids = world
    gets = ["/chat/{chat}", "/campaigns/{campaign}", "/campaigns/{campaign}/tasks", "/campaigns/{campaign}/summary",
            "/campaigns/{campaign}/summary.csv", "/calls/{call}", "/api/chats/{chat}", "/api/campaigns/{campaign}",
            "/api/campaigns/{campaign}/summary", "/api/tasks/{task}", "/api/calls/{call}"]
    form_posts = ["/chat/{chat}/messages", "/chat/{chat}/confirm", "/campaigns/{campaign}/pause",
                  "/campaigns/{campaign}/resume", "/campaigns/{campaign}/cancel", "/tasks/{task}/pause",
                  "/tasks/{task}/resume", "/tasks/{task}/cancel", "/feedback/{question}/answer"]
    api_posts = ["/api/chats/{chat}/messages", "/api/chats/{chat}/confirm", "/api/campaigns/{campaign}/pause",
                 "/api/campaigns/{campaign}/resume", "/api/campaigns/{campaign}/cancel", "/api/tasks/{task}/pause",
                 "/api/tasks/{task}/resume", "/api/tasks/{task}/cancel", "/api/feedback/{question}/answer"]
    for template in gets:
        response = await bob.http.get(template.format(**ids))
        assert response.status_code == 404, (template, response.status_code)
    for template in form_posts:
        response = await bob.form(template.format(**ids), {"text": "hi", "answer": "yes", "source_key": "x"})
        assert response.status_code == 404, (template, response.status_code)
    for template in api_posts:
        response = await bob.api("POST", template.format(**ids), {"text": "hi", "answer": "yes"})
        assert response.status_code == 404, (template, response.status_code)
        assert response.json()["error"]["code"] == "not_found"
    targets = await bob.http.post(f"/api/campaigns/{ids['campaign']}/targets",
                                  content=b"name,phone_number\nX,+14155550150\n",
                                  headers={"x-csrf-token": bob.csrf, "content-type": "text/csv"})
    assert targets.status_code == 404
    form_targets = await bob.form(f"/campaigns/{ids['campaign']}/targets",
                                  files={"file": ("t.csv", b"name,phone_number\nX,+14155550150\n", "text/csv")})
    assert form_targets.status_code == 404
    assert (await bob.form("/dnd/remove", {"phone_number": "+14155550199"})).status_code == 404
    assert (await bob.api("DELETE", "/api/dnd/+14155550199")).status_code == 404

    # B's lists show nothing of A.
    assert (await bob.http.get("/api/campaigns")).json() == {"campaigns": []}
    assert (await bob.http.get("/api/chats")).json() == {"chats": []}
    assert (await bob.http.get("/api/dnd")).json() == {"entries": []}
    assert (await bob.http.get("/api/feedback")).json() == {"pending": []}
    assert "Dental cleaning" not in (await bob.http.get("/campaigns")).text
    assert "+14155550199" not in (await bob.http.get("/dnd.csv")).text

    # And A's data is exactly as it was.
    alice = ids["alice"]
    async with runtime.sessions() as session:
        assert {t.status for t in await repo.list_tasks(session, alice)} == {TaskStatus.PENDING}
        assert (await repo.get_feedback_request(session, alice, ids["question"])).status is FeedbackStatus.PENDING
        assert await repo.is_dnd(session, alice, "+14155550199")
        assert len(await repo.list_chat_messages(session, alice, ids["chat"])) == 0
        assert len(await repo.list_tasks(session, alice, ids["campaign"])) == 2


async def test_user_a_sees_the_same_urls(world):
    runtime, bob, ids = world
    await bob.aclose()
    alice = WebClient(bob.http._transport.app)
    await alice.login("alice")
    try:
        for path in ("/chat/{chat}", "/campaigns/{campaign}", "/campaigns/{campaign}/summary", "/calls/{call}",
                     "/api/tasks/{task}", "/api/calls/{call}"):
            response = await alice.http.get(path.format(**ids))
            assert response.status_code == 200, path
        detail = (await alice.http.get(f"/api/campaigns/{ids['campaign']}")).json()
        assert detail["tasks"][0]["calls"][0]["transcript"][0]["text"] == "Hello, Bright Smile"
        pending = (await alice.http.get("/api/feedback")).json()["pending"]
        assert pending[0]["question"] == "Tuesday 9:00 ok?" and pending[0]["task"]["target_name"] == "Bright Smile"
    finally:
        await alice.aclose()
