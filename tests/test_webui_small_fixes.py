"""The smaller things a new user ran into (issue 15, items 5 and 14): the login form keeps the username, logout
says so, no dead chat without an LLM, DND search / count / confirmation, every question on the questions page,
and a plan that cannot be scheduled twice from its page."""

from __future__ import annotations

import re

import pytest_asyncio

from db import repo
from db.models import Call, CallStatus, FeedbackStatus
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.orchestrator import chat_source_key, confirm_plan
from webui.plan import plan_fingerprint


@pytest_asyncio.fixture
async def alice(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)   # no LLM configured
    user_id = await add_user(runtime, "alice")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    yield runtime, client, user_id
    await client.aclose()


async def test_a_wrong_password_keeps_the_username_and_logout_says_so(alice):
    runtime, client, _ = alice
    logout = await client.form("/logout")
    assert logout.headers["location"] == "/login?logged_out=1"
    page = (await client.http.get(logout.headers["location"])).text
    assert "You are logged out, in this browser and every other one." in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    wrong = await client.http.post("/login", data={"username": "alice", "password": "nope", "csrf_token": token})
    assert wrong.status_code == 401
    assert 'name="username" value="alice"' in wrong.text and "Wrong username or password." in wrong.text
    assert "You are logged out" not in wrong.text


async def test_without_an_llm_new_task_says_why_and_offers_csv_import_instead_of_a_chat(alice):
    runtime, client, user_id = alice
    page = (await client.http.get("/chat")).text
    assert "no LLM is configured" in page and 'id="import-instead"' in page and 'id="new-chat"' not in page
    response = await client.form("/chat")
    assert response.headers["location"] == "/campaigns/import"
    assert "The assistant is off: no LLM is configured" in (await client.http.get("/campaigns/import")).text
    async with runtime.sessions() as session:
        assert list(await repo.list_chat_sessions(session, user_id)) == []


async def test_dnd_list_has_a_count_a_search_and_remove_asks_first(alice):
    runtime, client, user_id = alice
    async with runtime.sessions() as session:
        await repo.add_dnd(session, user_id, "+14155550101", "asked twice")
        await repo.add_dnd(session, user_id, "+14155550102", "wrong number")
        await repo.add_dnd(session, user_id, "+442079460958", "")
        await session.commit()
    page = (await client.http.get("/dnd")).text
    assert "3 number(s) on your list" in page
    assert page.count('class="inline confirm-remove" data-confirm="Remove +1415555010') == 2
    by_digits = (await client.http.get("/dnd", params={"q": "(415) 555-0102"})).text
    assert "1 of 3 number(s) match" in by_digits and "+14155550102" in by_digits and "+14155550101" not in by_digits
    by_reason = (await client.http.get("/dnd", params={"q": "TWICE"})).text
    assert "1 of 3 number(s) match" in by_reason and "+14155550101" in by_reason
    assert "No number matches." in (await client.http.get("/dnd", params={"q": "zzz"})).text


async def test_the_questions_page_shows_answered_and_timed_out_questions_too(alice):
    runtime, client, user_id = alice
    confirmation = await confirm_plan(runtime.sessions, user_id, a_plan(), "k")
    async with runtime.sessions() as session:
        call = Call(user_id=user_id, task_id=confirmation.task_ids[0], attempt_number=1, status=CallStatus.ANSWERED,
                    dialed_number="+14155550101")
        session.add(call)
        await session.flush()
        open_one = await repo.create_feedback_request(session, user_id, call.id, "Is 10:00 on Tuesday fine?")
        answered = await repo.create_feedback_request(session, user_id, call.id, "Which hygienist?")
        timed_out = await repo.create_feedback_request(session, user_id, call.id, "Pay a deposit?")
        await repo.answer_feedback_request(session, user_id, answered.id, "Any of them")
        await repo.close_feedback_request(session, user_id, timed_out.id, FeedbackStatus.TIMED_OUT)
        await session.commit()
    page = (await client.http.get("/feedback")).text
    assert f'id="feedback-{open_one.id}"' in page and "Is 10:00 on Tuesday fine?" in page
    assert "Earlier questions" in page
    assert "Which hygienist?" in page and "Your answer: Any of them" in page
    assert "Pay a deposit?" in page and "Nobody answered in time" in page
    await add_user(runtime, "bob")   # another tenant sees none of it
    bob = WebClient(client.http._transport.app)
    await bob.login("bob")
    theirs = (await bob.http.get("/feedback")).text
    assert "Which hygienist?" not in theirs and "Pay a deposit?" not in theirs and "None yet." in theirs
    await bob.aclose()


async def test_a_scheduled_plan_shows_no_confirm_button_and_a_second_confirm_creates_nothing(alice):
    runtime, client, user_id = alice
    async with runtime.sessions() as session:
        chat = await repo.create_chat_session(session, user_id)
        chat.plan = a_plan()
        await session.commit()
    page = (await client.http.get(f"/chat/{chat.id}")).text
    key = re.search(r'name="source_key" value="([^"]+)"', page).group(1)
    assert key == chat_source_key(chat.id, plan_fingerprint(a_plan()))
    first = await client.form(f"/chat/{chat.id}/confirm", {"source_key": key})
    second = await client.form(f"/chat/{chat.id}/confirm", {"source_key": key})
    assert first.headers["location"] == second.headers["location"]
    async with runtime.sessions() as session:
        assert len(await repo.list_campaigns(session, user_id)) == 1
    page = (await client.http.get(f"/chat/{chat.id}")).text
    assert '<button type="button" id="confirm-plan" disabled>Scheduled</button>' in page
    assert f'action="/chat/{chat.id}/confirm"' not in page


async def test_the_campaign_header_fragment_follows_the_campaigns_state(alice):
    runtime, client, user_id = alice
    confirmation = await confirm_plan(runtime.sessions, user_id, a_plan(), "k")
    campaign_id = confirmation.campaign.id
    page = (await client.http.get(f"/campaigns/{campaign_id}")).text
    assert f'id="campaign-header" data-campaign-id="{campaign_id}"' in page
    header = (await client.http.get(f"/campaigns/{campaign_id}/header")).text
    assert 'id="campaign-status">active<' in header and "Pause campaign" in header
    await client.form(f"/campaigns/{campaign_id}/cancel")
    header = (await client.http.get(f"/campaigns/{campaign_id}/header")).text
    assert 'id="campaign-status">cancelled<' in header and "Pause campaign" not in header
    assert "Cancel campaign" not in header and "Add targets" not in header
