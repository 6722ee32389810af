"""The status strip every page shows (Asterisk, model, calls in progress / limit) and what a waiting task says it
waits for (issue 15, item 4). The AMI side is the real AmiController against the AMI double, so "connected" is
what the controller saw on the wire."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest_asyncio

from ami_controller.manager import AmiController
from db import repo
from db.models import Call, CallOutcome, CallStatus
from db.types import utcnow
from opendeep.events import EventHub
from tests.doubles.ami_helpers import ami_settings
from tests.doubles.fake_ami import FakeAmi
from tests.doubles.webui_client import WebClient, add_user, make_runtime
from tests.test_webui_plan_csv import a_plan
from webui.app import create_app
from webui.orchestrator import confirm_plan
from webui.status import waiting_for

NY = ZoneInfo("America/New_York")
# 2026-03-02 20:00 UTC = 12:00 in San Francisco (the +1415 numbers), 15:00 in New York.
NOON_IN_SF = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def site(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions, OPENAI_API_KEY="sk-test", MAX_CONCURRENT_CALLS_PER_USER="1")
    user_id = await add_user(runtime, "alice")
    client = WebClient(create_app(runtime))
    await client.login("alice")
    yield runtime, client, user_id
    await client.aclose()
    if runtime.ami is not None:
        await runtime.ami.stop()


def _lights(page: str) -> str:
    start = page.index('id="status-strip"')
    return page[start:page.index("</div>", start)]


async def test_every_page_shows_asterisk_model_and_calls_and_follows_the_ami_connection(site):
    runtime, client, user_id = site
    fake = FakeAmi(username="opendeep", secret="secret", hold_seconds=30)
    await fake.start()
    runtime.settings = ami_settings(runtime.settings, fake.port)
    runtime.ami = AmiController(runtime.settings, runtime.sessions, EventHub())
    await runtime.ami.start()
    await runtime.ami.wait_connected(5)
    for path in ("/campaigns", "/chat", "/dnd", "/feedback", "/transfer-targets", "/account"):
        strip = _lights((await client.http.get(path)).text)
        assert 'class="light ok" data-light="asterisk">Asterisk connected' in strip, path
        assert 'data-light="model">Model configured' in strip, path
        assert "Calls in progress 0 / 1" in strip, path
    await fake.stop()   # Asterisk goes away: the controller notices on the wire
    for _ in range(200):
        if not runtime.ami.connected:
            break
        await asyncio.sleep(0.05)
    strip = _lights((await client.http.get("/status")).text)
    assert 'class="light bad" data-light="asterisk">Asterisk not reachable (AMI at 127.0.0.1:' in strip


async def test_no_model_configured_and_a_failing_model_are_shown(settings_env, engine, sessions):
    runtime = make_runtime(settings_env, engine, sessions)   # no OPENAI_API_KEY / OPENAI_BASE_URL
    await add_user(runtime, "bob")
    client = WebClient(create_app(runtime))
    await client.login("bob")
    strip = _lights((await client.http.get("/campaigns")).text)
    assert 'class="light bad" data-light="model">Model not configured (set OPENAI_API_KEY' in strip
    assert 'data-light="asterisk">Asterisk: run by another OpenDeep process' in strip   # serve --only web
    await client.aclose()


async def test_the_last_call_the_ai_took_failing_shows_the_model_failing_and_calls_count(site):
    runtime, client, user_id = site
    confirmation = await confirm_plan(runtime.sessions, user_id, a_plan(), "k")
    first, second = confirmation.task_ids
    async with runtime.sessions() as session:
        session.add(Call(user_id=user_id, task_id=first, attempt_number=1, status=CallStatus.ENDED,
                         outcome=CallOutcome.FAILED_AI, dialed_number="+14155550101",
                         ended_at=utcnow() - timedelta(minutes=3)))
        session.add(Call(user_id=user_id, task_id=second, attempt_number=1, status=CallStatus.ANSWERED,
                         dialed_number="+14155550102"))
        await session.commit()
    strip = _lights((await client.http.get("/feedback")).text)
    assert 'class="light warn" data-light="model">Model failing: the call AI failed on the last call it took (' \
        in strip
    assert 'class="light warn" data-light="calls">Calls in progress 1 / 1' in strip
    async with runtime.sessions() as session:   # a later call the AI took went well: the model is fine again
        answered = Call(user_id=user_id, task_id=first, attempt_number=2, status=CallStatus.ENDED,
                        outcome=CallOutcome.ANSWERED, dialed_number="+14155550101", ended_at=utcnow())
        session.add(answered)
        await session.commit()
    assert 'data-light="model">Model configured' in _lights((await client.http.get("/feedback")).text)
    async with runtime.sessions() as session:   # the analyzer gave up on that call: its model is failing
        call = await session.get(Call, answered.id)
        call.analysis, call.analyzed_at = {"error": "the LLM at fake timed out", "attempts": 4}, utcnow()
        await session.commit()
    assert "Model failing: the post-call analysis gave up on the last call (" in \
        _lights((await client.http.get("/feedback")).text)


# ---------------------------------------------------------------- what a waiting task waits for


def _task(**changes):
    task = {"id": 1, "status": "pending", "terminal": False, "live": False, "paused": False,
            "phone_number": "+14155550101", "attempt_count": 0, "max_attempts": 3, "status_reason": None,
            "next_action_time": NOON_IN_SF.isoformat()}
    task.update(changes)
    return task


def _status(**changes):
    status = {"asterisk": {"connected": True, "address": "127.0.0.1:5038"}, "llm_configured": True,
              "model_problem": None, "in_progress": 0, "limit": 2, "lines_full": False, "now": NOON_IN_SF}
    status.update(changes)
    return status


CAMPAIGN = {"status": "active", "window_start": "09:00", "window_end": "17:00"}


def test_a_waiting_task_says_what_it_waits_for(settings):
    def says(task=None, status=None, campaign=CAMPAIGN, dnd=frozenset()):
        return waiting_for(task or _task(), campaign, status or _status(), settings, NY, dnd)

    assert says() == "due now: dialing within a few seconds — attempt 1 of 3"
    assert says(status=_status(asterisk={"connected": False, "address": "10.0.0.5:5038"})) == \
        "waiting for Asterisk (AMI at 10.0.0.5:5038 is not connected) — attempt 1 of 3"
    assert says(status=_status(in_progress=2)).startswith(
        "waiting for a free line: your 2 calls at once are in progress (MAX_CONCURRENT_CALLS_PER_USER)")
    assert says(status=_status(lines_full=True)).startswith(
        "waiting for a free line: every line is busy (MAX_CONCURRENT_CALLS)")
    assert says(dnd={"+14155550101"}) == "will not be called: the number is on your do-not-call list"
    assert says(task=_task(paused=True, status="on_hold")) == "paused — resume to schedule it again"
    assert says(campaign={**CAMPAIGN, "status": "paused"}) == \
        "waiting: the campaign is paused — resume the campaign"
    assert says(task=_task(status="on_hold", status_reason="needs your review: the model failed 4 times")) == \
        "held: needs your review: the model failed 4 times"
    later = (NOON_IN_SF + timedelta(hours=2)).isoformat()   # 14:00 in San Francisco, 17:00 in New York
    assert says(task=_task(status="retry_scheduled", next_action_time=later, attempt_count=1)) == \
        "retry at 2026-03-02 17:00 EST (14:00 callee's time) — attempt 2 of 3"
    evening = (NOON_IN_SF + timedelta(hours=6)).isoformat()   # 18:00 in San Francisco: the window is closed
    assert says(task=_task(next_action_time=evening)) == (
        "waiting: the calling window 09:00-17:00 opens at 09:00 callee's time (2026-03-03 12:00 EST) — "
        "attempt 1 of 3")
    assert says(task=_task(status="completed", terminal=True)) == "none"


def test_without_a_campaign_window_the_default_one_applies(settings):
    night = (NOON_IN_SF + timedelta(hours=12)).isoformat()   # 00:00 in San Francisco
    text = waiting_for(_task(next_action_time=night), {"status": "active"}, _status(), settings, NY)
    assert text.startswith(f"waiting: the calling window {settings.default_calling_window} opens at "
                           f"{settings.default_calling_window.start:%H:%M} callee's time")


async def test_the_campaign_page_shows_the_waiting_reason_in_the_users_zone(site):
    runtime, client, user_id = site
    confirmation = await confirm_plan(runtime.sessions, user_id, a_plan(), "k")
    async with runtime.sessions() as session:
        await repo.add_dnd(session, user_id, "+14155550102", "asked")
        await session.commit()
    await client.form("/account", {"time_zone": "Europe/Berlin", "region": ""})
    page = (await client.http.get(f"/campaigns/{confirmation.campaign.id}")).text
    assert "will not be called: the number is on your do-not-call list" in page
    assert "Times in Europe/Berlin" in page
    assert "CET" in page or "CEST" in page
